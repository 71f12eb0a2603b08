/**
 * Recognises fetch's own redirect hops (S5). fetch follows a 3xx itself and dispatches the next
 * request without telling the dispatcher that it is a hop. But the agent delivered that 3xx and saw
 * its `Location`: a dispatch to exactly that URL soon after is the hop. Misclassifying a direct
 * call to the same URL only costs a 401 (the safe side).
 */

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
/** fetch dispatches the hop as soon as the 3xx head arrives; a generous bound for a busy event loop. */
const HOP_WINDOW_MS = 10_000;
/** Bound on remembered hops, so a server that redirects everything cannot grow memory. */
const MAX_PENDING = 1000;

interface Pending {
  count: number;
  expires: number;
}

export class RedirectHops {
  /** `origin + path` of a pending cross-origin hop → how many are expected, until when. */
  readonly #pending = new Map<string, Pending>();

  /**
   * Notes a response the agent delivered for `origin` + `path`: a redirect to another origin is
   * remembered as a pending hop.
   */
  noteResponse(origin: string, path: string, status: number, headers: Record<string, string | string[]>): void {
    if (!REDIRECT_STATUSES.has(status)) return;
    const raw = headers.location;
    const location = Array.isArray(raw) ? raw[0] : raw;
    if (!location) return;
    let target: URL;
    try {
      target = new URL(location, origin + path);
    } catch {
      return; // fetch fails on a bad Location too: no hop follows
    }
    if (target.origin === origin) return; // same-origin hops are not a trust question
    const key = target.origin + target.pathname + target.search;
    const now = Date.now();
    const pending = this.#pending.get(key);
    if (pending) {
      pending.count += 1;
      pending.expires = now + HOP_WINDOW_MS;
      return;
    }
    if (this.#pending.size >= MAX_PENDING) this.#evict(now);
    this.#pending.set(key, { count: 1, expires: now + HOP_WINDOW_MS });
  }

  /** True when a dispatch to `origin` + `path` is a pending cross-origin hop; consumes it. */
  consume(origin: string, path: string): boolean {
    if (this.#pending.size === 0) return false;
    const key = origin + path;
    const pending = this.#pending.get(key);
    if (!pending) return false;
    if (--pending.count === 0) this.#pending.delete(key);
    return pending.expires >= Date.now();
  }

  #evict(now: number): void {
    for (const [key, p] of this.#pending) if (p.expires < now) this.#pending.delete(key);
    // Still full: drop the oldest (Map keeps insertion order).
    for (const key of this.#pending.keys()) {
      if (this.#pending.size < MAX_PENDING) break;
      this.#pending.delete(key);
    }
  }
}
