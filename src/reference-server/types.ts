/**
 * Types of the reference server: the server half of draft-montenegro-httpbis-multilegged-auth,
 * used as the test peer for everything no public server implements.
 */

/**
 * How the server scopes a successful authentication.
 * - `session`: the h2 session / HTTP/1.1 connection is authenticated; the final 200 carries
 *   `Persistent-Auth: true` (D§3 step 5).
 * - `none`: the session is authenticated, but no `Persistent-Auth` is sent (the client must infer
 *   it for NTLM, C5).
 * - `per-request`: only the request that completed the handshake is authenticated; the final 200
 *   carries `Persistent-Auth: false` (IIS style) or nothing (see `persistentAuthFalseHeader`).
 * - `iis`: like IIS/http.sys with Windows authentication: over HTTP/2 every unauthenticated request
 *   that needs auth is refused with `HTTP_1_1_REQUIRED` (H2); over HTTP/1.1 behaves like `session`.
 * - `legacy`: like Apache mod_auth_gssapi over h2: no Auth-ID, security contexts do not survive
 *   between streams (so multilegged schemes fail on h2); over HTTP/1.1 the context is bound to the
 *   connection and the connection is authenticated.
 */
export type ReferenceServerMode = 'session' | 'none' | 'per-request' | 'iis' | 'legacy';

/** Result of one acceptor step. */
export type AcceptorStep =
  | { readonly kind: 'challenge'; readonly token: Buffer }
  /** `token`: the acceptor's final token (Kerberos AP-REP), sent on the final 200 for mutual authentication. */
  | { readonly kind: 'accepted'; readonly user: string; readonly token?: Buffer }
  | { readonly kind: 'rejected'; readonly reason: string };

/** A server-side security context (one handshake). `NtlmAcceptor` satisfies it. */
export interface AcceptorLike {
  step(token: Buffer): AcceptorStep | Promise<AcceptorStep>;
}

/** What the server tells an acceptor factory about the handshake it is creating a context for. */
export interface AcceptorFactoryInfo {
  /** The scheme as offered by the server (`Negotiate`, `NTLM`). */
  readonly scheme: string;
  readonly users: Readonly<Record<string, string>>;
  readonly domain: string;
  /** Expected tls-server-end-point hash, when `requireChannelBinding` is on. */
  readonly channelBinding?: Buffer;
}

/** Switches for the faults the client tests need. All are read live, per request. */
export interface ReferenceServerFaults {
  /**
   * Right after sending a 401 leg that carries an Auth-ID, end the session: GOAWAY(NO_ERROR) on
   * h2, `Connection: close` on HTTP/1.1. The handshake is cut in the middle (C8).
   */
  goawayAfterChallenge?: boolean;
  /**
   * Hold responses this long (ms) so tests can observe what the client does meanwhile: a number
   * for every request, or a function choosing per request (e.g. only legs carrying Authorization).
   * A `?delay=ms` query parameter on a request also delays it (at most 60 s).
   */
  delayMs?: number | ((request: IncomingRequestInfo) => number);
  /**
   * A broken server (C3, D2§3.1): every challenge on a session carries this one Auth-ID, whatever
   * handshake it belongs to, so two handshakes running at once there are given the same; a leg
   * carrying it continues the session's oldest incomplete context. Each context is still destroyed
   * at the end of its handshake, so handshakes one after another each complete their own.
   */
  sharedAuthId?: string;
  /** Answer 421 when `:authority`/Host is not one of `authorities` (C9). */
  misdirectedForOtherHosts?: boolean;
  /** SETTINGS_MAX_CONCURRENT_STREAMS for h2 sessions (applied to new and live sessions). */
  maxConcurrentStreams?: number;
  /** After the final 200 of a successful handshake, close the session/connection (C8). */
  destroySessionAfterAuth?: boolean;
  /**
   * The acceptor's final token on the 200 (mutual authentication, M2): `corrupt` flips a byte in
   * its last part, `omit` leaves it out, as an impostor or a broken server would.
   */
  finalToken?: 'corrupt' | 'omit';
  /**
   * Digest's `Authentication-Info` on an accepted request (M3): `wrong` sends an `rspauth` with one
   * hex digit changed, as a server that does not know the password would.
   */
  rspauth?: 'wrong';
  /**
   * For the requests it returns true for (h2 only): GOAWAY(NO_ERROR) with a last-stream-id below
   * the request's stream, which is refused unprocessed (R5).
   */
  refuseWithGoaway?: (request: IncomingRequestInfo) => boolean;
  /** The error code of `refuseWithGoaway`'s GOAWAY. Default NO_ERROR; 0xd is HTTP_1_1_REQUIRED (H2). */
  refuseWithGoawayCode?: number;
  /**
   * Test hook for caches above a client (S6): headers added to each response, chosen by its status
   * and request (a `Cache-Control: max-age=60`, a `Last-Modified` as IIS sends on static files).
   * Undefined: none (the default).
   */
  responseHeaders?: (response: {
    readonly status: number;
    readonly request: IncomingRequestInfo;
  }) => Record<string, string> | undefined;
  /**
   * Test hook for clients that decode bodies (the command's `--compressed`): the Content-Encoding of
   * each response, chosen by its status and request. `gzip`, `deflate` and `br` compress the JSON
   * body so; `corrupt-gzip` labels it gzip and sends it as it is, which a client that decoded it
   * would fail on. Undefined: the body as it is, no Content-Encoding (the default).
   */
  contentEncoding?: (response: {
    readonly status: number;
    readonly request: IncomingRequestInfo;
  }) => 'gzip' | 'deflate' | 'br' | 'corrupt-gzip' | undefined;
  /**
   * Test hook for bodies past a client's bounds (limits.maxChallengeBodyBytes): this many spaces
   * after the JSON body of each response, chosen by its status and request (JSON.parse still reads
   * it). Undefined or 0: none (the default).
   */
  padBody?: (response: { readonly status: number; readonly request: IncomingRequestInfo }) => number | undefined;
}

/** Told on the `request` event (and to `faults.delayMs`) as soon as a request's headers arrive. */
export interface IncomingRequestInfo {
  readonly sessionId: string;
  readonly streamId?: number;
  readonly requestIndex: number;
  readonly protocol: 'h2' | 'http/1.1';
  readonly method: string;
  readonly path: string;
  /** Lower-cased request headers (h2 pseudo-headers included). */
  readonly headers: Readonly<Record<string, string | string[]>>;
}

/** Options of {@link startReferenceServer}. Every field is optional. */
export interface ReferenceServerOptions {
  /** Listening port on 127.0.0.1. Default 0 (any free port). */
  port?: number;
  /** Listening address. Default `127.0.0.1`. */
  host?: string;
  /** Default `session`. */
  mode?: ReferenceServerMode;
  /** Schemes offered in the bare 401, in this order. Default `['Negotiate', 'NTLM']`. */
  schemes?: string[];
  /**
   * Path prefixes with schemes of their own (the longest matching prefix wins; other paths have
   * `schemes`): protection spaces at one origin, as Apache's `<Location>`s, e.g.
   * `{ '/basic/': ['Basic'] }`. A session's authentication (NTLM, Negotiate) serves such a path
   * only when its schemes include NTLM or Negotiate. Default none.
   */
  pathSchemes?: Record<string, string[]>;
  /**
   * Accounts: `'DOMAIN\\user'` or `'user'` → password. Default alice/alicepw, bob/bobpw in EXAMPLE.
   * Read for each handshake: assigning `server.options.users` changes a password at run time (a
   * rotation on the domain controller).
   */
  users?: Record<string, string>;
  /** NTLM domain (target name). Default `EXAMPLE`. */
  domain?: string;
  /** Limit on incomplete security contexts per session (D§3.1). Default 8. */
  maxIncompleteContexts?: number;
  /** An incomplete context older than this is forgotten (treated as unknown). Default 120000 ms. */
  contextTimeoutMs?: number;
  /** In `per-request` mode, send `Persistent-Auth: false` on the final 200 (true) or nothing (false). Default true. */
  persistentAuthFalseHeader?: boolean;
  /**
   * Header name used for Persistent-Auth on the final 200. Default `Persistent-Auth`; the draft
   * also spells it `Persistent-auth` / `Persisted-auth` (C4).
   */
  persistentAuthHeaderName?: string;
  /** Value sent for a session-authenticating 200. Default `true` (the draft also allows empty). */
  persistentAuthValue?: string;
  /** In `iis` mode on h2: refuse with RST_STREAM (default) or GOAWAY, both `HTTP_1_1_REQUIRED`. */
  iisVia?: 'rst' | 'goaway';
  /** Keep the `exchanges` record (default true). Turn off for benchmarks; events still fire. */
  record?: boolean;
  /** Pass the tls-server-end-point hash of the server certificate to the acceptor to check. Default false. */
  requireChannelBinding?: boolean;
  /**
   * Authorities (`host:port`) this server considers its own for `misdirectedForOtherHosts`.
   * Default `['localhost:PORT']`.
   */
  authorities?: string[];
  /**
   * `offer`: request a TLS client certificate (without requiring one), offer
   * `Transport mode="tls-client-certificate"` in every bare 401 (T3), accept a certificate issued by
   * the test CA (user `cert:<CN>`) and answer 403 to any other (T4). Fixed at start. Default `off`.
   */
  clientCertificate?: 'off' | 'offer';
  /** Serve cleartext HTTP/1.1 (`http://`) instead of TLS with HTTP/2 and HTTP/1.1. Fixed at start. Default false. */
  cleartext?: boolean;
  /** Fault switches. */
  faults?: ReferenceServerFaults;
  /** Creates a security context per handshake. Default: the NTLM acceptor (serves NTLM and Negotiate). */
  acceptorFactory?: (info: AcceptorFactoryInfo) => AcceptorLike;
  /** Called with every recorded exchange. */
  onExchange?: (exchange: Exchange) => void;
}

/** The live, resolved options (mutable at runtime through `server.options`). */
export interface ResolvedReferenceServerOptions {
  mode: ReferenceServerMode;
  schemes: string[];
  pathSchemes: Record<string, string[]>;
  users: Record<string, string>;
  domain: string;
  maxIncompleteContexts: number;
  contextTimeoutMs: number;
  persistentAuthFalseHeader: boolean;
  persistentAuthHeaderName: string;
  persistentAuthValue: string;
  iisVia: 'rst' | 'goaway';
  record: boolean;
  requireChannelBinding: boolean;
  authorities: string[];
  clientCertificate: 'off' | 'offer';
  cleartext: boolean;
  faults: ReferenceServerFaults;
  acceptorFactory?: (info: AcceptorFactoryInfo) => AcceptorLike;
  onExchange?: (exchange: Exchange) => void;
}

/**
 * What the server did with a request.
 * - `unauthenticated`: 401 with bare challenges to a request without credentials;
 * - `challenge`: 401 carrying a mechanism token (a handshake leg in progress);
 * - `accepted`: the handshake completed; 200 (under `/status/NNN/…`: NNN, a 3xx with
 *   `Location: /auth/…`);
 * - `rejected`: credentials present but refused (bad token, wrong password, no context); bare 401;
 * - `denied`: Basic or Digest credentials accepted, but the path is under `/denied/` (an ACL that
 *   refuses the user, IIS's 401.3); bare 401;
 * - `refused`: no context created because of a limit (`refused` names it); bare 401;
 * - `anonymous`: a `/public/` path; 200 without auth;
 * - `session`: 200 because the session (or connection) is already authenticated;
 * - `rst` / `goaway`: refused with `HTTP_1_1_REQUIRED` (iis mode on h2), no response;
 * - `misdirected`: 421 for another authority.
 */
export type ExchangeOutcome =
  | 'unauthenticated'
  | 'challenge'
  | 'accepted'
  | 'rejected'
  | 'denied'
  | 'refused'
  | 'anonymous'
  | 'session'
  | 'rst'
  | 'goaway'
  | 'misdirected'
  | 'certificate'
  | 'forbidden';

/** One request/response pair as the server saw it on the wire. */
export interface Exchange {
  /** 1-based order of arrival over the whole server. */
  readonly seq: number;
  /** `s1`, `s2`, ...: one per h2 session or HTTP/1.1 connection. */
  readonly sessionId: string;
  /** h2 stream id (h2 only). */
  readonly streamId?: number;
  /** 1-based index of the request within its session/connection (both protocols). */
  readonly requestIndex: number;
  readonly protocol: 'h2' | 'http/1.1';
  readonly method: string;
  /** Request target as sent (path and query). */
  readonly path: string;
  /** `:authority` (h2) or Host (HTTP/1.1). */
  readonly authority: string;
  /** Request headers, lower-cased names; h2 pseudo-headers included. Secrets included: test server. */
  readonly requestHeaders: Readonly<Record<string, string | string[]>>;
  /** Response status; `null` when the stream was reset or the session sent GOAWAY instead. */
  readonly status: number | null;
  /** Response headers, lower-cased names. */
  readonly responseHeaders: Readonly<Record<string, string | string[]>>;
  readonly bodyLength: number;
  /** Hex SHA-256 of the request body as received. */
  readonly bodySha256: string;
  /** Auth-ID sent on the response, if any. */
  readonly authIdSent?: string;
  /** Auth-ID received on the request, if any. */
  readonly authIdReceived?: string;
  readonly outcome: ExchangeOutcome;
  /** Scheme of the Authorization header, as the server offers it (`NTLM`, `Negotiate`). */
  readonly scheme?: string;
  /** The user this request was served as (accepted/session). */
  readonly user?: string;
  /** Why credentials were rejected (acceptor reason, `malformed`, `no-context`, ...). */
  readonly reason?: string;
  /** Which limit refused to create a context. */
  readonly refused?: 'context-limit';
  /** The mode in force when the request was handled. */
  readonly mode: ReferenceServerMode;
}

/** The JSON body of every response the server writes. */
export interface ReferenceResponseBody {
  readonly user: string | null;
  readonly method: string;
  readonly path: string;
  readonly protocol: 'h2' | 'http/1.1';
  readonly sessionId: string;
  readonly bodyLength: number;
  readonly bodySha256: string;
  /** Present on non-200 answers. */
  readonly error?: string;
}

/** A snapshot of one session/connection. */
export interface SessionInfo {
  readonly id: string;
  readonly protocol: 'h2' | 'http/1.1';
  /** The authenticated user of the session, if any. */
  readonly user?: string;
  readonly open: boolean;
  readonly requests: number;
  /** Incomplete security contexts currently held for this session. */
  readonly incompleteContexts: number;
}

/** Counters over the server's lifetime (reset by `reset()`). */
export interface ReferenceServerStats {
  /** Sessions + connections opened. */
  readonly sessions: number;
  readonly h2Sessions: number;
  readonly h1Connections: number;
  /** Sessions + connections currently open. */
  readonly openSessions: number;
  readonly requests: number;
  /** Incomplete contexts created (handshakes started). */
  readonly contextsCreated: number;
}
