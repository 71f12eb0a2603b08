/** The reference server in its own process (its own core, as in production), for the benchmarks. */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { ReferenceServerStats } from '../src/reference-server/index.ts';

export interface BenchServer {
  origin: string;
  /** The server's process id (its CPU time is in /proc/<pid>/stat). */
  pid: number;
  /** The server's counters so far (requests, sessions opened, handshakes started). */
  stats(): Promise<ReferenceServerStats>;
  /** Requests the server has seen so far. */
  requests(): Promise<number>;
  stop(): void;
}

/** Starts `src/reference-server/main.ts` with `args` (e.g. `--mode session`). */
export async function startServer(args: readonly string[]): Promise<BenchServer> {
  const child = spawn(
    process.execPath,
    [new URL('../src/reference-server/main.ts', import.meta.url).pathname, ...args],
    {
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  );
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const origin = (await lines.next()).value as string;
  const stats = async () => {
    child.stdin.write('stats\n');
    return JSON.parse((await lines.next()).value as string) as ReferenceServerStats;
  };
  return {
    origin,
    pid: child.pid!,
    stats,
    requests: async () => (await stats()).requests,
    stop: () => child.kill('SIGTERM'),
  };
}

export const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
