/**
 * `--compressed`: the final response's body decoded by its Content-Encoding, with curl 7.88's
 * rules — the codings undone last first (`gzip, identity` is gzip), `identity` and `none` nothing,
 * `x-gzip` gzip, a `deflate` body with or without its zlib wrapper, a body cut short written as far
 * as it decodes (curl does not check the end), at most 5 codings; an unknown coding or a body that
 * does not decode is curl's 61. Only the final response's body comes here: a handshake's 401s are
 * drained by the agent, and the heads -i and -D show stay as received. Loaded only with
 * --compressed: zlib is no part of a plain request's start (docs/PERFORMANCE.md "CLI start").
 */
import { Transform, type TransformCallback } from 'node:stream';
import * as zlib from 'node:zlib';
import { MultilegError } from '../errors.ts';
import { acceptEncoding } from './options.ts';
import { headerLines, type ReceivedHead } from './output.ts';

/** The stable code of {@link ContentEncodingError} (explain.ts reads it without loading this module). */
export const CONTENT_ENCODING_CODE = 'MULTILEG_CONTENT_ENCODING';

/** curl's MAX_ENCODE_STACK: a response with more codings is refused before its body is read. */
const MAX_CODINGS = 5;

/** What `--compressed` says to do with a body that cannot be decoded. */
const FIX = 'without --compressed the body is written as it came';

/**
 * A body that `--compressed` cannot decode (curl's 61, CURLE_BAD_CONTENT_ENCODING): a coding this
 * command does not know, more than 5 of them, or bytes that are not what their coding says. The
 * message starts with curl's words for it.
 */
export class ContentEncodingError extends MultilegError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(CONTENT_ENCODING_CODE, message, options);
  }
}

/**
 * A decoder that ends leniently, as curl's: a body cut short is written as far as it decodes, not
 * refused at its end (zlib's Z_SYNC_FLUSH, brotli's FLUSH as the finishing flush; zstd's decoder
 * does not check the end either).
 */
const DECODERS: Readonly<Record<string, ((first: Buffer) => Transform) | undefined>> = {
  // curl inflates gzip with zlib's automatic header detection: a zlib stream under `gzip` passes.
  gzip: () => zlib.createUnzip({ finishFlush: zlib.constants.Z_SYNC_FLUSH }),
  // curl tries the zlib wrapper (RFC 1950) first and raw deflate when the body does not start with
  // one, as servers that took "deflate" for RFC 1951 send: a zlib header is CM 8 and a multiple of 31.
  deflate: (first) =>
    (first[0]! & 0x0f) === 8 && (first.length < 2 || ((first[0]! << 8) | first[1]!) % 31 === 0)
      ? zlib.createInflate({ finishFlush: zlib.constants.Z_SYNC_FLUSH })
      : zlib.createInflateRaw({ finishFlush: zlib.constants.Z_SYNC_FLUSH }),
  br: () => zlib.createBrotliDecompress({ finishFlush: zlib.constants.BROTLI_OPERATION_FLUSH }),
  zstd: typeof zlib.createZstdDecompress === 'function' ? () => zlib.createZstdDecompress() : undefined,
};

/** curl's other names for a coding. */
const ALIASES: Readonly<Record<string, string>> = { 'x-gzip': 'gzip', none: 'identity' };

/**
 * One coding undone: its decoder made at the body's first byte (an empty body, a HEAD's, a 204's,
 * needs none and fails none, as curl's), its output passed on and counted. A decoder's error is
 * this stage's {@link ContentEncodingError}, with curl's words; an unknown coding (`open`
 * undefined) fails at the first byte, as curl's does.
 */
class Decoding extends Transform {
  readonly #coding: string;
  readonly #from: string;
  readonly #open: ((first: Buffer) => Transform) | undefined;
  readonly #count: ((bytes: number) => void) | undefined;
  #inner: Transform | undefined;

  constructor(coding: string, from: string, count?: (bytes: number) => void) {
    super();
    this.#coding = coding;
    this.#from = from;
    this.#open = DECODERS[coding];
    this.#count = count;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (chunk.length === 0) {
      callback();
      return;
    }
    let inner = this.#inner;
    if (!inner) {
      if (!this.#open) {
        callback(
          new ContentEncodingError(
            `Unrecognized content encoding type. multileg understands ${acceptEncoding()} content encodings: ${this.#from} sent Content-Encoding: ${this.#coding}; ${FIX}`,
          ),
        );
        return;
      }
      inner = this.#open(chunk);
      this.#inner = inner;
      // Backpressure: a few hundred bytes may decode to a gigabyte (a brotli or zstd body of
      // zeros), so the decoder pauses while this stage's reader is behind (push() false) and
      // _read resumes it; its input then waits too (the write callback below), up the pipeline.
      inner.on('data', (out: Buffer) => {
        this.#count?.(out.length);
        if (!this.push(out)) inner?.pause();
      });
      inner.on('error', (err: Error & { code?: unknown }) => this.destroy(this.#failure(err)));
    }
    // Called once the decoder took the chunk; on an error the stage is destroyed instead (above).
    inner.write(chunk, (err) => {
      if (!err) callback();
    });
  }

  override _read(size: number): void {
    // The reader wants more: the decoder paused for it goes on (Transform's own _read, which
    // takes the next input chunk, too).
    if (this.#inner?.isPaused()) this.#inner.resume();
    super._read(size);
  }

  override _flush(callback: TransformCallback): void {
    const inner = this.#inner;
    if (!inner) {
      callback();
      return;
    }
    inner.once('end', () => callback());
    inner.end();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.#inner?.destroy();
    callback(err);
  }

  /** curl's message for a body its coding does not decode: zlib's reason for gzip and deflate. */
  #failure(err: Error & { code?: unknown }): ContentEncodingError {
    const what = `the ${this.#coding} body from ${this.#from} does not decode (${String(err.code ?? err.message)}); ${FIX}`;
    return new ContentEncodingError(
      this.#coding === 'gzip' || this.#coding === 'deflate'
        ? `Error while processing content unencoding: ${err.message}: ${what}`
        : `Unrecognized or bad HTTP Content or Transfer-Encoding: ${what}`,
      { cause: err },
    );
  }
}

/** A body's decoding: the stages its bytes go through, and how many bytes came out of them. */
export interface BodyDecoding {
  /** The stages, the last coding applied first; none for a body sent as it is. */
  readonly stages: readonly Transform[];
  /** The decoded bytes so far (the received ones are counted before the stages: curl's -w size_download). */
  readonly decoded: () => number;
}

/** The codings a Content-Encoding value names, in order, in lower case (empty list items skipped). */
const codingsOf = (value: string): string[] =>
  value
    .split(',')
    .map((c) => c.trim().toLowerCase())
    .filter((c) => c !== '');

/**
 * The header line (of {@link headerLines}) at which a head's codings go past 5, where curl stops
 * reading it (and writing it to -i, -I and -D) with its 61; undefined for a head within the bound.
 */
export function codingsCut(head: ReceivedHead): number | undefined {
  let codings = 0;
  for (const [i, [name, value]] of headerLines(head.headers, head.names).entries()) {
    if (name.toLowerCase() !== 'content-encoding') continue;
    codings += codingsOf(value).length;
    if (codings > MAX_CODINGS) return i;
  }
  return undefined;
}

/**
 * The decoding of a body whose Content-Encoding is `header` (every value of a repeated header, in
 * order), from `from` (a host, for the messages). Throws {@link ContentEncodingError} for more than
 * 5 codings, as curl refuses such a response before its body (CVE-2022-32206's bound).
 */
export function bodyDecoding(header: string | string[] | undefined, from: string): BodyDecoding {
  const codings = codingsOf(Array.isArray(header) ? header.join(',') : (header ?? ''));
  if (codings.length > MAX_CODINGS)
    throw new ContentEncodingError(
      `Reject response due to more than ${MAX_CODINGS} content encodings: ${from} sent ${codings.length}; ${FIX}`,
    );
  let decoded = 0;
  const count = (bytes: number) => {
    decoded += bytes;
  };
  // Undone in the reverse order of their application; the first stage to run is the last coding.
  const undo = codings
    .map((c) => ALIASES[c] ?? c)
    .filter((c) => c !== 'identity')
    .reverse();
  // The last stage counts what comes out of the whole chain.
  const stages = undo.map((coding, i) => new Decoding(coding, from, i === undo.length - 1 ? count : undefined));
  return { stages, decoded: () => decoded };
}
