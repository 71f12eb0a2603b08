import { isIP } from 'node:net';
import type { HeaderMap } from '../headers.ts';
import { unbracketed } from '../options.ts';
import { hostUrl } from './host-header.ts';

/**
 * Recognises redirect hops the dispatcher is not told about (S5): fetch follows a 3xx itself, and
 * an interceptor between undici's redirect interceptor and the agent (retry, decompress) hides the
 * redirect handler's `history`. But the agent delivered that 3xx and saw its `Location`: a dispatch
 * to exactly that URL soon after is the hop. A 3xx to another origin a cache may keep (undici's
 * cache interceptor) can be replayed without reaching the agent again: its target stays a hop,
 * every dispatch to it, for as long as a cache may serve it. A chain that went to another origin
 * stays marked: the responses to a hop note their same-origin targets too (B/x → B/y after
 * A → B/x), once and soon, as the redirect interceptor's `history` makes it. A same-origin 3xx a
 * cache may replay leaves a link `target ← source` instead of a long mark: its target is a hop
 * while the source is one pending (a cache answered it without the agent seeing it), so a direct
 * call to the target, once the chain is over, is the caller's own (review r63). Misclassifying a
 * direct call to the same URL only costs a 401 (the safe side).
 */
/** What fetch and undici's redirect interceptor follow (the interceptor also follows 300). */
const REDIRECT_STATUSES = new Set([300, 301, 302, 303, 307, 308]);
/** fetch dispatches the hop as soon as the 3xx head arrives; a generous bound for a busy event loop. */
const HOP_WINDOW_MS = 10_000;
/** A cached redirect's target is a hop at most this long (a year: what `immutable` means to undici's cache). */
const MAX_REPLAY_MS = 365 * 24 * 3600 * 1000;
/** Bound on remembered hops, so a server that redirects everything cannot grow memory. */
const MAX_PENDING = 1000;
/** Bound on targets with links to their same-origin sources (oldest dropped first), for the same reason. */
const MAX_LINKED = 1000;
/** Bound on the sources kept for one target (oldest dropped first). */
const MAX_SOURCES = 8;
/** How many redirects back a target's links are followed (fetch follows 20 redirects at most). */
const MAX_LINK_DEPTH = 20;
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
  const validator = headers.etag !== undefined || lastModified !== undefined;
  // With a validator a cache keeps it past its freshness and replays it after a 304 the agent
  // cannot tie to it (undici keeps a stale entry to revalidate; review r65): a year too.
  if (fresh + stale > 0) return validator ? MAX_REPLAY_MS : Math.min(fresh + stale, MAX_REPLAY_MS);
  const storable = ['max-age', 's-maxage', 'no-cache'].some((d) => directives.has(d)) || expires !== undefined;
  return storable && validator ? MAX_REPLAY_MS : 0;
}

/** fetch's test for a Location to read as UTF-8 first (undici's `isValidEncodedURL`): any byte outside 0x20–0x7E. */
const NOT_ASCII = /[^\x20-\x7e]/;

/**
 * Every `origin + path` a follower may make of a redirect's `Location` (the value, or the lines, the
 * agent saw in its answer to `origin` + `path`), into `elsewhere` (other origins) or `within`
 * (`origin` itself). Followers read it in different ways, and a way missed here would send
 * credentials on the hop: fetch joins several lines with ", " and reads bytes beyond ASCII as UTF-8
 * (what browsers do); undici's redirect interceptor joins them with ","; other clients take the
 * first line. Each reading is a hop (a direct call to one of the others only costs a 401: the safe side).
 */
function hopTargets(
  location: string | string[] | undefined,
  origin: string,
  path: string,
  elsewhere: Set<string>,
  within: Set<string>,
): void {
  const values = Array.isArray(location) ? [location.join(', '), location.join(','), location[0]] : [location];
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
      (target.origin === origin ? within : elsewhere).add(target.origin + target.pathname + target.search);
    }
  }
}

/** Whether any of a target's sources may still be replayed (no array built: run over every target when full). */
function someLive(sources: Map<string, number>, now: number): boolean {
  for (const expires of sources.values()) if (expires >= now) return true;
  return false;
}

export class RedirectHops {
  /** `origin + path` of a pending hop → how many are expected, until when. */
  readonly #pending = new Map<string, Pending>();
  /**
   * `origin + path` of a same-origin 3xx's target a cache may replay → its sources (`origin + path`
   * of the request the 3xx answered) → until when a cache may replay it.
   */
  readonly #links = new Map<string, Map<string, number>>();

  /**
   * Notes a response the agent delivered for `origin` + `path`: a redirect to another origin is
   * remembered as a pending hop; with `chained` (the request was itself a hop), a redirect within
   * its origin too, once and soon, so the chain stays marked through every later hop. A redirect
   * within its origin that a cache may replay also links its target to `origin` + `path`, for as
   * long as a cache may serve it: see {@link consume}.
   */
  noteResponse(
    origin: string,
    path: string,
    status: number,
    headers: Record<string, string | string[]>,
    chained = false,
  ): void {
    // One comparison for a 2xx (the fast path).
    if (status < 300 || status > 308) return;
    if (status === 304) {
      // A hop revalidated by a cache: it replays its stored answer (a 3xx, maybe) without the agent
      // seeing it, so the hop is pending again for the links from it (consume).
      if (chained) this.#add(origin + path, Date.now() + HOP_WINDOW_MS, false);
      return;
    }
    if (!REDIRECT_STATUSES.has(status)) return;
    const elsewhere = new Set<string>();
    const within = new Set<string>();
    hopTargets(headers.location, origin, path, elsewhere, within);
    if (elsewhere.size === 0 && within.size === 0) return;
    const now = Date.now();
    const replayable = replayableFor(status, headers, now);
    const expires = now + Math.max(HOP_WINDOW_MS, replayable);
    for (const key of elsewhere) this.#add(key, expires, replayable > 0);
    for (const key of within) {
      // A hop's redirect within its origin is the chain's next hop, now; a cache's replay of it
      // later is one only while its source is a hop pending (the links).
      if (chained) this.#add(key, now + HOP_WINDOW_MS, false);
      if (replayable > 0) this.#link(key, origin + path, now + Math.max(HOP_WINDOW_MS, replayable), now);
    }
  }

  /**
   * True when a dispatch to `origin` + `path` is a hop; uses it up (unless a cache may replay it).
   * A hop it is when noted as pending, or when a same-origin 3xx a cache may replay links it
   * (through up to {@link MAX_LINK_DEPTH} of them) to a source pending now: a cache answered that
   * hop without the agent seeing it. The source stays pending (its own hop may still come; a direct
   * call to it meanwhile costs a 401, the safe side).
   */
  consume(origin: string, path: string): boolean {
    if (this.#pending.size === 0) return false;
    const key = origin + path;
    // Two map lookups for a URL no 3xx named (the fast path); the clock only for one that did.
    if (this.#pending.has(key) && this.#take(key, Date.now())) return true;
    return this.#links.has(key) && this.#viaLinks(key);
  }

  /** Whether `key`'s links lead to a hop pending now (kept apart: the fast path stays small). */
  #viaLinks(key: string): boolean {
    const now = Date.now();
    let frontier = [key];
    const seen = new Set(frontier);
    for (let depth = 0; depth < MAX_LINK_DEPTH && frontier.length > 0; depth++) {
      const next: string[] = [];
      for (const target of frontier) {
        const sources = this.#links.get(target);
        if (!sources) continue;
        for (const [source, expires] of sources) {
          if (expires < now) {
            sources.delete(source);
            continue;
          }
          // Live, not used up: a direct call to the target must not take the source's own hop away
          // (review r65: the hop to B/x then went with the certificate).
          if (this.#live(source, now)) return true;
          if (!seen.has(source)) {
            seen.add(source);
            next.push(source);
          }
        }
        if (sources.size === 0) this.#links.delete(target);
      }
      frontier = next;
    }
    return false;
  }

  /** Uses up the pending hop `key` (a cached one stays), dropping it once past its time: whether it was one. */
  #take(key: string, now: number): boolean {
    const pending = this.#pending.get(key);
    if (!pending) return false;
    const live = pending.expires >= now;
    if (!live || (!pending.cached && --pending.count === 0)) this.#pending.delete(key);
    return live;
  }

  /** Whether `key` is a hop pending now (not used up). */
  #live(key: string, now: number): boolean {
    const pending = this.#pending.get(key);
    return pending !== undefined && pending.expires >= now;
  }

  #add(key: string, expires: number, cached: boolean): void {
    const pending = this.#pending.get(key);
    if (pending) {
      pending.count += 1;
      pending.expires = Math.max(pending.expires, expires);
      pending.cached ||= cached;
      return;
    }
    if (this.#pending.size >= MAX_PENDING) this.#evict(Date.now());
    this.#pending.set(key, { count: 1, expires, cached });
  }

  #link(target: string, source: string, expires: number, now: number): void {
    let sources = this.#links.get(target);
    if (sources)
      this.#links.delete(target); // re-inserted below: the newest
    else {
      if (this.#links.size >= MAX_LINKED) {
        for (const [t, s] of this.#links) if (!someLive(s, now)) this.#links.delete(t);
        // Still full: the oldest go (Map keeps insertion order).
        for (const t of this.#links.keys()) {
          if (this.#links.size < MAX_LINKED) break;
          this.#links.delete(t);
        }
      }
      sources = new Map();
    }
    const before = sources.get(source) ?? 0;
    sources.delete(source); // re-inserted: the newest
    sources.set(source, Math.max(expires, before));
    if (sources.size > MAX_SOURCES) sources.delete(sources.keys().next().value as string);
    this.#links.set(target, sources);
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
