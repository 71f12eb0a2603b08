/**
 * Typed errors. Every failure the library reports is a {@link MultilegError} with a stable `code`,
 * and its message names the cause and the fix. Messages never contain secrets (S2): callers pass
 * facts (limits, scheme names, origins), never header values or tokens.
 */

/**
 * Every {@link MultilegError.code}, in the order of docs/ERRORS.md, which says each one's class and
 * meaning (a test keeps the two, and the codes the source raises, the same).
 */
export const MULTILEG_ERROR_CODES = [
  'MULTILEG_CONFIG',
  'MULTILEG_TRUST_REQUIRED',
  'MULTILEG_CLOSED',
  'MULTILEG_INVALID_REQUEST',
  'MULTILEG_INVALID_CHALLENGE',
  'MULTILEG_NODE_VERSION',
  'MULTILEG_CLEARTEXT',
  'MULTILEG_SYSTEM_NTLM_REFUSED',
  'MULTILEG_LEG_LIMIT',
  'MULTILEG_QUEUE_FULL',
  'MULTILEG_QUEUE_TIMEOUT',
  'MULTILEG_HANDSHAKE_TIMEOUT',
  'MULTILEG_BODY_NOT_REPLAYABLE',
  'MULTILEG_CHALLENGE_BODY_TOO_LARGE',
  'MULTILEG_INVALID_TOKEN',
  'MULTILEG_MUTUAL_AUTH',
  'MULTILEG_MECHANISM_UNAVAILABLE',
  'MULTILEG_MECHANISM',
  'MULTILEG_KRB_NO_TICKET',
  'MULTILEG_KRB_TICKET_EXPIRED',
  'MULTILEG_KRB_KDC_UNREACHABLE',
  'MULTILEG_KRB_UNKNOWN_SPN',
  'MULTILEG_KRB_CLOCK_SKEW',
  'MULTILEG_KRB_WRONG_REALM',
  'MULTILEG_KRB_OTHER_PRINCIPAL',
  'MULTILEG_KRB_KEYTAB',
  'MULTILEG_KRB_CCACHE',
  'MULTILEG_CLIENT_CERTIFICATE',
  'MULTILEG_CLIENT_CERTIFICATE_REQUIRED',
  'MULTILEG_CLIENT_CERTIFICATE_REFUSED',
  'MULTILEG_CLIENT_CERTIFICATE_AFTER_HANDSHAKE',
  'MULTILEG_COOKIE_STORE',
  'MULTILEG_CONNECTION_CLOSED',
  'MULTILEG_STREAM_REFUSED',
  'MULTILEG_RESPONSE_FRAMING',
  'MULTILEG_AUTH_ID_IN_USE',
  'MULTILEG_RELOCATION_LIMIT',
  'MULTILEG_STALE_CONNECTION',
  'MULTILEG_HTTP1_REQUIRED',
  'MULTILEG_NTLM_UNPAIRED',
  'MULTILEG_PROXY_AUTH',
  'MULTILEG_PROXY_AUTH_HEADER',
  'MULTILEG_PROXY_CONNECT',
  'MULTILEG_PROXY_PROTOCOL',
  'MULTILEG_PROXY_CLOSED',
  'MULTILEG_PROXY_UNREACHABLE',
  'MULTILEG_PROXY_CERTIFICATE',
  'MULTILEG_PROXY_TIMEOUT',
  'MULTILEG_PROXY_CONNECT_TIMEOUT',
  'MULTILEG_PROXY_RESPONSE_TIMEOUT',
  'MULTILEG_REMOTE_HTTP1',
  'MULTILEG_CONTENT_ENCODING',
] as const;

/** The stable code of a {@link MultilegError}: one of {@link MULTILEG_ERROR_CODES} (docs/ERRORS.md). */
export type MultilegErrorCode = (typeof MULTILEG_ERROR_CODES)[number];

export class MultilegError extends Error {
  /** Stable machine-readable code, e.g. `MULTILEG_LEG_LIMIT` (every one: docs/ERRORS.md). */
  readonly code: MultilegErrorCode;
  constructor(code: MultilegErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/**
 * A copy of `err` for one more caller: the same class, code, message, cause and fields, but an object
 * (and stack) of its own. An error remembered for an origin (R4) fails every request for 30 s; the
 * same object each time would carry one caller's annotations to the next, and error trackers that
 * mark what they have reported (Sentry) would report only the first.
 */
export function ownCopy<E extends Error>(err: E): E {
  const copy = Object.create(Object.getPrototypeOf(err)) as E;
  Object.defineProperties(copy, Object.getOwnPropertyDescriptors(err));
  Error.captureStackTrace(copy, ownCopy);
  return copy;
}

/**
 * `text` (a URL or origin, or what should have been one) as a message may show it: whatever comes
 * before its last `@` is user info, which may hold a password (S2), and is shown as `…@`.
 */
export function redactUserinfo(text: string): string {
  return text.replace(/^([a-z][a-z0-9+.-]*:\/*)?.*@/is, (_, scheme = '') => `${scheme}…@`);
}

/** Node's codes for a TLS peer certificate that failed verification (OpenSSL's, and Node's own name check). */
export const CERTIFICATE_CODES: ReadonlySet<string> = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_REVOKED',
  'CERT_SIGNATURE_FAILURE',
  'CERT_CHAIN_TOO_LONG',
  'INVALID_CA',
  'INVALID_PURPOSE',
  'PATH_LENGTH_EXCEEDED',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'HOSTNAME_MISMATCH',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** A handshake needed more legs than `limits.maxLegs` (C11). */
export class LegLimitError extends MultilegError {
  constructor(limit: number, scheme: string) {
    super(
      'MULTILEG_LEG_LIMIT',
      // One leg is no bound on a server that keeps challenging: NTLM's second leg (its
      // AUTHENTICATE) always comes after a challenge, so the limit itself is what stopped it.
      limit < 2
        ? `${scheme} handshake exceeded limits.maxLegs (${limit}): the scheme takes more legs than that (NTLM, alone or inside Negotiate, takes 2); raise limits.maxLegs (default 6)`
        : `${scheme} handshake exceeded limits.maxLegs (${limit}): the server keeps challenging; check credentials or raise limits.maxLegs`,
    );
  }
}

/** Too many requests wait already (C11, R1): for a handshake, a session's first response, or a connection. */
export class QueueFullError extends MultilegError {
  constructor(limit: number, what = 'a handshake on their session') {
    super(
      'MULTILEG_QUEUE_FULL',
      `request queue is full (limits.maxQueue = ${limit}) while waiting for ${what}; raise limits.maxQueue or send fewer concurrent requests`,
    );
  }
}

/** A request waited longer than `limits.queueTimeout` (C11, R1). */
export class QueueTimeoutError extends MultilegError {
  constructor(ms: number, what = 'a handshake on its session', fix = 'raise limits.queueTimeout or check the server') {
    super('MULTILEG_QUEUE_TIMEOUT', `request waited ${ms} ms (limits.queueTimeout) for ${what}; ${fix}`);
  }
}

/**
 * Why the server never gave a request an HTTP/2 stream: its SETTINGS never came after TLS
 * (`settings`), or it allows none (`limit`: SETTINGS_MAX_CONCURRENT_STREAMS 0).
 */
export type NoStream = 'settings' | 'limit';

const NO_STREAM: Record<NoStream, string> = {
  settings: 'its HTTP/2 SETTINGS never came (the TLS connection is up, nothing arrived on it)',
  limit: 'it allows no HTTP/2 streams (SETTINGS_MAX_CONCURRENT_STREAMS 0)',
};

/** A handshake took longer than `limits.handshakeTimeout` (C11). */
export class HandshakeTimeoutError extends MultilegError {
  /**
   * Set when the handshake's leg never reached the server because the server gave it no HTTP/2
   * stream (R3): a longer timeout does not help; the server (or HTTP/1.1) does.
   */
  readonly noStream: NoStream | undefined;
  /**
   * Set when the deadline passed while the mechanism was making a token and waited on something
   * outside this process (Negotiate: GSS-API, so the KDC or DNS): the server is not at fault, and
   * the origin fails the requests behind it at once for a few seconds (R4, KDC_RECHECK_MS).
   */
  readonly inMechanismStep: boolean;
  /**
   * `waited`: what did not answer, when it was not the server (T3: the caller's certificate
   * selector; R3: a mechanism step, with `inMechanismStep`). `noStream`: the server never gave the
   * leg a stream, and why.
   */
  constructor(ms: number, scheme: string, waited?: string, noStream?: NoStream, inMechanismStep = false) {
    super(
      'MULTILEG_HANDSHAKE_TIMEOUT',
      waited !== undefined
        ? `${scheme} handshake did not finish within limits.handshakeTimeout (${ms} ms): ${waited}`
        : noStream !== undefined
          ? `${scheme} handshake did not finish within limits.handshakeTimeout (${ms} ms): the server never gave its leg a stream — ${NO_STREAM[noStream]}; check the server, or use HTTP/1.1 (allowH2: false)`
          : `${scheme} handshake did not finish within limits.handshakeTimeout (${ms} ms); check the server or raise limits.handshakeTimeout`,
    );
    this.noStream = noStream;
    this.inMechanismStep = inMechanismStep;
  }
}

/** A request body had to be replayed for another leg but could not be (C10). */
export class BodyNotReplayableError extends MultilegError {
  constructor(limit: number) {
    super(
      'MULTILEG_BODY_NOT_REPLAYABLE',
      `the request body is a one-shot stream larger than limits.maxReplayBodyBytes (${limit} bytes) and authentication needs to send it again; pass a Buffer/string body, raise limits.maxReplayBodyBytes, or send a small request (a GET) to that origin first: where the server authenticates the connection (NTLM, Kerberos with Persistent-Auth), a stream then goes as it comes`,
    );
  }
}

/** A server token or header failed validation: too long, bad base64, malformed message (S3). */
export class InvalidTokenError extends MultilegError {
  /** What was invalid (`NTLM message`, `Negotiate token (bad base64 or too long)`, ...). */
  readonly what: string;
  /** `proxy`: the proxy that sent it (its origin), when not the server. */
  constructor(what: string, proxy?: string) {
    super(
      'MULTILEG_INVALID_TOKEN',
      proxy
        ? `the proxy ${proxy} sent an invalid ${what}; the proxy or something in between is misbehaving`
        : `server sent an invalid ${what}; the server or something in between is misbehaving`,
    );
    this.what = what;
  }
}

/**
 * The server's proof did not verify (mutual authentication): its final Negotiate token (M2), or
 * its Digest `rspauth` (M3). The response is withheld and the connection not used again.
 */
export class MutualAuthError extends MultilegError {
  /** @param fix - What the caller can do besides suspecting an impostor; default Negotiate's. */
  constructor(detail: string, fix = "pass negotiate.mutualAuth: 'optional' if it never sends a final token") {
    super('MULTILEG_MUTUAL_AUTH', `mutual authentication failed: ${detail}; the server may be an impostor, or ${fix}`);
  }
}

/** A mechanism cannot run here (e.g. the optional `kerberos` package is missing). */
export class MechanismUnavailableError extends MultilegError {
  constructor(scheme: string, fix: string, options?: { cause?: unknown }) {
    super('MULTILEG_MECHANISM_UNAVAILABLE', `${scheme} is not available: ${fix}`, options);
  }
}

/** A mechanism failed to produce or accept a token (credentials, protocol). */
export class MechanismError extends MultilegError {
  constructor(scheme: string, detail: string, options?: { cause?: unknown }) {
    super('MULTILEG_MECHANISM', `${scheme}: ${detail}`, options);
  }
}

/**
 * S1: the system's SPNEGO (SSPI's fallback, gss-ntlmssp with NTLM_USER_FILE) chose NTLM, which proves
 * the logged-on user's password, for an origin no password may go to (an agent without
 * `trustedOrigins`, or `negotiate.passwordAllowed` refusing it): nothing was sent with it. A trust
 * decision, not a protocol failure: a code of its own (not `MechanismError`'s), so that a caller
 * tells it apart from a mechanism that failed.
 */
export class SystemNtlmRefusedError extends MultilegError {
  /** The origin the NTLM was refused for. */
  readonly origin: string;
  constructor(origin: string) {
    super(
      'MULTILEG_SYSTEM_NTLM_REFUSED',
      `Negotiate: the system's Negotiate (SSPI or gss-ntlmssp) answered ${origin} with NTLM, not a Kerberos ticket: NTLM proves the logged-on user's password, which goes only where a password may (an origin listed in trustedOrigins, and allowed by negotiate.passwordAllowed where one is given); nothing was sent with it. List ${origin} in trustedOrigins if it is meant to have it, or get a Kerberos ticket it takes (kinit, its SPN)`,
    );
    this.origin = origin;
  }
}

/** Invalid options given to the agent. */
export class ConfigError extends MultilegError {
  /** The option at fault where one is (e.g. `clientCertificate`), for callers that say it their own way. */
  readonly option: string | undefined;
  constructor(detail: string, option?: string) {
    super('MULTILEG_CONFIG', detail);
    this.option = option;
  }
}

/** The agent was closed or destroyed; the request was not sent. */
export class AgentClosedError extends MultilegError {
  constructor() {
    super('MULTILEG_CLOSED', 'MultilegAgent is closed; create a new agent');
  }
}

/**
 * The agent's cookie jar (the `cookies` option) threw when asked for a request's `Cookie` header:
 * the request is not sent (without the cookies it would be another request). The jar's error is
 * the `cause`; its message is not repeated here, as it may quote a cookie.
 */
export class CookieStoreError extends MultilegError {
  constructor(cause: unknown) {
    super(
      'MULTILEG_COOKIE_STORE',
      "the cookies option's cookieHeader() threw, so the request was not sent; fix the cookie store (its error is this error's cause)",
      { cause },
    );
  }
}

/**
 * The origin's answer to a handshake leg (a challenge) was framed so that it cannot be read: undici
 * rejected it — Content-Length and Transfer-Encoding both (RFC 9112 §6.3: a sign of request
 * smuggling, or of a broken server or proxy in between), a body that does not match its
 * Content-Length, a malformed head. The handshake ends there, its connection with it. `cause`:
 * undici's own error.
 */
export class ResponseFramingError extends MultilegError {
  /** The origin, as `https://host:port`. */
  readonly origin: string;
  constructor(origin: string, scheme: string, options?: { cause?: unknown }) {
    const code = (options?.cause as { code?: unknown } | undefined)?.code;
    super(
      'MULTILEG_RESPONSE_FRAMING',
      `${origin} answered a leg of a ${scheme} handshake with a response that cannot be read as HTTP/1.1 frames it${typeof code === 'string' ? ` (${code})` : ''}: Content-Length and Transfer-Encoding both, a body that does not match its Content-Length, or a malformed head; check the server, or a proxy or load balancer in front of it`,
      options,
    );
    this.origin = origin;
  }
}

/**
 * The server gave one `Auth-ID` to two handshakes running at once on one HTTP/2 session (C3): a
 * client must never send one Auth-ID on two requests in flight (D2§3.1), and a leg under it could
 * complete the other handshake's security context with this one's token. This handshake sent
 * nothing under it and ended; the other goes on. Not a refusal of the credentials (R4).
 */
export class AuthIdInUseError extends MultilegError {
  /** The origin, as `https://host:port`. */
  readonly origin: string;
  constructor(origin: string, scheme: string) {
    super(
      'MULTILEG_AUTH_ID_IN_USE',
      `${origin} gave one Auth-ID to two ${scheme} handshakes at once on one connection, which the multilegged-auth draft forbids a client to send on two requests in flight (D2§3.1): nothing was sent under it and this request's handshake was given up, no credentials refused; the request may be sent again — the server should give each handshake its own Auth-ID, or set limits.maxConcurrentHandshakes to 1 to run one handshake at a time per connection`,
    );
    this.origin = origin;
  }
}

/**
 * An HTTP/2 origin (or HTTP/2 forwarding proxy) reset this request's stream with REFUSED_STREAM
 * before any response, on every try: undici's one retry on the same connection, then once more on a
 * new connection (the agent's, as curl's "REFUSED_STREAM, retrying a fresh connect"). REFUSED_STREAM
 * says the server did not process the request (RFC 9113 §8.7: a server that sheds load, or caps its
 * concurrent streams), so it may be sent again whatever its method; the agent stops here so a server
 * that refuses everything costs a few streams, not a loop (R1, R4). undici's error is `cause`.
 */
export class StreamRefusedError extends MultilegError {
  /** The server that refused, as `https://host:port`: the origin, or the forwarding proxy. */
  readonly peer: string;
  /** The streams of this request the server refused (each one a try). */
  readonly refusals: number;
  /**
   * The streams of another request's handshake legs this request waited behind that the server
   * refused, closing the connections it waited on (0 when it waited behind none).
   */
  readonly handshakeRefusals: number;
  /** The connections those tries went on (and those it waited on). */
  readonly connections: number;
  /** `via`: which server `peer` is. */
  constructor(
    peer: string,
    method: string,
    refusals: number,
    connections: number,
    options?: { cause?: unknown },
    via: 'origin' | 'proxy' = 'origin',
    handshakeRefusals = 0,
  ) {
    const times = (n: number) => (n === 1 ? 'once' : `${n} times`);
    const on = connections === 1 ? 'on one connection' : `on ${connections} connections`;
    const ahead = `the handshake the ${method} waited behind`;
    const what =
      handshakeRefusals === 0
        ? `the HTTP/2 stream of the ${method} ${times(refusals)}`
        : refusals === 0
          ? `the HTTP/2 streams of ${ahead} ${times(handshakeRefusals)}`
          : `the HTTP/2 stream of the ${method} ${times(refusals)} and those of ${ahead} ${times(handshakeRefusals)}`;
    super(
      'MULTILEG_STREAM_REFUSED',
      `${via === 'proxy' ? `proxy ${peer}` : peer} refused ${what} ${on} before any response (RST_STREAM REFUSED_STREAM: the server sheds load or caps its concurrent streams); the request was not processed (RFC 9113 §8.7), so it is safe to send again, whatever its method: retry later, check the server's load and its stream limit, or use HTTP/1.1 (allowH2: false)`,
      options,
    );
    this.peer = peer;
    this.refusals = refusals;
    this.handshakeRefusals = handshakeRefusals;
    this.connections = connections;
  }
}

/** undici's errors for a response it could not frame (its llhttp parser's, and a length mismatch). */
export function isFramingError(err: Error): boolean {
  const code = (err as { code?: unknown }).code;
  return (
    code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' ||
    (typeof code === 'string' && code.startsWith('HPE_')) ||
    err.name === 'HTTPParserError'
  );
}

/** The connection closed under a written leg (the session's typed error for it, or undici's own). */
export function closedUnder(err: Error): boolean {
  const code = (err as { code?: unknown }).code;
  // (A stream the server reset is no close: the connection lives on, and the server answered.)
  return (
    (err instanceof ConnectionClosedError && err.streamReset === undefined) ||
    code === 'UND_ERR_SOCKET' ||
    code === 'ECONNRESET' ||
    code === 'EPIPE'
  );
}

/** What a {@link ConnectionClosedError} knows of the close, and why the request was not sent again. */
export interface ConnectionClosedOptions {
  cause?: unknown;
  /** It had been sent again already after idle closes: how many times (true: once). */
  again?: boolean | number | undefined;
  /** The connection was new: this request its first (it answered nothing else, a handshake's challenges aside). */
  fresh?: boolean;
  /**
   * With `fresh`, on a connection that had answered nothing: bytes of a response head it read
   * before the close (HTTP/1.1's socket count, after TLS, less a CONNECT tunnel's proxy answers), a
   * head cut short rather than no answer. 0 over HTTP/2 (its HEADERS come whole or not at all).
   */
  headBytes?: number | undefined;
  /** An HTTP/2 GOAWAY came first, its last-stream-id counting this stream processed. */
  goaway?: boolean;
  /**
   * The connection had answered only this request's earlier legs (a handshake's challenges): it
   * was opened for it, no kept-alive connection reused — the server ended this request's handshake.
   */
  handshake?: boolean;
  /**
   * An upgrade's connection-bound handshake (this scheme) lost the connection whose challenge its
   * next leg answers, twice: that leg was not sent, on it or on another (H1).
   */
  afterChallenge?: string;
  /** An upgrade's (or CONNECT's) leg, which the agent never sends again, `idempotent` or not. */
  upgrade?: boolean;
  /** Idempotent, but its one-shot body was read past limits.maxReplayBodyBytes (this many bytes). */
  oneShot?: number | undefined;
  /** Idempotent, but it carried credentials (this header) not proved where they go (R4). */
  unproved?: string | undefined;
  /**
   * HTTP/2: the server reset the request's stream (RST_STREAM, this error code) before any response,
   * or (`afterHead`) after the response head reached the caller, cutting the response short;
   * `idempotent`: undici's rule for the request. `challenge`: before any response of the caller's, but
   * after the head of one the agent was to answer (this status: a 401 or 407 challenge), partway
   * through its body, between a handshake's legs.
   */
  streamReset?: { code: number; idempotent: boolean; afterHead: boolean; challenge?: number } | undefined;
  /**
   * HTTP/1.1: the connection closed after the head of a response the agent was to answer (this
   * status: a 401 or 407 challenge), partway through its body, between a handshake's legs. `tunnel`:
   * the cut answer was a proxy's 407 to the CONNECT to this target (`host:port`), so the caller's
   * request itself was never sent (H5).
   */
  challengeCut?: { status: number; idempotent: boolean } | { status: number; tunnel: string } | undefined;
}

/** RFC 9113 §7's error code names, for messages (RST_STREAM, GOAWAY). */
const HTTP2_ERROR_NAMES = [
  'NO_ERROR',
  'PROTOCOL_ERROR',
  'INTERNAL_ERROR',
  'FLOW_CONTROL_ERROR',
  'SETTINGS_TIMEOUT',
  'STREAM_CLOSED',
  'FRAME_SIZE_ERROR',
  'REFUSED_STREAM',
  'CANCEL',
  'COMPRESSION_ERROR',
  'CONNECT_ERROR',
  'ENHANCE_YOUR_CALM',
  'INADEQUATE_SECURITY',
  'HTTP_1_1_REQUIRED',
];

/** Before the caller's response, not sent again: whether it may go again is the caller's to judge. */
function resendAdvice(method: string, idempotent: boolean): string {
  return idempotent
    ? ': the request is idempotent, so it may be sent again'
    : `: send the ${method} again only if that is safe`;
}

/**
 * R1: what a {@link ConnectionClosedError} says of an HTTP/2 stream `who` reset under `method` after
 * its response head: the code, what it means for this response, and what to do.
 */
function streamResetMessage(
  who: string,
  method: string,
  reset: NonNullable<ConnectionClosedOptions['streamReset']>,
): string {
  const { code, idempotent, afterHead, challenge } = reset;
  const name = `RST_STREAM ${HTTP2_ERROR_NAMES[code] ?? 'code'} (0x${code.toString(16)})`;
  const meaning =
    code === 7
      ? // A refusal says the request was not processed; a server that began to answer processed it.
        "which RFC 9113 §8.7 forbids once a server has begun to answer (REFUSED_STREAM says a request was not processed), so take it as the server failing the response: check the server's logs"
      : code === 11
        ? 'the server thinks the client misbehaves (too many requests or streams at once): slow down, send fewer requests at once (lower connections or limits), then send it again'
        : code === 13
          ? 'the server wants this request over HTTP/1.1: use HTTP/1.1 (allowH2: false)'
          : "the server failed or gave up the response: check the server's logs";
  const resend = resendAdvice(method, idempotent);
  if (challenge !== undefined)
    // R1/C8: the challenge's head was whole, but the server failed the exchange it began: the
    // handshake does not answer it (curl fails the transfer too: "stream was not closed cleanly").
    return `${who} reset the HTTP/2 stream of the ${method} with ${name} after the head of its ${challenge} challenge, partway through that challenge's body (the agent's to answer, never the caller's), ${meaning}; the handshake did not go on and the ${method} was not sent again${resend}`;
  if (!afterHead)
    // Only REFUSED_STREAM says a request was not processed (StreamRefusedError): any other may have been.
    return `${who} reset the HTTP/2 stream of the ${method} with ${name} before any response, ${meaning}; not sent again, as the server may have processed it (only REFUSED_STREAM says it did not)${resend}`;
  const again = idempotent
    ? 'the request is idempotent: it may be sent again'
    : `not safe to send again unless the ${method} is idempotent, as the server began to answer it and may have acted on it`;
  return `${who} reset the HTTP/2 stream of the ${method} with ${name} after its response head: the response was cut short (its head and part of its body delivered), ${meaning}; ${again}`;
}

/** Who closed under which request, as a {@link ConnectionClosedError}'s message names them. */
interface Closer {
  /** `origin http://host:port` or `proxy http://host:port`. */
  readonly who: string;
  readonly peer: string;
  readonly via: 'origin' | 'proxy';
  readonly method: string;
  /** ECONNRESET rather than a close. */
  readonly reset: boolean;
}

/**
 * A {@link ConnectionClosedError}'s message: one cause, the first that `o` says of these — a stream
 * reset, a challenge's body cut, an upgrade's bound leg with nowhere to go, a new connection's
 * close, else a close under a request on a connection that had answered.
 */
function closedMessage(c: Closer, o: ConnectionClosedOptions, headBytes: number): string {
  if (o.streamReset !== undefined) return streamResetMessage(c.who, c.method, o.streamReset);
  if (o.challengeCut) return challengeCutMessage(c, o.challengeCut);
  if (o.afterChallenge !== undefined) return afterChallengeMessage(c, o.afterChallenge);
  if (o.fresh) return freshMessage(c, headBytes);
  return closedUnderMessage(c, o);
}

/** R1/C8: the challenge's head was whole, the rest of it never came: the handshake does not answer it. */
function challengeCutMessage(
  { who, via, method, reset }: Closer,
  cut: NonNullable<ConnectionClosedOptions['challengeCut']>,
): string {
  // A CONNECT's 407 (H5): the caller's request never left, whatever its method.
  const [target, resend] =
    'tunnel' in cut
      ? [` ${cut.tunnel}`, `: no tunnel was opened, so the request did not reach ${cut.tunnel} and may be sent again`]
      : ['', resendAdvice(method, cut.idempotent)];
  return `${who} ${reset ? 'reset' : 'closed'} the connection partway through the body of its ${cut.status} challenge to the ${method}${target} (the agent's to answer, never the caller's); the handshake did not go on and the ${method} was not sent again${resend}; check the ${via}'s logs`;
}

/** H1: an upgrade's connection-bound handshake lost the connection its next leg answers, twice. */
function afterChallengeMessage({ who, via, method }: Closer, scheme: string): string {
  return `${who} closed the connection with its ${scheme} challenge to this ${method} (an upgrade), on a new connection again after the handshake started over: the next leg answers that connection's challenge and goes on no other (H1), so it was not sent and no credential was refused; check the ${via}'s keep-alive settings (a limit of requests per connection, keep-alive off) and its logs`;
}

/** A close under the first request on a new connection: no idle close, the peer refusing or failing it. */
function freshMessage({ who, peer, via, method, reset }: Closer, headBytes: number): string {
  const how = reset ? 'ECONNRESET' : headBytes > 0 ? `after ${headBytes} bytes of a response head` : 'an empty reply';
  const closed = `${who} ${reset ? 'reset' : 'closed'} a new connection without answering the ${method} written on it, the first on it (${how}); not sent again, as`;
  return via === 'proxy'
    ? // A proxy that drops a new connection under its first request would drop the next one too.
      `${closed} a proxy that closes before answering anything is refusing or failing the request, not closing an idle connection: check the proxy's logs and its access rules for this client and this origin`
    : // A TLS port closes on a plain-HTTP request: the likelier fix than the server's logs.
      `${closed} a server that closes before answering another request (a handshake's challenges are this one's) is refusing or failing the request, not closing an idle connection: ${peer.startsWith('http:') ? 'is it an https:// port? If not, ' : ''}check the server's logs`;
}

/** A close under a request on a connection that had answered before (kept alive, or its own handshake's legs). */
function closedUnderMessage({ who, via, method }: Closer, o: ConnectionClosedOptions): string {
  // Over HTTP/2 the server's GOAWAY said which streams it processed: this one among them.
  const closed = o.goaway
    ? `${who} closed its HTTP/2 connection without answering the ${method} written on it, which its GOAWAY counted as processed (last-stream-id, RFC 9113 §6.8)`
    : o.handshake
      ? `${who} closed the connection this ${method}'s handshake ran on, after answering its challenge, without answering the next leg written on it`
      : `${who} closed its kept-alive connection without answering the ${method} written on it`;
  if (o.again)
    return `${closed}, again after it was sent ${o.again === true || o.again === 1 ? 'once more on a new connection' : `${o.again} more times`}; check the ${via}'s keep-alive settings and logs`;
  const why = notSentWhy(via, o);
  return o.goaway || o.handshake
    ? `${closed}; not sent again, as ${why}, and check the ${via}'s logs`
    : `${closed}, and did not say it would (no Connection: close); not sent again, as ${why}, and check the ${via}'s keep-alive settings`;
}

/** Why a request the peer may have received was not sent again, and when it may be. */
function notSentWhy(via: 'origin' | 'proxy', o: ConnectionClosedOptions): string {
  if (o.unproved !== undefined) {
    const counted =
      o.unproved === 'Authorization'
        ? `the origin has not accepted yet and may have counted${via === 'proxy' ? ' (the proxy may have passed it on)' : ''}`
        : `this ${via} has not accepted yet and may have counted`;
    return `it carried credentials (${o.unproved}) ${counted}: a password tried twice unanswered counts twice toward an account lockout (R4), so the agent holds its own back from there a while, as after a refusal. Send the request again once that is safe`;
  }
  if (o.oneShot !== undefined)
    return `its body was a one-shot stream larger than limits.maxReplayBodyBytes (${o.oneShot} bytes), read once already: pass a Buffer/string body or raise limits.maxReplayBodyBytes`;
  return o.upgrade
    ? `the ${via} may have received it (an upgrade is never sent again by the agent): send it again if that is safe`
    : `the ${via} may have received it: send it again if that is safe (or give the dispatch option idempotent: true)`;
}

/**
 * A server closed (or reset) a connection after a request was written on it, before a byte of an
 * answer to it, and the request was not sent again. A request written on a kept-alive connection
 * (one that had answered before: the server's idle timeout or its `MaxKeepAliveRequests` racing
 * the write, curl's "Connection died, retrying a fresh connect") goes once more on a new connection
 * when it is idempotent (undici's rule: GET and HEAD, or the dispatch option `idempotent`), its
 * body can be written again and its credentials were proved (R4); this error is every other case:
 * not idempotent (the server may have read and acted on it, RFC 9110 §9.2.2), closed under again
 * on the new connection, a one-shot body past the replay limit (C10), credentials the server may
 * have counted unanswered. A close under the first request on a NEW connection is this error at
 * once with `fresh: true`, idempotent or not (a server refusing or failing the request, or a
 * plain request to a TLS port: not an idle close). Over HTTP/2, also a stream the server reset
 * (RST_STREAM) after the response head reached the caller (`streamReset`, R1): the body ends with it.
 * `MULTILEG_CONNECTION_CLOSED` for the origin's connection;
 * {@link ProxyClosedError} (`MULTILEG_PROXY_CLOSED`) for a forwarding proxy's. undici's own error
 * is `cause`.
 */
export class ConnectionClosedError extends MultilegError {
  /** The server that closed, as `http://host:port`: the origin, or the forwarding proxy. */
  readonly peer: string;
  readonly method: string;
  /** The connection was new: this request its first (nothing else answered on it, a handshake's challenges aside). */
  readonly fresh: boolean;
  /** The server reset the connection (ECONNRESET; curl: "Connection reset by peer") rather than closing it. */
  readonly reset: boolean;
  /**
   * A new connection's close came partway through a response head, this many bytes of it (0: no
   * answer at all): the origin's own (not a CONNECT tunnel's proxy answer); always 0 over HTTP/2.
   */
  readonly headBytes: number;
  /** HTTP/2: the RST_STREAM error code the server reset the stream with (see {@link responseCut}). */
  readonly streamReset: number | undefined;
  /** The reset came after the response head reached the caller: its body ends with this error. */
  readonly responseCut: boolean;
  /** HTTP/1.1: the close came partway through the body of the agent's own challenge, this status (401, 407). */
  readonly challengeCut: number | undefined;
  /**
   * `peer` closed under `method`; `options` says why it was not sent again. `via` (internal): which
   * server it is, `'proxy'` for {@link ProxyClosedError}.
   */
  constructor(peer: string, method: string, options?: ConnectionClosedOptions, via: 'origin' | 'proxy' = 'origin') {
    const reset = (options?.cause as { code?: unknown } | undefined)?.code === 'ECONNRESET';
    const headBytes = options?.fresh && options.headBytes ? options.headBytes : 0;
    super(
      via === 'proxy' ? 'MULTILEG_PROXY_CLOSED' : 'MULTILEG_CONNECTION_CLOSED',
      closedMessage({ who: `${via} ${peer}`, peer, via, method, reset }, options ?? {}, headBytes),
      options,
    );
    this.peer = peer;
    this.method = method;
    this.fresh = options?.fresh === true;
    this.reset = reset;
    this.headBytes = headBytes;
    this.streamReset = options?.streamReset?.code;
    this.responseCut = options?.streamReset?.afterHead === true;
    this.challengeCut = options?.challengeCut?.status;
  }
}
