/**
 * `--retry N` and its companions, with curl 8.21's rules (its tool_operate.c `retrycheck` and
 * `retry_sleep`): what is transient, how long to wait, and the warning curl prints. One exception,
 * on purpose: a transfer whose credentials were refused is never sent again (R4: a rotated password
 * must not lock the account), not even with --retry-all-errors. Loaded only with --retry.
 */

import { KDC_RECHECK_MS } from '../session/origin-memory.ts';

/** The --retry options, in ms where curl takes seconds. */
export interface RetryOptions {
  /** --retry: how many times to try again. */
  readonly retries: number;
  /** --retry-delay: a fixed wait; 0 is curl's back-off (1 s, doubling up to 10 min). */
  readonly delayMs: number;
  /** --retry-max-time: no retry once this long has passed since the first attempt; 0 is no limit. */
  readonly maxTimeMs: number;
  /** --retry-all-errors: any failed transfer (exit code other than 0) is retried. */
  readonly allErrors: boolean;
  /** --retry-connrefused: a refused connection (exit 7, ECONNREFUSED) is transient too. */
  readonly connRefused: boolean;
}

/** HTTP statuses curl 8.21 retries: 408, 429, 500, 502, 503, 504, and Cloudflare's 522 and 524. */
export const TRANSIENT_STATUSES: ReadonlySet<number> = new Set([408, 429, 500, 502, 503, 504, 522, 524]);

/** curl's RETRY_SLEEP_DEFAULT and RETRY_SLEEP_MAX. */
const FIRST_SLEEP_MS = 1000;
const MAX_SLEEP_MS = 600_000;
/** curl caps Retry-After at 6 hours. */
const MAX_RETRY_AFTER_S = 21_600;

/** How an attempt ended. */
export interface Attempt {
  /** The exit code it would end the command with. */
  readonly exit: number;
  /** The final response's status, 0 when none came. */
  readonly status: number;
  /** The system error code behind a failure to connect (ECONNREFUSED), when known. */
  readonly errno?: string | undefined;
  /** The credentials were refused (a 401 or 407 that stands, an authentication error): never retried. */
  readonly refused: boolean;
  /** -f or --fail-with-body: an HTTP error is the failure (22) that may be retried. */
  readonly failOnError: boolean;
  /** The final response's Retry-After. */
  readonly retryAfter?: string | string[] | undefined;
  /**
   * A Kerberos step could not reach the KDC: it timed out on GSS-API (28), or the 401 it led to is
   * the answer because no KDC answered (0, 22 with -f) — no verdict of the server's on credentials,
   * none went. Transient, as an unreachable host is to curl; the retry waits until the origin asks
   * the KDC again ({@link KDC_RECHECK_MS}), or it would only read the origin's memory of the outage.
   */
  readonly kdcSilent?: boolean | undefined;
}

export type RetryReason = 'all errors' | 'timeout' | 'connection refused' | 'HTTP error' | 'KDC';

/** The next attempt, after `delayMs`; `warning` is curl's line for it. */
export interface RetryDecision {
  readonly delayMs: number;
  readonly warning: string;
}

/**
 * Retry-After in seconds (RFC 9110 §10.2.3: delay-seconds or an HTTP-date), as curl reads it: a
 * date in the past, or a value that is neither, is 0 (no wait of its own); at most 6 hours.
 */
export function retryAfterSeconds(value: string | string[] | undefined, now = Date.now()): number {
  const text = (Array.isArray(value) ? value[0] : value)?.trim();
  if (!text) return 0;
  let seconds = 0;
  const number = /^(\d+)/.exec(text);
  if (number) seconds = Number(number[1]);
  else {
    const date = Date.parse(text);
    if (Number.isFinite(date) && date >= now) seconds = Math.floor((date - now) / 1000);
  }
  return Math.min(seconds, MAX_RETRY_AFTER_S);
}

/** curl's wording of a wait: `1 second`, `2 seconds`, `0.100 seconds`. */
function secondsText(ms: number): string {
  const whole = Math.floor(ms / 1000);
  const part = ms % 1000;
  return `${whole}${part ? `.${String(part).padStart(3, '0')}` : ''} second${ms === 1000 ? '' : 's'}`;
}

const REASON_TEXT: Readonly<Record<RetryReason, string>> = {
  'all errors': '(retrying all errors)',
  timeout: ': timeout',
  'connection refused': ': connection refused',
  'HTTP error': ': HTTP error',
  KDC: ': no Kerberos KDC answered',
};

/** One transfer's retries: ask {@link next} once per attempt. */
export class Retrier {
  readonly #options: RetryOptions;
  readonly #now: () => number;
  readonly #started: number;
  #remaining: number;
  /** curl's per->retry_sleep: the back-off's current wait (--retry-delay's, when given). */
  #sleep: number;
  /** How many times the transfer was sent again (-w %{num_retries}). */
  retries = 0;
  /** Set when a retry was not made because of it (curl's Retry-After warning). */
  #notice: string | undefined;

  constructor(options: RetryOptions, now: () => number = () => performance.now()) {
    this.#options = options;
    this.#now = now;
    this.#started = now();
    this.#remaining = options.retries;
    this.#sleep = options.delayMs;
  }

  /** Whether `status` is one curl retries (the answer then may not be output: it is sent again). */
  transient(status: number): boolean {
    return TRANSIENT_STATUSES.has(status);
  }

  /** Why curl would retry `attempt` (nothing: it would not). */
  reason(attempt: Attempt): RetryReason | undefined {
    // R4: refused credentials go again only when the user asks again. A 401 that stood because no
    // KDC answered refused nothing: none went (trial u12).
    if (attempt.refused) return undefined;
    if (attempt.kdcSilent) return 'KDC';
    if (attempt.status === 401 || attempt.status === 407) return undefined;
    let reason: RetryReason | undefined;
    // curl's "timeout" covers a host (or proxy) name that did not resolve too.
    if (attempt.exit === 28 || attempt.exit === 6 || attempt.exit === 5) reason = 'timeout';
    else if (attempt.exit === 7 && this.#options.connRefused) {
      if (attempt.errno === 'ECONNREFUSED') reason = 'connection refused';
    } else if (attempt.exit === 0 || (attempt.failOnError && attempt.exit === 22)) {
      if (TRANSIENT_STATUSES.has(attempt.status)) reason = 'HTTP error';
    }
    if (attempt.exit !== 0 && !reason && this.#options.allErrors) reason = 'all errors';
    return reason;
  }

  /**
   * The next attempt for one that ended as `attempt`, or undefined: not transient, no retries
   * left, --retry-max-time passed, or a Retry-After past it ({@link notice} says so). Counts the
   * retry it grants.
   */
  next(attempt: Attempt): RetryDecision | undefined {
    this.#notice = undefined;
    const elapsed = this.#now() - this.#started;
    if (this.#remaining <= 0 || (this.#options.maxTimeMs > 0 && elapsed >= this.#options.maxTimeMs)) return undefined;
    const reason = this.reason(attempt);
    if (!reason) return undefined;
    let delayMs = 0;
    if (reason === 'HTTP error') {
      delayMs = retryAfterSeconds(attempt.retryAfter) * 1000;
      if (delayMs > 0 && this.#options.maxTimeMs > 0 && elapsed + delayMs > this.#options.maxTimeMs) {
        this.#notice =
          'The Retry-After: time would make this command line exceed the maximum allowed time for retries.';
        return undefined;
      }
    }
    if (delayMs === 0) {
      if (this.#options.delayMs === 0)
        this.#sleep = Math.min(this.#sleep === 0 ? FIRST_SLEEP_MS : this.#sleep * 2, MAX_SLEEP_MS);
      delayMs = this.#sleep;
    }
    // Not before the origin asks the KDC again: sooner, the attempt reads its memory of the outage.
    if (reason === 'KDC') delayMs = Math.max(delayMs, KDC_RECHECK_MS);
    const left = this.#remaining;
    this.#remaining -= 1;
    this.retries += 1;
    return {
      delayMs,
      warning: `Problem ${REASON_TEXT[reason]}. Retrying in ${secondsText(delayMs)}. ${left} retr${left > 1 ? 'ies' : 'y'} left.`,
    };
  }

  /** Why the last {@link next} made no retry where curl says why (a Retry-After too long). */
  get notice(): string | undefined {
    return this.#notice;
  }
}
