/** Service principal names for Negotiate: `HTTP@host` (GSS host-based service form). */
import { promises as dns } from 'node:dns';

export interface SpnOptions {
  readonly spn?: string;
  readonly serviceName?: string;
  readonly canonicalizeHost?: boolean;
  readonly includePort?: boolean;
}

/**
 * Normalises a caller-given SPN to the host-based service form the addon imports
 * (`GSS_C_NT_HOSTBASED_SERVICE`, `service@host`): `HTTP/host` and `HTTP/host@REALM` become `HTTP@host`
 * (the realm comes from krb5.conf's domain_realm mapping).
 */
export function normalizeSpn(spn: string): string {
  const slash = spn.indexOf('/');
  if (slash < 0) return spn;
  const service = spn.slice(0, slash);
  let host = spn.slice(slash + 1);
  const at = host.lastIndexOf('@');
  if (at >= 0) host = host.slice(0, at);
  return `${service}@${host}`;
}

/** Follows CNAME records from `host` (at most 8); returns `host` itself when there are none or DNS fails. */
export async function canonicalHost(
  host: string,
  resolveCname: (h: string) => Promise<string[]> = (h) => dns.resolveCname(h),
): Promise<string> {
  let cur = host;
  for (let i = 0; i < 8; i++) {
    let next: string[];
    try {
      next = await resolveCname(cur);
    } catch {
      break;
    }
    const n = next[0];
    if (!n || n === cur) break;
    cur = n.replace(/\.$/, '');
  }
  return cur;
}

/** The SPN for a leg: explicit `spn`, else `<serviceName>@<host>[:port]`. IPv6 brackets are dropped. */
export async function spnFor(
  o: SpnOptions,
  hostname: string,
  port: number,
  resolveCname?: (h: string) => Promise<string[]>,
): Promise<string> {
  const known = spnWithoutLookup(o, hostname, port);
  if (known !== undefined) return known;
  const host = (await canonicalHost(bare(hostname), resolveCname)).toLowerCase();
  return spnOf(o, host, port);
}

/**
 * {@link spnFor} where no DNS lookup is asked for (no `canonicalizeHost`): at once, no promise (per-request
 * Kerberos asks for every request). Undefined when the host is to be canonicalised.
 */
export function spnWithoutLookup(o: SpnOptions, hostname: string, port: number): string | undefined {
  if (o.spn) return normalizeSpn(o.spn);
  if (o.canonicalizeHost) return undefined;
  return spnOf(o, bare(hostname), port);
}

const bare = (hostname: string): string => hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
const spnOf = (o: SpnOptions, host: string, port: number): string =>
  `${o.serviceName ?? 'HTTP'}@${host}${o.includePort ? `:${port}` : ''}`;
