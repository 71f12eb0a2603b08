import { parseDigestAlgorithm, readDigestChallenge } from './digest.ts';
import type { Challenge } from './types.ts';

/**
 * The default preference, strongest first (T2). `Transport` (TLS client certificates) is absent on
 * purpose: it is ranked only when the caller puts it in the order.
 */
export const DEFAULT_SCHEME_ORDER: readonly string[] = Object.freeze(['Negotiate', 'NTLM', 'Digest', 'Basic']);

/**
 * Strength of a Digest `algorithm` parameter: MD5 1, SHA-256 2, SHA-512-256 3, each with or without `-sess`
 * (case-insensitive). Absent means MD5 (RFC 7616 §3.3). Unknown algorithms give -1: the client cannot
 * answer them.
 */
export function digestAlgorithmStrength(algorithm: string | undefined): number {
  return parseDigestAlgorithm(algorithm)?.strength ?? -1;
}

/**
 * Pick the strongest offered challenge the client can use (T2).
 *
 * A challenge is eligible when its scheme is both in `available` and in `order` (case-insensitive);
 * the earliest scheme in `order` wins. Among several Digest challenges one this client can answer
 * wins over one it cannot (no nonce, only qop=auth-int), then the strongest algorithm
 * (SHA-512-256 > SHA-256 > MD5); Digest challenges with an unknown algorithm are never chosen, so
 * the next scheme can be. Otherwise ties go to the challenge sent first, as the server listed it.
 *
 * @param challenges - From {@link parseChallenges}.
 * @param available - Scheme names the agent has mechanisms and credentials for.
 * @param order - Preference, strongest first; schemes not listed are never chosen. Defaults to
 *   {@link DEFAULT_SCHEME_ORDER}.
 * @returns The chosen challenge (one of `challenges`), or undefined when none is usable.
 */
export function chooseChallenge(
  challenges: readonly Challenge[],
  available: readonly string[],
  order: readonly string[] = DEFAULT_SCHEME_ORDER,
): Challenge | undefined {
  const rank = new Map<string, number>();
  order.forEach((name, i) => {
    const key = name.toLowerCase();
    if (!rank.has(key)) rank.set(key, i);
  });
  const usable = new Set(available.map((name) => name.toLowerCase()));
  let best: Challenge | undefined;
  let bestRank = Number.POSITIVE_INFINITY;
  let bestStrength = 0;
  for (const c of challenges) {
    const r = rank.get(c.schemeKey);
    if (r === undefined || !usable.has(c.schemeKey)) continue;
    const digest = c.schemeKey === 'digest';
    let strength = digest ? digestAlgorithmStrength(c.params.algorithm) : 0;
    if (strength < 0) continue;
    // Answerable first (the mechanism would refuse the others): above every algorithm strength (at most 3).
    if (digest && readDigestChallenge(c).fields) strength += 10;
    if (r < bestRank || (r === bestRank && strength > bestStrength)) {
      best = c;
      bestRank = r;
      bestStrength = strength;
    }
  }
  return best;
}
