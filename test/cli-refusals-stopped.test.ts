/**
 * R4, R1 across processes: a run that waits for another run's lock of the same password while
 * that run is stopped (Ctrl-Z: SIGSTOP, /proc state `T`). The holder is alive, so its lock stands
 * and the waiter never sends the password; but the waiter's wait ends at its own bound (-m, or
 * limits.queueTimeout), its poll of the lock with it, and the user is told the holder is stopped
 * and what to do.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { RefusalFile } from '../src/cli/refusals.ts';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { BIN, runCli } from './cli-helpers.ts';

/** /proc/PID/stat's state letter; undefined once the process is gone. */
function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

async function until(what: string, check: () => boolean, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe.runIf(process.platform === 'linux')(
  'R4/R1: a run waiting behind a stopped (Ctrl-Z) run of the same password',
  () => {
    let server: ReferenceServer;
    let dir: string;
    let ca: string;
    let state: string;
    let holder: ChildProcess | undefined;
    beforeAll(async () => {
      // NTLM only: each AUTHENTICATE the server receives is one try of the password.
      server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
      dir = mkdtempSync(join(tmpdir(), 'multileg-refusals-stopped-'));
      ca = join(dir, 'ca.pem');
      writeFileSync(ca, server.ca);
    });
    afterAll(async () => {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    });
    beforeEach(() => {
      state = mkdtempSync(join(dir, 'state-'));
    });

    /** The NTLM AUTHENTICATE messages (the password's tries) the server received at `path`. */
    const tries = (path: string) =>
      server.exchanges.filter((e) => {
        const auth = e.requestHeaders.authorization;
        if (typeof auth !== 'string' || !auth.startsWith('NTLM ') || !e.path.startsWith(path)) return false;
        return Buffer.from(auth.slice(5), 'base64').readUInt32LE(8) === 3;
      }).length;
    const args = (path: string, extra: string[] = []) => [
      '-sS',
      '-f',
      '-u',
      'EXAMPLE\\alice:wrongpw',
      '--cacert',
      ca,
      ...extra,
      `${server.origin}${path}`,
    ];

    /**
     * A run that takes the password's lock (the server is slow to answer its legs: ?delay), then is
     * stopped as Ctrl-Z stops it, holding the lock. Its pid.
     */
    async function stoppedHolder(path: string): Promise<number> {
      const env: NodeJS.ProcessEnv = { ...process.env, XDG_STATE_HOME: state };
      for (const k of ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy'])
        delete env[k];
      const child = spawn(process.execPath, [BIN, ...args(`${path}?delay=2000`)], { env, stdio: 'ignore' });
      holder = child;
      const files = join(state, 'multileg');
      const locked = () => {
        try {
          return readdirSync(files).some((f) => f.endsWith('.lock') && !f.startsWith('refusals'));
        } catch {
          return false;
        }
      };
      await until('the holder to take its lock', locked);
      child.kill('SIGSTOP');
      await until('the holder to be stopped', () => procState(child.pid!) === 'T');
      // Still holding it: the server answers its legs 2 s late.
      expect(locked()).toBe(true);
      return child.pid!;
    }

    /** Resumes and ends the holder, whatever the test came to. */
    async function endHolder(): Promise<void> {
      const child = holder;
      holder = undefined;
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGCONT');
      child.kill('SIGTERM');
      await gone;
    }

    const stoppedWords = (pid: number) => `the run of pid ${pid} is stopped (Ctrl-Z): resume it with fg, or end it`;

    it('R4/R1: behind a stopped holder a run ends at -m (exit 28, the process exits), sends no password, and says the holder is stopped and to resume it with fg or end it', async () => {
      try {
        const pid = await stoppedHolder('/auth/stop-m-holder');
        const waiter = await runCli(args('/auth/stop-m-waiter', ['-m', '5']), { env: { XDG_STATE_HOME: state } });
        expect(waiter.code).toBe(28);
        // The holder is alive: its lock stands, and its password is not sent a second time.
        expect(tries('/auth/stop-m-waiter')).toBe(0);
        // Said while it waits (a warning), and in the failure's line.
        expect(waiter.stderr).toContain(`Warning: the run of pid ${pid}, which holds `);
        expect(waiter.stderr).toMatch(
          new RegExp(
            `operation timed out after 5000 ms \\(--max-time\\); the request waited \\d+ s for \\S+\\.lock, held by the run of pid ${pid} while it tries the same password there \\(R4: one try at a time\\); ${stoppedWords(pid).replaceAll('(', '\\(').replaceAll(')', '\\)')}, then run again\\n`,
          ),
        );
        // Not the advice for a run that is gone: deleting a live run's lock lets its password go twice.
        expect(waiter.stderr).not.toContain('delete the lock');
        expect(waiter.stderr).not.toContain('wrongpw');
      } finally {
        await endHolder();
      }
    }, 120_000);

    it('R1/R4: behind a stopped holder a run without -m ends at limits.queueTimeout (60 s): its request goes without the password, exit 22 on the 401, and the line says the holder is stopped', async () => {
      try {
        const pid = await stoppedHolder('/auth/stop-q-holder');
        const waiter = await runCli(args('/auth/stop-q-waiter', ['-v']), { env: { XDG_STATE_HOME: state } });
        expect(waiter.code).toBe(22);
        expect(tries('/auth/stop-q-waiter')).toBe(0);
        // -v says the wait, then (as a warning) that its holder is stopped.
        expect(waiter.stderr).toMatch(
          new RegExp(`\\* waiting for \\S+\\.lock: the run of pid ${pid}, trying the same password`),
        );
        expect(waiter.stderr).toContain(`Warning: the run of pid ${pid}, which holds `);
        expect(waiter.stderr).toMatch(
          /is stopped \(Ctrl-Z\): resume it with fg, or end it; this run waits for it no longer than its own bound/,
        );
        expect(waiter.stderr).toMatch(
          new RegExp(
            `multileg: no credentials were sent: the request waited \\d+ s for \\S+\\.lock, held by the run of pid ${pid} while it tries the same password there \\(R4: one try at a time\\); ${stoppedWords(pid).replaceAll('(', '\\(').replaceAll(')', '\\)')}, then run again\\n`,
          ),
        );
        expect(waiter.stderr).not.toContain('wrongpw');
      } finally {
        await endHolder();
      }
    }, 180_000);

    it('R1/R4: a wait given up (its signal aborted) ends its poll of a stopped holder\u2019s lock at once: it settles, and takes no lock once the holder is gone', async () => {
      const file = new RefusalFile({ dir: join(state, 'multileg'), warn: () => {} });
      const place = {
        origin: server.origin,
        proxy: false,
        // As the command holds -u EXAMPLE\alice:wrongpw: the same record, and the same lock, as the holder's.
        credentials: { username: 'EXAMPLE\\alice', password: 'wrongpw' },
      };
      try {
        const pid = await stoppedHolder('/auth/stop-poll-holder');
        const givenUp = new AbortController();
        const recalled = file.recall(place, givenUp.signal);
        expect(recalled).toBeInstanceOf(Promise);
        await new Promise((resolve) => setTimeout(resolve, 1_500));
        givenUp.abort();
        // Before: the poll went on (every 100 ms, for as long as the holder lived).
        const settled = await Promise.race([
          (recalled as Promise<unknown>).then(() => 'settled'),
          new Promise((resolve) => setTimeout(() => resolve('still polling'), 10_000)),
        ]);
        expect(settled).toBe('settled');
        // Kept for the message of the request that went without the password, with the holder's state.
        expect(file.waitingFor(server.origin)).toMatchObject({ holder: `the run of pid ${pid}`, stopped: 'T' });
        // The holder resumes and ends: its lock goes, and no poll of ours takes it after.
        await endHolder();
        await new Promise((resolve) => setTimeout(resolve, 1_000));
        expect(readdirSync(join(state, 'multileg')).filter((f) => f.endsWith('.lock'))).toEqual([]);
        // The agent's one release for the given-up recall lets nothing go.
        file.release(place);
      } finally {
        file.releaseAll();
        await endHolder();
      }
    }, 120_000);
    it('R1/R4: a poll of a stopped holder\u2019s lock never holds its process by itself: a process with nothing else left exits', async () => {
      try {
        await stoppedHolder('/auth/stop-exit-holder');
        // A process whose one piece of work left is a recall waiting for the stopped holder (no agent,
        // so no request's bound holds it): the request's own bound is what keeps a process, not the poll.
        const script = join(state, 'recall.ts');
        writeFileSync(
          script,
          `import { RefusalFile } from ${JSON.stringify(new URL('../src/cli/refusals.ts', import.meta.url).pathname)};
const file = new RefusalFile({ dir: ${JSON.stringify(join(state, 'multileg'))}, warn: () => {} });
const r = file.recall({ origin: ${JSON.stringify(server.origin)}, proxy: false, credentials: { username: 'EXAMPLE\\\\alice', password: 'wrongpw' } });
process.stdout.write(r instanceof Promise ? 'waiting' : 'not waiting');
`,
        );
        const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
        let out = '';
        child.stdout.setEncoding('utf8').on('data', (d: string) => {
          out += d;
        });
        const exited = new Promise((resolve) => child.once('exit', () => resolve('exited')));
        // Before: its poll's timers held it for as long as the holder lived.
        const ended = await Promise.race([
          exited,
          new Promise((resolve) => setTimeout(() => resolve('still running'), 20_000)),
        ]);
        if (ended !== 'exited') child.kill('SIGKILL');
        expect(out).toBe('waiting');
        expect(ended).toBe('exited');
      } finally {
        await endHolder();
      }
    }, 120_000);
  },
);
