/**
 * What the command writes once a transfer is over: `--json`'s report and `-w`'s format, from the
 * transfer's outcome, and the address each origin's last connection reached (-w %{remote_ip},
 * %{remote_port}), from undici's diagnostics channel.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import type { CliRequest } from './options.ts';
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

export class Remotes {
  readonly #byOrigin = new Map<string, { ip: string; port: string }>();
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
      socket: { remoteAddress?: string; remotePort?: number };
    };
    try {
      this.#byOrigin.set(new URL(`${p.protocol}//${p.host}`).origin, {
        ip: socket.remoteAddress ?? '',
        port: socket.remotePort !== undefined ? String(socket.remotePort) : '',
      });
    } catch {}
  };

  constructor() {
    subscribe('undici:client:connected', this.#onConnected);
    subscribe('undici:client:connectError', this.#onConnectError);
  }

  get(origin: string): { ip: string; port: string } | undefined {
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
): Promise<void> {
  const { url, status, final, redirects, exit, timeTotal, stats } = outcome;
  if (req.json) {
    const report = {
      url: url.href,
      status,
      httpVersion: final?.protocol === 'h2' ? '2' : final ? '1.1' : null,
      redirects,
      exitCode: exit,
      timeTotal,
      legs: outcome.legs.map((l) => ({
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
      },
      headerAll,
    );
    for (const part of parts) (part.to === 'stderr' ? process.stderr : process.stdout).write(part.text);
  }
}
