import { Readable } from 'node:stream';

/**
 * A request body prepared for a handshake (C10). `replayable` bodies can be written on every leg;
 * a one-shot body larger than the buffer limit can be written once, and `take()` refuses a second
 * use so that no leg is ever sent with a silently empty body.
 */
export interface PreparedBody {
  readonly replayable: boolean;
  /** The body for the next write. For a one-shot body, undefined after the first call. */
  take(): unknown;
}

const REPLAYABLE_AS_IS = (body: unknown): boolean =>
  body === null ||
  body === undefined ||
  typeof body === 'string' ||
  body instanceof Uint8Array ||
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
  readonly #body: unknown;
  constructor(body: unknown) {
    this.#body = body;
  }
  take(): unknown {
    return this.#body;
  }
}

/**
 * Reads a one-shot body (stream, async generator — fetch always passes one) into memory when it
 * fits in `limit` bytes. Larger bodies keep their buffered prefix and the rest of the iterator, to
 * be written once.
 */
export function prepareBody(body: unknown, limit: number): PreparedBody | Promise<PreparedBody> {
  // Most bodies (none, a string, a Buffer) need no reading: answer synchronously, no extra tick.
  if (REPLAYABLE_AS_IS(body) || !isAsyncSource(body)) return new AsIs(body);
  return bufferBody(body, limit);
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
