/**
 * The published package as a newcomer gets it: `npm pack`, unpacked into a fresh app the way npm
 * installs it (dependencies linked from this checkout: the suite runs offline), then used through
 * ESM import, require, TypeScript types and the `multileg` executable.
 */
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { program } from '../src/cli/options.ts';
import { startReferenceServer } from '../src/reference-server/index.ts';
import { commanderHelp, OLD_NODE, runCommand } from './cli-helpers.ts';

const root = new URL('..', import.meta.url).pathname;
const bin = join(root, 'node_modules/.bin');
/**
 * This project's Node 22 first on PATH, as `npm run` does; and the compile cache on: vitest's
 * coverage (`npm test`) sets NODE_DISABLE_COMPILE_CACHE=1, which the command's own code cache obeys
 * too (code-cache.ts, checked here), and the packed files are no src/ to cover.
 */
const { NODE_DISABLE_COMPILE_CACHE: _off, NODE_V8_COVERAGE: _coverage, ...ours } = process.env;
const env = { ...ours, PATH: `${bin}:${dirname(process.execPath)}:${process.env.PATH}` };

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)],
  );
}

describe('the packed package in a fresh app', () => {
  let app: string;
  let pkgDir: string;
  beforeAll(async () => {
    // npm pack builds first (prepack: npm run build, tsc and the bundle) and fails with tsc's errors
    // on stderr: a tsc run of its own here was that build's first step twice (~10 s of CPU).
    const work = mkdtempSync(join(tmpdir(), 'multileg-pack-'));
    const pack = await runCommand('npm', ['pack', '--json', '--pack-destination', work, root], '', env);
    expect(pack.code, pack.stderr).toBe(0);
    const tarball = join(work, (JSON.parse(pack.stdout) as Array<{ filename: string }>)[0]!.filename);
    app = join(work, 'app');
    pkgDir = join(app, 'node_modules/multileg');
    mkdirSync(pkgDir, { recursive: true });
    const untar = await runCommand('tar', ['-xzf', tarball, '-C', pkgDir, '--strip-components=1']);
    expect(untar.code, untar.stderr).toBe(0);
    // What `npm install` would add: the dependencies, and the executable link.
    const manifest = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
    for (const dep of [
      ...Object.keys(manifest.dependencies),
      ...Object.keys(manifest.optionalDependencies),
      'typescript',
      '@types/node',
    ]) {
      mkdirSync(dirname(join(app, 'node_modules', dep)), { recursive: true });
      symlinkSync(join(root, 'node_modules', dep), join(app, 'node_modules', dep));
    }
    mkdirSync(join(app, 'node_modules/.bin'));
    const target = join(pkgDir, manifest.bin.multileg);
    chmodSync(target, 0o755);
    symlinkSync(target, join(app, 'node_modules/.bin/multileg'));
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  });

  it('ships no private key, and source maps that carry their sources', () => {
    const files = walk(pkgDir);
    expect(files.some((f) => f.includes('reference-server'))).toBe(false);
    for (const f of files) expect(readFileSync(f, 'utf8'), f).not.toMatch(/PRIVATE KEY/);
    const maps = files.filter((f) => f.endsWith('.js.map'));
    expect(maps.length).toBeGreaterThan(10);
    for (const f of maps) {
      const map = JSON.parse(readFileSync(f, 'utf8')) as { sources: string[]; sourcesContent?: string[] };
      expect(map.sourcesContent?.length, f).toBe(map.sources.length);
    }
  });

  it('ships every docs/*.md that its README and docs name (docs/GATEWAYS.md was left out)', () => {
    const shipped = walk(join(pkgDir, 'docs')).map((f) => `docs/${f.slice(join(pkgDir, 'docs').length + 1)}`);
    const named = new Set<string>();
    for (const f of ['README.md', ...shipped])
      for (const m of readFileSync(join(pkgDir, f), 'utf8').matchAll(/\bdocs\/[A-Z]+\.md\b/g)) named.add(m[0]);
    expect(named.size).toBeGreaterThan(5);
    for (const doc of named) expect(shipped, doc).toContain(doc);
  });

  it('imports as ESM, loads through require, type-checks, and runs `npx multileg --version`', async () => {
    const script = (code: string, file: string) => {
      writeFileSync(join(app, file), code);
      return runCommand(process.execPath, [join(app, file)], '', env);
    };
    expect(
      (await script("import { MultilegAgent } from 'multileg';\nconsole.log(typeof MultilegAgent);\n", 'esm.mjs'))
        .stdout,
    ).toBe('function\n');
    const cjs = await script(
      "const { MultilegAgent } = require('multileg');\nconsole.log(typeof MultilegAgent);\n",
      'cjs.cjs',
    );
    expect(cjs.stdout, cjs.stderr).toBe('function\n');

    writeFileSync(
      join(app, 'index.ts'),
      [
        "import { MultilegAgent, type MultilegAgentOptions, type HandshakeReport, LEG_CHANNEL } from 'multileg';",
        "const options: MultilegAgentOptions = { trustedOrigins: ['https://intranet.example'], schemes: ['Negotiate', 'NTLM'] };",
        'const agent = new MultilegAgent(options);',
        'agent.onHandshake((r: HandshakeReport) => console.log(r.scheme, LEG_CHANNEL));',
        // README: the agent's own methods on a composed dispatcher, with no cast.
        'console.log(agent.compose((dispatch) => dispatch).stats().requests);',
        '',
      ].join('\n'),
    );
    // A CommonJS consumer's way (TypeScript 5.8 or later: README), under the same settings.
    writeFileSync(
      join(app, 'consumer.cts'),
      [
        "import ml = require('multileg');",
        "const agent: ml.MultilegAgent = new ml.MultilegAgent({ trustedOrigins: ['https://intranet.example'] });",
        'const code: ml.MultilegErrorCode | undefined = ml.MULTILEG_ERROR_CODES[0];',
        'console.log(agent.stats(), code);',
        '',
      ].join('\n'),
    );
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        // The strictest settings a consumer may have: our .d.ts files are checked under them too
        // (no skipLibCheck), exactOptionalPropertyTypes included.
        compilerOptions: {
          module: 'nodenext',
          target: 'es2023',
          strict: true,
          exactOptionalPropertyTypes: true,
          types: ['node'],
          noEmit: true,
        },
      }),
    );
    const tsc = await runCommand(
      join(app, 'node_modules/typescript/bin/tsc'),
      ['-p', join(app, 'tsconfig.json')],
      '',
      env,
    );
    expect(tsc.stdout + tsc.stderr).toBe('');
    expect(tsc.code).toBe(0);

    const npx = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      import('node:child_process').then(({ execFile }) =>
        execFile('npx', ['--no-install', 'multileg', '--version'], { cwd: app, env }, (err, stdout, stderr) =>
          resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        ),
      );
    });
    expect(npx.stdout, npx.stderr).toMatch(/^multileg \d+\.\d+\.\d+ \(undici 8\./);
    expect(npx.code).toBe(0);
  }, 180_000);

  it('`multileg --help` prints commander’s help from dist/bin/help.json without loading commander, on a pipe and a terminal', async () => {
    const multileg = join(app, 'node_modules/.bin/multileg');
    expect(readdirSync(join(pkgDir, 'dist/bin'))).toContain('help.json');
    // NODE_DEBUG=module names every CommonJS module loaded: commander (CommonJS) must not be one.
    const help = await runCommand(process.execPath, [multileg, '--help'], '', { ...env, NODE_DEBUG: 'module' });
    expect(help.code).toBe(0);
    expect(help.stderr).toContain('MODULE');
    expect(help.stderr).not.toContain('commander');
    expect(help.stdout).toBe(commanderHelp(program(), undefined));
    expect((await runCommand(process.execPath, [multileg, '-h'], '', env)).stdout).toBe(help.stdout);
    // On a terminal 100 columns wide (`script` gives the child one, stty sets its width).
    const sh = join(app, 'help.sh');
    writeFileSync(sh, `stty cols 100 rows 40; exec ${process.execPath} ${multileg} --help\n`);
    const tty = await runCommand('script', ['-qec', `sh ${sh}`, '/dev/null'], '', env);
    expect(tty.stdout.replace(/\r\n/g, '\n')).toBe(commanderHelp(program(), 100));
    expect(commanderHelp(program(), 100)).not.toBe(help.stdout);
  });

  it('an NTLM request over HTTP/1.1 keeps undici’s parser on V8’s baseline compiler (Liftoff), never TurboFan', async () => {
    // TurboFan recompiled the parser's main function on a background thread after a few
    // responses, and the process waited for it before it could exit (src/cli/wasm.ts). The packed
    // command: run from src/, Node's TypeScript stripping compiles WebAssembly of its own.
    const server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    try {
      const ca = join(app, 'ca.pem');
      const body = join(app, 'body.json');
      writeFileSync(ca, server.ca);
      const r = await runCommand(
        process.execPath,
        [
          '--trace-wasm-compilation-times',
          join(app, 'node_modules/.bin/multileg'),
          '--http1.1',
          '-o',
          body, // V8 writes its trace to stdout
          '-u',
          'EXAMPLE\\alice:alicepw',
          '--cacert',
          ca,
          `${server.origin}/auth/packed`,
        ],
        '',
        env,
      );
      expect(r.code, r.stderr.slice(-2000)).toBe(0);
      expect(JSON.parse(readFileSync(body, 'utf8'))).toMatchObject({ user: 'EXAMPLE\\alice', protocol: 'http/1.1' });
      expect(r.stdout).toMatch(/using Liftoff/);
      expect(r.stdout).not.toMatch(/using TurboFan/);
    } finally {
      await server.close();
    }
  });

  it('the command ships as one bundle (scripts/bundle-cli.ts) whose lazily loaded parts load: an HTTP/2 NTLM request (with -D and --retry), the cookie engine (-b FILE -c -), Negotiate without a ticket, doctor', async () => {
    // The command's own modules are joined into dist/bin; the unbundled copy tsc emits is not shipped.
    expect(walk(join(pkgDir, 'dist')).some((f) => f.includes('/dist/cli/'))).toBe(false);
    const multileg = join(app, 'node_modules/.bin/multileg');
    const ntlm = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    const negotiate = await startReferenceServer({ mode: 'session', schemes: ['Negotiate'] });
    try {
      const ca = join(app, 'ca.pem');
      writeFileSync(ca, ntlm.ca);
      const run = (args: string[], more: NodeJS.ProcessEnv = {}) =>
        runCommand(process.execPath, [multileg, '--cacert', ca, ...args], '', { ...env, ...more });
      const r = await run(['-u', 'EXAMPLE\\alice:alicepw', '-D', '%', '--retry', '1', `${ntlm.origin}/auth/bundle`]);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ user: 'EXAMPLE\\alice', protocol: 'h2' });
      // Loaded only for them: --retry's rules (retry.ts), -D's reason phrases (node:http). -D wrote the three heads.
      expect(r.stderr.match(/^HTTP\/2 \d{3}/gm)).toEqual(['HTTP/2 401', 'HTTP/2 401', 'HTTP/2 200']);
      // The cookie engine's chunk, and tough-cookie (a dependency) through its CommonJS entry.
      const cookies = join(app, 'cookies.txt');
      writeFileSync(cookies, `${new URL(ntlm.origin).hostname}\tFALSE\t/\tFALSE\t0\tsid\tpacked\n`);
      const jar = await run(['-u', 'EXAMPLE\\alice:alicepw', '-b', cookies, '-c', '-', `${ntlm.origin}/auth/cookies`]);
      expect(jar.code, jar.stderr).toBe(0);
      expect(jar.stdout).toContain('# Netscape HTTP Cookie File\n');
      expect(ntlm.exchanges.filter((e) => e.path === '/auth/cookies').map((e) => e.requestHeaders.cookie)).toContain(
        'sid=packed',
      );
      // Negotiate's handshake is a chunk of its own, loaded at the first step.
      writeFileSync(join(app, 'ca2.pem'), negotiate.ca);
      const krb = await runCommand(
        process.execPath,
        [multileg, '--negotiate', '-u', ':', '--cacert', join(app, 'ca2.pem'), `${negotiate.origin}/auth/bundle`],
        '',
        { ...env, KRB5CCNAME: `FILE:${join(app, 'no-ccache')}` },
      );
      expect(krb.stderr).toContain('(MULTILEG_KRB_NO_TICKET)');
      const doctor = await runCommand(process.execPath, [multileg, 'doctor', `${ntlm.origin}/auth/bundle`], '', env);
      expect(doctor.stdout).toMatch(/^ok +Node: /m);
    } finally {
      await Promise.all([ntlm.close(), negotiate.close()]);
    }
  });

  it('S2: the command’s one script runs with a V8 code cache of its own (src/cli/code-cache.ts): made by the first run that ends with 0, read and not made again by the next, made anew when V8 rejects it or when it is not this user’s alone; it holds no password', async () => {
    const multileg = join(app, 'node_modules/.bin/multileg');
    const server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    const home = mkdtempSync(join(tmpdir(), 'multileg-cache-'));
    const dir = join(home, 'multileg/code-cache');
    try {
      const ca = join(home, 'ca.pem');
      writeFileSync(ca, server.ca);
      const run = (args: string[]) =>
        runCommand(process.execPath, [multileg, '--cacert', ca, ...args], '', { ...env, XDG_CACHE_HOME: home });
      const request = async (more: NodeJS.ProcessEnv = {}) => {
        const r = await runCommand(
          process.execPath,
          [multileg, '--cacert', ca, '-u', 'EXAMPLE\\alice:alicepw', `${server.origin}/auth/cached`],
          '',
          { ...env, XDG_CACHE_HOME: home, ...more },
        );
        expect(r.code, r.stderr).toBe(0);
        expect(JSON.parse(r.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
      };
      const caches = () => (existsSync(dir) ? readdirSync(dir) : []);
      // A run that fails (a usage error) makes none: the first request's compiled code is what goes in.
      expect((await run(['--no-such-option'])).code).toBe(2);
      expect(caches()).toEqual([]);
      await request();
      expect(caches()).toEqual([expect.stringMatching(/^main-\w+-v\d+\.\d+\.\d+-\w+\.v8$/)]);
      const file = join(dir, caches()[0]!);
      const made = statSync(file);
      expect(made.mode & 0o777).toBe(0o600);
      // V8's code cache holds compiled code and the source's literals, not what the run computed.
      const bytes = readFileSync(file);
      for (const secret of ['alicepw', Buffer.from('alicepw', 'utf16le').toString('latin1')])
        expect(bytes.includes(Buffer.from(secret, 'latin1')), secret).toBe(false);
      // Read, not made again: V8 accepted it (one it rejects is made anew, below).
      await request();
      expect(statSync(file)).toMatchObject({ ino: made.ino, mtimeMs: made.mtimeMs });
      // Other Node options (V8 rejects a cache made under other flags): a file of their own, and
      // neither is made again as runs switch between them (one file, rewritten at each switch, before).
      const heap = { NODE_OPTIONS: '--max-old-space-size=200' };
      await request(heap);
      const [other] = caches().filter((name) => join(dir, name) !== file);
      expect(other).toMatch(/^main-\w+-v[\d.]+-\w+-[0-9a-f]+\.v8$/);
      const otherMade = statSync(join(dir, other!));
      await request();
      await request(heap);
      expect(statSync(file)).toMatchObject({ ino: made.ino, mtimeMs: made.mtimeMs });
      expect(statSync(join(dir, other!))).toMatchObject({ ino: otherMade.ino, mtimeMs: otherMade.mtimeMs });
      // Rejected by V8 (not a cache at all): made anew, and the run is unharmed. Writing one removes a
      // killed run's temporary file (an hour old) and a cache not written for a month; not a fresh one.
      writeFileSync(file, Buffer.alloc(made.size, 7), { mode: 0o600 });
      const old = (name: string, hours: number) => {
        writeFileSync(join(dir, name), 'x', { mode: 0o600 });
        const then = new Date(Date.now() - hours * 3600_000);
        utimesSync(join(dir, name), then, then);
      };
      old('main-killed.v8.1.tmp', 2);
      old('main-writing.v8.2.tmp', 0);
      old('main-OLDBUILD-v22.0.0-x64.v8', 31 * 24);
      await request();
      expect(readFileSync(file).equals(Buffer.alloc(made.size, 7))).toBe(false);
      expect(caches().filter((name) => !name.startsWith(`main-${basename(file).split('-')[1]}-`))).toEqual([
        'main-writing.v8.2.tmp',
      ]);
      // Its first line kept (what the runs that made it exercised, this run's too) and V8's part
      // rejected: made anew all the same, as the names say nothing of code V8 did not take.
      const named = readFileSync(file);
      const line = named.indexOf(0x0a) + 1;
      const garbled = Buffer.concat([named.subarray(0, line), Buffer.alloc(named.length - line, 7)]);
      writeFileSync(file, garbled, { mode: 0o600 });
      await request();
      expect(readFileSync(file).equals(garbled)).toBe(false);
      // A valid cache that another user owns, or that others can write, is not read (cached code runs
      // as this user): the run makes its own in its place.
      const valid = readFileSync(file);
      // (Another user's file: only root can make one here.)
      const planting: { uid?: number; mode?: number }[] = [{ mode: 0o666 }];
      if (process.getuid?.() === 0) planting.push({ uid: 65534 });
      for (const planted of planting) {
        writeFileSync(file, valid);
        chmodSync(file, planted.mode ?? 0o600);
        if (planted.uid !== undefined) chownSync(file, planted.uid, planted.uid);
        const before = statSync(file).ino;
        await request();
        const after = statSync(file);
        expect(after.ino, JSON.stringify(planted)).not.toBe(before);
        expect({ uid: after.uid, mode: after.mode & 0o777 }).toEqual({ uid: process.getuid!(), mode: 0o600 });
      }
      // A directory others can write is made this user's alone before anything in it is read.
      chmodSync(dir, 0o777);
      await request();
      expect(statSync(dir).mode & 0o022).toBe(0);
    } finally {
      await server.close();
    }
  });

  it('S2: the code cache follows what the runs use: one made by an unauthenticated request is made again, once, by an NTLM request (whose functions it lacked), then neither further NTLM nor unauthenticated requests make it again; runs that alternate (HTTP/1.1, HTTP/2) make it again once, not at each switch', async () => {
    const multileg = join(app, 'node_modules/.bin/multileg');
    const server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    const home = mkdtempSync(join(tmpdir(), 'multileg-grow-'));
    const dir = join(home, 'multileg/code-cache');
    try {
      const ca = join(home, 'ca.pem');
      writeFileSync(ca, server.ca);
      const request = async (auth: string[], path: string) => {
        const r = await runCommand(
          process.execPath,
          [multileg, '--cacert', ca, ...auth, `${server.origin}${path}`],
          '',
          {
            ...env,
            XDG_CACHE_HOME: home,
          },
        );
        expect(r.code, r.stderr).toBe(0);
      };
      const unauthenticated = () => request([], '/public/grow');
      const ntlm = () => request(['-u', 'EXAMPLE\\alice:alicepw'], '/auth/grow');
      const cache = () => {
        const names = readdirSync(dir);
        expect(names).toEqual([expect.stringMatching(/^main-\w+-v\d+\.\d+\.\d+-\w+\.v8$/)]);
        return statSync(join(dir, names[0]!));
      };
      await unauthenticated();
      const first = cache();
      await ntlm();
      // Written anew (renamed in: another inode), with the NTLM request's functions beside the first's.
      const grown = cache();
      expect(grown.ino).not.toBe(first.ino);
      expect(grown.size).toBeGreaterThan(first.size);
      for (const next of [ntlm, unauthenticated, ntlm, unauthenticated]) {
        await next();
        expect(cache()).toMatchObject({ ino: grown.ino, mtimeMs: grown.mtimeMs, size: grown.size });
      }
      // Runs that each do what the other does not (HTTP/1.1, HTTP/2): the one new to the cache makes
      // it again, once; it keeps both, so they can alternate without making it again at each switch.
      const http1 = () => request(['--http1.1', '-u', 'EXAMPLE\\alice:alicepw'], '/auth/grow');
      await http1();
      const both = cache();
      expect(both.ino).not.toBe(grown.ino);
      for (const next of [ntlm, http1, unauthenticated, http1, ntlm]) {
        await next();
        expect(cache()).toMatchObject({ ino: both.ino, mtimeMs: both.mtimeMs, size: both.size });
      }
    } finally {
      await server.close();
    }
  });

  it('S2: a code cache that cannot be written whole (a full disk, a quota: here a file size limit) leaves no part of it behind, run after run', async () => {
    const multileg = join(app, 'node_modules/.bin/multileg');
    const server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    const home = mkdtempSync(join(tmpdir(), 'multileg-full-'));
    try {
      writeFileSync(join(home, 'ca.pem'), server.ca);
      for (let i = 0; i < 2; i++) {
        // ulimit -f: a write past 100 KiB fails (EFBIG; Node ignores SIGXFSZ), as on a full disk.
        const r = await runCommand(
          'bash',
          [
            '-c',
            'ulimit -f 100 && exec "$0" "$@"',
            process.execPath,
            multileg,
            '--cacert',
            join(home, 'ca.pem'),
            '-u',
            'EXAMPLE\\alice:alicepw',
            `${server.origin}/auth/full`,
          ],
          '',
          { ...env, XDG_CACHE_HOME: home },
        );
        expect(r.code, r.stderr).toBe(0);
      }
      expect(readdirSync(join(home, 'multileg/code-cache'))).toEqual([]);
    } finally {
      await server.close();
    }
  });

  it('S2: an unexpected error’s stack trace (MULTILEG_DEBUG=1) points at the script’s line, and with --enable-source-maps at src/ (the script run without its code cache)', async () => {
    const multileg = join(app, 'node_modules/.bin/multileg');
    const home = mkdtempSync(join(tmpdir(), 'multileg-maps-'));
    // An error thrown inside the script: where main sets process.title (a password in the arguments).
    const preload = join(home, 'title-throws.cjs');
    writeFileSync(
      preload,
      "Object.defineProperty(process, 'title', { get: () => 'x', set() { throw new Error('title refused'); } });\n",
    );
    const run = (options: string) =>
      runCommand(process.execPath, [multileg, '-u', 'alice:alicepw', 'http://127.0.0.1:9/'], '', {
        ...env,
        XDG_CACHE_HOME: home,
        MULTILEG_DEBUG: '1',
        NODE_OPTIONS: `--require ${preload} ${options}`,
      });
    const plain = await run('');
    expect(plain.stderr).toContain('multileg: unexpected error: title refused');
    const [, script, line, column] = /at main \((.+\.cjs):(\d+):(\d+)\)/.exec(plain.stderr) ?? [];
    expect(script, plain.stderr).toBeDefined();
    // V8 names the assignment's `=`.
    const text = readFileSync(script!, 'latin1').split('\n')[Number(line) - 1]!;
    expect(text.slice(0, Number(column))).toMatch(/process\.title=$/);
    // Strict as its modules were, also where Node's loader runs it (below): its first statement.
    expect(readFileSync(script!, 'latin1')).toMatch(/^"use strict";/);
    const mapped = await run('--enable-source-maps');
    expect(mapped.stderr, mapped.stderr).toMatch(/at main \(.*\/src\/cli\/main\.ts:\d+:\d+\)/);
    expect(mapped.stderr).not.toContain('alicepw');
  });

  it.skipIf(process.getuid?.() !== 0)(
    'S2/R4: root makes no directory for the code cache or the state file in another user’s tree (`sudo -E`, `su` keep the user’s HOME): the user’s ~/.cache and ~/.local stay the user’s',
    async () => {
      const multileg = join(app, 'node_modules/.bin/multileg');
      const server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
      const home = mkdtempSync(join(tmpdir(), 'multileg-home-'));
      try {
        writeFileSync(join(home, 'ca.pem'), server.ca);
        chownSync(home, 65534, 65534);
        const r = await runCommand(
          process.execPath,
          [multileg, '--cacert', join(home, 'ca.pem'), '-u', 'EXAMPLE\\alice:alicepw', `${server.origin}/auth/root`],
          '',
          { ...env, HOME: home, XDG_CACHE_HOME: '', XDG_STATE_HOME: '' },
        );
        expect(r.code, r.stderr).toBe(0);
        // Root's ~/.cache there would be the user's no more, for every program of theirs; nor the
        // state directory (refusals.ts: the password went unproved), which says so once instead.
        expect(existsSync(join(home, '.cache'))).toBe(false);
        expect(existsSync(join(home, '.local'))).toBe(false);
        expect(r.stderr).toMatch(/another user's tree; .* set XDG_STATE_HOME to a writable directory/);
      } finally {
        await server.close();
      }
    },
  );

  it.skipIf(!OLD_NODE)('on the system Node 20, `import "multileg"` says which Node it needs', async () => {
    writeFileSync(
      join(app, 'old.mjs'),
      "import('multileg').then(() => console.log('loaded'), (e) => console.log(e.code, e.message));\n",
    );
    const r = await runCommand(OLD_NODE!, [join(app, 'old.mjs')]);
    expect(r.stdout).toMatch(/^MULTILEG_NODE_VERSION multileg needs Node >= 22\.19 \(this is Node 20\./);
    const cli = await runCommand(OLD_NODE!, [join(app, 'node_modules/.bin/multileg'), '--version']);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toMatch(/^multileg needs Node >= 22\.19/);
  });
});
