import type { MultilegError } from '../errors.ts';

/**
 * The authentication state of one session (one HTTP/2 connection, or one HTTP/1.1 connection), as
 * an explicit state type and a pure transition function (draft §3, SPEC C1–C8).
 *
 *   fresh ──start──▶ handshaking ──success(session)──▶ authenticated ──start──▶ handshaking …
 *     ▲                  │  └──success(per-request)──▶ per-request ──server-authenticated──▶ authenticated
 *     └────failure───────┘
 *   any ──closed──▶ closed   (terminal: the connection ended; a new session starts fresh)
 */
export type SessionState =
  | { readonly kind: 'fresh' }
  | { readonly kind: 'handshaking'; readonly scheme: string; readonly leader: number; readonly previous: SettledState }
  | { readonly kind: 'authenticated'; readonly scheme: string; readonly identity?: string }
  | { readonly kind: 'per-request'; readonly scheme: string }
  /**
   * `http1Required`: it ended because the server wants HTTP/1.1 (GOAWAY HTTP_1_1_REQUIRED, legacy h2).
   * `failure`: it ended because the server failed to prove its identity (mutual authentication):
   * the requests waiting on it fail with this error rather than move on.
   */
  | { readonly kind: 'closed'; readonly http1Required?: boolean; readonly failure?: MultilegError };

/** States a handshake can start from and return to on failure. */
export type SettledState = Extract<SessionState, { kind: 'fresh' | 'authenticated' | 'per-request' }>;

export type SessionEvent =
  /** A request (the leader) started a handshake that blocks the session (C1). */
  | { readonly type: 'handshake-start'; readonly scheme: string; readonly leader: number }
  /** The leader gave up for its own reasons (R2); `next`, a request that waited, takes the handshake over. */
  | { readonly type: 'handshake-handover'; readonly leader: number; readonly next: number }
  /** The leader's handshake ended with a final non-401 response. */
  | {
      readonly type: 'handshake-success';
      readonly leader: number;
      readonly scheme: string;
      /** Persistent-Auth said true, or the scheme is connection-only (C4, C5). */
      readonly sessionAuthenticated: boolean;
      readonly identity?: string;
    }
  /**
   * A handshake that blocked no one (on a per-request or fresh session) ended with Persistent-Auth:
   * true: the server now authenticates the session (C4), so its requests go bare from here.
   */
  | { readonly type: 'server-authenticated'; readonly scheme: string; readonly identity?: string }
  /**
   * The leader's handshake ended without authenticating. Without `retry`, the server refused the
   * credentials (a final 401): the waiters go without them. With `retry`, nothing said so (an
   * unusable scheme, a reset stream, a bad token, a 5xx, a public resource, a hand-over with no one
   * waiting): the waiters try again, each within its bounds (R2, R4).
   */
  | {
      readonly type: 'handshake-failure';
      readonly leader: number;
      readonly retry?: boolean;
      /** With `retry`: the leader's proactive first leg went unanswered (C6), so the waiters go bare once. */
      readonly bare?: boolean;
      /**
       * Without `retry`: the leader's password was held back (refused lately, or the refusal memory's
       * recall given up at queueTimeout), nothing sent: a waiter holding its first 401 for that
       * (Job.heldForRecall) takes it as its answer (R4).
       */
      readonly withheld?: boolean;
    }
  /**
   * The connection ended: GOAWAY, reset, idle close, error (C8); or the server wants HTTP/1.1 (H2);
   * or the server failed mutual authentication and nothing more may be sent to it (`failure`).
   */
  | { readonly type: 'closed'; readonly http1Required?: boolean; readonly failure?: MultilegError };

export const FRESH: SessionState = { kind: 'fresh' };

const authenticated = (scheme: string, identity: string | undefined): SessionState => ({
  kind: 'authenticated',
  scheme,
  ...(identity ? { identity } : {}),
});

export class IllegalTransitionError extends Error {}

/**
 * The transition function. Illegal events throw: they are bugs in the caller, not conditions of
 * the network, so they must not be silently absorbed.
 */
export function transition(state: SessionState, event: SessionEvent): SessionState {
  if (event.type === 'closed') {
    if (state.kind === 'closed') return state;
    return {
      kind: 'closed',
      ...(event.http1Required ? { http1Required: true } : {}),
      ...(event.failure ? { failure: event.failure } : {}),
    };
  }
  switch (state.kind) {
    case 'fresh':
    case 'authenticated':
    case 'per-request':
      if (event.type === 'handshake-start') {
        return { kind: 'handshaking', scheme: event.scheme, leader: event.leader, previous: state };
      }
      if (event.type === 'server-authenticated' && state.kind !== 'authenticated') {
        return authenticated(event.scheme, event.identity);
      }
      break;
    case 'handshaking':
      if (event.type === 'handshake-success' && event.leader === state.leader) {
        return event.sessionAuthenticated
          ? authenticated(event.scheme, event.identity)
          : { kind: 'per-request', scheme: event.scheme };
      }
      if (event.type === 'handshake-handover' && event.leader === state.leader) {
        return { ...state, leader: event.next };
      }
      if (event.type === 'handshake-failure' && event.leader === state.leader) {
        // A failed re-authentication does not keep the old identity (C7): the server has dropped it.
        return state.previous.kind === 'authenticated' ? FRESH : state.previous;
      }
      break;
    case 'closed':
      return state;
  }
  // (closed is terminal: events after it are ignored above.)
  throw new IllegalTransitionError(`session: event ${event.type} is not allowed in state ${state.kind}`);
}

/** Whether a request arriving now must wait for the session's handshake (C1). */
export function mustQueue(state: SessionState): boolean {
  return state.kind === 'handshaking';
}
