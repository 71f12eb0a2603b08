/**
 * Upgrade (WebSocket-style) and CONNECT requests (H5, H1): through the configured proxy's CONNECT
 * tunnel with proxy authentication, and authenticated when the origin challenges the upgrade —
 * every leg on one HTTP/1.1 connection. The origin is a small loopback HTTP/1.1 server that uses
 * the NTLM acceptor of src/mechanisms/ntlm (a real NTLMv2 password check) and, once satisfied,
 * switches protocols and echoes.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { type AddressInfo, createServer as createNetServer, type Socket } from 'node:net';
import { createSecureContext, createServer as createTlsServer } from 'node:tls';
import { connect, type Dispatcher, interceptors, request, upgrade, WebSocket } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import {
  AgentClosedError,
  BasicOverHttpError,
  type CertificateRequestInfo,
  type Challenge,
  CleartextCredentialsError,
  ClientCertificateRefusedError,
  ClientCertificateRequiredError,
  ConnectionClosedError,
  HandshakeTimeoutError,
  InvalidTokenError,
  KerberosTicketExpiredError,
  LegLimitError,
  type Mechanism,
  MechanismUnavailableError,
  MultilegAgent,
  type MultilegAgentOptions,
  MutualAuthError,
  ntlmMechanism,
  type RefusalMemory,
  type SchemeName,
  UNANSWERED_CHANNEL,
  type UnansweredEvent,
  WITHHELD_CHANNEL,
  type WithheldEvent,
} from '../src/index.ts';
import { ProxyAuthenticationError } from '../src/proxy/errors.ts';
import {
  CA_CERT,
  CLIENT_CERT,
  CLIENT_KEY,
  type ReferenceProxy,
  startReferenceProxy,
} from '../src/reference-server/index.ts';
import { SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import {
  ALICE,
  abortedWhileRecalling,
  answeringRefusalMemory,
  deferred,
  localhostCertificate,
  patchedNtlm,
  recordingPorts,
  testNtlm,
  unavailableScheme,
  until,
  waitingRefusalMemory,
} from './helpers.ts';
import { type Hostile, relayTo, slowRelayTo } from './hostile-proxy.ts';
import { read, type UpgradeServer, upgradeServer } from './upgrade-origin.ts';

/**
 * An upgrade to `origin` during which the vault hands over the new password (setCredentials(ALICE))
 * as its NTLM NEGOTIATE is written, before the CHALLENGE comes back: how it ended.
 */
async function upgradeRotatedAtNegotiate(agent: MultilegAgent, origin: string): Promise<'upgraded' | 'response'> {
  const rotate = whenSent(/authorization: NTLM TlRMTVNTUAAB/i, () => agent.setCredentials(ALICE));
  try {
    const r = await upgradeOrResponse(agent, origin);
    if (r.kind === 'upgraded') sockets.push(r.socket);
    return r.kind;
  } finally {
    rotate.stop();
  }
}

/** An upgrade through `agent` that resolves with the response the caller got instead, if any. */
function upgradeOrResponse(
  agent: Dispatcher,
  origin: string,
  headers: Record<string, string> = {},
): Promise<{ kind: 'upgraded'; socket: Socket } | { kind: 'response'; status: number; body: string }> {
  return new Promise((resolve, reject) => {
    let status = 0;
    let body = '';
    agent.dispatch(
      { origin, path: '/ws', method: 'GET', upgrade: 'websocket', headers },
      {
        onRequestUpgrade: (_c, _s, _h, socket) => resolve({ kind: 'upgraded', socket: socket as Socket }),
        onResponseStart: (_c, s) => {
          status = s;
        },
        onResponseData: (_c, chunk) => {
          body += chunk.toString();
        },
        onResponseEnd: () => resolve({ kind: 'response', status, body }),
        onResponseError: (_c, err) => reject(err),
      },
    );
  });
}

let origin: UpgradeServer | undefined;
let proxy: ReferenceProxy | undefined;
let relay: Hostile | undefined;
let agent: MultilegAgent | undefined;
const sockets: Socket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await agent?.destroy().catch(() => {});
  await proxy?.close();
  await relay?.close();
  await origin?.close();
  agent = proxy = relay = origin = undefined;
});

function ntlmAgent(o: Partial<MultilegAgentOptions> = {}): MultilegAgent {
  return new MultilegAgent({
    credentials: ALICE,
    trustedOrigins: [origin!.origin],
    negotiate: false,
    proxy: false,
    ...o,
  });
}

/** Runs `then` once, as the first request head matching `head` is written (undici's sendHeaders). */
function whenSent(head: RegExp, then: () => void): { stop(): void } {
  const seen = (message: unknown) => {
    const { headers } = message as { headers: unknown };
    if (typeof headers === 'string' && head.test(headers)) {
      unsubscribe('undici:client:sendHeaders', seen);
      then();
    }
  };
  subscribe('undici:client:sendHeaders', seen);
  return { stop: () => unsubscribe('undici:client:sendHeaders', seen) };
}

describe('upgrades to an origin that also speaks HTTP/2', () => {
  it('H1: an https upgrade through the agent, no proxy, goes over HTTP/1.1 even where the server offers h2 (ALPN)', async () => {
    const { rig } = await import('./helpers.ts');
    const r = await rig({ mode: 'session', schemes: ['NTLM'] });
    try {
      // Before: HTTP/2 was negotiated and undici failed with "Extended CONNECT protocol not supported
      // by server" before anything reached the origin (so did WebSocket's HTTP/1.1 retry).
      const err = await upgrade(`${r.server.origin}/auth/ws`, { dispatcher: r.agent, protocol: 'websocket' }).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err?.message ?? '').not.toMatch(/Extended CONNECT/);
      expect(r.server.exchanges.length).toBeGreaterThan(0);
      expect(new Set(r.server.exchanges.map((e) => e.protocol))).toEqual(new Set(['http/1.1']));
    } finally {
      await r.close();
    }
  });
});

describe('upgrade and CONNECT requests (H5, H1)', () => {
  it('H1: an upgrade the origin challenges with NTLM: every leg on one connection, then 101 and the socket', async () => {
    origin = await upgradeServer({ ntlm: true });
    agent = ntlmAgent();
    const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(socket as Socket);
    expect(await read(socket as Socket, 'hello EXAMPLE\\alice\n'.length)).toBe('hello EXAMPLE\\alice\n');
    socket.write('ping');
    expect(await read(socket as Socket, 4)).toBe('ping');
    expect(origin.seen.map((s) => [s.connection, s.authorization, s.status, s.upgrade])).toEqual([
      [1, undefined, 401, 'websocket'],
      [1, 'NTLM/1', 401, 'websocket'],
      [1, 'NTLM/3', 101, 'websocket'],
    ]);
  });

  it("H1: an upgrade the origin challenges with NTLM under Keep-Alive: timeout=2 (Apache's KeepAliveTimeout 2): every leg on one connection (undici's 2 s margin closed it after each 401)", async () => {
    origin = await upgradeServer({ ntlm: true, keepAlive: 'timeout=2' });
    agent = ntlmAgent();
    const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(socket as Socket);
    expect(await read(socket as Socket, 'hello EXAMPLE\\alice\n'.length)).toBe('hello EXAMPLE\\alice\n');
    expect(origin.seen.map((s) => [s.connection, s.authorization, s.status])).toEqual([
      [1, undefined, 401],
      [1, 'NTLM/1', 401],
      [1, 'NTLM/3', 101],
    ]);
  });

  it("an upgrade asks the agent's cookie jar for each leg and tells it each head, the 101's too: a cookie set on a challenge goes on the next leg; S6: not for an upgrade with its own Authorization", async () => {
    origin = await upgradeServer({ ntlm: true, setCookies: true });
    const jar = new Map<string, string>();
    const told: string[] = [];
    const cookies = {
      cookieHeader: () => (jar.size ? [...jar].map(([k, v]) => `${k}=${v}`).join('; ') : undefined),
      setCookies: (_url: string, values: readonly string[]) => {
        for (const v of values) {
          told.push(v);
          const [k, val] = v.split('=');
          jar.set(k!, val!);
        }
      },
    };
    agent = ntlmAgent({ cookies });
    const up = await upgradeOrResponse(agent, origin.origin, { cookie: 'mine=1' });
    expect(up.kind).toBe('upgraded');
    if (up.kind === 'upgraded') sockets.push(up.socket);
    expect(origin.seen.map((s) => [s.authorization, s.status, s.cookie])).toEqual([
      [undefined, 401, 'mine=1'],
      ['NTLM/1', 401, 'leg=1; mine=1'],
      ['NTLM/3', 101, 'leg=2; mine=1'],
    ]);
    expect(told).toEqual(['leg=1', 'leg=2', 'ws=1']);
    // A caller's own credentials are another identity: the jar is neither asked nor told.
    const own = await upgradeOrResponse(agent, origin.origin, { authorization: 'Basic Ym9iOmJvYnB3' });
    if (own.kind === 'upgraded') sockets.push(own.socket);
    expect(origin.seen.at(-1)!.cookie).toBeUndefined();
    expect(told).toHaveLength(3);
  });

  it('H1: an origin that closes the connection with its NTLM CHALLENGE (a keep-alive limit): the AUTHENTICATE goes on no other connection; the handshake starts over on a new one and upgrades', async () => {
    origin = await upgradeServer({ ntlm: true, closeOnChallenge: 'first' });
    agent = ntlmAgent();
    // Before: the AUTHENTICATE answering connection 1's CHALLENGE went on connection 2, whose server
    // context never saw the handshake: a 401, taken as a refusal of the password (R4).
    const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(socket as Socket);
    expect(await read(socket as Socket, 20)).toBe('hello EXAMPLE\\alice\n');
    expect(origin.seen.map((s) => [s.connection, s.authorization, s.status])).toEqual([
      [1, undefined, 401],
      [1, 'NTLM/1', 401],
      [2, 'NTLM/1', 401],
      [2, 'NTLM/3', 101],
    ]);
  });

  it("H1: a connection that closes after the upgrade's check of it and before undici writes the AUTHENTICATE answering its CHALLENGE: undici asks for a new connection for it, which the connector refuses; the handshake starts over there and upgrades", async () => {
    const stepped = deferred();
    origin = await upgradeServer({
      ntlm: true,
      // In a timer: undici, which waits a turn before writing on an idle connection, reads the close
      // in the poll phase that follows, after the agent's check saw the connection open.
      challengeWritten: (n, close) =>
        n === 1 &&
        setTimeout(() => {
          close();
          stepped.resolve();
        }, 20),
    });
    const ntlm = ntlmMechanism(ALICE);
    let contexts = 0;
    // NTLM whose AUTHENTICATE on the first connection is made once that connection is closing.
    const held: Mechanism = {
      ...ntlm,
      createContext(leg) {
        const real = ntlm.createContext(leg);
        const first = ++contexts === 1;
        return {
          get complete() {
            return real.complete;
          },
          step: async (challenge, l) => {
            if (first && challenge?.token68 !== undefined) await stepped.promise;
            return real.step(challenge, l);
          },
          finish: (challenge, l) => real.finish(challenge, l),
        };
      },
    };
    agent = ntlmAgent({ mechanisms: [held] });
    // Without the connector's refusal the AUTHENTICATE went on connection 2, whose server context
    // never saw the handshake: a 401, taken as a refusal of the password (R4).
    const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(socket as Socket);
    expect(await read(socket as Socket, 20)).toBe('hello EXAMPLE\\alice\n');
    expect(origin.seen.map((s) => [s.connection, s.authorization, s.status])).toEqual([
      [1, undefined, 401],
      [1, 'NTLM/1', 401],
      [2, 'NTLM/1', 401],
      [2, 'NTLM/3', 101],
    ]);
  });

  it('H1/R4: an origin that closes the connection with every NTLM CHALLENGE: after one start-over a ConnectionClosedError saying so, no AUTHENTICATE written anywhere, and the password not held back as refused', async () => {
    origin = await upgradeServer({ ntlm: true, closeOnChallenge: true });
    agent = ntlmAgent();
    for (let i = 0; i < 2; i++) {
      const err = await upgradeOrResponse(agent, origin.origin).then(
        (r) => r,
        (e: Error) => e,
      );
      expect(err).toBeInstanceOf(ConnectionClosedError);
      expect((err as Error).message).toMatch(/NTLM challenge .*no credential was refused/);
    }
    // Each upgrade: the bare 401, then a NEGOTIATE on each of two connections; the second upgrade
    // tries again (nothing refused), and never an AUTHENTICATE.
    expect(origin.seen.map((s) => [s.connection, s.authorization])).toEqual([
      [1, undefined],
      [1, 'NTLM/1'],
      [2, 'NTLM/1'],
      [3, undefined],
      [3, 'NTLM/1'],
      [4, 'NTLM/1'],
    ]);
  });

  it('M5/H1: a first token bound to the connection (Kerberos channel bindings) after a bare 401 that closes its connection carries the binding of the connection it goes on, not of the closed one', async () => {
    // Two certificates for localhost, one per connection (a front end whose backends differ).
    const pairs = [1, 2].map((n) => localhostCertificate(`c${n}`));
    const bindingOf = (pem: string) => createHash('sha256').update(new X509Certificate(pem).raw).digest('hex');
    let connections = 0;
    /** Per request: the connection, the binding of the certificate it presented, the Authorization. */
    const seen: { connection: number; binding: string; authorization: string | undefined }[] = [];
    const contexts = pairs.map((p) => createSecureContext(p));
    const server = createTlsServer(
      { ...pairs[0]!, SNICallback: (_name, cb) => cb(null, contexts[connections++ % 2]) },
      (socket) => {
        const connection = connections;
        const binding = bindingOf(pairs[(connection - 1) % 2]!.cert);
        socket.on('error', () => {});
        socket.on('data', (d) => {
          const authorization = /\r\nauthorization: ([^\r]*)/i.exec(d.toString('latin1'))?.[1];
          seen.push({ connection, binding, authorization });
          if (authorization === undefined) {
            socket.end(
              'HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Negotiate\r\nconnection: close\r\ncontent-length: 0\r\n\r\n',
            );
          } else {
            socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
          }
        });
      },
    );
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    try {
      const bindings: (string | undefined)[] = [];
      const kerberosLike: Mechanism = {
        scheme: 'Negotiate',
        level: 'either',
        multileg: false,
        proactive: false,
        bindsFirstToken: true,
        usesPassword: false,
        createContext: () => {
          let made = false;
          return {
            get complete() {
              return made;
            },
            step: async (_challenge, leg) => {
              made = true;
              bindings.push(leg.channelBinding?.toString('hex'));
              return 'Negotiate dGVzdA==';
            },
            finish: async () => {},
          };
        },
      };
      agent = new MultilegAgent({
        mechanisms: [kerberosLike],
        trustedOrigins: [`https://localhost:${port}`],
        connect: { ca: pairs.map((p) => p.cert) },
        proxy: false,
      });
      const r = await upgradeOrResponse(agent, `https://localhost:${port}`);
      expect(r).toMatchObject({ kind: 'response', status: 403 });
      expect(seen.map((s) => [s.connection, s.authorization])).toEqual([
        [1, undefined],
        [2, 'Negotiate dGVzdA=='],
      ]);
      // Before: the token carried connection 1's certificate's binding (a server checking it refuses).
      expect(bindings).toEqual([seen[1]!.binding]);
      expect(seen[0]!.binding).not.toBe(seen[1]!.binding);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it("R1: an origin that closes an upgrade's new connection under its first request: ConnectionClosedError (fresh), as for a request, not undici's bare SocketError", async () => {
    origin = await upgradeServer({ ntlm: true, dropAt: 0 });
    agent = ntlmAgent();
    const err = await upgradeOrResponse(agent, origin.origin).then(
      (r) => r,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(ConnectionClosedError);
    expect(err).toMatchObject({ code: 'MULTILEG_CONNECTION_CLOSED', fresh: true });
  });

  it("R1: an origin that closes the connection under the upgrade's NEGOTIATE (no password in it): ConnectionClosedError naming the handshake's connection, nothing held back, and no advice about undici's idempotent option (an upgrade is never sent again)", async () => {
    origin = await upgradeServer({ ntlm: true, dropAt: 1 });
    agent = ntlmAgent();
    const err = await upgradeOrResponse(agent, origin.origin).then(
      (r) => r,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(ConnectionClosedError);
    expect((err as Error).message).toMatch(/handshake ran on.*never sent again by the agent/);
    expect((err as Error).message).not.toMatch(/idempotent|carried credentials/);
    // Nothing held back: the next upgrade authenticates.
    const again = await upgradeOrResponse(agent, origin.origin);
    expect(again.kind).toBe('upgraded');
    if (again.kind === 'upgraded') sockets.push(again.socket);
  });

  it("R1/R4: an origin that closes the connection under the upgrade's AUTHENTICATE: ConnectionClosedError saying the handshake's connection closed and that the password went unanswered (held back, R4)", async () => {
    origin = await upgradeServer({ ntlm: true, dropAt: 2 });
    agent = ntlmAgent();
    const err = await upgradeOrResponse(agent, origin.origin).then(
      (r) => r,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(ConnectionClosedError);
    expect(err).toMatchObject({ fresh: false });
    expect((err as Error).message).toMatch(/handshake ran on.*carried credentials \(Authorization\)/);
    expect((err as Error).message).not.toContain('alicepw');
    expect(origin.seen.map((s) => [s.connection, s.authorization])).toEqual([
      [1, undefined],
      [1, 'NTLM/1'],
      [1, 'dropped'],
    ]);
  });

  it("R4/S6: a 101 to NTLM's opening leg (the NEGOTIATE, no password in it) proves nothing of the password: a wrong one refused after it is held back at once, as when nothing was proved", async () => {
    origin = await upgradeServer({ ntlm: true, upgradeNegotiateOn: 1 });
    agent = ntlmAgent({ credentials: { ...ALICE, password: 'wrong' } });
    const first = await upgradeOrResponse(agent, origin.origin);
    expect(first.kind).toBe('upgraded');
    if (first.kind === 'upgraded') sockets.push(first.socket);
    for (let i = 0; i < 2; i++) expect(await upgradeOrResponse(agent, origin.origin)).toMatchObject({ status: 401 });
    // Before: the 101 counted as the password proved, so its first refusal was tried once more
    // (a fourth and fifth NTLM message) before it was held back.
    expect(origin.seen.map((s) => [s.connection, s.authorization, s.status])).toEqual([
      [1, undefined, 401],
      [1, 'NTLM/1', 101],
      [2, undefined, 401],
      [2, 'NTLM/1', 401],
      [2, 'NTLM/3', 401],
      [3, undefined, 401],
    ]);
  });

  it('H1: a large intermediate 401 body is drained, not aborted: the legs stay on the one connection', async () => {
    origin = await upgradeServer({ ntlm: true, challengeBody: 'x'.repeat(40_000) });
    agent = ntlmAgent();
    const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(socket as Socket);
    expect(await read(socket as Socket, 20)).toBe('hello EXAMPLE\\alice\n');
    expect(new Set(origin.seen.map((s) => s.connection))).toEqual(new Set([1]));
  });

  it('C11: an intermediate 401 body over limits.maxChallengeBodyBytes ends the handshake with a typed error naming the limit', async () => {
    origin = await upgradeServer({ ntlm: true, challengeBody: 'x'.repeat(200_000) });
    agent = ntlmAgent({ limits: { maxChallengeBodyBytes: 1000 } });
    const err = await upgradeOrResponse(agent, origin.origin).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toMatchObject({ code: 'MULTILEG_CHALLENGE_BODY_TOO_LARGE' });
    expect(err?.message).toContain('limits.maxChallengeBodyBytes (1000)');
    expect(origin.seen).toHaveLength(1);
  });

  for (const [at, which] of [
    [0, 'the bare first 401'],
    [1, "NTLM's CHALLENGE (the 401 to the NEGOTIATE)"],
  ] as const) {
    it(`R1/C8: an origin that closes the connection partway through the body of ${which} to an upgrade (its head whole): ConnectionClosedError naming the origin and the challenge (challengeCut), undici's SocketError its cause, nothing more written; the next upgrade authenticates`, async () => {
      origin = await upgradeServer({ ntlm: true, cutChallengeAt: at });
      agent = ntlmAgent();
      const err = await upgradeOrResponse(agent, origin.origin).then(
        (r) => r,
        (e: Error) => e,
      );
      // Before: undici's bare SocketError ('other side closed').
      expect(err).toBeInstanceOf(ConnectionClosedError);
      expect(err).toMatchObject({ code: 'MULTILEG_CONNECTION_CLOSED', peer: origin.origin, challengeCut: 401 });
      expect((err as Error).message).toContain(
        `origin ${origin.origin} closed the connection partway through the body of its 401 challenge to the GET`,
      );
      expect((err as Error).message).not.toContain('alicepw');
      expect(((err as Error).cause as { code?: string }).code).toBe('UND_ERR_SOCKET');
      expect(origin.seen).toHaveLength(at + 1);
      const again = await upgradeOrResponse(agent, origin.origin);
      expect(again.kind).toBe('upgraded');
      if (again.kind === 'upgraded') sockets.push(again.socket);
      expect(origin.seen.slice(at + 1).map((s) => [s.connection, s.authorization, s.status])).toEqual([
        [2, undefined, 401],
        [2, 'NTLM/1', 401],
        [2, 'NTLM/3', 101],
      ]);
    });
  }

  it("R1/C8: an origin that closes the connection partway through the body of its Basic 401 to an upgrade (its head whole): ConnectionClosedError naming the origin and the challenge (challengeCut), undici's SocketError its cause, no credentials sent; the next upgrade authenticates with Basic", async () => {
    origin = await upgradeServer({ ntlm: false, basic: true, cutChallengeAt: 0 });
    agent = ntlmAgent({ schemes: ['Basic'], allowBasicOverHttp: true });
    const err = await upgradeOrResponse(agent, origin.origin).then(
      (r) => r,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(ConnectionClosedError);
    expect(err).toMatchObject({ code: 'MULTILEG_CONNECTION_CLOSED', peer: origin.origin, challengeCut: 401 });
    expect((err as Error).message).toContain(
      `origin ${origin.origin} closed the connection partway through the body of its 401 challenge to the GET`,
    );
    expect((err as Error).message).not.toContain('alicepw');
    expect(((err as Error).cause as { code?: string }).code).toBe('UND_ERR_SOCKET');
    expect(origin.seen).toHaveLength(1);
    const again = await upgradeOrResponse(agent, origin.origin);
    expect(again.kind).toBe('upgraded');
    if (again.kind === 'upgraded') sockets.push(again.socket);
    expect(origin.seen.slice(1).map((s) => [s.connection, s.authorization, s.status])).toEqual([
      [2, undefined, 401],
      [2, 'Basic', 101],
    ]);
  });

  it("S1/S6: an upgrade whose Host header names another origin goes as the caller's own: no NTLM of the agent's, the origin's 401 to the caller", async () => {
    origin = await upgradeServer({ ntlm: true });
    agent = ntlmAgent();
    const { port } = new URL(origin.origin);
    const r = await upgradeOrResponse(agent, origin.origin, { host: `other.example:${port}` });
    // Before: NEGOTIATE and AUTHENTICATE as alice, and the 101, for the authority the Host named.
    expect(r).toEqual({ kind: 'response', status: 401, body: 'who are you?' });
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined]);
  });

  it('H1: a wrong password: the caller gets the origin’s final 401 after one handshake', async () => {
    origin = await upgradeServer({ ntlm: true });
    agent = ntlmAgent({ credentials: { username: 'EXAMPLE\\alice', password: 'wrong' } });
    const r = await upgradeOrResponse(agent, origin.origin);
    expect(r).toEqual({ kind: 'response', status: 401, body: 'who are you?' });
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined, 'NTLM/1', 'NTLM/3']);
  });

  it('R4: upgrades again and again with a wrong password (a WebSocket reconnecting): the password is tried once, then the origin’s 401 comes without it', async () => {
    origin = await upgradeServer({ ntlm: true });
    agent = ntlmAgent({ credentials: { username: 'EXAMPLE\\alice', password: 'wrong' } });
    for (let i = 0; i < 5; i++) {
      expect(await upgradeOrResponse(agent, origin.origin)).toEqual({
        kind: 'response',
        status: 401,
        body: 'who are you?',
      });
    }
    // Before: five AUTHENTICATEs with the wrong password (one per upgrade); an account locks after a few.
    expect(origin.seen.filter((s) => s.authorization === 'NTLM/3')).toHaveLength(1);
    expect(origin.seen.slice(3).map((s) => s.authorization)).toEqual(Array(4).fill(undefined));
  });

  it('R4: a password a refusalMemory holds back: the 401 that asked for it is the upgrade’s answer, body and all, said why — the upgrade sent once, as a request is', async () => {
    origin = await upgradeServer({ ntlm: true });
    const held = answeringRefusalMemory();
    agent = ntlmAgent({ credentials: { username: 'EXAMPLE\\alice', password: 'wrong' }, refusalMemory: held.memory });
    const events: WithheldEvent[] = [];
    const listen = (e: unknown) => events.push(e as WithheldEvent);
    subscribe(WITHHELD_CHANNEL, listen);
    try {
      expect(await upgradeOrResponse(agent, origin.origin)).toEqual({
        kind: 'response',
        status: 401,
        body: 'who are you?',
      });
    } finally {
      unsubscribe(WITHHELD_CHANNEL, listen);
    }
    expect(held.calls).toEqual(['recall', 'release']);
    expect(held.recalled.map((p) => p.origin)).toEqual([origin.origin]);
    expect(held.released.map((p) => p.origin)).toEqual([origin.origin]);
    // Before: the first 401 was drained, the memory then held the password back, and the upgrade
    // went again bare for a 401 to show — two requests.
    expect(origin.seen.map((s) => [s.method, s.upgrade, s.authorization, s.status])).toEqual([
      ['GET', 'websocket', undefined, 401],
    ]);
    expect(events).toEqual([
      expect.objectContaining({ origin: origin.origin, path: '/ws', reason: 'refused-lately', schemes: ['NTLM'] }),
    ]);
    expect(events[0]!.heldBackFor).toBeGreaterThan(50_000);
  });

  it("S1/R4: an upgrade's 401 that goes to the caller unanswered is published on multileg:withheld with why, as a request's is (undici's WebSocket keeps no other word of it): an untrusted origin, a password refused lately", async () => {
    const events: WithheldEvent[] = [];
    const listen = (e: unknown) => events.push(e as WithheldEvent);
    subscribe(WITHHELD_CHANNEL, listen);
    try {
      origin = await upgradeServer({ ntlm: true, tls: true });
      agent = ntlmAgent({ trustedOrigins: ['https://elsewhere.example'], connect: { ca: CA_CERT } });
      expect(await upgradeOrResponse(agent, origin.origin)).toMatchObject({ status: 401 });
      // Before: nothing published for upgrades.
      expect(events).toMatchObject([
        { origin: origin.origin, path: '/ws', reason: 'untrusted-origin', schemes: ['NTLM'] },
      ]);
      await agent.destroy();
      events.length = 0;
      agent = ntlmAgent({ credentials: { username: 'EXAMPLE\\alice', password: 'wrong' }, connect: { ca: CA_CERT } });
      for (let i = 0; i < 2; i++) expect(await upgradeOrResponse(agent, origin.origin)).toMatchObject({ status: 401 });
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ origin: origin.origin, reason: 'refused-lately', schemes: ['NTLM'] });
      expect(events[0]!.heldBackFor).toBeGreaterThan(0);
    } finally {
      unsubscribe(WITHHELD_CHANNEL, listen);
    }
  });

  for (const { title, options, timeout } of [
    {
      title:
        'R4: an origin silent on the upgrade’s AUTHENTICATE (the password’s leg) is sent it twice in a row, then the password is held back as after a refusal, not sent once per upgrade (review r49)',
      options: { limits: { handshakeTimeout: 300 } },
      timeout: 'MULTILEG_HANDSHAKE_TIMEOUT',
    },
    {
      title:
        "R4: an origin silent on the upgrade’s AUTHENTICATE past the agent's headersTimeout (shorter than handshakeTimeout) is sent it twice in a row too, by the rule a request's handshake asks (unansweredMayCount)",
      options: { headersTimeout: 300, limits: { handshakeTimeout: 10_000 } },
      timeout: 'UND_ERR_HEADERS_TIMEOUT',
    },
  ])
    it(title, async () => {
      origin = await upgradeServer({ ntlm: true, stallAuthenticate: true });
      agent = ntlmAgent(options);
      const outcomes: string[] = [];
      for (let i = 0; i < 4; i++) {
        outcomes.push(
          await upgradeOrResponse(agent, origin.origin).then(
            (r) => (r.kind === 'response' ? String(r.status) : r.kind),
            (e: { code?: string }) => String(e.code),
          ),
        );
      }
      expect(outcomes).toEqual([timeout, timeout, '401', '401']);
      // Before: four AUTHENTICATEs, one per upgrade.
      expect(origin.seen.filter((s) => s.authorization === 'stalled')).toHaveLength(2);
    });

  it('R4/S6: after setCredentials, an upgrade authenticates with the new password at once (the old one refused, kept back, does not carry over)', async () => {
    origin = await upgradeServer({ ntlm: true });
    agent = ntlmAgent({ credentials: { username: 'EXAMPLE\\alice', password: 'wrong' } });
    for (let i = 0; i < 2; i++) expect((await upgradeOrResponse(agent, origin.origin)).kind).toBe('response');
    agent.setCredentials(ALICE);
    const r = await upgradeOrResponse(agent, origin.origin);
    expect(r.kind).toBe('upgraded');
    if (r.kind === 'upgraded') sockets.push(r.socket);
    expect(origin.seen.filter((s) => s.authorization === 'NTLM/3')).toHaveLength(2);
  });

  it("S6/R4: setCredentials between an upgrade's NEGOTIATE and its AUTHENTICATE: nothing of the old password is sent, the upgrade starts over with the new one", async () => {
    origin = await upgradeServer({ ntlm: true });
    agent = ntlmAgent({ credentials: { username: 'EXAMPLE\\alice', password: 'old' } });
    expect(await upgradeRotatedAtNegotiate(agent, origin.origin)).toBe('upgraded');
    // One AUTHENTICATE, the new password's, answered 101: the old one's was never written.
    expect(origin.seen.filter((s) => s.authorization === 'NTLM/3').map((s) => s.status)).toEqual([101]);
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined, 'NTLM/1', undefined, 'NTLM/1', 'NTLM/3']);
  });

  it("S6/H1: setCredentials between an upgrade's NEGOTIATE and a CHALLENGE that closes its connection: the upgrade starts over bare on a new connection and upgrades with the new password", async () => {
    origin = await upgradeServer({ ntlm: true, closeOnChallenge: 'first' });
    agent = ntlmAgent({ credentials: { username: 'EXAMPLE\\alice', password: 'old' } });
    // Before: the bare request starting over was still taken as bound to the closed connection:
    // refused a new one, the caller got an internal error.
    expect(await upgradeRotatedAtNegotiate(agent, origin.origin)).toBe('upgraded');
    expect(origin.seen.map((s) => [s.connection, s.authorization, s.status])).toEqual([
      [1, undefined, 401],
      [1, 'NTLM/1', 401],
      [2, undefined, 401],
      [2, 'NTLM/1', 401],
      [2, 'NTLM/3', 101],
    ]);
  });

  it('S6/R4: an upgrade waiting for its leave (the first upgrade proves the old password) at setCredentials sends no AUTHENTICATE of the old password and upgrades with the new one', async () => {
    // The first NEGOTIATE's CHALLENGE waits for the other upgrade's bare 401 (on a loaded machine its
    // bare request may come later), so that both chose NTLM with the old password before the call.
    const bothBare = () => until(() => origin!.seen.filter((s) => s.authorization === undefined).length >= 2);
    origin = await upgradeServer({ ntlm: true, holdChallenge: bothBare });
    agent = ntlmAgent({ credentials: { username: 'EXAMPLE\\alice', password: 'old' } });
    const a = agent;
    const o = origin;
    // The first upgrade's AUTHENTICATE (old password) is written: the other, whose NTLM was chosen
    // with the old password at its 401, waits in the origin's proof queue for that one's outcome.
    let atCall: (string | undefined)[] = [];
    const rotate = whenSent(/authorization: NTLM TlRMTVNTUAAD/i, () => {
      atCall = o.seen.map((s) => s.authorization);
      a.setCredentials(ALICE);
    });
    let second: Awaited<ReturnType<typeof upgradeOrResponse>>;
    try {
      const both = await Promise.all([
        upgradeOrResponse(agent, origin.origin),
        upgradeOrResponse(agent, origin.origin),
      ]);
      second = both.find((r) => r.kind === 'upgraded') ?? both[1]!;
      for (const r of both) if (r.kind === 'upgraded') sockets.push(r.socket);
    } finally {
      rotate.stop();
    }
    // At the call: both had met their bare 401, only one had gone on (NEGOTIATE) — in whichever
    // order the server saw them (the second bare request may arrive after the first's NEGOTIATE).
    expect(atCall.filter((a) => a === undefined)).toHaveLength(2);
    expect(atCall.filter((a) => a !== undefined)).toEqual(['NTLM/1']);
    // The old password's AUTHENTICATE went once, before the call (refused); after it, only the new one's.
    expect(
      origin.seen
        .filter((s) => s.authorization === 'NTLM/3')
        .map((s) => s.status)
        .sort(),
    ).toEqual([101, 401].sort());
    expect(second.kind).toBe('upgraded');
  });

  it('H1: an authenticated upgrade the origin refuses: the caller gets that response, body and all', async () => {
    origin = await upgradeServer({ ntlm: true, refuse: true });
    agent = ntlmAgent();
    const r = await upgradeOrResponse(agent, origin.origin);
    expect(r).toEqual({ kind: 'response', status: 403, body: 'not for EXAMPLE\\alice' });
    expect(origin.seen.map((s) => [s.connection, s.authorization, s.status])).toEqual([
      [1, undefined, 401],
      [1, 'NTLM/1', 401],
      [1, 'NTLM/3', 403],
    ]);
  });

  it('M2: an upgrade whose final mutual authentication fails is withheld: the socket is destroyed, the caller gets MutualAuthError', async () => {
    origin = await upgradeServer({ ntlm: true });
    const distrustful = patchedNtlm({
      finish: () => Promise.reject(new MutualAuthError('test: the final token does not verify')),
    });
    agent = ntlmAgent({ mechanisms: [distrustful] });
    const err = await upgradeOrResponse(agent, origin.origin).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(MutualAuthError);
    // The server did switch protocols; the socket never reached the caller.
    expect(origin.seen.at(-1)).toMatchObject({ authorization: 'NTLM/3', status: 101 });
  });

  it("M3: the 101's Authentication-Info reaches the mechanism's final check, as a response's does (Digest: rspauth, nextnonce)", async () => {
    origin = await upgradeServer({ ntlm: true, authenticationInfo: 'rspauth="abc", nextnonce="n2"' });
    let info: unknown;
    agent = ntlmAgent({
      mechanisms: [
        patchedNtlm({
          finish: async (_challenge, _leg, given) => {
            info = given;
          },
        }),
      ],
    });
    const r = await upgradeOrResponse(agent, origin.origin);
    expect(r.kind).toBe('upgraded');
    if (r.kind === 'upgraded') sockets.push(r.socket);
    expect(info).toEqual({ rspauth: 'abc', nextnonce: 'n2' });
  });

  it("M2: an authenticated final response carrying the server's proof (Authentication-Info) whose check fails is withheld too, whatever its status", async () => {
    // (A 403 without any proof is delivered unproved: the next test.)
    origin = await upgradeServer({ ntlm: true, refuse: true, authenticationInfo: 'rspauth="forged"' });
    agent = ntlmAgent({ mechanisms: [patchedNtlm({ finish: () => Promise.reject(new MutualAuthError('test')) })] });
    const seenStatus: number[] = [];
    const err = await new Promise<Error>((resolve) =>
      agent!.dispatch(
        { origin: origin!.origin, path: '/ws', method: 'GET', upgrade: 'websocket' },
        {
          onResponseStart: (_c, s) => {
            seenStatus.push(s);
          },
          onResponseError: (_c, e) => resolve(e),
        },
      ),
    );
    expect(err).toBeInstanceOf(MutualAuthError);
    expect(seenStatus).toEqual([]);
  });

  it("M2/S6: an authenticated 403 without the server's proof, which the mechanism still wants (Kerberos' AP-REP): the caller gets the 403, body and all, as a request does — not a MutualAuthError", async () => {
    origin = await upgradeServer({ ntlm: true, refuse: true });
    let checked: unknown[] | undefined;
    const wanting = patchedNtlm({
      finish: (final, _leg, info) => {
        checked = [final, info];
        return Promise.reject(new MutualAuthError('test: no final token'));
      },
    });
    agent = ntlmAgent({ mechanisms: [wanting] });
    expect(await upgradeOrResponse(agent, origin.origin)).toEqual({
      kind: 'response',
      status: 403,
      body: 'not for EXAMPLE\\alice',
    });
    // Asked with nothing of the server's: no final token, no Authentication-Info.
    expect(checked).toEqual([undefined, undefined]);
  });

  it('R1: a caller that aborts an upgrade while its handshake waits on the server gets its abort, and the connection is closed', async () => {
    origin = await upgradeServer({ ntlm: true, stallAt: 1 });
    agent = ntlmAgent();
    const controller = new AbortController();
    const pending = upgrade(`${origin.origin}/ws`, {
      dispatcher: agent,
      protocol: 'websocket',
      signal: controller.signal,
    }).then(
      () => undefined,
      (e: Error) => e,
    );
    while (origin.seen.length < 2) await new Promise((r) => setTimeout(r, 5));
    controller.abort(new Error('caller gave up'));
    const err = await pending;
    expect(err?.message).toMatch(/caller gave up|aborted/i);
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined, 'stalled']);
    // The stalled leg's connection is gone: the server sees it closed.
    await origin.closed(1);
  });

  it("R1/R4: a caller that aborts an upgrade while its mechanism's first step runs (a slow KDC) gets its abort at once, and the leave to send the password is let go: the next upgrade does not wait for that step", async () => {
    origin = await upgradeServer({ ntlm: true });
    const ntlm = ntlmMechanism(ALICE);
    let release!: () => void;
    const slow = new Promise<void>((r) => {
      release = r;
    });
    let first = true;
    const slowFirst = {
      ...ntlm,
      createContext(leg: Parameters<typeof ntlm.createContext>[0]) {
        const real = ntlm.createContext(leg);
        const stalls = first;
        first = false;
        return {
          get complete() {
            return real.complete;
          },
          // The first upgrade's first step waits until released (a KDC that takes its time).
          step: async (challenge: Parameters<typeof real.step>[0], l: Parameters<typeof real.step>[1]) => {
            if (stalls) await slow;
            return real.step(challenge, l);
          },
          finish: (challenge: Parameters<typeof real.finish>[0], l: Parameters<typeof real.finish>[1]) =>
            real.finish(challenge, l),
        };
      },
    };
    agent = ntlmAgent({ mechanisms: [slowFirst], limits: { handshakeTimeout: 10_000 } });
    try {
      const controller = new AbortController();
      const aborted = upgrade(`${origin.origin}/ws`, {
        dispatcher: agent,
        protocol: 'websocket',
        signal: controller.signal,
      }).then(
        () => undefined,
        (e: Error) => e,
      );
      await until(() => origin!.seen.length === 1);
      await new Promise((r) => setTimeout(r, 20));
      controller.abort(new Error('caller gave up'));
      expect((await aborted)?.message).toMatch(/caller gave up|aborted/i);
      // Before: the aborted upgrade held the leave (one password handshake at a time after a quiet
      // spell) until its step ended — here never, in life up to handshakeTimeout: this one waited.
      const started = Date.now();
      const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
      sockets.push(socket as Socket);
      expect(Date.now() - started).toBeLessThan(2_000);
      expect(origin.seen.map((s) => s.authorization)).toEqual([undefined, undefined, 'NTLM/1', 'NTLM/3']);
    } finally {
      release();
    }
  });

  it('R4/R3: a mechanism step that waits out handshakeTimeout on a silent KDC is remembered for the origin, as for a request: the next upgrade fails at once with that error, not after another timeout', async () => {
    origin = await upgradeServer({ ntlm: true });
    let steps = 0;
    const kdcBound: Mechanism = {
      ...testNtlm({
        step: () => {
          steps += 1;
          return new Promise<string>(() => {});
        },
      }),
      usesPassword: false,
    };
    // A context that says what its step waits on, as Negotiate's GSS-API calls do.
    const waiting: Mechanism = {
      ...kdcBound,
      createContext: (leg) =>
        Object.assign(kdcBound.createContext(leg), { waitingOn: 'GSS-API for HTTP@localhost (the KDC)' }),
    };
    agent = ntlmAgent({ mechanisms: [waiting], limits: { handshakeTimeout: 300 } });
    const first = await upgradeOrResponse(agent, origin.origin).then(
      (r) => r,
      (e: Error) => e,
    );
    expect(first).toBeInstanceOf(HandshakeTimeoutError);
    expect((first as HandshakeTimeoutError).inMechanismStep).toBe(true);
    // Before: each upgrade stepped again and waited the whole timeout on the same KDC.
    const started = Date.now();
    const second = await upgradeOrResponse(agent, origin.origin).then(
      (r) => r,
      (e: Error) => e,
    );
    expect(Date.now() - started).toBeLessThan(250);
    expect(second).toBeInstanceOf(HandshakeTimeoutError);
    expect((second as Error).message).toMatch(/remembered for this origin/);
    expect(steps).toBe(1);
    // The second upgrade's bare request was answered by the 401; nothing more went.
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined, undefined]);
  });

  it('T2/R4: a scheme found unusable by an upgrade is remembered for the origin: the next upgrade does not try it again', async () => {
    origin = await upgradeServer({ ntlm: true, alsoOffer: 'Negotiate' });
    let created = 0;
    const negotiate = unavailableScheme('Negotiate', () => {
      created += 1;
      return new MechanismUnavailableError('Negotiate', 'test: not on this machine');
    });
    agent = ntlmAgent({ mechanisms: [negotiate, ntlmMechanism(ALICE)] });
    for (let i = 0; i < 2; i++) {
      const r = await upgradeOrResponse(agent, origin.origin);
      expect(r.kind).toBe('upgraded');
      if (r.kind === 'upgraded') sockets.push(r.socket);
    }
    expect(created).toBe(1);
  });

  it("R1: agent.close() while an upgrade's mechanism step runs waits for the upgrade to end, which still gets its socket (close's contract: those it has end first)", async () => {
    origin = await upgradeServer({ ntlm: true });
    const gate = deferred();
    agent = ntlmAgent({ mechanisms: [patchedNtlm({ step: () => gate.promise })] });
    const upgraded = upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    await until(() => origin!.seen.length === 1);
    let closed = false;
    const closing = agent.close().then(() => {
      closed = true;
    });
    await new Promise((r) => setTimeout(r, 50));
    // Before: close resolved at once and the upgrade then failed with undici's ClientDestroyedError.
    expect(closed).toBe(false);
    gate.resolve();
    const { socket } = await upgraded;
    sockets.push(socket as Socket);
    expect(await read(socket as Socket, 20)).toBe('hello EXAMPLE\\alice\n');
    await closing;
    expect(closed).toBe(true);
  });

  it("R1: agent.destroy() while an upgrade's mechanism step runs ends it at once with AgentClosedError; nothing more is written", async () => {
    origin = await upgradeServer({ ntlm: true });
    const gate = deferred();
    agent = ntlmAgent({
      mechanisms: [patchedNtlm({ step: () => gate.promise })],
      limits: { handshakeTimeout: 10_000 },
    });
    try {
      const upgraded = upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' }).then(
        () => undefined,
        (e: Error) => e,
      );
      await until(() => origin!.seen.length === 1);
      const started = Date.now();
      await agent.destroy();
      // Before: undici's ClientDestroyedError, once the step ended.
      expect(await upgraded).toBeInstanceOf(AgentClosedError);
      expect(Date.now() - started).toBeLessThan(1_000);
      expect(origin.seen).toHaveLength(1);
    } finally {
      gate.resolve();
    }
  });

  it('R3: limits.handshakeTimeout bounds an upgrade whose handshake stalls on the server: HandshakeTimeoutError, the connection closed', async () => {
    origin = await upgradeServer({ ntlm: true, stallAt: 1 });
    agent = ntlmAgent({ limits: { handshakeTimeout: 200 } });
    // Before: nothing but undici's 300 s headersTimeout ended it.
    const err = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(HandshakeTimeoutError);
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined, 'stalled']);
    await origin.closed(1);
  });

  it("R3: an upgrade whose verification of the server's final token never ends: HandshakeTimeoutError, and the upgraded socket is closed", async () => {
    origin = await upgradeServer({ ntlm: true });
    const hanging = patchedNtlm({ finish: () => new Promise<void>(() => {}) }); // a GSS-API call that never returns
    agent = ntlmAgent({ mechanisms: [hanging], limits: { handshakeTimeout: 200 } });
    const err = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(HandshakeTimeoutError);
    expect(origin.seen.at(-1)).toMatchObject({ authorization: 'NTLM/3', status: 101 });
    // Before: the upgraded socket, held for the verification, was never closed (nor its Client).
    await origin.closed(1);
  }, 10_000);

  for (const [why, error] of [
    ['is not on this machine', undefined],
    // Before, an upgrade knew only two of the reasons a handshake falls back on (M5).
    ['has an expired Kerberos ticket', () => new KerberosTicketExpiredError('Ticket expired')],
  ] as const) {
    it(`T2/M5: an offered scheme that ${why} is skipped: NTLM is used instead`, async () => {
      origin = await upgradeServer({ ntlm: true, alsoOffer: 'Gone' });
      const gone = unavailableScheme('Gone', error);
      agent = ntlmAgent({ mechanisms: [gone], schemes: ['Gone' as SchemeName, 'NTLM'] });
      const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
      sockets.push(socket as Socket);
      expect(await read(socket as Socket, 20)).toBe('hello EXAMPLE\\alice\n');
      expect(origin.seen.map((s) => s.authorization)).toEqual([undefined, 'NTLM/1', 'NTLM/3']);
    });
  }

  it('T2: when every offered scheme is unusable here, the upgrade fails with the last one’s own reason', async () => {
    origin = await upgradeServer({ ntlm: true, alsoOffer: 'Gone' });
    const gone = unavailableScheme('Gone');
    agent = ntlmAgent({ mechanisms: [gone], schemes: ['Gone' as SchemeName] });
    const err = await upgradeOrResponse(agent, origin.origin).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(MechanismUnavailableError);
    expect(err!.message).toContain('test: not on this machine');
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined]);
  });

  it('T2/R4: deliver401: an upgrade whose offered schemes cannot run here gets the origin’s 401 with its body, sent once, told why on multileg:unanswered; the next one too (remembered), as a request', async () => {
    const events: UnansweredEvent[] = [];
    const listen = (e: unknown) => events.push(e as UnansweredEvent);
    subscribe(UNANSWERED_CHANNEL, listen);
    try {
      origin = await upgradeServer({ ntlm: true, challengeBody: 'sign in first' });
      agent = ntlmAgent({ mechanisms: [unavailableScheme('NTLM')], deliver401: true });
      // Before: MechanismUnavailableError, deliver401 or not.
      expect(await upgradeOrResponse(agent, origin.origin)).toEqual({
        kind: 'response',
        status: 401,
        body: 'sign in first',
      });
      expect(origin.seen.map((s) => [s.authorization, s.status])).toEqual([[undefined, 401]]);
      const why = { scheme: 'NTLM', code: 'MULTILEG_MECHANISM_UNAVAILABLE', message: expect.stringContaining('NTLM') };
      expect(events).toEqual([
        expect.objectContaining({ origin: origin.origin, path: '/ws', schemes: ['NTLM'], unusable: [why] }),
      ]);
      // The origin remembers NTLM cannot run (R4): the next 401 is the caller's as it comes, told why.
      expect(await upgradeOrResponse(agent, origin.origin)).toMatchObject({ status: 401, body: 'sign in first' });
      expect(origin.seen).toHaveLength(2);
      expect(events).toHaveLength(2);
      expect(events[1]).toMatchObject({ path: '/ws', unusable: [{ code: 'MULTILEG_MECHANISM_UNAVAILABLE' }] });
      // undici's WebSocket fails its handshake on it (no socket), as on any 401; each 401 told why
      // (undici's fetch sends the handshake a second time itself).
      const ws = new WebSocket(`${origin.origin.replace('http:', 'ws:')}/ws`, { dispatcher: agent });
      const [closed] = (await once(ws, 'close')) as [{ code: number }];
      expect(closed.code).toBe(1006);
      expect(origin.seen.length).toBeGreaterThan(2);
      expect(events).toHaveLength(origin.seen.length);
    } finally {
      unsubscribe(UNANSWERED_CHANNEL, listen);
    }
  });

  it('T2: without deliver401 an upgrade whose offered schemes cannot run here fails with the typed error, remembered for the next one too (the default)', async () => {
    origin = await upgradeServer({ ntlm: true });
    agent = ntlmAgent({ mechanisms: [unavailableScheme('NTLM')] });
    for (let i = 0; i < 2; i++) {
      const err = await upgradeOrResponse(agent, origin.origin).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err).toBeInstanceOf(MechanismUnavailableError);
    }
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined, undefined]);
  });

  it("S5/T3: an upgrade that undici's redirect interceptor takes to another origin is a cross-origin hop: the agent's client certificate is not presented there (it is to that origin asked directly)", async () => {
    origin = await upgradeServer({ ntlm: false, tls: true, requireClientCertificate: true });
    const target = origin.origin;
    // The first origin redirects the upgrade to the one that wants the certificate.
    const redirecting = createNetServer((socket) => {
      socket.on('error', () => {});
      socket.once('data', () =>
        socket.end(`HTTP/1.1 302 Found\r\nlocation: ${target}/ws\r\ncontent-length: 0\r\n\r\n`),
      );
    });
    await new Promise<void>((r) => redirecting.listen(0, '127.0.0.1', r));
    try {
      agent = new MultilegAgent({
        clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY },
        connect: { ca: CA_CERT },
      });
      const following = agent.compose(interceptors.redirect({ maxRedirections: 2 }));
      const hop = await upgrade(`http://127.0.0.1:${(redirecting.address() as AddressInfo).port}/ws`, {
        dispatcher: following,
        protocol: 'websocket',
      }).then(
        (r) => r,
        (e: Error) => e,
      );
      // Without the certificate the origin refuses the TLS handshake: the hop failed, nothing greeted.
      expect(hop).toBeInstanceOf(Error);
      expect(origin.seen).toEqual([]);
      const { socket } = await upgrade(`${target}/ws`, { dispatcher: following, protocol: 'websocket' });
      sockets.push(socket as Socket);
      expect(await read(socket as Socket, 17)).toBe('hello cert:alice\n');
    } finally {
      await new Promise<void>((r) => redirecting.close(() => r()));
    }
  });

  /** A selector that records what it is asked and gives the test CA's certificate for `origin` (all of them: `'any'`), or none. */
  function recordingSelector(origin: string | 'any' | 'none') {
    const asked: { origin: string; challenge: Challenge; info: CertificateRequestInfo }[] = [];
    const select = (o: string, challenge: Challenge, info: CertificateRequestInfo) => {
      asked.push({ origin: o, challenge, info });
      return origin === 'any' || o === origin ? { cert: CLIENT_CERT, key: CLIENT_KEY } : undefined;
    };
    return { asked, select };
  }

  it("T3: a Transport challenge to an upgrade is answered with the agent's selector, as a request's: told the server's CAs, its certificate presented on a new connection, which upgrades; the origin keeps it for the next upgrade", async () => {
    origin = await upgradeServer({ ntlm: false, tls: true, transport: true });
    const { asked, select } = recordingSelector(origin.origin);
    agent = new MultilegAgent({ clientCertificate: select, connect: { ca: CA_CERT }, proxy: false });
    // Before: the caller got the Transport 401 (undici's upgrade() failed), the selector never asked.
    const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(socket as Socket);
    expect(await read(socket as Socket, 17)).toBe('hello cert:alice\n');
    expect(origin.seen.map((s) => [s.authorization, s.status])).toEqual([
      [undefined, 401],
      [undefined, 101],
    ]);
    expect(origin.seen[1]!.connection).not.toBe(origin.seen[0]!.connection);
    expect(asked).toHaveLength(1);
    expect(asked[0]!.origin).toBe(origin.origin);
    expect(asked[0]!.challenge).toMatchObject({ scheme: 'Transport', params: { mode: 'tls-client-certificate' } });
    expect(asked[0]!.info.acceptableIssuers?.map((n) => n.name)).toEqual([new X509Certificate(CA_CERT).subject]);
    // The next upgrade presents it from the start, as the origin's requests do: no 401, no second ask.
    const again = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(again.socket as Socket);
    expect(await read(again.socket as Socket, 17)).toBe('hello cert:alice\n');
    expect(origin.seen.map((s) => s.status)).toEqual([401, 101, 101]);
    expect(asked).toHaveLength(1);
    // So do its requests (the origin answers a certified plain request 426: no Transport 401 first).
    const res = await agent.request({ origin: origin.origin, path: '/plain', method: 'GET' });
    await res.body.text();
    expect(res.statusCode).toBe(426);
    expect(origin.seen.map((s) => s.status)).toEqual([401, 101, 101, 426]);
    expect(asked).toHaveLength(1);
  });

  it('T3: a certificate given as such, Transport ranked after NTLM (not in the TLS handshake), is presented at an upgrade’s Transport challenge', async () => {
    origin = await upgradeServer({ ntlm: false, tls: true, transport: true });
    agent = new MultilegAgent({
      clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY },
      schemes: ['NTLM', 'Transport'],
      connect: { ca: CA_CERT },
      proxy: false,
    });
    const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(socket as Socket);
    expect(await read(socket as Socket, 17)).toBe('hello cert:alice\n');
    expect(origin.seen.map((s) => s.status)).toEqual([401, 101]);
  });

  it("S1/M1: behind undici's dns interceptor an upgrade's mechanisms are told the name, not the address (the SPN's host, NTLM's target name, negotiate.passwordAllowed)", async () => {
    origin = await upgradeServer({ ntlm: true, tls: true });
    const named = `https://a.corp.test:${origin.port}`;
    const told: string[] = [];
    const ntlm = ntlmMechanism(ALICE);
    agent = ntlmAgent({
      trustedOrigins: [named],
      // (The test certificate names localhost: the name's certificate is taken as checked.)
      connect: { ca: CA_CERT, checkServerIdentity: () => undefined },
      mechanisms: [
        {
          ...ntlm,
          createContext: (leg) => {
            told.push(`${leg.origin} ${leg.hostname}`);
            return ntlm.createContext(leg);
          },
        },
      ],
    });
    const viaDns = agent.compose(
      interceptors.dns({ lookup: (_o, _opts, cb) => cb(null, [{ address: '127.0.0.1', family: 4, ttl: 60_000 }]) }),
    );
    const up = await upgradeOrResponse(viaDns, named);
    expect(up.kind).toBe('upgraded');
    if (up.kind === 'upgraded') sockets.push(up.socket);
    // Before: https://127.0.0.1:PORT 127.0.0.1 (NTLM's target name HTTP/127.0.0.1).
    expect(told).toEqual([`${named} a.corp.test`]);
  });

  it("S1: behind undici's dns interceptor the connection an upgrade opens itself for its next first leg (the challenge's closed) is checked under the name, as undici's are, not the address", async () => {
    // NTLM's first CHALLENGE closes its connection: the handshake starts over on one the upgrade opens.
    origin = await upgradeServer({ ntlm: true, tls: true, closeOnChallenge: 'first' });
    const named = `https://a.corp.test:${origin.port}`;
    const checked: string[] = [];
    agent = ntlmAgent({
      trustedOrigins: [named],
      // Records the name each connection's certificate is checked for (and takes the test certificate for it).
      connect: {
        ca: CA_CERT,
        checkServerIdentity: (host) => {
          checked.push(host);
          return undefined;
        },
      },
    });
    const viaDns = agent.compose(
      interceptors.dns({ lookup: (_o, _opts, cb) => cb(null, [{ address: '127.0.0.1', family: 4, ttl: 60_000 }]) }),
    );
    const up = await upgradeOrResponse(viaDns, named);
    expect(up.kind).toBe('upgraded');
    if (up.kind === 'upgraded') sockets.push(up.socket);
    expect(origin.seen.map((x) => x.connection)).toContain(2);
    // Before: [a.corp.test, 127.0.0.1]: the upgrade's own connection was checked for the address.
    expect(new Set(checked)).toEqual(new Set(['a.corp.test']));
  });

  it("S1/T3: behind undici's dns interceptor an upgrade's selector is asked for the name, and the certificate chosen for one name is not presented to another at that address", async () => {
    origin = await upgradeServer({ ntlm: false, tls: true, transport: true });
    const a = `https://a.test:${origin.port}`;
    const b = `https://b.test:${origin.port}`;
    const { asked, select } = recordingSelector(a);
    // (The test certificate names localhost: the names' certificate is taken as checked.)
    agent = new MultilegAgent({
      clientCertificate: select,
      connect: { ca: CA_CERT, checkServerIdentity: () => undefined },
      proxy: false,
    });
    const viaDns = agent.compose(
      interceptors.dns({ lookup: (_o, _opts, cb) => cb(null, [{ address: '127.0.0.1', family: 4, ttl: 60_000 }]) }),
    );
    // Before: asked for https://127.0.0.1:PORT, the selector declined a.test's own upgrade.
    const atA = await upgradeOrResponse(viaDns, a);
    expect(atA.kind).toBe('upgraded');
    if (atA.kind === 'upgraded') {
      sockets.push(atA.socket);
      expect(await read(atA.socket, 17)).toBe('hello cert:alice\n');
    }
    // b.test, at the same address: asked, declined (before: a.test's certificate presented, 101).
    expect(await upgradeOrResponse(viaDns, b)).toMatchObject({ kind: 'response', status: 401 });
    expect(asked.map((x) => x.origin)).toEqual([a, b]);
  });

  it("T3: a selector that declines an upgrade's Transport challenge leaves the caller the 401, body and all, from the one send", async () => {
    origin = await upgradeServer({ ntlm: false, tls: true, transport: true, challengeBody: 'bring a certificate' });
    const { asked, select } = recordingSelector('none');
    agent = new MultilegAgent({ clientCertificate: select, connect: { ca: CA_CERT }, proxy: false });
    expect(await upgradeOrResponse(agent, origin.origin)).toEqual({
      kind: 'response',
      status: 401,
      body: 'bring a certificate',
    });
    expect(asked).toHaveLength(1);
    expect(origin.seen.map((s) => s.status)).toEqual([401]);
  });

  it('T2/T3: a Transport 401 the selector declines, at an origin where Negotiate cannot run lately, is the caller’s 401 from the one send (as without that memory), not the error of the scheme it does not offer', async () => {
    // /neg offers Negotiate, the rest Transport (Node's https: an upgrade no one takes is a request).
    const server = createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, (req, res) => {
      const offer = req.url?.startsWith('/neg') ? 'Negotiate' : 'Transport mode="tls-client-certificate"';
      res.writeHead(401, { 'www-authenticate': offer }).end('bring a certificate');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const at = `https://localhost:${(server.address() as AddressInfo).port}`;
      const { asked, select } = recordingSelector('none');
      agent = new MultilegAgent({
        credentials: ALICE,
        mechanisms: [unavailableScheme('Negotiate')],
        clientCertificate: select,
        trustedOrigins: [at],
        connect: { ca: CA_CERT },
        proxy: false,
      });
      const to = (path: string) =>
        new Promise<{ status: number; body: string }>((resolve, reject) => {
          let status = 0;
          let body = '';
          agent!.dispatch(
            { origin: at, path, method: 'GET', upgrade: 'websocket' },
            {
              onRequestUpgrade: () => reject(new Error('upgraded')),
              onResponseStart: (_c, st) => {
                status = st;
              },
              onResponseData: (_c, chunk) => {
                body += chunk.toString();
              },
              onResponseEnd: () => resolve({ status, body }),
              onResponseError: (_c, err) => reject(err),
            },
          );
        });
      // Negotiate cannot run here: the origin remembers it a while (R4).
      await expect(to('/neg')).rejects.toBeInstanceOf(MechanismUnavailableError);
      // Before: MechanismUnavailableError ("remembered for this origin") for a 401 that offers no Negotiate.
      expect(await to('/ws')).toEqual({ status: 401, body: 'bring a certificate' });
      expect(asked).toHaveLength(1);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('T3/T2: a selector that declines an upgrade’s Transport challenge, NTLM offered too: NTLM answers it on the same connection (before, the 401 was the caller’s)', async () => {
    origin = await upgradeServer({ ntlm: true, tls: true, transport: true, alsoOffer: 'NTLM' });
    const { asked, select } = recordingSelector('none');
    agent = ntlmAgent({ clientCertificate: select, connect: { ca: CA_CERT } });
    const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(socket as Socket);
    expect(await read(socket as Socket, 20)).toBe('hello EXAMPLE\\alice\n');
    expect(asked).toHaveLength(1);
    expect(origin.seen.map((s) => [s.connection, s.authorization, s.status])).toEqual([
      [1, undefined, 401],
      [1, 'NTLM/1', 401],
      [1, 'NTLM/3', 101],
    ]);
  });

  it('S1/T3: an upgrade to an origin not trusted: its Transport challenge asks no selector, no certificate goes, the 401 is the caller’s', async () => {
    origin = await upgradeServer({ ntlm: false, tls: true, transport: true });
    const { asked, select } = recordingSelector('any');
    agent = new MultilegAgent({
      clientCertificate: select,
      trustedOrigins: ['https://elsewhere.example'],
      connect: { ca: CA_CERT },
      proxy: false,
    });
    expect(await upgradeOrResponse(agent, origin.origin)).toMatchObject({ kind: 'response', status: 401 });
    expect(asked).toEqual([]);
    expect(origin.seen.map((s) => s.status)).toEqual([401]);
  });

  it("S5/T3: an upgrade undici's redirect interceptor takes to another origin asks no selector at that origin's Transport challenge", async () => {
    origin = await upgradeServer({ ntlm: false, tls: true, transport: true });
    const target = origin.origin;
    const redirecting = createNetServer((socket) => {
      socket.on('error', () => {});
      socket.once('data', () =>
        socket.end(`HTTP/1.1 302 Found\r\nlocation: ${target}/ws\r\ncontent-length: 0\r\n\r\n`),
      );
    });
    await new Promise<void>((r) => redirecting.listen(0, '127.0.0.1', r));
    try {
      const { asked, select } = recordingSelector('any');
      agent = new MultilegAgent({ clientCertificate: select, connect: { ca: CA_CERT }, proxy: false });
      const following = agent.compose(interceptors.redirect({ maxRedirections: 2 }));
      const hop = await upgrade(`http://127.0.0.1:${(redirecting.address() as AddressInfo).port}/ws`, {
        dispatcher: following,
        protocol: 'websocket',
      }).then(
        (r) => r,
        (e: Error) => e,
      );
      expect(hop).toBeInstanceOf(Error);
      expect(asked).toEqual([]);
      expect(origin.seen.map((s) => s.status)).toEqual([401]);
      // Asked directly, the same origin is the agent's own: the selector answers its challenge.
      const { socket } = await upgrade(`${target}/ws`, { dispatcher: following, protocol: 'websocket' });
      sockets.push(socket as Socket);
      expect(await read(socket as Socket, 17)).toBe('hello cert:alice\n');
      expect(asked).toHaveLength(1);
    } finally {
      await new Promise<void>((r) => redirecting.close(() => r()));
    }
  });

  it('T3: an upgrade to an origin that requires a client certificate in the TLS handshake presents the configured one', async () => {
    origin = await upgradeServer({ ntlm: false, tls: true, requireClientCertificate: true });
    agent = new MultilegAgent({ clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY }, connect: { ca: CA_CERT } });
    // Before: the TLS handshake failed (no certificate), as for any request before T3's fix.
    const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(socket as Socket);
    expect(await read(socket as Socket, 17)).toBe('hello cert:alice\n');
  });

  for (const maxVersion of ['TLSv1.3', 'TLSv1.2'] as const) {
    it(`T3: an upgrade whose certificate the server refuses (${maxVersion}, a CA it does not accept) fails with ClientCertificateRefusedError, as a request does`, async () => {
      origin = await upgradeServer({ ntlm: false, tls: true, requireClientCertificate: true });
      const fixture = (name: string) => readFileSync(new URL(`./fixtures/issuers/${name}`, import.meta.url), 'utf8');
      agent = new MultilegAgent({
        clientCertificate: { cert: fixture('client-b.pem'), key: fixture('client-b.key') },
        connect: { ca: CA_CERT, maxVersion },
        proxy: false,
      });
      // Before: ConnectionClosedError (TLS 1.3) or Node's bare ECONNRESET (TLS 1.2), untyped.
      const err = await upgradeOrResponse(agent, origin.origin).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err).toBeInstanceOf(ClientCertificateRefusedError);
      expect((err as ClientCertificateRefusedError).code).toBe('MULTILEG_CLIENT_CERTIFICATE_REFUSED');
      expect(err!.message).toContain('given as clientCertificate');
      expect(origin.seen).toEqual([]);
    });
  }

  it("T3: a certificate the selector chose at an upgrade's Transport challenge, refused on the new connection: the selector is asked again at once; given the same one, ClientCertificateRefusedError, and the origin keeps it no longer (the next upgrade asks the selector again)", async () => {
    origin = await upgradeServer({ ntlm: false, tls: true, transport: true, refuseUnverified: true });
    const fixture = (name: string) => readFileSync(new URL(`./fixtures/issuers/${name}`, import.meta.url), 'utf8');
    let asked = 0;
    // CA B's certificate: not one the server's CA (the test CA) verifies.
    const select = () => {
      asked += 1;
      return { cert: fixture('client-b.pem'), key: fixture('client-b.key') };
    };
    agent = new MultilegAgent({ clientCertificate: select, connect: { ca: CA_CERT }, proxy: false });
    for (let i = 1; i <= 2; i++) {
      const err = await upgradeOrResponse(agent, origin.origin).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err).toBeInstanceOf(ClientCertificateRefusedError);
      expect(err!.message).toContain('the selector, asked again, returned the same certificate: return another');
      // Asked at the Transport challenge and again at the refusal. Kept, the next upgrade would have
      // presented it at once, asking nothing (and refused again).
      expect(asked).toBe(2 * i);
    }
    expect(origin.seen.map((s) => s.status)).toEqual([401, 401]);
  });

  it('T3: a certificate the selector chose for an upgrade, refused by the server: the selector is asked again at once, as for a request, and the upgrade goes on a new connection presenting its new one', async () => {
    origin = await upgradeServer({ ntlm: false, tls: true, transport: true, refuseUnverified: true });
    const fixture = (name: string) => readFileSync(new URL(`./fixtures/issuers/${name}`, import.meta.url), 'utf8');
    const asked: (readonly string[] | undefined)[] = [];
    // First CA B's certificate (not one the test CA verifies), then the test CA's: renewed meanwhile.
    const select = (_o: string, _c: Challenge, info: CertificateRequestInfo) => {
      asked.push(info.acceptableIssuers?.map((n) => n.name));
      return asked.length === 1
        ? { cert: fixture('client-b.pem'), key: fixture('client-b.key') }
        : { cert: CLIENT_CERT, key: CLIENT_KEY };
    };
    agent = new MultilegAgent({ clientCertificate: select, connect: { ca: CA_CERT }, proxy: false });
    // Before: ClientCertificateRefusedError, the selector asked once.
    const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(socket as Socket);
    expect(await read(socket as Socket, 17)).toBe('hello cert:alice\n');
    // Told the server's CAs each time.
    expect(asked).toEqual([[new X509Certificate(CA_CERT).subject], [new X509Certificate(CA_CERT).subject]]);
    // The refused connection answered nothing; the new one presented the new certificate.
    expect(origin.seen.map((s) => s.status)).toEqual([401, 101]);
    // The origin's now: the next upgrade presents it at once, asking nothing.
    const next = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(next.socket as Socket);
    expect(asked).toHaveLength(2);
  });

  for (const maxVersion of ['TLSv1.3', 'TLSv1.2'] as const) {
    it(`T3: an upgrade to an origin that requires a client certificate in TLS (${maxVersion}), the agent with a selector: as for a request, the selector is asked with the server's CAs and requiredInHandshake, and the upgrade goes again presenting its choice`, async () => {
      origin = await upgradeServer({ ntlm: false, tls: true, requireClientCertificate: true });
      const { asked, select } = recordingSelector(origin.origin);
      agent = new MultilegAgent({ clientCertificate: select, connect: { ca: CA_CERT, maxVersion }, proxy: false });
      // Before: ConnectionClosedError (TLS 1.3) or Node's bare ECONNRESET (TLS 1.2); the selector never asked.
      const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
      sockets.push(socket as Socket);
      expect(await read(socket as Socket, 17)).toBe('hello cert:alice\n');
      expect(asked).toHaveLength(1);
      expect(asked[0]!.challenge).toMatchObject({ scheme: 'Transport', params: { mode: 'tls-client-certificate' } });
      expect(asked[0]!.info.requiredInHandshake).toBe(true);
      expect(asked[0]!.info.acceptableIssuers?.map((n) => n.name)).toEqual([new X509Certificate(CA_CERT).subject]);
      // The origin's now: the next upgrade presents it at once.
      const again = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
      sockets.push(again.socket as Socket);
      expect(asked).toHaveLength(1);
    });
  }

  it('T3: an upgrade to an origin that requires a client certificate in TLS, the selector declining: ClientCertificateRequiredError naming the server’s CAs, as for a request', async () => {
    origin = await upgradeServer({ ntlm: false, tls: true, requireClientCertificate: true });
    const { asked, select } = recordingSelector('none');
    agent = new MultilegAgent({ clientCertificate: select, connect: { ca: CA_CERT }, proxy: false });
    const err = await upgradeOrResponse(agent, origin.origin).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(ClientCertificateRequiredError);
    expect(err!.message).toContain('the selector returned none');
    expect(asked).toHaveLength(1);
    expect(origin.seen).toEqual([]);
  });

  it('S1/T3: an upgrade to an origin not trusted that requires a client certificate in TLS asks no selector and presents none', async () => {
    origin = await upgradeServer({ ntlm: false, tls: true, requireClientCertificate: true });
    const { asked, select } = recordingSelector('any');
    agent = new MultilegAgent({
      clientCertificate: select,
      trustedOrigins: ['https://elsewhere.example'],
      connect: { ca: CA_CERT },
      proxy: false,
    });
    const err = await upgradeOrResponse(agent, origin.origin).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect(err).not.toBeInstanceOf(ClientCertificateRequiredError);
    expect(asked).toEqual([]);
    expect(origin.seen).toEqual([]);
  });

  it('R3: the first bare 401 to an upgrade whose body never ends is bounded by handshakeTimeout', async () => {
    const stalls = createNetServer((socket) => {
      socket.on('error', () => {});
      socket.once('data', () =>
        socket.write('HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: NTLM\r\nContent-Length: 100\r\n\r\nabc'),
      );
      sockets.push(socket);
    });
    stalls.listen(0, '127.0.0.1');
    await once(stalls, 'listening');
    const at = `http://127.0.0.1:${(stalls.address() as AddressInfo).port}`;
    try {
      agent = new MultilegAgent({
        credentials: ALICE,
        trustedOrigins: [at],
        negotiate: false,
        proxy: false,
        limits: { handshakeTimeout: 300 },
      });
      // Before: it waited for undici's body timeout (300 s).
      const err = await upgrade(`${at}/ws`, { dispatcher: agent, protocol: 'websocket' }).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err).toBeInstanceOf(HandshakeTimeoutError);
      expect(err!.message).toMatch(/a 401 body that never ended/);
    } finally {
      stalls.close();
    }
  });

  it("R1: the agent's headersTimeout bounds an upgrade whose answer never comes (its own connection, not a session's)", async () => {
    const silent = createNetServer((socket) => {
      socket.on('error', () => {});
      sockets.push(socket); // reads the request, never answers
    });
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    const at = `http://127.0.0.1:${(silent.address() as AddressInfo).port}`;
    try {
      agent = new MultilegAgent({ trustedOrigins: [at], negotiate: false, proxy: false, headersTimeout: 200 });
      // Without it: undici's 300 s.
      const err = await upgrade(`${at}/ws`, { dispatcher: agent, protocol: 'websocket' }).then(
        () => undefined,
        (e: Error) => e,
      );
      expect((err as { code?: string } | undefined)?.code).toBe('UND_ERR_HEADERS_TIMEOUT');
    } finally {
      silent.close();
    }
  });

  it("S6: an upgrade that brings its own Proxy-Authorization (no proxy here) gets none of the agent's credentials: the caller sees the 401", async () => {
    origin = await upgradeServer({ ntlm: true });
    agent = ntlmAgent();
    const got = await upgradeOrResponse(agent, origin.origin, { 'proxy-authorization': 'Basic eDp5' });
    if (got.kind === 'upgraded') sockets.push(got.socket);
    // Before: the agent answered the origin's NTLM with alice's password and upgraded.
    expect(got.kind === 'response' && got.status).toBe(401);
    expect(origin.seen.map((e) => e.authorization)).toEqual([undefined]);
  });

  it('C11: an upgrade handshake that needs more legs than limits.maxLegs ends with LegLimitError', async () => {
    origin = await upgradeServer({ ntlm: true });
    agent = ntlmAgent({ limits: { maxLegs: 1 } });
    const err = await upgradeOrResponse(agent, origin.origin).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(LegLimitError);
    expect(err!.message).toContain('NTLM (upgrade)');
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined, 'NTLM/1']);
  });

  it('S3: a mechanism that rejects the origin’s token with a typed error fails the upgrade with that error', async () => {
    origin = await upgradeServer({ ntlm: true });
    const rejecting = patchedNtlm({
      step: (challenge) => {
        if (challenge?.token68 !== undefined) throw new InvalidTokenError('NTLM challenge from the test origin');
      },
    });
    agent = ntlmAgent({ mechanisms: [rejecting] });
    const err = await upgradeOrResponse(agent, origin.origin).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(InvalidTokenError);
    expect(err!.message).toContain('NTLM challenge from the test origin');
  });

  it('S3: a mechanism whose first token fails with its own exception: InvalidTokenError, not that exception', async () => {
    origin = await upgradeServer({ ntlm: true });
    const broken = testNtlm({
      step: async () => {
        throw new TypeError('mechanism internals');
      },
    });
    agent = ntlmAgent({ mechanisms: [broken] });
    const err = await upgradeOrResponse(agent, origin.origin).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(InvalidTokenError);
    expect(err!.message).not.toContain('mechanism internals');
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined]);
  });

  it('R1: a caller that aborts while its upgrade’s connection is still being made: its error, and nothing is sent', async () => {
    // TLS, so that nothing can be written before the held connection comes up.
    origin = await upgradeServer({ ntlm: false, tls: true });
    relay = await slowRelayTo(origin.port, 300);
    agent = new MultilegAgent({ proxy: false, connect: { ca: CA_CERT } });
    const outcome = new Promise<string>((resolve) => {
      agent!.dispatch(
        { origin: `https://localhost:${relay!.port}`, path: '/ws', method: 'GET', upgrade: 'websocket' },
        {
          onRequestStart: (c) => {
            // Abort once the connection attempt has begun (the relay holds it).
            const timer = setInterval(() => {
              if (relay!.connections === 0) return;
              clearInterval(timer);
              c.abort(new Error('changed my mind'));
            }, 5);
          },
          onRequestUpgrade: () => resolve('upgraded'),
          onResponseStart: () => resolve('response'),
          onResponseError: (_c, err) => resolve(`error ${err.message}`),
        },
      );
    });
    expect(await outcome).toBe('error changed my mind');
    // The connection does come up after the hold; the request must not go out on it.
    await new Promise((r) => setTimeout(r, 600));
    expect(origin.seen).toEqual([]);
  });

  it.each([
    ['http', 80],
    ['https', 443],
  ] as const)(
    'H5: an upgrade to a %s origin on its default port is CONNECTed as host:%i, and its legs know the port',
    async (scheme, port) => {
      origin = await upgradeServer({ ntlm: true, tls: scheme === 'https' });
      relay = await relayTo(origin.port);
      const ports: number[] = [];
      const recording = recordingPorts(ntlmMechanism(ALICE), ports);
      agent = ntlmAgent({
        trustedOrigins: [`${scheme}://localhost`],
        connect: { ca: CA_CERT },
        mechanisms: [recording],
        proxy: `http://127.0.0.1:${relay.port}`,
      });
      const { socket } = await upgrade(`${scheme}://localhost/ws`, { dispatcher: agent, protocol: 'websocket' });
      sockets.push(socket as Socket);
      expect(await read(socket as Socket, 20)).toBe('hello EXAMPLE\\alice\n');
      expect(relay.received[0]).toMatch(new RegExp(`^CONNECT localhost:${port} HTTP/1\\.1\r\n`));
      expect(ports).toEqual([port]);
    },
  );

  it('a caller that aborts as its upgrade request starts gets its own error; nothing is sent', async () => {
    origin = await upgradeServer({ ntlm: true });
    agent = ntlmAgent();
    const reason = new Error('changed my mind');
    const seen: string[] = [];
    agent.dispatch(
      { origin: origin.origin, path: '/ws', method: 'GET', upgrade: 'websocket' },
      {
        onRequestStart: (c) => c.abort(reason),
        onRequestUpgrade: () => seen.push('upgrade'),
        onResponseStart: () => seen.push('response'),
        onResponseError: (_c, err) => seen.push(`error ${err.message}`),
      },
    );
    await new Promise((r) => setTimeout(r, 100));
    expect(seen).toEqual(['error changed my mind']);
    expect(origin.seen).toEqual([]);
  });

  it('M4: an upgrade challenged with Basic over cleartext http (the only scheme allowed) fails with BasicOverHttpError, the password unsent', async () => {
    origin = await upgradeServer({ ntlm: true, alsoOffer: 'Basic realm="ws"' });
    agent = ntlmAgent({ schemes: ['Basic'] });
    const err = await upgradeOrResponse(agent, origin.origin).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(BasicOverHttpError);
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined]);
  });

  it('S4/M4: an upgrade over https whose certificate was not verified (rejectUnauthorized: false), challenged with Basic only: BasicOverHttpError naming the certificate error, the password unsent; NTLM offered beside it answers instead; allowBasicOverHttp: true sends it', async () => {
    origin = await upgradeServer({ ntlm: true, tls: true, alsoOffer: 'Basic realm="ws"' });
    const insecure = { connect: { rejectUnauthorized: false } };
    agent = ntlmAgent({ ...insecure, schemes: ['Basic'] });
    const err = await upgradeOrResponse(agent, origin.origin).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(BasicOverHttpError);
    expect((err as BasicOverHttpError).certificateError).toMatch(/^[A-Z_]+$/);
    expect(err!.message).toContain(
      `refusing to send a Basic password to ${origin.origin}: its certificate was not verified`,
    );
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined]);

    await agent.destroy();
    origin.seen.length = 0;
    agent = ntlmAgent({ ...insecure, schemes: ['Basic', 'NTLM'] });
    const upgraded = await upgradeOrResponse(agent, origin.origin);
    expect(upgraded.kind).toBe('upgraded');
    if (upgraded.kind === 'upgraded') sockets.push(upgraded.socket);
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined, 'NTLM/1', 'NTLM/3']);

    await agent.destroy();
    origin.seen.length = 0;
    agent = ntlmAgent({ ...insecure, schemes: ['Basic'], allowBasicOverHttp: true });
    // (This origin takes NTLM only: its answer to the Basic password is a 401.)
    expect(await upgradeOrResponse(agent, origin.origin)).toMatchObject({ kind: 'response', status: 401 });
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined, 'Basic']);
  });

  it('R1: an upgrade to a port nobody listens on fails with the connect error', async () => {
    origin = await upgradeServer({ ntlm: false });
    const dead = origin.origin;
    await origin.close();
    origin = undefined;
    agent = new MultilegAgent({ proxy: false });
    const err = await upgradeOrResponse(agent, dead).then(
      () => undefined,
      (e: Error & { code?: string }) => e,
    );
    expect((err as { code?: string })?.code).toBe('ECONNREFUSED');
  });

  it('S1: an upgrade to an origin that is not trusted gets no credentials: the 401 is the caller’s', async () => {
    // (https: an untrusted http: origin is S4's CleartextCredentialsError, below.)
    origin = await upgradeServer({ ntlm: true, tls: true });
    agent = ntlmAgent({ trustedOrigins: ['https://elsewhere.example'], connect: { ca: CA_CERT } });
    const r = await upgradeOrResponse(agent, origin.origin);
    expect(r).toMatchObject({ kind: 'response', status: 401 });
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined]);
  });

  it('S4: an upgrade to an http: origin not trusted explicitly, challenged with a scheme the agent could answer: CleartextCredentialsError naming the origin, as for a request; nothing sent', async () => {
    origin = await upgradeServer({ ntlm: true });
    agent = ntlmAgent({ trustedOrigins: ['https://elsewhere.example'] });
    // Before: the bare 401 was the caller's, with no word of why (a request got CleartextCredentialsError).
    const err = await upgradeOrResponse(agent, origin.origin).then(
      (r) => r,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(CleartextCredentialsError);
    expect((err as Error).message).toContain(origin.origin);
    expect(origin.seen.map((s) => [s.authorization, s.status])).toEqual([[undefined, 401]]);
  });

  it("S4: CleartextCredentialsError names the origin on an upgrade: the http:// origin's, and with an address dialled and the name in Host (undici's dns interceptor's shape) the name, its message naming the address too", async () => {
    origin = await upgradeServer({ ntlm: true });
    const address = origin.origin.replace('localhost', '127.0.0.1');
    agent = ntlmAgent({ trustedOrigins: [address] });
    const refused = (target: string, headers?: Record<string, string>) =>
      upgradeOrResponse(agent!, target, headers).then(
        (r) => r,
        (e: Error) => e as CleartextCredentialsError,
      );
    const direct = await refused(origin.origin);
    expect(direct).toBeInstanceOf(CleartextCredentialsError);
    expect((direct as CleartextCredentialsError).origin).toBe(origin.origin);
    const named = await refused(address, { host: `localhost:${origin.port}` });
    expect(named).toBeInstanceOf(CleartextCredentialsError);
    expect((named as CleartextCredentialsError).origin).toBe(origin.origin);
    expect((named as Error).message).toContain(`trustedOrigins: ['${origin.origin}', '${address}']`);
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined, undefined]);
  });

  it('S4: a ws:// WebSocket (undici sends it as http:) to an origin not trusted explicitly: its error carries CleartextCredentialsError; nothing sent, no socket', async () => {
    origin = await upgradeServer({ ntlm: true });
    agent = ntlmAgent({ trustedOrigins: ['https://elsewhere.example'] });
    // undici's WebSocket keeps no cause in its ErrorEvent: the agent's error is seen where undici gets it.
    const errors: Error[] = [];
    const dispatch = agent.dispatch.bind(agent);
    agent.dispatch = (opts, handler) =>
      dispatch(
        opts,
        new Proxy(handler, {
          get: (target, key) =>
            key === 'onResponseError'
              ? (c: Dispatcher.DispatchController, err: Error) => {
                  errors.push(err);
                  target.onResponseError?.(c, err);
                }
              : Reflect.get(target, key),
        }),
      );
    const ws = new WebSocket(`ws://localhost:${origin.port}/ws`, { dispatcher: agent });
    const event = await new Promise<unknown>((resolve) => {
      ws.onerror = resolve;
      ws.onopen = () => resolve('open');
    });
    expect(event).toMatchObject({ type: 'error' });
    expect(errors.length).toBeGreaterThan(0);
    for (const err of errors) expect(err).toBeInstanceOf(CleartextCredentialsError);
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined]);
  });

  it("H1/S4: undici's WebSocket through the agent to a ws:// origin trusted explicitly: NTLM on one connection, then open with the 101's headers (Upgrade, Sec-WebSocket-Accept) and its first message", async () => {
    origin = await upgradeServer({ ntlm: true });
    agent = ntlmAgent();
    // Before: every WebSocket through the agent failed (1006), authenticated or not: its 101 reached
    // fetch with no raw headers, read as none ("Server did not set Upgrade header").
    const ws = new WebSocket(`ws://localhost:${origin.port}/ws`, { dispatcher: agent });
    const event = await new Promise<unknown>((resolve) => {
      ws.onerror = resolve;
      ws.onmessage = (m) => resolve(m.data);
    });
    ws.close();
    expect(event).toBe('hello EXAMPLE\\alice\n');
    expect(origin.seen.map((s) => [s.connection, s.authorization, s.status])).toEqual([
      [1, undefined, 401],
      [1, 'NTLM/1', 401],
      [1, 'NTLM/3', 101],
    ]);
  });

  it("undici's WebSocket through the agent to an origin that does not challenge opens (no credentials)", async () => {
    origin = await upgradeServer({ ntlm: false });
    agent = new MultilegAgent({ proxy: false });
    const ws = new WebSocket(`ws://localhost:${origin.port}/ws`, { dispatcher: agent });
    const event = await new Promise<unknown>((resolve) => {
      ws.onerror = resolve;
      ws.onmessage = (m) => resolve(m.data);
    });
    ws.close();
    expect(event).toBe('hello anonymous\n');
  });

  it('H5: an upgrade goes through the configured proxy: CONNECT with Basic proxy authentication, then NTLM to the origin inside the tunnel', async () => {
    origin = await upgradeServer({ ntlm: true });
    proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    agent = ntlmAgent({
      proxy: {
        uri: proxy.origin,
        connect: { ca: proxy.ca },
        credentials: { username: 'proxyuser', password: 'proxypw' },
      },
    });
    const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(socket as Socket);
    expect(await read(socket as Socket, 20)).toBe('hello EXAMPLE\\alice\n');
    expect(proxy.exchanges.map((e) => [e.method, e.target, e.status, e.proxyAuthorization])).toEqual([
      ['CONNECT', `localhost:${origin.port}`, 407, false],
      ['CONNECT', `localhost:${origin.port}`, 200, true],
    ]);
    // The origin's credentials never went to the proxy, and all legs used the one tunnel.
    expect(proxy.exchanges.every((e) => !e.authorization)).toBe(true);
    expect(origin.seen.map((s) => [s.connection, s.authorization])).toEqual([
      [1, undefined],
      [1, 'NTLM/1'],
      [1, 'NTLM/3'],
    ]);
  });

  it('H5/H1/M1: a TLS (wss-style) upgrade through the proxy tunnel, NTLM with channel bindings of the origin’s certificate', async () => {
    origin = await upgradeServer({ ntlm: true, tls: true });
    proxy = await startReferenceProxy({});
    agent = ntlmAgent({ connect: { ca: CA_CERT }, proxy: { uri: proxy.origin, connect: { ca: proxy.ca } } });
    const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(socket as Socket);
    // The acceptor checks the binding: a wrong or missing one would have been rejected with a 401.
    expect(await read(socket as Socket, 20)).toBe('hello EXAMPLE\\alice\n');
    expect(proxy.exchanges.map((e) => [e.method, e.target, e.status])).toEqual([
      ['CONNECT', `localhost:${origin.port}`, 200],
    ]);
    expect(origin.seen.map((s) => [s.connection, s.authorization, s.status])).toEqual([
      [1, undefined, 401],
      [1, 'NTLM/1', 401],
      [1, 'NTLM/3', 101],
    ]);
  });

  it('H5: a wrong proxy password on an upgrade is a ProxyAuthenticationError, not a direct connection', async () => {
    origin = await upgradeServer({ ntlm: false });
    proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    agent = ntlmAgent({
      proxy: { uri: proxy.origin, connect: { ca: proxy.ca }, credentials: { username: 'proxyuser', password: 'x' } },
    });
    const err = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect(origin.seen).toEqual([]);
  });

  it('H5: a CONNECT request (undici connect()) goes through the proxy tunnel; a 401 to it is the caller’s', async () => {
    origin = await upgradeServer({ ntlm: false });
    proxy = await startReferenceProxy({});
    agent = ntlmAgent({ proxy: { uri: proxy.origin, connect: { ca: proxy.ca } } });
    const ok = await connect(`${origin.origin}/`, { dispatcher: agent });
    sockets.push(ok.socket as Socket);
    expect(ok.statusCode).toBe(200);
    expect(await read(ok.socket as Socket, 16)).toBe('hello anonymous\n');
    expect(proxy.exchanges.map((e) => [e.method, e.target, e.status])).toEqual([
      ['CONNECT', `localhost:${origin.port}`, 200],
    ]);
    // undici ends HTTP on a connection at any answer to CONNECT, so a challenge cannot get a next leg there.
    await origin.close();
    origin = await upgradeServer({ ntlm: true });
    await agent.destroy().catch(() => {});
    agent = ntlmAgent({ proxy: { uri: proxy.origin, connect: { ca: proxy.ca } } });
    const challenged = await connect(`${origin.origin}/`, { dispatcher: agent });
    sockets.push(challenged.socket as Socket);
    expect(challenged.statusCode).toBe(401);
    expect(origin.seen.map((s) => [s.method, s.authorization, s.status])).toEqual([['CONNECT', undefined, 401]]);
  });

  it('H5: a proxy from the environment (HTTP_PROXY for an http: target) carries upgrades too', async () => {
    origin = await upgradeServer({ ntlm: false });
    proxy = await startReferenceProxy({});
    const before = { ...process.env };
    // The resolver reads the environment when the agent is created.
    process.env.HTTP_PROXY = proxy.origin;
    delete process.env.NO_PROXY;
    delete process.env.no_proxy;
    try {
      agent = new MultilegAgent({ proxy: { connect: { ca: proxy.ca } } });
    } finally {
      for (const k of ['HTTP_PROXY']) {
        if (before[k] === undefined) delete process.env[k];
        else process.env[k] = before[k];
      }
      if (before.NO_PROXY !== undefined) process.env.NO_PROXY = before.NO_PROXY;
      if (before.no_proxy !== undefined) process.env.no_proxy = before.no_proxy;
    }
    const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
    sockets.push(socket as Socket);
    expect(await read(socket as Socket, 16)).toBe('hello anonymous\n');
    expect(proxy.exchanges.map((e) => [e.method, e.status])).toEqual([['CONNECT', 200]]);
  });
});

describe('an upgrade while the refusal memory is asked (R1/R4)', () => {
  /** An upgrade with `signal` that settles with its socket, the response the caller got, or the error. */
  const settled = (a: MultilegAgent, url: string, signal?: AbortSignal) =>
    upgrade(url, { dispatcher: a, protocol: 'websocket', ...(signal ? { signal } : {}) }).then(
      ({ socket }) => {
        sockets.push(socket as Socket);
        return 'upgraded';
      },
      (e: Error) => e,
    );

  it("R1/R4: at the origin (its NTLM 401): the caller's abort while the recall waits ends the upgrade at once with its reason; the recall is told (its signal aborted) and released, no password sent", async () => {
    origin = await upgradeServer({ ntlm: true });
    const held = waitingRefusalMemory();
    const a = ntlmAgent({ refusalMemory: held.memory, limits: { queueTimeout: 30_000 } });
    agent = a;
    const url = `${origin.origin}/ws`;
    const { settled: result, reason } = await abortedWhileRecalling(held, (signal) => settled(a, url, signal));
    expect(result).toBe(reason);
    expect(held.signals[0]!.aborted).toBe(true);
    await until(() => held.released.length === 1);
    expect(held.released[0]).toMatchObject({ origin: origin.origin, proxy: false });
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined]);
  });

  it('R1/R4: at the origin: limits.queueTimeout bounds the recall: the upgrade goes without the password and the caller gets the origin’s 401 — the one that asked, the upgrade sent once, said why (recall-timeout) — as a request does; the recall told and released', async () => {
    origin = await upgradeServer({ ntlm: true });
    const held = waitingRefusalMemory();
    agent = ntlmAgent({ refusalMemory: held.memory, limits: { queueTimeout: 150 } });
    const events: WithheldEvent[] = [];
    const listen = (e: unknown) => events.push(e as WithheldEvent);
    subscribe(WITHHELD_CHANNEL, listen);
    let r: Awaited<ReturnType<typeof upgradeOrResponse>>;
    try {
      r = await upgradeOrResponse(agent, origin.origin);
    } finally {
      unsubscribe(WITHHELD_CHANNEL, listen);
    }
    expect(r).toMatchObject({ kind: 'response', status: 401 });
    expect(held.signals).toHaveLength(1);
    expect(held.signals[0]!.aborted).toBe(true);
    await until(() => held.released.length === 1);
    // Before: the held 401 was dropped and the upgrade went again bare for another.
    expect(origin.seen.map((s) => s.authorization)).toEqual([undefined]);
    expect(events).toEqual([
      expect.objectContaining({ path: '/ws', reason: 'recall-timeout', queueTimeout: 150, schemes: ['NTLM'] }),
    ]);
  });

  /** An agent whose upgrades tunnel through a Basic proxy (the reference proxy) with proxy credentials and `memory`. */
  const throughProxy = async (memory: RefusalMemory, queueTimeout: number) => {
    origin = await upgradeServer({ ntlm: false });
    proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    return ntlmAgent({
      refusalMemory: memory,
      limits: { queueTimeout },
      proxy: {
        uri: proxy.origin,
        connect: { ca: proxy.ca },
        credentials: { username: 'proxyuser', password: 'proxypw' },
      },
    });
  };

  it("R1/R4: through a proxy (its CONNECT's 407): the caller's abort while the recall waits ends the upgrade at once with its reason, and the recall is told (its signal aborted) and released, no proxy password sent", async () => {
    const held = waitingRefusalMemory();
    agent = await throughProxy(held.memory, 30_000);
    const caller = new AbortController();
    const pending = settled(agent, `${origin!.origin}/ws`, caller.signal);
    await until(() => held.signals.length === 1);
    const reason = new Error('caller gone');
    const abortedAt = Date.now();
    caller.abort(reason);
    expect(await pending).toBe(reason);
    // Before: the CONNECT went on without the upgrade, its recall waiting until queueTimeout (30 s).
    await until(() => held.signals[0]!.aborted);
    expect(held.signals[0]!.aborted).toBe(true);
    expect(Date.now() - abortedAt).toBeLessThan(2_000);
    await until(() => held.released.length === 1);
    expect(held.released[0]).toMatchObject({ origin: proxy!.origin, proxy: true });
    expect(proxy!.exchanges.map((e) => [e.method, e.status, e.proxyAuthorization])).toEqual([['CONNECT', 407, false]]);
    expect(origin!.seen).toEqual([]);
  });

  it('R1/R4: through a proxy: limits.queueTimeout bounds the recall: a ProxyAuthenticationError saying the refusal memory did not answer (nothing refused), the recall told and released', async () => {
    const held = waitingRefusalMemory();
    agent = await throughProxy(held.memory, 150);
    const err = await settled(agent, `${origin!.origin}/ws`);
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect(err).toMatchObject({ refused: false });
    expect((err as Error).message).toMatch(/were not sent: the refusal memory did not answer within 150 ms/);
    expect(held.signals).toHaveLength(1);
    expect(held.signals[0]!.aborted).toBe(true);
    await until(() => held.released.length === 1);
    expect(origin!.seen).toEqual([]);
  });

  it("R4: past 64 origins the pool of an origin an upgrade still runs for is not swept: a request there meanwhile shares the upgrade's proof of the password (one handshake at a time until proved), and, woken as the next probe when the upgrade's ended unproved, asks the refusal memory too", async () => {
    origin = await upgradeServer({ ntlm: true });
    const held = waitingRefusalMemory();
    // At each recall: whether every earlier one had ended by then.
    const afterOthers: boolean[] = [];
    const memory: RefusalMemory = {
      ...held.memory,
      recall: (place, signal) => {
        afterOthers.push(held.signals.every((s) => s.aborted));
        return held.memory.recall(place, signal);
      },
    };
    const a = ntlmAgent({ refusalMemory: memory, limits: { queueTimeout: 30_000 } });
    agent = a;
    const upgrader = new AbortController();
    const upgrading = settled(a, `${origin.origin}/ws`, upgrader.signal);
    await until(() => held.signals.length === 1);
    // 64 other origins, each closing its connection after answering: the 65th pool sweeps the idle ones.
    const others: HttpServer[] = [];
    try {
      for (let i = 0; i < 64; i++) {
        const o = createHttpServer((_req, res) => res.writeHead(204, { connection: 'close' }).end());
        await new Promise<void>((r) => o.listen(0, '127.0.0.1', r));
        others.push(o);
        const res = await request(`http://127.0.0.1:${(o.address() as AddressInfo).port}/`, { dispatcher: a });
        await res.body.arrayBuffer();
        expect(res.statusCode).toBe(204);
      }
    } finally {
      await Promise.all(others.map((o) => new Promise((r) => o.close(r))));
    }
    const requester = new AbortController();
    const requesting = request(`${origin.origin}/after`, { dispatcher: a, signal: requester.signal }).catch(
      (e: Error) => e,
    );
    // Its 401 (the server answered it), and a moment for a recall of its own, which it must not make.
    await until(() => origin!.seen.length === 2);
    await new Promise((r) => setTimeout(r, 100));
    upgrader.abort(new Error('upgrade given up'));
    expect(await upgrading).toBeInstanceOf(Error);
    // Woken as the next probe, the request asks the memory before the password goes.
    await until(() => held.signals.length === 2);
    requester.abort(new Error('request given up'));
    expect(await requesting).toBeInstanceOf(Error);
    // Before: [true, false] — the upgrade's origin was swept while its recall waited, and the
    // request made a pool and a proof of its own, asking beside the upgrade's handshake; and, the
    // proof shared, woken as the next probe it sent the password unasked (one recall, NTLM legs).
    expect(afterOthers).toEqual([true, true]);
    expect(origin.seen.map((x) => x.authorization?.split(' ')[0])).toEqual([undefined, undefined]);
  });

  it("R4: behind undici's dns interceptor an upgrade shares the name's proof of the password too: a wrong password refused at the address an upgrade dialled is held back at the name (the refusal memory told the name, not the address)", async () => {
    origin = await upgradeServer({ ntlm: true });
    const { port } = new URL(origin.origin);
    const held = answeringRefusalMemory(false);
    // Over http both the address and the name must be trusted (review r50).
    agent = ntlmAgent({
      credentials: { username: 'EXAMPLE\\alice', password: 'wrong' },
      trustedOrigins: [origin.origin, `http://127.0.0.1:${port}`],
      refusalMemory: held.memory,
    });
    const viaDns = agent.compose(
      interceptors.dns({
        lookup: (_origin, _opts, cb) => cb(null, [{ address: '127.0.0.1', family: 4 as const, ttl: 60_000 }]),
      }),
    );
    expect(await upgradeOrResponse(viaDns, origin.origin)).toEqual({
      kind: 'response',
      status: 401,
      body: 'who are you?',
    });
    expect(origin.seen.filter((s) => s.authorization === 'NTLM/3')).toHaveLength(1);
    // The name's own pool (made after the address's) holds the refused password back.
    expect(await upgradeOrResponse(agent, origin.origin)).toEqual({
      kind: 'response',
      status: 401,
      body: 'who are you?',
    });
    // Before: 2 — the upgrade's pool had a proof of its own, not the name's; and the memory heard of the address.
    expect(origin.seen.filter((s) => s.authorization === 'NTLM/3')).toHaveLength(1);
    expect(new Set(held.recalled.map((p) => p.origin))).toEqual(new Set([origin.origin]));
  });
});
