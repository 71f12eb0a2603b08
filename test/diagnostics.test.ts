import { createPrivateKey } from 'node:crypto';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { createServer } from 'node:http';
import { createSecureServer } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { inspect } from 'node:util';
import { fetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { authScheme, type LegRequestEvent, publishLeg, redactHeaders } from '../src/diagnostics.ts';
import type { HeaderMap } from '../src/headers.ts';
import {
  basicMechanism,
  digestMechanism,
  HANDSHAKE_CHANNEL,
  type HandshakeReport,
  LEG_CHANNEL,
  type LegEvent,
  MultilegAgent,
  ntlmMechanism,
  WITHHELD_CHANNEL,
  type WithheldEvent,
} from '../src/index.ts';
import { carriesNoSecret } from '../src/mechanisms/no-secret.ts';
import { encodeNegotiate, NTLMSSP_SIGNATURE } from '../src/mechanisms/ntlm/messages.ts';
import { encodeOid, tlv } from '../src/mechanisms/spnego/der.ts';
import { SPNEGO_NTLM_FLAGS } from '../src/mechanisms/spnego/ntlm.ts';
import { encodeNegTokenInit, OID_KRB5, OID_NTLMSSP } from '../src/mechanisms/spnego/tokens.ts';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';

describe('diagnostics_channel events', () => {
  let server: ReferenceServer;
  beforeAll(async () => {
    server = await startReferenceServer({ mode: 'session' });
  });
  afterAll(async () => {
    await server.close();
  });

  it('S2: multileg:leg reports every leg (request, response) and multileg:handshake every handshake, secrets redacted', async () => {
    const legs: LegEvent[] = [];
    const handshakes: HandshakeReport[] = [];
    const onLeg = (m: unknown) => legs.push(m as LegEvent);
    const onHandshake = (m: unknown) => handshakes.push(m as HandshakeReport);
    subscribe(LEG_CHANNEL, onLeg);
    subscribe(HANDSHAKE_CHANNEL, onHandshake);
    const agent = new MultilegAgent({
      credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
      trustedOrigins: [server.origin],
      connect: { ca: server.ca },
    });
    try {
      const res = await fetch(`${server.origin}/auth/diag`, {
        dispatcher: agent,
        headers: { cookie: 'sid=secret-cookie' },
      });
      expect(res.status).toBe(200);
      await res.text();
    } finally {
      unsubscribe(LEG_CHANNEL, onLeg);
      unsubscribe(HANDSHAKE_CHANNEL, onHandshake);
      await agent.destroy();
    }
    expect(legs.map((e) => `${e.phase}${e.phase === 'response' ? ` ${e.status} ${e.delivered}` : ''}`)).toEqual([
      'request',
      'response 401 false',
      'request',
      'response 401 false',
      'request',
      'response 200 true',
    ]);
    const requests = legs.filter((e) => e.phase === 'request');
    expect(requests.map((e) => [e.scheme, e.authId, e.method, e.path])).toEqual([
      [undefined, false, 'GET', '/auth/diag'],
      ['Negotiate', false, 'GET', '/auth/diag'],
      ['Negotiate', true, 'GET', '/auth/diag'],
    ]);
    expect(new Set(legs.map((e) => e.legId)).size).toBe(3);
    expect(legs.every((e) => e.origin === server.origin && e.sessionId === legs[0]!.sessionId)).toBe(true);
    expect(legs.filter((e) => e.phase === 'response').every((e) => e.protocol === 'h2')).toBe(true);
    expect(handshakes).toEqual([
      expect.objectContaining({ scheme: 'Negotiate', outcome: 'session', legs: 2, authIdCarried: true }),
    ]);
    // Nothing the wire carried as a secret reaches a subscriber.
    const published = JSON.stringify(legs);
    expect(published).toContain('"authorization","Negotiate [redacted]"');
    expect(published).toContain('"cookie","[redacted]"');
    expect(published).not.toContain('secret-cookie');
    expect(published).not.toContain('alicepw');
    for (const e of server.exchanges) {
      const auth = e.requestHeaders.authorization;
      if (typeof auth === 'string') expect(published).not.toContain(auth.split(' ')[1]);
      const challenge = e.responseHeaders['www-authenticate'];
      for (const c of [challenge].flat()) {
        const token = typeof c === 'string' ? c.split(' ')[1] : undefined;
        if (token) expect(published).not.toContain(token);
      }
      if (e.authIdSent) expect(published).not.toContain(e.authIdSent);
    }
  });

  it('S2: an Authorization value without a scheme word (an API key sent raw) reaches multileg:leg as [redacted], with no scheme', async () => {
    const legs: LegEvent[] = [];
    const onLeg = (m: unknown) => legs.push(m as LegEvent);
    subscribe(LEG_CHANNEL, onLeg);
    const agent = new MultilegAgent({
      credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
      trustedOrigins: [server.origin],
      connect: { ca: server.ca },
    });
    try {
      const res = await fetch(`${server.origin}/public/raw-key`, {
        dispatcher: agent,
        headers: { Authorization: 'sk_live_SUPERSECRET123' },
      });
      await res.text();
    } finally {
      unsubscribe(LEG_CHANNEL, onLeg);
      await agent.destroy();
    }
    const requests = legs.filter((e) => e.phase === 'request');
    expect(requests.length).toBeGreaterThan(0);
    for (const e of requests) {
      expect(e.scheme).toBeUndefined();
      expect(e.headers).toContainEqual(['authorization', '[redacted]']);
    }
    expect(JSON.stringify(legs)).not.toContain('SUPERSECRET');
  });

  it('S2: only a short token followed by credentials counts as a scheme; anything else in Authorization is redacted whole', () => {
    const secret = (v: string) => redactHeaders({ authorization: v })[0]![1];
    // A scheme word, kept.
    expect(secret('Bearer eyJhbGciOi.x.y')).toBe('Bearer [redacted]');
    expect(secret('  Negotiate\toYIBCjCC==')).toBe('Negotiate [redacted]');
    expect(secret('AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=abc')).toBe('AWS4-HMAC-SHA256 [redacted]');
    expect(authScheme('Digest username="a", response="b"')).toBe('Digest');
    // One word, whatever it looks like: the secret itself.
    for (const v of ['sk_live_SUPERSECRET123', 'Basic', 'NTLM', ' abc123 ', 'YWxpY2U6cHc=', '']) {
      expect(secret(v)).toBe('[redacted]');
      expect(authScheme(v)).toBeUndefined();
    }
    // A first word too long, or not a token, to be a scheme.
    for (const v of [
      'sk_live_SUPERSECRET123 trailing',
      'key:SUPERSECRET more',
      'tok/en== x',
      'a"b c',
      'Bearer\nsecret',
    ]) {
      expect(secret(v)).toBe('[redacted]');
      expect(authScheme(v)).toBeUndefined();
    }
    // Header names in any case, repeated values, Proxy-Authorization, cookies.
    expect(
      redactHeaders({
        AUTHORIZATION: ['sk_live_SUPERSECRET123', 'Basic YWxpY2U6cHc='],
        'Proxy-Authorization': 'rawproxysecret',
        Cookie: 'sid=secret',
        'set-cookie': ['a=b', 'c=d'],
      }),
    ).toEqual([
      ['authorization', '[redacted]'],
      ['authorization', 'Basic [redacted]'],
      ['proxy-authorization', '[redacted]'],
      ['cookie', '[redacted]'],
      ['set-cookie', '[redacted]'],
      ['set-cookie', '[redacted]'],
    ]);
  });

  it('S2: redaction keeps schemes and parameters, drops tokens, Auth-IDs and cookies', () => {
    expect(
      redactHeaders({
        'www-authenticate': [
          'Negotiate oYIBCjCC==, NTLM',
          'Digest realm="r", nonce="abc", qop="auth"',
          'Basic realm=x',
        ],
        'proxy-authorization': 'NTLM TlRMTVNTUAAB',
        'auth-id': 'opaque',
        'set-cookie': 'a=b',
        'x-plain': 'kept',
      }),
    ).toEqual([
      ['www-authenticate', 'Negotiate [redacted], NTLM'],
      ['www-authenticate', 'Digest realm="r", nonce="abc", qop="auth"'],
      ['www-authenticate', 'Basic realm=x'],
      ['proxy-authorization', 'NTLM [redacted]'],
      ['auth-id', '[redacted]'],
      ['set-cookie', '[redacted]'],
      ['x-plain', 'kept'],
    ]);
  });

  it("S2: Digest's rspauth (Authentication-Info, Proxy-Authentication-Info) is redacted, the other parameters kept", () => {
    expect(
      redactHeaders({
        'authentication-info': [
          'rspauth="6629fae49393a05397450978507c4ef1", cnonce="0a4f113b", nc=00000001, qop=auth',
          'nextnonce="n1", RspAuth = 0123abcd',
          'qop=auth,rspauth="a\\"b", nc=00000002',
        ],
        'proxy-authentication-info': 'nextnonce="pn-1", rspauth="feedbeef"',
      }),
    ).toEqual([
      ['authentication-info', 'rspauth=[redacted], cnonce="0a4f113b", nc=00000001, qop=auth'],
      ['authentication-info', 'nextnonce="n1", RspAuth = [redacted]'],
      ['authentication-info', 'qop=auth,rspauth=[redacted], nc=00000002'],
      ['proxy-authentication-info', 'nextnonce="pn-1", rspauth=[redacted]'],
    ]);
  });

  it("S2: a Digest answer's rspauth reaches no multileg:leg subscriber (with the nonce, cnonce and user name, it would let the password be guessed offline)", async () => {
    const digest = await startReferenceServer({ schemes: ['Digest'], mode: 'per-request' });
    digest.digest.options.nextnonce = true;
    const legs: LegEvent[] = [];
    const onLeg = (m: unknown) => legs.push(m as LegEvent);
    subscribe(LEG_CHANNEL, onLeg);
    const agent = new MultilegAgent({
      credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
      trustedOrigins: [digest.origin],
      connect: { ca: digest.ca },
      negotiate: false,
    });
    try {
      for (const path of ['/auth/d1', '/auth/d2']) {
        const res = await fetch(`${digest.origin}${path}`, { dispatcher: agent });
        expect(res.status).toBe(200);
        await res.text();
      }
    } finally {
      unsubscribe(LEG_CHANNEL, onLeg);
      await agent.destroy();
      await digest.close();
    }
    const infos = digest.exchanges.flatMap((e) => [e.responseHeaders['authentication-info'] ?? []].flat());
    expect(infos).toHaveLength(2);
    const published = JSON.stringify(legs);
    for (const info of infos) {
      const rspauth = /rspauth="([0-9a-f]+)"/.exec(String(info))![1]!;
      expect(published).not.toContain(rspauth);
      // What helps to follow the exchange stays: the next nonce.
      expect(published).toContain(/nextnonce="([^"]+)"/.exec(String(info))![1]!);
    }
    expect(published).toContain('rspauth=[redacted]');
  });

  it('T3/S2: a leg whose session offers a client certificate carries its subject in `certificate` (the first leg, before the Transport challenge, none); no key, passphrase or certificate text in any event', async () => {
    const offering = await startReferenceServer({ mode: 'session', clientCertificate: 'offer' });
    const encrypted = createPrivateKey(CLIENT_KEY).export({
      format: 'pem',
      type: 'pkcs8',
      cipher: 'aes-256-cbc',
      passphrase: 'hunter2-passphrase',
    }) as string;
    const legs: LegEvent[] = [];
    const onLeg = (m: unknown) => legs.push(m as LegEvent);
    subscribe(LEG_CHANNEL, onLeg);
    const agent = new MultilegAgent({
      clientCertificate: () => ({ cert: CLIENT_CERT, key: encrypted, passphrase: 'hunter2-passphrase' }),
      trustedOrigins: [offering.origin],
      connect: { ca: offering.ca },
    });
    try {
      const res = await fetch(`${offering.origin}/auth/cert`, { dispatcher: agent });
      expect([res.status, ((await res.json()) as { user: string }).user]).toEqual([200, 'cert:alice']);
    } finally {
      unsubscribe(LEG_CHANNEL, onLeg);
      await agent.destroy();
      await offering.close();
    }
    const requests = legs.filter((e): e is LegRequestEvent => e.phase === 'request');
    // Before: no such field, and a trace said the second leg carried no credentials.
    expect(requests.map((e) => [e.sessionId === requests[0]!.sessionId, e.certificate])).toEqual([
      [true, undefined],
      [false, 'CN=alice'],
    ]);
    const text = JSON.stringify(legs);
    for (const secret of [
      'hunter2',
      encrypted.split('\n')[1]!,
      CLIENT_KEY.split('\n')[1]!,
      CLIENT_CERT.split('\n')[1]!,
    ])
      expect(text).not.toContain(secret);
  });

  it('T3/S2: a leg to an http:// origin names no client certificate: only TLS presents one (review r39: the session held it, the event said so)', async () => {
    const server = createServer((_req, res) => res.end('ok'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const legs: LegEvent[] = [];
    const onLeg = (m: unknown) => legs.push(m as LegEvent);
    subscribe(LEG_CHANNEL, onLeg);
    const agent = new MultilegAgent({
      clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY },
      trustedOrigins: [origin],
    });
    try {
      expect((await fetch(`${origin}/x`, { dispatcher: agent })).status).toBe(200);
    } finally {
      unsubscribe(LEG_CHANNEL, onLeg);
      await agent.destroy();
      server.close();
    }
    const requests = legs.filter((e): e is LegRequestEvent => e.phase === 'request' && e.origin === origin);
    expect(requests.map((e) => e.certificate)).toEqual([undefined]);
  });

  it("R4: a 401 to a request sent without the credentials because the origin refused them lately reaches multileg:withheld as refused-lately, with how long; the refused request's own 401 does not", async () => {
    const events: WithheldEvent[] = [];
    const onEvent = (m: unknown) => events.push(m as WithheldEvent);
    subscribe(WITHHELD_CHANNEL, onEvent);
    const agent = new MultilegAgent({
      credentials: { username: 'EXAMPLE\\alice', password: 'wrong' },
      trustedOrigins: [server.origin],
      schemes: ['NTLM'],
      connect: { ca: server.ca },
    });
    try {
      for (const path of ['/auth/kept-1', '/auth/kept-2']) {
        const res = await fetch(`${server.origin}${path}`, { dispatcher: agent });
        expect(res.status, path).toBe(401);
        await res.text();
        // The refusal itself is not a kept-back request: nothing published for the first.
        expect(events.map((e) => e.path)).toEqual(path === '/auth/kept-1' ? [] : ['/auth/kept-2']);
      }
    } finally {
      unsubscribe(WITHHELD_CHANNEL, onEvent);
      await agent.destroy();
    }
    const [event] = events;
    expect(event).toMatchObject({ origin: server.origin, reason: 'refused-lately' });
    expect(event!.schemes).toContain('NTLM');
    expect(event!.heldBackFor).toBeGreaterThan(0);
    expect(event!.heldBackFor).toBeLessThanOrEqual(30_000);
    // It went bare: the server saw no Authorization for it.
    expect(
      server.exchanges.filter((e) => e.path === '/auth/kept-2').map((e) => e.requestHeaders.authorization),
    ).toEqual([undefined]);
  });
});

describe('multileg:leg: legs whose credentials hold no secret (R4)', () => {
  const b64 = (b: Buffer) => b.toString('base64');
  const negotiate = encodeNegotiate(SPNEGO_NTLM_FLAGS);
  /** An AUTHENTICATE's header (type 3): what carries the password's proof. */
  const authenticate = Buffer.concat([NTLMSSP_SIGNATURE, Buffer.from([3, 0, 0, 0]), Buffer.alloc(80, 0x41)]);
  const apReq = Buffer.concat([Buffer.from([0x6e, 0x82, 0x01, 0x00]), Buffer.alloc(256, 0x30)]);
  const rawKerberos = tlv(0x60, Buffer.concat([encodeOid(OID_KRB5), Buffer.from([1, 0]), apReq]));

  /** The request events of what `run` does. */
  async function requestEvents(run: () => Promise<unknown>): Promise<LegRequestEvent[]> {
    const legs: LegEvent[] = [];
    const onLeg = (m: unknown) => legs.push(m as LegEvent);
    subscribe(LEG_CHANNEL, onLeg);
    try {
      await run();
    } finally {
      unsubscribe(LEG_CHANNEL, onLeg);
    }
    return legs.filter((e): e is LegRequestEvent => e.phase === 'request');
  }

  it('R4: carriesNoSecret is true for an NTLM NEGOTIATE only (NTLM, or raw in Negotiate), never for an AUTHENTICATE, a Kerberos AP-REQ or a password scheme', () => {
    for (const value of [`NTLM ${b64(negotiate)}`, `negotiate ${b64(negotiate)}`, `  NTLM\t${b64(negotiate)} `])
      expect(carriesNoSecret(value), value).toBe(true);
    for (const value of [
      `NTLM ${b64(authenticate)}`,
      `Negotiate ${b64(authenticate)}`,
      `Negotiate ${b64(encodeNegTokenInit([OID_NTLMSSP], authenticate))}`,
      // A ticket is a credential (SECURITY.md), raw or as SPNEGO's optimistic token.
      `Negotiate ${b64(rawKerberos)}`,
      `Negotiate ${b64(encodeNegTokenInit([OID_KRB5, OID_NTLMSSP], apReq))}`,
      // A NEGOTIATE wrapped in SPNEGO is not decoded here: counted, the safe side.
      `Negotiate ${b64(encodeNegTokenInit([OID_NTLMSSP], negotiate))}`,
      `Negotiate ${b64(encodeNegTokenInit([OID_KRB5, OID_NTLMSSP], negotiate))}`,
      // The NEGOTIATE under another scheme, or with more after it.
      `Bearer ${b64(negotiate)}`,
      `NTLM ${b64(negotiate)} extra`,
      `Basic ${b64(Buffer.from('alice:alicepw'))}`,
      'Digest username="alice", response="0123456789abcdef"',
      b64(negotiate),
      'NTLM',
      '',
    ])
      expect(carriesNoSecret(value), value).toBe(false);
  });

  it('R4: a leg is secretless only when every Authorization and Proxy-Authorization on it is an NTLM NEGOTIATE', async () => {
    const NEG = `NTLM ${b64(negotiate)}`;
    const events = await requestEvents(async () => {
      const legs: HeaderMap[] = [
        { authorization: NEG },
        { 'proxy-authorization': NEG },
        { Authorization: [NEG, NEG] },
        {},
        { 'proxy-authorization': NEG, authorization: 'Basic YWxpY2U6YWxpY2Vwdw==' },
        { authorization: NEG, 'proxy-authorization': `Negotiate ${b64(rawKerberos)}` },
      ];
      for (const headers of legs)
        publishLeg(
          { target: 'origin', origin: 'https://x', sessionId: 's', protocol: () => undefined },
          { method: 'GET', path: '/', headers },
        );
    });
    expect(events.map((e) => e.secretless)).toEqual([true, true, true, false, false, false]);
  });

  it("R4: the agent's legs say secretless on the NEGOTIATE leg only: NTLM inside Negotiate after the 401, NTLM's opening on the first request; never on the bare leg or the AUTHENTICATE", async () => {
    const agentFor = (origin: ReferenceServer, schemes?: ['NTLM']) =>
      new MultilegAgent({
        credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
        trustedOrigins: [origin.origin],
        connect: { ca: origin.ca },
        ...(schemes ? { schemes, negotiate: false } : {}),
      });
    const get = async (agent: MultilegAgent, url: string) => {
      try {
        const res = await fetch(url, { dispatcher: agent });
        await res.text();
        expect(res.status).toBe(200);
      } finally {
        await agent.destroy();
      }
    };
    const server = await startReferenceServer({ mode: 'session' });
    const ntlmOnly = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    try {
      const inNegotiate = await requestEvents(() => get(agentFor(server), `${server.origin}/auth/secretless`));
      expect(inNegotiate.map((e) => [e.scheme, e.secretless])).toEqual([
        [undefined, false],
        ['Negotiate', true],
        ['Negotiate', false],
      ]);
      const opening = await requestEvents(() => get(agentFor(ntlmOnly, ['NTLM']), `${ntlmOnly.origin}/auth/opening`));
      expect(opening.map((e) => [e.scheme, e.secretless])).toEqual([
        ['NTLM', true],
        ['NTLM', false],
      ]);
    } finally {
      await server.close();
      await ntlmOnly.close();
    }
  });
});

describe('sessions(): what each session holds', () => {
  it('held counts the requests a session holds until their responses end; peakHeld keeps the most at once', async () => {
    const HELD = 10;
    // Answers /first at once (the session's probe), and holds the rest until HELD of them are in.
    const gate: Array<() => void> = [];
    let atGate: ReturnType<MultilegAgent['sessions']> = [];
    const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY }, (req, res) => {
      const answer = () => res.end('ok');
      if (req.url === '/first') return answer();
      gate.push(answer);
      if (gate.length === HELD) {
        atGate = agent.sessions();
        for (const release of gate.splice(0)) release();
      }
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const origin = `https://localhost:${(server.address() as AddressInfo).port}`;
    const agent = new MultilegAgent({ connect: { ca: CA_CERT } });
    try {
      expect(await (await fetch(`${origin}/first`, { dispatcher: agent })).text()).toBe('ok');
      const bodies = await Promise.all(
        Array.from({ length: HELD }, async (_, i) => (await fetch(`${origin}/${i}`, { dispatcher: agent })).text()),
      );
      expect(bodies).toEqual(Array(HELD).fill('ok'));
      const [first] = atGate;
      expect(atGate).toEqual([{ origin, sessionId: first!.sessionId, protocol: 'h2', held: HELD, peakHeld: HELD }]);
      // A response ends before its body is read to the end: its release is done by the next turn.
      await new Promise((resolve) => setImmediate(resolve));
      expect(agent.sessions()).toEqual([{ ...first, held: 0 }]);
    } finally {
      await agent.destroy();
      server.close();
    }
  });
});

describe('S2: what util.inspect and JSON.stringify show of the agent, its mechanisms and its errors (task id)', () => {
  // A service logs what it holds (`console.log(agent)`, a logger that serialises an error with its
  // causes): the password must be in none of it.
  const PASSWORD = 'inspect-me-not-pw';
  const PROXY_PASSWORD = 'inspect-me-not-proxypw';
  const shown = (value: unknown): string => {
    let json = '';
    try {
      json = JSON.stringify(value) ?? '';
    } catch {
      // (a cycle: inspect below still shows everything)
    }
    return `${inspect(value, { depth: 50, showHidden: true, getters: true })}\n${json}`;
  };
  const secrets = (text: string): string[] =>
    [PASSWORD, PROXY_PASSWORD, Buffer.from(`alice:${PASSWORD}`).toString('base64')].filter((s) => text.includes(s));

  it('S2: an agent made with a password, a proxy URL with user:password and proxy.credentials shows none of them; nor do basicMechanism, digestMechanism and ntlmMechanism', async () => {
    const credentials = { username: 'EXAMPLE\\alice', password: PASSWORD };
    const agent = new MultilegAgent({
      credentials,
      trustedOrigins: ['https://intranet.example.com'],
      proxy: {
        uri: `http://pu:${PROXY_PASSWORD}@127.0.0.1:9`,
        credentials: { username: 'pu', password: PROXY_PASSWORD },
      },
    });
    try {
      expect(secrets(shown(agent))).toEqual([]);
      for (const mechanism of [basicMechanism(credentials), digestMechanism(credentials), ntlmMechanism(credentials)])
        expect(secrets(shown(mechanism))).toEqual([]);
    } finally {
      await agent.destroy();
    }
  });

  it("S2: a refused Basic password's 401 (the Response fetch delivers) and an unreachable proxy's error (with its causes) show no password", async () => {
    const server = createServer((_req, res) => {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' }).end();
    });
    server.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const direct = new MultilegAgent({
      credentials: { username: 'alice', password: PASSWORD },
      trustedOrigins: [origin],
      allowBasicOverHttp: true,
    });
    const proxied = new MultilegAgent({
      credentials: { username: 'alice', password: PASSWORD },
      trustedOrigins: ['https://intranet.example.com'],
      proxy: `http://pu:${PROXY_PASSWORD}@127.0.0.1:9`,
    });
    try {
      // The refusal is the server's 401 (delivered), the proxy's an error: both, and fetch's wrapping.
      const refused = await fetch(`${origin}/x`, { dispatcher: direct });
      expect(refused.status).toBe(401);
      expect(secrets(shown(refused))).toEqual([]);
      const failed = await fetch('https://intranet.example.com/', { dispatcher: proxied }).catch((e: unknown) => e);
      expect(failed).toBeInstanceOf(Error);
      expect(((failed as Error).cause as { code?: string }).code).toBe('MULTILEG_PROXY_UNREACHABLE');
      expect(secrets(shown(failed))).toEqual([]);
      expect(secrets(String((failed as Error).cause))).toEqual([]);
    } finally {
      await direct.destroy();
      await proxied.destroy();
      server.close();
    }
  });
});
