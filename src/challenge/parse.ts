import { isQdtext, isQuotedPairChar, isTchar, isToken68Char, isWs } from './syntax.ts';
import type { Challenge } from './types.ts';

/** Default for {@link ParseChallengesOptions.maxBytes}: 16 KiB over all header values (S3). */
export const DEFAULT_MAX_CHALLENGE_BYTES = 16 * 1024;
/** Default for {@link ParseChallengesOptions.maxChallenges}. */
export const DEFAULT_MAX_CHALLENGES = 32;

/** Bounds for {@link parseChallenges} (S3). */
export interface ParseChallengesOptions {
  /**
   * When the header values together are longer than this many characters, the whole header is ignored
   * (no challenges). undici decodes header octets as latin1, so characters are bytes. Default 16 KiB.
   */
  readonly maxBytes?: number;
  /** Challenges kept, in order; later ones are ignored. Default 32. */
  readonly maxChallenges?: number;
}

const COMMA = 0x2c;
const EQUALS = 0x3d;
const DQUOTE = 0x22;
const BACKSLASH = 0x5c;

/** Parse state for one header value. */
interface Scan {
  readonly s: string;
  /**
   * Lowest position of a `"` whose quoted-string runs to the end of the value. Any later `"` cannot be
   * closed either (its scan reaches the same state at the same position), so we fail it at once: this keeps
   * garbage like `"\",\",\",...` linear instead of quadratic.
   */
  openQuote: number;
}

/**
 * Parse a `WWW-Authenticate` or `Proxy-Authenticate` header (RFC 9110 §11.2–11.3, §5.6) into challenges.
 *
 * Accepts the header the way undici hands it over: one string (HTTP/2, repeated fields joined with `, `),
 * an array of field values (HTTP/1.1), or undefined. Never throws: a malformed challenge is dropped as a
 * whole and parsing resumes at the next comma outside a quoted-string (or, after an unterminated quote, at
 * the next comma after it). Scheme and parameter names are case-insensitive: `schemeKey` and parameter
 * names are lower-cased, and of duplicate parameters the first wins. An element that is both a valid
 * token68 and a parameter without value, such as `Basic realm=`, is a token68 as the grammar says.
 *
 * @param header - The header value(s).
 * @param opts - Size bounds; see {@link ParseChallengesOptions}.
 * @returns The challenges in the order sent, each frozen (the array is a new one per call).
 */
export function parseChallenges(
  header: string | readonly string[] | undefined,
  opts: ParseChallengesOptions = {},
): Challenge[] {
  const maxBytes = bound(opts.maxBytes, DEFAULT_MAX_CHALLENGE_BYTES);
  const maxChallenges = bound(opts.maxChallenges, DEFAULT_MAX_CHALLENGES);
  // Runtime checks as well as types: header objects come from the network via undici and from callers.
  const values = typeof header === 'string' ? [header] : Array.isArray(header) ? header : [];
  let total = 0;
  for (const v of values) if (typeof v === 'string') total += v.length;
  if (total > maxBytes) return [];
  const out: Challenge[] = [];
  for (const v of values) {
    if (out.length >= maxChallenges) break;
    // Each field line on its own, so an unterminated quote in one cannot swallow the next.
    if (typeof v === 'string') parseValue({ s: v, openQuote: v.length }, out, maxChallenges);
  }
  return out;
}

/**
 * Parse an `Authentication-Info` or `Proxy-Authentication-Info` header (RFC 9110 §11.6.3, §11.7.3):
 * a list of auth-params with no scheme. Same lexing and bounds as {@link parseChallenges}: names
 * lower-cased, quoted-string values unescaped, of duplicates the first wins (over all field lines).
 * Never throws.
 *
 * @returns The parameters, frozen; undefined when the header is absent, over `maxBytes`, or not a
 *   list of auth-params (a malformed header says nothing the caller can rely on).
 */
export function parseAuthParams(
  header: string | readonly string[] | undefined,
  opts: Pick<ParseChallengesOptions, 'maxBytes'> = {},
): Readonly<Record<string, string>> | undefined {
  const values = typeof header === 'string' ? [header] : Array.isArray(header) ? header : [];
  if (values.length === 0) return undefined;
  let total = 0;
  for (const v of values) if (typeof v === 'string') total += v.length;
  if (total > bound(opts.maxBytes, DEFAULT_MAX_CHALLENGE_BYTES)) return undefined;
  let params: Record<string, string> | undefined;
  for (const v of values) {
    if (typeof v !== 'string') continue;
    const st: Scan = { s: v, openQuote: v.length };
    let i = 0;
    for (;;) {
      // Empty list elements and OWS between them are allowed (RFC 9110 §5.6.1).
      while (i < v.length && (isWs(v.charCodeAt(i)) || v.charCodeAt(i) === COMMA)) i++;
      if (i >= v.length) break;
      const r = parseParams(st, i);
      if (!r.ok) return undefined;
      // Usually one run of parameters makes the whole header: taken as it is.
      if (params === undefined) params = r.params;
      else for (const name of Object.keys(r.params)) if (!Object.hasOwn(params, name)) params[name] = r.params[name]!;
      i = r.end;
    }
  }
  return Object.freeze(params ?? Object.create(null));
}

function bound(v: number | undefined, dflt: number): number {
  return typeof v === 'number' && v >= 0 ? v : dflt;
}

function skipWs(s: string, i: number): number {
  while (i < s.length && isWs(s.charCodeAt(i))) i++;
  return i;
}

function skipTchars(s: string, i: number): number {
  while (i < s.length && isTchar(s.charCodeAt(i))) i++;
  return i;
}

function parseValue(st: Scan, out: Challenge[], max: number): void {
  const { s } = st;
  const n = s.length;
  let i = 0;
  while (out.length < max) {
    // OWS and empty list elements between challenges are allowed (RFC 9110 §5.6.1).
    while (i < n && (isWs(s.charCodeAt(i)) || s.charCodeAt(i) === COMMA)) i++;
    if (i >= n) return;
    const start = i;
    i = skipTchars(s, i);
    if (i === start || (i < n && s.charCodeAt(i) !== COMMA && !isWs(s.charCodeAt(i)))) {
      // Not `auth-scheme [ 1*SP ... ]`: e.g. `=foo`, `"x"`, or a parameter of a challenge dropped earlier.
      i = resync(st, i);
      continue;
    }
    const scheme = s.slice(start, i);
    i = skipWs(s, i);
    if (i >= n || s.charCodeAt(i) === COMMA) {
      out.push(makeChallenge(scheme, undefined, Object.create(null)));
      continue;
    }
    // token68 only when it fills the element; otherwise the same characters start an auth-param.
    let j = i;
    while (j < n && isToken68Char(s.charCodeAt(j))) j++;
    if (j > i) {
      let k = j;
      while (k < n && s.charCodeAt(k) === EQUALS) k++;
      const end = skipWs(s, k);
      if (end >= n || s.charCodeAt(end) === COMMA) {
        out.push(makeChallenge(scheme, s.slice(i, k), Object.create(null)));
        i = end;
        continue;
      }
    }
    const r = parseParams(st, i);
    if (r.ok) {
      out.push(makeChallenge(scheme, undefined, r.params));
      i = r.end;
    } else {
      i = resync(st, r.at);
    }
  }
}

type ParamsResult = { ok: true; params: Record<string, string>; end: number } | { ok: false; at: number };

/** `#auth-param` starting at `i`; ends before the comma that starts the next challenge, or at the end. */
function parseParams(st: Scan, i: number): ParamsResult {
  const { s } = st;
  const n = s.length;
  // Null prototype: a parameter named `__proto__` or `constructor` is just data.
  const params: Record<string, string> = Object.create(null);
  for (;;) {
    const nameStart = i;
    i = skipTchars(s, i);
    if (i === nameStart) return { ok: false, at: i };
    const name = s.slice(nameStart, i).toLowerCase();
    i = skipWs(s, i);
    if (i >= n || s.charCodeAt(i) !== EQUALS) return { ok: false, at: i };
    i = skipWs(s, i + 1);
    let value: string;
    if (i < n && s.charCodeAt(i) === DQUOTE) {
      const q = readQuoted(st, i);
      if (q === undefined) return { ok: false, at: i };
      value = q.value;
      i = q.end;
    } else {
      const valueStart = i;
      i = skipTchars(s, i);
      if (i === valueStart) return { ok: false, at: i };
      value = s.slice(valueStart, i);
    }
    if (!Object.hasOwn(params, name)) params[name] = value;
    i = skipWs(s, i);
    if (i >= n) return { ok: true, params, end: i };
    if (s.charCodeAt(i) !== COMMA) return { ok: false, at: i };
    // After a comma: `token BWS "="` continues this challenge; anything else is the next list element.
    let j = i;
    while (j < n && (isWs(s.charCodeAt(j)) || s.charCodeAt(j) === COMMA)) j++;
    const k = skipTchars(s, j);
    if (k === j) return { ok: true, params, end: i };
    const m = skipWs(s, k);
    if (m >= n || s.charCodeAt(m) !== EQUALS) return { ok: true, params, end: i };
    i = j;
  }
}

/** A quoted-string at `q` (which holds `"`), unescaped; undefined when unterminated or holding a bad character. */
function readQuoted(st: Scan, q: number): { value: string; end: number } | undefined {
  if (q >= st.openQuote) return undefined;
  const { s } = st;
  const n = s.length;
  let out = '';
  let seg = q + 1;
  let i = q + 1;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c === DQUOTE) return { value: out + s.slice(seg, i), end: i + 1 };
    if (c === BACKSLASH) {
      if (i + 1 >= n) break;
      if (!isQuotedPairChar(s.charCodeAt(i + 1))) return undefined;
      out += s.slice(seg, i);
      seg = i + 1;
      i += 2;
      continue;
    }
    if (!isQdtext(c)) return undefined;
    i++;
  }
  st.openQuote = q;
  return undefined;
}

/**
 * Skip a malformed element: to just after the next comma outside a quoted-string. After an unterminated
 * quote, the next comma after that quote is the most plausible place where a new challenge starts.
 */
function resync(st: Scan, i: number): number {
  const { s } = st;
  const n = s.length;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c === COMMA) return i + 1;
    if (c === DQUOTE) {
      const close = skipQuoted(st, i);
      if (close < 0) {
        const comma = s.indexOf(',', i + 1);
        return comma < 0 ? n : comma + 1;
      }
      i = close;
      continue;
    }
    i++;
  }
  return n;
}

/** Lenient twin of {@link readQuoted} (same lexing, any character allowed): index after the closing `"`, or -1. */
function skipQuoted(st: Scan, q: number): number {
  if (q >= st.openQuote) return -1;
  const { s } = st;
  const n = s.length;
  let i = q + 1;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c === DQUOTE) return i + 1;
    i += c === BACKSLASH ? 2 : 1;
  }
  st.openQuote = q;
  return -1;
}

function makeChallenge(scheme: string, token68: string | undefined, params: Record<string, string>): Challenge {
  const schemeKey = scheme.toLowerCase();
  Object.freeze(params);
  return Object.freeze(token68 === undefined ? { scheme, schemeKey, params } : { scheme, schemeKey, token68, params });
}
