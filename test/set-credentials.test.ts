/**
 * New credentials on a live agent (MultilegAgent.setCredentials / setProxyCredentials): a password
 * rotated in a vault reaches the agent without a new one. Validated as at construction (S1); no
 * request sent after the call runs as the old identity (S6); what was learnt of the old password
 * does not hold the new one back, which starts unproved (R4).
 */

import { execFile } from 'node:child_process';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { once } from 'node:events';
import { createServer, type IncomingMessage } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { request, upgrade } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentClosedError, ConfigError, type CookieStore, MultilegAgent, MultilegError } from '../src/index.ts';
import { CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { PROOF_FRESH_MS } from '../src/session/credential-proof.ts';
import { TICKET_RECHECK_MS } from '../src/session/origin-memory.ts';
import { TrustRequiredError } from '../src/trust/policy.ts';
import {
  ALICE,
  basic,
  behindBasicProxy,
  getUser,
  loopbackOrigin,
  type Rig,
  rig,
  sleep,
  until,
  wire,
} from './helpers.ts';

let r: Rig | undefined;
afterEach(async () => {
  await r?.close();
  r = undefined;
});

const BOB = { username: 'EXAMPLE\\bob', password: 'bobpw' } as const;

/** A `faults.delayMs` holding requests whose path has `part` (with Authorization, if `auth`) `ms`, counting them. */
function hold(part: string, ms: number, auth = false) {
  const h = {
    arrived: 0,
    delayMs: (q: { path: string; headers: Record<string, unknown> }): number => {
      if (!q.path.includes(part) || (auth && !q.headers.authorization)) return 0;
      h.arrived += 1;
      return ms;
    },
  };
  return h;
}

describe('S1: setCredentials validates as the constructor does', () => {
  it('S1: a malformed user name or password is the same ConfigError; without trustedOrigins a password is TrustRequiredError; a closed or destroyed agent says AgentClosedError', async () => {
    const agent = new MultilegAgent({ credentials: ALICE, trustedOrigins: ['https://intranet.example'] });
    for (const bad of [{ username: '', password: 'x' }, { username: 'u' }, { username: 'u', password: 1 }]) {
      let ctor: unknown;
      try {
        new MultilegAgent({ credentials: bad as never, trustedOrigins: ['https://intranet.example'] });
      } catch (err) {
        ctor = err;
      }
      let set: unknown;
      try {
        agent.setCredentials(bad as never);
      } catch (err) {
        set = err;
      }
      expect(set).toBeInstanceOf(ConfigError);
      expect((set as Error).message).toBe((ctor as Error).message);
    }
    expect(() => agent.setCredentials(null as never)).toThrow(ConfigError);
    expect(() => agent.setProxyCredentials({ username: '', password: 'x' })).toThrow(/proxy\.credentials\.username/);
    // No proxy (none given, none in the environment): nothing to replace.
    const direct = new MultilegAgent({ trustedOrigins: ['https://intranet.example'], proxy: false });
    expect(() => direct.setProxyCredentials(ALICE)).toThrow(ConfigError);
    // S1: a password goes only where the caller said, whether given at construction or later.
    const ambient = new MultilegAgent();
    expect(() => ambient.setCredentials(ALICE)).toThrow(TrustRequiredError);
    await agent.close();
    expect(() => agent.setCredentials(BOB)).toThrow(AgentClosedError);
    await direct.destroy();
    expect(() => direct.setCredentials(BOB)).toThrow(AgentClosedError);
    await ambient.close();
  });

  it('S1: an agent made without credentials but with trustedOrigins takes a password later, and sends it only to those origins', async () => {
    r = await rig({ schemes: ['Basic'] }, { negotiate: false, credentials: undefined });
    const url = `${r.server.origin}/auth/x`;
    expect((await getUser(url, r.agent)).status).toBe(401);
    r.agent.setCredentials(ALICE);
    expect(await getUser(url, r.agent)).toEqual({ status: 200, user: 'EXAMPLE\\alice' });
  });
});

describe('S6: no request sent after setCredentials runs as the old identity', () => {
  it.each([
    ['HTTP/2', false],
    ['HTTP/1.1', true],
  ])(
    'S6: %s, Basic: a burst running when the identity changes: each request ends as the old one (sent before) or the new one, and not one old Authorization is written after the call',
    async (_, h1) => {
      const held = hold('/a/', 150, true);
      r = await rig({ schemes: ['Basic'], faults: { delayMs: held.delayMs } }, { negotiate: false });
      const url = `${r.server.origin}/auth`;
      expect((await getUser(`${url}/warm`, r.agent, h1)).status).toBe(200);
      const sent = wire();
      const before = Array.from({ length: 30 }, (_, i) => getUser(`${url}/a/${i}`, r!.agent, h1));
      // Some of the burst are on the wire (held by the server) when the identity changes.
      await until(() => held.arrived >= 3);
      expect(held.arrived).toBeGreaterThanOrEqual(3);
      const atCall = sent.values.length;
      r.agent.setCredentials(BOB);
      const after = Array.from({ length: 30 }, (_, i) => getUser(`${url}/b/${i}`, r!.agent, h1));
      const results = [...(await Promise.all(before)), ...(await Promise.all(after))];
      sent.stop();
      expect(results.every((x) => x.status === 200)).toBe(true);
      // Some went as alice before the call (on the wire, or finished), the rest as bob.
      expect(atCall).toBeGreaterThan(0);
      expect(results.some((x) => x.user === 'EXAMPLE\\alice')).toBe(true);
      expect(results.slice(30).every((x) => x.user === 'EXAMPLE\\bob')).toBe(true);
      const old = sent.values.slice(atCall).filter((v) => v === basic(ALICE));
      expect(old).toHaveLength(0);
      expect(sent.values.slice(atCall).filter((v) => v === basic(BOB)).length).toBeGreaterThan(0);
    },
  );

  it.each([
    ['HTTP/2', false],
    ['HTTP/1.1', true],
  ])(
    'S6: %s, NTLM session mode, the password rotated on the server: requests on the wire finish on the old session, which then closes; new requests authenticate a new session with the new password; no old password is tried',
    async (_, h1) => {
      const held = hold('/slow/', 200);
      r = await rig({ mode: 'session', schemes: ['NTLM'], faults: { delayMs: held.delayMs } }, { negotiate: false });
      const url = `${r.server.origin}/auth`;
      const warm = await Promise.all(Array.from({ length: 3 }, (_, i) => getUser(`${url}/warm/${i}`, r!.agent, h1)));
      expect(warm.every((x) => x.status === 200)).toBe(true);
      const old = new Set(r.agent.sessions().map((s) => s.sessionId));
      // Bare requests on the authenticated session(s), held by the server past the rotation.
      const inflight = Array.from({ length: 3 }, (_, i) => getUser(`${url}/slow/${i}`, r!.agent, h1));
      await until(() => held.arrived === 3);
      r.server.options.users = { ...r.server.options.users, 'EXAMPLE\\alice': 'rotated' };
      r.server.reset();
      r.agent.setCredentials({ ...ALICE, password: 'rotated' });
      // Retired at once: no old session takes a new request.
      expect(r.agent.sessions().filter((s) => old.has(s.sessionId) && s.held === 0)).toEqual([]);
      const next = await Promise.all(Array.from({ length: 10 }, (_, i) => getUser(`${url}/new/${i}`, r!.agent, h1)));
      expect((await Promise.all(inflight)).every((x) => x.status === 200 && x.user === 'EXAMPLE\\alice')).toBe(true);
      expect(next.every((x) => x.status === 200 && x.user === 'EXAMPLE\\alice')).toBe(true);
      const slow = r.server.exchanges.filter((e) => e.path.includes('/slow/'));
      const fresh = r.server.exchanges.filter((e) => e.path.includes('/new/'));
      expect(slow).toHaveLength(3);
      // The server saw the new requests on other connections than the held ones.
      const slowSessions = new Set(slow.map((e) => e.sessionId));
      expect(fresh.some((e) => slowSessions.has(e.sessionId))).toBe(false);
      expect(r.server.exchanges.filter((e) => e.outcome === 'rejected')).toHaveLength(0);
      // The old sessions closed once their requests had finished.
      await until(() => !r!.agent.sessions().some((s) => old.has(s.sessionId)));
      expect(r.agent.sessions().filter((s) => old.has(s.sessionId))).toEqual([]);
    },
  );

  it('S6/R4: Digest: the remembered nonce and its cached HA1 are not sent again after the password changed (no proactive answer with the old one)', async () => {
    r = await rig({ schemes: ['Digest'] }, { negotiate: false });
    const url = `${r.server.origin}/auth`;
    for (let i = 0; i < 3; i++) expect((await getUser(`${url}/warm/${i}`, r.agent)).status).toBe(200);
    r.server.options.users = { ...r.server.options.users, 'EXAMPLE\\alice': 'rotated' };
    r.server.reset();
    r.agent.setCredentials({ ...ALICE, password: 'rotated' });
    const after = await Promise.all(Array.from({ length: 10 }, (_, i) => getUser(`${url}/a/${i}`, r!.agent)));
    expect(after.every((x) => x.status === 200)).toBe(true);
    expect(r.server.exchanges.filter((e) => e.outcome === 'rejected')).toHaveLength(0);
  });
});

describe('R4: the old credentials’ record does not carry over to the new ones', () => {
  it('R4: a wrong password refused (kept back 30 s) does not keep the right one back: the next request authenticates at once', async () => {
    r = await rig({ schemes: ['Basic'] }, { negotiate: false, credentials: { ...ALICE, password: 'wrong' } });
    const url = `${r.server.origin}/auth`;
    expect((await getUser(`${url}/a`, r.agent)).status).toBe(401);
    expect((await getUser(`${url}/b`, r.agent)).status).toBe(401);
    r.server.reset();
    // Refused twice in a row: this one goes without the password.
    expect((await getUser(`${url}/c`, r.agent)).status).toBe(401);
    expect(r.server.exchanges.map((e) => e.outcome)).toEqual(['unauthenticated']);
    r.agent.setCredentials(ALICE);
    expect(await getUser(`${url}/d`, r.agent)).toEqual({ status: 200, user: 'EXAMPLE\\alice' });
  });

  it('R4: the credentials the agent holds, given again, change nothing (a vault poller, trial u14): a refused password stays held back, an authenticated session stays', async () => {
    r = await rig({ schemes: ['Basic'] }, { negotiate: false, credentials: { ...ALICE, password: 'wrong' } });
    const url = `${r.server.origin}/auth`;
    expect((await getUser(`${url}/a`, r.agent)).status).toBe(401);
    expect((await getUser(`${url}/b`, r.agent)).status).toBe(401);
    r.server.reset();
    for (let i = 0; i < 5; i++) {
      r.agent.setCredentials({ ...ALICE, password: 'wrong' });
      expect((await getUser(`${url}/poll/${i}`, r.agent)).status).toBe(401);
    }
    // Before: the wrong password went once per call (5 'rejected': an account locked out).
    expect(r.server.exchanges.map((e) => e.outcome)).toEqual(Array(5).fill('unauthenticated'));
    await r.close();

    r = await rig({ mode: 'session', schemes: ['NTLM'] }, { negotiate: false });
    const ok = `${r.server.origin}/auth`;
    expect((await getUser(`${ok}/warm`, r.agent)).status).toBe(200);
    const before = r.agent.stats();
    for (let i = 0; i < 3; i++) {
      r.agent.setCredentials({ ...ALICE });
      expect(await getUser(`${ok}/poll/${i}`, r.agent)).toEqual({ status: 200, user: 'EXAMPLE\\alice' });
    }
    // Before: a session retired and a handshake per call.
    expect(r.agent.stats()).toMatchObject({ handshakes: before.handshakes, sessions: before.sessions });
  });

  it('R4: the same jar given again changes nothing either; forgetRefusals lifts the hold-back once the server has the password, once per run of refusals (reviews r58, r60)', async () => {
    const jar: CookieStore = { cookieHeader: () => undefined, setCookies: () => {} };
    r = await rig(
      { schemes: ['Basic'] },
      { negotiate: false, credentials: { ...ALICE, password: 'fixed' }, cookies: jar },
    );
    const url = `${r.server.origin}/auth`;
    // The server does not have the password yet (a vault ahead of the domain controller).
    expect((await getUser(`${url}/a`, r.agent)).status).toBe(401);
    expect((await getUser(`${url}/b`, r.agent)).status).toBe(401);
    r.server.reset();
    r.agent.setCredentials({ ...ALICE, password: 'fixed' }, { cookies: jar });
    expect((await getUser(`${url}/c`, r.agent)).status).toBe(401);
    // Before: 'rejected' (the call forgot the refusal).
    expect(r.server.exchanges.map((e) => e.outcome)).toEqual(['unauthenticated']);
    // Lifted while the server still refuses it: one try, then no lift until it succeeds.
    r.server.reset();
    for (let i = 0; i < 4; i++) {
      r.agent.setCredentials({ ...ALICE, password: 'fixed' }, { forgetRefusals: true });
      expect((await getUser(`${url}/poll/${i}`, r.agent)).status).toBe(401);
    }
    // Before: 'rejected' four times (review r60: a lockout).
    expect(r.server.exchanges.filter((e) => e.outcome === 'rejected')).toHaveLength(1);
    await r.close();

    // A fresh run of refusals: lifted once the server has it, tried at once.
    r = await rig({ schemes: ['Basic'] }, { negotiate: false, credentials: { ...ALICE, password: 'fixed' } });
    const again = `${r.server.origin}/auth`;
    expect((await getUser(`${again}/a`, r.agent)).status).toBe(401);
    expect((await getUser(`${again}/b`, r.agent)).status).toBe(401);
    r.server.options.users = { ...r.server.options.users, 'EXAMPLE\\alice': 'fixed' };
    r.agent.setCredentials({ ...ALICE, password: 'fixed' }, { forgetRefusals: true });
    // Without forgetRefusals: held back 30 s more.
    expect(await getUser(`${again}/c`, r.agent)).toEqual({ status: 200, user: 'EXAMPLE\\alice' });
  });

  it.each([['Basic'], ['Digest']] as const)(
    'S1/S6: %s: the user name written another way is other credentials, sent as written (review r60)',
    async (scheme) => {
      r = await rig(
        { schemes: [scheme], users: { 'alice@example': 'pw' } },
        { negotiate: false, credentials: { username: 'alice', domain: 'example', password: 'pw' } },
      );
      const url = `${r.server.origin}/auth`;
      expect((await getUser(`${url}/a`, r.agent)).status).toBe(401);
      r.agent.setCredentials({ username: 'alice@example', password: 'pw' });
      // Was 401: taken as unchanged, the agent kept sending `alice`.
      expect(await getUser(`${url}/b`, r.agent)).toEqual({ status: 200, user: 'alice@example' });
    },
  );

  it('R4: the old password refused after the call (its handshake was on the wire) does not count against the new one', async () => {
    const held = hold('/slow', 200);
    r = await rig(
      { schemes: ['Basic'], faults: { delayMs: held.delayMs } },
      { negotiate: false, limits: { maxReplayBodyBytes: 1024 } },
    );
    const url = `${r.server.origin}/auth`;
    expect((await getUser(`${url}/warm`, r.agent)).status).toBe(200);
    // A one-shot body past the replay limit: its refusal cannot be run again with the new password
    // (C10; test/rotation-in-flight.test.ts), so it is delivered — and must count for nothing.
    const slow = request(`${url}/slow`, {
      dispatcher: r.agent,
      method: 'PUT',
      body: Readable.from([Buffer.alloc(4096)]),
    });
    await until(() => held.arrived === 1);
    r.server.options.users = { ...r.server.options.users, 'EXAMPLE\\alice': 'rotated' };
    r.agent.setCredentials({ ...ALICE, password: 'rotated' });
    // Sent before the call with the old password, refused by the rotated server: the server's answer.
    const res = await slow;
    await res.body.dump();
    expect(res.statusCode).toBe(401);
    const after = await Promise.all(Array.from({ length: 5 }, (_, i) => getUser(`${url}/a/${i}`, r!.agent)));
    expect(after.every((x) => x.status === 200 && x.user === 'EXAMPLE\\alice')).toBe(true);
  });

  it.each([
    ['HTTP/2', false],
    ['HTTP/1.1', true],
  ])(
    'R4: %s: new credentials start unproved: after a success with the old ones, a burst with a wrong new password tries it at most twice',
    async (_, h1) => {
      r = await rig({ mode: 'session', schemes: ['NTLM'] }, { negotiate: false });
      const url = `${r.server.origin}/auth`;
      const warm = await Promise.all(Array.from({ length: 20 }, (_, i) => getUser(`${url}/warm/${i}`, r!.agent, h1)));
      expect(warm.every((x) => x.status === 200)).toBe(true);
      r.server.reset();
      // Proved a moment ago (side by side, were the proof kept): the new password must prove itself.
      r.agent.setCredentials({ ...ALICE, password: 'mistyped' });
      const burst = await Promise.all(Array.from({ length: 50 }, (_, i) => getUser(`${url}/a/${i}`, r!.agent, h1)));
      expect(burst.every((x) => x.status === 401)).toBe(true);
      const wrong = r.server.exchanges.filter((e) => e.outcome === 'rejected').length;
      expect(wrong).toBeGreaterThanOrEqual(1);
      expect(wrong).toBeLessThanOrEqual(2);
    },
  );

  for (const [kind, when] of [
    ['request', 'the certificate selector is asked'],
    ['upgrade', 'the certificate selector is asked'],
    ['request', 'its bare send is on the wire'],
    ['upgrade', 'its send presenting the certificate chosen is on the wire'],
  ] as const) {
    it(`R4/T2: ${kind}: a scheme found unusable with the old credentials, which setCredentials replaces while ${when}, is tried with the new ones (as the origin's memory forgets it)`, async () => {
      const atSelector = when === 'the certificate selector is asked';
      const certified = when === 'its send presenting the certificate chosen is on the wire';
      // A Kerberos stand-in: the old credentials name a principal with no ticket here, the new ones one with.
      const state = { ticket: false };
      const kerberosLike = {
        scheme: 'Negotiate',
        level: 'request' as const,
        multileg: false,
        proactive: false,
        usesPassword: false,
        createContext() {
          if (!state.ticket) throw new MultilegError('MULTILEG_KRB_NO_TICKET', 'no ticket for the old name (stand-in)');
          return {
            complete: false,
            async step() {
              (this as { complete: boolean }).complete = true;
              return 'Negotiate dGlja2V0';
            },
            async finish() {},
          };
        },
      };
      let rotated = 0;
      // The vault hands over the new credentials.
      const rotate = () => {
        rotated += 1;
        agent.setCredentials(BOB);
        state.ticket = true;
      };
      // /neg offers Negotiate; the rest Negotiate, and Transport to a connection presenting no
      // certificate where the selector is asked. Negotiate answered: 200, or 101 to an upgrade.
      /** The answer to a request without Negotiate; the new credentials come as /ws is read, unless the selector brings them. */
      const challenge = (req: IncomingMessage) => {
        const presented = (req.socket as TLSSocket).getPeerCertificate().subject !== undefined;
        if (req.url?.startsWith('/neg')) return 'Negotiate';
        if (!atSelector && presented === certified) rotate();
        return (atSelector || certified) && !presented
          ? 'Negotiate, Transport mode="tls-client-certificate"'
          : 'Negotiate';
      };
      const server = createHttpsServer(
        { cert: SERVER_CERT, key: SERVER_KEY, requestCert: certified, rejectUnauthorized: false },
        (req, res) => {
          if (/^Negotiate /.test(req.headers.authorization ?? '')) res.end('in');
          else res.writeHead(401, { 'www-authenticate': challenge(req) }).end('no');
        },
      );
      server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
        socket.end(
          /^Negotiate /.test(req.headers.authorization ?? '')
            ? 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n'
            : `HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: ${challenge(req)}\r\nContent-Length: 2\r\n\r\nno`,
        );
      });
      const closers: Array<() => Promise<unknown>> = [];
      const origin = await loopbackOrigin(server, closers);
      const agent: MultilegAgent = new MultilegAgent({
        credentials: ALICE,
        mechanisms: [kerberosLike],
        negotiate: false,
        // The selector declines, the vault's new credentials coming meanwhile; or it gives a certificate.
        ...(atSelector
          ? {
              clientCertificate: () => {
                rotate();
                return undefined;
              },
            }
          : certified
            ? { clientCertificate: () => ({ cert: CLIENT_CERT, key: CLIENT_KEY }) }
            : {}),
        trustedOrigins: [origin],
        connect: { ca: CA_CERT },
        proxy: false,
      });
      const go = (path: string) =>
        kind === 'request'
          ? request(origin + path, { dispatcher: agent }).then(
              async (res) => `${res.statusCode} ${await res.body.text()}`,
              (e: { code?: string }) => String(e.code),
            )
          : upgrade(origin + path, { dispatcher: agent, protocol: 'x' }).then(
              (u) => {
                u.socket.destroy();
                return 'switched';
              },
              (e: { statusCode?: number; code?: string }) => String(e.statusCode ?? e.code),
            );
      try {
        // Found unusable with the old credentials: the origin remembers it (R4).
        expect(await go('/neg')).toBe('MULTILEG_KRB_NO_TICKET');
        // Before: this one failed with the old credentials' reason, "remembered for this origin".
        expect(await go('/ws')).toBe(kind === 'request' ? '200 in' : 'switched');
        expect(rotated).toBeGreaterThan(0);
      } finally {
        await agent.destroy();
        for (const c of closers) await c();
      }
    });
  }
});

describe('S6/R4: setProxyCredentials', () => {
  /** The session-mode NTLM rig behind the reference proxy (Basic: proxyuser / proxypw), closed after each test. */
  async function behindProxy() {
    const made = await behindBasicProxy((origin, port) => [origin, `http://localhost:${port}`]);
    r = made.rig;
    return { agent: made.agent, px: made.proxy };
  }

  it.each([
    ['a CONNECT tunnel (https origin)', true],
    ['a forwarding proxy (http origin)', false],
  ])(
    'S6: through %s: after the proxy password rotated, new requests go through new proxy connections with the new one, none with the old',
    async (_, tunnel) => {
      const { agent, px } = await behindProxy();
      const url = `${tunnel ? r!.server.origin : `http://localhost:${r!.server.port}`}/auth`;
      const warm = await Promise.all(Array.from({ length: 5 }, (_, i) => getUser(`${url}/warm/${i}`, agent)));
      expect(warm.every((x) => x.status === 200)).toBe(true);
      const connections = new Set(px.exchanges.map((e) => e.connectionId));
      px.options.basicUsers = { proxyuser: 'rotated' };
      px.exchanges.length = 0;
      const sent = wire('proxy-authorization');
      agent.setProxyCredentials({ username: 'proxyuser', password: 'rotated' });
      const after = await Promise.all(Array.from({ length: 10 }, (_, i) => getUser(`${url}/a/${i}`, agent)));
      sent.stop();
      expect(after.every((x) => x.status === 200 && x.user === 'EXAMPLE\\alice')).toBe(true);
      expect(px.exchanges.length).toBeGreaterThan(0);
      expect(px.exchanges.some((e) => connections.has(e.connectionId))).toBe(false);
      expect(px.exchanges.filter((e) => e.proxyAuthorization && e.status === 407)).toHaveLength(0);
      // (Forwarded requests carry it through undici; a tunnel's CONNECT is written by the agent itself.)
      expect(sent.values.filter((v) => v === basic({ username: 'proxyuser', password: 'proxypw' }))).toHaveLength(0);
    },
  );

  it('R4: the proxy’s refusal of the old password (kept back 30 s) does not keep the new one back; the refused one given again stays held back (trial u14) until forgetRefusals lifts it (review r58)', async () => {
    const { agent, px } = await behindProxy();
    const url = `${r!.server.origin}/auth`;
    expect((await getUser(`${url}/warm`, agent)).status).toBe(200);
    px.options.basicUsers = { proxyuser: 'rotated' };
    r!.server.endSessions();
    await sleep(PROOF_FRESH_MS + 100);
    const errors: string[] = [];
    for (let i = 0; i < 3; i++) await getUser(`${url}/refused/${i}`, agent).catch((e: Error) => errors.push(e.message));
    expect(errors).toHaveLength(3);
    expect(errors[2]).toContain('refused proxy.credentials lately');
    // The refused password given again changes nothing: still held back, not sent (trial u14).
    const tried = px.exchanges.length;
    agent.setProxyCredentials({ username: 'proxyuser', password: 'proxypw' });
    await expect(getUser(`${url}/again`, agent)).rejects.toThrow('refused proxy.credentials lately');
    expect(px.exchanges.slice(tried).filter((e) => e.proxyAuthorization)).toEqual([]);
    // Fixed on the proxy: forgetRefusals tries it at once.
    px.options.basicUsers = { proxyuser: 'proxypw' };
    agent.setProxyCredentials({ username: 'proxyuser', password: 'proxypw' }, { forgetRefusals: true });
    expect(await getUser(`${url}/fixed`, agent)).toEqual({ status: 200, user: 'EXAMPLE\\alice' });
    px.options.basicUsers = { proxyuser: 'rotated' };
    agent.setProxyCredentials({ username: 'proxyuser', password: 'rotated' });
    expect(await getUser(`${url}/a`, agent)).toEqual({ status: 200, user: 'EXAMPLE\\alice' });
  });
});

describe('S2: secrets never reach logs', () => {
  it('S2/S6: DEBUG=multileg:* around setCredentials and setProxyCredentials shows no old or new password', async () => {
    const script = `
      import { request, upgrade } from 'undici';
      import { MultilegAgent } from './src/index.ts';
      import { startReferenceProxy, startReferenceServer } from './src/reference-server/index.ts';
      const server = await startReferenceServer({ mode: 'session', schemes: ['NTLM', 'Basic'] });
      const proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'Old-Pr0xy' } });
      const agent = new MultilegAgent({ negotiate: false, credentials: { username: 'EXAMPLE\\\\alice', password: 'alicepw' },
        trustedOrigins: ['http://localhost:' + server.port],
        proxy: { uri: proxy.origin, connect: { ca: proxy.ca }, credentials: { username: 'proxyuser', password: 'Old-Pr0xy' } } });
      const go = (p) => request('http://localhost:' + server.port + '/auth/' + p, { dispatcher: agent }).then((r) => r.body.text());
      await go('a');
      server.options.users = { ...server.options.users, 'EXAMPLE\\\\alice': 'N3w-Secret' };
      proxy.options.basicUsers = { proxyuser: 'N3w-Pr0xy' };
      agent.setCredentials({ username: 'EXAMPLE\\\\alice', password: 'N3w-Secret' });
      agent.setProxyCredentials({ username: 'proxyuser', password: 'N3w-Pr0xy' });
      try { agent.setCredentials({ username: 'EXAMPLE\\\\alice', password: 5 }); } catch (e) { console.error(e.message); }
      console.log('BODY ' + await go('b'));
      await agent.close(); await proxy.close(); await server.close();
    `;
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], {
      cwd: new URL('..', import.meta.url).pathname,
      env: { ...process.env, DEBUG: 'multileg:*', DEBUG_COLORS: '0' },
    });
    expect(stdout).toContain('"user":"EXAMPLE\\\\alice"');
    expect(stderr).toContain('credentials replaced');
    for (const secret of ['alicepw', 'N3w-Secret', 'Old-Pr0xy', 'N3w-Pr0xy'])
      expect(stderr + stdout).not.toContain(secret);
  });
});

describe('S6: the cookie jar across setCredentials', () => {
  /** A jar that keeps name=value for one origin. */
  const tinyJar = (): CookieStore => {
    const all = new Map<string, string>();
    return {
      cookieHeader: () => (all.size ? [...all].map(([k, v]) => `${k}=${v}`).join('; ') : undefined),
      setCookies: (_url, values) => {
        for (const v of values) {
          const pair = v.split(';')[0]!;
          const eq = pair.indexOf('=');
          all.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
        }
      },
    };
  };

  /**
   * An app that authenticates once with Basic, then runs requests as the owner of its session cookie;
   * `/public/` needs no login, and an upgrade's 101 says (X-User) whom its cookie made it run as.
   */
  async function loginApp(): Promise<{ origin: string; close: () => Promise<void> }> {
    const users: Record<string, string> = { alice: 'alicepw', bob: 'bobpw' };
    const sessions = new Map<string, string>();
    const who = (req: IncomingMessage): { user?: string; setCookie?: string } => {
      const sid = /(?:^|;\s*)sid=([^;]+)/.exec(req.headers.cookie ?? '')?.[1];
      const user = sid ? sessions.get(sid) : undefined;
      if (user) return { user };
      if (req.url?.startsWith('/public/')) return {};
      const m = /^Basic (.+)$/.exec(req.headers.authorization ?? '');
      const [u, p] = m ? Buffer.from(m[1]!, 'base64').toString().split(':') : [];
      if (u === undefined || users[u] !== p) return {};
      const id = `s${sessions.size + 1}`;
      sessions.set(id, u);
      return { user: u, setCookie: `sid=${id}; Path=/; HttpOnly` };
    };
    const server = createServer((req, res) => {
      const { user, setCookie } = who(req);
      if (!user && !req.url?.startsWith('/public/')) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="app"', 'content-length': '0' }).end();
        return;
      }
      res.writeHead(200, setCookie ? { 'set-cookie': setCookie } : {}).end(user ?? 'nobody');
    });
    server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
      socket.end(
        `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-User: ${who(req).user ?? 'nobody'}\r\n\r\n`,
      );
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return {
      origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
      close: () => {
        server.closeAllConnections();
        return new Promise((resolve) => server.close(() => resolve()));
      },
    };
  }

  it("S6: another account needs a word on the jar (its login cookie would run bob's requests as alice); a new password for the same account keeps it", async () => {
    const app = await loginApp();
    const jar = tinyJar();
    const agent = new MultilegAgent({
      credentials: { username: 'alice', password: 'alicepw' },
      trustedOrigins: [app.origin],
      allowBasicOverHttp: true,
      cookies: jar,
    });
    const who = async (path: string) => (await request(`${app.origin}${path}`, { dispatcher: agent })).body.text();
    try {
      expect(await who('/app/1')).toBe('alice');
      // Was: accepted, and every later request ran as alice through her session cookie.
      expect(() => agent.setCredentials({ username: 'bob', password: 'bobpw' })).toThrow(ConfigError);
      expect(await who('/app/2')).toBe('alice'); // nothing changed: still alice's agent
      expect(() =>
        agent.setCredentials({ username: 'bob', password: 'bobpw' }, { cookies: {} as CookieStore }),
      ).toThrow(ConfigError);
      // A rotated password for the same account: the jar stays. `Alice` is another account to a
      // Basic server that tells case apart (htpasswd): a word on the jar is needed.
      agent.setCredentials({ username: 'alice', password: 'alicepw' });
      expect(await who('/app/3')).toBe('alice');
      expect(() => agent.setCredentials({ username: 'Alice', password: 'alicepw' })).toThrow(ConfigError);
      // Bob with a jar of his own: his requests are his.
      agent.setCredentials({ username: 'bob', password: 'bobpw' }, { cookies: tinyJar() });
      expect(await who('/app/4')).toBe('bob');
      expect(await who('/app/5')).toBe('bob');
      // Back to alice without a jar: no cookie goes, her password does.
      agent.setCredentials({ username: 'alice', password: 'alicepw' }, { cookies: null });
      expect(await who('/app/6')).toBe('alice');
    } finally {
      await agent.destroy();
      await app.close();
    }
  });

  it('S6: after setCredentials with a new jar (or none), upgrades use it too: no WebSocket runs as alice through her login cookie', async () => {
    const app = await loginApp();
    const agent = new MultilegAgent({
      credentials: { username: 'alice', password: 'alicepw' },
      trustedOrigins: [app.origin],
      allowBasicOverHttp: true,
      cookies: tinyJar(),
    });
    const upgradedAs = async () => {
      const { headers, socket } = await upgrade(`${app.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
      socket.destroy();
      return headers['x-user'];
    };
    try {
      expect(await (await request(`${app.origin}/app/0`, { dispatcher: agent })).body.text()).toBe('alice');
      expect(await upgradedAs()).toBe('alice');
      agent.setCredentials({ username: 'bob', password: 'bobpw' }, { cookies: null });
      expect(await (await request(`${app.origin}/app/1`, { dispatcher: agent })).body.text()).toBe('bob');
      // Was: alice, the upgrade path having kept the jar it was made with.
      expect(await upgradedAs()).toBe('nobody');
    } finally {
      await agent.destroy();
      await app.close();
    }
  });

  it('S6: after setCredentials with a new jar, a kept-alive anonymous session (an untrusted origin) no longer asks or tells the old one', async () => {
    const app = await loginApp();
    // Another port of the same host: cookies ignore ports (RFC 6265 §8.5), so one jar serves both.
    const other = await loginApp();
    const agent = new MultilegAgent({
      credentials: { username: 'alice', password: 'alicepw' },
      trustedOrigins: [app.origin],
      allowBasicOverHttp: true,
      cookies: tinyJar(),
    });
    const text = async (url: string) => (await request(url, { dispatcher: agent })).body.text();
    const sent: string[] = [];
    const listener = (m: unknown) => {
      const cookie = /^cookie: (.*)$/im.exec((m as { headers: string }).headers)?.[1];
      if (cookie) sent.push(cookie.trim());
    };
    try {
      expect(await text(`${app.origin}/app/1`)).toBe('alice');
      expect(await text(`${other.origin}/public/1`)).toBe('nobody');
      agent.setCredentials({ username: 'bob', password: 'bobpw' }, { cookies: tinyJar() });
      expect(await text(`${app.origin}/app/2`)).toBe('bob');
      subscribe('undici:client:sendHeaders', listener);
      await text(`${other.origin}/public/2`);
      // The new jar's (bob's login, cookies ignoring ports); was ['sid=s1'], alice's from the old
      // jar, on the anonymous session made with it.
      expect(sent).toEqual(['sid=s2']);
    } finally {
      unsubscribe('undici:client:sendHeaders', listener);
      await agent.destroy();
      await app.close();
      await other.close();
    }
  });
});

describe('S1: setProxyCredentials with two proxies in the environment', () => {
  /** A forwarding proxy that asks for Basic and notes each user:password it is sent. */
  async function basicProxy(seen: string[]): Promise<{ hostPort: string; close: () => Promise<void> }> {
    const server = createServer((req, res) => {
      const value = req.headers['proxy-authorization'];
      if (!value) {
        res.writeHead(407, { 'proxy-authenticate': 'Basic realm="p"', 'content-length': '0' }).end();
        return;
      }
      seen.push(Buffer.from(value.replace(/^Basic /, ''), 'base64').toString());
      res.end('forwarded');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return {
      hostPort: `127.0.0.1:${(server.address() as AddressInfo).port}`,
      close: () => new Promise((resolve) => server.close(() => resolve())),
    };
  }

  it("S1: a password rotated for https_proxy's proxy does not go to http_proxy's, which had none or another user's; when it cannot be told whose they are, the call throws", async () => {
    const seenA: string[] = [];
    const seenB: string[] = [];
    const a = await basicProxy(seenA);
    const b = await basicProxy(seenB);
    const names = ['http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'no_proxy', 'NO_PROXY'] as const;
    const saved = Object.fromEntries(names.map((n) => [n, process.env[n]]));
    for (const n of names) delete process.env[n];
    const agents: MultilegAgent[] = [];
    try {
      process.env.http_proxy = `http://${a.hostPort}`;
      process.env.https_proxy = `http://bob:old-b-pw@${b.hostPort}`;
      const agent = new MultilegAgent({ trustedOrigins: ['https://unused.example'] });
      agents.push(agent);
      agent.setProxyCredentials({ username: 'bob', password: 'new-b-pw' });
      const res = await request('http://origin.example/2', { dispatcher: agent }).catch((e: Error) => e);
      if (!(res instanceof Error)) await res.body.text();
      // Was: ['bob:new-b-pw'], a password A was never given.
      expect(seenA).toEqual([]);
      // Neither proxy with credentials: which one they are for cannot be told.
      process.env.https_proxy = `http://${b.hostPort}`;
      const unsure = new MultilegAgent({ trustedOrigins: ['https://unused.example'] });
      agents.push(unsure);
      expect(() => unsure.setProxyCredentials({ username: 'bob', password: 'new-b-pw' })).toThrow(ConfigError);
      // Both hold credentials (carol at A, bob at B): bob's go to B only; a third user's cannot be told.
      process.env.http_proxy = `http://carol:carol-pw@${a.hostPort}`;
      process.env.https_proxy = `http://bob:old-b-pw@${b.hostPort}`;
      const both = new MultilegAgent({ trustedOrigins: ['https://unused.example'] });
      agents.push(both);
      both.setProxyCredentials({ username: 'bob', password: 'new-b-pw' });
      await (await request('http://origin.example/carol', { dispatcher: both })).body.text();
      // Was: ['bob:new-b-pw'] at A, carol's proxy (review r24).
      expect(seenA).toEqual(['carol:carol-pw']);
      expect(() => both.setProxyCredentials({ username: 'dave', password: 'davepw' })).toThrow(ConfigError);
      seenA.length = 0;
      // One proxy for both schemes: as before, it gets them.
      process.env.http_proxy = `http://${a.hostPort}`;
      process.env.https_proxy = process.env.http_proxy;
      const one = new MultilegAgent({ trustedOrigins: ['https://unused.example'] });
      agents.push(one);
      one.setProxyCredentials({ username: 'carol', password: 'carolpw' });
      await (await request('http://origin.example/3', { dispatcher: one })).body.text();
      expect(seenA).toEqual(['carol:carolpw']);
    } finally {
      for (const n of names) {
        if (saved[n] === undefined) delete process.env[n];
        else process.env[n] = saved[n];
      }
      for (const agent of agents) await agent.destroy();
      await a.close();
      await b.close();
    }
  });
  it("S1: two proxies holding one user name with different passwords (two accounts of that name): a new password cannot be told to be either's, so the call throws and neither gets it (review r68)", async () => {
    const seenA: string[] = [];
    const seenB: string[] = [];
    const a = await basicProxy(seenA);
    const b = await basicProxy(seenB);
    const names = ['http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'no_proxy', 'NO_PROXY'] as const;
    const saved = Object.fromEntries(names.map((n) => [n, process.env[n]]));
    for (const n of names) delete process.env[n];
    const agents: MultilegAgent[] = [];
    try {
      process.env.http_proxy = `http://alice:a-pw@${a.hostPort}`;
      process.env.https_proxy = `http://alice:b-pw@${b.hostPort}`;
      const agent = new MultilegAgent({ trustedOrigins: ['https://unused.example'] });
      agents.push(agent);
      // alice's password at B was rotated; the agent cannot know that B, not A, is meant.
      expect(() => agent.setProxyCredentials({ username: 'alice', password: 'new-b-pw' })).toThrow(ConfigError);
      expect(() => agent.setProxyCredentials({ username: 'alice', password: 'new-b-pw' })).toThrow(
        /both hold alice's with other passwords/,
      );
      await (await request('http://origin.example/1', { dispatcher: agent })).body.text();
      // Was: ['alice:new-b-pw'], B's new password sent to A.
      expect(seenA).toEqual(['alice:a-pw']);
      // One account at both (the same password): it is both proxies', as before.
      process.env.https_proxy = `http://alice:a-pw@${b.hostPort}`;
      const one = new MultilegAgent({ trustedOrigins: ['https://unused.example'] });
      agents.push(one);
      one.setProxyCredentials({ username: 'alice', password: 'rotated' });
      await (await request('http://origin.example/2', { dispatcher: one })).body.text();
      expect(seenA.at(-1)).toBe('alice:rotated');
      expect(seenB).toEqual([]);
    } finally {
      for (const n of names) {
        if (saved[n] === undefined) delete process.env[n];
        else process.env[n] = saved[n];
      }
      for (const agent of agents) await agent.destroy();
      await a.close();
      await b.close();
    }
  });
});

describe('S6: the cookie jar after the ambient principal switches (review r48)', () => {
  /**
   * An app that logs a user in once by ticket and then by its session cookie (mod_auth_gssapi's
   * GssapiUseSessions, an app's login cookie); a stand-in mechanism whose "ccache" the test switches,
   * reporting it through holdsCredentials as the Negotiate mechanism does.
   */
  async function ambientApp() {
    const state = { ccache: 'alice@EXAMPLE.TEST' as string | undefined };
    const logins = new Map<string, string>();
    const seen: string[] = [];
    const closers: Array<() => Promise<unknown>> = [];
    const server = createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, (req, res) => {
      const sid = /sid=(\w+)/.exec(req.headers.cookie ?? '')?.[1];
      const ticket = /^Negotiate (\S+)$/.exec(req.headers.authorization ?? '')?.[1];
      if (sid && logins.has(sid)) {
        seen.push(`${req.url} cookie ${logins.get(sid)}`);
        res.end(logins.get(sid));
      } else if (ticket) {
        const user = Buffer.from(ticket, 'base64').toString();
        const id = `s${logins.size}`;
        logins.set(id, user);
        seen.push(`${req.url} ticket ${user}`);
        res.writeHead(200, { 'set-cookie': `sid=${id}; Secure; HttpOnly; Path=/` }).end(user);
      } else {
        seen.push(`${req.url} bare`);
        res.writeHead(401, { 'www-authenticate': 'Negotiate' }).end();
      }
    });
    // An upgrade (a WebSocket, say): switched for whoever its login cookie names, or for a ticket
    // (then with a login cookie of its own, as for a request), else challenged.
    server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
      const sid = /sid=(\w+)/.exec(req.headers.cookie ?? '')?.[1];
      const ticket = /^Negotiate (\S+)$/.exec(req.headers.authorization ?? '')?.[1];
      const switched = 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n';
      if (sid && logins.has(sid)) {
        seen.push(`${req.url} upgrade ${logins.get(sid)}`);
        socket.end(`${switched}\r\n`);
      } else if (ticket) {
        const user = Buffer.from(ticket, 'base64').toString();
        const id = `s${logins.size}`;
        logins.set(id, user);
        seen.push(`${req.url} upgrade ticket ${user}`);
        socket.end(`${switched}Set-Cookie: sid=${id}; Secure; HttpOnly; Path=/\r\n\r\n`);
      } else {
        seen.push(`${req.url} upgrade bare`);
        socket.end('HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\nContent-Length: 0\r\n\r\n');
      }
    });
    const origin = await loopbackOrigin(server, closers);
    const kerberosLike = {
      scheme: 'Negotiate',
      level: 'request' as const,
      multileg: false,
      proactive: false,
      usesPassword: false,
      createContext() {
        let who: string | undefined;
        return {
          complete: false,
          get identity() {
            return who;
          },
          async step() {
            if (!state.ccache) throw new MultilegError('MULTILEG_KRB_NO_TICKET', 'no ticket (stand-in)');
            who = state.ccache;
            (this as { complete: boolean }).complete = true;
            return `Negotiate ${Buffer.from(state.ccache).toString('base64')}`;
          },
          async finish() {},
        };
      },
      holdsCredentials: (identity: string) => identity === state.ccache,
    };
    const newJar = (): CookieStore => {
      const jarred = new Map<string, string>();
      return {
        cookieHeader: () => (jarred.size ? [...jarred].map(([k, v]) => `${k}=${v}`).join('; ') : undefined),
        setCookies: (_u, values) => {
          for (const v of values) {
            const [k, val] = v.split(';')[0]!.split('=');
            jarred.set(k!, val!);
          }
        },
      };
    };
    const agent = new MultilegAgent({
      connect: { ca: CA_CERT },
      trustedOrigins: [origin],
      mechanisms: [kerberosLike],
      negotiate: false,
      cookies: newJar(),
    });
    const get = async (path: string) => {
      const res = await request(origin + path, { dispatcher: agent });
      return `${res.statusCode} ${await res.body.text()}`;
    };
    const close = async () => {
      await agent.destroy();
      for (const c of closers) await c();
    };
    /** An upgrade through the agent: whether it switched (101) or what stood. */
    const upgradeTo = (path: string) =>
      upgrade(origin + path, { dispatcher: agent, protocol: 'x' }).then(
        (u) => {
          u.socket.destroy();
          return 'switched';
        },
        (e: { statusCode?: number; code?: string }) => String(e.statusCode ?? e.code),
      );
    /** Alice logs in (a ticket, then her login cookie); then `kdestroy; kinit bob`, seen once the agent looks again. */
    const aliceThenBob = async () => {
      expect(await get('/1')).toBe('200 alice@EXAMPLE.TEST');
      expect(await get('/2')).toBe('200 alice@EXAMPLE.TEST');
      state.ccache = 'bob@EXAMPLE.TEST'; // kdestroy; kinit bob
      await sleep(TICKET_RECHECK_MS + 50);
    };
    return { state, seen, agent, get, upgradeTo, aliceThenBob, close, newJar };
  }

  it("S6: after kinit bob, an upgrade dispatched first carries no jar holding alice's login cookie either (review r55)", async () => {
    const app = await ambientApp();
    try {
      await app.aliceThenBob();
      await app.upgradeTo('/ws');
      // Before: the upgrade switched for alice, by her login cookie.
      expect(app.seen.filter((l) => l.startsWith('/ws'))).not.toContain('/ws upgrade alice@EXAMPLE.TEST');
    } finally {
      await app.close();
    }
  });

  it("S6: a jar only upgrades used learns whose login it holds: after kinit bob, the next upgrade carries no cookie of alice's (she logged in through an upgrade)", async () => {
    const app = await ambientApp();
    try {
      expect(await app.upgradeTo('/ws1')).toBe('switched');
      expect(await app.upgradeTo('/ws2')).toBe('switched');
      app.state.ccache = 'bob@EXAMPLE.TEST'; // kdestroy; kinit bob
      await sleep(TICKET_RECHECK_MS + 50);
      expect(await app.upgradeTo('/ws3')).toBe('switched');
      // Before: '/ws3 upgrade alice@EXAMPLE.TEST', by the login cookie her upgrade got.
      expect(app.seen).toEqual([
        '/ws1 upgrade bare',
        '/ws1 upgrade ticket alice@EXAMPLE.TEST',
        '/ws2 upgrade alice@EXAMPLE.TEST',
        '/ws3 upgrade bare',
        '/ws3 upgrade ticket bob@EXAMPLE.TEST',
      ]);
    } finally {
      await app.close();
    }
  });

  it("S6: after kdestroy; kinit bob, and after kdestroy alone, requests no longer carry the jar holding alice's login cookie (bob's ticket, or no ticket: never alice); said once (MULTILEG_COOKIES_DROPPED), until setCredentials names a jar", async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error) => {
      if ((w as { code?: string }).code === 'MULTILEG_COOKIES_DROPPED') warnings.push(w);
    };
    process.on('warning', onWarning);
    const app = await ambientApp();
    try {
      await app.aliceThenBob();
      // Before: 200 alice@EXAMPLE.TEST, by her login cookie.
      expect(await app.get('/3')).toBe('200 bob@EXAMPLE.TEST');
      expect(await app.get('/4')).toBe('200 bob@EXAMPLE.TEST');
      app.state.ccache = undefined; // kdestroy
      await sleep(TICKET_RECHECK_MS + 50);
      // Before: 200 alice@EXAMPLE.TEST; now the stand-in's "no ticket".
      await expect(app.get('/5')).rejects.toMatchObject({ code: 'MULTILEG_KRB_NO_TICKET' });
      expect(app.seen).toEqual([
        '/1 bare',
        '/1 ticket alice@EXAMPLE.TEST',
        '/2 cookie alice@EXAMPLE.TEST',
        '/3 bare',
        '/3 ticket bob@EXAMPLE.TEST',
        '/4 bare',
        '/4 ticket bob@EXAMPLE.TEST',
        '/5 bare',
      ]);
      await new Promise((resolve) => setImmediate(resolve));
      expect(warnings).toHaveLength(1);
      expect(warnings[0]!.message).not.toMatch(/sid=|s0/);
      // A jar named again serves again: bob's login cookie, his from then on.
      app.state.ccache = 'bob@EXAMPLE.TEST';
      app.agent.setCredentials({ username: 'EXAMPLE\\bob', password: 'x' }, { cookies: app.newJar() });
      expect(await app.get('/6')).toBe('200 bob@EXAMPLE.TEST');
      expect(await app.get('/7')).toBe('200 bob@EXAMPLE.TEST');
      expect(app.seen.slice(-3)).toEqual(['/6 bare', '/6 ticket bob@EXAMPLE.TEST', '/7 cookie bob@EXAMPLE.TEST']);
    } finally {
      process.off('warning', onWarning);
      await app.close();
    }
  });
});
