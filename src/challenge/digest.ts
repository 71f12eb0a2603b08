/**
 * What a Digest challenge (RFC 7616 §3.3) says, and whether this client can answer it: one reading
 * shared by the chooser (which Digest challenge to prefer, T2) and the Digest mechanism (which
 * throws the problem as a DigestChallengeError), so the two never disagree.
 */
import type { Challenge } from './types.ts';

/** A Digest algorithm (RFC 7616 §3.3, §6.1): the hash and whether it is a `-sess` variant. */
export interface DigestAlgorithm {
  /** Canonical name as written on the wire: `MD5`, `SHA-256-sess`, ... */
  readonly name: string;
  /** node:crypto hash name. */
  readonly hash: 'md5' | 'sha256' | 'sha512-256';
  readonly sess: boolean;
  /** Preference among algorithms (T2): MD5 1, SHA-256 2, SHA-512-256 3; `-sess` ranks with its hash. */
  readonly strength: number;
}

const HASHES: ReadonlyMap<string, { name: string; hash: DigestAlgorithm['hash']; strength: number }> = new Map([
  ['md5', { name: 'MD5', hash: 'md5' as const, strength: 1 }],
  ['sha-256', { name: 'SHA-256', hash: 'sha256' as const, strength: 2 }],
  ['sha-512-256', { name: 'SHA-512-256', hash: 'sha512-256' as const, strength: 3 }],
]);

/** Longest `realm`, `nonce` or `opaque` accepted from a server (S3). Real ones are tens of characters. */
export const MAX_DIGEST_PARAM_LENGTH = 1024;
/** Longer `algorithm` names are not looked up (no algorithm name is near it). */
const MAX_ALGORITHM_LENGTH = 64;

/**
 * The algorithm named by a challenge's `algorithm` parameter (case-insensitive; absent means MD5),
 * or undefined when the client does not know it.
 */
export function parseDigestAlgorithm(name: string | undefined): DigestAlgorithm | undefined {
  if (name !== undefined && name.length > MAX_ALGORITHM_LENGTH) return undefined;
  let key = (name ?? 'MD5').toLowerCase();
  const sess = key.endsWith('-sess');
  if (sess) key = key.slice(0, -5);
  const h = HASHES.get(key);
  if (!h) return undefined;
  return { name: sess ? `${h.name}-sess` : h.name, hash: h.hash, sess, strength: h.strength };
}

/** What an answerable Digest challenge asks for. */
export interface DigestChallengeFields {
  readonly realm: string;
  readonly nonce: string;
  readonly opaque: string | undefined;
  readonly algorithm: DigestAlgorithm;
  /** `auth`, or undefined for an RFC 2069 server that sent no qop. */
  readonly qop: 'auth' | undefined;
  readonly userhash: boolean;
  /** The server said `charset=UTF-8` (RFC 7616 §4): it reads `username*`. */
  readonly utf8: boolean;
}

/** A Digest challenge read: its fields, or why this client cannot answer it (a phrase after "the challenge"). */
export type DigestChallengeReading =
  | { readonly fields: DigestChallengeFields; readonly problem?: undefined }
  | { readonly fields?: undefined; readonly problem: string };

/**
 * A server-supplied value we echo (a challenge's parameter, Authentication-Info's `nextnonce`):
 * bounded, and nothing that could break the header (S3). `name` names it in the problem.
 */
export function readEchoable(value: string, name: string): string | { problem: string } {
  if (value.length > MAX_DIGEST_PARAM_LENGTH) {
    return { problem: `has a ${name} longer than ${MAX_DIGEST_PARAM_LENGTH} characters` };
  }
  // Visible ASCII, space, tab and obs-text: anything else (CR, LF, NUL...) cannot be echoed in a header.
  if (!/^[\t\x20-\x7e\x80-\xff]*$/.test(value)) return { problem: `has control characters in ${name}` };
  return value;
}

function wireValue(challenge: Challenge, name: string): string | { problem: string } | undefined {
  const value = challenge.params[name];
  return value === undefined ? undefined : readEchoable(value, name);
}

/**
 * Reads and validates a Digest challenge (S3): realm and nonce present, bounded and echoable; an
 * algorithm this client knows; `qop=auth` offered when there is a qop list; a `-sess` algorithm
 * only with a qop. Never throws.
 */
export function readDigestChallenge(challenge: Challenge): DigestChallengeReading {
  if (challenge.token68 !== undefined) return { problem: 'is a token, not parameters' };
  const realm = wireValue(challenge, 'realm');
  if (realm === undefined) return { problem: 'has no realm' };
  if (typeof realm !== 'string') return realm;
  const nonce = wireValue(challenge, 'nonce');
  if (nonce === undefined) return { problem: 'has no nonce' };
  if (typeof nonce !== 'string') return nonce;
  if (nonce.length === 0) return { problem: 'has an empty nonce' };
  const opaque = wireValue(challenge, 'opaque');
  if (typeof opaque === 'object') return opaque;
  const algorithm = parseDigestAlgorithm(challenge.params.algorithm);
  if (!algorithm) {
    return {
      problem:
        'names an unknown algorithm; this client answers MD5, SHA-256 and SHA-512-256 (and their -sess variants)',
    };
  }
  let qop: 'auth' | undefined;
  const qopParam = challenge.params.qop;
  if (qopParam !== undefined) {
    const offered = qopParam
      .split(',')
      .map((q) => q.trim().toLowerCase())
      .filter((q) => q !== '');
    if (offered.includes('auth')) qop = 'auth';
    else if (offered.includes('auth-int')) {
      return {
        problem:
          'offers only qop=auth-int, which needs the request body hashed before sending; configure the server to offer qop=auth as well',
      };
    } else return { problem: 'offers no qop this client knows (auth)' };
  } else if (algorithm.sess) {
    return { problem: `asks for ${algorithm.name} without qop, which RFC 7616 does not define` };
  }
  return {
    fields: {
      realm,
      nonce,
      opaque,
      algorithm,
      qop,
      userhash: challenge.params.userhash?.toLowerCase() === 'true',
      utf8: challenge.params.charset?.toLowerCase() === 'utf-8',
    },
  };
}
