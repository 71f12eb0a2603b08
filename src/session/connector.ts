import { isIP, type Socket } from 'node:net';
import type { ConnectionOptions, TLSSocket } from 'node:tls';
import type { buildConnector } from 'undici';
import { type ConnectTo, routedConnector } from '../connect-to.ts';
import { alpnFor, type Limits, portOf, unbracketed } from '../options.ts';
import type { AdmittedHolder, ProxyHandshake } from '../proxy/auth.ts';
import type { ProxyRoute } from '../proxy/options.ts';
import { connectThroughTunnel, connectToProxy, proxyBytesRead } from '../proxy/tunnel.ts';
import { tlsServerEndPoint } from './channel-binding.ts';

/** What the connector learned about one new connection: the only source of session identity. */
export interface ConnectionInfo {
  /** 1 for the first connection a Client makes, 2 for the next, ... */
  readonly generation: number;
  readonly protocol: 'h2' | 'http/1.1';
  /** tls-server-end-point channel binding of this connection's server certificate. */
  readonly channelBinding?: Buffer;
  /**
   * Over TLS whose server certificate did not verify (accepted only under `rejectUnauthorized:
   * false`): Node's `authorizationError` (e.g. `DEPTH_ZERO_SELF_SIGNED_CERT`). Absent: verified, or
   * no TLS to the origin (a forwarding proxy's connection).
   */
  readonly unverifiedTls?: string;
  /** Through a CONNECT tunnel: who its CONNECT authenticated as (S6, {@link AdmittedHolder}). */
  readonly proxyHolder?: AdmittedHolder;
  /**
   * Through a plain CONNECT tunnel: the bytes of the socket's `bytesRead` that were the proxy's
   * answers to the CONNECTs, not the origin's (see proxyBytesRead).
   */
  readonly proxyBytes?: number;
  /**
   * Nothing has come from the origin on the connection since it was made (after TLS: on HTTP/2,
   * not even its SETTINGS). Not through a forwarding proxy, whose connection it is.
   */
  readonly silent?: () => boolean;
  /** The TLS version of the connection to the origin (`TLSv1.3`, …); not through a forwarding proxy. */
  readonly tlsVersion?: string;
  /**
   * TLS 1.2 and below: the server renegotiated the connection after its handshake and that
   * handshake did not complete (T3: how a server asks for a client certificate for one path only and
   * fails the connection without one, {@link watchRenegotiation}).
   */
  readonly renegotiationFailed?: () => boolean;
}

/**
 * T3: whether a renegotiation of `socket` (TLS 1.2 and below) begins from now on and does not
 * complete: how Apache's per-directory `SSLVerifyClient` (IIS: a folder's client certificates, the
 * binding not negotiating them) asks for a certificate mid-connection and fails it when none comes
 * (handshake_failure). Node's client has no event for a renegotiation; each handshake logs its
 * master secret (`keylog`) as the client's part of it is sent — the first before this is called —
 * and emits `secure` once it completes. (TLS 1.3 has no renegotiation: a server asks there by
 * post-handshake authentication, which Node's client does not offer.)
 */
function watchRenegotiation(socket: TLSSocket): () => boolean {
  let unfinished = false;
  socket.on('keylog', () => {
    unfinished = true;
  });
  socket.on('secure', () => {
    unfinished = false;
  });
  return () => unfinished;
}

/** One session's connect function for its Client, and its early connection. */
export interface SessionConnector {
  readonly connect: buildConnector.connector;
  /**
   * Direct connections only: opens the connection now, before undici asks for it, so a first
   * token bound to the channel can be made before the first request (M5). Resolves once the
   * connection is up (reported through `onConnection`) or failed (undici is then handed that error).
   */
  readonly open?: () => Promise<void>;
  /** Destroys an early connection undici never took (the session closed first). */
  dispose(): void;
  /**
   * Destroys the connections still being made (TCP or TLS not finished): undici's Client, once
   * destroyed, would leave them to its connect timeout (10 s), keeping the process alive.
   */
  abortDials(): void;
}

/**
 * Why the server of a TLS `socket` was not verified — Node's `authorizationError` (the certificate
 * failed its check, or named another host) on a connection `rejectUnauthorized: false` let through —
 * or undefined when it was verified, or `socket` is no TLS socket (S4/M4: Basic goes only where it was).
 */
export function unverifiedTls(socket: Socket): string | undefined {
  const tls = socket as Socket & Partial<TLSSocket>;
  if (tls.encrypted !== true || tls.authorized !== false) return undefined;
  // Node sets a string (the OpenSSL code, or ERR_TLS_CERT_ALTNAME_INVALID), typed as an Error.
  const why = tls.authorizationError as Error | string | null | undefined;
  const code =
    typeof why === 'string' ? why : ((why as NodeJS.ErrnoException | null | undefined)?.code ?? why?.message);
  return code || 'UNVERIFIED';
}

/**
 * Whether a connection to `origin` opened ahead of undici's ask, under `servername`, may be handed
 * over when undici asks for one under `asked` (S1: behind undici's dns interceptor the origin holds
 * the address, the request the name; a connection checked under another name is no answer to it).
 * Each name as undici's connector reads it: the one asked for (a request's Host, or its dispatch
 * option `servername`), else `tls.servername`, else the origin's host name (none for an address).
 * (The session's early connection, the upgrade's spare.)
 */
export function openedUnder(
  origin: string,
  tls: ConnectionOptions,
  servername: string | undefined,
): (asked: string | null | undefined) => boolean {
  const own = unbracketed(new URL(origin).hostname);
  const nameOf = (name: string | null | undefined) =>
    (name || tls.servername || (isIP(own) === 0 ? own : '')).toLowerCase();
  const opened = nameOf(servername);
  return (asked) => nameOf(asked) === opened;
}

/**
 * The server name the requests of `site` name where `origin` holds an address undici's dns
 * interceptor resolved a name to (the name; undefined otherwise, and for an address).
 */
export function siteServername(origin: string, site: string): string | undefined {
  if (site === origin) return undefined;
  const name = unbracketed(new URL(site).hostname);
  return isIP(name) === 0 ? name : undefined;
}

/**
 * Builds the connect function for one session's Client. It honours the lane's `allowH2` itself —
 * undici's connector ignores the per-call flag — and turns off TLS session resumption, because a
 * resumed session has no peer certificate to derive channel bindings from.
 *
 * Through a proxy (H5): `tunnel` opens a CONNECT tunnel (authenticating to the proxy on its one
 * socket) and runs TLS + ALPN to the origin inside it, so the channel binding is the origin's;
 * `forward` connects to the proxy itself (TLS + ALPN for an https:// proxy) and has no channel
 * binding, since the origin's certificate is never seen.
 */
export function sessionConnector(
  origin: string,
  tls: ConnectionOptions,
  allowH2: boolean,
  onConnection: (info: ConnectionInfo) => void,
  route?: {
    readonly proxy: ProxyRoute;
    readonly limits: Limits;
    /** forward: the first connection, opened early so the session knows its protocol before its first request. */
    readonly preopened?: Promise<Socket>;
    /** tunnel: told of each CONNECT's handshake with the proxy that ends (H5). */
    readonly onHandshake?: (handshake: ProxyHandshake) => void;
    /** tunnel: the CONNECT goes without the proxy credentials (R1/R4: Session.withholdProxyCredentials). */
    readonly withheld?: () => boolean;
  },
  /** Told of a connection that could not be made, before undici fails the request that asked for it. */
  onFailure?: (err: Error) => void,
  /** The agent's `connectTo`, for direct connections (a proxy route's carries it for its own). */
  connectTo?: ConnectTo,
  /** The TLS server name the session's requests name, where it is not the origin's host (an early connection's). */
  servername?: string,
): SessionConnector {
  let generation = 0;
  const describe = (
    socket: Socket,
    proxied: 'tunnel' | 'forward' | undefined,
    proxyHolder?: AdmittedHolder,
  ): Socket => {
    const tlsSocket = socket as Socket & Partial<TLSSocket>;
    const protocol = tlsSocket.alpnProtocol === 'h2' ? 'h2' : 'http/1.1';
    const cert =
      proxied !== 'forward' && typeof tlsSocket.getPeerX509Certificate === 'function'
        ? tlsSocket.getPeerX509Certificate()
        : undefined;
    const tlsVersion = proxied !== 'forward' ? tlsSocket.getProtocol?.() : undefined;
    const unverified = proxied !== 'forward' ? unverifiedTls(socket) : undefined;
    generation += 1;
    onConnection({
      generation,
      protocol,
      channelBinding: tlsServerEndPoint(cert),
      ...(unverified !== undefined ? { unverifiedTls: unverified } : {}),
      ...(proxyHolder ? { proxyHolder } : {}),
      ...(proxied === 'tunnel' ? { proxyBytes: proxyBytesRead(socket) } : {}),
      // A TLS socket counts the bytes it decrypted (the handshake's are its transport's).
      ...(proxied !== 'forward' ? { silent: () => socket.bytesRead === 0 } : {}),
      ...(tlsVersion ? { tlsVersion } : {}),
      ...(tlsVersion && tlsVersion !== 'TLSv1.3'
        ? { renegotiationFailed: watchRenegotiation(socket as TLSSocket) }
        : {}),
    });
    return socket;
  };
  const handOver = (opening: Promise<Socket>, callback: buildConnector.Callback) =>
    opening.then(
      (socket) => callback(null, socket),
      (err: Error) => {
        onFailure?.(err);
        callback(err, null);
      },
    );
  const alpn = alpnFor(allowH2);
  if (route?.proxy.kind === 'forward') {
    const proxy = route.proxy.proxy;
    let first = route.preopened;
    return {
      connect: (_opts, callback) => {
        // undici asks again only if its connection ended while requests were queued in the Client;
        // a session is closed at its first disconnect and takes no more, so the tests do not reach it.
        const opening = first ?? connectToProxy(proxy, alpn);
        first = undefined;
        handOver(
          opening.then((socket) => describe(socket, 'forward')),
          callback,
        );
      },
      // The first connection when undici never took it (the session's first request failed before
      // it was written: a header undici refuses, a cookie jar that threw): ended with the session,
      // or it would keep the process open.
      dispose: () => {
        const unused = first;
        first = undefined;
        unused?.then(
          (socket) => socket.destroy(),
          () => {},
        );
      },
      abortDials: () => {},
    };
  }
  if (route?.proxy.kind === 'tunnel') {
    const { proxy } = route.proxy;
    // Tunnels still being made (the CONNECT handshake, TLS inside): a destroyed session ends them,
    // or the process would wait for limits.handshakeTimeout.
    const tunnelling = new Set<AbortController>();
    return {
      connect: (opts, callback) => {
        const port = portOf(opts);
        const dial = new AbortController();
        tunnelling.add(dial);
        const opening = connectThroughTunnel(
          proxy,
          { ...opts, port },
          tls,
          alpn,
          route.limits,
          dial.signal,
          route.onHandshake,
          route.withheld?.() === true,
        );
        void opening.finally(() => tunnelling.delete(dial)).catch(() => {});
        handOver(
          opening.then(({ socket, holder }) => describe(socket, 'tunnel', holder)),
          callback,
        );
      },
      dispose: () => {},
      abortDials: () => {
        for (const dial of tunnelling) dial.abort(new Error('the session ended while its tunnel was being made'));
        tunnelling.clear();
      },
    };
  }
  const base = routedConnector({ ...(tls as buildConnector.BuildOptions), allowH2, maxCachedSessions: 0 }, connectTo);
  const dialling = new Set<Socket>();
  const dial = (opts: buildConnector.Options) =>
    new Promise<Socket>((resolve, reject) => {
      let done = false;
      let socket: Socket | undefined;
      socket = base(opts, (err, connected) => {
        done = true;
        if (socket) dialling.delete(socket);
        if (err) reject(err);
        else resolve(describe(connected as Socket, undefined));
      }) as Socket | undefined;
      if (socket && !done) dialling.add(socket);
    });
  const handsOver = openedUnder(origin, tls, servername);
  // The early connection, until undici takes it (a failed one too: undici is handed its error).
  let early: Promise<Socket> | undefined;
  let earlySocket: Socket | undefined;
  let disposed = false;
  return {
    connect: (opts, callback) => {
      // S1: the early connection was checked under `servername`; one undici asks for under another
      // name (its request's Host: behind undici's dns interceptor, the name whose address the origin
      // holds) is dialled anew, or the request would go over TLS never checked for its name.
      const taken = early !== undefined && handsOver(opts.servername) ? early : undefined;
      if (early !== undefined && taken === undefined) {
        early.then(
          (socket) => socket.destroy(),
          () => {},
        );
      }
      const opening = taken ?? dial(opts);
      early = undefined;
      earlySocket = undefined;
      handOver(opening, callback);
    },
    open: () => {
      if (!early) {
        // What undici's Client would pass for this origin (an IPv6 literal without its brackets),
        // under the server name its requests name.
        const url = new URL(origin);
        const hostname = unbracketed(url.hostname);
        const opening = dial({
          host: url.host,
          hostname,
          protocol: url.protocol,
          port: url.port,
          ...(servername ? { servername } : {}),
        });
        early = opening;
        opening.then(
          (socket) => {
            if (disposed) socket.destroy();
            else if (early === opening) earlySocket = socket; // (else undici has taken it)
          },
          () => {},
        );
      }
      return early.then(
        () => {},
        () => {},
      );
    },
    dispose: () => {
      disposed = true;
      earlySocket?.destroy();
      earlySocket = undefined;
      early = undefined;
    },
    abortDials: () => {
      for (const socket of dialling) socket.destroy();
      dialling.clear();
    },
  };
}

/**
 * A connection to the https `origin` made the way its sessions' connections are — straight, or where
 * `connectTo` sends it, or through the route's CONNECT tunnel (authenticated to the proxy as theirs
 * are) — that stops short of TLS: the caller runs TLS on it (the acceptable-issuers probe, T3).
 * `signal` ends a connection still being made. A forwarding proxy never carries https.
 */
export function plainConnection(
  origin: string,
  tls: ConnectionOptions,
  route: ProxyRoute | undefined,
  limits: Limits,
  connectTo: ConnectTo | undefined,
  signal: AbortSignal,
): Promise<Socket> {
  const url = new URL(origin);
  const hostname = unbracketed(url.hostname);
  const port = portOf(url);
  if (route?.kind === 'forward') return Promise.reject(new Error('a forwarding proxy carries no TLS to the origin'));
  if (route?.kind === 'tunnel') {
    const target = { hostname, port, protocol: 'http:' };
    return connectThroughTunnel(route.proxy, target, tls, [], limits, signal).then(({ socket }) => socket);
  }
  // undici's own connector, `http:` (plain TCP): the address, connectTo's route and the socket
  // options are those of the session's, whose connector runs TLS on such a socket itself.
  const base = routedConnector({ ...(tls as buildConnector.BuildOptions), maxCachedSessions: 0 }, connectTo);
  return new Promise<Socket>((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    let socket: Socket | undefined;
    const aborted = () => {
      socket?.destroy();
      reject(signal.reason);
    };
    signal.addEventListener('abort', aborted, { once: true });
    socket = base({ host: url.host, hostname, protocol: 'http:', port: String(port) }, (err, connected) => {
      signal.removeEventListener('abort', aborted);
      if (err) reject(err);
      else resolve(connected as Socket);
    }) as Socket | undefined;
  });
}
