/**
 * Who runs a forwarding proxy connection's handshake with the proxy (H5): one request at a time,
 * since a connection-bound scheme (NTLM, Negotiate) authenticates the connection, not a request
 * (H1, H4), and its legs share one context. The others wait for the lead's end (bounded as every
 * wait is, R1) and then go on the connection as that handshake left it.
 */
import type { Deadline } from '../deadline.ts';
import type { Limits } from '../options.ts';
import { type Waiter, WaitQueue } from '../session/wait-queue.ts';
import type { ProxyAuth } from './auth.ts';
import type { ProxyTimeoutError } from './errors.ts';

/** The lead of one proxy connection: the request that runs its handshake, and those waiting. */
export class ProxyLead {
  readonly #auth: ProxyAuth;
  /** The request that runs the connection's handshake now, if any. */
  #leader: Turn | undefined;
  /** Requests waiting for the running handshake with the proxy (bounded as every wait is, R1). */
  readonly #followers: WaitQueue<void, Waiter>;
  /** Handshakes with the proxy that succeeded on this connection: a 407 to a request sent before the last is stale. */
  #authentications = 0;

  /** `what` names the wait in its errors (QueueTimeoutError, QueueFullError). */
  constructor(auth: ProxyAuth, limits: Limits, what: string) {
    this.#auth = auth;
    this.#followers = new WaitQueue(limits, what);
  }

  /** One request's part in the lead, from its first leg to its end. */
  turn(): Turn {
    return new Turn(this);
  }

  /** @internal (Turn's) Who leads now: no request, `turn`, or another. */
  ledBy(turn: Turn): 'none' | 'this' | 'another' {
    return this.#leader === undefined ? 'none' : this.#leader === turn ? 'this' : 'another';
  }

  /** How many handshakes with the proxy succeeded on this connection. */
  get authentications(): number {
    return this.#authentications;
  }

  /** Whether the connection's last handshake succeeded (the proxy's answers need no new one). */
  get authenticated(): boolean {
    return this.#auth.state === 'done';
  }

  /** @internal (Turn's) Waits for the running lead's end (R1: bounded by queueTimeout, maxQueue and the caller's abort). */
  wait(waiter: Waiter): Promise<void> {
    return this.#followers.wait(waiter);
  }

  /** @internal (Turn's) `turn` leads now. */
  take(turn: Turn): void {
    this.#leader = turn;
  }

  /** @internal (Turn's) A handshake succeeded on the connection. */
  succeeded(): void {
    this.#authentications += 1;
  }

  /** @internal (Turn's) `turn`'s lead ends: the waiting requests go on, on the connection as it is now. */
  release(turn: Turn): void {
    if (this.#leader !== turn) return;
    this.#leader = undefined;
    // A handshake left halfway (a leg failed, the caller aborted) is no one else's to go on with.
    if (this.#auth.state === 'handshaking') this.#auth.giveUp();
    this.#followers.settleAll(undefined);
  }
}

/**
 * One request's part in its proxy connection's lead, an explicit state:
 * - `anew`: its next leg starts it anew — it waits for a handshake another request leads, then may
 *   lead one itself (its first leg, and the leg after a 407 that another's handshake answers);
 * - `following`: its leg goes without leading (bare, or with a per-request scheme's own header);
 * - `leading`: it runs the connection's handshake, from its opening or from the 407 it answers;
 * - `ended`: its lead ended (the handshake succeeded, the proxy let its opening through, or the
 *   request ended), once.
 */
export class Turn {
  readonly #lead: ProxyLead;
  #state: 'anew' | 'following' | 'leading' | 'ended' = 'anew';
  /** How many handshakes had succeeded on the connection when this request's last leg went. */
  #sentAt: number;

  constructor(lead: ProxyLead) {
    this.#lead = lead;
    this.#sentAt = lead.authentications;
  }

  get state(): 'anew' | 'following' | 'leading' | 'ended' {
    return this.#state;
  }

  /**
   * Starts a leg that begins anew: waits while another request leads (the exchange's `deadline`
   * stops meanwhile: the wait has its own bounds, R1); then leads if `opens` says there is an
   * opening to make. Found free and taken in one tick (no await between), so that of the requests
   * a lead's end wakes, one leads and the others wait again. Resolves whether this request leads.
   */
  async follow(
    waiter: Waiter,
    deadline: Deadline<ProxyTimeoutError> | undefined,
    opens: () => boolean,
  ): Promise<boolean> {
    this.#state = 'following';
    if (this.#lead.ledBy(this) !== 'none') {
      deadline?.pause();
      try {
        while (this.#lead.ledBy(this) !== 'none') await this.#lead.wait(waiter);
      } finally {
        deadline?.start();
      }
    }
    if (!opens()) return false;
    this.take();
    return true;
  }

  /** This request runs the connection's handshake (from its opening, or from the 407 it answers). */
  take(): void {
    this.#state = 'leading';
    this.#lead.take(this);
  }

  /** Its next leg goes now: a handshake that succeeds after it is news to it. */
  sending(): void {
    this.#sentAt = this.#lead.authentications;
  }

  /** A 407 to its last leg that another's handshake answers: one runs, or succeeded since the leg went. */
  get answeredByAnother(): boolean {
    if (this.#state === 'leading') return false;
    return (
      this.#lead.ledBy(this) === 'another' || (this.#lead.authenticated && this.#lead.authentications > this.#sentAt)
    );
  }

  /** Its next leg starts anew (after the handshake another runs). */
  again(): void {
    this.#state = 'anew';
  }

  /** Its handshake succeeded: the connection is authenticated, and the waiting requests go now. */
  succeeded(): void {
    this.#lead.succeeded();
    this.end();
  }

  /** Ends its lead (once): the waiting requests go on, on the connection as it is now. */
  end(): void {
    if (this.#state !== 'leading') return;
    this.#state = 'ended';
    this.#lead.release(this);
  }
}
