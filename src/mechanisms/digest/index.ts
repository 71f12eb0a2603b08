/**
 * HTTP Digest (RFC 7616) as a {@link Mechanism}: MD5, SHA-256 and SHA-512-256, each also `-sess`;
 * `qop=auth` with a nonce count and a random cnonce; `opaque` echoed; `userhash`; UTF-8 user names
 * (`username*` when they are not ASCII). One round trip per request: the last nonce of each origin
 * and realm is remembered, so later requests authenticate proactively with the next nonce count
 * and only a stale nonce costs a second leg. The final response's `Authentication-Info` (RFC 7616
 * §3.5) is read: its `rspauth` is verified (the server proves it knows the password, M3), and its
 * `nextnonce` is the nonce of the next request.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { type DigestChallengeFields, readDigestChallenge, readEchoable } from '../../challenge/digest.ts';
import type { Challenge } from '../../challenge/types.ts';
import { MechanismError, MechanismUnavailableError, MutualAuthError } from '../../errors.ts';
import { log } from '../../log.ts';
import type { Credentials, LegInfo, Mechanism, MechanismContext } from '../types.ts';
import {
  digestHa1,
  digestResponse,
  digestUserhash,
  encodeExtValue,
  formatNonceCount,
  isPlainQuotable,
  quote,
  wireOctets,
} from './compute.ts';

export { MAX_DIGEST_PARAM_LENGTH } from '../../challenge/digest.ts';
export {
  type DigestAlgorithm,
  type DigestResponseInput,
  decodeExtValue,
  digestHash,
  digestResponse,
  digestUserhash,
  encodeExtValue,
  formatNonceCount,
  parseDigestAlgorithm,
  quote,
} from './compute.ts';

/** Default for {@link DigestOptions.maxCachedOrigins}. */
export const DEFAULT_MAX_CACHED_ORIGINS = 10_000;
const MAX_NONCE_COUNT = 0xffff_ffff;

/**
 * A Digest challenge this client cannot answer (missing or oversized parameters, unknown algorithm,
 * only `qop=auth-int`). The agent treats it as "Digest unusable here" and tries the next offered
 * scheme; when there is none, the caller gets this error.
 */
export class DigestChallengeError extends MechanismUnavailableError {
  constructor(detail: string) {
    super('Digest', `the server's Digest challenge ${detail}`);
  }
}

/** Options for {@link digestMechanism}. */
export interface DigestOptions {
  /** Remember each origin's last nonce and authenticate later requests with it proactively. Default true. */
  readonly reuseNonce?: boolean;
  /** Origins whose last nonce is remembered (least recently used forgotten first). Default 10 000. */
  readonly maxCachedOrigins?: number;
  /** Test hook: the cnonce of each response. Default 16 random bytes in hex. */
  readonly cnonce?: () => string;
  /**
   * Verify the `rspauth` of the server's `Authentication-Info` (RFC 7616 §3.5) where it sends one:
   * a mismatch is a {@link MutualAuthError} and the response is withheld. Default true; false only
   * for a server known to compute it wrongly (its response is then taken unproved, as curl does).
   */
  readonly verifyRspauth?: boolean;
}

/** What a challenge said, and how many times its nonce has been used. Shared by concurrent requests. */
interface NonceState extends DigestChallengeFields {
  /** Last nonce count used; incremented synchronously, so concurrent requests never share one. */
  nc: number;
  /**
   * `-sess`: the cnonce of the first request on this nonce. RFC 7616 §3.4.2 computes A1 with it
   * (cnonce-prime) for every later request; sent again each time, as curl does, so that a server
   * reading A1 from the request's own cnonce agrees too.
   */
  sessionCnonce?: string;
}

/** The last nonce per origin (and realm), least recently used first. */
class NonceCache {
  readonly #max: number;
  readonly #byOrigin = new Map<string, { last: string; realms: Map<string, NonceState> }>();

  constructor(max: number) {
    this.#max = max;
  }

  get size(): number {
    return this.#byOrigin.size;
  }

  /** The state last stored for `key`, marking it recently used. */
  latest(key: string): NonceState | undefined {
    const entry = this.#byOrigin.get(key);
    if (!entry) return undefined;
    this.#byOrigin.delete(key);
    this.#byOrigin.set(key, entry);
    return entry.realms.get(entry.last);
  }

  store(key: string, state: NonceState): void {
    const entry = this.#byOrigin.get(key) ?? { last: state.realm, realms: new Map<string, NonceState>() };
    this.#byOrigin.delete(key);
    entry.last = state.realm;
    entry.realms.delete(state.realm);
    entry.realms.set(state.realm, state);
    // A server with ever-new realms must not grow this without bound.
    while (entry.realms.size > 16) entry.realms.delete(entry.realms.keys().next().value as string);
    this.#byOrigin.set(key, entry);
    while (this.#byOrigin.size > this.#max) this.#byOrigin.delete(this.#byOrigin.keys().next().value as string);
  }

  /**
   * The state already counting this challenge's nonce (same realm, nonce and parameters): several
   * requests challenged with one nonce, or retrying after one `stale=true`, go on counting it (RFC
   * 7616 §3.4: nc counts every request sent with the nonce; a repeated count is a replay).
   */
  counting(key: string, state: NonceState): NonceState | undefined {
    const known = this.#byOrigin.get(key)?.realms.get(state.realm);
    const same =
      known !== undefined &&
      known.nonce === state.nonce &&
      known.opaque === state.opaque &&
      known.algorithm.name === state.algorithm.name &&
      known.qop === state.qop &&
      known.userhash === state.userhash &&
      known.utf8 === state.utf8;
    return same ? known : undefined;
  }

  /**
   * Makes `next` the state of its realm, only while `current` still is (a newer nonce, learnt from
   * another response meanwhile, is kept). Returns whether it did.
   */
  advance(key: string, current: NonceState, next: NonceState): boolean {
    if (this.#byOrigin.get(key)?.realms.get(current.realm) !== current) return false;
    this.store(key, next);
    return true;
  }

  forget(key: string, state: NonceState): void {
    const entry = this.#byOrigin.get(key);
    if (entry?.realms.get(state.realm) === state) entry.realms.delete(state.realm);
    if (entry && entry.realms.size === 0) this.#byOrigin.delete(key);
  }
}

function cacheKey(leg: LegInfo): string {
  return `${leg.proxy ? 'proxy' : 'origin'} ${leg.origin}`;
}

/** Reads and validates a Digest challenge (S3). Throws {@link DigestChallengeError}. */
function readChallenge(challenge: Challenge): NonceState {
  const reading = readDigestChallenge(challenge);
  if (!reading.fields) throw new DigestChallengeError(reading.problem);
  return { ...reading.fields, nc: 0 };
}

/** What one `Authorization` said: what the server's `Authentication-Info` answers (RFC 7616 §3.5). */
interface Sent {
  readonly key: string;
  readonly state: NonceState;
  readonly uri: string;
  /** As sent: 8 hex digits. */
  readonly nc: string;
  readonly cnonce: string;
  /** Made for `response`, used again for `rspauth`. */
  ha1?: string;
}

/**
 * The request-digest of RFC 7616 §3.4.1 for one use of a nonce, with `method`: the request's own
 * for `response`; empty for the `rspauth` the server answers with (§3.5).
 */
function digestOf(sent: Sent, credentials: Credentials, method: string): string {
  const { algorithm, qop } = sent.state;
  const { cnonce } = sent;
  const input = {
    algorithm,
    username: credentials.username,
    realm: wireOctets(sent.state.realm),
    password: credentials.password,
    nonce: wireOctets(sent.state.nonce),
    ...(qop ? { qop, nc: sent.nc, cnonce } : {}),
    ...(algorithm.sess ? { cnonce } : {}),
  };
  sent.ha1 ??= digestHa1(input);
  return digestResponse({ ...input, method, uri: sent.uri, ha1: sent.ha1 });
}

/** The whole `Authorization` value for one use of a nonce. */
function authorization(sent: Sent, credentials: Credentials, method: string): string {
  const { state, uri, cnonce } = sent;
  const { algorithm, qop } = state;
  const realm = wireOctets(state.realm);
  const response = digestOf(sent, credentials, method);
  const parts: string[] = [];
  if (state.userhash) parts.push(`username=${quote(digestUserhash(algorithm, credentials.username, realm))}`);
  else if (isPlainQuotable(credentials.username)) parts.push(`username=${quote(credentials.username)}`);
  else if (state.utf8) parts.push(`username*=${encodeExtValue(credentials.username)}`);
  // A server that did not say charset=UTF-8 may not read username* (Apache does not): its UTF-8
  // octets in the quoted-string (obs-text), as curl sends them; A1 hashes the same octets.
  else parts.push(`username=${quote(Buffer.from(credentials.username, 'utf8').toString('latin1'))}`);
  parts.push(`realm=${quote(state.realm)}`, `uri=${quote(uri)}`);
  // Always named, also when the server left it out (which means MD5).
  parts.push(`algorithm=${algorithm.name}`);
  parts.push(`nonce=${quote(state.nonce)}`);
  if (qop) parts.push(`nc=${sent.nc}`, `cnonce=${quote(cnonce)}`, `qop=${qop}`);
  else if (algorithm.sess) parts.push(`cnonce=${quote(cnonce)}`);
  parts.push(`response=${quote(response)}`);
  if (state.opaque !== undefined) parts.push(`opaque=${quote(state.opaque)}`);
  if (state.userhash) parts.push('userhash=true');
  return `Digest ${parts.join(', ')}`;
}

/** Equal hex digests (case-insensitive), compared in constant time. */
function sameDigest(received: string, expected: string): boolean {
  const a = Buffer.from(received.toLowerCase(), 'latin1');
  const b = Buffer.from(expected, 'latin1');
  return a.length === b.length && timingSafeEqual(a, b);
}

class DigestContext implements MechanismContext {
  readonly #credentials: Credentials;
  readonly #cache: NonceCache | undefined;
  readonly #cnonce: () => string;
  readonly #verifyRspauth: boolean;
  #steps = 0;
  /** What the last leg sent: the final response's Authentication-Info answers it. */
  #sent: Sent | undefined;

  constructor(credentials: Credentials, cache: NonceCache | undefined, cnonce: () => string, verifyRspauth: boolean) {
    this.#credentials = credentials;
    this.#cache = cache;
    this.#cnonce = cnonce;
    this.#verifyRspauth = verifyRspauth;
  }

  /** Digest never has more to send once it has answered; a stale nonce is answered by the agent asking again. */
  get complete(): boolean {
    return this.#steps > 0;
  }

  get identity(): string {
    return this.#credentials.username;
  }

  async step(challenge: Challenge | undefined, leg: LegInfo): Promise<string> {
    const key = cacheKey(leg);
    let state: NonceState;
    if (challenge === undefined) {
      const cached = this.#cache?.latest(key);
      if (!cached) {
        throw new MechanismUnavailableError(
          'Digest',
          `no server nonce is known for ${leg.origin} yet, so nothing can be sent before its challenge`,
        );
      }
      state = cached;
    } else {
      if (this.#steps >= 2) {
        throw new MechanismError('Digest', 'the server keeps answering with new challenges; check the credentials');
      }
      const read = readChallenge(challenge);
      state = this.#cache?.counting(key, read) ?? read;
      this.#cache?.store(key, state);
    }
    if (state.nc >= MAX_NONCE_COUNT) {
      this.#cache?.forget(key, state);
      throw new MechanismUnavailableError(
        'Digest',
        'the remembered nonce is used up; the next request asks for a new one',
      );
    }
    state.nc += 1;
    this.#steps += 1;
    if (state.algorithm.sess) state.sessionCnonce ??= this.#cnonce();
    const cnonce = state.sessionCnonce ?? this.#cnonce();
    const sent: Sent = { key, state, uri: leg.path, nc: formatNonceCount(state.nc), cnonce };
    this.#sent = sent;
    return authorization(sent, this.#credentials, leg.method);
  }

  /**
   * The final response's Authentication-Info (RFC 7616 §3.5), all optional: `rspauth` proves the
   * server knows the password (checked first: nothing is learnt from a server that fails it);
   * `nextnonce` is the nonce of the next request.
   */
  async finish(
    _challenge: Challenge | undefined,
    leg: LegInfo,
    info?: Readonly<Record<string, string>>,
  ): Promise<void> {
    const sent = this.#sent;
    if (info === undefined || sent === undefined) return;
    if (info.rspauth !== undefined && this.#verifyRspauth) {
      const wrong = this.#wrongRspauth(sent, info);
      if (wrong) {
        // Its nonce came from a server that failed the proof: the next request asks for a new one.
        this.#cache?.forget(sent.key, sent.state);
        throw new MutualAuthError(
          `the Digest rspauth of ${leg.proxy ? 'proxy ' : ''}${leg.origin} ${wrong}`,
          'if this server is known to compute rspauth wrongly, build Digest with digestMechanism(credentials, { verifyRspauth: false })',
        );
      }
    }
    if (info.nextnonce !== undefined) this.#nextNonce(sent, info.nextnonce);
  }

  /** Why the server's rspauth (and what it echoes) does not answer what was sent; undefined when it does. */
  #wrongRspauth(sent: Sent, info: Readonly<Record<string, string>>): string | undefined {
    const { qop } = sent.state;
    // The echoes are optional to read: rspauth is computed over what we sent, so it binds them anyway.
    if (info.qop !== undefined && info.qop.toLowerCase() !== (qop ?? '')) {
      return 'names another qop than the request used';
    }
    if (qop && info.cnonce !== undefined && info.cnonce !== sent.cnonce) return 'echoes another cnonce than was sent';
    if (qop && info.nc !== undefined && info.nc.toLowerCase() !== sent.nc) return 'echoes another nc than was sent';
    if (!sameDigest(info.rspauth ?? '', digestOf(sent, this.#credentials, ''))) {
      return 'does not match: the server did not prove it knows the password';
    }
    return undefined;
  }

  /**
   * The next request to this protection space uses `nextnonce` from nc=1, with a new cnonce (and so,
   * `-sess`, a new session key) — unless a newer nonce was learnt meanwhile, or it is the nonce in use.
   */
  #nextNonce(sent: Sent, value: string): void {
    const cache = this.#cache;
    if (!cache || value === sent.state.nonce) return;
    const nonce = readEchoable(value, 'nextnonce');
    if (typeof nonce !== 'string' || nonce === '') {
      // Unusable (S3): the current nonce goes on; a server that meant it gets `stale=true` once.
      log.handshake('Digest nextnonce of %s ignored: empty, too long or not echoable', sent.key);
      return;
    }
    const { sessionCnonce: _, ...fields } = sent.state;
    cache.advance(sent.key, sent.state, { ...fields, nonce, nc: 0 });
  }
}

/**
 * Digest (RFC 7616) with the given credentials. The user name is used as given (`DOMAIN\user` is a
 * literal name here); `credentials.domain` is ignored. Request-level, one round trip, proactive once
 * a nonce is known: `proactive` is true while any nonce is remembered.
 */
export function digestMechanism(credentials: Credentials, options: DigestOptions = {}): Mechanism {
  const cache =
    options.reuseNonce === false ? undefined : new NonceCache(options.maxCachedOrigins ?? DEFAULT_MAX_CACHED_ORIGINS);
  const cnonce = options.cnonce ?? (() => randomBytes(16).toString('hex'));
  const verifyRspauth = options.verifyRspauth !== false;
  return {
    scheme: 'Digest',
    level: 'request',
    multileg: false,
    usesPassword: true,
    get proactive(): boolean {
      return cache !== undefined && cache.size > 0;
    },
    createContext: () => new DigestContext(credentials, cache, cnonce, verifyRspauth),
  };
}
