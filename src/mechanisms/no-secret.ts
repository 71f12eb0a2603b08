/**
 * Which credentials carry no secret (R4): an NTLM NEGOTIATE, the opening of an NTLM handshake, holds
 * flags and no password, so a server cannot count it as a try of one. Read from the header value
 * itself, for the `multileg:leg` events (diagnostics.ts).
 */
import { isNegotiateMessage } from './ntlm/messages.ts';

/** An NTLM or Negotiate credential: its scheme and base64 token, short enough to be a NEGOTIATE. */
const OPENING = /^[ \t]*(NTLM|Negotiate)[ \t]+([A-Za-z0-9+/]{1,1024}={0,2})[ \t]*$/i;

/**
 * Whether an `Authorization` / `Proxy-Authorization` value is an NTLM NEGOTIATE: `NTLM <type 1>` or
 * `Negotiate <type 1>` (NTLM inside Negotiate as the agent sends it to origins, unwrapped). Anything
 * else counts as a credential: a Kerberos AP-REQ (a ticket, docs/SECURITY.md), a NEGOTIATE wrapped
 * in SPNEGO (`ntlmFallback: 'spnego'`; not decoded here, so counted, the safe side), and a token of
 * over 1024 characters (a NEGOTIATE is 40 bytes).
 */
export function carriesNoSecret(value: string): boolean {
  const m = OPENING.exec(value);
  return m !== null && isNegotiateMessage(Buffer.from(m[2]!, 'base64'));
}
