/** One challenge from a `WWW-Authenticate` or `Proxy-Authenticate` header (RFC 9110 §11.3). */
export interface Challenge {
  /** The auth-scheme as sent, e.g. `Negotiate`. */
  readonly scheme: string;
  /** Lower-cased scheme, for comparisons (schemes are case-insensitive). */
  readonly schemeKey: string;
  /** The token68, when the challenge carries one (NTLM/Negotiate tokens, base64). */
  readonly token68?: string;
  /** Auth-params with lower-cased names; quoted-string values are unescaped. */
  readonly params: Readonly<Record<string, string>>;
}
