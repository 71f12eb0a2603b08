/**
 * H3/H4 (and H5 without real peers) against the reference server's proxy mode: a forward proxy that
 * binds each client connection to its own upstream connection and can say
 * `Proxy-support: Session-Based-Authentication` and `Remote-http-version`.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { connect as h2Connect } from 'node:http2';
import { fetch, interceptors, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { QueueTimeoutError } from '../src/errors.ts';
import type { LegResult, ResponseHeaders } from '../src/handshake/leg.ts';
import {
  basicMechanism,
  HANDSHAKE_CHANNEL,
  type HandshakeReport,
  LEG_CHANNEL,
  type LegEvent,
  type Mechanism,
  MultilegAgent,
  type MultilegAgentOptions,
  ntlmMechanism,
  PROXY_UNANSWERED_CHANNEL,
  type ProxyUnansweredEvent,
} from '../src/index.ts';
import { DEFAULT_LIMITS } from '../src/options.ts';
import { ProxyAuthenticationError, ProxyAuthorizationHeaderError, ProxyTimeoutError } from '../src/proxy/errors.ts';
import { ForwardProxy, type SendOnProxy } from '../src/proxy/forward.ts';
import { ProxyResolver } from '../src/proxy/options.ts';
import {
  CA_CERT,
  type ReferenceProxy,
  type ReferenceProxyOptions,
  type ReferenceServer,
  type ReferenceServerOptions,
  startReferenceProxy,
  startReferenceServer,
} from '../src/reference-server/index.ts';
import { signalWaiter } from '../src/session/credential-proof.ts';
import { TICKET_RECHECK_MS } from '../src/session/origin-memory.ts';
import { ALICE, basic, countingRelay, sleep, until } from './helpers.ts';

/** NTLM that sends NEGOTIATE on the first leg once the origin is known to want it (as Negotiate does). */
const proactiveNtlm: Mechanism = { ...ntlmMechanism(ALICE), proactive: true };

let server: ReferenceServer | undefined;
let proxy: ReferenceProxy | undefined;
let agent: MultilegAgent | undefined;
const closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  await agent?.destroy().catch(() => {});
  await proxy?.close();
  await server?.close();
  agent = proxy = server = undefined;
  for (const close of closers.splice(0)) await close();
});

async function setup(p: ReferenceProxyOptions, s: ReferenceServerOptions = {}, a: Partial<MultilegAgentOptions> = {}) {
  server = await startReferenceServer({ mode: 'session', ...s });
  proxy = await startReferenceProxy(p);
  agent = new MultilegAgent({
    credentials: ALICE,
    negotiate: false,
    schemes: ['NTLM'],
    mechanisms: [proactiveNtlm],
    // The targets: cleartext http behind the proxy (trusted explicitly, S4), and the https origin.
    trustedOrigins: [`http://localhost:${server.port}`, server.origin],
    proxy: {
      uri: proxy.origin,
      connect: { ca: proxy.ca },
      credentials: { username: 'proxyuser', password: 'proxypw' },
    },
    ...a,
  });
  // The target is plain http: the proxy forwards it (to the reference server, over TLS).
  return { base: `http://localhost:${server.port}`, server, proxy, agent };
}

const ALICE_P = { username: 'alice', password: 'alicepw' };
const BOB_P = { username: 'bob', password: 'bobpw' };

/**
 * The lab of the proxy's order (S6): origin A (`lab.a`, its /public/busy answered after `busyMs`),
 * origin B, a proxy taking alice's and bob's Basic passwords, and an agent whose proxy mechanism
 * takes the credentials current when each handshake starts, as Negotiate takes the ccache's
 * (`lab.ccache = BOB_P` is a `kinit bob`; a ticket: no password, so the CONNECTs of a proved
 * identity run side by side). Each CONNECT is logged (`A alice`, `B bob`, `A bare`); `lab.hold`
 * holds the next alice CONNECT 1.5 s (`lab.held` once it is). `via` answers a request's origin
 * connection (one per tunnel).
 */
async function ambientProxyLab(busyMs: number) {
  server = await startReferenceServer({
    mode: 'session',
    faults: { delayMs: (i) => (i.path.startsWith('/public/busy') ? busyMs : 0) },
  });
  const b = await startReferenceServer({ mode: 'session' });
  closers.push(() => b.close());
  proxy = await startReferenceProxy({ basicUsers: { alice: 'alicepw', bob: 'bobpw' } });
  const lab = { a: server.origin, b: b.origin, ccache: ALICE_P, connects: [] as string[], hold: false, held: false };
  const ambient: Mechanism = {
    ...basicMechanism(ALICE_P),
    usesPassword: false,
    createContext: (leg) => basicMechanism(lab.ccache).createContext(leg),
  };
  proxy.options.connectDelayMs = (c) => {
    const who =
      c.proxyAuthorization === basic(BOB_P) ? 'bob' : c.proxyAuthorization === basic(ALICE_P) ? 'alice' : 'bare';
    lab.connects.push(`${c.target.endsWith(`:${b.port}`) ? 'B' : 'A'} ${who}`);
    if (!lab.hold || who !== 'alice') return 0;
    lab.hold = false;
    lab.held = true;
    return 1500;
  };
  agent = new MultilegAgent({
    negotiate: false,
    allowH2: false,
    connect: { ca: server.ca },
    proxy: { uri: proxy.origin, connect: { ca: proxy.ca }, schemes: ['Basic'], mechanisms: [ambient] },
  });
  const via = async (origin: string, path: string) => {
    const res = await request(`${origin}${path}`, { dispatcher: agent! });
    const body = (await res.body.json()) as { sessionId: string };
    expect(res.statusCode).toBe(200);
    return body.sessionId;
  };
  return { lab, via };
}

const ok = { status: 200, body: { user: 'EXAMPLE\\alice' } };

async function get(url: string) {
  const res = await fetch(url, { dispatcher: agent! });
  return { status: res.status, body: (await res.json()) as { user: string | null } };
}

describe('authentication through a forward proxy (reference proxy)', () => {
  it('H4: without Proxy-support, session-based authentication is not trusted: every request authenticates', async () => {
    const { base, server: s, proxy: p, agent: a } = await setup({ proxySupport: false });
    for (let i = 0; i < 3; i++) {
      const r = await get(`${base}/auth/${i}`);
      expect(r).toMatchObject({ status: 200, body: { user: 'EXAMPLE\\alice' } });
    }
    // The server said Persistent-Auth: true each time, but the agent counted it as per-request…
    expect(
      s.exchanges.filter((e) => e.outcome === 'accepted').every((e) => e.responseHeaders['persistent-auth'] === 'true'),
    ).toBe(true);
    expect(a.handshakes().map((h) => h.outcome)).toEqual(['per-request', 'per-request', 'per-request']);
    // …so each request carried its own credentials through the proxy (2 legs: NEGOTIATE, AUTHENTICATE).
    for (let i = 0; i < 3; i++) {
      const legs = p.exchanges.filter((e) => e.target.endsWith(`/auth/${i}`) && e.authorization);
      expect(legs).toHaveLength(2);
    }
  });

  it("S1: through a forwarding proxy a caller's Host header is not what goes (the proxy is sent the origin's own): the request keeps the agent's credentials (review r42: no host-header withholding there)", async () => {
    const { base, server: s } = await setup({ proxySupport: true });
    const res = await request(`${base}/auth/host`, { dispatcher: agent!, headers: { host: 'elsewhere.example' } });
    expect(res.statusCode).toBe(200);
    expect(((await res.body.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
    expect(s.exchanges.filter((e) => e.path === '/auth/host').map((e) => e.requestHeaders[':authority'])).not.toContain(
      'elsewhere.example',
    );
  });

  it('H4: with Proxy-support: Session-Based-Authentication, the session is authenticated once', async () => {
    const { base, proxy: p, agent: a } = await setup({ proxySupport: true });
    for (let i = 0; i < 4; i++) {
      expect((await get(`${base}/auth/${i}`)).status).toBe(200);
    }
    expect(a.handshakes().map((h) => h.outcome)).toEqual(['session']);
    const authorized = p.exchanges.filter((e) => e.authorization);
    expect(authorized).toHaveLength(2);
    expect(p.exchanges.filter((e) => !e.authorization && e.status === 200)).toHaveLength(3);
    // One client connection to the proxy (bound upstream), HTTP/2 to the proxy.
    expect(new Set(p.exchanges.map((e) => e.connectionId)).size).toBe(1);
    expect(p.exchanges.every((e) => e.protocol === 'h2')).toBe(true);
  });

  describe('NTLM inside Negotiate (no Kerberos ticket, a password) over HTTP/1.1 to the proxy', () => {
    /** The NTLM message type inside a `Negotiate` Authorization (raw NTLMSSP, the agent's default), 0 for none. */
    const negotiateNtlmType = (h: Readonly<Record<string, unknown>>): number => {
      const v = h.authorization;
      if (typeof v !== 'string' || !v.startsWith('Negotiate ')) return 0;
      const token = Buffer.from(v.slice('Negotiate '.length), 'base64');
      return token.subarray(0, 8).toString('latin1') === 'NTLMSSP\0' ? token.readUInt32LE(8) : -1;
    };
    // `none`: the server keeps the authentication on the connection without saying Persistent-Auth
    // (as Apache mod_auth_gssapi does), so only the fallback's connection binding (C5/H1) makes it
    // session-based; `session`: the server says Persistent-Auth: true as well.
    const noTicketAgent = async (proxySupport: boolean, mode: 'none' | 'session') => {
      const rig = await setup({ proxySupport }, { mode });
      await agent!.destroy();
      agent = new MultilegAgent({
        credentials: ALICE,
        // A ticket cache that does not exist: Kerberos has no ticket, the password goes as NTLM inside Negotiate.
        negotiate: { ccache: 'FILE:/nonexistent/multileg-t26-no-ticket' },
        allowH2: false,
        trustedOrigins: [rig.base, rig.server.origin],
        proxy: { uri: rig.proxy.origin, connect: { ca: rig.proxy.ca } },
      });
      return { ...rig, agent };
    };

    it.each(['none', 'session'] as const)(
      'H4: without Proxy-support the bound connection is not trusted (server mode %s): every request carries its own Negotiate handshake',
      async (mode) => {
        const { base, server: s, proxy: p, agent: a } = await noTicketAgent(false, mode);
        for (let i = 0; i < 3; i++) expect(await get(`${base}/auth/${i}`)).toMatchObject(ok);
        const hs = a.handshakes();
        expect(hs.map((h) => [h.scheme, h.protocol, h.legs, h.outcome])).toEqual(
          Array(3).fill(['Negotiate', 'http/1.1', 2, 'per-request']),
        );
        expect(hs.every((h) => /^MULTILEG_KRB_NO_TICKET/.test(h.fallbackReason ?? ''))).toBe(true);
        // One HTTP/1.1 connection to the proxy; the first request met a bare 401 first, then each
        // request ran NEGOTIATE and AUTHENTICATE: none went bare on the authenticated connection.
        expect(new Set(p.exchanges.map((e) => e.connectionId)).size).toBe(1);
        expect(p.exchanges.every((e) => e.protocol === 'http/1.1')).toBe(true);
        expect(s.exchanges.map((e) => [e.path, e.status, negotiateNtlmType(e.requestHeaders)])).toEqual([
          ['/auth/0', 401, 0],
          ['/auth/0', 401, 1],
          ['/auth/0', 200, 3],
          ['/auth/1', 401, 1],
          ['/auth/1', 200, 3],
          ['/auth/2', 401, 1],
          ['/auth/2', 200, 3],
        ]);
      },
    );

    it.each(['none', 'session'] as const)(
      'H4: with Proxy-support: Session-Based-Authentication the HTTP/1.1 connection is bound (server mode %s): one handshake, later requests go bare',
      async (mode) => {
        const { base, server: s, proxy: p, agent: a } = await noTicketAgent(true, mode);
        for (let i = 0; i < 3; i++) expect(await get(`${base}/auth/${i}`)).toMatchObject(ok);
        expect(a.handshakes().map((h) => [h.scheme, h.protocol, h.legs, h.outcome])).toEqual([
          ['Negotiate', 'http/1.1', 2, 'session'],
        ]);
        expect(a.handshakes()[0]!.fallbackReason).toMatch(/^MULTILEG_KRB_NO_TICKET/);
        expect(new Set(p.exchanges.map((e) => e.connectionId)).size).toBe(1);
        expect(p.exchanges.every((e) => e.protocol === 'http/1.1')).toBe(true);
        expect(s.exchanges.map((e) => [e.path, e.status, negotiateNtlmType(e.requestHeaders)])).toEqual([
          ['/auth/0', 401, 0],
          ['/auth/0', 401, 1],
          ['/auth/0', 200, 3],
          ['/auth/1', 200, 0],
          ['/auth/2', 200, 0],
        ]);
      },
    );
  });

  it('H3: Remote-http-version: 1.1 moves authenticated traffic for that origin to HTTP/1.1', async () => {
    const { base, proxy: p, agent: a } = await setup({ proxySupport: true, remoteHttpVersion: '1.1' });
    for (let i = 0; i < 3; i++) {
      expect((await get(`${base}/auth/${i}`)).status).toBe(200);
    }
    // The first request (NEGOTIATE: NTLM is the agent's only scheme) met the header over HTTP/2;
    // everything after went over HTTP/1.1, where the handshake ran again.
    expect(p.exchanges[0]).toMatchObject({ protocol: 'h2', status: 401, authorization: true });
    const rest = p.exchanges.slice(1);
    expect(rest.every((e) => e.protocol === 'http/1.1')).toBe(true);
    expect(rest.filter((e) => e.authorization)).toHaveLength(2);
    expect(a.handshakes()).toHaveLength(1);
    expect(a.handshakes()[0]).toMatchObject({ protocol: 'http/1.1', outcome: 'session' });
  });

  it('H3: without Remote-http-version the handshake stays on HTTP/2 to the proxy', async () => {
    const { base, proxy: p, agent: a } = await setup({ proxySupport: true });
    expect((await get(`${base}/auth/x`)).status).toBe(200);
    expect(p.exchanges.every((e) => e.protocol === 'h2')).toBe(true);
    expect(a.handshakes()[0]).toMatchObject({ protocol: 'h2' });
  });

  it('H5: Basic proxy authentication on forwarded requests goes on every request, separate from origin NTLM', async () => {
    const { base, proxy: p } = await setup({ proxySupport: true, basicUsers: { proxyuser: 'proxypw' } });
    for (let i = 0; i < 3; i++) expect((await get(`${base}/auth/${i}`)).status).toBe(200);
    expect(p.exchanges[0]).toMatchObject({ status: 407, proxyAuthorization: false });
    expect(p.exchanges.slice(1).every((e) => e.proxyAuthorization && e.status !== 407)).toBe(true);
    // Origin credentials went to the origin only, proxy credentials to the proxy only.
    expect(server!.exchanges.every((e) => e.requestHeaders['proxy-authorization'] === undefined)).toBe(true);
  });

  it('H5: CONNECT tunnel with Basic through the reference proxy (which closes after its 407), then HTTP/2 and NTLM to an https origin', async () => {
    const {
      server: s,
      proxy: p,
      agent: a,
    } = await setup(
      { basicUsers: { proxyuser: 'proxypw' } },
      {},
      { connect: { ca: (await import('../src/reference-server/index.ts')).CA_CERT } },
    );
    const res = await fetch(`${s.origin}/auth/t`, { dispatcher: a });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { protocol: string }).protocol).toBe('h2');
    expect(p.exchanges.map((e) => [e.method, e.status, e.proxyAuthorization])).toEqual([
      ['CONNECT', 407, false],
      ['CONNECT', 200, true],
    ]);
    // This proxy closes the connection after a 407 to CONNECT: the agent answered on a new one.
    expect(new Set(p.exchanges.map((e) => e.connectionId)).size).toBe(2);
    // Over a tunnel the session is ours alone: session auth is trusted without Proxy-support. (The
    // origin's handshakes: the CONNECT's Basic is reported too, as the proxy's.)
    expect(
      a
        .handshakes()
        .filter((h) => !h.proxy)
        .map((h) => h.outcome),
    ).toEqual(['session']);
  });

  it("S2/H5: a caller's own Proxy-Authorization is refused through a CONNECT tunnel (it would reach the origin), and goes to a forwarding proxy", async () => {
    const {
      base,
      server: s,
      proxy: p,
      agent: a,
    } = await setup({ proxySupport: true }, {}, { connect: { ca: CA_CERT } });
    const own = { 'proxy-authorization': 'Basic c2VjcmV0OnNlY3JldA==' };
    const err = (await fetch(`${s.origin}/public/t`, { dispatcher: a, headers: own }).catch(
      (e: { cause?: Error }) => e.cause,
    )) as Error;
    expect(err).toBeInstanceOf(ProxyAuthorizationHeaderError);
    expect((err as ProxyAuthorizationHeaderError).code).toBe('MULTILEG_PROXY_AUTH_HEADER');
    expect(err.message).not.toContain('c2VjcmV0');
    // An upgrade always tunnels: refused too.
    const upgraded = await new Promise<Error>((resolve) =>
      a.dispatch(
        { origin: `http://localhost:${s.port}`, path: '/ws', method: 'GET', upgrade: 'websocket', headers: own },
        {
          onRequestUpgrade: () => resolve(new Error('upgraded')),
          onResponseStart: () => resolve(new Error('answered')),
          onResponseData: () => {},
          onResponseEnd: () => {},
          onResponseError: (_c, e) => resolve(e),
        },
      ),
    );
    expect(upgraded).toBeInstanceOf(ProxyAuthorizationHeaderError);
    expect(p.exchanges).toEqual([]);
    expect(s.exchanges).toEqual([]);
    // A plain-http target goes through the forwarding proxy: the header is the proxy's to read.
    expect((await fetch(`${base}/public/f`, { dispatcher: a, headers: own })).status).toBe(200);
    expect(p.exchanges.map((e) => e.proxyAuthorization)).toEqual([true]);
  });

  it("S2: after NO_PROXY changes, a caller's own Proxy-Authorization is still refused for an origin whose connections go through the tunnel", async () => {
    server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    proxy = await startReferenceProxy({});
    const names = ['HTTPS_PROXY', 'https_proxy', 'NO_PROXY', 'no_proxy'] as const;
    const saved = Object.fromEntries(names.map((n) => [n, process.env[n]]));
    for (const n of names) delete process.env[n];
    process.env.HTTPS_PROXY = proxy.origin;
    try {
      // The proxy from the environment (as undici's EnvHttpProxyAgent reads it).
      agent = new MultilegAgent({ connect: { ca: CA_CERT }, proxy: { connect: { ca: proxy.ca } } });
      await (await fetch(`${server.origin}/public/a`, { dispatcher: agent })).arrayBuffer();
      expect(proxy.exchanges.map((e) => e.method)).toEqual(['CONNECT']);
      // The operator exempts the host now; the origin's connections still go through the tunnel.
      process.env.NO_PROXY = 'localhost';
      const own = { 'proxy-authorization': `Basic ${Buffer.from('me:my-proxy-secret').toString('base64')}` };
      const err = await fetch(`${server.origin}/public/b`, { dispatcher: agent, headers: own }).catch(
        (e: { cause?: Error }) => e.cause,
      );
      // Before: the header went inside the tunnel, to the origin.
      expect(err).toBeInstanceOf(ProxyAuthorizationHeaderError);
      expect(server.exchanges.filter((e) => e.requestHeaders['proxy-authorization'] !== undefined)).toEqual([]);
    } finally {
      for (const n of names) {
        if (saved[n] === undefined) delete process.env[n];
        else process.env[n] = saved[n];
      }
    }
  });

  it('R4/H5: one proxy URL in both HTTPS_PROXY and HTTP_PROXY is one proxy: a wrong password in it is refused once, not once per variable, and the error names the URL it came from, not proxy.credentials', async () => {
    server = await startReferenceServer({ mode: 'session' });
    proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    const names = ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'NO_PROXY', 'no_proxy'] as const;
    const saved = Object.fromEntries(names.map((n) => [n, process.env[n]]));
    for (const n of names) delete process.env[n];
    const url = new URL(proxy.origin);
    url.username = 'proxyuser';
    url.password = 'wrong-pw';
    process.env.HTTPS_PROXY = process.env.HTTP_PROXY = url.href;
    try {
      agent = new MultilegAgent({ connect: { ca: CA_CERT }, proxy: { connect: { ca: proxy.ca } } });
      const failure = (u: string) =>
        fetch(u, { dispatcher: agent }).then(
          () => undefined,
          (e: { cause?: Error }) => e.cause,
        );
      const forwarded = await failure(`http://localhost:${server.port}/public/a`);
      expect(forwarded).toBeInstanceOf(ProxyAuthenticationError);
      expect(forwarded?.message).toContain(
        'check the user:password in the proxy URL (HTTPS_PROXY and HTTP_PROXY) (user, domain, password)',
      );
      expect(forwarded?.message).not.toContain('proxy.credentials');
      expect(forwarded?.message).not.toContain('wrong-pw');
      const tunnelled = await failure(`${server.origin}/public/b`);
      expect(tunnelled).toBeInstanceOf(ProxyAuthenticationError);
      expect(tunnelled?.message).toContain(
        'the proxy refused the user:password in the proxy URL (HTTPS_PROXY and HTTP_PROXY) lately',
      );
      // Before: two proxies, each its own proof: the wrong password went once for each.
      expect(proxy.exchanges.filter((e) => e.proxyAuthorization)).toHaveLength(1);
    } finally {
      for (const n of names) {
        if (saved[n] === undefined) delete process.env[n];
        else process.env[n] = saved[n];
      }
    }
  });

  it("H5/S1: behind undici's dns interceptor NO_PROXY is read for the name the caller gave, not only the address: a host kept from the proxy gets no CONNECT there and the proxy no password (requests and upgrades' route alike)", async () => {
    server = await startReferenceServer({ mode: 'none' });
    const { port } = new URL(server.origin);
    server.options.authorities.push(`a.test:${port}`);
    proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    agent = new MultilegAgent({
      // (The test certificate names localhost: the name's certificate is taken as checked.)
      connect: { ca: server.ca, checkServerIdentity: () => undefined },
      proxy: {
        uri: proxy.origin,
        connect: { ca: proxy.ca },
        credentials: { username: 'proxyuser', password: 'proxypw' },
        noProxy: 'a.test',
      },
    });
    const viaDns = agent.compose(
      interceptors.dns({ lookup: (_o, _opts, cb) => cb(null, [{ address: '127.0.0.1', family: 4, ttl: 60_000 }]) }),
    );
    const res = await request(`https://a.test:${port}/public/x`, { dispatcher: viaDns });
    await res.body.dump();
    expect(res.statusCode).toBe(200);
    // Before: CONNECT 127.0.0.1:PORT, 407, then again with the proxy's password.
    expect(proxy.exchanges).toEqual([]);
    // The route upgrades take (ProxyResolver.route): the name's NO_PROXY entry counts, as the address's.
    const resolver = new ProxyResolver({ uri: proxy.origin, noProxy: 'a.test,127.0.0.2' }, {});
    expect(resolver.route(`https://127.0.0.1:${port}`, `https://a.test:${port}`)).toBeUndefined();
    expect(resolver.route(`https://127.0.0.2:${port}`, `https://b.test:${port}`)).toBeUndefined();
    expect(resolver.route(`https://127.0.0.1:${port}`, `https://b.test:${port}`)?.kind).toBe('tunnel');
  });

  it('H5: with only http_proxy set, an https URL goes directly — the proxy sees no connection, no host name, no credentials — and an http URL still goes through it; with both set, each scheme to its own proxy (as curl, .NET and Go; undici tunnelled https through http_proxy)', async () => {
    server = await startReferenceServer({ mode: 'session' });
    const plainProxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    const secureProxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    closers.push(
      () => plainProxy.close(),
      () => secureProxy.close(),
    );
    // What reaches each proxy on the wire: every TCP connection, before TLS or HTTP.
    const wire = async (to: ReferenceProxy) => {
      const seen = await countingRelay(to.port, closers);
      const url = new URL(seen.url);
      url.username = 'proxyuser';
      url.password = 'proxypw';
      return { seen, url: url.href };
    };
    const plain = await wire(plainProxy);
    const secure = await wire(secureProxy);
    const names = ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'NO_PROXY', 'no_proxy'] as const;
    const saved = Object.fromEntries(names.map((n) => [n, process.env[n]]));
    const make = (env: Partial<Record<(typeof names)[number], string>>) => {
      for (const n of names) delete process.env[n];
      Object.assign(process.env, env);
      return new MultilegAgent({ connect: { ca: CA_CERT }, proxy: { connect: { ca: plainProxy.ca } } });
    };
    const status = async (a: MultilegAgent, url: string) => {
      const r = await request(url, { dispatcher: a });
      await r.body.dump();
      return r.statusCode;
    };
    const httpsUrl = `${server.origin}/public/h5-direct`;
    const httpUrl = `http://localhost:${server.port}/public/h5-forwarded`;
    try {
      for (const name of ['http_proxy', 'HTTP_PROXY'] as const) {
        agent = make({ [name]: plain.url });
        // Before: CONNECT localhost:PORT through the http_proxy's proxy, with its Basic password.
        expect(await status(agent, httpsUrl), name).toBe(200);
        expect([plain.seen.connections, plainProxy.exchanges.length], name).toEqual([0, 0]);
        expect(await status(agent, httpUrl), name).toBe(200);
        // (Its 407 first: the agent's first request to a proxy goes without Basic credentials.)
        expect(plainProxy.exchanges.map((e) => `${e.method} ${e.target} ${e.status}`)).toEqual([
          `GET ${httpUrl} 407`,
          `GET ${httpUrl} 200`,
        ]);
        await agent.destroy();
        plainProxy.exchanges.length = 0;
        plain.seen.connections = 0;
      }
      agent = make({ https_proxy: secure.url, http_proxy: plain.url });
      expect(await status(agent, httpsUrl)).toBe(200);
      expect(await status(agent, httpUrl)).toBe(200);
      const seenBy = (p: ReferenceProxy) => [...new Set(p.exchanges.map((e) => `${e.method} ${e.target}`))];
      expect(seenBy(secureProxy)).toEqual([`CONNECT localhost:${server.port}`]);
      expect(seenBy(plainProxy)).toEqual([`GET ${httpUrl}`]);
      expect(secure.seen.connections).toBeGreaterThan(0);
      expect(plain.seen.connections).toBeGreaterThan(0);
    } finally {
      for (const n of names) {
        if (saved[n] === undefined) delete process.env[n];
        else process.env[n] = saved[n];
      }
    }
  });

  it("S6/S2: a caller's own Proxy-Authorization through a forwarding proxy goes as given, and its 407 is the caller's: the agent's proxy account is never used for it", async () => {
    const { base, proxy: p, agent: a } = await setup({ basicUsers: { proxyuser: 'proxypw' } });
    const bob = { 'proxy-authorization': `Basic ${Buffer.from('bob:bobpw').toString('base64')}` };
    // The proxy does not know bob: bob's request is refused, and the caller sees the proxy's 407.
    const refused = await request(`${base}/public/one`, { dispatcher: a, headers: bob });
    await refused.body.dump();
    expect(refused.statusCode).toBe(407);
    expect(refused.headers['proxy-authenticate']).toBe('Basic realm="reference-proxy"');
    expect(p.exchanges.map((e) => [e.status, e.proxyAuthorization])).toEqual([[407, true]]);
    // Now the proxy knows bob only: bob's request goes as bob (proxyuser's header would be refused).
    p.options.basicUsers = { bob: 'bobpw' };
    const accepted = await request(`${base}/public/two`, { dispatcher: a, headers: bob });
    expect(accepted.statusCode).toBe(200);
    expect(((await accepted.body.json()) as { path: string }).path).toBe('/public/two');
    expect(p.exchanges.map((e) => e.status)).toEqual([407, 200]);
    // A request without a header of its own still authenticates with the agent's proxy account.
    p.options.basicUsers = { proxyuser: 'proxypw' };
    const own = await request(`${base}/public/three`, { dispatcher: a });
    await own.body.dump();
    expect(own.statusCode).toBe(200);
  });

  it("H5: with proxy.deliver407 a forwarded request's final 407 is the caller's response (no credentials, wrong ones), as curl shows it; a CONNECT's stays the error", async () => {
    const { base, proxy: p, server: s } = await setup({ basicUsers: { proxyuser: 'proxypw' } });
    await agent!.destroy();
    const make = (credentials?: { username: string; password: string }) =>
      new MultilegAgent({
        credentials: ALICE,
        negotiate: false,
        schemes: ['NTLM'],
        trustedOrigins: [base, s.origin],
        proxy: { uri: p.origin, connect: { ca: p.ca }, deliver407: true, ...(credentials ? { credentials } : {}) },
      });
    agent = make();
    const none = await request(`${base}/auth/none`, { dispatcher: agent });
    await none.body.dump();
    expect(none.statusCode).toBe(407);
    expect(none.headers['proxy-authenticate']).toBe('Basic realm="reference-proxy"');
    await agent.destroy();
    agent = make({ username: 'proxyuser', password: 'wrong' });
    const wrong = await request(`${base}/auth/wrong`, { dispatcher: agent });
    await wrong.body.dump();
    expect(wrong.statusCode).toBe(407);
    // One answer with the credentials, then the refusal is shown: no loop, no error. The refusal
    // ended that handshake, and holds the password back (R4, as after a ProxyAuthenticationError):
    // the next request goes bare and is shown the proxy's 407 (review r72: it sent the password again).
    const again = await request(`${base}/auth/again`, { dispatcher: agent });
    await again.body.dump();
    expect(again.statusCode).toBe(407);
    expect(p.exchanges.slice(-3).map((e) => [e.status, e.proxyAuthorization])).toEqual([
      [407, false],
      [407, true],
      [407, false],
    ]);
    // A CONNECT's 407 opened no tunnel: there is no response to show.
    await expect(request(`${s.origin}/auth/tunnel`, { dispatcher: agent })).rejects.toBeInstanceOf(
      ProxyAuthenticationError,
    );
  });

  it('H5/S2: multileg:proxy-unanswered says why a delivered 407 went unanswered (nothing configured for it, or its refusal of the credentials sent), with no secret', async () => {
    const { base, proxy: p, server: s } = await setup({ basicUsers: { proxyuser: 'proxypw' } });
    await agent!.destroy();
    const events: ProxyUnansweredEvent[] = [];
    const onEvent = (m: unknown) => events.push(m as ProxyUnansweredEvent);
    subscribe(PROXY_UNANSWERED_CHANNEL, onEvent);
    try {
      for (const credentials of [undefined, { username: 'proxyuser', password: 'wrong-secret-pw' }]) {
        agent = new MultilegAgent({
          negotiate: false,
          trustedOrigins: [base, s.origin],
          proxy: { uri: p.origin, connect: { ca: p.ca }, deliver407: true, ...(credentials ? { credentials } : {}) },
        });
        const res = await request(`${base}/public/why`, { dispatcher: agent });
        await res.body.dump();
        expect(res.statusCode).toBe(407);
        await agent.destroy();
      }
    } finally {
      unsubscribe(PROXY_UNANSWERED_CHANNEL, onEvent);
    }
    const common = { proxy: p.origin, origin: base, path: '/public/why', schemes: ['Basic'], unusable: [] };
    expect(events).toEqual([
      { ...common, reason: 'unconfigured', time: expect.any(Number) },
      { ...common, reason: 'refused', time: expect.any(Number) },
    ]);
    expect(JSON.stringify(events)).not.toMatch(/wrong-secret-pw|proxyuser|cHJveHl1c2Vy/);
  });

  it("H5/C4: a forwarding proxy's 407 delivered in the middle of the origin's NTLM handshake proves nothing: the handshake failed, the next request authenticates anew", async () => {
    const { base, proxy: p, server: s } = await setup({ proxySupport: true });
    await agent!.destroy();
    agent = new MultilegAgent({
      credentials: ALICE,
      negotiate: false,
      schemes: ['NTLM'],
      trustedOrigins: [base, s.origin],
      proxy: {
        uri: p.origin,
        connect: { ca: p.ca },
        deliver407: true,
        credentials: { username: 'proxyuser', password: 'proxypw' },
      },
    });
    // The proxy takes proxyuser's password for the bare request and the origin's 401, then not:
    // the first NTLM leg meets the proxy's 407 (answered once, refused again, delivered).
    Object.defineProperty(p.options, 'basicUsers', {
      configurable: true,
      get: () => ({ proxyuser: p.exchanges.length >= 2 ? 'changed' : 'proxypw' }),
    });
    const refused = await request(`${base}/auth/one`, { dispatcher: agent });
    await refused.body.dump();
    expect(refused.statusCode).toBe(407);
    expect(p.exchanges.map((e) => e.status)).toEqual([407, 401, 407, 407]);
    // The origin's handshakes (the proxy's are reported too, with `proxy`).
    const origins = () => agent!.handshakes().filter((h) => !h.proxy);
    expect(origins().map((h) => h.outcome)).toEqual(['failed']);
    // The proxy takes the password again: the session was not taken as authenticated by the 407.
    // (Its refusal holds the password back, R4: the caller says it works again — review r72.)
    Object.defineProperty(p.options, 'basicUsers', { configurable: true, value: { proxyuser: 'proxypw' } });
    agent.setProxyCredentials({ username: 'proxyuser', password: 'proxypw' }, { forgetRefusals: true });
    const ok = await request(`${base}/auth/two`, { dispatcher: agent });
    expect(((await ok.body.json()) as { user: string | null }).user).toBe('EXAMPLE\\alice');
    expect(origins().map((h) => h.outcome)).toEqual(['failed', 'session']);
  });

  it('H5/R4: once the proxy took its Basic password, each new tunnel carries it unasked (as curl -U): one CONNECT each, not a 407 first; none after the proxy refused it', async () => {
    const origins = await Promise.all([1, 2, 3].map(() => startReferenceServer({ mode: 'session' })));
    for (const o of origins) closers.push(() => o.close());
    proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    const p = proxy;
    agent = new MultilegAgent({
      connect: { ca: origins[0]!.ca },
      proxy: {
        uri: proxy.origin,
        connect: { ca: proxy.ca },
        credentials: { username: 'proxyuser', password: 'proxypw' },
      },
    });
    const statusOf = async (url: string) => {
      const res = await request(url, { dispatcher: agent! });
      await res.body.arrayBuffer();
      return res.statusCode;
    };
    for (const o of origins) expect(await statusOf(`${o.origin}/public/x`)).toBe(200);
    const connects = () =>
      p.exchanges.filter((e) => e.method === 'CONNECT').map((e) => [e.status, e.proxyAuthorization]);
    // Was: [407, false], [200, true] for each tunnel.
    expect(connects()).toEqual([
      [407, false],
      [200, true],
      [200, true],
      [200, true],
    ]);
    // The proxy's password changes there: a tunnel's unasked Basic drawing a 407 is a refusal, not
    // sent again on that tunnel (R4). A refusal after a proof may be one resource's (an ACL): one more
    // tunnel tries, then none sends it for a while, unasked or asked.
    p.options.basicUsers = { proxyuser: 'rotated' };
    const fresh = await Promise.all([1, 2, 3].map(() => startReferenceServer({ mode: 'session' })));
    for (const o of fresh) closers.push(() => o.close());
    const sent: number[] = [];
    for (const o of fresh) {
      const from = connects().length;
      const failed = await statusOf(`${o.origin}/public/y`).catch((e: Error) => e);
      expect(failed).toBeInstanceOf(ProxyAuthenticationError);
      sent.push(
        connects()
          .slice(from)
          .filter(([, carried]) => carried).length,
      );
    }
    // Was (before a 407 to unasked credentials counted as a refusal): 2 on the first tunnel.
    expect(sent).toEqual([1, 1, 0]);
  });

  it('H5: a wrong proxy password is a ProxyAuthenticationError that names the proxy and no secret', async () => {
    const { base } = await setup({ basicUsers: { proxyuser: 'other' } });
    const err = (await fetch(`${base}/auth/x`, { dispatcher: agent! }).catch(
      (e: { cause?: Error }) => e.cause,
    )) as Error;
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect((err as ProxyAuthenticationError).code).toBe('MULTILEG_PROXY_AUTH');
    expect(err.message).toContain(proxy!.origin);
    expect(err.message).not.toContain('proxypw');
    const tunnelErr = (await fetch(`${server!.origin}/auth/x`, { dispatcher: agent! }).catch(
      (e: { cause?: Error }) => e.cause,
    )) as Error;
    expect(tunnelErr).toBeInstanceOf(ProxyAuthenticationError);
  });
});

describe("handshakes with the proxy are reported as an origin's (H5, reference proxy)", () => {
  /** Every report, as onHandshake and multileg:handshake each give them. */
  function listen(a: MultilegAgent) {
    const heard: HandshakeReport[] = [];
    const published: HandshakeReport[] = [];
    const onPublished = (m: unknown) => published.push(m as HandshakeReport);
    a.onHandshake((r) => heard.push(r));
    subscribe(HANDSHAKE_CHANNEL, onPublished);
    closers.push(async () => unsubscribe(HANDSHAKE_CHANNEL, onPublished));
    return { heard, published };
  }

  it("H5/S2: a Basic proxy's handshakes reach onHandshake, multileg:handshake, handshakes() and stats() (proxyHandshakes, apart from the origin's): a forwarded request's and a CONNECT's, each with proxy: true, the proxy's origin without userinfo, the session it ran on; no secret", async () => {
    server = await startReferenceServer({ mode: 'session' });
    proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    const base = `http://localhost:${server.port}`;
    const withUser = new URL(proxy.origin);
    withUser.username = 'proxyuser';
    withUser.password = 'proxypw';
    agent = new MultilegAgent({
      credentials: ALICE,
      negotiate: false,
      schemes: ['NTLM'],
      connect: { ca: server.ca },
      trustedOrigins: [server.origin],
      proxy: { uri: withUser.href, connect: { ca: proxy.ca } },
    });
    const { heard, published } = listen(agent);
    // Forwarded (plain http): a bare request, the proxy's 407, Basic.
    const res = await fetch(`${base}/public/forwarded`, { dispatcher: agent });
    expect(res.status).toBe(200);
    await res.arrayBuffer();
    const forwarded = agent.sessions().find((s) => s.origin === base)!;
    // Tunnelled (https): the CONNECT carries the Basic the proxy asked for, then NTLM with the origin.
    const tunnelled = await get(`${server.origin}/auth/tunnelled`);
    expect(tunnelled.status).toBe(200);
    const viaTunnel = agent.sessions().find((s) => s.origin === server!.origin)!;
    const proxyReport = { proxy: true, origin: proxy.origin, scheme: 'Basic', legs: 1, outcome: 'per-request' };
    // Before: none of the proxy's handshakes was reported (the origin's NTLM alone; proxyHandshakes did not exist).
    expect(agent.handshakes()).toEqual([
      { ...proxyReport, sessionId: forwarded.sessionId, protocol: 'h2', authIdCarried: false, identity: 'proxyuser' },
      {
        ...proxyReport,
        sessionId: viaTunnel.sessionId,
        protocol: 'http/1.1',
        authIdCarried: false,
        identity: 'proxyuser',
      },
      expect.objectContaining({ origin: server.origin, sessionId: viaTunnel.sessionId, scheme: 'NTLM' }),
    ]);
    expect(agent.handshakes()[2]).not.toHaveProperty('proxy');
    expect(heard).toEqual(agent.handshakes());
    expect(published).toEqual(agent.handshakes());
    expect(agent.stats()).toMatchObject({
      handshakes: 1,
      legs: 2,
      failedHandshakes: 0,
      proxyHandshakes: 2,
      proxyLegs: 2,
      failedProxyHandshakes: 0,
    });
    expect(JSON.stringify(published)).not.toContain('proxypw');
    expect(JSON.stringify(published)).not.toContain(basic({ username: 'proxyuser', password: 'proxypw' }).slice(6));
  });

  it('H5/S2: a refused proxy password is a failed report (failure refused), forwarded and tunnelled, counted in failedProxyHandshakes; no secret in it', async () => {
    server = await startReferenceServer({ mode: 'session' });
    proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    const options: MultilegAgentOptions = {
      negotiate: false,
      connect: { ca: server.ca },
      proxy: {
        uri: proxy.origin,
        connect: { ca: proxy.ca },
        credentials: { username: 'proxyuser', password: 'wrongpw' },
      },
    };
    const refused = {
      proxy: true,
      origin: proxy.origin,
      scheme: 'Basic',
      legs: 1,
      outcome: 'failed',
      failure: 'refused',
    };
    for (const url of [`http://localhost:${server.port}/public/x`, `${server.origin}/public/x`]) {
      const a = new MultilegAgent(options);
      closers.push(() => a.destroy());
      const { published } = listen(a);
      const err = await fetch(url, { dispatcher: a }).catch((e: { cause?: Error }) => e.cause);
      expect(err).toBeInstanceOf(ProxyAuthenticationError);
      // Before: no report, and stats() said nothing had happened.
      expect(a.handshakes()).toEqual([expect.objectContaining(refused)]);
      expect(a.handshakes()[0]).not.toHaveProperty('identity');
      expect(published).toEqual(a.handshakes());
      expect(a.stats()).toMatchObject({ handshakes: 0, proxyHandshakes: 1, proxyLegs: 1, failedProxyHandshakes: 1 });
      expect(JSON.stringify(published)).not.toContain('wrongpw');
    }
  });

  it("H5/R3: a proxy's final answer whose check returns after the proxy's deadline is a failed report (failure error), forwarded and tunnelled: never a success, and the request ends with ProxyTimeoutError", async () => {
    server = await startReferenceServer({ mode: 'session' });
    proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    const account = { username: 'proxyuser', password: 'proxypw' };
    for (const url of [`http://localhost:${server.port}/public/x`, `${server.origin}/public/x`]) {
      // The check of the proxy's final answer (a GSS-API step on a worker, in life) returns only
      // once the request has failed.
      let release!: () => void;
      const held = new Promise<void>((r) => {
        release = r;
      });
      const slowProof: Mechanism = {
        ...basicMechanism(account),
        createContext: (leg) => {
          const context = basicMechanism(account).createContext(leg);
          const finish = context.finish.bind(context);
          context.finish = async (...args) => {
            await held;
            return finish(...args);
          };
          return context;
        },
      };
      const a = new MultilegAgent({
        negotiate: false,
        connect: { ca: server.ca },
        limits: { handshakeTimeout: 300 },
        proxy: { uri: proxy.origin, connect: { ca: proxy.ca }, schemes: ['Basic'], mechanisms: [slowProof] },
      });
      closers.push(() => a.destroy());
      const { published } = listen(a);
      const err = await fetch(url, { dispatcher: a }).catch((e: { cause?: Error }) => e.cause);
      expect(err).toBeInstanceOf(ProxyTimeoutError);
      release();
      await until(() => a.handshakes().length > 0);
      // Before: reported as a success (outcome per-request, identity proxyuser) once the check returned.
      expect(a.handshakes()).toEqual([
        expect.objectContaining({ proxy: true, scheme: 'Basic', outcome: 'failed', failure: 'error' }),
      ]);
      expect(a.handshakes()[0]).not.toHaveProperty('identity');
      expect(published).toEqual(a.handshakes());
      expect(a.stats()).toMatchObject({ proxyHandshakes: 1, failedProxyHandshakes: 1 });
    }
  });

  it("S2/H5: multileg:leg says whose leg it is: a CONNECT is the proxy's (target proxy, its Basic in proxyScheme, no scheme), a forwarded request the origin's (its NTLM in scheme, the proxy's Basic in proxyScheme), on every phase; no secret", async () => {
    server = await startReferenceServer({ mode: 'session' });
    proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    agent = new MultilegAgent({
      credentials: ALICE,
      negotiate: false,
      schemes: ['NTLM'],
      connect: { ca: server.ca },
      trustedOrigins: [`http://localhost:${server.port}`, server.origin],
      proxy: {
        uri: proxy.origin,
        connect: { ca: proxy.ca },
        credentials: { username: 'proxyuser', password: 'proxypw' },
      },
    });
    const legs: LegEvent[] = [];
    const onLeg = (m: unknown) => legs.push(m as LegEvent);
    subscribe(LEG_CHANNEL, onLeg);
    closers.push(async () => unsubscribe(LEG_CHANNEL, onLeg));
    // Forwarded (plain http: NTLM the origin's only scheme, its NEGOTIATE on the first request; the
    // proxy's Basic once it asked), a public path (the proxy's Basic alone), then tunnelled (https:
    // the CONNECT carries the Basic the proxy took; the origin's first leg is published before it,
    // the tunnel opening under it).
    const base = `http://localhost:${server.port}`;
    expect((await get(`${base}/auth/forwarded`)).status).toBe(200);
    const res = await fetch(`${base}/public/forwarded`, { dispatcher: agent });
    expect(res.status).toBe(200);
    await res.arrayBuffer();
    const forwarded = legs.length;
    expect((await get(`${server.origin}/auth/tunnelled`)).status).toBe(200);
    unsubscribe(LEG_CHANNEL, onLeg);
    const sent = (from: number, to?: number) =>
      legs
        .slice(from, to)
        .flatMap((e) => (e.phase === 'request' ? [[e.target, e.method, e.scheme, e.proxyScheme, e.origin]] : []));
    // Before: no target, no proxyScheme, and a leg carrying the proxy's Basic alone said scheme
    // Basic — counted as the origin's Basic, as a CONNECT's was.
    expect(sent(0, forwarded)).toEqual([
      ['origin', 'GET', 'NTLM', undefined, base],
      ['origin', 'GET', 'NTLM', 'Basic', base],
      ['origin', 'GET', 'NTLM', 'Basic', base],
      ['origin', 'GET', undefined, 'Basic', base],
    ]);
    expect(sent(forwarded)).toEqual([
      ['origin', 'GET', 'NTLM', undefined, server.origin],
      ['proxy', 'CONNECT', undefined, 'Basic', proxy.origin],
      ['origin', 'GET', 'NTLM', undefined, server.origin],
    ]);
    // The response and error events of a leg say the same as its request: the proxy's 200 to the
    // CONNECT is the proxy's; the proxy's 407 to a forwarded request is on the origin's leg (its status says whose).
    const targets = new Map(legs.flatMap((e) => (e.phase === 'request' ? [[e.legId, e.target] as const] : [])));
    expect(legs.every((e) => e.target === targets.get(e.legId))).toBe(true);
    expect(
      legs.flatMap((e) => (e.phase === 'response' && e.target === 'proxy' ? [[e.status, e.sessionId]] : [])),
    ).toEqual([[200, 'proxy-1']]);
    expect(legs.flatMap((e) => (e.phase === 'response' && e.status === 407 ? [e.target] : []))).toEqual(['origin']);
    // No secret (S2): no password, no Basic credentials, no NTLM token the origin saw.
    const published = JSON.stringify(legs);
    for (const secret of ['proxypw', ALICE.password, basic({ username: 'proxyuser', password: 'proxypw' }).slice(6)])
      expect(published).not.toContain(secret);
    for (const e of server.exchanges) {
      const auth = e.requestHeaders.authorization;
      if (typeof auth === 'string') expect(published).not.toContain(auth.split(' ')[1]);
    }
  });
});

describe("the proxy's NTLM opening on forwarded requests (reference proxy with ntlmUsers, H5, R4)", () => {
  const PROXY_ACCOUNT = { username: 'proxyuser', password: 'proxypw' };
  /** An agent whose proxy allows NTLM only (curl --proxy-ntlm), to a proxy that asks for NTLM with `users`. */
  async function ntlmProxy(users: Record<string, string> | undefined, limits: MultilegAgentOptions['limits'] = {}) {
    server = await startReferenceServer({ mode: 'session' });
    proxy = await startReferenceProxy({ proxySupport: true, ...(users ? { ntlmUsers: users } : {}) });
    agent = new MultilegAgent({
      negotiate: false,
      limits,
      proxy: { uri: proxy.origin, connect: { ca: proxy.ca }, credentials: PROXY_ACCOUNT, schemes: ['NTLM'] },
    });
    return { base: `http://localhost:${server.port}`, other: `http://127.0.0.1:${server.port}`, p: proxy, a: agent };
  }
  /** Each proxy exchange as [NTLM message (or '-' bare), status]. */
  const wire = (p: ReferenceProxy, from = 0) =>
    p.exchanges.slice(from).map((e) => [e.proxyNtlm ?? (e.proxyAuthorization ? 'other' : '-'), e.status]);
  const status = async (url: string, a: MultilegAgent) => {
    const res = await fetch(url, { dispatcher: a });
    await res.arrayBuffer();
    return res.status;
  };

  it('H5: one forwarded request carries the NEGOTIATE unasked, as curl --proxy-ntlm: 2 requests to the proxy, not 3, on one connection; the next goes bare on it', async () => {
    const { base, p, a } = await ntlmProxy({ proxyuser: 'proxypw' });
    expect(await status(`${base}/public/one`, a)).toBe(200);
    // Before: [['-', 407], ['negotiate', 407], ['authenticate', 200]].
    expect(wire(p)).toEqual([
      ['negotiate', 407],
      ['authenticate', 200],
    ]);
    expect(await status(`${base}/public/two`, a)).toBe(200);
    expect(wire(p, 2)).toEqual([['-', 200]]);
    expect(new Set(p.exchanges.map((e) => e.connectionId)).size).toBe(1);
  });

  it('H5/R4: 20 concurrent forwarded requests on a fresh proxy connection run one handshake: the others go after it, bare, on the authenticated connection', async () => {
    const { base, p, a } = await ntlmProxy({ proxyuser: 'proxypw' });
    const statuses = await Promise.all(Array.from({ length: 20 }, (_, i) => status(`${base}/public/${i}`, a)));
    expect(statuses).toEqual(Array(20).fill(200));
    // Before: a bare first request and its 407 too (22 exchanges). (The pool holds a fresh session to
    // one request until its first response; the ForwardProxy's own one-leader rule is the last test's.)
    expect(wire(p)).toEqual([['negotiate', 407], ['authenticate', 200], ...Array(19).fill(['-', 200])]);
    expect(new Set(p.exchanges.map((e) => e.connectionId)).size).toBe(1);
    expect(p.exchanges.every((e) => e.protocol === 'h2')).toBe(true);
  });

  it("H5: the NTLM proxy's handshake on a forwarding proxy connection is reported once for 20 concurrent requests (outcome session, 2 legs, the proxy account, the session); a wrong password is one failed report (failure refused)", async () => {
    const { base, a } = await ntlmProxy({ proxyuser: 'proxypw' });
    const statuses = await Promise.all(Array.from({ length: 20 }, (_, i) => status(`${base}/public/${i}`, a)));
    expect(statuses).toEqual(Array(20).fill(200));
    const [session] = a.sessions();
    // Before: no report at all.
    expect(a.handshakes()).toEqual([
      {
        proxy: true,
        origin: proxy!.origin,
        sessionId: session!.sessionId,
        protocol: 'h2',
        scheme: 'NTLM',
        legs: 2,
        outcome: 'session',
        authIdCarried: false,
        identity: 'proxyuser',
      },
    ]);
    expect(a.stats()).toMatchObject({ handshakes: 0, proxyHandshakes: 1, proxyLegs: 2, failedProxyHandshakes: 0 });
    const wrong = new MultilegAgent({
      negotiate: false,
      proxy: {
        uri: proxy!.origin,
        connect: { ca: proxy!.ca },
        credentials: { ...PROXY_ACCOUNT, password: 'wrong' },
        schemes: ['NTLM'],
      },
    });
    closers.push(() => wrong.destroy());
    const err = await fetch(`${base}/public/wrong`, { dispatcher: wrong }).catch((e: { cause?: Error }) => e.cause);
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect(wrong.handshakes()).toEqual([
      expect.objectContaining({ proxy: true, scheme: 'NTLM', legs: 2, outcome: 'failed', failure: 'refused' }),
    ]);
    expect(wrong.stats()).toMatchObject({ proxyHandshakes: 1, failedProxyHandshakes: 1 });
  });

  it('R4: a proxy that lets the NEGOTIATE through (it wants no authentication) proves nothing, and is not opened again: neither on that connection nor on a new one', async () => {
    const { base, other, p, a } = await ntlmProxy(undefined);
    expect(await status(`${base}/public/one`, a)).toBe(200);
    expect(await status(`${base}/public/two`, a)).toBe(200);
    // Another origin: another proxy connection, which goes bare too.
    expect(await status(`${other}/public/three`, a)).toBe(200);
    expect(wire(p)).toEqual([
      ['negotiate', 200],
      ['-', 200],
      ['-', 200],
    ]);
    expect(new Set(p.exchanges.map((e) => e.connectionId)).size).toBe(2);
  });

  it('R4: a refused AUTHENTICATE gives the lockout gate back: of 20 concurrent requests one sends a password, the others fail at once (no queue timeout) without one, and a new connection sends no NEGOTIATE', async () => {
    const { base, other, p, a } = await ntlmProxy({ proxyuser: 'another password' }, { queueTimeout: 2_000 });
    const errors = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        fetch(`${base}/public/${i}`, { dispatcher: a }).then(
          () => undefined,
          (e: { cause?: Error }) => e.cause,
        ),
      ),
    );
    for (const err of errors) expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect(errors.some((e) => e instanceof QueueTimeoutError)).toBe(false);
    expect(errors.filter((e) => e?.message.includes('refused proxy.credentials lately'))).toHaveLength(19);
    // Before: a bare first request, then the NEGOTIATE and the AUTHENTICATE.
    expect(wire(p)).toEqual([['negotiate', 407], ['authenticate', 407], ...Array(19).fill(['-', 407])]);
    // While refused, a new connection's first request goes bare: the gate comes before the NEGOTIATE.
    const from = p.exchanges.length;
    const err = await fetch(`${other}/public/x`, { dispatcher: a }).then(
      () => undefined,
      (e: { cause?: Error }) => e.cause,
    );
    expect(err?.message).toMatch(/refused proxy.credentials lately/);
    expect(wire(p, from)).toEqual([['-', 407]]);
  });

  it('H5/R1: requests sent side by side on one HTTP/2 proxy connection wait for the one that runs the handshake (one NEGOTIATE), then go bare on the authenticated connection; a wait is bounded by queueTimeout', async () => {
    server = await startReferenceServer({ mode: 'session' });
    proxy = await startReferenceProxy({ ntlmUsers: { proxyuser: 'proxypw' } });
    const origin = `http://localhost:${server.port}`;
    const run = async (queueTimeout: number, n: number, hold = 0) => {
      const resolved = new ProxyResolver(
        {
          uri: proxy!.origin,
          connect: { ca: proxy!.ca },
          negotiate: false,
          credentials: PROXY_ACCOUNT,
          schemes: ['NTLM'],
        },
        {},
      ).route(origin)!;
      const limits = { ...DEFAULT_LIMITS, queueTimeout };
      const forward = new ForwardProxy({
        route: resolved as Extract<typeof resolved, { kind: 'forward' }>,
        allowH2: true,
        limits,
        onRemoteHttp1: () => {},
        onUnusable: () => {},
        onClosing: () => {},
      });
      // The session's part: every leg a stream on the one HTTP/2 connection the ForwardProxy opened.
      const socket = await forward.socket;
      const session = h2Connect(proxy!.origin, { createConnection: () => socket });
      const send: SendOnProxy = (extra, classify, path) =>
        new Promise<LegResult>((resolve) => {
          const { host, ...rest } = extra;
          const stream = session.request({ ':method': 'GET', ':path': path, ':authority': host!, ...rest });
          stream.on('response', async (head) => {
            const code = Number(head[':status']);
            const headers = Object.fromEntries(
              Object.entries(head).filter(([k, v]) => !k.startsWith(':') && v !== undefined),
            ) as ResponseHeaders;
            // The leader's legs are held back `hold` ms, so that the others must wait that long.
            if (hold && 'proxy-authorization' in rest) await new Promise((r) => setTimeout(r, hold));
            const verdict = classify(code, headers);
            stream.resume();
            try {
              await verdict;
            } catch (error) {
              return resolve({ kind: 'failed', error: error as Error });
            }
            resolve(
              verdict === 'swallow'
                ? { kind: 'swallowed', status: code, headers }
                : { kind: 'delivered', status: code, headers, done: Promise.resolve() },
            );
          });
          stream.on('error', (error) => resolve({ kind: 'failed', error }));
          stream.end();
        });
      try {
        return await Promise.all(
          Array.from({ length: n }, (_, i) =>
            forward.send(
              { origin, method: 'GET', path: `/public/${i}`, ownProxyAuthorization: false },
              {},
              () => 'deliver',
              send,
              () => true,
              signalWaiter(undefined),
              () => {
                throw new Error('no 407 is held without proxy.deliver407');
              },
            ),
          ),
        );
      } finally {
        session.destroy();
      }
    };
    const results = await run(5_000, 20);
    expect(results.map((r) => (r.kind === 'failed' ? r.error.name : r.status))).toEqual(Array(20).fill(200));
    // Without one leader per connection each request opened a handshake of its own on the shared context.
    expect(wire(proxy)).toEqual([['negotiate', 407], ['authenticate', 200], ...Array(19).fill(['-', 200])]);
    // A handshake slower than queueTimeout: the waiting requests fail with QueueTimeoutError, nothing hangs.
    const slow = await run(100, 3, 400);
    expect(slow.map((r) => (r.kind === 'failed' ? r.error.constructor : r.status))).toEqual([
      200,
      QueueTimeoutError,
      QueueTimeoutError,
    ]);
  });
});

describe('a proxy identity whose credentials live outside the agent (S6/H5, reference proxy)', () => {
  const PROXY_ACCOUNT = { username: 'proxyuser', password: 'proxypw' };
  /**
   * `mechanism` standing in for Negotiate with the ambient Kerberos ticket: `held` is what the ccache
   * would answer about the identity the proxy's handshake proved; `asked` records each question.
   */
  function holding(mechanism: Mechanism) {
    const watch = { held: true as boolean | undefined, asked: [] as string[] };
    const wrapped: Mechanism = {
      ...mechanism,
      holdsCredentials: (identity: string) => {
        watch.asked.push(identity);
        return watch.held;
      },
    };
    return { watch, wrapped };
  }
  const status = async (url: string) => {
    const res = await fetch(url, { dispatcher: agent! });
    await res.arrayBuffer();
    return res.status;
  };

  it("S6/H5: forwarding-proxy connections (two origins, one proxy) retire once the proxy identity no longer holds its credentials: each origin's next request authenticates to the proxy on a new connection; asked at most once a second per origin", async () => {
    server = await startReferenceServer({ mode: 'session' });
    proxy = await startReferenceProxy({ ntlmUsers: { proxyuser: 'proxypw' } });
    const { watch, wrapped } = holding(ntlmMechanism(PROXY_ACCOUNT));
    agent = new MultilegAgent({
      negotiate: false,
      proxy: { uri: proxy.origin, connect: { ca: proxy.ca }, schemes: ['NTLM'], mechanisms: [wrapped] },
    });
    const urls = [`http://localhost:${server.port}/public/a`, `http://127.0.0.1:${server.port}/public/b`];
    const p = proxy;
    const connections = () => new Set(p.exchanges.map((e) => e.connectionId)).size;
    for (const url of urls) expect(await status(url)).toBe(200);
    expect(connections()).toBe(2);
    // Still held, or cannot tell: the connections serve on, bare.
    for (const answer of [true, undefined]) {
      watch.held = answer;
      await sleep(TICKET_RECHECK_MS + 50);
      for (const url of urls) expect(await status(url)).toBe(200);
    }
    expect(connections()).toBe(2);
    expect(watch.asked.length).toBeGreaterThan(0);
    expect(new Set(watch.asked).size).toBe(1);
    // Gone: neither origin's next request rides the connection the proxy holds as that identity
    // (was: both did, bare, for as long as the proxy kept them open); each authenticates anew.
    watch.held = false;
    await sleep(TICKET_RECHECK_MS + 50);
    const from = p.exchanges.length;
    for (const url of urls) expect(await status(url)).toBe(200);
    watch.held = true; // (the next check's answer: the new identity's, in the ccache)
    expect(p.exchanges.slice(from).map((e) => [e.proxyNtlm ?? '-', e.status])).toEqual([
      ['negotiate', 407],
      ['authenticate', 200],
      ['negotiate', 407],
      ['authenticate', 200],
    ]);
    expect(connections()).toBe(4);
    // Asked at most once a second per origin, whatever the requests: not once per request.
    const asks = watch.asked.length;
    const since = Date.now();
    for (let i = 0; i < 20; i++) expect(await status(urls[i % 2]!)).toBe(200);
    const seconds = Math.floor((Date.now() - since) / TICKET_RECHECK_MS);
    expect(watch.asked.length - asks).toBeLessThanOrEqual(2 * (1 + seconds));
  });

  it("S6/H5: the agent's forwarding-proxy handshake whose caller aborted after its AUTHENTICATE went retires its connection (the proxy may hold it as that identity, unrecorded): once the credentials are gone no request rides it (review r74)", async () => {
    server = await startReferenceServer({ mode: 'session' });
    proxy = await startReferenceProxy({ ntlmUsers: { proxyuser: 'proxypw' } });
    const { watch, wrapped } = holding(ntlmMechanism(PROXY_ACCOUNT));
    agent = new MultilegAgent({
      negotiate: false,
      proxy: { uri: proxy.origin, connect: { ca: proxy.ca }, schemes: ['NTLM'], mechanisms: [wrapped] },
    });
    const base = `http://localhost:${server.port}`;
    const p = proxy;
    // The proxy answers the AUTHENTICATE ("NTLMSSP\0" type 3) 300 ms after it comes; the caller goes
    // as it comes (at a fixed 100 ms, a loaded machine had the caller gone before it was sent).
    const gone = new AbortController();
    p.options.delayMs = (r) => {
      if (!r.proxyAuthorization?.startsWith('NTLM TlRMTVNTUAADAAAA')) return 0;
      setImmediate(() => gone.abort(new Error('went away')));
      return 300;
    };
    await expect(fetch(`${base}/public/aborted`, { dispatcher: agent, signal: gone.signal })).rejects.toThrow();
    await sleep(400);
    p.options.delayMs = undefined;
    // The proxy holds the connection as proxyuser now. Its credentials leave the ccache.
    watch.held = false;
    await sleep(TICKET_RECHECK_MS + 50);
    const from = p.exchanges.length;
    expect(await status(`${base}/public/after`)).toBe(200);
    const after = p.exchanges.slice(from);
    const first = p.exchanges[0]!.connectionId;
    // Before: the request went bare on the aborted handshake's connection, let through as proxyuser.
    expect(after.map((e) => [e.connectionId === first, e.proxyNtlm ?? '-', e.status])).toEqual([
      [false, 'negotiate', 407],
      [false, 'authenticate', 200],
    ]);
  });

  it('S6/H5: a CONNECT tunnel retires once the proxy identity it was made as no longer holds its credentials: the next request goes through a new CONNECT', async () => {
    server = await startReferenceServer({ mode: 'session' });
    proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    const { watch, wrapped } = holding(basicMechanism(PROXY_ACCOUNT));
    agent = new MultilegAgent({
      negotiate: false,
      connect: { ca: CA_CERT },
      proxy: { uri: proxy.origin, connect: { ca: proxy.ca }, schemes: ['Basic'], mechanisms: [wrapped] },
    });
    const url = `${server.origin}/public/t`;
    const p = proxy;
    const connects = () =>
      p.exchanges.filter((e) => e.method === 'CONNECT').map((e) => [e.status, e.proxyAuthorization]);
    expect(await status(url)).toBe(200);
    for (const answer of [true, undefined]) {
      watch.held = answer;
      await sleep(TICKET_RECHECK_MS + 50);
      expect(await status(url)).toBe(200);
    }
    expect(connects()).toEqual([
      [407, false],
      [200, true],
    ]);
    expect(new Set(watch.asked)).toEqual(new Set(['proxyuser']));
    watch.held = false;
    await sleep(TICKET_RECHECK_MS + 50);
    expect(await status(url)).toBe(200);
    // Was: the tunnel made as that identity carried it. The new tunnel's CONNECT carries the Basic
    // the proxy asked for on the first one, unasked (as curl -U sends it), and is let through.
    expect(connects().slice(2)).toEqual([[200, true]]);
  });

  it("S6/H5: a CONNECT admitted as alice that the proxy answers after bob's (the identity switched meanwhile, as a ccache's is) retires its own tunnel, not bob's: the next request goes through bob's", async () => {
    const { lab, via } = await ambientProxyLab(2500);
    await via(lab.a, '/public/warm');
    const busy = via(lab.a, '/public/busy');
    lab.hold = true;
    const late = via(lab.a, '/public/late');
    await until(() => lab.held);
    // The ccache now holds bob's ticket: the next tunnel is bob's, proved while alice's CONNECT is held.
    lab.ccache = BOB_P;
    const bobs = await via(lab.a, '/public/bob');
    await late;
    await busy;
    // Was: alice's late 200 retired bob's tunnel and kept hers, so this went to the proxy as alice.
    expect(await via(lab.a, '/public/after')).toBe(bobs);
    const p = proxy!;
    expect(p.exchanges.filter((e) => e.method === 'CONNECT' && e.status === 200)).toHaveLength(3);
  });

  it("S6/H5: the proxy's order is the agent's, not one origin's: a CONNECT for origin B admitted as alice and answered after bob was proved for origin A retires its own tunnel, and B's next request goes to the proxy as bob", async () => {
    const { lab, via } = await ambientProxyLab(2500);
    await via(lab.a, '/public/warm');
    lab.hold = true;
    const lateB = via(lab.b, '/public/late');
    await until(() => lab.held);
    // The ccache now holds bob's ticket: A's next tunnel is bob's, proved while B's alice CONNECT is held.
    lab.ccache = BOB_P;
    const busyA = via(lab.a, '/public/busy');
    await via(lab.a, '/public/bob');
    const late = await lateB;
    await busyA;
    // Was: pool B kept its own record, took alice's late 200 for the newest there, and kept her
    // tunnel: B's requests went on through the proxy as alice. Now that tunnel retires (the late
    // request itself moves to a new one, bob's), and B's next request takes that one.
    expect(await via(lab.b, '/public/after')).toBe(late);
    expect(lab.connects.filter((c) => c.startsWith('B')).at(-1)).toBe('B bob');
  });

  it("S6/H5: once a handshake for origin A proved bob at the proxy, origin B's tunnel held as alice retires before B's next request", async () => {
    const { lab, via } = await ambientProxyLab(1500);
    await via(lab.a, '/public/warm');
    await via(lab.b, '/public/warm');
    lab.ccache = BOB_P;
    const busy = via(lab.a, '/public/busy');
    await via(lab.a, '/public/bob');
    await busy;
    expect(lab.connects.filter((c) => c.endsWith('bob'))).toEqual(['A bob']);
    // Was: B's alice tunnel (idle, kept alive) carried B's next request: to the proxy as alice.
    await via(lab.b, '/public/after');
    expect(lab.connects.filter((c) => c.startsWith('B') && c !== 'B bare')).toEqual(['B alice', 'B bob']);
  });
});
