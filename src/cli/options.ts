/**
 * The command line: curl's flags where curl has one, parsed into a {@link CliRequest}. Pure apart
 * from reading the files the flags name; credentials that need a prompt or stdin are resolved later
 * (credentials.ts).
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { closeSync, existsSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { getCACertificates } from 'node:tls';
import type * as Commander from 'commander';
import { ConfigError, redactUserinfo } from '../errors.ts';
import {
  type ClientCertificate,
  DEFAULT_LIMITS,
  type MultilegAgentOptions,
  SCHEME_NAMES,
  type SchemeName,
} from '../options.ts';
import type { ProxyOptions } from '../proxy/options.ts';
import { hostElsewhere } from '../trust/host-header.ts';
import { EXIT } from './explain.ts';
import type { RetryOptions } from './retry.ts';
import { Routes } from './routes.ts';
import { parseTrust } from './trust.ts';
import { versionText } from './version.ts';

// commander through its CommonJS entry: the ESM one is a wrapper around it that Node must also scan
// for export names (cjs-module-lexer), ~1 ms of the command's start for the very same objects.
const { Command, CommanderError, InvalidArgumentError, Option } = createRequire(import.meta.url)(
  'commander',
) as typeof Commander;

/** `-u user[:password]` before the password is known. */
export interface UserArg {
  readonly username: string;
  /** undefined: ask (MULTILEG_PASSWORD, --password-stdin, a TTY prompt). */
  readonly password: string | undefined;
}

/**
 * One URL's transfer: where its body goes (-o), and what it sends — the command's request, but -T
 * pairs with the URLs in order as -o does (curl's), so each URL has its own method and body.
 */
export interface Transfer {
  /** The URL, with -G's query and, for -T to a URL ending in `/`, the file's name. */
  readonly url: URL;
  readonly output: string | undefined;
  readonly method: string;
  readonly body: Buffer | undefined;
  /** The body is a -T file: a 301 or 302 sends it again, as curl re-sends a PUT (only a POST turns GET). */
  readonly upload: boolean;
}

/** What one `multileg` invocation asks for: the agent's options and the request to send. */
export interface CliRequest {
  /** The first URL (the one `doctor` checks); {@link CliRequest.transfers} has them all. */
  readonly url: URL;
  /**
   * The URLs in the order given, each with its -o (curl's pairing: the first -o for the first URL;
   * undefined: stdout). One transfer after another, through one agent.
   */
  readonly transfers: ReadonlyArray<Transfer>;
  /** More -o than URLs: curl's warning, the extra ones unused. */
  readonly unusedOutputs: boolean;
  /**
   * The first URL is the bare word `help` (`multileg help`, `multileg help doctor`, `multileg doctor
   * help`): the --help meant (`multileg --help`, `multileg doctor --help`), which the error for a
   * host `help` that does not resolve names. curl too reads the word as a host; only the hint is ours.
   */
  readonly helpMeant: string | undefined;
  /**
   * The flag whose credentials a `-H 'Authorization: …'` keeps from every request (`-u`, the URL's
   * user:password, `--netrc`, `--negotiate`): the caller's own header is the request's identity (S6),
   * so they are never used. Undefined without such a header, or without such a flag.
   */
  readonly authorizationReplaces: string | undefined;
  /**
   * The flag whose credentials a `-H 'Host: …'` naming another host than a URL's keeps from that
   * request: the library sends no credentials where the Host header sends a request (S1).
   */
  readonly hostReplaces: string | undefined;
  /** --fail-early: stop at the first transfer that fails (else the last one's result is the exit code). */
  readonly failEarly: boolean;
  readonly method: string;
  /** -X: the method of every request, redirects' included (curl's). */
  readonly customMethod: boolean;
  readonly headers: Record<string, string | string[]>;
  readonly body: Buffer | undefined;
  /** The first transfer's (see {@link Transfer.upload}). */
  readonly upload: boolean;
  /**
   * The command added the Content-Type of the body: `application/x-www-form-urlencoded` for -d
   * (curl's default), `multipart/form-data` for -F; it goes with the body when a redirect drops it.
   */
  readonly formType: boolean;
  /** `-e URL;auto`: each -L redirect sends the URL it came from as Referer (curl's). */
  readonly autoReferer: boolean;
  readonly http1: boolean;
  /**
   * --compressed: the final response's body is decoded by its Content-Encoding (decode.ts, curl's
   * rules); the request asks for what can be decoded (Accept-Encoding, unless a -H names it).
   */
  readonly compressed: boolean;
  /** -i: print status line and headers; -I: the same, for a HEAD request, without body. */
  readonly include: boolean;
  readonly head: boolean;
  readonly verbose: boolean;
  /** -s: no error messages (unless -S). */
  readonly silent: boolean;
  readonly showError: boolean;
  /** -f: on HTTP >= 400 no head (-i) nor body, exit 22. */
  readonly fail: boolean;
  /** --fail-with-body: on HTTP >= 400 exit 22, head and body shown (curl 8: it wins over -f). */
  readonly failWithBody: boolean;
  /** The first transfer's -o (each transfer has its own in {@link CliRequest.transfers}). */
  readonly output: string | undefined;
  /** -D: where the head of every response received goes (`-` stdout, `%` stderr, else a file). */
  readonly dumpHeader: string | undefined;
  /**
   * --create-dirs: -o, -D, -c and --har make the missing directories of their file's path (else a missing one
   * is 23). -O's file is in the current folder: nothing to make.
   */
  readonly createDirs: boolean;
  readonly writeOut: string | undefined;
  readonly json: boolean;
  readonly har: string | undefined;
  readonly location: boolean;
  readonly locationTrusted: boolean;
  readonly maxRedirs: number;
  /** --post301, --post302, --post303: the redirects after which a -d/-F POST stays a POST with its body (curl's). */
  readonly keepPost: ReadonlySet<301 | 302 | 303>;
  /** Origins and `*.` host patterns trusted with credentials besides the URL's own (--trust). */
  readonly trust: readonly string[];
  /** --max-time in ms: each attempt's bound (curl's, with --retry). */
  readonly maxTime: number | undefined;
  /** --retry N (N > 0) and its companions; undefined: one attempt. */
  readonly retry: RetryOptions | undefined;
  readonly user: UserArg | undefined;
  readonly passwordStdin: boolean;
  /** --forget-refusals: a password refused lately (the state file's record) is sent now, not held back (R4). */
  readonly forgetRefusals: boolean;
  /**
   * --netrc, --netrc-file FILE, --netrc-optional: the file (undefined: $NETRC, else ~/.netrc), and
   * whether a missing one is fine (--netrc-optional); `login`: the user the URL names without a
   * password (`https://bob@host/`), whose password the file's entry for that login gives, as curl's.
   * undefined: no netrc.
   */
  readonly netrc:
    | { readonly file: string | undefined; readonly optional: boolean; readonly login?: string | undefined }
    | undefined;
  /**
   * Why the --cacert file, which is there, cannot be used: curl's 77 once a TLS connection needs it
   * (an https:// URL or redirect, an https:// proxy), nothing for plain http:// (curl ignores it there).
   */
  readonly unusableCa: string | undefined;
  /** The --cacert file given (a certificate its CAs do not vouch for: the file is the thing to fix). */
  readonly cacert: string | undefined;
  /** The same for --proxy-cacert: 77 once an https:// proxy is on the way (not with --proxy-insecure). */
  readonly unusableProxyCa: string | undefined;
  /**
   * The cookie engine (curl's), on with `-b FILE` or `-c FILE`, else undefined: the -b files to
   * load in order (`-` stdin; one not there is empty), the -c file to write at the end (`-`
   * stdout), and -j (leave out the session cookies of the -b files). `-b NAME=VALUE` is a header of
   * {@link CliRequest.headers}, not this.
   */
  readonly cookies:
    | { readonly files: readonly string[]; readonly jar: string | undefined; readonly junkSession: boolean }
    | undefined;
  /** The agent's options, without credentials and trustedOrigins (main adds those). */
  readonly agent: MultilegAgentOptions;
  /**
   * `-U user` without a password (curl's): the proxy user whose password is asked for on the
   * terminal before the first request (credentials.ts withProxyPassword).
   */
  readonly proxyUserToAsk: string | undefined;
  /** --resolve and --connect-to (the agent's `connectTo` is theirs), or undefined without either. */
  readonly routes: Routes | undefined;
}

const positiveInt = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive integer');
  return n;
};
/** curl's --max-redirs: -1 is no limit. */
const redirectLimit = (v: string) => {
  const n = Number(v);
  if (n === -1) return Number.POSITIVE_INFINITY;
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a whole number, or -1 for no limit');
  return n;
};
/** curl's timeouts are in seconds, decimals allowed. */
const seconds = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('expected seconds (e.g. 2.5)');
  return Math.ceil(n * 1000);
};
/** --retry-delay / --retry-max-time: seconds, decimals allowed, 0 allowed (curl's "the default"), in ms. */
const secondsOrZero = (v: string) => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 0)
    throw new InvalidArgumentError('expected seconds (e.g. 2.5, or 0)');
  return Math.round(n * 1000);
};
/** --retry: a whole number, 0 included (no retries, curl's default). */
const wholeNumber = (v: string) => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isSafeInteger(n) || n < 0)
    throw new InvalidArgumentError('expected a whole number (e.g. 3)');
  return n;
};
// No default ([]): commander would print `(default: [])` in --help; absent means none given.
const collect = (v: string, acc: string[] = []) => [...acc, v];

/** `name`: the command its usage errors name (`multileg doctor` for doctor's, whose --help is its own). */
export function program(name = 'multileg'): Commander.Command {
  return (
    new Command('multileg')
      .description(
        'curl-like HTTP client with NTLM, Negotiate/Kerberos, Digest, Basic and client certificates over HTTP/2 and HTTP/1.1\n' +
          '(`multileg doctor URL` checks a setup: Node, kerberos, ticket, SPN, clock, schemes, proxy, TLS)',
      )
      .argument(
        '<url...>',
        'the URLs to request, one after another over the same connections (no scheme means https://)',
      )
      .option(
        '--url <url>',
        'a URL to request, as one given without a flag, in its place among them (repeatable)',
        collect,
      )
      .option(
        '-K, --config <file>',
        'read options from this file as curl does, one a line: `user = "DOMAIN\\\\user:password"`, `-H "Name: value"`, `url = URL` (-: stdin); they apply where -K stands; keeps passwords off the command line (repeatable)',
        collect,
      )
      .option('-X, --request <method>', 'request method')
      .option(
        '-H, --header <header>',
        'extra request header "Name: value" (repeatable); a copied NTLM AUTHENTICATE in Authorization or Proxy-Authorization is not sent: give -u, -U',
        collect,
      )
      .option(
        '-d, --data <data>',
        'request body, joined with & when repeated; @file reads a file without its line breaks, @- stdin (implies POST)',
        collect,
      )
      .option('--data-binary <data>', 'request body as given; @file reads a file as it is, @- stdin', collect)
      .option('--data-raw <data>', 'request body as given, @ included', collect)
      .option(
        '--data-urlencode <data>',
        'request body piece URL-encoded, as curl: content, =content, name=content, @file, name@file (@-: stdin); joined with the -d data by &',
        collect,
      )
      .option('-G, --get', 'put the -d data in the URL query (joined with &) and send a GET (HEAD with -I)')
      .option(
        '-F, --form <name=content>',
        'multipart/form-data field (implies POST): name=value, name=@file (a file upload), name=<file (its content as the value); ;type=… and ;filename=… after it (repeatable: one form)',
        collect,
      )
      .option(
        '-T, --upload-file <file>',
        'PUT the file (-: stdin), held in memory; a URL ending in / gets the file name appended (one per URL, in order)',
        collect,
      )
      .option('-A, --user-agent <name>', 'User-Agent header to send')
      .option('-e, --referer <URL>', 'Referer header to send; URL;auto also sends the previous URL on each -L redirect')
      .option(
        '-u, --user <user[:password]>',
        'credentials: DOMAIN\\user:password. Without a password: MULTILEG_PASSWORD, --password-stdin, or a prompt on a terminal. "-u :" uses the Kerberos ticket only',
      )
      .option('--password-stdin', 'read the password of -u from the first line of stdin')
      .option(
        '--forget-refusals',
        'send a password refused lately now, not after the wait that keeps a wrong one from locking the account',
      )
      .option('-n, --netrc', 'take credentials for the host from ~/.netrc (or the file $NETRC names)')
      .option('--netrc-file <file>', 'take credentials for the host from this netrc file')
      .option('--netrc-optional', 'as --netrc, but a missing netrc file is no error')
      .option('--schemes <list>', `schemes to use, strongest first (of ${SCHEME_NAMES.join(', ')})`)
      .option('--negotiate', 'use Negotiate (Kerberos/SPNEGO) only')
      .option('--ntlm', 'use NTLM only')
      .option('--digest', 'use Digest only')
      .option('--basic', 'use Basic only')
      .option('--anyauth', 'the strongest scheme the server offers (the default)')
      .option('--spn <spn>', 'Kerberos service principal (default HTTP@host)')
      .option('--principal <name>', 'Kerberos client principal (user@REALM) instead of the default ticket')
      .option('--canonicalize-host', 'build the SPN from the canonical DNS name of the host (CNAMEs)')
      .option('--delegate', 'allow Kerberos credential delegation')
      .option(
        '--no-mutual-auth',
        'accept a server that sends no final Kerberos token (do not require mutual authentication)',
      )
      .option(
        '--ccache <name>',
        'Kerberos credential cache for this run (e.g. FILE:/tmp/krb5cc_svc), instead of KRB5CCNAME',
      )
      .option(
        '--keytab <file>',
        'client keytab: get Kerberos tickets from it (with --principal for a keytab of several)',
      )
      .option('--cacert <file>', 'CA certificate(s) to trust (PEM)')
      .option('--ca-native', "also trust the operating system's certificate store (corporate CAs)")
      .option('-k, --insecure', 'do not verify the server certificate')
      .option('--cert <file[:passphrase]>', 'client certificate (PEM or DER; with its key when --key is not given)')
      .option('--key <file>', 'private key (PEM or DER) of --cert')
      .option('--pass <phrase>', 'passphrase of an encrypted key')
      .option(
        '-x, --proxy <url>',
        'proxy (http://host:port); default https_proxy / HTTPS_PROXY for https:// URLs, http_proxy for http:// ones, else ALL_PROXY; "" for none; one that is not a URL exits 5, another scheme than http(s) (socks5://) 7, as curl',
      )
      .option(
        '--proxy-cacert <file>',
        "CA certificate(s) to trust for an https:// proxy (PEM; --cacert is the server's)",
      )
      .option('--proxy-ca-native', "also trust the operating system's certificate store for an https:// proxy")
      .option('--proxy-insecure', "do not verify an https:// proxy's certificate")
      .option(
        '-U, --proxy-user <user[:password]>',
        'credentials for the proxy only (no password: asked on a terminal); "-U :" uses its Kerberos ticket',
      )
      .option('--proxy-negotiate', 'use Negotiate only towards the proxy')
      .option('--proxy-ntlm', 'use NTLM only towards the proxy')
      .option('--proxy-digest', 'use Digest only towards the proxy')
      .option('--proxy-basic', 'use Basic only towards the proxy')
      .option('--proxy-anyauth', 'the strongest scheme the proxy offers (the default)')
      .option('--proxy-spn <spn>', "the proxy's Kerberos service principal (default HTTP@ the proxy's host)")
      .option('--proxy-service-name <name>', "service part of the proxy's default SPN (default HTTP), as curl")
      .option('--proxy-canonicalize-host', "build the proxy's SPN from the canonical DNS name of its host (CNAMEs)")
      .option('--noproxy <hosts>', 'hosts not to proxy (NO_PROXY syntax); "*" disables the proxy')
      .option(
        '--resolve <host:port:addr>',
        'connect to this address for host:port instead of what DNS says (the URL keeps its name for TLS, Host, cookies and the Kerberos SPN); [+]host:port:addr[,addr]... as curl, * as host: any, -host:port removes one (repeatable)',
        collect,
      )
      .option(
        '--connect-to <h1:p1:h2:p2>',
        'for requests to host h1 port p1 connect to host h2 port p2 instead (an empty part: any host or port, or the same); the first that matches wins (repeatable)',
        collect,
      )
      .option('-L, --location', 'follow redirects; credentials stay on the URL origin and --trust origins')
      .option('--location-trusted', 'follow redirects and send credentials to every origin they lead to')
      .option('--post301', 'with -L, a POST stays a POST, with its body, after a 301')
      .option('--post302', 'with -L, a POST stays a POST, with its body, after a 302')
      .option('--post303', 'with -L, a POST stays a POST, with its body, after a 303')
      .addOption(
        new Option('--max-redirs <n>', 'maximum redirects with -L (-1: no limit)').argParser(redirectLimit).default(50),
      )
      .option(
        '--trust <origin>',
        'also send credentials to this origin, or hosts like https://*.corp.example.com (repeatable)',
        collect,
      )
      .option(
        '-b, --cookie <data|file>',
        'send cookies: "NAME=VAL; NAME2=VAL2" as given, or (no "=") load them from a file (Netscape format or Set-Cookie lines; "-": stdin; one not there is empty), which turns the cookie engine on: cookies set by responses go with later requests and redirects of the command (repeatable)',
        collect,
      )
      .option(
        '-c, --cookie-jar <file>',
        'turn the cookie engine on and write every cookie to this file at the end (Netscape format, mode 0600; "-": stdout)',
      )
      .option('-j, --junk-session-cookies', 'leave out the session cookies of the -b files (start a new session)')
      .option('-g, --globoff', 'send {} and [] in a URL as they are (multileg has no URL globbing)')
      .option('-4, --ipv4', 'resolve names to IPv4 addresses only (the last of -4 and -6 wins)')
      .option('-6, --ipv6', 'resolve names to IPv6 addresses only (the last of -4 and -6 wins)')
      .option('--http1.1', 'use HTTP/1.1 only')
      .option('--http2', 'use HTTP/2 where the server offers it, the default (the last of --http1.1 and --http2 wins)')
      .option('--no-progress-meter', 'accepted, as curl: multileg shows no progress meter')
      .option(
        '--compressed',
        'ask for a compressed response (Accept-Encoding: deflate, gzip, br, zstd) and write its body decoded',
      )
      .option('-i, --include', "print each response's status line and headers (a handshake's 401s too), then the body")
      .option('-I, --head', 'send HEAD and print the status line and headers only')
      .option('-v, --verbose', 'show each leg and handshake on stderr (never secrets)')
      .option('-s, --silent', 'no error messages')
      .option('-S, --show-error', 'with -s, still show error messages')
      .option('-f, --fail', 'on HTTP >= 400: no body, exit 22')
      .option('--fail-early', 'with several URLs, stop at the first that fails (else the last one sets the exit code)')
      .option('--fail-with-body', 'on HTTP >= 400: exit 22, the body still shown (wins over -f)')
      .option('-o, --output <file>', 'write the body to a file; repeated, the first -o for the first URL, …', collect)
      .option(
        '-O, --remote-name',
        "write the body to a file named as the URL's last path segment, here; one per URL, as -o",
      )
      .option('--remote-name-all', '-O for every URL that has no -o or -O of its own')
      .option('--create-dirs', "with -o, -D, -c and --har: create the missing directories of the file's path")
      .option(
        '-D, --dump-header <file>',
        'write every response\'s headers, a handshake\'s 401s too, to a file ("-": stdout, "%": stderr)',
      )
      .option(
        '-w, --write-out <format>',
        'print after the transfer: %{http_code} %{time_total} %{num_connects} …; @file reads the format from a file',
      )
      .option(
        '--json',
        'print the outcome (status, error, reason, legs, handshakes, stats) as JSON instead of the body on stdout (-o still writes it); with doctor, its checks (url, ok, failed, checks: name, ok, verdict, detail, fix)',
      )
      .option('--har <file>', 'write every leg to a HAR 1.2 file (tokens redacted)')
      .addOption(new Option('--connect-timeout <seconds>', 'maximum time to connect').argParser(seconds))
      .addOption(new Option('-m, --max-time <seconds>', 'maximum time for the whole transfer').argParser(seconds))
      .addOption(
        new Option(
          '--retry <num>',
          'retry a transient failure (a timeout, a host or proxy name not resolved, HTTP 408, 429, 500, 502, 503, 504, 522, 524) this many times. Never after refused credentials (a 401 or 407, an authentication error): that could lock the account',
        ).argParser(wholeNumber),
      )
      .addOption(
        new Option('--retry-delay <seconds>', 'wait this long before each retry (default: 1 s, doubling)').argParser(
          secondsOrZero,
        ),
      )
      .addOption(
        new Option('--retry-max-time <seconds>', 'no retry once this long has passed').argParser(secondsOrZero),
      )
      .option('--retry-all-errors', 'with --retry, retry any failure but refused credentials')
      .option('--retry-connrefused', 'with --retry, a refused connection is transient too')
      .addOption(
        new Option('--max-legs <n>', `maximum legs per handshake (default ${DEFAULT_LIMITS.maxLegs})`).argParser(
          positiveInt,
        ),
      )
      .addOption(
        new Option(
          '--timeout <ms>',
          `handshake timeout in milliseconds, unlike curl's seconds (default ${DEFAULT_LIMITS.handshakeTimeout})`,
        ).argParser(positiveInt),
      )
      // Not commander's .version(text): the text (four package.json files found and read) would be
      // made for every run; it is made only when asked for.
      .option('-V, --version', 'print the versions of multileg, undici, Node and the Kerberos backends')
      .on('option:version', () => {
        const text = versionText();
        process.stdout.write(`${text}\n`);
        throw new CommanderError(0, 'commander.version', text);
      })
      // Usage errors in one line, as the command's own: "multileg: unknown option '--x' (…)".
      .configureOutput({
        outputError: (message, write) =>
          write(
            `${name}: ${unsupportedCurlOption(message, name)
              .replace(/^error: /, '')
              .trimEnd()
              .replace(/\s*\n\s*/g, ' ')} (${name} --help lists the options)\n`,
          ),
      })
      .exitOverride()
  );
}

/**
 * curl's --trace and --trace-ascii (a dump of every byte, secrets too) are not multileg's: commander
 * would suggest a flag by its spelling (`--trace`: "Did you mean --ccache?"); a curl user is told
 * what shows the exchange here instead.
 */
function unsupportedCurlOption(message: string, name: string): string {
  const trace = /^error: unknown option '(--trace(?:-ascii)?)(?:=[^']*)?'/.exec(message);
  if (!trace) return message;
  // doctor shows its requests with -v too, but writes no --har (its checks are its output).
  return `error: ${trace[1]} is not supported: -v shows each leg's request and response (credentials redacted)${name === 'multileg' ? ', --har FILE writes them all' : ''}`;
}

/** Percent-decoded, as curl decodes URL userinfo; text that is not valid percent-encoding stays as it is. */
function percentDecoded(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/**
 * A URL as curl reads it: no scheme means https. Its `user:password@` is taken out as credentials
 * (curl's way; `-u` wins over it), so the URL that is requested, printed and reported carries none.
 */
export function parseUrl(text: string): { url: URL; user: UserArg | undefined } {
  // A scheme is a name, a colon and a slash, as curl 7.88 reads one: `https:/host/` (a slash lost
  // in typing) is https://host/, where it was taken as schemeless, https://https:/host/, "could not
  // resolve host https"; `name:/path` is a scheme curl does not support (1), as here.
  const withScheme = /^[a-z][a-z0-9+.-]*:\//i.test(text) ? text : `https://${text}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    // curl's 3 (CURLE_URL_MALFORMAT): a script tells a bad URL from bad options (2).
    throw new UsageError(`not a URL: ${redactUserinfo(text)}`, EXIT.badUrl);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:')
    // curl's 1 (CURLE_UNSUPPORTED_PROTOCOL); named without the URL's colon, as curl's `Protocol
    // "htps" not supported` names it (`htps:` read as a typo of its own).
    throw new UsageError(
      `unsupported protocol ${JSON.stringify(url.protocol.slice(0, -1))} in ${redactUserinfo(text)}: use https:// or http://`,
      EXIT.unsupportedProtocol,
    );
  let user: UserArg | undefined;
  if (url.username || url.password) {
    // `user@`, without a colon, is `-u user`: the password is asked for (MULTILEG_PASSWORD, stdin, a
    // prompt). The URL parser gives '' for both `user@` and `user:@`, so look at the text.
    const authority = withScheme.replace(/^[a-z][a-z0-9+.-]*:[/\\]*/i, '').split(/[/?#\\]/, 1)[0]!;
    const colon = authority.slice(0, authority.lastIndexOf('@')).includes(':');
    user = { username: percentDecoded(url.username), password: colon ? percentDecoded(url.password) : undefined };
  }
  url.username = '';
  url.password = '';
  return { url, user };
}

/**
 * curl expands `{a,b}` and `[1-3]` in a URL into several transfers (its globbing, off with -g);
 * multileg does not, and sent such a URL as one literal request: a script got one wrong answer
 * where curl made several.
 */
function notAGlob(arg: string): void {
  // The path and query only: braces in a host fail as "not a URL" anyway, and brackets there are IPv6.
  const rest = arg.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '').replace(/^[^/?#]*/, '');
  if (!/[{}[\]]/.test(rest)) return;
  throw new ConfigError(
    `URL globbing ({a,b}, [1-3]) is not supported: give each URL (the shell can expand {a,b} unquoted), or -g (--globoff) to send {} and [] as they are`,
  );
}

/**
 * What commander leaves as a URL but is none: an option it reads as a negative number (curl's -4,
 * -6, -0: `https://-4/` would be requested), and JSON data (curl's `--json '{…}'` sends it; here
 * --json is a flag, so the data would become a URL and the request a GET).
 */
function notAUrl(arg: string, json: boolean): void {
  if (arg.startsWith('-')) throw new ConfigError(`unknown option '${arg}' (multileg --help lists the options)`);
  if (!/^\s*[[{]/.test(arg)) return;
  try {
    JSON.parse(arg);
  } catch {
    return;
  }
  throw new ConfigError(
    // Not echoed: JSON data may hold a secret.
    `an argument is JSON data, not a URL: ${json ? "--json here takes no value (it prints multileg's report); to " : 'to '}send JSON as curl's --json does, give -d '…' -H 'Content-Type: application/json'`,
  );
}

/** `--schemes a,b`: every name must be one multileg implements, and one at least. */
export function parseSchemes(list: string): SchemeName[] {
  const names = list
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((name) => {
      const known = SCHEME_NAMES.find((s) => s.toLowerCase() === name.toLowerCase());
      if (!known)
        throw new ConfigError(`--schemes: unknown scheme ${JSON.stringify(name)}; use ${SCHEME_NAMES.join(', ')}`);
      return known;
    });
  // `--schemes ''` (an unset variable in a script) or `,` would turn every scheme off.
  if (names.length === 0)
    throw new ConfigError(
      `--schemes ${JSON.stringify(list)} names no scheme: omit --schemes for the default order, or name at least one, e.g. --schemes Negotiate,NTLM`,
    );
  return names;
}

/**
 * A user name never holds two backslashes in a row (`DOMAIN\user` has one): a shell's single quotes
 * keep both of `'EXAMPLE\\alice'` (how a JSON or JavaScript string spells one), and the server would
 * refuse an account that does not exist while the command could only say "check -u". Bad usage,
 * before anything is sent. `flag`: `-u` or `-U`.
 */
function checkBackslashes(flag: string, username: string): void {
  if (!username.includes('\\\\')) return;
  const one = username.replace(/\\{2,}/g, '\\');
  throw new ConfigError(
    `${flag}: the user name ${username} holds two backslashes in a row, where DOMAIN\\user has one (a shell's single quotes keep both): write ${flag} '${one}'`,
  );
}

/** Splits `DOMAIN\user:password` at the first colon. */
export function parseUser(user: string): UserArg {
  const colon = user.indexOf(':');
  if (colon >= 0) return { username: user.slice(0, colon), password: user.slice(colon + 1) };
  return { username: user, password: undefined };
}

/** Why a file cannot be read, in words (the system code otherwise). */
export function unreadable(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT'
    ? 'no such file'
    : code === 'EACCES'
      ? 'permission denied'
      : code === 'EISDIR'
        ? 'is a directory'
        : (code ?? 'unreadable');
}

/**
 * Reads a file a flag names: one line naming the flag when it cannot be read, exit 2 or, given
 * `exit`, that (curl's 26 for -d @file and -w @file).
 */
export function readFlagFile(flag: string, path: string, exit?: number): Buffer {
  try {
    return path === '-' ? readStdin() : readFileSync(path);
  } catch (err) {
    const message = `${flag} ${path === '-' ? '@- (stdin)' : path}: ${unreadable(err)}`;
    throw exit === undefined ? new ConfigError(message) : new UsageError(message, exit);
  }
}

/** The flags whose data make the body (or, with -G, the query), joined with `&`. */
type DataFlag = '-d' | '--data-binary' | '--data-raw' | '--data-urlencode';

/** Whether a data flag's value reads stdin: `@-`, or --data-urlencode's `name@-` (not after an `=`). */
function dataReadsStdin(flag: DataFlag, value: string): boolean {
  if (flag === '--data-raw') return false;
  if (flag !== '--data-urlencode') return value === '@-';
  return urlencodeParts(value).file === '-';
}

/**
 * A `--data-urlencode` argument in curl's five forms: `content`, `=content`, `name=content`, `@file`,
 * `name@file`. The first `=` decides, else the first `@`: a name (maybe empty) and the content, or
 * the file that holds it (`-`: stdin).
 */
function urlencodeParts(arg: string): { name: string; content: string; file: string | undefined } {
  let at = arg.indexOf('=');
  if (at < 0) at = arg.indexOf('@');
  if (at < 0) return { name: '', content: arg, file: undefined };
  const rest = arg.slice(at + 1);
  return arg[at] === '@'
    ? { name: arg.slice(0, at), content: '', file: rest }
    : { name: arg.slice(0, at), content: rest, file: undefined };
}

/** The base name of a path given on the command line (separated by `/` or a backslash, as curl takes either). */
const baseName = (path: string): string => path.slice(Math.max(path.lastIndexOf('/'), path.lastIndexOf('\\')) + 1);

/** `bytes` as text, each byte `keep` refuses as %XX (`upper`: the hex digits' case). */
function percentEncoded(bytes: Buffer, keep: (byte: number) => boolean, upper: boolean): string {
  let out = '';
  for (const b of bytes)
    out += keep(b)
      ? String.fromCharCode(b)
      : `%${b.toString(16).padStart(2, '0')[upper ? 'toUpperCase' : 'toLowerCase']()}`;
  return out;
}
/** What curl_easy_escape leaves as it is: ALPHA DIGIT - . _ ~ (RFC 3986's unreserved). */
const UNRESERVED = (b: number) =>
  (b >= 0x30 && b <= 0x39) ||
  (b >= 0x41 && b <= 0x5a) ||
  (b >= 0x61 && b <= 0x7a) ||
  b === 0x2d ||
  b === 0x2e ||
  b === 0x5f ||
  b === 0x7e;

/**
 * A `--data-urlencode` piece ({@link urlencodeParts}): the content (or the file's) percent-encoded,
 * a space as `+` (curl's), after its name, which is not. A file that cannot be read is curl's 26.
 */
function urlencodedPiece(arg: string): Buffer {
  const { name, content: text, file } = urlencodeParts(arg);
  const content = file !== undefined ? readFlagFile('--data-urlencode', file, EXIT.read) : Buffer.from(text);
  const encoded = percentEncoded(content, UNRESERVED, true).replaceAll('%20', '+');
  return Buffer.from(name === '' ? encoded : `${name}=${encoded}`);
}

/**
 * -G's data as a URL query: as given, but the bytes a URL cannot carry as they are (controls, space,
 * `"`, `#`, `'`, `<`, `>`, non-ASCII) percent-encoded, so the URL parser keeps every byte (curl 7.88
 * refuses a space, exit 3, and ends the query at a `#`).
 */
function queryText(data: Buffer): string {
  return percentEncoded(data, (b) => b > 0x20 && b < 0x7f && !'"#\'<>'.includes(String.fromCharCode(b)), true);
}

/** A -T file's name as curl appends it to a URL ending in `/` (curl 7.88: lower-case hex). */
function escapeFileName(name: string): string {
  return percentEncoded(Buffer.from(name), UNRESERVED, false);
}

/** The Content-Type curl gives a -F file upload from its name's extension (lib/mime.c). */
const FILE_TYPES: Readonly<Record<string, string>> = {
  gif: 'image/gif',
  jpg: 'image/jpeg',
  jpeg: 'image/jpeg',
  png: 'image/png',
  svg: 'image/svg+xml',
  txt: 'text/plain',
  htm: 'text/html',
  html: 'text/html',
  pdf: 'application/pdf',
  xml: 'application/xml',
};

/** One -F field. */
interface FormPart {
  readonly name: string;
  readonly content: Buffer;
  readonly filename: string | undefined;
  readonly type: string | undefined;
}

/**
 * Reads a -F word at `i`: a `"…"` string (backslash escapes the next character) or up to the next
 * `;`, as curl's -F parser does.
 */
function formWord(text: string, i: number): { word: string; end: number } {
  if (text[i] !== '"') {
    const end = text.indexOf(';', i);
    return { word: text.slice(i, end < 0 ? text.length : end), end: end < 0 ? text.length : end };
  }
  let word = '';
  let j = i + 1;
  for (; j < text.length && text[j] !== '"'; j++) word += text[j] === '\\' && j + 1 < text.length ? text[++j] : text[j];
  return { word, end: j + 1 };
}

/**
 * `-F name=value`, `name=@file` (a file upload: its base name as filename, a type from its
 * extension), `name=<file` (the file's content as the value), each with `;type=` and `;filename=`.
 * curl drops another `;…` with a warning; here it is bad usage, as the value would silently lose it.
 */
function formPart(arg: string): FormPart {
  const eq = arg.indexOf('=');
  // Not echoed: without its name, any part may be a secret (as -H's message).
  if (eq <= 0) throw new ConfigError('-F: a form field is name=value, name=@file or name=<file (one -F has no name=)');
  const name = arg.slice(0, eq);
  const marker = arg[eq + 1];
  const kind = marker === '@' || marker === '<' ? marker : '';
  const first = formWord(arg, eq + 1 + kind.length);
  let type: string | undefined;
  let filename: string | undefined;
  for (let i = first.end; i < arg.length; ) {
    const param = /^;\s*(type|filename)=/.exec(arg.slice(i));
    // The value is not repeated: a form field may hold a password.
    if (!param)
      throw new ConfigError(
        `-F ${name}=…: a ; starts a parameter other than ;type= and ;filename= (curl would drop it from the value); to send a ; quote the value: ${name}="…;…"`,
      );
    const value = formWord(arg, i + param[0].length);
    if (param[1] === 'type') type = value.word;
    else filename = value.word;
    i = value.end;
  }
  if (kind === '') return { name, content: Buffer.from(first.word), filename, type };
  const path = first.word;
  const content = readFlagFile('-F', path, EXIT.read);
  if (kind === '<') return { name, content, filename, type };
  const base = baseName(path);
  // curl: the type from the file's own name (not ;filename=), application/octet-stream when its
  // extension is none of curl's; stdin's part has none.
  const extension = base.includes('.') ? base.slice(base.lastIndexOf('.') + 1).toLowerCase() : '';
  const guessed = path === '-' ? undefined : (FILE_TYPES[extension] ?? 'application/octet-stream');
  return { name, content, filename: filename ?? base, type: type ?? guessed };
}

/**
 * How a -F that reads stdin is named in a conflict (`-F a=@-`, `-F a=<-`), or undefined for one
 * that does not: its file is `-` as {@link formPart} reads it, so quoted too (`a=@"-"`, `a=<"-"`),
 * which curl also reads from stdin.
 */
function formStdinName(arg: string): string | undefined {
  const eq = arg.indexOf('=');
  const marker = arg[eq + 1];
  if (eq <= 0 || (marker !== '@' && marker !== '<')) return undefined;
  return formWord(arg, eq + 2).word === '-' ? `-F ${arg.slice(0, eq + 2)}-` : undefined;
}

/** A name or filename in a Content-Disposition: curl's escaping (`"` and line breaks as %XX). */
const dispositionText = (text: string) => text.replaceAll('"', '%22').replaceAll('\r', '%0D').replaceAll('\n', '%0A');

/**
 * The -F fields as one multipart/form-data body, laid out as curl 7.88 lays it out (its boundary: 24
 * dashes and 16 random hex digits), one Buffer so every leg of a handshake sends the same bytes (C10).
 */
function multipart(args: readonly string[]): { body: Buffer; boundary: string; type: string } {
  const boundary = `${'-'.repeat(24)}${randomBytes(8).toString('hex')}`;
  const chunks: Buffer[] = [];
  for (const part of args.map(formPart)) {
    let head = `--${boundary}\r\nContent-Disposition: form-data; name="${dispositionText(part.name)}"`;
    if (part.filename !== undefined) head += `; filename="${dispositionText(part.filename)}"`;
    head += `\r\n${part.type !== undefined ? `Content-Type: ${part.type}\r\n` : ''}\r\n`;
    chunks.push(Buffer.from(head), part.content, Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(chunks), boundary, type: `multipart/form-data; boundary=${boundary}` };
}

/** A flag that reads stdin, and what to give instead (see {@link stdinConflict}). */
interface StdinReader {
  readonly name: string;
  readonly fix: string;
}

/** Whatever reads stdin, in the order a conflict names them: the first one's fix is given. */
const STDIN_READERS = {
  config: { name: '-K -', fix: 'give the options in a file (-K FILE)' },
  cookies: { name: '-b -', fix: 'give the cookies in a file' },
  writeOut: { name: '-w @-', fix: 'give the -w format as text or in a file' },
  password: { name: '--password-stdin', fix: 'give the password with MULTILEG_PASSWORD (or -u user:password)' },
  data: { name: '-d @-', fix: 'give the body in a file' },
  form: { name: '-F name=@-', fix: 'give the form field in a file' },
  upload: { name: '-T -', fix: 'give the file to upload by name' },
  // readFlagFile reads `-` as stdin for these too.
  cert: { name: '--cert -', fix: 'give the certificate in a file' },
  key: { name: '--key -', fix: 'give the key in a file' },
} as const satisfies Record<string, StdinReader>;

/**
 * Stdin can be read once: of the flags given that read it (`false` for those not given), the
 * message naming the first two and the first one's fix, or undefined when at most one reads it.
 */
function stdinConflict(readers: readonly (StdinReader | false)[]): string | undefined {
  const [first, second] = readers.filter((r): r is StdinReader => r !== false);
  if (!first || !second) return undefined;
  return `${first.name} and ${second.name}: only one of them can read stdin; ${first.fix}`;
}

/**
 * All of stdin (curl's `@-`). Through fd 0, not /dev/stdin: a parent's socket there (Node's
 * child_process gives one) cannot be opened by name (ENXIO); a non-blocking fd 0 is read by name.
 */
export function readStdin(): Buffer {
  try {
    return readFileSync(0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
    return readFileSync('/dev/stdin');
  }
}

/** A bad command line that curl gives an exit code of its own (2 is the rest's). */
export class UsageError extends ConfigError {
  readonly exit: number;
  constructor(detail: string, exit: number) {
    super(detail);
    this.exit = exit;
  }
}

/**
 * `--cacert FILE` (`--proxy-cacert FILE`): PEM certificates, each of which must parse. A file that
 * is not there is bad usage (exit 2, before anything is sent: curl 8.18 and later); one that cannot
 * be read or holds no usable certificate is `problem`, curl's 77 only once a TLS connection would
 * use it.
 */
function caFile(path: string, flag: '--cacert' | '--proxy-cacert'): { text: string } | { problem: string } {
  let text: string;
  try {
    text = readFileSync(path).toString('latin1');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new ConfigError(`${flag} ${path}: no such file`);
    return { problem: `${flag} ${path}: ${unreadable(err)}` };
  }
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----/g) ?? [];
  const bad = { problem: `${flag} ${path}: not a PEM file of CA certificates` };
  if (blocks.length === 0) return bad;
  for (const block of blocks) {
    try {
      new X509Certificate(block);
    } catch {
      return bad;
    }
  }
  return { text };
}

/**
 * `--cert file[:passphrase]` (curl's form: a value that is no file and holds a colon is split at
 * it, after a Windows drive letter; the passphrase is never printed), `--key` (else the key is in
 * the --cert file, as curl allows) and `--pass`.
 */
function clientCertificate(o: Record<string, unknown>): ClientCertificate {
  const { path, passphrase } = certFile(o);
  // A file that cannot be read is curl's 58 too (CURLE_SSL_CERTPROBLEM), not a usage error.
  const read = (flag: string, file: string) => {
    try {
      return readFlagFile(flag, file);
    } catch (err) {
      throw new UsageError((err as Error).message, CLIENT_CERT_PROBLEM);
    }
  };
  const cert = read('--cert', path);
  return {
    cert,
    key: o.key !== undefined ? read('--key', o.key as string) : cert,
    ...(passphrase !== undefined ? { passphrase } : {}),
  };
}

/** The --cert file's path and passphrase (`--pass`, else curl's `file:passphrase`). */
function certFile(o: Record<string, unknown>): { path: string; passphrase: string | undefined } {
  let path = o.cert as string;
  let passphrase = o.pass as string | undefined;
  if (!existsSync(path)) {
    const colon = path.indexOf(':', /^[A-Za-z]:[\\/]/.test(path) ? 2 : 0);
    if (colon > 0) {
      passphrase ??= path.slice(colon + 1);
      path = path.slice(0, colon);
    }
  }
  return { path, passphrase };
}

/** curl's CURLE_SSL_CERTPROBLEM. */
const CLIENT_CERT_PROBLEM = 58;

/** How each option that takes a value may hold a secret: `user:password`, all of it, a URL's password, a header's value. */
const SECRET_VALUES: Readonly<
  Record<string, 'after-colon' | 'all' | 'url' | 'header' | 'cert' | 'cookie' | 'data' | 'form' | 'urlencode'>
> = {
  '--user': 'after-colon',
  '--proxy-user': 'after-colon',
  '--pass': 'all',
  '--proxy': 'url',
  '--header': 'header',
  '--cert': 'cert',
  '--cookie': 'cookie',
  // Form data (a login form's password, a token): the data itself, not a file that holds it.
  '--data': 'data',
  '--data-binary': 'data',
  '--data-raw': 'all',
  '--data-urlencode': 'urlencode',
  '--form': 'form',
  '--referer': 'url',
  '--url': 'url',
};
const SECRET_HEADERS = /^\s*(authorization|proxy-authorization|cookie)\s*:/i;

/**
 * `url` with the password of its user info (up to the last `@` of its authority) as `***`; also
 * without a scheme (`user:pw@proxy:3128`, which -x and the URL argument take as http(s)://).
 */
function hideUrlPassword(url: string): string {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(url)?.[0] ?? '';
  const rest = url.slice(scheme.length);
  const authority = rest.split(/[/?#]/, 1)[0]!;
  const at = authority.lastIndexOf('@');
  const colon = authority.indexOf(':');
  if (at < 0 || colon < 0 || colon > at) return url;
  return `${scheme}${authority.slice(0, colon)}:***${rest.slice(at)}`;
}

function hideValue(kind: (typeof SECRET_VALUES)[string], value: string): string {
  switch (kind) {
    case 'all':
      return '***';
    case 'url':
      return hideUrlPassword(value);
    case 'header':
      return SECRET_HEADERS.test(value) ? `${value.slice(0, value.indexOf(':'))}:***` : value;
    case 'cookie':
      // -b NAME=VALUE is the cookies themselves; without `=` it names a file.
      return value.includes('=') ? '***' : value;
    case 'data':
      // -d @file names a file; anything else is the data.
      return value.startsWith('@') ? value : '***';
    case 'form': {
      // -F name=@file and name=<file name a file; name=value is the value.
      const eq = value.indexOf('=');
      return eq < 0 ? '***' : /^[@<]/.test(value.slice(eq + 1)) ? value : `${value.slice(0, eq + 1)}***`;
    }
    case 'urlencode': {
      // --data-urlencode @file and name@file name a file; name=content and content are the data.
      const { name, file } = urlencodeParts(value);
      if (file !== undefined) return value;
      return value.includes('=') ? `${name}=***` : '***';
    }
    default: {
      // user:password, or --cert file:passphrase (after a Windows drive letter).
      const colon = value.indexOf(':', kind === 'cert' && /^[A-Za-z]:[\\/]/.test(value) ? 2 : 0);
      return colon < 0 ? value : `${value.slice(0, colon)}:***`;
    }
  }
}

/**
 * curl's `--url URL` as a URL given without a flag, in its place among them (curl keeps one list in
 * the order given, which -o pairs with): the arguments as commander reads them — options and their
 * values first, then `--` and the URLs in order. Unchanged without a `--url`.
 */
function urlsInPlace(argv: readonly string[], cmd: Commander.Command): string[] {
  if (!argv.some((a) => a === '--url' || a.startsWith('--url='))) return [...argv];
  const takesValue = new Set<string>();
  for (const option of cmd.options)
    if (option.required || option.optional) {
      if (option.short) takesValue.add(option.short);
      if (option.long) takesValue.add(option.long);
    }
  const options: string[] = [];
  const urls: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      urls.push(...argv.slice(i + 1));
      break;
    }
    if (arg === '--url') {
      // A --url with nothing after it: commander's "argument missing", as for any option.
      if (i + 1 === argv.length) return [...argv];
      urls.push(argv[++i]!);
    } else if (arg.startsWith('--url=')) urls.push(arg.slice('--url='.length));
    else if (arg.startsWith('--')) {
      options.push(arg);
      if (!arg.includes('=') && takesValue.has(arg) && i + 1 < argv.length) options.push(argv[++i]!);
    } else if (arg.startsWith('-') && arg.length > 1) {
      options.push(arg);
      // Short flags together: the first that takes a value takes the rest, or the next argument.
      for (let j = 1; j < arg.length; j++) {
        if (!takesValue.has(`-${arg[j]}`)) continue;
        if (j === arg.length - 1 && i + 1 < argv.length) options.push(argv[++i]!);
        break;
      }
    } else urls.push(arg);
  }
  return [...options, '--', ...urls];
}

/**
 * The command line as `ps` may show it, or undefined when it holds no secret: the passwords of
 * -u/--user, --proxy-user, -x/--proxy and -e URLs, --cert file:passphrase and URLs, --pass, -b cookies,
 * Authorization / Cookie headers and form data (-d, --data-binary, --data-raw, --data-urlencode, -F
 * values; not the files they name) become `***`, in every form commander reads (`--opt=value`,
 * `-uvalue`, `-ku value`). Set as the process title, it replaces the arguments other users can read
 * (curl blanks passwords too).
 */
export function shownArgv(argv: readonly string[], cmd: Commander.Command = program()): string[] | undefined {
  const longOf = new Map<string, string>();
  for (const option of cmd.options)
    if (option.required || option.optional) {
      if (option.short) longOf.set(option.short, option.long!);
      if (option.long) longOf.set(option.long, option.long);
    }
  const out: string[] = [];
  let pending: string | undefined; // the option whose value is the next argument
  for (const arg of argv) {
    if (pending) {
      const kind = SECRET_VALUES[pending];
      out.push(kind ? hideValue(kind, arg) : arg);
      pending = undefined;
      continue;
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = eq < 0 ? arg : arg.slice(0, eq);
      const long = longOf.get(name);
      const kind = long && SECRET_VALUES[long];
      if (long && eq < 0) pending = long;
      out.push(kind && eq >= 0 ? `${name}=${hideValue(kind, arg.slice(eq + 1))}` : arg);
      continue;
    }
    if (arg.startsWith('-') && arg.length > 1) {
      // Short flags together: the first that takes a value takes the rest, or the next argument.
      let shown = arg;
      for (let j = 1; j < arg.length; j++) {
        const long = longOf.get(`-${arg[j]}`);
        if (!long) continue;
        const rest = arg.slice(j + 1);
        const kind = SECRET_VALUES[long];
        if (!rest) pending = long;
        else if (kind) shown = `${arg.slice(0, j + 1)}${hideValue(kind, rest)}`;
        break;
      }
      out.push(shown);
      continue;
    }
    out.push(hideUrlPassword(arg));
  }
  return out.some((a, i) => a !== argv[i]) ? out : undefined;
}

/**
 * `-w FORMAT`, or curl's `-w @file` (`@-`: stdin) that holds it, without its line breaks (curl's
 * way: `\n` in the file writes one). A file that cannot be read is curl's 26.
 */
function writeOutFormat(value: string | undefined): string | undefined {
  if (value === undefined || !value.startsWith('@')) return value;
  const path = value.slice(1);
  return readFlagFile('-w', path, EXIT.read)
    .toString('utf8')
    .replace(/[\r\n]/g, '');
}

/**
 * A keytab path becomes a `FILE:` name; `FILE:`/`MEMORY:`... names pass through. A keytab file that
 * cannot be read is curl's 26 for a file a flag names, before anything is sent (GSS-API would find
 * it missing only at a Negotiate challenge, and the command then ended 0 with the server's 401).
 */
function keytabName(v: string): string {
  const path = /^FILE:/i.test(v) ? v.slice('FILE:'.length) : /^[A-Z]+:/.test(v) ? undefined : v;
  if (path !== undefined) {
    try {
      const fd = openSync(path, 'r');
      const directory = fstatSync(fd).isDirectory();
      closeSync(fd);
      if (directory) throw Object.assign(new Error('is a directory'), { code: 'EISDIR' });
    } catch (err) {
      throw new UsageError(`--keytab ${path}: ${unreadable(err)}`, EXIT.read);
    }
  }
  return path !== undefined && !/^FILE:/i.test(v) ? `FILE:${v}` : v;
}

/** -O's place among the outputs: the file is named after the URL it pairs with. */
const REMOTE_NAME: unique symbol = Symbol('-O');

/**
 * Where a transfer's body goes: `-o FILE`, stdout (`-o -`, or none), or with -O the URL's last path
 * segment in the current folder, as curl names it (not decoded); a URL whose path ends in `/` has
 * none, curl's "Remote file name has no length!" (23), said before anything is sent.
 */
function outputFile(output: string | typeof REMOTE_NAME | undefined, url: URL): string | undefined {
  if (output !== REMOTE_NAME) return output === '-' ? undefined : output;
  const name = url.pathname.slice(url.pathname.lastIndexOf('/') + 1);
  if (name === '')
    throw new UsageError(`-O ${url.href}: the URL has no file name (it ends in /): use -o FILE`, EXIT.write);
  return name;
}

/**
 * The flag that gave the command credentials (`-u`, the URL's user:password, a netrc flag, or
 * `--negotiate` for the Kerberos ticket), named when a `-H 'Authorization: …'` keeps them unused.
 */
function credentialsFlag(
  o: Record<string, unknown>,
  user: UserArg | undefined,
  only: readonly string[],
): string | undefined {
  if (o.user !== undefined) return o.user === ':' ? '-u : (the Kerberos ticket)' : '-u';
  if (user !== undefined) return "the URL's user:password";
  if (o.netrcFile !== undefined) return '--netrc-file';
  if (o.netrcOptional) return '--netrc-optional';
  if (o.netrc) return '--netrc';
  return only.includes('negotiate') ? '--negotiate' : undefined;
}

/**
 * --compressed's Accept-Encoding: the codings Node's zlib decodes, in curl's order (curl 7.88 built
 * with zlib, brotli and zstd sends the same); zstd only where this Node has its decoder (22.15 and
 * later). zlib is asked only with --compressed, so a plain request's start does not load it.
 */
export function acceptEncoding(): string {
  const zlib = process.getBuiltinModule('node:zlib');
  return typeof zlib.createZstdDecompress === 'function' ? 'deflate, gzip, br, zstd' : 'deflate, gzip, br';
}

/** Turns command-line arguments into a request; throws commander's or a ConfigError on bad input. */
export function parseCli(
  argv: readonly string[],
  cmd: Commander.Command = program(),
  /** How many `-K -` read stdin (config.ts, which has replaced every -K of `argv` by its options). */
  configStdin = 0,
): CliRequest {
  // -d, --data-binary, --data-raw and --data-urlencode in the order given (curl joins them so), not grouped by flag.
  const data: Array<[flag: DataFlag, value: string]> = [];
  for (const flag of ['-d', '--data-binary', '--data-raw', '--data-urlencode'] as const)
    cmd.on(`option:${flag === '-d' ? 'data' : flag.slice(2)}`, (value: string) => data.push([flag, value]));
  // -o and -O in the order given: curl pairs each with the URL in its place.
  const outputs: Array<string | typeof REMOTE_NAME> = [];
  cmd.on('option:output', (file: string) => outputs.push(file));
  cmd.on('option:remote-name', () => outputs.push(REMOTE_NAME));
  // --http1.1 and --http2: the last one given wins (curl's); HTTP/2 is the default.
  let http1 = false;
  cmd.on('option:http1.1', () => {
    http1 = true;
  });
  cmd.on('option:http2', () => {
    http1 = false;
  });
  // -4 and -6: the last one given wins (curl's CURLOPT_IPRESOLVE).
  let family: 4 | 6 | undefined;
  cmd.on('option:ipv4', () => {
    family = 4;
  });
  cmd.on('option:ipv6', () => {
    family = 6;
  });
  cmd.parse(urlsInPlace(argv, cmd), { from: 'user' });
  const o = cmd.opts();
  // parseCliOrExit reads the -K files first; a -K left here would be ignored without a word.
  if (o.config !== undefined) throw new Error('-K: the config files must be read first (parseCliOrExit)');
  for (const arg of cmd.args) {
    notAUrl(arg, Boolean(o.json));
    if (!o.globoff) notAGlob(arg);
  }
  const parsed = cmd.args.map(parseUrl);
  // A URL's user:password@ is that URL's only (curl's), while the agent has one set of credentials
  // for the command: several URLs with different user info would send one URL's password to another's origin.
  const urlUser = parsed[0]!.user;
  const sameUser = parsed.every((p) => JSON.stringify(p.user) === JSON.stringify(urlUser));
  if (o.user === undefined && !sameUser)
    throw new ConfigError(
      "several URLs with different user:password@: give the credentials once with -u (they then go to each URL's own origin), or run one command per user",
    );
  const headers: Record<string, string | string[]> = {};
  const removed = new Set<string>();
  for (const h of (o.header as string[] | undefined) ?? []) {
    // curl: `Name;` sends the header empty, `Name:` sends none of it.
    const empty = /^[^:;\s]+;$/.test(h.trim());
    const i = empty ? h.indexOf(';') : h.indexOf(':');
    // Nothing of it is repeated: without its colon, any part may be the secret (`-H 'sk_live_…'`).
    if (i <= 0) throw new ConfigError('-H: a header must look like "Name: value" (one -H has no colon)');
    const name = h.slice(0, i).trim().toLowerCase();
    const value = empty ? '' : h.slice(i + 1).trim();
    if (!empty && value === '') {
      delete headers[name];
      removed.add(name);
      continue;
    }
    const had = headers[name];
    // Repeated, each is sent (as curl does), not the last alone.
    headers[name] = had === undefined ? value : [had, value].flat();
  }
  // -b: NAME=VALUE strings are sent as given, joined (curl's), unless a -H names Cookie (then curl
  // sends that one alone); the others name files for the cookie engine.
  const cookieArgs = (o.cookie as string[] | undefined) ?? [];
  const cookieStrings = cookieArgs.filter((c) => c.includes('='));
  const cookieFiles = cookieArgs.filter((c) => !c.includes('='));
  if (cookieStrings.length > 0 && !('cookie' in headers) && !removed.has('cookie'))
    headers.cookie = cookieStrings.join('; ');
  const cookieJar = o.cookieJar as string | undefined;
  // -d @- / --data-binary @- / --data-urlencode [name]@-: the body from stdin, which then can bring nothing else.
  const dataStdin = data.filter(([flag, d]) => dataReadsStdin(flag, d));
  const forms = (o.form as string[] | undefined) ?? [];
  const formStdin = forms.map(formStdinName).filter((n) => n !== undefined);
  const uploads = (o.uploadFile as string[] | undefined) ?? [];
  const twoReaders = stdinConflict([
    ...Array.from({ length: configStdin }, () => STDIN_READERS.config),
    cookieFiles.includes('-') && STDIN_READERS.cookies,
    o.writeOut === '@-' && STDIN_READERS.writeOut,
    o.passwordStdin === true && STDIN_READERS.password,
    // Each one: a second would read nothing (stdin is at its end) and send an empty piece or field.
    ...dataStdin.map(([flag, d]) => ({ ...STDIN_READERS.data, name: `${flag} ${d}` })),
    ...formStdin.map((name) => ({ ...STDIN_READERS.form, name })),
    ...uploads.map((file) => file === '-' && STDIN_READERS.upload),
    o.cert !== undefined && certFile(o).path === '-' && STDIN_READERS.cert,
    o.key === '-' && STDIN_READERS.key,
  ]);
  if (twoReaders) throw new ConfigError(twoReaders);
  const pieces = data.map(([flag, d]) => {
    if (flag === '--data-urlencode') return urlencodedPiece(d);
    if (flag === '--data-raw' || !d.startsWith('@')) return Buffer.from(d);
    // A file that cannot be read is curl's 26 (curl 8.3 and later; older ones sent an empty body).
    const file = readFlagFile(flag, d.slice(1), EXIT.read);
    // -d @file: without its line breaks, as curl reads it; --data-binary @file: as it is.
    return flag === '-d' ? Buffer.from(file.toString('latin1').replace(/[\r\n]/g, ''), 'latin1') : file;
  });
  const dataBody =
    pieces.length === 0 ? undefined : Buffer.concat(pieces.flatMap((p, i) => (i === 0 ? [p] : [Buffer.from('&'), p])));
  const head = Boolean(o.head);
  // -G takes the -d data out of the body (into the URL query).
  const posted = dataBody !== undefined && !o.get;
  if (head && posted) throw new ConfigError('-I and -d: you can only select one HTTP request method (HEAD or POST)');
  // curl's own words for the other pairs (exit 2); -d is one with -T or -F even after -G (curl's).
  const methods = [
    uploads.length > 0 && 'PUT (-T, --upload-file)',
    dataBody !== undefined && 'POST (-d, --data)',
    forms.length > 0 && 'multipart formpost (-F, --form)',
    head && 'HEAD (-I, --head)',
  ].filter((m) => m !== false);
  // -G -d -I: a HEAD with the data in its query, the one pair that is no conflict (curl's).
  const headWithQuery = o.get && head && methods.length === 2 && dataBody !== undefined;
  if (methods.length > 1 && !headWithQuery)
    throw new ConfigError(
      `You can only select one HTTP request method! You asked for both ${methods[0]} and ${methods[1]}.`,
    );
  // -G: the data goes into every URL's query instead (curl's), no body.
  const query = o.get && dataBody !== undefined ? queryText(dataBody) : undefined;
  const form = forms.length > 0 ? multipart(forms) : undefined;
  const body = query === undefined ? (form?.body ?? dataBody) : undefined;
  // As curl: a body from -d is a form unless a Content-Type says otherwise (or -H 'Content-Type:'
  // drops it); -F's is multipart/form-data, and a type given with -H gets its boundary.
  const ownType = 'content-type' in headers || removed.has('content-type');
  const formType = body !== undefined && !ownType;
  if (formType) headers['content-type'] = form ? form.type : 'application/x-www-form-urlencoded';
  else if (form && typeof headers['content-type'] === 'string' && !/;\s*boundary=/i.test(headers['content-type']))
    headers['content-type'] += `; boundary=${form.boundary}`;
  // curl's Accept: */* (a server that negotiates may answer a request without one otherwise); -H
  // 'Accept: …' replaces it, -H 'Accept:' drops it.
  if (!('accept' in headers) && !removed.has('accept')) headers.accept = '*/*';
  // --compressed: curl's Accept-Encoding, what the body can be decoded from; one given with -H is
  // sent instead (-H 'Accept-Encoding:' sends none), and the body is decoded all the same.
  if (o.compressed && !('accept-encoding' in headers) && !removed.has('accept-encoding'))
    headers['accept-encoding'] = acceptEncoding();
  // -A and -e: headers a -H of the same name replaces or drops (curl's); -A '' sends none.
  if (o.userAgent && !('user-agent' in headers) && !removed.has('user-agent'))
    headers['user-agent'] = o.userAgent as string;
  const referer = o.referer as string | undefined;
  const ownReferer = 'referer' in headers || removed.has('referer');
  const autoReferer = referer?.endsWith(';auto') === true && !ownReferer;
  const firstReferer = autoReferer ? referer!.slice(0, -';auto'.length) : referer;
  if (firstReferer && !ownReferer) headers.referer = firstReferer;
  if (uploads.length > parsed.length)
    throw new ConfigError(
      `${uploads.length} -T files and ${parsed.length} URL(s): each -T goes with one URL, in order`,
    );
  // -T files: read now (a file that cannot be read is curl's 26), whole, so every leg of a
  // handshake sends the same bytes (C10); curl streams them.
  const uploaded = uploads.map((file) => readFlagFile('-T', file, EXIT.read));
  const method = (o.request as string | undefined) ?? (head ? 'HEAD' : form ? 'POST' : body ? 'POST' : 'GET');
  const transfers: Transfer[] = parsed.map((p, i) => {
    const url = new URL(p.url);
    if (query) url.search = url.search ? `${url.search.slice(1)}&${query}` : query;
    const file = uploads[i];
    // curl's rule: a URL whose path ends in / gets the file's name (not for stdin).
    if (file !== undefined && file !== '-' && url.pathname.endsWith('/'))
      url.pathname += escapeFileName(baseName(file));
    return {
      url,
      output: outputFile(outputs[i] ?? (o.remoteNameAll ? REMOTE_NAME : undefined), url),
      ...(file !== undefined
        ? { method: (o.request as string | undefined) ?? 'PUT', body: uploaded[i], upload: true }
        : { method, body, upload: false }),
    };
  });
  const { url } = transfers[0]!;
  // curl 8.18 and later: a netrc file named that is not there is bad usage, before anything is sent.
  if (o.netrcFile !== undefined && !existsSync(o.netrcFile as string))
    throw new ConfigError(`--netrc-file ${o.netrcFile}: no such file`);
  if (o.key !== undefined && o.cert === undefined) throw new ConfigError('--key goes with --cert');
  if (o.pass !== undefined && o.cert === undefined)
    throw new ConfigError('--pass is the passphrase of the --cert / --key key: give --cert');
  const certificate = o.cert !== undefined ? clientCertificate(o) : undefined;
  const only = (['negotiate', 'ntlm', 'digest', 'basic'] as const).filter((k) => o[k]);
  if (only.length > 0 && o.schemes !== undefined) throw new ConfigError(`--${only[0]} and --schemes: give one of them`);
  // `--schemes ''` is read (and refused), not taken as no --schemes.
  const schemes: SchemeName[] | undefined =
    o.schemes !== undefined
      ? parseSchemes(o.schemes as string)
      : only.length > 0
        ? only.map((k) => SCHEME_NAMES.find((s) => s.toLowerCase() === k)!)
        : undefined;
  const cacert = o.cacert ? caFile(o.cacert as string, '--cacert') : undefined;
  const ca = trustedCas(cacert, Boolean(o.caNative));
  // curl's proxy trust is its own: --cacert, --ca-native and -k are the origin's only.
  const proxyCacert = o.proxyCacert ? caFile(o.proxyCacert as string, '--proxy-cacert') : undefined;
  const proxyCa = trustedCas(proxyCacert, Boolean(o.proxyCaNative));
  const connect = {
    // -4/-6: net.connect's `family` for the names DNS answers (undici's connector passes it on);
    // routes.ts takes --resolve, IP addresses and localhost.
    ...(family ? { family } : {}),
    ...(ca.length > 0 ? { ca } : {}),
    ...(o.insecure ? { rejectUnauthorized: false } : {}),
    ...(o.connectTimeout ? { timeout: o.connectTimeout as number } : {}),
  };
  const negotiate = {
    ...(o.spn ? { spn: o.spn as string } : {}),
    ...(o.principal ? { principal: o.principal as string } : {}),
    ...(o.canonicalizeHost ? { canonicalizeHost: true } : {}),
    ...(o.delegate ? { delegate: true } : {}),
    ...(o.mutualAuth === false ? { mutualAuth: 'optional' as const } : {}),
    ...(o.ccache ? { ccache: o.ccache as string } : {}),
    ...(o.keytab ? { keytab: keytabName(o.keytab as string) } : {}),
  };
  const proxy = proxyOption(o, proxyCa, family);
  const user = o.user !== undefined ? parseUser(o.user as string) : urlUser;
  if (o.user !== undefined && user) checkBackslashes('-u', user.username);
  // netrc holds credentials per host; the agent has one set for all the URLs.
  const netrc = o.netrcFile !== undefined || o.netrc || o.netrcOptional;
  // `https://bob@host/` with --netrc: bob's password is the file's (curl's); `-u bob` asks for it.
  const netrcLogin = o.user === undefined && urlUser?.password === undefined ? urlUser?.username : undefined;
  if (
    (user === undefined || netrcLogin !== undefined) &&
    netrc &&
    new Set(transfers.map((t) => t.url.hostname)).size > 1
  )
    throw new ConfigError(
      '--netrc with URLs on different hosts: give -u, or run one command per host (netrc credentials are per host)',
    );
  // Without a user to read it for, the password would be dropped unread and the request go without
  // credentials (a 401, exit 0: a script goes on as if it had authenticated).
  if (o.passwordStdin && user === undefined && !netrc)
    throw new ConfigError(
      '--password-stdin reads the password of -u: give -u DOMAIN\\user too (-U takes its password in -U user:password)',
    );
  const proxyUser =
    o.proxyUser !== undefined && o.noproxy !== '*' && o.proxy !== '' ? parseUser(o.proxyUser as string) : undefined;
  const proxyUserToAsk = proxyUser?.password === undefined ? proxyUser?.username : undefined;
  const resolve = (o.resolve as string[] | undefined) ?? [];
  const connectTo = (o.connectTo as string[] | undefined) ?? [];
  const routes =
    resolve.length > 0 || connectTo.length > 0 || family ? new Routes(resolve, connectTo, family) : undefined;
  const agent: MultilegAgentOptions = {
    connect,
    ...(routes ? { connectTo: routes.connectTo } : {}),
    // curl sends Basic to an http:// URL the user named, and with -k to a server it did not verify;
    // S4 still keeps it to the trusted origins.
    allowBasicOverHttp: true,
    ...(schemes ? { schemes } : {}),
    ...(Object.keys(negotiate).length > 0 ? { negotiate } : {}),
    ...(certificate ? { clientCertificate: certificate } : {}),
    ...(proxy !== undefined ? { proxy } : {}),
    limits: {
      ...(o.maxLegs ? { maxLegs: o.maxLegs as number } : {}),
      ...(o.timeout ? { handshakeTimeout: o.timeout as number } : {}),
    },
  };
  return {
    url,
    transfers,
    unusedOutputs: outputs.length > transfers.length,
    helpMeant:
      cmd.args[0] === 'help'
        ? `${cmd.name() === 'multileg' && cmd.args[1] === 'doctor' ? 'multileg doctor' : cmd.name()} --help`
        : undefined,
    authorizationReplaces: 'authorization' in headers ? credentialsFlag(o, user, only) : undefined,
    hostReplaces: transfers.some((t) => hostElsewhere(t.url.origin, headers))
      ? credentialsFlag(o, user, only)
      : undefined,
    failEarly: Boolean(o.failEarly),
    // As given (curl sends `-X patch` as `patch`).
    method: transfers[0]!.method,
    customMethod: o.request !== undefined,
    headers,
    body: transfers[0]!.body,
    upload: transfers[0]!.upload,
    formType,
    autoReferer,
    http1,
    compressed: Boolean(o.compressed),
    include: Boolean(o.include) || head,
    head,
    verbose: Boolean(o.verbose),
    silent: Boolean(o.silent),
    showError: Boolean(o.showError),
    fail: Boolean(o.fail) && !o.failWithBody,
    failWithBody: Boolean(o.failWithBody),
    output: transfers[0]!.output,
    dumpHeader: o.dumpHeader as string | undefined,
    createDirs: o.createDirs === true,
    writeOut: writeOutFormat(o.writeOut as string | undefined),
    json: Boolean(o.json),
    har: o.har as string | undefined,
    location: Boolean(o.location) || Boolean(o.locationTrusted),
    locationTrusted: Boolean(o.locationTrusted),
    maxRedirs: o.maxRedirs as number,
    keepPost: new Set(([301, 302, 303] as const).filter((status) => o[`post${status}`] === true)),
    trust: ((o.trust as string[] | undefined) ?? []).map(parseTrust),
    maxTime: o.maxTime as number | undefined,
    retry:
      (o.retry as number | undefined) !== undefined && (o.retry as number) > 0
        ? {
            retries: o.retry as number,
            delayMs: (o.retryDelay as number | undefined) ?? 0,
            maxTimeMs: (o.retryMaxTime as number | undefined) ?? 0,
            allErrors: Boolean(o.retryAllErrors),
            connRefused: Boolean(o.retryConnrefused),
          }
        : undefined,
    user,
    passwordStdin: Boolean(o.passwordStdin),
    forgetRefusals: Boolean(o.forgetRefusals),
    netrc: netrc
      ? { file: o.netrcFile as string | undefined, optional: Boolean(o.netrcOptional), login: netrcLogin }
      : undefined,
    unusableCa: cacert && 'problem' in cacert ? cacert.problem : undefined,
    cacert: o.cacert as string | undefined,
    unusableProxyCa: proxyCacert && 'problem' in proxyCacert ? proxyCacert.problem : undefined,
    cookies:
      cookieFiles.length > 0 || cookieJar !== undefined
        ? { files: cookieFiles, jar: cookieJar, junkSession: Boolean(o.junkSessionCookies) }
        : undefined,
    agent,
    proxyUserToAsk,
    routes,
  };
}

/** The CAs a --cacert (--proxy-cacert) file and --ca-native (--proxy-ca-native) add: none, Node's own roots stay. */
function trustedCas(file: { text: string } | { problem: string } | undefined, native: boolean): string[] {
  return [
    ...(file && 'text' in file ? [file.text] : []),
    // The system store replaces Node's bundled roots in `ca`, so keep those too.
    ...(native ? [...getCACertificates('default'), ...getCACertificates('system')] : []),
  ];
}

/**
 * -x, --proxy-user, --noproxy (the environment's proxies when none is given); an https:// proxy is
 * verified with --proxy-cacert / --proxy-ca-native (or not, --proxy-insecure) as curl does, apart
 * from the origin's trust, and --connect-timeout bounds connecting to it — whether -x names it or
 * HTTPS_PROXY / HTTP_PROXY do.
 */
function proxyOption(
  o: Record<string, unknown>,
  ca: readonly string[],
  family: 4 | 6 | undefined,
): MultilegAgentOptions['proxy'] {
  // curl: `--noproxy '*'`, and `-x ""` which also overrides the environment's proxy.
  if (o.noproxy === '*' || o.proxy === '') return false;
  const connect =
    ca.length > 0 || o.proxyInsecure || family
      ? {
          ...(ca.length > 0 ? { ca: [...ca] } : {}),
          ...(o.proxyInsecure ? { rejectUnauthorized: false } : {}),
          // -4/-6 for the proxy's name too (curl resolves it so); the proxy looks up the origin's.
          ...(family ? { family } : {}),
        }
      : undefined;
  // The proxy's SPN, as --spn and --canonicalize-host set the server's (its Kerberos identity is
  // the command's: --keytab, --principal, --ccache carry over).
  const negotiate = {
    ...(o.proxySpn ? { spn: o.proxySpn as string } : {}),
    ...(o.proxyServiceName ? { serviceName: o.proxyServiceName as string } : {}),
    ...(o.proxyCanonicalizeHost ? { canonicalizeHost: true } : {}),
  };
  const common = {
    ...(connect ? { connect } : {}),
    ...(Object.keys(negotiate).length > 0 ? { negotiate } : {}),
    ...(o.connectTimeout ? { connectTimeout: o.connectTimeout as number } : {}),
    // curl shows a forwarding proxy's final 407 (exit 0, -f 22), as it shows a 401.
    deliver407: true,
  };
  // curl's --proxy-<scheme> flags: only those schemes towards the proxy (several may be given).
  const only = (['Negotiate', 'NTLM', 'Digest', 'Basic'] as const).filter(
    (k) => o[`proxy${k[0]}${k.slice(1).toLowerCase()}`],
  );
  const schemes = only.length > 0 ? { schemes: only } : {};
  if (o.proxy === undefined && o.proxyUser === undefined && o.noproxy === undefined) return { ...common, ...schemes };
  let uri: string | undefined;
  if (o.proxy !== undefined) {
    const text = o.proxy as string;
    uri = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://${text}`;
    try {
      new URL(uri);
    } catch {
      // curl's CURLE_COULDNT_RESOLVE_PROXY ("Unsupported proxy syntax"): 5, not bad usage.
      throw new UsageError(`-x ${redactUserinfo(text)}: not a proxy URL (e.g. http://proxy:3128)`, EXIT.resolveProxy);
    }
  }
  let credentials: ProxyOptions['credentials'];
  if (o.proxyUser !== undefined) {
    const u = parseUser(o.proxyUser as string);
    checkBackslashes('-U', u.username);
    if (u.username === '' && u.password !== '')
      throw new ConfigError(
        '--proxy-user: no user name before the colon; give user:password, or -U : for the Kerberos ticket',
      );
    // curl's `-U :` (with --proxy-negotiate): no user name, the Kerberos ticket authenticates to the
    // proxy; `-U user`: its password is asked for before the first request (proxyUserToAsk).
    if (u.username !== '' && u.password !== undefined) credentials = { username: u.username, password: u.password };
  }
  return {
    ...(uri ? { uri } : {}),
    ...(credentials ? { credentials } : {}),
    ...schemes,
    ...(o.noproxy !== undefined ? { noProxy: o.noproxy as string } : {}),
    ...common,
  };
}

/**
 * Whether the arguments may name a -K/--config file (a quick look: config.ts reads them properly);
 * a command line without one does not load config.ts.
 */
function mayNameConfig(argv: readonly string[]): boolean {
  return argv.some((a) => a === '--config' || a.startsWith('--config=') || /^-[^-]*K/.test(a));
}

/**
 * {@link parseCli} of the arguments with their -K files read in place (config.ts), or the exit code
 * for bad usage after one line on stderr (commander prints its own errors and --help/--version output).
 */
export async function parseCliOrExit(
  argv: readonly string[],
  name: string,
  cmd: Commander.Command = program(),
): Promise<CliRequest | number> {
  try {
    if (!mayNameConfig(argv)) return parseCli(argv, cmd);
    const expanded = (await import('./config.ts')).expandConfig(argv, cmd, name);
    return parseCli(expanded.argv, cmd, expanded.stdinReads);
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    if (err instanceof ConfigError) {
      process.stderr.write(`${name}: ${err.message}\n`);
      return err instanceof UsageError ? err.exit : 2;
    }
    throw err;
  }
}
