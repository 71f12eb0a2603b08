/**
 * Benchmark tool (not run in CI, never asserted): an interleaved A/B of two or more source trees of
 * this project, each in child processes of its own — two copies of the modules in one process skew
 * the numbers (undici's call sites see two families of handlers, and only the first copy can declare
 * koffi's GSS-API types: the second falls back to the `kerberos` addon). Children run A B, then B A,
 * and so on; in each, every burst of multileg is next to a burst of a comparator, and ratios are
 * taken per pair (machine load drifts). Prints wall time and client CPU (the child's own process,
 * `process.cpuUsage()`, all its threads) per variant, medians over all bursts.
 *
 *   node bench/ab.ts session DIR_A DIR_B          1000 concurrent GETs through a new agent per burst, session
 *                                                mode (one NTLM-in-Negotiate handshake, then every request
 *                                                on the authenticated HTTP/2 session, as
 *                                                bench/session-vs-plain.ts); comparators: one undici
 *                                                Client (one session) and a plain Agent, /public
 *   node bench/ab.ts per-request DIR_A DIR_B      1000 concurrent GETs, per-request NTLM inside
 *                                                Negotiate against the reference server (one process
 *                                                for all); comparator: a plain undici Agent, /public
 *   node bench/ab.ts digest DIR_A DIR_B           the same with Digest (SHA-256) instead: one request
 *                                                each, a nonce known; the server (this tree's) sends
 *                                                Authentication-Info with rspauth
 *   node bench/ab.ts kerberos DIR_A DIR_B         400 GETs, 50 in flight, Kerberos per request against
 *                                                the lab's Apache; comparator: undici's fetch with a
 *                                                header made by the `kerberos` addon
 *   AB_PROCESSES=8 AB_BURSTS=7 AB_WARMUP=3        children per variant, measured bursts per child, bursts
 *                                                of each kind before them (JIT, TLS, modules)
 *
 * A DIR is a checkout of this project with its node_modules (e.g. `git worktree add /tmp/base <commit>`
 * and a copy of node_modules).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { median, startServer } from './server.ts';

type Workload = 'session' | 'per-request' | 'digest' | 'kerberos';
interface Burst {
  ms: number;
  /** Client CPU per request, µs. */
  cpu: number;
}
interface Pair {
  multileg: Burst;
  comparator: Burst;
  /** Session mode's second comparator (the first is one Client): a plain Agent. */
  agent?: Burst;
}

const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

async function timed(count: number, run: () => Promise<void>): Promise<Burst> {
  const cpu = process.cpuUsage();
  const started = performance.now();
  await run();
  const ms = performance.now() - started;
  const used = process.cpuUsage(cpu);
  return { ms, cpu: (used.user + used.system) / count };
}

/**
 * `count` concurrent GETs of `base/i` through `dispatcher` with the variant's own undici `request`,
 * timed; the dispatcher closed after.
 */
async function getsThrough(
  request: typeof import('undici').request,
  dispatcher: import('undici').Dispatcher,
  base: string,
  count: number,
): Promise<Burst> {
  const b = await timed(count, async () => {
    await Promise.all(
      Array.from({ length: count }, async (_, i) => {
        const res = await request(`${base}/${i}`, { dispatcher });
        await res.body.dump();
        if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`);
      }),
    );
  });
  await dispatcher.close();
  return b;
}

/** One child: bursts of one variant next to bursts of the comparator; prints the pairs as JSON. */
async function child(workload: Workload): Promise<void> {
  const dir = process.env.AB_DIR!;
  const origin = process.env.AB_ORIGIN!;
  const { MultilegAgent } = await import(`${dir}/src/index.ts`);
  // The variant's own undici (and kerberos addon), as its agent uses.
  const resolve = createRequire(`${dir}/package.json`).resolve;
  const { Agent, fetch, request } = (await import(resolve('undici'))) as typeof import('undici');
  let burst: (multileg: boolean) => Promise<Burst>;
  /** Session mode's plain Agent burst, beside the one-Client comparator. */
  let agentBurst: (() => Promise<Burst>) | undefined;
  if (workload === 'session') {
    const { CA_CERT } = await import(`${dir}/src/reference-server/index.ts`);
    const { Client } = (await import(resolve('undici'))) as typeof import('undici');
    const N = 1000;
    const run = async (kind: 'multileg' | 'client' | 'agent') => {
      const dispatcher =
        kind === 'multileg'
          ? new MultilegAgent({
              credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
              connect: { ca: CA_CERT },
              trustedOrigins: [origin],
            })
          : kind === 'client'
            ? new Client(origin, { connect: { ca: CA_CERT }, allowH2: true })
            : new Agent({ connect: { ca: CA_CERT } });
      const path = kind === 'multileg' ? '/auth' : '/public';
      return getsThrough(request, dispatcher, `${origin}${path}`, N);
    };
    burst = (multileg) => run(multileg ? 'multileg' : 'client');
    agentBurst = () => run('agent');
  } else if (workload === 'per-request' || workload === 'digest') {
    const { CA_CERT } = await import(`${dir}/src/reference-server/index.ts`);
    const N = 1000;
    burst = async (multileg) => {
      const dispatcher = multileg
        ? new MultilegAgent({
            credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
            connect: { ca: CA_CERT },
            trustedOrigins: [origin],
            ...(workload === 'digest' ? { negotiate: false } : {}),
          })
        : new Agent({ connect: { ca: CA_CERT } });
      const path = multileg ? '/auth' : '/public';
      return getsThrough(request, dispatcher, `${origin}${path}`, N);
    };
  } else {
    const kerberos = ((await import(resolve('kerberos'))) as { default: typeof import('kerberos') }).default;
    const ca = process.env.AB_CA!;
    const url = `${origin}/protected/index.html`;
    const COUNT = 400;
    burst = async (multileg) => {
      const dispatcher = multileg
        ? new MultilegAgent({ connect: { ca }, trustedOrigins: [origin] })
        : new Agent({ connect: { ca } });
      const get = async () => {
        let headers: Record<string, string> = {};
        if (!multileg) {
          const client = await kerberos.initializeClient('HTTP@localhost', { mechOID: kerberos.GSS_MECH_OID_SPNEGO });
          headers = { authorization: `Negotiate ${await client.step('')}` };
        }
        const res = await fetch(url, { dispatcher, headers });
        await res.arrayBuffer();
        if (res.status !== 200) throw new Error(`status ${res.status}`);
      };
      let next = 0;
      const b = await timed(COUNT, async () => {
        await Promise.all(
          Array.from({ length: 50 }, async () => {
            while (next++ < COUNT) await get();
          }),
        );
      });
      await dispatcher.close();
      return b;
    };
  }
  const warmup = Number(process.env.AB_WARMUP ?? 3);
  for (let i = 0; i < warmup; i++) {
    await burst(true);
    await burst(false);
    await agentBurst?.();
  }
  const pairs: Pair[] = [];
  const bursts = Number(process.env.AB_BURSTS ?? 7);
  for (let i = 0; i < bursts; i++) {
    // The comparator before multileg in every other pair.
    const before = i % 2 ? await burst(false) : undefined;
    const agentBefore = i % 2 ? await agentBurst?.() : undefined;
    const multileg = await burst(true);
    const comparator = before ?? (await burst(false));
    const agent = agentBefore ?? (await agentBurst?.());
    pairs.push({ multileg, comparator, ...(agent ? { agent } : {}) });
  }
  console.log(JSON.stringify(pairs));
}

async function main(workload: Workload, dirs: string[]): Promise<void> {
  let env: Record<string, string>;
  let stop: () => Promise<void> | void;
  if (workload !== 'kerberos') {
    const server = await startServer([
      '--mode',
      workload === 'session' ? 'session' : 'per-request',
      ...(workload === 'digest' ? ['--schemes', 'Digest'] : []),
    ]);
    env = { AB_ORIGIN: server.origin };
    stop = server.stop;
  } else {
    const { startLab } = await import('../test/lab/index.ts');
    const lab = await startLab({ apache: true });
    // alice's ticket cache, and no NTLM user file: Kerberos or nothing.
    const restore = lab.applyEnv({ NTLM_USER_FILE: undefined });
    env = { AB_ORIGIN: lab.apache!.origin, AB_CA: String(lab.apache!.ca) };
    stop = async () => {
      restore();
      await lab.stop();
    };
  }
  const processes = Number(process.env.AB_PROCESSES ?? 8);
  const results = new Map<string, Pair[]>(dirs.map((d) => [d, []]));
  const load = loadavg();
  const started = new Date().toISOString();
  try {
    for (let i = 0; i < processes; i++) {
      for (const dir of i % 2 ? [...dirs].reverse() : dirs) {
        const out = execFileSync(process.execPath, [new URL(import.meta.url).pathname, '--child', workload], {
          env: { ...process.env, ...env, AB_DIR: dir },
          encoding: 'utf8',
          maxBuffer: 1 << 24,
        });
        results.get(dir)!.push(...(JSON.parse(out.trim().split('\n').pop()!) as Pair[]));
      }
    }
  } finally {
    await stop();
  }
  const comparator =
    workload === 'kerberos'
      ? 'fetch + kerberos'
      : workload === 'session'
        ? 'one Client (and a plain Agent)'
        : 'plain Agent';
  console.log(`${workload}, ${started} (load ${load}) to ${new Date().toISOString()} (load ${loadavg()})`);
  console.log(
    `${processes} children per variant; client CPU in µs per request; ratios against the ${comparator}, per pair`,
  );
  const ratio = (pairs: Pair[], f: keyof Burst) => median(pairs.map((p) => p.multileg[f] / p.comparator[f]));
  const agentRatio = (pairs: Pair[], f: keyof Burst) => median(pairs.map((p) => p.multileg[f] / p.agent![f]));
  for (const dir of dirs) {
    const pairs = results.get(dir)!;
    const of = (f: keyof Burst, side: 'multileg' | 'comparator' | 'agent' = 'multileg') =>
      median(pairs.map((p) => p[side]![f]));
    const versus = workload === 'session' ? ' against one Client' : '';
    console.log(
      `  ${dir}: multileg wall ${of('ms').toFixed(1)} ms, CPU ${of('cpu').toFixed(1)}; ratio${versus} wall ${ratio(pairs, 'ms').toFixed(3)}, CPU ${ratio(pairs, 'cpu').toFixed(3)}`,
    );
    if (pairs[0]?.agent)
      console.log(
        `    Client wall ${of('ms', 'comparator').toFixed(1)} ms, CPU ${of('cpu', 'comparator').toFixed(1)}; Agent wall ${of('ms', 'agent').toFixed(1)} ms, CPU ${of('cpu', 'agent').toFixed(1)}; multileg against the Agent: wall ${agentRatio(pairs, 'ms').toFixed(3)}, CPU ${agentRatio(pairs, 'cpu').toFixed(3)}`,
      );
  }
  const [a, ...rest] = dirs;
  for (const b of rest) {
    const pa = results.get(a!)!;
    const pb = results.get(b)!;
    console.log(
      `  ${b} / ${a}: wall ${(ratio(pb, 'ms') / ratio(pa, 'ms')).toFixed(3)}, CPU ${(ratio(pb, 'cpu') / ratio(pa, 'cpu')).toFixed(3)} (each against its own comparator); multileg's own CPU per request ${(median(pb.map((p) => p.multileg.cpu)) / median(pa.map((p) => p.multileg.cpu))).toFixed(3)}`,
    );
  }
}

const args = process.argv.slice(2);
if (args[0] === '--child') await child(args[1] as Workload);
else {
  const [workload, ...dirs] = args;
  if (!['session', 'per-request', 'digest', 'kerberos'].includes(workload!) || dirs.length < 2) {
    console.error('usage: node bench/ab.ts session|per-request|digest|kerberos DIR_A DIR_B [DIR...]');
    process.exit(2);
  }
  await main(workload as Workload, dirs);
}
