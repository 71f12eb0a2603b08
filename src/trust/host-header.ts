import { isIP } from 'node:net';
import type { Dispatcher } from 'undici';
import type { HeaderMap } from '../headers.ts';
import { unbracketed } from '../options.ts';
import { HOST_AND_PORT } from './redirects.ts';

/**
 * Whether the caller's Host header sends the request to another authority than `origin` (S1, S6).
 * undici makes a Host header the HTTP/2 `:authority` and the HTTP/1.1 Host, and the TLS server name
 * its certificate is checked against (unless `servername` is given): a gateway that copies its
 * incoming headers, Host among them, would have the agent's password, ticket or authenticated
 * session serve whichever tenant that Host names on a shared front end (review r40). Such a request
 * is the caller's own, as one with its own Authorization is: no agent credentials, no cookie jar,
 * connections of its own. When in doubt (a Host that is no authority, two of them) it is elsewhere.
 * Not elsewhere: no Host header, one naming `origin` itself, and undici's `dns` interceptor's shape
 * (an address in `origin`, the name in Host and in the dispatch option `servername`, which TLS then
 * checks).
 */
export function hostElsewhere(origin: string, headers: HeaderMap, opts?: Dispatcher.DispatchOptions): boolean {
  const host = headers.host;
  if (host === undefined) return false;
  if (typeof host !== 'string' || !HOST_AND_PORT.test(host)) return true;
  let named: URL;
  try {
    named = new URL(`${origin.slice(0, origin.indexOf(':'))}://${host}`);
  } catch {
    return true;
  }
  if (named.origin === origin) return false;
  const address = unbracketed(new URL(origin).hostname);
  // (undici reads `servername` from the dispatch options; its types do not declare it.)
  const servername = (opts as { servername?: unknown } | undefined)?.servername;
  return !(isIP(address) !== 0 && typeof servername === 'string' && servername.toLowerCase() === named.hostname);
}
