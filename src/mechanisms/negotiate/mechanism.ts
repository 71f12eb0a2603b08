/**
 * The Negotiate mechanism as an agent holds it (M2, M5): its options, checked when the agent is
 * made, and what its contexts share. The code of a handshake — GSS-API, SPNEGO, NTLM inside
 * Negotiate, the loaders of the addons (context.ts) — loads with a context's first step: an agent
 * that never answers a Negotiate challenge never loads it (the command's NTLM request,
 * docs/PERFORMANCE.md "CLI start").
 */
import { randomBytes } from 'node:crypto';
import type { Challenge } from '../../challenge/types.ts';
import { ConfigError } from '../../errors.ts';
import type { CredCache } from '../gssapi/index.ts';
import type { Credentials, LegInfo, Mechanism, MechanismContext } from '../types.ts';
import type { KerberosClientLike, KerberosModuleLike } from './addon.ts';
import type { BackendChoice, KerberosBackend } from './backend.ts';
import type { NegotiateContext } from './context.ts';
import type { NegotiateFallbackReason } from './errors.ts';

export const SCHEME = 'Negotiate';

/**
 * How a Negotiate mechanism's errors name the options and credentials that fix them (H5): the
 * agent's own (`negotiate.*`, `credentials`), or a proxy's (`proxy.negotiate.*`, and where its
 * credentials came from), so that the message names what the user has to set for that peer.
 */
export interface KerberosNames {
  /** The options' prefix: `negotiate` or `proxy.negotiate`. */
  readonly options: string;
  /** The client principal option, as "pass …" names it. */
  readonly principal: string;
  /** Where the credentials were given: `credentials`, `proxy.credentials`, … */
  readonly credentials: string;
}

/** The agent's own Negotiate (towards origins). */
export const ORIGIN_KERBEROS_NAMES: KerberosNames = {
  options: 'negotiate',
  principal: 'principal',
  credentials: 'credentials',
};

/** A proxy's Negotiate, its credentials given as `credentials` says (`proxy.credentials`, the proxy URL's user…). */
export const PROXY_KERBEROS_NAMES = (credentials: string): KerberosNames => ({
  options: 'proxy.negotiate',
  principal: 'proxy.negotiate.principal',
  credentials,
});

export interface NegotiateOptions {
  /** `spnego` (default, mechOID 6) or raw `kerberos` (mechOID 9). */
  readonly mech?: 'spnego' | 'kerberos';
  /**
   * Service principal, `HTTP@host` (also `HTTP/host[@REALM]`). Default `<serviceName>@<hostname>`.
   * On an agent it needs `trustedOrigins` (S1): every origin would otherwise receive this ticket.
   */
  readonly spn?: string;
  /** Service part of the default SPN (default `HTTP`). */
  readonly serviceName?: string;
  /**
   * Opt-in: follow CNAMEs of the host (node:dns) before building the SPN. On an agent it needs
   * `trustedOrigins` (S1): an origin's own DNS would otherwise choose whose ticket it receives.
   */
  readonly canonicalizeHost?: boolean;
  /** Append `:port` to the host in the default SPN. */
  readonly includePort?: boolean;
  /** Client principal to use (`user@REALM`), instead of the default ccache's. */
  readonly principal?: string;
  /**
   * This agent's own credential cache (`FILE:/path`, `DIR:`, `KEYRING:`...) instead of the process-wide
   * default (KRB5CCNAME). Needs the GSS-API binding (koffi + the system's libgssapi_krb5).
   */
  readonly ccache?: string;
  /**
   * Client keytab (`FILE:/path`) for a service account: the agent gets its own tickets from it and renews
   * them when they expire (into `ccache`, or a private in-memory cache). Needs the GSS-API binding.
   */
  readonly keytab?: string;
  /**
   * Bind Kerberos tokens to the TLS channel (tls-server-end-point, RFC 5929) on https, as IIS Extended
   * Protection requires. Default true; needs the GSS-API binding (the `kerberos` addon cannot).
   */
  readonly channelBindings?: boolean;
  /** `auto` (default): the GSS-API binding (koffi) where it loads, else the `kerberos` addon. */
  readonly backend?: BackendChoice;
  /** Request credential delegation (GSS_C_DELEG_FLAG). Default false: never delegate unless asked. */
  readonly delegate?: boolean;
  /** `required` (default): the server's final token must verify; `optional`: its absence is tolerated. */
  readonly mutualAuth?: 'required' | 'optional';
  /**
   * Password credentials: when Kerberos cannot produce a first token (and mech is `spnego`), authenticate
   * with NTLM inside Negotiate instead.
   */
  readonly credentials?: Credentials;
  /**
   * Whether the password may go to this origin (S1: the agent's trust rules decide); default: always.
   * Without it for an origin, a Kerberos failure there is the typed Kerberos error, never NTLM — nor
   * the NTLM the system's SPNEGO may choose itself (SSPI, gss-ntlmssp): a `SystemNtlmRefusedError`.
   */
  readonly passwordAllowed?: (origin: string) => boolean;
  /**
   * How the NTLM fallback is sent: inside SPNEGO with mechListMIC, or as raw NTLMSSP; `false`: none.
   * An agent's origins default to `'raw'`, its proxies to `false`; the mechanism alone to `'spnego'`.
   */

  readonly ntlmFallback?: 'spnego' | 'raw' | false;
  /** Test hook / injection: the `kerberos` module (default: `await import('kerberos')`). */
  readonly kerberos?: KerberosModuleLike;
  /** Test hook: DNS CNAME resolver for canonicalizeHost. */
  readonly resolveCname?: (host: string) => Promise<string[]>;
}

/** Shared by one mechanism's contexts: when GSS-API last said it cannot help (no ticket, no addon), and why. */
export interface KerberosMemory {
  unavailableUntil: number;
  /** How its errors name the options and credentials to fix (a proxy's: H5). */
  readonly names: KerberosNames;
  reason?: NegotiateFallbackReason;
  /**
   * A context is asking GSS-API again after `reason`'s time ran out: the others go on falling back
   * meanwhile, or every handshake starting before its answer would ask too (a per-request stream:
   * ~30% of its requests each paid a failing `gss_init_sec_context`).
   */
  rechecking?: boolean;
  /** The acquired credential the GSS-API binding keeps for this mechanism's next contexts. */
  creds?: CredCache;
  /** Whether the backend in use binds tokens to the channel (unknown until the first handshake). */
  bindsChannel?: boolean;
  /** The backend, once one loaded. */
  backend?: KerberosBackend;
  /**
   * SPN → when a service ticket the server refused as sealed under an old key was last dropped,
   * and how many drops there were (`epoch`): a context whose first token came before the last drop
   * used the old ticket and may run once more; none is dropped again until `until` (R4).
   */
  staleTickets?: Map<string, { readonly epoch: number; readonly until: number }>;
  /** Drops of refused service tickets so far (all SPNs): a context notes it at its first token. */
  ticketEpoch?: number;
  /**
   * Principal → the last Kerberos context that authenticated as it from a cache outside the agent
   * (the default ccache, `negotiate.ccache` or `principal`; not a keytab): asked whether that cache
   * still holds the principal's tickets (S6, {@link Mechanism.holdsCredentials}).
   */
  holders?: Map<string, KerberosClientLike>;
}

/** context.ts, once a first step has loaded it. */
let contexts: typeof import('./context.ts') | undefined;

/**
 * A {@link NegotiateContext} made at its first step, when its code is loaded: until then it is
 * what a context that has not stepped is (incomplete, no identity, nothing to verify).
 */
class LazyNegotiateContext implements MechanismContext {
  readonly #o: NegotiateOptions;
  readonly #memory: KerberosMemory;
  #context: NegotiateContext | undefined;
  #disposed = false;

  constructor(o: NegotiateOptions, memory: KerberosMemory) {
    this.#o = o;
    this.#memory = memory;
  }

  get complete(): boolean {
    return this.#context?.complete ?? false;
  }

  get firstLegCompletes(): boolean {
    return this.#context?.firstLegCompletes ?? false;
  }

  get identity(): string | undefined {
    return this.#context?.identity;
  }

  /** Before the first step there is no server token to refuse with. */
  rejects(challenge: Challenge): boolean {
    return this.#context?.rejects(challenge) ?? false;
  }

  get fallbackReason(): string | undefined {
    return this.#context?.fallbackReason;
  }

  /** The SPN the context asked a ticket for (after the first step). */
  get spn(): string {
    return this.#context?.spn ?? '';
  }

  /** True when the handshake fell back to NTLM inside SPNEGO. */
  get usedNtlmFallback(): boolean {
    return this.#context?.usedNtlmFallback ?? false;
  }

  /** NTLM inside Negotiate authenticates the connection (C5, H1). */
  get connectionBound(): boolean {
    return this.#context?.connectionBound ?? false;
  }

  /** True when the Kerberos token carries the TLS channel bindings. */
  get channelBound(): boolean {
    return this.#context?.channelBound ?? false;
  }

  /** Whether the server refused a ticket that has been dropped since (a key rotation): run again. */
  get renewed(): boolean {
    return this.#context?.renewed ?? false;
  }

  /** Before the first step nothing was sent; unsure counts as a password (R4). */
  get sentPassword(): boolean {
    return this.#context?.sentPassword ?? true;
  }

  step(challenge: Challenge | undefined, leg: LegInfo, gaveUp?: () => boolean): Promise<string> {
    // Once loaded, straight through: no async frame of ours around each step (per-request mode).
    if (this.#context) return this.#context.step(challenge, leg, gaveUp);
    if (contexts) return this.#made(contexts).step(challenge, leg, gaveUp);
    return import('./context.ts').then((loaded) => {
      contexts = loaded;
      return (this.#context ?? this.#made(loaded)).step(challenge, leg, gaveUp);
    });
  }

  /** What a running step waits on (GSS-API for the SPN), for the handshake's timeout message. */
  get waitingOn(): string | undefined {
    return this.#context?.waitingOn;
  }

  #made(loaded: typeof import('./context.ts')): NegotiateContext {
    this.#context = new loaded.NegotiateContext(this.#o, this.#memory);
    // Ended while its code loaded: its step says so, and no GSS-API context is made.
    if (this.#disposed) this.#context.dispose();
    return this.#context;
  }

  /** The handshake is over: the GSS-API context, if one was made, is freed now (C4). */
  dispose(): void {
    this.#disposed = true;
    this.#context?.dispose();
  }

  finish(challenge: Challenge | undefined, leg: LegInfo): Promise<void> {
    // Never stepped: no handshake took place, nothing to verify (as NegotiateContext answers).
    return this.#context ? this.#context.finish(challenge, leg) : Promise.resolve();
  }
}

/** The options that name one of a few values, with those values: a typo must not pass (plain JavaScript). */
const CHOICES: ReadonlyArray<readonly [keyof NegotiateOptions, readonly unknown[]]> = [
  ['mech', ['spnego', 'kerberos']],
  ['backend', ['auto', 'gssapi', 'kerberos']],
  ['mutualAuth', ['required', 'optional']],
  ['ntlmFallback', ['spnego', 'raw', false]],
];

/**
 * The Negotiate mechanism: scheme `Negotiate`, level `either` (Persistent-Auth decides), multileg (SPNEGO
 * may take several legs), proactive (a Kerberos token can go on the first request).
 * @param names - How its errors name the options and credentials that fix them: the agent's own by
 * default; a proxy's ({@link PROXY_KERBEROS_NAMES}) name `proxy.negotiate.*` (H5).
 */
export function negotiateMechanism(
  options: NegotiateOptions = {},
  names: KerberosNames = ORIGIN_KERBEROS_NAMES,
): Mechanism {
  for (const [name, allowed] of CHOICES) {
    const value = options[name];
    if (value !== undefined && !allowed.includes(value))
      throw new ConfigError(
        `${names.options}.${name} must be one of ${allowed.map((v) => JSON.stringify(v)).join(', ')}, got ${JSON.stringify(value)}`,
      );
  }
  const memory: KerberosMemory = { unavailableUntil: 0, names };
  // Tickets from a keytab go to a cache of this mechanism's own (MEMORY: names are process-global, so a
  // unique one): later handshakes reuse them and GSS-API renews them from the keytab when they expire.
  const opts: NegotiateOptions =
    options.keytab && !options.ccache
      ? { ...options, ccache: `MEMORY:multileg-${process.pid}-${++keytabCaches}-${randomBytes(6).toString('hex')}` }
      : options;
  return {
    scheme: SCHEME,
    level: 'either',
    multileg: true,
    proactive: true,
    // A password goes only through the NTLM fallback (M5); a Kerberos ticket locks no account.
    usesPassword: opts.credentials !== undefined && opts.ntlmFallback !== false && opts.mech !== 'kerberos',
    // The `kerberos` addon cannot bind: then a proactive token need not wait for the connection;
    // nor need NTLM's first message, while Kerberos is remembered unusable and the password falls back.
    get bindsFirstToken() {
      const ntlmFirst =
        kerberosRemembered(memory) &&
        opts.credentials !== undefined &&
        opts.ntlmFallback !== false &&
        opts.mech !== 'kerberos';
      return opts.channelBindings !== false && memory.bindsChannel !== false && !ntlmFirst;
    },
    createContext: () => new LazyNegotiateContext(opts, memory),
    holdsCredentials(identity) {
      const held = memory.holders?.get(identity)?.stillHolds?.();
      // Not kept for the next context either: it would fail against the changed cache.
      if (held === false) memory.creds?.forget(identity);
      return held;
    },
  };
}

let keytabCaches = 0;

/** Kerberos is remembered unusable (see {@link KerberosMemory}): its time has not run out, or its recheck runs. */
export function kerberosRemembered(memory: KerberosMemory): boolean {
  return memory.reason !== undefined && (memory.rechecking === true || Date.now() < memory.unavailableUntil);
}
