/**
 * undici 8's interceptors composed above the agent (trial u16): its shared cache must not keep a
 * response the agent authenticated below it as anyone's (S6), and its retry interceptor must be
 * able to retry the agent's own errors, whose password legs still count as any request's (R1, R4).
 */
import { Agent, cacheStores, type Dispatcher, fetch, interceptors, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { privateForSharedCache } from '../src/handshake/user-sink.ts';
import { MultilegAgent } from '../src/index.ts';
import type { IncomingRequestInfo } from '../src/reference-server/index.ts';
import { ALICE, type Rig, rig } from './helpers.ts';

const BOB = { username: 'EXAMPLE\\bob', password: 'bobpw' } as const;

let rg: Rig | undefined;
const others: Dispatcher[] = [];
afterEach(async () => {
  for (const d of others.splice(0)) await d.close().catch(() => {});
  await rg?.close();
  rg = undefined;
});

/** A server whose 200s carry `headers` (what a cache above the agent reads). */
async function cachingRig(schemes: string[], headers: (path: string) => Record<string, string>): Promise<Rig> {
  rg = await rig(
    {
      mode: 'session',
      schemes,
      faults: { responseHeaders: ({ status, request }) => (status === 200 ? headers(request.path) : undefined) },
    },
    { negotiate: false },
  );
  return rg;
}

interface Got {
  status: number;
  user: string | null | undefined;
  cacheControl: string | string[] | undefined;
  /** Requests the server saw for it (0: served from the cache). */
  wire: number;
}

async function get(d: Dispatcher, path: string, headers?: Record<string, string>): Promise<Got> {
  const server = rg!.server;
  const before = server.exchanges.length;
  const res = await request(`${server.origin}${path}`, { dispatcher: d, ...(headers ? { headers } : {}) });
  const body = (await res.body.json().catch(() => null)) as { user?: string | null } | null;
  return {
    status: res.statusCode,
    user: body?.user,
    cacheControl: res.headers['cache-control'],
    wire: server.exchanges.length - before,
  };
}

const basic = (u: { username: string; password: string }) =>
  `Basic ${Buffer.from(`${u.username}:${u.password}`).toString('base64')}`;

describe('S6: a shared cache above the agent (undici interceptors.cache)', () => {
  it('S6: an NTLM-authenticated 200 fresh by max-age is delivered private: not served again, nor to bob after setCredentials', async () => {
    const { agent } = await cachingRig(['NTLM'], () => ({ 'cache-control': 'max-age=60' }));
    const d = agent.compose(interceptors.cache({ store: new cacheStores.MemoryCacheStore() }));
    // The handshake's last leg, then the fast path on the authenticated session.
    const first = await get(d, '/data');
    expect(first).toMatchObject({ status: 200, user: 'EXAMPLE\\alice', cacheControl: 'max-age=60, private' });
    const again = await get(d, '/data');
    expect(again).toMatchObject({ status: 200, user: 'EXAMPLE\\alice', cacheControl: 'max-age=60, private' });
    expect(again.wire).toBeGreaterThan(0);
    agent.setCredentials(BOB, { cookies: null });
    const bob = await get(d, '/data');
    expect(bob).toMatchObject({ status: 200, user: 'EXAMPLE\\bob' });
    expect(bob.wire).toBeGreaterThan(0);
  });

  it('S6: a 200 cacheable only heuristically (Last-Modified) is not served to an anonymous agent, a plain Agent or fetch sharing the store', async () => {
    const { agent, server } = await cachingRig(['NTLM'], () => ({ 'last-modified': 'Wed, 01 Jan 2020 00:00:00 GMT' }));
    const store = new cacheStores.MemoryCacheStore();
    const first = await get(agent.compose(interceptors.cache({ store })), '/static.css');
    expect(first).toMatchObject({ status: 200, user: 'EXAMPLE\\alice', cacheControl: 'private' });
    const anon = new MultilegAgent({ negotiate: false, connect: { ca: server.ca } });
    const plain = new Agent({ connect: { ca: server.ca } });
    others.push(anon, plain);
    for (const d of [anon, plain]) {
      const got = await get(d.compose(interceptors.cache({ store })), '/static.css');
      expect(got.status).toBe(401);
      expect(got.wire).toBeGreaterThan(0);
    }
    const fetched = await fetch(`${server.origin}/static.css`, {
      dispatcher: anon.compose(interceptors.cache({ store })),
    });
    await fetched.arrayBuffer();
    expect(fetched.status).toBe(401);
  });

  it("S6: the agent's Basic response is delivered private; a request with the caller's own Authorization is not served it, and its response is left as sent", async () => {
    const { agent } = await cachingRig(['Basic'], () => ({ 'cache-control': 'max-age=60' }));
    const d = agent.compose(interceptors.cache({ store: new cacheStores.MemoryCacheStore() }));
    const first = await get(d, '/data');
    expect(first).toMatchObject({ status: 200, user: 'EXAMPLE\\alice', cacheControl: 'max-age=60, private' });
    // The cache sees the caller's own Authorization (RFC 9111 §3.5 is its to apply): nothing added.
    const own = await get(d, '/data', { authorization: basic(BOB) });
    expect(own).toMatchObject({ status: 200, user: 'EXAMPLE\\bob', cacheControl: 'max-age=60' });
    expect(own.wire).toBe(1);
  });

  it('S6: a response that allows shared caching (public) stays cacheable; one that says only max-age does not', async () => {
    const { agent } = await cachingRig(['NTLM'], (path) =>
      path === '/shared' ? { 'cache-control': 'public, max-age=60' } : { 'cache-control': 'max-age=60' },
    );
    const d = agent.compose(interceptors.cache({ store: new cacheStores.MemoryCacheStore() }));
    expect(await get(d, '/shared')).toMatchObject({ status: 200, cacheControl: 'public, max-age=60' });
    expect(await get(d, '/shared')).toMatchObject({ status: 200, cacheControl: 'public, max-age=60', wire: 0 });
    expect(await get(d, '/mine')).toMatchObject({ status: 200, cacheControl: 'max-age=60, private' });
    const again = await get(d, '/mine');
    expect(again.wire).toBeGreaterThan(0);
  });

  it("S6: public with Vary: Authorization (or Cookie) is still the identity's: delivered private (review r64); a 304 without Cache-Control is left as sent", async () => {
    const { agent } = await cachingRig(['NTLM'], (path) =>
      path === '/varied'
        ? { 'cache-control': 'public, max-age=60', vary: 'Authorization' }
        : { 'cache-control': 'public, max-age=60', vary: 'Accept-Encoding' },
    );
    const d = agent.compose(interceptors.cache({ store: new cacheStores.MemoryCacheStore() }));
    // Was 'public, max-age=60' and served again from the store (to bob, to a plain Agent: r64).
    expect(await get(d, '/varied')).toMatchObject({ status: 200, cacheControl: 'public, max-age=60, private' });
    expect((await get(d, '/varied')).wire).toBeGreaterThan(0);
    // A Vary on something else leaves public as it is.
    expect(await get(d, '/other')).toMatchObject({ status: 200, cacheControl: 'public, max-age=60' });
    expect(await get(d, '/other')).toMatchObject({ wire: 0 });
    // (Unit: the revalidation's 304 without Cache-Control adds nothing, or a shared cache refetches the entry each time.)
    expect(privateForSharedCache(304, { etag: '"v1"' })).toEqual({ etag: '"v1"' });
    // With Expires a 304 refreshes the stored entry: marked (review r65).
    expect(privateForSharedCache(304, { expires: 'Thu, 01 Jan 2099 00:00:00 GMT' })['cache-control']).toBe('private');
    expect(privateForSharedCache(200, { etag: '"v1"' })).toEqual({ etag: '"v1"', 'cache-control': 'private' });
    expect(privateForSharedCache(200, { 'cache-control': 'public', vary: 'accept, Cookie' })['cache-control']).toBe(
      'public, private',
    );
  });

  it('S6: markPrivate: false delivers the headers as sent (the command, whose -i shows the wire, sets it)', async () => {
    const { server } = await cachingRig(['NTLM'], () => ({ 'cache-control': 'max-age=60' }));
    const agent = new MultilegAgent({
      credentials: ALICE,
      negotiate: false,
      connect: { ca: server.ca },
      trustedOrigins: [server.origin],
      markPrivate: false,
    });
    others.push(agent);
    expect(await get(agent, '/data')).toMatchObject({
      status: 200,
      user: 'EXAMPLE\\alice',
      cacheControl: 'max-age=60',
    });
  });
});

/** An NTLM AUTHENTICATE (type 3): what carries the password. */
const isType3 = (info: IncomingRequestInfo): boolean =>
  String(info.headers.authorization ?? '').startsWith('NTLM TlRMTVNTUAAD');

describe("R1/R4: undici's retry interceptor above the agent", () => {
  /** An NTLM rig whose AUTHENTICATEs `stall(n)` (the n-th, from 0) are answered after the agent's handshakeTimeout. */
  async function stallingRig(stall: (n: number) => boolean): Promise<{ type3: () => number; outcomes: string[] }> {
    let n = 0;
    rg = await rig(
      {
        mode: 'session',
        schemes: ['NTLM'],
        faults: { delayMs: (info) => (isType3(info) && stall(n++) ? 1500 : 0) },
      },
      { negotiate: false, limits: { handshakeTimeout: 300 } },
    );
    const outcomes: string[] = [];
    rg.agent.onHandshake((r) => outcomes.push(r.outcome));
    return { type3: () => n, outcomes };
  }

  const retrying = (statusCodes: number[] = [503]) =>
    rg!.agent.compose(
      interceptors.retry({
        maxRetries: 4,
        minTimeout: 10,
        statusCodes,
        errorCodes: ['ECONNRESET', 'UND_ERR_SOCKET', 'MULTILEG_HANDSHAKE_TIMEOUT'],
      }),
    );

  it('R1/R4: a handshake timeout listed in errorCodes is retried (the agent did not abort as the caller)', async () => {
    const { type3, outcomes } = await stallingRig((n) => n === 0);
    const res = await request(`${rg!.server.origin}/data`, { dispatcher: retrying() });
    const body = (await res.body.json()) as { user: string };
    expect(res.statusCode).toBe(200);
    expect(body.user).toBe('EXAMPLE\\alice');
    expect(type3()).toBe(2);
    expect(outcomes).toEqual(['failed', 'session']);
  });

  it('R1/R4: retried handshake timeouts send the unanswered password at most twice in a row, as separate requests would', async () => {
    const { type3 } = await stallingRig(() => true);
    const res = await request(`${rg!.server.origin}/data`, { dispatcher: retrying() });
    await res.body.dump();
    // After the second, the credentials are held back: the retries go without them (the server's 401).
    expect(res.statusCode).toBe(401);
    expect(type3()).toBe(2);
  });

  it('R1/R4: a wrong password retried with statusCodes [401] goes on the wire once', async () => {
    rg = await rig(
      { mode: 'session', schemes: ['NTLM'] },
      { negotiate: false, credentials: { ...ALICE, password: 'WRONG' } },
    );
    let type3 = 0;
    rg.server.on('request', (info: IncomingRequestInfo) => {
      if (isType3(info)) type3 += 1;
    });
    const err = await request(`${rg.server.origin}/data`, { dispatcher: retrying([401]) }).then(
      () => undefined,
      (e: Error & { statusCode?: number }) => e,
    );
    expect(err?.statusCode).toBe(401);
    expect(type3).toBe(1);
  });
});
