import { isIP } from 'node:net';
import type { Dispatcher } from 'undici';
import type { HeaderMap } from '../headers.ts';
import { unbracketed } from '../options.ts';

const DEFAULT_PORTS: Readonly<Record<string, string>> = { 'https:': '443', 'http:': '80' };
/** A Host header value that is a host and port alone (no path, query, userinfo or space). */
const HOST_AND_PORT = /^[^/?#@\\\s]+$/;

/** What a Host header names, read with `origin`'s scheme; undefined for one that is no plain host and port. */
export function hostUrl(origin: string, host: string): URL | undefined {
  if (!HOST_AND_PORT.test(host)) return undefined;
  try {
    return new URL(`${origin.slice(0, origin.indexOf(':'))}://${host}`);
  } catch {
    return undefined;
  }
}

/**
 * Whether the caller's Host header sends the request to another authority than `origin` (S1, S6).
 * undici makes a Host header the HTTP/2 `:authority` and the HTTP/1.1 Host, and the TLS server name
 * its certificate is checked against (unless `servername` is given): a gateway that copies its
 * incoming headers, Host among them, would have the agent's password, ticket or authenticated
 * session serve whichever tenant that Host names on a shared front end (review r40). Such a request
 * goes without the agent's credentials and its cookie jar, on connections of its own. When in
 * doubt it is elsewhere: a Host that is no plain host and port, two of them, or one the URL parser
 * reads as the origin but a front end would read as written (`localhos%74`, `127.1`, port `0443`).
 * Not elsewhere: no Host header, the origin's own (any case, its default port written or not), and
 * undici's `dns` interceptor's shape: the address it resolved in `origin`, the name in Host with
 * the same port (and in the dispatch option `servername`, which undici's own retry on the other
 * address family leaves out; over TLS undici checks the certificate against that name either way).
 */
export function hostElsewhere(origin: string, headers: HeaderMap, opts?: Dispatcher.DispatchOptions): boolean {
  const host = headers.host;
  if (host === undefined) return false;
  const named = typeof host === 'string' ? hostUrl(origin, host) : undefined;
  if (!named || typeof host !== 'string') return true;
  const written = host.toLowerCase();
  if (written !== named.host && written !== `${named.host}:${DEFAULT_PORTS[named.protocol]}`) return true;
  if (named.origin === origin) return false;
  const dialled = new URL(origin);
  // (undici reads `servername` from the dispatch options; its types do not declare it.)
  const servername = (opts as { servername?: unknown } | undefined)?.servername;
  const dnsShape =
    isIP(unbracketed(dialled.hostname)) !== 0 &&
    isIP(unbracketed(named.hostname)) === 0 &&
    named.port === dialled.port &&
    (servername == null || (typeof servername === 'string' && servername.toLowerCase() === named.hostname));
  return !dnsShape;
}

/**
 * Whether the dispatch option `servername` names another host than the one the request goes to (S1,
 * S6): undici makes it the TLS server name (SNI) and checks the certificate against it, so a shared
 * front end that routes by SNI (a TLS pass-through balancer, a CDN) hands the connection to the
 * tenant it names, whose certificate passes, whatever the origin or Host say: an agent trusting
 * `https://10.0.0.5` sent its password there, as a copied Host did before review r48. The host
 * expected: the Host header's where one is given (its `dns` interceptor shape, or the origin's own;
 * {@link hostElsewhere} decides the rest), else the origin's. Only over https: undici uses no
 * server name for http. An empty or absent `servername` is undici's default (the Host's or the
 * origin's name); one that is no string counts as elsewhere (fail safe).
 */
export function servernameElsewhere(origin: string, headers: HeaderMap, opts?: Dispatcher.DispatchOptions): boolean {
  // (undici reads `servername` from the dispatch options; its types do not declare it.)
  const servername = (opts as { servername?: unknown } | undefined)?.servername;
  if (servername == null || servername === '' || !origin.startsWith('https:')) return false;
  if (typeof servername !== 'string') return true;
  const host = headers.host;
  const named = (typeof host === 'string' ? hostUrl(origin, host) : undefined) ?? new URL(origin);
  return servername.toLowerCase() !== unbracketed(named.hostname);
}

/**
 * Whether the request target `path` is in absolute form (`https://other.example/x`, which undici
 * takes and writes as is) naming another origin than `origin`, or one that cannot be read (S1, S6).
 * A server routes such a request by the target's host, not the Host header (RFC 9112 §3.2.2): the
 * agent's password would go to whichever site it names on a shared front end (review r49). Paths
 * (`/…`) and `*` are not.
 */
export function targetElsewhere(origin: string, path: string): boolean {
  const c = path.charCodeAt(0);
  if (c === 0x2f || path === '*') return false;
  try {
    return new URL(path).origin !== origin;
  } catch {
    return true;
  }
}
