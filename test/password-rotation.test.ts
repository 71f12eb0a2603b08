/**
 * R4 for the agent's own credentials: a password changed on the server (rotated on the domain
 * controller while the process keeps the old one) or simply wrong must not be tried again and
 * again — an Active Directory account locks after a few bad attempts (often 5–10 in 30 minutes).
 * After a quiet spell, a burst's first handshake with a password goes alone; a refusal makes the
 * credentials unproved, the next handshake decides, and a second refusal in a row keeps them from
 * the origin (or proxy) for 30 s (src/session/credential-proof.ts).
 */
import { request } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  MechanismUnavailableError,
  type MultilegAgent,
  type MultilegAgentOptions,
  MultilegError,
  QueueTimeoutError,
} from '../src/index.ts';
import { ProxyAuthenticationError } from '../src/proxy/errors.ts';
import type { ReferenceProxy, ReferenceServerOptions } from '../src/reference-server/index.ts';
import { PROOF_FRESH_MS } from '../src/session/credential-proof.ts';
import { ALICE, behindBasicProxy, type Rig, rig, sleep } from './helpers.ts';

let r: Rig | undefined;
afterEach(async () => {
  vi.useRealTimers();
  await r?.close();
  r = undefined;
});

/** Long enough without a success that the proof is no longer fresh: a burst after a quiet spell. */
const quiet = () => sleep(PROOF_FRESH_MS + 100);
const noKerberos: MultilegAgentOptions['negotiate'] = {
  kerberos: { initializeClient: () => Promise.reject(new MechanismUnavailableError('Negotiate', 'not in this test')) },
};

/** {@link behindBasicProxy}, closed after each test. */
async function behindProxy(
  trustedOrigins: (origin: string, port: number) => string[],
  extra: MultilegAgentOptions = {},
): Promise<{ rig: Rig; proxy: ReferenceProxy; agent: MultilegAgent }> {
  const made = await behindBasicProxy(trustedOrigins, extra);
  r = made.rig;
  return made;
}

/** `n` concurrent GETs of `path/i`; each gives its status, or its error's name. */
function burst(url: string, agent: MultilegAgent, n: number, h1 = false): Promise<Array<number | string>> {
  return Promise.all(
    Array.from({ length: n }, async (_, i) => {
      try {
        const res = await request(`${url}/${i}`, { dispatcher: agent, ...(h1 ? { allowH2: false } : {}) } as never);
        await res.body.dump();
        return res.statusCode;
      } catch (err) {
        return (err as Error).name;
      }
    }),
  );
}

/** The password the server knows for alice changes; the agent keeps the old one. */
function rotate(rg: Rig): void {
  rg.server.options.users = { ...rg.server.options.users, 'EXAMPLE\\alice': 'rotated' };
}

describe('R4: a changed password is not tried again and again (account lockout)', () => {
  // [what, server, agent, HTTP/1.1 only, wrong-password attempts of the first burst before the fix]
  const cases: Array<[string, ReferenceServerOptions, Partial<MultilegAgentOptions>, boolean, number]> = [
    [
      'NTLM, session mode, a new HTTP/2 session',
      { mode: 'session', schemes: ['NTLM'] },
      { negotiate: false },
      false,
      2,
    ],
    ['NTLM, session mode over HTTP/1.1', { mode: 'session', schemes: ['NTLM'] }, { negotiate: false }, true, 200],
    [
      'NTLM inside Negotiate, per-request mode',
      { mode: 'per-request', schemes: ['Negotiate'] },
      { negotiate: noKerberos },
      false,
      200,
    ],
    [
      'NTLM at a server without Persistent-Auth',
      { mode: 'per-request', schemes: ['NTLM'], persistentAuthFalseHeader: false },
      { negotiate: false },
      false,
      10,
    ],
    ['Digest', { schemes: ['Digest'] }, { negotiate: false }, false, 400],
    ['Basic', { schemes: ['Basic'] }, { negotiate: false }, false, 200],
  ];

  it.each(cases)(
    'R4: %s: after the password changed, a burst of 200 tries the old one at most twice, and then not at all for 30 s',
    async (_, server, agent, h1, before) => {
      r = await rig(server, agent);
      const url = `${r.server.origin}/auth`;
      expect(await burst(`${url}/warm`, r.agent, 20, h1)).toEqual(Array(20).fill(200));
      rotate(r);
      r.server.endSessions();
      await quiet();
      r.server.reset();
      expect(await burst(`${url}/a`, r.agent, 200, h1)).toEqual(Array(200).fill(401));
      const wrong = () => r!.server.exchanges.filter((e) => e.outcome === 'rejected').length;
      // Before: `before` wrong-password attempts for this burst (once per request or connection).
      expect(before).toBeGreaterThan(1);
      expect(wrong()).toBeGreaterThanOrEqual(1);
      expect(wrong()).toBeLessThanOrEqual(2);
      expect(r.agent.handshakes().filter((h) => h.failure === 'refused').length).toBeLessThanOrEqual(2);
      // Refused twice in a row: the next burst and single requests go without the credentials and
      // get the server's own 401 (as when a password is wrong from the start).
      r.server.reset();
      expect(await burst(`${url}/b`, r.agent, 200, h1)).toEqual(Array(200).fill(401));
      for (let i = 0; i < 5; i++) expect(await burst(`${url}/c${i}`, r.agent, 1, h1)).toEqual([401]);
      expect(wrong()).toBe(0);
      expect(r.server.exchanges.every((e) => e.requestHeaders.authorization === undefined)).toBe(true);
    },
  );

  it('R4: a resource refused by its ACL, then a success elsewhere: nothing lasting, the credentials still go', async () => {
    r = await rig({ schemes: ['Basic'] }, { negotiate: false });
    const url = r.server.origin;
    // One protection space, /auth/ (S1: Basic goes unasked only inside it), and /denied/ outside it.
    expect(await burst(`${url}/auth`, r.agent, 5)).toEqual(Array(5).fill(200));
    expect(await burst(`${url}/denied`, r.agent, 1)).toEqual([401]);
    expect(await burst(`${url}/auth`, r.agent, 1)).toEqual([200]);
    r.server.reset();
    expect(await burst(`${url}/auth`, r.agent, 50)).toEqual(Array(50).fill(200));
    expect(r.server.exchanges.map((e) => e.outcome)).toEqual(Array(50).fill('accepted'));
  });

  it('R4: two refusals in a row with no success between are taken as the credentials refused: 30 s without them (the safe side)', async () => {
    r = await rig({ schemes: ['Basic'] }, { negotiate: false });
    const url = r.server.origin;
    expect(await burst(`${url}/auth/warm`, r.agent, 5)).toEqual(Array(5).fill(200));
    expect(await burst(`${url}/denied/a`, r.agent, 1)).toEqual([401]);
    expect(await burst(`${url}/denied/b`, r.agent, 1)).toEqual([401]);
    r.server.reset();
    // The password is right, but two refusals in a row look like a wrong one: no credentials now.
    expect(await burst(`${url}/auth/after`, r.agent, 3)).toEqual(Array(3).fill(401));
    expect(r.server.exchanges.map((e) => e.outcome)).toEqual(Array(3).fill('unauthenticated'));
  });

  it('R4: a wrong password sent as NTLM inside Negotiate (no Kerberos ticket) is still kept back twice as long with each refusal in a row (30 s, then 1 min), unlike a refused ticket', async () => {
    r = await rig(
      { mode: 'per-request', schemes: ['Negotiate'] },
      { negotiate: noKerberos, credentials: { ...ALICE, password: 'wrong' } },
    );
    // Only Date is faked: the wait is read from it; sockets and undici's timers run as ever.
    vi.useFakeTimers({ toFake: ['Date'] });
    const url = `${r.server.origin}/auth`;
    const refusals = () => r!.server.exchanges.filter((e) => e.outcome === 'rejected').length;
    /** One request (the server's 401 either way): whether the password went (and was refused). */
    const tried = async () => {
      const before = refusals();
      expect(await burst(url, r!.agent, 1)).toEqual([401]);
      return refusals() > before;
    };
    expect(await tried()).toBe(true);
    vi.setSystemTime(Date.now() + 30_000);
    expect(await tried()).toBe(true);
    vi.setSystemTime(Date.now() + 30_000);
    expect(await tried()).toBe(false);
    vi.setSystemTime(Date.now() + 30_000);
    expect(await tried()).toBe(true);
    expect(r.agent.handshakes().map((h) => [h.failure, h.fallbackReason !== undefined])).toEqual(
      Array(3).fill(['refused', true]),
    );
  });

  it('R4/C4: a burst of 200 with the right password after a quiet spell: one request proves it, the rest go on side by side', async () => {
    r = await rig({ mode: 'per-request', schemes: ['Negotiate'] }, { negotiate: noKerberos });
    const url = `${r.server.origin}/auth`;
    expect(await burst(`${url}/warm`, r.agent, 1)).toEqual([200]);
    await quiet();
    expect(await burst(`${url}/a`, r.agent, 200)).toEqual(Array(200).fill(200));
    // Spread over sessions as before (C4): the proof held back only the first handshake's followers.
    expect(new Set(r.agent.handshakes().map((h) => h.sessionId)).size).toBeGreaterThan(1);
  });

  it('R1: a request waiting for another request to prove the credentials waits at most queueTimeout (QueueTimeoutError)', async () => {
    r = await rig(
      { schemes: ['Basic'], faults: { delayMs: (q) => (q.headers.authorization ? 400 : 0) } },
      { negotiate: false, limits: { queueTimeout: 100 } },
    );
    const url = `${r.server.origin}/auth`;
    expect(await burst(`${url}/warm`, r.agent, 1)).toEqual([200]);
    await quiet();
    const errors: Error[] = [];
    const results = await Promise.all(
      Array.from({ length: 5 }, (_, i) =>
        request(`${url}/a/${i}`, { dispatcher: r!.agent }).then(
          async (res) => {
            await res.body.dump();
            return res.statusCode;
          },
          (err: Error) => {
            errors.push(err);
            return err.name;
          },
        ),
      ),
    );
    // The first proves the password (held 400 ms by the server); the others gave up after 100 ms.
    expect(results.filter((x) => x === 200)).toHaveLength(1);
    expect(errors).toHaveLength(4);
    for (const err of errors) {
      expect(err).toBeInstanceOf(QueueTimeoutError);
      expect(err.message).toContain("another request's handshake with the agent's credentials");
    }
  });
});

describe('R4: a changed proxy password is not tried again and again (account lockout)', () => {
  it.each([
    ['a CONNECT tunnel (https origin)', true, 200],
    ['a forwarding proxy (http origin)', false, 224],
  ])(
    'R4: through %s: after the proxy password changed, a burst of 200 tries the old one at most twice, then not at all for 30 s',
    async (_, tunnel, before) => {
      const { agent, rig: rg, proxy: px } = await behindProxy((origin, port) => [origin, `http://localhost:${port}`]);
      const url = `${tunnel ? rg.server.origin : `http://localhost:${rg.server.port}`}/auth`;
      expect(await burst(`${url}/warm`, agent, 20)).toEqual(Array(20).fill(200));
      px.options.basicUsers = { proxyuser: 'rotated' };
      rg.server.endSessions();
      await quiet();
      px.exchanges.length = 0;
      const wrong = () => px.exchanges.filter((e) => e.proxyAuthorization && e.status === 407).length;
      expect(await burst(`${url}/a`, agent, 200)).toEqual(Array(200).fill('ProxyAuthenticationError'));
      // Before: `before` wrong proxy passwords for this burst (once per tunnel, or per request).
      expect(before).toBeGreaterThan(2);
      expect(wrong()).toBeGreaterThanOrEqual(1);
      expect(wrong()).toBeLessThanOrEqual(2);
      px.exchanges.length = 0;
      const errors: unknown[] = [];
      const again = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          request(`${url}/b/${i}`, { dispatcher: agent }).then(
            (res) => res.body.dump().then(() => res.statusCode),
            (err: unknown) => errors.push(err),
          ),
        ),
      );
      expect(again).toHaveLength(20);
      expect(errors).toHaveLength(20);
      for (const err of errors) {
        expect(err).toBeInstanceOf(ProxyAuthenticationError);
        expect((err as ProxyAuthenticationError).refused).toBe(true);
        expect((err as Error).message).toContain('refused proxy.credentials lately');
      }
      expect(wrong()).toBe(0);
      expect(px.exchanges.every((e) => !e.proxyAuthorization)).toBe(true);
    },
  );

  it('C11/R4: a burst right after the proxy password changed (no quiet spell) ends every forwarded request with a typed error, never the proxy 407 (proxy.deliver407 off)', async () => {
    const {
      agent,
      rig: rg,
      proxy: px,
    } = await behindProxy((_, port) => [`http://localhost:${port}`], {
      // A low bound, so that requests following other requests' handshakes reach it in one burst.
      limits: { maxLegs: 2 },
    });
    const url = `http://localhost:${rg.server.port}/auth`;
    expect(await burst(`${url}/warm`, agent, 100)).toEqual(Array(100).fill(200));
    px.options.basicUsers = { proxyuser: 'rotated' };
    const errors: unknown[] = [];
    const statuses: number[] = [];
    await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        request(`${url}/a/${i}`, { dispatcher: agent }).then(
          (res) => res.body.dump().then(() => statuses.push(res.statusCode)),
          (err: unknown) => errors.push(err),
        ),
      ),
    );
    // Before: a request that followed other requests' 407 exchanges past limits.maxLegs got the
    // proxy's 407 as its response, although proxy.deliver407 is off.
    expect(statuses).toEqual([]);
    expect(errors).toHaveLength(100);
    for (const err of errors) {
      expect(err).toBeInstanceOf(MultilegError);
      expect(['MULTILEG_PROXY_AUTH', 'MULTILEG_LEG_LIMIT']).toContain((err as MultilegError).code);
    }
  });
});
