/**
 * A CONNECT tunnel (an https origin through an http proxy) whose CONNECT carrying the OLD proxy
 * password is on the wire when setProxyCredentials is called (the proxy's password was just
 * rotated): the proxy's 407 to it is not every waiting request's ProxyAuthenticationError; the
 * tunnel starts over with the new credentials, once per tunnel attempt, through the proof of the
 * new ones (S6/R4/H5). A wrong new password is tried once, and its refusal is delivered.
 */
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import type { MultilegAgent } from '../src/index.ts';
import type { ReferenceProxy } from '../src/reference-server/index.ts';
import { ALICE, basic, behindBasicProxy, type Rig, until } from './helpers.ts';

let r: Rig | undefined;
afterEach(async () => {
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
