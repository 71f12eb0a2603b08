/**
 * Who may receive credentials (S1, S4, S5): the one place that decides, per request, whether the
 * agent's credentials may go to an origin. docs/SECURITY.md explains the model.
 */
import { ConfigError, MultilegError } from '../errors.ts';
import { log } from '../log.ts';

/**
 * Origins the caller trusts with credentials: exact origins (`https://intranet.example.com`,
 * `https://host:8443`), wildcard host patterns (`https://*.corp.example.com`, optionally with a
 * port or `:*` for any port; `*.` matches sub-domains only), or a predicate given each origin.
 */
export type TrustedOrigins = readonly string[] | ((origin: string) => boolean);

/** Why a request goes without the agent's credentials. */
export type WithheldReason = 'untrusted-origin' | 'cleartext' | 'cross-origin-redirect';

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
 * sent, since any credential there can be read or relayed by whoever is on the path.
 */
export class CleartextCredentialsError extends MultilegError {
  constructor(origin: string) {
    super(
      'MULTILEG_CLEARTEXT',
      `refusing to send credentials in cleartext to ${origin}; use https, or trust it explicitly with trustedOrigins: ['${origin}'] to accept the risk`,
    );
  }
}

type Matcher = (url: URL) => boolean;

const defaultPort = (protocol: string): string => (protocol === 'https:' ? '443' : '80');
const portOf = (url: URL): string => url.port || defaultPort(url.protocol);

function parseEntry(entry: string): Matcher {
  const bad = (why: string) =>
    new ConfigError(
      `trustedOrigins entry '${entry}' ${why}; write an origin like 'https://intranet.example.com' or a pattern like 'https://*.corp.example.com'`,
    );
  const wildcard = /^(https?):\/\/\*\.([^/:?#*]+)(?::(\d+|\*))?\/?$/i.exec(entry);
  if (wildcard) {
    const protocol = `${wildcard[1]!.toLowerCase()}:`;
    // The URL parser lower-cases and punycodes the suffix as it does every host it compares.
    let suffix: string;
    try {
      suffix = new URL(`${protocol}//x.${wildcard[2]}`).hostname.slice(2);
    } catch {
      throw bad('has an invalid host');
    }
    const port = wildcard[3] === undefined ? defaultPort(protocol) : wildcard[3];
    return (url) =>
      url.protocol === protocol && url.hostname.endsWith(`.${suffix}`) && (port === '*' || portOf(url) === port);
  }
  if (entry.includes('*')) throw bad("uses '*' other than as the first label of the host");
  let url: URL;
  try {
    url = new URL(entry);
  } catch {
    throw bad('is not a URL');
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw bad('is not http or https');
  if (url.username || url.password || (url.pathname !== '/' && url.pathname !== '') || url.search || url.hash)
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
