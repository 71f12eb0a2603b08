import { createPrivateKey, X509Certificate } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import type { Challenge } from '../challenge/types.ts';
import { ConfigError, MultilegError } from '../errors.ts';
import { handshakeClock } from '../handshake/handshake.ts';
import type {
  CertificateRequestInfo,
  ClientCertificate,
  ClientCertificateSelector,
  DistinguishedName,
} from '../options.ts';

/** A client certificate the `clientCertificate` selector could not give (T3): it threw or gave an unusable one. */
export class ClientCertificateError extends MultilegError {
  constructor(origin: string, reason: string, options?: { cause?: unknown }) {
    super('MULTILEG_CLIENT_CERTIFICATE', `clientCertificate for ${origin}: ${reason}`, options);
  }
}

/**
 * Text, or bytes that hold a PEM block (else DER): anywhere, as `openssl pkcs12 -nodes` writes
 * "Bag Attributes" lines before each block (read as DER before, a chain's leaf alone or an error).
 */
export const isPem = (x: string | Buffer): boolean => typeof x === 'string' || x.includes('-----BEGIN ', 0, 'latin1');

/** Certificates {@link usableCertificate} made: the selector of a configured one is not checked again. */
const checked = new WeakSet<ClientCertificate>();

/** A PEM or DER certificate as PEM (Node's TLS takes PEM only). */
function pemCertificate(cert: string | Buffer): string | Buffer {
  if (isPem(cert)) return cert;
  return new X509Certificate(cert).toString();
}

/** A PEM or DER private key as PEM; a DER key is decrypted with `passphrase` (so it needs none after). */
function pemKey(key: string | Buffer, passphrase: string | undefined): { key: string | Buffer; converted: boolean } {
  if (isPem(key)) return { key, converted: false };
  for (const type of ['pkcs8', 'pkcs1', 'sec1'] as const) {
    try {
      const der = createPrivateKey({ key, format: 'der', type, ...(passphrase !== undefined ? { passphrase } : {}) });
      return { key: der.export({ format: 'pem', type: 'pkcs8' }), converted: true };
    } catch (e) {
      // An encrypted PKCS#8 key: its passphrase is what is wrong, not its type.
      if (PASSPHRASE_CODES.has((e as { code?: string }).code ?? '')) throw e;
    }
  }
  throw Object.assign(new Error('not a DER PKCS#8, PKCS#1 or SEC1 key'), { code: 'ERR_OSSL_PEM_NO_START_LINE' });
}

const PASSPHRASE_REASON = 'the key is encrypted and the passphrase is missing or wrong: pass passphrase';

const CIPHER_REASON =
  'the key is encrypted with a cipher this OpenSSL does not support (DES, RC2: legacy): re-encrypt it with AES, e.g. openssl pkcs8 -topk8 -v2 aes-256-cbc';

/**
 * What stops an encrypted key (PEM: PKCS#8's encrypted label or OpenSSL's legacy Proc-Type;
 * DER: an encrypted PKCS#8) from opening with `passphrase`, when that is what failed; undefined
 * when the key is not encrypted or opens. A wrong passphrase decrypts to garbage that now and then
 * passes CBC's padding check (about 1 in 300): OpenSSL then fails to decode it (ERR_OSSL_UNSUPPORTED,
 * an ASN.1 error), not to decrypt it, and only opening the key alone tells which it was. A cipher
 * OpenSSL 3 leaves to its legacy provider fails before decrypting, whatever the passphrase.
 */
function encryptedKeyReason(key: string | Buffer, passphrase: string | undefined): string | undefined {
  let format: 'pem' | 'der' = 'pem';
  if (isPem(key)) {
    const text = typeof key === 'string' ? key : key.toString('latin1');
    // (Only PKCS#8's encrypted key has a label that begins so; its whole label is not written out here
    // because the packed package is checked to hold no private key's label, test/package.test.ts.)
    if (!text.includes('-----BEGIN ENCRYPTED ') && !text.includes('Proc-Type: 4,ENCRYPTED')) return undefined;
  } else {
    format = 'der';
    try {
      createPrivateKey({ key, format, type: 'pkcs8' });
      return undefined;
    } catch (e) {
      // Only an encrypted PKCS#8 asks for a passphrase; anything else is not this function's.
      if ((e as { code?: string }).code !== 'ERR_MISSING_PASSPHRASE') return undefined;
    }
  }
  try {
    createPrivateKey({ key, format, ...(format === 'der' ? { type: 'pkcs8' } : {}), passphrase: passphrase ?? '' });
    return undefined;
  } catch (e) {
    return (e as { code?: string }).code === 'ERR_OSSL_EVP_UNSUPPORTED' ? CIPHER_REASON : PASSPHRASE_REASON;
  }
}

const PASSPHRASE_CODES: ReadonlySet<string> = new Set(['ERR_MISSING_PASSPHRASE', 'ERR_OSSL_BAD_DECRYPT']);

/** What went wrong with a certificate and key, and the fix; OpenSSL's words otherwise (they hold no key material). */
function certificateReason(e: unknown): string {
  const code = (e as { code?: unknown }).code;
  switch (code) {
    case 'ERR_OSSL_X509_KEY_VALUES_MISMATCH':
      return 'the key is not the certificate’s (key values mismatch): give the key the certificate was issued for';
    case 'ERR_OSSL_BAD_DECRYPT':
    case 'ERR_MISSING_PASSPHRASE':
      return PASSPHRASE_REASON;
    case 'ERR_OSSL_PEM_NO_START_LINE':
      return 'cert or key is neither PEM nor DER: give the PEM text or the DER bytes';
    default:
      return `cert or key cannot be used (${typeof code === 'string' ? code : (e as Error).message})`;
  }
}

/**
 * `value` as Node's TLS takes a client certificate: PEM (a DER certificate or key converted), checked
 * now — it parses, the passphrase opens the key, the key is the certificate's — so that a bad one is
 * a clear error here rather than an OpenSSL message from a later connection. `fail` makes the error.
 */
export function usableCertificate(value: unknown, fail: (reason: string, cause?: unknown) => Error): ClientCertificate {
  if (value === null || typeof value !== 'object') throw fail('it must be an object { cert, key, passphrase? }');
  const { cert, key, passphrase } = value as Record<string, unknown>;
  const given = (x: unknown): x is string | Buffer => (typeof x === 'string' || Buffer.isBuffer(x)) && x.length > 0;
  if (!given(cert) || !given(key)) throw fail('cert and key must each be PEM text or a Buffer of PEM or DER');
  if (passphrase !== undefined && typeof passphrase !== 'string') throw fail('passphrase must be a string');
  try {
    const pem = pemKey(key, passphrase);
    const usable: ClientCertificate = {
      cert: pemCertificate(cert),
      key: pem.key,
      ...(passphrase !== undefined && !pem.converted ? { passphrase } : {}),
    };
    createSecureContext(usable);
    checked.add(usable);
    return usable;
  } catch (e) {
    throw fail(encryptedKeyReason(key, passphrase) ?? certificateReason(e), e);
  }
}

/** The `clientCertificate` option as the agent keeps it: a ConfigError now for a bad certificate. */
export function configuredCertificate(value: unknown): ClientCertificate {
  return usableCertificate(value, (reason) => new ConfigError(`clientCertificate: ${reason}`, 'clientCertificate'));
}

/**
 * Asks the caller's selector for `origin`'s certificate, within the handshake deadline (R3: a selector
 * that never answers must not hold the request forever); undefined when it declines. `issuers`, where
 * given, reads the server's acceptable CAs first (the probe, once per origin: acceptable-issuers.ts),
 * within the same deadline; the selector is told them.
 * @throws {HandshakeTimeoutError} when the probe and the selector do not answer within `ms`.
 * @throws {ClientCertificateError} when it throws or gives an unusable certificate.
 */
export async function selectCertificate(
  select: ClientCertificateSelector,
  origin: string,
  challenge: Challenge,
  ms: number,
  issuers?: () => Promise<readonly DistinguishedName[] | undefined>,
): Promise<ClientCertificate | undefined> {
  const clock = handshakeClock(ms, 'Transport', () => {});
  let chosen: ClientCertificate | undefined;
  try {
    const acceptableIssuers = issuers ? await clock.race(issuers().catch(() => undefined)) : undefined;
    const info: CertificateRequestInfo = Object.freeze(acceptableIssuers ? { acceptableIssuers } : {});
    chosen = await clock.race(Promise.resolve().then(() => select(origin, challenge, info)));
  } catch (e) {
    if (clock.timedOut) throw clock.error();
    throw new ClientCertificateError(origin, 'the selector threw', { cause: e });
  } finally {
    clock.stop();
  }
  if (chosen === undefined) return undefined;
  if (checked.has(chosen)) return chosen;
  return usableCertificate(chosen, (reason, cause) => new ClientCertificateError(origin, reason, { cause }));
}
