/**
 * Digest (RFC 7616): the response arithmetic against the RFC's own example, the mechanism's
 * headers, and the agent end to end against the reference server's Digest responder — SHA-256,
 * SHA-512-256, -sess, nonce counts on proactive reuse, stale nonces, userhash, UTF-8 names — and
 * against hand-made servers for malformed challenges (S3).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fetch, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { parseChallenges } from '../src/challenge/index.ts';
import { MechanismUnavailableError, MultilegAgent, type MultilegError, MutualAuthError } from '../src/index.ts';
import {
  DigestChallengeError,
  digestHash,
  digestMechanism,
  digestResponse,
  digestUserhash,
  encodeExtValue,
  MAX_DIGEST_PARAM_LENGTH,
  parseDigestAlgorithm,
} from '../src/mechanisms/digest/index.ts';
import type { LegInfo } from '../src/mechanisms/types.ts';
import { get, hasAuth, type Rig, rig } from './helpers.ts';

const MUFASA = { username: 'Mufasa', password: 'Circle of Life' };
const RFC_NONCE = '7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v';
const RFC_CNONCE = 'f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ';
const RFC_OPAQUE = 'FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS';
const rfcChallenge = (algorithm: string) =>
  parseChallenges(
    `Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=${algorithm}, nonce="${RFC_NONCE}", opaque="${RFC_OPAQUE}"`,
  )[0]!;

const leg = (over: Partial<LegInfo> = {}): LegInfo => ({
  origin: 'https://www.example.org',
  hostname: 'www.example.org',
  port: 443,
  method: 'GET',
  path: '/dir/index.html',
  proxy: false,
  ...over,
});

/** The auth-params of an Authorization value, parsed like a challenge. */
const paramsOf = (authorization: string) => parseChallenges(authorization)[0]!.params;

describe('Digest arithmetic and headers (RFC 7616)', () => {
  it('M3: RFC 7616 §3.9.1 example: SHA-256 and MD5 responses for Mufasa / "Circle of Life"', () => {
    const common = {
      username: 'Mufasa',
      realm: 'http-auth@example.org',
      password: 'Circle of Life',
      method: 'GET',
      uri: '/dir/index.html',
      nonce: RFC_NONCE,
      nc: '00000001',
      cnonce: RFC_CNONCE,
      qop: 'auth' as const,
    };
    expect(digestResponse({ ...common, algorithm: parseDigestAlgorithm('SHA-256')! })).toBe(
      '753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1',
    );
    expect(digestResponse({ ...common, algorithm: parseDigestAlgorithm('MD5')! })).toBe(
      '8ca523f5e9506fed4657c9700eebdbec',
    );
    // Absent algorithm means MD5.
    expect(digestResponse({ ...common, algorithm: parseDigestAlgorithm(undefined)! })).toBe(
      '8ca523f5e9506fed4657c9700eebdbec',
    );
  });

  it("M3: the mechanism answers the RFC 7616 §3.9.1 challenge with the RFC's Authorization header", async () => {
    for (const [algorithm, response] of [
      ['SHA-256', '753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1'],
      ['MD5', '8ca523f5e9506fed4657c9700eebdbec'],
    ] as const) {
      const m = digestMechanism(MUFASA, { cnonce: () => RFC_CNONCE });
      const header = await m.createContext(leg()).step(rfcChallenge(algorithm), leg());
      expect(header).toBe(
        `Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=${algorithm}, ` +
          `nonce="${RFC_NONCE}", nc=00000001, cnonce="${RFC_CNONCE}", qop=auth, response="${response}", opaque="${RFC_OPAQUE}"`,
      );
    }
  });

  it('M3: -sess variants hash H(user:realm:password):nonce:cnonce as A1; SHA-512-256 is the truncated SHA-512', () => {
    const alg = parseDigestAlgorithm('sha-512-256-SESS')!;
    expect(alg).toEqual({ name: 'SHA-512-256-sess', hash: 'sha512-256', sess: true, strength: 3 });
    const base = {
      username: 'u',
      realm: 'r',
      password: 'p',
      method: 'GET',
      uri: '/',
      nonce: 'n',
      nc: '00000001',
      cnonce: 'c',
      qop: 'auth' as const,
    };
    const ha1 = digestHash(alg, digestHash(alg, 'u', 'r', 'p'), 'n', 'c');
    const ha2 = digestHash(alg, 'GET', '/');
    expect(digestResponse({ ...base, algorithm: alg })).toBe(digestHash(alg, ha1, 'n', '00000001', 'c', 'auth', ha2));
    expect(digestHash(alg, '')).toBe('c672b8d1ef56ed28ab87c3622c5114069bdd3ad7b8f9737498d0c01ecef0967a');
    expect(parseDigestAlgorithm('SHA-1')).toBeUndefined();
  });

  it('M3: userhash=true sends H(user:realm) as the name; a non-ASCII name goes as username* (RFC 8187)', async () => {
    const jason = { username: 'Jäsøn Doe', password: 'Secret, or not?' };
    const challenge = (extra: string) =>
      parseChallenges(
        `Digest realm="api@example.org", qop="auth", algorithm=SHA-512-256, nonce="abc", charset=UTF-8${extra}`,
      )[0]!;
    const hashed = await digestMechanism(jason)
      .createContext(leg())
      .step(challenge(', userhash=true'), leg({ path: '/doe.json' }));
    const alg = parseDigestAlgorithm('SHA-512-256')!;
    expect(paramsOf(hashed).username).toBe(digestUserhash(alg, 'Jäsøn Doe', 'api@example.org'));
    expect(paramsOf(hashed).userhash).toBe('true');
    expect(paramsOf(hashed)['username*']).toBeUndefined();
    const plain = await digestMechanism(jason)
      .createContext(leg())
      .step(challenge(''), leg({ path: '/doe.json' }));
    expect(paramsOf(plain)['username*']).toBe("UTF-8''J%C3%A4s%C3%B8n%20Doe");
    expect(paramsOf(plain).username).toBeUndefined();
    expect(encodeExtValue("a'b(c)*")).toBe("UTF-8''a%27b%28c%29%2A");
  });

  it('M3: DOMAIN\\user is a literal Digest user name (credentials.domain is NTLM-only)', async () => {
    const m = digestMechanism({ username: 'EXAMPLE\\alice', password: 'pw', domain: 'OTHER' });
    const header = await m.createContext(leg()).step(rfcChallenge('MD5'), leg());
    expect(paramsOf(header).username).toBe('EXAMPLE\\alice');
    expect(header).toContain('username="EXAMPLE\\\\alice"');
  });

  it('M3: the nonce is remembered per origin: proactive answers reuse it with the next nc and a new cnonce', async () => {
    let n = 0;
    const m = digestMechanism(MUFASA, { cnonce: () => `cnonce${++n}` });
    expect(m.proactive).toBe(false);
    await expect(m.createContext(leg()).step(undefined, leg())).rejects.toBeInstanceOf(MechanismUnavailableError);
    const first = paramsOf(await m.createContext(leg()).step(rfcChallenge('SHA-256'), leg()));
    expect(m.proactive).toBe(true);
    const second = paramsOf(await m.createContext(leg()).step(undefined, leg({ path: '/other' })));
    const third = paramsOf(await m.createContext(leg()).step(undefined, leg()));
    expect([first.nc, second.nc, third.nc]).toEqual(['00000001', '00000002', '00000003']);
    expect(new Set([first.cnonce, second.cnonce, third.cnonce]).size).toBe(3);
    expect(second.nonce).toBe(RFC_NONCE);
    expect(second.uri).toBe('/other');
    expect(second.opaque).toBe(RFC_OPAQUE);
    // Another origin has no nonce yet.
    await expect(
      m.createContext(leg()).step(undefined, leg({ origin: 'https://other.example' })),
    ).rejects.toBeInstanceOf(MechanismUnavailableError);
    // reuseNonce: false never goes proactive.
    const once = digestMechanism(MUFASA, { reuseNonce: false });
    await once.createContext(leg()).step(rfcChallenge('MD5'), leg());
    expect(once.proactive).toBe(false);
  });

  it('S3: malformed Digest challenges give a DigestChallengeError naming the problem, never a crash', async () => {
    const m = digestMechanism(MUFASA);
    // Built by hand: the header parser already drops what the mechanism must also refuse (S3 in depth).
    const attempt = (header: string) => {
      const parsed = parseChallenges(header)[0] ?? {
        scheme: 'Digest',
        schemeKey: 'digest',
        params: { realm: 'r', nonce: 'n\r\nX-Injected: 1' },
      };
      return m.createContext(leg()).step(parsed, leg());
    };
    const huge = 'x'.repeat(MAX_DIGEST_PARAM_LENGTH + 1);
    const cases: Array<[string, RegExp]> = [
      ['Digest realm="r", qop="auth"', /no nonce/],
      ['Digest nonce="n", qop="auth"', /no realm/],
      ['Digest realm="r", nonce="n", algorithm=SHA-3', /unknown algorithm/],
      [`Digest realm="r", nonce="${huge}"`, /longer than/],
      [`Digest realm="${huge}", nonce="n"`, /longer than/],
      ['Digest realm="r", nonce="n", qop="auth-int"', /auth-int/],
      ['Digest realm="r", nonce="n", qop="weird"', /no qop/],
      ['Digest realm="r", nonce=""', /empty nonce/],
      ['Digest realm="r", nonce="n\u0001"', /control characters/], // dropped by the parser: see attempt()
      ['Digest realm="r", nonce="n", algorithm=MD5-sess', /without qop/],
      ['Digest dG9rZW4=', /token/],
    ];
    for (const [header, message] of cases) {
      const err = await attempt(header).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, header.slice(0, 60)).toBeInstanceOf(DigestChallengeError);
      expect((err as Error).message).toMatch(message);
      expect((err as MultilegError).code).toBe('MULTILEG_MECHANISM_UNAVAILABLE');
      expect((err as Error).message).not.toContain(MUFASA.password);
    }
  });
});

describe('Digest Authentication-Info (RFC 7616 §3.5): the mechanism', () => {
  /** A context that answered the RFC 7616 §3.9.1 challenge, and the rspauth a server knowing the password sends. */
  async function answered(m = digestMechanism(MUFASA, { cnonce: () => RFC_CNONCE })) {
    const context = m.createContext(leg());
    await context.step(rfcChallenge('SHA-256'), leg());
    const rspauth = digestResponse({
      algorithm: parseDigestAlgorithm('SHA-256')!,
      username: MUFASA.username,
      realm: 'http-auth@example.org',
      password: MUFASA.password,
      method: '',
      uri: '/dir/index.html',
      nonce: RFC_NONCE,
      qop: 'auth',
      nc: '00000001',
      cnonce: RFC_CNONCE,
    });
    return { m, context, rspauth, echo: { cnonce: RFC_CNONCE, nc: '00000001', qop: 'auth' } };
  }
  const flip = (hex: string) => (hex[0] === '0' ? '1' : '0') + hex.slice(1);
  const failure = (p: Promise<void>) =>
    p.then(
      () => undefined,
      (e: Error) => e,
    );

  it('M3: rspauth computed with an empty method (and the echoed cnonce, nc, qop) verifies; rspauth is optional', async () => {
    const { context, rspauth, echo } = await answered();
    await context.finish(undefined, leg(), { rspauth, ...echo });
    await context.finish(undefined, leg(), { rspauth: rspauth.toUpperCase() });
    await context.finish(undefined, leg(), {});
    await context.finish(undefined, leg(), undefined);
  });

  it('M3: a wrong rspauth, or one answering another cnonce, nc or qop, is a MutualAuthError without secrets', async () => {
    const { rspauth, echo } = await answered();
    const withMethod = digestResponse({
      algorithm: parseDigestAlgorithm('SHA-256')!,
      username: MUFASA.username,
      realm: 'http-auth@example.org',
      password: MUFASA.password,
      method: 'GET',
      uri: '/dir/index.html',
      nonce: RFC_NONCE,
      qop: 'auth',
      nc: '00000001',
      cnonce: RFC_CNONCE,
    });
    const cases: Array<[Record<string, string>, RegExp]> = [
      [{ rspauth: withMethod, ...echo }, /does not match/],
      [{ rspauth: flip(rspauth), ...echo }, /does not match/],
      [{ rspauth: '' }, /does not match/],
      [{ rspauth, ...echo, cnonce: 'other' }, /cnonce/],
      [{ rspauth, ...echo, nc: '00000002' }, /nc/],
      [{ rspauth, ...echo, qop: 'auth-int' }, /qop/],
    ];
    for (const [info, message] of cases) {
      const { context } = await answered();
      const err = await failure(context.finish(undefined, leg(), info));
      expect(err, JSON.stringify(info)).toBeInstanceOf(MutualAuthError);
      expect((err as MultilegError).code).toBe('MULTILEG_MUTUAL_AUTH');
      expect(err!.message).toMatch(message);
      expect(err!.message).toMatch(/rspauth of https:\/\/www\.example\.org/);
      expect(err!.message).toMatch(/verifyRspauth: false/);
      for (const secret of [MUFASA.password, rspauth, withMethod]) expect(err!.message).not.toContain(secret);
    }
    // verifyRspauth: false takes it unproved.
    const lax = await answered(digestMechanism(MUFASA, { cnonce: () => RFC_CNONCE, verifyRspauth: false }));
    await lax.context.finish(undefined, leg(), { rspauth: withMethod });
  });

  it('M3: without qop (RFC 2069), rspauth is KD(H(A1), nonce:H(:uri))', async () => {
    const context = digestMechanism(MUFASA).createContext(leg());
    await context.step(parseChallenges('Digest realm="r", nonce="abc"')[0]!, leg());
    const rspauth = digestResponse({
      algorithm: parseDigestAlgorithm('MD5')!,
      username: MUFASA.username,
      realm: 'r',
      password: MUFASA.password,
      method: '',
      uri: '/dir/index.html',
      nonce: 'abc',
    });
    await context.finish(undefined, leg(), { rspauth });
    expect(await failure(context.finish(undefined, leg(), { rspauth, qop: 'auth' }))).toBeInstanceOf(MutualAuthError);
  });

  it('M3: nextnonce is the next proactive nonce, from nc=00000001 with a new cnonce; not learnt from a failed rspauth', async () => {
    let n = 0;
    const m = digestMechanism(MUFASA, { cnonce: () => `c${++n}` });
    const first = m.createContext(leg());
    const sent = paramsOf(await first.step(rfcChallenge('SHA-256'), leg()));
    await first.finish(undefined, leg(), { nextnonce: 'next-1' });
    const second = m.createContext(leg());
    const next = paramsOf(await second.step(undefined, leg()));
    expect([next.nonce, next.nc, next.opaque, next.realm]).toEqual(['next-1', '00000001', RFC_OPAQUE, sent.realm]);
    expect(next.cnonce).not.toBe(sent.cnonce);
    // A wrong rspauth: its nextnonce is not learnt, and the nonce it answered is forgotten.
    const err = await failure(second.finish(undefined, leg(), { rspauth: 'bad', nextnonce: 'next-2' }));
    expect(err).toBeInstanceOf(MutualAuthError);
    expect(m.proactive).toBe(false);
    await expect(m.createContext(leg()).step(undefined, leg())).rejects.toBeInstanceOf(MechanismUnavailableError);
  });

  it('M3/S3: a nextnonce that is the nonce in use, unusable, or older than a nonce learnt meanwhile changes nothing', async () => {
    const m = digestMechanism(MUFASA);
    const proactiveNonce = async () => paramsOf(await m.createContext(leg()).step(undefined, leg()));
    const context = m.createContext(leg());
    await context.step(rfcChallenge('SHA-256'), leg());
    // The nonce in use again: counting goes on (nc=1 again would be a replay).
    await context.finish(undefined, leg(), { nextnonce: RFC_NONCE });
    expect(await proactiveNonce()).toMatchObject({ nonce: RFC_NONCE, nc: '00000002' });
    for (const nextnonce of ['', 'x'.repeat(MAX_DIGEST_PARAM_LENGTH + 1), 'a\u0000b']) {
      await context.finish(undefined, leg(), { nextnonce });
    }
    expect(await proactiveNonce()).toMatchObject({ nonce: RFC_NONCE, nc: '00000003' });
    // Another request met a new challenge meanwhile: that newer nonce stays.
    const newer = parseChallenges(
      `Digest realm="http-auth@example.org", qop="auth", algorithm=SHA-256, nonce="newer", opaque="${RFC_OPAQUE}"`,
    )[0]!;
    await m.createContext(leg()).step(newer, leg());
    await context.finish(undefined, leg(), { nextnonce: 'late' });
    expect(await proactiveNonce()).toMatchObject({ nonce: 'newer', nc: '00000002' });
  });
});

let r: Rig | undefined;
let agents: MultilegAgent[] = [];
let servers: Server[] = [];
afterEach(async () => {
  await r?.close();
  r = undefined;
  await Promise.all(agents.map((a) => a.destroy().catch(() => {})));
  agents = [];
  await Promise.all(servers.map((s) => new Promise((res) => s.close(res))));
  servers = [];
});

const digestRig = async (algorithms: string[], agentOptions: Parameters<typeof rig>[1] = {}) => {
  const rg = await rig({ schemes: ['Digest'], mode: 'per-request' }, { negotiate: false, ...agentOptions });
  rg.server.digest.options.algorithms = algorithms;
  return rg;
};
const authz = (rg: Rig) => rg.server.exchanges.map((e) => e.requestHeaders.authorization as string | undefined);
const wire = (rg: Rig) =>
  rg.server.exchanges.map((e) => [e.status, e.requestHeaders.authorization !== undefined] as const);

describe('Digest through MultilegAgent (reference server)', () => {
  it('M3: SHA-256 over HTTP/2: one challenge, then one request per user request with the next nc', async () => {
    r = await digestRig(['SHA-256']);
    const results = [];
    for (let i = 0; i < 4; i++) results.push(await get(r, `/auth/${i}`));
    expect(results.every((x) => x.status === 200 && x.body.user === 'EXAMPLE\\alice')).toBe(true);
    expect(r.server.exchanges.every((e) => e.protocol === 'h2')).toBe(true);
    expect(wire(r)).toEqual([
      [401, false],
      [200, true],
      [200, true],
      [200, true],
      [200, true],
    ]);
    const sent = authz(r)
      .slice(1)
      .map((a) => paramsOf(a!));
    expect(sent.map((p) => p.nc)).toEqual(['00000001', '00000002', '00000003', '00000004']);
    expect(new Set(sent.map((p) => p.nonce)).size).toBe(1);
    expect(sent.every((p) => p.algorithm === 'SHA-256' && p.qop === 'auth')).toBe(true);
    expect(sent.map((p) => p.uri)).toEqual(['/auth/0', '/auth/1', '/auth/2', '/auth/3']);
    expect(r.agent.handshakes().map((h) => [h.scheme, h.outcome, h.legs])).toEqual([
      ['Digest', 'per-request', 1],
      ['Digest', 'per-request', 1],
      ['Digest', 'per-request', 1],
      ['Digest', 'per-request', 1],
    ]);
  });

  it('M3: concurrent proactive requests each get their own nonce count; none is refused as a replay', async () => {
    r = await digestRig(['SHA-256']);
    expect((await get(r, '/auth/first')).status).toBe(200);
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => get(r!, `/auth/${i}`)));
    expect(results.every((x) => x.status === 200)).toBe(true);
    expect(r.server.exchanges).toHaveLength(14);
    const ncs = authz(r)
      .slice(1)
      .map((a) => paramsOf(a!).nc);
    expect(new Set(ncs).size).toBe(13);
  });

  it('M3: SHA-512-256 is preferred when offered with SHA-256 and MD5', async () => {
    r = await digestRig(['MD5', 'SHA-256', 'SHA-512-256']);
    expect((await get(r, '/auth/x')).status).toBe(200);
    expect(paramsOf(authz(r)[1]!).algorithm).toBe('SHA-512-256');
  });

  for (const algorithm of ['MD5-sess', 'SHA-256-sess', 'SHA-512-256-sess']) {
    it(`M3: ${algorithm} authenticates, also proactively, with the nonce's first cnonce (RFC 7616 §3.4.2's cnonce-prime) each time`, async () => {
      r = await digestRig([algorithm]);
      expect((await get(r, '/auth/1')).status).toBe(200);
      expect((await get(r, '/auth/2')).status).toBe(200);
      expect(wire(r)).toEqual([
        [401, false],
        [200, true],
        [200, true],
      ]);
      const [first, second] = [paramsOf(authz(r)[1]!), paramsOf(authz(r)[2]!)];
      expect(second.algorithm).toBe(algorithm);
      // A1 is H(user:realm:password):nonce:cnonce-prime for the whole nonce: one cnonce, as curl
      // sends it, so a server keeping the first one's session key agrees (before: a new one each time).
      expect([second.nonce, second.nc]).toEqual([first.nonce, '00000002']);
      expect(second.cnonce).toBe(first.cnonce);
    });
  }

  it('M3: over HTTP/1.1 as well', async () => {
    r = await digestRig(['SHA-256', 'MD5']);
    for (let i = 0; i < 3; i++) {
      const res = await request(`${r.server.origin}/auth/${i}`, { dispatcher: r.agent, allowH2: false } as never);
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    expect(r.server.exchanges.every((e) => e.protocol === 'http/1.1')).toBe(true);
    expect(wire(r)).toEqual([
      [401, false],
      [200, true],
      [200, true],
      [200, true],
    ]);
  });

  it('M3: stale=true after N uses: the agent retries once with the new nonce and the caller sees only the 200', async () => {
    r = await digestRig(['SHA-256']);
    r.server.digest.options.staleAfterUses = 2;
    for (let i = 0; i < 4; i++) expect((await get(r, `/auth/${i}`)).status).toBe(200);
    // probe, 1st use, 2nd use, stale, answer to the new nonce (its 1st use), its 2nd use
    expect(r.server.exchanges.map((e) => [e.status, e.reason ?? ''])).toEqual([
      [401, ''],
      [200, ''],
      [200, ''],
      [401, 'stale-nonce'],
      [200, ''],
      [200, ''],
    ]);
    const sent = authz(r).map((a) => (a ? paramsOf(a) : undefined));
    expect(sent[3]!.nonce).toBe(sent[1]!.nonce);
    expect(sent[4]!.nonce).not.toBe(sent[1]!.nonce);
    expect([sent[4]!.nc, sent[5]!.nc]).toEqual(['00000001', '00000002']);
    expect(r.agent.handshakes().map((h) => [h.outcome, h.legs])).toEqual([
      ['per-request', 1],
      ['per-request', 1],
      ['per-request', 2],
      ['per-request', 1],
    ]);
  });

  it('M3: stale on a switch (the server expires every nonce); a server stale forever gets one retry only', async () => {
    r = await digestRig(['SHA-256']);
    expect((await get(r, '/auth/1')).status).toBe(200);
    r.server.digest.staleAll();
    expect((await get(r, '/auth/2')).status).toBe(200);
    // A server that finds every nonce stale: one retry, then its 401 reaches the caller (no loop).
    r.server.reset();
    r.server.digest.options.staleAfterUses = 0;
    const res = await get(r, '/auth/3');
    expect(res.status).toBe(401);
    // Retried exactly once after a stale answer, then the server's 401 reaches the caller.
    expect(r.server.exchanges.map((e) => e.reason ?? '')).toEqual(['stale-nonce', 'stale-nonce']);
  });

  it('M3: stale=true in reply to the answer to a fresh 401 challenge (not a proactive answer): one retry with the new nonce, a 200', async () => {
    r = await digestRig(['SHA-256']);
    // The nonce of the first 401 turns stale while the agent answers it.
    let staled = false;
    r.server.on('request', (q) => {
      if (q.headers.authorization && !staled) {
        staled = true;
        r!.server.digest.staleAll();
      }
    });
    const res = await get(r, '/auth/fresh');
    expect([res.status, res.body.user]).toEqual([200, 'EXAMPLE\\alice']);
    expect(r.server.exchanges.map((e) => [e.status, hasAuth(e.requestHeaders), e.reason ?? ''])).toEqual([
      [401, false, ''],
      [401, true, 'stale-nonce'],
      [200, true, ''],
    ]);
    const sent = authz(r).map((a) => (a ? paramsOf(a) : undefined));
    expect(sent[2]!.nonce).not.toBe(sent[1]!.nonce);
    expect(r.agent.handshakes().map((h) => [h.outcome, h.legs])).toEqual([['per-request', 2]]);
  });

  it("M3: wrong password: the caller gets the server's 401 after one attempt, and no stale retry", async () => {
    r = await digestRig(['SHA-256'], { credentials: { username: 'EXAMPLE\\alice', password: 'wrong' } });
    const res = await get(r, '/auth/x');
    expect(res.status).toBe(401);
    expect(r.server.exchanges.map((e) => [e.status, e.reason ?? ''])).toEqual([
      [401, ''],
      [401, 'bad-response'],
    ]);
    expect(r.agent.handshakes().map((h) => h.outcome)).toEqual(['failed']);
  });

  it('M3: userhash=true: the user name on the wire is H(user:realm) and the server finds the user by it', async () => {
    r = await digestRig(['SHA-256']);
    r.server.digest.options.userhash = true;
    const res = await get(r, '/auth/x');
    expect(res).toMatchObject({ status: 200, body: { user: 'EXAMPLE\\alice' } });
    const p = paramsOf(authz(r)[1]!);
    expect(p.userhash).toBe('true');
    expect(p.username).toBe(digestUserhash(parseDigestAlgorithm('SHA-256')!, 'EXAMPLE\\alice', 'reference-digest'));
    expect(JSON.stringify(r.server.exchanges[1]!.requestHeaders.authorization)).not.toContain('alice');
  });

  it('M3: a UTF-8 user name travels as username* and is accepted', async () => {
    r = await digestRig(['SHA-256'], { credentials: { username: 'Jäsøn Doe', password: 'Secret, or not?' } });
    r.server.options.users['Jäsøn Doe'] = 'Secret, or not?';
    const res = await get(r, '/auth/x');
    expect(res).toMatchObject({ status: 200, body: { user: 'Jäsøn Doe' } });
    expect(paramsOf(authz(r)[1]!)['username*']).toBe("UTF-8''J%C3%A4s%C3%B8n%20Doe");
  });

  it('M3: a server offering only qop=auth-int gets a clear error, not a bare 401', async () => {
    r = await digestRig(['SHA-256']);
    r.server.digest.options.qop = 'auth-int';
    const err = await get(r, '/auth/x').then(
      () => undefined,
      (e: Error) => (e.cause ?? e) as Error,
    );
    expect(err).toBeInstanceOf(DigestChallengeError);
    expect(err!.message).toMatch(/qop=auth-int/);
    expect(r.server.exchanges).toHaveLength(1);
  });

  it('T2: a server offering Basic and Digest gets Digest (also with Basic listed first)', async () => {
    r = await rig({ schemes: ['Basic', 'Digest'], mode: 'per-request' }, { negotiate: false });
    const res = await get(r, '/auth/x');
    expect(res).toMatchObject({ status: 200, body: { user: 'EXAMPLE\\alice' } });
    expect(r.server.exchanges[1]!.scheme).toBe('Digest');
    expect(authz(r)[1]).toMatch(/^Digest /);
    // And NTLM over both, by the default order.
    await r.close();
    r = await rig({ schemes: ['Basic', 'Digest', 'NTLM'], mode: 'session' }, { negotiate: false });
    expect((await get(r, '/auth/y')).status).toBe(200);
    expect(r.agent.handshakes()[0]!.scheme).toBe('NTLM');
  });

  it('S1: Digest credentials are not sent to an origin the agent does not trust', async () => {
    r = await digestRig(['SHA-256'], { trustedOrigins: ['https://elsewhere.example'] });
    const res = await get(r, '/auth/x');
    expect(res.status).toBe(401);
    expect(r.server.exchanges.every((e) => e.requestHeaders.authorization === undefined)).toBe(true);
  });
});

describe('Digest Authentication-Info through MultilegAgent (reference server)', () => {
  const info = (rg: Rig, i: number) =>
    parseChallenges(`Digest ${rg.server.exchanges[i]!.responseHeaders['authentication-info'] ?? ''}`)[0]?.params;
  const failed = (p: Promise<unknown>) =>
    p.then(
      () => undefined,
      (e: Error) => (e.cause ?? e) as Error,
    );

  it('M3: a correct rspauth passes: the 200s to a challenged and to proactive answers, over HTTP/2 and HTTP/1.1', async () => {
    r = await digestRig(['SHA-256']);
    for (let i = 0; i < 2; i++) expect((await get(r, `/auth/h2-${i}`)).status).toBe(200);
    for (let i = 0; i < 2; i++) {
      const res = await request(`${r.server.origin}/auth/h1-${i}`, { dispatcher: r.agent, allowH2: false } as never);
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    expect(r.server.exchanges.map((e) => [e.protocol, e.status])).toEqual([
      ['h2', 401],
      ['h2', 200],
      ['h2', 200],
      ['http/1.1', 200],
      ['http/1.1', 200],
    ]);
    // Each 200 proved the server: an rspauth answering that request's own cnonce and nc.
    for (let i = 1; i < 5; i++) {
      const sent = paramsOf(authz(r)[i]!);
      expect(info(r, i)).toMatchObject({ cnonce: sent.cnonce, nc: sent.nc, qop: 'auth' });
      expect(info(r, i)!.rspauth).toMatch(/^[0-9a-f]{64}$/);
    }
    expect(r.agent.handshakes().map((h) => [h.outcome, h.failure])).toEqual(Array(4).fill(['per-request', undefined]));
  });

  it('M3: a wrong rspauth is a MutualAuthError, to a challenged and to a proactive answer: the body is withheld, the session ends, the nonce is forgotten', async () => {
    r = await digestRig(['SHA-256']);
    r.server.options.faults.rspauth = 'wrong';
    const challenged = await failed(get(r, '/auth/a'));
    expect(challenged).toBeInstanceOf(MutualAuthError);
    expect(challenged!.message).toMatch(/Digest rspauth of https:\/\/localhost:\d+ does not match/);
    expect(challenged!.message).not.toContain('alicepw');
    // The server sent its 200 (and body); the caller never got it.
    expect(wire(r)).toEqual([
      [401, false],
      [200, true],
    ]);
    // The nonce came from the server that failed: the next request asks afresh, on a new session.
    r.server.options.faults.rspauth = undefined;
    expect((await get(r, '/auth/b')).status).toBe(200);
    // A proactive answer (a nonce known) is checked the same way.
    r.server.options.faults.rspauth = 'wrong';
    expect(await failed(get(r, '/auth/c'))).toBeInstanceOf(MutualAuthError);
    r.server.options.faults.rspauth = undefined;
    expect((await get(r, '/auth/d')).status).toBe(200);
    const x = r.server.exchanges;
    expect(x.map((e) => [e.path, e.status, hasAuth(e.requestHeaders)])).toEqual([
      ['/auth/a', 401, false],
      ['/auth/a', 200, true],
      ['/auth/b', 401, false],
      ['/auth/b', 200, true],
      ['/auth/c', 200, true],
      ['/auth/d', 401, false],
      ['/auth/d', 200, true],
    ]);
    // Nothing more went on a session whose server failed the proof.
    expect(new Set([x[1]!.sessionId, x[2]!.sessionId, x[5]!.sessionId]).size).toBe(3);
    expect(x[4]!.sessionId).toBe(x[2]!.sessionId);
    expect(r.agent.handshakes().map((h) => [h.outcome, h.failure])).toEqual([
      ['failed', 'proof'],
      ['per-request', undefined],
      ['failed', 'proof'],
      ['per-request', undefined],
    ]);
  });

  it('M3: nextnonce (one-time nonces): each next request uses it with nc=00000001 and a new cnonce, and no 401 comes between', async () => {
    r = await digestRig(['SHA-256']);
    r.server.digest.options.nextnonce = true;
    for (let i = 0; i < 4; i++) expect((await get(r, `/auth/${i}`)).status).toBe(200);
    expect(wire(r)).toEqual([
      [401, false],
      [200, true],
      [200, true],
      [200, true],
      [200, true],
    ]);
    const sent = authz(r)
      .slice(1)
      .map((a) => paramsOf(a!));
    for (let i = 1; i < 4; i++) {
      expect(sent[i]!.nonce).toBe(info(r, i)!.nextnonce);
      expect(sent[i]!.nc).toBe('00000001');
    }
    expect(new Set(sent.map((p) => p.cnonce)).size).toBe(4);
    expect(r.agent.handshakes().map((h) => h.legs)).toEqual([1, 1, 1, 1]);
  });

  it('M3: a redirect, a 404 or a 500 after Digest carries Authentication-Info too (RFC 7616 §3.5): each next request uses its nextnonce, no 401 between', async () => {
    r = await digestRig(['SHA-256']);
    r.server.digest.options.nextnonce = true;
    // fetch follows the 302 (Location: /auth/a) itself: that hop goes with the 302's nextnonce.
    const moved = await get(r, '/status/302/a');
    expect(moved.status).toBe(200);
    expect((await get(r, '/status/404/b')).status).toBe(404);
    expect((await get(r, '/status/500/c')).status).toBe(500);
    expect((await get(r, '/auth/d')).status).toBe(200);
    expect(r.server.exchanges.map((e) => [e.path, e.status, hasAuth(e.requestHeaders)])).toEqual([
      ['/status/302/a', 401, false],
      ['/status/302/a', 302, true],
      ['/auth/a', 200, true],
      ['/status/404/b', 404, true],
      ['/status/500/c', 500, true],
      ['/auth/d', 200, true],
    ]);
    const sent = authz(r)
      .slice(1)
      .map((a) => paramsOf(a!));
    for (let i = 1; i < sent.length; i++) {
      expect(sent[i]!.nonce).toBe(info(r, i)!.nextnonce);
      expect(sent[i]!.nc).toBe('00000001');
    }
  });

  for (const status of [302, 404, 500]) {
    it(`M3: a wrong rspauth on a ${status} (Authentication-Info) is a MutualAuthError: the response is withheld, the nonce forgotten`, async () => {
      r = await digestRig(['SHA-256']);
      r.server.options.faults.rspauth = 'wrong';
      // redirect: 'manual', so that a 302 let through would reach the caller as itself.
      const res = await failed(get(r, `/status/${status}/a`, { redirect: 'manual' }));
      expect(res).toBeInstanceOf(MutualAuthError);
      expect(res!.message).toMatch(/Digest rspauth of https:\/\/localhost:\d+ does not match/);
      r.server.options.faults.rspauth = undefined;
      // The nonce came from the server that failed the proof: the next request asks for a new one.
      expect((await get(r, '/auth/b')).status).toBe(200);
      expect(wire(r)).toEqual([
        [401, false],
        [status, true],
        [401, false],
        [200, true],
      ]);
      expect(r.agent.handshakes().map((h) => [h.outcome, h.failure])).toEqual([
        ['failed', 'proof'],
        ['per-request', undefined],
      ]);
    });
  }

  it('M3: SHA-256-sess with nextnonce: each new nonce gets a new cnonce, so a new session key (RFC 7616 §3.4.2)', async () => {
    r = await digestRig(['SHA-256-sess']);
    r.server.digest.options.nextnonce = true;
    for (let i = 0; i < 3; i++) expect((await get(r, `/auth/${i}`)).status).toBe(200);
    expect(wire(r).map(([status]) => status)).toEqual([401, 200, 200, 200]);
    const sent = authz(r)
      .slice(1)
      .map((a) => paramsOf(a!));
    expect(sent.map((p) => p.nc)).toEqual(['00000001', '00000001', '00000001']);
    expect(new Set(sent.map((p) => p.cnonce)).size).toBe(3);
  });
});

/** A cleartext server that answers 401 with the given challenges to anything, and records requests. */
async function challengeServer(challenges: string[], accept?: (authorization: string) => boolean) {
  const seen: Array<string | undefined> = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const authorization = req.headers.authorization;
    seen.push(authorization);
    if (authorization !== undefined && accept?.(authorization)) {
      res.writeHead(200, { 'content-type': 'text/plain' }).end(`ok ${authorization.split(' ')[0]}`);
      return;
    }
    res.writeHead(401, { 'www-authenticate': challenges }).end('nope');
  });
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
  servers.push(server);
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

const newAgent = (o: ConstructorParameters<typeof MultilegAgent>[0] = {}) => {
  // The loopback test servers are cleartext: trusted explicitly (S4), as a caller would have to.
  const a = new MultilegAgent({
    credentials: MUFASA,
    negotiate: false,
    trustedOrigins: (origin) => origin.startsWith('http://127.0.0.1:'),
    ...o,
  });
  agents.push(a);
  return a;
};

describe('S3: malformed Digest challenges through the agent', () => {
  const malformed = [
    'Digest realm="r", qop="auth"',
    'Digest nonce="n", qop="auth"',
    `Digest realm="r", nonce="${'n'.repeat(5000)}", qop="auth"`,
    'Digest realm="r", nonce="n", qop="auth-int"',
  ];
  for (const challenge of malformed) {
    it(`S3: "${challenge.slice(0, 40)}..." alone: a clear error, nothing sent with credentials`, async () => {
      const s = await challengeServer([challenge]);
      const err = await fetch(`${s.origin}/x`, { dispatcher: newAgent() }).then(
        () => undefined,
        (e: Error) => (e.cause ?? e) as Error,
      );
      expect(err).toBeInstanceOf(DigestChallengeError);
      expect(err!.message).toMatch(/Digest/);
      expect(s.seen).toEqual([undefined]);
    });
  }

  it('S3: a malformed Digest challenge next to Basic falls through to Basic', async () => {
    const s = await challengeServer(['Digest realm="r"', 'Basic realm="b"'], (a) => a.startsWith('Basic '));
    const res = await fetch(`${s.origin}/x`, { dispatcher: newAgent({ allowBasicOverHttp: true }) });
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('ok Basic');
  });

  it("S3: an unknown algorithm is never chosen; alone, the server's 401 reaches the caller", async () => {
    const s = await challengeServer(['Digest realm="r", nonce="n", algorithm=SHA3-512, qop="auth"']);
    const res = await fetch(`${s.origin}/x`, { dispatcher: newAgent() });
    expect(res.status).toBe(401);
    expect(s.seen).toEqual([undefined]);
  });

  it('M3: Digest works over cleartext http (RFC 2069 style without qop, too)', async () => {
    const s = await challengeServer(['Digest realm="r", nonce="abc"'], (a) => {
      const p = paramsOf(a);
      const alg = parseDigestAlgorithm('MD5')!;
      return (
        p.response ===
        digestResponse({
          algorithm: alg,
          username: 'Mufasa',
          realm: 'r',
          password: 'Circle of Life',
          method: 'GET',
          uri: '/x',
          nonce: 'abc',
        })
      );
    });
    const res = await fetch(`${s.origin}/x`, { dispatcher: newAgent() });
    expect(res.status).toBe(200);
    expect(s.seen[1]).not.toMatch(/nc=|cnonce=|qop=/);
  });
});
