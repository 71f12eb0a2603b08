/**
 * Authentication to a proxy (H5): answers 407 `Proxy-Authenticate` challenges with the proxy's own
 * mechanisms — the same {@link Mechanism} interface as origins, with `leg.proxy = true` — choosing the
 * strongest offered scheme. One instance per proxy connection: connection-bound schemes (NTLM,
 * Negotiate) authenticate that connection; Basic goes on every request.
 */
import { readAuthenticationInfo, readChallenges } from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import { InvalidTokenError, LegLimitError, MultilegError, MutualAuthError } from '../errors.ts';
import { log } from '../log.ts';
import { ticketFixes, withoutGssDetail } from '../mechanisms/negotiate/errors.ts';
import { atOpening, cannotRunHere, challengeAsks, opensUnasked, sentPassword } from '../mechanisms/registry.ts';
import type { Holder, LegInfo, Mechanism, MechanismContext } from '../mechanisms/types.ts';
import { type Ticket, UNUSABLE_MEMORY_MS } from '../session/credential-proof.ts';
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
  /** Legs sent with credentials, those before a restart on a new connection included. */
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
   * `proof`, its final token failed mutual authentication (Digest's rspauth); `error`, it ended
   * otherwise (a timeout, a lost connection, a 407 to an opening NEGOTIATE, another status).
   */
  readonly failure?: 'refused' | 'proof' | 'error';
  /** Negotiate: the service principal name the Kerberos ticket was asked for (`HTTP@proxyhost`). */
  readonly spn?: string;
  /** Why Kerberos was skipped and NTLM used instead (M5). */
  readonly fallbackReason?: string;
}

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

/** The proxy's final 407 to `scheme`'s credentials. */
export function rejected(
  proxy: ResolvedProxy,
  scheme: string | undefined,
  offered: readonly string[],
  refused = true,
): ProxyAuthenticationError {
  // What went: a ticket with Negotiate (a proxy's Negotiate has no NTLM fallback unless asked), else the password.
  const ticket = `the Kerberos ticket for HTTP@${proxy.hostname}`;
  const password = 'proxy.credentials (user, domain, password)';
  const check =
    scheme === undefined ? `${password} or ${ticket}` : scheme.toLowerCase() === 'negotiate' ? ticket : password;
  return new ProxyAuthenticationError(
    proxy.origin,
    `the proxy rejected the ${scheme ? `${scheme} ` : ''}credentials; check ${check}`,
    offered,
    refused,
  );
}

/**
 * The fix when proxy credentials were given and every offered scheme still could not run: not to
 * give them again, but a ticket for a Negotiate proxy (its Negotiate has no NTLM fallback), or a
 * scheme the password answers.
 */
function withCredentials(unusable: Iterable<{ readonly scheme: string; readonly error: MultilegError }>): string {
  const list = [...unusable];
  const schemes = list.map((u) => u.scheme);
  // A ticket is the fix where there was none (or it expired); an unknown SPN, a KDC out of reach or
  // a skewed clock are named in the reason before this, and a ticket does not mend them.
  const ticket = list.some((u) => ticketFixes(u.error.code)) ? 'get a Kerberos ticket for the proxy, or ' : '';
  return `the password in proxy.credentials cannot answer ${schemes.join(', ')}: ${ticket}check proxy.schemes`;
}

/** Why a scheme could not run here, in one line: its error's message (GSS-API's detail left out) and code. */
const whyUnusable = (u: { readonly error: MultilegError }): string =>
  `${withoutGssDetail(u.error.message)} (${u.error.code})`;

export class ProxyAuth {
  readonly #proxy: ResolvedProxy;
  readonly #maxLegs: number;
  readonly #excluded = new Set<string>();
  /** Why each excluded scheme cannot run here (by scheme key): the reason a 407 went unanswered. */
  readonly #unusable = new Map<string, { readonly scheme: string; readonly error: MultilegError }>();
  #mechanism: Mechanism | undefined;
  #context: MechanismContext | undefined;
  #pending: string | undefined;
  #legs = 0;
  #restarted = false;
  #first: Challenge | undefined;
  /** The running handshake began unasked ({@link open}): its first leg answered no 407. */
  #opening = false;
  #state: 'idle' | 'handshaking' | 'done' = 'idle';
  /** Its per-request scheme was taken up from another connection ({@link adopt}), not answered here. */
  #adopted = false;
  #holder: AdmittedHolder | undefined;
  readonly #onHandshake: ProxyHandshakeListener | undefined;
  /**
   * Legs the running handshake has made, its restarts' included: more than 0 while it runs and is
   * not yet reported ({@link #end} reports it once, and sets it back to 0).
   */
  #sent = 0;

  /** `onHandshake` is told of each handshake that ends (success or failure), once. */
  constructor(proxy: ResolvedProxy, maxLegs: number, onHandshake?: ProxyHandshakeListener) {
    this.#proxy = proxy;
    this.#maxLegs = maxLegs;
    this.#onHandshake = onHandshake;
  }

  get state(): 'idle' | 'handshaking' | 'done' {
    return this.#state;
  }
  get scheme(): string | undefined {
    return this.#mechanism?.scheme;
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
      this.#state === 'idle' &&
      this.#mechanism === undefined &&
      !this.#proxy.openedInVain &&
      opensUnasked(sole) &&
      !this.#excluded.has(sole.scheme.toLowerCase())
    );
  }

  /**
   * The credentials sent last were the opening's NEGOTIATE, which no 407 asked for: a 2xx to them
   * authenticated nothing (nothing is proved, R4), and says the proxy wants no authentication.
   */
  get opening(): boolean {
    return this.#opening && this.#legs === 1;
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
    this.#first = undefined;
    this.#legs = 0;
    this.#sent = 0;
    try {
      this.#mechanism = sole;
      const context = sole.createContext(leg);
      this.#context = context;
      await this.#step(undefined, leg);
      // A first token that ends the handshake (a mechanism of that name that is not NTLM's
      // NEGOTIATE) waits for a challenge to answer, as any scheme's does.
      if (!context.complete && !context.firstLegCompletes) {
        this.#opening = true;
        return;
      }
      log.proxy('%s %s opening not made: its first token is its last', this.#proxy.origin, sole.scheme);
    } catch (err) {
      log.proxy('%s %s opening not made: %s', this.#proxy.origin, sole.scheme, (err as MultilegError).code);
    }
    this.#mechanism = this.#context = undefined;
    this.#legs = 0;
    this.#sent = 0;
    this.#state = 'idle';
  }

  /** The proxy let the opening through (a 2xx): it wants no authentication, so later tunnels wait for a 407. */
  notNeeded(): void {
    this.#proxy.openedInVain = true;
    this.#opening = false;
    this.#state = 'idle';
    // Nothing was authenticated, nor refused: no handshake to report (as an origin's, C6).
    this.#sent = 0;
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
    if (this.#state !== 'idle' || this.#mechanism !== undefined || remembered === undefined) return;
    if (Date.now() >= this.#proxy.perRequestUntil) return;
    if (this.#excluded.has(remembered.scheme.toLowerCase())) return;
    // Remembered by a handshake of credentials replaced since (setProxyCredentials): not sent unasked.
    if (this.#proxy.mechanisms.get(remembered.scheme) !== remembered) return;
    if (leave && !leave(remembered.usesPassword !== false)) return;
    this.#adopted = true;
    this.#mechanism = remembered;
    this.#state = 'done';
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
    return this.#state === 'handshaking' && this.#mechanism !== undefined && this.#mechanism.level !== 'request';
  }

  /** {@link header} will make credentials for a request of its own (a per-request scheme after a success). */
  get proactive(): boolean {
    const mechanism = this.#mechanism;
    return this.#state === 'done' && mechanism?.level === 'request' && mechanism.proactive;
  }

  /**
   * Whether the credentials this connection sends next derive from a password: the proactive
   * scheme's, or (`headers`: a 407 about to be answered by a new handshake) the scheme it would choose.
   */
  usesPassword(headers?: Headers): boolean {
    const mechanism = headers
      ? this.#proxy.mechanisms.choose(readChallenges(headers, true), this.#excluded)?.mechanism
      : this.#mechanism;
    return mechanism?.usesPassword !== false;
  }

  /**
   * What the proxy's refusal of the last handshake says of the credentials (R4): `'refused'` when it
   * sent a password (or may have), `'refused-no-password'` for a Kerberos ticket only.
   */
  get refusal(): 'refused' | 'refused-no-password' {
    return this.#mechanism && !sentPassword(this.#mechanism, this.#context) ? 'refused-no-password' : 'refused';
  }

  /**
   * `Proxy-Authorization` for the next request on this connection: the handshake's next token; after
   * a success, for a per-request scheme, one made for this request (Digest: its own uri and nonce
   * count — the first request's header again would be a replay; Basic: the same). Never logged.
   */
  async header(leg: LegInfo): Promise<ProxyCredentials | undefined> {
    if (this.#state === 'handshaking') return this.#pending === undefined ? undefined : { value: this.#pending };
    const mechanism = this.#mechanism;
    // Nothing goes unasked: the proxy's 407 is then no refusal of credentials taken up (adopt).
    if (this.#state !== 'done' || mechanism?.level !== 'request' || !mechanism.proactive) {
      this.#adopted = false;
      return undefined;
    }
    try {
      const own = mechanism.createContext(leg);
      return { value: await own.step(undefined, leg), own };
    } catch {
      this.#adopted = false;
      return undefined; // (a used-up nonce) the proxy's 407 starts a new handshake
    }
  }

  /**
   * The proxy let through a request that carried credentials of its own ({@link header} after a
   * success): its answer is checked as a handshake's last is (Digest: Proxy-Authentication-Info's
   * rspauth and nextnonce). Throws {@link MutualAuthError} when the proxy fails the proof. True when
   * it made the connection's {@link holder} another identity (`leave`: the request's leave, R4/S6).
   */
  async verify(own: MechanismContext, headers: Headers, leg: LegInfo, leave: Ticket | undefined): Promise<boolean> {
    try {
      await this.#finish(own, headers, leg);
    } catch (err) {
      this.#emit('failed', 1, own, { failure: 'proof' });
      throw err;
    }
    // Let through: they are this connection's now, and a later 407 is answered as after a handshake.
    this.#adopted = false;
    // One leg that authenticated one request: reported as an origin's per-request scheme is.
    this.#emit('per-request', 1, own, own.identity === undefined ? {} : { identity: own.identity });
    // The proxy holds the connection as who these credentials name: a connection that took up a
    // per-request scheme ({@link adopt}) has no handshake of its own to say it (S6).
    const identity = own.identity;
    const mechanism = this.#mechanism;
    if (identity === undefined || mechanism === undefined || this.#holder?.identity === identity) return false;
    this.#holder = { mechanism, identity, admitted: leave?.admitted ?? 0 };
    return true;
  }

  /** `context`'s check of the proxy's answer: its scheme's last Proxy-Authenticate and Proxy-Authentication-Info. */
  #finish(context: MechanismContext, headers: Headers, leg: LegInfo): Promise<void> {
    const key = this.#mechanism?.scheme.toLowerCase();
    const final = readChallenges(headers, true).find((c) => c.schemeKey === key);
    return context.finish(final, leg, readAuthenticationInfo(headers, true));
  }

  /**
   * Whether {@link answer} would answer this 407 rather than throw, as far as can be told before a
   * mechanism runs (one that turns out unusable when tried is not seen): the running handshake's
   * next token, or a configured mechanism for an offered scheme.
   */
  canAnswer(headers: Headers): boolean {
    const offered = readChallenges(headers, true);
    if (this.#state === 'handshaking' && this.#mechanism && this.#context) {
      const key = this.#mechanism.scheme.toLowerCase();
      const next = offered.find((c) => c.schemeKey === key);
      return challengeAsks(this.#context, next) !== 'refused';
    }
    return this.#proxy.mechanisms.choose(offered, this.#excluded)?.mechanism !== undefined;
  }

  /** The schemes this 407 offers that were found unusable on this connection, each with why. */
  unusableIn(headers: Headers): { readonly scheme: string; readonly error: MultilegError }[] {
    const offered = new Set(readChallenges(headers, true).map((c) => c.schemeKey));
    return [...offered].flatMap((key) => this.#unusable.get(key) ?? []);
  }

  /**
   * A 407 that goes to the caller unanswered (or a leg that failed) ends the running handshake: the
   * next request starts anew. A handshake that sent credentials is reported as failed (`failure`:
   * why, `error` unless told).
   */
  giveUp(failure: 'refused' | 'error' = 'error'): void {
    if (this.#state === 'handshaking') this.#end('failed', { failure });
    this.#state = 'idle';
    this.#opening = false;
  }

  /**
   * The running handshake ended with `err`, thrown by the caller or here (a timeout, a lost
   * connection, the proxy's refusal): reported as failed, once. Nothing when none is running.
   */
  abandon(err: unknown): void {
    this.#end('failed', { failure: proxyFailure(err) });
  }

  /**
   * The connection ended under the running handshake's leg and the request goes again on another
   * (a per-request scheme's next leg, a proxy that closes after its 407): the handshake goes on
   * there, with that connection's own report, and is not reported here (as an origin's relocated one).
   */
  moved(): void {
    this.#sent = 0;
  }

  /**
   * The proxy refused the credentials a request carried on their own (`own`: {@link header}'s
   * context, after a success): that request's one-leg handshake failed, as an origin's per-request
   * one does.
   */
  refusedOwn(own: MechanismContext): void {
    this.#emit('failed', 1, own, { failure: 'refused' });
  }

  /** Answers a 407: the first leg of a new handshake, or the next leg of the running one. Throws when it cannot. */
  async answer(headers: Headers, leg: LegInfo): Promise<void> {
    try {
      await this.#answer(headers, leg);
    } catch (err) {
      // The running handshake ends here (refused, a bad token, past limits.maxLegs); one whose first
      // leg could not be made sent nothing, and is no handshake to report.
      this.abandon(err);
      throw err;
    }
  }

  async #answer(headers: Headers, leg: LegInfo): Promise<void> {
    const offered = readChallenges(headers, true);
    if (this.#adopted && this.#mechanism) {
      // The credentials taken up unasked ({@link adopt}) drew a 407: refused, as a handshake's last
      // leg refused (R4: not sent again here) — unless a Digest nonce merely went stale.
      this.#adopted = false;
      const key = this.#mechanism.scheme.toLowerCase();
      const again = offered.find((c) => c.schemeKey === key);
      // (A 407 that no longer offers the scheme refused nothing: the proxy changed its schemes.)
      if (again !== undefined && again.params.stale?.toLowerCase() !== 'true') {
        this.#state = 'idle';
        // One leg, a request's own: its per-request handshake was refused.
        this.#emit('failed', 1, undefined, { failure: 'refused' });
        throw rejected(this.#proxy, this.#mechanism.scheme, offeredSchemes(offered));
      }
    }
    if (this.#state === 'handshaking' && this.#mechanism && this.#context) {
      const key = this.#mechanism.scheme.toLowerCase();
      const next = offered.find((c) => c.schemeKey === key);
      // A token asks for the next leg, unless it is the proxy's refusal (an SPNEGO reject).
      const asks = challengeAsks(this.#context, next);
      if (asks === 'next-leg') {
        await this.#step(next, leg);
        return;
      }
      if (asks === 'run-again') {
        // Refused credentials the mechanism has renewed since (a ticket under the proxy's rotated
        // key, dropped): the handshake runs again on this connection with the new ones, as an
        // origin's does; the mechanism says so once (R4). Their leave (the proof's) still holds.
        log.proxy('%s %s: refused credentials renewed since: running the handshake again', this.#proxy.origin, key);
        await this.#again(leg);
        return;
      }
      if (this.opening && next?.token68 === undefined) {
        // The proxy took no part in the opening (a bare NTLM challenge, or other schemes only): its
        // 407 is answered as a bare CONNECT's would have been, and later tunnels wait for the 407.
        this.#opening = false;
        this.#proxy.openedInVain = true;
        // It took no part: nothing to report (as an origin's unanswered opening, C6).
        this.#sent = 0;
      } else {
        this.#state = 'idle';
        // A 407 to the opening leg of a multi-leg handshake (an NTLM NEGOTIATE) refused no credential.
        const opening = atOpening(this.#mechanism, this.#context, this.#legs);
        throw rejected(this.#proxy, this.#mechanism.scheme, offeredSchemes(offered), !opening);
      }
    }
    // A new handshake (a connection-bound success that is challenged again starts over, once per answer()).
    this.#state = 'idle';
    this.#opening = false;
    this.#legs = 0;
    this.#sent = 0;
    for (;;) {
      const chosen = this.#proxy.mechanisms.choose(offered, this.#excluded);
      if (!chosen?.mechanism) {
        throw new ProxyAuthenticationError(
          this.#proxy.origin,
          this.#excluded.size
            ? `no offered scheme could be used (${[...this.#unusable.values()].map(whyUnusable).join('; ')}); ${
                // Given credentials are there: what is missing is a ticket, or a scheme their password answers.
                this.#proxy.account !== undefined
                  ? withCredentials(this.#unusable.values())
                  : 'give proxy.credentials or a Kerberos ticket'
              }`
            : this.#proxy.account !== undefined
              ? 'none of the offered schemes is configured; check proxy.schemes'
              : 'none of the offered schemes is configured; give proxy.credentials (or proxy.negotiate with a Kerberos ticket) and check proxy.schemes',
          offeredSchemes(offered),
        );
      }
      const { mechanism, challenge } = chosen as { mechanism: Mechanism; challenge: Challenge };
      try {
        this.#mechanism = mechanism;
        this.#context = mechanism.createContext(leg);
        this.#first = challenge;
        await this.#step(challenge, leg);
        // What the proxy asks for, for its next connections (a connection-bound scheme is this one's
        // alone). Chosen because a scheme offered ahead of it cannot run here (no Kerberos ticket):
        // only for as long as that is remembered on an origin, then that scheme is tried again.
        this.#proxy.perRequest = mechanism.level === 'request' ? mechanism : undefined;
        this.#proxy.perRequestUntil = offered.some((c) => this.#excluded.has(c.schemeKey))
          ? Date.now() + UNUSABLE_MEMORY_MS
          : Number.POSITIVE_INFINITY;
        return;
      } catch (err) {
        if (this.#legs === 0 && cannotRunHere(err)) {
          log.proxy('%s scheme %s unusable: %s', this.#proxy.origin, mechanism.scheme, err.code);
          this.#excluded.add(challenge.schemeKey);
          this.#unusable.set(challenge.schemeKey, { scheme: mechanism.scheme, error: err });
          this.#legs = 0;
          this.#state = 'idle';
          continue;
        }
        this.#state = 'idle';
        throw err;
      }
    }
  }

  /**
   * The connection was lost in the middle of a connection-bound handshake: start it again (once) on
   * a new connection. Returns false when it was restarted already.
   */
  restart(leg: LegInfo): Promise<boolean> {
    if (this.#restarted || !this.#mechanism) return Promise.resolve(false);
    this.#restarted = true;
    return this.#again(leg).then(() => true);
  }

  /** The running mechanism's handshake from its first leg again, with a new context. */
  #again(leg: LegInfo): Promise<void> {
    this.#context = this.#mechanism!.createContext(leg);
    this.#legs = 0;
    return this.#step(this.#first, leg);
  }

  /**
   * A non-407 answer to a request that carried credentials: the handshake succeeded; verify a final
   * token. `leave`: the leave to send the credentials it ran under (credentials go only with leave:
   * the callers always have one; without, the identity counts as the oldest), whose place orders the
   * identity it proved.
   */
  async succeeded(headers: Headers, leg: LegInfo, leave: Ticket | undefined): Promise<void> {
    // Both callers (tunnel, forward) call this only after a leg with credentials, i.e. mid-handshake;
    // the guard keeps a stray call from finishing a context twice and is not reached by them.
    if (this.#state !== 'handshaking' || !this.#mechanism || !this.#context) return;
    this.#state = 'done';
    log.proxy('%s authenticated with %s in %d legs', this.#proxy.origin, this.#mechanism.scheme, this.#legs);
    const mechanism = this.#mechanism;
    const context = this.#context;
    try {
      await this.#finish(context, headers, leg);
    } catch (err) {
      this.#end('failed', { failure: 'proof' });
      throw err;
    }
    const identity = context.identity;
    this.#holder = identity !== undefined ? { mechanism, identity, admitted: leave?.admitted ?? 0 } : undefined;
    this.#end(mechanism.level === 'request' ? 'per-request' : 'session', identity === undefined ? {} : { identity });
  }

  /** Reports the running handshake's end, once (see {@link #sent}); nothing when none ran. */
  #end(
    outcome: ProxyHandshake['outcome'],
    how: { readonly failure?: ProxyHandshake['failure']; readonly identity?: string },
  ): void {
    const legs = this.#sent;
    if (legs === 0) return;
    this.#sent = 0;
    this.#emit(outcome, legs, this.#context, how);
  }

  /** Tells the listener of a handshake of {@link #mechanism}'s that ended (`context`'s, where known). */
  #emit(
    outcome: ProxyHandshake['outcome'],
    legs: number,
    context: MechanismContext | undefined,
    how: { readonly failure?: ProxyHandshake['failure']; readonly identity?: string },
  ): void {
    const mechanism = this.#mechanism;
    if (!this.#onHandshake || !mechanism) return;
    const spn = context?.spn;
    const fallbackReason = context?.fallbackReason;
    this.#onHandshake({
      origin: this.#proxy.origin,
      scheme: mechanism.scheme,
      legs,
      outcome,
      ...(how.identity !== undefined ? { identity: how.identity } : {}),
      ...(how.failure ? { failure: how.failure } : {}),
      ...(spn ? { spn } : {}),
      ...(fallbackReason ? { fallbackReason } : {}),
    });
  }

  async #step(challenge: Challenge | undefined, leg: LegInfo): Promise<void> {
    const mechanism = this.#mechanism!;
    if (this.#legs >= this.#maxLegs) {
      this.#state = 'idle';
      throw new LegLimitError(this.#maxLegs, `proxy ${mechanism.scheme}`);
    }
    let header: string;
    try {
      header = await this.#context!.step(challenge, leg);
    } catch (err) {
      // The mechanism's own words for a bad token say "server": this one came from the proxy.
      if (err instanceof InvalidTokenError) throw new InvalidTokenError(err.what, this.#proxy.origin);
      if (err instanceof MultilegError) throw err;
      throw new InvalidTokenError(`${mechanism.scheme} Proxy-Authenticate challenge`, this.#proxy.origin);
    }
    this.#legs += 1;
    this.#sent += 1;
    this.#pending = header;
    this.#state = 'handshaking';
    log.proxy('%s %s leg %d', this.#proxy.origin, mechanism.scheme, this.#legs);
  }
}
