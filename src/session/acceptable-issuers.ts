/**
 * The certificate authorities a server accepts client certificates of (T3), as its TLS
 * CertificateRequest names them. Node's TLS client does not expose that message, and TLS 1.3
 * encrypts it; so a probe makes one TLS handshake of its own (presenting no certificate, sending no
 * HTTP) over a stream that keeps a copy of the bytes the server sent, takes the server's handshake
 * traffic secret from the socket's `keylog` event, and decrypts the server's handshake records with
 * it (RFC 8446 §7.3). TLS 1.2 sends the message in the clear. Only the probe pays for this: no other
 * connection is copied or logged.
 */
import { createDecipheriv, createHmac, X509Certificate } from 'node:crypto';
import { isIP, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { type ConnectionOptions, type TLSSocket, connect as tlsConnect } from 'node:tls';
import { type ConnectTo, checkedAgainst } from '../connect-to.ts';
import { derEncode, derHeader } from '../der.ts';
import { log } from '../log.ts';
import { type DistinguishedName, type Limits, unbracketed } from '../options.ts';
import type { ProxyRoute } from '../proxy/options.ts';
import { isPem } from './client-certificate.ts';
import { plainConnection } from './connector.ts';

/**
 * What a server's handshake said of client certificates: it asked, naming these authorities (DER
 * Names; none: any may do), or it did not ask. The readers give undefined when they cannot tell.
 */
export type CertificateRequestSeen =
  | { readonly asked: true; readonly names: readonly Buffer[] }
  | { readonly asked: false };

/** Most bytes of the server's handshake kept: a CertificateRequest naming hundreds of CAs fits. */
export const MAX_PROBE_BYTES = 1 << 20;

const HANDSHAKE = 22;
const APPLICATION_DATA = 23;
const CHANGE_CIPHER_SPEC = 20;
const SERVER_HELLO = 2;
const CERTIFICATE_REQUEST = 13;
const SERVER_HELLO_DONE = 14;
const FINISHED = 20;
const SUPPORTED_VERSIONS = 43;
const CERTIFICATE_AUTHORITIES = 47;
const TLS12 = 0x0303;
const TLS13 = 0x0304;
/** A ServerHello with this random is a HelloRetryRequest (RFC 8446 §4.1.3): the real one follows. */
const RETRY_RANDOM = Buffer.from('cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c', 'hex');

interface Suite {
  readonly cipher: 'aes-128-gcm' | 'aes-256-gcm' | 'chacha20-poly1305';
  readonly hash: 'sha256' | 'sha384';
  readonly keyLength: number;
}
/** TLS 1.3's AEAD suites Node offers (the CCM ones it does not by default: could not tell). */
const SUITES: ReadonlyMap<number, Suite> = new Map([
  [0x1301, { cipher: 'aes-128-gcm', hash: 'sha256', keyLength: 16 }],
  [0x1302, { cipher: 'aes-256-gcm', hash: 'sha384', keyLength: 32 }],
  [0x1303, { cipher: 'chacha20-poly1305', hash: 'sha256', keyLength: 32 }],
]);

/** Bytes `b[start, start + length)`, or a throw when they are not all there (the readers catch it). */
function take(b: Buffer, start: number, length: number): Buffer {
  if (start < 0 || length < 0 || start + length > b.length) throw new RangeError('truncated');
  return b.subarray(start, start + length);
}

/** HKDF-Expand-Label(secret, label, "", length) of RFC 8446 §7.1 (the secret is already a PRK). */
function expandLabel(secret: Buffer, label: string, length: number, hash: string): Buffer {
  const full = Buffer.from(`tls13 ${label}`, 'latin1');
  const info = Buffer.concat([Buffer.from([length >> 8, length & 0xff, full.length]), full, Buffer.from([0])]);
  const out: Buffer[] = [];
  let t = Buffer.alloc(0);
  for (let i = 1, got = 0; got < length; i++) {
    t = createHmac(hash, secret)
      .update(Buffer.concat([t, info, Buffer.from([i])]))
      .digest();
    out.push(t);
    got += t.length;
  }
  return Buffer.concat(out).subarray(0, length);
}

/** Handshake messages out of a stream of handshake bytes that records deliver in pieces. */
class Messages {
  #pending: Buffer = Buffer.alloc(0);
  /** Appends `bytes`; the complete messages so far, in order. */
  add(bytes: Buffer): Array<{ type: number; body: Buffer }> {
    this.#pending = this.#pending.length === 0 ? bytes : Buffer.concat([this.#pending, bytes]);
    const out: Array<{ type: number; body: Buffer }> = [];
    let at = 0;
    while (at + 4 <= this.#pending.length) {
      const length = this.#pending.readUIntBE(at + 1, 3);
      if (at + 4 + length > this.#pending.length) break;
      out.push({ type: this.#pending[at]!, body: this.#pending.subarray(at + 4, at + 4 + length) });
      at += 4 + length;
    }
    this.#pending = this.#pending.subarray(at);
    return out;
  }
}

/** A list of DistinguishedName<1..2^16-1> behind its 2-byte length (RFC 5246 §7.4.4, RFC 8446 §4.2.4), copied out. */
function nameList(b: Buffer, at: number): Buffer[] {
  const list = take(b, at + 2, b.readUInt16BE(at));
  const names: Buffer[] = [];
  for (let p = 0; p < list.length; ) {
    const name = take(list, p + 2, list.readUInt16BE(p));
    names.push(Buffer.from(name));
    p += 2 + name.length;
  }
  return names;
}

/** A TLS 1.2 (or 1.0/1.1) CertificateRequest's authorities. */
function request12(body: Buffer, version: number): Buffer[] {
  let p = 1 + take(body, 0, 1)[0]!; // certificate_types
  if (version >= TLS12) p += 2 + body.readUInt16BE(p); // supported_signature_algorithms
  return nameList(body, p);
}

/** A TLS 1.3 CertificateRequest's authorities: its certificate_authorities extension, or none. */
function request13(body: Buffer): Buffer[] {
  let p = 1 + take(body, 0, 1)[0]!; // certificate_request_context
  const extensions = take(body, p + 2, body.readUInt16BE(p));
  for (p = 0; p < extensions.length; ) {
    const type = extensions.readUInt16BE(p);
    const data = take(extensions, p + 4, extensions.readUInt16BE(p + 2));
    if (type === CERTIFICATE_AUTHORITIES) return nameList(data, 0);
    p += 4 + data.length;
  }
  return [];
}

/** The version a ServerHello chose (its supported_versions, else its legacy version), its suite, whether it is a retry request. */
function serverHello(body: Buffer): { version: number; suite: number; retry: boolean } {
  const retry = take(body, 2, 32).equals(RETRY_RANDOM);
  let p = 35 + take(body, 34, 1)[0]!;
  const suite = take(body, p, 2).readUInt16BE(0);
  p += 3; // suite, compression
  let version = body.readUInt16BE(0);
  if (p < body.length) {
    const extensions = take(body, p + 2, body.readUInt16BE(p));
    for (let q = 0; q < extensions.length; ) {
      const data = take(extensions, q + 4, extensions.readUInt16BE(q + 2));
      if (extensions.readUInt16BE(q) === SUPPORTED_VERSIONS) version = take(data, 0, 2).readUInt16BE(0);
      q += 4 + data.length;
    }
  }
  return { version, suite, retry };
}

/** Decrypts TLS 1.3 records with the server's handshake traffic keys (RFC 8446 §5.2, §5.3). */
class Opener {
  readonly #suite: Suite;
  readonly #key: Buffer;
  readonly #iv: Buffer;
  #seq = 0n;
  constructor(suite: Suite, secret: Buffer) {
    this.#suite = suite;
    this.#key = expandLabel(secret, 'key', suite.keyLength, suite.hash);
    this.#iv = expandLabel(secret, 'iv', 12, suite.hash);
  }
  /** The inner content type and its bytes; throws where authentication fails (other keys: the handshake's end). */
  open(header: Buffer, sealed: Buffer): { type: number; content: Buffer } {
    const nonce = Buffer.from(this.#iv);
    for (let i = 0; i < 8; i++) nonce[4 + i]! ^= Number((this.#seq >> BigInt(8 * (7 - i))) & 0xffn);
    this.#seq += 1n;
    if (sealed.length < 17) throw new RangeError('short record');
    const decipher = createDecipheriv(this.#suite.cipher as 'aes-128-gcm', this.#key, nonce, { authTagLength: 16 });
    decipher.setAAD(header);
    decipher.setAuthTag(sealed.subarray(sealed.length - 16));
    const plain = Buffer.concat([decipher.update(sealed.subarray(0, sealed.length - 16)), decipher.final()]);
    let end = plain.length - 1;
    while (end >= 0 && plain[end] === 0) end--;
    if (end < 0) throw new RangeError('no content type');
    return { type: plain[end]!, content: plain.subarray(0, end) };
  }
}

/**
 * What the server's side of a TLS handshake (`inbound`, its bytes as they came) says of client
 * certificates; `secret`, its SERVER_HANDSHAKE_TRAFFIC_SECRET (TLS 1.3). Undefined when it cannot
 * tell: bytes cut short or garbled, a record that does not decrypt, TLS 1.3 without the secret,
 * a cipher suite it does not know. Never throws.
 */
export function readCertificateRequest(
  inbound: Buffer,
  secret: Buffer | undefined,
): CertificateRequestSeen | undefined {
  try {
    return read(inbound, secret);
  } catch {
    return undefined;
  }
}

function read(inbound: Buffer, secret: Buffer | undefined): CertificateRequestSeen | undefined {
  const clear = new Messages();
  const sealed = new Messages();
  let version = 0;
  let opener: Opener | undefined;
  for (let at = 0; at + 5 <= inbound.length; ) {
    const header = inbound.subarray(at, at + 5);
    const body = take(inbound, at + 5, inbound.readUInt16BE(at + 3));
    at += 5 + body.length;
    const type = header[0];
    if (type === CHANGE_CIPHER_SPEC) continue;
    if (type === HANDSHAKE && !opener) {
      for (const m of clear.add(body)) {
        if (m.type === SERVER_HELLO) {
          const hello = serverHello(m.body);
          version = hello.version;
          if (hello.retry || version < TLS13) continue;
          const suite = SUITES.get(hello.suite);
          if (!suite || !secret) return undefined;
          opener = new Opener(suite, secret);
        } else if (version === 0 || version >= TLS13) return undefined;
        else if (m.type === CERTIFICATE_REQUEST) return { asked: true, names: request12(m.body, version) };
        else if (m.type === SERVER_HELLO_DONE) return { asked: false };
      }
    } else if (type === APPLICATION_DATA && opener) {
      const { type: inner, content } = opener.open(header, body);
      if (inner !== HANDSHAKE) return undefined;
      for (const m of sealed.add(content)) {
        if (m.type === CERTIFICATE_REQUEST) return { asked: true, names: request13(m.body) };
        if (m.type === FINISHED) return { asked: false };
      }
    } else return undefined; // an alert, or a record out of place
  }
  return undefined;
}

const SEQUENCE = 0x30;

// The parts of a certificate around an issuer name that Node's own parser reads it from (below).
const SERIAL = Buffer.from('020101', 'hex');
const SHA256_RSA = Buffer.from('300d06092a864886f70d01010b0500', 'hex');
const VALIDITY = derEncode(
  SEQUENCE,
  Buffer.from('170d3235303130313030303030305a170d3235303130323030303030305a', 'hex'),
);
const NO_SUBJECT = derEncode(SEQUENCE);
const SOME_KEY = Buffer.from(
  '3059301306072a8648ce3d020106082a8648ce3d03010703420004bdda7a09478d7ae3bc8e61b27c0720ee648d09948e865b012c2f169e22082f713344e76e70c73716ef09382e6e288ef079664bcf071ea0ce4e94ace40014f998',
  'hex',
);
const NO_SIGNATURE = Buffer.from('03020000', 'hex');

/**
 * A DER X.501 Name as a {@link DistinguishedName}; undefined when it is not one. Its text is Node's
 * own (`X509Certificate#issuer` of an unsigned certificate made around it), not a second rendering
 * that could differ from it in escaping or in the names of attributes.
 */
export function distinguishedName(name: Buffer): DistinguishedName | undefined {
  try {
    const outer = derHeader(name, 0);
    if (outer.tag !== SEQUENCE || outer.end !== name.length) return undefined;
    const tbs = derEncode(SEQUENCE, SERIAL, SHA256_RSA, name, VALIDITY, NO_SUBJECT, SOME_KEY);
    const text = new X509Certificate(derEncode(SEQUENCE, tbs, SHA256_RSA, NO_SIGNATURE)).issuer;
    return Object.freeze({ der: Buffer.from(name), name: text });
  } catch {
    return undefined;
  }
}

/** The DER of a certificate's issuer Name (Certificate → tbsCertificate → issuer, RFC 5280 §4.1). */
function issuerOf(cert: Buffer): Buffer {
  const certificate = derHeader(cert, 0);
  const tbs = derHeader(cert, certificate.start);
  let field = derHeader(cert, tbs.start);
  if (field.tag === 0xa0) field = derHeader(cert, field.end); // version
  const signature = derHeader(cert, field.end); // after serialNumber
  const issuer = derHeader(cert, signature.end);
  if (issuer.tag !== SEQUENCE) throw new RangeError('not a Name');
  return cert.subarray(signature.end, issuer.end);
}

/** The DER certificates in `cert`: every one of a PEM text (a chain), or the DER bytes. */
function certificates(cert: string | Buffer | X509Certificate): Buffer[] {
  if (cert instanceof X509Certificate) return [cert.raw];
  if (!isPem(cert)) return [cert as Buffer];
  const pem = typeof cert === 'string' ? cert : cert.toString('latin1');
  const blocks = pem.matchAll(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g);
  return [...blocks].map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64'));
}

/**
 * Whether `cert` — PEM text or bytes (every certificate of a chain in it is looked at), DER bytes,
 * or an `X509Certificate` — was issued by one of `acceptableIssuers` (the selector's
 * `info.acceptableIssuers`, T3): its issuer Name's DER is one of theirs. False for none given: an
 * empty list (the server named no authority: any may do) or undefined is the selector's to weigh.
 * A certificate it cannot read is issued by none.
 */
export function issuedByOneOf(
  cert: string | Buffer | X509Certificate,
  acceptableIssuers: readonly DistinguishedName[] | undefined,
): boolean {
  if (!acceptableIssuers?.length) return false;
  for (const one of certificates(cert)) {
    let issuer: Buffer;
    try {
      issuer = issuerOf(one);
    } catch {
      continue;
    }
    if (acceptableIssuers.some((a) => Buffer.isBuffer(a?.der) && a.der.equals(issuer))) return true;
  }
  return false;
}

/** Where and how the probe connects: as the origin's sessions do (the agent's TLS options, its proxy route, its `connectTo`). */
export interface ProbeTarget {
  readonly origin: string;
  /** The agent's TLS options (`connect`): CAs and verification as its sessions have them; never a certificate. */
  readonly tls: ConnectionOptions;
  readonly alpn: string[];
  readonly route: ProxyRoute | undefined;
  readonly connectTo: ConnectTo | undefined;
  readonly limits: Limits;
  /**
   * The server name the origin's requests name where `origin` holds the address undici's dns
   * interceptor resolved a name to: the server is named and checked as that name, as the sessions
   * are (S1; it was the address's).
   */
  readonly servername?: string;
  /** Ends the probe at once (its pool closed: nothing may keep the process open after `destroy()`). */
  readonly signal?: AbortSignal;
}

/**
 * What the probe learned: `told` when the server's handshake said (it asked, with `issuers`, or it
 * did not ask: no `issuers`); not `told` when the probe could not tell (no handshake in time, one
 * that failed, bytes it cannot read), which a later Transport challenge may ask again.
 */
export interface ProbeAnswer {
  readonly told: boolean;
  readonly issuers?: readonly DistinguishedName[];
}

const COULD_NOT_TELL: ProbeAnswer = Object.freeze({ told: false });
const NOT_ASKED: ProbeAnswer = Object.freeze({ told: true });

/**
 * The server's acceptable client-certificate authorities (see `CertificateRequestInfo` and
 * {@link ProbeAnswer}): a list, `[]` when it asked naming none. One TLS handshake with
 * `target.origin`, made the way its sessions connect and verifying the server as they do (names are
 * taken only from a handshake that completed), presenting no certificate and sending no HTTP, then
 * closed; bounded by `limits.handshakeTimeout` and `target.signal`. Never rejects.
 */
export async function probeAcceptableIssuers(target: ProbeTarget): Promise<ProbeAnswer> {
  const seen = await probe(target).catch((err: Error) => {
    log.session(
      '%s acceptable issuers: could not tell (%s)',
      target.origin,
      (err as { code?: string }).code ?? 'error',
    );
    return undefined;
  });
  if (!seen) return COULD_NOT_TELL;
  if (!seen.asked) {
    log.session('%s acceptable issuers: the server asks for no certificate in TLS', target.origin);
    return NOT_ASKED;
  }
  const names = seen.names.map(distinguishedName).filter((n) => n !== undefined);
  log.session('%s acceptable issuers: %d named', target.origin, names.length);
  return Object.freeze({ told: true, issuers: Object.freeze(names) });
}

async function probe(target: ProbeTarget): Promise<CertificateRequestSeen | undefined> {
  const url = new URL(target.origin);
  if (url.protocol !== 'https:') return undefined;
  const hostname = unbracketed(url.hostname);
  const ms = target.limits.handshakeTimeout;
  const timeout = AbortSignal.timeout(ms);
  const stop = target.signal ? AbortSignal.any([timeout, target.signal]) : timeout;
  let raw: Socket | undefined;
  try {
    raw = await plainConnection(target.origin, target.tls, target.route, target.limits, target.connectTo, stop);
    return await handshake(raw, hostname, target, stop);
  } finally {
    raw?.destroy();
  }
}

/** TLS over `raw`, copying what the server sends; what it said of client certificates once done. */
function handshake(
  raw: Socket,
  hostname: string,
  target: ProbeTarget,
  signal: AbortSignal,
): Promise<CertificateRequestSeen | undefined> {
  const inbound: Buffer[] = [];
  let kept = 0;
  const copy = new Duplex({
    read: () => void raw.resume(),
    write: (chunk: Buffer, _encoding, done) => void raw.write(chunk, done),
    final: (done) => {
      raw.end();
      done();
    },
    destroy: (err, done) => {
      raw.destroy();
      done(err);
    },
  });
  raw.on('data', (chunk: Buffer) => {
    if (kept < MAX_PROBE_BYTES) inbound.push(chunk);
    kept += chunk.length;
    if (!copy.push(chunk)) raw.pause();
  });
  raw.on('end', () => copy.push(null));
  raw.on('error', (err) => copy.destroy(err));
  raw.on('close', () => copy.destroy());
  let secret: Buffer | undefined;
  // The server named and checked as the sessions name and check it: a tunnel's TLS by the URL's
  // host (tunnel.ts); undici's connector by `connect.servername` where given, the URL's host else,
  // and, with `connectTo` (routedConnector), checked against the URL's host. No SNI for an address.
  const tunnelled = target.route?.kind === 'tunnel';
  const named = target.servername ?? (tunnelled ? undefined : target.tls.servername || undefined);
  const servername = named ?? (isIP(hostname) ? undefined : hostname);
  const checked = target.servername ?? (tunnelled || target.connectTo ? hostname : (named ?? hostname));
  const secure = tlsConnect({
    ...target.tls,
    socket: copy,
    servername,
    ALPNProtocols: target.alpn,
    checkServerIdentity: checkedAgainst(checked, target.tls),
  });
  secure.on('keylog', (line: Buffer) => {
    const [label, , hex] = line.toString('latin1').trim().split(' ');
    if (label === 'SERVER_HANDSHAKE_TRAFFIC_SECRET' && hex) secret = Buffer.from(hex, 'hex');
  });
  return new Promise((resolve, reject) => {
    let ended = false;
    const end = (err: Error | undefined) => {
      if (ended) return;
      ended = true;
      signal.removeEventListener('abort', aborted);
      secure.destroy();
      // (Past MAX_PROBE_BYTES the copy is cut short: a request in what was kept is still read.)
      if (err) reject(err);
      else resolve(readCertificateRequest(Buffer.concat(inbound), secret));
    };
    const aborted = () => end(signal.reason as Error);
    if (signal.aborted) return aborted();
    signal.addEventListener('abort', aborted, { once: true });
    secure.once('error', (err: Error) => {
      // A server that requires a certificate (TLS 1.2: Node's `requestCert` with
      // `rejectUnauthorized`, IIS "require") ends the handshake with an alert once it sees none:
      // its CertificateRequest, already read, is taken when the server proved itself as a
      // session's would have it (its chain and name checked: what Node checks after a handshake).
      const seen = readCertificateRequest(Buffer.concat(inbound), secret);
      if (seen?.asked && verifiedSoFar(secure, target.tls, checked)) {
        signal.removeEventListener('abort', aborted);
        ended = true;
        secure.destroy();
        resolve(seen);
      } else end(err);
    });
    secure.once('close', () => end(new Error('closed during the TLS handshake')));
    // Only a handshake that completed verified the server as a session's would (Node checks the
    // chain and the name then): names from any other are not given.
    secure.once('secureConnect', () => end(undefined));
  });
}

/**
 * Whether the server of a handshake that failed before it completed proved itself as Node checks it
 * after one (tls.connect's `onConnectSecure`): its chain verified against the agent's CAs, and its
 * certificate for `hostname` — or no check at all with `rejectUnauthorized: false`. False when it
 * cannot be told (Node's handle gone, no certificate seen).
 */
function verifiedSoFar(secure: TLSSocket, tls: ConnectionOptions, hostname: string): boolean {
  if (tls.rejectUnauthorized === false) return true;
  // (Node's own handle: it has no public call for a handshake that did not complete.)
  const handle = (secure as unknown as { _handle?: { verifyError?: () => Error | null } })._handle;
  if (typeof handle?.verifyError !== 'function' || handle.verifyError() !== null) return false;
  const cert = secure.getPeerCertificate(true);
  if (!cert || Object.keys(cert).length === 0) return false;
  return checkedAgainst(hostname, tls)(hostname, cert) === undefined;
}
