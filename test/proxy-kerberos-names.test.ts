/**
 * A proxy's Kerberos errors name the proxy's options (`proxy.negotiate.*`, `proxy.credentials`), the
 * ones the user has to set for the proxy, not the origin's (`negotiate.*`, `credentials`; task r77).
 * Real GSS-API against a scripted proxy that asks for Negotiate only; the mapping of GSS-API texts
 * that need a KDC (an unknown SPN, another realm) at the unit level.
 */
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { forCli } from '../src/cli/explain.ts';
import { MultilegAgent, type MultilegAgentOptions } from '../src/index.ts';
import type { KerberosClientLike, KerberosModuleLike } from '../src/mechanisms/negotiate/addon.ts';
import { KerberosOtherPrincipalError, mapGssError } from '../src/mechanisms/negotiate/errors.ts';
import { PROXY_KERBEROS_NAMES } from '../src/mechanisms/negotiate/mechanism.ts';
import { proxyMechanisms } from '../src/proxy/options.ts';
import { eachRequest, type Hostile, hostile } from './hostile-proxy.ts';

const opened: Hostile[] = [];
const agents: MultilegAgent[] = [];
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.destroy()));
  await Promise.all(opened.splice(0).map((p) => p.close()));
});

/** The error of a GET through a proxy that asks every request for Negotiate, the agent made with `o`. */
async function failure(o: (uri: string) => MultilegAgentOptions): Promise<Error> {
  const p = await hostile((socket, received) =>
    eachRequest(socket, received, () => {
      socket.write(
        'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate\r\nContent-Length: 0\r\n\r\n',
      );
      return undefined;
    }),
  );
  opened.push(p);
  const agent = new MultilegAgent(o(`http://127.0.0.1:${p.port}`));
  agents.push(agent);
  return request('http://origin.example/', { dispatcher: agent }).then(
    () => {
      throw new Error('expected a failure');
    },
    (e: Error) => e,
  );
}

/** The message without any `proxy.negotiate.` option: what is left must name no origin option. */
const originOptions = (message: string) => message.replace(/proxy\.negotiate\.\w+/g, '').match(/\bnegotiate\.\w+/g);

describe("a proxy's Kerberos errors name the proxy's options (H5)", () => {
  it('H5: no Kerberos ticket for the proxy names proxy.negotiate.keytab and proxy.negotiate.principal (the command: --keytab, --principal), no origin option', async () => {
    const err = await failure((uri) => ({
      negotiate: { ccache: 'FILE:/nonexistent/multileg-r77-ccache' },
      proxy: { uri },
    }));
    expect((err as { code?: string }).code).toBe('MULTILEG_PROXY_AUTH');
    // Before: "give a client keytab (negotiate.keytab), or pass principal": the origin's options.
    expect(err.message).toContain(
      // kinit into the cache negotiate.ccache names (task hq: a plain kinit fills another).
      'Negotiate: no Kerberos ticket: run kinit -c FILE:/nonexistent/multileg-r77-ccache, give a client keytab (proxy.negotiate.keytab), or pass proxy.negotiate.principal (MULTILEG_KRB_NO_TICKET)',
    );
    expect(originOptions(err.message)).toBeNull();
    expect(forCli(err.message)).toContain('give a client keytab with --keytab FILE, or pass --principal');
  });

  it('H5: a client keytab for the proxy that gives no ticket names proxy.negotiate.principal, no origin option', async () => {
    const err = await failure((uri) => ({
      proxy: { uri, negotiate: { keytab: 'FILE:/nonexistent/multileg-r77.keytab' } },
    }));
    expect((err as { code?: string }).code).toBe('MULTILEG_PROXY_AUTH');
    expect(err.message).toContain('MULTILEG_KRB_KEYTAB');
    expect(err.message).toContain('or pass proxy.negotiate.principal');
    expect(originOptions(err.message)).toBeNull();
  });

  it('H5: the KDC-side failures (an unknown SPN, a ticket of another realm, a ccache it cannot use, another principal) name the proxy options when the proxy Negotiate runs into them', () => {
    const naming = PROXY_KERBEROS_NAMES('proxy.credentials');
    const map = (gss: string, ctx: object = {}) =>
      mapGssError(new Error(gss), { spn: 'HTTP@proxy.example', ...ctx, naming }).message;
    const unknown = map('Server not found in Kerberos database');
    expect(unknown).toContain('proxy.negotiate.canonicalizeHost');
    expect(unknown).toContain('proxy.negotiate.includePort');
    expect(unknown).toContain('or pass proxy.negotiate.spn');
    expect(map('Server not found in Kerberos database', { spnGiven: true })).toContain(
      'check the SPN given in proxy.negotiate.spn',
    );
    expect(map('Server krbtgt/A.TEST@B.TEST not found in Kerberos database')).toContain(
      'or pass proxy.negotiate.principal / proxy.negotiate.ccache',
    );
    expect(map('Credentials cache permissions incorrect')).toContain('or use proxy.negotiate.keytab');
    const other = new KerberosOtherPrincipalError('bob@EXAMPLE.TEST', 'alice', naming).message;
    expect(other).toContain("not alice's (proxy.credentials)");
    expect(other).toContain('or pass proxy.negotiate.principal');
    for (const m of [unknown, other]) expect(originOptions(m)).toBeNull();
  });

  it("H5: the proxy's mutual authentication and its ticket of another user name proxy.negotiate.mutualAuth, proxy.negotiate.principal and proxy.credentials; a bad proxy.negotiate value names that option (fake GSS)", async () => {
    /** A GSS client whose ticket is `owner`'s and that gets no final token. */
    const fake = (owner: string): KerberosModuleLike => ({
      async initializeClient() {
        const client: KerberosClientLike = {
          async step() {
            return 'AAAA';
          },
          get username() {
            return owner;
          },
          get contextComplete() {
            return false;
          },
        };
        return client;
      },
    });
    const leg = {
      origin: 'http://proxy.example:3128',
      hostname: 'proxy.example',
      port: 3128,
      method: 'CONNECT',
      path: 'o:443',
      proxy: true,
    };
    const negotiate = (owner: string, credentials?: { username: string; password: string }) =>
      proxyMechanisms(
        { uri: 'http://proxy.example:3128', negotiate: { kerberos: fake(owner), mutualAuth: 'required' } },
        credentials,
      )
        .get('negotiate')!
        .createContext(leg);
    const mine = negotiate('alice@EXAMPLE.TEST');
    await mine.step(undefined, leg);
    const mutual = await mine.finish(undefined, leg).then(
      () => undefined,
      (e: Error) => e,
    );
    // Before: "pass negotiate.mutualAuth: 'optional'", the origin's option.
    expect(mutual?.message).toContain("pass proxy.negotiate.mutualAuth: 'optional'");
    const other = await negotiate('bob@EXAMPLE.TEST', { username: 'alice', password: 'x' })
      .step(undefined, leg)
      .then(
        () => undefined,
        (e: Error) => e,
      );
    expect((other as { code?: string }).code).toBe('MULTILEG_KRB_OTHER_PRINCIPAL');
    expect(other?.message).toContain("not alice's (proxy.credentials)");
    expect(other?.message).toContain('or pass proxy.negotiate.principal');
    expect(() => proxyMechanisms({ uri: 'http://p:1', negotiate: { mech: 'bogus' as 'spnego' } }, undefined)).toThrow(
      /^proxy\.negotiate\.mech must be one of/,
    );
  });
});
