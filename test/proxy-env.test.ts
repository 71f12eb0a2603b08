/** H5: which requests go through which proxy — the `proxy` option and HTTP(S)_PROXY / NO_PROXY as curl, .NET and Go read them. */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { ConfigError, MultilegAgent, ProxyUrlError } from '../src/index.ts';
import { authority, ProxyResolver, parseNoProxy, shouldProxy } from '../src/proxy/options.ts';

const via = (r: ProxyResolver, origin: string) => {
  const route = r.route(origin);
  return route ? `${route.kind} ${route.proxy.origin}` : 'direct';
};

describe('proxy selection', () => {
  it('H5: HTTPS_PROXY for https targets, HTTP_PROXY for http ones; with HTTP_PROXY (or http_proxy) alone https goes directly, as curl, .NET and Go (undici fell back to it)', () => {
    const both = new ProxyResolver(undefined, { HTTPS_PROXY: 'http://secure:3128', HTTP_PROXY: 'http://plain:8080' });
    expect(via(both, 'https://a.example')).toBe('tunnel http://secure:3128');
    expect(via(both, 'http://a.example')).toBe('forward http://plain:8080');
    for (const name of ['HTTP_PROXY', 'http_proxy']) {
      const onlyHttp = new ProxyResolver(undefined, { [name]: 'http://plain:8080' });
      // Before: 'tunnel http://plain:8080', the https host name and proxy credentials to a proxy named for http.
      expect(via(onlyHttp, 'https://a.example'), name).toBe('direct');
      expect(via(onlyHttp, 'http://a.example'), name).toBe('forward http://plain:8080');
      // Still a proxy, for setProxyCredentials.
      expect(onlyHttp.configured).toBe(true);
    }
    const lower = new ProxyResolver(undefined, { https_proxy: 'http://lower:1', HTTPS_PROXY: 'http://upper:2' });
    expect(via(lower, 'https://a.example')).toBe('tunnel http://lower:1');
    expect(via(new ProxyResolver(undefined, { HTTPS_PROXY: '' }), 'https://a.example')).toBe('direct');
    expect(via(new ProxyResolver(false, { HTTPS_PROXY: 'http://p:1' }), 'https://a.example')).toBe('direct');
  });

  it("H5/S1: under CGI (REQUEST_METHOD set) HTTP_PROXY is ignored: a request's Proxy header sets it (httpoxy); http_proxy and HTTPS_PROXY still count", () => {
    const cgi = { REQUEST_METHOD: 'GET', HTTP_PROXY: 'http://attacker:8080' };
    expect(via(new ProxyResolver(undefined, cgi), 'http://a.example')).toBe('direct');
    expect(via(new ProxyResolver(undefined, cgi), 'https://a.example')).toBe('direct');
    const lower = new ProxyResolver(undefined, { ...cgi, http_proxy: 'http://corp:3128' });
    expect(via(lower, 'http://a.example')).toBe('forward http://corp:3128');
    const https = new ProxyResolver(undefined, { ...cgi, HTTPS_PROXY: 'http://secure:3128' });
    expect(via(https, 'https://a.example')).toBe('tunnel http://secure:3128');
    expect(via(https, 'http://a.example')).toBe('direct');
  });

  it("H5/S1: a proxy URL's user:password is decoded, or refused with a ConfigError naming the fix (never the password) when an escape is malformed (review r47: a bare URIError); proxy.credentials: null is none, the URL's user:password included", () => {
    const account = (r: ProxyResolver) => r.route('https://a.example')?.proxy.account;
    expect(account(new ProxyResolver(undefined, { HTTPS_PROXY: 'http://DOM%5Cu:p%25w@p:1' }))).toBe('DOM\\u');
    for (const make of [
      () => new ProxyResolver(undefined, { HTTPS_PROXY: 'http://u:p%zzSECRET@p:1' }),
      () => new ProxyResolver({ uri: 'http://u:p%zzSECRET@p:1' }, {}),
    ]) {
      let err: unknown;
      try {
        make();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ConfigError);
      expect(err).toMatchObject({ code: 'MULTILEG_CONFIG', option: 'proxy.uri' });
      expect((err as Error).message).toContain('%25');
      expect((err as Error).message).not.toContain('SECRET');
    }
    // Before: the URL's user:password went all the same.
    expect(account(new ProxyResolver({ uri: 'http://u:pw@p:1', credentials: null }, {}))).toBeUndefined();
    expect(account(new ProxyResolver({ uri: 'http://u:pw@p:1' }, {}))).toBe('u');
  });

  it('H5: NO_PROXY: *, exact hosts, suffixes with and without a dot, *.suffix, host:port, case-insensitive', () => {
    const r = (noProxy: string) =>
      new ProxyResolver(undefined, { HTTPS_PROXY: 'http://p:1', HTTP_PROXY: 'http://p:1', NO_PROXY: noProxy });
    expect(via(r('*'), 'https://x.test')).toBe('direct');
    expect(via(r('Example.COM'), 'https://example.com')).toBe('direct');
    expect(via(r('example.com'), 'https://www.example.com')).toBe('direct');
    expect(via(r('.example.com'), 'https://example.com')).toBe('direct');
    expect(via(r('*.example.com'), 'https://example.com')).toBe('tunnel http://p:1');
    expect(via(r('*.example.com'), 'https://a.example.com')).toBe('direct');
    expect(via(r('example.com:8443'), 'https://example.com')).toBe('tunnel http://p:1');
    expect(via(r('example.com:8443'), 'https://example.com:8443')).toBe('direct');
    expect(via(r('other.org, example.com'), 'https://EXAMPLE.com')).toBe('direct');
    expect(via(r('notexample.com'), 'https://example.com')).toBe('tunnel http://p:1');
    expect(via(r('[::1]:443'), 'https://[::1]')).toBe('direct');
    expect(via(r('example.com'), 'https://example.com.')).toBe('direct');
    expect(via(r('example.com:80'), 'http://example.com')).toBe('direct');
    expect(via(r('example.com:80'), 'http://example.com:8080')).toBe('forward http://p:1');
    expect(via(r('*:8443'), 'https://x.test:8443')).toBe('direct');
    expect(via(r('*:8443'), 'https://x.test')).toBe('tunnel http://p:1');
  });

  it('H5: NO_PROXY is re-read when it changes; the `proxy` option ignores it unless given noProxy', () => {
    const env: Record<string, string | undefined> = { HTTPS_PROXY: 'http://p:1' };
    const r = new ProxyResolver(undefined, env);
    expect(via(r, 'https://a.test')).toBe('tunnel http://p:1');
    env.NO_PROXY = 'a.test';
    expect(via(r, 'https://a.test')).toBe('direct');
    const explicit = new ProxyResolver('http://q:2', env);
    expect(via(explicit, 'https://a.test')).toBe('tunnel http://q:2');
    const withList = new ProxyResolver({ uri: 'http://q:2', noProxy: '.test' }, env);
    expect(via(withList, 'https://a.test')).toBe('direct');
    const tunnelHttp = new ProxyResolver({ uri: 'http://q:2', http: 'tunnel' }, {});
    expect(via(tunnelHttp, 'http://a.test')).toBe('tunnel http://q:2');
  });

  it('H5: the proxy origin never shows userinfo; userinfo becomes proxy credentials', () => {
    const r = new ProxyResolver(undefined, { HTTPS_PROXY: 'http://al%40ice:s3cret@proxy.test:3128' });
    const route = r.route('https://a.test')!;
    expect(route.proxy.origin).toBe('http://proxy.test:3128');
    expect(JSON.stringify(route.proxy)).not.toContain('s3cret');
    expect(route.proxy.mechanisms.get('Basic')).toBeDefined();
  });

  it('H5: a proxy address without a scheme is http://; without a port, the scheme’s default port', () => {
    const bare = new ProxyResolver(undefined, { HTTPS_PROXY: 'proxy.test:3128', HTTP_PROXY: 'https://secure.test' });
    expect(bare.route('https://a.test')!.proxy).toMatchObject({
      origin: 'http://proxy.test:3128',
      port: 3128,
      tls: false,
    });
    expect(bare.route('http://a.test')!.proxy).toMatchObject({ origin: 'https://secure.test', port: 443, tls: true });
    expect(new ProxyResolver('http://plain.test').route('https://a.test')!.proxy.port).toBe(80);
    // Only http and https requests are proxied.
    expect(via(bare, 'ftp://a.test')).toBe('direct');
  });

  it('H5: the CONNECT authority puts an IPv6 address in brackets', () => {
    expect(authority('::1', 8443)).toBe('[::1]:8443');
    expect(authority('[::1]', 443)).toBe('[::1]:443');
    expect(authority('127.0.0.1', 80)).toBe('127.0.0.1:80');
    expect(authority('localhost', 443)).toBe('localhost:443');
  });

  it('H5: matches undici EnvHttpProxyAgent parsing on mixed separators', () => {
    const entries = parseNoProxy(' a.test,,b.test  .c.test *.d.test');
    expect(entries.map((e) => e.hostname)).toEqual(['a.test', 'b.test', 'c.test', 'd.test']);
    expect(shouldProxy(entries, new URL('https://x.c.test'))).toBe(false);
    expect(shouldProxy(entries, new URL('https://e.test'))).toBe(true);
  });

  it('H5: NO_PROXY address ranges (10.0.0.0/8, fd00::/8) bypass the proxy for hosts written as IP addresses, as curl 7.86+ does; a name is not resolved for them', () => {
    const env = {
      HTTP_PROXY: 'http://plain:8080',
      NO_PROXY: '10.0.0.0/8, fd00::/8 [2001:db8::]/32 192.168.1.7/0 1.2.3.4/33',
    };
    const r = new ProxyResolver(undefined, env);
    expect(via(r, 'http://10.1.2.3:81/')).toBe('direct');
    expect(via(r, 'http://11.0.0.1/')).toBe('forward http://plain:8080');
    expect(via(r, 'http://[fd12::1]/')).toBe('direct');
    expect(via(r, 'http://[fe00::1]/')).toBe('forward http://plain:8080');
    expect(via(r, 'http://[2001:db8:1::5]/')).toBe('direct');
    expect(via(r, 'http://[2001:db9::5]/')).toBe('forward http://plain:8080');
    // curl: bits 0 is the address alone; a prefix longer than the address matches nothing.
    expect(via(r, 'http://192.168.1.7/')).toBe('direct');
    expect(via(r, 'http://192.168.1.8/')).toBe('forward http://plain:8080');
    expect(via(r, 'http://1.2.3.4/')).toBe('forward http://plain:8080');
    // A name, even one that reads like the range, goes through the proxy.
    expect(via(r, 'http://10.corp.example/')).toBe('forward http://plain:8080');
    // proxy.noProxy (the command's --noproxy) reads the same.
    const given = new ProxyResolver({ uri: 'http://p:1', noProxy: '10.0.0.0/8' });
    expect(via(given, 'https://10.200.0.1/')).toBe('direct');
    expect(via(given, 'https://172.16.0.1/')).toBe('tunnel http://p:1');
  });

  it('H5: a bad proxy URL is a ConfigError at construction', () => {
    expect(() => new MultilegAgent({ proxy: 'ftp://p:1' })).toThrow(/MULTILEG|proxy protocol/);
  });

  it('H5: a proxy variable that is no usable URL fails only the requests that would go through it, as curl reads only the proxy a transfer uses: not the agent, not http:// requests beside a bad https_proxy, not a host NO_PROXY exempts; proxy.uri still fails the agent', () => {
    const bad = new ProxyResolver(undefined, {
      https_proxy: 'http://[x',
      http_proxy: 'http://corp:3128',
      no_proxy: 'intra.test',
    });
    expect(via(bad, 'http://a.example')).toBe('forward http://corp:3128');
    expect(via(bad, 'https://intra.test')).toBe('direct');
    expect(() => bad.route('https://a.example')).toThrow(ProxyUrlError);
    // A bad http_proxy fails http:// requests alone: https ones do not read it.
    const httpOnly = new ProxyResolver(undefined, { http_proxy: 'socks5://p:1', NO_PROXY: '*.corp.test' });
    expect(via(httpOnly, 'http://www.corp.test')).toBe('direct');
    expect(via(httpOnly, 'https://a.example')).toBe('direct');
    expect(() => httpOnly.route('http://a.example')).toThrow(/unsupported proxy protocol socks5: in http_proxy/);
    // Nothing to send credentials to: none configured.
    expect(new ProxyResolver(undefined, { HTTPS_PROXY: ':::' }).configured).toBe(false);
    expect(() => new ProxyResolver({ uri: 'http://[x' }, {})).toThrow(ProxyUrlError);
  });

  it('H5: a proxy URL that cannot be used names where it came from: proxy.uri, or the environment variable (a SOCKS proxy in ALL_PROXY-style settings), with unsetting it as the other fix', () => {
    const message = (f: () => unknown) => {
      try {
        f();
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return (err as Error).message;
      }
      throw new Error('no ConfigError');
    };
    expect(message(() => new MultilegAgent({ proxy: 'socks5://p:1080' }))).toBe(
      'proxy: unsupported proxy protocol socks5: in proxy.uri; use http:// or https://',
    );
    expect(
      message(() => new ProxyResolver(undefined, { https_proxy: 'socks5h://p:1080' }).route('https://a.example')),
    ).toBe('proxy: unsupported proxy protocol socks5h: in https_proxy; use http:// or https://, or unset https_proxy');
    expect(message(() => new ProxyResolver(undefined, { HTTPS_PROXY: 'http://[x' }).route('https://a.example'))).toBe(
      'proxy: the proxy address in HTTPS_PROXY is not a URL; use http://host:port, or unset HTTPS_PROXY',
    );
    expect(
      message(() =>
        new ProxyResolver(undefined, { HTTPS_PROXY: 'socks5://p:1', http_proxy: 'socks5://p:1' }).route(
          'http://a.example',
        ),
      ),
    ).toMatch(/ in HTTPS_PROXY and http_proxy; use http:\/\/ or https:\/\/, or unset HTTPS_PROXY or http_proxy$/);
  });

  it("H5: a proxy URL that cannot be used is a ProxyUrlError (a ConfigError, MULTILEG_CONFIG) saying which problem: 'syntax' for text that is not a URL, 'scheme' for one the agent does not speak to a proxy (the command's curl 5 and 7)", () => {
    const problem = (f: () => unknown) => {
      try {
        f();
      } catch (err) {
        expect(err).toBeInstanceOf(ProxyUrlError);
        expect(err).toBeInstanceOf(ConfigError);
        expect((err as ProxyUrlError).code).toBe('MULTILEG_CONFIG');
        expect((err as ProxyUrlError).option).toBe('proxy.uri');
        return (err as ProxyUrlError).problem;
      }
      throw new Error('no ProxyUrlError');
    };
    expect(problem(() => new MultilegAgent({ proxy: 'http://[bad' }))).toBe('syntax');
    expect(problem(() => new ProxyResolver(undefined, { https_proxy: ':::' }).route('https://a.example'))).toBe(
      'syntax',
    );
    expect(problem(() => new MultilegAgent({ proxy: 'ftp://p:1' }))).toBe('scheme');
    expect(
      problem(() => new ProxyResolver(undefined, { http_proxy: 'socks5://p:1080' }).route('http://a.example')),
    ).toBe('scheme');
    // Other proxy option errors stay plain ConfigErrors.
    expect(() => new ProxyResolver({ uri: 'http://p:1', noProxy: 1 as never }, {})).toThrow(ConfigError);
    expect(() => new ProxyResolver({ uri: 'http://p:1', noProxy: 1 as never }, {})).not.toThrow(ProxyUrlError);
  });

  it("S1/H5: a misspelt proxy option (url for uri, noproxy) is a ConfigError naming it: the proxy credentials beside it never go to the environment's proxy instead (review r68)", () => {
    const env = { HTTPS_PROXY: 'http://env-proxy.test:8080' };
    const credentials = { username: 'alice', password: 'corp-secret' };
    const misspelt = (o: object) => () => new ProxyResolver(o as never, env);
    // Before: `url` was ignored without a word, and alice's corp-proxy password answered env-proxy's 407.
    expect(misspelt({ url: 'http://corp-proxy.test:3128', credentials })).toThrow(ConfigError);
    expect(misspelt({ url: 'http://corp-proxy.test:3128', credentials })).toThrow(
      /^proxy: unknown option "url"; known: uri, credentials, /,
    );
    expect(misspelt({ uri: 'http://corp-proxy.test:3128', noproxy: '.corp.test' })).toThrow(/unknown option "noproxy"/);
    // Before: ignored, and the proxy's Kerberos ran as the agent's own identity, not the one named.
    expect(misspelt({ uri: 'http://corp-proxy.test:3128', negotiate: { principle: 'svc@EXAMPLE.TEST' } })).toThrow(
      /^proxy\.negotiate: unknown option "principle"/,
    );
    expect(
      misspelt({ uri: 'http://corp-proxy.test:3128', negotiate: { principal: 'svc@EXAMPLE.TEST' } }),
    ).not.toThrow();
    // The agent says so at construction, before any request.
    expect(() => new MultilegAgent({ proxy: { url: 'http://corp-proxy.test:3128', credentials } as never })).toThrow(
      ConfigError,
    );
    // Spelt right, the credentials are corp-proxy's, and env-proxy is not used.
    const right = new ProxyResolver({ uri: 'http://corp-proxy.test:3128', credentials }, env);
    expect(via(right, 'https://a.example')).toBe('tunnel http://corp-proxy.test:3128');
  });

  it('H5: proxy must be a URL, an object or false, and proxy.uri and proxy.noProxy strings: a ConfigError at construction naming the option, not a TypeError on every request (review r68)', () => {
    const config = (o: unknown) => () => new ProxyResolver(o as never, {});
    // Before: an array noProxy (NO_PROXY's hosts as a list) failed each request with "value.split is not a function".
    expect(config({ uri: 'http://p:1', noProxy: ['a.test', 'b.test'] })).toThrow(
      expect.objectContaining({ code: 'MULTILEG_CONFIG', option: 'proxy.noProxy' }),
    );
    expect(config({ uri: 'http://p:1', noProxy: 5 })).toThrow(/proxy\.noProxy must be a string in NO_PROXY syntax/);
    expect(config({ uri: 42 })).toThrow(expect.objectContaining({ option: 'proxy.uri' }));
    // Before: a URL object read as an object of no options, and the environment's proxy (or none) was used.
    expect(config(new URL('http://corp-proxy.test:3128'))).toThrow(
      /^proxy is a URL object: give its text, proxy: url\.href/,
    );
    expect(config({ uri: new URL('http://corp-proxy.test:3128') })).toThrow(/a URL object: give url\.href/);
    for (const bad of [5, true, null, ['http://p:1']]) expect(config(bad)).toThrow(/^proxy must be a proxy URL/);
    for (const good of [undefined, false, 'http://p:1', {}, { uri: 'http://p:1', noProxy: 'a.test' }])
      expect(config(good)).not.toThrow();
  });
});

describe('S1/H5: proxy credentials go to their own proxy only (task id)', () => {
  it("S1/H5: HTTPS_PROXY's user:password are that proxy's: the route through HTTP_PROXY's proxy (none of its own) carries no credentials", () => {
    const r = new ProxyResolver(undefined, {
      HTTPS_PROXY: 'http://pu:only-for-a@a.proxy.test:3128',
      HTTP_PROXY: 'http://b.proxy.test:3128',
    });
    const a = r.route('https://o.test')!.proxy;
    const b = r.route('http://o.test')!.proxy;
    expect([a.origin, b.origin]).toEqual(['http://a.proxy.test:3128', 'http://b.proxy.test:3128']);
    expect(a.mechanisms.get('Basic')).toBeDefined();
    expect(b.mechanisms.get('Basic')).toBeUndefined();
    expect(b.mechanisms.get('NTLM')).toBeUndefined();
  });

  it("S1/H5: an origin reached directly (noProxy) that answers 407 gets neither the proxy's credentials nor the agent's: the caller gets the 407", async () => {
    const seen: { proxyAuthorization?: string; authorization?: string }[] = [];
    const server = createServer((req, res) => {
      seen.push({ proxyAuthorization: req.headers['proxy-authorization'], authorization: req.headers.authorization });
      res.writeHead(407, { 'proxy-authenticate': ['Basic realm="p"', 'NTLM'] }).end();
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const agent = new MultilegAgent({
      credentials: { username: 'alice', password: 'alicepw' },
      trustedOrigins: [origin],
      allowBasicOverHttp: true,
      proxy: { uri: 'http://127.0.0.1:9', credentials: { username: 'pu', password: 'proxypw' }, noProxy: '127.0.0.1' },
    });
    try {
      const res = await request(`${origin}/x`, { dispatcher: agent });
      await res.body.dump();
      expect(res.statusCode).toBe(407);
      expect(seen).toEqual([{}]);
    } finally {
      await agent.destroy();
      server.close();
    }
  });
});
