/**
 * Basic (RFC 7617) for proxies only: the credentials a caller gives in `proxy.credentials` are meant for
 * that proxy, which is reached by its configured address (curl and browsers send them the same way).
 */
import type { Credentials, Mechanism, MechanismContext } from '../mechanisms/types.ts';

class BasicContext implements MechanismContext {
  readonly #credentials: Credentials;
  #complete = false;
  constructor(credentials: Credentials) {
    this.#credentials = credentials;
  }
  get complete(): boolean {
    return this.#complete;
  }
  get identity(): string {
    return this.#credentials.username;
  }
  async step(): Promise<string> {
    this.#complete = true;
    const { username, password } = this.#credentials;
    return `Basic ${Buffer.from(`${username}:${password}`, 'utf8').toString('base64')}`;
  }
  async finish(): Promise<void> {}
}

/** Basic to a proxy: one leg, per request. */
export function proxyBasicMechanism(credentials: Credentials): Mechanism {
  return {
    scheme: 'Basic',
    level: 'request',
    multileg: false,
    proactive: true,
    createContext: () => new BasicContext(credentials),
  };
}
