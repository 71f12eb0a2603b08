/**
 * A CONNECT tunnel (an https origin through an http proxy) whose CONNECT carrying the OLD proxy
 * password is on the wire when setProxyCredentials is called (the proxy's password was just
 * rotated): the proxy's 407 to it is not every waiting request's ProxyAuthenticationError; the
 * tunnel starts over with the new credentials, once per tunnel attempt, through the proof of the
 * new ones (S6/R4/H5). A wrong new password is tried once, and its refusal is delivered. A proxy
 * that keeps its connection open after that 407 (as Squid does) has it closed when the tunnel
 * starts over (R1/H5).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { MultilegAgent } from '../src/index.ts';
import type { ReferenceProxy } from '../src/reference-server/index.ts';
import { ALICE, basic, behindBasicProxy, type Rig, rig, until } from './helpers.ts';
import { keptAliveBasicProxy } from './hostile-proxy.ts';

let r: Rig | undefined;
/** More to close after a test (agents and proxies of its own). */
const cleanup: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c().catch(() => {});
  await r?.close();
  r = undefined;
});

const OLD = basic({ username: 'proxyuser', password: 'proxypw' });

/** `n` concurrent GETs of `url/i` over HTTP/2: each gives its status and user, or its error's name. */
function burst(
  url: string,
  agent: MultilegAgent,
  n: number,
): Promise<Array<string | { status: number; user: string }>> {
  return Promise.all(
    Array.from({ length: n }, async (_, i) => {
      try {
        const res = await request(`${url}/${i}`, { dispatcher: agent });
        const body = (await res.body.json()) as { user: string };
        return { status: res.statusCode, user: body.user };
      } catch (err) {
        return (err as Error).name;
      }
    }),
  );
}

/**
 * The Basic proxy rig, its https origin reached through a tunnel: the proxy holds `ms` each CONNECT
 * whose Proxy-Authorization `holds` says (counted in `held`), and the test goes on once the first is held.
 */
async function setUp(holds: (proxyAuthorization: string | undefined) => boolean, ms = 200) {
  const made = await behindBasicProxy((origin) => [origin]);
  r = made.rig;
  const px = made.proxy;
  /** `seen`: every CONNECT's Proxy-Authorization (none: bare), in order of arrival. */
  const held = { count: 0, seen: [] as Array<string | undefined> };
  px.options.connectDelayMs = (c) => {
    held.seen.push(c.proxyAuthorization);
    if (!holds(c.proxyAuthorization)) return 0;
    held.count += 1;
    return ms;
  };
  return { agent: made.agent, proxy: made.proxy, url: `${made.rig.server.origin}/auth`, held };
}

/** The proxy's password, then the agent's, become `password`. */
function rotate(proxy: ReferenceProxy, agent: MultilegAgent, password: string): void {
  proxy.options.basicUsers = { proxyuser: 'rotated' };
  agent.setProxyCredentials({ username: 'proxyuser', password });
}

const connects = (proxy: ReferenceProxy) => proxy.exchanges.filter((e) => e.method === 'CONNECT');

describe('S6/R4/H5: a CONNECT with the old proxy password on the wire at setProxyCredentials', () => {
  it('S6/R4/H5: Basic proxy, a burst of 5 https requests waiting for the tunnel: the 407 to the old password starts the tunnel over with the new one, all end 200', async () => {
    const { agent, proxy, url, held } = await setUp((a) => a === OLD);
    const pending = burst(url, agent, 5);
    await until(() => held.count === 1);
    expect(held.count).toBe(1);
    rotate(proxy, agent, 'rotated');
    expect(await pending).toEqual(Array.from({ length: 5 }, () => ({ status: 200, user: ALICE.username })));
    // The old password went once (before the call); the new one was let through and never refused.
    // (The session whose tunnel was being made retired at the call, so the waiting requests went on
    // a new tunnel of their own, after the restarted one proved the new password.)
    expect(held.seen.filter((a) => a === OLD)).toHaveLength(1);
    const NEW = basic({ username: 'proxyuser', password: 'rotated' });
    expect(held.seen.filter((a) => a === NEW).length).toBeGreaterThanOrEqual(1);
    expect(held.seen.every((a) => a === undefined || a === OLD || a === NEW)).toBe(true);
    expect(connects(proxy).filter((e) => e.proxyAuthorization && e.status === 407)).toHaveLength(1);
  });

  it('R4/H5: a wrong new password is tried once, and its refusal reaches every waiting request', async () => {
    const { agent, proxy, url, held } = await setUp((a) => a === OLD);
    const pending = burst(url, agent, 5);
    await until(() => held.count === 1);
    expect(held.count).toBe(1);
    rotate(proxy, agent, 'mistyped');
    expect(await pending).toEqual(Array(5).fill('ProxyAuthenticationError'));
    // The old password once, the mistyped one once (the restart and the new tunnel share its proof).
    expect(held.seen.filter((a) => a === OLD)).toHaveLength(1);
    expect(held.seen.filter((a) => a === basic({ username: 'proxyuser', password: 'mistyped' }))).toHaveLength(1);
    expect(connects(proxy).filter((e) => e.proxyAuthorization && e.status === 407)).toHaveLength(2);
  });

  it('R4/H5: once per tunnel attempt: a restart whose new password was replaced again while on the wire gets its refusal', async () => {
    const second = basic({ username: 'proxyuser', password: 'second' });
    const { agent, proxy, url, held } = await setUp((a) => a === OLD || a === second);
    const pending = burst(url, agent, 1);
    await until(() => held.count === 1);
    proxy.options.basicUsers = { proxyuser: 'second' };
    agent.setProxyCredentials({ username: 'proxyuser', password: 'second' });
    await until(() => held.count === 2);
    expect(held.count).toBe(2);
    proxy.options.basicUsers = { proxyuser: 'third' };
    agent.setProxyCredentials({ username: 'proxyuser', password: 'third' });
    expect(await pending).toEqual(['ProxyAuthenticationError']);
  });
});

describe('R1/H5: a tunnel that starts over leaves no proxy connection of its own open', () => {
  it('R1/H5: a proxy that keeps its connection open after a 407 (as Squid does): the refused connection of the old password is closed when the tunnel starts over on a new one', async () => {
    r = await rig({ mode: 'session', schemes: ['NTLM'] }, { negotiate: false });
    const OLD_PASSWORD = { username: 'proxyuser', password: 'proxypw' };
    const NEW_PASSWORD = { username: 'proxyuser', password: 'rotated' };
    let password = OLD_PASSWORD;
    const px = await keptAliveBasicProxy(
      r.server.port,
      () => basic(password),
      (a) => (a === basic(OLD_PASSWORD) ? 200 : 0),
    );
    cleanup.push(() => px.close());
    const agent = new MultilegAgent({
      credentials: ALICE,
      negotiate: false,
      connect: { ca: r.server.ca },
      trustedOrigins: [r.server.origin],
      allowBasicOverHttp: true,
      proxy: { uri: `http://127.0.0.1:${px.port}`, credentials: OLD_PASSWORD },
    });
    cleanup.push(() => agent.destroy());
    const pending = burst(`${r.server.origin}/auth`, agent, 3);
    await until(() => px.seen.includes(basic(OLD_PASSWORD)));
    password = NEW_PASSWORD;
    agent.setProxyCredentials(NEW_PASSWORD);
    expect(await pending).toEqual(Array.from({ length: 3 }, () => ({ status: 200, user: ALICE.username })));
    // The old password went once and was refused on a connection the proxy kept open.
    expect(px.seen.filter((a) => a === basic(OLD_PASSWORD))).toHaveLength(1);
    // Each connection the proxy still holds is a session's tunnel: none is a refused one left open.
    await until(() => px.open === agent.sessions().length);
    expect(px.open).toBe(agent.sessions().length);
    expect(px.open).toBeGreaterThan(0);
  });

  it('R1/H5: a client process that never closes the agent exits on its own after a tunnel started over past such a refused connection', async () => {
    r = await rig({ mode: 'session', schemes: ['NTLM'] }, { negotiate: false });
    const NEW = basic({ username: 'proxyuser', password: 'rotated' });
    // The proxy's password is already the new one; the old one's CONNECT is held while the child
    // replaces it (as it sees that CONNECT leave), so its refusal meets replaced credentials.
    const px = await keptAliveBasicProxy(
      r.server.port,
      () => NEW,
      (a) => (a !== undefined && a !== NEW ? 200 : 0),
    );
    cleanup.push(() => px.close());
    const script = `
      import { subscribe } from 'node:diagnostics_channel';
      import { request } from 'undici';
      import { MultilegAgent } from './src/index.ts';
      const agent = new MultilegAgent({ negotiate: false, allowBasicOverHttp: true,
        credentials: { username: 'EXAMPLE\\\\alice', password: 'alicepw' },
        connect: { ca: ${JSON.stringify(r.server.ca)} }, trustedOrigins: [${JSON.stringify(r.server.origin)}],
        proxy: { uri: 'http://127.0.0.1:${px.port}', credentials: { username: 'proxyuser', password: 'proxypw' } } });
      let replaced = false;
      subscribe('multileg:leg', (e) => {
        if (replaced || e.phase !== 'request' || e.method !== 'CONNECT' || e.proxyScheme !== 'Basic') return;
        replaced = true;
        setImmediate(() => agent.setProxyCredentials({ username: 'proxyuser', password: 'rotated' }));
      });
      const res = await request(${JSON.stringify(`${r.server.origin}/auth`)}, { dispatcher: agent });
      await res.body.text();
      console.log('STATUS ' + res.statusCode);
    `;
    // No agent.close(): the process must end once its request is answered (a socket left open would
    // keep it alive until the timeout kills it).
    const child = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], {
      cwd: new URL('..', import.meta.url).pathname,
      timeout: 20_000,
    }).catch((err: { killed?: boolean; signal?: string; stdout?: string }) => err);
    expect(child).not.toHaveProperty('killed', true);
    expect(child.stdout).toContain('STATUS 200');
    expect(px.seen.filter((a) => a !== undefined && a !== NEW)).toHaveLength(1);
    await until(() => px.open === 0);
    expect(px.open).toBe(0);
  });
});
