/**
 * Authentication to a proxy (H5): answers 407 `Proxy-Authenticate` challenges with the proxy's own
 * mechanisms — the same {@link Mechanism} interface as origins, with `leg.proxy = true` — choosing the
 * strongest offered scheme. One instance per proxy connection: connection-bound schemes (NTLM,
 * Negotiate) authenticate that connection; Basic goes on every request.
 */
import { readAuthenticationInfo, readChallenges } from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import { InvalidTokenError, LegLimitError, MultilegError, MutualAuthError } from '../errors.ts';
import { proofRequired } from '../handshake/handshake.ts';
import { log } from '../log.ts';
import {
  fallbackReasonOf,
  KerberosError,
  KerberosOtherPrincipalError,
  ticketFixes,
  withoutGssDetail,
} from '../mechanisms/negotiate/errors.ts';
import {
  atOpening,
  cannotRunHere,
  carriesPassword,
  challengeAsks,
  opensUnasked,
  sentPassword,
} from '../mechanisms/registry.ts';
import type { Holder, LegInfo, Mechanism, MechanismContext } from '../mechanisms/types.ts';
import { type Ticket, UNUSABLE_MEMORY_MS } from '../session/credential-proof.ts';
import { unusableUntil } from '../session/origin-memory.ts';
import { ProxyAuthenticationError } from './errors.ts';
import type { ResolvedProxy } from './options.ts';

type Headers = Record<string, string | string[] | undefined>;

/** A `Proxy-Authorization` value, and (made for one request after a success) the context that made it. */
export interface ProxyCredentials {
  /** Never logged. */
  readonly value: string;
  /** A per-request scheme's own context: the proxy's answer goes to {@link ProxyAuth.verify}. */
  readonly own?: MechanismContext;
}

/**
 * Who the proxy holds a connection as ({@link Holder}), and the place of the leave to send the
 * credentials that its handshake ran under ({@link Ticket.admitted}): the pool orders the proxy's
 * proofs by it, as the origin's (S6).
 */
export interface AdmittedHolder extends Holder {
  readonly admitted: number;
}

/**
 * One finished handshake with a proxy (H5): its legs and how it ended, no secret. The session
 * layer reports it as it reports an origin's (`HandshakeReport` with `proxy: true`, on the session
 * whose connection it ran on).
 */
export interface ProxyHandshake {
  /** The proxy, as `http://host:port` (no userinfo). */
  readonly origin: string;
  /** The protocol of the connection to the proxy it ran on (a CONNECT's is always HTTP/1.1). */
  readonly protocol: 'h2' | 'http/1.1' | undefined;
  readonly scheme: string;
  /** Legs sent with credentials, those of a run from its first leg again (a restart on a new connection, a run-again) included. */
  readonly legs: number;
  /**
   * `session`: a connection-bound scheme (NTLM, Negotiate) authenticated the connection;
   * `per-request`: a per-request scheme (Basic, Digest) was taken, after a 407 or carried by a
   * request on its own (one each, as an origin's); `failed`: it ended without authenticating.
   */
  readonly outcome: 'session' | 'per-request' | 'failed';
  /** Who the proxy took the credentials for, where the mechanism says it. */
  readonly identity?: string;
  /**
   * A failed handshake's cause: `refused`, the proxy's final 407 refused the credentials;
   * `opening`, its final 407 came to the opening leg (an NTLM NEGOTIATE), before any password;
   * `proof`, its final token failed mutual authentication (Digest's rspauth); `error`, it ended
   * otherwise (a timeout, a lost connection, another status).
   */
  readonly failure?: 'refused' | 'opening' | 'proof' | 'error';
  /** Negotiate: the service principal name the Kerberos ticket was asked for (`HTTP@proxyhost`). */
  readonly spn?: string;
  /**
   * Why Kerberos was skipped (M5): for NTLM inside Negotiate, and for another scheme the proxy
   * offered that answered because Negotiate could not run here (`CODE: cause`, as an origin's).
   */
  readonly fallbackReason?: string;
  /** A failed handshake's error, where one ended it: `CODE: message` ({@link failureReason}; no secret, S2). */
  readonly failureReason?: string;
}

/** The longest message a {@link ProxyHandshake.failureReason} keeps: a line of `-v`, not a page. */
const MAX_REASON_CHARS = 240;

/**
 * What ended a failed handshake, for its report: the error's code and message (errors never carry
 * secrets, S2), the message cut at {@link MAX_REASON_CHARS}.
 */
export function failureReason(err: unknown): string {
  const e = err as { code?: unknown; name?: unknown; message?: unknown };
  const code = typeof e?.code === 'string' ? e.code : typeof e?.name === 'string' ? e.name : 'Error';
  const message = typeof e?.message === 'string' ? e.message : String(err);
  return `${code}: ${message.length > MAX_REASON_CHARS ? `${message.slice(0, MAX_REASON_CHARS - 1)}…` : message}`;
}

/**
 * How {@link ProxyAuth.answer} fell through after the proxy's answer to a scheme's first leg could
 * not be read (T2): `next`, it answered with the next scheme this 407 offers; `bare`, it answered
 * nothing, this 407 offering no other the agent may use, so the request goes again bare
 * ({@link ProxyAuth.header} gives nothing), whose 407 offers all the proxy's schemes — on a new
 * connection: the proxy may hold this one's handshake half-way (Squid closes it after its next
 * 407, saying keep-alive).
 */
export type FellThrough = 'next' | 'bare';

/** Told of each finished handshake with the proxy (the caller adds the connection's protocol). */
export type ProxyHandshakeListener = (handshake: Omit<ProxyHandshake, 'protocol'>) => void;

/** What a handshake's end by `err` says of it ({@link ProxyHandshake.failure}). */
export function proxyFailure(err: unknown): 'refused' | 'proof' | 'error' {
  if (err instanceof ProxyAuthenticationError && err.refused) return 'refused';
  return err instanceof MutualAuthError ? 'proof' : 'error';
}

/** The scheme names a 407's challenges offer, each once, in order. */
export function offeredSchemes(challenges: readonly Challenge[]): string[] {
  return [...new Set(challenges.map((c) => c.scheme))];
}

/** What a mechanism learns about a leg to the proxy: the proxy's host (SPN `HTTP@proxyhost`), no channel binding. */
export function proxyLeg(proxy: ResolvedProxy, method: string, path: string): LegInfo {
  return { origin: proxy.origin, hostname: proxy.hostname, port: proxy.port, method, path, proxy: true };
}

/**
 * The proxy's final 407 to `scheme`'s credentials. `kerberosSkipped`: why Kerberos could not run
 * (`CODE: cause`) — for another scheme, why it answered instead of Negotiate; for Negotiate itself,
 * that its context carried the password as NTLM inside it (`proxy.negotiate.ntlmFallback`).
 */
export function rejected(
  proxy: ResolvedProxy,
  scheme: string | undefined,
  offered: readonly string[],
  refused = true,
  kerberosSkipped?: string,
): ProxyAuthenticationError {
  // What went: a ticket with Negotiate (a proxy's Negotiate has no NTLM fallback unless asked), else the password.
  const ticket = `the Kerberos ticket for HTTP@${proxy.hostname}`;
  const password = `${proxy.credentialsFrom} (user, domain, password)`;
  const negotiate = scheme?.toLowerCase() === 'negotiate';
  // Negotiate carried the password, as NTLM inside it: the password is what to check, not a ticket;
  // or its opening (the NTLM NEGOTIATE, no password in it) was refused: the proxy wants Kerberos.
  if (negotiate && kerberosSkipped)
    return new ProxyAuthenticationError(
      proxy.origin,
      refused
        ? `the proxy rejected the password, sent as NTLM inside Negotiate (Kerberos was skipped: ${kerberosSkipped}); check ${password}`
        : `the proxy refused the NTLM opening inside Negotiate, before any password was sent (Kerberos was skipped: ${kerberosSkipped}): it takes Kerberos only; check ${ticket}`,
      offered,
      refused,
    );
  const check = scheme === undefined ? `${password} or ${ticket}` : negotiate ? ticket : password;
  // The scheme answered only because Negotiate could not run: why, or the caller asks why not Kerberos.
  const skipped = kerberosSkipped ? ` (Negotiate was not used: ${kerberosSkipped})` : '';
  return new ProxyAuthenticationError(
    proxy.origin,
    `the proxy rejected the ${scheme ? `${scheme} ` : ''}credentials${skipped}; check ${check}`,
    offered,
    refused,
  );
}

/**
 * The fix when proxy credentials were given and every offered scheme still could not run: not to
 * give them again, but a ticket for a Negotiate proxy (its Negotiate has no NTLM fallback), or a
 * scheme the password answers.
 */
function withCredentials(
  unusable: Iterable<{ readonly scheme: string; readonly error: MultilegError }>,
  from: string,
  /** The schemes the proxy's 407 offered. */
  offered: readonly string[],
): string {
  const list = [...unusable];
  const schemes = list.map((u) => u.scheme);
  const where = from.replace(/^the user:password in /, '');
  // The ticket at hand is another user's than the credentials name (S6): nothing went, and it is
  // not that the proxy refused it. The two ways out: that user's ticket, or this one on purpose.
  const other = list.find((u) => u.error instanceof KerberosOtherPrincipalError)?.error as
    | KerberosOtherPrincipalError
    | undefined;
  if (other)
    return `the password in ${where} cannot answer ${schemes.join(', ')} (it sends a Kerberos ticket, and none is made from a password), and ${other.ticket}'s ticket is not used for ${other.user}: kinit as ${other.user}, or give no ${where} to go as ${other.ticket}`;
  // A ticket is the fix where there was none (or it expired); an unknown SPN, a KDC out of reach or
  // a skewed clock are named in the reason before this, and a ticket does not mend them.
  const ticket = list.some((u) => ticketFixes(u.error.code));
  // Allowing other schemes helps only where the proxy offers one that did not run: where its
  // Kerberos was all it offered, "check proxy.schemes" named what was given (--proxy-negotiate).
  const tried = new Set(schemes.map((s) => s.toLowerCase()));
  const others =
    offered.some((s) => !tried.has(s.toLowerCase())) || !list.every((u) => u.error instanceof KerberosError);
  const fix = [ticket ? 'get a Kerberos ticket for the proxy' : '', others ? 'check proxy.schemes' : '']
    .filter(Boolean)
    .join(', or ');
  return `the password in ${where} cannot answer ${schemes.join(', ')}: ${fix || 'mend what it says'}`;
}

/**
 * Whether every scheme in `unusable` failed on a Kerberos problem a ticket does not mend (an unknown
 * SPN, a KDC out of reach, a skewed clock): its reason names the fix, and "give a Kerberos ticket"
 * would send a user who has one to kinit for nothing.
 */
function kerberosNamesItsFix(unusable: Iterable<{ readonly error: MultilegError }>): boolean {
  return [...unusable].every((u) => u.error instanceof KerberosError && !ticketFixes(u.error.code));
}

/**
 * The fix when the proxy's challenge of `unreadable` schemes could not be read (T2): not the
 * credentials, but another scheme, of those it offers (`others`) where it named some. (The command
 * names its flags for them: cli/explain.ts.)
 */
function unreadableFix(unreadable: readonly string[], others: readonly string[]): string {
  const which = others.length ? `another scheme it offers (${others.join(', ')})` : 'another scheme it accepts';
  return `the proxy's ${unreadable.join(' and ')} challenge could not be read, so ${
    unreadable.length > 1 ? 'those are' : 'that scheme is'
  } not used with it for ${UNUSABLE_MEMORY_MS / 1000} s: allow ${which} in proxy.schemes`;
}

/** Why a scheme could not run here, in one line: its error's message (GSS-API's detail left out) and code. */
const whyUnusable = (u: { readonly error: MultilegError }): string =>
  `${withoutGssDetail(u.error.message)} (${u.error.code})`;

/** A running handshake's parts, which each of its legs carries on. */
interface Run {
  readonly mechanism: Mechanism;
  readonly context: MechanismContext;
  /** Legs sent (tokens made) so far: none before its first; bounded by maxLegs. */
  readonly legs: number;
  /**
   * Legs of this handshake sent in all, those of its runs from the first leg again included (a
   * restart on a new connection, a run-again): what its report counts ({@link ProxyHandshake.legs}).
   */
  readonly sent: number;
  /**
   * The 407's challenge its first leg answered, which a run from its first leg again answers;
   * undefined: it began unasked ({@link ProxyAuth.open}), and so begins again.
   */
  readonly first: Challenge | undefined;
  /**
   * The schemes that 407 offered (none for an opening): the proxy's others, which the error names
   * should this one's answer turn out unreadable and the 407 to it offer only this one (T2).
   */
  readonly offered: readonly string[];
}

/**
 * One proxy connection's authentication, an explicit state (as a session's, src/session/state.ts);
 * `kind` is {@link ProxyAuth.state}, but for `fresh`, which callers see as `'idle'` too.
 *
 *   fresh ──open──▶ handshaking ──answer (next leg)──▶ handshaking ──succeeded──▶ done
 *   fresh ──adopt──▶ done (adopted)
 *   fresh, idle, done ──answer (a new handshake)──▶ idle ──its first leg──▶ handshaking
 *   handshaking, done ──giveUp, notNeeded, a refusal, past maxLegs──▶ idle
 *   handshaking ──abandon, moved──▶ idle
 *   handshaking ──its first leg's answer unreadable (T2)──▶ idle ──the next scheme's first leg──▶ handshaking
 *                                                              (or idle, the request going again bare)
 *
 * A handshake is reported (H5, the constructor's `onHandshake`) as it leaves `handshaking`, so
 * once: for `done` when its final token is checked, else as failed — but for an opening the proxy
 * let through or took no part in, and a leg that moved to another connection, which end unreported.
 */
type AuthState =
  /** Nothing has run on the connection (or its opening was not made): it may open, or adopt. */
  | { readonly kind: 'fresh' }
  /**
   * No handshake runs and none stands: the last was given up, refused or failed, or found not
   * needed, or a new one's first token is being made. Its mechanism is still the connection's: it
   * is what {@link ProxyAuth.scheme}, {@link ProxyAuth.refusal} and {@link ProxyAuth.replaced} speak of.
   */
  | { readonly kind: 'idle'; readonly mechanism: Mechanism; readonly context?: MechanismContext }
  /** A handshake runs: `pending` is the token its next request carries. */
  | ({ readonly kind: 'handshaking'; readonly pending: string } & Run)
  /**
   * The last handshake succeeded. `adopted`: its per-request scheme was taken up from another
   * connection ({@link ProxyAuth.adopt}), not answered here, until the proxy judges what it sent.
   */
  | {
      readonly kind: 'done';
      readonly mechanism: Mechanism;
      readonly context?: MechanismContext;
      readonly adopted: boolean;
    };

/**
 * How the proxy's final answer (not a 407) ended a handshake ({@link ProxyAuth.succeeded}): `success`;
 * `unproved`, delivered without the final token the mechanism wants (M2); `error`, a 5xx, which says
 * nothing of the credentials whatever proof came with it (as an origin's, handshake.ts). `retire`:
 * the proxy may hold the connection as an identity nothing here records and no check could retire
 * (S6), so it takes nothing more.
 */
export interface ProxyHandshakeEnd {
  readonly outcome: 'success' | 'unproved' | 'error';
  readonly retire: boolean;
}

/** How a handshake ended, for its report: a failure's cause, or the identity a success proved. */
interface Report {
  readonly failure?: ProxyHandshake['failure'];
  readonly identity?: string;
  /** The error that ended it (see {@link failureReason}). */
  readonly error?: unknown;
}

/** What a handshake's end (given up, refused, failed, not needed) leaves: the connection's mechanism stays. */
const ended = (state: AuthState): AuthState =>
  state.kind === 'fresh' ? state : { kind: 'idle', mechanism: state.mechanism, context: state.context };

export class ProxyAuth {
  readonly #proxy: ResolvedProxy;
  readonly #maxLegs: number;
  #state: AuthState = { kind: 'fresh' };
  // Beside the state, what outlives any one handshake on this connection: a scheme found unusable
  // stays excluded (with why) for every later one; a lost connection restarts a handshake once in
  // all, not once per run; the proxy holds the connection as the last success's identity through
  // idle and new handshakes, until another succeeds.
  readonly #excluded = new Set<string>();
  /** Why each excluded scheme cannot run here (by scheme key): the reason a 407 went unanswered. */
  readonly #unusable = new Map<string, { readonly scheme: string; readonly error: MultilegError }>();
  #restarted = false;
  #holder: AdmittedHolder | undefined;
  /** The proxy refused a connection-bound handshake here past its opening (see {@link refusedBound}). */
  #refusedBound = false;
  readonly #onHandshake: ProxyHandshakeListener | undefined;
  /** The connection ended for good ({@link end}): why. No handshake runs on it any more. */
  #over: Error | undefined;
  /**
   * The step running now (a new handshake's first context is in no state until it returns), and
   * `gaveUp`: its handshake was given up meanwhile ({@link abandon}), with that error.
   */
  #stepping: { readonly context: MechanismContext; gaveUp?: unknown } | undefined;

  /** `onHandshake` is told of each handshake that ends (success or failure), once. */
  constructor(proxy: ResolvedProxy, maxLegs: number, onHandshake?: ProxyHandshakeListener) {
    this.#proxy = proxy;
    this.#maxLegs = maxLegs;
    this.#onHandshake = onHandshake;
  }

  /**
   * The proxy refused a connection-bound handshake (NTLM, NTLM inside Negotiate) on this connection
   * after its opening: a proxy may keep the failed context on the connection (Apache mod_auth_gssapi,
   * `GssapiConnectionBound`) and refuse every later handshake there, so the connection must not
   * carry another (H1/C8).
   */
  get refusedBound(): boolean {
    return this.#refusedBound;
  }

  get state(): 'idle' | 'handshaking' | 'done' {
    return this.#state.kind === 'fresh' ? 'idle' : this.#state.kind;
  }
  get scheme(): string | undefined {
    return this.#mechanism?.scheme;
  }

  /**
   * The schemes (lower-case) not to choose here now: those found unusable on this connection, and
   * those the proxy showed unusable lately to any connection ({@link ResolvedProxy.unusable}).
   */
  get #skipped(): ReadonlySet<string> {
    const remembered = this.#remembered();
    return remembered.length ? new Set([...this.#excluded, ...remembered.map(([key]) => key)]) : this.#excluded;
  }

  /** The proxy's unusable schemes still remembered (by key, with why); forgotten ones dropped. */
  #remembered(): [string, { readonly scheme: string; readonly error: MultilegError }][] {
    return this.#proxy.unusable.live();
  }

  /**
   * Until when what `offered` lists and is skipped stays skipped by the proxy's other connections:
   * the earliest lapse of its memory (now for one this connection alone still skips), Infinity
   * when nothing offered is skipped.
   */
  #skippedUntil(offered: readonly Challenge[]): number {
    let until = Number.POSITIVE_INFINITY;
    const skipped = this.#skipped;
    for (const c of offered)
      if (skipped.has(c.schemeKey)) until = Math.min(until, this.#proxy.unusable.until(c.schemeKey) ?? Date.now());
    return until;
  }

  /**
   * Why Negotiate could not run here (`CODE: cause`), when it is skipped and `scheme` answers
   * instead (M5: said as an origin's report says it); undefined for Negotiate itself.
   */
  kerberosSkipped(scheme: string | undefined): string | undefined {
    if (scheme === undefined || scheme.toLowerCase() === 'negotiate') return undefined;
    const why = this.#why().find((u) => u.scheme.toLowerCase() === 'negotiate');
    if (!why) return undefined;
    const reason = fallbackReasonOf(why.error);
    return `${reason.code}: ${reason.message}`;
  }

  /** Why each skipped scheme cannot run here, this connection's own reason first. */
  #why(): { readonly scheme: string; readonly error: MultilegError }[] {
    const why = new Map(this.#unusable);
    for (const [key, u] of this.#remembered()) if (!why.has(key)) why.set(key, u);
    return [...why.values()];
  }

  /** The connection's mechanism: the running handshake's, the last one's, or the adopted scheme's. */
  get #mechanism(): Mechanism | undefined {
    return this.#state.kind === 'fresh' ? undefined : this.#state.mechanism;
  }

  /**
   * The identity the last successful handshake on this connection proved (when its mechanism says
   * one); kept until another handshake succeeds, as the proxy holds the connection as that identity
   * till then.
   */
  get holder(): AdmittedHolder | undefined {
    return this.#holder;
  }

  /**
   * Whether this connection's first request may carry the sole scheme's NEGOTIATE before any 407
   * (`proxy.schemes: ['NTLM']`, as curl --proxy-ntlm): nothing ran on it yet, and the proxy has not
   * shown that it takes no part in such an opening.
   */
  get opens(): boolean {
    const sole = this.#proxy.mechanisms.sole;
    return (
      this.#state.kind === 'fresh' &&
      !this.#proxy.openedInVain &&
      opensUnasked(sole) &&
      !this.#skipped.has(sole.scheme.toLowerCase())
    );
  }

  /**
   * The credentials sent last were the opening's NEGOTIATE, which no 407 asked for: a 2xx to them
   * authenticated nothing (nothing is proved, R4), and says the proxy wants no authentication.
   */
  get opening(): boolean {
    const state = this.#state;
    return state.kind === 'handshaking' && state.first === undefined && state.legs === 1;
  }

  /**
   * Starts the sole scheme's handshake before any 407 ({@link opens}): {@link header} gives its
   * NEGOTIATE, which carries no password. The caller has taken leave to send the credentials
   * first (the proof's gate, R4), as before answering a 407. A mechanism that cannot make its
   * opening leaves the request bare: the proxy's 407 runs the handshake as it would have.
   */
  async open(leg: LegInfo): Promise<void> {
    const sole = this.#proxy.mechanisms.sole;
    if (!this.opens || !sole) return;
    try {
      // Chosen, its first token not made yet (no other request opens meanwhile).
      this.#state = { kind: 'idle', mechanism: sole };
      const context = sole.createContext(leg);
      await this.#step({ mechanism: sole, context, legs: 0, sent: 0, first: undefined, offered: [] }, leg, undefined);
      // A first token that ends the handshake (a mechanism of that name that is not NTLM's
      // NEGOTIATE) waits for a challenge to answer, as any scheme's does.
      if (!context.complete && !context.firstLegCompletes) return;
      log.proxy('%s %s opening not made: its first token is its last', this.#proxy.origin, sole.scheme);
    } catch (err) {
      log.proxy('%s %s opening not made: %s', this.#proxy.origin, sole.scheme, (err as MultilegError).code);
    }
    // The opening not made, or made and found its last: nothing was sent to report (C6).
    this.#state = { kind: 'fresh' };
  }

  /** The proxy let the opening through (a 2xx): it wants no authentication, so later tunnels wait for a 407. */
  notNeeded(): void {
    this.#proxy.openedInVain = true;
    // Nothing was authenticated, nor refused: the opening ends unreported (as an origin's, C6).
    this.#state = ended(this.#state);
  }

  /**
   * A new connection takes the per-request scheme (Basic, Digest) the proxy asked for on another
   * ({@link ResolvedProxy.perRequest}), as if its own handshake had succeeded with it: its first
   * request then carries it ({@link proactive}). Nothing happens once the connection has run anything.
   * `leave`, where given, is asked first whether the credentials may go now (R4: `password`, they
   * derive from a password); on false nothing is adopted.
   */
  adopt(leave?: (password: boolean) => boolean): void {
    const remembered = this.#proxy.perRequest;
    if (this.#state.kind !== 'fresh' || remembered === undefined) return;
    if (Date.now() >= this.#proxy.perRequestUntil) return;
    if (this.#skipped.has(remembered.scheme.toLowerCase())) return;
    // Remembered by a handshake of credentials replaced since (setProxyCredentials): not sent unasked.
    if (this.#proxy.mechanisms.get(remembered.scheme) !== remembered) return;
    if (leave && !leave(remembered.usesPassword !== false)) return;
    this.#state = { kind: 'done', mechanism: remembered, adopted: true };
  }

  /** What an adopted scheme sends is judged as this connection's own from now on (let through, or nothing sent). */
  #makeOwn(): void {
    if (this.#state.kind === 'done' && this.#state.adopted) this.#state = { ...this.#state, adopted: false };
  }

  /**
   * The proxy's 407 no longer offers this connection's per-request scheme: new connections stop
   * carrying it unasked ({@link adopt}), unless another has answered the proxy with something since.
   */
  forget(): void {
    if (this.#proxy.perRequest === this.#mechanism) this.#proxy.perRequest = undefined;
  }

  /**
   * The proxy's credentials were replaced (setProxyCredentials) since this connection chose its
   * mechanism: its running handshake's next token, or a per-request scheme's header, would carry the
   * old ones, so nothing more of it may be sent (S6).
   */
  get replaced(): boolean {
    const mechanism = this.#mechanism;
    return mechanism !== undefined && this.#proxy.mechanisms.get(mechanism.scheme) !== mechanism;
  }

  /**
   * A handshake that authenticates the connection it runs on (NTLM, Negotiate) is running: a proxy
   * that closes that connection before the next leg ends it.
   */
  get connectionBound(): boolean {
    return this.#state.kind === 'handshaking' && this.#state.mechanism.level !== 'request';
  }

  /** {@link header} will make credentials for a request of its own (a per-request scheme after a success). */
  get proactive(): boolean {
    const state = this.#state;
    return state.kind === 'done' && state.mechanism.level === 'request' && state.mechanism.proactive;
  }

  /**
   * Whether the credentials this connection sends next derive from a password: the proactive
   * scheme's, or (`offered`: the challenges of a 407 about to be answered by a new handshake) the
   * scheme it would choose.
   */
  usesPassword(offered?: readonly Challenge[]): boolean {
    const mechanism = offered ? this.#proxy.mechanisms.choose(offered, this.#skipped)?.mechanism : this.#mechanism;
    return mechanism?.usesPassword !== false;
  }

  /** Whether a scheme configured here would answer a 407 offering `offered` (else it sends nothing: {@link answer} says why). */
  answers(offered: readonly Challenge[]): boolean {
    return this.#proxy.mechanisms.choose(offered, this.#skipped) !== undefined;
  }

  /**
   * What the proxy's refusal of the last handshake says of the credentials (R4): `'refused'` when it
   * sent a password (or may have), `'refused-no-password'` for a Kerberos ticket only.
   */
  get refusal(): 'refused' | 'refused-no-password' {
    const state = this.#state;
    return state.kind !== 'fresh' && !sentPassword(state.mechanism, state.context) ? 'refused-no-password' : 'refused';
  }

  /**
   * R4: whether `credentials`, {@link header}'s for the request on the wire, carry the password or
   * what derives from it — not a multi-leg handshake's opening (an NTLM NEGOTIATE), not a Kerberos
   * ticket alone: an origin's handshake's rule (carriesPassword). A proxy that leaves that leg
   * unanswered may have counted it as a try (account lockout). Read before the proxy's answer.
   */
  carriesPasswordIn(credentials: ProxyCredentials | undefined): boolean {
    const state = this.#state;
    if (credentials === undefined || state.kind === 'fresh' || state.kind === 'idle') return false;
    if (state.kind === 'handshaking') return carriesPassword(state.mechanism, state.context, state.legs);
    // After a success, a per-request scheme's own header: its context's first leg.
    return carriesPassword(state.mechanism, credentials.own ?? state.context ?? {}, 1);
  }

  /**
   * `Proxy-Authorization` for the next request on this connection: the handshake's next token; after
   * a success, for a per-request scheme, one made for this request (Digest: its own uri and nonce
   * count — the first request's header again would be a replay; Basic: the same). Never logged.
   */
  async header(leg: LegInfo): Promise<ProxyCredentials | undefined> {
    const state = this.#state;
    if (state.kind === 'handshaking') return { value: state.pending };
    // Nothing goes unasked: the proxy's 407 is then no refusal of credentials taken up (adopt).
    if (state.kind !== 'done' || state.mechanism.level !== 'request' || !state.mechanism.proactive) {
      this.#makeOwn();
      return undefined;
    }
    try {
      const own = state.mechanism.createContext(leg);
      return { value: await own.step(undefined, leg), own };
    } catch {
      this.#makeOwn();
      return undefined; // (a used-up nonce) the proxy's 407 starts a new handshake
    }
  }

  /**
   * The proxy let through a request that carried credentials of its own ({@link header} after a
   * success): its answer `status` is checked as a handshake's last is (Digest:
   * Proxy-Authentication-Info's rspauth and nextnonce), by {@link mustProve}'s rule. Throws
   * {@link MutualAuthError} when the proxy fails the proof. `proved`: false when the answer was
   * delivered without the proof the mechanism wants (reported failed, nothing recorded); `held`:
   * it made the connection's {@link holder} another identity (`leave`: the request's leave, R4/S6).
   * A 5xx proves nothing either (`proved` false: reported failed, `error`), its proof checked all the same.
   * `expired`: the caller's deadline, as {@link succeeded} takes it.
   */
  async verify(
    own: MechanismContext,
    status: number,
    headers: Headers,
    leg: LegInfo,
    leave: Ticket | undefined,
    expired?: () => Error | undefined,
  ): Promise<{ readonly proved: boolean; readonly held: boolean }> {
    let proved: boolean;
    try {
      proved = await this.#finish(own, status, headers, leg);
    } catch (err) {
      this.#emit('failed', 1, this.#mechanism, own, { failure: 'proof' });
      throw err;
    }
    if (!proved) {
      this.#emit('failed', 1, this.#mechanism, own, { failure: 'proof' });
      return { proved, held: false };
    }
    // A 5xx is never a success (M2, one rule with origins'), its proof checked or not: the proxy said
    // nothing of the credentials. They stay as they were here (adopted or own), and nothing is recorded.
    if (status >= 500) {
      this.#emit('failed', 1, this.#mechanism, own, { failure: 'error' });
      return { proved: false, held: false };
    }
    this.#late(expired, 1, own);
    // Let through: they are this connection's now, and a later 407 is answered as after a handshake.
    this.#makeOwn();
    // One leg that authenticated one request: reported as an origin's per-request scheme is.
    this.#emit('per-request', 1, this.#mechanism, own, own.identity === undefined ? {} : { identity: own.identity });
    // The proxy holds the connection as who these credentials name: a connection that took up a
    // per-request scheme ({@link adopt}) has no handshake of its own to say it (S6).
    const identity = own.identity;
    const mechanism = this.#mechanism;
    if (identity === undefined || mechanism === undefined || this.#holder?.identity === identity)
      return { proved, held: false };
    this.#holder = { mechanism, identity, admitted: leave?.admitted ?? 0 };
    return { proved, held: true };
  }

  /** The proof an answer carries: the connection's scheme's last Proxy-Authenticate, and Proxy-Authentication-Info. */
  #proof(headers: Headers): { final: Challenge | undefined; info: Readonly<Record<string, string>> | undefined } {
    const key = this.#mechanism?.scheme.toLowerCase();
    const final = readChallenges(headers, true).find((c) => c.schemeKey === key);
    return { final, info: readAuthenticationInfo(headers, true) };
  }

  /**
   * `context`'s check of the proxy's answer `status` (M2, {@link mustProve}): rejects where that
   * answer must prove the proxy and does not; elsewhere resolves whether it proved it (false: the
   * mechanism would not do without the final token it lacks).
   */
  async #finish(context: MechanismContext, status: number, headers: Headers, leg: LegInfo): Promise<boolean> {
    const { final, info } = this.#proof(headers);
    const check = context.finish(final, leg, info);
    if (proofRequired(status, final, info)) {
      await check;
      return true;
    }
    return check.then(
      () => true,
      () => false,
    );
  }

  /**
   * Whether {@link answer} would answer a 407 offering `offered` rather than throw, as far as can be
   * told before a mechanism runs (one that turns out unusable when tried is not seen): the running
   * handshake's next token, or a configured mechanism for an offered scheme.
   */
  canAnswer(offered: readonly Challenge[]): boolean {
    const state = this.#state;
    if (state.kind === 'handshaking') {
      const key = state.mechanism.scheme.toLowerCase();
      const next = offered.find((c) => c.schemeKey === key);
      if (challengeAsks(state.context, next) !== 'refused') return true;
      // A 407 to the opening NEGOTIATE that takes no part in it refuses nothing: {@link answer}
      // starts a new handshake for it, as for a bare request's 407.
      if (!(this.opening && next?.token68 === undefined)) return false;
    }
    return this.#proxy.mechanisms.choose(offered, this.#skipped)?.mechanism !== undefined;
  }

  /**
   * The schemes this 407 offers that were found unusable on this connection (or lately by the
   * proxy, {@link ResolvedProxy.unusable}), each with why.
   */
  unusableIn(headers: Headers): { readonly scheme: string; readonly error: MultilegError }[] {
    const offered = new Set(readChallenges(headers, true).map((c) => c.schemeKey));
    const remembered = new Map(this.#remembered());
    return [...offered].flatMap((key) => this.#unusable.get(key) ?? remembered.get(key) ?? []);
  }

  /**
   * A leg that failed (or a handshake no request leads any more) ends the running handshake: the
   * next request starts anew. A handshake that sent credentials is reported as failed (`error`).
   */
  giveUp(): void {
    this.#leave(ended(this.#state), { outcome: 'failed', failure: 'error' });
  }

  /**
   * The proxy's 407 (its challenges `offered`) refused the running handshake's last leg, and goes to
   * the caller (`proxy.deliver407`) rather than end in {@link answer}'s error: the handshake ends as
   * that refusal ends it there — reported failed (`opening` when that leg was an NTLM NEGOTIATE,
   * which carried no password), and a refused connection-bound one marks the connection
   * ({@link refusedBound}: it retires, H1/C8). Returns what the refusal says of the credentials
   * ({@link refusal}, R4), undefined for a refused opening (no credential judged) or none running.
   */
  refusedDelivered(offered: readonly Challenge[]): 'refused' | 'refused-no-password' | undefined {
    const state = this.#state;
    if (state.kind !== 'handshaking') return undefined;
    const refusal = this.refusal;
    const opening = atOpening(state.mechanism, state.context, state.legs);
    // Reported with the error the refusal would have thrown without deliver407 (its failureReason:
    // the same report either way, S2: no secret in it).
    const scheme = state.mechanism.scheme;
    const schemes = offeredSchemes(offered);
    this.#endRefused(
      state,
      opening,
      rejected(this.#proxy, scheme, schemes, !opening, this.kerberosSkipped(scheme) ?? state.context.fallbackReason),
    );
    return opening ? undefined : refusal;
  }

  /**
   * The proxy refused the running handshake `state`'s last leg (`opening`: its NTLM NEGOTIATE, which
   * refused no password: said as an origin's is, review r38): it ends, reported failed (with `err`
   * where one is thrown). H1/C8: a refused connection-bound context may stay on the connection,
   * failed (Apache mod_auth_gssapi as a proxy refuses every later handshake there): it retires.
   */
  #endRefused(
    state: Extract<AuthState, { kind: 'handshaking' }>,
    opening: boolean,
    err?: ProxyAuthenticationError,
  ): void {
    this.#refusedBound = !opening && (state.mechanism.level === 'connection' || state.context.connectionBound === true);
    this.#leave(ended(state), {
      outcome: 'failed',
      failure: opening ? 'opening' : 'refused',
      ...(err ? { error: err } : {}),
    });
  }

  /**
   * The running handshake ended with `err`, thrown by the caller or here (a timeout, a lost
   * connection, the proxy's refusal): reported as failed, once. Nothing when none is running. A step
   * still running (its caller's deadline passed while GSS-API waited on a KDC) is given up too: its
   * context freed now (C4), its token, when it comes, going nowhere.
   */
  abandon(err: unknown): void {
    const step = this.#stepping;
    if (step && step.gaveUp === undefined) {
      step.gaveUp = err ?? new Error('the handshake was given up');
      step.context.dispose?.();
    }
    if (this.#state.kind === 'handshaking')
      this.#leave(ended(this.#state), { outcome: 'failed', failure: proxyFailure(err), error: err });
  }

  /**
   * The connection this runs on is given up for good, with `err` (its session destroyed: the agent's
   * destroy(); a tunnel past its deadline): the running handshake ends now, reported failed, and its
   * context is freed — one whose step still runs too, that step's token then going nowhere (C4: a
   * Kerberos context, whose step may wait on a KDC, is left neither to the garbage collector nor to
   * that step's return). No step runs here after it.
   */
  end(err: Error): void {
    this.#over ??= err;
    this.abandon(err);
  }

  /**
   * The connection ended under the running handshake's leg and the request goes again on another
   * (a per-request scheme's next leg, a proxy that closes after its 407): the handshake goes on
   * there, with that connection's own report, and is not reported here (as an origin's relocated one).
   */
  moved(): void {
    if (this.#state.kind === 'handshaking') this.#leave(ended(this.#state));
  }

  /**
   * The proxy refused the credentials a request carried on their own (`own`: {@link header}'s
   * context, after a success): that request's one-leg handshake failed, as an origin's per-request
   * one does.
   */
  refusedOwn(own: MechanismContext, err: ProxyAuthenticationError): void {
    this.#emit('failed', 1, this.#mechanism, own, { failure: 'refused', error: err });
  }

  /**
   * Answers a 407 whose challenges are `offered` (read once by the caller, which took leave by them:
   * {@link answers}, {@link usesPassword}): the first leg of a new handshake, or the next leg of the
   * running one. Throws when it cannot. When the proxy's answer to a scheme's first leg cannot be
   * read (T2: an NTLM CHALLENGE that is no NTLM message), that scheme is unusable with this proxy for a while
   * ({@link ResolvedProxy.unusable}) and, with `fallThrough` (the caller's once per request), the
   * next scheme the proxy offers answers, as the {@link FellThrough} it resolves to says (undefined:
   * it did not fall through). Never after a refusal: a 407 that refuses credentials is no
   * unreadable challenge (R4).
   */
  async answer(offered: readonly Challenge[], leg: LegInfo, fallThrough = false): Promise<FellThrough | undefined> {
    try {
      return await this.#answer(offered, leg, fallThrough);
    } catch (err) {
      // The running handshake ends here (refused, a bad token, past limits.maxLegs); one whose first
      // leg could not be made sent nothing, and is no handshake to report.
      this.abandon(err);
      throw err;
    }
  }

  async #answer(offered: readonly Challenge[], leg: LegInfo, fallThrough: boolean): Promise<FellThrough | undefined> {
    const state = this.#state;
    /**
     * The running handshake's scheme proved unreadable here: the next offered scheme answers. (What
     * the 407 its first leg answered offered, which the error names too.)
     */
    let fellThrough = false;
    /** The scheme it fell from: whether it sent a password says what the request's leave was taken for. */
    let fellFrom: Mechanism | undefined;
    let before: readonly string[] = [];
    if (state.kind === 'done' && state.adopted) {
      // The credentials taken up unasked ({@link adopt}) drew a 407: refused, as a handshake's last
      // leg refused (R4: not sent again here) — unless a Digest nonce merely went stale; else a new
      // handshake answers it (below).
      const key = state.mechanism.scheme.toLowerCase();
      const again = offered.find((c) => c.schemeKey === key);
      // (A 407 that no longer offers the scheme refused nothing: the proxy changed its schemes.)
      if (again !== undefined && again.params.stale?.toLowerCase() !== 'true') {
        this.#state = ended(state);
        const err = rejected(
          this.#proxy,
          state.mechanism.scheme,
          offeredSchemes(offered),
          true,
          this.kerberosSkipped(state.mechanism.scheme),
        );
        // One leg, a request's own: its per-request handshake was refused.
        this.#emit('failed', 1, state.mechanism, undefined, { failure: 'refused', error: err });
        throw err;
      }
    }
    if (state.kind === 'handshaking') {
      const key = state.mechanism.scheme.toLowerCase();
      const next = offered.find((c) => c.schemeKey === key);
      // A token asks for the next leg, unless it is the proxy's refusal (an SPNEGO reject).
      const asks = challengeAsks(state.context, next);
      if (asks === 'next-leg') {
        try {
          await this.#step(state, leg, next);
          return undefined;
        } catch (err) {
          // T2: the answer to its first leg (the NTLM CHALLENGE to the NEGOTIATE) cannot be read.
          // Not a refusal (that has no token, or a reject): the proxy's scheme is broken, not the
          // credentials; a later leg's bad token stays this handshake's error.
          if (!(err instanceof InvalidTokenError) || state.legs !== 1) throw err;
          this.#unreadable(state.mechanism, err);
          before = state.offered;
          if (!fallThrough) throw this.#noScheme(offered, before);
          fellThrough = true;
          fellFrom = state.mechanism;
        }
      } else if (asks === 'run-again') {
        // Refused credentials the mechanism has renewed since (a ticket under the proxy's rotated
        // key, dropped): the handshake runs again on this connection with the new ones, as an
        // origin's does; the mechanism says so once (R4). Their leave (the proof's) still holds.
        log.proxy('%s %s: refused credentials renewed since: running the handshake again', this.#proxy.origin, key);
        await this.#again(state, leg);
        return undefined;
      } else if (this.opening && next?.token68 === undefined) {
        // The proxy took no part in the opening (a bare NTLM challenge, or other schemes only): its
        // 407 is answered as a bare CONNECT's would have been, and later tunnels wait for the 407.
        this.#proxy.openedInVain = true;
      } else {
        // A 407 to the opening leg of a multi-leg handshake (an NTLM NEGOTIATE) refused no credential.
        const opening = atOpening(state.mechanism, state.context, state.legs);
        const err = rejected(
          this.#proxy,
          state.mechanism.scheme,
          offeredSchemes(offered),
          !opening,
          // Negotiate's own: its context sent the password as NTLM inside it.
          this.kerberosSkipped(state.mechanism.scheme) ?? state.context.fallbackReason,
        );
        this.#endRefused(state, opening, err);
        throw err;
      }
    }
    // A new handshake (a connection-bound success that is challenged again starts over, once per answer()).
    // An opening the proxy took no part in ends here unreported (as an origin's unanswered one, C6).
    this.#leave(ended(this.#state));
    for (;;) {
      const chosen = this.#proxy.mechanisms.choose(offered, this.#skipped);
      if (!chosen?.mechanism) {
        // Fallen through, and this 407 (to the unreadable scheme's leg: Squid's names that scheme
        // alone) offers no other: the request goes again bare, whose 407 offers all the proxy's
        // schemes — only when the agent may still use one (proxy.schemes, credentials).
        if (fellThrough && this.#proxy.mechanisms.anyBut(this.#skipped)) {
          log.proxy('%s: the next request goes bare, for the schemes the proxy offers then', this.#proxy.origin);
          return 'bare';
        }
        throw this.#noScheme(offered, before);
      }
      const { mechanism, challenge } = chosen as { mechanism: Mechanism; challenge: Challenge };
      // Fallen from a scheme that sends no password (a Kerberos ticket) to one that does: the
      // request's leave was taken for no password, so it goes again bare and takes one for a
      // password (R4: those go one at a time until proved), rather than send it here (review r39).
      if (fellFrom?.usesPassword === false && mechanism.usesPassword !== false) {
        log.proxy('%s: the next request goes bare, to take leave for a password', this.#proxy.origin);
        return 'bare';
      }
      try {
        // Chosen, its first token not made yet: idle till then (where a first leg that fails leaves it).
        this.#state = { kind: 'idle', mechanism };
        await this.#step(
          {
            mechanism,
            context: mechanism.createContext(leg),
            legs: 0,
            sent: 0,
            first: challenge,
            offered: offeredSchemes(offered),
          },
          leg,
          challenge,
        );
        // What the proxy asks for, for its next connections (a connection-bound scheme is this one's
        // alone). Chosen because a scheme offered ahead of it cannot run here (no Kerberos ticket):
        // only for as long as the proxy remembers that (then that scheme is tried again: a kinit
        // mends it within a second).
        this.#proxy.perRequest = mechanism.level === 'request' ? mechanism : undefined;
        this.#proxy.perRequestUntil = this.#skippedUntil(offered);
        return fellThrough ? 'next' : undefined;
      } catch (err) {
        if (cannotRunHere(err)) {
          log.proxy('%s scheme %s unusable: %s', this.#proxy.origin, mechanism.scheme, err.code);
          // Here for this connection's life; for the proxy's other connections while remembered
          // (R4: a KDC that did not answer is not waited for again by every tunnel).
          const why = { scheme: mechanism.scheme, error: err };
          this.#excluded.add(challenge.schemeKey);
          this.#unusable.set(challenge.schemeKey, why);
          this.#proxy.unusable.set(challenge.schemeKey, why, unusableUntil(err));
          continue;
        }
        throw err;
      }
    }
  }

  /**
   * The proxy's answer to `mechanism`'s first leg could not be read (`err`): the scheme is excluded
   * here and remembered unusable with this proxy for UNUSABLE_MEMORY_MS, for every connection to it
   * (T2, R4: not tried again on each tunnel); the handshake that sent that leg ends, failed.
   */
  #unreadable(mechanism: Mechanism, err: InvalidTokenError): void {
    const scheme = mechanism.scheme;
    const key = scheme.toLowerCase();
    log.proxy(
      '%s %s unusable: its answer to the first leg cannot be read (%s); not used with this proxy for %d s',
      this.#proxy.origin,
      scheme,
      err.code,
      UNUSABLE_MEMORY_MS / 1000,
    );
    this.#excluded.add(key);
    this.#unusable.set(key, { scheme, error: err });
    this.#proxy.unusable.set(key, { scheme, error: err }, unusableUntil(err));
    this.#leave(ended(this.#state), { outcome: 'failed', failure: 'error', error: err });
  }

  /**
   * Why no scheme answers `offered`: none configured for them, or (with why each) those offered
   * could not run here, or their challenge could not be read — the fix named for each kind, the
   * latter's among the schemes offered here or `before` (by the 407 the unreadable one answered).
   */
  #noScheme(offered: readonly Challenge[], before: readonly string[] = []): ProxyAuthenticationError {
    const schemes = offeredSchemes(offered);
    const why = this.#why();
    const given = this.#proxy.account !== undefined;
    if (why.length === 0)
      return new ProxyAuthenticationError(
        this.#proxy.origin,
        given
          ? 'none of the offered schemes is configured; check proxy.schemes'
          : 'none of the offered schemes is configured; give proxy.credentials (or proxy.negotiate with a Kerberos ticket) and check proxy.schemes',
        schemes,
      );
    const unreadable = why.filter((u) => u.error instanceof InvalidTokenError);
    const cannotRun = why.filter((u) => !(u.error instanceof InvalidTokenError));
    const fixes: string[] = [];
    // Given credentials are there: what is missing is a ticket, or a scheme their password answers.
    if (cannotRun.length)
      fixes.push(
        given
          ? withCredentials(cannotRun, this.#proxy.credentialsFrom, schemes)
          : kerberosNamesItsFix(cannotRun)
            ? 'mend what it says, or give proxy.credentials'
            : 'give proxy.credentials or a Kerberos ticket',
      );
    if (unreadable.length) {
      const skipped = this.#skipped;
      const others = [...new Set([...schemes, ...before])].filter((s) => !skipped.has(s.toLowerCase()));
      fixes.push(
        unreadableFix(
          unreadable.map((u) => u.scheme),
          others,
        ),
      );
    }
    return new ProxyAuthenticationError(
      this.#proxy.origin,
      `no offered scheme could be used (${why.map(whyUnusable).join('; ')}); ${fixes.join('; ')}`,
      schemes,
    );
  }

  /**
   * The connection was lost in the middle of a connection-bound handshake: start it again (once) on
   * a new connection. Returns false when it was restarted already (or none runs).
   */
  restart(leg: LegInfo): Promise<boolean> {
    const state = this.#state;
    if (this.#restarted || state.kind !== 'handshaking') return Promise.resolve(false);
    this.#restarted = true;
    return this.#again(state, leg).then(() => true);
  }

  /** The running handshake from its first leg again, with a new context. */
  #again(run: Run, leg: LegInfo): Promise<void> {
    // The run being replaced ends here (C4: a Kerberos context is freed now, not when collected).
    run.context.dispose?.();
    return this.#step({ ...run, context: run.mechanism.createContext(leg), legs: 0 }, leg, run.first);
  }

  /**
   * M2: whether the proxy's final answer `status` (not a 407) to this connection's credentials must
   * prove the proxy — the requests' and upgrades' rule, {@link proofRequired}: a 2xx, or one that
   * carries the scheme's final `Proxy-Authenticate` token or `Proxy-Authentication-Info`. Any other
   * (a 403, a 5xx) is the caller's without the proof the mechanism may still want.
   */
  mustProve(status: number, headers: Headers): boolean {
    const { final, info } = this.#proof(headers);
    return proofRequired(status, final, info);
  }

  /**
   * The proxy's final answer `status` (not a 407) to a request that carried credentials: the
   * handshake ended; its final token is checked by {@link mustProve}'s rule (M2). Where the answer
   * must prove the proxy, a failed check throws {@link MutualAuthError}; any other answer that does
   * not prove it (a 403 or a 5xx without the final token, the mechanism wanting one) resolves
   * `unproved`: delivered unproved, the handshake reported failed (`proof`), no identity recorded
   * (S6). Else a 5xx, whatever proof it carried (checked all the same), says nothing of the credentials:
   * `error`, reported failed (`error`), nothing recorded (M2: never a success, as an origin's).
   * Resolves `success` when the handshake succeeded. `leave`: the leave to send the credentials
   * it ran under (credentials go only with leave: the callers always have one; without, the
   * identity counts as the oldest), whose place orders the identity it proved. `expired`: the
   * caller's deadline, asked once the proof is in (a GSS-API check on a worker may return after
   * it): a handshake its caller gave up on meanwhile failed with the caller's request, and proves
   * nobody.
   */
  async succeeded(
    status: number,
    headers: Headers,
    leg: LegInfo,
    leave: Ticket | undefined,
    expired?: () => Error | undefined,
  ): Promise<ProxyHandshakeEnd> {
    const state = this.#state;
    // Both callers (tunnel, forward) call this only after a leg with credentials, i.e. mid-handshake;
    // the guard keeps a stray call from finishing a context twice and is not reached by them.
    if (state.kind !== 'handshaking') return { outcome: 'unproved', retire: true };
    const { mechanism, context, sent } = state;
    // Out of handshaking here, so nothing else reports it: it is reported below, once its proof is in.
    this.#state = { kind: 'done', mechanism, context, adopted: false };
    let proved: boolean;
    try {
      proved = await this.#finish(context, status, headers, leg);
    } catch (err) {
      this.#emit('failed', sent, mechanism, context, { failure: 'proof' });
      throw err;
    } finally {
      // The handshake is over, its proof checked or not (C4, see #leave).
      context.dispose?.();
    }
    if (!proved) {
      log.proxy(
        "%s %s: a %d without the proxy's proof: delivered, nothing proved",
        this.#proxy.origin,
        mechanism.scheme,
        status,
      );
      // Nothing proved: the connection is not taken as authenticated, and no identity recorded.
      this.#state = ended(this.#state);
      this.#emit('failed', sent, mechanism, context, { failure: 'proof' });
      return { outcome: 'unproved', retire: true };
    }
    if (status >= 500) {
      // M2: a 5xx is never a success, its final token verified or not (the proxy's own failure, or
      // the origin's behind it): reported failed, no identity, the credentials not proved (R4).
      log.proxy('%s %s: a %d: nothing proved', this.#proxy.origin, mechanism.scheme, status);
      this.#state = ended(this.#state);
      this.#emit('failed', sent, mechanism, context, { failure: 'error' });
      // The proxy may hold a connection-bound context's connection as its identity: where that lives
      // outside the agent (a Kerberos ticket), no check could retire it, so the connection goes (S6);
      // the agent's own password (NTLM) keeps it, as an origin's does (review r60: a new connection
      // and handshake per 5xx otherwise).
      const bound = mechanism.level !== 'request' || context.connectionBound === true;
      const outside = mechanism.holdsCredentials !== undefined && context.fallbackReason === undefined;
      return { outcome: 'error', retire: bound && outside };
    }
    log.proxy('%s authenticated with %s in %d legs', this.#proxy.origin, mechanism.scheme, state.legs);
    this.#late(expired, sent, context);
    const identity = context.identity;
    this.#holder = identity !== undefined ? { mechanism, identity, admitted: leave?.admitted ?? 0 } : undefined;
    const outcome = mechanism.level === 'request' ? 'per-request' : 'session';
    this.#emit(outcome, sent, mechanism, context, identity === undefined ? {} : { identity });
    return { outcome: 'success', retire: false };
  }

  /**
   * Throws the caller's error when its deadline passed while `context`'s proof was checked: the
   * handshake is reported failed (`error`, as an origin's that timed out), never as a success.
   */
  #late(expired: (() => Error | undefined) | undefined, legs: number, context: MechanismContext): void {
    const err = expired?.();
    if (!err) return;
    this.#emit('failed', legs, this.#mechanism, context, { failure: 'error', error: err });
    throw err;
  }

  /**
   * Moves to `next`; a running handshake left so ends there, reported as `report` says (none: it
   * ends unreported). Reported once: only the move out of `handshaking` reports it, and a handshake
   * is left once.
   */
  #leave(next: AuthState, report?: Report & { readonly outcome: ProxyHandshake['outcome'] }): void {
    const left = this.#state;
    this.#state = next;
    // Its context is freed now, however the handshake ended (C4: a Kerberos one counts as a
    // handshake in flight until freed); what it tells (sentPassword, spn) it still tells.
    if (left.kind === 'handshaking') left.context.dispose?.();
    if (left.kind === 'handshaking' && report)
      this.#emit(report.outcome, left.sent, left.mechanism, left.context, report);
  }

  /** Tells the listener of a handshake of `mechanism`'s that ended in `legs` legs (`context`'s, where known). */
  #emit(
    outcome: ProxyHandshake['outcome'],
    legs: number,
    mechanism: Mechanism | undefined,
    context: MechanismContext | undefined,
    how: Report,
  ): void {
    if (!this.#onHandshake || !mechanism) return;
    const spn = context?.spn;
    const fallbackReason = context?.fallbackReason ?? this.kerberosSkipped(mechanism.scheme);
    this.#onHandshake({
      origin: this.#proxy.origin,
      scheme: mechanism.scheme,
      legs,
      outcome,
      ...(how.identity !== undefined ? { identity: how.identity } : {}),
      ...(how.failure ? { failure: how.failure } : {}),
      ...(spn ? { spn } : {}),
      ...(fallbackReason ? { fallbackReason } : {}),
      ...(how.error !== undefined ? { failureReason: failureReason(how.error) } : {}),
    });
  }

  /**
   * `run`'s next leg, answering `challenge` (none: an opening): the handshake runs with its token
   * pending. One that fails leaves the state as it was, but past maxLegs the handshake ends (idle).
   */
  async #step(run: Run, leg: LegInfo, challenge: Challenge | undefined): Promise<void> {
    const { mechanism, context } = run;
    if (run.legs >= this.#maxLegs) {
      const err = new LegLimitError(this.#maxLegs, `proxy ${mechanism.scheme}`);
      // A running handshake (its next leg, or its run again from the first) fails here.
      this.#leave({ kind: 'idle', mechanism, context }, { outcome: 'failed', failure: proxyFailure(err), error: err });
      throw err;
    }
    if (this.#over) throw this.#over;
    let pending: string;
    const step: { readonly context: MechanismContext; gaveUp?: unknown } = { context };
    this.#stepping = step;
    try {
      pending = await context.step(challenge, leg);
      // Given up while the step ran ({@link abandon} freed its context): its token goes nowhere.
      if (step.gaveUp !== undefined) throw step.gaveUp;
    } catch (err) {
      // (Whatever the step says once its context was freed under it: the end's error, not a bad token.)
      if (step.gaveUp !== undefined) throw step.gaveUp;
      // The mechanism's own words for a bad token say "server": this one came from the proxy.
      if (err instanceof InvalidTokenError) throw new InvalidTokenError(err.what, this.#proxy.origin);
      if (err instanceof MultilegError) throw err;
      throw new InvalidTokenError(`${mechanism.scheme} Proxy-Authenticate challenge`, this.#proxy.origin);
    } finally {
      if (this.#stepping === step) this.#stepping = undefined;
    }
    const legs = run.legs + 1;
    const { first, offered } = run;
    this.#state = { kind: 'handshaking', mechanism, context, legs, sent: run.sent + 1, first, offered, pending };
    log.proxy('%s %s leg %d', this.#proxy.origin, mechanism.scheme, legs);
  }
}
