import type { ConnectionOptions } from 'node:tls';
import { Client, type Dispatcher } from 'undici';
import type { ConnectTo } from '../connect-to.ts';
import { jarCookie, tellJar, withJarCookie } from '../cookie-jar.ts';
import { publishLeg, tracingLegs } from '../diagnostics.ts';
import {
  BodyNotReplayableError,
  ConnectionClosedError,
  type ConnectionClosedOptions,
  CookieStoreError,
  isFramingError,
  MultilegError,
  type NoStream,
  StreamRefusedError,
} from '../errors.ts';
import { goawayCode, relocationReason } from '../handshake/handshake.ts';
import {
  type HeldResponse,
  LegHandler,
  type LegResult,
  type OpenResponse,
  type ResponseHeaders,
  replayHeld,
  streamResetCode,
  typedResetCode,
  type Verdict,
} from '../handshake/leg.ts';
import type { HeaderMap } from '../headers.ts';
import { log, logging } from '../log.ts';
import { carriesNoSecret } from '../mechanisms/no-secret.ts';
import { NOT_YET_CONNECTED } from '../mechanisms/types.ts';
import type { ClientCertificate, CookieStore, Limits } from '../options.ts';
import type { AdmittedHolder, ProxyHandshake } from '../proxy/auth.ts';
import { ProxyClosedError, ProxyProtocolError, ProxyResponseTimeoutError } from '../proxy/errors.ts';
import { ForwardProxy } from '../proxy/forward.ts';
import { authority, type ProxyRoute } from '../proxy/options.ts';
import { SessionAuthIds } from './auth-ids.ts';
import { certificateSubject } from './client-certificate.ts';
import { type ConnectionInfo, type SessionConnector, sessionConnector } from './connector.ts';
import type { CredentialProof } from './credential-proof.ts';
import { type Job, mayGoTwice, rerunWithNewCredentials } from './job.ts';
import { FRESH, type SessionEvent, type SessionState, transition } from './state.ts';
import { WaitQueue } from './wait-queue.ts';

/**
 * How many times an idempotent request goes again after servers closed kept-alive connections under
 * it unanswered ("Connection died, retrying a fresh connect": curl's CONN_MAX_RETRIES is 5). Each
 * needs a close on a connection that had answered before. 4: each resend is also a move to a new
 * connection, which the pool bounds at 4 (MAX_RELOCATIONS) with a RelocationLimitError that would
 * name neither the close nor the cause, so a fifth close ends in ConnectionClosedError.
 */
export const MAX_RESENDS_AFTER_CLOSE = 4;

/**
 * How long before the end of a server's `Keep-Alive: timeout=N` an idle HTTP/1.1 connection is no
 * longer reused, in ms (undici's `keepAliveTimeoutThreshold`). undici's 2 s closes the connection
 * after every response of a server whose timeout is 2 s or less (Apache tuned with
 * `KeepAliveTimeout 2`): an NTLM challenge's connection was gone before its AUTHENTICATE (H1), and
 * every handshake ended in RelocationLimitError. The next leg goes within milliseconds of its 401;
 * an idle close that still races a reuse is answered as any other (C8: sent again on a new one).
 */
export const KEEP_ALIVE_THRESHOLD_MS = 500;

/**
 * How many times a request whose HTTP/2 stream the origin refused (RST_STREAM REFUSED_STREAM, before
 * any response) moves to a new connection, after undici's own one retry on the same connection.
 * RFC 9113 §8.7 makes a refused request safe to send again on another connection, whatever its
 * method; clients bound it: Chromium retries twice, curl on up to 5 fresh connections, Go and
 * Firefox 6 times with a backoff, undici once on the same connection. 1: a second connection, which
 * a load balancer may give another server; so at most 4 streams over 2 connections per request (R4)
 * before StreamRefusedError, with no wait added (R1).
 */
export const MAX_MOVES_AFTER_REFUSAL = 1;

/** undici's GOAWAY/REFUSED_STREAM replay re-sends old headers on a new connection; we refuse it. */
export class StaleConnectionError extends MultilegError {
  constructor() {
    super(
      'MULTILEG_STALE_CONNECTION',
      'the connection this request was bound to has ended; it is retried on a new one',
    );
  }
}

/** The server ended the session with GOAWAY HTTP_1_1_REQUIRED and refused this request unprocessed (H2). */
export class Http1RequiredError extends MultilegError {
  constructor() {
    super('MULTILEG_HTTP1_REQUIRED', 'the server asked for HTTP/1.1 (GOAWAY HTTP_1_1_REQUIRED); retried over HTTP/1.1');
  }
}

export type Lane = 'auto' | 'http1';

/**
 * Whose credentials a session's requests carry (S6). A session serves one identity for its whole
 * life: `agent` (the agent's credentials), `anonymous` (requests that must go without them: an
 * untrusted origin, a cross-origin redirect hop), `elsewhere` (requests whose own Host header
 * names another origin: without the agent's credentials and its cookie jar, and apart from the
 * sessions callers authenticated themselves), `caller` (requests that bring their own
 * `Authorization` only, of a per-request scheme: Basic, Bearer, …), `caller-bound` (their own
 * `Authorization` only, of a scheme that may authenticate the connection: NTLM, Negotiate, one not
 * known per-request; such a session retires once one of them is answered, see the exchange's
 * `callerAnswered`), `caller-proxy` (their own `Proxy-Authorization` only: to the origin they
 * carry nothing, so they must not ride a connection a caller's own handshake authenticated),
 * `caller-proxy-bound` (their own `Proxy-Authorization` only, of a scheme that may authenticate the
 * proxy connection: one caller's handshake at a time per connection, as `caller-bound`'s at the
 * origin) or `caller-both` (both: a proxy that binds authentication to the connection must not serve
 * the others as them). So a request never rides on a connection that is authenticated, or being
 * authenticated, as someone else.
 */
export type Identity =
  | 'agent'
  | 'anonymous'
  | 'elsewhere'
  | 'caller'
  | 'caller-bound'
  | 'caller-proxy'
  | 'caller-proxy-bound'
  | 'caller-both';

/** Requests of `identity` bring their own `Proxy-Authorization` (S6): none of the agent's proxy credentials. */
export const ownProxy = (identity: Identity): boolean =>
  identity === 'caller-proxy' || identity === 'caller-proxy-bound' || identity === 'caller-both';

/**
 * How a wait for the session's handshake ended: `released` (go on: authenticated, per-request, or
 * try again), `failed` (the handshake failed: send without credentials and show the 401, C7),
 * `withheld` (as `failed`, the leader's password held back before anything was sent: a 401 the
 * request holds for that is its answer, R4), `closed` (move to another session, C8), `lead` (the
 * leader gave up for its own reasons: this request takes the handshake over, R2).
 */
export type WaitOutcome = 'released' | 'bare' | 'failed' | 'withheld' | 'closed' | 'lead';

let nextSessionSeq = 0;

/**
 * One connection — an HTTP/2 session or an HTTP/1.1 connection — with its authentication state.
 * The session owns its undici Client and uses it for exactly one connection: when that connection
 * ends the session is closed for good (C8) and the pool makes a new one, so auth state, Auth-IDs
 * and security contexts can never outlive the connection they belong to.
 */
export class Session {
  readonly id: string;
  readonly lane: Lane;
  readonly identity: Identity;
  readonly client: Client;
  #state: SessionState = FRESH;
  /** Streams of its handshake's legs the server refused (REFUSED_STREAM), closing it: see {@link behindRefusal}. */
  #handshakeRefused: { readonly streams: number; readonly error: Error | undefined } = {
    streams: 0,
    error: undefined,
  };
  #connection: ConnectionInfo | undefined;
  #connections = 0;
  /** Response heads this session's connection gave (a forwarding proxy's leg it closed under after one was reused). */
  #answers = 0;
  #inflight = 0;
  /**
   * A leg or fast-path request was aborted (its caller, its handshake's clock) since the session last
   * held nothing: undici may still hold it (see {@link noteAborted}).
   */
  #aborted = false;
  /** The most requests it held at once (see peakInflight). */
  #peakInflight = 0;
  /** The error undici failed the streams a GOAWAY refused with (R5). */
  #goaway: Error | undefined;
  /** Times a bare request on this authenticated session met a 401 (the server forgot us, R4). */
  #authenticationLost = 0;
  /** True once a first response came back, so a probe is no longer needed (see capacity). */
  #probed = false;
  /** Requests waiting for the running handshake (C1). */
  readonly #queue: WaitQueue<WaitOutcome>;
  #handshakes = 0;
  /** Slots: limits.maxConcurrentHandshakes, less once the server refused a context beyond its cap. */
  #handshakeCap: number;
  /** Handshakes waiting for a slot (maxConcurrentHandshakes). */
  readonly #slots: WaitQueue<void>;
  readonly #limits: Limits;
  /** https under `rejectUnauthorized: false`: its connection, once made, may prove no server (S4/M4). */
  readonly #mayGoUnverified: boolean;
  /** undici's, for this session's legs (a request's own dispatch option wins): a proxy's silence names it. */
  readonly #headersTimeout: number;
  readonly #onChange: () => void;
  readonly #onHttp1Required: (() => void) | undefined;
  /** Through a forwarding proxy (plain-http target, H3-H5): that connection's own state. */
  readonly #forward: ForwardProxy | undefined;
  readonly #connector: SessionConnector;
  readonly #originProof: CredentialProof | undefined;

  /** The client certificate this session presents (T3): only sessions with the origin's serve it then. */
  readonly certificate: ClientCertificate | undefined;
  /** Its certificate's subject, read once a traced leg asks (the leg events' `certificate`). */
  #subject: string | undefined;
  /** The agent's cookie jar, if it has one: every leg this session writes asks and tells it. */
  readonly cookies: CookieStore | undefined;
  /** The Auth-IDs its live handshakes hold (C3): one Auth-ID never goes on two of them at once. */
  readonly authIds = new SessionAuthIds();
  /**
   * Callers' NTLM CHALLENGEs this session carried whose AUTHENTICATE has not been answered yet
   * (counted by the pool's ChallengeRecords, ntlm-pairing.ts): on HTTP/1.1 one reserves the
   * connection for its AUTHENTICATE; a retiring session closes once none is left.
   */
  challengesPending = 0;
  /** Takes no new requests, only the AUTHENTICATEs of the CHALLENGEs it carried (see {@link retire}). */
  #retiring = false;

  constructor(opts: {
    origin: string;
    lane: Lane;
    identity: Identity;
    tls: ConnectionOptions;
    /** The agent's `connectTo` (where a direct connection goes). */
    connectTo?: ConnectTo;
    /**
     * The TLS server name the pool's requests name (behind undici's dns interceptor the name, the
     * origin holding its address): an early connection is made and checked under it (S1).
     */
    servername?: string;
    certificate?: ClientCertificate;
    keepAliveTimeout: number;
    /** undici's, for every request and leg on this session's connections. */
    headersTimeout: number;
    bodyTimeout: number;
    maxConcurrentStreams: number;
    limits: Limits;
    /** The agent's cookie jar: asked for each leg's Cookie header, told each response head's Set-Cookie. */
    cookies?: CookieStore;
    /** Handshake slots, when the origin's server was seen to refuse more (below limits.maxConcurrentHandshakes). */
    handshakeCap?: number;
    /** Called when capacity may have grown or the session closed: the pool pumps its queue. */
    onChange: () => void;
    /** Connect through this proxy (H5). */
    route?: ProxyRoute;
    /** Whether the agent's credentials are proved at the origin: an unanswered leg carrying them may go again (R4). */
    originProof?: CredentialProof;
    /** A forward proxy said the origin speaks HTTP/1.1 (H3). */
    onRemoteHttp1?: () => void;
    /**
     * The session closed because the server wants HTTP/1.1 (GOAWAY HTTP_1_1_REQUIRED, H2): told
     * before the requests waiting for it are handed elsewhere, so none opens another HTTP/2 session.
     */
    onHttp1Required?: () => void;
    /** The session's first connection could not be made (before undici fails the request that asked for it). */
    onConnectFailed?: (session: Session, err: Error) => void;
    /** A handshake with its proxy proved an identity ({@link proxyHolder}): the pool acts on it (S6). */
    onProxyHolder?: (session: Session) => void;
    /** A handshake with its proxy (a CONNECT's, or on the forwarding proxy connection) ended (H5). */
    onProxyHandshake?: (session: Session, handshake: ProxyHandshake) => void;
  }) {
    this.id = `s${++nextSessionSeq}`;
    this.lane = opts.lane;
    this.identity = opts.identity;
    this.certificate = opts.certificate;
    this.cookies = opts.cookies;
    this.#limits = opts.limits;
    this.#mayGoUnverified = opts.origin.startsWith('https:') && opts.tls.rejectUnauthorized === false;
    this.#headersTimeout = opts.headersTimeout;
    this.#originProof = opts.originProof;
    this.#handshakeCap = Math.min(opts.handshakeCap ?? Number.POSITIVE_INFINITY, opts.limits.maxConcurrentHandshakes);
    this.#queue = new WaitQueue(opts.limits, 'a handshake on its session');
    this.#slots = new WaitQueue(opts.limits, 'a free handshake slot on its session (limits.maxConcurrentHandshakes)');
    this.#onChange = opts.onChange;
    this.#onHttp1Required = opts.onHttp1Required;
    const allowH2 = opts.lane === 'auto';
    let origin = opts.origin;
    const onProxyHandshake = opts.onProxyHandshake && ((h: ProxyHandshake) => opts.onProxyHandshake?.(this, h));
    if (opts.route?.kind === 'forward') {
      // The Client talks to the proxy (`http:` so that HTTP/2 sends `:scheme http`; the connector
      // does TLS for an https:// proxy), over the connection the ForwardProxy opened.
      const proxy = opts.route.proxy;
      origin = `http://${authority(proxy.hostname, proxy.port)}`;
      this.#forward = new ForwardProxy({
        route: opts.route,
        allowH2,
        limits: opts.limits,
        onRemoteHttp1: opts.onRemoteHttp1 ?? (() => {}), // (the pool passes one with every route)
        onUnusable: (err) => {
          log.session('%s proxy connection unusable (%s): closing', this.id, err.message);
          this.apply({ type: 'closed' });
        },
        onClosing: () => {
          log.session('%s proxy closes the connection after its answer: closing', this.id);
          this.apply({ type: 'closed' });
        },
        ...(opts.onProxyHolder ? { onHolder: () => opts.onProxyHolder?.(this) } : {}),
        ...(onProxyHandshake ? { onHandshake: onProxyHandshake } : {}),
      });
    }
    const route = opts.route
      ? {
          proxy: opts.route,
          limits: opts.limits,
          ...(this.#forward ? { preopened: this.#forward.socket } : {}),
          ...(onProxyHandshake ? { onHandshake: onProxyHandshake } : {}),
          withheld: () => this.#proxyWithheld,
        }
      : undefined;
    this.#connector = sessionConnector(
      opts.origin,
      opts.tls,
      allowH2,
      (info) => {
        this.#connected(info);
        if (info.proxyHolder && this.#connection === info) opts.onProxyHolder?.(this);
      },
      route,
      (err) => {
        if (!this.#connection) opts.onConnectFailed?.(this, err);
      },
      opts.connectTo,
      opts.servername,
    );
    this.client = new Client(origin, {
      connect: this.#connector.connect,
      allowH2,
      pipelining: 1,
      keepAliveTimeout: opts.keepAliveTimeout,
      headersTimeout: opts.headersTimeout,
      bodyTimeout: opts.bodyTimeout,
      h2Options: { maxConcurrentStreams: opts.maxConcurrentStreams },
      keepAliveMaxTimeout: Math.max(opts.keepAliveTimeout, 600_000),
      keepAliveTimeoutThreshold: KEEP_ALIVE_THRESHOLD_MS,
    });
    this.client.on('disconnect', (_origin, _targets, error) => {
      log.session('%s disconnected (%s)', this.id, error.message);
      const code = goawayCode(error);
      // The streams the GOAWAY refused fail with this very error object: they were not processed.
      if (code !== undefined) this.#goaway = error;
      this.apply({ type: 'closed', http1Required: code === 0xd || relocationReason(error) === 'http1' });
    });
  }

  get state(): SessionState {
    return this.#state;
  }
  get connection(): ConnectionInfo | undefined {
    return this.#connection;
  }
  /**
   * S4/M4: why this session's TLS connection proved no server ({@link ConnectionInfo.unverifiedTls});
   * before it is made, `NOT_YET_CONNECTED` where `rejectUnauthorized: false` may let such a one through.
   */
  get unverifiedTls(): string | undefined {
    if (this.#connection) return this.#connection.unverifiedTls;
    return this.#mayGoUnverified ? NOT_YET_CONNECTED : undefined;
  }
  /**
   * Who the proxy holds this session's connection as (a forwarding proxy's, or the CONNECT tunnel's),
   * when a handshake with it proved an identity: the pool retires the session once another account
   * is proved at the proxy, or its credentials are gone (a ccache's Kerberos ticket; S6).
   */
  get proxyHolder(): AdmittedHolder | undefined {
    return this.#forward ? this.#forward.holder : this.#connection?.proxyHolder;
  }
  /**
   * Why a leg on this HTTP/2 session never reached the origin, when the origin is why: its SETTINGS
   * never came (`settings`: nothing came on the connection at all), or it gives no stream
   * (`limit`: undici holds requests it cannot start while none runs — SETTINGS_MAX_CONCURRENT_STREAMS
   * 0). Said by a handshake's timeout (R3), which a leg the server never saw is no fault of. Undefined
   * otherwise (also through a forwarding proxy).
   */
  get noStream(): NoStream | undefined {
    const connection = this.#connection;
    if (connection?.protocol !== 'h2' || !connection.silent || this.client.destroyed) return undefined;
    if (connection.silent()) return 'settings';
    const { connected, running, pending } = this.client.stats;
    return connected && running === 0 && pending > 0 ? 'limit' : undefined;
  }
  get protocol(): 'h2' | 'http/1.1' | undefined {
    return this.#connection?.protocol;
  }
  /**
   * A response on its connection answers the agent's identity even to a leg that carried none of
   * its credentials (S6): the connection is authenticated as the agent (NTLM, Negotiate,
   * Persistent-Auth; also while it authenticates again, T4), or presents its client certificate.
   */
  get asAgent(): boolean {
    if (this.identity !== 'agent') return false;
    const state = this.#state;
    return (
      this.certificate !== undefined ||
      state.kind === 'authenticated' ||
      (state.kind === 'handshaking' && state.previous.kind === 'authenticated')
    );
  }
  /** A renegotiation of its TLS 1.2 connection did not complete (T3: a client certificate asked for one path, {@link ConnectionInfo.renegotiationFailed}). */
  get renegotiationFailed(): boolean {
    return this.#connection?.renegotiationFailed?.() === true;
  }
  /** Its connection is TLS 1.3 (T3: where a server asks for a certificate mid-connection by post-handshake authentication). */
  get tls13(): boolean {
    return this.#connection?.tlsVersion === 'TLSv1.3';
  }
  /** It presents a client certificate (T3). */
  get certified(): boolean {
    return this.certificate !== undefined;
  }
  /** The subject of its certificate, for a traced leg: read once (a certificate the agent took parses). */
  #certificateSubject(): string | undefined {
    if (this.certificate) this.#subject ??= certificateSubject(this.certificate.cert);
    return this.#subject;
  }
  get closed(): boolean {
    return this.#state.kind === 'closed';
  }
  /** Retired for new requests, open for the AUTHENTICATEs its pending CHALLENGEs wait for (S6). */
  get retiring(): boolean {
    return this.#retiring;
  }

  /**
   * A callers' session that may now be authenticated as one of them (S6: the exchange's
   * `callerAnswered`) takes no new request. It closes at once, unless callers' CHALLENGEs it carried
   * still wait for their AUTHENTICATE: the server holds their contexts on this connection (or under
   * its Auth-IDs), so those still come here (each an NTLM handshake of its own that the server
   * checks afresh), and it closes once none is left.
   */
  retire(): void {
    if (this.challengesPending === 0) {
      this.apply({ type: 'closed' });
      return;
    }
    if (!this.#retiring) log.session("%s retires once its callers' pending CHALLENGEs are answered", this.id);
    this.#retiring = true;
    this.#onChange();
  }

  /** The pool's ChallengeRecords: no CHALLENGE of this session waits any more. */
  challengesSettled(): void {
    if (this.#retiring) this.apply({ type: 'closed' });
  }

  /**
   * A caller's NEGOTIATE goes on this session: counted with its CHALLENGEs until its answer is in
   * (its CHALLENGE then counts), so that a session retiring meanwhile waits for its AUTHENTICATE too.
   */
  openingSent(): void {
    this.challengesPending += 1;
  }

  /** The NEGOTIATE counted by {@link openingSent} got its answer, or failed. */
  openingEnded(): void {
    this.challengesPending -= 1;
    if (this.challengesPending === 0) this.challengesSettled();
  }
  /** Its connection gave a response head (T3: a refusal after one is no demand for a certificate). */
  get answered(): boolean {
    return this.#answers > 0;
  }
  /** Requests the pool gave this session and that have not ended: waiting for its handshake or a slot, or on the wire. */
  get inflight(): number {
    return this.#inflight;
  }
  /** The most {@link inflight} ever was: an exact bound where a count sampled now and then would miss the peak. */
  get peakInflight(): number {
    return this.#peakInflight;
  }

  /**
   * Authentication does not hold on this session (R4): the server forgot it twice. From then on
   * its handshakes authenticate only their own request, so no queue re-forms behind each one.
   */
  get authenticationFails(): boolean {
    return this.#authenticationLost >= 2;
  }

  /** A request sent bare on this authenticated session came back 401 (T4). */
  noteAuthenticationLost(): void {
    this.#authenticationLost += 1;
    if (this.authenticationFails) log.session('%s authentication does not hold: per-request from now on', this.id);
  }

  /**
   * Whether a session-based authentication result may be trusted here (H4): always on a direct or
   * tunnelled connection (it is ours alone); through a forward proxy only when the proxy said
   * `Proxy-support: Session-Based-Authentication` — otherwise each request authenticates on its own.
   */
  get trustsSessionAuth(): boolean {
    return this.#forward ? this.#forward.vouched : true;
  }

  /**
   * How many requests may run on this session at once. Until the connection is known to be
   * HTTP/2 and a first response has shown whether the origin wants authentication, one at a
   * time: a burst of anonymous requests would each come back 401 (draft §3, C1). The pool reads
   * it for open sessions only.
   */
  get capacity(): number {
    if (this.#connection?.protocol === 'h2' && (this.#probed || this.#state.kind !== 'fresh'))
      return Number.POSITIVE_INFINITY;
    return 1;
  }

  /**
   * R1/R4: a 401 kept for the refusal memory came on this session, and its request now waits for
   * leave to send the password (the memory's recall, which may wait on another process, or another
   * request's probe): the session has answered for the pool's purposes — the protocol is known, and
   * that the origin wants authentication — and takes requests side by side (see capacity). They wait
   * for the outcome beside it (CredentialProof.watch; those behind a blocking handshake, C1, in its
   * queue), each then answered as it is; held to one stream, their wait for the session ran out
   * before the recall's (QueueTimeoutError). The probe is kept past the 401 only to spare a burst
   * bare legs when the leader goes on at once.
   * On HTTP/1.1 (one request at a time) the pool is told as well: it opens connections for them
   * while the memory's recall waits (OriginPool #maxSessions).
   */
  answeredWhileWaiting(): void {
    this.#probed = true;
    // (Each time, not once: the pool's count of connections is read anew, #maxSessions.)
    this.#onChange();
  }

  /** R1/R4: this session's tunnel goes without the proxy credentials ({@link withholdProxyCredentials}). */
  #proxyWithheld = false;

  /**
   * R1/R4: a request whose wait for the proxy credentials' recall ended with it given up at
   * queueTimeout (Job.proxyWatch `withheld`) was given this session: a tunnel not yet made goes
   * without the credentials, its 407 that request's answer (recall-timeout), the memory not asked
   * again. (A forwarded request goes bare by its own stage: see sendLeg.) A session already
   * connected rides on.
   */
  withholdProxyCredentials(): void {
    if (!this.#connection) this.#proxyWithheld = true;
  }

  /** Its tunnel was made without the proxy credentials ({@link withholdProxyCredentials}). */
  get proxyCredentialsWithheld(): boolean {
    return this.#proxyWithheld;
  }

  #markProbed(): void {
    if (!this.#probed) {
      this.#probed = true;
      this.#onChange();
    }
  }

  /**
   * Opens the connection before the first request is written, where the connector can (direct
   * connections): a proactive first token bound to the channel (M5) needs the server's
   * certificate. Resolves once connected, or when that failed (the request then goes bare and
   * undici reports that error as its own). Bounded by the connect timeout.
   */
  async connectEarly(): Promise<void> {
    if (!this.#connection && this.#connector.open) await this.#connector.open();
  }

  /** Whether {@link connectEarly} can open the connection (a direct one, not yet made). */
  get connectsEarly(): boolean {
    return !this.#connection && this.#connector.open !== undefined && !this.closed;
  }

  /**
   * Closes the Client once its requests are done (and a connection it never took). With none of
   * ours left on it, what undici still holds is dead weight that its close would wait for (see
   * {@link noteAborted}): the Client is destroyed instead.
   */
  close(): Promise<void> {
    this.#connector.dispose();
    if (this.#holdsOnlyDead) return this.#dropDead();
    return this.client.close().catch(() => {});
  }

  /**
   * None of ours is on it, yet undici holds requests, because the server gives none a stream
   * ({@link noStream}): given up, they would wait for undici's headersTimeout. (Not a request still
   * queued while the connection is made, nor a relocated one's body undici still drains: review r45.)
   */
  get #holdsOnlyDead(): boolean {
    return this.#inflight === 0 && this.client.stats.size > 0 && this.noStream !== undefined;
  }

  /**
   * One of its legs or fast-path requests was aborted (R1). undici may go on holding an aborted
   * request that never got an HTTP/2 stream — one it had not started, or had started and then put
   * back in its queue when the server refused the stream (REFUSED_STREAM: a server whose
   * SETTINGS_MAX_CONCURRENT_STREAMS is 0) — until it can start it, which such a server puts off
   * until undici's headersTimeout (300 s by default): that held the session, its connection and
   * the process as long. Once no request of ours is on the session, whatever undici holds is dead
   * weight: the session is destroyed.
   */
  readonly noteAborted = (): void => {
    this.#aborted = true;
  };

  /** After an abort, once no request of ours is left on it: destroyed if undici still holds any. */
  readonly #dropIfDead = (): void => {
    if (this.#inflight > 0 || this.client.destroyed) return;
    this.#aborted = false;
    if (!this.#holdsOnlyDead) return;
    const open = !this.closed;
    this.#dropDead();
    // (An open session retires: the pool drops it and opens another for the next request.)
    if (open) this.#onChange();
  };

  #dropDead(): Promise<void> {
    log.session('%s holds only requests given up without a stream: destroyed', this.id);
    return this.destroy(new StaleConnectionError());
  }

  /**
   * Ends the Client now, its connection and one still being made too. The requests waiting for
   * its handshake or a handshake slot get `err` first: the failing handshake would otherwise
   * release them onto the destroyed Client, and they would fail with undici's ClientDestroyedError.
   */
  destroy(err: Error): Promise<void> {
    this.#queue.settleAll(undefined, err);
    this.#slots.settleAll(undefined, err);
    // Closed for good (#send sends no leg after this), without apply's close() and pool wake-up:
    // the pool destroying it is closed already.
    this.#state = transition(this.#state, { type: 'closed' });
    this.#connector.dispose();
    this.#connector.abortDials();
    // C4: the forwarding proxy's handshake ends now, its context freed (a tunnel's ends with its dial).
    this.#forward?.end(err);
    return this.client.destroy(err).catch(() => {});
  }

  acquire(): void {
    this.#inflight += 1;
    if (this.#inflight > this.#peakInflight) this.#peakInflight = this.#inflight;
  }
  release(): void {
    this.#inflight -= 1;
    // A microtask later: a request released from undici's own callback is not out of its queue yet.
    if (this.#inflight === 0 && this.#aborted) queueMicrotask(this.#dropIfDead);
    this.#onChange();
  }

  #connected(info: ConnectionInfo): void {
    this.#connections += 1;
    if (this.#connections === 1) {
      this.#connection = info;
      log.session('%s connected %s', this.id, info.protocol);
      this.#onChange();
    } else {
      // The Client reconnected on its own (after a GOAWAY or reset): that is a new session.
      this.apply({ type: 'closed' });
    }
  }

  /** Applies a state-machine event and its effects: releasing or relocating the queue. */
  apply(event: SessionEvent): void {
    const before = this.#state;
    if (before.kind === 'closed') return;
    this.#state = transition(before, event);
    log.session('%s %s -> %s', this.id, before.kind, this.#state.kind);
    if (this.#state.kind === 'closed') {
      // H2: the origin is HTTP/1.1-only from now on, before the waiting requests move (a request
      // handed a new `auto` session here would open another HTTP/2 one, and meet the same GOAWAY).
      if (this.#state.http1Required) this.#onHttp1Required?.();
      const failure = this.#state.failure;
      if (failure) this.#queue.settleAll(undefined, failure);
      else this.#queue.settleAll('closed');
      // A server that failed to prove itself gets nothing more, not even what undici has queued.
      if (failure) this.destroy(failure);
      else this.close();
    } else if (before.kind === 'handshaking' && this.#state.kind !== 'handshaking') {
      let outcome: WaitOutcome = 'released';
      if (event.type === 'handshake-failure') {
        if (!event.retry) outcome = event.withheld ? 'withheld' : 'failed';
        else if (event.bare) outcome = 'bare';
      }
      this.#queue.settleAll(outcome);
    }
    // Capacity depends on the state (see capacity): let the pool hand it out.
    this.#onChange();
  }

  /**
   * One of the session's handshake slots (draft §3.1: servers cap incomplete contexts per session):
   * its release, at once when one is free, else a promise of it. Each waiting handshake is bounded
   * by the queue's bounds (R1).
   */
  handshakeSlot(job: Job): (() => void) | Promise<() => void> {
    if (this.#handshakes < this.#handshakeCap) {
      this.#handshakes += 1;
      return this.#releaseSlot;
    }
    return this.#slots.wait(job).then(() => this.#releaseSlot);
  }

  /** The slot passes straight to the next waiting handshake, or is freed (above a lowered cap). */
  readonly #releaseSlot = (): void => {
    if (this.#handshakes > this.#handshakeCap || !this.#slots.shift(undefined)) this.#handshakes -= 1;
  };

  /**
   * The server would not start a security context for a handshake that holds one of this
   * session's slots (a bare 401 to its first leg) while other handshakes hold theirs: that is the
   * server's cap on incomplete contexts (draft §3.1), and the session's cap drops to what the
   * others hold. Returns the cap; undefined when no other handshake holds a slot (the refusal is
   * then the server's answer to this request, not its cap).
   */
  contextRefused(): number | undefined {
    const others = this.#handshakes - 1;
    if (others < 1) return undefined;
    if (others < this.#handshakeCap) {
      this.#handshakeCap = others;
      log.session('%s the server caps incomplete contexts: %d handshakes at once from now on', this.id, others);
    }
    return this.#handshakeCap;
  }

  /** Waits for the running handshake to end (C1), bounded by maxQueue and queueTimeout (C11). */
  waitForHandshake(job: Job): Promise<WaitOutcome> {
    return this.#queue.wait(job);
  }

  /**
   * The leader gave up for its own reasons (R2): the oldest waiting request takes the handshake
   * over; with none waiting, the handshake ends as if it had not started.
   */
  handOver(leader: number): void {
    const next = this.#queue.shift('lead');
    if (next) this.apply({ type: 'handshake-handover', leader, next: next.id });
    else this.apply({ type: 'handshake-failure', leader, retry: true });
  }

  /** Sends one leg of `job` on this session's connection. */
  send(
    job: Job,
    extra: Record<string, string>,
    classify: (status: number, headers: ResponseHeaders) => Verdict,
  ): Promise<LegResult> {
    return new Promise((resolve) => this.sendLeg(job, extra, classify, resolve));
  }

  /**
   * {@link send} with a callback: `onResult` gets the leg's result as soon as it is known (a
   * handshake's legs: no promise per leg on a direct connection). `clocked`: a handshake's clock
   * bounds the leg (limits.handshakeTimeout, started before it), so a challenge body needs no timer
   * of its own.
   */
  sendLeg(
    job: Job,
    extra: Record<string, string>,
    classify: (status: number, headers: ResponseHeaders) => Verdict,
    onResult: (r: LegResult) => void,
    clocked = false,
  ): void {
    if (!this.#forward) {
      this.#send(job, extra, classify, onResult, undefined, undefined, clocked);
      return;
    }
    const request = {
      origin: job.origin,
      method: job.dispatchOptions.method,
      path: job.dispatchOptions.path,
      // S6: the caller's own Proxy-Authorization goes as given; its 407 is the caller's.
      ownProxyAuthorization: 'proxy-authorization' in job.headers,
      // R4/S6: a refusal of replaced proxy credentials moves the request to a new connection, once.
      rerun: () => (rerunWithNewCredentials(job) ? new StaleConnectionError() : undefined),
      // R1/R4: the proxy credentials' recall it waited for was given up: it goes without them.
      withheld: job.proxyWatch === 'withheld',
    };
    this.#forward
      .send(
        request,
        extra,
        classify,
        (e, c, path, started) =>
          new Promise((resolve) => this.#send(job, e, c, (r) => resolve(this.#proxyTyped(job, r)), path, started)),
        () => this.protocol === 'h2',
        job,
        (held) => this.#deliverHeld(job, held),
      )
      .then(onResult, (error: Error) => onResult({ kind: 'failed', error }));
  }

  /**
   * A forwarded leg's failure that undici leaves untyped, as the proxy's typed error naming it and
   * the origin (R3: an error says where), undici's as its cause: no response head within undici's
   * headersTimeout (not bounded sooner: a forwarding proxy is silent while the origin behind it
   * takes its time), or an answer undici could not read as HTTP/1.1 ({@link ProxyProtocolError},
   * as the same fault through a CONNECT tunnel is; H5).
   */
  #proxyTyped(job: Job, r: LegResult): LegResult {
    if (r.kind !== 'failed') return r;
    const proxy = this.#forward!.route.proxy.origin;
    if ((r.error as { code?: unknown }).code === 'UND_ERR_HEADERS_TIMEOUT') {
      const ms = this.headersTimeoutOf(job);
      return { ...r, error: new ProxyResponseTimeoutError(proxy, job.origin, ms, { cause: r.error }) };
    }
    if (isFramingError(r.error)) return { ...r, error: forwardedFraming(proxy, job.origin, r.error) };
    return r;
  }

  /** undici's headersTimeout for `job`'s legs on this session: the request's own, else the agent's. */
  headersTimeoutOf(job: Job): number {
    return job.dispatchOptions.headersTimeout ?? this.#headersTimeout;
  }

  /** A proxy's 407 held from a forwarded leg (proxy.deliver407) is the caller's response, all at once. */
  #deliverHeld(job: Job, held: HeldResponse): LegResult {
    this.deliverHeld(job, held);
    return { kind: 'delivered', status: held.status, headers: held.headers, done: Promise.resolve() };
  }

  /**
   * A response held from one of this session's legs (a `hold` verdict: an origin's 401, nginx's
   * 400, a proxy's 407) turned out to be the caller's: replayed all at once. It is this connection's
   * first answer to the caller as any delivered one is, so the session is no longer probed one
   * stream at a time (see capacity).
   */
  deliverHeld(job: Job, held: HeldResponse): void {
    replayHeld(job.sink, held);
    this.#markProbed();
  }

  /** As {@link deliverHeld}, for a response kept open past its bounds (a `keep` verdict's): streamed on. */
  deliverOpen(open: OpenResponse): Promise<void> {
    const done = open.deliver();
    this.#markProbed();
    return done;
  }

  #send(
    job: Job,
    extra: Record<string, string>,
    classify: (status: number, headers: ResponseHeaders) => Verdict,
    onResult: (r: LegResult) => void,
    path?: string,
    started?: (leg: LegHandler) => void,
    clocked = false,
  ): void {
    // Through a forwarding proxy, a connection undici has ended (it may not keep it after the last
    // response, or the proxy closed it) takes nothing more: without this, undici would queue the
    // leg and open a connection for it that checkStart then refuses, a connection for nothing.
    if (this.#forward?.gone && !this.closed) {
      log.session('%s proxy connection ended after its answer: closing', this.id);
      this.apply({ type: 'closed' });
    }
    // R5: no new stream after the session ended (RFC 9113 §6.8): the request goes elsewhere. So
    // does one between two of its legs (a mechanism step, a certificate selector) when the session
    // was destroyed meanwhile: it finds the pool closed (AgentClosedError), not undici's
    // ClientDestroyedError.
    if (this.closed) {
      onResult({ kind: 'failed', error: new StaleConnectionError() });
      return;
    }
    if (job.body.settled === false) {
      this.#settleBody(job, extra, classify, onResult, path, started, clocked);
      return;
    }
    const body = job.body.take();
    if (body === undefined && !job.body.replayable) {
      onResult({ kind: 'failed', error: new BodyNotReplayableError(this.#limits.maxReplayBodyBytes) });
      return;
    }
    const headers: HeaderMap = { ...job.headers };
    for (const k in extra) headers[k] = extra[k]!;
    // The leg carries the agent's identity, which a cache above the agent does not see (S6).
    let asAgent = 'authorization' in extra;
    // The jar is asked per leg, not per request: a cookie set on a challenge goes on the next leg.
    const cookieUrl = this.cookies ? cookieUrlOf(job) : undefined;
    if (cookieUrl !== undefined) {
      const jar = jarCookie(this.cookies!, cookieUrl);
      if (jar instanceof CookieStoreError) {
        onResult({ kind: 'failed', error: jar });
        return;
      }
      if (jar) {
        headers.cookie = withJarCookie(headers.cookie, jar);
        asAgent = true;
      }
    }
    // Per-request mode sends two legs per request: nothing is built for a trace nobody reads.
    const traced = tracingLegs()
      ? publishLeg(
          {
            target: 'origin',
            origin: job.origin,
            sessionId: this.id,
            protocol: () => this.protocol,
            // Only TLS presents one: an http:// leg (a forwarded one too) offers none (review r39).
            ...(this.certificate && job.origin.startsWith('https:') ? { certificate: this.#certificateSubject() } : {}),
          },
          { method: job.dispatchOptions.method, path: path ?? job.dispatchOptions.path, headers },
        )
      : undefined;
    // Responses this connection gave to other requests before this leg: a leg it closed under after
    // some was on a reused connection. Its answers to this request's own legs (a handshake's 401s)
    // do not count: a close right after them is the server ending this request, no idle race (R4).
    const own = job.answeredOn === this ? job.answeredHere : 0;
    const answered = this.#answers - own;
    const leg = new LegHandler({
      sink: job.sink,
      classify: (status, h) => {
        this.#answers += 1;
        if (job.answeredOn !== this) {
          job.answeredOn = this;
          job.answeredHere = 0;
        }
        job.answeredHere += 1;
        // Read as the answer comes: the connection may have been authenticated meanwhile (S6).
        if (asAgent || this.asAgent) job.sink.asAgent = true;
        if (cookieUrl !== undefined) this.tellCookies(cookieUrl, h);
        const verdict = classify(status, h);
        // (A held response may still go to the caller: deliverHeld; the trace has called it intermediate.)
        const intermediate = verdict === 'swallow' || verdict === 'hold' || verdict === 'keep';
        traced?.response(status, h, !intermediate);
        // A challenge is not the end of the probe: the leader's handshake-start opens the session.
        if (!intermediate) this.#markProbed();
        return verdict;
      },
      beforeStart: (controller) => this.checkStart(job, controller),
      onAbort: this.noteAborted,
      expectContinue: job.dispatchOptions.expectContinue === true,
      headersTimeout: this.headersTimeoutOf(job),
      cutShort: (err, challenge) => this.cutShort(job, err, challenge),
      maxDrainBytes: this.#limits.maxChallengeBodyBytes,
      maxDrainMs: clocked ? undefined : this.#limits.handshakeTimeout,
      onResult: (r) => {
        if (r.kind === 'failed') traced?.error(r.error);
        const settled = this.settleLeg(
          job,
          r.kind === 'failed' && leg.unanswered ? this.unanswered(job, r, answered, headers, own, leg.starts) : r,
        );
        // R4: what the handshake tells the proof: its credentials went out and got no answer.
        onResult(settled.kind === 'failed' && leg.unanswered ? { ...settled, unanswered: true } : settled);
      },
    });
    job.sink.onAbort(leg);
    started?.(leg);
    // Set after the copy, not spread from conditional literals: two objects less per leg.
    const opts: Dispatcher.DispatchOptions = {
      ...job.dispatchOptions,
      headers,
      body: body as Dispatcher.DispatchOptions['body'],
    };
    if (path !== undefined) opts.path = path;
    // HEAD would otherwise close the HTTP/1.1 connection and lose a connection-bound handshake.
    if (opts.method === 'HEAD') opts.reset = false;
    if (logging)
      log.leg(
        '%s job %d leg %s %s auth=%s auth-id=%s',
        this.id,
        job.id,
        opts.method,
        this.protocol ?? '?',
        'authorization' in extra ? extra.authorization!.split(' ', 1)[0] : 'none',
        'auth-id' in extra,
      );
    try {
      this.client.dispatch(opts, leg);
    } catch (err) {
      traced?.error(err as Error);
      onResult({ kind: 'failed', error: err as Error });
    }
  }

  /**
   * A leg written on a connection that the server (the origin, or the forwarding proxy it goes
   * through) closed before any answer to it, without having said it would (no `Connection: close`;
   * an idle timeout or `MaxKeepAliveRequests` racing the write, a restart, an HTTP/2 connection
   * ending without GOAWAY): undici fails it with its socket error (`UND_ERR_SOCKET` "other side
   * closed" for the server's FIN, or the system's reset). undici started it, so the server may have
   * read it. Only if undici deems the request idempotent (GET, HEAD, or the dispatch option
   * `idempotent`) does it go to a new connection (a new session, which authenticates there: C8), as
   * curl's "Connection died, retrying a fresh connect" does, up to MAX_RESENDS_AFTER_CLOSE times
   * while each close is of a reused connection; any other is {@link ConnectionClosedError}
   * ({@link ProxyClosedError} for a proxy), never sent twice, as is an idempotent one whose one-shot
   * body was read past limits.maxReplayBodyBytes (C10), and one whose credentials the server may
   * have counted unanswered (R4: {@link #unprovedSecret}). On a new connection (nothing answered on it yet) the
   * close is no idle timeout but the server refusing or failing the request (or a plain request to
   * a TLS port): {@link ConnectionClosedError} (`fresh`; {@link ProxyClosedError} for a forwarding
   * proxy) at once, idempotent or not — curl 7.88 says "Empty reply from server" (reset: "Recv
   * failure") on its one connection, and a new connection would only meet the same, a connection
   * per attempt against a server that drops every one. A stream an HTTP/2 GOAWAY refused fails
   * with the GOAWAY's own error (a SocketError for a non-zero code): not a close, {@link settleLeg}
   * moves it (R5). `answered`: the responses the connection gave to other requests before this leg
   * was written; `own`: to this request's earlier legs (a handshake's challenges), which make it no
   * kept-alive connection: a server that closes under every handshake's last leg gets no resend
   * loop (R4).
   */
  unanswered(
    job: Job,
    r: LegResult & { kind: 'failed' },
    answered: number,
    headers: HeaderMap,
    own = 0,
    starts = 1,
  ): LegResult {
    const reset = typedResetCode(r.error);
    // REFUSED_STREAM (0x7): not processed, so it may go again (RFC 9113 §8.7).
    if (reset === 0x7) return this.#refused(job, r.error, starts);
    // R1: any other reset before a response, typed (HTTP_1_1_REQUIRED stays undici's: typedResetCode).
    // Not a close: the connection lives on.
    if (reset !== undefined) return { kind: 'failed', error: this.cutShort(job, r.error, 'before') };
    const code = (r.error as { code?: unknown }).code;
    const again = job.resendsAfterClose;
    if (!(code === 'UND_ERR_SOCKET' || code === 'ECONNRESET' || code === 'EPIPE')) return r;
    if (r.error === this.#goaway) return r;
    log.session('%s server closed the connection under a written leg (%s): closing', this.id, code);
    this.apply({ type: 'closed' });
    const { method } = job.dispatchOptions;
    const closedError = (options: ConnectionClosedOptions): ConnectionClosedError =>
      this.#forward
        ? new ProxyClosedError(this.#forward.route.proxy.origin, method, options)
        : new ConnectionClosedError(job.origin, method, options);
    // (A request sent again for an idle close already says so, whatever connection failed it now.)
    if (answered === 0 && own === 0 && again === 0) {
      // Nothing answered on it before: what its socket read is this leg's response head, cut short
      // (a CONNECT tunnel's proxy answers left out). Not over HTTP/2, whose bytes so far are the
      // server's SETTINGS, and whose HEADERS come whole or not at all (review r72).
      const read = (r.error as { socket?: { bytesRead?: unknown } }).socket?.bytesRead;
      const headBytes =
        typeof read === 'number' && this.#connection?.protocol !== 'h2'
          ? Math.max(0, read - (this.#connection?.proxyBytes ?? 0))
          : 0;
      return {
        kind: 'failed',
        error: closedError({ cause: r.error, fresh: true, headBytes }),
      };
    }
    // Only a close on a reused connection is an idle close to send again after: one on a new
    // connection ends it (a server that always closes: one resend, one error). The pool may hand the
    // resent request another kept-alive connection, which its own keep-alive limit may close too.
    // A connection that answered only this request's own earlier legs (a handshake's challenges) is
    // new to it: no idle race, the server ending this request (R4: no handshake per resend, looping).
    // Such a request is never sent again: the checks below only choose what its error says (the
    // credentials the server may have counted, a one-shot body, else `fresh`).
    const mine = answered === 0 && again === 0;
    const idem = again < MAX_RESENDS_AFTER_CLOSE && mayGoTwice(job);
    const resend = (answered > 0 || mine) && idem;
    // C10: a one-shot body read past limits.maxReplayBodyBytes cannot go again: said here, with the
    // server's close as its cause, rather than after a new connection opened for nothing.
    const oneShot = resend && !job.body.replayable ? this.#limits.maxReplayBodyBytes : undefined;
    const unproved = resend && oneShot === undefined ? this.#unprovedSecret(job, headers) : undefined;
    if (resend && oneShot === undefined && unproved === undefined) {
      if (mine) return { kind: 'failed', error: closedError({ cause: r.error, fresh: true }) };
      job.resendsAfterClose += 1;
      return { kind: 'failed', error: new StaleConnectionError() };
    }
    return {
      kind: 'failed',
      error: closedError({
        cause: r.error,
        again: again > 0 ? again : undefined,
        // (A stream above the GOAWAY's last-stream-id never gets here: undici queues it again, R5.)
        goaway: this.#goaway !== undefined,
        // Opened for this request: it answered only its own earlier legs (no kept-alive connection).
        handshake: mine && own > 0,
        oneShot,
        unproved,
      }),
    };
  }

  /**
   * A leg the server reset with REFUSED_STREAM before any response, on each of its `starts` on this
   * connection (undici sends a refused request once more on the same one when its body allows).
   * The server did not process it (RFC 9113 §8.7): no credential was counted (R4), and it may go
   * again whatever its method. The connection takes no new request (curl's "REFUSED_STREAM, try
   * again on a new connection"; the streams on it finish), so a request moved from it meets a new
   * one, where a handshake starts over (a leg's token is this connection's: H1, C8). Moved
   * MAX_MOVES_AFTER_REFUSAL times, or with a one-shot body read already (C10): StreamRefusedError.
   */
  #refused(job: Job, error: Error, starts: number): LegResult {
    job.streamsRefused += starts;
    log.session('%s server refused the stream %d time(s) (REFUSED_STREAM): closing', this.id, starts);
    // A leg of the handshake that blocks the session (C1): its waiters move for this refusal too.
    if (this.#state.kind === 'handshaking' && this.#state.leader === job.id) {
      this.#handshakeRefused = { streams: this.#handshakeRefused.streams + starts, error };
    }
    this.apply({ type: 'closed' });
    if (job.movesAfterRefusal < MAX_MOVES_AFTER_REFUSAL && job.body.replayable) {
      job.movesAfterRefusal += 1;
      return { kind: 'failed', error: new StaleConnectionError() };
    }
    return { kind: 'failed', error: this.#streamRefused(job, error) };
  }

  /**
   * C8/R1: `job` waited behind this session's handshake (C1), whose leg the server refused
   * (REFUSED_STREAM), closing the connection: it moves as the leader does, the move counted as one
   * after a refusal of its own — once (MAX_MOVES_AFTER_REFUSAL); after that, StreamRefusedError
   * counting its own refusals and the handshake's it waited behind. Without this it moved on, led
   * a handshake of its own on two more connections and, past MAX_RELOCATIONS, ended in
   * RelocationLimitError: a burst of 6 cost 5 connections. Undefined: it moves (or nothing was refused).
   */
  behindRefusal(job: Job): StreamRefusedError | undefined {
    const { streams, error } = this.#handshakeRefused;
    if (streams === 0) return undefined;
    job.streamsRefusedAhead += streams;
    // (Its body was never taken here: it may go again whatever it is.)
    if (job.movesAfterRefusal < MAX_MOVES_AFTER_REFUSAL) {
      job.movesAfterRefusal += 1;
      return undefined;
    }
    return this.#streamRefused(job, error);
  }

  /** What a request the server refused on `job.movesAfterRefusal + 1` connections ends with. */
  #streamRefused(job: Job, error: Error | undefined): StreamRefusedError {
    const { method } = job.dispatchOptions;
    const connections = job.movesAfterRefusal + 1;
    // Through a forwarding proxy, the proxy's HTTP/2 connection refused it, not the origin.
    const proxy = this.#forward?.route.proxy.origin;
    const cause = { cause: error };
    const ahead = job.streamsRefusedAhead;
    return proxy === undefined
      ? new StreamRefusedError(job.origin, method, job.streamsRefused, connections, cause, 'origin', ahead)
      : new StreamRefusedError(proxy, method, job.streamsRefused, connections, cause, 'proxy', ahead);
  }

  /**
   * The credential header of a leg the server closed under unanswered that may not go again (R4, as
   * the command's `--retry` rule): the origin, or a forwarding proxy and the origin it may have
   * passed the leg on to, may have counted it, and a wrong password tried twice counts twice toward
   * a lockout. Only the agent's own credentials, once proved where they go (a success and no
   * refusal since: the proxy's for Proxy-Authorization, the origin's for Authorization), go again: a
   * kept-alive connection closed when idle is no verdict on them. A secretless token (an NTLM NEGOTIATE) is none; the
   * caller's own header is never known proved. When in doubt, nothing twice.
   */
  #unprovedSecret(job: Job, headers: HeaderMap): string | undefined {
    for (const name of ['authorization', 'proxy-authorization'] as const) {
      const value = headers[name];
      if (value === undefined || [value].flat().every((v) => carriesNoSecret(String(v)))) continue;
      // (The agent's header goes in the leg's extra, over the job's; the caller's is the job's.)
      const agents = !(name in job.headers);
      const proof = name === 'authorization' ? this.#originProof : this.#forward?.route.proxy.proof;
      if (!agents || !proof?.proved) return name === 'authorization' ? 'Authorization' : 'Proxy-Authorization';
    }
    return undefined;
  }

  /** A response head's Set-Cookie, to the jar (with one). */
  tellCookies(url: string, headers: ResponseHeaders): void {
    tellJar(this.cookies!, url, headers);
  }

  /**
   * A replay of a body still being read waits for the rest of it (TeeBody): a source that fails
   * fails the leg, as it would while being written. The wait is part of the leg: the caller's abort
   * and the handshake's clock (which aborts through the sink, R3) end it, so a source that stalls
   * ends the handshake like a stalled leg and its waiters take it over (R2).
   */
  #settleBody(
    job: Job,
    extra: Record<string, string>,
    classify: (status: number, headers: ResponseHeaders) => Verdict,
    onResult: (r: LegResult) => void,
    path: string | undefined,
    started: ((leg: LegHandler) => void) | undefined,
    clocked: boolean,
  ): void {
    job.sink.unlessAborted(job.body.settle!()).then(
      () => this.#send(job, extra, classify, onResult, path, started, clocked),
      (error: Error) => onResult({ kind: 'failed', error }),
    );
  }

  /** When undici is about to write a leg: not for an aborted caller, nor on a reconnected Client (C8). */
  checkStart(job: Job, controller: Dispatcher.DispatchController): void {
    // The caller aborted before undici started the request (its abort found no controller yet).
    if (job.sink.aborted) controller.abort(job.sink.reason!);
    else if (this.#connections > 1 || this.closed) controller.abort(new StaleConnectionError());
  }

  /** A leg's result, once it is known: the caller's abort stops reaching it, and R5's refused streams move. */
  settleLeg(job: Job, r: LegResult): LegResult {
    // The caller's abort reaches the leg until its response has been delivered in full. (`then`, not
    // `finally`: `done` never rejects, and `finally` makes two closures and a promise more per request.)
    if (r.kind === 'delivered') {
      const off = () => job.sink.onAbort(undefined);
      r.done.then(off, off);
    } else job.sink.onAbort(undefined);
    // R5: a stream above the GOAWAY's last-stream-id was not processed: run it on a new session.
    if (r.kind === 'failed' && r.error === this.#goaway) {
      // (The reference server's IIS mode resets a refused stream besides its GOAWAY
      // HTTP_1_1_REQUIRED, so in the H2 tests the leg fails with that reset, not here.)
      const http1 = this.#state.kind === 'closed' && this.#state.http1Required === true;
      return { kind: 'failed', error: http1 ? new Http1RequiredError() : new StaleConnectionError() };
    }
    return r;
  }

  /**
   * R1: undici's error for an HTTP/2 stream the server reset (RST_STREAM) after the response head
   * reached the caller (`at` undefined), before any response (`'before'`), or after the head of the
   * agent's own 401/407 leg of this status, drained between a handshake's legs (`at` the status),
   * as a ConnectionClosedError (ProxyClosedError through a forwarding proxy) naming the code, the cut
   * response and the fix, undici's error its cause; so too, over HTTP/1.1, a connection closed
   * partway through such a 401/407 (`at` the status); any other error as is. Never sent again: the
   * server may have acted on the request (only REFUSED_STREAM says it did not).
   */
  cutShort(job: Job, err: Error, at?: 'before' | number): Error {
    const code = streamResetCode(err);
    const { method } = job.dispatchOptions;
    let options: ConnectionClosedOptions;
    if (code !== undefined) {
      const challenge = typeof at === 'number' ? { challenge: at } : {};
      const streamReset = { code, idempotent: mayGoTwice(job), afterHead: at === undefined, ...challenge };
      options = { cause: err, streamReset };
    } else if (typeof at === 'number') {
      // HTTP/1.1: the connection closed partway through a challenge's body (LegHandler: socketClosed).
      options = { cause: err, challengeCut: { status: at, idempotent: mayGoTwice(job) } };
    } else return err;
    return this.#forward
      ? new ProxyClosedError(this.#forward.route.proxy.origin, method, options)
      : new ConnectionClosedError(job.origin, method, options);
  }

  /** Requests go straight to the origin's connection (not rewritten for a forwarding proxy). */
  get sendsDirect(): boolean {
    return this.#forward === undefined;
  }

  /**
   * The fast path (C2): writes `job` bare, with the caller's own dispatch options (the Client
   * ignores their `origin`) and the cookie jar's Cookie, to `handler`. An error when it cannot:
   * the session has ended (R5), or the jar threw (CookieStoreError).
   */
  dispatchAsGiven(job: Job, handler: Dispatcher.DispatchHandler): Error | undefined {
    if (this.closed) return new StaleConnectionError();
    const given = job.dispatchOptions;
    // A stream goes through its tee (kept for a replay, C10); other bodies as the caller gave them.
    const body = job.body.asIs ? undefined : { body: job.body.take() as Dispatcher.DispatchOptions['body'] };
    // HEAD would otherwise close the HTTP/1.1 connection and lose a connection-bound handshake.
    const reset = given.method === 'HEAD' && this.protocol !== 'h2' ? { reset: false } : undefined;
    // With a jar that has cookies for this URL: the request's headers as #send writes them, with
    // the jar's Cookie (copied only then), so that the jar keeps the fast path (C2, C10).
    let cookies: { headers: HeaderMap } | undefined;
    if (this.cookies) {
      const jar = jarCookie(this.cookies, cookieUrlOf(job));
      if (jar instanceof CookieStoreError) return jar;
      if (jar) cookies = { headers: { ...job.headers, cookie: withJarCookie(job.headers.cookie, jar) } };
    }
    const opts = body || reset || cookies ? { ...given, ...body, ...reset, ...cookies } : given;
    if (logging) log.leg('%s job %d fast %s %s', this.id, job.id, given.method, this.protocol ?? '?');
    try {
      this.client.dispatch(opts, handler);
    } catch (err) {
      return err as Error;
    }
    return undefined;
  }
}

/** The URL a cookie jar is asked and told for `job`: its origin as named (Job.site), path and query. */
export const cookieUrlOf = (job: Job): string => `${job.site}${job.dispatchOptions.path}`;

/**
 * H5: what a forwarding proxy answered, undici could not read as HTTP/1.1 (its parser's error, or
 * a length that does not match): the proxy's protocol error — the same fault through a CONNECT
 * tunnel is one — naming it and the origin, with a TLS record's hint (an https:// proxy given as
 * http://). A proxy may pass the origin's bytes on as they came: said too.
 */
function forwardedFraming(proxy: string, origin: string, err: Error): ProxyProtocolError {
  const tls = /^[\x15\x16]\x03/.test(String((err as { data?: unknown }).data ?? ''));
  return new ProxyProtocolError(
    proxy,
    tls
      ? `it answered in TLS, not HTTP: an https:// proxy given as http://? (${err.message})`
      : `its answer to a request forwarded to ${origin} cannot be read as HTTP/1.1 (${err.message}): the proxy's own, or the origin's passed on as it came`,
    { cause: err },
  );
}
