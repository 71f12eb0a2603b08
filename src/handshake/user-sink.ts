import type { Dispatcher } from 'undici';

type Controller = Dispatcher.DispatchController;
type Headers = Record<string, string | string[]>;

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
    this.#sink.abort(reason);
  }
  pause(): void {
    this.#sink.pause();
  }
  resume(): void {
    this.#sink.resume();
  }
  get aborted(): boolean {
    return this.#sink.aborted;
  }
  get paused(): boolean {
    return this.#sink.paused;
  }
  get reason(): Error | null {
    return this.#sink.reason;
  }
  get rawHeaders(): unknown {
    return (this.#sink.leg as { rawHeaders?: unknown } | undefined)?.rawHeaders;
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
  #reason: Error | null = null;
  #paused = false;
  #finished = false;
  #onAbort: AbortHook | undefined;
  readonly #observer: ResponseObserver | undefined;
  readonly #origin: string;
  readonly #path: string;
  /** The request is a redirect hop from another origin (S5): its own redirects continue the chain. */
  hop = false;

  /** The controller the caller holds; pause/resume reach whichever leg is delivering. */
  readonly controller: Controller;

  /** `observer` sees the response the caller gets for `origin` + `path`. */
  constructor(handler: Dispatcher.DispatchHandler, observer?: ResponseObserver, origin = '', path = '') {
    this.#handler = handler;
    this.#observer = observer;
    this.#origin = origin;
    this.#path = path;
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

  get aborted(): boolean {
    return this.#aborted;
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

  abort(reason: Error): void {
    if (this.#aborted || this.#finished) return;
    this.#aborted = true;
    this.#reason = reason;
    const hook = this.#onAbort;
    if (typeof hook === 'function') hook(reason);
    else if (hook) hook.callerAborted(reason);
    else this.fail(reason);
  }

  responseStart(leg: Controller, status: number, headers: Headers, message: string): void {
    if (this.#finished) return;
    this.#leg = leg;
    if (this.#paused) leg.pause();
    this.#observer?.noteResponse(this.#origin, this.#path, status, headers, this.hop);
    try {
      this.#handler.onResponseStart?.(this.controller, status, headers, message);
    } catch (err) {
      this.abort(err as Error);
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
      this.abort(err as Error);
    }
  }

  responseEnd(trailers: Record<string, string | string[]>): void {
    if (this.#finished) return;
    this.#finished = true;
    try {
      this.#handler.onResponseEnd?.(this.controller, trailers);
    } catch (err) {
      this.#handler.onResponseError?.(this.controller, err as Error);
    }
  }

  /** Reports an error to the caller, once; later calls are ignored. */
  fail(err: Error): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#handler.onResponseError?.(this.controller, err);
  }
}
