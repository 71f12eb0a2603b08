import { Readable } from 'node:stream';
import { QueueTimeoutError } from '../errors.ts';

/**
 * A request body prepared for a handshake (C10). `replayable` bodies can be written on every leg;
 * a one-shot body larger than the buffer limit can be written once, and `take()` refuses a second
 * use so that no leg is ever sent with a silently empty body.
 */
export interface PreparedBody {
  readonly replayable: boolean;
  /** The caller's body itself, written as given on every leg (none, a string, bytes, a Blob). */
  readonly asIs?: boolean;
  /** A stream written as it comes on its first leg (see {@link TeeBody}). */
  readonly streams?: boolean;
  /** The body for the next write. For a one-shot body, undefined after the first call. */
  take(): unknown;
  /**
   * Whether the next `take()` may be written at once. When false, `settle()` first: a replay of a
   * body still being read waits for the rest of it (see {@link TeeBody}).
   */
  readonly settled?: boolean;
  settle?(): Promise<void>;
}

const REPLAYABLE_AS_IS = (body: unknown): boolean =>
  body === null ||
  body === undefined ||
  typeof body === 'string' ||
  ArrayBuffer.isView(body) ||
  body instanceof ArrayBuffer ||
  (typeof Blob !== 'undefined' && body instanceof Blob) ||
  (typeof FormData !== 'undefined' && body instanceof FormData);

function isAsyncSource(body: unknown): body is AsyncIterable<unknown> | Iterable<unknown> {
  if (body === null || typeof body !== 'object') return false;
  return Symbol.asyncIterator in body || Symbol.iterator in body || body instanceof Readable;
}

function toBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (typeof chunk === 'string') return Buffer.from(chunk);
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (chunk instanceof ArrayBuffer) return Buffer.from(chunk);
  throw new TypeError(`unsupported request body chunk type ${typeof chunk}`);
}

/** A body written as it is on every leg (no closure: one small object per request, R6). */
class AsIs implements PreparedBody {
  readonly replayable = true;
  readonly asIs = true;
  readonly #body: unknown;
  constructor(body: unknown) {
    this.#body = body;
  }
  take(): unknown {
    return this.#body;
  }
}

/** Whether `body` is a one-shot source that {@link prepareBody} would read before the first leg. */
export function readsFirst(body: unknown): boolean {
  return !REPLAYABLE_AS_IS(body) && isAsyncSource(body);
}

/**
 * A one-shot body written as it comes, for a request where it is unlikely to be needed again (an
 * authenticated session, an origin that has not challenged): the first byte goes out at once
 * instead of after up to `maxReplayBodyBytes` were read. A copy of what was read is kept while it
 * fits in `limit`, so a replay (the server forgot the session, T4; or challenged after all) carries
 * the whole body (C10): the copy, then the rest of the source — also when the first leg stopped
 * reading early (a 401 sent before the body was read). Past the limit a second `take()` is
 * refused, as for any one-shot body over the limit.
 */
export class TeeBody implements PreparedBody {
  readonly streams = true;
  readonly #source: AsyncIterable<unknown> | Iterable<unknown>;
  readonly #limit: number;
  #iterator: AsyncIterator<unknown> | Iterator<unknown> | undefined;
  /** Every chunk read so far, while they fit in the limit. */
  #kept: Buffer[] = [];
  /** Chunks read so far, and the last of them (all that is left once past the limit). */
  #count = 0;
  #last: Buffer | undefined;
  #size = 0;
  #over = false;
  #done = false;
  /** The one read in flight: legs never read the source concurrently. */
  #pulling: Promise<void> | undefined;
  /** Which leg's stream is current: an older one stops (it was abandoned for a replay). */
  #generation = 0;

  constructor(source: AsyncIterable<unknown> | Iterable<unknown>, limit: number) {
    this.#source = source;
    this.#limit = limit;
  }

  get replayable(): boolean {
    return this.#count === 0 || !this.#over;
  }

  /**
   * A replay is written as one Buffer, once the source is read to its end (within the limit): undici
   * writes a Buffer at once, but an HTTP/1.1 connection still writing an iterable when an early
   * answer ends the response (a 401 sent before the body was read) is destroyed, and a
   * connection-bound handshake with it. The first write streams as the body comes.
   */
  get settled(): boolean {
    return this.#generation === 0 || this.#done || this.#over;
  }

  async settle(): Promise<void> {
    while (!this.#done && !this.#over) await this.#pull();
  }

  take(): unknown {
    if (!this.replayable) return undefined;
    this.#generation += 1;
    if (this.#generation > 1 && this.#done) return Buffer.concat(this.#kept);
    return this.#stream(this.#generation);
  }

  async *#stream(generation: number): AsyncGenerator<Buffer> {
    let i = 0;
    for (;;) {
      if (generation !== this.#generation) return;
      if (i < this.#count) {
        // Within the limit every chunk is kept; past it only the newest, which this current stream is at.
        const chunk = this.#over ? this.#last! : this.#kept[i]!;
        i += 1;
        yield chunk;
        continue;
      }
      if (this.#done) return;
      await this.#pull();
    }
  }

  /** Reads one more chunk of the source (or its end), once, however many streams wait for it. */
  #pull(): Promise<void> {
    this.#pulling ??= (async () => {
      // Not `for await`: ending a leg's stream early must not close the caller's source.
      this.#iterator ??= (
        Symbol.asyncIterator in this.#source
          ? (this.#source as AsyncIterable<unknown>)[Symbol.asyncIterator]()
          : (this.#source as Iterable<unknown>)[Symbol.iterator]()
      ) as AsyncIterator<unknown> | Iterator<unknown>;
      const next = await this.#iterator.next();
      if (next.done) {
        this.#done = true;
        return;
      }
      const chunk = toBuffer(next.value);
      this.#count += 1;
      this.#last = chunk;
      this.#size += chunk.length;
      // Past the limit no replay is possible: drop the copy rather than hold the whole body.
      if (this.#over) return;
      if (this.#size <= this.#limit) this.#kept.push(chunk);
      else {
        this.#over = true;
        this.#kept = [];
      }
    })().finally(() => {
      this.#pulling = undefined;
    });
    return this.#pulling;
  }
}

/** Most requests have no body: one shared object for them. */
const NO_BODY = new AsIs(undefined);

/**
 * Reads a one-shot body (stream, async generator — fetch always passes one) into memory when it
 * fits in `limit` bytes. Larger bodies keep their buffered prefix and the rest of the iterator, to
 * be written once.
 */
export function prepareBody(body: unknown, limit: number): PreparedBody | Promise<PreparedBody> {
  // Most bodies (none, a string, a Buffer) need no reading: answer synchronously, no extra tick.
  if (body === undefined) return NO_BODY;
  if (REPLAYABLE_AS_IS(body) || !isAsyncSource(body)) return new AsIs(body);
  return bufferBody(body, limit);
}

/** The caller's side of a request whose body is being read: its abort ends the wait (UserSink). */
export interface BodyReader {
  unlessAborted<T>(work: Promise<T>): Promise<T>;
}

/**
 * Waits for a one-shot body that {@link prepareBody} reads before anything is sent. The request
 * waits before it is sent, as in any queue (R1): `queueTimeout` (limits.queueTimeout) bounds it,
 * with a QueueTimeoutError that says so, and so does the caller's abort; either way the request
 * counts as ended (an agent's close() waits for nothing), whether or not the source ever ends.
 */
export function preparedBody(
  prepared: Promise<PreparedBody>,
  reader: BodyReader,
  queueTimeout: number,
): Promise<PreparedBody> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new QueueTimeoutError(
            queueTimeout,
            'its one-shot body (read before sending, to its end or limits.maxReplayBodyBytes, to be replayed on the legs of a handshake, C10)',
            'make the body end, pass it as a Buffer or string, or raise limits.queueTimeout',
          ),
        ),
      queueTimeout,
    );
  });
  return reader.unlessAborted(Promise.race([prepared, timedOut])).finally(() => clearTimeout(timer));
}

async function bufferBody(body: AsyncIterable<unknown> | Iterable<unknown>, limit: number): Promise<PreparedBody> {
  const iterator = (
    Symbol.asyncIterator in body
      ? (body as AsyncIterable<unknown>)[Symbol.asyncIterator]()
      : (body as Iterable<unknown>)[Symbol.iterator]()
  ) as AsyncIterator<unknown> | Iterator<unknown>;
  const chunks: Buffer[] = [];
  let size = 0;
  for (;;) {
    const next = await iterator.next();
    if (next.done) {
      const all = Buffer.concat(chunks, size);
      return { replayable: true, take: () => (size === 0 ? null : all) };
    }
    const buf = toBuffer(next.value);
    chunks.push(buf);
    size += buf.length;
    if (size > limit) break;
  }
  let taken = false;
  async function* rest(): AsyncGenerator<Buffer> {
    yield* chunks;
    for (;;) {
      const next = await iterator.next();
      if (next.done) return;
      yield toBuffer(next.value);
    }
  }
  return {
    replayable: false,
    take: () => {
      if (taken) return undefined;
      taken = true;
      return rest();
    },
  };
}
