/**
 * A plain HTTP/1.1 server that sets cookies and records what comes back, for the cookie tests: as
 * an origin, and as a forwarding proxy (absolute-form requests: `-x` to it lets a test name any
 * host, www.corp.co.uk or intranet, with no DNS). Paths:
 * - `/auth/…`: NTLM bound to the connection (NtlmAcceptor), a cookie on each 401 — `lb=node1` on
 *   the bare one, `leg=challenge` on the challenge — and `sid=…` on the 200;
 * - `/redirect?to=URL&c=SET-COOKIE…`: a 302 to `to`, with each `c` as a Set-Cookie;
 * - anything else, `?c=SET-COOKIE…` too: a 200 whose body is one JSON line `{ host, path, cookie }`.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { NtlmAcceptor } from '../src/mechanisms/ntlm/acceptor.ts';

/** One request as the server received it. */
export interface CookieSeen {
  readonly host: string;
  readonly path: string;
  /** `NTLM/1`, `NTLM/3` for an NTLM message of that type; undefined without Authorization. */
  readonly auth: string | undefined;
  readonly cookie: string | undefined;
}

/** The session cookie the server sets once NTLM accepted the connection. */
export const SID = 'sid=authenticated-S3CRET';

export interface CookieServer {
  /** `http://127.0.0.1:port`: the origin, and the proxy (`-x`). */
  readonly origin: string;
  readonly seen: CookieSeen[];
  /** What came to `host` (host[:port]) and `path`, in order. */
  to(host: string, path: string): CookieSeen[];
  close(): Promise<void>;
}

export async function startCookieServer(): Promise<CookieServer> {
  const seen: CookieSeen[] = [];
  const ntlm = new WeakMap<Socket, { acceptor: NtlmAcceptor; user?: string }>();
  const server: Server = createServer((req, res) => {
    // Origin-form, or absolute-form as a forwarding proxy receives it.
    const url = new URL(req.url ?? '/', `http://${req.headers.host}`);
    const token = /^NTLM (\S+)$/.exec(req.headers.authorization ?? '')?.[1];
    const message = token ? Buffer.from(token, 'base64') : undefined;
    seen.push({
      host: url.host,
      path: url.pathname,
      auth: message && message.length >= 12 ? `NTLM/${message.readUInt32LE(8)}` : undefined,
      cookie: req.headers.cookie,
    });
    const cookies = url.searchParams.getAll('c');
    const json = (extra: Record<string, string | string[]> = {}) => {
      res.writeHead(200, { 'content-type': 'application/json', ...extra });
      res.end(`${JSON.stringify({ host: url.host, path: url.pathname, cookie: req.headers.cookie ?? null })}\n`);
    };
    if (url.pathname.startsWith('/auth/')) {
      let state = ntlm.get(req.socket);
      if (!state) {
        state = { acceptor: new NtlmAcceptor({ users: { 'EXAMPLE\\alice': 'alicepw' }, domain: 'EXAMPLE' }) };
        ntlm.set(req.socket, state);
      }
      if (!state.user) {
        const step = message ? state.acceptor.step(message) : undefined;
        if (step?.kind === 'accepted') state.user = step.user;
        else {
          const challenge = step?.kind === 'challenge';
          res.writeHead(401, {
            'www-authenticate': challenge ? `NTLM ${step.token.toString('base64')}` : 'NTLM',
            'set-cookie': challenge ? 'leg=challenge; Path=/' : 'lb=node1; Path=/',
            'content-length': '0',
          });
          res.end();
          return;
        }
      }
      json({ 'set-cookie': `${SID}; Path=/; HttpOnly` });
      return;
    }
    if (url.pathname === '/redirect') {
      res.writeHead(302, {
        location: url.searchParams.get('to') ?? '/',
        ...(cookies.length ? { 'set-cookie': cookies } : {}),
      });
      res.end();
      return;
    }
    json(cookies.length ? { 'set-cookie': cookies } : {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const origin = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return {
    origin,
    seen,
    to: (host, path) => seen.filter((s) => s.host === host && s.path === path),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A Set-Cookie value as a `c` query parameter. */
export const c = (setCookie: string) => `c=${encodeURIComponent(setCookie)}`;

/** The `NAME=VALUE` pairs of a Cookie header, sorted (the jar's order is RFC 6265's, not the test's concern). */
export const pairs = (cookie: string | null | undefined): string[] => (cookie ? cookie.split('; ').sort() : []);
