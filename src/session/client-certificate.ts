import { createPrivateKey, X509Certificate } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import type { Challenge } from '../challenge/types.ts';
import {
  ConfigError,
  ConnectionClosedError,
  HandshakeTimeoutError,
  MultilegError,
  type MultilegErrorCode,
} from '../errors.ts';
import { handshakeClock } from '../handshake/handshake.ts';
import type { HeldResponse, ResponseHeaders } from '../handshake/leg.ts';
import type {
  CertificateRequestInfo,
  ClientCertificate,
  ClientCertificateSelector,
  DistinguishedName,
} from '../options.ts';
import type { ProbeAnswer } from './acceptable-issuers.ts';

/** No probe asked: the selector is told nothing of the server's CAs. */
const NOT_ASKED: ProbeAnswer = Object.freeze({ told: false });

/** A client certificate the `clientCertificate` selector could not give (T3): it threw or gave an unusable one. */
export class ClientCertificateError extends MultilegError {
  /** `code`: a subclass's own. */
  constructor(
    origin: string,
    reason: string,
    options?: { cause?: unknown },
    code: MultilegErrorCode = 'MULTILEG_CLIENT_CERTIFICATE',
  ) {
    super(code, `clientCertificate for ${origin}: ${reason}`, options);
  }
}

/**
 * The server refused the TLS handshake without a client certificate, and the agent had none to
 * give it (T3): no `clientCertificate`, or a selector that returned none for the origin. The cause
 * is the TLS error; `acceptableIssuers`, the CAs the server named (as the selector was told them).
 */
export class ClientCertificateRequiredError extends ClientCertificateError {
  /** The origin whose server refused the handshake. */
  readonly origin: string;
  /** The CAs the server's CertificateRequest named (`[]`: none named, any may do; or not known, {@link afterHandshake}). */
  readonly acceptableIssuers: readonly DistinguishedName[];
  /**
   * The server asked after the TLS handshake, for the request's path only, by renegotiating the
   * connection (TLS 1.2), and closed it when none came; its CAs are not known.
   */
  readonly afterHandshake: boolean;
  /** `how`: how the server refused the request without one (default: the TLS handshake; nginx: its 400). */
  constructor(
    origin: string,
    selector: boolean,
    acceptableIssuers: readonly DistinguishedName[],
    options?: { cause?: unknown },
    how = 'it refused the TLS handshake without one',
    afterHandshake = false,
  ) {
    const issuers =
      acceptableIssuers.length > 0 ? ` (it accepts certificates issued by ${caNames(acceptableIssuers, 3)})` : '';
    const fix = selector
      ? `the selector returned none: return a certificate for ${origin} from the clientCertificate selector${issuers}`
      : `give clientCertificate: { cert, key }, or a selector that returns one for ${origin}${issuers}`;
    super(
      origin,
      `the server requires a TLS client certificate (${how}); ${fix}`,
      options,
      'MULTILEG_CLIENT_CERTIFICATE_REQUIRED',
    );
    this.origin = origin;
    this.acceptableIssuers = acceptableIssuers;
    this.afterHandshake = afterHandshake;
  }
}

/**
 * The server refused the client certificate the agent presented in the TLS handshake (T3): a TLS
 * alert such as unknown_ca, bad_certificate or certificate_expired, or (Node's https, which
 * verifies after the handshake and sends none) a close or reset of the connection before any
 * answer; or nginx's 400 page (`answered`). The cause is the connection's error. A certificate the
 * selector chose is no longer the origin's, and the selector is asked again at once: this error
 * comes when it gave the refused one again, or the request could not go again (then the next
 * request asks). One given as such stays.
 */
export class ClientCertificateRefusedError extends ClientCertificateError {
  /** The origin whose server refused the certificate. */
  readonly origin: string;
  /** The TLS alert's code, as Node names it (`ERR_SSL_TLSV1_ALERT_UNKNOWN_CA`, …); undefined for a close without one. */
  readonly alert: string | undefined;
  /** The response that refused it, where the server answered (nginx's 400 page: `400 "The SSL certificate error" (nginx)`). */
  readonly answered: string | undefined;
  constructor(
    origin: string,
    alert: string | undefined,
    /**
     * `false`: given as such; `true`: the selector chose it (it is asked again for the next
     * request); `'again'` / `'none'`: the selector, asked again at once, returned it again / none.
     */
    chosen: boolean | 'again' | 'none',
    options?: { cause?: unknown },
    answered?: string,
  ) {
    // (The origin is named once, by ClientCertificateError's prefix.)
    const given = `the client certificate ${chosen ? 'the selector chose' : 'given as clientCertificate'}`;
    const name = alert && alertName(alert);
    const why =
      name === 'certificate_expired'
        ? "it has expired, or is not valid yet, by the server's clock: renew it"
        : name === 'certificate_revoked'
          ? 'it was revoked: get a new one'
          : 'one issued by a CA the server accepts (a selector is told them in info.acceptableIssuers), valid today, is needed';
    super(
      origin,
      `${
        alert
          ? `the server refused ${given} in the TLS handshake (TLS alert ${name}, ${alert})`
          : answered
            ? `the server refused ${given}: it answered ${answered}`
            : `the server closed the connection that presented ${given} before answering, as a server that does not accept the certificate does (Node's https sends no TLS alert; if the server did accept it, something between closed the connection: a load balancer, a restart)`
      }; ${why}${
        chosen === 'again'
          ? '; the selector, asked again, returned the same certificate: return another'
          : chosen === 'none'
            ? '; the selector, asked again, returned none'
            : chosen
              ? '; the selector is asked again for the next request'
              : ''
      }`,
      options,
      'MULTILEG_CLIENT_CERTIFICATE_REFUSED',
    );
    this.origin = origin;
    this.alert = alert;
    this.answered = answered;
  }
}

/**
 * The server asked for a client certificate after the TLS 1.3 handshake, for the request's path only
 * (T3: post-handshake authentication, RFC 8446 §4.6.2: Apache's per-directory `SSLVerifyClient`, an
 * IIS folder's client certificates), and Node's TLS client, which does not offer it, cannot answer:
 * Apache says so in its 403 (`answered`). The agent has a certificate for the origin; only a TLS 1.2
 * connection (renegotiation) or a server that asks in its handshake can take it.
 */
export class ClientCertificateAfterHandshakeError extends ClientCertificateError {
  /** The origin whose server asked. */
  readonly origin: string;
  /** What the server answered: `403 "Cannot perform Post-Handshake Authentication" (Apache)`. */
  readonly answered: string;
  constructor(origin: string, answered: string, options?: { cause?: unknown }) {
    super(
      origin,
      `the server asks for a client certificate after the TLS 1.3 handshake, for this path only (post-handshake authentication: a per-directory SSLVerifyClient, an IIS folder's client certificates), which Node's TLS client cannot do (it answered ${answered}); the certificate can go only in a TLS handshake the server asks in: ask the server's admin to ask for it there (SSLVerifyClient in the virtual host; IIS: negotiate client certificates on the binding), or connect to this server with TLS 1.2 (connect: { maxVersion: 'TLSv1.2' }), where it asks by renegotiation and the certificate is presented`,
      options,
      'MULTILEG_CLIENT_CERTIFICATE_AFTER_HANDSHAKE',
    );
    this.origin = origin;
    this.answered = answered;
  }
}

/**
 * Apache's words in the 403 it answers a request for a path that asks for a client certificate
 * after a TLS 1.3 handshake (mod_ssl, ssl_engine_kernel.c), when the client did not offer
 * post-handshake authentication, as Node's does not.
 */
const POST_HANDSHAKE_REASON = 'Cannot perform Post-Handshake Authentication';
/** At most this long: a 403 page that may hold {@link POST_HANDSHAKE_REASON} (Apache's is under 400 bytes). */
const POST_HANDSHAKE_PAGE_MAX = 4096;

/**
 * Whether a 403's head, on a TLS 1.3 connection that presents no certificate, may be Apache's refusal
 * for want of post-handshake authentication (T3): a short HTML page, read whole
 * ({@link postHandshakeAnswer}) before it goes to the caller. (Not by its Server header: a reverse
 * proxy may set its own.)
 */
export function mayBePostHandshakeRefusal(headers: ResponseHeaders, maxBody: number): boolean {
  const type = headers['content-type'];
  const length = Number(headers['content-length']);
  return (
    typeof type === 'string' &&
    type.startsWith('text/html') &&
    length > 0 &&
    length <= Math.min(maxBody, POST_HANDSHAKE_PAGE_MAX)
  );
}

/** What a held 403 says of post-handshake authentication: Apache's words (the whole answer, for the error), or undefined. */
export function postHandshakeAnswer(held: Pick<HeldResponse, 'headers' | 'body'>): string | undefined {
  const page = Buffer.concat(held.body).toString('latin1');
  if (!page.includes(`Reason: ${POST_HANDSHAKE_REASON}.`)) return undefined;
  const server = held.headers.server;
  return `403 "${POST_HANDSHAKE_REASON}"${typeof server === 'string' && server.startsWith('Apache') ? ' (Apache)' : ''}`;
}

/** A name as Node's X509Certificate writes it (an attribute a line) on one line; a comma in a value is escaped `\,`. */
export const nameLine = (name: string): string => name.replaceAll('\n', ', ');

/** At most `max` CA names, each on one line, and how many more (a server may name hundreds). */
export function caNames(issuers: readonly DistinguishedName[], max: number): string {
  const named = issuers.slice(0, max).map((n) => nameLine(n.name));
  return `${named.join('; ')}${issuers.length > max ? `; and ${issuers.length - max} more` : ''}`;
}

/** The TLS alert's name in a Node code for it: `ERR_SSL_TLSV1_ALERT_UNKNOWN_CA` → `unknown_ca`. */
export const alertName = (code: string): string => code.replace(/^ERR_SSL_.*_ALERT_/, '').toLowerCase();

/** The same certificate: the same object, or the same certificate text or bytes (a selector that reads its file again). */
export const sameCertificate = (a: ClientCertificate, b: ClientCertificate): boolean =>
  a === b || Buffer.from(a.cert).equals(Buffer.from(b.cert));

/**
 * OpenSSL's codes (Node's `ERR_SSL_…`) for the alerts a server sends when it does not accept the
 * client certificate it got (RFC 8446 §6.2): every TLS version's spelling. Not handshake_failure,
 * which also says that the two sides share no cipher or version.
 */
export const REFUSED_CERTIFICATE =
  /^ERR_SSL_(?:SSLV3|TLSV1|SSL\/TLS)_ALERT_(?:UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_UNKNOWN|UNSUPPORTED_CERTIFICATE|CERTIFICATE_EXPIRED|CERTIFICATE_REVOKED|ACCESS_DENIED|DECRYPT_ERROR)$/;

/**
 * nginx's own 400 pages under `ssl_verify_client on` (ngx_http_special_response.c): no certificate
 * sent (its 496), one it refused (its 495), each followed by the tail naming the server as its
 * Server header does (`nginx`, or `nginx/1.22.1` with server_tokens on).
 */
const NGINX_SAID = {
  missing: 'No required SSL certificate was sent',
  refused: 'The SSL certificate error',
} as const;
const nginxPage = (words: string, server: string) =>
  `<html>\r\n<head><title>400 ${words}</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>${words}</center>\r\n<hr><center>${server}</center>\r\n</body>\r\n</html>\r\n`;

/**
 * Whether a 400's head may be nginx's own page about the client certificate (T3): its Server, an
 * HTML type and the length of one of the two pages. nginx (`ssl_verify_client on`) completes the TLS
 * handshake without a certificate, or with one it refuses, and answers each request so; only the
 * page tells these from other 400s, so such a head's body is read ({@link certificateAnswer})
 * before the response goes to the caller. An application's 400 is not of that length and Server.
 */
export function mayBeCertificateAnswer(headers: ResponseHeaders): boolean {
  const server = headers.server;
  const type = headers['content-type'];
  if (typeof server !== 'string' || !server.startsWith('nginx') || typeof type !== 'string') return false;
  if (!type.startsWith('text/html')) return false;
  const length = Number(headers['content-length']);
  return Object.values(NGINX_SAID).some((words) => Buffer.byteLength(nginxPage(words, server)) === length);
}

/** What nginx's own 400 page says of the client certificate (the whole page, as nginx writes it): none was sent, or it refused the one sent. */
export function certificateAnswer(
  held: Pick<HeldResponse, 'headers' | 'body'>,
): { readonly said: 'missing' | 'refused'; readonly words: string } | undefined {
  const server = held.headers.server;
  if (typeof server !== 'string') return undefined;
  const page = Buffer.concat(held.body).toString('latin1');
  for (const said of ['missing', 'refused'] as const)
    if (page === nginxPage(NGINX_SAID[said], server)) return { said, words: `400 "${NGINX_SAID[said]}" (nginx)` };
  return undefined;
}

/**
 * The subject of `cert`'s first certificate (the one a TLS handshake presents), as Node writes it
 * (`X509Certificate#subject`, control characters escaped) with its lines joined by ", " (a comma in
 * a value is escaped `\,`); undefined when it cannot be read. No key is read.
 */
export function certificateSubject(cert: string | Buffer): string | undefined {
  try {
    return nameLine(new X509Certificate(cert).subject);
  } catch {
    return undefined;
  }
}

/**
 * How the failure of a connection that presented a client certificate, before any answer on it,
 * says the server refused the certificate (T3): by a {@link REFUSED_CERTIFICATE} alert anywhere in
 * the cause chain (its code), or by a close or reset (`'closed'`: Node's https sends no alert, it
 * closes once it has verified); undefined for anything else (a refused port, a timeout).
 */
export function certificateRefusal(err: Error): string | undefined {
  if (err instanceof ConnectionClosedError && err.fresh) return 'closed';
  const codes = codesOf(err);
  return codes.find((code) => REFUSED_CERTIFICATE.test(code)) ?? (codes.includes('ECONNRESET') ? 'closed' : undefined);
}

/** The string `code`s along `err`'s cause chain (a TLS alert lies under undici's and our wrappers), at most 4 deep. */
function codesOf(err: Error): string[] {
  const codes: string[] = [];
  let e: unknown = err;
  for (let depth = 0; e instanceof Error && depth < 4; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') codes.push(code);
    e = e.cause;
  }
  return codes;
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
 * Whether `bytes` begin as a PKCS#12 file does (RFC 7292 §4: PFX ::= SEQUENCE { version INTEGER 3,
 * authSafe ContentInfo of id-data or id-signedData, … }): enough to tell a `.pfx` given for a
 * certificate from a DER certificate or garbage, not a check of the whole.
 */
export function isPkcs12(bytes: string | Buffer): boolean {
  if (typeof bytes === 'string' || bytes[0] !== 0x30) return false;
  // The outer SEQUENCE's length: short form, or 1–4 bytes of long form.
  const first = bytes[1] ?? 0;
  const at = first < 0x80 ? 2 : first > 0x80 && first <= 0x84 ? 2 + (first & 0x7f) : -1;
  if (at < 0) return false;
  const version = bytes.subarray(at, at + 3);
  if (!version.equals(Buffer.from([0x02, 0x01, 0x03])) || bytes[at + 3] !== 0x30) return false;
  const inner = bytes[at + 4] ?? 0;
  const oid = at + 5 + (inner < 0x80 ? 0 : inner & 0x7f);
  // 06 09 then 1.2.840.113549.1.7.1 (data) or .7.2 (signedData).
  const pkcs7 = Buffer.from('06092a864886f70d0107', 'hex');
  return bytes.subarray(oid, oid + pkcs7.length).equals(pkcs7) && [1, 2].includes(bytes[oid + pkcs7.length] ?? 0);
}

/**
 * Why a PKCS#12 file is not taken, and the fix. Node's TLS loads the CA certificates a `.pfx` carries
 * into the trust store it checks the server with (review r34: a file carrying a CA made the agent
 * trust servers that CA issued, where curl does not), so it is converted to PEM instead.
 */
const PKCS12_REASON =
  'a PKCS#12 file (.pfx, .p12) is not taken (Node would also trust, for the servers, the CA certificates it carries): convert it with `openssl pkcs12 -in cert.p12 -nodes -out cert.pem` (add -legacy for an old RC2 file), then give { cert, key } from it (one PEM file may hold both; with -nodes its key is not encrypted: keep it private, or leave -nodes out and give the passphrase openssl asks for)';

/**
 * `value` as Node's TLS takes a client certificate: PEM (a DER certificate or key converted), checked
 * now — it parses, the passphrase opens the key, the key is the certificate's — so that a bad one is
 * a clear error here rather than an OpenSSL message from a later connection. `fail` makes the error.
 */
export function usableCertificate(value: unknown, fail: (reason: string, cause?: unknown) => Error): ClientCertificate {
  if (value === null || typeof value !== 'object') throw fail('it must be an object { cert, key, passphrase? }');
  const { cert, key, passphrase, pfx } = value as Record<string, unknown>;
  if (pfx !== undefined || (Buffer.isBuffer(cert) && isPkcs12(cert))) throw fail(PKCS12_REASON);
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
    // OpenSSL checks a key against the certificate only when both are of one type: an EC key with an
    // RSA certificate goes to another slot without a word, and the handshake then presents no
    // certificate at all (u6: nginx said "No required SSL certificate was sent").
    const opened = createPrivateKey({
      key: usable.key,
      ...(usable.passphrase !== undefined ? { passphrase: usable.passphrase } : {}),
    });
    if (!new X509Certificate(usable.cert).checkPrivateKey(opened))
      throw Object.assign(new Error('key values mismatch'), { code: 'ERR_OSSL_X509_KEY_VALUES_MISMATCH' });
    checked.add(usable);
    return usable;
  } catch (e) {
    throw fail(encryptedKeyReason(key, passphrase) ?? noKeyReason(key) ?? certificateReason(e), e);
  }
}

/**
 * A PEM `key` that holds certificates and no private key: a certificate file given for the key too
 * (the command's --cert without --key, as curl reads the key from that file then). OpenSSL says only
 * ERR_OSSL_UNSUPPORTED of it (u6).
 */
function noKeyReason(key: string | Buffer): string | undefined {
  // (PRIVATE[ ]KEY: the package's test finds no key text in what ships, this pattern included.)
  const text = typeof key === 'string' ? key : isPem(key) ? key.toString('latin1') : undefined;
  if (
    text === undefined ||
    /-----BEGIN [A-Z ]*PRIVATE[ ]KEY-----/.test(text) ||
    !text.includes('-----BEGIN CERTIFICATE-----')
  )
    return undefined;
  return "the key holds no private key, only certificates: give the key file (key:, the command's --key) or one PEM file holding the certificate and its key";
}

/** The `clientCertificate` option as the agent keeps it: a ConfigError now for a bad certificate. */
export function configuredCertificate(value: unknown): ClientCertificate {
  return usableCertificate(value, (reason) => new ConfigError(`clientCertificate: ${reason}`, 'clientCertificate'));
}

/**
 * The challenge a selector is given for a certificate the server demanded in the TLS handshake
 * (T3): no HTTP response came, so it is the Transport challenge such a server would have sent;
 * `CertificateRequestInfo.requiredInHandshake` tells the two apart.
 */
export const HANDSHAKE_CHALLENGE: Challenge = Object.freeze({
  scheme: 'Transport',
  schemeKey: 'transport',
  params: Object.freeze({ mode: 'tls-client-certificate' }),
});

/**
 * What a certificate the server demanded in TLS came to (T3): the selector gave one (now the
 * origin's), gave none (`declined`: the server's CAs, as it was told them), or the probe did not
 * confirm that the server asks for one (`unconfirmed`: the failure was something else).
 */
export type CertificateDemand =
  | { readonly kind: 'chosen'; readonly certificate: ClientCertificate }
  | { readonly kind: 'declined'; readonly issuers: readonly DistinguishedName[] }
  | { readonly kind: 'unconfirmed' };

/**
 * OpenSSL's codes (Node's `ERR_SSL_…`) for the alerts a server that requires a client certificate
 * sends when it gets none: TLS 1.3's certificate_required (RFC 8446 §4.4.2.4), and TLS 1.2's
 * handshake_failure or bad_certificate (RFC 5246 §7.4.6; OpenSSL, IIS, Java). Both OpenSSL
 * spellings of the last two.
 */
const DEMAND_CODES: ReadonlySet<string> = new Set([
  'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED',
  'ERR_SSL_SSL/TLS_ALERT_HANDSHAKE_FAILURE',
  'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE',
  'ERR_SSL_SSL/TLS_ALERT_BAD_CERTIFICATE',
  'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE',
]);

/**
 * Whether a request's failure on a connection that never answered may be a server refusing a
 * client certificate's absence (T3): one of its TLS alerts ({@link DEMAND_CODES}, anywhere in the
 * cause chain), or the origin closing a new connection under the first request (TLS 1.3 over
 * HTTP/1.1: the alert comes after the handshake, and undici reports the close). Only a hint: the
 * probe confirms it ({@link answerCertificateDemand}).
 */
export function mayDemandCertificate(err: Error, idempotent: boolean): boolean {
  // (A close says less than an alert: a server may have read the request and failed after it. Only a
  // request that may go twice is taken through the probe for it: a POST is not sent again, review r33.)
  if (idempotent && err instanceof ConnectionClosedError && err.fresh && err.code === 'MULTILEG_CONNECTION_CLOSED')
    return true;
  return codesOf(err).some((code) => DEMAND_CODES.has(code));
}

/** What did not answer: said by the HandshakeTimeoutError of a selector that never returned (R3). */
const silentSelector = (origin: string) =>
  `the clientCertificate selector did not answer for ${origin}; make it return a certificate or undefined sooner, or raise limits.handshakeTimeout`;

/** Asks `select` within `clock`; its answer checked (a usable certificate) or undefined. */
async function ask(
  select: ClientCertificateSelector,
  origin: string,
  challenge: Challenge,
  info: CertificateRequestInfo,
  ms: number,
  clock: ReturnType<typeof handshakeClock>,
): Promise<ClientCertificate | undefined> {
  let chosen: ClientCertificate | undefined;
  try {
    chosen = await clock.race(Promise.resolve().then(() => select(origin, challenge, info)));
  } catch (e) {
    if (clock.timedOut) throw new HandshakeTimeoutError(ms, 'Transport', silentSelector(origin));
    throw new ClientCertificateError(origin, 'the selector threw', { cause: e });
  }
  if (chosen === undefined) return undefined;
  if (checked.has(chosen)) return chosen;
  return usableCertificate(chosen, (reason, cause) => new ClientCertificateError(origin, reason, { cause }));
}

/**
 * The probe's answer within `clock`, undefined when the clock ran out first (the probe never
 * rejects); `ended`'s error, thrown, when the agent was destroyed meanwhile: no selector is asked then.
 */
async function probed(
  clock: ReturnType<typeof handshakeClock>,
  probe: () => Promise<ProbeAnswer>,
  ended: (() => Error | undefined) | undefined,
): Promise<ProbeAnswer | undefined> {
  let answer: ProbeAnswer | undefined;
  try {
    answer = await clock.race(probe());
  } catch {
    answer = undefined;
  }
  const gone = ended?.();
  if (gone) throw gone;
  return answer;
}

/**
 * Asks the caller's selector for `origin`'s certificate, within the handshake deadline (R3: a selector
 * that never answers must not hold the request forever); undefined when it declines. `probe`, where
 * given, reads the server's acceptable CAs first (once per origin: acceptable-issuers.ts), within the
 * same deadline; the selector is told them. `ended`: the agent was destroyed meanwhile (its error):
 * the selector is not asked after that.
 * @throws {HandshakeTimeoutError} when the probe and the selector do not answer within `ms`.
 * @throws {ClientCertificateError} when it throws or gives an unusable certificate.
 */
export async function selectCertificate(
  select: ClientCertificateSelector,
  origin: string,
  challenge: Challenge,
  ms: number,
  probe?: () => Promise<ProbeAnswer>,
  ended?: () => Error | undefined,
): Promise<ClientCertificate | undefined> {
  const clock = handshakeClock(ms, 'Transport', () => {});
  try {
    const answer = probe ? await probed(clock, probe, ended) : NOT_ASKED;
    if (answer === undefined) throw clock.error();
    const acceptableIssuers = answer.told ? answer.issuers : undefined;
    const gone = ended?.();
    if (gone) throw gone;
    const info: CertificateRequestInfo = Object.freeze(acceptableIssuers ? { acceptableIssuers } : {});
    return await ask(select, origin, challenge, info, ms, clock);
  } finally {
    clock.stop();
  }
}

/**
 * A connection to `origin` failed as a server that requires a client certificate fails it
 * ({@link mayDemandCertificate}): `probe` (the acceptable-issuers probe) confirms that the server
 * asks for one in TLS, then `select` (when the agent has one) is asked, with
 * {@link HANDSHAKE_CHALLENGE} and `requiredInHandshake`; the probe and the selector within `ms`
 * (R3). `ended`: the agent was destroyed meanwhile (its error): the selector is not asked.
 * @throws {HandshakeTimeoutError} when the selector does not answer within `ms`.
 * @throws {ClientCertificateError} when it throws or gives an unusable certificate.
 */
export async function answerCertificateDemand(
  select: ClientCertificateSelector | undefined,
  origin: string,
  ms: number,
  probe: () => Promise<ProbeAnswer>,
  ended?: () => Error | undefined,
): Promise<CertificateDemand> {
  const clock = handshakeClock(ms, 'Transport', () => {});
  try {
    // Not confirmed in time: not taken for a demand.
    const answer = await probed(clock, probe, ended);
    const acceptableIssuers = answer?.told ? answer.issuers : undefined;
    if (!acceptableIssuers) return { kind: 'unconfirmed' };
    if (!select) return { kind: 'declined', issuers: acceptableIssuers };
    const info: CertificateRequestInfo = Object.freeze({ acceptableIssuers, requiredInHandshake: true });
    const certificate = await ask(select, origin, HANDSHAKE_CHALLENGE, info, ms, clock);
    return certificate ? { kind: 'chosen', certificate } : { kind: 'declined', issuers: acceptableIssuers };
  } finally {
    clock.stop();
  }
}

/**
 * A server that renegotiated a connection presenting no certificate and closed it (T3,
 * `requiredAfterHandshake`): `select` (when the agent has one) is asked within `ms` (R3), with
 * {@link HANDSHAKE_CHALLENGE}; the server's CAs are not known (its CertificateRequest came
 * encrypted, in the renegotiation), so `declined` names none. `ended` as {@link answerCertificateDemand}'s.
 * @throws {HandshakeTimeoutError} when the selector does not answer within `ms`.
 * @throws {ClientCertificateError} when it throws or gives an unusable certificate.
 */
export async function answerRenegotiationDemand(
  select: ClientCertificateSelector | undefined,
  origin: string,
  ms: number,
  ended?: () => Error | undefined,
): Promise<CertificateDemand> {
  const gone = ended?.();
  if (gone) throw gone;
  if (!select) return { kind: 'declined', issuers: [] };
  const clock = handshakeClock(ms, 'Transport', () => {});
  try {
    const info: CertificateRequestInfo = Object.freeze({ requiredAfterHandshake: true });
    const certificate = await ask(select, origin, HANDSHAKE_CHALLENGE, info, ms, clock);
    return certificate ? { kind: 'chosen', certificate } : { kind: 'declined', issuers: [] };
  } finally {
    clock.stop();
  }
}

/**
 * T3: the server refused `presented`, the certificate a connection to `origin` showed (`how.alert`:
 * a TLS alert's code; none after a close; `how.answered`: nginx's page about it): the typed error.
 * One the selector chose (`chosen`: the agent's selector is the caller's, as askAcceptableIssuers
 * says) is the origin's no longer (`memory`: its requests and upgrades present none until the
 * selector is asked again); one given as such stays, there is no other. Requests' and upgrades'.
 */
export function certificateRefused(
  origin: string,
  memory: { clientCertificate?: ClientCertificate | undefined } | undefined,
  presented: ClientCertificate | undefined,
  chosen: boolean,
  how: { readonly alert?: string | undefined; readonly answered?: string | undefined; readonly cause: unknown },
): ClientCertificateRefusedError {
  if (chosen && memory && memory.clientCertificate === presented) memory.clientCertificate = undefined;
  return new ClientCertificateRefusedError(origin, how.alert, chosen, { cause: how.cause }, how.answered);
}

/**
 * T3: whether the selector is asked again at once after the server refused the certificate it chose
 * (`chosen`, as {@link certificateRefused}): a certificate renewed, or of the server's new CA, takes
 * the request or upgrade on, as .NET asks its selector on each new connection. Only where it did not
 * reach the server (an alert, nginx's page; after a close (`closed`), only what `mayGoTwice`), and
 * once: `once()` says whether it may, and marks it. Requests' and upgrades'.
 */
export function asksSelectorAgain(chosen: boolean, closed: boolean, mayGoTwice: boolean, once: () => boolean): boolean {
  return chosen && (!closed || mayGoTwice) && once();
}

/**
 * T3: the selector's answer (`demand`), asked again at once ({@link asksSelectorAgain}) after the
 * server refused `refused` (`refusal`, {@link certificateRefused}'s error): another certificate, to
 * present on a new connection, or the caller's error — the refusal itself where the probe did not
 * confirm the demand, saying the selector returned none, or the refused one again (then the origin,
 * `memory`, does not keep it for the next ones to be refused with: review r38). Requests' and upgrades'.
 */
export function afterRefusal(
  demand: CertificateDemand,
  refused: ClientCertificate,
  refusal: Error,
  memory: { clientCertificate?: ClientCertificate | undefined } | undefined,
): ClientCertificate | Error {
  if (demand.kind === 'unconfirmed') return refusal;
  if (demand.kind === 'chosen' && !sameCertificate(demand.certificate, refused)) return demand.certificate;
  if (demand.kind === 'chosen' && memory?.clientCertificate === demand.certificate)
    memory.clientCertificate = undefined;
  if (!(refusal instanceof ClientCertificateRefusedError)) return refusal;
  const chosen = demand.kind === 'chosen' ? 'again' : 'none';
  return new ClientCertificateRefusedError(
    refusal.origin,
    refusal.alert,
    chosen,
    { cause: refusal.cause },
    refusal.answered,
  );
}

/**
 * T3: whether a connection's failure (`error`) may be the server refusing the TLS handshake for
 * want of a client certificate, and the agent may answer that (the probe confirms, the selector is
 * asked): where the agent's credentials may go (`agentsOwn`: S1, S5, as a Transport challenge is
 * answered), to an https `origin` it can probe, on a connection that presented none and answered
 * nothing, Transport not answered already; `mayGoTwice`: a close, which says less than an alert,
 * counts only for what may be sent again ({@link mayDemandCertificate}). Requests' and upgrades'.
 */
export function demandsCertificate(
  error: Error,
  at: {
    readonly agentsOwn: boolean;
    readonly origin: string;
    readonly probes: boolean;
    readonly certified: boolean;
    readonly answered: boolean;
    readonly transportDone: boolean;
    readonly mayGoTwice: boolean;
  },
): boolean {
  return (
    at.agentsOwn &&
    at.probes &&
    !at.certified &&
    !at.transportDone &&
    at.origin.startsWith('https:') &&
    !at.answered &&
    mayDemandCertificate(error, at.mayGoTwice)
  );
}
