import type { Dispatcher } from 'undici';
import type { PreparedBody } from '../body/replayable.ts';
import type { Challenge } from '../challenge/types.ts';
import type { HeldResponse } from '../handshake/leg.ts';
import type { UserSink } from '../handshake/user-sink.ts';
import type { HeaderMap } from '../headers.ts';
import type { WithheldReason } from '../trust/policy.ts';
import type { HeldBackWhy, WatchStage } from './credential-proof.ts';
import type { CallerNtlmLeg, ChallengeRecord } from './ntlm-pairing.ts';
import type { Identity } from './session.ts';

let nextJobId = 0;

/** One caller request on its way through sessions and legs. */
export interface Job {
  readonly id: number;
  readonly origin: string;
  /**
   * The origin as the caller named it, whose cookies the jar gives and keeps (S1, S6): behind
   * undici's `dns` interceptor `origin` holds the address it resolved and this the name, as the trust
   * policy reads it; the address's cookies would be every name's there (another site on a shared
   * front end got this one's session cookie). `origin` itself otherwise.
   */
  readonly site: string;
  /** The caller's dispatch options; legs put their own headers and body over them (the Client ignores `origin`). */
  readonly dispatchOptions: Dispatcher.DispatchOptions;
  /** Caller headers, lower-cased; legs add `authorization` and `auth-id` on top. */
  readonly headers: HeaderMap;
  readonly body: PreparedBody;
  readonly sink: UserSink;
  /** The caller wants HTTP/1.1 (Node's built-in fetch through the global dispatcher forces it). */
  readonly http1Only: boolean;
  /**
   * Whose credentials it carries, and so which sessions it may use (S6): `agent`, `anonymous`
   * (the trust policy withheld the agent's credentials) or `caller` (its own Authorization, which
   * we never touch).
   */
  readonly identity: Identity;
  /** Why the agent's credentials are withheld from this request (S1, S4, S5), if they are. */
  readonly withheld: WithheldReason | undefined;
  /** Send without credentials and show the server's 401: the handshake this request waited for failed (C7). */
  noAuth: boolean;
  /** How many times it waited for another request's handshake (bounded after 401s, R4). */
  waits: number;
  /** Send the next attempt bare, not with a proactive token: the handshake it waited for went unanswered (C6). */
  bare: boolean;
  /** Set once this request re-authenticated an authenticated session (T4: once). */
  reauthenticated: boolean;
  /**
   * Set once the request ran again with new credentials after a refusal (once per request, for
   * either): a password replaced since its leg was made (setCredentials: the handshake again with
   * the current one, S6/R4), or a client certificate the server refused, for which the selector
   * gave another (T3).
   */
  rerunWithNewCredentials: boolean;
  /** Relocations to another session so far (bounded, so a flapping server cannot loop us). */
  relocations: number;
  /**
   * Times sent again because the server (origin or forwarding proxy) closed a kept-alive connection
   * under it unanswered (Session.unanswered: an idempotent request only, at most
   * MAX_RESENDS_AFTER_CLOSE times, and never after a close on a new connection).
   */
  resendsAfterClose: number;
  /**
   * Its HTTP/2 streams an origin reset with REFUSED_STREAM before any response (undici's retries on
   * one connection included), and the times it moved to a new connection for that (Session.unanswered:
   * at most MAX_MOVES_AFTER_REFUSAL): what its StreamRefusedError says.
   */
  streamsRefused: number;
  movesAfterRefusal: number;
  /**
   * C8/R1: streams of another request's handshake leg that this request waited behind (C1) and the
   * server refused, closing the connection under it: each such move counts as one after a refusal
   * of its own (Session.behindRefusal), so a burst behind a handshake every connection refuses ends
   * as its leader does, not in RelocationLimitError, on no more connections.
   */
  streamsRefusedAhead: number;
  /**
   * The session whose connection answered this request's own legs last (a handshake's 401s), and
   * how many: answers to its own legs make no connection a kept-alive one for it (Session.unanswered).
   */
  answeredOn: object | undefined;
  answeredHere: number;
  /**
   * The challenges of a 401 whose connection closed before it was answered (HTTP/1.1 `Connection:
   * close`, or a challenge body too big to read): the next session answers them at once (H1).
   */
  challenges: readonly Challenge[] | undefined;
  /**
   * With `deliver401`: the last 401 a bare send of it met, read in full and kept while the agent
   * tries to answer it; the caller's response if nothing offered can run here.
   */
  held401: HeldResponse | undefined;
  /**
   * R4: the 401 a bare send of it met, held for the refusal memory (SendSeen.kept), while it waits
   * behind another request's handshake (C1): the answer if that handshake's password is held back
   * (WaitOutcome `withheld`), rather than a second bare send. Dropped when the wait ends.
   */
  heldForRecall: HeldResponse | undefined;
  /**
   * R4: it waited behind a handshake whose password was held back (WaitOutcome `withheld`) before it
   * met a 401 of its own: the 401 its bare send meets is its answer, said why as the leader's is
   * (multileg:withheld) — not an unexplained 401. Why, as decided when the wait ended: a round trip
   * later the proof may say otherwise (a refusal lifted, or one recalled for another request).
   */
  heldBack: HeldBackWhy | undefined;
  /**
   * R4: its wait for the outcome of a probe whose refusal memory was asked, rather than go bare
   * meanwhile (CredentialProof.watch, exchange.ts `watch`). `withheld` says no more than `heldBack`
   * (`recall-timeout`) and `noAuth`, set with it.
   */
  watch: WatchStage;
  /**
   * R1/R4: its wait for the outcome of the proxy credentials' probe whose refusal memory was asked,
   * rather than for a session held by that recall (OriginPool #watchProxy). `withheld`: it goes to
   * the proxy without the proxy credentials, and its 407 is the answer (recall-timeout), as for the
   * requests that waited on the probe's proof.
   */
  proxyWatch: WatchStage;
  /**
   * A callers' connection-bound request's own NTLM leg (ntlm-pairing.ts): a NEGOTIATE whose
   * CHALLENGE is remembered, or an AUTHENTICATE that goes only where its CHALLENGE came from.
   */
  ntlm: CallerNtlmLeg | undefined;
  /** That leg is its own `Proxy-Authorization`'s, to a forwarding proxy (its CHALLENGE comes in a 407). */
  ntlmAtProxy: boolean;
  /**
   * Its own `Authorization` is an NTLM NEGOTIATE: the CHALLENGE of a 401 is remembered for its
   * AUTHENTICATE, also when {@link ntlm} is its `Proxy-Authorization`'s leg (the proxy let it through).
   */
  originOpening: boolean;
  /** The CHALLENGE this AUTHENTICATE answers, taken for it (its session is where it goes). */
  paired: ChallengeRecord | undefined;
  /** The session its NEGOTIATE was given, counted there until it leaves (see Session.openingSent). */
  openingOn: object | undefined;
  /** Times its NEGOTIATE was sent again for a CHALLENGE that could be told from the pending ones. */
  reasks: number;
}

/** The caller asked for HTTP/1.1 (`allowH2: false` on the request: Node's built-in fetch). */
export const http1Only = (opts: Dispatcher.DispatchOptions): boolean =>
  (opts as { allowH2?: boolean }).allowH2 === false;

/**
 * Whether `job` may go to the server twice: its `idempotent` dispatch option, else undici's own rule
 * (GET and HEAD), as undici decides whether to retry a request on a connection that closed.
 */
export const mayGoTwice = (job: Job): boolean => optionsMayGoTwice(job.dispatchOptions);

/** {@link mayGoTwice} of a request's dispatch options (an upgrade's, which is no Job). */
export const optionsMayGoTwice = (opts: Dispatcher.DispatchOptions): boolean =>
  opts.idempotent ?? (opts.method === 'GET' || opts.method === 'HEAD');

/** A request as the agent takes it in, before any session: nothing tried, nothing learnt yet. */
export function newJob(
  origin: string,
  opts: Dispatcher.DispatchOptions,
  headers: HeaderMap,
  body: PreparedBody,
  sink: UserSink,
  identity: Identity,
  withheld: Job['withheld'],
  site = origin,
): Job {
  nextJobId += 1;
  return {
    id: nextJobId,
    origin,
    site,
    // The caller's own options, not a copy: legs put their headers and body over them, and the
    // fast path sends them as they are (the Client ignores their origin).
    dispatchOptions: opts,
    headers,
    body,
    sink,
    http1Only: http1Only(opts),
    identity,
    withheld,
    noAuth: false,
    waits: 0,
    bare: false,
    reauthenticated: false,
    rerunWithNewCredentials: false,
    relocations: 0,
    resendsAfterClose: 0,
    streamsRefused: 0,
    movesAfterRefusal: 0,
    streamsRefusedAhead: 0,
    answeredOn: undefined,
    answeredHere: 0,
    challenges: undefined,
    held401: undefined,
    heldForRecall: undefined,
    heldBack: undefined,
    watch: 'unwatched',
    proxyWatch: 'unwatched',
    ntlm: undefined,
    ntlmAtProxy: false,
    originOpening: false,
    paired: undefined,
    openingOn: undefined,
    reasks: 0,
  };
}

/**
 * Whether `job`, whose credentials were refused after the agent replaced them (setCredentials,
 * setProxyCredentials), or whose client certificate was refused (the selector is asked for
 * another), may run once more with new ones: once per request, whichever, and only when its body
 * can go again (C10: else the refusal is its answer). Marks it when it may.
 */
export function rerunWithNewCredentials(job: Job): boolean {
  if (job.rerunWithNewCredentials || !job.body.replayable) return false;
  job.rerunWithNewCredentials = true;
  return true;
}
