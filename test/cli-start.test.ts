/**
 * What the command's start depends on (issue 10 item 5, docs/PERFORMANCE.md "CLI start"): Node's
 * own modules load from their built-in code cache, and a request loads no mechanism code it does
 * not run (that undici's HTTP/1.1 parser stays on V8's baseline compiler is checked on the packed
 * command, package.test.ts). How fast it starts is measured in bench/cli-start.ts, never asserted.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { runCli } from './cli-helpers.ts';

describe('the command’s start', () => {
  let server: ReferenceServer;
  let ca: string;
  let hook: string;
  beforeAll(async () => {
    server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    const dir = mkdtempSync(join(tmpdir(), 'multileg-start-'));
    ca = join(dir, 'ca.pem');
    writeFileSync(ca, server.ca);
    hook = join(dir, 'loaded.mjs');
    writeFileSync(
      hook,
      "import { registerHooks } from 'node:module';\n" +
        "registerHooks({ load(url, context, next) { process.stderr.write('loaded ' + url + '\\n'); return next(url, context); } });\n",
    );
  });
  afterAll(() => server.close());

  const ntlm = (http1: boolean) => [
    ...(http1 ? ['--http1.1'] : []),
    '-u',
    'EXAMPLE\\alice:alicepw',
    '--cacert',
    ca,
    `${server.origin}/auth/start`,
  ];

  for (const http1 of [false, true])
    it(`an NTLM request over ${http1 ? 'HTTP/1.1' : 'HTTP/2'} compiles none of Node’s own modules from source: no V8 flag is set before they load`, async () => {
      // NODE_DEBUG_NATIVE=CODE_CACHE says, for each of Node's own modules loaded, whether its
      // built-in code cache was accepted. A V8 flag set at run time changes the hash that cache
      // is checked against: set before tls, http2 and the rest loaded, it had them all rejected.
      const r = await runCli(ntlm(http1), { env: { NODE_DEBUG_NATIVE: 'CODE_CACHE' } });
      expect(r.code, r.stderr.slice(-2000)).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ user: 'EXAMPLE\\alice', protocol: http1 ? 'http/1.1' : 'h2' });
      expect(r.stderr).toMatch(/Code cache of internal\/tls\/wrap .*is accepted/);
      expect(r.stderr.match(/Code cache of .* is rejected/g) ?? []).toEqual([]);
    });

  /** The files a command loads (a load hook, preloaded: it sees import and require alike). */
  async function filesLoaded(args: readonly string[]): Promise<string[]> {
    const r = await runCli(args, { nodeArgs: ['--import', pathToFileURL(hook).href] });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
    return [...r.stderr.matchAll(/^loaded (file:\S+)$/gm)].map((m) => fileURLToPath(m[1]!));
  }

  it('an NTLM request loads none of Negotiate’s handshake code (GSS-API, SPNEGO, the addons’ loaders): a Negotiate context loads it at its first step; nor the server side of NTLM', async () => {
    const loaded = await filesLoaded(ntlm(false));
    expect(loaded).toContainEqual(expect.stringMatching(/\/src\/mechanisms\/ntlm\/index\.ts$/));
    expect(loaded).toContainEqual(expect.stringMatching(/\/src\/mechanisms\/negotiate\/mechanism\.ts$/));
    const unused =
      /\/src\/mechanisms\/(gssapi\/|spnego\/|negotiate\/(context|backend|addon|spn)\.ts$|ntlm\/acceptor\.ts$)/;
    expect(loaded.filter((file) => unused.test(file))).toEqual([]);
  });

  it('loads commander through its CommonJS entry, without the ESM wrapper Node would scan for export names', async () => {
    const loaded = (await filesLoaded(ntlm(false))).filter((file) => file.includes('/node_modules/commander/'));
    expect(loaded).toContainEqual(expect.stringMatching(/\/commander\/lib\/command\.js$/));
    expect(loaded.filter((file) => !file.endsWith('.js'))).toEqual([]);
  });

  it('zlib and the body decoders (decode.ts) load only with --compressed: a plain request loads neither', async () => {
    const loads = async (args: readonly string[]) => {
      const r = await runCli([...args, ...ntlm(false)], {
        env: { NODE_DEBUG_NATIVE: 'CODE_CACHE' },
        nodeArgs: ['--import', pathToFileURL(hook).href],
      });
      expect(r.code, r.stderr.slice(-2000)).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
      return {
        zlib: /Code cache of zlib\b/.test(r.stderr),
        decode: /^loaded file:\S+\/src\/cli\/decode\.ts$/m.test(r.stderr),
      };
    };
    expect(await loads([])).toEqual({ zlib: false, decode: false });
    expect(await loads(['--compressed'])).toEqual({ zlib: true, decode: true });
  });

  it("-K's reader (config.ts) loads only for a command line that names -K: a run without one loads nothing of it", async () => {
    const config = join(ca, '..', 'start.conf');
    writeFileSync(config, 'silent\n');
    expect((await filesLoaded(ntlm(false))).filter((file) => file.endsWith('/src/cli/config.ts'))).toEqual([]);
    expect(await filesLoaded(['-K', config, ...ntlm(false)])).toContainEqual(
      expect.stringMatching(/\/src\/cli\/config\.ts$/),
    );
  });

  it("-w loads and listens for its timings (timings.ts, diagnostics channels) only when the format names a phase time or a head's size: none for a run without -w, nor for %{http_code} %{size_upload} %{time_total}", async () => {
    const timings = async (format: string | undefined) => {
      const args = [...(format === undefined ? [] : ['-o', '/dev/null', '-w', format]), ...ntlm(false)];
      const r = await runCli(args, { nodeArgs: ['--import', pathToFileURL(hook).href] });
      expect(r.code, r.stderr.slice(-2000)).toBe(0);
      return { out: r.stdout, loaded: /^loaded file:\S+\/src\/cli\/timings\.ts$/m.test(r.stderr) };
    };
    expect((await timings(undefined)).loaded).toBe(false);
    expect(await timings('%{http_code} %{size_upload} %{time_total}')).toMatchObject({ loaded: false });
    const named = await timings('%{time_connect} %{size_request}');
    expect(named.loaded).toBe(true);
    expect(named.out).toMatch(/^\d+\.\d{6} [1-9]\d*$/);
  });
});
