/**
 * C4 in per-request mode with Kerberos: a proactive Kerberos token completes the server's context
 * in one leg and leaves nothing incomplete there, so `limits.maxConcurrentHandshakes` (which bounds
 * incomplete contexts per session, draft §3.1) must not hold such requests back — per-request mode
 * blocks no stream. The acceptor is MIT GSS-API itself (the `kerberos` addon's server side, the
 * lab's KDC and keytab) behind a small HTTP/2 server that answers an authenticated request only
 * once HELD of them are in flight together: with the cap applied to them (4), it never would.
 */
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, renameSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { createSecureServer, type Http2SecureServer } from 'node:http2';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { request, upgrade } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { MechanismUnavailableError, MultilegAgent } from '../src/index.ts';
import { loadGssFunctions } from '../src/mechanisms/gssapi/ffi.ts';
import {
  AHEAD_MAX_AGE_MS,
  CRED_REUSE_MS,
  CredCache,
  GssCallAbandonedError,
  GssCallError,
  type GssCallState,
  GssClient,
  gssCacheCopies,
  gssCacheCopiesMade,
  gssHandshakesInFlight,
  SLOW_SYNC_CALL_MS,
  SYNC_TICKET_MARGIN_MS,
} from '../src/mechanisms/gssapi/index.ts';
import { carriesKerberosApReq, negotiateMechanism } from '../src/mechanisms/negotiate/index.ts';
import { challengeAsks } from '../src/mechanisms/registry.ts';
import { encodeNegTokenResp, NegState } from '../src/mechanisms/spnego/tokens.ts';
import { DEFAULT_LIMITS } from '../src/options.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { SPREAD_ROOM } from '../src/session/origin-pool.ts';
import { get, many, type Rig, rig } from './helpers.ts';
import { eachRequest, hostile } from './hostile-proxy.ts';
import { CAROL, freePort, type Lab, PYTHON, requirePeer, startLab, waitForPort } from './lab/index.ts';

const havePeers = requirePeer('kdc', 'kerberos-addon');
const haveBinding = requirePeer('kdc', 'gss-binding');
const haveBindingAndAcceptor = requirePeer('kdc', 'gss-binding', 'kerberos-addon');

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
  /** Told when a `/hold/` request arrives (with its Kerberos token accepted), which is never answered. */
  const hold = { onArrival: () => {} };

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
      // The answer to a proactive token that takes no part in it (C6): no final token, no Persistent-Auth.
      if (req.url?.startsWith('/no-final-token/')) {
        res.writeHead(200, { 'x-remote-user': user }).end('ok');
        return;
      }
      // Never answered: the request is aborted (or times out) with its leg on the wire.
      if (req.url?.startsWith('/hold/')) {
        hold.onArrival();
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

  /** An agent on the GSS-API binding (whose contexts gssHandshakesInFlight counts) that knows the origin wants Kerberos per request. */
  async function perRequestAgent(limits: { handshakeTimeout?: number } = {}): Promise<MultilegAgent> {
    const agent = new MultilegAgent({
      connect: { ca: CA_CERT },
      trustedOrigins: [origin],
      negotiate: { backend: 'gssapi' },
      limits,
    });
    const first = await request(`${origin}/first`, { dispatcher: agent });
    await first.body.dump();
    expect(first.statusCode).toBe(200);
    expect(agent.handshakes().map((h) => [h.scheme, h.outcome])).toEqual([['Negotiate', 'per-request']]);
    // The first handshake's context completed with the server's final token.
    expect(gssHandshakesInFlight()).toBe(0);
    return agent;
  }

  it.skipIf(!haveBinding)(
    "C4: a proactive Kerberos token answered with a 200 that carries no final token (over TLS: the caller's answer, nothing proved) ends its GSS-API context — no longer counted as in flight, without a garbage collection (review r79: counted until collected, and every later lone request's calls went to a worker)",
    async () => {
      const agent = await perRequestAgent();
      try {
        const res = await request(`${origin}/no-final-token/1`, { dispatcher: agent });
        expect([res.statusCode, res.headers['x-remote-user'], await res.body.text()]).toEqual([
          200,
          'alice@EXAMPLE.TEST',
          'ok',
        ]);
        // The server took the token and sent nothing back: nothing proved, no handshake recorded (C6).
        expect(agent.handshakes()).toHaveLength(1);
        expect(gssHandshakesInFlight()).toBe(0);
      } finally {
        await agent.destroy();
      }
    },
  );

  it.skipIf(!haveBinding)(
    'C4: a request aborted, or timed out, while its Kerberos leg waits for the answer ends its GSS-API context — no longer counted as in flight, without a garbage collection (review r79)',
    async () => {
      const agent = await perRequestAgent({ handshakeTimeout: 1000 });
      try {
        // The caller's abort, once the server has the proactive token.
        const ac = new AbortController();
        hold.onArrival = () => ac.abort(new Error('given up'));
        await expect(request(`${origin}/hold/aborted`, { dispatcher: agent, signal: ac.signal })).rejects.toThrow(
          'given up',
        );
        expect(gssHandshakesInFlight()).toBe(0);
        // The handshake's clock (limits.handshakeTimeout), the server never answering.
        hold.onArrival = () => {};
        await expect(request(`${origin}/hold/timed-out`, { dispatcher: agent })).rejects.toMatchObject({
          code: 'MULTILEG_HANDSHAKE_TIMEOUT',
        });
        expect(gssHandshakesInFlight()).toBe(0);
      } finally {
        await agent.destroy();
      }
    },
  );

  it.skipIf(!haveBinding)(
    "C4: multileg doctor's SPN check frees the Kerberos context it made for a service ticket: once the checks are done nothing counts as a handshake in flight, without a garbage collection (before: that context counted beside the check's authenticated request, and after, until collected)",
    async () => {
      const ca = join(lab.dir, 'doctor-ca.pem');
      await writeFile(ca, CA_CERT);
      const { doctor } = await import('../src/cli/doctor.ts');
      let out = '';
      const write = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => {
        out += String(chunk);
        return true;
      });
      try {
        await doctor([`${origin}/first`, '--cacert', ca, '--json']);
      } finally {
        write.mockRestore();
      }
      const checks = (JSON.parse(out) as { checks: { name: string; verdict: string }[] }).checks;
      expect(checks.find((c) => c.name === 'SPN')).toMatchObject({ verdict: 'ok' });
      expect(checks.find((c) => c.name === 'authentication')).toMatchObject({ verdict: 'ok' });
      expect(gssHandshakesInFlight()).toBe(0);
    },
  );

  it.skipIf(!haveBinding)(
    'C4: an upgrade aborted while its Kerberos leg waits for the answer ends its GSS-API context — no longer counted as in flight, without a garbage collection (review r79)',
    async () => {
      // An HTTPS/1.1 origin that answers a bare upgrade `401 Negotiate` and never answers one with a token.
      const ac = new AbortController();
      const upgrades = createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY });
      upgrades.on('upgrade', (req: IncomingMessage, socket: Duplex) => {
        socket.on('error', () => {});
        if (req.headers.authorization?.startsWith('Negotiate ')) ac.abort(new Error('given up'));
        else
          socket.end(
            'HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Negotiate\r\nconnection: close\r\ncontent-length: 0\r\n\r\n',
          );
      });
      await new Promise<void>((resolve) => upgrades.listen(0, '127.0.0.1', resolve));
      const at = `https://localhost:${(upgrades.address() as AddressInfo).port}`;
      const agent = new MultilegAgent({
        connect: { ca: CA_CERT },
        trustedOrigins: [at],
        negotiate: { backend: 'gssapi' },
      });
      try {
        expect(gssHandshakesInFlight()).toBe(0);
        await expect(
          upgrade(`${at}/ws`, { dispatcher: agent, protocol: 'websocket', signal: ac.signal }),
        ).rejects.toThrow('given up');
        expect(gssHandshakesInFlight()).toBe(0);
      } finally {
        await agent.destroy();
        upgrades.closeAllConnections();
        upgrades.close();
      }
    },
  );

  it.skipIf(!haveBinding)(
    "C4/H5: a request aborted while the forwarding proxy's Kerberos leg waits for its answer ends the proxy handshake's GSS-API context — no longer counted as in flight, without a garbage collection (review r79)",
    async () => {
      // A forwarding proxy that answers a bare request `407 Negotiate` and never answers one with a token.
      const ac = new AbortController();
      const proxy = await hostile((socket, received) =>
        eachRequest(socket, received, (head) => {
          if (/\r\nproxy-authorization: negotiate /i.test(head)) {
            ac.abort(new Error('given up'));
            return 'stop';
          }
          socket.write(
            'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate\r\nContent-Length: 0\r\n\r\n',
          );
          return undefined;
        }),
      );
      const agent = new MultilegAgent({
        proxy: { uri: `http://127.0.0.1:${proxy.port}`, negotiate: { backend: 'gssapi', spn: 'HTTP@localhost' } },
      });
      try {
        expect(gssHandshakesInFlight()).toBe(0);
        await expect(request('http://origin.test/', { dispatcher: agent, signal: ac.signal })).rejects.toThrow(
          'given up',
        );
        expect(gssHandshakesInFlight()).toBe(0);
      } finally {
        await agent.destroy();
        await proxy.close();
      }
    },
  );
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
  // After each case: the first case's server and agent (its 8 sessions) would otherwise run on beside the second's.
  afterEach(async () => {
    await r?.close();
    r = undefined;
  });

  it.each([
    ['after a first request taught the agent the origin', true],
    // Before the first handshake ends the mode is unknown: the first session takes a spread session's
    // room meanwhile, and the rest wait for other sessions instead of for its slots.
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
      // No session ever holds a pile behind its handshake slots: at most a spread session's room at
      // once (from a cold start the first one used to take the ~100 that queued behind the origin's
      // first handshake). The peak, not the count served over the run: that one grows with speed.
      const snapshot = r.agent.sessions();
      expect(snapshot.map((s) => s.sessionId)).toEqual(expect.arrayContaining([...sessions]));
      const room = SPREAD_ROOM * DEFAULT_LIMITS.maxConcurrentHandshakes;
      expect(Math.max(...snapshot.map((s) => s.peakHeld))).toBeLessThanOrEqual(room);
      // Two legs per request; a new session's first request goes bare once (its 401 teaches nothing new).
      expect(r.server.exchanges.length).toBeLessThanOrEqual(2 * 201 + 1 + sessions.size);
    },
  );
});

/** A TCP relay to the KDC that holds every client→KDC chunk `delayMs` (its own process: a GSS-API call
 * on the event loop blocks this one). */
async function slowKdcRelay(kdcPort: number, delayMs: number): Promise<{ port: number; stop(): void }> {
  const port = await freePort();
  const script = `
import asyncio, sys
async def pipe(r, w, delay):
    try:
        while True:
            data = await r.read(65536)
            if not data:
                break
            if delay:
                await asyncio.sleep(delay)
            w.write(data)
            await w.drain()
    finally:
        w.close()
async def handle(cr, cw):
    ur, uw = await asyncio.open_connection('127.0.0.1', ${kdcPort})
    await asyncio.gather(pipe(cr, uw, ${delayMs / 1000}), pipe(ur, cw, 0))
async def main():
    server = await asyncio.start_server(handle, '127.0.0.1', ${port})
    async with server:
        await server.serve_forever()
asyncio.run(main())
`;
  const child = spawn(PYTHON, ['-c', script], { stdio: 'ignore' });
  await waitForPort(port);
  return { port, stop: () => child.kill() };
}

describe.skipIf(!haveBindingAndAcceptor)(
  'per-request Kerberos: GSS-API calls on the event loop only where they cannot block (MIT KDC and acceptor)',
  () => {
    let lab: Lab;
    let restoreEnv: () => void;
    let accept: (token: string) => Promise<string>;
    beforeAll(async () => {
      lab = await startLab({ kdc: true });
      restoreEnv = lab.applyEnv({ NTLM_USER_FILE: undefined });
      const kerberos = (await import('kerberos')).default as unknown as {
        initializeServer(service: string): Promise<KerberosServerLike>;
      };
      // The acceptor: MIT GSS-API with the lab's HTTP/localhost keytab; its reply is the AP-REP.
      accept = async (token) => {
        const ctx = await kerberos.initializeServer('HTTP@localhost');
        const reply = await ctx.step(token);
        expect(ctx.contextComplete).toBe(true);
        expect(ctx.username).toBe('alice@EXAMPLE.TEST');
        return reply;
      };
    });
    afterAll(async () => {
      restoreEnv?.();
      await lab?.stop();
    });

    /** Runs `fn` under the lab's krb5.conf saying `dns_canonicalize_hostname = true` (MIT's default). */
    async function withCanonicalisingProfile(fn: () => Promise<void>): Promise<void> {
      const realm = lab.realm!;
      const conf = join(lab.dir, 'canonicalize.conf');
      await realm.writeKrb5Conf(conf, realm.kdcPort);
      await writeFile(
        conf,
        (await readFile(conf, 'utf8')).replace('dns_canonicalize_hostname = false', 'dns_canonicalize_hostname = true'),
      );
      const previous = process.env.KRB5_CONFIG;
      process.env.KRB5_CONFIG = conf;
      try {
        await fn();
      } finally {
        process.env.KRB5_CONFIG = previous;
      }
    }

    const options = (cache: CredCache, more: { ccache?: string; keytab?: string } = {}) => ({
      mech: 'spnego' as const,
      flags: 2,
      credCache: cache,
      channelBinding: Buffer.alloc(32, 7),
      ...more,
    });

    /**
     * One request's handshake, over before the next begins (the event loop runs GSS-API calls only
     * while no other request's handshake is in flight): the first step, how it ran, and the server's
     * AP-REP checked. Resolves with the first step's token and how it ran.
     */
    async function handshake(client: GssClient): Promise<{ token: string; call: GssClient['lastCall'] }> {
      const token = (await client.step(''))!;
      const call = client.lastCall;
      await client.step(await accept(token));
      expect(client.contextComplete).toBe(true);
      return { token, call };
    }

    /**
     * alice's tickets in a FILE ccache of its own (`name` in the lab's directory), and a CredCache whose
     * stream (two first steps in a row) has moved its credential onto a MEMORY copy of that file.
     */
    async function streamOnCopy(name: string, more: { onCall?: (state: GssCallState) => void } = {}) {
      const path = join(lab.dir, `${name}.ccache`);
      await lab.realm!.kinit({ ccache: `FILE:${path}` });
      const copiesMadeBefore = gssCacheCopiesMade();
      const cache = new CredCache();
      const o = { ...options(cache, { ccache: `FILE:${path}` }), ...more };
      for (let i = 0; i < 2; i++) await handshake(await GssClient.create('HTTP@localhost', o));
      await vi.waitFor(() => expect(cache.copied).toBe(true));
      return { path, cache, o, copiesMadeBefore };
    }

    /** `path` replaced at once by a copy of the ccache `from`, as kinit writes one. */
    function replaceCache(path: string, from: string): void {
      copyFileSync(from, `${path}.new`);
      renameSync(`${path}.new`, path);
    }

    // Every test's contexts end (complete or fail): none counts as another request in flight later.
    afterEach(() => expect(gssHandshakesInFlight()).toBe(0));

    it('M2: the server token is verified on the event loop; a first step runs on a worker until its ticket is known to be cached and such a step was quick, then on the event loop, then made ahead in a stream — every token accepted', async () => {
      const cache = new CredCache();
      const o = options(cache);
      // All made before any step: none is handed a context made ahead.
      const clients: GssClient[] = [];
      for (let i = 0; i < 5; i++) clients.push(await GssClient.create('HTTP@localhost', o));
      const tokens: string[] = [];
      const calls: Array<GssClient['lastCall']> = [];
      for (const client of clients) {
        const token = (await client.step(''))!;
        calls.push(client.lastCall);
        expect(carriesKerberosApReq(token)).toBe(true);
        // M2: the AP-REP is processed (mutual authentication) synchronously: local crypto only.
        await client.step(await accept(token));
        expect(client.lastCall).toBe('sync');
        expect(client.contextComplete).toBe(true);
        tokens.push(token);
      }
      // The first may need a TGS-REQ; the second, with the ticket cached, shows whether such a step
      // waits on anything (DNS): both on a worker. Once one was quick, the rest on the event loop (a
      // worker again only while such steps are slow, e.g. on a loaded machine).
      expect(calls.slice(0, 2)).toEqual(['async', 'async']);
      const firstSync = calls.indexOf('sync');
      expect(firstSync).toBeGreaterThanOrEqual(2);
      expect(calls.slice(firstSync)).toEqual(Array(5 - firstSync).fill('sync'));
      // First steps in a row: the next context's first step is made ahead, on a worker.
      await vi.waitFor(() => expect(cache.ahead).toBe(true));
      const ahead = await GssClient.create('HTTP@localhost', o);
      const aheadToken = (await ahead.step(''))!;
      expect(ahead.lastCall).toBe('ahead');
      expect(carriesKerberosApReq(aheadToken)).toBe(true);
      await ahead.step(await accept(aheadToken));
      expect(ahead.lastCall).toBe('sync');
      expect(ahead.contextComplete).toBe(true);
      expect(new Set([...tokens, aheadToken]).size).toBe(6);
      // One made ahead that no request takes is thrown away after AHEAD_MAX_AGE_MS.
      await vi.waitFor(() => expect(cache.ahead).toBe(true));
      await new Promise((resolve) => setTimeout(resolve, AHEAD_MAX_AGE_MS + 50));
      expect(cache.ahead).toBe(false);
      // A reply that fails verification is an error on the synchronous path too.
      const d = await GssClient.create('HTTP@localhost', options(new CredCache()));
      const reply = Buffer.from(await accept((await d.step(''))!), 'base64');
      reply[reply.length - 3]! ^= 0xff;
      await expect(d.step(reply.toString('base64'))).rejects.toThrow(GssCallError);
      expect(d.lastCall).toBe('sync');
      expect(d.contextComplete).toBe(false);
    });

    it('C4: while another request’s handshake is in flight a first step runs on a worker, beside the event loop they all wait for, and the server token’s check on the event loop (a start on a worker costs the loop more than the check); alone again, both on the event loop — every token accepted', async () => {
      const cache = new CredCache();
      const o = options(cache);
      // All made before any step: none is handed a context made ahead.
      const clients: GssClient[] = [];
      for (let i = 0; i < 8; i++) clients.push(await GssClient.create('HTTP@localhost', o));
      const [a, b, c] = clients.splice(5) as [GssClient, GssClient, GssClient];
      // Requests one at a time until first steps run on the event loop (the ticket known and quick).
      let call: GssClient['lastCall'];
      for (const client of clients) if (call !== 'sync') call = (await handshake(client)).call;
      expect(call).toBe('sync');
      const tokenA = (await a.step(''))!;
      expect(a.lastCall).toBe('sync'); // alone in flight
      expect(gssHandshakesInFlight()).toBe(1);
      const tokenB = (await b.step(''))!;
      expect(gssHandshakesInFlight()).toBe(2);
      // Two in flight: B's first step on a worker, A's AP-REP check on the event loop.
      expect(b.lastCall).toBe('async');
      await a.step(await accept(tokenA));
      expect([a.lastCall, a.contextComplete]).toEqual(['sync', true]);
      // A is over: B alone again, its AP-REP checked on the event loop.
      expect(gssHandshakesInFlight()).toBe(1);
      await b.step(await accept(tokenB));
      expect([b.lastCall, b.contextComplete]).toEqual(['sync', true]);
      expect(gssHandshakesInFlight()).toBe(0);
      // A failed step ends its context too: no longer counted.
      const reply = Buffer.from(await accept((await c.step(''))!), 'base64');
      reply[reply.length - 3]! ^= 0xff;
      await expect(c.step(reply.toString('base64'))).rejects.toThrow(GssCallError);
      expect(gssHandshakesInFlight()).toBe(0);
      for (const client of clients) client.dispose();
    });

    it(`M5: a context made ahead serves only the same channel bindings; C4: a ticket lasting less than SYNC_TICKET_MARGIN_MS (${SYNC_TICKET_MARGIN_MS} ms) keeps first steps on a worker`, async () => {
      const cache = new CredCache();
      const o = options(cache);
      for (let i = 0; i < 2; i++) await handshake(await GssClient.create('HTTP@localhost', o));
      await vi.waitFor(() => expect(cache.ahead).toBe(true));
      // Other bindings (a connection to another certificate): the context made ahead is not theirs.
      const other = await GssClient.create('HTTP@localhost', { ...o, channelBinding: Buffer.alloc(32, 8) });
      expect(cache.ahead).toBe(false);
      expect((await handshake(other)).call).not.toBe('ahead');

      // A ccache whose tickets end in 30 s: every first step stays off the event loop.
      const short = `FILE:${join(lab.dir, 'short-lived.ccache')}`;
      await lab.realm!.kinit({ ccache: short, lifetime: '30s' });
      const shortOptions = options(new CredCache(), { ccache: short });
      const clients = [];
      for (let i = 0; i < 4; i++) clients.push(await GssClient.create('HTTP@localhost', shortOptions));
      const calls = [];
      for (const client of clients) calls.push((await handshake(client)).call);
      expect(calls).toEqual(['async', 'async', 'async', 'async']);
    });

    it("C4: a Negotiate handshake taken without a final token (mutualAuth: 'optional', as proxies answer) or refused without one ends its context: it no longer counts as in flight (before: kept counted for as long as the mechanism remembered its principal, every later lone request's GSS-API calls went to a worker)", async () => {
      const leg = {
        origin: 'https://localhost:443',
        hostname: 'localhost',
        port: 443,
        method: 'GET',
        path: '/',
        proxy: false,
      };
      const mechanism = negotiateMechanism({ backend: 'gssapi', mutualAuth: 'optional', spn: 'HTTP@localhost' });
      const taken = mechanism.createContext(leg);
      const token = await taken.step(undefined, leg);
      expect(token).toMatch(/^Negotiate /);
      expect(gssHandshakesInFlight()).toBe(1);
      // The server's 200 carries no final token: accepted (mutual authentication optional).
      await taken.finish(undefined, leg);
      expect(gssHandshakesInFlight()).toBe(0);
      // A 401 without a token after the AP-REQ: the handshake is over, refused.
      const refused = mechanism.createContext(leg);
      await refused.step(undefined, leg);
      expect(gssHandshakesInFlight()).toBe(1);
      await expect(refused.step({ scheme: 'Negotiate', schemeKey: 'negotiate', params: {} }, leg)).rejects.toThrow(
        /rejected/,
      );
      expect(gssHandshakesInFlight()).toBe(0);
      // A 401 with an SPNEGO reject token: refused too (challengeAsks reads it once per answer).
      const rejected = mechanism.createContext(leg);
      await rejected.step(undefined, leg);
      expect(gssHandshakesInFlight()).toBe(1);
      const reject = encodeNegTokenResp({ negState: NegState.REJECT }).toString('base64');
      expect(
        challengeAsks(rejected, { scheme: 'Negotiate', schemeKey: 'negotiate', token68: reject, params: {} }),
      ).toBe('refused');
      expect(gssHandshakesInFlight()).toBe(0);
    });

    it('C4: a Negotiate context disposed while its first step runs (its handshake timed out or was aborted meanwhile) frees the GSS-API context that step makes, and makes no token; dispose again, or after the end, changes nothing', async () => {
      const leg = {
        origin: 'https://localhost:443',
        hostname: 'localhost',
        port: 443,
        method: 'GET',
        path: '/',
        proxy: false,
      };
      const mechanism = negotiateMechanism({ backend: 'gssapi', spn: 'HTTP@localhost' });
      // Disposed at once: the step is still loading its code, or making the GSS-API context.
      for (let i = 0; i < 2; i++) {
        const context = mechanism.createContext(leg);
        const step = context.step(undefined, leg);
        context.dispose!();
        await expect(step).rejects.toThrow(/handshake is over/);
        expect(gssHandshakesInFlight()).toBe(0);
        context.dispose!();
      }
      // After a refusal ended it, dispose frees nothing twice (the count stays right).
      const refused = mechanism.createContext(leg);
      await refused.step(undefined, leg);
      const other = mechanism.createContext(leg);
      await other.step(undefined, leg);
      expect(gssHandshakesInFlight()).toBe(2);
      await expect(refused.step({ scheme: 'Negotiate', schemeKey: 'negotiate', params: {} }, leg)).rejects.toThrow(
        /rejected/,
      );
      refused.dispose!();
      refused.dispose!();
      expect(gssHandshakesInFlight()).toBe(1);
      other.dispose!();
      expect(gssHandshakesInFlight()).toBe(0);
    });

    it('C4: a context made ahead and thrown away while its step runs on a worker is released only after that step (MIT: one thread per context)', async () => {
      const cache = new CredCache();
      const o = options(cache);
      const first = await GssClient.create('HTTP@localhost', o);
      await first.step(await accept((await first.step(''))!)); // complete: only the cache holds the credential
      expect(cache.holders).toBe(1);
      const client = await GssClient.create('HTTP@localhost', o);
      expect(cache.holders).toBe(2);
      client.stepAhead(); // on a worker now
      client.dispose();
      // Still held while the worker has it; let go once its step is over.
      expect(cache.holders).toBe(2);
      await vi.waitFor(() => expect(cache.holders).toBe(1));
    });

    it('C4/S6: in a stream of first steps the kept credential moves to a MEMORY copy of its FILE ccache (MIT reads a file whole, under a lock, several times a step): tickets got meanwhile stay in the copy; a kinit as another principal, or a kdestroy, is seen by the very next context, and the retired copy is destroyed once unused', async () => {
      const realm = lab.realm!;
      const path = join(lab.dir, 'copied.ccache');
      await realm.kinit({ ccache: `FILE:${path}` });
      const copiesMadeBefore = gssCacheCopiesMade();
      const cache = new CredCache();
      const o = options(cache, { ccache: `FILE:${path}` });
      // Two first steps in a row: a stream. Before the next context is made ahead, the copy.
      for (let i = 0; i < 2; i++) await handshake(await GssClient.create('HTTP@localhost', o));
      await vi.waitFor(() => expect(cache.ahead).toBe(true));
      expect(cache.copied).toBe(true);
      expect(gssCacheCopies(copiesMadeBefore)).toBe(1);
      const fromCopy = await GssClient.create('HTTP@localhost', o);
      expect(fromCopy.keptCredential).toBe(true);
      expect((await handshake(fromCopy)).call).toBe('ahead');
      // A service ticket the copy's credential gets (a TGS-REQ) goes to the copy, not the file: the
      // token was made from the copy. (Made from the file, MIT stores the ticket there.)
      const klist = () => execFileSync('klist', ['-c', `FILE:${path}`], { env: realm.toolEnv, encoding: 'utf8' });
      expect(klist()).not.toContain('HTTP/intranet.example.test');
      const intranet = await GssClient.create('HTTP@intranet.example.test', o);
      expect(carriesKerberosApReq((await intranet.step(''))!)).toBe(true);
      intranet.dispose();
      expect(klist()).not.toContain('HTTP/intranet.example.test');
      expect(cache.copied).toBe(true);

      // S6: a kinit as another principal into the file retires the copy at the next context: that
      // context is carol's, not one more of alice's from the copy.
      await realm.kinit({ ccache: `FILE:${path}`, principal: CAROL.principal, password: CAROL.password });
      const carol = await GssClient.create('HTTP@localhost', o);
      expect(carol.username).toBe(CAROL.principal);
      expect(cache.copied).toBe(false);
      carol.dispose();
      // Nothing uses alice's copy any more: destroyed (its tickets freed).
      await vi.waitFor(() => expect(gssCacheCopies(copiesMadeBefore)).toBe(0));

      // S6: a kdestroy is seen by the next context too: no token from a copy of what was destroyed.
      // (A new CredCache: the one above keeps carol's credential, acquired from the file itself.)
      await realm.kinit({ ccache: `FILE:${path}` });
      const again = new CredCache();
      const o2 = options(again, { ccache: `FILE:${path}` });
      for (let i = 0; i < 2; i++) await handshake(await GssClient.create('HTTP@localhost', o2));
      await vi.waitFor(() => expect(again.copied).toBe(true));
      execFileSync('kdestroy', ['-c', `FILE:${path}`], { env: realm.toolEnv });
      await expect(GssClient.create('HTTP@localhost', o2)).rejects.toThrow(GssCallError);
      expect(again.copied).toBe(false);
      await vi.waitFor(() => expect(gssCacheCopies(copiesMadeBefore)).toBe(0));
    });

    it('S6: a credential acquired from the MEMORY copy while a change to the file (kinit carol) retired the copy is not kept: the next context is carol’s, from the file, not one more of alice’s (review r1)', async () => {
      const carolPath = join(lab.dir, 'retired-while-acquired-carol.ccache');
      await lab.realm!.kinit({ ccache: `FILE:${carolPath}`, principal: CAROL.principal, password: CAROL.password });
      let onCall: ((state: GssCallState) => void) | undefined;
      const { path, cache, o, copiesMadeBefore } = await streamOnCopy('retired-while-acquired', {
        onCall: (state) => onCall?.(state),
      });
      // The kept credential has had its time (the copy stays): the next context acquires from the copy.
      expect(cache.take(Date.now() + 60_000)).toBeUndefined();
      expect(cache.copied).toBe(true);
      // While that acquire runs on a worker, carol's tickets replace the file (kinit carol) and a
      // context made meanwhile sees it: the copy is retired.
      onCall = (state) => {
        if (state !== 'running') return;
        onCall = undefined;
        replaceCache(path, carolPath);
        expect(cache.currentCopy()).toBeUndefined();
      };
      const alice = await GssClient.create('HTTP@localhost', o);
      expect(onCall).toBeUndefined();
      expect(alice.username).not.toBe(CAROL.principal); // begun before the change: alice's
      alice.dispose();
      // Not kept: the next context acquires from the file, carol's.
      const next = await GssClient.create('HTTP@localhost', o);
      expect(next.username).toBe(CAROL.principal);
      next.dispose();
      cache.drop();
      await vi.waitFor(() => expect(gssCacheCopies(copiesMadeBefore)).toBe(0));
    });

    it('M2/R4: a service ticket got while the credential came from the MEMORY copy (so in the copy alone) and refused under an old key is not used again: forgetServiceTicket retires the copy, the next context asks the KDC from the file (review r1)', async () => {
      const { path, cache, o, copiesMadeBefore } = await streamOnCopy('rotated-in-copy');
      const klist = () => execFileSync('klist', ['-c', `FILE:${path}`], { env: lab.realm!.toolEnv, encoding: 'utf8' });
      const refused = await GssClient.create('HTTP@intranet.example.test', o);
      expect(carriesKerberosApReq((await refused.step(''))!)).toBe(true);
      expect(klist()).not.toContain('HTTP/intranet.example.test'); // in the copy alone
      // The server refused it (its key rotated).
      refused.forgetServiceTicket();
      refused.dispose();
      expect(cache.copied).toBe(false);
      await vi.waitFor(() => expect(gssCacheCopies(copiesMadeBefore)).toBe(0));
      // The next context is made from the file: its ticket is a new one, stored there.
      const next = await GssClient.create('HTTP@intranet.example.test', o);
      expect(next.keptCredential).toBe(false);
      expect(carriesKerberosApReq((await next.step(''))!)).toBe(true);
      next.dispose();
      expect(klist()).toContain('HTTP/intranet.example.test');
    });

    it('C4: a FILE ccache that could not be copied once (it held another principal for a moment: a kinit under way) is copied at a later stream: only a cache that is no file (a keyring, KCM) is never asked again (review r1)', async () => {
      const realm = lab.realm!;
      const path = join(lab.dir, 'copy-later.ccache');
      const alicePath = join(lab.dir, 'copy-later-alice.ccache');
      const carolPath = join(lab.dir, 'copy-later-carol.ccache');
      await realm.kinit({ ccache: `FILE:${alicePath}` });
      await realm.kinit({ ccache: `FILE:${carolPath}`, principal: CAROL.principal, password: CAROL.password });
      const put = (from: string) => replaceCache(path, from);
      put(alicePath);
      const copiesMadeBefore = gssCacheCopiesMade();
      const cache = new CredCache();
      const o = options(cache, { ccache: `FILE:${path}` });
      await handshake(await GssClient.create('HTTP@localhost', o));
      // The second first step of a stream: the copy is made after it (setImmediate). Before that,
      // the file holds carol's tickets for a moment: alice's credential is not copied from it.
      const second = await GssClient.create('HTTP@localhost', o);
      const token = (await second.step(''))!;
      put(carolPath);
      await new Promise((resolve) => setImmediate(resolve)); // after the stream's (queued first)
      expect(cache.copied).toBe(false);
      put(alicePath);
      await second.step(await accept(token));
      // The file holds alice's again: a later stream copies it.
      for (let i = 0; i < 2; i++) await handshake(await GssClient.create('HTTP@localhost', o));
      await vi.waitFor(() => expect(cache.ahead).toBe(true));
      expect(cache.copied).toBe(true);
      cache.drop();
      await vi.waitFor(() => expect(gssCacheCopies(copiesMadeBefore)).toBe(0));
    });

    it('S6: a MEMORY copy lives no longer than its stream: once no first step came for CRED_REUSE_MS it is retired and destroyed, so an idle (or closed) agent keeps no copy of the tickets in memory, after a kdestroy neither (review r1)', async () => {
      const realm = lab.realm!;
      const path = join(lab.dir, 'idle-copy.ccache');
      await realm.kinit({ ccache: `FILE:${path}` });
      const copiesMadeBefore = gssCacheCopiesMade();
      vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
      try {
        const cache = new CredCache();
        const o = options(cache, { ccache: `FILE:${path}` });
        for (let i = 0; i < 2; i++) await handshake(await GssClient.create('HTTP@localhost', o));
        await vi.waitFor(() => expect(cache.ahead).toBe(true));
        expect(cache.copied).toBe(true);
        // The stream goes on: the copy stays.
        vi.advanceTimersByTime(CRED_REUSE_MS - 1_000);
        await handshake(await GssClient.create('HTTP@localhost', o));
        vi.advanceTimersByTime(1_000);
        expect(cache.copied).toBe(true);
        // It has ended (no first step for CRED_REUSE_MS): retired, destroyed once unused.
        vi.advanceTimersByTime(CRED_REUSE_MS);
        expect(cache.copied).toBe(false);
        await vi.waitFor(() => expect(gssCacheCopies(copiesMadeBefore)).toBe(0));
      } finally {
        vi.useRealTimers();
      }
    });

    it('C4: an acquire from the MEMORY copy given up before it started (its request aborted or timed out while queued) leaves the copy in use: a call never started says nothing of the cache (review r1)', async () => {
      const { cache, o, copiesMadeBefore } = await streamOnCopy('abandoned-acquire');
      expect(cache.take(Date.now() + 60_000)).toBeUndefined(); // the next context acquires from the copy
      await expect(GssClient.create('HTTP@localhost', { ...o, gaveUp: () => true })).rejects.toThrow(
        GssCallAbandonedError,
      );
      expect(cache.copied).toBe(true);
      const next = await GssClient.create('HTTP@localhost', o);
      expect(next.keptCredential).toBe(false);
      await handshake(next);
      expect(cache.copied).toBe(true);
      cache.drop();
      await vi.waitFor(() => expect(gssCacheCopies(copiesMadeBefore)).toBe(0));
    });

    it('S6: in a stream, a ccache found to hold another principal when it was to be copied (kinit carol since alice’s credential was kept) drops alice’s credential there: no context is made ahead on it, the next is carol’s (review r1)', async () => {
      const realm = lab.realm!;
      const path = join(lab.dir, 'switched-before-copy.ccache');
      const carolPath = join(lab.dir, 'switched-before-copy-carol.ccache');
      await realm.kinit({ ccache: `FILE:${path}` });
      await realm.kinit({ ccache: `FILE:${carolPath}`, principal: CAROL.principal, password: CAROL.password });
      const cache = new CredCache();
      const o = options(cache, { ccache: `FILE:${path}` });
      await handshake(await GssClient.create('HTTP@localhost', o));
      // The second first step of a stream; before its copy is made (setImmediate), kinit carol.
      const second = await GssClient.create('HTTP@localhost', o);
      const token = (await second.step(''))!;
      replaceCache(path, carolPath);
      await new Promise((resolve) => setImmediate(resolve)); // after the stream's (queued first)
      expect(cache.copied).toBe(false);
      expect(cache.ahead).toBe(false);
      expect(cache.holders).toBe(0); // none kept
      await second.step(await accept(token));
      const next = await GssClient.create('HTTP@localhost', o);
      expect(next.username).toBe(CAROL.principal);
      next.dispose();
    });

    it('C4: a keytab credential keeps its first steps on a worker (MIT may renew its TGT inside gss_init_sec_context)', async () => {
      const keytab = join(lab.dir, 'alice-sync.keytab');
      await lab.realm!.kadmin(`ktadd -k ${keytab} -norandkey alice@EXAMPLE.TEST`);
      const cache = new CredCache();
      const o = options(cache, { keytab: `FILE:${keytab}`, ccache: `MEMORY:sync-test-${process.pid}` });
      const a = await handshake(await GssClient.create('HTTP@localhost', o));
      const b = await handshake(await GssClient.create('HTTP@localhost', o));
      expect([a.call, b.call]).toEqual(['async', 'async']);
    });

    it(`C4: a first step on the event loop that took SLOW_SYNC_CALL_MS (${SLOW_SYNC_CALL_MS} ms) or more waited on the network: later ones for that SPN run on a worker`, async () => {
      const realm = lab.realm!;
      const ccache = `FILE:${join(lab.dir, 'relay.ccache')}`;
      await realm.kinit({ ccache });
      const o = options(new CredCache(), { ccache });
      // Made now, on the credential (and its known ticket) of this ccache as it is.
      const clients: GssClient[] = [];
      for (let i = 0; i < 8; i++) clients.push(await GssClient.create('HTTP@localhost', o));
      // Until a first step runs on the event loop (the ticket known, such steps seen to be quick).
      let next = 0;
      let last: GssClient['lastCall'];
      while (next < 5 && last !== 'sync') last = (await handshake(clients[next++]!)).call;
      expect(last).toBe('sync');
      // The ccache loses its service ticket (a new kinit) and the KDC becomes slow: the next first
      // step, believed safe, blocks on a TGS-REQ.
      await realm.kinit({ ccache });
      const relay = await slowKdcRelay(realm.kdcPort, 3 * SLOW_SYNC_CALL_MS);
      const conf = join(lab.dir, 'slow-kdc.conf');
      await realm.writeKrb5Conf(conf, relay.port);
      const previous = process.env.KRB5_CONFIG;
      process.env.KRB5_CONFIG = conf;
      try {
        const [blocked, ...after] = clients.slice(next, next + 3);
        expect((await handshake(blocked!)).call).toBe('sync');
        // For good, even when steps on a worker are quick again.
        const calls = [];
        for (const client of after) calls.push((await handshake(client!)).call);
        expect(calls).toEqual(['async', 'async']);
      } finally {
        // The contexts no step took: their credential handles released now.
        for (const client of clients) client.dispose();
        process.env.KRB5_CONFIG = previous;
        relay.stop();
      }
    });

    it("M2/R1: a context made ahead serves the request it is handed to, also where every step runs on a worker (MIT's default krb5.conf): its server-token check is not dropped for the earlier request whose handshake is over (review r46: every such request failed mutual authentication)", async () => {
      await withCanonicalisingProfile(async () => {
        const cache = new CredCache();
        const over: boolean[] = [];
        // Each request's handshake: over once its server token was checked.
        const o = (i: number) => ({ ...options(cache), gaveUp: () => over[i] === true });
        for (let i = 0; i < 3; i++) {
          const client = await GssClient.create('HTTP@localhost', o(i));
          await client.step(await accept((await client.step(''))!));
          over[i] = true;
        }
        await vi.waitFor(() => expect(cache.ahead).toBe(true));
        const handed = await GssClient.create('HTTP@localhost', o(3));
        const token = (await handed.step(''))!;
        expect(handed.lastCall).toBe('ahead');
        // Before: GssCallAbandonedError (the earlier request's gaveUp), a MutualAuthError to the caller.
        await handed.step(await accept(token));
        expect([handed.lastCall, handed.contextComplete]).toEqual(['async', true]);
      });
    });

    it("R1/R3: where krb5.conf canonicalises host names in DNS, a failed step's error names the service as written: its Kerberos name is not made on the event loop (gss_canonicalize_name looks the host up, which a silent DNS server stalls)", async () => {
      await withCanonicalisingProfile(async () => {
        const g = await loadGssFunctions();
        const canonicalize = g.canonicalizeName;
        let onLoop = 0;
        g.canonicalizeName = new Proxy(canonicalize, {
          apply: (fn, self, args) => {
            onLoop += 1;
            return Reflect.apply(fn, self, args);
          },
        });
        try {
          // No such service principal in the KDC: the first step fails (on a worker).
          const client = await GssClient.create('nosuch@localhost', options(new CredCache()));
          const err = await client.step('').then(
            () => undefined,
            (e: Error) => e,
          );
          expect(err).toBeInstanceOf(GssCallError);
          expect((err as GssCallError).servicePrincipal).toBe('nosuch/localhost');
          // Before: gss_canonicalize_name on the event loop, for 'nosuch/localhost@EXAMPLE.TEST'.
          expect(onLoop).toBe(0);
        } finally {
          g.canonicalizeName = canonicalize;
        }
      });
    });

    it("R1/R3: where krb5.conf canonicalises host names in DNS (dns_canonicalize_hostname = true, MIT's default), every step runs on a worker — MIT looks the host up in each gss_init_sec_context call, a silent DNS server would stall the event loop", async () => {
      await withCanonicalisingProfile(async () => {
        const o = options(new CredCache());
        const clients: GssClient[] = [];
        for (let i = 0; i < 5; i++) clients.push(await GssClient.create('HTTP@localhost', o));
        const replies: string[] = [];
        for (const client of clients) replies.push(await accept((await client.step(''))!));
        // Ticket cached, steps quick (localhost is in /etc/hosts): still never on the event loop.
        expect(clients.map((c) => c.lastCall)).toEqual(Array(5).fill('async'));
        for (const [i, client] of clients.entries()) {
          await client.step(replies[i]!);
          expect(client.lastCall).toBe('async');
          expect(client.contextComplete).toBe(true);
        }
      });
    });
  },
);
