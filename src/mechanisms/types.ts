import type { Challenge } from '../challenge/types.ts';

/**
 * How far a successful authentication reaches (draft Table 1):
 * - `connection`: only the connection/session (NTLM);
 * - `request`: only the request (Basic, Digest);
 * - `either`: the server decides; `Persistent-Auth` tells (Negotiate, Kerberos).
 */
export type AuthLevel = 'connection' | 'request' | 'either';

/** What a mechanism knows about the request a leg belongs to. */
export interface LegInfo {
  /** `https://host:port` */
  readonly origin: string;
  /** The origin's host name; an IPv6 literal without its brackets (`::1`). */
  readonly hostname: string;
  readonly port: number;
  readonly method: string;
  /** Request-target path with query, as sent. */
  readonly path: string;
  /** `tls-server-end-point` channel binding data (RFC 5929: hash of the server certificate), when TLS. */
  readonly channelBinding?: Buffer;
  /**
   * Over `https:`, when the leg's TLS connection did not prove its server (S4/M4): why — Node's
   * `authorizationError` for a certificate `connect.rejectUnauthorized: false` let through although
   * it failed verification (`DEPTH_ZERO_SELF_SIGNED_CERT`, `ERR_TLS_CERT_ALTNAME_INVALID`, …), or
   * `NOT_YET_CONNECTED` for a leg made before its connection exists under `rejectUnauthorized:
   * false` (when in doubt, unverified). Whoever answered on such a connection reads what it carries,
   * as on cleartext: Basic refuses it. Absent: verified, or no TLS (see `origin`).
   */
  readonly unverifiedTls?: string | undefined;
  /** True when authenticating to a proxy (407 / Proxy-Authenticate). */
  readonly proxy: boolean;
}

/** {@link LegInfo.unverifiedTls} of a leg made before its connection exists, under `rejectUnauthorized: false`. */
export const NOT_YET_CONNECTED = 'NOT_YET_CONNECTED';

/**
 * One authentication exchange in progress — the pyspnego-style context proxy. A context is used
 * for exactly one handshake and then dropped.
 */
export interface MechanismContext {
  /**
   * Produce the credentials for the next leg: the whole header value after nothing, e.g.
   * `NTLM TlRMTVNT...` or `Digest username="..."`. `challenge` is the server's challenge for this
   * scheme (undefined on a proactive first leg). `gaveUp`: whether the handshake no longer waits for
   * this step (its deadline passed, its request was aborted) — work the step has queued and not
   * started yet (a GSS-API call waiting for a worker thread) is then dropped.
   */
  step(challenge: Challenge | undefined, leg: LegInfo, gaveUp?: () => boolean): Promise<string>;
  /**
   * While a step runs: what it waits on outside this process, and what to check (Negotiate: `GSS-API
   * for HTTP@host (the KDC or DNS: …)`). A handshake whose deadline passes meanwhile says so in its
   * {@link HandshakeTimeoutError} rather than "check the server". Absent: nothing named.
   */
  readonly waitingOn?: string | undefined;
  /** True once the mechanism has nothing more to send. */
  readonly complete: boolean;
  /**
   * True when the first token just made completes the server's side in that one leg (a Kerberos
   * AP-REQ, raw or as SPNEGO's optimistic token): it leaves no incomplete security context on the
   * server, so it takes none of the session's handshake slots (draft §3.1, C4). Absent: false.
   */
  readonly firstLegCompletes?: boolean;
  /**
   * Whether what this handshake sent derives from a password (R4: a refused password is kept back
   * twice as long with each refusal in a row, against account lockout; a refused Kerberos ticket
   * only 30 s each time). Negotiate says false only when it sent a Kerberos AP-REQ and no token after it (so no NTLM).
   * Absent: the mechanism's {@link Mechanism.usesPassword}.
   */
  readonly sentPassword?: boolean;
  /**
   * True when what completed authenticates the connection, not the request: NTLM inside Negotiate
   * (C5). On HTTP/1.1 the connection then counts as authenticated, as for NTLM itself (H1): a server
   * that binds the context to the connection (Apache mod_auth_gssapi) refuses a new NTLM handshake
   * on it. Absent: the mechanism's {@link Mechanism.level} decides.
   */
  readonly connectionBound?: boolean;
  /**
   * Called with the scheme's challenge, if any, on the response that ends the handshake — from an
   * origin a 2xx (a 101 for an upgrade; over cleartext also the answer to a proactive first leg that
   * names no token), from a proxy any answer but a 407; through a forwarding proxy also on the
   * answer to each request's own Digest credentials. On an origin's 3xx, 4xx or 5xx when it
   * carries the scheme's token or `Authentication-Info` (RFC 7616 §3.5: the proof comes on the
   * final response whatever its status), never on a 401 or 407; one without either, while the
   * context is not complete, is asked with none as a 2xx is: resolving takes it (mutual
   * authentication optional), rejecting leaves it proving nothing — the caller still gets it, the
   * handshake records no session and no identity. Verifies the server's last token (mutual authentication).
   * Throws {@link MutualAuthError} on failure.
   * `info`: the parameters of that response's `Authentication-Info` (`Proxy-Authentication-Info`
   * to a proxy), when it has one (Digest's `rspauth` and `nextnonce`; RFC 9110 §11.6.3).
   */
  finish(challenge: Challenge | undefined, leg: LegInfo, info?: Readonly<Record<string, string>>): Promise<void>;
  /**
   * Whether the server's token in this challenge is its refusal rather than a next leg (SPNEGO's
   * negState `reject`, RFC 4178 §4.2.2): the 401 (407) is then a final one, as a bare one is.
   * Absent: a token always asks for a next leg.
   */
  rejects?(challenge: Challenge): boolean;
  /**
   * Read after {@link rejects} said yes: the refusal was of credentials the mechanism has renewed
   * since (Negotiate: a Kerberos ticket sealed with a server key that was rotated, now dropped from
   * the cache), so the handshake — an origin's, a proxy's, an upgrade's (`challengeAsks`) — runs
   * once more, with the new ones, instead of delivering the 401 (407). The mechanism bounds it (R4):
   * a context made after the renewal never says so.
   */
  readonly renewed?: boolean;
  /**
   * Who authenticated, for reporting only (never a secret). `| undefined`: a context may say it does
   * not know yet (NegotiateContext's getter), which a consumer's `exactOptionalPropertyTypes` tells
   * apart from leaving it out.
   */
  readonly identity?: string | undefined;
  /** Why the mechanism's preferred method was skipped (Negotiate: Kerberos → NTLM), for reporting only. */
  readonly fallbackReason?: string | undefined;
  /**
   * Negotiate: the service principal name (`HTTP@host`) the context asked a Kerberos ticket for, once
   * it has (empty or absent before), for reporting only: it names the URL's host, wherever the
   * connection went (`connectTo`).
   */
  readonly spn?: string;
  /**
   * The handshake is over, however it ended (a success, a refusal, an answer that took no part in
   * it, the caller's abort, its timeout): free what the context holds outside the JavaScript heap
   * now rather than when it is collected. Negotiate: its GSS-API context, which counts as a
   * handshake in flight until freed (C4: while more than one is, every GSS-API call goes to a
   * worker). Called once by whoever ran the handshake, possibly while a step still runs; must be
   * idempotent and harmless after the context ended by itself. Absent: nothing to free.
   */
  dispose?(): void;
}

/** A mechanism: a factory of contexts plus fixed properties. Adding one touches one folder. */
export interface Mechanism {
  /** Canonical scheme name as written on the wire: `NTLM`, `Negotiate`, `Digest`, `Basic`. */
  readonly scheme: string;
  readonly level: AuthLevel;
  /** Needs more than one round trip and so the Auth-ID / queueing machinery. */
  readonly multileg: boolean;
  /** Can send a useful token before any challenge (Negotiate/Kerberos, Basic). */
  readonly proactive: boolean;
  /**
   * Its first token is bound to the TLS connection (Kerberos channel bindings, M5): on https it is never
   * made before the connection (and its certificate) exists, so no proactive token on a new connection.
   */
  readonly bindsFirstToken?: boolean;
  /**
   * Whether what it sends is derived from a password (NTLM, Digest, Basic; Negotiate when it may fall
   * back to NTLM with one), so that servers count a refusal towards locking the account. Such a
   * mechanism's handshakes at an origin run side by side only while a success there is fresh (1 s);
   * after a quiet spell the next one goes alone and the others wait for its outcome, so a changed
   * password is not tried by a whole burst (docs/SECURITY.md). Default (absent): true — a mechanism
   * of your own may carry anything; say `false` for one that carries no password (a ticket, a key).
   */
  readonly usesPassword?: boolean;
  /** Creates a context for one handshake, or throws a MultilegError naming why it can't. */
  createContext(leg: LegInfo): MechanismContext;
  /**
   * For credentials that live outside the agent and can change under a running process (the
   * Kerberos ccache: `kdestroy`, a `kinit` or `kswitch` to another principal): whether `identity`,
   * which one of this mechanism's contexts reported, still holds them. `false` retires the sessions
   * authenticated as `identity` (S6), so that no request runs as someone whose credentials are gone;
   * undefined: cannot tell, or `identity` did not come from such credentials (a password, a keytab).
   * A proxy's mechanism is asked the same of the identity a proxy connection (a forwarding one, a
   * CONNECT tunnel) was authenticated as, and `false` retires the sessions riding such connections.
   * Each origin asks at most once a second while it has such a session, on the event loop: be quick.
   * A throw counts as undefined (cannot tell).
   */
  holdsCredentials?(identity: string): boolean | undefined;
}

/**
 * Who a connection is held as, and by which mechanism (S6): the identity a handshake proved, at the
 * origin (an authenticated session) or at the proxy (a forwarding proxy's connection, a CONNECT
 * tunnel). The pool retires the agent's sessions held as another account once one is held as this
 * one, and — for credentials that live outside the agent and can change under a running process (a
 * Kerberos ticket from a ccache) — asks `mechanism.holdsCredentials(identity)` now and then and
 * retires the connection once they are gone (`kdestroy; kinit bob` must not leave requests running
 * as alice).
 */
export interface Holder {
  readonly mechanism: Mechanism;
  readonly identity: string;
}

/** Credentials given to the agent. */
export interface Credentials {
  readonly username: string;
  readonly password: string;
  /** NTLM domain. May also be given in the username as `DOMAIN\\user` or `user@domain`. */
  readonly domain?: string;
  /** NTLM workstation name sent in AUTHENTICATE (default: empty). */
  readonly workstation?: string;
}

/**
 * Whether two sets of credentials are the same as written (user name, domain, password,
 * workstation). Written otherwise they are other credentials, even for one NTLM account: Basic and
 * Digest send the user name as written, and a server may take `alice@example` and not `alice`.
 */
export function sameCredentials(a: Credentials | undefined, b: Credentials): boolean {
  return (
    a !== undefined &&
    a.username === b.username &&
    a.domain === b.domain &&
    a.password === b.password &&
    a.workstation === b.workstation
  );
}
