/**
 * NTLMv2 cryptography (MS-NLMP 3.3.2, 3.1.5.1.2): NTOWFv2, the client challenge blob, the
 * NT/LM responses, session keys with KEY_EXCH, the MIC and channel bindings (MS-NLMP 2.2.2.1,
 * RFC 5929 `tls-server-end-point`). Randomness and time are injectable for test vectors.
 */
import { createHash, createHmac } from 'node:crypto';
import { pooledRandom } from '../random.ts';
import { md4 } from './md4.ts';
import {
  AV_FLAG_MIC_PRESENT,
  AvId,
  type AvPair,
  avPairsLength,
  type ChallengeMessage,
  CLIENT_VERSION,
  encodeAuthenticate,
  encodeAvPairs,
  MIC_OFFSET,
  NegotiateFlags,
  writeAvPairs,
} from './messages.ts';
import { rc4 } from './rc4.ts';

/** Milliseconds between 1601-01-01 (FILETIME epoch) and 1970-01-01. */
const FILETIME_UNIX_OFFSET_MS = 11_644_473_600_000n;

/** Current time as a Windows FILETIME (100 ns intervals since 1601-01-01 UTC). */
export function filetimeNow(): bigint {
  return (BigInt(Date.now()) + FILETIME_UNIX_OFFSET_MS) * 10_000n;
}

function hmacMd5(key: Uint8Array, ...parts: Uint8Array[]): Buffer {
  const h = createHmac('md5', key);
  for (const p of parts) h.update(p);
  return h.digest();
}

/**
 * Upper-cases like Windows (simple, one-to-one case mapping): characters whose full upper case
 * changes length, such as `ß`, stay as they are so the UTF-16 length never changes.
 */
function upperSimple(s: string): string {
  let out = '';
  for (const ch of s) {
    const u = ch.toUpperCase();
    out += u.length === ch.length ? u : ch;
  }
  return out;
}

/** NT hash: MD4 of the UTF-16LE password (NTOWFv1). */
export function ntHash(password: string): Buffer {
  return md4(Buffer.from(password, 'utf16le'));
}

/** NTOWFv2 = HMAC_MD5(MD4(UNICODE(password)), UNICODE(Uppercase(user) + domain)). */
export function ntowfv2(password: string, user: string, domain: string): Buffer {
  return ntowfv2FromHash(ntHash(password), user, domain);
}

/** NTOWFv2 from an already computed NT hash (acceptor side). */
export function ntowfv2FromHash(nt: Buffer, user: string, domain: string): Buffer {
  return hmacMd5(nt, Buffer.from(upperSimple(user) + domain, 'utf16le'));
}

/**
 * The NTLMv2 client challenge structure ("temp" in MS-NLMP 3.3.2): RespType 1, HiRespType 1,
 * 6 zero bytes, TimeStamp, ChallengeFromClient, 4 zero bytes, the AV pairs (with EOL), 4 zero
 * bytes.
 */
export function ntlmv2ClientBlob(timestamp: bigint, clientChallenge: Buffer, avPairs: Buffer): Buffer {
  const out = Buffer.alloc(BLOB_HEAD + avPairs.length + 4);
  writeBlobHead(out, 0, timestamp, clientChallenge);
  avPairs.copy(out, BLOB_HEAD);
  return out;
}

/** The blob's fixed part: RespType, HiRespType, reserved, TimeStamp, ChallengeFromClient, reserved. */
const BLOB_HEAD = 28;
function writeBlobHead(out: Buffer, at: number, timestamp: bigint, clientChallenge: Buffer): void {
  out[at] = 1;
  out[at + 1] = 1;
  out.writeBigUInt64LE(BigInt.asUintN(64, timestamp), at + 8);
  clientChallenge.copy(out, at + 16, 0, 8);
}

/** Z(24): only ever copied into a message, never written. */
const ZERO_LM = Buffer.alloc(24);

/**
 * NTProofStr's 16 bytes (left zero for the caller) followed by {@link ntlmv2ClientBlob}'s blob with
 * `pairs` encoded as {@link encodeAvPairs} does, in one buffer: the NT response without the
 * intermediate buffers and concatenations (one per request in per-request mode).
 */
function ntResponseWithBlob(timestamp: bigint, clientChallenge: Buffer, pairs: readonly AvPair[]): Buffer {
  const out = Buffer.alloc(16 + BLOB_HEAD + avPairsLength(pairs) + 4);
  writeBlobHead(out, 16, timestamp, clientChallenge);
  writeAvPairs(pairs, out, 16 + BLOB_HEAD);
  return out;
}

/** NTProofStr = HMAC_MD5(ResponseKeyNT, ServerChallenge || temp). */
export function ntProofStr(responseKeyNT: Buffer, serverChallenge: Buffer, blob: Buffer): Buffer {
  return hmacMd5(responseKeyNT, serverChallenge, blob);
}

/** SessionBaseKey = HMAC_MD5(ResponseKeyNT, NTProofStr); with NTLMv2 it is also the KeyExchangeKey. */
export function sessionBaseKey(responseKeyNT: Buffer, proof: Buffer): Buffer {
  return hmacMd5(responseKeyNT, proof);
}

/** LMv2 response = HMAC_MD5(ResponseKeyLM, ServerChallenge || ClientChallenge) || ClientChallenge. */
export function lmv2Response(responseKeyLM: Buffer, serverChallenge: Buffer, clientChallenge: Buffer): Buffer {
  return Buffer.concat([hmacMd5(responseKeyLM, serverChallenge, clientChallenge), clientChallenge]);
}

/** MIC = HMAC_MD5(ExportedSessionKey, NEGOTIATE || CHALLENGE || AUTHENTICATE-with-zeroed-MIC). */
export function computeMic(
  exportedSessionKey: Buffer,
  negotiate: Buffer,
  challenge: Buffer,
  authenticate: Buffer,
): Buffer {
  return hmacMd5(exportedSessionKey, negotiate, challenge, authenticate);
}

/**
 * MD5 of a gss_channel_bindings_struct with no addresses and `applicationData` (MS-NLMP
 * MsvAvChannelBindings): four zero uint32s (address types and lengths), the uint32 LE length of
 * the application data, then the data.
 */
export function gssChannelBindingsHash(applicationData: Buffer): Buffer {
  const head = Buffer.alloc(20);
  head.writeUInt32LE(applicationData.length, 16);
  return createHash('md5').update(head).update(applicationData).digest();
}

/**
 * The MsvAvChannelBindings value for a TLS server certificate hash (RFC 5929
 * `tls-server-end-point`), or 16 zero bytes for an unbound client.
 */
export function channelBindingsValue(certificateHash: Buffer | undefined): Buffer {
  if (certificateHash === undefined) return Buffer.alloc(16);
  // A connection's certificate hash is one Buffer for the connection's life: per-request mode
  // binds every handshake to it, so its MD5 is made once (callers only read the value).
  let value = bindingValues.get(certificateHash);
  if (value === undefined) {
    value = gssChannelBindingsHash(Buffer.concat([TLS_SERVER_END_POINT, certificateHash]));
    bindingValues.set(certificateHash, value);
  }
  return value;
}

const TLS_SERVER_END_POINT = Buffer.from('tls-server-end-point:', 'latin1');
const bindingValues = new WeakMap<Buffer, Buffer>();

/**
 * The AV pairs the client returns inside its NTLMv2 blob: the server's pairs in order, then
 * MsvAvFlags with MIC present (merged into the server's when it sent one), MsvAvChannelBindings and
 * optionally MsvAvTargetName. Client-owned pairs the server sent are replaced, not duplicated.
 */
export function clientAvPairs(server: readonly AvPair[], channelBindings: Buffer, targetName?: string): AvPair[] {
  const out: AvPair[] = [];
  let flags = AV_FLAG_MIC_PRESENT;
  for (const p of server) {
    if (p.id === AvId.Flags && p.value.length === 4) {
      flags |= p.value.readUInt32LE(0);
      continue;
    }
    if (p.id === AvId.ChannelBindings || p.id === AvId.TargetName) continue;
    out.push(p);
  }
  const f = Buffer.alloc(4);
  f.writeUInt32LE(flags >>> 0, 0);
  out.push({ id: AvId.Flags, value: f });
  out.push({ id: AvId.ChannelBindings, value: channelBindings });
  if (targetName !== undefined) out.push({ id: AvId.TargetName, value: utf16Target(targetName) });
  return out;
}

/** The last MsvAvTargetName encoded: per-request mode sends the same `HTTP/<host>` every time. */
let lastTarget: { name: string; value: Buffer } | undefined;
function utf16Target(name: string): Buffer {
  if (lastTarget?.name !== name) lastTarget = { name, value: Buffer.from(name, 'utf16le') };
  return lastTarget.value;
}

/** The flags the client asks for in NEGOTIATE. Sign/seal are not requested: HTTP never uses them. */
export const CLIENT_FLAGS =
  NegotiateFlags.UNICODE |
  NegotiateFlags.REQUEST_TARGET |
  NegotiateFlags.NTLM |
  NegotiateFlags.ALWAYS_SIGN |
  NegotiateFlags.EXTENDED_SESSIONSECURITY |
  NegotiateFlags.TARGET_INFO |
  NegotiateFlags.VERSION |
  NegotiateFlags.NEGOTIATE_128 |
  NegotiateFlags.KEY_EXCH |
  NegotiateFlags.NEGOTIATE_56;

/** Inputs to {@link createAuthenticate}. */
export interface AuthenticateInput {
  readonly user: string;
  readonly domain: string;
  readonly password: string;
  /** NTOWFv2 of `password`, `user` and `domain`, when the caller keeps it (one MD4 less per handshake). */
  readonly responseKeyNT?: Buffer;
  readonly workstation: string;
  /** The NEGOTIATE message we sent, byte for byte (MIC input). */
  readonly negotiateMessage: Buffer;
  /** The CHALLENGE message as received, byte for byte (MIC input). */
  readonly challengeMessage: Buffer;
  /** The same CHALLENGE, decoded. */
  readonly challenge: ChallengeMessage;
  /** Flags we offered in NEGOTIATE; AUTHENTICATE carries their intersection with the server's. */
  readonly clientFlags: number;
  /** `tls-server-end-point` certificate hash; undefined = unbound (16 zero bytes). */
  readonly channelBinding?: Buffer;
  /** SPN for MsvAvTargetName, e.g. `HTTP/host.example.com`; omitted when undefined. */
  readonly targetName?: string;
  /**
   * Send Z(24) as the LM response even without a server timestamp (as Chromium does). Default:
   * LMv2 unless the server sent MsvAvTimestamp.
   */
  readonly zeroLmResponse?: boolean;
  /** Test hooks: fixed client challenge (8 bytes), exported session key (16 bytes), FILETIME. */
  readonly clientChallenge?: Buffer;
  readonly exportedSessionKey?: Buffer;
  readonly timestamp?: bigint;
}

/** Result of {@link createAuthenticate}. Holds key material: never log it. */
export interface AuthenticateOutput {
  readonly message: Buffer;
  readonly flags: number;
  readonly exportedSessionKey: Buffer;
}

/** Builds a complete NTLMv2 AUTHENTICATE message with MIC (MS-NLMP 3.1.5.1.2). */
export function createAuthenticate(input: AuthenticateInput): AuthenticateOutput {
  const { challenge } = input;
  const flags = (input.clientFlags & challenge.flags) >>> 0;
  const clientChallenge = input.clientChallenge ?? pooledRandom(8);
  const serverTime = challenge.avPairs.find((p) => p.id === AvId.Timestamp && p.value.length === 8);
  const timestamp = serverTime ? serverTime.value.readBigUInt64LE(0) : (input.timestamp ?? filetimeNow());

  const key = input.responseKeyNT ?? ntowfv2(input.password, input.user, input.domain);
  const pairs = clientAvPairs(challenge.avPairs, channelBindingsValue(input.channelBinding), input.targetName);
  const ntResponse = ntResponseWithBlob(timestamp, clientChallenge, pairs);
  const proof = ntProofStr(key, challenge.serverChallenge, ntResponse.subarray(16));
  proof.copy(ntResponse, 0);
  // With a server timestamp the LMv2 response must be Z(24) (MS-NLMP 3.1.5.1.2).
  const lmResponse =
    serverTime || input.zeroLmResponse ? ZERO_LM : lmv2Response(key, challenge.serverChallenge, clientChallenge);

  const keyExchangeKey = sessionBaseKey(key, proof);
  let exportedSessionKey = keyExchangeKey;
  let encryptedRandomSessionKey: Buffer = Buffer.alloc(0);
  if ((flags & NegotiateFlags.KEY_EXCH) !== 0) {
    exportedSessionKey = input.exportedSessionKey ?? pooledRandom(16);
    encryptedRandomSessionKey = rc4(keyExchangeKey, exportedSessionKey);
  }

  const message = encodeAuthenticate({
    flags,
    lmResponse,
    ntResponse,
    domain: input.domain,
    user: input.user,
    workstation: input.workstation,
    encryptedRandomSessionKey,
    version: CLIENT_VERSION,
  });
  computeMic(exportedSessionKey, input.negotiateMessage, input.challengeMessage, message).copy(message, MIC_OFFSET);
  return { message, flags, exportedSessionKey };
}
