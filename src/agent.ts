import { Agent, Dispatcher } from 'undici';
import { prepareBody } from './body/replayable.ts';
import { DEFAULT_SCHEME_ORDER } from './challenge/index.ts';
import { publishHandshake } from './diagnostics.ts';
import { AgentClosedError, MultilegError } from './errors.ts';
import { UserSink } from './handshake/user-sink.ts';
import { normalizeRequestHeaders } from './headers.ts';
import { log } from './log.ts';
import { defaultMechanisms } from './mechanisms/defaults.ts';
import { MechanismSet } from './mechanisms/registry.ts';
import {
  type ClientCertificateSelector,
  checkSchemes,
  type MultilegAgentOptions,
  normalizeOrigin,
  type ResolvedOptions,
  resolveLimits,
  resolveTrust,
} from './options.ts';
import { ProxyResolver } from './proxy/options.ts';
import type { HandshakeReport } from './session/exchange.ts';
import { type Job, newJobId } from './session/job.ts';
import { OriginPool } from './session/origin-pool.ts';

/** How many handshake reports {@link MultilegAgent.handshakes} keeps. */
export const MAX_REPORTS = 1000;

/** Counters since the agent was created. */
export interface MultilegStats {
  /** Requests dispatched by callers. */
  requests: number;
  /** Sessions (connections) opened. */
  sessions: number;
  handshakes: number;
  /** Handshake legs sent with credentials. */
  legs: number;
  failedHandshakes: number;
}

/**
 * An undici Dispatcher that authenticates with NTLM, Negotiate/Kerberos, Digest and Basic over
 * HTTP/2 and HTTP/1.1, implementing draft-montenegro-httpbis-multilegged-auth: requests queue on a
 * session while a handshake runs on it, the server's Auth-ID is echoed across legs, and
 * Persistent-Auth decides whether the session or each request is authenticated.
 *
 * Use it with `fetch(url, { dispatcher })`, `request(url, { dispatcher })` or
 * `setGlobalDispatcher(agent)`.
 *
 * Events: `'handshake'` with a {@link HandshakeReport} for every finished handshake.
 */
export class MultilegAgent extends Dispatcher {
  readonly #options: ResolvedOptions;
  readonly #mechanisms: MechanismSet;
  readonly #pools = new Map<string, OriginPool>();
  readonly #stats: MultilegStats = { requests: 0, sessions: 0, handshakes: 0, legs: 0, failedHandshakes: 0 };
  readonly #reports: HandshakeReport[] = [];
  /** Upgrades and CONNECT are not authenticated here; a plain Agent carries them. */
  #passthrough: Agent | undefined;
  #closed = false;
  #running = new Set<Promise<void>>();

  constructor(options: MultilegAgentOptions = {}) {
    super();
    const certificate = options.clientCertificate;
    const selectCertificate: ClientCertificateSelector | undefined =
      typeof certificate === 'function' ? certificate : certificate ? () => certificate : undefined;
    checkSchemes('schemes', options.schemes, options.mechanisms ?? []);
    let schemes: readonly string[] = options.schemes ?? DEFAULT_SCHEME_ORDER;
    // A configured certificate is an explicit choice: strongest unless `schemes` places Transport (T2).
    if (selectCertificate && !schemes.some((s) => s.toLowerCase() === 'transport')) schemes = ['Transport', ...schemes];
    this.#options = {
      ...(options.credentials ? { credentials: options.credentials } : {}),
      ...(selectCertificate ? { clientCertificate: selectCertificate } : {}),
      trust: resolveTrust(options.trustedOrigins),
      schemes,
      mechanisms: options.mechanisms ?? [],
      connect: options.connect ?? {},
      limits: resolveLimits(options.limits),
      maxHttp1Connections: options.maxHttp1Connections ?? 16,
      maxConcurrentStreams: options.maxConcurrentStreams ?? 1000,
      keepAliveTimeout: options.keepAliveTimeout ?? 60_000,
      http1MemoryTtl: options.http1MemoryTtl ?? 3_600_000,
      proxy: new ProxyResolver(options.proxy),
    };
    const mechanisms = [...defaultMechanisms(options), ...this.#options.mechanisms];
    this.#mechanisms = new MechanismSet(mechanisms, schemes, selectCertificate !== undefined);
  }

  /** A snapshot of the counters. */
  stats(): MultilegStats {
    let sessions = 0;
    for (const pool of this.#pools.values()) sessions += pool.sessionsCreated;
    return { ...this.#stats, sessions };
  }

  /**
   * Calls `listener` with every finished handshake (also emitted as the `'handshake'` event, which
   * undici's Dispatcher typings do not know). Returns a function that unsubscribes.
   */
  onHandshake(listener: (report: HandshakeReport) => void): () => void {
    const emitter = this as unknown as NodeJS.EventEmitter;
    emitter.on('handshake', listener);
    return () => emitter.off('handshake', listener);
  }

  /** The last {@link MAX_REPORTS} finished handshakes, oldest first (`stats()` counts them all). */
  handshakes(): readonly HandshakeReport[] {
    return this.#reports;
  }

  override dispatch(opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    try {
      if (this.#closed) throw new AgentClosedError();
      if (!opts.origin)
        throw new MultilegError('MULTILEG_INVALID_REQUEST', 'dispatch needs opts.origin (e.g. https://host:port)');
      const origin = normalizeOrigin(opts.origin);
      if (opts.upgrade || opts.method === 'CONNECT') {
        this.#passthrough ??= new Agent({ connect: this.#options.connect });
        return this.#passthrough.dispatch(opts, handler);
      }
      const sink = new UserSink(handler);
      sink.begin();
      if (sink.aborted) return true;
      const task = this.#run(origin, opts, sink, this.#credentialsAllowed(origin, handler)).catch((err: Error) =>
        sink.fail(err),
      );
      this.#running.add(task);
      task.finally(() => this.#running.delete(task));
      return true;
    } catch (err) {
      handler.onResponseError?.(null as unknown as Dispatcher.DispatchController, err as Error);
      return false;
    }
  }

  /**
   * S1: credentials go to trusted origins only. undici's redirect interceptor hands us its handler,
   * whose `history` names where the request started: a hop to another origin gets no credentials
   * unless that origin is trusted explicitly. (fetch follows redirects itself and shows us no such
   * sign: configure `trustedOrigins` when fetch may be redirected.)
   */
  #credentialsAllowed(origin: string, handler: Dispatcher.DispatchHandler): boolean {
    const { trust } = this.#options;
    if (!trust.trusts(origin)) return false;
    const first = (handler as { history?: readonly URL[] }).history?.[0];
    const redirectedFromElsewhere = first !== undefined && normalizeOrigin(first) !== origin;
    return !redirectedFromElsewhere || trust.explicit;
  }

  async #run(
    origin: string,
    opts: Dispatcher.DispatchOptions,
    sink: UserSink,
    credentialsAllowed: boolean,
  ): Promise<void> {
    this.#stats.requests += 1;
    const headers = normalizeRequestHeaders(opts.headers);
    const prepared = prepareBody(opts.body, this.#options.limits.maxReplayBodyBytes);
    const body = prepared instanceof Promise ? await prepared : prepared;
    const { headers: _h, body: _b, origin: _o, ...rest } = opts;
    const job: Job = {
      id: newJobId(),
      origin,
      dispatchOptions: { ...rest, path: opts.path, method: opts.method } as Dispatcher.DispatchOptions,
      headers,
      body,
      sink,
      http1Only: (opts as { allowH2?: boolean }).allowH2 === false,
      callerAuthorization: 'authorization' in headers,
      noAuth: !credentialsAllowed,
      reauthenticated: false,
      relocations: 0,
    };
    await this.#pool(origin).run(job);
  }

  #pool(origin: string): OriginPool {
    let pool = this.#pools.get(origin);
    if (!pool) {
      pool = new OriginPool(origin, this.#options, this.#mechanisms, (r) => this.#report(r));
      this.#pools.set(origin, pool);
    }
    return pool;
  }

  #report(r: HandshakeReport): void {
    this.#stats.handshakes += 1;
    this.#stats.legs += r.legs;
    if (r.outcome === 'failed') this.#stats.failedHandshakes += 1;
    this.#reports.push(r);
    // Per-request mode runs a handshake per request: keep a window, not the whole history.
    if (this.#reports.length > MAX_REPORTS) this.#reports.splice(0, this.#reports.length - MAX_REPORTS);
    log.agent(
      'handshake %s %s %s legs=%d outcome=%s auth-id=%s',
      r.origin,
      r.sessionId,
      r.scheme,
      r.legs,
      r.outcome,
      r.authIdCarried,
    );
    (this as unknown as NodeJS.EventEmitter).emit('handshake', r);
    publishHandshake(r);
  }

  override close(): Promise<void>;
  override close(callback: () => void): void;
  override close(callback?: () => void): Promise<void> | void {
    this.#closed = true;
    const done = (async () => {
      await Promise.allSettled([...this.#running]);
      await Promise.all([...this.#pools.values()].map((p) => p.close()));
      await this.#passthrough?.close();
    })();
    if (callback) {
      done.then(callback, callback);
      return;
    }
    return done;
  }

  override destroy(): Promise<void>;
  override destroy(err: Error | null): Promise<void>;
  override destroy(callback: () => void): void;
  override destroy(err: Error | null, callback: () => void): void;
  override destroy(errOrCb?: Error | null | (() => void), callback?: () => void): Promise<void> | void {
    const cb = typeof errOrCb === 'function' ? errOrCb : callback;
    const err = (typeof errOrCb === 'function' ? null : errOrCb) ?? new AgentClosedError();
    this.#closed = true;
    const done = (async () => {
      await Promise.all([...this.#pools.values()].map((p) => p.destroy(err)));
      await this.#passthrough?.destroy(err);
    })();
    if (cb) {
      done.then(cb, cb);
      return;
    }
    return done;
  }
}
