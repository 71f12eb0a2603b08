import { createHash, X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import {
  constants,
  createSecureServer,
  type Http2SecureServer,
  type Http2ServerRequest,
  type Http2ServerResponse,
  type ServerHttp2Session,
} from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { DigestResponder } from './digest.ts';
import { type PendingContext, SessionState } from './session-state.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from './test-pki.ts';
import type {
  AcceptorFactoryInfo,
  AcceptorLike,
  AcceptorStep,
  Exchange,
  ExchangeOutcome,
  IncomingRequestInfo,
  ReferenceResponseBody,
  ReferenceServerFaults,
  ReferenceServerMode,
  ReferenceServerOptions,
  ReferenceServerStats,
  ResolvedReferenceServerOptions,
  SessionInfo,
} from './types.ts';
import { headerValue, ntlmMessageType, parseAuthorization } from './wire.ts';

/** Default accounts of the reference server. */
export const DEFAULT_USERS: Readonly<Record<string, string>> = Object.freeze({
  'EXAMPLE\\alice': 'alicepw',
  'EXAMPLE\\bob': 'bobpw',
});

/** Longest request body read (the server reads every body whole, also on 401 legs). */
const MAX_BODY_BYTES = 64 * 1024 * 1024;
/** The codings `faults.contentEncoding` compresses a body with. */
const ENCODE = {
  gzip: (body: string) => gzipSync(body),
  deflate: (body: string) => deflateSync(body),
  br: (body: string) => brotliCompressSync(body),
} as const;
/** Upper bound of a `?delay=` query parameter, so a typo cannot park a test for hours. */
const MAX_QUERY_DELAY_MS = 60_000;

/** tls-server-end-point channel binding (RFC 5929) of the reference server's certificate: SHA-256 of its DER. */
export function serverEndPointHash(): Buffer {
  return createHash('sha256').update(new X509Certificate(SERVER_CERT).raw).digest();
}

/** Events of {@link ReferenceServer}. */
export interface ReferenceServerEvents {
  /** Every recorded exchange, when it is recorded (after the response was written or refused). */
  exchange: [Exchange];
  /** A request arrived (headers only). */
  request: [IncomingRequestInfo];
  /** A piece of a request's body arrived (`bytes` so far): shows whether a client streams its upload. */
  bodyChunk: [{ readonly path: string; readonly bytes: number }];
  /** A session or HTTP/1.1 connection opened. */
  session: [SessionInfo];
  /** A session or HTTP/1.1 connection closed (its contexts are gone). */
  sessionClosed: [SessionInfo];
}

type AnyRequest = Http2ServerRequest | IncomingMessage;
type AnyResponse = Http2ServerResponse | ServerResponse;
type Headers = Record<string, string | string[]>;

/** Mutable draft of an exchange while a request is handled. */
type Draft = { -readonly [K in keyof Exchange]: Exchange[K] };

/** What the authorization step decided for a request. */
type Decision =
  | {
      readonly kind: 'respond';
      readonly status: number;
      readonly outcome: ExchangeOutcome;
      readonly headers: Headers;
      readonly user?: string;
      readonly reason?: string;
      readonly refused?: 'context-limit';
      readonly authIdSent?: string;
      /** End the session after this response. */
      readonly endSession?: boolean;
    }
  | { readonly kind: 'iis' };

/**
 * The server half of draft-montenegro-httpbis-multilegged-auth over HTTP/2 and HTTP/1.1 (TLS,
 * ALPN), with an NTLM acceptor serving both `NTLM` and `Negotiate`. Create it with
 * {@link startReferenceServer}. Test-only: it records secrets and trusts a throwaway PKI.
 */
export class ReferenceServer extends EventEmitter<ReferenceServerEvents> {
  /** `https://localhost:PORT`. */
  readonly origin: string;
  /** The listening port. */
  readonly port: number;
  /** PEM of the CA that signed the server certificate; give it to clients as `ca`. */
  readonly ca: string = CA_CERT;
  /** Live options: change any field at runtime; each request reads them afresh. */
  readonly options: ResolvedReferenceServerOptions;
  /** Every exchange seen, in order of completion. Cleared by {@link reset}. */
  readonly exchanges: Exchange[] = [];
  /** Digest and Basic, served when `schemes` names them; its `options` are live. */
  readonly digest: DigestResponder = new DigestResponder();

  readonly #server: Http2SecureServer | Server;
  readonly #sockets = new Set<Socket>();
  readonly #h2 = new Map<ServerHttp2Session, SessionState>();
  readonly #h1 = new Map<Socket, SessionState>();
  readonly #allSessions: SessionState[] = [];
  readonly #timers = new Set<{ timer: NodeJS.Timeout; resolve: () => void }>();
  readonly #channelBinding: Buffer;
  readonly #defaultFactory: ((info: AcceptorFactoryInfo) => AcceptorLike) | undefined;
  #sessionCounter = 0;
  #seq = 0;
  #stats = { sessions: 0, h2Sessions: 0, h1Connections: 0, requests: 0, contextsCreated: 0 };
  #closing: Promise<void> | undefined;

  /** @internal Use {@link startReferenceServer}. */
  constructor(
    server: Http2SecureServer | Server,
    port: number,
    options: ResolvedReferenceServerOptions,
    defaultFactory: ((info: AcceptorFactoryInfo) => AcceptorLike) | undefined,
  ) {
    super();
    this.#server = server;
    this.port = port;
    this.origin = `${options.cleartext ? 'http' : 'https'}://localhost:${port}`;
    this.options = options;
    this.#defaultFactory = defaultFactory;
    this.#channelBinding = serverEndPointHash();
    if (options.authorities.length === 0) options.authorities.push(`localhost:${port}`);
    this.#attach();
  }

  /** Switches the mode for every later request (sessions keep their authentication). */
  setMode(mode: ReferenceServerMode): void {
    this.options.mode = mode;
  }

  /** Replaces the fault switches (pass `{}` to clear); `maxConcurrentStreams` also reaches live sessions. */
  setFaults(faults: ReferenceServerFaults): void {
    this.options.faults = { ...faults };
    const max = faults.maxConcurrentStreams;
    if (max !== undefined) {
      for (const session of this.#h2.keys()) {
        if (!session.destroyed && !session.closed) session.settings({ maxConcurrentStreams: max });
      }
    }
  }

  /**
   * Makes sessions forget who they authenticated (all, or one by id), as a server does after a
   * TLS renegotiation or an expired ticket: their next protected request gets a 401 (T4).
   */
  forgetAuthentication(sessionId?: string): void {
    for (const s of this.#allSessions) {
      if (sessionId === undefined || s.id === sessionId) s.user = undefined;
    }
  }

  /**
   * Ends open sessions and connections (all, or one by id): gracefully (GOAWAY NO_ERROR /
   * closing idle HTTP/1.1 connections after their response) or, with `abrupt`, by destroying them (C8).
   */
  endSessions(opts: { sessionId?: string; abrupt?: boolean } = {}): void {
    for (const [session, state] of this.#h2) {
      if (opts.sessionId !== undefined && state.id !== opts.sessionId) continue;
      if (opts.abrupt) session.destroy();
      else state.end();
    }
    for (const [socket, state] of this.#h1) {
      if (opts.sessionId !== undefined && state.id !== opts.sessionId) continue;
      if (opts.abrupt) socket.destroy();
      else state.end();
    }
  }

  /** Clears the record and the counters (session ids keep counting up, so they stay unique). */
  reset(): void {
    this.exchanges.length = 0;
    this.#seq = 0;
    this.#stats = { sessions: 0, h2Sessions: 0, h1Connections: 0, requests: 0, contextsCreated: 0 };
  }

  /** Exchanges of one session, in order. */
  exchangesFor(sessionId: string): Exchange[] {
    return this.exchanges.filter((e) => e.sessionId === sessionId);
  }

  /**
   * Exchanges that are part of a handshake: every request carrying `Authorization` and every 401
   * (including the bare first 401), optionally of one session.
   */
  handshakeLegs(sessionId?: string): Exchange[] {
    return this.exchanges.filter(
      (e) =>
        (sessionId === undefined || e.sessionId === sessionId) &&
        (e.status === 401 || e.requestHeaders.authorization !== undefined),
    );
  }

  /** Snapshots of all sessions/connections ever opened (open and closed). */
  sessions(): SessionInfo[] {
    return this.#allSessions.map((s) => s.info());
  }

  /** Counters since start or the last {@link reset}. */
  get stats(): ReferenceServerStats {
    let openSessions = 0;
    for (const s of this.#allSessions) if (s.open) openSessions++;
    return { ...this.#stats, openSessions };
  }

  /** Closes the listener and destroys every session and socket; resolves when all is closed. */
  close(): Promise<void> {
    this.#closing ??= new Promise<void>((resolve) => {
      for (const t of this.#timers) {
        clearTimeout(t.timer);
        t.resolve();
      }
      this.#timers.clear();
      this.#server.close(() => resolve());
      for (const session of this.#h2.keys()) session.destroy();
      for (const socket of this.#sockets) socket.destroy();
    });
    return this.#closing;
  }

  #attach(): void {
    const server = this.#server;
    server.on('connection', (socket: Socket) => {
      this.#sockets.add(socket);
      socket.on('close', () => this.#sockets.delete(socket));
      // A client that drops the TCP connection mid-handshake is not the server's problem.
      socket.on('error', () => {});
    });
    server.on('secureConnection', (socket: TLSSocket) => {
      if (socket.alpnProtocol !== 'h2') this.#h1State(socket);
    });
    server.on('session', (session: ServerHttp2Session) => {
      const state = this.#newState('h2', () => {
        if (!session.closed && !session.destroyed) session.close();
      });
      this.#h2.set(session, state);
      session.on('close', () => {
        state.close();
        this.#h2.delete(session);
        this.emit('sessionClosed', state.info());
      });
      session.on('error', () => {});
      const max = this.options.faults.maxConcurrentStreams;
      if (max !== undefined) session.settings({ maxConcurrentStreams: max });
    });
    server.on('tlsClientError', () => {});
    server.on('sessionError', () => {});
    server.on('request', (req: AnyRequest, res: AnyResponse) => {
      this.#handle(req, res).catch(() => {
        // Last resort: never crash, never leave a stream hanging.
        try {
          if (!res.headersSent) {
            res.statusCode = 500;
            res.end();
          }
        } catch {}
      });
    });
  }

  #newState(protocol: 'h2' | 'http/1.1', end: () => void): SessionState {
    const state = new SessionState(`s${++this.#sessionCounter}`, protocol, end);
    this.#allSessions.push(state);
    this.#stats.sessions++;
    if (protocol === 'h2') this.#stats.h2Sessions++;
    else this.#stats.h1Connections++;
    this.emit('session', state.info());
    return state;
  }

  #h1State(socket: Socket): SessionState {
    let state = this.#h1.get(socket);
    if (!state) {
      const created = this.#newState('http/1.1', () => {
        // Idle: close now. Busy: the response in flight carries Connection: close.
        if (created.inflight > 0) created.endRequested = true;
        else if (!socket.destroyed) socket.end();
      });
      state = created;
      this.#h1.set(socket, created);
      socket.on('close', () => {
        created.close();
        this.#h1.delete(socket);
        this.emit('sessionClosed', created.info());
      });
    }
    return state;
  }

  async #handle(req: AnyRequest, res: AnyResponse): Promise<void> {
    const stream = req.httpVersionMajor === 2 ? (req as Http2ServerRequest).stream : undefined;
    const state = stream ? this.#h2.get(stream.session as ServerHttp2Session) : this.#h1State(req.socket as Socket);
    if (!state) {
      // A stream whose session we never saw cannot happen; refuse rather than guess.
      stream?.close(constants.NGHTTP2_INTERNAL_ERROR);
      return;
    }
    state.inflight++;
    try {
      await this.#serve(req, res, state, stream);
    } finally {
      state.inflight--;
    }
  }

  async #serve(
    req: AnyRequest,
    res: AnyResponse,
    state: SessionState,
    stream: Http2ServerRequest['stream'] | undefined,
  ): Promise<void> {
    const h2 = stream !== undefined;
    const protocol = h2 ? 'h2' : 'http/1.1';
    state.requests++;
    this.#stats.requests++;
    const requestIndex = state.requests;
    const method = req.method ?? 'GET';
    const path = req.url ?? '/';
    const headers = lowerCaseHeaders(req.headers);
    const authority = headerValue(h2 ? headers[':authority'] : undefined) ?? headerValue(headers.host) ?? '';
    const info: IncomingRequestInfo = {
      sessionId: state.id,
      ...(stream ? { streamId: stream.id } : {}),
      requestIndex,
      protocol,
      method,
      path,
      headers,
    };
    this.emit('request', info);

    // Every leg reads the whole body, also the 401s: proves the client replayed it (C10) and
    // keeps HTTP/1.1 connections reusable.
    const body = await readBody(req, (bytes) => this.emit('bodyChunk', { path, bytes }));
    const bodySha256 = createHash('sha256').update(body).digest('hex');
    const authIdReceived = headerValue(headers['auth-id']);
    const draft: Draft = {
      seq: 0,
      sessionId: state.id,
      ...(stream ? { streamId: stream.id } : {}),
      requestIndex,
      protocol,
      method,
      path,
      authority,
      requestHeaders: headers,
      status: null,
      responseHeaders: {},
      bodyLength: body.length,
      bodySha256,
      ...(authIdReceived !== undefined ? { authIdReceived } : {}),
      outcome: 'unauthenticated',
      mode: this.options.mode,
    };

    const delay = this.#delayFor(info);
    if (delay > 0) await this.#sleep(delay);
    if (this.#closing || res.destroyed || stream?.destroyed) return;

    // The mode may have changed while the response was held; record the one that decided.
    draft.mode = this.options.mode;
    if (stream && this.options.faults.refuseWithGoaway?.(info)) {
      // R5: GOAWAY(NO_ERROR) with a last-stream-id below this stream: not processed, retry elsewhere.
      const code = this.options.faults.refuseWithGoawayCode ?? constants.NGHTTP2_NO_ERROR;
      this.#goawayBelow(state, draft, req as Http2ServerRequest, code);
      return;
    }
    const tlsSocket = (stream ? stream.session?.socket : req.socket) as TLSSocket | undefined;
    const decision = await this.#decide(state, draft, headers, authority, peerCertificate(tlsSocket));
    if (decision.kind === 'iis') {
      this.#refuseIis(state, draft, req as Http2ServerRequest);
      return;
    }
    const { status, outcome, user, reason, refused, authIdSent } = decision;
    draft.outcome = outcome;
    if (user !== undefined) draft.user = user;
    if (reason !== undefined) draft.reason = reason;
    if (refused !== undefined) draft.refused = refused;
    if (authIdSent !== undefined) draft.authIdSent = authIdSent;
    const out: ReferenceResponseBody = {
      user: status === 200 ? (user ?? null) : null,
      method,
      path,
      protocol,
      sessionId: state.id,
      bodyLength: body.length,
      bodySha256,
      ...(status === 200 ? {} : { error: outcome }),
    };
    const responseHeaders: Headers = {
      'content-type': 'application/json',
      ...this.options.faults.responseHeaders?.({ status, request: info }),
      ...decision.headers,
    };
    let payload: string | Buffer = JSON.stringify(out);
    const pad = this.options.faults.padBody?.({ status, request: info }) ?? 0;
    if (pad > 0) payload += ' '.repeat(pad);
    const coding = this.options.faults.contentEncoding?.({ status, request: info });
    if (coding !== undefined) {
      responseHeaders['content-encoding'] = coding === 'corrupt-gzip' ? 'gzip' : coding;
      if (coding !== 'corrupt-gzip') payload = ENCODE[coding](payload);
    }
    if ((decision.endSession || state.endRequested) && !h2) responseHeaders.connection = 'close';
    for (const [name, value] of Object.entries(responseHeaders)) res.setHeader(name, value);
    res.statusCode = status;
    draft.status = status;
    draft.responseHeaders = lowerCaseHeaders(res.getHeaders() as Record<string, unknown>);
    this.#record(draft);
    if (decision.endSession && h2) {
      // GOAWAY(NO_ERROR) once this response is out: the session ends, nothing is refused abruptly.
      res.on('finish', () => state.end());
    }
    res.end(payload);
  }

  /** The authorization logic of the draft (D§3, D§3.1) and of the modes. */
  async #decide(
    state: SessionState,
    draft: Draft,
    headers: Headers,
    authority: string,
    peer: PeerCertificate = { presented: false, authorized: false },
  ): Promise<Decision> {
    const o = this.options;
    const mode = o.mode;
    const h2 = state.protocol === 'h2';
    // T (TLS list message): a client certificate is offered as one more challenge.
    const transport = o.clientCertificate === 'offer' ? [TRANSPORT_CHALLENGE] : [];
    const pathname = draft.path.split('?')[0] ?? '';
    const spaced = spaceOf(o.pathSchemes, pathname);
    const schemes = spaced ?? o.schemes;
    const bare = (stale = false): Headers => ({
      'www-authenticate': [...this.digest.challenges(schemes, stale), ...transport],
    });

    if (o.faults.misdirectedForOtherHosts && !o.authorities.some((a) => a.toLowerCase() === authority.toLowerCase())) {
      return { kind: 'respond', status: 421, outcome: 'misdirected', headers: {} };
    }
    // A path of its own schemes without NTLM or Negotiate is not served by the connection's authentication.
    const sessionServes = spaced === undefined || spaced.some((s) => /^(?:ntlm|negotiate)$/i.test(s));
    const sessionUser = mode !== 'per-request' && sessionServes ? state.user : undefined;
    if (pathname === '/public/redirect') {
      // A redirect to wherever `?to=` says: for tests of credentials across redirects (S1).
      // `?status=` picks the redirect code (300, 301, 302, 303, 307, 308; default 302); `?cache=N`
      // lets caches keep it N seconds (Cache-Control: max-age=N).
      const query = new URLSearchParams(draft.path.split('?')[1] ?? '');
      const to = query.get('to') ?? '/public/';
      const status = [300, 301, 302, 303, 307, 308].includes(Number(query.get('status')))
        ? Number(query.get('status'))
        : 302;
      const cache = query.get('cache');
      const headers = { location: to, ...(cache ? { 'cache-control': `max-age=${Number(cache)}` } : {}) };
      return { kind: 'respond', status, outcome: 'anonymous', headers };
    }
    if (pathname === '/public' || pathname.startsWith('/public/')) {
      return { kind: 'respond', status: 200, outcome: 'anonymous', headers: {}, ...userField(sessionUser) };
    }
    if (o.clientCertificate === 'offer' && peer.presented) {
      // A certificate from our CA authenticates; any other is final (T4: 403, no retry).
      if (peer.authorized)
        return { kind: 'respond', status: 200, outcome: 'certificate', headers: {}, user: `cert:${peer.subject}` };
      return { kind: 'respond', status: 403, outcome: 'forbidden', headers: {} };
    }
    const authorization = headerValue(headers.authorization);
    if (mode === 'iis' && h2 && sessionUser === undefined) return { kind: 'iis' };
    if (authorization === undefined) {
      if (sessionUser !== undefined)
        return { kind: 'respond', status: 200, outcome: 'session', headers: {}, user: sessionUser };
      return { kind: 'respond', status: 401, outcome: 'unauthenticated', headers: bare() };
    }

    // Digest and Basic authenticate the request alone (M3, M4).
    const requestScheme = this.digest.schemeOf(authorization, schemes);
    if (requestScheme !== undefined) {
      draft.scheme = requestScheme;
      const v = this.digest.verify(
        requestScheme,
        authorization,
        draft.method,
        draft.path,
        o.users,
        o.faults.rspauth === 'wrong',
      );
      // `/denied/…`: the credentials are right, the resource's ACL refuses the user (IIS's 401.3).
      if (v.ok && pathname.startsWith('/denied/'))
        return { kind: 'respond', status: 401, outcome: 'denied', headers: bare() };
      if (v.ok) {
        const headers: Headers = v.authenticationInfo ? { 'authentication-info': v.authenticationInfo } : {};
        const other = otherFinalStatus(pathname);
        if (other) {
          // Authentication-Info goes on the final response whatever its status (RFC 7616 §3.5).
          if (other.status < 400) headers.location = `/auth/${other.rest}`;
          return { kind: 'respond', status: other.status, outcome: 'accepted', headers, user: v.user };
        }
        return { kind: 'respond', status: 200, outcome: 'accepted', headers, user: v.user };
      }
      return { kind: 'respond', status: 401, outcome: 'rejected', headers: bare(v.stale), reason: v.reason };
    }

    const parsed = parseAuthorization(authorization);
    const scheme = schemes.find((s) => s.toLowerCase() === parsed.scheme?.toLowerCase());
    if (scheme !== undefined) draft.scheme = scheme;
    if (!parsed.ok || scheme === undefined) {
      const reason = parsed.ok ? 'unsupported-scheme' : parsed.reason;
      return { kind: 'respond', status: 401, outcome: 'rejected', headers: bare(), reason };
    }

    // Legacy h2 keeps no state between streams and sends no Auth-ID (mod_auth_gssapi over h2).
    const legacyH2 = mode === 'legacy' && h2;
    const sendAuthId = mode !== 'legacy';
    const now = Date.now();
    state.expire(now, o.contextTimeoutMs);
    const type = ntlmMessageType(parsed.token);
    const authIdIn = headerValue(headers['auth-id']);
    let ctx: PendingContext | undefined;
    const shared = o.faults.sharedAuthId;
    if (type !== 1 && !legacyH2) {
      ctx =
        authIdIn === undefined
          ? undefined
          : authIdIn === shared
            ? state.contexts.values().next().value
            : state.contexts.get(authIdIn);
      // HTTP/1.1: the connection itself names the context when the client sends no (known) Auth-ID.
      if (!ctx && !h2) ctx = state.bound;
    }
    if (!ctx) {
      if (type !== undefined && type !== 1) {
        // An NTLM message that continues a handshake, but no context: unknown/expired Auth-ID is none.
        const reason = authIdIn !== undefined ? 'unknown-auth-id' : 'no-context';
        return { kind: 'respond', status: 401, outcome: 'rejected', headers: bare(), reason };
      }
      // A new handshake replaces whatever the same client was doing under this Auth-ID / on this connection.
      const previous = authIdIn !== undefined ? state.contexts.get(authIdIn) : undefined;
      if (previous) state.remove(previous);
      if (!h2 && state.bound) state.remove(state.bound);
      if (!legacyH2 && state.contexts.size >= o.maxIncompleteContexts) {
        return { kind: 'respond', status: 401, outcome: 'refused', headers: bare(), refused: 'context-limit' };
      }
      const acceptor = this.#createAcceptor(scheme);
      if (!acceptor) {
        return { kind: 'respond', status: 401, outcome: 'rejected', headers: bare(), reason: 'acceptor-error' };
      }
      // Legacy h2 contexts live for one stream only: never stored, so never found again.
      ctx = legacyH2 ? { authId: '', scheme, acceptor, createdAt: now } : state.add(scheme, acceptor, now);
      this.#stats.contextsCreated++;
    }

    let result: AcceptorStep;
    try {
      result = await ctx.acceptor.step(parsed.token);
    } catch (err) {
      result = { kind: 'rejected', reason: `acceptor-error: ${err instanceof Error ? err.message : String(err)}` };
    }

    if (result.kind === 'challenge') {
      const headersOut: Headers = { 'www-authenticate': `${ctx.scheme} ${result.token.toString('base64')}` };
      if (legacyH2) return { kind: 'respond', status: 401, outcome: 'challenge', headers: headersOut };
      if (!h2) state.bound = ctx;
      if (!sendAuthId) return { kind: 'respond', status: 401, outcome: 'challenge', headers: headersOut };
      const authIdSent = shared ?? ctx.authId;
      headersOut['auth-id'] = authIdSent;
      return {
        kind: 'respond',
        status: 401,
        outcome: 'challenge',
        headers: headersOut,
        authIdSent,
        endSession: o.faults.goawayAfterChallenge === true,
      };
    }

    // End of the handshake, either way: the Auth-ID mapping is destroyed (D§3.1).
    if (!legacyH2) state.remove(ctx);
    if (result.kind === 'rejected') {
      return {
        kind: 'respond',
        status: 401,
        outcome: 'rejected',
        headers: bare(),
        reason: result.reason || 'rejected',
      };
    }
    const user = result.user;
    const headersOut: Headers = {};
    const finalToken = result.token ? Buffer.from(result.token) : undefined;
    if (finalToken && o.faults.finalToken !== 'omit') {
      if (o.faults.finalToken === 'corrupt') finalToken[Math.max(0, finalToken.length - 8)]! ^= 0x55;
      headersOut['www-authenticate'] = `${ctx.scheme} ${finalToken.toString('base64')}`;
    }
    if (mode === 'per-request') {
      if (o.persistentAuthFalseHeader) headersOut[o.persistentAuthHeaderName] = 'false';
    } else if (!legacyH2) {
      // A new successful handshake on an authenticated session replaces the identity (D§3).
      state.user = user;
      if (mode === 'session' || mode === 'iis') headersOut[o.persistentAuthHeaderName] = o.persistentAuthValue;
    }
    // The completing leg answered with another status: its final token and Persistent-Auth go on it
    // as on a 200 (a redirect after authentication, as IIS often answers the first request).
    const other = otherFinalStatus(pathname);
    if (other && other.status < 400) headersOut.location = `/auth/${other.rest}`;
    return {
      kind: 'respond',
      status: other?.status ?? 200,
      outcome: 'accepted',
      headers: headersOut,
      user,
      endSession: o.faults.destroySessionAfterAuth === true,
    };
  }

  /** IIS/http.sys answer to Windows auth over h2: HTTP_1_1_REQUIRED, by RST_STREAM or GOAWAY (H2). */
  #refuseIis(state: SessionState, draft: Draft, req: Http2ServerRequest): void {
    const stream = req.stream;
    if (this.options.iisVia === 'goaway') {
      this.#goawayBelow(state, draft, req, constants.NGHTTP2_HTTP_1_1_REQUIRED);
      return;
    }
    draft.outcome = 'rst';
    this.#record(draft);
    stream.close(constants.NGHTTP2_HTTP_1_1_REQUIRED);
  }

  /** GOAWAY with a last-stream-id below this stream: the client knows it was not processed. */
  #goawayBelow(state: SessionState, draft: Draft, req: Http2ServerRequest, code: number): void {
    const stream = req.stream;
    draft.outcome = 'goaway';
    this.#record(draft);
    const session = stream.session;
    const lastStreamId = Math.max(0, (stream.id ?? 1) - 2);
    if (session && !session.destroyed) {
      session.goaway(code, lastStreamId);
      stream.close(constants.NGHTTP2_REFUSED_STREAM);
      state.end();
    }
  }

  #createAcceptor(scheme: string): AcceptorLike | undefined {
    const o = this.options;
    const factory = o.acceptorFactory ?? this.#defaultFactory;
    if (!factory) return undefined;
    const info: AcceptorFactoryInfo = {
      scheme,
      users: o.users,
      domain: o.domain,
      ...(o.requireChannelBinding ? { channelBinding: this.#channelBinding } : {}),
    };
    try {
      return factory(info);
    } catch {
      return undefined;
    }
  }

  #delayFor(info: IncomingRequestInfo): number {
    const fault = this.options.faults.delayMs;
    let delay = 0;
    try {
      delay = (typeof fault === 'function' ? fault(info) : fault) ?? 0;
    } catch {
      // A throwing test hook means no delay rather than a dead server.
    }
    if (!Number.isFinite(delay) || delay < 0) delay = 0;
    const path = info.path;
    const q = path.indexOf('?');
    if (q >= 0) {
      const fromQuery = Number(new URLSearchParams(path.slice(q + 1)).get('delay'));
      if (Number.isFinite(fromQuery) && fromQuery > 0) delay = Math.max(delay, Math.min(fromQuery, MAX_QUERY_DELAY_MS));
    }
    return delay;
  }

  #sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const entry = {
        timer: setTimeout(() => {
          this.#timers.delete(entry);
          resolve();
        }, ms),
        resolve,
      };
      this.#timers.add(entry);
    });
  }

  #record(draft: Draft): void {
    draft.seq = ++this.#seq;
    const exchange: Exchange = Object.freeze({ ...draft });
    if (this.options.record) this.exchanges.push(exchange);
    try {
      this.options.onExchange?.(exchange);
      this.emit('exchange', exchange);
    } catch {
      // A throwing test hook must not take the server down.
    }
  }
}

/**
 * `/status/NNN/rest` (NNN from 300 to 599, not 401 or 407): Basic or Digest credentials accepted,
 * or an NTLM or Negotiate handshake completed (its final token on it), answered with status NNN
 * instead of 200 — a 3xx with `Location: /auth/rest` (a redirect after
 * authentication, a 404 of a missing resource, M3's Authentication-Info on them).
 */
function otherFinalStatus(pathname: string): { status: number; rest: string } | undefined {
  const m = /^\/status\/([3-5]\d\d)\/(.*)$/.exec(pathname);
  if (!m) return undefined;
  const status = Number(m[1]);
  return status === 401 || status === 407 ? undefined : { status, rest: m[2]! };
}

/** The schemes of the longest `pathSchemes` prefix `pathname` lies in, if any. */
function spaceOf(pathSchemes: Record<string, string[]>, pathname: string): string[] | undefined {
  let best: string | undefined;
  for (const prefix of Object.keys(pathSchemes)) {
    if (pathname.startsWith(prefix) && (best === undefined || prefix.length > best.length)) best = prefix;
  }
  return best === undefined ? undefined : pathSchemes[best];
}

function userField(user: string | undefined): { user?: string } {
  return user === undefined ? {} : { user };
}

function lowerCaseHeaders(headers: Record<string, unknown>): Headers {
  const out: Headers = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    out[name.toLowerCase()] = Array.isArray(value) ? value.map(String) : String(value);
  }
  return out;
}

async function readBody(req: AnyRequest, onChunk: (bytes: number) => void): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of req as AsyncIterable<Buffer | string>) {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      total += buf.length;
      onChunk(total);
      if (total > MAX_BODY_BYTES) break;
      chunks.push(buf);
    }
  } catch {
    // The client reset the stream mid-body; record what arrived.
  }
  return Buffer.concat(chunks);
}

function resolveOptions(opts: ReferenceServerOptions): ResolvedReferenceServerOptions {
  const resolved: ResolvedReferenceServerOptions = {
    mode: opts.mode ?? 'session',
    schemes: [...(opts.schemes ?? ['Negotiate', 'NTLM'])],
    pathSchemes: Object.fromEntries(Object.entries(opts.pathSchemes ?? {}).map(([p, s]) => [p, [...s]])),
    users: { ...(opts.users ?? DEFAULT_USERS) },
    domain: opts.domain ?? 'EXAMPLE',
    maxIncompleteContexts: opts.maxIncompleteContexts ?? 8,
    contextTimeoutMs: opts.contextTimeoutMs ?? 120_000,
    persistentAuthFalseHeader: opts.persistentAuthFalseHeader ?? true,
    persistentAuthHeaderName: opts.persistentAuthHeaderName ?? 'Persistent-Auth',
    persistentAuthValue: opts.persistentAuthValue ?? 'true',
    iisVia: opts.iisVia ?? 'rst',
    record: opts.record ?? true,
    requireChannelBinding: opts.requireChannelBinding ?? false,
    authorities: [...(opts.authorities ?? [])],
    faults: { ...(opts.faults ?? {}) },
    clientCertificate: opts.clientCertificate ?? 'off',
    cleartext: opts.cleartext ?? false,
  };
  if (opts.acceptorFactory) resolved.acceptorFactory = opts.acceptorFactory;
  if (opts.onExchange) resolved.onExchange = opts.onExchange;
  return resolved;
}

/** Loads the NTLM acceptor lazily, so a server with a custom acceptor never needs it. */
async function ntlmAcceptorFactory(): Promise<(info: AcceptorFactoryInfo) => AcceptorLike> {
  const { NtlmAcceptor } = await import('../mechanisms/ntlm/acceptor.ts');
  return (info) =>
    new NtlmAcceptor({
      users: { ...info.users },
      domain: info.domain,
      ...(info.channelBinding ? { channelBinding: info.channelBinding } : {}),
    });
}

/**
 * Starts the reference server on `127.0.0.1` (port 0 = any free port) with TLS from the test PKI,
 * HTTP/2 and HTTP/1.1 by ALPN. Resolves once it listens.
 */
export async function startReferenceServer(opts: ReferenceServerOptions = {}): Promise<ReferenceServer> {
  const options = resolveOptions(opts);
  let defaultFactory: ((info: AcceptorFactoryInfo) => AcceptorLike) | undefined;
  try {
    defaultFactory = await ntlmAcceptorFactory();
  } catch (err) {
    // Only fatal when nothing else can accept: a custom factory makes NTLM optional.
    if (!opts.acceptorFactory) throw err;
  }
  const max = options.faults.maxConcurrentStreams;
  // Cleartext: HTTP/1.1 only (clients speak h2 over TLS), for the tests of credentials over http (S4).
  const server = options.cleartext
    ? createHttpServer()
    : createSecureServer({
        allowHTTP1: true,
        cert: SERVER_CERT,
        key: SERVER_KEY,
        // Ask for a client certificate but let the handshake go on without one: the HTTP layer decides.
        ...(options.clientCertificate === 'offer' ? { requestCert: true, rejectUnauthorized: false, ca: CA_CERT } : {}),
        ...(max !== undefined ? { settings: { maxConcurrentStreams: max } } : {}),
      });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  return new ReferenceServer(server, port, options, defaultFactory);
}

/** What the TLS layer says about the client's certificate (T3). */
interface PeerCertificate {
  readonly presented: boolean;
  readonly authorized: boolean;
  readonly subject?: string;
}

const TRANSPORT_CHALLENGE = 'Transport mode="tls-client-certificate"';

function peerCertificate(socket: TLSSocket | undefined): PeerCertificate {
  const cert = socket?.getPeerX509Certificate?.();
  if (!socket || !cert) return { presented: false, authorized: false };
  const cn = /CN=([^\n,]+)/.exec(cert.subject)?.[1] ?? cert.subject;
  return { presented: true, authorized: socket.authorized === true, subject: cn };
}
