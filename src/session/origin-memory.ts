import type { Challenge } from '../challenge/types.ts';
import { HandshakeTimeoutError, MultilegError, ownCopy } from '../errors.ts';
import { LapsingMap } from '../lapsing-map.ts';
import { TICKET_RECHECK_MS, ticketFixes } from '../mechanisms/negotiate/errors.ts';
import { opensUnasked } from '../mechanisms/registry.ts';
import type { Mechanism } from '../mechanisms/types.ts';
import type { ClientCertificate } from '../options.ts';
import type { ProbeAnswer } from './acceptable-issuers.ts';
import type { CertificateDemand } from './client-certificate.ts';
import { CredentialProof, UNUSABLE_MEMORY_MS } from './credential-proof.ts';
import type { RefusalKeeping } from './refusal-memory.ts';

export { TICKET_RECHECK_MS, UNUSABLE_MEMORY_MS };

/**
 * How long a KDC that did not answer is remembered here (R4): a handshake whose GSS-API step
 * outlasted limits.handshakeTimeout, or failed with MULTILEG_KRB_KDC_UNREACHABLE. The requests
 * behind it fail at once with its error rather than each waiting out the timeout on the same KDC
 * (review r43: 5, 10, … 35 s). 5 s: a burst and the waiters it released fall inside it, while a
 * KDC back up (a restart, a network blip) is tried again within seconds; and trying sooner would
 * only queue behind the calls still stuck on the dead KDC (ffi.ts GSS_WORKER_CALLS), which MIT
 * holds for ~27 s anyway.
 */
export const KDC_RECHECK_MS = 5_000;

/** Whether `error` says a KDC (or the DNS GSS-API needed) did not answer, rather than the server. */
export function kdcSilent(error: Error): boolean {
  return (
    (error instanceof HandshakeTimeoutError && error.inMechanismStep) ||
    (error instanceof MultilegError && error.code === 'MULTILEG_KRB_KDC_UNREACHABLE')
  );
}

/**
 * Until when (a `Date.now()` time) a scheme that could not run with `error` is skipped, by an
 * origin or a proxy (R4): a second when a kinit mends it (TICKET_RECHECK_MS), KDC_RECHECK_MS when
 * a KDC did not answer, else UNUSABLE_MEMORY_MS.
 */
export function unusableUntil(error: Error, now = Date.now()): number {
  const kinitMends = error instanceof MultilegError && ticketFixes(error.code);
  return now + (kinitMends ? TICKET_RECHECK_MS : kdcSilent(error) ? KDC_RECHECK_MS : UNUSABLE_MEMORY_MS);
}

const NONE: ReadonlyArray<readonly [string, Error]> = [];

/**
 * Most protection spaces one origin remembers (least recently used forgotten first): a server that
 * challenges in ever new directories costs a bare first request there again, never unbounded memory.
 */
export const MAX_PROTECTION_SPACES = 64;

/**
 * Where the server may resolve a path elsewhere than its text says, out of any space it seems
 * inside: an encoded slash or backslash (`%2f`, `%5c`: some servers decode them first), a
 * backslash (IIS reads it as `/`), or a dot segment (`/../`, `/./`, `%2e`, and `/..;x/`, which
 * Tomcat reads as `/../`). One regular expression: it runs for every request inside a space.
 */
const ELSEWHERE = /%2f|%5c|\\|\/(?:\.|%2e){1,2}(?:;[^/]*)?(?:\/|$)/i;

/**
 * What the agent has learnt about one origin, shared by its sessions: which scheme it wants and
 * whether that authenticates sessions or requests (C4), and whether authentication must use
 * HTTP/1.1 (H2, legacy servers), for how long.
 */
export class OriginMemory {
  scheme: string | undefined;
  /** Set once the origin asked for a client certificate and one was chosen (T3): sessions present it. */
  clientCertificate: ClientCertificate | undefined;
  /**
   * What the probe read of the server's request for a client certificate (T3): whether it asks in
   * TLS, and its acceptable CAs. Asked by the first Transport challenge (a caller's selector), or
   * by a connection the server refused as one that wants a certificate, and kept, unless the probe
   * could not tell (then the next asks again).
   */
  certificateRequest: Promise<ProbeAnswer> | undefined;
  /**
   * The answer to a certificate the server demanded in TLS (T3) while it is being given: the
   * requests whose connections it refused meanwhile share it, so the selector is asked once.
   */
  certificateDemand: Promise<CertificateDemand> | undefined;
  mode: 'session' | 'per-request' | undefined;
  #http1Until = 0;
  /** Whether the agent's credentials work here: one handshake at a time until they do (account lockout). */
  readonly proof: CredentialProof;
  readonly #ttl: number;
  /**
   * Protection spaces of the per-request schemes that succeeded here (Basic, Digest; level
   * `request`): path prefix → scheme. Only a request inside one carries such a scheme's
   * credentials before a 401 asks for them (S1, {@link protectionSpaces}).
   */
  readonly #spaces = new Map<string, string>();
  /** Schemes (lower-case) that could not run for this origin, why, and until when (R4). */
  readonly #unusable = new LapsingMap<string, Error>();

  /**
   * `keeping`: where refusals of the agent's password here are kept beyond it (AgentOptions.refusalMemory).
   * `proof`: another origin's, shared (the addresses of one name behind undici's `dns` interceptor).
   */
  constructor(http1Ttl: number, origin = 'the origin', keeping?: RefusalKeeping, proof?: CredentialProof) {
    this.#ttl = http1Ttl;
    this.proof =
      proof ??
      new CredentialProof(
        `the outcome of another request's handshake with the agent's credentials at ${origin} (they are tried there one at a time until proved: a wrong password locks accounts)`,
        keeping,
      );
  }

  get requiresHttp1(): boolean {
    return this.#http1Until !== 0 && Date.now() < this.#http1Until;
  }

  rememberHttp1(): void {
    this.#http1Until = Date.now() + this.#ttl;
  }

  /** A scheme could not run here (R4): the requests that follow skip it for a while ({@link unusableUntil}). */
  markUnusable(schemeKey: string, error: Error): void {
    const until = unusableUntil(error);
    this.#unusable.set(schemeKey, rememberedUntil(error, schemeKey, until), until);
  }

  /** Some scheme was found unusable here lately (the fast path leaves such requests to the steps). */
  get hasUnusable(): boolean {
    return this.#unusable.any;
  }

  /** Schemes (lower-case) that cannot run here now, with why. */
  unusable(): ReadonlyArray<readonly [string, Error]> {
    return this.#unusable.any ? this.#unusable.live() : NONE;
  }

  /**
   * Whether the agent's credentials are still to be proved here: no handshake succeeded yet (or one
   * was refused since) and the server challenges (or has not answered yet). Each HTTP/1.1 connection
   * runs its own handshake, so the pool opens one at a time meanwhile: a wrong password is tried
   * once, not once per connection of a burst (an Active Directory account locks after a few).
   */
  get unproven(): boolean {
    return (this.mode === undefined || !this.proof.proved) && !this.unchallenged;
  }

  /**
   * The server refused the credentials (a final 401) when they were not proved here, or twice in a
   * row after they were: requests go without them for UNUSABLE_MEMORY_MS (doubling while they stay
   * refused, CredentialProof), then one tries again (R4).
   */
  get credentialsRefused(): boolean {
    return this.proof.refused;
  }

  /**
   * The agent's credentials were replaced: they start unproved and unrefused here, and schemes
   * found unusable with the old ones (a Kerberos ticket of another user than the old name) are
   * tried again. What the server wants (scheme, mode, HTTP/1.1) is the server's, and stays.
   */
  credentialsChanged(): void {
    this.proof.reset();
    this.#unusable.clear();
    // (Read with the old credentials' mechanisms: the new ones learn the origin afresh.)
    this.stalledChallenges = undefined;
  }

  /** The remembered scheme was refused: learn it again from the next challenge. */
  forgetScheme(): void {
    this.scheme = undefined;
    this.mode = undefined;
    this.multilegPerRequest = false;
  }

  /**
   * Per-request mode where each request's handshake takes more than one leg (NTLM inside
   * Negotiate): those handshakes hold the sessions' slots, so the pool spreads them over more sessions.
   */
  multilegPerRequest = false;

  /**
   * A bare request here got a final response that was not a 401, and no 401 came since: a request
   * body is unlikely to be needed twice, so a stream is written as it comes (a copy kept, C10).
   */
  unchallenged = false;
  /**
   * The challenges of a bare request's 401 here whose body did not end within
   * limits.handshakeTimeout (cut, and on HTTP/1.1 its connection with it), those of connection-bound
   * schemes only (NTLM, Negotiate: nothing per request or per path, no token): until a handshake
   * succeeds here, or a bare 401's body ends in time, a request on a new session answers them at
   * once rather than wait that long again for the same 401 (R1). Cleared by {@link rememberScheme},
   * {@link credentialsChanged}, and a bare 401 whose body ends in time (exchange.ts afterSend).
   */
  stalledChallenges: readonly Challenge[] | undefined;
  /**
   * A first leg led without any 401 here (the sole scheme's opening, {@link opensUnasked}) met a
   * server that took no part in it: requests here wait for a 401 again.
   */
  openedInVain = false;

  /**
   * Whether a request may lead `sole`'s handshake before any 401 here, as curl --ntlm does: the
   * agent may use only that scheme, it is NTLM (its NEGOTIATE carries no password: a server that
   * wants no NTLM learns nothing, R4), and nothing is known of the origin yet. Saves the bare
   * first round trip: a single request takes 2 legs rather than 3.
   */
  opensUnasked(sole: Mechanism | undefined): sole is Mechanism {
    return opensUnasked(sole) && this.scheme === undefined && !this.unchallenged && !this.openedInVain;
  }

  /**
   * The most incomplete security contexts the origin's server accepted on one session, when it
   * refused more (draft §3.1): new sessions take no more handshake slots than this.
   */
  contextCap: number | undefined;

  /**
   * The per-request scheme whose credentials `path` may carry unasked: that of the longest
   * remembered protection space the path lies in, or none (then the request goes bare, and a 401
   * asks). A path the server may resolve to another space (a dot segment, an encoded slash) is in none.
   */
  spaceScheme(path: string): string | undefined {
    if (this.#spaces.size === 0) return undefined;
    const best = this.#longest(path);
    if (best === undefined) return undefined;
    const end = path.search(/[?#]/);
    if (ELSEWHERE.test(end < 0 ? path : path.slice(0, end))) return undefined;
    const scheme = this.#spaces.get(best)!;
    // Least recently used last, the first to go at the bound.
    this.#spaces.delete(best);
    this.#spaces.set(best, scheme);
    return scheme;
  }

  /** `scheme` (a per-request one) succeeded for these path prefixes ({@link protectionSpaces}). */
  rememberSpaces(scheme: string, prefixes: readonly string[]): void {
    // Last to first: the first (the directory where it succeeded) is the most recently used, and a
    // Digest domain longer than the bound crowds out its own last URIs, not that directory.
    for (let i = prefixes.length - 1; i >= 0; i--) {
      const prefix = prefixes[i]!;
      // Inside a space of the same scheme already (a proactive success): no entry to crowd others out.
      const covering = this.#longest(prefix);
      if (covering !== undefined && covering !== prefix && this.#spaces.get(covering) === scheme) continue;
      this.#spaces.delete(prefix);
      this.#spaces.set(prefix, scheme);
      if (this.#spaces.size > MAX_PROTECTION_SPACES) this.#spaces.delete(this.#spaces.keys().next().value!);
    }
  }

  /** The longest remembered space `path` lies in. */
  #longest(path: string): string | undefined {
    let best: string | undefined;
    for (const prefix of this.#spaces.keys()) {
      if (path.startsWith(prefix) && (best === undefined || prefix.length > best.length)) best = prefix;
    }
    return best;
  }

  /** `scheme` is no longer offered at `path`: the spaces of that scheme it lies in are forgotten. */
  forgetSpaces(scheme: string, path: string): void {
    for (const [prefix, s] of this.#spaces) if (s === scheme && path.startsWith(prefix)) this.#spaces.delete(prefix);
  }

  rememberScheme(scheme: string, mode: 'session' | 'per-request', legs = 1): void {
    this.stalledChallenges = undefined;
    this.scheme = scheme;
    this.mode = mode;
    this.multilegPerRequest = mode === 'per-request' && legs > 1;
  }
}

/**
 * The protection space a per-request scheme's success at `path` opens (path prefixes, S1): the
 * directory of the path, as RFC 7617 §2.2 has it for Basic (`/basic/y` → `/basic/`); for Digest
 * also the same-origin URIs of the challenge's `domain`, or the whole origin when it names none
 * (RFC 7616 §3.3). A proactive leg (no challenge) was inside a space already: its directory only.
 */
export function protectionSpaces(origin: string, path: string, challenge: Challenge | undefined): string[] {
  const query = path.search(/[?#]/);
  const bare = query < 0 ? path : path.slice(0, query);
  const spaces = [bare.slice(0, bare.lastIndexOf('/') + 1) || '/'];
  if (challenge?.schemeKey !== 'digest') return spaces;
  const domain = challenge.params.domain?.trim();
  if (!domain) return ['/'];
  const own = new URL(origin).origin;
  for (const uri of domain.split(/\s+/)) {
    try {
      const url = new URL(uri, own);
      if (url.origin === own && !spaces.includes(url.pathname)) spaces.push(url.pathname);
    } catch {
      // Not a URI: no space (T1: malformed input is skipped).
    }
  }
  return spaces;
}

/**
 * The error the requests after the first are failed with (R4): its message says it is remembered and
 * until when, so that a kinit or a fixed keytab that seems not to work is seen to wait its turn.
 */
function rememberedUntil(error: Error, schemeKey: string, until: number): Error {
  const copy = ownCopy(error);
  const time = new Date(until).toISOString().slice(11, 19);
  copy.message = `${error.message} (remembered for this origin: ${schemeKey} is tried here again from ${time} UTC)`;
  return copy;
}
