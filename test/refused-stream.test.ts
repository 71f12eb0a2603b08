/**
 * HTTP/2 origins that reset streams with REFUSED_STREAM before any response (RFC 9113 §8.7: the
 * request was not processed). undici sends a refused request once more on the same connection; the
 * agent then moves it to a new connection once, where a handshake starts over, and after that ends
 * it with a typed StreamRefusedError: bounded, never undici's raw stream error (R1, R4, C8, H1).
 */
import { createSecureServer, constants as h2, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import { Readable } from 'node:stream';
import { type Dispatcher, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { MultilegAgent, type MultilegError, StreamRefusedError } from '../src/index.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { loopbackOrigin, ntlmAgentAt, ntlmLeg, SCRIPTED_NTLM_CHALLENGE } from './helpers.ts';

const closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close().catch(() => {});
});

interface Seen {
  /** Streams the server got, refused or not. */
  streams: number;
  refused: number;
  /** Connections (HTTP/2 sessions) the server got. */
  sessions: number;
  /** Per connection, the NTLM leg of each stream on it, in order (0 for none). */
  legs: Array<Array<0 | 1 | 3>>;
}

/**
 * An HTTP/2-only origin. `refuse(leg, seen)` says whether to reset a stream with REFUSED_STREAM
 * before any response; any other stream is answered: with `ntlm`, as an NTLM origin whose
 * AUTHENTICATE authenticates the connection (it checks nothing: a scripted CHALLENGE), else 200.
 */
async function refusingOrigin(
  refuse: (leg: 0 | 1 | 3, seen: Seen) => boolean,
  ntlm = false,
  afterRefusal?: (session: ServerHttp2Session) => void,
) {
  const seen: Seen = { streams: 0, refused: 0, sessions: 0, legs: [] };
  const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: false });
  const index = new WeakMap<object, number>();
  const authenticated = new WeakSet<object>();
  server.on('session', (session) => {
    index.set(session, seen.sessions++);
    seen.legs.push([]);
  });
  server.on('stream', (stream: ServerHttp2Stream, headers) => {
    stream.on('error', () => {});
    const session = stream.session as ServerHttp2Session;
    const leg = ntlm ? ntlmLeg(headers.authorization) : 0;
    seen.streams++;
    seen.legs[index.get(session)!]!.push(leg);
    if (refuse(leg, seen)) {
      seen.refused++;
      stream.close(h2.NGHTTP2_REFUSED_STREAM);
      afterRefusal?.(session);
      return;
    }
    stream.resume();
    if (ntlm && leg === 1) {
      stream.respond({ ':status': 401, 'www-authenticate': `NTLM ${SCRIPTED_NTLM_CHALLENGE}` }, { endStream: true });
      return;
    }
    if (ntlm && leg === 3) authenticated.add(session);
    if (ntlm && !authenticated.has(session)) {
      stream.respond({ ':status': 401, 'www-authenticate': 'NTLM' }, { endStream: true });
      return;
    }
    stream.respond({ ':status': 200 });
    stream.end(`ok ${headers[':path']}`);
  });
  const origin = await loopbackOrigin(server, closers);
  return { origin, seen };
}

/** The request's status and body, or its error. */
async function settle(
  url: string,
  opts: { dispatcher: Dispatcher } & Partial<Pick<Dispatcher.RequestOptions, 'method' | 'body'>>,
) {
  try {
    const res = await request(url, { ...opts, signal: AbortSignal.timeout(10_000) });
    return { status: res.statusCode, body: await res.body.text() };
  } catch (err) {
    return { error: err as Error & { code?: string } };
  }
}

describe('REFUSED_STREAM before any response', () => {
  it("R1/R4: an HTTP/2 origin that refuses every stream: GET, POST and a streamed PUT end in StreamRefusedError (MULTILEG_STREAM_REFUSED) — not processed, safe to send again, undici's error its cause — after at most 4 streams on 2 connections each", async () => {
    const { origin, seen } = await refusingOrigin(() => true);
    const agent = ntlmAgentAt(origin, closers);
    const cases = [
      { method: 'GET', body: undefined, streams: 4 },
      { method: 'POST', body: 'payload', streams: 4 },
      // A stream body: the agent keeps it for a replay (C10), and the tries are the same.
      { method: 'PUT', body: Readable.from([Buffer.from('streamed')]), streams: 4 },
    ] as const;
    for (const c of cases) {
      const before = { streams: seen.streams, sessions: seen.sessions };
      const r = await settle(`${origin}/${c.method}`, { dispatcher: agent, method: c.method, body: c.body });
      // Before: undici's raw "Stream closed with error code NGHTTP2_REFUSED_STREAM" (ERR_HTTP2_STREAM_ERROR).
      expect(r.error, c.method).toBeInstanceOf(StreamRefusedError);
      const e = r.error as StreamRefusedError;
      expect([c.method, e.code, e.refusals, e.connections]).toEqual([
        c.method,
        'MULTILEG_STREAM_REFUSED',
        c.streams,
        2,
      ]);
      expect(e.message).toContain(
        `${origin} refused the HTTP/2 stream of the ${c.method} ${c.streams} times on 2 connections before any response`,
      );
      expect(e.message).toContain('REFUSED_STREAM: the server sheds load or caps its concurrent streams');
      expect(e.message).toContain('the request was not processed (RFC 9113 §8.7), so it is safe to send again');
      expect(e.cause).toMatchObject({ code: 'ERR_HTTP2_STREAM_ERROR', http2ErrorCode: h2.NGHTTP2_REFUSED_STREAM });
      // Bounded: the wire saw exactly these, on two connections.
      expect([c.method, seen.streams - before.streams, seen.sessions - before.sessions]).toEqual([
        c.method,
        c.streams,
        2,
      ]);
    }
  }, 30_000);

  it('C8/R5: an origin that refuses only its first N streams: after undici\'s one retry on the connection, the request goes once more on a new one (curl\'s "retrying a fresh connect") and is answered; a fourth refusal ends it typed', async () => {
    for (const n of [1, 2, 3, 4]) {
      const { origin, seen } = await refusingOrigin((_leg, s) => s.streams <= n);
      const agent = ntlmAgentAt(origin, closers);
      const r = await settle(`${origin}/x`, { dispatcher: agent, method: 'POST', body: 'payload' });
      if (n < 4) {
        // Before: N = 2 and 3 failed with undici's raw stream error, on one connection.
        expect([n, r.status, r.body]).toEqual([n, 200, 'ok /x']);
        expect([n, seen.streams, seen.sessions]).toEqual([n, n + 1, n === 1 ? 1 : 2]);
      } else {
        expect([n, (r.error as MultilegError | undefined)?.code, seen.streams, seen.sessions]).toEqual([
          n,
          'MULTILEG_STREAM_REFUSED',
          4,
          2,
        ]);
      }
      // A connection that refused a stream twice takes nothing more: the next request goes on a new one.
      const next = await settle(`${origin}/next`, { dispatcher: agent });
      expect([n, next.status ?? next.error?.code]).toEqual([n, 200]);
      expect([n, seen.sessions]).toEqual([n, n === 1 ? 1 : n === 4 ? 3 : 2]);
    }
  }, 30_000);

  it("C8/H1: REFUSED_STREAM on the NTLM AUTHENTICATE (twice: undici's retry too): the handshake starts over with a NEGOTIATE on a new connection — no AUTHENTICATE made for the old one goes there — and every request queued behind it is answered, none lost or shown a 401", async () => {
    let authenticates = 0;
    const { origin, seen } = await refusingOrigin((leg) => leg === 3 && ++authenticates <= 2, true);
    const agent = ntlmAgentAt(origin, closers);
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) => settle(`${origin}/r/${i}`, { dispatcher: agent })),
    );
    // Before: the leader failed with undici's raw stream error.
    expect(results.map((r) => r.status ?? r.error?.code)).toEqual(Array(6).fill(200));
    expect(results.map((r) => r.body)).toEqual(Array.from({ length: 6 }, (_, i) => `ok /r/${i}`));
    // Two connections: on each, the first NTLM leg is a NEGOTIATE, and an AUTHENTICATE follows one.
    expect(seen.sessions).toBe(2);
    for (const legs of seen.legs) {
      const ntlmLegs = legs.filter((l) => l !== 0);
      expect(ntlmLegs[0], JSON.stringify(seen.legs)).toBe(1);
    }
    // The refused AUTHENTICATE went twice on the first connection only (undici's own retry there).
    expect(seen.legs[0]!.filter((l) => l === 3)).toEqual([3, 3]);
    expect(seen.legs[1]!.filter((l) => l === 3)).toEqual([3]);
  }, 30_000);

  it('R1/R4/C8: an NTLM origin that refuses every AUTHENTICATE: every request queued behind the handshake ends typed and bounded (none hangs, none gets a raw stream error), and no connection gets an AUTHENTICATE before its own NEGOTIATE', async () => {
    const { origin, seen } = await refusingOrigin((leg) => leg === 3, true);
    const agent = ntlmAgentAt(origin, closers, { limits: { queueTimeout: 5_000 } });
    const n = 6;
    const started = Date.now();
    const results = await Promise.all(
      Array.from({ length: n }, (_, i) => settle(`${origin}/r/${i}`, { dispatcher: agent })),
    );
    const codes = results.map((r) => r.error?.code ?? r.status);
    // Before: the leader (and each waiter that led after it) got ERR_HTTP2_STREAM_ERROR.
    for (const code of codes) expect(['MULTILEG_STREAM_REFUSED', 'MULTILEG_RELOCATION_LIMIT']).toContain(code);
    expect(codes).toContain('MULTILEG_STREAM_REFUSED');
    expect(Date.now() - started).toBeLessThan(5_000);
    for (const legs of seen.legs) expect(legs.filter((l) => l !== 0)[0], JSON.stringify(seen.legs)).toBe(1);
    // R4: bounded whatever the queue: a connection per move the relocation limit allows (4), each
    // a NEGOTIATE and an AUTHENTICATE refused twice; 2 connections for a lone request.
    expect(seen.sessions).toBeLessThanOrEqual(5);
    expect(seen.streams).toBeLessThanOrEqual(3 * seen.sessions);
  }, 30_000);

  it('R1/C8: a burst of 6 NTLM requests whose every AUTHENTICATE the origin refuses: each ends in StreamRefusedError — the leader counting its own refusals, the others those of the handshake they waited behind — none in RelocationLimitError, on 2 connections and 6 streams (were 5 and 15)', async () => {
    const { origin, seen } = await refusingOrigin((leg) => leg === 3, true);
    const agent = ntlmAgentAt(origin, closers, { limits: { queueTimeout: 5_000 } });
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) => settle(`${origin}/r/${i}`, { dispatcher: agent })),
    );
    // Before: 2 StreamRefusedError and 4 RelocationLimitError ("connections keep ending or refusing
    // it"): the requests behind the refused handshake moved to a connection each time, and led
    // handshakes of their own until the relocation limit.
    const errors = results.map((r) => r.error as StreamRefusedError);
    for (const e of errors) expect(e).toBeInstanceOf(StreamRefusedError);
    // The leader: its AUTHENTICATE refused twice on each of 2 connections. Each other request: its
    // own streams never sent, the handshake it waited behind refused 4 times on the same 2.
    const counts = errors.map((e) => [e.refusals, e.handshakeRefusals, e.connections]);
    expect(counts.filter(([own]) => own! > 0)).toEqual([[4, 0, 2]]);
    expect(counts.filter(([own]) => own === 0)).toEqual(Array(5).fill([0, 4, 2]));
    const waiter = errors.find((e) => e.refusals === 0)!;
    expect(waiter.message).toContain(
      `${origin} refused the HTTP/2 streams of the handshake the GET waited behind 4 times on 2 connections before any response`,
    );
    expect(waiter.message).toContain('so it is safe to send again');
    expect(waiter.cause).toMatchObject({ code: 'ERR_HTTP2_STREAM_ERROR', http2ErrorCode: h2.NGHTTP2_REFUSED_STREAM });
    // Bounded, below what it cost before (5 connections, 15 streams): a NEGOTIATE and the
    // AUTHENTICATE twice (undici's retry) on each of 2 connections.
    expect([seen.sessions, seen.streams]).toEqual([2, 6]);
    expect(seen.legs).toEqual([
      [1, 3, 3],
      [1, 3, 3],
    ]);
  }, 30_000);

  it("C8/H1: an AUTHENTICATE refused as its connection ends (GOAWAY, or a close): undici's retry of it on the Client's new connection is stopped, and the handshake starts over there with a NEGOTIATE", async () => {
    for (const end of ['goaway', 'destroy'] as const) {
      let authenticates = 0;
      const { origin, seen } = await refusingOrigin(
        (leg) => leg === 3 && ++authenticates === 1,
        true,
        (session) => setImmediate(() => (end === 'goaway' ? session.close() : session.destroy())),
      );
      const agent = ntlmAgentAt(origin, closers);
      const results = await Promise.all(
        Array.from({ length: 3 }, (_, i) => settle(`${origin}/r/${i}`, { dispatcher: agent })),
      );
      expect([end, results.map((r) => r.status ?? r.error?.code)]).toEqual([end, [200, 200, 200]]);
      // No connection gets an AUTHENTICATE before its own NEGOTIATE (the refused one is the first's).
      for (const legs of seen.legs) expect([end, legs.filter((l) => l !== 0)[0]]).toEqual([end, 1]);
      expect([end, seen.sessions]).toEqual([end, 2]);
    }
  }, 30_000);

  it('R1/H5: an HTTP/2 forwarding proxy that refuses every stream: StreamRefusedError names the proxy, not the origin, after 4 streams on 2 proxy connections', async () => {
    let streams = 0;
    const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: false });
    server.on('stream', (stream) => {
      streams++;
      stream.on('error', () => {});
      stream.close(h2.NGHTTP2_REFUSED_STREAM);
    });
    const proxy = (await loopbackOrigin(server, closers)).replace('localhost', '127.0.0.1');
    const agent = new MultilegAgent({ proxy: { uri: proxy, connect: { ca: CA_CERT } } });
    closers.push(() => agent.destroy());
    const r = await settle('http://origin.test/x', { dispatcher: agent, method: 'POST', body: 'payload' });
    // Before: undici's raw stream error.
    expect(r.error).toBeInstanceOf(StreamRefusedError);
    expect(r.error).toMatchObject({ code: 'MULTILEG_STREAM_REFUSED', peer: proxy, refusals: 4, connections: 2 });
    expect(r.error?.message).toMatch(
      new RegExp(`^proxy ${proxy} refused the HTTP/2 stream of the POST 4 times on 2 connections`),
    );
    expect(streams).toBe(4);
  }, 30_000);
});
