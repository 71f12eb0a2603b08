/**
 * C10/H1 against an HTTP/1.1-only NTLM origin that answers a challenge as soon as it has the
 * request head, without reading the body (Node's http server then discards it; express-ntlm and IIS
 * behave so), and reads the body only once the connection is authenticated. A body bigger than the
 * socket buffers shows whether the connection — and its NTLM context — survives each early 401.
 * Found by a review of the body paths.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { MultilegAgent } from '../src/index.ts';
import { NtlmAcceptor } from '../src/mechanisms/ntlm/acceptor.ts';
import { ALICE } from './helpers.ts';

interface Seen {
  conn: number;
  path: string;
  auth: string | undefined;
  status: number;
}

async function earlyNtlmServer() {
  const seen: Seen[] = [];
  let conns = 0;
  const state = new WeakMap<Socket, { id: number; acceptor: NtlmAcceptor; user?: string }>();
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let st = state.get(req.socket);
    if (!st) {
      st = { id: ++conns, acceptor: new NtlmAcceptor({ users: { 'EXAMPLE\\alice': 'alicepw' }, domain: 'EXAMPLE' }) };
      state.set(req.socket, st);
    }
    const path = req.url ?? '/';
    const auth = req.headers.authorization;
    const token = /^NTLM (\S+)$/.exec(auth ?? '')?.[1];
    const kind = token ? `NTLM/${Buffer.from(token, 'base64').readUInt32LE(8)}` : undefined;
    const finish = (status: number) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        seen.push({ conn: st!.id, path, auth: kind, status });
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({ user: st!.user, len: body.length, sha: createHash('sha256').update(body).digest('hex') }),
        );
      });
    };
    if (path.startsWith('/public') || st.user) return finish(200);
    const result = token ? st.acceptor.step(Buffer.from(token, 'base64')) : undefined;
    if (result?.kind === 'accepted') {
      st.user = result.user;
      return finish(200);
    }
    // Early 401: the head is enough; the body is not read (Node discards it after the response).
    seen.push({ conn: st.id, path, auth: kind, status: 401 });
    const challenge = result?.kind === 'challenge' ? `NTLM ${result.token.toString('base64')}` : 'NTLM';
    res.writeHead(401, { 'www-authenticate': challenge, 'content-length': '0' });
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    origin: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

let srv: Awaited<ReturnType<typeof earlyNtlmServer>> | undefined;
let agent: MultilegAgent | undefined;
afterEach(async () => {
  await agent?.destroy().catch(() => {});
  await srv?.close();
  agent = srv = undefined;
});

const SIZE = 8 * 1024 * 1024;
const data = () => {
  const b = Buffer.alloc(SIZE);
  for (let i = 0; i < SIZE; i++) b[i] = (i * 13) & 0xff;
  return b;
};
const chunked = (b: Buffer) =>
  Readable.from(Array.from({ length: b.length / 8192 }, (_, i) => b.subarray(i * 8192, (i + 1) * 8192)));

describe('an early 401 on HTTP/1.1 to a request with a large body', () => {
  it.each([
    ['a Buffer body', false, (b: Buffer) => b],
    ['a stream body (read first)', false, chunked],
    ['a stream body after the origin answered once unchallenged (streamed, TeeBody)', true, chunked],
  ])('C10/H1: NTLM with %s: 200 with the whole body, the NTLM legs on one connection', async (_what, warm, make) => {
    srv = await earlyNtlmServer();
    agent = new MultilegAgent({
      credentials: ALICE,
      trustedOrigins: [srv.origin],
      negotiate: false,
      proxy: false,
      limits: { maxReplayBodyBytes: 16 * 1024 * 1024 },
    });
    if (warm) {
      const w = await request(`${srv.origin}/public/warm`, { dispatcher: agent });
      expect(w.statusCode).toBe(200);
      await w.body.dump();
    }
    const b = data();
    const res = await request(`${srv.origin}/auth/up`, { dispatcher: agent, method: 'POST', body: make(b) }).catch(
      (e: Error) => e,
    );
    const seen = srv.seen.filter((s) => s.path === '/auth/up');
    expect(res instanceof Error ? `${res.name}: ${res.message} ${JSON.stringify(seen)}` : res.statusCode).toBe(200);
    const json = (await (res as Awaited<ReturnType<typeof request>>).body.json()) as {
      len: number;
      sha: string;
      user: string;
    };
    expect(json.len).toBe(SIZE);
    expect(json.sha).toBe(createHash('sha256').update(b).digest('hex'));
    expect(json.user).toBe('EXAMPLE\\alice');
    // The NTLM legs share one connection (a streamed first leg may lose its own to the early 401).
    expect(new Set(seen.filter((s) => s.auth).map((s) => s.conn)).size).toBe(1);
  });
});
