/**
 * curl's --resolve and --connect-to, read as curl 7.88 reads them and mapped onto the agent's
 * `connectTo`: the URL keeps its name (TLS, Host, cookies, --trust, the Kerberos SPN); only the
 * address connected to changes.
 */
import { isIP } from 'node:net';
import type { ConnectRoute, ConnectTarget, ConnectTo } from '../connect-to.ts';
import { EXIT } from './explain.ts';
import { UsageError } from './options.ts';

/** One --connect-to entry: `HOST1:PORT1:HOST2:PORT2`, an empty part being any host or port (1, 2) or the same (3, 4). */
interface ConnectToEntry {
  /** '' matches any host; else compared without case (an IPv6 address in brackets, as curl writes it). */
  readonly host: string;
  readonly port: number | undefined;
  readonly toHost: string | undefined;
  readonly toPort: number | undefined;
}

/**
 * `text` as a port number, read as curl 7.88 reads one with C's strtoul/strtol: white space, then a
 * `+` or `-`, then decimal digits (leading zeros too: `018931` is 18931, not octal), and nothing
 * after them; 0 to 65535 (`-0` is 0, any other negative is no port). Undefined when it is none, or
 * 0 without `allowZero`.
 */
function portNumber(text: string, allowZero: boolean): number | undefined {
  const m = /^[ \t\n\v\f\r]*([+-]?)(\d+)$/.exec(text);
  if (!m) return undefined;
  const n = Number(m[2]);
  if (m[1] === '-' && n !== 0) return undefined;
  return n <= 65535 && (allowZero || n > 0) ? n : undefined;
}

/**
 * A connection --connect-to sends to port 0: curl connects there and the system refuses it (curl's
 * 7, "Failed to connect to ADDRESS port 0"); Node does not connect to port 0 at all, so it is
 * refused here, with the error the system gives.
 */
function refusedAtPortZero(address: string): Error {
  return Object.assign(new Error(`connect ECONNREFUSED ${address}:0`), {
    code: 'ECONNREFUSED',
    errno: -111,
    syscall: 'connect',
    address,
    port: 0,
  });
}

const lower = (host: string) => host.toLowerCase();

/** An IP address of the other family than -4 or -6 asks for: curl does not connect (its 7). */
function otherFamily(family: 4 | 6, address: string, port: number): Error {
  return Object.assign(
    new Error(
      `-${family}: ${address} is an IPv${family === 4 ? 6 : 4} address; drop -${family}, or give a name or address of IPv${family}`,
    ),
    { code: 'EAFNOSUPPORT', address, port },
  );
}

/** curl 7.88 answers `localhost` and `*.localhost` itself (127.0.0.1 and ::1, RFC 6761), whatever the system's resolver says. */
const isLocalhost = (host: string) => host === 'localhost' || host.endsWith('.localhost');

/**
 * The --resolve entries in order, as curl loads them into its DNS cache: `[+]HOST:PORT:ADDR[,ADDR]…`
 * adds (or replaces) HOST:PORT's addresses (IPv6 ones in brackets or not; `+` is curl's
 * "may time out", the same here), `-HOST:PORT` removes an earlier one; `*` as HOST is any host
 * (curl 7.86+). An entry curl cannot parse is its 49, before anything is sent (curl's words).
 */
export function parseResolve(entries: readonly string[]): Map<string, readonly string[]> {
  const table = new Map<string, readonly string[]>();
  for (const entry of entries) {
    if (entry.startsWith('-')) {
      // curl only says "Bad syntax" in -v for a removal it cannot read, and goes on (its sscanf
      // "%d" reads the port: white space, a sign, digits, whatever follows them).
      const m = /^-([^:]+):([ \t\n\v\f\r]*[+-]?\d+)/.exec(entry);
      const port = m && portNumber(m[2]!, true);
      if (m && port !== undefined) table.delete(`${lower(m[1]!)}:${port}`);
      continue;
    }
    const bad = () =>
      new UsageError(
        `Couldn't parse --resolve entry '${entry}': give [+]HOST:PORT:ADDRESS[,ADDRESS]... (IP addresses; IPv6 ones may be in brackets), or -HOST:PORT to remove one`,
        EXIT.optionSyntax,
      );
    const text = entry.startsWith('+') ? entry.slice(1) : entry;
    const m = /^([^:]*):([^:]*):(.*)$/s.exec(text);
    const port = m ? portNumber(m[2]!, true) : undefined;
    if (!m || port === undefined) throw bad();
    const addresses: string[] = [];
    for (let address of m[3]!.split(',')) {
      if (address.startsWith('[')) {
        if (!address.endsWith(']')) throw bad();
        address = address.slice(1, -1);
      }
      if (address === '') continue; // curl skips empty ones
      if (!isIP(address) || address.includes('%')) throw bad();
      addresses.push(address);
    }
    if (addresses.length === 0) throw bad();
    table.set(`${lower(m[1]!)}:${port}`, addresses);
  }
  return table;
}

/**
 * The --connect-to entries, each checked now: curl reads an entry only when a request's host and
 * port match it (a PORT2 that is no port is then its 49, "No valid port number in connect to host
 * string"; here that is said before anything is sent, whatever the URL), and passes over one that
 * cannot match without a word, as here: no PORT1 part (`HOST1:PORT1` alone), or a PORT1 that is no
 * port of a URL (not a number, 0, over 65535, with text after it).
 */
export function parseConnectTo(entries: readonly string[]): ConnectToEntry[] {
  return entries.flatMap((entry) => {
    const bad = (why: string) =>
      new UsageError(
        `--connect-to '${entry}': ${why}; give HOST1:PORT1:HOST2:PORT2 (an empty part: any host or port, or the same one)`,
        EXIT.optionSyntax,
      );
    // HOST1: up to its colon; an IPv6 address in brackets as curl compares it (with the brackets).
    const hostEnd = entry.startsWith('[') ? entry.indexOf(']') + 1 : entry.indexOf(':');
    // curl 7.88 passes over what matches no URL: no HOST1 end, no PORT1 end, a PORT1 no port is.
    if (hostEnd <= 0 && !entry.startsWith(':')) return [];
    if (entry[hostEnd] !== ':') return [];
    const portEnd = entry.indexOf(':', hostEnd + 1);
    if (portEnd < 0) return [];
    const portText = entry.slice(hostEnd + 1, portEnd);
    const port = portText === '' ? undefined : portNumber(portText, false);
    if (portText !== '' && port === undefined) return [];
    const rest = entry.slice(portEnd + 1);
    // HOST2[:PORT2], HOST2 an IPv6 address in brackets or a name (curl's parse_connect_to_host_port).
    let toHost = rest;
    let toPortText = '';
    const close = rest.startsWith('[') ? rest.indexOf(']') : -1;
    if (rest.startsWith('[') && close < 0) throw bad('Invalid IPv6 address format');
    const colon = rest.indexOf(':', close + 1);
    if (colon >= 0) {
      toHost = rest.slice(0, colon);
      toPortText = rest.slice(colon + 1);
    }
    if (close >= 0 && toHost.length !== close + 1) throw bad('Invalid IPv6 address format');
    if (close >= 0) toHost = toHost.slice(1, -1);
    // Port 0 is taken, as curl takes it: the connection there is refused (curl's 7).
    const toPort = toPortText === '' ? undefined : portNumber(toPortText, true);
    if (toPortText !== '' && toPort === undefined)
      throw bad(`No valid port number in connect to host string (${toPortText})`);
    return [
      {
        host: lower(entry.slice(0, hostEnd)),
        port,
        toHost: toHost === '' ? undefined : lower(toHost),
        toPort,
      },
    ];
  });
}

/** What --resolve and --connect-to say, for the agent's `connectTo` and for -v. */
export class Routes {
  readonly #resolve: Map<string, readonly string[]>;
  readonly #connectTo: readonly ConnectToEntry[];
  /** -4 or -6: only addresses of that family (the agent's `connect.family` for names DNS answers). */
  readonly #family: 4 | 6 | undefined;

  constructor(resolve: readonly string[], connectTo: readonly string[], family?: 4 | 6) {
    this.#resolve = parseResolve(resolve);
    this.#connectTo = parseConnectTo(connectTo);
    this.#family = family;
  }

  /** -v's lines for the --resolve entries, as curl prints them when it loads them. */
  added(): string[] {
    return [...this.#resolve].map(([key, addresses]) => `* Added ${key}:${addresses.join(',')} to DNS cache`);
  }

  /** The agent's `connectTo`: curl's rules for each connection (see {@link ConnectTarget.via}). */
  readonly connectTo: ConnectTo = ({ hostname, port, via }: ConnectTarget): ConnectRoute | undefined => {
    // curl resolves a proxy's name through its DNS cache too; --connect-to is for the origin only.
    if (via === 'proxy') {
      const addresses = this.#fitting(hostname, port);
      return addresses ? { addresses } : undefined;
    }
    const moved = this.#moved(hostname, port);
    const addresses = via === 'tunnel' ? undefined : this.#fitting(moved?.hostname ?? hostname, moved?.port ?? port);
    if (moved?.port === 0) throw refusedAtPortZero(addresses?.[0] ?? moved.hostname ?? hostname);
    // Through a proxy the CONNECT names the host: the proxy looks it up, not --resolve.
    if (via === 'tunnel') return moved;
    return addresses ? { ...moved, addresses } : moved;
  };

  /** curl's first matching --connect-to entry that names a HOST2 or a PORT2 (one with neither is passed over). */
  #moved(hostname: string, port: number): { hostname?: string; port?: number } | undefined {
    const host = isIP(hostname) === 6 ? `[${hostname}]` : hostname;
    for (const e of this.#connectTo) {
      if ((e.host !== '' && e.host !== host) || (e.port !== undefined && e.port !== port)) continue;
      if (e.toHost === undefined && e.toPort === undefined) continue;
      return {
        ...(e.toHost !== undefined ? { hostname: e.toHost } : {}),
        ...(e.toPort !== undefined ? { port: e.toPort } : {}),
      };
    }
    return undefined;
  }

  /**
   * The addresses to connect to for host:port: its --resolve entry's, of -4's or -6's family only
   * (none of it: the entry is passed over and the name resolved as without it, curl's way); with -4
   * or -6, also an IP address of the other family refused (curl's 7) and `localhost` answered as
   * curl answers it. Undefined: DNS (the agent's `connect.family`).
   */
  #fitting(hostname: string, port: number): readonly string[] | undefined {
    const addresses = this.#addresses(hostname, port);
    const family = this.#family;
    if (family === undefined) return addresses;
    const fit = addresses?.filter((a) => isIP(a) === family);
    if (fit && fit.length > 0) return fit;
    const literal = isIP(hostname);
    if (literal !== 0 && literal !== family) throw otherFamily(family, hostname, port);
    if (literal === 0 && isLocalhost(lower(hostname))) return [family === 4 ? '127.0.0.1' : '::1'];
    return undefined;
  }

  /** The --resolve addresses for host:port (then `*`:port, curl's wildcard). */
  #addresses(hostname: string, port: number): readonly string[] | undefined {
    return this.#resolve.get(`${lower(hostname)}:${port}`) ?? this.#resolve.get(`*:${port}`);
  }
}
