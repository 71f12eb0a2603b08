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
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
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
});
