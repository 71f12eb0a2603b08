/**
 * Origins that end connections or streams in the middle of an NTLM handshake, or answer it with a
 * server error: the requests behind it must end as the server would have them end, not with a 401
 * the server never meant for them (H1, R2, R4). And a draft server that finds its contexts by the
 * Auth-ID of its very first 401 (C3). Found by robustness and conformance reviews.
 */
import { createSecureServer, type Http2ServerRequest, type Http2ServerResponse, constants as h2 } from 'node:http2';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import { type Dispatcher, fetch } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { MechanismUnavailableError } from '../src/index.ts';
import { NtlmAcceptor } from '../src/mechanisms/ntlm/acceptor.ts';
import { startReferenceServer } from '../src/reference-server/index.ts';
import { SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { ntlmMessageType, parseAuthorization } from '../src/reference-server/wire.ts';
import { MAX_WAITS } from '../src/session/exchange.ts';
import { loopbackOrigin, ntlmAgentAt, ntlmLeg, SCRIPTED_NTLM_CHALLENGE } from './helpers.ts';

const closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close().catch(() => {});
});

/** An HTTP/2-only origin: NTLM authenticates the session; `onAuthenticate` answers each AUTHENTICATE leg, `open` paths need none. */
async function h2Origin(
  onAuthenticate: (res: Http2ServerResponse, req: Http2ServerRequest, n: number) => boolean,
  open?: { readonly prefix: string; readonly status: number },
) {
  const authenticated = new WeakSet<object>();
  let authenticates = 0;
  const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: false });
  server.on('request', (req, res) => {
    req.resume();
    res.on('error', () => {});
    const session = req.stream.session!;
    if (open && req.url.startsWith(open.prefix)) return void res.writeHead(open.status).end('open');
    const leg = ntlmLeg(req.headers.authorization);
    if (leg === 0 && !authenticated.has(session)) return void res.writeHead(401, { 'www-authenticate': 'NTLM' }).end();
    if (leg === 1) return void res.writeHead(401, { 'www-authenticate': `NTLM ${SCRIPTED_NTLM_CHALLENGE}` }).end();
    // onAuthenticate answers it itself (true), or the session is authenticated and gets a 200.
    if (leg === 3 && onAuthenticate(res, req, ++authenticates)) return;
    if (leg === 3) authenticated.add(session);
    res.writeHead(200).end(`ok ${req.url}`);
  });
  const sessions = new Set<{ destroy(): void }>();
  server.on('session', (session) => sessions.add(session));
  const origin = await loopbackOrigin(server, closers);
  /** Ends every session (a server restart): the agent's next requests open a new one, the scheme remembered. */
  const endSessions = async () => {
    for (const session of sessions) session.destroy();
    sessions.clear();
    await new Promise((resolve) => setTimeout(resolve, 50));
  };
  return { origin, endSessions };
}

/** `n` requests dispatched at once; each resolves with its status, or its error's code. */
function dispatchMany(agent: Dispatcher, origin: string, n: number, prefix = '/r'): Promise<Array<number | string>> {
  return Promise.all(
    Array.from(
      { length: n },
      (_, i) =>
        new Promise<number | string>((resolve) => {
          let status = 0;
          agent.dispatch(
            { origin, path: `${prefix}/${i}`, method: 'GET' },
            {
              onRequestStart() {},
              onResponseStart(_c, s) {
                status = s;
              },
              onResponseData() {},
              onResponseEnd: () => resolve(status),
              onResponseError: (_c, err) => resolve((err as { code?: string }).code ?? err.name),
            },
          );
        }),
    ),
  );
}

describe('a final answer to the NTLM NEGOTIATE (review r50)', () => {
  it("C6/S6: a 200 to the NEGOTIATE (with Persistent-Auth: true, a token, or neither) authenticates no one: no handshake succeeds, no identity is proved, the session is not taken as alice's", async () => {
    for (const variant of ['none', 'persistent', 'token'] as const) {
      const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: false });
      server.on('request', (req, res) => {
        req.resume();
        if (!req.headers.authorization) return void res.writeHead(401, { 'www-authenticate': 'NTLM' }).end();
        const headers: Record<string, string> = variant === 'none' ? {} : { 'persistent-auth': 'true' };
        if (variant === 'token') headers['www-authenticate'] = `NTLM ${SCRIPTED_NTLM_CHALLENGE}`;
        res.writeHead(200, headers).end('let through');
      });
      const origin = await loopbackOrigin(server, closers);
      const agent = ntlmAgentAt(origin, closers);
      for (const path of ['/a', '/b']) {
        const res = await fetch(`${origin}${path}`, { dispatcher: agent });
        expect([res.status, await res.text()]).toEqual([200, 'let through']);
      }
      // Before: reported a session-mode success as EXAMPLE\\alice after one leg (the password never went).
      expect(agent.handshakes().filter((h) => h.outcome !== 'failed')).toEqual([]);
      expect(agent.handshakes().some((h) => h.identity !== undefined)).toBe(false);
      await agent.destroy();
    }
  });
});

describe('HTTP/1.1: a 401 whose connection closes before it is answered', () => {
  for (const how of ['Connection: close', 'a body over limits.maxChallengeBodyBytes'] as const) {
    it(`H1: a bare 401 that ends its connection (${how}) is answered on the next one, not met again bare`, async () => {
      let bare = 0;
      const server = createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, (req, res) => {
        req.resume();
        const socket = req.socket as Socket & { authenticated?: boolean };
        const leg = ntlmLeg(req.headers.authorization);
        if (leg === 1) return void res.writeHead(401, { 'www-authenticate': `NTLM ${SCRIPTED_NTLM_CHALLENGE}` }).end();
        if (leg === 3 || socket.authenticated) {
          socket.authenticated = true;
          return void res.writeHead(200).end('ok');
        }
        bare += 1;
        if (how === 'Connection: close') res.writeHead(401, { 'www-authenticate': 'NTLM', connection: 'close' }).end();
        else res.writeHead(401, { 'www-authenticate': 'NTLM' }).end(Buffer.alloc(256 * 1024, 'x'));
      });
      const origin = await loopbackOrigin(server, closers);
      // Basic too, never offered here: with NTLM alone NEGOTIATE would go on the first request, not bare.
      const agent = ntlmAgentAt(origin, closers, {
        limits: { maxChallengeBodyBytes: 1024 },
        schemes: ['NTLM', 'Basic'],
      });
      const res = await fetch(`${origin}/x`, { dispatcher: agent });
      expect(res.status).toBe(200);
      await res.arrayBuffer();
      expect(bare).toBe(1);
      expect(agent.handshakes().map((h) => [h.outcome, h.legs])).toEqual([['session', 2]]);
    });
  }
});

describe('the requests queued behind a handshake that ends without the server refusing them', () => {
  it('R2: a stream reset on the leader’s AUTHENTICATE leg: the 9 queued behind it authenticate, none is shown a 401', async () => {
    const { origin } = await h2Origin((_res, req, n) => {
      if (n > 1) return false;
      setTimeout(() => req.stream.close(h2.NGHTTP2_INTERNAL_ERROR), 100);
      return true;
    });
    const agent = ntlmAgentAt(origin, closers);
    const results = await dispatchMany(agent, origin, 10);
    // The leader hears of its reset stream; the others are served as the server would serve them.
    expect(results.filter((r) => r === 200)).toHaveLength(9);
    expect(results.filter((r) => r === 401)).toHaveLength(0);
    expect(agent.handshakes().map((h) => h.outcome)).toEqual(['failed', 'session']);
  });

  it('R2: a 500 answer to the AUTHENTICATE leg is no authenticated session: reported failed, the waiters authenticate', async () => {
    const { origin } = await h2Origin((res, _req, n) => {
      if (n > 1) return false;
      setTimeout(() => res.writeHead(500).end('server error'), 100);
      return true;
    });
    const agent = ntlmAgentAt(origin, closers);
    const results = await dispatchMany(agent, origin, 10);
    expect(results.slice(1)).toEqual(Array.from({ length: 9 }, () => 200));
    expect(results[0]).toBe(500);
    expect(agent.handshakes().map((h) => h.outcome)).toEqual(['failed', 'session']);
  });

  it('R2/R4: with the scheme remembered, a server that fails every AUTHENTICATE (a reset stream) costs at most 1 + MAX_WAITS handshakes for 8 requests, not one each', async () => {
    let failing = false;
    const { origin, endSessions } = await h2Origin((_res, req) => {
      if (!failing) return false;
      setTimeout(() => req.stream.close(h2.NGHTTP2_INTERNAL_ERROR), 50);
      return true;
    });
    const agent = ntlmAgentAt(origin, closers);
    expect(await dispatchMany(agent, origin, 1, '/warm')).toEqual([200]);
    await endSessions();
    failing = true;
    const results = await dispatchMany(agent, origin, 8);
    // Each leader hears of its reset stream; a request that waited MAX_WAITS times goes bare and is
    // shown the server's 401 (before: each of the 8 led its own proactive handshake, in series).
    expect(agent.handshakes().filter((h) => h.outcome === 'failed').length).toBeLessThanOrEqual(1 + MAX_WAITS);
    expect(results.filter((r) => r === 401).length).toBeGreaterThanOrEqual(8 - (1 + MAX_WAITS));
  });

  for (const status of [404, 403]) {
    it(`C6: a new session's proactive NTLM NEGOTIATE answered ${status} by a resource that needs no authentication authenticates nothing`, async () => {
      const { origin, endSessions } = await h2Origin(() => false, { prefix: '/open', status });
      const agent = ntlmAgentAt(origin, closers);
      expect(await dispatchMany(agent, origin, 1, '/warm')).toEqual([200]);
      await endSessions();
      expect(await dispatchMany(agent, origin, 1, '/open')).toEqual([status]);
      expect(await dispatchMany(agent, origin, 5)).toEqual(Array(5).fill(200));
      // Before: reported as a one-leg session handshake, and the next 5 requests met bare 401s.
      expect(agent.handshakes().map((h) => [h.outcome, h.legs])).toEqual([
        ['session', 2],
        ['session', 2],
      ]);
    });
  }

  it('R4: requests moved off sessions that end under their handshake (GOAWAY, five times) are moves, not waits: none is shown a 401', async () => {
    let challenges = 0;
    const server = await startReferenceServer({
      mode: 'session',
      schemes: ['NTLM'],
      faults: { goawayAfterChallenge: true },
    });
    closers.push(() => server.close());
    // The first five sessions end after their CHALLENGE; the sixth authenticates.
    server.options.faults.delayMs = (q) => {
      if (ntlmLeg(q.headers.authorization as string | undefined) === 1 && ++challenges > 5)
        server.options.faults.goawayAfterChallenge = false;
      return 0;
    };
    const agent = ntlmAgentAt(server.origin, closers);
    const results = await dispatchMany(agent, server.origin, 50, '/auth');
    expect(results.filter((r) => r !== 200)).toEqual([]);
  });
});

describe('a server that gives its Auth-ID on the first 401 (D§3: as soon as it knows the scheme is multilegged)', () => {
  it('C3: when the first-choice scheme cannot run here, the next one answers that 401 with its Auth-ID', async () => {
    const offer = ['Negotiate', 'NTLM'];
    const contexts = new Map<string, NtlmAcceptor>();
    const firstLegIds: Array<string | undefined> = [];
    let n = 0;
    const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: false });
    server.on('request', async (req, res) => {
      for await (const _ of req);
      const authorization = req.headers.authorization;
      const id = req.headers['auth-id'] as string | undefined;
      if (!authorization)
        return void res.writeHead(401, { 'www-authenticate': offer, 'auth-id': `first-${++n}` }).end();
      const parsed = parseAuthorization(authorization);
      if (!parsed.ok || ntlmMessageType(parsed.token) === undefined)
        return void res.writeHead(401, { 'www-authenticate': offer }).end();
      if (ntlmMessageType(parsed.token) === 1) firstLegIds.push(id);
      // The server finds the context by the Auth-ID alone: a first leg without it is a stranger.
      if (id === undefined || !id.startsWith('first-'))
        return void res.writeHead(401, { 'www-authenticate': offer }).end();
      const context =
        contexts.get(id) ?? new NtlmAcceptor({ users: { 'EXAMPLE\\alice': 'alicepw' }, domain: 'EXAMPLE' });
      contexts.set(id, context);
      const step = await context.step(parsed.token);
      if (step.kind === 'challenge')
        return void res
          .writeHead(401, { 'www-authenticate': `NTLM ${step.token.toString('base64')}`, 'auth-id': id })
          .end();
      res.writeHead(step.kind === 'accepted' ? 200 : 401, { 'persistent-auth': 'true' }).end();
    });
    const origin = await loopbackOrigin(server, closers);
    const agent = ntlmAgentAt(origin, closers, {
      schemes: ['Negotiate', 'NTLM'],
      // No Kerberos here and no NTLM inside Negotiate: Negotiate cannot run, NTLM answers.
      negotiate: {
        ntlmFallback: false,
        kerberos: {
          initializeClient: () => Promise.reject(new MechanismUnavailableError('Negotiate', 'no GSS-API in this test')),
        },
      },
    });
    const res = await fetch(`${origin}/x`, { dispatcher: agent });
    expect(res.status).toBe(200);
    await res.arrayBuffer();
    expect(firstLegIds).toEqual(['first-1']);
  });
});
