import type { Dispatcher } from 'undici';

type Controller = Dispatcher.DispatchController;
type ResponseObserver = (status: number, headers: Record<string, string | string[]>) => void;

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
  #started = false;
  #finished = false;
  #onAbort: ((reason: Error) => void) | undefined;
  readonly #onHead: ResponseObserver | undefined;

  /** The controller the caller holds; pause/resume reach whichever leg is delivering. */
  readonly controller: Controller;

  /** `onHead` sees the status and headers of the response the caller gets (the agent notes redirects). */
  constructor(handler: Dispatcher.DispatchHandler, onHead?: ResponseObserver) {
    this.#handler = handler;
    this.#onHead = onHead;
    const sink = this;
    this.controller = {
      abort(reason: Error) {
        sink.abort(reason);
      },
      pause() {
        sink.#paused = true;
        sink.#leg?.pause();
      },
      resume() {
        sink.#paused = false;
        sink.#leg?.resume();
      },
      get aborted() {
        return sink.#aborted;
      },
      get paused() {
        return sink.#paused;
      },
      get reason() {
        return sink.#reason;
      },
      get rawHeaders() {
        return (sink.#leg as { rawHeaders?: unknown } | undefined)?.rawHeaders;
      },
      get rawTrailers() {
        return (sink.#leg as { rawTrailers?: unknown } | undefined)?.rawTrailers;
      },
    } as Controller;
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
    return this.#started;
  }

  /** Registers what to do when the caller aborts (dequeue, or abort the current leg). */
  onAbort(fn: ((reason: Error) => void) | undefined): void {
    this.#onAbort = fn;
  }

  begin(): void {
    this.#handler.onRequestStart?.(this.controller, null);
  }

  abort(reason: Error): void {
    if (this.#aborted || this.#finished) return;
    this.#aborted = true;
    this.#reason = reason;
    const hook = this.#onAbort;
    if (hook) hook(reason);
    else this.fail(reason);
  }

  responseStart(leg: Controller, status: number, headers: Record<string, string | string[]>, message: string): void {
    if (this.#finished) return;
    this.#leg = leg;
    this.#started = true;
    if (this.#paused) leg.pause();
    this.#onHead?.(status, headers);
    this.#handler.onResponseStart?.(this.controller, status, headers, message);
  }

  responseData(chunk: Buffer): void {
    if (!this.#finished) this.#handler.onResponseData?.(this.controller, chunk);
  }

  responseEnd(trailers: Record<string, string | string[]>): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#handler.onResponseEnd?.(this.controller, trailers);
  }

  /** Reports an error to the caller, once; later calls are ignored. */
  fail(err: Error): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#handler.onResponseError?.(this.controller, err);
  }
}
