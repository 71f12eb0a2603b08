/**
 * curl's --resolve and --connect-to, side by side with curl 7.88 against the same servers: a site
 * reached under a name DNS does not know (`app.test`), one node of a farm, a plain proxy. Only the
 * address connected to changes; the URL's host stays what TLS checks, the Host header, credentials
 * (the trust policy) and channel bindings use. The Kerberos SPN at the real KDC: test/cli-lab.test.ts.
 */
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, request as httpRequest, type Server } from 'node:http';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { type CliResult, runCli, runCommand } from './cli-helpers.ts';
import { requirePeer } from './lab/index.ts';

const listen = async (server: Server) => {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as { port: number }).port;
};

/** curl's environment: no proxy of the developer's. */
const curlEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !/^(https?|no)_proxy$/i.test(k) && k !== 'ALL_PROXY'),
);

describe.skipIf(!requirePeer('curl'))('--resolve and --connect-to, as curl 7.88', () => {
  let server: ReferenceServer;
  let ca: string;
  /** The reference server's port (TLS, a certificate for localhost and 127.0.0.1). */
  let sp: number;
  let plain: Server;
  /** The plain server's port; it answers `Host <host> user <Authorization's user>`. */
  let p: number;
  /** What the plain server received: `host path`. */
  const seen: string[] = [];
  let proxy: Server;
  /** The plain proxy's port: it forwards and tunnels, every name it is asked for being 127.0.0.1 (its DNS). */
  let pp: number;
  /** What the proxy was asked: `GET http://…` or `CONNECT host:port`. */
  const asked: string[] = [];

  /** multileg and curl with the same arguments (`-sS -w '%{http_code} %{remote_ip} %{remote_port}'`). */
  const both = async (args: readonly string[]): Promise<{ ours: CliResult; curl: CliResult }> => {
    const common = ['-sS', '-w', '%{http_code} %{remote_ip} %{remote_port}', ...args];
    const ours = await runCli(common);
    const curl = await runCommand('/usr/bin/curl', common, '', curlEnv);
    return { ours, curl };
  };
  /** What -w prints, without the body before it. */
  const written = (r: CliResult) => r.stdout.split('\n').pop();
  /**
   * -w's line as the two should agree on it: all of it for a response; the status alone otherwise
   * (multileg leaves remote_ip and remote_port empty where no connection stood, curl writes its 0 or
   * the address whose TLS failed).
   */
  const agreed = (r: CliResult) => (r.code === 0 ? written(r) : written(r)?.split(' ')[0]);

  beforeAll(async () => {
    server = await startReferenceServer({ mode: 'session', requireChannelBinding: true });
    sp = Number(new URL(server.origin).port);
    const dir = mkdtempSync(join(tmpdir(), 'multileg-resolve-'));
    ca = join(dir, 'ca.pem');
    writeFileSync(ca, server.ca);
    plain = createHttpServer((req, res) => {
      seen.push(`${req.headers.host} ${req.url}`);
      const auth = req.headers.authorization;
      if (req.url === '/basic' && !auth) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' }).end();
        return;
      }
      const user = auth ? Buffer.from(auth.slice(6), 'base64').toString().split(':')[0] : '-';
      res.writeHead(200).end(`Host ${req.headers.host} user ${user}\n`);
    });
    p = await listen(plain);
    proxy = createHttpServer((req, res) => {
      asked.push(`${req.method} ${req.url}`);
      const target = new URL(req.url ?? '');
      const upstream = httpRequest(
        { host: '127.0.0.1', port: target.port, path: target.pathname, method: req.method, headers: req.headers },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      upstream.on('error', () => res.writeHead(502).end());
      req.pipe(upstream);
    });
    proxy.on('connect', (req, client) => {
      asked.push(`CONNECT ${req.url}`);
      const port = Number(String(req.url).split(':').pop());
      const upstream = netConnect(port, '127.0.0.1', () => {
        client.write('HTTP/1.1 200 Connection established\r\n\r\n');
        upstream.pipe(client);
        client.pipe(upstream);
      });
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
    });
    pp = await listen(proxy);
  });
  afterAll(async () => {
    plain.closeAllConnections();
    plain.close();
    proxy.closeAllConnections();
    proxy.close();
    await server.close();
  });

  it("S1: --resolve reaches the server under a name DNS does not know: the Host header is the URL's, credentials go to the URL's origin, -w and -v name the address reached (curl's \"Connected to app.test (127.0.0.1) port N\")", async () => {
    const url = `http://app.test:${p}/basic`;
    const { ours, curl } = await both(['-u', 'alice:alicepw', '--resolve', `app.test:${p}:127.0.0.1`, url]);
    expect(ours.code, ours.stderr).toBe(0);
    expect(ours.stdout).toBe(`Host app.test:${p} user alice\n200 127.0.0.1 ${p}`);
    expect(ours.stdout).toBe(curl.stdout);
    const verbose = await runCli(['-v', '-s', '-o', '/dev/null', '--resolve', `app.test:${p}:127.0.0.1`, url]);
    expect(verbose.stderr).toContain(`* Added app.test:${p}:127.0.0.1 to DNS cache\n`);
    expect(verbose.stderr).toContain(`* Connected to app.test (127.0.0.1) port ${p}\n`);
    const curlVerbose = await runCommand(
      '/usr/bin/curl',
      ['-v', '-s', '-o', '/dev/null', '--resolve', `app.test:${p}:127.0.0.1`, url],
      '',
      curlEnv,
    );
    expect(curlVerbose.stderr).toContain(`* Added app.test:${p}:127.0.0.1 to DNS cache\n`);
    expect(curlVerbose.stderr).toContain(`* Connected to app.test (127.0.0.1) port ${p} (#0)\n`);
  });

  it('--resolve as curl 7.88 reads it: several entries, `*`, `+`, IPv6 in brackets, addresses tried in order, -HOST:PORT removing one, a later entry replacing one; an entry it cannot parse is its 49 and nothing is sent', async () => {
    const url = `http://app.test:${p}/`;
    const cases: Array<[entries: string[], exit: number]> = [
      [[`*:${p}:127.0.0.1`], 0],
      [[`+app.test:${p}:127.0.0.1`], 0],
      [[`APP.TEST:${p}:127.0.0.1`], 0],
      // ::1 refuses (the server listens on 127.0.0.1): the next address is tried.
      [[`app.test:${p}:[::1],127.0.0.1`], 0],
      [[`app.test:${p}:,127.0.0.1`], 0],
      [[`other.test:${p}:127.0.0.2`, `app.test:${p}:127.0.0.1`], 0],
      [[`app.test:${p}:127.0.0.1`, `-app.test:${p}`], 6],
      [[`app.test:${p}:127.0.0.1`, `app.test:${p}:127.0.0.2`], 7],
      [[`app.test:1:127.0.0.1`], 6],
    ];
    for (const [entries, exit] of cases) {
      const { ours, curl } = await both([...entries.flatMap((e) => ['--resolve', e]), url]);
      expect([ours.code, curl.code], entries.join(' ')).toEqual([exit, exit]);
      expect(agreed(ours), entries.join(' ')).toBe(agreed(curl));
    }
    const before = seen.length;
    for (const bad of [
      `app.test:${p}`,
      'app.test::127.0.0.1',
      'app.test:x:127.0.0.1',
      `app.test:${p}:app.internal`,
      `app.test:${p}:`,
      'app.test:99999:127.0.0.1',
      `app.test:${p}:[127.0.0.1`,
      `app.test:${p}:127.0.0.1:80`,
    ]) {
      const { ours, curl } = await both(['--resolve', bad, url]);
      expect([ours.code, curl.code], bad).toEqual([49, 49]);
      expect(curl.stderr).toContain(`Couldn't parse CURLOPT_RESOLVE entry '${bad}'`);
      expect(ours.stderr).toContain(`multileg: Couldn't parse --resolve entry '${bad}': give [+]HOST:PORT:ADDRESS`);
    }
    expect(seen.length).toBe(before);
  });

  it('--connect-to as curl 7.88 reads it: empty parts (any host or port; the same one), the first entry that matches and names a HOST2 or PORT2 wins, --resolve applies to HOST2; a PORT2 that is no port is its 49', async () => {
    const url = `http://app.test:${p}/`;
    const cases: Array<[entries: string[], exit: number]> = [
      [[`app.test:${p}:127.0.0.1:${p}`], 0],
      [[`::127.0.0.1:${p}`], 0],
      [['app.test::127.0.0.1:'], 0],
      [[`:${p}:127.0.0.1:`], 0],
      [[`APP.TEST:${p}:127.0.0.1:`], 0],
      // Nothing after PORT1, or neither HOST2 nor PORT2: passed over.
      [[`app.test:${p}:`, `app.test:${p}:127.0.0.1:${p}`], 0],
      [[`app.test:${p}::`, `app.test:${p}:127.0.0.1:1`], 7],
      [[`app.test:${p}:127.0.0.1:1`, `app.test:${p}:127.0.0.1:${p}`], 7],
      [[`app.test:1:127.0.0.1:${p}`], 6],
      [[`other.test:${p}:127.0.0.1:${p}`], 6],
    ];
    for (const [entries, exit] of cases) {
      const { ours, curl } = await both([...entries.flatMap((e) => ['--connect-to', e]), url]);
      expect([ours.code, curl.code], entries.join(' ')).toEqual([exit, exit]);
      expect(agreed(ours), entries.join(' ')).toBe(agreed(curl));
    }
    // --resolve gives HOST2 its address, as curl's DNS cache does.
    const chained = await both([
      '--connect-to',
      `app.test:${p}:backend.test:`,
      '--resolve',
      `backend.test:${p}:127.0.0.1`,
      url,
    ]);
    expect([chained.ours.code, chained.curl.code]).toEqual([0, 0]);
    expect(chained.ours.stdout).toBe(`Host app.test:${p} user -\n200 127.0.0.1 ${p}`);
    expect(chained.ours.stdout).toBe(chained.curl.stdout);
    // A refused connection names the address it went to, as curl's "Failed to connect to 127.0.0.1 port 1".
    const refused = await runCli(['-sS', '--connect-to', `app.test:${p}:127.0.0.1:1`, url]);
    expect(refused.stderr).toBe(`multileg: could not connect to app.test:${p} at 127.0.0.1 port 1 (ECONNREFUSED)\n`);
    const before = seen.length;
    for (const bad of [`app.test:${p}:127.0.0.1:x`, `app.test:${p}:127.0.0.1:${p}:9`]) {
      const { ours, curl } = await both(['--connect-to', bad, url]);
      expect([ours.code, curl.code], bad).toEqual([49, 49]);
      expect(curl.stderr).toContain('No valid port number in connect to host string');
      expect(ours.stderr).toContain(`--connect-to '${bad}': No valid port number in connect to host string`);
    }
    // An entry curl cannot read as HOST2 (an IPv6 address without its `]`): multileg's 49 before
    // anything is sent (curl connects to the name `::1:PORT`, its 6).
    for (const bad of [`app.test:${p}:[::1:${p}`]) {
      const { ours, curl } = await both(['--connect-to', bad, url]);
      expect([ours.code, curl.code], bad).toEqual([49, 6]);
      expect(ours.stderr).toContain(`--connect-to '${bad}': Invalid IPv6 address format; give HOST1:PORT1:HOST2:PORT2`);
    }
    expect(seen.length).toBe(before);
  });

  it('--connect-to passes over an entry that cannot match, as curl 7.88 does without a word: no PORT1 part, or a PORT1 that is no port (99999, 0, -1, -0, a word, text after the digits, 2^32 + the port): the next entry, or none, decides (multileg exited 49)', async () => {
    const url = `http://app.test:${p}/`;
    for (const port1 of ['99999', '0', '-1', '-0', 'x', `${p}x`, `${p} `, String(2 ** 32 + p), '1e3']) {
      const odd = `app.test:${port1}:127.0.0.1:1`;
      const { ours, curl } = await both(['--connect-to', odd, '--connect-to', `app.test:${p}:127.0.0.1:`, url]);
      expect([ours.code, curl.code], odd).toEqual([0, 0]);
      expect(agreed(ours), odd).toBe(agreed(curl));
      expect(ours.stderr, odd).toBe('');
    }
    for (const odd of [`app.test:${p}`, 'app.test', `[::1:${p}:127.0.0.1:`]) {
      const { ours, curl } = await both(['--connect-to', odd, url]);
      expect([ours.code, curl.code], odd).toEqual([6, 6]);
      expect(ours.stderr, odd).toBe('multileg: could not resolve host app.test\n');
    }
  });

  it("--resolve and --connect-to read a port as curl 7.88's strtoul/strtol do: leading zeros (`0N`, not octal), a `+`, white space before it, `-0`; another negative port is its 49; a --connect-to PORT2 of 0 is curl's 7, the connection there refused (multileg exited 49 for all of these)", async () => {
    const url = `http://app.test:${p}/`;
    const cases: Array<[flag: string, entries: string[], exit: number]> = [
      ['--resolve', [`app.test:0${p}:127.0.0.1`], 0],
      ['--resolve', [`+app.test:+${p}:127.0.0.1`], 0],
      ['--resolve', [`app.test: ${p}:127.0.0.1`], 0],
      ['--resolve', [`app.test:00${p}:127.0.0.1`, `-app.test:+${p}`], 6],
      ['--resolve', [`app.test:${p}:127.0.0.1`, `-app.test:0${p}`], 6],
      ['--resolve', ['app.test:-0:127.0.0.1'], 6],
      ['--resolve', [`app.test:-${p}:127.0.0.1`], 49],
      ['--resolve', ['app.test:+:127.0.0.1'], 49],
      ['--connect-to', [`app.test:0${p}:127.0.0.1:0${p}`], 0],
      ['--connect-to', [`:+${p}:127.0.0.1:+${p}`], 0],
      ['--connect-to', [`:${p}:127.0.0.1: ${p}`], 0],
      ['--connect-to', ['::127.0.0.1:0'], 7],
      ['--connect-to', ['::127.0.0.1:-0'], 7],
      ['--connect-to', [`::127.0.0.1:-${p}`], 49],
      ['--connect-to', [`::127.0.0.1:${p}x`], 49],
    ];
    for (const [flag, entries, exit] of cases) {
      const { ours, curl } = await both([...entries.flatMap((e) => [flag, e]), url]);
      const what = `${flag} ${entries.join(' ')}`;
      expect([ours.code, curl.code], `${what}: ${ours.stderr}`).toEqual([exit, exit]);
      // (A 49 is said before the transfer: multileg writes no -w line, curl its 000.)
      if (exit !== 49) expect(agreed(ours), what).toBe(agreed(curl));
    }
    // Port 0: refused where it went, as curl's "Failed to connect to 127.0.0.1 port 0".
    const zero = await runCli(['-sS', '--connect-to', `app.test:${p}:127.0.0.1:0`, url]);
    expect(zero.stderr).toBe(`multileg: could not connect to app.test:${p} at 127.0.0.1 port 0 (ECONNREFUSED)\n`);
  });

  it("S1: TLS checks the certificate against the URL's host wherever the connection goes: app.test (the server's certificate names localhost) is 60, as curl's, -k passes; a name or address the certificate has is 200", async () => {
    const cases: Array<[args: string[], exit: number]> = [
      [['--resolve', `app.test:${sp}:127.0.0.1`, `https://app.test:${sp}/public/x`], 60],
      [['--connect-to', `app.test:${sp}:localhost:${sp}`, `https://app.test:${sp}/public/x`], 60],
      [['-k', '--resolve', `app.test:${sp}:127.0.0.1`, `https://app.test:${sp}/public/x`], 0],
      [['--resolve', `localhost:${sp}:127.0.0.1`, `https://localhost:${sp}/public/x`], 0],
      [['--connect-to', `localhost:1:127.0.0.1:${sp}`, 'https://localhost:1/public/x'], 0],
      // An address in the URL: checked against that address (the certificate has 127.0.0.1 only).
      [['--connect-to', `127.0.0.2:${sp}:127.0.0.1:${sp}`, `https://127.0.0.2:${sp}/public/x`], 60],
    ];
    for (const [args, exit] of cases) {
      const { ours, curl } = await both(['-o', '/dev/null', '--cacert', ca, ...args]);
      expect([ours.code, curl.code], args.join(' ')).toEqual([exit, exit]);
      expect(ours.stdout, args.join(' ')).toBe(exit === 0 ? `200 127.0.0.1 ${sp}` : '000  ');
      expect(agreed(ours), args.join(' ')).toBe(agreed(curl));
    }
    const named = await runCli([
      '-sS',
      '--cacert',
      ca,
      '--resolve',
      `app.test:${sp}:127.0.0.1`,
      `https://app.test:${sp}/`,
    ]);
    expect(named.stderr).toMatch(/the certificate .* not app\.test/);
  });

  it('M1/M5: NTLM channel bindings come from the certificate of the server reached: a server that requires them (MsvAvChannelBindings) takes alice through --resolve and --connect-to', async () => {
    for (const route of [
      ['--resolve', `app.test:${sp}:127.0.0.1`],
      ['--connect-to', `app.test:${sp}:localhost:${sp}`],
    ]) {
      const r = await runCli([
        '-k',
        '--ntlm',
        '-u',
        'EXAMPLE\\alice:alicepw',
        '-w',
        '\n%{http_code}',
        ...route,
        `https://app.test:${sp}/private`,
      ]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/"user":"EXAMPLE\\\\alice".*\n200$/s);
    }
    const last = server.exchanges.at(-1)!;
    expect([last.authority, last.status]).toEqual([`app.test:${sp}`, 200]);
  });

  it("H5: through a proxy, as curl: --resolve applies to the proxy's name (not to the origin the proxy looks up), --connect-to to the origin only; an http:// URL it routes elsewhere goes through a CONNECT tunnel to HOST2:PORT2", async () => {
    const check = async (args: string[], exit: number, wanted: string[]) => {
      asked.length = 0;
      const { ours, curl } = await both(args);
      expect([ours.code, curl.code], args.join(' ')).toEqual([exit, exit]);
      // (Through a proxy multileg's -w has no remote_ip yet: the status alone.)
      expect(written(ours)?.split(' ')[0], args.join(' ')).toBe(written(curl)?.split(' ')[0]);
      // The proxy was asked the same by both.
      expect(asked, args.join(' ')).toEqual([...wanted, ...wanted]);
      return { ours, curl };
    };
    const viaName = ['-x', `http://proxy.test:${pp}`];
    const viaAddress = ['-x', `http://127.0.0.1:${pp}`];
    const forwarded = await check(
      [...viaName, '--resolve', `proxy.test:${pp}:127.0.0.1`, `http://app.test:${p}/f`],
      0,
      [`GET http://app.test:${p}/f`],
    );
    expect(forwarded.ours.stdout).toMatch(new RegExp(`^Host app.test:${p} user -\n200 `));
    await check([...viaName, '--connect-to', `proxy.test:${pp}:127.0.0.1:${pp}`, `http://app.test:${p}/`], 5, []);
    // 10.255.255.1 would not answer: the proxy, not --resolve, finds app.test.
    await check([...viaAddress, '--resolve', `app.test:${p}:10.255.255.1`, `http://app.test:${p}/g`], 0, [
      `GET http://app.test:${p}/g`,
    ]);
    const tunnelled = await check(
      [...viaAddress, '--connect-to', `app.test:${p}:backend.test:`, `http://app.test:${p}/t`],
      0,
      [`CONNECT backend.test:${p}`],
    );
    expect(tunnelled.ours.stdout).toMatch(new RegExp(`^Host app.test:${p} user -\n200 `));
    const tls = ['-o', '/dev/null', '--cacert', ca, ...viaAddress];
    await check([...tls, '--connect-to', `localhost:1:localhost:${sp}`, 'https://localhost:1/public/x'], 0, [
      `CONNECT localhost:${sp}`,
    ]);
    // The certificate is checked against the URL's host inside the tunnel too: app.test, and
    // 127.0.0.2 (an address in the URL, which has no SNI: not the proxy's 127.0.0.1).
    await check([...tls, '--connect-to', `app.test:${sp}:localhost:${sp}`, `https://app.test:${sp}/public/x`], 60, [
      `CONNECT localhost:${sp}`,
    ]);
    await check([...tls, '--connect-to', `127.0.0.2:${sp}:127.0.0.1:${sp}`, `https://127.0.0.2:${sp}/public/x`], 60, [
      `CONNECT 127.0.0.1:${sp}`,
    ]);
    const verbose = await runCli([
      '-v',
      '-s',
      '-o',
      '/dev/null',
      ...viaName,
      '--resolve',
      `proxy.test:${pp}:127.0.0.1`,
      '--cacert',
      ca,
      `https://localhost:${sp}/public/x`,
    ]);
    expect(verbose.code, verbose.stderr).toBe(0);
    expect(verbose.stderr).toContain(`* Connected to proxy.test (127.0.0.1) port ${pp}, tunnel to localhost:${sp}\n`);
  });

  describe('-4 / -6', () => {
    /** A plain server on ::1 only, beside `plain` on 127.0.0.1 only. */
    let plain6: Server;
    let p6: number;
    beforeAll(async () => {
      plain6 = createHttpServer((req, res) => res.writeHead(200).end(`Host ${req.headers.host}\n`));
      plain6.listen(0, '::1');
      await once(plain6, 'listening');
      p6 = (plain6.address() as { port: number }).port;
    });
    afterAll(() => {
      plain6.closeAllConnections();
      plain6.close();
    });

    it("-4 and -6 as curl 7.88: localhost is 127.0.0.1 or ::1 (curl's own answer for it), a server on one family only is reached or refused (7), an IP address of the other family is 7, a --resolve entry of the other family only is passed over, the name resolved as without it (of both: the one that fits; for the proxy's name too), --connect-to's HOST2 too, the last of -4 and -6 wins (multileg took neither: exit 2)", async () => {
      const cases: Array<[args: string[], exit: number]> = [
        [['-4', `http://localhost:${p}/`], 0],
        [['-6', `http://localhost:${p}/`], 7],
        [['-6', `http://localhost:${p6}/`], 0],
        [['-4', `http://localhost:${p6}/`], 7],
        [['--ipv6', '--http1.1', `http://app.localhost:${p6}/`], 0],
        [['--ipv4', `http://[::1]:${p6}/`], 7],
        [['-6', `http://127.0.0.1:${p}/`], 7],
        // An entry with no address of the family is passed over: the name is resolved as without it.
        [['-6', '--resolve', `localhost:${p6}:127.0.0.1`, `http://localhost:${p6}/`], 0],
        [['-4', '--resolve', `localhost:${p}:::1`, `http://localhost:${p}/`], 0],
        [['-6', '--resolve', `localhost:${p}:127.0.0.1`, `http://localhost:${p}/`], 7],
        [['-4', '--resolve', `app.test:${p}:::1,127.0.0.1`, `http://app.test:${p}/`], 0],
        [['-6', '--resolve', `app.test:${p6}:127.0.0.1,::1`, `http://app.test:${p6}/`], 0],
        [['-6', '--connect-to', `app.test:${p}:localhost:${p6}`, `http://app.test:${p}/`], 0],
        [['-6', '--connect-to', `app.test:${p}:127.0.0.1:${p}`, `http://app.test:${p}/`], 7],
        [['-6', '-4', `http://localhost:${p}/`], 0],
        [['-4', '-6', `http://localhost:${p6}/`], 0],
        // An https:// URL over HTTP/2 and HTTP/1.1: the reference server is on 127.0.0.1.
        [['-4', '-o', '/dev/null', '--cacert', ca, `https://localhost:${sp}/`], 0],
        [['-6', '-o', '/dev/null', '--cacert', ca, `https://localhost:${sp}/`], 7],
        [['-6', '--http1.1', '--cacert', ca, `https://localhost:${sp}/`], 7],
      ];
      for (const [args, exit] of cases) {
        const { ours, curl } = await both(args);
        expect([ours.code, curl.code], `${args.join(' ')}: ${ours.stderr}`).toEqual([exit, exit]);
        expect(agreed(ours), args.join(' ')).toBe(agreed(curl));
      }
      // The proxy's name: its entry passed over too (before, 7 naming the origin); -w's
      // remote_ip for a proxy is curl's only, so the status and the exit code are compared.
      const proxies: Array<[args: string[], exit: number]> = [
        [['-6', '-x', `http://localhost:${p6}`, '--resolve', `localhost:${p6}:127.0.0.1`, 'http://x/'], 0],
        [['-6', '-x', 'http://proxy.example:1', '--resolve', 'proxy.example:1:127.0.0.1', 'http://x/'], 5],
      ];
      for (const [args, exit] of proxies) {
        const { ours, curl } = await both(args);
        expect([ours.code, curl.code], `${args.join(' ')}: ${ours.stderr}`).toEqual([exit, exit]);
        expect(written(ours)?.split(' ')[0], args.join(' ')).toBe(written(curl)?.split(' ')[0]);
      }
      expect((await both(proxies[1]![0])).ours.stderr).toMatch(
        /^multileg: cannot resolve the host name of proxy http:\/\/proxy\.example:1 /,
      );
      const other = await runCli(['-sS', '-6', `http://127.0.0.1:${p}/`]);
      expect(other.stderr).toBe(
        `multileg: could not connect to 127.0.0.1:${p}: -6: 127.0.0.1 is an IPv4 address; drop -6, or give a name or address of IPv6\n`,
      );
    });

    it('-4 / -6 reach the system resolver (a name with an IPv4 address only: -6 is 6, -4 reaches it; also past a --resolve entry with no address of the family) for a direct connection over HTTP/2 and HTTP/1.1, and for the proxy’s name (-6: 5, the proxy unresolved); curl with the same answer from its DNS cache (--resolve) says the same for the origin', async () => {
      const dns = {
        env: { NODE_OPTIONS: `--import ${fileURLToPath(new URL('./fixtures/dns-v4-only.mjs', import.meta.url))}` },
      };
      const w = ['-sS', '-o', '/dev/null', '-w', '%{http_code}'];
      const cases: Array<[args: string[], exit: number]> = [
        [['-6', `http://app.test:${p}/`], 6],
        [['-4', `http://app.test:${p}/`], 0],
        [['-6', '--cacert', ca, '-k', `https://app.test:${sp}/`], 6],
        [['-6', '--http1.1', '-k', `https://app.test:${sp}/`], 6],
        [['-4', '--http1.1', '-k', `https://app.test:${sp}/`], 0],
        [['-6', '-x', `http://proxy.test:${pp}`, `http://127.0.0.1:${p}/`], 5],
        [['-4', '-x', `http://proxy.test:${pp}`, `http://127.0.0.1:${p}/`], 0],
        [['-6', '-x', `http://proxy.test:${pp}`, '-k', `https://localhost:${sp}/`], 5],
        // A --resolve entry with no address of the family: the name goes to the resolver (curl's way).
        [['-4', '--resolve', `app.test:${p}:::1`, `http://app.test:${p}/`], 0],
        [['-6', '--resolve', `app.test:${p}:127.0.0.1`, `http://app.test:${p}/`], 6],
        [
          ['-6', '-x', `http://proxy.test:${pp}`, '--resolve', `proxy.test:${pp}:127.0.0.1`, `http://127.0.0.1:${p}/`],
          5,
        ],
      ];
      for (const [args, exit] of cases) {
        const ours = await runCli([...w, ...args], dns);
        expect(ours.code, `${args.join(' ')}: ${ours.stderr}`).toBe(exit);
        if (!args.includes('-x') && !args.includes('--resolve')) {
          const host = new URL(args.at(-1)!);
          const cached = ['--resolve', `app.test:${host.port}:127.0.0.1`];
          const curl = await runCommand('/usr/bin/curl', [...w, ...cached, ...args], '', curlEnv);
          expect(curl.code, args.join(' ')).toBe(exit);
        }
      }
    });

    it("doctor -6 makes its TLS check over IPv6, as the requests: a name with an IPv4 address only has no handshake to check (before, it was checked over IPv4: the certificate's names)", async () => {
      const dns = {
        env: { NODE_OPTIONS: `--import ${fileURLToPath(new URL('./fixtures/dns-v4-only.mjs', import.meta.url))}` },
      };
      const url = `https://app.test:${sp}/`;
      const six = await runCli(['doctor', '-6', '--cacert', ca, url], dns);
      expect(six.stdout).toMatch(/^skip +TLS: not checked: no TLS handshake \(ENOTFOUND\)$/m);
      const four = await runCli(['doctor', '-4', '--cacert', ca, url], dns);
      expect(four.stdout).toMatch(/^FAIL +TLS: the certificate is for localhost, 127\.0\.0\.1, not app\.test/m);
    });
  });

  it("doctor checks the server --resolve leads to, for the URL's name: its certificate is for localhost, not app.test", async () => {
    const r = await runCli([
      'doctor',
      '--resolve',
      `app.test:${sp}:127.0.0.1`,
      '--cacert',
      ca,
      `https://app.test:${sp}/`,
    ]);
    expect(r.stdout).toMatch(/^FAIL +TLS: the certificate is for localhost, 127\.0\.0\.1, not app\.test/m);
    const bad = await runCli(['doctor', '--resolve', 'app.test', `https://app.test:${sp}/`]);
    expect([bad.code, bad.stdout]).toEqual([49, '']);
  });
});
