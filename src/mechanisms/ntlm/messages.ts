/**
 * NTLMSSP message encoding and decoding (MS-NLMP 2.2). Decoders treat their input as hostile:
 * every offset and length is checked against the buffer and anything malformed throws
 * {@link InvalidTokenError}, never a RangeError or an out-of-bounds read (S3).
 */
import { InvalidTokenError } from '../../errors.ts';

/** `NTLMSSP\0` */
export const NTLMSSP_SIGNATURE = Buffer.from('NTLMSSP\0', 'latin1');

/** NegotiateFlags bits (MS-NLMP 2.2.2.5). */
export const NegotiateFlags = {
  UNICODE: 0x00000001,
  OEM: 0x00000002,
  REQUEST_TARGET: 0x00000004,
  SIGN: 0x00000010,
  SEAL: 0x00000020,
  DATAGRAM: 0x00000040,
  LM_KEY: 0x00000080,
  NTLM: 0x00000200,
  ANONYMOUS: 0x00000800,
  OEM_DOMAIN_SUPPLIED: 0x00001000,
  OEM_WORKSTATION_SUPPLIED: 0x00002000,
  ALWAYS_SIGN: 0x00008000,
  TARGET_TYPE_DOMAIN: 0x00010000,
  TARGET_TYPE_SERVER: 0x00020000,
  EXTENDED_SESSIONSECURITY: 0x00080000,
  IDENTIFY: 0x00100000,
  REQUEST_NON_NT_SESSION_KEY: 0x00400000,
  TARGET_INFO: 0x00800000,
  VERSION: 0x02000000,
  NEGOTIATE_128: 0x20000000,
  KEY_EXCH: 0x40000000,
  NEGOTIATE_56: 0x80000000,
} as const;

/** AV_PAIR ids (MS-NLMP 2.2.2.1). */
export const AvId = {
  EOL: 0,
  NbComputerName: 1,
  NbDomainName: 2,
  DnsComputerName: 3,
  DnsDomainName: 4,
  DnsTreeName: 5,
  Flags: 6,
  Timestamp: 7,
  SingleHost: 8,
  TargetName: 9,
  ChannelBindings: 10,
} as const;

/** MsvAvFlags bit: the AUTHENTICATE message carries a MIC. */
export const AV_FLAG_MIC_PRESENT = 0x00000002;

/** One AV_PAIR (the terminating MsvAvEOL is implicit and never listed). */
export interface AvPair {
  readonly id: number;
  readonly value: Buffer;
}

/** A decoded CHALLENGE_MESSAGE (type 2). */
export interface ChallengeMessage {
  readonly flags: number;
  /** 8-byte server challenge. */
  readonly serverChallenge: Buffer;
  readonly targetName: string;
  /** The raw TargetInfo bytes (empty when absent). */
  readonly targetInfo: Buffer;
  /** TargetInfo parsed into AV pairs, without the terminating MsvAvEOL. */
  readonly avPairs: readonly AvPair[];
  /** The 8-byte Version field, when present. */
  readonly version?: Buffer;
}

/** A decoded NEGOTIATE_MESSAGE (type 1). */
export interface NegotiateMessage {
  readonly flags: number;
}

/** A decoded AUTHENTICATE_MESSAGE (type 3). */
export interface AuthenticateMessage {
  readonly flags: number;
  readonly lmResponse: Buffer;
  readonly ntResponse: Buffer;
  readonly domain: string;
  readonly user: string;
  readonly workstation: string;
  readonly encryptedRandomSessionKey: Buffer;
  /** The MIC field, when the message has room for it (all payload offsets at or after 88). */
  readonly mic?: Buffer;
  /** Offset of the MIC field in the message (72) when {@link mic} is set. */
  readonly micOffset?: number;
}

/** Fields of an AUTHENTICATE_MESSAGE to encode. */
export interface AuthenticateFields {
  readonly flags: number;
  readonly lmResponse: Buffer;
  readonly ntResponse: Buffer;
  readonly domain: string;
  readonly user: string;
  readonly workstation: string;
  readonly encryptedRandomSessionKey: Buffer;
  /** 8 bytes; written only when VERSION is in `flags` (the field is zero otherwise, per 2.2.1.3). */
  readonly version: Buffer;
}

/** Offset of the MIC in an AUTHENTICATE message that carries Version and MIC. */
export const MIC_OFFSET = 72;
const AUTHENTICATE_HEADER_LEN = 88;
const NEGOTIATE_LEN = 40;

/**
 * The Version we send: Windows 10.0 build 0, NTLMSSP revision 15 (MS-NLMP 2.2.2.10). It is for
 * debugging only; peers must not act on it.
 */
export const CLIENT_VERSION = Buffer.from([10, 0, 0, 0, 0, 0, 0, 0x0f]);

function invalid(): InvalidTokenError {
  return new InvalidTokenError('NTLM message');
}

/** Encodes a string for the wire: UTF-16LE when UNICODE is negotiated, else the OEM (Latin-1) form. */
export function encodeString(s: string, unicode: boolean): Buffer {
  return Buffer.from(s, unicode ? 'utf16le' : 'latin1');
}

function decodeString(b: Buffer, unicode: boolean): string {
  if (unicode) {
    if (b.length % 2 !== 0) throw invalid();
    return b.toString('utf16le');
  }
  return b.toString('latin1');
}

/** Reads a security buffer (Len, MaxLen, Offset) at `at`, bounds-checked against `msg`. */
function readField(msg: Buffer, at: number, headerLen: number): Buffer {
  if (at + 8 > msg.length) throw invalid();
  const len = msg.readUInt16LE(at);
  const offset = msg.readUInt32LE(at + 4);
  if (len === 0) return Buffer.alloc(0);
  // Payload may not overlap the fixed header nor run past the end of the message.
  if (offset < headerLen || offset > msg.length || len > msg.length - offset) throw invalid();
  return msg.subarray(offset, offset + len);
}

/** Whether `msg` is at least `minLen` bytes of an NTLMSSP message of `type`. */
function hasHeader(msg: Buffer, type: number, minLen: number): boolean {
  return msg.length >= minLen && msg.subarray(0, 8).equals(NTLMSSP_SIGNATURE) && msg.readUInt32LE(8) === type;
}

function checkHeader(msg: Buffer, type: number, minLen: number): void {
  if (!hasHeader(msg, type, minLen)) throw invalid();
}

/**
 * Encodes a NEGOTIATE_MESSAGE in its 40-byte form, Version included (some acceptors, e.g.
 * gss-ntlmssp, reject the 32-byte form). Domain and workstation are never supplied.
 */
export function encodeNegotiate(flags: number, version: Buffer = CLIENT_VERSION): Buffer {
  const msg = Buffer.alloc(NEGOTIATE_LEN);
  NTLMSSP_SIGNATURE.copy(msg, 0);
  msg.writeUInt32LE(1, 8);
  msg.writeUInt32LE(flags >>> 0, 12);
  // Empty DomainName and WorkstationName fields point at the end of the fixed part.
  msg.writeUInt32LE(NEGOTIATE_LEN, 20);
  msg.writeUInt32LE(NEGOTIATE_LEN, 28);
  if ((flags & NegotiateFlags.VERSION) !== 0) version.copy(msg, 32, 0, 8);
  return msg;
}

/** Decodes a NEGOTIATE_MESSAGE (acceptor side); only the flags matter to us. */
export function decodeNegotiate(msg: Buffer): NegotiateMessage {
  checkHeader(msg, 1, 16);
  return { flags: msg.readUInt32LE(12) };
}

/**
 * Whether `msg` is a NEGOTIATE_MESSAGE (type 1): its signature and type, as {@link decodeNegotiate}
 * reads them. It carries flags (and at most a domain and workstation name), nothing derived from a password.
 */
export function isNegotiateMessage(msg: Buffer): boolean {
  return hasHeader(msg, 1, 16);
}

/** Parses an AV_PAIR list; it must end with MsvAvEOL inside `buf`. */
export function decodeAvPairs(buf: Buffer): AvPair[] {
  const pairs: AvPair[] = [];
  let at = 0;
  for (;;) {
    if (at + 4 > buf.length) throw invalid();
    const id = buf.readUInt16LE(at);
    const len = buf.readUInt16LE(at + 2);
    at += 4;
    if (id === AvId.EOL) {
      if (len !== 0) throw invalid();
      return pairs;
    }
    if (len > buf.length - at) throw invalid();
    pairs.push({ id, value: buf.subarray(at, at + len) });
    at += len;
  }
}

/** Serializes AV pairs followed by MsvAvEOL. */
export function encodeAvPairs(pairs: readonly AvPair[]): Buffer {
  const out = Buffer.alloc(avPairsLength(pairs));
  writeAvPairs(pairs, out, 0);
  return out;
}

/** Bytes {@link encodeAvPairs} writes for `pairs`, MsvAvEOL included. */
export function avPairsLength(pairs: readonly AvPair[]): number {
  let length = 4; // MsvAvEOL
  for (const p of pairs) {
    if (p.value.length > 0xffff) throw new RangeError('AV pair value too long');
    length += 4 + p.value.length;
  }
  return length;
}

/** Writes `pairs` and MsvAvEOL into zero-filled `out` at `at` (a message built in one buffer). */
export function writeAvPairs(pairs: readonly AvPair[], out: Buffer, at: number): void {
  for (const p of pairs) {
    out.writeUInt16LE(p.id, at);
    out.writeUInt16LE(p.value.length, at + 2);
    p.value.copy(out, at + 4);
    at += 4 + p.value.length;
  }
}

/** Decodes a CHALLENGE_MESSAGE (type 2). Throws {@link InvalidTokenError} on anything malformed. */
export function decodeChallenge(msg: Buffer): ChallengeMessage {
  // The 32-byte minimum: signature, type, TargetName field, flags, server challenge.
  checkHeader(msg, 2, 32);
  const flags = msg.readUInt32LE(20);
  const serverChallenge = Buffer.from(msg.subarray(24, 32));
  // Old servers stop after 32 bytes; TargetInfo's field needs 48.
  const hasTargetInfoField = msg.length >= 48;
  // Payload may start at 48 even with VERSION set (Version omitted), so only the first 32 or 48
  // bytes are certainly header.
  const minPayload = hasTargetInfoField ? 48 : 32;
  const unicode = (flags & NegotiateFlags.UNICODE) !== 0;
  // TargetName is informational (NTLMv2 uses TargetInfo's pairs): a server that writes it badly
  // (Squid's ntlm_fake_auth points it past the end) is still answered, as curl and Windows do.
  let targetName = '';
  try {
    targetName = decodeString(readField(msg, 12, minPayload), unicode);
  } catch {
    // left empty
  }
  let targetInfo: Buffer = Buffer.alloc(0);
  let avPairs: AvPair[] = [];
  // MS-NLMP 2.2.1.2: TargetInfo is there only with NEGOTIATE_TARGET_INFO (an old 40-byte header
  // puts payload where its field would be).
  if (hasTargetInfoField && (flags & NegotiateFlags.TARGET_INFO) !== 0) {
    targetInfo = Buffer.from(readField(msg, 40, minPayload));
    if (targetInfo.length > 0) avPairs = decodeAvPairs(targetInfo);
  }
  // Version is informational only, so reading it where a sloppy server put payload is harmless.
  const version =
    (flags & NegotiateFlags.VERSION) !== 0 && msg.length >= 56 ? Buffer.from(msg.subarray(48, 56)) : undefined;
  return version
    ? { flags, serverChallenge, targetName, targetInfo, avPairs, version }
    : { flags, serverChallenge, targetName, targetInfo, avPairs };
}

/** Fields of a CHALLENGE_MESSAGE to encode (acceptor side). */
export interface ChallengeFields {
  readonly flags: number;
  readonly serverChallenge: Buffer;
  readonly targetName: string;
  readonly avPairs: readonly AvPair[];
  readonly version: Buffer;
}

/** Encodes a CHALLENGE_MESSAGE (type 2) with Version (56-byte fixed part). */
export function encodeChallenge(f: ChallengeFields): Buffer {
  const unicode = (f.flags & NegotiateFlags.UNICODE) !== 0;
  const name = encodeString(f.targetName, unicode);
  const info = encodeAvPairs(f.avPairs);
  const header = Buffer.alloc(56);
  NTLMSSP_SIGNATURE.copy(header, 0);
  header.writeUInt32LE(2, 8);
  writeField(header, 12, name.length, 56);
  header.writeUInt32LE(f.flags >>> 0, 20);
  f.serverChallenge.copy(header, 24, 0, 8);
  writeField(header, 40, info.length, 56 + name.length);
  f.version.copy(header, 48, 0, 8);
  return Buffer.concat([header, name, info]);
}

function writeField(msg: Buffer, at: number, len: number, offset: number): void {
  if (len > 0xffff) throw new RangeError('NTLM field too long');
  msg.writeUInt16LE(len, at);
  msg.writeUInt16LE(len, at + 2);
  msg.writeUInt32LE(offset, at + 4);
}

/**
 * Encodes an AUTHENTICATE_MESSAGE (type 3) with Version and a zeroed MIC field at
 * {@link MIC_OFFSET}; the caller computes the MIC over the result and writes it in place.
 * Payload order: EncryptedRandomSessionKey, LM, NT, domain, user, workstation.
 */
export function encodeAuthenticate(f: AuthenticateFields): Buffer {
  const unicode = (f.flags & NegotiateFlags.UNICODE) !== 0;
  const domain = encodeString(f.domain, unicode);
  const user = encodeString(f.user, unicode);
  const workstation = encodeString(f.workstation, unicode);
  const header = Buffer.alloc(AUTHENTICATE_HEADER_LEN);
  NTLMSSP_SIGNATURE.copy(header, 0);
  header.writeUInt32LE(3, 8);
  let cursor = AUTHENTICATE_HEADER_LEN;
  const place = (at: number, b: Buffer): void => {
    writeField(header, at, b.length, cursor);
    cursor += b.length;
  };
  place(52, f.encryptedRandomSessionKey);
  place(12, f.lmResponse);
  place(20, f.ntResponse);
  place(28, domain);
  place(36, user);
  place(44, workstation);
  header.writeUInt32LE(f.flags >>> 0, 60);
  if ((f.flags & NegotiateFlags.VERSION) !== 0) f.version.copy(header, 64, 0, 8);
  return Buffer.concat([header, f.encryptedRandomSessionKey, f.lmResponse, f.ntResponse, domain, user, workstation]);
}

/** Decodes an AUTHENTICATE_MESSAGE (acceptor side). Throws {@link InvalidTokenError} when malformed. */
export function decodeAuthenticate(msg: Buffer): AuthenticateMessage {
  checkHeader(msg, 3, 64);
  const flags = msg.readUInt32LE(60);
  const unicode = (flags & NegotiateFlags.UNICODE) !== 0;
  const fieldAt = [12, 20, 28, 36, 44, 52] as const;
  // Version and MIC are present exactly when the payload starts at or after byte 88.
  let lowest = msg.length;
  for (const at of fieldAt) {
    if (msg.readUInt16LE(at) > 0) lowest = Math.min(lowest, msg.readUInt32LE(at + 4));
  }
  const hasMic = lowest >= AUTHENTICATE_HEADER_LEN && msg.length >= AUTHENTICATE_HEADER_LEN;
  const headerLen = hasMic ? AUTHENTICATE_HEADER_LEN : 64;
  const base = {
    flags,
    lmResponse: Buffer.from(readField(msg, 12, headerLen)),
    ntResponse: Buffer.from(readField(msg, 20, headerLen)),
    domain: decodeString(readField(msg, 28, headerLen), unicode),
    user: decodeString(readField(msg, 36, headerLen), unicode),
    workstation: decodeString(readField(msg, 44, headerLen), unicode),
    encryptedRandomSessionKey: Buffer.from(readField(msg, 52, headerLen)),
  };
  return hasMic
    ? { ...base, mic: Buffer.from(msg.subarray(MIC_OFFSET, MIC_OFFSET + 16)), micOffset: MIC_OFFSET }
    : base;
}
