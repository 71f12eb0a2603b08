/**
 * A gateway passing its clients' own NTLM through one agent (S6, R4): each caller's handshake is two
 * independent requests to the agent, a NEGOTIATE and, after the server's CHALLENGE, an AUTHENTICATE
 * that answers that CHALLENGE and no other. The server reads the AUTHENTICATE against the context of
 * the connection (HTTP/1.1) or Auth-ID (HTTP/2) it arrives on: on any other, a right password reads
 * as a wrong one ("NTProofStr mismatch"), which a domain controller counts toward the account's
 * lockout. So the agent pairs the legs itself: it remembers each CHALLENGE a caller's NEGOTIATE got,
 * with the session that carried it, and sends the AUTHENTICATE there. An NTLMv2 AUTHENTICATE echoes
 * the CHALLENGE's TargetInfo, MsvAvTimestamp included, in its NTLMv2 response (MS-NLMP 2.2.2.7,
 * 3.3.2): that, or the Auth-ID the caller relays (C3), names the CHALLENGE. An AUTHENTICATE that
 * names none, or more than one, is sent nowhere ({@link NtlmUnpairedError}).
 */
import { readChallenges } from '../challenge/index.ts';
import { MultilegError } from '../errors.ts';
import type { ResponseHeaders } from '../handshake/leg.ts';
import type { HeaderMap } from '../headers.ts';
import { AvId, decodeAuthenticate, decodeAvPairs, decodeChallenge } from '../mechanisms/ntlm/messages.ts';
import type { Limits } from '../options.ts';

/**
 * A dispatch option of the agent's (`dispatcher.request({ …, callerConnection })`, or undici's
 * `request(url, { dispatcher, callerConnection })`, which pass unknown options through to
 * `dispatch`): the gateway's own name for the client connection a request came in on — its socket
 * object, or any string the gateway keeps per client connection. A client cannot forge it, as it
 * can forge everything in its AUTHENTICATE (R4): given on a caller's NTLM NEGOTIATE, the CHALLENGE
 * it gets is given only to an AUTHENTICATE dispatched with an equal one (`===`), so that another
 * client who guesses its pairing key (the TargetInfo, MsvAvTimestamp included, which is a clock
 * read) cannot take it and fail that login. Node's built-in `fetch` and undici's `fetch` pass no
 * such option: a gateway using them composes a dispatcher per client connection
 * (`agent.compose((dispatch) => (opts, handler) => dispatch({ ...opts, callerConnection }, handler))`).
 */
export interface CallerConnectionOption {
  /** The client connection the request came in on (see {@link CallerConnectionOption}); unset: pairing by key and Auth-ID alone. */
  readonly callerConnection?: string | number | object;
}

/** The `callerConnection` of a request's dispatch options, if it names one. */
export function callerConnectionOf(opts: object): string | number | object | undefined {
  const c = (opts as CallerConnectionOption).callerConnection;
  return typeof c === 'string' || typeof c === 'number' || (typeof c === 'object' && c !== null) ? c : undefined;
}

/** Why an AUTHENTICATE could not be paired with the CHALLENGE it answers. */
export type UnpairedReason = 'no-timestamp' | 'no-record' | 'ambiguous' | 'connection-gone' | 'proxy-leg';

const WHY: Record<UnpairedReason, string> = {
  'no-timestamp':
    'it carries no NTLMv2 response echoing the CHALLENGE (NTLMv1 or LM, or no MsvAvTimestamp) and no Auth-ID',
  'no-record':
    'no CHALLENGE this agent passed on matches it (its NEGOTIATE went through another agent or process, the CHALLENGE was older than limits.handshakeTimeout, or it was given up after ABANDONED_CHALLENGE_GRACE_MS because every connection was held by pending CHALLENGEs while other requests waited)',
  ambiguous: 'more than one CHALLENGE this agent passed on matches it (the server gave several the same TargetInfo)',
  'connection-gone': 'the connection that carried its CHALLENGE has ended, and the server context with it',
  'proxy-leg':
    "the request's own Proxy-Authorization carries an NTLM leg too, which decides its proxy connection (the proxy's handshake runs on it), not the connection that carried the origin's CHALLENGE",
};

/**
 * A caller's own NTLM AUTHENTICATE (`Authorization: NTLM …`, or inside Negotiate) that the agent
 * cannot pair with the connection whose CHALLENGE it answers (`reason`): it was sent nowhere. On any
 * other connection the server would read it against another handshake and count a wrong password
 * toward that account's lockout (R4). A gateway answers its client as to a refused handshake (a 401
 * with `WWW-Authenticate: NTLM`), so that the client starts again with a NEGOTIATE.
 */
export class NtlmUnpairedError extends MultilegError {
  readonly reason: UnpairedReason;
  /**
   * The proxy (`http://host:port`) when the AUTHENTICATE not sent was in the caller's own
   * `Proxy-Authorization`; undefined for one in `Authorization` (`proxy-leg` included: the origin's,
   * kept from its connection by an NTLM leg in `Proxy-Authorization` beside it).
   */
  readonly proxy: string | undefined;
  /** `at`: the origin, or `{ proxy }` for an AUTHENTICATE in a caller's own `Proxy-Authorization`. */
  constructor(at: string | { readonly proxy: string }, reason: UnpairedReason) {
    const proxy = typeof at !== 'string';
    // S6/H1: the two handshakes run one after the other on one proxy connection, so the fix is to
    // send the origin's AUTHENTICATE alone (the proxy's login, once answered, holds for it there).
    const fix =
      reason === 'proxy-leg'
        ? "Send the origin's AUTHENTICATE without Proxy-Authorization: once the proxy answered its own NTLM AUTHENTICATE other than 407, its login holds for the connection that carried the origin's CHALLENGE, where the agent sends it"
        : `Have the client start its handshake again (answer it ${proxy ? '407 with Proxy-Authenticate' : '401 with WWW-Authenticate'}: NTLM), keep each client's legs on one agent (no credentials of its own, negotiate: false)${proxy ? '' : ", and relay the server's Auth-ID header both ways"}`;
    super(
      'MULTILEG_NTLM_UNPAIRED',
      `a caller's own NTLM AUTHENTICATE to ${proxy ? `proxy ${at.proxy}` : at} was not sent: ${WHY[reason]}; sent on another connection the ${proxy ? 'proxy' : 'server'} would check it against another handshake and count a wrong password toward the account's lockout. ${fix}`,
    );
    this.reason = reason;
    this.proxy = proxy ? at.proxy : undefined;
  }
}

/** A header's one value (the first of several). */
const headerValue = (v: string | string[] | undefined): string | undefined => (typeof v === 'string' ? v : v?.[0]);

/** One of a caller's NTLM legs, as read from its own `Authorization`. */
export type CallerNtlmLeg =
  | {
      readonly kind: 'opening';
      /** The gateway's client connection it came in on ({@link CallerConnectionOption}), if given. */
      readonly caller: string | number | object | undefined;
    }
  | {
      readonly kind: 'continuation';
      /** The gateway's client connection it came in on ({@link CallerConnectionOption}), if given. */
      readonly caller: string | number | object | undefined;
      /** The CHALLENGE's TargetInfo as the NTLMv2 response echoes it (see {@link targetInfoKey}); none for NTLMv1/LM. */
      readonly key: string | undefined;
      /** The Auth-ID the caller sent with it (C3), if any. */
      readonly authId: string | undefined;
    };

/**
 * SPNEGO's decoders, loaded for the first caller whose own `Authorization` is `Negotiate`
 * ({@link loadSpnego}): a process that only ever speaks NTLM (the command's NTLM request) loads no
 * SPNEGO code.
 */
let spnego: typeof import('../mechanisms/spnego/tokens.ts') | undefined;

/** Whether `headers` carry a caller's own `Negotiate` credential whose SPNEGO is not readable yet. */
export function needsSpnego(headers: HeaderMap): boolean {
  const negotiate = (v: string | string[] | undefined) => /^[ \t]*Negotiate[ \t]/i.test(headerValue(v) ?? '');
  return spnego === undefined && (negotiate(headers.authorization) || negotiate(headers['proxy-authorization']));
}

/** Loads SPNEGO's decoders (see {@link needsSpnego}). */
export async function loadSpnego(): Promise<void> {
  spnego ??= await import('../mechanisms/spnego/tokens.ts');
}

/**
 * Whether a `Negotiate` challenge token is an SPNEGO reject (negState `reject`): a refusal, not a next
 * leg. Read with the decoders {@link loadSpnego} loaded for the caller whose own Negotiate it answers.
 */
export function isSpnegoReject(token68: string): boolean {
  return spnego?.isNegTokenReject(token68) ?? false;
}

/** The NTLMSSP message in an `NTLM` or `Negotiate` credential or challenge token, bare or in SPNEGO. */
function ntlmsspOf(scheme: string, token: Buffer): Buffer | undefined {
  if (token.subarray(0, 8).toString('latin1') === 'NTLMSSP\0') return token;
  // (A Negotiate challenge to an NTLM credential, before any caller sent Negotiate: not read.)
  if (scheme !== 'negotiate' || spnego === undefined) return undefined;
  try {
    if (token[0] === 0x60) {
      const init = spnego.decodeNegTokenInit(token);
      return init.mechTypes[0] === spnego.OID_NTLMSSP ? init.mechToken : undefined;
    }
    if (token[0] === 0xa1) return spnego.decodeNegTokenResp(token).responseToken;
  } catch {
    // Not SPNEGO we can read: not an NTLM leg.
  }
  return undefined;
}

const CREDENTIAL = /^[ \t]*(NTLM|Negotiate)[ \t]+([A-Za-z0-9+/]+={0,2})[ \t]*$/i;

/**
 * The TargetInfo pairs the server chose (all but the client-owned MsvAvFlags, MsvAvSingleHost,
 * MsvAvTargetName and MsvAvChannelBindings, which a client adds or replaces), in id order: a
 * CHALLENGE's and the NTLMv2 response answering it read the same. Undefined without an
 * MsvAvTimestamp (nothing then tells two CHALLENGEs of one server apart).
 */
function targetInfoKey(pairs: readonly { id: number; value: Buffer }[]): string | undefined {
  const chosen = pairs.filter(
    (p) => p.id !== AvId.Flags && p.id !== AvId.SingleHost && p.id !== AvId.TargetName && p.id !== AvId.ChannelBindings,
  );
  if (!chosen.some((p) => p.id === AvId.Timestamp && p.value.length === 8)) return undefined;
  return chosen
    .map((p) => `${p.id}:${p.value.toString('hex')}`)
    .sort()
    .join(',');
}

/**
 * What a caller's own `Authorization` is, of an NTLM handshake: its opening NEGOTIATE, or an
 * AUTHENTICATE naming a user (a token that does not parse, or names nobody, counts against no
 * account: it goes as before, and the server refuses it). Undefined for anything else.
 */
export function callerNtlmLeg(headers: HeaderMap, caller?: string | number | object): CallerNtlmLeg | undefined {
  const authorization = headerValue(headers.authorization);
  const m = authorization === undefined ? null : CREDENTIAL.exec(authorization);
  if (!m) return undefined;
  const message = ntlmsspOf(m[1]!.toLowerCase(), Buffer.from(m[2]!, 'base64'));
  if (!message || message.length < 12) return undefined;
  const type = message.readUInt32LE(8);
  if (type === 1) return { kind: 'opening', caller };
  if (type !== 3) return undefined;
  let key: string | undefined;
  try {
    const auth = decodeAuthenticate(message);
    if (auth.user === '') return undefined;
    // NTProofStr (16), then the blob: versions 1 1, 6 reserved, timestamp, client challenge, 4 reserved, AV pairs.
    const blob = auth.ntResponse.subarray(16);
    if (auth.ntResponse.length > 24 && blob.length >= 32 && blob[0] === 1 && blob[1] === 1) {
      key = targetInfoKey(decodeAvPairs(blob.subarray(28)));
    }
  } catch {
    return undefined;
  }
  const authId = headerValue(headers['auth-id']);
  return { kind: 'continuation', key, authId, caller };
}

/** The key of the NTLM CHALLENGE a 401 (`proxy`: a 407) carries (bare NTLM, or Negotiate, raw or in SPNEGO), if any. */
export function challengeKey(headers: ResponseHeaders, proxy = false): string | undefined {
  for (const c of readChallenges(headers, proxy)) {
    if ((c.schemeKey !== 'ntlm' && c.schemeKey !== 'negotiate') || c.token68 === undefined) continue;
    const message = ntlmsspOf(c.schemeKey, Buffer.from(c.token68, 'base64'));
    if (!message) continue;
    try {
      return targetInfoKey(decodeChallenge(message).avPairs);
    } catch {
      // A CHALLENGE we cannot read: nothing to pair by.
    }
  }
  return undefined;
}

/** What a session must let the pairing see and do. */
export interface PairedSession {
  readonly closed: boolean;
  readonly protocol: 'h2' | 'http/1.1' | undefined;
  /** It takes no new request: a caller's answer there may have authenticated it (S6). */
  readonly retiring: boolean;
  /** CHALLENGEs recorded on it and not yet answered (kept by {@link ChallengeRecords}). */
  challengesPending: number;
  /** Its last pending CHALLENGE was answered or forgotten (a retiring session may close now). */
  challengesSettled(): void;
  /** Takes no new request, and closes once its pending CHALLENGEs are settled. */
  retire?(): void;
}

/** A CHALLENGE a caller's NEGOTIATE got on `session`, waiting for its AUTHENTICATE. */
export interface ChallengeRecord {
  readonly session: PairedSession;
  readonly key: string | undefined;
  readonly authId: string | undefined;
  /** The NEGOTIATE's `callerConnection`: only an AUTHENTICATE dispatched with the same takes it. */
  readonly caller: string | number | object | undefined;
  /** When it was recorded (Date.now()). */
  readonly at: number;
  readonly expires: number;
  /** Its AUTHENTICATE is on its way (no other may take it). */
  taken: boolean;
  /**
   * Its session retired (another caller's answer there may have authenticated it, S6): no longer
   * counted there, kept only so that its AUTHENTICATE is told `connection-gone`.
   */
  dropped: boolean;
}

/** At most this many CHALLENGEs are remembered per origin; the oldest goes first (its AUTHENTICATE then fails typed). */
export const MAX_CHALLENGE_RECORDS = 1024;

/**
 * How long a pending CHALLENGE keeps its connection or HTTP/2 session from
 * requests that wait for one while the lane can open no more (R1): a client's AUTHENTICATE follows
 * its CHALLENGE within milliseconds, so one older than this is most likely abandoned (a client that
 * sent only a NEGOTIATE), and left for limits.handshakeTimeout it would stall everyone's handshakes.
 */
export const ABANDONED_CHALLENGE_GRACE_MS = 1000;

/**
 * R4: more AUTHENTICATEs than this pairing with nothing (`no-record`) at one origin within
 * {@link MISS_WINDOW_MS} is logged once (multileg:pool): a client stepping the MsvAvTimestamp of its
 * own CHALLENGE to guess another's pairing key misses many times before it hits.
 */
export const MISS_BOUND = 16;
export const MISS_WINDOW_MS = 10_000;

/**
 * The CHALLENGEs of callers' handshakes at one origin that wait for their AUTHENTICATE: bounded in
 * number ({@link MAX_CHALLENGE_RECORDS}) and age (limits.handshakeTimeout, by one unref'd timer),
 * forgotten when their connection ends.
 */
export class ChallengeRecords {
  readonly #records: ChallengeRecord[] = [];
  readonly #limits: Limits;
  /** Told when records went (a session reserved by one may take requests again). */
  readonly #freed: () => void;
  #timer: NodeJS.Timeout | undefined;
  /** Wakes the waiters when the oldest pending CHALLENGE comes of age for {@link relieve}. */
  #reliefTimer: NodeJS.Timeout | undefined;
  /** The pool is closing: nothing more is recorded (no timer armed after {@link dispose}). */
  #disposed = false;
  /** `no-record` misses in the current window (R4), and whether this window was logged. */
  #misses = { since: 0, count: 0, logged: false };

  constructor(limits: Limits, freed: () => void) {
    this.#limits = limits;
    this.#freed = freed;
  }

  get size(): number {
    return this.#records.length;
  }

  /** Whether another pending CHALLENGE of another session, or of the same, has the same key (it could not be told apart). */
  collides(key: string | undefined): boolean {
    if (key === undefined) return false;
    this.#purge();
    return this.#records.some((r) => r.key === key && !r.dropped && !r.session.closed);
  }

  /**
   * `session` carried a CHALLENGE (`key`, `authId`) to a caller's NEGOTIATE (dispatched with
   * `caller`). A callers' session carries one caller's handshake at a time (the pool's #reserved): an
   * older record of it not yet taken is replaced. One that came on a session retired meanwhile is
   * kept dropped (its AUTHENTICATE fails `connection-gone`); after {@link dispose}, none is kept.
   */
  record(
    session: PairedSession,
    key: string | undefined,
    authId: string | undefined,
    caller?: string | number | object,
  ): ChallengeRecord | undefined {
    if (this.#disposed || (key === undefined && authId === undefined)) return undefined;
    this.#purge();
    const older = this.#records.findIndex((r) => r.session === session && !r.taken && !r.dropped);
    if (older >= 0) this.#remove(older);
    // At the bound the oldest not yet taken goes (one taken is on the wire: its session stays counted).
    if (this.#records.length >= MAX_CHALLENGE_RECORDS) {
      const oldest = this.#records.findIndex((r) => !r.taken);
      if (oldest >= 0) this.#remove(oldest);
    }
    const at = Date.now();
    const dropped = session.retiring;
    const record: ChallengeRecord = {
      session,
      key,
      authId,
      caller,
      at,
      expires: at + this.#limits.handshakeTimeout,
      taken: false,
      dropped,
    };
    this.#records.push(record);
    if (!dropped) session.challengesPending += 1;
    this.#arm();
    return record;
  }

  /**
   * S6: `session` retires — a caller's answer there (`answered`'s AUTHENTICATE, or any caller's
   * request) may have authenticated it as that caller, and the server would serve whatever else
   * comes on it as them. Every other caller's CHALLENGE recorded on it is dropped: its AUTHENTICATE
   * is never sent there (review r53: an AUTHENTICATE of made-up credentials, sent on a session
   * another's login authenticated, was served as them) and fails `connection-gone`. `kept`: that
   * caller's own records there (the CHALLENGE its request's origin NEGOTIATE just got), which stay.
   */
  retired(session: PairedSession, ...kept: readonly (ChallengeRecord | undefined)[]): void {
    let dropped = 0;
    for (const r of this.#records) {
      if (r.session !== session || kept.includes(r) || r.taken || r.dropped) continue;
      r.dropped = true;
      session.challengesPending -= 1;
      dropped += 1;
    }
    if (dropped > 0 && session.challengesPending === 0) session.challengesSettled();
  }

  /**
   * The record an AUTHENTICATE answers, taken for it; or why there is none: exactly one must match.
   * A record whose NEGOTIATE named its client connection (`callerConnection`) matches only an
   * AUTHENTICATE dispatched with the same one. The key, when the AUTHENTICATE has one, decides
   * alone, and an Auth-ID the caller relayed that disagrees with its record's is overruled (the
   * request goes with the record's, see exchange.ts `send`): the key is the TargetInfo the client's
   * NTLMv2 response was computed over, so it names the CHALLENGE the client answered, while a
   * relayed Auth-ID is the gateway's bookkeeping and may be stale (another handshake on the same
   * client connection, a client that reconnected). Sent under that stale Auth-ID, the server would
   * read the AUTHENTICATE against another context and count a wrong password; skipping the record
   * would fail a login that can succeed. Requiring the two to agree would add no defence either: a
   * client that guessed another's key (R4, docs/SECURITY.md) simply relays no Auth-ID;
   * `callerConnection` is that defence. Without a key (NTLMv1/LM), the Auth-ID is all there is: it
   * must be the record's, and the record must have no key either (a CHALLENGE with MsvAvTimestamp is
   * answered by an NTLMv2 response that echoes it; a keyless AUTHENTICATE relaying its Auth-ID is
   * not its client's, review r53).
   */
  take(leg: Extract<CallerNtlmLeg, { kind: 'continuation' }>): ChallengeRecord | UnpairedReason {
    this.#purge();
    if (leg.key === undefined && leg.authId === undefined) return 'no-timestamp';
    let found: ChallengeRecord | undefined;
    let gone = false;
    for (const r of this.#records) {
      if (r.taken) continue;
      if (leg.key !== undefined ? r.key !== leg.key : r.key !== undefined || r.authId !== leg.authId) continue;
      if (r.caller !== undefined && r.caller !== leg.caller) continue;
      if (r.dropped || r.session.closed) {
        gone = true;
        continue;
      }
      if (found) return 'ambiguous';
      found = r;
    }
    if (!found) return gone ? 'connection-gone' : 'no-record';
    found.taken = true;
    return found;
  }

  /**
   * R4: an AUTHENTICATE paired with nothing (`no-record`). True once per {@link MISS_WINDOW_MS}
   * when more than {@link MISS_BOUND} have come within it (the pool logs it): a client may be
   * guessing other clients' pairing keys.
   */
  missed(): boolean {
    const now = Date.now();
    const m = this.#misses;
    if (now - m.since > MISS_WINDOW_MS) {
      m.since = now;
      m.count = 0;
      m.logged = false;
    }
    m.count += 1;
    if (m.count <= MISS_BOUND || m.logged) return false;
    m.logged = true;
    return true;
  }

  /** The AUTHENTICATE of `record` was answered (or failed): forgotten. */
  settle(record: ChallengeRecord): void {
    const at = this.#records.indexOf(record);
    if (at >= 0) {
      this.#remove(at);
      this.#freed();
      this.#arm();
    }
  }

  /**
   * R1: requests wait for a session that every pending CHALLENGE of `holds`' sessions keeps from
   * them, and no more may open. Frees up to `wanted` of those CHALLENGEs, oldest first, that have
   * waited {@link ABANDONED_CHALLENGE_GRACE_MS} for their AUTHENTICATE (their sessions take requests
   * again: the pool pumps); when none is that old, one timer wakes the pool when the oldest will be.
   * A freed CHALLENGE's AUTHENTICATE, if it still comes, pairs with nothing and fails `no-record`:
   * never sent where another NEGOTIATE may have replaced its context. Returns how many it freed.
   */
  relieve(wanted: number, holds: (session: PairedSession) => boolean): number {
    this.#purge();
    const now = Date.now();
    let freed = 0;
    let next: number | undefined;
    for (let i = 0; i < this.#records.length && freed < wanted; ) {
      const r = this.#records[i]!;
      if (r.taken || r.dropped || r.session.closed || !holds(r.session)) {
        i++;
        continue;
      }
      if (now - r.at < ABANDONED_CHALLENGE_GRACE_MS) {
        next = r.at + ABANDONED_CHALLENGE_GRACE_MS;
        break;
      }
      this.#remove(i);
      // Over HTTP/2 the server still holds that incomplete context on the session (it caps them,
      // draft §3.1): a new NEGOTIATE there would meet its cap sooner or later (trial u13: every login
      // refused after ~350 abandoned ones). The session goes; a new one takes its place.
      if (r.session.protocol === 'h2') r.session.retire?.();
      freed += 1;
    }
    if (freed > 0) this.#arm();
    else if (next !== undefined && !this.#reliefTimer) {
      this.#reliefTimer = setTimeout(
        () => {
          this.#reliefTimer = undefined;
          this.#freed();
        },
        Math.max(0, next - now) + 1,
      );
      this.#reliefTimer.unref();
    }
    return freed;
  }

  /** Stops the timers (the pool is closing). */
  dispose(): void {
    this.#disposed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    clearTimeout(this.#reliefTimer);
    this.#reliefTimer = undefined;
  }

  #remove(at: number): void {
    const [r] = this.#records.splice(at, 1);
    if (r!.dropped) return;
    r!.session.challengesPending -= 1;
    if (r!.session.challengesPending === 0) r!.session.challengesSettled();
  }

  /**
   * Drops expired records (a taken one stays until its leg ends). One of an ended connection stays
   * until then too, so that its AUTHENTICATE is told why it cannot go (`connection-gone`).
   */
  #purge(): boolean {
    const now = Date.now();
    let dropped = false;
    for (let i = this.#records.length - 1; i >= 0; i--) {
      const r = this.#records[i]!;
      if (!r.taken && r.expires <= now) {
        this.#remove(i);
        dropped = true;
      }
    }
    return dropped;
  }

  /** One timer for the oldest record's expiry: a session it reserved takes requests again then. */
  #arm(): void {
    const next = this.#records.find((r) => !r.taken);
    if (this.#timer || !next) return;
    const wait = Math.max(0, next.expires - Date.now()) + 1;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#purge()) this.#freed();
      this.#arm();
    }, wait);
    this.#timer.unref();
  }
}
