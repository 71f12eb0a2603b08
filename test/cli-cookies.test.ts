/**
 * The command line's cookies, as curl's: `-b NAME=VALUE` sent as given, `-b FILE` and `-c FILE`
 * turning the cookie engine on (RFC 6265's rules through tough-cookie, the Netscape file ours),
 * `-j`; cookies across the URLs of a command, -L hops and a handshake's 401s; a cookie is a
 * credential (S2): no value on -v, in a warning, -D's handshake heads, --har, or `ps`.
 * Against a small HTTP/1.1 server that sets cookies and records what comes back (test/cookie-server.ts),
 * which is also the forwarding proxy (-x) that lets the tests name hosts such as www.corp.co.uk,
 * and the reference server for https.
 */
import { lstatSync, mkdtempSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { CookieEngine } from '../src/cli/cookies.ts';
import { shownArgv } from '../src/cli/options.ts';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { runCli as run } from './cli-helpers.ts';
import { type CookieServer, c, pairs, SID, startCookieServer } from './cookie-server.ts';

/** The JSON lines of the test server's bodies, one per URL. */
const bodies = (stdout: string) =>
  stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { host: string; path: string; cookie: string | null });

/** 2100-01-01: an expiry that has not come. */
const FUTURE = 4102444800;

describe('multileg: cookies (-b, -c, -j)', () => {
  let server: CookieServer;
  let dir: string;
  /** Through the test server as a forwarding proxy: any host name works. */
  let proxy: string[];
  let n = 0;
  /** A fresh file name in the test folder. */
  const file = (name: string) => join(dir, `${++n}-${name}`);
  beforeAll(async () => {
    server = await startCookieServer();
    dir = mkdtempSync(join(tmpdir(), 'multileg-cookies-'));
    proxy = ['-x', server.origin];
  });
  afterAll(() => server.close());

  it('-b FILE: Netscape lines and Set-Cookie lines are loaded; each request gets what matches it by host or domain, path, Secure and expiry; a supercookie, a line without a domain and a bad line are skipped with a warning that shows no value', async () => {
    const cookies = file('cookies.txt');
    writeFileSync(
      cookies,
      [
        '# Netscape HTTP Cookie File',
        '',
        'www.corp.co.uk\tFALSE\t/\tFALSE\t0\thostonly\th1',
        '.corp.co.uk\tTRUE\t/\tFALSE\t0\tdomainwide\td1',
        'www.corp.co.uk\tFALSE\t/app\tFALSE\t0\tapponly\tp1',
        'www.corp.co.uk\tFALSE\t/\tTRUE\t0\tsecureonly\ts1',
        'www.corp.co.uk\tFALSE\t/\tFALSE\t1\texpired\te1',
        `#HttpOnly_www.corp.co.uk\tFALSE\t/\tFALSE\t${FUTURE}\thttponly\tho1`,
        '.co.uk\tTRUE\t/\tFALSE\t0\tsupercookie\tSUPER1',
        'Set-Cookie: fromheader=sc1; Domain=corp.co.uk; Path=/',
        'Set-Cookie: nodomain=NODOMAIN1',
        'not a cookie line',
      ].join('\r\n'),
    );
    const r = await run([
      ...proxy,
      '-b',
      cookies,
      'http://www.corp.co.uk/app/x',
      'http://other.corp.co.uk/',
      'http://www.corp.co.uk/application',
      'http://www.other.co.uk/',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const [app, other, application, elsewhere] = bodies(r.stdout);
    // Host-only and domain cookies, the /app path, an HttpOnly one; no Secure one over http://, no expired one.
    expect(pairs(app!.cookie)).toEqual([
      'apponly=p1',
      'domainwide=d1',
      'fromheader=sc1',
      'hostonly=h1',
      'httponly=ho1',
    ]);
    // Another host of the domain: the domain cookies only.
    expect(pairs(other!.cookie)).toEqual(['domainwide=d1', 'fromheader=sc1']);
    // /application is not under /app (RFC 6265 §5.1.4).
    expect(pairs(application!.cookie)).toEqual(['domainwide=d1', 'fromheader=sc1', 'hostonly=h1', 'httponly=ho1']);
    // The supercookie for every .co.uk site was refused.
    expect(elsewhere!.cookie).toBeNull();
    expect(r.stderr).toContain(
      `multileg: Warning: -b ${cookies}: 3 line(s) skipped (line 9: cookie supercookie: its domain co.uk is a public suffix`,
    );
    expect(r.stderr).toContain('line 11: Set-Cookie nodomain has no Domain=');
    expect(r.stderr).toContain('line 12: not a cookie');
    expect(r.stderr).not.toMatch(/SUPER1|NODOMAIN1/);

    // -j: the file's session cookies stay out (the one with an expiry goes).
    const j = await run([...proxy, '-b', cookies, '-j', '-s', 'http://www.corp.co.uk/app/x']);
    expect(j.code, j.stderr).toBe(0);
    expect(pairs(bodies(j.stdout)[0]!.cookie)).toEqual(['httponly=ho1']);
    // -s hides the warning.
    expect(j.stderr).toBe('');
  });

  it("-b FILE as curl reads it: TRUE and FALSE in any case; a -D header dump's status and header lines passed over without a word; a line whose value holds a control character skipped with a warning, the others sent; an expiry past JavaScript's last date, or such a Max-Age, kept as a lasting cookie (not made a session one)", async () => {
    const cookies = file('cookies.txt');
    writeFileSync(
      cookies,
      [
        '.corp.co.uk\ttrue\t/\tfalse\t0\tlower\tl1',
        `www.corp.co.uk\tFALSE\t/\tFALSE\t${FUTURE}\tctl\ta\u0001b`,
        `www.corp.co.uk\tFALSE\t/\ttrue\t${FUTURE}\tsec\ts1`,
        'www.corp.co.uk\tFALSE\t/\tFALSE\t99999999999999\tlasting\tx1',
        // What -D writes: curl's documented other kind of -b file.
        'HTTP/1.1 200 OK',
        'Content-Type: text/plain',
        'Set-Cookie: dumped=d1; Domain=corp.co.uk; Path=/; Max-Age=3600',
        '',
      ].join('\r\n'),
    );
    const r = await run([
      ...proxy,
      '-b',
      cookies,
      '-j',
      '-c',
      '-',
      `http://www.corp.co.uk/show?${c('big=1; Max-Age=99999999999999')}`,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(pairs(bodies(r.stdout)[0]!.cookie)).toEqual(['dumped=d1', 'lasting=x1']);
    expect(r.stderr).toBe(
      `multileg: Warning: -b ${cookies}: 1 line(s) skipped (line 2: its name or value holds a control character (curl drops such a cookie too))\n`,
    );
    // Without -j: the session cookie written in lower case goes too, to the domain's hosts.
    const lower = await run([...proxy, '-b', cookies, '-s', 'http://other.corp.co.uk/show']);
    expect(pairs(bodies(lower.stdout)[0]!.cookie)).toEqual(['dumped=d1', 'lower=l1']);
    const expiry = (name: string) =>
      Number(
        r.stdout
          .split('\n')
          .find((l) => l.endsWith(`\t${name}\t${name === 'big' ? '1' : 'x1'}`))
          ?.split('\t')[4],
      );
    // Secure (written `true`): not sent over http://, and saved as TRUE.
    expect(r.stdout).toContain(`www.corp.co.uk\tFALSE\t/\tTRUE\t${FUTURE}\tsec\ts1\n`);
    expect(expiry('lasting')).toBeGreaterThan(FUTURE);
    expect(expiry('big')).toBeGreaterThan(FUTURE);
  });

  it("a request carries at most 150 cookies in a Cookie header of at most 8190 bytes, as curl's (CVE-2022-32205): a server that sets hundreds cannot make every later request too big to be answered; -v counts those left out", async () => {
    const many = file('many.txt');
    writeFileSync(
      many,
      Array.from({ length: 200 }, (_, i) => `many.corp.co.uk\tFALSE\t/\tFALSE\t0\tk${i}\tv\n`).join(''),
    );
    const big = file('big.txt');
    writeFileSync(
      big,
      Array.from({ length: 3 }, (_, i) => `big.corp.co.uk\tFALSE\t/\tFALSE\t0\tb${i}\t${'x'.repeat(4000)}\n`).join(''),
    );
    const r = await run([...proxy, '-v', '-b', many, '-b', big, 'http://many.corp.co.uk/', 'http://big.corp.co.uk/']);
    expect(r.code, r.stderr).toBe(0);
    const [first, second] = bodies(r.stdout);
    // The oldest first (RFC 6265 §5.4, all on one path): k0 … k149.
    expect(pairs(first!.cookie)).toEqual(Array.from({ length: 150 }, (_, i) => `k${i}=v`).sort());
    expect(pairs(second!.cookie).map((p) => p.slice(0, 3))).toEqual(['b0=', 'b1=']);
    expect(second!.cookie!.length).toBeLessThanOrEqual(8190);
    expect(r.stderr).toContain('; 50 more left out (at most 150 cookies in 8190 bytes a request, as curl)');
    expect(r.stderr).toContain('; 1 more left out (at most 150 cookies');
  });

  it('-b FILE that is not there, or -b "", turns the engine on with no cookies (curl\'s); one that cannot be read is a warning, and the command goes on', async () => {
    for (const missing of [join(dir, 'no-such-file'), '']) {
      const r = await run([
        ...proxy,
        '-b',
        missing,
        `http://www.corp.co.uk/set?${c('sid=1; Path=/')}`,
        'http://www.corp.co.uk/show',
      ]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toBe('');
      // The engine is on: the first response's cookie goes with the second URL.
      expect(bodies(r.stdout)[1]!.cookie).toBe('sid=1');
    }
    const r = await run([...proxy, '-b', dir, 'http://www.corp.co.uk/show']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe(`multileg: Warning: -b ${dir}: is a directory; no cookies loaded from it\n`);
  });

  it("-b NAME=VALUE is sent as given (several joined), after the jar's cookies in one Cookie header; a -H Cookie is sent alone instead, as curl does; without -b FILE or -c no Set-Cookie is kept", async () => {
    const given = await run([
      ...proxy,
      '-b',
      'a=1',
      '-b',
      'b=2',
      `http://www.corp.co.uk/set?${c('sid=1; Path=/')}`,
      'http://www.corp.co.uk/show',
    ]);
    expect(given.code, given.stderr).toBe(0);
    // No engine: the first answer's sid is not sent with the second URL.
    expect(bodies(given.stdout).map((b) => b.cookie)).toEqual(['a=1; b=2', 'a=1; b=2']);
    const header = await run([...proxy, '-b', 'a=1', '-H', 'Cookie: mine=1', 'http://www.corp.co.uk/show']);
    expect(bodies(header.stdout)[0]!.cookie).toBe('mine=1');
    // With the engine on: the jar's cookie, then the given one, in one header (RFC 6265 §5.4).
    const both = await run([
      ...proxy,
      '-c',
      file('jar.txt'),
      '-b',
      'a=1',
      `http://www.corp.co.uk/set?${c('sid=1; Path=/')}`,
      'http://www.corp.co.uk/show',
    ]);
    expect(both.code, both.stderr).toBe(0);
    expect(bodies(both.stdout)[1]!.cookie).toBe('sid=1; a=1');
    expect(server.to('www.corp.co.uk', '/show').at(-1)!.cookie).toBe('sid=1; a=1');
  });

  it("-c FILE: every cookie at the end in curl's Netscape format (its header, #HttpOnly_, a leading dot and TRUE for a domain cookie, 0 for a session cookie), mode 0600 in place of the old file; -b reads it back; -c - writes it to stdout", async () => {
    const jar = file('jar.txt');
    writeFileSync(jar, 'old content\n', { mode: 0o644 });
    const r = await run([
      ...proxy,
      '-c',
      jar,
      `http://www.corp.co.uk/app/set?${c('sid=v1; Path=/')}&${c('keep=v2; Max-Age=3600')}&${c('ho=v3; HttpOnly; Path=/')}&${c('dw=v4; Domain=corp.co.uk; Path=/; Secure')}`,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(statSync(jar).mode & 0o777).toBe(0o600);
    const text = readFileSync(jar, 'utf8');
    expect(text.startsWith('# Netscape HTTP Cookie File\n# https://curl.se/docs/http-cookies.html\n')).toBe(true);
    expect(text).not.toContain('old content');
    const lines = text.split('\n').filter((l) => l !== '' && (!l.startsWith('#') || l.startsWith('#HttpOnly_')));
    const keep = lines.find((l) => l.endsWith('\tkeep\tv2'))!.split('\t');
    // Max-Age=3600 from now, in seconds; the default path of /app/set is /app.
    expect(keep.slice(0, 4)).toEqual(['www.corp.co.uk', 'FALSE', '/app', 'FALSE']);
    expect(Math.abs(Number(keep[4]) - (Date.now() / 1000 + 3600))).toBeLessThan(120);
    expect(lines.filter((l) => !l.includes('\tkeep\t')).sort()).toEqual([
      '#HttpOnly_www.corp.co.uk\tFALSE\t/\tFALSE\t0\tho\tv3',
      'www.corp.co.uk\tFALSE\t/\tFALSE\t0\tsid\tv1',
    ]);
    // The Secure one came over plain http:// and was refused.
    expect(text).not.toContain('\tdw\t');

    // Read back with -b: sent where they belong; -c - writes the jar to stdout, after the body.
    const again = await run([...proxy, '-b', jar, '-c', '-', 'http://www.corp.co.uk/app/show']);
    expect(again.code, again.stderr).toBe(0);
    expect(pairs(bodies(again.stdout)[0]!.cookie)).toEqual(['ho=v3', 'keep=v2', 'sid=v1']);
    expect(again.stdout).toMatch(/^\{.*\}\n# Netscape HTTP Cookie File\n/);
    expect(again.stdout).toContain('www.corp.co.uk\tFALSE\t/\tFALSE\t0\tsid\tv1\n');
  });

  it('-c FILE that is a symbolic link: the link is replaced by the new file (mode 0600), never written through (the file it names is unchanged), and no temporary file is left', async () => {
    const target = file('elsewhere.txt');
    writeFileSync(target, 'not a cookie jar\n', { mode: 0o644 });
    const sub = mkdtempSync(join(dir, 'link-'));
    const jar = join(sub, 'jar.txt');
    symlinkSync(target, jar);
    const r = await run([...proxy, '-c', jar, `http://www.corp.co.uk/set?${c('sid=LINKED1; Path=/')}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(target, 'utf8')).toBe('not a cookie jar\n');
    expect(lstatSync(jar).isFile()).toBe(true);
    expect(lstatSync(jar).mode & 0o777).toBe(0o600);
    expect(readFileSync(jar, 'utf8')).toContain('\tsid\tLINKED1\n');
    expect(readdirSync(sub)).toEqual(['jar.txt']);
  });

  it("a cookie's bytes go as they came, as curl keeps them: a -b file's UTF-8 value is sent byte for byte, and a Set-Cookie's UTF-8 value is written to -c byte for byte", async () => {
    // 'é€' in UTF-8: five bytes, as curl writes a cookie that came so into its jar.
    const utf8 = Buffer.from('é€', 'utf8');
    const cookies = file('cookies.txt');
    writeFileSync(
      cookies,
      Buffer.concat([Buffer.from('www.corp.co.uk\tFALSE\t/\tFALSE\t0\tuni\t'), utf8, Buffer.from('\n')]),
    );
    const jar = file('jar.txt');
    // The server sets the same bytes (its header strings are latin1: a character a byte).
    const r = await run([
      ...proxy,
      '-b',
      cookies,
      '-c',
      jar,
      'http://www.corp.co.uk/show',
      `http://www.corp.co.uk/set?${c(`back=${utf8.toString('latin1')}; Path=/`)}`,
    ]);
    expect(r.code, r.stderr).toBe(0);
    // Node's server reads header bytes as latin1 too.
    expect(server.to('www.corp.co.uk', '/show').at(-1)!.cookie).toBe(`uni=${utf8.toString('latin1')}`);
    const saved = readFileSync(jar);
    for (const name of ['uni', 'back'])
      expect(saved.includes(Buffer.concat([Buffer.from(`\t${name}\t`), utf8, Buffer.from('\n')]))).toBe(true);
  });

  it('-c FILE is written whatever came of the transfers (a failed last one too); one that cannot be written is said, without a value, and exits 23 (curl says it with -v only); --create-dirs makes its directory', async () => {
    const jar = file('jar.txt');
    // The second URL cannot connect (7): the jar still holds the first one's cookie.
    const r = await run([
      ...proxy,
      '-c',
      jar,
      `http://www.corp.co.uk/set?${c('sid=KEPT1; Path=/')}`,
      '--noproxy',
      '127.0.0.1',
      'http://127.0.0.1:1/',
    ]);
    expect(r.code).toBe(7);
    expect(readFileSync(jar, 'utf8')).toContain('\tsid\tKEPT1\n');
    const nowhere = join(dir, 'no-such-dir', 'jar.txt');
    const w = await run([...proxy, '-c', nowhere, `http://www.corp.co.uk/set?${c('sid=SECRET2; Path=/')}`]);
    expect(w.code).toBe(23);
    expect(w.stderr).toBe(
      `multileg: -c ${nowhere}: no such directory (ENOENT); --create-dirs makes the missing directories; the cookies were not saved\n`,
    );
    // -s hides it; the exit code stays.
    const s = await run([...proxy, '-s', '-c', nowhere, 'http://www.corp.co.uk/show']);
    expect([s.code, s.stderr]).toEqual([23, '']);
    // --create-dirs makes it, as for -o and -D.
    const made = await run([
      ...proxy,
      '--create-dirs',
      '-c',
      nowhere,
      `http://www.corp.co.uk/set?${c('sid=MADE3; Path=/')}`,
    ]);
    expect(made.code, made.stderr).toBe(0);
    expect(readFileSync(nowhere, 'utf8')).toContain('\tsid\tMADE3\n');
  });

  it('several URLs of one command share the jar: a cookie set by one goes with the next ones it matches', async () => {
    const r = await run([
      ...proxy,
      '-b',
      '',
      `http://www.corp.co.uk/one?${c('host=1; Path=/')}&${c('dom=2; Domain=corp.co.uk; Path=/')}`,
      'http://www.corp.co.uk/two',
      'http://other.corp.co.uk/three',
      'http://www.elsewhere.co.uk/four',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(bodies(r.stdout).map((b) => pairs(b.cookie))).toEqual([[], ['dom=2', 'host=1'], ['dom=2'], []]);
  });

  it("-L: a redirect's own cookies go with the next hop; to another host by the cookies' domain rules alone (not --trust's), while -b NAME=VALUE and -H Cookie stay on the first origin unless --location-trusted", async () => {
    const to = encodeURIComponent(`http://other.corp.co.uk/land`);
    const url = `http://www.corp.co.uk/redirect?to=${to}&${c('dw=1; Domain=corp.co.uk; Path=/')}&${c('ho=2; Path=/')}`;
    const r = await run([...proxy, '-L', '-b', '', '-b', 'given=1', '-H', 'X-Other: 1', url]);
    expect(r.code, r.stderr).toBe(0);
    const landed = server.to('other.corp.co.uk', '/land').at(-1)!;
    // The domain cookie the 302 set goes on; its host-only one and the given string do not.
    expect(pairs(landed.cookie)).toEqual(['dw=1']);
    const trusted = await run([...proxy, '--location-trusted', '-b', '', '-b', 'given=1', url]);
    expect(trusted.code, trusted.stderr).toBe(0);
    expect(pairs(server.to('other.corp.co.uk', '/land').at(-1)!.cookie)).toEqual(['dw=1', 'given=1']);
    // Same origin: the hop's host-only cookie goes too.
    const same = `http://www.corp.co.uk/redirect?to=/next&${c('hop=1; Path=/')}`;
    const s = await run([...proxy, '-L', '-c', file('jar.txt'), same]);
    expect(s.code, s.stderr).toBe(0);
    expect(bodies(s.stdout)[0]).toEqual({ host: 'www.corp.co.uk', path: '/next', cookie: 'hop=1' });
  });

  it("a handshake's 401s: the cookie of the bare 401 and of the NTLM challenge go on the next legs (the credentials' leg carries both) and into the jar; -v names cookies and -D shows the 401s' Set-Cookie [redacted], never a value (S2)", async () => {
    const jar = file('jar.txt');
    const heads = file('heads.txt');
    const har = file('legs.har');
    const r = await run([
      '-u',
      'EXAMPLE\\alice:alicepw',
      // Not --ntlm alone: it sends NEGOTIATE on the first request, and this is about the bare 401's cookie.
      '--schemes',
      'NTLM,Basic',
      '-v',
      '-c',
      jar,
      '-D',
      heads,
      '--har',
      har,
      `${server.origin}/auth/one`,
      `${server.origin}/auth/two`,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const host = new URL(server.origin).host;
    const one = server.to(host, '/auth/one');
    expect(one.map((s) => [s.auth, pairs(s.cookie)])).toEqual([
      [undefined, []],
      ['NTLM/1', ['lb=node1']],
      ['NTLM/3', ['lb=node1', 'leg=challenge']],
    ]);
    // The authenticated connection's next request: every cookie, the 200's session cookie too.
    expect(server.to(host, '/auth/two').map((s) => pairs(s.cookie))).toEqual([
      [SID, 'lb=node1', 'leg=challenge'].sort(),
    ]);
    const saved = readFileSync(jar, 'utf8');
    for (const line of ['\tlb\tnode1\n', '\tleg\tchallenge\n', `\t${SID.replace('=', '\t')}\n`])
      expect(saved).toContain(line);
    // -v: names only.
    expect(r.stderr).toContain(
      '* Added cookie leg (value [redacted]) for domain 127.0.0.1 (this host only), path /, expire 0',
    );
    expect(r.stderr).toContain('* Sending cookie(s) lb, leg (values [redacted])');
    // -D: the handshake's 401s from the trace, their Set-Cookie redacted.
    const dumped = readFileSync(heads, 'latin1');
    expect(dumped.match(/^set-cookie: \[redacted\]\r$/gm)).toHaveLength(2);
    for (const secret of ['node1', 'challenge', 'S3CRET']) {
      expect(r.stderr).not.toContain(secret);
      expect(readFileSync(har, 'utf8')).not.toContain(secret);
    }
    // (The final head is the response itself, shown verbatim, as curl shows it.)
    expect(dumped).toContain(`set-cookie: ${SID}; Path=/; HttpOnly\r\n`);
  });

  it("a response's Set-Cookie is refused for another site's domain, a public suffix, Secure over plain http:// (RFC 6265, -v says why, by name); a Domain that is the single-label host itself makes a host-only cookie (RFC 6265 §5.3)", async () => {
    const r = await run([
      ...proxy,
      '-v',
      '-c',
      '-',
      `http://www.corp.co.uk/set?${c('other=OTHER1; Domain=other.co.uk')}&${c('super=SUPER2; Domain=co.uk')}&${c('sec=SEC3; Secure')}&${c('ok=1; Domain=corp.co.uk')}`,
      `http://intranet/set?${c('single=1; Domain=intranet')}`,
      'http://intranet/again',
      'http://intranet2/again',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(
      '* Refused cookie other from www.corp.co.uk: its Domain=other.co.uk is neither this host nor a domain above it',
    );
    expect(r.stderr).toContain(
      '* Refused cookie super from www.corp.co.uk: its domain co.uk is a public suffix (a cookie for every site under it is refused)',
    );
    expect(r.stderr).toContain('* Refused cookie sec from www.corp.co.uk: it is Secure and came over plain http://');
    // (The request lines show the test's URLs, which carry the Set-Cookie values in their query.)
    expect(r.stderr.split('\n').filter((l) => !l.startsWith('> '))).not.toContainEqual(
      expect.stringMatching(/OTHER1|SUPER2|SEC3/),
    );
    expect(r.stdout).toContain('.corp.co.uk\tTRUE\t/\tFALSE\t0\tok\t1\n');
    expect(r.stdout).toContain('intranet\tFALSE\t/\tFALSE\t0\tsingle\t1\n');
    expect(r.stdout).not.toMatch(/OTHER1|SUPER2|SEC3/);
    expect(pairs(server.to('intranet', '/again').at(-1)!.cookie)).toEqual(['single=1']);
    expect(server.to('intranet2', '/again').at(-1)!.cookie).toBeUndefined();
  });

  it('expiry: Max-Age=0 and a past Expires remove a cookie the -b file held; Max-Age counts from when it came; an expired one is neither sent nor saved', async () => {
    const cookies = file('cookies.txt');
    writeFileSync(
      cookies,
      `www.corp.co.uk\tFALSE\t/\tFALSE\t${FUTURE}\tgone\tg1\nwww.corp.co.uk\tFALSE\t/\tFALSE\t${FUTURE}\talso\ta1\nwww.corp.co.uk\tFALSE\t/\tFALSE\t${FUTURE}\tstays\ts1\n`,
    );
    const r = await run([
      ...proxy,
      '-b',
      cookies,
      '-c',
      '-',
      `http://www.corp.co.uk/set?${c('gone=; Max-Age=0')}&${c('also=x; Expires=Thu, 01 Jan 1970 00:00:00 GMT')}&${c('fresh=1; Max-Age=60')}`,
      'http://www.corp.co.uk/after',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const [first, after] = bodies(r.stdout);
    expect(pairs(first!.cookie)).toEqual(['also=a1', 'gone=g1', 'stays=s1']);
    expect(pairs(after!.cookie)).toEqual(['fresh=1', 'stays=s1']);
    expect(r.stdout).not.toMatch(/\tgone\t|\talso\t/);
    const fresh = r.stdout.split('\n').find((l) => l.endsWith('\tfresh\t1'))!;
    expect(Math.abs(Number(fresh.split('\t')[4]) - (Date.now() / 1000 + 60))).toBeLessThan(60);
  });

  it("Max-Age counts from when the cookie came (RFC 6265 §5.2.2), not from its last use: sent the whole time, it still ends on time (tough-cookie's own count restarts at each use)", () => {
    vi.useFakeTimers({ now: new Date('2030-01-01T00:00:00Z') });
    try {
      const engine = new CookieEngine();
      const url = 'https://www.corp.co.uk/';
      engine.setCookies(url, ['short=1; Max-Age=60']);
      vi.advanceTimersByTime(50_000);
      expect(engine.cookieHeader(url)).toBe('short=1');
      expect(engine.netscape()).toContain(`\t${Date.parse('2030-01-01T00:01:00Z') / 1000}\tshort\t1\n`);
      vi.advanceTimersByTime(20_000);
      expect(engine.cookieHeader(url)).toBeUndefined();
      expect(engine.netscape()).not.toContain('short');
    } finally {
      vi.useRealTimers();
    }
  });

  it('S2: -b NAME=VALUE is hidden from ps as a cookie header is; -b FILE is not', () => {
    expect(
      shownArgv(['-b', 'sid=SECRET1', '--cookie=sid=SECRET2', '-bsid=SECRET3', '-b', 'jar.txt', 'https://h/']),
    ).toEqual(['-b', '***', '--cookie=***', '-b***', '-b', 'jar.txt', 'https://h/']);
    expect(shownArgv(['-b', 'jar.txt', '-c', 'jar.txt', 'https://h/'])).toBeUndefined();
  });

  it('-b - reads the cookies from stdin; with --password-stdin it is bad usage (one of them can read it)', async () => {
    const r = await run([...proxy, '-b', '-', 'http://www.corp.co.uk/show'], {
      input: 'www.corp.co.uk\tFALSE\t/\tFALSE\t0\tpiped\t1\n',
    });
    expect(r.code, r.stderr).toBe(0);
    expect(bodies(r.stdout)[0]!.cookie).toBe('piped=1');
    const both = await run(['-b', '-', '--password-stdin', '-u', 'alice', 'https://h/'], { input: 'pw\n' });
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/^multileg: -b - and --password-stdin: only one of them can read stdin/);
  });

  describe('over https (the reference server)', () => {
    let ref: ReferenceServer;
    let ca: string;
    beforeAll(async () => {
      ref = await startReferenceServer({ mode: 'session' });
      ca = join(dir, 'ca.pem');
      writeFileSync(ca, ref.ca);
    });
    afterAll(() => ref.close());

    it('a Secure cookie goes over https; to an http:// host it does not (loopback aside: curl and RFC 6265bis count it secure)', async () => {
      const cookies = file('cookies.txt');
      writeFileSync(
        cookies,
        [
          `${new URL(ref.origin).hostname}\tFALSE\t/\tTRUE\t0\tsec\ts1`,
          '127.0.0.1\tFALSE\t/\tTRUE\t0\tsec\ts2',
          'www.corp.co.uk\tFALSE\t/\tTRUE\t0\tsec\ts3',
          '.corp.co.uk\tTRUE\t/\tFALSE\t0\tplain\tp1',
        ].join('\n'),
      );
      const r = await run(['--cacert', ca, '-b', cookies, `${ref.origin}/public/secure`]);
      expect(r.code, r.stderr).toBe(0);
      expect(ref.exchanges.find((e) => e.path === '/public/secure')?.requestHeaders.cookie).toBe('sec=s1');
      const plain = await run([...proxy, '-b', cookies, 'http://www.corp.co.uk/plain', `${server.origin}/loopback`]);
      expect(plain.code, plain.stderr).toBe(0);
      expect(bodies(plain.stdout).map((b) => b.cookie)).toEqual(['plain=p1', 'sec=s2']);
    });
  });
});
