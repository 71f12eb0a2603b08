/**
 * Proxy options and where a request goes (H5): the `proxy` option, or `HTTPS_PROXY` / `HTTP_PROXY` /
 * `NO_PROXY` read as curl, .NET and Go read them (https targets: `HTTPS_PROXY` alone).
 */
import { BlockList, isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { DEFAULT_SCHEME_ORDER } from '../challenge/index.ts';
import { type ConnectTo, dialFor } from '../connect-to.ts';
import { ConfigError, InvalidTokenError, type MultilegError } from '../errors.ts';
import { LapsingMap } from '../lapsing-map.ts';
import { basicMechanism } from '../mechanisms/basic/index.ts';
import { digestMechanism } from '../mechanisms/digest/index.ts';
import { type NegotiateOptions, negotiateMechanism, PROXY_KERBEROS_NAMES } from '../mechanisms/negotiate/mechanism.ts';
import { ntlmMechanism } from '../mechanisms/ntlm/index.ts';
import { MechanismSet } from '../mechanisms/registry.ts';
import { type Credentials, type Mechanism, sameCredentials } from '../mechanisms/types.ts';
import {
  checkNames,
  checkSchemes,
  MAX_TIMER_MS,
  NEGOTIATE_NAMES,
  portOf,
  positive,
  type SchemeName,
  unbracketed,
} from '../options.ts';
import { CredentialProof } from '../session/credential-proof.ts';
import { ProvedIdentity } from '../session/proved-identity.ts';
import type { RefusalMemory } from '../session/refusal-memory.ts';
import { ProxyUrlError } from './errors.ts';

/** The `proxy` option of {@link MultilegAgent}. */
export interface ProxyOptions {
  /**
   * `http://host:port` or `https://host:port` (TLS to the proxy). `user:password@` in it become
   * `credentials`. Default: `HTTPS_PROXY` for https targets, `HTTP_PROXY` for http ones (and
   * `NO_PROXY`); not `HTTP_PROXY` under CGI (`REQUEST_METHOD` set), where a request's `Proxy` header
   * sets it ("httpoxy"). With `HTTP_PROXY` alone, https targets go directly, as with curl, .NET and
   * Go (undici's EnvHttpProxyAgent sends them to `HTTP_PROXY`'s proxy, as this agent did): set
   * `HTTPS_PROXY` too, or give `uri`, to send them through that proxy.
   */
  readonly uri?: string;
  /**
   * For the proxy only (never sent to origins): NTLM, Digest, Basic, and Negotiate's NTLM fallback.
   * Copied as the agent's `credentials` are (change them with `setProxyCredentials`); `null` is none.
   */
  readonly credentials?: Credentials | null;
  /** Scheme preference towards the proxy, strongest first. Default Negotiate > NTLM > Digest > Basic. */
  readonly schemes?: readonly SchemeName[];
  /**
   * Negotiate to the proxy: SPN `HTTP@<proxy host>` unless `spn` is given; credentials are never
   * delegated to a proxy. Mutual authentication defaults to `optional` (proxies rarely send a final
   * token; one that is sent is verified, whatever the status). With `mutualAuth: 'required'` a 2xx
   * without it (a CONNECT's too) is a `MutualAuthError`; another answer without it (a forwarded 403,
   * a 5xx) is the caller's, proving nothing — the origins' rule (M2). `false` disables Negotiate
   * towards the proxy.
   *
   * Whose Kerberos identity: the agent's. Unless these options name one of their own (any of
   * `ccache`, `keytab`, `principal`: then those, and nothing of the agent's), the agent's
   * `negotiate.ccache`, `negotiate.keytab` and `negotiate.principal` carry over, so the proxy sees
   * the same principal as the origins. Settings that belong to one target (`spn`, `serviceName`,
   * `includePort`, `canonicalizeHost`, `channelBindings`, `mech`, `mutualAuth`) and `backend` do
   * not carry over; without an identity in either, the process's default ticket cache is used —
   * also when the agent's `negotiate` is `false`, which is the origins' alone: only `false` here
   * keeps GSS-API from being asked for a ticket for the proxy.
   */
  readonly negotiate?: Omit<NegotiateOptions, 'credentials' | 'delegate'> | false;
  /** Extra or replacement mechanisms towards the proxy, keyed by scheme. */
  readonly mechanisms?: readonly Mechanism[];
  /**
   * TLS options for an `https://` proxy (ca, cert, key, ...). Not `ALPNProtocols`: the agent offers
   * `http/1.1` for CONNECT tunnels, `h2` and `http/1.1` for forwarded requests (`allowH2`). Its
   * `family` (4 or 6, net.connect's) reaches a plain `http://` proxy's connection too.
   */
  readonly connect?: ConnectionOptions;
  /**
   * Hosts not to proxy, in NO_PROXY syntax (`*`, `host`, `.suffix`, `*.suffix`, `host:port`, and
   * `address/bits` ranges such as `10.0.0.0/8` for hosts written as IP addresses, as curl 7.86+). Default:
   * the `NO_PROXY` environment variable when the proxy comes from the environment, none otherwise.
   */
  readonly noProxy?: string;
  /**
   * Plain-http targets: `forward` (default) sends absolute-form requests to the proxy, which sees
   * them (and may answer with `Proxy-support` / `Remote-http-version`, H3/H4); `tunnel` uses
   * CONNECT for them too.
   */
  readonly http?: 'forward' | 'tunnel';
  /**
   * A forwarded (plain-http) request's final 407 — one the proxy's mechanisms cannot answer (no
   * `credentials` for the scheme it offers, or only mechanisms that cannot run here, such as
   * Negotiate without a Kerberos ticket), or the proxy's refusal of the credentials — is the
   * caller's response, as curl shows it, instead of {@link ProxyAuthenticationError}. Default
   * `false`: `fetch` turns a 407 into a bare network error, where the typed error names the fix.
   * `multileg:proxy-unanswered` (diagnostics channel) says why no credential was sent. A mechanism
   * that cannot run shows it only once tried, after the 407 was read: the 407 is kept meanwhile (its
   * body bounded by `limits.maxChallengeBodyBytes`; one cut there leaves the error) and delivered
   * then, so the request goes to the proxy once. A CONNECT's 407 is always the error (no tunnel, no
   * response).
   */
  readonly deliver407?: boolean;
  /**
   * Bound in ms on connecting through the proxy, one budget for a connection's steps together (as
   * curl's --connect-timeout): the TCP (and, for an `https://` proxy, TLS) connection to the proxy,
   * the proxy's answer to each CONNECT, and the TLS handshake with the origin inside a CONNECT
   * tunnel; waits for leave to send the credentials and the mechanism's steps do not count. The
   * CONNECT exchange as a whole, and a forwarded request's 407 exchange, are bounded by
   * `limits.handshakeTimeout`, the proxy mechanism's own steps included (`ProxyTimeoutError`).
   * Default 10 000 (undici's connect timeout).
   */
  readonly connectTimeout?: number;
}

/** One proxy, resolved: address, its own mechanisms. */
export interface ResolvedProxy {
  /** `http://host:port` / `https://host:port`, without userinfo: safe to print. */
  readonly origin: string;
  readonly hostname: string;
  readonly port: number;
  readonly tls: boolean;
  readonly connect: ConnectionOptions;
  /** Replaced, with {@link account}, when the agent's proxy credentials are (ProxyResolver.setCredentials). */
  mechanisms: MechanismSet;
  readonly http: 'forward' | 'tunnel';
  /** See {@link ProxyOptions.deliver407}. */
  readonly deliver407: boolean;
  /** See {@link ProxyOptions.connectTimeout}. */
  readonly connectTimeout: number;
  /** The agent's `connectTo`: where connections to the proxy, and the CONNECTs through it, go. */
  readonly connectTo?: ConnectTo;
  /**
   * Whether the proxy credentials work at this proxy: its connections authenticate one at a time
   * until they do, and not at all for a while after it refused them (account lockout).
   */
  readonly proof: CredentialProof;
  /** Who the newest-admitted handshake proved the agent to be at this proxy, for all the agent's pools (S6). */
  readonly proved: ProvedIdentity;
  /**
   * The user name of `proxy.credentials` (or the URI's user:password) when given: errors then do not
   * ask for them, and setProxyCredentials tells two proxies' credentials apart by it.
   */
  account: string | undefined;
  /**
   * Where the proxy credentials came from, as errors name it in their fix (a user who never set
   * `proxy.credentials` is not told to check them): `proxy.credentials`, the user:password in the
   * proxy URL (`proxy.uri`, or the environment variables named), or setProxyCredentials.
   */
  credentialsFrom: string;
  /**
   * The proxy took no part in an opening NEGOTIATE (`proxy.schemes: ['NTLM']`): it let that CONNECT
   * through, or its 407 carried no NTLM challenge. Later tunnels wait for its 407, as origins do
   * (OriginMemory.openedInVain).
   */
  openedInVain: boolean;
  /**
   * The per-request scheme (Basic, Digest) this proxy's last 407 was answered with: a new
   * connection's first request carries it unasked, as curl does, with leave only (R4). Without it a
   * proxy that closes the connection after every response would get a bare request on each new
   * connection, and never the answer to its 407.
   */
  perRequest: Mechanism | undefined;
  /**
   * Until when (ms since the epoch) {@link perRequest} is taken up, when the proxy also offered a
   * scheme that could not run here (Negotiate without a Kerberos ticket): after it a new
   * connection goes bare again, so that scheme is tried again (after a kinit) rather than the
   * password sent unasked for good. Infinity when nothing offered was skipped.
   */
  perRequestUntil: number;
  /**
   * Schemes (by lower-case key) found unusable with this proxy, with why, for every connection to
   * it for as long as an origin remembers such a scheme (R4, `unusableUntil`): one that could not
   * run here (no Kerberos ticket: a second; a KDC that did not answer: a few seconds), or whose
   * challenge, the proxy's answer to its first leg, could not be read (T2: its NTLM CHALLENGE
   * malformed). Meanwhile its 407s are answered with the next scheme they offer, not that one
   * again on every tunnel. setProxyCredentials forgets the former, not the latter: the proxy
   * sent it, and other credentials do not mend it.
   */
  readonly unusable: LapsingMap<string, { readonly scheme: string; readonly error: MultilegError }>;
}

/** Every option of {@link ProxyOptions} (the compiler keeps this list whole). */
const PROXY_OPTION_NAMES: Record<keyof ProxyOptions, true> = {
  uri: true,
  credentials: true,
  schemes: true,
  negotiate: true,
  mechanisms: true,
  connect: true,
  noProxy: true,
  http: true,
  deliver407: true,
  connectTimeout: true,
};

/**
 * Every option `proxy.negotiate` takes: the agent's `negotiate` ones but its trust hook
 * (`passwordAllowed`); the proxy's password is `proxy.credentials`.
 */
const { passwordAllowed: _agentsOnly, ...PROXY_NEGOTIATE_NAMES } = NEGOTIATE_NAMES;

/**
 * The `proxy` option's shape, checked before anything is read from it: a misspelt name (`url` for
 * `uri`, `noproxy`) was ignored without a word, and with `credentials` beside it those went to the
 * proxy the environment names instead (S1, review r68); one in `proxy.negotiate` (`principle`)
 * made the proxy's Kerberos run as the agent's own identity instead of the one named; a `noProxy`
 * that is no string failed every request with a TypeError.
 *
 * @throws {ConfigError} naming the option.
 */
function checkProxyOption(option: unknown): void {
  if (option === undefined || option === false || typeof option === 'string') return;
  // A URL object has no options of its own to check: it read as `{}`, the environment's proxies.
  if (option instanceof URL)
    throw new ConfigError(
      'proxy is a URL object: give its text, proxy: url.href (or proxy: { uri: url.href })',
      'proxy',
    );
  if (option === null || typeof option !== 'object' || Array.isArray(option))
    throw new ConfigError(
      `proxy must be a proxy URL (http://host:port), an object of proxy options, or false for none; got ${option === null ? 'null' : Array.isArray(option) ? 'an array' : typeof option}`,
      'proxy',
    );
  checkNames('proxy', option, PROXY_OPTION_NAMES);
  // As given (plain JavaScript): any type, each checked below.
  const { uri, noProxy, negotiate } = option as { uri?: unknown; noProxy?: unknown; negotiate?: unknown };
  if (typeof negotiate === 'object' && negotiate !== null) {
    if (Object.hasOwn(negotiate, 'credentials'))
      throw new ConfigError(
        "proxy.negotiate.credentials: give the proxy's password as proxy.credentials, not inside proxy.negotiate",
        'proxy.negotiate.credentials',
      );
    checkNames('proxy.negotiate', negotiate, PROXY_NEGOTIATE_NAMES);
  }
  if (uri !== undefined && typeof uri !== 'string')
    throw new ConfigError(
      `proxy.uri must be a proxy URL string (http://host:port), got ${uri instanceof URL ? 'a URL object: give url.href' : typeof uri}`,
      'proxy.uri',
    );
  if (noProxy !== undefined && typeof noProxy !== 'string')
    throw new ConfigError(
      `proxy.noProxy must be a string in NO_PROXY syntax (hosts separated by commas: "a.example,.corp.example"), got ${Array.isArray(noProxy) ? 'an array' : typeof noProxy}`,
      'proxy.noProxy',
    );
}

/** Default of {@link ProxyOptions.connectTimeout}, in ms. */
export const DEFAULT_PROXY_CONNECT_TIMEOUT = 10_000;

/** How a connection to one origin is made. */
export type ProxyRoute =
  | { readonly kind: 'tunnel'; readonly proxy: ResolvedProxy }
  | { readonly kind: 'forward'; readonly proxy: ResolvedProxy };

/** The agent's own Kerberos identity: what of its `negotiate` options proxy Negotiate uses too. */
export type KerberosIdentity = Pick<NegotiateOptions, 'ccache' | 'keytab' | 'principal'>;

/** The Kerberos identity `negotiate` names (its ccache, keytab, principal), or none. */
export function kerberosIdentity(negotiate: KerberosIdentity | false | undefined): KerberosIdentity {
  if (!negotiate) return {};
  const { ccache, keytab, principal } = negotiate;
  return {
    ...(ccache !== undefined ? { ccache } : {}),
    ...(keytab !== undefined ? { keytab } : {}),
    ...(principal !== undefined ? { principal } : {}),
  };
}

/**
 * The mechanisms for a proxy, from proxy options (never from origin credentials); Negotiate runs
 * as the agent's Kerberos `identity` unless the proxy options name their own.
 */
export function proxyMechanisms(
  o: ProxyOptions,
  credentials: Credentials | undefined,
  identity: KerberosIdentity = {},
  credentialsFrom = 'proxy.credentials',
): MechanismSet {
  const list: Mechanism[] = [];
  if (o.negotiate !== false) {
    const own = kerberosIdentity(o.negotiate);
    list.push(
      negotiateMechanism(
        {
          // Without a Kerberos ticket the next scheme the proxy offers (NTLM, Basic) answers, not NTLM
          // inside Negotiate: Squid's Kerberos helper, the usual Negotiate proxy, refuses that (curl
          // and browsers fall to the proxy's other schemes too).
          ntlmFallback: false,
          mutualAuth: 'optional',
          ...(Object.keys(own).length ? {} : identity),
          ...o.negotiate,
          delegate: false,
          ...(credentials ? { credentials } : {}),
          // H5: its errors name the proxy's options (proxy.negotiate.*) and credentials, not the origin's.
        },
        PROXY_KERBEROS_NAMES(credentialsFrom),
      ),
    );
  }
  // Proxy credentials are meant for the proxy at its configured address: Basic goes to it even over
  // a cleartext connection, as curl and browsers send it.
  if (credentials)
    list.push(
      ntlmMechanism(credentials),
      digestMechanism(credentials),
      basicMechanism(credentials, { allowHttp: true }),
    );
  list.push(...(o.mechanisms ?? []));
  checkSchemes('proxy.schemes', o.schemes, o.mechanisms ?? []);
  return new MechanismSet(list, o.schemes ?? DEFAULT_SCHEME_ORDER);
}

function badHttp(value: unknown): never {
  throw new ConfigError(`proxy.http must be 'forward' or 'tunnel', got ${JSON.stringify(value)}`);
}

/** An optional boolean option: absent is false; anything but true or false is a ConfigError naming it. */
function flag(name: string, value: unknown): boolean {
  if (value === undefined) return false;
  if (typeof value !== 'boolean') throw new ConfigError(`${name} must be true or false, got ${JSON.stringify(value)}`);
  return value;
}

/** A percent-encoded part of a proxy URL's user:password, decoded (never quoted in the error: it may be the password). */
function userinfoPart(encoded: string): string {
  try {
    return decodeURIComponent(encoded);
  } catch {
    throw new ConfigError(
      'proxy: the user:password in the proxy URL (proxy.uri, or HTTPS_PROXY/HTTP_PROXY) has a malformed %-escape: write a literal % as %25',
      'proxy.uri',
    );
  }
}

/** How an error names proxy credentials that came from the proxy URL given as `where` (`proxy.uri`, `HTTPS_PROXY`). */
const fromUrl = (where: string): string => `the user:password in the proxy URL (${where})`;

/**
 * A proxy URL as written (scheme-less is http://), normalised: two variables naming one proxy
 * compare equal. `where` gave it (`proxy.uri`, or an environment variable, named in the error).
 */
function proxyUrl(uri: string, where: string): URL {
  try {
    return new URL(uri.includes('://') ? uri : `http://${uri}`);
  } catch {
    throw new ProxyUrlError(
      'syntax',
      `proxy: the proxy address in ${where} is not a URL; use http://host:port${unsetFix(where)}`,
    );
  }
}

/** Whether two proxy URLs as written name one proxy; not when either is no URL (each is then its own error). */
function sameUrl(a: string, b: string): boolean {
  try {
    return proxyUrl(a, '').href === proxyUrl(b, '').href;
  } catch {
    return false;
  }
}

/** For a proxy from the environment: going without it is the other fix. */
const unsetFix = (where: string): string =>
  where === 'proxy.uri' ? '' : `, or unset ${where.replace(' and ', ' or ')}`;

/** `where`: what gave `uri` (`proxy.uri`, or the environment variables), for errors naming its user:password. */
function resolveProxy(
  uri: string,
  o: ProxyOptions,
  identity: KerberosIdentity,
  connectTo: ConnectTo | undefined,
  where = 'proxy.uri',
  memory?: RefusalMemory,
): ResolvedProxy {
  const url = proxyUrl(uri, where);
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    // (A SOCKS proxy among them: curl speaks it, the agent does not.)
    throw new ProxyUrlError(
      'scheme',
      `proxy: unsupported proxy protocol ${url.protocol} in ${where}; use http:// or https://${unsetFix(where)}`,
    );
  }
  // A copy, as the agent's own credentials and setProxyCredentials take: the caller's object
  // changing later does not change what is sent. Null is none, the URL's user:password included.
  let credentials: Credentials | undefined = o.credentials ? { ...o.credentials } : undefined;
  if (o.credentials === undefined && url.username) {
    credentials = { username: userinfoPart(url.username), password: userinfoPart(url.password) };
  }
  const credentialsFrom = credentials && !o.credentials ? fromUrl(where) : 'proxy.credentials';
  const tls = url.protocol === 'https:';
  const connectTimeout = positive(
    'proxy.connectTimeout',
    o.connectTimeout ?? DEFAULT_PROXY_CONNECT_TIMEOUT,
    false,
    MAX_TIMER_MS,
  );
  const resolved: ResolvedProxy = {
    origin: url.origin,
    hostname: unbracketed(url.hostname),
    port: portOf(url),
    tls,
    connect: o.connect ?? {},
    mechanisms: proxyMechanisms(o, credentials, identity, credentialsFrom),
    http: o.http === undefined || o.http === 'forward' || o.http === 'tunnel' ? (o.http ?? 'forward') : badHttp(o.http),
    deliver407: flag('proxy.deliver407', o.deliver407),
    connectTimeout,
    ...(connectTo ? { connectTo } : {}),
    proof: new CredentialProof(
      `the outcome of another connection's authentication to proxy ${url.origin} (its credentials are tried one at a time until proved: a wrong password locks accounts)`,
      memory && {
        memory,
        // Read when asked: setProxyCredentials replaces them (R4: a new password is not the refused one).
        place: () => {
          const c = heldCredentials.get(resolved);
          return c?.password ? { origin: url.origin, proxy: true, credentials: c } : undefined;
        },
      },
    ),
    proved: new ProvedIdentity(),
    account: credentials?.username,
    credentialsFrom,
    openedInVain: false,
    perRequest: undefined,
    perRequestUntil: 0,
    unusable: new LapsingMap(),
  };
  if (credentials) heldCredentials.set(resolved, credentials);
  return resolved;
}

/**
 * The credentials held for each proxy now, for the refusal memory's record: beside the resolved
 * proxy, not in it, so that nothing that prints or serialises it shows the password (S2).
 */
const heldCredentials = new WeakMap<ResolvedProxy, Credentials>();

interface NoProxyEntry {
  readonly hostname: string;
  readonly port: number;
  readonly wildcard: boolean;
  /**
   * An address range written `address/bits` (curl 7.86+): it matches hosts written as IP addresses
   * of the same family only, never a name (nothing is resolved for it). Node's BlockList does the
   * matching; `undefined` ranges (a prefix longer than the address) match nothing, as in curl.
   */
  readonly cidr?: BlockList | null;
}

/**
 * A NO_PROXY entry `address/bits` as curl reads it (lib/noproxy.c): an IPv4 or IPv6 address (IPv6
 * also in brackets) and a decimal prefix length; bits 0, or the address's full length, matches that
 * address alone, and a prefix longer than the address matches nothing (null), as in curl.
 * Undefined when the entry is no such range.
 */
function parseCidr(entry: string): BlockList | null | undefined {
  const m = /^\[?([^\]/]+)\]?\/(\d{1,3})$/.exec(entry);
  if (!m) return undefined;
  const address = m[1]!;
  const family = isIP(address);
  if (family !== 4 && family !== 6) return undefined;
  const bits = Number(m[2]);
  const full = family === 4 ? 32 : 128;
  if (bits > full) return null;
  const range = new BlockList();
  range.addSubnet(address, bits === 0 ? full : bits, family === 4 ? 'ipv4' : 'ipv6');
  return range;
}

/** Whether `host` (an IP address or a name) lies in the range (null: none does). */
function inCidr(range: BlockList | null, host: string): boolean {
  const family = isIP(host);
  return range !== null && family !== 0 && range.check(host, family === 4 ? 'ipv4' : 'ipv6');
}

/**
 * Parses a NO_PROXY value as undici's EnvHttpProxyAgent does, and, as curl 7.86+ does, an
 * `address/bits` entry as an address range (`10.0.0.0/8`, `fd00::/8`) for hosts written as IP addresses.
 */
export function parseNoProxy(value: string): NoProxyEntry[] {
  const out: NoProxyEntry[] = [];
  for (const entry of value.split(/[,\s]/)) {
    if (!entry) continue;
    const cidr = parseCidr(entry);
    if (cidr !== undefined) {
      out.push({ hostname: entry.toLowerCase(), port: 0, wildcard: false, cidr });
      continue;
    }
    let hostname: string;
    let port: number;
    const v6 = /^\[(.+)\]:(\d+)$/.exec(entry);
    if (v6) {
      hostname = v6[1]!;
      port = Number.parseInt(v6[2]!, 10);
    } else {
      const unbracketed = entry.replace(/^\[(.+)\]$/, '$1');
      const colons = (unbracketed.match(/:/g) ?? []).length;
      const parsed = colons === 1 ? /^(.+):(\d+)$/.exec(unbracketed) : null;
      hostname = parsed ? parsed[1]! : unbracketed;
      port = parsed ? Number.parseInt(parsed[2]!, 10) : 0;
    }
    out.push({
      hostname: hostname
        .replace(/^\*?\./, '')
        .replace(/^(.+)\.$/, '$1')
        .toLowerCase(),
      port,
      wildcard: entry.charCodeAt(0) === 42,
    });
  }
  return out;
}

/** Whether a URL should go through the proxy given NO_PROXY entries (undici's rules, and curl's address ranges). */
export function shouldProxy(entries: readonly NoProxyEntry[], url: URL): boolean {
  if (entries.length === 0) return true;
  let hostname = url.host
    .replace(/:\d*$/, '')
    .replace(/^\[(.+)\]$/, '$1')
    .toLowerCase();
  if (hostname.length > 1 && hostname.endsWith('.')) hostname = hostname.slice(0, -1);
  // Only http: and https: URLs get here (ProxyResolver.route).
  const port = portOf(url);
  for (const e of entries) {
    if (e.cidr !== undefined) {
      if (inCidr(e.cidr, hostname)) return false;
      continue;
    }
    if (e.hostname === '*') {
      if (e.port && e.port !== port) continue;
      return false;
    }
    if (e.port && e.port !== port) continue;
    if (!e.wildcard && hostname === e.hostname) return false;
    if (hostname.endsWith(`.${e.hostname}`)) return false;
  }
  return true;
}

type Env = Readonly<Record<string, string | undefined>>;

/**
 * Decides, per origin, whether and how to go through a proxy. With no `proxy` option the proxies come
 * from the environment when the agent is created (`https_proxy`/`HTTPS_PROXY` for https targets,
 * none of them: directly, as curl, .NET and Go — undici falls back to `http_proxy`; `http_proxy`/
 * `HTTP_PROXY` for http), and `no_proxy`/`NO_PROXY` is re-read when it changes, as undici's
 * EnvHttpProxyAgent does; but not `HTTP_PROXY` under CGI (`REQUEST_METHOD` set), where a request
 * sets it ("httpoxy").
 */
export class ProxyResolver {
  readonly #http: ResolvedProxy | undefined;
  readonly #https: ResolvedProxy | undefined;
  /** A proxy variable that is no usable URL, thrown by the requests that would use it (see the constructor). */
  readonly #unusableHttp: ProxyUrlError | undefined;
  readonly #unusableHttps: ProxyUrlError | undefined;
  readonly #fixedNoProxy: string | undefined;
  readonly #env: Env;
  /** What the proxies were resolved from, to make their mechanisms again with new credentials. */
  readonly #option: ProxyOptions = {};
  readonly #identity: KerberosIdentity = {};
  readonly #connectTo: ConnectTo | undefined;
  #noProxyValue: string | undefined;
  #noProxy: NoProxyEntry[] = [];

  /**
   * `negotiate`: the agent's own Negotiate options, whose Kerberos identity (ccache, keytab,
   * principal) proxy Negotiate uses unless the proxy options name their own. `connectTo`: the
   * agent's, for the connections to the proxies and the CONNECTs through them. `memory`: the
   * agent's `refusalMemory`, told of the proxies' refusals of their password (R4).
   */
  constructor(
    option: string | ProxyOptions | false | undefined,
    env: Env = process.env,
    negotiate?: KerberosIdentity | false,
    connectTo?: ConnectTo,
    memory?: RefusalMemory,
  ) {
    checkProxyOption(option);
    this.#env = env;
    this.#connectTo = connectTo;
    const identity = kerberosIdentity(negotiate);
    const o: ProxyOptions = typeof option === 'string' ? { uri: option } : option || {};
    this.#option = o;
    this.#identity = identity;
    if (option === false) {
      this.#fixedNoProxy = '';
      return;
    }
    // connectToProxy sets ALPN per lane: one given here would win, and a tunnel's CONNECT would be
    // written in HTTP/1.1 on an h2 connection (the proxy then seems to close it), a forwarding lane
    // would ignore allowH2: false.
    if (o.connect && 'ALPNProtocols' in o.connect)
      throw new ConfigError(
        'proxy.connect.ALPNProtocols: the agent chooses what it offers the proxy itself (http/1.1 for CONNECT tunnels; h2 and http/1.1 for forwarded requests); remove it, and for HTTP/1.1 only pass allowH2: false',
      );
    if (o.uri !== undefined) {
      this.#http = this.#https = resolveProxy(o.uri, o, identity, connectTo, undefined, memory);
      this.#fixedNoProxy = o.noProxy ?? '';
    } else {
      // httpoxy: under CGI (REQUEST_METHOD set) HTTP_PROXY is the request's own `Proxy` header, set
      // by any client; lower-case http_proxy cannot come from a request. Go's net/http refuses it too.
      const http = env.http_proxy ?? (env.REQUEST_METHOD === undefined ? env.HTTP_PROXY : undefined);
      const https = env.https_proxy ?? env.HTTPS_PROXY;
      const httpName = env.http_proxy !== undefined ? 'http_proxy' : 'HTTP_PROXY';
      const httpsName = env.https_proxy !== undefined ? 'https_proxy' : 'HTTPS_PROXY';
      // A variable whose URL cannot be used fails the requests that would go through it, not the
      // agent: as curl reads only the proxy a transfer uses, a bad https_proxy does not stop
      // http:// requests, nor one NO_PROXY exempts.
      const fromEnv = (uri: string, where: string): ResolvedProxy | ProxyUrlError => {
        try {
          return resolveProxy(uri, o, identity, connectTo, where, memory);
        } catch (err) {
          if (err instanceof ProxyUrlError) return err;
          throw err;
        }
      };
      // One proxy URL in both variables is one proxy (R4): one proof of its credentials, so a wrong
      // password is refused once, not once per variable; one ProvedIdentity (S6).
      const same = http && https && sameUrl(http, https);
      const httpProxy = http ? fromEnv(http, same ? `${httpsName} and ${httpName}` : httpName) : undefined;
      // An https target goes through https_proxy alone, else directly, as curl, .NET and Go read
      // these (undici falls back to http_proxy): a proxy named for plain http is not given an https
      // request's host name, nor the proxy credentials and Negotiate/NTLM that go with it.
      const httpsProxy = same ? httpProxy : https ? fromEnv(https, httpsName) : undefined;
      [this.#http, this.#unusableHttp] = httpProxy instanceof ProxyUrlError ? [undefined, httpProxy] : [httpProxy];
      [this.#https, this.#unusableHttps] = httpsProxy instanceof ProxyUrlError ? [undefined, httpsProxy] : [httpsProxy];
      this.#fixedNoProxy = o.noProxy;
    }
  }

  /**
   * The agent was destroyed: requests waiting for leave to send a proxy's credentials, or for the
   * refusal memory's recall of them, fail with `err` at once (R1), not at limits.queueTimeout
   * (a CONNECT's dial ends them too; a forwarded request's nothing else did).
   */
  end(err: Error): void {
    for (const proxy of new Set([this.#http, this.#https])) proxy?.proof.end(err);
  }

  /** Whether a proxy is configured (given, or from the environment), whatever NO_PROXY says. */
  get configured(): boolean {
    return this.#http !== undefined || this.#https !== undefined;
  }

  /**
   * New proxy credentials (MultilegAgent.setProxyCredentials): the proxies' mechanisms are made
   * again with them (fresh Digest nonces and NTLM keys) and their proof starts over (R4). The
   * per-request scheme remembered for new connections is the old mechanism, which ProxyAuth.adopt
   * no longer takes: nothing of the old ones is sent again. With two different proxies (http_proxy
   * and https_proxy), the new credentials go to the one they belong to, not to the other (S1: a
   * password rotated for one proxy is not the other's): to those holding the same user name, else
   * to the only one holding credentials; with neither, or both holding that user name with
   * different passwords (two accounts of one name), it cannot be told.
   *
   * Returns whether a proxy's credentials changed (the ones it holds already change nothing;
   * `forgetRefusals` lifts their refusal there).
   *
   * @throws {ConfigError} with two different proxies when the credentials cannot be told to be one's.
   */
  setCredentials(credentials: Credentials, forgetRefusals = false): boolean {
    // A copy, as resolveProxy takes of the constructor's: the caller's object changing later changes nothing sent.
    const own = { ...credentials };
    let proxies = [...new Set([this.#http, this.#https])].filter((p) => p !== undefined);
    if (new Set(proxies.map((p) => p.origin)).size > 1) {
      const holding = proxies.filter((p) => p.account !== undefined);
      const same = holding.filter((p) => p.account === credentials.username);
      // Both hold this user name, each with another password: two accounts of one name, and which
      // one's password was rotated cannot be told (S1: not the other's; review r68). One account
      // (the same credentials at both) is both proxies'.
      const [first, ...others] = same.map((p) => heldCredentials.get(p));
      if (others.some((c) => first === undefined || !sameCredentials(c, first)))
        throw new ConfigError(
          `setProxyCredentials: two proxies (${this.#http!.origin} for http://, ${this.#https!.origin} for https://), and both hold ${credentials.username}'s with other passwords (two accounts of that name): which one the new password is for cannot be told, and neither gets it; make a new agent with each proxy URL's user:password`,
          'proxy.credentials',
        );
      proxies = same.length > 0 ? same : holding.length === 1 ? holding : [];
      if (proxies.length === 0)
        throw new ConfigError(
          `setProxyCredentials: two proxies (${this.#http!.origin} for http://, ${this.#https!.origin} for https://), and which one ${credentials.username}'s credentials are for cannot be told (${holding.length === 0 ? 'neither holds credentials' : 'both hold credentials of other users'}); give proxy.uri (the one proxy) or each proxy URL's user:password when making the agent`,
          'proxy.credentials',
        );
    }
    let changed = false;
    for (const proxy of proxies) {
      if (sameCredentials(heldCredentials.get(proxy), own)) {
        if (forgetRefusals) proxy.proof.liftRefusal();
        continue;
      }
      changed = true;
      proxy.credentialsFrom = 'the credentials given to setProxyCredentials';
      proxy.mechanisms = proxyMechanisms(this.#option, own, this.#identity, proxy.credentialsFrom);
      proxy.account = own.username;
      heldCredentials.set(proxy, own);
      proxy.proof.reset();
      // What the old credentials could not do is tried again with the new ones (as an origin's,
      // OriginMemory.credentialsChanged); a challenge the proxy sent unreadable stays remembered.
      for (const [key, u] of proxy.unusable.live())
        if (!(u.error instanceof InvalidTokenError)) proxy.unusable.delete(key);
    }
    return changed;
  }

  /**
   * The route for `origin` (`https://host:port`), or undefined to connect directly. `site`: the
   * origin as the caller named it, where `origin` holds the address undici's dns interceptor resolved
   * it to: NO_PROXY is read for the name too (the user kept that host from the proxy: its traffic,
   * and the proxy's credentials, went there before task hp), and for the address as before.
   *
   * @throws {ProxyUrlError} when the origin would go through a proxy variable that is no usable URL.
   */
  route(origin: string, site = origin): ProxyRoute | undefined {
    const url = new URL(origin);
    const https = url.protocol === 'https:';
    const proxy = https ? this.#https : url.protocol === 'http:' ? this.#http : undefined;
    const unusable = https ? this.#unusableHttps : url.protocol === 'http:' ? this.#unusableHttp : undefined;
    if (!proxy && !unusable) return undefined;
    const noProxy = this.#fixedNoProxy ?? this.#env.no_proxy ?? this.#env.NO_PROXY ?? '';
    if (noProxy !== this.#noProxyValue) {
      this.#noProxyValue = noProxy;
      this.#noProxy = parseNoProxy(noProxy);
    }
    if (!shouldProxy(this.#noProxy, url)) return undefined;
    if (site !== origin && !shouldProxy(this.#noProxy, new URL(site))) return undefined;
    if (!proxy) throw unusable;
    return https || proxy.http === 'tunnel' || this.#routed(url)
      ? { kind: 'tunnel', proxy }
      : { kind: 'forward', proxy };
  }

  /**
   * Whether `connectTo` sends a plain-http origin's connection elsewhere: a forwarded request names
   * its own host to the proxy, so such an origin goes through a CONNECT tunnel instead (curl's rule
   * for --connect-to through an HTTP proxy).
   */
  #routed(url: URL): boolean {
    if (!this.#connectTo) return false;
    const hostname = unbracketed(url.hostname);
    const port = portOf(url);
    const dial = dialFor(this.#connectTo, { hostname, port, via: 'tunnel' });
    return dial.hostname !== hostname || dial.port !== port;
  }
}

/** `host:port` as written in a CONNECT request line and Host header (IPv6 in brackets). */
export function authority(hostname: string, port: number): string {
  const h = unbracketed(hostname);
  return `${isIP(h) === 6 ? `[${h}]` : h}:${port}`;
}
