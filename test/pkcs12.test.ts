/**
 * T3: PKCS#12 client certificates (`.pfx`, `.p12`, as Windows and .NET export them): the library's
 * `clientCertificate: { pfx, passphrase }` and the command's `--cert FILE.p12[:pw]` / `--cert-type P12`.
 * The files are made here with openssl from test/fixtures/issuers (test material, no secret).
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createSecureServer, type Http2ServerRequest, type Http2ServerResponse } from 'node:http2';
import { createServer as createHttpsServer, type ServerOptions } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { fetch } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  type CertificateRequestInfo,
  type ClientCertificate,
  ConfigError,
  issuedByOneOf,
  MultilegAgent,
} from '../src/index.ts';
import { startReferenceProxy } from '../src/reference-server/proxy.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { runCli } from './cli-helpers.ts';
import { loopbackOrigin } from './helpers.ts';

const fixture = (name: string) => readFileSync(new URL(`./fixtures/issuers/${name}`, import.meta.url), 'utf8');
const CA_A = fixture('ca-a.pem');
const CA_B = fixture('ca-b.pem');
const issuerOf = (pem: string) => new X509Certificate(pem).subject;

let dir: string;
/** PKCS#12 files of alice's certificates (A's, B's; B's also in OpenSSL 1.x's legacy RC2-40 form, one without a key). */
const p12 = { a: '', b: '', legacy: '', noKey: '', empty: '' };
const PASS = 'hunter2-pfx';

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'multileg-p12-'));
  const issuers = new URL('./fixtures/issuers/', import.meta.url).pathname;
  const make = (out: string, ca: 'a' | 'b', ...extra: string[]) => {
    const file = join(dir, out);
    execFileSync('openssl', ['pkcs12', '-export', '-in', join(issuers, `client-${ca}.pem`), ...extra, '-out', file]);
    return file;
  };
  const key = (ca: 'a' | 'b') => ['-inkey', join(issuers, `client-${ca}.key`)];
  p12.a = make('a.p12', 'a', ...key('a'), '-passout', `pass:${PASS}`);
  // B's with its CA (the chain), as Windows exports it.
  p12.b = make('b.p12', 'b', ...key('b'), '-certfile', join(issuers, 'ca-b.pem'), '-passout', `pass:${PASS}`);
  p12.legacy = make('legacy.p12', 'b', ...key('b'), '-legacy', '-passout', `pass:${PASS}`);
  p12.noKey = make('nokey.p12', 'b', '-nokeys', '-passout', `pass:${PASS}`);
  p12.empty = make('empty.p12', 'b', ...key('b'), '-passout', 'pass:');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close().catch(() => {});
});

/**
 * An origin that requires a client certificate in the TLS handshake, issued by one of `ca`: h2
 * (and HTTP/1.1), or HTTP/1.1 only with `h1`; 200 with the issuer of the one it verified.
 */
async function requiringOrigin(ca: string[], h1 = false, tls: Omit<ServerOptions, 'cert' | 'key'> = {}) {
  const options = { cert: SERVER_CERT, key: SERVER_KEY, requestCert: true, rejectUnauthorized: true, ca, ...tls };
  const handler = (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) =>
    res.end((req.socket as TLSSocket).getPeerX509Certificate()?.issuer ?? '');
  const server = h1
    ? createHttpsServer(options, handler)
    : createSecureServer({ ...options, allowHTTP1: true }, handler);
  server.on('tlsClientError', () => {});
  return loopbackOrigin(server, closers);
}

function agent(opts: ConstructorParameters<typeof MultilegAgent>[0]): MultilegAgent {
  const a = new MultilegAgent({ connect: { ca: CA_CERT }, ...opts });
  closers.push(() => a.destroy());
  return a;
}

const pfx = (file: string, passphrase = PASS): ClientCertificate => ({ pfx: readFileSync(file), passphrase });

describe('T3: PKCS#12 client certificates (library)', () => {
  for (const h1 of [false, true])
    it(`T3: clientCertificate: { pfx, passphrase } is presented in the TLS handshake to a server that requires a certificate (${h1 ? 'HTTP/1.1' : 'h2'}), as { cert, key } is`, async () => {
      const origin = await requiringOrigin([CA_B], h1);
      // Before: a ConfigError, "cert and key must each be PEM text or a Buffer of PEM or DER".
      const a = agent({ clientCertificate: pfx(p12.b) });
      const res = await fetch(`${origin}/x`, { dispatcher: a });
      expect([res.status, await res.text()]).toEqual([200, issuerOf(CA_B)]);
      // One exported without a password takes none.
      const open = agent({ clientCertificate: { pfx: readFileSync(p12.empty) } });
      const again = await fetch(`${origin}/y`, { dispatcher: open });
      expect([again.status, await again.text()]).toEqual([200, issuerOf(CA_B)]);
    });

  it('T3: through a CONNECT tunnel the PKCS#12 certificate reaches the origin', async () => {
    const origin = await requiringOrigin([CA_B]);
    const proxy = await startReferenceProxy({});
    closers.push(() => proxy.close());
    const a = agent({ clientCertificate: pfx(p12.b), proxy: { uri: proxy.origin, connect: { ca: CA_CERT } } });
    const res = await fetch(`${origin}/x`, { dispatcher: a });
    expect([res.status, await res.text()]).toEqual([200, issuerOf(CA_B)]);
  });

  it('T3: a selector may return { pfx, passphrase }, and issuedByOneOf reads the certificate in a PKCS#12 file to pick it', async () => {
    const origin = await requiringOrigin([CA_B]);
    const mine = [pfx(p12.a), pfx(p12.b)];
    const told: CertificateRequestInfo[] = [];
    const a = agent({
      trustedOrigins: [origin],
      clientCertificate: (_origin, _challenge, info) => {
        told.push(info);
        return mine.find((c) => issuedByOneOf(c, info.acceptableIssuers));
      },
    });
    const res = await fetch(`${origin}/x`, { dispatcher: a });
    // Before: issuedByOneOf took no PKCS#12 file (none found: the selector declined).
    expect([res.status, await res.text()]).toEqual([200, issuerOf(CA_B)]);
    const issuers = told[0]!.acceptableIssuers!;
    expect(issuers.map((n) => n.name)).toEqual([issuerOf(CA_B)]);
    expect(mine.map((c) => issuedByOneOf(c, issuers))).toEqual([false, true]);
    // A { cert, key } object is read by its cert; a file its passphrase does not open is issued by none.
    expect(issuedByOneOf({ cert: fixture('client-b.pem'), key: fixture('client-b.key') }, issuers)).toBe(true);
    expect(issuedByOneOf(pfx(p12.b, 'wrong'), issuers)).toBe(false);
  });

  it('T3: a PKCS#12 file that cannot be used is a ConfigError naming why and the fix: passphrase, not PKCS#12, a legacy cipher, no key', () => {
    const bytes = readFileSync(p12.b);
    const bad: Array<[unknown, RegExp]> = [
      [{ pfx: bytes, passphrase: 'hunter2-wrong' }, /the PKCS#12 file’s passphrase is missing or wrong/],
      [{ pfx: bytes }, /the PKCS#12 file’s passphrase is missing or wrong/],
      [{ pfx: Buffer.from(fixture('client-b.pem')) }, /pfx is not a PKCS#12 \(\.pfx, \.p12\) file/],
      [{ pfx: Buffer.from('hunter2 garbage') }, /pfx is not a PKCS#12/],
      [{ pfx: bytes.toString('latin1'), passphrase: PASS }, /pfx must be the PKCS#12 file’s bytes, a Buffer/],
      [{ pfx: bytes, cert: fixture('client-b.pem'), passphrase: PASS }, /give either pfx .* or cert and key/],
      [
        { pfx: readFileSync(p12.legacy), passphrase: PASS },
        /legacy cipher \(RC2-40.*openssl pkcs12 -legacy -in old\.pfx -nodes -out old\.pem; openssl pkcs12 -export -in old\.pem -out new\.pfx/,
      ],
      [{ pfx: readFileSync(p12.noKey), passphrase: PASS }, /the PKCS#12 file holds no private key/],
      // A .pfx read into `cert`: the fix is the other field.
      [{ cert: bytes, key: bytes, passphrase: PASS }, /cert is a PKCS#12 \(\.pfx, \.p12\) file: give it as \{ pfx/],
    ];
    for (const [clientCertificate, message] of bad) {
      const make = () => new MultilegAgent({ clientCertificate: clientCertificate as ClientCertificate });
      expect(make).toThrow(ConfigError);
      expect(make).toThrow(message);
      // The passphrase never appears in the error (S2).
      expect(make).not.toThrow(/hunter2/);
    }
    // A wrong passphrase on a legacy file is named as the passphrase (its MAC is checked first).
    expect(() => new MultilegAgent({ clientCertificate: pfx(p12.legacy, 'wrong') })).toThrow(/passphrase/);
  });
});

describe('T3: PKCS#12 client certificates (command)', () => {
  let origin: string;
  let ca: string;
  // The origin outlives each test (the afterEach above closes only what a test made).
  let closeOrigin: (() => Promise<unknown>) | undefined;
  beforeAll(async () => {
    origin = await requiringOrigin([CA_A, CA_B], true);
    closeOrigin = closers.pop();
    ca = join(dir, 'ca.pem');
    writeFileSync(ca, CA_CERT);
    writeFileSync(join(dir, 'client-b.pem'), fixture('client-b.pem'));
  });
  afterAll(() => closeOrigin?.());
  const run = (...args: string[]) => runCli(['--cacert', ca, ...args, `${origin}/x`]);

  it("T3: --cert FILE.p12:pw with --cert-type P12 (any case) or none, or --pass: presented, as curl's --cert-type P12; --key is not read with it, as curl", async () => {
    for (const args of [
      ['--cert', `${p12.b}:${PASS}`, '--cert-type', 'P12'],
      ['--cert', `${p12.b}:${PASS}`, '--cert-type', 'p12'],
      // curl 7.88 (OpenSSL) needs the type: multileg recognizes the file without it.
      ['--cert', `${p12.b}:${PASS}`],
      ['--cert', p12.b, '--pass', PASS],
      ['--cert', p12.empty],
      // curl 7.88 ignores --key with P12, a file that is not there too.
      ['--cert', `${p12.b}:${PASS}`, '--cert-type', 'P12', '--key', join(dir, 'missing.key')],
    ]) {
      const ok = await run(...args);
      // Before: 58 "neither PEM nor DER", or --cert-type unknown (exit 2).
      expect([ok.code, ok.stdout, ok.stderr], args.join(' ')).toEqual([0, issuerOf(CA_B), '']);
    }
  });

  it('T3: a PKCS#12 --cert that cannot be used exits 58 as curl, one line naming why and the fix; an unknown --cert-type 58; --cert-type without --cert 2', async () => {
    const cases: Array<[string[], number, string]> = [
      [
        ['--cert', `${p12.b}:hunter2-wrong`, '--cert-type', 'P12'],
        58,
        'multileg: --cert: the PKCS#12 file’s passphrase is missing or wrong (its integrity check failed): pass --pass\n',
      ],
      [
        ['--cert', p12.b, '--cert-type', 'P12'],
        58,
        'multileg: --cert: the PKCS#12 file’s passphrase is missing or wrong (its integrity check failed): pass --pass\n',
      ],
      [
        ['--cert', join(dir, 'client-b.pem'), '--cert-type', 'P12'],
        58,
        'multileg: --cert: the file is not PKCS#12 (.pfx, .p12): give one, or --cert-type PEM for a PEM or DER file\n',
      ],
      [
        ['--cert', `${p12.b}:${PASS}`, '--cert-type', 'PEM'],
        58,
        'multileg: --cert/--key: cert is a PKCS#12 (.pfx, .p12) file: give --cert-type P12\n',
      ],
      [
        ['--cert', `${p12.b}:${PASS}`, '--cert-type', 'ENG'],
        58,
        'multileg: --cert-type ENG: not a type multileg reads; give PEM, DER or P12 (a PKCS#12 .pfx/.p12 file)\n',
      ],
      [['--cert-type', 'P12'], 2, 'multileg: --cert-type goes with --cert\n'],
    ];
    for (const [args, code, stderr] of cases) {
      const r = await run(...args);
      expect([r.code, r.stderr], args.join(' ')).toEqual([code, stderr]);
    }
    const legacy = await run('--cert', `${p12.legacy}:${PASS}`, '--cert-type', 'P12');
    expect(legacy.code).toBe(58);
    expect(legacy.stderr).toMatch(
      /^multileg: --cert: the PKCS#12 file is encrypted with a legacy cipher .*openssl pkcs12 -legacy -in old\.pfx -nodes -out old\.pem; openssl pkcs12 -export -in old\.pem -out new\.pfx .*run with NODE_OPTIONS=--openssl-legacy-provider\n$/,
    );
    // Node's legacy provider, as the message says, opens it.
    const provider = await runCli(['--cacert', ca, '--cert', `${p12.legacy}:${PASS}`, `${origin}/x`], {
      env: { NODE_OPTIONS: '--openssl-legacy-provider' },
    });
    expect([provider.code, provider.stdout]).toEqual([0, issuerOf(CA_B)]);
  });
});
