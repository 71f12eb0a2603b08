/**
 * The authenticated fast path (FastExchange). A stream body on an authenticated session is written
 * as it comes (it is unlikely to be needed again), not read up to `maxReplayBodyBytes` first; and
 * C10 still holds when a replay is needed after all (the server forgot the session, T4): the kept copy goes on every leg. While someone
 * traces legs (`multileg:leg`), requests on an authenticated session are reported like every other.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { TeeBody } from '../src/body/replayable.ts';
import { BodyNotReplayableError, type CookieStore, LEG_CHANNEL, type LegEvent } from '../src/index.ts';
import { get, type Rig, rig } from './helpers.ts';

/**
 * A stream of `chunks` pieces of `size` bytes. After the first it waits for `gate` (at most `ms`);
 * `opened` tells whether the gate opened before the rest was produced.
 */
function gatedBody(chunks: number, size: number, gate: Promise<unknown>, ms: number) {
  const state = { opened: false };
  const stream = Readable.from(
    (async function* () {
      yield Buffer.alloc(size, 1);
      state.opened = await Promise.race([
        gate.then(() => true),
        new Promise<boolean>((resolve) => setTimeout(() => resolve(false), ms)),
      ]);
      for (let i = 1; i < chunks; i++) yield Buffer.alloc(size, 1);
    })(),
  );
  return { stream, state };
}

describe('the authenticated fast path: streaming uploads, diagnostics', () => {
  let r: Rig | undefined;
  afterEach(async () => {
    await r?.close();
    r = undefined;
  });

  /**
   * Uploads a 64 KiB stream whose rest waits for the server's first body bytes (at most 3 s):
   * whether the server had them before the rest was produced, and what it answered.
   */
  async function gatedUpload(rig: Rig, path: string) {
    const upload = gatedBody(4, 16 * 1024, once(rig.server, 'bodyChunk'), 3000);
    const res = await request(`${rig.server.origin}${path}`, {
      dispatcher: rig.agent,
      method: 'POST',
      body: upload.stream,
    });
    const { bodyLength } = (await res.body.json()) as { bodyLength: number };
    return { status: res.statusCode, bodyLength, streamed: upload.state.opened };
  }

  it.each([
    ['on an authenticated session', '/auth/warmup', '/auth/upload'],
    ['to an origin that has not challenged the agent', '/public/first', '/public/upload'],
  ])('C10: %s a stream body reaches the server before it has ended', async (_what, first, path) => {
    r = await rig({ mode: 'session' });
    expect((await get(r, first)).status).toBe(200);
    expect(await gatedUpload(r, path)).toEqual({ status: 200, bodyLength: 4 * 16 * 1024, streamed: true });
    // Sent once, bare.
    const uploads = r.server.exchanges.filter((e) => e.path === path);
    expect(uploads.map((e) => [e.status, e.bodyLength])).toEqual([[200, 4 * 16 * 1024]]);
  });

  it("C10, C2: with a cookie jar (the cookies option) a stream body on an authenticated session still reaches the server before it has ended, carrying the jar's Cookie", async () => {
    const asked: string[] = [];
    const cookies: CookieStore = {
      cookieHeader: (url) => {
        asked.push(url);
        return 'affinity=node1';
      },
      setCookies: () => {},
    };
    r = await rig({ mode: 'session' }, { cookies });
    expect((await get(r, '/auth/warmup')).status).toBe(200);
    expect(await gatedUpload(r, '/auth/upload')).toEqual({ status: 200, bodyLength: 4 * 16 * 1024, streamed: true });
    const uploads = r.server.exchanges.filter((e) => e.path === '/auth/upload');
    expect(uploads.map((e) => [e.status, e.requestHeaders.cookie])).toEqual([[200, 'affinity=node1']]);
    expect(asked.at(-1)).toBe(`${r.server.origin}/auth/upload`);
  });

  it.each([
    // The server forgot the session (T4): the bare 401, then the handshake's legs.
    ['that must be replayed after all (T4)', '/auth/warmup', true],
    // Not challenged so far, so written as it comes; /auth answers 401 and the handshake replays it.
    ['to an origin that then challenges', '/public/first', false],
  ])('C10: a streamed body %s goes whole on every leg', async (_what, first, forget) => {
    r = await rig({ mode: 'session' });
    expect((await get(r, first)).status).toBe(200);
    if (forget) r.server.forgetAuthentication();
    const res = await request(`${r.server.origin}/auth/again`, {
      dispatcher: r.agent,
      method: 'PUT',
      body: Readable.from([Buffer.alloc(1000, 2), Buffer.alloc(3000, 3)]),
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    const legs = r.server.exchanges.filter((e) => e.path === '/auth/again');
    expect(legs.map((e) => e.status)).toEqual([401, 401, 200]);
    expect(legs.every((e) => e.bodyLength === 4000)).toBe(true);
    expect(new Set(legs.map((e) => e.bodySha256)).size).toBe(1);
  });

  it('C10: a streamed body over the buffer limit that must be replayed fails with a typed error', async () => {
    r = await rig({ mode: 'session' }, { limits: { maxReplayBodyBytes: 1024 } });
    expect((await get(r, '/auth/warmup')).status).toBe(200);
    r.server.forgetAuthentication();
    const err = await request(`${r.server.origin}/auth/big`, {
      dispatcher: r.agent,
      method: 'POST',
      body: Readable.from([Buffer.alloc(4096, 1)]),
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BodyNotReplayableError);
  });

  it('C2/S2: requests on an authenticated session are reported on multileg:leg too, one event pair per wire request', async () => {
    r = await rig({ mode: 'session' });
    expect((await get(r, '/auth/first')).status).toBe(200);
    const legs: LegEvent[] = [];
    const onLeg = (m: unknown) => legs.push(m as LegEvent);
    subscribe(LEG_CHANNEL, onLeg);
    try {
      const results = await Promise.all([get(r, '/auth/a'), get(r, '/auth/b'), get(r, '/auth/c')]);
      expect(results.map((x) => x.status)).toEqual([200, 200, 200]);
    } finally {
      unsubscribe(LEG_CHANNEL, onLeg);
    }
    const requests = legs.filter((e) => e.phase === 'request');
    expect(requests.map((e) => [e.path, e.scheme]).sort()).toEqual([
      ['/auth/a', undefined],
      ['/auth/b', undefined],
      ['/auth/c', undefined],
    ]);
    expect(legs.filter((e) => e.phase === 'response').map((e) => e.phase === 'response' && e.status)).toEqual([
      200, 200, 200,
    ]);
    expect(r.agent.stats().handshakes).toBe(1);
  });
});

describe('TeeBody: a stream written as it comes, replayable from its copy', () => {
  const pieces = () => [Buffer.from('aaaa'), Buffer.from('bbbb'), Buffer.from('cccc')];
  const drain = async (body: unknown) => {
    // A replay of a body read to its end is one Buffer.
    if (Buffer.isBuffer(body)) return body.toString();
    const out: Buffer[] = [];
    for await (const chunk of body as AsyncIterable<Buffer>) out.push(chunk);
    return Buffer.concat(out).toString();
  };

  it('C10: a leg that stopped reading early (a 401 before the body was read) is replayed whole: the copy, then the rest of the source', async () => {
    const source = Readable.from(pieces());
    const body = new TeeBody(source, 1024);
    const first = body.take() as AsyncGenerator<Buffer>;
    expect((await first.next()).value?.toString()).toBe('aaaa');
    await first.return(undefined); // the leg ended after one chunk
    expect(source.destroyed).toBe(false);
    expect(body.replayable).toBe(true);
    expect(await drain(body.take())).toBe('aaaabbbbcccc');
    // Read in full within the limit: any number of legs more.
    expect(await drain(body.take())).toBe('aaaabbbbcccc');
  });

  it('C10/H1: a replay waits for the rest of the body and is written as one Buffer (undici destroys an HTTP/1.1 connection still writing an iterable when an early 401 ends the response)', async () => {
    const body = new TeeBody(Readable.from(pieces()), 1024);
    expect(body.settled).toBe(true);
    const first = body.take() as AsyncGenerator<Buffer>;
    expect((await first.next()).value?.toString()).toBe('aaaa');
    await first.return(undefined);
    expect(body.settled).toBe(false);
    await body.settle();
    expect(body.settled).toBe(true);
    const replay = body.take();
    expect(Buffer.isBuffer(replay) && replay.toString()).toBe('aaaabbbbcccc');
  });

  it('C10: past the limit the body is written once, and a second take is refused', async () => {
    const body = new TeeBody(Readable.from(pieces()), 6);
    expect(await drain(body.take())).toBe('aaaabbbbcccc');
    expect(body.replayable).toBe(false);
    expect(body.take()).toBeUndefined();
  });
});
