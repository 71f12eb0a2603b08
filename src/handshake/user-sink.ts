import type { Dispatcher } from 'undici';

type Controller = Dispatcher.DispatchController;
type Headers = Record<string, string | string[]>;

const CACHE_CONTROL = Buffer.from('cache-control');
const PRIVATE = Buffer.from('private');

/**
 * Sees the status and headers of the response a caller gets (the agent notes redirects, S5);
 * `hop`: the request was itself a redirect hop from another origin.
 */
export interface ResponseObserver {
  noteResponse(origin: string, path: string, status: number, headers: Headers, hop: boolean): void;
}

/** What to do when the caller aborts: a function, or an object (no closure per wait, R6). */
export type AbortHook = ((reason: Error) => void) | { callerAborted(reason: Error): void };

/** The controller the caller holds: pause/resume reach whichever leg is delivering. */
class SinkController {
  readonly #sink: UserSink;
  constructor(sink: UserSink) {
    this.#sink = sink;
  }
  abort(reason: Error): void {
    this.#sink.abort(reason, true);
  }
  pause(): void {
    this.#sink.pause();
  }
  resume(): void {
    this.#sink.resume();
  }
  // Only the caller's abort (or a handler of its that threw) reads as aborted: undici's
  // RetryHandler passes an aborted request's error on without asking its retry policy, so the
  // agent's own failures (a handshake's clock, R3) must not look like one (trial u16).
  get aborted(): boolean {
    return this.#sink.abortedByCaller;
  }
  get paused(): boolean {
    return this.#sink.paused;
  }
  get reason(): Error | null {
    return this.#sink.abortedByCaller ? this.#sink.reason : null;
  }
  get rawHeaders(): unknown {
    const raw = (this.#sink.leg as { rawHeaders?: unknown } | undefined)?.rawHeaders;
    // The Cache-Control the sink added (S6) is in the raw list too: fetch reads that one.
    return this.#sink.madePrivate && Array.isArray(raw) ? [...raw, CACHE_CONTROL, PRIVATE] : raw;
  }
  get rawTrailers(): unknown {
    return (this.#sink.leg as { rawTrailers?: unknown } | undefined)?.rawTrailers;
  }
}

/**
 * The caller's handler behind one stable controller (undici's RetryHandler pattern): the caller
 * sees `onRequestStart` once, then exactly one of a response or an error, however many legs,
 * queues and sessions the request went through.
 */
export class UserSink {
  readonly #handler: Dispatcher.DispatchHandler;
  #leg: Controller | undefined;
  #aborted = false;
  #byCaller = false;
  /** The response was delivered with the `private` the sink added to its Cache-Control (S6). */
  #madePrivate = false;
  #reason: Error | null = null;
  #paused = false;
  #finished = false;
  #onAbort: AbortHook | undefined;
  readonly #observer: ResponseObserver | undefined;
  readonly #origin: string;
  readonly #path: string;
  /** `markPrivate` (the agent's option): a response to the agent's identity gets `private` added (S6). */
  readonly #markPrivate: boolean;
  /** The request is a redirect hop from another origin (S5): its own redirects continue the chain. */
  hop = false;
  /**
   * The response answers the agent's identity (S6): the leg it came on carried the agent's
   * Authorization or its cookie jar's Cookie, or its connection is authenticated as the agent or
   * presents the agent's client certificate. Set by whoever sent that leg; the caller gets it with
   * `Cache-Control: private` (see {@link privateForSharedCache}).
   */
  asAgent = false;

  /** The controller the caller holds; pause/resume reach whichever leg is delivering. */
  readonly controller: Controller;

  /** `observer` sees the response the caller gets for `origin` + `path`. */
  constructor(
    handler: Dispatcher.DispatchHandler,
    observer?: ResponseObserver,
    origin = '',
    path = '',
    markPrivate = true,
  ) {
    this.#handler = handler;
    this.#observer = observer;
    this.#origin = origin;
    this.#path = path;
    this.#markPrivate = markPrivate;
    this.controller = new SinkController(this) as unknown as Controller;
  }

  /** The controller of the leg delivering the response, if any. */
  get leg(): Controller | undefined {
    return this.#leg;
  }
  get paused(): boolean {
    return this.#paused;
  }
  pause(): void {
    this.#paused = true;
    this.#leg?.pause();
  }
  resume(): void {
    this.#paused = false;
    this.#leg?.resume();
  }

  /** Aborted: by the caller, or by the agent ending the request itself (a handshake's clock). */
  get aborted(): boolean {
    return this.#aborted;
  }
  /** Aborted by the caller (its controller's abort, or its handler threw). */
  get abortedByCaller(): boolean {
    return this.#byCaller;
  }
  get madePrivate(): boolean {
    return this.#madePrivate;
  }
  get reason(): Error | null {
    return this.#reason;
  }
  get finished(): boolean {
    return this.#finished;
  }
  get responseStarted(): boolean {
    // (No field of its own: a response started is a leg delivering, one field less per request.)
    return this.#leg !== undefined;
  }

  /** Registers what to do when the caller aborts (dequeue, or abort the current leg). */
  onAbort(hook: AbortHook | undefined): void {
    this.#onAbort = hook;
  }

  /**
   * `work`, or the caller's abort if that comes first (an abort already heard too): while it waits
   * the abort hook is this wait's — one with no leg on the wire (a body read, a replay settled).
   */
  unlessAborted<T>(work: Promise<T>): Promise<T> {
    if (this.#aborted) return Promise.reject(this.#reason);
    return new Promise<T>((resolve, reject) => {
      this.onAbort(reject);
      const settled = (done: () => void) => {
        if (this.#aborted) return;
        this.onAbort(undefined);
        done();
      };
      work.then(
        (value) => settled(() => resolve(value)),
        (err: unknown) => settled(() => reject(err)),
      );
    });
  }

  begin(): void {
    this.#handler.onRequestStart?.(this.controller, null);
  }

  /**
   * Ends the request as an abort does: the leg on the wire, or the wait, ends with `reason`.
   * `byCaller`: the caller aborted (or its handler threw); else the agent gave up on it (R3), which
   * the caller's controller does not read as aborted, so that a retry above the agent may retry it.
   */
  abort(reason: Error, byCaller = false): void {
    if (this.#aborted || this.#finished) return;
    this.#aborted = true;
    this.#byCaller = byCaller;
    this.#reason = reason;
    const hook = this.#onAbort;
    if (typeof hook === 'function') hook(reason);
    else if (hook) hook.callerAborted(reason);
    else this.fail(reason);
  }

  /**
   * The leg whose 101 is about to be handed to the caller's `onRequestUpgrade`: the caller's
   * controller reads that head's raw headers (undici's fetch, and so its WebSocket, builds the 101's
   * header list from them alone, an absent list read as an empty one).
   */
  upgrading(leg: Controller): void {
    this.#leg = leg;
  }

  responseStart(leg: Controller, status: number, headers: Headers, message: string): void {
    if (this.#finished) return;
    this.#leg = leg;
    if (this.#paused) leg.pause();
    this.#observer?.noteResponse(this.#origin, this.#path, status, headers, this.hop);
    // (One field read for the others: nothing to add to a response nobody's identity got.)
    if (this.asAgent && this.#markPrivate) {
      const before = headers['cache-control'];
      this.#madePrivate = privateForSharedCache(status, headers)['cache-control'] !== before;
    }
    try {
      this.#handler.onResponseStart?.(this.controller, status, headers, message);
    } catch (err) {
      this.abort(err as Error, true);
    }
  }

  // As undici's own Request: a handler that throws from onResponseStart or onResponseData has its
  // request aborted with that error, and one that throws from onResponseEnd gets it in
  // onResponseError — undici's RetryHandler throws there to ask for a retry (its default
  // throwOnError), which it makes from onResponseError; a throw lost here left it waiting for good.
  responseData(chunk: Buffer): void {
    if (this.#finished) return;
    try {
      this.#handler.onResponseData?.(this.controller, chunk);
    } catch (err) {
      this.abort(err as Error, true);
    }
  }

  responseEnd(trailers: Record<string, string | string[]>): void {
    if (this.#finished) return;
    this.#finished = true;
    try {
      this.#handler.onResponseEnd?.(this.controller, trailers);
    } catch (err) {
      this.#tellError(err as Error);
    }
  }

  /** Reports an error to the caller, once; later calls are ignored. Never throws (see #tellError). */
  fail(err: Error): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#tellError(err);
  }

  /**
   * The caller's onResponseError, whose own throw is said as a process warning and goes no further:
   * thrown on into the agent's queue, its timers or undici, it skipped the request's end (the
   * agent's close() never resolved; review r66) or became an uncaught exception. undici's
   * errorRequest catches it too. Only the error's name is said (its message is the caller's).
   */
  #tellError(err: Error): void {
    try {
      this.#handler.onResponseError?.(this.controller, err);
    } catch (thrown) {
      process.emitWarning(
        `a dispatch handler's onResponseError threw (${(thrown as Error)?.name ?? typeof thrown}) while told ${err.name}: ignored, the request had ended`,
        { code: 'MULTILEG_HANDLER_THREW' },
      );
    }
  }
}

/** Cache-Control directives by which a response already says how a shared cache may keep it. */
const SAID = /(?:^|,)\s*(?:public|must-revalidate|no-store|private|s-maxage\s*=[^,]*)\s*(?:,|$)/i;
/** Cache-Control directives that keep a response out of a shared cache whatever else it says. */
const KEPT_OUT = /(?:^|,)\s*(?:no-store|private)\s*(?:,|$)/i;
/** A Vary naming what the agent adds below a cache (its Authorization, its jar's Cookie), or `*`. */
const VARIES_BY_IDENTITY = /(?:^|,)\s*(?:authorization|cookie|\*)\s*(?:,|$)/i;

/**
 * `headers`, `private` added to its Cache-Control (in place), unless the response
 * already allows a shared cache to reuse it for others (`public`, `s-maxage`, `must-revalidate`:
 * RFC 9111 §3.5) or forbids keeping it (`no-store`, a bare `private`). For a response to a request
 * the agent authenticated below a cache: that cache saw no Authorization (nor the jar's Cookie, nor
 * the connection's authentication) and would store it as anyone's (S6, trial u16). A qualified
 * `private="…"` still lets a shared cache store the response: `private` is added to it too. A
 * `Vary` on Authorization or Cookie says the answer is the identity's whatever `public` says: the
 * cache above saw neither, and would key it on their absence (review r64). A 304 without
 * Cache-Control is left as sent: it carries no body of the identity, and `private` on it would make
 * a shared cache fetch the stored entry again on every revalidation.
 */
export function privateForSharedCache(status: number, headers: Headers): Headers {
  // Written into the response's own headers object (undici makes one per response): a copy per
  // response cost the authenticated fast path a few percent of its CPU.
  const value = headers['cache-control'];
  if (value === undefined) {
    // (A 304 with Expires refreshes the stored entry: marked as any other, review r65.)
    if (status !== 304 || headers.expires !== undefined) headers['cache-control'] = 'private';
    return headers;
  }
  const given = typeof value === 'string' ? value : value.join(', ');
  const joined = withoutQuoted(given);
  const vary = headers.vary;
  const byIdentity = vary !== undefined && VARIES_BY_IDENTITY.test(typeof vary === 'string' ? vary : vary.join(', '));
  if (!(byIdentity ? KEPT_OUT.test(joined) : SAID.test(joined))) headers['cache-control'] = `${given}, private`;
  return headers;
}

/** A Cache-Control value without its quoted strings (a `no-cache="public"` names a field, says nothing). */
function withoutQuoted(value: string): string {
  return value.includes('"') ? value.replace(/"(?:[^"\\]|\\.)*"/g, '""') : value;
}
