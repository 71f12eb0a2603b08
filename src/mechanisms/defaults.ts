import type { MultilegAgentOptions } from '../options.ts';
import { ntlmMechanism } from './ntlm/index.ts';
import type { Mechanism } from './types.ts';

/**
 * The mechanisms an agent gets from its options. With a password: NTLM, and Negotiate carrying
 * raw NTLMSSP tokens (as Windows SSPI falls back to, and IIS and MIT's mechglue accept). Negotiate
 * may send its first token proactively on a per-request origin (C4).
 */
export function defaultMechanisms(options: MultilegAgentOptions): Mechanism[] {
  const out: Mechanism[] = [];
  if (options.credentials) {
    out.push({ ...ntlmMechanism(options.credentials, { scheme: 'Negotiate' }), proactive: true });
    out.push(ntlmMechanism(options.credentials));
  }
  return out;
}
