/**
 * Character classes from RFC 9110 §5.6 (token, quoted-string, OWS) and §11.2 (token68), shared by the
 * parser and the formatter so that what one accepts the other produces.
 */

const TCHAR = 1;
const TOKEN68 = 2;

// Lookup table over ASCII: a switch or regex per character would dominate parse time on long tokens.
const table = new Uint8Array(128);
for (let c = 0x30; c <= 0x39; c++) table[c] = TCHAR | TOKEN68;
for (let c = 0x41; c <= 0x5a; c++) table[c] = TCHAR | TOKEN68;
for (let c = 0x61; c <= 0x7a; c++) table[c] = TCHAR | TOKEN68;
for (const ch of "!#$%&'*^`|") table[ch.charCodeAt(0)] = TCHAR;
for (const ch of '-._~+') table[ch.charCodeAt(0)] = TCHAR | TOKEN68;
table['/'.charCodeAt(0)] = TOKEN68;

/** tchar: the characters of a token (RFC 9110 §5.6.2). */
export function isTchar(c: number): boolean {
  return c < 128 && (table[c]! & TCHAR) !== 0;
}

/** The characters of token68 before its `=` padding (RFC 9110 §11.2). */
export function isToken68Char(c: number): boolean {
  return c < 128 && (table[c]! & TOKEN68) !== 0;
}

/** SP or HTAB: OWS/BWS (RFC 9110 §5.6.3). */
export function isWs(c: number): boolean {
  return c === 0x20 || c === 0x09;
}

/**
 * qdtext (RFC 9110 §5.6.4): HTAB, SP, VCHAR except `"` and `\`, obs-text. Characters above 0xFF cannot
 * come from undici (it decodes header octets as latin1) but are accepted like obs-text so that values
 * built in JS round-trip.
 */
export function isQdtext(c: number): boolean {
  return c === 0x09 || c === 0x20 || c === 0x21 || (c >= 0x23 && c <= 0x5b) || (c >= 0x5d && c <= 0x7e) || c >= 0x80;
}

/** What may follow `\` in a quoted-pair: HTAB, SP, VCHAR, obs-text (and, as above, anything above 0xFF). */
export function isQuotedPairChar(c: number): boolean {
  return c === 0x09 || (c >= 0x20 && c <= 0x7e) || c >= 0x80;
}

/** True when `s` is a non-empty token. */
export function isToken(s: string): boolean {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) if (!isTchar(s.charCodeAt(i))) return false;
  return true;
}

/** True when `s` is a token68: one or more token68 characters, then any number of `=`. */
export function isToken68(s: string): boolean {
  let i = 0;
  while (i < s.length && isToken68Char(s.charCodeAt(i))) i++;
  if (i === 0) return false;
  while (i < s.length && s.charCodeAt(i) === 0x3d) i++;
  return i === s.length;
}
