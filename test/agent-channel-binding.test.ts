import { afterEach, describe, expect, it } from 'vitest';
import { type Mechanism, ntlmMechanism } from '../src/index.ts';
import { ALICE, get, hasAuth, type Rig, rig } from './helpers.ts';

let r: Rig | undefined;
afterEach(async () => {
  await r?.close();
  r = undefined;
});

describe('channel bindings from the live TLS connection', () => {
  it('M1: the server checks tls-server-end-point bindings taken from each connection, including a second one', async () => {
    r = await rig({ mode: 'session', schemes: ['NTLM'], requireChannelBinding: true });
    const first = await get(r, '/auth/a');
    expect(first.status).toBe(200);
    // A new connection to the same server: TLS session resumption would hide the certificate.
    r.server.endSessions();
    const second = await get(r, '/auth/b');
    expect(second.status).toBe(200);
    expect(second.body.sessionId).not.toBe(first.body.sessionId);
    expect(r.agent.stats().handshakes).toBe(2);
  });

  it('M1: without the binding the same server refuses the handshake', async () => {
    const ntlm = ntlmMechanism(ALICE);
    const unbound: Mechanism = {
      ...ntlm,
      createContext: (leg) => {
        const context = ntlm.createContext(leg);
        return {
          get complete() {
            return context.complete;
          },
          step: (challenge, l) => context.step(challenge, { ...l, channelBinding: undefined }),
          finish: (challenge, l) => context.finish(challenge, l),
        };
      },
    };
    r = await rig(
      { mode: 'session', schemes: ['NTLM'], requireChannelBinding: true },
      { mechanisms: [unbound], negotiate: false },
    );
    const res = await get(r, '/auth/a');
    expect(res.status).toBe(401);
    expect(r.server.exchanges.at(-1)!.reason).toMatch(/bind/i);
  });

  it('M5: a first token bound to the channel waits for a new session to connect, then goes proactively (no bare request)', async () => {
    const ntlm = ntlmMechanism(ALICE);
    const firstLegBindings: Array<Buffer | undefined> = [];
    const bound: Mechanism = {
      ...ntlm,
      bindsFirstToken: true,
      createContext: (leg) => {
        const context = ntlm.createContext(leg);
        let first = true;
        return {
          get complete() {
            return context.complete;
          },
          step: (challenge, l) => {
            if (first) firstLegBindings.push(l.channelBinding);
            first = false;
            return context.step(challenge, l);
          },
          finish: (challenge, l) => context.finish(challenge, l),
        };
      },
    };
    r = await rig(
      { mode: 'session', schemes: ['NTLM'], requireChannelBinding: true },
      { mechanisms: [bound], negotiate: false },
    );
    expect((await get(r, '/auth/a')).status).toBe(200);
    r.server.endSessions();
    const second = await get(r, '/auth/b');
    expect(second.status).toBe(200);
    // The new session's first request carried the first token, made with that connection's binding.
    const onSecond = r.server.exchangesFor(second.body.sessionId);
    expect(onSecond.map((e) => [e.status, hasAuth(e.requestHeaders)])).toEqual([
      [401, true],
      [200, true],
    ]);
    expect(firstLegBindings).toHaveLength(2);
    expect(firstLegBindings.every((b) => b !== undefined && b.length > 0)).toBe(true);
  });
});
