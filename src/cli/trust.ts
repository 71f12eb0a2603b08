/**
 * Where the command line sends credentials (issue 8, curl's rule): the URL's origin, the `--trust`
 * origins and host patterns (`https://*.corp.example.com[:port]`, matched by the library's own
 * TrustPolicy), and, with `--location-trusted`, each origin a redirect leads to — but never a host
 * to which the netrc file the credentials came from gives others. Given to the agent as its
 * `trustedOrigins` predicate, so each of them counts as trusted explicitly.
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
  readonly #host: string;
  readonly #namesOther: ((host: string) => boolean) | undefined;
  /** What {@link namesOther} said of each origin asked about (the predicate runs per request). */
  readonly #verdicts = new Map<string, boolean>();

  /**
   * `namesOther`: where the credentials came from a netrc file, whether it gives a host other
   * credentials than the URL host's (credentials.ts): none go there, whatever --trust and
   * --location-trusted say (curl's netrc is per host: CVE-2024-11053, CVE-2025-0167).
   */
  constructor(urlOrigin: string, trust: readonly string[], namesOther?: (host: string) => boolean) {
    this.#origins.add(urlOrigin);
    this.#listed = new TrustPolicy(trust);
    this.#host = new URL(urlOrigin).hostname;
    this.#namesOther = namesOther;
  }

  /** --location-trusted: an origin a redirect led to. */
  add(origin: string): void {
    this.#origins.add(origin);
  }

  trusts(origin: string): boolean {
    return (this.#origins.has(origin) || this.#listed.explicit(origin)) && !this.namesOther(origin);
  }

  /**
   * The netrc file the credentials came from gives `origin`'s host credentials of its own (another
   * entry, an entry without a password, an empty `default`): the command's are not sent there.
   */
  namesOther(origin: string): boolean {
    if (!this.#namesOther) return false;
    let verdict = this.#verdicts.get(origin);
    if (verdict === undefined) {
      const host = new URL(origin).hostname;
      verdict = host !== this.#host && this.#namesOther(host);
      this.#verdicts.set(origin, verdict);
    }
    return verdict;
  }
}
