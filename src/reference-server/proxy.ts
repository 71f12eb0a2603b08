/**
 * The reference server's proxy mode: a small forward proxy on loopback for the parts of the draft no
 * public proxy implements (H3, H4; D§4, D§6). It speaks HTTP/2 and HTTP/1.1 over TLS (ALPN) to the
 * client, takes plain-http targets (absolute-form on HTTP/1.1, `:authority` on HTTP/2) and forwards
 * them to the reference server over TLS — each client connection bound to its own upstream connection
 * (D§4.1: "Proxies MUST bind the client-to-proxy and proxy-to-server connections"). It can add
 * `Proxy-support: Session-Based-Authentication` and `Remote-http-version` to every response, can ask
 * for Basic proxy authentication, or NTLM for forwarded requests (authenticating the client
 * connection, as Squid and Apache do), and tunnels CONNECT (HTTP/1.1) to loopback. Test-only.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createSecureServer, type Http2ServerRequest, type Http2ServerResponse } from 'node:http2';
import { type AddressInfo, connect as netConnect, type Socket } from 'node:net';
import { Client } from 'undici';
import type { NtlmAcceptor } from '../mechanisms/ntlm/acceptor.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from './test-pki.ts';
import { headerValue, ntlmMessageType, parseAuthorization } from './wire.ts';

/** Live options of {@link ReferenceProxy}; change any field at runtime. */
export interface ReferenceProxyOptions {
  /** Add `Proxy-support: Session-Based-Authentication` to responses (H4). Default false. */
  proxySupport?: boolean;
  /** Add `Remote-http-version: <value>` to responses (H3), e.g. `1.1`. Default none. */
  remoteHttpVersion?: string;
  /** Require Basic proxy authentication with these `user → password` (407 otherwise). Default none. */
  basicUsers?: Record<string, string>;
  /**
   * Require NTLM proxy authentication of forwarded requests with these `user → password` (domain
   * `EXAMPLE`): a client connection (an HTTP/2 session or an HTTP/1.1 connection) is authenticated
   * once, by a NEGOTIATE and an AUTHENTICATE on it; a 407 offers `NTLM` (and Basic with
   * `basicUsers`). Not for CONNECT: node:http hands a CONNECT's socket over after one answer, so a
   * second leg cannot follow on it (CONNECT goes by `basicUsers` alone). Default none.
   */
  ntlmUsers?: Record<string, string>;
  /** CA for the TLS connections to upstream origins. Default the reference server's test CA. */
  upstreamCa?: string;
  /**
   * How long (ms) to hold a forwarded request before its `Proxy-Authorization` is checked (a test
   * hook: puts a request on the wire while a test changes `basicUsers`). Default none.
   */
  delayMs?: (request: { readonly target: string; readonly proxyAuthorization: string | undefined }) => number;
  /**
   * How long (ms) to hold a CONNECT before its `Proxy-Authorization` is checked (a test hook: puts a
   * tunnel's CONNECT on the wire while a test changes `basicUsers`; {@link delayMs} is for forwarded
   * requests only). `target` is `host:port`. Default none.
   */
  connectDelayMs?: (connect: { readonly target: string; readonly proxyAuthorization: string | undefined }) => number;
}

/** One request the proxy handled. */
export interface ProxyExchange {
  readonly seq: number;
  /** `c1`, `c2`, ...: one per client connection (h2 session or HTTP/1.1 connection). */
  readonly connectionId: string;
  readonly protocol: 'h2' | 'http/1.1';
  readonly method: string;
  /** The target as the client named it: absolute URL, or `host:port` for CONNECT. */
  readonly target: string;
  readonly proxyAuthorization: boolean;
  readonly authorization: boolean;
  /** The NTLM message its Proxy-Authorization carried, if any (whether or not the proxy asks for NTLM). */
  readonly proxyNtlm?: 'negotiate' | 'authenticate';
  /** Who the proxy let the request through as: the user its connection's NTLM login proved (`ntlmUsers`), if any. */
  readonly proxyUser?: string;
  readonly status: number;
}

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authorization',
  'proxy-authenticate',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
  'http2-settings',
]);

type AnyRequest = IncomingMessage | Http2ServerRequest;
type AnyResponse = ServerResponse | Http2ServerResponse;

export class ReferenceProxy {
  /** `https://localhost:PORT`. */
  readonly origin: string;
  readonly port: number;
  /** PEM of the CA of the proxy's certificate. */
  readonly ca: string = CA_CERT;
  readonly options: ReferenceProxyOptions;
  /** Every request and CONNECT handled, in order. */
  readonly exchanges: ProxyExchange[];
  readonly #close: () => Promise<void>;

  /** @internal Use {@link startReferenceProxy}. */
  constructor(port: number, options: ReferenceProxyOptions, exchanges: ProxyExchange[], close: () => Promise<void>) {
    this.port = port;
    this.origin = `https://localhost:${port}`;
    this.options = options;
    this.exchanges = exchanges;
    this.#close = close;
  }

  close(): Promise<void> {
    return this.#close();
  }
}

/** The token of a `Proxy-Authorization: <scheme> <token>` (parsed as the reference server parses Authorization). */
function tokenOf(header: string | string[] | undefined, scheme: 'basic' | 'ntlm'): Buffer | undefined {
  const value = headerValue(header);
  const parsed = value === undefined ? undefined : parseAuthorization(value);
  return parsed?.ok && parsed.scheme.toLowerCase() === scheme ? parsed.token : undefined;
}

function authorized(options: ReferenceProxyOptions, header: string | string[] | undefined): boolean {
  if (!options.basicUsers) return true;
  const token = tokenOf(header, 'basic');
  if (!token) return false;
  const decoded = token.toString('utf8');
  const colon = decoded.indexOf(':');
  return colon > 0 && options.basicUsers[decoded.slice(0, colon)] === decoded.slice(colon + 1);
}

/** A client connection's NTLM state: the handshake running on it, or who it is authenticated as. */
interface NtlmConnection {
  acceptor?: NtlmAcceptor;
  user?: string;
}

/** The NTLM message in a `Proxy-Authorization: NTLM <token>` (1 NEGOTIATE, 3 AUTHENTICATE), else undefined. */
function ntlmMessage(header: string | string[] | undefined): { type: number; token: Buffer } | undefined {
  const token = tokenOf(header, 'ntlm');
  const type = token && ntlmMessageType(token);
  return token && type !== undefined ? { type, token } : undefined;
}

/** Starts a {@link ReferenceProxy} on 127.0.0.1 (any free port). */
export async function startReferenceProxy(opts: ReferenceProxyOptions = {}): Promise<ReferenceProxy> {
  const options: ReferenceProxyOptions = { ...opts };
  // Loaded when a request first needs it, as the reference server loads its acceptor lazily.
  let acceptor: Promise<typeof NtlmAcceptor> | undefined;
  const ntlmConnections = new WeakMap<object, NtlmConnection>();
  const exchanges: ProxyExchange[] = [];
  const ids = new WeakMap<object, string>();
  const upstreams = new WeakMap<object, Map<string, Client>>();
  const allUpstreams = new Set<Client>();
  const sockets = new Set<Socket>();
  let nextConn = 0;
  let seq = 0;

  const connectionOf = (req: AnyRequest): object =>
    'stream' in req && req.stream ? (req.stream.session as object) : (req.socket as object);
  const idOf = (conn: object): string => {
    let id = ids.get(conn);
    if (!id) {
      id = `c${++nextConn}`;
      ids.set(conn, id);
    }
    return id;
  };
  const proxyHeaders = (): Record<string, string> => ({
    ...(options.proxySupport ? { 'proxy-support': 'Session-Based-Authentication' } : {}),
    ...(options.remoteHttpVersion ? { 'remote-http-version': options.remoteHttpVersion } : {}),
  });
  /** The upstream connection bound to this client connection and target. */
  const upstreamFor = (conn: object, target: URL): Client => {
    let byTarget = upstreams.get(conn);
    if (!byTarget) {
      byTarget = new Map();
      upstreams.set(conn, byTarget);
      const closeAll = () => {
        for (const c of byTarget!.values()) {
          allUpstreams.delete(c);
          c.close().catch(() => {});
        }
      };
      (conn as { once(e: string, f: () => void): void }).once('close', closeAll);
    }
    const key = target.host;
    let client = byTarget.get(key);
    if (!client) {
      client = new Client(`https://${target.host}`, {
        connect: { ca: options.upstreamCa ?? CA_CERT },
        allowH2: true,
        pipelining: 1,
      });
      byTarget.set(key, client);
      allUpstreams.add(client);
    }
    return client;
  };

  const server = createSecureServer({ allowHTTP1: true, cert: SERVER_CERT, key: SERVER_KEY });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });

  const handle = async (req: AnyRequest, anyRes: AnyResponse): Promise<void> => {
    // The compat APIs of node:http and node:http2 agree on what is used here.
    const res = anyRes as ServerResponse;
    const h2 = req.httpVersionMajor === 2;
    const conn = connectionOf(req);
    const headers = req.headers as Record<string, string | string[] | undefined>;
    let target: URL;
    try {
      target = h2 ? new URL(`http://${String(headers[':authority'])}${req.url}`) : new URL(req.url ?? '');
    } catch {
      target = new URL('http://invalid/');
    }
    const delay = options.delayMs?.({
      target: target.href,
      proxyAuthorization: headerValue(headers['proxy-authorization']),
    });
    if (delay && delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    const ntlm = ntlmMessage(headers['proxy-authorization']);
    /** The NTLM user this connection is authenticated as, once it is. */
    let proxyUser: string | undefined;
    const record = (status: number) =>
      exchanges.push({
        seq: ++seq,
        connectionId: idOf(conn),
        protocol: h2 ? 'h2' : 'http/1.1',
        method: req.method ?? '',
        target: target.href,
        proxyAuthorization: headers['proxy-authorization'] !== undefined,
        authorization: headers.authorization !== undefined,
        ...(ntlm?.type === 1 ? { proxyNtlm: 'negotiate' as const } : {}),
        ...(ntlm?.type === 3 ? { proxyNtlm: 'authenticate' as const } : {}),
        ...(proxyUser !== undefined ? { proxyUser } : {}),
        status,
      });
    const end = (status: number, extra: Record<string, string | string[]> = {}) => {
      record(status);
      res.writeHead(status, { ...proxyHeaders(), ...extra, 'content-length': '0' });
      res.end();
    };
    const challenge = (token?: Buffer) => {
      req.resume();
      const schemes = [
        ...(options.ntlmUsers ? [token ? `NTLM ${token.toString('base64')}` : 'NTLM'] : []),
        ...(options.basicUsers && !token ? ['Basic realm="reference-proxy"'] : []),
      ];
      end(407, { 'proxy-authenticate': schemes.length === 1 ? schemes[0]! : schemes });
    };
    if (options.ntlmUsers) {
      // NTLM authenticates the client connection: once it has, its requests need nothing more.
      const state = ntlmConnections.get(conn) ?? {};
      ntlmConnections.set(conn, state);
      if (state.user === undefined && !(options.basicUsers && authorized(options, headers['proxy-authorization']))) {
        if (ntlm?.type === 1) {
          acceptor ??= import('../mechanisms/ntlm/acceptor.ts').then((m) => m.NtlmAcceptor);
          state.acceptor = new (await acceptor)({ users: options.ntlmUsers, domain: 'EXAMPLE' });
        }
        const step = ntlm && state.acceptor ? state.acceptor.step(ntlm.token) : undefined;
        if (ntlm?.type !== 1) state.acceptor = undefined;
        if (step?.kind === 'challenge') return challenge(step.token);
        if (step?.kind !== 'accepted') return challenge();
        state.user = step.user;
      }
      proxyUser = state.user;
    } else if (!authorized(options, headers['proxy-authorization'])) {
      return challenge();
    }
    if (target.protocol !== 'http:' || !['localhost', '127.0.0.1'].includes(target.hostname)) {
      req.resume();
      end(403); // loopback only
      return;
    }
    const forwarded: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(headers)) {
      if (v !== undefined && !k.startsWith(':') && !HOP_BY_HOP.has(k)) forwarded[k] = v;
    }
    try {
      const body = req.method === 'GET' || req.method === 'HEAD' ? null : (req as IncomingMessage);
      if (!body) req.resume();
      const up = await upstreamFor(conn, target).request({
        method: (req.method ?? 'GET') as 'GET',
        path: `${target.pathname}${target.search}`,
        headers: forwarded,
        body,
      });
      const out: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(up.headers)) {
        if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
      }
      record(up.statusCode);
      res.writeHead(up.statusCode, { ...out, ...proxyHeaders() });
      for await (const chunk of up.body) res.write(chunk);
      res.end();
    } catch {
      if (!res.headersSent) end(502);
      else res.end();
    }
  };
  server.on('request', (req: AnyRequest, res: AnyResponse) => {
    handle(req, res).catch(() => {});
  });
  // HTTP/1.1 CONNECT: a tunnel to a loopback port.
  server.on('connect', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    const delay = options.connectDelayMs?.({
      target: req.url ?? '',
      proxyAuthorization: headerValue(req.headers['proxy-authorization']),
    });
    if (delay && delay > 0) {
      socket.on('error', () => {}); // a client that gives up meanwhile resets it
      setTimeout(() => tunnel(req, socket, head), delay);
    } else tunnel(req, socket, head);
  });
  const tunnel = (req: IncomingMessage, socket: Socket, head: Buffer): void => {
    // (A client that went away while the CONNECT was held gets nothing.)
    if (socket.destroyed) return;
    const target = req.url ?? '';
    const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
    const record = (status: number) =>
      exchanges.push({
        seq: ++seq,
        connectionId: idOf(req.socket),
        protocol: 'http/1.1',
        method: 'CONNECT',
        target,
        proxyAuthorization: req.headers['proxy-authorization'] !== undefined,
        authorization: req.headers.authorization !== undefined,
        status,
      });
    const extra = Object.entries(proxyHeaders())
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('');
    if (!authorized(options, req.headers['proxy-authorization'])) {
      record(407);
      // node:http stops parsing a connection after CONNECT, so the client must answer on a new one.
      socket.end(
        `HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="reference-proxy"\r\n${extra}Connection: close\r\nContent-Length: 0\r\n\r\n`,
      );
      return;
    }
    if (!['localhost', '127.0.0.1'].includes(host) || !Number.isInteger(port)) {
      record(403);
      socket.end(`HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n`);
      return;
    }
    const upstream = netConnect({ host: '127.0.0.1', port }, () => {
      record(200);
      socket.write(`HTTP/1.1 200 Connection Established\r\n${extra}\r\n`);
      if (head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    sockets.add(upstream);
    upstream.once('close', () => sockets.delete(upstream));
    upstream.on('error', () => socket.destroy());
    socket.on('error', () => upstream.destroy());
  };

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return new ReferenceProxy(port, options, exchanges, async () => {
    for (const c of allUpstreams) await c.destroy().catch(() => {});
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
}
