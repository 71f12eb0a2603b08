/** Scripted proxies on loopback for proxy and upgrade tests: raw TCP servers that misbehave or relay on purpose. */
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';

export interface Hostile {
  readonly port: number;
  /** TCP connections accepted. */
  readonly connections: number;
  /** Accepted connections not yet closed. */
  readonly open: number;
  /** Every byte each connection sent, as latin1 text. */
  readonly received: string[];
  close(): Promise<void>;
}

/** A TCP server on loopback that runs `behave` on each connection and records what it receives. */
export async function hostile(behave: (socket: Socket, received: () => string) => void): Promise<Hostile> {
  const sockets = new Set<Socket>();
  const received: string[] = [];
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    const i = received.push('') - 1;
    socket.on('data', (d: Buffer) => {
      received[i] += d.toString('latin1');
    });
    socket.on('error', () => {});
    socket.once('close', () => sockets.delete(socket));
    behave(socket, () => received[i]!);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    get connections() {
      return received.length;
    },
    get open() {
      return sockets.size;
    },
    received,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/**
 * Hands `onRequest` the head of each request `socket` sends, in turn, once it and its
 * Content-Length body have arrived (`received`: what the connection sent, {@link hostile}'s);
 * `onRequest` returns `'stop'` to read no more requests on it.
 */
export function eachRequest(
  socket: Socket,
  received: () => string,
  onRequest: (head: string) => 'stop' | undefined,
): void {
  let at = 0;
  const onData = () => {
    for (;;) {
      const all = received();
      const end = all.indexOf('\r\n\r\n', at);
      if (end < 0) return;
      const head = all.slice(at, end);
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
      if (all.length < end + 4 + length) return;
      at = end + 4 + length;
      if (onRequest(head) === 'stop') {
        socket.off('data', onData);
        return;
      }
    }
  };
  socket.on('data', onData);
}

/**
 * Answers the first CONNECT (whatever host:port it names) with 200 and relays the connection to
 * 127.0.0.1:`port`, so an origin on a default port (443, 80) can be reached through it;
 * `answerAfterMs` after the CONNECT came (a proxy slow to reach the origin).
 */
export const relayTo = (
  port: number,
  answerTo: string | ((head: string) => string) = 'HTTP/1.1 200 Connection Established\r\n\r\n',
  answerAfterMs = 0,
) =>
  hostile((socket, received) => {
    const onData = () => {
      const end = received().indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.off('data', onData);
      socket.pause();
      if (answerAfterMs > 0) {
        const timer = setTimeout(() => respond(end), answerAfterMs);
        socket.once('close', () => clearTimeout(timer));
      } else respond(end);
    };
    const respond = (end: number) => {
      // A function answers each CONNECT by its head (e.g. 407 until it carries credentials).
      const answer = typeof answerTo === 'string' ? answerTo : answerTo(received().slice(0, end));
      if (!answer.includes(' 200 ')) return void socket.end(answer);
      const upstream = netConnect({ host: '127.0.0.1', port }, () => {
        socket.write(answer);
        const rest = Buffer.from(received().slice(end + 4), 'latin1');
        if (rest.length) upstream.write(rest);
        socket.pipe(upstream).pipe(socket);
        socket.resume();
      });
      upstream.on('error', () => socket.destroy());
      socket.once('close', () => upstream.destroy());
    };
    socket.on('data', onData);
  });

/** Holds each connection `ms` before relaying it, bytes and all, to 127.0.0.1:`port`. */
export const slowRelayTo = (port: number, ms: number) =>
  hostile((socket, received) => {
    socket.pause();
    const timer = setTimeout(() => {
      const upstream = netConnect({ host: '127.0.0.1', port }, () => {
        socket.on('data', (d: Buffer) => upstream.write(d));
        upstream.pipe(socket);
        socket.resume();
      });
      upstream.on('error', () => socket.destroy());
      socket.once('close', () => upstream.destroy());
    }, ms);
    socket.once('close', () => clearTimeout(timer));
    void received;
  });

/**
 * A Basic proxy that keeps its connection open after a 407, as Squid does (the reference proxy, on
 * node:http, ends it): the CONNECTs on a connection are answered in turn, each `holdMs(its
 * Proxy-Authorization)` after it arrives — a 407 `Basic` (keep-alive, no body) unless it carries
 * `accepts()` (read when it is answered), else 200 and a relay to 127.0.0.1:`port`. `seen`: each
 * CONNECT's Proxy-Authorization (none: bare), in order of arrival.
 */
export async function keptAliveBasicProxy(
  port: number,
  accepts: () => string,
  holdMs: (proxyAuthorization: string | undefined) => number = () => 0,
): Promise<Hostile & { readonly seen: Array<string | undefined> }> {
  const seen: Array<string | undefined> = [];
  const h = await hostile((socket, received) => {
    /** Where the next CONNECT's head starts in what the connection sent. */
    let at = 0;
    let holding = false;
    const next = () => {
      if (holding || socket.destroyed) return;
      const end = received().indexOf('\r\n\r\n', at);
      if (end < 0) return;
      const head = received().slice(at, end);
      at = end + 4;
      const auth = /^proxy-authorization:[ \t]*(.*?)[ \t]*$/im.exec(head)?.[1];
      seen.push(auth);
      const answer = () => {
        holding = false;
        if (socket.destroyed) return;
        if (auth !== accepts()) {
          socket.write(
            'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="kept-alive"\r\nContent-Length: 0\r\n\r\n',
          );
          return next();
        }
        socket.off('data', next);
        socket.pause();
        const upstream = netConnect({ host: '127.0.0.1', port }, () => {
          socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
          const rest = Buffer.from(received().slice(at), 'latin1');
          if (rest.length) upstream.write(rest);
          socket.pipe(upstream).pipe(socket);
          socket.resume();
        });
        upstream.on('error', () => socket.destroy());
        socket.once('close', () => upstream.destroy());
      };
      holding = true;
      const ms = holdMs(auth);
      if (ms > 0) setTimeout(answer, ms);
      else answer();
    };
    socket.on('data', next);
  });
  return Object.assign(h, { seen });
}
