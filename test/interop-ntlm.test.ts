/**
 * M1 / H1 interop: our TypeScript NTLM client against independent implementations — Apache
 * mod_auth_gssapi + gss-ntlmssp (/ntlm, HTTP/1.1) and a python3-gssapi/gss-ntlmssp acceptor that checks
 * tls-server-end-point channel bindings. Legs are driven by hand over an undici Client.
 */
import { readFile } from 'node:fs/promises';
import type { Client } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ntlmMechanism } from '../src/mechanisms/ntlm/index.ts';
import { spnegoNtlmMechanism } from '../src/mechanisms/spnego/index.ts';
import type { Credentials } from '../src/mechanisms/types.ts';
import { challengeFor, driveHandshake, labClient, legInfo, send, tlsServerEndPoint } from './lab/http.ts';
import { type Lab, requirePeer, run, startLab } from './lab/index.ts';

const ALICE: Credentials = { username: 'alice', password: 'alicepw', domain: 'EXAMPLE' };

const havePeers = requirePeer('kdc', 'apache', 'gssntlmssp', 'python-gssapi');

describe.skipIf(!havePeers)('M1 NTLM interop (Apache gss-ntlmssp, python3-gssapi acceptor)', () => {
  let lab: Lab;
  beforeAll(async () => {
    lab = await startLab({ apache: true, pythonAcceptor: true });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  /** Client ports Apache logged for `path` (LogFormat: ... %>s %{remote}p proto=%H user=%u). */
  async function loggedRequests(path: string): Promise<Array<{ status: number; port: number; user: string }>> {
    const log = await readFile(lab.apache!.accessLog, 'utf8');
    return log
      .split('\n')
      .filter((l) => l.includes(`"GET ${path} `))
      .map((l) => {
        const m = /" (\d{3}) (\d+) proto=\S+ user=(\S*)/.exec(l);
        return { status: Number(m?.[1]), port: Number(m?.[2]), user: m?.[3] ?? '' };
      });
  }

  it('M1 H1: NTLM against Apache /ntlm over HTTP/1.1: 401 → 401+CHALLENGE → 200 on one connection, identity kept', async () => {
    const a = lab.apache!;
    const client: Client = labClient(a.origin, a.ca);
    try {
      const path = '/ntlm/?m1-h1';
      const r = await driveHandshake({ client, path, mechanism: ntlmMechanism(ALICE), leg: legInfo(a.origin, path) });
      expect(r.status).toBe(200);
      expect(r.responses.map((x) => x.status)).toEqual([401, 401, 200]);
      expect(r.sent[0]).toBeUndefined();
      expect(r.sent[1]).toMatch(/^NTLM TlRMTVNTUAAB/); // NEGOTIATE
      expect(r.sent[2]).toMatch(/^NTLM TlRMTVNTUAAD/); // AUTHENTICATE
      expect(r.remoteUser).toBe('EXAMPLE\\alice');
      expect(r.responses[2]!.body).toContain('hello from /ntlm');
      expect(r.context.complete).toBe(true);
      // H1: the connection stays authenticated: a follow-up without Authorization is 200.
      const follow = await send(client, '/ntlm/?m1-h1-follow');
      expect(follow.status).toBe(200);
      const legs = await loggedRequests('/ntlm/?m1-h1');
      expect(legs.map((l) => l.status)).toEqual([401, 401, 200]);
      const follows = await loggedRequests('/ntlm/?m1-h1-follow');
      const ports = new Set([...legs, ...follows].map((l) => l.port));
      expect(ports.size).toBe(1); // every leg and the follow-up on one TCP connection
    } finally {
      await client.close();
    }
  });

  it('M1: DOMAIN\\user and user@domain name forms authenticate at Apache /ntlm', async () => {
    const a = lab.apache!;
    for (const username of ['EXAMPLE\\bob', 'bob@EXAMPLE']) {
      const client = labClient(a.origin, a.ca);
      try {
        const r = await driveHandshake({
          client,
          path: '/ntlm/',
          mechanism: ntlmMechanism({ username, password: 'bobpw' }),
          leg: legInfo(a.origin, '/ntlm/'),
        });
        expect(r.status, username).toBe(200);
        expect(r.remoteUser).toBe('EXAMPLE\\bob');
      } finally {
        await client.close();
      }
    }
  });

  it('M1: a wrong password is refused by Apache /ntlm (final 401)', async () => {
    const a = lab.apache!;
    const client = labClient(a.origin, a.ca);
    try {
      const r = await driveHandshake({
        client,
        path: '/ntlm/',
        mechanism: ntlmMechanism({ ...ALICE, password: 'wrong' }),
        leg: legInfo(a.origin, '/ntlm/'),
      });
      expect(r.status).toBe(401);
      expect(r.responses.map((x) => x.status)).toEqual([401, 401, 401]);
      expect(r.remoteUser).toBe('');
    } finally {
      await client.close();
    }
  });

  it('M1: NTLM to Apache /ntlm over HTTP/2 fails at the 3rd leg (peer limitation: state lost between h2 streams)', async () => {
    // Documents the peer (recipe §5): multi-leg GSSAPI at Apache works only over HTTP/1.1, and Apache sends no
    // HTTP_1_1_REQUIRED. The agent must pin NTLM to HTTP/1.1 itself.
    const a = lab.apache!;
    const client = labClient(a.origin, a.ca, { h2: true });
    try {
      const r = await driveHandshake({
        client,
        path: '/ntlm/',
        mechanism: ntlmMechanism(ALICE),
        leg: legInfo(a.origin, '/ntlm/'),
      });
      expect(r.responses[0]!.headers['x-protocol']).toBe('HTTP/2.0');
      expect(r.responses.map((x) => x.status)).toEqual([401, 401, 401]);
    } finally {
      await client.close();
    }
  });

  describe('M1 channel bindings (tls-server-end-point) checked by a python3-gssapi acceptor', () => {
    const cbHash = (): Buffer => tlsServerEndPoint(lab.apache!.ca);

    async function exchange(clientCb: Buffer | undefined, acceptorCb: Buffer | undefined, creds = ALICE) {
      const acc = lab.acceptor!;
      await acc.reset('ntlm', acceptorCb);
      const leg = legInfo('https://localhost:443', '/', clientCb ? { channelBinding: clientCb } : {});
      const ctx = ntlmMechanism(creds).createContext(leg);
      const t1 = await ctx.step(undefined, leg);
      const r1 = await acc.step(t1.replace(/^NTLM /, ''));
      if (r1.kind !== 'continue') return r1;
      const t3 = await ctx.step({ scheme: 'NTLM', schemeKey: 'ntlm', token68: r1.token, params: {} }, leg);
      return await acc.step(t3.replace(/^NTLM /, ''));
    }

    it('M1: the right tls-server-end-point hash is accepted', async () => {
      const r = await exchange(cbHash(), cbHash());
      expect(r).toMatchObject({ kind: 'complete', user: 'EXAMPLE\\alice' });
    });

    it('M1: a wrong tls-server-end-point hash is rejected', async () => {
      const wrong = Buffer.from(cbHash());
      wrong[0] = wrong[0]! ^ 0xff;
      const r = await exchange(wrong, cbHash());
      expect(r.kind).toBe('error');
    });

    it('M1: a wrong password is rejected by the acceptor (control)', async () => {
      const r = await exchange(cbHash(), cbHash(), { ...ALICE, password: 'nope' });
      expect(r.kind).toBe('error');
    });

    it('M1 M2: NTLM inside SPNEGO with the right/wrong binding at a python SPNEGO acceptor; its mechListMIC verifies', async () => {
      const acc = lab.acceptor!;
      for (const [clientCb, ok] of [
        [cbHash(), true],
        [Buffer.alloc(32, 7), false],
      ] as const) {
        await acc.reset('spnego', cbHash());
        const leg = legInfo('https://localhost:443', '/', { channelBinding: clientCb });
        const ctx = spnegoNtlmMechanism(ALICE).createContext(leg);
        const r1 = await acc.step((await ctx.step(undefined, leg)).slice('Negotiate '.length));
        expect(r1.kind).toBe('continue');
        const tok = r1.kind === 'continue' ? r1.token : '';
        const t3 = await ctx.step({ scheme: 'Negotiate', schemeKey: 'negotiate', token68: tok, params: {} }, leg);
        const r2 = await acc.step(t3.slice('Negotiate '.length));
        if (!ok) {
          expect(r2.kind).toBe('error');
          continue;
        }
        expect(r2).toMatchObject({ kind: 'complete', user: 'EXAMPLE\\alice' });
        const fin = r2.kind === 'complete' ? r2.token : undefined;
        expect(fin).toBeTruthy();
        await ctx.finish({ scheme: 'Negotiate', schemeKey: 'negotiate', token68: fin!, params: {} }, leg);
        expect((ctx as unknown as { serverVerified: boolean }).serverVerified).toBe(true);
      }
    });

    it('M1: peer quirk: gss-ntlmssp does not enforce bindings the client did not send', async () => {
      // Not our behaviour: recorded so a change in the peer is noticed (recipe §4: CB on one side → accepted).
      const r = await exchange(undefined, cbHash());
      expect(r.kind).toBe('complete');
    });
  });

  it('M1 (peer reference): curl --ntlm fails at Apache/gss-ntlmssp (its 32-byte NEGOTIATE is rejected)', async () => {
    const a = lab.apache!;
    const r = await run(
      '/usr/bin/curl',
      [
        '-sS',
        '-o',
        '/dev/null',
        '-w',
        '%{http_code}',
        '--http1.1',
        '--ntlm',
        '-u',
        'alice:alicepw',
        '--cacert',
        a.certFile,
        `${a.origin}/ntlm/`,
      ],
      { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...lab.env } },
    );
    expect(r.stdout).toBe('401');
    // ...while Apache does issue a CHALLENGE to our 40-byte NEGOTIATE:
    const client = labClient(a.origin, a.ca);
    try {
      const leg = legInfo(a.origin, '/ntlm/');
      const ctx = ntlmMechanism(ALICE).createContext(leg);
      const res = await send(client, '/ntlm/', { authorization: await ctx.step(undefined, leg) });
      expect(res.status).toBe(401);
      expect(challengeFor(res.headers, 'NTLM')?.token68).toMatch(/^TlRMTVNTUAAC/);
    } finally {
      await client.close();
    }
  });
});
