/**
 * A request that chose its mechanism BEFORE setCredentials (or setProxyCredentials) and was still
 * waiting for leave to send the credentials (the credential proof's queue, R4) when the call came
 * is handed a ticket of the NEW credentials — while the mechanism it chose holds the old ones. No
 * Authorization (Proxy-Authorization) value carrying the old password may reach the wire after the
 * call (S6): the request's session retired at the call, so that leg goes nowhere and the request
 * moves to a new session, where it chooses again from the agent's current mechanisms.
 *
 * Guards: the gap is closed by the retirement, not by the exchange or the proof (disable
 * OriginPool.credentialsChanged's `s.apply({ type: 'closed' })` and each test fails: one old value
 * is written after the call).
 */

import { afterEach, describe, expect, it } from 'vitest';
import { ALICE, basic, behindBasicProxy, getUser, type Rig, rig, sleep, until, wire } from './helpers.ts';

let r: Rig | undefined;
afterEach(async () => {
  await r?.close();
  r = undefined;
});

const ROTATED = { ...ALICE, password: 'rotated' };
const BURST = 5;

describe('S6/R4: a request waiting for its leave at setCredentials sends nothing of the old password', () => {
  it.each([
    ['HTTP/2', false],
    ['HTTP/1.1', true],
  ])(
    'S6/R4: %s, Basic: a burst waiting for its leave behind the probe at the call sends 0 old Authorization values and ends 200 with the new one',
    async (_, h1) => {
      // The proof of the old password is past its freshness: the next handshake with it goes alone
      // (held here), and the burst's — Basic chosen unasked inside the space where it succeeded,
      // their header the old password — wait in the origin's proof queue for its outcome.
      let probes = 0;
      const delayMs = (q: { path: string; headers: Record<string, unknown> }): number => {
        if (q.headers.authorization !== basic(ALICE) || !q.path.includes('/probe')) return 0;
        probes += 1;
        return 300;
      };
      r = await rig({ schemes: ['Basic'], faults: { delayMs } }, { negotiate: false });
      const url = `${r.server.origin}/auth`;
      expect((await getUser(`${url}/warm`, r.agent, h1)).status).toBe(200);
      await sleep(1_100);
      const sent = wire('authorization');
      const probe = getUser(`${url}/probe`, r.agent, h1);
      await until(() => probes === 1);
      const burst = Array.from({ length: BURST }, (_, i) => getUser(`${url}/burst/${i}`, r!.agent, h1));
      await sleep(100);
      // Only the probe's old value went: the burst waits for its leave.
      expect(sent.values).toEqual([basic(ALICE)]);
      const before = sent.values.length;
      r.server.options.users = { ...r.server.options.users, [ALICE.username]: ROTATED.password };
      r.agent.setCredentials(ROTATED);
      const results = await Promise.all([probe, ...burst]);
      sent.stop();
      const after = sent.values.slice(before);
      // S6: not one value of the old password after the call.
      expect(after.filter((v) => v === basic(ALICE))).toHaveLength(0);
      expect(results).toEqual(Array.from({ length: BURST + 1 }, () => ({ status: 200, user: ALICE.username })));
    },
  );

  it('S6/R4/H5: forwarding proxy, Basic: requests whose Proxy-Authorization (old password) waits for leave at setProxyCredentials send 0 old values and end 200 with the new one', async () => {
    const old = basic({ username: 'proxyuser', password: 'proxypw' });
    const made = await behindBasicProxy((_, port) => [`http://localhost:${port}`]);
    r = made.rig;
    const px = made.proxy;
    const agent = made.agent;
    const url = `http://localhost:${r.server.port}/auth`;
    // The proxy asked for Basic once: new connections carry it unasked (adopted before their leave).
    expect((await getUser(`${url}/warm`, agent, true)).status).toBe(200);
    // Past the proof's freshness, the next password goes alone first and the rest wait for it.
    await sleep(1_100);
    let probes = 0;
    px.options.delayMs = (q) => {
      if (!q.target.includes('/probe') || q.proxyAuthorization !== old) return 0;
      probes += 1;
      return 300;
    };
    const sent = wire('proxy-authorization');
    const probe = getUser(`${url}/probe`, agent, true);
    await until(() => probes === 1);
    const burst = Array.from({ length: BURST }, (_, i) => getUser(`${url}/burst/${i}`, agent, true));
    await sleep(100);
    // Only the probe's old value went: the burst waits for its leave.
    expect(sent.values).toEqual([old]);
    const seen = px.exchanges.length;
    px.options.basicUsers = { proxyuser: 'rotated' };
    agent.setProxyCredentials({ username: 'proxyuser', password: 'rotated' });
    const results = await Promise.all([probe, ...burst]);
    sent.stop();
    // S6: the old value went once, before the call; never after it.
    expect(sent.values.filter((v) => v === old)).toHaveLength(1);
    expect(results).toEqual(Array.from({ length: BURST + 1 }, () => ({ status: 200, user: ALICE.username })));
    const burstAtProxy = px.exchanges.slice(seen).filter((e) => e.target.includes('/burst'));
    expect(burstAtProxy.filter((e) => e.status === 200 && e.proxyAuthorization)).toHaveLength(BURST);
  });
});
