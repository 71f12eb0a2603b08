import { readAuthId, readChallenges, readPersistentAuth } from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import { tracingLegs } from '../diagnostics.ts';
import { AuthIdInUseError, BodyNotReplayableError, HandshakeTimeoutError, type NoStream, ownCopy } from '../errors.ts';
import {
  type AuthIdClaims,
  type HandshakeInput,
  type HandshakeResult,
  relocationReason,
  runHandshake,
} from '../handshake/handshake.ts';
import type { HeldResponse, LegResult, OpenResponse, ResponseHeaders, Verdict } from '../handshake/leg.ts';
import type { UserSink } from '../handshake/user-sink.ts';
import { log } from '../log.ts';
import { fallbackReasonOf } from '../mechanisms/negotiate/errors.ts';
import { credentialScheme, type MechanismSet, TRANSPORT } from '../mechanisms/registry.ts';
import { type LegInfo, type Mechanism, NOT_YET_CONNECTED } from '../mechanisms/types.ts';
import {
  type ClientCertificate,
  type ClientCertificateSelector,
  type Limits,
  portOf,
  unbracketed,
} from '../options.ts';
import type { ProxyHandshake } from '../proxy/auth.ts';
import { CleartextCredentialsError } from '../trust/policy.ts';
import type { ProbeAnswer } from './acceptable-issuers.ts';
import {
  afterRefusal,
  answerCertificateDemand,
  answerRenegotiationDemand,
  asksSelectorAgain,
  type CertificateDemand,
  ClientCertificateAfterHandshakeError,
  type ClientCertificateRefusedError,
  ClientCertificateRequiredError,
  certificateAnswer,
  certificateRefusal,
  certificateRefused,
  demandsCertificate,
  mayBeCertificateAnswer,
  mayBePostHandshakeRefusal,
  postHandshakeAnswer,
  selectCertificate,
} from './client-certificate.ts';
import type { Admission, Ticket } from './credential-proof.ts';
import {
  exclude,
  firstChallenge,
  heldBackAnswer,
  offersUnusable,
  publishUnanswered401,
  renewFindings,
  type SchemeFindings,
  unusable,
  withheld401,
} from './first-challenge.ts';
import { type Job, mayGoTwice, rerunWithNewCredentials } from './job.ts';
import {
  type ChallengeRecord,
  type ChallengeRecords,
  callerNtlmLeg,
  challengeKey,
  isSpnegoReject,
} from './ntlm-pairing.ts';
import { kdcSilent, type OriginMemory, protectionSpaces } from './origin-memory.ts';
import { ownProxy, type Session, StaleConnectionError, type WaitOutcome } from './session.ts';
import { mustQueue } from './state.ts';

/**
 * One finished handshake, as reported by the agent's `handshake` event, `multileg:handshake` and
 * stats: with an origin, or (`proxy: true`) with the proxy on the way to one (H5).
 */
export interface HandshakeReport {
  /**
   * Set on a handshake with a proxy (H5): a CONNECT tunnel's, or one on a forwarding proxy's
   * connection; absent on an origin's. `origin` is then the proxy's (`http://host:port`, no
   * userinfo), `sessionId` the session whose connection it authenticated (its CONNECT, or the
   * forwarding proxy connection), `protocol` that of the connection to the proxy (a CONNECT's is
   * HTTP/1.1), and `authIdCarried` false. `stats()` counts these apart (`proxyHandshakes`).
   */
  readonly proxy?: true;
  /** The origin (`https://host:port`); with {@link proxy}, the proxy's. */
  readonly origin: string;
  readonly sessionId: string;
  readonly protocol: 'h2' | 'http/1.1' | undefined;
  readonly scheme: string;
  /** Legs sent with credentials. */
  readonly legs: number;
  /**
   * `session`: the connection is authenticated; `per-request`: each request authenticates itself
   * (with a proxy's Basic or Digest, each request that carries them on its own is a one-leg
   * handshake of its own, as with an origin's).
   */
  readonly outcome: 'session' | 'per-request' | 'failed';
  /** Whether a server Auth-ID was echoed on a later leg (C3). */
  readonly authIdCarried: boolean;
  /** Who the server (or proxy) took the credentials for, where the mechanism says it. */
  readonly identity?: string;
  /**
   * Why Kerberos was skipped and NTLM used instead (inside Negotiate, or as the next offered scheme; M5),
   * e.g. `MULTILEG_KRB_TICKET_EXPIRED: the Kerberos ticket has expired`. A proxy's report (`proxy:
   * true`) says it too for whichever scheme the proxy offered answered instead (NTLM, Digest, Basic).
   */
  readonly fallbackReason?: string;
  /** Negotiate: the service principal name the Kerberos ticket was asked for (`HTTP@host`: the URL's host). */
  readonly spn?: string;
  /**
   * A failed handshake's cause, where it is known: `refused`, the server answered the last leg
   * with a 401 (wrong password, or an account it does not accept); `proof`, the server did not
   * prove itself: its final token failed mutual authentication (the caller got `MutualAuthError`),
   * or a final answer other than a 2xx (a redirect, a 404, a 5xx) came without the token the
   * mechanism waited for (a Kerberos AP-REP) and the mechanism would not do without it
   * (`negotiate.mutualAuth` 'required', the default; 'optional' takes a 3xx or 4xx as a 2xx) — the
   * caller got that answer, and nothing was recorded as authenticated (no session, no identity);
   * `error`, the handshake ended otherwise (a timeout, a reset, a last leg answered neither with
   * success nor with a 401: a 5xx from a backend that is down, its final token verified or not
   * wanted). A failed handshake whose final answer said `Persistent-Auth: true` ends its connection
   * (gracefully: the answer completes, nothing more goes on it), whatever the status, when it came
   * unproved or its identity lives outside the agent (a Kerberos ticket);
   * `opening`, the server answered the opening leg of a multi-leg handshake with its final 401 (an
   * NTLM NEGOTIATE, alone or inside SPNEGO, which holds no password): no password was tried — the
   * server takes no such handshake here (a Kerberos-only Negotiate: `fallbackReason` says why
   * Kerberos was skipped) or would not start one. R4 does not count it against the credentials.
   * With a proxy, the same of its 407.
   */
  readonly failure?: 'refused' | 'opening' | 'proof' | 'error';
  /**
   * A failed handshake with a proxy: the error that ended it, as `CODE: message` (no secret, S2),
   * where one did — e.g. why a proxy's NTLM gave way to its Basic (T2: an unreadable CHALLENGE).
   * With an origin: `MULTILEG_AUTH_ID_IN_USE: …` when the server gave this handshake's Auth-ID to
   * another running on the session too, and it sent nothing under it (C3; never the value).
   */
  readonly failureReason?: string;
}

/** The report of a handshake with the proxy that ran on `sessionId`'s connection (H5). */
export function proxyHandshakeReport(sessionId: string, h: ProxyHandshake): HandshakeReport {
  return {
    proxy: true,
    ...(h.fallbackReason ? { fallbackReason: h.fallbackReason } : {}),
    ...(h.spn ? { spn: h.spn } : {}),
    ...(h.failure ? { failure: h.failure } : {}),
    ...(h.failureReason ? { failureReason: h.failureReason } : {}),
    origin: h.origin,
    sessionId,
    protocol: h.protocol,
    scheme: h.scheme,
    legs: h.legs,
    outcome: h.outcome,
    authIdCarried: false,
    ...(h.identity !== undefined ? { identity: h.identity } : {}),
  };
}

export interface ExchangeEnv {
  readonly memory: OriginMemory;
  readonly mechanisms: MechanismSet;
  readonly limits: Limits;
  /** Picks a client certificate for a Transport challenge (T3). */
  readonly selectCertificate?: ClientCertificateSelector;
  /** The selector is the caller's (not a certificate given as such): it is told the server's acceptable CAs (T3). */
  readonly askAcceptableIssuers?: boolean;
  /** The probe's answer (T3): whether the server asks for a client certificate in TLS; once per origin. */
  readonly certificateRequest?: () => Promise<ProbeAnswer>;
  /** The agent was destroyed: its error (no selector is asked after it, T3). */
  readonly destroyed?: () => Error | undefined;
  /** A 401 nothing can answer here is the caller's response, not the typed error (`deliver401`). */
  readonly deliver401?: boolean;
  report(r: HandshakeReport): void;
  /** The callers' NTLM CHALLENGEs waiting for their AUTHENTICATE at this origin (ntlm-pairing.ts). */
  readonly pairing?: ChallengeRecords;
  /**
   * `session` is authenticated as `identity` (S6) by `scheme`'s handshake, whose leave to send
   * credentials was the `admitted`-th ({@link Ticket.admitted}: which handshake's credentials are newer).
   */
  identityProved(session: Session, identity: string, scheme: string, admitted: number): void;
  /**
   * A handshake of the agent's succeeded as `identity` with `scheme`'s mechanism, whether or not it
   * authenticated the session (a login cookie may come on any success): for the cookie jar (S6).
   */
  succeededAs?(identity: string, scheme: string): void;
}

export type RelocateReason = 'http1' | 'connection-ended' | 'misdirected' | 'client-certificate';
export type ExchangeOutcome =
  | { readonly kind: 'done'; readonly done: Promise<void> }
  /** The request is to go bare on its authenticated session: the pool starts a FastExchange (fast-exchange.ts). */
  | { readonly kind: 'fast' }
  | { readonly kind: 'relocate'; readonly reason: RelocateReason };

export const DONE: ExchangeOutcome = { kind: 'done', done: Promise.resolve() };
const FAST: ExchangeOutcome = { kind: 'fast' };

/** Host and port of the last origin a leg was made for: per-request mode asks once per request. */
let lastOrigin: { origin: string; hostname: string; port: number } | undefined;

function hostAndPort(origin: string): { hostname: string; port: number } {
  if (lastOrigin?.origin !== origin) {
    const url = new URL(origin);
    lastOrigin = { origin, hostname: unbracketed(url.hostname), port: portOf(url) };
  }
  return lastOrigin;
}

/** How often one request may join a handshake queue after a 401 before it is shown that 401 (R4). */
export const MAX_WAITS = 3;

/**
 * The lifecycle of one request on one session, as an explicit state (the request's counterpart of
 * `state.ts`); `runOnSession` runs it to `end`:
 *
 *   check ──▶ wait ─(released/failed)─▶ check        check ──▶ (connect ──▶ check) lead (proactive) ──▶ end
 *     │         └──(lead: handed over, R2)──▶ lead      │
 *     └──▶ send ─(401 we can answer)─▶ answer ──▶ lead ──▶ end        any ──▶ end (done | relocate)
 *            └─(a handshake began meanwhile)─▶ check (C1)
 */
type Step =
  /** Look at the session: queue (C1), relocate, authenticate proactively, or send. */
  | { readonly kind: 'check' }
  /** Queued behind another request's handshake. */
  | { readonly kind: 'wait' }
  /** Waiting for a new session's connection, to bind a proactive first token to it (M5). */
  | { readonly kind: 'connect' }
  /** R4: held from a bare send while another request's probe waits for the refusal memory (CredentialProof.watch). */
  | { readonly kind: 'watch' }
  /** Send without credentials (C2, or the origin's first request). */
  | { readonly kind: 'send' }
  /**
   * A 401 whose challenges we may answer: choose the scheme (T2, T3). `held`: that 401 in full,
   * the answer if the refusal memory holds the password back ({@link SendSeen.kept}).
   */
  | {
      readonly kind: 'answer';
      readonly challenges: readonly Challenge[];
      readonly authId?: string;
      readonly held?: HeldResponse;
    }
  /**
   * The connection failed as a server that requires a client certificate in TLS fails it, or
   * (`held`) the server answered that none was sent: nginx's 400, shown as it came where the probe
   * does not confirm that the server asks for one (`answered`: its words) (T3).
   */
  | {
      readonly kind: 'demand';
      readonly error: Error;
      readonly held?: HeldResponse;
      readonly answered?: string;
      /** The server asked after the handshake, by renegotiating the connection ({@link renegotiationDemanded}). */
      readonly renegotiated?: true;
      /**
       * The certificate the server refused, which the selector chose ({@link refuseCertificate}):
       * the request goes again only with another (`error` is then the refusal).
       */
      readonly refused?: ClientCertificate;
    }
  /** Run a handshake with `mechanism`. */
  | {
      readonly kind: 'lead';
      readonly mechanism: Mechanism;
      readonly challenge: Challenge | undefined;
      /** Every challenge the 401 offered, to fall back on when this mechanism cannot run here. */
      readonly offered?: readonly Challenge[];
      /** An Auth-ID the server put on the first 401 (C3, D§3's MAY). */
      readonly authId?: string;
      /** The handshake blocks the session (C1). */
      readonly blocking: boolean;
      /** The session's handshake was handed to this request (R2): it is already the leader. */
      readonly handedOver?: boolean;
      /** Led before any 401 at an origin nothing is known of (OriginMemory.opensUnasked). */
      readonly opening?: boolean;
      /** Led before any 401 inside a protection space where its scheme succeeded (OriginMemory.spaceScheme). */
      readonly spaced?: boolean;
      /** The 401 it answers, held: the answer if the password is held back ({@link SendSeen.kept}). */
      readonly held?: HeldResponse;
    }
  /**
   * R4: the 401 a bare send met, kept for the refusal memory ({@link SendSeen.kept}), outgrew its
   * bounds: paused while the memory is asked ({@link recallOpen}).
   */
  | { readonly kind: 'recall'; readonly seen: SendSeen; readonly result: Swallowed; readonly open: OpenResponse }
  | { readonly kind: 'end'; readonly outcome: ExchangeOutcome };

type Swallowed = Extract<LegResult, { kind: 'swallowed' }>;

const CHECK: Step = { kind: 'check' };
const SEND: Step = { kind: 'send' };
const WAIT: Step = { kind: 'wait' };
const CONNECT: Step = { kind: 'connect' };
const WATCH: Step = { kind: 'watch' };
const end = (outcome: ExchangeOutcome): Step => ({ kind: 'end', outcome });
/** Answer a 401's challenges, with its Auth-ID when it gave one (C3), and the 401 itself when held. */
const answerStep = (challenges: readonly Challenge[], authId: string | undefined, held?: HeldResponse): Step => ({
  kind: 'answer',
  challenges,
  ...(authId !== undefined ? { authId } : {}),
  ...(held ? { held } : {}),
});
const failed = (job: Job, err: Error): Step => {
  job.sink.fail(err);
  return end(DONE);
};

/**
 * `deliver401`: says why the 401 in `headers` goes to the caller (the offered schemes that cannot
 * run here, with their errors), before the caller gets it.
 */
function tellUnanswered({ job, unusableWhy }: Run, headers: ResponseHeaders): void {
  publishUnanswered401(job.origin, job.dispatchOptions.path, headers, unusableWhy);
}

/** `deliver401`: the held 401 nothing here can answer is the caller's response (sent once, as curl does). */
function deliverHeld(run: Run, held: HeldResponse): Step {
  run.job.held401 = undefined;
  tellUnanswered(run, held.headers);
  run.session.deliverHeld(run.job, held);
  return end(DONE);
}

/** What one request carries through its lifecycle on one session. */
export interface Run extends SchemeFindings {
  readonly session: Session;
  readonly job: Job;
  readonly env: ExchangeEnv;
  /** The session was asked to connect before a channel-bound first token (once per request). */
  connectTried?: boolean;
}

/**
 * Carries one caller request on one session to its end: waits while another request's handshake
 * blocks the session (C1), sends without credentials on an authenticated session (C2), leads a
 * handshake when challenged, authenticates proactively where the origin is known to want it (C4),
 * or asks the pool to relocate it (connection ended, HTTP/1.1 required, 421).
 */
export function runOnSession(session: Session, job: Job, env: ExchangeEnv): Promise<ExchangeOutcome> {
  const run = newRun(session, job, env);
  const first = check(run);
  // (A connection to make first, S4/M4: through the steps, which wait for it.)
  if (first.kind !== 'lead' || session.unverifiedTls === NOT_YET_CONNECTED) return runSteps(run, first);
  // Per-request mode's usual path: the request leads its own handshake at once, and its end is the
  // request's end here — one promise, no step loop, unless the handshake leaves more to do.
  return new Promise((resolve, reject) =>
    new Lead(run, first, (next) => {
      if (next.kind === 'end') resolve(next.outcome);
      else runSteps(run, next).then(resolve, reject);
    }).start(),
  );
}

export function newRun(session: Session, job: Job, env: ExchangeEnv): Run {
  const run: Run = { session, job, env, excluded: undefined, lastUnusable: undefined, foundWith: env.mechanisms };
  // A session that already presents the certificate cannot answer Transport again.
  if (env.memory.clientCertificate) exclude(run, TRANSPORT);
  return run;
}

export async function runSteps(run: Run, first: Step): Promise<ExchangeOutcome> {
  const { session, job } = run;
  let step = first;
  while (step.kind !== 'end') {
    switch (step.kind) {
      case 'check':
        step = check(run);
        break;
      case 'wait': {
        // Awaited here rather than in a step function: one suspended frame less per queued request (R6).
        let outcome: WaitOutcome;
        try {
          outcome = await session.waitForHandshake(job);
        } catch (err) {
          step = failed(job, err as Error);
          break;
        }
        step = afterWait(run, outcome);
        break;
      }
      case 'connect':
        run.connectTried = true;
        await session.connectEarly();
        step = CHECK;
        break;
      case 'watch':
        step = await watch(run);
        break;
      case 'send':
        // Released from a wait onto an authenticated session, like most of a burst: the fast path.
        if (run.excluded === undefined && fastPathEligible(session, job, run.env)) return FAST;
        step = await send(run);
        break;
      case 'answer':
        step = await answer(run, step);
        break;
      case 'demand':
        step = await demand(run, step);
        break;
      case 'lead':
        step = await lead(run, step);
        break;
      case 'recall':
        step = await recallOpen(run, step);
        break;
    }
  }
  return step.outcome;
}

/**
 * Whether `job` may take the fast path on `session` (FastExchange, fast-exchange.ts): the steps'
 * decision, checked by the pool before it starts one and by `send` after a wait.
 */
export function fastPathEligible(session: Session, job: Job, env: ExchangeEnv): boolean {
  return (
    job.identity === 'agent' &&
    !job.noAuth &&
    (job.body.asIs === true || (job.body.streams === true && job.body.replayable)) &&
    fastPathReady(session, env) &&
    // S1: a path inside a Basic or Digest protection space carries its credentials (check).
    env.memory.spaceScheme(job.dispatchOptions.path) === undefined
  );
}

/** The session is authenticated and nothing the steps would check stands in the way. */
export function fastPathReady(session: Session, env: ExchangeEnv): boolean {
  return (
    session.state.kind === 'authenticated' &&
    // Traced legs are published by the session's own send (multileg:leg).
    !tracingLegs() &&
    !env.memory.requiresHttp1 &&
    (env.memory.clientCertificate === undefined || session.certified) &&
    !env.memory.hasUnusable &&
    session.sendsDirect
  );
}

/**
 * The challenges of `offered` a request on another connection may answer as its own: connection-bound
 * schemes (NTLM, Negotiate) the agent has, with no token (nothing of this connection, request or path).
 */
function connectionBound(offered: readonly Challenge[], env: ExchangeEnv): readonly Challenge[] | undefined {
  const bound = offered.filter(
    (c) => c.token68 === undefined && (env.mechanisms.get(c.scheme)?.level ?? 'request') !== 'request',
  );
  return bound.length > 0 ? bound : undefined;
}

function mayAuthenticate({ job, env }: Run): boolean {
  return job.identity === 'agent' && !job.noAuth && !env.mechanisms.empty && !env.memory.credentialsRefused;
}

function check(run: Run): Step {
  const { session, env } = run;
  // What the origin proved unusable meanwhile (R4): not tried again by every waiting request.
  for (const [scheme, error] of env.memory.unusable()) {
    unusable(run, scheme, error);
  }
  const state = session.state;
  if (state.kind === 'closed') {
    // Waiters of a session closed with a failure are rejected with it (Session.apply); a request
    // gets here with one only when its 401 completes in the same tick as that close (no test stages
    // it), or, with http1Required, when a GOAWAY HTTP_1_1_REQUIRED ends a running handshake (IIS
    // refuses the first unauthenticated request instead).
    if (state.failure) return failed(run.job, state.failure);
    // C8/R1: closed as the server refused the handshake it waited behind: that refusal is its too.
    const refused = session.behindRefusal(run.job);
    if (refused) return failed(run.job, refused);
    return end({ kind: 'relocate', reason: state.http1Required ? 'http1' : 'connection-ended' });
  }
  if (mustQueue(state)) return WAIT;
  if (env.memory.requiresHttp1 && session.lane === 'auto' && session.protocol === 'h2') {
    return end({ kind: 'relocate', reason: 'http1' });
  }
  // The 401 of a connection that closed before it was answered: its challenges start the
  // handshake here, where a bare request would only meet the same 401 and close again (H1).
  const may = mayAuthenticate(run);
  const authenticates = may && state.kind !== 'authenticated';
  const { challenges } = run.job;
  if (challenges) {
    run.job.challenges = undefined;
    if (authenticates) return answerStep(challenges, undefined);
  }
  if (!may) return SEND;
  // R4: a request that waited in vain MAX_WAITS times goes bare and gets the server's answer;
  // C6: one whose leader's proactive first leg went unanswered goes bare once.
  const mayLead = run.job.waits < MAX_WAITS && !run.job.bare;
  // S1: a per-request password scheme (Basic, Digest) goes unasked only inside a protection space
  // where it succeeded, on any session (an NTLM-authenticated one too: it blocks no one there).
  const spaced = env.memory.spaceScheme(run.job.dispatchOptions.path);
  if (spaced !== undefined) {
    run.job.bare = false;
    const mechanism = env.mechanisms.get(spaced);
    if (mechanism?.proactive && mayLead && !run.excluded?.has(mechanism.scheme.toLowerCase())) {
      return { kind: 'lead', mechanism, challenge: undefined, blocking: false, spaced: true };
    }
    return SEND;
  }
  // R1: bare requests here meet a 401 whose body stalls, which waits limits.handshakeTimeout each
  // (on HTTP/1.1 the next connection would be another request's bare probe stalling as long): a
  // new session answers the challenges of the last one, as a relocated request answers its own.
  const stalled = env.memory.stalledChallenges;
  if (authenticates && stalled && mayLead && state.kind === 'fresh' && env.memory.scheme === undefined) {
    return answerStep(stalled, undefined);
  }
  // Proactive: the origin is known to want a scheme (per-request: every request; session: the leader).
  if (authenticates) {
    const scheme = state.kind === 'per-request' ? state.scheme : env.memory.scheme;
    // Nothing known of the origin, and NTLM the only scheme the agent may use: its NEGOTIATE goes
    // on the first request, as curl --ntlm sends it (a round trip less than a bare first request).
    const sole = env.mechanisms.sole;
    const opens = scheme === undefined && state.kind === 'fresh' && env.memory.opensUnasked(sole);
    const mechanism = scheme ? env.mechanisms.get(scheme) : opens ? sole : undefined;
    const perRequest = state.kind === 'per-request' || env.memory.mode === 'per-request';
    const leads = mayLead && (!perRequest || mechanism?.proactive);
    run.job.bare = false;
    // S1: a per-request scheme outside every space it succeeded in (above) waits to be asked.
    if (mechanism && mechanism.level !== 'request' && !run.excluded?.has(mechanism.scheme.toLowerCase()) && leads) {
      // M5: a channel-bound first token needs the connection's certificate: a new session
      // connects first; where it cannot (a proxy's connection, or the dial failed) the request
      // goes bare and the server's 401 starts the handshake.
      const unbound = mechanism.bindsFirstToken && !session.connection && run.job.origin.startsWith('https:');
      if (!unbound) {
        const blocking = !perRequest && mechanism.multileg;
        return opens
          ? { kind: 'lead', mechanism, challenge: undefined, blocking, opening: true }
          : { kind: 'lead', mechanism, challenge: undefined, blocking };
      }
      if (!run.connectTried && session.connectsEarly) return CONNECT;
    }
    // R4: another request's probe of the password waits for the refusal memory: this one waits for
    // its outcome once rather than go bare now, meet a 401 and wait for the same outcome (watch).
    if (mayLead && run.job.watch === 'unwatched' && env.memory.proof.recalling) return WATCH;
  }
  return SEND;
}

/**
 * R4: waits for the outcome of the probe whose recall of the refusal memory made the request
 * {@link check} holds (CredentialProof.watch), then looks again: a scheme the probe proved leads
 * at once (a request's handshake its only legs), a refusal sends it bare to meet the server's
 * 401 as its answer. The recall given up at queueTimeout: it goes without the password, its 401
 * the answer, said why (recall-timeout), as a request that waited behind that probe's handshake.
 */
async function watch(run: Run): Promise<Step> {
  const { session, job, env } = run;
  job.watch = 'watched';
  // Its connection is made meanwhile (a direct one): the wait costs no round trips of its own.
  if (session.connectsEarly) void session.connectEarly();
  try {
    if ((await env.memory.proof.watch(job, env.limits)) === 'withheld') {
      job.watch = 'withheld';
      job.noAuth = true;
      job.heldBack = 'recall-timeout';
    }
  } catch (err) {
    // Full, timed out or aborted (R1), or the agent destroyed: nothing was sent.
    return failed(job, err as Error);
  }
  return CHECK;
}

function afterWait(run: Run, outcome: WaitOutcome): Step {
  const { session, job, env } = run;
  // R4 counts the handshakes a request waited for in vain; a session that ended under it (GOAWAY,
  // reset) is not one of them (moves between connections have their own bound, MAX_RELOCATIONS),
  // nor a leader's request that needed no authentication (C6: it goes bare, and a 401 there starts
  // a handshake from the server's challenge, which cannot go unanswered again).
  if (outcome === 'released' || outcome === 'failed' || outcome === 'withheld') job.waits += 1;
  if (outcome === 'failed' || outcome === 'withheld') job.noAuth = true;
  if (outcome === 'bare') job.bare = true;
  const held = job.heldForRecall;
  job.heldForRecall = undefined;
  // R4: the handshake waited for held its password back: this request's own 401, held, is its
  // answer, said why as the leader's is — the request (its body) sent once.
  if (outcome === 'withheld' && held) {
    heldBackAnswer(job.origin, job.dispatchOptions.path, env.memory.proof, held.headers, env.limits.queueTimeout);
    session.deliverHeld(job, held);
    return end(DONE);
  }
  // (It met no 401 yet, waiting from the start: the one it meets now, bare, is said why: classifySend,
  // as the leader's was, now: the proof may say otherwise once that 401 comes.)
  if (outcome === 'withheld') job.heldBack = env.memory.proof.heldBackWhy;
  if (outcome !== 'lead') return CHECK;
  // R2: the leader gave up for its own reasons and this request takes its handshake over.
  // The hand-over made it the leader just now; the state has moved on only if the session closed
  // in the same tick (no test stages it): then check() sends it elsewhere.
  const state = session.state;
  const mechanism = state.kind === 'handshaking' ? env.mechanisms.get(state.scheme) : undefined;
  if (!mechanism) return CHECK;
  // (Its 401, held, is its answer if its own ask of the memory holds the password back: #admitted.)
  return { kind: 'lead', mechanism, challenge: undefined, blocking: true, handedOver: true, ...(held ? { held } : {}) };
}

/** What the classifier of a bare send saw in the response head, for {@link afterSend}. */
export interface SendSeen {
  /**
   * Sent on an authenticated session (T4); cleared when its 401 does not offer the session's scheme
   * (another protection space, {@link otherProtectionSpace}).
   */
  reauth: boolean;
  challenges: Challenge[];
  authId: string | undefined;
  misdirected: boolean;
  cleartextRefused: boolean;
  unusable: boolean;
  /** A 400 held as possibly nginx's answer about the client certificate (T3, {@link mayBeCertificateAnswer}). */
  certificateAnswer: boolean;
  /** A 403 held as possibly Apache's refusal for want of post-handshake authentication (T3, {@link mayBePostHandshakeRefusal}). */
  postHandshake?: boolean;
  /** A caller's NEGOTIATE goes again, with this Auth-ID unless empty (its CHALLENGE collided: {@link pairChallenge}). */
  reask?: string;
  /** The CHALLENGE a caller's origin NEGOTIATE got, remembered for its AUTHENTICATE ({@link pairChallenge}). */
  recorded?: ChallengeRecord;
  /**
   * R4: the 401 is held, not drained: the handshake answering it asks the refusal memory first
   * (CredentialProof.mayRecall), which may hold the password back; this 401 is then the answer,
   * not one got by sending the request again bare (its body twice).
   */
  kept?: boolean;
}

/**
 * The verdict on the head of a bare send (C2): a 401 we can answer, a 401 whose every scheme proved
 * unusable here, a refused cleartext challenge (S4) or a 421 (C9) are swallowed; a 400 that may be
 * nginx's page about a client certificate (T3) is held to be read; the rest delivered.
 */
export function classifySend(run: Run, seen: SendSeen, status: number, headers: ResponseHeaders): Verdict {
  const { job, env } = run;
  if (status === 401) {
    env.memory.unchallenged = false;
    if (job.originOpening && pairChallenge(run, seen, headers)) return 'swallow';
    if (job.identity !== 'agent') {
      callerRefused(run, status, headers);
      proxyLetThrough(run, seen.recorded);
    }
  } else if (job.identity !== 'agent') {
    if (status === 407 && job.ntlm?.kind === 'opening' && job.ntlmAtProxy && pairChallenge(run, seen, headers, true))
      return 'swallow';
    if (status === 407) callerRefused(run, status, headers);
    callerAnswered(run, status, headers);
  }
  if (
    status === 400 &&
    mayAnswerCertificate(run) &&
    mayBeCertificateAnswer(headers) &&
    Number(headers['content-length']) <= env.limits.maxChallengeBodyBytes
  ) {
    seen.certificateAnswer = true;
    return 'hold';
  }
  if (
    status === 403 &&
    mayAskAfterHandshake(run) &&
    mayBePostHandshakeRefusal(headers, env.limits.maxChallengeBodyBytes)
  ) {
    seen.postHandshake = true;
    return 'hold';
  }
  if (status !== 401 && status !== 421) return 'deliver';
  if (status === 401 && seen.reauth && otherProtectionSpace(run, headers)) seen.reauth = false;
  // R4: a request that keeps meeting 401s after waiting is shown the 401 (no endless re-queueing).
  if (status === 401 && mayAuthenticate(run) && !(seen.reauth && job.reauthenticated) && job.waits < MAX_WAITS) {
    const offered = readChallenges(headers);
    renewFindings(run, env.mechanisms);
    const verdict = firstChallenge(env.mechanisms, offered, run, env.deliver401 === true, false);
    if (verdict === 'answer' || verdict === 'hold') {
      seen.challenges = offered;
      const reading = readAuthId(headers);
      if (reading?.ok) seen.authId = reading.value;
      seen.kept = env.memory.proof.mayRecall;
      // deliver401: kept, to be the caller's if what it offers cannot run here (no second request);
      // so too where the refusal memory may hold the password back (`kept`), and then past the
      // bounds of a held body too, paused (leg.ts `keep`: a 401 too large or slow to hold).
      return seen.kept ? 'keep' : verdict === 'hold' ? 'hold' : 'swallow';
    }
    // Only schemes already proved unusable here are offered: the caller gets why (R4, T2), or
    // with deliver401 this 401, told why.
    if (verdict === 'tell') {
      tellUnanswered(run, headers);
      return 'deliver';
    }
    if (verdict === 'unusable') {
      seen.unusable = true;
      return 'swallow';
    }
  }
  if (status === 401 && job.withheld !== undefined && env.mechanisms.choose(readChallenges(headers))) {
    log.agent('%s job %d: 401 not answered: %s', job.origin, job.id, job.withheld);
    // S4: a challenge over cleartext is refused with a typed error, not shown as a bare 401.
    if (withheld401(job.origin, job.dispatchOptions.path, headers, job.withheld)) {
      seen.cleartextRefused = true;
      return 'swallow';
    }
  } else if (
    status === 401 &&
    ((job.identity === 'agent' && env.memory.credentialsRefused) || job.heldBack !== undefined) &&
    env.mechanisms.choose(readChallenges(headers))
  ) {
    // R4: held back after the server refused them here (or left a password unanswered), or the
    // handshake it waited for had its password held back (or its recall given up at queueTimeout):
    // so is this request's, whose own 401 this is — said why as it was when its wait ended.
    heldBackAnswer(
      job.origin,
      job.dispatchOptions.path,
      env.memory.proof,
      headers,
      env.limits.queueTimeout,
      job.heldBack ?? 'refused-lately',
    );
  }
  // C9: a 421 means this connection does not serve the origin; retry on a fresh one.
  if (status === 421 && job.relocations < 2) {
    seen.misdirected = true;
    return 'swallow';
  }
  return 'deliver';
}

/** Times a caller's NEGOTIATE goes again for a CHALLENGE that can be told from the pending ones (ms before each: 1, 2, 4, 8, 16). */
export const MAX_REASKS = 5;

/**
 * A caller's own NTLM NEGOTIATE got `headers`' 401 (ntlm-pairing.ts): its CHALLENGE is remembered
 * against this session, for its AUTHENTICATE. A CHALLENGE whose TargetInfo another pending one has
 * (a server clock that ticked no further between the two MsvAvTimestamps) could not be told from it:
 * the NEGOTIATE, which holds no secret, goes again on the same session for another (true: the 401 is
 * swallowed; `seen.reask` the Auth-ID to send with it, so that the server replaces that context).
 * `proxy`: its own `Proxy-Authorization`'s NEGOTIATE got a forwarding proxy's 407 (no Auth-ID there).
 */
function pairChallenge(run: Run, seen: SendSeen, headers: ResponseHeaders, proxy = false): boolean {
  const { job, env, session } = run;
  const pairing = env.pairing;
  if (!pairing) return false;
  const key = challengeKey(headers, proxy);
  const reading = proxy ? undefined : readAuthId(headers);
  const authId = reading?.ok ? reading.value : undefined;
  // (Not on a session that retired meanwhile: it takes nothing more, and its records are dropped.
  // Nor when the request carries its proxy AUTHENTICATE too: that would send the password again, R4.)
  const again = !session.retiring && (proxy || !job.ntlmAtProxy);
  if (again && pairing.collides(key) && job.reasks < MAX_REASKS && job.body.replayable) {
    job.reasks += 1;
    seen.reask = authId ?? '';
    return true;
  }
  seen.recorded = pairing.record(session, key, authId, job.ntlm?.caller);
  return false;
}

/**
 * S6: a caller's own `Authorization` may leave the connection authenticated as the caller: a final
 * (non-401) answer to one of a scheme that may bind the connection (NTLM's AUTHENTICATE, a
 * Negotiate; `caller-bound`, or `caller-both` whose `Authorization` is such), or any answer saying
 * `Persistent-Auth: true`; and so may its own `Proxy-Authorization` of such a scheme, at a
 * forwarding proxy (a tunnel refuses a caller's own), once the proxy answers other than 407
 * (`caller-proxy`, `caller-both`; review r50). The callers' sessions are shared by every caller of
 * the lane, so the next one's request (a token the server or proxy ignores there) would be served
 * as this one: the session takes no new requests from now on (it retires; those on the wire finish,
 * those not written yet move). A 401 (407) is no such answer: a handshake's next leg goes on the
 * session that had its first.
 */
function callerAnswered({ job, session, env }: Run, status: number, headers: ResponseHeaders): void {
  const identity = job.identity;
  if (identity === 'agent' || identity === 'anonymous' || identity === 'elsewhere') return;
  const own = job.headers;
  const bound =
    identity === 'caller-bound' ||
    (identity === 'caller-both' && env.mechanisms.bindsConnection(own.authorization)) ||
    (ownProxy(identity) && status !== 407 && env.mechanisms.bindsConnection(own['proxy-authorization']));
  if (!bound && (identity === 'caller-proxy' || identity === 'caller-proxy-bound' || !readPersistentAuth(headers)))
    return;
  log.agent(
    "%s job %d: %s: the caller's own credentials may have authenticated %s; it retires",
    job.origin,
    job.id,
    bound ? 'answered' : 'Persistent-Auth',
    session.id,
  );
  // Other callers' CHALLENGEs recorded on it are dropped: their AUTHENTICATEs would be served as
  // this caller there (review r53); they fail `connection-gone` (ntlm-pairing.ts `retired`).
  env.pairing?.retired(session, job.paired);
  session.retire();
}

/**
 * S6/H1: a caller's own connection-bound credential (NTLM's AUTHENTICATE, a Negotiate token; at a
 * forwarding proxy its own `Proxy-Authorization`) answered 401 (407) asking no next leg of it — no
 * token of its scheme, or an SPNEGO reject: a refusal — may leave the connection in a state of the
 * server's: IIS answers a login it took with 401 where the resource's ACL denies that user (401.3),
 * and holds the connection as that user; Apache mod_auth_gssapi (GssapiConnectionBound) keeps the
 * failed context and refuses every later handshake there. The connection takes no one else's request (it retires,
 * as after the agent's own refused connection-bound handshake). Not after an NTLM NEGOTIATE (no
 * context was made), nor where the answer asks for the next leg, which goes on this connection.
 */
function callerRefused({ job, session, env }: Run, status: 401 | 407, headers: ResponseHeaders): void {
  if (session.retiring || session.closed) return;
  const identity = job.identity;
  const proxy = status === 407;
  const lane = proxy ? ownProxy(identity) : identity === 'caller-bound' || identity === 'caller-both';
  const own = job.headers[proxy ? 'proxy-authorization' : 'authorization'];
  if (!lane || !env.mechanisms.bindsConnection(own)) return;
  if (proxy ? own !== undefined && callerNtlmLeg({ authorization: own })?.kind === 'opening' : job.originOpening)
    return;
  const schemes = new Set((typeof own === 'string' ? [own] : (own ?? [])).map(credentialScheme));
  // An SPNEGO reject token asks for no next leg: it refuses, as a token-less challenge does.
  const next = (c: Challenge) =>
    schemes.has(c.schemeKey) && c.token68 !== undefined && !(c.schemeKey === 'negotiate' && isSpnegoReject(c.token68));
  if (readChallenges(headers, proxy).some(next)) return;
  log.agent(
    "%s job %d: the caller's own credentials refused (%d): %s may hold their failed or denied login; it retires",
    job.origin,
    job.id,
    status,
    session.id,
  );
  env.pairing?.retired(session, job.paired);
  session.retire();
}

/**
 * S6: a 401 (the origin's) to a caller's own `Proxy-Authorization` of a scheme that binds the
 * connection means the forwarding proxy let it through: the proxy connection may now be
 * authenticated as that caller (an NTLM AUTHENTICATE it took), and would let the next caller's request
 * through as them, whatever that one carries (the reference proxy and Squid look at no
 * Proxy-Authorization on an authenticated connection). It retires as after any other answer
 * ({@link callerAnswered}); the CHALLENGE this request's own origin NEGOTIATE got there (`kept`)
 * stays, so that its AUTHENTICATE still goes there.
 */
function proxyLetThrough({ job, session, env }: Run, kept: ChallengeRecord | undefined): void {
  if (session.retiring || session.closed || !ownProxy(job.identity)) return;
  if (!env.mechanisms.bindsConnection(job.headers['proxy-authorization'])) return;
  log.agent(
    "%s job %d: the caller's own Proxy-Authorization was let through (401): %s may be logged in as them at the proxy; it retires",
    job.origin,
    job.id,
    session.id,
  );
  env.pairing?.retired(session, job.paired, kept);
  session.retire();
}

/**
 * T4: a 401 on an authenticated session says the session lost its authentication only when it
 * offers the session's own scheme. One that offers only others is another protection space at the
 * same origin (`/basic/` on a connection that NTLM authenticated for `/ntlm/`, RFC 7617 §2.2): the
 * request's own first challenge, answered as on any session; the session stays authenticated, and
 * the request keeps its one re-authentication (it may yet move to another such session).
 */
function otherProtectionSpace({ session }: Run, headers: ResponseHeaders): boolean {
  const state = session.state;
  if (state.kind !== 'authenticated') return false;
  const key = state.scheme.toLowerCase();
  return !readChallenges(headers).some((c) => c.schemeKey === key || (SPNEGO.has(key) && SPNEGO.has(c.schemeKey)));
}

/** Negotiate may carry NTLM and an NTLM server may offer either: one protection space for T4. */
const SPNEGO = new Set(['negotiate', 'ntlm']);

export const newSeen = (reauth: boolean): SendSeen => ({
  reauth,
  challenges: [],
  authId: undefined,
  misdirected: false,
  cleartextRefused: false,
  unusable: false,
  certificateAnswer: false,
});

async function send(run: Run): Promise<Step> {
  const { job } = run;
  // (A 401 held from an earlier send is not this send's answer.)
  job.heldForRecall = undefined;
  // A caller's AUTHENTICATE carries the Auth-ID of the CHALLENGE it answers (C3), in place of a
  // stale one the caller relayed (ntlm-pairing.ts `take`: its echoed TargetInfo named the CHALLENGE).
  const authId = job.paired?.authId;
  let extra: Record<string, string> = authId !== undefined ? { 'auth-id': authId } : {};
  for (;;) {
    const seen = newSeen(run.session.state.kind === 'authenticated');
    const result = await run.session.send(job, extra, (status, headers) => classifySend(run, seen, status, headers));
    if (seen.reask === undefined || result.kind !== 'swallowed') return afterSend(run, seen, result);
    // Its body cut, the HTTP/1.1 connection went with it: the NEGOTIATE goes on another.
    if (result.slow) return end({ kind: 'relocate', reason: 'connection-ended' });
    await new Promise((resolve) => setTimeout(resolve, 2 ** (job.reasks - 1)));
    extra = seen.reask === '' ? {} : { 'auth-id': seen.reask };
  }
}

/** The next step after a bare send: done, relocate, fail, or answer the 401. */
export function afterSend(run: Run, seen: SendSeen, result: LegResult): Step {
  const { session, job, env } = run;
  if (result.kind === 'failed') {
    if (renegotiationDemanded(run)) {
      // (A request bound to a kept-alive connection fails as stale, which says nothing of why.)
      const error =
        result.error instanceof StaleConnectionError
          ? new Error('the server renegotiated the TLS connection and closed it before answering')
          : result.error;
      return { kind: 'demand', error, renegotiated: true };
    }
    const reason = relocationReason(result.error);
    // A stale replay after the session ended: it goes where the session's end says (a GOAWAY
    // HTTP_1_1_REQUIRED racing a leg; the H2 tests see the refusal on the leg itself).
    if (reason === 'connection-ended' && session.state.kind === 'closed' && session.state.http1Required) {
      return end({ kind: 'relocate', reason: 'http1' });
    }
    if (reason) return end({ kind: 'relocate', reason });
    const refused = refusedCertificate(run, result.error);
    if (refused) return refused;
    if (demandedCertificate(run, result.error)) return { kind: 'demand', error: result.error };
    return failed(job, result.error);
  }
  if (result.kind === 'delivered') {
    if (result.status !== 401 && job.identity === 'agent') env.memory.unchallenged = true;
    return end({ kind: 'done', done: result.done });
  }
  if (result.open) return { kind: 'recall', seen, result, open: result.open };
  if (seen.certificateAnswer) return certificateAnswered(run, result);
  if (seen.postHandshake) return postHandshakeAnswered(run, result);
  if (env.deliver401) job.held401 = result.held;
  // S4: trust was decided for `site` (the name behind undici's dns interceptor), so it is named.
  if (seen.cleartextRefused) return failed(job, new CleartextCredentialsError(job.site, job.origin));
  if (seen.unusable && run.lastUnusable) return failed(job, ownCopy(run.lastUnusable));
  if (seen.misdirected) return end({ kind: 'relocate', reason: 'misdirected' });
  // R1: a bare 401 whose body stalls costs each bare request here limits.handshakeTimeout: new
  // sessions answer its challenges at once (check), until one ends in time or a handshake succeeds.
  if (job.identity === 'agent')
    env.memory.stalledChallenges = result.slow ? connectionBound(seen.challenges, env) : undefined;
  // A 401 we can answer. If another request started a handshake meanwhile, join its queue (C1);
  // if the connection closed with it, the next one answers it.
  const now = session.state.kind;
  if (now === 'closed') job.challenges = seen.challenges;
  // R4: behind a handshake whose password may be held back, this 401 (held for it) waits with the
  // request: its answer then (afterWait), not a second bare send.
  if (now === 'handshaking' && seen.kept) job.heldForRecall = result.held;
  if (now === 'handshaking' || now === 'closed') return CHECK;
  if (seen.reauth) {
    // T4: an authenticated session re-authenticates once per request; R4: twice lost, it never held.
    job.reauthenticated = true;
    session.noteAuthenticationLost();
  }
  return answerStep(seen.challenges, seen.authId, seen.kept ? result.held : undefined);
}

/**
 * R4: a 401 kept for the refusal memory ({@link SendSeen.kept}) outgrew its bounds — a body over
 * limits.maxChallengeBodyBytes, or not ended within handshakeTimeout — so it cannot be held whole
 * until the handshake asks the memory. Paused instead (flow control: nothing more read or
 * buffered), and the memory is asked now, as the handshake would, bounded as its ask is
 * (queueTimeout, the caller's abort). Held back, or the recall given up at queueTimeout (the
 * password not sent, as the handshake's own ask would have had it, not after a second wait): that
 * 401 is the answer, streamed as it comes — the request (its body) sent once, as a held 401 is in
 * #admitted. Not: its leave is given back and the 401 cut, as a body past the bounds always was,
 * and all goes on as before; the handshake asks again (a second recall, on this rare path, rather
 * than a leave carried across steps that may wait behind another handshake, which would wait for it).
 */
async function recallOpen(run: Run, { seen, result, open }: Extract<Step, { kind: 'recall' }>): Promise<Step> {
  const { session, job, env } = run;
  const cut = (): Swallowed => {
    open.cut();
    const { open: _, ...rest } = result;
    return rest;
  };
  const proof = env.memory.proof;
  // (The scheme the handshake would run: a Transport challenge has no memory to ask, and for a
  // Kerberos ticket alone enter asks none.)
  const mechanism = env.mechanisms.choose(seen.challenges, run.excluded)?.mechanism;
  if (!mechanism) return afterSend(run, seen, cut());
  let admission: Admission;
  try {
    const entering = proof.enter(mechanism.usesPassword !== false, job, env.limits);
    // R1/R4: as Lead.start's: the others go on to the session meanwhile (Session.answeredWhileWaiting).
    if (entering instanceof Promise) session.answeredWhileWaiting();
    admission = await entering;
  } catch (err) {
    // Full, timed out or aborted (R1): nothing more is sent.
    cut();
    return failed(job, err as Error);
  }
  if (admission === 'refused' && !job.sink.aborted) {
    heldBackAnswer(job.origin, job.dispatchOptions.path, proof, open.headers, env.limits.queueTimeout);
    return end({ kind: 'done', done: session.deliverOpen(open) });
  }
  if (admission !== 'refused') proof.settle(admission, 'none');
  // (Aborted meanwhile, with no wait to hear it: the caller was told; nothing more goes.)
  if (job.sink.aborted) {
    cut();
    return end(DONE);
  }
  return afterSend(run, seen, cut());
}

/**
 * T3: the server refused the client certificate this session presents (a TLS alert saying so, or a
 * close, before any answer on its connection: {@link certificateRefusal}): {@link refuseCertificate}.
 */
function refusedCertificate(run: Run, error: Error): Step | undefined {
  if (!run.session.certified || run.session.answered) return undefined;
  const refusal = certificateRefusal(error);
  if (refusal === undefined) return undefined;
  return refuseCertificate(
    run,
    refusal === 'closed' ? { cause: error, closed: true } : { alert: refusal, cause: error },
  );
}

/**
 * The session's certificate was refused ({@link refusedCertificate}, {@link certificateAnswered}).
 * The session closes: undici would present it again on its next connection. One the selector
 * chose is the origin's no longer (a configured one stays: there is no other), and the selector is
 * asked again at once ({@link demand}): a certificate renewed, or of the server's new CA, takes the
 * request on, as .NET asks its selector on each new connection. Once per request, and only where
 * the request did not reach the server (an alert, nginx's page; after a close, one that may go
 * twice) and its body can go again; else it fails with {@link ClientCertificateRefusedError}.
 */
function refuseCertificate(
  { session, job, env }: Run,
  how: { readonly alert?: string; readonly answered?: string; readonly closed?: true; readonly cause: unknown },
): Step {
  session.apply({ type: 'closed' });
  // (Only a selector is told the server's acceptable CAs: askAcceptableIssuers says the caller gave one.)
  const chosen = env.askAcceptableIssuers === true;
  const certificate = session.certificate!;
  log.agent(
    '%s job %d: the server refused the client certificate (%s)',
    job.origin,
    job.id,
    how.alert ?? how.answered ?? 'closed',
  );
  const refusal = certificateRefused(job.origin, env.memory, certificate, chosen, how);
  if (asksSelectorAgain(chosen, how.closed === true, mayGoTwice(job), () => rerunWithNewCredentials(job)))
    return { kind: 'demand', error: refusal, refused: certificate };
  return failed(job, refusal);
}

/**
 * T3: whether a 400 to this request may be the server's answer about a client certificate that the
 * agent could act on: its own request to an https origin, with a certificate or selector to give,
 * on a session presenting one (its refusal), or on one without while a certificate may still be
 * chosen. Without a certificate to give, the 400 is the caller's as it came (as curl shows it).
 */
function mayAnswerCertificate({ session, job, env, excluded }: Run): boolean {
  return (
    job.identity === 'agent' &&
    !job.noAuth &&
    env.selectCertificate !== undefined &&
    (session.certified || !excluded?.has(TRANSPORT)) &&
    job.origin.startsWith('https:')
  );
}

/**
 * T3: a 400 held as possibly nginx's answer about the client certificate. None was sent: handled
 * as a server that refuses the TLS handshake without one ({@link demand}: the probe confirms, the
 * selector is asked, the request moves to a session presenting it). The one sent was refused: as
 * {@link refusedCertificate}. Any other 400 is the caller's, as it came.
 */
function certificateAnswered(run: Run, result: Extract<LegResult, { kind: 'swallowed' }>): Step {
  const { session, job, env } = run;
  const held = result.held;
  // (Cut: only as slow, as a page of nginx's length was held only within limits.maxChallengeBodyBytes.)
  if (!held) return failed(job, pageLate(env, "400 (nginx's page about a client certificate, by its head)"));
  const answer = certificateAnswer(held);
  const cause = () => new Error(`the server answered ${answer!.words}`);
  if (answer?.said === 'missing' && !session.certified)
    return { kind: 'demand', error: cause(), held, answered: answer.words };
  if (answer?.said === 'refused' && session.certified)
    return refuseCertificate(run, { answered: answer.words, cause: cause() });
  if (job.identity === 'agent') env.memory.unchallenged = true;
  session.deliverHeld(job, held);
  return end(DONE);
}

/** T3: a page held as possibly about the client certificate (`page`: its status and why) was cut or late. */
function pageLate(env: Run['env'], page: string): HandshakeTimeoutError {
  return new HandshakeTimeoutError(
    env.limits.handshakeTimeout,
    'Transport',
    `the body of the server's ${page} did not arrive in time`,
  );
}

/**
 * T3: whether a 403 to this request may be a server's refusal for want of TLS 1.3 post-handshake
 * authentication that the caller should hear of as such: the agent's own request on a TLS 1.3
 * connection, the agent having a certificate or selector for the origin (without one, the 403 is
 * the caller's as it came, as a 400 of nginx's is).
 */
function mayAskAfterHandshake({ session, job, env }: Run): boolean {
  return job.identity === 'agent' && !job.noAuth && env.selectCertificate !== undefined && session.tls13;
}

/**
 * T3: a 403 held as possibly Apache's refusal for want of post-handshake authentication: when its
 * page says so, {@link ClientCertificateAfterHandshakeError} (the certificate the agent has cannot
 * reach that path over TLS 1.3 from Node); any other 403 is the caller's, as it came.
 */
function postHandshakeAnswered(run: Run, result: Extract<LegResult, { kind: 'swallowed' }>): Step {
  const { session, job, env } = run;
  const held = result.held;
  if (!held) return failed(job, pageLate(env, '403 (a page about a client certificate, by its head)'));
  const answered = postHandshakeAnswer(held);
  if (answered) {
    log.agent('%s job %d: the server asked for a client certificate after the TLS 1.3 handshake', job.origin, job.id);
    return failed(job, new ClientCertificateAfterHandshakeError(job.origin, answered));
  }
  session.deliverHeld(job, held);
  return end(DONE);
}

/**
 * T3: whether the failure of a bare send may be the server refusing the TLS handshake for want of a
 * client certificate, and the agent may answer that: the agent's own request (S1, S5: trusted, no
 * credentials of the caller's; as the Transport challenge is answered), to an https origin, on a
 * connection that answered nothing and presented no certificate (one that did was refused for
 * other reasons, and a second is not asked for).
 */
function demandedCertificate({ session, job, env, excluded }: Run, error: Error): boolean {
  return demandsCertificate(error, {
    agentsOwn: job.identity === 'agent' && !job.noAuth,
    origin: job.origin,
    probes: env.certificateRequest !== undefined,
    certified: session.certified,
    answered: session.answered,
    transportDone: excluded?.has(TRANSPORT) === true,
    mayGoTwice: mayGoTwice(job),
  });
}

/**
 * T3: the server renegotiated this session's TLS 1.2 connection, which presented no certificate,
 * that renegotiation did not complete, and the request failed unanswered: the server asked for a client certificate after
 * the handshake, for this path only (Apache's per-directory `SSLVerifyClient`: a renegotiation,
 * then handshake_failure and a close; IIS's folder setting alike) — handled as a certificate
 * demand ({@link demand}, no probe: the agent's own handshake is never asked). Whatever the
 * request's method: the server asks before it runs the request. The agent's own request to an
 * https origin (S1, S5, as {@link demandedCertificate}), Transport not declined already.
 */
function renegotiationDemanded({ session, job, excluded }: Run): boolean {
  return (
    session.renegotiationFailed &&
    !session.certified &&
    job.identity === 'agent' &&
    !job.noAuth &&
    excluded?.has(TRANSPORT) !== true &&
    job.origin.startsWith('https:')
  );
}

/**
 * T3: the server refused the connection as one that requires a client certificate does. The probe
 * confirms it asks for one, the selector is asked (once for the requests refused meanwhile: they
 * share the answer), and on a certificate the request moves to a new session presenting it, as
 * after a Transport challenge. Not confirmed: the request gets its error. No certificate:
 * {@link ClientCertificateRequiredError}, with the TLS error as its cause.
 */
async function demand(run: Run, step: Extract<Step, { kind: 'demand' }>): Promise<Step> {
  const { session, job, env } = run;
  const chosen = env.memory.clientCertificate;
  let outcome: CertificateDemand;
  try {
    // Chosen meanwhile, for another request: this session's connection was made before.
    outcome = chosen ? { kind: 'chosen', certificate: chosen } : await sharedDemand(run, step.renegotiated === true);
  } catch (err) {
    return failed(job, ownCopy(err as Error));
  }
  // Asked again after a refusal: another certificate takes the request on, else the refusal stands.
  const next = step.refused && afterRefusal(outcome, step.refused, step.error, env.memory);
  if (next instanceof Error) return failed(job, next);
  switch (outcome.kind) {
    case 'unconfirmed':
      if (step.held) {
        session.deliverHeld(job, step.held);
        return end(DONE);
      }
      return failed(job, step.error);
    case 'declined':
      exclude(run, TRANSPORT);
      return failed(
        job,
        new ClientCertificateRequiredError(
          job.origin,
          env.selectCertificate !== undefined,
          outcome.issuers,
          { cause: step.error },
          step.renegotiated
            ? `it asked for one after the TLS handshake, for this path only, renegotiating the connection (a per-directory SSLVerifyClient, an IIS folder's client certificates), and closed it when none came; one given is presented on that renegotiation`
            : step.answered && `it answered ${step.answered} without one`,
          step.renegotiated === true,
        ),
      );
    case 'chosen':
      // The refused session serves nothing: its connection never came up, or the server ended it.
      session.apply({ type: 'closed' });
      return end({ kind: 'relocate', reason: 'client-certificate' });
  }
}

/**
 * The origin's answer to the certificate demand (T3), asked once for the requests refused meanwhile;
 * `renegotiated`: one made after the handshake ({@link renegotiationDemanded}), which no probe confirms.
 */
function sharedDemand({ job, env }: Run, renegotiated: boolean): Promise<CertificateDemand> {
  const memory = env.memory;
  const pending = memory.certificateDemand;
  if (pending) return pending;
  log.agent('%s job %d: the connection failed as one that wants a client certificate: asking', job.origin, job.id);
  // The selector decides for the origin the caller named (the name behind undici's dns interceptor, S1).
  const asking = (
    renegotiated
      ? answerRenegotiationDemand(env.selectCertificate, job.site, env.limits.handshakeTimeout, env.destroyed)
      : answerCertificateDemand(
          env.selectCertificate,
          job.site,
          env.limits.handshakeTimeout,
          env.certificateRequest!,
          env.destroyed,
        )
  ).then((o) => {
    // Chosen: the origin's sessions present it from now on (before any request moves there).
    if (o.kind === 'chosen') memory.clientCertificate ??= o.certificate;
    return o;
  });
  memory.certificateDemand = asking;
  // Settled: the next refused connection asks again (a selector that declined may choose later).
  const clear = () => {
    if (memory.certificateDemand === asking) memory.certificateDemand = undefined;
  };
  asking.then(clear, clear);
  return asking;
}

async function answer(run: Run, step: Extract<Step, { kind: 'answer' }>): Promise<Step> {
  const { session, job, env } = run;
  // Credentials replaced since this request found schemes unusable (a selector's wait): tried with the new ones (R4).
  renewFindings(run, env.mechanisms);
  const chosen = env.mechanisms.choose(step.challenges, run.excluded);
  if (!chosen) {
    // Every offered scheme we have proved unusable here: say why (deliver401: show the 401 itself,
    // kept from its bare send); or, when none of them is (a certificate selector declined the only
    // one), send the request again as it is and show the 401.
    if (offersUnusable(env.mechanisms, step.challenges, run))
      return job.held401 ? deliverHeld(run, job.held401) : failed(job, ownCopy(run.lastUnusable!));
    job.noAuth = true;
    return CHECK;
  }
  if (!chosen.mechanism) {
    // T3: present a client certificate, on a new session (HTTP/2 cannot renegotiate).
    let certificate: ClientCertificate | undefined;
    try {
      if (env.selectCertificate) {
        const ms = env.limits.handshakeTimeout;
        certificate = await selectCertificate(
          env.selectCertificate,
          job.site,
          chosen.challenge,
          ms,
          env.askAcceptableIssuers ? env.certificateRequest : undefined,
          env.destroyed,
        );
      }
    } catch (err) {
      return failed(job, err as Error);
    }
    if (!certificate) {
      exclude(run, TRANSPORT);
      return step;
    }
    env.memory.clientCertificate = certificate;
    return end({ kind: 'relocate', reason: 'client-certificate' });
  }
  const mechanism = chosen.mechanism;
  // C5: a connection-only scheme (NTLM) authenticates the session even where requests did so one
  // by one — unless authentication was seen not to hold on this session (R4).
  // R4: where authentication does not hold, each request authenticates itself, blocking no one.
  const blocking =
    mechanism.multileg &&
    !session.authenticationFails &&
    (session.state.kind !== 'per-request' || mechanism.level === 'connection');
  // Another request started a blocking handshake here meanwhile (several proactive legs declined,
  // or a scheme found unusable, at once): join its queue (C1), as afterSend joins one; this 401's
  // challenges are answered after it only if the session is still not authenticated (its Auth-ID
  // is not: the server's context for it is another request's by then, C3).
  const state = session.state;
  if (blocking && state.kind === 'handshaking' && state.leader !== job.id) {
    job.challenges = step.challenges;
    return CHECK;
  }
  return {
    kind: 'lead',
    mechanism,
    challenge: chosen.challenge,
    offered: step.challenges,
    ...(step.authId !== undefined ? { authId: step.authId } : {}),
    ...(step.held ? { held: step.held } : {}),
    blocking,
  };
}

/**
 * Whether a first leg's bare 401 was the server's cap on incomplete contexts (other handshakes
 * hold the session's slots): the session lowers its cap and the origin remembers it for new
 * sessions. Bounded (R4): a refusal is run again only while other handshakes hold slots, and then
 * the cap falls to what they hold, so at most c handshakes are refused and run again at cap c
 * (c = maxConcurrentHandshakes, then each lower); one refused alone is shown its 401.
 */
function contextRefused({ session, env }: Run): boolean {
  const cap = session.contextRefused();
  if (cap === undefined) return false;
  env.memory.contextCap = Math.min(env.memory.contextCap ?? cap, cap);
  return true;
}

/** Failures of the leader itself, not of the handshake: the waiters take it over (R2). */
function leaderGaveUp(job: Job, error: Error | undefined): boolean {
  const code = (error as { code?: string } | undefined)?.code;
  return (
    job.sink.aborted ||
    error instanceof BodyNotReplayableError ||
    code === 'UND_ERR_HEADERS_TIMEOUT' ||
    code === 'MULTILEG_PROXY_RESPONSE_TIMEOUT' ||
    code === 'UND_ERR_BODY_TIMEOUT'
  );
}

type LeadStep = Extract<Step, { kind: 'lead' }>;

/** Runs the handshake of a `lead` step; resolves with the step after it. */
async function lead(run: Run, step: LeadStep): Promise<Step> {
  // S4/M4: under rejectUnauthorized: false a connection may prove no server, which Basic refuses:
  // it is made first where it can be (a direct one), so the leg knows (else it counts as unproved).
  const { session } = run;
  if (session.unverifiedTls === NOT_YET_CONNECTED && session.connectsEarly) await session.connectEarly();
  return new Promise((resolve) => new Lead(run, step, resolve).start());
}

/**
 * One handshake a request leads (the `lead` step), in one object: the handshake's input and host
 * (its legs go on the request's session, its slots are the session's) and what the mechanism may
 * know of the request (LegInfo) — rather than a closure for each of them. `done` gets the step
 * that follows the handshake.
 */
class Lead implements HandshakeInput, LegInfo {
  readonly mechanism: Mechanism;
  readonly challenge: Challenge | undefined;
  readonly authId: string | undefined;
  readonly sink: UserSink;
  readonly maxLegs: number;
  readonly timeout: number;
  readonly origin: string;
  readonly hostname: string;
  readonly port: number;
  readonly method: string;
  readonly path: string;
  readonly proxy = false;
  readonly opening: boolean;
  readonly #run: Run;
  readonly #step: LeadStep;
  readonly #done: (next: Step) => void;
  /** A nonce-based scheme (Digest) answered its 401 once more already (see #renewNonce). */
  #renewed = false;
  /** Leave to send the credentials here (CredentialProof), given back with the outcome. */
  #ticket: Ticket | undefined;

  constructor(run: Run, step: LeadStep, done: (next: Step) => void) {
    const { job, env } = run;
    this.#run = run;
    this.#step = step;
    this.#done = done;
    this.mechanism = step.mechanism;
    this.challenge = step.challenge;
    this.authId = step.authId;
    this.opening = step.opening === true;
    this.sink = job.sink;
    this.maxLegs = env.limits.maxLegs;
    this.timeout = env.limits.handshakeTimeout;
    // What the mechanism is told (the SPN's host, NTLM's target name, the caller's passwordAllowed):
    // the origin as the caller named it, behind undici's dns interceptor the name, not the address (S1).
    const { hostname, port } = hostAndPort(job.site);
    this.origin = job.site;
    this.hostname = hostname;
    this.port = port;
    this.method = job.dispatchOptions.method;
    this.path = job.dispatchOptions.path;
  }

  /** What the mechanism knows of the request: this object. */
  get leg(): LegInfo {
    return this;
  }

  /** Read late: a new session's first leg is sent before its connection knows its protocol. */
  get onHttp2(): boolean {
    return this.#run.session.protocol === 'h2';
  }

  /** Read late: a proactive first token is made before the connection (and its certificate) exists. */
  get channelBinding(): Buffer | undefined {
    return this.#run.session.connection?.channelBinding;
  }

  /** Read late, as the channel binding (S4/M4: Basic refuses a connection that proved no server). */
  get unverifiedTls(): string | undefined {
    return this.#run.session.unverifiedTls;
  }

  start(): void {
    const { session, job, env } = this.#run;
    const step = this.#step;
    if (step.blocking && !step.handedOver) {
      // Chosen a tick ago (the answer step awaits): another request may have started a blocking
      // handshake here since (requests released together, each answering its own 401), or the session
      // ended. Join that handshake's queue with this 401's challenges, as answer does (C1), or let
      // check send the request elsewhere.
      const state = session.state;
      if (state.kind === 'closed' || (state.kind === 'handshaking' && state.leader !== job.id)) {
        if (step.offered) job.challenges = step.offered;
        this.#done(CHECK);
        return;
      }
      session.apply({ type: 'handshake-start', scheme: step.mechanism.scheme, leader: job.id });
    }
    // Leave to send the credentials here: at once, after the handshake proving them (one at a time
    // until they are proved, so a wrong or changed password is not tried by a whole burst), or not
    // at all while they are refused.
    const admission = env.memory.proof.enter(this.mechanism.usesPassword !== false, job, env.limits);
    if (!(admission instanceof Promise)) {
      this.#admitted(admission);
      return;
    }
    // R1/R4: its 401, kept for the memory, came here and its leave waits: the others go on to the
    // session now, rather than wait for it past their own bound (Session.answeredWhileWaiting).
    if (step.held) session.answeredWhileWaiting();
    admission.then(
      (a) => this.#admitted(a),
      (err: Error) => {
        // Full, timed out or aborted (R1): nothing was sent; a waiter takes a blocking handshake over (R2).
        if (this.#leading()) session.handOver(job.id);
        this.#done(failed(job, err));
      },
    );
  }

  #admitted(admission: Admission): void {
    const { session, job, env } = this.#run;
    if (admission === 'refused') {
      // As when a refusal comes before any proof: this request and those queued behind it go without
      // the credentials and get the server's own answer (C7, R4).
      if (this.#leading()) session.apply({ type: 'handshake-failure', leader: job.id, withheld: true });
      // R4: the 401 that asked for them, held (the refusal memory held them back, or did not answer
      // within queueTimeout), is that answer: the request (its body) is sent once. (One too large or
      // slow to hold was asked about before: recallOpen.)
      const held = this.#step.held;
      if (held) {
        heldBackAnswer(job.origin, job.dispatchOptions.path, env.memory.proof, held.headers, env.limits.queueTimeout);
        session.deliverHeld(job, held);
        this.#done(end(DONE));
        return;
      }
      job.noAuth = true;
      this.#done(CHECK);
      return;
    }
    const ticket = admission;
    this.#ticket = ticket;
    runHandshake(
      this,
      (result) => {
        // What the handshake says of the credentials, before the release in #after lets waiting requests go on.
        const refused = result.kind === 'failed' && result.refused === true && result.opening === undefined;
        const carried = result.kind === 'failed' && result.noPassword ? 'refused-no-password' : 'refused';
        const unanswered = result.kind === 'failed' && result.passwordUnanswered === true;
        env.memory.proof.settle(
          ticket,
          result.kind === 'success' ? 'success' : refused ? carried : unanswered ? 'unanswered' : 'none',
        );
        this.#done(this.#after(result));
      },
      (err) => {
        // Only the wait for a handshake slot fails so (full, timed out, aborted): nothing was sent.
        // A blocking leader waits for a slot only behind per-request handshakes on its session (C5
        // on a per-request session), which no test stages; R1 proves the bounded slot wait itself.
        env.memory.proof.settle(ticket, 'none');
        if (this.#leading()) session.handOver(job.id);
        this.#done(failed(job, err));
      },
    );
  }

  send(
    extra: Record<string, string>,
    classify: (status: number, headers: ResponseHeaders) => Verdict,
    onResult: (r: LegResult) => void,
  ): void {
    const { session, job } = this.#run;
    // The handshake's clock bounds its legs, a challenge body's drain too.
    if (this.mechanism.multileg) {
      session.sendLeg(job, extra, classify, onResult, true);
      return;
    }
    session.sendLeg(
      job,
      extra,
      (status, headers) => (this.#renewNonce(status, headers) ? 'swallow' : classify(status, headers)),
      onResult,
      true,
    );
  }

  slot(): (() => void) | Promise<() => void> {
    return this.#run.session.handshakeSlot(this.#run.job);
  }

  /** The session's Auth-IDs in use (C3): its handshakes never carry one two at once. */
  get authIds(): AuthIdClaims {
    return this.#run.session.authIds;
  }

  noStream(): NoStream | undefined {
    return this.#run.session.noStream;
  }

  /** Per-request handshakes run side by side, up to the server's cap on incomplete contexts. */
  contextRefused(): boolean {
    return !this.#step.blocking && contextRefused(this.#run);
  }

  /**
   * The server refused this handshake's last leg, whose credentials the agent has replaced since it
   * was admitted (setCredentials, typically because the server's password was just rotated): the
   * request runs its handshake once more with the current ones instead of showing the refusal
   * (S6/R4). Not when it did so already, when its one-shot body cannot go again (C10: the refusal
   * is its answer, as before), or when the current credentials are refused here lately (R4: they
   * would not be sent). The new handshake takes leave of the proof like any other: one at a time
   * until the new credentials are proved, so a wrong new password is tried once per burst.
   */
  superseded(): boolean {
    const { job, env } = this.#run;
    const ticket = this.#ticket;
    if (!ticket) return false;
    const proof = env.memory.proof;
    if (!proof.rerunsAfterRefusal(ticket) || !rerunWithNewCredentials(job)) return false;
    log.agent('%s job %d: refused with replaced credentials: running again with the current ones', job.origin, job.id);
    return true;
  }

  #leading(): boolean {
    const state = this.#run.session.state;
    return this.#step.blocking && state.kind === 'handshaking' && state.leader === this.#run.job.id;
  }

  /**
   * A nonce-based one-leg scheme (Digest) answers a 401 once more when only its nonce was refused:
   * `stale=true` (RFC 7616 §3.3), or a fresh challenge after a proactive answer to a remembered nonce
   * (a server that forgot it without saying so, as Apache after a restart) — that one only while the
   * credentials stay proved: it may as well be the password's refusal.
   */
  #renewNonce(status: number, headers: ResponseHeaders): boolean {
    if (status !== 401 || this.#renewed) return false;
    const key = this.mechanism.scheme.toLowerCase();
    const next = readChallenges(headers).find((c) => c.schemeKey === key);
    if (next?.params.nonce === undefined) return false;
    if (next.params.stale?.toLowerCase() === 'true') this.#renewed = true;
    else if (this.challenge === undefined && this.#ticket)
      this.#renewed = this.#run.env.memory.proof.again(this.#ticket);
    return this.#renewed;
  }

  #report(
    result: Extract<HandshakeResult, { legs: number; authIdCarried: boolean }>,
    outcome: HandshakeReport['outcome'],
    identity?: string,
    failure?: HandshakeReport['failure'],
  ): void {
    // A first leg that never reached the server (no connection, TLS failed) is no handshake, and
    // no authentication failure (stats.failedHandshakes): nothing to report; the caller has the error.
    if (result.kind === 'failed' && result.unreached) return;
    const { session, job, env } = this.#run;
    const skipped = this.#run.negotiateSkipped && fallbackReasonOf(this.#run.negotiateSkipped);
    const fallbackReason =
      (result.kind === 'success' || result.kind === 'failed' ? result.fallbackReason : undefined) ??
      (skipped && `${skipped.code}: ${skipped.message}`);
    const spn = result.kind === 'success' || result.kind === 'failed' ? result.spn : undefined;
    // C3: a handshake ended because the server gave its Auth-ID to another one too says so (no value).
    const inUse = result.kind === 'failed' && result.error instanceof AuthIdInUseError ? result.error : undefined;
    env.report({
      ...(fallbackReason ? { fallbackReason } : {}),
      ...(spn ? { spn } : {}),
      ...(failure ? { failure } : {}),
      ...(inUse ? { failureReason: `${inUse.code}: ${inUse.message}` } : {}),
      origin: job.origin,
      sessionId: session.id,
      protocol: session.protocol,
      scheme: this.mechanism.scheme,
      legs: result.legs,
      outcome,
      authIdCarried: result.authIdCarried,
      ...(identity ? { identity } : {}),
    });
  }

  /** What the handshake's end means for the session, the origin and the request: the next step. */
  #after(result: HandshakeResult): Step {
    const run = this.#run;
    const { session, job, env } = run;
    const step = this.#step;
    const scheme = this.mechanism.scheme;
    // A handshake that sent a leg met its own answer: the 401 held from the bare send is not the
    // one to show any more (only a scheme that could not start leaves it the request's answer).
    if (result.kind !== 'unusable') job.held401 = undefined;
    switch (result.kind) {
      case 'success': {
        // H4: through a forward proxy that does not vouch for it, session auth counts as per-request;
        // R4: so does a session on which authentication was seen not to hold.
        // C5/H1: NTLM inside Negotiate binds an HTTP/1.1 connection as NTLM does; a server that keeps
        // the context on the connection (Apache mod_auth_gssapi) refuses another handshake on it.
        const bound =
          result.sessionAuthenticated || (result.connectionBound === true && session.protocol === 'http/1.1');
        const sessionAuthenticated = bound && session.trustsSessionAuth && !session.authenticationFails;
        // Remembered first: the release below lets the pool hand out room, by what the origin wants.
        if (this.mechanism.level === 'request' && !sessionAuthenticated) {
          // S1: a per-request scheme is remembered for the protection space it succeeded in; it does
          // not replace a scheme that authenticates the origin's sessions (an NTLM origin's Basic path).
          env.memory.rememberSpaces(scheme, protectionSpaces(job.origin, this.path, this.challenge));
          if (env.memory.mode !== 'session') env.memory.rememberScheme(scheme, 'per-request', result.legs);
        } else {
          env.memory.rememberScheme(scheme, sessionAuthenticated ? 'session' : 'per-request', result.legs);
        }
        const identity = result.identity ? { identity: result.identity } : {};
        if (this.#leading()) {
          session.apply({ type: 'handshake-success', leader: job.id, scheme, sessionAuthenticated, ...identity });
        } else if (sessionAuthenticated && (session.state.kind === 'per-request' || session.state.kind === 'fresh')) {
          session.apply({ type: 'server-authenticated', scheme, ...identity });
        }
        if (sessionAuthenticated && result.identity !== undefined) {
          env.identityProved(session, result.identity, scheme, this.#ticket!.admitted);
        }
        if (result.identity !== undefined) env.succeededAs?.(result.identity, scheme);
        this.#report(result, sessionAuthenticated ? 'session' : 'per-request', result.identity);
        return end({ kind: 'done', done: result.done });
      }
      case 'failed': {
        // R4: the mechanism waited out the deadline on its KDC (GSS-API), not on the server: the
        // requests behind it fail at once for a few seconds (KDC_RECHECK_MS) rather than each take
        // the handshake over (R2) and wait the same deadline on the same KDC in turn (review r43).
        const silentKdc = result.error instanceof HandshakeTimeoutError && kdcSilent(result.error);
        if (silentKdc) env.memory.markUnusable(scheme.toLowerCase(), result.error);
        if (result.proofFailed) {
          // The server failed mutual authentication: nothing more goes on this connection, and the
          // requests queued behind the leader fail with the same error (never a 200 from it).
          session.apply({ type: 'closed', failure: result.proofFailed });
        } else if (
          result.persistent &&
          // (A Negotiate that fell back to NTLM with the agent's password holds no ticket: review r66.)
          (result.unproved || (this.mechanism.holdsCredentials !== undefined && result.fallbackReason === undefined))
        ) {
          // The server says it holds the connection as someone the session does not record (unproved,
          // or a 5xx: review r59): where that identity may change outside the agent (a ccache switched
          // to bob: S6), no check could ever retire it. It carries nothing more; the caller's answer
          // ends as usual and the waiters go to another session (review r57). The agent's own
          // password (NTLM, proved but answered 5xx) keeps it: setCredentials retires it as any
          // session of the agent's, and a new connection per 5xx would cost a handshake each (r60).
          session.apply({ type: 'closed' });
        } else if (this.#leading()) {
          if (!silentKdc && leaderGaveUp(job, result.error)) session.handOver(job.id);
          // R2: only the server's own final 401 sends the waiters on without credentials; after any
          // other end (a reset stream, a bad token, a 500) they try again; a request that waited
          // MAX_WAITS times then goes bare (check).
          else session.apply({ type: 'handshake-failure', leader: job.id, ...(result.refused ? {} : { retry: true }) });
        }
        // H1/C8: a refused connection-bound context (NTLM, NTLM inside Negotiate) may stay on its
        // HTTP/1.1 connection, failed: Apache mod_auth_gssapi (GssapiConnectionBound) keeps it and
        // answers every later handshake there with a bare 401, so the right password (the domain
        // controller caught up, setCredentials) would never be tried while the connection lives.
        // It retires once the caller has this 401 (the waiters go bare elsewhere, C7); the next
        // handshake opens a new connection. (Not a refused opening: no context was made.)
        if (
          result.refused &&
          result.connectionBound &&
          !result.opening &&
          session.protocol === 'http/1.1' &&
          !session.closed
        ) {
          log.agent('%s job %d: refused connection-bound handshake: its connection retires', job.origin, job.id);
          session.apply({ type: 'closed' });
        }
        // A refusal of the opening leg refused no password (R4 leaves it uncounted, above): said so,
        // or a Kerberos-only server reads as a wrong password.
        this.#report(
          result,
          'failed',
          undefined,
          result.refused
            ? result.opening
              ? 'opening'
              : 'refused'
            : result.proofFailed || result.unproved
              ? 'proof'
              : 'error',
        );
        return end({ kind: 'done', done: result.done });
      }
      case 'relocate': {
        // This session cannot finish the handshake: close it, and its queue follows the leader (C8, H2).
        const http1 =
          result.reason === 'http1' || (session.state.kind === 'closed' && session.state.http1Required === true);
        session.apply({ type: 'closed', http1Required: http1 });
        // The 401 it was answering is answered again on the next connection, not met again bare.
        if (step.offered) job.challenges = step.offered;
        return end({ kind: 'relocate', reason: http1 ? 'http1' : 'connection-ended' });
      }
      case 'unanswered':
        // The server answered without authenticating (a public resource): nothing to record. The
        // waiters behind a blocking leader go bare once, side by side, rather than each leading a
        // handshake that blocks the rest; a 401 among them starts the handshake (C6).
        // An opening the server took no part in is not led again here: requests wait for a 401.
        if (step.opening) env.memory.openedInVain = true;
        if (this.#leading()) session.apply({ type: 'handshake-failure', leader: job.id, retry: true, bare: true });
        return end({ kind: 'done', done: result.done });
      case 'refused':
        if (result.offered) {
          // A refusal of replaced credentials (superseded): the refusal's challenges are answered
          // afresh, with the agent's current mechanisms (never this handshake's, which hold the old
          // ones), on this session or — retired by setCredentials — on a new one.
          if (this.#leading()) session.apply({ type: 'handshake-failure', leader: job.id, retry: true });
          return answerStep(result.offered, result.authId);
        }
        // Run again once a slot is free; the session now takes no more than the server allows.
        return step;
      case 'declined':
        // The remembered scheme is no longer offered: forget it, and answer what the server offers now.
        if (step.spaced) env.memory.forgetSpaces(scheme, this.path);
        else env.memory.forgetScheme();
        if (this.#leading()) session.apply({ type: 'handshake-failure', leader: job.id, retry: true });
        return answerStep(result.offered, result.authId);
      case 'unusable': {
        if (this.challenge === undefined && this.mechanism.level === 'request') {
          // T2: a per-request scheme's proactive leg that could not be made (Digest with no nonce of
          // this origin, only another's) says nothing of the server's challenge: the request goes
          // bare once and answers its 401, rather than the scheme being unusable here for a while.
          if (this.#leading()) session.apply({ type: 'handshake-failure', leader: job.id, retry: true });
          job.bare = true;
          return CHECK;
        }
        // R4: known for the origin at once, so the waiters released now do not each try it again.
        const schemeKey = scheme.toLowerCase();
        env.memory.markUnusable(schemeKey, result.error);
        if (this.#leading()) session.apply({ type: 'handshake-failure', leader: job.id, retry: true });
        unusable(run, schemeKey, result.error);
        // The next scheme answers the same 401, with its Auth-ID (C3), and it held (R4: `kept`).
        return step.offered ? answerStep(step.offered, step.authId, step.held) : CHECK;
      }
    }
  }
}
