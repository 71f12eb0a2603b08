/**
 * Proxy errors (H5). Messages name the proxy by its origin (never its userinfo), the cause and the
 * fix; they never carry a Proxy-Authorization value, a password or a token (S2).
 */
import { ConfigError, ConnectionClosedError, type ConnectionClosedOptions, MultilegError } from '../errors.ts';

/**
 * A proxy URL that cannot be used: not a URL (`problem: 'syntax'`), or a scheme other than http://
 * and https:// (`'scheme'`; SOCKS among them). Thrown by the agent's constructor for `proxy.uri`;
 * for an environment variable, the requests that would go through it fail with it, before anything
 * is sent (as curl reads only the proxy a transfer uses: a bad `https_proxy` does not stop
 * `http://` requests). Its message names where the URL came from (`proxy.uri`, or the variable). A
 * `ConfigError` (`MULTILEG_CONFIG`); the two problems are told apart for a caller that answers them
 * differently (the command: curl's 5 and 7).
 */
export class ProxyUrlError extends ConfigError {
  /** `syntax`: the text is not a URL; `scheme`: a URL of a scheme the agent does not speak to a proxy. */
  readonly problem: 'syntax' | 'scheme';
  constructor(problem: 'syntax' | 'scheme', detail: string) {
    super(detail, 'proxy.uri');
    this.problem = problem;
  }
}

/** The proxy refused authentication: a final 407, or no usable scheme among those it offers. */
export class ProxyAuthenticationError extends MultilegError {
  /** Always 407. */
  readonly statusCode = 407;
  /** The proxy, as `http://host:port`. */
  readonly proxy: string;
  /** Schemes the proxy offered in its last Proxy-Authenticate. */
  readonly offered: readonly string[];
  /**
   * The proxy refused the credentials themselves: a final 407 to them now, or lately (then nothing
   * was sent with them: they are not tried again for 30 s, doubling up to 30 min, so that a wrong or changed password does
   * not lock the account). False when no credential was refused (none configured, no usable scheme).
   */
  readonly refused: boolean;
  constructor(proxy: string, detail: string, offered: readonly string[], refused = false) {
    super(
      'MULTILEG_PROXY_AUTH',
      `proxy ${proxy} requires authentication (407; offers ${offered.length ? offered.join(', ') : 'no scheme'}): ${detail}`,
    );
    this.proxy = proxy;
    this.offered = offered;
    this.refused = refused;
  }
}

/**
 * A request carries its own Proxy-Authorization but goes through a CONNECT tunnel: the header would
 * reach the origin, not the proxy (undici's ProxyAgent refuses the same).
 */
export class ProxyAuthorizationHeaderError extends MultilegError {
  readonly proxy: string;
  constructor(origin: string, proxy: string) {
    super(
      'MULTILEG_PROXY_AUTH_HEADER',
      `a Proxy-Authorization header on a request to ${origin} would travel inside proxy ${proxy}'s CONNECT tunnel to ${origin}, not to the proxy; nothing was sent: give the proxy's credentials as options.proxy.credentials (or in the proxy URL) instead`,
    );
    this.proxy = proxy;
  }
}

/**
 * The proxy answered CONNECT with a status other than 2xx or 407: a refusal (403, 405…), or (502,
 * 503, 504) that it could not reach the target itself — Squid's ERR_CONNECT_FAIL is a 503.
 */
export class ProxyConnectError extends MultilegError {
  readonly statusCode: number;
  readonly proxy: string;
  constructor(proxy: string, target: string, status: number) {
    super(
      'MULTILEG_PROXY_CONNECT',
      status === 502 || status === 503 || status === 504
        ? `proxy ${proxy} could not open a tunnel to ${target} (status ${status}: the proxy could not reach it; check that ${target} is up and reachable from the proxy, its name resolvable there)`
        : `proxy ${proxy} refused to open a tunnel to ${target} (status ${status}); check that the proxy allows CONNECT to that host and port, or exclude it with NO_PROXY`,
    );
    this.statusCode = status;
    this.proxy = proxy;
  }
}

/** The proxy broke the protocol: malformed or oversized response head, connection closed early. */
export class ProxyProtocolError extends MultilegError {
  readonly proxy: string;
  constructor(proxy: string, detail: string, options?: { cause?: unknown }) {
    super(
      'MULTILEG_PROXY_PROTOCOL',
      `proxy ${proxy}: ${detail}; check the proxy address and that it is an HTTP proxy`,
      options,
    );
    this.proxy = proxy;
  }
}

/**
 * A forwarding proxy closed a connection after a request was written on it, before any answer to
 * it: {@link ConnectionClosedError} for the proxy's connection (the same rule, messages naming the
 * proxy), with its own stable code `MULTILEG_PROXY_CLOSED`. On a new connection (`fresh`, curl's 52
 * "Empty reply from server") the request is not sent again, idempotent or not: that is the proxy
 * refusing or failing it, not an idle close. `Authorization` in `unproved`: the origin's credentials,
 * which the proxy may have passed on. Also a proxy that closed (or reset) the connection partway
 * through the body of its 407 to a CONNECT (`challengeCut` 407, `method` `CONNECT`): not answered,
 * no tunnel opened, so the caller's request was never sent.
 */
export class ProxyClosedError extends ConnectionClosedError {
  /** The proxy, as `http://host:port` (also {@link ConnectionClosedError.peer}). */
  readonly proxy: string;
  constructor(proxy: string, method: string, options?: ConnectionClosedOptions) {
    super(proxy, method, options, 'proxy');
    this.proxy = proxy;
  }
}

/** System error codes of a failed name lookup. */
const RESOLVE_CODES: ReadonlySet<string> = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EAI_FAIL', 'EAI_NONAME']);

/** System error codes that mean the proxy is not reachable (as opposed to misbehaving). */
export const UNREACHABLE_CODES: ReadonlySet<string> = new Set([
  ...RESOLVE_CODES,
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ECONNRESET',
  'ETIMEDOUT',
  'EADDRNOTAVAIL',
]);

/**
 * The proxy could not be reached: its host name does not resolve, or nothing accepts (or keeps) the
 * connection — refused, unreachable, or reset before it answered anything.
 */
export class ProxyUnreachableError extends MultilegError {
  readonly proxy: string;
  /** `resolve`: the proxy's host name does not resolve; `connect`: the connection failed. */
  readonly reason: 'resolve' | 'connect';
  /** The system error code, e.g. `ECONNREFUSED`, `ENOTFOUND` (the system error is `cause`). */
  readonly systemCode: string;
  constructor(proxy: string, systemCode: string, options?: { cause?: unknown }) {
    const reason = RESOLVE_CODES.has(systemCode) ? 'resolve' : 'connect';
    super(
      'MULTILEG_PROXY_UNREACHABLE',
      reason === 'resolve'
        ? `cannot resolve the host name of proxy ${proxy} (${systemCode}); check the proxy address (proxy.uri, or HTTPS_PROXY / HTTP_PROXY) and DNS`
        : `cannot connect to proxy ${proxy} (${systemCode}); check the proxy address (proxy.uri, or HTTPS_PROXY / HTTP_PROXY) and that the proxy is running, or bypass it with NO_PROXY`,
      options,
    );
    this.proxy = proxy;
    this.reason = reason;
    this.systemCode = systemCode;
  }
}

/** An https:// proxy's certificate failed verification. */
export class ProxyCertificateError extends MultilegError {
  readonly proxy: string;
  /** Node's verification code, e.g. `UNABLE_TO_VERIFY_LEAF_SIGNATURE` (the TLS error is `cause`). */
  readonly reason: string;
  constructor(proxy: string, reason: string, options?: { cause?: unknown }) {
    const what =
      reason === 'CERT_HAS_EXPIRED' || reason === 'CERT_NOT_YET_VALID'
        ? `is not valid now (${reason}); renew the proxy's certificate, or check this machine's clock`
        : reason === 'ERR_TLS_CERT_ALTNAME_INVALID' || reason === 'HOSTNAME_MISMATCH'
          ? `is not for that name (${reason}); name the proxy as its certificate does (proxy.uri, or HTTPS_PROXY / HTTP_PROXY)`
          : `is not trusted (${reason}); give the CA that issued it in proxy.connect.ca, or NODE_EXTRA_CA_CERTS=FILE`;
    super('MULTILEG_PROXY_CERTIFICATE', `the certificate of proxy ${proxy} ${what}`, options);
    this.proxy = proxy;
    this.reason = reason;
  }
}

/**
 * Authenticating to the proxy took longer than `limits.handshakeTimeout`: the CONNECT handshake
 * (all its legs and the mechanism's steps), or a forwarded request's 407 exchange (from the first
 * 407 to the proxy's answer to the last leg, a stalled 407 body included).
 */
export class ProxyTimeoutError extends MultilegError {
  readonly proxy: string;
  /** `tunnel` (CONNECT) or `forward` (a plain-http target's 407 exchange). */
  readonly route: 'tunnel' | 'forward';
  constructor(proxy: string, ms: number, route: 'tunnel' | 'forward' = 'tunnel') {
    super(
      'MULTILEG_PROXY_TIMEOUT',
      `proxy ${proxy} did not ${route === 'tunnel' ? 'open the tunnel' : 'finish authenticating the request'} within limits.handshakeTimeout (${ms} ms); check the proxy or raise limits.handshakeTimeout`,
    );
    this.proxy = proxy;
    this.route = route;
  }
}

/**
 * Connecting through the proxy took longer than `proxy.connectTimeout`, one budget for a
 * connection's steps; `stage` is the step it ran out in: the connection to the proxy (TCP, or TLS
 * for an https:// proxy), the proxy's answer to a CONNECT, or the TLS handshake with the origin
 * inside the tunnel (a proxy that says 200 and then relays nothing).
 */
export class ProxyConnectTimeoutError extends MultilegError {
  readonly proxy: string;
  /**
   * `proxy` (connecting to the proxy), `answer` (the proxy's answer to a CONNECT) or `origin` (TLS
   * with the origin through the tunnel).
   */
  readonly stage: 'proxy' | 'answer' | 'origin';
  /**
   * `target` (`host:port`) names the origin of a CONNECT that went unanswered, or of TLS inside the
   * tunnel; `scheme`, the scheme whose credentials that CONNECT carried (a handshake's leg).
   */
  constructor(proxy: string, ms: number, target?: string, stage: 'answer' | 'origin' = 'origin', scheme?: string) {
    super(
      'MULTILEG_PROXY_CONNECT_TIMEOUT',
      target === undefined
        ? `proxy ${proxy} accepted no connection within proxy.connectTimeout (${ms} ms); check the proxy address and that it is up, or raise proxy.connectTimeout`
        : stage === 'answer'
          ? // A proxy answers a CONNECT once it has reached the target: a target it cannot reach keeps it silent too.
            scheme === undefined
            ? `proxy ${proxy} accepted the connection but did not answer CONNECT ${target} within proxy.connectTimeout (${ms} ms); a proxy answers once it has connected to ${target}: check that ${target} is up and reachable from the proxy, then the proxy, or raise proxy.connectTimeout`
            : // With credentials the proxy checks them first (its authentication backend: Squid's helper, a domain controller).
              `proxy ${proxy} did not answer CONNECT ${target} carrying ${scheme} credentials within proxy.connectTimeout (${ms} ms); a proxy answers once it has checked them and connected to ${target}: check the proxy's authentication backend (its domain controller or auth helper) and that ${target} is reachable from the proxy, or raise proxy.connectTimeout`
          : `the TLS handshake with ${target} through proxy ${proxy} did not finish within proxy.connectTimeout (${ms} ms); the proxy opened the tunnel but relays nothing: check the proxy, or raise proxy.connectTimeout`,
    );
    this.proxy = proxy;
    this.stage = target === undefined ? 'proxy' : stage;
  }
}

/**
 * No response head came through a forwarding proxy (a plain-http target, H5) within undici's
 * `headersTimeout`: the proxy did not answer, or the origin behind it did not answer the proxy — a
 * forwarding proxy sends nothing until the origin's head comes (Squid relayed its first byte 15 s
 * after the request, when a 15 s origin answered), so the two cannot be told apart, and nothing
 * shorter than `headersTimeout` bounds the wait (a slow origin is no broken proxy). undici's
 * `HeadersTimeoutError` is `cause`. A CONNECT's silence is {@link ProxyConnectTimeoutError}.
 */
export class ProxyResponseTimeoutError extends MultilegError {
  readonly proxy: string;
  /** The origin the request was for (`http://host:port`). */
  readonly origin: string;
  /** The wait, in ms: the request's own `headersTimeout`, else the agent's. */
  readonly timeout: number;
  constructor(proxy: string, origin: string, ms: number, options?: { cause?: unknown }) {
    super(
      'MULTILEG_PROXY_RESPONSE_TIMEOUT',
      `no response through proxy ${proxy} for ${origin} within headersTimeout (${ms} ms): the proxy did not answer, or ${origin} behind it did not answer the proxy (a forwarding proxy sends nothing until the origin answers); check that the proxy is up and reaches ${origin} (its logs), or bypass it with NO_PROXY; headersTimeout (the agent's, or the request's) sets how long to wait`,
      options,
    );
    this.proxy = proxy;
    this.origin = origin;
    this.timeout = ms;
  }
}

/**
 * A forward proxy said the origin speaks HTTP/1.1 (`Remote-http-version`, H3): authenticated traffic
 * for it moves to HTTP/1.1. Carries HTTP/2's HTTP_1_1_REQUIRED code so the pool relocates the request
 * exactly as it does for H2; the caller never sees it.
 */
export class RemoteHttp1Error extends MultilegError {
  readonly http2ErrorCode = 0xd;
  constructor() {
    super(
      'MULTILEG_REMOTE_HTTP1',
      'the proxy reports the origin speaks HTTP/1.1 (Remote-http-version); authentication is retried over HTTP/1.1 (HTTP_1_1_REQUIRED)',
    );
  }
}
