/**
 * T3 against the real Apache: a client certificate asked for one path only (`SSLVerifyClient
 * require` inside `<Location /cert>`; IIS's "Require SSL" + client certificates on a folder whose
 * binding does not negotiate them). The server asks mid-connection: over h2, mod_http2 resets the
 * stream HTTP_1_1_REQUIRED (the agent goes on over HTTP/1.1); over TLS 1.2 it renegotiates, and closes
 * the connection (handshake_failure) when no certificate comes; over TLS 1.3 it would use
 * post-handshake authentication, which Node's client does not offer: Apache answers 403 "Cannot
 * perform Post-Handshake Authentication".
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createSecureServer } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import {
  type CertificateRequestInfo,
  ClientCertificateAfterHandshakeError,
  ClientCertificateRequiredError,
  MultilegAgent,
  type MultilegAgentOptions,
} from '../src/index.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { runCli } from './cli-helpers.ts';
import { loopbackOrigin } from './helpers.ts';
import { certificateApache, requirePeer } from './lab/index.ts';

const closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close().catch(() => {});
});

const fixture = (name: string) => readFileSync(new URL(`./fixtures/issuers/${name}`, import.meta.url), 'utf8');
const CA_A = fixture('ca-a.pem');
const CA_B = fixture('ca-b.pem');
const CERT_B = { cert: fixture('client-b.pem'), key: fixture('client-b.key') };

/** An agent for `origin` (the test CA trusted, the origin too); destroyed after the test. */
function agentFor(origin: string, opts: Partial<MultilegAgentOptions> = {}): MultilegAgent {
  const agent = new MultilegAgent({ connect: { ca: CA_CERT }, trustedOrigins: [origin], ...opts });
  closers.push(() => agent.destroy());
  return agent;
}

/** A GET (or a POST of `a=1`) of `path`: its status and body, or the error. */
async function send(
  agent: MultilegAgent,
  url: string,
  method: 'GET' | 'POST' = 'GET',
): Promise<[number, string] | Error> {
  try {
    const res = await request(url, { dispatcher: agent, method, ...(method === 'POST' ? { body: 'a=1' } : {}) });
    return [res.statusCode, await res.body.text()];
  } catch (e) {
    return e as Error;
  }
}

/** A selector that records what it is told and gives B's certificate. */
function recording() {
  const told: CertificateRequestInfo[] = [];
  return {
    told,
    select: (_origin: string, _challenge: unknown, info: CertificateRequestInfo) => {
      told.push(info);
      return CERT_B;
    },
  };
}

describe('T3: Apache asking for a client certificate for one path only (<Location /cert> SSLVerifyClient require)', () => {
  const haveApache = requirePeer('apache');
  const apacheFor = async (maxVersion: 'TLSv1.3' | 'TLSv1.2', verify: 'require' | 'optional' = 'require') => {
    const apache = await certificateApache({
      cert: SERVER_CERT,
      key: SERVER_KEY,
      clientCas: [CA_A, CA_B],
      maxVersion,
      verify,
      location: '/cert',
    });
    closers.push(() => apache.stop());
    return apache.origin;
  };

  for (const allowH2 of [true, false]) {
    const over = allowH2 ? 'h2' : 'HTTP/1.1';
    it.runIf(haveApache)(
      `T3: TLSv1.2 (${over}): a certificate given as such is presented on the renegotiation Apache asks it by (over h2 after its HTTP_1_1_REQUIRED), and /cert/ answers`,
      async () => {
        const origin = await apacheFor('TLSv1.2');
        const a = agentFor(origin, { clientCertificate: CERT_B, allowH2 });
        expect(await send(a, `${origin}/`)).toEqual([200, 'public']);
        expect(await send(a, `${origin}/cert/`)).toEqual([200, 'certificate']);
      },
      30_000,
    );

    it.runIf(haveApache)(
      `T3: TLSv1.2 (${over}): the renegotiation that finds no certificate asks the selector once (requiredAfterHandshake), and /cert/ — a GET after a GET on a kept connection, then a POST — answers on a new connection presenting its choice`,
      async () => {
        const origin = await apacheFor('TLSv1.2');
        const { told, select } = recording();
        const a = agentFor(origin, { clientCertificate: select, allowH2 });
        expect(await send(a, `${origin}/`)).toEqual([200, 'public']);
        // Before: ConnectionClosedError (Apache closed the connection after its renegotiation), the selector never asked.
        expect(await send(a, `${origin}/cert/`)).toEqual([200, 'certificate']);
        expect(await send(a, `${origin}/cert/`, 'POST')).toEqual([200, 'certificate']);
        expect(told).toEqual([{ requiredAfterHandshake: true }]);
      },
      30_000,
    );
  }

  it.runIf(haveApache)(
    'T3: TLSv1.2: a POST first, the selector asked: it goes again on the connection presenting the certificate (Apache asks before it runs the request)',
    async () => {
      const origin = await apacheFor('TLSv1.2');
      const { told, select } = recording();
      const a = agentFor(origin, { clientCertificate: select, allowH2: false });
      expect(await send(a, `${origin}/cert/`, 'POST')).toEqual([200, 'certificate']);
      expect(told).toHaveLength(1);
    },
    30_000,
  );

  it.runIf(haveApache)(
    'T3: TLSv1.2: no clientCertificate, or a selector that declines: ClientCertificateRequiredError says the server asked after the handshake by renegotiating, not a bare close',
    async () => {
      const origin = await apacheFor('TLSv1.2');
      const none = agentFor(origin);
      expect(await send(none, `${origin}/`)).toEqual([200, 'public']);
      // Before: ConnectionClosedError "closed its kept-alive connection … check the server's logs".
      const err = await send(none, `${origin}/cert/`);
      expect(err).toBeInstanceOf(ClientCertificateRequiredError);
      const e = err as ClientCertificateRequiredError;
      expect(e.code).toBe('MULTILEG_CLIENT_CERTIFICATE_REQUIRED');
      expect(e.message).toContain(
        'the server requires a TLS client certificate (it asked for one after the TLS handshake, for this path only, renegotiating the connection',
      );
      expect(e.message).toContain('give clientCertificate: { cert, key }');
      expect(e.acceptableIssuers).toEqual([]);
      let asked = 0;
      const declining = agentFor(origin, {
        clientCertificate: () => {
          asked += 1;
          return undefined;
        },
      });
      const declined = await send(declining, `${origin}/cert/`);
      expect(declined).toBeInstanceOf(ClientCertificateRequiredError);
      expect((declined as Error).message).toContain('the selector returned none');
      expect(asked).toBe(1);
      // The path that asks nothing still answers.
      expect(await send(declining, `${origin}/`)).toEqual([200, 'public']);
    },
    30_000,
  );

  for (const maxVersion of ['TLSv1.2', 'TLSv1.3'] as const)
    it.runIf(haveApache)(
      `T3: ${maxVersion}, SSLVerifyClient optional for /cert only: ${maxVersion === 'TLSv1.2' ? "the renegotiation completes without a certificate, Apache's Transport 401 asks the selector, and /cert/ answers on a new connection presenting B's" : 'ClientCertificateAfterHandshakeError as for require'}`,
      async () => {
        const origin = await apacheFor(maxVersion, 'optional');
        const { told, select } = recording();
        const a = agentFor(origin, { clientCertificate: select, allowH2: false });
        expect(await send(a, `${origin}/`)).toEqual([200, 'public']);
        const res = await send(a, `${origin}/cert/`);
        if (maxVersion === 'TLSv1.2') {
          expect(res).toEqual([200, 'certificate']);
          expect(told).toEqual([{}]);
        } else {
          expect(res).toBeInstanceOf(ClientCertificateAfterHandshakeError);
          expect(told).toEqual([]);
        }
      },
      30_000,
    );

  for (const allowH2 of [true, false]) {
    const over = allowH2 ? 'h2' : 'HTTP/1.1';
    it.runIf(haveApache)(
      `T3: TLSv1.3 (${over}): Node offers no post-handshake authentication; with a certificate given or a selector, Apache's 403 "Cannot perform Post-Handshake Authentication" is ClientCertificateAfterHandshakeError naming the fixes, and connect.maxVersion TLSv1.2 takes the request; without one the 403 is the caller's`,
      async () => {
        const origin = await apacheFor('TLSv1.3');
        const { told, select } = recording();
        for (const clientCertificate of [CERT_B, select]) {
          const a = agentFor(origin, { clientCertificate, allowH2 });
          expect(await send(a, `${origin}/`)).toEqual([200, 'public']);
          // Before: the 403 as it came.
          const err = await send(a, `${origin}/cert/`);
          expect(err).toBeInstanceOf(ClientCertificateAfterHandshakeError);
          const e = err as ClientCertificateAfterHandshakeError;
          expect([e.code, e.answered]).toEqual([
            'MULTILEG_CLIENT_CERTIFICATE_AFTER_HANDSHAKE',
            '403 "Cannot perform Post-Handshake Authentication" (Apache)',
          ]);
          expect(e.message).toContain('after the TLS 1.3 handshake, for this path only (post-handshake authentication');
          expect(e.message).toContain("connect: { maxVersion: 'TLSv1.2' }");
          expect(e.message).toContain('SSLVerifyClient in the virtual host');
        }
        // The selector is not asked: no certificate could go.
        expect(told).toEqual([]);
        const tls12 = agentFor(origin, {
          clientCertificate: CERT_B,
          allowH2,
          connect: { ca: CA_CERT, maxVersion: 'TLSv1.2' },
        });
        expect(await send(tls12, `${origin}/cert/`)).toEqual([200, 'certificate']);
        const none = agentFor(origin, { allowH2 });
        const res = await send(none, `${origin}/cert/`);
        expect(
          res instanceof Error ? res : [res[0], res[1].includes('Cannot perform Post-Handshake Authentication')],
        ).toEqual([403, true]);
      },
      30_000,
    );
  }

  it.runIf(haveApache)(
    'T3: the command at a path asking for a certificate after the handshake: TLSv1.2 with --cert presents it on the renegotiation (200), without --cert exit 56 naming --cert and --key (as curl’s 56); TLSv1.3 with --cert exit 35 naming the server’s fix, not connect.maxVersion',
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'multileg-after-handshake-'));
      closers.push(async () => rmSync(dir, { recursive: true, force: true }));
      const file = (name: string, text: string) => {
        writeFileSync(join(dir, name), text);
        return join(dir, name);
      };
      const ca = ['--cacert', file('ca.pem', CA_CERT)];
      const cert = ['--cert', file('b.pem', CERT_B.cert), '--key', file('b.key', CERT_B.key)];
      const tls12 = await apacheFor('TLSv1.2');
      const given = await runCli([...ca, ...cert, `${tls12}/cert/`]);
      expect([given.code, given.stdout]).toEqual([0, 'certificate']);
      // Before: exit 52, "empty reply … it closed the connection without answering".
      const none = await runCli([...ca, `${tls12}/cert/`]);
      expect(none.code).toBe(56);
      expect(none.stderr).toContain(
        `multileg: ${tls12}: the server requires a TLS client certificate (it asked for one after the TLS handshake, for this path only, renegotiating the connection`,
      );
      expect(none.stderr).toContain('give one with --cert and --key (MULTILEG_CLIENT_CERTIFICATE_REQUIRED)');
      const tls13 = await apacheFor('TLSv1.3');
      // Before: Apache's 403 page, exit 0.
      const refused = await runCli([...ca, ...cert, `${tls13}/cert/`]);
      expect([refused.code, refused.stdout]).toEqual([35, '']);
      expect(refused.stderr).toContain(
        `multileg: ${tls13}: the server asks for a client certificate after the TLS 1.3 handshake, for this path only`,
      );
      expect(refused.stderr).toContain("ask the server's admin to ask for it there");
      expect(refused.stderr).not.toContain('maxVersion');
    },
    60_000,
  );
});

it('T3: a 403 on TLS 1.3 that is not the page about post-handshake authentication is the caller’s as it came, to an agent with a certificate', async () => {
  const pages = ['<html><body>Forbidden: no access to /x</body></html>', ''];
  let n = 0;
  const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: true }, (req, res) => {
    req.resume();
    const page = pages[n++ % pages.length] ?? '';
    res.writeHead(403, { 'content-type': 'text/html', 'content-length': Buffer.byteLength(page) }).end(page);
  });
  const origin = await loopbackOrigin(server, closers);
  const a = agentFor(origin, { clientCertificate: CERT_B });
  expect(await send(a, `${origin}/x`)).toEqual([403, pages[0]]);
  expect(await send(a, `${origin}/x`)).toEqual([403, '']);
});
