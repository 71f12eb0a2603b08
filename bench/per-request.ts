/**
 * Benchmark (not run in CI, never asserted): per-request mode's cost on each side. 1000 concurrent
 * GETs per round, each its own two-leg NTLM-inside-Negotiate handshake, through a new MultilegAgent;
 * against a plain undici Agent doing one GET per request, and the same Agent doing two GETs per
 * request in sequence with an Authorization header of the AUTHENTICATE's size (the two-leg floor:
 * what two undici requests cost with no authentication work). Prints medians of wall time, client
 * CPU (this process) and server CPU (the reference server's own process), and the ratios per round.
 *
 *   node bench/per-request.ts          BENCH_N=1000 BENCH_ROUNDS=20
 *   BENCH_KINDS=multileg               only these contenders (comma-separated; e.g. for a CPU profile)
 *   BENCH_SESSIONS=16                  the agent's limits.maxPerRequestSessions (default: the agent's, 8)
 */
import { readFileSync } from 'node:fs';
import { Agent, type Dispatcher, request } from 'undici';
import { MultilegAgent } from '../src/index.ts';
import { CA_CERT } from '../src/reference-server/index.ts';
import { median, startServer } from './server.ts';

const N = Number(process.env.BENCH_N ?? 1000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 20);
const SESSIONS = process.env.BENCH_SESSIONS ? Number(process.env.BENCH_SESSIONS) : undefined;
// `Negotiate ` and a base64 AUTHENTICATE with channel bindings and target name: about 560 characters.
const AUTHORIZATION = `Negotiate ${'A'.repeat(560)}`;

type Kind = 'multileg' | 'plain' | 'two plain';
interface Round {
  ms: number;
  cpu: number;
  serverCpu: number;
}

const server = await startServer(['--mode', 'per-request']);

/** CPU time (ms) the server process has used so far, from /proc (Linux); 0 elsewhere. */
function serverCpu(): number {
  try {
    const fields = readFileSync(`/proc/${server.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
  } catch {
    return 0;
  }
}

async function burst(kind: Kind): Promise<Round> {
  const dispatcher: Dispatcher =
    kind === 'multileg'
      ? new MultilegAgent({
          credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
          connect: { ca: CA_CERT },
          trustedOrigins: [server.origin],
          ...(SESSIONS ? { limits: { maxPerRequestSessions: SESSIONS } } : {}),
        })
      : new Agent({ connect: { ca: CA_CERT } });
  const path = kind === 'multileg' ? '/auth' : '/public';
  const headers = kind === 'two plain' ? { authorization: AUTHORIZATION } : {};
  const cpu = process.cpuUsage();
  const serverBefore = serverCpu();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: N }, async (_, i) => {
      if (kind === 'two plain')
        await (await request(`${server.origin}${path}/${i}`, { dispatcher, headers })).body.dump();
      const res = await request(`${server.origin}${path}/${i}`, { dispatcher, headers });
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`);
    }),
  );
  const ms = performance.now() - started;
  const used = process.cpuUsage(cpu);
  const round = { ms, cpu: (used.user + used.system) / 1000, serverCpu: serverCpu() - serverBefore };
  await dispatcher.close();
  return round;
}

try {
  const all: Kind[] = ['multileg', 'plain', 'two plain'];
  const kinds = process.env.BENCH_KINDS ? all.filter((k) => process.env.BENCH_KINDS!.split(',').includes(k)) : all;
  for (const kind of kinds) await burst(kind); // warm-up: JIT, TLS, modules
  const rounds = new Map<Kind, Round[]>(kinds.map((k) => [k, []]));
  for (let i = 0; i < ROUNDS; i++) {
    // Interleaved, the order reversed every other round, so that drift in machine load hits all alike.
    for (const kind of i % 2 === 0 ? kinds : [...kinds].reverse()) rounds.get(kind)!.push(await burst(kind));
  }
  const of = (kind: Kind, f: keyof Round) => median(rounds.get(kind)!.map((r) => r[f]));
  const perRound = (kind: Kind, f: keyof Round) =>
    rounds.has('plain') ? median(rounds.get(kind)!.map((r, i) => r[f] / rounds.get('plain')![i]![f])) : Number.NaN;
  console.log(`node ${process.version}, ${new Date().toISOString()}`);
  console.log(`\nper-request mode, ${N} concurrent GETs, median of ${ROUNDS} rounds`);
  for (const kind of kinds) {
    const cpu = `client CPU ${of(kind, 'cpu').toFixed(1)} ms, server CPU ${of(kind, 'serverCpu').toFixed(0)} ms`;
    const vs =
      kind === 'plain'
        ? ''
        : ` (per round against plain: wall ${perRound(kind, 'ms').toFixed(3)}, client CPU ${perRound(kind, 'cpu').toFixed(3)})`;
    console.log(`  ${kind.padEnd(10)} ${of(kind, 'ms').toFixed(1)} ms, ${cpu}${vs}`);
  }
} finally {
  server.stop();
}
