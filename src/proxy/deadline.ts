/**
 * The deadline of authenticating to a proxy (R3): `limits.handshakeTimeout` over every leg of the
 * 407 exchange and every step of the proxy's mechanism (GSS-API, a custom mechanism), which are
 * raced against it — a step that never returns cannot hold the request. One timer, started when
 * the exchange starts (at once for a CONNECT, at the first 407 on a forwarded request).
 */
import { ProxyTimeoutError } from './errors.ts';

export class ProxyDeadline {
  readonly #proxy: string;
  readonly #ms: number;
  readonly #route: 'tunnel' | 'forward';
  readonly #onExpire: (err: ProxyTimeoutError) => void;
  readonly #expired: Promise<never>;
  #expire!: (err: ProxyTimeoutError) => void;
  #timer: NodeJS.Timeout | undefined;
  #timedOut = false;

  /** `onExpire` runs when the deadline passes (after the races reject): it ends what is on the wire. */
  constructor(proxy: string, ms: number, route: 'tunnel' | 'forward', onExpire: (err: ProxyTimeoutError) => void) {
    this.#proxy = proxy;
    this.#ms = ms;
    this.#route = route;
    this.#onExpire = onExpire;
    this.#expired = new Promise<never>((_, reject) => {
      this.#expire = reject;
    });
    this.#expired.catch(() => {});
  }

  get timedOut(): boolean {
    return this.#timedOut;
  }

  /** A ProxyTimeoutError for this deadline. */
  error(): ProxyTimeoutError {
    return new ProxyTimeoutError(this.#proxy, this.#ms, this.#route);
  }

  /** Starts the timer (again after {@link stop}); a running one goes on. */
  start(): void {
    if (this.#timer || this.#timedOut) return;
    this.#timer = setTimeout(() => {
      this.#timedOut = true;
      const err = this.error();
      this.#expire(err);
      this.#onExpire(err);
    }, this.#ms);
  }

  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** `work`, or the deadline's ProxyTimeoutError if it passes first (a timer not started never does). */
  race<T>(work: Promise<T>): Promise<T> {
    return Promise.race([work, this.#expired]);
  }
}
