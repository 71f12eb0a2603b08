/** Runs the `multileg` command line (src/cli/bin.ts) in a child process, as a user would. */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';

export const BIN = new URL('../src/cli/bin.ts', import.meta.url).pathname;

/**
 * Node arguments for a run of BIN: the source's stripped TypeScript cached across runs
 * (fixtures/strip-cache.mjs), about half of each run's CPU on Node 22, which strips anew each time.
 */
export const NODE_ARGS = ['--import', new URL('./fixtures/strip-cache.mjs', import.meta.url).pathname] as const;

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs any command without blocking the event loop (the test's own servers must keep answering). */
export function runCommand(
  command: string,
  args: readonly string[],
  input = '',
  env: NodeJS.ProcessEnv = process.env,
  cwd?: string,
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: 'pipe', ...(cwd ? { cwd } : {}) });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    // A child that never reads its stdin (it exited first) is not the test's failure.
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
}

/**
 * Runs the command on a pseudo-terminal (`script`), as a user at a shell would, and types `answer`
 * once `asked` appears (the terminal is then in no-echo mode); resolves with all it wrote.
 */
export async function runOnTerminal(args: readonly string[], asked: string, answer: string): Promise<string> {
  const quoted = [process.execPath, ...NODE_ARGS, BIN, ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ');
  const child = spawn('script', ['-qec', quoted, '/dev/null'], { stdio: 'pipe' });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    if (out.includes(asked) && !child.stdin.writableEnded) child.stdin.end(`${answer}\n`);
  });
  await new Promise((resolve) => child.on('close', resolve));
  return out;
}

export function runCli(
  args: readonly string[],
  opts: {
    env?: Record<string, string | undefined>;
    input?: string;
    node?: string;
    nodeArgs?: readonly string[];
    /** The folder it runs in (-O writes there). */
    cwd?: string;
  } = {},
): Promise<CliResult> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  // A proxy or password in the developer's environment must not leak into the tests.
  for (const k of [
    'HTTPS_PROXY',
    'https_proxy',
    'HTTP_PROXY',
    'http_proxy',
    'NO_PROXY',
    'no_proxy',
    'ALL_PROXY',
    'all_proxy',
    'MULTILEG_PASSWORD',
  ])
    delete env[k];
  // Each run its own state directory (R4: refused passwords are remembered there across runs),
  // unless the test gives one: runs know nothing of each other's refusals, as before the state file,
  // and the developer's own ~/.local/state is left alone.
  const state = opts.env && 'XDG_STATE_HOME' in opts.env ? undefined : mkdtempSync(join(tmpdir(), 'multileg-state-'));
  if (state) env.XDG_STATE_HOME = state;
  for (const [k, v] of Object.entries(opts.env ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  const ran = runCommand(
    opts.node ?? process.execPath,
    [...NODE_ARGS, ...(opts.nodeArgs ?? []), BIN, ...args],
    opts.input,
    env,
    opts.cwd,
  );
  return state ? ran.finally(() => rmSync(state, { recursive: true, force: true })) : ran;
}

/** This machine's system Node when it is older than 22.19 (Debian's 20): to prove the version message. */
export const OLD_NODE: string | undefined = (() => {
  const r = spawnSync('/usr/bin/node', ['--version'], { encoding: 'utf8' });
  if (r.status !== 0) return undefined;
  const [major = 0, minor = 0] = r.stdout.trim().slice(1).split('.').map(Number);
  return major < 22 || (major === 22 && minor < 19) ? '/usr/bin/node' : undefined;
})();

/** What commander itself prints for `cmd` on a terminal `width` columns wide (undefined: not a terminal). */
export function commanderHelp(cmd: Command, width: number | undefined): string {
  let text = '';
  // Off a terminal commander's own default gives undefined too, which its typings do not admit.
  cmd.configureOutput({ getOutHelpWidth: () => width as number, writeOut: (s) => (text += s) }).outputHelp();
  return text;
}
