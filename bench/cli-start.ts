/**
 * Issue 10 item 5: how long the `multileg` command takes to start, against `node -e 0` on the same
 * machine: `--help`, and one authenticated request (NTLM against the reference server, which runs
 * in this process while the command runs in its own). Median of 15 runs each; the built command
 * (dist/cli/bin.js, as installed) is measured, with Node's module compile cache warm.
 *
 *   node bench/cli-start.ts        (npm run bench runs it; needs npm run build first)
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startReferenceServer } from '../src/reference-server/index.ts';

const RUNS = 15;
const BIN = new URL('../dist/cli/bin.js', import.meta.url).pathname;

function once(args: readonly string[]): Promise<{ ms: number; code: number | null }> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, args, { stdio: 'ignore' });
    child.on('error', reject);
    child.on('close', (code) => resolve({ ms: performance.now() - started, code }));
  });
}

async function median(args: readonly string[]): Promise<number> {
  await once(args); // warms the compile cache
  const times: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const r = await once(args);
    if (r.code !== 0) throw new Error(`${args.join(' ')} exited ${r.code}`);
    times.push(r.ms);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(RUNS / 2)]!;
}

const server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'], record: false });
const dir = mkdtempSync(join(tmpdir(), 'multileg-bench-'));
const ca = join(dir, 'ca.pem');
writeFileSync(ca, server.ca);
try {
  const base = await median(['-e', '0']);
  const help = await median([BIN, '--help']);
  const request = await median([
    BIN,
    '-s',
    '-o',
    '/dev/null',
    '-u',
    'EXAMPLE\\alice:alicepw',
    '--cacert',
    ca,
    `${server.origin}/auth/x`,
  ]);
  console.log(`CLI start: node -e 0 ${base.toFixed(1)} ms`);
  console.log(
    `CLI start: multileg --help ${help.toFixed(1)} ms = ${(help / base).toFixed(2)}x node -e 0 (goal <= 1.5x)`,
  );
  console.log(
    `CLI start: one NTLM request ${request.toFixed(1)} ms = ${(request / base).toFixed(2)}x node -e 0 (goal <= 2.5x)`,
  );
} finally {
  await server.close();
}
