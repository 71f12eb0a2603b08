import type { MultilegAgentOptions } from '../options.ts';
import { basicMechanism } from './basic/index.ts';
import { digestMechanism } from './digest/index.ts';
import { negotiateMechanism } from './negotiate/mechanism.ts';
import { ntlmMechanism } from './ntlm/index.ts';
import type { Mechanism } from './types.ts';

/**
 * The mechanisms an agent gets from its options: Negotiate (Kerberos from the ticket cache, or
 * NTLM inside Negotiate with the password when there is no ticket) unless turned off, and NTLM,
 * Digest and Basic when there is a password (Basic over cleartext only with `allowBasicOverHttp`).
 * Later entries of `options.mechanisms` replace these by scheme.
 */
export function defaultMechanisms(options: MultilegAgentOptions): Mechanism[] {
  const out: Mechanism[] = [];
  if (options.negotiate !== false) {
    out.push(
      negotiateMechanism({
        ntlmFallback: 'raw',
        ...options.negotiate,
        ...(options.credentials ? { credentials: options.credentials } : {}),
      }),
    );
  }
  if (options.credentials) {
    out.push(ntlmMechanism(options.credentials));
    out.push(digestMechanism(options.credentials));
    out.push(basicMechanism(options.credentials, { allowHttp: options.allowBasicOverHttp === true }));
  }
  return out;
}
