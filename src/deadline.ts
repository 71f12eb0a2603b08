/**
 * One deadline over work that may never end (R3): a handshake's legs and mechanism steps, the
 * exchange with a proxy, a certificate selector. Each step is raced against it (`race`: a step
 * that never returns cannot hold the caller), and `onExpire` ends what is on the wire. One timer:
 * `pause` keeps it (the time paused does not count; `start` runs a full period again) and `stop`
 * ends it; after it fired, the deadline stays expired.
 */
export class Deadline<E extends Error> {
  readonly #ms: number;
  readonly #error: () => E;
  readonly #onExpire: (err: E) => void;
  /** Rejects the races with the deadline's error; made at the first race (a handshake makes none). */
  #expired: Promise<never> | undefined;
  #expire: ((err: E) => void) | undefined;
  #fired: E | undefined;
  #timer: NodeJS.Timeout | undefined;
  #running = false;
  #timedOut = false;

  /** `error` makes the error the deadline ends with; `onExpire` runs after the races reject. */
  constructor(ms: number, error: () => E, onExpire: (err: E) => void) {
    this.#ms = ms;
    this.#error = error;
    this.#onExpire = onExpire;
  }

  get timedOut(): boolean {
    return this.#timedOut;
  }

  /**
   * The error for this deadline (also what `race` rejects with once it passed): once it fired, the
   * one it fired with, so that every caller told of it gets the same (its message may read state
   * that the expiry then changed, r44).
   */
  error(): E {
    return this.#fired ?? this.#error();
  }

  /** Runs the timer: a full period from now, unless it runs already (or already fired). */
  start(): this {
    if (this.#running || this.#timedOut) return this;
    this.#running = true;
    // A paused timer is refreshed, not made again (per-request mode pauses once per handshake).
    if (this.#timer) this.#timer.refresh();
    else this.#timer = setTimeout(() => this.#fire(), this.#ms);
    return this;
  }

  /** Stops counting until the next `start` (the timer is kept). */
  pause(): void {
    this.#running = false;
  }

  /** Ends the deadline: it never fires (a later `start` runs a new one). */
  stop(): void {
    this.#running = false;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** `work`, or the deadline's error if it passes first (a deadline never started never does). */
  race<T>(work: Promise<T>): Promise<T> {
    if (!this.#expired) {
      this.#expired = new Promise<never>((_, reject) => {
        this.#expire = reject;
      });
      this.#expired.catch(() => {});
      if (this.#fired) this.#expire!(this.#fired);
    }
    return Promise.race([work, this.#expired]);
  }

  #fire(): void {
    if (!this.#running) return;
    this.#running = false;
    this.#timedOut = true;
    const err = this.#error();
    this.#fired = err;
    this.#expire?.(err);
    this.#onExpire(err);
  }
}
