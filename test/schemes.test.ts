import { describe, expect, it } from 'vitest';
import { MultilegAgent, ntlmMechanism, type SchemeName } from '../src/index.ts';

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
});
