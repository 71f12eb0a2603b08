/**
 * A mechanism that cannot run, chokes on the server's token or rejects the server's final token,
 * against the reference server: the caller gets the next scheme's result or a typed error, never
 * the mechanism's own exception and never a response whose proof failed (T2, S3, M2).
 */
import { fetch, type Response } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import {
  type Challenge,
  InvalidTokenError,
  type Mechanism,
  MechanismUnavailableError,
  MultilegAgent,
  type MultilegError,
  ntlmMechanism,
} from '../src/index.ts';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { ALICE, hasAuth } from './helpers.ts';

let server: ReferenceServer | undefined;
let agent: MultilegAgent | undefined;
afterEach(async () => {
  await agent?.destroy().catch(() => {});
  await server?.close();
  agent = server = undefined;
});

const ntlm = ntlmMechanism(ALICE);

/** NTLM whose contexts behave as `patch` says on top of the real ones. */
function patchedNtlm(patch: {
  step?: (challenge: Challenge | undefined) => void;
  finish?: () => Promise<void>;
}): Mechanism {
  return {
    ...ntlm,
    createContext(leg) {
      const real = ntlm.createContext(leg);
      return {
        get complete() {
          return real.complete;
        },
        step: async (challenge, l) => {
          patch.step?.(challenge);
          return real.step(challenge, l);
        },
        finish: patch.finish ?? ((challenge, l) => real.finish(challenge, l)),
      };
    },
  };
}

async function setup(mechanism: Mechanism, schemes = ['NTLM', 'Basic']) {
  server = await startReferenceServer({ mode: 'session', schemes });
  agent = new MultilegAgent({
    credentials: ALICE,
    connect: { ca: server.ca },
    trustedOrigins: [server.origin],
    negotiate: false,
    mechanisms: [mechanism],
  });
  return { s: server, a: agent };
}

const outcome = (p: Promise<Response>) =>
  p.then(
    async (res) => ({ status: res.status, body: (await res.json()) as { user: string | null } }),
    (e: Error) => ({ error: (e.cause ?? e) as MultilegError }),
  );

describe('mechanism faults reach the caller as the next scheme or a typed error', () => {
  it('T2: a scheme whose context cannot even be created here is skipped for the next offered one', async () => {
    const unavailable: Mechanism = {
      ...ntlm,
      createContext: () => {
        throw new MechanismUnavailableError('NTLM', 'not on this test machine');
      },
    };
    const { s, a } = await setup(unavailable);
    const r = await outcome(fetch(`${s.origin}/auth/x`, { dispatcher: a }));
    expect(r).toEqual({ status: 200, body: expect.objectContaining({ user: 'EXAMPLE\\alice' }) });
    const sent = s.exchanges
      .filter((e) => hasAuth(e.requestHeaders))
      .map((e) => String(e.requestHeaders.authorization));
    expect(sent).toHaveLength(1);
    expect(sent[0]).toMatch(/^Basic /);
  });

  it('S3: a mechanism that throws on the server’s token fails the request with InvalidTokenError, not its own exception', async () => {
    const choking = patchedNtlm({
      step: (challenge) => {
        if (challenge?.token68 !== undefined) throw new TypeError('mechanism internals: cannot read property');
      },
    });
    const { s, a } = await setup(choking);
    const r = await outcome(fetch(`${s.origin}/auth/x`, { dispatcher: a }));
    expect(r).toMatchObject({ error: { code: 'MULTILEG_INVALID_TOKEN' } });
    const err = (r as { error: Error }).error;
    expect(err).toBeInstanceOf(InvalidTokenError);
    expect(err.message).toContain('NTLM challenge');
    expect(err.message).not.toContain('mechanism internals');
    // The NEGOTIATE leg went out; nothing after the challenge did.
    expect(s.exchanges.filter((e) => hasAuth(e.requestHeaders))).toHaveLength(1);
  });

  it('M2: a final token whose verification throws a plain exception withholds the 200 as InvalidTokenError (final token)', async () => {
    const distrusting = patchedNtlm({
      finish: async () => {
        throw new RangeError('verifier blew up');
      },
    });
    const { s, a } = await setup(distrusting);
    const r = await outcome(fetch(`${s.origin}/auth/x`, { dispatcher: a }));
    const err = (r as { error: Error }).error;
    expect(err).toBeInstanceOf(InvalidTokenError);
    expect(err.message).toContain('final token');
    // The server did answer 200: the agent withheld it.
    expect(s.exchanges.at(-1)).toMatchObject({ status: 200, user: 'EXAMPLE\\alice' });
    expect(a.handshakes().map((h) => h.outcome)).toEqual(['failed']);
  });
});
