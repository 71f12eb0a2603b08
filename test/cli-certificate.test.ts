/**
 * `multileg doctor` and `-v` with client certificates, against the servers whose behaviour it is:
 * nginx (`ssl_verify_client on`: completes the handshake, answers 400), Apache `SSLVerifyClient
 * require` (refuses the TLS handshake) and `optional` (answers 401 Transport without one), each
 * asking for certificates of CAs A and B (test/fixtures/issuers).
 */
import { createPrivateKey } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { runCli } from './cli-helpers.ts';
import { certificateApache, certificateNginx, requirePeer } from './lab/index.ts';

const haveNginx = requirePeer('nginx');
const haveApache = requirePeer('apache');

const fixture = (name: string) => readFileSync(new URL(`./fixtures/${name}`, import.meta.url), 'utf8');
const fixturePath = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const CA_A = fixture('issuers/ca-a.pem');
const CA_B = fixture('issuers/ca-b.pem');
/** The CAs the servers name, as doctor writes them. */
const ACCEPTED = 'C=FR, O=Example A\\, Inc., CN=Test CA A; O=Exämple B, OU=Clients, CN=Test CA B';
const PASSPHRASE = 'hunter2-passphrase';

describe.skipIf(!haveNginx && !haveApache)(
  'multileg doctor and -v with client certificates (real nginx, Apache)',
  () => {
    let dir: string;
    const file = (name: string, text: string | Buffer) => {
      const path = join(dir, name);
      writeFileSync(path, text);
      return path;
    };
    let ca: string;
    /** A certificate of CA A with its key: what the servers take. */
    let good: string[];
    /** A certificate of another CA (the reference PKI's): what they refuse. */
    let other: string[];
    const servers: Record<'nginx' | 'require' | 'optional', string | undefined> = {
      nginx: undefined,
      require: undefined,
      optional: undefined,
    };
    const stops: Array<() => Promise<void>> = [];
    /** No Kerberos ticket (its checks say warn, never FAIL), nor the developer's. */
    const run = (args: string[]) =>
      runCli(args, { env: { KRB5CCNAME: `FILE:${join(dir, 'no-ccache')}`, KRB5_CONFIG: join(dir, 'no-krb5.conf') } });
    /** `multileg doctor --cacert <the reference CA> ...options url`. */
    const doctor = (url: string, ...options: string[]) => run(['doctor', '--cacert', ca, ...options, url]);

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'multileg-cli-certificate-'));
      ca = file('ca.pem', CA_CERT);
      good = [
        '--cert',
        file('a.pem', fixture('issuers/client-a.pem')),
        '--key',
        file('a.key', fixture('issuers/client-a.key')),
      ];
      other = ['--cert', file('other.pem', CLIENT_CERT), '--key', file('other.key', CLIENT_KEY)];
      const tls = { cert: SERVER_CERT, key: SERVER_KEY, clientCas: [CA_A, CA_B] };
      if (haveNginx) {
        const nginx = await certificateNginx(tls);
        stops.push(() => nginx.stop());
        servers.nginx = nginx.origin;
      }
      if (haveApache)
        for (const verify of ['require', 'optional'] as const) {
          const apache = await certificateApache({ ...tls, verify });
          stops.push(() => apache.stop());
          servers[verify] = apache.origin;
        }
    }, 60_000);
    afterAll(async () => {
      await Promise.allSettled(stops.map((s) => s()));
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it.runIf(haveNginx && haveApache)(
      'T3: doctor --cert with a certificate the server refuses (nginx\'s 400 "The SSL certificate error", Apache\'s unknown_ca alert): says the server refused it, with the fix, not "could not be reached"; the client CAs check names the CAs it accepts and that the certificate\'s issuer is not one of them',
      async () => {
        for (const [origin, how] of [
          [servers.nginx!, 'it answered 400 "The SSL certificate error" (nginx)'],
          [servers.require!, 'TLS alert unknown_ca in the handshake'],
        ] as const) {
          const r = await doctor(`${origin}/x`, ...other);
          // Before: "FAIL  schemes: the server could not be reached: …", and no check of the certificate.
          expect(r.stdout).not.toContain('could not be reached');
          expect(r.stdout).toMatch(
            /^ok {4}client certificate: subject CN=alice; issuer CN=multileg test CA; valid to .*; the key is its own\n/m,
          );
          expect(r.stdout).toContain(
            `FAIL  client CAs: the --cert certificate's issuer (CN=multileg test CA) is not one of the CAs the server accepts: ${ACCEPTED}\n      fix: give a certificate issued by one of them with --cert and --key\n`,
          );
          expect(r.stdout).toContain(
            `FAIL  schemes: not seen: the server refused the client certificate given with --cert (${how})\n      fix: give a certificate issued by one of the CAs it accepts (the client CAs check names them) with --cert and --key\n`,
          );
          expect([r.code, r.stdout.endsWith('2 check(s) failed\n')]).toEqual([1, true]);
        }
      },
      60_000,
    );

    it.runIf(haveNginx && haveApache)(
      'T3: doctor without --cert where a certificate is required (nginx\'s 400 "No required SSL certificate was sent", Apache refusing the handshake, Apache optional\'s 401 Transport): FAIL naming the CAs it accepts and --cert/--key, not "no problem found" nor kinit',
      async () => {
        for (const [origin, how] of [
          [servers.nginx!, 'it answered 400 "No required SSL certificate was sent" (nginx)'],
          [servers.require!, 'it refused the TLS handshake without one'],
          [servers.optional!, 'it answered 401 offering Transport only'],
        ] as const) {
          const r = await doctor(`${origin}/x`);
          // Before: nginx "no problem found" (its 400 taken for an answer), Apache optional "kinit user@REALM".
          expect(r.stdout).toContain(
            `FAIL  client certificate: none given, and the server requires one (${how}); it accepts certificates issued by ${ACCEPTED}\n      fix: give one issued by one of them with --cert and --key\n`,
          );
          expect(r.stdout).not.toContain('kinit user@REALM, or give');
          expect(r.stdout).not.toContain('could not be reached');
          expect([r.code, r.stdout.endsWith('1 check(s) failed\n')]).toEqual([1, true]);
        }
      },
      60_000,
    );

    it.runIf(haveNginx && haveApache)(
      'T3: doctor --cert with a certificate of a CA the servers accept: its subject, issuer, dates and key ok, its issuer among their CAs, no problem found',
      async () => {
        for (const origin of [servers.nginx!, servers.require!, servers.optional!]) {
          const r = await doctor(`${origin}/x`, ...good);
          expect(r.stdout).toMatch(
            /^ok {4}client certificate: subject CN=alice; issuer C=FR, O=Example A\\, Inc\., CN=Test CA A; valid to .* 2126 GMT; the key is its own\n/m,
          );
          expect(r.stdout).toContain(
            `ok    client CAs: the --cert certificate's issuer (C=FR, O=Example A\\, Inc., CN=Test CA A) is one of the CAs the server accepts (${ACCEPTED})\n`,
          );
          expect([r.code, r.stdout.endsWith('no problem found\n')]).toEqual([0, true]);
        }
      },
      60_000,
    );

    it.runIf(haveNginx)(
      'T3: doctor --cert: an expired certificate, one not valid yet, and a key that is not its own are each FAIL with the fix ("renew it"); the command refuses the key of another type (exit 58) where nginx got no certificate from it',
      async () => {
        const url = `${servers.nginx!}/x`;
        const expired = await doctor(
          url,
          '--cert',
          fixturePath('expired-localhost-cert.pem'),
          '--key',
          fixturePath('expired-localhost-key.pem'),
        );
        expect(expired.stdout).toContain(
          "FAIL  client certificate: subject CN=localhost; issuer CN=localhost; expired Jan  2 00:00:00 2020 GMT\n      fix: renew it (a server refuses an expired certificate); if it is not expired, set this machine's clock\n",
        );
        expect(expired.code).toBe(1);
        // Made with `openssl ca -selfsign -startdate 21250101000000Z -enddate 21260101000000Z`.
        const future = await doctor(
          url,
          '--cert',
          fixturePath('future-client-cert.pem'),
          '--key',
          fixturePath('future-client-key.pem'),
        );
        expect(future.stdout).toContain(
          "FAIL  client certificate: subject CN=future; issuer CN=future; not valid before Jan  1 00:00:00 2125 GMT\n      fix: renew it (ask for one valid today), or set this machine's clock if it is behind\n",
        );
        // CA A's certificate (EC) with the reference PKI's RSA key.
        const mismatch = ['--cert', good[1]!, '--key', other[3]!];
        const wrongKey = await doctor(url, ...mismatch);
        expect(wrongKey.stdout).toContain(
          'FAIL  client certificate: subject CN=alice; issuer C=FR, O=Example A\\, Inc., CN=Test CA A; the key is not its own (key values mismatch)\n      fix: give the key the certificate was issued for with --key (or one PEM file holding both with --cert)\n',
        );
        expect(wrongKey.stdout).toContain(
          'skip  schemes: not seen: --cert/--key cannot be used (the client certificate check says why)\n',
        );
        // Before: exit 0 with nginx's "No required SSL certificate was sent" page (OpenSSL set the key
        // aside, in its slot for another type, and the handshake presented no certificate).
        const command = await run(['--cacert', ca, ...mismatch, url]);
        expect([command.code, command.stderr]).toEqual([
          58,
          'multileg: --cert/--key: the key is not the certificate’s (key values mismatch): give the key the certificate was issued for\n',
        ]);
      },
      60_000,
    );

    it.runIf(haveNginx)(
      'S2: doctor --cert with an encrypted key: the passphrase (--pass, or --cert file:passphrase) and the key are never printed; a wrong one is FAIL naming --pass',
      async () => {
        const key = file(
          'a-encrypted.key',
          createPrivateKey(fixture('issuers/client-a.key')).export({
            format: 'pem',
            type: 'pkcs8',
            cipher: 'aes-256-cbc',
            passphrase: PASSPHRASE,
          }) as string,
        );
        const url = `${servers.nginx!}/x`;
        const right = await doctor(url, '--cert', good[1]!, '--key', key, '--pass', PASSPHRASE);
        expect(right.stdout).toMatch(/^ok {4}client certificate: subject CN=alice; .*; the key is its own\n/m);
        expect(right.code).toBe(0);
        const colon = await doctor(url, '--cert', `${good[1]!}:${PASSPHRASE}`, '--key', key);
        expect(colon.stdout).toMatch(/^ok {4}client certificate: subject CN=alice; .*; the key is its own\n/m);
        const wrong = await doctor(url, '--cert', good[1]!, '--key', key, '--pass', 'hunter2-wrong');
        expect(wrong.stdout).toContain(
          'FAIL  client certificate: subject CN=alice; issuer C=FR, O=Example A\\, Inc., CN=Test CA A; the key is encrypted and the passphrase is missing or wrong: pass --pass\n',
        );
        const keyLines = readFileSync(key, 'utf8').split('\n').slice(1, 3);
        for (const r of [right, colon, wrong])
          for (const secret of ['hunter2', ...keyLines]) expect(`${r.stdout}${r.stderr}`).not.toContain(secret);
      },
      60_000,
    );

    it.runIf(haveNginx)(
      'T3/S2: -v names the client certificate a leg presents (its subject), where it said "no credentials"; no key or passphrase in the trace; a leg without one still says "no credentials"',
      async () => {
        const url = `${servers.nginx!}/x`;
        const r = await run(['-v', '-s', '--cacert', ca, ...good, url]);
        expect(r.stdout).toMatch(/^certificate .*CN=Test CA A/);
        // Before: "> GET /x (no credentials) [session s1]".
        expect(r.stderr).toMatch(/^> GET \/x \(client certificate CN=alice\) \[session s1\]$/m);
        expect(r.stderr).not.toContain('no credentials');
        for (const secret of readFileSync(good[3]!, 'utf8').split('\n').slice(1, 3))
          expect(r.stderr).not.toContain(secret);
        const none = await run(['-v', '-s', '--cacert', ca, url]);
        expect(none.stderr).toMatch(/^> GET \/x \(no credentials\) \[session s1\]$/m);
      },
      60_000,
    );
  },
);
