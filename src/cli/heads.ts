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

/** Where one transfer's `-i` heads go. */
export interface IncludeSink {
  /** Writes a head: to stdout, or kept for the -o file, ahead of the body (curl writes them there). */
  readonly write: (text: string) => void;
  /** Whether the handshake's heads go there too: with -i; not with -I, which keeps to the heads the command receives. */
  readonly legs: boolean;
}

export class ResponseHeads {
  readonly #dump: HeaderDump | undefined;
  #reasons: Readonly<Record<number, string | undefined>> | undefined;
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
    const text = headText(r.protocol, r.status, reason, r.headers as readonly RedactedHeader[]);
    this.#dump?.write(text);
    if (this.include?.legs) this.include.write(text);
  }

  /**
   * A response the command receives itself, verbatim: to -D always, to -i when `shown` (not the
   * final head -f turns into exit 22).
   */
  received(protocol: string | undefined, res: Parameters<typeof responseHead>[1], shown: boolean): void {
    const text = responseHead(protocol, res);
    this.#dump?.write(text);
    if (shown) this.include?.write(text);
  }

  #reason(status: number): string {
    // node:http for its table, synchronously and only once an HTTP/1.1 head needs it: importing it
    // costs ~30 ms of CPU, which an -i over HTTP/2 would pay for nothing.
    this.#reasons ??= process.getBuiltinModule('node:http').STATUS_CODES;
    return this.#reasons[status] ?? '';
  }
}
