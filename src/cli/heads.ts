/**
 * The heads of the responses a command receives, in the order curl's header callback sees them: a
 * handshake's 401s, a proxy's 407s and its CONNECT answer (from the trace, as they come), then each
 * response the command receives itself (a redirect it follows, an answer it retries, the final
 * one). One sequence for `-D` (every head) and `-i` (the same heads, the body after the last: a
 * handshake's 401 bodies are swallowed, as curl's are). Loaded only with -i, -I or -D.
 */
import type { RedactedHeader } from '../diagnostics.ts';
import type { HeaderDump } from './dump-header.ts';
import { headText, responseHead } from './output.ts';
import type { LegRecord } from './trace.ts';

/** Where one transfer's `-i` (or `-I`) heads go: stdout, or kept for the -o file, ahead of the body (curl writes them there). */
export type IncludeSink = (text: string) => void;

export class ResponseHeads {
  readonly #dump: HeaderDump | undefined;
  #reasons: Readonly<Record<number, string | undefined>> | undefined;
  /**
   * The last leg's head, held until the next head or the end of the attempt shows it: a 401 read
   * while the agent tried to answer it may turn out to be the answer (what it offers cannot run
   * here: the agent's deliver401), which the command receives itself; it {@link drop}s this one,
   * so that the 401 shows once.
   */
  #pending: string | undefined;
  /** The running transfer's `-i`, set by it (each transfer has its own -o); undefined without -i. */
  include: IncludeSink | undefined;

  constructor(dump: HeaderDump | undefined) {
    this.#dump = dump;
  }

  /**
   * A leg's response the command does not receive itself (an answered challenge, a CONNECT's
   * answer): its head as the trace has it, tokens, Auth-ID and cookies `[redacted]` (S2), with the
   * standard reason phrase (the trace does not carry the server's).
   */
  leg(record: LegRecord): void {
    const r = record.response;
    if (!r || (r.delivered && record.request.method !== 'CONNECT')) return;
    const reason = r.protocol === 'h2' ? '' : this.#reason(r.status);
    this.flush();
    this.#pending = headText(r.protocol, r.status, reason, r.headers as readonly RedactedHeader[]);
  }

  /** Shows the leg's head held back, if any (before the next head, and when an attempt ends). */
  flush(): void {
    const text = this.#pending;
    if (text === undefined) return;
    this.#pending = undefined;
    this.#write(text);
  }

  /** Forgets the leg's head held back: it is the answer, which the command shows as it receives it. */
  drop(): void {
    this.#pending = undefined;
  }

  /**
   * A response the command receives itself, verbatim, to -D and -i: also the final head that -f
   * turns into exit 22 (curl shows it, then no body); up to header line `cutAt` only, for one that
   * --compressed refuses there (curl's 61 as it reads that line).
   */
  received(protocol: string | undefined, res: Parameters<typeof responseHead>[1], cutAt?: number): void {
    this.flush();
    this.#write(responseHead(protocol, res, cutAt));
  }

  #write(text: string): void {
    this.#dump?.write(text);
    this.include?.(text);
  }

  #reason(status: number): string {
    // node:http for its table, synchronously and only once an HTTP/1.1 head needs it: importing it
    // costs ~30 ms of CPU, which an -i over HTTP/2 would pay for nothing.
    this.#reasons ??= process.getBuiltinModule('node:http').STATUS_CODES;
    return this.#reasons[status] ?? '';
  }
}
