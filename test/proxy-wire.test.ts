/**
 * The CONNECT handshake against scripted proxies (H5, S3, C11): malformed and oversized answers,
 * every way a 407 body can be framed, 407 loops, leg limits, unusable schemes and connections lost
 * between legs. Each test drives `openTunnel` — the code the agent's connector runs — against a raw
 * loopback TCP server that answers each CONNECT as the test scripts it.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseChallenges } from '../src/challenge/index.ts';
import {
  InvalidTokenError,
  LegLimitError,
  type Mechanism,
  MechanismUnavailableError,
  MutualAuthError,
  ProxyAuthenticationError,
  ProxyConnectError,
  ProxyProtocolError,
} from '../src/index.ts';
import { DEFAULT_LIMITS, type Limits, type SchemeName } from '../src/options.ts';
import { type ProxyOptions, ProxyResolver, type ResolvedProxy } from '../src/proxy/options.ts';
import { openTunnel } from '../src/proxy/tunnel.ts';
import { MAX_PROXY_HEAD_BYTES } from '../src/proxy/wire.ts';
import { digestOfAnswer, spoiledDigest } from './helpers.ts';

interface Seen {
  readonly connection: number;
  readonly proxyAuthorization: string | undefined;
}

/** What a scripted proxy is told about one CONNECT: which one it is and what it carried. */
interface Request extends Seen {
  /** 0 for the first CONNECT the proxy received, across connections. */
  readonly index: number;
  readonly socket: Socket;
}

let server: Server | undefined;
const open = new Set<Socket>();
afterEach(async () => {
  for (const s of open) s.destroy();
  open.clear();
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  server = undefined;
});

/** A proxy that hands every CONNECT it reads to `answer`, which writes what it likes. */
async function scripted(answer: (r: Request) => void): Promise<{ uri: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  let connections = 0;
  server = createServer((socket) => {
    open.add(socket);
    socket.on('error', () => {});
    const connection = ++connections;
    let buf = '';
    let tunnelled = false;
    socket.on('data', (d: Buffer) => {
      if (tunnelled) return;
      buf += d.toString('latin1');
      for (let end = buf.indexOf('\r\n\r\n'); end >= 0 && !tunnelled; end = buf.indexOf('\r\n\r\n')) {
        const head = buf.slice(0, end);
        buf = buf.slice(end + 4);
        const proxyAuthorization = /\r\nProxy-Authorization: ([^\r]*)/i.exec(head)?.[1];
        const r = { connection, proxyAuthorization, index: seen.length, socket };
        seen.push({ connection, proxyAuthorization });
        answer(r);
        tunnelled = socket.destroyed || socket.writableEnded;
      }
    });
  });
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  return { uri: `http://127.0.0.1:${(server.address() as { port: number }).port}`, seen };
}

const CHALLENGE = 'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="p"\r\n';
const OK = 'HTTP/1.1 200 Connection Established\r\n\r\n';
const BASIC = `Basic ${Buffer.from('u:p').toString('base64')}`;

function resolved(uri: string, o: Omit<ProxyOptions, 'uri'> = {}): ResolvedProxy {
  const route = new ProxyResolver(
    { uri, negotiate: false, credentials: { username: 'u', password: 'p' }, ...o },
    {},
  ).route('https://localhost:8443');
  return route!.proxy;
}

const tunnel = (proxy: ResolvedProxy, limits: Partial<Limits> = {}) =>
  openTunnel(proxy, 'localhost', 8443, { ...DEFAULT_LIMITS, ...limits });
const failure = (p: Promise<unknown>) =>
  p.then(
    () => {
      throw new Error('expected a failure');
    },
    (e: Error) => e,
  );

/** A scheme that never completes: it answers every challenge with another token. */
const endless: Mechanism = {
  scheme: 'Loop',
  level: 'connection',
  multileg: true,
  proactive: false,
  createContext: () => {
    let n = 0;
    return { complete: false, step: async () => `Loop ${++n}`, finish: async () => {} };
  },
};

describe('CONNECT through scripted proxies: framing of 407 answers (S3)', () => {
  it('H5: a chunked 407 body (extensions, trailers) is drained and the next leg goes on the same connection', async () => {
    const { uri, seen } = await scripted(({ socket, proxyAuthorization }) => {
      if (proxyAuthorization) return void socket.write(OK);
      socket.write(`${CHALLENGE}Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: y\r\n\r\n`);
    });
    const t = await tunnel(resolved(uri));
    t.socket.destroy();
    expect(t).toMatchObject({ requests: 2, connections: 1 });
    expect(seen).toEqual([
      { connection: 1, proxyAuthorization: undefined },
      { connection: 1, proxyAuthorization: BASIC },
    ]);
  });

  it('C11: a chunked 407 body over limits.maxChallengeBodyBytes is not drained: the next leg goes on a new connection', async () => {
    const { uri, seen } = await scripted(({ socket, proxyAuthorization }) => {
      if (proxyAuthorization) return void socket.write(OK);
      socket.write(`${CHALLENGE}Transfer-Encoding: chunked\r\n\r\n800\r\n${'x'.repeat(0x800)}\r\n`);
    });
    const t = await tunnel(resolved(uri), { maxChallengeBodyBytes: 1000 });
    t.socket.destroy();
    expect(t).toMatchObject({ requests: 2, connections: 2 });
    expect(seen.map((s) => s.connection)).toEqual([1, 2]);
  });

  it('C11: a Content-Length 407 body over the limit is not read: new connection for the next leg', async () => {
    const { uri, seen } = await scripted(({ socket, proxyAuthorization }) => {
      if (proxyAuthorization) return void socket.write(OK);
      socket.write(`${CHALLENGE}Content-Length: 100000\r\n\r\n`);
    });
    const t = await tunnel(resolved(uri), { maxChallengeBodyBytes: 1000 });
    t.socket.destroy();
    expect(seen.map((s) => s.connection)).toEqual([1, 2]);
  });

  it('H5: a Content-Length 407 body arriving in pieces is skipped exactly: the 200 after it is read', async () => {
    const { uri } = await scripted(({ socket, proxyAuthorization }) => {
      if (proxyAuthorization) return void socket.write(OK);
      socket.write(`${CHALLENGE}Content-Length: 10\r\n\r\nabc`);
      setTimeout(() => socket.write('defghij'), 20);
    });
    const t = await tunnel(resolved(uri));
    t.socket.destroy();
    expect(t).toMatchObject({ requests: 2, connections: 1 });
  });

  it('H5: a chunk-size line arriving in pieces is read whole: the next leg goes on the same connection', async () => {
    const { uri, seen } = await scripted(({ socket, proxyAuthorization }) => {
      if (proxyAuthorization) return void socket.write(OK);
      socket.write(`${CHALLENGE}Transfer-Encoding: chunked\r\n\r\n5;ext=`);
      setTimeout(() => socket.write('1\r\nhello\r\n0\r\n\r\n'), 20);
    });
    const t = await tunnel(resolved(uri));
    t.socket.destroy();
    expect(t).toMatchObject({ requests: 2, connections: 1 });
    expect(seen.map((s) => s.connection)).toEqual([1, 1]);
  });

  it('H5: a 407 whose Connection headers (repeated) include close: the next leg uses a new connection', async () => {
    const { uri, seen } = await scripted(({ socket, proxyAuthorization }) => {
      if (proxyAuthorization) return void socket.write(OK);
      socket.write(`${CHALLENGE}Connection: keep-alive\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    });
    const t = await tunnel(resolved(uri));
    t.socket.destroy();
    expect(t).toMatchObject({ requests: 2, connections: 2 });
    expect(seen.map((s) => [s.connection, s.proxyAuthorization])).toEqual([
      [1, undefined],
      [2, BASIC],
    ]);
  });

  it('H5: an HTTP/1.0 407 without a length runs to the end of the connection; the next leg uses a new one', async () => {
    const { uri, seen } = await scripted(({ socket, proxyAuthorization }) => {
      if (proxyAuthorization) return void socket.write(OK);
      socket.end('HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="p"\r\n\r\nbye');
    });
    const t = await tunnel(resolved(uri));
    t.socket.destroy();
    expect(seen.map((s) => [s.connection, s.proxyAuthorization])).toEqual([
      [1, undefined],
      [2, BASIC],
    ]);
  });

  it('C11: a 407 without a length that exceeds the limit before the proxy closes: new connection, nothing more read', async () => {
    const { uri, seen } = await scripted(({ socket, proxyAuthorization }) => {
      if (proxyAuthorization) return void socket.write(OK);
      socket.write(`HTTP/1.0 407 x\r\nProxy-Authenticate: Basic realm="p"\r\n\r\n${'x'.repeat(5000)}`);
    });
    const t = await tunnel(resolved(uri), { maxChallengeBodyBytes: 1000 });
    t.socket.destroy();
    expect(seen.map((s) => s.connection)).toEqual([1, 2]);
  });

  it('H5: interim 1xx answers before the real one are skipped', async () => {
    const { uri } = await scripted(({ socket, proxyAuthorization }) => {
      if (proxyAuthorization) return void socket.write(`HTTP/1.1 100 Continue\r\n\r\n${OK}`);
      socket.write(`HTTP/1.1 102 Processing\r\n\r\n${CHALLENGE}Content-Length: 0\r\n\r\n`);
    });
    const t = await tunnel(resolved(uri));
    t.socket.destroy();
    expect(t).toMatchObject({ requests: 2, connections: 1 });
  });

  it('H5: bytes the proxy sends right after its 200 are the tunnel’s first bytes, not lost', async () => {
    const { uri } = await scripted(({ socket }) => socket.write(`${OK}early`));
    const t = await tunnel(resolved(uri));
    // The tunnel comes back paused, for whoever reads next (TLS to the origin, in the agent).
    expect(t.socket.isPaused()).toBe(true);
    const first = new Promise<string>((r) => t.socket.once('data', (d: Buffer) => r(d.toString())));
    t.socket.resume();
    expect(await first).toBe('early');
    t.socket.destroy();
  });
});

describe('CONNECT through scripted proxies: malformed answers are ProxyProtocolError (S3)', () => {
  const cases: [string, string, RegExp][] = [
    ['a status line that is not HTTP', 'SSH-2.0-OpenSSH\r\n\r\n', /malformed status line/],
    ['a header line without a colon', 'HTTP/1.1 200 OK\r\nno colon here\r\n\r\n', /malformed header line/],
    ['an invalid Content-Length', `${CHALLENGE}Content-Length: 12abc\r\n\r\n`, /invalid Content-Length/],
    ['an invalid chunk size', `${CHALLENGE}Transfer-Encoding: chunked\r\n\r\nzz\r\n`, /invalid chunk size/],
    ['a chunk not followed by CRLF', `${CHALLENGE}Transfer-Encoding: chunked\r\n\r\n2\r\nabXY\r\n`, /malformed chunk/],
    [
      'a chunk-size line without end',
      `${CHALLENGE}Transfer-Encoding: chunked\r\n\r\n${'1'.repeat(9000)}`,
      /chunk line too long/,
    ],
    [
      'a head larger than the bound',
      `HTTP/1.1 407 x\r\nX-Big: ${'a'.repeat(MAX_PROXY_HEAD_BYTES + 10)}`,
      /response head larger than 65536 bytes/,
    ],
  ];
  for (const [what, answer, message] of cases) {
    it(`S3: ${what}`, async () => {
      const { uri } = await scripted(({ socket }) => socket.write(answer));
      const err = await failure(tunnel(resolved(uri)));
      expect(err).toBeInstanceOf(ProxyProtocolError);
      expect(err.message).toMatch(message);
      expect(err.message).toContain(uri);
    });
  }

  it('S3: the proxy closes without answering', async () => {
    const { uri } = await scripted(({ socket }) => socket.end());
    const err = await failure(tunnel(resolved(uri)));
    expect(err).toBeInstanceOf(ProxyProtocolError);
    expect(err.message).toMatch(/the proxy closed the connection/);
  });

  it('S3: the proxy resets the connection while answering', async () => {
    const { uri } = await scripted(({ socket }) => {
      socket.write('HTTP/1.1 407 x\r\n');
      setTimeout(() => socket.resetAndDestroy(), 20);
    });
    const err = await failure(tunnel(resolved(uri)));
    expect(err).toBeInstanceOf(ProxyProtocolError);
    expect(err.message).toMatch(/connection failed \(.*ECONNRESET/);
  });

  it('H5: a refused CONNECT (403) is a ProxyConnectError with the status', async () => {
    const { uri } = await scripted(({ socket }) => socket.write('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n'));
    const err = await failure(tunnel(resolved(uri)));
    expect(err).toBeInstanceOf(ProxyConnectError);
    expect(err).toMatchObject({ statusCode: 403, code: 'MULTILEG_PROXY_CONNECT' });
  });
});

describe('CONNECT refused after Digest (H5/M3)', () => {
  /** A Digest proxy that takes u:p and then refuses the tunnel with a 403 carrying Proxy-Authentication-Info. */
  const refusingDigestProxy = (rspauth: 'right' | 'wrong') =>
    scripted(({ socket, proxyAuthorization }) => {
      if (!proxyAuthorization) {
        socket.write(
          'HTTP/1.1 407 x\r\nProxy-Authenticate: Digest realm="p", qop="auth", nonce="n1"\r\nContent-Length: 0\r\n\r\n',
        );
        return;
      }
      const p = parseChallenges(proxyAuthorization)[0]!.params;
      const right = digestOfAnswer(p, { username: 'u', password: 'p' }, 'p', '');
      const proof = rspauth === 'wrong' ? spoiledDigest(right) : right;
      socket.write(
        `HTTP/1.1 403 Forbidden\r\nProxy-Authentication-Info: rspauth="${proof}", cnonce="${p.cnonce}", nc=${p.nc}, qop=auth\r\nContent-Length: 0\r\n\r\n`,
      );
    });

  it('H5/M3: a 403 to CONNECT whose Proxy-Authentication-Info has a wrong rspauth is a MutualAuthError (RFC 7616 §3.5: it comes on any final answer)', async () => {
    const { uri, seen } = await refusingDigestProxy('wrong');
    const err = await failure(tunnel(resolved(uri)));
    expect(err).toBeInstanceOf(MutualAuthError);
    expect(err.message).toMatch(/Digest rspauth of proxy http:\/\/127\.0\.0\.1:\d+ does not match/);
    expect(seen.map((x) => x.proxyAuthorization?.split(' ')[0])).toEqual([undefined, 'Digest']);
  });

  it('H5/M3: with the right rspauth the 403 stays a ProxyConnectError', async () => {
    const { uri } = await refusingDigestProxy('right');
    const err = await failure(tunnel(resolved(uri)));
    expect(err).toBeInstanceOf(ProxyConnectError);
    expect(err).toMatchObject({ statusCode: 403 });
  });
});

describe('CONNECT through scripted proxies: 407 loops, leg limits, unusable schemes (C11, T2)', () => {
  it('C11: a proxy that challenges forever stops at limits.maxLegs with LegLimitError', async () => {
    const { uri, seen } = await scripted(({ socket, index }) =>
      socket.write(`HTTP/1.1 407 x\r\nProxy-Authenticate: Loop t${index}\r\nContent-Length: 0\r\n\r\n`),
    );
    const err = await failure(
      tunnel(resolved(uri, { mechanisms: [endless], schemes: ['Loop' as SchemeName] }), { maxLegs: 3 }),
    );
    expect(err).toBeInstanceOf(LegLimitError);
    // One unauthenticated CONNECT and exactly maxLegs legs, all on the one connection.
    expect(seen.map((s) => [s.connection, s.proxyAuthorization])).toEqual([
      [1, undefined],
      [1, 'Loop 1'],
      [1, 'Loop 2'],
      [1, 'Loop 3'],
    ]);
  });

  it('H5: a Basic 407 loop (credentials rejected) ends after one answer with ProxyAuthenticationError', async () => {
    const { uri, seen } = await scripted(({ socket }) => socket.write(`${CHALLENGE}Content-Length: 0\r\n\r\n`));
    const err = await failure(tunnel(resolved(uri)));
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect(err.message).toMatch(/rejected the Basic credentials; check proxy\.credentials \(user, domain, password\)$/);
    // A password went, not a ticket: nothing about Kerberos.
    expect(err.message).not.toMatch(/Kerberos/);
    expect(seen).toHaveLength(2);
  });

  it('H5: a proxy that offers only unconfigured schemes: ProxyAuthenticationError naming what to configure', async () => {
    const { uri } = await scripted(({ socket }) =>
      socket.write('HTTP/1.1 407 x\r\nProxy-Authenticate: Bearer realm="x"\r\nContent-Length: 0\r\n\r\n'),
    );
    const err = await failure(tunnel(resolved(uri)));
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect(err).toMatchObject({ offered: ['Bearer'] });
    expect(err.message).toMatch(/none of the offered schemes is configured/);
  });

  const unavailable: Mechanism = {
    ...endless,
    scheme: 'Gone',
    createContext: () => {
      throw new MechanismUnavailableError('Gone', 'test: not on this machine');
    },
  };

  it('T2: an offered scheme that cannot run here is skipped for the next one (Basic)', async () => {
    const { uri, seen } = await scripted(({ socket, proxyAuthorization }) => {
      if (proxyAuthorization) return void socket.write(OK);
      socket.write(`${CHALLENGE}Proxy-Authenticate: Gone\r\nContent-Length: 0\r\n\r\n`);
    });
    const t = await tunnel(resolved(uri, { mechanisms: [unavailable], schemes: ['Gone' as SchemeName, 'Basic'] }));
    t.socket.destroy();
    expect(seen.map((s) => s.proxyAuthorization)).toEqual([undefined, BASIC]);
  });

  it('T2: when every offered scheme is unusable, the error says which were unavailable, and why', async () => {
    const { uri, seen } = await scripted(({ socket }) =>
      socket.write('HTTP/1.1 407 x\r\nProxy-Authenticate: Gone\r\nContent-Length: 0\r\n\r\n'),
    );
    const err = await failure(tunnel(resolved(uri, { mechanisms: [unavailable], schemes: ['Gone' as SchemeName] })));
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect(err.message).toContain(
      'no offered scheme could be used (Gone is not available: test: not on this machine (MULTILEG_MECHANISM_UNAVAILABLE)); give proxy.credentials',
    );
    expect(seen).toHaveLength(1);
  });

  it.each([
    [
      'its own exception: InvalidTokenError naming the proxy instead',
      new TypeError('bad input'),
      /^the proxy http:\/\/127\.0\.0\.1:\d+ sent an invalid Loop Proxy-Authenticate challenge; the proxy or/,
    ],
    // The mechanism says "server" (it cannot know): the error names the proxy that sent the token.
    [
      'an InvalidTokenError: the same, naming the proxy',
      new InvalidTokenError('Loop message'),
      /^the proxy http:\/\/127\.0\.0\.1:\d+ sent an invalid Loop message; the proxy or/,
    ],
  ] as const)('H5: a mechanism that fails on the proxy’s token with %s', async (_what, thrown, message) => {
    const failing: Mechanism = {
      ...endless,
      createContext: () => ({
        complete: false,
        step: async () => {
          throw thrown;
        },
        finish: async () => {},
      }),
    };
    const { uri } = await scripted(({ socket }) =>
      socket.write('HTTP/1.1 407 x\r\nProxy-Authenticate: Loop garbage\r\nContent-Length: 0\r\n\r\n'),
    );
    const err = await failure(tunnel(resolved(uri, { mechanisms: [failing], schemes: ['Loop' as SchemeName] })));
    expect(err).toBeInstanceOf(InvalidTokenError);
    expect(err.message).toMatch(message);
  });

  it('H5: a proxy that drops the connection between legs of a connection-bound scheme: the handshake restarts once on a new connection', async () => {
    const { uri, seen } = await scripted(({ socket, proxyAuthorization, connection }) => {
      if (!proxyAuthorization)
        return void socket.write('HTTP/1.1 407 x\r\nProxy-Authenticate: Loop\r\nContent-Length: 0\r\n\r\n');
      if (connection === 1)
        return void socket.end(
          'HTTP/1.1 407 x\r\nProxy-Authenticate: Loop t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n',
        );
      socket.write(OK);
    });
    const t = await tunnel(resolved(uri, { mechanisms: [endless], schemes: ['Loop' as SchemeName] }));
    t.socket.destroy();
    expect(t).toMatchObject({ connections: 2 });
    // The restarted handshake's first leg is a fresh context's first token.
    expect(seen.map((s) => [s.connection, s.proxyAuthorization])).toEqual([
      [1, undefined],
      [1, 'Loop 1'],
      [2, 'Loop 1'],
    ]);
  });

  it('H5: a proxy that drops the connection between legs every time: ProxyAuthenticationError after one restart', async () => {
    const { uri, seen } = await scripted(({ socket, proxyAuthorization }) => {
      if (!proxyAuthorization)
        return void socket.write('HTTP/1.1 407 x\r\nProxy-Authenticate: Loop\r\nContent-Length: 0\r\n\r\n');
      socket.end('HTTP/1.1 407 x\r\nProxy-Authenticate: Loop t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    });
    const err = await failure(tunnel(resolved(uri, { mechanisms: [endless], schemes: ['Loop' as SchemeName] })));
    expect(err).toBeInstanceOf(ProxyAuthenticationError);
    expect(err.message).toMatch(/closes the connection between Loop legs/);
    expect(seen.map((s) => s.connection)).toEqual([1, 1, 2]);
  });
});
