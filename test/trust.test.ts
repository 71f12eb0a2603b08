/**
 * The trust model (S1, S4, S5, S6; docs/SECURITY.md) against the reference server: where the
 * agent's credentials may go, over what, across which redirects, and on which connections.
 * Ambient Kerberos (no password, no list) and mutual authentication are proven against the real
 * KDC in trust-kerberos.test.ts.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer as createHttpServer } from 'node:http';
import { createSecureServer } from 'node:http2';
import { createServer as createHttpsServer } from 'node:https';
import type { TLSSocket } from 'node:tls';
import fc from 'fast-check';
import { type Dispatcher, fetch, interceptors, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import {
  BasicOverHttpError,
  CleartextCredentialsError,
  ConfigError,
  MultilegAgent,
  type MultilegAgentOptions,
  ntlmMechanism,
  ProxyAuthenticationError,
  parseChallenges,
  TrustRequiredError,
  WITHHELD_CHANNEL,
  type WithheldEvent,
} from '../src/index.ts';
import { MechanismSet } from '../src/mechanisms/registry.ts';
import {
  CLIENT_CERT,
  CLIENT_KEY,
  type ReferenceServer,
  startReferenceProxy,
  startReferenceServer,
} from '../src/reference-server/index.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { hostElsewhere, servernameElsewhere } from '../src/trust/host-header.ts';
import { TrustPolicy } from '../src/trust/policy.ts';
import { RedirectHops, replayableFor } from '../src/trust/redirects.ts';
import { ALICE, hasAuth, loopbackOrigin } from './helpers.ts';

const servers: ReferenceServer[] = [];
const agents: MultilegAgent[] = [];
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.destroy().catch(() => {})));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function server(opts: Parameters<typeof startReferenceServer>[0] = {}): Promise<ReferenceServer> {
  const s = await startReferenceServer({ mode: 'session', ...opts });
  servers.push(s);
  return s;
}
function agent(opts: MultilegAgentOptions): MultilegAgent {
  const a = new MultilegAgent(opts);
  agents.push(a);
  return a;
}
const cause = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: Error) => (e.cause ?? e) as Error,
  );
const closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const close of closers.splice(0)) await close();
});
/** An https origin (HTTP/1.1) that answers with `handler`; its origin. */
function rawServer(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  return loopbackOrigin(createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, handler), closers);
}
const withAuth = (s: ReferenceServer, path: string) =>
  s.exchanges.filter((e) => e.path.startsWith(path) && hasAuth(e.requestHeaders));

describe('S1: trusted origins are required with a password, and match exactly what they say', () => {
  it('S1: a password without trustedOrigins is a construction error that shows the one-line fix', () => {
    const err = (() => {
      try {
        new MultilegAgent({ credentials: ALICE });
      } catch (e) {
        return e as TrustRequiredError;
      }
    })();
    expect(err).toBeInstanceOf(TrustRequiredError);
    expect(err!.code).toBe('MULTILEG_TRUST_REQUIRED');
    expect(err!.message).toContain("trustedOrigins: ['https://");
    expect(err!.message).not.toContain(ALICE.password);
  });

  it('S1: delegation and custom mechanisms need the list too; ambient Kerberos and a certificate do not', () => {
    expect(() => new MultilegAgent({ negotiate: { delegate: true } })).toThrow(TrustRequiredError);
    const custom = {
      scheme: 'X',
      level: 'request',
      multileg: false,
      proactive: false,
      createContext: () => {
        throw new Error('unused');
      },
    } as const;
    expect(() => new MultilegAgent({ mechanisms: [custom] })).toThrow(TrustRequiredError);
    expect(() => new MultilegAgent({})).not.toThrow();
    expect(
      () => new MultilegAgent({ negotiate: { delegate: true }, trustedOrigins: ['https://a.example'] }),
    ).not.toThrow();
  });

  it("S1: a ticket that is not the origin's own — a fixed negotiate.spn, or the name negotiate.canonicalizeHost takes from DNS — needs the list too, the error naming the option and the fix (task id)", () => {
    const made: MultilegAgent[] = [];
    const refusal = (negotiate: NonNullable<ConstructorParameters<typeof MultilegAgent>[0]>['negotiate']) => {
      try {
        made.push(new MultilegAgent({ negotiate }));
        return undefined;
      } catch (err) {
        return err;
      }
    };
    const spn = refusal({ spn: 'HTTP@intranet.example.com' });
    expect(spn).toBeInstanceOf(TrustRequiredError);
    expect((spn as Error).message).toMatch(
      /^negotiate\.spn \(a ticket for "HTTP@intranet\.example\.com".* needs trustedOrigins/,
    );
    const canonical = refusal({ canonicalizeHost: true });
    expect(canonical).toBeInstanceOf(TrustRequiredError);
    expect((canonical as Error).message).toMatch(/^negotiate\.canonicalizeHost .*CNAME.* needs trustedOrigins/);
    // What stays the origin's own needs no list: the default SPN, another service name, the port.
    for (const ok of [{}, { spn: '' }, { canonicalizeHost: false }, { serviceName: 'host', includePort: true }])
      expect(refusal(ok)).toBeUndefined();
    for (const listed of [{ spn: 'HTTP@intranet.example.com' }, { canonicalizeHost: true }])
      made.push(new MultilegAgent({ negotiate: listed, trustedOrigins: ['https://intranet.example.com'] }));
    return Promise.all(made.map((a) => a.destroy()));
  });

  it('S1: malformed entries are typed configuration errors naming the entry', () => {
    for (const bad of [
      'https://a.example/path',
      'ftp://a.example',
      'https://*',
      'https://a.*.example',
      'not a url',
      'https://a.example?q=1',
    ]) {
      expect(() => new TrustPolicy([bad]), bad).toThrow(ConfigError);
      expect(() => new TrustPolicy([bad]), bad).toThrow(bad);
    }
    // User info is named without itself (S2: it may hold a password).
    for (const [bad, named] of [
      ['https://user@a.example', "'https://…@a.example' has user info"],
      ['https://user:hunter2@a.example', "'https://…@a.example' has user info"],
    ] as const) {
      expect(() => new TrustPolicy([bad]), bad).toThrow(ConfigError);
      expect(() => new TrustPolicy([bad]), bad).toThrow(named);
      expect(() => new TrustPolicy([bad]), bad).not.toThrow(/user@|user:|hunter2/);
    }
    // Plain JavaScript callers can pass anything: neither a list nor a function, or a non-string entry.
    expect(() => new TrustPolicy('https://a.example' as never)).toThrow(
      new ConfigError('trustedOrigins must be an array of origins or a function'),
    );
    expect(() => new TrustPolicy([new URL('https://a.example')] as never)).toThrow(
      new ConfigError('trustedOrigins entries must be strings'),
    );
  });

  it('S1: a WebSocket URL in trustedOrigins (wss://, ws://, a pattern too) is a ConfigError naming the origin to write, as the agent sees it (https://, http://), without user info', () => {
    for (const [bad, fix] of [
      ['wss://ws.example', "write 'https://ws.example'"],
      ['WS://ws.example:8080', "write 'http://ws.example:8080'"],
      ['wss://*.corp.example', "write 'https://*.corp.example'"],
      ['wss://user:hunter2@ws.example', "write 'https://…@ws.example'"],
    ] as const) {
      expect(() => new TrustPolicy([bad]), bad).toThrow(ConfigError);
      // Before: "is not http or https", which named no fix for a WebSocket's URL.
      expect(() => new TrustPolicy([bad]), bad).toThrow(fix);
      expect(() => new TrustPolicy([bad]), bad).not.toThrow(/hunter2/);
    }
  });

  it('S1: exact origins compare scheme, host and port (default ports included)', () => {
    const p = new TrustPolicy(['https://Intranet.Example.com', 'http://legacy.example:8080/']);
    expect(p.explicit('https://intranet.example.com')).toBe(true);
    expect(p.explicit('https://intranet.example.com:8443')).toBe(false);
    expect(p.explicit('http://intranet.example.com')).toBe(false);
    expect(p.explicit('http://legacy.example:8080')).toBe(true);
    expect(p.explicit('http://legacy.example')).toBe(false);
  });

  it('S1: wildcard host patterns match sub-domains only, with the scheme and port they name', () => {
    const p = new TrustPolicy(['https://*.corp.example.com']);
    expect(p.explicit('https://a.corp.example.com')).toBe(true);
    expect(p.explicit('https://a.b.corp.example.com')).toBe(true);
    expect(p.explicit('https://corp.example.com')).toBe(false);
    expect(p.explicit('https://evilcorp.example.com')).toBe(false);
    expect(p.explicit('https://corp.example.com.evil.example')).toBe(false);
    expect(p.explicit('http://a.corp.example.com')).toBe(false);
    expect(p.explicit('https://a.corp.example.com:8443')).toBe(false);
    const ported = new TrustPolicy(['https://*.corp.example.com:8443', 'HTTPS://*.Any.Example:*']);
    expect(ported.explicit('https://a.corp.example.com:8443')).toBe(true);
    expect(ported.explicit('https://a.corp.example.com')).toBe(false);
    expect(ported.explicit('https://x.any.example:1')).toBe(true);
    expect(ported.explicit('https://x.any.example')).toBe(true);
    const cleartext = new TrustPolicy(['http://*.legacy.example']);
    expect(cleartext.explicit('http://a.legacy.example')).toBe(true);
    expect(cleartext.explicit('http://a.legacy.example:80')).toBe(true);
    expect(cleartext.explicit('http://a.legacy.example:8080')).toBe(false);
    expect(cleartext.explicit('https://a.legacy.example')).toBe(false);
  });

  it('S1: verdicts kept per origin stay right past the memory bound (a crawler asking about many origins)', () => {
    const p = new TrustPolicy(['https://*.corp.example.com']);
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 1500; i++) {
        expect(p.explicit(`https://h${i}.corp.example.com`)).toBe(true);
        expect(p.explicit(`https://h${i}.corp.example.com.evil.example`)).toBe(false);
      }
    }
  });

  it('S1: property: a pattern trusts every sub-domain label and nothing that merely ends like it', () => {
    const p = new TrustPolicy(['https://*.corp.example.com']);
    const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?$/);
    fc.assert(
      fc.property(label, (l) => {
        expect(p.explicit(`https://${l}.corp.example.com`)).toBe(true);
        expect(p.explicit(`https://${l}corp.example.com`)).toBe(false);
        expect(p.explicit(`https://corp.example.com.${l}.test`)).toBe(false);
      }),
    );
  });

  it('S1: a wildcard pattern whose host the URL parser would read otherwise (user info, backslash, escapes, white space) is a ConfigError', () => {
    const cases = [
      ['https://*.intranet.example.com@corp.example.com', "'https://…@corp.example.com' has user info (an '@')"],
      ['https://*.a@b:pw@corp.example.com:8443', "'https://…@corp.example.com:8443' has user info (an '@')"],
      ['https://*.corp.example.com\\evil.net', "has '\\' in its host"],
      ['https://*.corp%2eexample.com', "has '%' in its host"],
      ['https://*.corp.exa\tmple.com', 'has U+0009 in its host'],
      ['https://*.corp example.com', 'has U+0020 in its host'],
      ['https://*.*.example.com', "uses '*' other than as the first label"],
      ['https://*.corp.example.com/x', 'has more than scheme, host pattern and port'],
      ['https://*.corp.example.com?x', 'has more than scheme, host pattern and port'],
      ['https://*.corp.example.com#x', 'has more than scheme, host pattern and port'],
      ['https://*.', 'has an empty label'],
      ['https://*..example.com', 'has an empty label'],
      ['https://*.corp..example.com', 'has an empty label'],
      ['https://*.1.2.3', 'has an invalid host'],
      // Before: accepted, and every .com host got the credentials.
      ['https://*.com', "trusts every host under 'com', a top-level name"],
      ['http://*.local:*', "trusts every host under 'local', a top-level name"],
      // Before: "uses '*' other than as the first label of the host", of a host with no '*'.
      ['http://127.0.0.1:*', "has '*' as the port of a single host: ':*' goes only with a host pattern"],
      ['https://intranet.example.com:*/', 'pass a predicate'],
    ] as const;
    for (const [bad, named] of cases) {
      expect(() => new TrustPolicy([bad]), bad).toThrow(ConfigError);
      expect(() => new TrustPolicy([bad]), bad).toThrow(named);
    }
    // The user info is not echoed.
    expect(() => new TrustPolicy([cases[0][0]])).not.toThrow(/\*\.intranet/);
    expect(() => new TrustPolicy([cases[1][0]])).not.toThrow(/pw/);
    // What is written is what is trusted: case folds, punycode applies, a final '/' is allowed.
    const idn = new TrustPolicy(['https://*.Bücher.Example/', 'https://*.CORP.example.com:*']);
    expect(idn.explicit('https://a.xn--bcher-kva.example')).toBe(true);
    expect(idn.explicit('https://a.corp.example.com:8443')).toBe(true);
    expect(idn.explicit('https://attacker.rp.example.com')).toBe(false);
  });

  it('S1: property: a pattern with an injected @, \\, %, #, ?, /, :, * or white space is a ConfigError or trusts exactly the suffix it names', () => {
    const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?$/);
    const host = fc.array(label, { minLength: 2, maxLength: 4 }).map((l) => l.join('.'));
    const injected = fc.constantFrom(
      '@',
      '\\',
      '%',
      '%2e',
      '%40',
      '%5c',
      '#',
      '?',
      '/',
      ':',
      '*',
      ' ',
      '\t',
      '\n',
      'user:pw@',
    );
    fc.assert(
      fc.property(host, host, injected, fc.boolean(), (before, after, inject, upper) => {
        const written = `${before}${inject}${after}`;
        const entry = `https://*.${upper ? written.toUpperCase() : written}`;
        let policy: TrustPolicy;
        try {
          policy = new TrustPolicy([entry]);
        } catch (err) {
          expect(err, entry).toBeInstanceOf(ConfigError);
          expect((err as Error).message).not.toContain('user:pw');
          return;
        }
        // Accepted: only a trailing '/' is not part of the host, and the host is the suffix trusted.
        const named = written.replace(/\/$/, '');
        expect(named, entry).toMatch(/^[a-z0-9.-]+$/);
        for (const suffix of [named, before, after, after.slice(2), `${after}.${before}`]) {
          const probe = `https://z.${suffix}`;
          expect(policy.explicit(probe), `${entry} vs ${probe}`).toBe(`.${suffix}`.endsWith(`.${named}`));
        }
      }),
      { numRuns: 500 },
    );
  });

  it('S1: a predicate decides; one that throws trusts nothing', () => {
    expect(new TrustPolicy((o) => o.endsWith('.example')).explicit('https://a.example')).toBe(true);
    const throwing = new TrustPolicy(() => {
      throw new Error('boom');
    });
    expect(throwing.explicit('https://a.example')).toBe(false);
    expect(throwing.decide('https://a.example', false)).toEqual({ allowed: false, reason: 'untrusted-origin' });
  });

  it("S1: an untrusted origin's 401 reaches the caller, and nothing was sent to it with credentials", async () => {
    const s = await server();
    const other = s.origin.replace('localhost', '127.0.0.1');
    const a = agent({ credentials: ALICE, connect: { ca: s.ca }, trustedOrigins: [s.origin] });
    const trusted = await fetch(`${s.origin}/auth/trusted`, { dispatcher: a });
    expect(trusted.status).toBe(200);
    await trusted.arrayBuffer();
    const events: WithheldEvent[] = [];
    const onWithheld = (e: unknown) => events.push(e as WithheldEvent);
    subscribe(WITHHELD_CHANNEL, onWithheld);
    try {
      const res = await fetch(`${other}/auth/untrusted`, { dispatcher: a });
      expect(res.status).toBe(401);
      await res.arrayBuffer();
    } finally {
      unsubscribe(WITHHELD_CHANNEL, onWithheld);
    }
    expect(withAuth(s, '/auth/untrusted')).toEqual([]);
    // Why that 401: said on multileg:withheld (before, only DEBUG=multileg:* told).
    expect(events).toEqual([
      expect.objectContaining({ origin: other, path: '/auth/untrusted', reason: 'untrusted-origin' }),
    ]);
    expect(events[0]!.schemes).toContain('NTLM');
  });

  it('S1: a predicate trusts the origins it accepts, and only those (end to end)', async () => {
    const s = await server();
    const port = new URL(s.origin).port;
    const a = agent({
      credentials: ALICE,
      connect: { ca: s.ca },
      trustedOrigins: (o) => o === `https://127.0.0.1:${port}`,
    });
    const res = await fetch(`https://127.0.0.1:${port}/auth/matched`, { dispatcher: a });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
    const refused = await fetch(`${s.origin}/auth/unmatched`, { dispatcher: a });
    expect(refused.status).toBe(401);
    await refused.arrayBuffer();
    expect(withAuth(s, '/auth/unmatched')).toEqual([]);
  });
});

describe('S4: no credential of any scheme over cleartext unless the origin is trusted explicitly', () => {
  for (const scheme of ['NTLM', 'Negotiate', 'Digest', 'Basic']) {
    it(`S4: ${scheme} to an http:// origin: refused with a typed error naming the origin; works when listed`, async () => {
      const s = await server({ cleartext: true, schemes: [scheme] });
      expect(s.origin.startsWith('http://')).toBe(true);
      const base = { credentials: ALICE, allowBasicOverHttp: true } as const;
      const refused = await cause(
        fetch(`${s.origin}/auth/refused`, {
          dispatcher: agent({ ...base, trustedOrigins: [s.origin.replace('http:', 'https:')] }),
        }),
      );
      expect(refused).toBeInstanceOf(CleartextCredentialsError);
      expect((refused as CleartextCredentialsError).code).toBe('MULTILEG_CLEARTEXT');
      expect(refused!.message).toContain(s.origin);
      expect(refused!.message).toContain(`trustedOrigins: ['${s.origin}']`);
      expect(withAuth(s, '/auth/refused')).toEqual([]);

      const res = await fetch(`${s.origin}/auth/listed`, {
        dispatcher: agent({ ...base, trustedOrigins: [s.origin] }),
      });
      expect(res.status).toBe(200);
      expect(((await res.json()) as { user: string }).user).toMatch(/alice/);
    });
  }

  it('S4: an agent without a list (no password) sends nothing to an http:// origin either', async () => {
    const s = await server({ cleartext: true, schemes: ['NTLM'] });
    const custom = agent({ negotiate: false });
    const res = await fetch(`${s.origin}/auth/x`, { dispatcher: custom });
    // No mechanism can answer NTLM here: the 401 is shown; no Authorization ever went out.
    expect(res.status).toBe(401);
    await res.arrayBuffer();
    expect(withAuth(s, '/auth/')).toEqual([]);
  });
});

describe('S4: CleartextCredentialsError names the origin it refused', () => {
  it("S4: CleartextCredentialsError names the origin on each route that throws it: the http:// origin itself, one reached through a forwarding proxy (the origin's, not the proxy's), a redirect hop's to http://, and behind undici's dns interceptor the name (its message naming the address too)", async () => {
    const refused = async (p: Promise<unknown>) => {
      const err = await cause(p);
      expect(err).toBeInstanceOf(CleartextCredentialsError);
      return err as CleartextCredentialsError;
    };
    // The origin itself.
    const plain = await server({ cleartext: true, schemes: ['NTLM'] });
    const httpsOnly = [plain.origin.replace('http:', 'https:')];
    const direct = await refused(
      fetch(`${plain.origin}/auth/direct`, { dispatcher: agent({ credentials: ALICE, trustedOrigins: httpsOnly }) }),
    );
    expect(direct.origin).toBe(plain.origin);

    // Through a forwarding proxy (which forwards http:// targets to the reference server over TLS).
    const s = await server({ schemes: ['NTLM'] });
    const p = await startReferenceProxy({});
    closers.push(() => p.close());
    const target = `http://localhost:${s.port}`;
    const proxied = await refused(
      fetch(`${target}/auth/proxied`, {
        dispatcher: agent({
          credentials: ALICE,
          negotiate: false,
          trustedOrigins: [s.origin],
          proxy: { uri: p.origin, connect: { ca: p.ca } },
        }),
      }),
    );
    expect([proxied.origin, proxied.message.includes(p.origin)]).toEqual([target, false]);

    // A redirect hop from a trusted https origin to http://.
    const hop = await refused(
      fetch(`${s.origin}/public/redirect?to=${encodeURIComponent(`${plain.origin}/auth/hop`)}`, {
        dispatcher: agent({ credentials: ALICE, connect: { ca: s.ca }, trustedOrigins: [s.origin] }),
      }),
    );
    expect(hop.origin).toBe(plain.origin);

    // Behind undici's dns interceptor: the address dialled, trust decided for the name in Host.
    const address = plain.origin.replace('localhost', '127.0.0.1');
    const dns = interceptors.dns({
      lookup: (_o, _opts, cb) => cb(null, [{ address: '127.0.0.1', family: 4, ttl: 60_000 }]),
    });
    const named = await refused(
      request(`${plain.origin}/auth/named`, {
        dispatcher: agent({ credentials: ALICE, trustedOrigins: [address] }).compose(dns),
      }),
    );
    expect(named.origin).toBe(plain.origin);
    expect(named.message).toContain(`trustedOrigins: ['${plain.origin}', '${address}']`);
    expect(withAuth(plain, '/auth/')).toEqual([]);
  });
});

describe('S4/M4: a Basic password goes only to a server its TLS connection verified (rejectUnauthorized: false proves none)', () => {
  const EXPIRED_CERT = readFileSync(new URL('./fixtures/expired-localhost-cert.pem', import.meta.url), 'utf8');
  const EXPIRED_KEY = readFileSync(new URL('./fixtures/expired-localhost-key.pem', import.meta.url), 'utf8');
  const insecure = (s: ReferenceServer, o: Partial<MultilegAgentOptions> = {}) =>
    agent({ credentials: ALICE, trustedOrigins: [s.origin], connect: { rejectUnauthorized: false }, ...o });

  it('S4/M4: Basic over https whose certificate was not verified (rejectUnauthorized: false): nothing sent; BasicOverHttpError naming the origin, the certificate error and the fix — the next request too', async () => {
    const s = await server({ mode: 'per-request', schemes: ['Basic'] });
    const a = insecure(s);
    for (const path of ['/auth/first', '/auth/again']) {
      const err = await cause(fetch(`${s.origin}${path}`, { dispatcher: a }));
      expect(err).toBeInstanceOf(BasicOverHttpError);
      expect((err as BasicOverHttpError).code).toBe('MULTILEG_MECHANISM_UNAVAILABLE');
      // The test CA is not given: Node's own reason, said in the message.
      const why = (err as BasicOverHttpError).certificateError;
      expect(why).toMatch(/^[A-Z_]+$/);
      expect(why).not.toBe('NOT_YET_CONNECTED');
      // (The second as remembered for the origin a while, R4: said after it.)
      expect(
        err!.message.startsWith(
          `Basic is not available: refusing to send a Basic password to ${s.origin}: its certificate was not verified (rejectUnauthorized: false; ${why}), so whoever answered could read it; give the CA that issued its certificate in connect.ca, or set allowBasicOverHttp: true in the MultilegAgent options to accept the risk`,
        ),
      ).toBe(true);
      expect(err!.message).not.toContain('alicepw');
    }
    expect(s.exchanges.map((e) => e.requestHeaders.authorization)).toEqual([undefined, undefined]);
  });

  it('S4/M4: Basic over https whose certificate was not verified (rejectUnauthorized: false), NTLM offered beside it: NTLM answers (it proves the password without sending it)', async () => {
    const s = await server({ mode: 'per-request', schemes: ['Basic', 'NTLM'] });
    const res = await fetch(`${s.origin}/auth/x`, {
      dispatcher: insecure(s, { negotiate: false, schemes: ['Basic', 'NTLM'] }),
    });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
    const sent = s.exchanges.map((e) => (e.requestHeaders.authorization as string | undefined)?.split(' ')[0]);
    expect(sent).not.toContain('Basic');
    expect(sent).toContain('NTLM');
  });

  it('S4/M4: Basic over https whose certificate was not verified (rejectUnauthorized: false) goes with allowBasicOverHttp: true (the risk accepted)', async () => {
    const s = await server({ mode: 'per-request', schemes: ['Basic'] });
    const res = await fetch(`${s.origin}/auth/x`, { dispatcher: insecure(s, { allowBasicOverHttp: true }) });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
    expect(s.exchanges.map((e) => (e.requestHeaders.authorization as string | undefined)?.split(' ')[0])).toEqual([
      undefined,
      'Basic',
    ]);
  });

  it('S4/M4: under rejectUnauthorized: false a certificate that does verify (connect.ca) gets Basic, proactively inside its protection space; once the server presents one that does not, on a new connection, no Basic goes there — proactive or asked — before its verification is known', async () => {
    const basic = `Basic ${Buffer.from('EXAMPLE\\alice:alicepw').toString('base64')}`;
    const seen: Array<[string, string | undefined]> = [];
    const srv = createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, (req, res) => {
      seen.push([req.url!, req.headers.authorization]);
      if (req.headers.authorization === basic) res.end('ok');
      else res.writeHead(401, { 'www-authenticate': 'Basic realm="app"' }).end();
    });
    const origin = await loopbackOrigin(srv, closers);
    const a = agent({
      credentials: ALICE,
      trustedOrigins: [origin],
      negotiate: false,
      connect: { ca: CA_CERT, rejectUnauthorized: false },
    });
    for (const path of ['/app/1', '/app/2']) {
      const res = await fetch(`${origin}${path}`, { dispatcher: a });
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    }
    // Asked once, then proactive inside the protection space.
    expect(seen).toEqual([
      ['/app/1', undefined],
      ['/app/1', basic],
      ['/app/2', basic],
    ]);
    // A new connection, the same certificate: made before the proactive leg, which then goes (no bare round trip).
    srv.closeAllConnections();
    seen.length = 0;
    const again = await fetch(`${origin}/app/3`, { dispatcher: a });
    expect(again.status).toBe(200);
    await again.arrayBuffer();
    expect(seen).toEqual([['/app/3', basic]]);
    // New connections get a certificate no CA given vouches for (expired, self-signed); the old one ends.
    srv.setSecureContext({ cert: EXPIRED_CERT, key: EXPIRED_KEY });
    srv.closeAllConnections();
    seen.length = 0;
    const err = await cause(fetch(`${origin}/app/4`, { dispatcher: a }));
    expect(err).toBeInstanceOf(BasicOverHttpError);
    expect((err as BasicOverHttpError).certificateError).toMatch(/^[A-Z_]+$/);
    expect(seen).toEqual([['/app/4', undefined]]);
  });
});

describe('S5: a redirect hop to another origin carries no credentials unless that origin is trusted explicitly', () => {
  for (const status of [302, 307, 308]) {
    it(`S5: fetch follows a ${status} to another port: the hop gets no credentials, the caller gets its 401`, async () => {
      const a1 = await server();
      const b = await server();
      const a = agent({ credentials: ALICE, connect: { ca: a1.ca }, trustedOrigins: [a1.origin] });
      const to = encodeURIComponent(`${b.origin}/auth/hop`);
      const res = await fetch(`${a1.origin}/public/redirect?status=${status}&to=${to}`, { dispatcher: a });
      expect(res.status).toBe(401);
      expect(res.url).toBe(`${b.origin}/auth/hop`);
      await res.arrayBuffer();
      expect(b.exchanges.filter((e) => e.path === '/auth/hop').length).toBe(1);
      expect(withAuth(b, '/auth/hop')).toEqual([]);
    });
  }

  it('S5: fetch follows an https→http redirect: nothing is sent with credentials (cleartext refusal)', async () => {
    const a1 = await server();
    const b = await server({ cleartext: true });
    const a = agent({ credentials: ALICE, connect: { ca: a1.ca }, trustedOrigins: [a1.origin] });
    const to = encodeURIComponent(`${b.origin}/auth/down`);
    const err = await cause(fetch(`${a1.origin}/public/redirect?to=${to}`, { dispatcher: a }));
    expect(err).toBeInstanceOf(CleartextCredentialsError);
    expect(b.exchanges.filter((e) => e.path === '/auth/down').length).toBe(1);
    expect(withAuth(b, '/auth/down')).toEqual([]);
  });

  it('S5: a redirect to an origin trusted explicitly keeps the credentials; a same-origin redirect too', async () => {
    const a1 = await server();
    const b = await server();
    const a = agent({ credentials: ALICE, connect: { ca: a1.ca }, trustedOrigins: [a1.origin, b.origin] });
    const to = encodeURIComponent(`${b.origin}/auth/listed`);
    const res = await fetch(`${a1.origin}/public/redirect?to=${to}`, { dispatcher: a });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
    const same = await fetch(`${a1.origin}/public/redirect?to=${encodeURIComponent('/auth/same')}`, { dispatcher: a });
    expect(same.status).toBe(200);
    expect(((await same.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
  });

  it("S5: undici's redirect interceptor: a cross-origin hop loses the credentials, a same-origin one keeps them", async () => {
    const s = await server();
    const other = s.origin.replace('localhost', '127.0.0.1');
    const a = agent({ credentials: ALICE, connect: { ca: s.ca }, trustedOrigins: [s.origin] });
    const redirecting = a.compose(interceptors.redirect({ maxRedirections: 3 }));
    const cross = await request(`${s.origin}/public/redirect?to=${encodeURIComponent(`${other}/auth/x`)}`, {
      dispatcher: redirecting,
    });
    expect(cross.statusCode).toBe(401);
    await cross.body.dump();
    expect(withAuth(s, '/auth/x')).toEqual([]);
    const same = await request(`${s.origin}/public/redirect?to=${encodeURIComponent('/auth/y')}`, {
      dispatcher: redirecting,
    });
    expect(same.statusCode).toBe(200);
    expect(((await same.body.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
  });

  for (const [name, lines] of [
    ['written as raw UTF-8 bytes', (b: string) => [`${b}/auth/caf\u00e9`]],
    ['given on two lines', (b: string) => [`${b}/auth/one`, `${b}/auth/two`]],
  ] as const) {
    it(`S5: fetch follows a Location ${name} to another origin: the hop gets no client certificate (an agent without a list)`, async () => {
      const b = await server({ schemes: [], clientCertificate: 'offer' });
      // The Location's bytes as they go on the wire (latin1 keeps each byte).
      const values = lines(b.origin).map((l) => Buffer.from(l, 'utf8').toString('latin1'));
      const a = await rawServer((_req, res) => {
        res.setHeader('location', values.length === 1 ? values[0]! : values);
        res.writeHead(302, { 'content-length': '0' }).end();
      });
      // No list: a client certificate goes to the origins the caller names itself, never across a hop.
      const certified = agent({ clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY }, connect: { ca: b.ca } });
      const res = await fetch(`${a}/start`, { dispatcher: certified });
      await res.arrayBuffer();
      // Before: fetch read the Location as UTF-8 (or joined the lines), the agent did not, and the
      // hop was taken for a direct call: B answered 200 as cert:alice.
      expect(res.status).toBe(401);
      expect(new URL(res.url).origin).toBe(b.origin);
      expect(b.exchanges.some((e) => e.outcome === 'certificate')).toBe(false);
    });
  }

  it("S5: a hop only the redirect handler's history shows (its 3xx never passed through the agent): no client certificate (an agent without a list)", async () => {
    const b = await server({ schemes: [], clientCertificate: 'offer' });
    const certified = agent({ clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY }, connect: { ca: b.ca } });
    /** Dispatches to B with a handler as undici's redirect interceptor hands it over, `history` and all. */
    const dispatch = (path: string, history: URL[] | undefined) =>
      new Promise<{ status: number; user: string | null }>((resolve, reject) => {
        let status = 0;
        const chunks: Buffer[] = [];
        const handler = {
          ...(history ? { history } : {}),
          onRequestStart() {},
          onResponseStart(_c: unknown, s: number) {
            status = s;
          },
          onResponseData(_c: unknown, chunk: Buffer) {
            chunks.push(chunk);
          },
          onResponseEnd() {
            resolve({ status, user: (JSON.parse(Buffer.concat(chunks).toString()) as { user: string | null }).user });
          },
          onResponseError(_c: unknown, err: Error) {
            reject(err);
          },
        };
        certified.dispatch({ origin: b.origin, path, method: 'GET' }, handler as Dispatcher.DispatchHandler);
      });
    // The hop table knows nothing of this hop: only `history` says the request started elsewhere.
    expect(await dispatch('/auth/hop', [new URL('https://elsewhere.example/start')])).toEqual({
      status: 401,
      user: null,
    });
    expect(b.exchanges.some((e) => e.outcome === 'certificate')).toBe(false);
    // A history that starts at B itself (a same-origin redirect): the certificate goes.
    expect(await dispatch('/auth/same', [new URL(`${b.origin}/start`)])).toEqual({ status: 200, user: 'cert:alice' });
  });

  it("S5: behind undici's dns interceptor (the address in the origin, the name in Host) a hop to another origin still gets no client certificate, a same-origin one does", async () => {
    const b = await server({ schemes: [], clientCertificate: 'offer' });
    const a = await rawServer((_req, res) => {
      res.writeHead(302, { location: `${b.origin}/auth/hop`, 'content-length': '0' }).end();
    });
    const certified = agent({ clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY }, connect: { ca: b.ca } });
    const dns = () =>
      interceptors.dns({
        lookup: (_origin, _opts, cb) => cb(null, [{ address: '127.0.0.1', family: 4, ttl: 60_000 }]),
      });
    const viaFetch = await fetch(`${a}/start`, { dispatcher: certified.compose(dns()) });
    await viaFetch.arrayBuffer();
    const viaInterceptor = await request(`${a}/start`, {
      dispatcher: certified.compose(dns(), interceptors.redirect({ maxRedirections: 2 })),
    });
    await viaInterceptor.body.arrayBuffer();
    // Before: the hop went to https://127.0.0.1:B, which no 3xx had named, and B answered 200 as cert:alice.
    expect([viaFetch.status, viaInterceptor.statusCode]).toEqual([401, 401]);
    expect(b.exchanges.some((e) => e.outcome === 'certificate')).toBe(false);
    // A redirect within B, to its own name: the certificate goes.
    const same = `${b.origin}/public/redirect?to=${encodeURIComponent(`${b.origin}/auth/same`)}`;
    const within = await fetch(same, { dispatcher: certified.compose(dns()) });
    expect(within.status).toBe(200);
    expect(((await within.json()) as { user: string }).user).toBe('cert:alice');
  });

  it('S5: a hop dispatched again by an interceptor (the dns one trying the other address family, the retry one after a 503) stays a hop: no client certificate', async () => {
    // dns: B listens on ::1 only; the first try (127.0.0.1) is refused and the interceptor tries again.
    const b = await server({ schemes: [], clientCertificate: 'offer', host: '::1' });
    const a = await rawServer((_req, res) => {
      res
        .writeHead(302, { location: `https://localhost:${new URL(b.origin).port}/auth/hop`, 'content-length': '0' })
        .end();
    });
    // (The test certificate names 127.0.0.1, not ::1, which the dns interceptor puts in the origin.)
    const certified = agent({
      clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY },
      connect: { ca: b.ca, checkServerIdentity: () => undefined },
    });
    const dns = interceptors.dns({
      affinity: 4,
      lookup: (_origin, _opts, cb) =>
        cb(null, [
          { address: '127.0.0.1', family: 4, ttl: 60_000 },
          { address: '::1', family: 6, ttl: 60_000 },
        ]),
    });
    const viaDns = await fetch(`${a}/start`, { dispatcher: certified.compose(dns) });
    await viaDns.arrayBuffer();
    // Before: the second dispatch found the hop used up and B answered 200 as cert:alice.
    expect(viaDns.status).toBe(401);
    expect(b.exchanges.some((e) => e.outcome === 'certificate')).toBe(false);
    // retry: C answers the hop 503 once, then whatever it is asked.
    let answered = 0;
    const certificates: boolean[] = [];
    const c = await loopbackOrigin(
      createHttpsServer(
        { cert: SERVER_CERT, key: SERVER_KEY, requestCert: true, rejectUnauthorized: false },
        (req, res) => {
          certificates.push((req.socket as TLSSocket).getPeerCertificate()?.subject !== undefined);
          answered += 1;
          res.writeHead(answered === 1 ? 503 : 200, { 'content-length': '0' }).end();
        },
      ),
      closers,
    );
    const toC = await rawServer((_req, res) => {
      res.writeHead(302, { location: `${c}/hop`, 'content-length': '0' }).end();
    });
    const retrying = certified.compose(interceptors.retry({ minTimeout: 1, maxTimeout: 1, statusCodes: [503] }));
    const viaRetry = await fetch(`${toC}/start`, { dispatcher: retrying });
    await viaRetry.arrayBuffer();
    expect([viaRetry.status, certificates]).toEqual([200, [false, false]]);
  });

  /** `origin`'s /public/redirect to `to` with `status` (nested: the reference server's redirect chains). */
  const redirect = (origin: string, to: string, status = 302) =>
    `${origin}/public/redirect?status=${status}&to=${encodeURIComponent(to)}`;
  type Follower = 'undici.fetch' | "Node's fetch" | 'the redirect interceptor';
  /** Follows `url`'s redirects with `follower` (a POST with a body where `post`); the final status. */
  async function follow(certified: MultilegAgent, follower: Follower, url: string, post: boolean): Promise<number> {
    const init = post ? { method: 'POST', body: 'payload' } : {};
    if (follower === 'undici.fetch') {
      const res = await fetch(url, { dispatcher: certified, ...init });
      await res.arrayBuffer();
      return res.status;
    }
    if (follower === "Node's fetch") {
      const res = await globalThis.fetch(url, { dispatcher: certified, ...init } as unknown as RequestInit);
      await res.arrayBuffer();
      return res.status;
    }
    const res = await request(url, {
      dispatcher: certified.compose(interceptors.redirect({ maxRedirections: 5 })),
      ...(post ? { method: 'POST' as const, body: 'payload' } : {}),
    });
    await res.body.arrayBuffer();
    return res.statusCode;
  }
  const certificates = (s: ReferenceServer) =>
    s.exchanges.filter((e) => e.outcome === 'certificate').map((e) => e.path);

  for (const follower of ['undici.fetch', "Node's fetch", 'the redirect interceptor'] as const)
    for (const status of [302, 307, 308]) {
      it(`S5: ${follower}, ${status}: a hop to another origin whose own redirects stay within it (A → B/x → B/y → B/z) goes without the client certificate to its end (an agent without a list)`, async () => {
        const a1 = await server({ schemes: [], clientCertificate: 'offer' });
        const b = await server({ schemes: [], clientCertificate: 'offer' });
        const certified = agent({ clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY }, connect: { ca: b.ca } });
        // B/x → B/y → B/z, relative Locations; 307 and 308 with a POST's body all the way.
        const post = status !== 302;
        const bx = redirect(b.origin, redirect('', '/auth/z', status), status);
        const final = await follow(certified, follower, redirect(a1.origin, bx, status), post);
        // Before (fetch): B/y and B/z went with alice's certificate, and B answered 200 as cert:alice.
        expect(final).toBe(401);
        expect(b.exchanges.map((e) => [e.path.split('?')[0], e.method])).toEqual([
          ['/public/redirect', post ? 'POST' : 'GET'],
          ['/public/redirect', post ? 'POST' : 'GET'],
          ['/auth/z', post ? 'POST' : 'GET'],
        ]);
        expect(certificates(b)).toEqual([]);
        // The same URL called directly afterwards is the caller's own request: the certificate goes.
        const direct = await fetch(`${b.origin}/auth/z`, { dispatcher: certified });
        expect(((await direct.json()) as { user: string }).user).toBe('cert:alice');
      });
    }

  for (const follower of ['undici.fetch', "Node's fetch", 'the redirect interceptor'] as const)
    it(`S5: ${follower}: a chain that went to another origin and back to the one the caller named (A → B → A/x → A/y) stays a hop to its end: no client certificate`, async () => {
      const a1 = await server({ schemes: [], clientCertificate: 'offer' });
      const b = await server({ schemes: [], clientCertificate: 'offer' });
      const certified = agent({ clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY }, connect: { ca: b.ca } });
      // Back at A: its own /public/redirect to /auth/back, a redirect within A after the hop back.
      const back = redirect(a1.origin, '/auth/back');
      expect(await follow(certified, follower, redirect(a1.origin, redirect(b.origin, back)), false)).toBe(401);
      expect(a1.exchanges.map((e) => e.path.split('?')[0])).toEqual([
        '/public/redirect',
        '/public/redirect',
        '/auth/back',
      ]);
      expect([...certificates(a1), ...certificates(b)]).toEqual([]);
      // A direct request to A is the caller's: the certificate goes.
      expect(
        ((await (await fetch(`${a1.origin}/auth/back`, { dispatcher: certified })).json()) as { user: string }).user,
      ).toBe('cert:alice');
    });

  it("S5: redirect: 'manual' followed by hand: the hop's own redirect within its origin goes without the client certificate too", async () => {
    const a1 = await server({ schemes: [], clientCertificate: 'offer' });
    const b = await server({ schemes: [], clientCertificate: 'offer' });
    const certified = agent({ clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY }, connect: { ca: b.ca } });
    let url = redirect(a1.origin, redirect(b.origin, '/auth/manual'));
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const res = await fetch(url, { dispatcher: certified, redirect: 'manual' });
      await res.arrayBuffer();
      statuses.push(res.status);
      const location = res.headers.get('location');
      if (location === null) break;
      url = new URL(location, url).href;
    }
    expect(statuses).toEqual([302, 302, 401]);
    expect(certificates(b)).toEqual([]);
  });

  it('S5: two chains at once through the same hop, and a direct call beside them: the chains go without the client certificate, the direct call with it', async () => {
    const a1 = await server({ schemes: [], clientCertificate: 'offer' });
    const b = await server({ schemes: [], clientCertificate: 'offer' });
    const certified = agent({ clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY }, connect: { ca: b.ca } });
    const start = redirect(a1.origin, redirect(b.origin, '/auth/twice'));
    const [one, two, direct] = await Promise.all([
      follow(certified, 'undici.fetch', start, false),
      follow(certified, 'undici.fetch', start, false),
      fetch(`${b.origin}/auth/beside`, { dispatcher: certified }).then((r) => r.json() as Promise<{ user: string }>),
    ]);
    expect([one, two, direct.user]).toEqual([401, 401, 'cert:alice']);
    expect(certificates(b)).toEqual(['/auth/beside']);
  });

  it("S5: a cacheable same-origin 301 in a chain (B/app → B/app/) marks the chain's hop only: a later direct call to B/app/ gets the client certificate", async () => {
    const a1 = await server({ schemes: [], clientCertificate: 'offer' });
    const b = await server({ schemes: [], clientCertificate: 'offer' });
    const certified = agent({ clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY }, connect: { ca: b.ca } });
    // B's trailing-slash 301, which a cache may keep an hour.
    const app = `${b.origin}/public/redirect?status=301&cache=3600&to=${encodeURIComponent('/auth/app/')}`;
    expect(await follow(certified, 'undici.fetch', redirect(a1.origin, app), false)).toBe(401);
    expect(certificates(b)).toEqual([]);
    // Before (review r63): both went bare for the hour the 301 may be cached, and B answered 401.
    const direct = await fetch(`${b.origin}/auth/app/`, { dispatcher: certified });
    expect(((await direct.json()) as { user: string }).user).toBe('cert:alice');
    expect(await follow(certified, 'undici.fetch', app, false)).toBe(200);
    expect(certificates(b)).toEqual(['/auth/app/', '/auth/app/']);
  });

  it("S5: undici's cache interceptor: B/x's 301 stored on a direct call, then replayed in a chain A → B/x: the hop to B/y gets no client certificate", async () => {
    // B over HTTP/1.1, its 301 without a body (stored as soon as it ends); each request with its certificate or not.
    const seen: Array<[string | undefined, boolean]> = [];
    const b = await loopbackOrigin(
      createHttpsServer(
        { cert: SERVER_CERT, key: SERVER_KEY, requestCert: true, rejectUnauthorized: false },
        (req, res) => {
          seen.push([req.url, (req.socket as TLSSocket).getPeerCertificate()?.subject !== undefined]);
          // (public: a response to the agent's identity is delivered private otherwise, and no shared cache keeps it.)
          if (req.url === '/x') res.writeHead(301, { location: '/y', 'cache-control': 'public, max-age=3600' }).end();
          else res.writeHead(200, { 'content-length': '0', 'cache-control': 'no-store' }).end();
        },
      ),
      closers,
    );
    const a = await rawServer((_req, res) => {
      res.writeHead(302, { location: `${b}/x`, 'content-length': '0' }).end();
    });
    const certified = agent({ clientCertificate: { cert: CLIENT_CERT, key: CLIENT_KEY }, connect: { ca: CA_CERT } });
    const cached = certified.compose(interceptors.cache());
    await (await fetch(`${b}/x`, { dispatcher: cached })).arrayBuffer();
    await (await fetch(`${a}/start`, { dispatcher: cached })).arrayBuffer();
    // The cache answered B/x the second time; before, B/y went with alice's certificate.
    expect(seen).toEqual([
      ['/x', true],
      ['/y', true],
      ['/y', false],
    ]);
  });

  it('S5: a same-origin redirect a cache may replay links its target to its source: a hop while the source is one pending (through several, a revalidated one too), bounded', () => {
    const hops = new RedirectHops();
    const cache = { 'cache-control': 'max-age=3600' };
    // Direct calls: B/x → B/y → B/z, each cacheable: links, no hops.
    hops.noteResponse('https://b.example', '/x', 301, { location: '/y', ...cache });
    hops.noteResponse('https://b.example', '/y', 302, { location: '/z', ...cache });
    hops.noteResponse('https://b.example', '/n', 302, { location: '/m' }); // not cacheable: no link
    hops.noteResponse('https://a.example', '/other', 302, { location: 'https://c.example/' });
    expect(['/y', '/z', '/m'].map((p) => hops.consume('https://b.example', p))).toEqual([false, false, false]);
    // A chain A → B/x, the cache answering B/x and B/y: B/z is the hop while B/x's is pending, and
    // B/x's own hop is not taken by it (review r65: a direct call to B/z took it, and the hop to
    // B/x went with the certificate); once B/x's is used up, B/z is the caller's own again.
    hops.noteResponse('https://a.example', '/r', 302, { location: 'https://b.example/x' });
    expect([hops.consume('https://b.example', '/z'), hops.consume('https://b.example', '/z')]).toEqual([true, true]);
    expect(hops.consume('https://b.example', '/x')).toBe(true);
    expect(hops.consume('https://b.example', '/z')).toBe(false);
    // A chain A → B/n: B/n's 302 not cacheable, so B/m is the caller's own (the agent sees B/n).
    hops.noteResponse('https://a.example', '/r', 302, { location: 'https://b.example/n' });
    expect(hops.consume('https://b.example', '/m')).toBe(false);
    // The cache revalidates B/x on the hop (a 304), then replays its 301: B/y is the hop.
    hops.noteResponse('https://a.example', '/r', 302, { location: 'https://b.example/x' });
    expect(hops.consume('https://b.example', '/x')).toBe(true);
    hops.noteResponse('https://b.example', '/x', 304, {}, true);
    expect([hops.consume('https://b.example', '/y'), hops.consume('https://b.example', '/y')]).toEqual([true, true]);
    expect([hops.consume('https://b.example', '/x'), hops.consume('https://b.example', '/y')]).toEqual([true, false]);
    // A caller's own 304 marks nothing.
    hops.noteResponse('https://b.example', '/x', 304, {}, false);
    expect(hops.consume('https://b.example', '/y')).toBe(false);
    // Bounded: 1000 targets linked (oldest dropped), 8 sources each, 20 redirects back.
    const bounded = new RedirectHops();
    bounded.noteResponse('https://b.example', '/old', 301, { location: '/old-target', ...cache });
    for (let i = 0; i < 1000; i++)
      bounded.noteResponse('https://b.example', `/s${i}`, 301, { location: `/t${i}`, ...cache });
    for (let i = 0; i < 9; i++)
      bounded.noteResponse('https://b.example', `/src${i}`, 301, { location: '/many', ...cache });
    for (let i = 0; i < 21; i++)
      bounded.noteResponse('https://b.example', `/c${i}`, 301, { location: `/c${i + 1}`, ...cache });
    const hopTo = (path: string) =>
      bounded.noteResponse('https://a.example', '/r', 302, { location: `https://b.example${path}` });
    hopTo('/old');
    expect(bounded.consume('https://b.example', '/old-target')).toBe(false);
    hopTo('/src0');
    expect(bounded.consume('https://b.example', '/many')).toBe(false);
    hopTo('/src1');
    expect(bounded.consume('https://b.example', '/many')).toBe(true);
    hopTo('/c1');
    expect(bounded.consume('https://b.example', '/c21')).toBe(true);
    bounded.consume('https://b.example', '/c1'); // its own hop: no longer pending
    hopTo('/c0');
    expect(bounded.consume('https://b.example', '/c21')).toBe(false);
  });

  it("S5: a hop's answer notes its targets within its own origin too (the chain stays marked); any other request's does not", () => {
    const hops = new RedirectHops();
    hops.noteResponse('https://b.example', '/x', 302, { location: '/y' }, true);
    hops.noteResponse('https://b.example', '/p', 302, { location: '/q' }, false);
    hops.noteResponse('https://b.example', '/y', 307, { location: 'https://a.example/back' }, true);
    hops.noteResponse('https://b.example', '/c', 301, { location: '/cached', 'cache-control': 'max-age=60' }, true);
    expect(hops.consume('https://b.example', '/y')).toBe(true);
    expect(hops.consume('https://b.example', '/y')).toBe(false);
    expect(hops.consume('https://b.example', '/q')).toBe(false);
    expect(hops.consume('https://a.example', '/back')).toBe(true);
    // A target within the origin a cache may replay the 3xx for is the chain's hop once (review r63:
    // it stayed one, every dispatch, for as long as a cache may serve it — a direct call too) ...
    expect([hops.consume('https://b.example', '/cached'), hops.consume('https://b.example', '/cached')]).toEqual([
      true,
      false,
    ]);
    // ... and again when its source is a hop pending (a cache answers B/c without the agent seeing
    // it), which stays the hop it is (review r65).
    hops.noteResponse('https://a.example', '/r', 302, { location: 'https://b.example/c' });
    expect([hops.consume('https://b.example', '/cached'), hops.consume('https://b.example', '/c')]).toEqual([
      true,
      true,
    ]);
  });

  it('S5: the hop is recognised once, soon after the 3xx: a later direct call to the same URL is not a hop', () => {
    const hops = new RedirectHops();
    hops.noteResponse('https://a.example', '/r', 302, { location: 'https://b.example/x?y=1#frag' });
    hops.noteResponse('https://a.example', '/r', 302, { location: '/same-origin' });
    hops.noteResponse('https://a.example', '/r', 200, { location: 'https://b.example/ok' });
    expect(hops.consume('https://b.example', '/x?y=1')).toBe(true);
    expect(hops.consume('https://b.example', '/x?y=1')).toBe(false);
    expect(hops.consume('https://a.example', '/same-origin')).toBe(false);
    expect(hops.consume('https://b.example', '/ok')).toBe(false);
    // Relative Location resolves against the request URL; a bad one is ignored.
    hops.noteResponse('https://a.example', '/dir/r', 307, { location: '//c.example/p' });
    hops.noteResponse('https://a.example', '/dir/r', 307, { location: 'http://[bad' });
    expect(hops.consume('https://c.example', '/p')).toBe(true);
  });

  it('S5: a redirect a cache may replay keeps its target a hop, every dispatch, for as long as a cache may serve it', () => {
    const now = Date.parse('2026-11-29T12:00:00Z');
    const day = 24 * 3600 * 1000;
    expect(replayableFor(301, {}, now)).toBe(0);
    expect(replayableFor(301, { 'cache-control': 'max-age=600, no-store' }, now)).toBe(0);
    expect(replayableFor(302, { 'cache-control': 'private, max-age=600' }, now)).toBe(600_000);
    expect(replayableFor(302, { 'cache-control': 'max-age=60, s-maxage=600, stale-while-revalidate=30' }, now)).toBe(
      630_000,
    );
    expect(replayableFor(307, { expires: new Date(now + 3_600_000).toUTCString() }, now)).toBe(3_600_000);
    expect(replayableFor(307, { expires: 'garbage' }, now)).toBe(0);
    // Last-Modified alone: 10% of its age, for the statuses a cache may keep on it (not 302).
    const tenDaysOld = { 'last-modified': new Date(now - 10 * day).toUTCString() };
    // (With a validator, as Last-Modified is, a cache keeps it stale to revalidate, then replays it
    // after a 304 the agent cannot tie to it: a year; review r65.)
    expect(replayableFor(301, tenDaysOld, now)).toBe(365 * day);
    expect(replayableFor(301, { 'cache-control': 'max-age=5' }, now)).toBe(5_000);
    expect(replayableFor(301, { 'cache-control': 'max-age=5', etag: '"v"' }, now)).toBe(365 * day);
    expect(replayableFor(302, tenDaysOld, now)).toBe(0);
    expect(replayableFor(308, { 'cache-control': 'immutable' }, now)).toBe(365 * day);
    // Kept only to revalidate (a 304 the agent cannot tie to the redirect, then the 3xx replayed).
    expect(replayableFor(301, { 'cache-control': 'max-age=0', etag: '"v1"' }, now)).toBe(365 * day);
    expect(replayableFor(302, { 'cache-control': 'no-cache', 'last-modified': tenDaysOld['last-modified'] }, now)).toBe(
      365 * day,
    );
    expect(replayableFor(302, { 'cache-control': 'max-age=0' }, now)).toBe(0);

    const hops = new RedirectHops();
    hops.noteResponse('https://a.example', '/r', 301, {
      location: 'https://b.example/x',
      'cache-control': 'max-age=600',
    });
    hops.noteResponse('https://a.example', '/s', 300, { location: 'https://b.example/y' });
    for (let i = 0; i < 3; i++) expect(hops.consume('https://b.example', '/x')).toBe(true);
    // A 300 (which undici's redirect interceptor follows) not cached: one hop.
    expect(hops.consume('https://b.example', '/y')).toBe(true);
    expect(hops.consume('https://b.example', '/y')).toBe(false);
  });

  it('S5: a full table of cached redirects (which any origin can fill) does not push out the hop fetch is about to make', () => {
    const hops = new RedirectHops();
    const cached = (i: number) => ({ location: `https://c.example/${i}`, 'cache-control': 'max-age=600' });
    for (let i = 0; i < 1000; i++) hops.noteResponse('https://evil.example', `/r${i}`, 301, cached(i));
    hops.noteResponse('https://a.example', '/r', 302, { location: 'https://b.example/x' });
    hops.noteResponse('https://evil.example', '/one-more', 301, cached(1000));
    expect(hops.consume('https://b.example', '/x')).toBe(true);
  });
});

describe('S6: requests without the agent credentials, or with their own, never ride an authenticated connection', () => {
  it("S6: a caller's own Authorization goes on a session of its own, never on the one authenticated as alice", async () => {
    const s = await server({ schemes: ['NTLM', 'Basic'] });
    const a = agent({ credentials: ALICE, connect: { ca: s.ca }, trustedOrigins: [s.origin] });
    const first = await fetch(`${s.origin}/auth/alice`, { dispatcher: a });
    expect(((await first.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
    const aliceSessions = new Set(s.exchanges.filter((e) => e.user === 'EXAMPLE\\alice').map((e) => e.sessionId));
    for (const authorization of [`Basic ${Buffer.from('bob:bobpw').toString('base64')}`, 'Basic Ym9ndXM6eA==']) {
      const res = await fetch(`${s.origin}/auth/own`, { dispatcher: a, headers: { authorization } });
      const body = (await res.json()) as { user: string | null; sessionId: string };
      expect(body.user).not.toBe('EXAMPLE\\alice');
      expect(aliceSessions.has(body.sessionId)).toBe(false);
    }
    const own = s.exchanges.filter((e) => e.path === '/auth/own');
    expect(own.map((e) => [e.status, e.user ?? null])).toEqual([
      [200, 'EXAMPLE\\bob'],
      [401, null],
    ]);
    // The agent's own requests still use alice's session, without a new handshake.
    const again = await fetch(`${s.origin}/auth/again`, { dispatcher: a });
    const body = (await again.json()) as { user: string; sessionId: string };
    expect(body.user).toBe('EXAMPLE\\alice');
    expect(aliceSessions.has(body.sessionId)).toBe(true);
    expect(a.stats().handshakes).toBe(1);
  });

  it("S6: a gateway's stats: requests with the caller's own Authorization and the 401s they got are counted apart (callerRequests, callerChallenges), never as the agent's handshakes (they showed handshakes: 0, nothing of them)", async () => {
    const s = await server({ schemes: ['NTLM', 'Basic'] });
    const a = agent({ credentials: ALICE, connect: { ca: s.ca }, trustedOrigins: [s.origin] });
    const own = (authorization: string) =>
      fetch(`${s.origin}/auth/own`, { dispatcher: a, headers: { authorization } }).then(async (res) => {
        await res.arrayBuffer();
        return res.status;
      });
    // A caller's Basic taken, then refused: sent as given, the 401 delivered (never answered by the agent).
    expect(await own(`Basic ${Buffer.from('bob:bobpw').toString('base64')}`)).toBe(200);
    expect(await own('Basic Ym9ndXM6eA==')).toBe(401);
    expect(a.stats()).toMatchObject({ requests: 2, handshakes: 0, legs: 0, failedHandshakes: 0 });
    expect(a.stats()).toMatchObject({ callerRequests: 2, callerChallenges: 1 });
    // The agent's own handshake is counted as such, and not among the callers'.
    const mine = await fetch(`${s.origin}/auth/alice`, { dispatcher: a });
    expect(mine.status).toBe(200);
    await mine.arrayBuffer();
    expect(a.stats()).toMatchObject({ requests: 3, handshakes: 1, callerRequests: 2, callerChallenges: 1 });
  });
});

describe("S1/S6: a caller's Host header naming another origin (review r40)", () => {
  /** The server's record of `path`'s exchanges: status, user, whether it carried credentials, on which session. */
  const seen = (s: ReferenceServer, path: string) =>
    s.exchanges
      .filter((e) => e.path === path)
      .map((e) => ({ status: e.status, user: e.user ?? null, sent: hasAuth(e.requestHeaders), session: e.sessionId }));

  it("S1/S6: which Host headers name another origin: a host and port other than the origin's, a Host that is no authority, two Hosts; not the origin's own (any case, its default port), nor undici's dns interceptor's shape (an address in the origin, the name in Host with its port, and servername if any)", () => {
    const o = 'https://intranet.example';
    const elsewhere = (host: string | string[] | undefined, origin = o, servername?: string) =>
      hostElsewhere(origin, host === undefined ? {} : { host }, { path: '/', method: 'GET', servername } as never);
    expect(elsewhere(undefined)).toBe(false);
    expect(elsewhere('intranet.example')).toBe(false);
    expect(elsewhere('INTRANET.example:443')).toBe(false);
    for (const host of [
      'intranet.example:8443',
      'intranet.example.',
      'other.example',
      'intranet.example/x',
      'alice@intranet.example',
      'intranet.example evil',
      '',
    ]) {
      expect([host, elsewhere(host)]).toEqual([host, true]);
    }
    expect(elsewhere(['intranet.example', 'intranet.example'])).toBe(true);
    // Read as the origin by the URL parser, but a front end reads them as written (review r42).
    for (const [host, origin] of [
      ['intranet.exampl%65', o],
      ['intranet.example:0443', o],
      ['127.1:8443', 'https://127.0.0.1:8443'],
      ['2130706433:8443', 'https://127.0.0.1:8443'],
    ] as const) {
      expect([host, elsewhere(host, origin)]).toEqual([host, true]);
    }
    // undici's dns interceptor: the address it resolved in the origin, the name in Host (same port)
    // and servername; its retry on the other address family leaves servername out (review r42).
    expect(elsewhere('intranet.example:8443', 'https://10.0.0.5:8443', 'intranet.example')).toBe(false);
    expect(elsewhere('intranet.example:8443', 'https://[::1]:8443', 'INTRANET.example')).toBe(false);
    expect(elsewhere('intranet.example:8443', 'https://10.0.0.5:8443')).toBe(false);
    expect(elsewhere('intranet.example:8443', 'https://10.0.0.5:8443', 'other.example')).toBe(true);
    expect(elsewhere('intranet.example:9443', 'https://10.0.0.5:8443')).toBe(true);
    expect(elsewhere('10.0.0.6:8443', 'https://10.0.0.5:8443')).toBe(true);
    expect(elsewhere('intranet.example:8443', 'https://name.example:8443', 'intranet.example')).toBe(true);
  });

  it("S1/S6: a servername dispatch option naming another host than the one the request goes to (undici's TLS server name, which a front end may route by) gets no credentials (connections of its own): multileg:withheld says servername; the origin's own name (any case) changes nothing", async () => {
    const o = 'https://intranet.example';
    const sni = (servername: unknown, host?: string, origin = o) =>
      servernameElsewhere(origin, host === undefined ? {} : { host }, {
        path: '/',
        method: 'GET',
        servername,
      } as never);
    expect([sni(undefined), sni(null), sni(''), sni('intranet.example'), sni('INTRANET.example')]).toEqual([
      false,
      false,
      false,
      false,
      false,
    ]);
    expect([sni('other.example'), sni('intranet.example.'), sni(42)]).toEqual([true, true, true]);
    // undici's dns interceptor's shape: the name in Host and servername alike.
    expect(sni('intranet.example', 'intranet.example:8443', 'https://10.0.0.5:8443')).toBe(false);
    expect(sni('other.example', undefined, 'https://10.0.0.5:8443')).toBe(true);
    expect(sni('::1', undefined, 'https://[::1]:8443')).toBe(false);
    // No TLS over http: undici uses no server name there.
    expect(sni('other.example', undefined, 'http://intranet.example')).toBe(false);

    const seenSni: Array<{ sni: string | false | null; sent: boolean }> = [];
    const origin = await rawServer((req, res) => {
      seenSni.push({ sni: (req.socket as TLSSocket).servername, sent: req.headers.authorization !== undefined });
      if (req.headers.authorization) return void res.end('ok');
      res.writeHead(401, { 'www-authenticate': 'Basic realm="x"', 'content-length': '0' }).end();
    });
    const { port } = new URL(origin);
    // Trusted by address; the caller names a server (a tenant of the front end at that address).
    const byAddress = agent({
      credentials: ALICE,
      connect: { ca: CA_CERT },
      trustedOrigins: [`https://127.0.0.1:${port}`],
    });
    const events: WithheldEvent[] = [];
    const onWithheld = (e: unknown) => events.push(e as WithheldEvent);
    subscribe(WITHHELD_CHANNEL, onWithheld);
    try {
      const res = await request(`https://127.0.0.1:${port}/named`, {
        dispatcher: byAddress,
        servername: 'localhost',
      } as never);
      await res.body.arrayBuffer();
      // Before: 200, the password sent over TLS to the server named localhost, which no entry trusts.
      expect(res.statusCode).toBe(401);
    } finally {
      unsubscribe(WITHHELD_CHANNEL, onWithheld);
    }
    expect(seenSni).toEqual([{ sni: 'localhost', sent: false }]);
    expect(events).toEqual([expect.objectContaining({ path: '/named', reason: 'servername' })]);
    // The name trusted and named as the servername (any case): the agent's request.
    const byName = agent({ credentials: ALICE, connect: { ca: CA_CERT }, trustedOrigins: [origin] });
    for (const servername of ['localhost', 'LOCALHOST']) {
      const res = await request(`${origin}/own`, { dispatcher: byName, servername } as never);
      expect([servername, res.statusCode, await res.body.text()]).toEqual([servername, 200, 'ok']);
    }
  });

  it("S1/S6: the Host is read as undici reads it, in every form it takes headers: null (an empty Host on HTTP/1.1), a flat array whose name is an array, an iterable that yields other pairs a second time — none rides alice's session (review r42)", async () => {
    const s = await server({ schemes: ['NTLM'] });
    const a = agent({ credentials: ALICE, allowH2: false, connect: { ca: s.ca }, trustedOrigins: [s.origin] });
    const first = await request(`${s.origin}/auth/alice`, { dispatcher: a });
    expect(((await first.body.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
    const elsewhere = `127.0.0.1:${s.port}`;
    let passes = 0;
    const forms: Array<[string, unknown]> = [
      ['null', { host: null }],
      ['array name', [['host'], elsewhere]],
      [
        'changing iterable',
        {
          *[Symbol.iterator]() {
            passes += 1;
            yield ['host', passes === 1 ? elsewhere : `localhost:${s.port}`];
          },
        },
      ],
    ];
    for (const [name, headers] of forms) {
      const res = await request(`${s.origin}/auth/${name.replace(' ', '-')}`, {
        dispatcher: a,
        headers: headers as Record<string, string>,
      });
      await res.body.arrayBuffer();
      // Before: 200 as alice, on her authenticated connection.
      expect([name, res.statusCode]).toEqual([name, 401]);
    }
    const aliceSessions = new Set(s.exchanges.filter((e) => e.user === 'EXAMPLE\\alice').map((e) => e.sessionId));
    const others = s.exchanges.filter((e) => e.path !== '/auth/alice');
    expect(
      others.map((e) => [e.path, e.user ?? null, hasAuth(e.requestHeaders), aliceSessions.has(e.sessionId)]),
    ).toEqual([
      ['/auth/null', null, false, false],
      ['/auth/array-name', null, false, false],
      ['/auth/changing-iterable', null, false, false],
    ]);
    // What was decided on is what went: the Host the iterable gave first.
    expect(others.at(-1)!.requestHeaders.host).toBe(elsewhere);
  });

  it("S1/S6: undici's dns interceptor retrying on the other address family (its retry has the name in Host, no servername) is the origin's request: the credentials go (review r42)", async () => {
    const s = await server({ schemes: ['NTLM'] });
    const a = agent({
      credentials: ALICE,
      connect: { ca: s.ca },
      trustedOrigins: [s.origin, s.origin.replace('localhost', '127.0.0.1'), s.origin.replace('localhost', '[::1]')],
    });
    // ::1 first: the server listens on IPv4 only, so the interceptor dispatches again to 127.0.0.1.
    const viaDns = a.compose(
      interceptors.dns({
        affinity: 6,
        lookup: (_origin, _opts, cb) =>
          cb(null, [
            { address: '::1', family: 6, ttl: 60_000 },
            { address: '127.0.0.1', family: 4, ttl: 60_000 },
          ]),
      }),
    );
    const res = await request(`${s.origin}/auth/family`, { dispatcher: viaDns });
    // Before the fix's second round: 401, withheld as host-header.
    expect(res.statusCode).toBe(200);
    expect(((await res.body.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
  });

  it("S1/S4: over http the dns interceptor's shape is trusted only where the address and the Host's name both are: nothing ties the address to the name (review r50: a copied Host sent the password to an address nobody trusted)", async () => {
    const seen: string[] = [];
    const origin = await loopbackOrigin(
      createHttpServer((req, res) => {
        if (req.headers.authorization) {
          seen.push(req.headers.authorization);
          res.end('ok');
          return;
        }
        res.writeHead(401, { 'www-authenticate': 'Basic realm="x"', 'content-length': '0' }).end();
      }),
      closers,
    );
    const { port } = new URL(origin);
    const address = `http://127.0.0.1:${port}`;
    const byName = agent({
      credentials: ALICE,
      trustedOrigins: [`http://localhost:${port}`],
      allowBasicOverHttp: true,
    });
    const copied = await cause(
      request(`${address}/copied`, { dispatcher: byName, headers: { host: `localhost:${port}` } }).then((r) =>
        r.body.text(),
      ),
    );
    // Before: 200, the password sent to 127.0.0.1, which no entry trusts.
    expect(copied).toBeInstanceOf(CleartextCredentialsError);
    const both = agent({
      credentials: ALICE,
      trustedOrigins: [`http://localhost:${port}`, address],
      allowBasicOverHttp: true,
    });
    const res = await request(`${address}/both`, { dispatcher: both, headers: { host: `localhost:${port}` } });
    expect([res.statusCode, await res.body.text()]).toEqual([200, 'ok']);
    expect(seen).toHaveLength(1);
  });

  it("S1/S6: an absolute-form request target naming another origin (undici writes it as is; a server routes by it, RFC 9112 §3.2.2) gets no credentials, cookie or authenticated session: multileg:withheld says request-target (review r49); one naming the origin itself is the agent's", async () => {
    const s = await server({ schemes: ['NTLM'] });
    const a = agent({ credentials: ALICE, connect: { ca: s.ca }, trustedOrigins: [s.origin] });
    const events: WithheldEvent[] = [];
    const onWithheld = (e: unknown) => events.push(e as WithheldEvent);
    subscribe(WITHHELD_CHANNEL, onWithheld);
    try {
      const other = await a.request({
        origin: s.origin,
        path: 'https://tenant-b.example/auth/secret',
        method: 'GET',
        allowH2: false,
      } as Dispatcher.RequestOptions);
      await other.body.arrayBuffer();
      // Before: 200 as EXAMPLE\alice, the request line naming tenant-b.example.
      expect(other.statusCode).toBe(401);
    } finally {
      unsubscribe(WITHHELD_CHANNEL, onWithheld);
    }
    expect(s.exchanges.filter((e) => hasAuth(e.requestHeaders))).toEqual([]);
    expect(events).toEqual([expect.objectContaining({ origin: s.origin, reason: 'request-target' })]);
    const own = await a.request({
      origin: s.origin,
      path: `${s.origin}/auth/own`,
      method: 'GET',
      allowH2: false,
    } as Dispatcher.RequestOptions);
    expect(((await own.body.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
  });

  it("S1: behind undici's dns interceptor's shape (an address in the origin, a name in Host) trust is the name's: trusting the address alone sends no password for a Host naming some other site (review r48); trusting the name, the interceptor's requests get them", async () => {
    const s = await server({ schemes: ['NTLM'] });
    const { port } = new URL(s.origin);
    const ipOrigin = `https://127.0.0.1:${port}`;
    // A gateway whose backend is configured by address copies its caller's Host.
    const byAddress = agent({ credentials: ALICE, connect: { ca: s.ca }, trustedOrigins: [ipOrigin] });
    const copied = await request(`${ipOrigin}/auth/copied`, {
      dispatcher: byAddress,
      headers: { host: `localhost:${port}` },
    });
    await copied.body.arrayBuffer();
    // Before: 200 as alice, for whichever name the Host said.
    expect(copied.statusCode).toBe(401);
    expect(withAuth(s, '/auth/copied')).toEqual([]);
    // The address itself, no Host: trusted, the password goes.
    const direct = await request(`${ipOrigin}/auth/direct`, { dispatcher: byAddress });
    expect(((await direct.body.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
    // The name trusted, the dns interceptor putting the address in the origin: the password goes
    // (before, only where the address was listed too).
    const byName = agent({ credentials: ALICE, connect: { ca: s.ca }, trustedOrigins: [s.origin] });
    const viaDns = byName.compose(
      interceptors.dns({
        lookup: (_origin, _opts, cb) => cb(null, [{ address: '127.0.0.1', family: 4, ttl: 60_000 }]),
      }),
    );
    const named = await request(`${s.origin}/auth/named`, { dispatcher: viaDns });
    expect(((await named.body.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
  });

  it("S1/T3: behind undici's dns interceptor the certificate selector decides for the name the caller gave, not the address, and its choice for one name is not presented to another served from that address", async () => {
    // One server for every name (a CDN, a shared front end); listening on 127.0.0.1 and 127.0.0.2.
    const s = await server({ schemes: [], clientCertificate: 'offer', host: '0.0.0.0' });
    const { port } = new URL(s.origin);
    for (const name of ['a.test', 'b.test', 'evil.test']) s.options.authorities.push(`${name}:${port}`);
    const asked: string[] = [];
    const checked = new Set<string>();
    const certified = (decide: (hostname: string) => boolean) =>
      agent({
        // (The test certificate names localhost: the names' certificate is taken as checked; the
        // names it is checked for are recorded.)
        connect: {
          ca: s.ca,
          checkServerIdentity: (host) => {
            checked.add(host);
            return undefined;
          },
        },
        clientCertificate: (origin) => {
          asked.push(origin);
          return decide(new URL(origin).hostname) ? { cert: CLIENT_CERT, key: CLIENT_KEY } : undefined;
        },
      }).compose(
        interceptors.dns({
          lookup: (o, _opts, cb) =>
            cb(null, [{ address: o.hostname === 'evil.test' ? '127.0.0.2' : '127.0.0.1', family: 4, ttl: 60_000 }]),
        }),
      );
    const userAt = async (d: Dispatcher, host: string) => {
      const res = await request(`https://${host}:${port}/auth/${host}`, { dispatcher: d });
      return ((await res.body.json()) as { user: string | null }).user;
    };
    // A selector that keeps the certificate from one site: it was asked for https://127.0.0.2:PORT
    // and said yes (before: cert:alice at evil.test).
    const denying = certified((hostname) => hostname !== 'evil.test');
    expect(await userAt(denying, 'evil.test')).toBe(null);
    expect(await userAt(denying, 'a.test')).toBe('cert:alice');
    expect(asked).toEqual([`https://evil.test:${port}`, `https://a.test:${port}`]);
    // A selector for one site: its choice for a.test is not presented to b.test at the same address
    // (the address's pool kept it for every name there), and it is asked for b.test.
    asked.length = 0;
    const allowing = certified((hostname) => hostname === 'a.test');
    expect(await userAt(allowing, 'a.test')).toBe('cert:alice');
    expect(await userAt(allowing, 'b.test')).toBe(null);
    expect(asked).toEqual([`https://a.test:${port}`, `https://b.test:${port}`]);
    expect(s.exchanges.filter((e) => e.outcome === 'certificate' && !e.path.endsWith('a.test'))).toEqual([]);
    // Every connection, the selector's probe of the server's acceptable CAs included, was checked
    // for a name, never for the address (before: the probe's was checked for 127.0.0.1).
    expect([...checked].sort()).toEqual(['a.test', 'b.test', 'evil.test']);
  });

  it("S1/M2: behind undici's dns interceptor the mechanisms are told the name, not the address: negotiate.passwordAllowed decides the NTLM fallback for the name, and Kerberos asks for HTTP@name", async () => {
    const s = await server({ schemes: ['Negotiate'] });
    const { port } = new URL(s.origin);
    for (const name of ['a.corp.test', 'evil.corp.test']) s.options.authorities.push(`${name}:${port}`);
    // No Kerberos ticket: Negotiate falls back to NTLM with the password where passwordAllowed says.
    const services: string[] = [];
    const noTicket = {
      initializeClient: async (service: string) => {
        services.push(service);
        throw new Error(
          'No credentials were supplied, or the credentials were unavailable or inaccessible: No Kerberos credentials available (default cache: FILE:/tmp/x/none)',
        );
      },
    };
    const allowed: string[] = [];
    const a = agent({
      credentials: ALICE,
      trustedOrigins: [`https://*.corp.test:${port}`],
      // (The test certificate names localhost: the names' certificate is taken as checked.)
      connect: { ca: s.ca, checkServerIdentity: () => undefined },
      negotiate: {
        kerberos: noTicket,
        passwordAllowed: (origin) => {
          allowed.push(origin);
          return !origin.startsWith('https://evil.');
        },
      },
    });
    const viaDns = a.compose(
      interceptors.dns({ lookup: (_o, _opts, cb) => cb(null, [{ address: '127.0.0.1', family: 4, ttl: 60_000 }]) }),
    );
    // Before: passwordAllowed was asked for https://127.0.0.1:PORT, said yes, and evil got alice's NTLM.
    const evil = await request(`https://evil.corp.test:${port}/auth/evil`, { dispatcher: viaDns }).then(
      async (res) => ((await res.body.json()) as { user: string | null }).user,
      (e: Error) => e,
    );
    expect(evil).toMatchObject({ code: 'MULTILEG_KRB_NO_TICKET' });
    // Nothing went there but the bare request.
    expect(withAuth(s, '/auth/evil')).toEqual([]);
    const ok = await request(`https://a.corp.test:${port}/auth/ok`, { dispatcher: viaDns });
    expect(((await ok.body.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
    expect(allowed).toEqual([`https://evil.corp.test:${port}`, `https://a.corp.test:${port}`]);
    // Kerberos was asked for the names' service, not HTTP@127.0.0.1.
    expect(services.length).toBeGreaterThan(0);
    expect(services.every((x) => /^HTTP@(evil|a)\.corp\.test$/.test(x))).toBe(true);
  });

  it("S1/M5: behind undici's dns interceptor a connection opened early for a channel-bound first token is checked under the name, not the address: a name the certificate does not cover gets no request, no credentials", async () => {
    // The test certificate names localhost and 127.0.0.1; a.test is not in it.
    const s = await server({ schemes: ['NTLM'] });
    const { port } = new URL(s.origin);
    s.options.authorities.push(`a.test:${port}`);
    const a = agent({
      credentials: ALICE,
      negotiate: false,
      schemes: ['NTLM'],
      // A first token bound to the connection's certificate (as Negotiate's, M5): the connection is
      // opened before the first request.
      mechanisms: [{ ...ntlmMechanism(ALICE), bindsFirstToken: true }],
      trustedOrigins: [`https://a.test:${port}`, s.origin],
      connect: { ca: s.ca },
    });
    const viaDns = a.compose(
      interceptors.dns({ lookup: (_o, _opts, cb) => cb(null, [{ address: '127.0.0.1', family: 4, ttl: 60_000 }]) }),
    );
    // Before: the early connection was checked against 127.0.0.1, and a.test got alice's NTLM (200).
    const err = await cause(request(`https://a.test:${port}/auth/early`, { dispatcher: viaDns }));
    expect(err).toMatchObject({ code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
    expect(s.exchanges.filter((e) => e.path === '/auth/early')).toEqual([]);
    // A name the certificate covers: the early connection under it, the first token bound to it.
    const ok = await request(`${s.origin}/auth/named`, { dispatcher: viaDns });
    expect(((await ok.body.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
  });

  it("S1: behind undici's dns interceptor the origin's certificate is checked against the name inside a CONNECT tunnel and on a connectTo route, as on a direct connection: a name it does not cover gets no request, no credentials", async () => {
    // The test certificate names localhost and 127.0.0.1; a.test is not in it.
    const s = await server({ schemes: ['NTLM'] });
    const { port } = new URL(s.origin);
    s.options.authorities.push(`a.test:${port}`);
    const p = await startReferenceProxy({});
    closers.push(() => p.close());
    const dns = () =>
      interceptors.dns({ lookup: (_o, _opts, cb) => cb(null, [{ address: '127.0.0.1', family: 4, ttl: 60_000 }]) });
    const common = {
      credentials: ALICE,
      negotiate: false as const,
      trustedOrigins: [`https://a.test:${port}`, s.origin],
    };
    const tunnelled = agent({ ...common, connect: { ca: s.ca }, proxy: { uri: p.origin, connect: { ca: p.ca } } });
    // connectTo sends the address's connection to the same server: a route of its own.
    const routed = agent({
      ...common,
      connect: { ca: s.ca },
      proxy: false,
      connectTo: () => ({ addresses: ['127.0.0.1'] }),
    });
    for (const via of [tunnelled, routed]) {
      // Before: checked against 127.0.0.1, and a.test got alice's NTLM (200).
      const err = await cause(request(`https://a.test:${port}/auth/checked`, { dispatcher: via.compose(dns()) }));
      expect(err).toMatchObject({ code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
      // A name the certificate covers goes (localhost).
      const ok = await request(`${s.origin}/auth/named`, { dispatcher: via.compose(dns()) });
      expect(((await ok.body.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
    }
    expect(s.exchanges.filter((e) => e.path === '/auth/checked')).toEqual([]);
    expect(p.exchanges.map((e) => e.method)).toEqual(['CONNECT', 'CONNECT']);
  });

  it("S1/S6: a caller's Host naming another origin gets no credentials and no authenticated session: NTLM session mode and a Basic password; multileg:withheld says host-header; a Host naming the origin itself changes nothing", async () => {
    const s = await server({ schemes: ['NTLM', 'Basic'] });
    const { port } = new URL(s.origin);
    const a = agent({ credentials: ALICE, connect: { ca: s.ca }, trustedOrigins: [s.origin] });
    const first = await request(`${s.origin}/auth/alice`, { dispatcher: a });
    expect(((await first.body.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
    const [alice] = seen(s, '/auth/alice').filter((e) => e.status === 200);
    const events: WithheldEvent[] = [];
    const onWithheld = (e: unknown) => events.push(e as WithheldEvent);
    subscribe(WITHHELD_CHANNEL, onWithheld);
    try {
      // A gateway that copied its incoming Host: undici makes it the :authority the server serves.
      const res = await request(`${s.origin}/auth/elsewhere`, {
        dispatcher: a,
        headers: { host: `127.0.0.1:${port}` },
      });
      await res.body.arrayBuffer();
      // Before: 200 as alice, on alice's NTLM-authenticated session, for the authority 127.0.0.1.
      expect(res.statusCode).toBe(401);
    } finally {
      unsubscribe(WITHHELD_CHANNEL, onWithheld);
    }
    expect(seen(s, '/auth/elsewhere')).toEqual([expect.objectContaining({ status: 401, user: null, sent: false })]);
    expect(seen(s, '/auth/elsewhere')[0]!.session).not.toBe(alice!.session);
    expect(events).toEqual([
      expect.objectContaining({ origin: s.origin, path: '/auth/elsewhere', reason: 'host-header' }),
    ]);
    // The origin's own name, in any case, with or without its port: the agent's request, as alice.
    // (undici makes a Host header the TLS server name, and opens a new connection where that name
    // changed: from none to one, here, so alice's session is not the one it goes on.)
    for (const host of [`localhost:${port}`, `LOCALHOST:${port}`]) {
      const same = await request(`${s.origin}/auth/same`, { dispatcher: a, headers: { host } });
      expect(((await same.body.json()) as { user: string }).user).toBe('EXAMPLE\\alice');
    }

    // A Basic password, per request: before, it went to the authority the Host named.
    const b = await server({ schemes: ['Basic'] });
    const viaB = agent({ credentials: ALICE, connect: { ca: b.ca }, trustedOrigins: [b.origin] });
    const { port: portB } = new URL(b.origin);
    for (const host of [`127.0.0.1:${portB}`, `localhost.:${portB}`, 'localhost:443', 'localhost']) {
      const res = await request(`${b.origin}/auth/basic`, { dispatcher: viaB, headers: { host } });
      await res.body.arrayBuffer();
      expect(res.statusCode).toBe(401);
    }
    expect(withAuth(b, '/auth/basic')).toEqual([]);
  });
});

/**
 * A caller (a gateway relaying an end user's NTLM) runs bob's handshake through `a` with headers of
 * its own: the sessions its two legs went on.
 */
async function bobsHandshake(s: ReferenceServer, a: MultilegAgent): Promise<string[]> {
  const leg = {
    origin: s.origin,
    hostname: 'localhost',
    port: s.port,
    method: 'GET',
    path: '/auth/bob',
    proxy: false,
  };
  const bob = ntlmMechanism({ username: 'EXAMPLE\\bob', password: 'bobpw' }).createContext(leg);
  const r1 = await request(`${s.origin}/auth/bob`, {
    dispatcher: a,
    headers: { authorization: await bob.step(undefined, leg) },
  });
  await r1.body.arrayBuffer();
  expect(r1.statusCode).toBe(401);
  const challenge = parseChallenges(r1.headers['www-authenticate'] as string)[0];
  const authId = r1.headers['auth-id'] as string | undefined;
  const r2 = await request(`${s.origin}/auth/bob`, {
    dispatcher: a,
    headers: { authorization: await bob.step(challenge, leg), ...(authId ? { 'auth-id': authId } : {}) },
  });
  expect(((await r2.body.json()) as { user: string }).user).toBe('EXAMPLE\\bob');
  return s.exchanges.filter((e) => e.path === '/auth/bob').map((e) => e.sessionId);
}
describe('S6: a session a caller authenticated with its own handshake', () => {
  const bobsSessions = (s: ReferenceServer) =>
    new Set(s.exchanges.filter((e) => e.user === 'EXAMPLE\\bob').map((e) => e.sessionId));

  it("S6: a request with only its own Proxy-Authorization never rides a session another caller's own NTLM handshake authenticated as bob", async () => {
    const s = await server({ schemes: ['NTLM'] });
    const a = agent({ credentials: ALICE, negotiate: false, connect: { ca: s.ca }, trustedOrigins: [s.origin] });
    await bobsHandshake(s, a);
    // Caller 2 sends no Authorization, only a Proxy-Authorization of its own (no proxy here).
    const r3 = await fetch(`${s.origin}/auth/carol`, {
      dispatcher: a,
      headers: { 'proxy-authorization': `Basic ${Buffer.from('carol:x').toString('base64')}` },
    });
    const body = (await r3.json().catch(() => ({ user: null }))) as { user: string | null };
    // Before: 200 as EXAMPLE\bob, on bob's session.
    expect(r3.status).toBe(401);
    expect(body.user).toBeNull();
    const carol = s.exchanges.find((e) => e.path === '/auth/carol')!;
    expect(bobsSessions(s).has(carol.sessionId)).toBe(false);
  });

  it("S6: a request whose Host header names another origin never rides a session another caller's own NTLM handshake authenticated as bob (review r42), over HTTP/2 and HTTP/1.1", async () => {
    for (const allowH2 of [true, false]) {
      const s = await server({ schemes: ['NTLM'] });
      const a = agent({
        credentials: ALICE,
        negotiate: false,
        allowH2,
        connect: { ca: s.ca },
        trustedOrigins: [s.origin],
      });
      await bobsHandshake(s, a);
      const res = await request(`${s.origin}/auth/carol`, { dispatcher: a, headers: { host: `127.0.0.1:${s.port}` } });
      await res.body.arrayBuffer();
      // Before (the first fix, in the callers' lane): 200 as EXAMPLE\bob, on bob's session.
      expect(res.statusCode).toBe(401);
      const carol = s.exchanges.find((e) => e.path === '/auth/carol')!;
      expect([carol.user ?? null, bobsSessions(s).has(carol.sessionId)]).toEqual([null, false]);
    }
  });
});

describe("S6: the callers' sessions, after a caller's own credentials may have authenticated one (review r48)", () => {
  /** `authorization` to /public/ (where the server serves whoever the session is): who it ran as, on bob's session or not. */
  async function publicAs(s: ReferenceServer, a: MultilegAgent, path: string, authorization: string) {
    const res = await request(`${s.origin}/public/${path}`, { dispatcher: a, headers: { authorization } });
    const { user } = (await res.body.json()) as { user: string | null };
    const bobs = new Set(s.exchanges.filter((e) => e.user === 'EXAMPLE\\bob').map((e) => e.sessionId));
    const e = s.exchanges.find((x) => x.path === `/public/${path}`)!;
    return [res.statusCode, user, bobs.has(e.sessionId)];
  }

  it("S6: a caller's own Bearer after another caller's own NTLM handshake (session mode) is not served as bob, over HTTP/2 and HTTP/1.1; the handshake's second leg still goes on its first leg's session", async () => {
    for (const allowH2 of [true, false]) {
      const s = await server({ schemes: ['NTLM'] });
      const a = agent({ allowH2, connect: { ca: s.ca }, trustedOrigins: [s.origin] });
      const legs = await bobsHandshake(s, a);
      expect(legs).toHaveLength(2);
      expect(legs[1]).toBe(legs[0]);
      // Before: 200 as EXAMPLE\bob, on bob's session (one lane for every caller).
      expect([allowH2, ...(await publicAs(s, a, 'bearer', 'Bearer token-of-carol'))]).toEqual([
        allowH2,
        200,
        null,
        false,
      ]);
    }
  });

  it("S6: a caller's own NTLM or Negotiate token the server ignores (at /public/) after another caller's NTLM handshake authenticated a session: not served as bob, over HTTP/2 and HTTP/1.1 (that session retires once answered)", async () => {
    for (const allowH2 of [true, false]) {
      const s = await server({ schemes: ['NTLM'] });
      const a = agent({ allowH2, connect: { ca: s.ca }, trustedOrigins: [s.origin] });
      await bobsHandshake(s, a);
      // Before (with the lanes split alone): 200 as EXAMPLE\bob, on bob's session.
      expect([allowH2, ...(await publicAs(s, a, 'ntlm', 'NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAA='))]).toEqual(
        [allowH2, 200, null, false],
      );
      expect([allowH2, ...(await publicAs(s, a, 'negotiate', 'Negotiate YIIBbm90LWEtdG9rZW4='))]).toEqual([
        allowH2,
        200,
        null,
        false,
      ]);
    }
  });

  it("S6: a caller's own per-request credentials answered with Persistent-Auth: true (the server keeps the connection authenticated): the next caller's request goes on another connection", async () => {
    const users = new WeakMap<object, string>();
    const origin = await rawServer((req, res) => {
      const basic = /^Basic (\S+)$/.exec(req.headers.authorization ?? '')?.[1];
      const token = basic && Buffer.from(basic, 'base64').toString().split(':')[0];
      if (token) users.set(req.socket, token);
      res.writeHead(200, token ? { 'persistent-auth': 'true' } : {});
      res.end(users.get(req.socket) ?? 'nobody');
    });
    const a = agent({ allowH2: false, connect: { ca: CA_CERT }, trustedOrigins: [origin] });
    const first = await request(`${origin}/x`, { dispatcher: a, headers: { authorization: 'Bearer unknown-to-it' } });
    expect(await first.body.text()).toBe('nobody');
    const carol = await request(`${origin}/x`, {
      dispatcher: a,
      headers: { authorization: `Basic ${Buffer.from('carol:pw').toString('base64')}` },
    });
    expect(await carol.body.text()).toBe('carol');
    const next = await request(`${origin}/x`, { dispatcher: a, headers: { authorization: 'Bearer of-dave' } });
    // Before: carol, on the connection her token authenticated.
    expect(await next.body.text()).toBe('nobody');
  });

  it("S6: a caller's own Bearer sent while another caller's NTLM leg is on the wire (HTTP/2) goes on another session: the server may authenticate that session before it serves the Bearer", async () => {
    // Takes `NTLM …` as bob's login of its session at once and answers it only once another request came.
    const users = new WeakMap<object, string>();
    const held: Array<() => void> = [];
    let arrived: () => void = () => {};
    const ntlmArrived = new Promise<void>((resolve) => {
      arrived = resolve;
    });
    const origin = await loopbackOrigin(
      createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY }, (req, res) => {
        if (/^NTLM /.test(req.headers.authorization ?? '')) {
          users.set(req.stream.session!, 'bob');
          held.push(() => res.end('bob'));
          arrived();
          return;
        }
        res.end(users.get(req.stream.session!) ?? 'nobody');
        for (const release of held.splice(0)) release();
      }),
      closers,
    );
    const a = agent({ connect: { ca: CA_CERT }, trustedOrigins: [origin] });
    const bob = request(`${origin}/x`, { dispatcher: a, headers: { authorization: 'NTLM TlRMTVNTUAADAAAA' } });
    await ntlmArrived;
    const carol = await request(`${origin}/x`, { dispatcher: a, headers: { authorization: 'Bearer of-carol' } });
    // Before: bob, on the session bob's leg was authenticating.
    expect(await carol.body.text()).toBe('nobody');
    expect(await (await bob).body.text()).toBe('bob');
  });

  it("S6: which caller schemes may authenticate the connection: NTLM, Negotiate, any not known per-request; not Basic, Bearer, Digest (any case), nor a mechanism's own per-request scheme", () => {
    const set = new MechanismSet([], ['Negotiate', 'NTLM']);
    for (const value of [
      'NTLM TlRM',
      'Negotiate YII=',
      'negotiate x',
      'Kerberos x',
      'Custom x',
      '',
      ['Bearer x', 'NTLM y'],
    ]) {
      expect([value, set.bindsConnection(value)]).toEqual([value, true]);
    }
    for (const value of [
      'Basic Ym9i',
      'bearer abc',
      'Digest username="x"',
      'DPoP x',
      'AWS4-HMAC-SHA256 Credential=x',
    ]) {
      expect([value, set.bindsConnection(value)]).toEqual([value, false]);
    }
    const own = new MechanismSet([{ scheme: 'Custom', level: 'request' } as never], ['Custom']);
    expect(own.bindsConnection('Custom x')).toBe(false);
  });
});

describe('credentials given wrong', () => {
  it('S1: a password that is not a string (an unset environment variable) is a construction error that says so', () => {
    const noPassword = { username: 'EXAMPLE\\alice', password: process.env.MULTILEG_SURELY_UNSET_VARIABLE! };
    expect(() => new MultilegAgent({ credentials: noPassword, trustedOrigins: ['https://a.example'] })).toThrow(
      /credentials\.password must be a string, got undefined \(is the environment variable/,
    );
    expect(() => new MultilegAgent({ credentials: { username: '', password: 'x' }, trustedOrigins: [] })).toThrow(
      ConfigError,
    );
    // Not an object at all (an unset variable's empty string): said so, not taken as "no credentials".
    for (const given of ['', 0, false]) {
      expect(() => new MultilegAgent({ credentials: given as never, trustedOrigins: [] })).toThrow(
        /^credentials must be \{ username, password \}/,
      );
      expect(() => new MultilegAgent({ proxy: { uri: 'http://p:3128', credentials: given as never } })).toThrow(
        /^proxy\.credentials must be \{ username, password \}/,
      );
    }
  });

  it("S1: the agent keeps its own copy of the credentials: the caller's object changed later changes nothing sent", async () => {
    const server = await startReferenceServer({ mode: 'session' });
    const given = { username: 'EXAMPLE\\alice', password: 'alicepw' };
    const mine = new MultilegAgent({ credentials: given, connect: { ca: server.ca }, trustedOrigins: [server.origin] });
    try {
      given.password = 'changed';
      const res = await request(`${server.origin}/auth/copy`, { dispatcher: mine });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    } finally {
      await mine.close();
      await server.close();
    }
  });

  it("S1: the proxy's credentials are copied too: the caller's proxy.credentials changed later changes nothing sent to the proxy", async () => {
    const server = await startReferenceServer({ mode: 'session' });
    const px = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    const given = { username: 'proxyuser', password: 'proxypw' };
    const mine = new MultilegAgent({
      credentials: ALICE,
      connect: { ca: server.ca },
      trustedOrigins: [server.origin],
      proxy: { uri: px.origin, connect: { ca: px.ca }, credentials: given },
    });
    try {
      given.password = 'changed';
      const res = await request(`${server.origin}/auth/proxy-copy`, { dispatcher: mine });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
      expect(px.exchanges.some((e) => e.proxyAuthorization && e.status !== 407)).toBe(true);
    } finally {
      await mine.close();
      await px.close();
      await server.close();
    }
  });

  it("H5: proxy.credentials: null is none, as credentials: null is: the proxy's 407 asks for proxy.credentials", async () => {
    const server = await startReferenceServer({ mode: 'session' });
    const px = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    const mine = new MultilegAgent({
      credentials: null,
      connect: { ca: server.ca },
      proxy: { uri: px.origin, connect: { ca: px.ca }, credentials: null },
    });
    try {
      const err = await request(`${server.origin}/public/x`, { dispatcher: mine }).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err).toBeInstanceOf(ProxyAuthenticationError);
      expect(err?.message).toMatch(/give proxy\.credentials/);
    } finally {
      await mine.close();
      await px.close();
      await server.close();
    }
  });

  it("H5: the proxy's credentials are checked the same way: an empty user name or a missing password is a construction error naming proxy.credentials", () => {
    expect(
      () => new MultilegAgent({ proxy: { uri: 'http://p:3128', credentials: { username: '', password: '' } } }),
    ).toThrow(
      new ConfigError(
        "proxy.credentials.username must be a non-empty string, e.g. EXAMPLE\\alice (for the proxy's Kerberos ticket alone, leave proxy.credentials out)",
      ),
    );
    const unset = { username: 'CORP\\alice', password: process.env.MULTILEG_SURELY_UNSET_VARIABLE! };
    expect(() => new MultilegAgent({ proxy: { credentials: unset } })).toThrow(
      /^proxy\.credentials\.password must be a string, got undefined \(is the environment variable/,
    );
  });
});
