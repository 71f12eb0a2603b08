import { isIP } from 'node:net';
import type { HeaderMap } from '../headers.ts';
import { unbracketed } from '../options.ts';
import { hostUrl } from './host-header.ts';

/**
 * Recognises redirect hops the dispatcher is not told about (S5): fetch follows a 3xx itself, and
 * an interceptor between undici's redirect interceptor and the agent (retry, decompress) hides the
 * redirect handler's `history`. But the agent delivered that 3xx and saw its `Location`: a dispatch
 * to exactly that URL soon after is the hop. A 3xx a cache may keep (undici's cache interceptor)
 * can be replayed without reaching the agent again: its target stays a hop, every dispatch to it,
 * for as long as a cache may serve it. A chain that went to another origin stays marked: the
 * responses to a hop note their same-origin targets too (B/x → B/y after A → B/x), so every later
 * hop of it is one, as the redirect interceptor's `history` makes it. Misclassifying a direct call
 * to the same URL only costs a 401 (the safe side).
 */

/** What fetch and undici's redirect interceptor follow (the interceptor also follows 300). */
const REDIRECT_STATUSES = new Set([300, 301, 302, 303, 307, 308]);
/** fetch dispatches the hop as soon as the 3xx head arrives; a generous bound for a busy event loop. */
const HOP_WINDOW_MS = 10_000;
/** A cached redirect's target is a hop at most this long (a year: what `immutable` means to undici's cache). */
const MAX_REPLAY_MS = 365 * 24 * 3600 * 1000;
/** Bound on remembered hops, so a server that redirects everything cannot grow memory. */
const MAX_PENDING = 1000;
/** Statuses a cache may keep on `Last-Modified` alone (RFC 9111 §4.2.2, as undici's cache does). */
const HEURISTIC_STATUSES = new Set([300, 301, 308]);

interface Pending {
  count: number;
  expires: number;
  /** A cache may replay the 3xx: every dispatch to the target until `expires` is the hop. */
  cached: boolean;
}

const joined = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v.join(',') : v);

/**
 * Whether `origin`'s host may be an address (a cheap test on the hot path: its first character is
 * a digit or `[`), which an interceptor may have put there in place of the name the caller gave.
 */
export function mayBeAddress(origin: string): boolean {
  const c = origin.charCodeAt(origin.indexOf('//') + 2);
  return c === 0x5b || (c >= 0x30 && c <= 0x39);
}

/**
 * The origin as the caller and a 3xx's `Location` name it: undici's `dns` interceptor puts the
 * address it resolved in `opts.origin` and keeps the name in the Host header, so a redirect hop
 * must be noted and recognised by that name, or a hop to another origin passes for a direct call
 * and gets an ambient credential (a certificate, a Kerberos ticket). `origin` itself when its host
 * is not an address or no usable Host header names another.
 */
export function namedOrigin(origin: string, headers: HeaderMap): string {
  const host = headers.host;
  if (typeof host !== 'string' || !mayBeAddress(origin)) return origin;
  if (isIP(unbracketed(new URL(origin).hostname)) === 0) return origin;
  // A Host header with more than a host and port is not the dns interceptor's: no name from it.
  return hostUrl(origin, host)?.origin ?? origin;
}

/**
 * How long a cache may serve this response again (ms, 0 when none may store it): freshness from
 * `s-maxage`/`max-age`, else `Expires`, else the 10% heuristic on `Last-Modified`, else a year for
 * `immutable`; plus `stale-while-revalidate` / `stale-if-error`. A response a cache may keep only to
 * revalidate (`max-age=0`, `no-cache`, a past `Expires`, with an `ETag` or `Last-Modified`) may be
 * served again after a 304 the agent cannot tie to it: a year too. Rounded up where unsure (safe side).
 */
export function replayableFor(status: number, headers: Record<string, string | string[]>, now: number): number {
  const directives = new Map<string, string>();
  for (const part of (joined(headers['cache-control']) ?? '').split(',')) {
    const [name = '', value = ''] = part.trim().toLowerCase().split('=');
    if (name) directives.set(name, value.replace(/^"|"$/g, ''));
  }
  if (directives.has('no-store')) return 0;
  const seconds = (name: string) => {
    const n = Number.parseInt(directives.get(name) ?? '', 10);
    return Number.isFinite(n) && n > 0 ? n * 1000 : 0;
  };
  let fresh = Math.max(seconds('s-maxage'), seconds('max-age'));
  const expires = joined(headers.expires);
  const lastModified = joined(headers['last-modified']);
  if (!directives.has('s-maxage') && !directives.has('max-age')) {
    if (expires !== undefined) fresh = Math.max(0, Date.parse(expires) - now) || 0;
    else if (lastModified !== undefined && HEURISTIC_STATUSES.has(status))
      fresh = Math.max(0, (now - Date.parse(lastModified)) / 10) || 0;
    if (directives.has('immutable')) fresh = MAX_REPLAY_MS;
  }
  const stale = Math.max(seconds('stale-while-revalidate'), seconds('stale-if-error'));
  if (fresh + stale > 0) return Math.min(fresh + stale, MAX_REPLAY_MS);
  const storable = ['max-age', 's-maxage', 'no-cache'].some((d) => directives.has(d)) || expires !== undefined;
  const validator = headers.etag !== undefined || lastModified !== undefined;
  return storable && validator ? MAX_REPLAY_MS : 0;
}

/** fetch's test for a Location to read as UTF-8 first (undici's `isValidEncodedURL`): any byte outside 0x20–0x7E. */
const NOT_ASCII = /[^\x20-\x7e]/;

/**
 * Every `origin + path` a follower may make of a redirect's `Location` (the value, or the lines, the
 * agent saw in its answer to `origin` + `path`): other origins only, unless `chained` (the answer
 * was to a hop, and its chain stays one to its end, same origin or not). Followers read it in
 * different ways, and a way missed here would send credentials on the hop: fetch joins several
 * lines with ", " and reads bytes beyond ASCII as UTF-8 (what browsers do); undici's redirect
 * interceptor joins them with ","; other clients take the first line. Each reading is a hop (a
 * direct call to one of the others only costs a 401: the safe side).
 */
function hopTargets(
  location: string | string[] | undefined,
  origin: string,
  path: string,
  chained: boolean,
): Set<string> {
  const values = Array.isArray(location) ? [location.join(', '), location.join(','), location[0]] : [location];
  const targets = new Set<string>();
  const base = origin + path;
  for (const value of values) {
    if (!value) continue;
    const readings = NOT_ASCII.test(value) ? [value, Buffer.from(value, 'latin1').toString('utf8')] : [value];
    for (const reading of readings) {
      let target: URL;
      try {
        target = new URL(reading, base);
      } catch {
        continue; // a follower fails on a bad Location too: no hop follows
      }
      // A same-origin redirect is no trust question, unless the chain has passed through another
      // origin: B/x → B/y after A → B/x must go as bare as B/x did (review r61).
      if (chained || target.origin !== origin) targets.add(target.origin + target.pathname + target.search);
    }
  }
  return targets;
}

export class RedirectHops {
  /** `origin + path` of a pending cross-origin hop → how many are expected, until when. */
  readonly #pending = new Map<string, Pending>();

  /**
   * Notes a response the agent delivered for `origin` + `path`: a redirect to another origin is
   * remembered as a pending hop; with `chained` (the request was itself a cross-origin hop), a
   * redirect within its origin too, so the chain stays marked through every later hop.
   */
  noteResponse(
    origin: string,
    path: string,
    status: number,
    headers: Record<string, string | string[]>,
    chained = false,
  ): void {
    if (!REDIRECT_STATUSES.has(status)) return;
    const targets = hopTargets(headers.location, origin, path, chained);
    if (targets.size === 0) return;
    const now = Date.now();
    const replayable = replayableFor(status, headers, now);
    const expires = now + Math.max(HOP_WINDOW_MS, replayable);
    for (const key of targets) {
      const pending = this.#pending.get(key);
      if (pending) {
        pending.count += 1;
        pending.expires = Math.max(pending.expires, expires);
        pending.cached ||= replayable > 0;
        continue;
      }
      if (this.#pending.size >= MAX_PENDING) this.#evict(now);
      this.#pending.set(key, { count: 1, expires, cached: replayable > 0 });
    }
  }

  /** True when a dispatch to `origin` + `path` is a pending cross-origin hop; consumes it (unless cached). */
  consume(origin: string, path: string): boolean {
    if (this.#pending.size === 0) return false;
    const key = origin + path;
    const pending = this.#pending.get(key);
    if (!pending) return false;
    const live = pending.expires >= Date.now();
    if (!live || (!pending.cached && --pending.count === 0)) this.#pending.delete(key);
    return live;
  }

  #evict(now: number): void {
    for (const [key, p] of this.#pending) if (p.expires < now) this.#pending.delete(key);
    // Still full: the oldest cached ones go first — a hop fetch is about to make matters now, and
    // cached ones (which any origin can add, for up to a year) must not crowd it out — then the
    // oldest of all (Map keeps insertion order).
    for (const anyKind of [false, true])
      for (const [key, p] of this.#pending) {
        if (this.#pending.size < MAX_PENDING) return;
        if (anyKind || p.cached) this.#pending.delete(key);
      }
  }
}
