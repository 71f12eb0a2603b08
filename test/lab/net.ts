/** Loopback port helpers for the real-peer lab. */

import { createSocket } from 'node:dgram';
import { createServer, Socket } from 'node:net';

async function tcpFree(port: number): Promise<number> {
  return await new Promise<number>((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen({ host: '127.0.0.1', port, exclusive: true }, () => {
      const addr = srv.address();
      const p = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(p));
    });
  });
}

async function udpFree(port: number): Promise<boolean> {
  return await new Promise<boolean>((resolve) => {
    const s = createSocket('udp4');
    s.once('error', () => {
      s.close();
      resolve(false);
    });
    s.bind({ address: '127.0.0.1', port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

const handedOut = new Set<number>();

/**
 * A free loopback TCP port (also free on UDP when `udp` is set, for the KDC). There is a window between
 * picking and binding; ports handed out by this process are never handed out twice.
 */
export async function freePort(udp = false): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const p = await tcpFree(0);
    if (handedOut.has(p)) continue;
    if (udp && !(await udpFree(p))) continue;
    handedOut.add(p);
    return p;
  }
  throw new Error('lab: could not find a free loopback port');
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port; rejects after `timeoutMs`. */
export async function waitForPort(port: number, timeoutMs = 10_000, isDead?: () => string | undefined): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = new Socket();
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => {
        s.destroy();
        resolve(false);
      });
      s.connect(port, '127.0.0.1');
    });
    if (ok) return;
    const dead = isDead?.();
    if (dead) throw new Error(dead);
    if (Date.now() > deadline) throw new Error(`lab: nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
