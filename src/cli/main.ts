/**
 * `multileg`: a curl-like client for intranet services that want NTLM, Negotiate/Kerberos, Digest,
 * Basic or a client certificate, over HTTP/2 and HTTP/1.1. Exit codes (README "Command line"): 0
 * done, 1 a typed failure (the message names the fix), 2 bad usage, and curl's 5, 6, 7, 18, 22 (-f), 23
 * (-o cannot be written), 26 (a file a flag names cannot be read), 28, 35, 47, 52 (empty reply), 56, 58,
 * 60, 61 (--compressed: a body that does not decode), 77. Started through bin.ts, which checks the Node.js version first.
 *
 * This module is the command's composition: the arguments parsed, the credentials, the agent, each
 * URL's transfer (transfer.ts) and what is written after it (report.ts), then the exit code. The
 * modules it uses are given what they need and never reach back here.
 */
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { ConfigError } from '../errors.ts';
import { ProxyUrlError } from '../proxy/errors.ts';
import { CommandAgent } from './command-agent.ts';
import { credentialsFor, withProxyPassword } from './credentials.ts';
import { stateDir } from './dirs.ts';
import type { HeaderDump } from './dump-header.ts';
import { endOnSignals } from './exit.ts';
import { describeFailure, EXIT, forCli } from './explain.ts';
import { parseCliOrExit, program, shownArgv, UsageError } from './options.ts';
import { createDirsFor, fileProblem, isEpipe, Stdout, writeProblem } from './output.ts';
import { curlProxyEnvironment } from './proxy-env.ts';
import { RefusalFile } from './refusals.ts';
import { Remotes, report } from './report.ts';
import { Trace } from './trace.ts';
import { transfer } from './transfer.ts';
import { CliTrust } from './trust.ts';
import { keepWasmOnBaseline, restoreWasmTiering } from './wasm.ts';

/** How long the process may outlive the command once stdout and stderr are flushed (see the end). */
const EXIT_GRACE_MS = 200;

/** The run's state file, once made: its locks are taken away when a signal ends the command. */
let refusalFile: RefusalFile | undefined;

/** What the run exercised so far: see {@link exercised}. */
const ran = new Set<string>();

/**
 * What this run exercised, as names (the long options given; `doctor`; each handshake's scheme,
 * the proxy's apart and whether Kerberos fell back; each leg's target, protocol and status class),
 * each a stand-in for code it ran: the code cache is made again when a run exercised what the runs
 * that made it did not (code-cache.ts). Names only, never a value (no URL, user or file).
 */
export function exercised(): readonly string[] {
  return [...ran];
}

async function main(argv: string[]): Promise<number> {
  // SIGTERM (a container's stop: PID 1 has no default action), SIGINT, SIGHUP: locks released, then
  // the command dies by the signal, as curl does (exit.ts).
  endOnSignals(() => refusalFile?.releaseAll());
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
  // The proxy variables as curl reads them (the agent also reads HTTP_PROXY): no HTTP_PROXY ("httpoxy"),
  // and ALL_PROXY where the URL's scheme has none of its own. This process is the command's.
  curlProxyEnvironment(process.env);
  if (argv[0] === 'doctor') {
    ran.add('doctor');
    return (await import('./doctor.ts')).doctor(argv.slice(1));
  }
  const req = await parseCliOrExit(argv, 'multileg', cmd);
  if (typeof req === 'number') return req;
  for (const option of cmd.options)
    if (cmd.getOptionValueSource(option.attributeName()) === 'cli') ran.add(`-${option.name()}`);
  // Loaded once a request will be made: usage errors start without them. Of undici, only what a
  // request uses (undici-core.ts).
  (await import('./undici-core.ts')).useUndiciCore();
  const { MultilegAgent } = await import('../agent.ts');
  /**
   * -v: the trace, once made, may hold back a response's line until its fate is known (trace.ts):
   * any other line on stderr comes after it.
   */
  let tracing: Trace | undefined;
  const say = (line: string) => {
    tracing?.flush();
    if (!req.silent || req.showError) process.stderr.write(`multileg: ${line}\n`);
  };
  /** curl's warnings: -s hides them, -S does not bring them back. */
  const warn = (line: string) => {
    tracing?.flush();
    if (!req.silent) process.stderr.write(`multileg: Warning: ${line}\n`);
  };
  // A copied browser command's own Authorization is the request's identity (S6): the credentials
  // of -u never go with it, and the 401 it gets would not say why. Said before a password is asked.
  if (req.authorizationReplaces !== undefined)
    warn(`-H 'Authorization: …' replaces ${req.authorizationReplaces}: its credentials are not used; drop the header`);
  // Likewise a Host header naming another host: the credentials never go where it sends the request.
  if (req.hostReplaces !== undefined)
    warn(
      `-H 'Host: …' names another host than the URL: the credentials of ${req.hostReplaces} are not sent there; drop the header, or use --resolve or --connect-to to reach another address under the URL's name`,
    );
  let credentials: Awaited<ReturnType<typeof credentialsFor>>;
  /** Credentials from a netrc file: whether it gives another host others (they never go there). */
  let netrcNamesOther: ((host: string) => boolean) | undefined;
  let agentOptions = req.agent;
  try {
    credentials = await credentialsFor(req, (found) => {
      netrcNamesOther = found.namesOther;
    });
    agentOptions = await withProxyPassword(req);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    say(err.message);
    return err instanceof UsageError ? err.exit : EXIT.usage;
  }
  const write = (line: string) => process.stderr.write(`${line}\n`);
  const verbose = req.verbose
    ? (line: string) => {
        tracing?.flush();
        write(line);
      }
    : undefined;
  // -b FILE, -c: the cookie engine (cookies.ts, with tough-cookie), loaded only for them; before
  // the first request (wasm.ts: modules loaded after its V8 flag lose their code cache).
  let cookies: import('./cookies.ts').CookieEngine | undefined;
  if (req.cookies) {
    cookies = new (await import('./cookies.ts')).CookieEngine(verbose);
    for (const file of req.cookies.files) {
      const { loaded, warning } = cookies.load(file, req.cookies.junkSession);
      if (warning) warn(warning);
      verbose?.(`* Loaded ${loaded} cookie(s) from ${file === '-' ? 'stdin' : file}`);
    }
  }
  // -v: the --resolve entries as curl loads them, then each connection's address (curl's lines).
  let connected: import('./connections.ts').ConnectedLines | undefined;
  if (verbose) {
    for (const line of req.routes?.added() ?? []) verbose(line);
    const { ProxyResolver } = await import('../proxy/options.ts');
    const o = agentOptions;
    let proxies: InstanceType<typeof ProxyResolver> | undefined;
    try {
      proxies = new ProxyResolver(o.proxy, process.env, o.negotiate, o.connectTo);
    } catch (err) {
      // A proxy URL that cannot be used: the agent's construction below says so (exit 5 or 7).
      if (!(err instanceof ConfigError)) throw err;
    }
    if (proxies) {
      const resolver = proxies;
      connected = new (await import('./connections.ts')).ConnectedLines(verbose, (origin) => {
        let route: ReturnType<typeof resolver.route>;
        try {
          route = resolver.route(origin);
        } catch (err) {
          // A proxy variable that is no usable URL: the request fails with it, nothing connects.
          if (err instanceof ProxyUrlError) return undefined;
          throw err;
        }
        return route && { origin: route.proxy.origin, hostname: route.proxy.hostname, kind: route.kind };
      });
    }
  }
  // curl's rule: credentials go to the URL's origin; --trust and --location-trusted add others.
  // Each transfer has its own (set when it starts): a URL's origin is trusted in its own transfer
  // only, never because another URL of the command names it. Cookies go by their own rules (the jar's).
  // R4: a password refused by an earlier run is held back here too (account lockout). The file is
  // read only when a password would be sent where it is not proved in this run; its directory is
  // found then too: a container's UID without a home runs without it.
  // Its lines (a wait for another run's lock) come while a 401 is held for it: they say nothing of
  // that 401's fate, so -v writes it as held, not intermediate (trace.ts aside).
  refusalFile = new RefusalFile({
    dir: () => stateDir(),
    forget: req.forgetRefusals,
    warn: (line) => {
      tracing?.aside();
      say(`Warning: ${line}`);
    },
    verbose:
      verbose &&
      ((line) => {
        tracing?.aside();
        verbose(line);
      }),
  });
  let command: CommandAgent;
  try {
    command = new CommandAgent(
      MultilegAgent,
      cookies ? { ...agentOptions, cookies } : agentOptions,
      credentials,
      new CliTrust(req.url.origin, req.trust, netrcNamesOther),
      refusalFile,
    );
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    if (err.option === 'clientCertificate') {
      say(forCli(err.message.replace(/^clientCertificate: /, '--cert/--key: ')));
      return EXIT.clientCertificate;
    }
    say(describeFailure(err, req).message);
    // curl parses the proxy URL as a transfer starts: "Unsupported proxy syntax" is its 5,
    // "Unsupported proxy scheme" (SOCKS too: the agent speaks none) its 7, not bad usage.
    if (err instanceof ProxyUrlError) return err.problem === 'syntax' ? EXIT.resolveProxy : EXIT.connect;
    return EXIT.usage;
  }
  // -D and --har: opened (emptied) before the first request, as curl opens -D: a file that cannot
  // be made fails before a request (a POST) is sent, not after it, and is curl's 23.
  let dump: HeaderDump | undefined;
  let har: number | undefined;
  let opening: [option: string, path: string] | undefined;
  try {
    if (req.dumpHeader !== undefined) {
      opening = ['-D', req.dumpHeader];
      dump = new (await import('./dump-header.ts')).HeaderDump(req.dumpHeader, req.createDirs);
    }
    if (req.har !== undefined) {
      opening = ['--har', req.har];
      if (req.createDirs) createDirsFor(req.har);
      har = openSync(req.har, 'w');
    }
  } catch (err) {
    if (!opening) throw err;
    say(fileProblem(opening[0], opening[1], err as NodeJS.ErrnoException, req.createDirs));
    dump?.close();
    await command.destroy();
    return EXIT.write;
  }
  // The heads -D and -i show, one sequence for both (heads.ts): the handshake's from the trace.
  const heads = dump || (req.include && !req.json) ? new (await import('./heads.ts')).ResponseHeads(dump) : undefined;
  const trace = new Trace(
    verbose && write,
    heads ? (leg) => heads.leg(leg) : undefined,
    heads ? () => heads.drop() : undefined,
  );
  tracing = trace;
  // -w %{remote_ip} / %{remote_port}: the address each origin's last connection reached.
  const remotes = req.writeOut !== undefined ? new Remotes() : undefined;
  // -w's phase times and head sizes: only for a format naming one (timings.ts subscribes to the
  // channels they come from; a run without them neither loads nor listens).
  let timings: import('./timings.ts').Timings | undefined;
  if (
    req.writeOut !== undefined &&
    /%\{(time_(namelookup|connect|appconnect|pretransfer)|size_(header|request))\}/.test(req.writeOut)
  )
    timings = new (await import('./timings.ts')).Timings();
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
  /** Why the -c jar could not be written. */
  let jarError: NodeJS.ErrnoException | undefined;
  try {
    for (const [urlnum, each] of req.transfers.entries()) {
      const { url } = each;
      command.trusted = new CliTrust(url.origin, req.trust, netrcNamesOther);
      // Its own URL and -o, and its own method and body (-T pairs with the URLs in order).
      const transferReq = { ...req, ...each };
      let connects = 0;
      // -w counts each transfer's last attempt (curl's, with --retry).
      const attempt = () => {
        connects = remotes?.connects ?? 0;
        timings?.reset();
      };
      attempt();
      const outcome = await transfer(transferReq, { command, credentials, trace, heads, stdout, say, warn, attempt });
      trace.flush();
      await report(transferReq, outcome, remotes, connects, urlnum, timings);
      exit = outcome.exit;
      if (exit !== EXIT.ok && req.failEarly) break;
    }
    const stats = command.totals();
    trace.flush();
    if (req.verbose)
      process.stderr.write(
        `* ${stats.sessions} session(s), ${stats.handshakes} handshake(s), ${stats.legs} leg(s) with credentials${
          // The proxy's apart (H5): -x with -U, --proxy-ntlm, --proxy-negotiate.
          stats.proxyHandshakes > 0
            ? `; proxy: ${stats.proxyHandshakes} handshake(s), ${stats.proxyLegs} leg(s) with credentials`
            : ''
        }\n`,
      );
  } finally {
    // Also after an error of ours (exit 1 below): no agent, subscription or -D file left open.
    trace.stop();
    for (const h of trace.handshakes)
      ran.add(`auth:${h.scheme}${h.proxy ? '@proxy' : ''}${h.fallbackReason === undefined ? '' : '+fallback'}`);
    for (const { request, response } of trace.legs)
      ran.add(
        `${request.target}:${request.protocol ?? response?.protocol ?? 'none'}:${response ? `${Math.floor(response.status / 100)}xx` : 'error'}`,
      );
    await command.destroy();
    connected?.stop();
    remotes?.stop();
    timings?.stop();
    dump?.close();
    // -c: every cookie, at the end, whatever came of the transfers (curl's).
    if (cookies && req.cookies?.jar !== undefined) {
      try {
        if (req.createDirs && req.cookies.jar !== '-') createDirsFor(req.cookies.jar);
        (await import('./cookies.ts')).writeJar(req.cookies.jar, cookies.netscape());
      } catch (err) {
        jarError = err as NodeJS.ErrnoException;
      }
    }
  }
  // curl only says so with -v and exits 0: a jar silently not saved loses the session, so it is said, and 23 (a file that cannot be written).
  if (jarError) {
    say(`${fileProblem('-c', req.cookies?.jar ?? '', jarError, req.createDirs)}; the cookies were not saved`);
    if (exit === EXIT.ok) exit = EXIT.write;
  }
  if (dump?.error && exit === EXIT.ok) {
    say(`-D ${req.dumpHeader}: ${writeProblem(dump.error)}`);
    exit = EXIT.write;
  }
  if (har !== undefined && req.har !== undefined) {
    try {
      const { toHar } = await import('./har.ts'); // only for --har, as write-out.ts for -w
      writeFileSync(har, `${JSON.stringify(toHar(trace.legs), null, 2)}\n`);
    } catch (err) {
      say(`--har ${req.har}: ${writeProblem(err as NodeJS.ErrnoException)}`);
      if (exit === EXIT.ok) exit = EXIT.write;
    } finally {
      closeSync(har);
    }
  }
  // A head (-I), a report (--json) or -w written to stdout that failed: curl's 23 too; a reader
  // gone (EPIPE) only where a head was lost, as curl ignores -w's. (Write errors arrive after the
  // write returns.)
  await new Promise((resolve) => setImmediate(resolve));
  const lost = stdout.error ?? stdout.headLost;
  if (lost && exit === EXIT.ok) {
    say(`stdout: ${writeProblem(lost)}`);
    exit = EXIT.write;
  }
  return exit;
}

/**
 * Runs the command line of this process and sets its exit code; resolves once stdout and stderr
 * are flushed (bin.ts starts it, and code-cache.ts may then save what V8 compiled).
 */
export async function runCommand(): Promise<number> {
  const code = await main(process.argv.slice(2)).catch((err: unknown) => {
    // A bug of ours still ends in one line and exit 1, not a stack trace (MULTILEG_DEBUG=1 shows it).
    process.stderr.write(`multileg: unexpected error: ${(err as Error)?.message ?? String(err)}\n`);
    if (process.env.MULTILEG_DEBUG) process.stderr.write(`${(err as Error)?.stack}\n`);
    return EXIT.failure;
  });
  process.exitCode = code;
  // V8's flags as the process started: a code cache made from here on (code-cache.ts) is checked
  // against the flags of the run that reads it, and is rejected if they differ.
  restoreWasmTiering();
  // All of the command's work is done and its files written (-o, -D, -c). What may still hold the
  // process is a GSS-API call on a worker thread that waits for a KDC that never answers: the thread
  // returns only when MIT gives up (27 s measured, review r43), long after -m's bound, and Node's exit
  // waits for it. Once stdout and stderr are flushed the command ends, as curl's -m bounds the whole
  // command; a process that nothing holds has exited long before the timer (which holds nothing).
  await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
  setTimeout(async () => {
    const code = Number(process.exitCode ?? 0);
    if (!(await (await import('./exit.ts')).exitNow(code))) process.exit(code);
  }, EXIT_GRACE_MS).unref();
  return code;
}

/** Resolves once what was written to `stream` so far has been handed on (or the stream failed). */
function flushed(stream: NodeJS.WriteStream): Promise<void> {
  return new Promise((resolve) => {
    if (stream.destroyed || !stream.writable) resolve();
    else stream.write('', () => resolve());
  });
}
