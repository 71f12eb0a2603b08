/**
 * Benchmark (not run in CI, never asserted): 1000 concurrent GETs through MultilegAgent to the
 * reference server, against the same 1000 through a plain undici Agent to an unauthenticated path
 * of the same server; in session mode and in per-request mode. Prints handshakes, wire requests per
 * user request and the wall-time ratio; the median of several rounds after a warm-up.
 *
 *   npm run bench
 */
import { Agent, request } from 'undici';
import { MultilegAgent } from '../src/index.ts';
import { type ReferenceServerMode, startReferenceServer } from '../src/reference-server/index.ts';

const N = Number(process.env.BENCH_N ?? 1000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 7);

interface Round {
  ms: number;
  wire: number;
  handshakes: number;
  sessions: number;
}

async function burst(mode: ReferenceServerMode, kind: 'multileg' | 'plain'): Promise<Round> {
  let wire = 0;
  const server = await startReferenceServer({
    mode,
    schemes: ['Negotiate', 'NTLM'],
    record: false,
    onExchange: () => wire++,
  });
  const dispatcher =
    kind === 'multileg'
      ? new MultilegAgent({
          credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
          connect: { ca: server.ca },
        })
      : new Agent({ connect: { ca: server.ca } });
  const path = kind === 'multileg' ? '/auth' : '/public';
  const started = performance.now();
  await Promise.all(
    Array.from({ length: N }, async (_, i) => {
      const res = await request(`${server.origin}${path}/${i}`, { dispatcher });
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`);
    }),
  );
  const ms = performance.now() - started;
  const stats = dispatcher instanceof MultilegAgent ? dispatcher.stats() : undefined;
  const sessions = server.stats.sessions;
  await dispatcher.close();
  await server.close();
  return { ms, wire, handshakes: stats?.handshakes ?? 0, sessions };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function compare(mode: ReferenceServerMode): Promise<void> {
  await burst(mode, 'multileg'); // warm-up: JIT, TLS, modules
  await burst(mode, 'plain');
  const ours: Round[] = [];
  const plain: Round[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    // Interleave so that drift in machine load hits both alike.
    ours.push(await burst(mode, 'multileg'));
    plain.push(await burst(mode, 'plain'));
  }
  const o = median(ours.map((r) => r.ms));
  const p = median(plain.map((r) => r.ms));
  const last = ours.at(-1)!;
  console.log(`\n${mode} mode, ${N} concurrent GETs, median of ${ROUNDS} rounds`);
  console.log(
    `  MultilegAgent: ${o.toFixed(1)} ms, handshakes ${last.handshakes}, sessions ${last.sessions}, wire/user ${(last.wire / N).toFixed(3)}`,
  );
  console.log(`  plain Agent:   ${p.toFixed(1)} ms (unauthenticated path), sessions ${plain.at(-1)!.sessions}`);
  console.log(`  wall-time ratio: ${(o / p).toFixed(3)}`);
}

console.log(`node ${process.version}, ${new Date().toISOString()}`);
await compare('session');
await compare('per-request');
