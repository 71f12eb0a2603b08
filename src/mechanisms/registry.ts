import { chooseChallenge } from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import type { Mechanism } from './types.ts';

/** The mechanisms an agent can use, and the order it prefers them in (T2). */
export class MechanismSet {
  readonly #byScheme = new Map<string, Mechanism>();
  readonly #order: readonly string[];

  constructor(mechanisms: readonly Mechanism[], order: readonly string[]) {
    for (const m of mechanisms) this.#byScheme.set(m.scheme.toLowerCase(), m);
    this.#order = order;
  }

  get(scheme: string): Mechanism | undefined {
    return this.#byScheme.get(scheme.toLowerCase());
  }

  get empty(): boolean {
    return this.#byScheme.size === 0;
  }

  /** The strongest offered challenge we have a mechanism for, skipping `excluded` schemes. */
  choose(
    challenges: readonly Challenge[],
    excluded: ReadonlySet<string> = new Set(),
  ): { challenge: Challenge; mechanism: Mechanism } | undefined {
    const available = [...this.#byScheme.keys()].filter((k) => !excluded.has(k));
    const challenge = chooseChallenge(challenges, available, this.#order);
    if (!challenge) return undefined;
    const mechanism = this.#byScheme.get(challenge.schemeKey);
    return mechanism ? { challenge, mechanism } : undefined;
  }
}
