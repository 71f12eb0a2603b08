/**
 * Failures a CLI user can act on: exit codes like curl's, library messages rewritten to name CLI
 * flags, help for untrusted certificates, and why a 401 was not answered.
 */
import { existsSync } from 'node:fs';
import { parseChallenges } from '../challenge/index.ts';
import type { RedactedHeader } from '../diagnostics.ts';
import {
  CERTIFICATE_CODES,
  ConnectionClosedError,
  HandshakeTimeoutError,
  isFramingError,
  MultilegError,
  QueueTimeoutError,
  StreamRefusedError,
  SystemNtlmRefusedError,
} from '../errors.ts';
import { ticketFixes } from '../mechanisms/negotiate/errors.ts';
import type { Credentials } from '../mechanisms/types.ts';
import { portOf } from '../options.ts';
import {
  ProxyAuthenticationError,
  ProxyCertificateError,
  ProxyClosedError,
  ProxyConnectError,
  ProxyConnectTimeoutError,
  ProxyProtocolError,
  ProxyResponseTimeoutError,
  ProxyTimeoutError,
  ProxyUnreachableError,
  ProxyUrlError,
} from '../proxy/errors.ts';
import {
  ClientCertificateRefusedError,
  type ClientCertificateRequiredError,
  REFUSED_CERTIFICATE,
} from '../session/client-certificate.ts';
import type { HandshakeReport } from '../session/exchange.ts';
import { NtlmUnpairedError } from '../session/ntlm-pairing.ts';
import { realProxyVariables } from './proxy-env.ts';

/** Exit codes (README "Command line"); the network ones are curl's. */
export const EXIT = {
  ok: 0,
  failure: 1,
  /** curl's CURLE_UNSUPPORTED_PROTOCOL: a URL whose scheme is not http or https. */
  unsupportedProtocol: 1,
  usage: 2,
  /** curl's CURLE_URL_MALFORMAT: an argument that is not a URL. */
  badUrl: 3,
  /** curl's CURLE_COULDNT_RESOLVE_PROXY: a proxy whose name does not resolve, or a proxy URL that is not a URL. */
  resolveProxy: 5,
  resolve: 6,
  /** curl's CURLE_COULDNT_CONNECT: refused, and a proxy URL of a scheme not spoken (curl's "Unsupported proxy scheme"). */
  connect: 7,
  /** curl's CURLE_WEIRD_SERVER_REPLY: a response head that is not HTTP (a header without a colon, a bad Content-Length). */
  weirdReply: 8,
  /** curl's CURLE_PARTIAL_FILE: the connection ended before the whole body came. */
  partial: 18,
  httpError: 22,
  write: 23,
  /** curl's CURLE_READ_ERROR: a file a flag names (-w @file, -d @file, the netrc file) cannot be read. */
  read: 26,
  timeout: 28,
  redirects: 47,
  /** curl's CURLE_GOT_NOTHING: the server closed the connection without a byte of a response. */
  emptyReply: 52,
  receive: 56,
  /** curl's CURLE_BAD_CONTENT_ENCODING: --compressed could not decode the body (decode.ts). */
  badContentEncoding: 61,
  /** curl's CURLE_SSL_CERTPROBLEM: the local client certificate cannot be used. */
  clientCertificate: 58,
  certificate: 60,
  /** curl's CURLE_SSL_CACERT_BADFILE: the --cacert file is there but holds no usable CA certificate. */
  caFile: 77,
  /** curl's CURLE_SSL_CONNECT_ERROR: the TLS handshake failed (a plain-HTTP port, for one). */
  tls: 35,
  /** curl's CURLE_SETOPT_OPTION_SYNTAX: a --resolve or --connect-to entry that cannot be read. */
  optionSyntax: 49,
} as const;

/**
 * Where a refused connection went, when that is not the URL's host and port (--resolve,
 * --connect-to; curl names the address: "Failed to connect to 127.0.0.1 port 1").
 */
function reached(e: Error, url: URL): string {
  const { address, port } = e as { address?: unknown; port?: unknown };
  if (typeof address !== 'string' || typeof port !== 'number') return '';
  const same = address === url.hostname.replace(/^\[(.*)\]$/, '$1') && port === portOf(url);
  return same ? '' : ` at ${address} port ${port}`;
}

/** OpenSSL's codes for a peer that answered a ClientHello with something that is not TLS. */
const NOT_TLS_CODES: ReadonlySet<string> = new Set([
  'ERR_SSL_WRONG_VERSION_NUMBER',
  'ERR_SSL_PACKET_LENGTH_TOO_LONG',
  'ERR_SSL_UNKNOWN_PROTOCOL',
]);

/** The distinct schemes a 401's WWW-Authenticate (407's Proxy-Authenticate) offers. */
export function challengeSchemes(
  headers: readonly RedactedHeader[] | Record<string, string | string[] | undefined>,
  status: number,
): string[] {
  const name = status === 407 ? 'proxy-authenticate' : 'www-authenticate';
  const values = Array.isArray(headers)
    ? (headers as readonly RedactedHeader[]).filter(([n]) => n === name).map(([, v]) => v)
    : [(headers as Record<string, string | string[] | undefined>)[name] ?? []].flat();
  const seen = new Map<string, string>();
  // Redacted tokens are not token68: put a placeholder back so the challenge still parses.
  for (const c of parseChallenges(values.map((v) => v.replaceAll('[redacted]', 'x'))))
    if (!seen.has(c.schemeKey)) seen.set(c.schemeKey, c.scheme);
  return [...seen.values()];
}

/** The command's option that allows each scheme towards the proxy (curl's). */
const PROXY_FLAGS: Readonly<Record<string, string>> = {
  negotiate: '--proxy-negotiate',
  ntlm: '--proxy-ntlm',
  digest: '--proxy-digest',
  basic: '--proxy-basic',
};

/**
 * R4, the state file (refusals.ts): why no credentials went — the password for `credentials`'
 * user was refused at `place` by an earlier run (`refusedAt`), and is held back `heldBackMs` more.
 * The command's line (transfer.ts) and doctor's check say it in these words.
 */
export function heldBackWhy(place: string, credentials: Credentials, refusedAt: number, heldBackMs: number): string {
  const user = credentials.domain ? `${credentials.domain}\\${credentials.username}` : credentials.username;
  const ago = Math.max(0, Math.round((Date.now() - refusedAt) / 1000));
  return `the password for ${user}, refused by ${place} ${ago} s ago, is held back ${Math.ceil(heldBackMs / 1000)} s more so a wrong password does not lock the account`;
}

/** Library option names → the CLI flags that set them. Longest first, so prefixes do not win. */
const FLAGS: ReadonlyArray<readonly [RegExp, string | ((match: string, ...groups: string[]) => string)]> = [
  [/\blimits\.maxLegs\b/g, '--max-legs'],
  [/\blimits\.handshakeTimeout\b/g, '--timeout'],
  // R3: --timeout counts milliseconds where curl's timeouts count seconds: `--timeout 30` is 30 ms,
  // which a handshake waiting on GSS-API blames on the KDC. Under a second, the unit is said.
  [
    /\bwithin --timeout \((\d{1,3}) ms\)/g,
    (_all: string, ms: string) => `within --timeout (${ms} ms; it counts milliseconds: --timeout ${ms}000 is ${ms} s)`,
  ],
  [/\buse HTTP\/1\.1 \(allowH2: false\)/g, 'use HTTP/1.1 (--http1.1)'],
  // The proxy's Kerberos identity is the command's (--keytab, --principal, --ccache carry over, H5);
  // its SPN has flags of its own (--proxy-spn, --proxy-canonicalize-host), never the origin's.
  // (proxy.negotiate.mutualAuth stays named: the command leaves the proxy's at 'optional', where no
  // message asks for it.)
  [/\bproxy\.negotiate\.canonicalizeHost\b/g, '--proxy-canonicalize-host'],
  [/\bproxy\.negotiate\.includePort\b/g, '--proxy-spn HTTP@host:port'],
  [/\bproxy\.negotiate\.spn\b/g, '--proxy-spn'],
  [/\buse proxy\.negotiate\.keytab\b/g, 'use --keytab'],
  [/\bgive a client keytab \(proxy\.negotiate\.keytab\)/g, 'give a client keytab with --keytab FILE'],
  [/\bproxy\.negotiate\.principal\b/g, '--principal'],
  [/\bproxy\.negotiate\.ccache\b/g, '--ccache'],
  // The command's --spn and --canonicalize-host come with the URL's origin trusted: no --trust needed.
  [/ \(negotiate\.canonicalizeHost and negotiate\.spn need trustedOrigins, [^)]*\)/g, ''],
  [/(?<!proxy\.)\bnegotiate\.canonicalizeHost\b/g, '--canonicalize-host'],
  [/(?<!proxy\.)\bnegotiate\.includePort\b/g, '--spn HTTP@host:port'],
  [/(?<!proxy\.)\bnegotiate\.spn\b/g, '--spn'],
  [/\buse negotiate\.keytab\b/g, 'use --keytab'],
  [/\bgive a client keytab \(negotiate\.keytab\)/g, 'give a client keytab with --keytab FILE'],
  [/(?<!proxy\.)\bnegotiate\.mutualAuth: 'optional'/g, '--no-mutual-auth'],
  [/\bthe password in proxy\.credentials\b/g, "--proxy-user's password"],
  [/\bproxy\.credentials\b/g, '--proxy-user'],
  [/\bin proxy\.connect\.ca\b/g, 'with --proxy-cacert FILE or --proxy-ca-native'],
  [/\bproxy\.uri\b/g, '-x'],
  // The command reads only the lower-case http_proxy, as curl (main.ts).
  [/\bHTTPS_PROXY \/ HTTP_PROXY\b/g, 'HTTPS_PROXY / http_proxy'],
  [/\bproxy\.connectTimeout\b/g, '--connect-timeout'],
  // The command sets no headersTimeout of its own (undici's 300 s): -m bounds the whole transfer.
  [
    /\bheadersTimeout \(the agent's, or the request's\) sets how long to wait\b/g,
    '-m SECONDS (--max-time) ends the wait sooner',
  ],
  [/\bbypass it with NO_PROXY\b/g, 'bypass it with --noproxy (or NO_PROXY)'],
  [/ and check proxy\.schemes\b/g, ''],
  // T2: a proxy scheme whose challenge could not be read: the flags that allow its others (those
  // it offers, or where it named none, every other).
  [
    /\bthe proxy's (\S+(?: and \S+)*) challenge could not be read, (.*?): allow another scheme it (?:offers \(([^)]*)\)|accepts) in proxy\.schemes/g,
    (_all: string, unreadable: string, middle: string, offered?: string) => {
      const gone = new Set(unreadable.toLowerCase().split(' and '));
      const schemes = offered ? offered.split(', ') : Object.keys(PROXY_FLAGS).filter((k) => !gone.has(k));
      const flags = schemes.flatMap((s) => PROXY_FLAGS[s.toLowerCase()] ?? []);
      return `the proxy's ${unreadable} challenge could not be read, ${middle}: allow another scheme it ${
        offered ? `offers (${offered})` : 'accepts'
      }${flags.length ? ` with ${flags.join(' or ')}` : ''}`;
    },
  ],
  // With --proxy-user given (the credentials are there): the flags of the schemes the proxy offers
  // (the 407's, in the message's head), not those it does not take.
  [
    /\(407; offers ([^)]*)\)(.*?)\bcheck proxy\.schemes\b/gs,
    (_all: string, offered: string, middle: string) => {
      const flags = offered.split(', ').flatMap((s) => PROXY_FLAGS[s.toLowerCase()] ?? []);
      return `(407; offers ${offered})${middle}${
        flags.length
          ? `check ${flags.join('/')} (the proxy's; default --proxy-anyauth)`
          : 'it offers no scheme the command speaks'
      }`;
    },
  ],
  [
    /\bcheck proxy\.schemes\b/g,
    'check --proxy-negotiate/--proxy-ntlm/--proxy-digest/--proxy-basic (default --proxy-anyauth)',
  ],
  [/\bproxy\.negotiate with a Kerberos ticket\b/g, 'a Kerberos ticket for the proxy'],
  [/\bpass principal\b/g, 'pass --principal'],
  [/\bpass passphrase\b/g, 'pass --pass'],
  [/\bpass negotiate\.principal\b/g, 'pass --principal'],
  [/\bgive credentials\b/g, 'give -u user:password'],
  [/\bcheck credentials\b/g, 'check -u user:password'],
  [/\bcheck the credentials\b/g, 'check -u user:password'],
  [/\btrustedOrigins\b/g, '--trust'],
  // T3: the command has no selector; a certificate is --cert's.
  [/\bclientCertificate for (\S+): the server (requires|asks)\b/g, '$1: the server $2'],
  // (The command has no TLS version option: connect.maxVersion is the library's.)
  [
    /, or connect to this server with TLS 1\.2 \(connect: \{ maxVersion: 'TLSv1\.2' \}\), where it asks by renegotiation and the certificate is presented/g,
    " (this command's TLS is Node's; curl's offers post-handshake authentication)",
  ],
  [
    /\bgive clientCertificate: \{ cert, key \}, or a selector that returns one for \S+/g,
    'give one with --cert and --key',
  ],
  [/\bset allowBasicOverHttp: true in the MultilegAgent options\b/g, 'use --trust for that origin'],
];

/** Rewrites a library message for the command line. */
export function forCli(message: string): string {
  let out = message;
  for (const [pattern, flag] of FLAGS)
    out = typeof flag === 'string' ? out.replace(pattern, flag) : out.replace(pattern, flag);
  return realProxyVariables(out);
}

/**
 * M2: why no KDC could be found, when KRB5_CONFIG names no file that exists: MIT then reads no
 * krb5.conf at all (not /etc/krb5.conf either), so it knows no KDC — a typo in the variable, which
 * "check the realm's kdc entries in krb5.conf" does not point at. Empty otherwise.
 */
export function missingKrb5Config(code: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  const files = env.KRB5_CONFIG?.split(':').filter((f) => f !== '') ?? [];
  if (code !== 'MULTILEG_KRB_KDC_UNREACHABLE' || files.length === 0 || files.some((f) => existsSync(f))) return '';
  return `; KRB5_CONFIG=${env.KRB5_CONFIG} names no file that exists, so no krb5.conf was read: correct it, or unset it for /etc/krb5.conf`;
}

/**
 * M2: what the environment says of why Negotiate could not run, after the reasons (`unusable`): that
 * gss-ntlmssp's NTLM_USER_FILE is not taken (`curl`'s SPNEGO takes it, with no ticket) and what to do
 * `instead`, and a KRB5_CONFIG naming no file. For an origin's 401 and a proxy's 407 alike.
 */
export function negotiateEnvNotes(
  unusable: readonly { readonly code: string }[],
  fix: { readonly curl: string; readonly instead: string },
  env: NodeJS.ProcessEnv = process.env,
): string {
  const ntlmUserFile =
    env.NTLM_USER_FILE && unusable.some((u) => u.code === 'MULTILEG_KRB_NO_TICKET')
      ? `; NTLM_USER_FILE is set, but multileg's Negotiate does not take gss-ntlmssp's NTLM credentials from it (${fix.curl} does): ${fix.instead}`
      : '';
  return `${ntlmUserFile}${unusable.map((u) => missingKrb5Config(u.code, env)).find((note) => note !== '') ?? ''}`;
}

/** The innermost MultilegError or coded system error in `err`'s cause chain (fetch wraps ours). */
export function rootCause(err: unknown): Error & { code?: string } {
  let e = err as (Error & { code?: string; cause?: unknown }) | undefined;
  for (let depth = 0; e && depth < 8; depth++) {
    if (e instanceof MultilegError) return e;
    // DOMException's `code` is a number.
    const code = typeof e.code === 'string' ? e.code : '';
    if (CERTIFICATE_CODES.has(code) || /^E[A-Z]+$/.test(code) || code.startsWith('UND_ERR')) {
      const inner = e.cause as (Error & { code?: string }) | undefined;
      if (!inner || !(inner instanceof Error)) return e;
    }
    if (!(e.cause instanceof Error)) return e;
    e = e.cause as Error & { code?: string; cause?: unknown };
  }
  return (e ?? (err as Error)) as Error & { code?: string };
}

/** T3: the server refused the certificate given with --cert: by the TLS alert `code`, or (`answered`) nginx's page. */
const refusedCertificate = (host: string, code: string, answered?: string) =>
  `${host} refused the client certificate given with --cert ${answered ? `(it answered ${answered})` : `in the TLS handshake (${code})`}: give one issued by a CA it accepts (\`openssl s_client -connect ${host}\` lists them under "Acceptable client certificate CA names"), and check that it is valid today`;

/** A close or reset with --cert given: what a server that requires a certificate does with one it refuses. */
const REFUSED_CERTIFICATE_MAYBE =
  'if it requires a client certificate, it refused the one given with --cert: give one issued by a CA it accepts, valid today';

/** How a connection that ends mid-body shows (undici's, the system's, HTTP/2's stream reset). */
const PARTIAL_CODES: ReadonlySet<string> = new Set([
  'UND_ERR_SOCKET',
  'UND_ERR_RES_CONTENT_LENGTH_MISMATCH',
  'ECONNRESET',
  'ERR_HTTP2_STREAM_ERROR',
]);

export interface Failure {
  readonly exit: number;
  readonly message: string;
  /** The system error behind it (ECONNREFUSED: --retry-connrefused), when there is one. */
  readonly errno?: string;
  /**
   * A typed error that is not known to be transient (TRANSIENT_CODES): the credentials' refusal, a
   * failed mutual authentication, a scheme that cannot run, the configuration. Never retried (R4:
   * a wrong password sent again locks the account); when in doubt, not retried.
   */
  readonly refused?: boolean;
  /**
   * A Kerberos step could not reach the KDC (none answered within the handshake's time, or none
   * could be reached): transient for --retry, whose next attempt waits until the origin tries the
   * KDC again (KDC_RECHECK_MS).
   */
  readonly kdcSilent?: boolean;
}

/**
 * The library's errors that say nothing of the credentials, so `--retry-all-errors` may send the
 * transfer again: reaching a proxy, a wait or a handshake that ran out of time, a KDC that did not
 * answer, a connection that ended under the request. transfer.ts still holds an attempt back when
 * credentials in it went unanswered (the server may have counted them).
 */
const TRANSIENT_CODES: ReadonlySet<string> = new Set([
  'MULTILEG_PROXY_UNREACHABLE',
  'MULTILEG_PROXY_CONNECT_TIMEOUT',
  'MULTILEG_PROXY_RESPONSE_TIMEOUT',
  'MULTILEG_PROXY_CERTIFICATE',
  'MULTILEG_PROXY_CONNECT',
  'MULTILEG_PROXY_PROTOCOL',
  'MULTILEG_PROXY_CLOSED',
  'MULTILEG_CONNECTION_CLOSED',
  'MULTILEG_PROXY_TIMEOUT',
  'MULTILEG_QUEUE_TIMEOUT',
  'MULTILEG_QUEUE_FULL',
  'MULTILEG_HANDSHAKE_TIMEOUT',
  'MULTILEG_KRB_KDC_UNREACHABLE',
  'MULTILEG_STALE_CONNECTION',
  'MULTILEG_RELOCATION_LIMIT',
  // Refused unprocessed (RFC 9113 §8.7): no credential was counted, and the request may go again.
  'MULTILEG_STREAM_REFUSED',
]);

/** What to tell the user about a failed transfer, and the exit code. */
export function describeFailure(
  err: unknown,
  ctx: {
    url: URL;
    maxTime: number | undefined;
    /** Set when the failure came while reading the body: the bytes received, and how many were announced. */
    midBody?: { received: number; expected: number | undefined } | undefined;
    /** The --cacert file given, if one was. */
    cacert?: string | undefined;
    /** A client certificate was given (--cert): a server that refuses the handshake may be refusing it. */
    clientCertificate?: boolean | undefined;
  },
): Failure {
  const e = rootCause(err);
  const host = ctx.url.host;
  // --compressed's body that does not decode (decode.ts's ContentEncodingError, told by its code:
  // this module does not load that one). curl's 61; not refused, so --retry-all-errors retries it.
  if (e instanceof MultilegError && e.code === 'MULTILEG_CONTENT_ENCODING')
    return { exit: EXIT.badContentEncoding, message: `${e.message} (${e.code})`, refused: false };
  if (e instanceof ConnectionClosedError && e.fresh && !(e instanceof ProxyClosedError)) {
    // The origin closed a new connection under its first request: the command's words for it, as
    // curl's 52 "Empty reply from server" / 56 "Recv failure", and what a TLS port does with a
    // plain request (a reset, as before, without the hint). With --cert, what a server that
    // requires a client certificate does with one it does not accept (TLS 1.3: after the handshake).
    const peer = new URL(e.peer);
    const hint =
      peer.protocol === 'http:'
        ? '; is it an https:// port?'
        : ctx.clientCertificate
          ? `; ${REFUSED_CERTIFICATE_MAYBE}`
          : '';
    // A head cut short is curl's 56 ("Recv failure"), as a reset is: something came, then the end.
    return {
      exit: e.reset || e.headBytes > 0 ? EXIT.receive : EXIT.emptyReply,
      message: e.reset
        ? `${peer.host} reset the connection (${e.code})`
        : e.headBytes > 0
          ? `${peer.host} closed the connection after ${e.headBytes} bytes of a response head, before its end (${e.code})`
          : `empty reply from ${peer.host}: it closed the connection without answering (${e.code})${hint}`,
      refused: false,
    };
  }
  // T3: the agent's word for a certificate refused in the TLS handshake, or by nginx's 400 page (curl
  // shows that page and exits 0: here it is the TLS failure it stands for). A close without an alert
  // is told as its close is (curl's 52 or 56, the hint that the certificate may be why).
  if (e instanceof ClientCertificateRefusedError)
    return e.alert || e.answered
      ? { exit: EXIT.tls, message: `${refusedCertificate(host, e.alert ?? '', e.answered)} (${e.code})`, refused: true }
      : { ...describeFailure(e.cause, ctx), refused: true };
  // S6/R4: -H 'Authorization: NTLM …' (or Negotiate) holding an NTLM AUTHENTICATE, the second leg
  // of a handshake another client ran on a connection of its own (a request copied from a
  // browser's developer tools): the command ran no NEGOTIATE for it, so it pairs with nothing and
  // went nowhere. The library's words are a gateway's (relay Auth-ID, one agent for both legs).
  if (e instanceof NtlmUnpairedError) {
    const copied =
      'holds an NTLM AUTHENTICATE, the second leg of a handshake run on another connection (a request copied from a browser?)';
    // S6/H1 (proxy-leg): -H 'Proxy-Authorization: NTLM …' beside it. A forwarding proxy's NTLM login
    // holds for one proxy connection, so its leg picks the connection, and the origin's AUTHENTICATE
    // cannot go where its CHALLENGE came from. No run of the command has that connection: -u and -U.
    const message =
      e.reason === 'proxy-leg'
        ? `the Authorization given with -H ${copied}, and the Proxy-Authorization given with -H beside it an NTLM leg for the proxy: that leg decides which proxy connection the request goes on (the proxy's handshake runs there), not the one that carried ${host}'s CHALLENGE, so the AUTHENTICATE was not sent (${host} would check it against no handshake and count a wrong password toward the account's lockout); drop both headers and give -u DOMAIN\\user with --ntlm or --negotiate for the server, -U user:password with --proxy-ntlm for the proxy`
        : e.proxy !== undefined
          ? `the Proxy-Authorization given with -H ${copied}: it was not sent, since proxy ${e.proxy} would check it against no handshake of this command's and count a wrong password toward the account's lockout; drop the header and give -U user:password with --proxy-ntlm`
          : `the Authorization given with -H ${copied}: it was not sent, since ${host} would check it against no handshake of this command's and count a wrong password toward the account's lockout; drop the header and give -u DOMAIN\\user with --ntlm or --negotiate`;
    return { exit: EXIT.failure, message: `${message} (${e.code})`, refused: true };
  }
  // S1: no login was made for the origin's 401 (the system's SPNEGO chose NTLM, the logged-on user's
  // password, where none may go). curl ends a login it does not make with the server's 401: 22 with
  // -f, else 0 with the page shown (http.c, authproblem). No page comes with this error, and 0 would
  // tell a script the transfer worked: 22. (The command's agent always has trustedOrigins, so its own
  // runs do not raise it today: this keeps the error from ending as a bare 1 if one ever does.)
  if (e instanceof SystemNtlmRefusedError)
    return {
      exit: EXIT.httpError,
      message: `${host} offered Negotiate, and the system's Negotiate (SSPI or gss-ntlmssp) answered with NTLM, which proves the logged-on user's password, not with a Kerberos ticket: not sent, as ${e.origin} may have no password; give --trust ${e.origin} if it is meant to have it, or get a Kerberos ticket it takes (kinit; multileg doctor URL checks the SPN) (${e.code})`,
      refused: true,
    };
  if (e instanceof MultilegError) {
    // The proxy's failures exit as curl 8.21's do for the proxy: 5, 7, 60, 28, 56.
    const exit =
      e instanceof ProxyUnreachableError
        ? e.reason === 'resolve'
          ? EXIT.resolveProxy
          : EXIT.connect
        : e instanceof ProxyCertificateError
          ? EXIT.certificate
          : // Any of our time limits is curl's 28, "Operation timed out", as -m's is.
            e instanceof ProxyConnectTimeoutError ||
              e instanceof ProxyResponseTimeoutError ||
              e instanceof ProxyTimeoutError ||
              e instanceof HandshakeTimeoutError ||
              e instanceof QueueTimeoutError
            ? EXIT.timeout
            : // curl 8.20+'s 7 for a CONNECT the proxy answered without opening the tunnel (a final
              // 407 included; 7.88 said 56); a plain http:// URL goes through a forwarding proxy, no CONNECT.
              e instanceof ProxyConnectError || (e instanceof ProxyAuthenticationError && ctx.url.protocol === 'https:')
              ? EXIT.connect
              : // curl's 56 for a proxy that closed the connection instead ("Proxy CONNECT aborted");
                // a forwarding proxy's answer not read as HTTP is curl 7.88's 1 ("Received HTTP/0.9").
                e instanceof ProxyProtocolError
                ? e.cause instanceof Error && isFramingError(e.cause)
                  ? EXIT.failure
                  : EXIT.receive
                : // T3: the server refused the TLS handshake without a client certificate (curl's 35);
                  // one asked for after it, by a renegotiation it then failed, is curl's 56 (SSL_read).
                  e.code === 'MULTILEG_CLIENT_CERTIFICATE_REQUIRED'
                  ? (e as ClientCertificateRequiredError).afterHandshake
                    ? EXIT.receive
                    : EXIT.tls
                  : // T3: asked for after the TLS 1.3 handshake, which Node's TLS cannot answer (curl can).
                    e.code === 'MULTILEG_CLIENT_CERTIFICATE_AFTER_HANDSHAKE'
                    ? EXIT.tls
                    : // curl's 52, "Empty reply from server": the origin or proxy closed without a byte of an
                      // answer; reset or a head cut short, curl 7.88's 56 ("Recv failure").
                      e instanceof ConnectionClosedError
                      ? // An HTTP/2 stream reset (R1): after the head, curl's 18, the body stopped short;
                        // before any response, 56, as a refused stream's.
                        e.streamReset !== undefined
                        ? e.responseCut
                          ? EXIT.partial
                          : EXIT.receive
                        : // (A challenge's body cut by the close: something came, then the end.)
                          e.reset || e.headBytes > 0 || e.challengeCut !== undefined
                          ? EXIT.receive
                          : EXIT.emptyReply
                      : // curl's 56 for a server that refuses every stream ("Connection died, tried 5
                        // times before giving up", after its own fresh connections).
                        e instanceof StreamRefusedError
                        ? EXIT.receive
                        : // curl's "Unsupported proxy syntax" (5) and "Unsupported proxy scheme" (7): a proxy
                          // variable is read when a request would use it, as curl reads it per transfer.
                          e instanceof ProxyUrlError
                          ? e.problem === 'syntax'
                            ? EXIT.resolveProxy
                            : EXIT.connect
                          : EXIT.failure;
    return {
      exit,
      message: `${forCli(e.message)} (${e.code})`,
      ...(e instanceof ProxyUnreachableError ? { errno: e.systemCode } : {}),
      refused: !TRANSIENT_CODES.has(e.code),
      ...((e instanceof HandshakeTimeoutError && e.inMechanismStep) || e.code === 'MULTILEG_KRB_KDC_UNREACHABLE'
        ? { kdcSilent: true }
        : {}),
    };
  }
  const code = typeof e.code === 'string' ? e.code : '';
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID')
    // A CA does not fix this: the certificate is for other names, so the URL must use one of them.
    return { exit: EXIT.certificate, message: wrongName(host, ctx.url.hostname, certificateNames(e)) };
  if (CERTIFICATE_CODES.has(code)) {
    // Nor does a CA fix a certificate out of its dates: the server's, or this machine's clock.
    if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID')
      return {
        exit: EXIT.certificate,
        message: `the certificate of ${host} is not valid now (${code}): ${outOfDatesFix(code)}; -k skips the check (unsafe)`,
      };
    return {
      exit: EXIT.certificate,
      message: `the certificate of ${host} is not trusted (${code}): ${untrustedFix(ctx.cacert)}, or add --ca-native to trust the operating system's store where corporate CAs live; -k skips the check (unsafe)`,
    };
  }
  if (NOT_TLS_CODES.has(code))
    return { exit: EXIT.tls, message: `${host} did not speak TLS: is it an http:// port? (${code})` };
  // T3: an alert that refuses the client certificate given (an unknown CA, a bad or expired one).
  if (ctx.clientCertificate && REFUSED_CERTIFICATE.test(code))
    return { exit: EXIT.tls, message: refusedCertificate(host, code) };
  // OpenSSL's own text is two lines with a source path: the code says it. A handshake_failure alert
  // is also what a server that shares no cipher or TLS version sends: with --cert, either may be why.
  if (code.startsWith('ERR_SSL_'))
    return {
      exit: EXIT.tls,
      message: `the TLS handshake with ${host} failed (${code})${
        ctx.clientCertificate && code.endsWith('_ALERT_HANDSHAKE_FAILURE')
          ? `; ${REFUSED_CERTIFICATE_MAYBE}, or the two sides share no TLS version or cipher`
          : ''
      }`,
    };
  // A TLS port that answers a plain request with a TLS record (an alert): curl 7.88's 1, "Received
  // HTTP/0.9 when not allowed"; undici's parser error keeps the bytes it could not read.
  if (
    e.name === 'HTTPParserError' &&
    ctx.url.protocol === 'http:' &&
    /^[\x15\x16]\x03/.test(String((e as { data?: unknown }).data))
  )
    return { exit: EXIT.failure, message: `${host} answered in TLS, not HTTP: is it an https:// port? (${e.message})` };
  if (isFramingError(e)) return framingFailure(e, host, ctx.midBody !== undefined);
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN')
    return { exit: EXIT.resolve, message: `could not resolve host ${ctx.url.hostname}` };
  // -4 or -6 and an IP address of the other family (routes.ts): curl's 7, the reason its own.
  if (code === 'EAFNOSUPPORT')
    return { exit: EXIT.connect, message: `could not connect to ${host}: ${e.message}`, errno: code };
  if (code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH')
    return { exit: EXIT.connect, message: `could not connect to ${host}${reached(e, ctx.url)} (${code})`, errno: code };
  if (code === 'UND_ERR_CONNECT_TIMEOUT')
    return {
      exit: EXIT.timeout,
      message: `connecting to ${host} timed out; raise --connect-timeout or check the network`,
    };
  // undici's own bounds on a server that stops answering (300 s each; the command sets no other):
  // a timeout, curl's 28, which --retry retries as it does -m's. curl itself would wait forever.
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT')
    return {
      exit: EXIT.timeout,
      message: `${host} ${code === 'UND_ERR_HEADERS_TIMEOUT' ? 'sent no response' : 'sent nothing more of the body'} for 300 s (${code}): the server is stuck or overloaded; -m SECONDS (--max-time) ends the wait sooner`,
    };
  if (ctx.midBody && PARTIAL_CODES.has(code)) {
    // curl's 18: the head came, the body stopped short.
    const left =
      ctx.midBody.expected !== undefined && ctx.midBody.expected > ctx.midBody.received
        ? ` with ${ctx.midBody.expected - ctx.midBody.received} bytes of the body still to come`
        : ' before the end of the body';
    return { exit: EXIT.partial, message: `${host} closed the connection${left} (${code})` };
  }
  if (code === 'UND_ERR_SOCKET') {
    // What a TLS port does with a plain-HTTP request, among others: say so.
    const hint = ctx.url.protocol === 'http:' ? '; is it an https:// port?' : '';
    // Not a byte of a response came back (undici's socket counts what it read, after TLS): curl's
    // 52, "Empty reply from server". A response cut short in its head stays 56.
    if ((e as { socket?: { bytesRead?: number } }).socket?.bytesRead === 0)
      return {
        exit: EXIT.emptyReply,
        message: `empty reply from ${host}: it closed the connection without answering (${code})${hint}`,
      };
    return { exit: EXIT.receive, message: `${host} closed the connection (${code})${hint}` };
  }
  if (code === 'ECONNRESET')
    // curl's 56 too ("Recv failure: Connection reset by peer"); mid-body it is 18, above.
    return {
      exit: EXIT.receive,
      message: `${host} reset the connection (${code})${ctx.clientCertificate && ctx.url.protocol === 'https:' ? `; ${REFUSED_CERTIFICATE_MAYBE}` : ''}`,
    };
  if (e.name === 'TimeoutError' || (e.name === 'AbortError' && ctx.maxTime !== undefined))
    return { exit: EXIT.timeout, message: `operation timed out after ${ctx.maxTime} ms (--max-time)` };
  return { exit: EXIT.failure, message: `${e.message}${code ? ` (${code})` : ''}` };
}

/** llhttp's reasons for a status line it could not read (an HTTP/0.9 reply, a status of other than three digits). */
const STATUS_LINE_REASON = /Expected HTTP\/|version|Expected dot|status|response line|start line/i;

/**
 * A response undici could not frame, as curl 7.88 exits on the same bytes (checked side by side):
 * a status line that is not HTTP's, 1 ("Received HTTP/0.9", "Unsupported response code"); a broken
 * chunked body or anything else once the body has begun, 56 ("Illegal or missing hexadecimal
 * sequence in chunked-encoding"); a head it cannot read or a body longer than its Content-Length
 * (a header without a colon, an invalid or second Content-Length, Content-Length with
 * Transfer-Encoding), 8, "Weird server reply". undici drops llhttp's error code (its message keeps
 * the reason), so the reason is read from the message.
 */
function framingFailure(e: Error, host: string, midBody: boolean): Failure {
  const reason = /\((.*)\)$/.exec(e.message)?.[1] ?? e.message;
  const exit =
    /chunk/i.test(reason) || midBody ? EXIT.receive : STATUS_LINE_REASON.test(reason) ? EXIT.failure : EXIT.weirdReply;
  const what =
    (e as { code?: unknown }).code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH'
      ? 'a body whose length is not what its Content-Length said (or two Content-Length headers, or one with Transfer-Encoding)'
      : `a response that is not valid HTTP/1.1 (${reason})`;
  return { exit, message: `${host} sent ${what}: the server, or something between, is broken` };
}

/**
 * The names a certificate is for, from Node's ERR_TLS_CERT_ALTNAME_INVALID error (its `cert`):
 * the subjectAltName entries (`DNS:localhost, IP Address:127.0.0.1`), else the subject's CN.
 */
export function certificateNames(err: unknown): string[] {
  const cert = (err as { cert?: { subjectaltname?: unknown; subject?: { CN?: unknown } } } | undefined)?.cert;
  if (typeof cert?.subjectaltname === 'string' && cert.subjectaltname !== '')
    return cert.subjectaltname
      .split(', ')
      .filter((n) => /^(?:DNS|IP Address):./.test(n))
      .map((n) => n.slice(n.indexOf(':') + 1));
  const cn = cert?.subject?.CN;
  return typeof cn === 'string' ? [cn] : [];
}

/** A certificate for other names than the URL's host: the fix is a name it is for, not a CA. */
export function wrongName(host: string, hostname: string, names: readonly string[]): string {
  const what = names.length === 0 ? `is not for the name ${hostname}` : `is for ${names.join(', ')}, not ${hostname}`;
  return `the certificate of ${host} ${what} (ERR_TLS_CERT_ALTNAME_INVALID): ${wrongNameFix(names)}`;
}

/**
 * The fix for a certificate no trusted CA issued: its CA with --cacert, or, when a --cacert file
 * was given (and used: it parsed), that the file holds another CA than the issuer.
 */
export function untrustedFix(cacert: string | undefined): string {
  return cacert
    ? `--cacert ${cacert} holds no CA that issued it: give that CA's certificate`
    : 'give its CA with --cacert FILE (or NODE_EXTRA_CA_CERTS=FILE)';
}

/** The fix for a certificate out of its dates (CERT_HAS_EXPIRED, CERT_NOT_YET_VALID): not a CA. */
export function outOfDatesFix(code: 'CERT_HAS_EXPIRED' | 'CERT_NOT_YET_VALID'): string {
  return `the server must ${code === 'CERT_HAS_EXPIRED' ? 'renew it' : 'use one valid today'}, or this machine's clock is wrong`;
}

/** What fixes a certificate issued to other names (the names, when known). */
export function wrongNameFix(names: readonly string[]): string {
  const use =
    names.length === 0
      ? 'use a name the certificate was issued to in the URL'
      : `use ${names.length > 1 ? 'one of those names' : 'that name'} in the URL`;
  return `${use}; -k skips the check (unsafe)`;
}

/** The NTLM-fallback hint of a Negotiate error (KerberosNoTicketError), meant for an origin. */
const NTLM_FALLBACK_HINT = / \(or give credentials for the NTLM fallback\)/;

/** A Negotiate error's message without its hint to give credentials for the NTLM fallback: where they were given. */
export const withoutFallbackHint = (message: string): string => message.replace(NTLM_FALLBACK_HINT, '');

/**
 * Why a forwarding proxy's 407 stood (shown as curl shows it): `sent`, it refused the credentials
 * the request carried; else none went, and `unusable` says why where a mechanism could not run.
 * `schemes`: the proxy's schemes (--proxy-ntlm…) when restricted.
 */
export function explain407(ctx: {
  readonly proxy: string;
  readonly offered: readonly string[];
  readonly sent: boolean;
  readonly unusable: readonly { readonly code: string; readonly message: string }[];
  readonly schemes?: readonly string[] | undefined;
  /**
   * None went because the proxy refused them lately (R4): how long they are held back still, whose
   * password (`user`), and when the refusal was (`at`, from the state file: another run's).
   */
  readonly heldBack?: { readonly ms: number; readonly user?: string | undefined; readonly at?: number | undefined };
}): string {
  const head = `proxy ${ctx.proxy} answered 407 and offered ${ctx.offered.join(', ') || 'no scheme'}`;
  if (ctx.sent) return `${head}: it refused the credentials; check --proxy-user (DOMAIN\\user:password)`;
  const held = ctx.heldBack;
  if (held) {
    const whose = held.user ? `the password for ${held.user}` : 'the --proxy-user password';
    const when = held.at === undefined ? 'lately' : `${Math.max(0, Math.round((Date.now() - held.at) / 1000))} s ago`;
    return `${head}: no credentials were sent: ${whose}, refused by it ${when}, is held back ${Math.ceil(held.ms / 1000)} s more so a wrong password does not lock the account; fix the password, or pass --forget-refusals to try it now`;
  }
  const enabled = (pattern: RegExp) =>
    ctx.offered.some(
      (s) => pattern.test(s) && (!ctx.schemes || ctx.schemes.some((e) => e.toLowerCase() === s.toLowerCase())),
    );
  // A password answers only NTLM, Digest or Basic: the proxy's Negotiate has no NTLM fallback.
  const password = enabled(/^(ntlm|digest|basic)$/i);
  if (ctx.unusable.length === 0)
    return `${head}: give --proxy-user user:password${enabled(/^negotiate$/i) || !password ? ' (or a Kerberos ticket for the proxy)' : ''}`;
  const why = ctx.unusable.map((u) => `${forCli(u.message)} (${u.code})`);
  const notes = negotiateEnvNotes(ctx.unusable, {
    curl: 'curl --proxy-negotiate',
    instead: password
      ? 'give --proxy-user DOMAIN\\user:password for NTLM'
      : 'get a Kerberos ticket for the proxy (kinit)',
  });
  return `${head}: ${why.join('; ')}${notes}${password ? '; or give --proxy-user user:password' : ''}`;
}

/**
 * Why the netrc credentials of the URL's host do not go to `origin` (CVE-2024-11053, CVE-2025-0167):
 * the file gives its host others. For -L's warning, and the 401's explanation, which adds the fix.
 */
export function netrcOtherHost(origin: string, netrcFile: string | undefined): string {
  return `${netrcFile ?? 'the netrc file'} gives ${new URL(origin).hostname} credentials of its own (its entry, or the default one), and netrc credentials go to their own host only`;
}

/**
 * The netrc file the command's password came from, for the fix that names it: -u (or the URL's
 * user:password) wins over a netrc file, which gave them only without one — or the password of
 * the URL's user without a password (`https://bob@host/`).
 */
export function netrcFileOf(req: {
  readonly user: unknown;
  readonly netrc: { readonly file: string | undefined; readonly login?: string | undefined } | undefined;
}): string | undefined {
  const fromFile = req.user === undefined || req.netrc?.login !== undefined;
  return fromFile && req.netrc ? (req.netrc.file ?? '~/.netrc (or $NETRC)') : undefined;
}

/**
 * Handshake `h`'s opening leg met the server's final 401 (failure `opening`: an NTLM NEGOTIATE,
 * alone or inside SPNEGO, which holds no password): what happened, why (Kerberos skipped), and the
 * fix, for the command's 401 explanation and doctor's authentication check alike. Not a wrong
 * password: none was sent.
 */
export function openingRefusal(h: Pick<HandshakeReport, 'scheme' | 'fallbackReason'>): {
  readonly what: string;
  readonly why?: string;
  readonly fix: string;
} {
  if (h.scheme.toLowerCase() !== 'negotiate')
    return {
      what: `it refused the opening of the ${h.scheme} handshake, before any password was sent: it would not start one here`,
      fix: 'it may want another scheme it offers: run with -v, or multileg doctor URL',
    };
  // Kerberos was skipped (no ticket, say) and NTLM went inside Negotiate; with no reason, the
  // system's GSS-API chose NTLM itself (no ticket in the cache). Either way it wants Kerberos.
  const reason = h.fallbackReason;
  const code = reason?.replace(/:.*/, '');
  return {
    what: 'it takes no NTLM here: it refused the NTLM opening inside Negotiate, before any password was sent',
    ...(reason !== undefined ? { why: `Kerberos was skipped: ${ticketFixes(code) ? code : forCli(reason)}` } : {}),
    fix:
      reason === undefined || ticketFixes(code)
        ? 'the server wants Kerberos: get a ticket (kinit)'
        : 'the server wants Kerberos: make Kerberos work here (multileg doctor URL names the fix)',
  };
}

/**
 * What to do when the server refused the credentials of handshake `h` (a 401 that stood after it),
 * `offered` the schemes of that 401, `netrcFile` the netrc file the password came from: the
 * command's 401 explanation and doctor's authentication check give the same fix.
 */
export function refusalFix(
  h: Pick<HandshakeReport, 'scheme' | 'fallbackReason' | 'failure'>,
  offered: readonly string[],
  netrcFile?: string,
): string {
  // No password was refused: the server would not take the handshake's opening.
  if (h.failure === 'opening') return openingRefusal(h).fix;
  // Kerberos only when Negotiate ran Kerberos (not NTLM inside it, as after a fallback).
  const kerberos = h.scheme.toLowerCase() === 'negotiate' && h.fallbackReason === undefined;
  const fix = kerberos
    ? // A server may also take no Kerberos at all (an SPNEGO reject): NTLM, where offered, avoids it.
      'check the Kerberos ticket (klist) and the service name (--spn); if the server takes no Kerberos here, --ntlm -u DOMAIN\\user (where it offers NTLM)'
    : netrcFile !== undefined
      ? `check the login and password for this host in ${netrcFile} (DOMAIN\\user)`
      : 'check -u user:password (DOMAIN\\user)';
  return `${fix}${kerberosOnlyNote(h, offered)}`;
}

/**
 * The password went through NTLM inside Negotiate because Kerberos could not run: a server that
 * offers no NTLM of its own may take Kerberos only, and refuse a right password there too. Says so,
 * with why Kerberos was skipped; '' where the server offers NTLM too (or Kerberos ran).
 * A ticket (kinit) is the fix only when the want of one skipped Kerberos: with an unknown SPN,
 * an unreachable KDC or a skewed clock the user may well have one, so the cause is named instead.
 */
function kerberosOnlyNote(h: Pick<HandshakeReport, 'scheme' | 'fallbackReason'>, offered: readonly string[]): string {
  const reason = h.fallbackReason;
  if (!passwordInsideNegotiate(h) || reason === undefined || offered.some((s) => s.toLowerCase() === 'ntlm')) return '';
  return ticketFixes(reason.replace(/:.*/, ''))
    ? `; or, if it takes Kerberos only, get a ticket (kinit): Kerberos was skipped (${reason.replace(/:.*/, '')}) and the password went as NTLM inside Negotiate`
    : `; or, if it takes Kerberos only, make Kerberos work here (multileg doctor URL names the fix): Kerberos was skipped (${forCli(reason)}) and the password went as NTLM inside Negotiate`;
}

/** Negotiate carried the password as NTLM inside it (Kerberos was skipped, M5), not a Kerberos ticket. */
function passwordInsideNegotiate(h: Pick<HandshakeReport, 'scheme' | 'fallbackReason'>): boolean {
  return h.scheme.toLowerCase() === 'negotiate' && h.fallbackReason !== undefined;
}

/**
 * What the server refused in handshake `h`, for the 401's explanation: the password where it went as
 * NTLM inside Negotiate, so that the user checks the password, not a Kerberos ticket (it said "our
 * Negotiate credentials"). Why Kerberos was skipped is said here unless the fix's note says it.
 */
function refusedCredentials(h: Pick<HandshakeReport, 'scheme' | 'fallbackReason'>, offered: readonly string[]): string {
  const reason = h.fallbackReason;
  if (!passwordInsideNegotiate(h) || reason === undefined) return `our ${h.scheme} credentials`;
  const code = reason.replace(/:.*/, '');
  const why = kerberosOnlyNote(h, offered)
    ? ''
    : ` (Kerberos was skipped: ${ticketFixes(code) ? code : forCli(reason)})`;
  return `the password, sent as NTLM inside Negotiate${why},`;
}

/**
 * S4: an http:// origin the command does not trust (a redirect led there, the netrc file gives its
 * host credentials of its own, or a Host header names it) challenged, and the agent sent nothing
 * (CleartextCredentialsError): what explain401 says of such a 401 over https, naming the origin
 * and the fix, and that the fix sends the credentials unencrypted. `origin`: the one that answered;
 * `refused`: the error's, which is the name a -H Host gives an address URL (behind it the agent
 * decides trust for the name), when it is another; `netrcNamesOther` is said of `refused`.
 */
export function explainCleartext(ctx: {
  readonly origin: string;
  readonly refused?: string | undefined;
  readonly offered: readonly string[];
  readonly netrcNamesOther: boolean;
  readonly netrcFile: string | undefined;
}): string {
  const offered = ctx.offered.length > 0 ? ctx.offered.join(', ') : 'a scheme of the command';
  const head = `${ctx.origin} answered 401 and offered ${offered}; no credentials were sent over cleartext http://`;
  const named = ctx.refused;
  if (named !== undefined && named !== ctx.origin) {
    // The address answered for the name: the URL with the name in it, reaching that address.
    const dialled = new URL(ctx.origin);
    const inUrl = `--resolve ${new URL(named).hostname}:${dialled.port || '80'}:${dialled.hostname} ${named}/…`;
    const why = `${head} to ${named}, which -H 'Host: …' names (credentials go by the name, not the address)`;
    if (ctx.netrcNamesOther)
      return `${why}: ${netrcOtherHost(named, ctx.netrcFile)}, whatever --trust says: put the name in the URL in place of the header (${inUrl}) for its own, or give -u and --trust ${named}`;
    return `${why}: add --trust ${named} to send them in the clear, or put the name in the URL in place of the header (${inUrl}; https:// keeps them encrypted where the server has it)`;
  }
  if (ctx.netrcNamesOther)
    return `${head}: ${netrcOtherHost(ctx.origin, ctx.netrcFile)}, whatever --trust or --location-trusted say: request ${ctx.origin} in a command of its own, or give -u`;
  return `${head}: ${ctx.origin} is not the URL's origin (a redirect led here); add --trust ${ctx.origin} or use --location-trusted if it is meant to have them in the clear, or have the redirect lead to https://`;
}

/** Why the CLI sent no credentials that the server accepted, in one or two lines. */
export function explain401(ctx: {
  readonly origin: string;
  readonly offered: readonly string[];
  readonly trusted: boolean;
  /**
   * Not trusted because the netrc file the credentials came from gives this origin's host other
   * credentials (its own entry, or the default one): `--trust` and `--location-trusted` do not
   * carry the URL host's there. The netrc file is `netrcFile`.
   */
  readonly netrcNamesOther?: boolean | undefined;
  readonly hasPassword: boolean;
  /** A client certificate was given (--cert): a Transport 401 after it is its refusal. */
  readonly hasCertificate?: boolean | undefined;
  /** Where the user and password came from when not from -u: the netrc file that gave them. */
  readonly netrcFile?: string | undefined;
  readonly schemes: readonly string[] | undefined;
  readonly handshakes: readonly HandshakeReport[];
  /**
   * The request carried the caller's own Authorization (-H), which the agent sends as it is and
   * never answers for (S6); `replaces`, the flag whose credentials it kept unused.
   */
  readonly ownAuthorization?: { readonly replaces: string | undefined } | undefined;
  /**
   * R4: the request went without the credentials because the server refused them (or left them unanswered) lately (an
   * earlier URL's handshake): how long (ms) they are still kept back.
   */
  readonly keptBackMs?: number | undefined;
}): string {
  const offered = ctx.offered.length > 0 ? ctx.offered.join(', ') : 'no scheme';
  const head = `${ctx.origin} answered 401 and offered ${offered}`;
  const own = ctx.ownAuthorization;
  if (own)
    return own.replaces !== undefined
      ? `${head}; it refused the Authorization given with -H, which replaces ${own.replaces}: its credentials were not used; drop the header`
      : `${head}; it refused the Authorization given with -H (sent as given, never answered for): check or drop the header`;
  const failed = ctx.handshakes.filter((h) => !h.proxy && h.origin === ctx.origin && h.outcome === 'failed');
  if (ctx.keptBackMs !== undefined) {
    const h = failed.at(-1);
    const refused = h
      ? ` (${passwordInsideNegotiate(h) ? 'the password as NTLM inside Negotiate' : h.scheme}, for an earlier request)`
      : '';
    const fix = h ? `: ${refusalFix(h, ctx.offered, ctx.netrcFile)}` : '';
    return `${head}; no credentials were sent: the server refused them or left them unanswered lately${refused}, so they are held back from it for another ${Math.ceil(ctx.keptBackMs / 1000)} s (a wrong password tried again and again locks the account)${fix}`;
  }
  if (failed.length > 0) {
    const h = failed[failed.length - 1]!;
    if (h.failure === 'opening') {
      const { what, why, fix } = openingRefusal(h);
      return `${head}; ${what}${why ? ` (${why})` : ''}; ${fix}`;
    }
    return `${head}; the server refused ${refusedCredentials(h, ctx.offered)} after ${h.legs} leg(s): ${refusalFix(h, ctx.offered, ctx.netrcFile)}`;
  }
  if (ctx.offered.length === 0) return `${head}: nothing to answer`;
  if (!ctx.trusted && ctx.netrcNamesOther)
    return `${head}; no credentials were sent: ${netrcOtherHost(ctx.origin, ctx.netrcFile)}, whatever --trust or --location-trusted say: request ${ctx.origin} in a command of its own, or give -u`;
  if (!ctx.trusted)
    return `${head}; no credentials were sent: ${ctx.origin} is not the URL's origin (a redirect led here); add --trust ${ctx.origin} or use --location-trusted`;
  const known = ctx.offered.filter((s) => /^(negotiate|ntlm|digest|basic|transport)$/i.test(s));
  if (known.length === 0) return `${head}; multileg does not implement ${offered}`;
  const enabled = ctx.schemes
    ? known.filter((s) => ctx.schemes!.some((e) => e.toLowerCase() === s.toLowerCase()))
    : known;
  if (enabled.length === 0)
    return `${head}; --schemes (or --negotiate/--ntlm/--digest/--basic) excluded ${known.join(', ')}`;
  const password = enabled.filter((s) => /^(ntlm|digest|basic)$/i.test(s));
  const negotiate = enabled.some((s) => /^negotiate$/i.test(s));
  const transport = enabled.some((s) => /^transport$/i.test(s));
  // T3: presented (in the TLS handshake, or on a new connection after the first 401), and still 401.
  if (ctx.hasCertificate && transport && (!ctx.hasPassword || enabled.length === 1))
    return `${head}; it refused the client certificate given with --cert: give one issued by a CA it accepts, valid today`;
  if (!ctx.hasPassword && transport && enabled.length === 1)
    return `${head}; give a client certificate with --cert and --key`;
  if (!ctx.hasPassword)
    return `${head}; no credentials: ${negotiate ? 'Negotiate needs a Kerberos ticket (kinit; check with `multileg doctor URL`) or ' : ''}${password.length > 0 || negotiate ? 'give -u DOMAIN\\user (the password is asked for, or comes from --password-stdin / MULTILEG_PASSWORD)' : ''}`;
  return `${head}; none of them could be used here (${enabled.join(', ')}): run with -v, or multileg doctor URL`;
}
