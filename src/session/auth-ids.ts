import type { AuthIdClaims } from '../handshake/handshake.ts';

/**
 * The Auth-IDs one session's live handshakes hold (C3, D2§3.1: never one Auth-ID on two requests
 * in flight). A correct server gives each handshake its own; one that gives the same to two at once
 * finds the second claim refused, and that handshake sends nothing under it. Auth-IDs are scoped to
 * their session (D§3.1), so each session has its own, dropped with it.
 */
export class SessionAuthIds implements AuthIdClaims {
  readonly #held = new Set<string>();

  /** One Set operation: the size tells whether `id` was held already. */
  claim(id: string): boolean {
    const before = this.#held.size;
    return this.#held.add(id).size !== before;
  }

  release(id: string): void {
    this.#held.delete(id);
  }

  /** How many Auth-IDs are held now (tests, diagnostics). */
  get size(): number {
    return this.#held.size;
  }
}
