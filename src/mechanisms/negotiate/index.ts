/**
 * Negotiate (RFC 4559) through GSS-API via the optional `kerberos` package (M2): SPNEGO or raw Kerberos,
 * SPN `HTTP@host` by default, ccache or principal choice, delegation only when asked, and mutual
 * authentication (the server's final token is verified; a server that fails it is an error). When
 * Kerberos has no ticket and the agent has a password, falls back to NTLM inside SPNEGO
 * (src/mechanisms/spnego).
 */
import type { Challenge } from '../../challenge/types.ts';
import {
  InvalidTokenError,
  MechanismError,
  MechanismUnavailableError,
  type MultilegError,
  MutualAuthError,
} from '../../errors.ts';
import { SpnegoNtlmContext } from '../spnego/ntlm.ts';
import type { Credentials, LegInfo, Mechanism, MechanismContext } from '../types.ts';
import {
  GSS_C_DELEG_FLAG,
  GSS_C_MUTUAL_FLAG,
  GSS_C_SEQUENCE_FLAG,
  GSS_MECH_OID_KRB5,
  GSS_MECH_OID_SPNEGO,
  type KerberosClientLike,
  type KerberosClientOptions,
  type KerberosModuleLike,
  loadKerberos,
} from './addon.ts';
import { KerberosNoTicketError, mapGssError } from './errors.ts';
import { spnFor } from './spn.ts';

export {
  GSS_C_DELEG_FLAG,
  GSS_C_MUTUAL_FLAG,
  GSS_C_SEQUENCE_FLAG,
  GSS_MECH_OID_KRB5,
  GSS_MECH_OID_SPNEGO,
  type KerberosClientLike,
  type KerberosClientOptions,
  type KerberosModuleLike,
  loadKerberos,
} from './addon.ts';
export {
  KerberosClockSkewError,
  KerberosError,
  KerberosKdcUnreachableError,
  KerberosNoTicketError,
  KerberosTicketExpiredError,
  KerberosUnknownServiceError,
  mapGssError,
} from './errors.ts';
export { canonicalHost, normalizeSpn, spnFor } from './spn.ts';

const SCHEME = 'Negotiate';
/** Largest base64 token accepted from a server (S3). */
export const MAX_NEGOTIATE_TOKEN_LENGTH = 64 * 1024;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

export interface NegotiateOptions {
  /** `spnego` (default, mechOID 6) or raw `kerberos` (mechOID 9). */
  readonly mech?: 'spnego' | 'kerberos';
  /** Service principal, `HTTP@host` (also `HTTP/host[@REALM]`). Default `<serviceName>@<hostname>`. */
  readonly spn?: string;
  /** Service part of the default SPN (default `HTTP`). */
  readonly serviceName?: string;
  /** Opt-in: follow CNAMEs of the host (node:dns) before building the SPN. */
  readonly canonicalizeHost?: boolean;
  /** Append `:port` to the host in the default SPN. */
  readonly includePort?: boolean;
  /** Client principal to use (`user@REALM`), instead of the default ccache's. */
  readonly principal?: string;
  /** Request credential delegation (GSS_C_DELEG_FLAG). Default false: never delegate unless asked. */
  readonly delegate?: boolean;
  /** `required` (default): the server's final token must verify; `optional`: its absence is tolerated. */
  readonly mutualAuth?: 'required' | 'optional';
  /**
   * Password credentials: when Kerberos has no ticket (and mech is `spnego`), authenticate with NTLM inside
   * SPNEGO instead.
   */
  readonly credentials?: Credentials;
  /** How the NTLM fallback is sent: inside SPNEGO with mechListMIC (default) or as raw NTLMSSP. */
  readonly ntlmFallback?: 'spnego' | 'raw' | false;
  /** Test hook / injection: the `kerberos` module (default: `await import('kerberos')`). */
  readonly kerberos?: KerberosModuleLike;
  /** Test hook: DNS CNAME resolver for canonicalizeHost. */
  readonly resolveCname?: (host: string) => Promise<string[]>;
}

/** Strictly decodes nothing, but validates a server token (canonical base64, bounded length; S3). */
function checkToken(token: string): string {
  if (
    token.length === 0 ||
    token.length > MAX_NEGOTIATE_TOKEN_LENGTH ||
    token.length % 4 !== 0 ||
    !BASE64.test(token)
  ) {
    throw new InvalidTokenError('Negotiate token (bad base64 or too long)');
  }
  return token;
}

/** The GSS flags a context asks for. */
export function negotiateFlags(o: Pick<NegotiateOptions, 'delegate' | 'mutualAuth'>): number {
  let flags = GSS_C_MUTUAL_FLAG | GSS_C_SEQUENCE_FLAG;
  if (o.delegate) flags |= GSS_C_DELEG_FLAG;
  return flags;
}

type State = 'initial' | 'sent' | 'done';

/** How long "no Kerberos here" is remembered before GSS-API is asked again (a kinit may follow). */
export const NO_KERBEROS_MEMORY_MS = 30_000;

/** Shared by one mechanism's contexts: when GSS-API last said it cannot help (no ticket, no addon). */
interface KerberosMemory {
  unavailableUntil: number;
}

class NegotiateContext implements MechanismContext {
  readonly #o: NegotiateOptions;
  readonly #memory: KerberosMemory;
  #state: State = 'initial';
  #client: KerberosClientLike | undefined;
  #fallback: SpnegoNtlmContext | undefined;
  #spn = '';
  #mutualVerified = false;

  constructor(o: NegotiateOptions, memory: KerberosMemory) {
    this.#o = o;
    this.#memory = memory;
  }

  get complete(): boolean {
    if (this.#fallback) return this.#fallback.complete;
    return this.#client?.contextComplete ?? false;
  }

  get identity(): string | undefined {
    if (this.#fallback) return this.#fallback.identity;
    const u = this.#client?.contextComplete ? this.#client.username : undefined;
    return u || undefined;
  }

  #canFallBack(): boolean {
    return this.#o.credentials !== undefined && this.#o.ntlmFallback !== false && this.#o.mech !== 'kerberos';
  }

  /** The SPN this context asked a ticket for (after the first step). */
  get spn(): string {
    return this.#spn;
  }

  /** True when the handshake fell back to NTLM inside SPNEGO. */
  get usedNtlmFallback(): boolean {
    return this.#fallback !== undefined;
  }

  #mapError(e: unknown): MultilegError {
    return mapGssError(e, { spn: this.#spn, ...(this.#o.principal ? { principal: this.#o.principal } : {}) });
  }

  async step(challenge: Challenge | undefined, leg: LegInfo): Promise<string> {
    if (this.#fallback) return await this.#fallback.step(challenge, leg);
    const token = challenge?.token68 !== undefined ? checkToken(challenge.token68) : undefined;
    if (this.#state === 'initial') {
      // A token in the first challenge is not meaningful to an initiator with no context: ignored.
      this.#spn = await spnFor(this.#o, leg.hostname, leg.port, this.#o.resolveCname);
      const options: KerberosClientOptions = {
        mechOID: this.#o.mech === 'kerberos' ? GSS_MECH_OID_KRB5 : GSS_MECH_OID_SPNEGO,
        flags: negotiateFlags(this.#o),
        ...(this.#o.principal ? { principal: this.#o.principal } : {}),
      };
      let out: string | null;
      try {
        // Per-request mode asks for a token per request: don't ask GSS-API again and again when it
        // just said it has no ticket — answer as that failure would, straight away.
        if (Date.now() < this.#memory.unavailableUntil && this.#canFallBack()) throw NO_TICKET_REMEMBERED;
        const k = this.#o.kerberos ?? (await loadKerberos());
        this.#client = await k.initializeClient(this.#spn, options);
        out = await this.#client.step('');
      } catch (e) {
        const err = e === NO_TICKET_REMEMBERED || e instanceof MechanismUnavailableError ? e : this.#mapError(e);
        const creds = this.#o.credentials;
        const mode = this.#o.ntlmFallback ?? 'spnego';
        // No ticket, or no GSS-API here at all: a password can still authenticate, with NTLM (as SSPI does).
        const noKerberos =
          err === NO_TICKET_REMEMBERED ||
          err instanceof KerberosNoTicketError ||
          err instanceof MechanismUnavailableError;
        if (noKerberos && err !== NO_TICKET_REMEMBERED)
          this.#memory.unavailableUntil = Date.now() + NO_KERBEROS_MEMORY_MS;
        if (noKerberos && creds && mode !== false && this.#o.mech !== 'kerberos') {
          this.#client = undefined;
          this.#fallback = new SpnegoNtlmContext(creds, {
            wrap: mode,
            ...(this.#o.mutualAuth ? { mutualAuth: this.#o.mutualAuth } : {}),
          });
          return await this.#fallback.step(undefined, leg);
        }
        throw err;
      }
      this.#state = 'sent';
      if (!out) throw new MechanismError(SCHEME, 'GSS-API produced no initial token');
      return `${SCHEME} ${out}`;
    }
    if (this.#state === 'done' || !this.#client) {
      throw new MechanismError(SCHEME, 'the Negotiate handshake is over; no further token can be produced');
    }
    if (token === undefined) {
      this.#state = 'done';
      throw new MechanismError(
        SCHEME,
        `the server rejected the Negotiate token for ${this.#spn} (401 without a token); check that the server's keytab matches the SPN and the client's realm is trusted`,
      );
    }
    let out: string | null;
    try {
      out = await this.#client.step(token);
    } catch (e) {
      this.#state = 'done';
      throw this.#mapError(e);
    }
    if (!out) {
      this.#state = 'done';
      throw new MechanismError(SCHEME, 'the server asked for another leg but GSS-API has nothing more to send');
    }
    return `${SCHEME} ${out}`;
  }

  async finish(challenge: Challenge | undefined, leg: LegInfo): Promise<void> {
    if (this.#fallback) return await this.#fallback.finish(challenge);
    const client = this.#client;
    if (!client || this.#state === 'initial') return; // no handshake took place
    if (this.#state === 'done' && this.#mutualVerified) return;
    const token = challenge?.token68;
    if (token !== undefined && !client.contextComplete) {
      checkToken(token);
      try {
        await client.step(token);
      } catch (e) {
        this.#state = 'done';
        throw new MutualAuthError(
          `the server's final Negotiate token for ${this.#spn} failed GSS-API verification (${this.#mapError(e).message})`,
        );
      }
      if (!client.contextComplete) {
        this.#state = 'done';
        throw new MutualAuthError(`the server's final Negotiate token for ${this.#spn} did not complete the context`);
      }
      this.#mutualVerified = true;
    } else if (!client.contextComplete && (this.#o.mutualAuth ?? 'required') === 'required') {
      this.#state = 'done';
      throw new MutualAuthError(`the server sent no final Negotiate token for ${this.#spn} (to ${leg.origin})`);
    }
    this.#state = 'done';
  }
}

/**
 * The Negotiate mechanism: scheme `Negotiate`, level `either` (Persistent-Auth decides), multileg (SPNEGO
 * may take several legs), proactive (a Kerberos token can go on the first request).
 */
export function negotiateMechanism(opts: NegotiateOptions = {}): Mechanism {
  const memory: KerberosMemory = { unavailableUntil: 0 };
  return {
    scheme: SCHEME,
    level: 'either',
    multileg: true,
    proactive: true,
    createContext: () => new NegotiateContext(opts, memory),
  };
}

/** Stands for a remembered "no ticket": only ever leads to the NTLM fallback, never reaches a caller. */
const NO_TICKET_REMEMBERED = new Error('no Kerberos ticket (remembered)');
