/**
 * A gateway passing its clients' own NTLM through one agent with no credentials (trial u11): each
 * caller's AUTHENTICATE goes on the connection (HTTP/1.1) or session and Auth-ID (HTTP/2) whose
 * CHALLENGE it answers, or nowhere (src/session/ntlm-pairing.ts; S6, R4, C3).
 */
import { createSecureServer, type Http2Session } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import {
  type Challenge,
  MultilegAgent,
  type MultilegAgentOptions,
  NtlmUnpairedError,
  ntlmMechanism,
  parseChallenges,
} from '../src/index.ts';
import { NtlmAcceptor } from '../src/mechanisms/ntlm/acceptor.ts';
import { AvId, decodeChallenge, encodeChallenge } from '../src/mechanisms/ntlm/messages.ts';
import { type AcceptorStep, type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { MAX_REASKS } from '../src/session/exchange.ts';
import { ABANDONED_CHALLENGE_GRACE_MS } from '../src/session/ntlm-pairing.ts';
import { until } from './helpers.ts';

const servers: ReferenceServer[] = [];
const agents: MultilegAgent[] = [];
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.destroy().catch(() => {})));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function server(opts: Parameters<typeof startReferenceServer>[0]): Promise<ReferenceServer> {
  const s = await startReferenceServer({ schemes: ['NTLM'], ...opts });
  servers.push(s);
  return s;
}
/** The gateway's pass-through agent: no credentials of its own, no Kerberos. */
function passThrough(s: ReferenceServer, opts: Partial<MultilegAgentOptions> = {}): MultilegAgent {
  const a = new MultilegAgent({ connect: { ca: s.ca }, negotiate: false, ...opts });
  agents.push(a);
  return a;
}

/** One browser-like client's NTLM handshake, leg by leg through the agent, its legs driven by the test. */
function client(s: ReferenceServer, a: MultilegAgent, name: 'alice' | 'bob', path: string, relayAuthId = true) {
  const url = new URL(s.origin);
  const leg = { origin: s.origin, hostname: url.hostname, port: Number(url.port), method: 'GET', path, proxy: false };
  const ctx = ntlmMechanism({ username: `EXAMPLE\\${name}`, password: `${name}pw` }).createContext(leg);
  let challenge: Challenge | undefined;
  let authId: string | undefined;
  let authenticate: string | undefined;
  return {
    /** The NEGOTIATE; its 401's CHALLENGE kept. */
    async negotiate(): Promise<number> {
      const r = await request(`${s.origin}${path}`, {
        dispatcher: a,
        headers: { authorization: (await ctx.step(undefined, leg))! },
      });
      await r.body.text();
      challenge = parseChallenges(r.headers['www-authenticate'] as string).find((c) => c.token68 !== undefined);
      authId = r.headers['auth-id'] as string | undefined;
      return r.statusCode;
    },
    /** The CHALLENGE's Auth-ID, as the server gave it. */
    get authId(): string | undefined {
      return authId;
    },
    /** The AUTHENTICATE answering it (through `via`, relaying `relay` if given): who the server says ran it, or the error. */
    async authenticate(via = a, relay?: string): Promise<string> {
      authenticate ??= (await ctx.step(challenge, leg))!;
      const headers: Record<string, string> = { authorization: authenticate };
      if (relay !== undefined) headers['auth-id'] = relay;
      else if (relayAuthId && authId !== undefined) headers['auth-id'] = authId;
      try {
        const r = await request(`${s.origin}${path}`, { dispatcher: via, headers });
        const body = (await r.body.json()) as { user: string | null; error?: string };
        return `${r.statusCode} ${body.user ?? body.error}`;
      } catch (err) {
        return err instanceof NtlmUnpairedError ? `${err.code} ${err.reason}` : String(err);
      }
    },
  };
}

/**
 * 8 callers × 10 logins, alice and bob mixed. Each round every caller sends its NEGOTIATE, and only
 * once all have their CHALLENGE do the AUTHENTICATEs go, last caller first: each lands on a
 * connection freed by another's NEGOTIATE unless the agent pairs them.
 */
async function burst(s: ReferenceServer, a: MultilegAgent, relayAuthId = true): Promise<Record<string, number>> {
  const tally: Record<string, number> = {};
  for (let round = 0; round < 10; round++) {
    const clients = Array.from({ length: 8 }, (_, i) => {
      const name = i % 2 === 0 ? 'alice' : 'bob';
      return { name, c: client(s, a, name, `/auth/${name}-${i}-${round}`, relayAuthId) };
    });
    const firsts = await Promise.all(clients.map(({ c }) => c.negotiate()));
    expect(firsts).toEqual(Array(8).fill(401));
    const answers = await Promise.all(
      clients.reverse().map(async ({ name, c }) => {
        const got = await c.authenticate();
        return got === `200 EXAMPLE\\${name}` ? '200 as itself' : got;
      }),
    );
    for (const k of answers) tally[k] = (tally[k] ?? 0) + 1;
  }
  return tally;
}

const mismatches = (s: ReferenceServer) => s.exchanges.filter((e) => e.reason?.includes('NTProofStr')).length;

describe('S6/R4: a gateway passing callers\u2019 NTLM through one agent pairs each AUTHENTICATE with its CHALLENGE', () => {
  it('S6/R4: a concurrent pass-through burst over HTTP/1.1 (IIS mode, allowH2: false): every login 200 as its own user, no NTProofStr mismatch at the server', async () => {
    const s = await server({ mode: 'iis' });
    const a = passThrough(s, { allowH2: false });
    // Before: most logins 401, "wrong password (NTProofStr mismatch)" at the server (u11: 58 of 80).
    expect(await burst(s, a, false)).toEqual({ '200 as itself': 80 });
    expect(mismatches(s)).toBe(0);
  });

  it('S6/R4: the same burst with HTTP/2 allowed against IIS (the handshakes move to HTTP/1.1), the gateway relaying Auth-ID: every login 200 as itself', async () => {
    const s = await server({ mode: 'iis' });
    const a = passThrough(s);
    expect(await burst(s, a)).toEqual({ '200 as itself': 80 });
    expect(mismatches(s)).toBe(0);
  });

  it('S6/C3: the same burst over HTTP/2 (session mode), relaying Auth-ID or not: every login 200 as itself, on the session of its CHALLENGE (one caller\u2019s handshake per session), within the server\u2019s context cap', async () => {
    for (const relay of [true, false]) {
      const s = await server({ mode: 'session' });
      const a = passThrough(s);
      // Before: unknown-auth-id (another caller's 200 retired the session between the legs), and
      // past 8 NEGOTIATEs on one session the server's context-limit.
      expect([relay, await burst(s, a, relay)]).toEqual([relay, { '200 as itself': 80 }]);
      expect(s.exchanges.filter((e) => e.reason !== undefined || e.refused !== undefined)).toEqual([]);
      // Every AUTHENTICATE went on the session its NEGOTIATE did.
      const bySession = new Map<string, string>();
      for (const e of s.exchanges) {
        const key = e.path;
        if (e.status === 401) bySession.set(key, e.sessionId);
        else expect([key, e.sessionId]).toEqual([key, bySession.get(key)]);
      }
    }
  });

  it('S6/R4: a new NEGOTIATE is never put on an HTTP/1.1 connection holding another caller\u2019s pending CHALLENGE: it waits for a connection of its own', async () => {
    const s = await server({ mode: 'iis' });
    const a = passThrough(s, { allowH2: false, maxHttp1Connections: 1 });
    const alice = client(s, a, 'alice', '/auth/alice');
    const bob = client(s, a, 'bob', '/auth/bob');
    expect(await alice.negotiate()).toBe(401);
    const bobFirst = bob.negotiate();
    // Before: bob's NEGOTIATE went on alice's connection and replaced her context there.
    expect(await alice.authenticate()).toBe('200 EXAMPLE\\alice');
    expect(await bobFirst).toBe(401);
    expect(await bob.authenticate()).toBe('200 EXAMPLE\\bob');
    const sessionOf = (path: string) => new Set(s.exchanges.filter((e) => e.path === path).map((e) => e.sessionId));
    expect(sessionOf('/auth/alice').size).toBe(1);
    expect([...sessionOf('/auth/bob')].some((id) => sessionOf('/auth/alice').has(id))).toBe(false);
    expect(mismatches(s)).toBe(0);
  });

  it('R4: an AUTHENTICATE with no CHALLENGE of this agent to answer (its NEGOTIATE went through another agent) is MULTILEG_NTLM_UNPAIRED (no-record) and reaches no server', async () => {
    const s = await server({ mode: 'iis' });
    const elsewhere = passThrough(s, { allowH2: false });
    const a = passThrough(s, { allowH2: false });
    const alice = client(s, elsewhere, 'alice', '/auth/alice', false);
    expect(await alice.negotiate()).toBe(401);
    const before = s.exchanges.length;
    // Before: sent, and read against no context or another caller's.
    expect(await alice.authenticate(a)).toBe('MULTILEG_NTLM_UNPAIRED no-record');
    expect(s.exchanges.length).toBe(before);
    // Through the agent that carried its CHALLENGE it goes.
    expect(await alice.authenticate(elsewhere)).toBe('200 EXAMPLE\\alice');
  });

  it('R4: an AUTHENTICATE that echoes no MsvAvTimestamp (the CHALLENGE had none) and carries no Auth-ID is MULTILEG_NTLM_UNPAIRED (no-timestamp), not sent', async () => {
    const s = await server({
      mode: 'iis',
      // CHALLENGEs without MsvAvTimestamp, as servers of the NTLMv1 era send them.
      acceptorFactory: (info) => {
        const inner = new NtlmAcceptor({ users: { ...info.users }, domain: info.domain });
        return {
          step(token: Buffer): AcceptorStep {
            const r = inner.step(token);
            if (r.kind !== 'challenge') return r;
            const c = decodeChallenge(r.token);
            const avPairs = c.avPairs.filter((p) => p.id !== AvId.Timestamp);
            return { kind: 'challenge', token: encodeChallenge({ ...c, avPairs, version: c.version! }) };
          },
        };
      },
    });
    const a = passThrough(s, { allowH2: false });
    const alice = client(s, a, 'alice', '/auth/alice', false);
    expect(await alice.negotiate()).toBe(401);
    const before = s.exchanges.length;
    expect(await alice.authenticate()).toBe('MULTILEG_NTLM_UNPAIRED no-timestamp');
    expect(s.exchanges.length).toBe(before);
  });

  it('R4: an AUTHENTICATE whose CHALLENGE came on a connection that has ended since is MULTILEG_NTLM_UNPAIRED (connection-gone), not sent on another', async () => {
    const s = await server({ mode: 'iis' });
    const a = passThrough(s, { allowH2: false });
    const alice = client(s, a, 'alice', '/auth/alice', false);
    expect(await alice.negotiate()).toBe(401);
    s.endSessions({ abrupt: true });
    await until(() => a.sessions().length === 0);
    const before = s.exchanges.length;
    expect(await alice.authenticate()).toBe('MULTILEG_NTLM_UNPAIRED connection-gone');
    expect(s.exchanges.length).toBe(before);
  });

  it('R4: two pending CHALLENGEs the server made alike (its clock did not move): the NEGOTIATE goes again for another, and both logins succeed; where the clock never moves the AUTHENTICATE is MULTILEG_NTLM_UNPAIRED (ambiguous), not sent', async () => {
    for (const clock of ['ticks', 'stopped'] as const) {
      let calls = 0n;
      // 'ticks': every second CHALLENGE has the one before's MsvAvTimestamp; 'stopped': all the same.
      const now = () => 133_000_000_000_000_000n + (clock === 'ticks' ? calls++ / 2n : 0n);
      const s = await server({
        mode: 'iis',
        acceptorFactory: (info) => new NtlmAcceptor({ users: { ...info.users }, domain: info.domain, now }),
      });
      const a = passThrough(s, { allowH2: false });
      const alice = client(s, a, 'alice', '/auth/alice', false);
      const bob = client(s, a, 'bob', '/auth/bob', false);
      expect(await alice.negotiate()).toBe(401);
      expect(await bob.negotiate()).toBe(401);
      const negotiates = s.exchanges.filter((e) => e.path === '/auth/bob').length;
      if (clock === 'ticks') {
        expect(negotiates).toBe(2);
        expect(await bob.authenticate()).toBe('200 EXAMPLE\\bob');
        expect(await alice.authenticate()).toBe('200 EXAMPLE\\alice');
      } else {
        expect(negotiates).toBe(1 + MAX_REASKS);
        const before = s.exchanges.length;
        expect(await bob.authenticate()).toBe('MULTILEG_NTLM_UNPAIRED ambiguous');
        expect(s.exchanges.length).toBe(before);
      }
      expect(mismatches(s)).toBe(0);
    }
  });

  it('R1: NEGOTIATEs whose clients never send their AUTHENTICATE, their CHALLENGEs holding every HTTP/1.1 connection the lane may open, keep no other caller waiting past a bound: the oldest is given up after ABANDONED_CHALLENGE_GRACE_MS, and its late AUTHENTICATE is MULTILEG_NTLM_UNPAIRED (no-record), not sent', async () => {
    const s = await server({ mode: 'iis' });
    // queueTimeout well above the grace, well below handshakeTimeout (30 s): the bound that would fail.
    const a = passThrough(s, {
      allowH2: false,
      maxHttp1Connections: 2,
      limits: { queueTimeout: 10 * ABANDONED_CHALLENGE_GRACE_MS },
    });
    const gone = [client(s, a, 'bob', '/auth/gone-0'), client(s, a, 'bob', '/auth/gone-1')];
    for (const c of gone) expect(await c.negotiate()).toBe(401);
    const alice = client(s, a, 'alice', '/auth/alice');
    // Before: alice's NEGOTIATE waited for a connection until MULTILEG_QUEUE_TIMEOUT (u11's load.js never finished).
    expect(await alice.negotiate()).toBe(401);
    expect(await alice.authenticate()).toBe('200 EXAMPLE\\alice');
    // The oldest CHALLENGE was given up for her: its AUTHENTICATE goes nowhere (its connection now held alice's context).
    const before = s.exchanges.length;
    expect(await gone[0]!.authenticate()).toBe('MULTILEG_NTLM_UNPAIRED no-record');
    expect(s.exchanges.length).toBe(before);
    // Only as many as waited: the younger one kept its connection.
    expect(await gone[1]!.authenticate()).toBe('200 EXAMPLE\\bob');
    expect(mismatches(s)).toBe(0);
  });

  it('S6/C3: an AUTHENTICATE whose relayed Auth-ID names another pending CHALLENGE (a gateway\u2019s stale bookkeeping) goes with the Auth-ID of the CHALLENGE its NTLMv2 response echoes: 200 as itself, never read against the other context', async () => {
    const s = await server({ mode: 'session' });
    const a = passThrough(s);
    const alice = client(s, a, 'alice', '/auth/alice');
    const bob = client(s, a, 'bob', '/auth/bob');
    expect(await alice.negotiate()).toBe(401);
    expect(await bob.negotiate()).toBe(401);
    expect(alice.authId).not.toBe(bob.authId);
    // Before: the record was skipped for its Auth-ID, and the login failed MULTILEG_NTLM_UNPAIRED (no-record).
    expect(await alice.authenticate(a, bob.authId)).toBe('200 EXAMPLE\\alice');
    expect(await bob.authenticate()).toBe('200 EXAMPLE\\bob');
    expect(s.exchanges.filter((e) => e.reason !== undefined)).toEqual([]);
  });
});

describe('S6: a callers\u2019 HTTP/2 session and its pending CHALLENGEs', () => {
  it('S6: a callers\u2019 HTTP/2 session carries one caller\u2019s handshake at a time: a second NEGOTIATE goes on another session, a session one caller\u2019s answer retired takes no new request and closes, and the other\u2019s AUTHENTICATE goes to its own session', async () => {
    const s = await server({ mode: 'session' });
    const a = passThrough(s);
    const alice = client(s, a, 'alice', '/auth/alice');
    const bob = client(s, a, 'bob', '/auth/bob');
    expect(await alice.negotiate()).toBe(401);
    expect(await bob.negotiate()).toBe(401);
    const sessionOf = (path: string) => [
      ...new Set(s.exchanges.filter((e) => e.path === path).map((e) => e.sessionId)),
    ];
    expect(sessionOf('/auth/alice')).toHaveLength(1);
    expect(sessionOf('/auth/bob')).not.toEqual(sessionOf('/auth/alice'));
    // Bob's 200 retires his session (it may now be bob's)…
    expect(await bob.authenticate()).toBe('200 EXAMPLE\\bob');
    const carol = await request(`${s.origin}/public/carol`, {
      dispatcher: a,
      headers: { authorization: 'Bearer of-carol' },
    });
    expect(((await carol.body.json()) as { user: string | null }).user).toBe(null);
    expect(sessionOf('/public/carol')).not.toEqual(sessionOf('/auth/bob'));
    // …and alice's AUTHENTICATE goes on the session of her CHALLENGE.
    expect(await alice.authenticate()).toBe('200 EXAMPLE\\alice');
    expect(sessionOf('/auth/alice')).toHaveLength(1);
    const open = (path: string) => s.sessions().find((x) => x.id === sessionOf(path)[0])?.open;
    await until(() => open('/auth/bob') === false);
    expect(open('/auth/bob')).toBe(false);
  });

  it('S6: callers\u2019 NEGOTIATEs spread over sessions, one pending CHALLENGE each, so the server\u2019s cap on incomplete contexts refuses none; each AUTHENTICATE goes to its own session', async () => {
    const s = await server({ mode: 'session', maxIncompleteContexts: 3 });
    const a = passThrough(s, { limits: { maxConcurrentHandshakes: 3 } });
    const clients = Array.from({ length: 7 }, (_, i) => client(s, a, i % 2 ? 'bob' : 'alice', `/auth/c${i}`));
    // Before: all on one session, and the server refused the 4th on ("context-limit").
    expect(await Promise.all(clients.map((c) => c.negotiate()))).toEqual(Array(7).fill(401));
    const answers = await Promise.all(clients.map((c) => c.authenticate()));
    expect(answers).toEqual(clients.map((_, i) => `200 EXAMPLE\\${i % 2 ? 'bob' : 'alice'}`));
    expect(s.exchanges.filter((e) => e.refused !== undefined || e.reason !== undefined)).toEqual([]);
    expect(new Set(s.exchanges.map((e) => e.sessionId)).size).toBeGreaterThanOrEqual(3);
  });
});

describe('R1/S6: callers\u2019 own connection-bound requests over HTTP/2', () => {
  it('R1/S6: a burst of callers\u2019 own NTLM Authorization (each answer retires its session) runs on up to maxHttp1Connections sessions at once (one request each, as HTTP/1.1 connections: review r54), not one after another; no request goes on a session after its answer', async () => {
    // A server that holds every response until four requests are in at once, then answers all.
    const held: (() => void)[] = [];
    let released = false;
    let sessions = 0;
    const ids = new WeakMap<Http2Session, number>();
    const answeredOn = new Set<number>();
    const afterAnswer: number[] = [];
    const srv = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: true }, (req, res) => {
      const session = req.stream.session!;
      if (!ids.has(session)) ids.set(session, ++sessions);
      const id = ids.get(session)!;
      if (answeredOn.has(id)) afterAnswer.push(id);
      const answer = () => {
        answeredOn.add(id);
        res.end('ok');
      };
      if (released) answer();
      else held.push(answer);
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const origin = `https://localhost:${(srv.address() as AddressInfo).port}`;
    const a = new MultilegAgent({ connect: { ca: CA_CERT }, maxHttp1Connections: 4 });
    agents.push(a);
    try {
      // An AUTHENTICATE too short to pair: a caller-bound request that goes as given (its 200 retires the session).
      const all = Promise.all(
        Array.from({ length: 12 }, async (_, i) => {
          const r = await request(`${origin}/x/${i}`, {
            dispatcher: a,
            headers: { authorization: 'NTLM TlRMTVNTUAADAAAA' },
          });
          await r.body.text();
          return r.statusCode;
        }),
      );
      await until(() => held.length >= 4);
      const atOnce = held.length;
      released = true;
      for (const answer of held.splice(0)) answer();
      expect(await all).toEqual(Array(12).fill(200));
      // Before: 1 (each waited for the one before's answer and its retired session's successor).
      expect(atOnce).toBe(4);
      expect(afterAnswer).toEqual([]);
    } finally {
      srv.close();
    }
  });
});
