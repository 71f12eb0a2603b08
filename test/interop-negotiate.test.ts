/**
 * M2 interop: the Negotiate mechanism (system GSS-API via koffi; the kerberos addon where injected) against a real MIT KDC and Apache
 * mod_auth_gssapi over HTTP/2 and HTTP/1.1; actionable Kerberos errors from real failures; the NTLM-inside-
 * SPNEGO fallback (no ticket, password given) against Apache /spnego2; curl as a reference client.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { type Client, fetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Challenge } from '../src/challenge/types.ts';
import { MutualAuthError } from '../src/errors.ts';
import { MultilegAgent } from '../src/index.ts';
import {
  GSS_C_DELEG_FLAG,
  GSS_C_MUTUAL_FLAG,
  GSS_C_SEQUENCE_FLAG,
  GSS_MECH_OID_KRB5,
  GSS_MECH_OID_SPNEGO,
  type KerberosClientOptions,
  KerberosClockSkewError,
  KerberosKdcUnreachableError,
  type KerberosModuleLike,
  KerberosNoTicketError,
  KerberosTicketExpiredError,
  KerberosUnknownServiceError,
  loadKerberos,
  type NegotiateOptions,
  negotiateMechanism,
} from '../src/mechanisms/negotiate/index.ts';
import type { Credentials } from '../src/mechanisms/types.ts';
import { challengeFor, driveHandshake, header, labClient, legInfo, send } from './lab/http.ts';
import { freePort, type Lab, requirePeer, run, startLab } from './lab/index.ts';

const ALICE_NTLM: Credentials = { username: 'alice', password: 'alicepw', domain: 'EXAMPLE' };
const havePeers = requirePeer('kdc', 'apache', 'gssntlmssp', 'kerberos-addon', 'curl');

function negotiateChallenge(token68?: string): Challenge {
  return token68 === undefined
    ? { scheme: 'Negotiate', schemeKey: 'negotiate', params: {} }
    : { scheme: 'Negotiate', schemeKey: 'negotiate', token68, params: {} };
}

describe.skipIf(!havePeers)('M2 Negotiate/Kerberos interop (MIT KDC, Apache mod_auth_gssapi)', () => {
  let lab: Lab;
  let restoreEnv: () => void;
  let h2: Client;
  let h1: Client;
  /** Runs `fn` with extra env for the in-process GSS library (the addon reads process.env at call time). */
  async function withEnv<T>(env: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
    const restore = lab.applyEnv({ NTLM_USER_FILE: undefined, ...env });
    try {
      return await fn();
    } finally {
      restore();
    }
  }
  const missingCcache = (): string => `FILE:${join(lab.dir, 'no-such-ccache')}`;

  beforeAll(async () => {
    lab = await startLab({ apache: true });
    // Client side: alice's ccache; no NTLM_USER_FILE (else SPNEGO without a ticket silently uses it).
    restoreEnv = lab.applyEnv({ NTLM_USER_FILE: undefined });
    h2 = labClient(lab.apache!.origin, lab.apache!.ca, { h2: true });
    h1 = labClient(lab.apache!.origin, lab.apache!.ca);
  });
  afterAll(async () => {
    await h2?.close();
    await h1?.close();
    restoreEnv?.();
    await lab?.stop();
  });

  for (const [proto, client] of [
    ['HTTP/2', () => h2],
    ['HTTP/1.1', () => h1],
  ] as const) {
    it(`M2: SPNEGO/Kerberos at Apache /protected over ${proto}: 401 → 200, mutual-auth token verified by finish()`, async () => {
      const a = lab.apache!;
      const r = await driveHandshake({
        client: client(),
        path: '/protected/',
        mechanism: negotiateMechanism(),
        leg: legInfo(a.origin, '/protected/'),
      });
      expect(r.responses.map((x) => x.status)).toEqual([401, 200]);
      expect(header(r.responses[1]!.headers, 'x-protocol')).toBe(proto === 'HTTP/2' ? 'HTTP/2.0' : 'HTTP/1.1');
      expect(r.remoteUser).toBe('alice@EXAMPLE.TEST');
      expect(r.finishError).toBeUndefined();
      expect(challengeFor(r.responses[1]!.headers, 'Negotiate')?.token68).toBeTruthy(); // the server's final token
      expect(r.context.complete).toBe(true); // only true after finish() accepted the AP-REP
      expect(r.context.identity).toBe('alice@EXAMPLE.TEST');
    });
  }

  it('M2: proactive: the first request carries a Kerberos token and gets 200 at once (HTTP/2)', async () => {
    const a = lab.apache!;
    const mech = negotiateMechanism();
    expect(mech).toMatchObject({ scheme: 'Negotiate', level: 'either', multileg: true, proactive: true });
    const r = await driveHandshake({
      client: h2,
      path: '/protected/',
      mechanism: mech,
      leg: legInfo(a.origin, '/protected/'),
      proactive: true,
    });
    expect(r.responses.map((x) => x.status)).toEqual([200]);
    expect(r.finishError).toBeUndefined();
    expect(r.context.complete).toBe(true);
  });

  it('M2: raw Kerberos (mech: kerberos → mechOID 9) at Apache /protected over HTTP/2', async () => {
    const a = lab.apache!;
    const real = await loadKerberos();
    const seen: KerberosClientOptions[] = [];
    const spy: KerberosModuleLike = {
      initializeClient: (s, o) => {
        seen.push({ ...o });
        return real.initializeClient(s, o);
      },
    };
    const r = await driveHandshake({
      client: h2,
      path: '/protected/',
      mechanism: negotiateMechanism({ mech: 'kerberos', kerberos: spy }),
      leg: legInfo(a.origin, '/protected/'),
    });
    expect(r.status).toBe(200);
    expect(r.finishError).toBeUndefined();
    expect(r.remoteUser).toBe('alice@EXAMPLE.TEST');
    expect(seen[0]?.mechOID).toBe(GSS_MECH_OID_KRB5);
    // A raw krb5 token is the GSS InitialContextToken with the krb5 OID, not SPNEGO.
    expect(Buffer.from(r.sent[1]!.slice('Negotiate '.length), 'base64').subarray(0, 17).toString('hex')).toContain(
      '06092a864886f712010202',
    );
  });

  it('M2: delegation is off by default (flags = MUTUAL|SEQUENCE, passed as `flags`, not `gssFlag`); on only when asked', async () => {
    const a = lab.apache!;
    const real = await loadKerberos();
    const seen: Array<{ spn: string; o: KerberosClientOptions & { gssFlag?: number } }> = [];
    const spy: KerberosModuleLike = {
      initializeClient: (spn, o) => {
        seen.push({ spn, o: { ...o } });
        return real.initializeClient(spn, o);
      },
    };
    for (const opts of [{}, { delegate: true }] satisfies NegotiateOptions[]) {
      const r = await driveHandshake({
        client: h1,
        path: '/protected/',
        mechanism: negotiateMechanism({ ...opts, kerberos: spy }),
        leg: legInfo(a.origin, '/protected/'),
      });
      expect(r.status).toBe(200);
    }
    expect(seen[0]).toEqual({
      spn: 'HTTP@localhost',
      o: { mechOID: GSS_MECH_OID_SPNEGO, flags: GSS_C_MUTUAL_FLAG | GSS_C_SEQUENCE_FLAG },
    });
    expect(seen[0]!.o.flags! & GSS_C_DELEG_FLAG).toBe(0);
    expect(seen[0]!.o.gssFlag).toBeUndefined();
    expect(seen[1]!.o.flags).toBe(GSS_C_MUTUAL_FLAG | GSS_C_SEQUENCE_FLAG | GSS_C_DELEG_FLAG);
  });

  it('M2: custom SPN (HTTP/localhost@EXAMPLE.TEST form) and principal choice authenticate', async () => {
    const a = lab.apache!;
    for (const opts of [
      { spn: 'HTTP/localhost@EXAMPLE.TEST' },
      { spn: 'HTTP@localhost', principal: 'alice@EXAMPLE.TEST' },
    ] satisfies NegotiateOptions[]) {
      const r = await driveHandshake({
        client: h1,
        path: '/protected/',
        mechanism: negotiateMechanism(opts),
        leg: legInfo(a.origin, '/protected/'),
      });
      expect(r.status, JSON.stringify(opts)).toBe(200);
      expect(r.finishError).toBeUndefined();
    }
  });

  it('M2: includePort builds HTTP@host:port, which this KDC does not know → KerberosUnknownServiceError', async () => {
    const a = lab.apache!;
    const mech = negotiateMechanism({ includePort: true });
    const leg = legInfo(a.origin, '/protected/');
    const err = await mech
      .createContext(leg)
      .step(undefined, leg)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KerberosUnknownServiceError);
    expect((err as KerberosUnknownServiceError).spn).toBe(`HTTP@localhost:${a.tlsPort}`);
  });

  it('M2: unknown SPN (HTTP@nosuchhost) → KerberosUnknownServiceError naming the SPN and the fix', async () => {
    const leg = legInfo(lab.apache!.origin, '/protected/');
    const err = await negotiateMechanism({ spn: 'HTTP@nosuchhost' })
      .createContext(leg)
      .step(undefined, leg)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KerberosUnknownServiceError);
    expect(err).toMatchObject({ code: 'MULTILEG_KRB_UNKNOWN_SPN' });
    expect((err as Error).message).toMatch(/HTTP@nosuchhost.*check the SPN.*spn/);
    expect((err as KerberosUnknownServiceError).gssMessage).toContain('not found in Kerberos database');
  });

  it('M2: no ticket (SPNEGO and raw krb5) → KerberosNoTicketError "run kinit, give a client keytab (negotiate.keytab), or pass principal"', async () => {
    const leg = legInfo(lab.apache!.origin, '/protected/');
    for (const mech of ['spnego', 'kerberos'] as const) {
      const err = await withEnv({ KRB5CCNAME: missingCcache() }, () =>
        negotiateMechanism({ mech })
          .createContext(leg)
          .step(undefined, leg)
          .catch((e: unknown) => e),
      );
      expect(err, mech).toBeInstanceOf(KerberosNoTicketError);
      expect(err).toMatchObject({ code: 'MULTILEG_KRB_NO_TICKET' });
      expect((err as Error).message).toContain('run kinit, give a client keytab (negotiate.keytab), or pass principal');
    }
  });

  it('M2: principal without a ticket in the cache → KerberosNoTicketError naming the principal', async () => {
    const leg = legInfo(lab.apache!.origin, '/protected/');
    const err = await negotiateMechanism({ principal: 'bob@EXAMPLE.TEST' })
      .createContext(leg)
      .step(undefined, leg)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KerberosNoTicketError);
    expect((err as Error).message).toContain('kinit bob@EXAMPLE.TEST');
  });

  describe('S6: negotiate.principal is the identity used, or nothing is sent', () => {
    const BOB = 'bob@EXAMPLE.TEST';
    /** An agent made as bob; the request's outcome: the user Apache saw, or the error's code and message. */
    async function asBob(
      negotiate: NegotiateOptions,
    ): Promise<{ user?: string | null; code?: string; message?: string }> {
      const a = new MultilegAgent({ connect: { ca: [lab.apache!.ca] }, negotiate: { principal: BOB, ...negotiate } });
      try {
        const res = await fetch(`${lab.apache!.origin}/protected/`, { dispatcher: a });
        await res.text();
        return { user: res.headers.get('x-remote-user') };
      } catch (e) {
        const cause = (e as { cause?: { code?: string; message?: string } }).cause;
        return { code: cause?.code ?? 'none', message: cause?.message ?? String(e) };
      } finally {
        await a.destroy();
      }
    }
    beforeAll(async () => {
      await lab.realm!.kadmin(`addprinc -pw bobpw ${BOB}`);
    });

    it("S6/M2: only alice's ticket at hand, raw Kerberos (mech: 'kerberos') as bob: MULTILEG_KRB_NO_TICKET naming bob, not a request as alice — from the default cache and from negotiate.ccache, SPNEGO alike", async () => {
      for (const negotiate of [
        { mech: 'kerberos' },
        { mech: 'kerberos', ccache: lab.realm!.ccache },
        { mech: 'spnego' },
        { mech: 'spnego', ccache: lab.realm!.ccache },
      ] satisfies NegotiateOptions[]) {
        const r = await asBob({ backend: 'gssapi', ...negotiate });
        // Before the fix raw Kerberos got 200 as alice: the credential acquired for bob had no
        // Kerberos element (gss-ntlmssp's only), and MIT then took the default ticket.
        expect(r, JSON.stringify(negotiate)).toMatchObject({ code: 'MULTILEG_KRB_NO_TICKET' });
        expect(r.message).toContain(`no Kerberos ticket for ${BOB}: run kinit ${BOB}`);
      }
    });

    it("S6/M2: the kerberos addon (backend: 'kerberos') with principal and raw Kerberos is refused before any token, not run as alice; with SPNEGO it is bob's no-ticket", async () => {
      const raw = await asBob({ backend: 'kerberos', mech: 'kerberos' });
      expect(raw).toMatchObject({ code: 'MULTILEG_MECHANISM_UNAVAILABLE' });
      expect(raw.message).toMatch(/negotiate\.principal with mech: 'kerberos' needs the GSS-API binding/);
      const spnego = await asBob({ backend: 'kerberos', mech: 'spnego' });
      expect(spnego).toMatchObject({ code: 'MULTILEG_KRB_NO_TICKET' });
      expect(spnego.message).toContain(`kinit ${BOB}`);
    });

    it("S6/M2: bob's ticket in a collection whose primary cache is alice's: raw Kerberos and SPNEGO as bob run as bob", async () => {
      const collection = `DIR:${join(lab.dir, 'collection')}`;
      mkdirSync(join(lab.dir, 'collection'));
      await lab.realm!.kinit({ ccache: collection, principal: BOB, password: 'bobpw' });
      await lab.realm!.kinit({ ccache: collection }); // alice, in a cache of her own: now the primary one
      for (const mech of ['kerberos', 'spnego'] as const) {
        const r = await withEnv({ KRB5CCNAME: collection }, () => asBob({ backend: 'gssapi', mech }));
        expect(r, mech).toEqual({ user: BOB });
      }
    });
  });

  it('M2: KDC unreachable (krb5.conf points at a closed port) → KerberosKdcUnreachableError', async () => {
    const realm = lab.realm!;
    const conf = join(lab.dir, 'closed-kdc.conf');
    await realm.writeKrb5Conf(conf, await freePort(true)); // nothing listens there
    const cc = join(lab.dir, 'fresh.ccache'); // a TGT but no service ticket yet
    await realm.kinit({ ccache: `FILE:${cc}` });
    const leg = legInfo(lab.apache!.origin, '/protected/');
    const err = await withEnv({ KRB5_CONFIG: conf, KRB5CCNAME: `FILE:${cc}` }, () =>
      negotiateMechanism()
        .createContext(leg)
        .step(undefined, leg)
        .catch((e: unknown) => e),
    );
    expect(err).toBeInstanceOf(KerberosKdcUnreachableError);
    expect(err).toMatchObject({ code: 'MULTILEG_KRB_KDC_UNREACHABLE' });
    expect((err as Error).message).toContain('krb5.conf');
  });

  it('M2: expired ticket (kinit -l 1s, then it lapses) → KerberosTicketExpiredError "run kinit again"', async () => {
    const realm = lab.realm!;
    const cc = join(lab.dir, 'short.ccache');
    await realm.kinit({ ccache: `FILE:${cc}`, lifetime: '1s' });
    await new Promise((r) => setTimeout(r, 2100)); // let the 1-second ticket expire (not a timing assertion)
    const leg = legInfo(lab.apache!.origin, '/protected/');
    const err = await withEnv({ KRB5CCNAME: `FILE:${cc}` }, () =>
      negotiateMechanism()
        .createContext(leg)
        .step(undefined, leg)
        .catch((e: unknown) => e),
    );
    expect(err).toBeInstanceOf(KerberosTicketExpiredError);
    expect(err).toMatchObject({ code: 'MULTILEG_KRB_TICKET_EXPIRED' });
    expect((err as Error).message).toContain('run kinit again');
  });

  it('M2: clock skew (ccache KDC time offset +1h, real KDC answers KRB_AP_ERR_SKEW) → KerberosClockSkewError', async () => {
    const cc = await lab.realm!.writeSkewedCcache(join(lab.dir, 'skewed.ccache'), 3600);
    const leg = legInfo(lab.apache!.origin, '/protected/');
    const err = await withEnv({ KRB5CCNAME: cc }, () =>
      negotiateMechanism()
        .createContext(leg)
        .step(undefined, leg)
        .catch((e: unknown) => e),
    );
    expect(err).toBeInstanceOf(KerberosClockSkewError);
    expect(err).toMatchObject({ code: 'MULTILEG_KRB_CLOCK_SKEW' });
    expect((err as Error).message).toContain('sync');
  });

  it('M2: mutual auth: a tampered final token, or none when required, is a MutualAuthError; optional tolerates none', async () => {
    const a = lab.apache!;
    const leg = legInfo(a.origin, '/protected/');
    async function to200(opts: NegotiateOptions = {}) {
      const ctx = negotiateMechanism(opts).createContext(leg);
      const res = await send(h1, '/protected/', { authorization: await ctx.step(undefined, leg) });
      expect(res.status).toBe(200);
      const tok = challengeFor(res.headers, 'Negotiate')?.token68;
      expect(tok).toBeTruthy();
      return { ctx, tok: tok! };
    }
    // tampered: flip a byte inside the encrypted AP-REP part
    const t = await to200();
    const raw = Buffer.from(t.tok, 'base64');
    raw[raw.length - 8] = raw[raw.length - 8]! ^ 0x55;
    await expect(t.ctx.finish(negotiateChallenge(raw.toString('base64')), leg)).rejects.toBeInstanceOf(MutualAuthError);
    expect(t.ctx.complete).toBe(false);
    // none, required (default)
    const n = await to200();
    await expect(n.ctx.finish(undefined, leg)).rejects.toBeInstanceOf(MutualAuthError);
    // none, optional
    const o = await to200({ mutualAuth: 'optional' });
    await expect(o.ctx.finish(undefined, leg)).resolves.toBeUndefined();
    // and the genuine token verifies
    const g = await to200();
    await g.ctx.finish(negotiateChallenge(g.tok), leg);
    expect(g.ctx.complete).toBe(true);
  });

  it('M2: a second 401 without a token after our Kerberos token is a clear MechanismError (server refused)', async () => {
    // /ntlm accepts only ntlmssp, so it refuses the Kerberos token with a bare Negotiate challenge.
    const a = lab.apache!;
    const leg = legInfo(a.origin, '/ntlm/');
    const ctx = negotiateMechanism().createContext(leg);
    const res = await send(h1, '/ntlm/', { authorization: await ctx.step(undefined, leg) });
    expect(res.status).toBe(401);
    await expect(ctx.step(challengeFor(res.headers, 'Negotiate'), leg)).rejects.toMatchObject({
      code: 'MULTILEG_MECHANISM',
    });
  });

  it('M2 (peer reference): curl --negotiate -u : --http2 gets 200 from the same Apache /protected', async () => {
    const a = lab.apache!;
    const r = await run(
      '/usr/bin/curl',
      [
        '-sS',
        '-o',
        '/dev/null',
        '-w',
        '%{http_code} %{http_version}',
        '--negotiate',
        '-u',
        ':',
        '--http2',
        '--cacert',
        a.certFile,
        `${a.origin}/protected/`,
      ],
      { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...lab.env } },
    );
    expect(r.stdout).toBe('200 2');
  });

  describe('M2 item 4: no Kerberos ticket but a password → NTLM inside SPNEGO (Apache /spnego2, HTTP/1.1)', () => {
    async function fallback(opts: NegotiateOptions, creds: Credentials = ALICE_NTLM) {
      const a = lab.apache!;
      const client = labClient(a.origin, a.ca);
      try {
        return await withEnv({ KRB5CCNAME: missingCcache() }, () =>
          driveHandshake({
            client,
            path: '/spnego2/',
            mechanism: negotiateMechanism({ credentials: creds, ...opts }),
            leg: legInfo(a.origin, '/spnego2/'),
          }),
        );
      } finally {
        await client.close();
      }
    }

    it('M2: SPNEGO/NTLM with mechListMIC: 401 → 401 → 200, final mechListMIC verified', async () => {
      const r = await fallback({});
      expect(r.responses.map((x) => x.status)).toEqual([401, 401, 200]);
      expect(r.remoteUser).toBe('EXAMPLE\\alice');
      expect(r.finishError).toBeUndefined();
      const ctx = r.context as unknown as { usedNtlmFallback: boolean };
      expect(ctx.usedNtlmFallback).toBe(true);
      expect(r.context.identity).toBe('EXAMPLE\\alice');
      // NegTokenInit offering only NTLMSSP (1.3.6.1.4.1.311.2.2.10)
      expect(Buffer.from(r.sent[1]!.slice(10), 'base64').toString('hex')).toContain('060a2b06010401823702020a');
      // the 200 carries NegTokenResp accept-completed + mechListMIC
      expect(challengeFor(r.responses[2]!.headers, 'Negotiate')?.token68).toMatch(/^oRsw/);
    });

    it('M2: raw NTLMSSP inside Negotiate is accepted too (MIT mechglue), without a final token', async () => {
      const r = await fallback({ ntlmFallback: 'raw' });
      expect(r.responses.map((x) => x.status)).toEqual([401, 401, 200]);
      expect(r.remoteUser).toBe('EXAMPLE\\alice');
      expect(r.sent[1]).toMatch(/^Negotiate TlRMTVNTUAAB/);
      expect(r.finishError).toBeUndefined();
    });

    it('M2: wrong password via the fallback → final 401', async () => {
      const r = await fallback({}, { ...ALICE_NTLM, password: 'wrong' });
      expect(r.status).toBe(401);
      expect(r.remoteUser).toBe('');
    });

    it('M2: a tampered final mechListMIC is a MutualAuthError', async () => {
      const a = lab.apache!;
      const client = labClient(a.origin, a.ca);
      const leg = legInfo(a.origin, '/spnego2/');
      try {
        await withEnv({ KRB5CCNAME: missingCcache() }, async () => {
          const ctx = negotiateMechanism({ credentials: ALICE_NTLM }).createContext(leg);
          let res = await send(client, '/spnego2/', { authorization: await ctx.step(undefined, leg) });
          expect(res.status).toBe(401);
          res = await send(client, '/spnego2/', {
            authorization: await ctx.step(challengeFor(res.headers, 'Negotiate'), leg),
          });
          expect(res.status).toBe(200);
          const tok = Buffer.from(challengeFor(res.headers, 'Negotiate')!.token68!, 'base64');
          tok[tok.length - 6] = tok[tok.length - 6]! ^ 1;
          await expect(ctx.finish(negotiateChallenge(tok.toString('base64')), leg)).rejects.toBeInstanceOf(
            MutualAuthError,
          );
        });
      } finally {
        await client.close();
      }
    });

    it('M2: with a ticket, SPNEGO at /spnego2 picks Kerberos (no fallback), 401 → 200', async () => {
      const a = lab.apache!;
      const r = await driveHandshake({
        client: h1,
        path: '/spnego2/',
        mechanism: negotiateMechanism({ credentials: ALICE_NTLM }),
        leg: legInfo(a.origin, '/spnego2/'),
      });
      expect(r.responses.map((x) => x.status)).toEqual([401, 200]);
      expect(r.remoteUser).toBe('alice@EXAMPLE.TEST');
      expect((r.context as unknown as { usedNtlmFallback: boolean }).usedNtlmFallback).toBe(false);
    });

    it('M2: raw Kerberos mech never falls back: no ticket stays KerberosNoTicketError', async () => {
      const leg = legInfo(lab.apache!.origin, '/spnego2/');
      const err = await withEnv({ KRB5CCNAME: missingCcache() }, () =>
        negotiateMechanism({ mech: 'kerberos', credentials: ALICE_NTLM })
          .createContext(leg)
          .step(undefined, leg)
          .catch((e: unknown) => e),
      );
      expect(err).toBeInstanceOf(KerberosNoTicketError);
    });
  });
});
