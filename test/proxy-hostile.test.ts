/**
 * R1 / H5 against scripted hostile proxies: every wait on the way through a proxy is bounded and
 * ends in a typed error that names the option to change. The proxies are raw loopback TCP servers
 * that misbehave on purpose.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { fetch } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { MultilegAgent } from '../src/index.ts';
import { ProxyConnectTimeoutError, ProxyTimeoutError } from '../src/proxy/errors.ts';
import { CA_CERT } from '../src/reference-server/index.ts';

interface Hostile {
  readonly port: number;
  /** TCP connections accepted. */
  readonly connections: number;
  /** Every byte each connection sent, as latin1 text. */
  readonly received: string[];
  close(): Promise<void>;
}

/** A TCP server on loopback that runs `behave` on each connection and records what it receives. */
async function hostile(behave: (socket: Socket, received: () => string) => void): Promise<Hostile> {
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
    received,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Accepts TCP and never says a word. */
const silent = () => hostile(() => {});

/** Answers the first CONNECT with 200 and then relays nothing, in either direction. */
const connectThenSilent = () =>
  hostile((socket, received) => {
    let answered = false;
    socket.on('data', () => {
      if (!answered && received().includes('\r\n\r\n')) {
        answered = true;
        socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      }
    });
  });

const cause = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: { cause?: Error }) => e.cause ?? (e as Error),
  );

let proxy: Hostile | undefined;
let agent: MultilegAgent | undefined;
afterEach(async () => {
  await agent?.destroy().catch(() => {});
  await proxy?.close();
  agent = proxy = undefined;
});

describe('hostile proxies: bounded connects (R1, H5)', () => {
  it('R1: an https:// proxy that accepts TCP and never does TLS fails with ProxyConnectTimeoutError naming proxy.connectTimeout (CONNECT route)', async () => {
    proxy = await silent();
    agent = new MultilegAgent({
      proxy: { uri: `https://127.0.0.1:${proxy.port}`, connectTimeout: 300, connect: { ca: CA_CERT } },
    });
    const err = await cause(fetch('https://localhost:8443/x', { dispatcher: agent }));
    expect(err).toBeInstanceOf(ProxyConnectTimeoutError);
    expect(err).toMatchObject({ code: 'MULTILEG_PROXY_CONNECT_TIMEOUT', stage: 'proxy' });
    expect((err as Error).message).toContain('proxy.connectTimeout (300 ms)');
    expect((err as Error).message).toContain(`https://127.0.0.1:${proxy.port}`);
    // The client did start TLS (a ClientHello), and nothing more came of it.
    expect(proxy.received[0]!.charCodeAt(0)).toBe(0x16);
  }, 20_000);

  it('R1: an https:// forwarding proxy that accepts TCP and never does TLS fails with ProxyConnectTimeoutError (forward route)', async () => {
    proxy = await silent();
    agent = new MultilegAgent({
      proxy: { uri: `https://127.0.0.1:${proxy.port}`, connectTimeout: 300, connect: { ca: CA_CERT } },
    });
    const err = await cause(fetch('http://localhost:8443/x', { dispatcher: agent }));
    expect(err).toBeInstanceOf(ProxyConnectTimeoutError);
    expect(err).toMatchObject({ code: 'MULTILEG_PROXY_CONNECT_TIMEOUT', stage: 'proxy' });
  }, 20_000);

  it('R1: an http:// proxy that accepts TCP and never answers CONNECT fails with ProxyTimeoutError naming limits.handshakeTimeout', async () => {
    proxy = await silent();
    agent = new MultilegAgent({ proxy: `http://127.0.0.1:${proxy.port}`, limits: { handshakeTimeout: 300 } });
    const err = await cause(fetch('https://localhost:8443/x', { dispatcher: agent }));
    expect(err).toBeInstanceOf(ProxyTimeoutError);
    expect(err).toMatchObject({ code: 'MULTILEG_PROXY_TIMEOUT' });
    expect((err as Error).message).toContain('limits.handshakeTimeout (300 ms)');
    expect(proxy.received[0]).toMatch(/^CONNECT localhost:8443 HTTP\/1\.1\r\n/);
  }, 20_000);

  it('R1: a proxy that answers CONNECT 200 and then relays nothing: the TLS handshake with the origin fails with ProxyConnectTimeoutError', async () => {
    proxy = await connectThenSilent();
    agent = new MultilegAgent({
      proxy: { uri: `http://127.0.0.1:${proxy.port}`, connectTimeout: 300 },
      limits: { handshakeTimeout: 60_000 },
    });
    const err = await cause(fetch('https://localhost:8443/x', { dispatcher: agent }));
    expect(err).toBeInstanceOf(ProxyConnectTimeoutError);
    expect(err).toMatchObject({ code: 'MULTILEG_PROXY_CONNECT_TIMEOUT', stage: 'origin' });
    expect((err as Error).message).toContain('TLS handshake with localhost:8443');
    expect((err as Error).message).toContain('proxy.connectTimeout (300 ms)');
    // The CONNECT was answered and then the ClientHello went into the tunnel, unanswered.
    expect(proxy.received[0]).toMatch(/^CONNECT localhost:8443 HTTP\/1\.1\r\n[\s\S]*\r\n\r\n\x16/);
  }, 20_000);

  it('R1: proxy.connectTimeout must be a positive number (ConfigError naming it)', () => {
    expect(() => new MultilegAgent({ proxy: { uri: 'http://127.0.0.1:1', connectTimeout: 0 } })).toThrow(
      /proxy\.connectTimeout must be a positive number/,
    );
  });
});
