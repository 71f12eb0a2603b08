/**
 * Benchmark (not run in CI, never asserted): a mixed workload at one origin with two protection
 * spaces — real Apache (the lab of test/lab, on loopback) with NTLM at `/ntlm` (mod_auth_gssapi +
 * gss-ntlmssp, connection-bound) and Basic at `/basic` (mod_auth_basic), and `/public` open.
 * COUNT user requests over HTTP/1.1, IN_FLIGHT at once, cycling /basic/, /ntlm/, /basic/, /ntlm/,
 * /public/. Counted from Apache's logs: wire requests per user request (per path and overall),
 * Basic credentials sent to a path outside /basic/ (S1), and Apache's AH01614 "client used wrong
 * authentication scheme" lines.
 *
 *   node bench/protection-space.ts          BENCH_SPACE_COUNT=500 BENCH_SPACE_IN_FLIGHT=4
 */
import { readFileSync } from 'node:fs';
import { request } from 'undici';
import { MultilegAgent } from '../src/index.ts';
import { BASIC_USER, startLab } from '../test/lab/index.ts';

const COUNT = Number(process.env.BENCH_SPACE_COUNT ?? 500);
const IN_FLIGHT = Number(process.env.BENCH_SPACE_IN_FLIGHT ?? 4);
const PATHS = ['/basic/', '/ntlm/', '/basic/', '/ntlm/', '/public/'];

const lab = await startLab({ apache: true });
const apache = lab.apache!;
try {
  const agent = new MultilegAgent({
    connect: { ca: apache.ca },
    credentials: { ...BASIC_USER, domain: 'EXAMPLE' },
    negotiate: false,
    schemes: ['NTLM', 'Basic'],
    trustedOrigins: [apache.origin],
    maxHttp1Connections: IN_FLIGHT,
  });
  const wrongBefore = readFileSync(apache.errorLog, 'utf8').split('AH01614').length - 1;
  let next = 0;
  const cpu = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (next < COUNT) {
        const i = next++;
        const res = await request(`${apache.origin}${PATHS[i % PATHS.length]}?mix=${i}`, {
          dispatcher: agent,
          allowH2: false,
        } as never);
        await res.body.dump();
        if (res.statusCode !== 200) throw new Error(`${PATHS[i % PATHS.length]}: ${res.statusCode}`);
      }
    }),
  );
  const ms = performance.now() - t0;
  const { user, system } = process.cpuUsage(cpu);
  await agent.close();
  // Log lines are written when a request ends: allow the last ones their write.
  await new Promise((r) => setTimeout(r, 300));
  const lines = readFileSync(apache.accessLog, 'utf8')
    .split('\n')
    .filter((l) => l.includes('?mix='));
  const wrong = readFileSync(apache.errorLog, 'utf8').split('AH01614').length - 1 - wrongBefore;
  const users = (p: string) => Array.from({ length: COUNT }, (_, i) => PATHS[i % PATHS.length]).filter((x) => x === p);
  console.log(`${COUNT} user requests, ${IN_FLIGHT} in flight, HTTP/1.1, ${ms.toFixed(0)} ms wall`);
  console.log(`client CPU ${((user + system) / 1000).toFixed(0)} ms`);
  for (const p of new Set(PATHS)) {
    const wire = lines.filter((l) => l.includes(`"GET ${p}?`));
    const basicOutside = p === '/basic/' ? 0 : wire.filter((l) => l.endsWith('scheme=Basic')).length;
    console.log(
      `${p.padEnd(8)} ${(wire.length / users(p).length).toFixed(3)} wire/user (${wire.length}/${users(p).length}), Basic sent here: ${p === '/basic/' ? '-' : basicOutside}`,
    );
  }
  console.log(`all      ${(lines.length / COUNT).toFixed(3)} wire/user; AH01614 lines: ${wrong}`);
} finally {
  await lab.stop();
}
