/**
 * C4 in per-request mode with Kerberos: a proactive Kerberos token completes the server's context
 * in one leg and leaves nothing incomplete there, so `limits.maxConcurrentHandshakes` (which bounds
 * incomplete contexts per session, draft §3.1) must not hold such requests back — per-request mode
 * blocks no stream. The acceptor is MIT GSS-API itself (the `kerberos` addon's server side, the
 * lab's KDC and keytab) behind a small HTTP/2 server that answers an authenticated request only
 * once HELD of them are in flight together: with the cap applied to them (4), it never would.
 */
import { createSecureServer, type Http2SecureServer } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MechanismUnavailableError, MultilegAgent } from '../src/index.ts';
import { CRED_REUSE_MS, CredCache, GssClient } from '../src/mechanisms/gssapi/index.ts';
import { carriesKerberosApReq } from '../src/mechanisms/negotiate/index.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { get, many, type Rig, rig } from './helpers.ts';
import { type Lab, requirePeer, startLab } from './lab/index.ts';

const havePeers = requirePeer('kdc', 'kerberos-addon');
const haveBinding = requirePeer('kdc', 'gss-binding');

/** More than the default `maxConcurrentHandshakes` (4). */
const HELD = 8;

interface KerberosServerLike {
  step(token: string): Promise<string>;
  readonly contextComplete: boolean;
  readonly username: string;
  readonly response: string;
}

describe.skipIf(!havePeers)('C4: per-request Kerberos against an MIT acceptor', () => {
  let lab: Lab;
  let restoreEnv: () => void;
  let server: Http2SecureServer;
  let origin: string;
  const stats = { requests: 0, bare: 0, inFlight: 0, maxInFlight: 0, firstTokensKerberos: 0 };
  const held: Array<() => void> = [];

  beforeAll(async () => {
    lab = await startLab({ kdc: true });
    // alice's ticket for the client, the HTTP/localhost keytab for the acceptor (same process).
    restoreEnv = lab.applyEnv({ NTLM_USER_FILE: undefined });
    const kerberos = (await import('kerberos')).default as unknown as {
      initializeServer(service: string): Promise<KerberosServerLike>;
    };
    server = createSecureServer({ allowHTTP1: true, cert: SERVER_CERT, key: SERVER_KEY }, async (req, res) => {
      stats.requests += 1;
      const auth = req.headers.authorization;
      if (!auth?.startsWith('Negotiate ')) {
        stats.bare += 1;
        res.writeHead(401, { 'www-authenticate': 'Negotiate' }).end();
        return;
      }
      const token = auth.slice('Negotiate '.length);
      if (carriesKerberosApReq(token)) stats.firstTokensKerberos += 1;
      let user: string;
      let reply: string;
      try {
        const ctx = await kerberos.initializeServer('HTTP@localhost');
        reply = await ctx.step(token);
        if (!ctx.contextComplete) throw new Error('the context needs another leg');
        user = ctx.username;
      } catch (err) {
        res.writeHead(403).end(String(err));
        return;
      }
      // Hold a burst request's answer until HELD of them are in flight at once (or give up).
      if (!req.url?.startsWith('/burst/')) {
        res.writeHead(200, { 'x-remote-user': user, 'www-authenticate': `Negotiate ${reply}` }).end('ok');
        return;
      }
      stats.inFlight += 1;
      stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
      await new Promise<void>((resolve) => {
        held.push(resolve);
        if (held.length >= HELD) for (const release of held.splice(0)) release();
        setTimeout(resolve, 5000).unref();
      });
      stats.inFlight -= 1;
      // No Persistent-Auth: each request authenticates itself (per-request mode).
      res.writeHead(200, { 'x-remote-user': user, 'www-authenticate': `Negotiate ${reply}` }).end('ok');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    origin = `https://localhost:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    restoreEnv?.();
    await lab?.stop();
  });

  it(`C4: more than maxConcurrentHandshakes proactive Kerberos requests are in flight at once (${HELD} held together)`, async () => {
    const agent = new MultilegAgent({ connect: { ca: CA_CERT }, trustedOrigins: [origin] });
    try {
      // The first request learns that the origin wants Negotiate, per request (401, then a token).
      const first = await request(`${origin}/first`, { dispatcher: agent });
      await first.body.dump();
      expect(first.statusCode).toBe(200);
      expect(agent.handshakes().map((h) => [h.scheme, h.outcome])).toEqual([['Negotiate', 'per-request']]);
      // Released at once by a server that waits for HELD of them: only if none is held back.
      stats.maxInFlight = 0;
      const before = stats.requests;
      const results = await Promise.all(
        Array.from({ length: HELD }, async (_, i) => {
          const res = await request(`${origin}/burst/${i}`, { dispatcher: agent });
          return [res.statusCode, res.headers['x-remote-user'], await res.body.text()];
        }),
      );
      expect(results).toEqual(Array(HELD).fill([200, 'alice@EXAMPLE.TEST', 'ok']));
      expect(stats.maxInFlight).toBe(HELD);
      // One wire request per user request: each carried its own Kerberos token on its first leg.
      expect(stats.requests - before).toBe(HELD);
      expect(stats.firstTokensKerberos).toBe(HELD + 1);
      expect(
        agent
          .handshakes()
          .slice(1)
          .map((h) => [h.outcome, h.legs]),
      ).toEqual(Array(HELD).fill(['per-request', 1]));
    } finally {
      await agent.destroy();
    }
  });
});

describe.skipIf(!haveBinding)('per-request Kerberos: one credential per burst (GSS-API binding, MIT KDC)', () => {
  let lab: Lab;
  let restoreEnv: () => void;
  beforeAll(async () => {
    lab = await startLab({ kdc: true });
    restoreEnv = lab.applyEnv({ NTLM_USER_FILE: undefined });
  });
  afterAll(async () => {
    restoreEnv?.();
    await lab?.stop();
  });

  it('C4: contexts made within CRED_REUSE_MS share one acquired credential; each still makes its own AP-REQ', async () => {
    const cache = new CredCache();
    const options = { mech: 'spnego' as const, flags: 2, credCache: cache };
    const a = await GssClient.create('HTTP@localhost', options);
    const b = await GssClient.create('HTTP@localhost', options);
    const [ta, tb] = [await a.step(''), await b.step('')];
    expect(carriesKerberosApReq(ta!)).toBe(true);
    expect(carriesKerberosApReq(tb!)).toBe(true);
    expect(ta).not.toBe(tb);
    expect([a.username, b.username]).toEqual(['alice@EXAMPLE.TEST', 'alice@EXAMPLE.TEST']);
    // One credential, held by the cache and by both contexts.
    expect(cache.holders).toBe(3);
    a.dispose();
    b.dispose();
    expect(cache.holders).toBe(1);
    // Past its time it is let go, and a new context would acquire anew.
    expect(cache.take(Date.now() + CRED_REUSE_MS)).toBeUndefined();
    expect(cache.holders).toBe(0);
  });
});

describe('C4/draft §3.1: per-request multi-leg handshakes spread over sessions (reference server)', () => {
  let r: Rig | undefined;
  afterAll(async () => {
    await r?.close();
  });

  it.each([
    ['after a first request taught the agent the origin', true],
    // Before the first handshake ends the mode is unknown: the requests queued on the first session
    // then move to others (relocated as crowded) instead of waiting for its slots.
    ['from a cold start', false],
  ])(
    'C4: 200 concurrent per-request NTLM-in-Negotiate requests run on several sessions, none over its context cap, all 200 (%s)',
    async (_, warm) => {
      // The server refuses a 5th incomplete context on a session: exactly the agent's default cap.
      r = await rig(
        { mode: 'per-request', schemes: ['Negotiate'], maxIncompleteContexts: 4 },
        {
          negotiate: {
            kerberos: {
              initializeClient: () => Promise.reject(new MechanismUnavailableError('Negotiate', 'no GSS-API here')),
            },
          },
        },
      );
      if (warm) {
        expect((await get(r, '/auth/first')).status).toBe(200);
        expect(r.agent.handshakes().map((h) => h.outcome)).toEqual(['per-request']);
      }
      const results = await many(r, 200);
      expect(results.every((x) => x.status === 200)).toBe(true);
      expect(r.server.exchanges.filter((e) => e.outcome === 'refused')).toEqual([]);
      const sessions = new Set(r.agent.handshakes().map((h) => h.sessionId));
      expect(sessions.size).toBeGreaterThan(1);
      expect(sessions.size).toBeLessThanOrEqual(8); // limits.maxPerRequestSessions
      expect(new Set(results.map((x) => x.body.sessionId)).size).toBe(sessions.size);
      // Two legs per request; a new session's first request goes bare once (its 401 teaches nothing new).
      expect(r.server.exchanges.length).toBeLessThanOrEqual(2 * 201 + 1 + sessions.size);
    },
  );
});
