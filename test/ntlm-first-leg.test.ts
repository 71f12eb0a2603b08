/**
 * NTLM as the agent's only scheme (`schemes: ['NTLM']`, the CLI's --ntlm): at an origin nothing is
 * known of, NEGOTIATE goes on the first request, as curl --ntlm sends it — 2 legs where a bare
 * first request made 3 — with the draft's machinery unchanged (queueing, Auth-ID, Persistent-Auth,
 * HTTP_1_1_REQUIRED), and nothing more sent to a server that does not offer NTLM.
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fetch } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CleartextCredentialsError, MultilegAgent, type SchemeName } from '../src/index.ts';
import {
  CA_CERT,
  type ReferenceProxy,
  type ReferenceProxyOptions,
  type ReferenceServer,
  startReferenceProxy,
  startReferenceServer,
} from '../src/reference-server/index.ts';
import { runCli } from './cli-helpers.ts';
import { ALICE, get, many, type Rig, rig, SCRIPTED_NTLM_CHALLENGE } from './helpers.ts';

const NTLM_ONLY = { schemes: ['NTLM'], negotiate: false } as const;
/** The NTLM message type an Authorization header carries (0: none). */
const ntlmType = (h: Readonly<Record<string, unknown>>): number => {
  const v = h.authorization;
  if (typeof v !== 'string' || !v.startsWith('NTLM ')) return 0;
  return Buffer.from(v.slice(5), 'base64')[8] ?? -1;
};

let r: Rig | undefined;
afterEach(async () => {
  await r?.close();
  r = undefined;
});

describe('NTLM the only scheme: NEGOTIATE on the first request (curl --ntlm)', () => {
  it('C1 C3 C5 C10: over HTTP/2 a POST takes 2 legs (NEGOTIATE, AUTHENTICATE with the Auth-ID and the body); the burst behind it queues', async () => {
    // The legs are held a little, so that the burst starts while the handshake runs.
    r = await rig(
      { mode: 'session', schemes: ['NTLM'], faults: { delayMs: (q) => (q.headers.authorization ? 30 : 0) } },
      NTLM_ONLY,
    );
    const body = 'payload-'.repeat(100);
    const leading = get(r, '/auth/first', { method: 'POST', body });
    await once(r.server, 'request');
    const [first, ...rest] = await Promise.all([
      leading,
      ...Array.from({ length: 5 }, (_, i) => get(r!, `/auth/q${i}`)),
    ]);
    expect(first).toMatchObject({
      status: 200,
      body: { user: 'EXAMPLE\\alice', protocol: 'h2', bodyLength: body.length },
    });
    expect(rest.every((x) => x.status === 200 && x.body.user === 'EXAMPLE\\alice')).toBe(true);
    const legs = r.server.exchanges.filter((e) => e.path === '/auth/first');
    expect(legs.map((e) => [e.status, ntlmType(e.requestHeaders)])).toEqual([
      [401, 1],
      [200, 3],
    ]);
    // C3: the Auth-ID of the CHALLENGE goes back on the AUTHENTICATE.
    expect(legs[0]!.authIdSent).toBeTruthy();
    expect(legs[1]!.authIdReceived).toBe(legs[0]!.authIdSent);
    // C1: nothing else reached the wire before the handshake ended; then each queued request once, bare.
    expect(r.server.exchanges.slice(0, 2)).toEqual(legs);
    expect(r.server.exchanges.slice(2).map((e) => [e.status, ntlmType(e.requestHeaders)])).toEqual(
      Array(5).fill([200, 0]),
    );
    expect(new Set(r.server.exchanges.map((e) => e.sessionId)).size).toBe(1);
    expect(r.agent.handshakes().map((h) => [h.scheme, h.legs, h.outcome, h.authIdCarried])).toEqual([
      ['NTLM', 2, 'session', true],
    ]);
  });

  it('C4 C5: a server in per-request mode (Persistent-Auth: false on the 200): 2 legs, and NTLM still authenticates the session (C5)', async () => {
    r = await rig({ mode: 'per-request', schemes: ['NTLM'] }, NTLM_ONLY);
    expect((await get(r, '/auth/one')).status).toBe(200);
    const first = r.server.exchanges;
    expect(first.map((e) => [e.status, ntlmType(e.requestHeaders)])).toEqual([
      [401, 1],
      [200, 3],
    ]);
    expect(first[1]!.responseHeaders['persistent-auth']).toBe('false');
    expect(r.agent.handshakes().map((h) => [h.legs, h.outcome])).toEqual([[2, 'session']]);
    r.server.reset();
    expect((await get(r, '/auth/two')).status).toBe(200);
    // The server wants each request authenticated: the bare request meets a 401 and authenticates again (T4).
    expect(r.server.exchanges.map((e) => [e.status, ntlmType(e.requestHeaders)])).toEqual([
      [401, 0],
      [401, 1],
      [200, 3],
    ]);
  });

  it.each(['rst', 'goaway'] as const)(
    'H2: an IIS that refuses the first leg with HTTP_1_1_REQUIRED (%s): NEGOTIATE leads again over HTTP/1.1, 2 legs there',
    async (via) => {
      r = await rig({ mode: 'iis', iisVia: via, schemes: ['NTLM'] }, NTLM_ONLY);
      const res = await get(r, '/auth/iis', { method: 'POST', body: 'x'.repeat(500) });
      expect(res).toMatchObject({ status: 200, body: { protocol: 'http/1.1', bodyLength: 500 } });
      expect(r.server.exchanges.map((e) => [e.protocol, e.status, ntlmType(e.requestHeaders)])).toEqual([
        ['h2', null, 1],
        ['http/1.1', 401, 1],
        ['http/1.1', 200, 3],
      ]);
    },
  );

  it('H1: a legacy HTTP/2 server that loses NTLM between streams: the handshake moves to one HTTP/1.1 connection, remembered', async () => {
    r = await rig({ mode: 'legacy', schemes: ['NTLM'] }, NTLM_ONLY);
    const res = await get(r, '/auth/legacy');
    expect(res).toMatchObject({ status: 200, body: { protocol: 'http/1.1' } });
    expect(r.server.exchanges.map((e) => [e.protocol, e.status, ntlmType(e.requestHeaders)])).toEqual([
      ['h2', 401, 1],
      ['h2', 401, 3],
      ['http/1.1', 401, 1],
      ['http/1.1', 200, 3],
    ]);
    r.server.reset();
    expect((await get(r, '/auth/again')).status).toBe(200);
    expect(r.server.exchanges.map((e) => [e.protocol, ntlmType(e.requestHeaders)])).toEqual([['http/1.1', 0]]);
  });

  it("T2: a server that offers only Basic gets one request, whose 401 is the caller's answer; later requests go bare", async () => {
    r = await rig({ mode: 'session', schemes: ['Basic'] }, NTLM_ONLY);
    const res = await fetch(`${r.server.origin}/auth/basic`, { dispatcher: r.agent });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toMatch(/^Basic /);
    await res.arrayBuffer();
    expect(r.server.exchanges.map((e) => [e.status, ntlmType(e.requestHeaders)])).toEqual([[401, 1]]);
    // The server took no part in NEGOTIATE: nothing more is led unasked here.
    const again = await Promise.all([1, 2, 3].map((i) => get(r!, `/auth/b${i}`)));
    expect(again.map((x) => x.status)).toEqual([401, 401, 401]);
    expect(r.server.exchanges.slice(1).map((e) => [e.status, ntlmType(e.requestHeaders)])).toEqual(
      Array(3).fill([401, 0]),
    );
    expect(r.agent.handshakes()).toEqual([]);
  });

  it('T2: with a second scheme allowed the origin may want it: the first request goes bare (3 legs for NTLM)', async () => {
    r = await rig({ mode: 'session', schemes: ['NTLM'] }, { schemes: ['NTLM', 'Basic'], negotiate: false });
    expect((await get(r, '/auth/two-schemes')).status).toBe(200);
    expect(r.server.exchanges.map((e) => [e.status, ntlmType(e.requestHeaders)])).toEqual([
      [401, 0],
      [401, 1],
      [200, 3],
    ]);
  });

  it('R4: a wrong password: NEGOTIATE carries none, and the AUTHENTICATE that does reaches the server once per burst', async () => {
    r = await rig({ mode: 'iis', schemes: ['NTLM'] }, { ...NTLM_ONLY, credentials: { ...ALICE, password: 'wrong' } });
    const results = await many(r, 10);
    expect(results.map((x) => x.status)).toEqual(Array(10).fill(401));
    const authenticates = r.server.exchanges.filter((e) => ntlmType(e.requestHeaders) === 3);
    expect(authenticates).toHaveLength(1);
    expect(r.server.exchanges.filter((e) => e.outcome === 'rejected')).toHaveLength(1);
    expect(r.agent.handshakes().map((h) => [h.outcome, h.failure])).toEqual([['failed', 'refused']]);
  });

  it('S1 S4: an origin the agent does not trust, or trusts only over https (http://), gets no NEGOTIATE', async () => {
    const s = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    const plain = await startReferenceServer({ mode: 'session', schemes: ['NTLM'], cleartext: true });
    const a = new MultilegAgent({
      credentials: ALICE,
      connect: { ca: s.ca },
      trustedOrigins: ['https://elsewhere.example', plain.origin.replace('http:', 'https:')],
      ...NTLM_ONLY,
    });
    try {
      const res = await fetch(`${s.origin}/auth/untrusted`, { dispatcher: a });
      expect(res.status).toBe(401);
      await res.arrayBuffer();
      await fetch(`${plain.origin}/auth/cleartext`, { dispatcher: a }).then(
        (x) => x.arrayBuffer(),
        () => undefined,
      );
      for (const e of [...s.exchanges, ...plain.exchanges]) expect(ntlmType(e.requestHeaders)).toBe(0);
      expect(s.exchanges).toHaveLength(1);
    } finally {
      await a.destroy();
      await s.close();
      await plain.close();
    }
  });
  it('T2: a server that ignores the unasked NEGOTIATE (a bare NTLM challenge back) is answered as a bare request would be: 200, not its 401', async () => {
    // The first NEGOTIATE meets a plain challenge, as from a server that reads no Authorization
    // before it has challenged; a bare first request would have authenticated here.
    const seen: number[] = [];
    const server = createServer((req, res) => {
      const type = ntlmType(req.headers);
      seen.push(type);
      if (type === 1 && seen.length > 1)
        return void res.writeHead(401, { 'www-authenticate': `NTLM ${SCRIPTED_NTLM_CHALLENGE}` }).end();
      if (type === 3) return void res.end('ok');
      res.writeHead(401, { 'www-authenticate': 'NTLM' }).end();
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const a = new MultilegAgent({ credentials: ALICE, trustedOrigins: [origin], ...NTLM_ONLY });
    try {
      const res = await fetch(`${origin}/ignored`, { dispatcher: a });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('ok');
      expect(seen).toEqual([1, 1, 3]);
    } finally {
      await a.destroy();
      server.closeAllConnections();
      server.close();
    }
  });
});

describe('NTLM the only scheme, through a proxy: the opening reaches the origin (forwarded or tunnelled)', () => {
  let server: ReferenceServer | undefined;
  let proxy: ReferenceProxy | undefined;
  let agent: MultilegAgent | undefined;
  afterEach(async () => {
    await agent?.destroy().catch(() => {});
    await proxy?.close();
    await server?.close();
    agent = proxy = server = undefined;
  });

  /** A reference server behind the reference proxy; `schemes`: the agent's (NTLM alone, or NTLM and Basic). */
  async function behindProxy(schemes: readonly SchemeName[], p: ReferenceProxyOptions = {}, trustHttp = true) {
    server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    proxy = await startReferenceProxy(p);
    const plain = `http://localhost:${server.port}`;
    agent = new MultilegAgent({
      credentials: ALICE,
      negotiate: false,
      schemes: [...schemes],
      connect: { ca: CA_CERT },
      // The plain-http target is trusted explicitly (S4), or only over https.
      trustedOrigins: [trustHttp ? plain : plain.replace('http:', 'https:'), server.origin],
      proxy: {
        uri: proxy.origin,
        connect: { ca: proxy.ca },
        credentials: { username: 'proxyuser', password: 'proxypw' },
      },
    });
    return { plain, server, proxy, agent };
  }

  it.each([
    ['NTLM alone', ['NTLM'], [1, 3]],
    ['NTLM and Basic', ['NTLM', 'Basic'], [0, 1, 3]],
  ] as const)(
    'H5/H4: an http: origin through a forwarding proxy (%s): the NEGOTIATE goes in the forwarded Authorization, never in Proxy-Authorization',
    async (_, schemes, types) => {
      const { plain, server: s, proxy: p, agent: a } = await behindProxy(schemes);
      const res = await fetch(`${plain}/auth/forwarded`, { dispatcher: a });
      expect(res.status).toBe(200);
      expect(((await res.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
      // One request, 2 wire requests (3 with a second scheme allowed), each forwarded by the proxy.
      expect(s.exchanges.map((e) => ntlmType(e.requestHeaders))).toEqual(types);
      expect(p.exchanges.map((e) => [e.method, e.authorization, e.proxyAuthorization])).toEqual(
        types.map((t) => ['GET', t !== 0, false]),
      );
      expect(s.exchanges.every((e) => e.requestHeaders['proxy-authorization'] === undefined)).toBe(true);
      // Without Proxy-support the proxy does not vouch for the session (H4): per-request, the legs as many.
      expect(a.handshakes().map((h) => [h.scheme, h.legs, h.outcome])).toEqual([['NTLM', 2, 'per-request']]);
    },
  );

  it("H5/H4: through a forwarding proxy with Proxy-support and Basic of its own: the proxy's 407 is answered, the opening kept (3 proxy exchanges, 2 at the origin), the session authenticated once", async () => {
    const {
      plain,
      server: s,
      proxy: p,
      agent: a,
    } = await behindProxy(['NTLM'], {
      proxySupport: true,
      basicUsers: { proxyuser: 'proxypw' },
    });
    for (const path of ['/auth/one', '/auth/two'])
      expect((await fetch(`${plain}${path}`, { dispatcher: a })).status).toBe(200);
    expect(p.exchanges.map((e) => [e.status, e.authorization, e.proxyAuthorization])).toEqual([
      [407, true, false],
      [401, true, true],
      [200, true, true],
      [200, false, true],
    ]);
    expect(s.exchanges.map((e) => [e.path, e.status, ntlmType(e.requestHeaders)])).toEqual([
      ['/auth/one', 401, 1],
      ['/auth/one', 200, 3],
      ['/auth/two', 200, 0],
    ]);
    // The origin's handshake (the proxy's Basic is reported too, with `proxy`).
    expect(
      a
        .handshakes()
        .filter((h) => !h.proxy)
        .map((h) => [h.legs, h.outcome]),
    ).toEqual([[2, 'session']]);
  });

  it('S4: an http: origin trusted only over https gets no NEGOTIATE through the forwarding proxy (the proxy sees none either): its 401 is a CleartextCredentialsError', async () => {
    const { plain, server: s, proxy: p, agent: a } = await behindProxy(['NTLM'], {}, false);
    const err = await fetch(`${plain}/auth/untrusted`, { dispatcher: a }).catch((e: { cause?: Error }) => e.cause);
    expect(err).toBeInstanceOf(CleartextCredentialsError);
    expect(p.exchanges.map((e) => [e.status, e.authorization])).toEqual([[401, false]]);
    expect(s.exchanges.map((e) => ntlmType(e.requestHeaders))).toEqual([0]);
  });

  it.each([
    ['NTLM alone', ['NTLM'], [1, 3]],
    ['NTLM and Basic', ['NTLM', 'Basic'], [0, 1, 3]],
  ] as const)(
    'H5: an https: origin through a CONNECT tunnel (%s): the CONNECT carries nothing of the origin, the NEGOTIATE goes inside the tunnel on the first request',
    async (_, schemes, types) => {
      const { server: s, proxy: p, agent: a } = await behindProxy(schemes, { basicUsers: { proxyuser: 'proxypw' } });
      const res = await fetch(`${s.origin}/auth/tunnelled`, { dispatcher: a });
      expect(res.status).toBe(200);
      expect(((await res.json()) as { user: string; protocol: string }).protocol).toBe('h2');
      expect(p.exchanges.map((e) => [e.method, e.status, e.authorization, e.proxyAuthorization])).toEqual([
        ['CONNECT', 407, false, false],
        ['CONNECT', 200, false, true],
      ]);
      expect(s.exchanges.map((e) => ntlmType(e.requestHeaders))).toEqual(types);
      // Over a tunnel the session is ours alone: session mode without Proxy-support. (The origin's
      // handshake: the CONNECT's Basic is reported too, with `proxy`.)
      expect(
        a
          .handshakes()
          .filter((h) => !h.proxy)
          .map((h) => [h.scheme, h.legs, h.outcome]),
      ).toEqual([['NTLM', 2, 'session']]);
    },
  );
});

describe('the CLI: --ntlm -u takes 2 wire requests, as curl --ntlm', () => {
  let server: ReferenceServer;
  let dir: string;
  beforeAll(async () => {
    server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    dir = mkdtempSync(join(tmpdir(), 'multileg-ntlm-first-'));
    writeFileSync(join(dir, 'ca.pem'), server.ca);
  });
  afterAll(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('C5: --ntlm -v: the legs show NEGOTIATE on the first request, then AUTHENTICATE; 2 on the wire', async () => {
    const url = `${server.origin}/auth/cli-ntlm`;
    const out = await runCli(['--ntlm', '-v', '-u', 'EXAMPLE\\alice:alicepw', '--cacert', join(dir, 'ca.pem'), url]);
    expect(out.code, out.stderr).toBe(0);
    expect(JSON.parse(out.stdout)).toMatchObject({ user: 'EXAMPLE\\alice', path: '/auth/cli-ntlm' });
    const legs = out.stderr.split('\n').filter((l) => /^[<>] /.test(l));
    expect(legs).toHaveLength(4);
    expect(legs[0]).toMatch(/^> GET \/auth\/cli-ntlm \(Authorization: NTLM …, Auth-ID: no\)/);
    expect(legs[1]).toMatch(/^< 401 offers NTLM \(Auth-ID\)/);
    expect(legs[2]).toMatch(/^> GET \/auth\/cli-ntlm \(Authorization: NTLM …, Auth-ID: yes\)/);
    expect(legs[3]).toMatch(/^< 200/);
    expect(out.stderr).toMatch(/NTLM handshake on session \S+ \(HTTP\/2\): 2 leg\(s\)/);
    expect(out.stderr).not.toContain('alicepw');
    const wire = server.exchanges.filter((e) => e.path === '/auth/cli-ntlm');
    expect(wire.map((e) => [e.status, ntlmType(e.requestHeaders)])).toEqual([
      [401, 1],
      [200, 3],
    ]);
  });
});
