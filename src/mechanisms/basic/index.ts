/**
 * HTTP Basic (RFC 7617) as a {@link Mechanism}: `user:password` in UTF-8, base64. Refused over
 * cleartext `http:` unless the caller allows it, since the password travels readable.
 */
import type { Challenge } from '../../challenge/types.ts';
import { MechanismError, MechanismUnavailableError } from '../../errors.ts';
import type { Credentials, LegInfo, Mechanism, MechanismContext } from '../types.ts';

/**
 * Basic would send the password over a cleartext connection. The agent treats it as "Basic unusable
 * here" and tries the next offered scheme; when there is none, the caller gets this error.
 */
export class BasicOverHttpError extends MechanismUnavailableError {
  constructor(origin: string) {
    super(
      'Basic',
      `refusing to send a Basic password in cleartext to ${origin}; use https, or set allowBasicOverHttp: true in the MultilegAgent options to accept the risk`,
    );
  }
}

/** Options for {@link basicMechanism}. */
export interface BasicOptions {
  /** Send Basic credentials to `http:` origins (and proxies) too. Default false. */
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
      return new BasicContext(credentials);
    },
  };
}
