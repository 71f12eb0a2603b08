/**
 * The agent's `cookies` option (a CookieStore): asked for each leg's Cookie header and told each
 * response head's Set-Cookie, a handshake's 401s included; its failures are typed (CookieStoreError)
 * or a warning, never a request sent without what it asked for. No diagnostics subscriber here, so
 * that requests to the authenticated session take the fast path (C2), which must ask and tell it too.
 */
import { once } from 'node:events';
import { createServer as createHttpsServer } from 'node:https';
import { createServer, type Socket } from 'node:net';
import { CookieJar } from 'tough-cookie';
import { interceptors, request, upgrade } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, type CookieStore, CookieStoreError, MultilegAgent } from '../src/index.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { type CookieServer, c, pairs, SID, startCookieServer } from './cookie-server.ts';
import { ALICE, loopbackOrigin } from './helpers.ts';

/** A jar that holds cookies by name for any URL, and records what it was asked and told. */
class RecordingStore implements CookieStore {
  readonly jar = new Map<string, string>();
  readonly asked: string[] = [];
  readonly told: Array<[url: string, values: readonly string[]]> = [];
  cookieHeader(url: string): string | undefined {
    this.asked.push(url);
    return this.jar.size > 0 ? [...this.jar].map(([k, v]) => `${k}=${v}`).join('; ') : undefined;
  }
  setCookies(url: string, values: readonly string[]): void {
    this.told.push([url, values]);
    for (const v of values) {
      const [pair] = v.split(';');
      const eq = pair!.indexOf('=');
      this.jar.set(pair!.slice(0, eq), pair!.slice(eq + 1));
    }
  }
}

let server: CookieServer | undefined;
let agent: MultilegAgent | undefined;
afterEach(async () => {
  await agent?.destroy().catch(() => {});
  await server?.close();
  agent = server = undefined;
});

async function ntlmAgent(cookies: CookieStore) {
  server = await startCookieServer();
  agent = new MultilegAgent({
    credentials: ALICE,
    trustedOrigins: [server.origin],
    negotiate: false,
    proxy: false,
    cookies,
  });
  return { server, agent };
}

describe('MultilegAgent cookies option', () => {
  it("is asked for every leg and told every head: a cookie set on a 401 goes on the handshake's next leg; the caller's own Cookie follows the jar's in one header", async () => {
    const store = new RecordingStore();
    const { server, agent } = await ntlmAgent(store);
    const res = await request(`${server.origin}/auth/x?q=1`, { dispatcher: agent, headers: { cookie: 'mine=1' } });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    const host = new URL(server.origin).host;
    expect(server.to(host, '/auth/x').map((s) => [s.auth, s.cookie])).toEqual([
      [undefined, 'mine=1'],
      ['NTLM/1', 'lb=node1; mine=1'],
      ['NTLM/3', 'lb=node1; leg=challenge; mine=1'],
    ]);
    // Each leg's URL, origin, path and query; each head's Set-Cookie, the 401s' too.
    expect(store.asked).toEqual(Array(3).fill(`${server.origin}/auth/x?q=1`));
    expect(store.told.map(([, v]) => v)).toEqual([
      ['lb=node1; Path=/'],
      ['leg=challenge; Path=/'],
      [`${SID}; Path=/; HttpOnly`],
    ]);
  });

  it("S6: a request with its own Authorization (another identity) neither gets the agent's jar cookies nor adds its Set-Cookie to the jar; one with the agent's does", async () => {
    const store = new RecordingStore();
    const { server, agent } = await ntlmAgent(store);
    const res = await request(`${server.origin}/auth/agent`, { dispatcher: agent });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(store.jar.get('sid')).toBeDefined();
    const told = store.told.length;
    // Its own Basic credentials: the server sees no cookie of the agent's login.
    const own = await request(`${server.origin}/public/own?${c('own=1; Path=/')}`, {
      dispatcher: agent,
      headers: { authorization: `Basic ${Buffer.from('bob:bobpw').toString('base64')}`, cookie: 'mine=1' },
    });
    await own.body.dump();
    const host = new URL(server.origin).host;
    expect(server.to(host, '/public/own').map((s) => s.cookie)).toEqual(['mine=1']);
    expect(store.told).toHaveLength(told);
    // The agent's own identity still gets them.
    const again = await request(`${server.origin}/public/agent`, { dispatcher: agent });
    await again.body.dump();
    expect(pairs(server.to(host, '/public/agent').at(-1)!.cookie)).toContain(SID);
    expect(store.jar.has('own')).toBe(false);
  });

  it('C2: with a jar, requests to the authenticated session (the fast path) ask it for their Cookie and tell it their Set-Cookie', async () => {
    const store = new RecordingStore();
    const { server, agent } = await ntlmAgent(store);
    for (const path of ['/auth/one', '/auth/two']) {
      const res = await request(`${server.origin}${path}`, { dispatcher: agent, headers: { cookie: 'mine=1' } });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    const two = server.to(new URL(server.origin).host, '/auth/two');
    expect(two.map((s) => [s.auth, pairs(s.cookie)])).toEqual([
      [undefined, [SID, 'lb=node1', 'leg=challenge', 'mine=1'].sort()],
    ]);
    expect(store.asked.at(-1)).toBe(`${server.origin}/auth/two`);
    // The second 200's Set-Cookie was told too, for its own URL.
    expect(store.told.at(-1)).toEqual([`${server.origin}/auth/two`, [`${SID}; Path=/; HttpOnly`]]);
    expect(agent.stats().handshakes).toBe(1);

    // A jar that throws there: CookieStoreError, unsent.
    const failure = new Error('store down');
    store.cookieHeader = () => {
      throw failure;
    };
    const err = await request(`${server.origin}/auth/three`, { dispatcher: agent }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CookieStoreError);
    expect((err as CookieStoreError).cause).toBe(failure);
    expect(server.to(new URL(server.origin).host, '/auth/three')).toEqual([]);
  });

  it('a cookieHeader that throws fails the request with CookieStoreError, unsent; a setCookies that throws is a process warning, and the response is delivered', async () => {
    const failure = new Error('store down');
    const { server, agent } = await ntlmAgent({
      cookieHeader: () => {
        throw failure;
      },
      setCookies: () => {},
    });
    const err = await request(`${server.origin}/public/x`, { dispatcher: agent }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CookieStoreError);
    expect((err as CookieStoreError).code).toBe('MULTILEG_COOKIE_STORE');
    expect((err as CookieStoreError).cause).toBe(failure);
    expect(server.seen).toEqual([]);
    await agent.destroy();
    await server.close();

    const telling = await ntlmAgent({
      cookieHeader: () => undefined,
      setCookies: () => {
        throw new Error('full');
      },
    });
    const warned = once(process, 'warning');
    const res = await request(`${telling.server.origin}/public/y?c=a%3D1`, { dispatcher: telling.agent });
    expect(res.statusCode).toBe(200);
    expect(((await res.body.json()) as { path: string }).path).toBe('/public/y');
    const [warning] = (await warned) as [Error & { code?: string }];
    expect(warning.code).toBe('MULTILEG_COOKIE_STORE_THREW');
  });

  it('H5: a request that fails before it is written through a forwarding proxy (the jar threw; a header undici refuses) leaves no connection to the proxy open once the agent is destroyed', async () => {
    const proxy = createServer((s) => s.on('error', () => {}));
    proxy.listen(0, '127.0.0.1');
    await once(proxy, 'listening');
    const uri = `http://127.0.0.1:${(proxy.address() as { port: number }).port}`;
    const throwing: CookieStore = {
      cookieHeader: () => {
        throw new Error('store down');
      },
      setCookies: () => {},
    };
    try {
      for (const [cookies, headers] of [
        [throwing, {}],
        [undefined, { 'x-bad': 'a\u20ac' }],
      ] as const) {
        const connected = once(proxy, 'connection') as Promise<[Socket]>;
        const a = new MultilegAgent({ proxy: uri, negotiate: false, ...(cookies ? { cookies } : {}) });
        const err = await request('http://www.corp.co.uk/x', { dispatcher: a, headers }).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(cookies ? CookieStoreError : Error);
        await a.destroy();
        // The connection opened for the session's first request is ended with it (it was left
        // open, and the process with it: this wait never ended).
        const [socket] = await connected;
        if (!socket.destroyed) await once(socket, 'close');
      }
    } finally {
      proxy.close();
    }
  });

  it('a cookies option that is not a store is a ConfigError naming it', () => {
    for (const cookies of [{}, { cookieHeader: () => undefined }, 'jar', null])
      expect(() => new MultilegAgent({ cookies: cookies as unknown as CookieStore })).toThrow(ConfigError);
    expect(() => new MultilegAgent({ cookies: {} as unknown as CookieStore })).toThrow(/cookieHeader\(url\)/);
  });
});

describe("the jar behind undici's dns interceptor", () => {
  it("S1/S6: behind undici's dns interceptor the jar is asked and told for the name the caller gave, not the address it resolved: one site's session cookie does not go to another name at that address (a shared front end), for requests and upgrades", async () => {
    // One https server answering for two names at one address (a CDN, virtual hosts): a.test logs in.
    const seen: string[] = [];
    const https = createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, (req, res) => {
      seen.push(`${req.headers.host?.split(':')[0]} ${req.headers.cookie ?? '-'}`);
      const login = req.headers.host?.startsWith('a.test') ? { 'set-cookie': 'sid=alice-S3CRET; Secure; Path=/' } : {};
      res.writeHead(200, { 'content-length': '0', ...login }).end();
    });
    https.on('upgrade', (req, socket: Socket) => {
      seen.push(`${req.headers.host?.split(':')[0]} upgrade ${req.headers.cookie ?? '-'}`);
      socket.end('HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n');
    });
    const closers: Array<() => Promise<unknown>> = [];
    const port = new URL(await loopbackOrigin(https, closers)).port;
    const jar = new CookieJar();
    const store: CookieStore = {
      cookieHeader: (url) => jar.getCookieStringSync(url) || undefined,
      setCookies: (url, values) => {
        for (const v of values) jar.setCookieSync(v, url);
      },
    };
    // (The test certificate names localhost: the names' certificate is taken as checked.)
    agent = new MultilegAgent({ connect: { ca: CA_CERT, checkServerIdentity: () => undefined }, cookies: store });
    const viaDns = agent.compose(
      interceptors.dns({
        lookup: (_origin, _opts, cb) => cb(null, [{ address: '127.0.0.1', family: 4, ttl: 60_000 }]),
      }),
    );
    try {
      for (const host of ['a.test', 'b.test', 'a.test']) {
        const res = await request(`https://${host}:${port}/x`, { dispatcher: viaDns });
        await res.body.dump();
      }
      for (const host of ['b.test', 'a.test']) {
        const { socket } = await upgrade(`https://${host}:${port}/ws`, { dispatcher: viaDns, protocol: 'x' });
        socket.destroy();
      }
      // Before: the jar was asked for https://127.0.0.1:PORT/x, and b.test got a.test's sid.
      expect(seen).toEqual([
        'a.test -',
        'b.test -',
        'a.test sid=alice-S3CRET',
        'b.test upgrade -',
        'a.test upgrade sid=alice-S3CRET',
      ]);
      expect(jar.getCookieStringSync(`https://a.test:${port}/`)).toBe('sid=alice-S3CRET');
    } finally {
      for (const close of closers) await close();
    }
  });
});
