import { AgentClosedError, MultilegError } from '../errors.ts';
import { log } from '../log.ts';
import type { MechanismSet } from '../mechanisms/registry.ts';
import type { ResolvedOptions } from '../options.ts';
import type { ProxyRoute } from '../proxy/options.ts';
import { type ExchangeEnv, type ExchangeOutcome, type HandshakeReport, runOnSession } from './exchange.ts';
import type { Job } from './job.ts';
import { OriginMemory } from './origin-memory.ts';
import { type Identity, type Lane, Session } from './session.ts';
import { WaitQueue } from './wait-queue.ts';

const DONE: ExchangeOutcome = { kind: 'done', done: Promise.resolve() };

/** Relocations per request: enough for "HTTP/1.1 required" plus a lost connection or two. */
const MAX_RELOCATIONS = 4;

export class RelocationLimitError extends MultilegError {
  constructor() {
    super(
      'MULTILEG_RELOCATION_LIMIT',
      `request was moved to a new connection ${MAX_RELOCATIONS} times (connections keep ending or refusing it); check the server or the network`,
    );
  }
}

/** One key per (lane, identity), made once rather than per request. */
const WAIT_KEYS: Record<Lane, Record<Identity, string>> = {
  auto: { agent: 'auto/agent', anonymous: 'auto/anonymous', caller: 'auto/caller' },
  http1: { agent: 'http1/agent', anonymous: 'http1/anonymous', caller: 'http1/caller' },
};

/**
 * The sessions of one origin: an HTTP/2-capable lane (normally one multiplexed session) and an
 * HTTP/1.1 lane (several connections, each bound to its handshake, H1). It knows what the agent
 * learnt about the origin and moves requests between sessions when one ends or refuses them.
 */
export class OriginPool {
  readonly origin: string;
  readonly memory: OriginMemory;
  readonly #sessions: Session[] = [];
  /** Requests waiting for a session with room, per lane and identity (R1: bounded like every wait). */
  readonly #waiting = new Map<string, { lane: Lane; identity: Identity; queue: WaitQueue<Session> }>();
  #closed = false;
  readonly #options: ResolvedOptions;
  readonly #env: ExchangeEnv;
  /** Through a proxy (H5), decided once for the origin. */
  readonly #route: ProxyRoute | undefined;
  #sessionsCreated = 0;

  constructor(
    origin: string,
    options: ResolvedOptions,
    mechanisms: MechanismSet,
    report: (r: HandshakeReport) => void,
  ) {
    this.origin = origin;
    this.#options = options;
    this.memory = new OriginMemory(options.http1MemoryTtl);
    this.#route = options.proxy.route(origin);
    if (this.#route) log.pool('%s via %s proxy %s', origin, this.#route.kind, this.#route.proxy.origin);
    this.#env = {
      memory: this.memory,
      mechanisms,
      limits: options.limits,
      ...(options.clientCertificate ? { selectCertificate: options.clientCertificate } : {}),
      report,
    };
  }

  get sessionsCreated(): number {
    return this.#sessionsCreated;
  }

  get sessions(): readonly Session[] {
    return this.#sessions;
  }

  /** Nothing open and nothing waiting: the agent may drop this pool. */
  get idle(): boolean {
    if (this.#sessions.some((s) => !s.closed || s.inflight > 0)) return false;
    for (const w of this.#waiting.values()) if (w.queue.length > 0) return false;
    return true;
  }

  /** Runs a request to its end, relocating it between sessions as needed. Never throws. */
  async run(job: Job): Promise<void> {
    for (;;) {
      if (this.#closed) {
        job.sink.fail(new AgentClosedError());
        return;
      }
      const lane: Lane = job.http1Only || this.memory.requiresHttp1 ? 'http1' : 'auto';
      let session: Session;
      try {
        session = await this.#acquire(lane, job);
      } catch (err) {
        job.sink.fail(err as Error);
        return;
      }
      let outcome: ExchangeOutcome;
      try {
        outcome = await runOnSession(session, job, this.#env);
      } catch (err) {
        // A bug, not a network condition: the caller still gets an error, never a hang.
        job.sink.fail(err as Error);
        outcome = DONE;
      }
      if (outcome.kind === 'done') {
        outcome.done.finally(() => session.release());
        return;
      }
      session.release();
      log.pool('%s job %d relocates from %s: %s', this.origin, job.id, session.id, outcome.reason);
      if (outcome.reason === 'misdirected') session.apply({ type: 'closed' });
      if (outcome.reason === 'http1') this.memory.rememberHttp1();
      job.relocations += 1;
      if (job.relocations > MAX_RELOCATIONS) {
        job.sink.fail(new RelocationLimitError());
        return;
      }
    }
  }

  #maxSessions(lane: Lane, identity: Identity): number {
    if (lane === 'http1') return this.#options.maxHttp1Connections;
    // An "auto" session that negotiated HTTP/1.1 serves one request at a time: allow more of them.
    const h1 = this.#sessions.some((s) => this.#usable(s, 'auto', identity) && s.protocol === 'http/1.1');
    return h1 ? this.#options.maxHttp1Connections : 1;
  }

  /**
   * Sessions that may carry new requests: the lane's, of the request's identity (S6), and with the
   * certificate once one is in use (T3).
   */
  #usable(s: Session, lane: Lane, identity: Identity): boolean {
    return (
      s.lane === lane &&
      s.identity === identity &&
      !s.closed &&
      s.certified === (identity === 'agent' && this.memory.clientCertificate !== undefined)
    );
  }

  #pick(lane: Lane, identity: Identity): Session | undefined {
    let best: Session | undefined;
    let bestScore = -1;
    for (const s of this.#sessions) {
      if (!this.#usable(s, lane, identity) || s.inflight >= s.capacity) continue;
      // Prefer a connection that is already authenticated: it needs no handshake (H1).
      const score = s.state.kind === 'authenticated' ? 2 : s.state.kind === 'per-request' ? 1 : 0;
      if (score > bestScore) {
        best = s;
        bestScore = score;
      }
    }
    return best;
  }

  #acquire(lane: Lane, job: Job): Promise<Session> {
    const ready = this.#take(lane, job.identity);
    if (ready) return Promise.resolve(ready);
    const key = WAIT_KEYS[lane][job.identity];
    let waiting = this.#waiting.get(key);
    if (!waiting) {
      const what = `a connection to ${this.origin} (a new session's first response, or a free HTTP/1.1 connection)`;
      waiting = { lane, identity: job.identity, queue: new WaitQueue<Session>(this.#options.limits, what) };
      this.#waiting.set(key, waiting);
    }
    return waiting.queue.wait(job);
  }

  /** A session with room for one more request, creating one if the lane allows; marks it used. */
  #take(lane: Lane, identity: Identity): Session | undefined {
    let session = this.#pick(lane, identity);
    if (!session) {
      const open = this.#sessions.filter((s) => this.#usable(s, lane, identity)).length;
      if (open >= this.#maxSessions(lane, identity)) return undefined;
      session = this.#create(lane, identity);
    }
    session.acquire();
    return session;
  }

  #create(lane: Lane, identity: Identity): Session {
    // Only the agent's own sessions present its client certificate: it is a credential too.
    const certificate = identity === 'agent' ? this.memory.clientCertificate : undefined;
    const session = new Session({
      origin: this.origin,
      lane,
      identity,
      tls: certificate ? { ...this.#options.connect, ...certificate } : this.#options.connect,
      certified: certificate !== undefined,
      keepAliveTimeout: this.#options.keepAliveTimeout,
      maxConcurrentStreams: this.#options.maxConcurrentStreams,
      limits: this.#options.limits,
      onChange: () => this.#pump(),
      ...(this.#route ? { route: this.#route, onRemoteHttp1: () => this.memory.rememberHttp1() } : {}),
    });
    this.#sessionsCreated += 1;
    this.#sessions.push(session);
    log.pool('%s new session %s (%s, %s)', this.origin, session.id, lane, identity);
    return session;
  }

  /** Hands freed capacity to waiting requests, in arrival order per lane and identity. */
  #pump(): void {
    for (let i = this.#sessions.length - 1; i >= 0; i--) {
      const s = this.#sessions[i]!;
      if (s.closed && s.inflight === 0) this.#sessions.splice(i, 1);
    }
    if (this.#closed) return;
    for (const { lane, identity, queue } of this.#waiting.values()) {
      while (queue.length > 0) {
        const s = this.#take(lane, identity);
        if (!s) break;
        // A waiter that went away meanwhile gives the place back.
        if (!queue.shift(s)) s.release();
      }
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#sessions.map((s) => s.client.close().catch(() => {})));
  }

  async destroy(err: Error): Promise<void> {
    this.#closed = true;
    for (const { queue } of this.#waiting.values()) queue.settleAll(undefined, err);
    await Promise.all(this.#sessions.map((s) => s.client.destroy(err).catch(() => {})));
  }
}
