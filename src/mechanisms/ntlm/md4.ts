/**
 * MD4 (RFC 1320). NTLM's NT hash is MD4 of the UTF-16LE password, and Node's OpenSSL 3 build
 * refuses `md4` (legacy provider), so it is implemented here. Only used for that one hash.
 */

const ROUND1_SHIFTS = [3, 7, 11, 19] as const;
const ROUND2_SHIFTS = [3, 5, 9, 13] as const;
const ROUND3_SHIFTS = [3, 9, 11, 15] as const;
const ROUND2_ORDER = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15] as const;
const ROUND3_ORDER = [0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15] as const;

function rotl(x: number, n: number): number {
  return (x << n) | (x >>> (32 - n));
}

/** MD4 digest (16 bytes) of `data`. */
export function md4(data: Uint8Array): Buffer {
  const len = data.length;
  // Message, 0x80, zero padding, then the 64-bit little-endian bit length; whole 64-byte blocks.
  const total = Math.ceil((len + 9) / 64) * 64;
  const buf = Buffer.alloc(total);
  buf.set(data);
  buf[len] = 0x80;
  buf.writeBigUInt64LE(BigInt(len) * 8n, total - 8);

  let h0 = 0x67452301;
  let h1 = 0xefcdab89 | 0;
  let h2 = 0x98badcfe | 0;
  let h3 = 0x10325476;
  const x = new Int32Array(16);

  for (let off = 0; off < total; off += 64) {
    for (let i = 0; i < 16; i++) x[i] = buf.readInt32LE(off + 4 * i);
    let a = h0;
    let b = h1;
    let c = h2;
    let d = h3;
    // Each step updates `a` and then rotates the roles (a,b,c,d) -> (d,a',b,c), as in RFC 1320.
    for (let i = 0; i < 16; i++) {
      const f = (b & c) | (~b & d);
      const t = rotl((a + f + x[i]!) | 0, ROUND1_SHIFTS[i % 4]!);
      a = d;
      d = c;
      c = b;
      b = t;
    }
    for (let i = 0; i < 16; i++) {
      const g = (b & c) | (b & d) | (c & d);
      const t = rotl((a + g + x[ROUND2_ORDER[i]!]! + 0x5a827999) | 0, ROUND2_SHIFTS[i % 4]!);
      a = d;
      d = c;
      c = b;
      b = t;
    }
    for (let i = 0; i < 16; i++) {
      const h = b ^ c ^ d;
      const t = rotl((a + h + x[ROUND3_ORDER[i]!]! + 0x6ed9eba1) | 0, ROUND3_SHIFTS[i % 4]!);
      a = d;
      d = c;
      c = b;
      b = t;
    }
    h0 = (h0 + a) | 0;
    h1 = (h1 + b) | 0;
    h2 = (h2 + c) | 0;
    h3 = (h3 + d) | 0;
  }

  const out = Buffer.alloc(16);
  out.writeInt32LE(h0, 0);
  out.writeInt32LE(h1, 4);
  out.writeInt32LE(h2, 8);
  out.writeInt32LE(h3, 12);
  return out;
}
