/**
 * Where a connection goes when the caller says where, not DNS (the agent's `connectTo` option;
 * curl's --resolve and --connect-to): one node of a farm behind a load balancer, a site before its
 * DNS exists. Only the address changes: the URL's host is still what TLS sends (SNI) and checks
 * the certificate against, what the Host header, cookies, `trustedOrigins` and the Kerberos SPN
 * use, and channel bindings come from the certificate of the server actually reached.
 */
import { isIP, type LookupFunction } from 'node:net';
import { type ConnectionOptions, checkServerIdentity, type PeerCertificate } from 'node:tls';
import { buildConnector } from 'undici';
import { ConfigError } from './errors.ts';
import { portOf, unbracketed } from './options.ts';

/** A connection the agent is about to make, as {@link ConnectTo} is asked about it. */
export interface ConnectTarget {
  /** The host it would connect to: the URL's (or the proxy URI's), lower case, an IPv6 address without brackets. */
  readonly hostname: string;
  readonly port: number;
  /**
   * `origin`: a connection straight to an origin. `tunnel`: the `host:port` a CONNECT asks a proxy
   * for (an `http://` origin behind a forwarding proxy is asked too: routed elsewhere, it goes
   * through a CONNECT tunnel instead, as curl's --connect-to does, since a forwarded request names
   * its host to the proxy). `proxy`: a connection to the proxy itself.
   */
  readonly via: 'origin' | 'tunnel' | 'proxy';
}

/** Where to connect instead (each part left out stays as it was). */
export interface ConnectRoute {
  /** Another host to connect to: a name (looked up in DNS, unless `addresses` are given) or an IP address. */
  readonly hostname?: string;
  readonly port?: number;
  /**
   * The addresses of the host connected to, instead of a DNS lookup (curl's --resolve): IPv4 or
   * IPv6 (no brackets), tried in the order given (Node's `autoSelectFamily`). Not used for `tunnel`:
   * the proxy looks up the name a CONNECT gives it.
   */
  readonly addresses?: readonly string[];
}

/**
 * Asked before each connection the agent makes (see {@link ConnectTarget.via}); undefined: connect
 * as usual. Runs synchronously; an exception fails that connection with it.
 */
export type ConnectTo = (target: ConnectTarget) => ConnectRoute | undefined;

/** Where one connection goes, once {@link ConnectTo} has been asked. */
export interface Dial {
  readonly hostname: string;
  readonly port: number;
  /** Answers with the route's addresses, when it gave several (one is connected to as the hostname). */
  readonly lookup?: LookupFunction;
  /** Whether the hook changed anything. */
  readonly routed: boolean;
}

/** Checks that `connectTo` is a function (or absent). */
export function checkConnectTo(value: unknown, option = 'connectTo'): ConnectTo | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'function')
    throw new ConfigError(
      `${option} must be a function ({ hostname, port, via }) => ({ hostname?, port?, addresses? }) | undefined, got ${value === null ? 'null' : typeof value}`,
      option,
    );
  return value as ConnectTo;
}

/**
 * Asks `connectTo` where a connection to `target` goes, and checks the answer: a route the
 * socket layer would misread (a port out of range, an address that is no IP address) is a
 * {@link ConfigError} naming it, not a connection somewhere else.
 */
export function dialFor(connectTo: ConnectTo | undefined, target: ConnectTarget): Dial {
  const same: Dial = { hostname: target.hostname, port: target.port, routed: false };
  if (!connectTo) return same;
  const route: unknown = connectTo(target);
  if (route === undefined || route === null) return same;
  const where = `connectTo (for ${target.via} ${target.hostname}:${target.port})`;
  if (typeof route !== 'object') throw new ConfigError(`${where} returned ${typeof route}, not a route`, 'connectTo');
  // A promise, or a misspelt field (`host`), would read as "no change" and connect to the real host.
  if (typeof (route as { then?: unknown }).then === 'function')
    throw new ConfigError(
      `${where} returned a promise: connectTo must answer at once, with a route or undefined`,
      'connectTo',
    );
  const unknown = Object.keys(route).filter((k) => k !== 'hostname' && k !== 'port' && k !== 'addresses');
  if (unknown.length > 0)
    throw new ConfigError(
      `${where} returned ${unknown.join(', ')}: a route has only hostname, port and addresses`,
      'connectTo',
    );
  const { hostname, port, addresses } = route as ConnectRoute;
  if (hostname !== undefined && (typeof hostname !== 'string' || hostname === ''))
    throw new ConfigError(`${where}: hostname must be a host name or an IP address`, 'connectTo');
  if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536))
    throw new ConfigError(`${where}: port must be a whole number from 1 to 65535, got ${String(port)}`, 'connectTo');
  if (
    addresses !== undefined &&
    (!Array.isArray(addresses) || addresses.length === 0 || addresses.some((a) => typeof a !== 'string' || !isIP(a)))
  )
    throw new ConfigError(`${where}: addresses must be a list of IP addresses (IPv6 without brackets)`, 'connectTo');
  const name = hostname === undefined ? target.hostname : unbracketed(hostname);
  const dial = { port: port ?? target.port, routed: true };
  // A CONNECT names the host; the proxy looks it up.
  if (addresses === undefined || target.via === 'tunnel') return { ...dial, hostname: name };
  if (addresses.length === 1 || isIP(name)) return { ...dial, hostname: addresses[0]! };
  return { ...dial, hostname: name, lookup: addressLookup(addresses) };
}

/** A `lookup` for net/tls `connect` that answers with `addresses`, in order, whatever the name. */
function addressLookup(addresses: readonly string[]): LookupFunction {
  const all = addresses.map((address) => ({ address, family: isIP(address) }));
  return (_hostname, options, callback) => {
    const family = options.family === 4 || options.family === 6 ? options.family : 0;
    const fitting = family === 0 ? all : all.filter((a) => a.family === family);
    if (fitting.length === 0) {
      const err = Object.assign(new Error(`no IPv${family} address among ${addresses.join(', ')}`), {
        code: 'ENOTFOUND',
      });
      callback(err, '', 0);
    } else if (options.all) (callback as (e: null, a: typeof fitting) => void)(null, fitting);
    else callback(null, fitting[0]!.address, fitting[0]!.family);
  };
}

/**
 * The certificate check of `tls` (Node's by default), always against `hostname`, whatever host the
 * socket was connected to (an address from connectTo, a proxy carrying a tunnel).
 */
export function checkedAgainst(
  hostname: string,
  tls: Pick<ConnectionOptions, 'checkServerIdentity'>,
): (host: string, cert: PeerCertificate) => Error | undefined {
  const check = tls.checkServerIdentity ?? checkServerIdentity;
  return (_host, cert) => check(hostname, cert);
}

/**
 * undici's connector for these options, with each connection to an origin going where `connectTo`
 * says. A routed connection keeps the URL's host for TLS: undici takes the SNI name from
 * `host` (the URL's authority, unchanged here), and the certificate is checked against that host
 * (an IP address in the URL included, which has no SNI) whatever address was reached.
 */
export function routedConnector(
  options: buildConnector.BuildOptions,
  connectTo: ConnectTo | undefined,
): buildConnector.connector {
  const base = buildConnector(options);
  if (!connectTo) return base;
  return (opts, callback) => {
    let dial: Dial;
    try {
      dial = dialFor(connectTo, { hostname: unbracketed(opts.hostname), port: portOf(opts), via: 'origin' });
    } catch (err) {
      callback(err as Error, null);
      return;
    }
    if (!dial.routed) return base(opts, callback);
    // A connector of its own for this one connection: undici passes no lookup per call.
    const routed = buildConnector({
      ...options,
      ...(dial.lookup ? { lookup: dial.lookup } : {}),
      // Against the name TLS is for, as undici's connector has Node check it (S1: behind undici's dns
      // interceptor `opts.hostname` is the address, `opts.servername` the name), else the URL's host.
      checkServerIdentity: checkedAgainst(
        opts.servername || (options as ConnectionOptions).servername || unbracketed(opts.hostname),
        options as ConnectionOptions,
      ),
    } as buildConnector.BuildOptions);
    return routed({ ...opts, hostname: dial.hostname, port: String(dial.port) }, callback);
  };
}
