import { describe, expect, it } from 'vitest';
import { ConfigError, MultilegAgent, ntlmMechanism, type SchemeName } from '../src/index.ts';

describe('schemes', () => {
  it('T2: an unknown name in schemes is a ConfigError naming the known ones (a typo would turn a scheme off)', () => {
    expect(() => new MultilegAgent({ schemes: ['Negotiate', 'Kerberos' as SchemeName] })).toThrow(
      /schemes: unknown scheme "Kerberos"; use Negotiate, NTLM, Digest, Basic, Transport/,
    );
    expect(
      () => new MultilegAgent({ proxy: { uri: 'http://127.0.0.1:3128', schemes: ['Bearer' as SchemeName] } }),
    ).toThrow(/proxy\.schemes: unknown scheme "Bearer"/);
    // Case-insensitive, and a custom mechanism's scheme is known.
    const custom = { ...ntlmMechanism({ username: 'u', password: 'p' }), scheme: 'X-Custom' };
    expect(
      () =>
        new MultilegAgent({
          schemes: ['ntlm' as SchemeName, 'X-Custom' as SchemeName],
          mechanisms: [custom],
          trustedOrigins: ['https://h'],
        }),
    ).not.toThrow();
  });

  it('T2: schemes that is not an array (a string from plain JavaScript) is a ConfigError saying to write an array, agent and proxy alike', () => {
    for (const bad of ['NTLM', 'Negotiate, NTLM', { 0: 'NTLM' }, 1]) {
      const agent = () => new MultilegAgent({ schemes: bad as never });
      expect(agent, String(bad)).toThrow(ConfigError);
      expect(agent, String(bad)).toThrow(
        "schemes must be an array of scheme names, in order of preference, e.g. schemes: ['NTLM']",
      );
      const proxy = () => new MultilegAgent({ proxy: { uri: 'http://127.0.0.1:3128', schemes: bad as never } });
      expect(proxy, String(bad)).toThrow(ConfigError);
      expect(proxy, String(bad)).toThrow(
        "proxy.schemes must be an array of scheme names, in order of preference, e.g. proxy.schemes: ['NTLM']",
      );
    }
    expect(() => new MultilegAgent({ schemes: 'NTLM' as never })).toThrow('(got a string)');
    // A non-string entry is a ConfigError too, not a TypeError.
    expect(() => new MultilegAgent({ schemes: ['NTLM', 1] as never })).toThrow(
      new ConfigError("schemes entries must be scheme names (strings), e.g. schemes: ['NTLM']"),
    );
  });

  it('T2: schemes: [] (every scheme off: each challenge would end as a 401 nothing answers, unexplained) is a ConfigError saying to omit it for the default order or name one, agent and proxy alike', () => {
    const agent = () => new MultilegAgent({ schemes: [] });
    expect(agent).toThrow(ConfigError);
    expect(agent).toThrow(
      "schemes: [] names no scheme, so no challenge could ever be answered (each 401 or 407 would stand, unexplained); omit schemes for the default order (Negotiate, NTLM, Digest, Basic) or name at least one, e.g. schemes: ['Negotiate', 'NTLM']",
    );
    expect(catchError(agent)).toMatchObject({ code: 'MULTILEG_CONFIG', option: 'schemes' });
    const proxy = () => new MultilegAgent({ proxy: { uri: 'http://127.0.0.1:3128', schemes: [] } });
    expect(proxy).toThrow(ConfigError);
    expect(proxy).toThrow(
      "proxy.schemes: [] names no scheme, so no challenge could ever be answered (each 401 or 407 would stand, unexplained); omit proxy.schemes for the default order (Negotiate, NTLM, Digest, Basic) or name at least one, e.g. proxy.schemes: ['Negotiate', 'NTLM']",
    );
    expect(catchError(proxy)).toMatchObject({ code: 'MULTILEG_CONFIG', option: 'proxy.schemes' });
    // One scheme is enough.
    expect(
      () => new MultilegAgent({ schemes: ['Negotiate'], proxy: { uri: 'http://127.0.0.1:3128', schemes: ['Basic'] } }),
    ).not.toThrow();
  });
});

/** The error `f` throws. */
function catchError(f: () => unknown): unknown {
  try {
    f();
  } catch (err) {
    return err;
  }
  throw new Error('did not throw');
}
