/**
 * Who may receive credentials (S1, S4, S5): the one place that decides, per request, whether the
 * agent's credentials may go to an origin. docs/SECURITY.md explains the model.
 */
import { domainToASCII } from 'node:url';
import { ConfigError, MultilegError, redactUserinfo } from '../errors.ts';
import { log } from '../log.ts';
import { portOf } from '../options.ts';

/**
 * Origins the caller trusts with credentials: exact origins (`https://intranet.example.com`,
 * `https://host:8443`), wildcard host patterns (`https://*.corp.example.com`, optionally with a
 * port or `:*` for any port; `*.` matches sub-domains only), or a predicate given each origin.
 */
export type TrustedOrigins = readonly string[] | ((origin: string) => boolean);

/** Why a request goes without the agent's credentials. */
export type WithheldReason =
  | 'untrusted-origin'
  | 'cleartext'
  | 'cross-origin-redirect'
  | 'host-header'
  | 'servername'
  | 'request-target';

/** The decision for one request: may the agent's credentials be used, and if not, why. */
export type Grant = { readonly allowed: true } | { readonly allowed: false; readonly reason: WithheldReason };

const ALLOWED: Grant = { allowed: true };
/** Origins whose verdict a TrustPolicy keeps before it starts over. */
const MAX_REMEMBERED_ORIGINS = 1024;

/** An agent with a password (or delegation) was built without saying where credentials may go (S1). */
export class TrustRequiredError extends MultilegError {
  constructor(what: string) {
    super(
      'MULTILEG_TRUST_REQUIRED',
      `${what} needs trustedOrigins, the origins that may receive credentials: new MultilegAgent({ ..., trustedOrigins: ['https://intranet.example.com'] }) (patterns like 'https://*.corp.example.com' and a predicate work too)`,
    );
  }
}

/**
 * A server challenged a cleartext `http:` origin that is not trusted explicitly (S4): nothing was
 * sent, since any credential there can be read or relayed by whoever is on the path. Thrown for a
 * request (direct, through a forwarding proxy, or a redirect hop to `http:`) and for an upgrade;
 * never for a proxy, whose credentials go to its configured address even over `http:` (as curl
 * sends them).
 */
export class CleartextCredentialsError extends MultilegError {
  /**
   * The `http:` origin the credentials were refused for, as the caller named it: the request's
   * origin (not the forwarding proxy's), or a redirect hop's; behind undici's `dns` interceptor (an
   * address dialled, the name in Host) the name, which over `http:` must be trusted as well as the
   * address (both are named in the message).
   */
  readonly origin: string;
  /** `dialled`: the address undici's `dns` interceptor put in place of `origin`'s name, when it did. */
  constructor(origin: string, dialled?: string) {
    const fix =
      dialled === undefined || dialled === origin
        ? { at: '', list: `'${origin}'` }
        : { at: ` (at ${dialled}, which over http must be trusted too)`, list: `'${origin}', '${dialled}'` };
    super(
      'MULTILEG_CLEARTEXT',
      `refusing to send credentials in cleartext to ${origin}${fix.at}; use https, or trust it explicitly with trustedOrigins: [${fix.list}] to accept the risk`,
    );
    this.origin = origin;
  }
}

type Matcher = (url: URL) => boolean;

/** What a wildcard pattern's host may be written with: letters, digits, `.`, `-`, `_`, and non-ASCII (IDN). */
const PATTERN_HOST = /^[A-Za-z0-9._\-\u0080-\uffff]+$/;

function parseEntry(entry: string): Matcher {
  const bad = (why: string) =>
    new ConfigError(
      `trustedOrigins entry '${redactUserinfo(entry)}' ${why}; write an origin like 'https://intranet.example.com' or a pattern like 'https://*.corp.example.com'`,
    );
  const wildcard = /^(https?):\/\/\*\.(.*)$/is.exec(entry);
  if (wildcard) {
    const protocol = `${wildcard[1]!.toLowerCase()}:`;
    // Whatever the URL parser reads as other than host characters would make it trust another
    // suffix than the one written: user info (`*.a.example@b.example` is host b.example), `\` (a
    // path in http URLs), percent-escapes, white space (dropped), another `*`.
    if (wildcard[2]!.includes('@')) throw bad("has user info (an '@') where its host should be");
    const parts = /^([^/:?#]*)(?::(\d+|\*))?\/?$/s.exec(wildcard[2]!);
    if (!parts) throw bad('has more than scheme, host pattern and port');
    const host = parts[1]!;
    if (host.includes('*')) throw bad("uses '*' other than as the first label of the host");
    const ch = [...host].find((c) => !PATTERN_HOST.test(c));
    if (ch !== undefined) {
      const named = ch > ' ' && ch !== '\x7f' ? `'${ch}'` : `U+${ch.charCodeAt(0).toString(16).padStart(4, '0')}`;
      throw bad(`has ${named} in its host, which holds only letters, digits, '.', '-' and '_'`);
    }
    if (host === '' || host.startsWith('.') || host.includes('..')) throw bad('has an empty label in its host');
    // `*.com` or `*.local` trusts every host under a top-level name: no one means that (a public
    // suffix such as `co.uk` is not known here; at least two labels are asked for).
    if (!host.replace(/\.$/, '').includes('.'))
      throw bad(
        `trusts every host under '${host}', a top-level name; name your own domain, e.g. 'https://*.corp.${host}'`,
      );
    // The URL parser lower-cases and punycodes the suffix as it does every host it compares; it
    // must read exactly the host written (`x.` stands for the `*` label).
    let parsed: URL;
    try {
      parsed = new URL(`${protocol}//x.${host}/`);
    } catch {
      throw bad('has an invalid host');
    }
    const suffix = parsed.hostname.startsWith('x.') ? parsed.hostname.slice(2) : undefined;
    const ascii = /^[\x00-\x7f]*$/.test(host) ? host.toLowerCase() : domainToASCII(host);
    if (
      suffix === undefined ||
      suffix !== ascii ||
      parsed.username ||
      parsed.password ||
      parsed.port ||
      parsed.pathname !== '/'
    )
      throw bad('has a host the URL parser reads differently');
    const port = parts[2] === undefined ? portOf({ protocol }) : parts[2] === '*' ? '*' : Number(parts[2]);
    return (url) =>
      url.protocol === protocol && url.hostname.endsWith(`.${suffix}`) && (port === '*' || portOf(url) === port);
  }
  // `https://host:*` reads as a wildcard port on one host, which only a host pattern has.
  if (/^https?:\/\/[^/*]+:\*\/?$/is.test(entry))
    throw bad(
      "has '*' as the port of a single host: ':*' goes only with a host pattern ('https://*.corp.example.com:*'); for any port of one host, pass a predicate such as (origin) => new URL(origin).hostname === 'intranet.example.com'",
    );
  // A WebSocket URL: undici sends wss:// as https:// and ws:// as http://, and so the agent sees it.
  const ws = /^(wss?):\/\//i.exec(entry);
  if (ws) {
    const as = ws[1]!.toLowerCase() === 'wss' ? 'https' : 'http';
    throw bad(
      `is a WebSocket URL, which the agent sees as ${as}:// (undici sends ${ws[1]!.toLowerCase()}:// so): write '${redactUserinfo(`${as}://${entry.slice(ws[0].length)}`)}'`,
    );
  }
  if (entry.includes('*')) throw bad("uses '*' other than as the first label of the host");
  let url: URL;
  try {
    url = new URL(entry);
  } catch {
    throw bad('is not a URL');
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw bad('is not http or https');
  if (url.username || url.password) throw bad("has user info (an '@') before its host");
  if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.hash)
    throw bad('has more than scheme, host and port');
  const origin = url.origin;
  return (u) => u.origin === origin;
}

/**
 * The trust policy of one agent (S1, S4, S5). With `trustedOrigins`, exactly those origins are
 * trusted "explicitly". Without it (allowed only for an agent with no password: ambient Kerberos
 * or a client certificate), any https origin the caller names itself may receive credentials, but
 * not an `http:` origin and not one reached through a cross-origin redirect.
 */
export class TrustPolicy {
  readonly #matchers: readonly Matcher[];
  /** What the list said of each origin asked about (bounded: a crawler's origins come and go). */
  readonly #listedOrigins = new Map<string, boolean>();
  readonly #predicate: ((origin: string) => boolean) | undefined;
  /** A list or predicate was given. */
  readonly listed: boolean;

  constructor(trusted: TrustedOrigins | undefined) {
    this.listed = trusted !== undefined;
    if (typeof trusted === 'function') {
      this.#predicate = trusted;
      this.#matchers = [];
    } else if (trusted !== undefined) {
      if (!Array.isArray(trusted)) throw new ConfigError('trustedOrigins must be an array of origins or a function');
      this.#matchers = trusted.map((e) => {
        if (typeof e !== 'string') throw new ConfigError('trustedOrigins entries must be strings');
        return parseEntry(e.trim());
      });
    } else {
      this.#matchers = [];
    }
  }

  /** The caller trusts `origin` explicitly: listed, matched by a pattern, or accepted by the predicate. */
  explicit(origin: string): boolean {
    if (this.#predicate) {
      try {
        return this.#predicate(origin) === true;
      } catch (err) {
        // A predicate that throws trusts nothing (fail safe); the caller learns why from the log.
        log.agent('trustedOrigins predicate threw for %s: %s', origin, (err as Error).message);
        return false;
      }
    }
    if (this.#matchers.length === 0) return false;
    // The list is fixed: each origin is parsed and matched once, not per request.
    let trusted = this.#listedOrigins.get(origin);
    if (trusted === undefined) {
      const url = new URL(origin);
      trusted = this.#matchers.some((m) => m(url));
      if (this.#listedOrigins.size >= MAX_REMEMBERED_ORIGINS) this.#listedOrigins.clear();
      this.#listedOrigins.set(origin, trusted);
    }
    return trusted;
  }

  /**
   * May the agent's credentials go with a request to `origin`? `crossOriginHop`: the request is a
   * redirect hop from another origin (S5). Explicit trust allows everything, including cleartext.
   */
  decide(origin: string, crossOriginHop: boolean): Grant {
    if (this.explicit(origin)) return ALLOWED;
    if (origin.startsWith('http:')) return { allowed: false, reason: 'cleartext' };
    if (this.listed) return { allowed: false, reason: 'untrusted-origin' };
    if (crossOriginHop) return { allowed: false, reason: 'cross-origin-redirect' };
    return ALLOWED;
  }
}
