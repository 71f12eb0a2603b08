import {
  hasPersistentAuth,
  readAuthenticationInfo,
  readAuthId,
  readChallenges,
  readPersistentAuth,
} from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import { Deadline } from '../deadline.ts';
import {
  AuthIdInUseError,
  closedUnder,
  HandshakeTimeoutError,
  InvalidTokenError,
  isFramingError,
  LegLimitError,
  MultilegError,
  type NoStream,
  ResponseFramingError,
} from '../errors.ts';
import { log } from '../log.ts';
import { atOpening, cannotRunHere, carriesPassword, challengeAsks, sentPassword } from '../mechanisms/registry.ts';
import type { LegInfo, Mechanism, MechanismContext } from '../mechanisms/types.ts';
import type { LegResult, ResponseHeaders, Verdict } from './leg.ts';
import type { UserSink } from './user-sink.ts';

/**
 * Sends one leg with extra headers on the handshake's connection and calls `onResult` with its
 * result; supplied by the session.
 */
export type SendLeg = (
  extra: Record<string, string>,
  classify: (status: number, headers: ResponseHeaders) => Verdict,
  onResult: (r: LegResult) => void,
) => void;

/**
 * The Auth-IDs the live handshakes of one session hold (C3: never one Auth-ID on two requests in
 * flight, D2§3.1). The session owns it; each handshake claims the Auth-ID its next leg carries
 * before the leg leaves and lets it go when it ends, whatever the end.
 */
export interface AuthIdClaims {
  /** Claims `id` for one handshake: false when another live handshake on the session holds it. */
  claim(id: string): boolean;
  /** Lets `id` go: the handshake that claimed it ended, or moved on to another Auth-ID. */
  release(id: string): void;
}

export interface HandshakeInput {
  readonly mechanism: Mechanism;
  /** The server's challenge for this scheme from the 401 that started it; undefined = proactive. */
  readonly challenge: Challenge | undefined;
  readonly leg: LegInfo;
  readonly send: SendLeg;
  readonly sink: UserSink;
  readonly maxLegs: number;
  readonly timeout: number;
  /** HTTP/2: a connection-bound exchange that loses its state between streams means "use HTTP/1.1". */
  readonly onHttp2: boolean;
  /** An Auth-ID the server put on the 401 that started it (C3: sent on every later leg). */
  readonly authId?: string;
  /**
   * The session's {@link AuthIdClaims}: a leg whose Auth-ID another live handshake there holds (a
   * server that gave one to two handshakes at once) is not sent; the handshake fails with
   * {@link AuthIdInUseError}.
   */
  readonly authIds?: AuthIdClaims;
  /**
   * Takes one of the session's handshake slots (draft §3.1: servers cap incomplete security
   * contexts per session) and returns its release. Asked for before the first leg that leaves, or
   * may leave, an incomplete context on the server — not for a first leg the server completes in
   * one (a proactive Kerberos token, C4: per-request mode blocks no stream). Its errors (full,
   * timed out, aborted) are thrown when nothing was sent yet. A free slot comes at once (no promise).
   */
  readonly slot?: () => (() => void) | Promise<() => void>;
  /**
   * The first leg, holding a slot, met a bare 401 (this scheme offered again, with no token): asks
   * the session whether that was the server's cap on incomplete contexts (draft §3.1). When it
   * says so the 401 is not shown: the handshake ends `refused`, to be run again.
   */
  readonly contextRefused?: () => boolean;
  /**
   * The server's final 401 refused this handshake's last leg: asks whether the credentials it
   * carried have been replaced since (setCredentials) and the request may run its handshake once
   * more with the current ones. When it says so the 401 is not shown: the handshake ends
   * `refused` with that 401's challenges, to be answered with the current mechanisms.
   */
  readonly superseded?: () => boolean;
  /**
   * Asked when the handshake's clock ends it with a leg on the wire: whether the server never gave
   * that leg a stream, and why (the timeout's message then says so, R3).
   */
  noStream?(): NoStream | undefined;
  /**
   * Led before any 401 at an origin nothing is known of (curl --ntlm's first leg): a 401 that does
   * not offer this scheme is the caller's answer, as a bare request would have met it — nothing else
   * could answer it, and nothing more is sent.
   */
  readonly opening?: boolean;
}

export type HandshakeResult =
  | {
      readonly kind: 'success';
      readonly legs: number;
      /** Persistent-Auth on the final response (C4), or a connection-only scheme (C5). */
      readonly sessionAuthenticated: boolean;
      /** The context authenticated the connection rather than the request (NTLM inside Negotiate). */
      readonly connectionBound?: boolean;
      readonly authIdCarried: boolean;
      readonly identity?: string;
      readonly fallbackReason?: string;
      /** Negotiate: the service principal the context asked a ticket for. */
      readonly spn?: string;
      readonly done: Promise<void>;
    }
  /**
   * The caller got the server's final 401 or a typed error; `done` settles when it has it all.
   * `proofFailed`: the server's final token failed verification (mutual authentication): the
   * connection must not be used again (its peer never proved who it is).
   */
  | {
      readonly kind: 'failed';
      readonly legs: number;
      readonly authIdCarried: boolean;
      readonly fallbackReason?: string;
      /** Negotiate: the service principal the context asked a ticket for. */
      readonly spn?: string;
      readonly done: Promise<void>;
      readonly proofFailed?: MultilegError;
      /**
       * The caller got a final answer other than a 2xx (a redirect, a 404, a 5xx) that carried
       * neither the scheme's token nor Authentication-Info while the mechanism still waited for the
       * server's proof (Kerberos' AP-REP), and the mechanism would not do without it (mutualAuth
       * 'required'): nothing is proved, no session, no identity (M2, S6).
       */
      readonly unproved?: true;
      /**
       * The caller got a final answer (any status but a 401 or a 407) that said `Persistent-Auth:
       * true`, and the handshake is not recorded as a success: the server holds the connection as
       * someone the session does not record (unproved, or a 5xx), so it must carry nothing more (S6).
       */
      readonly persistent?: true;
      /** The error the caller got, when it was not the server's own 401. */
      readonly error?: Error;
      /**
       * The server's final 401: it refused these credentials. Any other end (an error, a 5xx that
       * says neither yes nor no) leaves them untried.
       */
      readonly refused?: true;
      /**
       * With `refused`: the 401 answered the opening leg of a multi-leg handshake (an NTLM
       * NEGOTIATE, a first leg that is not a Kerberos AP-REQ), which carries no credential: the
       * server would not start a context (a cap, a policy), it did not refuse a password.
       */
      readonly opening?: true;
      /**
       * With `refused`: what was refused surely carried no password (a Kerberos ticket only,
       * `sentPassword`): R4 keeps it back 30 s each time, where a refused password's wait doubles.
       */
      readonly noPassword?: true;
      /**
       * With `refused`: the refused context authenticates the connection, not the request (NTLM,
       * NTLM inside Negotiate: C5, H1). A server may keep it, failed, on the connection (Apache
       * mod_auth_gssapi), so no later handshake there can succeed.
       */
      readonly connectionBound?: true;
      /**
       * A leg carrying credentials derived from the password (not an NTLM NEGOTIATE, not a Kerberos
       * ticket alone: `sentPassword`) was written and never answered: the handshake timed out or its
       * connection closed under it. The server may have counted it as a try of the password (R4).
       */
      readonly passwordUnanswered?: true;
      /**
       * The first leg never reached the server (its connection failed: refused, TLS, DNS, or not
       * up within the handshake's deadline; or it was given up before undici wrote it): the server
       * took part in nothing — no handshake to report, no credentials tried. The caller has the
       * error (the connection's own, or the clock's).
       */
      readonly unreached?: true;
    }
  /** Not finished here and nothing reached the caller: run the request again elsewhere. */
  | {
      readonly kind: 'relocate';
      readonly legs: number;
      readonly reason: 'http1' | 'connection-ended';
      readonly error?: Error;
    }
  /**
   * The server would not start this handshake's security context: it holds as many incomplete
   * ones on the session as it allows (draft §3.1). Nothing reached the caller: run it again.
   */
  | {
      readonly kind: 'refused';
      /**
       * Set when what was refused were credentials replaced since (see
       * {@link HandshakeInput.superseded}): the refusal's challenges, to answer with the current ones.
       */
      readonly offered?: readonly Challenge[];
      /** With `offered`: the refusal's Auth-ID (C3). */
      readonly authId?: string;
    }
  /** The mechanism cannot run here (no ticket, package missing) and sent nothing: try another scheme (T2). */
  | { readonly kind: 'unusable'; readonly error: Error }
  /**
   * A first token sent before any challenge got a final answer that took no part in it (no token
   * back, no Persistent-Auth): a resource that needs no authentication — or, after an
   * {@link HandshakeInput.opening}, a 401 that does not offer the scheme. The caller has its
   * response; nothing was authenticated, so nothing is recorded (C6).
   */
  | { readonly kind: 'unanswered'; readonly done: Promise<void> }
  /**
   * A proactive first leg was answered with a 401 that does not offer this scheme any more (the
   * origin changed, or what was remembered is stale): nothing reached the caller; answer `offered`
   * (with that 401's Auth-ID, C3).
   */
  | { readonly kind: 'declined'; readonly offered: readonly Challenge[]; readonly authId?: string };

/**
 * R4: whether a written leg that got no response head may have been counted by the server as a try
 * of the credentials it carried: the handshake's clock ran out (`timedOut`), or undici's
 * headersTimeout did (the agent's, which may be the shorter), or the connection closed under it —
 * not the caller's abort, a stream the server reset, or a head that could not be read (an answer).
 * Requests' and upgrades'.
 */
export function unansweredMayCount(timedOut: boolean, error: Error): boolean {
  return timedOut || closedUnder(error) || (error as { code?: unknown }).code === 'UND_ERR_HEADERS_TIMEOUT';
}

/**
 * M2: whether a final answer (not a 401 or 407) to a leg with credentials must prove the server: the
 * success the credentials bought (a 2xx; an upgrade's 101, a CONNECT's 2xx), or one that carries the
 * scheme's final token or Authentication-Info (a forged token is no less forged on a 302: review
 * r57). A failed check of it is the caller's MutualAuthError, the answer withheld. Any other answer (a
 * redirect, a 403, a 5xx: no resource to withhold) is delivered without the proof the mechanism may
 * still want, proving nothing (S6). Requests' and upgrades'.
 */
export function proofRequired(
  status: number,
  final: Challenge | undefined,
  info: Readonly<Record<string, string>> | undefined,
): boolean {
  return status === 101 || (status >= 200 && status < 300) || info !== undefined || final?.token68 !== undefined;
}

/** Errors that mean "this connection is gone or refuses us", not "this request failed". */
export function relocationReason(err: Error): 'http1' | 'connection-ended' | undefined {
  const e = err as Error & { http2ErrorCode?: number; code?: string };
  // RST_STREAM HTTP_1_1_REQUIRED: undici puts the code on the error (structured).
  if (e.http2ErrorCode === 0xd || e.code === 'MULTILEG_HTTP1_REQUIRED') return 'http1';
  if (e.code === 'MULTILEG_STALE_CONNECTION') return 'connection-ended';
  return undefined;
}

/**
 * The error code of a GOAWAY, from the error undici emits with `disconnect` and fails the refused
 * streams with. undici (client-h2.js getGoAwayError) has no structured field for it, only this
 * message text, so it is read here and nowhere else.
 */
export function goawayCode(err: Error): number | undefined {
  const m = /"GOAWAY" frame received with code (\d+)/.exec(err.message);
  return m ? Number(m[1]) : undefined;
}

/**
 * One handshake's deadline (R3), started now, over every leg on the wire (`onExpire` aborts the one
 * there) and every step of the mechanism (GSS-API calls, DNS canonicalisation: raced against it).
 * Paused while the handshake waits for a slot (that wait has its own bounds, R1), then started again.
 */
export function handshakeClock(
  ms: number,
  scheme: string,
  onExpire: (err: HandshakeTimeoutError) => void,
  noStream?: () => NoStream | undefined,
  waitingOn?: () => string | undefined,
): Deadline<HandshakeTimeoutError> {
  return new Deadline(
    ms,
    () => {
      // A mechanism step that waits outside the process (GSS-API: a KDC, DNS): that, not the server.
      const waiting = waitingOn?.();
      return waiting !== undefined
        ? new HandshakeTimeoutError(ms, scheme, `waiting on ${waiting}`, undefined, true)
        : new HandshakeTimeoutError(ms, scheme, undefined, noStream?.());
    },
    onExpire,
  ).start();
}

function challengeFor(headers: ResponseHeaders, scheme: string): Challenge | undefined {
  const key = scheme.toLowerCase();
  return readChallenges(headers).find((c) => c.schemeKey === key);
}

/**
 * Runs one handshake to its end: each leg carries the mechanism's next token and the server's
 * latest Auth-ID (C3) — on this handshake's legs only, one leg in flight at a time. `done` gets the
 * result; `noSlot` the error of a wait for a handshake slot before the first leg that failed
 * (nothing was sent).
 */
export function runHandshake(
  input: HandshakeInput,
  done: (r: HandshakeResult) => void,
  noSlot: (err: Error) => void,
): void {
  new Handshake(input, done, noSlot).start();
}

/**
 * One handshake as an explicit state, driven by callbacks (a mechanism step's promise, a leg's
 * result): no promise, closure or race per leg (per-request mode runs one per request).
 */
class Handshake {
  readonly #input: HandshakeInput;
  readonly #mechanism: Mechanism;
  readonly #sink: UserSink;
  readonly #done: (r: HandshakeResult) => void;
  readonly #noSlot: (err: Error) => void;
  #context!: MechanismContext;
  #clock!: Deadline<HandshakeTimeoutError>;
  /** `step`: the mechanism makes a token; `slot`: waiting for a handshake slot; `leg`: on the wire. */
  #phase: 'step' | 'slot' | 'leg' | 'over' = 'step';
  #legs = 0;
  #authId: string | undefined;
  /** The Auth-ID this handshake holds in the session's claims (C3), let go at its end. */
  #heldAuthId: string | undefined;
  #authIdCarried = false;
  #release: (() => void) | undefined;
  /** This scheme's challenge in the last 401 (undefined on a proactive first leg). */
  #challenge: Challenge | undefined;
  #authorization = '';
  // What the classifier saw of the leg on the wire (reset for each leg).
  #sentAfterServerToken = false;
  #legacyLost = false;
  #declined = false;
  #refused = false;
  #superseded = false;
  #finishError: MultilegError | undefined;
  /**
   * The server's final token: `pending` while the mechanism verifies it (the response is held for
   * it); a gate ended before the mechanism (the clock, the caller's abort, a reset stream) leaves it
   * `pending`: nothing was proved, whatever the status.
   */
  #verification: 'none' | 'pending' | 'passed' = 'none';
  #persistent = false;
  #unanswered = false;
  /** A final answer that is not a 2xx came without the proof the mechanism still waits for. */
  #unproved = false;
  /**
   * This scheme's challenge in the 401, read once by the classifier for the next leg (not parsed
   * again); a 401 swallowed before the classifier saw it (a renewed Digest nonce) is read later.
   */
  #next: Challenge | undefined;
  #nextRead = false;
  // One of each per handshake, not per leg.
  readonly #classify = (status: number, headers: ResponseHeaders): Verdict => this.#classifyLeg(status, headers);
  readonly #onLeg = (r: LegResult): void => this.#legDone(r);
  readonly #onStep = (authorization: string): void => this.#stepped(authorization);
  readonly #onStepError = (err: unknown): void => this.#stepFailed(err);
  /** Whether a step's queued work is no longer wanted: the handshake ended, or its caller aborted. */
  readonly #gaveUp = (): boolean => this.#phase === 'over' || this.#sink.aborted;

  constructor(input: HandshakeInput, done: (r: HandshakeResult) => void, noSlot: (err: Error) => void) {
    this.#input = input;
    this.#mechanism = input.mechanism;
    this.#sink = input.sink;
    this.#authId = input.authId;
    this.#challenge = input.challenge;
    this.#done = done;
    this.#noSlot = noSlot;
  }

  start(): void {
    try {
      this.#context = this.#mechanism.createContext(this.#input.leg);
    } catch (err) {
      this.#phase = 'over';
      if (cannotRunHere(err)) this.#done({ kind: 'unusable', error: err });
      else this.#tell(err as Error, this.#failed(err as Error));
      return;
    }
    // Aborting through the sink reaches whichever leg is on the wire; a step running then ends the
    // handshake here (a step that never returns cannot hold the caller, R3).
    this.#clock = handshakeClock(
      this.#input.timeout,
      this.#mechanism.scheme,
      (err) => {
        // A leg on the wire ends with the abort (its result ends the handshake, #legDone). A step
        // running: the handshake lets go of what it holds before the caller hears (#end).
        if (this.#phase !== 'step') this.#sink.abort(err);
        else this.#end(this.#failed(err), err, true);
      },
      // (Only for a leg: a mechanism step that never returns is no stream's fault.)
      () => (this.#phase === 'leg' ? this.#input.noStream?.() : undefined),
      () => (this.#phase === 'step' ? this.#context.waitingOn : undefined),
    );
    this.#step();
  }

  /** What the context tells for the report: why Kerberos was skipped, the SPN it was asked for. */
  #reported(): { fallbackReason?: string; spn?: string } {
    const reason = this.#context?.fallbackReason;
    const spn = this.#context?.spn;
    return { ...(reason ? { fallbackReason: reason } : {}), ...(spn ? { spn } : {}) };
  }

  /** Ends the handshake; the caller gets `err` (a typed error, never the mechanism's own exception). */
  #fail(err: Error, passwordUnanswered = false, unreached = false): void {
    this.#end(this.#failed(err, passwordUnanswered, unreached), err);
  }

  /** The result of a failure whose error the caller gets (see {@link #fail}). */
  #failed(err: Error, passwordUnanswered = false, unreached = false): HandshakeResult {
    return {
      kind: 'failed',
      legs: this.#legs,
      authIdCarried: this.#authIdCarried,
      ...this.#reported(),
      done: Promise.resolve(),
      error: err,
      ...(passwordUnanswered ? { passwordUnanswered } : {}),
      ...(unreached ? { unreached } : {}),
    };
  }

  /** The leg that failed was the first, and undici never started it: nothing reached the server. */
  #unreached(result: LegResult): boolean {
    return result.kind === 'failed' && result.unsent === true && this.#legs === 1;
  }

  /** undici's untyped framing error on a handshake leg is the caller's {@link ResponseFramingError}. */
  #typed(err: Error): Error {
    return isFramingError(err)
      ? new ResponseFramingError(this.#input.leg.origin, this.#mechanism.scheme, { cause: err })
      : err;
  }

  /**
   * The leg that failed was written, carried the password (or what derives from it) and got no
   * answer before the handshake's clock ran out or the connection closed under it: R4 counts it.
   * (Not the caller's abort, nor a stream the server reset: those end it for other reasons.)
   */
  #passwordUnanswered(result: LegResult): boolean {
    return (
      result.kind === 'failed' &&
      result.unanswered === true &&
      unansweredMayCount(this.#clock.timedOut, result.error) &&
      carriesPassword(this.#mechanism, this.#context, this.#legs)
    );
  }

  /** A failure after the caller got the last leg's response (`done`: when it is consumed). */
  #failedAfter(
    done: Promise<void>,
    why: Pick<
      Extract<HandshakeResult, { kind: 'failed' }>,
      'refused' | 'opening' | 'noPassword' | 'connectionBound' | 'proofFailed' | 'error' | 'unproved'
    >,
  ): HandshakeResult {
    // Whatever ended it, a final answer that said Persistent-Auth: true left the server holding the
    // connection as someone the session does not record (review r59: a 5xx's).
    const persistent = this.#persistent ? { persistent: true as const } : {};
    return {
      kind: 'failed',
      legs: this.#legs,
      authIdCarried: this.#authIdCarried,
      ...this.#reported(),
      done,
      ...persistent,
      ...why,
    };
  }

  /**
   * Ends the handshake: what it holds (its clock, its Auth-ID claim, its slot, its mechanism's
   * context) is let go first, then the caller hears `tell` (`abort`: as the caller's abort does,
   * which R2's hand-over reads) and the session gets `r` (review r58: a throwing onResponseError
   * left the claim held, and every later handshake on the session failed AuthIdInUseError; the sink
   * now keeps such a throw). The context is disposed whatever the end (C4, review r79: a Kerberos
   * context left incomplete — an answer to a proactive token with no final token, an abort between
   * legs — counted as a handshake in flight until collected, sending lone requests' GSS-API calls
   * to a worker).
   */
  #end(r: HandshakeResult, tell?: Error, abort = false): void {
    this.#phase = 'over';
    this.#clock.stop();
    this.#context.dispose?.();
    this.#letGoAuthId();
    const release = this.#release;
    this.#release = undefined;
    release?.();
    if (tell === undefined) this.#done(r);
    else this.#tell(tell, r, abort);
  }

  /** The caller gets `err` (the sink never throws: a throwing handler is its warning), the session `r`. */
  #tell(err: Error, r: HandshakeResult, abort = false): void {
    if (abort) this.#sink.abort(err);
    this.#sink.fail(err);
    this.#done(r);
  }

  /** Every end lets the Auth-ID go: the server destroys its mapping then (D§3.1), so it may come again. */
  #letGoAuthId(): void {
    const held = this.#heldAuthId;
    if (held === undefined) return;
    this.#heldAuthId = undefined;
    this.#input.authIds?.release(held);
  }

  /**
   * Claims the Auth-ID the next leg carries (C3). False when another live handshake on the session
   * holds it: the server gave it to both at once, and a leg under it could complete the other's
   * context with this one's token (S6) — nothing is sent under it.
   */
  #claimAuthId(id: string): boolean {
    const claims = this.#input.authIds;
    if (claims === undefined || id === this.#heldAuthId) return true;
    if (!claims.claim(id)) return false;
    this.#letGoAuthId();
    this.#heldAuthId = id;
    return true;
  }

  #step(): void {
    const { maxLegs, leg } = this.#input;
    if (this.#legs >= maxLegs) {
      this.#fail(new LegLimitError(maxLegs, this.#mechanism.scheme));
      return;
    }
    this.#phase = 'step';
    let token: Promise<string>;
    try {
      token = this.#context.step(this.#challenge, leg, this.#gaveUp);
    } catch (err) {
      this.#stepFailed(err);
      return;
    }
    // (A mechanism written in plain JavaScript may return its token as it is.)
    Promise.resolve(token).then(this.#onStep, this.#onStepError);
  }

  #stepFailed(err: unknown): void {
    if (this.#phase !== 'step') return; // the clock ended the handshake meanwhile
    if (this.#legs === 0 && cannotRunHere(err)) {
      this.#end({ kind: 'unusable', error: err });
      return;
    }
    const error = err instanceof MultilegError ? err : new InvalidTokenError(`${this.#mechanism.scheme} challenge`);
    this.#fail(error);
  }

  #stepped(authorization: string): void {
    if (this.#phase !== 'step') return; // the clock ended the handshake meanwhile
    this.#legs += 1;
    this.#authorization = authorization;
    const input = this.#input;
    if (
      this.#release === undefined &&
      input.slot &&
      this.#mechanism.multileg &&
      !(this.#legs === 1 && this.#context.firstLegCompletes)
    ) {
      // The wait for a slot has its own bounds (R1): the handshake's clock starts again after it.
      this.#clock.pause();
      let got: (() => void) | Promise<() => void>;
      try {
        got = input.slot();
      } catch (err) {
        this.#slotFailed(err as Error);
        return;
      }
      if (typeof got === 'function') {
        this.#clock.start();
        this.#release = got;
      } else {
        this.#phase = 'slot';
        got.then(
          (release) => {
            this.#clock.start();
            this.#release = release;
            this.#sendLeg();
          },
          (err: Error) => this.#slotFailed(err),
        );
        return;
      }
    }
    this.#sendLeg();
  }

  #slotFailed(err: Error): void {
    this.#clock.start();
    if (this.#legs > 1) {
      this.#fail(err);
      return;
    }
    // Nothing was sent: the caller decides (it may hand the handshake over, R2).
    this.#phase = 'over';
    this.#clock.stop();
    this.#context.dispose?.();
    this.#noSlot(err);
  }

  #sendLeg(): void {
    const authId = this.#authId;
    if (authId !== undefined && !this.#claimAuthId(authId)) {
      // Not sent: the legs count what went with credentials. The request fails (no retry: the
      // server's Auth-ID handling is broken, and a retry would meet it again), a failure that
      // refused no credentials (R4).
      this.#legs -= 1;
      this.#fail(new AuthIdInUseError(this.#input.leg.origin, this.#mechanism.scheme));
      return;
    }
    const extra: Record<string, string> = { authorization: this.#authorization };
    if (authId !== undefined) {
      extra['auth-id'] = authId;
      this.#authIdCarried = true;
    }
    this.#sentAfterServerToken = this.#challenge?.token68 !== undefined;
    this.#legacyLost = false;
    this.#declined = false;
    this.#refused = false;
    this.#superseded = false;
    this.#finishError = undefined;
    this.#verification = 'none';
    this.#persistent = false;
    this.#unanswered = false;
    this.#unproved = false;
    this.#next = undefined;
    this.#nextRead = false;
    this.#phase = 'leg';
    this.#input.send(extra, this.#classify, this.#onLeg);
  }

  /** The caller gets a typed error, never the mechanism's own exception (its text may say too much). */
  #finish(final: Challenge | undefined, info?: Readonly<Record<string, string>>): Promise<void> {
    this.#verification = 'pending';
    return this.#context.finish(final, this.#input.leg, info).then(
      () => {
        this.#verification = 'passed';
      },
      (err: Error) => {
        const error = err instanceof MultilegError ? err : new InvalidTokenError('final token');
        this.#finishError = error;
        throw error;
      },
    );
  }

  #classifyLeg(status: number, headers: ResponseHeaders): Verdict {
    const input = this.#input;
    const context = this.#context;
    const scheme = this.#mechanism.scheme;
    const legs = this.#legs;
    if (status === 401) {
      const next = challengeFor(headers, scheme);
      this.#next = next;
      this.#nextRead = true;
      // A token asks for the next leg, unless it is the server's refusal (an SPNEGO reject); one of
      // credentials the mechanism has renewed since (a ticket under a rotated key) runs the request's
      // handshake again with the new ones.
      const asks = challengeAsks(context, next);
      if (asks === 'next-leg') return 'swallow';
      if (asks === 'run-again') {
        this.#refused = true;
        return 'swallow';
      }
      if (legs === 1 && this.#release !== undefined && next && input.contextRefused?.()) {
        this.#refused = true;
        return 'swallow';
      }
      // A legacy HTTP/2 server (Apache) keeps connection-bound state per stream: our answer to
      // its challenge meets a fresh bare challenge and no Auth-ID was ever offered.
      if (
        input.onHttp2 &&
        this.#sentAfterServerToken &&
        this.#authId === undefined &&
        next &&
        next.token68 === undefined
      ) {
        this.#legacyLost = true;
        return 'swallow';
      }
      if (input.challenge === undefined && legs === 1 && !next && input.opening) {
        this.#unanswered = true;
        return 'deliver';
      }
      // An opening the server did not take up (a bare NTLM challenge back): its 401 is answered as
      // the bare first request's would have been, not shown to the caller.
      const ignored = input.opening === true && next !== undefined && next.token68 === undefined;
      if (input.challenge === undefined && legs === 1 && (!next || ignored) && readChallenges(headers).length > 0) {
        this.#declined = true;
        return 'swallow';
      }
      // The final refusal of credentials replaced since this leg left (setCredentials after a
      // rotation): not the caller's answer while the agent holds others; run again with them (once).
      if (input.superseded?.()) {
        this.#superseded = true;
        return 'swallow';
      }
      return 'deliver';
    }
    // A forwarding proxy's 407 (proxy.deliver407, or to the caller's own Proxy-Authorization):
    // the origin never saw this leg, so it says nothing of the handshake.
    if (status === 407) return 'deliver';
    // The server's final answer: it destroyed the Auth-ID's mapping as it sent it (D§3.1) and may
    // give the same ID to its next handshake at once, while this one's last token is still being
    // verified (C3, review r58: a spurious AuthIdInUseError). Nothing more goes under it.
    this.#letGoAuthId();
    // A final answer to the opening of a multi-leg handshake (an NTLM NEGOTIATE, which carries no
    // credential): the server let the request through without authenticating anyone, whatever
    // Persistent-Auth says — nothing is proved, the session is not taken as authenticated (C6, S6;
    // review r50: it was recorded as alice's session).
    if (atOpening(this.#mechanism, context, legs) && !context.complete) {
      this.#unanswered = true;
      return 'deliver';
    }
    this.#persistent = readPersistentAuth(headers);
    const final = challengeFor(headers, scheme);
    if (
      input.challenge === undefined &&
      legs === 1 &&
      !context.complete &&
      final?.token68 === undefined &&
      !hasPersistentAuth(headers)
    ) {
      // Over TLS the certificate already proved the server. Over cleartext nothing else does:
      // a mechanism that wants the server's final token (Kerberos, M2) still fails without it.
      if (input.leg.origin.startsWith('https:')) {
        this.#unanswered = true;
        return 'deliver';
      }
      return this.#finish(undefined).then(() => {
        this.#unanswered = true;
      });
    }
    const info = readAuthenticationInfo(headers);
    // The server's proof comes on the final response whatever its status (RFC 9110 §11.6.3, RFC
    // 7616 §3.5): a redirect or a 404 that carries the scheme's token (a Kerberos AP-REP) or
    // Authentication-Info (Digest's rspauth, its next nonce) is checked as a 2xx is — a bad one is
    // a MutualAuthError whatever the status (review r57: a forged token on a 302 passed unchecked).
    if (proofRequired(status, final, info)) return this.#finish(final, info);
    // A 3xx/4xx/5xx without them is delivered (an error page, a redirect: no resource to withhold).
    // While the mechanism still wants the server's proof (Kerberos' AP-REP) it is asked whether the
    // answer will do without it (negotiate.mutualAuth 'optional': then as on a 2xx; review r59: every
    // such answer was unproved); if not, nothing was proved: no session, no identity (M2, S6).
    return context.complete ? 'deliver' : this.#withoutProof();
  }

  /**
   * Asks the mechanism whether a final answer with no token of the server's will do (its `finish`
   * with none). It never rejects: the caller gets that answer either way (a 3xx/4xx/5xx is no
   * resource to withhold) — refused (the "no final token" MutualAuthError of mutualAuth 'required'),
   * the handshake is `unproved` rather than the caller's error.
   */
  #withoutProof(): Promise<void> {
    this.#verification = 'pending';
    return this.#context.finish(undefined, this.#input.leg).then(
      () => {
        this.#verification = 'passed';
      },
      () => {
        this.#verification = 'none';
        this.#unproved = true;
      },
    );
  }

  #legDone(result: LegResult): void {
    if (this.#phase !== 'leg') return;
    const legs = this.#legs;
    const authIdCarried = this.#authIdCarried;
    if (this.#clock.timedOut && result.kind !== 'delivered') {
      this.#fail(this.#clock.error(), this.#passwordUnanswered(result), this.#unreached(result));
      return;
    }
    switch (result.kind) {
      case 'failed': {
        const reason = relocationReason(result.error);
        if (reason) this.#end({ kind: 'relocate', legs, reason, error: result.error });
        else this.#fail(this.#typed(result.error), this.#passwordUnanswered(result), this.#unreached(result));
        return;
      }
      case 'swallowed': {
        if (this.#declined) {
          this.#end({ kind: 'declined', ...offeredBy(result.headers) });
          return;
        }
        if (this.#refused) {
          this.#end({ kind: 'refused' });
          return;
        }
        if (this.#superseded) {
          this.#end({ kind: 'refused', ...offeredBy(result.headers) });
          return;
        }
        if (this.#legacyLost) {
          log.handshake('%s lost between HTTP/2 streams: retrying over HTTP/1.1', this.#mechanism.scheme);
          this.#end({ kind: 'relocate', legs, reason: 'http1' });
          return;
        }
        const reading = readAuthId(result.headers);
        if (reading && !reading.ok) {
          this.#fail(new InvalidTokenError('Auth-ID header (too long)'));
          return;
        }
        if (reading?.ok) this.#authId = reading.value;
        this.#challenge = this.#nextRead ? this.#next : challengeFor(result.headers, this.#mechanism.scheme);
        this.#step();
        return;
      }
      case 'delivered': {
        const done = result.done;
        if (this.#finishError) {
          this.#end(this.#failedAfter(done, { proofFailed: this.#finishError }));
          return;
        }
        if (this.#verification === 'pending') {
          // The gate ended before the mechanism did. The caller got the clock's error (R3) or its
          // own abort (the leader gave up: R2 hands the handshake over), or a reset stream's.
          const error = this.#sink.reason;
          this.#end(this.#failedAfter(done, error ? { error } : {}));
          return;
        }
        if (this.#unanswered) {
          this.#end({ kind: 'unanswered', done });
          return;
        }
        if (result.status === 401) {
          const opening = atOpening(this.#mechanism, this.#context, legs);
          const noPassword = !sentPassword(this.#mechanism, this.#context);
          this.#end(
            this.#failedAfter(done, {
              refused: true,
              ...(opening ? { opening } : {}),
              ...(noPassword ? { noPassword } : {}),
              ...(this.#mechanism.level === 'connection' || this.#context.connectionBound
                ? { connectionBound: true as const }
                : {}),
            }),
          );
          return;
        }
        if (this.#unproved) {
          // A redirect, a 4xx or a 5xx without the server's proof: the caller has it, nothing is
          // recorded (review r59: a 5xx was an 'error' that left its Persistent-Auth session open).
          this.#end(this.#failedAfter(done, { unproved: true }));
          return;
        }
        // The caller has its answer, but a server error (or a proxy's 407) says nothing of the
        // credentials (a 403 or 404 that ends a handshake is the authenticated request's answer:
        // the server took them — once it proved itself where the mechanism asks it to).
        if (result.status >= 500 || result.status === 407) {
          this.#end(this.#failedAfter(done, {}));
          return;
        }
        const identity = this.#context.identity;
        this.#end({
          kind: 'success',
          legs,
          sessionAuthenticated: this.#persistent || this.#mechanism.level === 'connection',
          ...(this.#context.connectionBound ? { connectionBound: true } : {}),
          authIdCarried,
          done,
          ...(identity ? { identity } : {}),
          ...this.#reported(),
        });
        return;
      }
    }
  }
}

/** A swallowed 401's challenges and Auth-ID (C3), for the steps to answer afresh. */
function offeredBy(headers: ResponseHeaders): { offered: Challenge[]; authId?: string } {
  const id = readAuthId(headers);
  return { offered: readChallenges(headers), ...(id?.ok ? { authId: id.value } : {}) };
}
