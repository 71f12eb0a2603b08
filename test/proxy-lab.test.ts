/**
 * Authenticating proxies against real ones (H5): Squid 5 (Basic; Negotiate through
 * negotiate_kerberos_auth) and Apache httpd as a forward proxy with mod_auth_gssapi (NTLM through
 * gss-ntlmssp, with a real password check) — CONNECT tunnels then TLS + ALPN to Apache, and plain-http
 * targets forwarded in absolute form. Proxy credentials are separate from origin credentials.
 */

import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fetch, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { forCli } from '../src/cli/explain.ts';
import {
  type HandshakeReport,
  LEG_CHANNEL,
  type LegEvent,
  MultilegAgent,
  type MultilegAgentOptions,
  PROXY_UNANSWERED_CHANNEL,
  type ProxyUnansweredEvent,
} from '../src/index.ts';
import { ProxyAuthenticationError } from '../src/proxy/errors.ts';
import { TICKET_RECHECK_MS } from '../src/session/origin-memory.ts';
import { type Lab, requirePeer, run, startLab } from './lab/index.ts';

const havePeers = requirePeer('kdc', 'apache', 'gssntlmssp', 'squid', 'kerberos-addon');
/** A ccache of the agent's own (negotiate.ccache) needs the GSS-API binding. */
const haveBinding = requirePeer('gss-binding');

const ALICE_BASIC = { username: 'alice', password: 'alicepw' };
const ALICE_NTLM = { username: 'EXAMPLE\\alice', password: 'alicepw' };
const BOB_NTLM = { username: 'EXAMPLE\\bob', password: 'bobpw' };

describe.skipIf(!havePeers)('authenticating proxies: Squid and Apache (real peers)', () => {
  let lab: Lab;
  let restoreEnv: () => void;
  const agents: MultilegAgent[] = [];
  const agent = (o: Partial<MultilegAgentOptions>) => {
    const a = new MultilegAgent({ connect: { ca: lab.apache!.ca }, trustedOrigins: [lab.apache!.origin], ...o });
    agents.push(a);
    return a;
  };
  const squidLog = (name = 'squid') =>
    readFileSync(join(lab.dir, name, 'logs/access.log'), 'utf8')
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => {
        const f = l.trim().split(/\s+/);
        return { result: f[3], method: f[5], url: f[6], user: f[7] };
      });
  /** Apache's access-log lines for one request line target (the proxy vhost shares the log). */
  const apacheLog = (method: string, target: string) =>
    readFileSync(lab.apache!.accessLog, 'utf8')
      .split('\n')
      .filter((l) => l.includes(`"${method} ${target} `))
      .map((l) => {
        const m = /" (\d{3}) (\d+) proto=(\S+) user=(\S*)/.exec(l);
        return { status: Number(m?.[1]), port: m?.[2], user: m?.[4] };
      });
  async function settled<T>(read: () => T[], count: number): Promise<T[]> {
    for (let i = 0; i < 150 && read().length < count; i++) await new Promise((r) => setTimeout(r, 20));
    return read();
  }
  const cause = (p: Promise<unknown>) =>
    p.then(
      () => undefined,
      (e: { cause?: Error }) => e.cause,
    );

  beforeAll(async () => {
    lab = await startLab({ apache: true, apacheProxy: true, squid: true, negotiateSquid: true });
    // alice's ticket cache; no NTLM_USER_FILE, else GSS would quietly use gss-ntlmssp's first user.
    restoreEnv = lab.applyEnv({ NTLM_USER_FILE: undefined });
  }, 60_000);
  afterAll(async () => {
    await Promise.all(agents.map((a) => a.destroy()));
    restoreEnv?.();
    await lab?.stop();
  });

  it('H5: CONNECT through Squid with Basic, then TLS + ALPN h2 to the origin', async () => {
    const a = agent({ proxy: { uri: lab.squid!.origin, credentials: ALICE_BASIC, schemes: ['Basic'] } });
    const res = await fetch(`${lab.apache!.origin}/public/`, { dispatcher: a });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-protocol')).toBe('HTTP/2.0');
    expect(await res.text()).toBe('hello from /public\n');
    await a.close();
    const tunnels = await settled(() => squidLog().filter((l) => l.method === 'CONNECT' && l.user === 'alice'), 1);
    expect(tunnels[0]).toMatchObject({ result: 'TCP_TUNNEL/200', url: `localhost:${lab.apache!.tlsPort}` });
  });

  it('H5: a wrong Basic password at Squid fails with ProxyAuthenticationError, no secret in it', async () => {
    const a = agent({
      proxy: { uri: lab.squid!.origin, credentials: { username: 'alice', password: 'wrong-pw' }, schemes: ['Basic'] },
    });
    const err = await cause(fetch(`${lab.apache!.origin}/public/`, { dispatcher: a }));
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect((err as ProxyAuthenticationError).code).toBe('MULTILEG_PROXY_AUTH');
    expect(err!.message).toContain(lab.squid!.origin);
    expect(err!.message).not.toContain('wrong-pw');
  });

  it('H5/M5: no Kerberos ticket, proxy credentials: Squid (Negotiate, Basic) is answered with its next scheme, not NTLM inside Negotiate', async () => {
    const a = agent({
      negotiate: { ccache: `FILE:${lab.dir}/no-such-ccache` },
      // (The lab's NTLM helper is Squid's ntlm_fake_auth, whose CHALLENGE is malformed.)
      proxy: { uri: lab.squid!.origin, credentials: ALICE_BASIC, schemes: ['Negotiate', 'Basic'] },
    });
    // Before: NTLM inside Negotiate, which Squid's Kerberos helper refuses: ProxyAuthenticationError.
    const res = await fetch(`${lab.apache!.origin}/public/`, { dispatcher: a });
    expect(res.status).toBe(200);
    await res.arrayBuffer();
    const tunnels = await settled(
      () => squidLog().filter((l) => l.method === 'CONNECT' && l.result === 'TCP_TUNNEL/200'),
      1,
    );
    expect(tunnels.length).toBeGreaterThan(0);
  });

  it.each(['tunnelled', 'forwarded'] as const)(
    "T2/H5: Squid's NTLM (ntlm_fake_auth, whose CHALLENGE cannot be read) falls through to its Basic with proxy.credentials and the default schemes, no Kerberos ticket (%s): a request, then a burst of 6 on new connections, all 200, one NTLM handshake in all (failed, remembered for the proxy)",
    async (route) => {
      const a = agent({
        negotiate: { ccache: `FILE:${lab.dir}/no-such-ccache` },
        // HTTP/1.1 to the origin: the burst needs connections (tunnels) of its own.
        allowH2: false,
        proxy: { uri: lab.squid!.origin, credentials: ALICE_BASIC },
      });
      const reports: HandshakeReport[] = [];
      a.onHandshake((r) => reports.push(r));
      // (A query of its own: other tests read Squid's log for /public/.)
      const url = `${route === 'tunnelled' ? lab.apache!.origin : lab.apache!.cleartextOrigin}/public/?t2`;
      const get = async () => {
        const res = await fetch(url, { dispatcher: a });
        await res.arrayBuffer();
        return res.status;
      };
      // Before: every request failed with MULTILEG_INVALID_TOKEN ("sent an invalid NTLM message").
      expect(await get()).toBe(200);
      expect(await Promise.all(Array.from({ length: 6 }, get))).toEqual(Array(6).fill(200));
      const proxy = reports.filter((r) => r.proxy);
      expect(proxy.filter((r) => r.scheme === 'NTLM').map((r) => [r.outcome, r.failure])).toEqual([
        ['failed', 'error'],
      ]);
      expect(proxy.filter((r) => r.outcome === 'failed')).toHaveLength(1);
      expect(proxy.filter((r) => r.scheme === 'Basic' && r.outcome === 'per-request').length).toBeGreaterThan(0);
    },
  );

  it("T2: proxy.schemes ['NTLM'] (--proxy-ntlm) at Squid, whose NTLM CHALLENGE cannot be read: ProxyAuthenticationError naming it and proxy.schemes; the next tunnel sends no NEGOTIATE, and its error names the schemes Squid offers (--proxy-negotiate or --proxy-basic)", async () => {
    const a = agent({ proxy: { uri: lab.squid!.origin, credentials: ALICE_BASIC, schemes: ['NTLM'] } });
    const legs: LegEvent[] = [];
    const onLeg = (m: unknown) => legs.push(m as LegEvent);
    subscribe(LEG_CHANNEL, onLeg);
    try {
      const first = await cause(fetch(`${lab.apache!.origin}/public/`, { dispatcher: a }));
      // Before: InvalidTokenError, "the proxy or something in between is misbehaving", nothing else.
      expect(first).toBeInstanceOf(ProxyAuthenticationError);
      expect(first!.message).toContain("the proxy's NTLM challenge could not be read");
      expect(first!.message).toContain('in proxy.schemes');
      expect(forCli(first!.message)).toContain('with --proxy-');
      const next = await cause(fetch(`${lab.apache!.origin}/public/?again`, { dispatcher: a }));
      expect(next).toBeInstanceOf(ProxyAuthenticationError);
      expect(next!.message).toMatch(/allow another scheme it offers \(Negotiate, Basic\) in proxy\.schemes$/);
      expect(forCli(next!.message)).toMatch(
        /allow another scheme it offers \(Negotiate, Basic\) with --proxy-negotiate or --proxy-basic$/,
      );
    } finally {
      unsubscribe(LEG_CHANNEL, onLeg);
    }
    const connects = legs.flatMap((e) =>
      e.phase === 'request' && e.method === 'CONNECT' && e.origin === lab.squid!.origin
        ? [e.proxyScheme ?? 'bare']
        : [],
    );
    // The opening NEGOTIATE once; then a bare CONNECT (before: a NEGOTIATE again on every tunnel).
    expect(connects).toEqual(['NTLM', 'bare']);
  });

  it('H5: with proxy.deliver407 and no Kerberos ticket, a Squid that offers only Negotiate is answered with its own 407 (why on multileg:proxy-unanswered); without deliver407 the ProxyAuthenticationError stays, saying why each scheme could not run', async () => {
    const url = `${lab.apache!.cleartextOrigin}/public/negotiate-only`;
    const events: ProxyUnansweredEvent[] = [];
    const onEvent = (m: unknown) => events.push(m as ProxyUnansweredEvent);
    subscribe(PROXY_UNANSWERED_CHANNEL, onEvent);
    try {
      const noTicket = { ccache: `FILE:${lab.dir}/no-such-ccache` };
      const a = agent({ negotiate: noTicket, proxy: { uri: lab.negotiateSquid!.origin, deliver407: true } });
      for (let i = 0; i < 2; i++) {
        const res = await request(url, { dispatcher: a });
        expect(res.statusCode).toBe(407);
        expect(res.headers['proxy-authenticate']).toBe('Negotiate');
        // Squid's own error page: the caller gets the proxy's response, body and all.
        expect(await res.body.text()).toContain('ERR_CACHE_ACCESS_DENIED');
      }
      expect(events).toEqual(
        [0, 1].map(() =>
          expect.objectContaining({
            proxy: lab.negotiateSquid!.origin,
            origin: lab.apache!.cleartextOrigin,
            path: '/public/negotiate-only',
            reason: 'unusable',
            schemes: ['Negotiate'],
            unusable: [expect.objectContaining({ scheme: 'Negotiate', code: 'MULTILEG_KRB_NO_TICKET' })],
          }),
        ),
      );
      // Negotiate fails only once tried, after the first 407 was read: that 407 was held, and is the
      // one shown (before, the request went once more, bare: three 407s for two requests); the next
      // request on the connection goes once too.
      // A proxy's Negotiate has no NTLM fallback: the reason names kinit, not credentials for one;
      // kinit into the cache negotiate.ccache names (task hq: a plain kinit fills another).
      expect(
        events[0]!.unusable[0]!.message.startsWith(
          `Negotiate: no Kerberos ticket: run kinit -c ${noTicket.ccache}, give a client keytab (proxy.negotiate.keytab), or pass proxy.negotiate.principal [GSS: `,
        ),
      ).toBe(true);
      const denied = () => squidLog('squid-negotiate').filter((l) => l.url === url);
      const lines = await settled(denied, 2);
      expect(lines.map((l) => [l.result, l.user])).toEqual(Array(2).fill(['TCP_DENIED/407', '-']));
      // The same through the lab's other Squid (Negotiate, NTLM, Basic), with no proxy credentials.
      const all = agent({ negotiate: noTicket, proxy: { uri: lab.squid!.origin, deliver407: true } });
      const res = await request(url, { dispatcher: all });
      await res.body.dump();
      expect(res.statusCode).toBe(407);
      expect(events.at(-1)).toMatchObject({ reason: 'unusable', schemes: ['Negotiate', 'NTLM', 'Basic'] });
      // Without deliver407: the typed error, as it was.
      const strict = agent({ negotiate: noTicket, proxy: { uri: lab.negotiateSquid!.origin } });
      const err = await cause(fetch(url, { dispatcher: strict }));
      expect(err).toBeInstanceOf(ProxyAuthenticationError);
      expect(err).toMatchObject({ refused: false, offered: ['Negotiate'] });
      // It says why each offered scheme could not run, with its code (before: "negotiate unavailable").
      expect(err!.message).toContain(
        `no offered scheme could be used (Negotiate: no Kerberos ticket: run kinit -c ${noTicket.ccache}, give a client keytab (proxy.negotiate.keytab), or pass proxy.negotiate.principal (MULTILEG_KRB_NO_TICKET)); give proxy.credentials or a Kerberos ticket`,
      );
      expect(events).toHaveLength(3);
      // The strict agent's request is the third 407 to `url` (a late line of the two above would make four).
      expect(await settled(denied, 3)).toHaveLength(3);
    } finally {
      unsubscribe(PROXY_UNANSWERED_CHANNEL, onEvent);
    }
  });

  it('H5/M2: Negotiate (Kerberos, SPN HTTP@proxyhost) to Squid, then Kerberos to Apache /protected/ through the tunnel', async () => {
    const a = agent({ proxy: { uri: lab.squid!.origin, schemes: ['Negotiate'] } });
    const res = await fetch(`${lab.apache!.origin}/protected/`, { dispatcher: a });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-remote-user')).toBe('alice@EXAMPLE.TEST');
    expect(res.headers.get('x-protocol')).toBe('HTTP/2.0');
    await res.text();
    await a.close();
    const tunnels = await settled(
      () => squidLog().filter((l) => l.method === 'CONNECT' && l.user === 'alice@EXAMPLE.TEST'),
      1,
    );
    expect(tunnels[0]?.result).toBe('TCP_TUNNEL/200');
  });

  it('H5: NTLM to the Apache forward proxy (real password check): NEGOTIATE on the first CONNECT, as curl --proxy-ntlm (2 CONNECTs, not 3), every leg on one proxy socket', async () => {
    const target = `localhost:${lab.apache!.tlsPort}`;
    const before = apacheLog('CONNECT', target).length;
    const a = agent({ proxy: { uri: lab.apache!.proxyOrigin!, credentials: ALICE_NTLM, schemes: ['NTLM'] } });
    const res = await fetch(`${lab.apache!.origin}/public/`, { dispatcher: a });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-protocol')).toBe('HTTP/2.0');
    await res.text();
    await a.close(); // Apache logs the CONNECT when the tunnel ends
    const legs = (await settled(() => apacheLog('CONNECT', target), before + 2)).slice(before);
    // Before: [407, 407, 200], the first CONNECT bare.
    expect(legs.map((l) => l.status)).toEqual([407, 200]);
    expect(new Set(legs.map((l) => l.port)).size).toBe(1);
    expect(legs[1]!.user).toBe('EXAMPLE\\\\alice'); // Apache escapes the backslash in its log
  });

  it('H5: a wrong NTLM password at the Apache proxy fails with ProxyAuthenticationError', async () => {
    const a = agent({
      proxy: { uri: lab.apache!.proxyOrigin!, credentials: { ...ALICE_NTLM, password: 'nope' }, schemes: ['NTLM'] },
    });
    const err = await cause(fetch(`${lab.apache!.origin}/public/`, { dispatcher: a }));
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect(err!.message).toMatch(/rejected the NTLM credentials/);
    expect(err!.message).not.toContain('nope');
  });

  it("M5/H5: a scheme that answers the proxy because Negotiate cannot run there (no ticket) says why, in its report and in the proxy's refusal", async () => {
    const a = agent({
      negotiate: { ccache: `FILE:${lab.dir}/no-such-ccache` },
      proxy: {
        uri: lab.squid!.origin,
        credentials: { username: 'alice', password: 'wrong-u17' },
        schemes: ['Negotiate', 'Basic'],
      },
    });
    const heard: HandshakeReport[] = [];
    a.onHandshake((r) => heard.push(r));
    const err = await cause(fetch(`${lab.apache!.origin}/public/?u17-skipped`, { dispatcher: a }));
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    // Before: "the proxy rejected the Basic credentials; check …", and the report said nothing of
    // Kerberos (an origin's report names it): why Basic at a Negotiate proxy was left to guess.
    expect(err!.message).toMatch(/rejected the Basic credentials \(Negotiate was not used: MULTILEG_KRB_NO_TICKET: /);
    expect(err!.message).not.toContain('wrong-u17');
    expect(heard.map((h) => [h.scheme, h.outcome, h.failure])).toEqual([['Basic', 'failed', 'refused']]);
    expect(heard[0]!.fallbackReason).toMatch(/^MULTILEG_KRB_NO_TICKET: /);
    a.setProxyCredentials(ALICE_BASIC);
    const res = await fetch(`${lab.apache!.origin}/public/?u17-skipped`, { dispatcher: a });
    expect(res.status).toBe(200);
    await res.arrayBuffer();
    expect(heard.at(-1)).toMatchObject({ scheme: 'Basic', outcome: 'per-request', identity: 'alice' });
    expect(heard.at(-1)!.fallbackReason).toMatch(/^MULTILEG_KRB_NO_TICKET: /);
  });

  it('H1/C8/H5: NTLM refused by the Apache forwarding proxy retires that proxy connection: once the proxy has the password, every request after it authenticates', async () => {
    const users = readFileSync(lab.ntlmUserFile, 'utf8');
    try {
      // The vault ran ahead of the domain controller: the proxy still has dave's old password.
      writeFileSync(lab.ntlmUserFile, `${users}EXAMPLE:dave:dave-old\n`);
      const dave = { username: 'EXAMPLE\\dave', password: 'dave-new' };
      const a = agent({ proxy: { uri: lab.apache!.proxyOrigin!, credentials: dave, schemes: ['NTLM'] } });
      const heard: HandshakeReport[] = [];
      a.onHandshake((r) => heard.push(r));
      const get = () =>
        request(`${lab.apache!.cleartextOrigin}/public/?u17`, { dispatcher: a }).then(async (r) => {
          await r.body.text();
          return r.statusCode;
        });
      const err = await get().catch((e: Error) => e);
      expect(err).toBeInstanceOf(ProxyAuthenticationError);
      writeFileSync(lab.ntlmUserFile, `${users}EXAMPLE:dave:dave-new\n`);
      a.setProxyCredentials(dave, { forgetRefusals: true });
      // Before: the second request authenticated on a new connection, the third went to the one the
      // refusal left, where Apache keeps the failed context: its NEGOTIATE got a bare 407
      // (ProxyAuthenticationError, reported as a refused opening).
      expect(await get()).toBe(200);
      expect(await get()).toBe(200);
      expect(await get()).toBe(200);
      expect(heard.map((h) => [h.scheme, h.outcome, h.failure])).toEqual([
        ['NTLM', 'failed', 'refused'],
        ['NTLM', 'session', undefined],
      ]);
    } finally {
      writeFileSync(lab.ntlmUserFile, users);
    }
  });

  it("H5/S2: handshakes with Squid are reported as an origin's (onHandshake, proxy: true, stats.proxyHandshakes): Basic on a CONNECT (per-request, one leg, alice), Negotiate on a forwarding proxy connection (session, SPN HTTP@proxyhost), a wrong Basic password (failed, refused); no secret", async () => {
    const squid = lab.squid!.origin;
    const heard: HandshakeReport[] = [];
    const tunnelled = agent({ proxy: { uri: squid, credentials: ALICE_BASIC, schemes: ['Basic'] } });
    tunnelled.onHandshake((r) => heard.push(r));
    const res = await fetch(`${lab.apache!.origin}/public/`, { dispatcher: tunnelled });
    expect(res.status).toBe(200);
    await res.arrayBuffer();
    // Before: nothing reported, stats() all 0.
    expect(heard).toEqual([
      {
        proxy: true,
        origin: squid,
        sessionId: tunnelled.sessions()[0]!.sessionId,
        protocol: 'http/1.1',
        scheme: 'Basic',
        legs: 1,
        outcome: 'per-request',
        authIdCarried: false,
        identity: 'alice',
      },
    ]);
    expect(tunnelled.stats()).toMatchObject({ handshakes: 0, proxyHandshakes: 1, proxyLegs: 1 });
    const forwarded = agent({ proxy: { uri: squid, schemes: ['Negotiate'] } });
    for (let i = 0; i < 2; i++) {
      const r = await fetch(`${lab.apache!.cleartextOrigin}/public/?reported-${i}`, { dispatcher: forwarded });
      expect(r.status).toBe(200);
      await r.arrayBuffer();
    }
    // One handshake authenticated the connection; the second request went on it.
    expect(forwarded.handshakes()).toEqual([
      expect.objectContaining({
        proxy: true,
        origin: squid,
        scheme: 'Negotiate',
        outcome: 'session',
        spn: `HTTP@${new URL(squid).hostname}`,
      }),
    ]);
    const wrong = agent({
      proxy: { uri: squid, credentials: { username: 'alice', password: 'wrong-pw' }, schemes: ['Basic'] },
    });
    expect(await cause(fetch(`${lab.apache!.origin}/public/`, { dispatcher: wrong }))).toBeInstanceOf(
      ProxyAuthenticationError,
    );
    expect(wrong.handshakes()).toEqual([
      expect.objectContaining({ proxy: true, scheme: 'Basic', legs: 1, outcome: 'failed', failure: 'refused' }),
    ]);
    expect(wrong.stats()).toMatchObject({ proxyHandshakes: 1, failedProxyHandshakes: 1 });
    expect(JSON.stringify([heard, wrong.handshakes()])).not.toMatch(/alicepw|wrong-pw/);
  });

  it('H5/H1: proxy and origin credentials are separate: alice to the proxy, bob to Apache /ntlm/ through it', async () => {
    const a = agent({
      credentials: BOB_NTLM,
      schemes: ['NTLM'],
      negotiate: false,
      proxy: { uri: lab.apache!.proxyOrigin!, credentials: ALICE_NTLM, schemes: ['NTLM'] },
    });
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${lab.apache!.origin}/ntlm/`, { dispatcher: a });
      expect(res.status).toBe(200);
      expect(res.headers.get('x-remote-user')).toBe('EXAMPLE\\bob');
      await res.text();
    }
    // Apache loses NTLM between HTTP/2 streams; the agent moved it to one HTTP/1.1 connection (its own tunnel).
    // (The origin's handshakes: the proxy's NTLM is reported too, with `proxy`.)
    expect(a.handshakes().findLast((h) => !h.proxy)).toMatchObject({
      scheme: 'NTLM',
      protocol: 'http/1.1',
      outcome: 'session',
    });
    expect(a.stats().handshakes).toBe(1);
  });

  it.each(['forwarded', 'tunnelled'] as const)(
    'H5: NTLM the only origin scheme through Squid (Basic), %s: Apache /ntlm/ gets NEGOTIATE on the first request (2 requests on one connection; 3 with Basic allowed too)',
    async (how) => {
      const origin = how === 'forwarded' ? lab.apache!.cleartextOrigin : lab.apache!.origin;
      for (const schemes of [['NTLM'], ['NTLM', 'Basic']] as const) {
        const a = agent({
          trustedOrigins: [origin],
          credentials: BOB_NTLM,
          negotiate: false,
          schemes,
          proxy: { uri: lab.squid!.origin, credentials: ALICE_BASIC, schemes: ['Basic'] },
        });
        // HTTP/1.1 to the origin: Apache loses NTLM between HTTP/2 streams (H1), which is not the subject here.
        const path = `/ntlm/?${how}-${schemes.join('-')}`;
        const res = await a.request({ origin, path, method: 'GET', allowH2: false } as Parameters<typeof a.request>[0]);
        expect(res.statusCode).toBe(200);
        expect(await res.body.text()).toBe('hello from /ntlm\n');
        // The origin's (Squid's Basic is reported too, with `proxy`).
        expect(
          a
            .handshakes()
            .filter((h) => !h.proxy)
            .map((h) => [h.scheme, h.legs]),
        ).toEqual([['NTLM', 2]]);
        const lines = await settled(() => apacheLog('GET', path), schemes.length + 1);
        expect(lines.map((l) => l.status)).toEqual(schemes.length === 1 ? [401, 200] : [401, 401, 200]);
        expect(new Set(lines.map((l) => l.port)).size).toBe(1);
        expect(lines.at(-1)!.user).toBe('EXAMPLE\\\\bob'); // Apache escapes the backslash in its log
      }
    },
  );

  it('H5: HTTPS_PROXY (with userinfo) and NO_PROXY from the environment, as undici reads them', async () => {
    const squid = new URL(lab.squid!.origin);
    const restore = lab.applyEnv({
      NTLM_USER_FILE: undefined,
      HTTPS_PROXY: `http://alice:alicepw@${squid.host}`,
      https_proxy: undefined,
      NO_PROXY: undefined,
      no_proxy: undefined,
    });
    try {
      const count = () => squidLog().filter((l) => l.method === 'CONNECT' && l.user === 'alice').length;
      const before = count();
      const viaEnv = agent({ proxy: { schemes: ['Basic'] } });
      expect((await fetch(`${lab.apache!.origin}/public/`, { dispatcher: viaEnv })).status).toBe(200);
      await viaEnv.close();
      await settled(() => Array(count()), before + 1);
      expect(count()).toBe(before + 1);

      process.env.NO_PROXY = 'example.org, .localhost,localhost';
      const bypass = agent({ proxy: { schemes: ['Basic'] } });
      const res = await fetch(`${lab.apache!.origin}/public/`, { dispatcher: bypass });
      expect(res.status).toBe(200);
      await bypass.close();
      process.env.NO_PROXY = '';
      const off = agent({ proxy: false });
      expect((await fetch(`${lab.apache!.origin}/public/`, { dispatcher: off })).status).toBe(200);
      await off.close();
      await new Promise((r) => setTimeout(r, 200));
      expect(count()).toBe(before + 1); // neither went through squid
    } finally {
      restore();
    }
  });

  it('H5: a plain-http target is forwarded in absolute form through Squid with Basic', async () => {
    const a = agent({ proxy: { uri: lab.squid!.origin, credentials: ALICE_BASIC, schemes: ['Basic'] } });
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${lab.apache!.cleartextOrigin}/public/`, { dispatcher: a });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('hello from /public\n');
    }
    const url = `${lab.apache!.cleartextOrigin}/public/`;
    const lines = await settled(() => squidLog().filter((l) => l.url === url && l.user === 'alice'), 2);
    expect(lines.map((l) => l.method)).toEqual(['GET', 'GET']);
  });

  it('H5: a plain-http target through Squid with Negotiate: one 407, then the connection stays authenticated', async () => {
    const url = `${lab.apache!.cleartextOrigin}/public/index.html`;
    const a = agent({ proxy: { uri: lab.squid!.origin, schemes: ['Negotiate'] } });
    for (let i = 0; i < 3; i++) {
      const res = await fetch(url, { dispatcher: a });
      expect(res.status).toBe(200);
      await res.text();
    }
    const lines = await settled(() => squidLog().filter((l) => l.url === url), 4);
    expect(lines.map((l) => [l.result, l.user])).toEqual([
      ['TCP_DENIED/407', '-'],
      ...Array(3).fill(['TCP_MISS/200', 'alice@EXAMPLE.TEST']),
    ]);
  });

  it("H5: the agent's negotiate: false is the origins' alone: through Squid (Negotiate) the ambient Kerberos ticket still answers the proxy when proxy.negotiate sets nothing (as documented); proxy.negotiate: false stops it", async () => {
    const url = `${lab.apache!.cleartextOrigin}/public/index.html?negotiate-false`;
    const a = agent({ negotiate: false, proxy: { uri: lab.squid!.origin } });
    const res = await fetch(url, { dispatcher: a });
    expect(res.status).toBe(200);
    await res.text();
    expect(a.handshakes()).toEqual([
      expect.objectContaining({ proxy: true, scheme: 'Negotiate', identity: 'alice@EXAMPLE.TEST', outcome: 'session' }),
    ]);
    const none = agent({ negotiate: false, proxy: { uri: lab.squid!.origin, negotiate: false } });
    const err = await cause(fetch(`${url}-both`, { dispatcher: none }));
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect(err?.message).toContain('none of the offered schemes is configured');
    expect(none.handshakes()).toEqual([]);
  });

  it("H5: a plain-http target through a CONNECT tunnel (proxy.http = 'tunnel') with NTLM to the Apache proxy: NEGOTIATE on the first CONNECT", async () => {
    const target = `localhost:${lab.apache!.port}`;
    const before = apacheLog('CONNECT', target).length;
    const a = agent({
      proxy: { uri: lab.apache!.proxyOrigin!, credentials: ALICE_NTLM, schemes: ['NTLM'], http: 'tunnel' },
    });
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${lab.apache!.cleartextOrigin}/public/`, { dispatcher: a });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('hello from /public\n');
    }
    await a.close();
    const legs = (await settled(() => apacheLog('CONNECT', target), before + 2)).slice(before);
    expect(legs.map((l) => l.status)).toEqual([407, 200]);
  });

  it('H5: a plain-http target through the Apache proxy with NTLM: the NEGOTIATE on the first request, as curl --proxy-ntlm (2 requests, not 3), every leg on one proxy connection', async () => {
    const url = `${lab.apache!.cleartextOrigin}/public/?ntlm`;
    const a = agent({ proxy: { uri: lab.apache!.proxyOrigin!, credentials: ALICE_NTLM, schemes: ['NTLM'] } });
    for (let i = 0; i < 2; i++) {
      const res = await fetch(url, { dispatcher: a });
      expect(res.status).toBe(200);
      await res.text();
    }
    const lines = await settled(() => apacheLog('GET', url), 3);
    // Before: [407, 407, 200, 200], the first request bare.
    expect(lines.map((l) => l.status)).toEqual([407, 200, 200]);
    expect(new Set(lines.map((l) => l.port)).size).toBe(1);
    expect(lines.slice(1).every((l) => l.user === 'EXAMPLE\\\\alice')).toBe(true);
  });

  it.each([
    ['Squid, Negotiate (Kerberos)', 'squid', 'Negotiate', 'alice@EXAMPLE.TEST'],
    ['the Apache proxy, NTLM (real password check)', 'apache', 'NTLM', 'EXAMPLE\\alice'],
  ] as const)(
    'M2/H5: through %s, a forwarded request answered 503 (the origin is down) right after the proxy handshake: the caller gets that 503, the handshake is reported failed (error), no identity; the next request authenticates afresh',
    async (_what, which, scheme, identity) => {
      const a = agent({
        proxy:
          which === 'squid'
            ? { uri: lab.squid!.origin, schemes: ['Negotiate'] }
            : { uri: lab.apache!.proxyOrigin!, credentials: ALICE_NTLM, schemes: ['NTLM'] },
      });
      const heard: HandshakeReport[] = [];
      a.onHandshake((r) => heard.push(r));
      // Nothing listens on port 1: the proxy authenticates the request, then cannot reach it.
      const down = await request('http://127.0.0.1:1/hc', { dispatcher: a });
      await down.body.text();
      expect(down.statusCode).toBe(503);
      // Before: reported a session as alice, the proxy having said nothing of the credentials.
      expect(heard.map((h) => [h.scheme, h.outcome, h.failure, h.identity])).toEqual([
        [scheme, 'failed', 'error', undefined],
      ]);
      const up = await request(`${lab.apache!.cleartextOrigin}/public/?hc`, { dispatcher: a });
      await up.body.text();
      expect(up.statusCode).toBe(200);
      expect(heard.map((h) => [h.outcome, h.identity])).toEqual([
        ['failed', undefined],
        ['session', identity],
      ]);
    },
  );

  /** bob, a second principal, kinit'ed into a ccache of his own (alice holds the process's default). */
  let bobCache: string | undefined;
  async function bob(): Promise<string> {
    if (bobCache) return bobCache;
    await lab.realm!.kadmin('addprinc -pw bobpw bob@EXAMPLE.TEST');
    const cache = `FILE:${join(lab.dir, 'bob.ccache')}`;
    await lab.realm!.kinit({ principal: 'bob@EXAMPLE.TEST', password: 'bobpw', ccache: cache });
    bobCache = cache;
    return cache;
  }

  it.skipIf(!haveBinding)(
    "H5/S1: proxy Negotiate runs as the agent's own Kerberos identity (negotiate.ccache: bob), not as the process's default principal (alice)",
    async () => {
      const before = squidLog().length;
      const a = agent({
        negotiate: { ccache: await bob() },
        proxy: { uri: lab.squid!.origin, schemes: ['Negotiate'] },
      });
      const res = await fetch(`${lab.apache!.origin}/protected/`, { dispatcher: a });
      expect(res.status).toBe(200);
      expect(res.headers.get('x-remote-user')).toBe('bob@EXAMPLE.TEST');
      await res.text();
      await a.close();
      const tunnels = await settled(
        () =>
          squidLog()
            .slice(before)
            .filter((l) => l.method === 'CONNECT' && l.result === 'TCP_TUNNEL/200'),
        1,
      );
      expect(tunnels.map((l) => l.user)).toEqual(['bob@EXAMPLE.TEST']);
    },
  );

  it.skipIf(!haveBinding)(
    "H5/S1: an identity the proxy options name (proxy.negotiate.ccache) is used towards the proxy instead of the agent's",
    async () => {
      const before = squidLog().length;
      const url = `${lab.apache!.cleartextOrigin}/public/index.html`;
      // The agent is alice (the default cache); the proxy account is bob's.
      const a = agent({
        proxy: { uri: lab.squid!.origin, schemes: ['Negotiate'], negotiate: { ccache: await bob() } },
      });
      const res = await fetch(url, { dispatcher: a });
      expect(res.status).toBe(200);
      await res.text();
      const lines = await settled(
        () =>
          squidLog()
            .slice(before)
            .filter((l) => l.url === url && l.user !== '-'),
        1,
      );
      expect(lines.map((l) => l.user)).toEqual(['bob@EXAMPLE.TEST']);
    },
  );
  it.skipIf(!haveBinding)(
    'S6/H5: Squid (Negotiate, no final token) holds a forwarding connection and a CONNECT tunnel as alice: after kdestroy; kinit bob in the ccache the next requests reach it as bob, after kdestroy alone they get the no-ticket error',
    async () => {
      await bob(); // the principal
      const ccache = `FILE:${join(lab.dir, 'proxy-holders.ccache')}`;
      const tools = { env: { ...lab.realm!.toolEnv, KRB5CCNAME: ccache } };
      await lab.realm!.kinit({ ccache });
      const before = squidLog().length;
      const a = agent({ negotiate: { ccache }, proxy: { uri: lab.squid!.origin, schemes: ['Negotiate'] } });
      const forwarded = `${lab.apache!.cleartextOrigin}/public/index.html?r=squid-holders`;
      const tunnelled = `${lab.apache!.origin}/public/?r=squid-holders`;
      const get = async (url: string) => {
        const res = await fetch(url, { dispatcher: a });
        await res.arrayBuffer();
        return res.status;
      };
      for (let i = 0; i < 2; i++) expect([await get(forwarded), await get(tunnelled)]).toEqual([200, 200]);
      await run('/usr/bin/kdestroy', [], tools);
      await lab.realm!.kinit({ ccache, principal: 'bob@EXAMPLE.TEST', password: 'bobpw' });
      await new Promise((r) => setTimeout(r, TICKET_RECHECK_MS + 200));
      for (let i = 0; i < 2; i++) expect([await get(forwarded), await get(tunnelled)]).toEqual([200, 200]);
      await run('/usr/bin/kdestroy', [], tools);
      await new Promise((r) => setTimeout(r, TICKET_RECHECK_MS + 200));
      // No one's tickets: the typed error naming the missing ticket, not bob's connections (fail safe).
      for (const url of [forwarded, tunnelled]) {
        const err = await cause(fetch(url, { dispatcher: a }));
        expect(err).toBeInstanceOf(ProxyAuthenticationError);
        expect(err!.message).toContain('MULTILEG_KRB_NO_TICKET');
      }
      await a.close(); // Squid logs a CONNECT when its tunnel ends
      // (Squid logs a URL without its query.)
      const users = (method: string, url: string) =>
        squidLog()
          .slice(before)
          .filter((l) => l.method === method && l.url === url && l.user !== '-')
          .map((l) => l.user);
      // Was: alice for all four forwarded requests (Squid keeps a Negotiate connection's user), and
      // one tunnel, alice's, carrying bob's turn too.
      expect(await settled(() => users('GET', forwarded.replace(/\?.*/, '?')), 4)).toEqual([
        'alice@EXAMPLE.TEST',
        'alice@EXAMPLE.TEST',
        'bob@EXAMPLE.TEST',
        'bob@EXAMPLE.TEST',
      ]);
      expect(await settled(() => users('CONNECT', `localhost:${lab.apache!.tlsPort}`), 2)).toEqual([
        'alice@EXAMPLE.TEST',
        'bob@EXAMPLE.TEST',
      ]);
    },
  );
});
