import { createCipheriv, createHmac, randomBytes, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { issuedByOneOf } from '../src/index.ts';
import { CA_CERT, CLIENT_CERT } from '../src/reference-server/test-pki.ts';
import { distinguishedName, readCertificateRequest } from '../src/session/acceptable-issuers.ts';
import { subjectDer } from './helpers.ts';

const fixture = (name: string) => readFileSync(new URL(`./fixtures/issuers/${name}`, import.meta.url), 'utf8');

const NAMES = [fixture('ca-a.pem'), fixture('ca-b.pem'), CA_CERT].map(subjectDer);

const u8 = (n: number) => Buffer.from([n]);
const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
const u24 = (n: number) => Buffer.from([n >> 16, (n >> 8) & 0xff, n & 0xff]);
const vec16 = (...parts: Buffer[]) => {
  const b = Buffer.concat(parts);
  return Buffer.concat([u16(b.length), b]);
};
const message = (type: number, body: Buffer) => Buffer.concat([u8(type), u24(body.length), body]);
const record = (type: number, body: Buffer) => Buffer.concat([u8(type), u16(0x0303), u16(body.length), body]);
const authorities = (names: Buffer[]) => vec16(...names.map((n) => vec16(n)));

function serverHello(version: 'TLSv1.2' | 'TLSv1.3', suite: number): Buffer {
  const extensions = version === 'TLSv1.3' ? vec16(u16(43), vec16(u16(0x0304))) : vec16();
  return message(
    2,
    Buffer.concat([
      u16(0x0303),
      randomBytes(32),
      u8(0),
      u16(suite),
      u8(0),
      extensions.length > 2 ? extensions : vec16(),
    ]),
  );
}

/** A TLS 1.2 server flight: ServerHello, (Certificate), CertificateRequest naming `names` unless null, ServerHelloDone. */
function flight12(names: Buffer[] | null): Buffer {
  const hs = [serverHello('TLSv1.2', 0xc02f), message(11, Buffer.from([0, 0, 0]))];
  if (names) hs.push(message(13, Buffer.concat([u8(1), u8(1), vec16(u16(0x0401)), authorities(names)])));
  hs.push(message(14, Buffer.alloc(0)));
  // Handshake messages split over records at an awkward place, as servers may.
  const all = Buffer.concat(hs);
  const cut = Math.min(7, all.length);
  return Buffer.concat([record(22, all.subarray(0, cut)), record(22, all.subarray(cut))]);
}

/** HKDF-Expand-Label (RFC 8446 §7.1), written here again so that the test does not trust the code's. */
function expandLabel(secret: Buffer, label: string, length: number): Buffer {
  const full = Buffer.from(`tls13 ${label}`);
  const info = Buffer.concat([u16(length), u8(full.length), full, u8(0)]);
  return createHmac('sha256', secret)
    .update(Buffer.concat([info, u8(1)]))
    .digest()
    .subarray(0, length);
}

/** A TLS 1.3 server flight (TLS_AES_128_GCM_SHA256) and its handshake secret: CertificateRequest naming `names` (no extension: null), Finished. */
function flight13(names: Buffer[] | null, asks = true): { inbound: Buffer; secret: Buffer } {
  const secret = randomBytes(32);
  const key = expandLabel(secret, 'key', 16);
  const iv = expandLabel(secret, 'iv', 12);
  const extensions = names ? vec16(u16(47), vec16(authorities(names))) : vec16(u16(13), vec16(u16(0x0403)));
  const inner = [message(8, vec16())];
  if (asks) inner.push(message(13, Buffer.concat([u8(0), extensions])));
  inner.push(message(11, Buffer.from([0, 0, 0, 0])), message(20, randomBytes(32)));
  const sealed = inner.map((plain, seq) => {
    const nonce = Buffer.from(iv);
    nonce[11]! ^= seq;
    const content = Buffer.concat([plain, u8(22), Buffer.alloc(seq % 3)]); // content type, padding
    const header = Buffer.concat([u8(23), u16(0x0303), u16(content.length + 16)]);
    const cipher = createCipheriv('aes-128-gcm', key, nonce, { authTagLength: 16 });
    cipher.setAAD(header);
    const body = Buffer.concat([cipher.update(content), cipher.final(), cipher.getAuthTag()]);
    return Buffer.concat([header, body]);
  });
  const hello = record(22, serverHello('TLSv1.3', 0x1301));
  return { inbound: Buffer.concat([hello, record(20, u8(1)), ...sealed]), secret };
}

const nameList = fc.array(fc.constantFrom(...NAMES), { maxLength: 3 });

describe('T3: reading a CertificateRequest from a server handshake', () => {
  it('T3: TLS 1.2 and TLS 1.3 flights: asked with these CAs, asked with none, did not ask', () => {
    fc.assert(
      fc.property(nameList, (names) => {
        expect(readCertificateRequest(flight12(names), undefined)).toEqual({ asked: true, names });
        const { inbound, secret } = flight13(names);
        expect(readCertificateRequest(inbound, secret)).toEqual({ asked: true, names });
      }),
    );
    expect(readCertificateRequest(flight12(null), undefined)).toEqual({ asked: false });
    const noExtension = flight13(null);
    expect(readCertificateRequest(noExtension.inbound, noExtension.secret)).toEqual({ asked: true, names: [] });
    const notAsked = flight13(null, false);
    expect(readCertificateRequest(notAsked.inbound, notAsked.secret)).toEqual({ asked: false });
    // TLS 1.3 without its secret, or with another: cannot tell.
    const { inbound } = flight13(NAMES);
    expect(readCertificateRequest(inbound, undefined)).toBeUndefined();
    expect(readCertificateRequest(inbound, randomBytes(32))).toBeUndefined();
  });

  it('T3: random bytes, cut or garbled flights never throw and never give names the server did not send', () => {
    const seen = (x: unknown) => x === undefined || (typeof x === 'object' && x !== null && 'asked' in x);
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 600 }),
        fc.option(fc.uint8Array({ minLength: 32, maxLength: 32 })),
        (b, s) => {
          expect(seen(readCertificateRequest(Buffer.from(b), s ? Buffer.from(s) : undefined))).toBe(true);
        },
      ),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(
        nameList,
        fc.boolean(),
        fc.nat(),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { maxLength: 4 }),
        (names, tls13, cutAt, flips) => {
          const { inbound, secret } = tls13 ? flight13(names) : { inbound: flight12(names), secret: undefined };
          const cut = inbound.subarray(0, cutAt % (inbound.length + 1));
          const garbled = Buffer.from(cut);
          for (const [at, x] of flips) if (garbled.length > 0) garbled[at % garbled.length]! ^= x;
          const got = readCertificateRequest(garbled, secret);
          expect(seen(got)).toBe(true);
          // Whatever names come out are well-formed bytes the reader copied (never a view past the input).
          if (got?.asked) for (const n of got.names) expect(Buffer.isBuffer(n)).toBe(true);
          // A cut with no flip: all the names, or nothing told.
          if (flips.length === 0 && got?.asked) expect(got.names).toEqual(names);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('T3: distinguishedName gives Node’s issuer text for a Name, undefined for anything else; issuedByOneOf never throws', () => {
    const [a, b] = NAMES.map((n) => distinguishedName(n)!);
    expect(a!.name).toBe(new X509Certificate(fixture('client-a.pem')).issuer);
    expect(b!.name).toBe(new X509Certificate(fixture('client-b.pem')).issuer);
    expect(issuedByOneOf(fixture('client-b.pem'), [a!, b!])).toBe(true);
    expect(issuedByOneOf(new X509Certificate(fixture('client-b.pem')).raw, [b!])).toBe(true);
    expect(issuedByOneOf(new X509Certificate(fixture('client-b.pem')), [a!])).toBe(false);
    // A chain: the leaf's issuer is not named, the next certificate's is.
    expect(issuedByOneOf(fixture('client-a.pem') + CA_CERT, [b!])).toBe(false);
    expect(issuedByOneOf(CLIENT_CERT + fixture('client-b.pem'), [b!])).toBe(true);
    expect(issuedByOneOf(CLIENT_CERT, [])).toBe(false);
    expect(issuedByOneOf(CLIENT_CERT, undefined)).toBe(false);
    // A PEM Buffer as `openssl pkcs12 -nodes` writes it: "Bag Attributes" lines before the block
    // (read as DER before: more than 64 bytes came before the first "-----BEGIN").
    const bagged = `Bag Attributes\n    localKeyID: ${'01 '.repeat(20)}\nsubject=CN = alice\nissuer=CN = Test CA B\n${fixture('client-b.pem')}`;
    expect(issuedByOneOf(Buffer.from(bagged), [b!])).toBe(true);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        const b = Buffer.from(bytes);
        const dn = distinguishedName(b);
        if (dn) expect(dn.der.equals(b)).toBe(true);
        expect(typeof issuedByOneOf(b, [a!, b.length ? { der: b, name: '' } : a!])).toBe('boolean');
      }),
      { numRuns: 2000 },
    );
  });
});
