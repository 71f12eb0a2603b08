import { chooseChallenge } from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import type { Mechanism } from './types.ts';

/** The scheme key of the TLS list message's client-certificate challenge (T3). */
export const TRANSPORT = 'transport';

/**
 * The mechanisms an agent can use, and the order it prefers them in (T2). `transport`: the agent
 * can answer `Transport` challenges (a client certificate), which no Mechanism carries.
 */
export class MechanismSet {
  readonly #byScheme = new Map<string, Mechanism>();
  readonly #order: readonly string[];
  readonly #transport: boolean;

  constructor(mechanisms: readonly Mechanism[], order: readonly string[], transport = false) {
    for (const m of mechanisms) this.#byScheme.set(m.scheme.toLowerCase(), m);
    this.#order = order;
    this.#transport = transport;
  }

  get(scheme: string): Mechanism | undefined {
    return this.#byScheme.get(scheme.toLowerCase());
  }

  get empty(): boolean {
    return this.#byScheme.size === 0 && !this.#transport;
  }

  /**
   * The strongest offered challenge we can answer, skipping `excluded` schemes (lower-case). For
   * `Transport` there is no mechanism: the caller presents a client certificate instead.
   */
  choose(
    challenges: readonly Challenge[],
    excluded: ReadonlySet<string> = new Set(),
  ): { challenge: Challenge; mechanism: Mechanism | undefined } | undefined {
    const available = [...this.#byScheme.keys(), ...(this.#transport ? [TRANSPORT] : [])].filter(
      (k) => !excluded.has(k),
    );
    // Only the TLS client-certificate mode of Transport is defined; another mode is not ours to answer.
    const answerable = challenges.filter(
      (c) => c.schemeKey !== TRANSPORT || c.params.mode?.toLowerCase() === 'tls-client-certificate',
    );
    const challenge = chooseChallenge(answerable, available, this.#order);
    if (!challenge) return undefined;
    if (challenge.schemeKey === TRANSPORT) return { challenge, mechanism: undefined };
    const mechanism = this.#byScheme.get(challenge.schemeKey);
    return mechanism ? { challenge, mechanism } : undefined;
  }
}
