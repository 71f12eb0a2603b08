import { hasPersistentAuth, readAuthId, readChallenges, readPersistentAuth } from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import { Deadline } from '../deadline.ts';
import { HandshakeTimeoutError, InvalidTokenError, LegLimitError, MultilegError } from '../errors.ts';
import { log } from '../log.ts';
import { cannotRunHere } from '../mechanisms/registry.ts';
import type { LegInfo, Mechanism, MechanismContext } from '../mechanisms/types.ts';
import type { LegResult, ResponseHeaders, Verdict } from './leg.ts';
import type { UserSink } from './user-sink.ts';

/** Sends one leg with extra headers on the handshake's connection; supplied by the session. */
export type SendLeg = (
  extra: Record<string, string>,
  classify: (status: number, headers: ResponseHeaders) => Verdict,
) => Promise<LegResult>;

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
   * Takes one of the session's handshake slots (draft §3.1: servers cap incomplete security
   * contexts per session) and returns its release. Asked for before the first leg that leaves, or
   * may leave, an incomplete context on the server — not for a first leg the server completes in
   * one (a proactive Kerberos token, C4: per-request mode blocks no stream). Its errors (full,
   * timed out, aborted) are thrown when nothing was sent yet.
   */
  readonly slot?: () => Promise<() => void>;
  /**
   * The first leg, holding a slot, met a bare 401 (this scheme offered again, with no token): asks
   * the session whether that was the server's cap on incomplete contexts (draft §3.1). When it
   * says so the 401 is not shown: the handshake ends `refused`, to be run again.
   */
  readonly contextRefused?: () => boolean;
}

export type HandshakeResult =
  | {
      readonly kind: 'success';
      readonly legs: number;
      /** Persistent-Auth on the final response (C4), or a connection-only scheme (C5). */
      readonly sessionAuthenticated: boolean;
      readonly authIdCarried: boolean;
      readonly identity?: string;
      readonly fallbackReason?: string;
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
      readonly done: Promise<void>;
      readonly proofFailed?: MultilegError;
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
  | { readonly kind: 'refused' }
  /** The mechanism cannot run here (no ticket, package missing) and sent nothing: try another scheme (T2). */
  | { readonly kind: 'unusable'; readonly error: Error }
  /**
   * A first token sent before any challenge got a final answer that took no part in it (no token
   * back, no Persistent-Auth): a resource that needs no authentication. The caller has its
   * response; nothing was authenticated, so nothing is recorded (C6).
   */
  | { readonly kind: 'unanswered'; readonly done: Promise<void> }
  /**
   * A proactive first leg was answered with a 401 that does not offer this scheme any more (the
   * origin changed, or what was remembered is stale): nothing reached the caller; answer `offered`
   * (with that 401's Auth-ID, C3).
   */
  | { readonly kind: 'declined'; readonly offered: readonly Challenge[]; readonly authId?: string };

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
): Deadline<HandshakeTimeoutError> {
  return new Deadline(ms, () => new HandshakeTimeoutError(ms, scheme), onExpire).start();
}

function challengeFor(headers: ResponseHeaders, scheme: string): Challenge | undefined {
  const key = scheme.toLowerCase();
  return readChallenges(headers).find((c) => c.schemeKey === key);
}

/**
 * Runs one handshake to its end: each leg carries the mechanism's next token and the server's
 * latest Auth-ID (C3) — on this handshake's legs only, one leg in flight at a time.
 */
export async function runHandshake(input: HandshakeInput): Promise<HandshakeResult> {
  const { mechanism, sink } = input;
  let legs = 0;
  let authId: string | undefined = input.authId;
  let authIdCarried = false;
  let context: MechanismContext | undefined;
  let release: (() => void) | undefined;
  const fallback = () => (context?.fallbackReason ? { fallbackReason: context.fallbackReason } : {});
  const fail = (err: Error): HandshakeResult => {
    sink.fail(err);
    return { kind: 'failed', legs, authIdCarried, ...fallback(), done: Promise.resolve(), error: err };
  };
  try {
    context = mechanism.createContext(input.leg);
  } catch (err) {
    if (cannotRunHere(err)) return { kind: 'unusable', error: err };
    return fail(err as Error);
  }
  // Aborting through the sink reaches whichever leg is on the wire.
  const clock = handshakeClock(input.timeout, mechanism.scheme, (err) => sink.abort(err));
  try {
    let challenge = input.challenge;
    for (;;) {
      // (A timeout during a leg returns below, before the loop comes round again.)
      if (legs >= input.maxLegs) return fail(new LegLimitError(input.maxLegs, mechanism.scheme));
      let authorization: string;
      try {
        authorization = await clock.race(context.step(challenge, input.leg));
      } catch (err) {
        if (clock.timedOut) return fail(clock.error());
        if (legs === 0 && cannotRunHere(err)) return { kind: 'unusable', error: err };
        return fail(err instanceof MultilegError ? err : new InvalidTokenError(`${mechanism.scheme} challenge`));
      }
      legs += 1;
      if (release === undefined && input.slot && mechanism.multileg && !(legs === 1 && context.firstLegCompletes)) {
        // The wait for a slot has its own bounds (R1): the handshake's clock starts again after it.
        clock.pause();
        try {
          release = await input.slot();
        } catch (err) {
          if (legs === 1) throw err;
          return fail(err as Error);
        } finally {
          clock.start();
        }
      }
      const extra: Record<string, string> = { authorization };
      if (authId !== undefined) {
        extra['auth-id'] = authId;
        authIdCarried = true;
      }
      const sentAfterServerToken = challenge?.token68 !== undefined;
      let legacyLost = false;
      let declined = false;
      let refused = false;
      let finishError: MultilegError | undefined;
      // The server's final token: `pending` while the mechanism verifies it (the response is held
      // for it); a gate ended before the mechanism (the clock, the caller's abort, a reset stream)
      // leaves it `pending`: nothing was proved, whatever the status.
      let verification = 'none' as 'none' | 'pending' | 'passed';
      let persistent = false;
      let unanswered = false;
      // This scheme's challenge in the 401, read once here for the next leg (not parsed again); a
      // 401 swallowed before this classifier saw it (a renewed Digest nonce) is read below.
      let next: Challenge | undefined;
      let nextRead = false;
      // The caller gets a typed error, never the mechanism's own exception (its text may say too much).
      const finish = (final: Challenge | undefined) => {
        verification = 'pending';
        return context.finish(final, input.leg).then(
          () => {
            verification = 'passed';
          },
          (err: Error) => {
            finishError = err instanceof MultilegError ? err : new InvalidTokenError('final token');
            throw finishError;
          },
        );
      };
      const result = await input.send(extra, (status, headers) => {
        if (status === 401) {
          next = challengeFor(headers, mechanism.scheme);
          nextRead = true;
          if (next?.token68 !== undefined && !context.complete) return 'swallow';
          if (legs === 1 && release !== undefined && next && input.contextRefused?.()) {
            refused = true;
            return 'swallow';
          }
          // A legacy HTTP/2 server (Apache) keeps connection-bound state per stream: our answer to
          // its challenge meets a fresh bare challenge and no Auth-ID was ever offered.
          if (input.onHttp2 && sentAfterServerToken && authId === undefined && next && next.token68 === undefined) {
            legacyLost = true;
            return 'swallow';
          }
          if (input.challenge === undefined && legs === 1 && !next && readChallenges(headers).length > 0) {
            declined = true;
            return 'swallow';
          }
          return 'deliver';
        }
        // A forwarding proxy's 407 (proxy.deliver407, or to the caller's own Proxy-Authorization):
        // the origin never saw this leg, so it says nothing of the handshake.
        if (status === 407) return 'deliver';
        persistent = readPersistentAuth(headers);
        const final = challengeFor(headers, mechanism.scheme);
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
            unanswered = true;
            return 'deliver';
          }
          return finish(undefined).then(() => {
            unanswered = true;
          });
        }
        if (status >= 200 && status < 300) return finish(final);
        return 'deliver';
      });
      if (clock.timedOut && result.kind !== 'delivered') return fail(clock.error());
      switch (result.kind) {
        case 'failed': {
          const reason = relocationReason(result.error);
          if (reason) return { kind: 'relocate', legs, reason, error: result.error };
          return fail(result.error);
        }
        case 'swallowed': {
          if (declined) {
            const id = readAuthId(result.headers);
            return {
              kind: 'declined',
              offered: readChallenges(result.headers),
              ...(id?.ok ? { authId: id.value } : {}),
            };
          }
          if (refused) return { kind: 'refused' };
          if (legacyLost) {
            log.handshake('%s lost between HTTP/2 streams: retrying over HTTP/1.1', mechanism.scheme);
            return { kind: 'relocate', legs, reason: 'http1' };
          }
          const reading = readAuthId(result.headers);
          if (reading && !reading.ok) return fail(new InvalidTokenError('Auth-ID header (too long)'));
          if (reading?.ok) authId = reading.value;
          challenge = nextRead ? next : challengeFor(result.headers, mechanism.scheme);
          continue;
        }
        case 'delivered': {
          if (finishError) {
            return { kind: 'failed', legs, authIdCarried, ...fallback(), done: result.done, proofFailed: finishError };
          }
          if (verification === 'pending') {
            // The gate ended before the mechanism did. The caller got the clock's error (R3) or its
            // own abort (the leader gave up: R2 hands the handshake over), or a reset stream's.
            const error = sink.reason;
            return {
              kind: 'failed',
              legs,
              authIdCarried,
              ...fallback(),
              done: result.done,
              ...(error ? { error } : {}),
            };
          }
          if (unanswered) return { kind: 'unanswered', done: result.done };
          if (result.status === 401) {
            const opening = legs === 1 && mechanism.multileg && !context.firstLegCompletes;
            return {
              kind: 'failed',
              legs,
              authIdCarried,
              ...fallback(),
              done: result.done,
              refused: true,
              ...(opening ? { opening } : {}),
            };
          }
          // The caller has its answer, but a server error (or a proxy's 407) says nothing of the
          // credentials (a 403 or 404 that ends a handshake is the authenticated request's answer:
          // the server took them).
          if (result.status >= 500 || result.status === 407)
            return { kind: 'failed', legs, authIdCarried, ...fallback(), done: result.done };
          const sessionAuthenticated = persistent || mechanism.level === 'connection';
          return {
            kind: 'success',
            legs,
            sessionAuthenticated,
            authIdCarried,
            done: result.done,
            ...(context.identity ? { identity: context.identity } : {}),
            ...fallback(),
          };
        }
      }
    }
  } finally {
    clock.stop();
    release?.();
  }
}
