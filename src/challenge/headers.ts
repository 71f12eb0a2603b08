import { MultilegError } from '../errors.ts';
import { type ParseChallengesOptions, parseAuthParams, parseChallenges } from './parse.ts';
import { isQdtext, isQuotedPairChar, isToken, isToken68 } from './syntax.ts';
import type { Challenge } from './types.ts';

/** Response headers as undici hands them to a handler: lower-case names; repeated fields as arrays on HTTP/1.1. */
export type ResponseHeaders = Record<string, string | string[] | undefined>;

/** Default for the `maxLength` of {@link readAuthId} (S3). */
export const DEFAULT_MAX_AUTH_ID_LENGTH = 1024;
/** Longest `Remote-http-version` value {@link readRemoteHttpVersion} accepts (S3). */
export const MAX_REMOTE_HTTP_VERSION_LENGTH = 64;
// Longest Persistent-Auth / Proxy-support value worth reading: real ones are a few words (S3).
const MAX_FLAG_HEADER_LENGTH = 1024;

/**
 * A header by name, case-insensitively. undici lower-cases names already, so the direct lookup is the
 * usual path; the scan covers header objects built by hand. Non-string values are treated as absent.
 *
 * @param name - Lower-case header name.
 */
export function getHeader(headers: ResponseHeaders | undefined, name: string): string | string[] | undefined {
  if (headers === undefined || headers === null) return undefined;
  let v: unknown = Object.hasOwn(headers, name) ? headers[name] : undefined;
  if (v === undefined) {
    for (const key of Object.keys(headers)) {
      if (key.length === name.length && key.toLowerCase() === name) {
        v = headers[key];
        break;
      }
    }
  }
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) return v.filter((x): x is string => typeof x === 'string');
  return undefined;
}

/**
 * The challenges of a 401 (`WWW-Authenticate`) or, with `proxy`, a 407 (`Proxy-Authenticate`) response.
 * See {@link parseChallenges}.
 */
export function readChallenges(
  headers: ResponseHeaders | undefined,
  proxy = false,
  opts?: ParseChallengesOptions,
): Challenge[] {
  return parseChallenges(getHeader(headers, proxy ? 'proxy-authenticate' : 'www-authenticate'), opts);
}

/**
 * The parameters of a response's `Authentication-Info` or, with `proxy`, `Proxy-Authentication-Info`
 * header (RFC 9110 §11.6.3, §11.7.3): what the scheme that authenticated the request tells the client
 * after accepting its credentials (Digest: `rspauth`, `nextnonce`). See {@link parseAuthParams}:
 * undefined when absent or malformed.
 */
export function readAuthenticationInfo(
  headers: ResponseHeaders | undefined,
  proxy = false,
): Readonly<Record<string, string>> | undefined {
  return parseAuthParams(getHeader(headers, proxy ? 'proxy-authentication-info' : 'authentication-info'));
}

/** What {@link readAuthId} found: the value, or a value too long to use (S3). */
export type AuthIdReading =
  | { readonly ok: true; readonly value: string }
  | { readonly ok: false; readonly reason: 'too-long' };

/**
 * The `Auth-ID` response header (D§3, C3): an opaque value the client must echo byte for byte, so it is
 * returned exactly as undici decoded it (latin1, one character per octet), not trimmed or unquoted. When
 * undici gives several values the first is used. An empty value is returned as such; the caller decides.
 *
 * @param maxLength - Longest accepted value in characters (= octets); default 1024.
 * @returns undefined when absent; `{ ok: false, reason: 'too-long' }` when over `maxLength`, so the
 *   caller can fail the handshake (e.g. with `InvalidTokenError`) rather than silently continue without it.
 */
export function readAuthId(
  headers: ResponseHeaders | undefined,
  maxLength = DEFAULT_MAX_AUTH_ID_LENGTH,
): AuthIdReading | undefined {
  const v = first(getHeader(headers, 'auth-id'));
  if (v === undefined) return undefined;
  if (v.length > maxLength) return { ok: false, reason: 'too-long' };
  return { ok: true, value: v };
}

/**
 * Whether the response says the session is authenticated (C4): a `Persistent-Auth` or `Persisted-Auth`
 * header (any case) whose value is `true` (case-insensitive) or empty. `false` and any other value mean
 * false (D2: unknown means false); so does any present header that disagrees (e.g. `true, false`, or
 * `Persistent-Auth: true` with `Persisted-Auth: false`), because a wrong "true" would skip authentication.
 */
export function readPersistentAuth(headers: ResponseHeaders | undefined): boolean {
  let seen = false;
  for (const name of ['persistent-auth', 'persisted-auth']) {
    const v = getHeader(headers, name);
    if (v === undefined) continue;
    const values = typeof v === 'string' ? [v] : v;
    if (values.length === 0) continue;
    seen = true;
    for (const value of values) {
      if (value.length > MAX_FLAG_HEADER_LENGTH) return false;
      // HTTP/2 joins repeated fields with `, `: each element must say true (or be empty).
      for (const element of value.split(',')) {
        const e = trimOws(element);
        if (e !== '' && e.toLowerCase() !== 'true') return false;
      }
    }
  }
  return seen;
}

/** Whether the response says anything about Persistent-Auth at all (either spelling), true or not. */
export function hasPersistentAuth(headers: ResponseHeaders | undefined): boolean {
  return getHeader(headers, 'persistent-auth') !== undefined || getHeader(headers, 'persisted-auth') !== undefined;
}

/**
 * Whether a proxy vouches that it keeps client-to-server connections apart (H4, D§6): `Proxy-support`
 * lists `Session-Based-Authentication` (comma list over all values, case-insensitive).
 */
export function readProxySupport(headers: ResponseHeaders | undefined): boolean {
  const v = getHeader(headers, 'proxy-support');
  if (v === undefined) return false;
  for (const value of typeof v === 'string' ? [v] : v) {
    if (value.length > MAX_FLAG_HEADER_LENGTH) continue;
    for (const element of value.split(',')) {
      if (trimOws(element).toLowerCase() === 'session-based-authentication') return true;
    }
  }
  return false;
}

/**
 * The HTTP version of the server behind a proxy, from `Remote-http-version` (H3, D§4), e.g. `1.1`:
 * the first value with OWS trimmed. undefined when absent, empty or longer than
 * {@link MAX_REMOTE_HTTP_VERSION_LENGTH}.
 */
export function readRemoteHttpVersion(headers: ResponseHeaders | undefined): string | undefined {
  const v = first(getHeader(headers, 'remote-http-version'));
  if (v === undefined || v.length > MAX_REMOTE_HTTP_VERSION_LENGTH) return undefined;
  const t = trimOws(v);
  return t === '' ? undefined : t;
}

// RFC 7616 §3.3: senders must quote these even when they are tokens; some servers and clients insist.
// charset: RFC 7617 always shows it quoted.
const ALWAYS_QUOTED = new Set(['realm', 'domain', 'nonce', 'opaque', 'qop', 'charset']);

/**
 * Serialise a challenge as one `WWW-Authenticate` / `Proxy-Authenticate` element, so that
 * `parseChallenges(formatChallenge(c))` deep-equals `[c]` (for lower-case parameter names). Values are
 * sent as tokens when they are tokens, quoted (with `"` and `\` escaped) otherwise, and always quoted for
 * `realm`, `domain`, `nonce`, `opaque`, `qop`, `charset`.
 *
 * @throws MultilegError `MULTILEG_INVALID_CHALLENGE` when the challenge cannot be written as a header:
 *   a scheme or parameter name that is not a token, a token68 that is not token68, a value with control
 *   characters (which also keeps CR/LF out of headers), or both a token68 and parameters.
 */
export function formatChallenge(c: Challenge): string {
  if (!isToken(c.scheme)) throw invalid('the scheme is not an HTTP token');
  const names = Object.keys(c.params);
  if (c.token68 !== undefined) {
    if (names.length > 0) throw invalid('a challenge has either a token68 or parameters, not both');
    if (!isToken68(c.token68)) throw invalid('the token68 has characters outside token68');
    return `${c.scheme} ${c.token68}`;
  }
  if (names.length === 0) return c.scheme;
  const parts: string[] = [];
  for (const name of names) {
    if (!isToken(name)) throw invalid('a parameter name is not an HTTP token');
    const value = c.params[name]!;
    parts.push(`${name}=${!ALWAYS_QUOTED.has(name.toLowerCase()) && isToken(value) ? value : quote(value)}`);
  }
  return `${c.scheme} ${parts.join(', ')}`;
}

function quote(value: string): string {
  let out = '"';
  let seg = 0;
  for (let i = 0; i < value.length; i++) {
    const ch = value.charCodeAt(i);
    if (isQdtext(ch)) continue;
    if (!isQuotedPairChar(ch)) throw invalid('a parameter value has control characters');
    out += value.slice(seg, i) + '\\';
    seg = i;
  }
  return out + value.slice(seg) + '"';
}

function invalid(detail: string): MultilegError {
  return new MultilegError('MULTILEG_INVALID_CHALLENGE', `formatChallenge: ${detail}; fix the challenge object`);
}

function first(v: string | string[] | undefined): string | undefined {
  return typeof v === 'string' ? v : v?.[0];
}

function trimOws(s: string): string {
  return s.replace(/^[ \t]+|[ \t]+$/g, '');
}
