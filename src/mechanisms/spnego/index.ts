/** SPNEGO (RFC 4178): DER tokens and NTLM inside SPNEGO for the Negotiate scheme. */

export {
  ntlmSign,
  SPNEGO_NTLM_FLAGS,
  SpnegoNtlmContext,
  type SpnegoNtlmOptions,
  spnegoNtlmMechanism,
} from './ntlm.ts';
export {
  decodeNegTokenInit,
  decodeNegTokenResp,
  encodeMechTypeList,
  encodeNegTokenInit,
  encodeNegTokenResp,
  NegState,
  type NegTokenResp,
  OID_KRB5,
  OID_MS_KRB5,
  OID_NTLMSSP,
  OID_SPNEGO,
} from './tokens.ts';
