/**
 * Reading an HTTP/1.1 response from a raw socket: the proxy's answers to CONNECT (H5). Bounded: the
 * head by {@link MAX_PROXY_HEAD_BYTES}, a body by the caller's limit.
 */
import type { Duplex } from 'node:stream';
import { saysClose as closes } from '../headers.ts';

/** Largest response head (status line and headers) accepted from a proxy (S3). */
export const MAX_PROXY_HEAD_BYTES = 64 * 1024;

export interface ResponseHead {
  readonly status: number;
  readonly version: string;
  /** Lower-case names; a repeated field is an array. */
  readonly headers: Record<string, string | string[]>;
  /** The proxy will close the connection after this response. */
  readonly close: boolean;
}

export class WireError extends Error {}

/** The proxy ended the connection before the answer being read was whole (a head, or a body, cut). */
export class WireClosedError extends WireError {
  constructor() {
    super('the proxy closed the connection');
  }
}

/** Pull-style reader over a socket's 'data' events. */
export class ResponseReader {
  readonly #socket: Duplex;
  #buf: Buffer = Buffer.alloc(0);
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;
  #received = false;
  readonly #onData = (chunk: Buffer) => {
    this.#received = true;
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : chunk;
    this.#notify();
  };
  readonly #onEnd = () => {
    this.#ended = true;
    this.#notify();
  };
  readonly #onError = (err: Error) => {
    this.#error = err;
    this.#notify();
  };

  constructor(socket: Duplex) {
    this.#socket = socket;
    socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('close', this.#onEnd);
    socket.on('error', this.#onError);
  }

  /** Whether any byte came from the peer. */
  get received(): boolean {
    return this.#received;
  }

  /** Bytes read from the peer and not consumed yet (0: nothing of the next response has come). */
  get buffered(): number {
    return this.#buf.length;
  }

  get ended(): boolean {
    return this.#ended || this.#error !== undefined;
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  async #more(): Promise<void> {
    // Not reached by the CONNECT handshake, which checks `ended` before it reads again; kept so that
    // a reader used after its socket failed reports why rather than "closed".
    if (this.#error) throw this.#error;
    if (this.#ended) throw new WireClosedError();
    await new Promise<void>((resolve) => {
      this.#wake = resolve;
    });
    if (this.#error) throw this.#error;
  }

  async readHead(): Promise<ResponseHead> {
    for (;;) {
      const end = this.#buf.indexOf('\r\n\r\n');
      if (end >= 0) {
        const head = this.#buf.subarray(0, end).toString('latin1');
        this.#buf = this.#buf.subarray(end + 4);
        return parseHead(head);
      }
      if (this.#buf.length > MAX_PROXY_HEAD_BYTES)
        throw new WireError(`response head larger than ${MAX_PROXY_HEAD_BYTES} bytes`);
      await this.#more();
    }
  }

  /**
   * Reads and discards the body of `head` — a 407 to CONNECT, the only answer whose body is read (a
   * 2xx has none, other statuses end the tunnel), so there is no bodiless 1xx/204/304 case here.
   * Returns false if it exceeds `max`.
   */
  async drainBody(head: ResponseHead, max: number): Promise<boolean> {
    const te = headerValue(head.headers, 'transfer-encoding');
    if (te && /(^|,)\s*chunked\s*$/i.test(te)) return this.#drainChunked(max);
    const cl = headerValue(head.headers, 'content-length');
    if (cl !== undefined) {
      if (!/^\d+$/.test(cl.trim())) throw new WireError('invalid Content-Length');
      const n = Number(cl.trim());
      if (n > max) return false;
      return this.#skip(n).then(() => true);
    }
    // No length: the body runs to the end of the connection.
    while (!this.ended) {
      if (this.#buf.length > max) return false;
      await this.#more().catch(() => {});
    }
    this.#buf = Buffer.alloc(0);
    return true;
  }

  async #skip(n: number): Promise<void> {
    let left = n;
    for (;;) {
      const take = Math.min(left, this.#buf.length);
      this.#buf = this.#buf.subarray(take);
      left -= take;
      if (left === 0) return;
      await this.#more();
    }
  }

  async #line(): Promise<string> {
    for (;;) {
      const i = this.#buf.indexOf('\r\n');
      if (i >= 0) {
        const line = this.#buf.subarray(0, i).toString('latin1');
        this.#buf = this.#buf.subarray(i + 2);
        return line;
      }
      if (this.#buf.length > 8192) throw new WireError('chunk line too long');
      await this.#more();
    }
  }

  async #drainChunked(max: number): Promise<boolean> {
    let total = 0;
    for (;;) {
      const size = Number.parseInt((await this.#line()).split(';', 1)[0]!.trim(), 16);
      if (!Number.isFinite(size) || size < 0) throw new WireError('invalid chunk size');
      if (size === 0) {
        while ((await this.#line()) !== '') {} // trailers
        return true;
      }
      total += size;
      if (total > max) return false;
      await this.#skip(size);
      if ((await this.#line()) !== '') throw new WireError('malformed chunk');
    }
  }

  /**
   * Stops reading; bytes read past the head go back into the socket for whoever reads next.
   * Returns how many: the socket's `bytesRead` counts them already, as the next reader's.
   */
  detach(): number {
    this.#socket.off('data', this.#onData);
    this.#socket.off('end', this.#onEnd);
    this.#socket.off('close', this.#onEnd);
    this.#socket.off('error', this.#onError);
    this.#socket.pause();
    const back = this.#buf.length;
    if (back) this.#socket.unshift(this.#buf);
    this.#buf = Buffer.alloc(0);
    return back;
  }
}

export function headerValue(headers: Record<string, string | string[]>, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v.join(', ') : v;
}

function parseHead(text: string): ResponseHead {
  const lines = text.split('\r\n');
  const m = /^HTTP\/(\d\.\d) (\d{3})(?: .*)?$/.exec(lines[0]!); // split() returns at least one element
  if (!m) throw new WireError('malformed status line');
  const headers: Record<string, string | string[]> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw new WireError('malformed header line');
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    const prev = headers[name];
    headers[name] = prev === undefined ? value : Array.isArray(prev) ? [...prev, value] : [prev, value];
  }
  const version = m[1]!;
  const close = saysClose(headers) || (version === '1.0' && !/keep-alive/i.test(connectionTokens(headers)));
  return { status: Number(m[2]), version, headers, close };
}

/** `Connection` and an old proxy's `Proxy-Connection`, one comma-separated list. */
function connectionTokens(headers: Readonly<Record<string, string | string[] | undefined>>): string {
  return [headers.connection, headers['proxy-connection']]
    .flat()
    .filter((v) => v !== undefined)
    .join(',');
}

/** The head says its connection ends after it (`Connection: close`, or an old proxy's `Proxy-Connection: close`). */
export function saysClose(headers: Readonly<Record<string, string | string[] | undefined>>): boolean {
  return closes(connectionTokens(headers));
}
