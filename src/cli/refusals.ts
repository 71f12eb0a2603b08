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
 *   O_EXCL; its pid inside) until that handshake ends, and reads the record only then: of a burst
 *   of processes with one wrong password, one sends it and the others read its refusal. A lock
 *   whose process is gone, or held longer than {@link LOCK_WAIT_MS}, is broken. The file is written
 *   whole to a temporary file renamed over it, under `refusals.json.lock` (held for the write only).
 * - A file that cannot be read or is not such a record is ignored with one warning; the next
 *   refusal writes it anew. Nothing here throws into a request.
 */
import { createHmac, randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { hostname, userInfo } from 'node:os';
import { isAbsolute, join } from 'node:path';
import type { RefusalMemory, RefusalPlace, RememberedRefusal } from '../session/refusal-memory.ts';

/** How long a process waits for another's try of the same password before it breaks that lock. */
export const LOCK_WAIT_MS = 60_000;
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

/**
 * The command's state directory: `$XDG_STATE_HOME/multileg`, else `~/.local/state/multileg` (XDG: a
 * relative value is ignored). Throws when there is neither (HOME unset or relative and no passwd
 * entry: an arbitrary UID in a container); the caller goes on without the file.
 */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_STATE_HOME;
  if (xdg && isAbsolute(xdg)) return join(xdg, 'multileg');
  const home = homeDir(env);
  if (home === undefined)
    throw new Error('XDG_STATE_HOME is not set and there is no home directory (HOME unset, no passwd entry)');
  return join(home, '.local', 'state', 'multileg');
}

/**
 * The home directory: `$HOME` when absolute, else the passwd entry's; undefined when there is none
 * (a container's arbitrary UID). Never throws (Node's `homedir()` does there), and never a relative
 * path (`HOME=""` would make one of the current directory).
 */
export function homeDir(env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.HOME && isAbsolute(env.HOME)) return env.HOME;
  try {
    // Without HOME (env -i), libuv asks the passwd entry: ENOENT for a UID that has none.
    const home = userInfo().homedir;
    return home && isAbsolute(home) ? home : undefined;
  } catch {
    return undefined;
  }
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
}

/** Who holds a lock: a pid, the boot and the host it runs on (empty when unknown: a lock of an older version holds the pid alone). */
interface LockOwner {
  readonly pid: number;
  readonly boot: string;
  readonly host: string;
}

/**
 * This process as a lock's owner. The boot id tells an earlier boot of this host from this one (a
 * lock left by a run that a reboot ended), the host name another host (a volume shared by pods on
 * several nodes; a container has its own): a pid is checked only where it means this process table's.
 */
function lockOwner(): LockOwner {
  let boot = '';
  try {
    boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    // Not Linux: the host name alone.
  }
  return { pid: process.pid, boot, host: hostname().replace(/\s+/g, '') };
}

/** A lock's text: `pid boot host` (an older version's: `pid`). */
function parseOwner(text: string): LockOwner | undefined {
  const [pid, boot = '', host = ''] = text.trim().split(' ');
  const n = Number.parseInt(pid ?? '', 10);
  return Number.isInteger(n) && n > 0 ? { pid: n, boot: boot === '-' ? '' : boot, host } : undefined;
}

/** What a synchronous wait for the write lock waits on (nothing wakes it: it times out). */
const PAUSE = new Int32Array(new SharedArrayBuffer(4));

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
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
  readonly #warn: (line: string) => void;
  /** -v: lines about waiting for another run's lock. */
  readonly #verbose: ((line: string) => void) | undefined;
  /** This host and boot, written into each lock with the pid: a pid means something only there. */
  readonly #self = lockOwner();
  /** Waits for another run's lock going on now, by place: for the message of a request that went without the password. */
  readonly #waiting = new Map<string, LockWait>();
  #key: Buffer | undefined;
  /** Something failed already: said once, then the command goes on without the file. */
  #broken = false;
  #warned = new Set<string>();
  /** Locks this process holds (id → path), taken away at exit whatever happens. */
  readonly #locks = new Map<string, string>();
  /** What held a password back in this run, by place: for the message that says so. */
  readonly #held = new Map<string, RememberedRefusal>();

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
    for (const path of this.#locks.values()) this.#unlink(path);
    this.#locks.clear();
  }

  /** The record that held the password back at `origin` (a proxy's with `proxy`) in this run, if one did. */
  heldBack(origin: string, proxy = false): RememberedRefusal | undefined {
    return this.#held.get(`${proxy ? 'proxy' : 'origin'} ${origin}`);
  }

  /**
   * The wait for another run's lock at `origin` (a proxy's with `proxy`) still going on: the agent
   * gave up on it (limits.queueTimeout) and its request went without the password.
   */
  waitingFor(origin: string, proxy = false): LockWait | undefined {
    return this.#waiting.get(`${proxy ? 'proxy' : 'origin'} ${origin}`);
  }

  recall(place: RefusalPlace): RememberedRefusal | undefined | Promise<RememberedRefusal | undefined> {
    const id = this.#id(place);
    if (id === undefined) return undefined;
    const lock = join(this.#dir, `${id.slice(0, 32)}.lock`);
    if (this.#tryLock(lock)) {
      this.#locks.set(id, lock);
      return this.#read(place, id);
    }
    // Another run (or another request of this one) is trying this password here: its outcome is
    // read once it ends. Said (-v), since the wait may be long and nothing else shows it.
    const key = `${place.proxy ? 'proxy' : 'origin'} ${place.origin}`;
    const holder = this.#holderOf(lock);
    const wait: LockWait = { lock, holder, since: Date.now() };
    this.#waiting.set(key, wait);
    this.#verbose?.(`* waiting for ${lock}: ${holder}, trying the same password at ${place.origin}, holds it`);
    return (async () => {
      const deadline = wait.since + LOCK_WAIT_MS;
      let pause = 10;
      let forced = false;
      for (;;) {
        forced = Date.now() > deadline;
        if (this.#tryLock(lock, forced)) break;
        await sleep(pause);
        pause = Math.min(pause * 2, 100);
      }
      this.#waiting.delete(key);
      const waited = Math.round((Date.now() - wait.since) / 1000);
      if (forced)
        this.#warn(
          `${lock} was held ${waited} s by ${holder}: broken (a lock held that long is taken as left by a run that died)`,
        );
      else if (waited >= LONG_WAIT_S)
        this.#warn(`waited ${waited} s for ${holder}, which was trying the same password at ${place.origin}`);
      else this.#verbose?.(`* ${lock} released after ${Date.now() - wait.since} ms: going on`);
      this.#locks.set(id, lock);
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
    const lock = id === undefined ? undefined : this.#locks.get(id);
    if (lock === undefined) return;
    this.#locks.delete(id!);
    this.#unlink(lock);
  }

  /** The record for `id`, as the agent takes it (a hold-back in force, or only the count). */
  #read(place: RefusalPlace, id: string): RememberedRefusal | undefined {
    const r = this.#load()?.refusals[id];
    if (r === undefined) return undefined;
    const now = Date.now();
    if (this.#forget || r.until <= now) return { at: r.at, until: 0, times: r.times };
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
      mkdirSync(this.#dir, { recursive: true, mode: 0o700 });
      const st = statSync(this.#dir);
      if (process.getuid && st.uid !== process.getuid()) throw new Error(`${this.#dir} belongs to another user`);
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
    while (!this.#tryLock(lock, Date.now() > deadline)) Atomics.wait(PAUSE, 0, 0, 2);
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
      this.#unlink(lock);
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
   * Takes the lock file `path` (O_EXCL, this pid inside): true when taken. One left by a process
   * that is gone is broken, and so is any with `force` (waited for too long).
   */
  #tryLock(path: string, force = false): boolean {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = openSync(path, 'wx', 0o600);
        const me = this.#self;
        writeSync(fd, `${me.pid} ${me.boot || '-'} ${me.host}`);
        closeSync(fd);
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          this.#warnOnce(`${path} cannot be made: ${(err as Error).message}`);
          return true;
        }
      }
      let owner: LockOwner | undefined;
      try {
        owner = parseOwner(readFileSync(path, 'utf8'));
      } catch {
        // Gone meanwhile (released), or still being written: try again.
      }
      // An empty lock is one being made this instant: not stale.
      const stale = force || (owner !== undefined && this.#gone(owner, path));
      if (!stale) return false;
      this.#unlink(path);
    }
    return false;
  }

  /**
   * Whether the lock's owner is surely gone. Another host's (or another container's: its own host
   * name, its own pids) cannot be checked: honoured, until {@link LOCK_WAIT_MS}. This host's from an
   * earlier boot is gone. Here, our own pid in a lock this run does not hold is an earlier process's
   * with the same pid — a container's PID 1, killed — and any other pid is checked.
   */
  #gone(owner: LockOwner, path: string): boolean {
    const me = this.#self;
    if (owner.host !== '' && owner.host !== me.host) {
      // Made longer ago than any try waits: left by a run that died there (a CronJob's pod killed).
      let age = 0;
      try {
        age = Date.now() - statSync(path).mtimeMs;
      } catch {
        // Gone meanwhile: taken next time round.
      }
      if (age <= LOCK_WAIT_MS) return false;
      this.#warn(
        `${path}, made ${Math.round(age / 1000)} s ago by the run of pid ${owner.pid} on host ${owner.host}, is broken (a lock held that long is taken as left by a run that died)`,
      );
      return true;
    }
    if (owner.boot !== '' && me.boot !== '' && owner.boot !== me.boot) return true;
    if (owner.pid === process.pid) return ![...this.#locks.values()].includes(path);
    return !alive(owner.pid);
  }

  /** Who holds the lock at `path`, in words (for the lines that say a run waits for it). */
  #holderOf(path: string): string {
    let owner: LockOwner | undefined;
    try {
      owner = parseOwner(readFileSync(path, 'utf8'));
    } catch {
      // Released meanwhile: the wait ends at once.
    }
    if (owner === undefined) return 'another run';
    const where = owner.host !== '' && owner.host !== this.#self.host ? ` on host ${owner.host}` : '';
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
