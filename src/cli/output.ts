/**
 * Where the command's bytes go, and what a failure to write them means: stdout (a reader that went
 * away before the body or a head was written is curl's 23, as a full disk is), the -o file (its
 * directories made with --create-dirs), and the response heads `-i` and `-D` show.
 */
import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { PROOF_HEADERS, redactProof } from '../diagnostics.ts';

/**
 * A response head as curl writes it (`-i`, `-D`): `HTTP/2 200 ` (curl's space after the status,
 * though HTTP/2 has no reason phrase) or `HTTP/1.1 200 OK`, CRLF lines, a blank line.
 */
export function headText(
  protocol: string | undefined,
  status: number,
  statusText: string,
  headers: Iterable<readonly [string, string]>,
): string {
  let text =
    protocol === 'h2' ? `HTTP/2 ${status} \r\n` : `HTTP/1.1 ${status}${statusText ? ` ${statusText}` : ''}\r\n`;
  for (const [name, value] of headers) text += `${name}: ${value}\r\n`;
  return `${text}\r\n`;
}

export const isEpipe = (err: unknown) => (err as { code?: string } | undefined)?.code === 'EPIPE';

/** What a failure to write the body means, by its code. */
const WRITE_PROBLEMS: Readonly<Record<string, string>> = {
  ENOENT: 'no such directory',
  ENOTDIR: 'a part of the path is not a directory',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  EISDIR: 'is a directory',
  EROFS: 'read-only file system',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EIO: 'input/output error',
  // `| head -c1`: curl's "Failure writing output to destination" (23).
  EPIPE: 'its reader went away',
};

/** Why a file could not be written, in words (the system code kept for a search). */
export function writeProblem(err: NodeJS.ErrnoException): string {
  return err.code
    ? `${WRITE_PROBLEMS[err.code] ?? 'cannot write it'} (${err.code})`
    : `cannot write it (${err.message})`;
}

/**
 * `--create-dirs`: makes the missing directories of `file`'s path, as curl does just before it
 * creates the file (mode 0750, curl's). A part of the path that is a file is left for the open to
 * report (ENOTDIR). Throws the system error.
 */
export function createDirsFor(file: string): void {
  try {
    mkdirSync(dirname(file), { recursive: true, mode: 0o750 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}

/**
 * The line for a file (`-o`, `-D`…) that could not be made or written: the flag, the file and why;
 * a missing directory names --create-dirs when it was not given.
 */
export function fileProblem(flag: string, file: string, err: NodeJS.ErrnoException, createDirs: boolean): string {
  const hint = err.code === 'ENOENT' && !createDirs ? '; --create-dirs makes the missing directories' : '';
  return `${flag} ${file}: ${writeProblem(err)}${hint}`;
}

/**
 * -f -i -o FILE's final head, without the body (curl writes it there): the line to say when the
 * file cannot be written, else undefined.
 */
export function writeHeadsFile(output: string, heads: string, createDirs: boolean): string | undefined {
  try {
    if (createDirs) createDirsFor(output);
    writeFileSync(output, heads);
    return undefined;
  } catch (err) {
    return fileProblem('-o', output, err as NodeJS.ErrnoException, createDirs);
  }
}

/** A response head as the command received it. */
export interface ReceivedHead {
  readonly statusCode: number;
  readonly statusText: string;
  /** undici's object: a repeated header's values together, under its first place. */
  readonly headers: Record<string, string | string[] | undefined>;
  /** The header names in the order they came, when known (HTTP/1.1; {@link headNames}). */
  readonly names?: readonly string[] | undefined;
}

/**
 * The status line and header lines `-i` and `-D` show, as curl writes them, but for Digest's
 * `rspauth` in `Authentication-Info`: `[redacted]`, as in -v, --json and --har (S2). It is as
 * password-derived as the request's `response`, and a -D file kept in a CI log also holds the
 * nonce, cnonce and nc that a guess at the password needs (review r36).
 */
export function responseHead(protocol: string | undefined, res: ReceivedHead, cutAt?: number): string {
  const lines = headerLines(res.headers, res.names).map(([name, value]): [string, string] =>
    PROOF_HEADERS.has(name.toLowerCase()) ? [name, redactProof(value)] : [name, value],
  );
  if (cutAt === undefined) return headText(protocol, res.statusCode, res.statusText, lines);
  // Cut before header line `cutAt`, as curl stops writing a head at the line it refuses (no blank line after it).
  return headText(protocol, res.statusCode, res.statusText, lines.slice(0, cutAt)).slice(0, -2);
}

/**
 * The header names of undici's `controller.rawHeaders`, in the order and the case they came (curl
 * writes an HTTP/1.1 head's names as the server sent them); undefined where undici gives no list
 * (HTTP/2: its headers object, lower case, repeated ones together).
 */
export function headNames(rawHeaders: unknown): string[] | undefined {
  if (!Array.isArray(rawHeaders)) return undefined;
  const names: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) names.push(String(rawHeaders[i]));
  return names;
}

/**
 * A head's header lines in the order {@link responseHead} writes them, a repeated header's values
 * one a line: in `names`' order where known (curl's: `x-mid` between two Content-Encoding lines
 * stays there), else each header's values together.
 */
export function headerLines(
  headers: Record<string, string | string[] | undefined>,
  names?: readonly string[],
): Array<[string, string]> {
  const lines: Array<[string, string]> = [];
  const values = new Map<string, string[]>();
  for (const [k, v] of Object.entries(headers)) if (v !== undefined) values.set(k, Array.isArray(v) ? [...v] : [v]);
  for (const name of names ?? []) {
    const value = values.get(name.toLowerCase())?.shift();
    if (value !== undefined) lines.push([name, value]);
  }
  // Without `names` (or what they did not name): the object's order.
  for (const [k, rest] of values) for (const value of rest) lines.push([k, value]);
  return lines;
}

/**
 * The command's stdout, watched from before the first request to the exit: a failure to write it
 * (a full disk) is kept, for curl's 23 in one line. A reader that went away (`| head`, EPIPE) is
 * curl's 23 where a body ({@link writeBody}) or a head (-i, -I: {@link Stdout.head}) was lost, as
 * curl's; not where only -w or --json was (curl ignores -w's write errors). Either way the
 * command stops writing and its error event is handled: no unhandled EPIPE.
 *
 * A stdout closed at the start (`>&-`, curl's 23) is not seen, on purpose: Node opens /dev/null
 * read-write as fd 1 before any JS runs, and that fd (its /proc fdinfo flags, inode, position) is
 * the same as the one Python's `subprocess.DEVNULL` or Node's `stdio: 'ignore'` give a child,
 * where curl exits 0. Writes to it succeed, so the command exits 0.
 */
export class Stdout {
  /** The first failure to write stdout, not EPIPE. */
  error: NodeJS.ErrnoException | undefined;
  /** A head written to stdout that its reader, gone, did not take (EPIPE). */
  headLost: NodeJS.ErrnoException | undefined;

  constructor() {
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
      if (!isEpipe(err)) this.error ??= err;
    });
  }

  /** Writes a response head (-i, -I) to stdout; its loss to a reader gone is kept (curl's 23). */
  head(text: string): void {
    if (process.stdout.destroyed) this.headLost ??= Object.assign(new Error('stdout closed'), { code: 'EPIPE' });
    else
      process.stdout.write(text, (err) => {
        if (err && isEpipe(err)) this.headLost ??= err;
      });
  }
}

/**
 * pipeline() over any number of stages between a source and a destination: its typings list the
 * stages one by one (or take an array that admits no async generator).
 */
export const pipelineOf = pipeline as (
  source: AsyncIterable<Buffer>,
  ...rest: Array<
    | NodeJS.ReadWriteStream
    | NodeJS.WritableStream
    | ((source: AsyncIterable<Buffer>) => Promise<void>)
    | { end: boolean }
  >
) => Promise<void>;

/**
 * The last stage to stdout, which outlives every transfer: pipeline() into it with `end: false`
 * left its end-of-stream listeners on it, one set per transfer (Node's MaxListenersExceededWarning
 * on stderr from the 11th URL on, u8). Here each wait for `drain` takes its listeners off again.
 */
async function toStdout(source: AsyncIterable<Buffer>): Promise<void> {
  const out = process.stdout;
  // Closed (after an error, or its reader went away): as EPIPE says; the error itself is Stdout's.
  const gone = () => Object.assign(new Error('stdout closed'), { code: 'EPIPE' });
  for await (const chunk of source) {
    if (out.destroyed) throw gone();
    if (out.write(chunk)) continue;
    if (out.destroyed) throw gone();
    await new Promise<void>((resolve, reject) => {
      const done = (err?: unknown) => {
        out.off('drain', done).off('error', done).off('close', closed);
        if (err) reject(err);
        else resolve();
      };
      const closed = () => done(gone());
      out.on('drain', done).on('error', done).on('close', closed);
    });
  }
}

/**
 * Writes a response body, through `stages` (the byte counter, then --compressed's decoders), to the
 * -o file (after the heads -i keeps for it; its directories made first with `createDirs`) or to
 * stdout. A body cut short leaves what came of it written (in the -o file too, as curl), then
 * its error is thrown (18): it is kept aside meanwhile, so pipeline() ends the output instead of
 * destroying it. A failure to write is returned as the line curl's 23 says (the file, or stdout,
 * failed, not the transfer), a reader of stdout that went away too (curl's "Failure writing
 * output to destination"): the rest of the body is dropped.
 */
export async function writeBody(
  body: Readable,
  stages: readonly Transform[],
  output: string | undefined,
  heads: string,
  stdout: Stdout,
  createDirs = false,
): Promise<string | undefined> {
  if (output && createDirs) {
    try {
      createDirsFor(output);
    } catch (err) {
      body.destroy();
      return fileProblem('-o', output, err as NodeJS.ErrnoException, createDirs);
    }
  }
  const out = output ? createWriteStream(output) : process.stdout;
  let fileError: NodeJS.ErrnoException | undefined;
  // A stage's failure (--compressed's decoder) reaches the file too, as pipeline() destroys it:
  // the file failed only when its error came first.
  let stageError: unknown;
  for (const stage of stages) stage.once('error', (err) => (stageError ??= err));
  if (output)
    out.once('error', (err) => {
      if (stageError === undefined) fileError = err;
    });
  let cutShort: { error: unknown } | undefined;
  async function* received() {
    try {
      for await (const chunk of body) yield chunk;
    } catch (error) {
      cutShort = { error };
    }
  }
  // With -o, the heads -i shows go into the file first, as curl writes them.
  if (heads) out.write(heads);
  try {
    if (output) await pipelineOf(received(), ...stages, out);
    else await pipelineOf(received(), ...stages, toStdout);
  } catch (err) {
    if (fileError !== undefined && output !== undefined) return fileProblem('-o', output, fileError, createDirs);
    const failed = stdout.error ?? (output === undefined ? (err as NodeJS.ErrnoException) : undefined);
    if (failed?.code && failed.code in WRITE_PROBLEMS) {
      body.destroy();
      return `stdout: ${writeProblem(failed)}`;
    }
    if (!isEpipe(err)) throw err;
    body.destroy();
  }
  if (cutShort) throw cutShort.error;
  return undefined;
}
