/** Parsing of what arrives in `Authorization` and `Auth-ID`. Never throws: bad input is a value. */

/** Longest token68 accepted; anything longer is malformed (a client bug or an attack). */
const MAX_TOKEN_CHARS = 64 * 1024;
const SCHEME = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** A parsed `Authorization` header, or why it could not be parsed. */
export type ParsedAuthorization =
  | { readonly ok: true; readonly scheme: string; readonly token: Buffer }
  | { readonly ok: false; readonly scheme?: string; readonly reason: 'malformed' };

/** Parses `<scheme> <base64 token>`; the token is required (all our schemes carry one). */
export function parseAuthorization(value: string): ParsedAuthorization {
  const trimmed = value.trim();
  const space = trimmed.search(/[ \t]/);
  const scheme = space < 0 ? trimmed : trimmed.slice(0, space);
  if (!SCHEME.test(scheme)) return { ok: false, reason: 'malformed' };
  const token = space < 0 ? '' : trimmed.slice(space).trim();
  // Strict base64: Buffer.from() silently skips garbage, so validate first (the length rule
  // keeps a truncated token from decoding into a shorter, plausible-looking message).
  if (token.length === 0 || token.length > MAX_TOKEN_CHARS || token.length % 4 !== 0 || !BASE64.test(token)) {
    return { ok: false, scheme, reason: 'malformed' };
  }
  return { ok: true, scheme, token: Buffer.from(token, 'base64') };
}

const NTLMSSP = Buffer.from('NTLMSSP\0', 'latin1');

/**
 * NTLM message type (1 negotiate, 2 challenge, 3 authenticate) of a raw NTLMSSP token, or
 * undefined for anything else (SPNEGO, Kerberos, a test acceptor's tokens). The server uses it
 * to tell "start a handshake" from "continue one" without asking the acceptor.
 */
export function ntlmMessageType(token: Buffer): number | undefined {
  if (token.length < 12 || !token.subarray(0, 8).equals(NTLMSSP)) return undefined;
  return token.readUInt32LE(8);
}

/** First value of a header as Node hands it over (string, array for repeated headers, or absent). */
export function headerValue(value: string | string[] | undefined): string | undefined {
  if (Array.isArray(value)) return value[0];
  return value;
}
