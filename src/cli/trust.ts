/**
 * Where the command line sends credentials (issue 8, curl's rule): the URL's origin, the `--trust`
 * origins and host patterns (`https://*.corp.example.com[:port]`), and, with `--location-trusted`,
 * each origin a redirect leads to. Given to the agent as its `trustedOrigins` predicate.
 */
import { ConfigError } from '../errors.ts';

interface HostPattern {
  readonly protocol: string;
  /** `.corp.example.com`: the host must end with it (one or more labels before). */
  readonly suffix: string;
  readonly port: string;
}

const DEFAULT_PORT: Record<string, string> = { 'https:': '443', 'http:': '80' };
const portOf = (url: URL) => url.port || DEFAULT_PORT[url.protocol] || '';

/** Checks a `--trust` value: an origin (no scheme means https) or a `*.` host pattern. */
export function parseTrust(text: string): string {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `https://${text}`;
  const pattern = /^(https?):\/\/\*\.([a-z0-9.-]+)(?::(\d+))?\/?$/i.exec(withScheme);
  if (pattern) return withScheme.replace(/\/$/, '').toLowerCase();
  try {
    const url = new URL(withScheme);
    if ((url.protocol === 'https:' || url.protocol === 'http:') && (url.pathname === '/' || url.pathname === ''))
      return url.origin;
  } catch {}
  throw new ConfigError(
    `--trust ${text}: not an origin or host pattern (e.g. https://host:8443, https://*.corp.example.com)`,
  );
}

export class CliTrust {
  readonly #origins = new Set<string>();
  readonly #patterns: HostPattern[] = [];

  constructor(urlOrigin: string, trust: readonly string[]) {
    this.#origins.add(urlOrigin);
    for (const t of trust) {
      const m = /^(https?):\/\/\*(\.[a-z0-9.-]+)(?::(\d+))?$/.exec(t);
      if (m) this.#patterns.push({ protocol: `${m[1]}:`, suffix: m[2]!, port: m[3] ?? DEFAULT_PORT[`${m[1]}:`]! });
      else this.#origins.add(t);
    }
  }

  /** --location-trusted: an origin a redirect led to. */
  add(origin: string): void {
    this.#origins.add(origin);
  }

  trusts(origin: string): boolean {
    if (this.#origins.has(origin)) return true;
    const url = new URL(origin);
    return this.#patterns.some(
      (p) => url.protocol === p.protocol && url.hostname.endsWith(p.suffix) && portOf(url) === p.port,
    );
  }
}
