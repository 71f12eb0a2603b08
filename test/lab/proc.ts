/** Spawning and stopping lab daemons (no shell, waited on by PID). */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { waitForPort } from './net.ts';

export interface Daemon {
  readonly name: string;
  readonly child: ChildProcess;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process has exited. */
  stop(graceMs?: number): Promise<void>;
}

/** Starts `cmd` in the foreground of a child process with stdout/stderr going to `logFile`. */
export function spawnDaemon(
  name: string,
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  logFile: string,
): Daemon {
  const fd = openSync(logFile, 'a');
  const child = spawn(cmd, args, { env, stdio: ['ignore', fd, fd], detached: false });
  closeSync(fd);
  let exited = child.exitCode !== null || child.signalCode !== null;
  const exitP = new Promise<void>((resolve) => {
    if (exited) resolve();
    child.once('exit', () => {
      exited = true;
      resolve();
    });
    child.once('error', () => {
      exited = true;
      resolve();
    });
  });
  return {
    name,
    child,
    async stop(graceMs = 5000) {
      if (exited) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => {
        if (!exited) child.kill('SIGKILL');
      }, graceMs);
      await exitP;
      clearTimeout(t);
    },
  };
}

/** Waits for the daemon's port; if the daemon dies first, fails with the tail of its log. */
export async function waitDaemon(d: Daemon, port: number, logFile: string, timeoutMs = 10_000): Promise<void> {
  await waitForPort(port, timeoutMs, () => {
    if (d.child.exitCode !== null || d.child.signalCode !== null) {
      let tail = '';
      try {
        tail = readFileSync(logFile, 'utf8').slice(-2000);
      } catch {}
      return `lab: ${d.name} exited (${d.child.exitCode ?? d.child.signalCode}) before listening on ${port}:\n${tail}`;
    }
    return undefined;
  });
}

export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command to completion (no shell). Never rejects; inspect `code`. */
export function run(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 30_000, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 127) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

/** Like {@link run} but throws with the command's stderr when it fails. */
export async function runOk(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`lab: ${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr || r.stdout}`);
  return r;
}
