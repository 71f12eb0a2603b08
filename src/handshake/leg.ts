import { type Dispatcher, errors } from 'undici';
import type { UserSink } from './user-sink.ts';

type Controller = Dispatcher.DispatchController;
export type ResponseHeaders = Record<string, string | string[]>;

/**
 * What to do with a response, decided when its head arrives:
 * - `swallow`: an intermediate leg (401 challenge, 421): drained, never shown to the caller;
 * - `hold`: a 401 the agent means to answer (or nginx's 400 about a client certificate), read like
 *   `swallow` but kept ({@link HeldResponse}, bounded as a drained body is): the caller's response
 *   if it turns out nothing can answer it (`deliver401`), so that the request is not sent again to
 *   show it;
 * - `keep`: as `hold`, but past those bounds (too large, too slow) the response is not cut: it is
 *   paused, unread, and handed over open ({@link OpenResponse}), to be either the caller's after all
 *   — streamed as it comes — or cut then (R4: a 401 that is the answer if the refusal memory holds
 *   the password back, which is asked only once it has been read);
 * - `deliver`: the caller's response;
 * - a promise: deliver once it settles — used to verify the server's final token (mutual
 *   authentication) before the caller sees a byte; a rejection becomes the caller's error.
 */
export type Verdict = 'swallow' | 'hold' | 'keep' | 'deliver' | Promise<void>;

/** A response read in full and kept, not yet shown to the caller (a `hold` verdict's). */
export interface HeldResponse {
  readonly status: number;
  readonly headers: ResponseHeaders;
  readonly message: string;
  readonly body: readonly Buffer[];
  readonly trailers: ResponseHeaders;
  /** undici's raw header and trailer lists (the controller's), which fetch reads the headers from. */
  readonly rawHeaders: unknown;
  readonly rawTrailers: unknown;
}

/**
 * A response a `keep` verdict kept past its bounds: paused with what was read of it so far, its
 * connection (HTTP/1.1) or stream (HTTP/2) held by flow control, nothing more buffered. Whoever has
 * it ends it, once, by one of its two methods, and soon: it holds its connection meanwhile.
 */
export interface OpenResponse {
  readonly status: number;
  readonly headers: ResponseHeaders;
  /**
   * It is the caller's: what was read so far at once, then the rest as it comes (resumed), the
   * caller's abort reaching it; settles when it has ended or failed.
   */
  deliver(): Promise<void>;
  /** It is not: cut, as a body past the bounds is (on HTTP/1.1 its connection with it). */
  cut(): void;
}

/**
 * Body bytes a gated response may buffer before the leg is paused. Verification usually settles
 * within a microtask (NTLM has nothing to verify; a mechListMIC is one HMAC), so a small body is
 * simply held; pausing the stream at once cost a pause and a resume per per-request handshake.
 */
const GATE_BUFFER_BYTES = 64 * 1024;

/**
 * R1: the bound on a response head once an interim (1xx) response came. undici's HTTP/1.1 parser
 * starts its headersTimeout again at each interim response, so a server sending `102 Processing`
 * forever held a request, and `agent.close()`, for good. From the first one the final head must
 * come within `ms` (a request's own headersTimeout, else the agent's): one timer, armed only then
 * (not by 100 Continue); 0 (a caller's "no timeout" for undici) arms none. Its error is undici's
 * headers timeout, which the agent already reads as such (a forwarding proxy's, R2's leader, R4's
 * unanswered leg).
 */
export function interimBound(
  controller: Controller,
  status: number,
  ms: number | null | undefined,
): NodeJS.Timeout | undefined {
  // 100 Continue is the go-ahead for an expectContinue body (HTTP/2), which may take its time.
  if (!ms || status === 100) return undefined;
  return setTimeout(
    () =>
      controller.abort(
        new errors.HeadersTimeoutError(
          `no final response within headersTimeout (${ms} ms) of the first interim (1xx) response: the server sends only interim responses; check the server or raise headersTimeout`,
        ),
      ),
    ms,
  ).unref(); // as undici's own: the connection, not this timer, keeps a process alive
}

/** A leg's headers before its response head: one shared object, never written (not one per leg). */
const NO_HEADERS: ResponseHeaders = Object.freeze({});

export type LegResult =
  | {
      readonly kind: 'swallowed';
      readonly status: number;
      readonly headers: ResponseHeaders;
      /** With `hold`: the response in full; absent when its body was cut (too large or too slow). */
      readonly held?: HeldResponse;
      /** Its body did not end within `maxDrainMs`: it was cut (on HTTP/1.1, its connection with it). */
      readonly slow?: true;
      /** With `keep`, past the bounds: not cut yet, but paused and handed over ({@link OpenResponse}). */
      readonly open?: OpenResponse;
    }
  /** The response reached the caller; `done` settles when its body has ended or failed. */
  | {
      readonly kind: 'delivered';
      readonly status: number;
      readonly headers: ResponseHeaders;
      readonly done: Promise<void>;
    }
  /**
   * The leg failed before anything reached the caller; nothing was reported to the caller yet.
   * `unanswered`: undici had written it and no response head came (a timeout, a close): the server
   * may have read, and counted, the credentials it carried (R4). `unsent`: undici never started it
   * (its connection failed: refused, TLS, DNS; or it was given up while undici held it): nothing of
   * it reached the server.
   */
  | { readonly kind: 'failed'; readonly error: Error; readonly unanswered?: true; readonly unsent?: true };

/** A controller's raw header lists, as undici's fetch reads them (not in its typings). */
function raw(controller: Controller): { rawHeaders: unknown; rawTrailers: unknown } {
  const c = controller as { rawHeaders?: unknown; rawTrailers?: unknown };
  return { rawHeaders: c.rawHeaders, rawTrailers: c.rawTrailers };
}

/** The controller of a held response, read in full: nothing left on the wire to pause or abort. */
const heldController = (held: HeldResponse): Controller =>
  ({
    abort() {},
    pause() {},
    resume() {},
    aborted: false,
    paused: false,
    reason: null,
    rawHeaders: held.rawHeaders,
    rawTrailers: held.rawTrailers,
  }) as unknown as Controller;

/**
 * Gives the caller a held response (a `hold` verdict's) as a delivered leg would, all at once. The
 * leg it was read from has ended: the caller's abort no longer has it to abort.
 */
export function replayHeld(sink: UserSink, held: HeldResponse): void {
  sink.onAbort(undefined);
  sink.responseStart(heldController(held), held.status, held.headers, held.message);
  for (const chunk of held.body) sink.responseData(chunk);
  sink.responseEnd(held.trailers);
}

/**
 * The undici v2 handler of one leg. Intermediate bodies are drained, not aborted (aborting on
 * HTTP/1.1 destroys the socket and with it a connection-bound handshake), unless one is too large
 * (`maxDrainBytes`) or too slow (`maxDrainMs`): then the challenge counts and the leg is cut.
 */
export class LegHandler implements Dispatcher.DispatchHandler {
  /** The leg's result once known (the first wins). */
  #outcome: LegResult | undefined;
  /** Told the result as soon as it is known (a handshake's next leg: no promise per leg). */
  readonly #onResult: ((r: LegResult) => void) | undefined;
  readonly #cutShort: ((err: Error, challenge?: number) => Error) | undefined;
  #result: Promise<LegResult> | undefined;
  #resolveResult: ((r: LegResult) => void) | undefined;
  /** Made when the leg delivers (a swallowed challenge needs none): settles when the body ends. */
  #done: Promise<void> | undefined;
  #doneResolve: (() => void) | undefined;
  #doneSettled = false;
  #mode: 'head' | 'drain' | 'open' | 'deliver' | 'gated' | 'over' = 'head';
  #status = 0;
  #headers: ResponseHeaders = NO_HEADERS;
  #drained = 0;
  /** With `hold`: the body's chunks as they came, and the status line's message. */
  #held: Buffer[] | undefined;
  #message = '';
  /** The verdict was `keep`: past the bounds the response is handed over open, not cut. */
  #keep = false;
  /** While open: how it ended meanwhile (its trailers, or its error), if it did. */
  #openEnd: { readonly trailers: ResponseHeaders } | { readonly error: Error } | undefined;
  /** While open: why it would be cut (past which bound). */
  #openWhy: 'challenge body too large' | 'challenge body too slow' = 'challenge body too large';
  /** A gated response's callbacks, made when one is held (most legs never are). */
  #buffered: Array<() => void> | undefined;
  #bufferedBytes = 0;
  /** The leg was paused because the gate held too much (not the caller's pause). */
  #gatePaused = false;
  #controller: Controller | undefined;
  /** undici wrote the leg, and it failed before any response head came (see {@link unanswered}). */
  #unanswered = false;
  /** Times undici started it (see {@link starts}). */
  #starts = 0;
  /** Why the leg was given up before undici started it (see {@link abort}); undici aborts it when it does. */
  #givenUp: Error | undefined;
  readonly #onAbort: (() => void) | undefined;
  readonly #sink: UserSink;
  readonly #classify: (status: number, headers: ResponseHeaders) => Verdict;
  readonly #beforeStart: (controller: Controller) => void;
  readonly #maxDrain: number;
  readonly #maxDrainMs: number | undefined;
  readonly #expectContinue: boolean;
  #drainTimer: NodeJS.Timeout | undefined;
  readonly #headersTimeout: number | null | undefined;
  /** Armed by the first interim (1xx) response ({@link interimBound}); cleared by the final head. */
  #interimTimer: NodeJS.Timeout | undefined;

  constructor(opts: {
    sink: UserSink;
    classify: (status: number, headers: ResponseHeaders) => Verdict;
    /** Runs when undici is about to write the leg; may abort it (stale session). */
    beforeStart: (controller: Controller) => void;
    maxDrainBytes: number;
    /**
     * How long a swallowed challenge's body may take to end (limits.handshakeTimeout): a 401 that
     * is not yet part of a handshake (a bare request's) has no handshake clock over it. Undefined: a
     * handshake's clock (the same limit, started before this leg) bounds it, so no timer of its own.
     */
    maxDrainMs: number | undefined;
    /**
     * Called with the result as soon as it is known, from within undici's callback (instead of a
     * promise per leg); `result` is then made only if someone asks for it.
     */
    onResult?: (r: LegResult) => void;
    /**
     * Told when the leg is aborted (caller, timeout) before its response ended: undici may go on
     * holding it in its queue (see Session.noteAborted).
     */
    onAbort?: () => void;
    /** The leg is sent with `expectContinue` (see onResponseError). */
    expectContinue?: boolean;
    /** The leg's headersTimeout (its request's own, else the agent's): see {@link interimBound}. */
    headersTimeout?: number | null;
    /**
     * What the caller gets for an error after the response head reached it (Session.cutShort, R1),
     * or (`challenge`: its status) after the head of a response being drained (a handshake's 401).
     */
    cutShort?: (err: Error, challenge?: number) => Error;
  }) {
    this.#cutShort = opts.cutShort;
    this.#headersTimeout = opts.headersTimeout;
    this.#sink = opts.sink;
    this.#onAbort = opts.onAbort;
    this.#expectContinue = opts.expectContinue === true;
    this.#classify = opts.classify;
    this.#beforeStart = opts.beforeStart;
    this.#maxDrain = opts.maxDrainBytes;
    this.#maxDrainMs = opts.maxDrainMs;
    this.#onResult = opts.onResult;
  }

  /** Settles with the leg's result. */
  get result(): Promise<LegResult> {
    this.#result ??= this.#outcome
      ? Promise.resolve(this.#outcome)
      : new Promise((r) => {
          this.#resolveResult = r;
        });
    return this.#result;
  }

  #resolve(r: LegResult): void {
    if (this.#outcome) return;
    this.#outcome = r;
    this.#resolveResult?.(r);
    this.#onResult?.(r);
  }

  /**
   * Aborts the leg on the wire (caller abort, timeout). A leg undici has not started yet (queued in
   * its Client while the connection is made, or on an HTTP/2 connection whose server gives no
   * stream) ends now, for the caller and for the handshake or request it belongs to; undici aborts
   * it when it starts it (onRequestStart), so it never reaches the wire.
   */
  abort(reason: Error): void {
    if (this.#mode !== 'over') this.#onAbort?.();
    // A gated response waits for the mechanism, not for undici, which may have ended the response
    // already (aborting its controller then does nothing): the gate ends here (R3, and the
    // caller's abort works while the server's final token is verified).
    if (this.#mode === 'gated') this.#gateFailed(reason);
    else if (this.#controller) this.#controller.abort(reason);
    else if (this.#mode === 'head') this.#giveUp(reason);
    else this.#sink.fail(reason);
  }

  /**
   * Ends a leg undici has not started. Its result comes now (R1, R3): undici may not start it
   * before its headersTimeout (an HTTP/2 server whose SETTINGS never came, or that allows no
   * stream), and a handshake waiting for it would hold its waiters and its session as long.
   */
  #giveUp(reason: Error): void {
    this.#mode = 'over';
    this.#givenUp = reason;
    this.#sink.fail(reason);
    this.#resolve({ kind: 'failed', error: reason, unsent: true });
  }

  /**
   * undici started the leg (its onRequestStart: the request went to the socket, so the peer may
   * have read it) and the leg failed before any response head came: what a connection the peer
   * closed under a written request looks like.
   */
  get unanswered(): boolean {
    return this.#unanswered;
  }

  /**
   * How many times undici started the leg: more than once when it sent it again on the same
   * connection after the server refused its stream (REFUSED_STREAM, before any response).
   */
  get starts(): number {
    return this.#starts;
  }

  /** undici started the leg (it went to the socket) and did not abort it as it did: the peer may have read it. */
  get written(): boolean {
    return this.#controller !== undefined && this.#givenUp === undefined;
  }

  /** The caller aborted (the sink's abort hook: no closure per leg). */
  callerAborted(reason: Error): void {
    this.abort(reason);
  }

  onRequestStart(controller: Controller): void {
    this.#controller = controller;
    if (this.#givenUp) {
      // Given up while undici held it: it never reaches the wire.
      controller.abort(this.#givenUp);
      return;
    }
    this.#starts += 1;
    this.#mode = 'head';
    this.#beforeStart(controller);
  }

  onResponseStart(controller: Controller, status: number, headers: ResponseHeaders, message: string): void {
    // 1xx: informational, not a leg result; the final head is bounded from the first one.
    if (status < 200) {
      this.#interimTimer ??= interimBound(controller, status, this.#headersTimeout);
      return;
    }
    clearTimeout(this.#interimTimer);
    this.#status = status;
    this.#headers = headers;
    let verdict: Verdict;
    try {
      verdict = this.#classify(status, headers);
    } catch (err) {
      this.#mode = 'over';
      this.#resolve({ kind: 'failed', error: err as Error });
      controller.abort(err as Error);
      return;
    }
    if (verdict === 'swallow' || verdict === 'hold' || verdict === 'keep') {
      this.#mode = 'drain';
      if (verdict !== 'swallow') {
        this.#held = [];
        this.#message = message;
        this.#keep = verdict === 'keep';
      }
      if (this.#maxDrainMs !== undefined)
        this.#drainTimer = setTimeout(
          () => this.#stopDraining(controller, 'challenge body too slow'),
          this.#maxDrainMs,
        );
      return;
    }
    if (verdict === 'deliver') {
      this.#startDelivery(controller, message);
      return;
    }
    this.#mode = 'gated';
    verdict.then(
      () => {
        // The gate may have ended meanwhile (abort, timeout, a reset stream): its result stands.
        if (this.#mode !== 'gated') return;
        this.#startDelivery(controller, message);
        const buffered = this.#buffered;
        this.#buffered = undefined;
        if (buffered) for (const replay of buffered) replay();
        // The caller may have paused meanwhile (in onResponseStart or a data callback): keep it so.
        if (this.#gatePaused && !this.#sink.controller.paused) controller.resume();
      },
      (err: Error) => {
        if (this.#mode === 'gated') this.#gateFailed(err);
      },
    );
  }

  /** The gate ends without delivery: the caller gets `err`, the leg counts as delivered (with it). */
  #gateFailed(err: Error): void {
    this.#mode = 'over';
    this.#buffered = undefined;
    this.#sink.fail(err);
    this.#resolve({ kind: 'delivered', status: this.#status, headers: this.#headers, done: this.#delivered() });
    this.#settleDone();
    this.#controller?.abort(err);
  }

  #delivered(): Promise<void> {
    this.#done ??= this.#doneSettled
      ? Promise.resolve()
      : new Promise((r) => {
          this.#doneResolve = r;
        });
    return this.#done;
  }

  #settleDone(): void {
    this.#doneSettled = true;
    this.#doneResolve?.();
  }

  #startDelivery(controller: Controller, message: string): void {
    this.#mode = 'deliver';
    this.#sink.responseStart(controller, this.#status, this.#headers, message);
    this.#resolve({ kind: 'delivered', status: this.#status, headers: this.#headers, done: this.#delivered() });
  }

  onResponseData(controller: Controller, chunk: Buffer): void {
    switch (this.#mode) {
      case 'drain':
        this.#drained += chunk.length;
        if (this.#drained > this.#maxDrain) {
          if (this.#keep) this.#held!.push(chunk);
          this.#stopDraining(controller, 'challenge body too large');
        } else this.#held?.push(chunk);
        return;
      case 'open':
        // What undici had read before the pause took hold (one read at most): kept for the caller.
        this.#held!.push(chunk);
        return;
      case 'deliver':
        this.#sink.responseData(chunk);
        return;
      case 'gated':
        this.#buffered ??= [];
        this.#buffered.push(() => this.#sink.responseData(chunk));
        this.#bufferedBytes += chunk.length;
        if (!this.#gatePaused && this.#bufferedBytes > GATE_BUFFER_BYTES) {
          this.#gatePaused = true;
          controller.pause();
        }
        return;
      default:
        return;
    }
  }

  /**
   * A challenge body too large or too slow is not worth waiting for: the challenge counts (its
   * headers are all a handshake needs), and the leg is cut — on HTTP/1.1 with its connection, the
   * lesser evil (the handshake goes on another, H1).
   */
  #stopDraining(controller: Controller, why: 'challenge body too large' | 'challenge body too slow'): void {
    if (this.#mode !== 'drain') return;
    clearTimeout(this.#drainTimer);
    if (this.#keep) {
      this.#keepOpen(controller, why);
      return;
    }
    this.#mode = 'over';
    // A body cut short is not the server's response: nothing is held.
    this.#held = undefined;
    const slow = why === 'challenge body too slow' ? { slow: true as const } : {};
    this.#resolve({ kind: 'swallowed', status: this.#status, headers: this.#headers, ...slow });
    controller.abort(new Error(why));
  }

  /**
   * `keep` past a bound: rather than cut, the response is paused (flow control holds the rest on
   * the wire, nothing more is buffered) and handed over open: {@link OpenResponse}.
   */
  #keepOpen(controller: Controller, why: 'challenge body too large' | 'challenge body too slow'): void {
    this.#mode = 'open';
    this.#openWhy = why;
    controller.pause();
    const slow = why === 'challenge body too slow' ? { slow: true as const } : {};
    const open: OpenResponse = {
      status: this.#status,
      headers: this.#headers,
      deliver: () => this.#deliverOpen(controller),
      cut: () => this.#cutOpen(controller),
    };
    this.#resolve({ kind: 'swallowed', status: this.#status, headers: this.#headers, ...slow, open });
  }

  #deliverOpen(controller: Controller): Promise<void> {
    if (this.#mode !== 'open') return Promise.resolve();
    const sink = this.#sink;
    const read = this.#held!;
    const ended = this.#openEnd;
    this.#held = undefined;
    this.#openEnd = undefined;
    this.#mode = 'deliver';
    // The caller's abort reaches the leg again (settleLeg took it off as the leg was swallowed),
    // until the response has ended.
    sink.onAbort(this);
    const done = this.#delivered();
    const off = () => sink.onAbort(undefined);
    done.then(off, off);
    sink.responseStart(controller, this.#status, this.#headers, this.#message);
    for (const chunk of read) sink.responseData(chunk);
    if (ended && 'error' in ended) this.onResponseError(controller, ended.error);
    else if (ended) this.onResponseEnd(controller, ended.trailers);
    // (The caller may have paused meanwhile: its pause stays, as sink.resume will lift it.)
    else if (!sink.paused) controller.resume();
    return done;
  }

  #cutOpen(controller: Controller): void {
    if (this.#mode !== 'open') return;
    this.#mode = 'over';
    this.#held = undefined;
    // Ended meanwhile: nothing on the wire to cut (an HTTP/1.1 connection stays, its body read).
    if (this.#openEnd === undefined) controller.abort(new Error(this.#openWhy));
    this.#openEnd = undefined;
  }

  onResponseEnd(controller: Controller, trailers: ResponseHeaders): void {
    switch (this.#mode) {
      case 'drain': {
        clearTimeout(this.#drainTimer);
        this.#mode = 'over';
        const status = this.#status;
        const headers = this.#headers;
        const body = this.#held;
        this.#held = undefined;
        this.#resolve(
          body
            ? {
                kind: 'swallowed',
                status,
                headers,
                held: { status, headers, message: this.#message, body, trailers, ...raw(controller) },
              }
            : { kind: 'swallowed', status, headers },
        );
        return;
      }
      case 'open':
        this.#openEnd = { trailers };
        return;
      case 'deliver':
        this.#mode = 'over';
        this.#sink.responseEnd(trailers);
        this.#settleDone();
        return;
      case 'gated':
        this.#buffered ??= [];
        this.#buffered.push(() => this.onResponseEnd(controller, trailers));
        return;
      default:
        return;
    }
  }

  onResponseError(_controller: Controller | null, err: Error): void {
    // (Given up: its result is known; undici aborted it as it started it, or failed it unstarted.)
    if (this.#givenUp) return;
    const mode = this.#mode;
    if (mode === 'open') {
      this.#openEnd = { error: err };
      return;
    }
    this.#unanswered = mode === 'head' && this.#controller !== undefined;
    clearTimeout(this.#interimTimer);
    if (mode === 'drain') clearTimeout(this.#drainTimer);
    this.#mode = 'over';
    if (mode === 'drain' && this.#expectContinue && this.#held === undefined && protocolReset(err)) {
      // An expectContinue leg answered early (the challenge's head before its body went): undici
      // ends it without the body its content-length promised, and a Node server resets the stream
      // for that (PROTOCOL_ERROR) — the challenge's headers are all a handshake needs, and the
      // connection lives on (as for a body cut, see #stopDraining). Any other reset (REFUSED_STREAM,
      // INTERNAL_ERROR: the server's own failure), or of a held response, stays the error (r44).
      this.#resolve({ kind: 'swallowed', status: this.#status, headers: this.#headers });
      return;
    }
    // R1/C8: any other reset of a challenge being drained (INTERNAL_ERROR, REFUSED_STREAM,
    // ENHANCE_YOUR_CALM…) is the server failing the exchange: the leg fails typed, naming the code
    // (undici's raw stream error before). CANCEL and NO_ERROR never get here (undici ends the
    // response as if whole: the handshake goes on).
    // Its HTTP/1.1 twin, the connection closed partway through that body, alike (undici's raw "other
    // side closed" before).
    if (mode === 'drain' && this.#cutShort && (typedResetCode(err) !== undefined || socketClosed(err))) {
      this.#held = undefined;
      this.#resolve({ kind: 'failed', error: this.#cutShort(err, this.#status) });
      return;
    }
    if (mode === 'deliver' || mode === 'gated') {
      this.#sink.fail(this.#cutShort ? this.#cutShort(err) : err);
      this.#settleDone();
      if (mode === 'gated')
        this.#resolve({ kind: 'delivered', status: this.#status, headers: this.#headers, done: this.#delivered() });
      return;
    }
    if (mode !== 'over') {
      // Failed before undici started it (onRequestStart): its connection never came up.
      this.#resolve(
        this.#controller === undefined ? { kind: 'failed', error: err, unsent: true } : { kind: 'failed', error: err },
      );
    }
  }
}

/** The RST_STREAM code (RFC 9113 §7) of undici's error for an HTTP/2 stream the peer reset; else undefined. */
export function streamResetCode(err: Error): number | undefined {
  const e = err as { code?: unknown; http2ErrorCode?: unknown };
  return e.code === 'ERR_HTTP2_STREAM_ERROR' && typeof e.http2ErrorCode === 'number' ? e.http2ErrorCode : undefined;
}

/**
 * R1: the code of a reset the agent reports typed (Session.cutShort), before the caller's response:
 * any but HTTP_1_1_REQUIRED (0xd), whose raw error relocationReason reads to go on over HTTP/1.1 (H2).
 */
export function typedResetCode(err: Error): number | undefined {
  const code = streamResetCode(err);
  return code === 0xd ? undefined : code;
}

/** undici's own error for a connection the peer closed or reset (not an error of the agent's). */
const socketClosed = (err: Error): boolean => {
  const code = (err as { code?: unknown }).code;
  return code === 'UND_ERR_SOCKET' || code === 'ECONNRESET' || code === 'EPIPE';
};

/** An HTTP/2 stream reset with PROTOCOL_ERROR (0x1). */
const protocolReset = (err: Error): boolean => streamResetCode(err) === 0x1;
