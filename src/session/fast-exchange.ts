/**
 * The authenticated fast path (C2): a request on an authenticated session runs here, as one undici
 * handler, without the steps of exchange.ts, until anything but a plain response hands it to them.
 * Which requests may come here is the steps' decision (`fastPathEligible`, exchange.ts).
 */
import type { Dispatcher } from 'undici';
import { interimBound, LegHandler, type LegResult, type ResponseHeaders } from '../handshake/leg.ts';
import {
  afterSend,
  classifySend,
  DONE,
  type ExchangeEnv,
  type ExchangeOutcome,
  newRun,
  newSeen,
  type Run,
  runSteps,
  type SendSeen,
} from './exchange.ts';
import { unusable } from './first-challenge.ts';
import type { Job } from './job.ts';
import { cookieUrlOf, type Session } from './session.ts';

/**
 * Where a {@link FastExchange}'s request is: `queued` in undici's Client, not started; `givenUp` by
 * its caller while queued (over for the caller; undici aborts it as it starts it); `started` on the
 * wire, no final response head yet; `delivering` a plain response to the caller; `slow` handed to a
 * LegHandler and the steps after a 401 or 421; `idle` before it was dispatched, or handed to the
 * steps with no leg of its own (a dispatch that failed, a failure before the response).
 */
type FastPhase = 'idle' | 'queued' | 'givenUp' | 'started' | 'delivering' | 'slow';

/** Where a request taken by {@link FastExchange} ends; `outcome` undefined: it ended on the fast path. */
export interface FastHost {
  /** The origin's exchange environment (read from the host: one field less per request). */
  readonly env: ExchangeEnv;
  fastEnded(exchange: FastExchange, outcome: ExchangeOutcome | undefined): void;
}

/**
 * The authenticated fast path (C2): a request on an authenticated session goes bare, as the
 * caller gave it (no header or option copy, but for a cookie jar's Cookie), with this one handler
 * object: no step, promise or closure per request. Anything but a plain response — a 401
 * (re-authenticate, T4), a 421 (C9), a failure before the response — hands the request to the
 * steps exactly where `send` would be, so the wire and the outcome are the same as on the slow path.
 */
export class FastExchange implements Dispatcher.DispatchHandler {
  readonly session: Session;
  readonly job: Job;
  readonly #host: FastHost;
  /** Where the request is: see {@link FastPhase}. (A string and the fields below: no object per step.) */
  #phase: FastPhase = 'idle';
  /** undici's, once it started the request. */
  #controller: Dispatcher.DispatchController | undefined;
  /** In `slow`: the leg handler that took over after a 401 or 421. */
  #slow: LegHandler | undefined;
  /** In `givenUp`: why; undici aborts the request with it when it starts it. */
  #givenUp: Error | undefined;
  /** Times undici started it: more than once after the server refused its stream (REFUSED_STREAM). */
  #starts = 0;
  /** Armed by the first interim (1xx) response (R1, {@link interimBound}); cleared by the final head. */
  #interimTimer: NodeJS.Timeout | undefined;

  constructor(session: Session, job: Job, host: FastHost) {
    this.session = session;
    // On an authenticated session, a 401 carried from a closed connection is answered already.
    job.challenges = undefined;
    this.job = job;
    this.#host = host;
  }

  start(): void {
    // The caller's abort reaches it from now, also while undici holds it unstarted (see callerAborted).
    this.job.sink.onAbort(this);
    this.#phase = 'queued';
    const error = this.session.dispatchAsGiven(this.job, this);
    if (error) {
      this.#phase = 'idle';
      this.#toSteps(undefined, Promise.resolve<LegResult>({ kind: 'failed', error }));
    }
  }

  /** The caller aborted (the sink's abort hook: no closure per request). */
  callerAborted(reason: Error): void {
    const phase = this.#phase;
    if (phase === 'slow') this.#slow?.abort(reason);
    else if (phase === 'started' || phase === 'delivering') {
      this.session.noteAborted();
      this.#controller?.abort(reason);
    } else if (phase === 'queued') {
      // Not started by undici yet: over now, for the caller and the session (R1). undici holds it
      // until it can start it, which a server that gives no stream puts off until headersTimeout.
      this.#phase = 'givenUp';
      this.#givenUp = reason;
      this.session.noteAborted();
      this.job.sink.fail(reason);
      this.#ended();
    } else this.job.sink.fail(reason);
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#givenUp) {
      // (Given up while queued: `givenUp` is the phase.)
      controller.abort(this.#givenUp);
      return;
    }
    this.#phase = 'started';
    this.#starts += 1;
    this.session.checkStart(this.job, controller);
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    status: number,
    headers: ResponseHeaders,
    message: string,
  ): void {
    if (this.#phase === 'slow') {
      this.#slow?.onResponseStart(controller, status, headers, message);
      return;
    }
    if (status < 200) {
      this.#interimTimer ??= interimBound(controller, status, this.session.headersTimeoutOf(this.job));
      return;
    }
    clearTimeout(this.#interimTimer);
    // The jar is told every head, as #send tells it (a 401's cookie goes on the next leg).
    if (this.session.cookies) this.session.tellCookies(cookieUrlOf(this.job), headers);
    if (status === 401 || status === 421) {
      // Not a plain response: from here the leg is the slow path's `send` step.
      const env = this.#host.env;
      const run = newRun(this.session, this.job, env);
      // What `check` would have learnt before a slow send (R4).
      for (const [scheme, error] of env.memory.unusable()) unusable(run, scheme, error);
      const seen = newSeen(true);
      const leg = new LegHandler({
        sink: this.job.sink,
        classify: (s, h) => classifySend(run, seen, s, h),
        beforeStart: () => {},
        onAbort: this.session.noteAborted,
        expectContinue: this.job.dispatchOptions.expectContinue === true,
        cutShort: (err, challenge) => this.session.cutShort(this.job, err, challenge),
        maxDrainBytes: env.limits.maxChallengeBodyBytes,
        maxDrainMs: env.limits.handshakeTimeout,
      });
      this.#phase = 'slow';
      this.#slow = leg;
      leg.onRequestStart(controller);
      leg.onResponseStart(controller, status, headers, message);
      this.#toSteps(run, leg.result, seen);
      return;
    }
    this.#phase = 'delivering';
    // Only an authenticated session of the agent's runs the fast path: its answers are the agent's (S6).
    this.job.sink.asAgent = true;
    this.job.sink.responseStart(controller, status, headers, message);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#phase === 'slow') this.#slow?.onResponseData(controller, chunk);
    else if (this.#phase === 'delivering') this.job.sink.responseData(chunk);
  }

  onResponseEnd(controller: Dispatcher.DispatchController, trailers: ResponseHeaders): void {
    if (this.#phase === 'slow') {
      this.#slow?.onResponseEnd(controller, trailers);
      return;
    }
    if (this.#phase !== 'delivering') return;
    this.job.sink.responseEnd(trailers);
    this.#ended();
  }

  onResponseError(controller: Dispatcher.DispatchController | null, err: Error): void {
    clearTimeout(this.#interimTimer);
    const phase = this.#phase;
    // Ended for the caller already; failed by undici without being started (or aborted as it was).
    if (phase === 'givenUp') return;
    if (phase === 'slow') {
      this.#slow?.onResponseError(controller, err);
      return;
    }
    if (phase === 'delivering') {
      // R1: an HTTP/2 reset after the head, typed (the response was cut short).
      this.job.sink.fail(this.session.cutShort(this.job, err));
      this.#ended();
      return;
    }
    this.#phase = 'idle';
    // Nothing reached the caller: the steps decide (relocate after GOAWAY, R5; or the caller's error).
    let r: LegResult = { kind: 'failed', error: err };
    // Written, then the connection closed unanswered: an idle close racing the write goes once more
    // on a new connection, as on the slow path (C8). An authenticated session's connection has
    // answered before (its handshake, or the response that opened it): a reused one, so `1`.
    if (this.#controller !== undefined) r = this.session.unanswered(this.job, r, 1, this.job.headers, 0, this.#starts);
    this.#toSteps(undefined, Promise.resolve(r));
  }

  #ended(): void {
    this.job.sink.onAbort(undefined);
    this.#host.fastEnded(this, undefined);
  }

  /** Continues on the steps from the result of this leg, as `send` would. */
  #toSteps(run: Run | undefined, result: Promise<LegResult>, seen: SendSeen = newSeen(true)): void {
    const r = run ?? newRun(this.session, this.job, this.#host.env);
    result
      .then((leg) => runSteps(r, afterSend(r, seen, this.session.settleLeg(this.job, leg))))
      .then(
        (outcome) => this.#host.fastEnded(this, outcome),
        (err: Error) => {
          // A bug, not a network condition: the caller still gets an error, never a hang.
          this.job.sink.fail(err);
          this.#host.fastEnded(this, DONE);
        },
      );
  }
}
