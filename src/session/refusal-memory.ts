import type { Credentials } from '../mechanisms/types.ts';

/** Where a password was tried: an origin, or a proxy, with the credentials the agent holds for it. */
export interface RefusalPlace {
  /** The origin (`https://host:port`), or the proxy's. */
  readonly origin: string;
  /** It is a proxy (the agent's `proxy.credentials`), not an origin. */
  readonly proxy: boolean;
  /**
   * The credentials the agent holds for it now (the caller's own, handed back to key a record by:
   * a keyed hash of the password, never the password itself, is what a record should hold).
   */
  readonly credentials: Credentials;
}

/** What is remembered of refusals of one password at one place (R4). */
export interface RememberedRefusal {
  /** When (`Date.now()`) it was last refused. */
  readonly at: number;
  /** Until when (`Date.now()`) it is held back: nothing sends it there before. */
  readonly until: number;
  /** How many times in a row it was refused: the next wait is 30 s × 2^times, up to 30 min. */
  readonly times: number;
}

/**
 * Keeps refusals of the agent's passwords beyond the agent (R4, account lockout): a process that
 * starts anew (a cron job, a CLI run per URL) otherwise knows nothing of the refusals its
 * predecessors met, and a wrong password is sent once per process. The `multileg` command keeps
 * them in a file; an agent without one keeps them in memory only, for its own life — a long-running
 * service keeps one agent for the process and needs none.
 *
 * The agent calls it only for credentials with a password, only as the credentials' proof at a
 * place is asked for leave by a handshake that would send the password while not proved there.
 * Its methods must not throw (what they throw is ignored); `recall` may wait (for another
 * process's try of the same password to end, say), and then holds that handshake back meanwhile.
 */
export interface RefusalMemory {
  /**
   * Before a handshake sends the password at `place` while it is not proved there (one at a time):
   * what is remembered of its refusals there. A refusal still in force holds the password back until
   * its `until`, as one met by this agent would; its `times` make the next wait double. Each call
   * is followed by exactly one {@link release} for the same place, once that handshake has ended.
   * `signal` is aborted when the agent gives up on a recall that waits (limits.queueTimeout, or the
   * request's abort: it goes without the password): such a recall should stop waiting then and
   * settle (its release comes once it has), not go on for a request that no longer waits for it.
   */
  recall(
    place: RefusalPlace,
    signal?: AbortSignal,
  ): RememberedRefusal | undefined | Promise<RememberedRefusal | undefined>;
  /** The password was refused at `place` (or its legs left unanswered twice): held back as `refusal` says. */
  refused(place: RefusalPlace, refusal: RememberedRefusal): void;
  /** The password succeeded at `place` after not being proved there: what was remembered of it goes. */
  proved(place: RefusalPlace): void;
  /** The handshake that followed a {@link recall} ended (whatever its outcome, told before). */
  release(place: RefusalPlace): void;
}

/** A {@link RefusalMemory} bound to one place, whose credentials are read when asked (they may be replaced). */
export interface RefusalKeeping {
  readonly memory: RefusalMemory;
  /** The place with the credentials held for it now; undefined when they have no password. */
  readonly place: () => RefusalPlace | undefined;
}
