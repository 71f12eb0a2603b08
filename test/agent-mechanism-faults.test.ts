/**
 * A mechanism that cannot run, chokes on the server's token or rejects the server's final token,
 * against the reference server: the caller gets the next scheme's result or a typed error, never
 * the mechanism's own exception and never a response whose proof failed (T2, S3, M2).
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { fetch, type Response } from 'undici';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  InvalidTokenError,
  type Mechanism,
  MechanismError,
  MechanismUnavailableError,
  MultilegAgent,
  type MultilegError,
  ntlmMechanism,
  UNANSWERED_CHANNEL,
  type UnansweredEvent,
} from '../src/index.ts';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { ALICE, hasAuth, patchedNtlm, unavailableScheme } from './helpers.ts';

let server: ReferenceServer | undefined;
let agent: MultilegAgent | undefined;
afterEach(async () => {
  await agent?.destroy().catch(() => {});
  await server?.close();
  agent = server = undefined;
});

const ntlm = ntlmMechanism(ALICE);

async function setup(mechanism: Mechanism, schemes = ['NTLM', 'Basic']) {
  server = await startReferenceServer({ mode: 'session', schemes });
  agent = new MultilegAgent({
    credentials: ALICE,
    connect: { ca: server.ca },
    trustedOrigins: [server.origin],
    negotiate: false,
    mechanisms: [mechanism],
    // A request stuck behind a handshake that never ends fails fast instead of passing late.
    limits: { queueTimeout: 2000 },
  });
  return { s: server, a: agent };
}

const outcome = (p: Promise<Response>) =>
  p.then(
    async (res) => ({ status: res.status, body: (await res.json()) as { user: string | null } }),
    (e: Error) => ({ error: (e.cause ?? e) as MultilegError }),
  );

describe('mechanism faults reach the caller as the next scheme or a typed error', () => {
  it('T2: a scheme whose context cannot even be created here is skipped for the next offered one', async () => {
    const unavailable = unavailableScheme(
      'NTLM',
      () => new MechanismUnavailableError('NTLM', 'not on this test machine'),
    );
    const { s, a } = await setup(unavailable);
    const r = await outcome(fetch(`${s.origin}/auth/x`, { dispatcher: a }));
    expect(r).toEqual({ status: 200, body: expect.objectContaining({ user: 'EXAMPLE\\alice' }) });
    const sent = s.exchanges
      .filter((e) => hasAuth(e.requestHeaders))
      .map((e) => String(e.requestHeaders.authorization));
    expect(sent).toHaveLength(1);
    expect(sent[0]).toMatch(/^Basic /);
  });

  it('S3: a mechanism that throws on the server’s token fails the request with InvalidTokenError, not its own exception', async () => {
    const choking = patchedNtlm({
      step: (challenge) => {
        if (challenge?.token68 !== undefined) throw new TypeError('mechanism internals: cannot read property');
      },
    });
    const { s, a } = await setup(choking);
    const r = await outcome(fetch(`${s.origin}/auth/x`, { dispatcher: a }));
    expect(r).toMatchObject({ error: { code: 'MULTILEG_INVALID_TOKEN' } });
    const err = (r as { error: Error }).error;
    expect(err).toBeInstanceOf(InvalidTokenError);
    expect(err.message).toContain('NTLM challenge');
    expect(err.message).not.toContain('mechanism internals');
    // The NEGOTIATE leg went out; nothing after the challenge did.
    expect(s.exchanges.filter((e) => hasAuth(e.requestHeaders))).toHaveLength(1);
  });

  it('S3: a mechanism in plain JavaScript whose step throws at once (no promise) fails the request as one that rejects: InvalidTokenError', async () => {
    const ntlmOnce = ntlmMechanism(ALICE);
    const throwing: Mechanism = {
      ...ntlmOnce,
      createContext(leg) {
        const real = ntlmOnce.createContext(leg);
        return {
          get complete() {
            return real.complete;
          },
          step: (challenge, l) => {
            if (challenge?.token68 !== undefined) throw new TypeError('mechanism internals: cannot read property');
            return real.step(challenge, l);
          },
          finish: (challenge, l) => real.finish(challenge, l),
        };
      },
    };
    const { s, a } = await setup(throwing);
    const r = await outcome(fetch(`${s.origin}/auth/x`, { dispatcher: a }));
    const err = (r as { error: Error }).error;
    expect(err).toBeInstanceOf(InvalidTokenError);
    expect(err.message).not.toContain('mechanism internals');
    expect(s.exchanges.filter((e) => hasAuth(e.requestHeaders))).toHaveLength(1);
  });

  it('M2: a final token whose verification throws a plain exception withholds the 200 as InvalidTokenError (final token)', async () => {
    const distrusting = patchedNtlm({
      finish: async () => {
        throw new RangeError('verifier blew up');
      },
    });
    const { s, a } = await setup(distrusting);
    const r = await outcome(fetch(`${s.origin}/auth/x`, { dispatcher: a }));
    const err = (r as { error: Error }).error;
    expect(err).toBeInstanceOf(InvalidTokenError);
    expect(err.message).toContain('final token');
    // The server did answer 200: the agent withheld it.
    expect(s.exchanges.at(-1)).toMatchObject({ status: 200, user: 'EXAMPLE\\alice' });
    expect(a.handshakes().map((h) => h.outcome)).toEqual(['failed']);
  });

  it('a mechanism that cannot create a context for its own reason: that typed error reaches the caller', async () => {
    const misconfigured = unavailableScheme('NTLM', () => new MechanismError('NTLM', 'test: misconfigured'));
    const { s, a } = await setup(misconfigured);
    const r = await outcome(fetch(`${s.origin}/auth/x`, { dispatcher: a }));
    expect(r).toMatchObject({ error: { code: 'MULTILEG_MECHANISM' } });
    expect((r as { error: Error }).error.message).toContain('test: misconfigured');
    expect(s.exchanges.filter((e) => hasAuth(e.requestHeaders))).toEqual([]);
  });

  it('T3: a certificate selector that declines when Transport is all the server offers: the caller gets the 401', async () => {
    server = await startReferenceServer({ mode: 'session', schemes: [], clientCertificate: 'offer' });
    let asked = 0;
    agent = new MultilegAgent({
      connect: { ca: server.ca },
      clientCertificate: () => {
        asked += 1;
        return undefined;
      },
    });
    const res = await fetch(`${server.origin}/auth/x`, { dispatcher: agent });
    expect(res.status).toBe(401);
    await res.arrayBuffer();
    expect(asked).toBe(1);
    // Sent once more as it was (nothing to answer with), and that 401 is the caller's.
    expect(server.exchanges.map((e) => [e.status, hasAuth(e.requestHeaders)])).toEqual([
      [401, false],
      [401, false],
    ]);
  });
});

describe('a remembered scheme on a new session (proactive first leg)', () => {
  /** NTLM that sends NEGOTIATE on the first leg once the origin is known to want it (as Negotiate does). */
  let broken = false;
  const proactive: Mechanism = {
    ...ntlm,
    proactive: true,
    createContext(leg) {
      if (broken) throw new MechanismUnavailableError('NTLM', 'test: gone meanwhile');
      return ntlm.createContext(leg);
    },
  };
  const authOf = (s: ReferenceServer, path: string) =>
    s.exchanges
      .filter((e) => e.path === path)
      .map((e) => [e.status, String(e.requestHeaders.authorization ?? 'none').split(' ')[0]]);

  async function authenticatedThenNewSession() {
    broken = false;
    const { s, a } = await setup(proactive);
    const first = await outcome(fetch(`${s.origin}/auth/first`, { dispatcher: a }));
    expect(first).toMatchObject({ status: 200 });
    expect(a.handshakes().map((h) => h.outcome)).toEqual(['session']);
    // The session ends; the agent remembers NTLM (session-based) for the origin.
    s.endSessions();
    await new Promise((r) => setTimeout(r, 50));
    return { s, a };
  }

  it('C7: the server no longer offers the remembered scheme: the leader steps back and answers what is offered', async () => {
    const { s, a } = await authenticatedThenNewSession();
    s.options.schemes = ['Basic'];
    const r = await outcome(fetch(`${s.origin}/auth/next`, { dispatcher: a }));
    expect(r).toEqual({ status: 200, body: expect.objectContaining({ user: 'EXAMPLE\\alice' }) });
    expect(authOf(s, '/auth/next')).toEqual([
      [401, 'NTLM'],
      [200, 'Basic'],
    ]);
    // The session did not stay "handshaking" behind the step back: the next request goes at once.
    const again = await outcome(fetch(`${s.origin}/auth/again`, { dispatcher: a }));
    expect(again).toEqual({ status: 200, body: expect.objectContaining({ user: 'EXAMPLE\\alice' }) });
    expect(authOf(s, '/auth/again')).toEqual([[200, 'Basic']]);
  });

  it('R4: the remembered scheme cannot run here any more: the request goes bare and answers the next offered scheme', async () => {
    const { s, a } = await authenticatedThenNewSession();
    broken = true;
    const r = await outcome(fetch(`${s.origin}/auth/next`, { dispatcher: a }));
    expect(r).toEqual({ status: 200, body: expect.objectContaining({ user: 'EXAMPLE\\alice' }) });
    expect(authOf(s, '/auth/next')).toEqual([
      [401, 'none'],
      [200, 'Basic'],
    ]);
  });
});

describe('deliver401: a 401 that nothing here can answer is the response, the request sent once', () => {
  /** A server that offers only NTLM, and an agent whose NTLM cannot run here. */
  async function deliverSetup(limits: { maxChallengeBodyBytes?: number } = {}, deliver401 = true) {
    server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    agent = new MultilegAgent({
      credentials: ALICE,
      connect: { ca: server.ca },
      trustedOrigins: [server.origin],
      negotiate: false,
      mechanisms: [unavailableScheme('NTLM')],
      ...(deliver401 ? { deliver401 } : {}),
      limits,
    });
    return { s: server, a: agent };
  }

  const events: UnansweredEvent[] = [];
  const onEvent = (e: unknown) => events.push(e as UnansweredEvent);
  beforeEach(() => {
    events.length = 0;
    subscribe(UNANSWERED_CHANNEL, onEvent);
  });
  afterEach(() => unsubscribe(UNANSWERED_CHANNEL, onEvent));

  it('T2/R4: the server’s 401 comes with its body, a POST body goes once, and multileg:unanswered says why (the typed error’s code and message)', async () => {
    const { s, a } = await deliverSetup();
    const res = await fetch(`${s.origin}/auth/post`, { dispatcher: a, method: 'POST', body: 'payload' });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toMatch(/^NTLM/);
    expect(await res.json()).toMatchObject({ user: null, method: 'POST', path: '/auth/post', bodyLength: 7 });
    expect(s.exchanges.map((e) => [e.path, e.status, e.bodyLength, hasAuth(e.requestHeaders)])).toEqual([
      ['/auth/post', 401, 7, false],
    ]);
    expect(events).toEqual([
      expect.objectContaining({
        origin: s.origin,
        path: '/auth/post',
        schemes: ['NTLM'],
        unusable: [
          { scheme: 'NTLM', code: 'MULTILEG_MECHANISM_UNAVAILABLE', message: expect.stringContaining('NTLM') },
        ],
      }),
    ]);
    // The origin now knows NTLM cannot run (R4): the next 401 is delivered as it comes, told why too.
    const again = await fetch(`${s.origin}/auth/again`, { dispatcher: a });
    expect(again.status).toBe(401);
    expect(await again.json()).toMatchObject({ path: '/auth/again', error: 'unauthenticated' });
    expect(s.exchanges.map((e) => e.path)).toEqual(['/auth/post', '/auth/again']);
    expect(events.map((e) => [e.path, e.unusable.map((u) => u.code)])).toEqual([
      ['/auth/post', ['MULTILEG_MECHANISM_UNAVAILABLE']],
      ['/auth/again', ['MULTILEG_MECHANISM_UNAVAILABLE']],
    ]);
  });

  it('T2: a 401 body cut at limits.maxChallengeBodyBytes is not the server’s response: the typed error stands', async () => {
    const { s, a } = await deliverSetup({ maxChallengeBodyBytes: 8 });
    const r = await outcome(fetch(`${s.origin}/auth/x`, { dispatcher: a }));
    expect(r).toMatchObject({ error: { code: 'MULTILEG_MECHANISM_UNAVAILABLE' } });
    expect(events).toEqual([]);
  });

  it('T2: without deliver401 the same 401 is the typed error that names why (the default)', async () => {
    const { s, a } = await deliverSetup({}, false);
    const r = await outcome(fetch(`${s.origin}/auth/x`, { dispatcher: a }));
    expect(r).toMatchObject({ error: { code: 'MULTILEG_MECHANISM_UNAVAILABLE' } });
    expect(s.exchanges).toHaveLength(1);
  });
});
