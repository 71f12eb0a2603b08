import { createHash, type X509Certificate } from 'node:crypto';

/** Reads one DER TLV header at `offset`; returns the content start and end. */
function tlv(der: Buffer, offset: number): { tag: number; start: number; end: number } {
  const tag = der[offset]!;
  let len = der[offset + 1]!;
  let start = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[start + i]!;
    start += n;
  }
  // Not reached from tlsServerEndPoint (Node has parsed `cert.raw` already); kept so that a length
  // this walk misreads can never index past the buffer.
  if (start + len > der.length) throw new RangeError('truncated DER');
  return { tag, start, end: start + len };
}

// Signature algorithm OIDs (DER content bytes) whose hash is stronger than SHA-256.
const SHA384 = ['2a864886f70d01010c', '2a8648ce3d040303'];
const SHA512 = ['2a864886f70d01010d', '2a8648ce3d040304'];

/** The certificate's signature hash per RFC 5929 §4.1: MD5 and SHA-1 map to SHA-256. */
function endPointHash(der: Buffer): 'sha256' | 'sha384' | 'sha512' {
  try {
    const cert = tlv(der, 0);
    const tbs = tlv(der, cert.start);
    const algId = tlv(der, tbs.end);
    const oid = tlv(der, algId.start);
    const hex = der.subarray(oid.start, oid.end).toString('hex');
    if (SHA384.includes(hex)) return 'sha384';
    if (SHA512.includes(hex)) return 'sha512';
  } catch {
    // An unparseable certificate still gets the RFC's default below.
  }
  return 'sha256';
}

/** `tls-server-end-point` channel binding data (RFC 5929): the hash of the server certificate. */
export function tlsServerEndPoint(cert: X509Certificate | undefined): Buffer | undefined {
  if (!cert) return undefined;
  const der = cert.raw;
  return createHash(endPointHash(der)).update(der).digest();
}
