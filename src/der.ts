/**
 * The little DER (X.690) the agent reads and writes: definite-length TLVs. Every length is checked
 * against the buffer; anything malformed throws a RangeError, which each caller turns into its own
 * answer (SPNEGO: InvalidTokenError, S3; a certificate's fields: none read).
 */

/** A TLV's header at `offset` within `buf[0, limit)`: its tag, where its content starts and ends. */
export interface DerHeader {
  readonly tag: number;
  readonly start: number;
  readonly end: number;
}

/** Reads the TLV at `offset` within `buf[0, limit)`. @throws {RangeError} when it is cut short or its length is not DER's. */
export function derHeader(buf: Buffer, offset = 0, limit = buf.length): DerHeader {
  if (offset < 0 || offset + 2 > limit) throw new RangeError('truncated DER');
  const tag = buf[offset]!;
  let length = buf[offset + 1]!;
  let start = offset + 2;
  if (length & 0x80) {
    const n = length & 0x7f;
    if (n === 0 || n > 4 || start + n > limit) throw new RangeError('DER length');
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + buf[start + i]!;
    start += n;
  }
  if (start + length > limit) throw new RangeError('truncated DER');
  return { tag, start, end: start + length };
}

function encodeLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

/** One TLV of `tag` around `content` (the parts joined). */
export function derEncode(tag: number, ...content: Buffer[]): Buffer {
  const body = content.length === 1 ? content[0]! : Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), encodeLength(body.length), body]);
}
