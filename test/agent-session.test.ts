import { Readable } from 'node:stream';
import { fetch, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import {
  BodyNotReplayableError,
  HandshakeTimeoutError,
  LegLimitError,
  MechanismUnavailableError,
  MultilegAgent,
  type MultilegAgentOptions,
  ntlmMechanism,
  QueueFullError,
  QueueTimeoutError,
} from '../src/index.ts';
import { TICKET_RECHECK_MS } from '../src/session/origin-memory.ts';
import { ALICE, get, getUser, hasAuth, many, type Rig, rig, sleep, until } from './helpers.ts';

let r: Rig | undefined;
afterEach(async () => {
  await r?.close();
  r = undefined;
});

const authorized = (rg: Rig) => rg.server.exchanges.filter((e) => hasAuth(e.requestHeaders));

describe('MultilegAgent on one HTTP/2 session (reference server)', () => {
  it('C1: new requests queue while a handshake runs; nothing else reaches the wire until it ends', async () => {
    r = await rig({ mode: 'session', faults: { delayMs: (q) => (q.headers.authorization ? 30 : 0) } });
    // One timeline of what the server saw arrive and what it answered, in real order.
    const timeline: string[] = [];
    r.server.on('request', (q) => timeline.push(`arrive ${q.path} ${q.headers.authorization ? 'auth' : 'bare'}`));
    r.server.on('exchange', (e) => timeline.push(`answer ${e.path} ${e.status}`));
    const results = await many(r, 30);
    expect(results.every((x) => x.status === 200)).toBe(true);
    // One probe, two legs, then one request per user request: no anonymous request raced the handshake.
    expect(r.server.exchanges).toHaveLength(32);
    const leader = r.server.exchanges.find((e) => e.outcome === 'accepted')!.path;
    const finalAnswer = timeline.indexOf(`answer ${leader} 200`);
    expect(timeline.slice(0, finalAnswer + 1)).toEqual([
      `arrive ${leader} bare`,
      `answer ${leader} 401`,
      `arrive ${leader} auth`,
      `answer ${leader} 401`,
      `arrive ${leader} auth`,
      `answer ${leader} 200`,
    ]);
    expect(new Set(r.server.exchanges.map((e) => e.sessionId)).size).toBe(1);
    expect(r.agent.stats().handshakes).toBe(1);
  });

  it('C1: a request in flight that comes back 401 joins the queue instead of starting a handshake', async () => {
    // The session is probed by a public request, so the next requests all go out at once; /auth/0's
    // 401 comes back first and it leads, while the others' 401s arrive during its (held) legs.
    r = await rig({
      mode: 'session',
      faults: { delayMs: (q) => (q.headers.authorization ? 200 : q.path === '/auth/0' ? 0 : 50) },
    });
    expect((await get(r, '/public/probe')).status).toBe(200);
    const results = await many(r, 5);
    expect(results.every((x) => x.status === 200 && x.body.user === 'EXAMPLE\\alice')).toBe(true);
    expect(r.agent.stats().handshakes).toBe(1);
    // Only the leader's legs carried credentials; each other request: its 401 in flight, then 200 after the queue.
    expect(authorized(r)).toHaveLength(2);
    for (const i of [1, 2, 3, 4]) {
      expect(r.server.exchanges.filter((e) => e.path === `/auth/${i}`).map((e) => e.status)).toEqual([401, 200]);
    }
  });

  it('C2: once the session is authenticated, later requests carry no Authorization and start no handshake', async () => {
    r = await rig({ mode: 'session' });
    await many(r, 5);
    r.server.reset();
    const again = await many(r, 20);
    expect(again.every((x) => x.status === 200 && x.body.user === 'EXAMPLE\\alice')).toBe(true);
    expect(r.server.exchanges).toHaveLength(20);
    expect(authorized(r)).toHaveLength(0);
    expect(r.server.exchanges.every((e) => e.requestHeaders['auth-id'] === undefined)).toBe(true);
    expect(r.agent.stats().handshakes).toBe(1);
  });

  it('C3: the Auth-ID is echoed byte for byte on the next leg of its handshake, and on nothing else', async () => {
    r = await rig({ mode: 'session' });
    await many(r, 10);
    const legs = authorized(r);
    expect(legs).toHaveLength(2);
    expect(legs[0]!.authIdReceived).toBeUndefined();
    expect(legs[0]!.authIdSent).toBeTruthy();
    expect(legs[1]!.requestHeaders['auth-id']).toBe(legs[0]!.authIdSent);
    const carrying = r.server.exchanges.filter((e) => e.requestHeaders['auth-id'] !== undefined);
    expect(carrying).toEqual([legs[1]]);
    expect(r.agent.handshakes()[0]!.authIdCarried).toBe(true);
  });

  it('C3/C8: an Auth-ID is never reused on another session', async () => {
    r = await rig({ mode: 'per-request' });
    await many(r, 6);
    const sentIds = new Map(r.server.exchanges.filter((e) => e.authIdSent).map((e) => [e.authIdSent!, e.sessionId]));
    for (const e of r.server.exchanges) {
      const id = e.requestHeaders['auth-id'];
      if (typeof id === 'string') expect(sentIds.get(id)).toBe(e.sessionId);
    }
    // Never two requests in flight with the same Auth-ID: each is used exactly once.
    const used = r.server.exchanges.map((e) => e.requestHeaders['auth-id']).filter((v) => v !== undefined);
    expect(new Set(used).size).toBe(used.length);
  });

  it('C4: Persistent-Auth: true on the final 200 authenticates the session', async () => {
    r = await rig({ mode: 'session' });
    await many(r, 4);
    expect(r.agent.handshakes().map((h) => h.outcome)).toEqual(['session']);
  });

  it.each(['Persistent-auth', 'Persisted-auth', 'persistent-auth'])('C4: the spelling %s is accepted', async (name) => {
    r = await rig({ mode: 'session', schemes: ['Negotiate'], persistentAuthHeaderName: name });
    await many(r, 4);
    expect(r.agent.handshakes().map((h) => h.outcome)).toEqual(['session']);
  });

  it('C4: an empty Persistent-Auth value means true', async () => {
    r = await rig({ mode: 'session', schemes: ['Negotiate'], persistentAuthValue: '' });
    await many(r, 4);
    expect(r.agent.handshakes().map((h) => h.outcome)).toEqual(['session']);
  });

  it.each([true, false])(
    'C4: per-request (Persistent-Auth: false sent = %s): requests authenticate on their own, proactively, without blocking',
    async (falseHeader) => {
      r = await rig({ mode: 'per-request', schemes: ['Negotiate'], persistentAuthFalseHeader: falseHeader });
      const first = await get(r, '/auth/first');
      expect(first.status).toBe(200);
      expect(r.agent.handshakes()[0]!.outcome).toBe('per-request');
      r.server.reset();
      const results = await many(r, 12);
      expect(results.every((x) => x.status === 200)).toBe(true);
      // Proactive: every request's first leg already carries a token; no anonymous probe, no 401 bare.
      expect(r.server.exchanges.every((e) => hasAuth(e.requestHeaders))).toBe(true);
      expect(r.server.exchanges).toHaveLength(24);
      // Not blocking: handshakes overlapped on the session.
      const seqOfFirstFinal = Math.min(...r.server.exchanges.filter((e) => e.status === 200).map((e) => e.seq));
      const startedBefore = r.server.exchanges.filter((e) => e.seq < seqOfFirstFinal && e.status === 401);
      expect(startedBefore.length).toBeGreaterThan(1);
    },
  );

  it('C4: a 401 on a per-request session answered with a multileg scheme that is not connection-level blocks no one: the handshakes run side by side', async () => {
    // NTLM inside Negotiate (level "either"), not proactive: each request goes bare, meets a 401 and
    // answers it with a handshake of its own. Its legs are held, so the handshakes overlap unless blocked.
    r = await rig(
      { mode: 'per-request', schemes: ['Negotiate'], faults: { delayMs: (q) => (q.headers.authorization ? 50 : 0) } },
      { mechanisms: [ntlmMechanism(ALICE, { scheme: 'Negotiate' })], limits: { maxPerRequestSessions: 1 } },
    );
    const first = await get(r, '/auth/first');
    expect(r.agent.handshakes().map((h) => [h.scheme, h.outcome])).toEqual([['Negotiate', 'per-request']]);
    r.server.reset();
    const results = await many(r, 6);
    const ex = r.server.exchanges;
    // Side by side: more than one handshake's first leg arrived before any handshake ended (blocked,
    // the others waited, and some were shown a 401 after MAX_WAITS waits).
    const firstAccepted = Math.min(...ex.filter((e) => e.outcome === 'accepted').map((e) => e.seq));
    const started = ex.filter((e) => e.seq < firstAccepted && e.outcome === 'challenge');
    expect(started.length).toBeGreaterThan(1);
    expect(results.map((x) => [x.status, x.body.sessionId])).toEqual(Array(6).fill([200, first.body.sessionId]));
    // Each request: its bare 401, then its own two legs (not proactive, so not one wire request less).
    expect(ex.filter((e) => e.outcome === 'unauthenticated')).toHaveLength(6);
    expect(ex.filter((e) => e.outcome === 'accepted')).toHaveLength(6);
  });

  it('C5: NTLM that succeeds authenticates the session even without Persistent-Auth', async () => {
    r = await rig({ mode: 'none', schemes: ['NTLM'] });
    await many(r, 10);
    expect(r.agent.handshakes().map((h) => [h.scheme, h.outcome])).toEqual([['NTLM', 'session']]);
    expect(authorized(r)).toHaveLength(2);
  });

  it("S6/R4: NTLM proved with the agent's password and answered 500 with Persistent-Auth: true keeps its session (no new connection and handshake per 5xx, review r60)", async () => {
    r = await rig({ mode: 'session', schemes: ['NTLM'] }, { negotiate: false });
    expect((await get(r, '/status/500/a')).status).toBe(500);
    const [h] = r.agent.handshakes();
    expect([h?.outcome, h?.failure]).toEqual(['failed', 'error']);
    expect((await get(r, '/auth/b')).status).toBe(200);
    expect((await get(r, '/auth/c')).status).toBe(200);
    // Was 2 sessions: the first closed after its 500.
    expect(r.agent.stats().sessions).toBe(1);
  });

  it("S6/R4: Negotiate fallen back to NTLM with the agent's password, answered 500 with Persistent-Auth: true, keeps its session too (review r66)", async () => {
    r = await rig(
      { mode: 'session', schemes: ['Negotiate', 'NTLM'] },
      {
        negotiate: {
          kerberos: {
            initializeClient: () =>
              Promise.reject(new MechanismUnavailableError('Negotiate', 'no GSS-API in this test')),
          },
        },
      },
    );
    expect((await get(r, '/status/500/a')).status).toBe(500);
    const [h] = r.agent.handshakes();
    expect([h?.scheme, h?.outcome, h?.failure]).toEqual(['Negotiate', 'failed', 'error']);
    expect((await get(r, '/auth/b')).status).toBe(200);
    // Was 2 sessions: closed as if a ticket held it.
    expect(r.agent.stats().sessions).toBe(1);
  });

  /**
   * A per-request session after a Negotiate handshake (no GSS-API here: NTLM inside Negotiate, which a
   * per-request server scopes to one request); the handshake's response.
   */
  async function perRequestNegotiate(): Promise<{ rig: Rig; first: Awaited<ReturnType<typeof get>> }> {
    const started = await rig(
      { mode: 'per-request', schemes: ['Negotiate', 'NTLM'] },
      {
        negotiate: {
          kerberos: {
            initializeClient: () =>
              Promise.reject(new MechanismUnavailableError('Negotiate', 'no GSS-API in this test')),
          },
        },
      },
    );
    r = started;
    const first = await get(started, '/auth/neg');
    expect(started.agent.handshakes().map((h) => [h.scheme, h.outcome])).toEqual([['Negotiate', 'per-request']]);
    return { rig: started, first };
  }

  it('C5: NTLM that succeeds on a session that was per-request makes it session-authenticated', async () => {
    const { rig: started, first } = await perRequestNegotiate();
    r = started;
    expect(first.status).toBe(200);
    // Now the origin offers only NTLM and authenticates sessions: the remembered Negotiate is declined
    // on its proactive first leg, NTLM is answered, and the per-request session becomes authenticated.
    r.server.options.schemes = ['NTLM'];
    r.server.options.mode = 'session';
    const nt = await get(r, '/auth/ntlm');
    expect([nt.status, nt.body.user]).toEqual([200, 'EXAMPLE\\alice']);
    expect(r.agent.handshakes().at(-1)).toMatchObject({ scheme: 'NTLM', outcome: 'session' });
    const after = await get(r, '/auth/after');
    expect([after.status, after.body.sessionId]).toEqual([200, nt.body.sessionId]);
    const last = r.server.exchanges.at(-1)!;
    expect([last.path, hasAuth(last.requestHeaders), last.outcome]).toEqual(['/auth/after', false, 'session']);
  });

  it('C5: an NTLM handshake answering a 401 on a per-request session blocks it: requests that come meanwhile queue behind it, one handshake in all', async () => {
    const { rig: started, first } = await perRequestNegotiate();
    r = started;
    // The origin now wants NTLM on sessions: the next request's proactive Negotiate is declined and
    // it answers NTLM on the per-request session; its NTLM legs are held while more requests come.
    r.server.options.schemes = ['NTLM'];
    r.server.options.mode = 'session';
    const isNtlm = (q: { headers: Readonly<Record<string, unknown>> }) =>
      String(q.headers.authorization ?? '').startsWith('NTLM ');
    r.server.options.faults = { delayMs: (q) => (isNtlm(q) ? 100 : 0) };
    r.server.reset();
    const ntlmStarted = new Promise<void>((resolve) => r!.server.on('request', (q) => isNtlm(q) && resolve()));
    const leader = get(r, '/auth/leader');
    await ntlmStarted;
    const results = await Promise.all([leader, many(r, 5)]).then(([l, m]) => [l, ...m]);
    expect(results.map((x) => [x.status, x.body.user, x.body.sessionId])).toEqual(
      Array(6).fill([200, 'EXAMPLE\\alice', first.body.sessionId]),
    );
    // One NTLM handshake (NEGOTIATE, AUTHENTICATE); without the block, each request ran its own.
    expect(r.server.exchanges.filter((e) => e.scheme === 'NTLM')).toHaveLength(2);
    expect(r.agent.handshakes().filter((h) => h.scheme === 'NTLM')).toHaveLength(1);
  });

  it('C1/C5: several proactive Negotiate requests on a per-request session declined at once: the first answers NTLM, the others queue behind it (no illegal transition)', async () => {
    const { rig: started, first } = await perRequestNegotiate();
    r = started;
    r.server.options.schemes = ['NTLM'];
    r.server.options.mode = 'session';
    r.server.reset();
    // All six go proactively with Negotiate and are declined together.
    const results = await many(r, 6);
    // Before: all but the first failed: "session: event handshake-start is not allowed in state handshaking".
    expect(results.map((x) => [x.status, x.body.user, x.body.sessionId])).toEqual(
      Array(6).fill([200, 'EXAMPLE\\alice', first.body.sessionId]),
    );
    expect(r.agent.handshakes().filter((h) => h.scheme === 'NTLM')).toHaveLength(1);
  });

  for (const scheme of ['Negotiate', 'NTLM'] as const) {
    it(`C6: a new session's proactive ${scheme} first leg answered 200 by a resource that needs no authentication decides nothing: the session's next requests authenticate it once`, async () => {
      r = await rig({ mode: 'session', schemes: [scheme] }, scheme === 'NTLM' ? { negotiate: false } : {});
      expect((await many(r, 3)).every((x) => x.status === 200)).toBe(true);
      r.server.endSessions();
      expect((await get(r, '/public/health')).status).toBe(200);
      r.server.reset();
      expect((await many(r, 10, '/auth/after')).every((x) => x.status === 200)).toBe(true);
      // One handshake of two legs on the new session, the rest bare and accepted: no 401 shown to
      // anyone, none per request (before: NTLM took the session as authenticated and met 10 bare
      // 401s; Negotiate took it as per-request and ran 10 handshakes).
      expect(r.server.exchanges.filter((e) => hasAuth(e.requestHeaders))).toHaveLength(2);
      expect(r.server.exchanges.filter((e) => e.status === 401 && !hasAuth(e.requestHeaders))).toEqual([]);
      expect(r.agent.handshakes().map((h) => h.outcome)).toEqual(['session', 'session']);
    });

    it(`C6: a burst of requests to a resource that needs no authentication, on such a new session (${scheme}): only the first carries a token, the rest go side by side`, async () => {
      r = await rig(
        { mode: 'session', schemes: [scheme], faults: { delayMs: (q) => (q.path.startsWith('/public/') ? 50 : 0) } },
        scheme === 'NTLM' ? { negotiate: false } : {},
      );
      expect((await many(r, 3)).every((x) => x.status === 200)).toBe(true);
      r.server.endSessions();
      r.server.reset();
      expect((await many(r, 8, '/public/p')).every((x) => x.status === 200)).toBe(true);
      // Before, each waiter led a proactive handshake of its own that blocked the rest: 8 tokens, in series.
      expect(r.server.exchanges.filter((e) => hasAuth(e.requestHeaders))).toHaveLength(1);
    });
  }

  it('C4: a per-request handshake whose final response says Persistent-Auth: true authenticates its session: the rest go bare', async () => {
    r = await rig({ mode: 'per-request' });
    expect((await get(r, '/auth/1')).status).toBe(200);
    expect((await get(r, '/auth/2')).status).toBe(200);
    // The server now authenticates sessions (a policy change): its next final 200 says so.
    r.server.options.mode = 'session';
    r.server.reset();
    for (let i = 0; i < 5; i++) expect((await get(r, `/auth/s${i}`)).status).toBe(200);
    // One handshake; before, all five authenticated themselves (per-request never became authenticated).
    const accepted = r.server.exchanges.filter((e) => e.outcome === 'accepted');
    expect(accepted.map((e) => e.responseHeaders['persistent-auth'])).toEqual(['true']);
    expect(r.server.exchanges.filter((e) => hasAuth(e.requestHeaders)).length).toBeLessThanOrEqual(2);
  });

  it('C6: without Persistent-Auth, Negotiate is per-request; the decision waits for the final response', async () => {
    r = await rig({ mode: 'none', schemes: ['Negotiate'] });
    const results = await many(r, 3);
    expect(results.every((x) => x.status === 200)).toBe(true);
    expect(r.agent.handshakes().every((h) => h.outcome === 'per-request')).toBe(true);
    // And a session-mode server: its 401 legs carry no Persistent-Auth, its final 200 does. A
    // decision drawn at a 401 would say per-request; the final response says session.
    const s = await rig({ mode: 'session', schemes: ['Negotiate'] });
    try {
      await many(s, 3);
      const legs = s.server.exchanges.filter((e) => e.status === 401);
      expect(legs.length).toBeGreaterThan(0);
      expect(legs.every((e) => e.responseHeaders['persistent-auth'] === undefined)).toBe(true);
      expect(s.agent.handshakes().map((h) => h.outcome)).toEqual(['session']);
    } finally {
      await s.close();
    }
  });

  it("C7: a failed handshake releases the queue: every caller gets the server's own 401, nothing hangs", async () => {
    r = await rig({ mode: 'session' }, { credentials: { username: 'EXAMPLE\\alice', password: 'wrong' } });
    const results = await many(r, 15);
    expect(results.map((x) => x.status)).toEqual(Array(15).fill(401));
    expect(r.agent.stats().failedHandshakes).toBeGreaterThanOrEqual(1);
    // The released requests were sent without credentials and did not each start a handshake.
    expect(r.agent.stats().handshakes).toBe(1);
  });

  it('C7: credentials proved here, then refused (the password was changed): the requests queued behind the failing handshake get the 401 without each trying the old password', async () => {
    r = await rig({ mode: 'session', schemes: ['NTLM'] });
    expect((await many(r, 3)).every((x) => x.status === 200)).toBe(true);
    expect(r.agent.handshakes().map((h) => h.outcome)).toEqual(['session']);
    // The password is changed on the server; the session ends, so the next burst authenticates anew,
    // proactively, and queues behind that one (held) handshake.
    r.server.options.users = { 'EXAMPLE\\alice': 'rotated' };
    r.server.options.faults = { delayMs: (q) => (q.headers.authorization ? 50 : 0) };
    r.server.endSessions();
    r.server.reset();
    const results = await many(r, 10, '/auth/after');
    expect(results.map((x) => x.status)).toEqual(Array(10).fill(401));
    // One handshake tried the old password, once; the waiters went bare (one 401 each).
    expect(r.server.exchanges.filter((e) => e.outcome === 'rejected')).toHaveLength(1);
    expect(r.server.exchanges.filter((e) => hasAuth(e.requestHeaders))).toHaveLength(2);
    expect(r.agent.handshakes().map((h) => h.outcome)).toEqual(['session', 'failed']);
  });

  it('C7: a new successful handshake on an authenticated session replaces the identity', async () => {
    // Credentials changed between two handshakes on one session: a caller's own mechanism reads its
    // object per handshake (the agent's own credentials are a copy, replaced by setCredentials, which
    // retires the session instead: test/set-credentials.test.ts).
    const credentials = { username: 'EXAMPLE\\alice', password: 'alicepw' };
    r = await rig(
      { mode: 'session', schemes: ['NTLM'] },
      { mechanisms: [ntlmMechanism(credentials)], negotiate: false },
    );
    const first = await get(r, '/auth/a');
    expect(first.body.user).toBe('EXAMPLE\\alice');
    credentials.username = 'EXAMPLE\\bob';
    credentials.password = 'bobpw';
    // The server forgets the session's authentication and re-challenges (T4): the agent re-runs the
    // handshake once, on the same session, now as bob.
    r.server.forgetAuthentication();
    const again = await get(r, '/auth/b');
    expect([again.status, again.body.user, again.body.sessionId]).toEqual([200, 'EXAMPLE\\bob', first.body.sessionId]);
    expect(r.agent.handshakes().map((h) => [h.sessionId, h.outcome])).toEqual([
      [r.agent.handshakes()[0]!.sessionId, 'session'],
      [r.agent.handshakes()[0]!.sessionId, 'session'],
    ]);
    // Later requests run as bob on that session, without a handshake.
    const later = await get(r, '/auth/c');
    expect([later.body.user, later.body.sessionId]).toEqual(['EXAMPLE\\bob', first.body.sessionId]);
    expect(r.agent.stats().handshakes).toBe(2);
  });

  it('S6: sessions authenticated as one account spelled two ways (NTLM inside Negotiate says EXAMPLE\\alice, Kerberos alice@EXAMPLE.TEST) do not retire each other; another account does', async () => {
    // HTTP/1.1 session mode: a burst opens several connections, each its own handshake. Every second
    // context reports the Kerberos spelling of the same account, as a Negotiate fallback would.
    const spellings: string[] = [];
    const base = ntlmMechanism({ username: 'EXAMPLE\\alice', password: 'alicepw' });
    const spelled = (other: string) => ({
      ...base,
      createContext: (...args: Parameters<typeof base.createContext>) => {
        const context = base.createContext(...args);
        const identity = spellings.length % 2 === 1 ? other : undefined;
        spellings.push(identity ?? 'EXAMPLE\\alice');
        return new Proxy(context, {
          get(target, key) {
            if (key === 'identity' && identity !== undefined) return identity;
            const value = Reflect.get(target, key, target);
            return typeof value === 'function' ? value.bind(target) : value;
          },
        });
      },
    });
    const handshakesFor = async (other: string) => {
      spellings.length = 0;
      r = await rig(
        { mode: 'session', schemes: ['NTLM'] },
        { mechanisms: [spelled(other)], negotiate: false, allowH2: false },
      );
      for (let round = 0; round < 3; round++)
        expect((await many(r, 6)).map((x) => x.status)).toEqual(Array(6).fill(200));
      const handshakes = r.agent.stats().handshakes;
      const sessions = r.agent.sessions().length;
      await r.close();
      r = undefined;
      return { handshakes, sessions };
    };
    // The same account: one handshake per connection, none retired (before: each new spelling's
    // handshake retired the other's sessions, which then authenticated again).
    const same = await handshakesFor('ALICE@EXAMPLE.TEST');
    expect(same.handshakes).toBe(same.sessions);
    // Another account (a kinit bob) does retire the sessions authenticated as alice (S6).
    const other = await handshakesFor('bob@EXAMPLE.TEST');
    expect(other.handshakes).toBeGreaterThan(other.sessions);
  });

  it('S6: an authenticated HTTP/2 session that never handshakes again retires once its mechanism says the credentials behind its identity are gone (a kdestroy; kinit bob): the next request authenticates anew', async () => {
    // NTLM standing in for ambient Kerberos: `held` is what the ccache would answer.
    let held: boolean | undefined = true;
    const asked: string[] = [];
    const mechanism = {
      ...ntlmMechanism({ username: 'EXAMPLE\\alice', password: 'alicepw' }),
      holdsCredentials: (identity: string) => {
        asked.push(identity);
        return held;
      },
    };
    r = await rig({ mode: 'session', schemes: ['NTLM'] }, { mechanisms: [mechanism], negotiate: false });
    const first = await get(r, '/auth/a');
    expect((await many(r, 5)).map((x) => x.status)).toEqual(Array(5).fill(200));
    // Credentials still there, or the mechanism cannot tell: the session serves on, no handshake.
    for (const answer of [true, undefined]) {
      held = answer;
      await sleep(TICKET_RECHECK_MS + 50);
      expect((await get(r, '/auth/b')).body.sessionId).toBe(first.body.sessionId);
    }
    expect(r.agent.stats().handshakes).toBe(1);
    expect(asked.length).toBeGreaterThan(0);
    expect(new Set(asked)).toEqual(new Set(['EXAMPLE\\alice']));
    // Gone: the next request does not ride alice's session (was: it did, for as long as the server
    // kept the connection open), it authenticates on a new one.
    held = false;
    await sleep(TICKET_RECHECK_MS + 50);
    const after = await get(r, '/auth/c');
    expect(after.status).toBe(200);
    expect(after.body.sessionId).not.toBe(first.body.sessionId);
    expect(r.agent.stats().handshakes).toBe(2);
    // Asked once a second at most, whatever the requests: not once per request.
    const asks = asked.length;
    const since = Date.now();
    held = true;
    expect((await many(r, 20)).map((x) => x.status)).toEqual(Array(20).fill(200));
    expect(asked.length - asks).toBeLessThanOrEqual(1 + Math.floor((Date.now() - since) / TICKET_RECHECK_MS));
  });

  it('S6/R4: a mechanism\'s holdsCredentials that throws is "cannot tell": no request fails for it, the session serves on', async () => {
    let asked = 0;
    const mechanism = {
      ...ntlmMechanism({ username: 'EXAMPLE\\alice', password: 'alicepw' }),
      holdsCredentials: (): boolean | undefined => {
        asked += 1;
        throw new TypeError('ccache backend went away');
      },
    };
    r = await rig({ mode: 'session', schemes: ['NTLM'] }, { mechanisms: [mechanism], negotiate: false });
    const first = await get(r, '/auth/a');
    await sleep(TICKET_RECHECK_MS + 50);
    // Was: the request that asked failed with the mechanism's raw TypeError.
    const after = await Promise.all([get(r, '/auth/b'), get(r, '/auth/c')]);
    expect(after.map((x) => [x.status, x.body.sessionId])).toEqual([
      [200, first.body.sessionId],
      [200, first.body.sessionId],
    ]);
    expect(asked).toBeGreaterThan(0);
  });

  describe('S6: a handshake that carried the old identity and ends after the new one was proved', () => {
    /** HTTP/1.1 session mode; an AUTHENTICATE to `/auth/slow` is answered 1.5 s late. */
    const slowRig = async (agent: Partial<MultilegAgentOptions>) => {
      let held = false;
      r = await rig(
        {
          mode: 'session',
          schemes: ['NTLM'],
          faults: {
            delayMs: (info) => {
              const value = String(info.headers.authorization ?? '');
              if (!info.path.startsWith('/auth/slow') || !value.startsWith('NTLM ')) return 0;
              if (Buffer.from(value.slice(5), 'base64').readUInt32LE(8) !== 3) return 0;
              held = true;
              return 1500;
            },
          },
        },
        { negotiate: false, allowH2: false, ...agent },
      );
      const url = (path: string) => `${r!.server.origin}${path}`;
      expect(await getUser(url('/auth/warm'), r.agent, true)).toEqual({ status: 200, user: 'EXAMPLE\\alice' });
      // The first connection busy; /auth/slow opens a second and runs alice's handshake there, held.
      const busy = getUser(url('/auth/hold?delay=2500'), r.agent, true);
      const slow = getUser(url('/auth/slow'), r.agent, true);
      await until(() => held);
      return { url, busy, slow };
    };

    it("S6: the ambient identity switched mid-handshake (a mechanism reading live credentials, as a ccache is read): once bob is proved, alice's late success does not take the agent back", async () => {
      const who = { username: 'EXAMPLE\\alice', password: 'alicepw' };
      const { url, busy, slow } = await slowRig({ mechanisms: [ntlmMechanism(who)] });
      Object.assign(who, { username: 'EXAMPLE\\bob', password: 'bobpw' });
      expect(await getUser(url('/auth/bob'), r!.agent, true)).toEqual({ status: 200, user: 'EXAMPLE\\bob' });
      // Its own request was answered as alice: it was on the wire before bob was proved.
      expect(await slow).toEqual({ status: 200, user: 'EXAMPLE\\alice' });
      await busy;
      // Was: alice's late success retired bob's session and kept its own, so every request after ran as alice.
      expect(await getUser(url('/auth/after'), r!.agent, true)).toEqual({ status: 200, user: 'EXAMPLE\\bob' });
    });

    it("S6: after setCredentials, a retired session's late success as alice retires nothing: bob's session serves on", async () => {
      const { url, busy, slow } = await slowRig({});
      r!.agent.setCredentials({ username: 'EXAMPLE\\bob', password: 'bobpw' });
      expect(await getUser(url('/auth/bob'), r!.agent, true)).toEqual({ status: 200, user: 'EXAMPLE\\bob' });
      await slow;
      await busy;
      const handshakes = r!.agent.stats().handshakes;
      // Was: bob's session retired by it, and one more handshake for the next request.
      expect(await getUser(url('/auth/after'), r!.agent, true)).toEqual({ status: 200, user: 'EXAMPLE\\bob' });
      expect(r!.agent.stats().handshakes).toBe(handshakes);
    });
  });

  it('C8: a session that ends mid-handshake (GOAWAY) moves its queue to a new session; nothing lost or sent twice', async () => {
    r = await rig({ mode: 'session', faults: { goawayAfterChallenge: true } });
    // Cut the first handshake only.
    r.server.on('exchange', (e) => {
      if (e.authIdSent) r!.server.options.faults.goawayAfterChallenge = false;
    });
    const results = await many(r, 20);
    expect(results.every((x) => x.status === 200)).toBe(true);
    expect(r.agent.handshakes().map((h) => h.outcome)).toEqual(['session']);
    const paths = r.server.exchanges.filter((e) => e.status === 200).map((e) => e.path);
    expect(new Set(paths).size).toBe(paths.length); // each request served once
    expect(paths).toHaveLength(20);
    // The Auth-ID of the dead session was never sent on the new one.
    const ids = r.server.exchanges.filter((e) => e.authIdSent).map((e) => [e.authIdSent, e.sessionId]);
    for (const e of r.server.exchanges) {
      const id = e.requestHeaders['auth-id'];
      if (id !== undefined) expect(ids.find(([a]) => a === id)?.[1]).toBe(e.sessionId);
    }
    expect(new Set(r.server.exchanges.map((e) => e.sessionId)).size).toBeGreaterThan(1);
  });

  it('C8: a session closed after authentication: later requests authenticate on the new session', async () => {
    r = await rig({ mode: 'session', faults: { destroySessionAfterAuth: true } });
    expect((await get(r, '/auth/1')).status).toBe(200);
    r.server.options.faults.destroySessionAfterAuth = false;
    const results = await many(r, 5);
    expect(results.every((x) => x.status === 200)).toBe(true);
    expect(r.agent.stats().handshakes).toBe(2);
    const hs = r.agent.handshakes();
    expect(hs[0]!.sessionId).not.toBe(hs[1]!.sessionId);
  });

  it('C9: a 421 on an authenticated session is retried on a fresh session', async () => {
    r = await rig({ mode: 'session' });
    const first = await get(r, '/auth/a');
    expect(first.status).toBe(200);
    // The agent never coalesces, so provoke a 421: the server disowns its own name once.
    const own = r.server.options.authorities;
    r.server.options.authorities = ['elsewhere:1'];
    r.server.options.faults.misdirectedForOtherHosts = true;
    r.server.on('exchange', (e) => {
      if (e.status === 421) r!.server.options.authorities = own;
    });
    const res = await get(r, '/auth/b');
    expect(res.status).toBe(200);
    expect(res.body.sessionId).not.toBe(first.body.sessionId);
    expect(r.server.exchanges.filter((e) => e.status === 421)).toHaveLength(1);
    expect(r.agent.stats().handshakes).toBe(2);
  });

  it('C9: each origin gets its own sessions; an authenticated session never carries another origin', async () => {
    r = await rig({ mode: 'session' });
    const other = r.server.origin.replace('localhost', '127.0.0.1');
    await r.agent.destroy();
    r.agent = new MultilegAgent({
      credentials: ALICE,
      connect: { ca: r.server.ca },
      trustedOrigins: [r.server.origin, other],
    });
    await get(r, '/auth/a');
    const res = await fetch(`${other}/auth/b`, { dispatcher: r.agent });
    expect(res.status).toBe(200);
    const byAuthority = new Map<string, Set<string>>();
    for (const e of r.server.exchanges) {
      const set = byAuthority.get(e.authority) ?? new Set();
      set.add(e.sessionId);
      byAuthority.set(e.authority, set);
    }
    const [a, b] = [...byAuthority.values()];
    expect([...a!].some((s) => b!.has(s))).toBe(false);
  });

  it('C10: every leg carries the same method, URL and body (fetch hands us a one-shot stream)', async () => {
    r = await rig({ mode: 'session' });
    const body = 'x'.repeat(100_000);
    const res = await get(r, '/auth/upload?q=1', { method: 'PUT', body });
    expect(res.status).toBe(200);
    const legs = r.server.exchanges;
    expect(legs.map((e) => [e.method, e.path, e.bodyLength])).toEqual(
      Array(3).fill(['PUT', '/auth/upload?q=1', 100_000]),
    );
    expect(new Set(legs.map((e) => e.bodySha256)).size).toBe(1);
  });

  it('C10: any typed array is a body as undici takes it (a Uint16Array), the same bytes on every leg', async () => {
    r = await rig({ mode: 'session' });
    const body = new Uint16Array([0x6261, 0x6463, 0x6665]);
    // Before: TypeError "unsupported request body chunk type number" (read as an iterable of numbers).
    // (undici's types list Uint8Array; its code takes any ArrayBuffer view.)
    const res = await request(`${r.server.origin}/auth/typed`, {
      dispatcher: r.agent,
      method: 'POST',
      body: body as unknown as Uint8Array,
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(r.server.exchanges.map((e) => e.bodyLength)).toEqual([6, 6, 6]);
    expect(new Set(r.server.exchanges.map((e) => e.bodySha256)).size).toBe(1);
  });

  it('C10: a one-shot body over the buffer limit that must be replayed fails with a typed error', async () => {
    r = await rig({ mode: 'session' }, { limits: { maxReplayBodyBytes: 1024 } });
    const err = await request(`${r.server.origin}/auth/big`, {
      dispatcher: r.agent,
      method: 'POST',
      body: Readable.from([Buffer.alloc(4096, 1)]),
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BodyNotReplayableError);
    expect((err as BodyNotReplayableError).code).toBe('MULTILEG_BODY_NOT_REPLAYABLE');
  });

  it('C10: a one-shot body over the limit is fine when no replay is needed', async () => {
    r = await rig({ mode: 'session' }, { limits: { maxReplayBodyBytes: 1024 } });
    await get(r, '/auth/warmup');
    const res = await request(`${r.server.origin}/auth/big`, {
      dispatcher: r.agent,
      method: 'POST',
      body: Readable.from([Buffer.alloc(4096, 1)]),
    });
    expect(res.statusCode).toBe(200);
    expect(((await res.body.json()) as { bodyLength: number }).bodyLength).toBe(4096);
  });

  it('C11: maxLegs bounds a handshake', async () => {
    r = await rig({ mode: 'session' }, { limits: { maxLegs: 1 } });
    const err = await get(r, '/auth/x').catch((e: { cause?: unknown }) => e.cause);
    expect(err).toBeInstanceOf(LegLimitError);
    expect((err as LegLimitError).message).toContain('limits.maxLegs');
  });

  it('C11: maxLegs 1 stops NTLM at its own second leg: the message says so, not that the server keeps challenging (check credentials), which the fetch-errors example printed', async () => {
    r = await rig({ mode: 'session', schemes: ['NTLM'] }, { limits: { maxLegs: 1 } });
    const err = await get(r, '/auth/x').catch((e: { cause?: unknown }) => e.cause);
    expect(err).toBeInstanceOf(LegLimitError);
    expect((err as LegLimitError).message).toBe(
      'NTLM handshake exceeded limits.maxLegs (1): the scheme takes more legs than that (NTLM, alone or inside Negotiate, takes 2); raise limits.maxLegs (default 6)',
    );
  });

  it('C11: maxQueue bounds the wait for a new session', async () => {
    r = await rig(
      { mode: 'session', faults: { delayMs: (q) => (q.headers.authorization ? 100 : 0) } },
      { limits: { maxQueue: 2 } },
    );
    const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => get(r!, `/auth/${i}`)));
    const errors = results.filter((x) => x.status === 'rejected').map((x) => (x as PromiseRejectedResult).reason.cause);
    expect(errors.length).toBeGreaterThan(0);
    expect(errors.every((e) => e instanceof QueueFullError)).toBe(true);
    expect(results.filter((x) => x.status === 'fulfilled').length).toBeGreaterThanOrEqual(3);
    // The bound met is the pool's, for the new session's first response: the session's own queue
    // would have refused the same requests had the pool let them all through.
    expect(errors.map((e) => (e as QueueFullError).message)).toEqual(
      errors.map(() => expect.stringContaining('while waiting for a connection to')),
    );
  });

  it('C11: maxQueue bounds the queue behind a handshake on its session, not only the wait for a new session', async () => {
    r = await rig(
      { mode: 'session', faults: { delayMs: (q) => (q.headers.authorization ? 100 : 0) } },
      { limits: { maxQueue: 2 } },
    );
    // Connected first (a resource that needs no authentication): the burst then meets the
    // session's handshake queue (C1), not the pool's wait for a new session's first response,
    // which the test above fills.
    expect((await get(r, '/public/health')).status).toBe(200);
    const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => get(r!, `/auth/${i}`)));
    const errors = results.filter((x) => x.status === 'rejected').map((x) => (x as PromiseRejectedResult).reason.cause);
    expect(errors.every((e) => e instanceof QueueFullError)).toBe(true);
    expect(errors.map((e) => (e as QueueFullError).message)).toEqual(
      Array(5).fill(expect.stringContaining('limits.maxQueue = 2) while waiting for a handshake on its session')),
    );
    expect(results.filter((x) => x.status === 'fulfilled').map((x) => x.value.status)).toEqual([200, 200, 200]);
  });

  it('C11: queueTimeout bounds the wait in the queue', async () => {
    r = await rig(
      { mode: 'session', faults: { delayMs: (q) => (q.headers.authorization ? 400 : 0) } },
      { limits: { queueTimeout: 50 } },
    );
    const results = await Promise.allSettled(Array.from({ length: 4 }, (_, i) => get(r!, `/auth/${i}`)));
    const errors = results.filter((x) => x.status === 'rejected').map((x) => (x as PromiseRejectedResult).reason.cause);
    expect(errors.length).toBe(3);
    expect(errors.every((e) => e instanceof QueueTimeoutError)).toBe(true);
  });

  it('C11: handshakeTimeout bounds the handshake', async () => {
    r = await rig(
      { mode: 'session', faults: { delayMs: (q) => (q.headers.authorization ? 2_000 : 0) } },
      { limits: { handshakeTimeout: 100 } },
    );
    const err = await get(r, '/auth/x').catch((e: { cause?: unknown }) => e.cause);
    expect(err).toBeInstanceOf(HandshakeTimeoutError);
    expect((err as HandshakeTimeoutError).code).toBe('MULTILEG_HANDSHAKE_TIMEOUT');
  });
});
