/**
 * The arithmetic of HTTP Digest (RFC 7616 §3.4): algorithms, A1/A2, the request-digest, userhash,
 * and the quoting of the Authorization header's values. Pure functions, shared by the client
 * mechanism and the reference server's responder.
 */
import { createHash } from 'node:crypto';
import type { DigestAlgorithm } from '../../challenge/digest.ts';

export { type DigestAlgorithm, parseDigestAlgorithm } from '../../challenge/digest.ts';

/** Text that Digest hashes: strings typed by people are UTF-8; values echoed from the wire are octets. */
export type DigestText = string | Buffer;

/** Lower-case hex hash of the parts joined by `:`. */
export function digestHash(algorithm: DigestAlgorithm, ...parts: DigestText[]): string {
  const h = createHash(algorithm.hash);
  parts.forEach((p, i) => {
    if (i > 0) h.update(':');
    h.update(p);
  });
  return h.digest('hex');
}

/**
 * A value as it came off the wire: undici (and node:http) decode header octets as latin1, one
 * character per octet, so latin1 gives the server's octets back for hashing.
 */
export function wireOctets(value: string): Buffer {
  return Buffer.from(value, 'latin1');
}

/** Inputs of {@link digestResponse}. */
export interface DigestResponseInput {
  readonly algorithm: DigestAlgorithm;
  /** The real user name (not its userhash): A1 always hashes the name itself. */
  readonly username: string;
  readonly realm: DigestText;
  readonly password: string;
  readonly method: string;
  /** The `uri` parameter: the request-target as sent. */
  readonly uri: DigestText;
  readonly nonce: DigestText;
  /** `auth` (RFC 7616) or absent (RFC 2069 compatibility: no nc, no cnonce). */
  readonly qop?: 'auth';
  /** 8 hex digits. Required with `qop`. */
  readonly nc?: string;
  /** Required with `qop` and with `-sess`. */
  readonly cnonce?: DigestText;
  /**
   * H(A1), when {@link digestHa1} made it already for these inputs: the client checks the server's
   * `rspauth` (the same digest with an empty method) with its request's.
   */
  readonly ha1?: string;
}

/** H(A1) of RFC 7616 §3.4.2: `H(user:realm:password)`, for `-sess` `H(H(user:realm:password):nonce:cnonce)`. */
export function digestHa1(input: Omit<DigestResponseInput, 'method' | 'uri' | 'ha1'>): string {
  const { algorithm: alg } = input;
  const ha1 = digestHash(alg, input.username, input.realm, input.password);
  if (!alg.sess) return ha1;
  if (input.cnonce === undefined) throw new TypeError(`${alg.name} needs a cnonce`);
  return digestHash(alg, ha1, input.nonce, input.cnonce);
}

/**
 * The `response` parameter (RFC 7616 §3.4.1):
 * `KD(H(A1), nonce:nc:cnonce:qop:H(A2))` with `A1 = user:realm:password` (for `-sess`,
 * `H(user:realm:password):nonce:cnonce`) and `A2 = method:uri`. Without qop, `KD(H(A1), nonce:H(A2))`.
 */
export function digestResponse(input: DigestResponseInput): string {
  const { algorithm: alg } = input;
  const ha1 = input.ha1 ?? digestHa1(input);
  const ha2 = digestHash(alg, input.method, input.uri);
  if (input.qop === undefined) return digestHash(alg, ha1, input.nonce, ha2);
  if (input.nc === undefined || input.cnonce === undefined) throw new TypeError('qop=auth needs nc and cnonce');
  return digestHash(alg, ha1, input.nonce, input.nc, input.cnonce, input.qop, ha2);
}

/** `userhash=true` (RFC 7616 §3.4.4): the user name sent is `H(user:realm)`. */
export function digestUserhash(algorithm: DigestAlgorithm, username: string, realm: DigestText): string {
  return digestHash(algorithm, username, realm);
}

/** The nonce count as sent: 8 lower-case hex digits. */
export function formatNonceCount(nc: number): string {
  return nc.toString(16).padStart(8, '0');
}

/** A quoted-string (RFC 9110 §5.6.4), escaping `"` and `\`. */
export function quote(value: string): string {
  return `"${value.replace(/["\\]/g, '\\$&')}"`;
}

/** True when a value can travel in a quoted-string as is: visible ASCII, space and tab. */
export function isPlainQuotable(value: string): boolean {
  return /^[\t\x20-\x7e]*$/.test(value);
}

// RFC 8187 attr-char, which may stay unencoded in an ext-value.
const ATTR_CHAR = /[A-Za-z0-9!#$&+\-.^_`|~]/;

/** An RFC 8187 ext-value in UTF-8: `UTF-8''J%C3%A4s%C3%B8n%20Doe`. */
export function encodeExtValue(value: string): string {
  let out = "UTF-8''";
  for (const byte of Buffer.from(value, 'utf8')) {
    const ch = String.fromCharCode(byte);
    out += byte < 0x80 && ATTR_CHAR.test(ch) ? ch : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** Decodes an RFC 8187 ext-value in UTF-8; undefined when malformed or in another charset. */
export function decodeExtValue(value: string): string | undefined {
  const m = /^UTF-8'[^']*'(.*)$/i.exec(value);
  if (!m) return undefined;
  const body = m[1] ?? '';
  if (!/^(?:[A-Za-z0-9!#$&+\-.^_`|~]|%[0-9A-Fa-f]{2})*$/.test(body)) return undefined;
  const bytes = Buffer.from(
    body.replace(/%([0-9A-Fa-f]{2})/g, (_, h: string) => String.fromCharCode(Number.parseInt(h, 16))),
    'latin1',
  );
  const text = new TextDecoder('utf-8', { fatal: true });
  try {
    return text.decode(bytes);
  } catch {
    return undefined;
  }
}
