/**
 * Upgrade (WebSocket) and CONNECT requests (H5, H1). They end in a raw socket, not a response, so
 * they cannot share the agent's sessions: each one gets its own undici `Client` with one HTTP/1.1
 * connection (`pipelining: 1`), made through the configured proxy's CONNECT tunnel (with proxy
 * authentication, src/proxy/tunnel.ts) when there is one. When the server answers 401, the
 * handshake's legs go on that same connection — intermediate 401 bodies drained, not aborted
 * (aborting destroys an HTTP/1.1 socket) unless too large or too slow (limits.maxChallengeBodyBytes,
 * limits.handshakeTimeout: the upgrade fails) — and the caller sees only the final answer: the
 * upgraded socket, or a response.
 */
import { once } from 'node:events';
import type { Socket } from 'node:net';
import type { ConnectionOptions, TLSSocket } from 'node:tls';
import { type buildConnector, Client, type Dispatcher } from 'undici';
import { prepareBody, preparedBody } from '../body/replayable.ts';
import { readAuthenticationInfo, readChallenges } from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import { type ConnectTo, routedConnector } from '../connect-to.ts';
import { jarCookie, tellJar, withJarCookie } from '../cookie-jar.ts';
import type { Deadline } from '../deadline.ts';
import {
  ConnectionClosedError,
  CookieStoreError,
  closedUnder,
  HandshakeTimeoutError,
  InvalidTokenError,
  LegLimitError,
  MultilegError,
  ownCopy,
} from '../errors.ts';
import { handshakeClock, proofRequired, unansweredMayCount } from '../handshake/handshake.ts';
import { type HeldResponse, replayHeld } from '../handshake/leg.ts';
import { UserSink } from '../handshake/user-sink.ts';
import { type HeaderMap, saysClose } from '../headers.ts';
import { log } from '../log.ts';
import {
  atOpening,
  cannotRunHere,
  carriesPassword,
  challengeAsks,
  type MechanismSet,
  sentPassword,
  TRANSPORT,
} from '../mechanisms/registry.ts';
import {
  type Holder,
  type LegInfo,
  type Mechanism,
  type MechanismContext,
  NOT_YET_CONNECTED,
} from '../mechanisms/types.ts';
import {
  type ClientCertificate,
  type ClientCertificateSelector,
  type CookieStore,
  type Limits,
  portOf,
  unbracketed,
} from '../options.ts';
import type { ProxyResolver } from '../proxy/options.ts';
import { connectThroughTunnel } from '../proxy/tunnel.ts';
import { tlsServerEndPoint } from '../session/channel-binding.ts';
import {
  afterRefusal,
  answerCertificateDemand,
  asksSelectorAgain,
  type CertificateDemand,
  ClientCertificateRequiredError,
  certificateRefusal,
  certificateRefused,
  demandsCertificate,
  selectCertificate,
} from '../session/client-certificate.ts';
import { openedUnder, siteServername, unverifiedTls } from '../session/connector.ts';
import type { CredentialProof, ProofOutcome, Ticket } from '../session/credential-proof.ts';
import {
  firstChallenge,
  unusable as foundUnusable,
  heldBackAnswer,
  publishUnanswered401,
  renewFindings,
  type SchemeFindings,
  withheld401,
} from '../session/first-challenge.ts';
import { optionsMayGoTwice } from '../session/job.ts';
import { kdcSilent, type OriginMemory } from '../session/origin-memory.ts';
import { type OriginPool, poolKey } from '../session/origin-pool.ts';
import { KEEP_ALIVE_THRESHOLD_MS } from '../session/session.ts';
import { CleartextCredentialsError, type WithheldReason } from '../trust/policy.ts';

type Controller = Dispatcher.DispatchController;
type Headers = Record<string, string | string[]>;

/** What {@link UpgradeDispatcher} needs from the agent. */
export interface UpgradeOptions {
  /** TLS options for origins. */
  readonly connect: ConnectionOptions;
  /** The agent's `connectTo`: where a direct connection goes (a tunnel's proxy carries it for its own). */
  readonly connectTo?: ConnectTo;
  readonly proxy: ProxyResolver;
  readonly limits: Limits;
  /** undici's, as on the agent's sessions. */
  readonly headersTimeout: number;
  readonly bodyTimeout: number;
  readonly mechanisms: MechanismSet;
  /** Presented in the TLS handshake of upgrades that may carry credentials (T3). */
  readonly handshakeCertificate?: ClientCertificate;
  /**
   * The agent's certificate selector (a certificate given as such is one too): asked at a `Transport`
   * challenge to an upgrade that may carry credentials (T3, S1), as for a request.
   */
  readonly clientCertificate?: ClientCertificateSelector;
  /** The selector is the caller's: it is told the server's acceptable CAs (the origin's probe). */
  readonly askAcceptableIssuers?: boolean;
  /**
   * The origin's certificate as its requests present it, and its acceptable-CAs probe, shared with
   * its requests (T3): a certificate the selector chose, for a request or an upgrade, is the origin's.
   */
  readonly transportOf?: (origin: string, site: string) => Pick<OriginPool, 'memory' | 'certificateRequest'>;
  /** The certificate the origin's requests present now (chosen by the selector), if the agent knows the origin. */
  readonly certificateAt?: (origin: string, site: string) => ClientCertificate | undefined;
  /**
   * Whether the agent's credentials work at an origin, shared with its requests: an upgrade's
   * handshake waits for another one proving them, and none runs while they are refused (R4).
   */
  readonly proofOf?: (origin: string, site: string) => CredentialProof;
  /**
   * What the agent learnt of an origin's schemes, shared with its requests (R4): schemes that could
   * not run there lately (a silent KDC among them) are skipped, and an upgrade's findings kept.
   */
  readonly schemesOf?: (origin: string, site: string) => Pick<OriginMemory, 'unusable' | 'markUnusable'>;
  /** The agent's cookie jar: asked for each leg's Cookie, told each head's Set-Cookie (the 101's too). */
  readonly cookies?: CookieStore;
  /** The agent's `markPrivate`: a non-101 answer to the agent's identity gets `Cache-Control: private` (S6). */
  readonly markPrivate?: boolean;
  /**
   * The agent's `deliver401`: a 401 whose offered schemes cannot run here (no Kerberos ticket…) is
   * the caller's response, told why on `multileg:unanswered`, as a request's is; else the typed error.
   */
  readonly deliver401?: boolean;
  /**
   * Told who an upgrade's handshake proved, where the credentials live outside the agent (a Kerberos
   * ticket): whose logins the cookie jar may then hold, as a request's handshake tells it (S6).
   */
  readonly succeededAs?: (held: Holder) => void;
}

/** One leg's outcome, as far as the handshake is concerned. */
type LegOutcome =
  /** `held`: the 401 in full, when the classifier asked to hold it (it may turn out the caller's). */
  | { readonly kind: 'challenged'; readonly headers: Headers; readonly held?: HeldResponse }
  /** `unproved`: a final answer delivered without the proof the mechanism wants (M2): it proved nothing. */
  | { readonly kind: 'delivered'; readonly status: number; readonly unproved?: true }
  /**
   * `unanswered`: written, and no response head came (a timeout, a close): R4 may count it. `cut`:
   * the connection closed partway through the body of a challenge the agent was to answer (its status).
   */
  | { readonly kind: 'failed'; readonly error: Error; readonly unanswered?: true; readonly cut?: number };

/**
 * The one connection an upgrade's Client holds at a time, as its connector made it: a connection-bound
 * handshake's next leg answers the challenge of one connection and goes on no other (H1).
 */
interface Line {
  /** tls-server-end-point of the current connection's certificate (M1, M5). */
  channelBinding?: Buffer | undefined;
  /** Why the current connection's TLS proved no server (S4/M4: ConnectionInfo.unverifiedTls). */
  unverifiedTls?: string | undefined;
  /** Connections made so far: the current one's number. */
  connections: number;
  socket?: Socket;
  /** A leg bound to the current connection is being sent: a new connection must not carry it. */
  bound: boolean;
  /**
   * Opens the next connection ahead of undici, which takes it for the next leg: a first token bound
   * to the connection (Kerberos channel bindings, M5) is made with the certificate of the one it goes on.
   */
  open(): Promise<void>;
  /** The connection {@link open} made, until undici takes it. */
  spare?: Socket | undefined;
  /** The upgrade ended: a connection {@link open} makes later is closed at once. */
  ended?: boolean;
  /**
   * Aborted when the upgrade ends (the caller's abort, the agent's destroy, or done): a CONNECT
   * still being made for it through the proxy ends then, its waits too (R1: a refusal memory's recall).
   */
  readonly given: AbortController;
  /** The client certificate the connections made from now present (T3), if any. */
  certificate?: ClientCertificate | undefined;
  /** The current connection has answered something (false once it closed, and before the next is made). */
  answered: boolean;
}

/** The connector's refusal of a new connection for a leg bound to the one that closed (internal). */
class BoundLegRefused extends Error {}

/** A running authentication: the mechanism, its context and what it sent last. */
interface Auth {
  readonly mechanism: Mechanism;
  readonly context: MechanismContext;
  header: string;
  legs: number;
}

/**
 * Carries upgrade and CONNECT requests for the agent; see the module comment. One Client per
 * request: an upgraded connection belongs to its caller, and an authenticated one to its identity.
 */
export class UpgradeDispatcher {
  readonly #options: UpgradeOptions;
  readonly #clients = new Set<Client>();
  /** The upgrades running, each until its caller has the socket or an answer (or an error). */
  readonly #running = new Map<
    Promise<void>,
    { readonly sink: UserSink; readonly origin: string; readonly site: string }
  >();

  constructor(options: UpgradeOptions) {
    this.#options = options;
  }

  /**
   * Starts `opts` (its `headers` normalised) for `origin`; `credentialsAllowed`: the agent's
   * credentials may answer a 401 and its certificate go in the handshake (S1, S6: the request is
   * the agent's own); `withJar`: the agent's cookie jar goes with it (not a caller's own identity);
   * `withheld`: why the agent's credentials are withheld (S1, S4, S5): a 401 they could answer is
   * published on `multileg:withheld`, as a request's is, and over cleartext (S4) fails the upgrade
   * with CleartextCredentialsError. `site`: the origin as the caller named it, whose cookies the
   * jar gives (behind undici's dns interceptor the name, `origin` the address: S1/S6).
   */
  dispatch(
    origin: string,
    opts: Dispatcher.DispatchOptions,
    headers: HeaderMap,
    handler: Dispatcher.DispatchHandler,
    credentialsAllowed: boolean,
    withJar = false,
    withheld?: WithheldReason,
    site = origin,
  ): boolean {
    const sink = new UserSink(handler, undefined, '', '', this.#options.markPrivate !== false);
    sink.begin();
    if (sink.aborted) return true;
    const { client, line } = this.#client(origin, site, credentialsAllowed);
    const jar = withJar ? this.#options.cookies : undefined;
    const cookieUrl = `${site}${opts.path}`;
    const onUpgrade = (leg: Controller, status: number, headers: Headers, socket: Socket) => {
      if (jar) tellJar(jar, cookieUrl, headers);
      sink.upgrading(leg);
      handler.onRequestUpgrade?.(sink.controller, status, headers, socket);
    };
    const grant = { credentialsAllowed, withheld, site };
    const running: Promise<void> = this.#run(
      client,
      line,
      origin,
      opts,
      headers,
      sink,
      grant,
      onUpgrade,
      jar && { jar, url: cookieUrl },
    )
      .catch((err: Error) => sink.fail(err))
      .finally(() => {
        this.#running.delete(running);
        this.#clients.delete(client);
        // After an upgrade the socket is the caller's: undici has detached it from the Client.
        client.close().catch(() => {});
        line.ended = true;
        line.given.abort(new Error('the upgrade ended'));
        line.spare?.destroy();
      });
    this.#running.set(running, { sink, origin, site });
    return true;
  }

  /** The pools (poolKey) upgrades are running for (each may hold the proof of the credentials there: R4). */
  runningOrigins(): Set<string> {
    return new Set([...this.#running.values()].map((r) => poolKey(r.origin, r.site)));
  }

  /**
   * Resolves once the running upgrades have ended (the agent's close: those it has end first, each
   * bounded by its own limits); their Clients close as each ends.
   */
  async close(): Promise<void> {
    await Promise.all(this.#running.keys());
  }

  /** Ends the running upgrades with `err`, a wait for a mechanism or a leave as much as a leg on the wire. */
  async destroy(err: Error): Promise<void> {
    for (const { sink } of this.#running.values()) sink.abort(err);
    await Promise.all([...this.#clients].map((c) => c.destroy(err).catch(() => {})));
    await Promise.all(this.#running.keys());
  }

  /**
   * T3: the agent's selector's certificate for `origin`'s Transport `challenge` (undefined: declined),
   * the server's acceptable CAs told a selector of the caller's (the origin's probe, shared with its
   * requests); the caller's abort, or the agent's destroy, ends the wait.
   * @throws {HandshakeTimeoutError} when the probe and the selector do not answer within limits.handshakeTimeout.
   * @throws {ClientCertificateError} when the selector throws or gives an unusable certificate.
   */
  #select(origin: string, site: string, challenge: Challenge, sink: UserSink): Promise<ClientCertificate | undefined> {
    const { clientCertificate, askAcceptableIssuers, transportOf, limits } = this.#options;
    const probe =
      askAcceptableIssuers && transportOf ? () => transportOf(origin, site).certificateRequest() : undefined;
    // The selector decides for the origin the caller named (the name behind undici's dns interceptor, S1).
    return sink.unlessAborted(
      selectCertificate(clientCertificate!, site, challenge, limits.handshakeTimeout, probe, () =>
        sink.aborted ? (sink.reason ?? undefined) : undefined,
      ),
    );
  }

  /**
   * T3: a connection failed as one whose server requires a certificate in TLS: the origin's probe
   * confirms it and the selector (if any) is asked, within limits.handshakeTimeout, as for a request;
   * the caller's abort, or the agent's destroy, ends the wait.
   */
  #demand(origin: string, site: string, sink: UserSink): Promise<CertificateDemand> {
    const { clientCertificate, transportOf, limits } = this.#options;
    return sink.unlessAborted(
      answerCertificateDemand(
        clientCertificate,
        site,
        limits.handshakeTimeout,
        () => transportOf!(origin, site).certificateRequest(),
        () => (sink.aborted ? (sink.reason ?? undefined) : undefined),
      ),
    );
  }

  /**
   * T3: the server refused the certificate `line` presents (`refusal`: a TLS alert's code, or
   * `'closed'`), as a request's error says it. One the selector chose is the origin's no longer (its
   * requests and next upgrades present none until it is asked again), and the selector is asked
   * again at once, once per upgrade (`once`), as for a request: the other certificate it gives is
   * returned, for the upgrade to present on a new connection. One given as such stays.
   * @throws {ClientCertificateRefusedError} when the selector is not asked again, or gives none or the same.
   */
  async #refused(
    origin: string,
    site: string,
    line: Line,
    refusal: string,
    cause: Error,
    sink: UserSink,
    once: () => boolean,
  ): Promise<ClientCertificate> {
    // (Only a selector of the caller's is told the server's CAs: askAcceptableIssuers says it is one.)
    const chosen = this.#options.askAcceptableIssuers === true;
    log.agent('%s upgrade: the server refused the client certificate (%s)', origin, refusal);
    const memory = chosen ? this.#options.transportOf?.(origin, site).memory : undefined;
    const refused = line.certificate!;
    const error = certificateRefused(origin, memory, refused, chosen, {
      alert: refusal === 'closed' ? undefined : refusal,
      cause,
    });
    // (An upgrade has no body to lose: after a close it may go again, as a GET.)
    if (!this.#options.transportOf || !asksSelectorAgain(chosen, refusal === 'closed', true, once)) throw error;
    const next = afterRefusal(await this.#demand(origin, site, sink), refused, error, memory);
    if (next instanceof Error) throw next;
    return next;
  }

  /** A one-connection Client to `origin`, through the proxy's CONNECT tunnel when one applies. */
  #client(origin: string, site: string, credentialsAllowed: boolean): { client: Client; line: Line } {
    const { connect, limits, handshakeCertificate, certificateAt } = this.#options;
    const line = { connections: 0, bound: false, answered: false, given: new AbortController() } as Line;
    // The agent's certificate is a credential: only where credentials may go (T3, S1). The one the
    // origin's requests present (the selector's choice), else one given as such.
    if (credentialsAllowed) line.certificate = certificateAt?.(origin, site) ?? handshakeCertificate;
    // (Read at each connection: a Transport challenge moves the upgrade to one presenting a certificate.)
    const tlsNow = (): ConnectionOptions => (line.certificate ? { ...connect, ...line.certificate } : connect);
    // A forwarding proxy cannot carry an upgraded byte stream reliably: upgrades always tunnel.
    const route = this.#options.proxy.route(origin, site);
    // An upgrade is an HTTP/1.1 affair (undici speaks no extended CONNECT over HTTP/2): ALPN offers
    // only http/1.1, here as through a tunnel, or an h2 server would take the connection to HTTP/2.
    const base = () =>
      routedConnector(
        { ...(tlsNow() as buildConnector.BuildOptions), maxCachedSessions: 0, allowH2: false },
        this.#options.connectTo,
      );
    const connected = (callback: buildConnector.Callback) => (err: Error | null, socket: Socket | null) => {
      if (err) {
        callback(err, null);
        return;
      }
      // undici's connector gives a socket whenever it gives no error.
      const cert = (socket as Partial<TLSSocket>).getPeerX509Certificate?.();
      line.channelBinding = tlsServerEndPoint(cert);
      line.unverifiedTls = unverifiedTls(socket!);
      line.connections += 1;
      line.socket = socket!;
      line.answered = false;
      socket!.once('close', () => {
        if (line.socket === socket) line.answered = false;
      });
      callback(null, socket!);
    };
    const dial: buildConnector.connector = (opts, callback) => {
      if (!route) {
        base()(opts, connected(callback) as buildConnector.Callback);
        return;
      }
      const port = portOf(opts);
      connectThroughTunnel(route.proxy, { ...opts, port }, tlsNow(), ['http/1.1'], limits, line.given.signal).then(
        // (One upgrade's connection, the caller's once upgraded: no pool keeps it to retire it, S6.)
        ({ socket }) => connected(callback)(null, socket),
        (err: Error) => callback(err, null),
      );
    };
    const connector: buildConnector.connector = (opts, callback) => {
      // (Called back on a later tick, as a connection is: undici's Client, still in the loop that
      // asked for it, ignores a connection given at once and never writes the request.)
      // H1: the connection whose challenge this leg answers closed as it was sent: not on another one.
      if (line.bound) {
        process.nextTick(callback, new BoundLegRefused(), null);
        return;
      }
      const spare = line.spare;
      line.spare = undefined;
      // S1: opened under the site's name; undici asking under another gets a connection of its own.
      if (spare && !spare.destroyed && handsOver(opts.servername)) {
        process.nextTick(callback, null, spare);
        return;
      }
      spare?.destroy();
      dial(opts, callback);
    };
    const url = new URL(origin);
    // What undici's Client gives its connector for this origin (its host unbracketed, as undici does),
    // under the server name the upgrade's request names (behind undici's dns interceptor the name).
    const servername = siteServername(origin, site);
    const handsOver = openedUnder(origin, connect, servername);
    const target = {
      hostname: unbracketed(url.hostname),
      host: url.host,
      protocol: url.protocol,
      port: url.port,
      ...(servername ? { servername } : {}),
    };
    line.open = () =>
      new Promise<void>((resolve, reject) =>
        dial(target as buildConnector.Options, (err, socket) => {
          if (err) reject(err);
          else if (line.ended) {
            // Its caller gave up meanwhile (an abort, the handshake's clock).
            socket!.destroy();
            reject(new Error('upgrade ended'));
          } else {
            line.spare = socket!;
            resolve();
          }
        }),
      );
    const { headersTimeout, bodyTimeout } = this.#options;
    const client = new Client(origin, {
      pipelining: 1,
      connect: connector,
      allowH2: false,
      headersTimeout,
      bodyTimeout,
      // A challenge's connection kept for the next leg under a short Keep-Alive timeout (H1).
      keepAliveTimeoutThreshold: KEEP_ALIVE_THRESHOLD_MS,
    });
    this.#clients.add(client);
    return { client, line };
  }

  async #run(
    client: Client,
    line: Line,
    origin: string,
    opts: Dispatcher.DispatchOptions,
    headers: HeaderMap,
    sink: UserSink,
    {
      credentialsAllowed,
      withheld,
      site,
    }: {
      readonly credentialsAllowed: boolean;
      readonly withheld: WithheldReason | undefined;
      /** The origin as the caller named it: its pool's proof, schemes and certificate (see dispatch). */
      readonly site: string;
    },
    onUpgrade: (leg: Controller, status: number, headers: Headers, socket: Socket) => void,
    cookies: { readonly jar: CookieStore; readonly url: string } | undefined,
  ): Promise<void> {
    const { limits } = this.#options;
    // The agent's, read again when setCredentials replaces them under the handshake (below).
    let mechanisms = this.#options.mechanisms;
    const prepared = prepareBody(opts.body, limits.maxReplayBodyBytes);
    // (A body read ahead of time, e.g. a stream: undici's upgrade() and connect() send none.)
    const body = prepared instanceof Promise ? await preparedBody(prepared, sink, limits.queueTimeout) : prepared;
    let answering = credentialsAllowed && body.replayable;
    // Presenting the agent's certificate (T3): set where credentials may go (see #client), and once
    // the selector chose one at a Transport challenge.
    let certified = line.certificate !== undefined && origin.startsWith('https:');
    // Leave to send the agent's credentials at this origin, shared with its requests (R4); looked
    // up at the first 401 (an upgrade no one challenges leaves the agent no origin memory).
    const proofOf = this.#options.proofOf;
    let proof: CredentialProof | undefined;
    const proofHere = () => (proof ??= proofOf?.(origin, site));
    let ticket: Ticket | undefined;
    let proved: ProofOutcome = 'none';
    // What the mechanisms are told (the SPN's host, NTLM's target name, the caller's passwordAllowed):
    // the origin as the caller named it, behind undici's dns interceptor the name (S1).
    const url = new URL(site);
    const unsure = origin.startsWith('https:') && this.#options.connect.rejectUnauthorized === false;
    const legInfo = (): LegInfo => {
      // S4/M4: no connection yet under rejectUnauthorized: false counts as one that proved no server.
      const unverified = line.connections > 0 ? line.unverifiedTls : unsure ? NOT_YET_CONNECTED : undefined;
      return {
        origin: site,
        hostname: unbracketed(url.hostname),
        port: portOf(url),
        method: opts.method,
        path: opts.path,
        ...(line.channelBinding ? { channelBinding: line.channelBinding } : {}),
        ...(unverified !== undefined ? { unverifiedTls: unverified } : {}),
        proxy: false,
      };
    };
    const excluded = new Set<string>();
    /** The schemes this upgrade skips and why: its findings and the origin's, as a request keeps them. */
    const found: SchemeFindings = { excluded, lastUnusable: undefined, unusableWhy: new Map(), foundWith: mechanisms };
    // T3: a Transport challenge is answered by the selector, for an https upgrade that may carry
    // credentials (S1: a trusted origin, no cross-origin hop); once, and not by a connection that
    // presents a certificate already (as a request's session).
    const maySelect =
      credentialsAllowed && this.#options.clientCertificate !== undefined && origin.startsWith('https:');
    let selected = false;
    /** T3: the selector may be asked again after the server refused its certificate: once per upgrade. */
    let reasked = false;
    const reaskOnce = () => {
      if (reasked) return false;
      reasked = true;
      return true;
    };
    /** T3: the upgrade goes again on a new connection presenting `certificate`, the origin's now (its requests present it too). */
    const present = async (certificate: ClientCertificate) => {
      const memory = this.#options.transportOf?.(origin, site).memory;
      if (memory) memory.clientCertificate = certificate;
      line.certificate = certificate;
      certified = true;
      await sink.unlessAborted(closed(line.socket));
    };
    if (!maySelect || line.certificate !== undefined) excluded.add(TRANSPORT);
    // What the origin's requests and upgrades found unusable lately (R4), read at the first 401 (as
    // the proof: no memory for an upgrade no one challenges).
    const schemesOf = this.#options.schemesOf;
    let schemes: Pick<OriginMemory, 'unusable' | 'markUnusable'> | undefined;
    const schemesHere = () => (schemes ??= schemesOf?.(origin, site));
    let recalled = false;
    const recall = () => {
      if (recalled) return;
      recalled = true;
      for (const [scheme, error] of schemesHere()?.unusable() ?? []) foundUnusable(found, scheme, error);
    };
    /**
     * setCredentials replaced the agent's credentials: the new ones answer from here, and what this
     * upgrade found unusable with the old ones goes (R4), read again from the origin's memory; as a
     * request's findings (renewFindings). Returns whether they were replaced.
     */
    const renew = (): boolean => {
      if (this.#options.mechanisms === mechanisms) return false;
      mechanisms = this.#options.mechanisms;
      renewFindings(found, mechanisms);
      recalled = false;
      return true;
    };
    /** A scheme could not run here: skipped by this upgrade, and by the origin's requests and upgrades a while. */
    const unusable = (schemeKey: string, error: Error) => {
      foundUnusable(found, schemeKey, error);
      schemesHere()?.markUnusable(schemeKey, error);
    };
    const deliver401 = this.#options.deliver401 === true;
    /** The context whose step runs now: what it waits on names a timeout's cause (a silent KDC, R3). */
    let stepping: MechanismContext | undefined;
    let auth: Auth | undefined;
    /** The challenges the running handshake started from. */
    let opened: readonly Challenge[] = [];
    // R3: the handshake is bounded from the first answered 401 (the sink's abort reaches the leg).
    let clock: Deadline<HandshakeTimeoutError> | undefined;
    /** The connection (its number, {@link Line}) whose challenge the next leg answers, if it answers one. */
    let boundTo: number | undefined;
    /** The connection the last swallowed challenge came on. */
    let challengedOn = 0;
    /** That challenge said `Connection: close`: the next leg goes on a new connection. */
    let closing = false;
    let startedOver = false;
    /**
     * H1: the connection whose challenge the next leg answers (an NTLM AUTHENTICATE) closed: that leg
     * goes on no other connection, whose server context never saw the handshake (it would count the
     * password as wrong, R4). The handshake starts over once on a new connection (a server's
     * keep-alive limit met mid-handshake); a server that closes again ends it with a typed error.
     */
    const startOver = (a: Auth): Promise<Auth> => {
      if (startedOver) throw new ConnectionClosedError(origin, opts.method, { afterChallenge: a.mechanism.scheme });
      startedOver = true;
      boundTo = undefined;
      a.context.dispose?.();
      log.agent('%s upgrade: %s: the connection closed after its challenge: starting over', origin, a.mechanism.scheme);
      return start(opened);
    };
    const legs = async (): Promise<void> => {
      for (;;) {
        if (renew() && auth) {
          // setCredentials replaced the credentials mid-handshake: nothing more of the old ones goes
          // (S6, their next token: an NTLM AUTHENTICATE of the old password). Start over, bare, with
          // the new ones and leave of their own (R4); the handshake's clock still bounds it (R3).
          log.agent('%s upgrade: credentials replaced mid-handshake: starting over', origin);
          if (ticket) proof!.settle(ticket, 'none');
          ticket = undefined;
          auth.context.dispose?.();
          auth = undefined;
          boundTo = undefined;
        }
        if (auth && boundTo !== undefined && (boundTo !== line.connections || line.socket?.destroyed !== false)) {
          auth = await startOver(auth);
          continue;
        }
        const authorization = auth?.header;
        /** What this leg's 401 asked, as the classifier below read it (its callback sets it). */
        let asks = 'refused' as ReturnType<typeof challengeAsks> | 'cleartext' | 'unusable';
        // The jar is asked per leg: a cookie set on a challenge goes on the next leg.
        const cookie = cookies && jarCookie(cookies.jar, cookies.url);
        if (cookie instanceof CookieStoreError) throw cookie;
        // A leg with the agent's Authorization, its jar's Cookie or over its certificate's TLS
        // connection: the caller's answer is the agent's identity's, which a cache above does not see (S6).
        if (authorization !== undefined || cookie || certified) sink.asAgent = true;
        line.bound = auth !== undefined && boundTo !== undefined;
        const outcome = await this.#leg(
          client,
          opts,
          cookie ? { ...headers, cookie: withJarCookie(headers.cookie, cookie) } : headers,
          body.take(),
          authorization,
          sink,
          (status, h) => {
            line.answered = true;
            if (cookies) tellJar(cookies.jar, cookies.url, h);
            if (status !== 401) return false;
            const offered = readChallenges(h, false);
            // Withheld from this upgrade (S1, S4, S5) a challenge they could answer: over cleartext
            // swallowed (nothing of it reaches the caller) and refused with a typed error below (S4);
            // otherwise the caller's, said why, as a request's is.
            if (withheld !== undefined && mechanisms.choose(offered)) {
              if (!withheld401(origin, opts.path, h, withheld)) return false;
              asks = 'cleartext';
              return true;
            }
            if (!answering) return false;
            challengedOn = line.connections;
            closing = saysClose(h.connection);
            // Refused here lately (R4): the caller gets the server's 401, as a request does, told why.
            if (!auth && proofHere()?.refused) {
              if (mechanisms.choose(offered)) withheld401(origin, opts.path, h, 'refused-lately', proof!.refusedFor);
              return false;
            }
            if (!auth) {
              renew();
              recall();
              // deliver401: held in full, to be the caller's if what it offers cannot run here (the
              // upgrade is sent once, as a request is); a Transport challenge too, the caller's as it
              // came if the selector declines and nothing else answers (sent once: no second send).
              const verdict = firstChallenge(mechanisms, offered, found, deliver401, true);
              // Only schemes found unusable here lately are offered: the upgrade fails with why, at
              // once, as a request does (R4), rather than trying them again; deliver401: this 401 is
              // the caller's, told why.
              if (verdict === 'tell') publishUnanswered401(origin, opts.path, h, found.unusableWhy);
              if (verdict === 'unusable') asks = 'unusable';
              // R4: held too where the refusal memory may hold the password back (mayRecall): this
              // 401 is then the answer, as a request's is (the upgrade sent once, not again bare).
              if (verdict === 'answer' && proofHere()?.mayRecall) return 'hold';
              return verdict === 'hold' ? 'hold' : verdict === 'answer' || verdict === 'unusable';
            }
            const next = offered.find((c) => c.schemeKey === auth!.mechanism.scheme.toLowerCase());
            // A bare challenge after our credentials is the server's final "no": the caller gets it;
            // so is an SPNEGO reject (a token, but no next leg), as for a request — unless it refused
            // credentials the mechanism has renewed since (a ticket under a rotated key): run again.
            asks = challengeAsks(auth.context, next);
            return asks !== 'refused';
          },
          // (Nothing to verify in an answer to the opening leg: no one was authenticated.)
          auth && !opening(auth) ? (status, h) => verified(auth!, status, h, legInfo()) : undefined,
          onUpgrade,
        );
        line.bound = false;
        if (outcome.kind === 'delivered') {
          if (auth) {
            // Delivered without the server's proof (a 403 with no AP-REP): nothing was proved, so
            // neither the origin's leave nor the identity records it (M2, S6), as for a request.
            proved = outcome.unproved ? 'none' : outcomeFor(auth, outcome.status);
            const { mechanism, context } = auth;
            if (proved === 'success' && context.identity !== undefined && mechanism.holdsCredentials) {
              this.#options.succeededAs?.({ mechanism, identity: context.identity });
            }
          }
          return;
        }
        if (outcome.kind === 'failed') {
          // Refused by the connector before anything was written (H1, see startOver).
          if (auth && outcome.error instanceof BoundLegRefused) {
            auth = await startOver(auth);
            continue;
          }
          // R4: a leg carrying the password that the server never answered (the clock, undici's
          // headersTimeout, a close; not the caller's abort) may have been counted, as a request's.
          const counted = auth !== undefined && carriesPassword(auth.mechanism, auth.context, auth.legs);
          if (counted && outcome.unanswered && unansweredMayCount(clock?.timedOut === true, outcome.error))
            proved = 'unanswered';
          // The server closed the connection under a written leg: typed, as for a request, saying
          // whether it had answered this handshake's challenges on it and whether the password went.
          // R1/C8: one partway through a challenge's body (its head whole) is typed as a request's is
          // (Session.cutShort's challengeCut): by the connection's peer, the origin (a tunnel's too).
          const error =
            outcome.cut !== undefined && !sink.aborted
              ? new ConnectionClosedError(origin, opts.method, {
                  cause: outcome.error,
                  upgrade: true,
                  challengeCut: { status: outcome.cut, idempotent: optionsMayGoTwice(opts) },
                })
              : outcome.unanswered && !sink.aborted && closedUnder(outcome.error)
                ? new ConnectionClosedError(origin, opts.method, {
                    cause: outcome.error,
                    upgrade: true,
                    ...(challengedOn === line.connections ? { handshake: true } : { fresh: true }),
                    ...(counted ? { unproved: 'Authorization' } : {}),
                  })
                : outcome.error;
          // T3: a connection presenting the agent's certificate failed before answering anything, as
          // one whose server refuses it does (an alert, or a close): typed as a request's refusal.
          const refusal = certified && !line.answered && !sink.aborted ? certificateRefusal(error) : undefined;
          if (refusal !== undefined) {
            const other = await this.#refused(origin, site, line, refusal, error, sink, reaskOnce);
            log.agent('%s upgrade: the selector chose another certificate: presenting it on a new connection', origin);
            await present(other);
            continue;
          }
          // T3: a first connection presenting none failed as one whose server requires a certificate in
          // TLS does: as for a request, the probe confirms it, the selector is asked (told the server's
          // CAs), and the upgrade goes again on a new connection presenting its choice.
          if (
            !auth &&
            !sink.aborted &&
            demandsCertificate(error, {
              agentsOwn: answering,
              origin,
              probes: this.#options.transportOf !== undefined,
              certified,
              answered: line.answered,
              // (The selector asked once already, at a Transport challenge or a demand.)
              transportDone: selected,
              // An upgrade goes as a GET (or CONNECT) with no body to lose: a close counts, as for a GET.
              mayGoTwice: true,
            })
          ) {
            selected = true;
            excluded.add(TRANSPORT);
            const demand = await this.#demand(origin, site, sink);
            if (demand.kind === 'chosen') {
              log.agent('%s upgrade: the server requires a client certificate: presenting the one chosen', origin);
              await present(demand.certificate);
              continue;
            }
            if (demand.kind === 'declined') {
              const selector = this.#options.clientCertificate !== undefined;
              throw new ClientCertificateRequiredError(origin, selector, demand.issuers, { cause: error });
            }
          }
          throw error;
        }
        // S4: trust was decided for `site` (the name behind undici's dns interceptor), so it is named.
        if (asks === 'cleartext') throw new CleartextCredentialsError(site, origin);
        if (asks === 'unusable') throw ownCopy(found.lastUnusable!);
        const challenges = readChallenges(outcome.headers, false);
        if (!auth) {
          const transport = mechanisms.choose(challenges, excluded);
          if (transport && !transport.mechanism) {
            // T3: the selector picks a certificate for this origin (as for its requests: told the
            // server's acceptable CAs, within limits.handshakeTimeout), and the upgrade goes again on a
            // new connection that presents it; declined, the next offered scheme answers, if any.
            selected = true;
            excluded.add(TRANSPORT);
            const certificate = await this.#select(origin, site, transport.challenge, sink);
            if (certificate) {
              log.agent('%s upgrade: Transport: presenting the certificate chosen, on a new connection', origin);
              await present(certificate);
              continue;
            }
            log.agent('%s upgrade: Transport: the selector declined', origin);
            // The same 401 read again without Transport: the first leg's verdict (firstChallenge), with
            // the credentials replaced meanwhile, if they were.
            renew();
            recall();
            const verdict = firstChallenge(mechanisms, challenges, found, deliver401, true);
            if (verdict !== 'answer' && verdict !== 'hold') {
              // Nothing else answers here: the 401 is the caller's, as a request's (no second send);
              // the typed error of a scheme that cannot run here without deliver401.
              if (verdict === 'unusable') throw ownCopy(found.lastUnusable!);
              if (verdict === 'tell') publishUnanswered401(origin, opts.path, outcome.headers, found.unusableWhy);
              // (Held: the classifier holds a 401 it chose Transport for.)
              replayHeld(sink, outcome.held!);
              return;
            }
          }
          const here = proofHere();
          if (here && !ticket) {
            const chosen = mechanisms.choose(challenges, excluded)?.mechanism;
            const admission = await here.enter(chosen?.usesPassword !== false, { sink }, limits);
            if (admission === 'refused') {
              // R4: held back by the refusal memory (or refused meanwhile), or its recall given up at
              // queueTimeout: the 401 that asked is the answer, as a request's (heldBackAnswer), said
              // why — the upgrade sent once; without it held, sent again without them.
              if (outcome.held) {
                heldBackAnswer(origin, opts.path, here, outcome.held.headers, limits.queueTimeout);
                replayHeld(sink, outcome.held);
                return;
              }
              answering = false;
              continue;
            }
            ticket = admission;
          }
          opened = challenges;
          try {
            auth = await start(challenges);
          } catch (err) {
            // deliver401: no offered scheme can run here (start says the last one's reason): the
            // 401 is the caller's, told why, as a request's (it is sent once).
            if (deliver401 && outcome.held && err === found.lastUnusable) {
              publishUnanswered401(origin, opts.path, outcome.held.headers, found.unusableWhy);
              replayHeld(sink, outcome.held);
              return;
            }
            throw err;
          }
          continue;
        }
        if (asks === 'run-again') {
          // As a request's handshake: from its first leg again, with the renewed credentials, on
          // this connection and with the leave it has; the mechanism says so once (R4).
          log.agent('%s upgrade: %s: refused credentials renewed since: running again', origin, auth.mechanism.scheme);
          auth.context.dispose?.();
          auth = await start(opened);
          continue;
        }
        if (auth.legs >= limits.maxLegs) throw new LegLimitError(limits.maxLegs, `${auth.mechanism.scheme} (upgrade)`);
        const next = challenges.find((c) => c.schemeKey === auth!.mechanism.scheme.toLowerCase());
        auth.header = await step(auth, next);
        auth.legs += 1;
        // A connection-bound mechanism's next leg answers this connection's challenge (H1).
        if (auth.mechanism.level !== 'request') boundTo = challengedOn;
      }
    };
    try {
      await legs();
    } finally {
      clock?.stop();
      // However it ended (a 101, a final answer, the caller's abort, the clock): its context is
      // freed now, not when collected (C4: a Kerberos one counts as a handshake in flight till then).
      auth?.context.dispose?.();
      if (ticket) proof!.settle(ticket, proved);
    }

    /** The first leg with credentials: the strongest usable offered scheme (T2). */
    async function start(challenges: readonly Challenge[]): Promise<Auth> {
      // A first leg answers no connection's challenge of ours: any connection may carry it.
      boundTo = undefined;
      for (;;) {
        const chosen = mechanisms.choose(challenges, excluded);
        // Only after a pass that excluded a scheme: the 401 was answered because a mechanism was chosen for it
        // (see `answer` above). The last scheme's own reason names its fix (allowBasicOverHttp, kinit).
        if (!chosen?.mechanism) throw found.lastUnusable!;
        const { mechanism, challenge } = chosen;
        clock ??= handshakeClock(
          limits.handshakeTimeout,
          mechanism.scheme,
          (err) => sink.abort(err),
          undefined,
          () => stepping?.waitingOn,
        );
        // But it may be bound to the connection itself (Kerberos channel bindings, M5): when the one
        // the challenge came on is gone, the next is opened first, its certificate the binding (R3:
        // within the handshake's time).
        if (closing || line.socket?.destroyed !== false) {
          closing = false;
          await sink.unlessAborted(clock.race(line.open()));
        }
        let context: MechanismContext | undefined;
        try {
          context = mechanism.createContext(legInfo());
          const a: Auth = { mechanism, context, header: '', legs: 0 };
          a.header = await step(a, challenge);
          a.legs = 1;
          log.agent('%s upgrade: %s leg 1', origin, mechanism.scheme);
          return a;
        } catch (err) {
          // Its first step failed (or was given up): this context's handshake ends here.
          context?.dispose?.();
          if (cannotRunHere(err)) {
            unusable(challenge.schemeKey, err);
            continue;
          }
          throw err;
        }
      }
    }

    async function step(a: Auth, challenge: Challenge | undefined): Promise<string> {
      stepping = a.context;
      try {
        const stepped = a.context.step(challenge, legInfo());
        // The caller's abort ends the wait too (R1): the leave held (R4) goes with it, not once the
        // mechanism's own work (a slow KDC) ends.
        return await sink.unlessAborted(clock ? clock.race(stepped) : stepped);
      } catch (err) {
        // R4: a KDC that did not answer is remembered for the origin a few seconds, as a request's
        // handshake does: the next upgrades fail at once rather than each wait out the timeout.
        if (kdcSilent(err as Error)) unusable(a.mechanism.scheme.toLowerCase(), err as Error);
        if (err instanceof MultilegError || (sink.aborted && err === sink.reason)) throw err;
        throw new InvalidTokenError(`${a.mechanism.scheme} WWW-Authenticate challenge`);
      } finally {
        stepping = undefined;
      }
    }
  }

  /**
   * Sends one leg and waits for its outcome. `answer(status, headers)` says whether a response is a
   * challenge to answer (drained and swallowed) rather than the caller's; `'hold'`: one to answer
   * whose body is kept too, in case it turns out the caller's after all. `verify` runs before the
   * caller sees the final answer of a leg that carried credentials (mutual authentication): a
   * rejection fails the leg (the socket destroyed, the answer withheld); `false`, the answer is
   * delivered unproved.
   */
  #leg(
    client: Client,
    opts: Dispatcher.DispatchOptions,
    headers: Headers,
    body: unknown,
    authorization: string | undefined,
    sink: UserSink,
    answer: (status: number, headers: Headers) => boolean | 'hold',
    verify: ((status: number, headers: Headers) => Promise<boolean>) | undefined,
    onUpgrade: (leg: Controller, status: number, headers: Headers, socket: Socket) => void,
  ): Promise<LegOutcome> {
    const limits = this.#options.limits;
    return new Promise((resolve) => {
      let controller: Controller | undefined;
      let swallowed: Headers | undefined;
      /** A held challenge's body (`answer` said `'hold'`) and status message. */
      let kept: Buffer[] | undefined;
      let keptMessage = '';
      let status = 0;
      let drained = 0;
      /** Response events held while `verify` runs, replayed to the caller once it passes. */
      let held: (() => void)[] | undefined;
      /** The upgraded socket while `verify` runs: not the caller's yet. */
      let upgraded: Socket | undefined;
      /** Ended by the caller's abort or the handshake's clock: a `verify` that settles later changes nothing. */
      let aborted = false;
      /** `verify` let the final answer through without the server's proof. */
      let unproved = false;
      const deliver = (event: () => void) => (held ? held.push(event) : event());
      /** Bounds the wait for a swallowed challenge's body, the first bare 401's included (R3). */
      let drainTimer: NodeJS.Timeout | undefined;
      // This drain is not LegHandler's (src/handshake/leg.ts), though its bounds are the same limits
      // (maxChallengeBodyBytes, handshakeTimeout): what happens past them differs. There the challenge
      // still counts — the leg is cut and the session answers it on another connection (H1). Here a
      // cut connection would lose the connection-bound handshake with no session to start it again
      // elsewhere, so the upgrade fails with a typed error (MULTILEG_CHALLENGE_BODY_TOO_LARGE,
      // HandshakeTimeoutError; C11 and R3 in test/upgrade.test.ts). LegHandler also has no
      // onRequestUpgrade, which this handler needs for the 101 and its socket.
      const fail = (error: Error) => {
        clearTimeout(drainTimer);
        controller?.abort(error);
        resolve({ kind: 'failed', error });
      };
      /** Written (undici started it) and no response head yet: the server may have read it. */
      const unanswered = () => (controller !== undefined && status === 0 ? { unanswered: true as const } : {});
      sink.onAbort((reason) => {
        aborted = true;
        clearTimeout(drainTimer);
        controller?.abort(reason);
        // undici may be done with the request (a 101, or a final response held for `verify`): its
        // controller's abort does nothing then, so the leg ends here (R3), the socket with it.
        upgraded?.destroy();
        sink.fail(reason);
        resolve({ kind: 'failed', error: reason, ...unanswered() });
      });
      const handler: Dispatcher.DispatchHandler = {
        onRequestStart(c) {
          controller = c;
          // The caller aborted before undici started the request (nothing to abort then).
          if (sink.aborted) c.abort(sink.reason!);
        },
        onRequestUpgrade(c, upgradeStatus, h, socket) {
          const done = (proved = true) => {
            if (aborted) return;
            // The socket is the caller's now: a later abort of the request no longer applies.
            sink.onAbort(() => {});
            onUpgrade(c, upgradeStatus, h as Headers, socket as Socket);
            resolve({ kind: 'delivered', status: upgradeStatus, ...(proved ? {} : { unproved: true }) });
          };
          if (!verify) return done();
          upgraded = socket as Socket;
          // undici hands over the socket in paused mode: nothing is lost while we verify (a 101
          // must prove the server: proofRequired).
          // A caller handler that throws here fails the request, as undici does on the sync path.
          verify(upgradeStatus, h as Headers)
            .then(done)
            .catch((err: Error) => {
              (socket as Socket).destroy();
              resolve({ kind: 'failed', error: err });
            });
        },
        onResponseStart(c, responseStatus, h, message) {
          status = responseStatus;
          const verdict = answer(status, h as Headers);
          if (verdict) {
            swallowed = h as Headers;
            if (verdict === 'hold') {
              kept = [];
              keptMessage = message ?? '';
            }
            drainTimer = setTimeout(
              () => fail(new HandshakeTimeoutError(limits.handshakeTimeout, 'Upgrade (a 401 body that never ended)')),
              limits.handshakeTimeout,
            );
            return;
          }
          // A final 401 is a rejection, with nothing to verify; anything else answers our last leg.
          if (verify && status !== 401) {
            held = [];
            c.pause();
            verify(status, h as Headers)
              .then((proved) => {
                if (aborted) return;
                unproved = !proved;
                const events = held!;
                held = undefined;
                // As undici does for a handler that throws: the request fails with that error.
                for (const e of events) e();
                c.resume();
              })
              .catch((err: Error) => fail(err));
          }
          // (undici's HTTP/1.1 parser always gives a status message, possibly empty.)
          deliver(() => sink.responseStart(c, status, h as Headers, message ?? ''));
        },
        onResponseData(_c, chunk) {
          if (swallowed) {
            drained += chunk.length;
            // An endless challenge body is not drained: dropping the connection ends this handshake.
            if (drained > limits.maxChallengeBodyBytes) {
              fail(
                new MultilegError(
                  'MULTILEG_CHALLENGE_BODY_TOO_LARGE',
                  `a 401 to an upgrade request had a body over limits.maxChallengeBodyBytes (${limits.maxChallengeBodyBytes}); check the server or raise the limit`,
                ),
              );
            } else kept?.push(chunk);
            return;
          }
          deliver(() => sink.responseData(chunk));
        },
        onResponseEnd(c, trailers) {
          if (swallowed) {
            clearTimeout(drainTimer);
            const raw = c as { rawHeaders?: unknown; rawTrailers?: unknown };
            const held: HeldResponse | undefined = kept && {
              status,
              headers: swallowed,
              message: keptMessage,
              body: kept,
              trailers: trailers as Headers,
              rawHeaders: raw.rawHeaders,
              rawTrailers: raw.rawTrailers,
            };
            resolve({ kind: 'challenged', headers: swallowed, ...(held ? { held } : {}) });
            return;
          }
          deliver(() => {
            sink.responseEnd(trailers as Headers);
            resolve({ kind: 'delivered', status, ...(unproved ? { unproved: true as const } : {}) });
          });
        },
        onResponseError(_c, err) {
          clearTimeout(drainTimer);
          if (held) held = undefined;
          // R1/C8: a close partway through a swallowed challenge's body (its head whole): the caller's
          // handler saw nothing of it, so the handshake's caller types it (challengeCut), as a request's.
          const cut = swallowed && !aborted && closedUnder(err) ? { cut: status } : {};
          resolve({ kind: 'failed', error: err, ...unanswered(), ...cut });
        },
      };
      client.dispatch(
        {
          ...opts,
          headers: authorization ? { ...headers, authorization } : headers,
          body: body as Dispatcher.DispatchOptions['body'],
          // undici closes an upgrade request's connection after a non-101 answer unless told not to:
          // the next leg of a connection-bound handshake needs it.
          reset: false,
        } as Dispatcher.DispatchOptions,
        handler,
      );
    });
  }
}

/**
 * Closes `socket` (the connection a Transport challenge came on) and resolves once it has closed:
 * undici's Client, told first, then opens the next leg's connection (presenting the certificate).
 */
function closed(socket: Socket | undefined): Promise<void> {
  if (!socket || socket.closed) return Promise.resolve();
  const done = once(socket, 'close').then(() => {});
  socket.destroy();
  return done;
}

/**
 * What the final answer to a leg with credentials says of them: a 401 refuses them, a 5xx says
 * nothing, and so does any answer to a multi-leg handshake's opening leg (an NTLM NEGOTIATE carries
 * no credential: a 101 to it let the upgrade through authenticating no one, as a request's 2xx does).
 */
function outcomeFor(auth: Auth, status: number): ProofOutcome {
  if (opening(auth)) return 'none';
  if (status === 401) {
    // A refused Kerberos ticket is kept back 30 s each time; a refused password's wait doubles.
    return sentPassword(auth.mechanism, auth.context) ? 'refused' : 'refused-no-password';
  }
  return status >= 500 ? 'none' : 'success';
}

/** Whether `auth`'s last leg was a multi-leg handshake's opening one, which carries no credential. */
function opening(auth: Auth): boolean {
  return atOpening(auth.mechanism, auth.context, auth.legs) && !auth.context.complete;
}

/**
 * Verifies the server's final token (or Authentication-Info), if it sent one, on the answer to our
 * last leg, by the requests' rule (proofRequired, M2): where the answer must prove the server (the
 * 101, a CONNECT's 2xx, one carrying the proof) a failed check rejects; any other answer (a 403, a
 * 5xx) is delivered either way, and resolves `false` when it proved nothing.
 */
function verified(auth: Auth, status: number, headers: Headers, leg: LegInfo): Promise<boolean> {
  const final = readChallenges(headers, false).find((c) => c.schemeKey === auth.mechanism.scheme.toLowerCase());
  const info = readAuthenticationInfo(headers);
  const proved = () => {
    log.agent('%s upgrade authenticated with %s in %d legs', leg.origin, auth.mechanism.scheme, auth.legs);
    return true;
  };
  const check = auth.context.finish(final, leg, info).then(proved);
  if (proofRequired(status, final, info)) return check;
  return check.catch(() => {
    log.agent(
      "%s upgrade: %s: a %d without the server's proof: delivered, nothing proved",
      leg.origin,
      auth.mechanism.scheme,
      status,
    );
    return false;
  });
}
