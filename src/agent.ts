import { Dispatcher, Dispatcher1Wrapper } from 'undici';
import { prepareBody, preparedBody, readsFirst, TeeBody } from './body/replayable.ts';
import { DEFAULT_SCHEME_ORDER } from './challenge/index.ts';
import { checkConnectTo } from './connect-to.ts';
import { publishHandshake } from './diagnostics.ts';
import { AgentClosedError, ConfigError, MultilegError } from './errors.ts';
import { type ResponseObserver, UserSink } from './handshake/user-sink.ts';
import { type HeaderMap, iterableHeaders, normalizeRequestHeaders } from './headers.ts';
import { log } from './log.ts';
import { defaultMechanisms } from './mechanisms/defaults.ts';
import { parseNtlmUser, sameNtlmAccount as sameAccount } from './mechanisms/ntlm/index.ts';
import { MechanismSet } from './mechanisms/registry.ts';
import { type Credentials, type Holder, sameCredentials } from './mechanisms/types.ts';
import {
  type ClientCertificate,
  type ClientCertificateSelector,
  type CookieStore,
  checkOptionNames,
  checkSchemes,
  MAX_TIMER_MS,
  type MultilegAgentOptions,
  normalizeOrigin,
  positive,
  type ResolvedOptions,
  resolveLimits,
} from './options.ts';
import { ProxyAuthorizationHeaderError } from './proxy/errors.ts';
import { ProxyResolver, type ProxyRoute } from './proxy/options.ts';
import { configuredCertificate } from './session/client-certificate.ts';
import type { CredentialProof } from './session/credential-proof.ts';
import type { HandshakeReport } from './session/exchange.ts';
import { http1Only, newJob } from './session/job.ts';
import { TICKET_RECHECK_MS } from './session/origin-memory.ts';
import { askHolds, OriginPool, poolKey } from './session/origin-pool.ts';
import { sameAccount as sameIdentity } from './session/proved-identity.ts';
import type { Identity } from './session/session.ts';
import { hostElsewhere, servernameElsewhere, targetElsewhere } from './trust/host-header.ts';
import { type Grant, TrustPolicy, TrustRequiredError, type WithheldReason } from './trust/policy.ts';
import { mayBeAddress, namedOrigin, RedirectHops } from './trust/redirects.ts';
import { UpgradeDispatcher } from './upgrade/index.ts';

/**
 * A password that is not a string (an unset environment variable, say) would fail much later, as
 * if the server had misbehaved: say so at construction.
 */
function checkCredentials(c: unknown, name = 'credentials'): asserts c is Credentials {
  if (c === null || typeof c !== 'object')
    throw new ConfigError(
      `${name} must be { username, password } (and optionally domain, workstation), got ${c === null ? 'null' : typeof c}`,
      name,
    );
  const { username, password } = c as Partial<Credentials>;
  if (typeof username !== 'string' || username === '')
    throw new ConfigError(
      `${name}.username must be a non-empty string, e.g. EXAMPLE\\alice${name === 'proxy.credentials' ? " (for the proxy's Kerberos ticket alone, leave proxy.credentials out)" : ''}`,
    );
  if (typeof password !== 'string')
    throw new ConfigError(
      `${name}.password must be a string, got ${password === undefined ? 'undefined (is the environment variable that should hold it set?)' : typeof password}`,
    );
}

/** Options of {@link MultilegAgent.setCredentials}. */
export interface SetCredentialsOptions {
  /**
   * The cookie jar requests use from now on (`null`: none). Needed when the new credentials name
   * another account and the agent has a jar; omitted, the jar stays.
   */
  readonly cookies?: CookieStore | null;
  /**
   * With the credentials the agent already holds (which otherwise change nothing): their refusal
   * no longer holds them back — the password was fixed on the server (a vault ahead of the domain
   * controller), so the next request tries it at once, one handshake at a time until one succeeds.
   * Once per run of refusals: refused again after it, the password waits out its (longer)
   * hold-back, and this option changes nothing until it succeeds (R4: passed on every poll, it
   * would otherwise send a wrong password once per call). A `refusalMemory` of your own keeps its
   * records: forget them there. New credentials need no such word: the old ones' refusals never
   * hold them back.
   */
  readonly forgetRefusals?: boolean;
}

/** A `cookies` option that is not a cookie store fails here, not at the first request. */
function checkCookieStore(store: unknown): void {
  const s = store as Partial<CookieStore> | null;
  if (s === null || typeof s !== 'object' || typeof s.cookieHeader !== 'function' || typeof s.setCookies !== 'function')
    throw new ConfigError(
      'cookies must be a cookie store: an object with cookieHeader(url) and setCookies(url, values) methods (CookieStore)',
      'cookies',
    );
}

/**
 * A handler of undici's first API: onError (which that API requires) and no onRequestStart (which
 * the second requires; undici's adapter passes any handler that has it through unchanged).
 */
const isLegacyHandler = (h: Dispatcher.DispatchHandler): boolean =>
  typeof h.onRequestStart !== 'function' && typeof (h as { onError?: unknown }).onError === 'function';
/** Past this many origin pools, idle ones (no open connection, nothing waiting) are dropped. */
const POOL_SWEEP_THRESHOLD = 64;
/** Past this many, idle pools that remember a refusal of the credentials (R4) are dropped too, oldest first. */
const MAX_REMEMBERING_POOLS = 1024;

/** How many handshake reports {@link MultilegAgent.handshakes} keeps. */
export const MAX_REPORTS = 1000;

/** Counters since the agent was created. */
export interface MultilegStats {
  /** Requests dispatched by callers. */
  requests: number;
  /** Sessions (connections) opened. */
  sessions: number;
  /**
   * Handshakes with origins (each {@link HandshakeReport} without `proxy`). A proxy's are counted
   * apart, in {@link proxyHandshakes}: through a Basic or Digest proxy every request is a handshake
   * with it, which would hide here whether the origin's sessions stay authenticated (R6). The
   * agent's own only: the callers' own Authorization is counted apart ({@link callerRequests}).
   */
  handshakes: number;
  /** Handshake legs sent with credentials to origins. */
  legs: number;
  /**
   * Handshakes with origins that ended without authenticating. A handshake whose first leg never
   * reached the server (its connection was refused, TLS failed, or neither it nor, on HTTP/2, a
   * stream for the leg came within `limits.handshakeTimeout`) is no handshake: not counted, nor
   * reported — the caller has the connection's error (or the clock's); no credentials were tried.
   */
  failedHandshakes: number;
  /**
   * Handshakes with a proxy (H5: each {@link HandshakeReport} with `proxy: true`), on a CONNECT or
   * a forwarding proxy connection; not in {@link handshakes}.
   */
  proxyHandshakes: number;
  /** Handshake legs sent with credentials to a proxy (a CONNECT or a forwarded request with `Proxy-Authorization`). */
  proxyLegs: number;
  /** Handshakes with a proxy that ended without authenticating (refused, or otherwise). */
  failedProxyHandshakes: number;
  /**
   * Requests that carried the caller's own `Authorization` (S6: sent as given, on sessions of
   * their own, never answered by the agent). Their handshakes — a gateway relaying its clients'
   * NTLM or Negotiate — are the callers', not the agent's: none of them is in {@link handshakes},
   * {@link legs} or {@link failedHandshakes}; each of their legs is one of these requests.
   */
  callerRequests: number;
  /**
   * 401s delivered to those requests: a challenge to the caller's own credentials, whether it asks
   * for the next leg of its handshake (an NTLM CHALLENGE) or refuses them — the agent does not read
   * the callers' tokens to tell which.
   */
  callerChallenges: number;
  /** Origins the agent holds connections and memory for now (idle ones are dropped past 64). */
  origins: number;
}

/**
 * One session (an HTTP/2 session or an HTTP/1.1 connection) the agent holds, as
 * {@link MultilegAgent.sessions} found it. For metrics and tests of how requests spread: `held`
 * moves by the request, so read `peakHeld` for "at most so many at once".
 */
export interface SessionSnapshot {
  readonly origin: string;
  /** The id that {@link HandshakeReport.sessionId} and the `multileg:leg` events name. */
  readonly sessionId: string;
  /**
   * `h2` or `http/1.1` once its connection is up; undefined (absent from its JSON) until then: while
   * its connection is still opening, and on a session whose CONNECT tunnel through the proxy failed
   * (a refused or unreachable proxy) — it stays listed, and its next request tries the tunnel again.
   */
  readonly protocol: 'h2' | 'http/1.1' | undefined;
  /**
   * Requests it holds now: given to this session and not yet ended, whether waiting for its
   * handshake or a handshake slot or on the wire (not those still waiting for a session).
   */
  readonly held: number;
  /** The most requests it has held at once since it opened. */
  readonly peakHeld: number;
}

/**
 * An undici Dispatcher that authenticates with NTLM, Negotiate/Kerberos, Digest and Basic over
 * HTTP/2 and HTTP/1.1, implementing draft-montenegro-httpbis-multilegged-auth: requests queue on a
 * session while a handshake runs on it, the server's Auth-ID is echoed across legs, and
 * Persistent-Auth decides whether the session or each request is authenticated.
 *
 * Use it with `fetch(url, { dispatcher })`, `request(url, { dispatcher })` or
 * `setGlobalDispatcher(agent)`.
 *
 * Events: `'handshake'` with a {@link HandshakeReport} for every finished handshake (a proxy's
 * too, with `proxy: true`).
 */
export class MultilegAgent extends Dispatcher {
  readonly #options: ResolvedOptions;
  /** Replaced by {@link setCredentials}: pools and upgrades read it afresh for each handshake. */
  #mechanisms: MechanismSet;
  /**
   * The credentials the agent holds: the same again change nothing, another account's need a word
   * on the cookie jar (setCredentials); the refusal memory keys its records by them.
   */
  #credentials: Credentials | undefined;
  /** What the mechanisms were made from, to make them again with new credentials. */
  readonly #mechanismOptions: Pick<MultilegAgentOptions, 'negotiate' | 'allowBasicOverHttp' | 'mechanisms'>;
  readonly #transport: boolean;
  readonly #pools = new Map<string, OriginPool>();
  readonly #stats: Omit<MultilegStats, 'origins'> = {
    requests: 0,
    sessions: 0,
    handshakes: 0,
    legs: 0,
    failedHandshakes: 0,
    proxyHandshakes: 0,
    proxyLegs: 0,
    failedProxyHandshakes: 0,
    callerRequests: 0,
    callerChallenges: 0,
  };
  readonly #reports: HandshakeReport[] = [];
  /** fetch's cross-origin redirect hops, recognised from the 3xx responses we delivered (S5). */
  readonly #hops = new RedirectHops();
  /** Sees the responses to requests with their own Authorization: counts their 401s, then as {@link #hops}. */
  readonly #callerResponses: ResponseObserver = {
    noteResponse: (origin, path, status, headers, hop) => {
      if (status === 401) this.#stats.callerChallenges += 1;
      this.#hops.noteResponse(origin, path, status, headers, hop);
    },
  };
  /**
   * The handlers of dispatches taken for redirect hops, each with the last URL it was dispatched to:
   * an interceptor that dispatches a request again hands over the same handler (undici's retry
   * interceptor, its `dns` interceptor trying the other address family), and the hop, used up by
   * the first dispatch, must stay a hop (S5). The redirect interceptor's next hop comes with it too.
   */
  #hopHandlers: WeakMap<Dispatcher.DispatchHandler, string> | undefined;
  /** Upgrades and CONNECT: one connection each, through the proxy, authenticated on it. */
  #upgrades: UpgradeDispatcher | undefined;
  /** undici's adapter for handlers of its first API, around this agent (see dispatch). */
  #legacy: Dispatcher1Wrapper | undefined;
  #closed = false;
  /** Whose logins the cookie jar may hold: the ambient identity first proved since it was given (S6). */
  #jarHolder: Holder | undefined;
  #jarCheckedUntil = 0;
  /** The last origin string dispatched and its normalised form (most dispatches repeat it). */
  #lastOrigin: [string | URL | undefined, string] = [undefined, ''];
  /**
   * The proof of the credentials of each name whose addresses have pools (undici's dns interceptor),
   * shared by them (R4); dropped with the last pool that holds it.
   */
  readonly #namedProofs = new Map<string, CredentialProof>();
  /** Sessions of pools dropped while idle, so `stats()` still counts them. */
  #droppedSessions = 0;
  /** Requests dispatched and not yet ended. */
  #running = 0;
  readonly #idleWaiters: Array<() => void> = [];

  /**
   * @throws {TrustRequiredError} when given a password (`credentials`), `negotiate.delegate`,
   * `negotiate.spn`, `negotiate.canonicalizeHost` or custom `mechanisms` without `trustedOrigins` (S1).
   * @throws {ConfigError} on an invalid option (a malformed `trustedOrigins` entry, a non-positive limit).
   */
  constructor(options: MultilegAgentOptions = {}) {
    super();
    if (options === null || typeof options !== 'object' || Array.isArray(options))
      throw new ConfigError(
        `MultilegAgent takes an options object, e.g. new MultilegAgent({ trustedOrigins: ['https://intranet.example'] }) (got ${options === null ? 'null' : Array.isArray(options) ? 'an array' : typeof options})`,
      );
    checkOptionNames(options);
    // Absent is undefined or null; anything else given (an empty string from an unset variable) is checked.
    if (options.credentials != null) checkCredentials(options.credentials);
    // The proxy's too: an empty user name would reach Negotiate as the identity a ticket must match.
    if (typeof options.proxy === 'object' && options.proxy?.credentials != null)
      checkCredentials(options.proxy.credentials, 'proxy.credentials');
    if (options.trustedOrigins === undefined) {
      // Password-derived credentials (and delegated tickets) only go where the caller said (S1).
      if (options.credentials) throw new TrustRequiredError('an agent with a password (credentials)');
      if (options.negotiate && options.negotiate.delegate === true) throw new TrustRequiredError('negotiate.delegate');
      // Without a list the ambient ticket goes to any https origin named, which is safe only while
      // it is that origin's own (HTTP@its host): a ticket for a fixed SPN, or for the name a DNS
      // CNAME answer chose, would reach every such origin, which could relay it to that service
      // (task id: one taken so authenticated as alice there).
      const negotiate = options.negotiate || undefined;
      if (negotiate?.spn)
        throw new TrustRequiredError(
          `negotiate.spn (a ticket for ${JSON.stringify(negotiate.spn)}, which every https origin offering Negotiate would otherwise receive)`,
        );
      if (negotiate?.canonicalizeHost === true)
        throw new TrustRequiredError(
          "negotiate.canonicalizeHost (a ticket for the name a DNS CNAME answer chooses, which the origin's own DNS could point at any service)",
        );
      if (options.mechanisms?.length) throw new TrustRequiredError('an agent with custom mechanisms');
    }
    const certificate = options.clientCertificate;
    let selectCertificate: ClientCertificateSelector | undefined;
    let handshakeCertificate: ClientCertificate | undefined;
    if (typeof certificate === 'function') selectCertificate = certificate;
    else if (certificate !== undefined) {
      const usable = configuredCertificate(certificate);
      handshakeCertificate = usable;
      selectCertificate = () => usable;
    }
    checkSchemes('schemes', options.schemes, options.mechanisms ?? []);
    if (options.allowH2 !== undefined && typeof options.allowH2 !== 'boolean')
      throw new ConfigError(`allowH2 must be true or false, got ${JSON.stringify(options.allowH2)}`);
    const connect: unknown = options.connect;
    if (connect !== undefined && (connect === null || typeof connect !== 'object' || Array.isArray(connect)))
      throw new ConfigError(
        `connect must be an object of TLS options (got ${connect === null ? 'null' : typeof connect})`,
      );
    // The connector sets ALPN per lane: one given here would be overridden without a word.
    if (connect !== undefined && 'ALPNProtocols' in connect)
      throw new ConfigError(
        "connect.ALPNProtocols: the agent offers h2 and http/1.1 itself; for HTTP/1.1 only, pass allowH2: false (or allowH2: false in a request's dispatch options)",
      );
    // Every session takes these TLS options, anonymous ones and redirect hops included: a client
    // certificate here would go to every origin that asks, past trustedOrigins (S1, S5).
    const certificateOption =
      connect === undefined
        ? undefined
        : ((['cert', 'key', 'pfx'] as const).find((k) => k in connect) ??
          (secureContextCertificate(connect) ? 'secureContext' : undefined));
    if (certificateOption !== undefined)
      throw new ConfigError(
        `connect.${certificateOption}: TLS options in connect go to every origin, untrusted ones and redirect targets included; give the client certificate as clientCertificate: { cert, key } (PEM or DER; a .pfx converted with openssl pkcs12 -nodes), which only the agent's own connections to origins it may send credentials to present`,
        'connect',
      );
    if (options.cookies !== undefined) checkCookieStore(options.cookies);
    const connectTo = checkConnectTo(options.connectTo);
    let schemes: readonly string[] = options.schemes ?? DEFAULT_SCHEME_ORDER;
    // A configured certificate is an explicit choice: strongest unless `schemes` places Transport (T2).
    if (selectCertificate && !schemes.some((s) => s.toLowerCase() === 'transport')) schemes = ['Transport', ...schemes];
    // Presented in the TLS handshake only while it is the strongest choice: a server that maps
    // certificates to users would otherwise run the request as the certificate's identity where
    // the caller ranked another scheme first.
    if (schemes[0]?.toLowerCase() !== 'transport') handshakeCertificate = undefined;
    this.#options = {
      ...(selectCertificate ? { clientCertificate: selectCertificate } : {}),
      ...(typeof certificate === 'function' ? { askAcceptableIssuers: true } : {}),
      ...(handshakeCertificate ? { handshakeCertificate } : {}),
      trust: new TrustPolicy(options.trustedOrigins),
      schemes,
      mechanisms: options.mechanisms ?? [],
      connect: options.connect ?? {},
      http1Only: options.allowH2 === false,
      limits: resolveLimits(options.limits),
      maxHttp1Connections: positive('maxHttp1Connections', options.maxHttp1Connections ?? 16, true),
      maxConcurrentStreams: positive('maxConcurrentStreams', options.maxConcurrentStreams ?? 100, true),
      keepAliveTimeout: positive('keepAliveTimeout', options.keepAliveTimeout ?? 60_000, false, MAX_TIMER_MS),
      headersTimeout: positive('headersTimeout', options.headersTimeout ?? 300_000, false, MAX_TIMER_MS),
      bodyTimeout: positive('bodyTimeout', options.bodyTimeout ?? 300_000, false, MAX_TIMER_MS),
      http1MemoryTtl: positive('http1MemoryTtl', options.http1MemoryTtl ?? 3_600_000),
      proxy: new ProxyResolver(options.proxy, process.env, options.negotiate, connectTo, options.refusalMemory),
      ...(connectTo ? { connectTo } : {}),
      ...(options.cookies ? { cookies: options.cookies } : {}),
      deliver401: options.deliver401 === true,
      markPrivate: options.markPrivate !== false,
      ...(options.refusalMemory ? { refusalMemory: options.refusalMemory } : {}),
    };
    // S1: without trustedOrigins no origin may have a password, so none may have the system's own
    // NTLM (SSPI, gss-ntlmssp) that its SPNEGO may choose in Kerberos' place either (task id).
    const negotiate =
      options.trustedOrigins === undefined && options.negotiate !== false
        ? { ...options.negotiate, passwordAllowed: () => false }
        : options.negotiate;
    this.#mechanismOptions = {
      ...(negotiate !== undefined ? { negotiate } : {}),
      ...(options.allowBasicOverHttp !== undefined ? { allowBasicOverHttp: options.allowBasicOverHttp } : {}),
      mechanisms: this.#options.mechanisms,
    };
    this.#transport = selectCertificate !== undefined;
    this.#mechanisms = this.#mechanismSet(options.credentials);
    this.#credentials = options.credentials ? { ...options.credentials } : undefined;
  }

  /**
   * The agent's mechanisms for `credentials`: its defaults, then its own `mechanisms` by scheme. They
   * get a copy: the caller's object changing later does not change what is sent.
   */
  #mechanismSet(credentials: MultilegAgentOptions['credentials']): MechanismSet {
    const o = this.#mechanismOptions;
    const mechanisms = [
      ...defaultMechanisms({ ...o, ...(credentials ? { credentials: { ...credentials } } : {}) }),
      ...(o.mechanisms ?? []),
    ];
    return new MechanismSet(mechanisms, this.#options.schemes, this.#transport);
  }

  /**
   * Replaces the agent's `credentials` on a live agent (a password rotated in a vault), without
   * cutting a request. Handshakes started from now on use the new ones, and nothing of the old ones
   * is sent again (not a Basic or Digest answer sent unasked, nor a cached Digest HA1 or NTLM key).
   * Every session authenticated (or authenticating) with the old ones retires, even when only the
   * password changed: the requests already on the wire finish there, those waiting for it move to
   * new sessions, which authenticate with the new credentials (S6: no request sent after this call
   * runs as the old identity). What was learnt of the old ones goes: a refusal of the old password
   * does not keep the new one back, and the new ones are tried one handshake at a time until one
   * succeeds, as for a new agent (R4). The credentials the agent already holds (the same user name,
   * password, domain and workstation; a vault poller re-applying an unchanged value) change nothing:
   * sessions stay, and a refusal of that password still holds it back (R4) until its wait ends or
   * `options.forgetRefusals` lifts it (the same jar given again changes nothing either).
   *
   * The cookie jar (`cookies`) holds what servers gave the old identity — a login session cookie runs
   * requests as its owner whatever credentials they would carry. A new password for the same account
   * (the same user name, as NTLM splits it from its domain) keeps the jar; for another account say which jar its
   * requests use: `{ cookies: newJar }`, `{ cookies: null }` for none, or the same jar to keep it
   * knowingly. Without that word the call throws and changes nothing (S6, fail safe).
   *
   * @throws {ConfigError} when `credentials` is not `{ username, password }` with a non-empty user name
   * and a string password (as the constructor), when `options.cookies` is not a cookie store, or when
   * the agent has a cookie jar, the credentials name another account and `options.cookies` is not given.
   * @throws {TrustRequiredError} on an agent made without `trustedOrigins` (S1): a password only goes
   * where the caller said.
   * @throws {AgentClosedError} after `close()` or `destroy()`.
   */
  setCredentials(credentials: Credentials, options: SetCredentialsOptions = {}): void {
    if (this.#closed) throw new AgentClosedError();
    checkCredentials(credentials);
    if (!this.#options.trust.listed) throw new TrustRequiredError('an agent with a password (credentials)');
    const account = parseNtlmUser(credentials);
    const held = this.#credentials && parseNtlmUser(this.#credentials);
    const jar = options.cookies;
    if (jar != null) checkCookieStore(jar);
    if (jar === undefined && this.#options.cookies && !sameAccount(held, account)) {
      throw new ConfigError(
        "setCredentials: the agent's cookie jar holds what servers gave the previous identity (a login session cookie would run the new account's requests as it); say which jar the new account uses: setCredentials(credentials, { cookies: newJar }), { cookies: null } for none, or the same jar to keep it knowingly",
        'cookies',
      );
    }
    // The same credentials again (a vault poller re-applying an unchanged password): nothing to do.
    // Retiring sessions and forgetting a refusal would send a refused password again on every
    // call (R4: account lockout, trial u14).
    if (
      (jar === undefined || (jar ?? undefined) === this.#options.cookies) &&
      sameCredentials(this.#credentials, credentials)
    ) {
      let lifted = 0;
      if (options.forgetRefusals) for (const pool of this.#pools.values()) lifted += +pool.memory.proof.liftRefusal();
      log.agent('credentials unchanged: sessions stay; %d refusal(s) lifted', lifted);
      return;
    }
    if (jar !== undefined) this.#options.cookies = jar ?? undefined;
    // A jar named (or kept) for these credentials starts with no ambient identity of its own.
    if (jar !== undefined || !sameAccount(held, account)) this.#jarHolder = undefined;
    this.#mechanisms = this.#mechanismSet(credentials);
    this.#credentials = { ...credentials };
    let retired = 0;
    for (const pool of this.#pools.values())
      retired += pool.credentialsChanged('origin', this.#mechanisms, jar !== undefined);
    log.agent('credentials replaced: %d session(s) retire', retired);
  }

  /**
   * Replaces `proxy.credentials` (or a proxy URL's user:password) on a live agent, as
   * {@link setCredentials} does the origin's: connections, CONNECT tunnels and forwarding-proxy
   * connections made with the old ones retire once their requests on the wire have finished, new
   * handshakes with the proxy use the new ones, and the proxy's refusal of the old ones does not
   * keep the new ones back (R4, S6). The credentials a proxy already holds change nothing there: a
   * refusal of them still holds them back, unless `options.forgetRefusals` (as for setCredentials).
   *
   * With two different proxies from the environment (`http_proxy`, `https_proxy`) the new ones go to
   * the proxy holding the same user name, else to the only one holding credentials: a password
   * rotated for one is not the other's (S1). Both holding that user name with different passwords
   * (two accounts of one name) cannot be told apart: the call throws.
   *
   * @throws {ConfigError} when `credentials` is not `{ username, password }` (as the constructor's
   * `proxy.credentials`), the agent has no proxy (none given, `proxy: false`, and none in the
   * environment), or it has two different ones and which one they are for cannot be told.
   * @throws {AgentClosedError} after `close()` or `destroy()`.
   */
  setProxyCredentials(credentials: Credentials, options: Pick<SetCredentialsOptions, 'forgetRefusals'> = {}): void {
    if (this.#closed) throw new AgentClosedError();
    checkCredentials(credentials, 'proxy.credentials');
    if (!this.#options.proxy.configured)
      throw new ConfigError(
        'setProxyCredentials: the agent has no proxy (none given in options.proxy, nor HTTPS_PROXY/HTTP_PROXY in the environment); give options.proxy when making the agent',
        'proxy.credentials',
      );
    // The same credentials again change nothing (as setCredentials; R4).
    if (!this.#options.proxy.setCredentials(credentials, options.forgetRefusals === true)) {
      log.agent('proxy credentials unchanged: connections and what was learnt of them stay');
      return;
    }
    let retired = 0;
    for (const pool of this.#pools.values()) retired += pool.credentialsChanged('proxy');
    log.agent('proxy credentials replaced: %d session(s) retire', retired);
  }

  /** A snapshot of the counters. */
  stats(): MultilegStats {
    let sessions = this.#droppedSessions;
    for (const pool of this.#pools.values()) sessions += pool.sessionsCreated;
    return { ...this.#stats, sessions, origins: this.#pools.size };
  }

  /**
   * Calls `listener` with every finished handshake (also emitted as the `'handshake'` event, which
   * undici's Dispatcher typings do not know): with origins, and with the proxy (`proxy: true`, H5)
   * on the agent's sessions' connections — not one whose first leg never reached the origin (no
   * connection: refused, TLS failed), which tried no credentials. Returns a function that unsubscribes.
   */
  onHandshake(listener: (report: HandshakeReport) => void): () => void {
    const emitter = this as unknown as NodeJS.EventEmitter;
    emitter.on('handshake', listener);
    return () => emitter.off('handshake', listener);
  }

  /**
   * The sessions open now, and those closed but still finishing a response, per origin in the order
   * they opened. Upgrades and CONNECT run on connections of their own and are not listed.
   */
  sessions(): SessionSnapshot[] {
    const out: SessionSnapshot[] = [];
    for (const pool of this.#pools.values())
      for (const s of pool.sessions)
        out.push({
          origin: pool.origin,
          sessionId: s.id,
          protocol: s.protocol,
          held: s.inflight,
          peakHeld: s.peakInflight,
        });
    return out;
  }

  /**
   * The last {@link MAX_REPORTS} finished handshakes, oldest first, the proxy's among them
   * (`proxy: true`; `stats()` counts them all).
   */
  handshakes(): readonly HandshakeReport[] {
    return this.#reports.slice();
  }

  override dispatch(given: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    // Iterable headers are read once, here, and what was read is what every send carries.
    const opts = iterableHeaders(given.headers) ? { ...given, headers: normalizeRequestHeaders(given.headers) } : given;
    if (isLegacyHandler(handler)) {
      // Node's built-in fetch (its own, older undici) given this agent as `dispatcher` passes a
      // handler of undici's first API (onHeaders, onData, onComplete), which nothing here calls:
      // undici's adapter wraps it and keeps it on HTTP/1.1, as for undici's global dispatcher (undici#4989).
      this.#legacy ??= new Dispatcher1Wrapper(this);
      return this.#legacy.dispatch(opts, handler);
    }
    try {
      if (this.#closed) throw new AgentClosedError();
      if (!opts.origin)
        throw new MultilegError('MULTILEG_INVALID_REQUEST', 'dispatch needs opts.origin (e.g. https://host:port)');
      const origin = this.#origin(opts.origin);
      if (opts.upgrade || opts.method === 'CONNECT') {
        // A jar whose principal left the ccache is dropped before an upgrade reads it too (S6, review r55).
        this.#checkJarHolder();
        const headers = normalizeRequestHeaders(opts.headers);
        const agent = this;
        this.#upgrades ??= new UpgradeDispatcher({
          ...this.#options,
          // Read for each upgrade: setCredentials replaces them (and the jar, for another account).
          get mechanisms() {
            return agent.#mechanisms;
          },
          get cookies() {
            return agent.#options.cookies;
          },
          // One proof of the credentials per origin, for its requests and upgrades alike (R4).
          proofOf: (o, site) => this.#pool(o, site).memory.proof,
          // And what it learnt of the origin's schemes (a silent KDC, a scheme that cannot run: R4).
          schemesOf: (o, site) => this.#pool(o, site).memory,
          // And its client certificate (T3): the one its requests present, the selector's choice kept, its probe.
          transportOf: (o, site) => this.#pool(o, site),
          certificateAt: (o, site) => this.#pools.get(poolKey(o, site))?.memory.clientCertificate,
          succeededAs: this.#succeededAs,
        });
        const named = namedOrigin(origin, headers);
        // (An upgrade never goes through a forwarding proxy, so its Host is always what is sent.)
        const elsewhereWhy = elsewhereBy(origin, headers, opts, false);
        const elsewhere = elsewhereWhy !== undefined;
        // What trust is decided for, whose cookies the jar gives and whose pool's proof, schemes and
        // certificate the upgrade shares (behind undici's dns interceptor the name, not the address:
        // S1/S6; its proof is the name's, shared with its other addresses and its requests: R4).
        const site = elsewhere ? origin : named;
        // Upgrades always tunnel through a proxy that applies.
        refuseTunnelledProxyAuthorization(origin, headers, this.#options.proxy.route(origin, site), 'any');
        const grant = this.#grant(origin, site, this.#crossOriginHop(origin, named, opts.path, handler));
        // The agent's credentials (a 401's answer, its certificate) only for its own identity (S1, S6);
        // its cookie jar not for a caller's own credentials either, nor for CONNECT (no cookies there).
        const identity = identityOf(headers, grant.allowed, elsewhere, this.#mechanisms);
        const jar = opts.method !== 'CONNECT' && (identity === 'agent' || identity === 'anonymous');
        // Why the agent's credentials are withheld, as for a request: its 401 is published so, and over
        // cleartext (http:, and so ws:, which undici's WebSocket sends as http:) refused with a typed error (S4).
        const withheld = withheldWhy(identity, grant, elsewhereWhy, headers);
        return this.#upgrades.dispatch(origin, opts, headers, handler, identity === 'agent', jar, withheld, site);
      }
      const headers = normalizeRequestHeaders(opts.headers);
      // (A Host header names the origin only where an interceptor may have put an address in it.)
      const named = mayBeAddress(origin) ? namedOrigin(origin, headers) : origin;
      const own = 'authorization' in headers;
      const sink = new UserSink(
        handler,
        own ? this.#callerResponses : this.#hops,
        named,
        opts.path,
        this.#options.markPrivate,
      );
      sink.begin();
      if (sink.aborted) return true;
      this.#running += 1;
      try {
        this.#start(origin, named, headers, opts, sink, handler);
      } catch (err) {
        // Only a synchronous failure before the pool took the request lands here.
        sink.fail(err as Error);
        this.#finished();
      }
      return true;
    } catch (err) {
      handler.onResponseError?.(null as unknown as Dispatcher.DispatchController, err as Error);
      return false;
    }
  }

  /**
   * undici's `compose`, with two differences. A handler of undici's first API (Node's built-in
   * `fetch`, its own older undici) is wrapped with undici's `Dispatcher1Wrapper` before the first
   * interceptor, not after the last: undici 8's interceptors call only the second API's methods, so
   * fetch's promise never settled (undici's own Agent composed so hangs too); as undici does for
   * such handlers, their requests go over HTTP/1.1 (undici#4989). Handlers of the second API go
   * through untouched. And the agent's own methods (`close`, `destroy`, `stats`, `setCredentials`,
   * …) called on the composed dispatcher run on the agent. Its `compose` does the same again.
   */
  override compose(dispatchers: Dispatcher.DispatcherComposeInterceptor[]): ComposedMultilegAgent;
  override compose(...dispatchers: Dispatcher.DispatcherComposeInterceptor[]): ComposedMultilegAgent;
  override compose(...args: unknown[]): ComposedMultilegAgent {
    return legacyFirst(this, this, args);
  }

  /** The normalised origin; the same string as the last call's is not parsed again (hot path, R6). */
  #origin(raw: string | URL): string {
    if (raw === this.#lastOrigin[0]) return this.#lastOrigin[1];
    const origin = normalizeOrigin(raw);
    if (typeof raw === 'string') this.#lastOrigin = [raw, origin];
    return origin;
  }

  /**
   * Whether the agent's credentials may go with a request dispatched to `origin` whose Host names
   * `named` (S1; `named` is `origin` where the Host is not what goes: another origin's, which goes
   * without credentials anyway, or a forwarding proxy's request, which carries the origin's own).
   * Behind undici's `dns` interceptor (an address in `origin`, the name in Host: see hostElsewhere)
   * the name decides over https — the caller asked for it, TLS checks it, and a shared front end
   * serves that Host, so a trusted address alone would pass the password to whichever site a copied
   * Host names (review r48). Over http nothing ties the address to the name: both must be trusted
   * (review r50).
   */
  #grant(origin: string, named: string, crossOriginHop: boolean): Grant {
    const trust = this.#options.trust;
    if (named === origin || origin.startsWith('https:')) return trust.decide(named, crossOriginHop);
    const dialled = trust.decide(origin, crossOriginHop);
    return dialled.allowed ? trust.decide(named, crossOriginHop) : dialled;
  }

  /**
   * A redirect hop from another origin (S5): undici's redirect interceptor hands us its handler,
   * whose `history` names where the request started; fetch follows redirects itself, and the hop
   * is recognised from the 3xx we delivered (RedirectHops). Both name origins as the caller and the
   * 3xx did: `named` (see namedOrigin), not an address an interceptor put in `origin`.
   */
  #crossOriginHop(origin: string, named: string, path: string, handler: Dispatcher.DispatchHandler): boolean {
    const last = this.#hopHandlers?.get(handler);
    if (last !== undefined) {
      // The redirect interceptor's next hop of a marked chain: a hop either way, but the one noted
      // for it (a hop's same-origin redirect) is used up, or it would make the caller's own call to
      // that URL a hop (a 401). The same URL again is a dispatch again: it uses up nothing, which
      // would be another chain's hop to that URL.
      if (last !== named + path) {
        this.#hops.consume(named, path);
        this.#hopHandlers!.set(handler, named + path);
      }
      return true;
    }
    const first = (handler as { history?: readonly URL[] }).history?.[0];
    const started = first === undefined ? undefined : normalizeOrigin(first);
    const hop = this.#hops.consume(named, path) || (started !== undefined && started !== origin && started !== named);
    if (hop) {
      this.#hopHandlers ??= new WeakMap();
      this.#hopHandlers.set(handler, named + path);
    }
    return hop;
  }

  /** Builds the request's Job and starts it on its origin's pool (after reading a body that must be read, C10). */
  #start(
    origin: string,
    named: string,
    headers: HeaderMap,
    opts: Dispatcher.DispatchOptions,
    sink: UserSink,
    handler: Dispatcher.DispatchHandler,
  ): void {
    this.#checkJarHolder();
    // Behind undici's dns interceptor (an address in `origin`, the name in Host: `named`) the
    // name's addresses share one proof of the credentials (R4: a wrong password went once per
    // address of a round-robin name).
    const pool = this.#pool(
      origin,
      named !== origin && elsewhereBy(origin, headers, opts, false) === undefined ? named : origin,
    );
    // Refused before anything is counted or a pending redirect hop is used up; by the route the
    // origin's connections take (fixed with its pool), not by NO_PROXY as it reads now.
    refuseTunnelledProxyAuthorization(origin, headers, pool.route, 'tunnel');
    this.#stats.requests += 1;
    if ('authorization' in headers) this.#stats.callerRequests += 1;
    const forwarded = pool.route?.kind === 'forward';
    // S6: a request never shares a connection with another identity's credentials.
    const elsewhere = elsewhereBy(origin, headers, opts, forwarded);
    // A hop's own redirects are hops too, same origin or not (S5: the chain stays marked).
    const hop = this.#crossOriginHop(origin, named, opts.path, handler);
    sink.hop = hop;
    // The origin the request is for, as the caller named it: what trust is decided for, and whose
    // cookies the jar gives (behind undici's dns interceptor the name, not the address: S1/S6).
    const site = elsewhere !== undefined || forwarded ? origin : named;
    const grant = this.#grant(origin, site, hop);
    const identity = identityOf(headers, grant.allowed, elsewhere !== undefined, this.#mechanisms);
    const withheld = withheldWhy(identity, grant, elsewhere, headers);
    const limit = this.#options.limits.maxReplayBodyBytes;
    // A stream bound for an authenticated session, or an origin that does not challenge, goes as it
    // comes; elsewhere it is read first, for the handshake's legs (C10).
    const prepared =
      readsFirst(opts.body) && pool.streamsNow(identity, http1Only(opts))
        ? new TeeBody(opts.body as AsyncIterable<unknown>, limit)
        : prepareBody(opts.body, limit);
    if (prepared instanceof Promise) {
      preparedBody(prepared, sink, this.#options.limits.queueTimeout).then(
        (body) => pool.run(newJob(origin, opts, headers, body, sink, identity, withheld, site)),
        (err: Error) => {
          sink.fail(err);
          this.#finished();
        },
      );
      return;
    }
    // (No closure for the common body, read or not: one less allocation per request.)
    pool.run(newJob(origin, opts, headers, prepared, sink, identity, withheld, site));
  }

  readonly #finished = (): void => {
    this.#running -= 1;
    if (this.#running === 0) for (const resolve of this.#idleWaiters.splice(0)) resolve();
  };

  /**
   * S6: a handshake succeeded as `held` (credentials from outside the agent: a Kerberos ticket). The
   * first one since the jar was given is whose logins the jar may hold; another account proved
   * after it is a switch (`kdestroy; kinit bob`): the jar goes.
   */
  readonly #succeededAs = (held: Holder): void => {
    if (!this.#options.cookies) return;
    if (this.#jarHolder === undefined) this.#jarHolder = held;
    else if (!sameIdentity(this.#jarHolder.identity, held.identity)) this.#dropJar('another principal was proved');
  };

  /**
   * S6: at most once every TICKET_RECHECK_MS, whether the credentials whose logins the jar may hold
   * are still there; once they are not (`kdestroy`, `kinit bob`), the jar goes — also where no
   * session of theirs is left to notice it, since the jar's login cookie alone runs requests as them.
   */
  #checkJarHolder(): void {
    const held = this.#jarHolder;
    if (held === undefined || !this.#options.cookies) return;
    const now = Date.now();
    if (now < this.#jarCheckedUntil) return;
    this.#jarCheckedUntil = now + TICKET_RECHECK_MS;
    if (askHolds(held.mechanism, held.identity) === false) this.#dropJar('its credentials left the ccache');
  }

  /**
   * The ambient identity changed under the agent: its cookie jar holds what servers gave the previous
   * one (a login session cookie would run requests as it), so requests go without a jar from now on,
   * as after `setCredentials(…, { cookies: null })`, until setCredentials names one; said once, as a
   * process warning (S6: never silently).
   */
  #dropJar(why: string): void {
    this.#options.cookies = undefined;
    this.#jarHolder = undefined;
    let retired = 0;
    for (const pool of this.#pools.values()) retired += pool.jarDropped();
    log.agent('ambient identity switched (%s): cookie jar no longer used, %d session(s) retire', why, retired);
    process.emitWarning(
      `the Kerberos identity the agent's requests ran as changed (kdestroy, kinit as another principal: ${why}); its cookie jar holds what servers gave the previous one, whose login cookie would run requests as it, so requests go without the jar from now on. Give the new identity a jar of its own: setCredentials(credentials, { cookies: newJar }), or a new agent`,
      { code: 'MULTILEG_COOKIES_DROPPED' },
    );
  }

  /** Resolves when no request is running. */
  #idle(): Promise<void> {
    if (this.#running === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /**
   * `origin`'s pool for `site`, made if need be. `site`: the origin the request names, a name when
   * `origin` holds an address undici's dns interceptor resolved it to: each name at an address has a
   * pool of its own (poolKey, S1), and a new one shares the proof of that name's credentials with
   * its other addresses (R4).
   */
  #pool(origin: string, site = origin): OriginPool {
    const key = poolKey(origin, site);
    let pool = this.#pools.get(key);
    if (!pool) {
      // A process that talks to many origins over time must not keep a pool for each forever.
      if (this.#pools.size >= POOL_SWEEP_THRESHOLD) {
        const upgrading = this.#upgrades?.runningOrigins();
        for (const [o, p] of this.#pools) {
          // Not one an upgrade still runs for: the origin's pool made anew would not share its proof (R4).
          if (!p.idle || upgrading?.has(o)) continue;
          // Nor one that remembers a refusal (R4): made anew, it would send the refused password at
          // once (with 64 other origins in use, once per sweep) and forget the wait's doubling.
          if (p.memory.proof.remembersRefusal && this.#pools.size < MAX_REMEMBERING_POOLS) continue;
          this.#droppedSessions += p.sessionsCreated;
          p.forget();
          this.#pools.delete(o);
        }
        if (this.#namedProofs.size > 0) {
          const used = new Set([...this.#pools.values()].map((p) => p.memory.proof));
          for (const [n, proof] of this.#namedProofs) if (!used.has(proof)) this.#namedProofs.delete(n);
        }
      }
      const name = site === origin ? undefined : site;
      // (A direct pool for a name made after its addresses' takes their proof too.)
      const shared =
        this.#namedProofs.get(site) ?? (name === undefined ? undefined : this.#pools.get(name)?.memory.proof);
      pool = new OriginPool(
        origin,
        this.#options,
        this.#mechanisms,
        (r) => this.#report(r),
        this.#finished,
        this.#succeededAs,
        // Read when asked: setCredentials replaces them (R4: a new password is not the refused one).
        () => this.#credentials,
        { name: site, proof: shared },
      );
      this.#pools.set(key, pool);
      if (name !== undefined) this.#namedProofs.set(name, pool.memory.proof);
    }
    return pool;
  }

  #report(r: HandshakeReport): void {
    const stats = this.#stats;
    if (r.proxy) {
      stats.proxyHandshakes += 1;
      stats.proxyLegs += r.legs;
      if (r.outcome === 'failed') stats.failedProxyHandshakes += 1;
    } else {
      stats.handshakes += 1;
      stats.legs += r.legs;
      if (r.outcome === 'failed') stats.failedHandshakes += 1;
    }
    this.#reports.push(r);
    // Per-request mode runs a handshake per request: keep a window, not the whole history. Moved
    // one report at a time by shift(), which V8 does by moving the array's start: splice(0, n)
    // copied the whole window, ~6 µs a handshake once an agent had made 1,000.
    while (this.#reports.length > MAX_REPORTS) this.#reports.shift();
    log.agent(
      '%s %s %s %s legs=%d outcome=%s auth-id=%s',
      r.proxy ? 'proxy handshake' : 'handshake',
      r.origin,
      r.sessionId,
      r.scheme,
      r.legs,
      r.outcome,
      r.authIdCarried,
    );
    publishHandshake(r);
    try {
      (this as unknown as NodeJS.EventEmitter).emit('handshake', r);
    } catch (err) {
      // A listener's bug is not the request's failure (nor the channel's subscribers'): it is
      // reported as a process warning, which Node prints, and the request goes on.
      process.emitWarning(`a MultilegAgent 'handshake' listener threw: ${(err as Error)?.message ?? String(err)}`, {
        code: 'MULTILEG_LISTENER_THREW',
      });
    }
  }

  /**
   * Takes no new requests and resolves once those it has have ended, their responses read to the end
   * (undici's close). What undici still holds on a connection once none of them is on it — a request
   * given up before an HTTP/2 server gave it a stream, which undici keeps until its headersTimeout —
   * is not waited for: that connection is destroyed (R1).
   */
  override close(): Promise<void>;
  override close(callback: () => void): void;
  override close(callback?: () => void): Promise<void> | void {
    this.#closed = true;
    const done = (async () => {
      await this.#idle();
      await Promise.all([...this.#pools.values()].map((p) => p.close()));
      await this.#upgrades?.close();
    })();
    if (callback) {
      done.then(callback, callback);
      return;
    }
    return done;
  }

  override destroy(): Promise<void>;
  override destroy(err: Error | null): Promise<void>;
  override destroy(callback: () => void): void;
  override destroy(err: Error | null, callback: () => void): void;
  override destroy(errOrCb?: Error | null | (() => void), callback?: () => void): Promise<void> | void {
    const cb = typeof errOrCb === 'function' ? errOrCb : callback;
    const err = (typeof errOrCb === 'function' ? null : errOrCb) ?? new AgentClosedError();
    this.#closed = true;
    const done = (async () => {
      this.#options.proxy.end(err);
      await Promise.all([...this.#pools.values()].map((p) => p.destroy(err)));
      await this.#upgrades?.destroy(err);
    })();
    if (cb) {
      done.then(cb, cb);
      return;
    }
    return done;
  }
}

/**
 * What {@link MultilegAgent.compose} returns: undici's composed dispatcher, on which the agent's own
 * methods (`stats()`, `setCredentials()`, …) run on the agent. Typed so that a caller of
 * `agent.compose(...).stats()` needs no cast (undici's type has none of them).
 */
export interface ComposedMultilegAgent extends Dispatcher.ComposedDispatcher, Omit<MultilegAgent, keyof Dispatcher> {
  compose(dispatchers: Dispatcher.DispatcherComposeInterceptor[]): ComposedMultilegAgent;
  compose(...dispatchers: Dispatcher.DispatcherComposeInterceptor[]): ComposedMultilegAgent;
}

/** The agent's own methods: on a composed dispatcher they run on the agent (they read its private state). */
const AGENT_METHODS: ReadonlySet<PropertyKey> = new Set(
  Object.getOwnPropertyNames(MultilegAgent.prototype).filter(
    (k) => !['constructor', 'dispatch', 'compose'].includes(k),
  ),
);

/**
 * undici's `compose` of `interceptors` on `base` (the agent, or a dispatcher composed from it), as
 * {@link MultilegAgent.compose} says: a handler of undici's first API is wrapped before the first
 * interceptor; the agent's methods run on `agent`; `compose` again composes the same way.
 */
function legacyFirst(agent: MultilegAgent, base: Dispatcher, interceptors: unknown[]): ComposedMultilegAgent {
  const chained = (Dispatcher.prototype.compose as (...a: unknown[]) => Dispatcher.ComposedDispatcher).apply(
    base,
    interceptors,
  );
  // undici's composed dispatch: a closure over the interceptors that does not read `this`.
  const inner = chained.dispatch;
  let legacy: Dispatcher1Wrapper | undefined;
  const dispatch = (opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean => {
    if (!isLegacyHandler(handler)) return inner(opts, handler);
    legacy ??= new Dispatcher1Wrapper(chained);
    return legacy.dispatch(opts, handler);
  };
  const bound = new Map<PropertyKey, unknown>();
  const composed: Dispatcher.ComposedDispatcher = new Proxy(chained, {
    get(target, key) {
      if (key === 'dispatch') return dispatch;
      if (key === 'compose') return compose;
      const value: unknown = Reflect.get(target, key);
      if (typeof value !== 'function' || !AGENT_METHODS.has(key)) return value;
      let method = bound.get(key);
      if (method === undefined) {
        method = value.bind(agent);
        bound.set(key, method);
      }
      return method;
    },
  });
  const compose = (...more: unknown[]): ComposedMultilegAgent => legacyFirst(agent, composed, more);
  // The proxy answers the agent's methods from the agent (AGENT_METHODS), and compose as above.
  return composed as ComposedMultilegAgent;
}

/**
 * A caller's own Proxy-Authorization on a request that goes through a CONNECT tunnel (`route`)
 * would reach the origin inside it, not the proxy (S2): refused before anything is sent. (Through
 * a forwarding proxy it goes to the proxy, as meant; `routes: 'any'` refuses it there too.)
 */
function refuseTunnelledProxyAuthorization(
  origin: string,
  headers: HeaderMap,
  route: ProxyRoute | undefined,
  routes: 'tunnel' | 'any',
): void {
  if (!('proxy-authorization' in headers)) return;
  if (route && (routes === 'any' || route.kind === 'tunnel'))
    throw new ProxyAuthorizationHeaderError(origin, route.proxy.origin);
}

/**
 * Whether `connect.secureContext` may hold a certificate of its own (made with cert/key/pfx): it would
 * go to every origin as `connect.cert` would. One made with CAs only (its usual use) holds none. Node's
 * native context answers `getCertificate()`; one that cannot be asked counts as holding one (fail safe).
 */
function secureContextCertificate(connect: object): boolean {
  if (!('secureContext' in connect) || connect.secureContext === undefined) return false;
  const context = (connect.secureContext as { context?: { getCertificate?: () => unknown } } | null)?.context;
  return typeof context?.getCertificate !== 'function' || context.getCertificate() != null;
}

/**
 * Why the request goes to another authority than `origin`, if it does (S1, S6): an absolute-form
 * request target naming another (see targetElsewhere; a forwarding proxy's too, which would take
 * it as the URL to fetch), or the caller's Host header or TLS `servername` naming another (see
 * hostElsewhere, servernameElsewhere; not through a forwarding proxy, which is sent the origin's own
 * and carries no TLS of the origin's).
 */
function elsewhereBy(
  origin: string,
  headers: HeaderMap,
  opts: Dispatcher.DispatchOptions,
  forwarded: boolean,
): 'request-target' | 'host-header' | 'servername' | undefined {
  if (typeof opts.path === 'string' && targetElsewhere(origin, opts.path)) return 'request-target';
  if (forwarded) return undefined;
  if (hostElsewhere(origin, headers, opts)) return 'host-header';
  return servernameElsewhere(origin, headers, opts) ? 'servername' : undefined;
}

/**
 * Why the agent's credentials are withheld from a request its identity leaves `anonymous` or sends
 * `elsewhere` (undefined: not withheld, or the caller's own Authorization): its 401 is published
 * so, and over cleartext refused with a typed error (S4).
 */
function withheldWhy(
  identity: Identity,
  grant: Grant,
  elsewhere: WithheldReason | undefined,
  headers: HeaderMap,
): WithheldReason | undefined {
  if (identity === 'anonymous' && !grant.allowed) return grant.reason;
  return elsewhere !== undefined && !('authorization' in headers) ? elsewhere : undefined;
}

/**
 * Whose credentials a request carries (S6): its own `Authorization` and/or `Proxy-Authorization`
 * (each combination a lane of its own; an `Authorization` alone by whether `mechanisms` say its
 * scheme may authenticate the connection); else none of the agent's where its own Host header sends
 * it `elsewhere` (see hostElsewhere); else the agent's where the trust policy `allowed` them, else
 * none.
 */
function identityOf(headers: HeaderMap, allowed: boolean, elsewhere: boolean, mechanisms: MechanismSet): Identity {
  const own = 'authorization' in headers;
  const ownProxy = 'proxy-authorization' in headers;
  // A scheme that may authenticate the connection (a gateway relaying a browser's NTLM) gets
  // sessions apart from per-request ones (a Bearer the server ignores there would run as that user).
  if (own)
    return ownProxy ? 'caller-both' : mechanisms.bindsConnection(headers.authorization) ? 'caller-bound' : 'caller';
  // So at a forwarding proxy (NTLM's login there authenticates the proxy connection, review r74).
  if (ownProxy)
    return mechanisms.bindsConnection(headers['proxy-authorization']) ? 'caller-proxy-bound' : 'caller-proxy';
  if (elsewhere) return 'elsewhere';
  return allowed ? 'agent' : 'anonymous';
}
