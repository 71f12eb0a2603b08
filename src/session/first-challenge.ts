/**
 * The rules a request (exchange.ts) and an upgrade (upgrade/index.ts) share for a 401 met without
 * credentials, and for the schemes that cannot run at the origin: one decision, two callers. Pure
 * or nearly (a diagnostics publication); no session, no connection.
 */
import { readChallenges } from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import { publishUnanswered, publishWithheld } from '../diagnostics.ts';
import { MultilegError } from '../errors.ts';
import type { ResponseHeaders } from '../handshake/leg.ts';
import { log } from '../log.ts';
import { type MechanismSet, TRANSPORT } from '../mechanisms/registry.ts';
import type { WithheldReason } from '../trust/policy.ts';
import type { CredentialProof, HeldBackWhy } from './credential-proof.ts';
import { kdcSilent } from './origin-memory.ts';

/**
 * What one request or upgrade found of the schemes that cannot run here (T2, R4): its own findings
 * and the origin's memory of them, read in. Fields made when first needed.
 */
export interface SchemeFindings {
  /** Schemes not to answer (cannot run here, Transport declined or already presented), lower-case. */
  excluded: Set<string> | undefined;
  /** Why the last scheme found unusable could not run: the caller's error when nothing else is left. */
  lastUnusable: Error | undefined;
  /** Why each scheme excluded as unusable could not run (lower-case keys): deliver401 publishes it. */
  unusableWhy?: Map<string, Error>;
  /** M5: why Negotiate could not run here, for the report of the scheme that runs instead. */
  negotiateSkipped?: MultilegError;
  /** The agent's mechanisms (its credentials) when these were found: see {@link renewFindings}. */
  foundWith?: MechanismSet;
}

/**
 * R4: `found` as of the agent's `mechanisms` now. Found with credentials replaced since
 * (setCredentials), what could not run (another user's Kerberos name, no ticket for it) says
 * nothing of the new ones: forgotten, as the origin's memory forgets it (credentialsChanged), and
 * tried with them; a Transport challenge declined or answered stays so. Returns whether it forgot.
 * Requests' and upgrades', before they choose from `found`.
 */
export function renewFindings(found: SchemeFindings, mechanisms: MechanismSet): boolean {
  const was = found.foundWith;
  found.foundWith = mechanisms;
  if (was === undefined || was === mechanisms) return false;
  for (const scheme of found.unusableWhy?.keys() ?? []) found.excluded?.delete(scheme);
  found.unusableWhy?.clear();
  found.lastUnusable = undefined;
  found.negotiateSkipped = undefined;
  return true;
}

/** Leaves `scheme` (lower-case) out of what `found` answers. */
export function exclude(found: SchemeFindings, scheme: string): void {
  found.excluded ??= new Set();
  found.excluded.add(scheme);
}

/** Excludes a scheme that proved unusable here and keeps why (T2, M5). */
export function unusable(found: SchemeFindings, scheme: string, error: Error): void {
  // What this request found itself stays its reason: the origin's memory, read again, says "remembered".
  if (found.unusableWhy?.has(scheme)) return;
  exclude(found, scheme);
  found.unusableWhy ??= new Map();
  found.unusableWhy.set(scheme, error);
  found.lastUnusable = error;
  if (scheme === 'negotiate' && error instanceof MultilegError) found.negotiateSkipped = error;
}

/** Schemes excluded to ask whether a mechanism of the agent's is offered (Transport has none). */
const NO_TRANSPORT: ReadonlySet<string> = new Set([TRANSPORT]);

/**
 * Nothing left answers `offered` (none chosen past `found.excluded`): whether that is because a
 * scheme of the agent's it offers cannot run here (T2, R4: the caller gets why, `found.lastUnusable`,
 * or with deliver401 the 401 told why), rather than because it offers none, or only a Transport
 * challenge declined or presented already (the caller's 401 as it came). Requests' and upgrades'.
 */
export function offersUnusable(
  mechanisms: MechanismSet,
  offered: readonly Challenge[],
  found: SchemeFindings,
): boolean {
  return found.lastUnusable !== undefined && mechanisms.choose(offered, NO_TRANSPORT)?.mechanism !== undefined;
}

/**
 * What a 401 to a send without the agent's credentials, which they may answer, asks of the agent
 * (T2, T3, R4), `found` what cannot run here: `answer`, a scheme of the agent's (or Transport, T3)
 * answers it; `hold`, the same, the 401 kept in full in case it turns out the caller's — with
 * `deliver401` (its scheme may fail to start), and for a Transport challenge where `sentOnce` (an
 * upgrade: it goes no second time when the selector declines); `unusable`, it offers only schemes
 * found unusable here: the caller gets why; `tell`, the same with `deliver401`: the 401 is the
 * caller's, told why (the caller publishes it); undefined, nothing of the agent's is offered.
 */
export function firstChallenge(
  mechanisms: MechanismSet,
  offered: readonly Challenge[],
  found: SchemeFindings,
  deliver401: boolean,
  sentOnce: boolean,
): 'answer' | 'hold' | 'unusable' | 'tell' | undefined {
  const chosen = mechanisms.choose(offered, found.excluded);
  if (chosen) return deliver401 || (sentOnce && chosen.mechanism === undefined) ? 'hold' : 'answer';
  if (offersUnusable(mechanisms, offered, found)) return deliver401 ? 'tell' : 'unusable';
  return undefined;
}

/**
 * S1, S4, S5, R4: a 401 offering a scheme of the agent's, met where its credentials are kept from
 * it (`reason`; `refused-lately`: refused here lately, held back `heldBackFor` ms more;
 * `recall-timeout`: the refusal memory did not answer within `queueTimeout` ms), is the caller's,
 * said why on `multileg:withheld` — the caller could not tell it from a refusal of what it sent.
 * Over cleartext (S4) it is refused with CleartextCredentialsError instead: true (nothing
 * published). Requests' and upgrades'.
 */
export function withheld401(
  origin: string,
  path: string,
  headers: ResponseHeaders,
  reason: WithheldReason | 'refused-lately' | 'recall-timeout',
  heldBackFor?: number,
  queueTimeout?: number,
): boolean {
  if (reason === 'cleartext') return true;
  publishWithheld(() => ({
    origin,
    path,
    reason,
    ...(heldBackFor !== undefined ? { heldBackFor } : {}),
    ...(queueTimeout !== undefined ? { queueTimeout } : {}),
    schemes: readChallenges(headers).map((c) => c.scheme),
    time: Date.now(),
  }));
  return false;
}

/**
 * R4: leave to send the password here was refused (CredentialProof.enter said `'refused'`) where a
 * 401 met without it was kept for that (CredentialProof.mayRecall: the refusal memory might hold
 * the password back): that 401 is the caller's answer — rather than sending the request (its body)
 * again bare for another 401 to show — said why on `multileg:withheld` (`why`, as decided:
 * CredentialProof.heldBackWhy): `refused-lately`, the password held back; `recall-timeout`, the memory's
 * recall given up at limits.queueTimeout (R1: when in doubt none is sent; it refused nothing, and
 * the caller's fix is to wait for it or raise the bound, as the proxy's error says).
 * Requests' and upgrades'.
 */
export function heldBackAnswer(
  origin: string,
  path: string,
  proof: CredentialProof,
  headers: ResponseHeaders,
  queueTimeout: number,
  why: HeldBackWhy = proof.heldBackWhy,
): void {
  // (The path stays out of the log: a query may carry a secret.)
  if (why === 'recall-timeout') {
    log.agent(
      '%s: 401 not answered: the refusal memory did not answer within %d ms (limits.queueTimeout); that 401 is the answer',
      origin,
      queueTimeout,
    );
    withheld401(origin, path, headers, 'recall-timeout', undefined, queueTimeout);
    return;
  }
  // (How long it is held back now: 0 when lifted since.)
  const heldBackFor = proof.refusedFor;
  log.agent(
    '%s: 401 not answered: the password is held back %d ms more (refused or left unanswered here lately); that 401 is the answer',
    origin,
    heldBackFor,
  );
  withheld401(origin, path, headers, 'refused-lately', heldBackFor);
}

/**
 * `deliver401`: publishes why the 401 in `headers` for `origin` + `path` goes to the caller: the
 * offered schemes of `unusableWhy` (by scheme key: why each cannot run here). Requests' and upgrades'.
 */
export function publishUnanswered401(
  origin: string,
  path: string,
  headers: ResponseHeaders,
  unusableWhy: ReadonlyMap<string, Error> | undefined,
): void {
  publishUnanswered(() => {
    const offered = readChallenges(headers);
    const byKey = new Map(offered.map((c) => [c.schemeKey, c.scheme]));
    return {
      origin,
      path,
      schemes: offered.map((c) => c.scheme),
      unusable: [...(unusableWhy ?? [])]
        .filter(([key]) => byKey.has(key))
        .map(([key, err]) => ({
          scheme: byKey.get(key)!,
          code: err instanceof MultilegError ? err.code : err.name,
          message: err.message,
          // The KDC's silence, not the server's word: a retry once it answers may authenticate.
          ...(kdcSilent(err) ? { kdcSilent: true as const } : {}),
        })),
      time: Date.now(),
    };
  });
}
