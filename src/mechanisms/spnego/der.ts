/**
 * The little DER SPNEGO needs (RFC 4178 over X.690): definite-length TLVs, OIDs, ENUMERATED, OCTET
 * STRING. The decoder treats input as hostile: every length is checked against the buffer and anything
 * malformed throws {@link InvalidTokenError} (S3).
 */
import { type DerHeader, derEncode, derHeader } from '../../der.ts';
import { InvalidTokenError } from '../../errors.ts';

const invalid = (): InvalidTokenError => new InvalidTokenError('SPNEGO token (malformed DER)');

/** One TLV. */
export function tlv(tag: number, content: Buffer): Buffer {
  return derEncode(tag, content);
}

/** OID from dotted form, e.g. `1.3.6.1.5.5.2`. */
export function encodeOid(dotted: string): Buffer {
  const arcs = dotted.split('.').map((s) => Number(s));
  if (arcs.length < 2 || arcs.some((a) => !Number.isSafeInteger(a) || a < 0)) throw new RangeError(`bad OID ${dotted}`);
  const out: number[] = [arcs[0]! * 40 + arcs[1]!];
  for (const arc of arcs.slice(2)) {
    const b: number[] = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) b.unshift((v & 0x7f) | 0x80);
    out.push(...b);
  }
  return tlv(0x06, Buffer.from(out));
}

/** Dotted form of an OID's content octets. */
export function decodeOidContent(c: Buffer): string {
  if (c.length === 0) throw invalid();
  const first = c[0]!;
  const arcs = [first < 80 ? Math.floor(first / 40) : 2, first < 80 ? first % 40 : first - 80];
  let v = 0;
  for (let i = 1; i < c.length; i++) {
    const b = c[i]!;
    v = v * 128 + (b & 0x7f);
    if (v > Number.MAX_SAFE_INTEGER / 128) throw invalid();
    if ((b & 0x80) === 0) {
      arcs.push(v);
      v = 0;
    } else if (i === c.length - 1) throw invalid();
  }
  return arcs.join('.');
}

export interface Tlv {
  readonly tag: number;
  readonly content: Buffer;
  /** Offset just past this TLV in the buffer it was read from. */
  readonly end: number;
}

/** Reads one TLV at `offset` within `buf[0, limit)`. */
export function readTlv(buf: Buffer, offset = 0, limit = buf.length): Tlv {
  let header: DerHeader;
  try {
    header = derHeader(buf, offset, limit);
  } catch {
    throw invalid();
  }
  if ((header.tag & 0x1f) === 0x1f) throw invalid(); // high tag numbers never occur in SPNEGO
  return { tag: header.tag, content: buf.subarray(header.start, header.end), end: header.end };
}

/** All TLVs inside `content` (a SEQUENCE's content, say). */
export function readAll(content: Buffer): Tlv[] {
  const out: Tlv[] = [];
  for (let p = 0; p < content.length; ) {
    const t = readTlv(content, p);
    out.push(t);
    p = t.end;
  }
  return out;
}
