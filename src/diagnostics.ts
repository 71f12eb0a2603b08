/**
 * `node:diagnostics_channel` events, for tracing and metrics (and the CLI's `-v`, `-i`, `--har`):
 *
 * - `multileg:handshake` — a {@link HandshakeReport} for every finished handshake, an origin's and
 *   (`proxy: true`) a proxy's on the agent's sessions;
 * - `multileg:leg` — a {@link LegEvent} when a leg (one HTTP request on the wire, with or without
 *   credentials; a proxy's CONNECT too, `target: 'proxy'` on session `proxy-N`) is sent, when its
 *   response head arrives, and when it fails;
 * - `multileg:withheld` — a {@link WithheldEvent} when a 401 the agent could have answered goes to
 *   the caller unanswered, because the trust policy withheld the credentials, or because the server
 *   refused them (or left a password unanswered) lately and they are held back (R4) — why that 401;
 *   upgrades' (WebSocket) too, whose undici `WebSocket` error event says nothing of it.
 * - `multileg:proxy-unanswered` — a {@link ProxyUnansweredEvent} when a forwarding proxy's 407 goes
 *   to the caller unanswered (`proxy.deliver407`): why no (further) credential went to the proxy.
 * - `multileg:unanswered` — an {@link UnansweredEvent} when an origin's 401 goes to the caller
 *   because every scheme it offers that the agent has cannot run here (`deliver401`), and why.
 *
 * Events carry no secret (S2): `Authorization`, `Proxy-Authorization`, `Auth-ID`, cookies, the
 * tokens in `WWW-Authenticate` / `Proxy-Authenticate` and Digest's `rspauth` in
 * `Authentication-Info` / `Proxy-Authentication-Info` are replaced by `[redacted]` here, before any
 * subscriber sees them. Nothing is built when nobody subscribes.
 */
import { channel } from 'node:diagnostics_channel';
import type { HeaderMap } from './headers.ts';
import { carriesNoSecret } from './mechanisms/no-secret.ts';
import type { HandshakeReport } from './session/exchange.ts';
import type { WithheldReason } from './trust/policy.ts';

/** Channel names, for `diagnostics_channel.subscribe(name, listener)`. */
export const HANDSHAKE_CHANNEL = 'multileg:handshake';
/**
 * Every request the agent writes is a leg here, not only a handshake's (one on an authenticated
 * session carries no credentials: `scheme` undefined); while anyone subscribes, requests on an
 * authenticated session leave the fast path to be published (see tracingLegs).
 */
export const LEG_CHANNEL = 'multileg:leg';

export const WITHHELD_CHANNEL = 'multileg:withheld';
export const PROXY_UNANSWERED_CHANNEL = 'multileg:proxy-unanswered';
export const UNANSWERED_CHANNEL = 'multileg:unanswered';

const handshakeChannel = channel(HANDSHAKE_CHANNEL);
const legChannel = channel(LEG_CHANNEL);
const withheldChannel = channel(WITHHELD_CHANNEL);
const proxyUnansweredChannel = channel(PROXY_UNANSWERED_CHANNEL);
const unansweredChannel = channel(UNANSWERED_CHANNEL);

/**
 * A 401 the agent could have answered reached the caller unanswered: its credentials are withheld
 * from this request (S1, S4, S5) — the origin is not trusted, the request is a cross-origin
 * redirect hop (over cleartext the caller gets `CleartextCredentialsError` instead), or its Host
 * header (`host-header`), its TLS `servername` dispatch option (`servername`) or its absolute-form
 * target (`request-target`) names another origin — or, reason
 * `refused-lately`, the server refused them here lately, or left a leg carrying the password
 * unanswered (a timeout, a close) before they were proved, and they are held back for a while (R4:
 * account lockout; a wrong password is not tried by every request), `heldBackFor` ms more — or,
 * reason `recall-timeout`, the agent's `refusalMemory` did not answer within `queueTimeout` ms
 * (limits.queueTimeout; another process may be trying the same password there), so the password
 * was not sent (R1, R4: when in doubt, none is): nothing was refused; once the memory answers, or
 * with a larger limits.queueTimeout, the request may authenticate.
 */
export interface WithheldEvent {
  readonly origin: string;
  readonly path: string;
  readonly reason: WithheldReason | 'refused-lately' | 'recall-timeout';
  /** With `refused-lately`: how long (ms) the credentials are still held back here. */
  readonly heldBackFor?: number;
  /** With `recall-timeout`: how long (ms, limits.queueTimeout) the refusal memory was waited for. */
  readonly queueTimeout?: number;
  /** The schemes the 401 offered (names only). */
  readonly schemes: readonly string[];
  /** Date.now() when the event was published. */
  readonly time: number;
}

/** Publishes a {@link WithheldEvent}, made only when someone subscribes. */
export function publishWithheld(event: () => WithheldEvent): void {
  if (withheldChannel.hasSubscribers) withheldChannel.publish(event());
}

/**
 * A forwarding proxy's 407 reached the caller unanswered (`proxy.deliver407`), and why:
 * - `unconfigured`: no mechanism for any scheme it offers (no `proxy.credentials`, or
 *   `proxy.schemes` leaves them out);
 * - `unusable`: the mechanisms for its schemes cannot run here — Negotiate without a Kerberos
 *   ticket — each with its error in `unusable`;
 * - `refused`: its answer to the credentials this request sent;
 * - `refused-lately`: the proxy refused the credentials lately, so none went with this request
 *   (they are held back, R4, until the wait ends or `setProxyCredentials` / `forgetRefusals`);
 * - `recall-timeout`: the agent's `refusalMemory` did not answer within `queueTimeout` ms
 *   (limits.queueTimeout; another process may be trying the same password at the proxy), so none
 *   went (R1, R4: when in doubt, none is): nothing was refused.
 */
export interface ProxyUnansweredEvent {
  /** The proxy, `http://host:port` (never its userinfo). */
  readonly proxy: string;
  /** The request's origin and path. */
  readonly origin: string;
  readonly path: string;
  readonly reason: 'unconfigured' | 'unusable' | 'refused' | 'refused-lately' | 'recall-timeout';
  /** The schemes the 407 offered (names only). */
  readonly schemes: readonly string[];
  /** With `refused-lately`: how long (ms) the credentials are still held back from the proxy. */
  readonly heldBackFor?: number;
  /** With `recall-timeout`: how long (ms, limits.queueTimeout) the refusal memory was waited for. */
  readonly queueTimeout?: number;
  /**
   * The offered schemes found unusable on this proxy connection, with why: the error's code and
   * message (which name the fix, never a secret).
   */
  readonly unusable: readonly { readonly scheme: string; readonly code: string; readonly message: string }[];
  /** Date.now() when the event was published. */
  readonly time: number;
}

/** Publishes a {@link ProxyUnansweredEvent}, made only when someone subscribes. */
export function publishProxyUnanswered(event: () => ProxyUnansweredEvent): void {
  if (proxyUnansweredChannel.hasSubscribers) proxyUnansweredChannel.publish(event());
}

/**
 * An origin's 401 reached the caller (`deliver401`) because the agent's mechanisms for the schemes
 * it offers cannot run here — Negotiate without a Kerberos ticket, or without GSS-API — where
 * without `deliver401` the request fails with the first of these errors. Published before the
 * caller gets the response; nothing was sent with credentials for it. (A 401 met while refused
 * credentials are held back is on `multileg:withheld`, reason `refused-lately`.)
 */
export interface UnansweredEvent {
  readonly origin: string;
  readonly path: string;
  /** The schemes the 401 offered (names only). */
  readonly schemes: readonly string[];
  /**
   * The offered schemes that cannot run here, with why: the error's code and message (which name the
   * fix, never a secret). `kdcSilent`: a KDC (or the DNS GSS-API needed) did not answer, or none
   * could be reached (MULTILEG_KRB_KDC_UNREACHABLE, or the handshake timed out on GSS-API) — no
   * verdict of the server's on any credential: the same request later, once the KDC answers, may
   * authenticate (the origin tries the KDC again after a few seconds).
   */
  readonly unusable: readonly {
    readonly scheme: string;
    readonly code: string;
    readonly message: string;
    readonly kdcSilent?: true;
  }[];
  /** Date.now() when the event was published. */
  readonly time: number;
}

/** Publishes an {@link UnansweredEvent}, made only when someone subscribes. */
export function publishUnanswered(event: () => UnansweredEvent): void {
  if (unansweredChannel.hasSubscribers) unansweredChannel.publish(event());
}

/** A header as `[name, value]`, name in lower case, value redacted where it may hold a secret. */
export type RedactedHeader = readonly [name: string, value: string];

interface LegEventBase {
  /** Unique per process; the request, response and error events of one leg share it. */
  readonly legId: number;
  /**
   * Whose leg it is. `proxy`: a CONNECT to a proxy, opening a tunnel (`origin` is then the proxy's,
   * `sessionId` its connection `proxy-N`, and its credentials are the proxy's: `proxyScheme`).
   * `origin`: a request to the origin, directly, inside a tunnel, or through a forwarding proxy — a
   * forwarded one may carry the proxy's credentials too (`proxyScheme`) beside the origin's
   * (`scheme`). The same on the request, response and error events of a leg, so a proxy's 407s
   * and failures can be counted apart from an origin's, as handshake reports' `proxy: true` are.
   */
  readonly target: 'origin' | 'proxy';
  readonly origin: string;
  readonly sessionId: string;
  /** `h2` or `http/1.1`; undefined while the session's first connection is still opening. */
  readonly protocol: 'h2' | 'http/1.1' | undefined;
  /** Date.now() when the event was published. */
  readonly time: number;
}

/** A leg was handed to the connection. */
export interface LegRequestEvent extends LegEventBase {
  readonly phase: 'request';
  readonly method: string;
  readonly path: string;
  /**
   * The scheme of the `Authorization` sent on this leg — the origin's credentials — or undefined:
   * none sent (a CONNECT carries none: its credentials are in `proxyScheme`), several, or a value
   * with no scheme word (an API key sent raw, published as `[redacted]`).
   */
  readonly scheme: string | undefined;
  /**
   * The scheme of the `Proxy-Authorization` sent on this leg — the proxy's credentials, on a
   * CONNECT (`target: 'proxy'`) or on a request through a forwarding proxy — or undefined, as for
   * `scheme`. Never the origin's.
   */
  readonly proxyScheme: string | undefined;
  /** Whether this leg echoed the server's Auth-ID (C3). */
  readonly authId: boolean;
  /**
   * True when this leg carried credentials and none of them derives from a secret: each
   * Authorization / Proxy-Authorization on it is an NTLM NEGOTIATE (type 1), the opening of an NTLM
   * handshake — bare, or unwrapped inside Negotiate (one wrapped in SPNEGO is not decoded: false). It holds flags, no
   * password: a server cannot count it as a try of one (R4). False when it carried none, and for
   * any other credentials — an NTLM AUTHENTICATE, a Kerberos AP-REQ (a ticket), Basic, Digest, a raw key.
   */
  readonly secretless: boolean;
  /**
   * The subject of the client certificate this leg's session offers in its TLS handshake (T3), as
   * Node writes it with its lines joined by ", " (`CN=alice`, `C=FR, O=Example A\, Inc., CN=alice`):
   * sent where the server asks for one, which a server that does not ask never sees. The subject
   * only: never the certificate, its key or passphrase (S2). Undefined when the session offers none
   * (an origin the certificate may not go to, a proxy's CONNECT).
   */
  readonly certificate?: string;
  readonly headers: readonly RedactedHeader[];
}

/** A leg's response head arrived. */
export interface LegResponseEvent extends LegEventBase {
  readonly phase: 'response';
  readonly status: number;
  readonly headers: readonly RedactedHeader[];
  /** `false`: an intermediate leg (a challenge answered by another leg, a 421) the caller never sees. */
  readonly delivered: boolean;
}

/** A leg failed on the wire (connection lost, stream reset, TLS, abort). */
export interface LegErrorEvent extends LegEventBase {
  readonly phase: 'error';
  readonly error: { readonly name: string; readonly code: string | undefined; readonly message: string };
}

export type LegEvent = LegRequestEvent | LegResponseEvent | LegErrorEvent;

const SECRET_HEADERS = new Set(['authorization', 'proxy-authorization', 'auth-id', 'cookie', 'set-cookie']);
const CHALLENGE_HEADERS = new Set(['www-authenticate', 'proxy-authenticate']);
/** Headers whose Digest `rspauth` is {@link redactProof}ed. */
export const PROOF_HEADERS: ReadonlySet<string> = new Set(['authentication-info', 'proxy-authentication-info']);

/** Keeps a challenge's scheme and parameters, drops its token68 (`Negotiate oYIB…` → `Negotiate [redacted]`). */
function redactChallenges(value: string): string {
  return value.replace(/(^|,)(\s*[A-Za-z][\w!#$%&'*+.^`|~-]*)\s+[A-Za-z0-9+/._~-]+=*(?=\s*(,|$))/g, '$1$2 [redacted]');
}

/**
 * Drops Digest's `rspauth` from an `Authentication-Info` value, keeps the rest (`nextnonce`, `qop`,
 * `nc`, `cnonce`): it is the request's digest with an empty method (RFC 7616 §3.5), as
 * password-derived as the `response` of the Authorization it answers — with the nonce, cnonce and
 * user name, enough to guess the password offline.
 */
export function redactProof(value: string): string {
  return value.replace(/(^|[\s,])(rspauth\s*=\s*)(?:"(?:[^"\\]|\\.)*"?|[^\s,]*)/gi, '$1$2[redacted]');
}

/** A scheme word: an RFC 9110 token, short, then whitespace and the credentials (RFC 9110 §11.4). */
const SCHEME_WORD = /^[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]{1,20})[ \t]+[^ \t]/;

/**
 * The scheme of an `Authorization` / `Proxy-Authorization` value (`Negotiate oYIB…` → `Negotiate`), or
 * undefined when its first word cannot be one: a value of one word (`sk_live_…`, an API key sent raw)
 * or a first word that is long or not a token is the secret itself, and is never published (S2).
 */
export function authScheme(value: string): string | undefined {
  return SCHEME_WORD.exec(value)?.[1];
}

/** What a leg's credentials say: each header's scheme, and whether they hold no secret (`secretless`). */
interface Credentials {
  scheme: string | undefined;
  proxyScheme: string | undefined;
  secretless: boolean;
}

/**
 * The schemes of `headers`' `Authorization` (the origin's) and `Proxy-Authorization` (the
 * proxy's), each read from its own header only — undefined for none, several or no scheme word —
 * and whether they carry credentials, all of them {@link carriesNoSecret}.
 */
function credentialsOf(headers: HeaderMap): Credentials {
  const seen = { authorization: [] as string[], 'proxy-authorization': [] as string[] };
  for (const [name, value] of Object.entries(headers)) {
    const key = name.toLowerCase();
    if (key !== 'authorization' && key !== 'proxy-authorization') continue;
    for (const v of Array.isArray(value) ? value : [value]) seen[key].push(String(v));
  }
  const one = (values: string[]) => (values.length === 1 ? authScheme(values[0]!) : undefined);
  const all = [...seen.authorization, ...seen['proxy-authorization']];
  return {
    scheme: one(seen.authorization),
    proxyScheme: one(seen['proxy-authorization']),
    secretless: all.length > 0 && all.every(carriesNoSecret),
  };
}

function redactValue(name: string, value: string): string {
  if (SECRET_HEADERS.has(name)) {
    if (name !== 'authorization' && name !== 'proxy-authorization') return '[redacted]';
    const scheme = authScheme(value);
    return scheme === undefined ? '[redacted]' : `${scheme} [redacted]`;
  }
  if (PROOF_HEADERS.has(name)) return redactProof(value);
  return CHALLENGE_HEADERS.has(name) ? redactChallenges(value) : value;
}

/** Flattens and redacts a header map. */
export function redactHeaders(headers: HeaderMap): RedactedHeader[] {
  const out: RedactedHeader[] = [];
  for (const [name, value] of Object.entries(headers)) {
    const key = name.toLowerCase();
    for (const v of Array.isArray(value) ? value : [value]) out.push([key, redactValue(key, String(v))]);
  }
  return out;
}

/** Someone traces legs: every leg then goes through {@link publishLeg} (the fast path steps aside). */
export function tracingLegs(): boolean {
  return legChannel.hasSubscribers;
}

let nextLegId = 0;

/** The reporters of a leg's outcome. */
interface LegTrace {
  response(status: number, headers: HeaderMap, delivered: boolean): void;
  error(err: Error): void;
}

/** Untraced legs (nobody subscribes): one shared pair of no-ops, not two closures per leg. */
const UNTRACED: LegTrace = { response() {}, error() {} };

/** What the session knows about a leg it sends; reports it and returns the reporters of its outcome. */
export function publishLeg(
  base: {
    target: LegEventBase['target'];
    origin: string;
    sessionId: string;
    protocol: () => LegEventBase['protocol'];
    /** The subject of the client certificate the session offers, if it offers one. */
    certificate?: string | undefined;
  },
  request: { method: string; path: string; headers: HeaderMap },
): LegTrace {
  if (!legChannel.hasSubscribers) return UNTRACED;
  const legId = ++nextLegId;
  const common = () => ({
    legId,
    target: base.target,
    origin: base.origin,
    sessionId: base.sessionId,
    protocol: base.protocol(),
    time: Date.now(),
  });
  // Each scheme from its own header: a Proxy-Authorization's scheme counted as the origin's
  // (a CONNECT's, a forwarded request's) made a proxy's Basic look like the origin's.
  const credentials = credentialsOf(request.headers);
  legChannel.publish({
    ...common(),
    phase: 'request',
    method: request.method,
    path: request.path,
    scheme: credentials.scheme,
    proxyScheme: credentials.proxyScheme,
    authId: 'auth-id' in request.headers,
    secretless: credentials.secretless,
    ...(base.certificate !== undefined ? { certificate: base.certificate } : {}),
    headers: redactHeaders(request.headers),
  } satisfies LegRequestEvent);
  return {
    response: (status, headers, delivered) =>
      legChannel.publish({
        ...common(),
        phase: 'response',
        status,
        headers: redactHeaders(headers),
        delivered,
      } satisfies LegResponseEvent),
    error: (err) => {
      const code = (err as { code?: unknown }).code;
      legChannel.publish({
        ...common(),
        phase: 'error',
        error: { name: err.name, code: typeof code === 'string' ? code : undefined, message: err.message },
      } satisfies LegErrorEvent);
    },
  };
}

/** Publishes a finished handshake (the report holds no secret). */
export function publishHandshake(report: HandshakeReport): void {
  if (handshakeChannel.hasSubscribers) handshakeChannel.publish(report);
}
