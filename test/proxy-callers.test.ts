/**
 * A caller's own NTLM logins to a forwarding proxy and to the origin behind it (S6, H1; task r77):
 * each AUTHENTICATE goes on the connection whose CHALLENGE it answers, or nowhere, whichever header
 * carries it; and a proxy connection a caller's login authenticated carries no one else's request.
 */
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { MultilegAgent, NtlmUnpairedError, ntlmMechanism, parseChallenges } from '../src/index.ts';
import {
  type ReferenceProxy,
  type ReferenceServer,
  startReferenceProxy,
  startReferenceServer,
} from '../src/reference-server/index.ts';
import { eachRequest, hostile } from './hostile-proxy.ts';

let server: ReferenceServer | undefined;
let proxy: ReferenceProxy | undefined;
let agent: MultilegAgent | undefined;
const closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const close of closers.splice(0)) await close();
  await agent?.destroy().catch(() => {});
  await proxy?.close();
  await server?.close();
  agent = proxy = server = undefined;
});

/** The reference server (NTLM, session mode) behind the reference proxy (NTLM for `users`), and a pass-through agent over HTTP/1.1. */
async function setUp(users: Record<string, string>): Promise<{ p: ReferenceProxy; s: ReferenceServer; base: string }> {
  server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
  proxy = await startReferenceProxy({ ntlmUsers: users });
  agent = new MultilegAgent({
    negotiate: false,
    allowH2: false,
    proxy: { uri: proxy.origin, connect: { ca: proxy.ca } },
  });
  return { p: proxy, s: server, base: `http://localhost:${server.port}` };
}

type Headers = Record<string, string | string[] | undefined>;

/** A caller's own NTLM login as `user`, to the proxy (`proxy: true`: its legs are Proxy-Authorization) or to the origin. */
function login(p: ReferenceProxy, base: string, user: string, password: string, toProxy: boolean) {
  const url = new URL(toProxy ? p.origin : base);
  const leg = {
    origin: url.origin,
    hostname: url.hostname,
    port: Number(url.port),
    method: 'GET',
    path: '/',
    proxy: toProxy,
  };
  const mechanism = ntlmMechanism({ username: `EXAMPLE\\${user}`, password });
  let ctx = mechanism.createContext(leg);
  return {
    negotiate: async () => {
      ctx = mechanism.createContext(leg);
      return (await ctx.step(undefined, leg))!;
    },
    authenticate: async (res: { headers: Headers }) =>
      (await ctx.step(
        parseChallenges(res.headers[toProxy ? 'proxy-authenticate' : 'www-authenticate'] as string).find(
          (c) => c.token68,
        ),
        leg,
      ))!,
  };
}

/** A GET of `url` through the agent with the caller's own `headers`: status and headers (body read), or the error. */
async function get(url: string, headers: Record<string, string>): Promise<{ statusCode: number; headers: Headers }> {
  const res = await request(url, { dispatcher: agent!, headers });
  await res.body.dump();
  return { statusCode: res.statusCode, headers: res.headers };
}

describe("a caller's own NTLM at a forwarding proxy and at the origin in one request (S6, H1)", () => {
  it("S6/H1: an origin AUTHENTICATE sent with an NTLM leg in the caller's own Proxy-Authorization is not sent (the proxy leg would choose its connection): MULTILEG_NTLM_UNPAIRED naming both headers; sent alone it goes where its CHALLENGE came from, 200 as alice", async () => {
    const { p, s, base } = await setUp({ alice: 'alicepw' });
    const atProxy = login(p, base, 'alice', 'alicepw', true);
    const atOrigin = login(p, base, 'alice', 'alicepw', false);
    const url = `${base}/auth/alice`;
    const first = await get(url, { 'proxy-authorization': await atProxy.negotiate() });
    expect(first.statusCode).toBe(407);
    // The proxy's AUTHENTICATE and the origin's NEGOTIATE together: the proxy lets it through, the origin challenges.
    const second = await get(url, {
      'proxy-authorization': await atProxy.authenticate(first),
      authorization: await atOrigin.negotiate(),
    });
    expect(second.statusCode).toBe(401);
    const originAuthenticate = await atOrigin.authenticate(second);
    // A second proxy login: its CHALLENGE comes on another proxy connection.
    const third = await get(url, { 'proxy-authorization': await atProxy.negotiate() });
    expect(third.statusCode).toBe(407);
    const proxySent = p.exchanges.length;
    const err = await get(url, {
      'proxy-authorization': await atProxy.authenticate(third),
      authorization: originAuthenticate,
    }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(NtlmUnpairedError);
    expect((err as NtlmUnpairedError).code).toBe('MULTILEG_NTLM_UNPAIRED');
    expect((err as NtlmUnpairedError).reason).toBe('proxy-leg');
    expect((err as NtlmUnpairedError).proxy).toBeUndefined();
    expect((err as Error).message).toContain('Proxy-Authorization');
    expect((err as Error).message).toContain('without Proxy-Authorization');
    // Before: sent with the proxy's AUTHENTICATE, on the second proxy connection, so the origin read
    // alice's AUTHENTICATE on a connection that never had her NEGOTIATE.
    expect(p.exchanges.length).toBe(proxySent);
    // The origin's AUTHENTICATE alone goes where its CHALLENGE came from: the proxy connection alice's login holds.
    const last = await request(url, { dispatcher: agent!, headers: { authorization: originAuthenticate } });
    const body = (await last.body.json()) as { user: string | null };
    expect([last.statusCode, body.user]).toEqual([200, 'EXAMPLE\\alice']);
    const ntlmAt = (type: number) =>
      s.exchanges.filter((e) => {
        const m = /^NTLM (\S+)/.exec(String(e.requestHeaders.authorization ?? ''));
        return m !== null && Buffer.from(m[1]!, 'base64').readUInt32LE(8) === type;
      });
    expect(ntlmAt(3).map((e) => e.sessionId)).toEqual(ntlmAt(1).map((e) => e.sessionId));
    expect(s.exchanges.filter((e) => e.reason !== undefined)).toEqual([]);
  });

  it("S6: a proxy connection bob's own NTLM login authenticated, the origin then answering 401, carries no one else's request: Mallory's NEGOTIATE goes on a new connection and gets the proxy's 407, not through as bob", async () => {
    const { p, base } = await setUp({ bob: 'bobpw' });
    const bob = login(p, base, 'bob', 'bobpw', true);
    const mallory = login(p, base, 'mallory', 'x', true);
    const first = await get(`${base}/auth/bob`, { 'proxy-authorization': await bob.negotiate() });
    expect(first.statusCode).toBe(407);
    // The proxy takes bob's login; the origin wants its own.
    expect((await get(`${base}/auth/bob`, { 'proxy-authorization': await bob.authenticate(first) })).statusCode).toBe(
      401,
    );
    const hers = await get(`${base}/public/mallory`, { 'proxy-authorization': await mallory.negotiate() });
    // Before: 200, let through as bob on the connection his login authenticated.
    expect(hers.statusCode).toBe(407);
    expect(p.exchanges.filter((e) => e.target.endsWith('/public/mallory')).map((e) => e.proxyUser ?? null)).toEqual([
      null,
    ]);
  });
});

/** An SPNEGO NegTokenResp whose negState is reject (mod_auth_gssapi's refusal of every offered mechanism). */
const REJECT = 'oQcwBaADCgEC';
/** A caller's own Negotiate credential (a Kerberos-looking token: no NTLM in it, nothing for the scripted peers to check). */
const own = (who: string) => `Negotiate ${Buffer.from(`\x60\x0a${who}-kerberos-token`, 'latin1').toString('base64')}`;

/**
 * A peer (an origin, or a forwarding proxy: absolute-form targets) that answers every request with
 * `statusAndHeaders` and an empty body, keeping the path of each request by connection; closed after the test.
 */
async function refusingPeer(statusAndHeaders: string): Promise<{ h: { port: number }; paths: string[][] }> {
  const paths: string[][] = [];
  const h = await hostile((socket, received) => {
    const mine: string[] = [];
    paths.push(mine);
    eachRequest(socket, received, (head) => {
      mine.push(new URL(head.split(' ')[1]!, 'http://origin.example').pathname);
      socket.write(`HTTP/1.1 ${statusAndHeaders}\r\nContent-Length: 0\r\n\r\n`);
      return undefined;
    });
  });
  closers.push(() => h.close());
  return { h, paths };
}

describe("a caller's own Negotiate refused with an SPNEGO reject token (S6, H1)", () => {
  it("S6/H1: at the origin (HTTP/1.1), bob's own Negotiate answered 401 with a reject token retires its connection, as a token-less 401 does: alice's next request goes on another", async () => {
    const { h, paths } = await refusingPeer(`401 Unauthorized\r\nWWW-Authenticate: Negotiate ${REJECT}`);
    agent = new MultilegAgent({ negotiate: false });
    const base = `http://127.0.0.1:${h.port}`;
    expect((await get(`${base}/bob`, { authorization: own('bob') })).statusCode).toBe(401);
    expect((await get(`${base}/alice`, { authorization: own('alice') })).statusCode).toBe(401);
    // Before: ['/bob', '/alice'] on one connection, which the server may hold as bob's failed login.
    expect(paths).toEqual([['/bob'], ['/alice']]);
  });

  it("S6/H1: at a forwarding proxy, bob's own Negotiate Proxy-Authorization answered 407 with a reject token retires its proxy connection: alice's next request goes on another", async () => {
    const { h, paths } = await refusingPeer(
      `407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate ${REJECT}`,
    );
    agent = new MultilegAgent({ negotiate: false, proxy: { uri: `http://127.0.0.1:${h.port}` } });
    const base = 'http://origin.example';
    expect((await get(`${base}/bob`, { 'proxy-authorization': own('bob') })).statusCode).toBe(407);
    expect((await get(`${base}/alice`, { 'proxy-authorization': own('alice') })).statusCode).toBe(407);
    expect(paths).toEqual([['/bob'], ['/alice']]);
  });
});
