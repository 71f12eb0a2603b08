/**
 * Issue 10 item 5: how long the `multileg` command takes to start, against `node -e 0` on the same
 * machine: `--help`, `--version`, and one authenticated request (NTLM against the reference server,
 * which runs in this process while the command runs in its own), that request with the cookie
 * engine on (`-b FILE -c FILE`: tough-cookie and its public suffix list loaded; this build only),
 * beside the floor under any Node
 * HTTPS client (one bare node:http2 GET to the same server) and under any command built on undici
 * (one GET with undici's Client alone). Medians of 21 interleaved rounds; the
 * built command (dist/bin/multileg.js, as installed) is measured, with Node's module compile cache warm
 * (each build's own).
 *
 *   node bench/cli-start.ts        (npm run bench runs it; needs npm run build first)
 *   CLI_START_BEFORE=/other/checkout/dist/bin/multileg.js node bench/cli-start.ts
 *                                  (also measures another build in the same rounds: before/after)
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { startReferenceServer } from '../src/reference-server/index.ts';

const RUNS = 21;
const BIN = new URL('../dist/bin/multileg.js', import.meta.url).pathname;
const BEFORE = process.env.CLI_START_BEFORE;

/** A command: Node's arguments, and the compile cache it keeps (see `cache`). */
interface Run {
  readonly args: readonly string[];
  readonly env?: NodeJS.ProcessEnv;
}

function once({ args, env }: Run): Promise<{ ms: number; code: number | null }> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, args, { stdio: 'ignore', ...(env ? { env } : {}) });
    child.on('error', reject);
    child.on('close', (code) => resolve({ ms: performance.now() - started, code }));
  });
}

/** Medians of `commands`, run in interleaved rounds (a noisy machine slows them all alike). */
async function medians(commands: readonly Run[]): Promise<number[]> {
  for (const run of commands) await once(run); // warms the compile cache
  const times: number[][] = commands.map(() => []);
  for (let round = 0; round < RUNS; round++)
    for (const [i, run] of commands.entries()) {
      const r = await once(run);
      if (r.code !== 0) throw new Error(`${run.args.join(' ')} exited ${r.code}`);
      times[i]!.push(r.ms);
    }
  return times.map((t) => t.sort((a, b) => a - b)[Math.floor(RUNS / 2)]!);
}

/**
 * The floor under any HTTPS client in Node: one GET over TLS and HTTP/2 with node:http2 alone (no
 * undici, no authentication, one round trip), to the same server.
 */
const BARE_H2 = `const [origin, ca] = process.argv.slice(1);
const s = require('node:http2').connect(origin, { ca: require('node:fs').readFileSync(ca) });
const r = s.request({ ':path': '/public/' });
r.resume();
r.on('end', () => s.close());`;

/**
 * The floor under any command built on undici, as this one is: one GET with undici's own Client,
 * loaded as the command loads it (its own file, not undici's index) with the compile cache on, and
 * no authentication: one round trip.
 */
const UNDICI_GET = `require('node:module').enableCompileCache?.();
const [origin, ca, undici] = process.argv.slice(1);
const Client = require(undici + '/lib/dispatcher/client.js');
const c = new Client(origin, { connect: { ca: require('node:fs').readFileSync(ca) }, allowH2: true });
c.dispatch({ path: '/public/', method: 'GET' }, {
  onRequestStart() {}, onResponseStart() {}, onResponseData() {},
  onResponseEnd() { c.close(); },
  onResponseError(_, err) { process.exitCode = 1; console.error(err); c.close(); },
});`;

const server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'], record: false });
/**
 * IIS's default: `Negotiate` and `NTLM` offered. With no Kerberos ticket the command tries Kerberos
 * first (koffi, the GSS-API library and MIT's start-up are loaded for it), then NTLM inside Negotiate.
 */
const negotiating = await startReferenceServer({ mode: 'session', schemes: ['Negotiate', 'NTLM'], record: false });
const dir = mkdtempSync(join(tmpdir(), 'multileg-bench-'));
const ca = join(dir, 'ca.pem');
writeFileSync(ca, server.ca);
const negotiatingCa = join(dir, 'negotiating-ca.pem');
writeFileSync(negotiatingCa, negotiating.ca);
/**
 * A compile cache of its own (in `$TMPDIR/node-compile-cache`, where the command keeps it, and the
 * script's code cache in `$XDG_CACHE_HOME/multileg`): a
 * cache entry is keyed by the file, and one made under other V8 flags is rejected and rewritten.
 * Two builds that load the same undici files under different flags, sharing one cache, would
 * reject each other's entries every round.
 */
const cache = (name: string): NodeJS.ProcessEnv => {
  mkdirSync(join(dir, name));
  // No Kerberos ticket, whatever this machine has: the Negotiate row measures the attempt that finds none.
  // The script's code cache (src/cli/code-cache.ts) in the same directory: each build its own.
  return {
    ...process.env,
    TMPDIR: join(dir, name),
    XDG_CACHE_HOME: join(dir, name),
    KRB5CCNAME: `FILE:${join(dir, 'no-ticket')}`,
  };
};
try {
  /** One NTLM request to a reference server (the NTLM-only one unless `to` says), the output thrown away. */
  const authenticated = (bin: string, flags: readonly string[] = [], to = { origin: server.origin, ca }) => [
    bin,
    '-s',
    '-o',
    '/dev/null',
    ...flags,
    '-u',
    'EXAMPLE\\alice:alicepw',
    '--cacert',
    to.ca,
    `${to.origin}/auth/x`,
  ];
  const commands = (bin: string, env: NodeJS.ProcessEnv): Run[] =>
    [
      [bin, '--help'],
      [bin, '--version'],
      authenticated(bin),
      // IIS answers NTLM over HTTP/1.1 only: the same request there (undici's WebAssembly parser).
      authenticated(bin, ['--http1.1']),
      // IIS's default offer (Negotiate, NTLM), no Kerberos ticket: Kerberos is tried first.
      authenticated(bin, [], { origin: negotiating.origin, ca: negotiatingCa }),
    ].map((args) => ({ args, env }));
  // A jar of a few cookies for the reference server's host, read and written each round.
  const jar = join(dir, 'cookies.txt');
  const host = new URL(server.origin).hostname;
  writeFileSync(
    jar,
    ['sid', 'lang', 'theme'].map((name) => `${host}\tFALSE\t/\tFALSE\t0\t${name}\tvalue-of-${name}\n`).join(''),
  );
  const now = cache('now');
  const [base, bare, undiciGet, cookies, help, version, request, request1, requestNegotiate, ...before] = await medians(
    [
      { args: ['-e', '0'] },
      { args: ['-e', BARE_H2, server.origin, ca] },
      {
        args: ['-e', UNDICI_GET, server.origin, ca, dirname(createRequire(import.meta.url).resolve('undici'))],
        env: cache('undici'),
      },
      { args: authenticated(BIN, ['-b', jar, '-c', jar]), env: now },
      ...commands(BIN, now),
      ...(BEFORE ? commands(BEFORE, cache('before')) : []),
    ],
  );
  const x = (ms: number | undefined) => `${ms!.toFixed(1)} ms = ${(ms! / base!).toFixed(2)}x node -e 0`;
  const was = (i: number) => (BEFORE ? ` (before: ${x(before[i])})` : '');
  console.log(`CLI start (median of ${RUNS} interleaved rounds): node -e 0 ${base!.toFixed(1)} ms`);
  console.log(`CLI start: multileg --help ${x(help)} (goal <= 1.5x)${was(0)}`);
  console.log(`CLI start: multileg --version ${x(version)}${was(1)}`);
  console.log(`CLI start: one NTLM request ${x(request)} (goal <= 2.5x)${was(2)}`);
  console.log(`CLI start: one NTLM request over HTTP/1.1 ${x(request1)}${was(3)}`);
  console.log(
    `CLI start: one NTLM request to a server offering Negotiate too, no Kerberos ticket ${x(requestNegotiate)}${was(4)}`,
  );
  console.log(`CLI start: one NTLM request with -b FILE -c FILE (the cookie engine) ${x(cookies)}`);
  console.log(`CLI start: floor, one bare node:http2 GET over TLS (no undici, no auth) ${x(bare)}`);
  console.log(`CLI start: floor, one GET with undici's Client alone (no auth) ${x(undiciGet)}`);
} finally {
  await server.close();
  await negotiating.close();
}
