/**
 * Benchmark tool (not run in CI, never asserted): bytes of V8 heap allocated and client CPU per
 * request, per-request NTLM inside Negotiate (as bench/per-request.ts: 1000 concurrent GETs through a
 * new MultilegAgent per burst) against a plain undici Agent's GET, in one process, interleaved,
 * against the reference server in its own process. Wall time is left out on purpose: on a shared
 * machine it is noise, and the bytes are nearly deterministic.
 *
 * Bytes allocated in a burst = what the used heap grew by between garbage collections over the
 * burst (`v8.GCProfiler`: each collection's used heap before and after), i.e. allocation, whatever
 * died when. No collection is forced before a burst: after `gc()` a burst allocated
 * ~4 KB a request more and took three times the CPU (recompiling, probably). Only the V8 heap: the backing stores of Buffers past the
 * pool (and typed arrays over 64 bytes) are outside it.
 *
 *   node bench/alloc.ts                  ALLOC_N=1000 ALLOC_ROUNDS=15 (plus 3 warm-up bursts of each)
 *   ALLOC_PROFILE=1 node bench/alloc.ts  instead: V8's sampling heap profiler over multileg's bursts
 *                                        (collected objects included), the top allocation sites and the
 *                                        bytes per request by the nearest frame in src/ on their stack
 *   ALLOC_SITE=NAME ALLOC_TOP=40         with ALLOC_PROFILE: also the stacks of sites whose name holds
 *                                        NAME; how many rows to print (add --no-turbo-inlining to node
 *                                        for sites that are the functions themselves, not their inliners)
 *   ALLOC_MODE=session                   session mode instead (issue 10 goal 1): the reference server in
 *                                        session mode, multileg's GETs on its authenticated HTTP/2 session
 *                                        against one undici Client's (allowH2, one session) to /public;
 *                                        each dispatcher made once and reused, so every measured request
 *                                        runs on an authenticated session (ALLOC_FRESH=1: a new one per
 *                                        burst, as bench/ab.ts, its handshake included)
 *   ALLOC_INTERVAL=512                   with ALLOC_PROFILE: the profiler's mean bytes between samples
 *   ALLOC_KIND=plain                     with ALLOC_PROFILE: profile the comparator (the Agent, or in
 *                                        session mode the Client) instead of multileg
 */
import { Session } from 'node:inspector/promises';
import v8 from 'node:v8';
import { Agent, Client, type Dispatcher, request } from 'undici';
import { MultilegAgent } from '../src/index.ts';
import { CA_CERT } from '../src/reference-server/index.ts';
import { median, startServer } from './server.ts';

const N = Number(process.env.ALLOC_N ?? 1000);
const ROUNDS = Number(process.env.ALLOC_ROUNDS ?? 15);
const PROFILE = process.env.ALLOC_PROFILE === '1';
const SESSION = process.env.ALLOC_MODE === 'session';
const FRESH = !SESSION || process.env.ALLOC_FRESH === '1';

type Kind = 'multileg' | 'plain';
interface Round {
  /** Bytes allocated per request. */
  bytes: number;
  /** Client CPU per request, µs. */
  cpu: number;
  /** Garbage collections in the burst. */
  gcs: number;
}

const server = await startServer(['--mode', SESSION ? 'session' : 'per-request']);

function newDispatcher(kind: Kind): Dispatcher {
  if (kind === 'multileg')
    return new MultilegAgent({
      credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
      connect: { ca: CA_CERT },
      trustedOrigins: [server.origin],
    });
  // Session mode's comparator is one session, as multileg's.
  return SESSION
    ? new Client(server.origin, { connect: { ca: CA_CERT }, allowH2: true })
    : new Agent({ connect: { ca: CA_CERT } });
}

/** Without FRESH, one dispatcher per kind for the whole run (warmed by the warm-up bursts). */
const kept = new Map<Kind, Dispatcher>();
function dispatcherOf(kind: Kind): Dispatcher {
  if (FRESH) return newDispatcher(kind);
  let d = kept.get(kind);
  if (!d) {
    d = newDispatcher(kind);
    kept.set(kind, d);
  }
  return d;
}
const release = async (d: Dispatcher) => {
  if (FRESH) await d.close();
};

async function gets(kind: Kind, dispatcher: Dispatcher): Promise<void> {
  const path = kind === 'multileg' ? '/auth' : '/public';
  await Promise.all(
    Array.from({ length: N }, async (_, i) => {
      const res = await request(`${server.origin}${path}/${i}`, { dispatcher });
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`);
    }),
  );
}

async function burst(kind: Kind): Promise<Round> {
  const profiler = new v8.GCProfiler();
  profiler.start();
  const usedBefore = v8.getHeapStatistics().used_heap_size;
  const cpu = process.cpuUsage();
  const dispatcher = dispatcherOf(kind);
  await gets(kind, dispatcher);
  const used = process.cpuUsage(cpu);
  const usedAfter = v8.getHeapStatistics().used_heap_size;
  const stats = profiler.stop()?.statistics ?? [];
  await release(dispatcher);
  // What the heap grew by between collections: allocation alone, whatever died when.
  let bytes = 0;
  let from = usedBefore;
  for (const s of stats) {
    bytes += s.beforeGC.heapStatistics.usedHeapSize - from;
    from = s.afterGC.heapStatistics.usedHeapSize;
  }
  bytes += usedAfter - from;
  return { bytes: bytes / N, cpu: (used.user + used.system) / N, gcs: stats.length };
}

interface ProfileNode {
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  selfSize: number;
  children: ProfileNode[];
}

/** Sampling heap profile of multileg's bursts: top sites, and bytes by the nearest src/ frame. */
async function profile(): Promise<void> {
  const kind: Kind = process.env.ALLOC_KIND === 'plain' ? 'plain' : 'multileg';
  for (let i = 0; i < 3; i++) {
    const d = dispatcherOf(kind);
    await gets(kind, d);
    await release(d);
  }
  const session = new Session();
  session.connect();
  await session.post('HeapProfiler.startSampling', {
    samplingInterval: Number(process.env.ALLOC_INTERVAL ?? 512),
    includeObjectsCollectedByMajorGC: true,
    includeObjectsCollectedByMinorGC: true,
  });
  for (let i = 0; i < ROUNDS; i++) {
    const d = dispatcherOf(kind);
    await gets(kind, d);
    await release(d);
  }
  const { profile } = (await session.post('HeapProfiler.stopSampling')) as { profile: { head: ProfileNode } };
  session.disconnect();
  const requests = N * ROUNDS;
  const bySite = new Map<string, number>();
  const byOurs = new Map<string, number>();
  let total = 0;
  const short = (url: string) => url.replace(/^.*\/(src|node_modules)\//, '$1/').replace(/^node:/, 'node:');
  const stacks = new Map<string, number>();
  const site = process.env.ALLOC_SITE;
  const walk = (node: ProfileNode, ours: string | undefined, path: string[] = []) => {
    const f = node.callFrame;
    const here = `${f.functionName || '(anonymous)'} ${short(f.url)}:${f.lineNumber + 1}`;
    const nearest = f.url.includes('/src/') ? here : ours;
    const stack = [...path, here];
    if (node.selfSize > 0 && site && here.includes(site)) {
      const key = stack.slice(-8).join('\n      < ');
      stacks.set(key, (stacks.get(key) ?? 0) + node.selfSize);
    }
    if (node.selfSize > 0) {
      total += node.selfSize;
      bySite.set(here, (bySite.get(here) ?? 0) + node.selfSize);
      const key = nearest ?? '(no src/ frame)';
      byOurs.set(key, (byOurs.get(key) ?? 0) + node.selfSize);
    }
    for (const child of node.children) walk(child, nearest, stack);
  };
  walk(profile.head, undefined);
  const print = (title: string, m: Map<string, number>) => {
    console.log(`\n${title}`);
    for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.ALLOC_TOP ?? 40)))
      console.log(`  ${(v / requests).toFixed(0).padStart(6)} B  ${k}`);
  };
  console.log(`${kind}: sampled ${(total / requests).toFixed(0)} B per request over ${ROUNDS} bursts of ${N}`);
  print('allocation sites (self), per request', bySite);
  print('by the nearest src/ frame on the stack, per request', byOurs);
  if (site)
    print(
      `stacks of ${site} (innermost first)`,
      new Map([...stacks].map(([k, v]) => [k.split('\n      < ').reverse().join('\n      < '), v])),
    );
}

try {
  if (PROFILE) await profile();
  else {
    const kinds: Kind[] = ['multileg', 'plain'];
    for (let i = 0; i < 3; i++) for (const kind of kinds) await burst(kind);
    const rounds = new Map<Kind, Round[]>(kinds.map((k) => [k, []]));
    for (let i = 0; i < ROUNDS; i++)
      for (const kind of i % 2 === 0 ? kinds : [...kinds].reverse()) rounds.get(kind)!.push(await burst(kind));
    const of = (kind: Kind, f: keyof Round) => median(rounds.get(kind)!.map((r) => r[f]));
    const spread = (kind: Kind, f: keyof Round) => {
      const xs = rounds.get(kind)!.map((r) => r[f]);
      return `${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)}`;
    };
    console.log(
      `node ${process.version}, ${new Date().toISOString()}, load ${(await import('node:os'))
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(' ')}`,
    );
    console.log(
      SESSION
        ? `session mode (NTLM), ${N} concurrent GETs, ${FRESH ? 'a new dispatcher per burst' : 'one dispatcher reused (an authenticated session)'}; plain = one undici Client; medians of ${ROUNDS} interleaved rounds`
        : `per-request NTLM inside Negotiate, ${N} concurrent GETs, medians of ${ROUNDS} interleaved rounds`,
    );
    for (const kind of kinds)
      console.log(
        `  ${kind.padEnd(9)} ${of(kind, 'bytes').toFixed(0)} B/request (${spread(kind, 'bytes')}), client CPU ${of(kind, 'cpu').toFixed(1)} µs/request (${spread(kind, 'cpu')}), ${of(kind, 'gcs')} GCs`,
      );
    const ratio = (f: keyof Round) =>
      median(rounds.get('multileg')!.map((r, i) => r[f] / rounds.get('plain')![i]![f])).toFixed(3);
    console.log(`  multileg / plain per round: bytes ${ratio('bytes')}, CPU ${ratio('cpu')}`);
  }
} finally {
  for (const d of kept.values()) await d.close();
  server.stop();
}
