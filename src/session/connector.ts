import type { Socket } from 'node:net';
import type { ConnectionOptions, TLSSocket } from 'node:tls';
import { buildConnector } from 'undici';
import type { Limits } from '../options.ts';
import type { ProxyRoute } from '../proxy/options.ts';
import { connectThroughTunnel, connectToProxy } from '../proxy/tunnel.ts';
import { tlsServerEndPoint } from './channel-binding.ts';

/** What the connector learned about one new connection: the only source of session identity. */
export interface ConnectionInfo {
  /** 1 for the first connection a Client makes, 2 for the next, ... */
  readonly generation: number;
  readonly protocol: 'h2' | 'http/1.1';
  /** tls-server-end-point channel binding of this connection's server certificate. */
  readonly channelBinding?: Buffer;
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
  tls: ConnectionOptions,
  allowH2: boolean,
  onConnection: (info: ConnectionInfo) => void,
  route?: {
    readonly proxy: ProxyRoute;
    readonly limits: Limits;
    /** forward: the first connection, opened early so the session knows its protocol before its first request. */
    readonly preopened?: Promise<Socket>;
  },
): buildConnector.connector {
  let generation = 0;
  const done = (socket: Socket, callback: buildConnector.Callback, proxied: 'tunnel' | 'forward' | undefined) => {
    const tlsSocket = socket as Socket & Partial<TLSSocket>;
    const protocol = tlsSocket.alpnProtocol === 'h2' ? 'h2' : 'http/1.1';
    const cert =
      proxied !== 'forward' && typeof tlsSocket.getPeerX509Certificate === 'function'
        ? tlsSocket.getPeerX509Certificate()
        : undefined;
    generation += 1;
    onConnection({ generation, protocol, channelBinding: tlsServerEndPoint(cert) });
    callback(null, socket);
  };
  const alpn = allowH2 ? ['h2', 'http/1.1'] : ['http/1.1'];
  if (route?.proxy.kind === 'forward') {
    const proxy = route.proxy.proxy;
    let first = route.preopened;
    return (_opts, callback) => {
      // undici asks again only if its connection ended while requests were queued in the Client;
      // a session is closed at its first disconnect and takes no more, so the tests do not reach it.
      const opening = first ?? connectToProxy(proxy, alpn);
      first = undefined;
      opening.then(
        (socket) => done(socket, callback, 'forward'),
        (err: Error) => callback(err, null),
      );
    };
  }
  if (route?.proxy.kind === 'tunnel') {
    const { proxy } = route.proxy;
    return (opts, callback) => {
      const port = Number(opts.port || (opts.protocol === 'https:' ? 443 : 80));
      connectThroughTunnel(proxy, { ...opts, port }, tls, alpn, route.limits).then(
        (socket) => done(socket, callback, 'tunnel'),
        (err: Error) => callback(err, null),
      );
    };
  }
  const base = buildConnector({ ...(tls as buildConnector.BuildOptions), allowH2, maxCachedSessions: 0 });
  return (opts, callback) =>
    base(opts, (...args) => {
      if (args[0]) callback(args[0], null);
      else done(args[1] as Socket, callback, undefined);
    });
}
