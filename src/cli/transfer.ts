/**
 * One URL's transfer: its attempts (--retry), the redirects it follows (-L), the request itself
 * through the command's agent (sent again without Negotiate when Negotiate cannot run here), and
 * its response — the heads -i and -D show (heads.ts), the body to -o or stdout, and why a 401 or 407 stood.
 * Given what it needs ({@link TransferEnv}); returns what came of it ({@link TransferOutcome}),
 * which the command writes out (report.ts) and exits with.
 */
import { statSync, truncateSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import type { Duplex } from 'node:stream';
import { Transform } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Dispatcher } from 'undici';
import type { MultilegAgent, MultilegStats } from '../agent.ts';
import type { Credentials } from '../mechanisms/types.ts';
import type { HandshakeReport } from '../session/exchange.ts';
import { CleartextCredentialsError } from '../trust/policy.ts';
import type { CommandAgent } from './command-agent.ts';
import type { BodyDecoding } from './decode.ts';
import {
  challengeSchemes,
  describeFailure,
  EXIT,
  explain401,
  explain407,
  explainCleartext,
  type Failure,
  forCli,
  heldBackWhy,
  negotiateEnvNotes,
  netrcFileOf,
  netrcOtherHost,
  rootCause,
} from './explain.ts';
import type { ResponseHeads } from './heads.ts';
import type { CliRequest } from './options.ts';
import { headNames, pipelineOf, type Stdout, writeBody, writeHeadsFile } from './output.ts';
import { type LockWait, lockWaitLine, lockWaitNote, type RefusalFile } from './refusals.ts';
import type { Retrier, RetryDecision } from './retry.ts';
import type { LegRecord, Trace } from './trace.ts';
import type { CliTrust } from './trust.ts';

/** A response the agent gives the command. */
type Answer = Awaited<ReturnType<MultilegAgent['request']>>;

/**
 * Statuses whose response has no body (RFC 9110 §6.4.1): curl reads no Content-Encoding on them
 * (its `http_bodyless`), so --compressed refuses none of their heads. A HEAD's is still read (curl's).
 */
const bodyless = (status: number): boolean => status < 200 || status === 204 || status === 304;

/** The statuses -L follows. */
export const REDIRECTS: ReadonlySet<number> = new Set([301, 302, 303, 307, 308]);

/** What a transfer is given: the command's agent and what the command set up around it. */
export interface TransferEnv {
  /** The agent, and whom credentials go to (trusted for this transfer's URL). */
  readonly command: CommandAgent;
  /** The credentials the command resolved (-u, netrc…), if any. */
  readonly credentials: Credentials | undefined;
  readonly trace: Trace;
  /** The heads -D and -i show, with either (-I too). */
  readonly heads: ResponseHeads | undefined;
  readonly stdout: Stdout;
  /** A message (-s hides it, -S brings it back). */
  readonly say: (line: string) => void;
  /** curl's warnings (-s hides them). */
  readonly warn: (line: string) => void;
  /** An attempt starts over (--retry): what -w counts is the last attempt's, as curl's. */
  readonly attempt?: () => void;
}

/** What came of a transfer, for its exit code, -w and --json. */
export interface TransferOutcome {
  /** The URL it ended on (after redirects). */
  readonly url: URL;
  /** The final response's status, 0 when none came. */
  readonly status: number;
  /** The method of its last request (a redirect may have turned a POST into a GET): -w %{method}. */
  readonly method: string;
  readonly redirects: number;
  readonly exit: number;
  /** The message of the failure that set the exit code (-w %{errormsg}). */
  readonly errormsg: string;
  /** Why its final 401 or 407 was not answered (the line stderr gives, which -s hides): --json's `reason`. */
  readonly reason: string | undefined;
  /** The body's bytes received. */
  readonly bytes: number;
  /** The final response's headers and protocol, once one came. */
  readonly final: { headers: Record<string, string | string[] | undefined>; protocol: string | undefined } | undefined;
  /** How many times it was sent again (--retry). */
  readonly retries: number;
  /** Seconds from its last attempt's start to its end (-w %{time_total}; curl's, with --retry). */
  readonly timeTotal: number;
  /**
   * When (performance.now()) its last attempt started, its last request (after the redirects it followed) started,
   * and that request's response head reached the command (-w %{time_redirect}, %{time_starttransfer}).
   */
  readonly clock: { readonly started: number; readonly lastHop: number; readonly head: number | undefined };
  /** The body bytes its last request sent (-w %{size_upload}). */
  readonly uploaded: number;
  /** This transfer's counts; `origins` is now's. */
  readonly stats: MultilegStats;
  /** Its legs and handshakes, from the trace. */
  readonly legs: readonly LegRecord[];
  readonly handshakes: readonly HandshakeReport[];
}

/** Where a Location leads from `url`; its user:password@ is neither sent nor printed (-w %{url_effective}, --json). */
export function redirectTarget(location: string, url: URL): URL {
  const next = new URL(location, url);
  next.username = '';
  next.password = '';
  return next;
}

/**
 * The proxy a request to `url` goes through, by the agent's own rules (-x, HTTPS_PROXY / HTTP_PROXY,
 * NO_PROXY), as its origin; loaded only on the rare paths that ask.
 */
async function proxyFor(req: CliRequest, url: URL): Promise<string | undefined> {
  const { ProxyResolver } = await import('../proxy/options.ts');
  const { ProxyUrlError } = await import('../proxy/errors.ts');
  const { proxy, negotiate, connectTo } = req.agent;
  try {
    return new ProxyResolver(proxy, process.env, negotiate, connectTo).route(url.origin)?.proxy.origin;
  } catch (err) {
    // A proxy variable that is no usable URL: the request itself fails with it (curl's 5 or 7).
    if (err instanceof ProxyUrlError) return undefined;
    throw err;
  }
}

/**
 * Why a request to `url` cannot verify a certificate it would verify (curl's 77): --cacert for an
 * https:// URL (not with -k), --proxy-cacert for an https:// proxy on the way (not with --proxy-insecure).
 */
async function unusableCaFor(req: CliRequest, url: URL): Promise<string | undefined> {
  if (req.unusableCa !== undefined && url.protocol === 'https:' && req.agent.connect?.rejectUnauthorized !== false)
    return req.unusableCa;
  const proxy = req.agent.proxy;
  if (
    req.unusableProxyCa !== undefined &&
    !(typeof proxy === 'object' && proxy.connect?.rejectUnauthorized === false) &&
    (await proxyFor(req, url))?.startsWith('https:')
  )
    return req.unusableProxyCa;
  return undefined;
}

/**
 * R4: a leg that carried credentials and got no answer (the connection cut, or the time ran out,
 * after they went): the server or proxy may have counted them, and the outcome is unknown. The
 * trace keeps header names; values are redacted. An NTLM NEGOTIATE alone (`secretless`: `--ntlm`'s
 * and `--proxy-ntlm`'s opening, a handshake's first leg) holds no password: nothing to count.
 */
const credentialsUnanswered = (leg: LegRecord): boolean =>
  leg.response === undefined &&
  !leg.request.secretless &&
  leg.request.headers.some(([name]) => name === 'authorization' || name === 'proxy-authorization');

/** What a transfer's next request sends: the URL given, then each redirect's. */
interface Hop {
  readonly url: URL;
  readonly method: string;
  readonly body: Buffer | undefined;
  readonly headers: Record<string, string | string[]>;
}

/** The request as given (each attempt starts over from it, as curl's does). */
const firstHop = (req: CliRequest): Hop => ({
  url: req.url,
  method: req.method,
  body: req.body,
  headers: { ...req.headers },
});

/** The request a redirect with `status` leads to, `next` (-L, with curl's rules). */
function redirected(req: CliRequest, from: Hop, status: number, next: URL, trusted: CliTrust): Hop {
  let { method, body } = from;
  const headers = { ...from.headers };
  if (next.origin !== from.url.origin) {
    if (req.locationTrusted) trusted.add(next.origin);
    else {
      // CVE-2018-1000007: the caller's own Authorization and Cookie stay on the first origin too,
      // and so does a Proxy-Authorization they gave for the way there.
      delete headers.authorization;
      delete headers.cookie;
      delete headers['proxy-authorization'];
    }
  }
  // curl keeps a Host given with -H only on hops to the first URL's host (its first_host): on
  // another it would send the hop to the first one's site.
  if (req.headers.host !== undefined) {
    if (next.hostname === req.url.hostname) headers.host = req.headers.host;
    else delete headers.host;
  }
  // -e URL;auto: the URL the redirect came from (curl's), which holds no user:password@ here.
  if (req.autoReferer) {
    const referer = new URL(from.url);
    referer.hash = '';
    headers.referer = referer.href;
  }
  // curl: a 303, or a 301/302 to a request with a body (or a POST), goes on without the body; a
  // -T upload (a PUT) goes on with it after a 301/302, as curl sends it again; --post301/302/303
  // keep a -d/-F body (curl's POST, whatever -X says) and its method.
  const posts = body !== undefined && !req.upload;
  const kept = posts && req.keepPost.has(status as 301 | 302 | 303);
  if (
    !kept &&
    (status === 303 || ((status === 301 || status === 302) && !req.upload && (posts || method === 'POST')))
  ) {
    // -X stays the method of every request (curl's), without the body.
    if (method !== 'HEAD' && !req.customMethod) method = 'GET';
    body = undefined;
    // The form type the command added for -d goes with the body (one given with -H stays).
    if (req.formType) delete headers['content-type'];
    delete headers['content-length'];
  }
  return { url: next, method, body, headers };
}

/**
 * R4, the state file (refusals.ts): the password was refused at `place` by an earlier run, and this
 * one held it back (`heldBackMs` more), as the agent holds back one refused in the run.
 */
function heldBackLine(
  place: string,
  credentials: Credentials,
  refusal: { readonly at: number },
  heldBackMs: number,
): string {
  return `${heldBackWhy(place, credentials, refusal.at, heldBackMs)}; no credentials were sent: fix the password, or pass --forget-refusals to try it now`;
}

/**
 * R4, R1: the wait for another run's lock behind a final 401 (at `origin`) or 407 (at `proxy`, where
 * a proxy password's lock is kept: review r74, looked up by the URL's origin it never showed) that
 * the request gave up on, going without the password.
 */
export function lockWaitBehind(
  refusals: Pick<RefusalFile, 'waitingFor'> | undefined,
  status: number,
  origin: string,
  proxy: string | undefined,
): LockWait | undefined {
  if (status === 401) return refusals?.waitingFor(origin);
  return status === 407 && proxy !== undefined ? refusals?.waitingFor(proxy, true) : undefined;
}

/**
 * Why a final 401 or 407 stood, in words, once its body is read: why what it offers could not run
 * here (no Kerberos ticket: the agent's deliver401 made it the answer), or explain.ts's account of the 401; a forwarding
 * proxy's 407 as curl shows it (proxy.deliver407).
 */
async function whyStood(
  req: CliRequest,
  hop: Hop,
  status: number,
  headers: Record<string, string | string[] | undefined>,
  { command, credentials, trace }: TransferEnv,
): Promise<string | undefined> {
  const { url } = hop;
  // The 401 came as the answer because what it offers cannot run here (deliver401): why (kinit…).
  const unanswered = trace.lastDelivered?.unanswered;
  if (status === 401 && unanswered && unanswered.unusable.length > 0)
    // M2: gss-ntlmssp's user file answers curl --negotiate without a ticket; SPNEGO here offers
    // Kerberos alone (NTLM is ours): say why the same command that works with curl does not here.
    return `${unanswered.unusable.map((u) => `${forCli(u.message)} (${u.code})`).join('; ')}${negotiateEnvNotes(
      unanswered.unusable,
      { curl: 'curl --negotiate', instead: 'give -u DOMAIN\\user for NTLM' },
    )}`;
  // R4, R1: another run held this password's lock (trying it here) longer than the request waits:
  // it went without the password, for that reason and not for any of the scheme's.
  const waiting = lockWaitBehind(
    command.refusals,
    status,
    url.origin,
    status === 407 ? await proxyFor(req, url) : undefined,
  );
  if (waiting) return lockWaitLine(waiting);
  // R4: held back from the first because an earlier run's try of this password was refused there.
  const remembered = status === 401 ? command.refusals?.heldBack(url.origin) : undefined;
  if (remembered && trace.lastDelivered?.heldBackFor !== undefined && credentials)
    return heldBackLine(url.origin, credentials, remembered, trace.lastDelivered.heldBackFor);
  if (status === 401)
    return explain401({
      origin: url.origin,
      offered: challengeSchemes(headers, status),
      trusted: command.trusted.trusts(url.origin),
      netrcNamesOther: command.trusted.namesOther(url.origin),
      hasPassword: credentials !== undefined,
      hasCertificate: req.agent.clientCertificate !== undefined,
      netrcFile: netrcFileOf(req),
      schemes: req.agent.schemes,
      handshakes: trace.handshakes,
      keptBackMs: trace.lastDelivered?.heldBackFor,
      // The request carried the caller's own Authorization (-H; not dropped by a redirect).
      ...(hop.headers.authorization !== undefined ? { ownAuthorization: { replaces: req.authorizationReplaces } } : {}),
    });
  if (status !== 407) return undefined;
  const proxy = await proxyFor(req, url);
  const sent = trace.lastDelivered?.request.headers.some(([name]) => name === 'proxy-authorization');
  if (!proxy) return undefined;
  const last = trace.unanswered407.at(-1);
  // R4: none went, the proxy having refused the password lately (this run, or another: the state file).
  const heldBack =
    last?.reason === 'refused-lately' && last.heldBackFor !== undefined
      ? {
          ms: last.heldBackFor,
          user: typeof req.agent.proxy === 'object' ? req.agent.proxy.credentials?.username : undefined,
          at: command.refusals?.heldBack(proxy, true)?.at,
        }
      : undefined;
  return explain407({
    proxy,
    offered: challengeSchemes(headers, status),
    sent: sent === true,
    unusable: last?.unusable ?? [],
    schemes: typeof req.agent.proxy === 'object' ? req.agent.proxy.schemes : undefined,
    ...(heldBack ? { heldBack } : {}),
  });
}

/** -i and -I: every head -D shows, the handshake's too, as they come (curl's): to stdout, or with -o to `toFile`. */
function showHeads(
  req: CliRequest,
  shownHeads: ResponseHeads | undefined,
  stdout: Stdout,
  toFile: (text: string) => void,
): void {
  if (shownHeads)
    shownHeads.include =
      req.include && !req.json
        ? (text) => {
            if (req.output) toFile(text);
            else stdout.head(text);
          }
        : undefined;
}

/**
 * The caller's handler, passing on the head's raw header list (undici's `controller.rawHeaders`,
 * which its request() drops): -i and -D write the headers in the order they came, as curl.
 */
class RawHead implements Dispatcher.DispatchHandler {
  readonly #handler: Dispatcher.DispatchHandler;
  readonly #seen: (raw: unknown) => void;
  constructor(handler: Dispatcher.DispatchHandler, seen: (raw: unknown) => void) {
    this.#handler = handler;
    this.#seen = seen;
  }
  onRequestStart(controller: Dispatcher.DispatchController, context: unknown): void {
    this.#handler.onRequestStart?.(controller, context);
  }
  onRequestUpgrade(
    controller: Dispatcher.DispatchController,
    status: number,
    headers: IncomingHttpHeaders,
    socket: Duplex,
  ): void {
    this.#handler.onRequestUpgrade?.(controller, status, headers, socket);
  }
  onResponseStart(
    controller: Dispatcher.DispatchController,
    status: number,
    headers: IncomingHttpHeaders,
    message: string,
  ): void {
    this.#seen((controller as { rawHeaders?: unknown }).rawHeaders);
    this.#handler.onResponseStart?.(controller, status, headers, message);
  }
  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.#handler.onResponseData?.(controller, chunk);
  }
  onResponseEnd(controller: Dispatcher.DispatchController, trailers: IncomingHttpHeaders): void {
    this.#handler.onResponseEnd?.(controller, trailers);
  }
  onResponseError(controller: Dispatcher.DispatchController, error: Error): void {
    this.#handler.onResponseError?.(controller, error);
  }
}

/**
 * One request of the transfer (a hop) through the command's agent; with -i, -I or -D, with the
 * names of its head in the order they came (`names`).
 */
async function send(
  req: CliRequest,
  hop: Hop,
  signal: AbortSignal | undefined,
  { command, heads }: TransferEnv,
): Promise<Answer & { names?: string[] | undefined }> {
  let raw: unknown;
  const dispatcher = heads
    ? command.agent.compose(
        (dispatch) => (opts, handler) =>
          dispatch(
            opts,
            new RawHead(handler, (r) => {
              raw = r;
            }),
          ),
      )
    : command.agent;
  const res = await dispatcher.request({
    origin: hop.url.origin,
    path: `${hop.url.pathname}${hop.url.search}`,
    method: hop.method as 'GET',
    headers: hop.headers,
    body: hop.body ?? null,
    ...(signal ? { signal } : {}),
    ...(req.http1 ? { allowH2: false } : {}),
  } as Parameters<MultilegAgent['request']>[0]);
  return heads ? Object.assign(res, { names: headNames(raw) }) : res;
}

/** Counts a body's bytes as they pass: the transfer's (`add`), and this response's in `progress` (curl's 18 when cut short). */
function byteCounter(progress: { received: number }, add: (n: number) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      add(chunk.length);
      progress.received += chunk.length;
      cb(null, chunk);
    },
  });
}

/**
 * The final response's body, through `stages` (the byte counter, then --compressed's decoders): to
 * the -o file (after the heads -i keeps for it) or stdout; read and dropped for -I without -o,
 * --json without -o (decoded all the same: its exit code is the transfer's), and -f's status >= 400. `opened`
 * is called before the -o file is written. Returns the line of a failure to write.
 */
async function outputBody(
  req: CliRequest,
  res: Answer,
  status: number,
  stages: readonly Transform[],
  heads: string,
  stdout: Stdout,
  opened: () => void,
): Promise<string | undefined> {
  // --json takes stdout's place, not -o's: with -o the body goes to its file (curl's -w '%{json}' -o).
  if ((req.head && !req.output) || (req.json && req.output === undefined) || (req.fail && status >= 400)) {
    await pipelineOf(res.body, ...stages, async (source) => {
      for await (const _ of source);
    });
    // -f -i -o: the final head still goes into the file (curl writes it there), without the body.
    if (heads && req.output !== undefined) {
      opened();
      return writeHeadsFile(req.output, heads, req.createDirs);
    }
    return undefined;
  }
  if (req.output !== undefined) opened();
  return writeBody(res.body, stages, req.output, heads, stdout, req.createDirs);
}

/**
 * --compressed's decoding of a response's body (decode.ts, loaded only then): every response the
 * command receives, as curl reads each head's Content-Encoding, though only the final body goes
 * through it. A response with more codings than curl accepts is refused before its body, which is
 * dropped unread.
 */
async function decodingOf(res: Answer, url: URL): Promise<BodyDecoding> {
  const { bodyDecoding } = await import('./decode.ts');
  try {
    return bodyDecoding(res.headers['content-encoding'], url.host);
  } catch (err) {
    await res.body.dump().catch(() => {});
    throw err;
  }
}

/**
 * --retry's decision after an attempt that no transient status decided (retry.ts: curl's rules),
 * from what came of it: its exit code, status, failure, legs and final response.
 */
function retryAfterAttempt(
  retrier: Retrier,
  attempt: {
    readonly exit: number;
    readonly status: number;
    readonly failure: Failure | undefined;
    readonly legs: readonly LegRecord[];
    readonly final: { headers: Record<string, string | string[] | undefined> } | undefined;
    /** The final 401 stood because no KDC answered (the agent's deliver401): not the server's verdict. */
    readonly kdcSilent401: boolean;
  },
  failOnError: boolean,
): RetryDecision | undefined {
  const { exit, status, failure, final } = attempt;
  return retrier.next({
    exit,
    status,
    errno: failure?.errno,
    // R4: nor an attempt with credentials that went unanswered: a wrong password sent again
    // may lock the account. Answered ones (a proxy's 200 to its CONNECT, an origin's 401
    // challenge) say the server saw them, and a failure after that is not theirs.
    refused: failure?.refused === true || (failure !== undefined && attempt.legs.some(credentialsUnanswered)),
    failOnError,
    retryAfter: final?.headers['retry-after'],
    kdcSilent: failure?.kdcSilent === true || attempt.kdcSilent401,
  });
}

/**
 * What an attempt cut short wrote to the -o file goes before the next (curl truncates a regular
 * file; stdout cannot take it back).
 */
function forgetOutput(req: CliRequest): void {
  if (req.output === undefined) return;
  try {
    const size = statSync(req.output);
    if (size.isFile() && size.size > 0) {
      if (req.verbose && !req.silent) process.stderr.write(`multileg: Note: Throwing away ${size.size} bytes\n`);
      truncateSync(req.output, 0);
    }
  } catch {}
}

/** A transfer's counts (curl's -w %{num_connects} is the transfer's new connections); `origins` is now's. */
function countsSince(before: MultilegStats, after: MultilegStats): MultilegStats {
  return {
    ...after,
    requests: after.requests - before.requests,
    sessions: after.sessions - before.sessions,
    handshakes: after.handshakes - before.handshakes,
    legs: after.legs - before.legs,
    failedHandshakes: after.failedHandshakes - before.failedHandshakes,
    proxyHandshakes: after.proxyHandshakes - before.proxyHandshakes,
    proxyLegs: after.proxyLegs - before.proxyLegs,
    failedProxyHandshakes: after.failedProxyHandshakes - before.failedProxyHandshakes,
    callerRequests: after.callerRequests - before.callerRequests,
    callerChallenges: after.callerChallenges - before.callerChallenges,
  };
}

/**
 * One URL's transfer (`req` is the command's, with this URL and its -o), its retries included:
 * what came of it, for the exit code, -w and --json.
 */
export async function transfer(req: CliRequest, env: TransferEnv): Promise<TransferOutcome> {
  const { command, trace, heads: shownHeads, stdout, say, warn } = env;
  let started = performance.now();
  const before = command.totals();
  const firstLeg = trace.legs.length;
  const firstHandshake = trace.handshakes.length;
  let hop = firstHop(req);
  /** -w %{time_redirect}, %{time_starttransfer}: when the last request started, when its head came. */
  let lastHop = started;
  let head: number | undefined;
  let redirects = 0;
  let status = 0;
  let bytes = 0;
  let exit: number = EXIT.ok;
  let final: { headers: Record<string, string | string[] | undefined>; protocol: string | undefined } | undefined;
  /** The message of the failure that sets the exit code (-w %{errormsg}). */
  let errormsg = '';
  let reason: string | undefined;
  /** `message`: -w %{errormsg}'s words where they are not the line's (curl's for -f, without its code). */
  const fail = (code: number, line: string, message = line) => {
    say(line);
    exit = code;
    errormsg = message;
  };
  const httpError = (status: number) =>
    fail(EXIT.httpError, `(22) HTTP ${status}`, `The requested URL returned error: ${status}`);
  // --retry: curl's rules (retry.ts), loaded only when asked for.
  const retrier = req.retry ? new (await import('./retry.ts')).Retrier(req.retry) : undefined;
  const failOnError = req.fail || req.failWithBody;
  /** With -o, the heads -i shows, for the file (curl writes them there, not to stdout). */
  let heads = '';
  showHeads(req, shownHeads, stdout, (text) => {
    heads += text;
  });
  /** While the body is read: what came of it, and what the head announced (a failure then is curl's 18). */
  let reading: { received: number; expected: number | undefined } | undefined;
  // One attempt a turn: the transfer again from the URL given, with --retry.
  for (;;) {
    // --max-time bounds each attempt (curl's, with --retry).
    const signal = req.maxTime !== undefined ? AbortSignal.timeout(req.maxTime) : undefined;
    /** Where this attempt's legs start in the trace (R4, below). */
    const legsBefore = trace.legs.length;
    /** The next attempt, decided when a transient status came (its answer is then not output). */
    let retryNext: RetryDecision | undefined;
    let retryDecided = false;
    let failure: Failure | undefined;
    /** Whether this attempt opened the -o file (emptied before the next one, as curl truncates it). */
    let wroteOutput = false;
    try {
      for (;;) {
        // curl's 77 for a --cacert / --proxy-cacert file it cannot use, once a TLS connection would use it (this hop).
        const unusableCa =
          req.unusableCa !== undefined || req.unusableProxyCa !== undefined
            ? await unusableCaFor(req, hop.url)
            : undefined;
        if (unusableCa !== undefined) {
          fail(EXIT.caFile, unusableCa);
          break;
        }
        const hopLegs = trace.legs.length;
        let res: Answer & { names?: string[] | undefined };
        try {
          res = await send(req, hop, signal, env);
        } finally {
          // --har: the body each leg of this request sent (every leg sends the same, C10).
          if (req.har !== undefined) trace.sentBody(hopLegs, hop.url.origin, hop.body, hop.headers['content-type']);
        }
        head = performance.now();
        status = res.statusCode;
        const protocol = trace.lastDelivered?.response?.protocol;
        final = { headers: res.headers, protocol };
        // The responses the command receives itself, verbatim (the handshake's came through the
        // trace), -f's final >= 400 too (curl shows its head, then exits 22 without the body). An
        // answer retried shows its head, not its body (stdout would have it twice); an -o file
        // forgets it (heads = '', below).
        // --compressed: curl refuses a head with more than 5 codings as it reads it, before -L,
        // -f or --retry look at its status (61 for a redirect too, and for -f's or
        // --fail-with-body's 404: curl 7.88's), never a 204's or a 304's; -i, -I and -D show the
        // head up to the line that went past them.
        const decodes = req.compressed && !bodyless(status);
        const cut = decodes && shownHeads ? (await import('./decode.ts')).codingsCut(res) : undefined;
        shownHeads?.received(protocol, res, cut);
        const decoding = decodes ? await decodingOf(res, hop.url) : undefined;
        const location = res.headers.location;
        if (req.location && REDIRECTS.has(status) && typeof location === 'string') {
          await res.body.dump();
          // Counted once followed: -w %{num_redirects} never exceeds --max-redirs (curl's).
          if (redirects >= req.maxRedirs) {
            fail(EXIT.redirects, `maximum (${req.maxRedirs}) redirects followed (--max-redirs)`);
            break;
          }
          // curl's 3 and 1 for a Location it cannot follow; never echoed (it may hold user:password@).
          let next: URL;
          try {
            next = redirectTarget(location, hop.url);
          } catch {
            fail(EXIT.badUrl, `the redirect from ${hop.url.origin} has a Location that is not a URL; not followed`);
            break;
          }
          if (next.protocol !== 'https:' && next.protocol !== 'http:') {
            fail(
              EXIT.unsupportedProtocol,
              `the redirect from ${hop.url.origin} leads to a ${next.protocol} URL; -L follows http:// and https:// only`,
            );
            break;
          }
          redirects++;
          const from = hop.url.origin;
          hop = redirected(req, hop, status, next, command.trusted);
          // --location-trusted trusts the hop's origin, but netrc credentials stay with their host.
          if (req.locationTrusted && hop.url.origin !== from && command.trusted.namesOther(hop.url.origin))
            warn(
              `--location-trusted: no credentials go to ${hop.url.origin}: ${netrcOtherHost(hop.url.origin, netrcFileOf(req))}`,
            );
          else if (
            req.locationTrusted &&
            from.startsWith('https:') &&
            hop.url.protocol === 'http:' &&
            (env.credentials !== undefined || hop.headers.authorization !== undefined)
          )
            // curl sends them too; said, since what TLS kept from the network is now on it.
            warn(
              `--location-trusted: the redirect leads from https to ${hop.url.origin}: the credentials go there unencrypted, as curl sends them; drop --location-trusted, or use --trust with the https:// origins meant`,
            );
          lastHop = performance.now();
          head = undefined;
          continue;
        }
        if (retrier?.transient(status)) {
          retryDecided = true;
          retryNext = retrier.next({
            exit: failOnError && status >= 400 ? EXIT.httpError : EXIT.ok,
            status,
            refused: false,
            failOnError,
            retryAfter: res.headers['retry-after'],
          });
          if (retryNext) {
            // Sent again: this answer's body is not output (curl writes it, then takes it back from
            // an -o file only: stdout would have it twice); its head was, as -D's.
            await res.body.dump().catch(() => {});
            if (failOnError) httpError(status);
            break;
          }
        }
        const length = Number(res.headers['content-length']);
        const progress = {
          received: 0,
          expected: hop.method !== 'HEAD' && Number.isSafeInteger(length) ? length : undefined,
        };
        reading = progress;
        const counter = byteCounter(progress, (n) => {
          bytes += n;
        });
        // --compressed: the body is decoded after it is counted (curl's -w size_download is the
        // bytes received); not -f's refused one, which is dropped unread as curl does.
        const decoded = req.fail && status >= 400 ? undefined : decoding;
        const stages = decoded ? [counter, ...decoded.stages] : [counter];
        const problem = await outputBody(req, res, status, stages, heads, stdout, () => {
          wroteOutput = true;
        });
        heads = '';
        if (problem !== undefined) {
          fail(EXIT.write, problem);
          break;
        }
        reading = undefined;
        const last = trace.lastDelivered;
        if (last) {
          last.bodySize = bytes;
          // --har: the size decoded beside the size received, once the body was decoded.
          if (decoded && decoded.stages.length > 0) last.contentSize = decoded.decoded();
        }
        const failing = (req.fail || req.failWithBody) && status >= 400;
        // Why a 401/407 stood: -s hides it, as curl says nothing there (a cron job's mail on every
        // run); -S brings it back only where -f makes the status an error.
        // --json reports it whatever -s says: a monitoring check reads it there, not on stderr.
        const why = !req.silent || failing || req.json ? await whyStood(req, hop, status, res.headers, env) : undefined;
        reason = why;
        if (why !== undefined && (!req.silent || failing)) say(why);
        if (failing) {
          httpError(status);
        }
        break;
      }
    } catch (err) {
      failure = describeFailure(err, {
        url: hop.url,
        maxTime: req.maxTime,
        midBody: reading,
        cacert: req.cacert,
        clientCertificate: req.agent.clientCertificate !== undefined,
      });
      // S4: the agent answered no 401 over cleartext where the command does not trust the origin
      // (CleartextCredentialsError). curl sends nothing there either (a redirect to another host,
      // port or scheme): its 401 is the answer, -w's http_code 401 and 22 with -f, else 0 with the
      // page. The agent keeps no page (S4's typed error), and 0 without one would tell a script
      // the transfer worked: 22 (as for SystemNtlmRefusedError), said as explain401 says it over https.
      const cleartext = rootCause(err);
      if (cleartext instanceof CleartextCredentialsError) {
        const origin = hop.url.origin;
        // The origin refused: behind an address URL with -H 'Host: NAME:same port', the name.
        const refused = cleartext.origin;
        const leg = trace.legs
          .slice(legsBefore)
          .findLast((l) => l.response?.status === 401 && l.request.origin === origin);
        status = 401;
        failure = {
          exit: EXIT.httpError,
          message: `${explainCleartext({
            origin,
            refused,
            offered: leg?.response ? challengeSchemes(leg.response.headers, 401) : [],
            netrcNamesOther: command.trusted.namesOther(refused),
            netrcFile: netrcFileOf(req),
          })} (MULTILEG_CLEARTEXT)`,
          refused: true,
        };
      }
      // R1: -m ran out while the request waited for another run's try of the password: said, with whose.
      const waiting = command.refusals?.waitingFor(hop.url.origin);
      const message = waiting ? `${failure.message}; ${lockWaitNote(waiting)}` : failure.message;
      // `multileg help`: curl's line, and what was likely meant (the line only: -w and --json keep curl's errormsg).
      const meant =
        req.helpMeant && failure.exit === EXIT.resolve && hop.url.hostname === 'help' ? req.helpMeant : undefined;
      fail(failure.exit, meant ? `${message}; did you mean ${meant}?` : message, message);
    }
    // A head that came before the attempt failed (a 401 whose next leg was cut): shown now.
    shownHeads?.flush();
    if (!retrier) break;
    const next = retryDecided
      ? retryNext
      : retryAfterAttempt(
          retrier,
          {
            exit,
            status,
            failure,
            legs: trace.legs.slice(legsBefore),
            final,
            kdcSilent401:
              failure === undefined &&
              status === 401 &&
              (trace.lastDelivered?.unanswered?.unusable.some((u) => u.kdcSilent) ?? false),
          },
          failOnError,
        );
    if (!next) {
      if (retrier.notice) warn(retrier.notice);
      break;
    }
    warn(next.warning);
    if (wroteOutput) forgetOutput(req);
    await sleep(next.delayMs);
    // The transfer starts over from the URL given, as curl's does, and so does its clock.
    env.attempt?.();
    hop = firstHop(req);
    started = performance.now();
    lastHop = started;
    head = undefined;
    redirects = 0;
    status = 0;
    bytes = 0;
    exit = EXIT.ok;
    errormsg = '';
    reason = undefined;
    final = undefined;
    heads = '';
    reading = undefined;
  }
  const stats = countsSince(before, command.totals());
  return {
    url: hop.url,
    status,
    method: hop.method,
    redirects,
    exit,
    errormsg,
    reason,
    bytes,
    final,
    retries: retrier?.retries ?? 0,
    timeTotal: (performance.now() - started) / 1000,
    clock: { started, lastHop, head },
    uploaded: hop.body?.length ?? 0,
    stats,
    legs: trace.legs.slice(firstLeg),
    handshakes: trace.handshakes.slice(firstHandshake),
  };
}
