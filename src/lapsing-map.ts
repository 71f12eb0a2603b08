/**
 * A map whose entries lapse at their own time: what an origin, or a proxy, remembers of schemes that
 * cannot run there (R4, T2), each until its `until` (a `Date.now()` time). Lapsed entries are dropped
 * as they are read.
 */
export class LapsingMap<K, V> {
  readonly #entries = new Map<K, { readonly value: V; readonly until: number }>();

  /** Remembers `value` for `key` until `until` (replacing what was there). */
  set(key: K, value: V, until: number): void {
    this.#entries.set(key, { value, until });
  }

  /** Whether anything is remembered, lapsed entries not yet dropped included (a cheap first test). */
  get any(): boolean {
    return this.#entries.size > 0;
  }

  /** The entries that have not lapsed, in the order they were set; lapsed ones are dropped. */
  live(): Array<[K, V]> {
    if (this.#entries.size === 0) return [];
    const now = Date.now();
    const out: Array<[K, V]> = [];
    for (const [key, e] of this.#entries) {
      if (e.until > now) out.push([key, e.value]);
      else this.#entries.delete(key);
    }
    return out;
  }

  /** The value for `key`, unless lapsed. */
  get(key: K): V | undefined {
    const e = this.#entries.get(key);
    if (e === undefined) return undefined;
    if (e.until > Date.now()) return e.value;
    this.#entries.delete(key);
    return undefined;
  }

  /** When `key`'s entry lapses (a `Date.now()` time), unless it has. */
  until(key: K): number | undefined {
    return this.get(key) === undefined ? undefined : this.#entries.get(key)!.until;
  }

  delete(key: K): void {
    this.#entries.delete(key);
  }

  clear(): void {
    this.#entries.clear();
  }
}
