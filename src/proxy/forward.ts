import type { Socket } from 'node:net';
import { readChallenges, readProxySupport, readRemoteHttpVersion } from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import { Deadline } from '../deadline.ts';
import { publishProxyUnanswered } from '../diagnostics.ts';
import { closedUnder, LegLimitError } from '../errors.ts';
import type { HeldResponse, LegResult, ResponseHeaders, Verdict } from '../handshake/leg.ts';
import { log } from '../log.ts';
import { carriesNoSecret } from '../mechanisms/no-secret.ts';
import { alpnFor, type Limits } from '../options.ts';
import type { HeldBackWhy, ProofOutcome, Ticket } from '../session/credential-proof.ts';
import type { Waiter } from '../session/wait-queue.ts';
import { type AdmittedHolder, offeredSchemes, ProxyAuth, type ProxyHandshake, proxyLeg, rejected } from './auth.ts';
import { ProxyAuthenticationError, ProxyClosedError, ProxyTimeoutError, RemoteHttp1Error } from './errors.ts';
import { ProxyLead } from './lead.ts';
import type { ProxyRoute } from './options.ts';
import { closedBetweenLegs, connectToProxy, openingLeave, proxyLeave, refusedLately } from './tunnel.ts';
import { saysClose } from './wire.ts';

type Classify = (status: number, headers: ResponseHeaders) => Verdict;

/** Why a 407 goes to the caller with no credentials of this request answering it (ProxyUnansweredEvent.reason). */
type Withheld = 'refused' | HeldBackWhy;

/** Why a connection-bound handshake ended when the proxy closed without a header saying so. */
const SILENT_CLOSE =
  'the connection ended after its 407 without Connection: close: an HTTP/1.0 answer without keep-alive, or the proxy closed it';

/** Why a connection is left after the proxy refused a connection-bound handshake on it, its 407 delivered. */
const REFUSED_BOUND =
  'the proxy refused the connection-bound handshake on it (its 407 went to the caller): the next one goes on a new connection';

/** Why a connection is left after the agent's credential leg of a connection-bound handshake went unanswered. */
const UNANSWERED_BOUND =
  "the agent's connection-bound handshake with the proxy ended with its credentials written and no answer read (the caller aborted, or a timeout): the proxy may hold the connection as that identity, unrecorded, so the next request goes on a new connection";

/** Why a connection is left after the proxy's final answer to its handshake proved nothing (M2). */
const UNPROVED =
  "the proxy's final answer to the agent's handshake did not prove the proxy (no final token where the mechanism wants one): the proxy may hold the connection as that identity, unrecorded, so the next request goes on a new connection";

/** Why a connection is left after a 5xx ended the agent's Kerberos handshake with the proxy (M2, S6). */
const UNRECORDED =
  "the proxy answered the agent's handshake with a 5xx, which proves nothing: the proxy may hold the connection as the Kerberos identity, unrecorded, so the next request goes on a new connection";

/** Why a connection is left after a scheme whose challenge could not be read (T2). */
const FELL_THROUGH =
  "the proxy's answer to a scheme's first leg could not be read: the request goes again bare, on a new connection";

/** The leg failed as one that goes again on a new connection does (the session's relocation error). */
const relocated = (err: Error): boolean => (err as { code?: unknown }).code === 'MULTILEG_STALE_CONNECTION';
/**
 * The leg failed because its connection ended under it: the session's relocation error (the
 * connection was gone before the leg was written, or the proxy closed it unanswered) or
 * {@link ProxyClosedError} (the same, for a request that is not sent again).
 */
const connectionLost = (err: Error): boolean => err instanceof ProxyClosedError || relocated(err);
/** A leg on the wire, as far as the proxy's deadline needs it. */
export interface AbortableLeg {
  abort(reason: Error): void;
  /** It went to the socket: the proxy may have read it (R4). */
  readonly written?: boolean;
}
/**
 * Sends one leg on the proxy connection with extra headers and the request-target `path`;
 * `started` is given the leg, so that the proxy's deadline can end it.
 */
export type SendOnProxy = (
  extra: Record<string, string>,
  classify: Classify,
  path: string,
  started?: (leg: AbortableLeg) => void,
) => Promise<LegResult>;

/**
 * Gives the caller a response held from a leg (a `hold` verdict's, read in full) as a delivered
 * leg's result: a proxy's 407 that nothing here could answer, shown without sending the request again.
 */
export type DeliverHeld = (held: HeldResponse) => LegResult;

/**
 * One connection to a forwarding proxy (plain-http targets, H5): absolute-form requests on
 * HTTP/1.1, `:authority` on HTTP/2; the proxy's 407s are answered on this connection before the
 * origin's exchange sees anything. Its answers say whether the proxy vouches for session-based
 * authentication (H4) and whether the origin speaks HTTP/1.1 (H3). One request at a time runs the
 * connection's handshake with the proxy (with `proxy.schemes: ['NTLM']` the first request opens it
 * with the NEGOTIATE, as a CONNECT does); the others wait and then go on the connection it
 * authenticated.
 */
export class ForwardProxy {
  readonly route: Extract<ProxyRoute, { kind: 'forward' }>;
  /** The proxy connection, opened at once so the first request knows its request-target form. */
  readonly socket: Promise<Socket>;
  readonly #auth: ProxyAuth;
  readonly #protocol: Promise<'h2' | 'http/1.1' | undefined>;
  readonly #limits: Limits;
  readonly #onRemoteHttp1: () => void;
  readonly #onUnusable: (err: Error) => void;
  readonly #onClosing: () => void;
  readonly #onHolder: () => void;
  #vouched = false;
  /** The proxy connection once open (the session's only one: a reconnect is a new session). */
  #wire: Socket | undefined;
  /** Its protocol, once open: the handshakes on it are reported with it. */
  #protocolNow: 'h2' | 'http/1.1' | undefined;
  /** Which request runs this connection's handshake with the proxy (one at a time), and who waits. */
  readonly #lead: ProxyLead;

  constructor(opts: {
    route: Extract<ProxyRoute, { kind: 'forward' }>;
    allowH2: boolean;
    limits: Limits;
    /** The proxy said the origin speaks HTTP/1.1 (H3). */
    onRemoteHttp1: () => void;
    /**
     * The connection must not be used again: the proxy's final token failed mutual authentication,
     * or authenticating to the proxy did not finish within `limits.handshakeTimeout`.
     */
    onUnusable: (err: Error) => void;
    /**
     * The proxy said it closes the connection after its answer (`Connection: close`): no request
     * or leg is given to it any more, so each goes to a new connection at once.
     */
    onClosing: () => void;
    /** A handshake on the connection proved an identity ({@link holder}). */
    onHolder?: () => void;
    /** Each handshake with the proxy on this connection that sent credentials and ended (H5). */
    onHandshake?: (handshake: ProxyHandshake) => void;
  }) {
    this.route = opts.route;
    this.#limits = opts.limits;
    this.#onRemoteHttp1 = opts.onRemoteHttp1;
    this.#onUnusable = opts.onUnusable;
    this.#onClosing = opts.onClosing;
    this.#onHolder = opts.onHolder ?? (() => {});
    const onHandshake = opts.onHandshake;
    this.#auth = new ProxyAuth(
      opts.route.proxy,
      opts.limits.maxLegs,
      onHandshake && ((h) => onHandshake({ ...h, protocol: this.#protocolNow })),
    );
    this.#lead = new ProxyLead(
      this.#auth,
      opts.limits,
      `another request's authentication to proxy ${opts.route.proxy.origin} on the same connection`,
    );
    this.socket = connectToProxy(opts.route.proxy, alpnFor(opts.allowH2));
    this.#protocol = this.socket.then(
      (s) => {
        this.#wire = s;
        this.#protocolNow = (s as Socket & { alpnProtocol?: string | false }).alpnProtocol === 'h2' ? 'h2' : 'http/1.1';
        return this.#protocolNow;
      },
      () => undefined,
    );
  }

  /**
   * The proxy connection has ended without a header saying so: undici destroys it right after a
   * response it may not keep (an `HTTP/1.0` answer without `keep-alive`, RFC 9112 §9.3 — llhttp's
   * rule, not a copy of it here), or after the proxy's FIN. Nothing more may be written on it.
   */
  get gone(): boolean {
    return this.#wire?.destroyed === true;
  }

  /** Who the proxy holds this connection as (S6: see {@link ProxyAuth.holder}). */
  get holder(): AdmittedHolder | undefined {
    return this.#auth.holder;
  }

  /** The proxy's last answer carried `Proxy-support: Session-Based-Authentication` (H4). */
  get vouched(): boolean {
    return this.#vouched;
  }

  /**
   * The session this connection serves was destroyed (C4: the agent's destroy()): the handshake with
   * the proxy on it ends now with `err`, its context freed, whoever runs it (its legs fail with the
   * connection anyway). (A closed session's ends with the request that runs it, which closing waits
   * for, as an origin's: its lead's end gives it up, {@link ProxyLead}.)
   */
  end(err: Error): void {
    this.#auth.end(err);
  }

  /**
   * Sends one leg of a request for `origin` through the proxy, answering its 407s. A request that
   * carries its own `Proxy-Authorization` (S6) goes with exactly that header, and its 407 is the
   * caller's to answer: the agent's proxy credentials are neither added nor used for it. With
   * `proxy.deliver407`, a 407 the mechanism for it turns out unable to answer is given to the caller
   * through `deliverHeld`, as it came.
   */
  async send(
    request: {
      origin: string;
      method: string;
      path: string;
      ownProxyAuthorization: boolean;
      /**
       * The error that moves the request to a new connection, when it may run once more with proxy
       * credentials replaced since it left (and marks it so); undefined when it may not.
       */
      rerun?: () => Error | undefined;
      /**
       * R1/R4: the refusal memory's recall for the proxy credentials that the request waited for was
       * given up at queueTimeout (OriginPool #watchProxy): it goes without them, not asking again.
       */
      withheld?: boolean;
    },
    extra: Record<string, string>,
    classify: Classify,
    sendOnProxy: SendOnProxy,
    onHttp2: () => boolean,
    waiter: Waiter,
    deliverHeld: DeliverHeld,
  ): Promise<LegResult> {
    const protocol = await this.#protocol;
    const path = protocol === 'h2' ? request.path : `${request.origin}${request.path}`;
    const host = new URL(request.origin).host;
    if (request.ownProxyAuthorization)
      return sendOnProxy(
        { ...extra, host },
        (status, headers) => {
          this.#closing(headers);
          if (status !== 407) this.#note(status, headers, onHttp2);
          return classify(status, headers);
        },
        path,
      );
    const leg = proxyLeg(this.route.proxy, request.method, path);
    // R3: the 407 exchange — from the first 407 to the proxy's answer to the last leg, its bodies
    // drained and the mechanism's steps included — is bounded by limits.handshakeTimeout, as a
    // CONNECT is. A leg that ran out of time is ended, and the connection with it.
    let onWire: AbortableLeg | undefined;
    const ms = this.#limits.handshakeTimeout;
    // Made at the first 407 or header step: a request the proxy lets through at once needs none.
    let deadline: Deadline<ProxyTimeoutError> | undefined;
    const clock = (): Deadline<ProxyTimeoutError> => {
      deadline ??= new Deadline(
        ms,
        () => new ProxyTimeoutError(this.route.proxy.origin, ms, 'forward'),
        (err) => {
          onWire?.abort(err);
          this.#onUnusable(err);
        },
      );
      return deadline;
    };
    /** The deadline's error once it passed (a proof checked late is no success, H5). */
    const expired = () => (deadline?.timedOut ? deadline.error() : undefined);
    // (A deadline made while a leg is on the wire ends that leg through `onWire`.)
    const race = <T>(work: Promise<T>): Promise<T> => (deadline ? deadline.race(work) : work);
    /** R4: the last leg carried the proxy password and no answer has come to it (yet). */
    let secretUnanswered = false;
    let lastLeg: AbortableLeg | undefined;
    /** What ended the last leg, where it failed. */
    let failure: Error | undefined;
    const started = (l: AbortableLeg) => {
      onWire = l;
      lastLeg = l;
    };
    /** The last leg went to the socket (read through a closure: `started` sets it meanwhile). */
    const written = () => lastLeg?.written === true;
    // This request's leave to send the proxy credentials (account lockout: tried one at a time until
    // proved, not at all for a while after the proxy refused them), and what it learnt of them.
    const proof = this.route.proxy.proof;
    let ticket: Ticket | undefined;
    let outcome: ProofOutcome = 'none';
    /** A stale nonce was answered once already. */
    let renewed = false;
    /**
     * The opening was refused leave ({@link openingLeave}), or the recall it waited for was given up
     * (`request.withheld`): it goes bare, and its 407 asks no more. Why, as decided then: by its 407
     * the proof may say otherwise (another request's recall holding the password back, or a
     * refusal lifted).
     */
    let heldBack: HeldBackWhy | undefined = request.withheld === true ? 'recall-timeout' : undefined;
    /** A scheme whose challenge could not be read fell through to the next (once per request, T2). */
    let fellThrough = false;
    const admit = async (password: boolean): Promise<boolean> => {
      // A leave taken for no password (a Kerberos ticket) covers no password (R4: after a
      // fall-through to one, review r39): that takes its own.
      if (ticket?.covers(password) && proof.holds(ticket)) return true;
      // A leave that no longer holds (a refusal counted since, R4) is given back first: a probe's
      // would otherwise keep the next leave waiting for itself.
      if (ticket) proof.settle(ticket, 'none');
      const admission = await proxyLeave(this.route.proxy, password, waiter, this.#limits, deadline);
      if (admission === 'refused') return false;
      ticket = admission;
      return true;
    };
    /**
     * proxy.deliver407: the proxy's refusal of the credentials this request sent (a per-request
     * scheme's own, or taken up from another connection) is the caller's response, the 407 held
     * from its leg — counted as a refusal all the same (R4: `outcome`, set by the caller); so is a
     * 407 no credentials went to, held back after a refusal (`refused-lately`) or while the refusal
     * memory did not answer within queueTimeout (`recall-timeout`, R1: it refused nothing).
     */
    const refusedHeld = (held: HeldResponse, why: Withheld = 'refused'): LegResult => {
      log.proxy('%s: credentials %s: the 407 goes to the caller', this.route.proxy.origin, why);
      this.#unanswered(request, held.headers, why);
      return deliverHeld(held);
    };
    // This request's part in the connection's lead: it may run the handshake with the proxy (from
    // its opening, or from the 407 it answers with a new handshake) or wait for the one that does.
    const turn = this.#lead.turn();
    try {
      for (let answers = 0; ; answers++) {
        const first = turn.state === 'anew';
        // It waits for a handshake another request runs. NTLM the proxy's only scheme: its
        // NEGOTIATE goes on this connection's first request, as curl --proxy-ntlm sends it and as a
        // CONNECT's opening goes (2 requests rather than 3); this request then leads.
        if (first && (await turn.follow(waiter, deadline, () => this.#auth.opens))) {
          // Leave first (R4), as for a 407: the AUTHENTICATE after it passes the same gate.
          if (ticket === undefined && !heldBack)
            ({ ticket, heldBack } = await openingLeave(this.route.proxy, this.#auth, waiter, this.#limits, deadline));
          if (ticket && this.#auth.opens) {
            clock().start();
            await race(this.#auth.open(leg));
          }
        }
        // After a success — on this connection, or the proxy's 407 answered on another (a proxy
        // that closes the connection after each response is never answered on the one it asked
        // on) — a per-request scheme (Digest, Basic) makes this request's header: a step too — with
        // leave only; without, the request goes bare and a 407 ends it with why.
        if (first) this.#auth.adopt();
        const own = first && this.#auth.proactive;
        const allowed = !own || (!heldBack && (await admit(this.#auth.usesPassword())));
        if (own && allowed) clock().start();
        const credentials = allowed ? await race(this.#auth.header(leg)) : undefined;
        if (own && allowed) deadline?.stop();
        /** The challenges of the 407 this request answers (read once, for the leave and the answer). */
        let challenged: Challenge[] | undefined;
        /** The proxy said it closes the connection after its 407 (`Connection: close`). */
        let closes = false;
        /** A 407 that goes to the caller unanswered (proxy.deliver407): published once delivered. */
        let unanswered: ResponseHeaders | undefined;
        /** That 407 refused the credentials this request sent (not an opening NEGOTIATE, which has none). */
        let refusedHere = false;
        turn.sending();
        secretUnanswered = this.#auth.carriesPasswordIn(credentials);
        lastLeg = undefined;
        const result = await race(
          sendOnProxy(
            { ...extra, host, ...(credentials ? { 'proxy-authorization': credentials.value } : {}) },
            (status, headers) => {
              secretUnanswered = false;
              this.#closing(headers);
              if (status === 407) {
                const others = turn.answeredByAnother;
                // Past limits.maxLegs a 407 is the caller's under proxy.deliver407 (else the typed
                // error below), unanswered: it ends the handshake its leg ran, never as a success.
                const within = answers <= this.#limits.maxLegs || !this.route.proxy.deliver407;
                const challenges = readChallenges(headers, true);
                const answerable = this.#auth.canAnswer(challenges);
                if (within && (others || !this.route.proxy.deliver407 || answerable)) {
                  challenged = challenges;
                  closes = saysClose(headers);
                  clock().start();
                  // proxy.deliver407: kept (its body bounded by limits.maxChallengeBodyBytes), to be
                  // the caller's if the mechanism for it cannot run here, which shows only once
                  // tried: the request is not sent again to show it. (Another's handshake answers
                  // it otherwise: this request goes again after that one anyway.)
                  return this.route.proxy.deliver407 && !others ? 'hold' : 'swallow';
                }
                // proxy.deliver407: the 407 nothing here can answer is the caller's response (curl's way).
                // In the middle of a handshake, that 407 is the proxy's refusal (canAnswer): it counts
                // as a thrown refusal does — the password is held back (R4), and a refused
                // connection-bound handshake's connection retires (H1/C8: the proxy may keep the
                // failed context on it), once the caller has this response.
                // (Only the handshake this request leads: past limits.maxLegs another's may run. A
                // 407 asking for its next leg there: it failed at the bound.)
                const mine = turn.state === 'leading';
                const refusal = mine && !answerable ? this.#auth.refusedDelivered(challenges) : undefined;
                if (mine && answerable) this.#auth.giveUp();
                if (refusal) outcome = refusal;
                refusedHere = refusal !== undefined;
                if (this.#auth.refusedBound) this.#onUnusable(new Error(REFUSED_BOUND));
                deadline?.stop();
                // (Cut at the bound, not for a reason multileg:proxy-unanswered names: not published.)
                if (!answerable) unanswered = headers;
                return classify(status, headers);
              }
              // The proxy let the request through: the exchange with the proxy is over, but for its
              // final token; the origin's answer is the origin's to bound.
              this.#note(status, headers, onHttp2);
              const verdict = classify(status, headers);
              if (credentials && this.#auth.opening) {
                // The proxy let the opening's NEGOTIATE through (it proves nothing, R4): it wants no
                // authentication, so no connection to it opens again. (A 5xx may be the proxy's own
                // failure before it looked: only this connection goes on without the opening.)
                if (status < 500) this.#auth.notNeeded();
                else this.#auth.giveUp();
                deadline?.stop();
                turn.end();
                return verdict;
              }
              const ownContext = credentials?.own;
              if (ownContext && status !== 407) {
                // This request's own credentials (Digest): the proxy's answer proves itself as a
                // handshake's last does (rspauth), and may name the next nonce.
                const verified = this.#auth
                  .verify(ownContext, status, headers, leg, ticket, expired)
                  .then(({ proved, held }) => {
                    // Delivered without the proof its mechanism wants (M2): it proved nothing (R4, S6).
                    if (proved) outcome = 'success';
                    if (held) this.#onHolder();
                  });
                return this.#proved(verified, clock().start(), verdict);
              }
              if (!(credentials && this.#auth.state === 'handshaking')) {
                deadline?.stop();
                if (credentials && status !== 407) outcome = 'success';
                return verdict;
              }
              const succeeded = this.#auth.succeeded(status, headers, leg, ticket, expired).then((end) => {
                // M2/S6: a 403 or 5xx without the proxy's final token where the mechanism wants it is
                // the caller's, unproved: nothing recorded, and the connection, which the proxy may
                // hold as an identity nothing here proved, takes nothing more. So is a 5xx (nothing
                // proved whatever its proof), the connection kept unless a Kerberos identity holds it.
                if (end.retire) this.#onUnusable(new Error(end.outcome === 'unproved' ? UNPROVED : UNRECORDED));
                if (end.outcome !== 'success') return;
                outcome = 'success';
                // The connection is authenticated: the requests waiting for it go now.
                if (ticket) proof.settle(ticket, outcome);
                turn.succeeded();
                if (this.#auth.holder) this.#onHolder();
              });
              return this.#proved(succeeded, clock(), verdict);
            },
            path,
            started,
          ),
        );
        onWire = undefined;
        if (result.kind === 'failed') failure = result.error;
        // S6: this handshake's credentials (not an NTLM NEGOTIATE: it proves nobody) went on the
        // wire and its request ended with no answer read (the caller aborted): the proxy may have
        // taken them and hold the connection as that identity — a holder nothing recorded, which the
        // check for ambient Kerberos could never retire once its ticket is gone (review r74). It
        // ends, reported failed, and the connection retires. (A lost connection is gone anyway.)
        if (
          result.kind === 'failed' &&
          turn.state === 'leading' &&
          this.#auth.state === 'handshaking' &&
          this.#auth.connectionBound &&
          credentials !== undefined &&
          !carriesNoSecret(credentials.value) &&
          written() &&
          !connectionLost(result.error)
        ) {
          this.#auth.abandon(result.error);
          this.#onUnusable(new Error(UNANSWERED_BOUND));
        }
        // A leg answering this handshake's 407 lost its connection before any answer (the proxy
        // closed it after the 407 without saying so): a connection-bound handshake cannot go on
        // elsewhere — a new connection would start it bare again, and again. Named now.
        if (result.kind === 'failed' && answers > 0 && this.#auth.connectionBound && connectionLost(result.error)) {
          throw closedBetweenLegs(this.route.proxy, this.#auth.scheme, SILENT_CLOSE);
        }
        // The request goes again on another connection (the session's relocation): so does the
        // handshake this request ran, where it is reported.
        if (result.kind === 'failed' && turn.state === 'leading' && relocated(result.error)) this.#auth.moved();
        if (unanswered && result.kind === 'delivered')
          this.#unanswered(request, unanswered, refusedHere ? 'refused' : undefined);
        if (result.kind !== 'swallowed' || !challenged) return result;
        if (answers >= this.#limits.maxLegs && !this.route.proxy.deliver407) {
          // C11: the proxy kept answering 407 (to this request's legs, or while it followed other
          // requests' exchanges): a typed error, never the bare 407 (fetch would make it a network error).
          throw this.route.proxy.proof.refused
            ? refusedLately(this.route.proxy, offeredSchemes(challenged))
            : new LegLimitError(this.#limits.maxLegs, `proxy ${this.#auth.scheme ?? 'authentication'}`);
        }
        if (turn.answeredByAnother) {
          // Another request's handshake answers this 407: this one goes again after it (on the
          // connection it authenticated), bounded by limits.maxLegs as every leg is.
          turn.again();
          continue;
        }
        turn.take();
        if (this.#auth.state !== 'handshaking') {
          // A new handshake would answer this 407. Credentials this request sent on their own (a
          // per-request scheme's) were just refused: tried once more only while that may go.
          const offered = offeredSchemes(challenged);
          if (credentials && ticket) {
            const key = this.#auth.scheme?.toLowerCase();
            const again = challenged.find((c) => c.schemeKey === key);
            // A nonce the proxy no longer takes (Digest's stale=true) refused no password: answered
            // once more, as an origin's is; any other 407 to them is a refusal.
            if (credentials.own && !renewed && again?.params.stale?.toLowerCase() === 'true') renewed = true;
            // A 407 that no longer offers their scheme (the proxy now asks for another) judged
            // nothing sent: no refusal (R4), and new connections stop carrying it — as an origin's
            // declined proactive leg. A new handshake answers it.
            else if (credentials.own && again === undefined) this.#auth.forget();
            else {
              // Refused, but the agent has replaced them since this leg left (setProxyCredentials
              // after the proxy's password rotated): the request goes once more, on a new connection
              // with the current ones and leave of their own (R4), rather than failing with this refusal.
              const moved = proof.rerunsAfterRefusal(ticket) ? request.rerun?.() : undefined;
              if (moved) {
                log.proxy('%s: refused replaced credentials: the request goes again', this.route.proxy.origin);
                throw moved;
              }
              if (!proof.again(ticket)) {
                outcome = 'refused';
                const err = proof.refused
                  ? refusedLately(this.route.proxy, offered)
                  : rejected(
                      this.route.proxy,
                      this.#auth.scheme,
                      offered,
                      true,
                      this.#auth.kerberosSkipped(this.#auth.scheme),
                    );
                // Its report says why, delivered or thrown (failureReason: the error's words).
                if (credentials.own) this.#auth.refusedOwn(credentials.own, err);
                if (result.held && this.route.proxy.deliver407) return refusedHeld(result.held);
                throw err;
              }
            }
          } else {
            // Refused here lately (R4), or the refusal memory's recall given up at queueTimeout (R1;
            // for the opening: not asked twice for one request): nothing is sent. proxy.deliver407:
            // that 407 is the caller's, as its refusal was (not a typed error for the same 407 on
            // the next request). Why: as decided when leave was refused.
            // A 407 that no configured scheme answers sends nothing: it takes no leave (R1/R4: else a
            // probe each, each asking the refusal memory again, one request after another).
            let why = heldBack;
            if (!why && this.#auth.answers(challenged) && !(await admit(this.#auth.usesPassword(challenged))))
              why = proof.heldBackWhy;
            if (why) {
              if (result.held && this.route.proxy.deliver407) return refusedHeld(result.held, why);
              throw refusedLately(this.route.proxy, offered, this.#limits.queueTimeout, why);
            }
          }
        }
        try {
          // T2: a scheme whose challenge could not be read falls through to the next one, once per
          // request; where this 407 offers no other, the request goes again bare on a new
          // connection (this one's ends: its next leg finds it closed, and moves).
          const fell = await race(this.#auth.answer(challenged, leg, !fellThrough));
          if (fell) fellThrough = true;
          if (fell === 'bare') this.#onUnusable(new Error(FELL_THROUGH));
          // The next leg of a connection-bound handshake (NTLM, Negotiate) would have to go on the
          // connection the proxy just said it closes; on another it would start bare again, and
          // again, until the relocation limit. Named now, as a CONNECT's is.
          if (closes && this.#auth.connectionBound) {
            throw closedBetweenLegs(this.route.proxy, this.#auth.scheme, 'its 407 said Connection: close');
          }
        } catch (err) {
          if (err instanceof ProxyAuthenticationError && err.refused) outcome = this.#auth.refusal;
          // H1/C8: the refused connection-bound context may stay on this connection at the proxy:
          // it retires (the caller gets this error), and the next handshake opens another.
          if (this.#auth.refusedBound) this.#onUnusable(err as Error);
          if (result.held && this.route.proxy.deliver407 && err instanceof ProxyAuthenticationError && err.refused)
            return refusedHeld(result.held);
          // proxy.deliver407: every mechanism for this 407 turned out unable to run here (Negotiate
          // without a Kerberos ticket), which shows only once tried: the 407 held from the leg is
          // the caller's, with why, sent once as curl sends it (the scheme stays excluded on this
          // connection: its next 407 goes to the caller at once). A body cut at its bound was not
          // kept: the typed error says why instead.
          if (
            result.held &&
            this.route.proxy.deliver407 &&
            err instanceof ProxyAuthenticationError &&
            !err.refused &&
            !this.#auth.canAnswer(challenged)
          ) {
            log.proxy('%s: no usable scheme for its 407: the 407 goes to the caller', this.route.proxy.origin);
            // Not a refusal: nothing here could answer it (#unanswered says `unusable`, with why).
            this.#unanswered(request, result.held.headers);
            return deliverHeld(result.held);
          }
          throw err;
        }
      }
    } catch (err) {
      // The connection's handshake this request ran ends with it (reported failed, once); a request
      // that waited for another's leaves that one running.
      if (turn.state === 'leading') this.#auth.abandon(err);
      failure = err as Error;
      return { kind: 'failed', error: err as Error };
    } finally {
      deadline?.stop();
      turn.end();
      // R4: a leg carrying the password that the proxy never answered — its deadline ran out, or
      // the connection closed under it — may have been counted: unproved credentials wait as after
      // a refusal. Not the caller's abort, nor undici's headersTimeout (a forwarding proxy says
      // nothing while the origin behind it takes its time: review r51).
      const silent =
        deadline?.timedOut === true || (failure !== undefined && (closedUnder(failure) || connectionLost(failure)));
      if (outcome === 'none' && secretUnanswered && lastLeg?.written === true && silent) outcome = 'unanswered';
      if (ticket) proof.settle(ticket, outcome);
    }
  }

  /**
   * The proxy's final token (M2) is checked before the response it came with reaches anyone, within
   * the deadline, as a CONNECT's is: a response is held for it (`verdict`: the origin's own gate
   * too); a failed check fails the request and the connection is not used again.
   */
  #proved(check: Promise<void>, deadline: Deadline<ProxyTimeoutError>, verdict: Verdict): Verdict {
    const proved = deadline.race(check).then(
      () => deadline.stop(),
      (err: Error) => {
        deadline.stop();
        // (On expiry the deadline's own hook has made the connection unusable already.)
        if (!deadline.timedOut) this.#onUnusable(err);
        throw err;
      },
    );
    if (verdict === 'swallow' || verdict === 'hold' || verdict === 'keep') {
      // An origin's challenge goes on to its next leg; a failed check closes the connection under it.
      proved.catch(() => {});
      return verdict;
    }
    return verdict === 'deliver' ? proved : Promise.all([proved, verdict]).then(() => {});
  }

  /**
   * Publishes why a 407 goes to the caller unanswered; `refused`: the proxy refused the credentials
   * this request carried, or (`refused-lately`) refused them lately, so that none went (R4), or
   * (`recall-timeout`) none went as the refusal memory did not answer within queueTimeout (R1).
   */
  #unanswered(request: { origin: string; path: string }, headers: ResponseHeaders, refused?: Withheld): void {
    publishProxyUnanswered(() => {
      const unusable = this.#auth.unusableIn(headers);
      return {
        proxy: this.route.proxy.origin,
        origin: request.origin,
        path: request.path,
        reason: refused ?? (unusable.length > 0 ? 'unusable' : 'unconfigured'),
        ...(refused === 'refused-lately' ? { heldBackFor: this.route.proxy.proof.refusedFor } : {}),
        ...(refused === 'recall-timeout' ? { queueTimeout: this.#limits.queueTimeout } : {}),
        schemes: offeredSchemes(readChallenges(headers, true)),
        unusable: unusable.map(({ scheme, error }) => ({ scheme, code: error.code, message: error.message })),
        time: Date.now(),
      };
    });
  }

  /**
   * A proxy that closes the connection after an answer (Squid's client_persistent_connections off;
   * old proxies after each 407) gets nothing more on it: the next leg goes elsewhere at once.
   */
  #closing(headers: ResponseHeaders): void {
    if (saysClose(headers)) this.#onClosing();
  }

  /** What the proxy says of the origin in an answer that is not its own 407 (H3, H4). */
  #note(status: number, headers: ResponseHeaders, onHttp2: () => boolean): void {
    this.#vouched = readProxySupport(headers);
    if (/^1(\.[01])?$/.test(readRemoteHttpVersion(headers) ?? '')) {
      this.#onRemoteHttp1();
      // A challenge over HTTP/2: authenticate over HTTP/1.1 instead (draft §4.2).
      if (status === 401 && onHttp2()) throw new RemoteHttp1Error();
    }
  }
}
