/**
 * `multileg doctor URL`: the checks a help desk runs by hand, each with a verdict and the fix —
 * Node, the kerberos addon, the ticket (klist), the SPN and whether the KDC knows it, clock skew
 * against the server's Date, the schemes offered over HTTP/2 and HTTP/1.1, whether authentication
 * needs HTTP/1.1, the proxy, and TLS trust. Takes the same options as a request.
 */
import { execFile } from 'node:child_process';
import { isIP } from 'node:net';
import { checkServerIdentity, getCACertificates, connect as tlsConnect } from 'node:tls';
import { promisify } from 'node:util';
import { request } from 'undici';
import { MultilegAgent } from '../agent.ts';
import { dialFor } from '../connect-to.ts';
import { ConfigError, MultilegError } from '../errors.ts';
import { gssLibraryName } from '../mechanisms/gssapi/index.ts';
import { loadBackend } from '../mechanisms/negotiate/backend.ts';
import { ticketFixes, withoutGssDetail } from '../mechanisms/negotiate/errors.ts';
import { negotiateMechanism, spnFor } from '../mechanisms/negotiate/index.ts';
import { unsupportedNode } from '../node-version.ts';
import { portOf } from '../options.ts';
import { ProxyResolver, type ProxyRoute } from '../proxy/options.ts';
import { connectToProxy } from '../proxy/tunnel.ts';
import { credentialsFor, withProxyPassword } from './credentials.ts';
import {
  certificateNames,
  challengeSchemes,
  describeFailure,
  EXIT,
  forCli,
  netrcFileOf,
  openingRefusal,
  outOfDatesFix,
  refusalFix,
  untrustedFix,
  withoutFallbackHint,
  wrongNameFix,
} from './explain.ts';
import { type CliRequest, parseCliOrExit, program } from './options.ts';
import { Trace } from './trace.ts';
import { kerberosInstalled } from './version.ts';
import { keepWasmOnBaseline } from './wasm.ts';

type Verdict = 'ok' | 'warn' | 'FAIL' | 'skip';

export interface Check {
  readonly name: string;
  readonly verdict: Verdict;
  readonly detail: string;
  readonly fix?: string;
}

/** Kerberos' default tolerance (krb5.conf clockskew) is 5 minutes. */
const MAX_SKEW_S = 300;

function print(c: Check): void {
  process.stdout.write(`${c.verdict.padEnd(4)}  ${c.name}: ${c.detail}\n`);
  if (c.fix) process.stdout.write(`      fix: ${c.fix}\n`);
}

/** `klist`'s view of the credential cache: the default principal and the TGT's expiry. */
async function klist(ccache: string | undefined, password: boolean): Promise<Check> {
  let out: string;
  try {
    out = (await promisify(execFile)('klist', ccache ? ['-c', ccache] : [], { timeout: 5000 })).stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT')
      return { name: 'ticket', verdict: 'skip', detail: 'klist is not installed (MIT krb5-user / Heimdal)' };
    return {
      name: 'ticket',
      verdict: 'warn',
      detail: `no credential cache (${(e.stderr ?? e.message).trim().split('\n')[0]})`,
      fix: password
        ? 'kinit user@REALM (-u authenticates with NTLM meanwhile)'
        : 'kinit user@REALM (or give -u DOMAIN\\user for NTLM)',
    };
  }
  const principal = /Default principal:\s*(\S+)/.exec(out)?.[1] ?? 'unknown';
  const tgt = out.split('\n').find((l) => /krbtgt\//.test(l));
  const fields = tgt?.trim().split(/\s{2,}/) ?? [];
  const expires = fields[1] ? new Date(fields[1]) : undefined;
  if (expires && !Number.isNaN(expires.getTime())) {
    const left = Math.round((expires.getTime() - Date.now()) / 60_000);
    if (left <= 0)
      return {
        name: 'ticket',
        verdict: 'FAIL',
        detail: `${principal}: the ticket expired at ${fields[1]}`,
        fix: `kinit ${principal}`,
      };
    return {
      name: 'ticket',
      verdict: left < 30 ? 'warn' : 'ok',
      detail: `${principal}, expires ${fields[1]} (in ${left} min)`,
      ...(left < 30 ? { fix: `kinit -R, or kinit ${principal}` } : {}),
    };
  }
  return { name: 'ticket', verdict: 'ok', detail: `${principal}${tgt ? `: ${tgt.trim()}` : ''}` };
}

/** The SPN the request would use, and whether the KDC issues a service ticket for it. */
async function kerberos(
  req: CliRequest,
): Promise<{ checks: Check[]; ticketWorks: boolean; failure?: string | undefined }> {
  const url = req.url;
  const port = portOf(url);
  const options = req.agent.negotiate || {};
  const plain = await spnFor({ ...options, canonicalizeHost: false }, url.hostname, port);
  const spn = await spnFor(options, url.hostname, port);
  const checks: Check[] = [];
  const canonical = options.canonicalizeHost
    ? `${spn}${spn !== plain ? ` (DNS canonical name of ${url.hostname})` : ` (${url.hostname} has no CNAME)`}`
    : `${spn}${options.spn ? ' (--spn)' : ''}`;
  const mechanism = negotiateMechanism({ ...options, mech: 'kerberos' });
  const leg = { origin: url.origin, hostname: url.hostname, port, method: 'GET', path: url.pathname, proxy: false };
  try {
    await mechanism.createContext(leg).step(undefined, leg);
    checks.push({ name: 'SPN', verdict: 'ok', detail: `${canonical}: the KDC issued a service ticket` });
    return { checks, ticketWorks: true };
  } catch (err) {
    const e = err instanceof MultilegError ? err : new MultilegError('MULTILEG_MECHANISM', (err as Error).message);
    const unknown = e.code === 'MULTILEG_KRB_UNKNOWN_SPN';
    checks.push({
      name: 'SPN',
      verdict: unknown ? 'FAIL' : 'warn',
      detail: `${canonical}: ${unknown ? 'the KDC does not know this service principal' : `no service ticket (${e.code})`}`,
      // With -u given, "or give -u user:password for the NTLM fallback" would name what is there.
      fix: forCli(withoutGssDetail(req.user ? withoutFallbackHint(e.message) : e.message)),
    });
    return { checks, ticketWorks: false, failure: e.code };
  }
}

/** Whether the server's certificate chain is trusted with the given CAs, and whether the OS store would. */
function tlsTrust(req: CliRequest): Promise<Check> {
  const url = req.url;
  const connect = req.agent.connect ?? {};
  // The options' -4/-6 (net.connect's option, which undici's connector passes on; its type omits it).
  const { family } = connect as { family?: 4 | 6 };
  const probe = (ca: readonly string[] | undefined) =>
    new Promise<{
      authorized: boolean;
      /** Whether a TLS handshake showed a certificate at all (not a refused connection or unknown host). */
      handshake: boolean;
      error?: string;
      issuer?: string;
      validTo?: string;
      names: string[];
    }>((resolve) => {
      const hostname = url.hostname.replace(/^\[(.*)\]$/, '$1');
      // Where a request goes (--resolve, --connect-to): the check is of that server, for the URL's name.
      const dial = dialFor(req.agent.connectTo, { hostname, port: Number(url.port || 443), via: 'origin' });
      const socket = tlsConnect({
        host: dial.hostname,
        port: dial.port,
        ...(dial.lookup ? { lookup: dial.lookup } : {}),
        // -4/-6: the family the requests use (a name DNS answers for both would be checked over the other).
        ...(family ? { family } : {}),
        checkServerIdentity: (_host, cert) => checkServerIdentity(hostname, cert),
        // SNI is for names: Node warns (DEP0123) when given an address, and an address has no SNI.
        ...(isIP(hostname) ? {} : { servername: hostname }),
        ...(ca ? { ca: [...ca] } : {}),
        rejectUnauthorized: false,
        ALPNProtocols: ['h2', 'http/1.1'],
      });
      socket.setTimeout(10_000, () => socket.destroy(new Error('timed out')));
      socket.once('secureConnect', () => {
        const cert = socket.getPeerCertificate();
        resolve({
          authorized: socket.authorized,
          handshake: true,
          ...(socket.authorizationError ? { error: String(socket.authorizationError) } : {}),
          issuer: [cert.issuer?.CN ?? cert.issuer?.O].flat()[0],
          validTo: cert.valid_to,
          names: certificateNames({ cert }),
        });
        socket.end();
      });
      // The code (ECONNREFUSED, ERR_SSL_WRONG_VERSION_NUMBER): OpenSSL's message spans lines.
      socket.once('error', (err: NodeJS.ErrnoException) =>
        resolve({ authorized: false, handshake: false, error: err.code ?? err.message, names: [] }),
      );
    });
  return (async () => {
    if (connect.rejectUnauthorized === false)
      return {
        name: 'TLS',
        verdict: 'warn',
        detail: 'not verified (-k)',
        fix: 'drop -k; give the CA with --cacert or --ca-native',
      };
    if (req.unusableCa !== undefined)
      return {
        name: 'TLS',
        verdict: 'FAIL',
        detail: req.unusableCa,
        fix: 'give a PEM file of CA certificates with --cacert',
      };
    const r = await probe(connect.ca as readonly string[] | undefined);
    const about = `issuer ${r.issuer ?? '?'}, valid to ${r.validTo ?? '?'}`;
    if (r.authorized) return { name: 'TLS', verdict: 'ok', detail: `certificate chain trusted (${about})` };
    // No certificate was shown (a refused connection, an unknown host, a plain-HTTP port): no CA
    // fixes that, and the schemes check names the cause and its fix.
    if (!r.handshake) return { name: 'TLS', verdict: 'skip', detail: `not checked: no TLS handshake (${r.error})` };
    // The chain may be fine: the certificate is for other names. No CA fixes that.
    if (r.error === 'ERR_TLS_CERT_ALTNAME_INVALID')
      return {
        name: 'TLS',
        verdict: 'FAIL',
        detail: `the certificate is for ${r.names.join(', ') || 'other names'}, not ${url.hostname} (${about})`,
        fix: wrongNameFix(r.names),
      };
    // Nor does a CA fix a certificate out of its dates: the server's, or this machine's clock.
    if (r.error === 'CERT_HAS_EXPIRED' || r.error === 'CERT_NOT_YET_VALID')
      return {
        name: 'TLS',
        verdict: 'FAIL',
        detail: `the certificate is not valid now: ${r.error} (${about})`,
        fix: outOfDatesFix(r.error),
      };
    const system = await probe([...getCACertificates('default'), ...getCACertificates('system')]);
    return {
      name: 'TLS',
      verdict: 'FAIL',
      detail: `certificate not trusted: ${r.error ?? 'unknown'} (${about})`,
      fix: system.authorized
        ? "the operating system's store trusts it: add --ca-native (library: connect.ca from tls.getCACertificates('system'))"
        : untrustedFix(req.cacert),
    };
  })();
}

/**
 * The proxy the URL goes through, and whether it can be reached (TCP, and TLS to an https://
 * proxy): a proxy that is down is named here, with its fix, not only by the schemes check after it.
 */
async function proxyCheck(route: ProxyRoute | undefined): Promise<Check> {
  if (!route) return { name: 'proxy', verdict: 'ok', detail: 'none: direct connection' };
  const detail = `${route.proxy.origin} (${route.kind === 'tunnel' ? 'CONNECT tunnel' : 'forwarded'})`;
  try {
    (await connectToProxy(route.proxy)).destroy();
    return { name: 'proxy', verdict: 'ok', detail: `${detail}, reachable` };
  } catch (err) {
    const message = err instanceof MultilegError ? `${forCli(err.message)} (${err.code})` : String(err);
    return { name: 'proxy', verdict: 'FAIL', detail: `${detail}: ${message}` };
  }
}

/** One request without credentials: the protocol, the offered schemes, the Date header. */
async function probe(req: CliRequest, http1: boolean) {
  const trace = new Trace();
  const agent = new MultilegAgent({ ...req.agent, negotiate: false, trustedOrigins: [req.url.origin] });
  try {
    const res = await request(req.url, {
      dispatcher: agent,
      method: 'GET',
      ...(http1 ? { allowH2: false } : {}),
    } as Parameters<typeof request>[1]);
    await res.body.dump();
    return {
      status: res.statusCode,
      protocol: trace.lastDelivered?.response?.protocol,
      offered: challengeSchemes(res.headers, res.statusCode),
      date: [res.headers.date].flat()[0],
    };
  } finally {
    trace.stop();
    await agent.destroy().catch(() => {});
  }
}

export async function doctor(argv: string[]): Promise<number> {
  // Its own usage line and description under --help; the options are the request's.
  const cmd = program()
    .name('multileg doctor')
    .usage('[options] <url>')
    .description(
      "checks one URL's setup, each check with a verdict and the fix: Node, Kerberos (ticket, expiry, SPN), TLS trust, the schemes offered over HTTP/2 and HTTP/1.1, clock skew, the proxy, and an authenticated request; takes the request's options; exits 1 when a check fails",
    );
  const parsed = await parseCliOrExit(argv, 'multileg doctor', cmd);
  if (typeof parsed === 'number') return parsed;
  // `-U user`: its password is asked for as a request's is; the proxy checks would otherwise run
  // without it and say to give the -U that was given.
  let req: CliRequest;
  try {
    req = { ...parsed, agent: await withProxyPassword(parsed) };
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`multileg doctor: ${err.message}\n`);
    return EXIT.usage;
  }
  // The checks are about one origin's setup (its SPN, certificate, proxy): one URL, as before.
  if (req.transfers.length > 1) {
    process.stderr.write(`multileg doctor: checks one URL (got ${req.transfers.length}): run it once per URL\n`);
    return EXIT.usage;
  }
  // A reader that went away (`| head`) is not an error, as for a request: the checks run on and
  // their verdict is the exit code. Any other write failure still ends the process as before.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
  });
  // Its modules are loaded; its probes may speak HTTP/1.1 (wasm.ts).
  await keepWasmOnBaseline();
  process.stdout.write(`multileg doctor ${req.url.href}\n`);
  const checks: Check[] = [];
  const add = (c: Check) => {
    checks.push(c);
    print(c);
  };
  const nodeProblem = unsupportedNode();
  add({ name: 'Node', verdict: nodeProblem ? 'FAIL' : 'ok', detail: `${process.versions.node} (needs >= 22.19)` });

  const negotiate = req.agent.negotiate || {};
  let addon = false;
  try {
    const backend = await loadBackend(negotiate);
    addon = true;
    add({
      name: 'Kerberos',
      verdict: 'ok',
      detail:
        backend.name === 'gssapi'
          ? `system GSS-API (${gssLibraryName()} through koffi; tokens carry channel bindings)`
          : `the kerberos addon ${kerberosInstalled() ?? ''} (tokens carry no channel bindings)`,
    });
  } catch (err) {
    add({
      name: 'Kerberos',
      verdict: 'warn',
      detail: `Negotiate/Kerberos unavailable (NTLM, Digest, Basic still work): ${forCli((err as Error).message)}`,
      // With --principal the addon is refused (it may use another principal's ticket): not its fix.
      fix: negotiate.principal
        ? 'install libgssapi-krb5-2 and the optional koffi package (--principal needs the system GSS-API), or drop --principal'
        : 'on Linux: install libgssapi-krb5-2 and the optional koffi package; elsewhere: npm install kerberos (approve its install script: npm install-scripts approve kerberos)',
    });
  }

  const proxy = new ProxyResolver(req.agent.proxy, process.env, undefined, req.agent.connectTo).route(req.url.origin);
  add(await proxyCheck(proxy));

  if (req.url.protocol === 'https:' && !proxy) add(await tlsTrust(req));

  let h2: Awaited<ReturnType<typeof probe>> | undefined;
  try {
    h2 = await probe(req, false);
    const h1 = await probe(req, true);
    const show = (p: Awaited<ReturnType<typeof probe>>) =>
      `${p.protocol === 'h2' ? 'HTTP/2' : 'HTTP/1.1'} ${p.status}${p.offered.length ? ` offers ${p.offered.join(', ')}` : ''}`;
    const none = h2.status !== 401 && h1.status !== 401;
    // Only a TLS connection to the server itself (direct or through a CONNECT tunnel) shows whether
    // it speaks HTTP/2: a forwarding proxy answers for it, and over http:// no h2c is tried.
    const unseen =
      proxy?.kind === 'forward'
        ? "that protocol is the proxy's: the server's is not seen through a forwarding proxy"
        : req.url.protocol === 'http:'
          ? 'over http:// HTTP/2 is not tried (no h2c upgrade)'
          : undefined;
    add({
      name: 'schemes',
      verdict: 'ok',
      detail: `${show(h2)}; ${unseen ?? (h2.protocol === 'h2' ? `over HTTP/1.1: ${show(h1)}` : 'the server does not speak HTTP/2')}${none ? ' (no authentication asked for at this URL)' : ''}`,
    });
    if (h2.date) {
      const skew = Math.round((Date.parse(h2.date) - Date.now()) / 1000);
      const abs = Math.abs(skew);
      add({
        name: 'clock',
        verdict: abs > MAX_SKEW_S ? 'FAIL' : abs > 60 ? 'warn' : 'ok',
        detail: `the server's Date is ${abs} s ${skew >= 0 ? 'ahead of' : 'behind'} this machine`,
        ...(abs > 60 ? { fix: 'synchronise the clocks (NTP): Kerberos refuses more than 5 minutes of skew' } : {}),
      });
    } else add({ name: 'clock', verdict: 'skip', detail: 'the server sends no Date header' });
  } catch (err) {
    const f = describeFailure(err, req);
    add({ name: 'schemes', verdict: 'FAIL', detail: `the server could not be reached: ${f.message}` });
  }

  const negotiateOffered = h2?.offered.some((s) => s.toLowerCase() === 'negotiate') ?? true;
  let ticketWorks = false;
  let kerberosFailure: string | undefined;
  if (addon && negotiateOffered) {
    const ticket = await klist(negotiate.ccache, req.user !== undefined);
    add(ticket);
    const k = await kerberos(req);
    for (const c of k.checks) add(c);
    ticketWorks = k.ticketWorks;
    kerberosFailure = k.failure;
  }

  if (h2 && (h2.status === 401 || h2.offered.length > 0))
    add(await authenticate(req, h2.protocol, ticketWorks, kerberosFailure, proxy?.kind === 'forward'));

  const failed = checks.filter((c) => c.verdict === 'FAIL').length;
  process.stdout.write(failed ? `${failed} check(s) failed\n` : 'no problem found\n');
  return failed ? EXIT.failure : EXIT.ok;
}

/** A real authenticated request: which scheme won, and whether it had to move to HTTP/1.1. */
async function authenticate(
  req: CliRequest,
  probed: string | undefined,
  ticketWorks: boolean,
  /** The code of the SPN check's failure, when it failed. */
  kerberosFailure: string | undefined,
  /** Through a forwarding proxy: the protocol seen is the proxy's, not the server's. */
  forwarded: boolean,
): Promise<Check> {
  let credentials: Awaited<ReturnType<typeof credentialsFor>>;
  try {
    credentials = await credentialsFor(req);
  } catch (err) {
    return { name: 'authentication', verdict: 'skip', detail: (err as Error).message };
  }
  // The server asks for authentication and nothing here can answer it: that is the problem.
  // A ticket is there, but no service ticket for this server: kinit would not help, the SPN check's fix does.
  if (!credentials && !ticketWorks && kerberosFailure && !ticketFixes(kerberosFailure))
    return {
      name: 'authentication',
      verdict: 'FAIL',
      detail: `the server asks for authentication; the Kerberos ticket gets no service ticket for it (${kerberosFailure}), and there is no password`,
      fix: 'the SPN check above says what to change; or give -u DOMAIN\\user (NTLM)',
    };
  if (!credentials && !ticketWorks)
    return {
      name: 'authentication',
      verdict: 'FAIL',
      detail: 'the server asks for authentication, and there is no usable Kerberos ticket and no password',
      fix: 'kinit user@REALM, or give -u DOMAIN\\user (NTLM)',
    };
  const trace = new Trace();
  const agent = new MultilegAgent({
    ...req.agent,
    ...(credentials ? { credentials } : {}),
    trustedOrigins: [req.url.origin],
  });
  try {
    // --http1.1: the request goes as the command's would (transfer.ts), never tried over HTTP/2.
    const res = await request(req.url, {
      dispatcher: agent,
      method: 'GET',
      ...(req.http1 ? { allowH2: false } : {}),
    } as Parameters<typeof request>[1]);
    await res.body.dump();
    // The origin's (a proxy's handshake, H5, is not this check's).
    const h = trace.handshakes.findLast((r) => !r.proxy);
    if (!h)
      return {
        name: 'authentication',
        verdict: res.statusCode === 401 ? 'FAIL' : 'ok',
        detail: `${res.statusCode} without a handshake`,
      };
    const moved = probed === 'h2' && h.protocol === 'http/1.1' && !req.http1;
    const failed = res.statusCode >= 400;
    // A 401 after a handshake that failed: the command's fix for it (explain.ts), the same words.
    const refused =
      res.statusCode === 401 && h.outcome === 'failed'
        ? refusalFix(h, challengeSchemes(res.headers, 401), netrcFileOf(req))
        : 'check -u user:password (DOMAIN\\user) or the ticket; run with -v';
    // The opening refused: no password went, so "failed" alone would read as a wrong one.
    const opening = h.failure === 'opening' ? openingRefusal(h) : undefined;
    const outcome = opening ? 'failed at its opening' : h.outcome;
    const why = opening && `: ${opening.what.replace(/^it /, 'the server ')}${opening.why ? ` (${opening.why})` : ''}`;
    const over = `${h.protocol === 'h2' ? 'HTTP/2' : 'HTTP/1.1'}${forwarded ? ' to the proxy' : ''}`;
    return {
      name: 'authentication',
      verdict: failed ? 'FAIL' : moved ? 'warn' : 'ok',
      detail: `${h.scheme}, ${h.legs} leg(s), ${outcome}${h.identity ? ` as ${h.identity}` : ''} over ${over} → ${res.statusCode}${why ?? ''}${moved ? '; needs HTTP/1.1 for authentication (multileg moves there by itself)' : ''}`,
      // A refusal's fix wins: the move to HTTP/1.1 is then a note in the detail, nothing to do.
      ...(failed
        ? { fix: refused }
        : moved
          ? {
              fix: 'nothing to do; the server cannot keep a handshake across HTTP/2 streams (IIS, Apache mod_auth_gssapi)',
            }
          : {}),
    };
  } catch (err) {
    return { name: 'authentication', verdict: 'FAIL', detail: describeFailure(err, req).message };
  } finally {
    trace.stop();
    await agent.destroy().catch(() => {});
  }
}
