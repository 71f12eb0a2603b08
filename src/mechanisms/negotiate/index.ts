/**
 * Negotiate (RFC 4559) through GSS-API (M2, M5): the mechanism an agent holds (mechanism.ts) and
 * the handshake it runs (context.ts, loaded by a context's first step), the GSS-API backends and
 * their errors.
 */
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
export { type BackendChoice, type KerberosBackend, loadBackend } from './backend.ts';
export {
  carriesKerberosApReq,
  MAX_NEGOTIATE_TOKEN_LENGTH,
  NO_KERBEROS_MEMORY_MS,
  negotiateFlags,
} from './context.ts';
export {
  fallbackReasonOf,
  KerberosCcacheError,
  KerberosClockSkewError,
  KerberosError,
  KerberosKdcUnreachableError,
  KerberosKeytabError,
  KerberosNoTicketError,
  KerberosOtherPrincipalError,
  KerberosTicketExpiredError,
  KerberosUnknownServiceError,
  KerberosWrongRealmError,
  mapGssError,
  type NegotiateFallbackReason,
} from './errors.ts';
export { type NegotiateOptions, negotiateMechanism } from './mechanism.ts';
export { canonicalHost, normalizeSpn, spnFor } from './spn.ts';
