/**
 * The command's memory of refused passwords across its runs (R4, account lockout): a file in the
 * user's state directory (`$XDG_STATE_HOME/multileg/`, else `~/.local/state/multileg/`), so that a
 * wrong password run by one process per URL (cron) is held back by the next processes as the agent
 * holds it back within one (30 s doubling to 30 min), not sent once per run.
 *
 * - `refusals.json` (0600, in a 0700 directory): per origin or proxy, user name and password,
 *   when it was last refused, until when it is held back and how many times in a row. The password
 *   is known only by HMAC-SHA-256 under `key` (32 random bytes, 0600, made once): a different
 *   password has another record, and the file tells nothing of the password.
 * - Concurrency: a process about to send a password not proved there takes `<id>.lock` (made with
 *   O_EXCL; its pid, boot id, host name, PID namespace and start time inside) until that handshake
 *   ends, and reads the record only then: of a burst of processes with one wrong password, one
 *   sends it and the others read its refusal. The holder rewrites its lock every
 *   {@link LOCK_REFRESH_MS}. A lock whose pid can be checked here (same host, boot and PID
 *   namespace) is broken only when that process is gone (no process has the pid, or the one that
 *   has it started at another time: the pid reused; one stopped with Ctrl-Z lives, and its waiters
 *   say it is stopped); any other only once it has gone unrewritten
 *   for {@link LOCK_WAIT_MS}, by the waiter's own clock or the file system's (never by comparing
 *   two hosts' clocks). The file is written whole to a temporary file renamed over it, under
 *   `refusals.json.lock` (held for the write only).
 * - A file that cannot be read or is not such a record is ignored with one warning; the next
 *   refusal writes it anew. Nothing here throws into a request.
 */
import { createHmac, randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  fstatSync,
  fsyncSync,
  linkSync,
  openSync,
  readFileSync,
  readlinkSync,
  readSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { RefusalMemory, RefusalPlace, RememberedRefusal } from '../session/refusal-memory.ts';
import { ownDir } from './dirs.ts';

/**
 * How long a lock whose holder cannot be checked from here (another host, boot or PID namespace)
 * must go unrewritten before it is broken: four missed {@link LOCK_REFRESH_MS}.
 */
export const LOCK_WAIT_MS = 60_000;
/** How often a run rewrites the locks it holds: the sign, to runs that cannot check its pid, that it lives. */
export const LOCK_REFRESH_MS = 15_000;
/** How often a waiter asks the file system's clock how long ago a lock it cannot check was rewritten. */
const LOCK_PROBE_MS = 5_000;
/** How long the file lock of one write is waited for before it is broken (a write takes microseconds). */
const WRITE_LOCK_WAIT_MS = 5_000;
/** A record whose hold-back ended this long ago is dropped (lockout counters have long reset by then). */
const FORGET_AFTER_MS = 24 * 3_600_000;
/** Most records kept (the oldest go first): the file stays small. */
const MAX_RECORDS = 1_000;

interface Record_ extends RememberedRefusal {
  readonly kind: 'origin' | 'proxy';
  readonly origin: string;
  readonly user: string;
}

interface StateFile {
  readonly v: 1;
  readonly refusals: { [id: string]: Record_ };
}

/** How long a lock's holder must be seen stopped, look after look, before a waiter says it is. */
const STOPPED_SURE_MS = 1_000;

/** R4, R1: the request went without the password because another run's try of it held its lock. */
export function lockWaitLine(wait: LockWait): string {
  return `no credentials were sent: ${lockWaitNote(wait)}`;
}

/** Whose lock the request waited for, how long, and what to do. */
export function lockWaitNote(wait: LockWait): string {
  const waited = Math.round((Date.now() - wait.since) / 1000);
  const what = wait.stopped
    ? // Alive, so its lock stands (R4); deleting it would let its password go twice.
      `${stoppedNote(wait.holder, wait.stopped)}, then run again`
    : 'run again once that run has ended, or delete the lock if no such run is alive';
  return `the request waited ${waited} s for ${wait.lock}, held by ${wait.holder} while it tries the same password there (R4: one try at a time); ${what}`;
}

/** A wait for another run's lock this long or longer is a warning, not only a -v line. */
const LONG_WAIT_S = 5;

/** A wait for another run's lock (see {@link RefusalFile.waitingFor}). */
export interface LockWait {
  readonly lock: string;
  /** Who holds it, in words: `pid 42 on host web-1`. */
  readonly holder: string;
  /** When the wait began (`Date.now()`). */
  readonly since: number;
  /**
   * The holder, a process of this host, was last seen stopped (Ctrl-Z: /proc state `T`; `t`, by
   * a debugger): alive, so its lock stands, but it makes no progress until resumed. Updated as the
   * wait goes on.
   */
  stopped?: 'T' | 't' | undefined;
}

/**
 * What to do about a holder seen stopped, in words: `the run of pid 42 is stopped (Ctrl-Z): resume
 * it with fg, or end it`.
 */
export function stoppedNote(holder: string, stopped: 'T' | 't'): string {
  return stopped === 'T'
    ? `${holder} is stopped (Ctrl-Z): resume it with fg, or end it`
    : `${holder} is stopped by a debugger (traced): resume it there, or end it`;
}

/** Who holds a lock: a pid, and the host, boot and PID namespace that pid means something in. */
interface LockOwner {
  readonly pid: number;
  readonly boot: string;
  readonly host: string;
  /** `pid:[4026531836]` (readlink /proc/self/ns/pid); empty where there is no /proc. */
  readonly ns: string;
  /**
   * When the process started, in clock ticks since the boot (/proc/PID/stat's field 22): with the
   * boot id, which process the pid named, so a pid reused by another process is told apart.
   * Empty where unknown (no /proc; a lock of an older version).
   */
  readonly start: string;
}

/**
 * This process as a lock's owner. A pid names a process only in its PID namespace: two containers
 * of one pod (or hostNetwork pods, `docker run --hostname`) share a host name and a boot id but not
 * their process tables, and may both be PID 1. Where no /proc tells boot and namespace (not
 * Linux), the host name alone.
 */
function lockOwner(): LockOwner {
  const read = (f: () => string) => {
    try {
      return f().trim();
    } catch {
      return '';
    }
  };
  return {
    pid: process.pid,
    boot: read(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8')),
    host: hostname().replace(/\s+/g, '') || '-',
    ns: read(() => readlinkSync('/proc/self/ns/pid')).replace(/\s+/g, ''),
    start: procStat(process.pid)?.start ?? '',
  };
}

/** A lock's text: `pid boot host ns start` (`-` for what is not known). */
function lockText(o: LockOwner): string {
  return `${o.pid} ${o.boot || '-'} ${o.host || '-'} ${o.ns || '-'} ${o.start || '-'}`;
}

/**
 * The owner a lock's text names; undefined for any other text (an older version's, or one being
 * written). The previous version's four words (no start time) are read too: its pid is checked
 * as it was, by whether a process has it.
 */
function parseOwner(text: string): LockOwner | undefined {
  const words = text.trim().split(' ');
  if (words.length !== 4 && words.length !== 5) return undefined;
  const [pid, boot, host, ns, start = ''] = words.map((w) => (w === '-' ? '' : w)) as [
    string,
    string,
    string,
    string,
    string?,
  ];
  const n = Number(pid);
  return Number.isInteger(n) && n > 0 && /^\d*$/.test(start) ? { pid: n, boot, host, ns, start } : undefined;
}

/** A lock this run holds: its file kept open, to rewrite it (and to tell it from another run's that replaced it). */
interface HeldLock {
  readonly path: string;
  readonly fd: number;
  readonly text: string;
}

/** What a waiter has seen of a lock it cannot check (see {@link RefusalFile}'s `#unrewritten`). */
interface LockWatch {
  /** The lock as last seen: inode, times, text. */
  seen: string;
  /** Since when (the waiter's clock) it has been seen so. */
  since: number;
  /** When the file system's clock was last asked (the waiter's clock). */
  probed: number;
  /** It was broken (and said so). */
  broken?: boolean;
  /** Its holder, checked here, was stopped when last looked at (see {@link LockWait.stopped}). */
  stopped?: 'T' | 't' | undefined;
  /** Since when (the waiter's clock) it has been seen stopped at every look. */
  stoppedSince?: number | undefined;
}

const newWatch = (): LockWatch => ({ seen: '', since: 0, probed: Number.NEGATIVE_INFINITY });

/** What a synchronous wait for the write lock waits on (nothing wakes it: it times out). */
const PAUSE = new Int32Array(new SharedArrayBuffer(4));

/**
 * Waits `ms`, or until `signal` aborts. Unref'd: a poll never holds the process by itself; the
 * request that waits on it is held by the agent's own bound (limits.queueTimeout).
 */
const sleep = (ms: number, signal: AbortSignal | undefined) =>
  new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, signal?.aborted ? 0 : ms);
    timer.unref();
    signal?.addEventListener('abort', done, { once: true });
  });

/**
 * Whether the process that took a lock as pid `pid`, started at `start` (empty: not known), still
 * runs. Not when no process has the pid; nor when the one that has it started at another time:
 * the pid was reused (a run killed, then its pid given to any process — a lock of a dead run was
 * honoured for as long as that one lived). Nor for a zombie: kill(pid, 0) still answers for one,
 * but a run killed under `timeout -s KILL` (which kills itself too) is such an orphan until PID 1
 * reaps it — late, or never under a PID 1 that reaps nothing — and its lock is no live run's.
 * Linux's /proc tells the last two; where it cannot be read the pid's answer stands. A stopped
 * process (Ctrl-Z) is alive: noted in `watch`, for the words of the run waiting for it.
 */
function alive(pid: number, start: string, watch?: LockWatch): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  const stat = procStat(pid);
  if (stat === undefined) return true;
  const live = stat.state !== 'Z' && stat.state !== 'X' && (start === '' || stat.start === start);
  // Stopped is alive (it may be resumed; its try of the password may yet go out): only noted, for the waiter's words.
  if (live && watch && (stat.state === 'T' || stat.state === 't')) watch.stopped = stat.state;
  return live;
}

/** `pid`'s state and start time (clock ticks since boot) from /proc/PID/stat; undefined off Linux or unreadable. */
function procStat(pid: number): { state: string; start: string } | undefined {
  if (process.platform !== 'linux') return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // `pid (comm) S ppid …`: the fields after the last ')' (a comm may hold one) start at field 3,
    // so field 22 (starttime) is the 20th of them.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const start = fields[19] ?? '';
    return { state: fields[0] ?? '', start: /^\d+$/.test(start) ? start : '' };
  } catch {
    return undefined;
  }
}

function isRecord(r: unknown): r is Record_ {
  const o = r as Record_;
  return (
    typeof o === 'object' &&
    o !== null &&
    (o.kind === 'origin' || o.kind === 'proxy') &&
    typeof o.origin === 'string' &&
    typeof o.user === 'string' &&
    Number.isFinite(o.at) &&
    Number.isFinite(o.until) &&
    Number.isInteger(o.times) &&
    o.times >= 0
  );
}

export class RefusalFile implements RefusalMemory {
  /** The state directory, or how to find it: resolved only once a password would be sent unproved. */
  readonly #dirOf: string | (() => string);
  #dir = '';
  #file = '';
  /** --forget-refusals: a password held back goes now (its count stays: a refusal again waits longer). */
  readonly #forget: boolean;
  /**
   * When this run began: --forget-refusals forgets the refusals of earlier runs, not one met in this
   * run (doctor's checks each make an agent, which would otherwise each send a password just refused).
   */
  readonly #started = Date.now();
  readonly #warn: (line: string) => void;
  /** -v: lines about waiting for another run's lock. */
  readonly #verbose: ((line: string) => void) | undefined;
  /** This host, boot and PID namespace, written into each lock with the pid: a pid means something only there. */
  readonly #self = lockOwner();
  /** Waits for another run's lock going on now, by place: for the message of a request that went without the password. */
  readonly #waiting = new Map<string, LockWait>();
  #key: Buffer | undefined;
  /** Something failed already: said once, then the command goes on without the file. */
  #broken = false;
  #warned = new Set<string>();
  /** Locks this process holds, by id: rewritten every LOCK_REFRESH_MS, taken away at exit whatever happens. */
  readonly #locks = new Map<string, HeldLock>();
  /** Rewrites the locks held, while there are any (unref'd: it never keeps the process). */
  #refresher: NodeJS.Timeout | undefined;
  /** What held a password back in this run, by place: for the message that says so. */
  readonly #held = new Map<string, RememberedRefusal>();
  /**
   * Recalls given up (their signal aborted) that ended holding no lock, by id: the one release
   * the agent still makes for each lets nothing go (another request of this run may hold the lock).
   */
  readonly #givenUp = new Map<string, number>();

  /**
   * `dir`: the state directory, or a function that finds it (called once, when the file is first
   * needed; what it throws is said in the one warning and the run goes on with its own memory).
   * `verbose`: -v's lines (a wait for another run's lock).
   */
  constructor(opts: {
    dir: string | (() => string);
    forget?: boolean;
    warn: (line: string) => void;
    verbose?: ((line: string) => void) | undefined;
  }) {
    this.#dirOf = opts.dir;
    this.#forget = opts.forget === true;
    this.#warn = opts.warn;
    this.#verbose = opts.verbose;
    process.once('exit', () => this.releaseAll());
  }

  /** Takes away every lock this run holds: at exit, and on a signal that ends the command (main.ts). */
  releaseAll(): void {
    for (const lock of this.#locks.values()) this.#let(lock);
    this.#locks.clear();
    this.#stopRefresher();
  }

  /** The record that held the password back at `origin` (a proxy's with `proxy`) in this run, if one did. */
  heldBack(origin: string, proxy = false): RememberedRefusal | undefined {
    return this.#held.get(`${proxy ? 'proxy' : 'origin'} ${origin}`);
  }

  /**
   * The wait for another run's lock at `origin` (a proxy's with `proxy`) that the agent gave up on
   * (limits.queueTimeout, or the request's abort: -m), its request going without the password; or
   * one still going on. Kept until the next recall there.
   */
  waitingFor(origin: string, proxy = false): LockWait | undefined {
    return this.#waiting.get(`${proxy ? 'proxy' : 'origin'} ${origin}`);
  }

  recall(
    place: RefusalPlace,
    signal?: AbortSignal,
  ): RememberedRefusal | undefined | Promise<RememberedRefusal | undefined> {
    const id = this.#id(place);
    if (id === undefined) return undefined;
    const key = `${place.proxy ? 'proxy' : 'origin'} ${place.origin}`;
    // A wait given up before is no reason for this request's outcome.
    this.#waiting.delete(key);
    const lock = join(this.#dir, `${id.slice(0, 32)}.lock`);
    const watch = newWatch();
    const taken = this.#tryLock(lock, { watch });
    if (taken) {
      this.#hold(id, taken);
      return this.#read(place, id);
    }
    // Another run (or another request of this one) is trying this password here: its outcome is
    // read once it ends. Said (-v), since the wait may be long and nothing else shows it. A holder
    // whose pid is checked and alive is waited for as long as it lives, stopped (Ctrl-Z) too: its
    // try may yet go out. This wait is bounded by the agent's (limits.queueTimeout, or -m), past
    // which the request goes without the password (R1) and `signal` ends the poll.
    const holder = this.#describe(this.#look(lock)?.owner);
    const wait: LockWait = { lock, holder, since: Date.now() };
    this.#waiting.set(key, wait);
    this.#verbose?.(`* waiting for ${lock}: ${holder}, trying the same password at ${place.origin}, holds it`);
    return (async () => {
      let pause = 10;
      let held = this.#tryLock(lock, { watch });
      while (held === undefined) {
        this.#noteStopped(wait, watch, place.origin);
        await sleep(pause, signal);
        if (signal?.aborted) {
          // Given up: the request went without the password. Its wait stays, for the message that says why.
          this.#givenUp.set(id, (this.#givenUp.get(id) ?? 0) + 1);
          return undefined;
        }
        pause = Math.min(pause * 2, 100);
        held = this.#tryLock(lock, { watch });
      }
      if (this.#waiting.get(key) === wait) this.#waiting.delete(key);
      const waited = Math.round((Date.now() - wait.since) / 1000);
      // A lock broken was said when it was.
      if (!watch.broken && waited >= LONG_WAIT_S)
        this.#warn(`waited ${waited} s for ${holder}, which was trying the same password at ${place.origin}`);
      else if (!watch.broken) this.#verbose?.(`* ${lock} released after ${Date.now() - wait.since} ms: going on`);
      this.#hold(id, held);
      return this.#read(place, id);
    })();
  }

  refused(place: RefusalPlace, refusal: RememberedRefusal): void {
    const id = this.#id(place);
    if (id === undefined) return;
    const { credentials } = place;
    this.#update((refusals) => {
      refusals[id] = {
        kind: place.proxy ? 'proxy' : 'origin',
        origin: place.origin,
        user: credentials.domain ? `${credentials.domain}\\${credentials.username}` : credentials.username,
        at: refusal.at,
        until: refusal.until,
        times: refusal.times,
      };
    });
  }

  proved(place: RefusalPlace): void {
    const id = this.#id(place);
    // Written only when there is a record to clear: a success costs one read.
    if (id === undefined || this.#load()?.refusals[id] === undefined) return;
    this.#update((refusals) => {
      delete refusals[id];
    });
  }

  release(place: RefusalPlace): void {
    const id = this.#id(place);
    const givenUp = id === undefined ? 0 : (this.#givenUp.get(id) ?? 0);
    if (givenUp > 0) {
      // The release of a recall given up, which took no lock.
      if (givenUp === 1) this.#givenUp.delete(id!);
      else this.#givenUp.set(id!, givenUp - 1);
      return;
    }
    const lock = id === undefined ? undefined : this.#locks.get(id);
    if (lock === undefined) return;
    this.#locks.delete(id!);
    this.#let(lock);
    if (this.#locks.size === 0) this.#stopRefresher();
  }

  /**
   * Says once per stop when the holder of the lock waited for is seen stopped (Ctrl-Z): alive, so
   * nothing breaks its lock, but nothing comes of the wait until it is resumed or ended, which only
   * the user can do (a warning: the wait is otherwise silent, up to its bound).
   */
  #noteStopped(wait: LockWait, watch: LockWatch, origin: string) {
    const now = Date.now();
    if (watch.stopped === undefined) watch.stoppedSince = undefined;
    else watch.stoppedSince ??= now;
    const was = wait.stopped;
    // Seen so for STOPPED_SURE_MS on end: a traced run is `t` a moment at each of its tracer's stops.
    wait.stopped =
      watch.stoppedSince !== undefined && now - watch.stoppedSince >= STOPPED_SURE_MS ? watch.stopped : undefined;
    if (wait.stopped === undefined || was !== undefined) return;
    this.#warn(
      `${stoppedNote(`${wait.holder}, which holds ${wait.lock} while it tries the same password at ${origin},`, wait.stopped)}; this run waits for it no longer than its own bound, then goes without the password`,
    );
  }

  /** Keeps `lock` as the one of `id`, rewritten every LOCK_REFRESH_MS until released. */
  #hold(id: string, lock: HeldLock): void {
    this.#locks.set(id, lock);
    if (this.#refresher !== undefined || lock.fd < 0) return;
    this.#refresher = setInterval(() => {
      for (const held of this.#locks.values()) {
        if (held.fd < 0) continue;
        try {
          // Written, not utimes(): the file system stamps the time (a file server's clock for all
          // its clients alike), and fsync sends it there now (NFS writes back lazily).
          writeSync(held.fd, held.text, 0);
          fsyncSync(held.fd);
        } catch {
          // Left as it is: broken by others once LOCK_WAIT_MS passes, as a dead run's would be.
        }
      }
    }, LOCK_REFRESH_MS);
    this.#refresher.unref();
  }

  #stopRefresher(): void {
    clearInterval(this.#refresher);
    this.#refresher = undefined;
  }

  /**
   * Takes a held lock away: its file unlinked only while it is still the one this run made — a
   * lock broken meanwhile (this run stopped a minute, say) may be another run's now.
   */
  #let(lock: HeldLock): void {
    if (lock.fd < 0) return;
    try {
      const mine = fstatSync(lock.fd);
      const there = statSync(lock.path);
      if (mine.ino === there.ino && mine.dev === there.dev) this.#unlink(lock.path);
    } catch {
      // Gone already.
    }
    try {
      closeSync(lock.fd);
    } catch {
      // Closed already.
    }
  }

  /** The record for `id`, as the agent takes it (a hold-back in force, or only the count). */
  #read(place: RefusalPlace, id: string): RememberedRefusal | undefined {
    const r = this.#load()?.refusals[id];
    if (r === undefined) return undefined;
    const now = Date.now();
    if ((this.#forget && r.at < this.#started) || r.until <= now) return { at: r.at, until: 0, times: r.times };
    this.#held.set(`${place.proxy ? 'proxy' : 'origin'} ${place.origin}`, r);
    return { at: r.at, until: r.until, times: r.times };
  }

  /** The record's id: HMAC-SHA-256 of the place, user and password under the directory's key. */
  #id(place: RefusalPlace): string | undefined {
    const key = this.#keyOf();
    if (key === undefined) return undefined;
    const c = place.credentials;
    return createHmac('sha256', key)
      .update(JSON.stringify([place.proxy ? 'proxy' : 'origin', place.origin, c.domain ?? '', c.username, c.password]))
      .digest('hex');
  }

  /** The directory's key, made (0600, in a 0700 directory) the first time; undefined when that cannot be. */
  #keyOf(): Buffer | undefined {
    if (this.#key || this.#broken) return this.#key;
    try {
      if (this.#dir === '') {
        // Resolved only now: a run that sends no password unproved never needs a home directory.
        const dir = typeof this.#dirOf === 'string' ? this.#dirOf : this.#dirOf();
        this.#dir = dir;
        this.#file = join(dir, 'refusals.json');
      }
      // Root with a user's HOME (sudo -E, su) makes nothing in that user's tree: it would be theirs no more.
      const st = ownDir(this.#dir);
      // Never readable by others, whoever made it.
      if ((st.mode & 0o077) !== 0) chmodSync(this.#dir, 0o700);
      const path = join(this.#dir, 'key');
      let key = this.#readKey(path);
      if (key === undefined) {
        // Made aside and linked in: of two processes making it at once, both use the one linked first.
        const temp = this.#writeTemp(randomBytes(32));
        try {
          linkSync(temp, path);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        } finally {
          this.#unlink(temp);
        }
        key = this.#readKey(path);
      }
      if (key === undefined) {
        this.#warnOnce(`${path} is not a key of 32 bytes: made anew (the refusals recorded under it are forgotten)`);
        renameSync(this.#writeTemp(randomBytes(32)), path);
        key = this.#readKey(path);
      }
      this.#key = key;
      return key;
    } catch (err) {
      this.#broken = true;
      // A container's read-only or passwd-less home: the lockout protection across runs is lost, and how to keep it is said.
      this.#warnOnce(
        `${this.#dir ? `${this.#dir}: ` : ''}${(err as Error).message}; refused passwords are remembered in this run only: set XDG_STATE_HOME to a writable directory (in a container, a persistent volume) to remember them across runs`,
      );
      return undefined;
    }
  }

  #readKey(path: string): Buffer | undefined {
    try {
      const key = readFileSync(path);
      return key.length === 32 ? key : undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** The file's records, or undefined: none yet, or not readable (said once). */
  #load(): StateFile | undefined {
    let text: string;
    try {
      text = readFileSync(this.#file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
        this.#warnOnce(`${this.#file} cannot be read (${(err as NodeJS.ErrnoException).code}): ignored`);
      return undefined;
    }
    try {
      const state = JSON.parse(text) as StateFile;
      if (state?.v !== 1 || typeof state.refusals !== 'object' || state.refusals === null) throw new Error('not v1');
      const refusals: StateFile['refusals'] = {};
      for (const [id, r] of Object.entries(state.refusals)) if (isRecord(r)) refusals[id] = r;
      return { v: 1, refusals };
    } catch {
      this.#warnOnce(`${this.#file} is not a record of refused passwords: ignored (written anew at the next refusal)`);
      return undefined;
    }
  }

  /**
   * Reads, changes and writes the file under its write lock: a temporary file renamed over it.
   * Synchronous (the lock is waited for without the event loop, a few ms at most): the record is
   * written before the lock of the try it tells of is released, and before the process exits.
   */
  #update(change: (refusals: StateFile['refusals']) => void): void {
    if (this.#broken) return;
    const lock = `${this.#file}.lock`;
    const deadline = Date.now() + WRITE_LOCK_WAIT_MS;
    let held = this.#tryLock(lock);
    while (held === undefined) {
      Atomics.wait(PAUSE, 0, 0, 2);
      held = this.#tryLock(lock, { force: Date.now() > deadline });
    }
    try {
      const refusals = { ...this.#load()?.refusals };
      change(refusals);
      const now = Date.now();
      const kept = Object.entries(refusals)
        .filter(([, r]) => r.until > now - FORGET_AFTER_MS)
        .sort(([, a], [, b]) => b.at - a.at)
        .slice(0, MAX_RECORDS);
      const text = `${JSON.stringify({ v: 1, refusals: Object.fromEntries(kept) }, null, 1)}\n`;
      renameSync(this.#writeTemp(Buffer.from(text)), this.#file);
    } catch (err) {
      this.#warnOnce(`${this.#file} cannot be written: ${(err as Error).message}`);
    } finally {
      this.#let(held);
    }
  }

  /** Writes `data` to a new temporary file of this process in the directory (0600); returns its path. */
  #writeTemp(data: Buffer): string {
    const path = join(this.#dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    const fd = openSync(path, 'wx', 0o600);
    try {
      writeSync(fd, data);
    } finally {
      closeSync(fd);
    }
    return path;
  }

  /**
   * Takes the lock file `path` (O_EXCL, this run's owner text inside), kept open: undefined when
   * another holds it. A lock left by a run that is gone is broken (see `#stale`), and so is any
   * with `force` (the write lock, held for microseconds, waited for too long). A lock that cannot
   * be made at all (a read-only directory) is said once and taken as held (fd -1).
   */
  #tryLock(path: string, opts: { force?: boolean; watch?: LockWatch } = {}): HeldLock | undefined {
    for (let attempt = 0; attempt < 2; attempt++) {
      let fd = -1;
      try {
        fd = openSync(path, 'wx', 0o600);
        const text = lockText(this.#self);
        writeSync(fd, text);
        return { path, fd, text };
      } catch (err) {
        if (fd >= 0) {
          // Made but not written (a full disk): not left behind.
          closeSync(fd);
          this.#unlink(path);
        }
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          this.#warnOnce(`${path} cannot be made: ${(err as Error).message}`);
          return { path, fd: -1, text: '' };
        }
      }
      const found = this.#look(path);
      // Gone meanwhile (released): try again.
      if (found === undefined) continue;
      if (!opts.force && !this.#stale(path, found, opts.watch ?? newWatch())) return undefined;
      // Still the lock judged (not one another waiter made since it broke it too).
      if (this.#look(path)?.seen !== found.seen) continue;
      this.#unlink(path);
    }
    return undefined;
  }

  /**
   * The lock at `path` as it is now, read through an open file (on NFS, opening is what makes its
   * times current); undefined when it is gone. `seen` changes whenever its holder rewrites it.
   */
  #look(path: string): { owner: LockOwner | undefined; seen: string; mtimeMs: number } | undefined {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch {
      return undefined;
    }
    try {
      const st = fstatSync(fd);
      const buf = Buffer.alloc(512);
      const text = buf.subarray(0, readSync(fd, buf, 0, buf.length, 0)).toString('utf8');
      return { owner: parseOwner(text), seen: `${st.ino} ${st.mtimeMs} ${st.ctimeMs} ${text}`, mtimeMs: st.mtimeMs };
    } catch {
      return undefined;
    } finally {
      closeSync(fd);
    }
  }

  /** Whether a pid in a lock names a process of this process table: same host, boot and PID namespace. */
  #checkable(owner: LockOwner): boolean {
    const me = this.#self;
    // Linux without /proc (no namespace known): a pid there could be any container's.
    if (process.platform === 'linux' && me.ns === '') return false;
    return owner.host === me.host && owner.boot === me.boot && owner.ns === me.ns;
  }

  /**
   * Whether the lock's holder is surely gone. A pid that can be checked here: our own pid in a lock
   * this run does not hold is an earlier process's with the same pid (a killed PID 1 before us), any
   * other is gone when no process has it or the one that has it started at another time than the
   * lock says (see {@link alive}); a live one is never broken (its waiters' own bounds end
   * their waits). Any other lock — another host's, another container's, another boot's (the same
   * host name on another machine; a PID namespace's number repeats across machines, so nothing
   * tells this machine rebooted from that), an unreadable or older text — by `#unrewritten`.
   */
  #stale(path: string, found: { owner: LockOwner | undefined; seen: string; mtimeMs: number }, watch: LockWatch) {
    const { owner } = found;
    watch.stopped = undefined;
    if (owner !== undefined && this.#checkable(owner)) {
      if (owner.pid === process.pid) return ![...this.#locks.values()].some((l) => l.path === path);
      return !alive(owner.pid, owner.start, watch);
    }
    return this.#unrewritten(path, found, watch);
  }

  /**
   * Whether a lock whose holder cannot be checked has gone unrewritten for LOCK_WAIT_MS (its holder
   * rewrites it every LOCK_REFRESH_MS while it lives): as watched by this waiter's own clock, or as
   * the file system's clock tells (its stamp on a file written there now, against the lock's).
   * Never this host's clock against another's: a skew would break a live holder's lock.
   */
  #unrewritten(path: string, found: { owner: LockOwner | undefined; seen: string; mtimeMs: number }, watch: LockWatch) {
    const now = Date.now();
    if (found.seen !== watch.seen) {
      watch.seen = found.seen;
      watch.since = now;
    }
    let still = now - watch.since;
    if (still < LOCK_WAIT_MS && now - watch.probed >= LOCK_PROBE_MS) {
      watch.probed = now;
      const fsNow = this.#fsNow();
      if (fsNow !== undefined) still = Math.max(still, fsNow - found.mtimeMs);
    }
    if (still < LOCK_WAIT_MS) return false;
    watch.broken = true;
    this.#warn(
      `${path}, held by ${this.#describe(found.owner)}, has not been rewritten for ${Math.round(still / 1000)} s (a run holding it rewrites it every ${LOCK_REFRESH_MS / 1000} s): broken, as that run has ended, or is stopped or cut off from this directory`,
    );
    return true;
  }

  /** The file system's clock now: the time it stamps on a file written in the directory; undefined when none can be. */
  #fsNow(): number | undefined {
    let temp: string | undefined;
    try {
      temp = this.#writeTemp(Buffer.from('?'));
      return statSync(temp).mtimeMs;
    } catch {
      return undefined;
    } finally {
      if (temp !== undefined) this.#unlink(temp);
    }
  }

  /** Who holds a lock, in words (for the lines that say a run waits for it, or broke it). */
  #describe(owner: LockOwner | undefined): string {
    if (owner === undefined) return 'another run';
    const me = this.#self;
    const where =
      owner.host !== me.host
        ? ` on host ${owner.host || 'unknown'}`
        : owner.boot !== me.boot
          ? ` on host ${owner.host} of another boot (or another machine of that name)`
          : owner.ns !== me.ns
            ? ` in another PID namespace (another container), ${owner.ns || 'unknown'}`
            : '';
    return owner.pid === process.pid && where === ''
      ? 'another request of this run'
      : `the run of pid ${owner.pid}${where}`;
  }

  #unlink(path: string): void {
    try {
      unlinkSync(path);
    } catch {
      // Gone already.
    }
  }

  #warnOnce(line: string): void {
    if (this.#warned.size > 0) return;
    this.#warned.add(line);
    this.#warn(line);
  }
}
