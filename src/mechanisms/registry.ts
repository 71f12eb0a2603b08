import { chooseChallenge } from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import { MultilegError } from '../errors.ts';
import type { Mechanism, MechanismContext } from './types.ts';

/**
 * Errors of a mechanism that cannot make its first token here — no addon, Kerberos with no usable
 * ticket, realm, SPN, KDC, clock, keytab or credentials cache, or only another user's ticket (M5) — where the next offered scheme may still
 * authenticate. Every path that chooses a scheme (origin, upgrade, proxy) falls back on exactly these.
 */
const CANNOT_RUN: ReadonlySet<string> = new Set([
  'MULTILEG_MECHANISM_UNAVAILABLE',
  'MULTILEG_KRB_NO_TICKET',
  'MULTILEG_KRB_TICKET_EXPIRED',
  'MULTILEG_KRB_WRONG_REALM',
  'MULTILEG_KRB_UNKNOWN_SPN',
  'MULTILEG_KRB_KDC_UNREACHABLE',
  'MULTILEG_KRB_CLOCK_SKEW',
  'MULTILEG_KRB_KEYTAB',
  'MULTILEG_KRB_CCACHE',
  'MULTILEG_KRB_OTHER_PRINCIPAL',
]);

/** Whether `err` says the mechanism cannot run here, and the next offered scheme should be tried. */
export const cannotRunHere = (err: unknown): err is MultilegError =>
  err instanceof MultilegError && CANNOT_RUN.has(err.code);

/**
 * Whether a handshake of `mechanism` through `context` sent something derived from a password
 * (R4: only a refused password's wait doubles): as the context says (Negotiate: false only for a
 * Kerberos ticket and no NTLM), else as the mechanism declares — a password unless it says not.
 */
export const sentPassword = (
  mechanism: Pick<Mechanism, 'usesPassword'>,
  context: Pick<MechanismContext, 'sentPassword'> | undefined,
): boolean => context?.sentPassword ?? mechanism.usesPassword !== false;

/**
 * Whether a handshake that has sent `legs` legs is still at the opening of a multi-leg handshake
 * (an NTLM NEGOTIATE): a 401 (407) to it refuses no credential, for none went (R4).
 */
export const atOpening = (
  mechanism: Pick<Mechanism, 'multileg'>,
  context: Pick<MechanismContext, 'firstLegCompletes'>,
  legs: number,
): boolean => legs === 1 && mechanism.multileg && !context.firstLegCompletes;

/**
 * Whether the last leg of a handshake that has sent `legs` legs carried the password, or what derives
 * from it (R4: a server that never answered it may have counted it as a try): not the opening of a
 * multi-leg handshake ({@link atOpening}), and {@link sentPassword}. Requests' and upgrades'.
 */
export const carriesPassword = (
  mechanism: Pick<Mechanism, 'multileg' | 'usesPassword'>,
  context: Pick<MechanismContext, 'firstLegCompletes' | 'sentPassword'>,
  legs: number,
): boolean => !atOpening(mechanism, context, legs) && sentPassword(mechanism, context);

/**
 * What the server's (a proxy's) challenge for a running handshake's scheme asks of it, one rule for
 * origins, proxies and upgrades: `next-leg`, a token to answer; `run-again`, the refusal (an SPNEGO
 * reject) of credentials the mechanism has renewed since (Negotiate: a ticket sealed with a key the
 * server no longer has, now dropped from the cache), so the handshake runs once more from its first
 * leg with the new ones instead of delivering the refusal — the mechanism says so once (R4: a
 * context made after the renewal never does); `refused`, the final refusal (no token, a reject).
 * Asks `context.rejects`, which may drop the refused ticket: read once per answer.
 */
export function challengeAsks(
  context: Pick<MechanismContext, 'complete' | 'rejects' | 'renewed'>,
  challenge: Challenge | undefined,
): 'next-leg' | 'run-again' | 'refused' {
  if (challenge?.token68 === undefined) return 'refused';
  if (!context.complete && !context.rejects?.(challenge)) return 'next-leg';
  return context.renewed === true ? 'run-again' : 'refused';
}

/**
 * Whether `sole` (the one mechanism allowed, {@link MechanismSet.sole}) may lead its handshake before
 * any challenge, as curl --ntlm and --proxy-ntlm do: only NTLM, whose NEGOTIATE carries no password
 * (a server or proxy that wants no NTLM learns nothing from it, R4).
 */
export const opensUnasked = (sole: Mechanism | undefined): sole is Mechanism =>
  sole !== undefined && sole.scheme.toLowerCase() === 'ntlm' && sole.multileg;

/** The scheme key of the TLS list message's client-certificate challenge (T3). */
export const TRANSPORT = 'transport';

/** The scheme key (lower-case) of one `Authorization` / `Proxy-Authorization` value: its first word. */
export const credentialScheme = (value: string): string => /^[ \t]*([^ \t,]*)/.exec(value)![1]!.toLowerCase();

/**
 * Schemes whose credentials authenticate the one request that carries them (the IANA HTTP
 * Authentication Scheme Registry but Negotiate, and AWS's signatures), lower-case: a caller's own
 * `Authorization` of any other scheme may leave the connection authenticated (S6, bindsConnection).
 */
export const PER_REQUEST_SCHEMES: ReadonlySet<string> = new Set([
  'basic',
  'bearer',
  'concealed',
  'digest',
  'dpop',
  'gnap',
  'hoba',
  'mutual',
  'oauth',
  'privatetoken',
  'scram-sha-1',
  'scram-sha-256',
  'vapid',
  'aws4-hmac-sha256',
]);

/**
 * The mechanisms an agent can use, and the order it prefers them in (T2). `transport`: the agent
 * can answer `Transport` challenges (a client certificate), which no Mechanism carries.
 */
export class MechanismSet {
  readonly #byScheme = new Map<string, Mechanism>();
  readonly #order: readonly string[];
  readonly #transport: boolean;
  /**
   * The one mechanism the agent may use, when `order` leaves it exactly one and no client
   * certificate (`schemes: ['NTLM']`, the CLI's --ntlm): an unknown origin cannot want another.
   */
  readonly sole: Mechanism | undefined;

  constructor(mechanisms: readonly Mechanism[], order: readonly string[], transport = false) {
    for (const m of mechanisms) this.#byScheme.set(m.scheme.toLowerCase(), m);
    this.#order = order;
    this.#transport = transport;
    const usable = new Set(order.map((s) => s.toLowerCase()).filter((k) => this.#byScheme.has(k)));
    const [only] = usable;
    this.sole = usable.size === 1 && !transport && only !== undefined ? this.#byScheme.get(only) : undefined;
  }

  get(scheme: string): Mechanism | undefined {
    return this.#byScheme.get(scheme.toLowerCase());
  }

  get empty(): boolean {
    return this.#byScheme.size === 0 && !this.#transport;
  }

  /**
   * Whether a caller's own `Authorization` (one value or several) may authenticate the connection it
   * goes on, not only its request (S6): its scheme's mechanism here says so (NTLM `connection`,
   * Negotiate `either`: NTLM inside it, or a server that keeps a Kerberos login on the connection),
   * or, without one, its scheme is not one of {@link PER_REQUEST_SCHEMES}. When in doubt, bound: it
   * costs a new connection, where a wrong guess would serve another caller as this one.
   */
  bindsConnection(authorization: string | readonly string[] | undefined): boolean {
    if (authorization === undefined) return false;
    for (const value of typeof authorization === 'string' ? [authorization] : authorization) {
      const key = credentialScheme(value);
      const level = this.#byScheme.get(key)?.level;
      if (level === undefined ? !PER_REQUEST_SCHEMES.has(key) : level !== 'request') return true;
    }
    return false;
  }

  /**
   * Whether a mechanism is configured for a scheme the order allows, `excluded` ones (lower-case)
   * left out: whether another offer could still be answered.
   */
  anyBut(excluded: ReadonlySet<string>): boolean {
    return this.#order.some((s) => {
      const key = s.toLowerCase();
      return this.#byScheme.has(key) && !excluded.has(key);
    });
  }

  /**
   * The strongest offered challenge we can answer, skipping `excluded` schemes (lower-case). For
   * `Transport` there is no mechanism: the caller presents a client certificate instead.
   */
  choose(
    challenges: readonly Challenge[],
    excluded: ReadonlySet<string> = new Set(),
  ): { challenge: Challenge; mechanism: Mechanism | undefined } | undefined {
    const available = [...this.#byScheme.keys(), ...(this.#transport ? [TRANSPORT] : [])].filter(
      (k) => !excluded.has(k),
    );
    // Only the TLS client-certificate mode of Transport is defined; another mode is not ours to answer.
    const answerable = challenges.filter(
      (c) => c.schemeKey !== TRANSPORT || c.params.mode?.toLowerCase() === 'tls-client-certificate',
    );
    const challenge = chooseChallenge(answerable, available, this.#order);
    if (!challenge) return undefined;
    if (challenge.schemeKey === TRANSPORT) return { challenge, mechanism: undefined };
    const mechanism = this.#byScheme.get(challenge.schemeKey);
    return mechanism ? { challenge, mechanism } : undefined;
  }
}
