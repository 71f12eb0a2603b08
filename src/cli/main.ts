/**
 * `multileg`: a curl-like client for intranet services that want NTLM, Negotiate/Kerberos, Digest,
 * Basic or a client certificate, over HTTP/2 and HTTP/1.1. Exit codes (README "Command line"): 0
 * done, 1 a typed failure (the message names the fix), 2 bad usage, and curl's 5, 6, 7, 18, 22 (-f), 23
 * (-o cannot be written), 26 (a file a flag names cannot be read), 28, 35, 47, 52 (empty reply), 56, 58,
 * 60, 77. Started through bin.ts, which checks the Node.js version first.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { statSync, truncateSync, writeFileSync } from 'node:fs';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MultilegAgent } from '../agent.ts';
import { ConfigError, type MultilegError } from '../errors.ts';
import { cannotRunHere } from '../mechanisms/registry.ts';
import { credentialsFor } from './credentials.ts';
import type { HeaderDump } from './dump-header.ts';
import { challengeSchemes, describeFailure, EXIT, explain401, explain407, type Failure, forCli } from './explain.ts';
import { type CliRequest, parseCliOrExit, program, shownArgv, UsageError } from './options.ts';
import { isEpipe, responseHead, Stdout, writeBody, writeProblem } from './output.ts';
import type { RetryDecision } from './retry.ts';
import { type LegRecord, Trace } from './trace.ts';
import { CliTrust } from './trust.ts';
import { keepWasmOnBaseline } from './wasm.ts';

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/**
 * The proxy a request to `url` goes through, by the agent's own rules (-x, HTTPS_PROXY / HTTP_PROXY,
 * NO_PROXY), as its origin; loaded only on the rare paths that ask.
 */
async function proxyFor(req: CliRequest, url: URL): Promise<string | undefined> {
  const { ProxyResolver } = await import('../proxy/options.ts');
  return new ProxyResolver(req.agent.proxy, process.env, req.agent.negotiate).route(url.origin)?.proxy.origin;
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

/** Whether a leg carried credentials (the trace keeps header names; values are redacted). */
const carriesCredentials = (leg: LegRecord): boolean =>
  leg.request.headers.some(([name]) => name === 'authorization' || name === 'proxy-authorization');

async function main(argv: string[]): Promise<number> {
  // -v and the messages go to stderr: a reader of it that went away (`2>&1 >file | head`) is not
  // an error, as for curl; the body still goes out and the exit code is the transfer's.
  process.stderr.on('error', (err: NodeJS.ErrnoException) => {
    if (!isEpipe(err)) throw err;
  });
  // One commander program (~0.7 ms to build) tells which options take values, then parses.
  const cmd = program();
  // What `ps` shows other users: the arguments without their passwords (doctor's too).
  const shown = shownArgv(argv, cmd);
  if (shown) process.title = ['multileg', ...shown].join(' ');
  if (argv[0] === 'doctor') return (await import('./doctor.ts')).doctor(argv.slice(1));
  const req = parseCliOrExit(argv, 'multileg', cmd);
  if (typeof req === 'number') return req;
  // Loaded once a request will be made: usage errors start without them. Of undici, only what a
  // request uses (undici-core.ts).
  (await import('./undici-core.ts')).useUndiciCore();
  const { MultilegAgent } = await import('../agent.ts');
  const say = (line: string) => {
    if (!req.silent || req.showError) process.stderr.write(`multileg: ${line}\n`);
  };
  let credentials: Awaited<ReturnType<typeof credentialsFor>>;
  try {
    credentials = await credentialsFor(req);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    say(err.message);
    return err instanceof UsageError ? err.exit : EXIT.usage;
  }
  // curl's rule: credentials go to the URL's origin; --trust and --location-trusted add others.
  // Each transfer has its own (set when it starts): a URL's origin is trusted in its own transfer
  // only, never because another URL of the command names it.
  let trusted = new CliTrust(req.url.origin, req.trust);
  let agent: MultilegAgent;
  try {
    agent = new MultilegAgent({
      ...req.agent,
      ...(credentials ? { credentials } : {}),
      trustedOrigins: (origin) => trusted.trusts(origin),
    });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    if (err.option === 'clientCertificate') {
      say(forCli(err.message.replace(/^clientCertificate: /, '--cert/--key: ')));
      return EXIT.clientCertificate;
    }
    say(describeFailure(err, req).message);
    return EXIT.usage;
  }
  // -D: opened (emptied) before the first request, as curl does; one that cannot be is curl's 23.
  let dump: HeaderDump | undefined;
  if (req.dumpHeader !== undefined) {
    try {
      dump = await (await import('./dump-header.ts')).HeaderDump.open(req.dumpHeader);
    } catch (err) {
      say(`-D ${req.dumpHeader}: ${writeProblem(err as NodeJS.ErrnoException)}`);
      await agent.destroy().catch(() => {});
      return EXIT.write;
    }
  }
  const trace = new Trace(
    req.verbose ? (line) => process.stderr.write(`${line}\n`) : undefined,
    dump ? (leg) => dump.leg(leg) : undefined,
  );
  /** curl's warnings: -s hides them, -S does not bring them back. */
  const warn = (line: string) => {
    if (!req.silent) process.stderr.write(`multileg: Warning: ${line}\n`);
  };
  // -w %{remote_ip} / %{remote_port}: the address each origin's last connection reached.
  const remotes = new Map<string, { ip: string; port: string }>();
  const onConnected = (message: unknown) => {
    const { connectParams: p, socket } = message as {
      connectParams: { protocol: string; host: string };
      socket: { remoteAddress?: string; remotePort?: number };
    };
    try {
      remotes.set(new URL(`${p.protocol}//${p.host}`).origin, {
        ip: socket.remoteAddress ?? '',
        port: socket.remotePort !== undefined ? String(socket.remotePort) : '',
      });
    } catch {}
  };
  if (req.writeOut !== undefined) subscribe('undici:client:connected', onConnected);
  /** Why Negotiate could not run, when the request was sent again without it. */
  let cannotRun: MultilegError | undefined;
  let earlier: ReturnType<MultilegAgent['stats']> | undefined;
  /** Both agents' when a request was sent again without Negotiate (-w %{num_connects}, -v, --json). */
  const totals = (): ReturnType<MultilegAgent['stats']> => {
    const now = agent.stats();
    return earlier
      ? {
          ...now,
          requests: now.requests + earlier.requests,
          sessions: now.sessions + earlier.sessions,
          handshakes: now.handshakes + earlier.handshakes,
          legs: now.legs + earlier.legs,
          failedHandshakes: now.failedHandshakes + earlier.failedHandshakes,
        }
      : now;
  };
  const stdout = new Stdout();
  // `performance` (each transfer's -w %{time_total}) loads Node's perf_hooks on first use: before
  // wasm.ts's V8 flag, which would cost those modules their code cache.
  performance.now();
  // Now, with everything the request needs loaded: not before (wasm.ts).
  await keepWasmOnBaseline();
  if (req.unusedOutputs) warn('Got more output options than URLs');
  // The URLs one after another, as curl does, through the one agent: a session authenticated for
  // the first is used again by the next on its origin (one handshake, in session mode). The exit
  // code is the last transfer's (curl's), or the first failure's with --fail-early.
  let exit: number = EXIT.ok;
  for (const { url, output } of req.transfers) {
    trusted = new CliTrust(url.origin, req.trust);
    exit = await transfer({ ...req, url, output });
    if (exit !== EXIT.ok && req.failEarly) break;
  }
  const stats = totals();
  if (req.verbose)
    process.stderr.write(
      `* ${stats.sessions} session(s), ${stats.handshakes} handshake(s), ${stats.legs} leg(s) with credentials\n`,
    );
  trace.stop();
  await agent.destroy().catch(() => {});
  if (req.writeOut !== undefined) unsubscribe('undici:client:connected', onConnected);
  if (dump) {
    dump.close();
    if (dump.error && exit === EXIT.ok) {
      say(`-D ${req.dumpHeader}: ${writeProblem(dump.error)}`);
      exit = EXIT.write;
    }
  }
  if (req.har) {
    try {
      const { toHar } = await import('./har.ts'); // only for --har, as write-out.ts for -w
      writeFileSync(req.har, `${JSON.stringify(toHar(trace.legs), null, 2)}\n`);
    } catch (err) {
      say(`--har ${req.har}: ${(err as Error).message}`);
      if (exit === EXIT.ok) exit = EXIT.failure;
    }
  }
  // A head (-I), a report (--json) or -w written to stdout that failed: curl's 23 too. (Write
  // errors arrive after the write returns.)
  await new Promise((resolve) => setImmediate(resolve));
  if (stdout.error && exit === EXIT.ok) {
    say(`stdout: ${writeProblem(stdout.error)}`);
    exit = EXIT.write;
  }
  return exit;

  /**
   * One URL's transfer (`req` is the command's, with this URL and its -o), its retries included,
   * and what -w and --json write after it; its exit code.
   */
  async function transfer(req: CliRequest): Promise<number> {
    const started = performance.now();
    const before = totals();
    const firstLeg = trace.legs.length;
    const firstHandshake = trace.handshakes.length;
    let url = req.url;
    let method = req.method;
    let body = req.body;
    let headers = { ...req.headers };
    let redirects = 0;
    let status = 0;
    let bytes = 0;
    let exit: number = EXIT.ok;
    let final: { headers: Record<string, string | string[] | undefined>; protocol: string | undefined } | undefined;
    /** The message of the failure that sets the exit code (-w %{errormsg}). */
    let errormsg = '';
    const fail = (code: number, line: string) => {
      say(line);
      exit = code;
      errormsg = line;
    };
    // --retry: curl's rules (retry.ts), loaded only when asked for.
    const retrier = req.retry ? new (await import('./retry.ts')).Retrier(req.retry) : undefined;
    const failOnError = req.fail || req.failWithBody;
    /** With -o, the heads -i shows, for the file (curl writes them there, not to stdout). */
    let heads = '';
    const printHead = (text: string) => {
      if (req.output) heads += text;
      else process.stdout.write(text);
    };
    /** While the body is read: what came of it, and what the head announced (a failure then is curl's 18). */
    let reading: { received: number; expected: number | undefined } | undefined;
    // One attempt a turn: the transfer again from the URL given, with --retry.
    for (;;) {
      // --max-time bounds each attempt (curl's, with --retry).
      const signal = req.maxTime !== undefined ? AbortSignal.timeout(req.maxTime) : undefined;
      /** Where this attempt's legs and handshakes start in the trace (R4, below). */
      const legsBefore = trace.legs.length;
      const handshakesBefore = trace.handshakes.length;
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
              ? await unusableCaFor(req, url)
              : undefined;
          if (unusableCa !== undefined) {
            fail(EXIT.caFile, unusableCa);
            break;
          }
          let res: Awaited<ReturnType<MultilegAgent['request']>>;
          try {
            res = await agent.request({
              origin: url.origin,
              path: `${url.pathname}${url.search}`,
              method: method as 'GET',
              headers,
              body: body ?? null,
              ...(signal ? { signal } : {}),
              ...(req.http1 ? { allowH2: false } : {}),
            } as Parameters<MultilegAgent['request']>[0]);
          } catch (err) {
            // No -u and no usable Kerberos ticket: curl shows the server's 401; so does the command,
            // sent once more without Negotiate, with the reason (kinit…) instead of the usual hint.
            if (credentials || cannotRun || !cannotRunHere(err)) throw err;
            cannotRun = err;
            earlier = agent.stats();
            await agent.destroy().catch(() => {});
            agent = new MultilegAgent({ ...req.agent, negotiate: false, trustedOrigins: (o) => trusted.trusts(o) });
            continue;
          }
          status = res.statusCode;
          const protocol = trace.lastDelivered?.response?.protocol;
          final = { headers: res.headers, protocol };
          // The responses the command receives itself, verbatim (the handshake's came through the trace).
          dump?.write(responseHead(protocol, res));
          const location = res.headers.location;
          if (req.location && REDIRECTS.has(status) && typeof location === 'string') {
            if (req.include && !req.json) printHead(responseHead(protocol, res));
            await res.body.dump();
            // Counted once followed: -w %{num_redirects} never exceeds --max-redirs (curl's).
            if (redirects >= req.maxRedirs) {
              fail(EXIT.redirects, `maximum (${req.maxRedirs}) redirects followed (--max-redirs)`);
              break;
            }
            redirects++;
            const next = new URL(location, url);
            // A Location's user:password@ is neither sent nor printed (-w %{url_effective}, --json).
            next.username = '';
            next.password = '';
            if (next.origin !== url.origin) {
              if (req.locationTrusted) trusted.add(next.origin);
              else {
                // CVE-2018-1000007: the caller's own Authorization and Cookie stay on the first origin too,
                // and so does a Proxy-Authorization they gave for the way there.
                delete headers.authorization;
                delete headers.cookie;
                delete headers['proxy-authorization'];
              }
            }
            // curl: a 303, or a 301/302 to a request with a body (or a POST), goes on without the body.
            if (status === 303 || ((status === 301 || status === 302) && (body !== undefined || method === 'POST'))) {
              // -X stays the method of every request (curl's), without the body.
              if (method !== 'HEAD' && !req.customMethod) method = 'GET';
              body = undefined;
              // The form type the command added for -d goes with the body (one given with -H stays).
              if (req.formType) delete headers['content-type'];
              delete headers['content-length'];
            }
            url = next;
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
              // Sent again: this answer is not output (curl writes it, then takes it back from an -o
              // file only: stdout would have it twice).
              await res.body.dump().catch(() => {});
              if (failOnError) fail(EXIT.httpError, `(22) HTTP ${status}`);
              break;
            }
          }
          if (req.include && !req.json && !(req.fail && status >= 400)) printHead(responseHead(protocol, res));
          const length = Number(res.headers['content-length']);
          const progress = {
            received: 0,
            expected: method !== 'HEAD' && Number.isSafeInteger(length) ? length : undefined,
          };
          reading = progress;
          const counter = new Transform({
            transform(chunk: Buffer, _enc, cb) {
              bytes += chunk.length;
              progress.received += chunk.length;
              cb(null, chunk);
            },
          });
          if ((req.head && !req.output) || req.json || (req.fail && status >= 400)) {
            await pipeline(res.body, counter, async (source) => {
              for await (const _ of source);
            });
          } else {
            wroteOutput = req.output !== undefined;
            const problem = await writeBody(res.body, counter, req.output, heads, stdout);
            heads = '';
            if (problem !== undefined) {
              fail(EXIT.write, problem);
              break;
            }
          }
          reading = undefined;
          const last = trace.lastDelivered;
          if (last) last.bodySize = bytes;
          if (status === 401 && cannotRun) say(`${forCli(cannotRun.message)} (${cannotRun.code})`);
          else if (status === 401)
            say(
              explain401({
                origin: url.origin,
                offered: challengeSchemes(res.headers, status),
                trusted: trusted.trusts(url.origin),
                hasPassword: credentials !== undefined,
                schemes: req.agent.schemes,
                handshakes: trace.handshakes,
              }),
            );
          else if (status === 407) {
            // A forwarding proxy's 407, shown as curl shows it (proxy.deliver407): why it stood.
            const proxy = await proxyFor(req, url);
            const sent = trace.lastDelivered?.request.headers.some(([name]) => name === 'proxy-authorization');
            if (proxy)
              say(
                explain407({
                  proxy,
                  offered: challengeSchemes(res.headers, status),
                  sent: sent === true,
                  unusable: trace.unanswered407.at(-1)?.unusable ?? [],
                  schemes: typeof req.agent.proxy === 'object' ? req.agent.proxy.schemes : undefined,
                }),
              );
          }
          if ((req.fail || req.failWithBody) && status >= 400) {
            fail(EXIT.httpError, `(22) HTTP ${status}`);
          }
          break;
        }
      } catch (err) {
        failure = describeFailure(err, { url, maxTime: req.maxTime, midBody: reading });
        fail(failure.exit, failure.message);
      }
      if (!retrier) break;
      const next = retryDecided
        ? retryNext
        : retrier.next({
            exit,
            status,
            errno: failure?.errno,
            // R4: an attempt that failed after its credentials went out, with no handshake of it
            // succeeding, is not sent again either: the server may have counted a wrong password
            // (a connection cut or a timeout right after the credentials' leg).
            refused:
              failure?.refused === true ||
              (failure !== undefined &&
                trace.legs.slice(legsBefore).some(carriesCredentials) &&
                !trace.handshakes.slice(handshakesBefore).some((h) => h.outcome !== 'failed')),
            failOnError,
            retryAfter: final?.headers['retry-after'],
          });
      if (!next) {
        if (retrier.notice) warn(retrier.notice);
        break;
      }
      warn(next.warning);
      // What an attempt cut short wrote to the -o file goes (curl truncates a regular file; stdout
      // cannot take it back).
      if (wroteOutput && req.output !== undefined) {
        try {
          const size = statSync(req.output);
          if (size.isFile() && size.size > 0) {
            if (req.verbose && !req.silent) process.stderr.write(`multileg: Note: Throwing away ${size.size} bytes\n`);
            truncateSync(req.output, 0);
          }
        } catch {}
      }
      await sleep(next.delayMs);
      // The transfer starts over from the URL given, as curl's does.
      url = req.url;
      method = req.method;
      body = req.body;
      headers = { ...req.headers };
      redirects = 0;
      status = 0;
      bytes = 0;
      exit = EXIT.ok;
      errormsg = '';
      final = undefined;
      heads = '';
      reading = undefined;
    }
    // This transfer's counts (curl's -w %{num_connects} is the transfer's new connections); `origins` is now's.
    const after = totals();
    const stats = {
      ...after,
      requests: after.requests - before.requests,
      sessions: after.sessions - before.sessions,
      handshakes: after.handshakes - before.handshakes,
      legs: after.legs - before.legs,
      failedHandshakes: after.failedHandshakes - before.failedHandshakes,
    };
    const timeTotal = (performance.now() - started) / 1000;
    if (req.json) {
      const report = {
        url: url.href,
        status,
        httpVersion: final?.protocol === 'h2' ? '2' : final ? '1.1' : null,
        redirects,
        exitCode: exit,
        timeTotal,
        legs: trace.legs.slice(firstLeg).map((l) => ({
          session: l.request.sessionId,
          method: l.request.method,
          url: l.request.method === 'CONNECT' ? l.request.path : new URL(l.request.path, l.request.origin).href,
          scheme: l.request.scheme ?? null,
          authId: l.request.authId,
          protocol: l.response?.protocol ?? l.request.protocol ?? null,
          status: l.response?.status ?? null,
          delivered: l.response?.delivered ?? false,
          ...(l.error ? { error: l.error.error } : {}),
        })),
        handshakes: trace.handshakes.slice(firstHandshake),
        stats,
      };
      process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    }
    if (req.writeOut !== undefined) {
      const { writeOut } = await import('./write-out.ts');
      const header = (name: string) => {
        const v = final?.headers[name];
        return (Array.isArray(v) ? v[0] : v) ?? '';
      };
      const location = header('location');
      let redirectUrl = '';
      if (REDIRECTS.has(status) && location) {
        try {
          const next = new URL(location, url);
          next.username = '';
          next.password = '';
          redirectUrl = next.href;
        } catch {}
      }
      const remote = remotes.get(url.origin);
      const parts = writeOut(req.writeOut, {
        http_code: String(status).padStart(3, '0'),
        response_code: String(status).padStart(3, '0'),
        time_total: timeTotal.toFixed(6),
        num_connects: String(stats.sessions),
        num_redirects: String(redirects),
        url_effective: url.href,
        http_version: final?.protocol === 'h2' ? '2' : final ? '1.1' : '0',
        size_download: String(bytes),
        exitcode: String(exit),
        errormsg,
        content_type: header('content-type'),
        redirect_url: redirectUrl,
        remote_ip: remote?.ip ?? '',
        remote_port: remote?.port ?? '',
        num_retries: String(retrier?.retries ?? 0),
      });
      for (const part of parts) (part.to === 'stderr' ? process.stderr : process.stdout).write(part.text);
    }
    return exit;
  }
}

process.exitCode = await main(process.argv.slice(2)).catch((err: unknown) => {
  // A bug of ours still ends in one line and exit 1, not a stack trace (MULTILEG_DEBUG=1 shows it).
  process.stderr.write(`multileg: unexpected error: ${(err as Error)?.message ?? String(err)}\n`);
  if (process.env.MULTILEG_DEBUG) process.stderr.write(`${(err as Error)?.stack}\n`);
  return EXIT.failure;
});
