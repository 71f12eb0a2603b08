import { createPrivateKey, X509Certificate } from 'node:crypto';
import { fetch } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import {
  type Challenge,
  type ClientCertificate,
  ClientCertificateError,
  ConfigError,
  HandshakeTimeoutError,
  MultilegAgent,
} from '../src/index.ts';
import { CLIENT_CERT, CLIENT_KEY } from '../src/reference-server/index.ts';
import { SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { get, hasAuth, many, type Rig, rig } from './helpers.ts';

let r: Rig | undefined;
afterEach(async () => {
  await r?.close();
  r = undefined;
});

const CERT = { cert: CLIENT_CERT, key: CLIENT_KEY };

describe('choosing credentials: Transport (client certificates), 401 vs 403, trusted origins', () => {
  it('T3: a Transport challenge moves the request to a new session that presents the certificate', async () => {
    r = await rig({ mode: 'session', clientCertificate: 'offer' }, { clientCertificate: CERT });
    const res = await get(r, '/auth/a', { method: 'POST', body: 'same body' });
    expect(res.status).toBe(200);
    expect(res.body.user).toBe('cert:alice');
    const [first, second] = r.server.exchanges;
    expect(first!.status).toBe(401);
    expect(first!.responseHeaders['www-authenticate']).toContain('Transport mode="tls-client-certificate"');
    expect(second!.outcome).toBe('certificate');
    expect(second!.sessionId).not.toBe(first!.sessionId);
    expect(second!.bodySha256).toBe(first!.bodySha256);
    // No credentials were sent: the certificate was the stronger (configured) choice (T2).
    expect(r.server.exchanges.some((e) => hasAuth(e.requestHeaders))).toBe(false);
    // The origin keeps using certificate sessions.
    const more = await many(r, 5);
    expect(more.every((x) => x.status === 200 && x.body.user === 'cert:alice')).toBe(true);
    expect(new Set(more.map((x) => x.body.sessionId))).toEqual(new Set([second!.sessionId]));
  });

  it('T3: a selector is given the origin and the challenge, and may decline (the next scheme is used)', async () => {
    const seen: Array<[string, Challenge]> = [];
    r = await rig(
      { mode: 'session', clientCertificate: 'offer' },
      {
        clientCertificate: (origin, challenge) => {
          seen.push([origin, challenge]);
          return undefined;
        },
      },
    );
    const res = await get(r, '/auth/a');
    expect(res.status).toBe(200);
    expect(res.body.user).toBe('EXAMPLE\\alice');
    expect(seen).toHaveLength(1);
    expect(seen[0]![0]).toBe(r.server.origin);
    expect(seen[0]![1].params.mode).toBe('tls-client-certificate');
  });

  it('T3: a DER certificate and key (Buffers) are presented as PEM ones are', async () => {
    // Node's TLS takes PEM only: DER bytes used to fail every connection with "no start line".
    const der = {
      cert: new X509Certificate(CLIENT_CERT).raw,
      key: createPrivateKey(CLIENT_KEY).export({ format: 'der', type: 'pkcs8' }),
    };
    r = await rig({ mode: 'session', clientCertificate: 'offer' }, { clientCertificate: der });
    const res = await get(r, '/auth/a');
    expect(res.status).toBe(200);
    expect(res.body.user).toBe('cert:alice');
  });

  it('T3: an encrypted key with its passphrase is accepted; a certificate that cannot be used is a ConfigError when the agent is made', () => {
    const encrypted = createPrivateKey(CLIENT_KEY).export({
      format: 'pem',
      type: 'pkcs8',
      cipher: 'aes-256-cbc',
      passphrase: 'pw',
    });
    expect(
      () => new MultilegAgent({ clientCertificate: { cert: CLIENT_CERT, key: encrypted, passphrase: 'pw' } }),
    ).not.toThrow();
    // Before, each was accepted and every later connection failed with an OpenSSL message.
    const bad: Array<[unknown, RegExp]> = [
      [{ cert: 'garbage', key: 'garbage' }, /clientCertificate: cert or key is neither PEM nor DER/],
      [{ cert: CLIENT_CERT, key: SERVER_KEY }, /clientCertificate: the key is not the certificate’s/],
      [
        { cert: CLIENT_CERT, key: encrypted },
        /clientCertificate: the key is encrypted and the passphrase is missing or wrong/,
      ],
      [{ cert: CLIENT_CERT, key: encrypted, passphrase: 'hunter2-secret' }, /passphrase is missing or wrong/],
      [{ cert: CLIENT_CERT }, /cert and key must each be PEM text or a Buffer of PEM or DER/],
      [null, /clientCertificate: it must be an object/],
    ];
    for (const [clientCertificate, message] of bad) {
      const make = () => new MultilegAgent({ clientCertificate: clientCertificate as ClientCertificate });
      expect(make).toThrow(ConfigError);
      expect(make).toThrow(message);
      // The passphrase never appears in the error (S2).
      expect(make).not.toThrow(/hunter2/);
    }
  });

  it('T3/R3: a selector that never answers ends the request with HandshakeTimeoutError at handshakeTimeout', async () => {
    r = await rig(
      { mode: 'session', clientCertificate: 'offer' },
      { clientCertificate: () => new Promise<undefined>(() => {}), limits: { handshakeTimeout: 300 } },
    );
    // Before, the request waited for ever.
    const err = await fetch(`${r.server.origin}/auth/a`, { dispatcher: r.agent }).catch((e: Error) => e.cause);
    expect(err).toBeInstanceOf(HandshakeTimeoutError);
    expect((err as HandshakeTimeoutError).message).toMatch(/Transport/);
    expect(r.server.exchanges.map((e) => e.status)).toEqual([401]);
  });

  it('T3: a selector that throws, or gives a certificate that cannot be used, fails the request with ClientCertificateError; nothing else is sent', async () => {
    const answers: Array<() => ClientCertificate> = [
      () => {
        throw new Error('no smart card');
      },
      () => ({ cert: CLIENT_CERT, key: SERVER_KEY }),
    ];
    for (const [i, select] of answers.entries()) {
      r = await rig({ mode: 'session', clientCertificate: 'offer' }, { clientCertificate: select });
      const err = await fetch(`${r.server.origin}/auth/a`, { dispatcher: r.agent }).catch((e: Error) => e.cause);
      expect(err).toBeInstanceOf(ClientCertificateError);
      expect((err as ClientCertificateError).code).toBe('MULTILEG_CLIENT_CERTIFICATE');
      expect((err as ClientCertificateError).message).toMatch(
        i === 0 ? /clientCertificate for https:.*: the selector threw/ : /the key is not the certificate’s/,
      );
      // Before: the selector's own exception, or OpenSSL's, reached the caller untyped.
      expect(r.server.exchanges.map((e) => e.status)).toEqual([401]);
      expect(r.server.exchanges.some((e) => hasAuth(e.requestHeaders))).toBe(false);
      await r.close();
      r = undefined;
    }
  });

  it('T2: Transport is ranked by configuration: placed last, Negotiate wins', async () => {
    r = await rig(
      { mode: 'session', clientCertificate: 'offer' },
      { clientCertificate: CERT, schemes: ['Negotiate', 'NTLM', 'Transport'] },
    );
    const res = await get(r, '/auth/a');
    expect(res.status).toBe(200);
    expect(res.body.user).toBe('EXAMPLE\\alice');
    expect(r.agent.handshakes()[0]!.scheme).toBe('Negotiate');
  });

  it('T2: the strongest offered scheme wins (Negotiate over NTLM)', async () => {
    r = await rig({ mode: 'session', schemes: ['NTLM', 'Negotiate'] });
    await get(r, '/auth/a');
    expect(r.agent.handshakes().map((h) => h.scheme)).toEqual(['Negotiate']);
  });

  it('T2: a configurable order: NTLM first', async () => {
    r = await rig({ mode: 'session' }, { schemes: ['NTLM', 'Negotiate'] });
    await get(r, '/auth/a');
    expect(r.agent.handshakes().map((h) => h.scheme)).toEqual(['NTLM']);
  });

  it('T4: a 403 is final: no retry with other credentials', async () => {
    // The server certificate is not for client authentication: the server refuses it with 403.
    r = await rig(
      { mode: 'session', clientCertificate: 'offer' },
      { clientCertificate: { cert: SERVER_CERT, key: SERVER_KEY } },
    );
    const res = await fetch(`${r.server.origin}/auth/a`, { dispatcher: r.agent });
    expect(res.status).toBe(403);
    await res.arrayBuffer();
    expect(r.server.exchanges.map((e) => e.status)).toEqual([401, 403]);
    expect(r.agent.stats().handshakes).toBe(0);
  });

  it('T4: a 401 from an authenticated session re-runs authentication once and resends the original request', async () => {
    r = await rig({ mode: 'session' });
    expect((await get(r, '/auth/a')).status).toBe(200);
    // The server forgets the session again and again: one re-authentication per request, no loop.
    r.server.on('exchange', (e) => {
      if (e.outcome === 'accepted') r!.server.forgetAuthentication();
    });
    r.server.forgetAuthentication();
    const res = await get(r, '/auth/b');
    expect(res.status).toBe(200); // the re-run succeeded and the original request was resent
    expect(r.agent.stats().handshakes).toBe(2);
  });
});
