/**
 * What the command writes once a transfer is over: `--json`'s report and `-w`'s format, from the
 * transfer's outcome, and the address each origin's last connection reached (-w %{remote_ip},
 * %{remote_port}), from undici's diagnostics channel.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import type { CliRequest } from './options.ts';
import type { Timings } from './timings.ts';
import { REDIRECTS, redirectTarget, type TransferOutcome } from './transfer.ts';

/** -w %{remote_ip} / %{remote_port}: the address each origin's last connection reached, while listening. */
/** Connect failures before a TCP connection stood: curl's -w %{num_connects} does not count them. */
const NO_CONNECTION: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ETIMEDOUT',
  'UND_ERR_CONNECT_TIMEOUT',
  'MULTILEG_PROXY_UNREACHABLE',
]);

/** The last connection to an origin, as -w shows it. */
interface Remote {
  readonly ip: string;
  readonly port: string;
  /** -w %{local_ip} / %{local_port}. */
  readonly localIp: string;
  readonly localPort: string;
  /** -w %{ssl_verify_result}: OpenSSL's number for why the certificate was not verified (-k), 0 when it was. */
  readonly verifyResult: number;
}

/**
 * OpenSSL's X509_V_ERR numbers (x509_vfy.h) for the codes Node reports in `authorizationError`, as
 * curl's %{ssl_verify_result} prints them; a name that is not the server's is 0 there, as curl checks
 * the name apart from OpenSSL's verification. Another code: 1 (X509_V_ERR_UNSPECIFIED).
 */
const X509_ERRORS: Readonly<Record<string, number>> = {
  UNABLE_TO_GET_ISSUER_CERT: 2,
  UNABLE_TO_GET_CRL: 3,
  CERT_SIGNATURE_FAILURE: 7,
  CERT_NOT_YET_VALID: 9,
  CERT_HAS_EXPIRED: 10,
  DEPTH_ZERO_SELF_SIGNED_CERT: 18,
  SELF_SIGNED_CERT_IN_CHAIN: 19,
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 20,
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 21,
  CERT_CHAIN_TOO_LONG: 22,
  CERT_REVOKED: 23,
  INVALID_CA: 24,
  INVALID_PURPOSE: 26,
  CERT_UNTRUSTED: 27,
  CERT_REJECTED: 28,
  ERR_TLS_CERT_ALTNAME_INVALID: 0,
};

function verifyResult(error: Error | string | null | undefined): number {
  if (!error) return 0;
  const code = typeof error === 'string' ? error : ((error as { code?: string }).code ?? error.message);
  return X509_ERRORS[code] ?? 1;
}

export class Remotes {
  readonly #byOrigin = new Map<string, Remote>();
  /**
   * Connections made so far (-w %{num_connects}, curl's count of the transfer's new connections):
   * an attempt that never connected (refused, unresolved) is none, where the agent's session count
   * has one; one whose TLS handshake failed after the TCP connection is one, as curl counts it.
   */
  connects = 0;
  readonly #onConnectError = (message: unknown) => {
    const error = (message as { error?: { code?: unknown; cause?: { code?: unknown } } }).error;
    const code = error?.code ?? error?.cause?.code;
    if (typeof code !== 'string' || !NO_CONNECTION.has(code)) this.connects += 1;
  };
  readonly #onConnected = (message: unknown) => {
    this.connects += 1;
    const { connectParams: p, socket } = message as {
      connectParams: { protocol: string; host: string };
      socket: {
        remoteAddress?: string;
        remotePort?: number;
        localAddress?: string;
        localPort?: number;
        encrypted?: boolean;
        authorizationError?: Error | string | null;
      };
    };
    try {
      this.#byOrigin.set(new URL(`${p.protocol}//${p.host}`).origin, {
        ip: socket.remoteAddress ?? '',
        port: socket.remotePort !== undefined ? String(socket.remotePort) : '',
        localIp: socket.localAddress ?? '',
        localPort: socket.localPort !== undefined ? String(socket.localPort) : '',
        verifyResult: socket.encrypted ? verifyResult(socket.authorizationError) : 0,
      });
    } catch {}
  };

  constructor() {
    subscribe('undici:client:connected', this.#onConnected);
    subscribe('undici:client:connectError', this.#onConnectError);
  }

  get(origin: string): Remote | undefined {
    return this.#byOrigin.get(origin);
  }

  stop(): void {
    unsubscribe('undici:client:connected', this.#onConnected);
    unsubscribe('undici:client:connectError', this.#onConnectError);
  }
}

/** Writes what --json and -w ask for after a transfer (`remotes` is there with -w). */
export async function report(
  req: CliRequest,
  outcome: TransferOutcome,
  remotes: Remotes | undefined,
  /** `remotes.connects` when the transfer started. */
  connectsBefore = 0,
  /** The transfer's place among the command's URLs, from 0 (-w %{urlnum}). */
  urlnum = 0,
  /** There when -w names a timing or a head's size (timings.ts). */
  timings?: Timings,
): Promise<void> {
  const { url, status, final, redirects, exit, timeTotal, stats } = outcome;
  if (req.json) {
    const report = {
      url: url.href,
      status,
      httpVersion: final?.protocol === 'h2' ? '2' : final ? '1.1' : null,
      redirects,
      exitCode: exit,
      // What stderr says, which -s hides: the failure that set exitCode (-w %{errormsg}), and why
      // a final 401 or 407 stood (no ticket, a password held back, the credentials refused).
      error: outcome.errormsg || null,
      reason: outcome.reason ?? null,
      timeTotal,
      legs: outcome.legs.map((l) => ({
        session: l.request.sessionId,
        // Whose leg: a CONNECT is the proxy's; a forwarded request the origin's, with the proxy's
        // credentials maybe (proxyScheme), so neither is counted as the other's.
        target: l.request.target,
        method: l.request.method,
        url: l.request.method === 'CONNECT' ? l.request.path : new URL(l.request.path, l.request.origin).href,
        scheme: l.request.scheme ?? null,
        proxyScheme: l.request.proxyScheme ?? null,
        authId: l.request.authId,
        protocol: l.response?.protocol ?? l.request.protocol ?? null,
        status: l.response?.status ?? null,
        delivered: l.response?.delivered ?? false,
        ...(l.error ? { error: l.error.error } : {}),
      })),
      handshakes: outcome.handshakes,
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
    // %header{name}: every value of a repeated header, joined by ", " (curl's).
    const headerAll = (name: string) => {
      const v = final?.headers[name];
      return Array.isArray(v) ? v.join(', ') : (v ?? '');
    };
    const numHeaders = Object.values(final?.headers ?? {}).reduce(
      (n: number, v) => n + (v === undefined ? 0 : Array.isArray(v) ? v.length : 1),
      0,
    );
    const location = header('location');
    let redirectUrl = '';
    if (REDIRECTS.has(status) && location) {
      try {
        redirectUrl = redirectTarget(location, url).href;
      } catch {}
    }
    const remote = remotes?.get(url.origin);
    const { clock } = outcome;
    const seconds = (t: number | undefined) => (t === undefined ? 0 : (t - clock.started) / 1000).toFixed(6);
    const phases = timings?.phases(clock.started);
    // curl's speeds: bytes a second over the whole transfer, a whole number.
    const speed = (bytes: number) => String(timeTotal > 0 ? Math.floor(bytes / timeTotal) : 0);
    // %{header_json}: curl's, one line per header, names lower case, every value in an array.
    const headerJson = `{${Object.entries(final?.headers ?? {})
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${JSON.stringify(k.toLowerCase())}:${JSON.stringify(Array.isArray(v) ? v : [v])}`)
      .join(',\n')}\n}`;
    // %{http_connect}: the proxy's answer to the transfer's last CONNECT, 000 without one (curl's).
    const connect = outcome.legs.findLast((l) => l.request.method === 'CONNECT')?.response?.status ?? 0;
    const parts = writeOut(
      req.writeOut,
      {
        http_code: String(status).padStart(3, '0'),
        response_code: String(status).padStart(3, '0'),
        time_total: timeTotal.toFixed(6),
        num_connects: String(remotes ? remotes.connects - connectsBefore : stats.sessions),
        num_redirects: String(redirects),
        url_effective: url.href,
        http_version: final?.protocol === 'h2' ? '2' : final ? '1.1' : '0',
        size_download: String(outcome.bytes),
        exitcode: String(exit),
        errormsg: outcome.errormsg,
        content_type: header('content-type'),
        redirect_url: redirectUrl,
        remote_ip: remote?.ip ?? '',
        remote_port: remote?.port ?? '',
        num_retries: String(outcome.retries),
        method: outcome.method,
        // Lower case, as curl 8.8 and later (7.88 said HTTPS).
        scheme: url.protocol.slice(0, -1),
        url: req.url.href,
        urlnum: String(urlnum),
        filename_effective: req.output ?? '',
        num_headers: String(numHeaders),
        time_namelookup: (phases?.namelookup ?? 0).toFixed(6),
        time_connect: (phases?.connect ?? 0).toFixed(6),
        time_appconnect: (phases?.appconnect ?? 0).toFixed(6),
        time_pretransfer: (phases?.pretransfer ?? 0).toFixed(6),
        // The first byte of the response shown: after the handshake's 401s and the redirects (curl's).
        time_starttransfer: seconds(clock.head),
        time_redirect: redirects > 0 ? seconds(clock.lastHop) : (0).toFixed(6),
        size_header: String(timings?.headerBytes() ?? 0),
        size_request: String(timings?.requestBytes() ?? 0),
        size_upload: String(outcome.uploaded),
        speed_download: speed(outcome.bytes),
        speed_upload: speed(outcome.uploaded),
        header_json: headerJson,
        local_ip: remote?.localIp ?? '',
        local_port: remote?.localPort ?? '',
        ssl_verify_result: String(remote?.verifyResult ?? 0),
        http_connect: String(connect).padStart(3, '0'),
      },
      headerAll,
    );
    for (const part of parts) (part.to === 'stderr' ? process.stderr : process.stdout).write(part.text);
  }
}
