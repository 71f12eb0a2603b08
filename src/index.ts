// First: on an unsupported Node this throws a clear error before undici is loaded.
import './runtime-check.ts';

export {
  type ComposedMultilegAgent,
  MAX_REPORTS,
  MultilegAgent,
  type MultilegStats,
  type SessionSnapshot,
  type SetCredentialsOptions,
} from './agent.ts';
export { chooseChallenge, DEFAULT_SCHEME_ORDER, parseChallenges } from './challenge/index.ts';
export type { Challenge } from './challenge/types.ts';
export type { ConnectRoute, ConnectTarget, ConnectTo } from './connect-to.ts';
export {
  HANDSHAKE_CHANNEL,
  LEG_CHANNEL,
  type LegErrorEvent,
  type LegEvent,
  type LegRequestEvent,
  type LegResponseEvent,
  PROXY_UNANSWERED_CHANNEL,
  type ProxyUnansweredEvent,
  type RedactedHeader,
  UNANSWERED_CHANNEL,
  type UnansweredEvent,
  WITHHELD_CHANNEL,
  type WithheldEvent,
} from './diagnostics.ts';
export * from './errors.ts';
export { BasicOverHttpError, basicMechanism } from './mechanisms/basic/index.ts';
export { DigestChallengeError, digestMechanism } from './mechanisms/digest/index.ts';
export { GssapiUnavailableError } from './mechanisms/gssapi/index.ts';
export {
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
  type NegotiateOptions,
  negotiateMechanism,
} from './mechanisms/negotiate/index.ts';
export { ntlmMechanism, ntlmMechanismWithScheme } from './mechanisms/ntlm/index.ts';
export type { AuthLevel, Credentials, LegInfo, Mechanism, MechanismContext } from './mechanisms/types.ts';
export { MIN_NODE_VERSION, UnsupportedNodeError } from './node-version.ts';
export {
  type CertificateRequestInfo,
  type ClientCertificate,
  type ClientCertificateSelector,
  type CookieStore,
  type DistinguishedName,
  type Limits,
  type MultilegAgentOptions,
  SCHEME_NAMES,
  type SchemeName,
} from './options.ts';
export {
  ProxyAuthenticationError,
  ProxyAuthorizationHeaderError,
  ProxyCertificateError,
  ProxyClosedError,
  ProxyConnectError,
  ProxyConnectTimeoutError,
  ProxyProtocolError,
  ProxyResponseTimeoutError,
  ProxyTimeoutError,
  ProxyUnreachableError,
  ProxyUrlError,
  RemoteHttp1Error,
} from './proxy/errors.ts';
export type { ProxyOptions } from './proxy/options.ts';
export { issuedByOneOf } from './session/acceptable-issuers.ts';
export {
  ClientCertificateAfterHandshakeError,
  ClientCertificateError,
  ClientCertificateRefusedError,
  ClientCertificateRequiredError,
} from './session/client-certificate.ts';
export type { HandshakeReport } from './session/exchange.ts';
export { type CallerConnectionOption, NtlmUnpairedError, type UnpairedReason } from './session/ntlm-pairing.ts';
export { RelocationLimitError } from './session/origin-pool.ts';
export type { RefusalMemory, RefusalPlace, RememberedRefusal } from './session/refusal-memory.ts';
export type { SessionEvent, SessionState } from './session/state.ts';
export {
  CleartextCredentialsError,
  type TrustedOrigins,
  TrustRequiredError,
  type WithheldReason,
} from './trust/policy.ts';
