/**
 * curl options of the command line that curl users reach for: -D/--dump-header,
 * --proxy-cacert/--proxy-insecure, and --retry with its companions — with curl 8.21's semantics,
 * exit codes and messages, against the reference server and proxy.
 */
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { createServer as createTcpServer, type Server as TcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ReferenceProxy,
  type ReferenceServer,
  startReferenceProxy,
  startReferenceServer,
} from '../src/reference-server/index.ts';
import { runCli as run } from './cli-helpers.ts';

const listen = async (server: Server | TcpServer) => {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as { port: number }).port;
};

/** The status lines of the heads in `text` (curl's `-D` / `-i` output). */
const statusLines = (text: string) => text.match(/^HTTP\/\S+ \d{3}[^\r\n]*/gm) ?? [];

describe('multileg: curl options', () => {
  let server: ReferenceServer;
  let dir: string;
  let ca: string;
  /** alice's password and the reference CA: the common start of a command line. */
  const alice = () => ['-u', 'EXAMPLE\\alice:alicepw', '--cacert', ca];
  beforeAll(async () => {
    server = await startReferenceServer({ mode: 'session' });
    dir = mkdtempSync(join(tmpdir(), 'multileg-curl-'));
    ca = join(dir, 'ca.pem');
    writeFileSync(ca, server.ca);
  });
  afterAll(async () => {
    await server.close();
  });

  it("-D FILE: the head of every response received, as curl writes them — the handshake's 401s (tokens [redacted]), a redirect and the final response; the body stays on stdout", async () => {
    const headers = join(dir, 'heads.txt');
    const url = `${server.origin}/public/redirect?to=/auth/dump`;
    const r = await run([...alice(), '-L', '-D', headers, url]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ user: 'EXAMPLE\\alice', path: '/auth/dump' });
    const text = readFileSync(headers, 'latin1');
    expect(statusLines(text)).toEqual(['HTTP/2 302', 'HTTP/2 401', 'HTTP/2 401', 'HTTP/2 200']);
    // Each head ends with a blank line; the challenges say what was offered, never a token.
    expect(text.split('\r\n\r\n')).toHaveLength(5);
    expect(text).toContain('location: /auth/dump\r\n');
    expect(text).toContain('www-authenticate: Negotiate, NTLM\r\n');
    expect(text).toMatch(/www-authenticate: Negotiate \[redacted\]\r\n/);
    expect(text).toContain('persistent-auth: true\r\n');
    for (const e of server.exchanges)
      for (const v of [e.responseHeaders['www-authenticate'], e.authIdSent].flat())
        if (typeof v === 'string' && v.length > 12) expect(text).not.toContain(v.split(' ').pop());
    expect(text).not.toContain('alicepw');
  });

  it("-D - writes the heads to stdout (the body to -o), -D % to stderr (curl 8.10+); over HTTP/1.1 with curl's reason phrases", async () => {
    const body = join(dir, 'body.json');
    const out = await run([...alice(), '--http1.1', '--ntlm', '-D', '-', '-o', body, `${server.origin}/auth/d1`]);
    expect(out.code, out.stderr).toBe(0);
    expect(statusLines(out.stdout)).toEqual([
      'HTTP/1.1 401 Unauthorized',
      'HTTP/1.1 401 Unauthorized',
      'HTTP/1.1 200 OK',
    ]);
    expect(out.stdout).toMatch(/www-authenticate: NTLM \[redacted\]\r\n/);
    expect(JSON.parse(readFileSync(body, 'utf8'))).toMatchObject({ path: '/auth/d1' });
    const err = await run([...alice(), '-D', '%', `${server.origin}/auth/d2`]);
    expect(err.code).toBe(0);
    expect(JSON.parse(err.stdout)).toMatchObject({ path: '/auth/d2' });
    expect(statusLines(err.stderr)).toEqual(['HTTP/2 401', 'HTTP/2 401', 'HTTP/2 200']);
  });

  it("-D: a file that cannot be created is curl's 23 before anything is sent, in one line; one that can is created empty when no response comes", async () => {
    const before = server.exchanges.length;
    const missing = join(dir, 'no-such-dir', 'heads.txt');
    const bad = await run([...alice(), '-D', missing, `${server.origin}/auth/d3`]);
    expect(bad.code).toBe(23);
    expect(bad.stderr).toBe(`multileg: -D ${missing}: no such directory (ENOENT)\n`);
    expect(server.exchanges.length).toBe(before);
    const closed = createTcpServer();
    const port = await listen(closed);
    closed.close();
    await once(closed, 'close');
    const empty = join(dir, 'empty.txt');
    writeFileSync(empty, 'left over from before');
    const refused = await run(['-D', empty, `http://127.0.0.1:${port}/`]);
    expect(refused.code).toBe(7);
    expect(existsSync(empty)).toBe(true);
    expect(readFileSync(empty, 'utf8')).toBe('');
  });

  it("--proxy-cacert / --proxy-insecure: an https:// proxy is verified with its own trust, apart from the server's --cacert / -k (curl's); an untrusted proxy is 60 naming --proxy-cacert", async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      // The reference proxy's certificate and the reference server's come from one test CA.
      proxy = await startReferenceProxy({});
      const x = ['-x', proxy.origin];
      // An http:// URL: only the proxy's certificate is verified.
      const plain = `http://localhost:${server.port}/public/plain`;
      const untrusted = `multileg: the certificate of proxy ${proxy.origin} is not trusted (UNABLE_TO_VERIFY_LEAF_SIGNATURE); give the CA that issued it with --proxy-cacert FILE or --proxy-ca-native, or NODE_EXTRA_CA_CERTS=FILE (MULTILEG_PROXY_CERTIFICATE)\n`;
      for (const origins of [['--cacert', ca], ['-k'], ['--ca-native']]) {
        const r = await run([...origins, ...x, plain]);
        expect(r.code, origins.join(' ')).toBe(60);
        expect(r.stderr).toBe(untrusted);
      }
      for (const trust of [['--proxy-cacert', ca], ['--proxy-insecure']]) {
        const r = await run([...trust, ...x, plain]);
        expect(r.code, `${trust.join(' ')}: ${r.stderr}`).toBe(0);
        expect(JSON.parse(r.stdout)).toMatchObject({ path: '/public/plain' });
      }
      // An https:// URL through the tunnel: the proxy's trust does not reach the server, nor the server's the proxy.
      const url = `${server.origin}/auth/proxy-tls`;
      const user = ['-u', 'EXAMPLE\\alice:alicepw'];
      const serverUntrusted = await run([...user, '--proxy-cacert', ca, ...x, url]);
      expect(serverUntrusted.code).toBe(60);
      expect(serverUntrusted.stderr).toMatch(/^multileg: the certificate of localhost:\d+ is not trusted/);
      expect((await run([...user, '--cacert', ca, ...x, url])).code).toBe(60);
      expect((await run([...user, '-k', '--proxy-cacert', ca, ...x, url])).code).toBe(0);
      for (const trust of [
        ['--cacert', ca, '--proxy-cacert', ca],
        ['--cacert', ca, '--proxy-insecure'],
      ]) {
        const r = await run([...user, ...trust, ...x, url]);
        expect(r.code, `${trust.join(' ')}: ${r.stderr}`).toBe(0);
        expect(JSON.parse(r.stdout)).toMatchObject({ user: 'EXAMPLE\\alice', path: '/auth/proxy-tls' });
      }
      // HTTPS_PROXY's proxy is the same: verified with --proxy-cacert, not at all with --proxy-insecure.
      const env = { HTTPS_PROXY: proxy.origin };
      expect((await run([...user, '--cacert', ca, url], { env })).code).toBe(60);
      expect((await run([...user, '--cacert', ca, '--proxy-cacert', ca, url], { env })).code).toBe(0);
      expect((await run([...user, '--cacert', ca, '--proxy-insecure', url], { env })).code).toBe(0);
    } finally {
      await proxy?.close();
    }
  });

  it("--proxy-cacert: not there is bad usage (2, as --cacert in curl 8.18+); no PEM certificate in it is curl's 77 once an https:// proxy is on the way, nothing without one or with --proxy-insecure", async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      proxy = await startReferenceProxy({});
      const url = `http://localhost:${server.port}/public/pc`;
      const missing = join(dir, 'missing-proxy-ca.pem');
      const absent = await run(['--proxy-cacert', missing, '-x', proxy.origin, url]);
      expect(absent.code).toBe(2);
      expect(absent.stderr).toBe(`multileg: --proxy-cacert ${missing}: no such file\n`);
      const garbage = join(dir, 'garbage-proxy-ca.pem');
      writeFileSync(garbage, 'not a certificate\n');
      const bad = await run(['--proxy-cacert', garbage, '-x', proxy.origin, url]);
      expect(bad.code).toBe(77);
      expect(bad.stderr).toBe(`multileg: --proxy-cacert ${garbage}: not a PEM file of CA certificates\n`);
      expect(proxy.exchanges).toHaveLength(0);
      // Not used: no proxy, or a proxy not verified.
      const direct = await run(['--proxy-cacert', garbage, '--cacert', ca, `${server.origin}/public/pc`]);
      expect(direct.code, direct.stderr).toBe(0);
      const insecure = await run(['--proxy-cacert', garbage, '--proxy-insecure', '-x', proxy.origin, url]);
      expect(insecure.code, insecure.stderr).toBe(0);
    } finally {
      await proxy?.close();
    }
  });
});
