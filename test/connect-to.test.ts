/**
 * The agent's `connectTo` (curl's --resolve and --connect-to for the library): asked before each
 * connection the agent makes, it moves only the address; what it returns is checked.
 */
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConnectTarget } from '../src/connect-to.ts';
import { ConfigError } from '../src/errors.ts';
import { MultilegAgent } from '../src/index.ts';
import {
  CA_CERT,
  type ReferenceProxy,
  type ReferenceServer,
  startReferenceProxy,
  startReferenceServer,
} from '../src/reference-server/index.ts';
import { ALICE } from './helpers.ts';

describe('connectTo', () => {
  let server: ReferenceServer;
  let proxy: ReferenceProxy;
  let port: number;
  beforeAll(async () => {
    server = await startReferenceServer({ mode: 'session' });
    proxy = await startReferenceProxy({});
    port = Number(new URL(server.origin).port);
  });
  afterAll(async () => {
    await proxy.close();
    await server.close();
  });

  it("S1: only the address changes: the origin is asked for (via 'origin'), the server sees the URL's host, credentials go to the URL's origin (trusted by name), the certificate is checked for that name", async () => {
    const asked: ConnectTarget[] = [];
    const agent = new MultilegAgent({
      credentials: ALICE,
      trustedOrigins: [`https://intranet.test:${port}`, `https://localhost:1`],
      connect: { ca: CA_CERT },
      connectTo: (target) => {
        asked.push(target);
        return target.hostname === 'intranet.test' ? { addresses: ['127.0.0.1'] } : { port };
      },
    });
    try {
      // The certificate names localhost and 127.0.0.1, not intranet.test: the check is the URL's name's.
      const wrong = await request(`https://intranet.test:${port}/x`, { dispatcher: agent }).catch((e: Error) => e);
      expect((wrong as { code?: string }).code).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
      // localhost:1 is the server's port: NTLM as alice, the server sees localhost:1.
      const r = await request('https://localhost:1/x', { dispatcher: agent });
      expect(r.statusCode).toBe(200);
      expect(JSON.parse(await r.body.text()).user).toBe('EXAMPLE\\alice');
      expect(server.exchanges.at(-1)?.authority).toBe('localhost:1');
      expect(asked.map((t) => `${t.via} ${t.hostname}:${t.port}`)).toEqual([
        `origin intranet.test:${port}`,
        'origin localhost:1',
      ]);
    } finally {
      await agent.close();
    }
  });

  it("H5: a proxy's own connection is asked for (via 'proxy'), and a tunnel's CONNECT (via 'tunnel'): it goes where the route says, TLS inside still the URL's", async () => {
    const asked: string[] = [];
    const agent = new MultilegAgent({
      connect: { ca: CA_CERT },
      proxy: { uri: proxy.origin, connect: { ca: CA_CERT } },
      connectTo: ({ hostname, port: p, via }) => {
        asked.push(`${via} ${hostname}:${p}`);
        if (via === 'proxy') return { addresses: ['127.0.0.1'] };
        if (via === 'tunnel' && p === 1) return { hostname: 'localhost', port };
        return undefined;
      },
    });
    try {
      const r = await request('https://localhost:1/public/x', { dispatcher: agent });
      expect(r.statusCode).toBe(200);
      await r.body.text();
      expect(proxy.exchanges.at(-1)?.target).toBe(`localhost:${port}`);
      expect(server.exchanges.at(-1)?.authority).toBe('localhost:1');
      expect(asked).toEqual(['tunnel localhost:1', `proxy localhost:${proxy.port}`]);
    } finally {
      await agent.close();
    }
  });

  it('a connectTo that is not a function, or a route the socket would misread, is a ConfigError naming connectTo (the request is not sent elsewhere)', async () => {
    expect(() => new MultilegAgent({ connectTo: 'localhost' as never })).toThrow(ConfigError);
    for (const route of [{ port: 0 }, { port: 70000 }, { addresses: [] }, { addresses: ['[::1]'] }, { hostname: '' }]) {
      const agent = new MultilegAgent({ connect: { ca: CA_CERT }, connectTo: () => route });
      try {
        const err = await request(`${server.origin}/public/x`, { dispatcher: agent }).catch((e: Error) => e);
        expect(err, JSON.stringify(route)).toBeInstanceOf(ConfigError);
        expect((err as ConfigError).message).toMatch(/^connectTo \(for origin localhost:\d+\)/);
      } finally {
        await agent.close();
      }
    }
  });

  it("a connectTo that answers with a promise, or with a field a route does not have (a misspelt `host`), is a ConfigError, not a connection to the URL's own host (review r41)", async () => {
    const routes: Array<[unknown, RegExp]> = [
      [new Promise(() => {}), /returned a promise: connectTo must answer at once/],
      [Promise.resolve({ hostname: '127.0.0.1' }), /returned a promise/],
      [{ host: '127.0.0.1' }, /returned host: a route has only hostname, port and addresses/],
      [{ hostname: '127.0.0.1', Port: 1 }, /returned Port:/],
    ];
    for (const [route, message] of routes) {
      const agent = new MultilegAgent({ connect: { ca: CA_CERT }, connectTo: () => route as never });
      try {
        // Before: each was read as "no change", and the request went to the URL's host (200).
        const err = await request(`${server.origin}/public/x`, { dispatcher: agent }).catch((e: Error) => e);
        expect(err, String(message)).toBeInstanceOf(ConfigError);
        expect((err as ConfigError).message).toMatch(message);
      } finally {
        await agent.close();
      }
    }
  });
});
