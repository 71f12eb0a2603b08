import { pooledRandom } from '../mechanisms/random.ts';
import type { AcceptorLike, SessionInfo } from './types.ts';

/** One incomplete security context: a handshake the server is in the middle of. */
export interface PendingContext {
  /** The Auth-ID naming it (also kept for contexts whose Auth-ID is never sent, e.g. legacy). */
  readonly authId: string;
  readonly scheme: string;
  readonly acceptor: AcceptorLike;
  readonly createdAt: number;
}

/**
 * Authentication state of one session: an h2 session or an HTTP/1.1 connection. Auth-IDs are
 * scoped to it (D§3.1: an Auth-ID is never valid across sessions), so a map per session rather
 * than one per server.
 */
export class SessionState {
  readonly id: string;
  readonly protocol: 'h2' | 'http/1.1';
  open = true;
  /** Set once a handshake authenticated the session/connection (not in per-request mode). */
  user: string | undefined;
  requests = 0;
  /** Requests being handled right now. */
  inflight = 0;
  /** HTTP/1.1: close the connection after the response in flight. */
  endRequested = false;
  /** Incomplete contexts by Auth-ID. */
  readonly contexts = new Map<string, PendingContext>();
  /** HTTP/1.1 only: the context bound to the connection, continued by requests without Auth-ID. */
  bound: PendingContext | undefined;
  /** Closes the session/connection gracefully (fault switches). */
  readonly end: () => void;

  constructor(id: string, protocol: 'h2' | 'http/1.1', end: () => void) {
    this.id = id;
    this.protocol = protocol;
    this.end = end;
  }

  /** Drops contexts older than `ttlMs`: an expired Auth-ID is then simply unknown (D2§3.1). */
  expire(now: number, ttlMs: number): void {
    for (const [id, ctx] of this.contexts) {
      if (now - ctx.createdAt > ttlMs) this.contexts.delete(id);
    }
    if (this.bound && !this.contexts.has(this.bound.authId)) this.bound = undefined;
  }

  /** Stores a new context under a fresh random Auth-ID and returns it. */
  add(scheme: string, acceptor: AcceptorLike, now: number): PendingContext {
    let authId: string;
    // 12 random bytes make collisions practically impossible; the loop makes them impossible.
    do authId = pooledRandom(12).toString('base64url');
    while (this.contexts.has(authId));
    const ctx: PendingContext = { authId, scheme, acceptor, createdAt: now };
    this.contexts.set(authId, ctx);
    return ctx;
  }

  /** Destroys a context's mapping (end of its handshake, success or failure — D§3.1). */
  remove(ctx: PendingContext): void {
    this.contexts.delete(ctx.authId);
    if (this.bound === ctx) this.bound = undefined;
  }

  /** Forgets everything when the session ends. */
  close(): void {
    this.open = false;
    this.contexts.clear();
    this.bound = undefined;
  }

  info(): SessionInfo {
    const base = {
      id: this.id,
      protocol: this.protocol,
      open: this.open,
      requests: this.requests,
      incompleteContexts: this.contexts.size,
    };
    return this.user === undefined ? base : { ...base, user: this.user };
  }
}
