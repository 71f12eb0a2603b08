/**
 * Digest and Basic through MultilegAgent against a real, independent server: Apache httpd's
 * mod_auth_digest (MD5, realm `digest-realm`; its Authentication-Info: rspauth, and with one-time
 * nonces nextnonce) and mod_auth_basic, over HTTP/2 and HTTP/1.1, and Basic refused over Apache's
 * cleartext port unless the caller allows it.
 */
import { createHash } from 'node:crypto';
import { appendFileSync, readFileSync } from 'node:fs';
import { createServer, Agent as HttpAgent, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fetch, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseChallenges } from '../src/challenge/index.ts';
import { MultilegAgent, type MultilegAgentOptions, MutualAuthError } from '../src/index.ts';
import { BasicOverHttpError } from '../src/mechanisms/basic/index.ts';
import { BASIC_USER, DIGEST_REALM, type Lab, requirePeer, startLab } from './lab/index.ts';

const havePeers = requirePeer('kdc', 'apache');

describe.skipIf(!havePeers)('Digest and Basic against Apache httpd (real peer)', () => {
  let lab: Lab;
  const agents: MultilegAgent[] = [];
  const agent = (o: Partial<MultilegAgentOptions> = {}) => {
    // Negotiate off: Apache's /digest and /basic offer only their own scheme anyway; this keeps Kerberos out of it.
    const a = new MultilegAgent({
      connect: { ca: lab.apache!.ca },
      credentials: BASIC_USER,
      negotiate: false,
      trustedOrigins: [lab.apache!.origin, lab.apache!.cleartextOrigin],
      ...o,
    });
    agents.push(a);
    return a;
  };
  /** Access-log lines for paths starting with `prefix`, in the order the requests arrived: status, protocol, user. */
  const accessLog = (prefix: string) =>
    readFileSync(lab.apache!.accessLog, 'utf8')
      .split('\n')
      .filter((l) => / "[A-Z]+ (\S+) /.exec(l)?.[1]?.startsWith(prefix))
      .map((l) => {
        const m = /" (\d{3}) \d+ proto=(\S+) user=(\S+) at=(\d+) scheme=(\S+)/.exec(l);
        return { status: Number(m?.[1]), proto: m?.[2], user: m?.[3], at: Number(m?.[4]), scheme: m?.[5] };
      })
      .sort((x, y) => x.at - y.at)
      .map(({ at: _, ...w }) => w);
  // mod_http2 writes a stream's log line when the stream's request pool is released (the EOR
  // bucket), which on an idle connection can wait for its next event, up to KeepAliveTimeout (30 s):
  // the h2 tests close their agent first, which releases every stream; then allow the write time.
  async function logSettled(prefix: string, count: number) {
    for (let i = 0; i < 500 && accessLog(prefix).length < count; i++) await new Promise((r) => setTimeout(r, 20));
    return accessLog(prefix);
  }

  beforeAll(async () => {
    lab = await startLab({ apache: true });
  });
  afterAll(async () => {
    await Promise.all(agents.map((a) => a.destroy()));
    await lab?.stop();
  });

  it('M3: Apache mod_auth_digest (MD5) over HTTP/2: one challenge, then one request per user request', async () => {
    const a = agent();
    for (let i = 0; i < 4; i++) {
      const res = await fetch(`${lab.apache!.origin}/digest/?h2=${i}`, { dispatcher: a });
      expect(res.status).toBe(200);
      expect(res.headers.get('x-remote-user')).toBe('alice');
      expect(res.headers.get('x-protocol')).toBe('HTTP/2.0');
      expect(await res.text()).toBe('hello from /digest\n');
    }
    await a.close();
    const wire = await logSettled('/digest/?h2=', 5);
    expect(wire.map((w) => [w.status, w.proto])).toEqual([
      [401, 'HTTP/2.0'],
      [200, 'HTTP/2.0'],
      [200, 'HTTP/2.0'],
      [200, 'HTTP/2.0'],
      [200, 'HTTP/2.0'],
    ]);
    expect(a.handshakes().map((h) => [h.scheme, h.outcome, h.legs])).toEqual(
      Array(4).fill(['Digest', 'per-request', 1]),
    );
  });

  it('M3: a UTF-8 user name reaches Apache mod_auth_digest (which reads no username*) as its UTF-8 octets, as curl sends it', async () => {
    const user = { username: 'Jäsøn', password: 'pw-äö' };
    // What htdigest writes on a UTF-8 terminal: the name's UTF-8 octets, H(user:realm:password) over UTF-8.
    const ha1 = createHash('md5').update(`${user.username}:${DIGEST_REALM}:${user.password}`, 'utf8').digest('hex');
    appendFileSync(
      join(dirname(lab.apache!.accessLog), '../conf/htdigest'),
      Buffer.from(`${user.username}:${DIGEST_REALM}:${ha1}\n`, 'utf8'),
    );
    const res = await fetch(`${lab.apache!.origin}/digest/`, { dispatcher: agent({ credentials: user }) });
    // Before, username*=UTF-8''J%C3%A4s%C3%B8n: Apache answered 401 ("missing user").
    expect(res.status).toBe(200);
    await res.text();
  });

  it('M3: Apache mod_auth_digest over HTTP/1.1, concurrent proactive requests included', async () => {
    const a = agent();
    const get = async (i: number) => {
      const res = await request(`${lab.apache!.origin}/digest/?h1=${i}`, { dispatcher: a, allowH2: false } as never);
      const body = await res.body.text();
      return [res.statusCode, res.headers['x-remote-user'], res.headers['x-protocol'], body] as const;
    };
    expect(await get(0)).toEqual([200, 'alice', 'HTTP/1.1', 'hello from /digest\n']);
    const rest = await Promise.all(Array.from({ length: 6 }, (_, i) => get(i + 1)));
    expect(rest.every(([s, u, p]) => s === 200 && u === 'alice' && p === 'HTTP/1.1')).toBe(true);
    const wire = await logSettled('/digest/?h1=', 8);
    expect(wire.map((w) => w.status)).toEqual([401, 200, 200, 200, 200, 200, 200, 200]);
  });

  it("M3: Apache's rspauth (Authentication-Info) verifies over HTTP/2 and HTTP/1.1, on the answer to its challenge and on proactive ones", async () => {
    const a = agent();
    const seen: Array<[number, string | null, string | undefined]> = [];
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${lab.apache!.origin}/digest/?rsp-h2=${i}`, { dispatcher: a });
      seen.push([res.status, res.headers.get('x-protocol'), res.headers.get('authentication-info') ?? undefined]);
      await res.text();
    }
    for (let i = 0; i < 2; i++) {
      const res = await request(`${lab.apache!.origin}/digest/?rsp-h1=${i}`, {
        dispatcher: a,
        allowH2: false,
      } as never);
      seen.push([res.statusCode, res.headers['x-protocol'] as string, res.headers['authentication-info'] as string]);
      await res.body.text();
    }
    expect(seen.map(([status, proto]) => [status, proto])).toEqual([
      [200, 'HTTP/2.0'],
      [200, 'HTTP/2.0'],
      [200, 'HTTP/1.1'],
      [200, 'HTTP/1.1'],
    ]);
    // Each answer carried a proof, checked before the caller got it (a changed one fails: the relay test below).
    for (const [, , info] of seen) {
      expect(parseChallenges(`Digest ${info}`)[0]!.params).toMatchObject({
        rspauth: expect.stringMatching(/^[0-9a-f]{32}$/),
        qop: 'auth',
      });
    }
    expect(a.handshakes().map((h) => [h.outcome, h.legs, h.failure])).toEqual(
      Array(4).fill(['per-request', 1, undefined]),
    );
  });

  it("M3: an rspauth from Apache changed in transit (a relay on its cleartext port flips one hex digit) is a MutualAuthError, the body withheld; unchanged, the relay's 200 passes", async () => {
    let tamper = true;
    const upstream = new HttpAgent({ keepAlive: true });
    const relay = createServer((req, res) => {
      const up = httpRequest(
        `${lab.apache!.cleartextOrigin}${req.url}`,
        { method: req.method, headers: req.headers, agent: upstream },
        (answer) => {
          const headers = { ...answer.headers };
          const info = headers['authentication-info'];
          if (tamper && typeof info === 'string')
            headers['authentication-info'] = info.replace(
              /rspauth="(.)/,
              (_, c) => `rspauth="${c === '0' ? '1' : '0'}`,
            );
          res.writeHead(answer.statusCode!, headers);
          answer.pipe(res);
        },
      );
      req.pipe(up);
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
    const origin = `http://127.0.0.1:${(relay.address() as AddressInfo).port}`;
    try {
      const a = agent({ trustedOrigins: [origin] });
      const err = await fetch(`${origin}/digest/?relay=changed`, { dispatcher: a }).then(
        () => undefined,
        (e: Error) => (e.cause ?? e) as Error,
      );
      expect(err).toBeInstanceOf(MutualAuthError);
      expect(err!.message).toMatch(/Digest rspauth of http:\/\/127\.0\.0\.1:\d+ does not match/);
      tamper = false;
      const res = await fetch(`${origin}/digest/?relay=unchanged`, { dispatcher: a });
      expect([res.status, await res.text()]).toEqual([200, 'hello from /digest\n']);
      // Apache accepted the credentials both times: the first 200 was withheld by the client.
      expect((await logSettled('/digest/?relay=', 4)).map((w) => [w.status, w.user])).toEqual([
        [401, '-'],
        [200, 'alice'],
        [401, '-'],
        [200, 'alice'],
      ]);
    } finally {
      upstream.destroy();
      await new Promise((resolve) => relay.close(resolve));
    }
  });

  it("M3: Apache one-time nonces (AuthDigestNonceLifetime 0): each request uses the last answer's nextnonce, so no 401 after the first, over HTTP/2 and HTTP/1.1", async () => {
    const a = agent();
    const nextnonces: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${lab.apache!.origin}/digest-once/?once-h2=${i}`, { dispatcher: a });
      expect(res.status).toBe(200);
      nextnonces.push(parseChallenges(`Digest ${res.headers.get('authentication-info')}`)[0]!.params.nextnonce!);
      await res.text();
    }
    expect(new Set(nextnonces).size).toBe(3);
    const b = agent();
    for (let i = 0; i < 3; i++) {
      const res = await request(`${lab.apache!.origin}/digest-once/?once-h1=${i}`, {
        dispatcher: b,
        allowH2: false,
      } as never);
      expect(res.statusCode).toBe(200);
      await res.body.text();
    }
    await Promise.all([a.close(), b.close()]);
    // Before, the second request sent the used nonce again: Apache's 401 stale=true, and a retry.
    expect((await logSettled('/digest-once/?once-h2=', 4)).map((w) => [w.status, w.proto])).toEqual([
      [401, 'HTTP/2.0'],
      [200, 'HTTP/2.0'],
      [200, 'HTTP/2.0'],
      [200, 'HTTP/2.0'],
    ]);
    expect((await logSettled('/digest-once/?once-h1=', 4)).map((w) => [w.status, w.proto])).toEqual([
      [401, 'HTTP/1.1'],
      [200, 'HTTP/1.1'],
      [200, 'HTTP/1.1'],
      [200, 'HTTP/1.1'],
    ]);
  });

  it("M3: Apache's challenge is what the mechanism expects (realm, MD5, qop=auth)", async () => {
    const res = await fetch(`${lab.apache!.origin}/digest/`, {
      dispatcher: new MultilegAgent({ connect: { ca: lab.apache!.ca }, negotiate: false }),
    });
    await res.text();
    expect(res.status).toBe(401);
    const [c] = parseChallenges(res.headers.get('www-authenticate') ?? '');
    expect(c).toMatchObject({ schemeKey: 'digest', params: { realm: DIGEST_REALM, algorithm: 'MD5', qop: 'auth' } });
  });

  it("M3: a wrong Digest password gets Apache's 401", async () => {
    const a = agent({ credentials: { username: 'alice', password: 'nope' } });
    const res = await fetch(`${lab.apache!.origin}/digest/?wrong`, { dispatcher: a });
    await res.text();
    expect(res.status).toBe(401);
    expect(a.handshakes().map((h) => h.outcome)).toEqual(['failed']);
  });

  it('M4: Apache Basic over HTTP/2 and HTTP/1.1', async () => {
    const a = agent();
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${lab.apache!.origin}/basic/?h2=${i}`, { dispatcher: a });
      expect([res.status, res.headers.get('x-remote-user'), res.headers.get('x-protocol')]).toEqual([
        200,
        'alice',
        'HTTP/2.0',
      ]);
      await res.text();
    }
    const b = agent();
    for (let i = 0; i < 2; i++) {
      const res = await request(`${lab.apache!.origin}/basic/?h1=${i}`, { dispatcher: b, allowH2: false } as never);
      expect([res.statusCode, res.headers['x-remote-user'], res.headers['x-protocol']]).toEqual([
        200,
        'alice',
        'HTTP/1.1',
      ]);
      await res.body.text();
    }
    await Promise.all([a.close(), b.close()]);
    expect((await logSettled('/basic/?h2=', 3)).map((w) => [w.status, w.proto])).toEqual([
      [401, 'HTTP/2.0'],
      [200, 'HTTP/2.0'],
      [200, 'HTTP/2.0'],
    ]);
    expect((await logSettled('/basic/?h1=', 3)).map((w) => [w.status, w.proto])).toEqual([
      [401, 'HTTP/1.1'],
      [200, 'HTTP/1.1'],
      [200, 'HTTP/1.1'],
    ]);
  });

  it("M4: Basic is refused over Apache's cleartext port without allowBasicOverHttp, and allowed with it", async () => {
    const refused = await fetch(`${lab.apache!.cleartextOrigin}/basic/?clear=refused`, { dispatcher: agent() }).then(
      () => undefined,
      (e: Error) => (e.cause ?? e) as Error,
    );
    expect(refused).toBeInstanceOf(BasicOverHttpError);
    expect(refused!.message).toMatch(/allowBasicOverHttp: true/);
    expect(refused!.message).not.toContain(BASIC_USER.password);
    const res = await fetch(`${lab.apache!.cleartextOrigin}/basic/?clear=allowed`, {
      dispatcher: agent({ allowBasicOverHttp: true }),
    });
    expect([res.status, res.headers.get('x-remote-user')]).toEqual([200, 'alice']);
    await res.text();
    expect((await logSettled('/basic/?clear=', 3)).map((w) => [w.status, w.user])).toEqual([
      [401, '-'],
      [401, '-'],
      [200, 'alice'],
    ]);
  });

  it("S1, C4, T4: Apache with NTLM at /ntlm and Basic at /basic, over its cleartext port: once /basic/ took Basic, the password goes unasked to /basic/ only (1 wire request each), never to /public/ or /ntlm/; /ntlm/ keeps its NTLM connection, and Apache logs no 'wrong authentication scheme'", async () => {
    const errorLog = () =>
      readFileSync(lab.apache!.errorLog, 'utf8')
        .split('\n')
        .filter((l) => l.includes('AH01614'));
    const wrongScheme = errorLog().length;
    const a = agent({
      credentials: { ...BASIC_USER, domain: 'EXAMPLE' },
      schemes: ['NTLM', 'Basic'],
      allowBasicOverHttp: true,
      maxHttp1Connections: 1,
    });
    const go = async (path: string) => {
      const res = await request(`${lab.apache!.cleartextOrigin}${path}`, { dispatcher: a, allowH2: false } as never);
      await res.body.dump();
      return res.statusCode;
    };
    expect(await go('/ntlm/?space=0')).toBe(200);
    for (let i = 1; i <= 5; i++) {
      expect([await go(`/basic/?space=${i}`), await go(`/ntlm/?space=${i}`), await go(`/public/?space=${i}`)]).toEqual([
        200, 200, 200,
      ]);
    }
    await a.close();
    // Apache logs a request after its response has gone: read each log once it holds as many lines.
    const wire = async (prefix: string, lines: number) =>
      (await logSettled(prefix, lines)).map((w) => `${w.status} ${w.scheme}`);
    // Before: /public/ and /ntlm/ got Basic after the first Basic success, each /basic/ went bare first.
    expect(await wire('/basic/?space=', 6)).toEqual(['401 -', ...Array(5).fill('200 Basic')]);
    expect(await wire('/ntlm/?space=', 8)).toEqual(['401 -', '401 NTLM', '200 NTLM', ...Array(5).fill('200 -')]);
    expect(await wire('/public/?space=', 5)).toEqual(Array(5).fill('200 -'));
    expect(errorLog().length).toBe(wrongScheme);
  });

  it("M3: Digest is fine over Apache's cleartext port", async () => {
    const res = await fetch(`${lab.apache!.cleartextOrigin}/digest/?clear`, { dispatcher: agent() });
    expect([res.status, res.headers.get('x-remote-user')]).toEqual([200, 'alice']);
    await res.text();
  });
});
