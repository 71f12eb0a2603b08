import { readChallenges } from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import { MultilegError } from '../errors.ts';
import { type HandshakeResult, relocationReason, runHandshake } from '../handshake/handshake.ts';
import { fallbackReasonOf } from '../mechanisms/negotiate/errors.ts';
import { type MechanismSet, TRANSPORT } from '../mechanisms/registry.ts';
import type { LegInfo, Mechanism } from '../mechanisms/types.ts';
import type { ClientCertificateSelector, Limits } from '../options.ts';
import type { Job } from './job.ts';
import type { OriginMemory } from './origin-memory.ts';
import type { Session } from './session.ts';
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

/**
 * Carries one caller request on one session to its end: waits while another request's handshake
 * blocks the session (C1), sends without credentials on an authenticated session (C2), leads a
 * handshake when challenged, authenticates proactively where the origin is known to want it (C4),
 * or asks the pool to relocate it (connection ended, HTTP/1.1 required, 421).
 */
export async function runOnSession(session: Session, job: Job, env: ExchangeEnv): Promise<ExchangeOutcome> {
  // Schemes that cannot run here (no ticket, package missing), and why the last one could not (T2).
  const excluded = new Set<string>();
  let lastUnusable: Error | undefined;
  // M5: why Negotiate could not run here, for the report of the scheme that ran instead.
  let negotiateSkipped: string | undefined;
  const skipped = (mechanism: Mechanism, error: Error) => {
    lastUnusable = error;
    excluded.add(mechanism.scheme.toLowerCase());
    if (mechanism.scheme === 'Negotiate' && error instanceof MultilegError) {
      const r = fallbackReasonOf(error);
      negotiateSkipped = `${r.code}: ${r.message}`;
    }
  };
  // A session that already presents the certificate cannot answer Transport again.
  if (env.memory.clientCertificate) excluded.add(TRANSPORT);
  for (;;) {
    const state = session.state;
    if (state.kind === 'closed')
      return { kind: 'relocate', reason: state.http1Required ? 'http1' : 'connection-ended' };
    if (mustQueue(state)) {
      try {
        if ((await session.waitForHandshake(job)) === 'failed') job.noAuth = true;
      } catch (err) {
        job.sink.fail(err as Error);
        return DONE;
      }
      continue;
    }
    if (env.memory.requiresHttp1 && session.lane === 'auto' && session.protocol === 'h2') {
      return { kind: 'relocate', reason: 'http1' };
    }
    const mayAuthenticate = !job.callerAuthorization && !job.noAuth && !env.mechanisms.empty;

    // Proactive: the origin is known to want a scheme (per-request: every request; session: the leader).
    if (mayAuthenticate && state.kind !== 'authenticated') {
      const scheme = state.kind === 'per-request' ? state.scheme : env.memory.scheme;
      const mechanism = scheme ? env.mechanisms.get(scheme) : undefined;
      const perRequest = state.kind === 'per-request' || env.memory.mode === 'per-request';
      // M5: a channel-bound first token needs the connection's certificate, which a new session lacks.
      const unbound = mechanism?.bindsFirstToken && !session.connection && job.origin.startsWith('https:');
      if (
        mechanism &&
        !unbound &&
        !excluded.has(mechanism.scheme.toLowerCase()) &&
        (!perRequest || mechanism.proactive)
      ) {
        const outcome = await lead(session, job, env, mechanism, undefined, !perRequest && mechanism.multileg);
        if (outcome.kind !== 'unusable') return outcome;
        skipped(mechanism, outcome.error);
        continue;
      }
    }

    let challenges: Challenge[] = [];
    let misdirected = false;
    const reauth = state.kind === 'authenticated';
    const result = await session.send(job, {}, (status, headers) => {
      if (status === 401 && mayAuthenticate && !(reauth && job.reauthenticated)) {
        const offered = readChallenges(headers);
        if (env.mechanisms.choose(offered, excluded)) {
          challenges = offered;
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
        return { kind: 'relocate', reason: 'http1' };
      }
      if (reason) return { kind: 'relocate', reason };
      job.sink.fail(result.error);
      return DONE;
    }
    if (result.kind === 'delivered') return { kind: 'done', done: result.done };
    if (misdirected) return { kind: 'relocate', reason: 'misdirected' };
    // A 401 we can answer. If another request started a handshake meanwhile, join its queue (C1).
    const now = session.state;
    if (now.kind === 'handshaking' || now.kind === 'closed') continue;
    if (reauth) job.reauthenticated = true; // T4: an authenticated session re-authenticates once
    for (;;) {
      const chosen = env.mechanisms.choose(challenges, excluded);
      if (!chosen) {
        // Every offered scheme we have proved unusable here: say why; or, when nothing said why
        // (a certificate selector declined), send the request again as it is and show the 401.
        if (lastUnusable) {
          job.sink.fail(lastUnusable);
          return DONE;
        }
        job.noAuth = true;
        break;
      }
      if (!chosen.mechanism) {
        // T3: present a client certificate, on a new session (HTTP/2 cannot renegotiate).
        const certificate = await env.selectCertificate?.(job.origin, chosen.challenge);
        if (!certificate) {
          excluded.add(TRANSPORT);
          continue;
        }
        env.memory.clientCertificate = certificate;
        return { kind: 'relocate', reason: 'client-certificate' };
      }
      const blocking = chosen.mechanism.multileg && now.kind !== 'per-request';
      const outcome = await lead(session, job, env, chosen.mechanism, chosen.challenge, blocking, negotiateSkipped);
      if (outcome.kind !== 'unusable') return outcome;
      skipped(chosen.mechanism, outcome.error);
    }
  }
}

async function lead(
  session: Session,
  job: Job,
  env: ExchangeEnv,
  mechanism: Mechanism,
  challenge: Challenge | undefined,
  blocking: boolean,
  negotiateSkipped?: string,
): Promise<ExchangeOutcome | { readonly kind: 'unusable'; readonly error: Error }> {
  const scheme = mechanism.scheme;
  if (blocking) session.apply({ type: 'handshake-start', scheme, leader: job.id });
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
  const result: HandshakeResult = await session.withHandshakeSlot(() =>
    runHandshake({
      mechanism,
      challenge,
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
  const fallbackReason =
    (result.kind === 'success' || result.kind === 'failed' ? result.fallbackReason : undefined) ?? negotiateSkipped;
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
      // H4: through a forward proxy that does not vouch for it, session auth counts as per-request.
      const sessionAuthenticated = result.sessionAuthenticated && session.trustsSessionAuth;
      if (blocking && session.state.kind === 'handshaking') {
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
      return { kind: 'done', done: result.done };
    }
    case 'failed':
      if (blocking && session.state.kind === 'handshaking')
        session.apply({ type: 'handshake-failure', leader: job.id });
      report('failed', result.legs, result.authIdCarried);
      return { kind: 'done', done: result.done };
    case 'relocate': {
      // This session cannot finish the handshake: close it, and its queue follows the leader (C8, H2).
      const http1 =
        result.reason === 'http1' || (session.state.kind === 'closed' && session.state.http1Required === true);
      session.apply({ type: 'closed', http1Required: http1 });
      return { kind: 'relocate', reason: http1 ? 'http1' : 'connection-ended' };
    }
    case 'unusable':
      if (blocking && session.state.kind === 'handshaking') {
        session.apply({ type: 'handshake-failure', leader: job.id, retry: true });
      }
      return result;
  }
}
