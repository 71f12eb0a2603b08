/**
 * SPNEGO tokens (RFC 4178 §4.2): the initiator's first token (GSS framing + NegTokenInit) and
 * NegTokenResp both ways.
 */
import { InvalidTokenError } from '../../errors.ts';
import { decodeOidContent, encodeOid, readAll, readTlv, tlv } from './der.ts';

export const OID_SPNEGO = '1.3.6.1.5.5.2';
export const OID_NTLMSSP = '1.3.6.1.4.1.311.2.2.10';
export const OID_KRB5 = '1.2.840.113554.1.2.2';
export const OID_MS_KRB5 = '1.2.840.48018.1.2.2';

/** negState (RFC 4178 §4.2.2). */
export const NegState = { ACCEPT_COMPLETED: 0, ACCEPT_INCOMPLETE: 1, REJECT: 2, REQUEST_MIC: 3 } as const;

const invalid = (): InvalidTokenError => new InvalidTokenError('SPNEGO token');

/** The DER MechTypeList (`SEQUENCE OF OID`) — also the input of mechListMIC. */
export function encodeMechTypeList(mechs: readonly string[]): Buffer {
  return tlv(0x30, Buffer.concat(mechs.map(encodeOid)));
}

/** InitialContextToken: [APPLICATION 0] { spnego OID, [0] NegTokenInit { [0] mechTypes, [2] mechToken } }. */
export function encodeNegTokenInit(mechs: readonly string[], mechToken?: Buffer, mechListMIC?: Buffer): Buffer {
  const fields = [tlv(0xa0, encodeMechTypeList(mechs))];
  if (mechToken) fields.push(tlv(0xa2, tlv(0x04, mechToken)));
  if (mechListMIC) fields.push(tlv(0xa3, tlv(0x04, mechListMIC)));
  const negTokenInit = tlv(0xa0, tlv(0x30, Buffer.concat(fields)));
  return tlv(0x60, Buffer.concat([encodeOid(OID_SPNEGO), negTokenInit]));
}

export interface NegTokenResp {
  readonly negState?: number;
  readonly supportedMech?: string;
  readonly responseToken?: Buffer;
  readonly mechListMIC?: Buffer;
}

/** NegTokenResp: [1] SEQUENCE { [0] negState, [1] supportedMech, [2] responseToken, [3] mechListMIC }. */
export function encodeNegTokenResp(r: NegTokenResp): Buffer {
  const fields: Buffer[] = [];
  if (r.negState !== undefined) fields.push(tlv(0xa0, tlv(0x0a, Buffer.from([r.negState]))));
  if (r.supportedMech) fields.push(tlv(0xa1, encodeOid(r.supportedMech)));
  if (r.responseToken) fields.push(tlv(0xa2, tlv(0x04, r.responseToken)));
  if (r.mechListMIC) fields.push(tlv(0xa3, tlv(0x04, r.mechListMIC)));
  return tlv(0xa1, tlv(0x30, Buffer.concat(fields)));
}

/** Decodes a NegTokenResp (what an acceptor sends). Throws {@link InvalidTokenError} on anything else. */
export function decodeNegTokenResp(buf: Buffer): NegTokenResp {
  const outer = readTlv(buf);
  if (outer.tag !== 0xa1 || outer.end !== buf.length) throw invalid();
  const seq = readTlv(outer.content);
  if (seq.tag !== 0x30 || seq.end !== outer.content.length) throw invalid();
  const out: { negState?: number; supportedMech?: string; responseToken?: Buffer; mechListMIC?: Buffer } = {};
  for (const f of readAll(seq.content)) {
    const inner = readTlv(f.content);
    if (inner.end !== f.content.length) throw invalid();
    switch (f.tag) {
      case 0xa0:
        if (inner.tag !== 0x0a || inner.content.length !== 1) throw invalid();
        out.negState = inner.content[0]!;
        break;
      case 0xa1:
        if (inner.tag !== 0x06) throw invalid();
        out.supportedMech = decodeOidContent(inner.content);
        break;
      case 0xa2:
        if (inner.tag !== 0x04) throw invalid();
        out.responseToken = Buffer.from(inner.content);
        break;
      case 0xa3:
        if (inner.tag !== 0x04) throw invalid();
        out.mechListMIC = Buffer.from(inner.content);
        break;
      default:
        throw invalid();
    }
  }
  return out;
}

/**
 * Whether a server's base64 token is a NegTokenResp whose negState is `reject` (an acceptor's
 * refusal: MIT's mod_auth_gssapi sends `oQcwBaADCgEC` when it accepts none of the offered mechanisms).
 */
export function isNegTokenReject(token68: string): boolean {
  const buf = Buffer.from(token68, 'base64');
  if (buf[0] !== 0xa1) return false;
  try {
    return decodeNegTokenResp(buf).negState === NegState.REJECT;
  } catch {
    return false;
  }
}

/** Decodes an initiator's first token (for tests and acceptors): mech list and optimistic token. */
export function decodeNegTokenInit(buf: Buffer): { mechTypes: string[]; mechToken?: Buffer; mechListMIC?: Buffer } {
  const app = readTlv(buf);
  if (app.tag !== 0x60 || app.end !== buf.length) throw invalid();
  const oid = readTlv(app.content);
  if (oid.tag !== 0x06 || decodeOidContent(oid.content) !== OID_SPNEGO) throw invalid();
  const choice = readTlv(app.content, oid.end);
  if (choice.tag !== 0xa0) throw invalid();
  const seq = readTlv(choice.content);
  if (seq.tag !== 0x30) throw invalid();
  const res: { mechTypes: string[]; mechToken?: Buffer; mechListMIC?: Buffer } = { mechTypes: [] };
  for (const f of readAll(seq.content)) {
    const inner = readTlv(f.content);
    if (f.tag === 0xa0) {
      if (inner.tag !== 0x30) throw invalid();
      res.mechTypes = readAll(inner.content).map((t) => {
        if (t.tag !== 0x06) throw invalid();
        return decodeOidContent(t.content);
      });
    } else if (f.tag === 0xa2 && inner.tag === 0x04) res.mechToken = Buffer.from(inner.content);
    else if (f.tag === 0xa3 && inner.tag === 0x04) res.mechListMIC = Buffer.from(inner.content);
  }
  return res;
}
