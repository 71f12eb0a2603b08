/**
 * Protection spaces (RFC 7617 §2.2, RFC 7616 §3.3): a per-request password scheme (Basic, Digest)
 * is remembered for the path prefix where it succeeded, not for the whole origin, so its
 * credentials go unasked only there (S1); connection-bound schemes (NTLM, Negotiate) keep the
 * origin's sessions as before. The reference server serves `/basic/` with Basic and every other
 * path but `/public/` with NTLM (`pathSchemes`), as the lab's Apache does.
 */
import { fetch } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import type { Challenge } from '../src/challenge/types.ts';
import { MultilegAgent, type MultilegAgentOptions } from '../src/index.ts';
import { type ReferenceServerOptions, startReferenceServer } from '../src/reference-server/index.ts';
import { MAX_PROTECTION_SPACES, OriginMemory, protectionSpaces } from '../src/session/origin-memory.ts';
import { ALICE, get, type Rig, rig } from './helpers.ts';

let r: Rig | undefined;
afterEach(async () => {
  await r?.close();
  r = undefined;
});

const MIXED: ReferenceServerOptions = { mode: 'session', schemes: ['NTLM'], pathSchemes: { '/basic/': ['Basic'] } };
const AGENT: Partial<MultilegAgentOptions> = { negotiate: false, schemes: ['NTLM', 'Basic'] };

/** The scheme of each exchange's Authorization (`none` without one), for paths starting with `prefix`. */
function schemes(rg: Rig, prefix: string): string[] {
  return rg.server.exchanges
    .filter((e) => e.path.startsWith(prefix))
    .map((e) => String(e.requestHeaders.authorization ?? 'none').split(' ')[0]!);
}

const digest = (params: Record<string, string>): Challenge => ({ scheme: 'Digest', schemeKey: 'digest', params });

describe('protection spaces: Basic and Digest remembered per path prefix (S1)', () => {
  it('S1: a Basic password goes unasked only inside the protection space where Basic succeeded: not to /public/, not to an NTLM path on a new connection, not to a look-alike prefix', async () => {
    r = await rig(MIXED, AGENT);
    expect((await get(r, '/basic/a')).status).toBe(200);
    expect(schemes(r, '/basic/a')).toEqual(['none', 'Basic']);
    // Before: Basic became the origin's remembered per-request scheme, and went on every request.
    expect((await get(r, '/public/x')).status).toBe(200);
    r.server.endSessions();
    expect((await get(r, '/ntlm/x')).status).toBe(200);
    expect((await get(r, '/basicx/y')).status).toBe(200);
    expect(schemes(r, '/public/')).toEqual(['none']);
    expect(schemes(r, '/ntlm/')).toEqual(['none', 'NTLM', 'NTLM']);
    expect(schemes(r, '/basicx/')).toEqual(['none']);
    // Inside the space it still goes at once: one wire request.
    expect((await get(r, '/basic/deeper/b')).status).toBe(200);
    expect(schemes(r, '/basic/deeper/')).toEqual(['Basic']);
    expect(r.server.exchanges.filter((e) => !e.path.startsWith('/basic/')).every((e) => e.scheme !== 'Basic')).toBe(
      true,
    );
  });

  it('S1: after a Basic success at /basic/, a path that a server may resolve out of /basic/ (/basic/..%2fpublic/x, /basic/..;/public/x) goes without the password; the 401 there still gets it', async () => {
    r = await rig(MIXED, AGENT);
    expect((await get(r, '/basic/a')).status).toBe(200);
    for (const path of ['/basic/..%2fpublic/x', '/basic/..;/public/x']) {
      expect((await get(r, path)).status).toBe(200);
      // Before: ['Basic'], the password on the first request, which such a server serves as /public/x.
      expect(schemes(r, path), path).toEqual(['none', 'Basic']);
    }
  });

  it('S1: where Basic alone is used, a request outside every space where it succeeded waits for a 401 (curl and browsers do the same)', async () => {
    r = await rig({ mode: 'per-request', schemes: ['Basic'] }, { schemes: ['Basic'] });
    expect((await get(r, '/auth/a')).status).toBe(200);
    expect((await get(r, '/public/x')).status).toBe(200);
    expect((await get(r, '/other/y')).status).toBe(200);
    expect((await get(r, '/auth/b')).status).toBe(200);
    expect(schemes(r, '/')).toEqual(['none', 'Basic', 'none', 'none', 'Basic', 'Basic']);
  });

  it('C4, T4, S1: a mixed Basic/NTLM workload: /basic/ after /basic/ succeeded is proactive on the NTLM-authenticated session (1 wire request), /ntlm/ keeps its session, and the origin stays an NTLM one for new connections', async () => {
    r = await rig(MIXED, AGENT);
    expect((await get(r, '/ntlm/0')).status).toBe(200);
    for (let i = 1; i <= 10; i++) {
      expect((await get(r, `/basic/${i}`)).status).toBe(200);
      expect((await get(r, `/ntlm/${i}`)).status).toBe(200);
    }
    // Before: each /basic/ request went bare first on the NTLM-authenticated session (20 wire requests).
    expect(schemes(r, '/basic/')).toEqual(['none', ...Array(10).fill('Basic')]);
    expect(schemes(r, '/ntlm/')).toEqual(['none', 'NTLM', 'NTLM', ...Array(10).fill('none')]);
    expect(r.agent.handshakes().filter((h) => h.scheme === 'NTLM')).toHaveLength(1);
    // A new connection leads NTLM at once, as the origin wants it (before: Basic, which it did not ask for).
    r.server.endSessions();
    const before = r.server.exchanges.length;
    expect((await get(r, '/ntlm/new')).status).toBe(200);
    const legs = r.server.exchanges.slice(before).map((e) => String(e.requestHeaders.authorization).split(' ')[0]);
    expect(legs).toEqual(['NTLM', 'NTLM']);
  });

  it('S1, R4: a space whose server no longer asks for Basic is forgotten: its declined proactive leg answers the new challenge once, and the next request there goes without the password', async () => {
    r = await rig(MIXED, AGENT);
    expect((await get(r, '/basic/a')).status).toBe(200);
    // The server now wants NTLM at /basic/ too.
    r.server.options.pathSchemes = {};
    expect((await get(r, '/basic/b')).status).toBe(200);
    expect((await get(r, '/basic/c')).status).toBe(200);
    // Before: the space stayed (only the origin's scheme was forgotten), so /basic/c led Basic again.
    expect(schemes(r, '/basic/b')).toEqual(['Basic', 'NTLM', 'NTLM']);
    expect(schemes(r, '/basic/c')).toEqual(['none']);
  });

  it("T2, S1: a Digest space whose origin has no nonce remembered (new credentials, another origin's nonce known) is answered from its 401, and Digest stays usable there", async () => {
    const server = await startReferenceServer({ mode: 'per-request', schemes: ['Digest'] });
    const other = await startReferenceServer({ mode: 'per-request', schemes: ['Digest'] });
    const agent = new MultilegAgent({
      credentials: ALICE,
      connect: { ca: [server.ca, other.ca] },
      trustedOrigins: [server.origin, other.origin],
      schemes: ['Digest'],
    });
    r = {
      server,
      agent,
      async close() {
        await agent.destroy().catch(() => {});
        await server.close();
        await other.close();
      },
    };
    expect((await get(r, '/d/1')).status).toBe(200);
    // New credentials (a rotated password: the same ones again change nothing), a new nonce memory:
    // the space stays; another origin's nonce makes Digest proactive.
    for (const s of [server, other]) s.options.users = { ...s.options.users, [ALICE.username]: 'rotated' };
    agent.setCredentials({ ...ALICE, password: 'rotated' });
    const res = await fetch(`${other.origin}/x`, { dispatcher: agent });
    expect(res.status).toBe(200);
    await res.arrayBuffer();
    // Before: "Digest is not available: no server nonce is known", then remembered unusable here for 30 s.
    expect((await get(r, '/d/2')).status).toBe(200);
    expect((await get(r, '/d/3')).status).toBe(200);
    expect(schemes(r, '/d/')).toEqual(['none', 'Digest', 'none', 'Digest', 'Digest']);
  });

  it('S1: a protection space is the directory of the path (RFC 7617 §2.2); Digest adds its same-origin domain URIs, or is the whole origin without one (RFC 7616 §3.3)', () => {
    const o = 'https://h.example:8443';
    expect(protectionSpaces(o, '/basic/y?q=/x/', undefined)).toEqual(['/basic/']);
    expect(protectionSpaces(o, '/a/b/c', undefined)).toEqual(['/a/b/']);
    expect(protectionSpaces(o, '/auth', undefined)).toEqual(['/']);
    expect(protectionSpaces(o, '/d/x', { scheme: 'Basic', schemeKey: 'basic', params: { domain: '/' } })).toEqual([
      '/d/',
    ]);
    expect(protectionSpaces(o, '/d/x', digest({ nonce: 'n' }))).toEqual(['/']);
    expect(protectionSpaces(o, '/d/x', digest({ nonce: 'n', domain: ' ' }))).toEqual(['/']);
    const domain = `/d/ /e/f https://h.example:8443/g/ https://other.example/h/ http://h.example:8443/i/`;
    expect(protectionSpaces(o, '/d/x', digest({ nonce: 'n', domain }))).toEqual(['/d/', '/e/f', '/g/']);
  });

  it('S1: the longest remembered space decides; a path with a dot segment is in none; a space inside one of its scheme adds no entry; an origin remembers at most MAX_PROTECTION_SPACES (least recently used forgotten)', () => {
    const m = new OriginMemory(1000);
    expect(m.spaceScheme('/a/x')).toBeUndefined();
    m.rememberSpaces('Digest', ['/']);
    m.rememberSpaces('Basic', ['/a/']);
    expect(m.spaceScheme('/a/x')).toBe('Basic');
    expect(m.spaceScheme('/b/x')).toBe('Digest');
    for (const p of ['/a/../b/x', '/a/./x', '/a/%2E%2e/x', '/a/..']) expect(m.spaceScheme(p), p).toBeUndefined();
    expect(m.spaceScheme('/a/x?next=/../')).toBe('Basic');
    m.forgetSpaces('Basic', '/a/y');
    expect(m.spaceScheme('/a/x')).toBe('Digest');
    // A space inside one of the same scheme adds no entry (a proactive success there): /c/d/ goes with /c/.
    m.rememberSpaces('Basic', ['/c/']);
    m.rememberSpaces('Basic', ['/c/d/']);
    m.forgetSpaces('Basic', '/c/x');
    expect(m.spaceScheme('/c/d/x')).toBe('Digest');
    const n = new OriginMemory(1000);
    n.rememberSpaces('Basic', ['/keep/']);
    for (let i = 0; i < MAX_PROTECTION_SPACES; i++) {
      n.rememberSpaces('Basic', [`/s${i}/`]);
      if (i === 0) expect(n.spaceScheme('/keep/x')).toBe('Basic');
    }
    // /keep/ was used after /s0/ was remembered: /s0/ is the least recently used, and went.
    expect(n.spaceScheme('/s0/x')).toBeUndefined();
    expect(n.spaceScheme('/keep/x')).toBe('Basic');
    expect(n.spaceScheme(`/s${MAX_PROTECTION_SPACES - 1}/x`)).toBe('Basic');
  });

  it('S1: a Digest domain of more URIs than MAX_PROTECTION_SPACES does not crowd out the space where Digest just succeeded: its directory and its first URIs stay', () => {
    const m = new OriginMemory(1000);
    const domain = Array.from({ length: 2 * MAX_PROTECTION_SPACES }, (_, i) => `/u${i}/`).join(' ');
    m.rememberSpaces('Digest', protectionSpaces('https://h.example', '/d/x', digest({ nonce: 'n', domain })));
    // Before: the directory was remembered first and the domain's URIs pushed it out (a bare request and a 401 each time).
    expect(m.spaceScheme('/d/y')).toBe('Digest');
    expect(m.spaceScheme('/u0/y')).toBe('Digest');
    expect(m.spaceScheme(`/u${2 * MAX_PROTECTION_SPACES - 1}/y`)).toBeUndefined();
  });

  it('S1: a path the server may resolve out of the space is in none: an encoded slash or backslash (%2f, %5c: some servers decode them before they resolve dot segments), a backslash (IIS reads it as /), a dot segment with ;params (Tomcat reads /..;/ as /../), any case', () => {
    const m = new OriginMemory(1000);
    m.rememberSpaces('Basic', ['/basic/']);
    const elsewhere = [
      '/basic/..%2fpublic/x',
      '/basic/..%2Fpublic/x',
      '/basic/%2e%2e%2fpublic/x',
      '/basic/..%5cpublic/x',
      '/basic/..\\public/x',
      '/basic/..;/public/x',
      '/basic/.;x/x',
      '/basic/%2E%2E;jsessionid=1/public/x',
    ];
    // Before: each was inside /basic/ (only a literal dot segment was seen), and carried the password.
    for (const p of elsewhere) expect(m.spaceScheme(p), p).toBeUndefined();
    // Parameters, encoded characters and dots that stay inside the space leave it inside.
    for (const p of ['/basic/x;v=1', '/basic/a%20b', '/basic/...', '/basic/.x/y', '/basic/x?u=..%2f..%2f'])
      expect(m.spaceScheme(p), p).toBe('Basic');
  });
});
