/**
 * M3 Digest against servers that expect more than the simplest case (found by a mechanism review):
 * - the nonce count (RFC 7616 §3.4) counts every request sent with a nonce, whichever request met
 *   it: requests challenged together with one nonce (a server that hands one nonce to everyone),
 *   or retrying together after one `stale=true`, never send the same (nonce, nc), which a server
 *   that checks for replays refuses;
 * - among several Digest challenges (RFC 7616 §3.7), one this client can answer is chosen over a
 *   stronger one it cannot;
 * - towards a forward proxy (H5), every request gets its own Proxy-Authorization (its uri, the next
 *   nc), and proxy credentials alone answer a Digest-only proxy; the proxy's
 *   Proxy-Authentication-Info is read as an origin's Authentication-Info is (rspauth, nextnonce).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fetch } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { parseChallenges } from '../src/challenge/index.ts';
import { MultilegAgent, MutualAuthError } from '../src/index.ts';
import { digestMechanism } from '../src/mechanisms/digest/index.ts';
import { digestOfAnswer, spoiledDigest } from './helpers.ts';

const CREDS = { username: 'Mufasa', password: 'Circle of Life' };
const paramsOf = (authorization: string) => parseChallenges(authorization)[0]!.params;

/** Whether a qop=auth Digest answer `p` (its parsed parameters) is right for CREDS in `realm`. */
function answers(p: Record<string, string>, algorithm: string, realm: string, method: string): boolean {
  return p.response === digestOfAnswer(p, CREDS, realm, method, algorithm);
}
const closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const close of closers.splice(0)) await close().catch(() => {});
});

/** One nonce for every client (`nonce()`), and a replay check on (nonce, nc), as Squid and nginx modules do. */
async function sharedNonceOrigin(nonce: () => string) {
  const seen: Array<{ nonce: string; nc: string }> = [];
  const used = new Set<string>();
  const server: Server = createServer((req, res) => {
    const challenge = (stale: boolean) =>
      res
        .writeHead(401, {
          'www-authenticate': `Digest realm="r", qop="auth", algorithm=SHA-256, nonce="${nonce()}"${stale ? ', stale=true' : ''}`,
        })
        .end();
    if (!req.headers.authorization) return challenge(false);
    const p = paramsOf(req.headers.authorization);
    seen.push({ nonce: p.nonce!, nc: p.nc! });
    const key = `${p.nonce} ${p.nc}`;
    if (!answers(p, 'SHA-256', 'r', req.method!) || used.has(key)) return challenge(false);
    used.add(key);
    if (p.nonce !== nonce()) return challenge(true);
    res.writeHead(200).end('ok');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(() => new Promise((resolve) => server.close(resolve)));
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

function agentFor(origin: string): MultilegAgent {
  const agent = new MultilegAgent({ credentials: CREDS, negotiate: false, trustedOrigins: [origin] });
  closers.push(() => agent.destroy());
  return agent;
}

const getAll = (agent: MultilegAgent, origin: string, n: number) =>
  Promise.all(
    Array.from({ length: n }, (_, i) => fetch(`${origin}/p/${i}`, { dispatcher: agent }).then((r) => r.status)),
  );

describe('Digest nonce count, per nonce', () => {
  it('M3: requests challenged together with one nonce each send their own nc: none is refused as a replay', async () => {
    const s = await sharedNonceOrigin(() => 'one-nonce');
    const statuses = await getAll(agentFor(s.origin), s.origin, 6);
    expect(statuses).toEqual(Array(6).fill(200));
    const pairs = s.seen.map((x) => `${x.nonce}/${x.nc}`);
    expect(new Set(pairs).size).toBe(pairs.length);
  });

  it('M3: requests retrying together after stale=true count the new nonce on from one another', async () => {
    let nonce = 'n-1';
    const s = await sharedNonceOrigin(() => nonce);
    const agent = agentFor(s.origin);
    expect((await fetch(`${s.origin}/warm`, { dispatcher: agent })).status).toBe(200);
    nonce = 'n-2';
    expect(await getAll(agent, s.origin, 6)).toEqual(Array(6).fill(200));
    const counts = s.seen.filter((x) => x.nonce === 'n-2').map((x) => x.nc);
    expect(new Set(counts).size).toBe(counts.length);
  });

  it('M3: two contexts answering the same challenge send nc 00000001 and 00000002', async () => {
    const digest = digestMechanism(CREDS);
    const challenge = parseChallenges('Digest realm="r", qop="auth", nonce="same"')[0]!;
    const leg = { origin: 'https://h', hostname: 'h', port: 443, method: 'GET', path: '/', proxy: false };
    const first = paramsOf(await digest.createContext(leg).step(challenge, leg));
    const second = paramsOf(await digest.createContext(leg).step(challenge, leg));
    expect([first.nc, second.nc]).toEqual(['00000001', '00000002']);
  });
});

describe('several Digest challenges in one 401', () => {
  for (const [label, strongest] of [
    ['offers only qop=auth-int', 'Digest realm="r", nonce="a", algorithm=SHA-256, qop="auth-int"'],
    ['has no nonce', 'Digest realm="r", algorithm=SHA-256, qop="auth"'],
  ] as const) {
    it(`T2/M3: the strongest ${label}: the MD5 qop=auth challenge beside it is answered`, async () => {
      const server = createServer((req, res) => {
        const authorization = req.headers.authorization;
        if (authorization) {
          const p = paramsOf(authorization);
          if (p.nonce === 'b' && answers(p, 'MD5', 'r', req.method!)) return void res.writeHead(200).end('ok');
        }
        res
          .writeHead(401, { 'www-authenticate': [strongest, 'Digest realm="r", nonce="b", algorithm=MD5, qop="auth"'] })
          .end();
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      closers.push(() => new Promise((resolve) => server.close(resolve)));
      const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      // Before, the strongest was chosen and failed (DigestChallengeError): nothing was sent.
      expect((await fetch(`${origin}/x`, { dispatcher: agentFor(origin) })).status).toBe(200);
    });
  }
});

describe('Digest towards a forward proxy', () => {
  /** A Digest proxy that checks what Squid checks: the response, nc growing per nonce, uri = the request-target. */
  async function digestProxy() {
    const proxied: Array<{ url: string; uri: string; nc: string }> = [];
    const refused: string[] = [];
    let lastNc = 0;
    const proxy = createServer((req, res) => {
      const authorization = req.headers['proxy-authorization'];
      const p = authorization ? paramsOf(authorization) : undefined;
      const valid =
        p !== undefined &&
        p.uri === req.url &&
        Number.parseInt(p.nc ?? '0', 16) > lastNc &&
        answers(p, 'MD5', 'proxy', req.method!);
      if (!valid) {
        refused.push(req.url!);
        return void res.writeHead(407, { 'proxy-authenticate': 'Digest realm="proxy", qop="auth", nonce="pn"' }).end();
      }
      lastNc = Number.parseInt(p.nc!, 16);
      proxied.push({ url: req.url!, uri: p.uri!, nc: p.nc! });
      res.writeHead(200).end(`proxied ${req.url}`);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    closers.push(() => new Promise((resolve) => proxy.close(resolve)));
    return { uri: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`, proxied, refused };
  }

  it('H5/M3: proxy credentials alone answer a Digest-only proxy, and each forwarded request gets its own uri and nonce count', async () => {
    const proxy = await digestProxy();
    // No mechanisms given: Digest is among the proxy's defaults with credentials (before: only NTLM and Basic).
    const agent = new MultilegAgent({
      negotiate: false,
      proxy: { uri: proxy.uri, negotiate: false, credentials: CREDS },
    });
    closers.push(() => agent.destroy());
    for (const path of ['/a', '/b', '/c']) {
      const res = await fetch(`http://target.invalid:8080${path}`, { dispatcher: agent });
      expect(res.status).toBe(200);
      await res.text();
    }
    // Before, /b and /c carried /a's header again (its uri, nc=00000001): the proxy refused them.
    expect(proxy.refused).toEqual(['http://target.invalid:8080/a']);
    expect(proxy.proxied.map((p) => [p.url, p.nc])).toEqual([
      ['http://target.invalid:8080/a', '00000001'],
      ['http://target.invalid:8080/b', '00000002'],
      ['http://target.invalid:8080/c', '00000003'],
    ]);
  });

  /**
   * A Digest proxy with one-time nonces (as Squid when a nonce reaches its nonce_max_count): each
   * 200 carries Proxy-Authentication-Info with the next nonce and an rspauth (`rspauth()`: right or
   * wrong), and only the latest nonce is accepted (another gets stale=true).
   */
  async function oneTimeNonceProxy(rspauth: () => 'right' | 'wrong') {
    let issued = 0;
    let nonce = 'pn-0';
    const proxied: Array<{ url: string; nonce: string; nc: string; socket: number }> = [];
    const refused: string[] = [];
    const proxy = createServer((req, res) => {
      const challenge = (stale: boolean) =>
        res
          .writeHead(407, {
            'proxy-authenticate': `Digest realm="proxy", qop="auth", nonce="${nonce}"${stale ? ', stale=true' : ''}`,
          })
          .end();
      const authorization = req.headers['proxy-authorization'];
      const p = authorization ? paramsOf(authorization) : undefined;
      if (p === undefined || p.uri !== req.url || !answers(p, 'MD5', 'proxy', req.method!)) {
        refused.push(req.url!);
        return challenge(false);
      }
      if (p.nonce !== nonce) {
        refused.push(req.url!);
        return challenge(true);
      }
      proxied.push({ url: req.url!, nonce: p.nonce!, nc: p.nc!, socket: req.socket.remotePort! });
      nonce = `pn-${++issued}`;
      const right = digestOfAnswer(p, CREDS, 'proxy', '');
      const proof = rspauth() === 'wrong' ? spoiledDigest(right) : right;
      // `/moved/x`: the origin's 302 to `/x`; the proxy's answer to the credentials comes on it all the same.
      const moved = /^http:\/\/[^/]+\/moved(\/.*)$/.exec(req.url!)?.[1];
      // `/down/x`: the proxy could not reach the origin (502); its answer to the credentials comes on it too.
      const down = /^http:\/\/[^/]+\/down\//.test(req.url!);
      res
        .writeHead(moved ? 302 : down ? 502 : 200, {
          'proxy-authentication-info': `rspauth="${proof}", cnonce="${p.cnonce}", nc=${p.nc}, qop=auth, nextnonce="${nonce}"`,
          ...(moved ? { location: moved } : {}),
        })
        .end(`proxied ${req.url}`);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    closers.push(() => new Promise((resolve) => proxy.close(resolve)));
    const agent = new MultilegAgent({
      negotiate: false,
      proxy: { uri: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`, negotiate: false, credentials: CREDS },
    });
    closers.push(() => agent.destroy());
    const get = (path: string) =>
      fetch(`http://target.invalid:8080${path}`, { dispatcher: agent, redirect: 'manual' }).then(
        async (res) => `${res.status} ${await res.text()}`,
        (e: Error) => (e.cause ?? e) as Error,
      );
    return { get, proxied, refused, agent };
  }

  it("H5/M3: a proxy's nextnonce (Proxy-Authentication-Info) is used by the next request with nc=00000001: no 407 after the first", async () => {
    const proxy = await oneTimeNonceProxy(() => 'right');
    for (const path of ['/a', '/b', '/c', '/d'])
      expect(await proxy.get(path)).toBe(`200 proxied http://target.invalid:8080${path}`);
    // Before, /c (the second request with its own credentials) sent pn-1 again: stale, a 407 and a retry.
    expect(proxy.refused).toEqual(['http://target.invalid:8080/a']);
    expect(proxy.proxied.map((p) => [p.nonce, p.nc])).toEqual([
      ['pn-0', '00000001'],
      ['pn-1', '00000001'],
      ['pn-2', '00000001'],
      ['pn-3', '00000001'],
    ]);
  });

  it("H5/M3: a proxy's Proxy-Authentication-Info on a forwarded 302 is checked and its nextnonce followed, as on a 200", async () => {
    let mode: 'right' | 'wrong' = 'right';
    const proxy = await oneTimeNonceProxy(() => mode);
    expect(await proxy.get('/moved/a')).toBe('302 proxied http://target.invalid:8080/moved/a');
    expect(await proxy.get('/moved/b')).toBe('302 proxied http://target.invalid:8080/moved/b');
    expect(await proxy.get('/c')).toBe('200 proxied http://target.invalid:8080/c');
    expect(proxy.refused).toEqual(['http://target.invalid:8080/moved/a']);
    expect(proxy.proxied.map((p) => [p.nonce, p.nc])).toEqual([
      ['pn-0', '00000001'],
      ['pn-1', '00000001'],
      ['pn-2', '00000001'],
    ]);
    mode = 'wrong';
    expect(await proxy.get('/moved/d')).toBeInstanceOf(MutualAuthError);
    expect(proxy.proxied).toHaveLength(4);
  });

  it("H5/M2/M3: a proxy's 502 with a right rspauth is the caller's 502 and proves nothing — the handshake's answer and a request's own credentials reported failed (error), no identity — its nextnonce followed all the same", async () => {
    const proxy = await oneTimeNonceProxy(() => 'right');
    const reports = () => proxy.agent.handshakes().filter((h) => h.proxy);
    expect(await proxy.get('/down/a')).toBe('502 proxied http://target.invalid:8080/down/a');
    // Before: reported `per-request` as Mufasa, the password taken as proved (R4).
    expect(reports().map((h) => [h.outcome, h.failure, h.identity])).toEqual([['failed', 'error', undefined]]);
    expect(await proxy.get('/b')).toBe('200 proxied http://target.invalid:8080/b');
    expect(await proxy.get('/down/c')).toBe('502 proxied http://target.invalid:8080/down/c');
    expect(await proxy.get('/d')).toBe('200 proxied http://target.invalid:8080/d');
    expect(reports().map((h) => [h.outcome, h.failure, h.identity])).toEqual([
      ['failed', 'error', undefined],
      ['per-request', undefined, 'Mufasa'],
      ['failed', 'error', undefined],
      ['per-request', undefined, 'Mufasa'],
    ]);
    // The handshake's 502 proved nothing: /b authenticated afresh (bare, a 407); /c's own credentials
    // carried /b's nextnonce, and /d /c's — no 407 after a checked 502.
    expect(proxy.refused).toEqual(['http://target.invalid:8080/down/a', 'http://target.invalid:8080/b']);
    expect(proxy.proxied.map((p) => p.nonce)).toEqual(['pn-0', 'pn-1', 'pn-2', 'pn-3']);
  });

  it("H5/M3: a proxy's wrong rspauth is a MutualAuthError, to the handshake's answer and to a request's own credentials; the connection is not used again", async () => {
    let mode: 'right' | 'wrong' = 'wrong';
    const proxy = await oneTimeNonceProxy(() => mode);
    const first = await proxy.get('/a');
    expect(first).toBeInstanceOf(MutualAuthError);
    expect((first as Error).message).toMatch(/Digest rspauth of proxy http:\/\/127\.0\.0\.1:\d+ does not match/);
    mode = 'right';
    expect(await proxy.get('/b')).toBe('200 proxied http://target.invalid:8080/b');
    mode = 'wrong';
    // This request carries its own Proxy-Authorization (the proxy's nonce is known): checked too.
    expect(await proxy.get('/c')).toBeInstanceOf(MutualAuthError);
    mode = 'right';
    expect(await proxy.get('/d')).toBe('200 proxied http://target.invalid:8080/d');
    const [a, b, c, d] = proxy.proxied;
    expect([a, b, c, d].map((p) => p!.url)).toEqual(
      ['/a', '/b', '/c', '/d'].map((x) => `http://target.invalid:8080${x}`),
    );
    // A new connection after each failed proof.
    expect(b!.socket).not.toBe(a!.socket);
    expect(c!.socket).toBe(b!.socket);
    expect(d!.socket).not.toBe(c!.socket);
  });
});
