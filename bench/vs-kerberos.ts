/**
 * Benchmark (not run in CI, never asserted): Kerberos against real Apache (mod_auth_gssapi, MIT
 * KDC; the lab of test/lab, started here on loopback). Apache authenticates Negotiate per request.
 * Contenders: multileg; undici's `fetch` (what Node's fetch is) with an `Authorization: Negotiate`
 * header made per request with the `kerberos` addon — the recipe people write by hand; and
 * `curl --negotiate` for the same URLs (one curl process, its connection reused). Reference row: a
 * plain undici Agent fetching the same file from `/public` (no authentication) on the same Apache,
 * and the floor for any undici client: the same Agent sending tokens made before its clock starts
 * (undici plus the server's own Kerberos work, no client Kerberos work at all). Workloads:
 * COUNT GETs one after another, and COUNT with 50 in flight. Wall time (median of ROUNDS) and wire
 * requests per user request (Apache's access log).
 *
 *   node bench/vs-kerberos.ts          BENCH_KRB_COUNT=200 BENCH_ROUNDS=5
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import kerberos from 'kerberos';
import { Agent, fetch } from 'undici';
import { MultilegAgent } from '../src/index.ts';
import { startLab } from '../test/lab/index.ts';
import { median } from './server.ts';

const COUNT = Number(process.env.BENCH_KRB_COUNT ?? 200);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const PATH = '/protected/index.html';
/** The same file behind no authentication: what undici alone costs against this Apache. */
const PUBLIC_PATH = '/public/index.html';
const PLAIN = 'undici Agent, no auth (/public)';
const FLOOR = 'undici Agent + tokens made beforehand';
/** The floor contender's own time (its tokens are made before its clock starts). */
let floorTime = 0;

const lab = await startLab({ apache: true });
// alice's ticket cache for every contender (curl gets the same env).
const restoreEnv = lab.applyEnv({ NTLM_USER_FILE: undefined });
const apache = lab.apache!;
const wireSoFar = (path: string) =>
  readFileSync(apache.accessLog, 'utf8')
    .split('\n')
    .filter((l) => l.includes(path)).length;

/** Runs `count` GETs, `parallel` at a time; resolves with the number that were not 200. */
type Contender = (urls: readonly string[], parallel: number) => Promise<number>;

/** Why requests failed, per client and reason (the evidence where one cannot authenticate). */
const failures = new Map<string, number>();
function noteFailure(client: string, why: string): void {
  const key = `${client}: ${why}`;
  failures.set(key, (failures.get(key) ?? 0) + 1);
}

async function pool(client: string, urls: readonly string[], parallel: number, get: (url: string) => Promise<number>) {
  let next = 0;
  let failed = 0;
  const worker = async () => {
    while (next < urls.length) {
      const status = await get(urls[next++]!).catch((err: Error) => {
        noteFailure(client, err.message);
        return 0;
      });
      if (status === 200) continue;
      failed += 1;
      if (status) noteFailure(client, `status ${status}`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, urls.length) }, worker));
  return failed;
}

const contenders: Record<string, Contender> = {
  async multileg(urls, parallel) {
    const agent = new MultilegAgent({ connect: { ca: apache.ca }, trustedOrigins: [apache.origin] });
    try {
      return await pool('multileg', urls, parallel, async (url) => {
        const res = await fetch(url, { dispatcher: agent });
        await res.arrayBuffer();
        return res.status;
      });
    } finally {
      await agent.close();
    }
  },
  async 'fetch + kerberos'(urls, parallel) {
    const dispatcher = new Agent({ connect: { ca: apache.ca } });
    try {
      return await pool('fetch + kerberos', urls, parallel, async (url) => {
        const client = await kerberos.initializeClient('HTTP@localhost', { mechOID: kerberos.GSS_MECH_OID_SPNEGO });
        const token = await client.step('');
        const res = await fetch(url, { dispatcher, headers: { authorization: `Negotiate ${token}` } });
        await res.arrayBuffer();
        return res.status;
      });
    } finally {
      await dispatcher.close();
    }
  },
  async [FLOOR](urls, parallel) {
    // Tokens made before the clock starts: what is left is undici plus the server's Kerberos work.
    const tokens: string[] = [];
    for (const _ of urls) {
      const client = await kerberos.initializeClient('HTTP@localhost', { mechOID: kerberos.GSS_MECH_OID_SPNEGO });
      tokens.push(await client.step(''));
    }
    const dispatcher = new Agent({ connect: { ca: apache.ca } });
    const started = performance.now();
    try {
      return await pool(FLOOR, urls, parallel, async (url) => {
        const res = await fetch(url, { dispatcher, headers: { authorization: `Negotiate ${tokens.pop()}` } });
        await res.arrayBuffer();
        return res.status;
      });
    } finally {
      floorTime = performance.now() - started;
      await dispatcher.close();
    }
  },
  async [PLAIN](urls, parallel) {
    const dispatcher = new Agent({ connect: { ca: apache.ca } });
    try {
      return await pool(PLAIN, urls, parallel, async (url) => {
        const res = await fetch(url.replace(PATH, PUBLIC_PATH), { dispatcher });
        await res.arrayBuffer();
        return res.status;
      });
    } finally {
      await dispatcher.close();
    }
  },
  async 'curl --negotiate'(urls, parallel) {
    const args = [
      '-s',
      '--negotiate',
      '-u',
      ':',
      '--cacert',
      apache.certFile,
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}\\n',
    ];
    if (parallel > 1) args.push('--parallel', '--parallel-max', String(parallel));
    const out = await new Promise<string>((resolve, reject) => {
      // `-o` belongs to one URL each.
      const child = spawn('curl', [...args, ...urls.flatMap((u) => ['-o', '/dev/null', u])], {
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      let text = '';
      child.stdout.on('data', (d: Buffer) => {
        text += d.toString();
      });
      child.on('error', reject);
      child.on('close', () => resolve(text));
    });
    const statuses = out.split('\n').filter(Boolean);
    for (const status of statuses) if (status !== '200') noteFailure('curl --negotiate', `status ${status}`);
    return urls.length - statuses.filter((s) => s === '200').length;
  },
};

console.log(
  `node ${process.version}, ${new Date().toISOString()}, Apache + mod_auth_gssapi, median of ${ROUNDS} rounds`,
);
try {
  const urls = Array.from({ length: COUNT }, () => `${apache.origin}${PATH}`);
  for (const [title, parallel] of [
    [`${COUNT} GETs one after another`, 1],
    [`${COUNT} GETs, 50 in flight`, 50],
  ] as const) {
    console.log(`\n${title}`);
    console.log('| client | wall time | vs multileg | wire requests / request | failed |');
    console.log('|---|---:|---:|---:|---:|');
    const names = Object.keys(contenders);
    for (const name of names) await contenders[name]!(urls.slice(0, 10), parallel); // warm-up
    const times: Record<string, number[]> = {};
    const wire: Record<string, number> = {};
    const failed: Record<string, number> = {};
    for (let r = 0; r < ROUNDS; r++) {
      for (const name of names) {
        const path = name === PLAIN ? PUBLIC_PATH : PATH;
        const before = wireSoFar(path);
        const started = performance.now();
        failed[name] = await contenders[name]!(urls, parallel);
        const took = name === FLOOR ? floorTime : performance.now() - started;
        times[name] = [...(times[name] ?? []), took];
        // mod_http2 logs a stream when it is cleaned up: give the log a moment.
        await new Promise((resolve) => setTimeout(resolve, 200));
        wire[name] = (wireSoFar(path) - before) / COUNT;
      }
    }
    const ours = median(times.multileg!);
    for (const name of names) {
      const ms = median(times[name]!);
      console.log(
        `| ${name} | ${ms.toFixed(1)} ms | ${(ms / ours).toFixed(2)} | ${wire[name]!.toFixed(3)} | ${failed[name]} |`,
      );
    }
    console.log(`multileg / plain Agent: ${(ours / median(times[PLAIN]!)).toFixed(2)}`);
  }
  console.log('\nFailures (client: reason: count, all rounds):');
  for (const [why, n] of failures) console.log(`  ${why}: ${n}`);
} finally {
  restoreEnv();
  await lab.stop();
}
