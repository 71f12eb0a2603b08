/**
 * `--compressed`, as curl 7.88's (the installed reference client, run side by side against the same
 * servers): the Accept-Encoding it sends, the body decoded by its Content-Encoding, curl's 61 for
 * one that does not decode, the heads and -w's sizes as received, and a handshake's 401s left
 * alone (reference server, NTLM).
 */
import { once } from 'node:events';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { brotliCompressSync, deflateRawSync, deflateSync, gzipSync, zstdCompressSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bodyDecoding } from '../src/cli/decode.ts';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { runCli as run, runCommand } from './cli-helpers.ts';

const CURL = '/usr/bin/curl';
const TEXT = Buffer.from('multileg --compressed, as curl\n'.repeat(40));
const GZIP = gzipSync(TEXT);

/** Path → [Content-Encoding, body] of the plain server's answers. */
const ANSWERS: Record<string, [string | string[], Buffer]> = {
  '/gzip': ['gzip', GZIP],
  '/x-gzip': ['x-gzip', GZIP],
  '/deflate': ['deflate', deflateSync(TEXT)],
  // "deflate" as RFC 1951, without the zlib wrapper (servers that read the name so): curl takes it.
  '/raw-deflate': ['deflate', deflateRawSync(TEXT)],
  '/br': ['br', brotliCompressSync(TEXT)],
  '/zstd': ['zstd', zstdCompressSync(TEXT)],
  '/gzip-identity': ['gzip, identity', GZIP],
  '/deflate-gzip': ['deflate, gzip', gzipSync(deflateSync(TEXT))],
  '/two-headers': [['deflate', 'gzip'], gzipSync(deflateSync(TEXT))],
  '/identity': ['identity', TEXT],
  '/corrupt-gzip': ['gzip', Buffer.concat([GZIP.subarray(0, 10), Buffer.from('not the deflate data of a gzip body')])],
  '/corrupt-deflate': ['deflate', Buffer.from('not deflate data at all')],
  '/corrupt-br': ['br', Buffer.from('not brotli data at all')],
  '/unknown': ['compress', TEXT],
  '/six': [Array(6).fill('identity').join(', '), TEXT],
  '/five': [Array(5).fill('identity').join(', '), TEXT],
  '/empty': ['gzip', Buffer.alloc(0)],
  '/cut': ['gzip', GZIP.subarray(0, GZIP.length - 12)],
};

describe('multileg --compressed, as curl', () => {
  let plain: Server;
  let origin: string;
  let server: ReferenceServer;
  let dir: string;
  let ca: string;
  /** The Accept-Encoding of each request the plain server received, by path (null: none). */
  const asked = new Map<string, Array<string | null>>();
  beforeAll(async () => {
    plain = createServer((req, res) => {
      const path = req.url ?? '/';
      asked.set(path, [...(asked.get(path) ?? []), req.headers['accept-encoding'] ?? null]);
      if (path === '/204') {
        res.writeHead(204, { 'content-encoding': 'gzip' }).end();
        return;
      }
      // /six-204, /six-304, /six-302 (to /gzip?six), /six-404: that status with 6 codings.
      const six = /^\/six-(\d{3})$/.exec(path);
      if (six) {
        const status = Number(six[1]);
        const head = { 'content-encoding': Array(6).fill('identity').join(', '), location: '/gzip?six' };
        res.writeHead(status, head).end(status === 204 || status === 304 ? undefined : 'abc');
        return;
      }
      // /split-six, /split-six-404: 3 + 3 codings on two lines between two other headers.
      const split = /^\/split-six(-404)?$/.exec(path);
      if (split) {
        const lines = ['x-before', '1', 'content-encoding', 'identity, identity, identity'];
        res.writeHead(split[1] ? 404 : 200, [...lines, ...lines.slice(2), 'x-after', '2']).end('abc');
        return;
      }
      // /split-mid: 3 + 3 codings with another header between them, and a repeated header around a third.
      if (path === '/split-mid') {
        const codings = ['content-encoding', 'identity, identity, identity'];
        res.writeHead(200, [...codings, 'x-mid', '1', ...codings, 'x-a', '1', 'x-b', '2', 'x-a', '3']).end('abc');
        return;
      }
      const [coding, body] = ANSWERS[path] ?? ['gzip', GZIP];
      // setHeader: a list is sent as that many Content-Encoding lines.
      res.setHeader('content-type', 'text/plain');
      res.setHeader('content-encoding', coding);
      res.setHeader('content-length', body.length);
      res.writeHead(200);
      res.end(req.method === 'HEAD' ? undefined : body);
    });
    plain.listen(0, '127.0.0.1');
    await once(plain, 'listening');
    origin = `http://127.0.0.1:${(plain.address() as { port: number }).port}`;
    // /auth/gz: the final answer gzip, every 401 of the handshake labelled gzip but not gzip.
    server = await startReferenceServer({
      mode: 'session',
      schemes: ['NTLM'],
      faults: {
        contentEncoding: ({ status, request }) =>
          request.path.startsWith('/auth/gz') ? (status === 401 ? 'corrupt-gzip' : 'gzip') : undefined,
      },
    });
    dir = mkdtempSync(join(tmpdir(), 'multileg-compressed-'));
    ca = join(dir, 'ca.pem');
    writeFileSync(ca, server.ca);
  });
  afterAll(async () => {
    plain.closeAllConnections();
    plain.close();
    await server.close();
  });

  /** One command line run by multileg and by curl: exit code, stdout, stderr of each. */
  const both = async (args: readonly string[]) => ({
    ours: await run(args),
    curl: await runCommand(CURL, args),
  });

  it('--compressed: curl\'s Accept-Encoding goes with the request, and gzip, x-gzip, deflate (with and without its zlib wrapper), br, zstd and stacked codings ("gzip, identity", "deflate, gzip", two headers) are written decoded, byte for byte as curl 7.88 writes them; -w %{size_download} is the bytes received, as curl\'s; without --compressed the body is written as it came', async () => {
    for (const path of [
      '/gzip',
      '/x-gzip',
      '/deflate',
      '/raw-deflate',
      '/br',
      '/zstd',
      '/gzip-identity',
      '/deflate-gzip',
      '/two-headers',
      '/identity',
      '/five',
    ]) {
      const { ours, curl } = await both(['-s', '--compressed', '-w', '\n%{size_download}', `${origin}${path}`]);
      expect(ours.code, `${path}: ${ours.stderr}`).toBe(0);
      expect(curl.code, path).toBe(0);
      expect(ours.stdout, path).toBe(curl.stdout);
      expect(ours.stdout, path).toBe(`${TEXT}\n${ANSWERS[path]![1].length}`);
    }
    // The same Accept-Encoding as curl's (built with zlib, brotli and zstd), on every request.
    expect(new Set(asked.get('/gzip'))).toEqual(new Set(['deflate, gzip, br, zstd']));
    // -o: the decoded body in the file.
    const file = join(dir, 'br.out');
    expect((await run(['-s', '--compressed', '-o', file, `${origin}/br`])).code).toBe(0);
    expect(readFileSync(file)).toEqual(TEXT);
    // Without --compressed: no Accept-Encoding, the bytes as they came (as before, and as curl).
    for (const who of ['ours', 'curl'] as const) {
      const raw = join(dir, `raw.${who}`);
      const args = ['-s', '-o', raw, `${origin}/gzip?plain`];
      expect((who === 'ours' ? await run(args) : await runCommand(CURL, args)).code).toBe(0);
      expect(readFileSync(raw), who).toEqual(GZIP);
    }
    expect(asked.get('/gzip?plain')).toEqual([null, null]);
  });

  it("--compressed: a body that does not decode is curl's 61, with curl's words first — a corrupt gzip or deflate body (zlib's reason), a corrupt br body, a coding it does not know (it names those it does), more than 5 codings; an empty body, a body cut short, a HEAD's and a 204's do not fail (curl's)", async () => {
    const cases: Array<[string, RegExp]> = [
      [
        '/corrupt-gzip',
        /^multileg: Error while processing content unencoding: invalid block type: the gzip body from /,
      ],
      ['/corrupt-deflate', /^multileg: Error while processing content unencoding: invalid block type: /],
      ['/corrupt-br', /^multileg: Unrecognized or bad HTTP Content or Transfer-Encoding: the br body from /],
      [
        '/unknown',
        /^multileg: Unrecognized content encoding type\. multileg understands deflate, gzip, br, zstd content encodings: 127\.0\.0\.1:\d+ sent Content-Encoding: compress; /,
      ],
      ['/six', /^multileg: Reject response due to more than 5 content encodings: /],
    ];
    for (const [path, message] of cases) {
      const { ours, curl } = await both(['-sS', '--compressed', `${origin}${path}`]);
      expect(curl.code, path).toBe(61);
      expect(ours.code, `${path}: ${ours.stderr}`).toBe(61);
      expect(ours.stderr, path).toMatch(message);
      // The fix is named; and the first words are curl's (its "libcurl" is multileg here).
      expect(ours.stderr, path).toContain('without --compressed the body is written as it came');
      expect(ours.stderr.slice('multileg: '.length, 40), path).toBe(
        curl.stderr
          .slice('curl: (61) '.length)
          .replace('libcurl', 'multileg')
          .slice(0, 40 - 'multileg: '.length),
      );
      expect(ours.stdout, path).toBe('');
    }
    // With -o: 61 too (the decoder's failure is not the file's, curl's 23).
    for (const path of ['/corrupt-gzip', '/unknown']) {
      const args = (who: string) => ['-sS', '--compressed', '-o', join(dir, `${who}.61`), `${origin}${path}`];
      const [ours, curl] = [await run(args('ours')), await runCommand(CURL, args('curl'))];
      expect([ours.code, curl.code], `${path}: ${ours.stderr}`).toEqual([61, 61]);
    }
    // -w after a 61: the bytes received, as curl counts them (the coding it did not know: the whole body).
    const w = await both(['-s', '--compressed', '-w', '%{size_download} %{exitcode}', `${origin}/unknown`]);
    expect(w.ours.stdout).toBe(w.curl.stdout);
    expect(w.ours.stdout).toBe(`${TEXT.length} 61`);
    for (const args of [
      [`${origin}/empty`],
      [`${origin}/204`],
      ['-I', `${origin}/corrupt-gzip`],
      ['-I', `${origin}/unknown`],
      // curl writes what a cut gzip body decodes to, and does not check its end.
      [`${origin}/cut`],
    ]) {
      const { ours, curl } = await both(['-sS', '--compressed', ...args]);
      expect(curl.code, args.join(' ')).toBe(0);
      expect(ours.code, `${args.join(' ')}: ${ours.stderr}`).toBe(0);
      if (args[0] !== '-I') expect(ours.stdout, args.join(' ')).toBe(curl.stdout);
    }
  });

  it('--compressed: the decoders wait for a slow reader — a br, zstd, gzip or stacked (gzip then br) body of 16 MiB of zeros sent into a consumer that never takes a chunk pushes at most a few highWaterMarks out of the decoding, not the whole body (review r26: 1 GiB of zeros in an 809-byte br body piped into `sleep` reached 1.19 GB, curl 27 MB)', async () => {
    const zeros = Buffer.alloc(16 << 20);
    const cases: Array<[string, Buffer]> = [
      ['br', brotliCompressSync(zeros)],
      ['zstd', zstdCompressSync(zeros)],
      ['gzip', gzipSync(zeros)],
      ['gzip, br', brotliCompressSync(gzipSync(zeros))],
    ];
    for (const [coding, body] of cases) {
      const { stages, decoded } = bodyDecoding(coding, 'test.example');
      // A reader that takes one chunk and never asks for the next (stdout into `sleep 20`).
      let taken = 0;
      const stuck = new Writable({
        highWaterMark: 1,
        write(chunk: Buffer, _encoding, _callback) {
          taken += chunk.length;
        },
      });
      const done = pipeline([Readable.from([body]), ...stages, stuck]).catch(() => {});
      // Until the decoding stops moving (no time is asserted: only the bytes it let out).
      let last = -1;
      for (let still = 0; still < 20; still = decoded() === last ? still + 1 : 0) {
        last = decoded();
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      const bound = 4 * stages.at(-1)!.readableHighWaterMark;
      expect(taken, coding).toBeGreaterThan(0);
      expect(decoded(), coding).toBeLessThanOrEqual(bound);
      for (const stage of stages) stage.destroy();
      stuck.destroy();
      await done;
    }
  });

  it("--compressed: more than 5 codings is curl's 61 as the head is read, whatever the status — a redirect's under -L, -f's 404, a HEAD's (-I) — but a 204's or a 304's, which have no body, are not looked at (curl 7.88 exits 0; multileg exited 61)", async () => {
    for (const [args, code] of [
      [[`${origin}/six-204`], 0],
      [[`${origin}/six-304`], 0],
      [['-L', `${origin}/six-302`], 61],
      [[`${origin}/six-302`], 61],
      [['-f', `${origin}/six-404`], 61],
      [['-I', `${origin}/six`], 61],
    ] as const) {
      const { ours, curl } = await both(['-sS', '--compressed', ...args]);
      expect(curl.code, args.join(' ')).toBe(code);
      expect(ours.code, `${args.join(' ')}: ${ours.stderr}`).toBe(code);
      if (code === 61) expect(ours.stderr).toMatch(/^multileg: Reject response due to more than 5 content encodings: /);
      else expect(ours.stderr).toBe('');
      if (args[0] !== '-I') expect(ours.stdout, args.join(' ')).toBe(curl.stdout);
    }
    // -L did not follow the refused redirect (curl's).
    expect(asked.get('/gzip?six')).toBeUndefined();
  });

  it("--compressed: -I, -i and -D - show a head refused for more than 5 codings up to the line that went past them, with no blank line after it, as curl 7.88 stops there (multileg showed the whole head); --fail-with-body's 404 is 61 too, as curl 7.88's", async () => {
    for (const args of [
      ['-I', `${origin}/split-six`],
      ['-i', `${origin}/split-six`],
      ['-D', '-', '-o', '/dev/null', `${origin}/split-six`],
      ['-i', '--fail-with-body', `${origin}/split-six-404`],
      ['--fail-with-body', `${origin}/split-six-404`],
    ]) {
      const { ours, curl } = await both(['-sS', '--compressed', ...args]);
      expect(curl.code, args.join(' ')).toBe(61);
      expect(ours.code, `${args.join(' ')}: ${ours.stderr}`).toBe(61);
      expect(ours.stdout, args.join(' ')).toBe(curl.stdout);
    }
    expect((await run(['-sS', '--compressed', '-I', `${origin}/split-six`])).stdout).toMatch(
      /^HTTP\/1\.1 200 OK\r\nx-before: 1\r\ncontent-encoding: identity, identity, identity\r\n$/,
    );
  });

  it("--compressed: -i and -D - show the header lines in the order and the case they came, as curl 7.88: a head refused at its sixth coding shows the header between the two Content-Encoding lines (multileg grouped a repeated header's lines, and cut after the second), and without the refusal a header repeated around another stays around it", async () => {
    for (const args of [
      ['--compressed', '-i', `${origin}/split-mid`],
      ['--compressed', '-D', '-', '-o', '/dev/null', `${origin}/split-mid`],
      ['-i', `${origin}/split-mid`],
    ]) {
      const { ours: r, curl } = await both(['-sS', ...args]);
      expect([r.code, curl.code], `${args.join(' ')}: ${r.stderr}`).toEqual([curl.code, curl.code]);
      // Whole heads: Node's server writes Date, Connection, Keep-Alive with capitals (before: the
      // names lower-cased, so only the lines up to Date matched). The two requests may fall in two
      // seconds: the Date's value is not compared.
      const undated = (head: string) => head.replace(/\r\nDate: [^\r]*\r\n/, '\r\nDate: …\r\n');
      expect(undated(r.stdout), args.join(' ')).toBe(undated(curl.stdout));
    }
    expect((await run(['-sS', '--compressed', '-i', `${origin}/split-mid`])).stdout).toBe(
      'HTTP/1.1 200 OK\r\ncontent-encoding: identity, identity, identity\r\nx-mid: 1\r\n',
    );
    expect((await run(['-sS', '-i', `${origin}/split-mid`])).stdout.split('\r\nDate: ')[0]).toBe(
      'HTTP/1.1 200 OK\r\ncontent-encoding: identity, identity, identity\r\nx-mid: 1\r\ncontent-encoding: identity, identity, identity\r\nx-a: 1\r\nx-b: 2\r\nx-a: 3',
    );
  });

  it("--compressed: an Accept-Encoding given with -H is sent instead of curl's (-H 'Accept-Encoding:' sends none, 'Accept-Encoding;' an empty one), and the body is decoded all the same, as curl's", async () => {
    for (const [header, sent] of [
      ['Accept-Encoding: gzip', 'gzip'],
      ['accept-encoding: br', 'br'],
      ['Accept-Encoding:', null],
      ['Accept-Encoding;', ''],
    ] as const) {
      const path = `/gzip?h=${encodeURIComponent(header)}`;
      const { ours, curl } = await both(['-s', '--compressed', '-H', header, `${origin}${path}`]);
      expect(ours.code, ours.stderr).toBe(0);
      expect(ours.stdout, header).toBe(curl.stdout);
      expect(ours.stdout, header).toBe(TEXT.toString());
      expect(asked.get(path), header).toEqual([sent, sent]);
    }
  });

  it('--compressed: -i and -D show the head as received (Content-Encoding, the Content-Length of the encoded body) and -i the decoded body after it, as curl; --har says bodySize received and content.size decoded', async () => {
    const heads = join(dir, 'heads.txt');
    const har = join(dir, 'out.har');
    const { ours, curl } = await both(['-s', '--compressed', '-i', `${origin}/br`]);
    const r = await run(['-s', '--compressed', '-D', heads, '--har', har, '-o', '/dev/null', `${origin}/br`]);
    expect(ours.code, ours.stderr).toBe(0);
    expect(r.code, r.stderr).toBe(0);
    const encoded = ANSWERS['/br']![1].length;
    for (const text of [ours.stdout, readFileSync(heads, 'latin1')]) {
      expect(text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      expect(text).toMatch(/\r\ncontent-encoding: br\r\n/i);
      expect(text).toMatch(new RegExp(`\\r\\ncontent-length: ${encoded}\\r\\n`, 'i'));
    }
    const body = (text: string) => text.slice(text.indexOf('\r\n\r\n') + 4);
    expect(body(ours.stdout)).toBe(TEXT.toString());
    expect(body(ours.stdout)).toBe(body(curl.stdout));
    const [entry] = JSON.parse(readFileSync(har, 'utf8')).log.entries;
    expect(entry.response.bodySize).toBe(encoded);
    expect(entry.response.content).toMatchObject({ size: TEXT.length, compression: TEXT.length - encoded });
  });

  it("--compressed through an NTLM handshake (reference server, HTTP/1.1 as curl's): the 401s' bodies, labelled gzip but not gzip, are drained, never decoded; only the final 200's gzip body is written decoded, as curl 7.88 --ntlm --compressed writes it, -w %{size_download} the bytes received; -i shows every head as received; over HTTP/2 too", async () => {
    const base = ['--http1.1', '--ntlm', '-u', 'EXAMPLE\\alice:alicepw', '--cacert', ca, '--compressed'];
    const args = (path: string) => ['-s', ...base, '-w', '\n%{size_download} %{http_code}', `${server.origin}${path}`];
    const ours = await run(args('/auth/gz-ours'));
    const curl = await runCommand(CURL, args('/auth/gz-curl'));
    expect(curl.code, curl.stderr).toBe(0);
    expect(ours.code, ours.stderr).toBe(0);
    const split = (out: string) => {
      const at = out.lastIndexOf('\n');
      const { sessionId: _, path: __, ...rest } = JSON.parse(out.slice(0, at));
      return { body: rest, tail: out.slice(at + 1) };
    };
    expect(split(ours.stdout).body).toEqual(split(curl.stdout).body);
    expect(split(ours.stdout).body).toMatchObject({ user: 'EXAMPLE\\alice', protocol: 'http/1.1' });
    const sent = (path: string) => server.exchanges.filter((e) => e.path === path);
    // The handshake as curl's: the CHALLENGE's 401 (labelled gzip), then the 200 (gzip).
    for (const path of ['/auth/gz-ours', '/auth/gz-curl'])
      expect(
        sent(path).map((e) => [e.status, e.responseHeaders['content-encoding']]),
        path,
      ).toEqual([
        [401, 'gzip'],
        [200, 'gzip'],
      ]);
    // -w %{size_download}: the final body's bytes as received — the server's gzip of the JSON
    // written (this Node's zlib, deterministic), not the JSON's length.
    const received = (out: string) => gzipSync(out.slice(0, out.lastIndexOf('\n'))).length;
    expect(split(ours.stdout).tail).toBe(`${received(ours.stdout)} 200`);
    expect(split(curl.stdout).tail).toBe(`${received(curl.stdout)} 200`);
    // -i: both heads as received (the 401 with its Content-Encoding), then the decoded body alone.
    const i = await run(['-s', '-i', ...base, `${server.origin}/auth/gz-i`]);
    expect(i.code, i.stderr).toBe(0);
    expect(i.stdout.match(/^HTTP\/1\.1 \d{3}.*$/gm)?.map((l) => l.trimEnd())).toEqual([
      'HTTP/1.1 401 Unauthorized',
      'HTTP/1.1 200 OK',
    ]);
    expect(i.stdout.match(/^content-encoding: gzip\r$/gm)).toHaveLength(2);
    expect(JSON.parse(i.stdout.slice(i.stdout.lastIndexOf('\r\n\r\n') + 4))).toMatchObject({ path: '/auth/gz-i' });
    // HTTP/2, the agent's own handshake (Negotiate wraps nothing here: NTLM only).
    const h2 = await run([
      '-s',
      '-u',
      'EXAMPLE\\alice:alicepw',
      '--cacert',
      ca,
      '--compressed',
      `${server.origin}/auth/gz-h2`,
    ]);
    expect(h2.code, h2.stderr).toBe(0);
    expect(JSON.parse(h2.stdout)).toMatchObject({ user: 'EXAMPLE\\alice', path: '/auth/gz-h2', protocol: 'h2' });
    expect(sent('/auth/gz-h2').map((e) => e.status)).toEqual([401, 401, 200]);
  });
});
