/**
 * Benchmark (not run in CI, never asserted): 1000 concurrent GETs through MultilegAgent to the
 * reference server, against the same 1000 through a plain undici Agent to an unauthenticated path
 * of the same server; in session mode and in per-request mode. The server runs in its own process
 * (its own core, as in production), so client and server do not share one event loop. Prints
 * handshakes, wire requests per user request and the wall-time ratio: the median of several
 * interleaved rounds after a warm-up, each round with a new dispatcher (so each pays its handshake).
 *
 * Session mode also runs an agent with `limits.maxAuthenticatedSessions` (BENCH_SESSIONS, default 2):
 * more than one authenticated session when the first is full, as the plain Agent opens more; and
 * the floor under one session with one NTLM handshake: the plain Client after the two round trips
 * of the handshake's legs before the one that carries a request, with no authentication work.
 *
 *   npm run bench                      BENCH_N=1000 BENCH_ROUNDS=15 BENCH_SESSIONS=2
 */
import { Agent, Client, type Dispatcher, request } from 'undici';
import { MultilegAgent } from '../src/index.ts';
import { CA_CERT } from '../src/reference-server/index.ts';
import { median, type BenchServer as Server, startServer } from './server.ts';

const N = Number(process.env.BENCH_N ?? 1000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 15);
const SESSIONS = Number(process.env.BENCH_SESSIONS ?? 2);

interface Round {
  ms: number;
  wire: number;
  handshakes: number;
}

type Kind = 'multileg' | 'multileg-sessions' | 'plain' | 'one-session' | 'one-session-floor';

function dispatcherFor(kind: Kind, origin: string): Dispatcher {
  if (kind === 'multileg' || kind === 'multileg-sessions') {
    return new MultilegAgent({
      credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
      connect: { ca: CA_CERT },
      trustedOrigins: [origin],
      ...(kind === 'multileg-sessions' ? { limits: { maxAuthenticatedSessions: SESSIONS } } : {}),
    });
  }
  // A plain Agent opens more sessions when one is full (100 streams each); one Client is one
  // session, like an authenticated session of ours (the same 100 streams, undici's default).
  if (kind === 'plain') return new Agent({ connect: { ca: CA_CERT } });
  return new Client(origin, { connect: { ca: CA_CERT }, allowH2: true });
}

async function burst(server: Server, kind: Kind): Promise<Round> {
  const dispatcher = dispatcherFor(kind, server.origin);
  const path = kind.startsWith('multileg') ? '/auth' : '/public';
  const before = await server.requests();
  const started = performance.now();
  if (kind === 'one-session-floor') {
    // An NTLM handshake's two legs before the one that carries a request, with no authentication
    // work: one session that authenticates once cannot start its burst sooner.
    for (let i = 0; i < 2; i++) await (await request(`${server.origin}${path}/leg`, { dispatcher })).body.dump();
  }
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

async function compare(mode: string): Promise<void> {
  const server = await startServer(['--mode', mode]);
  // Several sessions only matter where one session authenticates them all.
  const kinds: Kind[] =
    mode === 'session'
      ? ['multileg', 'multileg-sessions', 'plain', 'one-session', 'one-session-floor']
      : ['multileg', 'plain', 'one-session'];
  try {
    for (const kind of kinds) await burst(server, kind); // warm-up: JIT, TLS, modules
    const rounds = new Map<Kind, Round[]>(kinds.map((k) => [k, []]));
    for (let i = 0; i < ROUNDS; i++) {
      // Interleave so that drift in machine load hits all alike.
      for (const kind of kinds) rounds.get(kind)!.push(await burst(server, kind));
    }
    const ms = (kind: Kind) => median(rounds.get(kind)!.map((r) => r.ms));
    const p = ms('plain');
    const q = ms('one-session');
    console.log(`\n${mode} mode, ${N} concurrent GETs, median of ${ROUNDS} rounds`);
    for (const kind of kinds.filter((k) => k.startsWith('multileg'))) {
      const o = ms(kind);
      const last = rounds.get(kind)!.at(-1)!;
      const name = kind === 'multileg' ? 'MultilegAgent' : `MultilegAgent, maxAuthenticatedSessions ${SESSIONS}`;
      console.log(
        `  ${name}: ${o.toFixed(1)} ms, handshakes ${last.handshakes}, wire requests per user request ${(last.wire / N).toFixed(3)}; ratio ${(o / p).toFixed(3)} against the Agent, ${(o / q).toFixed(3)} against one session`,
      );
    }
    console.log(
      `  plain Agent:   ${p.toFixed(1)} ms (unauthenticated path), wire requests per user request ${(rounds.get('plain')!.at(-1)!.wire / N).toFixed(3)}`,
    );
    console.log(`  plain Client:  ${q.toFixed(1)} ms (unauthenticated path, one HTTP/2 session)`);
    if (kinds.includes('one-session-floor')) {
      const f = ms('one-session-floor');
      console.log(
        `  floor for one session and one handshake: ${f.toFixed(1)} ms (the plain Client after two round trips, no authentication work); ratio ${(f / p).toFixed(3)} against the Agent`,
      );
    }
  } finally {
    server.stop();
  }
}

console.log(`node ${process.version}, ${new Date().toISOString()}`);
await compare('session');
await compare('per-request');
