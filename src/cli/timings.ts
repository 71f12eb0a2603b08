/**
 * -w's curl timings and wire sizes (%{time_namelookup} … %{time_starttransfer}, %{size_header},
 * %{size_request}), from Node's and undici's diagnostics channels: each new connection's lookup,
 * TCP connect and TLS handshake (`net.client.socket`, which tls.connect publishes too), each request
 * head undici writes (`undici:client:sendHeaders`) and each response head it reads
 * (`undici:request:headers`). Loaded and subscribed only when -w names one of these variables: the
 * library and a run without them publish to no one (the channels' `hasSubscribers` checks).
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import type { Socket } from 'node:net';

/** When one new connection passed each phase (performance.now()), undefined for a phase it did not reach. */
interface Dial {
  readonly socket: Socket;
  readonly created: number;
  lookup?: number;
  connect?: number;
  secure?: number;
}

/** One request head undici wrote: when, on which socket, and its size as curl counts a request's. */
interface Sent {
  readonly at: number;
  readonly socket: Socket | undefined;
  readonly bytes: number;
}

/** curl's timings for one transfer, seconds from its start (0 for a phase that did not happen). */
export interface PhaseTimes {
  readonly namelookup: number;
  readonly connect: number;
  readonly appconnect: number;
  readonly pretransfer: number;
}

const METHODS_WITH_CONTENT = new Set(['PUT', 'POST', 'PATCH', 'QUERY', 'PROPFIND', 'PROPPATCH']);

/**
 * A head's field lines as `name: value\r\n`, from undici's flat [name, value, …] list (Buffers or
 * strings; HTTP/1.1's) or an object of them (HTTP/2's).
 */
function fieldBytes(fields: unknown): number {
  const flat = Array.isArray(fields) ? fields : Object.entries(fields ?? {}).flat();
  let n = 0;
  for (let i = 0; i + 1 < flat.length; i += 2) {
    const values = Array.isArray(flat[i + 1]) ? (flat[i + 1] as unknown[]) : [flat[i + 1]];
    for (const v of values) n += Buffer.byteLength(String(flat[i])) + 2 + Buffer.byteLength(String(v)) + 2;
  }
  return n;
}

/** The size of a request head as undici wrote it: HTTP/1.1's text, HTTP/2's pseudo-headers as curl renders them (`GET /p HTTP/2`). */
function requestBytes(message: {
  request: { method: string; path: string; body?: unknown; contentLength?: number | null };
  headers: unknown;
}): number {
  const { request, headers } = message;
  if (typeof headers === 'string') {
    // writeBuffer's ending: its content-length line, then the blank line.
    const body = request.body as { byteLength?: number } | null | undefined;
    const length = body?.byteLength ?? (body == null && METHODS_WITH_CONTENT.has(request.method) ? 0 : undefined);
    const cl =
      /\r\ncontent-length:/i.test(`\r\n${headers}`) || length === undefined ? '' : `content-length: ${length}\r\n`;
    return Buffer.byteLength(headers) + Buffer.byteLength(cl) + 2;
  }
  const h2 = (headers ?? {}) as Record<string, string | string[]>;
  let n = Buffer.byteLength(`${request.method} ${request.path} HTTP/2\r\n`);
  for (const [name, value] of Object.entries(h2)) {
    if (name.startsWith(':') && name !== ':authority') continue;
    n += fieldBytes([name === ':authority' ? 'host' : name, value]);
  }
  return n + 2;
}

export class Timings {
  #dials: Dial[] = [];
  readonly #dialOf = new WeakMap<object, Dial>();
  /** undici's `connected`, per socket: a connection whose own dial is not seen (TLS inside a proxy's tunnel). */
  readonly #connectedAt = new WeakMap<object, number>();
  #sent: Sent[] = [];
  readonly #sentBy = new WeakMap<object, Sent>();
  /** Each response head's size, as -D shows it (curl's %{size_header} adds them all). */
  #heads: Array<{ at: number; bytes: number }> = [];

  readonly #onSocket = (message: unknown) => {
    const socket = (message as { socket: Socket }).socket;
    const dial: Dial = { socket, created: performance.now() };
    this.#dials.push(dial);
    this.#dialOf.set(socket, dial);
    socket.once('lookup', () => {
      dial.lookup = performance.now();
    });
    socket.once('connect', () => {
      dial.connect = performance.now();
    });
    socket.once('secureConnect', () => {
      dial.secure = performance.now();
    });
  };
  readonly #onConnected = (message: unknown) => {
    const socket = (message as { socket?: object }).socket;
    if (socket) this.#connectedAt.set(socket, performance.now());
  };
  readonly #onSendHeaders = (message: unknown) => {
    const m = message as Parameters<typeof requestBytes>[0] & { socket?: Socket };
    const sent = { at: performance.now(), socket: m.socket, bytes: requestBytes(m) };
    this.#sent.push(sent);
    this.#sentBy.set(m.request, sent);
  };
  readonly #onHeaders = (message: unknown) => {
    const { request, response } = message as {
      request: object;
      response: { statusCode: number; statusText?: string; headers: unknown };
    };
    const socket = this.#sentBy.get(request)?.socket as (Socket & { alpnProtocol?: string | false }) | undefined;
    const status =
      socket?.alpnProtocol === 'h2'
        ? `HTTP/2 ${response.statusCode} \r\n`
        : `HTTP/1.1 ${response.statusCode} ${response.statusText ?? ''}\r\n`;
    this.#heads.push({
      at: performance.now(),
      bytes: Buffer.byteLength(status) + fieldBytes(response.headers) + 2,
    });
  };

  constructor() {
    subscribe('net.client.socket', this.#onSocket);
    subscribe('undici:client:connected', this.#onConnected);
    subscribe('undici:client:sendHeaders', this.#onSendHeaders);
    subscribe('undici:request:headers', this.#onHeaders);
  }

  /** Forgets what earlier transfers saw (each transfer's counts are its own). */
  reset(): void {
    this.#dials = [];
    this.#sent = [];
    this.#heads = [];
  }

  /**
   * The phases of the request whose response the transfer shows, seconds from `started`: its
   * connection's lookup, connect and TLS handshake when the transfer made that connection (0 for a
   * connection used again, and for TLS over plain http), and when its head was written.
   */
  phases(started: number): PhaseTimes {
    const since = (t: number | undefined) => (t === undefined ? 0 : Math.max(0, (t - started) / 1000));
    const last = this.#sent.at(-1);
    let dial = last?.socket ? this.#dialOf.get(last.socket) : this.#dials.at(-1);
    let appconnect: number | undefined;
    if (last?.socket && !dial) {
      // Not dialled by itself: TLS inside a proxy's tunnel (the tunnel's own dial is the proxy's,
      // curl's time_connect), or a connection of an earlier transfer (all 0, as curl's reuse).
      const connected = this.#connectedAt.get(last.socket);
      if (connected !== undefined && connected >= started) {
        dial = this.#dials.at(-1);
        if ((last.socket as Socket & { encrypted?: boolean }).encrypted) appconnect = connected;
      }
    }
    if (dial && dial.created < started) dial = undefined;
    const connect = since(dial?.connect);
    return {
      // An IP address is not looked up: its lookup is the dial's start (curl's few microseconds).
      namelookup: dial ? since(dial.lookup ?? dial.created) : 0,
      connect,
      appconnect: since(appconnect ?? dial?.secure),
      pretransfer: since(last?.at),
    };
  }

  /** curl's %{size_header}: every response head of the transfer (a redirect's, a handshake's 401s). */
  headerBytes(): number {
    return this.#heads.reduce((n, h) => n + h.bytes, 0);
  }

  /** curl's %{size_request}: every request head the transfer wrote. */
  requestBytes(): number {
    return this.#sent.reduce((n, s) => n + s.bytes, 0);
  }

  stop(): void {
    unsubscribe('net.client.socket', this.#onSocket);
    unsubscribe('undici:client:connected', this.#onConnected);
    unsubscribe('undici:client:sendHeaders', this.#onSendHeaders);
    unsubscribe('undici:request:headers', this.#onHeaders);
  }
}
