/**
 * Benchmark (not run in CI, never asserted): what the agent's `cookies` option costs on an
 * authenticated session. Three agents, each authenticated once (NTLM, session mode, the reference
 * server in its own process): no jar, a jar that never has a cookie, and the CLI's cookie engine
 * (tough-cookie) holding one cookie for the origin. Each round sends a burst of 1000 concurrent GETs
 * through each agent in turn; prints the median client CPU (user + system, `process.cpuUsage()`)
 * per burst over the rounds.
 *
 *   node bench/cookies.ts               BENCH_N=1000 BENCH_ROUNDS=15
 */
import { request } from 'undici';
import { CookieEngine } from '../src/cli/cookies.ts';
import { type CookieStore, MultilegAgent } from '../src/index.ts';
import { CA_CERT } from '../src/reference-server/index.ts';
import { median, startServer } from './server.ts';

const N = Number(process.env.BENCH_N ?? 1000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 15);

const server = await startServer(['--mode', 'session']);
const jars: Record<string, () => CookieStore | undefined> = {
  'no jar': () => undefined,
  'empty jar': () => ({ cookieHeader: () => undefined, setCookies: () => {} }),
  'tough-cookie, 1 cookie': () => {
    const engine = new CookieEngine();
    engine.setCookies(`${server.origin}/`, ['lb=node1; Path=/']);
    return engine;
  },
};
const agents = new Map(
  Object.entries(jars).map(([name, jar]) => {
    const cookies = jar();
    const agent = new MultilegAgent({
      credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
      connect: { ca: CA_CERT },
      trustedOrigins: [server.origin],
      ...(cookies ? { cookies } : {}),
    });
    return [name, agent];
  }),
);

async function burst(agent: MultilegAgent): Promise<number> {
  const before = process.cpuUsage();
  await Promise.all(
    Array.from({ length: N }, async (_, i) => {
      const res = await request(`${server.origin}/auth/${i}`, { dispatcher: agent });
      await res.body.dump();
    }),
  );
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 1000;
}

// Warm-up: each agent's handshake, and the JIT.
for (const agent of agents.values()) for (let i = 0; i < 3; i++) await burst(agent);
const cpu = new Map([...agents.keys()].map((name) => [name, [] as number[]]));
for (let round = 0; round < ROUNDS; round++)
  for (const [name, agent] of agents) cpu.get(name)!.push(await burst(agent));
for (const [name, xs] of cpu) console.log(`${name.padEnd(24)} ${median(xs).toFixed(1)} ms CPU per burst of ${N}`);
for (const agent of agents.values()) await agent.destroy();
server.stop();
