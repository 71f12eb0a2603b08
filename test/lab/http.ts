/**
 * Helpers to drive authentication legs by hand over an undici Client, for interop tests of the
 * mechanisms (the MultilegAgent has its own tests). Reusable by anyone with a lab.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { Client } from 'undici';
import type { Challenge } from '../../src/challenge/types.ts';
import type { LegInfo, Mechanism, MechanismContext } from '../../src/mechanisms/types.ts';

export type Headers = Record<string, string | string[] | undefined>;

export interface HttpResult {
  readonly status: number;
  readonly headers: Headers;
  readonly body: string;
}

/**
 * An undici Client to a lab origin. `h2: false` pins HTTP/1.1 with `pipelining: 1` so that every leg
 * goes over the one TCP connection (H1); `h2: true` allows HTTP/2 (ALPN picks h2 at Apache).
 */
export function labClient(origin: string, ca: string, opts: { h2?: boolean } = {}): Client {
  return new Client(origin, {
    connect: { ca, servername: new URL(origin).hostname },
    allowH2: !!opts.h2,
    pipelining: 1,
  });
}

/** One request; the body is read to the end. */
export async function send(client: Client, path: string, headers: Record<string, string> = {}): Promise<HttpResult> {
  const res = await client.request({ path, method: 'GET', headers });
  const body = await res.body.text();
  return { status: res.statusCode, headers: res.headers as Headers, body };
}

/** The header as one list of values (undici gives an array on h1 and one joined string on h2). */
export function headerValues(h: Headers, name: string): string[] {
  const v = h[name.toLowerCase()];
  if (v === undefined) return [];
  return Array.isArray(v) ? v : [v];
}

/** First value of a header, or '' */
export function header(h: Headers, name: string): string {
  return headerValues(h, name)[0] ?? '';
}

const TOKEN68 = /^[A-Za-z0-9\-._~+/]+=*$/;

/**
 * A small, lenient `WWW-Authenticate` parser for tests (the library has its own RFC 9110 parser):
 * splits challenges across headers and on commas (h2 joins repeated headers), token68 or auth-params.
 */
export function parseChallenges(values: string[]): Challenge[] {
  const out: Array<{ scheme: string; token68?: string; params: Record<string, string> }> = [];
  for (const value of values) {
    // split on commas outside quotes
    const parts: string[] = [];
    let cur = '';
    let q = false;
    for (let i = 0; i < value.length; i++) {
      const c = value[i]!;
      if (c === '"' && value[i - 1] !== '\\') q = !q;
      if (c === ',' && !q) {
        parts.push(cur);
        cur = '';
      } else cur += c;
    }
    parts.push(cur);
    for (const raw of parts) {
      const p = raw.trim();
      if (!p) continue;
      const m = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+)(?:\s+(.*))?$/.exec(p);
      const isParam = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\s*=\s*("(?:[^"\\]|\\.)*"|[^\s"]*)$/.test(p) && !TOKEN68.test(p);
      if (m && !isParam) {
        const rest = m[2]?.trim();
        const ch: { scheme: string; token68?: string; params: Record<string, string> } = { scheme: m[1]!, params: {} };
        if (rest) {
          if (TOKEN68.test(rest)) ch.token68 = rest;
          else addParam(ch.params, rest);
        }
        out.push(ch);
      } else if (out.length > 0) addParam(out[out.length - 1]!.params, p);
    }
  }
  return out.map((c) => ({ ...c, schemeKey: c.scheme.toLowerCase() }));
}

function addParam(params: Record<string, string>, p: string): void {
  const eq = p.indexOf('=');
  if (eq < 0) return;
  let v = p.slice(eq + 1).trim();
  if (v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1).replace(/\\(.)/g, '$1');
  params[p.slice(0, eq).trim().toLowerCase()] = v;
}

/** The challenge for `scheme` in a response's `WWW-Authenticate` (or `Proxy-Authenticate`) headers. */
export function challengeFor(h: Headers, scheme: string, headerName = 'www-authenticate'): Challenge | undefined {
  return parseChallenges(headerValues(h, headerName)).find((c) => c.schemeKey === scheme.toLowerCase());
}

/**
 * `tls-server-end-point` channel-binding data (RFC 5929 §4.1) for a PEM certificate: the hash of the DER
 * certificate with the hash of its signature algorithm, SHA-256 for MD5/SHA-1. The lab's certificates
 * are sha256WithRSAEncryption; SHA-384/512 signatures are detected from the algorithm OID in the DER.
 */
export function tlsServerEndPoint(pem: string): Buffer {
  const der = new X509Certificate(pem).raw;
  const hex = der.toString('hex');
  // sha384WithRSA 1.2.840.113549.1.1.12, sha512WithRSA ...1.13, ecdsa-with-SHA384 1.2.840.10045.4.3.3, -SHA512 ...4.3.4
  let alg = 'sha256';
  if (hex.includes('06092a864886f70d01010c') || hex.includes('06082a8648ce3d040303')) alg = 'sha384';
  else if (hex.includes('06092a864886f70d01010d') || hex.includes('06082a8648ce3d040304')) alg = 'sha512';
  return createHash(alg).update(der).digest();
}

/** A LegInfo for `origin` + `path`. */
export function legInfo(origin: string, path: string, extra: Partial<LegInfo> = {}): LegInfo {
  const u = new URL(origin);
  return {
    origin: u.origin,
    hostname: u.hostname,
    port: Number(u.port || (u.protocol === 'https:' ? 443 : 80)),
    method: 'GET',
    path,
    proxy: false,
    ...extra,
  };
}

export interface HandshakeResult {
  /** Status of the last response. */
  readonly status: number;
  /** Every response, in order (`responses.length` = number of requests sent). */
  readonly responses: readonly HttpResult[];
  /** Authorization values sent, in order (undefined = request sent without). */
  readonly sent: ReadonlyArray<string | undefined>;
  readonly context: MechanismContext;
  /** `X-Remote-User` of the last response (the lab's Apache sets it). */
  readonly remoteUser: string;
  /** What `context.finish()` threw on the final response, if anything. */
  readonly finishError?: unknown;
}

/**
 * Runs one handshake by hand: (proactive token or a bare request) → 401 → `ctx.step(challenge)` → ... →
 * final response → `ctx.finish(challenge)`. Stops after `maxLegs` authenticated requests, or when the
 * server sends 401 without a challenge for the scheme, or the context is complete and still gets 401.
 */
export async function driveHandshake(opts: {
  client: Client;
  path: string;
  mechanism: Mechanism;
  leg: LegInfo;
  proactive?: boolean;
  maxLegs?: number;
}): Promise<HandshakeResult> {
  const { client, path, mechanism, leg } = opts;
  const ctx = mechanism.createContext(leg);
  const responses: HttpResult[] = [];
  const sent: Array<string | undefined> = [];
  let auth: string | undefined = opts.proactive ? await ctx.step(undefined, leg) : undefined;
  const maxLegs = opts.maxLegs ?? 5;
  for (let i = 0; ; i++) {
    sent.push(auth);
    const res = await send(client, path, auth ? { authorization: auth } : {});
    responses.push(res);
    const ch = challengeFor(res.headers, mechanism.scheme);
    if (res.status === 401 && ch && i < maxLegs && !(ctx.complete && auth !== undefined)) {
      auth = await ctx.step(ch, leg);
      continue;
    }
    let finishError: unknown;
    if (res.status !== 401) {
      try {
        await ctx.finish(ch, leg);
      } catch (e) {
        finishError = e;
      }
    }
    return {
      status: res.status,
      responses,
      sent,
      context: ctx,
      remoteUser: header(res.headers, 'x-remote-user'),
      ...(finishError !== undefined ? { finishError } : {}),
    };
  }
}
