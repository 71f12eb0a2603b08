/**
 * Benchmark (not run in CI, never asserted): 1000 concurrent GETs through MultilegAgent to the
 * reference server, against the same 1000 through a plain undici Agent to an unauthenticated path
 * of the same server; in session mode and in per-request mode. The server runs in its own process
 * (its own core, as in production), so client and server do not share one event loop. Prints
 * handshakes, wire requests per user request and the wall-time ratio: the median of several
 * interleaved rounds after a warm-up, each round with a new dispatcher (so each pays its handshake).
 *
 *   npm run bench                      BENCH_N=1000 BENCH_ROUNDS=15
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { Agent, Client, type Dispatcher, request } from 'undici';
import { MultilegAgent } from '../src/index.ts';
import { CA_CERT } from '../src/reference-server/index.ts';

const N = Number(process.env.BENCH_N ?? 1000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 15);

interface Server {
  origin: string;
  /** Requests the server has seen so far. */
  requests(): Promise<number>;
  stop(): void;
}

async function startServer(mode: string): Promise<Server> {
  const child = spawn(
    process.execPath,
    [new URL('../src/reference-server/main.ts', import.meta.url).pathname, '--mode', mode],
    {
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  );
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const origin = (await lines.next()).value as string;
  return {
    origin,
    async requests() {
      child.stdin.write('stats\n');
      return (JSON.parse((await lines.next()).value as string) as { requests: number }).requests;
    },
    stop: () => child.kill('SIGTERM'),
  };
}

interface Round {
  ms: number;
  wire: number;
  handshakes: number;
}

type Kind = 'multileg' | 'plain' | 'one-session';

function dispatcherFor(kind: Kind, origin: string): Dispatcher {
  if (kind === 'multileg') {
    return new MultilegAgent({
      credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
      connect: { ca: CA_CERT },
      trustedOrigins: [origin],
    });
  }
  // A plain Agent opens more sessions when one is full; one Client is one session, like an
  // authenticated session of ours (with the same stream limit).
  if (kind === 'plain') return new Agent({ connect: { ca: CA_CERT } });
  return new Client(origin, { connect: { ca: CA_CERT }, allowH2: true, h2Options: { maxConcurrentStreams: 1000 } });
}

async function burst(server: Server, kind: Kind): Promise<Round> {
  const dispatcher = dispatcherFor(kind, server.origin);
  const path = kind === 'multileg' ? '/auth' : '/public';
  const before = await server.requests();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: N }, async (_, i) => {
      const res = await request(`${server.origin}${path}/${i}`, { dispatcher });
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`);
    }),
  );
  const ms = performance.now() - started;
  const handshakes = dispatcher instanceof MultilegAgent ? dispatcher.stats().handshakes : 0;
  await dispatcher.close();
  return { ms, wire: (await server.requests()) - before, handshakes };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function compare(mode: string): Promise<void> {
  const server = await startServer(mode);
  try {
    await burst(server, 'multileg'); // warm-up: JIT, TLS, modules
    await burst(server, 'plain');
    await burst(server, 'one-session');
    const ours: Round[] = [];
    const plain: Round[] = [];
    const one: Round[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      // Interleave so that drift in machine load hits all alike.
      ours.push(await burst(server, 'multileg'));
      plain.push(await burst(server, 'plain'));
      one.push(await burst(server, 'one-session'));
    }
    const o = median(ours.map((r) => r.ms));
    const p = median(plain.map((r) => r.ms));
    const q = median(one.map((r) => r.ms));
    const last = ours.at(-1)!;
    console.log(`\n${mode} mode, ${N} concurrent GETs, median of ${ROUNDS} rounds`);
    console.log(
      `  MultilegAgent: ${o.toFixed(1)} ms, handshakes ${last.handshakes}, wire requests per user request ${(last.wire / N).toFixed(3)}`,
    );
    console.log(
      `  plain Agent:   ${p.toFixed(1)} ms (unauthenticated path), wire requests per user request ${(plain.at(-1)!.wire / N).toFixed(3)}`,
    );
    console.log(`  plain Client:  ${q.toFixed(1)} ms (unauthenticated path, one HTTP/2 session)`);
    console.log(
      `  wall-time ratio: ${(o / p).toFixed(3)} against the Agent, ${(o / q).toFixed(3)} against one session`,
    );
  } finally {
    server.stop();
  }
}

console.log(`node ${process.version}, ${new Date().toISOString()}`);
await compare('session');
await compare('per-request');
