/**
 * The small parts of a request's lifecycle, driven directly where a server cannot reach a branch
 * on demand: the one bounded wait (WaitQueue), the caller's sink (UserSink), a leg's handler
 * (LegHandler, against a fake undici controller), fetch's redirect hops (RedirectHops), the
 * origin's memory and channel binding data for certificates signed with SHA-384/512.
 */
import { execFileSync } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { createServer } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Dispatcher } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { type PreparedBody, prepareBody } from '../src/body/replayable.ts';
import { readChallenges } from '../src/challenge/index.ts';
import { type HandshakeInput, type HandshakeResult, runHandshake } from '../src/handshake/handshake.ts';
import { LegHandler, type LegResult, type Verdict } from '../src/handshake/leg.ts';
import { UserSink } from '../src/handshake/user-sink.ts';
import { normalizeRequestHeaders } from '../src/headers.ts';
import {
  AuthIdInUseError,
  type Mechanism,
  QueueTimeoutError,
  WITHHELD_CHANNEL,
  type WithheldEvent,
} from '../src/index.ts';
import { KerberosTicketExpiredError, KerberosUnknownServiceError } from '../src/mechanisms/negotiate/errors.ts';
import { DEFAULT_LIMITS } from '../src/options.ts';
import { ProxyAuth, proxyLeg } from '../src/proxy/auth.ts';
import { ProxyLead } from '../src/proxy/lead.ts';
import { ProxyResolver } from '../src/proxy/options.ts';
import { SessionAuthIds } from '../src/session/auth-ids.ts';
import { tlsServerEndPoint } from '../src/session/channel-binding.ts';
import { type ConnectionInfo, type SessionConnector, sessionConnector } from '../src/session/connector.ts';
import {
  CredentialProof,
  MAX_REFUSED_MEMORY_MS,
  PROOF_FRESH_MS,
  signalWaiter,
  Ticket,
} from '../src/session/credential-proof.ts';
import { heldBackAnswer } from '../src/session/first-challenge.ts';
import { type Job, newJob } from '../src/session/job.ts';
import { OriginMemory, TICKET_RECHECK_MS, UNUSABLE_MEMORY_MS } from '../src/session/origin-memory.ts';
import type { RefusalMemory } from '../src/session/refusal-memory.ts';
import { Session, StaleConnectionError } from '../src/session/session.ts';
import { FRESH, transition } from '../src/session/state.ts';
import { WaitQueue } from '../src/session/wait-queue.ts';
import { RedirectHops } from '../src/trust/redirects.ts';
import { ALICE, deferred, publishedDuring } from './helpers.ts';
import { findBin } from './lab/peers.ts';

afterEach(() => {
  vi.useRealTimers();
});

type Controller = Dispatcher.DispatchController;

/** What a caller's handler saw, in order. */
function recordingHandler(onStart?: (c: Controller) => void): { handler: Dispatcher.DispatchHandler; seen: string[] } {
  const seen: string[] = [];
  return {
    seen,
    handler: {
      onResponseStart(c, status) {
        seen.push(`start ${status}`);
        onStart?.(c);
      },
      onResponseData(_c, chunk) {
        seen.push(`data ${chunk.toString()}`);
      },
      onResponseEnd() {
        seen.push('end');
      },
      onResponseError(_c, err) {
        seen.push(`error ${err.message}`);
      },
    },
  };
}

/** An undici controller that records what the agent asked of it. */
function fakeController() {
  const calls: string[] = [];
  const c = {
    paused: false,
    aborted: false,
    reason: null as Error | null,
    pause() {
      calls.push('pause');
      c.paused = true;
    },
    resume() {
      calls.push('resume');
      c.paused = false;
    },
    abort(reason: Error) {
      calls.push(`abort ${reason.message}`);
      c.aborted = true;
      c.reason = reason;
    },
  };
  return { controller: c as unknown as Controller, calls, state: c };
}

function job(id: number): Job {
  return { id, sink: new UserSink({}) } as unknown as Job;
}

describe('WaitQueue: the one bounded wait (R1)', () => {
  it('R1: order, count and deadline survive the compaction of a queue that is never empty', async () => {
    vi.useFakeTimers();
    const queue = new WaitQueue<number>({ maxQueue: 10_000, queueTimeout: 1000 }, 'a test');
    const got: Array<[number, number | string]> = [];
    const waitFor = (id: number) =>
      queue.wait(job(id)).then(
        (v) => got.push([id, v]),
        (e: Error) => got.push([id, e instanceof QueueTimeoutError ? 'timeout' : e.message]),
      );
    // Steady load: 3000 join, 2000 leave from the front (compaction happens once more than 1024
    // have left and they are more than half the array), 1000 are still waiting.
    const waits = [];
    for (let id = 1; id <= 3000; id++) waits.push(waitFor(id));
    for (let v = 1; v <= 2000; v++) expect(queue.shift(v)?.id).toBe(v);
    expect(queue.length).toBe(1000);
    // The next one still leaves in arrival order; the rest time out in arrival order.
    expect(queue.shift(-1)?.id).toBe(2001);
    await vi.advanceTimersByTimeAsync(1000);
    await Promise.all(waits);
    expect(queue.length).toBe(0);
    expect(got.slice(0, 2001)).toEqual(Array.from({ length: 2001 }, (_, i) => [i + 1, i < 2000 ? i + 1 : -1]));
    expect(got.slice(2001).every(([, v]) => v === 'timeout')).toBe(true);
    expect(got.slice(2001).map(([id]) => id)).toEqual(Array.from({ length: 999 }, (_, i) => 2002 + i));
  });

  it('R6: requests that left the front of a never-empty queue are not kept alive by it', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const queue = new WaitQueue<number>({ maxQueue: 10_000, queueTimeout: 60_000 }, 'a test');
    const left: Array<WeakRef<Job>> = [];
    const waits = [];
    for (let id = 1; id <= 3000; id++) {
      const j = job(id);
      if (id <= 1000) left.push(new WeakRef(j));
      waits.push(queue.wait(j).catch(() => {}));
    }
    for (let v = 1; v <= 2000; v++) queue.shift(v);
    await Promise.all(waits.slice(0, 2000));
    // WeakRef targets stay alive until the current task ends.
    await new Promise((r) => setImmediate(r));
    gc();
    // Without compaction all 1000 stay reachable; V8 may keep one or two alive for its own reasons.
    expect(left.filter((w) => w.deref() !== undefined).length).toBeLessThan(10);
    expect(queue.length).toBe(1000);
    queue.settleAll(undefined, new Error('done'));
    await Promise.all(waits);
  });
});

describe('WaitQueue.enqueue: the callback form of the wait (the pool waits for a session so)', () => {
  it("R1: the consumer is told, with its request, of a value handed over, of QueueFullError at once, of the deadline and of the caller's abort; each once, in arrival order", async () => {
    vi.useFakeTimers();
    const queue = new WaitQueue<string>({ maxQueue: 3, queueTimeout: 1000 }, 'a test');
    const told: string[] = [];
    const consumer = {
      granted: (j: Job, v: string) => told.push(`${j.id} granted ${v}`),
      refused: (j: Job, e: Error) =>
        told.push(
          `${j.id} refused ${e instanceof QueueTimeoutError ? 'timeout' : ((e as { code?: string }).code ?? e.message)}`,
        ),
    };
    const [a, b, c, d] = [1, 2, 3, 4].map(job);
    for (const j of [a, b, c]) queue.enqueue(j!, consumer);
    // Full: the fourth hears at once, before enqueue returns.
    queue.enqueue(d!, consumer);
    expect(told).toEqual(['4 refused MULTILEG_QUEUE_FULL']);
    expect(queue.shift('s1')?.id).toBe(1);
    // The caller aborts the second: it leaves the queue, and nothing else is told twice.
    b!.sink.abort(new Error('caller'));
    expect(queue.length).toBe(1);
    await vi.advanceTimersByTimeAsync(1000);
    expect(queue.length).toBe(0);
    expect(queue.shift('late')).toBeUndefined();
    expect(told).toEqual(['4 refused MULTILEG_QUEUE_FULL', '1 granted s1', '2 refused caller', '3 refused timeout']);
  });
});

describe('WaitQueue.take: requests moved to another bounded wait (the pool, while the proxy credentials are recalled)', () => {
  it('R1/R4: the requests picked leave the queue untold, their abort no longer its own; the others keep their places and their deadline', async () => {
    vi.useFakeTimers();
    const queue = new WaitQueue<string>({ maxQueue: 10, queueTimeout: 1000 }, 'a test');
    const told: string[] = [];
    const consumer = {
      granted: (j: Job, v: string) => told.push(`${j.id} granted ${v}`),
      refused: (j: Job, e: Error) =>
        told.push(`${j.id} refused ${e instanceof QueueTimeoutError ? 'timeout' : e.message}`),
    };
    const [a, b, c, d] = [1, 2, 3, 4].map(job);
    for (const j of [a, b, c, d]) queue.enqueue(j!, consumer);
    expect(queue.take((j) => j.id % 2 === 0).map((j) => j.id)).toEqual([2, 4]);
    expect(queue.length).toBe(2);
    // A request taken out: its caller's abort is no longer the queue's to tell.
    b!.sink.abort(new Error('caller'));
    expect(queue.shift('s1')?.id).toBe(1);
    await vi.advanceTimersByTimeAsync(1000);
    expect(told).toEqual(['1 granted s1', '3 refused timeout']);
    expect(queue.length).toBe(0);
    expect(queue.take(() => true)).toEqual([]);
  });
});

describe('ProxyAuth: a per-request scheme taken up from another connection (H5, R4)', () => {
  it('H5/R4: a 407 to the credentials it sent unasked is their refusal; once the proxy let them through, a later 407 is answered as after a handshake (review r35)', async () => {
    const proxy = new ProxyResolver(
      { uri: 'http://proxy.example:3128', negotiate: false, credentials: { username: 'u', password: 'pw' } },
      {},
    ).route('http://origin.example')!.proxy;
    const leg = proxyLeg(proxy, 'GET', 'http://origin.example/');
    // (answer() takes the 407's challenges, as its callers read them.)
    const basic407 = readChallenges({ 'proxy-authenticate': 'Basic realm="p"' }, true);
    // The proxy's 407 answered with Basic on one connection: what new ones take up.
    const first = new ProxyAuth(proxy, DEFAULT_LIMITS.maxLegs);
    await first.answer(basic407, leg);
    expect((await first.header(leg))?.value).toMatch(/^Basic /);
    // A new connection takes it up and sends it unasked; a 407 to that is a refusal.
    const refused = new ProxyAuth(proxy, DEFAULT_LIMITS.maxLegs);
    refused.adopt();
    expect(refused.proactive).toBe(true);
    await refused.header(leg);
    await expect(refused.answer(basic407, leg)).rejects.toMatchObject({ refused: true });
    // Another that the proxy let through: a later 407 on it (a server-side change) is answered.
    const through = new ProxyAuth(proxy, DEFAULT_LIMITS.maxLegs);
    through.adopt();
    const sent = await through.header(leg);
    await through.verify(sent!.own!, 200, {}, leg, undefined);
    // Was: still taken for a refusal of the credentials sent unasked.
    await expect(through.answer(basic407, leg)).resolves.toBeUndefined();
  });
});

describe("ProxyLead: one request at a time runs a forwarding proxy connection's handshake (H5, R1)", () => {
  const lead = () => {
    const proxy = new ProxyResolver({ uri: 'http://proxy.example:3128', negotiate: false }, {}).route(
      'http://origin.example',
    )!.proxy;
    return new ProxyLead(
      new ProxyAuth(proxy, DEFAULT_LIMITS.maxLegs),
      { ...DEFAULT_LIMITS, queueTimeout: 200 },
      'a test lead',
    );
  };
  const turns = () => new Promise((r) => setImmediate(r));

  it("H5: of the requests a lead's end wakes, one leads (found free and taken in one tick) and the others wait again", async () => {
    const l = lead();
    const first = l.turn();
    expect(await first.follow(signalWaiter(undefined), undefined, () => true)).toBe(true);
    const others = [l.turn(), l.turn(), l.turn()];
    const led = others.map((t) => t.follow(signalWaiter(undefined), undefined, () => true));
    await turns();
    expect(others.map((t) => t.state)).toEqual(['following', 'following', 'following']);
    for (let i = 0; i < others.length; i++) {
      (i === 0 ? first : others[i - 1]!).end();
      await turns();
      expect(others.map((t) => t.state)).toEqual(
        others.map((_, j) => (j < i ? 'ended' : j === i ? 'leading' : 'following')),
      );
    }
    expect(await Promise.all(led)).toEqual([true, true, true]);
  });

  it("H5: a 407 to a request while another leads is answered by that one's handshake, never one to its own lead; the wait is bounded by queueTimeout (R1)", async () => {
    const l = lead();
    const a = l.turn();
    const b = l.turn();
    await b.follow(signalWaiter(undefined), undefined, () => false);
    b.sending();
    expect(b.answeredByAnother).toBe(false);
    expect(await a.follow(signalWaiter(undefined), undefined, () => true)).toBe(true);
    expect(b.answeredByAnother).toBe(true);
    expect(a.answeredByAnother).toBe(false);
    a.end();
    // (The handshake did not succeed: b's 407 is its own to answer.)
    expect(b.answeredByAnother).toBe(false);
    // A wait that outlasts queueTimeout ends in QueueTimeoutError; the lead stays with its holder.
    const c = l.turn();
    expect(await c.follow(signalWaiter(undefined), undefined, () => true)).toBe(true);
    const late = l.turn();
    await expect(late.follow(signalWaiter(undefined), undefined, () => true)).rejects.toBeInstanceOf(QueueTimeoutError);
    expect([c.state, late.state]).toEqual(['leading', 'following']);
  });
});

describe('UserSink: the caller sees one response or one error', () => {
  it('C8: after the caller got its error, a late response head, data and end from the leg are dropped', () => {
    const { handler, seen } = recordingHandler();
    const sink = new UserSink(handler);
    const leg = fakeController();
    sink.fail(new Error('gone'));
    sink.responseStart(leg.controller, 200, {}, 'OK');
    sink.responseData(Buffer.from('late'));
    sink.responseEnd({});
    expect(seen).toEqual(['error gone']);
    expect(sink.leg).toBeUndefined();
    expect(sink.responseStarted).toBe(false);
  });

  it('a caller that paused before the response arrived gets the delivering leg paused; after the end nothing more', () => {
    const { handler, seen } = recordingHandler();
    const sink = new UserSink(handler);
    sink.controller.pause();
    const leg = fakeController();
    sink.responseStart(leg.controller, 200, {}, 'OK');
    expect(leg.calls).toEqual(['pause']);
    sink.controller.resume();
    expect(leg.calls).toEqual(['pause', 'resume']);
    sink.responseEnd({});
    sink.responseEnd({});
    sink.responseData(Buffer.from('late'));
    expect(seen).toEqual(['start 200', 'end']);
  });

  it('responseStarted is true from the head a leg delivers to the caller, and stays so after the end', () => {
    const { handler } = recordingHandler();
    const sink = new UserSink(handler);
    expect(sink.responseStarted).toBe(false);
    sink.responseStart(fakeController().controller, 200, {}, 'OK');
    expect(sink.responseStarted).toBe(true);
    sink.responseEnd({});
    expect(sink.responseStarted).toBe(true);
  });
});

describe("runHandshake: the session's Auth-IDs in use (C3)", () => {
  /** A multi-leg scheme whose second step fails when `failStep` says so; each leg's result is the test's to give. */
  /**
   * `finish`: the mechanism's verification of the final answer; `throwing`: the caller's handler
   * throws from onResponseError (review r58); `slot`: the session's handshake slots.
   */
  function handshake(
    authIds: SessionAuthIds,
    opts: {
      authId?: string;
      failStep?: boolean;
      finish?: () => Promise<void>;
      throwing?: boolean;
      slot?: () => () => void;
    } = {},
  ) {
    const legs: Array<{
      extra: Record<string, string>;
      classify: (status: number, headers: Record<string, string>) => Verdict;
      answer: (r: LegResult) => void;
    }> = [];
    let result: HandshakeResult | undefined;
    let steps = 0;
    const mechanism = {
      scheme: 'X',
      level: 'request',
      multileg: true,
      proactive: false,
      createContext: () => ({
        complete: false,
        step: () => (opts.failStep && ++steps > 1 ? Promise.reject(new Error('bad token')) : Promise.resolve('X tok')),
        finish: opts.finish ?? (() => Promise.resolve()),
      }),
    } as unknown as Mechanism;
    const leg = { origin: 'https://h:443', hostname: 'h', port: 443, method: 'GET', path: '/', proxy: false };
    const { handler } = recordingHandler();
    if (opts.throwing)
      handler.onResponseError = () => {
        throw new Error('the caller handler threw');
      };
    const input: HandshakeInput = {
      mechanism,
      challenge: { scheme: 'X', schemeKey: 'x', params: {} },
      leg,
      send: (extra, classify, onResult) => legs.push({ extra, classify: classify as never, answer: onResult }),
      sink: new UserSink(handler),
      ...(opts.slot ? { slot: opts.slot } : {}),
      maxLegs: 5,
      timeout: 60_000,
      onHttp2: true,
      authIds,
      ...(opts.authId !== undefined ? { authId: opts.authId } : {}),
    };
    runHandshake(
      input,
      (r) => {
        result = r;
      },
      () => {},
    );
    return { legs, result: () => result };
  }
  const tick = () => new Promise((r) => setImmediate(r));
  const swallowed = (authId: string): LegResult => ({
    kind: 'swallowed',
    status: 401,
    headers: { 'www-authenticate': 'X next', 'auth-id': authId },
  });

  it('C3: a handshake whose next leg would carry an Auth-ID another live one holds sends nothing under it: AuthIdInUseError, not a refusal', async () => {
    const ids = new SessionAuthIds();
    const a = handshake(ids, { authId: 'same' });
    await tick();
    expect(a.legs.map((l) => l.extra['auth-id'])).toEqual(['same']);
    // The server gives the same one to a second handshake, on its 401 (the first leg) or a later one.
    const b = handshake(ids, { authId: 'same' });
    const c = handshake(ids);
    await tick();
    c.legs[0]!.answer(swallowed('same'));
    await tick();
    for (const h of [b, c]) {
      const r = h.result();
      expect(r).toMatchObject({ kind: 'failed', authIdCarried: false });
      expect((r as { error: Error }).error).toBeInstanceOf(AuthIdInUseError);
      expect((r as { refused?: true }).refused).toBeUndefined();
      expect((r as { error: Error }).error.message).not.toContain('same');
    }
    expect(b.legs).toEqual([]);
    expect(c.legs).toHaveLength(1); // its first leg only, which carried none
    expect(ids.size).toBe(1);
  });

  it('C3: a handshake given a new Auth-ID on a later 401 holds that one and lets the old one go', async () => {
    const ids = new SessionAuthIds();
    const a = handshake(ids, { authId: 'one' });
    await tick();
    a.legs[0]!.answer(swallowed('two'));
    await tick();
    expect(a.legs.map((l) => l.extra['auth-id'])).toEqual(['one', 'two']);
    const b = handshake(ids, { authId: 'one' });
    const c = handshake(ids, { authId: 'two' });
    await tick();
    expect(b.legs.map((l) => l.extra['auth-id'])).toEqual(['one']);
    expect(c.legs).toEqual([]);
    expect((c.result() as { error: Error }).error).toBeInstanceOf(AuthIdInUseError);
    expect(ids.size).toBe(2);
  });

  const ends: Array<[string, (h: ReturnType<typeof handshake>) => void]> = [
    ['success', (h) => h.legs.at(-1)!.answer({ kind: 'delivered', status: 200, headers: {}, done: Promise.resolve() })],
    [
      'a final 401',
      (h) => h.legs.at(-1)!.answer({ kind: 'delivered', status: 401, headers: {}, done: Promise.resolve() }),
    ],
    [
      'a failed leg (the caller aborted, a reset)',
      (h) => h.legs.at(-1)!.answer({ kind: 'failed', error: new Error('x') }),
    ],
    [
      'relocation (the session ended)',
      (h) =>
        h.legs.at(-1)!.answer({
          kind: 'failed',
          error: Object.assign(new Error('gone'), { code: 'MULTILEG_STALE_CONNECTION' }),
        }),
    ],
    ['a failed step (after a 401 that named another Auth-ID)', (h) => h.legs.at(-1)!.answer(swallowed('other'))],
  ];
  for (const [how, end] of ends) {
    it(`C3: every end lets the Auth-ID go, so a later handshake on the session may be given it again: ${how}`, async () => {
      const ids = new SessionAuthIds();
      const a = handshake(ids, { authId: 'same', failStep: true });
      await tick();
      end(a);
      await tick();
      expect(a.result()).toBeDefined();
      expect(ids.size).toBe(0);
      const b = handshake(ids, { authId: 'same' });
      await tick();
      expect(b.legs.map((l) => l.extra['auth-id'])).toEqual(['same']);
    });
  }

  it('C3: the final answer lets the Auth-ID go before its token is verified: the server, which destroyed the mapping as it sent it, may give it to its next handshake at once (review r58)', async () => {
    const ids = new SessionAuthIds();
    const verified = deferred();
    const a = handshake(ids, { authId: '1', finish: () => verified.promise });
    await tick();
    a.legs[0]!.answer(swallowed('1'));
    await tick();
    expect(a.legs.map((l) => l.extra['auth-id'])).toEqual(['1', '1']);
    // The server's final 200 for A: its final token is being verified.
    expect(a.legs[1]!.classify(200, { 'www-authenticate': 'X final' })).toBeInstanceOf(Promise);
    const b = handshake(ids, { authId: '1' });
    await tick();
    expect(b.result()).toBeUndefined();
    expect(b.legs.map((l) => l.extra['auth-id'])).toEqual(['1']);
    verified.resolve();
  });

  it('C3/R1: a caller whose onResponseError throws does not keep the Auth-ID or the slot held: the session gets the result, and a later handshake may be given the ID again (review r58)', async () => {
    const ids = new SessionAuthIds();
    let released = 0;
    const a = handshake(ids, {
      authId: 'same',
      throwing: true,
      slot: () => () => {
        released += 1;
      },
    });
    await tick();
    // The handler's throw stops at the sink (a MULTILEG_HANDLER_THREW warning, review r66), once the
    // handshake has ended.
    a.legs[0]!.answer({ kind: 'failed', error: new Error('reset') });
    expect(a.result()).toMatchObject({ kind: 'failed' });
    expect(ids.size).toBe(0);
    expect(released).toBe(1);
    const b = handshake(ids, { authId: 'same' });
    await tick();
    expect(b.legs.map((l) => l.extra['auth-id'])).toEqual(['same']);
  });
});

describe("normalizeRequestHeaders: the Job's header map", () => {
  it('C2: a request without headers gets one shared, frozen map, not an object per request (fast path)', () => {
    const none = normalizeRequestHeaders(undefined);
    expect(none).toEqual({});
    expect(normalizeRequestHeaders(null)).toBe(none);
    expect(normalizeRequestHeaders(undefined)).toBe(none);
    // Shared, so frozen: a write would throw rather than reach another request.
    expect(Object.isFrozen(none)).toBe(true);
    // Headers given, even none, are the caller's own map, lower-cased as before.
    const empty = normalizeRequestHeaders({});
    expect(empty).not.toBe(none);
    expect(Object.isFrozen(empty)).toBe(false);
    expect(normalizeRequestHeaders({ Accept: 'a', 'X-A': ['1', '2'] })).toEqual({ accept: 'a', 'x-a': ['1', '2'] });
    expect(normalizeRequestHeaders(['Accept', 'a', 'accept', 'b'])).toEqual({ accept: ['a', 'b'] });
  });
});

describe('LegHandler: one leg against a fake undici controller', () => {
  function leg(verdict: (status: number) => Verdict, onStart?: (c: Controller) => void) {
    const { handler, seen } = recordingHandler(onStart);
    const sink = new UserSink(handler);
    const classified: number[] = [];
    const h = new LegHandler({
      sink,
      classify: (status) => {
        classified.push(status);
        return verdict(status);
      },
      beforeStart: () => {},
      maxDrainBytes: 1024,
      maxDrainMs: 1000,
    });
    const wire = fakeController();
    h.onRequestStart(wire.controller);
    return { h, seen, classified, wire, sink };
  }
  it('a 1xx head is informational: the leg waits for the final status', async () => {
    const { h, seen, classified, wire } = leg(() => 'deliver');
    h.onResponseStart(wire.controller, 100, {}, 'Continue');
    h.onResponseStart(wire.controller, 200, { a: 'b' }, 'OK');
    h.onResponseEnd(wire.controller, {});
    expect(classified).toEqual([200]);
    expect(seen).toEqual(['start 200', 'end']);
    expect((await h.result).kind).toBe('delivered');
  });

  it('M2: a connection error while the final token is being verified reaches the caller once', async () => {
    const gate = deferred();
    const { h, seen, wire } = leg(() => gate.promise);
    h.onResponseStart(wire.controller, 200, {}, 'OK');
    h.onResponseData(wire.controller, Buffer.from('a'));
    h.onResponseError(wire.controller, new Error('reset'));
    const result = await h.result;
    expect(result.kind).toBe('delivered');
    await (result as Extract<LegResult, { kind: 'delivered' }>).done;
    expect(seen).toEqual(['error reset']);
    // The verification settling later delivers nothing more.
    gate.resolve();
    await new Promise((r) => setImmediate(r));
    expect(seen).toEqual(['error reset']);
  });

  it("M2/C3: a final token that fails verification ends the leg for its handshake even when the caller's onResponseError throws (review r58: the handshake never ended, its Auth-ID and slot held for good)", async () => {
    const gate = deferred();
    const sink = new UserSink({
      onResponseError() {
        throw new Error('the caller handler threw');
      },
    });
    const h = new LegHandler({
      sink,
      classify: () => gate.promise,
      beforeStart: () => {},
      maxDrainBytes: 1024,
      maxDrainMs: undefined,
    });
    const wire = fakeController();
    h.onRequestStart(wire.controller);
    h.onResponseStart(wire.controller, 200, {}, 'OK');
    let result: LegResult | undefined;
    void h.result.then((r) => {
      result = r;
    });
    // The caller's throw stops at the sink (a MULTILEG_HANDLER_THREW warning, review r66): no
    // unhandled rejection either.
    const unhandled: unknown[] = [];
    const onUnhandled = (err: unknown) => unhandled.push(err);
    process.on('unhandledRejection', onUnhandled);
    try {
      gate.reject(new Error('bad final token'));
      await new Promise((r) => setImmediate(r));
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    expect(result?.kind).toBe('delivered');
    expect(wire.calls).toEqual(['abort bad final token']);
    expect(unhandled).toEqual([]);
  });

  it('R3/S3: a swallowed challenge whose body has not ended after maxDrainMs counts as swallowed, and the leg is cut', async () => {
    vi.useFakeTimers();
    try {
      const { h, seen, wire } = leg(() => 'swallow');
      h.onResponseStart(wire.controller, 401, { 'www-authenticate': 'NTLM' }, 'Unauthorized');
      h.onResponseData(wire.controller, Buffer.from('x')); // and nothing more
      vi.advanceTimersByTime(999);
      expect(wire.calls).toEqual([]);
      vi.advanceTimersByTime(1);
      // Before: the leg waited for undici's bodyTimeout (300 s by default).
      expect(wire.calls).toEqual(['abort challenge body too slow']);
      // `slow`: the exchange remembers the challenge for the next new session (R1).
      expect(await h.result).toEqual({
        kind: 'swallowed',
        status: 401,
        headers: { 'www-authenticate': 'NTLM' },
        slow: true,
      });
      h.onResponseError(wire.controller, new Error('aborted'));
      expect(seen).toEqual([]);
    } finally {
      vi.useRealTimers();
    }
  });

  it('a swallowed challenge whose body ends in time leaves no timer behind', async () => {
    vi.useFakeTimers();
    try {
      const { h, wire } = leg(() => 'swallow');
      h.onResponseStart(wire.controller, 401, {}, 'Unauthorized');
      h.onResponseEnd(wire.controller, {});
      expect(vi.getTimerCount()).toBe(0);
      expect((await h.result).kind).toBe('swallowed');
    } finally {
      vi.useRealTimers();
    }
  });

  it('a classifier that throws fails the leg; what the wire sends afterwards is ignored', async () => {
    const { h, seen, wire } = leg(() => {
      throw new Error('bad header');
    });
    h.onResponseStart(wire.controller, 401, {}, 'Unauthorized');
    h.onResponseData(wire.controller, Buffer.from('x'));
    h.onResponseEnd(wire.controller, {});
    h.onResponseError(wire.controller, new Error('aborted'));
    expect(await h.result).toEqual({ kind: 'failed', error: new Error('bad header') });
    expect(wire.calls).toEqual(['abort bad header']);
    expect(seen).toEqual([]);
  });
});

describe('RedirectHops: fetch follows a 3xx itself (S5)', () => {
  const from = 'https://a.example';

  it("S5: several Location lines: each follower's reading is a hop (fetch's ', ' join, the interceptor's ',' join, the first); no Location, no hop", () => {
    const hops = new RedirectHops();
    hops.noteResponse(from, '/r', 302, { location: ['https://b.example/one', 'https://b.example/two'] });
    hops.noteResponse(from, '/r', 302, {});
    hops.noteResponse(from, '/r', 302, { location: '' });
    expect(hops.consume('https://b.example', '/two')).toBe(false);
    expect(hops.consume('https://b.example', '/one,%20https://b.example/two')).toBe(true);
    expect(hops.consume('https://b.example', '/one,https://b.example/two')).toBe(true);
    expect(hops.consume('https://b.example', '/one')).toBe(true);
    expect(hops.consume('https://b.example', '/one')).toBe(false);
  });

  it('S5: a Location beyond ASCII is a hop both as fetch reads it (UTF-8) and as its bytes', () => {
    const hops = new RedirectHops();
    // 'café' in UTF-8, as the agent sees header bytes (latin1).
    hops.noteResponse(from, '/r', 302, { location: 'https://b.example/caf\u00c3\u00a9' });
    expect(hops.consume('https://b.example', '/caf%C3%A9')).toBe(true);
    expect(hops.consume('https://b.example', '/caf%C3%83%C2%A9')).toBe(true);
  });

  it('S5: two redirects to the same URL are two hops; a hop too late is not one', () => {
    vi.useFakeTimers();
    const hops = new RedirectHops();
    // Both 3xx delivered before either hop is dispatched (two fetches following at once).
    hops.noteResponse(from, '/r', 307, { location: 'https://b.example/x' });
    hops.noteResponse(from, '/s', 302, { location: 'https://b.example/x' });
    expect(hops.consume('https://b.example', '/x')).toBe(true);
    expect(hops.consume('https://b.example', '/x')).toBe(true);
    expect(hops.consume('https://b.example', '/x')).toBe(false);
    hops.noteResponse(from, '/r', 307, { location: 'https://b.example/x' });
    hops.noteResponse(from, '/r', 307, { location: 'https://b.example/x' });
    expect(hops.consume('https://b.example', '/x')).toBe(true);
    vi.advanceTimersByTime(10_001);
    expect(hops.consume('https://b.example', '/x')).toBe(false);
    expect(hops.consume('https://b.example', '/x')).toBe(false);
  });

  it('S5: memory is bounded: expired hops go first, then the oldest', () => {
    vi.useFakeTimers();
    const hops = new RedirectHops();
    for (let i = 0; i < 500; i++) hops.noteResponse(from, '/r', 302, { location: `https://b.example/old${i}` });
    vi.advanceTimersByTime(10_001);
    for (let i = 0; i < 1000; i++) hops.noteResponse(from, '/r', 302, { location: `https://b.example/new${i}` });
    // Full of live hops: the next one pushes out the oldest, and only it (the 500 expired went
    // first to make room for the new ones: otherwise new0…new499 would be gone).
    hops.noteResponse(from, '/r', 302, { location: 'https://b.example/newest' });
    expect(hops.consume('https://b.example', '/new0')).toBe(false);
    expect(hops.consume('https://b.example', '/new1')).toBe(true);
    expect(hops.consume('https://b.example', '/new499')).toBe(true);
    expect(hops.consume('https://b.example', '/old499')).toBe(false);
    expect(hops.consume('https://b.example', '/newest')).toBe(true);
  });
});

describe('origin memory and session state', () => {
  it('R4: a scheme that could not run here is skipped for a while, then tried again', () => {
    vi.useFakeTimers();
    const memory = new OriginMemory(60_000);
    const why = new Error('no ticket');
    memory.markUnusable('negotiate', why);
    const [[scheme, remembered]] = memory.unusable() as [[string, Error]];
    expect(scheme).toBe('negotiate');
    expect(remembered).toBeInstanceOf(Error);
    const until = new Date(Date.now() + UNUSABLE_MEMORY_MS).toISOString().slice(11, 19);
    expect(remembered.message).toBe(
      `no ticket (remembered for this origin: negotiate is tried here again from ${until} UTC)`,
    );
    vi.advanceTimersByTime(UNUSABLE_MEMORY_MS - 1);
    expect(memory.unusable()).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(memory.unusable()).toEqual([]);
    expect(memory.unusable()).toEqual([]);
  });

  it('R4: a missing or expired Kerberos ticket is remembered for TICKET_RECHECK_MS only (a kinit mends it); an unknown SPN for UNUSABLE_MEMORY_MS', () => {
    vi.useFakeTimers();
    const memory = new OriginMemory(60_000);
    memory.markUnusable('negotiate', new KerberosTicketExpiredError('Ticket expired'));
    vi.advanceTimersByTime(TICKET_RECHECK_MS - 1);
    expect(memory.unusable()).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(memory.unusable()).toEqual([]);
    // Not mended by a kinit: asked again no sooner than before.
    memory.markUnusable('negotiate', new KerberosUnknownServiceError('not found', 'HTTP@x'));
    vi.advanceTimersByTime(UNUSABLE_MEMORY_MS - 1);
    expect(memory.unusable()).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(memory.unusable()).toEqual([]);
  });

  /** A CredentialProof whose refusal memory answers with `recall` and notes each release in `released`. */
  const recallingProof = (recall: RefusalMemory['recall'], released: string[]) => {
    const place = { origin: 'https://o.example', proxy: false, credentials: { username: 'u', password: 'p' } };
    return new CredentialProof('the proof', {
      memory: {
        recall,
        refused: () => {},
        proved: () => {},
        release: () => {
          released.push('release');
        },
      },
      place: () => place,
    });
  };

  it('R1/R4: a refusal memory whose recall never answers holds a probe no longer than queueTimeout: that request goes without the password, the next asks again; one that answers late is released (review r55)', async () => {
    vi.useFakeTimers();
    const released: string[] = [];
    let answerLate: ((r: undefined) => void) | undefined;
    const recalls: Array<() => Promise<undefined> | undefined> = [
      () => new Promise<undefined>(() => {}),
      () =>
        new Promise<undefined>((resolve) => {
          answerLate = resolve;
        }),
      () => undefined,
    ];
    const proof = recallingProof(() => recalls.shift()!(), released);
    const bounds = { maxQueue: 10, queueTimeout: 500 };
    const hung = proof.enter(true, signalWaiter(undefined), bounds);
    expect(hung).toBeInstanceOf(Promise);
    vi.advanceTimersByTime(500);
    // Before: never settled, and every later probe waited behind it (QueueTimeoutError for good).
    expect(await hung).toBe('refused');
    const late = proof.enter(true, signalWaiter(undefined), bounds);
    vi.advanceTimersByTime(500);
    expect(await late).toBe('refused');
    answerLate!(undefined);
    await Promise.resolve();
    // The late recall is released once, when it answers; nothing else was released.
    expect(released).toEqual(['release']);
    const next = (await proof.enter(true, signalWaiter(undefined), bounds)) as Ticket;
    expect(next).toBeInstanceOf(Ticket);
    expect(next.probe).toBe(true);
  });

  it('R4: a request waiting behind a probe whose caller gave up while its recall waited asks the refusal memory in turn when woken as the next probe: it does not send the password unasked; a recall given up at queueTimeout sends the waiters on without it', async () => {
    vi.useFakeTimers();
    const released: string[] = [];
    const recalls: Array<() => Promise<undefined> | { at: number; until: number; times: number }> = [
      () => new Promise<undefined>(() => {}),
      () => ({ at: Date.now() - 1_000, until: Date.now() + 60_000, times: 1 }),
    ];
    let asked = 0;
    const proof = recallingProof(() => {
      asked += 1;
      return recalls.shift()!();
    }, released);
    const bounds = { maxQueue: 10, queueTimeout: 500 };
    const caller = new AbortController();
    const first = proof.enter(true, signalWaiter(caller.signal), bounds);
    // Behind the first's probe (its recall pending): waits.
    const second = proof.enter(true, signalWaiter(undefined), bounds);
    const reason = new Error('caller gone');
    caller.abort(reason);
    await expect(first).rejects.toBe(reason);
    // Before: woken with the probe, unasked (a Ticket: the password went).
    expect(await second).toBe('refused');
    expect(asked).toBe(2);
    expect(proof.refused).toBe(true);
    // Given up at queueTimeout instead, the memory silent: the waiters go without it, unasked.
    const silent = recallingProof(() => {
      asked += 1;
      return new Promise<undefined>(() => {});
    }, released);
    const a = silent.enter(true, signalWaiter(undefined), bounds);
    const b = silent.enter(true, signalWaiter(undefined), bounds);
    vi.advanceTimersByTime(500);
    expect([await a, await b]).toEqual(['refused', 'refused']);
    expect(asked).toBe(3);
  });

  it('R1/R4: a recall that waits is told when the agent gives up on it (its signal, at queueTimeout or the caller\u2019s abort): the memory\u2019s own wait (a poll of another run\u2019s lock) ends with the request\u2019s', async () => {
    vi.useFakeTimers();
    const signals: AbortSignal[] = [];
    const released: string[] = [];
    const proof = recallingProof((_place, signal) => {
      signals.push(signal!);
      // Settles once told (as the command's file does: its poll ends), holding nothing.
      return new Promise<undefined>((resolve) => signal?.addEventListener('abort', () => resolve(undefined)));
    }, released);
    const bounds = { maxQueue: 10, queueTimeout: 500 };
    const timedOut = proof.enter(true, signalWaiter(undefined), bounds);
    expect(signals[0]?.aborted).toBe(false);
    vi.advanceTimersByTime(500);
    expect(await timedOut).toBe('refused');
    // Before: never told; the memory went on waiting for a request that had gone on without it.
    expect(signals[0]?.aborted).toBe(true);
    await Promise.resolve();
    expect(released).toEqual(['release']);
    // The caller's abort (-m) ends the wait too, with its reason, and gives the probe back.
    const caller = new AbortController();
    const aborted = proof.enter(true, signalWaiter(caller.signal), bounds);
    const reason = new Error('caller gone');
    caller.abort(reason);
    await expect(aborted).rejects.toBe(reason);
    expect(signals[1]?.aborted).toBe(true);
    await Promise.resolve();
    expect(released).toEqual(['release', 'release']);
    const next = proof.enter(true, signalWaiter(undefined), bounds);
    expect(next).toBeInstanceOf(Promise);
    expect(signals).toHaveLength(3);
    vi.advanceTimersByTime(500);
    expect(await next).toBe('refused');
  });

  it('R4/R1: a refusal memory that answers at the very instant its recall’s queueTimeout fires: one outcome, whichever is seen first — the timer (the answer only released, the request and its waiters going without the password, recall-timeout) or the answer (the request goes on, its waiters still wait for it, nothing published) — never the one for the request and the other for its waiters (a guard)', async () => {
    vi.useFakeTimers();
    const bounds = { maxQueue: 10, queueTimeout: 500 };
    const headers = { 'www-authenticate': 'Basic realm="r"' };
    /** A probe and a waiter behind it; the memory's own wait ends as the agent's bound does. */
    const atTheBound = () => {
      const released: string[] = [];
      const proof = recallingProof(
        () => new Promise((resolve) => setTimeout(() => resolve(undefined), bounds.queueTimeout)),
        released,
      );
      const probe = proof.enter(true, signalWaiter(undefined), bounds) as Promise<unknown>;
      // (A moment later, so that its own wait does not run out with the recall's.)
      vi.advanceTimersByTime(1);
      const waiter = proof.enter(true, signalWaiter(undefined), bounds) as Promise<unknown>;
      return { proof, released, probe, waiter };
    };
    const publishing = (proof: CredentialProof, a: Promise<unknown>) =>
      publishedDuring<WithheldEvent, unknown>(WITHHELD_CHANNEL, async () => {
        const admission = await a;
        if (admission === 'refused') heldBackAnswer('https://o.example', '/x', proof, headers, bounds.queueTimeout);
        return admission;
      });
    // Both run in one turn (the answer's reaction not yet run): the timer's outcome, for both.
    const timer = atTheBound();
    vi.advanceTimersByTime(bounds.queueTimeout - 1);
    const timedOut = await publishing(timer.proof, timer.probe);
    expect(timedOut.result).toBe('refused');
    expect(await timer.waiter).toBe('refused');
    expect(timedOut.events).toEqual([expect.objectContaining({ reason: 'recall-timeout', queueTimeout: 500 })]);
    expect(timer.released).toEqual(['release']);
    // The answer's reaction runs before the timer (as between Node's timers): the answer's, for both.
    const answer = atTheBound();
    await vi.advanceTimersByTimeAsync(bounds.queueTimeout - 1);
    const went = await publishing(answer.proof, answer.probe);
    expect(went.result).toBeInstanceOf(Ticket);
    expect(went.events).toEqual([]);
    let waited: unknown = 'waiting';
    void answer.waiter.then((w) => {
      waited = w;
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(waited).toBe('waiting');
    answer.proof.settle(went.result as Ticket, 'success');
    expect(await answer.waiter).toBeInstanceOf(Ticket);
    expect(answer.released).toEqual(['release']);
  });

  it('R1/R4: a request that would go bare while a recall waits is held (CredentialProof.watch) until nothing is being proved: decided once the probe it let go ends (proved) or the memory holds the password back, withheld when the recall gives up at queueTimeout (before the watch\u2019s own bound), and the caller\u2019s abort or the agent\u2019s end ends it at once', async () => {
    vi.useFakeTimers();
    const released: string[] = [];
    const bounds = { maxQueue: 10, queueTimeout: 500 };
    const watching = (proof: CredentialProof, signal?: AbortSignal) => {
      const seen: { value?: unknown } = {};
      const done = proof.watch(signalWaiter(signal), bounds).then(
        (w) => {
          seen.value = w;
        },
        (err: unknown) => {
          seen.value = err;
        },
      );
      return { seen, done };
    };
    // Nothing being proved: it goes on at once.
    expect(await new CredentialProof('the proof').watch(signalWaiter(undefined), bounds)).toBe('decided');
    // The memory answers after 50 ms, remembering nothing: held through the probe's handshake too.
    const later = (answer: { at: number; until: number; times: number } | undefined) =>
      recallingProof(() => new Promise((resolve) => setTimeout(() => resolve(answer), 50)), released);
    const proof = later(undefined);
    const probe = proof.enter(true, signalWaiter(undefined), bounds);
    expect(proof.recalling).toBe(true);
    const w = watching(proof);
    await vi.advanceTimersByTimeAsync(50);
    const ticket = (await probe) as Ticket;
    expect(ticket.probe).toBe(true);
    expect(w.seen.value).toBeUndefined();
    proof.settle(ticket, 'success');
    await w.done;
    expect(w.seen.value).toBe('decided');
    expect(proof.proved).toBe(true);
    // Held back by the memory: decided (a request then goes without the password: refused here).
    const held = later({ at: Date.now() - 1_000, until: Date.now() + 60_000, times: 1 });
    const heldProbe = held.enter(true, signalWaiter(undefined), bounds);
    const h = watching(held);
    await vi.advanceTimersByTimeAsync(50);
    expect(await heldProbe).toBe('refused');
    await h.done;
    expect(h.seen.value).toBe('decided');
    expect(held.refused).toBe(true);
    // The memory silent: the recall gives up at queueTimeout and the watcher goes without the
    // password (withheld), not failed by its own bound, which began after the recall's.
    const silent = recallingProof(() => new Promise<undefined>(() => {}), released);
    const silentProbe = silent.enter(true, signalWaiter(undefined), bounds);
    const s = watching(silent);
    await vi.advanceTimersByTimeAsync(500);
    expect(await silentProbe).toBe('refused');
    await s.done;
    expect(s.seen.value).toBe('withheld');
    // The caller's abort ends the watch with its reason; the agent's end with its error (R1).
    const ended = recallingProof(() => new Promise<undefined>(() => {}), released);
    void (ended.enter(true, signalWaiter(undefined), bounds) as Promise<unknown>).catch(() => {});
    const caller = new AbortController();
    const a = watching(ended, caller.signal);
    const e = watching(ended);
    const reason = new Error('caller gone');
    caller.abort(reason);
    await a.done;
    expect(a.seen.value).toBe(reason);
    const closed = new Error('agent closed');
    ended.end(closed);
    await e.done;
    expect(e.seen.value).toBe(closed);
    await expect(ended.watch(signalWaiter(undefined), bounds)).rejects.toBe(closed);
    // The probe's caller gone while its recall waits, the probe handed on to a request waiting for
    // leave (which asks the memory anew): the watcher goes on now, once, not through a second recall
    // begun past its own bound.
    const handed = recallingProof(() => new Promise<undefined>(() => {}), released);
    const gone = new AbortController();
    const first = handed.enter(true, signalWaiter(gone.signal), bounds) as Promise<unknown>;
    const waiting = handed.enter(true, signalWaiter(undefined), bounds) as Promise<unknown>;
    const x = watching(handed);
    gone.abort(reason);
    await expect(first).rejects.toBe(reason);
    await x.done;
    expect(x.seen.value).toBe('decided');
    expect(handed.recalling).toBe(true);
    await vi.advanceTimersByTimeAsync(500);
    expect(await waiting).toBe('refused');
  });

  it("R1/R4: a watcher whose own bound ends while the recall it watches still waits (in practice the same millisecond: the queue's deadline is Date.now()'s) goes withheld, not QueueTimeoutError", async () => {
    vi.useFakeTimers();
    const proof = recallingProof(() => new Promise<undefined>(() => {}), []);
    const probe = proof.enter(true, signalWaiter(undefined), { maxQueue: 10, queueTimeout: 500 });
    expect(proof.recalling).toBe(true);
    // A shorter bound stands for the one that fires a millisecond before the recall's.
    const watched = proof.watch(signalWaiter(undefined), { maxQueue: 10, queueTimeout: 100 }).catch((e: Error) => e);
    await vi.advanceTimersByTimeAsync(100);
    // Before: QueueTimeoutError ("the outcome of another connection's authentication").
    expect(await watched).toBe('withheld');
    expect(proof.recalling).toBe(true);
    await vi.advanceTimersByTimeAsync(400);
    expect(await probe).toBe('refused');
  });

  it('R1/R4: the answer a withheld request got (CredentialProof.withheldAnswer) is kept for the others, the first one standing, and forgotten when the credentials are replaced, a refusal is lifted or met, they succeed, or after UNUSABLE_MEMORY_MS', async () => {
    vi.useFakeTimers();
    const proof = new CredentialProof('the proof');
    const first = new Error('407 one');
    const keep = () => {
      proof.keepWithheldAnswer(first);
      proof.keepWithheldAnswer(new Error('407 two'));
      expect(proof.withheldAnswer).toBe(first);
    };
    expect(proof.withheldAnswer).toBeUndefined();
    keep();
    proof.reset();
    expect(proof.withheldAnswer).toBeUndefined();
    keep();
    const ticket = proof.admit(true) as Ticket;
    proof.settle(ticket, 'success');
    expect(proof.withheldAnswer).toBeUndefined();
    keep();
    // Proved, then refused: one more handshake decides (again); refused again: held back.
    const again = proof.admit(true) as Ticket;
    proof.settle(again, 'refused');
    expect(proof.withheldAnswer).toBeUndefined();
    const last = proof.admit(true) as Ticket;
    proof.settle(last, 'refused');
    expect(proof.refused).toBe(true);
    keep();
    expect(proof.liftRefusal()).toBe(true);
    expect(proof.withheldAnswer).toBeUndefined();
    keep();
    vi.advanceTimersByTime(UNUSABLE_MEMORY_MS - 1);
    expect(proof.withheldAnswer).toBe(first);
    vi.advanceTimersByTime(1);
    expect(proof.withheldAnswer).toBeUndefined();
  });

  it("R1/R4: CredentialProof.onRecall tells its listeners (a proxy's pools) once each time a recall of the refusal memory begins to wait — the probe's, and that of a waiter handed the probe — the recall running when told; not for a handshake waiting behind it (a burst's every tunnel told every pool: task ih), nor for leave given at once, a recall answered at once, nor once stopped", async () => {
    vi.useFakeTimers();
    const bounds = { maxQueue: 10, queueTimeout: 500 };
    const later = () => new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 50));
    const recalls: Array<() => Promise<undefined> | undefined> = [later, later, () => undefined, later];
    const proof = recallingProof(() => recalls.shift()!(), []);
    const told: boolean[] = [];
    const stop = proof.onRecall(() => told.push(proof.recalling));
    // The probe asks the memory, which answers 50 ms later: it waits, and the recall runs as it is told.
    const caller = new AbortController();
    const probe = proof.enter(true, signalWaiter(caller.signal), bounds);
    expect(told).toEqual([true]);
    // Another password behind it waits for its outcome: no recall of its own begins.
    const behind = proof.enter(true, signalWaiter(undefined), bounds);
    expect(behind).toBeInstanceOf(Promise);
    expect(told).toEqual([true]);
    // The probe's caller gives up: the one behind is handed the probe and asks the memory in turn.
    caller.abort(new Error('caller gone'));
    await expect(probe).rejects.toThrow('caller gone');
    expect(told).toEqual([true, true]);
    await vi.advanceTimersByTimeAsync(50);
    proof.settle((await behind) as Ticket, 'success');
    // Proved lately: leave at once, nothing to tell.
    expect(proof.enter(true, signalWaiter(undefined), bounds)).toBeInstanceOf(Ticket);
    // Stale: the next probe asks again; the memory answers at once, so no recall waits.
    vi.advanceTimersByTime(PROOF_FRESH_MS);
    const atOnce = proof.enter(true, signalWaiter(undefined), bounds);
    expect(atOnce).toBeInstanceOf(Ticket);
    expect(told).toHaveLength(2);
    proof.settle(atOnce as Ticket, 'success');
    stop();
    vi.advanceTimersByTime(PROOF_FRESH_MS);
    const next = proof.enter(true, signalWaiter(undefined), bounds);
    expect(next).toBeInstanceOf(Promise);
    expect(told).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(50);
    await next;
  });

  it('R4: credentials are tried one handshake at a time until proved; then side by side while the proof is fresh', async () => {
    vi.useFakeTimers();
    const proof = new CredentialProof('the proof');
    const bounds = { maxQueue: 10, queueTimeout: 5_000 };
    const first = proof.admit(true) as Ticket;
    expect(first).toBeInstanceOf(Ticket);
    expect(first.probe).toBe(true);
    expect(proof.admit(true)).toBeUndefined();
    expect(proof.admit(false)).toBeUndefined();
    const waiting = [proof.wait(signalWaiter(undefined), bounds), proof.wait(signalWaiter(undefined), bounds)];
    proof.settle(first, 'success');
    const released = (await Promise.all(waiting)) as Ticket[];
    expect(released.map((t) => t.probe)).toEqual([false, false]);
    expect((proof.admit(true) as Ticket).probe).toBe(false);
    // A quiet spell: a password's next handshake goes alone; one without a password need not.
    vi.advanceTimersByTime(PROOF_FRESH_MS);
    expect((proof.admit(false) as Ticket).probe).toBe(false);
    const probe = proof.admit(true) as Ticket;
    expect(probe.probe).toBe(true);
    expect(proof.admit(true)).toBeUndefined();
    // An outcome that says nothing (an abort, a 5xx) hands the probe to the next waiter only.
    const [a, b] = [proof.wait(signalWaiter(undefined), bounds), proof.wait(signalWaiter(undefined), bounds)];
    proof.settle(probe, 'none');
    const next = (await a) as Ticket;
    expect(next.probe).toBe(true);
    proof.settle(next, 'success');
    expect(((await b) as Ticket).probe).toBe(false);
  });

  it('R4: refused after proof, one more handshake decides; a second refusal in a row keeps the credentials back for UNUSABLE_MEMORY_MS', async () => {
    vi.useFakeTimers();
    const proof = new CredentialProof('the proof');
    const bounds = { maxQueue: 10, queueTimeout: 60_000 };
    proof.settle(proof.admit(true) as Ticket, 'success');
    const [x, y] = [proof.admit(true) as Ticket, proof.admit(true) as Ticket];
    proof.settle(x, 'refused');
    expect([proof.proved, proof.refused]).toEqual([false, false]);
    // y was admitted before that refusal: its success (checked before the change?) proves nothing.
    proof.settle(y, 'success');
    expect(proof.proved).toBe(false);
    const second = proof.admit(true) as Ticket;
    expect(second.probe).toBe(true);
    const waiters = [proof.wait(signalWaiter(undefined), bounds), proof.wait(signalWaiter(undefined), bounds)];
    proof.settle(second, 'refused');
    expect(await Promise.all(waiters)).toEqual(['refused', 'refused']);
    expect(proof.admit(true)).toBe('refused');
    vi.advanceTimersByTime(UNUSABLE_MEMORY_MS);
    // Then one tries again; refused again, they are held back again at once (still not proved).
    const retry = proof.admit(true) as Ticket;
    expect(retry.probe).toBe(true);
    proof.settle(retry, 'refused');
    expect(proof.admit(false)).toBe('refused');
  });

  it('R4: credentials refused again after the wait are kept back twice as long each time (30 s, 1 min, 2 min … 30 min), not tried every 30 s; refusals already in flight add nothing; a success starts over', () => {
    vi.useFakeTimers();
    const proof = new CredentialProof('the proof');
    // Never proved: 40 handshakes of one burst refused together count as one refusal.
    const burst = Array.from({ length: 40 }, () => new Ticket(false, 0));
    for (const t of burst) proof.settle(t, 'refused');
    const waits: number[] = [];
    for (let i = 0; i < 9; i++) {
      waits.push(proof.refusedFor);
      vi.advanceTimersByTime(proof.refusedFor);
      const retry = proof.admit(true) as Ticket;
      expect(retry.probe).toBe(true);
      proof.settle(retry, 'refused');
    }
    expect(waits).toEqual([30, 60, 120, 240, 480, 960, 1800, 1800, 1800].map((s) => s * 1000));
    // Tries in the first 30 minutes: the burst's, then at 0.5, 1.5, 3.5, 7.5 and 15.5 min (60 at every 30 s).
    vi.advanceTimersByTime(proof.refusedFor);
    proof.settle(proof.admit(true) as Ticket, 'success');
    expect([proof.proved, proof.refusedFor]).toEqual([true, 0]);
    vi.advanceTimersByTime(PROOF_FRESH_MS);
    proof.settle(proof.admit(true) as Ticket, 'refused');
    proof.settle(proof.admit(true) as Ticket, 'refused');
    expect(proof.refusedFor).toBe(UNUSABLE_MEMORY_MS);
    expect(MAX_REFUSED_MEMORY_MS).toBe(30 * 60_000);
  });

  it('R4: a handshake refused that sent no password (a Kerberos ticket) keeps the credentials back 30 s each time, not doubling; it adds nothing to the doubling of a refused password', () => {
    vi.useFakeTimers();
    const proof = new CredentialProof('the proof');
    const waits: number[] = [];
    for (let i = 0; i < 3; i++) {
      const retry = proof.admit(false) as Ticket;
      expect(retry.probe).toBe(true);
      proof.settle(retry, 'refused-no-password');
      waits.push(proof.refusedFor);
      expect(proof.admit(false)).toBe('refused');
      vi.advanceTimersByTime(proof.refusedFor);
    }
    // Was 30 s, 1 min, 2 min (as for a password): a kinit or a fixed keytab waited up to 30 min.
    expect(waits).toEqual([UNUSABLE_MEMORY_MS, UNUSABLE_MEMORY_MS, UNUSABLE_MEMORY_MS]);
    // A password refused next still starts its doubling at 30 s, and doubles.
    for (let i = 0; i < 3; i++) {
      proof.settle(proof.admit(true) as Ticket, 'refused');
      waits.push(proof.refusedFor);
      vi.advanceTimersByTime(proof.refusedFor);
    }
    expect(waits.slice(3)).toEqual([30, 60, 120].map((s) => s * 1000));
    // A ticket refused in between waits 30 s and leaves the password's next wait where it was.
    proof.settle(proof.admit(false) as Ticket, 'refused-no-password');
    expect(proof.refusedFor).toBe(UNUSABLE_MEMORY_MS);
    vi.advanceTimersByTime(proof.refusedFor);
    proof.settle(proof.admit(true) as Ticket, 'refused');
    expect(proof.refusedFor).toBe(240_000);
  });

  it('R4: a Digest answer to a remembered nonce that is refused is tried once more only while the credentials were proved', () => {
    const proof = new CredentialProof('the proof');
    proof.settle(proof.admit(true) as Ticket, 'success');
    const ticket = proof.admit(true) as Ticket;
    expect(proof.again(ticket)).toBe(true);
    expect(ticket.probe).toBe(true);
    // The renewal is refused too: that counts once (the second in a row), not twice.
    proof.settle(ticket, 'refused');
    expect(proof.refused).toBe(true);
    const doubted = new CredentialProof('the proof');
    doubted.settle(doubted.admit(true) as Ticket, 'success');
    doubted.settle(doubted.admit(true) as Ticket, 'refused');
    const t = doubted.admit(true) as Ticket;
    expect(doubted.again(t)).toBe(false);
    expect(doubted.refused).toBe(true);
    doubted.settle(t, 'refused');
    doubted.settle(t, 'success');
    expect([doubted.refused, doubted.proved]).toEqual([true, false]);
    // Another handshake is proving them: no second try; the one refusal is counted once.
    vi.useFakeTimers();
    const busy = new CredentialProof('the proof');
    busy.settle(busy.admit(true) as Ticket, 'success');
    vi.advanceTimersByTime(PROOF_FRESH_MS);
    const running = busy.admit(true) as Ticket;
    const other = busy.admit(false) as Ticket;
    expect([running.probe, other.probe]).toEqual([true, false]);
    expect(busy.again(other)).toBe(false);
    busy.settle(other, 'refused');
    expect([busy.proved, busy.refused]).toEqual([false, false]);
  });

  it('R1: a wait for the proof is bounded by queueTimeout and ends with the caller', async () => {
    vi.useFakeTimers();
    const proof = new CredentialProof('the outcome of the proof');
    const probe = proof.admit(true) as Ticket;
    const late = proof.wait(signalWaiter(undefined), { maxQueue: 10, queueTimeout: 100 });
    const stop = new AbortController();
    const aborted = proof.wait(signalWaiter(stop.signal), { maxQueue: 10, queueTimeout: 100 });
    stop.abort(new Error('given up'));
    await expect(aborted).rejects.toThrow('given up');
    vi.advanceTimersByTime(100);
    await expect(late).rejects.toThrow(QueueTimeoutError);
    await expect(late).rejects.toThrow('the outcome of the proof');
    proof.settle(probe, 'success');
    expect(proof.proved).toBe(true);
  });

  it('C8: a second close keeps the first close (and its reason)', () => {
    const closed = transition(FRESH, { type: 'closed', http1Required: true });
    expect(transition(closed, { type: 'closed' })).toBe(closed);
    expect(closed).toEqual({ kind: 'closed', http1Required: true });
  });
});

/** A session of the agent's own requests to `origin`, with the default limits and no pool behind it. */
function agentSession(origin: string, tls: ConnectionOptions = {}): Session {
  return new Session({
    origin,
    lane: 'auto',
    identity: 'agent',
    tls,
    keepAliveTimeout: 1000,
    headersTimeout: 300_000,
    bodyTimeout: 300_000,
    maxConcurrentStreams: 100,
    limits: DEFAULT_LIMITS,
    onChange: () => {},
  });
}

describe('Session: nothing goes on a session after it ended', () => {
  it('R5: a leg for a session that has closed (GOAWAY, reset) fails as stale, and no stream or connection is opened', async () => {
    let connections = 0;
    const server = createServer((socket) => {
      connections += 1;
      socket.destroy();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    const session = agentSession(`https://localhost:${port}`);
    try {
      session.apply({ type: 'closed' });
      const result = await session.send(job(1), { authorization: 'NTLM x' }, () => 'deliver');
      expect(result.kind).toBe('failed');
      expect((result as { error: Error }).error).toBeInstanceOf(StaleConnectionError);
      expect(connections).toBe(0);
    } finally {
      await session.client.destroy().catch(() => {});
      await new Promise((r) => server.close(r));
    }
  });
});

describe('tls-server-end-point channel binding (RFC 5929 §4.1)', () => {
  const openssl = findBin('/usr/bin/openssl');
  const cert = (args: string[]) =>
    new X509Certificate(
      execFileSync(openssl!, [
        'req',
        '-x509',
        '-nodes',
        '-subj',
        '/CN=cb',
        '-days',
        '1',
        '-keyout',
        '/dev/null',
        ...args,
      ]),
    );

  it.runIf(openssl || process.env.CI === 'true')(
    'M5: a certificate signed with SHA-384 or SHA-512 binds with that hash, SHA-256 otherwise',
    () => {
      for (const [args, hash] of [
        [['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-sha384'], 'sha384'],
        [['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-sha512'], 'sha512'],
        [['-newkey', 'rsa:2048', '-sha384'], 'sha384'],
        [['-newkey', 'rsa:2048', '-sha512'], 'sha512'],
        [['-newkey', 'rsa:2048', '-sha1'], 'sha256'],
      ] as const) {
        const c = cert([...args]);
        expect(tlsServerEndPoint(c), args.join(' ')).toEqual(createHash(hash).update(c.raw).digest());
      }
      expect(tlsServerEndPoint(undefined)).toBeUndefined();
    },
  );
});

describe("a session connector's early connection (M5: a bound first token needs the certificate)", () => {
  /** A TLS server on `host` that counts its connections and keeps them open. */
  async function tlsServer(host: string) {
    const { createServer: createTlsServer } = await import('node:tls');
    const { CA_CERT, SERVER_CERT, SERVER_KEY } = await import('../src/reference-server/test-pki.ts');
    const sockets = new Set<import('node:net').Socket>();
    const server = createTlsServer({ cert: SERVER_CERT, key: SERVER_KEY, ALPNProtocols: ['h2'] });
    // Counted from the TCP accept: TLS 1.3 lets the client finish before the server does.
    server.on('connection', (s: import('node:net').Socket) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    });
    await new Promise<void>((resolve) => server.listen(0, host, resolve));
    const port = (server.address() as import('node:net').AddressInfo).port;
    return {
      port,
      ca: CA_CERT,
      sockets,
      close: () => {
        for (const s of sockets) s.destroy();
        return new Promise<void>((resolve) => server.close(() => resolve()));
      },
    };
  }
  /** What undici's Client does when it needs a connection to localhost:`port`. */
  const undiciAsks = (c: SessionConnector, port: number) =>
    new Promise<import('node:net').Socket>((resolve, reject) =>
      c.connect(
        { host: `localhost:${port}`, hostname: 'localhost', protocol: 'https:', port: String(port) },
        (e, so) => (e ? reject(e) : resolve(so as import('node:net').Socket)),
      ),
    );
  const until = async (cond: () => boolean) => {
    while (!cond()) await new Promise((r) => setTimeout(r, 5));
  };

  it('M5: open() connects once and reports it; undici is then handed that same connection', async () => {
    const s = await tlsServer('127.0.0.1');
    try {
      const infos: ConnectionInfo[] = [];
      const origin = `https://localhost:${s.port}`;
      const c = sessionConnector(origin, { ca: s.ca }, true, (i) => infos.push(i));
      await Promise.all([c.open!(), c.open!()]);
      expect(infos).toMatchObject([{ generation: 1, protocol: 'h2' }]);
      expect(infos[0]!.channelBinding?.length).toBeGreaterThan(0);
      const socket = await undiciAsks(c, s.port);
      expect(infos).toHaveLength(1); // the same connection, not a second one
      expect(s.sockets.size).toBe(1);
      socket.destroy();
    } finally {
      await s.close();
    }
  });

  it('M5: an early connection undici never took is closed with the session', async () => {
    const s = await tlsServer('127.0.0.1');
    try {
      const c = sessionConnector(`https://localhost:${s.port}`, { ca: s.ca }, true, () => {});
      await c.open!();
      await until(() => s.sockets.size === 1);
      c.dispose();
      await until(() => s.sockets.size === 0);
      expect(s.sockets.size).toBe(0);
    } finally {
      await s.close();
    }
  });

  it('M5: an early connection that fails hands undici its error, as if undici had dialled', async () => {
    const port = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, '127.0.0.1', () => {
        const p = (probe.address() as import('node:net').AddressInfo).port;
        probe.close(() => resolve(p));
      });
    });
    let reported = 0;
    const c = sessionConnector(`https://127.0.0.1:${port}`, {}, true, () => reported++);
    await expect(c.open!()).resolves.toBeUndefined();
    const err = await new Promise<Error | null>((resolve) =>
      c.connect(
        { host: `127.0.0.1:${port}`, hostname: '127.0.0.1', protocol: 'https:', port: String(port) },
        (...args) => resolve(args[0]),
      ),
    );
    expect(err).toMatchObject({ code: 'ECONNREFUSED' });
    expect(reported).toBe(0);
  });

  it('M5: an early connection still being made when the session closes is closed once it is up; one undici took stays open', async () => {
    const s = await tlsServer('127.0.0.1');
    try {
      const origin = `https://localhost:${s.port}`;
      const closed = sessionConnector(origin, { ca: s.ca }, true, () => {});
      const opening = closed.open!();
      closed.dispose();
      await opening;
      await until(() => s.sockets.size === 0);

      const taken = sessionConnector(origin, { ca: s.ca }, true, () => {});
      void taken.open!();
      const socket = await undiciAsks(taken, s.port);
      taken.dispose();
      expect(socket.destroyed).toBe(false);
      socket.destroy();
    } finally {
      await s.close();
    }
  });

  it('M5: an IPv6 literal origin is dialled without its brackets', async () => {
    const s = await tlsServer('::1');
    try {
      const infos: ConnectionInfo[] = [];
      const c = sessionConnector(
        `https://[::1]:${s.port}`,
        { ca: s.ca, checkServerIdentity: () => undefined },
        true,
        (i) => infos.push(i),
      );
      await c.open!();
      expect(infos).toMatchObject([{ protocol: 'h2' }]);
      c.dispose();
    } finally {
      await s.close();
    }
  });
});

describe('a lead chosen a microtask before it starts (the answer step awaits)', () => {
  it("C1: two requests answering 401s on one session in the same tick: the second joins the first one's handshake, no IllegalTransitionError reaches its caller", async () => {
    const { startReferenceServer } = await import('../src/reference-server/index.ts');
    const { ntlmMechanism } = await import('../src/mechanisms/ntlm/index.ts');
    const { MechanismSet } = await import('../src/mechanisms/registry.ts');
    const { readChallenges } = await import('../src/challenge/headers.ts');
    const { runOnSession } = await import('../src/session/exchange.ts');
    const server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    const session = agentSession(server.origin, { ca: server.ca });
    const env = {
      memory: new OriginMemory(60_000, server.origin),
      mechanisms: new MechanismSet([ntlmMechanism(ALICE)], ['NTLM']),
      limits: DEFAULT_LIMITS,
      report: () => {},
      identityProved: () => {},
    };
    const statuses: number[] = [];
    const request = (id: number): Job => {
      const sink = new UserSink({
        onResponseStart: (_c: unknown, status: number) => statuses.push(status),
        onResponseData: () => {},
        onResponseEnd: () => {},
        onResponseError: () => {},
      } as unknown as Dispatcher.DispatchHandler);
      const opts = { origin: server.origin, path: `/auth/${id}`, method: 'GET' as const, headers: {} };
      const body = prepareBody(undefined, DEFAULT_LIMITS.maxReplayBodyBytes) as PreparedBody;
      const job = newJob(server.origin, opts, {}, body, sink, 'agent', undefined);
      // Each met the server's 401 (bare sends side by side, a scheme found unusable): its challenges answer it here.
      job.challenges = readChallenges({ 'www-authenticate': 'NTLM' });
      return job;
    };
    try {
      // Both choose to lead before either starts: each answer step resolves a tick later.
      const outcomes = await Promise.all([
        runOnSession(session, request(1), env),
        runOnSession(session, request(2), env),
      ]);
      // Before: the second rejected with "session: event handshake-start is not allowed in state handshaking".
      expect(outcomes.map((o) => o.kind)).toEqual(['done', 'fast']);
      for (const o of outcomes) if (o.kind === 'done') await o.done;
      expect(statuses).toEqual([200]);
      expect(session.state.kind).toBe('authenticated');
      // One handshake on the wire: NEGOTIATE and AUTHENTICATE; the second request waited for it.
      expect(server.exchanges.map((e) => e.status)).toEqual([401, 200]);
    } finally {
      await session.client.destroy().catch(() => {});
      await server.close();
    }
  });
});
