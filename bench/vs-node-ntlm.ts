/**
 * Benchmark (not run in CI, never asserted): multileg against what Node users use for NTLM today,
 * `axios-ntlm` and `httpntlm` (devDependencies of this bench only), against the same reference
 * server (its own process, session mode, NTLM) in one run. Workloads: N GETs all at once, N with
 * at most 50 in flight, and SEQ one after another. For each: wall time (median of ROUNDS, each
 * round with a new client, so each pays its connections and handshakes), connections the server
 * saw opened, handshakes it started, wire requests per user request, and failed requests.
 *
 *   node bench/vs-node-ntlm.ts         BENCH_N=1000 BENCH_SEQ=200 BENCH_ROUNDS=5
 */
import https from 'node:https';
import { NtlmClient } from 'axios-ntlm';
import httpntlm from 'httpntlm';
import { request } from 'undici';
import { MultilegAgent } from '../src/index.ts';
import { CA_CERT } from '../src/reference-server/index.ts';
import { type BenchServer, median, startServer } from './server.ts';

const N = Number(process.env.BENCH_N ?? 1000);
const SEQ = Number(process.env.BENCH_SEQ ?? 200);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const USER = { username: 'alice', password: 'alicepw', domain: 'EXAMPLE' };

/** One client under test: `get` resolves with the status of one GET; `close` ends it. */
interface Contender {
  get(url: string): Promise<number>;
  close(): Promise<void>;
}

/** multileg, over HTTP/2 where the server offers it, or over HTTP/1.1 only (undici's `allowH2: false`). */
function multileg(allowH2: boolean): (origin: string) => Contender {
  return (origin) => {
    const agent = new MultilegAgent({
      credentials: { username: `${USER.domain}\\${USER.username}`, password: USER.password },
      connect: { ca: CA_CERT },
      trustedOrigins: [origin],
    });
    const options = (allowH2 ? { dispatcher: agent } : { dispatcher: agent, allowH2 }) as Parameters<typeof request>[1];
    return {
      async get(url) {
        const res = await request(url, options);
        await res.body.dump();
        return res.statusCode;
      },
      close: () => agent.close(),
    };
  };
}

const contenders: Record<string, (origin: string) => Contender> = {
  multileg: multileg(true),
  'multileg HTTP/1.1': multileg(false),
  'axios-ntlm': () => {
    const httpsAgent = new https.Agent({ keepAlive: true, ca: CA_CERT });
    // Its interceptor answers 401s that axios throws: keep axios's default validateStatus.
    const client = NtlmClient(USER, { httpsAgent });
    return {
      async get(url) {
        try {
          return (await client.get(url)).status;
        } catch (err) {
          const status = (err as { response?: { status: number } }).response?.status;
          if (status === undefined) throw err;
          return status;
        }
      },
      close: async () => httpsAgent.destroy(),
    };
  },
  httpntlm: () => {
    // Its default: a new keep-alive agent per call (its two legs must share a socket; a shared
    // agent hands concurrent calls' legs to different sockets). Ours only adds the test CA.
    const agents: https.Agent[] = [];
    return {
      get: (url) =>
        new Promise((resolve, reject) => {
          const agent = new https.Agent({ keepAlive: true, ca: CA_CERT });
          agents.push(agent);
          httpntlm.get({ url, ...USER, workstation: '', agent }, (err, res) =>
            err ? reject(err) : resolve(res.statusCode),
          );
        }),
      close: async () => {
        for (const a of agents) a.destroy();
      },
    };
  },
};

interface Round {
  ms: number;
  connections: number;
  handshakes: number;
  wire: number;
  failed: number;
}

/** Why requests failed, per client and reason: the evidence where one cannot authenticate. */
const failures = new Map<string, number>();

/** Runs `count` GETs with at most `parallel` in flight. */
async function workload(server: BenchServer, name: string, count: number, parallel: number): Promise<Round> {
  const client = contenders[name]!(server.origin);
  const before = await server.stats();
  let next = 0;
  let failed = 0;
  const fail = (why: string) => {
    failed += 1;
    const key = `${name}: ${why}`;
    failures.set(key, (failures.get(key) ?? 0) + 1);
  };
  const started = performance.now();
  const worker = async () => {
    while (next < count) {
      const i = next++;
      try {
        const status = await client.get(`${server.origin}/auth/${i}`);
        if (status !== 200) fail(`status ${status}`);
      } catch (err) {
        fail((err as Error).message);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
  const ms = performance.now() - started;
  await client.close();
  const after = await server.stats();
  return {
    ms,
    connections: after.sessions - before.sessions,
    handshakes: after.contextsCreated - before.contextsCreated,
    wire: (after.requests - before.requests) / count,
    failed,
  };
}

const server = await startServer(['--mode', 'session', '--schemes', 'NTLM']);
console.log(`node ${process.version}, ${new Date().toISOString()}, median of ${ROUNDS} rounds`);
try {
  const workloads: Array<[string, number, number]> = [
    [`${N} GETs all at once`, N, N],
    [`${N} GETs, 50 in flight`, N, 50],
    [`${SEQ} GETs one after another`, SEQ, 1],
  ];
  for (const [title, count, parallel] of workloads) {
    console.log(`\n${title}`);
    console.log('| client | wall time | vs multileg | connections | handshakes | wire requests / request | failed |');
    console.log('|---|---:|---:|---:|---:|---:|---:|');
    const names = Object.keys(contenders);
    for (const name of names) await workload(server, name, Math.min(count, 50), parallel); // warm-up
    const rounds: Record<string, Round[]> = {};
    for (let r = 0; r < ROUNDS; r++) {
      // Interleaved, so drift in machine load hits all alike.
      for (const name of names) {
        const round = await workload(server, name, count, parallel);
        rounds[name] = [...(rounds[name] ?? []), round];
      }
    }
    const ours = median(rounds.multileg!.map((x) => x.ms));
    for (const name of names) {
      const rs = rounds[name]!;
      const ms = median(rs.map((x) => x.ms));
      const last = rs.at(-1)!;
      console.log(
        `| ${name} | ${ms.toFixed(1)} ms | ${(ms / ours).toFixed(2)} | ${last.connections} | ${last.handshakes} | ${last.wire.toFixed(3)} | ${median(rs.map((x) => x.failed))} |`,
      );
    }
  }
  console.log('\nFailures (client: reason: count, all workloads and rounds):');
  for (const [why, n] of failures) console.log(`  ${why}: ${n}`);
} finally {
  server.stop();
}
