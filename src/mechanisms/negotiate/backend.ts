/**
 * Which GSS-API implementation produces Kerberos tokens: the system GSS-API through koffi
 * (src/mechanisms/gssapi: channel bindings, per-agent ccache / keytab), or the `kerberos` addon (SSPI on
 * Windows, GSS.framework on macOS; no channel bindings, process-wide ticket cache). Both are optional and
 * loaded on first use.
 */
import { MechanismUnavailableError } from '../../errors.ts';
import { log } from '../../log.ts';
import { GssapiUnavailableError, GssClient, type GssClientOptions, loadGssFunctions } from '../gssapi/index.ts';
import {
  GSS_MECH_OID_KRB5,
  GSS_MECH_OID_SPNEGO,
  type KerberosClientLike,
  type KerberosModuleLike,
  loadKerberos,
} from './addon.ts';

/** What a Negotiate context asks of a backend (the addon honours only mech, flags and principal). */
export type BackendRequest = GssClientOptions;

export interface KerberosBackend {
  /** `gssapi`: system GSS-API via koffi; `kerberos`: the addon (or an injected module). */
  readonly name: 'gssapi' | 'kerberos';
  /** Whether tokens from this backend carry channel bindings. */
  readonly bindsChannel: boolean;
  initializeClient(spn: string, r: BackendRequest): Promise<KerberosClientLike>;
}

/** `auto` (default): the GSS-API binding where it loads, else the `kerberos` addon. */
export type BackendChoice = 'auto' | 'gssapi' | 'kerberos';

const gssapiBackend: KerberosBackend = {
  name: 'gssapi',
  bindsChannel: true,
  initializeClient: (spn, r) => GssClient.create(spn, r),
};

function addonBackend(k: KerberosModuleLike): KerberosBackend {
  return {
    name: 'kerberos',
    bindsChannel: false,
    initializeClient: (spn, r) =>
      k.initializeClient(spn, {
        mechOID: r.mech === 'kerberos' ? GSS_MECH_OID_KRB5 : GSS_MECH_OID_SPNEGO,
        flags: r.flags,
        ...(r.principal ? { principal: r.principal } : {}),
      }),
  };
}

/**
 * Why `principal` with raw Kerberos cannot go to the addon (S6): it acquires the principal's
 * credential for every installed mechanism, and when only another one (gss-ntlmssp) has it, MIT's
 * raw Kerberos context takes the default ticket instead — alice's token for an agent made as bob.
 */
const ADDON_RAW_PRINCIPAL = "the kerberos addon's raw Kerberos may use the default ticket, whoever's it is";

/**
 * Picks the backend. A per-agent `ccache` or `keytab` needs the GSS-API binding: without it that is a
 * {@link GssapiUnavailableError} (the addon would silently use the process-wide cache instead); so
 * does `principal` with `mech: 'kerberos'` (the addon may use another principal's ticket). An
 * injected `kerberos` module is taken as given.
 */
export async function loadBackend(
  o: {
    readonly backend?: BackendChoice;
    readonly kerberos?: KerberosModuleLike;
    readonly ccache?: string;
    readonly keytab?: string;
    readonly principal?: string;
    readonly mech?: 'spnego' | 'kerberos';
  },
  // The messages name the options as given: `negotiate`, or a proxy's `proxy.negotiate` (H5).
  n = 'negotiate',
): Promise<KerberosBackend> {
  if (o.kerberos) return addonBackend(o.kerberos);
  const choice = o.backend ?? 'auto';
  const needsStore = o.ccache !== undefined || o.keytab !== undefined;
  const rawPrincipal = o.principal !== undefined && o.mech === 'kerberos';
  if (choice === 'kerberos') {
    if (needsStore) {
      throw new MechanismUnavailableError(
        'Negotiate',
        `${n}.ccache / ${n}.keytab need the GSS-API binding: drop ${n}.backend: 'kerberos'`,
      );
    }
    if (rawPrincipal) {
      throw new MechanismUnavailableError(
        'Negotiate',
        `${n}.principal with mech: 'kerberos' needs the GSS-API binding (${ADDON_RAW_PRINCIPAL}): drop ${n}.backend: 'kerberos', or use mech: 'spnego'`,
      );
    }
    return addonFor(o, n);
  }
  try {
    await loadGssFunctions();
    return gssapiBackend;
  } catch (e) {
    if (choice === 'gssapi' || needsStore || rawPrincipal || !(e instanceof GssapiUnavailableError)) {
      if (needsStore && e instanceof GssapiUnavailableError) {
        throw new GssapiUnavailableError(`${n}.ccache / ${n}.keytab need it: ${e.message}`, { cause: e });
      }
      if (rawPrincipal && e instanceof GssapiUnavailableError) {
        throw new GssapiUnavailableError(
          `${n}.principal with mech: 'kerberos' needs it (${ADDON_RAW_PRINCIPAL}), or use mech: 'spnego': ${e.message}`,
          { cause: e },
        );
      }
      throw e;
    }
    log.handshake('GSS-API binding unavailable (%s); using the kerberos addon, without channel bindings', e.code);
    return addonFor(o, n);
  }
}

/**
 * The addon as the backend, but not with `principal` on Windows (S6, fail safe): there it is SSPI,
 * which reads only user, domain and password, never the principal — its tokens would be the
 * logged-on user's for an agent made as another.
 */
async function addonFor(o: { readonly principal?: string }, n: string): Promise<KerberosBackend> {
  if (o.principal !== undefined && process.platform === 'win32')
    throw new MechanismUnavailableError(
      'Negotiate',
      `${n}.principal on Windows: the kerberos addon (SSPI) ignores it and would use the logged-on user's credentials; drop ${n}.principal (the logged-on user is used), or run the process as that user`,
    );
  return addonBackend(await loadKerberos());
}
