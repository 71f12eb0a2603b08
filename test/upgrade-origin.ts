/**
 * A small HTTP/1.1 origin for upgrade tests (H1, H5): it wants NTLM (the acceptor of
 * src/mechanisms/ntlm, a real NTLMv2 password check) when asked to, then switches protocols and
 * echoes. It records every request it reads.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer as createTcpServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { NtlmAcceptor } from '../src/mechanisms/ntlm/acceptor.ts';
import { serverEndPointHash } from '../src/reference-server/index.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';

export interface Seen {
  readonly connection: number;
  readonly method: string;
  readonly path: string;
  readonly upgrade: string | undefined;
  /** The scheme and NTLM message type of Authorization, e.g. `NTLM/1`, or undefined. */
  readonly authorization: string | undefined;
  readonly status: number;
  /** The request's Cookie header. */
  readonly cookie?: string | undefined;
}

export interface UpgradeServer {
  readonly origin: string;
  readonly port: number;
  readonly seen: Seen[];
  /** Resolves once connection `n` (1-based) has closed. */
  closed(n: number): Promise<void>;
  close(): Promise<void>;
}

/**
 * An HTTP/1.1 origin that wants NTLM (when `ntlm`) and then answers `Upgrade: websocket` with 101,
 * a greeting naming the user in the same write as the 101, and an echo of whatever comes next.
 */
export async function upgradeServer(opts: {
  ntlm: boolean;
  /** Wants Basic (alice's password) instead; `cutChallengeAt` cuts its 401 as NTLM's. */
  basic?: boolean;
  challengeBody?: string;
  /** Authenticate, then refuse the upgrade with 403. */
  refuse?: boolean;
  /** Another challenge offered next to NTLM's first one. */
  alsoOffer?: string;
  /** Never answer the request with this index (0-based, across connections). */
  stallAt?: number;
  /** Never answer a request carrying an NTLM AUTHENTICATE (a server silent on the password's leg). */
  stallAuthenticate?: boolean;
  /** On this connection (1-based), switch protocols in answer to NTLM's NEGOTIATE, authenticating no one. */
  upgradeNegotiateOn?: number;
  /** Close the connection, unanswered, under the request with this index (0-based, across connections). */
  dropAt?: number;
  /**
   * TLS with the reference server's certificate (`https://localhost`), and NTLM requires the
   * client's channel binding to be that certificate's tls-server-end-point hash.
   */
  tls?: boolean;
  /** With `tls`: require a client certificate of the test CA in the handshake; the greeting names its CN. */
  requireClientCertificate?: boolean;
  /**
   * With `tls`: ask for a client certificate of the test CA in the handshake, take the connection
   * without one, and answer `Transport mode="tls-client-certificate"` (401) on it (after `alsoOffer`'s
   * challenge, if any, in the same header); with one, the greeting names its CN. With `ntlm`, a
   * request carrying NTLM goes to the NTLM handshake instead.
   */
  transport?: boolean;
  /** With `transport`: a connection presenting a certificate the test CA does not verify is closed at once (as Node's https). */
  refuseUnverified?: boolean;
  /** An `Authentication-Info` value on the 101 (and on `refuse`'s 403). */
  authenticationInfo?: string;
  /** Set a cookie on each 401 (`leg=N`, its index on the connection) and on the 101 (`ws=1`). */
  setCookies?: boolean;
  /**
   * NTLM's CHALLENGE (the 401 to a NEGOTIATE) says `Connection: close`, and the connection closes
   * after it: on every connection, or (`'first'`) on the first one only (a keep-alive limit met once).
   */
  closeOnChallenge?: boolean | 'first';
  /** A `Keep-Alive` header on every 401 (e.g. `timeout=2`: Apache's KeepAliveTimeout 2). */
  keepAlive?: string;
  /**
   * The NTLM (or Basic) 401 answering the request with this index (0-based, across connections) comes with its
   * head whole and a few bytes of its body, then the connection closes (a challenge's body cut short).
   */
  cutChallengeAt?: number;
  /** NTLM's CHALLENGE (the 401 to a NEGOTIATE) is written once this settles. */
  holdChallenge?: () => Promise<void>;
  /**
   * Told once NTLM's CHALLENGE is written on connection `n`, with `close`, which closes that
   * connection at once (its FIN right behind the 401 on the wire), saying nothing of it before.
   */
  challengeWritten?: (n: number, close: () => void) => void;
}): Promise<UpgradeServer> {
  const seen: Seen[] = [];
  const sockets = new Set<Socket>();
  const closedOnes = new Map<number, () => void>();
  const closedEarly = new Set<number>();
  let connections = 0;
  const onConnection = (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    const connection = ++connections;
    socket.once('close', () => closedOnes.get(connection)?.() ?? closedEarly.add(connection));
    const acceptor = new NtlmAcceptor({
      users: { 'EXAMPLE\\alice': 'alicepw' },
      domain: 'EXAMPLE',
      ...(opts.tls ? { channelBinding: serverEndPointHash() } : {}),
    });
    if (
      opts.refuseUnverified &&
      !(socket as TLSSocket).authorized &&
      (socket as TLSSocket).getPeerCertificate().subject
    ) {
      socket.destroy();
      return;
    }
    const certified = opts.transport ? (socket as TLSSocket).authorized : opts.requireClientCertificate;
    let user: string | undefined = certified
      ? `cert:${(socket as TLSSocket).getPeerCertificate().subject?.CN}`
      : undefined;
    let buf = Buffer.alloc(0);
    const respond = (status: number, text: string, headers: Record<string, string>, body = '', cut = false) => {
      socket.write(
        `HTTP/1.1 ${status} ${text}\r\n${Object.entries({
          ...headers,
          ...(status === 401 && opts.keepAlive ? { 'keep-alive': opts.keepAlive } : {}),
          'content-length': String(Buffer.byteLength(body) + (cut ? 100 : 0)),
        })
          .map(([k, v]) => `${k}: ${v}\r\n`)
          .join('')}\r\n${body}`,
        // (Written first, then closed: the head and those bytes reach the client before the close.)
        cut ? () => setTimeout(() => socket.destroy(), 20) : undefined,
      );
    };
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
        buf = buf.subarray(end + 4);
        const [method = '', path = ''] = lines[0]!.split(' ');
        const headers: Record<string, string> = {};
        for (const l of lines.slice(1)) {
          const i = l.indexOf(':');
          headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
        }
        const authenticate = /^NTLM (\S+)$/.exec(headers.authorization ?? '')?.[1];
        if (
          seen.length === opts.stallAt ||
          (opts.stallAuthenticate && authenticate && Buffer.from(authenticate, 'base64').readUInt32LE(8) === 3)
        ) {
          seen.push({ connection, method, path, upgrade: undefined, authorization: 'stalled', status: 0 });
          return;
        }
        if (seen.length === opts.dropAt) {
          seen.push({ connection, method, path, upgrade: undefined, authorization: 'dropped', status: 0 });
          socket.destroy();
          return;
        }
        const auth = headers.authorization;
        const token = /^NTLM (\S+)$/.exec(auth ?? '')?.[1];
        const record = (status: number) =>
          seen.push({
            connection,
            method,
            path,
            upgrade: headers.upgrade?.toLowerCase(),
            authorization: token ? `NTLM/${Buffer.from(token, 'base64').readUInt32LE(8)}` : auth?.split(' ')[0],
            status,
            ...(opts.setCookies ? { cookie: headers.cookie } : {}),
          });
        if (opts.basic && !user) {
          const given = /^Basic (\S+)$/.exec(auth ?? '')?.[1];
          if (given && Buffer.from(given, 'base64').toString() === 'EXAMPLE\\alice:alicepw') user = 'EXAMPLE\\alice';
          else {
            record(401);
            const cut = seen.length - 1 === opts.cutChallengeAt;
            respond(401, 'Unauthorized', { 'www-authenticate': 'Basic realm="u"' }, 'who are you?', cut);
            continue;
          }
        }
        if (opts.transport && !user && !(opts.ntlm && /^NTLM /.test(headers.authorization ?? ''))) {
          record(401);
          const transport = 'Transport mode="tls-client-certificate"';
          respond(
            401,
            'Unauthorized',
            { 'www-authenticate': opts.alsoOffer ? `${opts.alsoOffer}, ${transport}` : transport },
            opts.challengeBody ?? 'who are you?',
          );
          continue;
        }
        if (opts.ntlm && !user) {
          const result = token ? acceptor.step(Buffer.from(token, 'base64')) : undefined;
          if (result?.kind === 'accepted') {
            user = result.user;
          } else if (result?.kind === 'challenge' && connection === opts.upgradeNegotiateOn) {
            // Lets the NEGOTIATE through, no one authenticated (a misconfigured front end).
            user = 'nobody';
          } else {
            const challenge = result?.kind === 'challenge' ? `NTLM ${result.token.toString('base64')}` : 'NTLM';
            record(401);
            const offer = !token && opts.alsoOffer ? `${opts.alsoOffer}, ${challenge}` : challenge;
            const legCookie: Record<string, string> = opts.setCookies
              ? { 'set-cookie': `leg=${seen.filter((x) => x.connection === connection).length}` }
              : {};
            const closing =
              result?.kind === 'challenge' &&
              (opts.closeOnChallenge === true || (opts.closeOnChallenge === 'first' && connection === 1));
            const cut = seen.length - 1 === opts.cutChallengeAt;
            const answer = () => {
              respond(
                401,
                'Unauthorized',
                { 'www-authenticate': offer, ...legCookie, ...(closing ? { connection: 'close' } : {}) },
                opts.challengeBody ?? 'who are you?',
                cut,
              );
              if (closing) socket.end();
              if (result?.kind === 'challenge') opts.challengeWritten?.(connection, () => socket.destroy());
            };
            // (Nothing more comes on this connection before its answer: held, the order holds.)
            if (opts.holdChallenge && result?.kind === 'challenge') void opts.holdChallenge().then(answer);
            else answer();
            continue;
          }
        }
        if (opts.refuse) {
          record(403);
          const info: Record<string, string> = opts.authenticationInfo
            ? { 'authentication-info': opts.authenticationInfo }
            : {};
          respond(403, 'Forbidden', info, `not for ${user}`);
          continue;
        }
        const tunnel = method === 'CONNECT';
        if (headers.upgrade?.toLowerCase() !== 'websocket' && !tunnel) {
          record(426);
          respond(426, 'Upgrade Required', { upgrade: 'websocket' }, 'upgrade only');
          continue;
        }
        record(tunnel ? 200 : 101);
        socket.off('data', onData);
        // The greeting rides in the same write as the 101: it must reach the caller's socket.
        socket.write(
          `${tunnel ? 'HTTP/1.1 200 Connection Established\r\n' : `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n${opts.authenticationInfo ? `authentication-info: ${opts.authenticationInfo}\r\n` : ''}${opts.setCookies ? 'set-cookie: ws=1\r\n' : ''}${webSocketAccept(headers['sec-websocket-key'])}`}\r\n${greeting(`hello ${user ?? 'anonymous'}\n`, headers['sec-websocket-key'])}`,
          'latin1',
        );
        socket.on('data', (chunk: Buffer) => socket.write(chunk));
        if (buf.length) socket.write(buf);
        return;
      }
    };
    socket.on('data', onData);
  };
  const server: Server = opts.tls
    ? createTlsServer(
        {
          cert: SERVER_CERT,
          key: SERVER_KEY,
          ...(opts.requireClientCertificate ? { requestCert: true, rejectUnauthorized: true, ca: CA_CERT } : {}),
          ...(opts.transport ? { requestCert: true, rejectUnauthorized: false, ca: CA_CERT } : {}),
        },
        onConnection,
      )
    : createTcpServer(onConnection);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    origin: `${opts.tls ? 'https' : 'http'}://localhost:${port}`,
    port,
    seen,
    closed: (n) => (closedEarly.has(n) ? Promise.resolve() : new Promise<void>((r) => closedOnes.set(n, r))),
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** RFC 6455 §4.2.2's `Sec-WebSocket-Accept` line for a WebSocket client's key (undici's WebSocket checks it); none without a key. */
function webSocketAccept(key: string | undefined): string {
  if (key === undefined) return '';
  const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  return `sec-websocket-accept: ${accept}\r\n`;
}

/** The greeting as written: to a WebSocket client (it sent a key) in one unmasked text frame (RFC 6455 §5.2). */
function greeting(text: string, key: string | undefined): string {
  return key === undefined ? text : `\x81${String.fromCharCode(text.length)}${text}`;
}

/** Reads from `socket` until `count` bytes arrived. */
export async function read(socket: Socket, count: number): Promise<string> {
  let text = '';
  while (text.length < count) {
    const [chunk] = (await once(socket, 'data')) as [Buffer];
    text += chunk.toString('latin1');
  }
  return text;
}
