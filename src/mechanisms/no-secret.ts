/**
 * Which credentials carry no secret (R4): an NTLM NEGOTIATE, the opening of an NTLM handshake, holds
 * flags and no password, so a server cannot count it as a try of one. Read from the header value
 * itself, for the `multileg:leg` events (diagnostics.ts), with no SPNEGO decoder: an NTLM request
 * loads none of Negotiate's code (its context loads it at its first step).
 */
import { isNegotiateMessage } from './ntlm/messages.ts';

/** An NTLM or Negotiate credential: its scheme and base64 token, short enough to be a NEGOTIATE. */
const OPENING = /^[ \t]*(NTLM|Negotiate)[ \t]+([A-Za-z0-9+/]{1,1024}={0,2})[ \t]*$/i;

/**
 * Whether an `Authorization` / `Proxy-Authorization` value is an NTLM NEGOTIATE: `NTLM <type 1>`,
 * `Negotiate <type 1>` (NTLM inside Negotiate, unwrapped), or a SPNEGO NegTokenInit that offers
 * NTLMSSP first with a type 1 as its token and no mechListMIC. Anything else counts as a
 * credential, a Kerberos AP-REQ included (a ticket, docs/SECURITY.md), and so does a token of over
 * 1024 characters (a NEGOTIATE is 40 bytes, about 100 in SPNEGO's framing; it is not decoded).
 */
export function carriesNoSecret(value: string): boolean {
  const m = OPENING.exec(value);
  if (!m) return false;
  const token = Buffer.from(m[2]!, 'base64');
  if (isNegotiateMessage(token)) return true;
  return m[1]!.toLowerCase() === 'negotiate' && spnegoNegotiate(token);
}

/** DER of the SPNEGO and NTLMSSP OIDs (1.3.6.1.5.5.2, 1.3.6.1.4.1.311.2.2.10), content only. */
const SPNEGO_OID = Buffer.from([0x2b, 0x06, 0x01, 0x05, 0x05, 0x02]);
const NTLMSSP_OID = Buffer.from([0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a]);

interface Element {
  readonly tag: number;
  readonly start: number;
  readonly end: number;
}

/** The DER element at `at`: its tag and content bounds, or undefined when it does not fit before `end`. */
function element(buf: Buffer, at: number, end: number): Element | undefined {
  if (at + 2 > end) return undefined;
  let len = buf[at + 1]!;
  let start = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || start + n > end) return undefined;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[start + i]!;
    start += n;
  }
  return start + len > end ? undefined : { tag: buf[at]!, start, end: start + len };
}

const holds = (buf: Buffer, e: Element | undefined, tag: number, content: Buffer): boolean =>
  e?.tag === tag && buf.subarray(e.start, e.end).equals(content);

/** Whether a MechTypeList holds OIDs only, each whole (a last byte that ends its arc), as the full decode wants. */
function mechList(buf: Buffer, list: Element): boolean {
  for (let at = list.start; at < list.end; ) {
    const mech = element(buf, at, list.end);
    if (mech?.tag !== 0x06 || mech.end === mech.start || (buf[mech.end - 1]! & 0x80) !== 0) return false;
    at = mech.end;
  }
  return true;
}

/**
 * Whether `buf` is a SPNEGO NegTokenInit (RFC 4178) whose first mech is NTLMSSP and whose token is
 * an NTLM NEGOTIATE, with only `reqFlags` beside them: a mechListMIC, or anything this does not
 * know, answers false (counted as a credential).
 */
function spnegoNegotiate(buf: Buffer): boolean {
  const app = element(buf, 0, buf.length);
  if (app?.tag !== 0x60 || app.end !== buf.length) return false;
  const oid = element(buf, app.start, app.end);
  if (!oid || !holds(buf, oid, 0x06, SPNEGO_OID)) return false;
  const choice = element(buf, oid.end, app.end);
  const init = choice?.tag === 0xa0 ? element(buf, choice.start, choice.end) : undefined;
  if (init?.tag !== 0x30) return false;
  let ntlmFirst = false;
  let token: Buffer | undefined;
  for (let at = init.start; at < init.end; ) {
    const field = element(buf, at, init.end);
    const inner = field && element(buf, field.start, field.end);
    if (!field || !inner) return false;
    if (field.tag === 0xa0 && inner.tag === 0x30) {
      if (!mechList(buf, inner)) return false;
      ntlmFirst = holds(buf, element(buf, inner.start, inner.end), 0x06, NTLMSSP_OID);
    } else if (field.tag === 0xa2 && inner.tag === 0x04) token = buf.subarray(inner.start, inner.end);
    else if (field.tag !== 0xa1) return false;
    at = field.end;
  }
  return ntlmFirst && token !== undefined && isNegotiateMessage(token);
}
