import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createSecureServer, type Http2SecureServer } from 'node:http2';
import {
  type AddressInfo,
  createServer as createNetServer,
  type Server as NetServer,
  connect as netConnect,
  type Socket,
} from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { type Dispatcher, fetch, request } from 'undici';
import {
  type Challenge,
  type Mechanism,
  type MechanismContext,
  MechanismUnavailableError,
  MultilegAgent,
  type MultilegAgentOptions,
  MutualAuthError,
  ntlmMechanism,
} from '../src/index.ts';
import { digestResponse, parseDigestAlgorithm } from '../src/mechanisms/digest/index.ts';
import { encodeChallenge, NegotiateFlags } from '../src/mechanisms/ntlm/messages.ts';
import {
  type ReferenceProxy,
  type ReferenceServer,
  type ReferenceServerOptions,
  startReferenceProxy,
  startReferenceServer,
} from '../src/reference-server/index.ts';
import { CA_CERT, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import type { RefusalMemory, RefusalPlace } from '../src/session/refusal-memory.ts';

export const ALICE = { username: 'EXAMPLE\\alice', password: 'alicepw' } as const;

export interface Rig {
  server: ReferenceServer;
  agent: MultilegAgent;
  close(): Promise<void>;
}

/** A reference server and an agent trusting its CA. */
export async function rig(
  server: ReferenceServerOptions = {},
  agent: Partial<MultilegAgentOptions> = {},
): Promise<Rig> {
  const s = await startReferenceServer(server);
  const a = new MultilegAgent({ credentials: ALICE, connect: { ca: s.ca }, trustedOrigins: [s.origin], ...agent });
  return {
    server: s,
    agent: a,
    async close() {
      await a.destroy().catch(() => {});
      await s.close();
    },
  };
}

/**
 * The session-mode NTLM rig behind the reference proxy (Basic: proxyuser / proxypw), and an agent
 * with both passwords that trusts `trustedOrigins(origin, port)` of the rig's server, both closed
 * with the rig.
 */
export async function behindBasicProxy(
  trustedOrigins: (origin: string, port: number) => string[],
  extra: MultilegAgentOptions = {},
): Promise<{ rig: Rig; proxy: ReferenceProxy; agent: MultilegAgent }> {
  const rg = await rig({ mode: 'session', schemes: ['NTLM'] }, { negotiate: false });
  const px = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } }).catch(async (err: Error) => {
    await rg.close();
    throw err;
  });
  const agent = new MultilegAgent({
    credentials: ALICE,
    negotiate: false,
    connect: { ca: rg.server.ca },
    trustedOrigins: trustedOrigins(rg.server.origin, rg.server.port),
    ...extra,
    proxy: { uri: px.origin, connect: { ca: px.ca }, credentials: { username: 'proxyuser', password: 'proxypw' } },
  });
  const closeRig = rg.close;
  rg.close = async () => {
    await agent.destroy().catch(() => {});
    await closeRig();
    await px.close();
  };
  return { rig: rg, proxy: px, agent };
}

export interface Result {
  status: number;
  body: { user: string | null; sessionId: string; protocol: string; bodySha256: string; bodyLength: number };
}

export async function get(r: Rig, path: string, init: Parameters<typeof fetch>[1] = {}): Promise<Result> {
  const res = await fetch(`${r.server.origin}${path}`, { dispatcher: r.agent, ...init });
  return { status: res.status, body: (await res.json()) as Result['body'] };
}

export function many(r: Rig, n: number, path = '/auth', init: Parameters<typeof fetch>[1] = {}): Promise<Result[]> {
  return Promise.all(Array.from({ length: n }, (_, i) => get(r, `${path}/${i}`, init)));
}

/**
 * A loopback port that refuses connections (ECONNREFUSED). Below the ephemeral range (Linux
 * 32768–60999), so no server another test file starts with `listen(0)` meanwhile can take it, as
 * it could a port bound and closed for the purpose; nothing serves port 1 (tcpmux).
 */
export const REFUSED_PORT = 1;

/** Which NTLM message a request carries: 0 none, 1 NEGOTIATE, 3 AUTHENTICATE. */
export function ntlmLeg(authorization: string | undefined): 0 | 1 | 3 {
  if (!authorization) return 0;
  return Buffer.from(authorization.split(' ')[1] ?? '', 'base64').readUInt32LE(8) === 1 ? 1 : 3;
}

export const hasAuth = (h: Readonly<Record<string, unknown>>) => h.authorization !== undefined;

/** NTLM as alice, whose contexts behave as `patch` says on top of the real ones. */
export function patchedNtlm(patch: {
  /** Runs before each step; a promise holds the step until it settles (a slow KDC, say). */
  step?: (challenge: Challenge | undefined) => void | Promise<void>;
  finish?: MechanismContext['finish'];
}): Mechanism {
  const ntlm = ntlmMechanism(ALICE);
  return {
    ...ntlm,
    createContext(leg) {
      const real = ntlm.createContext(leg);
      return {
        get complete() {
          return real.complete;
        },
        step: async (challenge, l) => {
          await patch.step?.(challenge);
          return real.step(challenge, l);
        },
        finish: patch.finish ?? ((challenge, l) => real.finish(challenge, l)),
      };
    },
  };
}

/**
 * A scripted test mechanism named NTLM, with no NTLM behind it: each leg's token is what `step` gives
 * (by default `NTLM dGVzdA==` at once), a context is complete once it has made `tokens` tokens (0: from
 * the start, its first token being its last; by default never), and `finish` is its check of the
 * server's final token (by default it passes at once). `step` is called as it is, so one that throws
 * or never settles does so to the agent.
 */
export function testNtlm(
  script: { step?: MechanismContext['step']; tokens?: number; finish?: MechanismContext['finish'] } = {},
): Mechanism {
  const { step = async () => 'NTLM dGVzdA==', tokens = Number.POSITIVE_INFINITY, finish = async () => {} } = script;
  return {
    scheme: 'NTLM',
    level: 'connection',
    multileg: true,
    proactive: false,
    createContext: () => {
      let made = 0;
      return {
        get complete() {
          return made >= tokens;
        },
        step: (challenge, leg) => {
          made += 1;
          return step(challenge, leg);
        },
        finish,
      };
    },
  };
}

/**
 * A connection-bound test scheme `Final` whose one token (`Final t`) must be answered `Final proved`
 * (a Kerberos AP-REP's part: `finish` throws MutualAuthError else), and which names who it
 * authenticated (`fin@EXAMPLE`): Negotiate's part with no KDC. `holdsCredentials`: its identity lives
 * outside the agent, as a Kerberos ticket's; else it is the agent's own password's, as NTLM's.
 */
export function finalProofMechanism(holdsCredentials = false): Mechanism {
  return {
    scheme: 'Final',
    level: 'connection',
    multileg: true,
    proactive: false,
    ...(holdsCredentials ? { holdsCredentials: () => true } : {}),
    createContext: () => {
      let steps = 0;
      return {
        get complete() {
          return steps > 0;
        },
        identity: 'fin@EXAMPLE',
        step: async () => {
          steps += 1;
          return 'Final t';
        },
        finish: async (challenge) => {
          if (challenge?.token68 !== 'proved') throw new MutualAuthError('the proxy did not prove itself');
        },
      };
    },
  };
}

/** `mechanism`, noting in `ports` the port its contexts are created for. */
export function recordingPorts(mechanism: Mechanism, ports: number[]): Mechanism {
  return {
    ...mechanism,
    createContext(leg) {
      ports.push(leg.port);
      return mechanism.createContext(leg);
    },
  };
}

/** A connection-level scheme whose contexts cannot be created on this machine (or fail with `error`). */
export function unavailableScheme(
  scheme: string,
  error: () => Error = () => new MechanismUnavailableError(scheme, 'test: not on this machine'),
): Mechanism {
  return {
    scheme,
    level: 'connection',
    multileg: true,
    proactive: false,
    createContext: () => {
      throw error();
    },
  };
}

/** A promise settled from outside: `resolve()` or `reject(err)`. */
export function deferred(): { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void } {
  let resolve!: () => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** An NTLM CHALLENGE (base64) any AUTHENTICATE answers: for scripted origins that check nothing. */
export const SCRIPTED_NTLM_CHALLENGE = encodeChallenge({
  flags:
    NegotiateFlags.UNICODE |
    NegotiateFlags.NTLM |
    NegotiateFlags.EXTENDED_SESSIONSECURITY |
    NegotiateFlags.TARGET_INFO |
    NegotiateFlags.VERSION |
    NegotiateFlags.NEGOTIATE_128,
  serverChallenge: Buffer.from('0123456789abcdef', 'hex'),
  targetName: 'EXAMPLE',
  avPairs: [{ id: 2, value: Buffer.from('EXAMPLE', 'utf16le') }],
  version: Buffer.alloc(8),
}).toString('base64');

/**
 * A TCP relay on loopback to `port` that counts the connections made to it: what reaches a proxy on
 * the wire before TLS or HTTP (a request that never connects is proved by 0). `url` names it as
 * `https://localhost:<port>` (the reference proxy's certificate is for localhost); `cleanup` gets
 * what closes it.
 */
export async function countingRelay(
  port: number,
  cleanup: Array<() => Promise<unknown>>,
): Promise<{ readonly url: string; readonly port: number; connections: number }> {
  const sockets = new Set<Socket>();
  const relay = createNetServer((client) => {
    seen.connections++;
    const upstream = netConnect(port, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    }
    client.pipe(upstream).pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  relay.listen(0, '127.0.0.1');
  await once(relay, 'listening');
  const own = (relay.address() as AddressInfo).port;
  const seen = { url: `https://localhost:${own}`, port: own, connections: 0 };
  cleanup.push(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        relay.close(() => resolve());
      }),
  );
  return seen;
}

/**
 * Listens on loopback with `server` (a TLS origin of the test certificate) and returns its origin,
 * `https://localhost:<port>`; `cleanup` gets what closes it, its open connections first.
 */
export async function loopbackOrigin(server: NetServer, cleanup: Array<() => Promise<unknown>>): Promise<string> {
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanup.push(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return `https://localhost:${(server.address() as AddressInfo).port}`;
}

/**
 * An agent with alice's credentials, NTLM alone, trusting `origin` (one of {@link loopbackOrigin}'s,
 * the test certificate's); `cleanup` gets what destroys it.
 */
export function ntlmAgentAt(
  origin: string,
  cleanup: Array<() => Promise<unknown>>,
  o: Partial<MultilegAgentOptions> = {},
): MultilegAgent {
  const agent = new MultilegAgent({
    credentials: ALICE,
    trustedOrigins: [origin],
    connect: { ca: CA_CERT },
    negotiate: false,
    schemes: ['NTLM'],
    ...o,
  });
  cleanup.push(() => agent.destroy());
  return agent;
}

/**
 * An HTTP/2 origin of the test certificate (for {@link loopbackOrigin}) that destroys the connection
 * under its first stream once the SETTINGS exchange is surely through: no GOAWAY, no HEADERS.
 */
export function droppingH2Server(): Http2SecureServer {
  const server = createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY, allowHTTP1: false });
  const sockets: TLSSocket[] = [];
  server.on('secureConnection', (socket: TLSSocket) => sockets.push(socket));
  server.on('stream', (stream) => {
    stream.on('error', () => {});
    const socket = sockets.at(-1)!;
    setTimeout(() => socket.destroy(), 100);
  });
  return server;
}

/**
 * The qop=auth request-digest (RFC 7616 §3.4.1) of a Digest answer's parameters `p` for `creds` in
 * `realm`, with `method`: the request's own to check its `response`, empty for the `rspauth` a
 * server proves itself with (§3.5).
 */
export function digestOfAnswer(
  p: Readonly<Record<string, string>>,
  creds: { readonly username: string; readonly password: string },
  realm: string,
  method: string,
  algorithm = 'MD5',
): string {
  return digestResponse({
    algorithm: parseDigestAlgorithm(algorithm)!,
    username: creds.username,
    realm,
    password: creds.password,
    method,
    uri: p.uri!,
    nonce: p.nonce!,
    qop: 'auth',
    nc: p.nc!,
    cnonce: p.cnonce!,
  });
}

/** `digest` with its first hex digit changed: a wrong `rspauth`, as a server that does not know the password sends. */
export const spoiledDigest = (digest: string): string => (digest[0] === '0' ? '1' : '0') + digest.slice(1);

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves once `check` holds (polled; at most 3 s): no fixed sleep that a loaded machine could outrun. */
export async function until(check: () => boolean): Promise<void> {
  const end = Date.now() + 3000;
  while (!check() && Date.now() < end) await sleep(5);
}

/**
 * A refusal memory whose recall waits until its signal aborts (another run's try of the same
 * password that never ends, as the command's lock held by a stopped run), then holds nothing back;
 * the signals it was given and its releases, in order.
 */
export function waitingRefusalMemory(): {
  readonly memory: RefusalMemory;
  readonly signals: AbortSignal[];
  readonly released: RefusalPlace[];
} {
  const signals: AbortSignal[] = [];
  const released: RefusalPlace[] = [];
  const memory: RefusalMemory = {
    recall: (_place, signal) => {
      signals.push(signal!);
      return new Promise<undefined>((resolve) => signal?.addEventListener('abort', () => resolve(undefined)));
    },
    refused: () => {},
    proved: () => {},
    release: (place) => void released.push(place),
  };
  return { memory, signals, released };
}

/**
 * A refusalMemory that answers at once: it holds the password back for another minute (`holds`), as
 * a refusal remembered a second ago, or remembers nothing. It notes each call in `calls` (`recall`,
 * `refused`, `proved`, `release`) and the places recalled and released.
 */
export function answeringRefusalMemory(holds = true): {
  readonly memory: RefusalMemory;
  readonly calls: string[];
  readonly recalled: RefusalPlace[];
  readonly released: RefusalPlace[];
} {
  const calls: string[] = [];
  const recalled: RefusalPlace[] = [];
  const released: RefusalPlace[] = [];
  const until = Date.now() + 60_000;
  const memory: RefusalMemory = {
    recall: (place) => {
      calls.push('recall');
      recalled.push(place);
      return holds ? { at: Date.now() - 1_000, until, times: 1 } : undefined;
    },
    refused: () => void calls.push('refused'),
    proved: () => void calls.push('proved'),
    release: (place) => {
      calls.push('release');
      released.push(place);
    },
  };
  return { memory, calls, recalled, released };
}

/**
 * A refusalMemory whose recall answers after `ms` (a timer: another process's state read, a lock
 * polled), as {@link answeringRefusalMemory} answers at once: it holds the password back for another
 * minute (`holds`), or remembers nothing. Notes each call in `calls`.
 */
export function slowRefusalMemory(
  ms: number,
  holds = false,
): { readonly memory: RefusalMemory; readonly calls: string[] } {
  const calls: string[] = [];
  const until = Date.now() + 60_000;
  const memory: RefusalMemory = {
    recall: () => {
      calls.push('recall');
      return new Promise((resolve) =>
        setTimeout(() => resolve(holds ? { at: Date.now() - 1_000, until, times: 1 } : undefined), ms),
      );
    },
    refused: () => void calls.push('refused'),
    proved: () => void calls.push('proved'),
    release: () => void calls.push('release'),
  };
  return { memory, calls };
}

/**
 * A refusalMemory whose first recall waits (another process trying the password) — until told the
 * agent gave up (`untilAborted`: then it remembers nothing), else never settling — and whose every
 * later one finds that process's refusal at once, holding the password back for another minute
 * (`signals`: each recall's).
 */
export function heldBackAfterFirstRecall(untilAborted: boolean): {
  readonly memory: RefusalMemory;
  readonly signals: AbortSignal[];
} {
  const signals: AbortSignal[] = [];
  const memory: RefusalMemory = {
    recall: (_place, signal) => {
      signals.push(signal!);
      if (signals.length > 1) return { at: Date.now() - 1_000, until: Date.now() + 60_000, times: 1 };
      return new Promise<undefined>((resolve) => {
        if (untilAborted) signal?.addEventListener('abort', () => resolve(undefined));
      });
    },
    refused: () => {},
    proved: () => {},
    release: () => {},
  };
  return { memory, signals };
}

/** A refusalMemory whose recall never settles, not even when told the agent gave up (`signals`: each recall's). */
export function silentRefusalMemory(): { readonly memory: RefusalMemory; readonly signals: AbortSignal[] } {
  const signals: AbortSignal[] = [];
  const memory: RefusalMemory = {
    recall: (_place, signal) => {
      signals.push(signal!);
      return new Promise<undefined>(() => {});
    },
    refused: () => {},
    proved: () => {},
    release: () => {},
  };
  return { memory, signals };
}

/**
 * Starts `go` with a caller's signal and, once `held`'s recall waits, aborts it with a reason of its
 * own: what `go` settled with (its value, or its error), and that reason.
 */
export async function abortedWhileRecalling(
  held: { readonly signals: readonly AbortSignal[] },
  go: (signal: AbortSignal) => Promise<unknown>,
): Promise<{ readonly settled: unknown; readonly reason: Error }> {
  const caller = new AbortController();
  const pending = go(caller.signal).catch((e: unknown) => e);
  await until(() => held.signals.length === 1);
  const reason = new Error('caller gone');
  caller.abort(reason);
  return { settled: await pending, reason };
}

/** What `fn` gives, and the messages published on the diagnostics `channel` while it ran. */
export async function publishedDuring<E, T>(
  channel: string,
  fn: () => Promise<T>,
): Promise<{ readonly result: T; readonly events: E[] }> {
  const events: E[] = [];
  const listen = (e: unknown) => void events.push(e as E);
  subscribe(channel, listen);
  try {
    return { result: await fn(), events };
  } finally {
    unsubscribe(channel, listen);
  }
}

/** The `Basic` credentials header value of `c`. */
export const basic = (c: { readonly username: string; readonly password: string }): string =>
  `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;

/**
 * Every value of `header` (Authorization by default) undici writes from now on, as written (its own
 * diagnostics channel, published synchronously as it writes a request's headers).
 */
export function wire(header = 'authorization'): { values: string[]; stop(): void } {
  const values: string[] = [];
  const pattern = new RegExp(`^${header}: (.*)$`, 'im');
  const listener = (m: unknown) => {
    const v = pattern.exec((m as { headers: string }).headers)?.[1];
    if (v) values.push(v.trim());
  };
  subscribe('undici:client:sendHeaders', listener);
  return { values, stop: () => unsubscribe('undici:client:sendHeaders', listener) };
}

/** One GET through `agent`: its status and the user the reference server saw (its JSON body), or null. */
export async function getUser(
  url: string,
  agent: Dispatcher,
  h1 = false,
): Promise<{ status: number; user: string | null }> {
  const res = await request(url, { dispatcher: agent, ...(h1 ? { allowH2: false } : {}) } as never);
  const text = await res.body.text();
  let user: string | null = null;
  try {
    user = (JSON.parse(text) as { user: string | null }).user;
  } catch {}
  return { status: res.statusCode, user };
}

/** The DER of a certificate's subject Name (the issuer Name of the certificates it issues). */
export function subjectDer(pem: string): Buffer {
  // tbsCertificate's fields: [0] version, serial, signature, issuer, validity, subject.
  const raw = new X509Certificate(pem).raw;
  const read = (at: number) => {
    let len = raw[at + 1]!;
    let start = at + 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      len = raw.readUIntBE(start, n);
      start += n;
    }
    return { start, end: start + len };
  };
  const tbs = read(read(0).start);
  let at = tbs.start;
  for (let i = 0; i < 5; i++) at = read(at).end;
  return raw.subarray(at, read(at).end);
}

/** A new self-signed certificate for localhost, `/CN=localhost NAME` (another identity for channel-binding tests). */
export function localhostCertificate(name: string): { cert: string; key: string } {
  const dir = mkdtempSync(join(tmpdir(), 'multileg-cert-'));
  try {
    const [cert, key] = [join(dir, 'cert.pem'), join(dir, 'key.pem')];
    // biome-ignore format: openssl's arguments, in pairs
    execFileSync('/usr/bin/openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', key, '-out', cert, '-days', '2',
      '-subj', `/CN=localhost ${name}`, '-addext', 'subjectAltName=DNS:localhost',
    ], { stdio: 'ignore' });
    return { cert: readFileSync(cert, 'utf8'), key: readFileSync(key, 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
