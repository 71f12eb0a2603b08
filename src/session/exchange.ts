import { readAuthId, readChallenges } from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import { BodyNotReplayableError, MultilegError } from '../errors.ts';
import { type HandshakeResult, relocationReason, runHandshake } from '../handshake/handshake.ts';
import { log } from '../log.ts';
import { fallbackReasonOf } from '../mechanisms/negotiate/errors.ts';
import { type MechanismSet, TRANSPORT } from '../mechanisms/registry.ts';
import type { LegInfo, Mechanism } from '../mechanisms/types.ts';
import type { ClientCertificateSelector, Limits } from '../options.ts';
import { CleartextCredentialsError } from '../trust/policy.ts';
import type { Job } from './job.ts';
import type { OriginMemory } from './origin-memory.ts';
import type { Session, WaitOutcome } from './session.ts';
import { mustQueue } from './state.ts';

/** One finished handshake, as reported by the agent's `handshake` event and stats. */
export interface HandshakeReport {
  readonly origin: string;
  readonly sessionId: string;
  readonly protocol: 'h2' | 'http/1.1' | undefined;
  readonly scheme: string;
  readonly legs: number;
  /** `session`: the connection is authenticated; `per-request`: each request authenticates itself. */
  readonly outcome: 'session' | 'per-request' | 'failed';
  /** Whether a server Auth-ID was echoed on a later leg (C3). */
  readonly authIdCarried: boolean;
  readonly identity?: string;
  /**
   * Why Kerberos was skipped and NTLM used instead (inside Negotiate, or as the next offered scheme; M5),
   * e.g. `MULTILEG_KRB_TICKET_EXPIRED: the Kerberos ticket has expired`.
   */
  readonly fallbackReason?: string;
}

export interface ExchangeEnv {
  readonly memory: OriginMemory;
  readonly mechanisms: MechanismSet;
  readonly limits: Limits;
  /** Picks a client certificate for a Transport challenge (T3). */
  readonly selectCertificate?: ClientCertificateSelector;
  report(r: HandshakeReport): void;
}

export type RelocateReason = 'http1' | 'connection-ended' | 'misdirected' | 'client-certificate';
export type ExchangeOutcome =
  | { readonly kind: 'done'; readonly done: Promise<void> }
  | { readonly kind: 'relocate'; readonly reason: RelocateReason };

const DONE: ExchangeOutcome = { kind: 'done', done: Promise.resolve() };

function legInfo(job: Job, session: Session): LegInfo {
  const url = new URL(job.origin);
  return {
    origin: job.origin,
    hostname: url.hostname,
    port: Number(url.port || (url.protocol === 'https:' ? 443 : 80)),
    method: job.dispatchOptions.method,
    path: job.dispatchOptions.path,
    proxy: false,
    // Read late: a proactive first token is made before the connection (and its certificate) exists.
    get channelBinding() {
      return session.connection?.channelBinding;
    },
  };
}

/** How often one request may join a handshake queue after a 401 before it is shown that 401 (R4). */
export const MAX_WAITS = 3;

/**
 * The lifecycle of one request on one session, as an explicit state (the request's counterpart of
 * `state.ts`); `runOnSession` runs it to `end`:
 *
 *   check ──▶ wait ─(released/failed)─▶ check        check ──▶ lead (proactive) ──▶ end
 *     │         └──(lead: handed over, R2)──▶ lead      │
 *     └──▶ send ─(401 we can answer)─▶ answer ──▶ lead ──▶ end        any ──▶ end (done | relocate)
 *            └─(a handshake began meanwhile)─▶ check (C1)
 */
type Step =
  /** Look at the session: queue (C1), relocate, authenticate proactively, or send. */
  | { readonly kind: 'check' }
  /** Queued behind another request's handshake. */
  | { readonly kind: 'wait' }
  /** Send without credentials (C2, or the origin's first request). */
  | { readonly kind: 'send' }
  /** A 401 whose challenges we may answer: choose the scheme (T2, T3). */
  | { readonly kind: 'answer'; readonly challenges: readonly Challenge[]; readonly authId?: string }
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
    }
  | { readonly kind: 'end'; readonly outcome: ExchangeOutcome };

const CHECK: Step = { kind: 'check' };
const SEND: Step = { kind: 'send' };
const WAIT: Step = { kind: 'wait' };
const end = (outcome: ExchangeOutcome): Step => ({ kind: 'end', outcome });
const failed = (job: Job, err: Error): Step => {
  job.sink.fail(err);
  return end(DONE);
};

/** What one request carries through its lifecycle on one session. */
interface Run {
  readonly session: Session;
  readonly job: Job;
  readonly env: ExchangeEnv;
  /** Schemes that cannot run here (no ticket, package missing), lower-case (T2); made when needed. */
  excluded: Set<string> | undefined;
  /** Why the last excluded scheme could not run: the caller's error when nothing else is left. */
  lastUnusable: Error | undefined;
  /** M5: why Negotiate could not run here, for the report of the scheme that runs instead. */
  negotiateSkipped?: MultilegError;
}

/**
 * Carries one caller request on one session to its end: waits while another request's handshake
 * blocks the session (C1), sends without credentials on an authenticated session (C2), leads a
 * handshake when challenged, authenticates proactively where the origin is known to want it (C4),
 * or asks the pool to relocate it (connection ended, HTTP/1.1 required, 421).
 */
export async function runOnSession(session: Session, job: Job, env: ExchangeEnv): Promise<ExchangeOutcome> {
  const run: Run = { session, job, env, excluded: undefined, lastUnusable: undefined };
  // A session that already presents the certificate cannot answer Transport again.
  if (env.memory.clientCertificate) exclude(run, TRANSPORT);
  let step: Step = CHECK;
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
      case 'send':
        step = await send(run);
        break;
      case 'answer':
        step = await answer(run, step);
        break;
      case 'lead':
        step = await lead(run, step);
        break;
    }
  }
  return step.outcome;
}

function exclude(run: Run, scheme: string): void {
  run.excluded ??= new Set();
  run.excluded.add(scheme);
}

/** Excludes a scheme that proved unusable here and keeps why (T2, M5). */
function unusable(run: Run, scheme: string, error: Error): void {
  exclude(run, scheme);
  run.lastUnusable = error;
  if (scheme === 'negotiate' && error instanceof MultilegError) run.negotiateSkipped = error;
}

function mayAuthenticate({ job, env }: Run): boolean {
  return job.identity === 'agent' && !job.noAuth && !env.mechanisms.empty;
}

function check(run: Run): Step {
  const { session, env } = run;
  // What the origin proved unusable meanwhile (R4): not tried again by every waiting request.
  for (const [scheme, error] of env.memory.unusable()) {
    unusable(run, scheme, error);
  }
  const state = session.state;
  if (state.kind === 'closed') {
    if (state.failure) return failed(run.job, state.failure);
    return end({ kind: 'relocate', reason: state.http1Required ? 'http1' : 'connection-ended' });
  }
  if (mustQueue(state)) return WAIT;
  if (env.memory.requiresHttp1 && session.lane === 'auto' && session.protocol === 'h2') {
    return end({ kind: 'relocate', reason: 'http1' });
  }
  // Proactive: the origin is known to want a scheme (per-request: every request; session: the leader).
  if (mayAuthenticate(run) && state.kind !== 'authenticated') {
    const scheme = state.kind === 'per-request' ? state.scheme : env.memory.scheme;
    const mechanism = scheme ? env.mechanisms.get(scheme) : undefined;
    const perRequest = state.kind === 'per-request' || env.memory.mode === 'per-request';
    // M5: a channel-bound first token needs the connection's certificate, which a new session lacks.
    const unbound = mechanism?.bindsFirstToken && !session.connection && run.job.origin.startsWith('https:');
    if (
      mechanism &&
      !unbound &&
      !run.excluded?.has(mechanism.scheme.toLowerCase()) &&
      (!perRequest || mechanism.proactive)
    ) {
      return { kind: 'lead', mechanism, challenge: undefined, blocking: !perRequest && mechanism.multileg };
    }
  }
  return SEND;
}

function afterWait(run: Run, outcome: WaitOutcome): Step {
  const { session, job, env } = run;
  job.waits += 1;
  if (outcome === 'failed') job.noAuth = true;
  if (outcome !== 'lead') return CHECK;
  // R2: the leader gave up for its own reasons and this request takes its handshake over.
  const state = session.state;
  const mechanism = state.kind === 'handshaking' ? env.mechanisms.get(state.scheme) : undefined;
  if (!mechanism) return CHECK;
  return { kind: 'lead', mechanism, challenge: undefined, blocking: true, handedOver: true };
}

async function send(run: Run): Promise<Step> {
  const { session, job, env } = run;
  const may = mayAuthenticate(run);
  const reauth = session.state.kind === 'authenticated';
  let challenges: Challenge[] = [];
  let authId: string | undefined;
  let misdirected = false;
  let cleartextRefused = false;
  let unusable = false;
  const result = await session.send(job, {}, (status, headers) => {
    // R4: a request that keeps meeting 401s after waiting is shown the 401 (no endless re-queueing).
    if (status === 401 && may && !(reauth && job.reauthenticated) && job.waits < MAX_WAITS) {
      const offered = readChallenges(headers);
      if (env.mechanisms.choose(offered, run.excluded)) {
        challenges = offered;
        const reading = readAuthId(headers);
        if (reading?.ok) authId = reading.value;
        return 'swallow';
      }
      // Only schemes already proved unusable here are offered: the caller gets why (R4, T2).
      if (run.lastUnusable && env.mechanisms.choose(offered)) {
        unusable = true;
        return 'swallow';
      }
    }
    if (status === 401 && job.withheld !== undefined && env.mechanisms.choose(readChallenges(headers))) {
      log.agent('%s job %d: 401 not answered: %s', job.origin, job.id, job.withheld);
      // S4: a challenge over cleartext is refused with a typed error, not shown as a bare 401.
      if (job.withheld === 'cleartext') {
        cleartextRefused = true;
        return 'swallow';
      }
    }
    // C9: a 421 means this connection does not serve the origin; retry on a fresh one.
    if (status === 421 && job.relocations < 2) {
      misdirected = true;
      return 'swallow';
    }
    return 'deliver';
  });
  if (result.kind === 'failed') {
    const reason = relocationReason(result.error);
    // A stale replay after the session ended: it goes where the session's end says.
    if (reason === 'connection-ended' && session.state.kind === 'closed' && session.state.http1Required) {
      return end({ kind: 'relocate', reason: 'http1' });
    }
    if (reason) return end({ kind: 'relocate', reason });
    return failed(job, result.error);
  }
  if (result.kind === 'delivered') return end({ kind: 'done', done: result.done });
  if (cleartextRefused) return failed(job, new CleartextCredentialsError(job.origin));
  if (unusable && run.lastUnusable) return failed(job, run.lastUnusable);
  if (misdirected) return end({ kind: 'relocate', reason: 'misdirected' });
  // A 401 we can answer. If another request started a handshake meanwhile, join its queue (C1).
  const now = session.state.kind;
  if (now === 'handshaking' || now === 'closed') return CHECK;
  if (reauth) {
    // T4: an authenticated session re-authenticates once per request; R4: twice lost, it never held.
    job.reauthenticated = true;
    session.noteAuthenticationLost();
  }
  return { kind: 'answer', challenges, ...(authId !== undefined ? { authId } : {}) };
}

async function answer(run: Run, step: Extract<Step, { kind: 'answer' }>): Promise<Step> {
  const { session, job, env } = run;
  const chosen = env.mechanisms.choose(step.challenges, run.excluded);
  if (!chosen) {
    // Every offered scheme we have proved unusable here: say why; or, when nothing said why
    // (a certificate selector declined), send the request again as it is and show the 401.
    if (run.lastUnusable) return failed(job, run.lastUnusable);
    job.noAuth = true;
    return CHECK;
  }
  if (!chosen.mechanism) {
    // T3: present a client certificate, on a new session (HTTP/2 cannot renegotiate).
    const certificate = await env.selectCertificate?.(job.origin, chosen.challenge);
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
  return {
    kind: 'lead',
    mechanism,
    challenge: chosen.challenge,
    offered: step.challenges,
    ...(step.authId !== undefined ? { authId: step.authId } : {}),
    blocking,
  };
}

/** Failures of the leader itself, not of the handshake: the waiters take it over (R2). */
function leaderGaveUp(job: Job, error: Error | undefined): boolean {
  const code = (error as { code?: string } | undefined)?.code;
  return (
    job.sink.aborted ||
    error instanceof BodyNotReplayableError ||
    code === 'UND_ERR_HEADERS_TIMEOUT' ||
    code === 'UND_ERR_BODY_TIMEOUT'
  );
}

async function lead(run: Run, step: Extract<Step, { kind: 'lead' }>): Promise<Step> {
  const { session, job, env } = run;
  const { mechanism, challenge, blocking } = step;
  const scheme = mechanism.scheme;
  if (blocking && !step.handedOver) session.apply({ type: 'handshake-start', scheme, leader: job.id });
  const leading = () => blocking && session.state.kind === 'handshaking' && session.state.leader === job.id;
  // A nonce-based one-leg scheme (Digest) answers a 401 once more when only its nonce was refused:
  // `stale=true` (RFC 7616 §3.3), or a fresh challenge after a proactive answer to a remembered nonce.
  const schemeKey = scheme.toLowerCase();
  let renewed = false;
  const renewNonce = (status: number, headers: Parameters<typeof readChallenges>[0]): boolean => {
    if (status !== 401 || renewed || mechanism.multileg) return false;
    const next = readChallenges(headers).find((c) => c.schemeKey === schemeKey);
    if (next?.params.nonce === undefined) return false;
    renewed = next.params.stale?.toLowerCase() === 'true' || challenge === undefined;
    return renewed;
  };
  let result: HandshakeResult;
  try {
    result = await session.withHandshakeSlot(job, () =>
      runHandshake({
        mechanism,
        challenge,
        ...(step.authId !== undefined ? { authId: step.authId } : {}),
        leg: legInfo(job, session),
        send: (extra, classify) =>
          session.send(job, extra, (status, headers) =>
            renewNonce(status, headers) ? 'swallow' : classify(status, headers),
          ),
        sink: job.sink,
        maxLegs: env.limits.maxLegs,
        timeout: env.limits.handshakeTimeout,
        onHttp2: session.protocol === 'h2',
      }),
    );
  } catch (err) {
    // Only the wait for a handshake slot throws (full, timed out, aborted): nothing was sent.
    if (leading()) session.handOver(job.id);
    return failed(job, err as Error);
  }
  const skipped = run.negotiateSkipped && fallbackReasonOf(run.negotiateSkipped);
  const fallbackReason =
    (result.kind === 'success' || result.kind === 'failed' ? result.fallbackReason : undefined) ??
    (skipped && `${skipped.code}: ${skipped.message}`);
  const report = (outcome: HandshakeReport['outcome'], legs: number, authIdCarried: boolean, identity?: string) =>
    env.report({
      ...(fallbackReason ? { fallbackReason } : {}),
      origin: job.origin,
      sessionId: session.id,
      protocol: session.protocol,
      scheme,
      legs,
      outcome,
      authIdCarried,
      ...(identity ? { identity } : {}),
    });
  switch (result.kind) {
    case 'success': {
      // H4: through a forward proxy that does not vouch for it, session auth counts as per-request;
      // R4: so does a session on which authentication was seen not to hold.
      const sessionAuthenticated =
        result.sessionAuthenticated && session.trustsSessionAuth && !session.authenticationFails;
      if (leading()) {
        session.apply({
          type: 'handshake-success',
          leader: job.id,
          scheme,
          sessionAuthenticated,
          ...(result.identity ? { identity: result.identity } : {}),
        });
      }
      env.memory.rememberScheme(scheme, sessionAuthenticated ? 'session' : 'per-request');
      report(sessionAuthenticated ? 'session' : 'per-request', result.legs, result.authIdCarried, result.identity);
      return end({ kind: 'done', done: result.done });
    }
    case 'failed':
      if (result.proofFailed) {
        // The server failed mutual authentication: nothing more goes on this connection, and the
        // requests queued behind the leader fail with the same error (never a 200 from it).
        session.apply({ type: 'closed', failure: result.proofFailed });
      } else if (leading()) {
        if (leaderGaveUp(job, result.error)) session.handOver(job.id);
        else session.apply({ type: 'handshake-failure', leader: job.id });
      }
      report('failed', result.legs, result.authIdCarried);
      return end({ kind: 'done', done: result.done });
    case 'relocate': {
      // This session cannot finish the handshake: close it, and its queue follows the leader (C8, H2).
      const http1 =
        result.reason === 'http1' || (session.state.kind === 'closed' && session.state.http1Required === true);
      session.apply({ type: 'closed', http1Required: http1 });
      return end({ kind: 'relocate', reason: http1 ? 'http1' : 'connection-ended' });
    }
    case 'declined':
      // The remembered scheme is no longer offered: forget it, and answer what the server offers now.
      env.memory.forgetScheme();
      if (leading()) session.apply({ type: 'handshake-failure', leader: job.id, retry: true });
      return { kind: 'answer', challenges: result.offered };
    case 'unusable':
      // R4: known for the origin at once, so the waiters released now do not each try it again.
      env.memory.markUnusable(schemeKey, result.error);
      if (leading()) session.apply({ type: 'handshake-failure', leader: job.id, retry: true });
      unusable(run, schemeKey, result.error);
      return step.offered ? { kind: 'answer', challenges: step.offered } : CHECK;
  }
}
