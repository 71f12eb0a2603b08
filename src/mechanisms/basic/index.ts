/**
 * HTTP Basic (RFC 7617) as a {@link Mechanism}: `user:password` in UTF-8, base64. Refused over
 * cleartext `http:`, and over TLS whose server was not verified (`rejectUnauthorized: false`), unless
 * the caller allows it, since the password is readable by whoever answers.
 */
import type { Challenge } from '../../challenge/types.ts';
import { MechanismError, MechanismUnavailableError } from '../../errors.ts';
import { type Credentials, type LegInfo, type Mechanism, type MechanismContext, NOT_YET_CONNECTED } from '../types.ts';

/**
 * Basic would send the password over a cleartext connection: `http:`, or TLS whose server
 * certificate was not verified (`connect.rejectUnauthorized: false`; {@link certificateError} says
 * why), where whoever answered reads it as well. The agent treats it as "Basic unusable here" and
 * tries the next offered scheme; when there is none, the caller gets this error. (One class and
 * code for both: the same risk, and the same `allowBasicOverHttp` accepts it.)
 */
export class BasicOverHttpError extends MechanismUnavailableError {
  /**
   * Over `https:`: why its server was not verified (Node's `authorizationError`, or
   * `NOT_YET_CONNECTED`: see {@link LegInfo.unverifiedTls}). Absent: over `http:`.
   */
  readonly certificateError?: string;
  constructor(origin: string, certificateError?: string) {
    super('Basic', certificateError === undefined ? overHttp(origin) : overUnverified(origin, certificateError));
    if (certificateError !== undefined) this.certificateError = certificateError;
  }
}

const ACCEPT = 'or set allowBasicOverHttp: true in the MultilegAgent options to accept the risk';

function overHttp(origin: string): string {
  return `refusing to send a Basic password in cleartext to ${origin}; use https, ${ACCEPT}`;
}

function overUnverified(origin: string, why: string): string {
  if (why === NOT_YET_CONNECTED)
    return `refusing to send a Basic password to ${origin} before its certificate is checked (rejectUnauthorized: false, no connection yet); give the CA that issued its certificate in connect.ca and drop rejectUnauthorized: false, ${ACCEPT}`;
  const fix =
    why === 'ERR_TLS_CERT_ALTNAME_INVALID'
      ? 'use the host name its certificate names'
      : 'give the CA that issued its certificate in connect.ca';
  return `refusing to send a Basic password to ${origin}: its certificate was not verified (rejectUnauthorized: false; ${why}), so whoever answered could read it; ${fix}, ${ACCEPT}`;
}

/** Options for {@link basicMechanism}. */
export interface BasicOptions {
  /**
   * Send Basic credentials to `http:` origins (and proxies), and over TLS whose server was not
   * verified ({@link LegInfo.unverifiedTls}), too. Default false.
   */
  readonly allowHttp?: boolean;
}

/** `Basic <base64(user:password)>` with both in UTF-8 (RFC 7617 §2.1). */
export function basicAuthorization(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`, 'utf8').toString('base64')}`;
}

class BasicContext implements MechanismContext {
  readonly #credentials: Credentials;
  #sent = false;

  constructor(credentials: Credentials) {
    this.#credentials = credentials;
  }

  get complete(): boolean {
    return this.#sent;
  }

  get identity(): string {
    return this.#credentials.username;
  }

  // RFC 7617 §2.1: the only charset a server may ask for is UTF-8, and UTF-8 is what we send anyway.
  async step(_challenge: Challenge | undefined, _leg: LegInfo): Promise<string> {
    if (this.#credentials.username.includes(':')) {
      throw new MechanismError('Basic', 'the user name contains ":", which Basic cannot carry (RFC 7617 §2)');
    }
    this.#sent = true;
    return basicAuthorization(this.#credentials.username, this.#credentials.password);
  }

  async finish(): Promise<void> {
    // Nothing comes back to verify.
  }
}

function cleartext(leg: LegInfo): boolean {
  return !leg.origin.toLowerCase().startsWith('https:');
}

/**
 * Basic with the given credentials. The user name is used as given (`DOMAIN\user` is a literal
 * name here); `credentials.domain` is ignored. Request-level, one round trip, proactive (the agent
 * sends it on the first leg once an origin is known to want Basic).
 */
export function basicMechanism(credentials: Credentials, options: BasicOptions = {}): Mechanism {
  const allowHttp = options.allowHttp === true;
  return {
    scheme: 'Basic',
    level: 'request',
    multileg: false,
    proactive: true,
    usesPassword: true,
    createContext: (leg) => {
      if (!allowHttp && cleartext(leg)) throw new BasicOverHttpError(leg.origin);
      // S4/M4: as readable over TLS that proved no server (rejectUnauthorized: false let it through).
      const why = allowHttp ? undefined : leg.unverifiedTls;
      if (why !== undefined) throw new BasicOverHttpError(leg.origin, why);
      return new BasicContext(credentials);
    },
  };
}
