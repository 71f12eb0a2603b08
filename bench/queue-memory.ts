/**
 * R6: heap per request queued behind a slow handshake, and the time to settle the queue once the
 * handshake ends. 10,000 requests are dispatched while the leader's NTLM handshake is held by the
 * reference server; the heap is measured (after GC) before and while they wait. The callers'
 * own objects (dispatch options, handlers) are created before the first measurement, so the
 * figure is the agent's own cost per waiting request.
 *
 *   node --expose-gc bench/queue-memory.ts        (npm run bench runs it)
 */
import type { Dispatcher } from 'undici';
import { MultilegAgent } from '../src/index.ts';
import { startReferenceServer } from '../src/reference-server/index.ts';

const QUEUED = 10_000;
const HOLD_MS = 3000;

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) {
  console.error('run with node --expose-gc');
  process.exit(2);
}
const heap = (): number => {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
};

const server = await startReferenceServer({
  mode: 'session',
  schemes: ['NTLM'],
  record: false,
  // Hold the leader's AUTHENTICATE (the only leg with a type-3 message) so the queue forms behind it.
  faults: { delayMs: (q) => (String(q.headers.authorization ?? '').startsWith('NTLM TlRMTVNTUAADAAAA') ? HOLD_MS : 0) },
});
const agent = new MultilegAgent({
  credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
  trustedOrigins: [server.origin],
  connect: { ca: server.ca },
  negotiate: false,
  limits: { maxQueue: QUEUED + 10, queueTimeout: 120_000 },
});

let settled = 0;
let lastSettled = 0;
let allSettled!: () => void;
const done = new Promise<void>((resolve) => {
  allSettled = resolve;
});
const handler = (): Dispatcher.DispatchHandler => ({
  onRequestStart() {},
  onResponseStart() {},
  onResponseData() {},
  onResponseEnd() {
    settled += 1;
    lastSettled = performance.now();
    if (settled === QUEUED + 1) allSettled();
  },
  onResponseError(_c, err) {
    console.error('request failed:', err.message);
    settled += 1;
    if (settled === QUEUED + 1) allSettled();
  },
});
const requests = Array.from({ length: QUEUED }, (_, i) => ({
  opts: { origin: server.origin, path: `/auth/q${i}`, method: 'GET' } as Dispatcher.DispatchOptions,
  handler: handler(),
}));

// The leader: its handshake starts and is held at the AUTHENTICATE leg.
agent.dispatch({ origin: server.origin, path: '/auth/leader', method: 'GET' }, handler());
let handshakeEnded = 0;
agent.onHandshake(() => {
  handshakeEnded = performance.now();
});
await new Promise((r) => setTimeout(r, 300));

const before = heap();
for (const r of requests) agent.dispatch(r.opts, r.handler);
await new Promise((r) => setTimeout(r, 500)); // every request has reached its wait
const during = heap();
const perRequest = (during - before) / QUEUED;

await done;
const settleMs = lastSettled - handshakeEnded;
console.log(
  `R6: ${QUEUED} requests queued behind one handshake: ${Math.round(perRequest)} bytes of heap per queued request (goal <= 2048)`,
);
console.log(`R6: the queue settled ${settleMs.toFixed(0)} ms after the handshake ended (${settled} responses)`);
await agent.close();
await server.close();
