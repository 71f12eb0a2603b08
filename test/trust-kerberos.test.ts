/**
 * The trust model with real Kerberos (S1, S4, S5, S6, M2): the agent's ambient ticket (no
 * password, no trustedOrigins) from a real MIT KDC, against the reference server whose Negotiate
 * acceptor is python3-gssapi with the KDC's keytab. Proves that fetch's redirect hops are
 * recognised without a list, that withheld requests never ride the session authenticated as
 * alice, and that a server failing mutual authentication ends its session with nothing queued
 * behind it served.
 */
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { type Dispatcher, fetch, interceptors, type Response, request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  CleartextCredentialsError,
  MultilegAgent,
  MutualAuthError,
  SystemNtlmRefusedError,
  TrustRequiredError,
} from '../src/index.ts';
import type { AcceptorLike, AcceptorStep, ReferenceServer } from '../src/reference-server/index.ts';
import { startReferenceServer } from '../src/reference-server/index.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { hasAuth } from './helpers.ts';
import { type Lab, type PyAcceptor, requirePeer, startLab } from './lab/index.ts';

const havePeers = requirePeer('kdc', 'python-gssapi', 'kerberos-addon');
const ALICE_PRINCIPAL = 'alice@EXAMPLE.TEST';

/**
 * The python acceptor holds one context at a time: handshakes are serialised through it. A
 * Kerberos AP-REQ is accepted in one step, so a fresh context per step is what a server does too.
 */
function kerberosAcceptors(py: PyAcceptor): () => AcceptorLike {
  let chain: Promise<unknown> = Promise.resolve();
  return () => ({
    step(token: Buffer): Promise<AcceptorStep> {
      const run = chain.then(async (): Promise<AcceptorStep> => {
        await py.reset('spnego');
        const r = await py.step(token.toString('base64'));
        if (r.kind === 'complete')
          return { kind: 'accepted', user: r.user, ...(r.token ? { token: Buffer.from(r.token, 'base64') } : {}) };
        if (r.kind === 'continue') return { kind: 'challenge', token: Buffer.from(r.token, 'base64') };
        return { kind: 'rejected', reason: r.message };
      });
      chain = run.catch(() => {});
      return run;
    },
  });
}

describe.skipIf(!havePeers)('trust with an ambient Kerberos ticket (real MIT KDC, python3-gssapi acceptor)', () => {
  let lab: Lab;
  let restoreEnv: () => void;
  const servers: ReferenceServer[] = [];
  const agents: MultilegAgent[] = [];

  beforeAll(async () => {
    lab = await startLab({ kdc: true, pythonAcceptor: true });
    // alice's ticket in the ccache; no NTLM user file, so nothing but Kerberos can authenticate.
    restoreEnv = lab.applyEnv({ NTLM_USER_FILE: undefined });
  });
  afterEach(async () => {
    await Promise.all(agents.splice(0).map((a) => a.destroy().catch(() => {})));
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });
  afterAll(async () => {
    restoreEnv?.();
    await lab?.stop();
  });

  async function kerberosServer(opts: Parameters<typeof startReferenceServer>[0] = {}): Promise<ReferenceServer> {
    const s = await startReferenceServer({
      mode: 'session',
      schemes: ['Negotiate'],
      acceptorFactory: kerberosAcceptors(lab.acceptor!),
      ...opts,
    });
    servers.push(s);
    return s;
  }
  /** An agent with no password and no trustedOrigins: the documented ambient default. */
  function ambientAgent(s: ReferenceServer): MultilegAgent {
    const a = new MultilegAgent({ connect: { ca: s.ca } });
    agents.push(a);
    return a;
  }
  const userOf = async (res: Response) => (await res.json()) as { user: string | null; sessionId: string };
  /**
   * After a final answer that proved nothing on `first`'s connection: with the server proving itself
   * again, the next request carries a token of its own on another connection (not the unproved one,
   * which carries nothing more), and its proof is alice's session.
   */
  async function nextIsFreshAlice(s: ReferenceServer, a: MultilegAgent, first: { sessionId?: string }) {
    s.setFaults({});
    const next = await fetch(`${s.origin}/auth/b`, { dispatcher: a }).then(userOf);
    expect(next.user).toBe(ALICE_PRINCIPAL);
    expect(next.sessionId).not.toBe(first.sessionId);
    expect(s.exchanges.filter((e) => e.path === '/auth/b').some((e) => hasAuth(e.requestHeaders))).toBe(true);
    expect(a.handshakes().map((h) => [h.outcome, h.identity])).toEqual([
      ['failed', undefined],
      ['session', ALICE_PRINCIPAL],
    ]);
  }

  it('S1: without a list, the ambient ticket authenticates an https origin the caller names (one handshake)', async () => {
    const s = await kerberosServer();
    const a = ambientAgent(s);
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => fetch(`${s.origin}/auth/${i}`, { dispatcher: a }).then(userOf)),
    );
    expect(new Set(results.map((r) => r.user))).toEqual(new Set([ALICE_PRINCIPAL]));
    expect(a.stats().handshakes).toBe(1);
  });

  for (const status of [302, 307]) {
    it(`S5/S6: without a list, fetch's ${status} hop to another origin gets no ticket and not alice's session`, async () => {
      const s = await kerberosServer();
      const from = s.origin.replace('localhost', '127.0.0.1'); // another origin of the same server
      const a = ambientAgent(s);
      const direct = await userOf(await fetch(`${s.origin}/auth/direct`, { dispatcher: a }));
      expect(direct.user).toBe(ALICE_PRINCIPAL);

      const to = encodeURIComponent(`${s.origin}/auth/hop`);
      const hop = await fetch(`${from}/public/redirect?status=${status}&to=${to}`, { dispatcher: a });
      expect(hop.status).toBe(401);
      const body = await userOf(hop);
      expect(body.user).toBeNull();
      expect(body.sessionId).not.toBe(direct.sessionId);
      const wire = s.exchanges.filter((e) => e.path === '/auth/hop');
      expect(wire.map((e) => [hasAuth(e.requestHeaders), e.user ?? null])).toEqual([[false, null]]);

      // The same URL called directly afterwards is the caller's own request: authenticated as before.
      const later = await userOf(await fetch(`${s.origin}/auth/hop`, { dispatcher: a }));
      expect(later).toEqual(expect.objectContaining({ user: ALICE_PRINCIPAL, sessionId: direct.sessionId }));
    });
  }

  for (const status of [302, 307]) {
    it(`S5: without a list, fetch's ${status} hop to another origin that redirects again within itself (A → B/x → B/y): B/y goes without the ticket (review r61)`, async () => {
      const s = await kerberosServer();
      const from = s.origin.replace('localhost', '127.0.0.1');
      const a = ambientAgent(s);
      const bx = `${s.origin}/public/redirect?status=${status}&to=${encodeURIComponent('/auth/hop2')}`;
      const post = status === 307 ? { method: 'POST', body: 'payload' } : {};
      const hop = await fetch(`${from}/public/redirect?status=${status}&to=${encodeURIComponent(bx)}`, {
        dispatcher: a,
        ...post,
      });
      // Before: B/y got alice's ticket (the wire said ["/auth/hop2", true, "alice@EXAMPLE.TEST"]).
      expect(hop.status).toBe(401);
      expect((await userOf(hop)).user).toBeNull();
      const wire = s.exchanges.filter((e) => e.path === '/auth/hop2');
      expect(wire.map((e) => [e.method, hasAuth(e.requestHeaders), e.user ?? null])).toEqual([
        [status === 307 ? 'POST' : 'GET', false, null],
      ]);
      expect(a.stats().handshakes).toBe(0);
      // B/y called directly afterwards is the caller's own request: alice's.
      expect((await userOf(await fetch(`${s.origin}/auth/hop2`, { dispatcher: a }))).user).toBe(ALICE_PRINCIPAL);
    });
  }

  it("S5: undici's redirect interceptor, without a list: the cross-origin hop goes without the ticket", async () => {
    const s = await kerberosServer();
    const from = s.origin.replace('localhost', '127.0.0.1');
    const a = ambientAgent(s);
    const redirecting = a.compose(interceptors.redirect({ maxRedirections: 2 }));
    const res = await request(`${from}/public/redirect?to=${encodeURIComponent(`${s.origin}/auth/i`)}`, {
      dispatcher: redirecting,
    });
    expect(res.statusCode).toBe(401);
    await res.body.dump();
    expect(s.exchanges.filter((e) => e.path === '/auth/i').some((e) => hasAuth(e.requestHeaders))).toBe(false);
  });

  // Between undici's redirect interceptor and the agent, retry and decompress hide its `history`;
  // the interceptor also follows a 300, which fetch does not.
  for (const [status, inner] of [
    [300, undefined],
    [300, 'retry'],
    [300, 'decompress'],
    [302, 'retry'],
  ] as const) {
    it(`S5: undici's redirect interceptor following a ${status}${inner ? ` with ${inner} inside it` : ''}, without a list: the hop goes without the ticket`, async () => {
      const s = await kerberosServer();
      const from = s.origin.replace('localhost', '127.0.0.1');
      const a = ambientAgent(s);
      const chain = inner
        ? [interceptors[inner](), interceptors.redirect({ maxRedirections: 2 })]
        : [interceptors.redirect({ maxRedirections: 2 })];
      const target = `/auth/hop-${status}-${inner ?? 'alone'}`;
      const res = await request(
        `${from}/public/redirect?status=${status}&to=${encodeURIComponent(s.origin + target)}`,
        {
          dispatcher: a.compose(...chain),
        },
      );
      expect(res.statusCode).toBe(401);
      await res.body.dump();
      expect(s.exchanges.filter((e) => e.path === target).map((e) => hasAuth(e.requestHeaders))).toEqual([false]);
    });
  }

  it("S5: a cross-origin 301 that undici's cache interceptor replays without the agent seeing it again: every hop goes without the ticket", async () => {
    const s = await kerberosServer();
    const from = s.origin.replace('localhost', '127.0.0.1');
    const a = ambientAgent(s);
    const start = (path: string) =>
      `${from}/public/redirect?status=301&cache=600&to=${encodeURIComponent(`${s.origin}${path}`)}`;
    // Over HTTP/1.1: undici 8.13.1's cache did not store the 301 when it came over HTTP/2.
    const http1 =
      (dispatch: Dispatcher['dispatch']) => (opts: Dispatcher.DispatchOptions, h: Dispatcher.DispatchHandler) =>
        dispatch({ ...opts, allowH2: false } as Dispatcher.DispatchOptions, h);
    // undici 8.13 refuses the cache inside the redirect interceptor; outside it, its own guard keeps
    // a cross-origin redirect's final response out of the cache.
    const viaInterceptor = a.compose(http1, interceptors.redirect({ maxRedirections: 2 }), interceptors.cache());
    const viaFetch = a.compose(http1, interceptors.cache());
    for (let round = 0; round < 2; round++) {
      const res = await request(start('/auth/cached-i'), { dispatcher: viaInterceptor });
      expect(res.statusCode).toBe(401);
      await res.body.dump();
      expect((await fetch(start('/auth/cached-f'), { dispatcher: viaFetch })).status).toBe(401);
    }
    // fetch's second 301 came from the cache, so the agent did not see it: its start URL reached the
    // server once, and the hop it led to is still known as one.
    const starts = s.exchanges.filter((e) => e.path.startsWith('/public/redirect'));
    expect(starts.filter((e) => e.path.includes('cached-f'))).toHaveLength(1);
    for (const path of ['/auth/cached-i', '/auth/cached-f'])
      expect(s.exchanges.filter((e) => e.path === path).map((e) => hasAuth(e.requestHeaders))).toEqual([false, false]);
  });

  it('S4: without a list, the ticket never goes to an http:// origin: a typed error, nothing sent', async () => {
    const s = await kerberosServer({ cleartext: true });
    const a = ambientAgent(s);
    const err = await fetch(`${s.origin}/auth/clear`, { dispatcher: a }).then(
      () => undefined,
      (e: Error) => (e.cause ?? e) as Error,
    );
    expect(err).toBeInstanceOf(CleartextCredentialsError);
    expect(s.exchanges.some((e) => hasAuth(e.requestHeaders))).toBe(false);
  });

  for (const fault of ['corrupt', 'omit'] as const) {
    it(`M2/S6: a server whose final token is ${fault === 'corrupt' ? 'corrupt' : 'missing'} ends its session: the leader and the 9 queued behind it fail, no 200 reaches anyone`, async () => {
      const s = await kerberosServer({ faults: { finalToken: fault } });
      const a = ambientAgent(s);
      const outcomes = await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          fetch(`${s.origin}/auth/q${i}`, { dispatcher: a }).then(
            (res) => `status ${res.status}`,
            (e: Error) => e.cause ?? e,
          ),
        ),
      );
      for (const o of outcomes) expect(o).toBeInstanceOf(MutualAuthError);
      // The next request authenticates afresh on a new session, and fails the same way.
      const next = await fetch(`${s.origin}/auth/next`, { dispatcher: a }).then(
        () => undefined,
        (e: Error) => e.cause ?? e,
      );
      expect(next).toBeInstanceOf(MutualAuthError);
      // Nothing more went on a connection once its server failed to prove itself.
      const acceptedAt = new Map<string, number>();
      for (const e of s.exchanges) if (e.outcome === 'accepted') acceptedAt.set(e.sessionId, e.seq);
      expect(acceptedAt.size).toBeGreaterThan(0);
      for (const e of s.exchanges) {
        const at = acceptedAt.get(e.sessionId);
        if (at !== undefined) expect(e.seq).toBeLessThanOrEqual(at);
      }
      expect(a.handshakes().every((h) => h.outcome === 'failed')).toBe(true);
    });
  }

  // Review r57: the server's final token is checked on any final answer that carries it, not only
  // on a 2xx; one without it proves nothing, whatever Persistent-Auth says.
  const statusOf = async (a: MultilegAgent, url: string) => {
    try {
      const res = await request(url, { dispatcher: a });
      await res.body.dump();
      return res.statusCode;
    } catch (e) {
      return (e as Error & { cause?: Error }).cause ?? (e as Error);
    }
  };

  it('M2: a 302 that ends a Kerberos handshake with a corrupt final token is a MutualAuthError, and its connection ends', async () => {
    const s = await kerberosServer({ faults: { finalToken: 'corrupt' } });
    const a = ambientAgent(s);
    expect(await statusOf(a, `${s.origin}/status/302/a`)).toBeInstanceOf(MutualAuthError);
    expect(a.handshakes().map((h) => [h.outcome, h.failure, h.identity])).toEqual([['failed', 'proof', undefined]]);
    const accepted = s.exchanges.filter((e) => e.outcome === 'accepted');
    expect(accepted.map((e) => e.status)).toEqual([302]);
    expect(s.exchanges.filter((e) => e.sessionId === accepted[0]!.sessionId && e.seq > accepted[0]!.seq)).toEqual([]);
  });

  it('S6: a 302 without the final token but with Persistent-Auth: true is delivered, and nothing is recorded: no session, no identity; the next request authenticates afresh', async () => {
    const s = await kerberosServer({ faults: { finalToken: 'omit' } });
    const a = ambientAgent(s);
    expect(await statusOf(a, `${s.origin}/status/302/a`)).toBe(302);
    const first = s.exchanges.find((e) => e.outcome === 'accepted')!;
    expect(first.status).toBe(302);
    expect(first.responseHeaders['persistent-auth']).toBe('true');
    expect(a.handshakes().map((h) => [h.outcome, h.failure, h.identity])).toEqual([['failed', 'proof', undefined]]);
    await nextIsFreshAlice(s, a, first);
  });

  it('M2/S6: a 302 with a good final token completes the handshake: alice is proved, her session serves the next request', async () => {
    const s = await kerberosServer();
    const a = ambientAgent(s);
    expect(await statusOf(a, `${s.origin}/status/302/a`)).toBe(302);
    expect(a.handshakes().map((h) => [h.outcome, h.identity])).toEqual([['session', ALICE_PRINCIPAL]]);
    const first = s.exchanges.find((e) => e.outcome === 'accepted')!;
    const next = await fetch(`${s.origin}/auth/b`, { dispatcher: a }).then(userOf);
    expect(next).toEqual(expect.objectContaining({ user: ALICE_PRINCIPAL, sessionId: first.sessionId }));
    expect(s.exchanges.filter((e) => e.path === '/auth/b').map((e) => hasAuth(e.requestHeaders))).toEqual([false]);
  });

  it('M2: per-request Kerberos: a 404 after a proactive token is checked like a 2xx when it carries the final token (a corrupt one is a MutualAuthError); one with none is delivered, nothing proved', async () => {
    const s = await kerberosServer({ mode: 'per-request' });
    const a = ambientAgent(s);
    expect(await fetch(`${s.origin}/auth/a`, { dispatcher: a }).then(userOf)).toEqual(
      expect.objectContaining({ user: ALICE_PRINCIPAL }),
    );
    expect(await statusOf(a, `${s.origin}/status/404/b`)).toBe(404);
    s.setFaults({ finalToken: 'corrupt' });
    expect(await statusOf(a, `${s.origin}/status/404/c`)).toBeInstanceOf(MutualAuthError);
    s.setFaults({ finalToken: 'omit' });
    expect(await statusOf(a, `${s.origin}/status/404/d`)).toBe(404);
    // Each went with a proactive token (one leg). The last one's server took part (IIS-style
    // `Persistent-Auth: false`) but proved nothing: reported so, with no identity.
    for (const p of ['/status/404/b', '/status/404/c', '/status/404/d'])
      expect(s.exchanges.filter((e) => e.path === p).map((e) => hasAuth(e.requestHeaders))).toEqual([true]);
    expect(s.exchanges.find((e) => e.path === '/status/404/d')!.responseHeaders['persistent-auth']).toBe('false');
    expect(a.handshakes().map((h) => [h.outcome, h.failure, h.identity])).toEqual([
      ['per-request', undefined, ALICE_PRINCIPAL],
      ['per-request', undefined, ALICE_PRINCIPAL],
      ['failed', 'proof', undefined],
      ['failed', 'proof', undefined],
    ]);
    // Nothing is lost: with the server proving itself again, the next request is alice's.
    s.setFaults({});
    expect(await fetch(`${s.origin}/auth/e`, { dispatcher: a }).then(userOf)).toEqual(
      expect.objectContaining({ user: ALICE_PRINCIPAL }),
    );
  });

  // Review r59: a final answer not recorded as a success that said Persistent-Auth: true leaves the
  // server holding the connection as someone: it carries nothing more, whatever the status.
  for (const allowH2 of [true, false]) {
    const proto = allowH2 ? 'h2' : 'http/1.1';
    it(`S6: a 500 without the final token but with Persistent-Auth: true is reported 'proof', and its connection carries nothing more: the next request authenticates afresh (${proto})`, async () => {
      const s = await kerberosServer({ faults: { finalToken: 'omit' } });
      const a = new MultilegAgent({ connect: { ca: s.ca }, allowH2 });
      agents.push(a);
      expect(await statusOf(a, `${s.origin}/status/500/a`)).toBe(500);
      const first = s.exchanges.find((e) => e.outcome === 'accepted')!;
      expect([first.status, first.responseHeaders['persistent-auth']]).toEqual([500, 'true']);
      expect(a.handshakes().map((h) => [h.outcome, h.failure, h.identity])).toEqual([['failed', 'proof', undefined]]);
      // Before: the next went bare on the 500's connection and was served as alice, no identity on record.
      await nextIsFreshAlice(s, a, first);
    });
  }

  it("S6: a 500 whose final token verifies, with Persistent-Auth: true, is reported 'error' (no identity recorded), and its connection carries nothing more", async () => {
    const s = await kerberosServer();
    const a = ambientAgent(s);
    expect(await statusOf(a, `${s.origin}/status/500/a`)).toBe(500);
    const first = s.exchanges.find((e) => e.outcome === 'accepted')!;
    expect([first.status, first.responseHeaders['persistent-auth']]).toEqual([500, 'true']);
    expect(a.handshakes().map((h) => [h.outcome, h.failure, h.identity])).toEqual([['failed', 'error', undefined]]);
    const next = await fetch(`${s.origin}/auth/b`, { dispatcher: a }).then(userOf);
    expect(next.sessionId).not.toBe(first.sessionId);
    expect(a.handshakes().map((h) => [h.outcome, h.identity])).toEqual([
      ['failed', undefined],
      ['session', ALICE_PRINCIPAL],
    ]);
  });

  for (const status of [302, 404, 403]) {
    it(`M2: negotiate.mutualAuth 'optional': a ${status} without the final token ends the handshake as a 200 does: alice's session, no failed handshake (review r59: it was unproved and closed)`, async () => {
      const s = await kerberosServer({ faults: { finalToken: 'omit' } });
      const a = new MultilegAgent({ connect: { ca: s.ca }, negotiate: { mutualAuth: 'optional' } });
      agents.push(a);
      expect(await statusOf(a, `${s.origin}/status/${status}/a`)).toBe(status);
      expect(a.handshakes().map((h) => [h.outcome, h.failure, h.identity])).toEqual([
        ['session', undefined, ALICE_PRINCIPAL],
      ]);
      expect(a.stats().failedHandshakes).toBe(0);
      const first = s.exchanges.find((e) => e.outcome === 'accepted')!;
      const next = await fetch(`${s.origin}/auth/b`, { dispatcher: a }).then(userOf);
      expect(next).toEqual(expect.objectContaining({ user: ALICE_PRINCIPAL, sessionId: first.sessionId }));
      expect(s.exchanges.filter((e) => e.path === '/auth/b').map((e) => hasAuth(e.requestHeaders))).toEqual([false]);
    });
  }

  it("M2/S6: negotiate.mutualAuth 'optional': a 500 without the final token is a failure 'error' (the server said nothing of the credentials), and its Persistent-Auth connection carries nothing more", async () => {
    const s = await kerberosServer({ faults: { finalToken: 'omit' } });
    const a = new MultilegAgent({ connect: { ca: s.ca }, negotiate: { mutualAuth: 'optional' } });
    agents.push(a);
    expect(await statusOf(a, `${s.origin}/status/500/a`)).toBe(500);
    expect(a.handshakes().map((h) => [h.outcome, h.failure, h.identity])).toEqual([['failed', 'error', undefined]]);
    const first = s.exchanges.find((e) => e.outcome === 'accepted')!;
    const next = await fetch(`${s.origin}/auth/b`, { dispatcher: a }).then(userOf);
    expect(next).toEqual(expect.objectContaining({ user: ALICE_PRINCIPAL }));
    expect(next.sessionId).not.toBe(first.sessionId);
  });
  /** An upgrade (WebSocket) through `a`: the response the caller got instead of a socket, or the error. */
  const upgradeAnswer = (a: MultilegAgent, origin: string, path: string) =>
    new Promise<{ status: number; body: string } | 'upgraded' | Error>((resolve) => {
      let status = 0;
      let body = '';
      a.dispatch(
        { origin, path, method: 'GET', upgrade: 'websocket' },
        {
          onRequestUpgrade: (_c, _s, _h, socket) => {
            (socket as Socket).destroy();
            resolve('upgraded');
          },
          onResponseStart: (_c, s) => {
            status = s;
          },
          onResponseData: (_c, chunk) => {
            body += chunk.toString();
          },
          onResponseEnd: () => resolve({ status, body }),
          onResponseError: (_c, err) => resolve(err),
        },
      );
    });

  it("M2/S6: an upgrade whose Kerberos handshake ends in a 403 without the final token gets the 403 (not a MutualAuthError), as a request does, and proves nothing: the ticket's next refusal there holds it back at once", async () => {
    let refusing = false;
    const accept = kerberosAcceptors(lab.acceptor!);
    const s = await kerberosServer({
      faults: { finalToken: 'omit' },
      acceptorFactory: () => {
        const real = accept();
        return { step: (token) => (refusing ? { kind: 'rejected', reason: 'test: refused' } : real.step(token)) };
      },
    });
    const a = ambientAgent(s);
    const answer = await upgradeAnswer(a, s.origin, '/status/403/ws');
    expect(answer).toMatchObject({ status: 403 });
    // The server took alice's ticket and sent no AP-REP of its own.
    const forbidden = s.exchanges.find((e) => e.path === '/status/403/ws' && e.outcome === 'accepted')!;
    expect(forbidden.status).toBe(403);
    expect(forbidden.responseHeaders['www-authenticate']).toBeUndefined();
    // The origin's leave never recorded the upgrade's 403 as the ticket proved (nor its identity): the
    // first refusal after it holds the ticket back at once, as before any proof (R4). Had it been
    // proved, that refusal would only unprove it, and the next request would carry the ticket again.
    refusing = true;
    expect(await statusOf(a, `${s.origin}/auth/refused`)).toBe(401);
    expect(await statusOf(a, `${s.origin}/auth/held`)).toBe(401);
    const carried = (path: string) =>
      s.exchanges.filter((e) => e.path === path).map((e) => [hasAuth(e.requestHeaders), e.status]);
    expect(carried('/auth/refused')).toEqual([
      [false, 401],
      [true, 401],
    ]);
    expect(carried('/auth/held')).toEqual([[false, 401]]);
  });

  it('M2: an upgrade whose Kerberos handshake ends in a 101 without the final token is a MutualAuthError: the socket never reaches the caller', async () => {
    // A WebSocket origin that takes alice's ticket (the real acceptor) and switches protocols without its AP-REP.
    const accept = kerberosAcceptors(lab.acceptor!);
    const answered: number[] = [];
    const server = createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY });
    server.on('upgrade', (req, socket: Socket) => {
      const token = /^Negotiate (\S+)$/.exec(req.headers.authorization ?? '')?.[1];
      const answer = (status: number, head: string) => {
        answered.push(status);
        socket.write(head);
      };
      if (token === undefined) {
        // Node reads no more requests on a socket handed to 'upgrade': the next leg comes on a new one.
        answer(
          401,
          'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\nConnection: close\r\nContent-Length: 0\r\n\r\n',
        );
        socket.end();
        return;
      }
      void Promise.resolve(accept().step(Buffer.from(token, 'base64'))).then((r) =>
        r.kind === 'accepted'
          ? answer(101, 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n')
          : answer(403, 'HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n'),
      );
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const a = new MultilegAgent({ connect: { ca: CA_CERT } });
      agents.push(a);
      const origin = `https://localhost:${(server.address() as AddressInfo).port}`;
      expect(await upgradeAnswer(a, origin, '/ws')).toBeInstanceOf(MutualAuthError);
      expect(answered).toEqual([401, 101]);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it("S1: a ticket for a fixed negotiate.spn, or for the name negotiate.canonicalizeHost takes from a CNAME, goes to listed origins only: without a list the agent is a TrustRequiredError (it sent alice's ticket for HTTP@localhost to any https origin offering Negotiate, and that ticket authenticated as her at HTTP@localhost: task id); with a list an unlisted origin gets none, the listed one authenticates", async () => {
    const real = await kerberosServer();
    const taken: string[] = [];
    const elsewhere = createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, (req, res) => {
      if (req.headers.authorization !== undefined) taken.push(req.headers.authorization);
      res.writeHead(401, { 'www-authenticate': 'Negotiate' }).end();
    });
    await new Promise<void>((resolve) => elsewhere.listen(0, '127.0.0.1', resolve));
    try {
      const unlisted = `https://127.0.0.1:${(elsewhere.address() as AddressInfo).port}`;
      // An attacker's DNS answering the CNAME lookup with the service it wants a ticket for.
      const cname = { canonicalizeHost: true, resolveCname: async () => ['localhost'] };
      for (const negotiate of [{ spn: 'HTTP@localhost' }, cname]) {
        expect(() => new MultilegAgent({ connect: { ca: CA_CERT }, negotiate })).toThrow(TrustRequiredError);
        const a = new MultilegAgent({ connect: { ca: CA_CERT }, negotiate, trustedOrigins: [real.origin] });
        agents.push(a);
        const bare = await fetch(`${unlisted}/`, { dispatcher: a });
        await bare.arrayBuffer();
        expect(bare.status).toBe(401);
        expect(taken).toEqual([]);
        expect((await fetch(`${real.origin}/auth/spn`, { dispatcher: a }).then(userOf)).user).toBe(ALICE_PRINCIPAL);
      }
    } finally {
      elsewhere.closeAllConnections();
      elsewhere.close();
    }
  });

  it("S1: NTLM that the system's SPNEGO chooses (the kerberos addon: SSPI, here gss-ntlmssp with NTLM_USER_FILE, no ticket) goes to listed origins only: without a list nothing is sent and the error (SystemNtlmRefusedError) names trustedOrigins (it answered any https origin offering Negotiate, which relayed it and was logged in as EXAMPLE\\alice: task id)", async () => {
    const relayed: string[] = [];
    let fresh = true;
    // Takes whatever the client sends and relays it to a real acceptor, as an attacker's origin would.
    const relay = createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, async (req, res) => {
      const token = /^Negotiate (\S+)$/.exec(req.headers.authorization ?? '')?.[1];
      if (token === undefined) {
        res.writeHead(401, { 'www-authenticate': 'Negotiate' }).end();
        return;
      }
      if (fresh) await lab.acceptor!.reset('spnego');
      fresh = false;
      const r = await lab.acceptor!.step(token);
      relayed.push(r.kind === 'complete' ? `complete ${r.user}` : r.kind);
      if (r.kind === 'continue') res.writeHead(401, { 'www-authenticate': `Negotiate ${r.token}` }).end();
      else res.writeHead(r.kind === 'complete' ? 200 : 403).end();
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
    // No ticket; gss-ntlmssp's user file (alice's NTLM password) in reach of the system's SPNEGO.
    const restore = lab.applyEnv({ KRB5CCNAME: `FILE:${lab.dir}/no-such-ccache` });
    try {
      const origin = `https://127.0.0.1:${(relay.address() as AddressInfo).port}`;
      const ambient = new MultilegAgent({ connect: { ca: CA_CERT }, negotiate: { backend: 'kerberos' } });
      agents.push(ambient);
      const refused = await fetch(`${origin}/`, { dispatcher: ambient }).catch((e: { cause?: Error }) => e.cause);
      expect(refused).toBeInstanceOf(SystemNtlmRefusedError);
      expect(refused).toMatchObject({ code: 'MULTILEG_SYSTEM_NTLM_REFUSED', origin });
      expect((refused as Error).message).toContain(`List ${origin} in trustedOrigins`);
      expect(relayed).toEqual([]);
      // Listed, the origin is meant to have it: the system's NTLM goes there as before.
      const listed = new MultilegAgent({
        connect: { ca: CA_CERT },
        negotiate: { backend: 'kerberos', mutualAuth: 'optional' },
        trustedOrigins: [origin],
      });
      agents.push(listed);
      await fetch(`${origin}/`, { dispatcher: listed })
        .then((r) => r.arrayBuffer())
        .catch(() => undefined);
      expect(relayed).toEqual(['continue', 'complete EXAMPLE\\alice']);
    } finally {
      restore();
      relay.closeAllConnections();
      relay.close();
    }
  });
});
