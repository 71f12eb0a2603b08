/**
 * The command line's last two exit paths, each forced in the child process by a preloaded module
 * (no DNS query leaves the machine): an unknown host (curl's 6) and a bug of ours (1, one line,
 * no stack trace).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createSecureServer, constants as h2 } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { runCli } from './cli-helpers.ts';
import { droppingH2Server, loopbackOrigin } from './helpers.ts';

const preload = (name: string) => `--import ${fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url))}`;

/** Runs `body` with the test CA in a file (for --cacert), then removes it and closes what `closers` holds. */
async function withCaFile(closers: Array<() => Promise<unknown>>, body: (ca: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'multileg-ca-'));
  try {
    const ca = join(dir, 'ca.pem');
    writeFileSync(ca, CA_CERT);
    await body(ca);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    for (const close of closers) await close();
  }
}

describe('multileg command line: exit paths a test can only force', () => {
  it('exits 6 like curl when the host name does not resolve, with one line naming it', async () => {
    const r = await runCli(['https://nowhere.test/x'], { env: { NODE_OPTIONS: preload('dns-fails.mjs') } });
    expect(r.code).toBe(6);
    expect(r.stderr.trim()).toBe('multileg: could not resolve host nowhere.test');
    expect(r.stdout).toBe('');
  });

  it("cli: `multileg help` (the bare word help as the URL, a name that does not resolve) keeps curl's exit 6 and line, with \"did you mean multileg --help?\"; `help doctor` names doctor's --help; -w %{errormsg} keeps curl's words; a URL with a scheme, dot or port gets no hint", async () => {
    const env = { NODE_OPTIONS: preload('dns-fails.mjs') };
    const help = await runCli(['help'], { env });
    expect([help.code, help.stderr, help.stdout]).toEqual([
      6,
      'multileg: could not resolve host help; did you mean multileg --help?\n',
      '',
    ]);
    const doctor = await runCli(['help', 'doctor'], { env });
    expect([doctor.code, doctor.stderr]).toEqual([
      6,
      'multileg: could not resolve host help; did you mean multileg doctor --help?\nmultileg: could not resolve host doctor\n',
    ]);
    const errormsg = await runCli(['-s', '-w', '[%{errormsg}]', 'help'], { env });
    expect([errormsg.code, errormsg.stdout]).toEqual([6, '[could not resolve host help]']);
    for (const url of ['https://help/', 'help.', 'help:443', 'helpdesk'])
      expect((await runCli([url], { env })).stderr, url).toMatch(/^multileg: could not resolve host help(\.|desk)?\n$/);
  });

  it('cli: `multileg doctor help`: its schemes check fails as before (could not resolve host help, exit 1) with the fix "did you mean multileg doctor --help?"; another host gets no such fix', async () => {
    const env = { NODE_OPTIONS: preload('dns-fails.mjs') };
    const schemes = async (url: string) => {
      const r = await runCli(['doctor', '--json', url], { env });
      expect(r.code).toBe(1);
      return JSON.parse(r.stdout).checks.find((c: { name: string }) => c.name === 'schemes');
    };
    expect(await schemes('help')).toMatchObject({
      verdict: 'FAIL',
      detail: 'the server could not be reached: could not resolve host help',
      fix: 'did you mean multileg doctor --help?',
    });
    expect(await schemes('nowhere.test')).toMatchObject({ verdict: 'FAIL', fix: null });
  });

  it('exits 1 with one line and no stack trace when something of ours breaks', async () => {
    const r = await runCli(['--max-time', '5000', 'https://localhost:1/x'], {
      env: { NODE_OPTIONS: preload('crash-on-request.mjs') },
    });
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe('multileg: unexpected error: simulated internal bug');
  });

  it("C8: an HTTP/2 server that ends a new connection under the first stream, without a byte of an answer, is curl's 52 (empty reply), not 56: its SETTINGS are no response head (review r72)", async () => {
    const closers: Array<() => Promise<unknown>> = [];
    const origin = await loopbackOrigin(droppingH2Server(), closers);
    await withCaFile(closers, async (ca) => {
      const host = new URL(origin).host;
      const r = await runCli(['--cacert', ca, `${origin}/a`]);
      // Before: 56, "closed the connection after 18 bytes of a response head".
      expect(r.code).toBe(52);
      expect(r.stderr).toBe(
        `multileg: empty reply from ${host}: it closed the connection without answering (MULTILEG_CONNECTION_CLOSED)\n`,
      );
    });
  });

  it("R1: an HTTP/2 server that resets the stream (INTERNAL_ERROR) after the response head is curl's 18, one line with the typed message naming the code, the cut response and the fix", async () => {
    const closers: Array<() => Promise<unknown>> = [];
    const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: false });
    server.on('stream', (stream) => {
      stream.on('error', () => {});
      // waitForTrailers: no END_STREAM with the data, so the reset comes mid-response.
      stream.respond({ ':status': 200 }, { waitForTrailers: true });
      stream.write('partial', () => setTimeout(() => stream.close(h2.NGHTTP2_INTERNAL_ERROR), 20));
    });
    const origin = await loopbackOrigin(server, closers);
    await withCaFile(closers, async (ca) => {
      const r = await runCli(['--cacert', ca, `${origin}/a`]);
      // Before: 18, "closed the connection before the end of the body (ERR_HTTP2_STREAM_ERROR)".
      expect([r.code, r.stdout]).toEqual([18, 'partial']);
      expect(r.stderr).toBe(
        `multileg: origin ${origin} reset the HTTP/2 stream of the GET with RST_STREAM INTERNAL_ERROR (0x2) after its response head: the response was cut short (its head and part of its body delivered), the server failed or gave up the response: check the server's logs; the request is idempotent: it may be sent again (MULTILEG_CONNECTION_CLOSED)\n`,
      );
    });
  });

  it("R1: an HTTP/2 server that resets the stream with ENHANCE_YOUR_CALM before any response is curl's 56, one line with the typed message saying to slow down", async () => {
    const closers: Array<() => Promise<unknown>> = [];
    const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: false });
    server.on('stream', (stream) => {
      stream.on('error', () => {});
      stream.close(h2.NGHTTP2_ENHANCE_YOUR_CALM);
    });
    const origin = await loopbackOrigin(server, closers);
    await withCaFile(closers, async (ca) => {
      const r = await runCli(['--cacert', ca, '-d', 'x=1', `${origin}/a`]);
      // Before: 1, "multileg: Stream closed with error code NGHTTP2_ENHANCE_YOUR_CALM (ERR_HTTP2_STREAM_ERROR)".
      expect([r.code, r.stdout]).toEqual([56, '']);
      expect(r.stderr).toBe(
        `multileg: origin ${origin} reset the HTTP/2 stream of the POST with RST_STREAM ENHANCE_YOUR_CALM (0xb) before any response, the server thinks the client misbehaves (too many requests or streams at once): slow down, send fewer requests at once (lower connections or limits), then send it again; not sent again, as the server may have processed it (only REFUSED_STREAM says it did not): send the POST again only if that is safe (MULTILEG_CONNECTION_CLOSED)\n`,
      );
    });
  });

  it("R1: an HTTP/2 server that refuses every stream (REFUSED_STREAM) is curl's 56, one line with the typed message — not processed, safe to send again — not undici's raw stream error; --retry-all-errors sends it again", async () => {
    const closers: Array<() => Promise<unknown>> = [];
    const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: false });
    let streams = 0;
    server.on('stream', (stream) => {
      streams++;
      stream.on('error', () => {});
      stream.close(h2.NGHTTP2_REFUSED_STREAM);
    });
    const origin = await loopbackOrigin(server, closers);
    await withCaFile(closers, async (ca) => {
      const r = await runCli(['--cacert', ca, '-d', 'x=1', `${origin}/a`]);
      // Before: 1, "multileg: Stream closed with error code NGHTTP2_REFUSED_STREAM (ERR_HTTP2_STREAM_ERROR)".
      expect(r.code).toBe(56);
      expect(r.stderr).toBe(
        `multileg: ${origin} refused the HTTP/2 stream of the POST 4 times on 2 connections before any response (RST_STREAM REFUSED_STREAM: the server sheds load or caps its concurrent streams); the request was not processed (RFC 9113 §8.7), so it is safe to send again, whatever its method: retry later, check the server's load and its stream limit, or use HTTP/1.1 (--http1.1) (MULTILEG_STREAM_REFUSED)\n`,
      );
      expect([r.stdout, streams]).toEqual(['', 4]);
      // Nothing of the credentials: --retry-all-errors sends it again, as curl does its 56.
      const again = await runCli([
        '--cacert',
        ca,
        '--retry',
        '1',
        '--retry-all-errors',
        '--retry-delay',
        '1',
        `${origin}/b`,
      ]);
      expect([again.code, streams]).toEqual([56, 12]);
      expect(again.stderr).toContain('(retrying all errors)');
    });
  });
});
