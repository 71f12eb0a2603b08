/**
 * Benchmark (not run in CI, never asserted): a slow 10 MB upload (160 pieces of 64 KiB, one every
 * 5 ms) to the reference server (its own process, bench/upload-server.ts, which tells when the first
 * bytes arrive),
 * through a MultilegAgent on its authenticated session, and through a plain undici Agent to an
 * unauthenticated path. Prints the time from the request to the server's first body bytes, the
 * whole upload's time, and the peak growth of the client's live memory (heap + array buffers, sampled
 * after a collection every 10 ms) during it.
 *
 *   node --expose-gc bench/upload.ts
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { Agent, type Dispatcher, request } from 'undici';
import { MultilegAgent } from '../src/index.ts';

const PIECE = 64 * 1024;
const PIECES = 160;
const EVERY_MS = 5;

function slowBody(): Readable {
  return Readable.from(
    (async function* () {
      for (let i = 0; i < PIECES; i++) {
        await new Promise((resolve) => setTimeout(resolve, EVERY_MS));
        yield Buffer.alloc(PIECE, i);
      }
    })(),
  );
}

const used = () => {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
};

const child = fork(new URL('./upload-server.ts', import.meta.url).pathname);
const [server] = (await once(child, 'message')) as [{ origin: string; ca: string }];
/** When the server saw each path's first body bytes (epoch ms, from the server's process). */
const firstBytes = new Map<string, number>();
child.on('message', (m: { path?: string; at?: number }) => {
  if (m.path && m.at) firstBytes.set(m.path, m.at);
});
try {
  const contenders: Array<[string, Dispatcher, string]> = [
    [
      'MultilegAgent (authenticated session)',
      new MultilegAgent({
        credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
        connect: { ca: server.ca },
        trustedOrigins: [server.origin],
      }),
      '/auth',
    ],
    ['plain undici Agent (unauthenticated path)', new Agent({ connect: { ca: server.ca } }), '/public'],
  ];
  console.log(`\nslow upload: ${(PIECE * PIECES) / 1e6} MB in ${PIECES} pieces, one every ${EVERY_MS} ms`);
  console.log('| client | first body bytes at the server | whole upload | peak memory growth |');
  console.log('|---|---:|---:|---:|');
  for (const [name, dispatcher, prefix] of contenders) {
    // Authenticate (and warm up) first: the upload then goes on the authenticated session.
    await (await request(`${server.origin}${prefix}/warm`, { dispatcher })).body.dump();
    (globalThis as { gc?: () => void }).gc?.();
    const base = used();
    let peak = base;
    // Live memory, not garbage waiting for a collection: collect before each sample.
    const sampler = setInterval(() => {
      (globalThis as { gc?: () => void }).gc?.();
      peak = Math.max(peak, used());
    }, 10);
    const path = `${prefix}/upload`;
    const started = performance.now();
    const res = await request(`${server.origin}${path}`, { dispatcher, method: 'POST', body: slowBody() });
    const { bodyLength } = (await res.body.json()) as { bodyLength: number };
    const total = performance.now() - started;
    clearInterval(sampler);
    const firstAt = (firstBytes.get(path) ?? Number.NaN) - (performance.timeOrigin + started);
    if (res.statusCode !== 200 || bodyLength !== PIECE * PIECES)
      throw new Error(`${name}: ${res.statusCode} ${bodyLength}`);
    console.log(
      `| ${name} | ${firstAt.toFixed(1)} ms | ${total.toFixed(0)} ms | ${((peak - base) / 1e6).toFixed(1)} MB |`,
    );
    await dispatcher.close();
  }
} finally {
  child.disconnect();
}
