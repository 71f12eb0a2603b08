/**
 * A proxy's Negotiate handshake, its end and its proof (M2, S6, C4, H5), with the system's GSS-API
 * against the lab's MIT KDC (alice's ticket for `HTTP@localhost`) and scripted proxies: which final
 * answers must prove the proxy is the requests' and upgrades' rule (`proofRequired`), for a CONNECT
 * and for a forwarded request; and every end of a proxy's handshake frees its GSS-API context
 * (`MechanismContext.dispose`), seen as `gssHandshakesInFlight()` without a garbage collection.
 */
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { type AddressInfo, connect as netConnect, type Socket } from 'node:net';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Challenge } from '../src/challenge/types.ts';
import { type HandshakeReport, MultilegAgent, type SchemeName } from '../src/index.ts';
import { gssHandshakesInFlight } from '../src/mechanisms/gssapi/index.ts';
import { negotiateMechanism } from '../src/mechanisms/negotiate/index.ts';
import type { LegInfo, Mechanism, MechanismContext } from '../src/mechanisms/types.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { finalProofMechanism } from './helpers.ts';
import { eachRequest, type Hostile, hostile } from './hostile-proxy.ts';
import { type Lab, requirePeer, startLab } from './lab/index.ts';

const haveBinding = requirePeer('kdc', 'gss-binding');

const NEGOTIATE_407 =
  'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate\r\nContent-Length: 0\r\n\r\n';
/** A Negotiate token that is no GSS-API token: a final token that cannot prove anything. */
const FORGED = Buffer.alloc(48, 0x41).toString('base64');

/** Whether a request head carries a Negotiate Proxy-Authorization. */
const carriesNegotiate = (head: string) => /\r\nproxy-authorization: negotiate /i.test(head);

/**
 * A proxy that asks every request without credentials for Negotiate (407) and answers one with a
 * Negotiate token as `answer` says: the raw response, or `relay`: a CONNECT's 200, the connection then
 * relayed to 127.0.0.1:`relay`.
 */
function negotiateProxy(answer: (head: string) => string | { relay: number } | undefined): Promise<Hostile> {
  return hostile((socket, received) =>
    eachRequest(socket, received, (head) => {
      if (!carriesNegotiate(head)) {
        socket.write(NEGOTIATE_407);
        return undefined;
      }
      const reply = answer(head);
      if (reply === undefined) return 'stop';
      if (typeof reply === 'string') {
        socket.write(reply);
        return undefined;
      }
      socket.write('HTTP/1.1 200 Connection established\r\n\r\n');
      const up: Socket = netConnect(reply.relay, '127.0.0.1');
      up.on('error', () => socket.destroy());
      socket.on('close', () => up.destroy());
      socket.pipe(up);
      up.pipe(socket);
      return 'stop';
    }),
  );
}

/** A Negotiate proxy that never answers a request with a token, and when the first such request has arrived. */
async function silentNegotiateProxy(): Promise<{ proxy: Hostile; there: Promise<void> }> {
  let arrived!: () => void;
  const there = new Promise<void>((resolve) => {
    arrived = resolve;
  });
  const proxy = await negotiateProxy(() => {
    arrived();
    return undefined; // never answered
  });
  return { proxy, there };
}

/**
 * A Negotiate mechanism for the proxy whose context steps are GSS-API's own (a real context, counted
 * in flight) but return only once `release` is called: a step still running, as one that waits on a
 * KDC is. `stepping` resolves when the first such step has made its token.
 */
function slowNegotiate(): { mechanism: Mechanism; stepping: Promise<void>; release: () => void } {
  const real = negotiateMechanism({ backend: 'gssapi', spn: 'HTTP@localhost' });
  let stepping!: () => void;
  const inStep = new Promise<void>((resolve) => {
    stepping = resolve;
  });
  let release!: () => void;
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  const bound = <T extends object>(target: T, own: Record<PropertyKey, unknown>): T =>
    new Proxy(target, {
      get(t, p) {
        if (p in own) return own[p];
        const v = Reflect.get(t, p, t);
        return typeof v === 'function' ? v.bind(t) : v;
      },
    });
  const mechanism = bound(real, {
    createContext: (leg: LegInfo): MechanismContext => {
      const context = real.createContext(leg);
      return bound(context, {
        step: async (challenge: Challenge | undefined, l: LegInfo) => {
          const token = await context.step(challenge, l);
          stepping();
          await released;
          return token;
        },
      });
    },
  });
  return { mechanism, stepping: inStep, release };
}

describe.skipIf(!haveBinding)("a proxy's Negotiate proof and end (real GSS-API, MIT KDC, scripted proxies)", () => {
  let lab: Lab;
  let restoreEnv: () => void;
  let origin: HttpsServer;
  let originPort: number;
  const opened: Hostile[] = [];
  const agents: MultilegAgent[] = [];

  beforeAll(async () => {
    lab = await startLab({ kdc: true });
    restoreEnv = lab.applyEnv({ NTLM_USER_FILE: undefined });
    origin = createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, (_req, res) => res.end('tunnelled'));
    await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
    originPort = (origin.address() as AddressInfo).port;
  });
  afterEach(async () => {
    await Promise.all(agents.splice(0).map((a) => a.destroy()));
    await Promise.all(opened.splice(0).map((p) => p.close()));
    expect(gssHandshakesInFlight()).toBe(0);
  });
  afterAll(async () => {
    origin?.closeAllConnections();
    await new Promise<void>((resolve) => (origin ? origin.close(() => resolve()) : resolve()));
    restoreEnv?.();
    await lab?.stop();
  });

  /** An agent through `proxy`, its proxy Negotiate the system's GSS-API for `HTTP@localhost` (with `negotiate`). */
  const through = (proxy: Hostile, negotiate: { mutualAuth?: 'required' | 'optional' } = {}) => {
    opened.push(proxy);
    const agent = new MultilegAgent({
      connect: { ca: CA_CERT },
      proxy: {
        uri: `http://127.0.0.1:${proxy.port}`,
        negotiate: { backend: 'gssapi', spn: 'HTTP@localhost', ...negotiate },
      },
    });
    agents.push(agent);
    return agent;
  };
  const proxyReports = (agent: MultilegAgent): HandshakeReport[] => agent.handshakes().filter((h) => h.proxy);

  it("M2/H5: a CONNECT answered 200 by a proxy whose Negotiate handshake has not proved itself (no final token, proxy.negotiate.mutualAuth 'required') is a MutualAuthError: no tunnel, nothing proved", async () => {
    const proxy = await negotiateProxy(() => ({ relay: originPort }));
    const agent = through(proxy, { mutualAuth: 'required' });
    // Without the check, the tunnel opened and the origin's 200 came through it.
    await expect(request(`https://localhost:${originPort}/`, { dispatcher: agent })).rejects.toMatchObject({
      code: 'MULTILEG_MUTUAL_AUTH',
    });
    expect(proxyReports(agent)).toEqual([
      expect.objectContaining({ scheme: 'Negotiate', outcome: 'failed', failure: 'proof' }),
    ]);
    expect(proxyReports(agent)[0]).not.toHaveProperty('identity');
    // (The origin's answer never came: only the two CONNECTs went.)
    expect(proxy.received.join('').match(/^CONNECT /gm)).toHaveLength(2);
  });

  it("M2/H5: with the proxy's default mutualAuth 'optional', the same CONNECT's 200 opens the tunnel, as before", async () => {
    const proxy = await negotiateProxy(() => ({ relay: originPort }));
    const agent = through(proxy);
    const res = await request(`https://localhost:${originPort}/`, { dispatcher: agent });
    expect([res.statusCode, await res.body.text()]).toEqual([200, 'tunnelled']);
    expect(proxyReports(agent)).toEqual([
      expect.objectContaining({ scheme: 'Negotiate', outcome: 'session', identity: 'alice@EXAMPLE.TEST' }),
    ]);
  });

  it("M2/S6/H5: a forwarding proxy's 403 without its final Negotiate token (mutualAuth 'required') is the caller's 403, unproved — reported failed (proof), no identity, the connection not used again — by the requests' rule; its 200 so is a MutualAuthError (before: the 403 was a MutualAuthError too)", async () => {
    const proxy = await negotiateProxy((head) =>
      head.startsWith('GET http://origin.test/denied')
        ? 'HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied'
        : 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
    );
    const agent = through(proxy, { mutualAuth: 'required' });
    const res = await request('http://origin.test/denied', { dispatcher: agent });
    expect([res.statusCode, await res.body.text()]).toEqual([403, 'denied']);
    const [report] = proxyReports(agent);
    expect(report).toEqual(expect.objectContaining({ scheme: 'Negotiate', outcome: 'failed', failure: 'proof' }));
    expect(report).not.toHaveProperty('identity');
    // The next request goes on a new connection (the proxy may hold the old one as alice, unrecorded),
    // and its 200 without the final token must prove the proxy: the caller's MutualAuthError.
    await expect(request('http://origin.test/ok', { dispatcher: agent })).rejects.toMatchObject({
      code: 'MULTILEG_MUTUAL_AUTH',
    });
    expect(proxy.connections).toBe(2);
    expect(proxyReports(agent).map((h) => [h.outcome, h.failure])).toEqual([
      ['failed', 'proof'],
      ['failed', 'proof'],
    ]);
  });

  it("M2/H5: a CONNECT answered 403 with a forged final Negotiate token is a MutualAuthError, by the requests' rule (a forged token is no less forged on a 403; before: ProxyConnectError, the token never checked)", async () => {
    const proxy = await negotiateProxy(
      () => `HTTP/1.1 403 Forbidden\r\nProxy-Authenticate: Negotiate ${FORGED}\r\nContent-Length: 0\r\n\r\n`,
    );
    const agent = through(proxy);
    await expect(request(`https://localhost:${originPort}/`, { dispatcher: agent })).rejects.toMatchObject({
      code: 'MULTILEG_MUTUAL_AUTH',
    });
    expect(proxyReports(agent)).toEqual([
      expect.objectContaining({ scheme: 'Negotiate', outcome: 'failed', failure: 'proof' }),
    ]);
  });

  it('M2/H5: a CONNECT answered 403 without a final token is still the ProxyConnectError, the handshake failed unproved', async () => {
    const proxy = await negotiateProxy(() => 'HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n');
    const agent = through(proxy, { mutualAuth: 'required' });
    await expect(request(`https://localhost:${originPort}/`, { dispatcher: agent })).rejects.toMatchObject({
      code: 'MULTILEG_PROXY_CONNECT',
      statusCode: 403,
    });
    const [report] = proxyReports(agent);
    expect(report).toEqual(expect.objectContaining({ scheme: 'Negotiate', outcome: 'failed' }));
    expect(report).not.toHaveProperty('identity');
  });

  it("M2/H5: a CONNECT carrying a Digest password taken up from another tunnel, answered 403 with a wrong Proxy-Authentication-Info rspauth, is a MutualAuthError (before: a ProxyConnectError, the rspauth never checked: only a handshake's answer was)", async () => {
    const challenge =
      'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Digest realm="p", nonce="n1", qop="auth", algorithm=SHA-256\r\nContent-Length: 0\r\n\r\n';
    let tunnels = 0;
    const proxy = await hostile((socket, received) =>
      eachRequest(socket, received, (head) => {
        if (!/\r\nproxy-authorization: digest /i.test(head)) {
          socket.write(challenge);
          return undefined;
        }
        tunnels += 1;
        if (tunnels === 1) {
          socket.write('HTTP/1.1 200 Connection established\r\n\r\n');
          const up: Socket = netConnect(originPort, '127.0.0.1');
          up.on('error', () => socket.destroy());
          socket.on('close', () => up.destroy());
          socket.pipe(up);
          up.pipe(socket);
          return 'stop';
        }
        socket.write(
          'HTTP/1.1 403 Forbidden\r\nProxy-Authentication-Info: rspauth="0000000000000000000000000000000000000000000000000000000000000000", qop=auth\r\nContent-Length: 0\r\n\r\n',
        );
        return 'stop';
      }),
    );
    opened.push(proxy);
    const agent = new MultilegAgent({
      connect: { ca: CA_CERT },
      proxy: {
        uri: `http://127.0.0.1:${proxy.port}`,
        negotiate: false,
        schemes: ['Digest'],
        credentials: { username: 'u', password: 'p' },
      },
    });
    agents.push(agent);
    const res = await request(`https://localhost:${originPort}/`, { dispatcher: agent });
    expect([res.statusCode, await res.body.text()]).toEqual([200, 'tunnelled']);
    // Another origin: another tunnel, whose CONNECT carries the Digest password unasked.
    await expect(request(`https://127.0.0.1:${originPort}/`, { dispatcher: agent })).rejects.toMatchObject({
      code: 'MULTILEG_MUTUAL_AUTH',
    });
    expect(proxy.connections).toBe(2);
    expect(proxy.received[1]!.match(/^CONNECT /gm)).toHaveLength(1);
  });

  it("C4/H5: an agent destroyed while the CONNECT's Kerberos leg waits for the proxy's answer ends the tunnel handshake's GSS-API context — no longer counted as in flight, without a garbage collection", async () => {
    const { proxy, there } = await silentNegotiateProxy();
    const agent = through(proxy);
    expect(gssHandshakesInFlight()).toBe(0);
    const failed = request(`https://localhost:${originPort}/`, { dispatcher: agent }).catch((err: Error) => err);
    await there;
    expect(gssHandshakesInFlight()).toBe(1);
    await agent.destroy();
    expect(await failed).toMatchObject({ code: 'MULTILEG_CLOSED' });
    expect(gssHandshakesInFlight()).toBe(0);
  });

  it("C4/H5: the agent closed while the CONNECT's Kerberos leg waits for an answer that never comes: close() resolves once the tunnel's deadline ended the handshake, its GSS-API context freed by then (before: still counted when close() resolved)", async () => {
    const { proxy, there } = await silentNegotiateProxy();
    opened.push(proxy);
    const agent = new MultilegAgent({
      connect: { ca: CA_CERT },
      limits: { handshakeTimeout: 1000 },
      proxy: { uri: `http://127.0.0.1:${proxy.port}`, negotiate: { backend: 'gssapi', spn: 'HTTP@localhost' } },
    });
    agents.push(agent);
    const failed = request(`https://localhost:${originPort}/`, { dispatcher: agent }).catch((err: Error) => err);
    await there;
    expect(gssHandshakesInFlight()).toBe(1);
    await agent.close();
    expect(gssHandshakesInFlight()).toBe(0);
    expect(await failed).toMatchObject({ code: 'MULTILEG_PROXY_TIMEOUT' });
    // Its report says why: the deadline, not the socket the deadline destroyed.
    expect(proxyReports(agent)).toEqual([
      expect.objectContaining({ outcome: 'failed', failureReason: expect.stringMatching(/^MULTILEG_PROXY_TIMEOUT: /) }),
    ]);
  });

  for (const target of ['forwarded', 'CONNECT'] as const)
    it(`C4/H5: the agent destroyed while a proxy's Negotiate step still runs (${target}) ends that handshake at once: its GSS-API context is freed without waiting for the step, and nothing more is sent`, async () => {
      const slow = slowNegotiate();
      const proxy = await negotiateProxy(() => 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      opened.push(proxy);
      // (The proxy's Negotiate is the slow one: proxy.mechanisms gives it by scheme.)
      const slowAgent = new MultilegAgent({
        connect: { ca: CA_CERT },
        proxy: { uri: `http://127.0.0.1:${proxy.port}`, negotiate: false, mechanisms: [slow.mechanism] },
      });
      agents.push(slowAgent);
      const url = target === 'forwarded' ? 'http://origin.test/' : `https://localhost:${originPort}/`;
      const failed = request(url, { dispatcher: slowAgent }).catch((err: Error) => err);
      await slow.stepping;
      expect(gssHandshakesInFlight()).toBe(1);
      await slowAgent.destroy();
      // Before: counted until the step returned (a KDC that never answers: ~27 s), or until collected.
      expect(gssHandshakesInFlight()).toBe(0);
      slow.release();
      expect(await failed).toMatchObject({ code: 'MULTILEG_CLOSED' });
      expect(gssHandshakesInFlight()).toBe(0);
      // The token made after the end never went.
      expect(proxy.received.join('')).not.toMatch(/proxy-authorization/i);
    });

  it("C4/H5: a forwarded request whose proxy handshake times out (limits.handshakeTimeout) while its Negotiate step still runs frees that step's GSS-API context at once, as an origin's does; the token made later is sent nowhere", async () => {
    const slow = slowNegotiate();
    const proxy = await negotiateProxy(() => 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    opened.push(proxy);
    const agent = new MultilegAgent({
      limits: { handshakeTimeout: 300 },
      proxy: { uri: `http://127.0.0.1:${proxy.port}`, negotiate: false, mechanisms: [slow.mechanism] },
    });
    agents.push(agent);
    const failed = request('http://origin.test/', { dispatcher: agent }).catch((err: Error) => err);
    await slow.stepping;
    expect(await failed).toMatchObject({ code: 'MULTILEG_PROXY_TIMEOUT' });
    // Before: counted until the step returned (a KDC that never answers: ~27 s), or until collected.
    expect(gssHandshakesInFlight()).toBe(0);
    slow.release();
    await agent.close();
    expect(gssHandshakesInFlight()).toBe(0);
    expect(proxy.received.join('')).not.toMatch(/proxy-authorization/i);
  });
});

describe("a forwarding proxy's 5xx after a proof that checks out (M2/H5/S6, scripted; no KDC)", () => {
  const opened: Hostile[] = [];
  const agents: MultilegAgent[] = [];
  afterEach(async () => {
    await Promise.all(agents.splice(0).map((a) => a.destroy()));
    await Promise.all(opened.splice(0).map((p) => p.close()));
  });

  it.each([
    ['a Kerberos-like identity (held outside the agent): the connection goes', true, 2],
    ["the agent's own password's (NTLM-like): the connection stays (review r60)", false, 1],
  ])(
    "M2/H5/S6: a forwarded 502 that ends the proxy handshake with a valid final token is the caller's 502, the handshake failed (error), no identity; %s",
    async (_what, outside, connections) => {
      const proxy = await hostile((socket, received) =>
        eachRequest(socket, received, (head) => {
          if (!/\r\nproxy-authorization: final /i.test(head))
            socket.write('HTTP/1.1 407 x\r\nProxy-Authenticate: Final\r\nContent-Length: 0\r\n\r\n');
          else if (head.startsWith('GET http://origin.test/down'))
            socket.write(
              'HTTP/1.1 502 Bad Gateway\r\nProxy-Authenticate: Final proved\r\nContent-Length: 4\r\n\r\ndown',
            );
          else socket.write('HTTP/1.1 200 OK\r\nProxy-Authenticate: Final proved\r\nContent-Length: 2\r\n\r\nok');
          return undefined;
        }),
      );
      opened.push(proxy);
      const agent = new MultilegAgent({
        negotiate: false,
        proxy: {
          uri: `http://127.0.0.1:${proxy.port}`,
          negotiate: false,
          mechanisms: [finalProofMechanism(outside)],
          schemes: ['Final' as SchemeName],
        },
      });
      agents.push(agent);
      const reports = () => agent.handshakes().filter((h) => h.proxy);
      const down = await request('http://origin.test/down', { dispatcher: agent });
      expect([down.statusCode, await down.body.text()]).toEqual([502, 'down']);
      // Before: reported a session, as fin@EXAMPLE (the connection recorded as held by that identity).
      expect(reports()).toEqual([expect.objectContaining({ scheme: 'Final', outcome: 'failed', failure: 'error' })]);
      expect(reports()[0]).not.toHaveProperty('identity');
      // The next request authenticates afresh (a bare request, the proxy's 407, a handshake): on a new
      // connection where the proxy may hold the old one as an identity nothing records.
      const ok = await request('http://origin.test/ok', { dispatcher: agent });
      expect([ok.statusCode, await ok.body.text()]).toEqual([200, 'ok']);
      expect(reports().map((h) => [h.outcome, h.identity])).toEqual([
        ['failed', undefined],
        ['session', 'fin@EXAMPLE'],
      ]);
      expect(proxy.connections).toBe(connections);
      const sent = proxy.received
        .join('')
        .split('\r\n\r\n')
        .filter((h) => h.startsWith('GET '))
        .map((h) => `${h.split(' ')[1]} ${/\r\nproxy-authorization: /i.test(h) ? 'Final' : 'bare'}`);
      expect(sent).toEqual([
        'http://origin.test/down bare',
        'http://origin.test/down Final',
        'http://origin.test/ok bare',
        'http://origin.test/ok Final',
      ]);
    },
  );
});
