/**
 * The command as a Kubernetes/OpenShift pod runs it (trial u15): an arbitrary UID without a passwd
 * entry and without HOME, PID 1 of its own PID namespace, stopped by SIGTERM; its state file's
 * locks (R4) left by a run that was killed, or held by a run on another host.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { once } from 'node:events';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { constants, hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { LOCK_REFRESH_MS, LOCK_WAIT_MS, RefusalFile } from '../src/cli/refusals.ts';
import { BIN, runCli, runCommand } from './cli-helpers.ts';

const BOOT = (() => {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
})();
/** This process's PID namespace, as a lock names it. */
const NS = (() => {
  try {
    return readlinkSync('/proc/self/ns/pid');
  } catch {
    return '';
  }
})();
const ROOT = process.getuid?.() === 0;
const has = (tool: string) => spawnSync(tool, ['--version']).status === 0;
/** A PID namespace of its own (the command as PID 1) and a UID without a passwd entry: root only. */
const CAN_UNSHARE = ROOT && process.platform === 'linux' && has('unshare');
const CAN_SETPRIV = ROOT && process.platform === 'linux' && has('setpriv');
/** The PID namespace cases run in CI whatever (it runs as root: a missing unshare fails there); elsewhere skipped, said. */
const SKIP_NS = !CAN_UNSHARE && !process.env.CI;
if (SKIP_NS)
  console.warn('cli-containers: SKIPPED the R4 PID namespace cases: they need root and unshare (util-linux) on Linux');
/** The passwd-less UID cases likewise: run in CI whatever (a missing setpriv fails there); elsewhere skipped, said. */
const SKIP_UID = !CAN_SETPRIV && !process.env.CI;
if (SKIP_UID)
  console.warn('cli-containers: SKIPPED the passwd-less UID cases: they need root and setpriv (util-linux) on Linux');
/** A UID no passwd entry names (OpenShift's range). */
const POD_UID = '1000680000';

/** When `pid` started (/proc/PID/stat's field 22, clock ticks since boot); `-` where it cannot be read. */
const startOf = (pid: number): string => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '-';
  } catch {
    return '-';
  }
};

/** A lock's text as the command writes it: pid, boot id, host name, PID namespace, start time. */
const lockText = (pid: number, boot = BOOT || '-', host = hostname(), ns = NS || '-', start = startOf(pid)) =>
  `${pid} ${boot} ${host} ${ns} ${start}`;

describe('R4/R1: the state file’s locks, as a container leaves them (RefusalFile)', () => {
  let dir: string;
  const place = { origin: 'https://intranet.example', proxy: false, credentials: { username: 'u', password: 'p' } };
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'multileg-locks-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  /** The lock file of `place` (made by a first recall, which is then released). */
  function lockOf(file: RefusalFile): string {
    expect(file.recall(place)).toBeUndefined();
    const [name] = readdirSync(dir).filter((f) => f.endsWith('.lock'));
    file.release(place);
    return join(dir, name!);
  }

  it('R4: a lock holding our own pid, which this run does not hold, is stale (a killed PID 1 before us): taken at once', () => {
    const file = new RefusalFile({ dir, warn: () => {} });
    const lock = lockOf(file);
    writeFileSync(lock, lockText(process.pid));
    // Taken at once (no wait: a Promise would be one); the lock is ours now.
    expect(file.recall(place)).toBeUndefined();
    expect(readFileSync(lock, 'utf8')).toBe(lockText(process.pid));
    file.releaseAll();
    expect(existsSync(lock)).toBe(false);
  });

  it('R4: a lock in an older text (a bare pid; no PID namespace) cannot be checked: honoured while recent, broken once the file system’s clock says it went unrewritten LOCK_WAIT_MS', async () => {
    const warnings: string[] = [];
    const file = new RefusalFile({ dir, warn: (l) => warnings.push(l) });
    const lock = lockOf(file);
    for (const text of [String(process.pid), `${process.pid} ${BOOT || '-'} ${hostname()}`]) {
      writeFileSync(lock, text);
      const recalled = file.recall(place);
      expect(recalled).toBeInstanceOf(Promise);
      rmSync(lock);
      expect(await recalled).toBeUndefined();
      file.releaseAll();
    }
    expect(warnings).toEqual([]);
    writeFileSync(lock, String(process.pid));
    const old = (Date.now() - 2 * LOCK_WAIT_MS) / 1000;
    utimesSync(lock, old, old);
    expect(file.recall(place)).toBeUndefined();
    expect(warnings).toEqual([expect.stringContaining('held by another run, has not been rewritten for')]);
    file.releaseAll();
  });

  it.skipIf(BOOT === '')(
    'R4: the same host name with another boot id (another machine of that name, or an earlier boot) is no proof: a recent lock is honoured',
    async () => {
      const file = new RefusalFile({ dir, warn: () => {} });
      const lock = lockOf(file);
      // A pid alive now (our parent's), under another boot id: it may be another machine's live run.
      writeFileSync(lock, lockText(process.ppid, '00000000-0000-0000-0000-000000000000'));
      const recalled = file.recall(place);
      expect(recalled).toBeInstanceOf(Promise);
      expect(file.waitingFor(place.origin)?.holder).toBe(
        `the run of pid ${process.ppid} on host ${hostname()} of another boot (or another machine of that name)`,
      );
      rmSync(lock);
      expect(await recalled).toBeUndefined();
      file.releaseAll();
    },
  );

  it.skipIf(NS === '')(
    'R4: our own pid in a lock of another PID namespace (another container of the pod, PID 1 too) is not ours: honoured',
    async () => {
      const file = new RefusalFile({ dir, warn: () => {} });
      const lock = lockOf(file);
      writeFileSync(lock, lockText(process.pid, BOOT || '-', hostname(), 'pid:[4026532999]'));
      const recalled = file.recall(place);
      expect(recalled).toBeInstanceOf(Promise);
      expect(file.waitingFor(place.origin)?.holder).toBe(
        `the run of pid ${process.pid} in another PID namespace (another container), pid:[4026532999]`,
      );
      rmSync(lock);
      expect(await recalled).toBeUndefined();
      file.releaseAll();
    },
  );

  it.skipIf(process.platform !== 'linux')(
    "R4: a lock whose holder is a zombie — killed, not yet reaped: `timeout -s KILL` kills itself too, and its orphan waits on a PID 1 that reaps late or never — is stale: taken at once, as a gone holder's (it was honoured until the zombie was reaped: forever under a PID 1 that reaps nothing, every run's password held back; trial u18)",
    async () => {
      // A child that exits at once under a parent that never reaps it (sh's exec'd sleep waits for nothing).
      const parent = spawn('sh', ['-c', 'sleep 0 & echo $!; exec sleep 30'], { stdio: ['ignore', 'pipe', 'ignore'] });
      try {
        const [line] = (await once(parent.stdout!, 'data')) as [Buffer];
        const zombie = Number(line.toString().trim());
        const state = () => {
          const stat = readFileSync(`/proc/${zombie}/stat`, 'utf8');
          return stat[stat.lastIndexOf(')') + 2];
        };
        for (let i = 0; i < 100 && state() !== 'Z'; i++) await new Promise((r) => setTimeout(r, 20));
        expect(state()).toBe('Z');
        // kill(pid, 0) still answers for it: the check alone took it for a live run.
        expect(() => process.kill(zombie, 0)).not.toThrow();
        const file = new RefusalFile({ dir, warn: () => {} });
        const lock = lockOf(file);
        writeFileSync(lock, lockText(zombie));
        expect(file.recall(place)).toBeUndefined();
        expect(readFileSync(lock, 'utf8')).toBe(lockText(process.pid));
        file.releaseAll();
      } finally {
        parent.kill('SIGKILL');
      }
    },
  );

  it.skipIf(process.platform !== 'linux' || BOOT === '' || NS === '')(
    'R4: a lock whose pid a live unrelated process has now, started at another time than the lock says (the pid reused), is stale: taken at once; with the start time the lock names, or none (the previous version’s four words), it is honoured (trial u20: held as long as that process lived)',
    async () => {
      // Any process that is not a run of ours: its pid as a reused one.
      const other = spawn('sleep', ['30'], { stdio: 'ignore' });
      try {
        await once(other, 'spawn');
        const pid = other.pid!;
        const start = startOf(pid);
        expect(start).toMatch(/^\d+$/);
        const file = new RefusalFile({ dir, warn: () => {} });
        const lock = lockOf(file);
        // The run that took it started at another time (one tick earlier) under this pid: gone.
        writeFileSync(lock, lockText(pid, BOOT, hostname(), NS, String(Number(start) - 1)));
        expect(file.recall(place)).toBeUndefined();
        expect(readFileSync(lock, 'utf8')).toBe(lockText(process.pid));
        file.releaseAll();
        // That very process (its start time), or a lock that names none: a live holder, waited for.
        for (const text of [lockText(pid, BOOT, hostname(), NS, start), `${pid} ${BOOT} ${hostname()} ${NS}`]) {
          writeFileSync(lock, text);
          const recalled = file.recall(place);
          expect(recalled, text).toBeInstanceOf(Promise);
          expect(file.waitingFor(place.origin)?.holder).toBe(`the run of pid ${pid}`);
          rmSync(lock);
          expect(await recalled).toBeUndefined();
          file.releaseAll();
        }
      } finally {
        other.kill('SIGKILL');
      }
    },
  );

  describe('on a fake clock', () => {
    afterEach(() => {
      vi.useRealTimers();
    });

    it('R4: another host’s lock written just now is honoured by a waiter whose clock is 61 s ahead (clock skew)', async () => {
      const file = new RefusalFile({ dir, warn: () => {} });
      const lock = lockOf(file);
      writeFileSync(lock, lockText(4242, BOOT || '-', 'web-2'));
      vi.useFakeTimers({ toFake: ['Date'], now: Date.now() + LOCK_WAIT_MS + 1_000 });
      const recalled = file.recall(place);
      expect(recalled).toBeInstanceOf(Promise);
      expect(readFileSync(lock, 'utf8')).toBe(lockText(4242, BOOT || '-', 'web-2'));
      rmSync(lock);
      expect(await recalled).toBeUndefined();
      file.releaseAll();
    });

    it(`R4: a run rewrites the locks it holds every LOCK_REFRESH_MS (${LOCK_REFRESH_MS / 1000} s), and stops once it let them go; it never takes away a lock that another run made since`, async () => {
      vi.useFakeTimers({ toFake: ['Date', 'setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] });
      const file = new RefusalFile({ dir, warn: () => {} });
      expect(file.recall(place)).toBeUndefined();
      const [name] = readdirSync(dir).filter((f) => f.endsWith('.lock'));
      const lock = join(dir, name!);
      const old = Math.floor(Date.now() / 1000) - 3_600;
      utimesSync(lock, old, old);
      await vi.advanceTimersByTimeAsync(LOCK_REFRESH_MS);
      expect(statSync(lock).mtimeMs).toBeGreaterThan(old * 1000 + 60_000);
      expect(readFileSync(lock, 'utf8')).toBe(lockText(process.pid));
      file.release(place);
      expect(existsSync(lock)).toBe(false);
      expect(vi.getTimerCount()).toBe(0);
      // Broken meanwhile (this run stopped a minute) and taken by another run: that run's, left alone.
      expect(file.recall(place)).toBeUndefined();
      rmSync(lock);
      writeFileSync(lock, lockText(77, BOOT || '-', 'web-2'));
      file.releaseAll();
      expect(readFileSync(lock, 'utf8')).toBe(lockText(77, BOOT || '-', 'web-2'));
    });

    it('R4: a lock it cannot check is never broken while its holder rewrites it (65 s and more into a slow handshake); once the rewrites stop, after LOCK_WAIT_MS by the waiter’s clock, with a warning that does not say the run died', async () => {
      const warnings: string[] = [];
      const file = new RefusalFile({ dir, warn: (l) => warnings.push(l) });
      const lock = lockOf(file);
      const text = lockText(4242, BOOT || '-', 'web-2');
      writeFileSync(lock, text);
      const start = Math.floor(Date.now() / 1000);
      vi.useFakeTimers({ toFake: ['Date', 'setTimeout', 'clearTimeout'] });
      const recalled = file.recall(place) as Promise<unknown>;
      expect(recalled).toBeInstanceOf(Promise);
      let settled = false;
      void recalled.then(() => {
        settled = true;
      });
      // The holder on web-2 rewrites it every 15 s for 90 s (its times: distinct, whatever its clock says).
      for (let i = 1; i <= 6; i++) {
        await vi.advanceTimersByTimeAsync(LOCK_REFRESH_MS);
        utimesSync(lock, start + i, start + i);
      }
      expect(settled).toBe(false);
      expect(warnings).toEqual([]);
      // It stops (killed, or stopped): broken LOCK_WAIT_MS later.
      await vi.advanceTimersByTimeAsync(LOCK_WAIT_MS - 1_000);
      expect(settled).toBe(false);
      await vi.advanceTimersByTimeAsync(2_000);
      expect(settled).toBe(true);
      expect(warnings).toEqual([
        `${lock}, held by the run of pid 4242 on host web-2, has not been rewritten for ${LOCK_WAIT_MS / 1000} s (a run holding it rewrites it every ${LOCK_REFRESH_MS / 1000} s): broken, as that run has ended, or is stopped or cut off from this directory`,
      ]);
      expect(readFileSync(lock, 'utf8')).toBe(lockText(process.pid));
      file.releaseAll();
    });

    it('R4/R1: a lock of this host, boot and PID namespace whose pid lives is never broken, however long it is held (its waiter’s own bound ends the wait)', async () => {
      const warnings: string[] = [];
      const file = new RefusalFile({ dir, warn: (l) => warnings.push(l) });
      const lock = lockOf(file);
      // Our parent: alive, and not this process.
      writeFileSync(lock, lockText(process.ppid));
      vi.useFakeTimers({ toFake: ['Date', 'setTimeout', 'clearTimeout'] });
      const recalled = file.recall(place) as Promise<unknown>;
      let settled = false;
      void recalled.then(() => {
        settled = true;
      });
      await vi.advanceTimersByTimeAsync(3 * LOCK_WAIT_MS);
      expect(settled).toBe(false);
      expect(readFileSync(lock, 'utf8')).toBe(lockText(process.ppid));
      expect(file.waitingFor(place.origin)?.holder).toBe(`the run of pid ${process.ppid}`);
      rmSync(lock);
      await vi.advanceTimersByTimeAsync(200);
      expect(settled).toBe(true);
      expect(warnings).toEqual([
        `waited ${(3 * LOCK_WAIT_MS) / 1000} s for the run of pid ${process.ppid}, which was trying the same password at ${place.origin}`,
      ]);
      file.releaseAll();
    });
  });

  it('R1: a lock of another host is honoured, and the wait is said (-v) with whose lock it is', async () => {
    const lines: string[] = [];
    const file = new RefusalFile({ dir, warn: (l) => lines.push(`warn ${l}`), verbose: (l) => lines.push(l) });
    const lock = lockOf(file);
    // Its pid means nothing here (another host's process table): not checked, and not broken.
    writeFileSync(lock, lockText(process.pid, BOOT || '-', 'other-node-7'));
    const recalled = file.recall(place);
    expect(recalled).toBeInstanceOf(Promise);
    expect(lines).toEqual([
      `* waiting for ${lock}: the run of pid ${process.pid} on host other-node-7, trying the same password at ${place.origin}, holds it`,
    ]);
    expect(file.waitingFor(place.origin)).toMatchObject({
      lock,
      holder: `the run of pid ${process.pid} on host other-node-7`,
    });
    // That run ends: this one goes on, and waits no more.
    rmSync(lock);
    expect(await recalled).toBeUndefined();
    expect(file.waitingFor(place.origin)).toBeUndefined();
    file.releaseAll();
  });

  it(`R4: a lock of another host last written more than LOCK_WAIT_MS (${LOCK_WAIT_MS / 1000} s) ago by the file system’s clock is broken at once, with a warning`, () => {
    const warnings: string[] = [];
    const file = new RefusalFile({ dir, warn: (l) => warnings.push(l) });
    const lock = lockOf(file);
    writeFileSync(lock, lockText(4242, BOOT || '-', 'cronjob-pod-28061234-abcde'));
    const old = (Date.now() - 2 * LOCK_WAIT_MS) / 1000;
    utimesSync(lock, old, old);
    expect(file.recall(place)).toBeUndefined();
    expect(warnings).toEqual([
      expect.stringMatching(
        /, held by the run of pid 4242 on host cronjob-pod-28061234-abcde, has not been rewritten for \d+ s .*: broken, as that run has ended, or is stopped or cut off from this directory$/,
      ),
    ]);
    file.releaseAll();
  });

  it('R4: the state directory is found only when a password would be sent unproved; none found: one warning naming XDG_STATE_HOME', () => {
    const warnings: string[] = [];
    let asked = 0;
    const file = new RefusalFile({
      dir: () => {
        asked++;
        throw new Error('XDG_STATE_HOME is not set and there is no home directory (HOME unset, no passwd entry)');
      },
      warn: (l) => warnings.push(l),
    });
    expect(asked).toBe(0);
    expect(file.recall(place)).toBeUndefined();
    file.release(place);
    file.refused(place, { at: Date.now(), until: Date.now() + 30_000, times: 1 });
    expect(asked).toBe(1);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('set XDG_STATE_HOME to a writable directory');
  });
});

describe('the command in a container (trial u15)', () => {
  let dir: string;
  let state: string;
  let server: Server;
  let origin: string;
  /** The requests with an Authorization header, by path. */
  const sent: string[] = [];
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'multileg-pod-'));
    // The pod's UID reads the command's files from here.
    chmodSync(dir, 0o755);
    // Basic: alice:pw is right; a request with credentials to /stall is never answered (a stalled handshake).
    server = createServer((req, res) => {
      const auth = req.headers.authorization;
      if (auth) sent.push(req.url ?? '');
      if (auth === `Basic ${Buffer.from('alice:pw').toString('base64')}`) {
        res.end('ok\n');
        return;
      }
      if (auth && req.url?.startsWith('/stall')) return;
      res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="pod"' }).end('no\n');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => {
    server.closeAllConnections();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    state = mkdtempSync(join(dir, 'state-'));
    chmodSync(state, 0o777);
  });

  /** The environment of a pod: env -i, but for what is given. */
  const podEnv = (env: Record<string, string> = {}) => ({ PATH: process.env.PATH ?? '/usr/bin:/bin', ...env });
  const tries = (path: string) => sent.filter((p) => p.startsWith(path)).length;

  /** The lock file names a run would take for `user:password` at the origin, under the state's key (made by a run first). */
  const locksFor = (user: string, password: string) => {
    const key = readFileSync(join(state, 'multileg', 'key'));
    const id = createHmac('sha256', key)
      .update(JSON.stringify(['origin', origin, '', user, password]))
      .digest('hex');
    return join(state, 'multileg', `${id.slice(0, 32)}.lock`);
  };

  /** Starts the command (spawned, not awaited): `prefix` runs it (unshare …). */
  function start(args: string[], env: Record<string, string>, prefix: string[] = []) {
    const [command, ...rest] = [...prefix, process.execPath, BIN, ...args];
    const child = spawn(command!, rest, { env: podEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    child.stdout.resume();
    const ended = once(child, 'exit').then(([code, signal]) => ({
      code: code as number | null,
      signal: signal as NodeJS.Signals | null,
      stderr,
    }));
    return { child, ended };
  }

  /** Until `path` exists (the run took its lock); no time measured. */
  async function until(path: string): Promise<void> {
    while (!existsSync(path)) await new Promise((r) => setTimeout(r, 20));
  }

  it.skipIf(SKIP_UID)(
    'R4: no home (HOME unset, a UID without a passwd entry): the run works; -sS says once how to keep refusals (XDG_STATE_HOME), -s does not',
    async () => {
      const pod = (flag: string) =>
        runCommand(
          'setpriv',
          [
            `--reuid=${POD_UID}`,
            '--regid=0',
            '--clear-groups',
            process.execPath,
            BIN,
            flag,
            '-f',
            '-u',
            'alice:pw',
            `${origin}/nohome`,
          ],
          '',
          podEnv(),
          dir,
        );
      const shown = await pod('-sS');
      expect(shown.stderr).not.toContain('unexpected error');
      expect(shown.code).toBe(0);
      expect(shown.stdout).toBe('ok\n');
      expect(shown.stderr.match(/Warning: .*set XDG_STATE_HOME to a writable directory/g)).toHaveLength(1);
      const quiet = await pod('-s');
      expect(quiet.code).toBe(0);
      expect(quiet.stderr).toBe('');
      // A run that sends no password needs no state at all.
      const none = await runCommand(
        'setpriv',
        [`--reuid=${POD_UID}`, '--regid=0', '--clear-groups', process.execPath, BIN, '-sS', `${origin}/public`],
        '',
        podEnv(),
        dir,
      );
      expect(none.code).toBe(0);
      expect(none.stderr).toBe('');
    },
  );

  it('R4: HOME="" never makes --netrc read a relative .netrc (of the current directory)', async () => {
    const cwd = mkdtempSync(join(dir, 'cwd-'));
    writeFileSync(join(cwd, '.netrc'), 'machine 127.0.0.1 login alice password pw\n', { mode: 0o600 });
    const r = await runCli(['-sS', '--netrc-optional', `${origin}/netrc-relative`], {
      cwd,
      env: { HOME: '', NETRC: undefined, XDG_STATE_HOME: state },
    });
    expect(tries('/netrc-relative')).toBe(0);
    expect(r.stdout).not.toBe('ok\n');
  });

  it.skipIf(SKIP_NS)(
    'R4: a lock left by a killed PID 1 (a CronJob run SIGKILLed, its namespace gone with it) and not rewritten since does not hold the next PID 1: the password goes at once, said',
    async () => {
      const env = { XDG_STATE_HOME: state };
      // The key is made by a first run (a right password: no record).
      expect(
        (await runCommand(process.execPath, [BIN, '-sS', '-u', 'alice:pw', `${origin}/key`], '', podEnv(env))).code,
      ).toBe(0);
      // What the killed run left: its pid, 1, on this host and boot, in its own PID namespace,
      // last rewritten when it was killed, LOCK_WAIT_MS and more ago.
      const lock = locksFor('alice', 'wrongpw');
      writeFileSync(lock, lockText(1, BOOT || '-', hostname(), 'pid:[4026532000]'));
      const old = (Date.now() - 2 * LOCK_WAIT_MS) / 1000;
      utimesSync(lock, old, old);
      const run = start(['-sS', '-f', '-u', 'alice:wrongpw', `${origin}/pid1`], env, ['unshare', '-p', '-f']);
      const r = await run.ended;
      expect(tries('/pid1')).toBe(1);
      expect(r.code).toBe(22);
      expect(r.stderr).toContain('the server refused our Basic credentials');
      expect(r.stderr).toMatch(
        /held by the run of pid 1 in another PID namespace .*, has not been rewritten for \d+ s/,
      );
      expect(existsSync(lock)).toBe(false);
    },
    30_000,
  );

  it('R4: SIGTERM mid-handshake: the run takes its lock away and dies by the signal (curl’s way)', async () => {
    const env = { XDG_STATE_HOME: state };
    expect(
      (await runCommand(process.execPath, [BIN, '-sS', '-u', 'alice:pw', `${origin}/key`], '', podEnv(env))).code,
    ).toBe(0);
    const lock = locksFor('alice', 'stallpw');
    const run = start(['-sS', '-u', 'alice:stallpw', `${origin}/stall-term`], env);
    await until(lock);
    run.child.kill('SIGTERM');
    const r = await run.ended;
    expect(r.signal).toBe('SIGTERM');
    expect(existsSync(lock)).toBe(false);
  });

  it.skipIf(SKIP_NS)(
    'R4: SIGTERM to the command as PID 1 (a pod stopped): it ends at once, 143, its lock taken away',
    async () => {
      const env = { XDG_STATE_HOME: state };
      expect(
        (await runCommand(process.execPath, [BIN, '-sS', '-u', 'alice:pw', `${origin}/key`], '', podEnv(env))).code,
      ).toBe(0);
      const lock = locksFor('alice', 'stallpw1');
      const run = start(['-sS', '-u', 'alice:stallpw1', `${origin}/stall-pid1`], env, ['unshare', '-p', '-f']);
      await until(lock);
      // unshare's child is the command, PID 1 of the new namespace: the kernel drops a signal it has no handler for.
      const pid1 = Number(readFileSync(`/proc/${run.child.pid}/task/${run.child.pid}/children`, 'utf8').trim());
      expect(readFileSync(`/proc/${pid1}/status`, 'utf8')).toMatch(/NSpid:\s+\d+\s+1\n/);
      try {
        process.kill(pid1, 'SIGTERM');
        const r = await run.ended;
        expect(r.code).toBe(143);
        expect(existsSync(lock)).toBe(false);
      } finally {
        run.child.kill('SIGKILL');
        try {
          process.kill(pid1, 'SIGKILL');
        } catch {
          // Ended.
        }
      }
    },
    30_000,
  );

  it.skipIf(SKIP_NS)(
    'R4: two runs of one host and boot in two PID namespaces (two containers of a pod on one volume): the second never breaks the live first’s lock — both PID 1, or the first PID 2 — and its request goes without the password at -m',
    async () => {
      const env = { XDG_STATE_HOME: state };
      expect(
        (await runCommand(process.execPath, [BIN, '-sS', '-u', 'alice:pw', `${origin}/key`], '', podEnv(env))).code,
      ).toBe(0);
      const started: number[] = [];
      try {
        for (const [n, first] of [
          [1, ['unshare', '-p', '-f']],
          // The command under a shell that stays (PID 1): it is PID 2 there, a pid that is no process in the other namespace.
          [2, ['unshare', '-p', '-f', 'bash', '-c', '"$@"; true', 'bash']],
        ] as const) {
          const password = `nspw${n}`;
          const lock = locksFor('alice', password);
          const a = start(['-sS', '-u', `alice:${password}`, `${origin}/stall-nsA${n}`], env, [...first]);
          started.push(a.child.pid!);
          await until(lock);
          const held = readFileSync(lock, 'utf8');
          expect(held.split(' ')[0]).toBe(String(n));
          expect(held.split(' ')[3]).toMatch(/^pid:\[\d+\]$/);
          expect(held.split(' ')[3]).not.toBe(NS);
          const b = start(['-v', '-m', '2', '-u', `alice:${password}`, `${origin}/stall-nsB${n}`], env, [
            'unshare',
            '-p',
            '-f',
          ]);
          const r = await b.ended;
          expect(tries(`/stall-nsB${n}`)).toBe(0);
          expect(tries(`/stall-nsA${n}`)).toBe(1);
          expect(r.code).toBe(28);
          expect(r.stderr).toContain(`* waiting for ${lock}: the run of pid ${n} in another PID namespace`);
          expect(readFileSync(lock, 'utf8')).toBe(held);
        }
      } finally {
        for (const pid of started) {
          // unshare's child, PID 1 of its namespace: its end ends everything in it.
          for (const child of readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ')) {
            try {
              process.kill(Number(child), 'SIGKILL');
            } catch {
              // Ended.
            }
          }
        }
      }
    },
    30_000,
  );

  it('R1: -m running out while another host’s run holds the lock: the wait is said (-v), and the message says whose lock', async () => {
    const env = { XDG_STATE_HOME: state };
    expect(
      (await runCommand(process.execPath, [BIN, '-sS', '-u', 'alice:pw', `${origin}/key`], '', podEnv(env))).code,
    ).toBe(0);
    const lock = locksFor('alice', 'busypw');
    mkdirSync(join(state, 'multileg'), { recursive: true });
    writeFileSync(lock, lockText(77, BOOT || '-', 'other-node-3'));
    const r = await runCli(['-v', '-m', '2', '-u', 'alice:busypw', `${origin}/busy`], { env });
    expect(r.code).toBe(28);
    expect(tries('/busy')).toBe(0);
    expect(r.stderr).toContain(`* waiting for ${lock}: the run of pid 77 on host other-node-3`);
    expect(r.stderr).toMatch(
      new RegExp(
        `operation timed out .*; the request waited \\d+ s for ${lock.replaceAll('.', '\\.')}, held by the run of pid 77 on host other-node-3 while it tries the same password there`,
      ),
    );
    expect(r.stderr).not.toContain('busypw');
    // Not ours: left in place.
    expect(readFileSync(lock, 'utf8')).toBe(lockText(77, BOOT || '-', 'other-node-3'));
  });
});

describe('the password prompt ended by a signal (review r62)', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'multileg-prompt-'));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  /**
   * The command at its password prompt on a pseudo-terminal (`script`), then `act` once it asks:
   * all the terminal showed, with the command's exit status and `stty -a` after it.
   */
  async function atPrompt(act: (pid: number, type: (keys: string) => void) => void): Promise<string> {
    const pidFile = join(dir, `pid-${Math.random().toString(36).slice(2)}`);
    const inner = `stty echo icanon; sh -c 'echo $$ > ${pidFile}; exec "$0" "$@"' '${process.execPath}' '${BIN}' -u alice http://127.0.0.1:9/x; echo rc=$?; stty -a`;
    const env = { ...process.env };
    delete env.MULTILEG_PASSWORD;
    const child = spawn('script', ['-qec', inner, '/dev/null'], { stdio: 'pipe', env });
    let out = '';
    let asked = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (asked || !out.includes('Enter host password')) return;
      asked = true;
      act(Number(readFileSync(pidFile, 'utf8')), (keys) => child.stdin.write(keys));
    });
    await once(child, 'close');
    return out;
  }
  const modes = (out: string) => out.split(/[\s;]+/).filter((w) => /^-?(echo|icanon)$/.test(w));

  it.each(['SIGTERM', 'SIGINT', 'SIGHUP'] as const)(
    'R4: %s at the password prompt: the command dies by it with the terminal given back (echo, lines), not left raw',
    async (signal) => {
      const out = await atPrompt((pid) => process.kill(pid, signal));
      expect(out).toContain(`rc=${128 + constants.signals[signal]}`);
      expect(modes(out)).toEqual(['icanon', 'echo']);
    },
    20_000,
  );

  it('R4: Ctrl-C typed at the password prompt ends the command as SIGINT does (130, terminal given back), not "no password entered" (2)', async () => {
    const out = await atPrompt((_pid, type) => type('\x03'));
    expect(out).toContain('rc=130');
    expect(out).not.toContain('no password entered');
    expect(modes(out)).toEqual(['icanon', 'echo']);
  }, 20_000);
});
