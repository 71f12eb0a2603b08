/**
 * A mechanism's `prepare`: local work started with the agent's first request, before any challenge
 * (Negotiate acquires its Kerberos credential while that request is on the wire, M2).
 */
import { fetch } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { type Mechanism, MultilegAgent, ntlmMechanism } from '../src/index.ts';
import { gssFunctionsLoading, loadGssFunctions } from '../src/mechanisms/gssapi/index.ts';
import { negotiateMechanism } from '../src/mechanisms/negotiate/index.ts';
import type { LegInfo } from '../src/mechanisms/types.ts';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { ALICE } from './helpers.ts';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

const NO_TICKET = { credentials: ALICE, ccache: 'FILE:/nonexistent/multileg-prepare-cc' };

describe('Negotiate prepares its Kerberos credential ahead of the first challenge', () => {
  // First in this file (its own worker): the GSS-API binding is not loaded yet.
  it('M2: where the GSS-API binding is not loaded yet, preparing loads nothing', async () => {
    expect(gssFunctionsLoading()).toBe(false);
    const m = negotiateMechanism(NO_TICKET);
    await m.prepare!('https://localhost:1');
    expect(gssFunctionsLoading()).toBe(false);
    expect(m.bindsFirstToken).toBe(true); // nothing learnt
  });

  it('M2: with the binding loaded, a missing ticket is found while the first request is out: its first step falls back at once', async () => {
    await loadGssFunctions();
    const m = negotiateMechanism(NO_TICKET);
    expect(m.bindsFirstToken).toBe(true);
    await m.prepare!('https://localhost:1');
    // Remembered: NTLM's first message (unbound) will lead, so it need not wait for a connection.
    expect(m.bindsFirstToken).toBe(false);
    const leg = { origin: 'https://localhost:1', hostname: 'localhost', port: 1 } as LegInfo;
    const ctx = m.createContext(leg);
    expect(await ctx.step(undefined, leg)).toMatch(/^Negotiate /);
    expect(ctx.fallbackReason).toMatch(/MULTILEG_KRB_NO_TICKET/);
  });
});

describe('the agent starts its mechanisms’ preparation', () => {
  async function reference(): Promise<ReferenceServer> {
    const s = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    cleanups.push(() => s.close());
    return s;
  }

  it('M2: once, with the first request that carries the agent’s credentials (not an untrusted origin’s)', async () => {
    const s = await reference();
    const other = await reference();
    const prepared: string[] = [];
    const ntlm = ntlmMechanism(ALICE);
    const recording: Mechanism = {
      ...ntlm,
      prepare: async (origin) => {
        prepared.push(origin);
      },
    };
    const a = new MultilegAgent({
      credentials: ALICE,
      connect: { ca: s.ca },
      trustedOrigins: [s.origin],
      negotiate: false,
      mechanisms: [recording],
    });
    cleanups.push(() => a.destroy());
    const get = async (url: string) => (await fetch(url, { dispatcher: a })).arrayBuffer();
    await get(`${other.origin}/public/x`); // not trusted: no credentials, nothing to prepare
    expect(prepared).toEqual([]);
    await Promise.all([get(`${s.origin}/auth/1`), get(`${s.origin}/auth/2`)]);
    await get(`${s.origin}/auth/3`);
    expect(prepared).toEqual([s.origin]);
  });
});
