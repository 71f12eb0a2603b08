/**
 * Server-side NTLMv2 acceptor for the reference test server. One instance per connection: it
 * answers NEGOTIATE with a CHALLENGE, then verifies the AUTHENTICATE for real (NTProofStr from the
 * user table, MIC, channel bindings). Rejection reasons never contain secrets.
 */
import { timingSafeEqual } from 'node:crypto';
import { pooledRandom } from '../random.ts';
import {
  AV_FLAG_MIC_PRESENT,
  AvId,
  type AvPair,
  decodeAuthenticate,
  decodeAvPairs,
  decodeNegotiate,
  encodeChallenge,
  MIC_OFFSET,
  NegotiateFlags,
} from './messages.ts';
import {
  channelBindingsValue,
  computeMic,
  filetimeNow,
  ntHash,
  ntowfv2FromHash,
  ntProofStr,
  sessionBaseKey,
} from './ntlmv2.ts';
import { rc4 } from './rc4.ts';

/** Options for {@link NtlmAcceptor}. */
export interface NtlmAcceptorOptions {
  /** `'DOMAIN\\user'` or `'user'` (any domain we serve) → password. User names match case-insensitively. */
  readonly users: Readonly<Record<string, string>>;
  /** NetBIOS domain name, e.g. `EXAMPLE`. */
  readonly domain: string;
  /** DNS domain name (default: `domain` lower-cased). Also accepted as the client's domain. */
  readonly dnsDomain?: string;
  /** NetBIOS computer name (default `MULTILEG`). */
  readonly computerName?: string;
  /** Expected `tls-server-end-point` certificate hash; undefined = bindings are not checked. */
  readonly channelBinding?: Buffer;
  /** Current time as FILETIME (100 ns since 1601), for the challenge's MsvAvTimestamp. */
  readonly now?: () => bigint;
  /** Test hook: source of the 8-byte server challenge. */
  readonly randomBytes?: (n: number) => Buffer;
}

/** Outcome of one {@link NtlmAcceptor.step}. */
export type NtlmAcceptorResult =
  | { readonly kind: 'challenge'; readonly token: Buffer }
  | { readonly kind: 'accepted'; readonly user: string }
  | { readonly kind: 'rejected'; readonly reason: string };

/** Flags the acceptor may grant when the client asks for them. */
const SUPPORTED_FLAGS =
  NegotiateFlags.UNICODE |
  NegotiateFlags.REQUEST_TARGET |
  NegotiateFlags.SIGN |
  NegotiateFlags.SEAL |
  NegotiateFlags.NTLM |
  NegotiateFlags.ALWAYS_SIGN |
  NegotiateFlags.EXTENDED_SESSIONSECURITY |
  NegotiateFlags.TARGET_INFO |
  NegotiateFlags.VERSION |
  NegotiateFlags.NEGOTIATE_128 |
  NegotiateFlags.KEY_EXCH |
  NegotiateFlags.NEGOTIATE_56;

/** The Version we advertise in CHALLENGE (informational only). */
const SERVER_VERSION = Buffer.from([10, 0, 0, 0, 0, 0, 0, 0x0f]);

function utf16(s: string): Buffer {
  return Buffer.from(s, 'utf16le');
}

/**
 * NT hashes of the few passwords a test server knows: an acceptor lives for one handshake, and in
 * per-request mode an MD4 per request was a share of the server's time. Bounded.
 */
const ntHashes = new Map<string, Buffer>();
function ntHashOf(password: string): Buffer {
  let hash = ntHashes.get(password);
  if (hash === undefined) {
    hash = ntHash(password);
    if (ntHashes.size < 64) ntHashes.set(password, hash);
  }
  return hash;
}

function equal(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

interface Pending {
  readonly negotiate: Buffer;
  readonly challenge: Buffer;
  readonly serverChallenge: Buffer;
  readonly flags: number;
}

/** A server-side NTLMv2 acceptor; see the module comment. */
export class NtlmAcceptor {
  readonly #opts: NtlmAcceptorOptions;
  readonly #dnsDomain: string;
  #pending: Pending | undefined;

  constructor(opts: NtlmAcceptorOptions) {
    this.#opts = opts;
    this.#dnsDomain = opts.dnsDomain ?? opts.domain.toLowerCase();
  }

  /** Consumes one client token (NEGOTIATE or AUTHENTICATE). Never throws on bad input. */
  step(token: Buffer): NtlmAcceptorResult {
    if (token.length < 12) return { kind: 'rejected', reason: 'malformed NTLM message' };
    const type = token.readUInt32LE(8);
    try {
      if (type === 1) return this.#challenge(token);
      if (type === 3) return this.#verify(token);
    } catch {
      this.#pending = undefined;
      return { kind: 'rejected', reason: 'malformed NTLM message' };
    }
    return { kind: 'rejected', reason: 'unexpected NTLM message type' };
  }

  #challenge(token: Buffer): NtlmAcceptorResult {
    const neg = decodeNegotiate(token);
    // Unicode when offered (else OEM); NTLM, target info and a domain target are always ours.
    let flags = neg.flags & SUPPORTED_FLAGS;
    if ((flags & NegotiateFlags.UNICODE) === 0) flags |= NegotiateFlags.OEM;
    flags |= NegotiateFlags.NTLM | NegotiateFlags.TARGET_INFO | NegotiateFlags.TARGET_TYPE_DOMAIN;
    flags >>>= 0;
    const serverChallenge = (this.#opts.randomBytes ?? pooledRandom)(8);
    const time = Buffer.alloc(8);
    time.writeBigUInt64LE((this.#opts.now ?? filetimeNow)(), 0);
    const computer = this.#opts.computerName ?? 'MULTILEG';
    const avPairs: AvPair[] = [
      { id: AvId.NbDomainName, value: utf16(this.#opts.domain.toUpperCase()) },
      { id: AvId.NbComputerName, value: utf16(computer.toUpperCase()) },
      { id: AvId.DnsDomainName, value: utf16(this.#dnsDomain) },
      { id: AvId.DnsComputerName, value: utf16(`${computer.toLowerCase()}.${this.#dnsDomain}`) },
      { id: AvId.Timestamp, value: time },
    ];
    const challenge = encodeChallenge({
      flags,
      serverChallenge,
      targetName: this.#opts.domain.toUpperCase(),
      avPairs,
      version: SERVER_VERSION,
    });
    this.#pending = { negotiate: Buffer.from(token), challenge, serverChallenge, flags };
    return { kind: 'challenge', token: challenge };
  }

  #lookup(user: string, domain: string): { name: string; password: string } | undefined {
    const u = user.toLowerCase();
    const d = domain.toLowerCase();
    const ours = d === '' || d === this.#opts.domain.toLowerCase() || d === this.#dnsDomain.toLowerCase();
    for (const [key, password] of Object.entries(this.#opts.users)) {
      const bs = key.indexOf('\\');
      const kd = bs >= 0 ? key.slice(0, bs) : undefined;
      const ku = bs >= 0 ? key.slice(bs + 1) : key;
      if (ku.toLowerCase() !== u) continue;
      // A key without a domain, or with our NetBIOS domain, matches any of our domain names.
      const keyIsOurs = kd === undefined || kd.toLowerCase() === this.#opts.domain.toLowerCase();
      if (keyIsOurs ? ours : kd.toLowerCase() === d) {
        return { name: `${kd ?? this.#opts.domain}\\${ku}`, password };
      }
    }
    return undefined;
  }

  #verify(token: Buffer): NtlmAcceptorResult {
    const pending = this.#pending;
    this.#pending = undefined;
    if (!pending) return { kind: 'rejected', reason: 'AUTHENTICATE without a preceding CHALLENGE' };
    const auth = decodeAuthenticate(token);
    if ((auth.flags & NegotiateFlags.ANONYMOUS) !== 0 || auth.user === '') {
      return { kind: 'rejected', reason: 'anonymous authentication is not allowed' };
    }
    // 16-byte NTProofStr + 28-byte blob header + at least MsvAvEOL + 4 reserved bytes.
    if (auth.ntResponse.length < 16 + 28 + 4 + 4) {
      return { kind: 'rejected', reason: 'NTLMv1 or malformed NT response (only NTLMv2 is accepted)' };
    }
    const proof = auth.ntResponse.subarray(0, 16);
    const blob = auth.ntResponse.subarray(16);
    if (blob[0] !== 1 || blob[1] !== 1) return { kind: 'rejected', reason: 'unknown NTLMv2 blob version' };
    const pairs = decodeAvPairs(blob.subarray(28));

    const entry = this.#lookup(auth.user, auth.domain);
    if (!entry) return { kind: 'rejected', reason: 'unknown user or domain' };
    // The client keys its response on the user and domain exactly as it sent them.
    const key = ntowfv2FromHash(ntHashOf(entry.password), auth.user, auth.domain);
    if (!equal(ntProofStr(key, pending.serverChallenge, blob), proof)) {
      return { kind: 'rejected', reason: 'wrong password (NTProofStr mismatch)' };
    }

    const avFlags = pairs.find((p) => p.id === AvId.Flags && p.value.length === 4)?.value.readUInt32LE(0) ?? 0;
    if ((avFlags & AV_FLAG_MIC_PRESENT) !== 0) {
      if (!auth.mic) return { kind: 'rejected', reason: 'MsvAvFlags announces a MIC but the message has none' };
      const baseKey = sessionBaseKey(key, proof);
      let exported = baseKey;
      if ((auth.flags & NegotiateFlags.KEY_EXCH) !== 0) {
        if (auth.encryptedRandomSessionKey.length !== 16) {
          return { kind: 'rejected', reason: 'KEY_EXCH without a 16-byte encrypted session key' };
        }
        exported = rc4(baseKey, auth.encryptedRandomSessionKey);
      }
      const zeroed = Buffer.from(token);
      zeroed.fill(0, MIC_OFFSET, MIC_OFFSET + 16);
      if (!equal(computeMic(exported, pending.negotiate, pending.challenge, zeroed), auth.mic)) {
        return { kind: 'rejected', reason: 'MIC mismatch (message tampered with)' };
      }
    }

    if (this.#opts.channelBinding !== undefined) {
      const got = pairs.find((p) => p.id === AvId.ChannelBindings)?.value;
      if (got?.length !== 16 || got.every((b) => b === 0)) {
        return { kind: 'rejected', reason: 'channel binding required but the client sent none' };
      }
      if (!equal(got, channelBindingsValue(this.#opts.channelBinding))) {
        return { kind: 'rejected', reason: 'channel binding mismatch' };
      }
    }
    return { kind: 'accepted', user: entry.name };
  }
}
