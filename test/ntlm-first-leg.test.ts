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
import { MultilegAgent } from '../src/index.ts';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
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
