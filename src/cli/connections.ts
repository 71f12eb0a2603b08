/**
 * -v's line for each connection the command makes, as curl's: `* Connected to HOST (ADDRESS) port
 * PORT`, the address the socket reached (--resolve and --connect-to change it, not the name). From
 * undici's diagnostics channel, listened to only with -v.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';

/** The proxy a connection to an origin goes through, by the agent's rules (undefined: none). */
export type ProxyOf = (
  origin: string,
) => { readonly origin: string; readonly hostname: string; readonly kind: 'tunnel' | 'forward' } | undefined;

export class ConnectedLines {
  readonly #say: (line: string) => void;
  readonly #proxyOf: ProxyOf;
  readonly #onConnected = (message: unknown) => {
    const { connectParams: p, socket } = message as {
      connectParams: { protocol: string; host: string; hostname: string };
      socket: { remoteAddress?: string; remotePort?: number };
    };
    const at = `(${socket.remoteAddress ?? '?'}) port ${socket.remotePort ?? '?'}`;
    const host = p.hostname.replace(/^\[(.*)\]$/, '$1');
    // A tunnel's socket is the proxy's: curl names the proxy it connected to (a forwarding
    // proxy's session connects to the proxy by name: its origin is the proxy's).
    const origin = `${p.protocol}//${p.host}`;
    let proxy: ReturnType<ProxyOf>;
    try {
      proxy = this.#proxyOf(origin);
    } catch {}
    this.#say(
      proxy?.kind === 'tunnel' && new URL(origin).origin !== proxy.origin
        ? `* Connected to ${proxy.hostname} ${at}, tunnel to ${p.host}`
        : `* Connected to ${host} ${at}`,
    );
  };

  constructor(say: (line: string) => void, proxyOf: ProxyOf) {
    this.#say = say;
    this.#proxyOf = proxyOf;
    subscribe('undici:client:connected', this.#onConnected);
  }

  stop(): void {
    unsubscribe('undici:client:connected', this.#onConnected);
  }
}
