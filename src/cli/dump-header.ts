/**
 * `-D, --dump-header FILE`: the head of every response received, as curl writes them — a
 * handshake's 401s, a proxy's 407s and its CONNECT answer, redirects and the final response, in
 * the order they came (curl's header callback sees each of them). `-` is stdout, `%` stderr (curl
 * 8.10+). Loaded only with -D; which heads, in which order, is heads.ts's (`-i` shows the same).
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { createDirsFor } from './output.ts';

/** Where -D writes, opened (and emptied) before the first request, as curl opens it. */
export class HeaderDump {
  readonly #fd: number | undefined;
  readonly #stream: NodeJS.WriteStream | undefined;
  /** The first failure to write the file (curl's 23 once the transfer is over). */
  error: NodeJS.ErrnoException | undefined;

  /** Throws the system error when the file cannot be created; `createDirs` (--create-dirs) makes its directories first. */
  constructor(target: string, createDirs = false) {
    if (target === '-') this.#stream = process.stdout;
    else if (target === '%') this.#stream = process.stderr;
    else {
      if (createDirs) createDirsFor(target);
      this.#fd = openSync(target, 'w');
    }
  }

  write(text: string): void {
    if (this.#stream) {
      this.#stream.write(text);
      return;
    }
    if (this.error || this.#fd === undefined) return;
    try {
      writeSync(this.#fd, text);
    } catch (err) {
      this.error = err as NodeJS.ErrnoException;
    }
  }

  close(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
  }
}
