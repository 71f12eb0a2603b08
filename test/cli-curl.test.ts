/**
 * curl options of the command line that curl users reach for: -D/--dump-header,
 * --proxy-cacert/--proxy-insecure, and --retry with its companions — with curl 8.21's semantics,
 * exit codes and messages, against the reference server and proxy.
 */
import { once } from 'node:events';
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createSecureServer as createHttp2Server, type Http2SecureServer } from 'node:http2';
import { createServer as createTcpServer, type Socket, type Server as TcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { shownArgv } from '../src/cli/options.ts';
import { Retrier } from '../src/cli/retry.ts';
import type { HandshakeReport, MultilegStats } from '../src/index.ts';
import {
  type ReferenceProxy,
  type ReferenceServer,
  startReferenceProxy,
  startReferenceServer,
} from '../src/reference-server/index.ts';
import { SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { KDC_RECHECK_MS } from '../src/session/origin-memory.ts';
import { runCli as run, runCommand, runOnTerminal } from './cli-helpers.ts';
import { countingRelay, REFUSED_PORT, SCRIPTED_NTLM_CHALLENGE } from './helpers.ts';

const listen = async (server: Server | TcpServer | Http2SecureServer) => {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as { port: number }).port;
};

/** The NTLM message type an Authorization carries (1 NEGOTIATE, 3 AUTHENTICATE), 0 for none. */
const ntlmType = (value: string | undefined): number =>
  value?.startsWith('NTLM ') ? Buffer.from(value.slice(5), 'base64').readUInt32LE(8) : 0;

/** The status lines of the heads in `text` (curl's `-D` / `-i` output), without HTTP/2's trailing space. */
const statusLines = (text: string) => (text.match(/^HTTP\/\S+ \d{3}[^\r\n]*/gm) ?? []).map((l) => l.trimEnd());

describe('multileg: curl options', () => {
  let server: ReferenceServer;
  let dir: string;
  let ca: string;
  let plain: Server;
  let plainOrigin: string;
  /** What the plain server received: `METHOD path body`, in order. */
  const received: string[] = [];
  /** What the /ntlm-silent/ routes received: `path type`, type the NTLM message's (0: none). */
  const ntlmSeen: string[] = [];
  /** Per key (`/flaky/KEY`), how many answers are still the failure. */
  const failuresLeft = new Map<string, number>();
  /** alice's password and the reference CA: the common start of a command line. */
  const alice = () => ['-u', 'EXAMPLE\\alice:alicepw', '--cacert', ca];
  beforeAll(async () => {
    server = await startReferenceServer({ mode: 'session' });
    dir = mkdtempSync(join(tmpdir(), 'multileg-curl-'));
    ca = join(dir, 'ca.pem');
    writeFileSync(ca, server.ca);
    plain = createHttpServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const url = new URL(req.url ?? '/', 'http://x');
        received.push(`${req.method} ${url.pathname} ${Buffer.concat(chunks)}`);
        if (url.pathname.startsWith('/flaky/')) {
          // /flaky/KEY?n=N&status=S&after=A: N answers S (with Retry-After A), then 200 with what came.
          const key = url.pathname;
          if (!failuresLeft.has(key)) failuresLeft.set(key, Number(url.searchParams.get('n') ?? 1));
          const left = failuresLeft.get(key)!;
          if (left > 0) {
            failuresLeft.set(key, left - 1);
            const after = url.searchParams.get('after');
            res
              .writeHead(Number(url.searchParams.get('status') ?? 503), after !== null ? { 'retry-after': after } : {})
              .end(`busy ${left}\n`);
          } else res.writeHead(200, { 'content-type': 'text/plain' }).end(`${req.method} ${Buffer.concat(chunks)}`);
        } else if (url.pathname === '/cut-once') {
          // The first time 10 bytes of the 100 announced, then the connection ends; then a 404.
          if (failuresLeft.get(url.pathname) === 0) res.writeHead(404).end('not here\n');
          else {
            failuresLeft.set(url.pathname, 0);
            res.writeHead(200, { 'content-length': '100' });
            res.write('0123456789', () => res.socket?.destroy());
          }
        } else if (url.pathname === '/truncated') {
          // 10 bytes of the 100 announced, then the connection ends.
          res.writeHead(200, { 'content-length': '100' });
          res.write('0123456789', () => res.socket?.destroy());
        } else if (url.pathname === '/basic-cut') {
          // Asks for Basic, and answers the credentials by closing the connection (R4).
          if (req.headers.authorization === undefined)
            res.writeHead(401, { 'www-authenticate': 'Basic realm="cut"' }).end('who?\n');
          else res.socket?.destroy();
        } else if (url.pathname.startsWith('/ntlm-silent/')) {
          // NTLM: /ntlm-silent/1 never answers a NEGOTIATE, /ntlm-silent/3 answers it with a
          // CHALLENGE and never answers the AUTHENTICATE (R4).
          const type = ntlmType(req.headers.authorization);
          ntlmSeen.push(`${url.pathname} ${type}`);
          if (type === 0) res.writeHead(401, { 'www-authenticate': 'NTLM' }).end();
          else if (type === 1 && url.pathname.endsWith('/3'))
            res.writeHead(401, { 'www-authenticate': `NTLM ${SCRIPTED_NTLM_CHALLENGE}` }).end();
        } else if (url.pathname === '/headers') {
          // The request's headers, for curl's defaults (Accept); a repeated response header for -w.
          res
            .writeHead(200, { 'content-type': 'application/json', 'x-twice': ['a', 'b'] })
            .end(JSON.stringify(req.headers));
        } else if (url.pathname === '/hang') {
          // never answers: --max-time
        } else res.writeHead(404).end('not here\n');
      });
    });
    plainOrigin = `http://127.0.0.1:${await listen(plain)}`;
  });
  afterAll(async () => {
    plain.closeAllConnections();
    plain.close();
    await server.close();
  });
  /** The requests the plain server received for `path`. */
  const to = (path: string) => received.filter((r) => r.split(' ')[1] === path);

  it("-D FILE: the head of every response received, as curl writes them — the handshake's 401s (tokens [redacted]), a redirect and the final response; the body stays on stdout", async () => {
    const headers = join(dir, 'heads.txt');
    const url = `${server.origin}/public/redirect?to=/auth/dump`;
    const r = await run([...alice(), '-L', '-D', headers, url]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ user: 'EXAMPLE\\alice', path: '/auth/dump' });
    const text = readFileSync(headers, 'latin1');
    expect(statusLines(text)).toEqual(['HTTP/2 302', 'HTTP/2 401', 'HTTP/2 401', 'HTTP/2 200']);
    // Each head ends with a blank line; the challenges say what was offered, never a token.
    expect(text.split('\r\n\r\n')).toHaveLength(5);
    expect(text).toContain('location: /auth/dump\r\n');
    expect(text).toContain('www-authenticate: Negotiate, NTLM\r\n');
    expect(text).toMatch(/www-authenticate: Negotiate \[redacted\]\r\n/);
    expect(text).toContain('persistent-auth: true\r\n');
    for (const e of server.exchanges)
      for (const v of [e.responseHeaders['www-authenticate'], e.authIdSent].flat())
        if (typeof v === 'string' && v.length > 12) expect(text).not.toContain(v.split(' ').pop());
    expect(text).not.toContain('alicepw');
  });

  it("-D - writes the heads to stdout (the body to -o), -D % to stderr (curl 8.10+); over HTTP/1.1 with curl's reason phrases", async () => {
    const body = join(dir, 'body.json');
    const out = await run([...alice(), '--http1.1', '--ntlm', '-D', '-', '-o', body, `${server.origin}/auth/d1`]);
    expect(out.code, out.stderr).toBe(0);
    // --ntlm: NEGOTIATE goes on the first request (as curl's), so one 401 (the CHALLENGE) before the answer.
    expect(statusLines(out.stdout)).toEqual(['HTTP/1.1 401 Unauthorized', 'HTTP/1.1 200 OK']);
    expect(out.stdout).toMatch(/www-authenticate: NTLM \[redacted\]\r\n/);
    expect(JSON.parse(readFileSync(body, 'utf8'))).toMatchObject({ path: '/auth/d1' });
    const err = await run([...alice(), '-D', '%', `${server.origin}/auth/d2`]);
    expect(err.code).toBe(0);
    expect(JSON.parse(err.stdout)).toMatchObject({ path: '/auth/d2' });
    expect(statusLines(err.stderr)).toEqual(['HTTP/2 401', 'HTTP/2 401', 'HTTP/2 200']);
  });

  it("S2: -i shows the heads -D writes, byte for byte and in its order (a redirect, the handshake's 401s with tokens and Auth-ID [redacted] (S2), the answer), then the answer's body only: a 401's body is swallowed, as curl's; into the -o file with it; -I the same heads, --json none", async () => {
    const dumped = join(dir, 'i-heads.txt');
    const r = await run([...alice(), '-L', '-i', '-D', dumped, `${server.origin}/public/redirect?to=/auth/include`]);
    expect(r.code, r.stderr).toBe(0);
    const heads = readFileSync(dumped, 'latin1');
    expect(statusLines(heads)).toEqual(['HTTP/2 302', 'HTTP/2 401', 'HTTP/2 401', 'HTTP/2 200']);
    // Before: only the redirect's head and the answer's.
    expect(r.stdout.slice(0, heads.length)).toBe(heads);
    expect(JSON.parse(r.stdout.slice(heads.length))).toMatchObject({ user: 'EXAMPLE\\alice', path: '/auth/include' });
    expect(r.stdout).toMatch(/www-authenticate: Negotiate \[redacted\]\r\n/);
    expect(r.stdout).toContain('auth-id: [redacted]\r\n');
    for (const e of server.exchanges)
      for (const v of [e.responseHeaders['www-authenticate'], e.authIdSent].flat())
        if (typeof v === 'string' && v.length > 12) expect(r.stdout).not.toContain(v.split(' ').pop());
    // Over HTTP/1.1 into the -o file, with curl's reason phrases; stdout stays empty.
    const file = join(dir, 'i-body.txt');
    const h1 = await run([...alice(), '--http1.1', '--ntlm', '-i', '-o', file, `${server.origin}/auth/include1`]);
    expect(h1).toMatchObject({ code: 0, stdout: '' });
    const text = readFileSync(file, 'latin1');
    expect(statusLines(text)).toEqual(['HTTP/1.1 401 Unauthorized', 'HTTP/1.1 200 OK']); // --ntlm: 2 legs
    expect(text).toMatch(/www-authenticate: NTLM \[redacted\]\r\n/);
    expect(JSON.parse(text.slice(text.lastIndexOf('\r\n\r\n') + 4))).toMatchObject({ path: '/auth/include1' });
    // -I shows the same heads (curl -I too), --json no head.
    const head = await run([...alice(), '-I', `${server.origin}/auth/include2`]);
    expect(statusLines(head.stdout)).toEqual(['HTTP/2 401', 'HTTP/2 401', 'HTTP/2 200']);
    const json = await run([...alice(), '-i', '--json', `${server.origin}/auth/include3`]);
    expect(JSON.parse(json.stdout)).toMatchObject({ status: 200 });
  });

  it("-i through a proxy: its 407 and its CONNECT answer, then the origin's heads, as -D shows them (curl's order)", async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
      const dumped = join(dir, 'proxy-heads.txt');
      const r = await run([
        ...alice(),
        '--proxy-cacert',
        ca,
        '-x',
        proxy.origin,
        '-U',
        'proxyuser:proxypw',
        '-i',
        '-D',
        dumped,
        `${server.origin}/auth/via-proxy`,
      ]);
      expect(r.code, r.stderr).toBe(0);
      const heads = readFileSync(dumped, 'latin1');
      expect(statusLines(heads).slice(0, 2)).toEqual([
        expect.stringMatching(/^HTTP\/(2 407|1\.1 407 Proxy Authentication Required)$/),
        expect.stringMatching(/^HTTP\/(2 200|1\.1 200 OK)$/),
      ]);
      expect(statusLines(heads).slice(2)).toEqual(['HTTP/2 401', 'HTTP/2 401', 'HTTP/2 200']);
      expect(r.stdout.slice(0, heads.length)).toBe(heads);
      expect(JSON.parse(r.stdout.slice(heads.length))).toMatchObject({ path: '/auth/via-proxy' });
    } finally {
      await proxy?.close();
    }
  });

  it("H5: -v and --json show the proxy's handshake as the proxy's (its line, the summary's proxy count, proxy: true and stats.proxyHandshakes), the origin's apart", async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
      const proxyArgs = ['--proxy-cacert', ca, '-x', proxy.origin, '-U', 'proxyuser:proxypw'];
      const url = `${server.origin}/auth/proxy-reported`;
      const verbose = await run([...alice(), ...proxyArgs, '-v', url]);
      expect(verbose.code, verbose.stderr).toBe(0);
      // Before: no line for it, and the summary counted the origin's alone (as it still does).
      expect(verbose.stderr).toMatch(
        new RegExp(
          `^\\* proxy ${proxy.origin}: Basic handshake for session s\\d+ \\(HTTP/1\\.1\\): 1 leg\\(s\\), each request authenticates on its own as proxyuser$`,
          'm',
        ),
      );
      expect(verbose.stderr).toContain(
        '* 1 session(s), 1 handshake(s), 2 leg(s) with credentials; proxy: 1 handshake(s), 1 leg(s) with credentials\n',
      );
      expect(verbose.stderr).not.toContain('proxypw');
      const json = await run([...alice(), ...proxyArgs, '--json', url]);
      expect(json.code, json.stderr).toBe(0);
      const out = JSON.parse(json.stdout) as { handshakes: HandshakeReport[]; stats: MultilegStats };
      expect(out.handshakes.map((h) => [h.proxy ?? false, h.origin, h.scheme, h.legs, h.outcome])).toEqual([
        [true, proxy.origin, 'Basic', 1, 'per-request'],
        [false, server.origin, expect.any(String), 2, 'session'],
      ]);
      expect(out.stats).toMatchObject({
        handshakes: 1,
        legs: 2,
        proxyHandshakes: 1,
        proxyLegs: 1,
        failedProxyHandshakes: 0,
      });
    } finally {
      await proxy?.close();
    }
  });

  it("S2/H5: --json and --har say whose leg each is: the CONNECT the proxy's (its Basic as proxyScheme, no scheme), a forwarded request's the origin's with the proxy's Basic beside; no secret", async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
      const proxyArgs = ['--proxy-cacert', ca, '-x', proxy.origin, '-U', 'proxyuser:proxypw'];
      const json = await run([...alice(), ...proxyArgs, '--json', `${server.origin}/auth/whose-leg`]);
      expect(json.code, json.stderr).toBe(0);
      type Leg = { target: string; method: string; scheme: string | null; proxyScheme: string | null; status: number };
      const legs = (JSON.parse(json.stdout) as { legs: Leg[] }).legs;
      // The origin's first leg opens the tunnel under it (bare CONNECT, its 407, then Basic: this
      // proxy closes after a 407). Before: no target nor proxyScheme, and the CONNECT's scheme was
      // the proxy's Basic, counted as the origin's.
      expect(legs.map((l) => [l.target, l.method, l.scheme, l.proxyScheme, l.status])).toEqual([
        ['origin', 'GET', null, null, 401],
        ['proxy', 'CONNECT', null, null, 407],
        ['proxy', 'CONNECT', null, 'Basic', 200],
        ['origin', 'GET', 'Negotiate', null, 401],
        ['origin', 'GET', 'Negotiate', null, 200],
      ]);
      const har = join(dir, 'whose-leg.har');
      // A plain http:// URL goes through the forwarding proxy: the origin's leg, the proxy's Basic on it.
      const forwarded = await run([...proxyArgs, '--har', har, `http://localhost:${server.port}/public/whose-leg`]);
      expect(forwarded.code, forwarded.stderr).toBe(0);
      const text = readFileSync(har, 'utf8');
      const entries = (JSON.parse(text) as { log: { entries: Record<string, unknown>[] } }).log.entries;
      expect(
        entries.map((e) => [e._target, e._authScheme, e._proxyAuthScheme, (e.response as { status: number }).status]),
      ).toEqual([
        ['origin', undefined, undefined, 407],
        ['origin', undefined, 'Basic', 200],
      ]);
      for (const out of [json.stdout, text]) {
        expect(out).not.toContain('proxypw');
        expect(out).not.toContain(Buffer.from('proxyuser:proxypw').toString('base64'));
      }
    } finally {
      await proxy?.close();
    }
  });

  it('H5: -U user without a password asks for it on a terminal, as curl does (the proxy then takes it); with no terminal it is bad usage naming the fix', async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
      const target = `${server.origin}/auth/asked`;
      const common = [...alice(), '--proxy-cacert', ca, '-x', proxy.origin, '-U', 'proxyuser', target];
      const piped = await run(common);
      expect([piped.code, piped.stderr]).toEqual([
        2,
        'multileg: no proxy password for proxyuser: write -U user:password (there is no terminal to ask on)\n',
      ]);
      const out = await runOnTerminal(common, 'Enter proxy password', 'proxypw');
      expect(out).toContain("Enter proxy password for user 'proxyuser':");
      expect(out).toContain('"path":"/auth/asked"');
      expect(out).not.toContain('proxypw');
    } finally {
      await proxy?.close();
    }
  });

  it('H5: doctor with -U user and no terminal is bad usage naming the fix, as a request is (not a proxy check that says to give the -U given)', async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
      const target = `${server.origin}/auth/doctor-asked`;
      const r = await run(['doctor', ...alice(), '--proxy-cacert', ca, '-x', proxy.origin, '-U', 'proxyuser', target]);
      expect([r.code, r.stderr]).toEqual([
        2,
        'multileg doctor: no proxy password for proxyuser: write -U user:password (there is no terminal to ask on)\n',
      ]);
      expect(r.stdout).toBe('');
    } finally {
      await proxy?.close();
    }
  });

  it('doctor with -u user and no terminal (no password anywhere) is bad usage naming the fix, as a request is — it skipped the authentication check and said "no problem found", exit 0; MULTILEG_PASSWORD and --password-stdin give it, as they give a request theirs (trial u18)', async () => {
    const target = `${server.origin}/auth/doctor-user`;
    const args = ['doctor', '-u', 'EXAMPLE\\alice', '--cacert', ca, target];
    const request = await run(args.slice(1));
    const r = await run(args);
    expect([r.code, r.stderr]).toEqual([request.code, `multileg doctor: ${request.stderr.slice('multileg: '.length)}`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('no password for EXAMPLE\\alice: write -u user:password');
    expect(r.stdout).toBe('');
    const env = await run(args, { env: { MULTILEG_PASSWORD: 'alicepw' } });
    expect(env.code, env.stdout).toBe(0);
    expect(env.stdout).toMatch(/^ok +authentication: .* as EXAMPLE\\alice .*→ 200$/m);
    const stdin = await run([...args.slice(0, 3), '--password-stdin', ...args.slice(3)], { input: 'alicepw\n' });
    expect(stdin.stdout).toMatch(/^ok +authentication: .* as EXAMPLE\\alice .*→ 200$/m);
  });

  it("H5/S1: an upper-case HTTP_PROXY in the environment is not read for http:// URLs, as curl (httpoxy: under CGI a request's Proxy header sets it); the lower-case http_proxy is", async () => {
    const port = REFUSED_PORT;
    const args = ['-s', '-o', '/dev/null', '-w', '%{http_code}', `${plainOrigin}/flaky/env?n=0`];
    // Straight to the server, as curl goes: the proxy that HTTP_PROXY names is down.
    const upper = await run(args, { env: { HTTP_PROXY: `http://127.0.0.1:${port}` } });
    expect([upper.code, upper.stdout]).toEqual([0, '200']);
    const lower = await run(args, { env: { http_proxy: `http://127.0.0.1:${port}` } });
    expect([lower.code, lower.stdout]).toEqual([7, '000']);
  });

  it("H5: with only http_proxy set, an https:// URL goes directly — the proxy sees no connection — and an http:// URL through it; with https_proxy too, each to its own: as curl, side by side (the command tunnelled https:// through http_proxy's proxy)", async () => {
    const cleanup: Array<() => Promise<unknown>> = [];
    const plainProxy = await startReferenceProxy({});
    const secureProxy = await startReferenceProxy({});
    cleanup.push(
      () => plainProxy.close(),
      () => secureProxy.close(),
    );
    try {
      // Each proxy behind a relay that counts the TCP connections made to it.
      const plainWire = await countingRelay(plainProxy.port, cleanup);
      const secureWire = await countingRelay(secureProxy.port, cleanup);
      const httpsUrl = `${server.origin}/public/h5-direct`;
      // The reference proxy forwards an http:// URL to the reference server (over TLS).
      const httpUrl = `http://localhost:${server.port}/public/h5-forwarded`;
      const args = [
        '-s',
        '-o',
        '/dev/null',
        '-w',
        '%{http_code} %{http_connect}',
        '--proxy-cacert',
        ca,
        '--cacert',
        ca,
      ];
      const noProxies = Object.fromEntries(
        Object.entries(process.env).filter(([k]) => !/^(https?|all|no)_proxy$/i.test(k)),
      );
      /** What multileg and then curl did with `url` under `env`, and what each proxy saw of each. */
      const both = async (env: Record<string, string>, url: string) => {
        const seen = () => [
          plainWire.connections,
          plainProxy.exchanges.length,
          secureWire.connections,
          secureProxy.exchanges.length,
        ];
        const before = seen();
        const ours = await run([...args, url], { env });
        const oursSeen = seen().map((n, i) => n - before[i]!);
        const curl = await runCommand('curl', [...args, url], '', { ...noProxies, ...env });
        const curlSeen = seen().map((n, i) => n - oursSeen[i]! - before[i]!);
        return { ours: [ours.code, ours.stdout, ...oursSeen], curl: [curl.code, curl.stdout, ...curlSeen] };
      };
      // [exit code, http_code http_connect, connections and requests at http_proxy's, at https_proxy's]
      const onlyHttp = { http_proxy: plainWire.url };
      const direct = await both(onlyHttp, httpsUrl);
      // Before: [0, '200 200', 1, 1, 0, 0], a CONNECT to the proxy named for http.
      expect(direct.ours).toEqual([0, '200 000', 0, 0, 0, 0]);
      expect(direct.curl).toEqual(direct.ours);
      const forwarded = await both(onlyHttp, httpUrl);
      expect(forwarded.ours).toEqual([0, '200 000', 1, 1, 0, 0]);
      expect(forwarded.curl).toEqual(forwarded.ours);
      const each = { http_proxy: plainWire.url, https_proxy: secureWire.url };
      const tunnelled = await both(each, httpsUrl);
      expect(tunnelled.ours).toEqual([0, '200 200', 0, 0, 1, 1]);
      expect(tunnelled.curl).toEqual(tunnelled.ours);
      const forwardedToo = await both(each, httpUrl);
      expect(forwardedToo.ours).toEqual([0, '200 000', 1, 1, 0, 0]);
      expect(forwardedToo.curl).toEqual(forwardedToo.ours);
      // doctor names the route the request takes.
      const doctor = await run(['doctor', '--cacert', ca, httpsUrl], { env: onlyHttp });
      expect(doctor.stdout).toContain('ok    proxy: none: direct connection');
    } finally {
      for (const close of cleanup) await close();
    }
  });

  it("H5: ALL_PROXY (all_proxy first) is the proxy where the URL's scheme has no variable of its own, as curl reads them (an empty one is none), NO_PROXY applying to it; doctor reads it too — multileg went straight to the server, past the proxy curl uses (trial u18)", async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      const down = `http://127.0.0.1:${REFUSED_PORT}`;
      const plainUrl = `${plainOrigin}/flaky/all-proxy?n=0`;
      const args = [
        '-s',
        '-o',
        '/dev/null',
        '-w',
        '%{http_code} %{http_connect}',
        '--proxy-cacert',
        ca,
        '--cacert',
        ca,
      ];
      // An http:// URL through the proxy ALL_PROXY names (down: curl's 7), or all_proxy, which wins.
      for (const env of [
        { ALL_PROXY: down },
        { all_proxy: down, ALL_PROXY: 'http://unused.invalid:1' },
        { ALL_PROXY: down, http_proxy: '' },
      ]) {
        const r = await run([...args, plainUrl], { env });
        expect([r.code, r.stdout], JSON.stringify(env)).toEqual([7, '000 000']);
      }
      // NO_PROXY holds for it, as for the others.
      const bypass = await run([...args, plainUrl], { env: { ALL_PROXY: down, NO_PROXY: '127.0.0.1' } });
      expect([bypass.code, bypass.stdout]).toEqual([0, '200 000']);
      proxy = await startReferenceProxy({});
      // An https:// URL tunnels through it; the scheme's own variable wins over it.
      const url = `${server.origin}/public/`;
      const tunnelled = await run([...args, url], { env: { ALL_PROXY: proxy.origin } });
      expect([tunnelled.code, tunnelled.stdout]).toEqual([0, '200 200']);
      const own = await run([...args, url], { env: { ALL_PROXY: down, HTTPS_PROXY: proxy.origin } });
      expect([own.code, own.stdout]).toEqual([0, '200 200']);
      // An empty https_proxy is none: HTTPS_PROXY is read (curl's getenv), where it hid it.
      const empty = await run([...args, url], { env: { https_proxy: '', HTTPS_PROXY: proxy.origin } });
      expect([empty.code, empty.stdout]).toEqual([0, '200 200']);
      // -x "" is no proxy, the environment's neither.
      const none = await run([...args, '-x', '', plainUrl], { env: { ALL_PROXY: down } });
      expect([none.code, none.stdout]).toEqual([0, '200 000']);
      const doctor = await run(['doctor', '--cacert', ca, url], { env: { ALL_PROXY: down } });
      expect(doctor.stdout).toContain(`FAIL  proxy: ${down} (CONNECT tunnel): cannot connect to proxy ${down}`);
    } finally {
      await proxy?.close();
    }
  });

  it('H5: with ALL_PROXY or all_proxy set, a proxy error names that variable, as the user set it, not https_proxy/http_proxy it is read through (trial u20); with -v and in doctor too, where an unusable one was an unexpected error', async () => {
    const down = `http://127.0.0.1:${REFUSED_PORT}`;
    const url = `${server.origin}/public/`;
    // Down: curl's 7, as curl (7.88: "Failed to connect"); the fix names the variable that was set.
    for (const name of ['ALL_PROXY', 'all_proxy']) {
      for (const target of [url, `${plainOrigin}/public/`]) {
        const r = await run(['-sS', '--cacert', ca, target], { env: { [name]: down } });
        expect(r.code, `${name} ${target}`).toBe(7);
        expect(r.stderr).toContain(`check the proxy address (-x, or ${name})`);
        expect(r.stderr).not.toMatch(/\bhttps?_proxy\b|HTTPS_PROXY/);
      }
    }
    // One of the scheme's own variables set: the other proxy is ALL_PROXY's, both named.
    const mixed = await run(['-sS', '--cacert', ca, url], { env: { ALL_PROXY: down, https_proxy: down } });
    expect([mixed.code, mixed.stderr]).toEqual([7, expect.stringContaining('(-x, or HTTPS_PROXY / ALL_PROXY)')]);
    // Unusable (multileg speaks no SOCKS; not a URL), naming the variable and unsetting it: curl's
    // 7 for a scheme not spoken ("Unsupported proxy scheme") and 5 for a URL that is not one
    // ("Unsupported proxy syntax"); this asserted 2 (bad usage), which curl never exits for them.
    const socks = `socks5://127.0.0.1:${REFUSED_PORT}`;
    for (const args of [['-sS'], ['-sS', '-v']]) {
      const r = await run([...args, url], { env: { ALL_PROXY: socks } });
      // (With -v the transfer's summary line follows: the variable is read when the transfer starts.)
      const said = r.stderr.split('\n').filter((l) => l.startsWith('multileg: '));
      expect([r.code, ...said], args.join(' ')).toEqual([
        7,
        'multileg: proxy: unsupported proxy protocol socks5: in ALL_PROXY; use http:// or https://, or unset ALL_PROXY (MULTILEG_CONFIG)',
      ]);
    }
    const bad = await run(['-sS', url], { env: { all_proxy: 'http://[bad' } });
    expect([bad.code, bad.stderr]).toEqual([
      5,
      'multileg: proxy: the proxy address in all_proxy is not a URL; use http://host:port, or unset all_proxy (MULTILEG_CONFIG)\n',
    ]);
    const doctor = await run(['doctor', url], { env: { ALL_PROXY: socks } });
    expect([doctor.code, doctor.stderr]).toEqual([1, '']);
    expect(doctor.stdout).toContain(
      'FAIL  proxy: proxy: unsupported proxy protocol socks5: in ALL_PROXY; use http:// or https://, or unset ALL_PROXY (MULTILEG_CONFIG)\n1 check(s) failed\n',
    );
  });

  it('H5: doctor checks that the proxy can be reached: a proxy that is down FAILs there with its fix (it said ok: only its address was read), a reachable one is ok', async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      const port = REFUSED_PORT;
      const target = `${server.origin}/public/`;
      const down = await run(['doctor', '--cacert', ca, '-x', `http://127.0.0.1:${port}`, target]);
      expect(down.code).toBe(1);
      expect(down.stdout).toContain(
        `FAIL  proxy: http://127.0.0.1:${port} (CONNECT tunnel): cannot connect to proxy http://127.0.0.1:${port} (ECONNREFUSED); check the proxy address (-x, or HTTPS_PROXY / http_proxy)`,
      );
      proxy = await startReferenceProxy({});
      const up = await run(['doctor', '--cacert', ca, '--proxy-cacert', ca, '-x', proxy.origin, target]);
      expect(up.stdout).toContain(`ok    proxy: ${proxy.origin} (CONNECT tunnel), reachable\n`);
    } finally {
      await proxy?.close();
    }
  });

  it("R1: doctor -m bounds the whole run, as a request's -m does: a server that takes the connection and never answers (http://, and https:// where TLS never starts) ends doctor at -m with the check that ran out named and --max-time, the checks after it not run (it waited 300 s and then advised the -m it was given)", async () => {
    const held: Socket[] = [];
    const silent = createTcpServer((socket) => {
      held.push(socket);
    });
    const port = await listen(silent);
    try {
      for (const url of [`http://127.0.0.1:${port}/x`, `https://127.0.0.1:${port}/x`]) {
        const started = performance.now();
        const r = await run(['doctor', '-u', ':', '--cacert', ca, '-m', '1.5', url]);
        const took = performance.now() - started;
        expect(took).toBeLessThan(6000);
        expect(r.code).toBe(1);
        expect(r.stdout).toMatch(/^FAIL {2}\S+: .*--max-time/m);
        expect(r.stdout).not.toContain('300 s');
        // The checks it left no time for are said to be not run, not failed as well.
        expect(r.stdout).toMatch(/^skip {2}.*not run: -m \(--max-time\) ran out/m);
        expect(r.stdout).toMatch(/^1 check\(s\) failed\n$/m);
      }
    } finally {
      for (const socket of held) socket.destroy();
      silent.close();
    }
  }, 30_000);

  it("H5: through a CONNECT tunnel the response's protocol is the server's, not the proxy's answer to CONNECT: -w %{http_version} 2 and -i's HTTP/2 (curl's), doctor's schemes check HTTP/2 as its authentication check (it said the server does not speak HTTP/2)", async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      proxy = await startReferenceProxy({});
      const through = ['--cacert', ca, '--proxy-cacert', ca, '-x', proxy.origin];
      const version = await run([
        '-s',
        '-o',
        '/dev/null',
        '-w',
        '%{http_version}',
        ...through,
        `${server.origin}/public/`,
      ]);
      expect([version.code, version.stdout]).toEqual([0, '2']);
      const heads = await run(['-s', '-i', ...alice(), ...through, `${server.origin}/auth/tunnel-protocol`]);
      // The proxy's answer to CONNECT (HTTP/1.1), the handshake's 401s (NTLM: 2), the answer: each its own.
      expect(statusLines(heads.stdout)).toEqual(['HTTP/1.1 200 OK', 'HTTP/2 401', 'HTTP/2 401', 'HTTP/2 200']);
      const doctor = await run(['doctor', ...alice(), ...through, `${server.origin}/auth/tunnel-doctor`]);
      expect(doctor.stdout).toMatch(/^ok +schemes: HTTP\/2 401 offers .*; over HTTP\/1\.1: HTTP\/1\.1 401/m);
      expect(doctor.stdout).toMatch(/^ok +authentication: .* over HTTP\/2 → 200\n/m);
      expect(doctor.stdout).not.toContain('does not speak HTTP/2');
    } finally {
      await proxy?.close();
    }
  });

  it("-D: a file that cannot be created is curl's 23 before anything is sent, in one line; one that can is created empty when no response comes", async () => {
    const before = server.exchanges.length;
    const missing = join(dir, 'no-such-dir', 'heads.txt');
    const bad = await run([...alice(), '-D', missing, `${server.origin}/auth/d3`]);
    expect(bad.code).toBe(23);
    expect(bad.stderr).toBe(
      `multileg: -D ${missing}: no such directory (ENOENT); --create-dirs makes the missing directories\n`,
    );
    expect(server.exchanges.length).toBe(before);
    const port = REFUSED_PORT;
    const empty = join(dir, 'empty.txt');
    writeFileSync(empty, 'left over from before');
    const refused = await run(['-D', empty, `http://127.0.0.1:${port}/`]);
    expect(refused.code).toBe(7);
    expect(existsSync(empty)).toBe(true);
    expect(readFileSync(empty, 'utf8')).toBe('');
  });

  it("--proxy-cacert / --proxy-insecure: an https:// proxy is verified with its own trust, apart from the server's --cacert / -k (curl's); an untrusted proxy is 60 naming --proxy-cacert", async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      // The reference proxy's certificate and the reference server's come from one test CA.
      proxy = await startReferenceProxy({});
      const x = ['-x', proxy.origin];
      // An http:// URL: only the proxy's certificate is verified.
      const plain = `http://localhost:${server.port}/public/plain`;
      const untrusted = `multileg: the certificate of proxy ${proxy.origin} is not trusted (UNABLE_TO_VERIFY_LEAF_SIGNATURE); give the CA that issued it with --proxy-cacert FILE or --proxy-ca-native, or NODE_EXTRA_CA_CERTS=FILE (MULTILEG_PROXY_CERTIFICATE)\n`;
      for (const origins of [['--cacert', ca], ['-k'], ['--ca-native']]) {
        const r = await run([...origins, ...x, plain]);
        expect(r.code, origins.join(' ')).toBe(60);
        expect(r.stderr).toBe(untrusted);
      }
      for (const trust of [['--proxy-cacert', ca], ['--proxy-insecure']]) {
        const r = await run([...trust, ...x, plain]);
        expect(r.code, `${trust.join(' ')}: ${r.stderr}`).toBe(0);
        expect(JSON.parse(r.stdout)).toMatchObject({ path: '/public/plain' });
      }
      // An https:// URL through the tunnel: the proxy's trust does not reach the server, nor the server's the proxy.
      const url = `${server.origin}/auth/proxy-tls`;
      const user = ['-u', 'EXAMPLE\\alice:alicepw'];
      const serverUntrusted = await run([...user, '--proxy-cacert', ca, ...x, url]);
      expect(serverUntrusted.code).toBe(60);
      expect(serverUntrusted.stderr).toMatch(/^multileg: the certificate of localhost:\d+ is not trusted/);
      expect((await run([...user, '--cacert', ca, ...x, url])).code).toBe(60);
      expect((await run([...user, '-k', '--proxy-cacert', ca, ...x, url])).code).toBe(0);
      for (const trust of [
        ['--cacert', ca, '--proxy-cacert', ca],
        ['--cacert', ca, '--proxy-insecure'],
      ]) {
        const r = await run([...user, ...trust, ...x, url]);
        expect(r.code, `${trust.join(' ')}: ${r.stderr}`).toBe(0);
        expect(JSON.parse(r.stdout)).toMatchObject({ user: 'EXAMPLE\\alice', path: '/auth/proxy-tls' });
      }
      // HTTPS_PROXY's proxy is the same: verified with --proxy-cacert, not at all with --proxy-insecure.
      const env = { HTTPS_PROXY: proxy.origin };
      expect((await run([...user, '--cacert', ca, url], { env })).code).toBe(60);
      expect((await run([...user, '--cacert', ca, '--proxy-cacert', ca, url], { env })).code).toBe(0);
      expect((await run([...user, '--cacert', ca, '--proxy-insecure', url], { env })).code).toBe(0);
    } finally {
      await proxy?.close();
    }
  });

  it("--proxy-cacert: not there is bad usage (2, as --cacert in curl 8.18+); no PEM certificate in it is curl's 77 once an https:// proxy is on the way, nothing without one or with --proxy-insecure", async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      proxy = await startReferenceProxy({});
      const url = `http://localhost:${server.port}/public/pc`;
      const missing = join(dir, 'missing-proxy-ca.pem');
      const absent = await run(['--proxy-cacert', missing, '-x', proxy.origin, url]);
      expect(absent.code).toBe(2);
      expect(absent.stderr).toBe(`multileg: --proxy-cacert ${missing}: no such file\n`);
      const garbage = join(dir, 'garbage-proxy-ca.pem');
      writeFileSync(garbage, 'not a certificate\n');
      const bad = await run(['--proxy-cacert', garbage, '-x', proxy.origin, url]);
      expect(bad.code).toBe(77);
      expect(bad.stderr).toBe(`multileg: --proxy-cacert ${garbage}: not a PEM file of CA certificates\n`);
      expect(proxy.exchanges).toHaveLength(0);
      // Not used: no proxy, or a proxy not verified.
      const direct = await run(['--proxy-cacert', garbage, '--cacert', ca, `${server.origin}/public/pc`]);
      expect(direct.code, direct.stderr).toBe(0);
      const insecure = await run(['--proxy-cacert', garbage, '--proxy-insecure', '-x', proxy.origin, url]);
      expect(insecure.code, insecure.stderr).toBe(0);
    } finally {
      await proxy?.close();
    }
  });

  it("--retry: a 503 is sent again with its body until it succeeds; the 503s' bodies are not output (stdout has the 200 once; with -i their heads are, as -D's); curl's warning for each retry; -w %{num_retries}", async () => {
    const url = `${plainOrigin}/flaky/post?n=2`;
    const r = await run(['--retry', '3', '--retry-delay', '0.1', '-d', 'hello', '-w', '\n%{num_retries}', url]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('POST hello\n2');
    expect(r.stderr).toBe(
      'multileg: Warning: Problem : HTTP error. Retrying in 0.100 seconds. 3 retries left.\n' +
        'multileg: Warning: Problem : HTTP error. Retrying in 0.100 seconds. 2 retries left.\n',
    );
    // The request body went again with each attempt.
    expect(to('/flaky/post')).toEqual(['POST /flaky/post hello', 'POST /flaky/post hello', 'POST /flaky/post hello']);
    // Out of retries: the last answer is the outcome, shown as curl shows it (-i, -f's 22).
    const out = join(dir, 'flaky.txt');
    const spent = await run([
      '--retry',
      '1',
      '--retry-delay',
      '0.05',
      '-i',
      '-o',
      out,
      `${plainOrigin}/flaky/spent?n=5`,
    ]);
    expect(spent.code).toBe(0);
    expect(readFileSync(out, 'latin1')).toMatch(/^HTTP\/1\.1 503 Service Unavailable\r\n[\s\S]*\r\n\r\nbusy 4\n$/);
    expect(spent.stderr).toBe('multileg: Warning: Problem : HTTP error. Retrying in 0.050 seconds. 1 retry left.\n');
    // -i to stdout: the answer retried shows its head, as -D (curl's), not its body (it would be there twice).
    const shown = await run(['--retry', '1', '--retry-delay', '0.05', '-i', `${plainOrigin}/flaky/shown?n=1`]);
    expect(shown.code).toBe(0);
    expect(statusLines(shown.stdout)).toEqual(['HTTP/1.1 503 Service Unavailable', 'HTTP/1.1 200 OK']);
    expect(shown.stdout).toMatch(/\r\n\r\nHTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nGET $/);
    const failed = await run([
      '--retry',
      '1',
      '--retry-delay',
      '0.05',
      '-f',
      `${plainOrigin}/flaky/failed?n=5&status=429`,
    ]);
    expect(failed).toMatchObject({ code: 22, stdout: '' });
    expect(failed.stderr).toBe(
      'multileg: (22) HTTP 429\nmultileg: Warning: Problem : HTTP error. Retrying in 0.050 seconds. 1 retry left.\nmultileg: (22) HTTP 429\n',
    );
    // -s hides the warnings, -S does not bring them back (curl's).
    const quiet = await run(['-sS', '--retry', '1', '--retry-delay', '0.05', `${plainOrigin}/flaky/quiet?n=1`]);
    expect(quiet).toMatchObject({ code: 0, stdout: 'GET ', stderr: '' });
    // Not transient: a 404 is not retried (nor without --retry a 503).
    const missing = await run(['--retry', '3', `${plainOrigin}/nothing`]);
    expect(missing).toMatchObject({ code: 0, stdout: 'not here\n', stderr: '' });
    expect(to('/nothing')).toHaveLength(1);
  });

  it("--retry: without --retry-delay the wait is 1 s, doubling (curl's back-off, up to 10 min); Retry-After wins; one past --retry-max-time stops the retries with curl's warning", async () => {
    const backoff = await run(['--retry', '2', `${plainOrigin}/flaky/backoff?n=2`]);
    expect(backoff).toMatchObject({ code: 0, stdout: 'GET ' });
    expect(backoff.stderr).toBe(
      'multileg: Warning: Problem : HTTP error. Retrying in 1 second. 2 retries left.\n' +
        'multileg: Warning: Problem : HTTP error. Retrying in 2 seconds. 1 retry left.\n',
    );
    const after = await run(['--retry', '1', '--retry-delay', '0.05', `${plainOrigin}/flaky/after?n=1&after=1`]);
    expect(after).toMatchObject({ code: 0, stdout: 'GET ' });
    expect(after.stderr).toBe('multileg: Warning: Problem : HTTP error. Retrying in 1 second. 1 retry left.\n');
    const tooLong = await run(['--retry', '3', '--retry-max-time', '5', `${plainOrigin}/flaky/long?n=1&after=3600`]);
    expect(tooLong).toMatchObject({ code: 0, stdout: 'busy 1\n' });
    expect(tooLong.stderr).toBe(
      'multileg: Warning: The Retry-After: time would make this command line exceed the maximum allowed time for retries.\n',
    );
    expect(to('/flaky/long')).toHaveLength(1);
    // The whole back-off, on a clock of our own: 1, 2, 4 … 512 s, then 10 min.
    let now = 0;
    const retrier = new Retrier(
      { retries: 12, delayMs: 0, maxTimeMs: 0, allErrors: false, connRefused: false },
      () => now,
    );
    const waits: number[] = [];
    for (let i = 0; i < 12; i++) {
      const next = retrier.next({ exit: 28, status: 0, refused: false, failOnError: false });
      waits.push(next!.delayMs / 1000);
      now += next!.delayMs;
    }
    expect(waits).toEqual([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
    expect(retrier.next({ exit: 28, status: 0, refused: false, failOnError: false })).toBeUndefined();
    // --retry-max-time: no retry once it has passed since the first attempt.
    const limited = new Retrier(
      { retries: 5, delayMs: 2000, maxTimeMs: 3000, allErrors: false, connRefused: false },
      () => now,
    );
    expect(limited.next({ exit: 28, status: 0, refused: false, failOnError: false })?.delayMs).toBe(2000);
    now += 3000;
    expect(limited.next({ exit: 28, status: 0, refused: false, failOnError: false })).toBeUndefined();
  });

  it("R4/R3: --retry: a Kerberos step that could not reach the KDC is transient — the 401 it led to (0, 22 with -f) and the handshake's timeout on GSS-API (28) — and the retry waits until the origin asks the KDC again (KDC_RECHECK_MS); a 401 that stands otherwise, or refused credentials, never (trial u12)", () => {
    const options = { retries: 3, delayMs: 1000, maxTimeMs: 0, allErrors: false, connRefused: false };
    const retrier = new Retrier(options, () => 0);
    const kdc401 = retrier.next({ exit: 22, status: 401, refused: false, failOnError: true, kdcSilent: true });
    expect(kdc401?.delayMs).toBe(KDC_RECHECK_MS);
    expect(kdc401?.warning).toBe('Problem : no Kerberos KDC answered. Retrying in 5 seconds. 3 retries left.');
    expect(retrier.next({ exit: 0, status: 401, refused: false, failOnError: false, kdcSilent: true })?.delayMs).toBe(
      KDC_RECHECK_MS,
    );
    expect(retrier.next({ exit: 28, status: 0, refused: false, failOnError: false, kdcSilent: true })?.delayMs).toBe(
      KDC_RECHECK_MS,
    );
    const other = new Retrier(options, () => 0);
    expect(other.next({ exit: 22, status: 401, refused: false, failOnError: true })).toBeUndefined();
    expect(other.next({ exit: 22, status: 401, refused: true, failOnError: true, kdcSilent: true })).toBeUndefined();
    // A longer --retry-delay stays.
    const longer = new Retrier({ ...options, delayMs: 6000 }, () => 0);
    expect(longer.next({ exit: 22, status: 401, refused: false, failOnError: true, kdcSilent: true })?.delayMs).toBe(
      6000,
    );
  });

  it('--retry: a timeout (28) is transient, a refused connection only with --retry-connrefused, anything else with --retry-all-errors (an HTTP error with -f); what a cut-short attempt wrote to -o goes', async () => {
    const hang = await run(['--retry', '1', '--retry-delay', '0.05', '-m', '0.5', `${plainOrigin}/hang`]);
    expect(hang.code).toBe(28);
    expect(hang.stderr).toContain('multileg: Warning: Problem : timeout. Retrying in 0.050 seconds. 1 retry left.\n');
    expect(to('/hang')).toHaveLength(2);
    const port = REFUSED_PORT;
    const refusedUrl = `http://127.0.0.1:${port}/`;
    const refused = await run(['--retry', '2', '--retry-delay', '0.05', refusedUrl]);
    expect(refused.code).toBe(7);
    expect(refused.stderr).not.toContain('Warning');
    const connrefused = await run(['--retry', '2', '--retry-delay', '0.05', '--retry-connrefused', refusedUrl]);
    expect(connrefused.code).toBe(7);
    expect(connrefused.stderr.match(/Warning: Problem : connection refused\./g)).toHaveLength(2);
    // A 404 is an error only with -f; then --retry-all-errors retries it.
    const notFound = `${plainOrigin}/gone`;
    expect((await run(['--retry', '1', '--retry-all-errors', notFound])).code).toBe(0);
    const all = await run(['--retry', '1', '--retry-delay', '0.05', '--retry-all-errors', '-f', notFound]);
    expect(all.code).toBe(22);
    expect(all.stderr).toContain(
      'multileg: Warning: Problem (retrying all errors). Retrying in 0.050 seconds. 1 retry left.\n',
    );
    expect(to('/gone')).toHaveLength(3);
    // A body cut short (18) with -o: the next attempt starts on an empty file (-v says so, as curl).
    const out = join(dir, 'cut.txt');
    const cut = await run([
      '-v',
      '--retry',
      '1',
      '--retry-delay',
      '0.05',
      '--retry-all-errors',
      '-o',
      out,
      `${plainOrigin}/truncated`,
    ]);
    expect(cut.code).toBe(18);
    expect(cut.stderr).toContain('multileg: Note: Throwing away 10 bytes\n');
    expect(readFileSync(out, 'latin1')).toBe('0123456789');
    expect(to('/truncated')).toHaveLength(2);
    // What the cut-short attempt wrote goes before the next one (curl truncates the file), which
    // here writes nothing (-f, a 404): the file is empty, not the first attempt's 10 bytes.
    const cutFile = join(dir, 'cut-once.txt');
    const cutOnce = await run([
      '-f',
      '--retry',
      '1',
      '--retry-delay',
      '0.05',
      '--retry-all-errors',
      '-o',
      cutFile,
      `${plainOrigin}/cut-once`,
    ]);
    expect(cutOnce.code).toBe(22);
    expect(readFileSync(cutFile, 'latin1')).toBe('');
    expect(to('/cut-once')).toHaveLength(2);
  });

  it('R4: --retry never sends refused credentials again, not even with --retry-all-errors and -f (accounts lock); --help says so', async () => {
    const before = server.exchanges.length;
    const wrong = await run([
      '-u',
      'EXAMPLE\\alice:wrongpw',
      '--cacert',
      ca,
      '--ntlm',
      '-f',
      '--retry',
      '3',
      '--retry-all-errors',
      '--retry-delay',
      '0.05',
      `${server.origin}/auth/r4`,
    ]);
    expect(wrong.code).toBe(22);
    expect(wrong.stderr).not.toContain('Warning');
    // One NTLM handshake: its two legs with credentials (negotiate, authenticate), no second try.
    const sent = server.exchanges.slice(before).filter((e) => e.requestHeaders.authorization !== undefined);
    expect(sent).toHaveLength(2);
    let proxy: ReferenceProxy | undefined;
    try {
      // A proxy that refuses its credentials: the CONNECT's 407 (exit 7) is not retried either.
      proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
      const denied = await run([
        ...alice(),
        '--proxy-cacert',
        ca,
        '-x',
        proxy.origin,
        '-U',
        'proxyuser:wrongpw',
        '--retry',
        '3',
        '--retry-all-errors',
        '--retry-delay',
        '0.05',
        `${server.origin}/auth/r4-proxy`,
      ]);
      expect(denied.code).toBe(7);
      expect(denied.stderr).not.toContain('Warning');
      expect(proxy.exchanges.filter((e) => e.proxyAuthorization)).toHaveLength(1);
    } finally {
      await proxy?.close();
    }
    const help = await run(['--help']);
    expect(help.stdout.replace(/\s+/g, ' ')).toContain(
      'Never after refused credentials (a 401 or 407, an authentication error): that could lock the account',
    );
  });

  it("--retry takes a host name that did not resolve as transient (curl's 6, counted a timeout), and --help says so beside the timeouts and the HTTP statuses (it named those alone)", async () => {
    const r = await run(['--retry', '1', '--retry-delay', '0.05', 'https://nothing-here.invalid/']);
    expect(r.code).toBe(6);
    expect(r.stderr).toContain('Warning: Problem : timeout. Retrying in 0.050 seconds. 1 retry left.');
    const help = await run(['--help']);
    expect(help.stdout.replace(/\s+/g, ' ')).toContain(
      'retry a transient failure (a timeout, a host or proxy name not resolved, HTTP 408, 429, 500, 502, 503, 504, 522, 524)',
    );
  });

  it("R4: --retry-all-errors does not send credentials again after an attempt that failed once they went out (a connection cut at the credentials' leg), and --retry does retry a library timeout that sent none (curl's 28)", async () => {
    const cut = await run([
      '-u',
      'bob:secret',
      '--basic',
      '--retry',
      '2',
      '--retry-all-errors',
      '--retry-delay',
      '0.05',
      `${plainOrigin}/basic-cut`,
    ]);
    // The origin closed its kept-alive connection (the 401 came on it) without a byte of an answer
    // to the password's leg: ConnectionClosedError, curl's 52 "Empty reply from server" (undici's
    // raw "other side closed" was 56: its socket had read the 401).
    expect(cut.code).toBe(52);
    expect(cut.stderr).toContain('MULTILEG_CONNECTION_CLOSED');
    expect(cut.stderr).not.toContain('Warning');
    // The bare request and the one with the password: sent once, not three times.
    expect(to('/basic-cut')).toHaveLength(2);
    // A proxy that takes the connection and never answers its CONNECT: ProxyTimeoutError (--timeout), no
    // credentials anywhere — a timeout, curl's 28, which --retry sends again (no --retry-all-errors needed).
    const accepted: unknown[] = [];
    const silent = createTcpServer((socket) => accepted.push(socket));
    const port = await listen(silent);
    try {
      const r = await run([
        '-x',
        `http://127.0.0.1:${port}`,
        '--timeout',
        '200',
        '--retry',
        '1',
        '--retry-delay',
        '0.05',
        // https: the CONNECT exchange is what --timeout bounds.
        'https://localhost:9/never',
      ]);
      expect(r.stderr).toContain('(MULTILEG_PROXY_TIMEOUT)');
      // A time limit of ours is curl's 28, as -m's.
      expect(r.code).toBe(28);
      expect(r.stderr).toContain('Warning: Problem : timeout. Retrying in 0.050 seconds. 1 retry left.');
      expect(accepted.length).toBeGreaterThanOrEqual(2);
    } finally {
      for (const socket of accepted) (socket as { destroy(): void }).destroy();
      silent.close();
    }
  });

  it("R4: --retry retries a timeout whose only unanswered credentials were an NTLM NEGOTIATE (no password in it): --proxy-ntlm's opening CONNECT to a silent proxy, --ntlm's opening request to a silent origin", async () => {
    const accepted: Array<{ destroy(): void }> = [];
    const seen: string[] = [];
    const silent = createTcpServer((socket) => {
      accepted.push(socket);
      socket.on('data', (d: Buffer) =>
        seen.push(/\r\nProxy-Authorization: (\S+)/i.exec(d.toString('latin1'))?.[1] ?? ''),
      );
    });
    const port = await listen(silent);
    const retry = ['--retry', '1', '--retry-delay', '0.05'];
    try {
      const proxied = await run([
        '-x',
        `http://127.0.0.1:${port}`,
        '--proxy-ntlm',
        '-U',
        'proxyuser:proxypw',
        '--timeout',
        '200',
        ...retry,
        'https://localhost:9/never',
      ]);
      expect(proxied.stderr).toContain('(MULTILEG_PROXY_TIMEOUT)');
      expect(proxied.code).toBe(28);
      // Before: no retry (the NEGOTIATE counted as credentials that may have been counted).
      expect(proxied.stderr).toContain('Warning: Problem : timeout. Retrying in 0.050 seconds. 1 retry left.');
      expect(seen).toEqual(['NTLM', 'NTLM']);
    } finally {
      for (const socket of accepted) socket.destroy();
      silent.close();
    }
    const origin = await run([
      '-u',
      'bob:secret',
      '--ntlm',
      '--timeout',
      '200',
      ...retry,
      `${plainOrigin}/ntlm-silent/1`,
    ]);
    expect(origin.code).toBe(28);
    expect(origin.stderr).toContain('Warning: Problem : timeout. Retrying in 0.050 seconds. 1 retry left.');
    expect(ntlmSeen.filter((r) => r.startsWith('/ntlm-silent/1 '))).toEqual(['/ntlm-silent/1 1', '/ntlm-silent/1 1']);
  });

  it('R3: --ntlm to an HTTP/2 server that allows no stream (SETTINGS_MAX_CONCURRENT_STREAMS 0): exit 28, and the message says the server gave the leg no stream and names --http1.1, not to raise --timeout', async () => {
    const noStreams = createHttp2Server({ cert: SERVER_CERT, key: SERVER_KEY, settings: { maxConcurrentStreams: 0 } });
    const port = await listen(noStreams);
    try {
      const r = await run([...alice(), '--ntlm', '--timeout', '1000', `https://localhost:${port}/x`]);
      expect(r.code).toBe(28);
      expect(r.stderr).toBe(
        'multileg: NTLM handshake did not finish within --timeout (1000 ms): the server never gave its leg a stream — it allows no HTTP/2 streams (SETTINGS_MAX_CONCURRENT_STREAMS 0); check the server, or use HTTP/1.1 (--http1.1) (MULTILEG_HANDSHAKE_TIMEOUT)\n',
      );
    } finally {
      noStreams.close();
    }
  });

  it('R4: --retry still does not retry an attempt whose NTLM AUTHENTICATE went unanswered (it holds the proof of the password)', async () => {
    const r = await run([
      '-u',
      'bob:secret',
      '--ntlm',
      '--timeout',
      '300',
      '--retry',
      '1',
      '--retry-all-errors',
      '--retry-delay',
      '0.05',
      `${plainOrigin}/ntlm-silent/3`,
    ]);
    expect(r.code).toBe(28);
    expect(r.stderr).not.toContain('Warning');
    // The NEGOTIATE (answered) and the AUTHENTICATE, once.
    expect(ntlmSeen.filter((s) => s.startsWith('/ntlm-silent/3 '))).toEqual(['/ntlm-silent/3 1', '/ntlm-silent/3 3']);
  });

  it('R4: --retry still retries a timeout after a proxy accepted its credentials (the CONNECT answered 200): they were not refused', async () => {
    let proxy: ReferenceProxy | undefined;
    const accepted: Array<{ destroy(): void }> = [];
    const silent = createTcpServer((socket) => accepted.push(socket));
    const port = await listen(silent);
    try {
      proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
      const r = await run([
        '--proxy-cacert',
        ca,
        '-x',
        proxy.origin,
        '-U',
        'proxyuser:proxypw',
        '-m',
        '0.5',
        '--retry',
        '1',
        '--retry-delay',
        '0.05',
        `https://localhost:${port}/never`,
      ]);
      expect(r.code).toBe(28);
      expect(r.stderr).toContain('Warning: Problem : timeout. Retrying in 0.050 seconds. 1 retry left.');
      // The premise: the proxy answered the CONNECT with its credentials 200 (the second attempt
      // waits on the same tunnel's TLS handshake, which the silent server never answers).
      expect(proxy.exchanges.map((e) => [e.proxyAuthorization, e.status])).toEqual([
        [false, 407],
        [true, 200],
      ]);
    } finally {
      for (const socket of accepted) socket.destroy();
      silent.close();
      await proxy?.close();
    }
  });

  it('-f -i -o FILE: a final status >= 400 leaves its head in the file, as curl 7.88 writes it there (no body), and exits 22', async () => {
    const here = mkdtempSync(join(tmpdir(), 'multileg-fi-'));
    const file = join(here, 'out.txt');
    const r = await run(['-s', '-f', '-i', '-o', file, `${plainOrigin}/missing`]);
    expect(r.code).toBe(22);
    expect(r.stdout).toBe('');
    // Before: no file at all (the head kept for it was dropped with the body).
    expect(statusLines(readFileSync(file, 'utf8'))).toEqual(['HTTP/1.1 404 Not Found']);
    expect(readFileSync(file, 'utf8').endsWith('\r\n\r\n')).toBe(true);
  });

  it("--create-dirs: -o, -D and -f -i -o make their file's missing directories (mode 0750, curl's); without it a missing directory is 23 naming --create-dirs; a path through a file is 23 either way", async () => {
    const here = mkdtempSync(join(tmpdir(), 'multileg-dirs-'));
    const body = join(here, 'a', 'b', 'body.json');
    const dump = join(here, 'd', 'e', 'heads.txt');
    const r = await run(['--create-dirs', ...alice(), '-o', body, '-D', dump, `${server.origin}/auth/dirs`]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(readFileSync(body, 'utf8'))).toMatchObject({ user: 'EXAMPLE\\alice' });
    expect(statusLines(readFileSync(dump, 'utf8')).at(-1)).toBe('HTTP/2 200');
    // As curl makes them: no write for the group, nothing for others (the default would be 0755).
    for (const d of [join(here, 'a'), join(here, 'a', 'b'), join(here, 'd', 'e')])
      expect(statSync(d).mode & 0o777 & ~0o750).toBe(0);
    // -f -i -o: the final head goes into a file in a new directory too.
    const head = join(here, 'f', 'head.txt');
    const f = await run(['--create-dirs', '-s', '-f', '-i', '-o', head, `${plainOrigin}/missing`]);
    expect(f.code).toBe(22);
    expect(statusLines(readFileSync(head, 'utf8'))).toEqual(['HTTP/1.1 404 Not Found']);
    // Without --create-dirs: curl's 23, and the line says what makes them.
    const noBody = join(here, 'x', 'body.json');
    const o = await run([...alice(), '-o', noBody, `${server.origin}/auth/dirs`]);
    expect([o.code, o.stderr]).toEqual([
      23,
      `multileg: -o ${noBody}: no such directory (ENOENT); --create-dirs makes the missing directories\n`,
    ]);
    const noDump = join(here, 'y', 'heads.txt');
    const before = server.exchanges.length;
    const d = await run([...alice(), '-D', noDump, `${server.origin}/auth/dirs`]);
    expect([d.code, d.stderr]).toEqual([
      23,
      `multileg: -D ${noDump}: no such directory (ENOENT); --create-dirs makes the missing directories\n`,
    ]);
    // -D fails before anything is sent (-o once the body comes).
    expect(server.exchanges.length).toBe(before);
    const noHead = join(here, 'z', 'head.txt');
    const fi = await run(['-f', '-i', '-o', noHead, `${plainOrigin}/missing`]);
    expect([fi.code, fi.stderr]).toEqual([
      23,
      `multileg: -o ${noHead}: no such directory (ENOENT); --create-dirs makes the missing directories\n`,
    ]);
    expect(existsSync(join(here, 'x')) || existsSync(join(here, 'y')) || existsSync(join(here, 'z'))).toBe(false);
    // A part of the path that is a file: no directory can be made there, with or without the flag.
    const through = join(here, 'a', 'b', 'body.json', 'inner.json');
    for (const flags of [['--create-dirs'], []]) {
      const t = await run([...flags, ...alice(), '-o', through, `${server.origin}/auth/dirs`]);
      expect([t.code, t.stderr]).toEqual([
        23,
        `multileg: -o ${through}: a part of the path is not a directory (ENOTDIR)\n`,
      ]);
    }
  });

  it("-O and --remote-name-all: the body goes to a file named as the URL's last path segment in the current folder, paired with the URLs in order as -o is; a URL ending in / is curl's 23 before anything is sent", async () => {
    const here = mkdtempSync(join(tmpdir(), 'multileg-O-'));
    const r = await run(
      [
        ...alice(),
        '-O',
        `${server.origin}/auth/first.json`,
        '-o',
        'named.json',
        `${server.origin}/auth/two`,
        '-O',
        `${server.origin}/auth/three?x=1`,
      ],
      { cwd: here },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('');
    expect(readdirSync(here).sort()).toEqual(['first.json', 'named.json', 'three']);
    expect(JSON.parse(readFileSync(join(here, 'first.json'), 'utf8'))).toMatchObject({ path: '/auth/first.json' });
    expect(JSON.parse(readFileSync(join(here, 'three'), 'utf8'))).toMatchObject({ path: '/auth/three?x=1' });
    const all = await run(
      [...alice(), '--remote-name-all', `${server.origin}/auth/a`, '-o', '-', `${server.origin}/auth/b`],
      {
        cwd: here,
      },
    );
    expect(all.code, all.stderr).toBe(0);
    // -o - pairs with the first URL (stdout); --remote-name-all names the second.
    expect(JSON.parse(all.stdout)).toMatchObject({ path: '/auth/a' });
    expect(readdirSync(here)).toContain('b');
    const before = server.exchanges.length;
    const slash = await run([...alice(), '-O', `${server.origin}/auth/`], { cwd: here });
    expect(slash.code).toBe(23);
    expect(slash.stderr).toBe(
      `multileg: -O ${server.origin}/auth/: the URL has no file name (it ends in /): use -o FILE\n`,
    );
    expect(server.exchanges.length).toBe(before);
  });

  it("--retry and its companions as curl reads them: a whole number, seconds with decimals (0: curl's default); anything else is bad usage", async () => {
    for (const args of [
      ['--retry', '-1'],
      ['--retry', 'x'],
      ['--retry', '1.5'],
      ['--retry-delay', 'soon'],
      ['--retry-max-time', '-2'],
    ]) {
      const r = await run([...args, `${plainOrigin}/nothing`]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/^multileg: option '--retry[a-z-]* <[a-z]+>' argument '.*' is invalid\. expected /);
    }
  });

  it("curl's Accept: */* goes with every request, redirects' too; -H 'Accept: …' replaces it, -H 'Accept:' drops it", async () => {
    const sent = async (...args: string[]) => {
      const r = await run(['-s', ...args, `${plainOrigin}/headers`]);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as Record<string, string>;
    };
    expect((await sent()).accept).toBe('*/*');
    expect((await sent('-d', 'x=1')).accept).toBe('*/*');
    expect((await sent('-H', 'Accept: text/html')).accept).toBe('text/html');
    expect(await sent('-H', 'Accept:')).not.toHaveProperty('accept');
    const followed = await run(['-s', '-L', `${server.origin}/public/redirect?to=${plainOrigin}/headers`, ...alice()]);
    expect(JSON.parse(followed.stdout)).toMatchObject({ accept: '*/*' });
  });

  it("a URL that is not one is curl's 3 (URL malformed), a scheme other than http(s) curl's 1 (unsupported protocol), nothing sent; options stay 2", async () => {
    const bad = await run(['-sS', 'http://[::1']);
    expect(bad).toMatchObject({ code: 3, stdout: '', stderr: 'multileg: not a URL: http://[::1\n' });
    const gopher = await run(['-sS', 'gopher://localhost/']);
    expect(gopher.code).toBe(1);
    expect(gopher.stderr).toBe(
      'multileg: unsupported protocol "gopher" in gopher://localhost/: use https:// or http://\n',
    );
    // Checked before anything is sent: the good URL before the bad one is not requested.
    const before = received.length;
    const mixed = await run([`${plainOrigin}/headers`, 'http://[::1']);
    expect(mixed.code).toBe(3);
    expect(received.length).toBe(before);
    expect((await run(['--no-such-option', `${plainOrigin}/headers`])).code).toBe(2);
  });

  it('CLI usage: a mistyped scheme (htps://) is named as curl names it (Protocol "htps" not supported), in quotes and without the URL\'s colon (it read "htps: in htps://host/", a stray colon), exit 1, with the fix; userinfo stays hidden', async () => {
    const typo = await run(['-sS', 'htps://localhost/x']);
    expect(typo).toMatchObject({
      code: 1,
      stdout: '',
      stderr: 'multileg: unsupported protocol "htps" in htps://localhost/x: use https:// or http://\n',
    });
    const withUser = await run(['-sS', 'htps://alice:s3cretpw@localhost/']);
    expect(withUser.stderr).toBe(
      'multileg: unsupported protocol "htps" in htps://…@localhost/: use https:// or http://\n',
    );
  });

  it('H5: a proxy URL that cannot be used exits as curl 7.88 does, nothing sent, the message naming -x or the variable: not a URL is 5 (curl\'s "Unsupported proxy syntax"), a scheme other than http(s) 7 ("Unsupported proxy scheme"; SOCKS too, which multileg does not speak) — both were bad usage, 2', async () => {
    const url = `${plainOrigin}/headers`;
    const before = received.length;
    // As curl 7.88.1 exits for each: `curl -x P URL`, and with the variable instead.
    const cases: Array<[proxy: string, code: number]> = [
      ['http://[bad', 5],
      [':::', 5],
      ['[bad', 5],
      ['http://host:99999', 5],
      ['http://', 5],
      ['ftp://127.0.0.1:1', 7],
      ['foo://127.0.0.1:1', 7],
      [`socks5://127.0.0.1:${REFUSED_PORT}`, 7],
      [`socks5h://127.0.0.1:${REFUSED_PORT}`, 7],
    ];
    for (const [proxy, code] of cases) {
      const given = await run(['-sS', '-x', proxy, url]);
      expect([given.code, given.stdout], `-x ${proxy}`).toEqual([code, '']);
      expect(given.stderr, `-x ${proxy}`).toMatch(
        code === 5
          ? /^multileg: -x \S*: not a proxy URL \(e\.g\. http:\/\/proxy:3128\)\n$/
          : /^multileg: proxy: unsupported proxy protocol [a-z0-9]+: in -x; use http:\/\/ or https:\/\/ \(MULTILEG_CONFIG\)\n$/,
      );
      for (const name of ['http_proxy', 'ALL_PROXY']) {
        const env = await run(['-sS', url], { env: { [name]: proxy } });
        expect([env.code, env.stdout, env.stderr], `${name}=${proxy}`).toEqual([
          code,
          '',
          code === 5
            ? `multileg: proxy: the proxy address in ${name} is not a URL; use http://host:port, or unset ${name} (MULTILEG_CONFIG)\n`
            : `multileg: proxy: unsupported proxy protocol ${proxy.split('//')[0]} in ${name}; use http:// or https://, or unset ${name} (MULTILEG_CONFIG)\n`,
        ]);
      }
    }
    // HTTPS_PROXY for an https:// URL, with -v too (its trace reads the proxies first; the transfer
    // fails, so -v's summary line follows).
    for (const args of [['-sS'], ['-sS', '-v']]) {
      const bad = await run([...args, 'https://localhost:1/'], { env: { HTTPS_PROXY: 'http://[bad' } });
      const said = bad.stderr.split('\n').filter((l) => l.startsWith('multileg: '));
      expect([bad.code, ...said], args.join(' ')).toEqual([
        5,
        'multileg: proxy: the proxy address in HTTPS_PROXY is not a URL; use http://host:port, or unset HTTPS_PROXY (MULTILEG_CONFIG)',
      ]);
    }
    // A name that does not resolve stays 5 (curl's "Could not resolve proxy"), for -x and HTTPS_PROXY.
    for (const env of [{}, { HTTPS_PROXY: 'no-such-proxy.invalid' }]) {
      const args = 'HTTPS_PROXY' in env ? [] : ['-x', 'no-such-proxy.invalid'];
      const r = await run(['-sS', ...args, 'https://localhost:1/'], { env });
      expect(r.code, JSON.stringify(env)).toBe(5);
      expect(r.stderr).toContain('cannot resolve the host name of proxy http://no-such-proxy.invalid');
    }
    expect(received.length).toBe(before);
    // Options stay bad usage with a bad proxy beside them (commander's check comes first).
    expect((await run(['--no-such-option', '-x', 'http://[bad', url])).code).toBe(2);
    // --help says so.
    const help = (await run(['--help'])).stdout.replace(/\s+/g, ' ');
    expect(help).toContain('one that is not a URL exits 5, another scheme than http(s) (socks5://) 7, as curl');
  });

  it('H5: a proxy variable the transfer does not use is not read, as curl 7.88: a bad https_proxy for an http:// URL, or a bad http_proxy for a host NO_PROXY exempts, takes the URL directly (exit 0; it failed the command with 5 or 7); the transfer that uses it fails alone, the URLs before it done', async () => {
    const url = `${plainOrigin}/headers`;
    const host = new URL(plainOrigin).hostname;
    const cases: Array<Record<string, string>> = [
      { https_proxy: 'http://[bad' },
      { HTTPS_PROXY: 'socks5://127.0.0.1:1' },
      { http_proxy: ':::', no_proxy: host },
      { http_proxy: 'socks5://127.0.0.1:1', NO_PROXY: host },
    ];
    for (const env of cases)
      for (const args of [['-sS'], ['-sS', '-v']]) {
        const before = received.length;
        const r = await run([...args, '-o', '/dev/null', '-w', '%{http_code}', url], { env });
        expect([r.code, r.stdout], `${JSON.stringify(env)} ${args.join(' ')}`).toEqual([0, '200']);
        expect(received.length).toBe(before + 1);
      }
    // Two URLs: the http:// one goes, the https:// one through the bad variable is curl's 5, with its message.
    const before = received.length;
    const two = await run(
      ['-sS', '-w', '%{http_code} ', '-o', '/dev/null', url, '-o', '/dev/null', 'https://localhost:1/'],
      {
        env: { https_proxy: 'http://[bad' },
      },
    );
    expect([two.code, two.stdout, two.stderr]).toEqual([
      5,
      '200 000 ',
      'multileg: proxy: the proxy address in https_proxy is not a URL; use http://host:port, or unset https_proxy (MULTILEG_CONFIG)\n',
    ]);
    expect(received.length).toBe(before + 1);
  });

  it("curl's --http2 (HTTP/2 is already the default; the last of --http1.1 and --http2 wins), --no-progress-meter (no meter here) and --url URL (a URL in its place among the others, -o pairing with it) are taken as curl 7.88 takes them; they were bad usage (exit 2)", async () => {
    const both = async (args: readonly string[]) => ({
      ours: await run(args),
      curl: await runCommand('/usr/bin/curl', args),
    });
    const version = (...flags: string[]) =>
      both(['-s', ...flags, '--cacert', ca, '-o', '/dev/null', '-w', '%{http_version}', `${server.origin}/public/x`]);
    for (const [flags, expected] of [
      [['--http2'], '2'],
      [['--http1.1', '--http2'], '2'],
      [['--http2', '--http1.1'], '1.1'],
      [['--no-progress-meter'], '2'],
    ] as const) {
      const { ours, curl } = await version(...flags);
      expect([ours.code, ours.stdout], `${flags.join(' ')}: ${ours.stderr}`).toEqual([0, expected]);
      expect(curl.stdout, flags.join(' ')).toBe(expected);
    }
    const out = join(dir, 'url-flag.out');
    const urls = await both([
      '-s',
      '-w',
      '%{urlnum} %{url}\n',
      `${plainOrigin}/headers?1`,
      '--url',
      `${plainOrigin}/headers?2`,
      '-o',
      '/dev/null',
      '-o',
      out,
      '--url',
      `${plainOrigin}/headers?3`,
      `${plainOrigin}/headers?4`,
    ]);
    expect(urls.ours.code, urls.ours.stderr).toBe(0);
    // Each -w line follows its body (JSON, no line break of its own).
    const written = (stdout: string) => stdout.match(/\d http:\/\/\S+(?=\n)/g);
    expect(written(urls.ours.stdout)).toEqual([
      `0 ${plainOrigin}/headers?1`,
      `1 ${plainOrigin}/headers?2`,
      `2 ${plainOrigin}/headers?3`,
      `3 ${plainOrigin}/headers?4`,
    ]);
    expect(written(urls.ours.stdout)).toEqual(written(urls.curl.stdout));
    // The second -o is the second URL's: the one --url gave.
    expect(readFileSync(out, 'utf8')).toMatch(/^\{/);
    // --url alone is a URL (--url=URL too, as commander reads every option; curl knows no `=`);
    // without its value, bad usage (curl's 2).
    for (const args of [['--url', `${plainOrigin}/headers`], [`--url=${plainOrigin}/headers`]])
      expect((await run(['-s', '-o', '/dev/null', ...args])).code).toBe(0);
    expect((await run(['--url'])).code).toBe(2);
    // S2: its password is hidden from ps as a URL's is.
    expect(shownArgv(['--url', 'https://bob:SECRET7@h/'])).toEqual(['--url', 'https://bob:***@h/']);
  });

  it("-w: curl's %{method}, %{scheme}, %{url}, %{urlnum}, %{filename_effective}, %{num_headers}, %header{name} and %{onerror}", async () => {
    const out = join(dir, 'w-vars.out');
    const format =
      '%{method} %{scheme} %{url} %{urlnum} %{filename_effective} %{num_headers} [%header{X-Twice}] [%header{none}]%{onerror} failed %{exitcode}\\n';
    const r = await run(['-s', '-w', format, '-o', out, `${plainOrigin}/headers`, 'http://127.0.0.1:1/']);
    expect(r.code).toBe(7);
    expect(r.stderr).toBe('');
    // A successful transfer stops at %{onerror}; the failed one writes the rest.
    expect(r.stdout).toBe(
      `GET http ${plainOrigin}/headers 0 ${out} 7 [a, b] []` + 'GET http http://127.0.0.1:1/ 1  0 [] [] failed 7\n',
    );
    // After -L: the method of the last request (a 303 turns a POST into a GET), the URL as given.
    const redirect = `${server.origin}/public/redirect?to=/public/x&status=303`;
    const hop = await run([
      '-s',
      '-L',
      '-d',
      'a=1',
      '-o',
      '/dev/null',
      '-w',
      '%{method} %{scheme} %{url}',
      '--cacert',
      ca,
      redirect,
    ]);
    expect(hop.stdout).toBe(`GET https ${redirect}`);
  });

  /** -w's curl timings, in curl's order: name lookup, connect, TLS, request sent, first byte, end. */
  const TIMES =
    '%{time_namelookup} %{time_connect} %{time_appconnect} %{time_pretransfer} %{time_starttransfer} %{time_total} %{time_redirect}\n';
  const times = (line: string) => {
    expect(line).toMatch(/^(\d+\.\d{6} ){6}\d+\.\d{6}$/);
    const [namelookup, connect, appconnect, pretransfer, starttransfer, total, redirect] = line.split(' ').map(Number);
    return { namelookup, connect, appconnect, pretransfer, starttransfer, total, redirect } as Record<string, number>;
  };

  it("-w: curl's timings %{time_namelookup} … %{time_starttransfer}, %{time_redirect}: seconds from the transfer's start, each phase after the one before; 0 for the phases of a connection used again and for plain http's TLS", async () => {
    const r = await run([
      '-s',
      '-o',
      '/dev/null',
      '-o',
      '/dev/null',
      '-w',
      TIMES,
      '--cacert',
      ca,
      `${server.origin}/public/x`,
      `${server.origin}/public/x`,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const [fresh, reused] = r.stdout.trimEnd().split('\n').map(times);
    // A new TLS connection: every phase happened, in curl's order.
    expect(fresh!.namelookup).toBeGreaterThanOrEqual(0);
    expect(fresh!.connect).toBeGreaterThan(0);
    expect(fresh!.connect).toBeGreaterThanOrEqual(fresh!.namelookup!);
    expect(fresh!.appconnect).toBeGreaterThanOrEqual(fresh!.connect!);
    expect(fresh!.pretransfer).toBeGreaterThanOrEqual(fresh!.appconnect!);
    expect(fresh!.starttransfer).toBeGreaterThanOrEqual(fresh!.pretransfer!);
    expect(fresh!.total).toBeGreaterThanOrEqual(fresh!.starttransfer!);
    expect(fresh!.redirect).toBe(0);
    // The second URL goes over the same connection: no lookup, connect or TLS (curl's 0).
    expect([reused!.namelookup, reused!.connect, reused!.appconnect]).toEqual([0, 0, 0]);
    expect(reused!.pretransfer).toBeGreaterThan(0);
    expect(reused!.starttransfer).toBeGreaterThanOrEqual(reused!.pretransfer!);
    expect(reused!.total).toBeGreaterThanOrEqual(reused!.starttransfer!);
    // Plain http: no TLS; a refused connection: looked up, never connected.
    const plainRun = await run(['-s', '-o', '/dev/null', '-w', TIMES, `${plainOrigin}/headers`]);
    const plainTimes = times(plainRun.stdout.trimEnd());
    expect(plainTimes.connect).toBeGreaterThan(0);
    expect(plainTimes.appconnect).toBe(0);
    expect(plainTimes.pretransfer).toBeGreaterThanOrEqual(plainTimes.connect!);
    const refused = times((await run(['-s', '-w', TIMES, `http://127.0.0.1:${REFUSED_PORT}/`])).stdout.trimEnd());
    expect([refused.connect, refused.appconnect, refused.pretransfer, refused.starttransfer]).toEqual([0, 0, 0, 0]);
    // -L: the redirect's time ends where the last request starts, before its first byte.
    const hop = await run([
      '-s',
      '-L',
      '-o',
      '/dev/null',
      '-w',
      TIMES,
      '--cacert',
      ca,
      `${server.origin}/public/redirect?to=/public/x&status=302`,
    ]);
    const hopTimes = times(hop.stdout.trimEnd());
    expect(hopTimes.redirect).toBeGreaterThan(0);
    expect(hopTimes.starttransfer).toBeGreaterThanOrEqual(hopTimes.redirect!);
    expect(hopTimes.total).toBeGreaterThanOrEqual(hopTimes.starttransfer!);
    // A handshake's legs: the first byte is the answer's, after the 401s (curl's), with a connect before it.
    const authed = await run(['-s', '-o', '/dev/null', '-w', TIMES, ...alice(), `${server.origin}/auth/timed`]);
    expect(authed.code, authed.stderr).toBe(0);
    const authTimes = times(authed.stdout.trimEnd());
    expect(authTimes.connect).toBeGreaterThan(0);
    expect(authTimes.starttransfer).toBeGreaterThanOrEqual(authTimes.pretransfer!);
    expect(authTimes.pretransfer).toBeGreaterThan(authTimes.appconnect!);
  });

  it("-w after --retry: the sizes, connections and times are the last attempt's, as curl 7.88 prints them for the same requests", async () => {
    // One 503 then the 200, on a connection kept alive: curl counts only the attempt that got the 200.
    const format = '%{size_header} %{num_connects} %{size_download} %{http_code}';
    // A file, not /dev/null: curl 7.88 truncates -o before a retry, and fails (23) on /dev/null.
    const args = (key: string) => [
      '-s',
      '-o',
      join(dir, `${key}.out`),
      '--retry',
      '1',
      '--retry-delay',
      '0',
      '-A',
      'x',
      '-w',
      format,
      `${plainOrigin}/flaky/${key}?n=1`,
    ];
    const ours = await run(args('w-ours'));
    const curl = await runCommand('/usr/bin/curl', args('w-curl'));
    expect(ours.code, ours.stderr).toBe(0);
    expect(ours.stdout).toBe(curl.stdout);
    expect(ours.stdout).toMatch(/^\d+ 0 \d+ 200$/);
    // The last attempt's request head alone: the same bytes as one attempt's at a path as long.
    const request = (r: { stdout: string }) => Number(r.stdout);
    const retried = await run([
      '-s',
      '-o',
      '/dev/null',
      '--retry',
      '1',
      '--retry-delay',
      '0',
      '-w',
      '%{size_request}',
      `${plainOrigin}/flaky/w-sr1?n=1`,
    ]);
    const once = await run(['-s', '-o', '/dev/null', '-w', '%{size_request}', `${plainOrigin}/flaky/w-sr2?n=0`]);
    expect(request(retried)).toBe(request(once));
  });

  it("-w: curl's %{size_header}, %{size_request}, %{size_upload}, %{speed_download}, %{speed_upload}, %{header_json}, %{local_ip}, %{local_port}, %{ssl_verify_result} and %{http_connect}, as curl 7.88 prints them for the same requests", async () => {
    const format = '%{size_header} %{size_upload} %{ssl_verify_result} %{http_connect} %{local_ip}\n%{header_json}\n';
    const withoutDate = (text: string) => text.replace(/"date":\["[^"]*"\]/, '"date":[DATE]');
    for (const args of [
      [`${server.origin}/public/x`],
      ['-L', '-d', 'a=1', `${server.origin}/public/redirect?to=/public/x&status=307`],
      ['--http1.1', `${server.origin}/public/x`],
    ]) {
      const ours = await run(['-s', '-o', '/dev/null', '-w', format, '--cacert', ca, ...args]);
      const curl = await runCommand('/usr/bin/curl', ['-s', '-o', '/dev/null', '-w', format, '--cacert', ca, ...args]);
      expect(ours.code, ours.stderr).toBe(0);
      expect(withoutDate(ours.stdout), args.join(' ')).toBe(withoutDate(curl.stdout));
    }
    const r = await run([
      '-s',
      '-o',
      '/dev/null',
      '-d',
      'a=1',
      '-w',
      '%{size_request} %{speed_download} %{speed_upload} %{local_port} %{size_download}',
      `${plainOrigin}/flaky/sizes?n=0`,
    ]);
    const [request, download, upload, localPort] = r.stdout.split(' ').map(Number);
    // A POST's head over HTTP/1.1: its request line and headers, at least.
    expect(request).toBeGreaterThan('POST /flaky/sizes?n=0 HTTP/1.1\r\n\r\n'.length);
    // The body is `POST a=1`.
    expect(r.stdout).toMatch(/^\d+ \d+ \d+ \d+ 8$/);
    expect(download).toBeGreaterThan(0);
    expect(upload).toBeGreaterThan(0);
    expect(localPort).toBeGreaterThan(0);
    // Through a proxy: its answer to the CONNECT.
    let proxy: ReferenceProxy | undefined;
    try {
      proxy = await startReferenceProxy({});
      const via = await run([
        '-s',
        '-o',
        '/dev/null',
        '-w',
        '%{http_connect}',
        '--cacert',
        ca,
        '--proxy-cacert',
        ca,
        '-x',
        proxy.origin,
        `${server.origin}/public/x`,
      ]);
      expect(via.stdout, via.stderr).toBe('200');
    } finally {
      await proxy?.close();
    }
  });

  it("-i and -D over HTTP/2: curl's status line, a space after the status (HTTP/2 has no reason phrase)", async () => {
    const r = await run(['-s', '-i', '-D', join(dir, 'h2.heads'), '--cacert', ca, `${server.origin}/public/x`]);
    expect(r.code).toBe(0);
    expect(r.stdout.startsWith('HTTP/2 200 \r\n')).toBe(true);
    expect(readFileSync(join(dir, 'h2.heads'), 'utf8').startsWith('HTTP/2 200 \r\n')).toBe(true);
  });
});
