/**
 * A forwarding proxy's refusals under `proxy.deliver407` (review r72): the refused 407 is the
 * caller's response, and what it says of the credentials holds as a thrown refusal's does — the
 * password is held back (R4), a refused connection-bound handshake's connection retires (H1/S2).
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { request } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  MultilegAgent,
  type MultilegAgentOptions,
  ntlmMechanism,
  PROXY_UNANSWERED_CHANNEL,
  ProxyAuthenticationError,
  type ProxyOptions,
  type ProxyUnansweredEvent,
  parseChallenges,
  type RefusalMemory,
  type RefusalPlace,
  type RememberedRefusal,
  type SchemeName,
} from '../src/index.ts';
import { encodeChallenge, NegotiateFlags } from '../src/mechanisms/ntlm/messages.ts';
import {
  type ReferenceProxy,
  type ReferenceProxyOptions,
  type ReferenceServer,
  startReferenceProxy,
  startReferenceServer,
} from '../src/reference-server/index.ts';
import { CredentialProof } from '../src/session/credential-proof.ts';
import {
  abortedWhileRecalling,
  answeringRefusalMemory,
  basic,
  heldBackAfterFirstRecall,
  ntlmLeg,
  SCRIPTED_NTLM_CHALLENGE,
  silentRefusalMemory,
  slowRefusalMemory,
  until,
  waitingRefusalMemory,
} from './helpers.ts';
import { eachRequest, hostile } from './hostile-proxy.ts';

let server: ReferenceServer | undefined;
let proxy: ReferenceProxy | undefined;
let agent: MultilegAgent | undefined;
const closers: Array<() => Promise<unknown>> = [];

/** The end of a ProxyAuthenticationError's message when the refusal memory's recall was given up at `bound` ms. */
const recallGivenUp = (bound: number) =>
  `were not sent: the refusal memory did not answer within ${bound} ms (limits.queueTimeout; another process may be trying the same password at the proxy); run again once it has, or raise limits.queueTimeout`;

/** The `multileg:proxy-unanswered` events published from now until the test's cleanup. */
function proxyUnanswered(): ProxyUnansweredEvent[] {
  const events: ProxyUnansweredEvent[] = [];
  const onEvent = (m: unknown) => events.push(m as ProxyUnansweredEvent);
  subscribe(PROXY_UNANSWERED_CHANNEL, onEvent);
  closers.push(async () => unsubscribe(PROXY_UNANSWERED_CHANNEL, onEvent));
  return events;
}

afterEach(async () => {
  for (const close of closers.splice(0)) await close();
  await agent?.destroy().catch(() => {});
  await proxy?.close();
  await server?.close();
  agent = proxy = server = undefined;
});

const PROXY_ACCOUNT = { username: 'proxyuser', password: 'proxypw' };

/** Status of a GET of `url` through the agent (its body read). */
async function status(url: string): Promise<number> {
  const res = await request(url, { dispatcher: agent! });
  await res.body.dump();
  return res.statusCode;
}

/**
 * The reference server (session mode) and proxy (`proxyOptions`), and the agent going through that
 * proxy as `agentProxy` says (its URI and CA added), with `limits`: the proxy, and the plain-http base.
 */
async function throughProxy(
  proxyOptions: ReferenceProxyOptions,
  agentProxy: Omit<ProxyOptions, 'uri' | 'connect'> = {},
  limits: MultilegAgentOptions['limits'] = {},
  allowH2 = true,
): Promise<{ p: ReferenceProxy; base: string; a: MultilegAgent }> {
  server = await startReferenceServer({ mode: 'session' });
  proxy = await startReferenceProxy(proxyOptions);
  agent = new MultilegAgent({
    negotiate: false,
    limits,
    allowH2,
    proxy: { uri: proxy.origin, connect: { ca: proxy.ca }, ...agentProxy },
  });
  return { p: proxy, base: `http://localhost:${server.port}`, a: agent };
}

describe('a refused proxy password delivered as the 407 (proxy.deliver407, reference proxy)', () => {
  it('R4/H5: a Basic password the proxy refused, its 407 delivered, is held back: the next request goes bare and gets the 407, until forgetRefusals or setProxyCredentials', async () => {
    const { p, base, a } = await throughProxy(
      { basicUsers: { proxyuser: 'proxypw' } },
      { deliver407: true, credentials: { ...PROXY_ACCOUNT, password: 'wrong' } },
    );
    const wire = (from: number) => p.exchanges.slice(from).map((e) => [e.status, e.proxyAuthorization]);
    const events = proxyUnanswered();
    expect(await status(`${base}/public/one`)).toBe(407);
    expect(wire(0)).toEqual([
      [407, false],
      [407, true],
    ]);
    // Refused: not sent again — the 407 is the caller's at once (was: the password went again
    // with every request, as many times as the caller asked).
    for (const path of ['two', 'three']) {
      const from = p.exchanges.length;
      expect(await status(`${base}/public/${path}`)).toBe(407);
      expect(wire(from)).toEqual([[407, false]]);
    }
    // Why each went unanswered: the refusal, then the password held back for it.
    expect(events.map((e) => e.reason)).toEqual(['refused', 'refused-lately', 'refused-lately']);
    // The caller says the password may work now: it is tried once more.
    a.setProxyCredentials({ ...PROXY_ACCOUNT, password: 'wrong' }, { forgetRefusals: true });
    let from = p.exchanges.length;
    expect(await status(`${base}/public/four`)).toBe(407);
    expect(wire(from)).toEqual([
      [407, false],
      [407, true],
    ]);
    // New credentials are not held back by the old ones' refusal.
    a.setProxyCredentials(PROXY_ACCOUNT);
    from = p.exchanges.length;
    expect(await status(`${base}/public/five`)).toBe(200);
    expect(wire(from).at(-1)).toEqual([200, true]);
  });

  it('H1/S2/R4: a refused NTLM handshake to the proxy, its 407 delivered, retires its proxy connection and holds the password back: the next request goes on a new connection', async () => {
    const { p, base, a } = await throughProxy(
      { ntlmUsers: { proxyuser: 'proxypw' } },
      { deliver407: true, schemes: ['NTLM'], credentials: { ...PROXY_ACCOUNT, password: 'wrong' } },
    );
    const wire = (from: number) =>
      p.exchanges
        .slice(from)
        .map((e) => [e.connectionId, e.proxyNtlm ?? (e.proxyAuthorization ? 'other' : '-'), e.status]);
    expect(await status(`${base}/public/one`)).toBe(407);
    expect(wire(0)).toEqual([
      ['c1', 'negotiate', 407],
      ['c1', 'authenticate', 407],
    ]);
    expect(a.handshakes()).toEqual([
      expect.objectContaining({ proxy: true, scheme: 'NTLM', outcome: 'failed', failure: 'refused' }),
    ]);
    // Held back (R4): no NEGOTIATE, no AUTHENTICATE; and not on the refused connection.
    let from = p.exchanges.length;
    expect(await status(`${base}/public/two`)).toBe(407);
    expect(wire(from)).toEqual([['c2', '-', 407]]);
    // The right password: authenticated on a connection of its own, never on the refused one.
    a.setProxyCredentials(PROXY_ACCOUNT);
    from = p.exchanges.length;
    expect(await status(`${base}/public/three`)).toBe(200);
    const after = wire(from);
    expect(after.map(([, message, code]) => [message, code])).toEqual([
      ['negotiate', 407],
      ['authenticate', 200],
    ]);
    expect(after.filter(([id]) => id === 'c1')).toEqual([]);
  });

  it("S6/H1: a caller's own NTLM Proxy-Authorization whose AUTHENTICATE the proxy refuses retires that proxy connection: the caller's next login goes on a new one (review r72)", async () => {
    const { p, base } = await throughProxy({ ntlmUsers: { proxyuser: 'proxypw' } });
    const proxyLeg = { origin: p.origin, hostname: 'localhost', port: p.port, method: 'GET', path: '/', proxy: true };
    /** The caller's own NTLM handshake with the proxy, as `password`: the status of its AUTHENTICATE. */
    const login = async (password: string, path: string) => {
      const ctx = ntlmMechanism({ username: 'proxyuser', password }).createContext(proxyLeg);
      const first = await request(`${base}${path}`, {
        dispatcher: agent!,
        headers: { 'proxy-authorization': (await ctx.step(undefined, proxyLeg))! },
      });
      await first.body.dump();
      expect(first.statusCode).toBe(407);
      const challenge = parseChallenges(first.headers['proxy-authenticate'] as string).find((c) => c.token68);
      const second = await request(`${base}${path}`, {
        dispatcher: agent!,
        headers: { 'proxy-authorization': (await ctx.step(challenge, proxyLeg))! },
      });
      await second.body.dump();
      return second.statusCode;
    };
    const connections = (path: string) => p.exchanges.filter((e) => e.target.endsWith(path)).map((e) => e.connectionId);
    expect(await login('wrong', '/public/wrong')).toBe(407);
    expect(await login('proxypw', '/public/right')).toBe(200);
    // Each login on one connection; before: the second on the first's refused one.
    expect(new Set(connections('/public/wrong')).size).toBe(1);
    expect(new Set(connections('/public/right')).size).toBe(1);
    expect(connections('/public/right').some((id) => connections('/public/wrong').includes(id))).toBe(false);
  });

  it("H5/R4: with proxy.deliver407, the proxy's refusal of a password a new connection carried unasked (taken up from another's success) is the caller's 407 too, not ProxyAuthenticationError; then it is held back", async () => {
    const { p, base, a } = await throughProxy(
      { basicUsers: { proxyuser: 'proxypw' } },
      { deliver407: true, credentials: PROXY_ACCOUNT },
    );
    // Another origin (another proxy connection): the same server by its address.
    const other = base.replace('localhost', '127.0.0.1');
    const wire = (from: number) => p.exchanges.slice(from).map((e) => [e.connectionId, e.status, e.proxyAuthorization]);
    expect(await status(`${base}/public/one`)).toBe(200);
    // The proxy's password changes; another origin's first request, on a new proxy connection,
    // carries the proved password unasked.
    p.options.basicUsers = { proxyuser: 'rotated' };
    let from = p.exchanges.length;
    // Before: ProxyAuthenticationError, where the caller asked for the proxy's 407.
    expect(await status(`${other}/public/two`)).toBe(407);
    expect(wire(from)).toEqual([['c2', 407, true]]);
    // Refused: neither connection sends it again (R4); each request gets the proxy's 407.
    from = p.exchanges.length;
    for (const origin of [base, other]) expect(await status(`${origin}/public/three`)).toBe(407);
    expect(wire(from)).toEqual([
      ['c1', 407, false],
      ['c2', 407, false],
    ]);
    // Lifted: the first connection's request carries it again on its own, once, and its refusal
    // is the caller's 407 as well (before: ProxyAuthenticationError).
    a.setProxyCredentials(PROXY_ACCOUNT, { forgetRefusals: true });
    from = p.exchanges.length;
    expect(await status(`${base}/public/four`)).toBe(407);
    expect(wire(from)).toEqual([['c1', 407, true]]);
  });
});

describe("a refusal's handshake report says why, delivered as the 407 or thrown (proxy.deliver407; task r77)", () => {
  /**
   * The failed proxy handshakes' reports after `run` through the reference proxy (`proxyOptions`),
   * the agent's proxy password wrong for `schemes`, with and without `deliver407`: [failure, failureReason] each.
   */
  const reportsOf = async (
    proxyOptions: ReferenceProxyOptions,
    schemes: ProxyOptions['schemes'],
    run: (base: string, p: ReferenceProxy) => Promise<void>,
  ) => {
    const got: Record<string, unknown[]> = {};
    for (const deliver407 of [false, true]) {
      const { p, base, a } = await throughProxy(proxyOptions, { deliver407, schemes, credentials: PROXY_ACCOUNT });
      await run(base, p);
      got[String(deliver407)] = a
        .handshakes()
        .filter((h) => h.outcome === 'failed')
        // (Each run's proxy has a port of its own.)
        .map((h) => [h.scheme, h.failure, h.failureReason?.replace(p.origin, 'PROXY')]);
      await a.destroy();
      await p.close();
      await server!.close();
      agent = proxy = server = undefined;
    }
    return got;
  };
  /** A GET through the agent: its status, or the error's code. */
  const outcome = (url: string) => status(url).catch((err: Error & { code?: string }) => err.code ?? err.message);

  it("H5/S2: a refused NTLM handshake and a refused Basic password report failureReason with deliver407 as without: the refusal's code and message, no secret", async () => {
    for (const [proxyOptions, schemes] of [
      [{ ntlmUsers: { proxyuser: 'other' } }, ['NTLM']],
      [{ basicUsers: { proxyuser: 'other' } }, ['Basic']],
    ] as const) {
      const got = await reportsOf(proxyOptions, [...schemes], async (base) => {
        expect([407, 'MULTILEG_PROXY_AUTH']).toContain(await outcome(`${base}/public/one`));
      });
      const scheme = schemes[0];
      const reason = `MULTILEG_PROXY_AUTH: proxy PROXY requires authentication (407; offers ${scheme}): the proxy rejected the ${scheme} credentials`;
      expect(got.false).toEqual([[scheme, 'refused', expect.stringContaining(reason)]]);
      // Before: [scheme, 'refused', undefined] under deliver407.
      expect(got.true).toEqual(got.false);
      expect(JSON.stringify(got)).not.toContain('proxypw');
      expect(JSON.stringify(got)).not.toContain(Buffer.from('proxyuser:proxypw').toString('base64'));
    }
  });

  it("H5/S2: a request's own Basic (taken up after a success) refused once the proxy's password changed reports failureReason too, delivered or thrown", async () => {
    const got = await reportsOf({ basicUsers: { proxyuser: 'proxypw' } }, ['Basic'], async (base, p) => {
      expect(await status(`${base}/public/one`)).toBe(200);
      p.options.basicUsers = { proxyuser: 'changed' };
      expect([407, 'MULTILEG_PROXY_AUTH']).toContain(await outcome(`${base}/public/two`));
    });
    // Before: ['Basic', 'refused', undefined] both ways.
    for (const reports of [got.false!, got.true!]) {
      expect(reports).toEqual([
        ['Basic', 'refused', expect.stringMatching(/^MULTILEG_PROXY_AUTH: .*rejected the Basic/)],
      ]);
    }
  });
});

describe('the NTLM opening through a forwarding proxy under proxy.deliver407 (scripted proxy)', () => {
  it('H5: a bare NTLM 407 to the NEGOTIATE sent unasked (the proxy took no part in it) is answered as without deliver407 — the handshake starts — not handed to the caller as a refusal', async () => {
    /** The NTLM message type a Proxy-Authorization carries (1, 3), 0 for none. */
    const ntlmType = (head: string): number => {
      const m = /\r\nproxy-authorization: NTLM (\S+)/i.exec(head);
      return m ? Buffer.from(m[1]!, 'base64').readUInt32LE(8) : 0;
    };
    const seen: number[] = [];
    const h = await hostile((socket, received) =>
      eachRequest(socket, received, (head) => {
        const type = ntlmType(head);
        seen.push(type);
        const answer =
          type === 3
            ? 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
            : `HTTP/1.1 407 x\r\nProxy-Authenticate: NTLM${type === 1 && seen.length > 1 ? ` ${SCRIPTED_NTLM_CHALLENGE}` : ''}\r\nContent-Length: 0\r\n\r\n`;
        socket.write(answer);
        return undefined;
      }),
    );
    closers.push(() => h.close());
    agent = new MultilegAgent({
      negotiate: false,
      proxy: { uri: `http://127.0.0.1:${h.port}`, schemes: ['NTLM'], credentials: PROXY_ACCOUNT, deliver407: true },
    });
    // Before: 407 (the bare NTLM 407 to the opening, delivered), the handshake never run.
    expect(await status('http://origin.example/x')).toBe(200);
    expect(seen).toEqual([1, 1, 3]);
  });

  it("H1/R4: over an http:// (HTTP/1.1) proxy, the refused NTLM handshake's 407 reaches the caller whole, body included, and its connection retires: the next request opens another", async () => {
    const ntlmType = (head: string): number => {
      const m = /\r\nproxy-authorization: NTLM (\S+)/i.exec(head);
      return m ? Buffer.from(m[1]!, 'base64').readUInt32LE(8) : 0;
    };
    const body = 'access denied by the proxy';
    const h = await hostile((socket, received) =>
      eachRequest(socket, received, (head) => {
        const type = ntlmType(head);
        socket.write(
          type === 1
            ? `HTTP/1.1 407 x\r\nProxy-Authenticate: NTLM ${SCRIPTED_NTLM_CHALLENGE}\r\nContent-Length: 0\r\n\r\n`
            : `HTTP/1.1 407 x\r\nProxy-Authenticate: NTLM\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
        );
        return undefined;
      }),
    );
    closers.push(() => h.close());
    agent = new MultilegAgent({
      negotiate: false,
      proxy: { uri: `http://127.0.0.1:${h.port}`, schemes: ['NTLM'], credentials: PROXY_ACCOUNT, deliver407: true },
    });
    const res = await request('http://origin.example/x', { dispatcher: agent });
    expect(res.statusCode).toBe(407);
    expect(await res.body.text()).toBe(body);
    expect(h.connections).toBe(1);
    const again = await request('http://origin.example/y', { dispatcher: agent });
    expect(again.statusCode).toBe(407);
    await again.body.dump();
    expect(h.connections).toBe(2);
  });

  it('H5: a Basic-only 407 to the NEGOTIATE sent unasked goes to the caller as unconfigured (proxy.schemes leaves Basic out), not as a refusal: no password went', async () => {
    const h = await hostile((socket, received) =>
      eachRequest(socket, received, () => {
        socket.write('HTTP/1.1 407 x\r\nProxy-Authenticate: Basic realm="p"\r\nContent-Length: 0\r\n\r\n');
        return undefined;
      }),
    );
    closers.push(() => h.close());
    const events = proxyUnanswered();
    agent = new MultilegAgent({
      negotiate: false,
      proxy: { uri: `http://127.0.0.1:${h.port}`, schemes: ['NTLM'], credentials: PROXY_ACCOUNT, deliver407: true },
    });
    expect(await status('http://origin.example/x')).toBe(407);
    // Before: 'refused' (its NEGOTIATE carries no password, and refused none).
    expect(events.map((e) => e.reason)).toEqual(['unconfigured']);
  });
});

describe("a caller's own connection-bound Proxy-Authorization (S6, reference proxy with ntlmUsers)", () => {
  it("S6: bob's own NTLM login to a forwarding proxy, aborted before its answer is read, retires the proxy connection: Mallory's next request never rides it (the proxy may have taken bob's AUTHENTICATE)", async () => {
    const { p, base, a } = await throughProxy({ ntlmUsers: { bob: 'bobpw' } });
    const proxyLeg = { origin: p.origin, hostname: 'localhost', port: p.port, method: 'GET', path: '/', proxy: true };
    const bob = ntlmMechanism({ username: 'bob', password: 'bobpw' }).createContext(proxyLeg);
    const first = await request(`${base}/public/bob`, {
      dispatcher: a,
      headers: { 'proxy-authorization': (await bob.step(undefined, proxyLeg))! },
    });
    await first.body.dump();
    expect(first.statusCode).toBe(407);
    const challenge = parseChallenges(first.headers['proxy-authenticate'] as string).find((c) => c.token68);
    const authenticate = (await bob.step(challenge, proxyLeg))!;
    // The proxy takes bob's AUTHENTICATE 300 ms after it arrives; bob goes away at 100 ms.
    p.options.delayMs = (r) => (r.proxyAuthorization === authenticate ? 300 : 0);
    const gone = new AbortController();
    setTimeout(() => gone.abort(new Error('bob went away')), 100);
    await expect(
      request(`${base}/public/bob`, {
        dispatcher: a,
        signal: gone.signal,
        headers: { 'proxy-authorization': authenticate },
      }),
    ).rejects.toThrow('bob went away');
    await new Promise((resolve) => setTimeout(resolve, 400));
    // Mallory: an NTLM NEGOTIATE of her own, no password.
    const mallory = ntlmMechanism({ username: 'mallory', password: 'x' }).createContext(proxyLeg);
    const res = await request(`${base}/public/mallory`, {
      dispatcher: a,
      headers: { 'proxy-authorization': (await mallory.step(undefined, proxyLeg))! },
    });
    await res.body.dump();
    const connections = (path: string) => p.exchanges.filter((e) => e.target.endsWith(path)).map((e) => e.connectionId);
    // Before: 200, through the proxy as bob, on the connection his login took.
    expect(res.statusCode).toBe(407);
    expect(connections('/public/mallory').some((id) => connections('/public/bob').includes(id))).toBe(false);
  });
});

describe("callers' own NTLM logins to a forwarding proxy side by side (S6, H1; review r74)", () => {
  /** A caller's own NTLM handshake with the reference proxy `p` (its legs' Proxy-Authorization), as `user`. */
  const caller = (p: ReferenceProxy, user: string, password: string) => {
    const leg = { origin: p.origin, hostname: 'localhost', port: p.port, method: 'GET', path: '/', proxy: true };
    const mechanism = ntlmMechanism({ username: user, password });
    let ctx = mechanism.createContext(leg);
    return {
      /** A new handshake's NEGOTIATE. */
      negotiate: async () => {
        ctx = mechanism.createContext(leg);
        return (await ctx.step(undefined, leg))!;
      },
      authenticate: async (res: { headers: Record<string, string | string[] | undefined> }) =>
        (await ctx.step(
          parseChallenges(res.headers['proxy-authenticate'] as string).find((c) => c.token68),
          leg,
        ))!,
    };
  };
  /** A GET of `url` through the agent with its own `proxy-authorization`: status, headers, body read. */
  const own = async (url: string, proxyAuthorization: string) => {
    const res = await request(url, { dispatcher: agent!, headers: { 'proxy-authorization': proxyAuthorization } });
    await res.body.dump();
    return res;
  };
  /** The proxy connections the requests for `path` arrived on, and who each was let through as. */
  const arrivals = (p: ReferenceProxy, path: string) =>
    p.exchanges.filter((e) => e.target.endsWith(path)).map((e) => [e.connectionId, e.proxyUser ?? null]);

  it("S6: over an HTTP/2 proxy connection, bob's NTLM login never authenticates Mallory's request in flight beside it: hers is not let through as bob", async () => {
    const { p, base } = await throughProxy({ ntlmUsers: { bob: 'bobpw' } });
    const bob = caller(p, 'bob', 'bobpw');
    const mallory = caller(p, 'mallory', 'x');
    // The proxy connection is up (an HTTP/2 session takes more than its first request once that is answered).
    expect((await own(`${base}/public/warm`, await mallory.negotiate())).statusCode).toBe(407);
    // The proxy holds Mallory's next request (a NEGOTIATE) 300 ms before it looks at the connection.
    p.options.delayMs = (r) => (r.target.endsWith('/public/mallory') ? 300 : 0);
    const hers = own(`${base}/public/mallory`, await mallory.negotiate());
    await new Promise((resolve) => setTimeout(resolve, 50));
    const first = await own(`${base}/public/bob`, await bob.negotiate());
    expect(first.statusCode).toBe(407);
    expect((await own(`${base}/public/bob`, await bob.authenticate(first))).statusCode).toBe(200);
    // Before: 200, let through as bob on the HTTP/2 session bob's login authenticated under it.
    expect((await hers).statusCode).toBe(407);
    expect(p.exchanges.find((e) => e.target.endsWith('/public/bob'))?.protocol).toBe('h2');
    const bobs = arrivals(p, '/public/bob');
    expect(bobs.map(([, user]) => user)).toEqual([null, 'EXAMPLE\\bob']);
    expect(arrivals(p, '/public/mallory')).toEqual([[expect.not.stringMatching(`^${bobs[0]![0]}$`), null]]);
  });

  it("H1: over HTTP/1.1, a caller's NEGOTIATE and AUTHENTICATE go on one proxy connection, whatever another caller's login takes meanwhile", async () => {
    const { p, base } = await throughProxy({ ntlmUsers: { bob: 'bobpw' } }, {}, {}, false);
    const bob = caller(p, 'bob', 'bobpw');
    const mallory = caller(p, 'mallory', 'x');
    const first = await own(`${base}/public/bob`, await bob.negotiate());
    expect(first.statusCode).toBe(407);
    // Mallory's NEGOTIATE, held 300 ms by the proxy, is on the wire when bob's AUTHENTICATE goes.
    p.options.delayMs = (r) => (r.target.endsWith('/public/mallory') ? 300 : 0);
    const hers = own(`${base}/public/mallory`, await mallory.negotiate());
    await new Promise((resolve) => setTimeout(resolve, 50));
    // Before: 407, bob's AUTHENTICATE sent on a connection that never had his NEGOTIATE.
    expect((await own(`${base}/public/bob`, await bob.authenticate(first))).statusCode).toBe(200);
    expect((await hers).statusCode).toBe(407);
    expect(p.exchanges.find((e) => e.target.endsWith('/public/bob'))?.protocol).toBe('http/1.1');
    const bobs = arrivals(p, '/public/bob');
    expect(bobs).toEqual([
      [bobs[0]![0], null],
      [bobs[0]![0], 'EXAMPLE\\bob'],
    ]);
    expect(arrivals(p, '/public/mallory')).toEqual([[expect.not.stringMatching(`^${bobs[0]![0]}$`), null]]);
  });

  it("H1/R4: a caller's own proxy AUTHENTICATE whose NEGOTIATE went through another agent is not sent (the proxy would read it against another context): MULTILEG_NTLM_UNPAIRED naming the proxy", async () => {
    const { p, base, a } = await throughProxy({ ntlmUsers: { bob: 'bobpw' } });
    const bob = caller(p, 'bob', 'bobpw');
    const first = await own(`${base}/public/bob`, await bob.negotiate());
    const authenticate = await bob.authenticate(first);
    agent = new MultilegAgent({ negotiate: false, proxy: { uri: p.origin, connect: { ca: p.ca } } });
    const sent = p.exchanges.length;
    const err = await own(`${base}/public/bob`, authenticate).catch((e: Error & { code?: string }) => e);
    await a.destroy();
    expect((err as { code?: string }).code).toBe('MULTILEG_NTLM_UNPAIRED');
    expect((err as Error).message).toContain(`to proxy ${p.origin} was not sent`);
    expect((err as Error).message).toContain('407 with Proxy-Authenticate: NTLM');
    // Before: sent, on a connection that never had his NEGOTIATE.
    expect(p.exchanges.length).toBe(sent);
  });

  it("H1/R4: a scripted proxy giving two callers' NEGOTIATEs one CHALLENGE (one MsvAvTimestamp): the second NEGOTIATE goes again on its own connection, then neither AUTHENTICATE is sent (they cannot be told apart)", async () => {
    // One CHALLENGE, its timestamp fixed: every NEGOTIATE gets the same pairing key.
    const challenge = encodeChallenge({
      flags: NegotiateFlags.UNICODE | NegotiateFlags.NTLM | NegotiateFlags.TARGET_INFO | NegotiateFlags.NEGOTIATE_128,
      serverChallenge: Buffer.from('0123456789abcdef', 'hex'),
      targetName: 'EXAMPLE',
      avPairs: [
        { id: 2, value: Buffer.from('EXAMPLE', 'utf16le') },
        { id: 7, value: Buffer.alloc(8, 1) },
      ],
      version: Buffer.alloc(8),
    }).toString('base64');
    /** The NTLM message type each connection's requests carried, by connection. */
    const legs: number[][] = [];
    const h = await hostile((socket, received) => {
      const mine: number[] = [];
      legs.push(mine);
      eachRequest(socket, received, (head) => {
        const m = /\r\nproxy-authorization: NTLM (\S+)/i.exec(head);
        const type = m ? Buffer.from(m[1]!, 'base64').readUInt32LE(8) : 0;
        mine.push(type);
        socket.write(
          type === 1
            ? `HTTP/1.1 407 x\r\nProxy-Authenticate: NTLM ${challenge}\r\nContent-Length: 0\r\n\r\n`
            : 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
        );
        return undefined;
      });
    });
    closers.push(() => h.close());
    agent = new MultilegAgent({ negotiate: false, proxy: { uri: `http://127.0.0.1:${h.port}` } });
    const leg = {
      origin: `http://127.0.0.1:${h.port}`,
      hostname: '127.0.0.1',
      port: h.port,
      method: 'GET',
      path: '/',
      proxy: true,
    };
    const login = (user: string) => ntlmMechanism({ username: user, password: 'pw' }).createContext(leg);
    const bob = login('bob');
    const mallory = login('mallory');
    const bobs = await own('http://origin.example/bob', (await bob.step(undefined, leg))!);
    const hers = await own('http://origin.example/mallory', (await mallory.step(undefined, leg))!);
    expect([bobs.statusCode, hers.statusCode]).toEqual([407, 407]);
    // Bob's CHALLENGE pending on the first connection: hers on a second, asked again (5 times) for another.
    expect(legs.map((l) => l.join(''))).toEqual(['1', '111111']);
    const parsed = parseChallenges(bobs.headers['proxy-authenticate'] as string).find((c) => c.token68);
    const err = await own('http://origin.example/bob', (await bob.step(parsed, leg))!).catch(
      (e: Error & { reason?: string }) => e,
    );
    expect([(err as { code?: string }).code, (err as { reason?: string }).reason]).toEqual([
      'MULTILEG_NTLM_UNPAIRED',
      'ambiguous',
    ]);
    expect(legs.flat().filter((t) => t === 3)).toEqual([]);
  });
});

describe('a burst through a forwarding proxy right after its password changed (R4)', () => {
  it.each([true, false])(
    "R4: each request of the burst carries the changed password at most once (proxy.deliver407 %s): one sent again behind another's refused handshake goes bare — its leave, given before the refusal, no longer holds",
    async (deliver407) => {
      const { p, base } = await throughProxy(
        { basicUsers: { proxyuser: 'proxypw' } },
        { deliver407, credentials: PROXY_ACCOUNT },
      );
      const burst = (path: string, n: number) =>
        Promise.all(
          Array.from({ length: n }, (_, i) =>
            status(`${base}/public/${path}/${i}`).catch((e: Error & { code?: string }) => e.code),
          ),
        );
      expect(await burst('warm', 50)).toEqual(Array(50).fill(200));
      p.options.basicUsers = { proxyuser: 'rotated' };
      const from = p.exchanges.length;
      // Right after a success the password runs side by side (PROOF_FRESH_MS): each request once.
      expect(new Set(await burst('a', 100))).toEqual(new Set([deliver407 ? 407 : 'MULTILEG_PROXY_AUTH']));
      const carried = new Map<string, number>();
      for (const e of p.exchanges.slice(from))
        if (e.proxyAuthorization) carried.set(e.target, (carried.get(e.target) ?? 0) + 1);
      // Once more only for the one that tries it again after the first refusal (proved until then).
      // Before: with deliver407 every request carried it twice (200 for 100 requests), once more
      // when the connection's handshake for it came after its refusal.
      expect([...carried.values()].filter((n) => n > 1).length).toBeLessThanOrEqual(1);
      expect(Math.max(...carried.values())).toBeLessThanOrEqual(2);
      expect([...carried.values()].reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(101);
      // Refused: later requests carry it no more.
      const later = p.exchanges.length;
      await burst('b', 20);
      expect(p.exchanges.slice(later).filter((e) => e.proxyAuthorization)).toEqual([]);
    },
  );
});

describe('a forwarded request past limits.maxLegs (proxy.deliver407)', () => {
  it("R4/C11: a refusal past limits.maxLegs of the NTLM handshake a request took over after following another's (aborted) is no success: the password is not taken as proved", async () => {
    const { p, base, a } = await throughProxy(
      { ntlmUsers: { proxyuser: 'proxypw' } },
      { deliver407: true, schemes: ['NTLM', 'Basic'], credentials: { ...PROXY_ACCOUNT, password: 'wrong' } },
      // A low bound, so that a request that went again behind another's handshake passes it.
      { maxLegs: 2 },
    );
    // The proxy connection is up (no authentication asked yet): the next two requests go at once.
    const users = p.options.ntlmUsers;
    p.options.ntlmUsers = undefined;
    expect(await status(`${base}/public/warm`)).toBe(200);
    p.options.ntlmUsers = users;
    const callers = new Map(['a', 'b'].map((k) => [k, new AbortController()]));
    // The first AUTHENTICATE (the leader's) is held at the proxy, and its caller gives up meanwhile.
    let held: string | undefined;
    p.options.delayMs = (r) => {
      if (held !== undefined || !r.proxyAuthorization?.startsWith('NTLM TlRMTVNTUAAD')) return 0;
      held = r.target.split('/').pop()!;
      setTimeout(() => callers.get(held!)!.abort(new Error('the leader went away')), 100);
      return 400;
    };
    const results = await Promise.all(
      [...callers].map(([k, c]) =>
        request(`${base}/public/${k}`, { dispatcher: agent!, signal: c.signal }).then(
          async (res) => {
            await res.body.dump();
            return res.statusCode;
          },
          (e: Error) => e.message,
        ),
      ),
    );
    const follower = held === 'a' ? 'b' : 'a';
    expect(results[held === 'a' ? 1 : 0]).toBe(407);
    // The follower went again behind the leader's handshake, then ran its own: legs past maxLegs.
    expect(
      p.exchanges.filter((e) => e.target.endsWith(`/${follower}`)).map((e) => [e.proxyNtlm ?? '-', e.status]),
    ).toEqual([
      ['-', 407],
      ['-', 407],
      ['negotiate', 407],
      ['authenticate', 407],
    ]);
    // Before: its refused handshake reported as a success ('session'), the wrong password proved.
    expect(a.handshakes().map((h) => [h.outcome, h.failure])).toEqual([
      ['failed', 'error'],
      ['failed', 'refused'],
    ]);
    // Refused, so held back: the next request carries nothing.
    const from = p.exchanges.length;
    expect(await status(`${base}/public/next`)).toBe(407);
    expect(
      p.exchanges.slice(from).map((e) => [e.proxyNtlm ?? (e.proxyAuthorization ? 'other' : '-'), e.status]),
    ).toEqual([['-', 407]]);
  });
});

describe('a proxy Negotiate that carried the password as NTLM inside it (proxy.negotiate.ntlmFallback, no Kerberos ticket; scripted proxy)', () => {
  /**
   * A forwarding proxy offering Negotiate alone that answers raw NTLM inside it: the NEGOTIATE with
   * its CHALLENGE (or, `refuseOpening`, a bare 407), any AUTHENTICATE with a bare 407 (a wrong password).
   */
  const negotiateNtlmProxy = async (refuseOpening: boolean) => {
    const seen: number[] = [];
    const h = await hostile((socket, received) =>
      eachRequest(socket, received, (head) => {
        const m = /\r\nproxy-authorization: Negotiate (\S+)/i.exec(head);
        const type = m ? Buffer.from(m[1]!, 'base64').readUInt32LE(8) : 0;
        seen.push(type);
        const token = type === 1 && !refuseOpening ? ` ${SCRIPTED_NTLM_CHALLENGE}` : '';
        socket.write(`HTTP/1.1 407 x\r\nProxy-Authenticate: Negotiate${token}\r\nContent-Length: 0\r\n\r\n`);
        return undefined;
      }),
    );
    closers.push(() => h.close());
    agent = new MultilegAgent({
      negotiate: false,
      proxy: {
        uri: `http://127.0.0.1:${h.port}`,
        credentials: { ...PROXY_ACCOUNT, password: 'wrong' },
        negotiate: { ccache: 'FILE:/nonexistent/multileg-ha-no-ticket', ntlmFallback: 'raw' },
      },
    });
    const err = await request('http://origin.example/x', { dispatcher: agent }).then(
      () => undefined,
      (e: unknown) => e as ProxyAuthenticationError,
    );
    return { err, seen };
  };

  it('H5/M5: the proxy\'s refusal of the password sent as NTLM inside Negotiate says the password was refused and why Kerberos was skipped, the fix proxy.credentials (it said "rejected the Negotiate credentials; check the Kerberos ticket")', async () => {
    const { err, seen } = await negotiateNtlmProxy(false);
    expect(seen).toEqual([0, 1, 3]);
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect(err).toMatchObject({ code: 'MULTILEG_PROXY_AUTH', refused: true });
    expect(err!.message).toMatch(
      /: the proxy rejected the password, sent as NTLM inside Negotiate \(Kerberos was skipped: MULTILEG_KRB_NO_TICKET: [^)]*\); check proxy\.credentials \(user, domain, password\)$/,
    );
    expect(err!.message).not.toMatch(/Kerberos ticket for|wrong/);
    // The handshake's report says the same of it (failureReason: the error's words).
    expect(agent!.handshakes().at(-1)).toMatchObject({
      proxy: true,
      scheme: 'Negotiate',
      failure: 'refused',
      fallbackReason: expect.stringMatching(/^MULTILEG_KRB_NO_TICKET/),
      failureReason: expect.stringContaining('the proxy rejected the password, sent as NTLM inside Negotiate'),
    });
  });

  it('H5/M5: a bare 407 to the NTLM opening inside Negotiate (no password in it) says no password went and that the proxy wants Kerberos, the fix a ticket', async () => {
    const { err, seen } = await negotiateNtlmProxy(true);
    expect(seen).toEqual([0, 1]);
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect(err).toMatchObject({ refused: false });
    expect(err!.message).toMatch(
      /: the proxy refused the NTLM opening inside Negotiate, before any password was sent \(Kerberos was skipped: MULTILEG_KRB_NO_TICKET: [^)]*\): it takes Kerberos only; check the Kerberos ticket for HTTP@127\.0\.0\.1$/,
    );
  });
});

describe('a forwarded request while the refusal memory is asked (R1/R4, scripted proxy)', () => {
  /** A forwarding proxy that asks every request for `scheme` (407), and what each carried. */
  const asking = async (scheme: 'Basic' | 'NTLM') => {
    const carried: boolean[] = [];
    const h = await hostile((socket, received) =>
      eachRequest(socket, received, (head) => {
        carried.push(/\r\nproxy-authorization: /i.test(head));
        socket.write(`HTTP/1.1 407 x\r\nProxy-Authenticate: ${scheme}\r\nContent-Length: 0\r\n\r\n`);
        return undefined;
      }),
    );
    closers.push(() => h.close());
    return { uri: `http://127.0.0.1:${h.port}`, carried };
  };
  /** An agent whose proxy asks for `scheme` alone, and whose refusal memory is `memory`. */
  const recallingAgent = (uri: string, scheme: SchemeName, memory: RefusalMemory, queueTimeout: number) =>
    new MultilegAgent({
      negotiate: false,
      refusalMemory: memory,
      limits: { queueTimeout },
      proxy: { uri, negotiate: false, schemes: [scheme], credentials: PROXY_ACCOUNT },
    });
  const schemes = [
    ['Basic (asked by its 407)', 'Basic'],
    ["NTLM, the proxy's only scheme (asked before its opening)", 'NTLM'],
  ] as const;

  it.each(schemes)(
    "R1/R4: %s: the caller's abort while the recall waits ends the request at once with its reason; the recall is told (its signal aborted) and released, no credentials sent",
    async (_what, scheme) => {
      const { uri, carried } = await asking(scheme);
      const held = waitingRefusalMemory();
      agent = recallingAgent(uri, scheme, held.memory, 30_000);
      const { settled, reason } = await abortedWhileRecalling(held, (signal) =>
        request('http://origin.example/x', { dispatcher: agent, signal }),
      );
      expect(settled).toBe(reason);
      expect(held.signals[0]!.aborted).toBe(true);
      await until(() => held.released.length === 1);
      expect(carried.every((c) => !c)).toBe(true);
    },
  );

  it("R1/C4: agent.destroy() while a CONNECT tunnel's recall waits ends it at once: the recall is told (its signal aborted) and released, the request fails, no credentials sent", async () => {
    const { uri, carried } = await asking('Basic');
    const held = waitingRefusalMemory();
    agent = new MultilegAgent({
      negotiate: false,
      refusalMemory: held.memory,
      limits: { queueTimeout: 30_000 },
      proxy: { uri, negotiate: false, credentials: PROXY_ACCOUNT },
    });
    const pending = request('https://origin.example/x', { dispatcher: agent }).then(
      () => undefined,
      (e: Error) => e,
    );
    await until(() => held.signals.length === 1);
    const destroyedAt = Date.now();
    await agent.destroy();
    expect(await pending).toBeInstanceOf(Error);
    await until(() => held.released.length === 1);
    expect(held.signals[0]!.aborted).toBe(true);
    expect(Date.now() - destroyedAt).toBeLessThan(2_000);
    expect(carried).toEqual([false]);
  });

  it.each(schemes)(
    "R1: %s: agent.destroy() while a forwarded request's recall waits ends it at once (not at limits.queueTimeout): the recall told (its signal aborted) and released, no credentials sent",
    async (_what, scheme) => {
      const { uri, carried } = await asking(scheme);
      const held = waitingRefusalMemory();
      agent = recallingAgent(uri, scheme, held.memory, 30_000);
      const pending = request('http://origin.example/x', { dispatcher: agent }).then(
        () => undefined,
        (e: Error) => e,
      );
      await until(() => held.signals.length === 1);
      const destroyedAt = Date.now();
      await agent.destroy();
      expect(await pending).toMatchObject({ code: 'MULTILEG_CLOSED' });
      expect(Date.now() - destroyedAt).toBeLessThan(2_000);
      expect(held.signals[0]!.aborted).toBe(true);
      await until(() => held.released.length === 1);
      expect(carried.every((c) => !c)).toBe(true);
    },
  );

  it.each(schemes)(
    'R1/R4: %s: limits.queueTimeout bounds the recall: ProxyAuthenticationError saying the refusal memory did not answer (nothing refused), after one recall, told and released',
    async (_what, scheme) => {
      const { uri, carried } = await asking(scheme);
      const held = waitingRefusalMemory();
      agent = recallingAgent(uri, scheme, held.memory, 150);
      const err = await request('http://origin.example/x', { dispatcher: agent }).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err).toMatchObject({ code: 'MULTILEG_PROXY_AUTH', refused: false });
      // Before: "the proxy refused proxy.credentials lately … for another 0 s".
      expect(err?.message).toMatch(/were not sent: the refusal memory did not answer within 150 ms/);
      // Before, NTLM's asked again at the 407 after its opening's recall: two waits of queueTimeout.
      expect(held.signals).toHaveLength(1);
      expect(held.signals[0]!.aborted).toBe(true);
      await until(() => held.released.length === 1);
      expect(carried).toEqual([false]);
    },
  );
});

describe('a request whose recall was given up, its 407 coming after another request found the password held back (R4, scripted proxy)', () => {
  const queueTimeout = 150;
  const cases = [
    // [what, https target (a CONNECT tunnel), proxy.deliver407]
    ['a forwarded request', false, false],
    ['a forwarded request, proxy.deliver407', false, true],
    ['a CONNECT tunnel', true, false],
  ] as const;

  /** An agent whose proxy (the scripted one on `port`) asks for NTLM alone, `memory` its refusal memory. */
  const ntlmProxyAgent = (port: number, memory: RefusalMemory, deliver407: boolean) =>
    new MultilegAgent({
      negotiate: false,
      refusalMemory: memory,
      limits: { queueTimeout },
      proxy: {
        uri: `http://127.0.0.1:${port}`,
        negotiate: false,
        schemes: ['NTLM'],
        credentials: PROXY_ACCOUNT,
        deliver407,
      },
    });

  it.each(cases)(
    "R4/R1: %s: NTLM the only scheme, its recall given up at limits.queueTimeout, then another request's recall finding the password held back before its (slow) 407 comes: it says recall-timeout (nothing refused, no wait named), as decided when it went bare — not refused-lately",
    async (_what, https, deliver407) => {
      // Asks every request (CONNECT or forwarded) for NTLM; those to slow.example 400 ms late.
      const h = await hostile((socket, received) =>
        eachRequest(socket, received, (head) => {
          const answer = () =>
            socket.destroyed || socket.write('HTTP/1.1 407 x\r\nProxy-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n');
          if (/slow\.example/.test(head.split('\r\n')[0]!)) setTimeout(answer, 400);
          else answer();
          return undefined;
        }),
      );
      closers.push(() => h.close());
      // The first recall waits until given up; every later one holds the password back (a refusal
      // another process met meanwhile).
      const { memory, signals } = heldBackAfterFirstRecall(true);
      agent = ntlmProxyAgent(h.port, memory, deliver407);
      const events = proxyUnanswered();
      const scheme = https ? 'https' : 'http';
      const outcome = (url: string) =>
        request(url, { dispatcher: agent! }).then(
          async (res) => {
            await res.body.dump();
            return res.statusCode;
          },
          (e: ProxyAuthenticationError) => [e.code, e.refused, e.message.replace(/^.*: proxy\.credentials /, '')],
        );
      const slow = outcome(`${scheme}://slow.example/x`);
      // Its recall given up: it went bare, its 407 on its way.
      await until(() => signals[0]?.aborted === true);
      await until(() => h.received.some((r) => r.includes('slow.example')));
      // Meanwhile another request's recall finds the password held back.
      const other = await outcome(`${scheme}://other.example/y`);
      const first = await slow;
      expect(signals).toHaveLength(2);
      expect(h.received.every((r) => !/\r\nproxy-authorization: /i.test(r))).toBe(true);
      if (deliver407) {
        expect([first, other]).toEqual([407, 407]);
        // Before: the slow one's said refused-lately, held back 60 s more (a wait it never had).
        expect(events.map((e) => [e.origin, e.reason, e.queueTimeout]).sort()).toEqual([
          ['http://other.example', 'refused-lately', undefined],
          ['http://slow.example', 'recall-timeout', queueTimeout],
        ]);
        return;
      }
      // Before: "the proxy refused proxy.credentials lately … for another 60 s", refused: true.
      expect(first).toEqual(['MULTILEG_PROXY_AUTH', false, recallGivenUp(queueTimeout)]);
      expect(other).toEqual([
        'MULTILEG_PROXY_AUTH',
        true,
        expect.stringMatching(/the proxy refused proxy\.credentials lately .* for another 60 s/),
      ]);
    },
  );

  it.each(cases)(
    'R4: %s: NTLM the only scheme, the password held back by the refusal memory before its opening, the hold-back lifted (setProxyCredentials … forgetRefusals) before its (slow) 407 comes: it says refused-lately, as decided when it went bare — not that the memory did not answer',
    async (_what, https, deliver407) => {
      const h = await hostile((socket, received) =>
        eachRequest(socket, received, (head) => {
          setTimeout(
            () =>
              socket.destroyed ||
              socket.write('HTTP/1.1 407 x\r\nProxy-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n'),
            400,
          );
          void head;
          return undefined;
        }),
      );
      closers.push(() => h.close());
      const m = answeringRefusalMemory(true);
      agent = ntlmProxyAgent(h.port, m.memory, deliver407);
      const events = proxyUnanswered();
      const pending = request(`${https ? 'https' : 'http'}://slow.example/x`, { dispatcher: agent }).then(
        async (res) => {
          await res.body.dump();
          return res.statusCode;
        },
        (e: ProxyAuthenticationError) => [e.code, e.refused, e.message.replace(/^.*: proxy\.credentials /, '')],
      );
      // Held back: it went bare, its 407 on its way; the caller lifts the hold-back now.
      await until(() => h.received.some((r) => r.includes('slow.example')));
      expect(m.recalled).toHaveLength(1);
      agent.setProxyCredentials(PROXY_ACCOUNT, { forgetRefusals: true });
      const outcome = await pending;
      expect(h.received.every((r) => !/\r\nproxy-authorization: /i.test(r))).toBe(true);
      if (deliver407) {
        expect(outcome).toBe(407);
        // Before: recall-timeout (the proof no longer held anything back when the 407 came).
        expect(events.map((e) => [e.origin, e.reason])).toEqual([['http://slow.example', 'refused-lately']]);
        return;
      }
      // Before: "were not sent: the refusal memory did not answer within 150 ms", refused: false,
      // though the memory had answered at once.
      expect(outcome).toEqual([
        'MULTILEG_PROXY_AUTH',
        true,
        expect.stringMatching(
          /the proxy refused proxy\.credentials lately .*, so they were not sent \(that hold-back has ended since: send the request again\)/,
        ),
      ]);
    },
  );
});

describe('requests started together through a proxy while the refusal memory is silent (R1/R4, reference proxy)', () => {
  // Not smaller: the four others' pool wait for the new proxy session's first response begins with
  // them, before the first's connection and 407 (its recall only then); on a loaded 2-core CI
  // (load 5–7) that round trip alone outlasted 300 ms, and they ended in QueueTimeoutError.
  const queueTimeout = 2_000;
  const cases = [
    // [what, https target (a CONNECT tunnel), agent's proxy schemes, HTTP/2 to the proxy, deliver407]
    [
      'a forwarding proxy whose only scheme is NTLM, over HTTP/2 (asked before its opening)',
      false,
      'NTLM',
      true,
      false,
    ],
    // (A guard: held before, a proxy connection each.)
    ['a forwarding proxy whose only scheme is NTLM, over HTTP/1.1', false, 'NTLM', false, false],
    ['a forwarding proxy whose only scheme is NTLM, over HTTP/2, proxy.deliver407', false, 'NTLM', true, true],
    ['a CONNECT tunnel, Basic (asked at its 407)', true, 'Basic', true, false],
    ["a CONNECT tunnel, NTLM the agent's only scheme (asked before its opening)", true, 'NTLM', true, false],
  ] as const;

  it.each(cases)(
    'R1/R4: five requests started together through %s while a refusalMemory never answers: each ends the same typed, explained way within about one limits.queueTimeout — ProxyAuthenticationError saying the memory did not answer and nothing was sent (with proxy.deliver407 the 407, said why: recall-timeout), none a QueueTimeoutError — no password sent, each request sent once, the memory asked once',
    async (_what, https, scheme, allowH2, deliver407) => {
      server = await startReferenceServer({ mode: 'session' });
      // CONNECT goes by basicUsers alone (the reference proxy's NTLM is for forwarded requests).
      proxy = await startReferenceProxy(
        https ? { basicUsers: { proxyuser: 'proxypw' } } : { ntlmUsers: { proxyuser: 'proxypw' } },
      );
      const held = silentRefusalMemory();
      agent = new MultilegAgent({
        negotiate: false,
        allowH2,
        refusalMemory: held.memory,
        limits: { queueTimeout },
        proxy: {
          uri: proxy.origin,
          connect: { ca: proxy.ca },
          schemes: [scheme],
          credentials: PROXY_ACCOUNT,
          deliver407,
        },
        ...(https ? { connect: { ca: server.ca } } : {}),
      });
      const base = `${https ? 'https' : 'http'}://localhost:${server.port}`;
      const started = Date.now();
      const took: number[] = [];
      const events = proxyUnanswered();
      const outcomes = await Promise.all(
        [0, 1, 2, 3, 4].map((i) =>
          request(`${base}/public/n${i}`, { dispatcher: agent! }).then(
            async (res) => {
              await res.body.dump();
              took[i] = Date.now() - started;
              return res.statusCode;
            },
            (e: Error & { code?: string; refused?: boolean }) => {
              took[i] = Date.now() - started;
              return [e.code, e.refused, e.message.replace(/^.*: proxy\.credentials /, '')];
            },
          ),
        ),
      );
      // Before (HTTP/2 to a forwarding proxy; a tunnel): the first got ProxyAuthenticationError, the
      // four others QueueTimeoutError — they waited for the first session's first response, which
      // its recall held, and their wait ran out a round trip before the recall's.
      const typed = ['MULTILEG_PROXY_AUTH', false, recallGivenUp(queueTimeout)];
      expect(outcomes).toEqual([0, 1, 2, 3, 4].map(() => (deliver407 ? 407 : typed)));
      // One wait each, not two.
      for (const t of took) expect(t).toBeLessThan(2 * queueTimeout);
      // Nothing sent with credentials; each request went to the proxy once at most: through a tunnel,
      // the probe's CONNECT and one withheld bare CONNECT, whose 407 answers the other withheld
      // requests at once (each would have sent that same CONNECT: before, one each).
      expect(proxy.exchanges.every((e) => !e.proxyAuthorization && e.status === 407)).toBe(true);
      if (https) expect(proxy.exchanges.map((e) => e.method)).toEqual(['CONNECT', 'CONNECT']);
      else
        expect(proxy.exchanges.map((e) => new URL(e.target, base).pathname).sort()).toEqual(
          [0, 1, 2, 3, 4].map((i) => `/public/n${i}`),
        );
      // proxy.deliver407: each 407 said why, as an origin's 401 does on multileg:withheld (before:
      // `refused-lately`, "held back 0 s more", where nothing was refused).
      expect(events.map((e) => [e.path, e.reason, e.queueTimeout, e.heldBackFor]).sort()).toEqual(
        deliver407 ? [0, 1, 2, 3, 4].map((i) => [`/public/n${i}`, 'recall-timeout', queueTimeout, undefined]) : [],
      );
      // The memory was asked once (the others waited on that recall's outcome), and told it was given up.
      expect(held.signals).toHaveLength(1);
      expect(held.signals[0]!.aborted).toBe(true);
    },
  );
});

describe('requests started together through a proxy while its refusal memory is asked (R1/R4, reference proxy)', () => {
  const queueTimeout = 500;
  const account = { username: 'proxyuser', password: 'proxypw' };

  /** The reference server (session mode), the proxy, and an agent through it asking `memory`: the origin's base URL. */
  async function burstAgent(
    https: boolean,
    scheme: SchemeName,
    allowH2: boolean,
    memory: RefusalMemory,
    proxyOptions: ReferenceProxyOptions,
    bound = queueTimeout,
  ): Promise<string> {
    server = await startReferenceServer({ mode: 'session' });
    proxy = await startReferenceProxy(proxyOptions);
    agent = new MultilegAgent({
      negotiate: false,
      allowH2,
      refusalMemory: memory,
      limits: { queueTimeout: bound },
      proxy: { uri: proxy.origin, connect: { ca: proxy.ca }, schemes: [scheme], credentials: account },
      ...(https ? { connect: { ca: server.ca } } : {}),
    });
    return `${https ? 'https' : 'http'}://localhost:${server.port}`;
  }

  /** `n` GETs started together: each one's status, or its error's code and message; and when each ended. */
  async function burst(base: string, n: number): Promise<{ outcomes: unknown[]; took: number[] }> {
    const started = Date.now();
    const took: number[] = [];
    const outcomes = await Promise.all(
      Array.from({ length: n }, (_, i) =>
        request(`${base}/public/n${i}`, { dispatcher: agent! }).then(
          async (res) => {
            await res.body.dump();
            took[i] = Date.now() - started;
            return res.statusCode;
          },
          (e: Error & { code?: string }) => {
            took[i] = Date.now() - started;
            return [e.code, e.message.replace(/^.*: proxy\.credentials /, '')];
          },
        ),
      ),
    );
    return { outcomes, took };
  }

  // [what, https target (a CONNECT tunnel), scheme, HTTP/2 to the proxy, proxy options, proxy
  //  connections, exchanges, with credentials, NTLM NEGOTIATEs] — the counts as without a memory.
  const slow = [
    [
      'a forwarding proxy whose only scheme is NTLM, over HTTP/2 (asked before its opening)',
      false,
      'NTLM',
      true,
      { ntlmUsers: { proxyuser: 'proxypw' } },
      // One handshake (its 407, NEGOTIATE, AUTHENTICATE), then four ride the connection it authenticated.
      { connections: 1, exchanges: 6, credentials: 2, negotiates: 1 },
    ],
    [
      'a forwarding proxy, Basic over HTTP/2 (asked at its 407)',
      false,
      'Basic',
      true,
      { basicUsers: { proxyuser: 'proxypw' } },
      { connections: 1, exchanges: 6, credentials: 5, negotiates: 0 },
    ],
    [
      'a CONNECT tunnel, Basic (asked at its 407)',
      true,
      'Basic',
      true,
      { basicUsers: { proxyuser: 'proxypw' } },
      // The 407 (Connection: close), then one CONNECT with the password: the five ride its HTTP/2.
      { connections: 2, exchanges: 2, credentials: 1, negotiates: 0 },
    ],
  ] as const;

  it.each(slow)(
    'R1/R4: five requests started together through %s while the refusalMemory answers after 100 ms (nothing remembered, the right password) wait for that outcome and then ride the authenticated proxy connection: as many proxy connections, handshakes and passwords sent as without a memory, the memory asked once',
    async (_what, https, scheme, allowH2, proxyOptions, expected) => {
      const slowMemory = slowRefusalMemory(100);
      // A bound of 2 s, not 500 ms: the four others' pool wait for the new proxy session's first
      // response begins before the first's connection and 407; under CI-like load (8 busy loops on 2
      // cores) one of five ended otherwise than 200 once in 7 runs, as the silent-memory bursts did.
      const base = await burstAgent(https, scheme, allowH2, slowMemory.memory, proxyOptions, 2_000);
      const { outcomes } = await burst(base, 5);
      expect(outcomes).toEqual([200, 200, 200, 200, 200]);
      // Before: a proxy connection each (the others opened theirs while the recall waited), and a
      // handshake each on it once proved: 5 connections and 5 NTLM handshakes (10 exchanges, 10
      // with credentials), 5 Basic connections, 10 CONNECTs with the password sent on 5 tunnels.
      const exchanges = proxy!.exchanges;
      expect({
        connections: new Set(exchanges.map((e) => e.connectionId)).size,
        exchanges: exchanges.length,
        credentials: exchanges.filter((e) => e.proxyAuthorization).length,
        negotiates: exchanges.filter((e) => e.proxyNtlm === 'negotiate').length,
      }).toEqual(expected);
      expect(slowMemory.calls.filter((c) => c === 'recall')).toEqual(['recall']);
    },
  );

  it('R1/R4: ten requests started together at two origins through one forwarding proxy (NTLM its only scheme, over HTTP/2) while the refusalMemory answers after 100 ms: each pool through the proxy is told once of the recall (CredentialProof.onRecall), not once per connection whose leave waits behind it — every one 200, the memory asked once', async () => {
    const slowMemory = slowRefusalMemory(100);
    // Each call of a pool's listener, of any proof (only the proxy's has listeners).
    let told = 0;
    let listening = 0;
    const onRecall = CredentialProof.prototype.onRecall;
    const listens = vi.spyOn(CredentialProof.prototype, 'onRecall').mockImplementation(function (
      this: CredentialProof,
      listener: () => void,
    ) {
      listening += 1;
      return onRecall.call(this, () => {
        told += 1;
        listener();
      });
    });
    closers.push(async () => listens.mockRestore());
    const base = await burstAgent(
      false,
      'NTLM',
      true,
      slowMemory.memory,
      { ntlmUsers: { proxyuser: 'proxypw' } },
      2_000,
    );
    // The same server by two names: two pools through the proxy, a proxy connection each.
    const other = base.replace('localhost', '127.0.0.1');
    const [a, b] = await Promise.all([burst(base, 5), burst(other, 5)]);
    expect([...a.outcomes, ...b.outcomes]).toEqual(Array(10).fill(200));
    expect(slowMemory.calls.filter((c) => c === 'recall')).toEqual(['recall']);
    expect(listening).toBe(2);
    // Before (task ih): each connection's leave waiting here told every pool (its opening's NEGOTIATE
    // behind the probe's recall: 2 connections × 2 pools), and each pool pumped anew at each.
    expect(told).toBe(2);
  });

  it.each([5, 20])(
    "R1/R4: %i requests started together through a forwarding proxy that offers Basic only, NTLM the agent's only scheme, while the refusalMemory answers after 100 ms: each ends in the proxy's ProxyAuthenticationError (none of the offered schemes is configured), none a QueueTimeoutError — the memory asked once, for the opening: a 407 that no configured scheme answers takes no leave",
    async (n) => {
      const slowMemory = slowRefusalMemory(100);
      const base = await burstAgent(false, 'NTLM', true, slowMemory.memory, { basicUsers: { proxyuser: 'proxypw' } });
      const { outcomes } = await burst(base, n);
      expect(outcomes.map((o) => (Array.isArray(o) ? o[0] : o))).toEqual(outcomes.map(() => 'MULTILEG_PROXY_AUTH'));
      expect(outcomes).toEqual(outcomes.map(() => outcomes[0]));
      expect(proxy!.exchanges.every((e) => !e.proxyAuthorization || e.proxyNtlm === 'negotiate')).toBe(true);
      expect(slowMemory.calls.filter((c) => c === 'recall')).toEqual(['recall']);
    },
  );

  it.each([5, 20])(
    "R1/R4: %i requests started together through a CONNECT proxy that refuses the agent's only scheme (NTLM tunnels refused) while the refusalMemory answers after 100 ms: each ends in the proxy's ProxyAuthenticationError (none of the offered schemes is configured), none a QueueTimeoutError — the memory asked once, for the opening: a 407 that no configured scheme answers takes no leave, so no tunnel after it waits for a recall",
    async (n) => {
      const slowMemory = slowRefusalMemory(100);
      // A bound of 500 ms gave 9 of 20 QueueTimeoutErrors at load 7.7 (the tunnels' pool waits begin
      // before the first CONNECT's 407); what fails without the change is the memory asked per tunnel.
      const base = await burstAgent(
        true,
        'NTLM',
        true,
        slowMemory.memory,
        { basicUsers: { proxyuser: 'proxypw' } },
        2000,
      );
      const { outcomes } = await burst(base, n);
      // Before: each bare CONNECT's 407 (Basic only) took leave, as if to answer it: a probe each,
      // which asked the memory again (nothing was proved or refused), one tunnel after another,
      // 100 ms each: 1 of 5 and 16 of 20 QueueTimeoutError, the memory asked once per tunnel.
      expect(outcomes.map((o) => (Array.isArray(o) ? o[0] : o))).toEqual(outcomes.map(() => 'MULTILEG_PROXY_AUTH'));
      expect(outcomes).toEqual(outcomes.map(() => outcomes[0]));
      // No password went: the first CONNECT carried the opening's NEGOTIATE (no 407 asked for it;
      // the proxy's, Basic only, ended the handshake), every other one nothing.
      expect(proxy!.exchanges.map((e) => [e.method, e.proxyAuthorization, e.status])).toEqual(
        proxy!.exchanges.map((_, i) => ['CONNECT', i === 0, 407]),
      );
      expect(slowMemory.calls.filter((c) => c === 'recall')).toEqual(['recall']);
    },
  );

  const silent = [
    // [what, requests, https target (a CONNECT tunnel), scheme]
    ['a forwarding proxy whose only scheme is NTLM, over HTTP/2 (asked before its opening)', 20, false, 'NTLM'],
    ['a forwarding proxy whose only scheme is NTLM, over HTTP/2 (asked before its opening)', 50, false, 'NTLM'],
    ['a CONNECT tunnel, Basic (asked at its 407)', 20, true, 'Basic'],
    ['a CONNECT tunnel, Basic (asked at its 407)', 50, true, 'Basic'],
  ] as const;

  it.each(silent)(
    'R1/R4: through %s, %i requests started together while a refusalMemory never answers each end typed within about one limits.queueTimeout (ProxyAuthenticationError: the memory did not answer, nothing sent), none a QueueTimeoutError past maxHttp1Connections — each sent to the proxy once without the password, the memory asked once',
    async (_what, n, https, scheme) => {
      const held = silentRefusalMemory();
      // Past the recall, the withheld requests' bare CONNECTs go one tunnel after another, each in
      // its own pool wait: a bound of 500 ms left 20 of them too little room on a loaded machine.
      const bound = 2000;
      const base = await burstAgent(
        https,
        scheme,
        true,
        held.memory,
        https ? { basicUsers: { proxyuser: 'proxypw' } } : { ntlmUsers: { proxyuser: 'proxypw' } },
        bound,
      );
      const { outcomes, took } = await burst(base, n);
      // Before: those past maxHttp1Connections (16) waited in the pool for a proxy connection, and
      // their wait ran out before the recall's (QueueTimeoutError).
      const typed = ['MULTILEG_PROXY_AUTH', recallGivenUp(bound)];
      expect(outcomes).toEqual(outcomes.map(() => typed));
      for (const t of took) expect(t).toBeLessThan(2 * bound);
      const exchanges = proxy!.exchanges;
      expect(exchanges.every((e) => !e.proxyAuthorization && e.status === 407)).toBe(true);
      // The probe's CONNECT (its 407 asked for the password), then one withheld CONNECT: its 407
      // answers the other withheld requests at once (each would send the same bare CONNECT). Before:
      // one CONNECT each, one tunnel after another.
      if (https) expect(exchanges.filter((e) => e.method === 'CONNECT')).toHaveLength(2);
      else
        expect(exchanges.map((e) => new URL(e.target, base).pathname).sort()).toEqual(
          Array.from({ length: n }, (_, i) => `/public/n${i}`).sort(),
        );
      expect(held.signals).toHaveLength(1);
    },
  );

  it("R1/R4: through a CONNECT tunnel (Basic, asked at its 407), 50 requests started together while a refusalMemory never answers: none a QueueTimeoutError — the first withheld bare CONNECT's 407 answers the other withheld requests at once (ProxyAuthenticationError, recall-timeout, nothing sent), not a tunnel each in turn in its own pool wait", async () => {
    const held = silentRefusalMemory();
    // 2000 as above: the others' pool wait for the first CONNECT's 407 begins before it, and under load
    // 300 ms did not always cover that round trip (task hx). The CONNECT count below is the proof.
    const bound = 2000;
    const base = await burstAgent(true, 'Basic', true, held.memory, { basicUsers: { proxyuser: 'proxypw' } }, bound);
    const { outcomes, took } = await burst(base, 50);
    // Before: 50 bare CONNECTs one after another, each in a fresh pool wait (with 300 ms: most QueueTimeoutError).
    const typed = ['MULTILEG_PROXY_AUTH', recallGivenUp(bound)];
    expect(outcomes).toEqual(outcomes.map(() => typed));
    // The burst's time does not grow with its size: about one queueTimeout (the recall's), then one round trip.
    for (const t of took) expect(t).toBeLessThan(4 * bound);
    const exchanges = proxy!.exchanges;
    expect(exchanges.every((e) => !e.proxyAuthorization && e.status === 407)).toBe(true);
    expect(exchanges.filter((e) => e.method === 'CONNECT').length).toBeLessThanOrEqual(2);
    expect(held.signals).toHaveLength(1);
  });
});

describe("withheld requests reaching the pool after the proxy's answer to a withheld bare CONNECT (R1/R4, scripted proxy)", () => {
  it("R1/R4: past a silent refusalMemory's recall, withheld requests that reach the pool after the first withheld bare CONNECT's 407 — another origin's through the same proxy, its first CONNECT answered late — get that answer (ProxyAuthenticationError, recall-timeout) rather than one more bare CONNECT; no password sent", async () => {
    const queueTimeout = 300;
    // Asks every CONNECT for Basic (407): the first one to slow.example 400 ms late.
    const connects: string[] = [];
    const h = await hostile((socket, received) =>
      eachRequest(socket, received, (head) => {
        const host = /^CONNECT ([^:]+)/.exec(head)?.[1] ?? '?';
        connects.push(host);
        const answer = () =>
          socket.destroyed ||
          socket.write('HTTP/1.1 407 x\r\nProxy-Authenticate: Basic realm="p"\r\nContent-Length: 0\r\n\r\n');
        if (host === 'slow.example' && connects.filter((c) => c === host).length === 1) setTimeout(answer, 400);
        else answer();
        return undefined;
      }),
    );
    closers.push(() => h.close());
    // The first recall never answers (given up at queueTimeout); a later one finds the password held
    // back (a refusal another process met meanwhile), at once.
    const { memory, signals } = heldBackAfterFirstRecall(false);
    agent = new MultilegAgent({
      negotiate: false,
      refusalMemory: memory,
      limits: { queueTimeout },
      proxy: { uri: `http://127.0.0.1:${h.port}`, negotiate: false, schemes: ['Basic'], credentials: PROXY_ACCOUNT },
    });
    const outcome = (url: string) =>
      request(url, { dispatcher: agent! }).then(
        (res) => res.statusCode,
        (e: ProxyAuthenticationError) => [e.code, e.refused, e.message.replace(/^.*: proxy\.credentials /, '')],
      );
    // fast.example: the first request's CONNECT gets a 407 asking for the password and the memory is
    // asked; the two others wait for that recall.
    const fast = [0, 1, 2].map((i) => outcome(`https://fast.example/${i}`));
    await until(() => signals.length === 1);
    // slow.example meanwhile: its first request's CONNECT is answered 400 ms late; the two others
    // wait for the same recall. Given up at queueTimeout, the four waiting are withheld: fast.example's
    // first withheld bare CONNECT's 407 answers its other at once; slow.example's two wait for its
    // connection, which its first request holds until its 407 comes, after that answer.
    const slow = [0, 1, 2].map((i) => outcome(`https://slow.example/${i}`));
    const recallTimeout = ['MULTILEG_PROXY_AUTH', false, recallGivenUp(queueTimeout)];
    expect(await Promise.all(fast)).toEqual([recallTimeout, recallTimeout, recallTimeout]);
    const [first, ...withheld] = await Promise.all(slow);
    // Its own recall (the second) found the password held back.
    expect(first).toEqual([
      'MULTILEG_PROXY_AUTH',
      true,
      expect.stringMatching(/the proxy refused proxy\.credentials lately .* for another 60 s/),
    ]);
    expect(withheld).toEqual([recallTimeout, recallTimeout]);
    expect(h.received.every((r) => !/\r\nproxy-authorization: /i.test(r))).toBe(true);
    // fast.example: its first request's CONNECT and one withheld; slow.example: its first request's
    // alone. Before: one withheld bare CONNECT more to slow.example, whose 407 answered the other.
    expect(connects.filter((c) => c === 'fast.example')).toHaveLength(2);
    expect(connects.filter((c) => c === 'slow.example')).toHaveLength(1);
    // Each request waited for a recall once at most: fast.example's first and slow.example's first asked.
    expect(signals).toHaveLength(2);
  }, 30_000);
});

describe('a recall of the refusal memory handed on: the request holding it aborted, the request waiting on its probe asks the memory itself (R1/R4, scripted proxy)', () => {
  const queueTimeout = 2_000;

  /**
   * A refusal memory whose first recall waits until its signal aborts (another process's try of the
   * password, never ending), then remembers nothing; every later one answers at once with `later`
   * (a refusal that process met, or nothing). Each recall's signal and each release, in order.
   */
  const firstRecallWaits = (later: RememberedRefusal | undefined) => {
    const signals: AbortSignal[] = [];
    const released: RefusalPlace[] = [];
    const memory: RefusalMemory = {
      recall: (_place, signal) => {
        signals.push(signal!);
        if (signals.length > 1) return later;
        return new Promise<undefined>((resolve) => signal?.addEventListener('abort', () => resolve(undefined)));
      },
      refused: () => {},
      proved: () => {},
      release: (place) => void released.push(place),
    };
    return { memory, signals, released };
  };

  /**
   * A forwarding proxy asking every request for `scheme` (407) and taking PROXY_ACCOUNT (Basic), or
   * any AUTHENTICATE after its CHALLENGE (NTLM): 200 `ok`. What went to it, in order: each request's
   * path and what it carried — `bare`, `negotiate` (NTLM's NEGOTIATE), `password` (Basic; NTLM's
   * AUTHENTICATE).
   */
  const forwardingProxy = async (scheme: 'Basic' | 'NTLM') => {
    const sent: string[] = [];
    const accepted = basic(PROXY_ACCOUNT);
    const h = await hostile((socket, received) =>
      eachRequest(socket, received, (head) => {
        const path = new URL(head.split(' ')[1]!).pathname;
        const auth = /\r\nproxy-authorization:[ \t]*(.*?)[ \t]*(?:\r\n|$)/i.exec(head)?.[1];
        const leg = auth === undefined ? 0 : scheme === 'Basic' ? (auth === accepted ? 3 : -1) : ntlmLeg(auth);
        sent.push(`${path} ${['bare', 'negotiate', '?', 'password'][leg] ?? 'a wrong password'}`);
        if (leg === 3) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
        else {
          const asks = leg === 1 ? `NTLM ${SCRIPTED_NTLM_CHALLENGE}` : scheme === 'Basic' ? 'Basic realm="p"' : 'NTLM';
          socket.write(`HTTP/1.1 407 x\r\nProxy-Authenticate: ${asks}\r\nContent-Length: 0\r\n\r\n`);
        }
        return undefined;
      }),
    );
    closers.push(() => h.close());
    return { uri: `http://127.0.0.1:${h.port}`, sent };
  };

  const cases = [
    // [what, scheme, the later recall holds the password back, how the waiter waited on the holder's
    //  probe (CredentialProof: for leave, wait; for a connection, watch), what went to the proxy]
    [
      'a forwarding proxy, Basic (asked at its 407), the memory remembering nothing',
      'Basic',
      false,
      'wait',
      ['/holder bare', '/waiter bare', '/waiter password'],
    ],
    [
      'a forwarding proxy, Basic (asked at its 407), the memory remembering a refusal another process met',
      'Basic',
      true,
      'wait',
      ['/holder bare', '/waiter bare'],
    ],
    [
      'a forwarding proxy, NTLM its only scheme (asked before its opening), the memory remembering nothing',
      'NTLM',
      false,
      'watch',
      ['/waiter negotiate', '/waiter password'],
    ],
    [
      'a forwarding proxy, NTLM its only scheme (asked before its opening), the memory remembering a refusal another process met',
      'NTLM',
      true,
      'watch',
      ['/waiter bare'],
    ],
  ] as const;

  it.each(cases)(
    'R1/R4: %s: the request holding the recall aborted while it waits, the request waiting on its outcome goes on at once (not at limits.queueTimeout), asks the memory itself and decides: the password sent once and 200, or the refusal recalled and nothing sent; the memory asked twice, each recall released',
    async (_what, scheme, holds, waitedBy, expectedSent) => {
      const p = await forwardingProxy(scheme);
      const m = firstRecallWaits(holds ? { at: Date.now() - 1_000, until: Date.now() + 60_000, times: 1 } : undefined);
      agent = new MultilegAgent({
        negotiate: false,
        refusalMemory: m.memory,
        limits: { queueTimeout },
        proxy: { uri: p.uri, negotiate: false, schemes: [scheme], credentials: PROXY_ACCOUNT },
      });
      // Each wait on the holder's probe, at any proof (only the proxy's is waited on here): for leave
      // to send the password (wait: at the 407 that asked for it), or for the recall's outcome before
      // a connection (watch: NTLM, whose opening the holder's recall holds before its connection).
      const waited: string[] = [];
      for (const name of ['wait', 'watch'] as const) {
        const original = CredentialProof.prototype[name] as (...args: unknown[]) => unknown;
        const spy = vi.spyOn(CredentialProof.prototype, name).mockImplementation(function (
          this: CredentialProof,
          ...args: unknown[]
        ) {
          waited.push(name);
          return original.apply(this, args);
        } as never);
        closers.push(async () => spy.mockRestore());
      }
      const outcome = (path: string, signal?: AbortSignal) =>
        request(`http://origin.example${path}`, { dispatcher: agent!, signal }).then(
          async (res) => [res.statusCode, await res.body.text()],
          (e: Error & { code?: string; refused?: boolean }) =>
            e.code === undefined ? e : [e.code, e.refused, e.message.replace(/^.*: proxy\.credentials /, '')],
        );
      // The holder's recall waits; the waiter then waits on its probe (CredentialProof: the proof
      // hands the probe on, or wakes the watchers, once the holder gives it back undecided).
      const caller = new AbortController();
      const holder = outcome('/holder', caller.signal);
      await until(() => m.signals.length === 1);
      const started = Date.now();
      const waiter = outcome('/waiter');
      await until(() => waited.length === 1);
      expect(waited).toEqual([waitedBy]);
      const reason = new Error('caller gone');
      const abortedAt = Date.now();
      caller.abort(reason);
      expect(await holder).toBe(reason);
      const decided = await waiter;
      const tookAfterAbort = Date.now() - abortedAt;
      if (holds)
        expect(decided).toEqual([
          'MULTILEG_PROXY_AUTH',
          true,
          expect.stringMatching(/the proxy refused proxy\.credentials lately .* for another 60 s/),
        ]);
      else expect(decided).toEqual([200, 'ok']);
      // Not handed on (the probe kept, or given back to no one), the waiter's wait ran out at
      // limits.queueTimeout (QueueTimeoutError); given up as at the recall's timeout, it went bare,
      // told the memory did not answer, though it had not been asked again.
      expect(tookAfterAbort).toBeLessThan(queueTimeout / 2);
      expect(Date.now() - started).toBeLessThan(queueTimeout);
      // Each request's legs once: the holder's bare request at most (its recall held the rest), the
      // waiter's password once, or nothing of it.
      expect(p.sent).toEqual(expectedSent);
      expect(m.signals).toHaveLength(2);
      expect(m.signals.map((s) => s.aborted)).toEqual([true, false]);
      await until(() => m.released.length === 2);
      expect(m.released).toHaveLength(2);
    },
  );
});
