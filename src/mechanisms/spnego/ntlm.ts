/**
 * NTLM inside SPNEGO under the `Negotiate` scheme (RFC 4178 + MS-SPNG + MS-NLMP), for when there is no
 * Kerberos ticket but the agent has a password. Messages:
 *   C: NegTokenInit { mechTypes [NTLMSSP], mechToken NEGOTIATE }
 *   S: 401 NegTokenResp { accept-incomplete, supportedMech NTLMSSP, responseToken CHALLENGE }
 *   C: NegTokenResp { accept-incomplete, responseToken AUTHENTICATE, mechListMIC }
 *   S: 200 NegTokenResp { accept-completed, mechListMIC }      ← verified in finish()
 * The mechListMIC is the NTLM GSS_GetMIC (MS-NLMP 3.4.4.2, extended session security) over the DER
 * MechTypeList the client sent; gss-ntlmssp requires it because AUTHENTICATE carries a MIC.
 * `wrap: 'raw'` instead sends bare NTLMSSP messages under `Negotiate` (accepted by Windows and by MIT
 * mechglue acceptors); raw NTLM has no final server token, so nothing can be verified in finish().
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { Challenge } from '../../challenge/types.ts';
import { MechanismError, MutualAuthError } from '../../errors.ts';
import { authenticateForLeg, decodeToken, type NtlmIdentity, parseNtlmUser } from '../ntlm/index.ts';
import { encodeNegotiate, NegotiateFlags, NTLMSSP_SIGNATURE } from '../ntlm/messages.ts';
import { CLIENT_FLAGS } from '../ntlm/ntlmv2.ts';
import { rc4 } from '../ntlm/rc4.ts';
import type { Credentials, LegInfo, Mechanism, MechanismContext } from '../types.ts';
import {
  decodeNegTokenResp,
  encodeMechTypeList,
  encodeNegTokenInit,
  encodeNegTokenResp,
  NegState,
  OID_NTLMSSP,
} from './tokens.ts';

const SCHEME = 'Negotiate';

/** NEGOTIATE flags under SPNEGO: the NTLM engine's flags plus SIGN (the mechListMIC is a signature). */
export const SPNEGO_NTLM_FLAGS = (CLIENT_FLAGS | NegotiateFlags.SIGN) >>> 0;

export interface SpnegoNtlmOptions {
  /** `spnego` (default): NTLM wrapped in SPNEGO with mechListMIC. `raw`: bare NTLMSSP tokens. */
  readonly wrap?: 'spnego' | 'raw';
  /** `required` (default): under SPNEGO, the final 2xx must carry a valid mechListMIC. */
  readonly mutualAuth?: 'required' | 'optional';
  /** Send MsvAvTargetName `HTTP/<hostname>` (default true; never for proxies). */
  readonly sendTargetName?: boolean;
  /** Test hook: random bytes (client challenge, exported session key). */
  readonly randomBytes?: (n: number) => Buffer;
}

const magic = (s: string): Buffer => Buffer.from(`session key to ${s} key magic constant\0`, 'latin1');

/** Signing and sealing keys of one direction (MS-NLMP 3.4.5.2, 3.4.5.3; extended session security). */
function directionKeys(esk: Buffer, flags: number, dir: 'client-to-server' | 'server-to-client') {
  const signKey = createHash('md5')
    .update(esk)
    .update(magic(`${dir} signing`))
    .digest();
  let sealBase = esk;
  if ((flags & NegotiateFlags.NEGOTIATE_128) === 0) {
    sealBase = esk.subarray(0, (flags & NegotiateFlags.NEGOTIATE_56) !== 0 ? 7 : 5);
  }
  const sealKey = createHash('md5')
    .update(sealBase)
    .update(magic(`${dir} sealing`))
    .digest();
  return { signKey, sealKey };
}

/**
 * NTLM GSS_GetMIC with extended session security (MS-NLMP 3.4.4.2): Version 1 || checksum || SeqNum,
 * checksum = HMAC_MD5(SignKey, SeqNum || msg)[0..8], RC4-encrypted with the direction's fresh sealing
 * handle when KEY_EXCH was negotiated. SPNEGO's mechListMIC is the first message of each direction.
 */
export function ntlmSign(
  esk: Buffer,
  flags: number,
  dir: 'client-to-server' | 'server-to-client',
  message: Buffer,
  seqNum = 0,
): Buffer {
  if ((flags & NegotiateFlags.EXTENDED_SESSIONSECURITY) === 0) {
    throw new MechanismError(SCHEME, 'the server did not agree to NTLM extended session security; cannot sign');
  }
  const { signKey, sealKey } = directionKeys(esk, flags, dir);
  const seq = Buffer.alloc(4);
  seq.writeUInt32LE(seqNum >>> 0);
  let checksum: Buffer = createHmac('md5', signKey).update(seq).update(message).digest().subarray(0, 8);
  if ((flags & NegotiateFlags.KEY_EXCH) !== 0) checksum = rc4(sealKey, checksum);
  return Buffer.concat([Buffer.from([1, 0, 0, 0]), checksum, seq]);
}

type State = 'initial' | 'negotiated' | 'complete';

/**
 * The first leg is the same bytes for every handshake (no names, fixed flags): made once, not per
 * request in per-request mode. The NEGOTIATE buffer is only ever read (it is MIC input).
 */
let firstLegCache: { negotiate: Buffer; raw: string; spnego: string } | undefined;
function firstLeg(): { negotiate: Buffer; raw: string; spnego: string } {
  if (firstLegCache === undefined) {
    const negotiate = encodeNegotiate(SPNEGO_NTLM_FLAGS);
    firstLegCache = {
      negotiate,
      raw: `${SCHEME} ${negotiate.toString('base64')}`,
      spnego: `${SCHEME} ${encodeNegTokenInit([OID_NTLMSSP], negotiate).toString('base64')}`,
    };
  }
  return firstLegCache;
}

/** The DER MechTypeList we send (the mechListMIC's input), made once. */
let mechTypeList: Buffer | undefined;
function mechTypes(): Buffer {
  if (mechTypeList === undefined) mechTypeList = encodeMechTypeList([OID_NTLMSSP]);
  return mechTypeList;
}

/** One SPNEGO/NTLM (or raw NTLM under Negotiate) handshake. */
export class SpnegoNtlmContext implements MechanismContext {
  readonly #credentials: Credentials;
  readonly #id: NtlmIdentity;
  readonly #options: SpnegoNtlmOptions;
  #state: State = 'initial';
  #negotiate: Buffer | undefined;
  #esk: Buffer | undefined;
  #flags = 0;
  #verified = false;

  constructor(credentials: Credentials, options: SpnegoNtlmOptions = {}) {
    this.#credentials = credentials;
    this.#id = parseNtlmUser(credentials);
    this.#options = options;
  }

  get #raw(): boolean {
    return this.#options.wrap === 'raw';
  }

  /** True once AUTHENTICATE has been sent (nothing more to send). */
  get complete(): boolean {
    return this.#state === 'complete';
  }

  /** True after finish() verified the server's mechListMIC. */
  get serverVerified(): boolean {
    return this.#verified;
  }

  get identity(): string {
    return this.#id.domain ? `${this.#id.domain}\\${this.#id.user}` : this.#id.user;
  }

  async step(challenge: Challenge | undefined, leg: LegInfo): Promise<string> {
    const token = challenge?.token68;
    if (token === undefined) {
      if (this.#state === 'complete') {
        throw new MechanismError(
          SCHEME,
          'the server rejected the NTLM credentials (SPNEGO); check user name, domain and password',
        );
      }
      if (this.#state === 'negotiated') {
        throw new MechanismError(
          SCHEME,
          'the server answered the SPNEGO/NTLM NEGOTIATE without a CHALLENGE; it rejected the handshake',
        );
      }
      const first = firstLeg();
      this.#negotiate = first.negotiate;
      this.#state = 'negotiated';
      return this.#raw ? first.raw : first.spnego;
    }
    if (this.#state !== 'negotiated' || !this.#negotiate) {
      throw new MechanismError(SCHEME, 'unexpected SPNEGO/NTLM token from the server at this point of the handshake');
    }
    const raw = decodeToken(token);
    let type2: Buffer;
    let spnego = true;
    if (raw.subarray(0, 8).equals(NTLMSSP_SIGNATURE)) {
      type2 = raw; // a server that answers in raw NTLMSSP
      spnego = false;
    } else {
      const resp = decodeNegTokenResp(raw);
      if (resp.negState === NegState.REJECT) {
        throw new MechanismError(SCHEME, 'the server rejected SPNEGO/NTLM (negState reject)');
      }
      if (resp.supportedMech !== undefined && resp.supportedMech !== OID_NTLMSSP) {
        throw new MechanismError(SCHEME, `the server selected mechanism ${resp.supportedMech}, not NTLM`);
      }
      if (!resp.responseToken) throw new MechanismError(SCHEME, 'the server sent SPNEGO without an NTLM CHALLENGE');
      type2 = resp.responseToken;
    }
    const { message, flags, exportedSessionKey } = authenticateForLeg({
      credentials: this.#credentials,
      identity: this.#id,
      negotiateMessage: this.#negotiate,
      challengeMessage: type2,
      clientFlags: SPNEGO_NTLM_FLAGS,
      leg,
      options: this.#options,
    });
    this.#esk = exportedSessionKey;
    this.#flags = flags;
    this.#state = 'complete';
    if (this.#raw || !spnego) return `${SCHEME} ${message.toString('base64')}`;
    const mic = ntlmSign(exportedSessionKey, flags, 'client-to-server', mechTypes());
    const out = encodeNegTokenResp({ negState: NegState.ACCEPT_INCOMPLETE, responseToken: message, mechListMIC: mic });
    return `${SCHEME} ${out.toString('base64')}`;
  }

  async finish(challenge: Challenge | undefined): Promise<void> {
    if (this.#state !== 'complete' || this.#raw) return; // nothing was negotiated / raw NTLM has no proof
    const required = (this.#options.mutualAuth ?? 'required') === 'required';
    const token = challenge?.token68;
    if (token === undefined) {
      if (required) throw new MutualAuthError('the server sent no final SPNEGO token (mechListMIC) with its response');
      return;
    }
    const resp = decodeNegTokenResp(decodeToken(token));
    if (resp.negState !== undefined && resp.negState !== NegState.ACCEPT_COMPLETED) {
      throw new MutualAuthError(`the server's final SPNEGO token is not accept-completed (negState ${resp.negState})`);
    }
    if (!resp.mechListMIC) {
      if (required) throw new MutualAuthError("the server's final SPNEGO token carries no mechListMIC");
      return;
    }
    const expected = ntlmSign(this.#esk!, this.#flags, 'server-to-client', mechTypes());
    if (resp.mechListMIC.length !== expected.length || !timingSafeEqual(resp.mechListMIC, expected)) {
      throw new MutualAuthError("the server's SPNEGO mechListMIC does not verify");
    }
    this.#verified = true;
  }
}

/** NTLM inside SPNEGO (or raw NTLMSSP) under the `Negotiate` scheme as a {@link Mechanism}. */
export function spnegoNtlmMechanism(credentials: Credentials, options: SpnegoNtlmOptions = {}): Mechanism {
  return {
    scheme: SCHEME,
    level: 'either',
    multileg: true,
    proactive: true,
    createContext: () => new SpnegoNtlmContext(credentials, options),
  };
}
