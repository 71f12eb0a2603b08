import { describe, expect, it } from 'vitest';
import { InvalidTokenError } from '../src/errors.ts';
import { md4 } from '../src/mechanisms/ntlm/md4.ts';
import {
  AV_FLAG_MIC_PRESENT,
  AvId,
  decodeAvPairs,
  decodeChallenge,
  encodeAvPairs,
  encodeNegotiate,
  NegotiateFlags,
} from '../src/mechanisms/ntlm/messages.ts';
import {
  CLIENT_FLAGS,
  channelBindingsValue,
  clientAvPairs,
  createAuthenticate,
  gssChannelBindingsHash,
  lmv2Response,
  ntHash,
  ntlmv2ClientBlob,
  ntowfv2,
  ntProofStr,
  sessionBaseKey,
} from '../src/mechanisms/ntlm/ntlmv2.ts';
import { rc4 } from '../src/mechanisms/ntlm/rc4.ts';
import { pooledRandom } from '../src/mechanisms/random.ts';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('MD4 (RFC 1320)', () => {
  // RFC 1320 appendix A.5 test suite.
  const vectors: [string, string][] = [
    ['', '31d6cfe0d16ae931b73c59d7e0c089c0'],
    ['a', 'bde52cb31de33e46245e05fbdbd6fb24'],
    ['abc', 'a448017aaf21d8525fc10ae87aa6729d'],
    ['message digest', 'd9130a8164549fe818874806e1c7014b'],
    ['abcdefghijklmnopqrstuvwxyz', 'd79e1c308aa5bbcdeea8ed63df412da9'],
    ['ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789', '043f8582f241db351ce627e153e7f0e4'],
    [
      '12345678901234567890123456789012345678901234567890123456789012345678901234567890',
      'e33b4ddc9c38f2199c3e7b164fcc0536',
    ],
  ];
  for (const [input, digest] of vectors) {
    it(`M1: MD4(${JSON.stringify(input.length > 16 ? `${input.slice(0, 16)}…` : input)}) matches RFC 1320 A.5`, () => {
      expect(md4(Buffer.from(input, 'latin1')).toString('hex')).toBe(digest);
    });
  }

  it('M1: MD4 handles the 55/56/64-byte padding boundaries consistently', () => {
    // 55 bytes fits one block with padding, 56 needs two; all must differ and be 16 bytes.
    const seen = new Set<string>();
    for (const n of [55, 56, 63, 64, 65, 119, 120]) {
      const d = md4(Buffer.alloc(n, 0x61));
      expect(d.length).toBe(16);
      seen.add(d.toString('hex'));
    }
    expect(seen.size).toBe(7);
  });

  it('M1: NT hash of "Password" matches MS-NLMP 4.2.2.1.2 (NTOWFv1)', () => {
    expect(ntHash('Password').toString('hex')).toBe('a4f49c406510bdcab6824ee7c30fd852');
  });
});

describe('RC4', () => {
  it('M1: RC4 matches the classic test vectors', () => {
    expect(rc4(Buffer.from('Key'), Buffer.from('Plaintext')).toString('hex')).toBe('bbf316e8d940af0ad3');
    expect(rc4(Buffer.from('Wiki'), Buffer.from('pedia')).toString('hex')).toBe('1021bf0420');
    expect(rc4(Buffer.from('Secret'), Buffer.from('Attack at dawn')).toString('hex')).toBe(
      '45a01f645fc35b383552544b9bf5',
    );
  });

  it('M1: RC4 decrypts what it encrypts', () => {
    const key = Buffer.from('0123456789abcdef');
    const data = Buffer.from('the quick brown fox');
    expect(rc4(key, rc4(key, data))).toEqual(data);
  });
});

describe('NTLMv2 (MS-NLMP 4.2.4 test vectors)', () => {
  const user = 'User';
  const domain = 'Domain';
  const password = 'Password';
  const serverChallenge = hex('0123456789abcdef');
  const clientChallenge = hex('aaaaaaaaaaaaaaaa');
  const randomSessionKey = Buffer.alloc(16, 0x55);
  // MS-NLMP 4.2.4: AV pairs MsvAvNbDomainName "Domain", MsvAvNbComputerName "Server", MsvAvEOL.
  const targetInfo = hex('02000c0044006f006d00610069006e00' + '01000c00530065007200760065007200' + '00000000');
  // MS-NLMP 4.2.4.3 CHALLENGE_MESSAGE.
  const challengeMsg = hex(
    '4e544c4d53535000020000000c000c003800000033828ae20123456789abcdef00000000000000002400240044000000' +
      '060070170000000f53006500720076006500720002000c0044006f006d00610069006e0001000c00530065007200' +
      '76006500720000000000',
  );

  it('M1: NTOWFv2 matches MS-NLMP 4.2.4.1.1', () => {
    expect(ntowfv2(password, user, domain).toString('hex')).toBe('0c868a403bfd7a93a3001ef22ef02e3f');
  });

  it("M1: NTOWFv2 upper-cases the user name like Windows (one to one): 'Straße' hashes as STRAßE, not STRASSE", () => {
    // MS-NLMP 3.3.2: HMAC_MD5(MD4(UNICODE(Passwd)), UNICODE(ConcatenationOf(Uppercase(User), UserDom))),
    // where Windows upper-cases each UTF-16 unit alone (RtlUpcaseUnicodeChar: U+00DF has no one-unit
    // upper case and stays), unlike JavaScript's toUpperCase ('ß' → 'SS'). Both values below were
    // computed outside this project, with js-md4 and node:crypto's HMAC-MD5 (that pair gives
    // 0c868a403bfd7a93a3001ef22ef02e3f for the 4.2.4.1.1 inputs above).
    expect(ntowfv2(password, 'Straße', domain).toString('hex')).toBe('d63cd23eda76b551cec5780aa8f94b13');
    expect(ntowfv2(password, 'Straße', domain).toString('hex')).not.toBe('e5884fad08419885f172f1f526fbf7db');
  });

  it('M1: LMv2 response matches MS-NLMP 4.2.4.2.1', () => {
    const key = ntowfv2(password, user, domain);
    expect(lmv2Response(key, serverChallenge, clientChallenge).toString('hex')).toBe(
      '86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa',
    );
  });

  it('M1: NTProofStr, session base key and encrypted session key match MS-NLMP 4.2.4', () => {
    const key = ntowfv2(password, user, domain);
    const blob = ntlmv2ClientBlob(0n, clientChallenge, targetInfo);
    const proof = ntProofStr(key, serverChallenge, blob);
    expect(proof.toString('hex')).toBe('68cd0ab851e51c96aabc927bebef6a1c');
    const base = sessionBaseKey(key, proof);
    expect(base.toString('hex')).toBe('8de40ccadbc14a82f15cb0ad0de95ca3');
    // NTLMv2: KeyExchangeKey = SessionBaseKey; KEY_EXCH sends RC4(KXKEY, ExportedSessionKey).
    expect(rc4(base, randomSessionKey).toString('hex')).toBe('c5dad2544fc9799094ce1ce90bc9d03e');
  });

  it('M1: decodes the MS-NLMP 4.2.4.3 CHALLENGE message', () => {
    const c = decodeChallenge(challengeMsg);
    expect(c.flags >>> 0).toBe(0xe28a8233);
    expect(c.serverChallenge).toEqual(serverChallenge);
    expect(c.targetName).toBe('Server');
    expect(c.targetInfo).toEqual(targetInfo);
    expect(c.avPairs.map((p) => [p.id, p.value.toString('utf16le')])).toEqual([
      [AvId.NbDomainName, 'Domain'],
      [AvId.NbComputerName, 'Server'],
    ]);
    expect(c.version?.toString('hex')).toBe('060070170000000f');
    expect(encodeAvPairs(c.avPairs)).toEqual(targetInfo);
  });

  it('M1: channel bindings hash matches the Microsoft EPA example (tls-server-end-point)', () => {
    const certHash = hex('ea05fefecc6b0bd571dbbc5baa3ed45386d0446835f7b74c85621b9983475f95');
    const appData = Buffer.concat([Buffer.from('tls-server-end-point:'), certHash]);
    expect(gssChannelBindingsHash(appData).toString('hex')).toBe('6586e99d81c2fc984e47172fd4dd0310');
    expect(channelBindingsValue(certHash).toString('hex')).toBe('6586e99d81c2fc984e47172fd4dd0310');
    expect(channelBindingsValue(undefined)).toEqual(Buffer.alloc(16));
  });

  it('M1: full AUTHENTICATE with MIC, channel bindings and SPN matches the Chromium MS-NLMP vector', () => {
    // Chromium net/ntlm test data: 32-byte NEGOTIATE with flags 0x00088207, the 4.2.4.3 CHALLENGE,
    // client timestamp 131400439870000000, EPA binding above and SPN HTTP/Server, no KEY_EXCH.
    const negotiate = hex('4e544c4d53535000010000000782080000000000200000000000000020000000');
    const expected = hex(
      '4e544c4d535350000300000018001800580000008a008a00700000000c000c00fa00000008000800060100001000' +
        '10000e0100000000000058000000038208000000000000000000f7361633f0ad9bdf4a7c421bc6b824a300000000' +
        '00000000000000000000000000000000000000008c0260dbef690662af9c42d50782d2ed0101000000000000800b' +
        'c8fd00d4d201aaaaaaaaaaaaaaaa0000000002000c0044006f006d00610069006e0001000c005300650072007600' +
        '6500720006000400020000000a0010006586e99d81c2fc984e47172fd4dd031009001600480054005400500' +
        '02f00530065007200760065007200000000000000000044006f006d00610069006e005500730065007200430' +
        '04f004d0050005500540045005200',
    );
    const out = createAuthenticate({
      user,
      domain,
      password,
      workstation: 'COMPUTER',
      negotiateMessage: negotiate,
      challengeMessage: challengeMsg,
      challenge: decodeChallenge(challengeMsg),
      clientFlags: 0x00088207,
      channelBinding: hex('ea05fefecc6b0bd571dbbc5baa3ed45386d0446835f7b74c85621b9983475f95'),
      targetName: 'HTTP/Server',
      clientChallenge,
      timestamp: 131400439870000000n,
      // Chromium always sends Z(24) as the LM response.
      zeroLmResponse: true,
    });
    expect(out.flags).toBe(0x00088203);
    expect(out.message.toString('hex')).toBe(expected.toString('hex'));
  });

  it("M1: the client's target info keeps the server's MsvAvFlags bits with MIC present added, and replaces its channel bindings and target name rather than repeating them", () => {
    const flags = Buffer.alloc(4);
    flags.writeUInt32LE(0x1, 0); // account authentication is constrained (MS-NLMP 2.2.2.1)
    const server = [
      { id: AvId.NbDomainName, value: Buffer.from('DOMAIN', 'utf16le') },
      { id: AvId.Flags, value: flags },
      { id: AvId.ChannelBindings, value: Buffer.alloc(16, 7) },
      { id: AvId.TargetName, value: Buffer.from('cifs/elsewhere', 'utf16le') },
    ];
    const bindings = Buffer.alloc(16, 9);
    const out = clientAvPairs(server, bindings, 'HTTP/host.example');
    expect(out.map((p) => p.id)).toEqual([AvId.NbDomainName, AvId.Flags, AvId.ChannelBindings, AvId.TargetName]);
    expect(out[1]!.value.readUInt32LE(0)).toBe(0x1 | AV_FLAG_MIC_PRESENT);
    expect(out[2]!.value).toEqual(bindings);
    expect(out[3]!.value.toString('utf16le')).toBe('HTTP/host.example');
  });

  it('M1: uses the server timestamp and sends a zero LMv2 response when the server sends one', () => {
    const ts = Buffer.alloc(8);
    ts.writeBigUInt64LE(0x01d2d400fdc80b80n, 0);
    const c = decodeChallenge(challengeMsg);
    const challenge = { ...c, avPairs: [...c.avPairs, { id: AvId.Timestamp, value: ts }] };
    const out = createAuthenticate({
      user,
      domain,
      password,
      workstation: '',
      negotiateMessage: encodeNegotiate(CLIENT_FLAGS),
      challengeMessage: challengeMsg,
      challenge,
      clientFlags: CLIENT_FLAGS,
      clientChallenge,
      exportedSessionKey: randomSessionKey,
      timestamp: 42n,
    });
    const lmLen = out.message.readUInt16LE(12);
    const lmOff = out.message.readUInt32LE(16);
    expect(out.message.subarray(lmOff, lmOff + lmLen)).toEqual(Buffer.alloc(24));
    const ntOff = out.message.readUInt32LE(24);
    expect(out.message.readBigUInt64LE(ntOff + 16 + 8)).toBe(0x01d2d400fdc80b80n);
    // KEY_EXCH was negotiated (the 4.2.4.3 server offers it): RC4-encrypted exported key is sent.
    expect(out.flags & NegotiateFlags.KEY_EXCH).not.toBe(0);
    expect(out.message.readUInt16LE(52)).toBe(16);
    expect(out.exportedSessionKey).toEqual(randomSessionKey);
  });
});

describe('pooled random bytes', () => {
  it('M1: client challenges and session keys come from a CSPRNG pool: no bytes handed out twice, any length served', () => {
    // 600 draws of 8 bytes cross a refill of the 4 KiB pool.
    const draws = Array.from({ length: 600 }, () => pooledRandom(8).toString('hex'));
    expect(new Set(draws).size).toBe(draws.length);
    const big = pooledRandom(5000);
    expect(big.length).toBe(5000);
    expect(big.some((b) => b !== 0)).toBe(true);
  });
});

describe('NTLM messages', () => {
  it("M1: a CHALLENGE's fields the client does not use are not held against it: a TargetName pointing past the end, and payload where TargetInfo would be without NEGOTIATE_TARGET_INFO (an old 40-byte header, Squid's ntlm_fake_auth)", () => {
    const fake = Buffer.from('TlRMTVNTUAACAAAACQAJAK6qqqoHggiiYYBIPXlGqlwAAAAAAAA6AFdPUktHUk9VUA==', 'base64');
    // Before: InvalidTokenError for both.
    const c = decodeChallenge(fake);
    expect(c.serverChallenge.toString('hex')).toBe('6180483d7946aa5c');
    expect([c.targetName, c.targetInfo.length, c.avPairs]).toEqual(['', 0, []]);
    // With NEGOTIATE_TARGET_INFO set, the same bytes are a TargetInfo field out of bounds: refused.
    const flagged = Buffer.from(fake);
    flagged.writeUInt32LE((fake.readUInt32LE(20) | NegotiateFlags.TARGET_INFO) >>> 0, 20);
    expect(() => decodeChallenge(flagged)).toThrow(InvalidTokenError);
  });

  it('M1: NEGOTIATE is the 40-byte form with the Version field', () => {
    const m = encodeNegotiate(CLIENT_FLAGS);
    expect(m.length).toBe(40);
    expect(m.subarray(0, 8).toString('latin1')).toBe('NTLMSSP\0');
    expect(m.readUInt32LE(8)).toBe(1);
    const flags = m.readUInt32LE(12);
    for (const f of [
      NegotiateFlags.UNICODE,
      NegotiateFlags.REQUEST_TARGET,
      NegotiateFlags.NTLM,
      NegotiateFlags.ALWAYS_SIGN,
      NegotiateFlags.EXTENDED_SESSIONSECURITY,
      NegotiateFlags.TARGET_INFO,
      NegotiateFlags.VERSION,
      NegotiateFlags.NEGOTIATE_128,
      NegotiateFlags.KEY_EXCH,
      NegotiateFlags.NEGOTIATE_56,
    ]) {
      expect((flags & f) >>> 0).toBe(f >>> 0);
    }
    // Version: major 10, NTLMSSP revision 15.
    expect(m[32]).toBe(10);
    expect(m[39]).toBe(0x0f);
  });

  it('S3: AV pair lists must be terminated and in bounds', () => {
    expect(() => decodeAvPairs(hex('0200'))).toThrow(/invalid/);
    expect(() => decodeAvPairs(hex('02000c0044006f00'))).toThrow(/invalid/);
    expect(() => decodeAvPairs(hex('02000000'))).toThrow(/invalid/);
    expect(decodeAvPairs(hex('00000000'))).toEqual([]);
  });
});
