/**
 * R4 across processes: the command remembers a refused password in its state file
 * ($XDG_STATE_HOME/multileg), so that one process per run (cron) does not send a wrong password
 * once per run and lock the account.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { channel } from 'node:diagnostics_channel';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { RefusalFile } from '../src/cli/refusals.ts';
import { Trace } from '../src/cli/trace.ts';
import { lockWaitBehind } from '../src/cli/transfer.ts';
import { PROXY_UNANSWERED_CHANNEL, type ProxyUnansweredEvent } from '../src/index.ts';
import {
  type ReferenceProxy,
  type ReferenceServer,
  startReferenceProxy,
  startReferenceServer,
} from '../src/reference-server/index.ts';
import { BIN, type CliResult, NODE_ARGS, runCli } from './cli-helpers.ts';

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

describe('R4: refused passwords are held back across the command’s runs (state file)', () => {
  let server: ReferenceServer;
  let dir: string;
  let ca: string;
  let state: string;
  beforeAll(async () => {
    // NTLM only: each AUTHENTICATE the server receives is one try of the password.
    server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    dir = mkdtempSync(join(tmpdir(), 'multileg-refusals-'));
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

  /** The NTLM AUTHENTICATE messages (the password's tries) the server received so far. */
  const tries = (path?: string) =>
    server.exchanges.filter((e) => {
      const auth = e.requestHeaders.authorization;
      if (typeof auth !== 'string' || !auth.startsWith('NTLM ')) return false;
      if (path !== undefined && !e.path.startsWith(path)) return false;
      return Buffer.from(auth.slice(5), 'base64').readUInt32LE(8) === 3;
    }).length;
  const run = (password: string, path: string, extra: string[] = []) =>
    runCli(['-sS', '-f', '-u', `EXAMPLE\\alice:${password}`, '--cacert', ca, ...extra, `${server.origin}${path}`], {
      env: { XDG_STATE_HOME: state },
    });

  it('R4: a wrong password over 5 sequential processes is sent once, then held back; a different password is sent at once', async () => {
    const results = [];
    for (let i = 0; i < 5; i++) results.push(await run('wrongpw', `/auth/seq${i}`));
    expect(tries('/auth/seq')).toBe(1);
    expect(results.map((r) => r.code)).toEqual([22, 22, 22, 22, 22]);
    // The first run met the refusal itself; the next ones say why nothing was sent, and how to try now.
    expect(results[0]!.stderr).toContain('the server refused our NTLM credentials');
    for (const r of results.slice(1)) {
      expect(r.stderr).toMatch(
        new RegExp(
          `the password for EXAMPLE\\\\alice, refused by ${server.origin.replaceAll('.', '\\.')} \\d+ s ago, is held back \\d+ s more so a wrong password does not lock the account; no credentials were sent: fix the password, or pass --forget-refusals to try it now`,
        ),
      );
      expect(r.stderr).not.toContain('wrongpw');
    }
    // The file holds no password: only a keyed hash of it, 0600 in a 0700 directory.
    const files = join(state, 'multileg');
    expect(statSync(files).mode & 0o777).toBe(0o700);
    for (const f of readdirSync(files)) {
      expect(statSync(join(files, f)).mode & 0o077).toBe(0);
      expect(readFileSync(join(files, f)).includes('wrongpw')).toBe(false);
    }
    const record = Object.values(JSON.parse(readFileSync(join(files, 'refusals.json'), 'utf8')).refusals);
    expect(record).toEqual([
      expect.objectContaining({ kind: 'origin', origin: server.origin, user: 'EXAMPLE\\alice', times: 1 }),
    ]);
    // Another password is another record: not held back.
    const right = await run('alicepw', '/auth/seq-right');
    expect(right.code).toBe(0);
    expect(tries('/auth/seq-right')).toBe(1);
    // That success is no proof of the wrong one, which stays held back.
    expect((await run('wrongpw', '/auth/seq-again')).code).toBe(22);
    expect(tries('/auth/seq-again')).toBe(0);
  });

  it('R4: a password the state file holds back sends the request once, its first 401 the answer (a -d body once too), said as before', async () => {
    const requests = (path: string) => server.exchanges.filter((e) => e.path === path);
    const heldBack = new RegExp(
      `the password for EXAMPLE\\\\alice, refused by ${server.origin.replaceAll('.', '\\.')} \\d+ s ago, is held back \\d+ s more so a wrong password does not lock the account; no credentials were sent: fix the password, or pass --forget-refusals to try it now`,
    );
    expect((await run('wrongpw', '/auth/once0')).code).toBe(22);
    expect(tries('/auth/once0')).toBe(1);
    // Before, the 401 that asked for the password was drained, the state file then held it back,
    // and the request went again bare to get a 401 to show: two requests where the library sends one.
    const get = await run('wrongpw', '/auth/once1', ['-v']);
    expect(get.code).toBe(22);
    expect(get.stderr).toMatch(heldBack);
    expect(requests('/auth/once1')).toHaveLength(1);
    // -v: that 401 is the answer, shown once, not as an intermediate one.
    expect(get.stderr.match(/^< 401 .*$/gm)).toEqual([expect.not.stringContaining('intermediate')]);
    expect(get.stderr).toContain('its 401 is the answer: the credentials, refused or left unanswered here lately');
    const post = await run('wrongpw', '/auth/once2', ['-i', '-d', 'name=value']);
    expect(post.code).toBe(22);
    expect(post.stderr).toMatch(heldBack);
    // -i: its head once.
    expect(post.stdout.match(/^HTTP\/\S+ 401\b/gm)).toHaveLength(1);
    const posted = requests('/auth/once2');
    expect(posted.map((e) => [e.method, e.bodyLength, e.requestHeaders.authorization])).toEqual([
      ['POST', 10, undefined],
    ]);
    expect(tries('/auth/once')).toBe(1);
  });

  it('R4: -v: while a run waits for another run’s lock on the same password, its held 401 is not labelled intermediate before its fate is known: written as held, then said to be the answer once that run’s refusal holds the password back', async () => {
    const lockIn = join(state, 'multileg');
    const locked = () => {
      try {
        return readdirSync(lockIn).some((f) => f.endsWith('.lock') && !f.startsWith('refusals'));
      } catch {
        return false;
      }
    };
    // The holder's legs come 1.5 s late: it holds the password's lock a few seconds, then is refused.
    const holder = run('wrongpw', '/auth/aside-holder?delay=1500');
    await until('the holder to take its lock', locked);
    const waiter = await run('wrongpw', '/auth/aside-waiter', ['-v']);
    expect((await holder).code).toBe(22);
    expect(waiter.code).toBe(22);
    expect(tries('/auth/aside')).toBe(1);
    const lines = waiter.stderr.split('\n');
    const shown = lines.filter((l) => l.startsWith('< 401 '));
    // Before: `< 401 offers NTLM [HTTP/2, intermediate]`, written as the wait was said, then "its 401 is the answer".
    expect(shown).toEqual(['< 401 offers NTLM [HTTP/2, held]']);
    const at = (start: string) => lines.findIndex((l) => l.startsWith(start));
    expect(at('< 401 ')).toBeLessThan(at('* waiting for '));
    expect(at('* waiting for ')).toBeLessThan(
      at('* its 401 is the answer: the credentials, refused or left unanswered here lately'),
    );
    expect(waiter.stderr).not.toContain('intermediate');
  });

  it('R4/C10: a password the state file holds back, the 401 that asked for it over 64 KiB (limits.maxChallengeBodyBytes): that 401 is the answer, its body in full, and the request (a -d body) sent once', async () => {
    const PAD = 100_000;
    server.setFaults({
      padBody: ({ status, request }) => (status === 401 && request.path.startsWith('/auth/big') ? PAD : 0),
    });
    try {
      const requests = (path: string) => server.exchanges.filter((e) => e.path === path);
      expect((await run('wrongpw', '/auth/big0')).code).toBe(22);
      expect(tries('/auth/big0')).toBe(1);
      // Before: that 401's body was cut at its bound, so not held, and once the state file held the
      // password back the request went again bare for a 401 to show — the -d body twice.
      const post = await run('wrongpw', '/auth/big1', ['--fail-with-body', '-d', 'name=value']);
      expect(post.code).toBe(22);
      expect(post.stderr).toMatch(/is held back \d+ s more so a wrong password does not lock the account/);
      expect(requests('/auth/big1').map((e) => [e.method, e.bodyLength, e.requestHeaders.authorization])).toEqual([
        ['POST', 10, undefined],
      ]);
      expect(post.stdout.length).toBeGreaterThan(PAD);
      expect(JSON.parse(post.stdout)).toMatchObject({ method: 'POST', path: '/auth/big1', bodyLength: 10, user: null });
      expect(tries('/auth/big')).toBe(1);
    } finally {
      server.setFaults({});
    }
  });

  it('R4: --forget-refusals sends a held-back password now; a success clears its record, and the next run sends it at once', async () => {
    const users = server.options.users;
    // The account's password was changed on the server: alicepw is refused, recorded, held back.
    server.options.users = { ...users, 'EXAMPLE\\alice': 'changed' };
    try {
      expect((await run('alicepw', '/auth/clear1')).code).toBe(22);
      expect(tries('/auth/clear1')).toBe(1);
    } finally {
      // Changed back (the user fixed it server-side): the held-back password is right again.
      server.options.users = users;
    }
    expect((await run('alicepw', '/auth/clear2')).code).toBe(22);
    expect(tries('/auth/clear2')).toBe(0);
    const forgot = await run('alicepw', '/auth/clear3', ['--forget-refusals']);
    expect(forgot.code).toBe(0);
    expect(tries('/auth/clear3')).toBe(1);
    // The success cleared the record: the next run needs no flag.
    expect(JSON.parse(readFileSync(join(state, 'multileg', 'refusals.json'), 'utf8')).refusals).toEqual({});
    expect((await run('alicepw', '/auth/clear4')).code).toBe(0);
    expect(tries('/auth/clear4')).toBe(1);
  });

  it('R4: --forget-refusals keeps the count: refused again, the wait doubles', async () => {
    expect((await run('wrongpw', '/auth/count1')).code).toBe(22);
    const forgot = await run('wrongpw', '/auth/count2', ['--forget-refusals']);
    expect(forgot.code).toBe(22);
    expect(tries('/auth/count2')).toBe(1);
    const [r] = Object.values(
      JSON.parse(readFileSync(join(state, 'multileg', 'refusals.json'), 'utf8')).refusals,
    ) as Array<{
      at: number;
      until: number;
      times: number;
    }>;
    expect(r!.times).toBe(2);
    expect(r!.until - r!.at).toBe(60_000);
  });

  it('R4: multileg doctor keeps the same state file: a password the command was refused is held back there (said, with the fix), and its own refusal holds the command back', async () => {
    const doctor = (password: string, extra: string[] = []) =>
      runCli(['doctor', '-u', `EXAMPLE\\alice:${password}`, '--cacert', ca, ...extra, `${server.origin}/auth/doc`], {
        env: { XDG_STATE_HOME: state },
      });
    expect((await run('wrongpw', '/auth/doc')).code).toBe(22);
    expect(tries('/auth/doc')).toBe(1);
    // Before, doctor sent the held-back password on every run: a help desk's retries locked the account.
    const held = await doctor('wrongpw');
    expect(held.code).toBe(1);
    expect(tries('/auth/doc')).toBe(1);
    expect(held.stdout).toMatch(
      /FAIL {2}authentication: 401: no credentials were sent: the password for EXAMPLE\\alice, refused by \S+ \d+ s ago, is held back \d+ s more so a wrong password does not lock the account\n {6}fix: fix the password \(-u DOMAIN\\user:password\), or pass --forget-refusals to try it now\n/,
    );
    expect(held.stdout + held.stderr).not.toContain('wrongpw');
    // --forget-refusals tries it now; refused again, it is kept for the command's next run.
    expect((await doctor('wrongpw', ['--forget-refusals'])).code).toBe(1);
    expect(tries('/auth/doc')).toBe(2);
    const after = await run('wrongpw', '/auth/doc');
    expect(after.stderr).toContain('is held back');
    expect(tries('/auth/doc')).toBe(2);
    // Another password is not held back.
    const right = await doctor('alicepw');
    expect(right.stdout).toMatch(/ok {4}authentication: NTLM, 2 leg\(s\), session as EXAMPLE\\alice/);
    expect(right.code).toBe(0);
  });

  it('R4: --forget-refusals is in --help', async () => {
    const help = await runCli(['--help']);
    expect(help.stdout).toMatch(/--forget-refusals\s+send a password refused lately now/);
  });

  it('R4: a corrupt or unreadable state file is ignored with one warning, never a crash', async () => {
    const files = join(state, 'multileg');
    expect((await run('wrongpw', '/auth/corrupt0')).code).toBe(22);
    writeFileSync(join(files, 'refusals.json'), '{"v":1,"refusals":');
    const corrupt = await runCli(
      ['-f', '-u', 'EXAMPLE\\alice:wrongpw', '--cacert', ca, `${server.origin}/auth/corrupt1`],
      {
        env: { XDG_STATE_HOME: state },
      },
    );
    expect(corrupt.code).toBe(22);
    expect(
      corrupt.stderr.match(/Warning: .*refusals\.json is not a record of refused passwords: ignored/g),
    ).toHaveLength(1);
    // Ignored: the password was sent (as by a first run), refused, and the file written anew.
    expect(tries('/auth/corrupt1')).toBe(1);
    expect((await run('wrongpw', '/auth/corrupt2')).code).toBe(22);
    expect(tries('/auth/corrupt2')).toBe(0);
  });

  it('R4: 20 processes started at once with one wrong password send it once (a lock per password and place)', async () => {
    const burst = await Promise.all(Array.from({ length: 20 }, (_, i) => run('burstpw', `/auth/burst${i}`)));
    expect(burst.map((r) => r.code)).toEqual(Array(20).fill(22));
    expect(tries('/auth/burst')).toBe(1);
    expect(readdirSync(join(state, 'multileg')).filter((f) => f.includes('lock') || f.startsWith('.tmp'))).toEqual([]);
  });

  describe.runIf(process.platform === 'linux')(
    'R4/R1: a run waiting behind a stopped (Ctrl-Z) run of the same password: the holder is alive, so its lock stands and the waiter never sends the password; the waiter\u2019s wait ends at its own bound (-m, or limits.queueTimeout), its poll of the lock with it, and the user is told the holder is stopped and what to do',
    () => {
      let holder: ChildProcess | undefined;

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
        const child = spawn(process.execPath, [...NODE_ARGS, BIN, ...args(`${path}?delay=2000`)], {
          env,
          stdio: 'ignore',
        });
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

      /**
       * A run without -m and `multileg doctor`, started together behind one stopped holder of the same
       * password's lock: each waits out limits.queueTimeout (60 s) — once for both, not once each.
       */
      let behindStopped: Promise<{ pid: number; waiter: CliResult; doctor: CliResult }> | undefined;
      const bothBehindStopped = () =>
        (behindStopped ??= (async () => {
          try {
            const pid = await stoppedHolder('/auth/stop-q-holder');
            const env = { env: { XDG_STATE_HOME: state } };
            const [waiter, doctor] = await Promise.all([
              runCli(args('/auth/stop-q-waiter', ['-v', '-d', 'name=value']), env),
              runCli(
                ['doctor', '-u', 'EXAMPLE\\alice:wrongpw', '--cacert', ca, `${server.origin}/auth/stop-doc-waiter`],
                env,
              ),
            ]);
            return { pid, waiter, doctor };
          } finally {
            await endHolder();
          }
        })());

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

      it('R1/R4: behind a stopped holder a run without -m ends at limits.queueTimeout (60 s): its request goes without the password — sent once, its first 401 the answer (-v says so) — exit 22 on the 401, and the line says the holder is stopped', async () => {
        const { pid, waiter } = await bothBehindStopped();
        expect(waiter.code).toBe(22);
        expect(tries('/auth/stop-q-waiter')).toBe(0);
        // Before: its first 401 was dropped at queueTimeout and the request (its -d body) went again bare.
        expect(
          server.exchanges.filter((e) => e.path === '/auth/stop-q-waiter').map((e) => [e.method, e.bodyLength]),
        ).toEqual([['POST', 10]]);
        // One 401 in the trace (labelled held while the lock wait was said), then why it stood.
        expect(waiter.stderr.match(/^< 401 /gm)).toHaveLength(1);
        expect(waiter.stderr).toContain(
          "* its 401 is the answer: no credentials were sent: another run's try of the same password did not end within 60 s (limits.queueTimeout)",
        );
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
      }, 180_000);

      it('R1/R4: multileg doctor behind a stopped holder: its authentication check ends at limits.queueTimeout (60 s), FAIL naming the lock wait and the stopped holder (it said "401 without a handshake"), its request sent once without the password', async () => {
        const { pid, doctor } = await bothBehindStopped();
        expect(doctor.code).toBe(1);
        expect(tries('/auth/stop-doc-waiter')).toBe(0);
        // The schemes check's two probes (HTTP/2, HTTP/1.1), then the authentication check's
        // request, once (before: sent again bare for a 401 to show), none carrying anything.
        expect(
          server.exchanges
            .filter((e) => e.path === '/auth/stop-doc-waiter')
            .map((e) => [e.protocol, e.requestHeaders.authorization]),
        ).toEqual([
          ['h2', undefined],
          ['http/1.1', undefined],
          ['h2', undefined],
        ]);
        expect(doctor.stdout).toMatch(
          new RegExp(
            `FAIL {2}authentication: 401: no credentials were sent: the request waited \\d+ s for \\S+\\.lock, held by the run of pid ${pid} while it tries the same password there \\(R4: one try at a time\\); ${stoppedWords(pid).replaceAll('(', '\\(').replaceAll(')', '\\)')}, then run again\\n`,
          ),
        );
        expect(doctor.stdout + doctor.stderr).not.toContain('wrongpw');
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
});

describe('R4: a forwarding proxy\u2019s refusal of --proxy-user is held back across runs (its 407 shown, as curl does)', () => {
  let server: ReferenceServer;
  let proxy: ReferenceProxy;
  let dir: string;
  let ca: string;
  beforeAll(async () => {
    server = await startReferenceServer({ mode: 'session' });
    proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
    dir = mkdtempSync(join(tmpdir(), 'multileg-proxy-refusals-'));
    ca = join(dir, 'ca.pem');
    writeFileSync(ca, proxy.ca);
  });
  afterAll(async () => {
    await proxy.close();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('R4/H5: a wrong proxy password over 3 runs is sent once; the next runs say it is held back and how to try it now (not "give --proxy-user"), and --forget-refusals sends it', async () => {
    const state = mkdtempSync(join(dir, 'state-'));
    const run = (path: string, extra: string[] = []) =>
      runCli(
        [
          '-f',
          '-x',
          proxy.origin,
          '--proxy-cacert',
          ca,
          '-U',
          'proxyuser:wrongpw',
          ...extra,
          `http://localhost:${server.port}${path}`,
        ],
        { env: { XDG_STATE_HOME: state } },
      );
    const tries = (path: string) =>
      proxy.exchanges.filter((e) => e.target.endsWith(path) && e.proxyAuthorization).length;
    const first = await run('/public/p0');
    expect(first.code).toBe(22);
    expect(first.stderr).toContain('it refused the credentials');
    expect(tries('/public/p0')).toBe(1);
    for (const path of ['/public/p1', '/public/p2']) {
      const r = await run(path, path.endsWith('2') ? ['-v'] : []);
      expect(r.code).toBe(22);
      // Before: the password went again with each run (the delivered 407's refusal counted for nothing).
      expect(tries(path)).toBe(0);
      expect(r.stderr).toMatch(
        new RegExp(
          `multileg: proxy ${proxy.origin.replaceAll('.', '\\.')} answered 407 and offered Basic: no credentials were sent: the password for proxyuser, refused by it \\d+ s ago, is held back \\d+ s more so a wrong password does not lock the account; fix the password, or pass --forget-refusals to try it now\\n`,
        ),
      );
      expect(r.stderr).not.toContain('give --proxy-user');
      // -v says why the 407 went unanswered (before: "nothing configured for Basic").
      if (path.endsWith('2'))
        expect(r.stderr).toMatch(/its 407 goes unanswered: it refused the credentials lately: held back \d+ s more/);
      expect(r.stderr).not.toContain('wrongpw');
    }
    const forced = await run('/public/p3', ['--forget-refusals']);
    expect(forced.code).toBe(22);
    expect(tries('/public/p3')).toBe(1);
  });
  it('R4/H5: multileg doctor through a proxy sends a wrong --proxy-user once in a run (each check made its own agent: it went with each) and not at all while it is held back; --forget-refusals sends it once', async () => {
    const state = mkdtempSync(join(dir, 'state-'));
    const tries = () => proxy.exchanges.filter((e) => e.proxyAuthorization).length;
    const doctor = async (target: string, extra: string[] = []) => {
      const before = tries();
      const r = await runCli(
        ['doctor', '-x', proxy.origin, '--proxy-cacert', ca, '-k', '-U', 'proxyuser:wrongpw', ...extra, target],
        { env: { XDG_STATE_HOME: state } },
      );
      expect(r.code).toBe(1);
      expect(r.stdout + r.stderr).not.toContain('wrongpw');
      return tries() - before;
    };
    // A CONNECT tunnel (the client certificate probe's, then the schemes probes'), and a forwarded request.
    const tunnelled = `https://localhost:${server.port}/public/doc`;
    expect(await doctor(tunnelled)).toBe(1);
    expect(await doctor(tunnelled)).toBe(0);
    expect(await doctor(`http://localhost:${server.port}/public/doc`)).toBe(0);
    expect(await doctor(tunnelled, ['--forget-refusals'])).toBe(1);
    // The command's run after them holds it back too.
    const before = tries();
    const run = await runCli(['-x', proxy.origin, '--proxy-cacert', ca, '-k', '-U', 'proxyuser:wrongpw', tunnelled], {
      env: { XDG_STATE_HOME: state },
    });
    expect(run.code).toBe(7);
    expect(tries() - before).toBe(0);
  });
  it('H5/R4: multileg doctor through a forwarding proxy that stood at 407 says so, refused, held back or no -U given (it said the server asks for authentication and there is no password)', async () => {
    const state = mkdtempSync(join(dir, 'state-'));
    const doctor = async (user: string[]) => {
      const r = await runCli(
        ['doctor', '-x', proxy.origin, '--proxy-cacert', ca, ...user, `http://localhost:${server.port}/public/d407`],
        { env: { XDG_STATE_HOME: state } },
      );
      expect(r.code).toBe(1);
      expect(r.stdout).not.toContain('authentication: the server asks for authentication');
      expect(r.stdout).not.toContain('no authentication asked for at this URL');
      return r.stdout.split('\n').find((l) => l.startsWith('FAIL'));
    };
    const head = `FAIL  proxy authentication: proxy ${proxy.origin} answered 407 and offered Basic: `;
    expect(await doctor(['-U', 'proxyuser:wrongpw'])).toBe(
      `${head}it refused the credentials; check --proxy-user (DOMAIN\\user:password)`,
    );
    expect(await doctor(['-U', 'proxyuser:wrongpw'])).toMatch(
      new RegExp(
        `^${head.replaceAll('.', '\\.')}no credentials were sent: the password for proxyuser, refused by it \\d+ s ago, is held back \\d+ s more so a wrong password does not lock the account; fix the password, or pass --forget-refusals to try it now$`,
      ),
    );
    expect(await doctor([])).toBe(`${head}give --proxy-user user:password`);
  });
});

describe('R1/R4: the wait for another run\u2019s lock behind a final 407 (review r74)', () => {
  it('R1/R4: a 407\'s lock wait is looked up at the proxy, where its password\'s lock is kept: the "waited for another run" line shows for proxies', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'multileg-proxy-lock-'));
    const proxy = 'https://proxy.example:3128';
    const place = { origin: proxy, proxy: true, credentials: { username: 'proxyuser', password: 'pw' } };
    const file = new RefusalFile({ dir, warn: () => {} });
    try {
      // The lock of this proxy password, then held by another live run (our parent).
      expect(file.recall(place)).toBeUndefined();
      const lock = join(dir, readdirSync(dir).find((f) => f.endsWith('.lock'))!);
      file.release(place);
      const read = (f: () => string) => {
        try {
          return f().trim() || '-';
        } catch {
          return '-';
        }
      };
      const boot = read(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8'));
      writeFileSync(lock, `${process.ppid} ${boot} ${hostname()} ${read(() => readlinkSync('/proc/self/ns/pid'))}`);
      const waiting = file.recall(place) as Promise<unknown>;
      // Before: undefined, looked up by the URL's origin.
      expect(lockWaitBehind(file, 407, 'http://intranet.example', proxy)?.holder).toBe(
        `the run of pid ${process.ppid}`,
      );
      // A 401 at the origin waited for nothing here.
      expect(lockWaitBehind(file, 401, 'http://intranet.example', proxy)).toBeUndefined();
      rmSync(lock);
      await waiting;
      expect(lockWaitBehind(file, 407, 'http://intranet.example', proxy)).toBeUndefined();
    } finally {
      file.releaseAll();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('R1/R4: -v on a forwarding proxy\u2019s 407 delivered while the refusal memory did not answer', () => {
  it("R1/R4: -v says a proxy's 407 went unanswered because another run's try of the password did not end within limits.queueTimeout (recall-timeout), not that the proxy refused it", () => {
    const lines: string[] = [];
    const trace = new Trace((line) => lines.push(line));
    const event: ProxyUnansweredEvent = {
      proxy: 'http://proxy.example:3128',
      origin: 'http://intranet.example',
      path: '/',
      reason: 'recall-timeout',
      queueTimeout: 60_000,
      schemes: ['NTLM'],
      unusable: [],
      time: Date.now(),
    };
    try {
      channel(PROXY_UNANSWERED_CHANNEL).publish(event);
    } finally {
      trace.stop();
    }
    // Before: the agent published `refused-lately` with heldBackFor 0 ("it refused the credentials
    // lately: held back 0 s more"), and this reason fell through to "nothing configured for NTLM".
    expect(lines).toEqual([
      "* proxy http://proxy.example:3128: its 407 goes unanswered: no credentials were sent: another run's try of the same password did not end within 60 s (limits.queueTimeout)",
    ]);
  });
});
