import { createHash, type X509Certificate } from 'node:crypto';
import { derHeader } from '../der.ts';

// Signature algorithm OIDs (DER content bytes) whose hash is stronger than SHA-256.
const SHA384 = ['2a864886f70d01010c', '2a8648ce3d040303'];
const SHA512 = ['2a864886f70d01010d', '2a8648ce3d040304'];

/** The certificate's signature hash per RFC 5929 §4.1: MD5 and SHA-1 map to SHA-256. */
function endPointHash(der: Buffer): 'sha256' | 'sha384' | 'sha512' {
  try {
    const cert = derHeader(der, 0);
    const tbs = derHeader(der, cert.start);
    const algId = derHeader(der, tbs.end);
    const oid = derHeader(der, algId.start);
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
