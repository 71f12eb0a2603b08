/**
 * The slice of the optional `kerberos` package (mongodb-js/kerberos 7) that Negotiate uses, loaded lazily.
 * Its index.d.ts names the flags option `gssFlag`, but the C++ reads `flags` (verified): we type and pass
 * `flags`.
 */
import { MechanismUnavailableError } from '../../errors.ts';

export const GSS_C_DELEG_FLAG = 1;
export const GSS_C_MUTUAL_FLAG = 2;
export const GSS_C_SEQUENCE_FLAG = 8;
export const GSS_MECH_OID_SPNEGO = 6;
export const GSS_MECH_OID_KRB5 = 9;

/** Options the addon's C++ actually reads. */
export interface KerberosClientOptions {
  principal?: string;
  /** GSS request flags (the typings' `gssFlag` is ignored by the addon). */
  flags?: number;
  /** 6 = SPNEGO, 9 = Kerberos; anything else silently means the default (krb5) mech. */
  mechOID?: number;
}

export interface KerberosClientLike {
  /** base64 in, base64 out; `null`/'' when there is nothing to send. */
  step(challenge: string): Promise<string | null>;
  readonly username: string;
  readonly contextComplete: boolean;
  /**
   * Drops this context's service ticket from its cache (the GSS-API binding only; the addon cannot):
   * the server refused it as sealed with a key it no longer has. True when one was dropped.
   */
  forgetServiceTicket?(): boolean;
  /**
   * Whether the cache the credential came from still holds its principal's tickets (the GSS-API
   * binding only): false after a kdestroy or a kinit as another principal; undefined: cannot tell.
   */
  stillHolds?(): boolean | undefined;
  /** Made on a credential kept from an earlier context (the GSS-API binding's CredCache). */
  readonly keptCredential?: boolean;
  /**
   * Frees the context now (the GSS-API binding; the addon has none): its handshake is over. Names
   * and {@link stillHolds} still answer.
   */
  dispose?(): void;
}

export interface KerberosModuleLike {
  initializeClient(service: string, options?: KerberosClientOptions): Promise<KerberosClientLike>;
}

let loaded: Promise<KerberosModuleLike> | undefined;

/** Imports `kerberos` once; a missing/broken addon becomes {@link MechanismUnavailableError}. */
export function loadKerberos(): Promise<KerberosModuleLike> {
  loaded ??= (async () => {
    try {
      const mod = (await import('kerberos')) as unknown as KerberosModuleLike & { default?: KerberosModuleLike };
      const k = typeof mod.initializeClient === 'function' ? mod : mod.default;
      if (!k || typeof k.initializeClient !== 'function') throw new Error('kerberos: no initializeClient export');
      return k;
    } catch (e) {
      loaded = undefined; // allow a later retry (e.g. after installing)
      throw new MechanismUnavailableError(
        'Negotiate',
        "install the optional 'kerberos' package (needs libkrb5-dev / GSS-API headers to build)",
        { cause: e },
      );
    }
  })();
  return loaded;
}
