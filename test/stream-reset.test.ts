/**
 * HTTP/2 origins that reset a stream (RST_STREAM) after its response head, partway through the body:
 * on an authenticated session's fast path and on a handshake's last leg, the caller's body ends in a
 * typed ConnectionClosedError naming the HTTP/2 error code and what to do, undici's error its cause
 * (R1, C8, H1). REFUSED_STREAM there breaks RFC 9113 §8.7: the server began to answer, so it did
 * process the request.
 */
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import {
  type ClientHttp2Session,
  createSecureServer,
  constants as h2,
  connect as http2Connect,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2';
import { createServer as createHttpsServer } from 'node:https';
import { connect as netConnect } from 'node:net';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { ConnectionClosedError, MultilegAgent } from '../src/index.ts';
import { ProxyClosedError } from '../src/proxy/errors.ts';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { ALICE, loopbackOrigin, ntlmAgentAt, ntlmLeg, SCRIPTED_NTLM_CHALLENGE } from './helpers.ts';
import { eachRequest, hostile } from './hostile-proxy.ts';

const closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close().catch(() => {});
});

/**
 * An HTTP/2 NTLM origin (a scripted CHALLENGE; the AUTHENTICATE authenticates the connection) that
 * answers `/reset/<code>` with a 200 head and a first body chunk, then resets the stream with `code`.
 */
async function resettingOrigin() {
  const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: false });
  const authenticated = new WeakSet<object>();
  server.on('stream', (stream: ServerHttp2Stream, headers) => {
    stream.on('error', () => {});
    stream.resume();
    const session = stream.session as ServerHttp2Session;
    const leg = ntlmLeg(headers.authorization);
    if (leg === 1) {
      stream.respond({ ':status': 401, 'www-authenticate': `NTLM ${SCRIPTED_NTLM_CHALLENGE}` }, { endStream: true });
      return;
    }
    const path = String(headers[':path']);
    const before = /^\/before\/(\d+)/.exec(path);
    // `/before/<code>`: reset before any response — the handshake's last leg, or a request on an
    // authenticated connection.
    if (before && (leg === 3 || (leg === 0 && authenticated.has(session)))) {
      stream.close(Number(before[1]));
      return;
    }
    if (leg === 3) authenticated.add(session);
    if (!authenticated.has(session)) {
      stream.respond({ ':status': 401, 'www-authenticate': 'NTLM' }, { endStream: true });
      return;
    }
    const m = /^\/reset\/(\d+)/.exec(path);
    if (!m) {
      stream.respond({ ':status': 200 });
      stream.end('ok');
      return;
    }
    // waitForTrailers: no END_STREAM goes with the data, so the reset comes mid-response (close()
    // alone ends the stream first, and the client sees a whole response).
    stream.respond({ ':status': 200 }, { waitForTrailers: true });
    stream.write('partial', () => setTimeout(() => stream.close(Number(m[1])), 20));
  });
  return loopbackOrigin(server, closers);
}

/** The request's head status and its body's error (it must fail: the stream is reset mid-body). */
async function bodyError(url: string, agent: MultilegAgent, method: string) {
  const res = await request(url, {
    dispatcher: agent,
    method,
    body: method === 'GET' ? undefined : 'payload',
    signal: AbortSignal.timeout(10_000),
  });
  try {
    await res.body.text();
  } catch (err) {
    return { status: res.statusCode, error: err as Error & { code?: string } };
  }
  return { status: res.statusCode, error: undefined };
}

// (Not CANCEL: Node's client stream ends without an error on it, rstCode 8 only on the stream, so
// undici 8.13.1 completes the response as if whole — undici's own behaviour, no handler sees it.)
const CODES = [
  { name: 'REFUSED_STREAM', code: h2.NGHTTP2_REFUSED_STREAM, hint: 'RFC 9113 §8.7 forbids' },
  { name: 'INTERNAL_ERROR', code: h2.NGHTTP2_INTERNAL_ERROR, hint: "check the server's logs" },
  { name: 'ENHANCE_YOUR_CALM', code: h2.NGHTTP2_ENHANCE_YOUR_CALM, hint: 'fewer requests at once' },
  { name: 'HTTP_1_1_REQUIRED', code: h2.NGHTTP2_HTTP_1_1_REQUIRED, hint: 'allowH2: false' },
  { name: 'PROTOCOL_ERROR', code: h2.NGHTTP2_PROTOCOL_ERROR, hint: "check the server's logs" },
] as const;

/**
 * Of two requests started together at `origin`, the one whose 401 challenge was reset mid-body by
 * `c`: ConnectionClosedError naming the code and the challenge, not sent again. Returns it and the
 * other request's outcome (which the caller checks: nothing queued is lost).
 */
function challengeReset(
  label: string,
  origin: string,
  c: (typeof CODES)[number],
  outcomes: readonly unknown[],
): { e: ConnectionClosedError; other: unknown } {
  // Before: undici's raw "Stream closed with error code NGHTTP2_…" (ERR_HTTP2_STREAM_ERROR).
  const e = outcomes.find((r) => r instanceof Error) as ConnectionClosedError | undefined;
  expect([label, e?.code]).toEqual([label, 'MULTILEG_CONNECTION_CLOSED']);
  expect(e, label).toBeInstanceOf(ConnectionClosedError);
  expect([label, e!.streamReset, e!.responseCut]).toEqual([label, c.code, false]);
  expect(e!.cause, label).toMatchObject({ code: 'ERR_HTTP2_STREAM_ERROR', http2ErrorCode: c.code });
  expect(e!.message, label).toContain(
    `${origin} reset the HTTP/2 stream of the GET with RST_STREAM ${c.name} (0x${c.code.toString(16)}) after the head of its 401 challenge`,
  );
  expect(e!.message, label).toContain('the handshake did not go on and the GET was not sent again');
  return { e: e!, other: outcomes.find((r) => r !== e) };
}

describe('RST_STREAM after the response head', () => {
  for (const where of ['fast path', 'handshake leg'] as const) {
    it(`R1/C8: on the ${where}, each RST_STREAM code after a 200 head ends the body in ConnectionClosedError (MULTILEG_CONNECTION_CLOSED) naming the code, the cut response and the fix — undici's ERR_HTTP2_STREAM_ERROR its cause`, async () => {
      for (const c of CODES) {
        for (const method of ['GET', 'POST']) {
          const origin = await resettingOrigin();
          const agent = ntlmAgentAt(origin, closers);
          // The fast path: a session authenticated by a request before.
          if (where === 'fast path') expect((await request(`${origin}/`, { dispatcher: agent })).statusCode).toBe(200);
          const r = await bodyError(`${origin}/reset/${c.code}`, agent, method);
          const label = `${c.name} ${method}`;
          // Before: undici's raw "Stream closed with error code NGHTTP2_…" (ERR_HTTP2_STREAM_ERROR).
          expect([label, r.status, r.error?.code]).toEqual([label, 200, 'MULTILEG_CONNECTION_CLOSED']);
          const e = r.error as ConnectionClosedError;
          expect(e, label).toBeInstanceOf(ConnectionClosedError);
          expect(e.cause, label).toMatchObject({ code: 'ERR_HTTP2_STREAM_ERROR', http2ErrorCode: c.code });
          expect(e.message, label).toContain(
            `${origin} reset the HTTP/2 stream of the ${method} with RST_STREAM ${c.name} (0x${c.code.toString(16)}) after its response head`,
          );
          expect(e.message, label).toContain(c.hint);
          expect(e.message, label).toContain(
            method === 'GET' ? 'the request is idempotent' : 'not safe to send again unless',
          );
        }
      }
    }, 60_000);
  }
});

describe('RST_STREAM before any response (other than REFUSED_STREAM)', () => {
  const before = CODES.filter((c) => c.name !== 'REFUSED_STREAM' && c.name !== 'HTTP_1_1_REQUIRED');
  for (const where of ['fast path', 'handshake leg'] as const) {
    it(`R1: on the ${where}, PROTOCOL_ERROR, INTERNAL_ERROR and ENHANCE_YOUR_CALM before any response end in ConnectionClosedError naming the code and the fix, not sent again (the server may have processed it) — undici's error its cause`, async () => {
      for (const c of before) {
        for (const method of ['GET', 'POST']) {
          const origin = await resettingOrigin();
          const agent = ntlmAgentAt(origin, closers);
          if (where === 'fast path') expect((await request(`${origin}/`, { dispatcher: agent })).statusCode).toBe(200);
          const label = `${c.name} ${method}`;
          let error: (Error & { code?: string }) | undefined;
          try {
            await request(`${origin}/before/${c.code}`, {
              dispatcher: agent,
              method,
              body: method === 'GET' ? undefined : 'payload',
              signal: AbortSignal.timeout(10_000),
            });
          } catch (err) {
            error = err as Error & { code?: string };
          }
          // Before: undici's raw "Stream closed with error code NGHTTP2_…" (ERR_HTTP2_STREAM_ERROR).
          expect([label, error?.code]).toEqual([label, 'MULTILEG_CONNECTION_CLOSED']);
          const e = error as ConnectionClosedError;
          expect([label, e.streamReset, e.responseCut, e.fresh]).toEqual([label, c.code, false, false]);
          expect(e.cause, label).toMatchObject({ code: 'ERR_HTTP2_STREAM_ERROR', http2ErrorCode: c.code });
          expect(e.message, label).toContain(
            `${origin} reset the HTTP/2 stream of the ${method} with RST_STREAM ${c.name} (0x${c.code.toString(16)}) before any response`,
          );
          expect(e.message, label).toContain(c.hint);
          expect(e.message, label).toContain('not sent again, as the server may have processed it');
        }
      }
    }, 60_000);
  }
});

type ChallengeCase = 'NTLM challenge leg' | 'NTLM re-authentication' | 'Basic' | 'Digest';

/**
 * An HTTP/2 origin (401s) or https:// forwarding proxy (407s) — NTLM, Basic or Digest, checking no
 * password — whose first challenge of `where` comes as a head and part of its body, then a reset with
 * `code`; every other answer whole, a request it lets through answered 200 `ok`. `wire`: what each
 * stream carried (`bare`, `NTLM1`, `NTLM3`, `Basic`, `Digest`).
 */
async function challengeResetting(peer: 'origin' | 'proxy', where: ChallengeCase, code: number, wire: string[]) {
  const [status, asks, answer, realm] =
    peer === 'origin'
      ? ([401, 'www-authenticate', 'authorization', 'r'] as const)
      : ([407, 'proxy-authenticate', 'proxy-authorization', 'p'] as const);
  const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: false });
  const authenticated = new WeakSet<object>();
  let cut = false;
  server.on('stream', (stream: ServerHttp2Stream, headers) => {
    stream.on('error', () => {});
    stream.resume();
    const session = stream.session as ServerHttp2Session;
    const auth = headers[answer];
    const scheme = auth?.split(' ', 1)[0];
    const leg = scheme === 'NTLM' ? ntlmLeg(auth) : 0;
    wire.push(scheme === undefined ? 'bare' : scheme === 'NTLM' ? `NTLM${leg}` : scheme);
    const reauth = where === 'NTLM re-authentication' && String(headers[':path']) === '/again';
    const challenge = (h: string, cutHere: boolean) => {
      if (!cutHere || cut) {
        stream.respond({ ':status': status, [asks]: h }, { endStream: true });
        return;
      }
      cut = true;
      // The challenge's head and part of its body, then the reset (no END_STREAM: waitForTrailers).
      stream.respond({ ':status': status, [asks]: h, 'content-type': 'text/html' }, { waitForTrailers: true });
      stream.write(`<html>${status}: log in`, () => setTimeout(() => stream.close(code), 20));
    };
    if (where === 'Basic' || where === 'Digest') {
      if (scheme !== where)
        return challenge(
          where === 'Basic' ? `Basic realm="${realm}"` : `Digest realm="${realm}", nonce="n0", qop="auth"`,
          true,
        );
    } else if (leg === 1) return challenge(`NTLM ${SCRIPTED_NTLM_CHALLENGE}`, where === 'NTLM challenge leg');
    else if (leg === 3) authenticated.add(session);
    else if (!authenticated.has(session) || reauth) return challenge('NTLM', reauth);
    stream.respond({ ':status': 200 });
    stream.end('ok');
  });
  const origin = await loopbackOrigin(server, closers);
  return peer === 'proxy' ? origin.replace('localhost', '127.0.0.1') : origin;
}

describe("RST_STREAM partway through a 401's body the agent drains between a handshake's legs", () => {
  const RESETS = CODES.filter((c) => c.name !== 'HTTP_1_1_REQUIRED');
  const CASES: ChallengeCase[] = ['NTLM challenge leg', 'NTLM re-authentication', 'Basic', 'Digest'];
  const agentFor = (where: ChallengeCase, origin: string) =>
    where === 'Basic' || where === 'Digest'
      ? ntlmAgentAt(origin, closers, { schemes: [where] })
      : ntlmAgentAt(origin, closers);
  const settle = (origin: string, agent: MultilegAgent, path = '/x') =>
    request(`${origin}${path}`, { dispatcher: agent, signal: AbortSignal.timeout(10_000) }).then(
      async (r) => ({ status: r.statusCode, body: await r.body.text() }),
      (e: Error & { code?: string }) => e,
    );
  /** `where`'s origin resetting with `code`, its agent (a re-authentication's authenticated first), and the path to ask. */
  const primed = async (where: ChallengeCase, code: number, wire: string[], label: string) => {
    const origin = await challengeResetting('origin', where, code, wire);
    const agent = agentFor(where, origin);
    const path = where === 'NTLM re-authentication' ? '/again' : '/x';
    if (where === 'NTLM re-authentication')
      expect(await settle(origin, agent), label).toEqual({ status: 200, body: 'ok' });
    return { origin, agent, path };
  };

  it('R1/C8: an NTLM challenge leg, an NTLM re-authentication 401, a Basic and a Digest 401 reset mid-body (INTERNAL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM, PROTOCOL_ERROR) end that request in ConnectionClosedError naming the code and the challenge (not sent again), the request queued behind it and the next one 200', async () => {
    for (const where of CASES) {
      for (const c of RESETS) {
        const label = `${where} ${c.name}`;
        const wire: string[] = [];
        const { origin, agent, path } = await primed(where, c.code, wire, label);
        const sent = wire.length;
        // Two at once: the second waits behind the first's handshake (C1) or goes on its own.
        const [first, queued] = await Promise.all([settle(origin, agent, path), settle(origin, agent, path)]);
        // The reset request's challenge went unanswered: the only credentials sent are the other's.
        const answers = wire.slice(sent).filter((w) => w === 'NTLM3' || w === 'Basic' || w === 'Digest');
        expect([label, answers.length]).toEqual([label, 1]);
        const { e, other } = challengeReset(label, origin, c, [first, queued]);
        expect(e.message, label).toContain(c.hint);
        // Nothing queued lost; the session goes on.
        expect([label, other]).toEqual([label, { status: 200, body: 'ok' }]);
        expect([label, await settle(origin, agent, path)]).toEqual([label, { status: 200, body: 'ok' }]);
      }
    }
  }, 120_000);

  it("R1/C8: CANCEL partway through such a 401's body: undici ends it as if whole, and the handshake goes on (200)", async () => {
    for (const where of CASES) {
      const { agent, origin, path } = await primed(where, h2.NGHTTP2_CANCEL, [], where);
      expect([where, await settle(origin, agent, path)]).toEqual([where, { status: 200, body: 'ok' }]);
    }
  }, 60_000);
});

type ProxyCase = 'NTLM challenge leg' | 'Basic' | 'Digest';

describe("RST_STREAM partway through a forwarding proxy's 407 body over HTTP/2 (R1, C8, H5)", () => {
  const RESETS = CODES.filter((c) => c.name !== 'HTTP_1_1_REQUIRED');
  const CASES: ProxyCase[] = ['NTLM challenge leg', 'Basic', 'Digest'];
  const settle = (agent: MultilegAgent, path = '/x') =>
    request(`http://origin.test${path}`, { dispatcher: agent, signal: AbortSignal.timeout(10_000) }).then(
      async (r) => ({ status: r.statusCode, body: await r.body.text() }),
      (e: Error & { code?: string }) => e,
    );

  it("R1/C8: an HTTP/2 forwarding proxy's NTLM challenge 407, Basic and Digest 407 reset mid-body (INTERNAL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM, PROTOCOL_ERROR) end that request in ProxyClosedError naming the proxy, the code and the 407 (not sent again), the request queued behind it and the next one 200", async () => {
    for (const where of CASES) {
      for (const c of RESETS) {
        const label = `${where} ${c.name}`;
        const wire: string[] = [];
        const proxy = await challengeResetting('proxy', where, c.code, wire);
        const agent = new MultilegAgent({
          proxy: {
            uri: proxy,
            connect: { ca: CA_CERT },
            credentials: ALICE,
            negotiate: false,
            schemes: [where === 'NTLM challenge leg' ? 'NTLM' : where],
          },
        });
        closers.push(() => agent.destroy());
        const [first, queued] = await Promise.all([settle(agent), settle(agent)]);
        // The reset request's 407 went unanswered: the only credentials sent are the other's.
        const answers = wire.filter((w) => w === 'NTLM3' || w === 'Basic' || w === 'Digest');
        expect([label, answers.length]).toEqual([label, 1]);
        const e = [first, queued].find((r) => r instanceof Error) as ProxyClosedError | undefined;
        expect([label, e?.code]).toEqual([label, 'MULTILEG_PROXY_CLOSED']);
        expect(e, label).toBeInstanceOf(ProxyClosedError);
        expect([label, e!.proxy, e!.streamReset, e!.responseCut]).toEqual([label, proxy, c.code, false]);
        expect(e!.cause, label).toMatchObject({ code: 'ERR_HTTP2_STREAM_ERROR', http2ErrorCode: c.code });
        expect(e!.message, label).toContain(
          `reset the HTTP/2 stream of the GET with RST_STREAM ${c.name} (0x${c.code.toString(16)}) after the head of its 407 challenge`,
        );
        expect(e!.message, label).toContain(proxy);
        expect(e!.message, label).toContain('the handshake did not go on and the GET was not sent again');
        // Nothing queued lost; the proxy connection goes on.
        expect([label, first === e ? queued : first]).toEqual([label, { status: 200, body: 'ok' }]);
        expect([label, await settle(agent)]).toEqual([label, { status: 200, body: 'ok' }]);
      }
    }
  }, 120_000);
});

type NegotiateCut = 'first 401' | 'challenge 401';

/**
 * An HTTP/2 front (the test certificate) before the reference server (Negotiate, `mode`): each
 * front connection gets a connection of its own to the server, each stream is passed on as it came,
 * and the server's first 401 of `where` — the bare `Negotiate` one, or the one carrying the
 * acceptor's SPNEGO token — goes on as its head and part of a body, then a reset with `code`.
 */
async function negotiateResettingFront(
  where: NegotiateCut,
  code: number,
  mode: 'per-request' | 'session',
): Promise<{ origin: string; server: ReferenceServer }> {
  const backend = await startReferenceServer({ mode, schemes: ['Negotiate'] });
  closers.push(() => backend.close());
  const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: false });
  const upstream = new WeakMap<object, ClientHttp2Session>();
  let cut = false;
  server.on('session', (session: ServerHttp2Session) => {
    const up = http2Connect(backend.origin, { ca: CA_CERT });
    up.on('error', () => {});
    session.on('close', () => up.close());
    upstream.set(session, up);
  });
  server.on('stream', (stream: ServerHttp2Stream, headers) => {
    stream.on('error', () => {});
    const out: Record<string, string | string[] | undefined> = {};
    for (const [k, v] of Object.entries(headers))
      if (!k.startsWith(':') || k === ':method' || k === ':path') out[k] = v;
    const req = upstream.get(stream.session as ServerHttp2Session)!.request(out);
    req.on('error', () => stream.close(h2.NGHTTP2_INTERNAL_ERROR));
    stream.pipe(req);
    req.on('response', (head) => {
      const challenge = String(head['www-authenticate'] ?? '');
      const cutHere =
        head[':status'] === 401 &&
        !cut &&
        (where === 'first 401' ? challenge === 'Negotiate' : challenge.startsWith('Negotiate '));
      if (!cutHere) {
        stream.respond(head);
        req.pipe(stream);
        return;
      }
      cut = true;
      req.resume();
      const { 'content-length': _, ...rest } = head;
      // The 401's head and part of its body, then the reset (no END_STREAM: waitForTrailers).
      stream.respond({ ...rest, 'content-type': 'text/html' }, { waitForTrailers: true });
      stream.write('<html>401: log in', () => setTimeout(() => stream.close(code), 20));
    });
  });
  return { origin: await loopbackOrigin(server, closers), server: backend };
}

describe("RST_STREAM partway through a Negotiate 401's body (R1, C8)", () => {
  const RESETS = CODES.filter((c) => c.name !== 'HTTP_1_1_REQUIRED');
  const settle = (origin: string, agent: MultilegAgent, path: string) =>
    request(`${origin}${path}`, { dispatcher: agent, signal: AbortSignal.timeout(10_000) }).then(
      async (r) => ({ status: r.statusCode, user: ((await r.body.json()) as { user: string | null }).user }),
      (e: Error & { code?: string }) => e,
    );

  for (const mode of ['per-request', 'session'] as const) {
    it(`R1/C8: (${mode}) the bare Negotiate 401 and the 401 carrying the acceptor's SPNEGO token (NTLM inside Negotiate) reset mid-body (INTERNAL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM, PROTOCOL_ERROR) end that request in ConnectionClosedError naming the code and the challenge (not sent again), the request queued behind it and the next one 200 as alice`, async () => {
      for (const where of ['first 401', 'challenge 401'] as const) {
        for (const c of RESETS) {
          const label = `${where} ${c.name}`;
          const { origin, server } = await negotiateResettingFront(where, c.code, mode);
          const agent = new MultilegAgent({
            credentials: ALICE,
            trustedOrigins: [origin],
            connect: { ca: CA_CERT },
            schemes: ['Negotiate'],
          });
          closers.push(() => agent.destroy());
          const [first, queued] = await Promise.all([
            settle(origin, agent, '/auth/a'),
            settle(origin, agent, '/auth/b'),
          ]);
          // The reset request's handshake went no further: one handshake accepted, the other's.
          expect([label, server.exchanges.filter((x) => x.outcome === 'accepted').length]).toEqual([label, 1]);
          const { other } = challengeReset(label, origin, c, [first, queued]);
          // Nothing queued lost; the session goes on.
          const alice = { status: 200, user: 'EXAMPLE\\alice' };
          expect([label, other]).toEqual([label, alice]);
          expect([label, await settle(origin, agent, '/auth/c')]).toEqual([label, alice]);
        }
      }
    }, 120_000);
  }
});

type Http1Case = 'NTLM challenge leg' | 'Basic' | 'Digest';

/**
 * An HTTP/1.1 origin (https, the test certificate) or forwarding proxy (http) — NTLM, Basic or
 * Digest, checking no password, NTLM authenticating the connection — whose first challenge of
 * `where` comes as its head and part of its body (Content-Length: 100), then the connection closed;
 * every other answer whole. `wire`: what each request carried.
 */
async function http1ClosingPeer(peer: 'origin' | 'proxy', where: Http1Case, wire: string[]) {
  const status = peer === 'origin' ? 401 : 407;
  const asked = peer === 'origin' ? 'authorization' : 'proxy-authorization';
  const offer = peer === 'origin' ? 'www-authenticate' : 'proxy-authenticate';
  const authenticated = new WeakSet<object>();
  let cut = false;
  const handle = (req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    req.on('end', () => {
      const auth = req.headers[asked];
      const scheme = auth?.split(' ', 1)[0];
      const leg = scheme === 'NTLM' ? ntlmLeg(auth) : 0;
      wire.push(scheme === undefined ? 'bare' : scheme === 'NTLM' ? `NTLM${leg}` : scheme);
      const challenge = (h: string, cutHere: boolean) => {
        if (!cutHere || cut) {
          res.writeHead(status, { [offer]: h, 'content-length': 0 }).end();
          return;
        }
        cut = true;
        res.writeHead(status, { [offer]: h, 'content-type': 'text/html', 'content-length': 100 });
        res.write(`<html>${status}: log in`, () => setTimeout(() => req.socket.destroy(), 20));
      };
      if (where === 'Basic' || where === 'Digest') {
        if (scheme !== where)
          return challenge(where === 'Basic' ? 'Basic realm="r"' : 'Digest realm="r", nonce="n0", qop="auth"', true);
      } else if (leg === 1) return challenge(`NTLM ${SCRIPTED_NTLM_CHALLENGE}`, true);
      else if (leg === 3) authenticated.add(req.socket);
      else if (!authenticated.has(req.socket)) return challenge('NTLM', false);
      res.writeHead(200, { 'content-length': 2 }).end('ok');
    });
  };
  const server =
    peer === 'origin' ? createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, handle) : createHttpServer(handle);
  const origin = await loopbackOrigin(server, closers);
  return peer === 'origin' ? origin : origin.replace('https://localhost', 'http://127.0.0.1');
}

describe("the connection closed partway through a challenge's body over HTTP/1.1 (R1, C8, H5)", () => {
  const settle = (url: string, agent: MultilegAgent, method: string) =>
    request(url, {
      dispatcher: agent,
      method,
      body: method === 'GET' ? undefined : 'payload',
      signal: AbortSignal.timeout(10_000),
    }).then(
      async (r) => ({ status: r.statusCode, body: await r.body.text() }),
      (e: Error & { code?: string }) => e,
    );

  for (const peer of ['origin', 'proxy'] as const) {
    const cases: Http1Case[] =
      peer === 'origin' ? ['NTLM challenge leg', 'Basic', 'Digest'] : ['NTLM challenge leg', 'Basic'];
    const status = peer === 'origin' ? 401 : 407;
    it(`R1/C8: HTTP/1.1 ${peer === 'origin' ? "an origin's NTLM challenge 401, Basic and Digest 401" : "a forwarding proxy's NTLM challenge 407 and Basic 407"} cut by the connection closing partway through the body end that request (GET, POST) in ${peer === 'origin' ? 'ConnectionClosedError' : 'ProxyClosedError'} naming the ${peer} and the challenge (not sent again), the request queued behind it and the next one 200`, async () => {
      for (const where of cases) {
        for (const method of ['GET', 'POST']) {
          const label = `${where} ${method}`;
          const wire: string[] = [];
          const at = await http1ClosingPeer(peer, where, wire);
          const schemes = [where === 'NTLM challenge leg' ? 'NTLM' : where] as const;
          const agent =
            peer === 'origin'
              ? ntlmAgentAt(at, closers, { schemes: [...schemes] })
              : new MultilegAgent({ proxy: { uri: at, credentials: ALICE, negotiate: false, schemes: [...schemes] } });
          if (peer === 'proxy') closers.push(() => agent.destroy());
          const url = peer === 'origin' ? `${at}/x` : 'http://origin.test/x';
          const [first, queued] = await Promise.all([settle(url, agent, method), settle(url, agent, method)]);
          // The cut request's challenge went unanswered: the only credentials sent are the other's.
          const answers = wire.filter((w) => w === 'NTLM3' || w === 'Basic' || w === 'Digest');
          expect([label, answers.length]).toEqual([label, 1]);
          // Before: undici's raw SocketError "other side closed" (UND_ERR_SOCKET).
          const e = [first, queued].find((r) => r instanceof Error) as ConnectionClosedError | undefined;
          const code = peer === 'origin' ? 'MULTILEG_CONNECTION_CLOSED' : 'MULTILEG_PROXY_CLOSED';
          expect([label, e?.code]).toEqual([label, code]);
          expect(e, label).toBeInstanceOf(peer === 'origin' ? ConnectionClosedError : ProxyClosedError);
          expect([label, e!.peer, e!.streamReset, e!.responseCut]).toEqual([label, at, undefined, false]);
          expect(e!.cause, label).toMatchObject({ code: 'UND_ERR_SOCKET' });
          expect(e!.message, label).toContain(
            `${peer} ${at} closed the connection partway through the body of its ${status} challenge to the ${method}`,
          );
          expect(e!.message, label).toContain(`the handshake did not go on and the ${method} was not sent again`);
          expect(e!.message, label).toContain(
            method === 'GET' ? 'the request is idempotent' : `send the ${method} again only if that is safe`,
          );
          // Nothing queued lost; the next request goes on.
          expect([label, first === e ? queued : first]).toEqual([label, { status: 200, body: 'ok' }]);
          expect([label, await settle(url, agent, 'GET')]).toEqual([label, { status: 200, body: 'ok' }]);
        }
      }
    }, 120_000);
  }
});

/**
 * An HTTP/1.1 front (https, the test certificate) before the reference server (Negotiate, `mode`):
 * each front connection gets an HTTP/2 connection of its own to the server, each request passed on
 * as it came, and the server's first 401 of `where` — the bare `Negotiate` one, or the one carrying
 * the acceptor's SPNEGO token — goes on as its head and part of a body (Content-Length: 100), then
 * the front connection closed.
 */
async function negotiateClosingFront(
  where: NegotiateCut,
  mode: 'per-request' | 'session',
): Promise<{ origin: string; server: ReferenceServer }> {
  const backend = await startReferenceServer({ mode, schemes: ['Negotiate'] });
  closers.push(() => backend.close());
  const upstream = new WeakMap<object, ClientHttp2Session>();
  let cut = false;
  const server = createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, (req, res) => {
    const socket = req.socket;
    let up = upstream.get(socket);
    if (!up) {
      up = http2Connect(backend.origin, { ca: CA_CERT });
      up.on('error', () => {});
      socket.once('close', () => up!.close());
      upstream.set(socket, up);
    }
    const out: Record<string, string | string[] | undefined> = { ':method': req.method, ':path': req.url };
    for (const [k, v] of Object.entries(req.headers))
      if (!['host', 'connection', 'keep-alive', 'transfer-encoding'].includes(k)) out[k] = v;
    const ask = up.request(out);
    ask.on('error', () => socket.destroy());
    req.pipe(ask);
    ask.on('response', (head) => {
      const { ':status': status, 'content-length': length, ...rest } = head;
      const challenge = String(head['www-authenticate'] ?? '');
      const cutHere =
        status === 401 &&
        !cut &&
        (where === 'first 401' ? challenge === 'Negotiate' : challenge.startsWith('Negotiate '));
      if (!cutHere) {
        res.writeHead(Number(status), { ...rest, ...(length !== undefined ? { 'content-length': length } : {}) });
        ask.pipe(res);
        return;
      }
      cut = true;
      ask.resume();
      // The 401's head and part of its body, then the close.
      res.writeHead(401, { ...rest, 'content-type': 'text/html', 'content-length': 100 });
      res.write('<html>401: log in', () => setTimeout(() => socket.destroy(), 20));
    });
  });
  return { origin: await loopbackOrigin(server, closers), server: backend };
}

describe("the connection closed partway through a Negotiate 401's body over HTTP/1.1 (R1, C8)", () => {
  const settle = (origin: string, agent: MultilegAgent, path: string) =>
    request(`${origin}${path}`, { dispatcher: agent, signal: AbortSignal.timeout(10_000) }).then(
      async (r) => ({ status: r.statusCode, user: ((await r.body.json()) as { user: string | null }).user }),
      (e: Error & { code?: string }) => e,
    );

  for (const mode of ['per-request', 'session'] as const) {
    it(`R1/C8: (${mode}) HTTP/1.1: the bare Negotiate 401 and the 401 carrying the acceptor's SPNEGO token (NTLM inside Negotiate) cut by the connection closing partway through the body end that request in ConnectionClosedError naming the origin and the challenge (challengeCut, not sent again), as NTLM's; the request beside it and the next one 200 as alice`, async () => {
      for (const where of ['first 401', 'challenge 401'] as const) {
        const { origin, server } = await negotiateClosingFront(where, mode);
        const agent = new MultilegAgent({
          credentials: ALICE,
          trustedOrigins: [origin],
          connect: { ca: CA_CERT },
          schemes: ['Negotiate'],
        });
        closers.push(() => agent.destroy());
        const [first, other] = await Promise.all([settle(origin, agent, '/auth/a'), settle(origin, agent, '/auth/b')]);
        // The cut request's handshake went no further: one handshake accepted, the other's.
        expect([where, server.exchanges.filter((x) => x.outcome === 'accepted').length]).toEqual([where, 1]);
        const e = [first, other].find((r) => r instanceof Error) as ConnectionClosedError | undefined;
        expect([where, e?.code]).toEqual([where, 'MULTILEG_CONNECTION_CLOSED']);
        expect(e, where).toBeInstanceOf(ConnectionClosedError);
        expect([where, e!.peer, e!.challengeCut, e!.streamReset]).toEqual([where, origin, 401, undefined]);
        expect(e!.cause, where).toMatchObject({ code: 'UND_ERR_SOCKET' });
        expect(e!.message, where).toContain(
          `origin ${origin} closed the connection partway through the body of its 401 challenge to the GET`,
        );
        expect(e!.message, where).toContain('the handshake did not go on and the GET was not sent again');
        // Nothing beside it lost; the next one authenticates.
        const alice = { status: 200, user: 'EXAMPLE\\alice' };
        expect([where, first === e ? other : first]).toEqual([where, alice]);
        expect([where, await settle(origin, agent, '/auth/c')]).toEqual([where, alice]);
      }
    }, 60_000);
  }
});

type TunnelCase = 'NTLM challenge leg' | 'Basic';

/**
 * A scripted CONNECT proxy (HTTP/1.1) — NTLM (a scripted CHALLENGE) or Basic, checking no password —
 * whose first 407 of `where` (NTLM: the one carrying its CHALLENGE) comes as its head and part of its
 * body (Content-Length: 100), then the connection closed (`how`: FIN, or a reset); every other 407
 * whole, and a CONNECT it lets through answered 200 and relayed to 127.0.0.1:`port`. `wire`: what
 * each CONNECT carried (`bare`, `NTLM1`, `NTLM3`, `Basic`).
 */
async function cuttingTunnelProxy(where: TunnelCase, how: 'close' | 'reset', port: number, wire: string[]) {
  let cut = false;
  const proxy = await hostile((socket, received) =>
    eachRequest(socket, received, (head) => {
      const auth = /^proxy-authorization:[ \t]*(.*?)[ \t]*$/im.exec(head)?.[1];
      const scheme = auth?.split(' ', 1)[0];
      const leg = scheme === 'NTLM' ? ntlmLeg(auth) : 0;
      wire.push(scheme === undefined ? 'bare' : scheme === 'NTLM' ? `NTLM${leg}` : scheme);
      if (where === 'Basic' ? scheme === 'Basic' : leg === 3) {
        const upstream = netConnect({ host: '127.0.0.1', port }, () => {
          socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
          socket.pipe(upstream).pipe(socket);
        });
        upstream.on('error', () => socket.destroy());
        socket.once('close', () => upstream.destroy());
        return 'stop';
      }
      const offer = where === 'Basic' ? 'Basic realm="p"' : leg === 1 ? `NTLM ${SCRIPTED_NTLM_CHALLENGE}` : 'NTLM';
      const status = 'HTTP/1.1 407 Proxy Authentication Required';
      if (cut || (where !== 'Basic' && leg !== 1)) {
        socket.write(`${status}\r\nProxy-Authenticate: ${offer}\r\nContent-Length: 0\r\n\r\n`);
        return undefined;
      }
      cut = true;
      socket.write(
        `${status}\r\nProxy-Authenticate: ${offer}\r\nContent-Type: text/html\r\nContent-Length: 100\r\n\r\n<html>407: log in`,
        () => setTimeout(() => (how === 'reset' ? socket.resetAndDestroy() : socket.end()), 20),
      );
      return 'stop';
    }),
  );
  closers.push(() => proxy.close());
  return `http://127.0.0.1:${proxy.port}`;
}

describe("the connection closed partway through a CONNECT's 407 body (R1, C8, H5)", () => {
  it('R1/C8/H5: a proxy closing or resetting the connection partway through the body of its NTLM challenge 407 or Basic 407 to a CONNECT ends that request in ProxyClosedError naming the proxy, the CONNECT and the 407 (challengeCut; not sent again), not ProxyProtocolError; the request beside it and the next one open tunnels of their own and get 200', async () => {
    const origin = await loopbackOrigin(
      createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, (_req, res) => res.end('ok')),
      closers,
    );
    const { port } = new URL(origin);
    const target = `localhost:${port}`;
    const settle = (agent: MultilegAgent) =>
      request(`${origin}/x`, { dispatcher: agent, signal: AbortSignal.timeout(10_000) }).then(
        async (r) => ({ status: r.statusCode, body: await r.body.text() }),
        (e: Error & { code?: string }) => e,
      );
    for (const where of ['NTLM challenge leg', 'Basic'] as const) {
      for (const how of ['close', 'reset'] as const) {
        const label = `${where} ${how}`;
        const wire: string[] = [];
        const proxy = await cuttingTunnelProxy(where, how, Number(port), wire);
        const agent = new MultilegAgent({
          connect: { ca: CA_CERT },
          proxy: { uri: proxy, credentials: ALICE, negotiate: false, schemes: [where === 'Basic' ? 'Basic' : 'NTLM'] },
        });
        closers.push(() => agent.destroy());
        // Two at once: each opens a tunnel of its own; the first CONNECT's 407 is cut.
        const [first, other] = await Promise.all([settle(agent), settle(agent)]);
        const e = [first, other].find((r) => r instanceof Error) as ProxyClosedError | undefined;
        // Before: ProxyProtocolError "the proxy closed the connection" / "connection failed (read
        // ECONNRESET)" (MULTILEG_PROXY_PROTOCOL), which named no 407.
        expect([label, e?.code]).toEqual([label, 'MULTILEG_PROXY_CLOSED']);
        expect(e, label).toBeInstanceOf(ProxyClosedError);
        expect([label, e!.proxy, e!.method, e!.challengeCut, e!.streamReset, e!.reset]).toEqual([
          label,
          proxy,
          'CONNECT',
          407,
          undefined,
          how === 'reset',
        ]);
        expect(e!.message, label).toContain(
          `proxy ${proxy} ${how === 'reset' ? 'reset' : 'closed'} the connection partway through the body of its 407 challenge to the CONNECT ${target}`,
        );
        expect(e!.message, label).toContain(
          `the handshake did not go on and the CONNECT was not sent again: no tunnel was opened, so the request did not reach ${target} and may be sent again`,
        );
        // The cut 407 went unanswered: the only credentials sent are the other tunnel's.
        const answers = wire.filter((w) => w === 'NTLM3' || w === 'Basic');
        expect([label, answers.length]).toEqual([label, 1]);
        // The other request's tunnel and the next one's open (the proxy's 407s whole now): 200.
        expect([label, first === e ? other : first]).toEqual([label, { status: 200, body: 'ok' }]);
        expect([label, await settle(agent)]).toEqual([label, { status: 200, body: 'ok' }]);
      }
    }
  }, 60_000);
});
