import type { ConnectionOptions } from 'node:tls';
import type { Challenge } from './challenge/types.ts';
import type { ConnectTo } from './connect-to.ts';
import { ConfigError } from './errors.ts';
import type { NegotiateOptions } from './mechanisms/negotiate/index.ts';
import type { Credentials, Mechanism } from './mechanisms/types.ts';
import type { ProxyOptions, ProxyResolver } from './proxy/options.ts';
import type { RefusalMemory } from './session/refusal-memory.ts';
import type { TrustedOrigins, TrustPolicy } from './trust/policy.ts';

/** Bounds on handshakes and queues (C11). Every one fails with a typed error naming it. */
export interface Limits {
  /** Maximum legs (requests carrying credentials) in one handshake. Default 6. */
  maxLegs: number;
  /**
   * Maximum requests waiting at one place: a handshake, a new session's first response, an
   * HTTP/1.1 connection, a handshake slot, the handshake proving the credentials at an origin or
   * proxy (`QueueFullError`). Default 10 000.
   */
  maxQueue: number;
  /** Maximum time a request may wait at any one of those places, in ms (`QueueTimeoutError`). Default 60 000. */
  queueTimeout: number;
  /** Maximum time for a whole handshake, in ms. Default 30 000. */
  handshakeTimeout: number;
  /** One-shot bodies up to this size are buffered so they can be replayed on every leg (C10). Default 1 MiB. */
  maxReplayBodyBytes: number;
  /** Intermediate 401 bodies larger than this are not drained but the connection is dropped. Default 64 KiB. */
  maxChallengeBodyBytes: number;
  /**
   * Handshakes running at once on one session (per-request mode runs one per request). Servers
   * limit incomplete security contexts per session (draft §3.1) and refuse the excess. Default 4.
   */
  maxConcurrentHandshakes: number;
  /**
   * Connections (sessions) per origin when each request runs its own multi-leg handshake
   * (per-request mode, e.g. NTLM inside Negotiate at a server that authenticates requests, not
   * connections): the handshakes spread over them, `maxConcurrentHandshakes` on each. Default 8.
   */
  maxPerRequestSessions: number;
  /**
   * Session mode (the origin authenticates connections): HTTP/2 sessions per origin that may be
   * open at once. One more opens only when every session has `maxConcurrentStreams` requests in
   * flight and one is authenticated; it authenticates proactively with the scheme the first one
   * used (NTLM: one more leg; Kerberos: none when its token needs no channel binding yet). Default 1,
   * as curl, Chromium and .NET (`EnableMultipleHttp2Connections` off) do: requests beyond the
   * streams wait for a free one on the authenticated session, at one handshake per origin.
   */
  maxAuthenticatedSessions: number;
}

export const DEFAULT_LIMITS: Limits = {
  maxLegs: 6,
  maxQueue: 10_000,
  queueTimeout: 60_000,
  handshakeTimeout: 30_000,
  maxReplayBodyBytes: 1024 * 1024,
  maxChallengeBodyBytes: 64 * 1024,
  maxConcurrentHandshakes: 4,
  maxPerRequestSessions: 8,
  maxAuthenticatedSessions: 1,
};

/**
 * The schemes multileg implements, as `schemes` names them (matched case-insensitively at run
 * time). A custom {@link Mechanism} with another scheme is ordered with a cast:
 * `schemes: ['Negotiate', 'X-Custom' as SchemeName]`.
 */
export type SchemeName = 'Negotiate' | 'NTLM' | 'Digest' | 'Basic' | 'Transport';

/** The names {@link SchemeName} allows, for validating input from outside TypeScript. */
export const SCHEME_NAMES: readonly SchemeName[] = ['Negotiate', 'NTLM', 'Digest', 'Basic', 'Transport'];

/**
 * Rejects a `schemes` that is not an array (plain JavaScript: `schemes: 'NTLM'` would be read letter
 * by letter), an empty one, and an entry that names no scheme multileg implements and no given
 * mechanism: a typo would otherwise silently turn a scheme off (an empty list, all of them).
 */
export function checkSchemes(
  name: string,
  schemes: readonly string[] | undefined,
  mechanisms: readonly Mechanism[],
): void {
  if (schemes === undefined) return;
  if (!Array.isArray(schemes))
    throw new ConfigError(
      `${name} must be an array of scheme names, in order of preference, e.g. ${name}: ['NTLM'] (got ${typeof schemes === 'string' ? 'a string' : typeof schemes})`,
    );
  // An empty list turns every scheme off: each challenge would end as an unanswered 401, unexplained.
  if (schemes.length === 0)
    throw new ConfigError(
      `${name}: [] names no scheme, so no challenge could ever be answered (each 401 or 407 would stand, unexplained); omit ${name} for the default order (Negotiate, NTLM, Digest, Basic) or name at least one, e.g. ${name}: ['Negotiate', 'NTLM']`,
      name,
    );
  const known = new Set([...SCHEME_NAMES, ...mechanisms.map((m) => m.scheme)].map((s) => s.toLowerCase()));
  for (const s of schemes as readonly unknown[]) {
    if (typeof s !== 'string')
      throw new ConfigError(`${name} entries must be scheme names (strings), e.g. ${name}: ['NTLM']`);
    if (!known.has(s.toLowerCase()))
      throw new ConfigError(
        `${name}: unknown scheme ${JSON.stringify(s)}; use ${SCHEME_NAMES.join(', ')} or a scheme of your mechanisms`,
      );
  }
}

/**
 * A TLS client certificate presented to origins that ask for one (T3): PEM, or DER in a Buffer (converted
 * to PEM); an encrypted key with its `passphrase`. Checked when given: a bad one is a `ConfigError`.
 */
export interface ClientCertificate {
  readonly cert: string | Buffer;
  readonly key: string | Buffer;
  readonly passphrase?: string;
}

/**
 * A certificate authority's name as a server's TLS CertificateRequest gives it (T3): `der`, the
 * DER of its X.501 Name, and `name`, the same text Node's `X509Certificate#issuer` gives (one
 * `KEY=value` a line), so that `new X509Certificate(pem).issuer === name` for a certificate it issued.
 */
export interface DistinguishedName {
  readonly der: Buffer;
  readonly name: string;
}

/** What the agent knows of the server's request for a client certificate, given to the selector (T3). */
export interface CertificateRequestInfo {
  /**
   * The certificate authorities the server accepts client certificates of, as its TLS
   * CertificateRequest names them (read by a TLS handshake of the agent's own that presents no
   * certificate, once per origin; asked again at the next Transport challenge when it could not
   * tell). Each a {@link DistinguishedName}; `issuedByOneOf` matches one.
   * - a list: the server asked for a certificate at the TLS level, issued by one of these;
   * - `[]`: it asked and named no authority (RFC 8446 §4.2.4, RFC 5246 §7.4.4: any may do);
   * - `undefined`: it did not ask at the TLS level (only by its `Transport` challenge), or the agent
   *   could not tell (the origin is `http:`, the handshake failed, a cipher suite it cannot read).
   *   A probe that does not finish within `limits.handshakeTimeout` fails the request with
   *   `HandshakeTimeoutError` (the probe and the selector share that bound): the selector is not asked.
   */
  readonly acceptableIssuers?: readonly DistinguishedName[];
  /**
   * `true` when no HTTP challenge came: the server refused the TLS handshake without a client
   * certificate (it requires one there: Node's `requestCert` with `rejectUnauthorized`, nginx's
   * `ssl_verify_client on`, IIS's "require"), and the agent's own TLS handshake confirmed that it
   * asks for one (`acceptableIssuers` is then always a list, `[]` for any CA). The challenge is then
   * a synthetic `Transport mode="tls-client-certificate"`, so a selector written for the HTTP
   * challenge needs no change. Absent for a challenge the server sent.
   */
  readonly requiredInHandshake?: true;
  /**
   * `true` when the server asked for a certificate after the TLS handshake, for the request's path
   * only (Apache's per-directory `SSLVerifyClient`, an IIS folder's client certificates while its
   * binding does not negotiate them): it renegotiated the TLS 1.2 connection and closed it when none
   * came. The certificate chosen is presented on the renegotiation of a new connection.
   * `acceptableIssuers` is then undefined (the renegotiation is encrypted), the challenge the
   * synthetic `Transport` one.
   */
  readonly requiredAfterHandshake?: true;
}

/**
 * Picks a client certificate for an origin that offered `Transport mode="tls-client-certificate"`,
 * or that requires one in the TLS handshake (then `info.requiredInHandshake` is true and the
 * challenge a synthetic one of that form), by its origin, its challenge, and the certificate
 * authorities the server accepts (`info`, as .NET's `LocalCertificateSelectionCallback` gets
 * `acceptableIssuers`). A selector that takes two arguments works as before.
 */
export type ClientCertificateSelector = (
  origin: string,
  challenge: Challenge,
  info: CertificateRequestInfo,
) => ClientCertificate | undefined | Promise<ClientCertificate | undefined>;

/**
 * A cookie jar, as the agent's `cookies` option takes it: asked for the `Cookie` header of each
 * request the agent writes and told each response head's `Set-Cookie`. Both are called
 * synchronously, as a leg is written and as its response head arrives: a store that must wait for
 * something keeps what it needs in memory. Which cookie goes where is the store's rule (RFC 6265:
 * domain, path, Secure, expiry, public suffixes): `trustedOrigins` does not apply to cookies.
 */
export interface CookieStore {
  /**
   * The `Cookie` header for a request to `url` (`https://host:port/path?query`), or undefined for
   * none. Throwing fails the request, unsent, with `CookieStoreError`.
   */
  cookieHeader(url: string): string | undefined;
  /**
   * The `Set-Cookie` values (each one header line's value) of a response to a request to `url`:
   * every response head, a handshake's 401s and a redirect's 3xx included. Throwing is reported as
   * a process warning (`MULTILEG_COOKIE_STORE_THREW`); the response goes on.
   */
  setCookies(url: string, values: readonly string[]): void;
}

/** Options of {@link MultilegAgent}. */
export interface MultilegAgentOptions {
  /**
   * Username/password used by NTLM (and by Negotiate's NTLM fallback, Digest and Basic). The agent
   * keeps a copy (change them with `setCredentials`). Absent, `undefined` or (from JavaScript)
   * `null` is none; anything else that is not `{ username, password }` is a `ConfigError`.
   */
  credentials?: Credentials | null;
  /**
   * Origins that may receive credentials (S1, S4, S5; docs/SECURITY.md): exact origins
   * (`https://intranet.example.com`), wildcard host patterns (`https://*.corp.example.com`, with a
   * port or `:*` for any), or a predicate given each origin. Required with `credentials` (a
   * password), `negotiate.delegate`, `negotiate.spn`, `negotiate.canonicalizeHost` (a ticket that is
   * not each origin's own) or custom `mechanisms`: without it the constructor throws
   * `TrustRequiredError`. Without it (ambient Kerberos, a client certificate), credentials go to the
   * https origins the caller names itself, never to `http:` origins or across a redirect.
   */
  trustedOrigins?: TrustedOrigins;
  /** Scheme preference, strongest first (T2). Default `['Negotiate', 'NTLM', 'Digest', 'Basic']`. */
  schemes?: readonly SchemeName[];
  /**
   * Negotiate (Kerberos/SPNEGO through the system GSS-API via the optional `koffi` package, else the
   * optional `kerberos` package): SPN, principal, per-agent `ccache` / `keytab`, TLS channel bindings,
   * delegation, mutual authentication. When Kerberos cannot produce a token, `credentials`
   * authenticate through NTLM inside Negotiate (`ntlmFallback`, default `'raw'`: accepted by IIS,
   * MIT/Apache and the reference server; `'spnego'` wraps it with a mechListMIC). `false` disables
   * Negotiate towards origins (requests and upgrades). Not towards a proxy: that is
   * `proxy.negotiate`'s, and a proxy (the environment's too) that asks for Negotiate still gets the
   * process's default Kerberos ticket unless `proxy.negotiate` is `false` as well.
   */
  negotiate?: Omit<NegotiateOptions, 'credentials'> | false;
  /**
   * Let Basic send the password to cleartext `http:` origins (M4), and over TLS whose server was not
   * verified (`connect.rejectUnauthorized: false` let a failing certificate through). Default false: such a Basic
   * challenge is refused with a `BasicOverHttpError` (or another offered scheme is used). An `http:`
   * origin must also be trusted explicitly (S4). Not for proxies: `proxy.credentials` answer the
   * proxy configured, Basic included over an `http://` proxy URL, as curl and browsers do (use an
   * `https://` proxy URL, or `proxy.schemes` without Basic, to keep the password off the wire).
   */
  allowBasicOverHttp?: boolean;
  /** Extra or replacement mechanisms, keyed by scheme (tests, custom schemes). */
  mechanisms?: readonly Mechanism[];
  /**
   * TLS options for connections to origins (ca, rejectUnauthorized, ...). With `rejectUnauthorized:
   * false`, Basic refuses a server whose certificate did not verify (see `allowBasicOverHttp`). Not `ALPNProtocols`: the
   * agent offers `h2` and `http/1.1` itself, or `http/1.1` alone where it must (`allowH2`). Not a
   * client certificate (`cert`, `key`, `pfx`): these options go to every origin, so it is
   * {@link MultilegAgentOptions.clientCertificate} (a `ConfigError` says so), nor a `secureContext`
   * made with one (one made with CAs only, its usual use, is taken).
   */
  connect?: ConnectionOptions;
  /**
   * Offer HTTP/2 to origins (ALPN), as undici's `Agent` does. Default true; `false`: every request
   * goes over HTTP/1.1 (a server whose HTTP/2 misbehaves; IIS's NTLM needs no such setting: its
   * `HTTP_1_1_REQUIRED` is followed, H2). A request's own dispatch option `allowH2: false` does the
   * same for that request alone.
   */
  allowH2?: boolean;
  /**
   * A TLS client certificate (T3). Given as such, it is presented in the TLS handshake when the
   * server asks for one there (as curl's `--cert` and .NET's `ClientCertificates` do), by the
   * agent's own sessions only: to the origins the caller names (and trusts), never across a
   * cross-origin redirect; and only while `Transport` comes first in `schemes` (the default). Either form also answers `WWW-Authenticate: Transport
   * mode="tls-client-certificate"`: the request moves to a new session that presents it (HTTP/2
   * cannot renegotiate), and the origin keeps using it. A function chooses per origin and challenge,
   * or declines with undefined; it is asked on such a challenge only. Unless `schemes` places
   * `Transport`, it is preferred over every other scheme.
   */
  clientCertificate?: ClientCertificate | ClientCertificateSelector;
  /** See {@link Limits}. */
  limits?: Partial<Limits>;
  /** Maximum HTTP/1.1 connections per origin. Default 16. */
  maxHttp1Connections?: number;
  /**
   * Streams at once on one HTTP/2 session (the server's SETTINGS may allow fewer). Requests beyond
   * them wait for a free stream, or open another authenticated session (`limits.maxAuthenticatedSessions`).
   * Default 100, undici's own: on loopback 1000 streams on one session were 10–15% slower than 100.
   */
  maxConcurrentStreams?: number;
  /** Keep-alive for idle connections in ms; long, because an NTLM connection is worth keeping. Default 60 000. */
  keepAliveTimeout?: number;
  /**
   * undici's `headersTimeout` for every request and leg of the agent's connections, in ms: how long
   * a response head may take once the request went (the first request on a new connection is
   * bounded by it alone; those queued behind it by `limits.queueTimeout`); after an interim (1xx)
   * response, the final head within it of the first one (undici would start it again at each). A
   * request's own `headersTimeout` dispatch option still wins. Default 300 000, undici's. No 0:
   * every wait has a bound.
   */
  headersTimeout?: number;
  /**
   * undici's `bodyTimeout`: the longest pause between two chunks of a response body, in ms. A
   * request's own `bodyTimeout` still wins. Default 300 000, undici's. No 0: every wait has a bound.
   */
  bodyTimeout?: number;
  /** How long an origin stays "HTTP/1.1 for authentication" after a downgrade, in ms. Default 1 hour. */
  http1MemoryTtl?: number;
  /**
   * Proxy (H5): a URI, {@link ProxyOptions} (with its own credentials, never the origin's), or `false`
   * to ignore the environment. Default: `HTTPS_PROXY` for https targets, `HTTP_PROXY` for http ones,
   * and `NO_PROXY` (not `HTTP_PROXY` under CGI: "httpoxy"). With `HTTP_PROXY` alone, https targets go
   * directly, as with curl, .NET and Go — not through that proxy as with undici's EnvHttpProxyAgent
   * (and this agent before): a proxy named for plain http gets no https host names, proxy
   * credentials or Negotiate/NTLM unless asked; set `HTTPS_PROXY` too, or pass `proxy`, for that.
   * https targets go through a CONNECT tunnel; http targets are forwarded (absolute-form) unless
   * `http: 'tunnel'`.
   */
  proxy?: string | ProxyOptions | false;
  /**
   * Where connections go instead of where DNS says, as curl's `--resolve` and `--connect-to`: asked
   * before each connection the agent makes — to an origin (`via: 'origin'`), the `host:port` a
   * CONNECT asks a proxy for (`'tunnel'`), a proxy itself (`'proxy'`) — it returns another
   * hostname, port or the addresses to use (a `ConnectRoute`), or undefined for the usual. Only
   * the address changes: the URL's host stays what TLS sends (SNI) and verifies the certificate
   * against, the Host header, cookies, `trustedOrigins` and the Kerberos SPN (`HTTP@host`); channel
   * bindings come from the certificate of the server reached. An `http://` origin routed
   * elsewhere behind a forwarding proxy goes through a CONNECT tunnel (curl's rule; decided once per
   * origin, at its first request, so answer the same for an origin throughout). Upgrades too.
   * (`connect.lookup` also reaches Node's socket for direct connections, but it is not told the
   * port, nor asked for proxies.)
   */
  connectTo?: ConnectTo;
  /**
   * A cookie jar ({@link CookieStore}), as curl's cookie engine or a browser's: asked for the
   * `Cookie` header of every request the agent writes, each leg of a handshake included, and told
   * every response head's `Set-Cookie`, a handshake's 401s too, so that a cookie a server sets on
   * its challenge (a load balancer's affinity cookie) goes back on the next leg. A request's own
   * `Cookie` header is sent too, after the jar's, in the same header (RFC 6265 §5.4: one Cookie
   * header). The jar is the agent's identity's (S6): a request with its own `Authorization` or
   * `Proxy-Authorization` runs as another identity, so it neither gets the jar's cookies (the
   * agent's login session cookie would make it the agent at the server) nor adds its own to the
   * jar. Upgrades (WebSocket) use it as requests do, their 101 included; CONNECT requests are not
   * given cookies. Requests to an authenticated session keep the agent's fast path (C2): it asks
   * and tells the jar too.
   */
  cookies?: CookieStore;
  /**
   * A 401 whose offered schemes the agent cannot answer here — its mechanisms for them cannot run,
   * such as Negotiate without a Kerberos ticket — is the caller's response, with its body, as curl
   * shows it, instead of the typed error that says why (`KerberosNoTicketError`…). The request is
   * sent once: the 401's body is kept while the mechanism tries (bounded by
   * `limits.maxChallengeBodyBytes`; a body cut at that bound leaves the typed error). Why goes to
   * `multileg:unanswered` (diagnostics channel). Default `false`: the typed error names the fix.
   * A 401 offering nothing the agent has, or refusing its credentials, is the caller's either way.
   */
  deliver401?: boolean;
  /**
   * A response the agent got as its own identity — its leg carried the agent's `Authorization` or
   * its cookie jar's `Cookie`, or came on a connection authenticated as the agent (NTLM, Negotiate,
   * `Persistent-Auth`) or over its client certificate — is delivered with `private` added to its
   * `Cache-Control`, unless the response already allows a shared cache to reuse it (`public`,
   * `s-maxage`, `must-revalidate`: RFC 9111 §3.5) or forbids storing it (`no-store`, `private`). A
   * shared cache above the agent (undici's `interceptors.cache`) sees a request without those
   * credentials and would otherwise store the response as anyone's (S6). Responses to anonymous
   * requests and to requests with the caller's own `Authorization` (which the cache sees) are left
   * as sent. Default `true`; `false` delivers every response's headers as the server sent them, for
   * a client with no cache above the agent that shows the wire (the `multileg` command).
   */
  markPrivate?: boolean;
  /**
   * Keeps refusals of the agent's passwords (`credentials`, `proxy.credentials`) beyond this agent
   * (R4, account lockout): asked before a handshake sends a password not proved at an origin or a
   * proxy, told when it is refused there and when it succeeds. Within one agent the agent holds a
   * refused password back itself (30 s doubling to 30 min); a process started anew knows nothing of
   * that, so a wrong password run by a job per process (cron) is sent once per run without this.
   * The `multileg` command keeps them in a file of the user's; a long-running service keeps one
   * agent for the process and needs none. See {@link RefusalMemory}. Default: none (memory only).
   */
  refusalMemory?: RefusalMemory;
}

export interface ResolvedOptions {
  clientCertificate?: ClientCertificateSelector;
  /**
   * `clientCertificate` is the caller's selector (not a certificate given as such): it is told the
   * server's acceptable CAs, which a TLS handshake of the agent's own reads once per origin.
   */
  askAcceptableIssuers?: boolean;
  /**
   * A certificate given as such (not a selector): the agent's own sessions present it in the TLS
   * handshake of every origin the caller names, when the server asks for one there (T3).
   */
  handshakeCertificate?: ClientCertificate;
  trust: TrustPolicy;
  schemes: readonly string[];
  mechanisms: readonly Mechanism[];
  connect: ConnectionOptions;
  /** `allowH2: false`: every request on the HTTP/1.1 lane. */
  http1Only: boolean;
  limits: Limits;
  maxHttp1Connections: number;
  maxConcurrentStreams: number;
  keepAliveTimeout: number;
  headersTimeout: number;
  bodyTimeout: number;
  http1MemoryTtl: number;
  proxy: ProxyResolver;
  connectTo?: ConnectTo;
  cookies?: CookieStore;
  deliver401: boolean;
  markPrivate: boolean;
  refusalMemory?: RefusalMemory;
}

/** Every option of {@link MultilegAgentOptions} (the compiler keeps this list whole). */
const OPTION_NAMES: Record<keyof MultilegAgentOptions, true> = {
  credentials: true,
  trustedOrigins: true,
  schemes: true,
  negotiate: true,
  allowBasicOverHttp: true,
  mechanisms: true,
  connect: true,
  allowH2: true,
  clientCertificate: true,
  limits: true,
  maxHttp1Connections: true,
  maxConcurrentStreams: true,
  keepAliveTimeout: true,
  headersTimeout: true,
  bodyTimeout: true,
  http1MemoryTtl: true,
  proxy: true,
  connectTo: true,
  cookies: true,
  deliver401: true,
  markPrivate: true,
  refusalMemory: true,
};

/**
 * A ConfigError for a name `given` has and `known` does not: from plain JavaScript a misspelt option
 * (`limits: { handshakeTimout }`, undici's `connections`) would otherwise be ignored without a word.
 */
export function checkNames(what: string, given: unknown, known: object): void {
  if (given === null || typeof given !== 'object' || Array.isArray(given))
    throw new ConfigError(`${what} must be an object (got ${given === null ? 'null' : typeof given})`);
  for (const name of Object.keys(given))
    if (!Object.hasOwn(known, name))
      throw new ConfigError(`${what}: unknown option ${JSON.stringify(name)}; known: ${Object.keys(known).join(', ')}`);
}

/** Every option `negotiate` takes (the compiler keeps this list whole); `credentials` are the agent's own. */
export const NEGOTIATE_NAMES: Record<Exclude<keyof NegotiateOptions, 'credentials'>, true> = {
  mech: true,
  spn: true,
  serviceName: true,
  canonicalizeHost: true,
  includePort: true,
  principal: true,
  ccache: true,
  keytab: true,
  channelBindings: true,
  backend: true,
  delegate: true,
  mutualAuth: true,
  passwordAllowed: true,
  ntlmFallback: true,
  kerberos: true,
  resolveCname: true,
};

/**
 * @throws {ConfigError} on an option MultilegAgent does not have, or `negotiate` does not (a
 * misspelt `principal` or `ccache` made the agent, and the proxy with it, run as whoever the default
 * ticket cache holds: review r68).
 */
export function checkOptionNames(options: object): void {
  checkNames('MultilegAgent options', options, OPTION_NAMES);
  const negotiate = (options as { negotiate?: unknown }).negotiate;
  if (typeof negotiate !== 'object' || negotiate === null) return;
  // A password there went, as NTLM inside Negotiate, to any https origin: the constructor's S1
  // check (no password without trustedOrigins) reads `credentials` alone (review r68).
  if (Object.hasOwn(negotiate, 'credentials'))
    throw new ConfigError(
      "negotiate.credentials: give the password as credentials (the agent's own, which need trustedOrigins: S1), not inside negotiate",
      'negotiate.credentials',
    );
  checkNames('negotiate', negotiate, NEGOTIATE_NAMES);
}

/** Limits that count something (legs, requests, handshakes, sessions, bytes): whole numbers. */
const COUNTS: ReadonlySet<string> = new Set([
  'maxLegs',
  'maxQueue',
  'maxReplayBodyBytes',
  'maxChallengeBodyBytes',
  'maxConcurrentHandshakes',
  'maxPerRequestSessions',
  'maxAuthenticatedSessions',
]);

/** `value` as a positive number (a whole one with `integer`), else a ConfigError naming `name`. */
export function positive(name: string, value: unknown, integer = false, max = Number.POSITIVE_INFINITY): number {
  const ok = typeof value === 'number' && Number.isFinite(value) && value > 0 && (!integer || Number.isInteger(value));
  if (!ok) {
    const what = integer ? 'a positive whole number' : 'a positive number';
    throw new ConfigError(
      `${name} must be ${what}, got ${typeof value === 'string' ? JSON.stringify(value) : String(value)}`,
    );
  }
  if (value > max)
    throw new ConfigError(
      `${name} must be at most ${max} ms (about 24.8 days: Node's timers wait no longer), got ${value}`,
    );
  return value;
}

/** The longest delay a Node timer takes; a longer one fires at once (TimeoutOverflowWarning). */
export const MAX_TIMER_MS = 2 ** 31 - 1;
/** Limits that are delays (ms) of a timer. */
const TIMERS: ReadonlySet<string> = new Set(['queueTimeout', 'handshakeTimeout']);

export function resolveLimits(partial: Partial<Limits> | undefined): Limits {
  if (partial !== undefined) checkNames('limits', partial, DEFAULT_LIMITS);
  const limits: Record<string, unknown> = { ...DEFAULT_LIMITS };
  // A limit given as undefined (Partial allows it) keeps its default.
  for (const [name, value] of Object.entries(partial ?? {})) if (value !== undefined) limits[name] = value;
  for (const [name, value] of Object.entries(limits))
    positive(`limits.${name}`, value, COUNTS.has(name), TIMERS.has(name) ? MAX_TIMER_MS : undefined);
  return limits as unknown as Limits;
}

/** The ALPN protocols a connection offers: HTTP/2 first where it may be used, else HTTP/1.1 only. */
export const alpnFor = (allowH2: boolean): string[] => (allowH2 ? ['h2', 'http/1.1'] : ['http/1.1']);

/** The port a URL (or undici's connect options) names, else its scheme's default: 443 for https:, 80 otherwise. */
export function portOf(url: { readonly port?: string | number | null; readonly protocol?: string | null }): number {
  return Number(url.port || (url.protocol === 'https:' ? 443 : 80));
}

/**
 * A host name as sockets, TLS, SPNs and NTLM's target name take it: an IPv6 literal without the
 * brackets a URL writes it in (`new URL('https://[::1]/').hostname` is `[::1]`).
 */
export function unbracketed(hostname: string): string {
  return hostname.charCodeAt(0) === 91 && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
}

export function normalizeOrigin(origin: string | URL): string {
  const url = typeof origin === 'string' ? new URL(origin) : origin;
  return url.origin;
}
