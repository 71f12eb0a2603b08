import type { Socket } from 'node:net';
import type { ConnectionOptions, TLSSocket } from 'node:tls';
import { buildConnector } from 'undici';
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
 */
export function sessionConnector(
  tls: ConnectionOptions,
  allowH2: boolean,
  onConnection: (info: ConnectionInfo) => void,
): buildConnector.connector {
  const base = buildConnector({ ...(tls as buildConnector.BuildOptions), allowH2, maxCachedSessions: 0 });
  let generation = 0;
  return (opts, callback) =>
    base(opts, (err, socket) => {
      if (err || !socket) {
        callback(err ?? new Error('connect failed'), null);
        return;
      }
      const tlsSocket = socket as Socket & Partial<TLSSocket>;
      const protocol = tlsSocket.alpnProtocol === 'h2' ? 'h2' : 'http/1.1';
      const cert =
        typeof tlsSocket.getPeerX509Certificate === 'function' ? tlsSocket.getPeerX509Certificate() : undefined;
      generation += 1;
      onConnection({ generation, protocol, channelBinding: tlsServerEndPoint(cert) });
      callback(null, socket);
    });
}
