/**
 * RC4 stream cipher. NTLM KEY_EXCH encrypts the 16-byte ExportedSessionKey with RC4 under the
 * KeyExchangeKey (MS-NLMP 3.1.5.1.2), and Node's OpenSSL 3 build refuses `rc4`. Encryption and
 * decryption are the same operation.
 */

/**
 * The cipher's state, reused: a call runs to its end synchronously, and per-request NTLM makes one
 * call per request (a 256-byte array each was ~0.4 KB of allocation a request).
 */
const s = new Uint8Array(256);

/** RC4-encrypts (or decrypts) `data` under `key` (1..256 bytes) in one shot. */
export function rc4(key: Uint8Array, data: Uint8Array): Buffer {
  if (key.length === 0 || key.length > 256) throw new RangeError('rc4: key must be 1..256 bytes');
  for (let i = 0; i < 256; i++) s[i] = i;
  let j = 0;
  for (let i = 0; i < 256; i++) {
    const si = s[i]!;
    j = (j + si + key[i % key.length]!) & 0xff;
    s[i] = s[j]!;
    s[j] = si;
  }
  const out = Buffer.alloc(data.length);
  let i = 0;
  j = 0;
  for (let n = 0; n < data.length; n++) {
    i = (i + 1) & 0xff;
    const si = s[i]!;
    j = (j + si) & 0xff;
    const sj = s[j]!;
    s[i] = sj;
    s[j] = si;
    out[n] = data[n]! ^ s[(si + sj) & 0xff]!;
  }
  // The key schedule does not outlive the call.
  s.fill(0);
  return out;
}
