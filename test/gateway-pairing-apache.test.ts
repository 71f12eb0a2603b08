/**
 * A gateway passing its clients' own NTLM inside SPNEGO (`Authorization: Negotiate …`, as Windows
 * clients send it without a ticket) through one agent with no credentials, against Apache
 * mod_auth_gssapi + gss-ntlmssp (`/spnego2`, connection-bound): each caller's AUTHENTICATE, a
 * NegTokenResp, goes on the connection whose CHALLENGE it answers (src/session/ntlm-pairing.ts; S6, R4).
 */
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Challenge, MultilegAgent, parseChallenges } from '../src/index.ts';
import { spnegoNtlmMechanism } from '../src/mechanisms/spnego/index.ts';
import { legInfo } from './lab/http.ts';
import { type Lab, requirePeer, startLab } from './lab/index.ts';

const havePeers = requirePeer('kdc', 'apache', 'gssntlmssp');

describe.skipIf(!havePeers)('S6/R4: pass-through of callers\u2019 NTLM inside SPNEGO at Apache /spnego2', () => {
  let lab: Lab;
  let agent: MultilegAgent;
  beforeAll(async () => {
    lab = await startLab({ apache: true });
    // The agent has no credentials and asks GSS-API nothing (negotiate: false); Apache is connection-bound
    // and loses NTLM between HTTP/2 streams, so the gateway's agent speaks HTTP/1.1.
    agent = new MultilegAgent({ connect: { ca: lab.apache!.ca }, negotiate: false, allowH2: false });
  });
  afterAll(async () => {
    await agent?.destroy();
    await lab?.stop();
  });

  /** One client's handshake, leg by leg through the agent: the SPNEGO NegTokenInit, then the NegTokenResp. */
  function client(name: 'alice' | 'bob', path: string) {
    const leg = legInfo(lab.apache!.origin, path);
    const ctx = spnegoNtlmMechanism({ username: `EXAMPLE\\${name}`, password: `${name}pw` }).createContext(leg);
    let challenge: Challenge | undefined;
    const send = async (authorization: string) => {
      const r = await request(`${lab.apache!.origin}${path}`, { dispatcher: agent, headers: { authorization } });
      await r.body.text();
      return r;
    };
    return {
      async negotiate(): Promise<number> {
        const token = (await ctx.step(undefined, leg))!;
        expect(token).toMatch(/^Negotiate /);
        const r = await send(token);
        challenge = parseChallenges(r.headers['www-authenticate'] as string).find((c) => c.token68 !== undefined);
        return r.statusCode;
      },
      async authenticate(): Promise<string> {
        try {
          const r = await send((await ctx.step(challenge, leg))!);
          return `${r.statusCode} ${r.headers['x-remote-user'] ?? ''}`;
        } catch (err) {
          return `${(err as { code?: string }).code} ${(err as { reason?: string }).reason}`;
        }
      },
    };
  }

  it('S6/R4: 4 callers × 3 rounds, alice and bob, every NEGOTIATE before any AUTHENTICATE, these last caller first: every login 200 as itself', async () => {
    const tally: Record<string, number> = {};
    for (let round = 0; round < 3; round++) {
      const clients = Array.from({ length: 4 }, (_, i) => {
        const name = i % 2 === 0 ? 'alice' : 'bob';
        return { name, c: client(name, `/spnego2/index.html?${name}-${i}-${round}`) };
      });
      expect(await Promise.all(clients.map(({ c }) => c.negotiate()))).toEqual(Array(4).fill(401));
      const answers = await Promise.all(
        clients.reverse().map(async ({ name, c }) => {
          const got = await c.authenticate();
          return got === `200 EXAMPLE\\${name}` ? '200 as itself' : got;
        }),
      );
      for (const k of answers) tally[k] = (tally[k] ?? 0) + 1;
    }
    // Without reading the NTLM inside SPNEGO, the AUTHENTICATEs went on whichever connection was free: 401s.
    expect(tally).toEqual({ '200 as itself': 12 });
  });
});
