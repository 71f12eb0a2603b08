import { spawn } from 'node:child_process';
import { createHash, createPrivateKey } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { stripTypeScriptTypes } from 'node:module';
import { createServer as createTcpServer, type Socket, type Server as TcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { credentialsFor, parseNetrc } from '../src/cli/credentials.ts';
import { describeFailure, explain401, explain407, forCli } from '../src/cli/explain.ts';
import { parseCli, parseSchemes, program, shownArgv } from '../src/cli/options.ts';
import { CliTrust, parseTrust } from '../src/cli/trust.ts';
import { writeOut } from '../src/cli/write-out.ts';
import {
  ConfigError,
  ConnectionClosedError,
  HandshakeTimeoutError,
  QueueTimeoutError,
  SystemNtlmRefusedError,
} from '../src/errors.ts';
import { type KerberosUnknownServiceError, mapGssError } from '../src/mechanisms/negotiate/errors.ts';
import { NtlmAcceptor } from '../src/mechanisms/ntlm/acceptor.ts';
import { ntlmMechanism } from '../src/mechanisms/ntlm/index.ts';
import { unsupportedNode } from '../src/node-version.ts';
import { DEFAULT_LIMITS } from '../src/options.ts';
import { ProxyAuthenticationError, ProxyClosedError, ProxyTimeoutError } from '../src/proxy/errors.ts';
import {
  type ReferenceProxy,
  type ReferenceServer,
  startReferenceProxy,
  startReferenceServer,
} from '../src/reference-server/index.ts';
import { CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY } from '../src/reference-server/test-pki.ts';
import { ClientCertificateRefusedError } from '../src/session/client-certificate.ts';
import { BIN, NODE_ARGS, OLD_NODE, runCli as run, runCommand, runOnTerminal } from './cli-helpers.ts';
import { REFUSED_PORT } from './helpers.ts';
import { relayTo, slowRelayTo } from './hostile-proxy.ts';

/** NODE_OPTIONS that preload a test fixture into the CLI's process (test/fixtures). */
const preload = (name: string) => `--import ${fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url))}`;

const listen = async (server: Server | TcpServer) => {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as { port: number }).port;
};

describe('multileg command line', () => {
  let server: ReferenceServer;
  let other: ReferenceServer;
  /** Offers NTLM only: without -u nothing can answer it, and the 401 reaches the user. */
  let ntlmOnly: ReferenceServer;
  let dir: string;
  let ca: string;
  let plain: Server;
  let plainOrigin: string;
  let silentTcp: TcpServer;
  let silentPort: number;
  const sockets = new Set<Socket>();
  /** alice's password and the reference CA: the common start of a command line. */
  const alice = () => ['-u', 'EXAMPLE\\alice:alicepw', '--cacert', ca];
  beforeAll(async () => {
    server = await startReferenceServer({ mode: 'session' });
    other = await startReferenceServer({ mode: 'session' });
    ntlmOnly = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    dir = mkdtempSync(join(tmpdir(), 'multileg-cli-'));
    ca = join(dir, 'ca.pem');
    writeFileSync(ca, server.ca);
    // Cleartext peer for what the reference server does not do: an unknown scheme, a large body.
    plain = createHttpServer((req, res) => {
      if (req.url === '/bearer') {
        res.writeHead(401, { 'www-authenticate': 'Bearer realm="api"' }).end('no');
      } else if (req.url === '/big') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        const chunk = Buffer.alloc(64 * 1024, 'x');
        let n = 0;
        const write = () => {
          while (n < 256) {
            n += 1;
            if (!res.write(chunk)) return void res.once('drain', write);
          }
          res.end();
        };
        res.on('error', () => {});
        write();
      } else if (req.url === '/skew') {
        // A server whose clock is an hour behind ours: doctor's clock check.
        res.sendDate = false;
        res.writeHead(200, { date: new Date(Date.now() - 3600_000).toUTCString() }).end('ok');
      } else if (req.url?.startsWith('/hop/')) {
        // /hop/N: N redirects (302) before a 200 that says which method and body reached it.
        const n = Number(req.url.slice(5));
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          if (n > 0) res.writeHead(302, { location: `/hop/${n - 1}` }).end();
          else res.writeHead(200, { 'content-type': 'text/plain' }).end(`${req.method} ${Buffer.concat(chunks)}`);
        });
      } else if (req.url === '/truncated') {
        // 10 bytes of the 100 announced, then the connection ends.
        res.writeHead(200, { 'content-length': '100' });
        res.write('0123456789', () => res.socket?.destroy());
      } else if (req.url?.startsWith('/to-location?')) {
        // A 302 to whatever the query says, as given.
        res.writeHead(302, { location: decodeURIComponent(req.url.slice('/to-location?'.length)) }).end();
      } else if (req.url === '/to-tls') {
        res.writeHead(302, { location: `${server.origin}/public/` }).end();
      } else if (req.url === '/basic') {
        // Basic over plain http: says which scheme reached it, if any.
        const auth = req.headers.authorization;
        if (auth) res.writeHead(200, { 'content-type': 'text/plain' }).end(`got ${auth.split(' ')[0]}`);
        else res.writeHead(401, { 'www-authenticate': 'Basic realm="plain"' }).end();
      } else if (req.url === '/hang') {
        // never answers: --max-time
      } else res.writeHead(404).end();
    });
    plainOrigin = `http://127.0.0.1:${await listen(plain)}`;
    // Accepts TCP and never speaks TLS: --connect-timeout.
    silentTcp = createTcpServer((s) => {
      sockets.add(s);
      s.on('error', () => {});
    });
    silentPort = await listen(silentTcp);
  });
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    silentTcp.close();
    plain.closeAllConnections();
    plain.close();
    await server.close();
    await other.close();
    await ntlmOnly.close();
  });

  it('authenticates with NTLM over HTTP/2 and prints the body; -v shows every leg and the handshake, never a secret', async () => {
    const { code, stdout, stderr } = await run(['-v', ...alice(), `${server.origin}/auth/cli`]);
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toMatchObject({ user: 'EXAMPLE\\alice', protocol: 'h2' });
    expect(stderr).toContain('> GET /auth/cli (no credentials)');
    expect(stderr).toContain('< 401 offers Negotiate, NTLM');
    expect(stderr).toMatch(/> GET \/auth\/cli \(Authorization: Negotiate …, Auth-ID: yes\)/);
    expect(stderr).toMatch(/< 200 \(Persistent-Auth: true\) \[HTTP\/2\]/);
    expect(stderr).toMatch(
      /Negotiate handshake on session s\d+ \(HTTP\/2\): 2 leg\(s\), Auth-ID carried, the session is authenticated as EXAMPLE\\alice/,
    );
    expect(stderr).not.toContain('alicepw');
    for (const e of server.exchanges) {
      for (const v of [e.requestHeaders.authorization, e.responseHeaders['www-authenticate'], e.authIdSent].flat()) {
        if (typeof v === 'string' && v.length > 12) expect(stderr).not.toContain(v.split(' ').pop());
      }
    }
  });

  it('H2: -v shows an IIS-style HTTP_1_1_REQUIRED refusal as the switch to HTTP/1.1 it is, not as an error', async () => {
    const iis = await startReferenceServer({ mode: 'iis' });
    try {
      const { code, stdout, stderr } = await run(['-v', ...alice(), `${iis.origin}/auth/iis`]);
      expect(code).toBe(0);
      expect(JSON.parse(stdout)).toMatchObject({ user: 'EXAMPLE\\alice', protocol: 'http/1.1' });
      expect(stderr).toContain('* the server wants this request over HTTP/1.1 (HTTP_1_1_REQUIRED)');
      expect(stderr).not.toMatch(/^! /m);
    } finally {
      await iis.close();
    }
  });

  it("H2: an IIS-style HTTP_1_1_REQUIRED, by RST_STREAM or by GOAWAY: -v says it is the switch to HTTP/1.1 (a GOAWAY's was '! ERR_HTTP2_SESSION_ERROR: Session closed with error code 13'), and doctor's schemes check says HTTP/2 was refused, not that the server does not speak HTTP/2, and its authentication check that it needs HTTP/1.1", async () => {
    for (const iisVia of ['rst', 'goaway'] as const) {
      const iis = await startReferenceServer({ mode: 'iis', iisVia });
      try {
        const verbose = await run(['-v', ...alice(), `${iis.origin}/auth/iis`]);
        expect(verbose.code).toBe(0);
        expect(verbose.stderr).toContain('* the server wants this request over HTTP/1.1 (HTTP_1_1_REQUIRED)');
        expect(verbose.stderr).not.toMatch(/^! /m);
        const doctor = await run(['doctor', ...alice(), `${iis.origin}/auth/iis`]);
        expect(doctor.stdout).not.toContain('does not speak HTTP/2');
        expect(doctor.stdout).toMatch(
          /^ok +schemes: HTTP\/2 refused with HTTP_1_1_REQUIRED \(the server wants HTTP\/1\.1 here\); over HTTP\/1\.1: HTTP\/1\.1 401 offers Negotiate, NTLM$/m,
        );
        expect(doctor.stdout).toMatch(
          /^warn +authentication: Negotiate, 2 leg\(s\), session as EXAMPLE\\alice over HTTP\/1\.1 → 200; needs HTTP\/1\.1 for authentication.*\n +fix: nothing to do; the server refuses authentication over HTTP\/2 \(HTTP_1_1_REQUIRED, as IIS does for Windows authentication\)\n/m,
        );
        expect(doctor.code).toBe(0);
      } finally {
        await iis.close();
      }
    }
  });

  it("sends a body with -d and -d @file, over HTTP/1.1 with --http1.1; -i prints curl's status lines (the handshake's 401s, then the answer and its body)", async () => {
    const h1 = await run(
      ['-i', '--http1.1', '-d', 'hello', '-u', 'EXAMPLE\\alice', '--cacert', ca, `${server.origin}/auth/post`],
      {
        env: { MULTILEG_PASSWORD: 'alicepw' },
      },
    );
    expect(h1.code).toBe(0);
    expect(h1.stdout).toMatch(/^HTTP\/1\.1 401 Unauthorized\r\n[\s\S]*\r\n\r\nHTTP\/1\.1 200 OK\r\n/);
    const body = JSON.parse(h1.stdout.slice(h1.stdout.lastIndexOf('\r\n\r\n') + 4));
    expect(body).toMatchObject({ method: 'POST', bodyLength: 5, protocol: 'http/1.1' });
    const file = join(dir, 'body.txt');
    writeFileSync(file, 'from a file');
    const h2 = await run(['-i', '-d', `@${file}`, ...alice(), `${server.origin}/auth/post`]);
    expect(h2.stdout).toMatch(/^HTTP\/2 401 \r\n[\s\S]*\r\n\r\nHTTP\/2 200 \r\n/);
    expect(JSON.parse(h2.stdout.slice(h2.stdout.lastIndexOf('\r\n\r\n') + 4))).toMatchObject({
      bodyLength: 11,
      protocol: 'h2',
    });
  });

  it("-d pieces are joined with & and sent as a form (curl's way): @file without its line breaks, --data-binary as it is, --data-raw with its @; -H 'Name;' sends it empty, 'Name:' drops it, a repeated -H sends each", async () => {
    const lines = join(dir, 'lines.txt');
    writeFileSync(lines, 'c=3\r\nd=4\n');
    const r = await run([
      ...alice(),
      '-d',
      'a=1',
      '-d',
      `@${lines}`,
      '--data-binary',
      `@${lines}`,
      '--data-raw',
      '@raw',
      '-H',
      'X-Empty;',
      '-H',
      'X-Two: one',
      '-H',
      'X-Two: two',
      '-H',
      'X-Gone: soon',
      '-H',
      'X-Gone:',
      `${server.origin}/auth/form`,
    ]);
    expect(r.code).toBe(0);
    const sent = server.exchanges.filter((e) => e.path === '/auth/form').at(-1)!;
    // Before: only the last -d went, with no Content-Type; -H 'X-Empty;' was a usage error.
    const expected = 'a=1&c=3d=4&c=3\r\nd=4\n&@raw';
    expect(sent.bodySha256).toBe(createHash('sha256').update(expected).digest('hex'));
    expect(sent.requestHeaders['content-type']).toBe('application/x-www-form-urlencoded');
    expect(sent.requestHeaders['x-empty']).toBe('');
    expect(sent.requestHeaders['x-two']).toBe('one, two');
    expect(sent.requestHeaders['x-gone']).toBeUndefined();
  });

  it("T2/R4: no -u and no Kerberos ticket: the server's 401 is shown, as curl shows it (exit 0), with why Negotiate could not answer, from the one request curl sends", async () => {
    const before = server.exchanges.filter((e) => e.path === '/auth/anon').length;
    const r = await run(['-w', '%{http_code}', '--cacert', ca, `${server.origin}/auth/anon`], {
      env: { KRB5CCNAME: `FILE:${join(dir, 'no-such-ccache')}` },
    });
    // Before: the request went twice (the second through an agent without Negotiate).
    expect(server.exchanges.filter((e) => e.path === '/auth/anon').length - before).toBe(1);
    // Before: exit 1, no body, -w printed 000 (MULTILEG_KRB_NO_TICKET).
    expect(r.code).toBe(0);
    expect(r.stdout.endsWith('401')).toBe(true);
    expect(r.stderr).toMatch(/^multileg: Negotiate: no Kerberos ticket: run kinit/);
    // This request found it itself: not the origin memory's "remembered … tried again from" copy (R4).
    expect(r.stderr).not.toContain('remembered');
    // -sS: a 401 without -f is no error, and curl says nothing (a cron job would mail it each run).
    const quiet = await run(['-sS', '-w', '%{http_code}', '--cacert', ca, `${server.origin}/auth/anon`], {
      env: { KRB5CCNAME: `FILE:${join(dir, 'no-such-ccache')}` },
    });
    expect([quiet.code, quiet.stdout.endsWith('401'), quiet.stderr]).toEqual([0, true, '']);
    // With -f it is an error, and -S shows why next to it.
    const f = await run(['-sSf', '--cacert', ca, `${server.origin}/auth/anon`], {
      env: { KRB5CCNAME: `FILE:${join(dir, 'no-such-ccache')}` },
    });
    expect(f.code).toBe(22);
    expect(f.stderr).toMatch(/^multileg: Negotiate: no Kerberos ticket: run kinit.*\nmultileg: \(22\) HTTP 401\n$/s);
    // One request, one connection (before: 2, the second try's agent had its own).
    const w = await run(
      ['-s', '-o', '/dev/null', '-w', '%{num_connects}', '--cacert', ca, `${server.origin}/auth/anon`],
      {
        env: { KRB5CCNAME: `FILE:${join(dir, 'no-such-ccache')}` },
      },
    );
    expect(w.stdout).toBe('1');
  });

  it("no -u and no Kerberos ticket, with -i and -D: the server's 401 head is shown once, as curl shows it (the head read while Negotiate tried is the answer's)", async () => {
    const dump = join(dir, 'no-ticket-heads.txt');
    const r = await run(['-s', '-i', '-D', dump, '--cacert', ca, `${server.origin}/auth/anon`], {
      env: { KRB5CCNAME: `FILE:${join(dir, 'no-such-ccache')}` },
    });
    expect(r.code).toBe(0);
    // Before: two 401 heads (the first request's, whose Negotiate could not run, and the second's).
    expect(r.stdout.match(/^HTTP\/\S+ \d{3}/gm)).toEqual(['HTTP/2 401']);
    expect(JSON.parse(r.stdout.slice(r.stdout.indexOf('\r\n\r\n') + 4))).toMatchObject({ path: '/auth/anon' });
    expect(readFileSync(dump, 'utf8').match(/^HTTP\/\S+ \d{3}/gm)).toEqual(['HTTP/2 401']);
  });

  it("S2: -i and -D show a Digest answer's Authentication-Info with rspauth [redacted] (password-derived), the rest as it came", async () => {
    const digest = await startReferenceServer({ mode: 'session', schemes: ['Digest'] });
    try {
      const dump = join(dir, 'digest-heads.txt');
      const r = await run(['-s', '-i', '-D', dump, ...alice(), `${digest.origin}/auth/digest-heads`]);
      expect(r.code).toBe(0);
      const sent = digest.exchanges.find((e) => e.path === '/auth/digest-heads' && e.status === 200)!;
      const info = String(sent.responseHeaders['authentication-info']);
      // The server did send one (before: written to stdout and the file as it came).
      expect(info).toMatch(/rspauth="[0-9a-f]{16,}"/);
      for (const text of [r.stdout, readFileSync(dump, 'utf8')]) {
        const line = text.split('\r\n').find((l) => l.startsWith('authentication-info:'))!;
        expect(line).toBe(`authentication-info: ${info.replace(/rspauth="[0-9a-f]+"/, 'rspauth=[redacted]')}`);
      }
    } finally {
      await digest.close();
    }
  });

  it('-d, --data-binary and --data-raw join in the order given; the form type the command added does not follow a POST turned GET by a redirect', async () => {
    // Before: grouped by flag (a=1&c=3&b=2).
    expect(parseCli(['-d', 'a=1', '--data-binary', 'b=2', '-d', 'c=3', 'h/']).body?.toString()).toBe('a=1&b=2&c=3');
    const to = encodeURIComponent('/auth/after-form');
    const r = await run(['-L', '-d', 'a=1', ...alice(), `${server.origin}/public/redirect?status=302&to=${to}`]);
    expect(r.code).toBe(0);
    const after = server.exchanges.filter((e) => e.path === '/auth/after-form').at(-1)!;
    // Before: a GET with Content-Type: application/x-www-form-urlencoded and no body.
    expect([after.method, after.requestHeaders['content-type']]).toEqual(['GET', undefined]);
    // -X other than POST with -d: the body is dropped on a 302 all the same (curl), the method kept.
    const put = await run([
      '-L',
      '-X',
      'PUT',
      '-d',
      'b=2',
      ...alice(),
      `${server.origin}/public/redirect?status=302&to=${encodeURIComponent('/auth/after-put')}`,
    ]);
    expect(put.code).toBe(0);
    const afterPut = server.exchanges.filter((e) => e.path === '/auth/after-put').at(-1)!;
    // Before: PUT with the body b=2 and the form type, re-sent to the new location.
    expect([afterPut.method, afterPut.requestHeaders['content-type'], afterPut.bodySha256]).toEqual([
      'PUT',
      undefined,
      createHash('sha256').update('').digest('hex'),
    ]);
    // A Content-Type the caller gave stays, as curl keeps its -H.
    const own = parseCli(['-d', 'x', '-H', 'Content-Type: text/plain', 'h/']);
    expect([own.formType, own.headers['content-type']]).toEqual([false, 'text/plain']);
  });

  it("-I sends HEAD and prints only heads, the handshake's 401s first (as curl -I); a URL without a scheme means https", async () => {
    const { code, stdout } = await run(['-I', ...alice(), `localhost:${server.port}/auth/head`]);
    expect(code).toBe(0);
    expect(stdout.match(/^HTTP\/\S+ \d{3}/gm)).toEqual(['HTTP/2 401', 'HTTP/2 401', 'HTTP/2 200']);
    expect(stdout).toMatch(/\r\nHTTP\/2 200 \r\n[\s\S]*\r\n\r\n$/);
    expect(server.exchanges.at(-1)).toMatchObject({ method: 'HEAD', status: 200 });
  });

  it('-f: on a 401 no body, "multileg: (22) HTTP 401", exit 22, and why the 401 stood', async () => {
    const failed = await run(['-f', '-u', 'EXAMPLE\\alice:wrong', '--cacert', ca, `${server.origin}/auth/x`]);
    expect(failed.code).toBe(22);
    expect(failed.stdout).toBe('');
    // With -i the heads, the final 401's too, as curl 7.88 -f -i shows them; still no body.
    const heads = await run(['-f', '-i', '-u', 'EXAMPLE\\alice:wrong', '--cacert', ca, `${server.origin}/auth/x`]);
    expect(heads.code).toBe(22);
    // The bare request's 401, the challenge's, and the final refusal's.
    expect(heads.stdout.match(/^HTTP\/\S+ \d{3}/gm)).toEqual(['HTTP/2 401', 'HTTP/2 401', 'HTTP/2 401']);
    expect(heads.stdout).toMatch(/\r\n\r\n$/);
    expect(failed.stderr).toContain('multileg: (22) HTTP 401');
    expect(failed.stderr).toMatch(
      /offered Negotiate, NTLM; the server refused the password, sent as NTLM inside Negotiate \(Kerberos was skipped: MULTILEG_KRB_\w+\), after \d leg/,
    );
    // NTLM inside Negotiate (no ticket here) refused: the password is at fault, not a ticket.
    expect(failed.stderr).toContain('check -u user:password');
    expect(failed.stderr).not.toContain('klist');
    expect(failed.stderr).not.toContain('wrong');
    const ok = await run(['-f', ...alice(), `${server.origin}/auth/x`]);
    expect(ok.code).toBe(0);
  });

  it('a 401 not answered says which schemes were offered and why none was used', async () => {
    const none = await run(['--cacert', ca, `${ntlmOnly.origin}/auth/x`]);
    expect(none.code).toBe(0);
    expect(none.stderr).toBe(
      `multileg: ${ntlmOnly.origin} answered 401 and offered NTLM; no credentials: give -u DOMAIN\\user (the password is asked for, or comes from --password-stdin / MULTILEG_PASSWORD)\n`,
    );
    const excluded = await run(['--basic', ...alice(), `${server.origin}/auth/x`]);
    expect(excluded.stderr).toMatch(/--schemes \(or --negotiate\/--ntlm\/--digest\/--basic\) excluded Negotiate, NTLM/);
    const bearer = await run(['-u', 'alice:pw', `${plainOrigin}/bearer`]);
    expect(bearer.stderr).toContain('multileg does not implement Bearer');
    // Negotiate without a ticket and without a password: the 401 is shown (as curl does), and the
    // typed error's message says what to do.
    const noTicket = await run(['--cacert', ca, `${server.origin}/auth/x`], {
      env: { KRB5CCNAME: `FILE:${join(dir, 'no-ccache')}` },
    });
    expect(noTicket.code).toBe(0);
    expect(noTicket.stderr).toMatch(
      /no Kerberos ticket: run kinit, give a client keytab with --keytab FILE, or pass --principal \(or give -u user:password for the NTLM fallback\).*\(MULTILEG_KRB_NO_TICKET\)/,
    );
  });

  it("M5: no Kerberos ticket names --keytab beside kinit — the fix where no one types kinit's password (a CI job, cron) — in the 401's explanation and in doctor's ticket and authentication fixes; they named kinit and --principal alone (trial u18)", async () => {
    const env = { KRB5CCNAME: `FILE:${join(dir, 'no-ccache-ci')}` };
    const url = `${server.origin}/auth/ci`;
    const r = await run(['-s', '-S', '-f', '--negotiate', '-u', ':', '--cacert', ca, url], { env });
    expect(r.code).toBe(22);
    expect(r.stderr).toContain(
      'no Kerberos ticket: run kinit, give a client keytab with --keytab FILE, or pass --principal',
    );
    const doctor = await run(['doctor', '--negotiate', '-u', ':', '--cacert', ca, url], { env });
    expect(doctor.stdout).toMatch(/^ +fix: kinit user@REALM, or --keytab FILE where no one types a password/m);
    expect(doctor.stdout).toMatch(
      /^ +fix: kinit user@REALM \(or --keytab FILE where no one types a password\), or give -u DOMAIN\\user \(NTLM\)$/m,
    );
  });

  it("S6: a copied browser command's own -H 'Authorization: NTLM …' with --ntlm -u: the header goes alone (the caller's identity, never mixed with -u's), a warning says at the start that -u's credentials are not used (not with -s), and the 401's explanation names the header; the header alone says it was refused", async () => {
    const own = 'NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==';
    const url = `${ntlmOnly.origin}/auth/copied`;
    const warning =
      "multileg: Warning: -H 'Authorization: …' replaces -u: its credentials are not used; drop the header\n";
    const copied = await run(['--ntlm', ...alice(), '-H', `authorization: ${own}`, url]);
    expect(copied.code).toBe(0);
    expect(copied.stderr).toBe(
      `${warning}multileg: ${ntlmOnly.origin} answered 401 and offered NTLM; it refused the Authorization given with -H, which replaces -u: its credentials were not used; drop the header\n`,
    );
    // S6: only the caller's header went, never alice's NTLM.
    const sent = ntlmOnly.exchanges.filter((e) => e.path === '/auth/copied').map((e) => e.requestHeaders.authorization);
    expect(sent).toEqual([own]);
    // -s: neither the warning nor the explanation (curl's silence).
    expect((await run(['-s', '--ntlm', ...alice(), '-H', `Authorization: ${own}`, url])).stderr).toBe('');
    // --negotiate -u : and the URL's user:password are named too; a netrc flag likewise.
    const ticket = await run([
      '-s',
      '-S',
      '--negotiate',
      '-u',
      ':',
      '--cacert',
      ca,
      '-H',
      `Authorization: ${own}`,
      url,
    ]);
    expect(ticket.stderr).not.toContain('Warning');
    const named = await run(['--negotiate', '-u', ':', '--cacert', ca, '-H', `Authorization: ${own}`, url]);
    expect(named.stderr).toContain(
      "multileg: Warning: -H 'Authorization: …' replaces -u : (the Kerberos ticket): its credentials are not used; drop the header\n",
    );
    const inUrl = await run([
      '--cacert',
      ca,
      '-H',
      `Authorization: ${own}`,
      url.replace('https://', 'https://bob:pw@'),
    ]);
    expect(inUrl.stderr).toContain("replaces the URL's user:password: its credentials are not used");
    // The header alone: no warning; the explanation says the server refused it.
    const alone = await run(['--cacert', ca, '-H', `Authorization: ${own}`, url]);
    expect(alone.stderr).toBe(
      `multileg: ${ntlmOnly.origin} answered 401 and offered NTLM; it refused the Authorization given with -H (sent as given, never answered for): check or drop the header\n`,
    );
    // -u alone, or -H 'Authorization:' (which drops the header): no warning.
    for (const args of [alice(), [...alice(), '-H', 'Authorization:']])
      expect((await run(['-o', '/dev/null', ...args, `${server.origin}/auth/x`])).stderr).toBe('');
  });

  it("S6/R4: -H 'Authorization: NTLM …' holding an AUTHENTICATE (the second leg of a browser's handshake, copied): not sent, and the command says why and what to give instead (not the library's words for a gateway)", async () => {
    // A browser's AUTHENTICATE, answering a CHALLENGE it got on a connection of its own.
    const leg = { origin: ntlmOnly.origin, hostname: 'localhost', port: 443, method: 'GET', path: '/', proxy: false };
    const browser = ntlmMechanism({ username: 'EXAMPLE\\alice', password: 'alicepw' }).createContext(leg);
    const negotiate = (await browser.step(undefined, leg))!;
    const step = new NtlmAcceptor({ users: { alice: 'alicepw' }, domain: 'EXAMPLE' }).step(
      Buffer.from(negotiate.split(' ')[1]!, 'base64'),
    );
    if (step.kind !== 'challenge') throw new Error('no CHALLENGE');
    const challenge = { scheme: 'NTLM', schemeKey: 'ntlm', token68: step.token.toString('base64'), params: {} };
    const own = (await browser.step(challenge, leg))!;
    const url = `${ntlmOnly.origin}/auth/copied-authenticate`;
    const r = await run(['--cacert', ca, '-H', `Authorization: ${own}`, url]);
    expect(r.code).toBe(1);
    // Before (t78): the library's advice to a gateway ("relay the server's Auth-ID header both ways").
    expect(r.stderr).toBe(
      `multileg: the Authorization given with -H holds an NTLM AUTHENTICATE, the second leg of a handshake run on another connection (a request copied from a browser?): it was not sent, since ${new URL(url).host} would check it against no handshake of this command's and count a wrong password toward the account's lockout; drop the header and give -u DOMAIN\\user with --ntlm or --negotiate (MULTILEG_NTLM_UNPAIRED)\n`,
    );
    expect(ntlmOnly.exchanges.filter((e) => e.path === '/auth/copied-authenticate')).toEqual([]);
  });

  it("S6/H1: -H 'Authorization: NTLM …' holding an AUTHENTICATE beside -H 'Proxy-Authorization: NTLM …' (reason proxy-leg): not sent, and the command says that the proxy's NTLM leg decides the proxy connection, not the one that carried the server's CHALLENGE, and what to give instead; an AUTHENTICATE in -H 'Proxy-Authorization' is named as the proxy's", async () => {
    // A browser's AUTHENTICATE to the origin, answering a CHALLENGE it got on a connection of its own.
    const origin = 'http://intranet.example';
    const leg = { origin, hostname: 'intranet.example', port: 80, method: 'GET', path: '/', proxy: false };
    const authenticate = async (toProxy: boolean) => {
      const browser = ntlmMechanism({ username: 'EXAMPLE\\alice', password: 'alicepw' }).createContext({
        ...leg,
        proxy: toProxy,
      });
      const negotiate = (await browser.step(undefined, leg))!;
      const step = new NtlmAcceptor({ users: { alice: 'alicepw' }, domain: 'EXAMPLE' }).step(
        Buffer.from(negotiate.split(' ')[1]!, 'base64'),
      );
      if (step.kind !== 'challenge') throw new Error('no CHALLENGE');
      const challenge = { scheme: 'NTLM', schemeKey: 'ntlm', token68: step.token.toString('base64'), params: {} };
      return { negotiate, authenticate: (await browser.step(challenge, leg))! };
    };
    const atOrigin = await authenticate(false);
    const atProxy = await authenticate(true);
    // A forwarding proxy (http:// URL) that refuses connections: nothing may reach it either way.
    const proxy = ['-x', `http://127.0.0.1:${REFUSED_PORT}`];
    const url = `${origin}/copied`;
    for (const proxyLeg of [atProxy.negotiate, atProxy.authenticate]) {
      const r = await run([
        ...proxy,
        '-H',
        `Proxy-Authorization: ${proxyLeg}`,
        '-H',
        `Authorization: ${atOrigin.authenticate}`,
        url,
      ]);
      // Before: "the Authorization given with -H holds … drop the header and give -u" — silent on the
      // Proxy-Authorization that kept it from its connection.
      expect([r.code, r.stderr], proxyLeg.slice(0, 12)).toEqual([
        1,
        `multileg: the Authorization given with -H holds an NTLM AUTHENTICATE, the second leg of a handshake run on another connection (a request copied from a browser?), and the Proxy-Authorization given with -H beside it an NTLM leg for the proxy: that leg decides which proxy connection the request goes on (the proxy's handshake runs there), not the one that carried ${new URL(url).host}'s CHALLENGE, so the AUTHENTICATE was not sent (${new URL(url).host} would check it against no handshake and count a wrong password toward the account's lockout); drop both headers and give -u DOMAIN\\user with --ntlm or --negotiate for the server, -U user:password with --proxy-ntlm for the proxy (MULTILEG_NTLM_UNPAIRED)\n`,
      ]);
    }
    // The proxy's AUTHENTICATE alone: the proxy's, named as such (it said the Authorization, -u).
    const alone = await run([...proxy, '-H', `Proxy-Authorization: ${atProxy.authenticate}`, url]);
    expect([alone.code, alone.stderr]).toEqual([
      1,
      `multileg: the Proxy-Authorization given with -H holds an NTLM AUTHENTICATE, the second leg of a handshake run on another connection (a request copied from a browser?): it was not sent, since proxy http://127.0.0.1:${REFUSED_PORT} would check it against no handshake of this command's and count a wrong password toward the account's lockout; drop the header and give -U user:password with --proxy-ntlm (MULTILEG_NTLM_UNPAIRED)\n`,
    ]);
    // --help says so at -H.
    const help = (await run(['--help'])).stdout.replace(/\s+/g, ' ');
    expect(help).toContain(
      'a copied NTLM AUTHENTICATE in Authorization or Proxy-Authorization is not sent: give -u, -U',
    );
  });

  it("S1: -H 'Host: …' naming another host than the URL's: a warning says at the start that -u's credentials are not sent there, and none go (the server's 401 is shown); -L drops that Host on a hop to another host, as curl does", async () => {
    const { port } = new URL(ntlmOnly.origin);
    const url = `${ntlmOnly.origin}/auth/host-header`;
    const elsewhere = await run(['--ntlm', ...alice(), '-H', `Host: 127.0.0.1:${port}`, url]);
    expect(elsewhere.code).toBe(0);
    expect(elsewhere.stderr).toContain(
      "multileg: Warning: -H 'Host: …' names another host than the URL: the credentials of -u are not sent there; drop the header, or use --resolve or --connect-to to reach another address under the URL's name\n",
    );
    const sent = ntlmOnly.exchanges.filter((e) => e.path === '/auth/host-header');
    // Before: alice's NTLM went to the authority the Host named.
    expect(sent.map((e) => [e.status, e.requestHeaders.authorization ?? null])).toEqual([[401, null]]);
    // The URL's own host and port in the header: no warning, and the credentials go.
    const same = await run([
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}',
      '--ntlm',
      ...alice(),
      '-H',
      `Host: localhost:${port}`,
      url,
    ]);
    expect([same.stdout, same.stderr]).toEqual(['200', '']);
    // -L to another host: the Host given goes no further than the first (curl 7.88 the same).
    const { port: otherPort } = new URL(other.origin);
    const hop = `https://127.0.0.1:${otherPort}/public/landed-host`;
    const redirect = `${server.origin}/public/redirect?to=${encodeURIComponent(hop)}`;
    const followed = await run([
      '--cacert',
      ca,
      '-L',
      '-H',
      `Host: localhost:${new URL(server.origin).port}`,
      redirect,
    ]);
    expect(followed.code).toBe(0);
    const landed = other.exchanges.filter((e) => e.path === '/public/landed-host');
    expect(landed.map((e) => e.requestHeaders[':authority'] ?? e.requestHeaders.host)).toEqual([
      `127.0.0.1:${otherPort}`,
    ]);
  });

  it("H5: a proxy's 407 that no allowed scheme answers names the flags of the schemes it offers, not those it does not take", () => {
    const offered = new ProxyAuthenticationError(
      'http://p:3128',
      'none of the offered schemes is configured; check proxy.schemes',
      ['NTLM', 'Basic'],
    );
    expect(forCli(offered.message)).toBe(
      "proxy http://p:3128 requires authentication (407; offers NTLM, Basic): none of the offered schemes is configured; check --proxy-ntlm/--proxy-basic (the proxy's; default --proxy-anyauth)",
    );
    const unknown = new ProxyAuthenticationError('http://p:3128', 'none … configured; check proxy.schemes', ['Bearer']);
    expect(forCli(unknown.message)).toMatch(
      /\(407; offers Bearer\): none … configured; it offers no scheme the command speaks$/,
    );
    expect(forCli(unknown.message)).not.toContain('--proxy-ntlm');
  });

  it('exits 1 with a typed error whose message names CLI flags, not library options', async () => {
    const limited = await run(['--max-legs', '1', ...alice(), `${server.origin}/auth/x`]);
    expect(limited.code).toBe(1);
    expect(limited.stderr).toContain('raise --max-legs');
    expect(limited.stderr).toContain('MULTILEG_LEG_LIMIT');
    expect(limited.stderr).not.toContain('limits.');
    expect(forCli('a CNAME may need negotiate.canonicalizeHost, or pass negotiate.spn')).toBe(
      'a CNAME may need --canonicalize-host, or pass --spn',
    );
    expect(forCli('check proxy.credentials (user)')).toBe('check --proxy-user (user)');
    expect(forCli('run kinit or pass principal (or give credentials for the NTLM fallback)')).toBe(
      'run kinit or pass --principal (or give -u user:password for the NTLM fallback)',
    );
    expect(forCli('run kinit, give a client keytab (negotiate.keytab), or pass principal')).toBe(
      'run kinit, give a client keytab with --keytab FILE, or pass --principal',
    );
  });

  it('writes the body to a file with -o; with -i the heads go there first (as curl); -o - is stdout', async () => {
    const out = join(dir, 'out.json');
    const { code, stdout } = await run(['-o', out, ...alice(), `${server.origin}/auth/file`]);
    expect(code).toBe(0);
    expect(stdout).toBe('');
    expect(JSON.parse(readFileSync(out, 'utf8'))).toMatchObject({ user: 'EXAMPLE\\alice' });
    // Before: the head went to stdout, and -o - made a file named "-".
    const withHead = join(dir, 'with-head.txt');
    const i = await run(['-i', '-o', withHead, ...alice(), `${server.origin}/auth/file`]);
    expect(i.stdout).toBe('');
    const text = readFileSync(withHead, 'utf8');
    expect(text).toMatch(/^HTTP\/2 401 \r\n[\s\S]*\r\n\r\nHTTP\/2 200 \r\n/);
    expect(JSON.parse(text.slice(text.lastIndexOf('\r\n\r\n') + 4))).toMatchObject({ user: 'EXAMPLE\\alice' });
    const dash = await run(['-o', '-', ...alice(), `${server.origin}/auth/file`]);
    expect(JSON.parse(dash.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
    expect(existsSync('-')).toBe(false);
  });

  it("T3: --cert with an encrypted DER --key and --pass answers a Transport challenge; a key that is not the certificate's exits 58 (curl's) with one line", async () => {
    const certServer = await startReferenceServer({ mode: 'session', clientCertificate: 'offer' });
    try {
      const cert = join(dir, 'client.pem');
      const key = join(dir, 'client-key.der');
      const wrongKey = join(dir, 'wrong-key.pem');
      writeFileSync(cert, CLIENT_CERT);
      const encrypted = { cipher: 'aes-256-cbc', passphrase: 'hunter2-pass' };
      writeFileSync(key, createPrivateKey(CLIENT_KEY).export({ format: 'der', type: 'pkcs8', ...encrypted }));
      writeFileSync(wrongKey, SERVER_KEY);
      const url = `${certServer.origin}/auth/cert`;
      const ok = await run(['--cacert', ca, '--cert', cert, '--key', key, '--pass', 'hunter2-pass', url]);
      expect(ok.code).toBe(0);
      expect(JSON.parse(ok.stdout)).toMatchObject({ user: 'cert:alice' });
      // curl's forms: the passphrase after the --cert file's name, and one PEM file with both.
      const colon = await run(['--cacert', ca, '--cert', `${cert}:hunter2-pass`, '--key', key, url]);
      expect(JSON.parse(colon.stdout)).toMatchObject({ user: 'cert:alice' });
      const both = join(dir, 'both.pem');
      writeFileSync(both, `${CLIENT_CERT}\n${CLIENT_KEY}`);
      expect(JSON.parse((await run(['--cacert', ca, '--cert', both, url])).stdout)).toMatchObject({
        user: 'cert:alice',
      });
      // A missing file: curl's 58 too; with curl's --cert file:passphrase the passphrase is not printed.
      const missing = await run(['--cert', join(dir, 'missing.pem:HUNTER2'), url]);
      expect([missing.code, missing.stderr]).toEqual([
        58,
        `multileg: --cert ${join(dir, 'missing.pem')}: no such file\n`,
      ]);
      const noPass = await run(['--cacert', ca, '--cert', cert, '--key', key, url]);
      expect(noPass.code).toBe(58);
      expect(noPass.stderr).toBe(
        'multileg: --cert/--key: the key is encrypted and the passphrase is missing or wrong: pass --pass\n',
      );
      // Before: accepted, and the connection failed with OpenSSL's words (exit 1).
      const wrong = await run(['--cacert', ca, '--cert', cert, '--key', wrongKey, url]);
      expect(wrong.code).toBe(58);
      expect(wrong.stderr).toMatch(/^multileg: --cert\/--key: the key is not the certificate’s/);
      expect(`${wrong.stderr}${noPass.stderr}${ok.stderr}`).not.toContain('hunter2');
    } finally {
      await certServer.close();
    }
  });

  it('T3: a server that requires a client certificate in TLS: without --cert the error says so and names --cert/--key (35); with a --cert it refuses, the command says it refused the one given', async () => {
    const issuers = (name: string) => readFileSync(new URL(`./fixtures/issuers/${name}`, import.meta.url), 'utf8');
    const requiring = createHttpsServer(
      { cert: SERVER_CERT, key: SERVER_KEY, requestCert: true, rejectUnauthorized: true, ca: issuers('ca-a.pem') },
      (_req, res) => res.end('ok'),
    );
    requiring.on('tlsClientError', () => {});
    await new Promise<void>((resolve) => requiring.listen(0, 'localhost', resolve));
    try {
      const url = `https://localhost:${(requiring.address() as { port: number }).port}/`;
      const none = await run(['--cacert', ca, url]);
      // Before: "empty reply from …" (52), not a word of a certificate.
      expect(none.code).toBe(35);
      expect(none.stderr).toContain(`${new URL(url).origin}: the server requires a TLS client certificate`);
      expect(none.stderr).toContain('give one with --cert and --key');
      expect(none.stderr).toContain('CN=Test CA A');
      const cert = join(dir, 'wrong-ca.pem');
      writeFileSync(cert, `${CLIENT_CERT}\n${CLIENT_KEY}`);
      const given = await run(['--cacert', ca, '--cert', cert, url]);
      expect(given.stderr).toContain('it refused the one given with --cert');
      expect(given.stderr).not.toContain('give one with --cert and --key');
    } finally {
      await new Promise((resolve) => requiring.close(resolve));
    }
  });

  it('S2: passwords on the command line are not left for ps to show (as curl blanks them)', async () => {
    expect(
      shownArgv([
        '-u',
        'EXAMPLE\\alice:SECRET1',
        '--proxy-user=p:SECRET2',
        '-uX:SECRET3',
        '--pass',
        'SECRET4',
        '-H',
        'Authorization: Bearer SECRET5',
        '-H',
        'X-Plain: fine',
        'https://bob:SECRET6@h/p',
      ]),
    ).toEqual([
      '-u',
      'EXAMPLE\\alice:***',
      '--proxy-user=p:***',
      '-uX:***',
      '--pass',
      '***',
      '-H',
      'Authorization:***',
      '-H',
      'X-Plain: fine',
      'https://bob:***@h/p',
    ]);
    expect(shownArgv(['-u', 'alice', 'https://h/'])).toBeUndefined();
    // Without a scheme too (-x and the URL take them as http(s)://).
    expect(shownArgv(['-x', 'u:PWX@proxy:3128', '--proxy=u:PWY@p', 'user:PWZ@host/p'])).toEqual([
      '-x',
      'u:***@proxy:3128',
      '--proxy=u:***@p',
      'user:***@host/p',
    ]);
    // Every form commander reads.
    expect(
      shownArgv([
        '--proxy=http://u:PW1@p:3128',
        '-xhttp://u:PW2@p',
        '-ku',
        'alice:PW3',
        '--cert',
        'c.pem:PW4',
        '--header=Authorization: PW5',
        '-HCookie: PW6',
        'https://u:pa@PW7@h/',
      ]),
    ).toEqual([
      '--proxy=http://u:***@p:3128',
      '-xhttp://u:***@p',
      '-ku',
      'alice:***',
      '--cert',
      'c.pem:***',
      '--header=Authorization:***',
      '-HCookie:***',
      'https://u:***@h/',
    ]);
    // In the running command, /proc/<pid>/cmdline no longer holds the password.
    const child = spawn(process.execPath, [...NODE_ARGS, BIN, ...alice(), `${server.origin}/auth/ps?delay=1500`], {
      stdio: 'ignore',
    });
    const closed = once(child, 'close');
    let exited = false;
    void closed.then(() => {
      exited = true;
    });
    // The request is held 1.5 s by the server: the title is set long before it ends.
    let cmdline = '';
    while (!exited && !cmdline.includes('***')) {
      await new Promise((r) => setTimeout(r, 20));
      try {
        cmdline = readFileSync(`/proc/${child.pid}/cmdline`, 'utf8');
      } catch {
        break; // gone
      }
    }
    await closed;
    expect(cmdline).toContain('-u EXAMPLE\\alice:***');
    expect(cmdline).not.toContain('alicepw');
  });

  it("a full disk under stdout: one line, curl's 23, no stack trace — for a body, a head (-I), --json and -w alike", async () => {
    const full = openSync('/dev/full', 'w');
    try {
      for (const extra of [[], ['-I'], ['--json'], ['-o', '/dev/null', '-w', '%{http_code}']]) {
        const child = spawn(process.execPath, [...NODE_ARGS, BIN, ...extra, ...alice(), `${server.origin}/auth/full`], {
          stdio: ['ignore', full, 'pipe'],
        });
        let stderr = '';
        child.stderr!.on('data', (d: Buffer) => {
          stderr += d.toString();
        });
        const [code] = (await once(child, 'close')) as [number];
        // Before: an uncaught ENOSPC with Node's stack trace (exit 1), or for the others exit 0.
        expect([extra.join(' '), code, stderr]).toEqual([
          extra.join(' '),
          23,
          'multileg: stdout: no space left on the device (ENOSPC)\n',
        ]);
      }
    } finally {
      closeSync(full);
    }
  });

  it("-o into a directory that does not exist: one line naming -o, the problem and --create-dirs, curl's 23", async () => {
    const out = join(dir, 'missing-dir', 'f');
    const r = await run(['-o', out, ...alice(), `${server.origin}/auth/file`]);
    expect(r.code).toBe(23);
    expect(r.stderr).toBe(
      `multileg: -o ${out}: no such directory (ENOENT); --create-dirs makes the missing directories\n`,
    );
    expect(r.stdout).toBe('');
    const isDir = await run(['-o', dir, `${plainOrigin}/skew`]);
    expect(isDir.code).toBe(23);
    expect(isDir.stderr).toBe(`multileg: -o ${dir}: is a directory (EISDIR)\n`);
  });

  it("T2: --schemes naming no scheme ('' from an unset variable, or ',') is bad usage, exit 2, nothing sent, saying to omit it or name one ('' was taken as no --schemes, ',' turned every scheme off: the 401 stood unanswered)", async () => {
    for (const list of ['', ',', ' , '])
      expect(() => parseCli(['--schemes', list, 'https://h/']), JSON.stringify(list)).toThrow(
        new ConfigError(
          `--schemes ${JSON.stringify(list)} names no scheme: omit --schemes for the default order, or name at least one, e.g. --schemes Negotiate,NTLM`,
        ),
      );
    // With --ntlm, '' is a --schemes given too.
    expect(() => parseCli(['--ntlm', '--schemes', '', 'https://h/'])).toThrow('--ntlm and --schemes: give one of them');
    const before = server.exchanges.length;
    const r = await run(['--schemes', ',', ...alice(), `${server.origin}/auth/x`]);
    expect(r).toMatchObject({
      code: 2,
      stdout: '',
      stderr:
        'multileg: --schemes "," names no scheme: omit --schemes for the default order, or name at least one, e.g. --schemes Negotiate,NTLM\n',
    });
    expect(server.exchanges.length).toBe(before);
  });

  it('bad usage: one line, exit 2, no stack trace', async () => {
    const cases: Array<[string[], RegExp]> = [
      [[], /^multileg: missing required argument 'url' \(multileg --help lists the options\)\n$/],
      [['--bogus', 'https://h/'], /^multileg: unknown option '--bogus' \(multileg --help lists the options\)\n$/],
      [
        ['--schemes', 'Negotiate,Kerberos', 'https://localhost:1/'],
        /^multileg: --schemes: unknown scheme "Kerberos"; use Negotiate, NTLM, Digest, Basic, Transport\n$/,
      ],
      // curl's -0 (--http1.0) is no URL (commander leaves what looks like a negative number as an argument).
      [['-0', 'https://localhost:1/'], /^multileg: unknown option '-0' \(multileg --help lists the options\)\n$/],
      // curl's --json DATA: the data must not become a URL and the POST a GET; nor is it echoed.
      [
        ['--json', '{"password":"s3cret"}', 'https://localhost:1/'],
        /^multileg: an argument is JSON data, not a URL: --json here takes no value \(it prints multileg's report\); to send JSON as curl's --json does, give -d '…' -H 'Content-Type: application\/json'\n$/,
      ],
      [['[1,2]', 'https://localhost:1/'], /^multileg: an argument is JSON data, not a URL: to send JSON as curl's/],
      [['--key', 'k.pem', 'https://localhost:1/'], /^multileg: --key goes with --cert\n$/],
      [
        ['--pass', 'x', 'https://localhost:1/'],
        /^multileg: --pass is the passphrase of the --cert \/ --key key: give --cert\n$/,
      ],
      [['-H', 'nocolon', 'https://localhost:1/'], /^multileg: -H: a header must look like/],
      [['--ntlm', '--schemes', 'NTLM', 'https://localhost:1/'], /^multileg: --ntlm and --schemes/],
      [
        ['-u', 'alice', 'https://localhost:1/'],
        /^multileg: no password for alice: .*--password-stdin.*MULTILEG_PASSWORD\n$/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = await run(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(message);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
  });

  it('M2: --negotiate -u user with no password and no terminal (curl asks, then uses the ticket whatever is typed): bad usage that also names -u : for the ticket alone; without --negotiate, not', async () => {
    const hint = '; or, for the Kerberos ticket alone, -u : (no user, no password)';
    const negotiate = await run(['--negotiate', '-u', 'alice', 'https://localhost:1/']);
    expect(negotiate.code).toBe(2);
    expect(negotiate.stderr).toMatch(/^multileg: no password for alice: .*MULTILEG_PASSWORD; or, for the Kerberos/);
    expect(negotiate.stderr).toContain(`${hint}\n`);
    const doctor = await run(['doctor', '--negotiate', '-u', 'alice', 'https://localhost:1/']);
    expect(doctor.code).toBe(2);
    expect(doctor.stderr).toContain(`${hint}\n`);
    for (const args of [[], ['--ntlm'], ['--schemes', 'Negotiate,NTLM']]) {
      const other = await run([...args, '-u', 'alice', 'https://localhost:1/']);
      expect(other.code, args.join(' ')).toBe(2);
      expect(other.stderr, args.join(' ')).not.toContain('-u :');
    }
  });

  it("--cacert: not there is bad usage (2, curl 8.18+); no PEM certificate in it is curl's 77 once a TLS connection needs it (https, a redirect there), nothing for plain http://, with -k, or for an https proxy (--proxy-cacert's)", async () => {
    const missing = join(dir, 'missing.pem');
    for (const url of [`${server.origin}/public/`, `${plainOrigin}/hop/0`]) {
      const r = await run(['--cacert', missing, url]);
      expect(r.code, url).toBe(2);
      expect(r.stderr).toBe(`multileg: --cacert ${missing}: no such file\n`);
    }
    const garbage = join(dir, 'garbage.pem');
    writeFileSync(garbage, 'not a certificate\n');
    const broken = join(dir, 'broken.pem');
    writeFileSync(broken, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
    for (const file of [garbage, broken, dir]) {
      const why = file === dir ? 'is a directory' : 'not a PEM file of CA certificates';
      const tls = await run(['--cacert', file, `${server.origin}/public/`]);
      expect(tls.code, file).toBe(77);
      expect(tls.stderr, file).toBe(`multileg: --cacert ${file}: ${why}\n`);
      // curl ignores it for a plain http:// URL: nothing there verifies a certificate.
      const plainUrl = await run(['--cacert', file, `${plainOrigin}/hop/0`]);
      expect(plainUrl, file).toMatchObject({ code: 0, stdout: 'GET ', stderr: '' });
    }
    // -k verifies nothing: the file is not used (curl's too).
    expect((await run(['-k', '--cacert', garbage, `${server.origin}/public/`])).code).toBe(0);
    // A redirect from http:// to https:// needs it: 77 there, as curl.
    const hop = await run(['-L', '--cacert', garbage, '-w', '%{num_redirects} %{exitcode}', `${plainOrigin}/to-tls`]);
    expect(hop).toMatchObject({ code: 77, stdout: '1 77' });
    // An https:// proxy on the way to an http:// URL is not verified with --cacert (curl's
    // --proxy-cacert is its own): the file is not used.
    let proxy: ReferenceProxy | undefined;
    try {
      proxy = await startReferenceProxy({});
      const proxied = await run([
        '--cacert',
        garbage,
        '--proxy-cacert',
        ca,
        '-x',
        proxy.origin,
        `${plainOrigin}/hop/0`,
      ]);
      expect(proxied).toMatchObject({ code: 0, stderr: '' });
      expect(proxy.exchanges).toHaveLength(1);
    } finally {
      await proxy?.close();
    }
    // doctor's TLS check fails on it, naming it.
    const doctor = await run(['doctor', '--cacert', garbage, `${server.origin}/public/`]);
    expect(doctor.code).toBe(1);
    expect(doctor.stdout).toContain(
      `FAIL  TLS: --cacert ${garbage}: not a PEM file of CA certificates\n      fix: give a PEM file of CA certificates with --cacert\n`,
    );
    // A good one still works.
    expect((await run(['--cacert', ca, `${server.origin}/public/`])).code).toBe(0);
  });

  it('S2: usage errors never repeat a secret: -H without a colon shows none of it, -x and --trust not their user:password@', async () => {
    const noColon = 'multileg: -H: a header must look like "Name: value" (one -H has no colon)\n';
    const cases: Array<[string[], number, string]> = [
      [['-H', 'Authorization Bearer eyJSECRET', 'https://localhost:1/'], 2, noColon],
      // A raw key, or a key with '=': its first word is the secret itself.
      [['-H', 'sk_live_123456', 'https://localhost:1/'], 2, noColon],
      [['-H', 'X-Api-Key=sk_live_123456', 'https://localhost:1/'], 2, noColon],
      // curl's 5 ("Unsupported proxy syntax"), not bad usage: this asserted 2, which curl never exits for it.
      [
        ['-x', 'http://proxyuser:proxyPa55@[bad', 'https://localhost:1/'],
        5,
        'multileg: -x http://…@[bad: not a proxy URL (e.g. http://proxy:3128)\n',
      ],
      [
        ['--trust', 'https://u:trustPa55@host/path', 'https://localhost:1/'],
        2,
        "multileg: --trust entry 'https://…@host/path' has user info (an '@') before its host; write an origin like 'https://intranet.example.com' or a pattern like 'https://*.corp.example.com'\n",
      ],
    ];
    for (const [args, code, message] of cases) {
      const r = await run(args);
      expect(r.code, args.join(' ')).toBe(code);
      expect(r.stderr, args.join(' ')).toBe(message);
    }
  });

  it('password from --password-stdin, from MULTILEG_PASSWORD, from --netrc-file; "-u :" sends no password', async () => {
    const url = `${server.origin}/auth/pw`;
    const stdin = await run(['--password-stdin', '-u', 'EXAMPLE\\alice', '--cacert', ca, url], { input: 'alicepw\n' });
    expect(JSON.parse(stdin.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
    const netrc = join(dir, 'netrc');
    writeFileSync(
      netrc,
      `machine elsewhere login x password y\nmachine localhost\n  login "EXAMPLE\\\\bob"\n  password bobpw\n`,
    );
    const fromNetrc = await run(['--netrc-file', netrc, '--cacert', ca, url]);
    expect(JSON.parse(fromNetrc.stdout)).toMatchObject({ user: 'EXAMPLE\\bob' });
    // A refused password from the file: the fix names the file, not -u.
    const wrong = join(dir, 'netrc-wrong');
    writeFileSync(wrong, 'machine localhost login EXAMPLE\\bob password nope\n');
    const refused = await run(['--netrc-file', wrong, '--cacert', ca, url]);
    expect(refused.stderr).toContain(`check the login and password for this host in ${wrong}`);
    // --netrc reads ~/.netrc.
    writeFileSync(join(dir, '.netrc'), 'machine localhost login EXAMPLE\\alice password alicepw\n');
    const home = await run(['--netrc', '--cacert', ca, url], { env: { HOME: dir } });
    expect(JSON.parse(home.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
    const colon = await run(['-u', ':', '--cacert', ca, `${ntlmOnly.origin}/auth/pw`]);
    expect(colon.code).toBe(0);
    expect(colon.stderr).toContain('no credentials');
    expect(
      parseNetrc('default login d password p\nmacdef init\nmachine fake login f\n\nmachine h login u password "a b"'),
    ).toEqual([
      { machine: undefined, login: 'd', password: 'p' },
      { machine: 'h', login: 'u', password: 'a b' },
    ]);
  });

  it("--netrc with the URL's user and no password (https://bob@host/) takes the password of that login's entry, as curl; no entry of that login: asked for as -u's", async () => {
    const host = new URL(server.origin).host;
    const url = `https://EXAMPLE%5Cbob@${host}/auth/pw`;
    const netrc = join(dir, 'netrc-logins');
    writeFileSync(
      netrc,
      'machine localhost login EXAMPLE\\alice password alicepw\nmachine localhost login EXAMPLE\\bob password bobpw\n',
    );
    const bob = await run(['--netrc-file', netrc, '--cacert', ca, url]);
    expect(bob.stderr).toBe('');
    expect(JSON.parse(bob.stdout)).toMatchObject({ user: 'EXAMPLE\\bob' });
    // A refused password: the fix names the file it came from.
    writeFileSync(netrc, 'machine localhost login EXAMPLE\\bob password nope\n');
    const refused = await run(['--netrc-file', netrc, '--cacert', ca, url]);
    expect(refused.stderr).toContain(`check the login and password for this host in ${netrc}`);
    // Only alice's entry: bob's password is not alice's; without a terminal it is asked for by name.
    writeFileSync(netrc, 'machine localhost login EXAMPLE\\alice password alicepw\n');
    const none = await run(['--netrc-file', netrc, '--cacert', ca, url]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain('no password for EXAMPLE\\bob');
    expect(none.stderr).not.toContain('alicepw');
    const env = await run(['--netrc-file', netrc, '--cacert', ca, url], { env: { MULTILEG_PASSWORD: 'bobpw' } });
    expect(JSON.parse(env.stdout)).toMatchObject({ user: 'EXAMPLE\\bob' });
  });

  it('--password-stdin without -u (or a netrc) is bad usage before anything is sent: the password piped in was dropped unread and the request went without credentials (a 401, exit 0)', async () => {
    const before = server.exchanges.length;
    const r = await run(['--password-stdin', '--cacert', ca, `${server.origin}/auth/pw-stdin`], { input: 'alicepw\n' });
    expect(r).toMatchObject({ code: 2, stdout: '' });
    expect(r.stderr).toBe(
      'multileg: --password-stdin reads the password of -u: give -u DOMAIN\\user too (-U takes its password in -U user:password)\n',
    );
    expect(server.exchanges.length).toBe(before);
    // With a netrc whose entry has no password, stdin gives it.
    const netrc = join(dir, 'netrc-login-only');
    writeFileSync(netrc, 'machine localhost login EXAMPLE\\alice\n');
    const fromNetrc = await run(
      ['--password-stdin', '--netrc-file', netrc, '--cacert', ca, `${server.origin}/auth/pw`],
      {
        input: 'alicepw\n',
      },
    );
    expect(JSON.parse(fromNetrc.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
    // Without it (a cron job: no terminal), the message names the netrc entry to complete.
    const sent = server.exchanges.length;
    const none = await run(['--netrc-file', netrc, '--cacert', ca, `${server.origin}/auth/pw`], {
      env: { MULTILEG_PASSWORD: undefined },
    });
    expect(none.code).toBe(2);
    expect(none.stderr).toBe(
      `multileg: no password for EXAMPLE\\alice: ${netrc}'s entry for localhost has a login and no password; add 'password …' to it, pipe it with --password-stdin, or set MULTILEG_PASSWORD\n`,
    );
    expect(server.exchanges.length).toBe(sent);
    // -u with a user alone, no terminal: every way to give the password is named (u8: -K was not).
    const userOnly = await run(['-u', 'EXAMPLE\\alice', '--cacert', ca, `${server.origin}/auth/pw`]);
    expect(userOnly.code).toBe(2);
    expect(userOnly.stderr).toBe(
      'multileg: no password for EXAMPLE\\alice: write -u user:password, pipe it with --password-stdin, put it in a -K file (user = "user:password") or a --netrc-file, or set MULTILEG_PASSWORD\n',
    );
    expect(server.exchanges.length).toBe(sent);
  });

  it("URL globbing ({a,b}, [1-3]), which multileg does not do, is bad usage before anything is sent (one literal URL went, where curl makes several transfers); -g (curl's --globoff) sends {} and [] as they are", async () => {
    const before = server.exchanges.length;
    for (const url of [
      `${server.origin}/auth/{a,b}`,
      `${server.origin}/auth/page[1-3]`,
      `${server.origin}/auth/x?q=[1]`,
    ]) {
      const r = await run([...alice(), url]);
      expect(r, url).toMatchObject({
        code: 2,
        stdout: '',
        stderr:
          'multileg: URL globbing ({a,b}, [1-3]) is not supported: give each URL (the shell can expand {a,b} unquoted), or -g (--globoff) to send {} and [] as they are\n',
      });
    }
    expect(server.exchanges.length).toBe(before);
    // An IPv6 host is no glob; -g sends the URL literally, as curl -g does.
    expect((await run(['-m', '2', 'http://[::1]:1/x'])).code).toBe(7);
    const literal = await run(['-g', ...alice(), `${server.origin}/auth/{a,b}`]);
    expect(literal.code).toBe(0);
    expect(server.exchanges.at(-1)!.path).toBe('/auth/%7Ba,b%7D');
  });

  it("--keytab naming a file that cannot be read is 26 before anything is sent (it ended 0 with the server's 401, the keytab found missing only at the Negotiate challenge)", async () => {
    const before = server.exchanges.length;
    const missing = await run(['--keytab', join(dir, 'no.keytab'), '--cacert', ca, `${server.origin}/auth/kt`]);
    expect(missing).toMatchObject({
      code: 26,
      stdout: '',
      stderr: `multileg: --keytab ${join(dir, 'no.keytab')}: no such file\n`,
    });
    const directory = await run(['--keytab', `FILE:${dir}`, '--cacert', ca, `${server.origin}/auth/kt`]);
    expect(directory).toMatchObject({ code: 26, stderr: `multileg: --keytab ${dir}: is a directory\n` });
    expect(server.exchanges.length).toBe(before);
  });

  it('doctor --help shows its own usage line and what it checks, not the request help alone', async () => {
    const help = await run(['doctor', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: multileg doctor \[options\] <url>\n\nchecks one URL's setup/);
    expect(help.stdout).toContain('--cacert');
    // Its argument is one URL (it said "the URLs to request, one after another", the request's).
    expect(help.stdout).toMatch(/\n {2}url {2,}the URL whose setup to check \(no scheme\s+means https:\/\/\)\n/);
  });

  it('doctor names the request options it takes but does not use (-X, -d, -H, -o, -w, --har, --retry: its requests are GETs, its checks its output) in one warning, which -s hides; its --help says so, and its --url is the one URL (it took them silently: "doctor -X POST -d @body" read as a check of that POST)', async () => {
    const out = join(dir, 'doctor-out.txt');
    const har = join(dir, 'doctor.har');
    const url = `${server.origin}/auth/doctor`;
    const given = [
      '-X',
      'POST',
      '-d',
      'x',
      '-H',
      'X-A: b',
      '-o',
      out,
      '-w',
      '%{http_code}',
      '--har',
      har,
      '--retry',
      '2',
    ];
    const r = await run(['doctor', ...alice(), ...given, url]);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe(
      "multileg doctor: Warning: -X, -H, -d, -o, -w, --har, --retry: not used here (doctor's requests are GETs of the URL, and its checks are its output); run the request itself without doctor for them\n",
    );
    expect(existsSync(out)).toBe(false);
    expect(existsSync(har)).toBe(false);
    expect((await run(['doctor', '-s', ...alice(), '-d', 'x', url])).stderr).toBe('');
    // The options it uses say nothing.
    expect((await run(['doctor', ...alice(), '--http1.1', '-m', '20', url])).stderr).toBe('');
    const help = await run(['doctor', '--help']);
    expect(help.stdout.replace(/\s+/g, ' ')).toContain(
      'its requests are GETs of the URL and its checks its only output: -X, -H, -d, -F, -T, -L, -i, -o, -w, --har, --retry and the like are not used (a warning names them); -v shows its requests on stderr',
    );
    expect(help.stdout).toMatch(/--url <url> +the URL whose setup to check, as given\s+without a flag\n/);
  });

  it("cli: doctor -v shows its own requests on stderr as the command's -v shows a request's legs (credentials redacted), each request named; stdout keeps the checks alone (-v printed nothing but the warning that it was not used)", async () => {
    const url = `${server.origin}/auth/doctor-v`;
    const r = await run(['doctor', '-v', ...alice(), url]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^ok +authentication: /m);
    expect(r.stdout).not.toMatch(/^[*<>] /m);
    expect(r.stderr).not.toContain('not used here');
    expect(r.stderr).not.toContain('alicepw');
    const lines = r.stderr.split('\n');
    const starts = [
      "* doctor: a GET without the server's credentials",
      "* doctor: a GET without the server's credentials, HTTP/1.1 only",
      '* doctor: the authenticated GET',
    ].map((line) => lines.indexOf(line));
    expect(
      starts.every((i, n) => i >= 0 && (n === 0 || i > starts[n - 1]!)),
      r.stderr,
    ).toBe(true);
    // Each request's legs under its line: the probes' 401, then the handshake and its 200.
    expect(lines[starts[0]! + 1]).toBe('> GET /auth/doctor-v (no credentials) [session s1]');
    expect(lines[starts[0]! + 2]).toBe('< 401 offers Negotiate, NTLM [HTTP/2]');
    expect(lines[starts[1]! + 2]).toBe('< 401 offers Negotiate, NTLM [HTTP/1.1]');
    const handshake = lines.slice(starts[2]!);
    expect(handshake).toContain('> GET /auth/doctor-v (Authorization: Negotiate …, Auth-ID: yes) [session s3, HTTP/2]');
    expect(handshake).toContain('< 200 (Persistent-Auth: true) [HTTP/2]');
    // Without -v, none of it.
    expect((await run(['doctor', ...alice(), url])).stderr).toBe('');
  });

  it("doctor's usage errors name doctor and its --help, not the request's (they said 'multileg: missing required argument … (multileg --help lists the options)')", async () => {
    expect(await run(['doctor'])).toMatchObject({
      code: 2,
      stderr: "multileg doctor: missing required argument 'url' (multileg doctor --help lists the options)\n",
    });
    expect(await run(['doctor', '--bogus', `${server.origin}/`])).toMatchObject({
      code: 2,
      stderr: "multileg doctor: unknown option '--bogus' (multileg doctor --help lists the options)\n",
    });
    // The request's own are as before.
    expect((await run(['--bogus', `${server.origin}/`])).stderr).toBe(
      "multileg: unknown option '--bogus' (multileg --help lists the options)\n",
    );
  });

  it("netrc files as curl 8.21: --netrc without one is curl's 26 (8.12.1+), --netrc-optional goes on, $NETRC names it; --netrc-file not there is bad usage (2), unreadable 26", async () => {
    const url = `${server.origin}/auth/netrc`;
    const home = mkdtempSync(join(tmpdir(), 'multileg-home-'));
    const missing = await run(['--netrc', '--cacert', ca, url], { env: { HOME: home } });
    expect(missing).toMatchObject({ code: 26, stdout: '' });
    expect(missing.stderr).toBe(
      `multileg: --netrc ${join(home, '.netrc')}: no such file (--netrc-optional goes on without it)\n`,
    );
    const optional = await run(['--netrc-optional', '--cacert', ca, `${server.origin}/public/`], {
      env: { HOME: home },
    });
    expect(optional).toMatchObject({ code: 0, stderr: '' });
    // $NETRC names the file --netrc and --netrc-optional read (curl 8.16+).
    const named = join(dir, 'named-netrc');
    writeFileSync(named, 'machine localhost login EXAMPLE\\alice password alicepw\n');
    for (const flag of ['--netrc', '--netrc-optional']) {
      const r = await run([flag, '--cacert', ca, url], { env: { HOME: home, NETRC: named } });
      expect(JSON.parse(r.stdout), flag).toMatchObject({ user: 'EXAMPLE\\alice' });
    }
    const noFile = join(dir, 'no-netrc');
    const notThere = await run(['--netrc-file', noFile, '--cacert', ca, url]);
    expect(notThere).toMatchObject({ code: 2, stderr: `multileg: --netrc-file ${noFile}: no such file\n` });
    const directory = await run(['--netrc-file', dir, '--cacert', ca, url]);
    expect(directory).toMatchObject({ code: 26, stderr: `multileg: --netrc-file ${dir}: is a directory\n` });
  });

  it("a file -d or -w @file names that cannot be read is curl's 26 (8.3+), one line; -w @file loses its line breaks, as curl reads it", async () => {
    const missing = join(dir, 'missing.txt');
    for (const flag of ['-d', '--data-binary']) {
      const r = await run([flag, `@${missing}`, `${plainOrigin}/hop/0`]);
      expect(r, flag).toMatchObject({ code: 26, stdout: '', stderr: `multileg: ${flag} ${missing}: no such file\n` });
    }
    const noFormat = await run(['-w', `@${missing}`, `${plainOrigin}/hop/0`]);
    expect(noFormat).toMatchObject({ code: 26, stdout: '', stderr: `multileg: -w ${missing}: no such file\n` });
    const directory = await run(['-w', `@${dir}`, `${plainOrigin}/hop/0`]);
    expect(directory).toMatchObject({ code: 26, stderr: `multileg: -w ${dir}: is a directory\n` });
    const format = join(dir, 'lines.txt');
    writeFileSync(format, '[%{http_code}]\r\n[%{num_redirects}]\\n\n');
    const lines = await run(['-o', join(dir, 'lines.out'), '-w', `@${format}`, `${plainOrigin}/hop/0`]);
    expect(lines).toMatchObject({ code: 0, stdout: '[200][0]\n' });
  });

  it('C10: -d @- and --data-binary @- read the body from stdin, as curl does (-d without its line breaks), and it goes on every leg of the handshake; -w @- reads the format from a socket too; with --password-stdin it is bad usage', async () => {
    const input = 'a=1\nb=2\n';
    const plainBody = await run(['-d', '@-', `${plainOrigin}/hop/0`], { input });
    expect(plainBody).toMatchObject({ code: 0, stdout: 'POST a=1b=2' });
    const binary = await run(['--data-binary', '@-', `${plainOrigin}/hop/0`], { input });
    expect(binary).toMatchObject({ code: 0, stdout: `POST ${input}` });
    // Through an NTLM handshake: the server saw the whole body on the answered leg.
    const authed = await run([...alice(), '--data-binary', '@-', `${server.origin}/auth/stdin`], { input });
    expect(authed.code).toBe(0);
    expect(JSON.parse(authed.stdout)).toMatchObject({
      user: 'EXAMPLE\\alice',
      bodyLength: input.length,
      bodySha256: createHash('sha256').update(input).digest('hex'),
    });
    // -w @- too: stdin is a socket here (child_process), which /dev/stdin cannot open (ENXIO).
    const format = await run(['-o', join(dir, 'stdin.out'), '-w', '@-', `${plainOrigin}/hop/0`], {
      input: '[%{http_code}]\n',
    });
    expect(format).toMatchObject({ code: 0, stdout: '[200]' });
    const both = await run(['-u', 'EXAMPLE\\alice', '--password-stdin', '-d', '@-', `${plainOrigin}/hop/0`], {
      input: 'alicepw\n',
    });
    expect(both).toMatchObject({
      code: 2,
      stdout: '',
      stderr:
        'multileg: --password-stdin and -d @-: only one of them can read stdin; give the password with MULTILEG_PASSWORD (or -u user:password)\n',
    });
    // Nor with -b - or -w @-, which read stdin too.
    const cookies = await run(['-b', '-', '--data-binary', '@-', `${plainOrigin}/hop/0`], { input });
    expect(cookies).toMatchObject({
      code: 2,
      stderr: 'multileg: -b - and --data-binary @-: only one of them can read stdin; give the cookies in a file\n',
    });
    const withFormat = await run(['-w', '@-', '-d', '@-', `${plainOrigin}/hop/0`], { input });
    expect(withFormat).toMatchObject({
      code: 2,
      stderr: 'multileg: -w @- and -d @-: only one of them can read stdin; give the -w format as text or in a file\n',
    });
    // -w @- would swallow the password's line: one reader only, whichever pair it is.
    const formatAndPassword = await run(['-u', 'alice', '--password-stdin', '-w', '@-', `${plainOrigin}/hop/0`], {
      input: 'alicepw\n',
    });
    expect(formatAndPassword).toMatchObject({
      code: 2,
      stdout: '',
      stderr:
        'multileg: -w @- and --password-stdin: only one of them can read stdin; give the -w format as text or in a file\n',
    });
    // --cert - and --key - read stdin too (readFlagFile): the certificate swallowed the password's line.
    const certAndPassword = await run(['--cert', '-', '-u', 'alice', '--password-stdin', `${plainOrigin}/hop/0`], {
      input: 'alicepw\n',
    });
    expect(certAndPassword).toMatchObject({
      code: 2,
      stdout: '',
      stderr:
        'multileg: --password-stdin and --cert -: only one of them can read stdin; give the password with MULTILEG_PASSWORD (or -u user:password)\n',
    });
    const certAndKey = await run(['--cert', '-:phrase', '--key', '-', `${plainOrigin}/hop/0`], { input });
    expect(certAndKey).toMatchObject({
      code: 2,
      stderr: 'multileg: --cert - and --key -: only one of them can read stdin; give the certificate in a file\n',
    });
  });

  it("M1: -u 'DOMAIN/user:password' authenticates with NTLM as DOMAIN\\user, as curl's NTLM reads it (no backslash to escape)", async () => {
    const r = await run(['--ntlm', '-u', 'EXAMPLE/alice:alicepw', '--cacert', ca, `${ntlmOnly.origin}/auth/slash`]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).user).toBe('EXAMPLE\\alice');
  });

  it('leaves stdin alone when the password is on the command line', async () => {
    // process.stdin's getter opens a stream on fd 0 (a pipe there becomes non-blocking for every
    // process sharing it): a password given with -u needs no stdin.
    const real = Object.getOwnPropertyDescriptor(process, 'stdin')!;
    let opened = false;
    Object.defineProperty(process, 'stdin', {
      configurable: true,
      get() {
        opened = true;
        return real.get!.call(process);
      },
    });
    try {
      const credentials = await credentialsFor(parseCli(['-u', 'EXAMPLE\\alice:alicepw', 'https://h.example/']));
      expect(credentials).toEqual({ username: 'EXAMPLE\\alice', password: 'alicepw' });
    } finally {
      Object.defineProperty(process, 'stdin', real);
    }
    expect(opened).toBe(false);
  });

  it('asks for the password on a terminal, without echo', async () => {
    const out = await runOnTerminal(
      ['-u', 'EXAMPLE\\alice', '--cacert', ca, `${server.origin}/auth/tty`],
      'Enter host password',
      'alicepw',
    );
    expect(out).toContain("Enter host password for user 'EXAMPLE\\alice':");
    expect(out).toContain('"user":"EXAMPLE\\\\alice"');
    expect(out).not.toContain('alicepw');
  });

  it('untrusted certificate: exit 60 and how to fix it; --ca-native trusts the system store', async () => {
    const untrusted = await run([`${server.origin}/public/`]);
    expect(untrusted.code).toBe(60);
    expect(untrusted.stderr).toMatch(
      /is not trusted \(\w+\): give its CA with --cacert FILE \(or NODE_EXTRA_CA_CERTS=FILE\), or add --ca-native/,
    );
    // OpenSSL's SSL_CERT_FILE stands in for the operating system's store here.
    const system = await run(['--ca-native', `${server.origin}/public/`], { env: { SSL_CERT_FILE: ca } });
    expect(system.code).toBe(0);
    const withoutFlag = await run([`${server.origin}/public/`], { env: { SSL_CERT_FILE: ca } });
    expect(withoutFlag.code).toBe(60);
    const insecure = await run(['-k', `${server.origin}/public/`]);
    expect(insecure.code).toBe(0);
    // A --cacert of other CAs: the file is what to fix (it said to give a --cacert, the one given); doctor too.
    const other = fileURLToPath(new URL('./fixtures/expired-localhost-cert.pem', import.meta.url));
    const wrongCa = await run(['--cacert', other, `${server.origin}/public/`]);
    expect(wrongCa.code).toBe(60);
    expect(wrongCa.stderr).toMatch(
      new RegExp(
        `is not trusted \\(\\w+\\): --cacert ${other.replaceAll('.', '\\.')} holds no CA that issued it: give that CA's certificate, or add --ca-native`,
      ),
    );
    const doctor = await run(['doctor', '--cacert', other, `${server.origin}/public/`]);
    expect(doctor.stdout).toMatch(
      /^FAIL +TLS: certificate not trusted: .*\n +fix: --cacert \S+ holds no CA that issued it/m,
    );
  });

  it("S4/M4: -k -u keeps curl's behaviour: Basic goes to a server whose certificate was not verified (the command sets allowBasicOverHttp: true, which the agent now needs for it)", async () => {
    const basic = await startReferenceServer({ mode: 'per-request', schemes: ['Basic'] });
    try {
      const r = await run(['-k', '-u', 'EXAMPLE\\alice:alicepw', `${basic.origin}/auth/insecure-basic`]);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ user: 'EXAMPLE\\alice', path: '/auth/insecure-basic' });
      expect(basic.exchanges.map((e) => (e.requestHeaders.authorization as string | undefined)?.split(' ')[0])).toEqual(
        [undefined, 'Basic'],
      );
    } finally {
      await basic.close();
    }
  });

  it('a certificate for other names: exit 60 naming the names it is for and the fix (another name in the URL, not a CA); doctor says the same', async () => {
    // The reference certificate is for localhost and 127.0.0.1; 127.0.0.2 is loopback too, not in it.
    const tls = createHttpsServer({ cert: SERVER_CERT, key: SERVER_KEY }, (_req, res) => res.end('ok'));
    tls.listen(0, '127.0.0.2');
    await once(tls, 'listening');
    const url = `https://127.0.0.2:${(tls.address() as { port: number }).port}/`;
    try {
      const r = await run(['--cacert', ca, url]);
      expect(r.code).toBe(60);
      expect(r.stderr).toBe(
        `multileg: the certificate of ${new URL(url).host} is for localhost, 127.0.0.1, not 127.0.0.2 (ERR_TLS_CERT_ALTNAME_INVALID): use one of those names in the URL; -k skips the check (unsafe)\n`,
      );
      const doctor = await run(['doctor', '--cacert', ca, url]);
      expect(doctor.code).toBe(1);
      expect(doctor.stdout).toContain('FAIL  TLS: the certificate is for localhost, 127.0.0.1, not 127.0.0.2');
      expect(doctor.stdout).toContain('      fix: use one of those names in the URL; -k skips the check (unsafe)\n');
      expect(doctor.stdout).not.toContain('--cacert');
      // An address is no SNI name: doctor's probe sets none, and Node has nothing to warn about (DEP0123).
      expect(doctor.stderr).not.toContain('DEP0123');
    } finally {
      tls.close();
    }
  });

  it('doctor for a server that is down or a host that does not resolve: the TLS check is skipped, not a certificate problem fixed with --cacert', async () => {
    // A port nothing listens on and a name that never resolves (RFC 6761).
    const port = REFUSED_PORT;
    for (const [url, exit, cause] of [
      [`https://127.0.0.1:${port}/x`, 1, 'could not connect to 127.0.0.1'],
      ['https://nonexistent.invalid/x', 1, 'could not resolve host nonexistent.invalid'],
    ] as const) {
      const doctor = await run(['doctor', '--cacert', ca, url]);
      expect(doctor.code).toBe(exit);
      expect(doctor.stdout).toMatch(/^skip +TLS: not checked: no TLS handshake \((ECONNREFUSED|ENOTFOUND)\)\n/m);
      expect(doctor.stdout).not.toContain('certificate not trusted');
      expect(doctor.stdout).not.toContain('--cacert');
      // The cause is named once, where it belongs.
      expect(doctor.stdout).toContain(`FAIL  schemes: the server could not be reached: ${cause}`);
    }
  });

  it("a certificate out of its dates, for real: exit 60, and doctor's fix is the server's certificate or this machine's clock, not --cacert", async () => {
    // Self-signed for localhost, valid 2020-01-01 to 2020-01-02 (openssl ca -startdate/-enddate).
    const cert = readFileSync(new URL('./fixtures/expired-localhost-cert.pem', import.meta.url), 'utf8');
    const key = readFileSync(new URL('./fixtures/expired-localhost-key.pem', import.meta.url), 'utf8');
    const expiredCa = join(dir, 'expired-ca.pem');
    writeFileSync(expiredCa, cert);
    const tls = createHttpsServer({ cert, key }, (_req, res) => res.end('ok'));
    tls.listen(0, '127.0.0.1');
    await once(tls, 'listening');
    const url = `https://localhost:${(tls.address() as { port: number }).port}/`;
    try {
      const r = await run(['--cacert', expiredCa, url]);
      expect(r.code).toBe(60);
      expect(r.stderr).toContain('is not valid now (CERT_HAS_EXPIRED): the server must renew it');
      const doctor = await run(['doctor', '--cacert', expiredCa, url]);
      expect(doctor.code).toBe(1);
      expect(doctor.stdout).toContain('FAIL  TLS: the certificate is not valid now: CERT_HAS_EXPIRED');
      expect(doctor.stdout).toContain("      fix: the server must renew it, or this machine's clock is wrong\n");
      expect(doctor.stdout).not.toContain('--cacert');
    } finally {
      tls.close();
    }
  });

  it("a certificate out of its dates: exit 60, and the fix is the server's certificate or this machine's clock, not a CA", () => {
    const url = new URL('https://intranet.example.com/');
    for (const [code, fix] of [
      ['CERT_HAS_EXPIRED', 'the server must renew it'],
      ['CERT_NOT_YET_VALID', 'the server must use one valid today'],
    ] as const) {
      const failure = describeFailure(Object.assign(new Error('x'), { code }), { url, maxTime: undefined });
      expect(failure.exit).toBe(60);
      expect(failure.message).toBe(
        `the certificate of intranet.example.com is not valid now (${code}): ${fix}, or this machine's clock is wrong; -k skips the check (unsafe)`,
      );
    }
  });

  it("a server that stops answering, past undici's 300 s for a response head or between body bytes: curl's 28 (a timeout, which --retry retries), naming -m", () => {
    const url = new URL('https://intranet.example.com:8443/report');
    const head = describeFailure(
      Object.assign(new Error('Headers Timeout Error'), { code: 'UND_ERR_HEADERS_TIMEOUT' }),
      {
        url,
        maxTime: undefined,
      },
    );
    expect(head).toEqual({
      exit: 28,
      message:
        'intranet.example.com:8443 sent no response for 300 s (UND_ERR_HEADERS_TIMEOUT): the server is stuck or overloaded; -m SECONDS (--max-time) ends the wait sooner',
    });
    const body = describeFailure(Object.assign(new Error('Body Timeout Error'), { code: 'UND_ERR_BODY_TIMEOUT' }), {
      url,
      maxTime: undefined,
      midBody: { received: 3, expected: 100 },
    });
    expect(body.exit).toBe(28);
    expect(body.message).toBe(
      'intranet.example.com:8443 sent nothing more of the body for 300 s (UND_ERR_BODY_TIMEOUT): the server is stuck or overloaded; -m SECONDS (--max-time) ends the wait sooner',
    );
  });

  it('R1: README and docs/RELIABILITY.md give the wait in the library\'s queue the default DEFAULT_LIMITS.queueTimeout has (60 s; the exit codes said "past its 30 s")', () => {
    const seconds = `${DEFAULT_LIMITS.queueTimeout / 1000} s`;
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const reliability = readFileSync(new URL('../docs/RELIABILITY.md', import.meta.url), 'utf8');
    const said = [
      ...readme.matchAll(/the library's queue past its (\d+ s)/g),
      ...readme.matchAll(/\| `limits\.queueTimeout` \| (\d+ s) \|/g),
      ...reliability.matchAll(/\| `limits\.queueTimeout` \| (\d+ s) \|/g),
    ].map((m) => m[1]);
    expect(said).toEqual([seconds, seconds, seconds]);
  });

  it("C11/R1/R3: the library's own time limits (a handshake's, a queue wait's, a proxy's) are curl's 28, as -m's, and --retry-all-errors may retry them", () => {
    const url = new URL('https://intranet.example.com/');
    for (const err of [
      new HandshakeTimeoutError(30_000, 'NTLM'),
      new QueueTimeoutError(30_000),
      new ProxyTimeoutError('http://proxy:3128', 30_000),
    ]) {
      const failure = describeFailure(err, { url, maxTime: undefined });
      expect([failure.exit, failure.refused]).toEqual([28, false]);
      expect(failure.message).toContain(`(${err.code})`);
    }
  });

  it("R3: a --timeout under a second (curl's timeouts count seconds: --timeout 30 is 30 ms) says it counts milliseconds, not only that GSS-API was slow", () => {
    const gss = 'waiting on GSS-API for HTTP@intranet.example.com (the KDC or DNS: check krb5.conf)';
    expect(forCli(new HandshakeTimeoutError(30, 'Negotiate', gss, undefined, true).message)).toBe(
      `Negotiate handshake did not finish within --timeout (30 ms; it counts milliseconds: --timeout 30000 is 30 s): ${gss}`,
    );
    // A timeout of a second or more is told as before.
    expect(forCli(new HandshakeTimeoutError(30_000, 'NTLM').message)).toBe(
      'NTLM handshake did not finish within --timeout (30000 ms); check the server or raise --timeout',
    );
    const help = program().options.find((o) => o.long === '--timeout')?.description;
    expect(help).toBe(
      `handshake timeout in milliseconds, unlike curl's seconds (default ${DEFAULT_LIMITS.handshakeTimeout})`,
    );
  });

  it("S1: the system's NTLM refused for an origin no password may go to (SystemNtlmRefusedError) is curl's 22 for a login it did not make, never retried, and its fix is --trust ORIGIN (it was a bare 1 as MULTILEG_MECHANISM)", () => {
    const url = new URL('https://intranet.example.com/report');
    const failure = describeFailure(new SystemNtlmRefusedError('https://intranet.example.com'), {
      url,
      maxTime: undefined,
    });
    expect([failure.exit, failure.refused]).toEqual([22, true]);
    expect(failure.message).toBe(
      "intranet.example.com offered Negotiate, and the system's Negotiate (SSPI or gss-ntlmssp) answered with NTLM, which proves the logged-on user's password, not with a Kerberos ticket: not sent, as https://intranet.example.com may have no password; give --trust https://intranet.example.com if it is meant to have it, or get a Kerberos ticket it takes (kinit; multileg doctor URL checks the SPN) (MULTILEG_SYSTEM_NTLM_REFUSED)",
    );
  });

  it('C8/H5: a forwarding proxy that closed under a POST it may have read (ProxyClosedError) is curl\'s 52, "Empty reply from server", which only --retry-all-errors retries', () => {
    const url = new URL('http://intranet.example.com/form');
    const failure = describeFailure(new ProxyClosedError('http://proxy:3128', 'POST'), { url, maxTime: undefined });
    expect([failure.exit, failure.refused]).toEqual([52, false]);
    expect(failure.message).toMatch(
      /^proxy http:\/\/proxy:3128 closed its kept-alive connection .* \(MULTILEG_PROXY_CLOSED\)$/,
    );
  });

  it('R1/C8: an origin or proxy that closed the connection partway through a challenge\'s body (ConnectionClosedError challengeCut) is curl\'s 56, "Recv failure" (something came, then the end), not 52', () => {
    const url = new URL('http://intranet.example.com/form');
    const cause = Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' });
    const challengeCut = { status: 401, idempotent: false };
    const origin = describeFailure(
      new ConnectionClosedError('http://intranet.example.com', 'POST', { cause, challengeCut }),
      {
        url,
        maxTime: undefined,
      },
    );
    expect([origin.exit, origin.refused]).toEqual([56, false]);
    expect(origin.message).toContain('closed the connection partway through the body of its 401 challenge to the POST');
    const proxy = describeFailure(
      new ProxyClosedError('http://proxy:3128', 'POST', { cause, challengeCut: { ...challengeCut, status: 407 } }),
      { url, maxTime: undefined },
    );
    expect([proxy.exit, proxy.refused]).toEqual([56, false]);
    expect(proxy.message).toContain(
      'proxy http://proxy:3128 closed the connection partway through the body of its 407 challenge',
    );
  });

  it('C8: an origin that closed a kept-alive connection under a POST it may have read (ConnectionClosedError) is curl\'s 52, "Empty reply from server"; reset, 56; only --retry-all-errors retries either', () => {
    const url = new URL('http://intranet.example.com/form');
    const closed = describeFailure(new ConnectionClosedError('http://intranet.example.com', 'POST'), {
      url,
      maxTime: undefined,
    });
    expect([closed.exit, closed.refused]).toEqual([52, false]);
    expect(closed.message).toMatch(
      /^origin http:\/\/intranet\.example\.com closed its kept-alive connection .* \(MULTILEG_CONNECTION_CLOSED\)$/,
    );
    const cause = Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
    const reset = describeFailure(new ConnectionClosedError('http://intranet.example.com', 'POST', { cause }), {
      url,
      maxTime: undefined,
    });
    expect([reset.exit, reset.refused]).toEqual([56, false]);
  });

  it("C8: an origin that closed a NEW connection under its first request (ConnectionClosedError, fresh) is curl's 52 in the command's words, with the https:// port hint for http://; reset, 56; only --retry-all-errors retries either", () => {
    const url = new URL('http://intranet.example.com/form');
    const closed = describeFailure(new ConnectionClosedError('http://intranet.example.com', 'POST', { fresh: true }), {
      url,
      maxTime: undefined,
    });
    expect(closed).toEqual({
      exit: 52,
      message:
        'empty reply from intranet.example.com: it closed the connection without answering (MULTILEG_CONNECTION_CLOSED); is it an https:// port?',
      refused: false,
    });
    const cause = Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
    const reset = describeFailure(
      new ConnectionClosedError('https://intranet.example.com:8443', 'GET', { fresh: true, cause }),
      { url: new URL('https://intranet.example.com:8443/'), maxTime: undefined },
    );
    expect(reset).toEqual({
      exit: 56,
      message: 'intranet.example.com:8443 reset the connection (MULTILEG_CONNECTION_CLOSED)',
      refused: false,
    });
  });

  it('network failures exit with curl codes: 7 refused, 28 --connect-timeout and --max-time, 35 https to a plain port, 56 closed', async () => {
    const port = REFUSED_PORT;
    const refused = await run([`https://127.0.0.1:${port}/`]);
    expect(refused.code).toBe(7);
    expect(refused.stderr).toBe(`multileg: could not connect to 127.0.0.1:${port} (ECONNREFUSED)\n`);
    const connect = await run(['--connect-timeout', '0.3', `https://127.0.0.1:${silentPort}/`]);
    expect(connect.code).toBe(28);
    expect(connect.stderr).toContain('--connect-timeout');
    const slow = await run(['-m', '0.3', `${plainOrigin}/hang`]);
    expect(slow.code).toBe(28);
    expect(slow.stderr).toBe('multileg: operation timed out after 300 ms (--max-time)\n');
    // --max-time bounds the connection too: not undici's 10 s connect timeout.
    const stalled = await run(['-m', '0.3', `https://127.0.0.1:${silentPort}/`]);
    expect(stalled.code).toBe(28);
    expect(stalled.stderr).toBe('multileg: operation timed out after 300 ms (--max-time)\n');
    // https:// to a plain-HTTP port: curl's 35, one line (not OpenSSL's two), the likely fix.
    const tlsToPlain = await run([`https://127.0.0.1:${new URL(plainOrigin).port}/`]);
    expect(tlsToPlain.code).toBe(35);
    expect(tlsToPlain.stderr).toBe(
      `multileg: ${new URL(plainOrigin).host} did not speak TLS: is it an http:// port? (ERR_SSL_WRONG_VERSION_NUMBER)\n`,
    );
    // Plain HTTP to the TLS port: the server closes the connection without a byte (curl's 52), now
    // the library's ConnectionClosedError (fresh), not undici's UND_ERR_SOCKET (C8).
    const plainToTls = await run([`http://localhost:${server.port}/public/`]);
    expect(plainToTls.code).toBe(52);
    expect(plainToTls.stderr).toBe(
      `multileg: empty reply from localhost:${server.port}: it closed the connection without answering (MULTILEG_CONNECTION_CLOSED); is it an https:// port?\n`,
    );
  });

  it("a response undici cannot frame exits as curl 7.88 does on the same bytes: 8 for a head it cannot read (a header without a colon, a bad or second Content-Length, Content-Length with Transfer-Encoding), 56 for a broken chunked body, 1 for a status line that is not HTTP's", async () => {
    const replies: Record<string, string> = {
      'bad-length': 'HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello',
      'no-colon': 'HTTP/1.1 200 OK\r\nX-Broken header\r\nContent-Length: 5\r\n\r\nhello',
      'two-lengths': 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!',
      'length-and-chunked':
        'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
      'bad-chunk': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nxx\r\n0\r\n\r\n',
      'bad-status': 'HTTP/1.1 2x0 OK\r\nContent-Length: 5\r\n\r\nhello',
      'http-0.9': 'hello there\r\n\r\n',
    };
    const broken = createTcpServer((s) => {
      s.on('error', () => {});
      s.once('data', (d) => s.end(replies[d.toString().split(' ')[1]?.slice(1) ?? ''] ?? ''));
    });
    try {
      const at = `127.0.0.1:${await listen(broken)}`;
      const exits: Record<string, [number | null, string]> = {};
      for (const name of Object.keys(replies)) {
        const r = await run(['-sS', '-o', '/dev/null', `http://${at}/${name}`]);
        exits[name] = [r.code, r.stderr];
      }
      expect(Object.fromEntries(Object.entries(exits).map(([k, [code]]) => [k, code]))).toEqual({
        'bad-length': 8,
        'no-colon': 8,
        'two-lengths': 8,
        'length-and-chunked': 8,
        'bad-chunk': 56,
        'bad-status': 1,
        'http-0.9': 1,
      });
      // One line naming the server and llhttp's reason, not undici's stack or its bare words.
      expect(exits['no-colon']?.[1]).toBe(
        `multileg: ${at} sent a response that is not valid HTTP/1.1 (Invalid header token): the server, or something between, is broken\n`,
      );
    } finally {
      broken.close();
    }
  });

  it("C8: a server that closes the connection without a response is curl's 52 (empty reply), one that resets it or cuts its head short 56; through a proxy: 52 forwarded (56 reset, C8), 56 for a CONNECT the proxy closes", async () => {
    const peers: Socket[] = [];
    // Reads the request, then closes (or resets) without a byte.
    const closing = createTcpServer((s) => {
      peers.push(s);
      s.on('error', () => {});
      s.once('data', () => s.end());
    });
    const resetting = createTcpServer((s) => {
      peers.push(s);
      s.on('error', () => {});
      s.once('data', () => s.resetAndDestroy());
    });
    try {
      const closed = `127.0.0.1:${await listen(closing)}`;
      const reset = `127.0.0.1:${await listen(resetting)}`;
      const empty = await run(['-w', '%{http_code} %{exitcode}', `http://${closed}/x`]);
      expect(empty).toMatchObject({
        code: 52,
        stdout: '000 52',
        // C8: the library's ConnectionClosedError (fresh), no longer undici's UND_ERR_SOCKET / ECONNRESET.
        stderr: `multileg: empty reply from ${closed}: it closed the connection without answering (MULTILEG_CONNECTION_CLOSED); is it an https:// port?\n`,
      });
      // A head cut short is no empty reply: curl's 56, as README says, with how much of it came.
      const cutting = createTcpServer((s) => {
        peers.push(s);
        s.on('error', () => {});
        s.once('data', () => s.end('HTTP/1.1 200 OK\r\nContent-Le'));
      });
      const cut = `127.0.0.1:${await listen(cutting)}`;
      expect(await run([`http://${cut}/x`])).toMatchObject({
        code: 56,
        stderr: `multileg: ${cut} closed the connection after 27 bytes of a response head, before its end (MULTILEG_CONNECTION_CLOSED)\n`,
      });
      cutting.close();
      const byReset = await run([`http://${reset}/x`]);
      expect(byReset).toMatchObject({
        code: 56,
        stderr: `multileg: ${reset} reset the connection (MULTILEG_CONNECTION_CLOSED)\n`,
      });
      // A forwarding proxy that closes is the server that gave nothing; a CONNECT cut off is curl's 56.
      const forwarded = await run(['-x', `http://${closed}`, `${plainOrigin}/hop/0`]);
      expect(forwarded.code).toBe(52);
      // C8: the proxy named, not the origin as the server that gave nothing (curl 7.88 -x: 52, and 56 reset).
      expect(forwarded.stderr).toMatch(
        new RegExp(
          `^multileg: proxy http://${closed} closed a new connection without answering the GET .*\\(MULTILEG_PROXY_CLOSED\\)\n$`,
        ),
      );
      const forwardedReset = await run(['-x', `http://${reset}`, `${plainOrigin}/hop/0`]);
      expect(forwardedReset.code).toBe(56);
      expect(forwardedReset.stderr).toMatch(
        /^multileg: proxy http:\/\/\S+ reset a new connection .*\(MULTILEG_PROXY_CLOSED\)\n$/,
      );
      const tunnel = await run(['-x', `http://${closed}`, `${server.origin}/public/`]);
      expect(tunnel.code).toBe(56);
      expect(tunnel.stderr).toMatch(
        /^multileg: proxy http:\/\/127\.0\.0\.1:\d+: the proxy closed the connection; .*\(MULTILEG_PROXY_PROTOCOL\)\n$/,
      );
    } finally {
      for (const p of peers) p.destroy();
      closing.close();
      resetting.close();
    }
  });

  it("R1/C8/H5: a proxy that closes the connection partway through the body of its 407 to a CONNECT is curl's 56, as a forwarding proxy's cut 407 is, the proxy, the CONNECT and the 407 named (MULTILEG_PROXY_CLOSED)", async () => {
    const peers: Socket[] = [];
    // A 407 head (Basic) and part of its body, then the close.
    const cutting = createTcpServer((s) => {
      peers.push(s);
      s.on('error', () => {});
      s.once('data', () =>
        s.end(
          'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="p"\r\nContent-Length: 100\r\n\r\n<html>407',
        ),
      );
    });
    try {
      const proxy = `http://127.0.0.1:${await listen(cutting)}`;
      const r = await run(['-x', proxy, '-U', 'u:pw', '--proxy-basic', 'https://origin.example:8443/x']);
      // Before: "proxy …: the proxy closed the connection; check the proxy address and that it is an
      // HTTP proxy (MULTILEG_PROXY_PROTOCOL)", which named no 407.
      expect(r.code).toBe(56);
      expect(r.stderr).toMatch(
        new RegExp(
          `^multileg: proxy ${proxy} closed the connection partway through the body of its 407 challenge to the CONNECT origin\\.example:8443 .*\\(MULTILEG_PROXY_CLOSED\\)\n$`,
        ),
      );
    } finally {
      for (const p of peers) p.destroy();
      cutting.close();
    }
  });

  it('a plain http:// request to a port that answers in TLS (an alert record) is curl 7.88\'s 1 ("Received HTTP/0.9"), with the https:// port hint', async () => {
    const peers: Socket[] = [];
    // What a TLS server may send back for a plain request: an alert record (fatal, protocol_version).
    const alerting = createTcpServer((s) => {
      peers.push(s);
      s.on('error', () => {});
      s.once('data', () => s.end(Buffer.from('15030100020246', 'hex')));
    });
    try {
      const host = `127.0.0.1:${await listen(alerting)}`;
      const plain = await run([`http://${host}/x`]);
      // Before: undici's "Response does not match the HTTP/1.1 protocol (Expected HTTP/, RTSP/ or ICE/)", no hint.
      expect(plain).toMatchObject({
        code: 1,
        stderr: `multileg: ${host} answered in TLS, not HTTP: is it an https:// port? (Response does not match the HTTP/1.1 protocol (Expected HTTP/, RTSP/ or ICE/))\n`,
      });
    } finally {
      for (const p of peers) p.destroy();
      alerting.close();
    }
  });

  it("H5: a forwarding proxy answering what is not HTTP is curl 7.88's 1, the proxy named (MULTILEG_PROXY_PROTOCOL); its TLS alert no https:// port hint for the origin; the same through a CONNECT 56", async () => {
    const peers: Socket[] = [];
    const answering = (bytes: Buffer) =>
      createTcpServer((s) => {
        peers.push(s);
        s.on('error', () => {});
        s.once('data', () => s.end(bytes));
      });
    const garbage = answering(Buffer.from('XYZ\r\n\r\n'));
    const alerting = answering(Buffer.from('15030100020246', 'hex'));
    try {
      const bad = `http://127.0.0.1:${await listen(garbage)}`;
      const tls = `http://127.0.0.1:${await listen(alerting)}`;
      // Before: undici's bare "Response does not match the HTTP/1.1 protocol …", and for the TLS
      // record "origin.example answered in TLS …: is it an https:// port?", the proxy's fault put on the origin.
      const forwarded = await run(['-x', bad, 'http://origin.example/x']);
      expect(forwarded.code).toBe(1);
      expect(forwarded.stderr).toMatch(
        new RegExp(
          `^multileg: proxy ${bad}: its answer to a request forwarded to http://origin\\.example cannot be read as HTTP/1\\.1 .*\\(MULTILEG_PROXY_PROTOCOL\\)\n$`,
        ),
      );
      const inTls = await run(['-x', tls, 'http://origin.example/x']);
      expect(inTls.code).toBe(1);
      expect(inTls.stderr).toMatch(
        new RegExp(`^multileg: proxy ${tls}: it answered in TLS, not HTTP: an https:// proxy given as http://\\? `),
      );
      const tunnel = await run(['-x', bad, 'https://origin.example/x']);
      expect(tunnel.code).toBe(56);
      expect(tunnel.stderr).toContain('(MULTILEG_PROXY_PROTOCOL)');
    } finally {
      for (const p of peers) p.destroy();
      garbage.close();
      alerting.close();
    }
  });

  it("a body cut short (the server closes mid-body) is curl's 18, in one line, with no https hint; to -o too", async () => {
    const url = `${plainOrigin}/truncated`;
    const shown = await run([url]);
    expect(shown.code).toBe(18);
    expect(shown.stdout).toBe('0123456789');
    expect(shown.stderr).toBe(
      `multileg: ${new URL(plainOrigin).host} closed the connection with 90 bytes of the body still to come (UND_ERR_SOCKET)\n`,
    );
    // The transfer failed, not the file: not 23 "-o: cannot write it".
    const file = join(dir, 'truncated.out');
    const toFile = await run(['-o', file, url]);
    expect(toFile.code).toBe(18);
    expect(toFile.stderr).toBe(shown.stderr);
    expect(readFileSync(file, 'utf8')).toBe('0123456789');
  });

  it('--fail-with-body: on HTTP >= 400 exit 22 with the head (-i) and body still shown; it wins over -f (curl 8)', async () => {
    for (const args of [['--fail-with-body'], ['-f', '--fail-with-body']]) {
      const r = await run([...args, '-i', `${plainOrigin}/bearer`]);
      expect(r.code, args.join(' ')).toBe(22);
      expect(r.stdout).toMatch(/^HTTP\/1\.1 401 Unauthorized\r\n[\s\S]*\r\n\r\nno$/);
      expect(r.stderr).toContain('multileg: (22) HTTP 401\n');
    }
    expect(await run(['--fail-with-body', `${plainOrigin}/hop/0`])).toMatchObject({ code: 0, stdout: 'GET ' });
  });

  it('-s hides error messages, -S shows them again', async () => {
    const silent = await run(['-s', '-f', '--cacert', ca, `${ntlmOnly.origin}/auth/x`]);
    expect(silent).toMatchObject({ code: 22, stderr: '' });
    const shown = await run(['-sS', '-f', '--cacert', ca, `${ntlmOnly.origin}/auth/x`]);
    expect(shown.stderr).toContain('(22) HTTP 401');
  });

  it('-w writes %{http_code}, %{time_total}, %{num_connects} and friends', async () => {
    const { stdout } = await run([
      '-o',
      join(dir, 'w.out'),
      '-w',
      '%{http_code} %{num_connects} %{http_version} %{num_redirects}\\n%{time_total}',
      ...alice(),
      `${server.origin}/auth/w`,
    ]);
    const [first, time] = stdout.split('\n');
    expect(first).toBe('200 1 2 0');
    expect(Number(time)).toBeGreaterThan(0);
    expect(writeOut('%% \\t%{exitcode}', { exitcode: '22' })).toEqual([{ to: 'stdout', text: '% \t22' }]);
  });

  it("-w %{num_connects} counts the connections made, as curl's: none for a refused one, then one for the next URL's; one whose TLS handshake failed", async () => {
    const port = REFUSED_PORT;
    const r = await run([
      ...alice(),
      '-w',
      '%{http_code} %{num_connects}\n',
      '-o',
      '/dev/null',
      `https://127.0.0.1:${port}/`,
      '-o',
      '/dev/null',
      `${server.origin}/auth/connects`,
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('000 0\n200 1\n');
    // A TLS handshake that fails (no --cacert) came after a TCP connection: curl counts it.
    const untrusted = await run(['-s', '-w', '%{num_connects}', '-o', '/dev/null', `${server.origin}/public/`]);
    expect(untrusted).toMatchObject({ code: 60, stdout: '1' });
  });

  it('-w as curl: @file, %{stderr}/%{stdout}, content_type, remote_ip, remote_port, redirect_url, errormsg; num_redirects within --max-redirs', async () => {
    const format = join(dir, 'format.txt');
    writeFileSync(
      format,
      '%{response_code} [%{content_type}] %{remote_ip} %{remote_port} [%{redirect_url}] [%{errormsg}]%{stderr}to stderr%{stdout}\\n',
    );
    const ok = await run(['-o', join(dir, 'w2.out'), '-w', `@${format}`, ...alice(), `${server.origin}/auth/w2`]);
    expect(ok.code).toBe(0);
    // (localhost: IPv4 or IPv6, as this machine resolves it)
    expect(ok.stdout).toMatch(
      new RegExp(`^200 \\[application/json\\] (127\\.0\\.0\\.1|::1) ${server.port} \\[\\] \\[\\]\\n$`),
    );
    expect(ok.stderr).toBe('to stderr');
    // Not followed: where it would go. Followed as far as --max-redirs allows: 2 of 3, exit 47.
    const hops = `${plainOrigin}/hop/3`;
    const notFollowed = await run(['-w', '%{http_code} %{num_redirects} %{redirect_url}', hops]);
    expect(notFollowed.stdout).toBe(`302 0 ${plainOrigin}/hop/2`);
    const stopped = await run(['-L', '--max-redirs', '2', '-w', '%{num_redirects} [%{errormsg}] %{exitcode}', hops]);
    expect(stopped.code).toBe(47);
    expect(stopped.stdout).toBe('2 [maximum (2) redirects followed (--max-redirs)] 47');
  });

  it('methods as curl: -X patch goes as given; -L keeps -X POST on a 302 (without the body); -I with -d is refused', async () => {
    const lines: string[] = [];
    const raw = createTcpServer((socket) => {
      socket.once('data', (d: Buffer) => {
        lines.push(d.toString('latin1').split('\r\n', 1)[0]!);
        socket.end('HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      });
      socket.on('error', () => {});
    });
    try {
      const port = await listen(raw);
      expect((await run(['-X', 'patch', `http://127.0.0.1:${port}/m`])).code).toBe(0);
      expect(lines).toEqual(['patch /m HTTP/1.1']);
    } finally {
      raw.close();
    }
    const custom = await run(['-L', '-X', 'POST', '-d', 'x', `${plainOrigin}/hop/2`]);
    expect(custom).toMatchObject({ code: 0, stdout: 'POST ' });
    // Without -X, a 302 turns the POST into a GET (curl's, browsers').
    expect((await run(['-L', '-d', 'x', `${plainOrigin}/hop/2`])).stdout).toBe('GET ');
    const both = await run(['-I', '-d', 'x', `${plainOrigin}/hop/0`]);
    expect(both.code).toBe(2);
    expect(both.stderr).toBe('multileg: -I and -d: you can only select one HTTP request method (HEAD or POST)\n');
  });

  it('S2: curl\'s --trace and --trace-ascii (a dump of every byte, secrets too) are bad usage that points to -v and --har, not "Did you mean --ccache?"', async () => {
    for (const args of [['--trace', 'dump.txt'], ['--trace-ascii', '-'], ['--trace-ascii=dump.txt']]) {
      const r = await run([...args, `${plainOrigin}/hop/0`]);
      const option = args[0]!.replace(/=.*/, '');
      expect([r.code, r.stderr, r.stdout], args.join(' ')).toEqual([
        2,
        `multileg: ${option} is not supported: -v shows each leg's request and response (credentials redacted), --har FILE writes them all (multileg --help lists the options)\n`,
        '',
      ]);
    }
  });

  it('cli: doctor --trace and --trace-ascii are bad usage that points to -v alone, which doctor uses; not to --har, which its warning names as not used (it pointed to both)', async () => {
    for (const args of [['--trace', 'dump.txt'], ['--trace-ascii', '-'], ['--trace-ascii=dump.txt']]) {
      const r = await run(['doctor', ...args, `${plainOrigin}/hop/0`]);
      const option = args[0]!.replace(/=.*/, '');
      expect([r.code, r.stderr, r.stdout], args.join(' ')).toEqual([
        2,
        `multileg doctor: ${option} is not supported: -v shows each leg's request and response (credentials redacted) (multileg doctor --help lists the options)\n`,
        '',
      ]);
    }
  });

  it('usage as curl: --max-redirs -1 is no limit; "Did you mean" in one line; an empty --password-stdin is an error; -n is --netrc', async () => {
    const unlimited = await run(['-L', '--max-redirs', '-1', '-w', ' %{num_redirects}', `${plainOrigin}/hop/60`]);
    expect(unlimited).toMatchObject({ code: 0, stdout: 'GET  60' });
    const negative = await run(['--max-redirs', '-2', `${plainOrigin}/hop/0`]);
    expect(negative.code).toBe(2);
    expect(negative.stderr).toContain('-1 for no limit');
    const typo = await run(['--locaton', `${plainOrigin}/hop/0`]);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toBe(
      "multileg: unknown option '--locaton' (Did you mean --location?) (multileg --help lists the options)\n",
    );
    for (const input of ['', '\n']) {
      const empty = await run(['-u', 'EXAMPLE\\alice', '--password-stdin', `${plainOrigin}/hop/0`], { input });
      expect(empty.code, JSON.stringify(input)).toBe(2);
      expect(empty.stderr).toBe('multileg: --password-stdin: stdin has no password (its first line is empty)\n');
    }
    const home = mkdtempSync(join(tmpdir(), 'multileg-home-'));
    writeFileSync(join(home, '.netrc'), 'machine localhost login EXAMPLE\\alice password alicepw\n');
    const netrc = await run(['-n', '--cacert', ca, `${server.origin}/auth/n`], { env: { HOME: home } });
    expect(JSON.parse(netrc.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
  });

  it('piping into head that goes away is curl\'s 23 (a write error: curl 7.88 exits 23, "Failure writing output to destination"), said once, no unhandled EPIPE; -s says nothing (trial u20: it exited 0)', async () => {
    const r = await runCommand('bash', [
      '-c',
      `set -o pipefail; ${process.execPath} ${NODE_ARGS.join(' ')} ${BIN} ${plainOrigin}/big | head -c 10`,
    ]);
    expect([r.code, r.stdout, r.stderr]).toEqual([
      23,
      'xxxxxxxxxx',
      'multileg: stdout: its reader went away (EPIPE)\n',
    ]);
    const silent = await runCommand('bash', [
      '-c',
      `set -o pipefail; ${process.execPath} ${NODE_ARGS.join(' ')} ${BIN} -s ${plainOrigin}/big | head -c 10`,
    ]);
    expect([silent.code, silent.stdout, silent.stderr]).toEqual([23, 'xxxxxxxxxx', '']);
  });

  it("a reader of stdout gone before anything is written: curl's 23 for a body and for -I's head, 0 where only -w or --json was lost (curl ignores -w's write errors), -f's 22 stays (trial u20)", async () => {
    // The reader (`true`) is gone before the command writes: every write is EPIPE.
    const gone = (args: string) =>
      runCommand('bash', [
        '-c',
        `set -o pipefail; (sleep 0.3; ${process.execPath} ${NODE_ARGS.join(' ')} ${BIN} -sS ${args}) | true`,
      ]);
    const epipe = 'multileg: stdout: its reader went away (EPIPE)\n';
    for (const [args, code, stderr] of [
      [`${plainOrigin}/bearer`, 23, epipe],
      [`-I ${plainOrigin}/bearer`, 23, epipe],
      [`-i ${plainOrigin}/bearer`, 23, epipe],
      [`-o /dev/null -w '%{http_code}' ${plainOrigin}/bearer`, 0, ''],
      [`--json ${plainOrigin}/bearer`, 0, ''],
      [`-f ${plainOrigin}/bearer`, 22, expect.stringMatching(/^(?![\s\S]*EPIPE)[\s\S]*multileg: \(22\) HTTP 401\n$/)],
    ] as const) {
      const r = await gone(args);
      expect([r.code, r.stderr], `${args}: ${r.stderr}`).toEqual([code, stderr]);
    }
  });

  it("many URLs to stdout leave stderr empty, and piping them into head is curl's 23 for each, not a crash (u8: from the 11th URL Node warned of an EventEmitter leak on stdout; with three into head the command exited 13; trial u20: 0 where curl says 23)", async () => {
    const urls = Array.from({ length: 12 }, () => `${plainOrigin}/bearer`);
    const r = await run(['-sS', ...urls]);
    expect([r.code, r.stdout, r.stderr]).toEqual([0, 'no'.repeat(12), '']);
    const piped = await runCommand('bash', [
      '-c',
      `set -o pipefail; ${process.execPath} ${NODE_ARGS.join(' ')} ${BIN} -sS ${plainOrigin}/big ${plainOrigin}/big ${plainOrigin}/big | head -c 10`,
    ]);
    // curl 7.88: "(23) Failure writing output to destination" once per URL, exit 23.
    expect([piped.code, piped.stdout, piped.stderr]).toEqual([
      23,
      'xxxxxxxxxx',
      'multileg: stdout: its reader went away (EPIPE)\n'.repeat(3),
    ]);
  });

  it('piping doctor into head is not an error either (EPIPE): the checks run on, their verdict is the exit code', async () => {
    const r = await runCommand('bash', [
      '-c',
      `set -o pipefail; ${process.execPath} ${NODE_ARGS.join(' ')} ${BIN} doctor ${plainOrigin}/hop/0 | head -n 1`,
    ]);
    expect(r.stdout).toBe(`multileg doctor ${plainOrigin}/hop/0\n`);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('-v into a reader that goes away (2>&1 >file | head) is not an error: the body still comes, exit 0, as curl', async () => {
    const out = join(dir, 'verbose-epipe.json');
    const r = await runCommand('bash', [
      '-c',
      `set -o pipefail; ${process.execPath} ${NODE_ARGS.join(' ')} ${BIN} -v -u 'EXAMPLE\\alice:alicepw' --cacert ${ca} ${server.origin}/auth/v-head 2>&1 >${out} | head -n 1`,
    ]);
    expect(r.stdout).toBe('> GET /auth/v-head (no credentials) [session s1]\n');
    expect(r.code).toBe(0);
    expect(JSON.parse(readFileSync(out, 'utf8'))).toMatchObject({ user: 'EXAMPLE\\alice' });
  });

  it('S1: trusts exactly the URL origin; -L follows without credentials elsewhere; --location-trusted and --trust send them', async () => {
    const target = `${other.origin}/auth/moved`;
    const redirect = `${server.origin}/public/redirect?to=${encodeURIComponent(target)}`;
    const user = ['-u', 'EXAMPLE\\alice:alicepw', '--cacert', ca];
    other.exchanges.length = 0;
    const notFollowed = await run([...user, '-i', redirect]);
    expect(notFollowed.stdout).toMatch(/^HTTP\/2 302 \r\n/);
    expect(other.exchanges).toHaveLength(0);

    const followed = await run([...user, '-L', '-H', 'Authorization: Basic c2VjcmV0', redirect]);
    expect(followed.code).toBe(0);
    expect(JSON.parse(followed.stdout)).toMatchObject({ user: null });
    expect(other.exchanges.length).toBeGreaterThan(0);
    for (const e of other.exchanges) expect(e.requestHeaders.authorization).toBeUndefined();
    expect(followed.stderr).toContain(
      `no credentials were sent: ${other.origin} is not the URL's origin (a redirect led here); add --trust ${other.origin} or use --location-trusted`,
    );

    const trusted = await run([...user, '--location-trusted', redirect]);
    expect(JSON.parse(trusted.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
    const listed = await run([...user, '-L', '--trust', other.origin, redirect]);
    expect(JSON.parse(listed.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });

    const sameOrigin = await run([...user, '-L', `${server.origin}/public/redirect?to=/auth/same`]);
    expect(JSON.parse(sameOrigin.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
    const tooMany = await run([...user, '-L', '--max-redirs', '0', redirect]);
    expect(tooMany.code).toBe(47);
    expect(tooMany.stderr).toContain('maximum (0) redirects followed (--max-redirs)');
  });

  it("S1/S5: netrc credentials go to their own host only (curl CVE-2024-11053, CVE-2025-0167): --location-trusted and --trust do not carry localhost's entry to a host the file gives an entry of its own (a login without a password, an empty or another default); said, with the file; a host it says nothing of gets them, as curl's --location-trusted sends them, and so does one whose entry is the same", async () => {
    const port = new URL(other.origin).port;
    const target = `https://127.0.0.1:${port}`;
    const redirect = `${server.origin}/public/redirect?to=${encodeURIComponent(`${target}/auth/netrc-hop`)}`;
    const alices = 'machine localhost login EXAMPLE\\alice password alicepw\n';
    const hop = async (name: string, text: string, flags: readonly string[]) => {
      const file = join(dir, `netrc-hop-${name}`);
      writeFileSync(file, text);
      other.exchanges.length = 0;
      const r = await run(['--netrc-file', file, '--cacert', ca, ...flags, redirect]);
      expect(r.code, name).toBe(0);
      const sent = other.exchanges.filter((e) => e.requestHeaders.authorization !== undefined);
      return { r, file, user: JSON.parse(r.stdout).user as string | null, sent: sent.length };
    };
    for (const [name, text] of [
      // CVE-2024-11053: the hop's host has an entry without a password (curl sent localhost's).
      ['login-only', `${alices}machine 127.0.0.1 login EXAMPLE\\bob\n`],
      // CVE-2025-0167: an empty default entry.
      ['empty-default', `${alices}default\n`],
      // Another account for every other host.
      ['other-default', `${alices}default login EXAMPLE\\bob password bobpw\n`],
    ] as const) {
      for (const flags of [['--location-trusted'], ['-L', '--trust', target]]) {
        const { r, file, user, sent } = await hop(name, text, flags);
        expect({ name, flags, user, sent }).toEqual({ name, flags, user: null, sent: 0 });
        expect(r.stderr).toContain(
          `${target} answered 401 and offered Negotiate, NTLM; no credentials were sent: ${file} gives 127.0.0.1 credentials of its own (its entry, or the default one), and netrc credentials go to their own host only, whatever --trust or --location-trusted say: request ${target} in a command of its own, or give -u`,
        );
        if (flags[0] === '--location-trusted')
          expect(r.stderr).toContain(
            `multileg: Warning: --location-trusted: no credentials go to ${target}: ${file} gives 127.0.0.1`,
          );
        else expect(r.stderr).not.toContain('Warning');
      }
    }
    // The file says nothing of 127.0.0.1, or gives it the same login and password: sent.
    for (const [name, text] of [
      ['silent', alices],
      ['same', `${alices}machine 127.0.0.1 login EXAMPLE\\alice password alicepw\n`],
    ] as const) {
      const { r, user } = await hop(name, text, ['--location-trusted']);
      expect({ name, user }).toEqual({ name, user: 'EXAMPLE\\alice' });
      expect(r.stderr).toBe('');
    }
    // Without them, -L sends nothing there (S5), whatever the file says.
    const plainL = await hop('plain-l', `${alices}machine 127.0.0.1 login EXAMPLE\\alice password alicepw\n`, ['-L']);
    expect(plainL.sent).toBe(0);
  });

  it("-L: a Location that is not an http(s) URL (file:, ftp:, javascript:) is not followed, curl's 1; one that is no URL, curl's 3; each in one line naming where the redirect came from, never the Location (it said undici's \"Invalid URL\")", async () => {
    for (const [location, code, said] of [
      ['file:///etc/passwd', 1, 'leads to a file: URL; -L follows http:// and https:// only'],
      ['ftp://alice:secret@127.0.0.1/x', 1, 'leads to a ftp: URL; -L follows http:// and https:// only'],
      ['javascript:alert(1)', 1, 'leads to a javascript: URL; -L follows http:// and https:// only'],
      ['http://[secret/x', 3, 'has a Location that is not a URL; not followed'],
    ] as const) {
      const r = await run([
        '-L',
        '-w',
        '%{http_code} %{num_redirects}',
        `${plainOrigin}/to-location?${encodeURIComponent(location)}`,
      ]);
      expect({ location, code: r.code, stderr: r.stderr, stdout: r.stdout }).toEqual({
        location,
        code,
        stderr: `multileg: the redirect from ${plainOrigin} ${said}\n`,
        stdout: '302 0',
      });
    }
  });

  it("--json -o FILE: the report on stdout and the body in the file, as curl's -w '%{json}' -o does (the body was dropped without a word: a CI job's download and its report in one run got the report alone; trial u18)", async () => {
    const body = join(dir, 'json-body.json');
    const r = await run(['--json', '-o', body, ...alice(), `${server.origin}/auth/json-o`]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ status: 200, exitCode: 0 });
    expect(JSON.parse(readFileSync(body, 'utf8'))).toMatchObject({ user: 'EXAMPLE\\alice' });
    // Without -o the report alone, as before: no body on stdout beside it.
    const alone = await run(['--json', ...alice(), `${server.origin}/auth/json-alone`]);
    expect(JSON.parse(alone.stdout)).toMatchObject({ status: 200 });
  });

  it('--json says what stderr says and -s hides: `error`, the failure that set exitCode (-w %{errormsg}), and `reason`, why a final 401 stood — a monitoring check reading --json -s had only an exit code, or a 401 and no word of why (trial u18)', async () => {
    const report = async (args: string[]) => {
      const r = await run(['--json', ...args]);
      return { code: r.code, stderr: r.stderr, json: JSON.parse(r.stdout) };
    };
    const ntlm = `${ntlmOnly.origin}/auth/why`;
    // The 401 without -u: the reason stderr gives without -s, in the report with -s, stderr quiet.
    const loud = await report(['--cacert', ca, ntlm]);
    const quiet = await report(['-s', '--cacert', ca, ntlm]);
    expect(loud.stderr).toMatch(/^multileg: .+\n$/);
    expect(quiet.stderr).toBe('');
    for (const r of [loud, quiet])
      expect(r.json).toMatchObject({ status: 401, exitCode: 0, error: null, reason: loud.stderr.slice(10, -1) });
    expect(quiet.json.reason).toContain('NTLM');
    // -f: exit 22, its error beside the reason — curl's words, as its -w %{errormsg} (stderr keeps
    // "(22) HTTP 401"; the code was in the message, where curl's errormsg has none).
    const failing = await report(['-s', '-f', '--cacert', ca, ntlm]);
    expect(failing.json).toMatchObject({
      status: 401,
      exitCode: 22,
      error: 'The requested URL returned error: 401',
      reason: quiet.json.reason,
    });
    const w = await run(['-s', '-S', '-f', '-o', '/dev/null', '-w', '%{exitcode} %{errormsg}', '--cacert', ca, ntlm]);
    expect([w.stdout, w.stderr.split('\n').at(-2)]).toEqual([
      '22 The requested URL returned error: 401',
      'multileg: (22) HTTP 401',
    ]);
    // A failure without a response: its message, as -w %{errormsg} gives it.
    const slow = await report(['-s', '-m', '0.3', `${plainOrigin}/hang`]);
    expect(slow.json).toMatchObject({
      status: 0,
      exitCode: 28,
      error: 'operation timed out after 300 ms (--max-time)',
      reason: null,
    });
    // A success: neither.
    const ok = await report(['-s', ...alice(), `${server.origin}/auth/why-ok`]);
    expect(ok.json).toMatchObject({ status: 200, exitCode: 0, error: null, reason: null });
  });
  it('several URLs: one after another through one agent, one handshake for three (session mode); -o pairs with the URLs in order, the rest to stdout; -i, -w and --json per transfer', async () => {
    const first = join(dir, 'multi-first.txt');
    server.exchanges.length = 0;
    const r = await run([
      ...alice(),
      '-v',
      '-i',
      '-w',
      '[%{url_effective} %{http_code} %{num_connects}]\n',
      '-o',
      first,
      `${server.origin}/auth/one`,
      `${server.origin}/auth/two`,
      `${server.origin}/auth/three`,
    ]);
    expect(r.code).toBe(0);
    // The server saw one handshake (its two legs with Authorization), then the session served the rest.
    expect(server.exchanges.map((e) => e.path)).toEqual([
      '/auth/one',
      '/auth/one',
      '/auth/one',
      '/auth/two',
      '/auth/three',
    ]);
    expect(server.exchanges.filter((e) => e.requestHeaders.authorization !== undefined)).toHaveLength(2);
    expect(server.exchanges.slice(3).map((e) => e.outcome)).toEqual(['session', 'session']);
    expect(new Set(server.exchanges.map((e) => e.sessionId)).size).toBe(1);
    expect(r.stderr).toContain('* 1 session(s), 1 handshake(s), 2 leg(s) with credentials');
    // The first -o took the first URL's heads (-i: its handshake's 401s, then its 200) and body; the
    // others went to stdout, each with its own head (no handshake there) and -w.
    const file = readFileSync(first, 'utf8');
    expect(file.match(/^HTTP\/\S+ \d+/gm)).toEqual(['HTTP/2 401', 'HTTP/2 401', 'HTTP/2 200']);
    expect(JSON.parse(file.slice(file.lastIndexOf('\r\n\r\n') + 4))).toMatchObject({ user: 'EXAMPLE\\alice' });
    expect(r.stdout.match(/^HTTP\/\S+ \d+/gm)).toEqual(['HTTP/2 200', 'HTTP/2 200']);
    expect(r.stdout.match(/\[https:[^\]]*\]/g)).toEqual([
      `[${server.origin}/auth/one 200 1]`,
      `[${server.origin}/auth/two 200 0]`,
      `[${server.origin}/auth/three 200 0]`,
    ]);
    // --json: a report per transfer; the second's handshakes and counts are its own (none).
    const json = await run(['--json', ...alice(), `${server.origin}/auth/j1`, `${server.origin}/auth/j2`]);
    expect(json.code).toBe(0);
    const reports = json.stdout.split(/\n(?=\{)/).map((t) => JSON.parse(t));
    expect(reports.map((x: { url: string }) => x.url)).toEqual([
      `${server.origin}/auth/j1`,
      `${server.origin}/auth/j2`,
    ]);
    expect(reports[0]).toMatchObject({ status: 200, stats: { handshakes: 1, legs: 2, sessions: 1 } });
    expect(reports[1]).toMatchObject({ status: 200, handshakes: [], stats: { handshakes: 0, legs: 0, sessions: 0 } });
    expect(reports[1].legs).toHaveLength(1);
    // curl's warning for an -o without its URL.
    const extra = await run([
      ...alice(),
      '-o',
      join(dir, 'multi-a'),
      '-o',
      join(dir, 'multi-b'),
      `${server.origin}/public/x`,
    ]);
    expect(extra.code).toBe(0);
    expect(extra.stderr).toContain('multileg: Warning: Got more output options than URLs');
    expect(existsSync(join(dir, 'multi-b'))).toBe(false);
  });

  it('R4: with several URLs, one sent without credentials because the server refused them for an earlier URL says they were held back, and for how long — not that the server refused them (it was never sent them); -v says so too', async () => {
    const wrong = ['--ntlm', '-u', 'EXAMPLE\\alice:wrong', '--cacert', ca];
    ntlmOnly.exchanges.length = 0;
    const r = await run([
      '-v',
      '-o',
      '/dev/null',
      '-o',
      '/dev/null',
      ...wrong,
      `${ntlmOnly.origin}/auth/r1`,
      `${ntlmOnly.origin}/auth/r2`,
    ]);
    expect(r.code).toBe(0);
    const said = r.stderr.split('\n').filter((l) => l.startsWith('multileg: '));
    expect(said).toEqual([
      `multileg: ${ntlmOnly.origin} answered 401 and offered NTLM; the server refused our NTLM credentials after 2 leg(s): check -u user:password (DOMAIN\\user)`,
      expect.stringMatching(
        new RegExp(
          `^multileg: ${ntlmOnly.origin.replaceAll('.', '\\.')} answered 401 and offered NTLM; no credentials were sent: the server refused them or left them unanswered lately \\(NTLM, for an earlier request\\), so they are held back from it for another (\\d+) s \\(a wrong password tried again and again locks the account\\): check -u user:password \\(DOMAIN\\\\user\\)$`,
        ),
      ),
    ]);
    // How long: what is left of the 30 s a first refusal keeps them back (no clock asserted).
    const left = Number(/held back from it for another (\d+) s/.exec(r.stderr)?.[1]);
    expect(left).toBeGreaterThan(0);
    expect(left).toBeLessThanOrEqual(30);
    expect(r.stderr).toMatch(
      /\* its 401 is the answer: the credentials, refused or left unanswered here lately, are held back for another \d+ s\n/,
    );
    // The second URL went once, bare (R4): the server never saw the password for it.
    expect(
      ntlmOnly.exchanges.filter((e) => e.path === '/auth/r2').map((e) => e.requestHeaders.authorization ?? null),
    ).toEqual([null]);
  });

  it('M5/R4: a wrong password that went as NTLM inside Negotiate (no Kerberos ticket) is said to be the password refused, with why Kerberos was skipped, the fix -u, never kinit; held back for the next URL, it is named so (it said "the server refused our Negotiate credentials", which reads as a Kerberos ticket)', async () => {
    const r = await run(
      [
        '-o',
        '/dev/null',
        '-o',
        '/dev/null',
        '-u',
        'EXAMPLE\\alice:wrong',
        '--cacert',
        ca,
        `${server.origin}/auth/inside-1`,
        `${server.origin}/auth/inside-2`,
      ],
      { env: { KRB5CCNAME: `FILE:${join(dir, 'no-such-ccache')}` } },
    );
    expect(r.code).toBe(0);
    const said = r.stderr.split('\n').filter((l) => l.startsWith('multileg: '));
    expect(said).toEqual([
      `multileg: ${server.origin} answered 401 and offered Negotiate, NTLM; the server refused the password, sent as NTLM inside Negotiate (Kerberos was skipped: MULTILEG_KRB_NO_TICKET), after 2 leg(s): check -u user:password (DOMAIN\\user)`,
      expect.stringMatching(
        new RegExp(
          `^multileg: ${server.origin.replaceAll('.', '\\.')} answered 401 and offered Negotiate, NTLM; no credentials were sent: the server refused them or left them unanswered lately \\(the password as NTLM inside Negotiate, for an earlier request\\), so they are held back from it for another \\d+ s \\(a wrong password tried again and again locks the account\\): check -u user:password \\(DOMAIN\\\\user\\)$`,
        ),
      ),
    ]);
    expect(r.stderr).not.toMatch(/kinit|klist|Negotiate credentials|:wrong/);
    // A server that offers no NTLM of its own may take Kerberos only: the note that says so names why
    // Kerberos was skipped, said once.
    const handshakes = [
      {
        origin: 'https://h',
        scheme: 'Negotiate',
        outcome: 'failed',
        legs: 2,
        fallbackReason: 'MULTILEG_KRB_NO_TICKET: no Kerberos ticket',
      },
    ] as never;
    expect(
      explain401({
        origin: 'https://h',
        offered: ['Negotiate'],
        trusted: true,
        hasPassword: true,
        schemes: undefined,
        handshakes,
      }),
    ).toBe(
      'https://h answered 401 and offered Negotiate; the server refused the password, sent as NTLM inside Negotiate, after 2 leg(s): check -u user:password (DOMAIN\\user); or, if it takes Kerberos only, get a ticket (kinit): Kerberos was skipped (MULTILEG_KRB_NO_TICKET) and the password went as NTLM inside Negotiate',
    );
  });

  it("S1: with several URLs, each URL's origin gets credentials in its own transfer only, never because another URL names it", async () => {
    // The first URL redirects (-L) to the second URL's origin: that hop goes without credentials, as
    // it would alone; the second URL, on that origin, is sent them.
    const landed = `${other.origin}/auth/landed`;
    const redirect = `${server.origin}/public/redirect?to=${encodeURIComponent(landed)}`;
    other.exchanges.length = 0;
    const r = await run([...alice(), '-L', redirect, `${other.origin}/auth/own`]);
    expect(r.code).toBe(0);
    const bodies = r.stdout
      .split(/\n?(?=\{)/)
      .filter(Boolean)
      .map((t) => JSON.parse(t));
    expect(bodies).toMatchObject([{ user: null }, { user: 'EXAMPLE\\alice' }]);
    const hop = other.exchanges.filter((e) => e.path === '/auth/landed');
    expect(hop.length).toBeGreaterThan(0);
    for (const e of hop) expect(e.requestHeaders.authorization).toBeUndefined();
    expect(other.exchanges.some((e) => e.path === '/auth/own' && e.requestHeaders.authorization !== undefined)).toBe(
      true,
    );
    // --location-trusted holds for the transfer that followed the redirect, not for the next URL's.
    const third = `${server.origin}/public/redirect?to=${encodeURIComponent(`${other.origin}/auth/again`)}`;
    other.exchanges.length = 0;
    const t = await run([...alice(), '--location-trusted', `${server.origin}/public/x`, third]);
    expect(t.code).toBe(0);
    expect(other.exchanges.some((e) => e.requestHeaders.authorization !== undefined)).toBe(true);
  });

  it("several URLs: the exit code is the last transfer's (curl's); --fail-early stops at the first failure", async () => {
    const port = REFUSED_PORT;
    const refused = `http://127.0.0.1:${port}/`;
    const ok = `${server.origin}/public/ok`;
    const lastOk = await run(['-s', '--cacert', ca, refused, ok]);
    expect(lastOk.code).toBe(0);
    expect(JSON.parse(lastOk.stdout)).toMatchObject({ user: null });
    const lastFails = await run(['--cacert', ca, ok, refused]);
    expect(lastFails.code).toBe(7);
    server.exchanges.length = 0;
    const early = await run(['--fail-early', '--cacert', ca, refused, ok]);
    expect(early.code).toBe(7);
    expect(early.stdout).toBe('');
    expect(server.exchanges).toHaveLength(0);
    // -f makes an HTTP error a failure that --fail-early stops at, too.
    server.exchanges.length = 0;
    const failed = await run(['--fail-early', '-f', '--cacert', ca, `${ntlmOnly.origin}/auth/x`, ok]);
    expect(failed.code).toBe(22);
    expect(failed.stdout).toBe('');
    expect(server.exchanges).toHaveLength(0);
  });

  it('several URLs: different user:password@ in them, or --netrc for several hosts, is bad usage naming the fix; doctor takes one URL', async () => {
    const a = `https://alice:alicepw@${new URL(server.origin).host}/auth/a`;
    const b = `${other.origin}/auth/b`;
    const mixed = await run(['--cacert', ca, a, b]);
    expect(mixed.code).toBe(2);
    expect(mixed.stderr).toContain('several URLs with different user:password@: give the credentials once with -u');
    expect(mixed.stderr).not.toContain('alicepw');
    // -u wins over them all (curl's), so the command runs.
    const withU = await run([...alice(), a, b]);
    expect(withU.code).toBe(0);
    const netrc = join(dir, 'multi-netrc');
    writeFileSync(netrc, 'machine 127.0.0.1 login alice password alicepw\n');
    const hosts = await run(['--netrc-file', netrc, '--cacert', ca, `${server.origin}/auth/a`, 'https://127.0.0.1:1/']);
    expect(hosts.code).toBe(2);
    expect(hosts.stderr).toContain('--netrc with URLs on different hosts: give -u');
    const doctor = await run(['doctor', '--cacert', ca, `${server.origin}/`, `${other.origin}/`]);
    expect(doctor.code).toBe(2);
    expect(doctor.stderr).toContain('multileg doctor: checks one URL (got 2): run it once per URL');
  });

  it('S4/S5: --location-trusted from https to http sends the credentials unencrypted, as curl does, and says so at the hop; -L alone sends none there and does not warn', async () => {
    const redirect = `${server.origin}/public/redirect?to=${encodeURIComponent(`${plainOrigin}/basic`)}`;
    const user = ['-u', 'alice:alicepw', '--cacert', ca];
    const trusted = await run([...user, '--location-trusted', redirect]);
    expect([trusted.code, trusted.stdout]).toEqual([0, 'got Basic']);
    expect(trusted.stderr).toContain(
      `multileg: Warning: --location-trusted: the redirect leads from https to ${plainOrigin}: the credentials go there unencrypted, as curl sends them; drop --location-trusted, or use --trust with the https:// origins meant`,
    );
    const followed = await run([...user, '-L', redirect]);
    expect(followed.stdout).toBe('');
    expect(followed.stderr).not.toContain('unencrypted');
  });

  it("S5: -L to another origin drops the caller's Authorization, Cookie and Proxy-Authorization headers; --location-trusted keeps them", async () => {
    const redirect = `${server.origin}/public/redirect?to=${encodeURIComponent(`${other.origin}/public/landed`)}`;
    const own = [
      '-H',
      'Authorization: Basic c2VjcmV0',
      '-H',
      'Cookie: s=1',
      '-H',
      'Proxy-Authorization: Basic cHJveHk=',
    ];
    other.exchanges.length = 0;
    const followed = await run(['--cacert', ca, '-L', ...own, redirect]);
    expect(followed.code).toBe(0);
    expect(other.exchanges.length).toBeGreaterThan(0);
    for (const e of other.exchanges) {
      expect(e.requestHeaders.authorization).toBeUndefined();
      expect(e.requestHeaders.cookie).toBeUndefined();
      expect(e.requestHeaders['proxy-authorization']).toBeUndefined();
    }
    other.exchanges.length = 0;
    const trusted = await run(['--cacert', ca, '--location-trusted', ...own, redirect]);
    expect(trusted.code).toBe(0);
    expect(other.exchanges.at(-1)!.requestHeaders).toMatchObject({
      authorization: 'Basic c2VjcmV0',
      'proxy-authorization': 'Basic cHJveHk=',
    });
  });

  it("-x, --proxy-user, --noproxy: through the reference proxy with its own credentials; a CONNECT refused with 407 is curl 8.21's 7", async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
      const url = `${server.origin}/auth/proxied`;
      const base = [...alice(), '--proxy-cacert', ca, '-x', proxy.origin];
      // curl 8.21's 7 (7.88: 56) for a CONNECT the proxy answers with a final 407: no credentials, or wrong ones.
      const denied = await run([...base, url]);
      expect(denied.code).toBe(7);
      expect(denied.stderr).toContain('MULTILEG_PROXY');
      expect(denied.stderr).toContain('give --proxy-user (or a Kerberos ticket for the proxy)');
      expect(denied.stderr).not.toMatch(/proxy\.\w/);
      // -v's line for the failed leg names the flags too, not the library's options.
      const deniedVerbose = await run([...base, '-v', url]);
      expect(deniedVerbose.stderr).toMatch(/^! MULTILEG_PROXY_AUTH: .*give --proxy-user/m);
      expect(deniedVerbose.stderr).not.toMatch(/proxy\.\w/);
      const refused = await run([...base, '--proxy-user', 'proxyuser:wrongpw', url]);
      expect(refused.code).toBe(7);
      expect(refused.stderr).toMatch(
        /^multileg: proxy .* requires authentication \(407; offers Basic\): the proxy rejected the Basic credentials; check --proxy-user .*\(MULTILEG_PROXY_AUTH\)\n$/,
      );
      expect(refused.stderr).not.toContain('wrongpw');
      const ok = await run([...base, '-v', '--proxy-user', 'proxyuser:proxypw', url]);
      expect(JSON.parse(ok.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
      // -v shows the proxy's legs too, never its password.
      const target = `localhost:${server.port}`;
      expect(ok.stderr).toContain(`> CONNECT ${target} (no credentials) [proxy ${proxy.origin}, HTTP/1.1]`);
      expect(ok.stderr).toContain('< 407 offers Basic [HTTP/1.1, intermediate]');
      expect(ok.stderr).toContain(
        `> CONNECT ${target} (Proxy-Authorization: Basic …, Auth-ID: no) [proxy ${proxy.origin}, HTTP/1.1]`,
      );
      expect(ok.stderr).not.toContain('proxypw');
      // A plain http:// URL goes to the proxy as a forwarded request: its header is Proxy-Authorization too.
      const forwarded = await run([
        '-v',
        '--proxy-cacert',
        ca,
        '-x',
        proxy.origin,
        '--proxy-user',
        'proxyuser:proxypw',
        `${plainOrigin}/hop/0`,
      ]);
      expect(forwarded.stderr).toContain('> GET /hop/0 (Proxy-Authorization: Basic …, Auth-ID: no)');
      expect(forwarded.stderr).not.toMatch(/\(Authorization:/);
      expect(forwarded.stderr).not.toContain('proxypw');
      expect(proxy.exchanges.some((e) => e.proxyAuthorization)).toBe(true);
      const before = proxy.exchanges.length;
      const bypass = await run([...base, '--noproxy', 'localhost', url]);
      expect(JSON.parse(bypass.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
      expect(proxy.exchanges.length).toBe(before);
    } finally {
      await proxy?.close();
    }
  });

  it("H5: a forwarding proxy's final 407 to an http:// URL is shown as curl shows it (exit 0, 22 with -f), with why it stood; -U is --proxy-user", async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      proxy = await startReferenceProxy({ basicUsers: { proxyuser: 'proxypw' } });
      // (The reference proxy forwards an http:// URL for localhost to the reference server there.)
      const url = `http://localhost:${server.port}/public/407`;
      const base = ['--proxy-cacert', ca, '-x', proxy.origin];
      const why = `multileg: proxy ${proxy.origin} answered 407 and offered Basic`;
      const shown = await run([...base, '-i', url]);
      expect(shown.code).toBe(0);
      expect(shown.stdout).toMatch(/^HTTP\/(2 407 |1\.1 407 Proxy Authentication Required)\r\n/);
      expect(shown.stdout).toContain('proxy-authenticate: Basic realm="reference-proxy"\r\n');
      expect(shown.stderr).toBe(`${why}: give --proxy-user user:password\n`);
      const failed = await run([...base, '-f', url]);
      expect(failed).toMatchObject({ code: 22, stdout: '' });
      expect(failed.stderr).toContain('multileg: (22) HTTP 407\n');
      const refused = await run([...base, '-U', 'proxyuser:wrongpw', url]);
      expect(refused).toMatchObject({ code: 0, stdout: '' });
      expect(refused.stderr).toBe(`${why}: it refused the credentials; check --proxy-user (DOMAIN\\user:password)\n`);
      const ok = await run([...base, '-U', 'proxyuser:proxypw', url]);
      expect(ok).toMatchObject({ code: 0, stderr: '' });
      expect(JSON.parse(ok.stdout)).toMatchObject({ path: '/public/407' });
      expect(proxy.exchanges.map((e) => [e.status, e.proxyAuthorization])).toEqual([
        [407, false],
        [407, false],
        [407, false],
        [407, true],
        [407, false],
        [200, true],
      ]);
      expect(shownArgv(['-U', 'proxyuser:wrongpw', url])).toEqual(['-U', 'proxyuser:***', url]);
    } finally {
      await proxy?.close();
    }
  });

  it('H5: a proxy from HTTPS_PROXY is verified with --proxy-cacert, or not at all with --proxy-insecure, as one named by -x is', async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      proxy = await startReferenceProxy({ basicUsers: { 'proxy-user': 'pw' } });
      const env = { HTTPS_PROXY: `https://proxy-user:pw@localhost:${proxy.port}` };
      const url = `${server.origin}/auth/env-proxy`;
      const verified = await run([...alice(), '--proxy-cacert', ca, url], { env });
      expect(verified.stderr).toBe('');
      expect(verified.code).toBe(0);
      expect(JSON.parse(verified.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
      const insecure = await run(['-k', '--proxy-insecure', '-u', 'EXAMPLE\\alice:alicepw', url], { env });
      expect(insecure.code).toBe(0);
      expect(JSON.parse(insecure.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
      // Both went through the proxy, with its credentials from the variable.
      expect(proxy.exchanges.filter((e) => e.method === 'CONNECT' && e.status === 200)).toHaveLength(2);
    } finally {
      await proxy?.close();
    }
  });

  it('H5: a proxy that cannot be reached exits 7 (5: its name does not resolve, 28: --connect-timeout), an untrusted proxy certificate 60; one line naming the proxy and the fix', async () => {
    let proxy: ReferenceProxy | undefined;
    try {
      const url = `${server.origin}/auth/x`;
      const port = REFUSED_PORT;
      const refused = await run([...alice(), '-x', `http://127.0.0.1:${port}`, url]);
      expect(refused.code).toBe(7);
      expect(refused.stderr).toBe(
        `multileg: cannot connect to proxy http://127.0.0.1:${port} (ECONNREFUSED); check the proxy address (-x, or HTTPS_PROXY / http_proxy) and that the proxy is running, or bypass it with --noproxy (or NO_PROXY) (MULTILEG_PROXY_UNREACHABLE)\n`,
      );
      const unresolved = await run([...alice(), url], {
        env: { HTTPS_PROXY: 'http://proxy.corp.test:3128', NODE_OPTIONS: preload('dns-fails.mjs') },
      });
      expect(unresolved.code).toBe(5);
      expect(unresolved.stderr).toMatch(
        /^multileg: cannot resolve the host name of proxy http:\/\/proxy\.corp\.test:3128 \(ENOTFOUND\); check the proxy address \(-x, or HTTPS_PROXY \/ http_proxy\) and DNS \(MULTILEG_PROXY_UNREACHABLE\)\n$/,
      );
      const slow = await run([...alice(), '--connect-timeout', '0.3', '-x', `https://127.0.0.1:${silentPort}`, url]);
      expect(slow.code).toBe(28);
      expect(slow.stderr).toContain('within --connect-timeout (300 ms)');
      // An http:// proxy that takes the connection and never answers the CONNECT: curl's
      // --connect-timeout covers that too (it waited for the 30 s handshake limit, naming --timeout).
      // curl 7.88, side by side: 28, "Proxy CONNECT aborted due to timeout" (not 56; trial u20).
      const muteArgs = ['--connect-timeout', '0.3', '-x', `http://127.0.0.1:${silentPort}`, url];
      const mute = await run([...alice(), ...muteArgs]);
      expect(mute.code).toBe(28);
      expect(mute.stderr).toMatch(/did not answer CONNECT localhost:\d+ within --connect-timeout \(300 ms\)/);
      const curl = await runCommand('curl', ['-sS', '-o', '/dev/null', ...muteArgs]);
      expect([curl.code, curl.stderr]).toEqual([28, 'curl: (28) Proxy CONNECT aborted due to timeout\n']);
      proxy = await startReferenceProxy({});
      const untrusted = await run(['-u', 'EXAMPLE\\alice:alicepw', '-x', proxy.origin, url]);
      expect(untrusted.code).toBe(60);
      expect(untrusted.stderr).toBe(
        `multileg: the certificate of proxy ${proxy.origin} is not trusted (UNABLE_TO_VERIFY_LEAF_SIGNATURE); give the CA that issued it with --proxy-cacert FILE or --proxy-ca-native, or NODE_EXTRA_CA_CERTS=FILE (MULTILEG_PROXY_CERTIFICATE)\n`,
      );
    } finally {
      await proxy?.close();
    }
  });

  it("R1/H5: --connect-timeout bounds the whole connection through a proxy, as curl 7.88's: a CONNECT answered 0.7 s late, then TLS with the server starting 0.7 s late — each within --connect-timeout 1, together past it — is 28 at TLS, as curl (it was 200: each step had the whole of it)", async () => {
    // The server's TLS handshake starts 0.7 s after its ClientHello went into the tunnel.
    const slowServer = await slowRelayTo(server.port, 700);
    const proxy = await relayTo(slowServer.port, undefined, 700);
    try {
      const args = ['--connect-timeout', '1', '-x', `http://127.0.0.1:${proxy.port}`, `${server.origin}/public/`];
      const ours = await run(['-sS', '--cacert', ca, ...args]);
      expect([ours.code, ours.stdout]).toEqual([28, '']);
      expect(ours.stderr).toMatch(
        /^multileg: the TLS handshake with localhost:\d+ through proxy http:\/\/127\.0\.0\.1:\d+ did not finish within --connect-timeout \(1000 ms\)/,
      );
      const curl = await runCommand('curl', ['-sS', '-o', '/dev/null', '--cacert', ca, ...args]);
      expect(curl.code).toBe(28);
      expect(proxy.connections).toBe(2);
    } finally {
      await proxy.close();
      await slowServer.close();
    }
  });

  it('--json prints legs, handshakes and stats; --har writes a valid HAR 1.2 file with tokens redacted', async () => {
    const har = join(dir, 'trace.har');
    const { code, stdout } = await run(['--json', '--har', har, ...alice(), `${server.origin}/auth/json`]);
    expect(code).toBe(0);
    const report = JSON.parse(stdout);
    expect(report).toMatchObject({ status: 200, httpVersion: '2', exitCode: 0, stats: { handshakes: 1, legs: 2 } });
    expect(report.legs.map((l: { status: number }) => l.status)).toEqual([401, 401, 200]);
    expect(report.legs.map((l: { scheme: string | null }) => l.scheme)).toEqual([null, 'Negotiate', 'Negotiate']);
    expect(report.handshakes[0]).toMatchObject({ scheme: 'Negotiate', outcome: 'session', identity: 'EXAMPLE\\alice' });
    const text = readFileSync(har, 'utf8');
    const doc = JSON.parse(text);
    expect(validateHar(doc)).toEqual([]);
    expect(doc.log.entries).toHaveLength(3);
    expect(doc.log.entries[1].request.headers).toContainEqual({ name: 'authorization', value: 'Negotiate [redacted]' });
    expect(doc.log.entries[1].response.headers).toContainEqual({
      name: 'www-authenticate',
      value: 'Negotiate [redacted]',
    });
    expect(doc.log.entries[2].response.content.size).toBeGreaterThan(0);
    for (const e of server.exchanges) {
      const auth = e.requestHeaders.authorization;
      if (typeof auth === 'string') expect(text).not.toContain(auth.split(' ')[1]);
      if (e.authIdSent) expect(text).not.toContain(e.authIdSent);
    }
    expect(text).not.toContain('alicepw');
    const before = server.exchanges.length;
    const unwritable = await run([
      '--har',
      join(dir, 'no-such-dir', 'x.har'),
      ...alice(),
      `${server.origin}/auth/json`,
    ]);
    // As -D: curl's 23 before anything is sent (it was 1 after the request had gone), and
    // --create-dirs makes the directory.
    expect(unwritable.code).toBe(23);
    expect(unwritable.stderr).toBe(
      `multileg: --har ${join(dir, 'no-such-dir', 'x.har')}: no such directory (ENOENT); --create-dirs makes the missing directories\n`,
    );
    expect(server.exchanges.length).toBe(before);
    const made = join(dir, 'har-dir', 'x.har');
    expect((await run(['--create-dirs', '--har', made, ...alice(), `${server.origin}/auth/json`])).code).toBe(0);
    expect(validateHar(JSON.parse(readFileSync(made, 'utf8')))).toEqual([]);
  });

  it("S2: --har gives each leg's request body: its bodySize and HAR 1.2's postData — a form's text and params, a JSON body, a multipart form's fields (files by name), another type (XML, plain text) by its type and size alone — with credential-like fields [redacted]; a GET's legs bodySize 0 (was -1 and no postData)", async () => {
    const har = join(dir, 'post.har');
    const entries = async (args: string[], path: string) => {
      const r = await run(['-o', '/dev/null', '--har', har, ...alice(), ...args, `${server.origin}${path}`]);
      expect(r.code, r.stderr).toBe(0);
      const text = readFileSync(har, 'utf8');
      // No credential: neither -u's password nor a credential-like field's value.
      expect(text).not.toMatch(/alicepw|S3CRET/);
      const doc = JSON.parse(text);
      expect(validateHar(doc)).toEqual([]);
      return doc.log.entries as Array<{ request: { method: string; bodySize: number; postData?: unknown } }>;
    };
    const form = 'user=alice&password=S3CRET1&note=hi+there';
    const posted = await entries(['-d', form], '/auth/har-form');
    // Every leg of the handshake sent the body (C10): the 401s' too.
    expect(posted.map((e) => [e.request.method, e.request.bodySize])).toEqual([
      ['POST', form.length],
      ['POST', form.length],
      ['POST', form.length],
    ]);
    for (const e of posted)
      expect(e.request.postData).toEqual({
        mimeType: 'application/x-www-form-urlencoded',
        params: [
          { name: 'user', value: 'alice' },
          { name: 'password', value: '[redacted]' },
          { name: 'note', value: 'hi there' },
        ],
        text: 'user=alice&password=[redacted]&note=hi+there',
      });
    const json = '{"user":"alice","nested":{"api_token":"S3CRET2"},"n":1}';
    const [jsonLeg] = await entries(['-H', 'Content-Type: application/json', '-d', json], '/auth/har-json');
    expect(jsonLeg!.request.postData).toEqual({
      mimeType: 'application/json',
      text: '{"user":"alice","nested":{"api_token":"[redacted]"},"n":1}',
    });
    // curl's -d labels any body a form: JSON sent so is no form (a piece without '='), not shown (review r27).
    const unlabelled = '{"username":"alice","password":"S3CRET5"}';
    const [unlabelledLeg] = await entries(['-d', unlabelled], '/auth/har-unlabelled');
    expect(unlabelledLeg!.request.postData).toEqual({
      mimeType: 'application/x-www-form-urlencoded',
      comment: `${unlabelled.length} bytes of application/x-www-form-urlencoded: not shown (it may hold credentials)`,
    });
    // A multipart part whose name is not one quoted name (a token, name*=): its value is not shown.
    const crafted = join(dir, 'crafted.multipart');
    writeFileSync(
      crafted,
      '--XB\r\nContent-Disposition: form-data; name=password\r\n\r\nS3CRET6\r\n' +
        '--XB\r\nContent-Disposition: form-data; name="pw"; name="password"\r\n\r\nS3CRET7\r\n--XB--\r\n',
    );
    const [craftedLeg] = await entries(
      ['-H', 'Content-Type: multipart/form-data; boundary=XB', '--data-binary', `@${crafted}`],
      '/auth/har-crafted',
    );
    expect(craftedLeg!.request.postData).toMatchObject({
      params: [
        { name: '', value: '[redacted]' },
        { name: 'pw', value: '[redacted]' },
      ],
    });
    // A body past 64 KiB is not parsed to be shown.
    const big = `note=${'x'.repeat(70_000)}`;
    const [bigLeg] = await entries(['-d', big], '/auth/har-big');
    expect(bigLeg!.request.postData).toEqual({
      mimeType: 'application/x-www-form-urlencoded',
      comment: `${big.length} bytes: not shown (over 65536)`,
    });
    // A SOAP request (WS-Security's password in an element): text with no field names to redact by, not shown.
    const soap = '<Envelope><UsernameToken><Password>S3CRET4</Password></UsernameToken></Envelope>';
    const [soapLeg] = await entries(['-H', 'Content-Type: text/xml', '-d', soap], '/auth/har-soap');
    expect(soapLeg!.request.postData).toEqual({
      mimeType: 'text/xml',
      comment: `${soap.length} bytes of text/xml: not shown (it may hold credentials)`,
    });
    const file = join(dir, 'upload.bin');
    writeFileSync(file, Buffer.from([0, 1, 2, 3, 255]));
    const [multipart] = await entries(
      ['-F', 'name=x', '-F', 'secret=S3CRET3', '-F', `f=@${file}`],
      '/auth/har-multipart',
    );
    expect(multipart!.request.postData).toMatchObject({
      mimeType: expect.stringMatching(/^multipart\/form-data; boundary=/),
      params: [
        { name: 'name', value: 'x' },
        { name: 'secret', value: '[redacted]' },
        { name: 'f', fileName: 'upload.bin', contentType: 'application/octet-stream' },
      ],
    });
    const [binary] = await entries(['-T', file], '/auth/har-put');
    expect(binary!.request).toMatchObject({ method: 'PUT', bodySize: 5, postData: { mimeType: '' } });
    expect(binary!.request.postData).not.toHaveProperty('text');
    const got = await entries([], '/auth/har-get');
    expect(got.map((e) => [e.request.bodySize, 'postData' in e.request])).toEqual([
      [0, false],
      [0, false],
      [0, false],
    ]);
    // Three legs went to the server, each with the body (C10), as the HAR says.
    expect(server.exchanges.filter((e) => e.path === '/auth/har-form')).toHaveLength(3);
  });

  it('S2: an Authorization header without a scheme word (-H with a raw API key) reaches neither -v, --json nor --har', async () => {
    const har = join(dir, 'raw-key.har');
    const key = 'sk_live_SUPERSECRET123';
    const url = `${server.origin}/public/raw-key`;
    const verbose = await run(['-v', '--har', har, '--cacert', ca, '-H', `Authorization: ${key}`, url]);
    expect(verbose.code).toBe(0);
    expect(verbose.stderr).toContain('> GET /public/raw-key (Authorization: [redacted], Auth-ID: no)');
    expect(verbose.stderr).not.toContain('SUPERSECRET');
    const text = readFileSync(har, 'utf8');
    expect(validateHar(JSON.parse(text))).toEqual([]);
    const entry = JSON.parse(text).log.entries[0];
    expect(entry.request.headers).toContainEqual({ name: 'authorization', value: '[redacted]' });
    expect(entry._authScheme).toBeUndefined();
    expect(text).not.toContain('SUPERSECRET');
    const json = await run(['--json', '--cacert', ca, '-H', `authorization: ${key}`, url]);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout).legs[0].scheme).toBeNull();
    expect(json.stdout).not.toContain('SUPERSECRET');
  });

  it("H5: curl's --proxy-ntlm / --proxy-basic (several may be given) choose the proxy's schemes; --proxy-anyauth and --anyauth are the default", () => {
    const both = parseCli(['-x', 'http://p:3128', '--proxy-user', 'u:pw', '--proxy-ntlm', '--proxy-basic', 'h/']);
    expect(both.agent.proxy).toMatchObject({ uri: 'http://p:3128', schemes: ['NTLM', 'Basic'] });
    // Towards a proxy from HTTPS_PROXY too.
    expect(parseCli(['--proxy-negotiate', 'h/']).agent.proxy).toEqual({ schemes: ['Negotiate'], deliver407: true });
    const any = parseCli(['--anyauth', '--proxy-anyauth', '-x', 'http://p:3128', 'h/']);
    expect(any.agent.schemes).toBeUndefined();
    expect((any.agent.proxy as { schemes?: unknown }).schemes).toBeUndefined();
  });

  it('H5: -x "" is curl\'s "no proxy", over the environment\'s too: the proxy user goes nowhere', async () => {
    expect(parseCli(['-x', '', 'h/']).agent.proxy).toBe(false);
    expect(parseCli(['-x', '', '-U', 'u:pw', 'h/']).proxyUserToAsk).toBeUndefined();
    const r = await run(['-x', '', ...alice(), `${server.origin}/auth/x`], {
      env: { HTTPS_PROXY: `http://127.0.0.1:${REFUSED_PORT}`, https_proxy: `http://127.0.0.1:${REFUSED_PORT}` },
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('a scheme with one slash (https:/host/, a slash lost in typing) is that scheme\'s URL, as curl 7.88 reads it (it went to host "https": could not resolve host https); name:/path is an unsupported protocol (1), as curl\'s', async () => {
    expect(parseCli(['https:/intranet.example.com:8443/x']).url.href).toBe('https://intranet.example.com:8443/x');
    expect(parseCli(['HTTP:/intranet.example.com/x']).url.href).toBe('http://intranet.example.com/x');
    // Its user:password as with two slashes (taken out of the URL).
    const withUser = parseCli(['https:/bob:s3cret@intranet.example.com/x']);
    expect([withUser.url.href, withUser.user]).toEqual([
      'https://intranet.example.com/x',
      { username: 'bob', password: 's3cret' },
    ]);
    expect(parseCli(['intranet.example.com:8443/x']).url.href).toBe('https://intranet.example.com:8443/x');
    const r = await run([`https:/localhost:${REFUSED_PORT}/x`]);
    expect([r.code, r.stderr]).toEqual([
      7,
      `multileg: could not connect to localhost:${REFUSED_PORT} at 127.0.0.1 port ${REFUSED_PORT} (ECONNREFUSED)\n`,
    ]);
    const scheme = await run(['localhost:/x']);
    expect([scheme.code, scheme.stderr]).toEqual([
      1,
      'multileg: unsupported protocol "localhost" in localhost:/x: use https:// or http://\n',
    ]);
  });

  it("-u 'EXAMPLE\\\\alice' (two backslashes: a JSON or JavaScript spelling kept by a shell's single quotes) is bad usage naming the one-backslash spelling, before a wrong account is sent a password; -U too", async () => {
    const fix = (flag: string, given: string, one: string) =>
      new ConfigError(
        `${flag}: the user name ${given} holds two backslashes in a row, where DOMAIN\\user has one (a shell's single quotes keep both): write ${flag} '${one}'`,
      );
    expect(() => parseCli(['-u', 'EXAMPLE\\\\alice:pw', 'h/'])).toThrow(
      fix('-u', 'EXAMPLE\\\\alice', 'EXAMPLE\\alice'),
    );
    expect(() => parseCli(['-x', 'http://p:3128', '-U', 'CORP\\\\proxyuser:pw', 'h/'])).toThrow(
      fix('-U', 'CORP\\\\proxyuser', 'CORP\\proxyuser'),
    );
    expect(parseCli(['-u', 'EXAMPLE\\alice:pw', 'h/']).user).toEqual({ username: 'EXAMPLE\\alice', password: 'pw' });
    const r = await run(['-u', 'EXAMPLE\\\\alice:s3cret', `https://localhost:${REFUSED_PORT}/`]);
    expect([r.code, r.stderr]).toEqual([
      2,
      "multileg: -u: the user name EXAMPLE\\\\alice holds two backslashes in a row, where DOMAIN\\user has one (a shell's single quotes keep both): write -u 'EXAMPLE\\alice'\n",
    ]);
  });

  it('H5: -U : is curl\'s "no user, the Kerberos ticket" for the proxy: no proxy credentials; a user name missing before a password is bad usage', async () => {
    const ticket = parseCli(['-x', 'http://p:3128', '--proxy-negotiate', '-U', ':', 'h/']);
    expect(ticket.agent.proxy).toEqual({ uri: 'http://p:3128', schemes: ['Negotiate'], deliver407: true });
    expect(() => parseCli(['-x', 'http://p:3128', '-U', ':pw', 'h/'])).toThrow(
      new ConfigError(
        '--proxy-user: no user name before the colon; give user:password, or -U : for the Kerberos ticket',
      ),
    );
    const r = await run(['-x', 'http://p:3128', '-U', ':s3cret', 'https://localhost:1/']);
    expect(r.code).toBe(2);
    expect(r.stderr).not.toContain('s3cret');
  });

  it('--ntlm, --negotiate, --principal, --canonicalize-host, --no-mutual-auth, --delegate, --spn set the agent options', async () => {
    const ntlm = await run(['-v', '--ntlm', ...alice(), `${server.origin}/auth/ntlm`]);
    expect(ntlm.stderr).toMatch(/Authorization: NTLM …/);
    expect(JSON.parse(ntlm.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
    const req = parseCli([
      '-X',
      'put',
      '-H',
      'X-A: 1',
      '--negotiate',
      '--spn',
      'HTTP@web',
      '--principal',
      'alice@EXAMPLE.TEST',
      '--canonicalize-host',
      '--delegate',
      '--no-mutual-auth',
      '--trust',
      'https://other:8443',
      'h/p',
    ]);
    expect(req.url.href).toBe('https://h/p');
    expect(req.method).toBe('put'); // as given, as curl sends it
    expect(req.headers).toEqual({ 'x-a': '1', accept: '*/*' }); // curl's Accept with it
    expect(req.trust).toEqual(['https://other:8443']);
    expect(req.agent.schemes).toEqual(['Negotiate']);
    expect(req.agent.negotiate).toEqual({
      spn: 'HTTP@web',
      principal: 'alice@EXAMPLE.TEST',
      canonicalizeHost: true,
      delegate: true,
      mutualAuth: 'optional',
    });
    expect(parseSchemes('ntlm, negotiate')).toEqual(['NTLM', 'Negotiate']);
    expect(() => parseSchemes('Bearer')).toThrow(ConfigError);
  });

  it("H5: --proxy-spn, --proxy-service-name (curl's) and --proxy-canonicalize-host set the proxy's SPN options, apart from the server's; the proxy's Negotiate errors name them, not proxy.negotiate.* (review r77: no such flags)", () => {
    const req = parseCli([
      '--spn',
      'HTTP@web',
      '--proxy-spn',
      'HTTP@proxy.corp.test',
      '--proxy-service-name',
      'PROXY',
      '--proxy-canonicalize-host',
      '-x',
      'http://proxy:3128',
      'h/p',
    ]);
    expect(req.agent.negotiate).toEqual({ spn: 'HTTP@web' });
    expect(req.agent.proxy).toMatchObject({
      uri: 'http://proxy:3128',
      negotiate: { spn: 'HTTP@proxy.corp.test', serviceName: 'PROXY', canonicalizeHost: true },
    });
    // From the environment's proxy too (no -x).
    expect(parseCli(['--proxy-spn', 'HTTP@p', 'h/']).agent.proxy).toMatchObject({ negotiate: { spn: 'HTTP@p' } });
    expect(parseCli(['h/']).agent.proxy).not.toHaveProperty('negotiate');
    expect(
      forCli(
        "check the SPN (the server's keytab name; a CNAME may need proxy.negotiate.canonicalizeHost, a non-default port proxy.negotiate.includePort) or pass proxy.negotiate.spn",
      ),
    ).toBe(
      "check the SPN (the server's keytab name; a CNAME may need --proxy-canonicalize-host, a non-default port --proxy-spn HTTP@host:port) or pass --proxy-spn",
    );
    expect(forCli('check the SPN given in proxy.negotiate.spn against')).toBe(
      'check the SPN given in --proxy-spn against',
    );
  });

  it("S1/M2: an unknown SPN's fix on the command line names --canonicalize-host and --spn without the library's \"need trustedOrigins\": the command trusts the URL's origin with them", () => {
    const unknown = mapGssError(new Error('Server HTTP/nosuchhost@EXAMPLE.TEST not found in Kerberos database'), {
      spn: 'HTTP@nosuchhost',
    }) as KerberosUnknownServiceError;
    expect(unknown.fix).toContain('need trustedOrigins');
    expect(forCli(unknown.fix)).toBe(
      "check the SPN (the server's keytab name; a CNAME may need --canonicalize-host, a non-default port --spn HTTP@host:port) or pass --spn",
    );
  });

  it('--version and --help exit 0', async () => {
    const v = await run(['--version']);
    expect(v.code).toBe(0);
    expect(v.stdout).toMatch(
      /^multileg \d+\.\d+\.\d+ \(undici 8\.\d+\.\d+; Node 2\d\.\d+\.\d+; koffi \d+\.\d+\.\d+, kerberos \d/,
    );
    // Among other options, -V is commander's to find (bin.ts answers only a lone --version/-V).
    const withOthers = await run(['-s', '-V', 'https://unused.example/']);
    expect(withOthers.code).toBe(0);
    expect(withOthers.stdout).toBe(v.stdout);
    const h = await run(['--help']);
    expect(h.code).toBe(0);
    for (const flag of [
      '--location-trusted',
      '--password-stdin',
      '--netrc-file',
      '--noproxy',
      '--write-out',
      '--har',
      '--ca-native',
    ])
      expect(h.stdout).toContain(flag);
  });

  it('knows which Node versions it runs on', () => {
    expect(unsupportedNode('20.20.2')).toMatch(/^multileg needs Node >= 22\.19 \(this is Node 20\.20\.2\)/);
    expect(unsupportedNode('22.18.0')).toBeDefined();
    expect(unsupportedNode('22.19.0')).toBeUndefined();
    expect(unsupportedNode('24.1.0')).toBeUndefined();
  });

  it.skipIf(!OLD_NODE)(
    'on a Node older than 22.19: "multileg needs Node >= 22.19", exit 1, before undici loads',
    async () => {
      // The system Node of this machine is 20 (the project brings its own 22). Node 20 cannot strip
      // types: give it the entry and what it imports, stripped, as the build would.
      const out = mkdtempSync(join(tmpdir(), 'multileg-node20-'));
      mkdirSync(join(out, 'cli'));
      for (const file of ['cli/bin.ts', 'node-version.ts', 'errors.ts']) {
        const source = readFileSync(new URL(`../src/${file}`, import.meta.url), 'utf8');
        const js = stripTypeScriptTypes(source).replace(/(from |import\()'(\.{1,2}\/[^']+)\.ts'/g, "$1'$2.js'");
        writeFileSync(join(out, file.replace(/\.ts$/, '.js')), js);
      }
      writeFileSync(join(out, 'package.json'), '{"type":"module"}');
      const r = await runCommand(OLD_NODE!, [join(out, 'cli/bin.js'), '--version']);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^multileg needs Node >= 22\.19 \(this is Node 20\.\d+\.\d+\); install Node 22 or 24/);
    },
  );

  it('doctor: a server clock an hour off fails the clock check with the fix (over http:// no HTTP/2 is tried: not "the server does not speak HTTP/2", H5)', async () => {
    const r = await run(['doctor', `${plainOrigin}/skew`]);
    expect(r.stdout).toMatch(
      /^FAIL +clock: the server's Date is 3\d{3} s behind this machine\n +fix: synchronise the clocks \(NTP\)/m,
    );
    expect(r.stdout).toMatch(
      /^ok +schemes: HTTP\/1\.1 200; over http:\/\/ HTTP\/2 is not tried \(no h2c upgrade\) \(no authentication asked for at this URL\)/m,
    );
    expect(r.stdout).toContain('1 check(s) failed');
    expect(r.code).toBe(1);
    const usage = await run(['doctor']);
    expect(usage.code).toBe(2);
  });

  it('doctor --json: the checks as one JSON object on stdout (url, ok, failed; each check name, ok, verdict, detail, fix), the same verdicts as the lines, exit codes as without it: 1 when a check fails, 0 when none does, 2 for bad usage (trial u20: doctor had no --json)', async () => {
    for (const [path, exit] of [
      ['/skew', 1],
      ['/hop/0', 0],
    ] as const) {
      const url = `${plainOrigin}${path}`;
      const r = await run(['doctor', '--json', url]);
      expect([r.code, r.stderr], path).toEqual([exit, '']);
      const report = JSON.parse(r.stdout);
      expect(Object.keys(report)).toEqual(['url', 'ok', 'failed', 'checks']);
      expect(report).toMatchObject({ url, ok: exit === 0, failed: exit });
      for (const c of report.checks) {
        expect(Object.keys(c)).toEqual(['name', 'ok', 'verdict', 'detail', 'fix']);
        expect(c.ok).toBe(c.verdict !== 'FAIL');
        expect(['ok', 'warn', 'FAIL', 'skip']).toContain(c.verdict);
        expect(typeof c.detail).toBe('string');
        expect(c.fix === null || typeof c.fix === 'string').toBe(true);
      }
      // The lines say the same, check by check.
      const text = await run(['doctor', url]);
      expect(text.code).toBe(exit);
      const lines = text.stdout
        .split('\n')
        .flatMap((l) => l.match(/^(ok|warn|FAIL|skip) +([^:]+):/)?.slice(1, 3) ?? []);
      expect(report.checks.flatMap((c: { verdict: string; name: string }) => [c.verdict, c.name])).toEqual(lines);
    }
    const skew = JSON.parse((await run(['doctor', '--json', `${plainOrigin}/skew`])).stdout);
    expect(skew.checks.find((c: { name: string }) => c.name === 'clock')).toMatchObject({
      ok: false,
      verdict: 'FAIL',
      detail: expect.stringMatching(/^the server's Date is 3\d{3} s behind this machine$/),
      fix: expect.stringMatching(/^synchronise the clocks \(NTP\)/),
    });
    // A proxy that cannot be used stops the checks there: its FAIL, in the JSON too.
    const proxy = await run(['doctor', '--json', '-x', 'socks5://127.0.0.1:1', `${plainOrigin}/hop/0`]);
    expect(proxy.code).toBe(1);
    expect(JSON.parse(proxy.stdout).checks.at(-1)).toEqual({
      name: 'proxy',
      ok: false,
      verdict: 'FAIL',
      detail: 'proxy: unsupported proxy protocol socks5: in -x; use http:// or https:// (MULTILEG_CONFIG)',
      fix: null,
    });
    const usage = await run(['doctor', '--json']);
    expect([usage.code, usage.stdout]).toEqual([2, '']);
  });

  it('S2: user:password@ in the URL is -u (percent-decoded; -u wins), taken out of the URL and never printed: --json, -w %{url_effective}, doctor, usage errors', async () => {
    const withUser = (userinfo: string, path: string) => `https://${userinfo}@localhost:${server.port}${path}`;
    // EXAMPLE%5Calice = EXAMPLE\alice; alicep%77 = alicepw.
    const used = await run(['--cacert', ca, withUser('EXAMPLE%5Calice:alicep%77', '/auth/userinfo')]);
    expect(used.code).toBe(0);
    expect(JSON.parse(used.stdout)).toMatchObject({ user: 'EXAMPLE\\alice' });
    const wins = await run(['--cacert', ca, '-u', 'EXAMPLE\\bob:bobpw', withUser('EXAMPLE%5Calice:wrong', '/auth/u')]);
    expect(JSON.parse(wins.stdout)).toMatchObject({ user: 'EXAMPLE\\bob' });

    const reported = await run([
      '--cacert',
      ca,
      '--json',
      '-w',
      '\\n%{url_effective}',
      withUser('EXAMPLE%5Calice:alicep%77', '/auth/json?q=1'),
    ]);
    expect(reported.code).toBe(0);
    const [json, effective] = [
      reported.stdout.slice(0, reported.stdout.lastIndexOf('\n')),
      reported.stdout.split('\n').at(-1),
    ];
    expect(JSON.parse(json!)).toMatchObject({ url: `${server.origin}/auth/json?q=1`, status: 200 });
    expect(JSON.parse(json!).handshakes[0]).toMatchObject({ identity: 'EXAMPLE\\alice' });
    expect(effective).toBe(`${server.origin}/auth/json?q=1`);
    for (const r of [used, reported]) expect(`${r.stdout}${r.stderr}`).not.toMatch(/alicep|%5C/);

    // A Location's userinfo is dropped too.
    const to = withUser('x:leakpw', '/auth/same');
    const redirected = await run([
      ...alice(),
      '-L',
      '-o',
      join(dir, 'redirected.out'),
      '-w',
      '%{url_effective}',
      `${server.origin}/public/redirect?to=${encodeURIComponent(to)}`,
    ]);
    expect(redirected.stdout).toBe(`${server.origin}/auth/same`);

    const doctor = await run(['doctor', `http://alice:s3cretpw@${plainOrigin.slice('http://'.length)}/skew`]);
    expect(doctor.stdout.split('\n')[0]).toBe(`multileg doctor ${plainOrigin}/skew`);
    expect(`${doctor.stdout}${doctor.stderr}`).not.toContain('s3cretpw');

    const ftp = await run(['ftp://alice:s3cretpw@host/']);
    expect(ftp).toMatchObject({
      code: 1,
      stderr: 'multileg: unsupported protocol "ftp" in ftp://…@host/: use https:// or http://\n',
    });
    const bad = await run(['https://alice:s3cretpw@[bad/']);
    expect(bad).toMatchObject({ code: 3, stderr: 'multileg: not a URL: https://…@[bad/\n' });

    const parsed = (url: string) => {
      const r = parseCli([url]);
      return { href: r.url.href, user: r.user };
    };
    expect(parsed('https://a%40b:p%3Aw@h/x')).toEqual({
      href: 'https://h/x',
      user: { username: 'a@b', password: 'p:w' },
    });
    // No colon: the password is asked for, as with -u user.
    expect(parsed('https://alice@h/')).toEqual({
      href: 'https://h/',
      user: { username: 'alice', password: undefined },
    });
    expect(parsed('h/x').user).toBeUndefined();
  });

  it('S1: --trust takes origins and *. host patterns; nothing else is trusted', () => {
    expect(parseTrust('other:8443')).toBe('https://other:8443');
    expect(parseTrust('https://*.corp.example.com')).toBe('https://*.corp.example.com');
    expect(() => parseTrust('https://host/path')).toThrow(
      /^--trust entry 'https:\/\/host\/path' has more than scheme, host and port/,
    );
    expect(() => parseTrust('ftp://host')).toThrow(ConfigError);
    expect(() => parseTrust('https://a.*.example')).toThrow(ConfigError);
    // Pattern matching itself is the library's TrustPolicy (test/trust.test.ts): here, what the CLI adds.
    const t = new CliTrust('https://start.example:8443', ['https://*.corp.example.com', 'https://exact.example']);
    const verdicts = [
      'https://start.example:8443',
      'https://start.example',
      'https://exact.example',
      'https://a.corp.example.com',
      'https://moved.example',
    ].map((o) => t.trusts(o));
    expect(verdicts).toEqual([true, false, true, true, false]);
    t.add('https://moved.example');
    expect(t.trusts('https://moved.example')).toBe(true);
  });

  it('T3: with --cert given, a TLS alert refusing a certificate, a close or a reset of a new connection say the server may have refused the one given', () => {
    const url = new URL('https://h:8443/x');
    const alert = Object.assign(new Error('tlsv1 alert unknown ca'), { code: 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA' });
    const given = describeFailure(alert, { url, maxTime: undefined, clientCertificate: true });
    expect(given.exit).toBe(35);
    expect(given.message).toContain('h:8443 refused the client certificate given with --cert in the TLS handshake');
    // Without --cert: OpenSSL's code as before.
    expect(describeFailure(alert, { url, maxTime: undefined }).message).toBe(
      'the TLS handshake with h:8443 failed (ERR_SSL_TLSV1_ALERT_UNKNOWN_CA)',
    );
    // handshake_failure is also a server sharing no cipher with us: either may be why (was: the
    // certificate blamed outright, review r33).
    const failure = Object.assign(new Error('sslv3 alert handshake failure'), {
      code: 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE',
    });
    const either = describeFailure(failure, { url, maxTime: undefined, clientCertificate: true });
    expect(either.exit).toBe(35);
    expect(either.message).toContain('it refused the one given with --cert');
    expect(either.message).toContain('or the two sides share no TLS version or cipher');
    expect(either.message).not.toContain('h:8443 refused the client certificate given');
    const closed = new ConnectionClosedError('https://h:8443', 'GET', { fresh: true });
    expect(describeFailure(closed, { url, maxTime: undefined, clientCertificate: true }).message).toContain(
      'it refused the one given with --cert',
    );
    const reset = Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
    expect(describeFailure(reset, { url, maxTime: undefined, clientCertificate: true }).message).toContain(
      'it refused the one given with --cert',
    );
    expect(describeFailure(reset, { url, maxTime: undefined }).message).toBe(
      'h:8443 reset the connection (ECONNRESET)',
    );
  });

  it("T3: the agent's ClientCertificateRefusedError exits 35 naming the alert; one for a close is told as its close was, never retried", () => {
    const url = new URL('https://h:8443/x');
    const ctx = { url, maxTime: undefined, clientCertificate: true };
    const alert = Object.assign(new Error('tlsv1 alert unknown ca'), { code: 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA' });
    const refused = describeFailure(
      new ClientCertificateRefusedError('https://h:8443', 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', false, { cause: alert }),
      ctx,
    );
    expect(refused.exit).toBe(35);
    expect(refused.message).toContain(
      'h:8443 refused the client certificate given with --cert in the TLS handshake (ERR_SSL_TLSV1_ALERT_UNKNOWN_CA)',
    );
    expect(refused.message).toContain('(MULTILEG_CLIENT_CERTIFICATE_REFUSED)');
    expect(refused.refused).toBe(true);
    const closed = new ConnectionClosedError('https://h:8443', 'GET', { fresh: true });
    const asClose = describeFailure(
      new ClientCertificateRefusedError('https://h:8443', undefined, false, { cause: closed }),
      ctx,
    );
    expect({ ...asClose, refused: undefined }).toEqual({ ...describeFailure(closed, ctx), refused: undefined });
    expect(asClose.refused).toBe(true);
    // nginx's page (u6: exit 1 and only the page's words before).
    const page = new ClientCertificateRefusedError(
      'https://h:8443',
      undefined,
      false,
      { cause: new Error('the server answered 400 "The SSL certificate error" (nginx)') },
      '400 "The SSL certificate error" (nginx)',
    );
    const nginx = describeFailure(page, ctx);
    expect([nginx.exit, nginx.refused]).toEqual([35, true]);
    expect(nginx.message).toContain(
      'h:8443 refused the client certificate given with --cert (it answered 400 "The SSL certificate error" (nginx)): give one issued by a CA it accepts',
    );
  });

  it('explain401 covers each reason; a refusal names where the credentials came from (-u or the netrc file)', () => {
    const base = {
      origin: 'https://h',
      offered: ['Negotiate', 'NTLM'],
      trusted: true,
      hasPassword: true,
      schemes: undefined,
      handshakes: [],
    };
    expect(explain401({ ...base, trusted: false })).toContain('add --trust https://h');
    expect(explain401({ ...base, offered: [] })).toContain('nothing to answer');
    expect(explain401({ ...base, offered: ['Transport'], hasPassword: false })).toContain('--cert and --key');
    // T3: with --cert given, a Transport 401 is its refusal: not "give a client certificate".
    const refusedCertificate = explain401({
      ...base,
      offered: ['Transport'],
      hasPassword: false,
      hasCertificate: true,
    });
    expect(refusedCertificate).toContain('it refused the client certificate given with --cert');
    expect(refusedCertificate).not.toContain('--cert and --key');
    expect(explain401(base)).toContain('none of them could be used here');
    // A refusal names where the refused credentials came from: -u, or the netrc file.
    const refused = [{ origin: 'https://h', scheme: 'NTLM', outcome: 'failed', legs: 2 }] as never;
    expect(explain401({ ...base, handshakes: refused })).toContain('check -u user:password');
    expect(explain401({ ...base, handshakes: refused, netrcFile: '/n/rc' })).toContain(
      'check the login and password for this host in /n/rc',
    );
  });

  it('M2: a refused password that went as NTLM inside Negotiate names kinit only when Kerberos was skipped for want of a ticket; a skip for an unknown SPN, an unreachable KDC or a skewed clock names that cause, not kinit', () => {
    const base = {
      origin: 'https://h',
      offered: ['Negotiate'],
      trusted: true,
      hasPassword: true,
      schemes: undefined,
    };
    const skipped = (fallbackReason: string) =>
      explain401({
        ...base,
        handshakes: [{ origin: 'https://h', scheme: 'Negotiate', outcome: 'failed', legs: 1, fallbackReason }] as never,
      });
    for (const code of ['MULTILEG_KRB_NO_TICKET', 'MULTILEG_KRB_TICKET_EXPIRED'])
      expect(skipped(`${code}: no Kerberos ticket`)).toContain(`get a ticket (kinit): Kerberos was skipped (${code})`);
    // alice has a ticket here: the KDC does not know the SPN, or cannot be reached; kinit fixes neither.
    for (const [code, cause] of [
      ['MULTILEG_KRB_UNKNOWN_SPN', 'the KDC does not know the service principal HTTP@h'],
      ['MULTILEG_KRB_KDC_UNREACHABLE', 'no KDC could be reached'],
      ['MULTILEG_KRB_CLOCK_SKEW', 'the clocks differ too much'],
    ]) {
      const said = skipped(`${code}: ${cause}`);
      expect(said, code).not.toContain('kinit');
      expect(said, code).toContain(
        `Kerberos was skipped (${code}: ${cause}) and the password went as NTLM inside Negotiate`,
      );
    }
  });

  it("H5: explain407 names only a fix that can answer the proxy's 407: --proxy-user for NTLM, Digest or Basic (a proxy's Negotiate has no NTLM fallback), a ticket for Negotiate", () => {
    const noTicket = {
      code: 'MULTILEG_KRB_NO_TICKET',
      message: 'Negotiate: no Kerberos ticket: run kinit or pass principal [GSS: x]',
    };
    const base = { proxy: 'http://p:3128', sent: false, unusable: [noTicket] };
    const why = 'Negotiate: no Kerberos ticket: run kinit or pass --principal [GSS: x] (MULTILEG_KRB_NO_TICKET)';
    // A Negotiate-only proxy: credentials cannot answer it, a ticket can.
    expect(explain407({ ...base, offered: ['Negotiate'] })).toBe(
      `proxy http://p:3128 answered 407 and offered Negotiate: ${why}`,
    );
    expect(explain407({ ...base, offered: ['Negotiate', 'NTLM'] })).toBe(
      `proxy http://p:3128 answered 407 and offered Negotiate, NTLM: ${why}; or give --proxy-user user:password`,
    );
    // --proxy-negotiate leaves NTLM out: credentials would not answer it either.
    for (const schemes of [['Negotiate'], ['Negotiate', 'Basic']])
      expect(explain407({ ...base, offered: ['Negotiate', 'NTLM'], schemes })).not.toContain('--proxy-user');
    // A Basic-only proxy wants a password; a Kerberos ticket would not answer it.
    expect(explain407({ ...base, unusable: [], offered: ['Basic'] })).toBe(
      'proxy http://p:3128 answered 407 and offered Basic: give --proxy-user user:password',
    );
    expect(explain407({ ...base, unusable: [], offered: ['Negotiate', 'Basic'] })).toBe(
      'proxy http://p:3128 answered 407 and offered Negotiate, Basic: give --proxy-user user:password (or a Kerberos ticket for the proxy)',
    );
  });
});

/** The HAR 1.2 structure (http://www.softwareishard.com/blog/har-12-spec/): required fields and their types. */
function validateHar(doc: unknown): string[] {
  const errors: string[] = [];
  const need = (obj: Record<string, unknown>, path: string, fields: Record<string, string>) => {
    for (const [field, type] of Object.entries(fields)) {
      const value = obj[field];
      const actual = Array.isArray(value) ? 'array' : value === null ? 'null' : typeof value;
      if (actual !== type) errors.push(`${path}.${field}: expected ${type}, got ${actual}`);
    }
  };
  const nameValues = (list: unknown, path: string) => {
    for (const [i, h] of (list as Record<string, unknown>[]).entries())
      need(h, `${path}[${i}]`, { name: 'string', value: 'string' });
  };
  const log = (doc as { log?: Record<string, unknown> }).log;
  if (!log) return ['log: missing'];
  need(log, 'log', { version: 'string', creator: 'object', entries: 'array' });
  if (log.version !== '1.2') errors.push('log.version: not 1.2');
  need(log.creator as Record<string, unknown>, 'log.creator', { name: 'string', version: 'string' });
  (log.entries as Record<string, unknown>[]).forEach((e, i) => {
    const p = `log.entries[${i}]`;
    need(e, p, {
      startedDateTime: 'string',
      time: 'number',
      request: 'object',
      response: 'object',
      cache: 'object',
      timings: 'object',
    });
    if (Number.isNaN(Date.parse(e.startedDateTime as string))) errors.push(`${p}.startedDateTime: not ISO 8601`);
    const req = e.request as Record<string, unknown>;
    need(req, `${p}.request`, {
      method: 'string',
      url: 'string',
      httpVersion: 'string',
      cookies: 'array',
      headers: 'array',
      queryString: 'array',
      headersSize: 'number',
      bodySize: 'number',
    });
    nameValues(req.headers, `${p}.request.headers`);
    nameValues(req.queryString, `${p}.request.queryString`);
    if (req.postData !== undefined) {
      const post = req.postData as Record<string, unknown>;
      need(post, `${p}.request.postData`, { mimeType: 'string' });
      if (post.text !== undefined) need(post, `${p}.request.postData`, { text: 'string' });
      if (post.params !== undefined) {
        need(post, `${p}.request.postData`, { params: 'array' });
        for (const [i, param] of (post.params as Record<string, unknown>[]).entries())
          need(param, `${p}.request.postData.params[${i}]`, { name: 'string' });
      }
    }
    const res = e.response as Record<string, unknown>;
    need(res, `${p}.response`, {
      status: 'number',
      statusText: 'string',
      httpVersion: 'string',
      cookies: 'array',
      headers: 'array',
      content: 'object',
      redirectURL: 'string',
      headersSize: 'number',
      bodySize: 'number',
    });
    nameValues(res.headers, `${p}.response.headers`);
    need(res.content as Record<string, unknown>, `${p}.response.content`, { size: 'number', mimeType: 'string' });
    const t = e.timings as Record<string, unknown>;
    need(t, `${p}.timings`, { send: 'number', wait: 'number', receive: 'number' });
    for (const k of ['send', 'wait', 'receive']) if ((t[k] as number) < 0) errors.push(`${p}.timings.${k}: negative`);
  });
  return errors;
}

describe('S4: an http:// origin the command does not trust challenges (CleartextCredentialsError)', () => {
  const seen: { port: number; path: string; authorization: string | null }[] = [];
  let a: Server;
  let b: Server;
  let aPort = 0;
  let bPort = 0;
  const challenge = (path: string) =>
    path.includes('ntlm')
      ? 'NTLM'
      : path.includes('digest')
        ? 'Digest realm="r", nonce="abc", qop="auth"'
        : path.includes('nego')
          ? 'Negotiate'
          : 'Basic realm="r"';
  const listen = async (handler: import('node:http').RequestListener) => {
    const server = createHttpServer(handler);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return server;
  };
  beforeAll(async () => {
    const answer =
      (port: () => number) => (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) => {
        seen.push({ port: port(), path: req.url ?? '', authorization: req.headers.authorization ?? null });
        const to = /^\/to-(b|host)(\/.*)$/.exec(req.url ?? '');
        if (to) {
          res.writeHead(302, {
            location: to[1] === 'b' ? `http://127.0.0.1:${bPort}${to[2]}` : `http://localhost:${aPort}${to[2]}`,
          });
          res.end();
          return;
        }
        if (req.headers.authorization) {
          res.end('ok\n');
          return;
        }
        res.writeHead(401, { 'www-authenticate': challenge(req.url ?? ''), 'content-type': 'text/plain' });
        res.end('denied\n');
      };
    a = await listen(answer(() => aPort));
    b = await listen(answer(() => bPort));
    aPort = (a.address() as { port: number }).port;
    bPort = (b.address() as { port: number }).port;
  });
  afterAll(() => {
    a.close();
    b.close();
  });

  it("S4 (exit 22): -L to another http:// origin that challenges Basic, NTLM, Digest (-u) or Negotiate (no -u): nothing sent there, curl's 22 with or without -f (it was a bare 1), -w http_code 401, the line names the origin, --trust and --location-trusted; with --location-trusted the password goes", async () => {
    const bOrigin = `http://127.0.0.1:${bPort}`;
    for (const [flags, path, scheme] of [
      [['-u', 'u:p'], '/basic', 'Basic'],
      [['--ntlm', '-u', 'u:p'], '/ntlm', 'NTLM'],
      [['--digest', '-u', 'u:p', '-f'], '/digest', 'Digest'],
      [['--negotiate'], '/nego', 'Negotiate'],
    ] as const) {
      const before = seen.length;
      const out = await run([...flags, '-L', '-w', '%{http_code}', `http://127.0.0.1:${aPort}/to-b${path}`]);
      expect([out.code, out.stdout]).toEqual([22, '401']);
      expect(out.stderr).toBe(
        `multileg: ${bOrigin} answered 401 and offered ${scheme}; no credentials were sent over cleartext http://: ${bOrigin} is not the URL's origin (a redirect led here); add --trust ${bOrigin} or use --location-trusted if it is meant to have them in the clear, or have the redirect lead to https:// (MULTILEG_CLEARTEXT)\n`,
      );
      expect(seen.slice(before).filter((s) => s.port === bPort)).toEqual([{ port: bPort, path, authorization: null }]);
    }
    const trusted = await run(['-u', 'u:p', '-L', '--location-trusted', `http://127.0.0.1:${aPort}/to-b/basic`]);
    expect([trusted.code, trusted.stdout]).toEqual([0, 'ok\n']);
  });

  it("S4 (exit 22): --location-trusted to an http:// host the netrc file gives credentials of its own: its 401 is curl's 22 (it was a bare 1), the line names the netrc file", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'multileg-s4-'));
    const netrc = join(dir, 'netrc');
    writeFileSync(netrc, 'machine 127.0.0.1 login u password p\nmachine localhost login v password q\n', {
      mode: 0o600,
    });
    const before = seen.length;
    const out = await run([
      '--netrc-file',
      netrc,
      '-L',
      '--location-trusted',
      `http://127.0.0.1:${aPort}/to-host/basic`,
    ]);
    expect(out.code).toBe(22);
    const origin = `http://localhost:${aPort}`;
    expect(out.stderr).toContain(
      `multileg: ${origin} answered 401 and offered Basic; no credentials were sent over cleartext http://: ${netrc} gives localhost credentials of its own (its entry, or the default one), and netrc credentials go to their own host only, whatever --trust or --location-trusted say: request ${origin} in a command of its own, or give -u (MULTILEG_CLEARTEXT)\n`,
    );
    expect(
      seen
        .slice(before)
        .filter((s) => s.path === '/basic')
        .map((s) => s.authorization),
    ).toEqual([null]);
  });

  it("S4 (exit 22): an http:// address URL with -H 'Host: NAME:same port' (the agent decides trust for the name): curl's 22 (it was a bare 1 naming the address, already trusted, as the fix), the line names the Host", async () => {
    const before = seen.length;
    const out = await run(['-u', 'u:p', '-H', `Host: other.example:${bPort}`, `http://127.0.0.1:${bPort}/basic`]);
    expect(out.code).toBe(22);
    expect(out.stderr).toContain(
      `multileg: http://127.0.0.1:${bPort} answered 401 and offered Basic; no credentials were sent over cleartext http:// to http://other.example:${bPort}, which -H 'Host: …' names`,
    );
    expect(seen.slice(before).map((s) => s.authorization)).toEqual([null]);
  });

  it("S4: an address URL with -H 'Host: NAME:same port' refused over cleartext: the line names NAME's origin as the one refused and only fixes that apply (--trust that origin; the name in the URL with --resolve), each of which then sends the credentials; with netrc credentials, the netrc file's entry for NAME", async () => {
    const named = `http://other.example:${bPort}`;
    const inUrl = `--resolve other.example:${bPort}:127.0.0.1 ${named}/…`;
    const host = ['-H', `Host: other.example:${bPort}`];
    const before = seen.length;
    const out = await run(['-u', 'u:p', ...host, `http://127.0.0.1:${bPort}/basic`]);
    expect(out.code).toBe(22);
    // Before: "credentials go to the URL's origin only; drop the header, or use --resolve or
    // --connect-to to reach another address under the URL's name" (the URL names an address; --trust
    // of the name, which works, went unsaid).
    expect(out.stderr).toBe(
      `multileg: http://127.0.0.1:${bPort} answered 401 and offered Basic; no credentials were sent over cleartext http:// to ${named}, which -H 'Host: …' names (credentials go by the name, not the address): add --trust ${named} to send them in the clear, or put the name in the URL in place of the header (${inUrl}; https:// keeps them encrypted where the server has it) (MULTILEG_CLEARTEXT)\n`,
    );
    // Each fix said works.
    const trusted = await run(['-u', 'u:p', ...host, '--trust', named, `http://127.0.0.1:${bPort}/basic`]);
    expect([trusted.code, trusted.stdout]).toEqual([0, 'ok\n']);
    const resolved = await run(['-u', 'u:p', '--resolve', `other.example:${bPort}:127.0.0.1`, `${named}/basic`]);
    expect([resolved.code, resolved.stdout]).toEqual([0, 'ok\n']);
    // Credentials from a netrc file that gives the name its own: --trust cannot send the address's
    // there; the name in the URL takes the name's entry.
    const dir = mkdtempSync(join(tmpdir(), 'multileg-s4-'));
    const netrc = join(dir, 'netrc');
    writeFileSync(netrc, 'machine 127.0.0.1 login u password p\nmachine other.example login v password q\n', {
      mode: 0o600,
    });
    const fromNetrc = await run(['--netrc-file', netrc, ...host, `http://127.0.0.1:${bPort}/basic`]);
    expect(fromNetrc.code).toBe(22);
    expect(fromNetrc.stderr).toBe(
      `multileg: http://127.0.0.1:${bPort} answered 401 and offered Basic; no credentials were sent over cleartext http:// to ${named}, which -H 'Host: …' names (credentials go by the name, not the address): ${netrc} gives other.example credentials of its own (its entry, or the default one), and netrc credentials go to their own host only, whatever --trust says: put the name in the URL in place of the header (${inUrl}) for its own, or give -u and --trust ${named} (MULTILEG_CLEARTEXT)\n`,
    );
    const own = await run(['--netrc-file', netrc, '--resolve', `other.example:${bPort}:127.0.0.1`, `${named}/basic`]);
    expect([own.code, own.stdout]).toEqual([0, 'ok\n']);
    expect(seen.slice(before).map((s) => s.authorization)).toEqual([
      null,
      null,
      `Basic ${Buffer.from('u:p').toString('base64')}`,
      null,
      `Basic ${Buffer.from('u:p').toString('base64')}`,
      null,
      null,
      `Basic ${Buffer.from('v:q').toString('base64')}`,
    ]);
  });
});
