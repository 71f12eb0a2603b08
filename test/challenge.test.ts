import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_DIGEST_PARAM_LENGTH } from '../src/challenge/digest.ts';
import {
  type Challenge,
  chooseChallenge,
  DEFAULT_SCHEME_ORDER,
  digestAlgorithmStrength,
  formatChallenge,
  parseAuthParams,
  parseChallenges,
  readAuthenticationInfo,
  readAuthId,
  readChallenges,
  readPersistentAuth,
  readProxySupport,
  readRemoteHttpVersion,
} from '../src/challenge/index.ts';
import { MultilegError } from '../src/errors.ts';

/** Expected challenge: params object, or a token68 string. */
function ch(scheme: string, p: Record<string, string> | string = {}): Challenge {
  const base = { scheme, schemeKey: scheme.toLowerCase() };
  return typeof p === 'string' ? { ...base, token68: p, params: {} } : { ...base, params: p };
}

const NTLM_TYPE2 =
  'TlRMTVNTUAACAAAADAAMADgAAAAFgomiESIzRFVmd4gAAAAAAAAAAIwAjABEAAAABgGxHQAAAA9EAE8ATQBBAEkATgACAAwARABPAE0AQQBJAE4AAQAMAFMARQBSAFYARQBSAAQAFgBlAHgAYQBtAHAAbABlAC4AYwBvAG0AAwAkAHMAZQByAHYAZQByAC4AZQB4AGEAbQBwAGwAZQAuAGMAbwBtAAAAAAA=';

describe('parseChallenges', () => {
  const table: [string, string | string[] | undefined, Challenge[]][] = [
    // RFC 9110 §11.6.1 example.
    [
      'RFC 9110 example with Basic and a custom scheme',
      'Basic realm="simple", Newauth realm="apps", type=1, title="Login to \\"apps\\""',
      [ch('Basic', { realm: 'simple' }), ch('Newauth', { realm: 'apps', type: '1', title: 'Login to "apps"' })],
    ],
    // RFC 7616 §3.9.1 example (SHA-256 then MD5).
    [
      'RFC 7616 Digest pair',
      'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, ' +
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS", ' +
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, ' +
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
      ['SHA-256', 'MD5'].map((algorithm) =>
        ch('Digest', {
          realm: 'http-auth@example.org',
          qop: 'auth, auth-int',
          algorithm,
          nonce: '7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v',
          opaque: 'FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS',
        }),
      ),
    ],
    // RFC 7616 §3.9.2: userhash.
    [
      'RFC 7616 Digest with userhash and SHA-512-256',
      'Digest realm="api@example.org", qop="auth", algorithm=SHA-512-256, nonce="5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK", opaque="HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS", charset=UTF-8, userhash=true',
      [
        ch('Digest', {
          realm: 'api@example.org',
          qop: 'auth',
          algorithm: 'SHA-512-256',
          nonce: '5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK',
          opaque: 'HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS',
          charset: 'UTF-8',
          userhash: 'true',
        }),
      ],
    ],
    // RFC 7617 §2.1.
    ['Basic with charset', 'Basic realm="foo", charset="UTF-8"', [ch('Basic', { realm: 'foo', charset: 'UTF-8' })]],
    ['Negotiate alone', 'Negotiate', [ch('Negotiate')]],
    ['NTLM alone with spaces around', '  NTLM  ', [ch('NTLM')]],
    [
      'Negotiate token68',
      'Negotiate YIIBmQYGKwYBBQUCoIIBjTCCAYmgMDAuBgkqhkiC9xIBAgIG',
      [ch('Negotiate', 'YIIBmQYGKwYBBQUCoIIBjTCCAYmgMDAuBgkqhkiC9xIBAgIG')],
    ],
    ['NTLM type 2 with = padding', `NTLM ${NTLM_TYPE2}`, [ch('NTLM', NTLM_TYPE2)]],
    [
      'token68 with == padding and /+',
      'Negotiate oR8wHaADCgEAoRYEFA+/ab==',
      [ch('Negotiate', 'oR8wHaADCgEAoRYEFA+/ab==')],
    ],
    ['h2-joined repeated fields', 'Negotiate, NTLM', [ch('Negotiate'), ch('NTLM')]],
    [
      'array form (HTTP/1.1)',
      ['Negotiate', 'NTLM', 'Basic realm="x"'],
      [ch('Negotiate'), ch('NTLM'), ch('Basic', { realm: 'x' })],
    ],
    [
      'mixed schemes with commas inside quoted values',
      'Negotiate, NTLM, Basic realm="x, y", Digest realm="a", qop="auth,auth-int", nonce="abc"',
      [
        ch('Negotiate'),
        ch('NTLM'),
        ch('Basic', { realm: 'x, y' }),
        ch('Digest', { realm: 'a', qop: 'auth,auth-int', nonce: 'abc' }),
      ],
    ],
    [
      'weird spacing, tabs, case; names lower-cased, scheme kept as sent',
      ' ,\tbAsIc \t REALM = "r"\t,,  Charset=UTF-8 ,  NEGOTIATE\t, ',
      [ch('bAsIc', { realm: 'r', charset: 'UTF-8' }), ch('NEGOTIATE')],
    ],
    [
      'Transport challenge (T)',
      'Transport mode="tls-client-certificate"',
      [ch('Transport', { mode: 'tls-client-certificate' })],
    ],
    ['quoted escapes', 'Basic realm="a\\"b\\\\c"', [ch('Basic', { realm: 'a"b\\c' })]],
    ['escaped ordinary character', 'Basic realm="\\a\\ b"', [ch('Basic', { realm: 'a b' })]],
    ['empty quoted value', 'Basic realm=""', [ch('Basic', { realm: '' })]],
    ['obs-text in a quoted value', 'Basic realm="caf\u00e9"', [ch('Basic', { realm: 'caf\u00e9' })]],
    ['duplicate params: first wins', 'Basic realm="one", Realm="two"', [ch('Basic', { realm: 'one' })]],
    [
      'param named __proto__ is plain data',
      'X __proto__=a, constructor=b',
      [ch('X', { ['__proto__']: 'a', constructor: 'b' })],
    ],
    ['undefined header', undefined, []],
    ['empty header', '', []],
    ['empty array', [], []],
    ['only commas and spaces', ' ,,, , ', []],
    // `realm=` is 1*token68-char then "=": the grammar makes it a token68.
    ['Basic realm= is a token68 by the grammar', 'Basic realm=', [ch('Basic', 'realm=')]],
    ['orphan =foo skipped', '=foo, NTLM', [ch('NTLM')]],
    ['orphan param skipped', 'foo=bar, Negotiate', [ch('Negotiate')]],
    ['unterminated quote: challenge dropped, next one kept', 'Basic realm="abc, NTLM', [ch('NTLM')]],
    ['unterminated quote at the end', 'Negotiate, Basic realm="abc', [ch('Negotiate')]],
    ['unterminated quote in one array element does not eat the next', ['Basic realm="abc', 'NTLM'], [ch('NTLM')]],
    [
      'param without value: challenge dropped, rest of its params skipped',
      'Digest realm=, nonce="n", NTLM',
      [ch('Digest', 'realm='), ch('NTLM')],
    ],
    ['bad value after = drops the challenge', 'Basic realm=@, NTLM', [ch('NTLM')]],
    ['text after a quoted value drops the challenge', 'Basic realm="x"y, NTLM', [ch('NTLM')]],
    ['control character inside quotes drops the challenge', 'Basic realm="a\u0000b", NTLM', [ch('NTLM')]],
    ['token68 followed by junk is neither token68 nor params', 'Negotiate abc def, NTLM', [ch('NTLM')]],
    ['scheme glued to a quote', 'Basic"x", NTLM', [ch('NTLM')]],
    // `/` is a token68 character but no tchar: the scheme is not `NTLM` with a token68 `/abc`.
    ['scheme glued to a token68 character', 'NTLM/abc, Basic', [ch('Basic')]],
    [
      'a bare token after params is a new challenge',
      'Digest realm="a", stale, nonce="n"',
      [ch('Digest', { realm: 'a' }), ch('stale')],
    ],
    [
      'params of a dropped challenge are not adopted by the next',
      'Basic realm="x"y, foo=bar, baz="q", NTLM',
      [ch('NTLM')],
    ],
    [
      'resync skips quoted strings: a dropped challenge cannot smuggle in a scheme',
      'Basic realm="x" junk, title="a, Negotiate, b", NTLM',
      [ch('NTLM')],
    ],
    ['resync skips a stray quoted string', 'Basic realm="x"y, "a, Evil, b", NTLM', [ch('NTLM')]],
  ];

  for (const [name, input, expected] of table) {
    it(`T1: ${name}`, () => {
      expect(parseChallenges(input)).toEqual(expected);
    });
  }

  it('T1: scheme and params lookups work on the result', () => {
    const [c] = parseChallenges('DIGEST Realm="r", ALGORITHM=sha-256');
    expect(c?.schemeKey).toBe('digest');
    expect(c?.params.realm).toBe('r');
    expect(c?.params.algorithm).toBe('sha-256');
    expect(c?.token68).toBeUndefined();
    expect('token68' in (c ?? {})).toBe(false);
  });

  it('T1: results are frozen', () => {
    const [c] = parseChallenges('Basic realm="x"');
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c?.params)).toBe(true);
  });

  it('T1: readChallenges reads WWW-Authenticate or Proxy-Authenticate', () => {
    const headers = { 'www-authenticate': ['Negotiate', 'NTLM'], 'proxy-authenticate': 'Basic realm="proxy"' };
    expect(readChallenges(headers)).toEqual([ch('Negotiate'), ch('NTLM')]);
    expect(readChallenges(headers, true)).toEqual([ch('Basic', { realm: 'proxy' })]);
    expect(readChallenges({ 'WWW-Authenticate': 'NTLM' })).toEqual([ch('NTLM')]);
    expect(readChallenges(undefined)).toEqual([]);
  });

  it('T1: non-string array elements are ignored at run time', () => {
    const bogus = ['NTLM', 42, null, 'Negotiate'] as unknown as string[];
    expect(parseChallenges(bogus)).toEqual([ch('NTLM'), ch('Negotiate')]);
    expect(parseChallenges(7 as unknown as string)).toEqual([]);
  });

  it('S3: a header over maxBytes (default 16 KiB total) is ignored', () => {
    const token = 'A'.repeat(16 * 1024 - 'NTLM '.length);
    expect(parseChallenges(`NTLM ${token}`)).toEqual([ch('NTLM', token)]);
    expect(parseChallenges(`NTLM ${token}A`)).toEqual([]);
    // The bound is over all field values together.
    expect(parseChallenges(['Negotiate', 'x'.repeat(16 * 1024)])).toEqual([]);
    expect(parseChallenges('Basic realm="x"', { maxBytes: 10 })).toEqual([]);
    expect(parseChallenges('Basic realm="x"', { maxBytes: 15 })).toEqual([ch('Basic', { realm: 'x' })]);
  });

  it('S3: at most maxChallenges (default 32) challenges are kept, in order', () => {
    const many = Array.from({ length: 40 }, (_, i) => `S${i}`);
    const parsed = parseChallenges(many.join(', '));
    expect(parsed.map((c) => c.scheme)).toEqual(many.slice(0, 32));
    expect(parseChallenges(many).map((c) => c.scheme)).toEqual(many.slice(0, 32));
    expect(parseChallenges(many, { maxChallenges: 2 }).map((c) => c.scheme)).toEqual(['S0', 'S1']);
  });

  it('S3: pathological quoting within the size bound still parses (linear resync)', () => {
    // Every later `"` is escaped from the first one's point of view: naive resync rescans to the end each time.
    expect(parseChallenges('x\\",'.repeat(4000))).toEqual([]);
    expect(parseChallenges(`${'A \\",'.repeat(3000)}NTLM`)).toEqual([ch('NTLM')]);
    expect(parseChallenges('A b="\\",'.repeat(1800))).toEqual([]);
    expect(parseChallenges(`${'x="'.repeat(5000)}, NTLM`)).toEqual([ch('NTLM')]);
  });
});

// --- fast-check arbitraries -------------------------------------------------------------------

const TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".split('');
const TOKEN68_CHARS = '-._~+/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'.split('');
const tokenArb = fc.string({ unit: fc.constantFrom(...TCHARS), minLength: 1, maxLength: 12 });
const token68Arb = fc
  .tuple(fc.string({ unit: fc.constantFrom(...TOKEN68_CHARS), minLength: 1, maxLength: 40 }), fc.nat(3))
  .map(([body, pad]) => body + '='.repeat(pad));
// Everything a quoted-string can carry: HTAB, SP, VCHAR (incl. `"` and `\`), obs-text, and other non-ASCII.
const valueCharArb = fc.oneof(
  fc.constantFrom('\t', ' ', '"', '\\', ','),
  fc.integer({ min: 0x21, max: 0x7e }).map((c) => String.fromCharCode(c)),
  fc.integer({ min: 0x80, max: 0xff }).map((c) => String.fromCharCode(c)),
  fc.constantFrom('é', '€', '漢', '😀'),
);
const valueArb = fc.oneof(tokenArb, fc.string({ unit: valueCharArb, maxLength: 30 }));
const paramsArb = fc
  .uniqueArray(
    fc.tuple(
      tokenArb.map((s) => s.toLowerCase()),
      valueArb,
    ),
    { selector: ([k]) => k, maxLength: 6 },
  )
  .map((entries) => Object.fromEntries(entries) as Record<string, string>);
const challengeArb: fc.Arbitrary<Challenge> = fc
  .tuple(tokenArb, fc.oneof(token68Arb, paramsArb))
  .map(([scheme, body]) => ch(scheme, body));

describe('parseChallenges properties', () => {
  const fragment = fc.oneof(
    fc.constantFrom(
      '"',
      '\\',
      ',',
      '=',
      ' ',
      '\t',
      '\r\n',
      'Basic',
      'NTLM',
      'Negotiate',
      'realm',
      '=="',
      '\u0000',
      '😀',
    ),
    tokenArb,
    token68Arb,
  );
  const nastyArb = fc.array(fragment, { maxLength: 60 }).map((a) => a.join(''));
  const anyString = fc.oneof(fc.string({ unit: 'binary', maxLength: 200 }), nastyArb);

  it('T1: never throws on arbitrary strings and arrays, and yields well-formed challenges', () => {
    fc.assert(
      fc.property(fc.oneof(anyString, fc.array(anyString, { maxLength: 6 })), (input) => {
        const out = parseChallenges(input);
        expect(out.length).toBeLessThanOrEqual(32);
        for (const c of out) {
          expect(c.scheme).toMatch(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/);
          expect(c.schemeKey).toBe(c.scheme.toLowerCase());
          for (const k of Object.keys(c.params)) expect(k).toBe(k.toLowerCase());
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('T1: never throws on huge-ish input (beyond and within the size bound)', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', minLength: 10_000, maxLength: 20_000 }), nastyArb, (big, nasty) => {
        parseChallenges(big);
        parseChallenges(nasty.repeat(Math.ceil(15_000 / Math.max(1, nasty.length))).slice(0, 16 * 1024));
      }),
      { numRuns: 30 },
    );
  });

  it('T1: round trip: parse(format(list).join(", ")) deep-equals list', () => {
    fc.assert(
      fc.property(fc.array(challengeArb, { minLength: 1, maxLength: 8 }), (list) => {
        expect(parseChallenges(list.map(formatChallenge).join(', '))).toEqual(list);
        // The same list split over HTTP/1.1 field lines.
        expect(parseChallenges(list.map(formatChallenge))).toEqual(list);
      }),
      { numRuns: 1000 },
    );
  });
});

describe('formatChallenge', () => {
  it('T1: quotes what needs quoting and the Digest parameters RFC 7616 wants quoted', () => {
    expect(formatChallenge(ch('Basic', { realm: 'x', charset: 'UTF-8' }))).toBe('Basic realm="x", charset="UTF-8"');
    expect(formatChallenge(ch('Digest', { realm: 'r', qop: 'auth', algorithm: 'SHA-256', stale: 'true' }))).toBe(
      'Digest realm="r", qop="auth", algorithm=SHA-256, stale=true',
    );
    expect(formatChallenge(ch('X', { a: 'b c', e: '', q: 'a"b\\c' }))).toBe('X a="b c", e="", q="a\\"b\\\\c"');
    expect(formatChallenge(ch('NTLM', NTLM_TYPE2))).toBe(`NTLM ${NTLM_TYPE2}`);
    expect(formatChallenge(ch('Negotiate'))).toBe('Negotiate');
  });

  it('T1: refuses challenges that cannot be a header (no CR/LF injection)', () => {
    const bad: Challenge[] = [
      ch('Ba sic'),
      ch('Basic', { realm: 'x\r\nSet-Cookie: a=b' }),
      ch('Basic', { 're alm': 'x' }),
      ch('NTLM', 'abc def'),
      ch('NTLM', '=abc'),
      { ...ch('NTLM', 'abc'), params: { a: 'b' } },
    ];
    for (const c of bad) {
      expect(() => formatChallenge(c)).toThrow(MultilegError);
    }
    try {
      formatChallenge(ch('Basic', { realm: 'secret\n' }));
    } catch (e) {
      expect((e as MultilegError).code).toBe('MULTILEG_INVALID_CHALLENGE');
      expect((e as Error).message).not.toContain('secret');
    }
  });
});

describe('chooseChallenge', () => {
  const offered = parseChallenges(
    'Basic realm="b", Digest realm="d", algorithm=MD5, nonce="1", NTLM, Negotiate, Transport mode="tls-client-certificate"',
  );
  const [basic, digest, ntlm, negotiate, transport] = offered;

  it('T2: default order Negotiate > NTLM > Digest > Basic', () => {
    expect(DEFAULT_SCHEME_ORDER).toEqual(['Negotiate', 'NTLM', 'Digest', 'Basic']);
    expect(chooseChallenge(offered, ['Basic', 'Digest', 'NTLM', 'Negotiate'])).toBe(negotiate);
    expect(chooseChallenge(offered, ['Basic', 'Digest', 'NTLM'])).toBe(ntlm);
    expect(chooseChallenge(offered, ['basic', 'DIGEST'])).toBe(digest);
    expect(chooseChallenge(offered, ['Basic'])).toBe(basic);
    expect(chooseChallenge(offered, [])).toBeUndefined();
    expect(chooseChallenge([], ['Basic'])).toBeUndefined();
    expect(chooseChallenge(parseChallenges('Bearer realm="x"'), ['Basic', 'Bearer'])).toBeUndefined();
  });

  it('T2: Transport is chosen only when the order ranks it', () => {
    const all = ['Negotiate', 'NTLM', 'Digest', 'Basic', 'Transport'];
    expect(chooseChallenge(offered, ['Transport'])).toBeUndefined();
    expect(chooseChallenge(offered, all, ['Transport', ...DEFAULT_SCHEME_ORDER])).toBe(transport);
    expect(chooseChallenge(offered, all, ['NTLM', 'Transport'])).toBe(ntlm);
    expect(chooseChallenge(offered, ['Basic', 'Transport'], ['NTLM', 'Transport', 'Basic'])).toBe(transport);
  });

  it('T2: a custom order wins over the default', () => {
    expect(chooseChallenge(offered, ['Basic', 'Negotiate'], ['basic', 'negotiate'])).toBe(basic);
  });

  it('T2: several Digest challenges: SHA-512-256 > SHA-256 > MD5, with or without -sess', () => {
    const d = parseChallenges([
      'Digest realm="a", algorithm=MD5, nonce="1"',
      'Digest realm="a", algorithm=SHA-256-sess, nonce="2", qop="auth"',
      'Digest realm="a", nonce="3"',
      'Digest realm="a", algorithm=sha-512-256, nonce="4"',
      'Digest realm="a", algorithm=SHA-256, nonce="5"',
      'Basic realm="a"',
    ]);
    expect(chooseChallenge(d, ['Digest', 'Basic'])?.params.nonce).toBe('4');
    expect(chooseChallenge(d.slice(0, 3), ['Digest'])?.params.nonce).toBe('2');
    // Equal strength: first sent wins (server order).
    expect(chooseChallenge([d[4]!, d[1]!], ['Digest'])?.params.nonce).toBe('5');
    // No algorithm means MD5.
    expect(chooseChallenge([d[2]!, d[0]!], ['Digest'])?.params.nonce).toBe('3');
    // One that can be answered wins over a stronger one that cannot (-sess without qop, no nonce,
    // qop=auth-int only); with none answerable, the strongest is still chosen (its error says why).
    const unanswerable = parseChallenges([
      'Digest realm="a", algorithm=SHA-512-256-sess, nonce="6"',
      'Digest realm="a", algorithm=SHA-512-256, qop="auth"',
      'Digest realm="a", algorithm=SHA-256, nonce="7", qop="auth-int"',
      'Digest realm="a", algorithm=SHA-512-256, nonce="", qop="auth"',
      // Bounds the mechanism applies to what it echoes (S3): the chooser reads the challenge as it does.
      `Digest realm="a", algorithm=SHA-512-256, nonce="8", qop="auth", opaque="${'x'.repeat(MAX_DIGEST_PARAM_LENGTH + 1)}"`,
    ]);
    expect(chooseChallenge([...unanswerable, d[0]!], ['Digest'])?.params.nonce).toBe('1');
    expect(chooseChallenge(unanswerable, ['Digest'])?.params.algorithm).toBe('SHA-512-256-sess');
  });

  it('T2: Digest with an unknown algorithm is never chosen; the next scheme is', () => {
    const d = parseChallenges('Digest realm="a", algorithm=SHA3-512, nonce="1", Basic realm="a"');
    expect(chooseChallenge(d, ['Digest', 'Basic'])?.scheme).toBe('Basic');
    expect(chooseChallenge(d, ['Digest'])).toBeUndefined();
    expect(digestAlgorithmStrength(undefined)).toBe(1);
    expect(digestAlgorithmStrength('MD5-sess')).toBe(1);
    expect(digestAlgorithmStrength('SHA-256')).toBe(2);
    expect(digestAlgorithmStrength('SHA-512-256-SESS')).toBe(3);
    expect(digestAlgorithmStrength('SHA-512')).toBe(-1);
  });

  it('T2: property: returns an offered, available challenge, best by order then Digest strength', () => {
    const schemes = ['Negotiate', 'NTLM', 'Digest', 'Basic', 'Transport', 'Bearer'];
    const algs = ['MD5', 'MD5-sess', 'SHA-256', 'SHA-256-sess', 'SHA-512-256', 'sha-512-256-sess', 'SHA3', undefined];
    const caseArb = (s: string) => fc.constantFrom(s, s.toLowerCase(), s.toUpperCase());
    const offeredArb = fc.array(
      fc
        .tuple(fc.constantFrom(...schemes).chain(caseArb), fc.constantFrom(...algs))
        .map(([scheme, alg]) =>
          ch(scheme, scheme.toLowerCase() === 'digest' && alg !== undefined ? { algorithm: alg } : {}),
        ),
      { maxLength: 8 },
    );
    const namesArb = fc.subarray(schemes).chain((a) => fc.shuffledSubarray(a.map((s) => s.toLowerCase())));
    fc.assert(
      fc.property(
        offeredArb,
        namesArb,
        fc.option(fc.shuffledSubarray(schemes), { nil: undefined }),
        (cs, avail, order) => {
          const ord = (order ?? DEFAULT_SCHEME_ORDER).map((s) => s.toLowerCase());
          const strength = (c: Challenge) =>
            c.schemeKey === 'digest' ? digestAlgorithmStrength(c.params.algorithm) : 0;
          const eligible = cs.filter(
            (c) => ord.includes(c.schemeKey) && avail.includes(c.schemeKey) && strength(c) >= 0,
          );
          const got = chooseChallenge(cs, avail, order);
          if (eligible.length === 0) {
            expect(got).toBeUndefined();
            return;
          }
          expect(got).toBeDefined();
          expect(cs).toContain(got);
          expect(eligible).toContain(got);
          const r = ord.indexOf(got!.schemeKey);
          for (const c of eligible) {
            const rc = ord.indexOf(c.schemeKey);
            expect(rc).toBeGreaterThanOrEqual(r);
            if (rc === r) expect(strength(c)).toBeLessThanOrEqual(strength(got!));
          }
        },
      ),
      { numRuns: 1000 },
    );
  });
});

describe('multilegged-auth response headers', () => {
  it('C4: Persistent-Auth true / empty / case variants mean the session is authenticated', () => {
    expect(readPersistentAuth({ 'persistent-auth': 'true' })).toBe(true);
    expect(readPersistentAuth({ 'persistent-auth': 'TRUE' })).toBe(true);
    expect(readPersistentAuth({ 'persistent-auth': ' True\t' })).toBe(true);
    expect(readPersistentAuth({ 'persistent-auth': '' })).toBe(true);
    expect(readPersistentAuth({ 'Persistent-auth': 'true' })).toBe(true);
    expect(readPersistentAuth({ 'Persistent-Auth': 'true' })).toBe(true);
    expect(readPersistentAuth({ 'persisted-auth': 'true' })).toBe(true);
    expect(readPersistentAuth({ 'Persisted-Auth': '' })).toBe(true);
    // HTTP/2 joins repeats; HTTP/1.1 gives an array.
    expect(readPersistentAuth({ 'persistent-auth': 'true, true' })).toBe(true);
    expect(readPersistentAuth({ 'persistent-auth': ['true', 'TRUE'] })).toBe(true);
  });

  it('C4: Persistent-Auth false, absent or unknown means not authenticated', () => {
    expect(readPersistentAuth({ 'persistent-auth': 'false' })).toBe(false);
    expect(readPersistentAuth({ 'persistent-auth': 'FALSE' })).toBe(false);
    expect(readPersistentAuth({})).toBe(false);
    expect(readPersistentAuth(undefined)).toBe(false);
    expect(readPersistentAuth({ 'persistent-auth': undefined })).toBe(false);
    expect(readPersistentAuth({ 'persistent-auth': [] })).toBe(false);
    expect(readPersistentAuth({ 'persistent-auth': 'yes' })).toBe(false);
    expect(readPersistentAuth({ 'persistent-auth': '"true"' })).toBe(false);
    expect(readPersistentAuth({ 'persistent-auth': '1' })).toBe(false);
    expect(readPersistentAuth({ persistentauth: 'true' })).toBe(false);
    // Disagreement counts as false.
    expect(readPersistentAuth({ 'persistent-auth': 'true, false' })).toBe(false);
    expect(readPersistentAuth({ 'persistent-auth': ['true', 'false'] })).toBe(false);
    expect(readPersistentAuth({ 'persistent-auth': 'true', 'persisted-auth': 'false' })).toBe(false);
  });

  it('C3: Auth-ID is returned byte for byte', () => {
    for (const v of ['abc', 'a b  c', '"quoted"', 'QUJD+/=/==', " x\ty'\\ ", 'caf\u00e9\u00ff', '']) {
      expect(readAuthId({ 'auth-id': v })).toEqual({ ok: true, value: v });
    }
    expect(readAuthId({ 'Auth-ID': 'Mixed' })).toEqual({ ok: true, value: 'Mixed' });
    expect(readAuthId({ 'auth-id': ['first', 'second'] })).toEqual({ ok: true, value: 'first' });
    expect(readAuthId({})).toBeUndefined();
    expect(readAuthId(undefined)).toBeUndefined();
    expect(readAuthId({ 'auth-id': [] })).toBeUndefined();
  });

  it('S3: Auth-ID over 1024 characters (configurable) is reported as too long', () => {
    expect(readAuthId({ 'auth-id': 'a'.repeat(1024) })).toEqual({ ok: true, value: 'a'.repeat(1024) });
    expect(readAuthId({ 'auth-id': 'a'.repeat(1025) })).toEqual({ ok: false, reason: 'too-long' });
    expect(readAuthId({ 'auth-id': 'abcd' }, 3)).toEqual({ ok: false, reason: 'too-long' });
  });

  it('H4: Proxy-support: Session-Based-Authentication', () => {
    expect(readProxySupport({ 'proxy-support': 'Session-Based-Authentication' })).toBe(true);
    expect(readProxySupport({ 'proxy-support': 'session-based-authentication' })).toBe(true);
    expect(readProxySupport({ 'Proxy-Support': 'Session-Based-Authentication' })).toBe(true);
    expect(readProxySupport({ 'proxy-support': 'foo, Session-Based-Authentication ,bar' })).toBe(true);
    expect(readProxySupport({ 'proxy-support': ['foo', 'Session-Based-Authentication'] })).toBe(true);
    expect(readProxySupport({ 'proxy-support': 'Session-Based-Authentication-Not' })).toBe(false);
    expect(readProxySupport({ 'proxy-support': 'foo' })).toBe(false);
    expect(readProxySupport({})).toBe(false);
    expect(readProxySupport(undefined)).toBe(false);
  });

  it('H3: Remote-http-version', () => {
    expect(readRemoteHttpVersion({ 'remote-http-version': '1.1' })).toBe('1.1');
    expect(readRemoteHttpVersion({ 'Remote-Http-Version': ' 2 ' })).toBe('2');
    expect(readRemoteHttpVersion({ 'remote-http-version': ['1.1', '2'] })).toBe('1.1');
    expect(readRemoteHttpVersion({ 'remote-http-version': '' })).toBeUndefined();
    expect(readRemoteHttpVersion({})).toBeUndefined();
  });

  it('S3: Remote-http-version and flag headers are length-bounded', () => {
    expect(readRemoteHttpVersion({ 'remote-http-version': '1'.repeat(65) })).toBeUndefined();
    expect(readRemoteHttpVersion({ 'remote-http-version': '1'.repeat(64) })).toBe('1'.repeat(64));
    expect(readPersistentAuth({ 'persistent-auth': ` ${'true,'.repeat(300)}` })).toBe(false);
    expect(readProxySupport({ 'proxy-support': `${'x,'.repeat(600)}Session-Based-Authentication` })).toBe(false);
  });

  it("M3: Authentication-Info and Proxy-Authentication-Info are read as auth-params (Apache's, Squid's)", () => {
    const apache = 'rspauth="62f1c7781ab0061707068d5f6ca5e9cb", cnonce="30da768e", nc=00000001, qop=auth';
    expect(readAuthenticationInfo({ 'authentication-info': apache })).toEqual({
      rspauth: '62f1c7781ab0061707068d5f6ca5e9cb',
      cnonce: '30da768e',
      nc: '00000001',
      qop: 'auth',
    });
    expect(readAuthenticationInfo({ 'Authentication-Info': 'NextNonce="a\\"b"' })).toEqual({ nextnonce: 'a"b' });
    expect(readAuthenticationInfo({ 'proxy-authentication-info': 'nextnonce="n"' }, true)).toEqual({ nextnonce: 'n' });
    expect(readAuthenticationInfo({ 'proxy-authentication-info': 'nextnonce="n"' })).toBeUndefined();
    expect(readAuthenticationInfo({ 'authentication-info': 'nextnonce="n"' }, true)).toBeUndefined();
    expect(readAuthenticationInfo({})).toBeUndefined();
    expect(readAuthenticationInfo(undefined)).toBeUndefined();
    // Field lines (HTTP/1.1 arrays) together, empty list elements skipped; of duplicates the first wins.
    expect(parseAuthParams(['rspauth="x", ,', ' nextnonce=y, rspauth="z"'])).toEqual({ rspauth: 'x', nextnonce: 'y' });
    expect(parseAuthParams('')).toEqual({});
    expect(Object.isFrozen(parseAuthParams('a=b'))).toBe(true);
  });

  it('S3: a malformed or oversized Authentication-Info says nothing (undefined), never throws', () => {
    for (const bad of [
      'rspauth',
      'rspauth=',
      'rspauth="unterminated',
      'Digest rspauth="x"',
      'rspauth="x" nextnonce="y"',
      'rspauth="x", garbage',
      'a="\u0001"',
      ['nextnonce="ok"', 'broken='],
    ]) {
      expect(parseAuthParams(bad), JSON.stringify(bad)).toBeUndefined();
    }
    expect(parseAuthParams(`nextnonce="${'n'.repeat(16 * 1024)}"`)).toBeUndefined();
    expect(parseAuthParams('a=b', { maxBytes: 2 })).toBeUndefined();
    // Never throws on arbitrary input.
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.array(fc.string())), (header) => {
        const params = parseAuthParams(header);
        expect(params === undefined || typeof params === 'object').toBe(true);
      }),
    );
  });
});
