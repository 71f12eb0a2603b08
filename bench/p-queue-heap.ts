/**
 * Benchmark (not run in CI, never asserted): heap bytes per request waiting in a queue, 10,000
 * waiting behind one running task — p-queue against a plain array of waiters, to decide whether
 * p-queue fits R6 (at most 2 KiB per queued request, including everything the request itself needs
 * to wait: its promise, its callbacks, its deadline and its abort hook).
 *
 *   node --expose-gc bench/p-queue-heap.ts          BENCH_N=10000
 */
import PQueue from 'p-queue';

const N = Number(process.env.BENCH_N ?? 10_000);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');

async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    await new Promise((r) => setImmediate(r));
    gc!();
  }
}

/** Heap growth per entry while `fill` keeps N entries waiting; `drain` lets them go. */
async function measure(name: string, fill: () => { drain: () => Promise<void>; keep: unknown }): Promise<number> {
  await settle();
  const before = process.memoryUsage().heapUsed;
  const state = fill();
  await settle();
  const after = process.memoryUsage().heapUsed;
  await state.drain();
  const perEntry = (after - before) / N;
  console.log(`${name.padEnd(58)} ${perEntry.toFixed(0).padStart(6)} B/entry`);
  return perEntry;
}

const work = async () => 1;

/** Baseline: an array of {resolve, reject} waiters, one promise per caller, no deadline. */
function arrayQueue() {
  const waiters: { run: () => Promise<number>; resolve: (v: number) => void; reject: (e: Error) => void }[] = [];
  const promises: Promise<number>[] = [];
  for (let i = 0; i < N; i++) {
    promises.push(new Promise<number>((resolve, reject) => waiters.push({ run: work, resolve, reject })));
  }
  return {
    keep: promises,
    async drain() {
      for (const w of waiters.splice(0)) w.resolve(await w.run());
      await Promise.all(promises);
    },
  };
}

/** p-queue, concurrency 1, the slot held by a task that waits for `release`. */
function pQueue(options: (i: number) => Parameters<PQueue['add']>[1]) {
  const queue = new PQueue({ concurrency: 1 });
  let release!: () => void;
  void queue.add(() => new Promise<void>((r) => (release = r)));
  const promises: Promise<unknown>[] = [];
  for (let i = 0; i < N; i++) promises.push(queue.add(work, options(i)).catch(() => undefined));
  return {
    keep: [queue, promises],
    async drain() {
      release();
      await Promise.all(promises);
    },
  };
}

console.log(`${N} requests waiting behind one running task (p-queue 10, node ${process.version})`);
await measure('array of waiters (baseline: a promise and its callbacks)', arrayQueue);
await measure('p-queue add(fn)', () => pQueue(() => ({})));
const shared = new AbortController();
await measure('p-queue add(fn, {signal}), one shared AbortSignal', () => pQueue(() => ({ signal: shared.signal })));
await measure('p-queue add(fn, {signal}), own AbortController per request', () =>
  pQueue(() => ({ signal: new AbortController().signal })),
);
// p-queue's `timeout` bounds a task's run time, not its wait: a wait deadline needs a signal per waiter.
await measure('p-queue add(fn, {signal: AbortSignal.timeout(60 s)}) per request', () =>
  pQueue(() => ({ signal: AbortSignal.timeout(60_000) })),
);
