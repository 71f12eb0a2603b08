import { QueueFullError, QueueTimeoutError } from '../errors.ts';
import type { AbortHook } from '../handshake/user-sink.ts';
import type { Job } from './job.ts';

/** The bounds every wait shares (R1, C11): how many may wait, and for how long. */
export interface WaitBounds {
  readonly maxQueue: number;
  readonly queueTimeout: number;
}

/** What waits: a request (a {@link Job}), or anything else the caller can abort through the same hook. */
export interface Waiter {
  readonly sink: { onAbort(hook: AbortHook | undefined): void };
}

/**
 * Told how a wait of {@link WaitQueue.enqueue} ended, with the waiter: the callback form of a wait,
 * for a consumer that keeps what it needs in the waiter itself (no promise, closure or async frame
 * per wait, R6). Called synchronously, from whatever settles the wait.
 */
export interface WaitConsumer<T, W extends Waiter> {
  granted(waiter: W, value: T): void;
  refused(waiter: W, err: Error): void;
}

/** One waiting request; it is its own abort hook, so a wait costs no extra closure (R6). */
abstract class Entry<T, W extends Waiter> {
  settled = false;
  readonly job: W;
  readonly deadline: number;
  readonly #onAbort: (entry: Entry<T, W>, reason: Error) => void;
  constructor(job: W, deadline: number, onAbort: (entry: Entry<T, W>, reason: Error) => void) {
    this.job = job;
    this.deadline = deadline;
    this.#onAbort = onAbort;
  }
  abstract resolve(value: T): void;
  abstract reject(err: Error): void;
  callerAborted(reason: Error): void {
    this.#onAbort(this, reason);
  }
}

/** A wait of {@link WaitQueue.wait}: settles its promise. */
class PromiseEntry<T, W extends Waiter> extends Entry<T, W> {
  readonly resolve: (value: T) => void;
  readonly reject: (err: Error) => void;
  constructor(
    job: W,
    deadline: number,
    resolve: (value: T) => void,
    reject: (err: Error) => void,
    onAbort: (entry: Entry<T, W>, reason: Error) => void,
  ) {
    super(job, deadline, onAbort);
    this.resolve = resolve;
    this.reject = reject;
  }
}

/** A wait of {@link WaitQueue.enqueue}: tells its consumer. */
class ConsumerEntry<T, W extends Waiter> extends Entry<T, W> {
  readonly #consumer: WaitConsumer<T, W>;
  constructor(
    job: W,
    deadline: number,
    consumer: WaitConsumer<T, W>,
    onAbort: (entry: Entry<T, W>, reason: Error) => void,
  ) {
    super(job, deadline, onAbort);
    this.#consumer = consumer;
  }
  resolve(value: T): void {
    this.#consumer.granted(this.job, value);
  }
  reject(err: Error): void {
    this.#consumer.refused(this.job, err);
  }
}

/**
 * The one bounded wait of the request lifecycle (R1): a FIFO of waiting requests with a length
 * bound (`maxQueue` → QueueFullError), a deadline (`queueTimeout` → QueueTimeoutError) and the
 * caller's abort. Used for the session's handshake queue (C1), the handshake slots and the pool's
 * wait for a session (a probe's first response, a free HTTP/1.1 connection).
 *
 * Memory (R6): every entry has the same timeout, so deadlines come in FIFO order and one timer,
 * armed for the oldest entry, serves the whole queue; an aborted entry is only marked settled and
 * skipped later, so removal is O(1).
 */
export class WaitQueue<T, W extends Waiter = Job> {
  #entries: Entry<T, W>[] = [];
  #head = 0;
  #live = 0;
  #timer: NodeJS.Timeout | undefined;
  readonly #bounds: WaitBounds;
  /** What the requests wait for, for the errors' messages. */
  readonly #what: string;

  constructor(bounds: WaitBounds, what: string) {
    this.#bounds = bounds;
    this.#what = what;
  }

  /** Requests waiting now. */
  get length(): number {
    return this.#live;
  }

  /**
   * Waits until {@link shift} or {@link settleAll} hands a value over. Rejects at once with
   * QueueFullError when `maxQueue` are waiting, later with QueueTimeoutError or the caller's abort.
   */
  wait(job: W): Promise<T> {
    if (this.#live >= this.#bounds.maxQueue) {
      return Promise.reject(new QueueFullError(this.#bounds.maxQueue, this.#what));
    }
    return new Promise<T>((resolve, reject) => {
      this.#add(new PromiseEntry(job, Date.now() + this.#bounds.queueTimeout, resolve, reject, this.#aborted));
    });
  }

  /**
   * {@link wait} in callback form: `consumer` is told, with `job`, when {@link shift} or
   * {@link settleAll} hands a value over (`granted`), or of QueueFullError (at once, before this
   * returns), QueueTimeoutError or the caller's abort (`refused`).
   */
  enqueue(job: W, consumer: WaitConsumer<T, W>): void {
    if (this.#live >= this.#bounds.maxQueue) {
      consumer.refused(job, new QueueFullError(this.#bounds.maxQueue, this.#what));
      return;
    }
    this.#add(new ConsumerEntry(job, Date.now() + this.#bounds.queueTimeout, consumer, this.#aborted));
  }

  #add(entry: Entry<T, W>): void {
    this.#entries.push(entry);
    this.#live += 1;
    entry.job.sink.onAbort(entry);
    this.#timer ??= this.#arm(entry.deadline);
  }

  readonly #aborted = (entry: Entry<T, W>, reason: Error): void => {
    this.#settle(entry)?.reject(reason);
  };

  /** Hands `value` to the oldest waiting request; returns it, or undefined when none waits. */
  shift(value: T): W | undefined {
    const entry = this.#next();
    if (!entry) return undefined;
    this.#settle(entry)!.resolve(value);
    return entry.job;
  }

  /** Hands every waiting request `value`, or fails each with `err` (a function: an error of its own for each). */
  settleAll(value: T): void;
  settleAll(value: undefined, err: Error | (() => Error)): void;
  settleAll(value: T | undefined, err?: Error | (() => Error)): void {
    const entries = this.#entries;
    const head = this.#head;
    this.#entries = [];
    this.#head = 0;
    for (let i = head; i < entries.length; i++) {
      const entry = this.#settle(entries[i]!);
      if (!entry) continue;
      if (err) entry.reject(typeof err === 'function' ? err() : err);
      else entry.resolve(value as T);
    }
  }

  /**
   * Takes the waiting requests `which` picks out, settled without a value (their abort hooks given
   * back), in arrival order: for a consumer that moves them to another bounded wait of its own
   * (OriginPool: the proxy credentials' recall, R1/R4). The others keep their places.
   */
  take(which: (job: W) => boolean): W[] {
    const jobs: W[] = [];
    // (A copy: the last settle empties the array.)
    for (const entry of this.#entries.slice(this.#head)) {
      if (entry.settled || !which(entry.job)) continue;
      this.#settle(entry);
      jobs.push(entry.job);
    }
    return jobs;
  }

  /** The oldest entry still waiting, dropping settled ones from the front. */
  #next(): Entry<T, W> | undefined {
    while (this.#head < this.#entries.length) {
      const entry = this.#entries[this.#head]!;
      if (!entry.settled) {
        this.#compact();
        return entry;
      }
      this.#head += 1;
    }
    // Only reached with nothing waiting, and the array was emptied when the last entry settled.
    return undefined;
  }

  /** Marks `entry` settled (once); returns it, or undefined when it already was. */
  #settle(entry: Entry<T, W>): Entry<T, W> | undefined {
    if (entry.settled) return undefined;
    entry.settled = true;
    this.#live -= 1;
    entry.job.sink.onAbort(undefined);
    if (this.#live === 0) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
      this.#entries = [];
      this.#head = 0;
    }
    return entry;
  }

  #compact(): void {
    // Keep the array from growing without bound when the front is drained but never emptied
    // (steady load: requests join while earlier ones leave, so the queue is never empty).
    if (this.#head > 1024 && this.#head * 2 > this.#entries.length) {
      this.#entries = this.#entries.slice(this.#head);
      this.#head = 0;
    }
  }

  #arm(deadline: number): NodeJS.Timeout {
    return setTimeout(() => this.#expire(), Math.max(0, deadline - Date.now()));
  }

  #expire(): void {
    this.#timer = undefined;
    const now = Date.now();
    for (let entry = this.#next(); entry; entry = this.#next()) {
      if (entry.deadline > now) {
        this.#timer = this.#arm(entry.deadline);
        return;
      }
      this.#settle(entry)!.reject(new QueueTimeoutError(this.#bounds.queueTimeout, this.#what));
    }
  }
}
