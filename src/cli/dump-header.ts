/**
 * `-D, --dump-header FILE`: the head of every response received, as curl writes them — a
 * handshake's 401s, a proxy's 407s and its CONNECT answer, redirects and the final response, in
 * the order they came (curl's header callback sees each of them). `-` is stdout, `%` stderr (curl
 * 8.10+). Loaded only with -D; heads are laid out by output.ts's `headText` (`-i` uses it too).
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import type { RedactedHeader } from '../diagnostics.ts';
import { headText } from './output.ts';
import type { LegRecord } from './trace.ts';

/** Where -D writes, opened (and emptied) before the first request, as curl opens it. */
export class HeaderDump {
  readonly #fd: number | undefined;
  readonly #stream: NodeJS.WriteStream | undefined;
  readonly #reasons: Readonly<Record<number, string | undefined>>;
  /** The first failure to write the file (curl's 23 once the transfer is over). */
  error: NodeJS.ErrnoException | undefined;

  /** Throws the system error when the file cannot be created. */
  static async open(target: string): Promise<HeaderDump> {
    // node:http for its reason phrases, only with -D (a request does not load it otherwise).
    return new HeaderDump(target, (await import('node:http')).STATUS_CODES);
  }

  private constructor(target: string, reasons: Readonly<Record<number, string | undefined>>) {
    this.#reasons = reasons;
    if (target === '-') this.#stream = process.stdout;
    else if (target === '%') this.#stream = process.stderr;
    else this.#fd = openSync(target, 'w');
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

  /**
   * A leg's response the command does not receive itself (an answered challenge, a CONNECT's
   * answer): its head as the trace has it, tokens and cookies `[redacted]` (S2), with the standard
   * reason phrase (the trace does not carry the server's).
   */
  leg(record: LegRecord): void {
    const r = record.response;
    if (!r || (r.delivered && record.request.method !== 'CONNECT')) return;
    this.write(headText(r.protocol, r.status, this.#reasons[r.status] ?? '', r.headers as readonly RedactedHeader[]));
  }

  close(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
  }
}
