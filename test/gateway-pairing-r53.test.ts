/**
 * Review r53 of the callers' NTLM pass-through pairing (src/session/ntlm-pairing.ts): a session one
 * caller's login authenticated carries no other caller's AUTHENTICATE (S6); a keyless AUTHENTICATE
 * takes no keyed CHALLENGE, and `callerConnection` keeps a guessed key from taking another client's
 * CHALLENGE (R4).
 */
import { Readable } from 'node:stream';
import { request } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { type Challenge, MultilegAgent, NtlmUnpairedError, ntlmMechanism, parseChallenges } from '../src/index.ts';
import { encodeAuthenticate } from '../src/mechanisms/ntlm/messages.ts';
import type { Limits } from '../src/options.ts';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import {
  ChallengeRecords,
  MAX_CHALLENGE_RECORDS,
  MISS_BOUND,
  type PairedSession,
} from '../src/session/ntlm-pairing.ts';

const servers: ReferenceServer[] = [];
const agents: MultilegAgent[] = [];
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.destroy().catch(() => {})));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function rig(mode: 'session' | 'iis', allowH2 = true, more: Parameters<typeof startReferenceServer>[0] = {}) {
  const s = await startReferenceServer({ schemes: ['NTLM'], mode, ...more });
  servers.push(s);
  const a = new MultilegAgent({ connect: { ca: s.ca }, negotiate: false, allowH2 });
  agents.push(a);
  const url = new URL(s.origin);
  const leg = (path: string) => ({
    origin: s.origin,
    hostname: url.hostname,
    port: Number(url.port),
    method: 'GET',
    path,
    proxy: false,
  });
  const context = (user: string, password: string, path: string) =>
    ntlmMechanism({ username: `EXAMPLE\\${user}`, password }).createContext(leg(path));
  /** A NEGOTIATE from `ctx`: its CHALLENGE and Auth-ID. */
  async function negotiate(ctx: ReturnType<typeof context>, path: string, callerConnection?: string) {
    const r = await request(`${s.origin}${path}`, {
      dispatcher: a,
      headers: { authorization: (await ctx.step(undefined, leg(path)))! },
      ...(callerConnection ? { callerConnection } : {}),
    });
    await r.body.text();
    const challenge = parseChallenges(r.headers['www-authenticate'] as string).find((c) => c.token68 !== undefined);
    return { challenge: challenge as Challenge, authId: r.headers['auth-id'] as string | undefined };
  }
  /** A request through the agent: who the server served it as, or the unpaired reason. */
  async function send(path: string, headers: Record<string, string>, callerConnection?: string): Promise<string> {
    try {
      const r = await request(`${s.origin}${path}`, {
        dispatcher: a,
        headers,
        ...(callerConnection ? { callerConnection } : {}),
      });
      const body = (await r.body.json().catch(() => ({}))) as { user?: string | null; error?: string };
      return `${r.statusCode} ${body.user ?? body.error ?? 'anonymous'}`;
    } catch (err) {
      return err instanceof NtlmUnpairedError ? `${err.code} ${err.reason}` : String(err);
    }
  }
  return { s, a, leg, context, negotiate, send };
}

describe('S6: a callers\u2019 session one caller\u2019s login authenticated carries no other caller\u2019s AUTHENTICATE (review r53)', () => {
  it('S6: over HTTP/2 (session mode), Mallory\u2019s AUTHENTICATE of made-up credentials, echoing her own CHALLENGE, is never served as bob, whose login went first', async () => {
    const { s, context, negotiate, send, leg } = await rig('session');
    const bob = context('bob', 'bobpw', '/auth/bob');
    const mallory = context('mallory', 'no-such-password', '/public/mine');
    const b = await negotiate(bob, '/auth/bob');
    const m = await negotiate(mallory, '/auth/mine');
    const bobAuth = (await bob.step(b.challenge, leg('/auth/bob')))!;
    expect(await send('/auth/bob', { authorization: bobAuth, 'auth-id': b.authId! })).toBe('200 EXAMPLE\\bob');
    const malloryAuth = (await mallory.step(m.challenge, leg('/public/mine')))!;
    // Before: "200 EXAMPLE\bob" (sent on bob's session, which his login had authenticated).
    const got = await send('/public/mine', { authorization: malloryAuth });
    expect(got).not.toContain('bob');
    const sessionOf = (path: string) => s.exchanges.filter((e) => e.path === path).map((e) => e.sessionId);
    expect(sessionOf('/public/mine').some((id) => sessionOf('/auth/bob').includes(id))).toBe(false);
  });

  it('S6: over HTTP/2 (session mode) a callers\u2019 session carries one caller\u2019s request at a time: bob\u2019s login never shares a session with Mallory\u2019s request still on the wire (a slow body), which would then be served as bob (review r54)', async () => {
    const { s, a, context, negotiate, send, leg } = await rig('session');
    // A garbage NTLM token's 401: the session has answered once (it would take as many as its streams).
    expect(await send('/auth/x', { authorization: 'NTLM AAAA' })).toMatch(/^401 /);
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    // Her request has reached the server (its head): it is on a session.
    const onWire = new Promise<void>((resolve) => s.on('request', (q) => q.path === '/public/mine' && resolve()));
    // Past maxReplayBodyBytes the body streams: her request stays on the wire until she releases it.
    const body = Readable.from(
      (async function* () {
        yield Buffer.alloc(1100 * 1024, 97);
        await held;
        yield 'b';
      })(),
    );
    const mine = request(`${s.origin}/public/mine`, {
      dispatcher: a,
      method: 'POST',
      body,
      headers: { authorization: 'NTLM AAAA' },
    });
    await onWire;
    const bob = context('bob', 'bobpw', '/auth/bob');
    const b = await negotiate(bob, '/auth/bob');
    const bobAuth = (await bob.step(b.challenge, leg('/auth/bob')))!;
    expect(await send('/auth/bob', { authorization: bobAuth, 'auth-id': b.authId! })).toBe('200 EXAMPLE\\bob');
    release();
    const res = await mine;
    const { user } = (await res.body.json()) as { user: string | null };
    // Before: 200 as EXAMPLE\bob, her request on the session bob's login authenticated.
    expect(user).toBeNull();
    const sessionOf = (path: string) => s.exchanges.filter((e) => e.path === path).map((e) => e.sessionId);
    expect(sessionOf('/public/mine').some((id) => sessionOf('/auth/bob').includes(id))).toBe(false);
  });

  it('S6: over HTTP/2 (session mode) a login whose request is aborted before its answer is read retires its session: it may be bob\u2019s now, and Mallory\u2019s next request never rides it (review r56)', async () => {
    const bobAbort = new AbortController();
    const { s, a, leg } = await rig('session', true, {
      faults: {
        // After the server took bob's AUTHENTICATE (the session is his), before it writes the head.
        contentEncoding: ({ status, request: r }) => {
          if (status === 200 && r.path === '/auth/bob-slow') bobAbort.abort(new Error('bob went away'));
          return undefined;
        },
      },
    });
    const bob = ntlmMechanism({ username: 'EXAMPLE\\bob', password: 'bobpw' }).createContext(leg('/auth/bob-slow'));
    const r1 = await request(`${s.origin}/auth/bob-slow`, {
      dispatcher: a,
      headers: { authorization: (await bob.step(undefined, leg('/auth/bob-slow')))! },
    });
    await r1.body.text();
    const challenge = parseChallenges(r1.headers['www-authenticate'] as string).find((c) => c.token68 !== undefined)!;
    await expect(
      request(`${s.origin}/auth/bob-slow`, {
        dispatcher: a,
        signal: bobAbort.signal,
        headers: {
          authorization: (await bob.step(challenge, leg('/auth/bob-slow')))!,
          'auth-id': r1.headers['auth-id'] as string,
        },
      }),
    ).rejects.toThrow('bob went away');
    await vi.waitFor(() => expect(s.exchanges.some((e) => e.user === 'EXAMPLE\\bob')).toBe(true));
    // Mallory: an NTLM NEGOTIATE of her own, no password.
    const res = await request(`${s.origin}/public/x`, {
      dispatcher: a,
      headers: { authorization: 'NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==' },
    });
    const { user } = (await res.body.json()) as { user: string | null };
    // Before: 200 as EXAMPLE\bob, on the session his aborted login had authenticated.
    expect(user).toBeNull();
  });

  it('S6/H1: over HTTP/1.1 (IIS mode) a caller\u2019s own AUTHENTICATE refused with a 401 retires its connection: alice\u2019s login after bob\u2019s refused one never goes on it (the server may hold it as bob, IIS\u2019s 401.3, or keep the failed context; review r72)', async () => {
    const { s, context, negotiate, send, leg } = await rig('iis', false);
    const bob = context('bob', 'not-bobs-password', '/auth/bob');
    const b = await negotiate(bob, '/auth/bob');
    const bobAuth = (await bob.step(b.challenge, leg('/auth/bob')))!;
    expect(await send('/auth/bob', { authorization: bobAuth })).toMatch(/^401 /);
    const alice = context('alice', 'alicepw', '/auth/alice');
    const a1 = await negotiate(alice, '/auth/alice');
    const aliceAuth = (await alice.step(a1.challenge, leg('/auth/alice')))!;
    expect(await send('/auth/alice', { authorization: aliceAuth })).toBe('200 EXAMPLE\\alice');
    const sessionOf = (path: string) => s.exchanges.filter((e) => e.path === path).map((e) => e.sessionId);
    // Both of bob's legs on one connection (his handshake's), and none of alice's there.
    expect(new Set(sessionOf('/auth/bob')).size).toBe(1);
    // Before: alice's NEGOTIATE and AUTHENTICATE went on bob's refused connection.
    expect(sessionOf('/auth/alice').some((id) => sessionOf('/auth/bob').includes(id))).toBe(false);
  });

  it('R1/R4: a CHALLENGE given up as abandoned retires its HTTP/2 session (the server still holds that incomplete context there, and caps them); an HTTP/1.1 connection is reused, its next NEGOTIATE replacing the context (trial u13)', () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      const records = new ChallengeRecords({ handshakeTimeout: 30_000 } as Limits, () => {});
      const retired: string[] = [];
      const session = (protocol: 'h2' | 'http/1.1'): PairedSession => ({
        closed: false,
        protocol,
        retiring: false,
        challengesPending: 0,
        challengesSettled: () => {},
        retire: () => {
          retired.push(protocol);
        },
      });
      records.record(session('h2'), 'k-h2', 'a1');
      records.record(session('http/1.1'), 'k-h1', undefined);
      vi.setSystemTime(Date.now() + 1_500);
      expect(records.relieve(2, () => true)).toBe(2);
      // Before: neither retired; the HTTP/2 session took new NEGOTIATEs until the server refused every context.
      expect(retired).toEqual(['h2']);
      records.dispose();
    } finally {
      vi.useRealTimers();
    }
  });

  it('S6/R1: at MAX_CHALLENGE_RECORDS the oldest record not taken goes, never one whose AUTHENTICATE is on the wire (its session stays counted; review r55)', () => {
    const records = new ChallengeRecords({ handshakeTimeout: 30_000 } as Limits, () => {});
    const session = (): PairedSession => ({
      closed: false,
      protocol: 'http/1.1',
      retiring: false,
      challengesPending: 0,
      challengesSettled: () => {},
    });
    const first = session();
    records.record(first, 'k0', undefined);
    const taken = records.take({ kind: 'continuation', key: 'k0', authId: undefined, caller: undefined });
    expect(typeof taken).toBe('object');
    for (let i = 1; i <= MAX_CHALLENGE_RECORDS; i++) records.record(session(), `k${i}`, undefined);
    // Before: the taken one went first, its session uncounted while its AUTHENTICATE was on the wire.
    expect(first.challengesPending).toBe(1);
    expect(records.take({ kind: 'continuation', key: 'k1', authId: undefined, caller: undefined })).toBe('no-record');
    records.dispose();
  });

  it('S6: once a session retires, another caller\u2019s CHALLENGE recorded on it is dropped (its AUTHENTICATE is connection-gone, never sent there), and one that comes back on it afterwards is kept dropped; the session closes once its own is answered', () => {
    const records = new ChallengeRecords({ handshakeTimeout: 30_000 } as Limits, () => {});
    let settled = 0;
    const session: PairedSession & { retiring: boolean } = {
      closed: false,
      protocol: 'h2',
      retiring: false,
      challengesPending: 0,
      challengesSettled: () => {
        settled += 1;
      },
    };
    records.record(session, 'bob-key', 'b1');
    // Two handshakes on one session (a NEGOTIATE given it beside another caller's request).
    const bobs = records.take({ kind: 'continuation', key: 'bob-key', authId: 'b1', caller: undefined });
    expect(typeof bobs).toBe('object');
    records.record(session, 'mallory-key', 'm1');
    expect(session.challengesPending).toBe(2);
    // Bob's answer retires the session.
    records.retired(session, bobs as Exclude<typeof bobs, string>);
    session.retiring = true;
    expect(session.challengesPending).toBe(1);
    // Before: Mallory's record was taken, and her AUTHENTICATE went on bob's session.
    expect(records.take({ kind: 'continuation', key: 'mallory-key', authId: 'm1', caller: undefined })).toBe(
      'connection-gone',
    );
    // A NEGOTIATE that was on the wire when it retired: its CHALLENGE is kept dropped.
    records.record(session, 'carol-key', 'c1');
    expect(session.challengesPending).toBe(1);
    expect(records.take({ kind: 'continuation', key: 'carol-key', authId: undefined, caller: undefined })).toBe(
      'connection-gone',
    );
    records.settle(bobs as Exclude<typeof bobs, string>);
    expect(session.challengesPending).toBe(0);
    expect(settled).toBe(1);
    records.dispose();
  });
});

describe('R4: the pairing of a callers\u2019 AUTHENTICATE cannot be taken by another client (review r53)', () => {
  it('R4: an AUTHENTICATE with no timestamp key (NTLMv1-shaped) relaying another\u2019s Auth-ID takes no CHALLENGE that has a key: MULTILEG_NTLM_UNPAIRED (no-record), not sent, and bob\u2019s login succeeds', async () => {
    const { s, context, negotiate, send, leg } = await rig('session');
    const bob = context('bob', 'bobpw', '/auth/bob');
    const b = await negotiate(bob, '/auth/bob');
    const v1 = encodeAuthenticate({
      flags: 0xa2088207,
      encryptedRandomSessionKey: Buffer.alloc(0),
      lmResponse: Buffer.alloc(24),
      ntResponse: Buffer.alloc(24, 1),
      domain: 'EXAMPLE',
      user: 'mallory',
      workstation: 'M',
      version: Buffer.alloc(8),
    } as Parameters<typeof encodeAuthenticate>[0]);
    const before = s.exchanges.length;
    // Before: it took bob's record ("401 rejected" at the server), and bob's login failed no-record.
    expect(await send('/auth/m', { authorization: `NTLM ${v1.toString('base64')}`, 'auth-id': b.authId! })).toBe(
      'MULTILEG_NTLM_UNPAIRED no-record',
    );
    expect(s.exchanges.length).toBe(before);
    const auth = (await bob.step(b.challenge, leg('/auth/bob')))!;
    expect(await send('/auth/bob', { authorization: auth, 'auth-id': b.authId! })).toBe('200 EXAMPLE\\bob');
  });

  it('R4: with callerConnection on its NEGOTIATE, bob\u2019s CHALLENGE is taken only by an AUTHENTICATE dispatched with the same: another client\u2019s answering it (a guessed key) is MULTILEG_NTLM_UNPAIRED (no-record), not sent, and bob\u2019s login succeeds', async () => {
    for (const given of [false, true]) {
      const { s, context, negotiate, send, leg } = await rig('iis', false);
      const bob = context('bob', 'bobpw', '/auth/bob');
      const b = await negotiate(bob, '/auth/bob', given ? 'client-conn-bob' : undefined);
      // Mallory answers bob's very CHALLENGE with her own credentials: a perfect guess of its key.
      const mallory = context('alice', 'alicepw', '/m');
      await mallory.step(undefined, leg('/m'));
      const forged = (await mallory.step(b.challenge, leg('/m')))!;
      const before = s.exchanges.length;
      const got = await send('/m', { authorization: forged }, given ? 'client-conn-mallory' : undefined);
      const bobAuth = (await bob.step(b.challenge, leg('/auth/bob')))!;
      const bobGot = await send('/auth/bob', { authorization: bobAuth }, given ? 'client-conn-bob' : undefined);
      if (given) {
        expect(got).toBe('MULTILEG_NTLM_UNPAIRED no-record');
        expect(s.exchanges.length).toBe(before + 1);
        expect(bobGot).toBe('200 EXAMPLE\\bob');
      } else {
        // Without it (the threat docs/SECURITY.md describes): the guess takes bob's CHALLENGE.
        expect(got).not.toContain('MULTILEG_NTLM_UNPAIRED');
        expect(bobGot).toBe('MULTILEG_NTLM_UNPAIRED no-record');
      }
    }
  });

  it('R4: AUTHENTICATEs pairing with nothing are counted per origin: past MISS_BOUND within the window, reported once', () => {
    const records = new ChallengeRecords({ handshakeTimeout: 30_000 } as Limits, () => {});
    const reports = Array.from({ length: 3 * MISS_BOUND }, () => records.missed()).filter(Boolean);
    expect(reports).toHaveLength(1);
  });

  it('R4: a CHALLENGE answered after the pool closed (dispose) is not recorded, and arms no timer', () => {
    const records = new ChallengeRecords({ handshakeTimeout: 30_000 } as Limits, () => {});
    const session: PairedSession = {
      closed: false,
      protocol: 'h2',
      retiring: false,
      challengesPending: 0,
      challengesSettled: () => {},
    };
    records.dispose();
    records.record(session, 'late-key', 'l1');
    expect(records.size).toBe(0);
    expect(session.challengesPending).toBe(0);
  });
});
