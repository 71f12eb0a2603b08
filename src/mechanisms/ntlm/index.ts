/**
 * The NTLM mechanism (MS-NLMP, NTLMv2 only) as a {@link Mechanism}: NEGOTIATE, then AUTHENTICATE
 * in answer to the server's CHALLENGE. The same engine can run under the `Negotiate` scheme,
 * since Windows/IIS and MIT mechglue accept a raw NTLMSSP token there.
 */
import type { Challenge } from '../../challenge/types.ts';
import { InvalidTokenError, MechanismError } from '../../errors.ts';
import type { AuthLevel, Credentials, LegInfo, Mechanism, MechanismContext } from '../types.ts';
import { decodeChallenge, encodeNegotiate } from './messages.ts';
import { CLIENT_FLAGS, createAuthenticate, ntowfv2 } from './ntlmv2.ts';

/** Largest base64 token accepted from a server (S3): 64 KiB of text. */
export const MAX_TOKEN_LENGTH = 64 * 1024;

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Options for {@link ntlmMechanism}. */
export interface NtlmOptions {
  /** Header scheme to speak under: `NTLM` (default) or `Negotiate` (raw NTLMSSP inside Negotiate). */
  readonly scheme?: 'NTLM' | 'Negotiate';
  /** Send MsvAvTargetName `HTTP/<hostname>` (default true; never for proxies). */
  readonly sendTargetName?: boolean;
  /** Test hook: source of random bytes (client challenge, exported session key). */
  readonly randomBytes?: (n: number) => Buffer;
  /** Test hook: current time as FILETIME, used when the server sends no timestamp. */
  readonly now?: () => bigint;
}

/** A user name split into NTLM's user and domain parts. */
export interface NtlmIdentity {
  readonly user: string;
  readonly domain: string;
}

/**
 * Splits `DOMAIN\user`, `DOMAIN/user` (curl's NTLM reads both; no Windows account name holds a
 * `/`), `user@domain` (at the last `@`) or a plain `user` (domain from `credentials.domain`, else
 * empty). A domain inside the user name wins over `credentials.domain`.
 */
export function parseNtlmUser(credentials: Pick<Credentials, 'username' | 'domain'>): NtlmIdentity {
  const name = credentials.username;
  let bs = name.indexOf('\\');
  if (bs < 0) bs = name.indexOf('/');
  if (bs >= 0) return { domain: name.slice(0, bs), user: name.slice(bs + 1) };
  const at = name.lastIndexOf('@');
  if (at > 0) return { user: name.slice(0, at), domain: name.slice(at + 1) };
  return { user: name, domain: credentials.domain ?? '' };
}

/**
 * Whether two user names (as NTLM splits them) are one account: a password rotation, not a switch.
 * The user as written (Basic and Digest servers may tell `Alice` from `alice`; unsure is a switch),
 * the domain case aside.
 */
export function sameNtlmAccount(a: NtlmIdentity | undefined, b: NtlmIdentity): boolean {
  return a !== undefined && a.user === b.user && a.domain.toLowerCase() === b.domain.toLowerCase();
}

/** Strictly decodes a server token: canonical base64 alphabet and padding, bounded length (S3). */
export function decodeToken(token: string): Buffer {
  if (token.length === 0 || token.length > MAX_TOKEN_LENGTH || token.length % 4 !== 0 || !BASE64.test(token)) {
    throw new InvalidTokenError('NTLM token (bad base64 or too long)');
  }
  return Buffer.from(token, 'base64');
}

type State = 'initial' | 'negotiated' | 'complete';

class NtlmContext implements MechanismContext {
  readonly #scheme: string;
  readonly #credentials: Credentials;
  readonly #id: NtlmIdentity;
  readonly #options: NtlmOptions;
  #state: State = 'initial';
  #negotiate: Buffer | undefined;

  constructor(scheme: string, credentials: Credentials, options: NtlmOptions) {
    this.#scheme = scheme;
    this.#credentials = credentials;
    this.#id = parseNtlmUser(credentials);
    this.#options = options;
  }

  get complete(): boolean {
    return this.#state === 'complete';
  }

  get identity(): string {
    return this.#id.domain ? `${this.#id.domain}\\${this.#id.user}` : this.#id.user;
  }

  async step(challenge: Challenge | undefined, leg: LegInfo): Promise<string> {
    // A fresh context opens with NEGOTIATE whatever the 401 carried: a CHALLENGE there answers no
    // NEGOTIATE of ours (a server that lost an authenticated connection's context offers one, T4).
    const token = this.#state === 'initial' ? undefined : challenge?.token68;
    if (token === undefined) {
      if (this.#state === 'complete') {
        throw new MechanismError(
          this.#scheme,
          'the server rejected the NTLM credentials; check user name, domain and password',
        );
      }
      if (this.#state === 'negotiated') {
        throw new MechanismError(
          this.#scheme,
          'the server answered NTLM NEGOTIATE without a CHALLENGE; it rejected the handshake',
        );
      }
      this.#negotiate = encodeNegotiate(CLIENT_FLAGS);
      this.#state = 'negotiated';
      return `${this.#scheme} ${this.#negotiate.toString('base64')}`;
    }
    if (this.#state === 'complete') {
      throw new MechanismError(
        this.#scheme,
        'the server sent a second NTLM CHALLENGE after AUTHENTICATE; the handshake failed',
      );
    }
    if (this.#negotiate === undefined) {
      // Unreachable from 'initial' (above); kept so a CHALLENGE is never answered without our NEGOTIATE.
      throw new MechanismError(this.#scheme, 'the server sent an NTLM CHALLENGE before the client sent NEGOTIATE');
    }
    const { message } = authenticateForLeg({
      credentials: this.#credentials,
      identity: this.#id,
      negotiateMessage: this.#negotiate,
      challengeMessage: decodeToken(token),
      clientFlags: CLIENT_FLAGS,
      leg,
      options: this.#options,
    });
    this.#state = 'complete';
    return `${this.#scheme} ${message.toString('base64')}`;
  }

  async finish(): Promise<void> {
    // NTLM has no final server token to verify.
  }
}

/**
 * NTOWFv2 per credentials object and identity: per-request mode runs a handshake per request, and
 * the key only changes with the password. Kept no longer than the credentials themselves.
 */
const responseKeys = new WeakMap<Credentials, { user: string; domain: string; password: string; key: Buffer }>();

function responseKeyNT(credentials: Credentials, identity: NtlmIdentity): Buffer {
  const { user, domain } = identity;
  const cached = responseKeys.get(credentials);
  if (cached && cached.user === user && cached.domain === domain && cached.password === credentials.password)
    return cached.key;
  const key = ntowfv2(credentials.password, user, domain);
  responseKeys.set(credentials, { user, domain, password: credentials.password, key });
  return key;
}

/**
 * The AUTHENTICATE message answering `challengeMessage` for one leg: channel bindings and the
 * `HTTP/<host>` target name for an origin, neither for a proxy. Shared by raw NTLM and NTLM inside
 * SPNEGO. The result carries key material (`exportedSessionKey`): never log it.
 */
export function authenticateForLeg(input: {
  credentials: Credentials;
  identity: NtlmIdentity;
  negotiateMessage: Buffer;
  challengeMessage: Buffer;
  clientFlags: number;
  leg: LegInfo;
  options: Pick<NtlmOptions, 'sendTargetName' | 'randomBytes' | 'now'>;
}): ReturnType<typeof createAuthenticate> {
  const { leg, options } = input;
  const random = options.randomBytes;
  const sendTargetName = (options.sendTargetName ?? true) && !leg.proxy && leg.hostname !== '';
  return createAuthenticate({
    user: input.identity.user,
    domain: input.identity.domain,
    password: input.credentials.password,
    responseKeyNT: responseKeyNT(input.credentials, input.identity),
    workstation: input.credentials.workstation ?? '',
    negotiateMessage: input.negotiateMessage,
    challengeMessage: input.challengeMessage,
    challenge: decodeChallenge(input.challengeMessage),
    clientFlags: input.clientFlags,
    ...(leg.channelBinding && !leg.proxy ? { channelBinding: leg.channelBinding } : {}),
    ...(sendTargetName ? { targetName: `HTTP/${leg.hostname}` } : {}),
    ...(random ? { clientChallenge: random(8), exportedSessionKey: random(16) } : {}),
    ...(options.now ? { timestamp: options.now() } : {}),
  });
}

/**
 * NTLM (NTLMv2 with MIC and channel bindings) under the `NTLM` scheme: connection-level, multileg,
 * not proactive (though `step(undefined)` yields NEGOTIATE, for callers that already know the
 * origin wants NTLM).
 */
export function ntlmMechanism(credentials: Credentials, options: NtlmOptions = {}): Mechanism {
  const scheme = options.scheme ?? 'NTLM';
  const level: AuthLevel = scheme === 'Negotiate' ? 'either' : 'connection';
  return {
    scheme,
    level,
    multileg: true,
    proactive: false,
    usesPassword: true,
    createContext: () => new NtlmContext(scheme, credentials, options),
  };
}

/** The NTLM token engine under another header scheme: `Negotiate` carries raw NTLMSSP tokens. */
export function ntlmMechanismWithScheme(
  credentials: Credentials,
  scheme: 'NTLM' | 'Negotiate',
  options: Omit<NtlmOptions, 'scheme'> = {},
): Mechanism {
  return ntlmMechanism(credentials, { ...options, scheme });
}
