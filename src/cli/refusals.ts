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
import { homedir } from 'node:os';
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

/** The command's state directory: `$XDG_STATE_HOME/multileg`, else `~/.local/state/multileg` (XDG: a relative value is ignored). */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_STATE_HOME;
  const base = xdg && isAbsolute(xdg) ? xdg : join(env.HOME || homedir(), '.local', 'state');
  return join(base, 'multileg');
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
  readonly dir: string;
  readonly #file: string;
  /** --forget-refusals: a password held back goes now (its count stays: a refusal again waits longer). */
  readonly #forget: boolean;
  readonly #warn: (line: string) => void;
  #key: Buffer | undefined;
  /** Something failed already: said once, then the command goes on without the file. */
  #broken = false;
  #warned = new Set<string>();
  /** Locks this process holds (id → path), taken away at exit whatever happens. */
  readonly #locks = new Map<string, string>();
  /** What held a password back in this run, by place: for the message that says so. */
  readonly #held = new Map<string, RememberedRefusal>();

  constructor(opts: { dir: string; forget?: boolean; warn: (line: string) => void }) {
    this.dir = opts.dir;
    this.#file = join(opts.dir, 'refusals.json');
    this.#forget = opts.forget === true;
    this.#warn = opts.warn;
    process.once('exit', () => {
      for (const path of this.#locks.values()) this.#unlink(path);
    });
  }

  /** The record that held the password back at `origin` (a proxy's with `proxy`) in this run, if one did. */
  heldBack(origin: string, proxy = false): RememberedRefusal | undefined {
    return this.#held.get(`${proxy ? 'proxy' : 'origin'} ${origin}`);
  }

  recall(place: RefusalPlace): RememberedRefusal | undefined | Promise<RememberedRefusal | undefined> {
    const id = this.#id(place);
    if (id === undefined) return undefined;
    const lock = join(this.dir, `${id.slice(0, 32)}.lock`);
    if (this.#tryLock(lock)) {
      this.#locks.set(id, lock);
      return this.#read(place, id);
    }
    return (async () => {
      const deadline = Date.now() + LOCK_WAIT_MS;
      let pause = 10;
      while (!this.#tryLock(lock, Date.now() > deadline)) {
        await sleep(pause);
        pause = Math.min(pause * 2, 100);
      }
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
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      const st = statSync(this.dir);
      if (process.getuid && st.uid !== process.getuid()) throw new Error(`${this.dir} belongs to another user`);
      // Never readable by others, whoever made it.
      if ((st.mode & 0o077) !== 0) chmodSync(this.dir, 0o700);
      const path = join(this.dir, 'key');
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
      this.#warnOnce(`${this.dir}: ${(err as Error).message}; refused passwords are remembered in this run only`);
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
    const path = join(this.dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
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
        writeSync(fd, String(process.pid));
        closeSync(fd);
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          this.#warnOnce(`${path} cannot be made: ${(err as Error).message}`);
          return true;
        }
      }
      let pid = Number.NaN;
      try {
        pid = Number.parseInt(readFileSync(path, 'utf8'), 10);
      } catch {
        // Gone meanwhile (released), or still being written: try again.
      }
      // An empty lock is one being made this instant: not stale.
      const stale = force || (Number.isInteger(pid) && pid > 0 && !alive(pid));
      if (!stale) return false;
      this.#unlink(path);
    }
    return false;
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
