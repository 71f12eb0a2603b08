/**
 * M2 unit tests (no peers): GSS error → typed error mapping from the real MIT texts, SPN rules, GSS
 * flags, the Negotiate context state machine over a fake `kerberos` module, SPNEGO DER, and the missing
 * addon. The real-peer proofs are in interop-negotiate.test.ts.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { request } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { MultilegAgent } from '../src/agent.ts';
import type { Challenge } from '../src/challenge/types.ts';
import {
  InvalidTokenError,
  MechanismError,
  type MultilegError,
  MutualAuthError,
  SystemNtlmRefusedError,
} from '../src/errors.ts';
import {
  carriesKerberosApReq,
  GSS_C_DELEG_FLAG,
  GSS_C_MUTUAL_FLAG,
  GSS_C_SEQUENCE_FLAG,
  KerberosCcacheError,
  type KerberosClientLike,
  type KerberosClientOptions,
  KerberosClockSkewError,
  KerberosKdcUnreachableError,
  KerberosKeytabError,
  type KerberosModuleLike,
  KerberosNoTicketError,
  KerberosTicketExpiredError,
  KerberosUnknownServiceError,
  mapGssError,
  negotiateFlags,
  negotiateMechanism,
  normalizeSpn,
  spnFor,
} from '../src/mechanisms/negotiate/index.ts';
import { PROXY_KERBEROS_NAMES } from '../src/mechanisms/negotiate/mechanism.ts';
import { cannotRunHere } from '../src/mechanisms/registry.ts';
import { encodeOid, tlv } from '../src/mechanisms/spnego/der.ts';
import {
  decodeNegTokenInit,
  decodeNegTokenResp,
  encodeMechTypeList,
  encodeNegTokenInit,
  encodeNegTokenResp,
  NegState,
  ntlmSign,
  OID_KRB5,
  OID_NTLMSSP,
  SPNEGO_NTLM_FLAGS,
} from '../src/mechanisms/spnego/index.ts';
import { isNegTokenReject, OID_MS_KRB5 } from '../src/mechanisms/spnego/tokens.ts';
import type { LegInfo, Mechanism } from '../src/mechanisms/types.ts';
import { ProxyAuthenticationError } from '../src/proxy/errors.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { UNUSABLE_MEMORY_MS } from '../src/session/credential-proof.ts';
import { TrustRequiredError } from '../src/trust/policy.ts';
import { ALICE } from './helpers.ts';

const leg: LegInfo = {
  origin: 'https://web.example.test:8443',
  hostname: 'web.example.test',
  port: 8443,
  method: 'GET',
  path: '/',
  proxy: false,
};
const ch = (token68?: string): Challenge =>
  token68 === undefined
    ? { scheme: 'Negotiate', schemeKey: 'negotiate', params: {} }
    : { scheme: 'Negotiate', schemeKey: 'negotiate', token68, params: {} };

// Texts as the kerberos addon reported them against the lab's MIT KDC (see interop-negotiate.test.ts).
const GSS = {
  noTicketSpnego:
    'No credentials were supplied, or the credentials were unavailable or inaccessible: SPNEGO cannot find mechanisms to negotiate',
  noTicketKrb5:
    'No credentials were supplied, or the credentials were unavailable or inaccessible: No Kerberos credentials available (default cache: FILE:/tmp/x/none)',
  expired: 'Unspecified GSS failure.  Minor code may provide more information: Ticket expired',
  kdc: "Unspecified GSS failure.  Minor code may provide more information: Cannot contact any KDC for realm 'EXAMPLE.TEST'",
  kdcFind:
    "Unspecified GSS failure.  Minor code may provide more information: Cannot find KDC for realm 'EXAMPLE.TEST'",
  spn: 'Unspecified GSS failure.  Minor code may provide more information: Server HTTP/nosuchhost@EXAMPLE.TEST not found in Kerberos database',
  skew: 'Unspecified GSS failure.  Minor code may provide more information: Clock skew too great',
  other: 'Invalid token was supplied: Unknown error',
};

/**
 * R4 for a refused Kerberos ticket: three refusals in a row each keep it back UNUSABLE_MEMORY_MS (not
 * sent a second before the wait ends, sent once it has), never doubling. `tried`: one request, whether
 * it carried the ticket. Needs Date faked.
 */
async function keptBackBaseWaitEachTime(tried: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 3; i++) {
    expect(await tried()).toBe(true);
    vi.setSystemTime(Date.now() + UNUSABLE_MEMORY_MS - 1_000);
    expect(await tried()).toBe(false);
    vi.setSystemTime(Date.now() + 1_000);
  }
  expect(await tried()).toBe(true);
}

describe('M2: GSS-API errors map to actionable typed errors', () => {
  it('M2: each known MIT text maps to its error class, code and fix', () => {
    const spn = { spn: 'HTTP@nosuchhost' };
    const cases: Array<[string, new (...a: never[]) => MultilegError, string, RegExp]> = [
      [
        GSS.noTicketSpnego,
        KerberosNoTicketError,
        'MULTILEG_KRB_NO_TICKET',
        /run kinit, give a client keytab \(negotiate\.keytab\), or pass principal/,
      ],
      [
        GSS.noTicketKrb5,
        KerberosNoTicketError,
        'MULTILEG_KRB_NO_TICKET',
        /run kinit, give a client keytab \(negotiate\.keytab\), or pass principal/,
      ],
      [GSS.expired, KerberosTicketExpiredError, 'MULTILEG_KRB_TICKET_EXPIRED', /run kinit again/],
      [GSS.kdc, KerberosKdcUnreachableError, 'MULTILEG_KRB_KDC_UNREACHABLE', /krb5\.conf.*network/],
      [GSS.kdcFind, KerberosKdcUnreachableError, 'MULTILEG_KRB_KDC_UNREACHABLE', /krb5\.conf/],
      [GSS.spn, KerberosUnknownServiceError, 'MULTILEG_KRB_UNKNOWN_SPN', /HTTP@nosuchhost.*check the SPN/],
      [GSS.skew, KerberosClockSkewError, 'MULTILEG_KRB_CLOCK_SKEW', /sync this machine's clock/],
    ];
    for (const [text, cls, code, fix] of cases) {
      const e = mapGssError(new Error(text), spn);
      expect(e, text).toBeInstanceOf(cls);
      expect(e.code).toBe(code);
      expect(e.message).toMatch(fix);
      expect(e.cause).toBeInstanceOf(Error);
    }
    const other = mapGssError(new Error(GSS.other), spn);
    expect(other).toBeInstanceOf(MechanismError);
    expect(other.message).toContain('Invalid token was supplied');
  });

  it('M2: with negotiate.ccache given, "no ticket" and "expired" name kinit -c CCACHE (a plain kinit fills the default cache, which the agent does not read); with a principal too, plain kinit PRINCIPAL (kinit -c into a FILE cache would replace the tickets there)', () => {
    const ccache = 'FILE:/tmp/svc-cc';
    const none = mapGssError(new Error(GSS.noTicketKrb5), { spn: 'HTTP@h', ccache });
    expect(none).toBeInstanceOf(KerberosNoTicketError);
    expect(none.message).toMatch(
      /^Negotiate: no Kerberos ticket: run kinit -c FILE:\/tmp\/svc-cc, give a client keytab/,
    );
    const expired = mapGssError(new Error(GSS.expired), { spn: 'HTTP@h', ccache });
    expect(expired).toBeInstanceOf(KerberosTicketExpiredError);
    expect(expired.message).toMatch(
      /^Negotiate: the Kerberos ticket has expired: run kinit -c FILE:\/tmp\/svc-cc again \(or renew it with kinit -R -c FILE:\/tmp\/svc-cc\) \[GSS: /,
    );
    expect(expired.cause).toBeInstanceOf(Error);
    const bob = mapGssError(new Error(GSS.noTicketSpnego), { spn: 'HTTP@h', principal: 'bob@R', ccache });
    expect(bob.message).toMatch(/^Negotiate: no Kerberos ticket for bob@R: run kinit bob@R \(/);
    // Without a ccache option: as before.
    expect(mapGssError(new Error(GSS.noTicketKrb5), { spn: 'HTTP@h' }).message).toMatch(
      /: run kinit, give a client keytab/,
    );
    expect(mapGssError(new Error(GSS.expired), { spn: 'HTTP@h' }).message).toContain(
      'run kinit again (or renew it with kinit -R)',
    );
  });

  it('M2: a principal or an SPN given as such is what the fix names: "run kinit bob@R" (it said "or pass principal", passed already), the given SPN to check against the keytab (it said "or pass negotiate.spn")', () => {
    const noTicket = mapGssError(new Error(GSS.noTicketSpnego), { spn: 'HTTP@h', principal: 'bob@R' });
    expect(noTicket).toBeInstanceOf(KerberosNoTicketError);
    expect(noTicket.message).toMatch(
      /^Negotiate: no Kerberos ticket for bob@R: run kinit bob@R \(or give credentials for the NTLM fallback\) \[GSS: /,
    );
    expect(noTicket.message).not.toContain('pass principal');
    const given = mapGssError(new Error(GSS.spn), { spn: 'HTTP@wrong.example', spnGiven: true });
    expect(given).toBeInstanceOf(KerberosUnknownServiceError);
    expect(given.code).toBe('MULTILEG_KRB_UNKNOWN_SPN');
    expect(given.message).toMatch(
      /^Negotiate: the KDC does not know the service principal HTTP@wrong\.example: check the SPN given in negotiate\.spn against the server's keytab name \(klist -k on the server\) \[GSS: /,
    );
    expect(given.message).not.toContain('pass negotiate.spn');
    expect(given.cause).toBeInstanceOf(Error);
  });

  it("S1/M2: an unknown SPN made from the host: the fix naming negotiate.canonicalizeHost and negotiate.spn says they need trustedOrigins (one step: without it each is a TrustRequiredError at construction); a proxy's, which need none, does not say so", () => {
    const origin = mapGssError(new Error(GSS.spn), { spn: 'HTTP@nosuchhost' });
    expect(origin).toBeInstanceOf(KerberosUnknownServiceError);
    expect((origin as KerberosUnknownServiceError).fix).toBe(
      "check the SPN (the server's keytab name; a CNAME may need negotiate.canonicalizeHost, a non-default port negotiate.includePort) or pass negotiate.spn (negotiate.canonicalizeHost and negotiate.spn need trustedOrigins, the origins their ticket may go to)",
    );
    // What the fix asks for is what the constructor takes with trustedOrigins, and refuses without.
    for (const negotiate of [{ spn: 'HTTP@web.example.com' }, { canonicalizeHost: true }]) {
      expect(() => new MultilegAgent({ negotiate })).toThrow(TrustRequiredError);
      void new MultilegAgent({ negotiate, trustedOrigins: ['https://web.example.com'] }).close();
    }
    const proxy = mapGssError(new Error(GSS.spn), {
      spn: 'HTTP@nosuchhost',
      naming: PROXY_KERBEROS_NAMES('proxy.credentials'),
    });
    expect((proxy as KerberosUnknownServiceError).fix).toBe(
      "check the SPN (the server's keytab name; a CNAME may need proxy.negotiate.canonicalizeHost, a non-default port proxy.negotiate.includePort) or pass proxy.negotiate.spn",
    );
  });

  it("M5: a client keytab whose key is older than the KDC's (MIT: the AS-REP does not decrypt; AD: pre-authentication failed) is MULTILEG_KRB_KEYTAB naming the kvno check and a new export, the same words with or without a principal (it was a bare GSS-API failure, exit 1) (trial u12)", () => {
    const texts = [
      'gss_acquire_cred_from: No credentials were supplied, or the credentials were unavailable or inaccessible: Decrypt integrity check failed',
      'gss_acquire_cred_from: No credentials were supplied, or the credentials were unavailable or inaccessible: Preauthentication failed (client svc@EXAMPLE.COM, service HTTP/h@EXAMPLE.COM)',
    ];
    for (const text of texts) {
      for (const principal of [undefined, 'svc@EXAMPLE.COM']) {
        const e = mapGssError(new Error(text), { spn: 'HTTP@h', keytab: 'FILE:/etc/svc.keytab', principal });
        expect(e, text).toBeInstanceOf(KerberosKeytabError);
        expect((e as KerberosKeytabError).stale).toBe(true);
        expect(e.message).toContain(
          "from the client keytab FILE:/etc/svc.keytab: its key is older than the KDC's (the key changed in the KDC since the keytab was made): compare the kvno of `klist -k /etc/svc.keytab` with `kvno ",
        );
        expect(e.message).toContain('then export the key again (kadmin ktadd; ktpass on Windows) [GSS: ');
        expect(e.message).not.toContain('pass negotiate.principal');
        expect(e.message).not.toContain('-K'); // klist -K would print the keys
      }
    }
    // Without a keytab the text is no stale keytab's.
    expect(mapGssError(new Error(texts[0]), { spn: 'HTTP@h' })).toBeInstanceOf(MechanismError);
  });

  it('M5: the client keytab error names negotiate.principal as given (GSS-API wrote it EXAMPLE.COM\\svc) and suggests passing it only when it was not', () => {
    // MIT's text when the keytab has no key for the principal (SPNEGO): the client as gss-ntlmssp shows it.
    const text = `${GSS.noTicketSpnego} (client EXAMPLE.COM\\svc, service HTTP/h@EXAMPLE.COM)`;
    const keytab = 'FILE:/etc/svc.keytab';
    const given = mapGssError(new Error(text), { spn: 'HTTP@h', keytab, principal: 'svc@EXAMPLE.COM' });
    expect(given).toBeInstanceOf(KerberosKeytabError);
    expect(given.code).toBe('MULTILEG_KRB_KEYTAB');
    expect(given.message).toMatch(
      /^Negotiate: no ticket for svc@EXAMPLE\.COM from the client keytab FILE:\/etc\/svc\.keytab: check the path and that it holds the principal's keys \(klist -k\) \[GSS: /,
    );
    expect(given.message).not.toContain('pass negotiate.principal');
    expect(given.cause).toBeInstanceOf(Error);
    const expired = mapGssError(new Error(GSS.expired), { spn: 'HTTP@h', keytab, principal: 'svc@EXAMPLE.COM' });
    expect(expired.message).toMatch(
      /^Negotiate: the ticket of svc@EXAMPLE\.COM expired and no new one came from the client keytab FILE:\/etc\/svc\.keytab: check the path, that it holds the principal's current keys /,
    );
    // Without a principal the keytab's own is used: naming one is a fix.
    const unnamed = mapGssError(new Error(text), { spn: 'HTTP@h', keytab });
    expect(unnamed.message).toMatch(
      /^Negotiate: no ticket from the client keytab FILE:\/etc\/svc\.keytab: check the path and that it holds the principal's keys \(klist -k\), or pass negotiate\.principal \[GSS: /,
    );
  });

  it('M2: an unknown SPN whose client is named without a realm (negotiate.principal `svc`, as given) is no cross-realm failure', () => {
    const err = Object.assign(new Error(GSS.spn), {
      clientPrincipal: 'svc',
      servicePrincipal: 'HTTP/nosuchhost@EXAMPLE.TEST',
    });
    expect(mapGssError(err, { spn: 'HTTP@nosuchhost', principal: 'svc' })).toBeInstanceOf(KerberosUnknownServiceError);
    const across = Object.assign(new Error(GSS.spn), {
      clientPrincipal: 'carol@OTHER.TEST',
      servicePrincipal: 'HTTP/nosuchhost@EXAMPLE.TEST',
    });
    expect(mapGssError(across, { spn: 'HTTP@nosuchhost' }).code).toBe('MULTILEG_KRB_WRONG_REALM');
  });

  it('M2: "A required argument is missing" with a chosen principal means no ticket for that principal', () => {
    const text = 'Unspecified GSS failure.  Minor code may provide more information: A required argument is missing';
    expect(mapGssError(new Error(text), { spn: 'HTTP@h', principal: 'bob@R' })).toBeInstanceOf(KerberosNoTicketError);
    expect(mapGssError(new Error(text), { spn: 'HTTP@h' })).toBeInstanceOf(MechanismError);
  });

  /** Runs `f` with the environment changed as given, then restores it. */
  const withEnv = <T>(env: Record<string, string | undefined>, f: () => T): T => {
    const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
    const set = (e: Record<string, string | undefined>) => {
      for (const [k, v] of Object.entries(e)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    };
    set(env);
    try {
      return f();
    } finally {
      set(saved);
    }
  };

  it('M5/S2: a credentials cache this user cannot write (a pod: KRB5_CLIENT_KTNAME, KRB5CCNAME on a read-only mount) is MULTILEG_KRB_CCACHE, naming KRB5CCNAME and negotiate.keytab', () => {
    const text =
      'gss_acquire_cred_from: No credentials were supplied, or the credentials were unavailable or inaccessible: Credentials cache permissions incorrect';
    const e = withEnv({ KRB5CCNAME: 'FILE:/etc/ro/krb5cc' }, () => mapGssError(new Error(text), { spn: 'HTTP@h' }));
    expect(e).toBeInstanceOf(KerberosCcacheError);
    expect(e.code).toBe('MULTILEG_KRB_CCACHE');
    expect(e.message).toMatch(
      /^Negotiate: the Kerberos credentials cache FILE:\/etc\/ro\/krb5cc cannot be used \(read or written\) by this user .*: make KRB5CCNAME name a file this user can read and write .*, or use negotiate\.keytab, which keeps its tickets in memory \[GSS: /,
    );
    // The agent's own cache is the one named when it has one; it cannot run: the next scheme, or the 401 (C11's kind of typed error).
    expect(mapGssError(new Error(text), { spn: 'HTTP@h', ccache: 'FILE:/x/cc' }).message).toContain(
      'cache FILE:/x/cc ',
    );
    expect(cannotRunHere(e)).toBe(true);
  });

  it('M5: no ticket while KRB5_CLIENT_KTNAME names a keytab that is missing or unreadable: the variable and the file are named, not only kinit', () => {
    const missing = '/nonexistent-dir/svc.keytab';
    const e = withEnv({ KRB5_CLIENT_KTNAME: missing }, () =>
      mapGssError(new Error(GSS.noTicketSpnego), { spn: 'HTTP@h' }),
    );
    // Still "no ticket" (review r66: as MULTILEG_KRB_KEYTAB it was remembered 30 s, a fixed file or a
    // kinit unused meanwhile); the message names the file and the variable.
    expect(e).toBeInstanceOf(KerberosNoTicketError);
    expect(e.code).toBe('MULTILEG_KRB_NO_TICKET');
    expect(e.message).toContain(
      `no Kerberos ticket from the client keytab ${missing} (no such file), named by KRB5_CLIENT_KTNAME: check the path`,
    );
    // Without the variable, kinit is still the fix.
    const none = withEnv({ KRB5_CLIENT_KTNAME: undefined }, () =>
      mapGssError(new Error(GSS.noTicketSpnego), { spn: 'HTTP@h' }),
    );
    expect(none).toBeInstanceOf(KerberosNoTicketError);
  });
});

describe('M2: SPN and flags', () => {
  it('M2: default SPN is HTTP@host; serviceName, includePort, explicit spn forms', async () => {
    expect(await spnFor({}, 'Web.Example.Test', 443)).toBe('HTTP@web.example.test');
    expect(await spnFor({ serviceName: 'HOST' }, 'h', 443)).toBe('HOST@h');
    expect(await spnFor({ includePort: true }, 'h', 8443)).toBe('HTTP@h:8443');
    expect(await spnFor({ spn: 'HTTP/h2.example@REALM' }, 'h', 443)).toBe('HTTP@h2.example');
    expect(await spnFor({}, '[::1]', 443)).toBe('HTTP@::1');
    expect(normalizeSpn('HTTP@x')).toBe('HTTP@x');
    expect(normalizeSpn('HTTP/x')).toBe('HTTP@x');
  });

  it('M2: canonicalizeHost (opt-in) follows the CNAME chain; DNS failure keeps the name', async () => {
    const cnames: Record<string, string> = { 'alias.example': 'mid.example.', 'mid.example': 'real.example' };
    const resolve = async (h: string): Promise<string[]> => {
      const c = cnames[h];
      if (!c) throw Object.assign(new Error('ENODATA'), { code: 'ENODATA' });
      return [c];
    };
    expect(await spnFor({ canonicalizeHost: true }, 'alias.example', 443, resolve)).toBe('HTTP@real.example');
    expect(await spnFor({}, 'alias.example', 443, resolve)).toBe('HTTP@alias.example');
    expect(await spnFor({ canonicalizeHost: true }, 'other', 443, resolve)).toBe('HTTP@other');
  });

  it('M2: GSS flags: MUTUAL|SEQUENCE, DELEG only when asked', () => {
    expect(negotiateFlags({})).toBe(GSS_C_MUTUAL_FLAG | GSS_C_SEQUENCE_FLAG);
    expect(negotiateFlags({ delegate: true }) & GSS_C_DELEG_FLAG).toBe(GSS_C_DELEG_FLAG);
    expect(negotiateFlags({ delegate: false }) & GSS_C_DELEG_FLAG).toBe(0);
  });
});

/** A scripted fake of the addon's client. */
function fakeKerberos(script: {
  init?: (spn: string, o?: KerberosClientOptions) => void;
  steps: Array<(input: string, c: { complete: boolean }) => string | null>;
  username?: string;
}): KerberosModuleLike & { calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    async initializeClient(spn, o) {
      script.init?.(spn, o);
      const state = { complete: false, i: 0 };
      const client: KerberosClientLike = {
        async step(input) {
          calls.push(input);
          const f = script.steps[state.i++];
          if (!f) throw new Error('Invalid token was supplied: Unknown error');
          return f(input, state);
        },
        get username() {
          return script.username ?? 'u@R';
        },
        get contextComplete() {
          return state.complete;
        },
      };
      return client;
    },
  };
}

describe('M2: Negotiate context state machine (fake GSS)', () => {
  it('M2: mechanism properties', () => {
    expect(negotiateMechanism()).toMatchObject({
      scheme: 'Negotiate',
      level: 'either',
      multileg: true,
      proactive: true,
    });
  });

  it('M2: step → token, finish(final token) completes; identity from the context', async () => {
    let seen: KerberosClientOptions | undefined;
    const k = fakeKerberos({
      init: (_s, o) => {
        seen = o;
      },
      steps: [
        () => 'AAAA',
        (_i, c) => {
          c.complete = true;
          return null;
        },
      ],
    });
    const ctx = negotiateMechanism({ kerberos: k, mech: 'kerberos', principal: 'alice@R' }).createContext(leg);
    expect(await ctx.step(ch(), leg)).toBe('Negotiate AAAA');
    expect(ctx.complete).toBe(false);
    await ctx.finish(ch('BBBB'), leg);
    expect(ctx.complete).toBe(true);
    expect(ctx.identity).toBe('u@R');
    expect(k.calls).toEqual(['', 'BBBB']);
    expect(seen).toEqual({ mechOID: 9, flags: GSS_C_MUTUAL_FLAG | GSS_C_SEQUENCE_FLAG, principal: 'alice@R' });
  });

  it('S6/H5: no final token with mutualAuth optional (a proxy): once finish took the answer, identity is the principal whose ticket went, which the pool watches', async () => {
    const ctx = negotiateMechanism({
      kerberos: fakeKerberos({ steps: [() => 'AAAA'] }),
      mutualAuth: 'optional',
    }).createContext(leg);
    await ctx.step(undefined, leg);
    expect(ctx.identity).toBeUndefined(); // not before the server took it
    await ctx.finish(undefined, leg);
    expect(ctx.complete).toBe(false);
    // Was: undefined, so a Squid or Apache CONNECT that sends no final token held a tunnel as alice unwatched.
    expect(ctx.identity).toBe('u@R');
  });

  it('M2: no final token → MutualAuthError when required, fine when optional', async () => {
    const mk = () => fakeKerberos({ steps: [() => 'AAAA'] });
    const req = negotiateMechanism({ kerberos: mk() }).createContext(leg);
    await req.step(undefined, leg);
    await expect(req.finish(undefined, leg)).rejects.toBeInstanceOf(MutualAuthError);
    const opt = negotiateMechanism({ kerberos: mk(), mutualAuth: 'optional' }).createContext(leg);
    await opt.step(undefined, leg);
    await expect(opt.finish(undefined, leg)).resolves.toBeUndefined();
  });

  it('M2: a final token GSS rejects, or that leaves the context incomplete → MutualAuthError (also when optional)', async () => {
    const bad = negotiateMechanism({
      kerberos: fakeKerberos({ steps: [() => 'AAAA'] }),
      mutualAuth: 'optional',
    }).createContext(leg);
    await bad.step(undefined, leg);
    await expect(bad.finish(ch('BBBB'), leg)).rejects.toBeInstanceOf(MutualAuthError);
    const incomplete = negotiateMechanism({
      kerberos: fakeKerberos({ steps: [() => 'AAAA', () => null] }),
    }).createContext(leg);
    await incomplete.step(undefined, leg);
    await expect(incomplete.finish(ch('BBBB'), leg)).rejects.toBeInstanceOf(MutualAuthError);
  });

  it('M2: 401 without a token after our token → MechanismError; finish() with no handshake is a no-op', async () => {
    const ctx = negotiateMechanism({ kerberos: fakeKerberos({ steps: [() => 'AAAA'] }) }).createContext(leg);
    await expect(ctx.finish(undefined, leg)).resolves.toBeUndefined();
    await ctx.step(undefined, leg);
    await expect(ctx.step(ch(), leg)).rejects.toBeInstanceOf(MechanismError);
  });

  it('M2 S3: server tokens must be canonical base64 within 64 KiB', async () => {
    for (const t of ['!!!!', 'AAA', 'A'.repeat(64 * 1024 + 4)]) {
      const ctx = negotiateMechanism({ kerberos: fakeKerberos({ steps: [() => 'AAAA', () => 'CCCC'] }) }).createContext(
        leg,
      );
      await ctx.step(undefined, leg);
      await expect(ctx.step(ch(t), leg)).rejects.toBeInstanceOf(InvalidTokenError);
    }
  });

  it('M2: GSS errors surface typed; no-ticket + credentials switches to NTLM inside SPNEGO', async () => {
    const noTicket: KerberosModuleLike = {
      initializeClient: async () => {
        throw new Error(GSS.noTicketSpnego);
      },
    };
    const plain = negotiateMechanism({ kerberos: noTicket }).createContext(leg);
    await expect(plain.step(undefined, leg)).rejects.toBeInstanceOf(KerberosNoTicketError);
    const creds = { username: 'alice', password: 'pw', domain: 'EXAMPLE' };
    const fb = negotiateMechanism({ kerberos: noTicket, credentials: creds }).createContext(leg);
    const tok = await fb.step(undefined, leg);
    const init = decodeNegTokenInit(Buffer.from(tok.slice('Negotiate '.length), 'base64'));
    expect(init.mechTypes).toEqual([OID_NTLMSSP]);
    expect(init.mechToken?.subarray(0, 8).toString('latin1')).toBe('NTLMSSP\0');
    expect(init.mechToken?.length).toBe(40); // gss-ntlmssp needs the Version field
    const off = negotiateMechanism({ kerberos: noTicket, credentials: creds, ntlmFallback: false }).createContext(leg);
    await expect(off.step(undefined, leg)).rejects.toBeInstanceOf(KerberosNoTicketError);
  });
});

describe('M5: fallback to NTLM whenever Kerberos cannot produce a first token', () => {
  const creds = { username: 'alice', password: 'pw', domain: 'EXAMPLE' };
  const failing = (text: string) => {
    const k = {
      asked: 0,
      initializeClient: async () => {
        k.asked += 1;
        throw new Error(text);
      },
    };
    return k;
  };
  const isNtlm = (header: string) =>
    Buffer.from(header.slice('Negotiate '.length), 'base64').subarray(0, 8).toString('latin1') === 'NTLMSSP\0';

  it("M5/S6: the ticket's owner is compared with the credentials by user part: the same user in any form (DOMAIN\\user, curl's DOMAIN/user, user@domain) runs Kerberos, another user's ticket goes to NTLM", async () => {
    const ticketOf = (username: string) => fakeKerberos({ steps: [() => 'AAAA'], username });
    const cases: Array<[string, string, boolean]> = [
      ['alice@CORP.EXAMPLE.COM', 'EXAMPLE\\alice', true],
      ['alice@CORP.EXAMPLE.COM', 'alice@corp', true], // an NTLM domain after '@', not the realm
      ['alice@CORP.EXAMPLE.COM', 'Alice@example.com', true], // a UPN suffix other than the realm
      ['alice@CORP.EXAMPLE.COM', 'alice', true],
      ['alice@CORP.EXAMPLE.COM', 'EXAMPLE/alice', true], // curl's DOMAIN/user
      ['alice@CORP.EXAMPLE.COM', 'EXAMPLE\\bob', false],
      ['alice@CORP.EXAMPLE.COM', 'alicia', false],
      ['alice@CORP.EXAMPLE.COM', 'EXAMPLE/bob', false],
      // In a principal, a `/` is an instance: alice/admin is not admin.
      ['alice/admin@CORP.EXAMPLE.COM', 'EXAMPLE\\admin', false],
    ];
    for (const [ticket, username, kerberos] of cases) {
      const ctx = negotiateMechanism({
        kerberos: ticketOf(ticket),
        credentials: { username, password: 'pw' },
        ntlmFallback: 'raw',
      }).createContext(leg);
      const header = await ctx.step(undefined, leg);
      expect([ticket, username, isNtlm(header)]).toEqual([ticket, username, !kerberos]);
      if (!kerberos)
        expect(ctx.fallbackReason?.startsWith(`MULTILEG_KRB_OTHER_PRINCIPAL: the Kerberos ticket is ${ticket}'s`)).toBe(
          true,
        );
    }
  });

  it('M5: each Kerberos failure with a password → NTLM, with the reason; credential failures are remembered, host ones are not', async () => {
    const cases: Array<[string, string, boolean]> = [
      [GSS.noTicketKrb5, 'MULTILEG_KRB_NO_TICKET', true],
      [GSS.expired, 'MULTILEG_KRB_TICKET_EXPIRED', true],
      [GSS.spn, 'MULTILEG_KRB_UNKNOWN_SPN', false],
      [GSS.kdc, 'MULTILEG_KRB_KDC_UNREACHABLE', false],
      [GSS.other, 'MULTILEG_MECHANISM', false],
    ];
    for (const [text, code, remembered] of cases) {
      const k = failing(text);
      const mech = negotiateMechanism({ kerberos: k, credentials: creds, ntlmFallback: 'raw' });
      for (let i = 0; i < 2; i++) {
        const ctx = mech.createContext(leg);
        expect(isNtlm(await ctx.step(undefined, leg)), code).toBe(true);
        expect(ctx.fallbackReason, code).toMatch(new RegExp(`^${code}: `));
        expect(ctx.fallbackReason).not.toContain('pw');
      }
      expect(k.asked, code).toBe(remembered ? 1 : 2);
      // without a password: the typed error itself
      const err = await negotiateMechanism({ kerberos: failing(text) })
        .createContext(leg)
        .step(undefined, leg)
        .catch((e: unknown) => e);
      expect(err).toMatchObject({ code });
    }
  });

  it('M5: the password goes only where passwordAllowed says (S1); elsewhere the Kerberos error stands', async () => {
    const mech = negotiateMechanism({
      kerberos: failing(GSS.expired),
      credentials: creds,
      ntlmFallback: 'raw',
      passwordAllowed: (origin) => origin === 'https://trusted.example.test',
    });
    const err = await mech
      .createContext(leg)
      .step(undefined, leg)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KerberosTicketExpiredError);
    const trusted = { ...leg, origin: 'https://trusted.example.test' };
    expect(isNtlm(await mech.createContext(trusted).step(undefined, trusted))).toBe(true);
    // a remembered failure does not send the password to the untrusted origin either
    await expect(mech.createContext(leg).step(undefined, leg)).rejects.toBeInstanceOf(KerberosTicketExpiredError);
  });
});

describe('M5: channel-bound first tokens wait for the connection only where the backend binds', () => {
  it('M5: bindsFirstToken: on by default; off with channelBindings: false; off once the backend turns out to be the addon', async () => {
    expect(negotiateMechanism().bindsFirstToken).toBe(true);
    expect(negotiateMechanism({ channelBindings: false }).bindsFirstToken).toBe(false);
    const addon = negotiateMechanism({ kerberos: fakeKerberos({ steps: [() => 'AAAA'] }) });
    expect(addon.bindsFirstToken).toBe(true); // not known before the first handshake
    await addon.createContext(leg).step(undefined, leg);
    expect(addon.bindsFirstToken).toBe(false);
  });
});

describe('M2: no ticket is remembered for a while', () => {
  it('M2: after "no ticket", later handshakes go straight to NTLM without asking GSS-API again', async () => {
    let asked = 0;
    const noTicket: KerberosModuleLike = {
      initializeClient: async () => {
        asked += 1;
        throw new Error(GSS.noTicketSpnego);
      },
    };
    const creds = { username: 'alice', password: 'pw', domain: 'EXAMPLE' };
    const mech = negotiateMechanism({ kerberos: noTicket, credentials: creds, ntlmFallback: 'raw' });
    for (let i = 0; i < 5; i++) {
      const tok = await mech.createContext(leg).step(undefined, leg);
      expect(Buffer.from(tok.slice('Negotiate '.length), 'base64').subarray(0, 8).toString('latin1')).toBe('NTLMSSP\0');
    }
    expect(asked).toBe(1);
    // Without a fallback there is nothing to shortcut to: every context asks, and reports the error.
    const strict = negotiateMechanism({ kerberos: noTicket });
    await expect(strict.createContext(leg).step(undefined, leg)).rejects.toBeInstanceOf(KerberosNoTicketError);
    await expect(strict.createContext(leg).step(undefined, leg)).rejects.toBeInstanceOf(KerberosNoTicketError);
    expect(asked).toBe(3);
  });
});

describe('M2: a remembered "no ticket" is asked again by one handshake', () => {
  afterEach(() => vi.restoreAllMocks());

  it('M2: once "no ticket" runs out, one handshake asks GSS-API again; those started before its answer go to NTLM, and a ticket found is used by the next ones', async () => {
    let now = 1_000_000;
    vi.spyOn(Date, 'now').mockImplementation(() => now);
    let asked = 0;
    let answer: (() => Promise<KerberosClientLike>) | undefined;
    const ticket = fakeKerberos({ steps: [() => 'AAAA'], username: 'alice@R' });
    const k: KerberosModuleLike = {
      initializeClient: (spn, o) => {
        asked += 1;
        return answer ? answer() : ticket.initializeClient(spn, o);
      },
    };
    const creds = { username: 'alice', password: 'pw', domain: 'EXAMPLE' };
    const mech = negotiateMechanism({ kerberos: k, credentials: creds, ntlmFallback: 'raw' });
    const isNtlm = (header: string) =>
      Buffer.from(header.slice('Negotiate '.length), 'base64').subarray(0, 8).toString('latin1') === 'NTLMSSP\0';
    answer = async () => {
      throw new Error(GSS.noTicketSpnego);
    };
    expect(isNtlm(await mech.createContext(leg).step(undefined, leg))).toBe(true);
    expect(asked).toBe(1);
    // The memory runs out; the recheck's answer is held while more handshakes start.
    now += 60_000;
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    answer = async () => {
      await held;
      throw new Error(GSS.noTicketSpnego);
    };
    const recheck = mech.createContext(leg).step(undefined, leg);
    const others = Array.from({ length: 4 }, () => mech.createContext(leg).step(undefined, leg));
    release();
    expect((await Promise.all(others)).every(isNtlm)).toBe(true);
    expect(isNtlm(await recheck)).toBe(true);
    expect(asked).toBe(2);
    // Out again, and a kinit meanwhile: the recheck gets a ticket, and so do the handshakes after it.
    now += 60_000;
    answer = undefined;
    expect(isNtlm(await mech.createContext(leg).step(undefined, leg))).toBe(false);
    expect(isNtlm(await mech.createContext(leg).step(undefined, leg))).toBe(false);
    expect(asked).toBe(4);
  });
});

describe('M2/M5: missing kerberos addon, koffi or system GSS-API library', () => {
  async function withMissing<T>(
    pkg: string,
    factory: () => Record<string, unknown>,
    fn: (m: typeof import('../src/mechanisms/negotiate/index.ts')) => Promise<T>,
  ) {
    vi.resetModules();
    vi.doMock(pkg, factory);
    try {
      return await fn(await import('../src/mechanisms/negotiate/index.ts'));
    } finally {
      vi.doUnmock(pkg);
      vi.resetModules();
    }
  }
  const firstStep = (m: Mechanism) =>
    m
      .createContext(leg)
      .step(undefined, leg)
      .catch((e: unknown) => e);

  it("M2: a missing 'kerberos' package is MechanismUnavailableError with the install hint", async () => {
    const err = await withMissing(
      'kerberos',
      () => {
        throw new Error("Cannot find package 'kerberos'");
      },
      (m) => firstStep(m.negotiateMechanism({ backend: 'kerberos' })),
    );
    expect(err).toMatchObject({ code: 'MULTILEG_MECHANISM_UNAVAILABLE' });
    expect((err as Error).message).toContain(
      "install the optional 'kerberos' package (needs libkrb5-dev / GSS-API headers to build)",
    );
  });

  it("M5: a missing 'koffi' package: typed error naming it; auto uses the addon; ccache/keytab say they need it", async () => {
    const noKoffi = () => {
      throw new Error("Cannot find package 'koffi'");
    };
    const err = await withMissing('koffi', noKoffi, (m) => firstStep(m.negotiateMechanism({ backend: 'gssapi' })));
    expect(err).toMatchObject({ code: 'MULTILEG_MECHANISM_UNAVAILABLE', name: 'GssapiUnavailableError' });
    expect((err as Error).message).toContain("install the optional 'koffi' package");
    const store = await withMissing('koffi', noKoffi, (m) =>
      firstStep(m.negotiateMechanism({ ccache: 'FILE:/tmp/x' })),
    );
    expect((store as Error).message).toMatch(/negotiate\.ccache \/ negotiate\.keytab need it: .*koffi/);
    // auto without a credential store: the kerberos addon takes over (here: it reports its own outcome).
    const chosen = await withMissing('koffi', noKoffi, async (m) => (await m.loadBackend({})).name);
    expect(chosen).toBe('kerberos');
  });

  it('S6: on Windows (SSPI through the kerberos addon, which ignores it) negotiate.principal is refused before any token is made, with the backend chosen or fallen back to', async () => {
    const platform = Object.getOwnPropertyDescriptor(process, 'platform')!;
    Object.defineProperty(process, 'platform', { value: 'win32' });
    try {
      const noKoffi = () => {
        throw new Error("Cannot find package 'koffi'");
      };
      for (const o of [{ backend: 'kerberos' as const }, {}]) {
        const err = await withMissing('koffi', noKoffi, (m) =>
          m.loadBackend({ ...o, principal: 'bob@EXAMPLE.TEST' }).then(
            () => undefined,
            (e: unknown) => e,
          ),
        );
        expect(err).toMatchObject({ code: 'MULTILEG_MECHANISM_UNAVAILABLE' });
        expect((err as Error).message).toContain(
          "negotiate.principal on Windows: the kerberos addon (SSPI) ignores it and would use the logged-on user's credentials",
        );
      }
    } finally {
      Object.defineProperty(process, 'platform', platform);
    }
  });

  it('M5: a GSS-API library without gss_acquire_cred_from (e.g. Heimdal): typed error; auto uses the addon', async () => {
    const heimdal = () => ({
      load: () => ({
        func: (d: string) => {
          if (d.includes('gss_acquire_cred_from')) throw new Error('Cannot find function gss_acquire_cred_from');
          return () => 0;
        },
      }),
      struct: () => ({}),
      pointer: () => ({}),
      opaque: () => ({}),
    });
    const err = await withMissing('koffi', heimdal, (m) => firstStep(m.negotiateMechanism({ backend: 'gssapi' })));
    expect(err).toMatchObject({ code: 'MULTILEG_MECHANISM_UNAVAILABLE' });
    expect((err as Error).message).toMatch(/lacks a GSS-API call .*MIT Kerberos 1\.11/);
    expect(await withMissing('koffi', heimdal, async (m) => (await m.loadBackend({})).name)).toBe('kerberos');
  });

  it('M5: no GSS-API at all but a password: NTLM inside Negotiate, the report names the missing package', async () => {
    const ctx = await withMissing(
      'koffi',
      () => {
        throw new Error("Cannot find package 'koffi'");
      },
      async (m) => {
        const c = m
          .negotiateMechanism({
            backend: 'gssapi',
            credentials: { username: 'alice', password: 'pw', domain: 'EXAMPLE' },
            ntlmFallback: 'raw',
          })
          .createContext(leg);
        const header = await c.step(undefined, leg);
        expect(Buffer.from(header.slice('Negotiate '.length), 'base64').subarray(0, 7).toString()).toBe('NTLMSSP');
        return c;
      },
    );
    expect(ctx.fallbackReason).toMatch(
      /^MULTILEG_MECHANISM_UNAVAILABLE: Negotiate \(GSS-API binding\) is not available$/,
    );
  });

  it('M5: the system libgssapi_krb5 missing (dlopen fails): typed error naming the library and the package to install', async () => {
    const err = await withMissing(
      'koffi',
      () => ({
        load: () => {
          throw new Error('libgssapi_krb5.so.2: cannot open shared object file: No such file or directory');
        },
      }),
      (m) => firstStep(m.negotiateMechanism({ backend: 'gssapi' })),
    );
    expect(err).toMatchObject({ code: 'MULTILEG_MECHANISM_UNAVAILABLE' });
    expect((err as Error).message).toMatch(/libgssapi_krb5\.so\.2 .*missing: install libgssapi-krb5-2/);
  });
});

describe('M2: SPNEGO DER', () => {
  // Captured from MIT SPNEGO + gss-ntlmssp (the kerberos addon without a ticket) against python3-gssapi.
  const REF_INIT =
    '604806062b0601050502a03e303ca00e300c060a2b06010401823702020aa22a04284e544c4d5353500001000000178208e200000000000000000000000000000000060200000000000f';
  const REF_FINAL = 'a11b3019a0030a0100a3120410010000006a0d68f9f426cc4b00000000';

  it('M2: NegTokenInit with only NTLMSSP encodes exactly like MIT/gss-ntlmssp', () => {
    const ref = Buffer.from(REF_INIT, 'hex');
    const parsed = decodeNegTokenInit(ref);
    expect(parsed.mechTypes).toEqual([OID_NTLMSSP]);
    expect(encodeNegTokenInit([OID_NTLMSSP], parsed.mechToken).equals(ref)).toBe(true);
  });

  it('M2: NegTokenResp decode of an accept-completed + mechListMIC and round trips', () => {
    const r = decodeNegTokenResp(Buffer.from(REF_FINAL, 'hex'));
    expect(r.negState).toBe(NegState.ACCEPT_COMPLETED);
    expect(r.mechListMIC?.length).toBe(16);
    expect(encodeNegTokenResp(r).toString('hex')).toBe(REF_FINAL);
    const full = {
      negState: 1,
      supportedMech: OID_KRB5,
      responseToken: Buffer.alloc(300, 7),
      mechListMIC: Buffer.alloc(16, 1),
    };
    expect(decodeNegTokenResp(encodeNegTokenResp(full))).toEqual(full);
  });

  it('M2 S3: malformed SPNEGO input only ever throws InvalidTokenError', () => {
    const good = encodeNegTokenResp({ negState: 1, supportedMech: OID_NTLMSSP, responseToken: Buffer.alloc(40, 1) });
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat(good.length), fc.nat(255), (bytes, pos, v) => {
        const mutated = Buffer.from(good);
        mutated[pos % mutated.length] = v;
        for (const input of [Buffer.from(bytes), mutated, mutated.subarray(0, pos)]) {
          try {
            decodeNegTokenResp(input);
          } catch (e) {
            if (!(e instanceof InvalidTokenError)) throw e;
          }
        }
      }),
    );
  });

  it('M2: mechListMIC is the NTLM ESS signature over the DER MechTypeList; directions differ', () => {
    const esk = Buffer.alloc(16, 0x55);
    const list = encodeMechTypeList([OID_NTLMSSP]);
    expect(list.toString('hex')).toBe('300c060a2b06010401823702020a');
    const c = ntlmSign(esk, SPNEGO_NTLM_FLAGS, 'client-to-server', list);
    const s = ntlmSign(esk, SPNEGO_NTLM_FLAGS, 'server-to-client', list);
    expect(c.length).toBe(16);
    expect(c.subarray(0, 4).toString('hex')).toBe('01000000');
    expect(c.subarray(12).toString('hex')).toBe('00000000');
    expect(c.equals(s)).toBe(false);
    expect(() => ntlmSign(esk, 0, 'client-to-server', list)).toThrow(MechanismError);
  });
});

describe('C4: a first token that completes the server side in one leg', () => {
  /** The whole-token reading: GSS framing, then SPNEGO's first mech and its optimistic token. */
  function byFullDecode(token: Buffer): boolean {
    try {
      if (token[0] !== 0x60) return false;
      const init = decodeNegTokenInit(token);
      const first = init.mechTypes[0];
      return init.mechToken !== undefined && (first === OID_KRB5 || first === OID_MS_KRB5);
    } catch {
      // Raw Kerberos framing (not SPNEGO): its mech OID says it.
      const oid = encodeOid(OID_KRB5).subarray(2);
      const ms = encodeOid(OID_MS_KRB5).subarray(2);
      const at = token[1]! & 0x80 ? 2 + (token[1]! & 0x7f) : 2;
      const mech = token.subarray(at + 2, at + 2 + token[at + 1]!);
      return token[at] === 0x06 && (mech.equals(oid) || mech.equals(ms));
    }
  }
  const OTHER = '1.2.3.4.5.6.7.8.9.10.11.12';

  it('C4: carriesKerberosApReq reads the mech and the optimistic token from the first bytes as the whole decode does (tokens of 1.5 KB, mech lists of any length)', () => {
    const mechs = [OID_KRB5, OID_MS_KRB5, OID_NTLMSSP, OTHER];
    const tokens: Buffer[] = [];
    for (const size of [0, 40, 1500])
      for (let n = 0; n <= 8; n++)
        for (const lead of mechs) {
          const list = [lead, ...Array.from({ length: n }, (_, i) => mechs[i % mechs.length]!)];
          const mechToken = size ? Buffer.alloc(size, 0x6e) : undefined;
          tokens.push(encodeNegTokenInit(list, mechToken));
          tokens.push(encodeNegTokenInit(list, mechToken, Buffer.alloc(16, 1)));
        }
    tokens.push(encodeNegTokenInit([], Buffer.alloc(1500, 1)));
    for (const oid of [OID_KRB5, OID_MS_KRB5, OID_NTLMSSP])
      tokens.push(tlv(0x60, Buffer.concat([encodeOid(oid), Buffer.from([1, 0]), Buffer.alloc(1400, 0x6e)])));
    tokens.push(Buffer.concat([Buffer.from('NTLMSSP\0', 'latin1'), Buffer.alloc(1200, 2)]));
    let kerberos = 0;
    for (const token of tokens) {
      const expected = byFullDecode(token);
      expect(carriesKerberosApReq(token.toString('base64'))).toBe(expected);
      if (expected) kerberos += 1;
    }
    // Both answers occur, among long tokens whose mech list fits the first bytes and whose does not.
    expect(kerberos).toBeGreaterThan(20);
    expect(kerberos).toBeLessThan(tokens.length - 20);
    expect(tokens.filter((t) => t.length > 96).length).toBeGreaterThan(100);
  });
});

describe("M2: an SPNEGO reject (negState reject) is the server's refusal, not a next leg", () => {
  /** mod_auth_gssapi's answer to a mechanism it does not accept: NegTokenResp { negState reject }. */
  const REJECT = encodeNegTokenResp({ negState: NegState.REJECT }).toString('base64');
  /** A first token as GSS-API makes it: SPNEGO carrying a Kerberos AP-REQ (RFC 4121 token id 01 00). */
  const FIRST = encodeNegTokenInit(
    [OID_KRB5],
    tlv(0x60, Buffer.concat([encodeOid(OID_KRB5), Buffer.from([1, 0]), Buffer.alloc(40, 0x6e)])),
  ).toString('base64');
  /** That token, and nothing after it (a next step is a GSS failure, as the reject makes MIT's). */
  const oneStep = () => fakeKerberos({ steps: [() => FIRST] });
  const servers: Server[] = [];
  const agents: MultilegAgent[] = [];
  afterEach(async () => {
    vi.useRealTimers();
    await Promise.all(agents.splice(0).map((a) => a.close()));
    for (const s of servers.splice(0)) s.close();
  });
  /** Plain-http peer: a bare 401 (407) first, the reject to any credentials; counts what it saw. */
  const peer = async (status: 401 | 407) => {
    const seen: string[] = [];
    const header = status === 401 ? 'www-authenticate' : 'proxy-authenticate';
    const server = createServer((req, res) => {
      const sent = req.headers[status === 401 ? 'authorization' : 'proxy-authorization'];
      seen.push(sent ?? '');
      res.writeHead(status, { [header]: sent ? `Negotiate ${REJECT}` : 'Negotiate' }).end('no');
    });
    servers.push(server);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
  };

  it('M2: isNegTokenReject reads negState reject, and nothing else as one', () => {
    expect(REJECT).toBe('oQcwBaADCgEC');
    expect(isNegTokenReject(REJECT)).toBe(true);
    for (const negState of [NegState.ACCEPT_COMPLETED, NegState.ACCEPT_INCOMPLETE, NegState.REQUEST_MIC])
      expect(isNegTokenReject(encodeNegTokenResp({ negState }).toString('base64'))).toBe(false);
    expect(isNegTokenReject(encodeNegTokenResp({ responseToken: Buffer.from([1]) }).toString('base64'))).toBe(false);
    expect(isNegTokenReject('YIIBAAAA')).toBe(false);
    expect(isNegTokenReject('oQ==')).toBe(false);
  });

  it("M2/T4: an origin's 401 carrying an SPNEGO reject reaches the caller as the final 401, the handshake failed 'refused' (was a GSS error thrown at the caller)", async () => {
    const { origin, seen } = await peer(401);
    const agent = new MultilegAgent({ negotiate: { kerberos: oneStep() }, trustedOrigins: [origin] });
    agents.push(agent);
    const res = await request(`${origin}/x`, { dispatcher: agent });
    expect(res.statusCode).toBe(401);
    expect(res.headers['www-authenticate']).toBe(`Negotiate ${REJECT}`);
    expect(await res.body.text()).toBe('no');
    expect(seen).toEqual(['', `Negotiate ${FIRST}`]);
    expect(agent.handshakes().map((h) => [h.scheme, h.outcome, h.failure])).toEqual([
      ['Negotiate', 'failed', 'refused'],
    ]);
  });

  it.each([
    ['a ticket only', {}],
    // A password the agent has but did not send (Kerberos made the token): still a ticket refused.
    ['a ticket, with a password for the NTLM fallback that did not go', { credentials: ALICE }],
  ] as const)(
    'R4: %s the origin rejects three times in a row is kept back 30 s each time (was 30 s, 1 min, 2 min: doubling as for a password)',
    async (_, more) => {
      // Only Date is faked: the wait is read from it; sockets and undici's timers run as ever.
      vi.useFakeTimers({ toFake: ['Date'] });
      const { origin, seen } = await peer(401);
      const kerberos = fakeKerberos({ steps: [() => FIRST], username: 'alice@EXAMPLE.TEST' });
      // (The password as the agent's own credentials: inside negotiate it is a ConfigError since review r68.)
      const agent = new MultilegAgent({ negotiate: { kerberos }, ...more, trustedOrigins: [origin] });
      agents.push(agent);
      /** One request (the server's 401 either way): whether it carried the ticket. */
      const tried = async () => {
        const from = seen.length;
        const res = await request(`${origin}/x`, { dispatcher: agent });
        await res.body.dump();
        expect(res.statusCode).toBe(401);
        return seen.slice(from).includes(`Negotiate ${FIRST}`);
      };
      await keptBackBaseWaitEachTime(tried);
      expect(seen.filter((h) => h.startsWith('NTLM') || h.startsWith('Negotiate TlRMTVNT'))).toEqual([]);
      expect(agent.handshakes().map((h) => h.failure)).toEqual(Array(4).fill('refused'));
    },
  );

  it("M2/R4: a Kerberos ticket an origin rejects on three upgrades in a row (a WebSocket reconnecting): the SPNEGO reject is the caller's 401 (was a GSS error) and the ticket is kept back 30 s each time, as for a request", async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const { origin, seen } = await peer(401);
    const kerberos = fakeKerberos({ steps: [() => FIRST], username: 'alice@EXAMPLE.TEST' });
    const agent = new MultilegAgent({ negotiate: { kerberos }, trustedOrigins: [origin] });
    agents.push(agent);
    /** One upgrade (the origin's 401 either way): whether it carried the ticket. */
    const tried = async () => {
      const from = seen.length;
      const status = await new Promise<number>((resolve, reject) => {
        let status = 0;
        agent.dispatch(
          { origin, path: '/ws', method: 'GET', upgrade: 'websocket' },
          {
            onRequestUpgrade: () => reject(new Error('upgraded')),
            onResponseStart: (_c, s) => {
              status = s;
            },
            onResponseData: () => {},
            onResponseEnd: () => resolve(status),
            onResponseError: (_c, err) => reject(err),
          },
        );
      });
      expect(status).toBe(401);
      // The upgrade settles its proof just after the caller's response ends: before the clock moves.
      await new Promise((r) => setImmediate(r));
      return seen.slice(from).includes(`Negotiate ${FIRST}`);
    };
    await keptBackBaseWaitEachTime(tried);
  });

  it('R4: a Negotiate context says it sent no password only after a Kerberos AP-REQ without NTLM; NTLM inside Negotiate, a first token GSS-API made of another mechanism (gss-ntlmssp) or no step yet count as a password', async () => {
    const creds = { username: 'alice', password: 'pw', domain: 'EXAMPLE' };
    const kerberos = fakeKerberos({ steps: [() => FIRST], username: 'alice@EXAMPLE.TEST' });
    const ticket = negotiateMechanism({ kerberos, credentials: creds }).createContext(leg);
    expect(ticket.sentPassword).toBe(true);
    await ticket.step(undefined, leg);
    expect(ticket.sentPassword).toBe(false);
    const noTicket = { initializeClient: () => Promise.reject(new Error(GSS.noTicketSpnego)) };
    const ntlm = negotiateMechanism({ kerberos: noTicket, credentials: creds }).createContext(leg);
    await ntlm.step(undefined, leg);
    expect(ntlm.sentPassword).toBe(true);
    // No password configured, but GSS-API's own choice may carry one (gss-ntlmssp's): not sure, so a password.
    const other = negotiateMechanism({ kerberos: fakeKerberos({ steps: [() => 'TlRMTVNTUAABAAAA'] }) });
    expect(other.usesPassword).toBe(false);
    const gssNtlm = other.createContext(leg);
    await gssNtlm.step(undefined, leg);
    expect(gssNtlm.sentPassword).toBe(true);
  });

  it('R4: a Negotiate context whose SPNEGO went on past its Kerberos AP-REQ (the server chose NTLMSSP, gss-ntlmssp answering with its own password) counts as having sent a password', async () => {
    /** mod_auth_gssapi with only ntlmssp: SPNEGO picks it over the optimistic Kerberos token. */
    const switchTo = encodeNegTokenResp({ negState: NegState.REQUEST_MIC }).toString('base64');
    const ntlmNegotiate = encodeNegTokenResp({ responseToken: Buffer.from('NTLMSSP\0\x01\0\0\0') }).toString('base64');
    const kerberos = fakeKerberos({ steps: [() => FIRST, () => ntlmNegotiate], username: 'alice@EXAMPLE.TEST' });
    const ctx = negotiateMechanism({ kerberos }).createContext(leg);
    await ctx.step(undefined, leg);
    expect(ctx.sentPassword).toBe(false);
    expect(await ctx.step(ch(switchTo), leg)).toBe(`Negotiate ${ntlmNegotiate}`);
    // Its AUTHENTICATE (the password) follows; refused, that must double the wait as a password's refusal does.
    expect(ctx.sentPassword).toBe(true);
  });

  it("C5/H1: a Negotiate context says connectionBound when the system's SPNEGO runs NTLMSSP (the server's supportedMech, or a bare NTLM token as SSPI sends), never on Kerberos or on a reply that does not say", async () => {
    const ntlm = (type: number) => Buffer.from(`NTLMSSP\0${String.fromCharCode(type)}\0\0\0`, 'latin1');
    const ntlmInit = encodeNegTokenInit([OID_NTLMSSP], ntlm(1)).toString('base64');
    const resp = (r: Parameters<typeof encodeNegTokenResp>[0]) => encodeNegTokenResp(r).toString('base64');
    const challenge = resp({
      negState: NegState.ACCEPT_INCOMPLETE,
      supportedMech: OID_NTLMSSP,
      responseToken: ntlm(2),
    });
    const authenticate = resp({ responseToken: ntlm(3) });
    /** Steps a context through `first` and the server's `replies` (each answered by `next`): its connectionBound after each. */
    const run = async (first: string, next: string, replies: string[]) => {
      const kerberos = fakeKerberos({ steps: [() => first, ...replies.map(() => () => next)] });
      const ctx = negotiateMechanism({ kerberos }).createContext(leg);
      await ctx.step(undefined, leg);
      const seen = [ctx.connectionBound];
      for (const r of replies) {
        await ctx.step(ch(r), leg);
        seen.push(ctx.connectionBound);
      }
      return seen;
    };
    // gss-ntlmssp chosen by MIT's SPNEGO (no ticket, NTLM_USER_FILE): known from the server's first reply.
    expect(await run(ntlmInit, authenticate, [challenge])).toEqual([false, true]);
    // A server that took SPNEGO's NTLMSSP over the optimistic Kerberos token.
    expect(await run(FIRST, authenticate, [challenge])).toEqual([false, true]);
    // SSPI's Negotiate sending NTLM unwrapped: known from the first token.
    const raw = ntlm(1).toString('base64');
    expect(await run(raw, ntlm(3).toString('base64'), [ntlm(2).toString('base64')])).toEqual([true, true]);
    // Kerberos that takes another leg, a reply without supportedMech, one that is not DER: per request as before.
    const krb = resp({ negState: NegState.ACCEPT_INCOMPLETE, supportedMech: OID_KRB5, responseToken: ntlm(2) });
    expect(await run(FIRST, authenticate, [krb])).toEqual([false, false]);
    expect(
      await run(ntlmInit, authenticate, [resp({ negState: NegState.ACCEPT_INCOMPLETE, responseToken: ntlm(2) })]),
    ).toEqual([false, false]);
    expect(await run(ntlmInit, authenticate, ['oQMwAQ=='])).toEqual([false, false]);
    // Only the first reply names the mechanism: a later supportedMech (not SPNEGO) changes nothing.
    expect(await run(FIRST, authenticate, [krb, challenge])).toEqual([false, false, false]);
  });

  it("S1: where passwordAllowed refuses the origin (an agent without trustedOrigins), NTLM the system's SPNEGO chooses never goes: a first token that is NTLM (in SPNEGO, or bare as SSPI sends it) is not returned, and after a Kerberos token a server's first reply choosing NTLMSSP gets no next step from GSS-API — SystemNtlmRefusedError (MULTILEG_SYSTEM_NTLM_REFUSED, its origin) naming trustedOrigins; Kerberos taking another leg goes on", async () => {
    const ntlm = (type: number) => Buffer.from(`NTLMSSP\0${String.fromCharCode(type)}\0\0\0`, 'latin1');
    const resp = (r: Parameters<typeof encodeNegTokenResp>[0]) => encodeNegTokenResp(r).toString('base64');
    const reply = (mech: string) =>
      resp({ negState: NegState.ACCEPT_INCOMPLETE, supportedMech: mech, responseToken: ntlm(2) });
    /** Each step's header (or error code) for `first`, then `replies`, and how many steps GSS-API took. */
    const run = async (first: string, replies: string[]) => {
      const kerberos = fakeKerberos({ steps: [() => first, ...replies.map(() => () => 'TkVYVA==')] });
      const ctx = negotiateMechanism({ kerberos, passwordAllowed: () => false }).createContext(leg);
      const got: string[] = [];
      for (const r of [undefined, ...replies]) {
        const out = await ctx.step(r === undefined ? undefined : ch(r), leg).catch((e: MultilegError) => e);
        if (out instanceof SystemNtlmRefusedError) {
          expect(out.origin).toBe(leg.origin);
          expect(out.message).toContain(`List ${leg.origin} in trustedOrigins`);
        }
        got.push(typeof out === 'string' ? out : (out as MultilegError).code);
        if (typeof out !== 'string') break;
      }
      return [got, kerberos.calls.length];
    };
    const refused = 'MULTILEG_SYSTEM_NTLM_REFUSED';
    // gss-ntlmssp chosen by MIT's SPNEGO (no ticket, NTLM_USER_FILE), and SSPI's bare NTLM.
    expect(await run(encodeNegTokenInit([OID_NTLMSSP], ntlm(1)).toString('base64'), [])).toEqual([[refused], 1]);
    expect(await run(ntlm(1).toString('base64'), [])).toEqual([[refused], 1]);
    // The server took SPNEGO's NTLMSSP over the Kerberos token: GSS-API is not asked for the AUTHENTICATE.
    expect(await run(FIRST, [reply(OID_NTLMSSP)])).toEqual([[`Negotiate ${FIRST}`, refused], 1]);
    // Kerberos taking another leg is no NTLM.
    expect(await run(FIRST, [reply(OID_KRB5)])).toEqual([[`Negotiate ${FIRST}`, 'Negotiate TkVYVA=='], 2]);
  });

  it("S1: an agent without trustedOrigins refuses the system's NTLM (SSPI's bare NTLM first token, a fake addon here) at an https origin it names: SystemNtlmRefusedError with its origin, no Authorization sent; with the origin listed it goes (the agent's passwordAllowed, no peers needed)", async () => {
    const bareNtlm = Buffer.from('NTLMSSP\0\x01\0\0\0', 'latin1').toString('base64');
    const seen: string[] = [];
    const server = createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, (req, res) => {
      seen.push(req.headers.authorization ?? '');
      res.writeHead(401, { 'www-authenticate': 'Negotiate' }).end();
    });
    servers.push(server as unknown as Server);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const origin = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const agentWith = (trustedOrigins?: string[]) => {
      const kerberos = fakeKerberos({ steps: [() => bareNtlm] });
      const a = new MultilegAgent({
        connect: { ca: CA_CERT },
        negotiate: { kerberos },
        ...(trustedOrigins ? { trustedOrigins } : {}),
      });
      agents.push(a);
      return a;
    };
    const refused = await request(`${origin}/`, { dispatcher: agentWith() }).catch((e: MultilegError) => e);
    expect(refused).toBeInstanceOf(SystemNtlmRefusedError);
    expect(refused).not.toBeInstanceOf(MechanismError);
    expect(refused).toMatchObject({ code: 'MULTILEG_SYSTEM_NTLM_REFUSED', origin });
    expect((refused as Error).message).toContain(`List ${origin} in trustedOrigins`);
    expect(seen.filter((a) => a !== '')).toEqual([]);
    const listed = await request(`${origin}/`, { dispatcher: agentWith([origin]) }).then(
      (r) => r.body.dump().then(() => r.statusCode),
      (e: Error) => e,
    );
    expect(listed).toBe(401);
    expect(seen).toContain(`Negotiate ${bareNtlm}`);
  });

  it('R4: a Kerberos ticket a forwarding proxy rejects three times in a row is kept back 30 s each time (was 30 s, 1 min, 2 min)', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const { origin: proxy, seen } = await peer(407);
    const kerberos = fakeKerberos({ steps: [() => FIRST] });
    const agent = new MultilegAgent({ proxy: { uri: proxy, negotiate: { kerberos } } });
    agents.push(agent);
    /** One request (refused either way): whether it carried the ticket. */
    const tried = async () => {
      const from = seen.length;
      const err = await request('http://127.0.0.1:9/x', { dispatcher: agent }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ProxyAuthenticationError);
      return seen.slice(from).includes(`Negotiate ${FIRST}`);
    };
    await keptBackBaseWaitEachTime(tried);
  });

  it("H5/M2: a forwarding proxy's 407 carrying an SPNEGO reject is its refusal: ProxyAuthenticationError with refused (was a GSS error)", async () => {
    const { origin: proxy, seen } = await peer(407);
    const agent = new MultilegAgent({ proxy: { uri: proxy, negotiate: { kerberos: oneStep() } } });
    agents.push(agent);
    const err = await request('http://127.0.0.1:9/x', { dispatcher: agent }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect(err).toMatchObject({ refused: true });
    // A ticket went, no password (the agent has none): the message names the ticket alone.
    expect((err as Error).message).toMatch(
      /rejected the Negotiate credentials; check the Kerberos ticket for HTTP@127\.0\.0\.1$/,
    );
    expect(seen).toEqual(['', `Negotiate ${FIRST}`]);
  });
});
