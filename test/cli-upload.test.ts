/**
 * curl's options for what a request sends: -T/--upload-file, -G/--get, --data-urlencode, -F/--form,
 * -A/--user-agent and -e/--referer. Bodies go through an NTLM handshake to the reference server,
 * which reports what each leg carried (C10); what a request puts on the wire is compared, byte for
 * byte, with what the real curl installed here sends to the same small recording server.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCli, shownArgv } from '../src/cli/options.ts';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { runCli as run, runCommand } from './cli-helpers.ts';
import { requirePeer } from './lab/index.ts';

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

/** What the recording server received. */
interface Recorded {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

const haveCurl = requirePeer('curl');

describe.skipIf(!haveCurl)('multileg: -T, -G, --data-urlencode, -F, -A, -e (as curl sends them)', () => {
  let server: ReferenceServer;
  let dir: string;
  let ca: string;
  let recorder: Server;
  let recorderOrigin: string;
  const received: Recorded[] = [];
  /** alice's password over NTLM (first leg NEGOTIATE: two legs, both carrying the body) and the reference CA. */
  const alice = () => ['--ntlm', '-u', 'EXAMPLE\\alice:alicepw', '--cacert', ca];
  /** The reference server's legs for `path` (path and query as sent). */
  const legs = (path: string) => server.exchanges.filter((e) => e.path === path);
  const file = (name: string, content: string | Buffer) => {
    const path = join(dir, name);
    writeFileSync(path, content);
    return path;
  };

  beforeAll(async () => {
    server = await startReferenceServer({ mode: 'session' });
    dir = mkdtempSync(join(tmpdir(), 'multileg-upload-'));
    ca = file('ca.pem', server.ca);
    // Records each request; /r301, /r302, /r303 redirect to /dest under the same prefix.
    recorder = createHttpServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const url = req.url ?? '/';
        received.push({ method: req.method ?? '', url, headers: req.headers, body: Buffer.concat(chunks) });
        const redirect = /^(\/[a-z]+)\/r(30[123])$/.exec(url);
        if (redirect) res.writeHead(Number(redirect[2]), { location: `${redirect[1]}/dest` }).end();
        else res.end('ok\n');
      });
    });
    recorder.listen(0, '127.0.0.1');
    await once(recorder, 'listening');
    recorderOrigin = `http://127.0.0.1:${(recorder.address() as { port: number }).port}`;
  });
  afterAll(async () => {
    recorder.closeAllConnections();
    recorder.close();
    await server.close();
  });

  /**
   * What a request put on the wire that curl and multileg may be compared on: method, target (under
   * its prefix), the body's headers, `extra` headers, and the body, with the multipart boundary (random)
   * as `BOUNDARY`.
   */
  const wire = (r: Recorded, prefix: string, extra: readonly string[]) => {
    const boundary = /boundary=(\S+)/.exec(String(r.headers['content-type']))?.[1];
    const unbound = (text: string) => (boundary ? text.replaceAll(boundary, 'BOUNDARY') : text);
    return {
      request: `${r.method} ${r.url.slice(prefix.length)}`,
      headers: Object.fromEntries(
        ['content-type', 'content-length', ...extra].map((h) => [h, r.headers[h] && unbound(String(r.headers[h]))]),
      ),
      body: unbound(r.body.toString('latin1')),
    };
  };

  /**
   * Sends `args` with the real curl and with multileg to the recording server (`paths` under a prefix
   * of each), stdin `input` to both; returns what each sent, for comparison.
   */
  async function sideBySide(
    args: readonly string[],
    paths: readonly string[],
    { input = '', extra = [] as readonly string[] } = {},
  ) {
    const sent = async (prefix: string, send: (urls: string[]) => Promise<{ code: number | null }>) => {
      const from = received.length;
      const r = await send(paths.map((p) => `${recorderOrigin}${prefix}${p}`));
      expect(r.code, prefix).toBe(0);
      return received.slice(from).map((rec) => wire(rec, prefix, extra));
    };
    const curl = await sent('/curl', (urls) => runCommand('/usr/bin/curl', ['-s', ...args, ...urls], input));
    const multileg = await sent('/ml', (urls) => run(['-s', ...args, ...urls], { input }));
    return { curl, multileg };
  }

  it('C10: -T FILE PUTs the file on every leg of an NTLM handshake, a 1.5 MiB one too; a URL ending in / gets its name (curl-escaped); the same bytes as curl sends', async () => {
    const text = file('report q1 (final).csv', 'id,total\n1,42\n');
    const ok = await run([...alice(), '-T', text, `${server.origin}/auth/up/`]);
    expect(ok.code, ok.stderr).toBe(0);
    const path = '/auth/up/report%20q1%20%28final%29.csv';
    expect(JSON.parse(ok.stdout)).toMatchObject({ user: 'EXAMPLE\\alice', method: 'PUT', path });
    const sent = legs(path);
    expect(sent.length).toBeGreaterThanOrEqual(2);
    for (const leg of sent) expect([leg.method, leg.bodySha256]).toEqual(['PUT', sha256('id,total\n1,42\n')]);
    // Past the library's default replay limit (1 MiB): held in memory, sent whole on each leg.
    const big = Buffer.alloc(1536 * 1024, 'ab\n');
    const bigFile = file('big.bin', big);
    const large = await run([...alice(), '-T', bigFile, `${server.origin}/auth/big.bin`]);
    expect(large.code, large.stderr).toBe(0);
    expect(JSON.parse(large.stdout)).toMatchObject({ user: 'EXAMPLE\\alice', bodyLength: big.length });
    expect(legs('/auth/big.bin').map((l) => l.bodySha256)).toEqual(legs('/auth/big.bin').map(() => sha256(big)));
    // As curl: PUT, its Content-Length, the name appended (before a query), -X wins over PUT.
    const requests: string[] = [];
    for (const path of ['/dir/', '/dir/?q=1', '/named']) {
      const { curl, multileg } = await sideBySide(['-T', text], [path]);
      expect(multileg).toEqual(curl);
      requests.push(...multileg.map((m) => m.request));
    }
    expect(requests).toEqual([
      'PUT /dir/report%20q1%20%28final%29.csv',
      'PUT /dir/report%20q1%20%28final%29.csv?q=1',
      'PUT /named',
    ]);
    const post = await sideBySide(['-X', 'POST', '-T', text], ['/p']);
    expect(post.multileg).toEqual(post.curl);
    expect(post.multileg[0]).toMatchObject({ request: 'POST /p', body: 'id,total\n1,42\n' });
  });

  it("-T - reads stdin (nothing appended to the URL); one -T goes with the first URL only, as curl pairs them; -L sends the PUT and its body again after a 301 or 302, a 303 turns it into a GET, as curl's", async () => {
    const input = 'from stdin\n';
    const authed = await run([...alice(), '-T', '-', `${server.origin}/auth/stdin/`], { input });
    expect(authed.code, authed.stderr).toBe(0);
    expect(JSON.parse(authed.stdout)).toMatchObject({ method: 'PUT', path: '/auth/stdin/', bodySha256: sha256(input) });
    const text = file('one.txt', 'one\n');
    const paired = await sideBySide(['-T', text], ['/a/', '/b/']);
    expect(paired.multileg).toEqual(paired.curl);
    expect(paired.multileg.map((m) => m.request)).toEqual(['PUT /a/one.txt', 'GET /b/']);
    const redirected: string[] = [];
    for (const path of ['/r301', '/r302', '/r303']) {
      const { curl, multileg } = await sideBySide(['-L', '-T', text], [path]);
      expect(multileg).toEqual(curl);
      redirected.push(...multileg.map((m) => `${m.request} ${m.body}`));
    }
    expect(redirected).toEqual([
      'PUT /r301 one\n',
      'PUT /dest one\n',
      'PUT /r302 one\n',
      'PUT /dest one\n',
      'PUT /r303 one\n',
      'GET /dest ',
    ]);
  });

  it("-d with -L: after a 301, 302 or 303 the next request is a GET without the body, its type or a Content-Length, as curl's; -X POST keeps the method POST, without the body (curl's)", async () => {
    for (const path of ['/r301', '/r302', '/r303']) {
      const { curl, multileg } = await sideBySide(['-L', '-d', 'a=1'], [path]);
      expect(multileg, path).toEqual(curl);
      expect(multileg.map((m) => `${m.request} ${m.body}`)).toEqual([`POST ${path} a=1`, 'GET /dest ']);
      expect(multileg[1]!.headers).toEqual({ 'content-type': undefined, 'content-length': undefined });
      // -X POST: the method stays, the body goes (undici sends its Content-Length: 0, README's differences).
      const custom = await sideBySide(['-L', '-X', 'POST', '-d', 'a=1'], [path]);
      expect(custom.multileg.map((m) => `${m.request} ${m.body}`)).toEqual(
        custom.curl.map((m) => `${m.request} ${m.body}`),
      );
      expect(custom.multileg.map((m) => `${m.request} ${m.body}`)).toEqual([`POST ${path} a=1`, 'POST /dest ']);
    }
  });

  it("--post301, --post302, --post303 with -L: a -d or -F POST goes on as a POST with its body and type after that redirect only (the others still a GET), -X PUT -d keeps its method and body; as curl's", async () => {
    const form = file('form.txt', 'f\n');
    for (const [flag, kept] of [
      ['--post301', '/r301'],
      ['--post302', '/r302'],
      ['--post303', '/r303'],
    ] as const) {
      for (const path of ['/r301', '/r302', '/r303']) {
        for (const body of [
          ['-d', 'a=1'],
          ['-F', `f=@${form}`],
          ['-X', 'PUT', '-d', 'a=1'],
        ]) {
          const { curl, multileg } = await sideBySide(['-L', flag, ...body], [path]);
          // -X PUT without its body: undici's Content-Length: 0 (README's differences); the rest as curl's.
          const seen = (r: typeof curl) => (body[0] === '-X' ? r.map((m) => `${m.request} ${m.body}`) : r);
          expect(seen(multileg), `${flag} ${body.join(' ')} ${path}`).toEqual(seen(curl));
          const method = body[0] === '-X' ? 'PUT' : 'POST';
          expect(multileg[1]!.request).toBe(
            path === kept ? `${method} /dest` : body[0] === '-X' ? 'PUT /dest' : 'GET /dest',
          );
          if (path === kept) expect(multileg[1]!.body).toBe(multileg[0]!.body);
          else expect(multileg[1]!.body).toBe('');
        }
      }
    }
  });

  it("-T: a file that cannot be read is curl's 26; with -d, -F or -I it is curl's bad usage (2); -T - and another stdin reader are bad usage", async () => {
    const missing = join(dir, 'missing.txt');
    expect(await run(['-T', missing, `${recorderOrigin}/x`])).toMatchObject({
      code: 26,
      stdout: '',
      stderr: `multileg: -T ${missing}: no such file\n`,
    });
    expect(await run(['-T', dir, `${recorderOrigin}/x`])).toMatchObject({
      code: 26,
      stderr: `multileg: -T ${dir}: is a directory\n`,
    });
    const text = file('two.txt', 'two\n');
    for (const [flag, what] of [
      ['-d', 'POST (-d, --data)'],
      ['-F', 'multipart formpost (-F, --form)'],
    ] as const)
      expect(await run(['-T', text, flag, 'a=1', `${recorderOrigin}/x`])).toMatchObject({
        code: 2,
        stderr: `multileg: You can only select one HTTP request method! You asked for both PUT (-T, --upload-file) and ${what}.\n`,
      });
    expect(await run(['-T', text, '-I', `${recorderOrigin}/x`])).toMatchObject({
      code: 2,
      stderr:
        'multileg: You can only select one HTTP request method! You asked for both PUT (-T, --upload-file) and HEAD (-I, --head).\n',
    });
    expect(await run(['-T', '-', '-u', 'alice', '--password-stdin', `${recorderOrigin}/x`])).toMatchObject({
      code: 2,
      stderr:
        'multileg: --password-stdin and -T -: only one of them can read stdin; give the password with MULTILEG_PASSWORD (or -u user:password)\n',
    });
  });

  it('two -F or data flags reading stdin are bad usage, as two different readers are: the second would read nothing and send an empty field or piece', async () => {
    for (const [args, said] of [
      [
        ['-F', 'a=@-', '-F', 'b=<-'],
        '-F a=@- and -F b=<-: only one of them can read stdin; give the form field in a file',
      ],
      [
        ['-d', '@-', '--data-urlencode', 'n@-'],
        '-d @- and --data-urlencode n@-: only one of them can read stdin; give the body in a file',
      ],
      [
        ['--data-binary', '@-', '-d', '@-'],
        '--data-binary @- and -d @-: only one of them can read stdin; give the body in a file',
      ],
    ] as const)
      expect(await run([...args, `${recorderOrigin}/x`], { input: 'piped\n' })).toMatchObject({
        code: 2,
        stdout: '',
        stderr: `multileg: ${said}\n`,
      });
  });

  it('-F name=@"-" and name=<"-" (the file name quoted) read stdin as curl reads them (the same bytes), so the one stdin rule sees them: with another stdin reader they are bad usage', async () => {
    for (const form of ['a=@"-"', 'a=<"-"', 'a=<-', 'a=@"-";type=text/plain'] as const) {
      const { curl, multileg } = await sideBySide(['-F', form], ['/f'], { input: 'from stdin\n' });
      expect(curl[0]!.body, form).toContain('from stdin');
      expect(multileg, form).toEqual(curl);
    }
    for (const [args, said] of [
      [
        ['-F', 'a=@"-"', '-F', 'b=<-'],
        '-F a=@- and -F b=<-: only one of them can read stdin; give the form field in a file',
      ],
      [['-F', 'a=<"-"', '-T', '-'], '-F a=<- and -T -: only one of them can read stdin; give the form field in a file'],
      [
        ['-u', 'alice', '--password-stdin', '-F', 'a=@"-";filename=x'],
        '--password-stdin and -F a=@-: only one of them can read stdin; give the password with MULTILEG_PASSWORD (or -u user:password)',
      ],
    ] as const)
      expect(await run([...args, `${recorderOrigin}/x`], { input: 'piped\n' }), args.join(' ')).toMatchObject({
        code: 2,
        stdout: '',
        stderr: `multileg: ${said}\n`,
      });
    // A quoted name that is not "-" is a file, not stdin: no conflict with --password-stdin (the file is missing: 26).
    const named = await run(['-u', 'alice', '--password-stdin', '-F', 'a=<"-x"', `${recorderOrigin}/x`], {
      input: 'piped\n',
    });
    expect(named.code).toBe(26);
    expect(named.stderr).not.toContain('stdin');
  });

  it('-G puts the -d and --data-urlencode data in the query of every URL (joined with &, after a query there), as a GET, a HEAD with -I (no -I/-d conflict), -X kept; as curl', async () => {
    const r = await run([...alice(), '-G', '-d', 'a=1', '--data-urlencode', 'q=x y&z', `${server.origin}/auth/g?k=0`]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ method: 'GET', path: '/auth/g?k=0&a=1&q=x+y%26z', bodyLength: 0 });
    expect(legs('/auth/g?k=0&a=1&q=x+y%26z').at(-1)?.requestHeaders['content-type']).toBeUndefined();
    const lines = file('g.txt', 'b=2\nc=3\n');
    const get = await sideBySide(
      ['-G', '-d', 'a=1', '-d', `@${lines}`, '--data-urlencode', 'n=v w'],
      ['/g', '/h?', '/i?k=0'],
    );
    expect(get.multileg).toEqual(get.curl);
    expect(get.multileg.map((m) => m.request)).toEqual([
      'GET /g?a=1&b=2c=3&n=v+w',
      'GET /h?a=1&b=2c=3&n=v+w',
      'GET /i?k=0&a=1&b=2c=3&n=v+w',
    ]);
    const head = await sideBySide(['-G', '-I', '-d', 'a=1'], ['/head']);
    expect(head.multileg).toEqual(head.curl);
    expect(head.multileg.map((m) => m.request)).toEqual(['HEAD /head?a=1']);
    const custom = parseCli(['-G', '-X', 'DELETE', '-d', 'a=1', 'https://h/x']);
    expect([custom.method, custom.url.href, custom.body]).toEqual(['DELETE', 'https://h/x?a=1', undefined]);
    // What a URL cannot carry as it is, percent-encoded (curl 7.88 refuses a space: exit 3).
    expect(parseCli(['-G', '-d', 'a=x y#é', 'https://h/x']).url.search).toBe('?a=x%20y%23%C3%A9');
  });

  it("C10: --data-urlencode in curl's five forms (content, =content, name=content, @file, name@file; @-: stdin), joined with -d by &, goes on every leg of an NTLM handshake; the same bytes as curl sends", async () => {
    const text = file('enc.txt', 'a b&c=d\né\n');
    const args = [
      '--data-urlencode',
      'x y=é~-._!*',
      '--data-urlencode',
      '=p q=r',
      '--data-urlencode',
      'plain text',
      '--data-urlencode',
      `@${text}`,
      '--data-urlencode',
      `f@${text}`,
      '-d',
      'raw=1',
    ];
    const expected = 'x y=%C3%A9~-._%21%2A&p+q%3Dr&plain+text&a+b%26c%3Dd%0A%C3%A9%0A&f=a+b%26c%3Dd%0A%C3%A9%0A&raw=1';
    const r = await run([...alice(), ...args, `${server.origin}/auth/enc`]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      user: 'EXAMPLE\\alice',
      method: 'POST',
      bodySha256: sha256(expected),
    });
    expect(legs('/auth/enc').length).toBeGreaterThanOrEqual(2);
    for (const leg of legs('/auth/enc')) expect(leg.bodySha256).toBe(sha256(expected));
    const { curl, multileg } = await sideBySide(args, ['/enc']);
    expect(multileg).toEqual(curl);
    expect(multileg[0]).toMatchObject({
      body: expected,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    const stdin = await sideBySide(['--data-urlencode', 'n@-'], ['/stdin'], { input: 'a&b\n' });
    expect(stdin.multileg).toEqual(stdin.curl);
    expect(stdin.multileg[0]?.body).toBe('n=a%26b%0A');
    const missing = join(dir, 'missing.txt');
    expect(await run(['--data-urlencode', `n@${missing}`, `${recorderOrigin}/x`])).toMatchObject({
      code: 26,
      stderr: `multileg: --data-urlencode ${missing}: no such file\n`,
    });
  });

  it("-A and -e send User-Agent and Referer; a -H of the same name wins (or drops it); -A '' sends none; -e URL;auto sends the previous URL as Referer on each -L redirect; as curl", async () => {
    const r = await run([...alice(), '-A', 'Report/1.0', '-e', 'https://portal.example/', `${server.origin}/auth/ua`]);
    expect(r.code, r.stderr).toBe(0);
    for (const leg of legs('/auth/ua'))
      expect([leg.requestHeaders['user-agent'], leg.requestHeaders.referer]).toEqual([
        'Report/1.0',
        'https://portal.example/',
      ]);
    const extra = ['user-agent', 'referer'];
    const given = await sideBySide(['-A', 'Report/1.0', '-e', 'https://portal.example/'], ['/h1'], { extra });
    expect(given.multileg).toEqual(given.curl);
    expect(given.multileg[0]?.headers).toMatchObject({
      'user-agent': 'Report/1.0',
      referer: 'https://portal.example/',
    });
    const overridden = await sideBySide(['-A', 'A', '-H', 'User-Agent: B', '-e', 'r1', '-H', 'Referer: r2'], ['/h2'], {
      extra,
    });
    expect(overridden.multileg).toEqual(overridden.curl);
    expect(overridden.multileg[0]?.headers).toMatchObject({ 'user-agent': 'B', referer: 'r2' });
    const dropped = await sideBySide(['-A', 'A', '-H', 'User-Agent:'], ['/h3'], { extra });
    expect(dropped.multileg).toEqual(dropped.curl);
    const none = await sideBySide(['-A', ''], ['/h4'], { extra });
    expect(none.multileg).toEqual(none.curl);
    expect(none.multileg[0]?.headers['user-agent']).toBeUndefined();
    const auto = await sideBySide(['-L', '-e', 'https://portal.example/;auto'], ['/r302'], { extra });
    expect(auto.multileg.map((m) => m.headers.referer)).toEqual([
      'https://portal.example/',
      `${recorderOrigin}/ml/r302`,
    ]);
    expect(auto.curl.map((m) => m.headers.referer)).toEqual(['https://portal.example/', `${recorderOrigin}/curl/r302`]);
  });

  it('C10: -F fields make one multipart/form-data body (its boundary in Content-Type), the same bytes on every leg of an NTLM handshake; name=value, name=@file (type from the extension), name=<file, ;type=, ;filename=, "quoted;values", @- stdin: the same bytes as curl sends', async () => {
    const text = file('notes.txt', 'line 1\nline 2\n');
    const png = file('pixel.png', Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 1, 0xff]));
    const bin = file('data', 'raw');
    const args = [
      '-F',
      'title=Quarterly report',
      '-F',
      `notes=@${text}`,
      '-F',
      `image=@${png}`,
      '-F',
      `blob=@${bin}`,
      '-F',
      `typed=@${text};type=text/x-notes`,
      '-F',
      `renamed=@${text};filename=other name.txt`,
      '-F',
      `inline=<${text}`,
      '-F',
      'semi="a;b"',
      '-F',
      'na"me=quoted name',
      '-F',
      'empty=',
    ];
    const r = await run([...alice(), ...args, `${server.origin}/auth/form`]);
    expect(r.code, r.stderr).toBe(0);
    const sent = legs('/auth/form');
    expect(sent.length).toBeGreaterThanOrEqual(2);
    const type = String(sent[0]!.requestHeaders['content-type']);
    const boundary = /^multipart\/form-data; boundary=(-{24}[0-9a-f]{16})$/.exec(type)?.[1];
    expect(boundary, type).toBeDefined();
    const expected = (b: string) =>
      Buffer.concat([
        Buffer.from(
          `--${b}\r\nContent-Disposition: form-data; name="title"\r\n\r\nQuarterly report\r\n` +
            `--${b}\r\nContent-Disposition: form-data; name="notes"; filename="notes.txt"\r\nContent-Type: text/plain\r\n\r\nline 1\nline 2\n\r\n` +
            `--${b}\r\nContent-Disposition: form-data; name="image"; filename="pixel.png"\r\nContent-Type: image/png\r\n\r\n`,
        ),
        Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 1, 0xff]),
        Buffer.from(
          `\r\n--${b}\r\nContent-Disposition: form-data; name="blob"; filename="data"\r\nContent-Type: application/octet-stream\r\n\r\nraw\r\n` +
            `--${b}\r\nContent-Disposition: form-data; name="typed"; filename="notes.txt"\r\nContent-Type: text/x-notes\r\n\r\nline 1\nline 2\n\r\n` +
            `--${b}\r\nContent-Disposition: form-data; name="renamed"; filename="other name.txt"\r\nContent-Type: text/plain\r\n\r\nline 1\nline 2\n\r\n` +
            `--${b}\r\nContent-Disposition: form-data; name="inline"\r\n\r\nline 1\nline 2\n\r\n` +
            `--${b}\r\nContent-Disposition: form-data; name="semi"\r\n\r\na;b\r\n` +
            `--${b}\r\nContent-Disposition: form-data; name="na%22me"\r\n\r\nquoted name\r\n` +
            `--${b}\r\nContent-Disposition: form-data; name="empty"\r\n\r\n\r\n` +
            `--${b}--\r\n`,
        ),
      ]);
    // Every leg, the 401's too, carried this very body: one boundary, one Buffer (C10).
    for (const leg of sent) {
      expect(leg.requestHeaders['content-type']).toBe(type);
      expect(leg.bodySha256).toBe(sha256(expected(boundary!)));
    }
    expect(JSON.parse(r.stdout)).toMatchObject({ user: 'EXAMPLE\\alice', method: 'POST' });
    const { curl, multileg } = await sideBySide(args, ['/form']);
    expect(multileg).toEqual(curl);
    expect(multileg[0]?.body).toBe(expected('BOUNDARY').toString('latin1'));
    const stdin = await sideBySide(['-F', 'a=1', '-F', 'up=@-'], ['/stdin'], { input: 'piped\n' });
    expect(stdin.multileg).toEqual(stdin.curl);
    expect(stdin.multileg[0]?.body).toContain('name="up"; filename="-"\r\n\r\npiped\n\r\n');
  });

  it("-F: with -d or -I it is curl's bad usage (2, curl's words); a field without = or with a ;param other than type and filename is bad usage; a file that cannot be read is curl's 26", async () => {
    expect(await run(['-F', 'a=1', '-d', 'b=2', `${recorderOrigin}/x`])).toMatchObject({
      code: 2,
      stdout: '',
      stderr:
        'multileg: You can only select one HTTP request method! You asked for both POST (-d, --data) and multipart formpost (-F, --form).\n',
    });
    // -G does not make -d go with -F or -T (curl 7.88 checked: 2 too).
    for (const upload of [
      ['-F', 'a=1'],
      ['-T', join(dir, 'ca.pem')],
    ])
      expect(await run(['-G', '-d', 'b=2', ...upload, `${recorderOrigin}/x`]), upload[0]).toMatchObject({
        code: 2,
        stdout: '',
      });
    expect(await run(['-F', 'a=1', '-I', `${recorderOrigin}/x`])).toMatchObject({
      code: 2,
      stderr:
        'multileg: You can only select one HTTP request method! You asked for both multipart formpost (-F, --form) and HEAD (-I, --head).\n',
    });
    expect(await run(['-F', 'novalue', `${recorderOrigin}/x`])).toMatchObject({
      code: 2,
      stderr: 'multileg: -F: a form field is name=value, name=@file or name=<file (one -F has no name=)\n',
    });
    // curl sends `a` and drops `;b` with a warning: here the value is not cut silently, nor repeated.
    expect(await run(['-F', 'm=a;b', `${recorderOrigin}/x`])).toMatchObject({
      code: 2,
      stderr:
        'multileg: -F m=…: a ; starts a parameter other than ;type= and ;filename= (curl would drop it from the value); to send a ; quote the value: m="…;…"\n',
    });
    const missing = join(dir, 'missing.bin');
    expect(await run(['-F', `f=@${missing}`, `${recorderOrigin}/x`])).toMatchObject({
      code: 26,
      stderr: `multileg: -F ${missing}: no such file\n`,
    });
    // A Content-Type given with -H keeps its value and gets the boundary (curl's).
    const own = parseCli(['-F', 'a=1', '-H', 'Content-Type: multipart/mixed', 'h/']);
    expect(own.headers['content-type']).toMatch(/^multipart\/mixed; boundary=-{24}[0-9a-f]{16}$/);
    expect(own.body?.toString()).toContain(String(own.headers['content-type']).split('boundary=')[1]);
  });

  it('S2: form data on the command line (-d, --data-binary, --data-raw, --data-urlencode, -F values) and the password of an -e URL are *** in ps; the files they name are not', () => {
    expect(
      shownArgv([
        '-d',
        'user=alice&password=SECRET1',
        '--data-binary=SECRET2',
        '--data-raw',
        '@SECRET3',
        '--data-urlencode',
        'pw=SECRET4',
        '--data-urlencode=SECRET5',
        '-F',
        'password=SECRET6',
        '-Ftoken=SECRET7;type=text/plain',
        '--form=upload=@report.pdf',
        '-F',
        'notes=<notes.txt',
        '-d',
        '@body.txt',
        '--data-urlencode',
        'n@file.txt',
        '-e',
        'https://bob:SECRET8@portal.example/;auto',
        'https://h/',
      ]),
    ).toEqual([
      '-d',
      '***',
      '--data-binary=***',
      '--data-raw',
      '***',
      '--data-urlencode',
      'pw=***',
      '--data-urlencode=***',
      '-F',
      'password=***',
      '-Ftoken=***',
      '--form=upload=@report.pdf',
      '-F',
      'notes=<notes.txt',
      '-d',
      '@body.txt',
      '--data-urlencode',
      'n@file.txt',
      '-e',
      'https://bob:***@portal.example/;auto',
      'https://h/',
    ]);
    expect(shownArgv(['-d', '@body.txt', '-F', 'f=@a.bin', '-e', 'https://portal.example/', 'https://h/'])).toBe(
      undefined,
    );
  });
});
