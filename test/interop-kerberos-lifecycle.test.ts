/**
 * A Kerberos client that runs for days (M2, R4, S6), against the lab's real MIT KDC and Apache
 * mod_auth_gssapi: the ticket goes away and comes back (kdestroy / kinit in the same ccache) while
 * the agent keeps serving requests. Measured trial: docs/RELIABILITY.md "Kerberos over days".
 */
import { join } from 'node:path';
import { fetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MultilegAgent } from '../src/index.ts';
import { TICKET_RECHECK_MS } from '../src/session/origin-memory.ts';
import { type Lab, requirePeer, run, startLab } from './lab/index.ts';

const havePeers = requirePeer('kdc', 'apache', 'gss-binding');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The `code` of what fetch rejected with (its cause), or the status and user it answered with. */
async function outcome(url: string, agent: MultilegAgent): Promise<string> {
  try {
    const r = await fetch(url, { dispatcher: agent });
    await r.arrayBuffer();
    return `${r.status} ${r.headers.get('x-remote-user') ?? ''}`;
  } catch (e) {
    return (e as { cause?: { code?: string } }).cause?.code ?? String(e);
  }
}

describe.skipIf(!havePeers)('Kerberos over days (real MIT KDC, Apache mod_auth_gssapi)', () => {
  let lab: Lab;
  let restoreEnv: () => void;
  let ccache: string;

  beforeAll(async () => {
    lab = await startLab({ apache: true });
    ccache = `FILE:${join(lab.dir, 'lifecycle.ccache')}`;
    // A ccache of its own (kdestroy / kinit below touch only it); no NTLM user file: Kerberos only.
    restoreEnv = lab.applyEnv({ NTLM_USER_FILE: undefined, KRB5CCNAME: ccache });
  });
  afterAll(async () => {
    restoreEnv?.();
    await lab?.stop();
  });

  for (const h2 of [true, false]) {
    it(`R4: a kinit after "no ticket" is used within TICKET_RECHECK_MS, not after 30 s (${h2 ? 'HTTP/2' : 'HTTP/1.1'})`, async () => {
      const a = lab.apache!;
      const agent = new MultilegAgent({ connect: { ca: a.ca }, allowH2: h2 });
      try {
        await run('/usr/bin/kdestroy', [], { env: { ...lab.realm!.toolEnv, KRB5CCNAME: ccache } });
        // No ticket: the typed error, and the origin remembers it (the second request is not asked of GSS-API).
        expect(await outcome(`${a.origin}/protected/`, agent)).toBe('MULTILEG_KRB_NO_TICKET');
        expect(await outcome(`${a.origin}/protected/`, agent)).toBe('MULTILEG_KRB_NO_TICKET');
        await lab.realm!.kinit({ ccache });
        await sleep(TICKET_RECHECK_MS + 200);
        // As curl and .NET do: the new ticket serves the next request (was: 30 s more of the remembered error).
        expect(await outcome(`${a.origin}/protected/`, agent)).toBe('200 alice@EXAMPLE.TEST');
      } finally {
        await agent.close();
      }
    });
  }
});
