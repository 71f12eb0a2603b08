/**
 * Where the command line sends credentials (issue 8, curl's rule): the URL's origin, the `--trust`
 * origins and host patterns (`https://*.corp.example.com[:port]`, matched by the library's own
 * TrustPolicy), and, with `--location-trusted`, each origin a redirect leads to. Given to the agent
 * as its `trustedOrigins` predicate, so each of them counts as trusted explicitly.
 */
import { ConfigError } from '../errors.ts';
import { TrustPolicy } from '../trust/policy.ts';
import { forCli } from './explain.ts';

/** Checks a `--trust` value (no scheme means https): an origin or a `*.` host pattern. */
export function parseTrust(text: string): string {
  const entry = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `https://${text}`;
  try {
    new TrustPolicy([entry]);
  } catch (err) {
    // (The library's message shows the entry's user info as …@.)
    if (err instanceof ConfigError) throw new ConfigError(forCli(err.message));
    throw err;
  }
  return entry;
}

export class CliTrust {
  readonly #origins = new Set<string>();
  readonly #listed: TrustPolicy;

  constructor(urlOrigin: string, trust: readonly string[]) {
    this.#origins.add(urlOrigin);
    this.#listed = new TrustPolicy(trust);
  }

  /** --location-trusted: an origin a redirect led to. */
  add(origin: string): void {
    this.#origins.add(origin);
  }

  trusts(origin: string): boolean {
    return this.#origins.has(origin) || this.#listed.explicit(origin);
  }
}
