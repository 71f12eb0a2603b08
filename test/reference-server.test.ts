import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import http2, { type ClientHttp2Session } from 'node:http2';
import https from 'node:https';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Challenge } from '../src/challenge/types.ts';
import { ntlmMechanism } from '../src/mechanisms/ntlm/index.ts';
import type { Credentials, LegInfo } from '../src/mechanisms/types.ts';
import {
  type AcceptorLike,
  type AcceptorStep,
  type ReferenceResponseBody,
  type ReferenceServer,
  type ReferenceServerOptions,
  serverEndPointHash,
  startReferenceServer,
} from '../src/reference-server/index.ts';

const ALICE: Credentials = { username: 'EXAMPLE\\alice', password: 'alicepw' };

interface Resp {
  status: number | undefined;
  headers: Record<string, string | string[] | undefined>;
  json: ReferenceResponseBody | undefined;
  /** RST_STREAM code, when the stream was reset instead of answered. */
  rstCode?: number;
}

interface Req {
  method?: string;
  path: string;
  headers?: Record<string, string>;
  body?: Buffer | string;
  authority?: string;
}

function parseJson(text: string): ReferenceResponseBody | undefined {
  try {
    return JSON.parse(text) as ReferenceResponseBody;
  } catch {
    return undefined;
  }
}

/** One request on an h2 session; resolves with the response, or with the RST code if reset. */
function h2Request(session: ClientHttp2Session, req: Req): Promise<Resp> {
  return new Promise((resolve) => {
    const stream = session.request({
      ':method': req.method ?? 'GET',
      ':path': req.path,
      ...(req.authority ? { ':authority': req.authority } : {}),
      ...req.headers,
    });
    let status: number | undefined;
    let headers: Resp['headers'] = {};
    const chunks: Buffer[] = [];
    stream.on('response', (h) => {
      status = Number(h[':status']);
      headers = h as Resp['headers'];
    });
    stream.on('data', (c: Buffer) => chunks.push(c));
    // A reset stream emits 'error' before 'close'; the code is what the test looks at.
    stream.on('error', () => {});
    stream.on('close', () => {
      const text = Buffer.concat(chunks).toString();
      resolve({
        status,
        headers,
        json: parseJson(text),
        ...(status === undefined ? { rstCode: stream.rstCode } : {}),
      });
    });
    stream.end(req.body);
  });
}

/** One HTTP/1.1 request through a keep-alive agent with one socket (so legs share the connection). */
function h1Request(agent: https.Agent, origin: string, req: Req): Promise<Resp> {
  return new Promise((resolve, reject) => {
    const r = https.request(
      new URL(req.path, origin),
      { method: req.method ?? 'GET', agent, headers: req.headers ?? {} },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode, headers: res.headers, json: parseJson(Buffer.concat(chunks).toString()) }),
        );
      },
    );
    r.on('error', reject);
    r.end(req.body);
  });
}

function h1Agent(ca: string): https.Agent {
  return new https.Agent({ keepAlive: true, maxSockets: 1, ca, ALPNProtocols: ['http/1.1'] });
}

/**
 * Challenge values of a header. Node's h2 client joins repeated fields with ', ' (the server sends
 * them as separate fields: see the record); tokens are base64, so splitting on commas is safe.
 */
function values(h: string | string[] | undefined): string[] {
  if (h === undefined) return [];
  return (Array.isArray(h) ? h : [h]).flatMap((v) => v.split(/,\s*/));
}

/** The challenge for `scheme` from a response's WWW-Authenticate headers, as the client mechanism wants it. */
function challengeFrom(resp: Resp, scheme: string): Challenge | undefined {
  for (const v of values(resp.headers['www-authenticate'])) {
    const [s, token68] = v.split(' ');
    if (s?.toLowerCase() === scheme.toLowerCase()) {
      return { scheme, schemeKey: scheme.toLowerCase(), ...(token68 ? { token68 } : {}), params: {} };
    }
  }
  return undefined;
}

function legInfo(server: ReferenceServer, method: string, path: string, channelBinding?: Buffer): LegInfo {
  return {
    origin: server.origin,
    hostname: 'localhost',
    port: server.port,
    method,
    path,
    proxy: false,
    ...(channelBinding ? { channelBinding } : {}),
  };
}

/** A client-side NTLM context that produces the header values of each leg. */
function ntlmClient(
  server: ReferenceServer,
  opts: { scheme?: 'NTLM' | 'Negotiate'; creds?: Credentials; method?: string; path?: string; cb?: Buffer } = {},
) {
  const scheme = opts.scheme ?? 'NTLM';
  const leg = legInfo(server, opts.method ?? 'GET', opts.path ?? '/private', opts.cb);
  const ctx = ntlmMechanism(opts.creds ?? ALICE, { scheme }).createContext(leg);
  return {
    type1: () => ctx.step(undefined, leg),
    type3: (resp: Resp) => ctx.step(challengeFrom(resp, scheme), leg),
  };
}

describe('reference server', () => {
  let server: ReferenceServer;
  const sessions: ClientHttp2Session[] = [];
  const agents: https.Agent[] = [];

  async function connect(authority?: string): Promise<ClientHttp2Session> {
    const s = http2.connect(server.origin, { ca: server.ca, ...(authority ? {} : {}) });
    s.on('error', () => {});
    sessions.push(s);
    await once(s, 'connect');
    return s;
  }
  function agent(): https.Agent {
    const a = h1Agent(server.ca);
    agents.push(a);
    return a;
  }
  let customised = false;
  /** Replaces the shared server by one with other start options, for one test. */
  async function restart(opts: ReferenceServerOptions = {}): Promise<void> {
    await server.close();
    server = await startReferenceServer(opts);
    customised = true;
  }

  beforeAll(async () => {
    server = await startReferenceServer();
  });
  afterEach(async () => {
    for (const s of sessions.splice(0)) s.destroy();
    for (const a of agents.splice(0)) a.destroy();
    if (customised) {
      customised = false;
      await server.close();
      server = await startReferenceServer();
      return;
    }
    server.setMode('session');
    server.setFaults({});
    server.reset();
  });
  afterAll(async () => {
    await server.close();
  });

  it('Ref: a bare 401 lists every offered scheme and reads the body', async () => {
    const s = await connect();
    const r = await h2Request(s, { method: 'POST', path: '/private', body: 'hello' });
    expect(r.status).toBe(401);
    expect(values(r.headers['www-authenticate'])).toEqual(['Negotiate', 'NTLM']);
    expect(r.headers['auth-id']).toBeUndefined();
    expect(r.json?.bodyLength).toBe(5);
    expect(server.exchanges).toHaveLength(1);
    expect(server.exchanges[0]).toMatchObject({ outcome: 'unauthenticated', status: 401, protocol: 'h2', streamId: 1 });
    // Sent as two header fields, not one comma-joined value.
    expect(server.exchanges[0]?.responseHeaders['www-authenticate']).toEqual(['Negotiate', 'NTLM']);
  });

  it('Ref: /public/ needs no authentication', async () => {
    const s = await connect();
    const r = await h2Request(s, { path: '/public/x' });
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ user: null, path: '/public/x', protocol: 'h2' });
    expect(server.exchanges[0]?.outcome).toBe('anonymous');
  });

  it('Ref: 3-leg NTLM handshake in session mode: Auth-ID on the 401, Persistent-Auth on the 200, session authenticated', async () => {
    const s = await connect();
    const c = ntlmClient(server);
    const r0 = await h2Request(s, { path: '/private' });
    expect(r0.status).toBe(401);

    const r1 = await h2Request(s, { path: '/private', headers: { authorization: await c.type1() } });
    expect(r1.status).toBe(401);
    const authId = r1.headers['auth-id'];
    expect(typeof authId).toBe('string');
    expect(challengeFrom(r1, 'NTLM')?.token68).toBeTruthy();
    expect(r1.headers['persistent-auth']).toBeUndefined();

    const r2 = await h2Request(s, {
      path: '/private',
      headers: { authorization: await c.type3(r1), 'auth-id': String(authId) },
    });
    expect(r2.status).toBe(200);
    expect(r2.headers['persistent-auth']).toBe('true');
    expect(r2.json).toMatchObject({ user: 'EXAMPLE\\alice', protocol: 'h2', path: '/private' });
    expect(r2.headers['auth-id']).toBeUndefined();

    // The session is authenticated: no Authorization needed any more.
    const r3 = await h2Request(s, { path: '/other' });
    expect(r3.status).toBe(200);
    expect(r3.json?.user).toBe('EXAMPLE\\alice');

    const sid = r3.json?.sessionId ?? '';
    expect(server.exchangesFor(sid).map((e) => e.outcome)).toEqual([
      'unauthenticated',
      'challenge',
      'accepted',
      'session',
    ]);
    expect(server.sessions().find((x) => x.id === sid)).toMatchObject({
      user: 'EXAMPLE\\alice',
      incompleteContexts: 0,
    });
  });

  it('Ref: the Auth-ID mapping is destroyed at the end of the handshake; reusing it counts as none', async () => {
    const s = await connect();
    const c = ntlmClient(server);
    const r1 = await h2Request(s, { path: '/p', headers: { authorization: await c.type1() } });
    const authId = String(r1.headers['auth-id']);
    const type3 = await c.type3(r1);
    const ok = await h2Request(s, { path: '/p', headers: { authorization: type3, 'auth-id': authId } });
    expect(ok.status).toBe(200);

    // Replaying the last leg with the spent Auth-ID, on a fresh session: no context → bare 401.
    const s2 = await connect();
    const replay = await h2Request(s2, { path: '/p', headers: { authorization: type3, 'auth-id': authId } });
    expect(replay.status).toBe(401);
    expect(values(replay.headers['www-authenticate'])).toEqual(['Negotiate', 'NTLM']);
    expect(server.exchanges.at(-1)).toMatchObject({
      outcome: 'rejected',
      reason: 'unknown-auth-id',
      authIdReceived: authId,
    });

    // A new type1 with the spent Auth-ID starts a new handshake under a new Auth-ID.
    const c2 = ntlmClient(server);
    const again = await h2Request(s2, { path: '/p', headers: { authorization: await c2.type1(), 'auth-id': authId } });
    expect(again.status).toBe(401);
    expect(again.headers['auth-id']).toBeTruthy();
    expect(again.headers['auth-id']).not.toBe(authId);
  });

  it('Ref: an Auth-ID is scoped to its session', async () => {
    const a = await connect();
    const b = await connect();
    const c = ntlmClient(server);
    const r1 = await h2Request(a, { path: '/p', headers: { authorization: await c.type1() } });
    const r2 = await h2Request(b, {
      path: '/p',
      headers: { authorization: await c.type3(r1), 'auth-id': String(r1.headers['auth-id']) },
    });
    expect(r2.status).toBe(401);
    expect(server.exchanges.at(-1)).toMatchObject({ outcome: 'rejected', reason: 'unknown-auth-id' });
    expect(server.exchanges[0]?.sessionId).not.toBe(server.exchanges[1]?.sessionId);
  });

  it('Ref: Negotiate carrying raw NTLMSSP tokens is served by the same acceptor', async () => {
    const s = await connect();
    const c = ntlmClient(server, { scheme: 'Negotiate' });
    const r1 = await h2Request(s, { path: '/n', headers: { authorization: await c.type1() } });
    expect(r1.status).toBe(401);
    expect(challengeFrom(r1, 'Negotiate')?.token68).toBeTruthy();
    const r2 = await h2Request(s, {
      path: '/n',
      headers: { authorization: await c.type3(r1), 'auth-id': String(r1.headers['auth-id']) },
    });
    expect(r2.status).toBe(200);
    expect(server.exchanges.at(-1)).toMatchObject({ outcome: 'accepted', scheme: 'Negotiate', user: 'EXAMPLE\\alice' });
  });

  async function handshakeH2(
    s: ClientHttp2Session,
    path = '/private',
    opts: { creds?: Credentials; method?: string; body?: Buffer | string; cb?: Buffer } = {},
  ): Promise<{ r1: Resp; r2: Resp }> {
    const method = opts.method ?? 'GET';
    const c = ntlmClient(server, { path, method, ...opts });
    const r1 = await h2Request(s, {
      method,
      path,
      headers: { authorization: await c.type1() },
      ...(opts.body !== undefined ? { body: opts.body } : {}),
    });
    const headers: Record<string, string> = { authorization: await c.type3(r1) };
    if (r1.headers['auth-id'] !== undefined) headers['auth-id'] = String(r1.headers['auth-id']);
    const r2 = await h2Request(s, { method, path, headers, ...(opts.body !== undefined ? { body: opts.body } : {}) });
    return { r1, r2 };
  }

  it('Ref: interleaved handshakes on one h2 session are told apart by their Auth-IDs', async () => {
    server.setMode('per-request');
    const s = await connect();
    const ca = ntlmClient(server);
    const cb = ntlmClient(server, { creds: { username: 'bob', password: 'bobpw', domain: 'EXAMPLE' } });
    const [a1, b1] = await Promise.all([
      h2Request(s, { path: '/a', headers: { authorization: await ca.type1() } }),
      h2Request(s, { path: '/b', headers: { authorization: await cb.type1() } }),
    ]);
    expect(a1.headers['auth-id']).not.toBe(b1.headers['auth-id']);
    expect(server.sessions().find((x) => x.id === a1.json?.sessionId)?.incompleteContexts).toBe(2);
    // Finish them in the opposite order.
    const b2 = await h2Request(s, {
      path: '/b',
      headers: { authorization: await cb.type3(b1), 'auth-id': String(b1.headers['auth-id']) },
    });
    const a2 = await h2Request(s, {
      path: '/a',
      headers: { authorization: await ca.type3(a1), 'auth-id': String(a1.headers['auth-id']) },
    });
    expect(b2.json?.user).toBe('EXAMPLE\\bob');
    expect(a2.json?.user).toBe('EXAMPLE\\alice');
    expect(server.sessions().find((x) => x.id === a1.json?.sessionId)?.incompleteContexts).toBe(0);
  });

  it('Ref: a new successful handshake on an authenticated session replaces its identity', async () => {
    const s = await connect();
    expect((await handshakeH2(s)).r2.json?.user).toBe('EXAMPLE\\alice');
    const bob = await handshakeH2(s, '/private', { creds: { username: 'EXAMPLE\\bob', password: 'bobpw' } });
    expect(bob.r2.json?.user).toBe('EXAMPLE\\bob');
    expect((await h2Request(s, { path: '/private' })).json?.user).toBe('EXAMPLE\\bob');
    // A failed one leaves the session as it was.
    const bad = await handshakeH2(s, '/private', { creds: { username: 'EXAMPLE\\alice', password: 'nope' } });
    expect(bad.r2.status).toBe(401);
    expect((await h2Request(s, { path: '/private' })).json?.user).toBe('EXAMPLE\\bob');
  });

  it('Ref: per-request mode authenticates only the request and sends Persistent-Auth: false', async () => {
    server.setMode('per-request');
    const s = await connect();
    const { r2 } = await handshakeH2(s);
    expect(r2.status).toBe(200);
    expect(r2.headers['persistent-auth']).toBe('false');
    const later = await h2Request(s, { path: '/private' });
    expect(later.status).toBe(401);

    server.options.persistentAuthFalseHeader = false;
    const { r2: again } = await handshakeH2(s);
    expect(again.status).toBe(200);
    expect(again.headers['persistent-auth']).toBeUndefined();
    server.options.persistentAuthFalseHeader = true;
  });

  it('Ref: none mode authenticates the session without Persistent-Auth', async () => {
    server.setMode('none');
    const s = await connect();
    const { r1, r2 } = await handshakeH2(s);
    expect(r1.headers['auth-id']).toBeTruthy();
    expect(r2.status).toBe(200);
    expect(r2.headers['persistent-auth']).toBeUndefined();
    const later = await h2Request(s, { path: '/private' });
    expect(later.status).toBe(200);
    expect(later.json?.user).toBe('EXAMPLE\\alice');
  });

  it('Ref: HTTP/1.1 continues a connection-bound context without Auth-ID, still sends Auth-ID, authenticates the connection', async () => {
    const a = agent();
    const c = ntlmClient(server);
    const r0 = await h1Request(a, server.origin, { path: '/private' });
    expect(r0.status).toBe(401);
    expect(r0.json?.protocol).toBe('http/1.1');
    const r1 = await h1Request(a, server.origin, { path: '/private', headers: { authorization: await c.type1() } });
    expect(r1.status).toBe(401);
    expect(r1.headers['auth-id']).toBeTruthy();
    const r2 = await h1Request(a, server.origin, { path: '/private', headers: { authorization: await c.type3(r1) } });
    expect(r2.status).toBe(200);
    expect(r2.headers['persistent-auth']).toBe('true');
    const r3 = await h1Request(a, server.origin, { path: '/again' });
    expect(r3.status).toBe(200);
    expect(r3.json?.user).toBe('EXAMPLE\\alice');
    const ids = new Set([r0, r1, r2, r3].map((r) => r.json?.sessionId));
    expect(ids.size).toBe(1);
    expect(server.exchanges.map((e) => e.requestIndex)).toEqual([1, 2, 3, 4]);
    expect(server.stats).toMatchObject({ h1Connections: 1, h2Sessions: 0 });
  });

  it('Ref: legacy mode fails multilegged auth on h2 (no Auth-ID, no state across streams) and works on HTTP/1.1', async () => {
    server.setMode('legacy');
    const s = await connect();
    const { r1, r2 } = await handshakeH2(s);
    expect(r1.status).toBe(401);
    expect(r1.headers['auth-id']).toBeUndefined();
    expect(challengeFrom(r1, 'NTLM')?.token68).toBeTruthy();
    expect(r2.status).toBe(401);
    expect(challengeFrom(r2, 'NTLM')?.token68).toBeUndefined();
    expect(server.exchanges.at(-1)).toMatchObject({ outcome: 'rejected', reason: 'no-context' });

    const a = agent();
    const c = ntlmClient(server);
    const h1 = await h1Request(a, server.origin, { path: '/private', headers: { authorization: await c.type1() } });
    expect(h1.status).toBe(401);
    expect(h1.headers['auth-id']).toBeUndefined();
    const h2 = await h1Request(a, server.origin, { path: '/private', headers: { authorization: await c.type3(h1) } });
    expect(h2.status).toBe(200);
    expect(h2.headers['persistent-auth']).toBeUndefined();
    const h3 = await h1Request(a, server.origin, { path: '/private' });
    expect(h3.status).toBe(200);
    expect(h3.json?.user).toBe('EXAMPLE\\alice');
  });

  it('Ref: iis mode resets h2 streams that need auth with HTTP_1_1_REQUIRED (13) and serves HTTP/1.1 like session mode', async () => {
    server.setMode('iis');
    const s = await connect();
    const r = await h2Request(s, { path: '/private' });
    expect(r.status).toBeUndefined();
    expect(r.rstCode).toBe(13);
    expect(server.exchanges.at(-1)).toMatchObject({ outcome: 'rst', status: null, protocol: 'h2' });
    // Public paths and the session itself keep working.
    const pub = await h2Request(s, { path: '/public/ok' });
    expect(pub.status).toBe(200);

    const a = agent();
    const c = ntlmClient(server);
    const h1 = await h1Request(a, server.origin, { path: '/private', headers: { authorization: await c.type1() } });
    expect(h1.status).toBe(401);
    expect(h1.headers['auth-id']).toBeTruthy();
    const h2 = await h1Request(a, server.origin, { path: '/private', headers: { authorization: await c.type3(h1) } });
    expect(h2.status).toBe(200);
    expect(h2.headers['persistent-auth']).toBe('true');
  });

  it('Ref: iis mode with iisVia goaway sends GOAWAY HTTP_1_1_REQUIRED with lastStreamId below the request', async () => {
    server.setMode('iis');
    server.options.iisVia = 'goaway';
    try {
      const s = await connect();
      const pub = await h2Request(s, { path: '/public/first' });
      expect(pub.status).toBe(200);
      const goaway = once(s, 'goaway') as Promise<[number, number]>;
      const r = await h2Request(s, { path: '/private' });
      const [code, lastStreamId] = await goaway;
      expect(code).toBe(13);
      expect(lastStreamId).toBe(1);
      expect(r.status).toBeUndefined();
      expect(server.exchanges.at(-1)).toMatchObject({ outcome: 'goaway', streamId: 3, status: null });
    } finally {
      server.options.iisVia = 'rst';
    }
  });

  it('Ref: the number of incomplete contexts per session is limited', async () => {
    await restart({ maxIncompleteContexts: 2 });
    const s = await connect();
    const clients = [ntlmClient(server), ntlmClient(server), ntlmClient(server)];
    const legs: Resp[] = [];
    for (const c of clients) legs.push(await h2Request(s, { path: '/p', headers: { authorization: await c.type1() } }));
    expect(legs.map((r) => r.status)).toEqual([401, 401, 401]);
    expect(legs[0]?.headers['auth-id']).toBeTruthy();
    expect(legs[1]?.headers['auth-id']).toBeTruthy();
    expect(legs[2]?.headers['auth-id']).toBeUndefined();
    expect(values(legs[2]?.headers['www-authenticate'])).toEqual(['Negotiate', 'NTLM']);
    expect(server.exchanges.at(-1)).toMatchObject({ outcome: 'refused', refused: 'context-limit' });

    // Completing one frees a slot.
    const first = legs[0] as Resp;
    const done = await h2Request(s, {
      path: '/p',
      headers: { authorization: await clients[0]!.type3(first), 'auth-id': String(first.headers['auth-id']) },
    });
    expect(done.status).toBe(200);
    const c4 = ntlmClient(server);
    const fourth = await h2Request(s, { path: '/p', headers: { authorization: await c4.type1() } });
    expect(fourth.headers['auth-id']).toBeTruthy();
    // Another session has its own budget.
    expect(server.sessions().find((x) => x.id === fourth.json?.sessionId)?.incompleteContexts).toBe(2);
  });

  it('Ref: a wrong password gets a bare 401 and destroys the context', async () => {
    const s = await connect();
    const c = ntlmClient(server, { creds: { username: 'EXAMPLE\\alice', password: 'wrong' } });
    const r1 = await h2Request(s, { path: '/p', headers: { authorization: await c.type1() } });
    const authId = String(r1.headers['auth-id']);
    const type3 = await c.type3(r1);
    const r2 = await h2Request(s, { path: '/p', headers: { authorization: type3, 'auth-id': authId } });
    expect(r2.status).toBe(401);
    expect(values(r2.headers['www-authenticate'])).toEqual(['Negotiate', 'NTLM']);
    expect(server.exchanges.at(-1)).toMatchObject({ outcome: 'rejected', authIdReceived: authId });
    expect(server.exchanges.at(-1)?.reason).toMatch(/password/);
    const r3 = await h2Request(s, { path: '/p', headers: { authorization: type3, 'auth-id': authId } });
    expect(r3.status).toBe(401);
    expect(server.exchanges.at(-1)?.reason).toBe('unknown-auth-id');
    // The session did not become authenticated.
    expect((await h2Request(s, { path: '/p' })).status).toBe(401);
  });

  it('Ref: malformed Authorization headers are rejected with a bare 401, never a crash', async () => {
    const s = await connect();
    for (const authorization of ['NTLM', 'NTLM !!!notbase64', 'NTLM TlRMTVNTUAADAAAA', 'Bogus abcd', '', 'NTLM AAAA']) {
      const r = await h2Request(s, { path: '/p', headers: { authorization } });
      expect(r.status).toBe(401);
    }
    expect(server.exchanges.every((e) => e.outcome === 'rejected' || e.outcome === 'unauthenticated')).toBe(true);
    expect(server.exchanges.map((e) => e.reason)).toContain('malformed');
    expect(server.exchanges.map((e) => e.reason)).toContain('unsupported-scheme');
    const pub = await h2Request(s, { path: '/public/alive' });
    expect(pub.status).toBe(200);
  });

  it('Ref: the body is read and hashed on every leg, so a replayed body can be proven byte for byte', async () => {
    const body = Buffer.from('{"payload":"' + 'x'.repeat(100_000) + '"}');
    const sha = createHash('sha256').update(body).digest('hex');
    const s = await connect();
    const r0 = await h2Request(s, { method: 'POST', path: '/upload', body });
    expect(r0.json).toMatchObject({ bodyLength: body.length, bodySha256: sha });
    const { r1, r2 } = await handshakeH2(s, '/upload', { method: 'POST', body });
    expect(r1.json?.bodySha256).toBe(sha);
    expect(r2.status).toBe(200);
    expect(r2.json).toMatchObject({ method: 'POST', bodyLength: body.length, bodySha256: sha });
    const legs = server.handshakeLegs();
    expect(legs).toHaveLength(3);
    expect(legs.every((e) => e.bodySha256 === sha && e.method === 'POST' && e.path === '/upload')).toBe(true);

    // Also over HTTP/1.1, where an unread 401 body would otherwise wedge the connection.
    const a = agent();
    const h = await h1Request(a, server.origin, { method: 'PUT', path: '/up', body });
    expect(h.json).toMatchObject({ bodyLength: body.length, bodySha256: sha });
  });

  it('Ref: the record holds headers, Auth-IDs sent and received, outcomes and users', async () => {
    const seen: string[] = [];
    server.on('exchange', (e) => seen.push(e.outcome));
    const s = await connect();
    await h2Request(s, { path: '/r' });
    const { r1 } = await handshakeH2(s, '/r');
    const authId = String(r1.headers['auth-id']);
    const [e0, e1, e2] = server.exchanges;
    expect(e0).toMatchObject({
      seq: 1,
      status: 401,
      outcome: 'unauthenticated',
      authority: `localhost:${server.port}`,
    });
    expect(e1).toMatchObject({ seq: 2, status: 401, outcome: 'challenge', authIdSent: authId, scheme: 'NTLM' });
    expect(e1?.requestHeaders.authorization).toMatch(/^NTLM /);
    expect(e1?.responseHeaders['auth-id']).toBe(authId);
    expect(e2).toMatchObject({
      seq: 3,
      status: 200,
      outcome: 'accepted',
      authIdReceived: authId,
      user: 'EXAMPLE\\alice',
    });
    expect(e2?.requestHeaders['auth-id']).toBe(authId);
    expect(e2?.responseHeaders['persistent-auth']).toBe('true');
    expect(e2?.authIdSent).toBeUndefined();
    expect([e0?.streamId, e1?.streamId, e2?.streamId]).toEqual([1, 3, 5]);
    expect(seen).toEqual(['unauthenticated', 'challenge', 'accepted']);
    expect(server.handshakeLegs(e0?.sessionId)).toHaveLength(3);
    server.removeAllListeners('exchange');
  });

  it('Ref: channel binding, when required, accepts the right tls-server-end-point hash and rejects its absence', async () => {
    await restart({ requireChannelBinding: true });
    const s = await connect();
    const good = await handshakeH2(s, '/cb', { cb: serverEndPointHash() });
    expect(good.r2.status).toBe(200);
    const s2 = await connect();
    const bad = await handshakeH2(s2, '/cb');
    expect(bad.r2.status).toBe(401);
    expect(server.exchanges.at(-1)?.reason).toMatch(/channel binding/);
  });

  it('Ref: fault goawayAfterChallenge ends the session right after the Auth-ID leg', async () => {
    server.setFaults({ goawayAfterChallenge: true });
    const s = await connect();
    const goaway = once(s, 'goaway') as Promise<[number, number]>;
    const c = ntlmClient(server);
    const r1 = await h2Request(s, { path: '/p', headers: { authorization: await c.type1() } });
    expect(r1.status).toBe(401);
    expect(r1.headers['auth-id']).toBeTruthy();
    const serverClosed = once(server, 'sessionClosed');
    const [code] = await goaway;
    expect(code).toBe(0);
    await serverClosed;
    // The context died with the session: a fresh session does not know the Auth-ID.
    const s2 = await connect();
    const r2 = await h2Request(s2, {
      path: '/p',
      headers: { authorization: await c.type3(r1), 'auth-id': String(r1.headers['auth-id']) },
    });
    expect(r2.status).toBe(401);
    expect(server.sessions().find((x) => x.id === r1.json?.sessionId)?.open).toBe(false);
  });

  it('Ref: fault misdirectedForOtherHosts answers 421 for another authority', async () => {
    server.setFaults({ misdirectedForOtherHosts: true });
    const s = await connect();
    const other = await h2Request(s, { path: '/public/x', authority: `127.0.0.1:${server.port}` });
    expect(other.status).toBe(421);
    const own = await h2Request(s, { path: '/public/x' });
    expect(own.status).toBe(200);
    expect(server.exchanges[0]).toMatchObject({ outcome: 'misdirected', authority: `127.0.0.1:${server.port}` });
  });

  it('Ref: fault destroySessionAfterAuth closes the session after the final 200', async () => {
    server.setFaults({ destroySessionAfterAuth: true });
    const s = await connect();
    const closed = once(s, 'close');
    const { r2 } = await handshakeH2(s);
    expect(r2.status).toBe(200);
    await closed;
    const a = agent();
    const c = ntlmClient(server);
    const h1 = await h1Request(a, server.origin, { path: '/p', headers: { authorization: await c.type1() } });
    const h2 = await h1Request(a, server.origin, { path: '/p', headers: { authorization: await c.type3(h1) } });
    expect(h2.status).toBe(200);
    expect(h2.headers.connection).toBe('close');
  });

  it('Ref: fault delayMs holds responses; the request event tells when a request arrived', async () => {
    server.setFaults({ delayMs: 200 });
    const s = await connect();
    const arrived = once(server, 'request');
    const pending = h2Request(s, { path: '/public/slow' });
    const [info] = (await arrived) as [{ path: string; protocol: string }];
    expect(info).toMatchObject({ path: '/public/slow', protocol: 'h2' });
    expect(server.exchanges).toHaveLength(0);
    expect((await pending).status).toBe(200);
    expect(server.exchanges).toHaveLength(1);
  });

  it('Ref: delayMs as a function holds only the requests it picks', async () => {
    server.setFaults({ delayMs: (r) => (r.headers.authorization ? 100 : 0) });
    const s = await connect();
    const c = ntlmClient(server);
    const leg = h2Request(s, { path: '/p', headers: { authorization: await c.type1() } });
    await once(server, 'request');
    // The unauthenticated request overtakes the held leg.
    const quick = await h2Request(s, { path: '/public/quick' });
    expect(quick.status).toBe(200);
    expect((await leg).status).toBe(401);
    expect(server.exchanges.map((e) => e.outcome)).toEqual(['anonymous', 'challenge']);
  });

  it('Ref: forgetAuthentication and endSessions drive re-authentication and session loss', async () => {
    const s = await connect();
    const { r2 } = await handshakeH2(s);
    const sid = r2.json?.sessionId ?? '';
    server.forgetAuthentication(sid);
    expect((await h2Request(s, { path: '/private' })).status).toBe(401);

    const closed = once(server, 'sessionClosed');
    server.endSessions({ sessionId: sid });
    const [info] = await closed;
    expect(info).toMatchObject({ id: sid, open: false });
    expect(server.sessions().find((x) => x.id === sid)?.open).toBe(false);

    // Abruptly: the client sees its session die.
    const s2 = await connect();
    await h2Request(s2, { path: '/public/x' });
    const clientClosed = once(s2, 'close');
    server.endSessions({ abrupt: true });
    await clientClosed;

    // Gracefully on a busy HTTP/1.1 connection: the response in flight carries Connection: close.
    server.setFaults({ delayMs: (r) => (r.path === '/public/held?' ? 50 : 0) });
    const a = agent();
    const held = h1Request(a, server.origin, { path: '/public/held?' });
    await once(server, 'request');
    server.endSessions();
    const r = await held;
    expect(r.status).toBe(200);
    expect(r.headers.connection).toBe('close');
  });

  it('Ref: Persistent-Auth spelling and value are configurable; record can be switched off', async () => {
    server.options.persistentAuthHeaderName = 'Persisted-auth';
    server.options.persistentAuthValue = '';
    server.options.record = false;
    const seen: string[] = [];
    const listener = (e: { outcome: string }) => seen.push(e.outcome);
    server.on('exchange', listener);
    try {
      const a = agent();
      const c = ntlmClient(server);
      const r1 = await h1Request(a, server.origin, { path: '/p', headers: { authorization: await c.type1() } });
      const r2 = await h1Request(a, server.origin, { path: '/p', headers: { authorization: await c.type3(r1) } });
      expect(r2.status).toBe(200);
      expect(r2.headers['persisted-auth']).toBe('');
      expect(r2.headers['persistent-auth']).toBeUndefined();
      expect(server.exchanges).toHaveLength(0);
      expect(seen).toEqual(['challenge', 'accepted']);
    } finally {
      server.off('exchange', listener);
      server.options.persistentAuthHeaderName = 'Persistent-Auth';
      server.options.persistentAuthValue = 'true';
      server.options.record = true;
    }
  });

  it('Ref: maxConcurrentStreams fault reaches live sessions', async () => {
    const s = await connect();
    const limited = new Promise<number | undefined>((resolve) => {
      s.on('remoteSettings', (settings) => {
        if (settings.maxConcurrentStreams === 1) resolve(settings.maxConcurrentStreams);
      });
    });
    server.setFaults({ maxConcurrentStreams: 1 });
    expect(await limited).toBe(1);
    expect(s.remoteSettings.maxConcurrentStreams).toBe(1);
  });

  it('Ref: a custom acceptor factory drives handshakes of any length', async () => {
    // A 4-leg toy mechanism: "hello" → challenge c1, "r1" → challenge c2, "r2" → accepted.
    class Toy implements AcceptorLike {
      n = 0;
      step(token: Buffer): AcceptorStep {
        const t = token.toString();
        this.n++;
        if (this.n === 1 && t === 'hello') return { kind: 'challenge', token: Buffer.from('c1') };
        if (this.n === 2 && t === 'r1') return { kind: 'challenge', token: Buffer.from('c2') };
        if (this.n === 3 && t === 'r2') return { kind: 'accepted', user: 'EXAMPLE\\toy' };
        return { kind: 'rejected', reason: 'toy says no' };
      }
    }
    await restart({ acceptorFactory: () => new Toy(), schemes: ['Toy'] });
    const s = await connect();
    const b64 = (x: string) => Buffer.from(x).toString('base64');
    const r1 = await h2Request(s, { path: '/t', headers: { authorization: `Toy ${b64('hello')}` } });
    const id = String(r1.headers['auth-id']);
    expect(r1.headers['www-authenticate']).toBe(`Toy ${b64('c1')}`);
    const r2 = await h2Request(s, { path: '/t', headers: { authorization: `Toy ${b64('r1')}`, 'auth-id': id } });
    expect(r2.status).toBe(401);
    expect(r2.headers['auth-id']).toBe(id);
    const r3 = await h2Request(s, { path: '/t', headers: { authorization: `Toy ${b64('r2')}`, 'auth-id': id } });
    expect(r3.status).toBe(200);
    expect(r3.json?.user).toBe('EXAMPLE\\toy');
    expect(server.stats).toMatchObject({ contextsCreated: 1, h2Sessions: 1 });
  });

  it('Ref: close() resolves with open sessions, HTTP/1.1 connections and held responses', async () => {
    const local = await startReferenceServer({ faults: { delayMs: 30_000 } });
    const s = http2.connect(local.origin, { ca: local.ca });
    s.on('error', () => {});
    await once(s, 'connect');
    const arrived = once(local, 'request');
    const held = h2Request(s, { path: '/public/held' });
    await arrived;
    const a = h1Agent(local.ca);
    const h1 = h1Request(a, local.origin, { path: '/public/held' }).catch(() => undefined);
    await once(local, 'request');
    await local.close();
    const r = await held;
    expect(r.status).toBeUndefined();
    await h1;
    a.destroy();
    s.destroy();
  });

  it('Ref: runs standalone and prints its origin', async () => {
    const main = fileURLToPath(new URL('../src/reference-server/main.ts', import.meta.url));
    const child = spawn(process.execPath, [main, '--mode', 'per-request', '--port', '0'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      const [chunk] = (await once(child.stdout, 'data')) as [Buffer];
      const origin = chunk.toString().trim();
      expect(origin).toMatch(/^https:\/\/localhost:\d+$/);
      const s = http2.connect(origin, { ca: server.ca });
      s.on('error', () => {});
      sessions.push(s);
      await once(s, 'connect');
      const r = await h2Request(s, { path: '/private' });
      expect(r.status).toBe(401);
    } finally {
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const [code] = await exited;
      expect(code).toBe(0);
    }
  });
});
