/**
 * The CONNECT tunnel (H5): `CONNECT host:port` written by hand on one proxy socket, every leg of a
 * 407 `Proxy-Authenticate` handshake on that same socket, then the raw socket is handed back for TLS
 * to the origin. If the proxy closes the connection between legs, the handshake restarts once on a
 * new one. Bounded by `limits.maxLegs` and `limits.handshakeTimeout`; connecting (to the proxy,
 * each CONNECT's answer, and TLS with the origin inside the tunnel) by `proxy.connectTimeout`, one
 * budget for them all ({@link ConnectBudget}).
 */
import { isIP, connect as netConnect, type Socket } from 'node:net';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
import { readChallenges } from '../challenge/index.ts';
import type { Challenge } from '../challenge/types.ts';
import { checkedAgainst, type Dial, dialFor } from '../connect-to.ts';
import { Deadline } from '../deadline.ts';
import { publishLeg } from '../diagnostics.ts';
import { CERTIFICATE_CODES, type MultilegError } from '../errors.ts';
import { log } from '../log.ts';
import { type Limits, unbracketed } from '../options.ts';
import {
  type Admission,
  type HeldBackWhy,
  MAX_REFUSED_MEMORY_MS,
  type ProofOutcome,
  signalWaiter,
  Ticket,
} from '../session/credential-proof.ts';
import type { Waiter } from '../session/wait-queue.ts';
import { type AdmittedHolder, offeredSchemes, ProxyAuth, type ProxyHandshake, proxyLeg } from './auth.ts';
import {
  ProxyAuthenticationError,
  ProxyCertificateError,
  ProxyClosedError,
  ProxyConnectError,
  ProxyConnectTimeoutError,
  ProxyProtocolError,
  ProxyTimeoutError,
  ProxyUnreachableError,
  UNREACHABLE_CODES,
} from './errors.ts';
import { authority, type ResolvedProxy } from './options.ts';
import { ResponseReader, WireClosedError, WireError } from './wire.ts';

/**
 * `proxy.connectTimeout` for one connection through the proxy, shared by its steps as curl's
 * --connect-timeout bounds its whole connect phase: the connection to the proxy, each CONNECT's
 * answer and TLS with the origin inside the tunnel together, not each anew. Only the time in those
 * steps is spent: a wait for leave to send the credentials and the mechanism's own steps are the
 * handshake's (`limits.handshakeTimeout`).
 */
export class ConnectBudget {
  readonly ms: number;
  #left: number;
  constructor(ms: number) {
    this.ms = ms;
    this.#left = ms;
  }

  /** Starts a step: `onTimeout` once the budget is spent; the returned stop spends its time (once). */
  step(onTimeout: () => void): () => void {
    const began = performance.now();
    const timer = setTimeout(onTimeout, Math.max(0, this.#left));
    let stopped = false;
    return () => {
      if (stopped) return;
      stopped = true;
      clearTimeout(timer);
      this.#left -= performance.now() - began;
    };
  }
}

/**
 * Opens a TCP (or, for an https:// proxy, TLS) connection to the proxy, within what is left of
 * `budget` (`proxy.connectTimeout` for a connection of its own): a proxy that accepts TCP and never
 * completes TLS, or a blackholed address, fails with {@link ProxyConnectTimeoutError} instead of
 * waiting for the OS. A proxy that cannot be reached fails with {@link ProxyUnreachableError}, an
 * untrusted proxy certificate with {@link ProxyCertificateError}.
 */
export function connectToProxy(
  proxy: ResolvedProxy,
  alpn: string[] = ['http/1.1'],
  budget = new ConnectBudget(proxy.connectTimeout),
): Promise<Socket> {
  return new Promise((resolve, reject) => {
    let dial: Dial;
    try {
      dial = dialFor(proxy.connectTo, { hostname: proxy.hostname, port: proxy.port, via: 'proxy' });
    } catch (err) {
      reject(err);
      return;
    }
    // Routed (the agent's connectTo), only the address changes: TLS still checks the proxy's name.
    // `proxy.connect.family` (the command's -4/-6) for a plain proxy too: its other options are TLS's.
    const family = (proxy.connect as { family?: unknown }).family;
    const where = {
      host: dial.hostname,
      port: dial.port,
      ...(dial.lookup ? { lookup: dial.lookup } : {}),
      ...(family === 4 || family === 6 ? { family } : {}),
    };
    const socket: Socket = proxy.tls
      ? tlsConnect({
          ...where,
          ...(isIpLiteral(proxy.hostname) ? {} : { servername: proxy.hostname }),
          ALPNProtocols: alpn,
          ...proxy.connect,
          ...(dial.routed ? { checkServerIdentity: checkedAgainst(proxy.hostname, proxy.connect) } : {}),
        })
      : netConnect(where);
    const ready = proxy.tls ? 'secureConnect' : 'connect';
    const fail = (err: Error) => {
      stop();
      socket.off(ready, onReady);
      socket.destroy();
      reject(err);
    };
    const stop = budget.step(() => fail(new ProxyConnectTimeoutError(proxy.origin, budget.ms)));
    let connected = false;
    // Stays for the socket's life, as undici's connector keeps its own: a forwarding proxy's
    // connection is opened before its first request is written (ForwardProxy), and that request may
    // wait meanwhile (for leave to send the credentials, R4); a reset then, with no other listener,
    // was an uncaught 'error' that ended the process (review r68). Whoever takes the socket (undici,
    // the CONNECT reader, TLS) listens for its own; an error before it did leaves the socket
    // destroyed, which the forwarding session reads as gone (the leg goes on a new connection).
    const onError = (err: Error) => {
      if (connected) log.proxy('%s connection error: %s', proxy.origin, (err as { code?: string }).code);
      else fail(connectFailure(proxy, err));
    };
    const onReady = () => {
      stop();
      connected = true;
      socket.setNoDelay(true);
      resolve(socket);
    };
    socket.on('error', onError);
    socket.once(ready, onReady);
  });
}

/** Where a connection through a tunnel goes, as undici's connector names it. */
export interface TunnelTarget {
  readonly hostname: string;
  readonly port: number;
  /** `https:` runs TLS with the origin inside the tunnel; `http:` does not. */
  readonly protocol: string;
  readonly servername?: string | null;
}

/** A connection through a CONNECT tunnel, and who its CONNECT authenticated as (see {@link Tunnel.holder}). */
export interface TunnelledConnection {
  readonly socket: Socket;
  readonly holder: AdmittedHolder | undefined;
}

/**
 * A connection to `target` through a CONNECT tunnel: {@link openTunnel}, then, for https, TLS with
 * the origin inside it (ALPN `alpn`, the caller's TLS options), all within one
 * `proxy.connectTimeout` ({@link ConnectBudget}) — a proxy that answers 200 and then relays nothing
 * fails with {@link ProxyConnectTimeoutError}.
 * `onHandshake` is told of each handshake with the proxy that ends (see {@link openTunnel}).
 */
export async function connectThroughTunnel(
  proxy: ResolvedProxy,
  target: TunnelTarget,
  tls: ConnectionOptions,
  alpn: string[],
  limits: Limits,
  signal?: AbortSignal,
  onHandshake?: (handshake: ProxyHandshake) => void,
  withheld = false,
): Promise<TunnelledConnection> {
  const hostname = unbracketed(target.hostname);
  // The agent's connectTo may send the CONNECT elsewhere; TLS inside is still the origin's.
  const dial = dialFor(proxy.connectTo, { hostname, port: target.port, via: 'tunnel' });
  const budget = new ConnectBudget(proxy.connectTimeout);
  const { socket, holder } = await openTunnel(
    proxy,
    dial.hostname,
    dial.port,
    limits,
    signal,
    onHandshake,
    budget,
    withheld,
  );
  if (target.protocol !== 'https:') return { socket, holder };
  const servername = target.servername ?? (isIP(hostname) ? undefined : hostname);
  return new Promise((resolve, reject) => {
    const secure = tlsConnect({
      ...tls,
      socket,
      ...(servername ? { servername } : {}),
      ALPNProtocols: alpn,
      // Against the name the request names, as Node checks a direct connection (S1: behind undici's
      // dns interceptor `hostname` is the address it resolved, and the name's certificate was
      // checked against that address); an address in the URL (no SNI) against itself, not the
      // proxy socket's host.
      checkServerIdentity: checkedAgainst(servername ?? tls.servername ?? hostname, tls),
    });
    const fail = (err: Error) => {
      stop();
      signal?.removeEventListener('abort', aborted);
      secure.destroy();
      socket.destroy();
      reject(err);
    };
    const stop = budget.step(() =>
      fail(new ProxyConnectTimeoutError(proxy.origin, budget.ms, authority(hostname, target.port))),
    );
    const aborted = () => fail(signal!.reason as Error);
    if (signal?.aborted) return aborted();
    signal?.addEventListener('abort', aborted, { once: true });
    secure.once('error', fail);
    secure.once('secureConnect', () => {
      stop();
      signal?.removeEventListener('abort', aborted);
      secure.off('error', fail);
      resolve({ socket: secure, holder });
    });
  });
}

/**
 * Why the connection to the proxy failed: not reachable, its certificate not trusted, or (anything
 * else, such as TLS spoken to a plain-HTTP port) not the proxy it should be.
 */
function connectFailure(proxy: ResolvedProxy, err: Error): MultilegError {
  // Socket errors of node:net and node:tls carry a code (ECONNREFUSED, CERT_HAS_EXPIRED); the
  // message is only a fallback for an error without one, which they do not emit.
  const code = (err as { code?: string }).code ?? '';
  if (UNREACHABLE_CODES.has(code)) return new ProxyUnreachableError(proxy.origin, code, { cause: err });
  if (CERTIFICATE_CODES.has(code)) return new ProxyCertificateError(proxy.origin, code, { cause: err });
  return new ProxyProtocolError(proxy.origin, `cannot connect (${code || err.message})`, { cause: err });
}

function isIpLiteral(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}

/** The bytes a tunnel's socket read from the proxy (its answers to the CONNECTs), by socket. */
const proxyShare = new WeakMap<Socket, number>();

/**
 * How many of the bytes a tunnel's `socket` has read (`bytesRead`) were the proxy's: on a plain
 * tunnel its answers to the CONNECTs (`HTTP/1.1 200 Connection established` …) came first on the
 * socket the origin's answers come on, and are no part of a response head cut short
 * (ConnectionClosedError.headBytes). 0 for a TLS socket inside the tunnel, which counts its own.
 */
export function proxyBytesRead(socket: Socket): number {
  return proxyShare.get(socket) ?? 0;
}

/** Established tunnel: a socket whose next bytes are the origin's. */
export interface Tunnel {
  readonly socket: Socket;
  /** CONNECT requests written (every leg, a bare first one included), and proxy connections used. */
  readonly requests: number;
  readonly connections: number;
  /**
   * The identity the CONNECT's handshake proved, which the proxy holds the tunnel as: the pool
   * retires the connection once another account is proved at the proxy, or its credentials are gone
   * (a ccache's Kerberos ticket; S6). Undefined when none was proved.
   */
  readonly holder: AdmittedHolder | undefined;
}

/**
 * Opens a tunnel to `host:port` through `proxy`, authenticating to it as it asks. Rejects with
 * {@link ProxyAuthenticationError} (final 407), {@link ProxyConnectError} (other status),
 * {@link ProxyTimeoutError}, {@link ProxyUnreachableError}, {@link ProxyCertificateError},
 * {@link ProxyConnectTimeoutError} or {@link ProxyProtocolError}. `onHandshake` is told of each
 * handshake with the proxy that sent credentials and ended, succeeded or failed (H5: reported as an
 * origin's are). `budget`: the connection's `proxy.connectTimeout`, which TLS inside the tunnel
 * shares ({@link connectThroughTunnel}).
 */
export async function openTunnel(
  proxy: ResolvedProxy,
  host: string,
  port: number,
  limits: Limits,
  signal?: AbortSignal,
  onHandshake?: (handshake: ProxyHandshake) => void,
  budget = new ConnectBudget(proxy.connectTimeout),
  withheld = false,
): Promise<Tunnel> {
  const target = authority(host, port);
  let socket: Socket | undefined;
  // The whole handshake: connects, legs, and the mechanism's steps (raced: one may never return).
  const ms = limits.handshakeTimeout;
  // Ends a wait for another connection's authentication to the proxy with the tunnel.
  const given = new AbortController();
  const deadline = new Deadline(
    ms,
    () => new ProxyTimeoutError(proxy.origin, ms, 'tunnel'),
    (err) => {
      socket?.destroy();
      given.abort(err);
    },
  ).start();
  // Past the deadline, or given up by its session (`signal`): no socket of it is kept.
  const ended = () => deadline.timedOut || signal?.aborted === true;
  const running = handshake(
    proxy,
    target,
    limits,
    deadline,
    budget,
    given.signal,
    (s) => {
      socket = s;
      if (ended()) s.destroy();
    },
    onHandshake,
    withheld,
  );
  // A tunnel that opens after that (a mechanism step that returned late) is not kept.
  running.then(
    (t) => {
      if (ended()) t.socket.destroy();
    },
    () => {},
  );
  let onAbort: (() => void) | undefined;
  const aborted = signal
    ? new Promise<never>((_, reject) => {
        onAbort = () => {
          socket?.destroy();
          given.abort(signal.reason);
          reject(signal.reason);
        };
        if (signal.aborted) onAbort();
        else signal.addEventListener('abort', onAbort, { once: true });
      })
    : undefined;
  aborted?.catch(() => {});
  try {
    return await deadline.race(aborted ? Promise.race([running, aborted]) : running);
  } catch (err) {
    socket?.destroy();
    if (deadline.timedOut) throw err instanceof ProxyTimeoutError ? err : deadline.error();
    throw err;
  } finally {
    deadline.stop();
    if (onAbort) signal?.removeEventListener('abort', onAbort);
  }
}

async function handshake(
  proxy: ResolvedProxy,
  target: string,
  limits: Limits,
  deadline: Deadline<ProxyTimeoutError>,
  budget: ConnectBudget,
  given: AbortSignal,
  track: (s: Socket) => void,
  onHandshake: ((handshake: ProxyHandshake) => void) | undefined,
  withheld: boolean,
): Promise<Tunnel> {
  /** The tunnel already started over after a refusal of replaced credentials (once per tunnel, R4). */
  let rerun = false;
  // Every CONNECT goes over HTTP/1.1 (connectToProxy's ALPN).
  const report = onHandshake && ((h: Omit<ProxyHandshake, 'protocol'>) => onHandshake({ ...h, protocol: 'http/1.1' }));
  for (;;) {
    const auth = new ProxyAuth(proxy, limits.maxLegs, report);
    // C4: the tunnel given up (its session destroyed: the agent's destroy(); or past its deadline),
    // the handshake ends at once, its context freed, not when a step still running returns.
    const stop = () => auth.end(given.reason instanceof Error ? given.reason : new Error('the tunnel was given up'));
    if (given.aborted) stop();
    else given.addEventListener('abort', stop, { once: true });
    // Leave to send the proxy credentials (account lockout: one connection at a time until proved).
    let ticket: Ticket | undefined;
    let outcome: ProofOutcome = 'none';
    /**
     * The opening was refused leave ({@link openingLeave}), or (`withheld`) the refusal memory's
     * recall this tunnel's request waited for was given up at queueTimeout: its CONNECT goes bare,
     * and its 407 asks no more (R1/R4: the memory is not asked twice for one request). Why, as
     * decided then: by its 407 the proof may say otherwise (another request's recall holding the
     * password back, or a refusal lifted).
     */
    let heldBack: HeldBackWhy | undefined = withheld ? 'recall-timeout' : undefined;
    // The per-request scheme (Basic, Digest) the proxy's 407 asked for on another tunnel goes on
    // this one's first CONNECT, as curl -U sends it (one CONNECT, not a 407 first) — with leave
    // given now only (R4: proved lately, or this tunnel the one to prove them); else it goes bare.
    auth.adopt((password) => {
      if (heldBack) return false;
      const admission = proxy.proof.admit(password);
      if (admission instanceof Ticket) ticket = admission;
      return ticket !== undefined;
    });
    try {
      return await connectLegs(
        proxy,
        auth,
        target,
        limits,
        deadline,
        budget,
        track,
        async (challenges) => {
          // A leave taken for no password (a Kerberos ticket) covers no password (R4: after a
          // fall-through to one, review r39): that takes its own. Nor does one given before a
          // refusal counted since (another tunnel's, while this one fell through: R4, a refused
          // password is not sent again unasked); it is given back first, so that a probe's does
          // not keep the next leave waiting for itself (as forward.ts does).
          const password = auth.usesPassword(challenges);
          if (ticket?.covers(password) && proxy.proof.holds(ticket)) return;
          if (ticket) {
            proxy.proof.settle(ticket, outcome);
            ticket = undefined;
            outcome = 'none';
          }
          // No leave for the opening (refused lately, or the refusal memory's recall given up at
          // queueTimeout): not asked again for the 407 after it (R1: one wait of queueTimeout).
          if (heldBack) throw refusedLately(proxy, offeredSchemes(challenges), limits.queueTimeout, heldBack);
          // A 407 that no configured scheme answers sends nothing: no leave is taken (R1/R4: a burst
          // whose every tunnel meets it, the proxy refusing the agent's only scheme, asked the
          // refusal memory once per tunnel, one after another, and ran past queueTimeout).
          if (!auth.answers(challenges)) return;
          const admission = await proxyLeave(proxy, password, signalWaiter(given), limits, deadline);
          if (admission === 'refused') throw refusedLately(proxy, offeredSchemes(challenges), limits.queueTimeout);
          ticket = admission;
        },
        async () => {
          if (heldBack) return false;
          ({ ticket, heldBack } = await openingLeave(proxy, auth, signalWaiter(given), limits, deadline));
          return ticket !== undefined;
        },
        (o) => {
          outcome = o;
        },
        () => ticket,
      );
    } catch (err) {
      // The proxy refused credentials replaced since their CONNECT left (setProxyCredentials after the
      // proxy's password rotated): not the answer while the agent holds others; the tunnel starts
      // over with them once, as a forwarded request goes again (R4: through their own proof; a
      // refusal of the new ones, or a second such refusal, is delivered).
      const refusedReplaced =
        err instanceof ProxyAuthenticationError &&
        err.refused &&
        ticket !== undefined &&
        proxy.proof.rerunsAfterRefusal(ticket);
      if (refusedReplaced && !rerun) {
        rerun = true;
        log.proxy(
          '%s CONNECT %s: refused replaced credentials: starting over with the current ones',
          proxy.origin,
          target,
        );
        continue;
      }
      // The credentials were replaced mid-handshake (setProxyCredentials): it starts over with the
      // new ones, on a new connection, with leave of their own (R4). Bounded by the deadline.
      if (err !== REPLACED) throw err;
      log.proxy('%s CONNECT %s: credentials replaced mid-handshake: starting over', proxy.origin, target);
    } finally {
      given.removeEventListener('abort', stop);
      if (ticket) proxy.proof.settle(ticket, outcome);
    }
  }
}

/** Thrown by {@link connectLegs} when the proxy's credentials were replaced under its handshake. */
const REPLACED = new Error('proxy credentials replaced');

/**
 * Leave to send the proxy credentials (account lockout: one connection at a time until proved, none
 * for a while after the proxy refused them). The wait has its own bounds (R1): the exchange's clock
 * stops meanwhile and runs again after it, as for a handshake slot. The proof tells those listening
 * when the refusal memory's recall begins to wait (CredentialProof.onRecall).
 */
export async function proxyLeave(
  proxy: ResolvedProxy,
  password: boolean,
  waiter: Waiter,
  limits: Limits,
  deadline: Deadline<ProxyTimeoutError> | undefined,
): Promise<Admission> {
  deadline?.pause();
  try {
    return await proxy.proof.enter(password, waiter, limits);
  } finally {
    deadline?.start();
  }
}

/**
 * Leave for the sole scheme's opening NEGOTIATE, taken before it as an origin's leader takes it
 * (R4): the AUTHENTICATE that follows goes through the same gate as a 407-started handshake's, and
 * no connection waits for it halfway through a handshake the proxy may expire meanwhile. `heldBack`:
 * the request goes bare, and why, read as leave is refused — refused lately, or the refusal memory's
 * recall given up at queueTimeout; its 407 a round trip later says that ({@link refusedLately}),
 * whatever the proof says by then (the memory is not asked twice for one request). No `ticket` and
 * not `heldBack`: it goes bare as another connection found meanwhile that the proxy takes no part in
 * openings (`auth.opens` no longer holds: the leave is given back at once, so that no one waits for
 * this one).
 */
export async function openingLeave(
  proxy: ResolvedProxy,
  auth: ProxyAuth,
  waiter: Waiter,
  limits: Limits,
  deadline: Deadline<ProxyTimeoutError> | undefined,
): Promise<{ ticket: Ticket | undefined; heldBack: HeldBackWhy | undefined }> {
  const password = proxy.mechanisms.sole?.usesPassword !== false;
  const admission = await proxyLeave(proxy, password, waiter, limits, deadline);
  if (admission === 'refused') return { ticket: undefined, heldBack: proxy.proof.heldBackWhy };
  if (!auth.opens) {
    proxy.proof.settle(admission, 'none');
    return { ticket: undefined, heldBack: undefined };
  }
  return { ticket: admission, heldBack: undefined };
}

/**
 * The proxy refused its credentials lately (twice in a row, or before they ever worked), or left a
 * leg carrying the password unanswered before they were proved: a 407 is
 * not answered with them again until that has passed. With `queueTimeout`, leave was refused, `why`
 * as decided then (by default now: a leave refused a round trip before passes its own).
 */
export function refusedLately(
  proxy: ResolvedProxy,
  offered: readonly string[],
  queueTimeout?: number,
  why: HeldBackWhy = proxy.proof.heldBackWhy,
): ProxyAuthenticationError {
  // Nothing held back, yet no leave: the refusal memory's recall was given up at queueTimeout (R1:
  // when in doubt none is sent). It refused nothing, and names no wait that does not stand.
  if (queueTimeout !== undefined && why === 'recall-timeout')
    return new ProxyAuthenticationError(
      proxy.origin,
      `${proxy.credentialsFrom} were not sent: the refusal memory did not answer within ${queueTimeout} ms (limits.queueTimeout; another process may be trying the same password at the proxy); run again once it has, or raise limits.queueTimeout`,
      offered,
    );
  // Held back when it went, lifted (forgetRefusals) or lapsed by its 407: no wait is left to name.
  const left = proxy.proof.refusedFor;
  const wait =
    left > 0
      ? `so they are not sent to it for another ${Math.ceil(left / 1000)} s`
      : 'so they were not sent (that hold-back has ended since: send the request again)';
  return new ProxyAuthenticationError(
    proxy.origin,
    `the proxy refused ${proxy.credentialsFrom} lately (or left a leg carrying the password unanswered), ${wait} (each refusal of a password in a row doubles that wait, up to ${MAX_REFUSED_MEMORY_MS / 60_000} min: a wrong or changed password tried again and again locks the account); check ${proxy.credentialsFrom}`,
    offered,
    true,
  );
}

/**
 * The proxy ends the connection a connection-bound handshake (NTLM, Negotiate) lives on before its
 * next leg, again: it cannot finish through this proxy (curl fails too). `how`: what showed it.
 */
export function closedBetweenLegs(
  proxy: ResolvedProxy,
  scheme: string | undefined,
  how = '',
): ProxyAuthenticationError {
  return new ProxyAuthenticationError(
    proxy.origin,
    `the proxy closes the connection between ${scheme ?? 'authentication'} legs${how ? ` (${how})` : ''}, so a connection-bound handshake cannot finish; check the proxy's keep-alive settings (Squid: client_persistent_connections on)`,
    [],
  );
}

/**
 * The CONNECT legs of one tunnel; `admit` is called with a 407's challenges before a new handshake
 * answers them (it may wait, or throw), `lead` before the first CONNECT carries the sole scheme's opening
 * (it may wait; false: go bare), `proved` with what the handshake said of the credentials; `leave`
 * gives the leave to send them that the handshake runs under.
 */
async function connectLegs(
  proxy: ResolvedProxy,
  auth: ProxyAuth,
  target: string,
  limits: Limits,
  deadline: Deadline<ProxyTimeoutError>,
  budget: ConnectBudget,
  track: (s: Socket) => void,
  admit: (challenges: readonly Challenge[]) => Promise<void>,
  lead: () => Promise<boolean>,
  proved: (outcome: ProofOutcome) => void,
  leave: () => Ticket | undefined,
): Promise<Tunnel> {
  const leg = proxyLeg(proxy, 'CONNECT', target);
  // NTLM the proxy's only scheme: its NEGOTIATE goes on the first CONNECT, as curl --proxy-ntlm
  // sends it (2 CONNECTs rather than 3); it carries no password.
  if (auth.opens && (await lead())) await auth.open(leg);
  let requests = 0;
  let connections = 0;
  let socket: Socket | undefined;
  let reader: ResponseReader | undefined;
  /** A leg already sent again because its kept-alive connection was gone (once per tunnel). */
  let resent = false;
  /** A scheme whose challenge could not be read fell through to the next (once per tunnel, T2). */
  let fellThrough = false;
  /** The deadline's error once it passed (a proof checked late is no success, H5). */
  const expired = () => (deadline.timedOut ? deadline.error() : undefined);
  // Every way out but the tunnel (a throw: a refusal, REPLACED, a timeout, a broken wire) closes the
  // connection this attempt holds: a proxy that keeps a 407's connection open (Squid) would
  // otherwise hold it open for good when the tunnel starts over on a new one, and so would this
  // process. The tunnel's own socket leaves by the return and is never closed here.
  try {
    for (;;) {
      // Past the deadline (a step returned late): no new connection, no new leg.
      if (deadline.timedOut) throw deadline.error();
      if (!socket || !reader || reader.ended) {
        socket?.destroy();
        socket = await connectToProxy(proxy, undefined, budget);
        track(socket);
        connections += 1;
        reader = new ResponseReader(socket);
        log.proxy('%s connection %d for CONNECT %s', proxy.origin, connections, target);
      }
      const credentials = await auth.header(leg);
      // S6: nothing of replaced credentials goes after the call (the old password's AUTHENTICATE).
      if (auth.replaced) throw REPLACED;
      // R4: read before the answer (the handshake may end meanwhile: the tunnel given up, auth.end).
      const carriesPassword = auth.carriesPasswordIn(credentials);
      const traced = publishLeg(
        { target: 'proxy', origin: proxy.origin, sessionId: `proxy-${connections}`, protocol: () => 'http/1.1' },
        {
          method: 'CONNECT',
          path: target,
          headers: { host: target, ...(credentials ? { 'proxy-authorization': credentials.value } : {}) },
        },
      );
      socket.write(
        `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\nProxy-Connection: keep-alive\r\n${
          credentials ? `Proxy-Authorization: ${credentials.value}\r\n` : ''
        }\r\n`,
      );
      requests += 1;
      const reused = reader.received;
      let head: Awaited<ReturnType<ResponseReader['readHead']>>;
      // The answer is part of connecting (curl's --connect-timeout covers it): a proxy that takes the
      // connection and never answers fails within proxy.connectTimeout, not the whole handshake's.
      let unanswered = false;
      const waiting = socket;
      const answered = budget.step(() => {
        unanswered = true;
        waiting.destroy();
      });
      try {
        // Interim 1xx answers carry no body and precede the real one (RFC 9110 §15.2).
        do head = await reader.readHead();
        while (head.status < 200);
      } catch (err) {
        // A kept-alive connection the proxy closed after its last answer without saying so — not
        // one our own timer or the deadline destroyed (review r51: that looked the same).
        const idleClose =
          reused && !resent && reader.ended && reader.buffered === 0 && !unanswered && !deadline.timedOut;
        // R4: the proxy never answered a CONNECT carrying the password (or what derives from it): it
        // may have counted it.
        if (carriesPassword && !idleClose) proved('unanswered');
        if (unanswered) {
          const e = new ProxyConnectTimeoutError(
            proxy.origin,
            budget.ms,
            target,
            'answer',
            credentials ? auth.scheme : undefined,
          );
          traced.error(e);
          throw e;
        }
        // Such an idle close (as undici retries a request on a reused connection): the leg goes
        // again on a new one, once; a handshake that lived on that connection starts over.
        if (idleClose) {
          resent = true;
          traced.error(err as Error);
          socket.destroy();
          socket = undefined;
          if (auth.state === 'handshaking' && credentials !== undefined && !(await auth.restart(leg))) {
            throw closedBetweenLegs(proxy, auth.scheme);
          }
          continue;
        }
        const e = wireError(proxy, err, reader.received);
        traced.error(e);
        throw e;
      } finally {
        answered();
      }
      traced.response(head.status, head.headers, head.status !== 407);
      log.proxy('%s CONNECT %s -> %d (auth %s)', proxy.origin, target, head.status, credentials ? auth.scheme : 'none');
      if (head.status >= 200 && head.status < 300) {
        // A 2xx to the opening authenticated nothing: the proxy wants no authentication (R4: nothing proved).
        if (credentials && auth.opening) auth.notNeeded();
        else if (credentials?.own) {
          // A per-request scheme taken up from another tunnel (auth.adopt): its answer proves itself.
          await auth.verify(credentials.own, head.status, head.headers, leg, leave(), expired);
          proved('success');
        } else if (credentials) {
          // A 2xx must prove the proxy (M2, proofRequired): a failed check is the error, no tunnel.
          await auth.succeeded(head.status, head.headers, leg, leave(), expired);
          proved('success');
        }
        // What the socket read so far, the unread rest of it aside, was the proxy's: not the origin's.
        proxyShare.set(socket, socket.bytesRead - reader.detach());
        return { socket, requests, connections, holder: credentials ? auth.holder : undefined };
      }
      if (head.status !== 407) {
        socket.destroy();
        // A proxy that took the credentials but not the tunnel (a 403 for the port, a 502) may still
        // answer them with its final token or Proxy-Authentication-Info (RFC 7616 §3.5): checked by the
        // requests' rule (M2, proofRequired), a forged one is the error then. Without them the
        // handshake ends with this error, unproved. (Credentials taken up from another tunnel are
        // checked as on a 2xx: their own context's.) A 5xx ends it by that rule in any case: never a
        // success, and `proof` where it came without the final token the mechanism wants (M2).
        if (credentials && !auth.opening && (head.status >= 500 || auth.mustProve(head.status, head.headers))) {
          if (credentials.own) await auth.verify(credentials.own, head.status, head.headers, leg, leave(), expired);
          else await auth.succeeded(head.status, head.headers, leg, leave(), expired);
        }
        throw new ProxyConnectError(proxy.origin, target, head.status);
      }
      let drained: boolean;
      try {
        drained = await reader.drainBody(head, limits.maxChallengeBodyBytes);
      } catch (err) {
        // R1/C8: the 407's head was whole, the rest of it never came (the proxy closed or reset the
        // connection): not a broken answer but a cut challenge, typed as a forwarding proxy's is; the
        // handshake does not answer it, and no CONNECT goes again for it.
        if (cutBy(err))
          throw new ProxyClosedError(proxy.origin, 'CONNECT', {
            cause: err,
            challengeCut: { status: 407, tunnel: target },
          });
        throw wireError(proxy, err, true);
      }
      let closing = head.close || !drained || reader.ended;
      const midHandshake = auth.state === 'handshaking' && credentials !== undefined;
      // Read once: for the checks here, the leave (`admit`) and the answer.
      const challenges = readChallenges(head.headers, true);
      const challenged = challenges.some((c) => c.schemeKey === auth.scheme?.toLowerCase() && c.token68 !== undefined);
      if (closing && midHandshake && challenged) {
        // The proxy dropped the connection that holds the handshake's state: start over, once.
        socket.destroy();
        socket = undefined;
        if (!(await auth.restart(leg))) {
          throw closedBetweenLegs(proxy, auth.scheme);
        }
        continue;
      }
      if (auth.state !== 'handshaking') {
        await admit(challenges);
      }
      try {
        // T2: a scheme whose challenge could not be read falls through to the next one, once per
        // tunnel; where this 407 offers no other, the next CONNECT goes bare on a new connection.
        const fell = await auth.answer(challenges, leg, !fellThrough);
        if (fell) fellThrough = true;
        if (fell === 'bare') closing = true;
      } catch (err) {
        if (err instanceof ProxyAuthenticationError && err.refused) proved(auth.refusal);
        throw err;
      }
      if (closing) {
        socket.destroy();
        socket = undefined;
      }
    }
  } catch (err) {
    socket?.destroy();
    // The handshake running on it ended with the tunnel (reported failed); not one whose credentials
    // were replaced under it: it starts over with the new ones, as an origin's superseded one does.
    if (err !== REPLACED) auth.abandon(err);
    throw err;
  }
}

/** The reader's error is the proxy ending the connection (a close, or a reset), not a broken answer. */
function cutBy(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return err instanceof WireClosedError || code === 'ECONNRESET' || code === 'EPIPE';
}

/**
 * The reader throws only WireError (the proxy broke HTTP) or the socket's own error. A connection
 * reset before the proxy said anything is a proxy that is not there (a firewall, a service that
 * went away), not one that broke the protocol.
 */
function wireError(proxy: ResolvedProxy, err: unknown, answered: boolean): MultilegError {
  if (err instanceof WireError) return new ProxyProtocolError(proxy.origin, err.message);
  const code = (err as { code?: string }).code;
  if (!answered && code === 'ECONNRESET') return new ProxyUnreachableError(proxy.origin, code, { cause: err });
  return new ProxyProtocolError(proxy.origin, `connection failed (${(err as Error).message})`, { cause: err });
}
