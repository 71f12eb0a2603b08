import type { Dispatcher } from 'undici';
import type { PreparedBody } from '../body/replayable.ts';
import type { UserSink } from '../handshake/user-sink.ts';
import type { HeaderMap } from '../headers.ts';

let nextJobId = 0;

/** One caller request on its way through sessions and legs. */
export interface Job {
  readonly id: number;
  readonly origin: string;
  /** The caller's dispatch options minus headers and body, copied onto every leg. */
  readonly dispatchOptions: Dispatcher.DispatchOptions;
  /** Caller headers, lower-cased; legs add `authorization` and `auth-id` on top. */
  readonly headers: HeaderMap;
  readonly body: PreparedBody;
  readonly sink: UserSink;
  /** The caller wants HTTP/1.1 (Node's built-in fetch through the global dispatcher forces it). */
  readonly http1Only: boolean;
  /** The caller set its own Authorization: we never touch such a request. */
  readonly callerAuthorization: boolean;
  /**
   * Send without credentials and show the server's 401: the origin is not trusted with them (S1),
   * or the handshake this request waited for failed (C7).
   */
  noAuth: boolean;
  /** Set once this request re-authenticated an authenticated session (T4: once). */
  reauthenticated: boolean;
  /** Relocations to another session so far (bounded, so a flapping server cannot loop us). */
  relocations: number;
}

export function newJobId(): number {
  nextJobId += 1;
  return nextJobId;
}
