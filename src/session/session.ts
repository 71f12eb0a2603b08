import type { ConnectionOptions } from 'node:tls';
import { Client, type Dispatcher } from 'undici';
import { publishLeg } from '../diagnostics.ts';
import { BodyNotReplayableError, MultilegError, QueueFullError, QueueTimeoutError } from '../errors.ts';
import { relocationReason } from '../handshake/handshake.ts';
import { LegHandler, type LegResult, type ResponseHeaders, type Verdict } from '../handshake/leg.ts';
import type { HeaderMap } from '../headers.ts';
import { log } from '../log.ts';
import type { Limits } from '../options.ts';
import { ForwardProxy } from '../proxy/forward.ts';
import { authority, type ProxyRoute } from '../proxy/options.ts';
import { type ConnectionInfo, sessionConnector } from './connector.ts';
import type { Job } from './job.ts';
import { FRESH, type SessionEvent, type SessionState, transition } from './state.ts';

/** undici's GOAWAY/REFUSED_STREAM replay re-sends old headers on a new connection; we refuse it. */
export class StaleConnectionError extends MultilegError {
  constructor() {
    super(
      'MULTILEG_STALE_CONNECTION',
      'the connection this request was bound to has ended; it is retried on a new one',
    );
  }
}

export type Lane = 'auto' | 'http1';
type WaitOutcome = 'released' | 'failed' | 'closed';

interface Waiter {
  readonly job: Job;
  readonly resolve: (o: WaitOutcome) => void;
  readonly reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

let nextSessionSeq = 0;

/**
 * One connection — an HTTP/2 session or an HTTP/1.1 connection — with its authentication state.
 * The session owns its undici Client and uses it for exactly one connection: when that connection
 * ends the session is closed for good (C8) and the pool makes a new one, so auth state, Auth-IDs
 * and security contexts can never outlive the connection they belong to.
 */
export class Session {
  readonly id: string;
  readonly lane: Lane;
  readonly client: Client;
  #state: SessionState = FRESH;
  #connection: ConnectionInfo | undefined;
  #connections = 0;
  #inflight = 0;
  /** True once a first response came back, so a probe is no longer needed (see capacity). */
  #probed = false;
  readonly #queue: Waiter[] = [];
  #handshakes = 0;
  readonly #handshakeWaiters: Array<() => void> = [];
  readonly #limits: Limits;
  readonly #onChange: () => void;
  /** Through a forwarding proxy (plain-http target, H3-H5): that connection's own state. */
  readonly #forward: ForwardProxy | undefined;

  /** This session presents a client certificate (T3): only such sessions serve the origin then. */
  readonly certified: boolean;

  constructor(opts: {
    origin: string;
    lane: Lane;
    tls: ConnectionOptions;
    certified: boolean;
    keepAliveTimeout: number;
    maxConcurrentStreams: number;
    limits: Limits;
    /** Called when capacity may have grown or the session closed: the pool pumps its queue. */
    onChange: () => void;
    /** Connect through this proxy (H5). */
    route?: ProxyRoute;
    /** A forward proxy said the origin speaks HTTP/1.1 (H3). */
    onRemoteHttp1?: () => void;
  }) {
    this.id = `s${++nextSessionSeq}`;
    this.lane = opts.lane;
    this.certified = opts.certified;
    this.#limits = opts.limits;
    this.#onChange = opts.onChange;
    const allowH2 = opts.lane === 'auto';
    let origin = opts.origin;
    if (opts.route?.kind === 'forward') {
      // The Client talks to the proxy (`http:` so that HTTP/2 sends `:scheme http`; the connector
      // does TLS for an https:// proxy), over the connection the ForwardProxy opened.
      const proxy = opts.route.proxy;
      origin = `http://${authority(proxy.hostname, proxy.port)}`;
      this.#forward = new ForwardProxy({
        route: opts.route,
        allowH2,
        limits: opts.limits,
        onRemoteHttp1: opts.onRemoteHttp1 ?? (() => {}),
        onProxyVerificationFailed: (err) => {
          log.session('%s proxy final token failed verification (%s): closing', this.id, err.message);
          this.apply({ type: 'closed' });
        },
      });
    }
    const route = opts.route
      ? { proxy: opts.route, limits: opts.limits, ...(this.#forward ? { preopened: this.#forward.socket } : {}) }
      : undefined;
    this.client = new Client(origin, {
      connect: sessionConnector(opts.tls, allowH2, (info) => this.#connected(info), route),
      allowH2,
      pipelining: 1,
      keepAliveTimeout: opts.keepAliveTimeout,
      h2Options: { maxConcurrentStreams: opts.maxConcurrentStreams },
      keepAliveMaxTimeout: Math.max(opts.keepAliveTimeout, 600_000),
    });
    this.client.on('disconnect', (_origin, _targets, err) => {
      log.session('%s disconnected (%s)', this.id, (err as Error | undefined)?.message ?? 'closed');
      this.apply({ type: 'closed', http1Required: relocationReason(err as Error | undefined) === 'http1' });
    });
  }

  get state(): SessionState {
    return this.#state;
  }
  get connection(): ConnectionInfo | undefined {
    return this.#connection;
  }
  get protocol(): 'h2' | 'http/1.1' | undefined {
    return this.#connection?.protocol;
  }
  get closed(): boolean {
    return this.#state.kind === 'closed';
  }
  get inflight(): number {
    return this.#inflight;
  }

  /**
   * Whether a session-based authentication result may be trusted here (H4): always on a direct or
   * tunnelled connection (it is ours alone); through a forward proxy only when the proxy said
   * `Proxy-support: Session-Based-Authentication` — otherwise each request authenticates on its own.
   */
  get trustsSessionAuth(): boolean {
    return this.#forward ? this.#forward.vouched : true;
  }

  /**
   * How many requests may run on this session at once. Until the connection is known to be
   * HTTP/2 and a first response has shown whether the origin wants authentication, one at a
   * time: a burst of anonymous requests would each come back 401 (draft §3, C1).
   */
  get capacity(): number {
    if (this.closed) return 0;
    if (this.#connection?.protocol === 'h2' && (this.#probed || this.#state.kind !== 'fresh'))
      return Number.POSITIVE_INFINITY;
    return 1;
  }

  #markProbed(): void {
    if (!this.#probed) {
      this.#probed = true;
      this.#onChange();
    }
  }

  acquire(): void {
    this.#inflight += 1;
  }
  release(): void {
    this.#inflight -= 1;
    this.#onChange();
  }

  #connected(info: ConnectionInfo): void {
    this.#connections += 1;
    if (this.#connections === 1) {
      this.#connection = info;
      log.session('%s connected %s', this.id, info.protocol);
      this.#onChange();
    } else {
      // The Client reconnected on its own (after a GOAWAY or reset): that is a new session.
      this.apply({ type: 'closed' });
    }
  }

  /** Applies a state-machine event and its effects: releasing or relocating the queue. */
  apply(event: SessionEvent): void {
    const before = this.#state;
    if (before.kind === 'closed') return;
    this.#state = transition(before, event);
    log.session('%s %s -> %s', this.id, before.kind, this.#state.kind);
    if (before.kind === 'handshaking' && this.#state.kind !== 'handshaking') {
      const outcome: WaitOutcome =
        this.#state.kind === 'closed'
          ? 'closed'
          : event.type === 'handshake-failure' && !event.retry
            ? 'failed'
            : 'released';
      for (const w of this.#queue.splice(0)) {
        clearTimeout(w.timer);
        w.job.sink.onAbort(undefined);
        w.resolve(outcome);
      }
    }
    if (this.#state.kind === 'closed') {
      for (const w of this.#queue.splice(0)) {
        clearTimeout(w.timer);
        w.job.sink.onAbort(undefined);
        w.resolve('closed');
      }
      this.client.close().catch(() => {});
    }
    // Capacity depends on the state (see capacity): let the pool hand it out.
    this.#onChange();
  }

  /**
   * Runs a handshake within the session's bound on concurrent handshakes (draft §3.1: servers cap
   * incomplete contexts per session). Each waiting handshake is bounded by the running ones' timeouts.
   */
  async withHandshakeSlot<T>(fn: () => Promise<T>): Promise<T> {
    while (this.#handshakes >= this.#limits.maxConcurrentHandshakes) {
      await new Promise<void>((resolve) => this.#handshakeWaiters.push(resolve));
    }
    this.#handshakes += 1;
    try {
      return await fn();
    } finally {
      this.#handshakes -= 1;
      this.#handshakeWaiters.shift()?.();
    }
  }

  /** Waits for the running handshake to end (C1), bounded by maxQueue and queueTimeout (C11). */
  waitForHandshake(job: Job): Promise<WaitOutcome> {
    if (this.#queue.length >= this.#limits.maxQueue) return Promise.reject(new QueueFullError(this.#limits.maxQueue));
    return new Promise<WaitOutcome>((resolve, reject) => {
      const waiter: Waiter = {
        job,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#dequeue(waiter);
          reject(new QueueTimeoutError(this.#limits.queueTimeout));
        }, this.#limits.queueTimeout),
      };
      this.#queue.push(waiter);
      job.sink.onAbort((reason) => {
        this.#dequeue(waiter);
        reject(reason);
      });
    });
  }

  #dequeue(w: Waiter): void {
    const i = this.#queue.indexOf(w);
    if (i >= 0) this.#queue.splice(i, 1);
    clearTimeout(w.timer);
    w.job.sink.onAbort(undefined);
  }

  /** Sends one leg of `job` on this session's connection. */
  send(
    job: Job,
    extra: Record<string, string>,
    classify: (status: number, headers: ResponseHeaders) => Verdict,
  ): Promise<LegResult> {
    if (!this.#forward) return this.#send(job, extra, classify);
    const request = { origin: job.origin, method: job.dispatchOptions.method, path: job.dispatchOptions.path };
    return this.#forward.send(
      request,
      extra,
      classify,
      (e, c, path) => this.#send(job, e, c, path),
      () => this.protocol === 'h2',
    );
  }

  #send(
    job: Job,
    extra: Record<string, string>,
    classify: (status: number, headers: ResponseHeaders) => Verdict,
    path?: string,
  ): Promise<LegResult> {
    const body = job.body.take();
    if (body === undefined && !job.body.replayable) {
      return Promise.resolve({ kind: 'failed', error: new BodyNotReplayableError(this.#limits.maxReplayBodyBytes) });
    }
    const headers: HeaderMap = { ...job.headers };
    for (const [k, v] of Object.entries(extra)) headers[k] = v;
    const method = job.dispatchOptions.method;
    const traced = publishLeg(
      { origin: job.origin, sessionId: this.id, protocol: () => this.protocol },
      { method, path: path ?? job.dispatchOptions.path, headers },
    );
    const leg = new LegHandler({
      sink: job.sink,
      classify: (status, h) => {
        const verdict = classify(status, h);
        traced.response(status, h, verdict !== 'swallow');
        // A challenge is not the end of the probe: the leader's handshake-start opens the session.
        if (verdict !== 'swallow') this.#markProbed();
        return verdict;
      },
      beforeStart: (controller) => {
        if (job.sink.aborted) controller.abort(job.sink.reason ?? new Error('aborted'));
        else if (this.#connections > 1 || this.closed) controller.abort(new StaleConnectionError());
      },
      maxDrainBytes: this.#limits.maxChallengeBodyBytes,
    });
    job.sink.onAbort((reason) => leg.abort(reason));
    const opts: Dispatcher.DispatchOptions = {
      ...job.dispatchOptions,
      ...(path !== undefined ? { path } : {}),
      headers,
      body: body as Dispatcher.DispatchOptions['body'],
      // HEAD would otherwise close the HTTP/1.1 connection and lose a connection-bound handshake.
      ...(job.dispatchOptions.method === 'HEAD' ? { reset: false } : {}),
    };
    log.leg(
      '%s job %d leg %s %s auth=%s auth-id=%s',
      this.id,
      job.id,
      opts.method,
      this.protocol ?? '?',
      'authorization' in extra ? extra.authorization!.split(' ', 1)[0] : 'none',
      'auth-id' in extra,
    );
    try {
      this.client.dispatch(opts, leg);
    } catch (err) {
      traced.error(err as Error);
      return Promise.resolve({ kind: 'failed', error: err as Error });
    }
    // The caller's abort reaches the leg until its response has been delivered in full.
    return leg.result.then((r) => {
      if (r.kind === 'failed') traced.error(r.error);
      if (r.kind === 'delivered') r.done.finally(() => job.sink.onAbort(undefined));
      else job.sink.onAbort(undefined);
      return r;
    });
  }
}
