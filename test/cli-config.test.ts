/**
 * `-K FILE` / `--config FILE` / `-K -`: curl's config file, side by side with curl 7.88 against a
 * plain server that records what each request carried, and the secrets a file holds kept out of
 * everything the command prints (S2).
 */
import { once } from 'node:events';
import { mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { type CliResult, runCli, runCommand } from './cli-helpers.ts';

describe('multileg -K: curl’s config file', () => {
  let plain: Server;
  let origin: string;
  let dir: string;
  /** What each request carried: the Basic user:password (or '-') and the X- headers. */
  const seen: string[] = [];
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'multileg-config-'));
    plain = createServer((req, res) => {
      const auth = req.headers.authorization;
      const basic = auth?.startsWith('Basic ') ? Buffer.from(auth.slice(6), 'base64').toString() : '-';
      const extra = Object.entries(req.headers)
        .filter(([name]) => name.startsWith('x-'))
        .map(([name, value]) => `${name}=${JSON.stringify(value)}`)
        .sort();
      // A Basic challenge without credentials (multileg answers it; curl sends -u's at once).
      if (basic === '-' && req.url?.startsWith('/auth'))
        res.writeHead(401, { 'www-authenticate': 'Basic realm="t"' }).end('who?\n');
      else {
        seen.push([req.method, req.url, basic, ...extra].join(' '));
        res.writeHead(200, { 'content-type': 'text/plain' }).end(`hello ${basic}\n`);
      }
    });
    plain.listen(0, '127.0.0.1');
    await once(plain, 'listening');
    origin = `http://127.0.0.1:${(plain.address() as { port: number }).port}`;
  });
  afterAll(() => plain.close());

  let n = 0;
  /** A config file in the test's folder with these lines. */
  const file = (...lines: string[]) => {
    const path = join(dir, `c${++n}`);
    writeFileSync(path, lines.join('\n'));
    return path;
  };
  /** curl and multileg with the same arguments: each one's result and what the server saw. */
  const both = async (args: readonly string[], input = '') => {
    seen.length = 0;
    const curl = await runCommand('curl', args, input);
    const curlSeen = [...seen];
    seen.length = 0;
    const ours = await runCli(args, { input });
    return { curl, ours, curlSeen, oursSeen: [...seen] };
  };
  const same = (r: { curl: CliResult; ours: CliResult; curlSeen: string[]; oursSeen: string[] }) => {
    expect(r.ours.code, r.ours.stderr).toBe(r.curl.code);
    expect(r.ours.stdout).toBe(r.curl.stdout);
    expect(r.oursSeen).toEqual(r.curlSeen);
  };

  it('-K FILE as curl 7.88 reads it: long names with or without dashes, separated by white space, = or :, quoted values with curl’s escapes, # // * comments and blank lines, `url =` lines, short options alone, together and with their value attached', async () => {
    const config = file(
      '# a comment',
      '   // another, after blanks',
      '* and another',
      '',
      'user = "alice:pa ss\\"w\\\\d"',
      '--header "X-Tab: a\\tb"',
      'header:"X-Colon: 1"',
      '-H "X-Short: s"',
      '-sSHX-Attached:\\q',
      'write-out = "[%{http_code}]\\n"',
      `\tURL = ${origin}/auth/one`,
      `url ${origin}/auth/two`,
    );
    const r = await both(['-K', config]);
    same(r);
    expect(r.ours.code).toBe(0);
    expect(r.ours.stdout).toBe('hello alice:pa ss"w\\d\n[200]\nhello alice:pa ss"w\\d\n[200]\n');
    expect(r.oursSeen).toEqual([
      'GET /auth/one alice:pa ss"w\\d x-attached="\\\\q" x-colon="1" x-short="s" x-tab="a\\tb"',
      'GET /auth/two alice:pa ss"w\\d x-attached="\\\\q" x-colon="1" x-short="s" x-tab="a\\tb"',
    ]);
  });

  it('-K applies in place, as curl inserts the options where it stands: what comes after it wins, what came before loses; several -K, a -K in a file, --config, -sK and -K - (stdin)', async () => {
    const bob = file('user = bob:b');
    const carol = file('user carol:c', `config ${bob}`, 'silent');
    const url = `${origin}/auth/x`;
    for (const args of [
      ['-u', 'alice:a', '-K', bob, url],
      ['-K', bob, '-u', 'alice:a', url],
      ['-K', bob, '--config', carol, url],
      ['--config', carol, '-u', 'alice:a', url],
      ['-sK', bob, url],
    ])
      same(await both(args));
    const stdin = await both(['-K', '-', url], 'user = "dave:d"\n');
    same(stdin);
    expect(stdin.oursSeen).toEqual(['GET /auth/x dave:d']);
    // A file that names itself (by another spelling too) is read once, with a warning.
    const loop = file('user erin:e');
    writeFileSync(loop, `user erin:e\nconfig ${dir}/./${loop.slice(dir.length + 1)}\n`);
    const looped = await runCli(['-K', loop, url]);
    expect(looped.code).toBe(0);
    expect(looped.stdout).toBe('hello erin:e\n');
    expect(looped.stderr).toMatch(/^multileg: Warning: \S+:2: -K \S+ is already being read; skipped\n$/);
    const carolThenBob = await both(['-K', carol, url]);
    same(carolThenBob);
    expect(carolThenBob.oursSeen).toEqual(['GET /auth/x bob:b']);
  });

  it('exit codes as curl 7.88: a -K file that is not there is 26 (nothing sent); one named in a file is a warning and it goes on; an unknown option, an option without its value, a value the option cannot take, a flag with a value: a warning, the line skipped (or the flag taken), exit 0', async () => {
    const missing = await both(['-K', join(dir, 'nothing-here'), `${origin}/m`]);
    same(missing);
    expect(missing.ours.code).toBe(26);
    expect(missing.oursSeen).toEqual([]);
    expect(missing.ours.stderr).toBe(`multileg: -K ${join(dir, 'nothing-here')}: no such file\n`);
    const lenient = file(
      'no-such-option 1',
      'user',
      'max-time abc',
      'globoff yes',
      `config ${join(dir, 'nothing-here')}`,
      '-H "X-After: all"',
    );
    const r = await both(['-K', lenient, `${origin}/lenient`]);
    same(r);
    expect(r.ours.code).toBe(0);
    expect(r.oursSeen).toEqual(['GET /lenient - x-after="all"']);
    // One warning a line, as curl's, each naming the file and line.
    expect(r.ours.stderr.match(/^multileg: Warning: \S+:\d: /gm)).toHaveLength(5);
    expect(r.curl.stderr.match(/^Warning: \S+:\d: /gm)).toHaveLength(5);
    // A -s before the -K mutes them, as curl's.
    expect((await runCli(['-s', '-K', lenient, `${origin}/lenient`])).stderr).toBe('');
  });

  it('-K bounds what it reads: a file that names itself through links is read once (its real path), files naming one another many times stop at 100 reads (exit 2), a file larger than 1 MiB (/dev/zero, a pipe) is 26; none reads without end (curl 7.88 hangs on the first two)', async () => {
    const url = `${origin}/auth/x`;
    // Eight lines naming links to the file itself: before, each link was a new file (8^16 reads).
    const self = file('user erin:e');
    const links = Array.from({ length: 8 }, (_, i) => `${self}-l${i}`);
    for (const link of links) symlinkSync(self, link);
    writeFileSync(self, ['user erin:e', ...links.map((l) => `config ${l}`)].join('\n'));
    const looped = await runCli(['-K', self, url]);
    expect([looped.code, looped.stdout]).toEqual([0, 'hello erin:e\n']);
    expect(looped.stderr.match(/^multileg: Warning: \S+:\d: -K \S+ is already being read; skipped$/gm)).toHaveLength(8);
    expect(looped.stderr.split('\n')).toHaveLength(9);
    expect(await runCli(['-s', '-K', self, url])).toMatchObject({ code: 0, stdout: 'hello erin:e\n', stderr: '' });
    // Sixteen levels of distinct files, each naming the next eight times.
    const levels = Array.from({ length: 17 }, () => file());
    levels.forEach((path, i) => {
      const next = levels[i + 1];
      writeFileSync(path, next ? Array(8).fill(`config ${next}`).join('\n') : 'user erin:e');
    });
    seen.length = 0;
    const fanned = await runCli(['-s', '-K', levels[0]!, url]);
    expect([fanned.code, fanned.stderr]).toEqual([
      2,
      'multileg: -K: more than 100 config files read in all (config files naming one another, or one file, many times); name fewer\n',
    ]);
    const zero = await runCli(['-K', '/dev/zero', url]);
    expect([zero.code, zero.stderr]).toEqual([
      26,
      'multileg: -K /dev/zero: larger than 1048576 bytes, not read (not a config file?); give a config file\n',
    ]);
    const piped = await runCli(['-K', '-', url], { input: `user erin:e\n${'#'.repeat(1024 * 1024)}\n` });
    expect([piped.code, piped.stderr]).toEqual([
      26,
      'multileg: -K - (stdin): larger than 1048576 bytes, not read (not a config file?); give a config file\n',
    ]);
    expect(seen).toEqual([]);
  });

  it('-K reads a file of Latin-1 bytes as curl does: a header value goes byte for byte (curl sends 0xE9, as here), a password keeps its é (it was changed into U+FFFD); a UTF-8 file is read as UTF-8', async () => {
    const latin1 = join(dir, 'latin1');
    writeFileSync(latin1, Buffer.from('header = "X-I: caf\xe9"\n', 'latin1'));
    const header = await both(['-K', latin1, `${origin}/latin1`]);
    same(header);
    expect(header.oursSeen).toEqual(['GET /latin1 - x-i="café"']);
    const password = join(dir, 'latin1-password');
    writeFileSync(password, Buffer.from('user = "alice:caf\xe9"\n', 'latin1'));
    const utf8 = file('user = "bob:café"');
    seen.length = 0;
    for (const config of [password, utf8]) expect((await runCli(['-K', config, `${origin}/auth/p`])).code).toBe(0);
    // Basic sends the password in UTF-8 (RFC 7617), as the same password typed on the command line.
    expect(seen).toEqual(['GET /auth/p alice:café', 'GET /auth/p bob:café']);
  });

  it('-K - and --password-stdin (or -d @-) both want stdin: bad usage, exit 2, nothing sent', async () => {
    seen.length = 0;
    for (const second of [
      ['-u', 'alice', '--password-stdin'],
      ['-d', '@-'],
      ['-K', '-'],
    ]) {
      const r = await runCli(['-K', '-', ...second, `${origin}/auth/x`], { input: 'silent\n' });
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(
        /^multileg: -K - and (--password-stdin|-d @-|-K -): only one of them can read stdin; give the options in a file \(-K FILE\)\n$/,
      );
    }
    expect(seen).toEqual([]);
  });

  describe('S2: secrets in a config file', () => {
    let server: ReferenceServer;
    beforeAll(async () => {
      server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    });
    afterAll(() => server.close());

    it('S2: the password of a -K file is in none of -v, --json, --har, nor the warnings, nor a line the file holds alone', async () => {
      const ca = join(dir, 'ca.pem');
      writeFileSync(ca, server.ca);
      const har = join(dir, 'secret.har');
      const config = file(
        'user = "EXAMPLE\\\\alice:alicepw"',
        // A misformatted file: the password on a line of its own, an option given it as a value.
        'alicepw',
        'max-time alicepw',
        '--user=EXAMPLE\\alice:alicepw',
        `cacert ${ca}`,
      );
      const r = await runCli(['-v', '--json', '--har', har, '-K', config, `${server.origin}/auth/start`]);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ status: 200, handshakes: [{ identity: 'EXAMPLE\\alice' }] });
      expect(r.stderr).toMatch(/Warning: \S+:2: unknown option/);
      expect(r.stderr).toMatch(/Warning: \S+:3: '--max-time' expected seconds/);
      for (const text of [r.stdout, r.stderr, readFileSync(har, 'utf8')]) expect(text).not.toContain('alicepw');
    });
  });
});
