/**
 * The reference server's Digest (RFC 7616) and Basic (RFC 7617) responders: challenges, nonce
 * bookkeeping (nonce count replay check, staleness after N uses or on demand), userhash, the
 * verification of what clients send, and Digest's Authentication-Info (rspauth, nextnonce) on
 * success. Request-level schemes: nothing here touches sessions.
 */
import { randomBytes } from 'node:crypto';
import { parseChallenges } from '../challenge/parse.ts';
import {
  decodeExtValue,
  digestResponse,
  digestUserhash,
  parseDigestAlgorithm,
  quote,
  wireOctets,
} from '../mechanisms/digest/compute.ts';

/** Live options of {@link DigestResponder}; change any field at runtime. */
export interface DigestResponderOptions {
  /** Digest realm. Default `reference-digest`. */
  realm: string;
  /** Algorithms offered, one challenge each, in this order. Default `['SHA-256', 'MD5']`. */
  algorithms: string[];
  /** The `qop` parameter as sent. Default `auth`. */
  qop: string;
  /** Offer `userhash=true`. Default false. */
  userhash: boolean;
  /** Send (and require back) an `opaque`. Default true. */
  opaque: boolean;
  /** A nonce turns stale after this many accepted uses. Default: never. */
  staleAfterUses: number;
  /** Refuse a nonce count already seen for its nonce (replay). Default true. */
  checkNonceCount: boolean;
  /** Basic realm. Default `reference-basic`. */
  basicRealm: string;
  /** Nonces remembered; the oldest are forgotten (and so stale). Default 10 000. */
  maxNonces: number;
  /**
   * Answer an accepted Digest request with `Authentication-Info` (RFC 7616 §3.5): `rspauth` (the
   * server proves it knows the password), and with qop the `cnonce`, `nc` and `qop` it answers. Default true.
   */
  authenticationInfo: boolean;
  /**
   * One-time nonces (RFC 7616 §3.5): every accepted Digest request's `Authentication-Info` names a
   * new nonce in `nextnonce`, and the nonce it used turns stale. Default false.
   */
  nextnonce: boolean;
}

/** What the responder decided about an `Authorization` value. */
export type ResponderVerdict =
  /** `authenticationInfo`: the `Authentication-Info` value for the response (Digest). */
  | { readonly ok: true; readonly user: string; readonly authenticationInfo?: string }
  | { readonly ok: false; readonly reason: string; readonly stale?: boolean };

interface NonceRecord {
  uses: number;
  stale: boolean;
  readonly seen: Set<number>;
}

/** Schemes this responder serves. */
export type ResponderScheme = 'Digest' | 'Basic';

const OPAQUE = randomBytes(12).toString('base64');

/** Finds a user by the name a client sent: exactly, or without the `DOMAIN\` of a configured name. */
function findUser(users: Readonly<Record<string, string>>, name: string): string | undefined {
  if (Object.hasOwn(users, name)) return name;
  return Object.keys(users).find((u) => u.slice(u.indexOf('\\') + 1) === name);
}

/** The names a user may be known by: as configured and without its domain. */
function namesOf(users: Readonly<Record<string, string>>): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const u of Object.keys(users)) {
    out.push([u, u]);
    const short = u.slice(u.indexOf('\\') + 1);
    if (short !== u) out.push([short, u]);
  }
  return out;
}

/** Digest and Basic for the reference server. */
export class DigestResponder {
  readonly options: DigestResponderOptions;
  readonly #nonces = new Map<string, NonceRecord>();

  constructor(options: Partial<DigestResponderOptions> = {}) {
    this.options = {
      realm: 'reference-digest',
      algorithms: ['SHA-256', 'MD5'],
      qop: 'auth',
      userhash: false,
      opaque: true,
      staleAfterUses: Number.POSITIVE_INFINITY,
      checkNonceCount: true,
      basicRealm: 'reference-basic',
      maxNonces: 10_000,
      authenticationInfo: true,
      nextnonce: false,
      ...options,
    };
  }

  /** Makes every nonce issued so far stale: the next use of each gets `stale=true`. */
  staleAll(): void {
    for (const r of this.#nonces.values()) r.stale = true;
  }

  /** Nonces issued and still remembered. */
  get nonceCount(): number {
    return this.#nonces.size;
  }

  /** The scheme of an `Authorization` value if it is one this responder serves and `schemes` offers. */
  schemeOf(authorization: string, schemes: readonly string[]): ResponderScheme | undefined {
    const name = /^\s*([A-Za-z]+)(?:\s|$)/.exec(authorization)?.[1]?.toLowerCase();
    for (const s of ['Digest', 'Basic'] as const) {
      if (name === s.toLowerCase() && schemes.some((o) => o.toLowerCase() === name)) return s;
    }
    return undefined;
  }

  /** `schemes` as `WWW-Authenticate` values: Digest and Basic expanded to full challenges, others as named. */
  challenges(schemes: readonly string[], stale = false): string[] {
    const out: string[] = [];
    for (const s of schemes) {
      const key = s.toLowerCase();
      if (key === 'digest') out.push(...this.#digestChallenges(stale));
      else if (key === 'basic') out.push(`Basic realm=${quote(this.options.basicRealm)}, charset="UTF-8"`);
      else out.push(s);
    }
    return out;
  }

  /** A new nonce, remembered. */
  #issue(): string {
    const nonce = randomBytes(24).toString('base64');
    this.#nonces.set(nonce, { uses: 0, stale: false, seen: new Set() });
    while (this.#nonces.size > this.options.maxNonces) this.#nonces.delete(this.#nonces.keys().next().value as string);
    return nonce;
  }

  #digestChallenges(stale: boolean): string[] {
    const o = this.options;
    const nonce = this.#issue();
    return o.algorithms.map((algorithm) => {
      const parts = [
        `realm=${quote(o.realm)}`,
        `qop=${quote(o.qop)}`,
        `algorithm=${algorithm}`,
        `nonce=${quote(nonce)}`,
      ];
      if (o.opaque) parts.push(`opaque=${quote(OPAQUE)}`);
      parts.push('charset=UTF-8');
      if (o.userhash) parts.push('userhash=true');
      if (stale) parts.push('stale=true');
      return `Digest ${parts.join(', ')}`;
    });
  }

  /**
   * Checks credentials sent under `scheme` for a request (`uri` is its request-target).
   * `wrongRspauth`: Digest's Authentication-Info carries an rspauth that does not match (a fault).
   */
  verify(
    scheme: ResponderScheme,
    authorization: string,
    method: string,
    uri: string,
    users: Readonly<Record<string, string>>,
    wrongRspauth = false,
  ): ResponderVerdict {
    try {
      return scheme === 'Basic'
        ? this.#verifyBasic(authorization, users)
        : this.#verifyDigest(authorization, method, uri, users, wrongRspauth);
    } catch {
      return { ok: false, reason: 'malformed' };
    }
  }

  #verifyBasic(authorization: string, users: Readonly<Record<string, string>>): ResponderVerdict {
    const token = authorization.trim().slice('Basic'.length).trim();
    if (token.length === 0 || token.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(token)) {
      return { ok: false, reason: 'malformed' };
    }
    const text = new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(token, 'base64'));
    const colon = text.indexOf(':');
    if (colon < 0) return { ok: false, reason: 'malformed' };
    const user = findUser(users, text.slice(0, colon));
    if (user === undefined) return { ok: false, reason: 'unknown-user' };
    if (users[user] !== text.slice(colon + 1)) return { ok: false, reason: 'bad-password' };
    return { ok: true, user };
  }

  #verifyDigest(
    authorization: string,
    method: string,
    uri: string,
    users: Readonly<Record<string, string>>,
    wrongRspauth: boolean,
  ): ResponderVerdict {
    const o = this.options;
    const parsed = parseChallenges(authorization);
    const p = parsed.length === 1 && parsed[0]?.schemeKey === 'digest' ? parsed[0].params : undefined;
    if (!p) return { ok: false, reason: 'malformed' };
    const { realm, nonce, response } = p;
    if (realm === undefined || nonce === undefined || response === undefined || p.uri === undefined) {
      return { ok: false, reason: 'malformed' };
    }
    if (realm !== o.realm) return { ok: false, reason: 'wrong-realm' };
    if (p.uri !== uri) return { ok: false, reason: 'uri-mismatch' };
    const algorithm = parseDigestAlgorithm(p.algorithm);
    if (!algorithm || !o.algorithms.some((a) => a.toLowerCase() === algorithm.name.toLowerCase())) {
      return { ok: false, reason: 'wrong-algorithm' };
    }
    if (o.opaque && p.opaque !== OPAQUE) return { ok: false, reason: 'wrong-opaque' };
    const offeredQop = o.qop.split(',').map((q) => q.trim().toLowerCase());
    if (p.qop !== undefined && (p.qop.toLowerCase() !== 'auth' || !offeredQop.includes('auth'))) {
      return { ok: false, reason: 'wrong-qop' };
    }
    const qop = p.qop === undefined ? undefined : ('auth' as const);
    if (qop === undefined && offeredQop.length > 0 && offeredQop[0] !== '') return { ok: false, reason: 'wrong-qop' };
    let nc: number | undefined;
    if (qop) {
      if (p.nc === undefined || !/^[0-9a-fA-F]{8}$/.test(p.nc) || p.cnonce === undefined) {
        return { ok: false, reason: 'malformed' };
      }
      nc = Number.parseInt(p.nc, 16);
    }

    // Who: userhash, username*, or username.
    let name: string | undefined;
    let user: string | undefined;
    if (p.userhash?.toLowerCase() === 'true') {
      const hashed = p.username;
      for (const [candidate, configured] of namesOf(users)) {
        if (digestUserhash(algorithm, candidate, wireOctets(realm)) === hashed) {
          name = candidate;
          user = configured;
          break;
        }
      }
    } else {
      if (p.username !== undefined && p['username*'] !== undefined) return { ok: false, reason: 'malformed' };
      name = p.username ?? (p['username*'] !== undefined ? decodeExtValue(p['username*']) : undefined);
      if (name === undefined) return { ok: false, reason: 'malformed' };
      user = findUser(users, name);
    }
    if (name === undefined || user === undefined) return { ok: false, reason: 'unknown-user' };
    // rspauth (RFC 7616 §3.5) is the same digest with an empty method.
    const digestFor = (m: string) =>
      digestResponse({
        algorithm,
        username: name,
        realm: wireOctets(realm),
        password: users[user] ?? '',
        method: m,
        uri: wireOctets(uri),
        nonce: wireOctets(nonce),
        ...(qop ? { qop, nc: p.nc, cnonce: wireOctets(p.cnonce ?? '') } : {}),
        ...(algorithm.sess && p.cnonce !== undefined ? { cnonce: wireOctets(p.cnonce) } : {}),
      });
    if (digestFor(method) !== response.toLowerCase()) return { ok: false, reason: 'bad-response' };

    // The credentials are right; is the nonce still good?
    const record = this.#nonces.get(nonce);
    if (!record) return { ok: false, reason: 'unknown-nonce', stale: true };
    if (record.stale || record.uses >= o.staleAfterUses) {
      record.stale = true;
      return { ok: false, reason: 'stale-nonce', stale: true };
    }
    if (nc !== undefined) {
      if (o.checkNonceCount && record.seen.has(nc)) return { ok: false, reason: 'nc-replay' };
      record.seen.add(nc);
    }
    record.uses += 1;
    const info: string[] = [];
    if (o.nextnonce) {
      info.push(`nextnonce=${quote(this.#issue())}`);
      record.stale = true;
    }
    if (o.authenticationInfo) {
      let rspauth = digestFor('');
      // One hex digit changed: what a server that does not know the password might send.
      if (wrongRspauth) rspauth = (rspauth[0] === '0' ? '1' : '0') + rspauth.slice(1);
      info.push(`rspauth=${quote(rspauth)}`);
      if (qop) info.push(`cnonce=${quote(p.cnonce ?? '')}`, `nc=${p.nc}`, `qop=${qop}`);
    }
    return info.length > 0 ? { ok: true, user, authenticationInfo: info.join(', ') } : { ok: true, user };
  }
}
