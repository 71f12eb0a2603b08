/**
 * `multileg doctor URL`: the checks a help desk runs by hand, each with a verdict and the fix —
 * Node, the kerberos addon, the ticket (klist), the SPN and whether the KDC knows it, clock skew
 * against the server's Date, the schemes offered over HTTP/2 and HTTP/1.1, whether authentication
 * needs HTTP/1.1, the proxy, TLS trust, and the client certificate (--cert's, and the CAs the server
 * accepts). Takes the same options as a request.
 */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import { checkServerIdentity, getCACertificates, connect as tlsConnect } from 'node:tls';
import { promisify } from 'node:util';
import { request } from 'undici';
import { MultilegAgent } from '../agent.ts';
import { dialFor } from '../connect-to.ts';
import { ConfigError, MultilegError } from '../errors.ts';
import { gssLibraryName } from '../mechanisms/gssapi/index.ts';
import { loadBackend } from '../mechanisms/negotiate/backend.ts';
import { KerberosError, ticketFixes, withoutGssDetail } from '../mechanisms/negotiate/errors.ts';
import { negotiateMechanism, spnFor } from '../mechanisms/negotiate/index.ts';
import type { Credentials } from '../mechanisms/types.ts';
import { unsupportedNode } from '../node-version.ts';
import { alpnFor, type ClientCertificate, type DistinguishedName, portOf, resolveLimits } from '../options.ts';
import { ProxyAuthenticationError } from '../proxy/errors.ts';
import { ProxyResolver, type ProxyRoute } from '../proxy/options.ts';
import { connectToProxy } from '../proxy/tunnel.ts';
import { issuedByOneOf, type ProbeAnswer, probeAcceptableIssuers } from '../session/acceptable-issuers.ts';
import {
  alertName,
  ClientCertificateRefusedError,
  ClientCertificateRequiredError,
  caNames,
  certificateAnswer,
  mayBeCertificateAnswer,
  nameLine,
  usableCertificate,
} from '../session/client-certificate.ts';
import { credentialsFor, withProxyPassword } from './credentials.ts';
import { stateDir } from './dirs.ts';
import {
  certificateNames,
  challengeSchemes,
  describeFailure,
  EXIT,
  explain407,
  forCli,
  heldBackWhy,
  missingKrb5Config,
  netrcFileOf,
  openingRefusal,
  outOfDatesFix,
  refusalFix,
  rootCause,
  untrustedFix,
  withoutFallbackHint,
  wrongNameFix,
} from './explain.ts';
import { type CliRequest, parseCliOrExit, program, UsageError } from './options.ts';
import { lockWaitLine, RefusalFile } from './refusals.ts';
import { http1Required, Trace } from './trace.ts';
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

/**
 * `doctor --json`: the whole run as one JSON object on stdout, in place of the lines (a stable
 * shape, README "doctor --json"): the URL, `ok` (no check failed, exit 0), `failed` (how many
 * did), and each check in the order run with its `name`, `ok` (false exactly for a FAIL, what the
 * exit code counts), `verdict` (`ok`, `warn`, `FAIL`, `skip`), `detail` and `fix` (null for none).
 */
export interface DoctorReport {
  readonly url: string;
  readonly ok: boolean;
  readonly failed: number;
  readonly checks: ReadonlyArray<{
    readonly name: string;
    readonly ok: boolean;
    readonly verdict: Verdict;
    readonly detail: string;
    readonly fix: string | null;
  }>;
}

function print(c: Check): void {
  process.stdout.write(`${c.verdict.padEnd(4)}  ${c.name}: ${c.detail}\n`);
  if (c.fix) process.stdout.write(`      fix: ${c.fix}\n`);
}

/** What `within` gives for a check that -m (--max-time) ran out under. */
const RAN_OUT = Symbol('ran out');

/**
 * `work`'s result, or RAN_OUT once `deadline` (-m) fires: a check waits no longer than the run
 * may last (its own wait, a socket's or a KDC's, is left behind; the process ends at the end).
 */
function within<T>(work: () => Promise<T>, deadline: AbortSignal | undefined): Promise<T | typeof RAN_OUT> {
  if (!deadline) return work();
  if (deadline.aborted) return Promise.resolve(RAN_OUT);
  return new Promise((resolve, reject) => {
    const stop = () => resolve(RAN_OUT);
    deadline.addEventListener('abort', stop, { once: true });
    work()
      .then(resolve, reject)
      .finally(() => deadline.removeEventListener('abort', stop));
  });
}

/**
 * `klist args`'s output, or the check to report: skipped where klist is not installed, else what
 * `failed` makes of klist's first line of complaint.
 */
async function klistOutput(args: string[], failed: (why: string) => Check): Promise<string | Check> {
  try {
    return (await promisify(execFile)('klist', args, { timeout: 5000 })).stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT')
      return { name: 'ticket', verdict: 'skip', detail: 'klist is not installed (MIT krb5-user / Heimdal)' };
    return failed((e.stderr ?? e.message).trim().split('\n')[0] ?? '');
  }
}

/** `klist`'s view of the credential cache: the default principal and the TGT's expiry. */
/** The credential cache --ccache gives the command, if any. */
const ccacheOf = (req: CliRequest): string | undefined => (req.agent.negotiate || undefined)?.ccache;

async function klist(ccache: string | undefined, password: boolean): Promise<Check> {
  // --ccache: a plain kinit fills the default cache, not the one the command reads.
  const kinit = ccache ? `kinit -c ${ccache}` : 'kinit';
  const out = await klistOutput(ccache ? ['-c', ccache] : [], (why) => ({
    name: 'ticket',
    verdict: 'warn',
    detail: `no credential cache (${why})`,
    fix: password
      ? `${kinit} user@REALM (-u authenticates with NTLM meanwhile)`
      : `${kinit} user@REALM, or --keytab FILE where no one types a password (CI, cron); or give -u DOMAIN\\user for NTLM`,
  }));
  if (typeof out !== 'string') return out;
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
        fix: `${kinit} ${principal}`,
      };
    return {
      name: 'ticket',
      verdict: left < 30 ? 'warn' : 'ok',
      detail: `${principal}, expires ${fields[1]} (in ${left} min)`,
      ...(left < 30 ? { fix: `${ccache ? `kinit -R -c ${ccache}` : 'kinit -R'}, or ${kinit} ${principal}` } : {}),
    };
  }
  return { name: 'ticket', verdict: 'ok', detail: `${principal}${tgt ? `: ${tgt.trim()}` : ''}` };
}

/**
 * With --keytab the agent gets its tickets from the keytab (into a cache of its own): no credential
 * cache is needed, so none is looked for. `klist -k` names the principals and key versions it
 * holds (never the keys); whether they still work is the SPN check's (it asks the KDC).
 */
async function keytabTickets(keytab: string, principal: string | undefined): Promise<Check> {
  const out = await klistOutput(['-k', keytab], (why) => ({
    name: 'ticket',
    verdict: 'FAIL',
    detail: `the client keytab ${keytab} cannot be read (${why})`,
    fix: "give a keytab holding the principal's keys with --keytab (kadmin ktadd; ktpass on Windows)",
  }));
  if (typeof out !== 'string') return out;
  // `  4 svc@EXAMPLE.TEST`: the newest key version of each principal.
  const newest = new Map<string, number>();
  for (const m of out.matchAll(/^\s*(\d+)\s+(\S+)/gm))
    newest.set(m[2]!, Math.max(Number(m[1]), newest.get(m[2]!) ?? 0));
  const held = [...newest].map(([p, kvno]) => `${p} (kvno ${kvno})`).join(', ');
  if (principal !== undefined && ![...newest.keys()].some((p) => p.toLowerCase() === principal.toLowerCase()))
    return {
      name: 'ticket',
      verdict: 'FAIL',
      detail: `the client keytab ${keytab} holds no key for ${principal} (it holds: ${held || 'nothing'})`,
      fix: `export ${principal}'s key into it (kadmin ktadd; ktpass on Windows), or give --principal as it holds`,
    };
  return {
    name: 'ticket',
    verdict: 'ok',
    detail: `from the client keytab ${keytab}, a credential cache is not needed: ${held || 'no keys listed'}`,
  };
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
  const context = mechanism.createContext(leg);
  try {
    await context.step(undefined, leg);
    checks.push({ name: 'SPN', verdict: 'ok', detail: `${canonical}: the KDC issued a service ticket` });
    return { checks, ticketWorks: true };
  } catch (err) {
    const e = err instanceof MultilegError ? err : new MultilegError('MULTILEG_MECHANISM', (err as Error).message);
    const unknown = e.code === 'MULTILEG_KRB_UNKNOWN_SPN';
    // The cause on the detail, the fix alone on its line: the message whole there repeated the verdict.
    const text = withoutGssDetail(e.message).replace(/^Negotiate: /, '');
    const known = e instanceof KerberosError ? e.fix : undefined;
    const fix = known && text.endsWith(`: ${known}`) ? known : undefined;
    const cause = fix ? text.slice(0, -fix.length - 2) : text;
    // A skewed clock is the clock check's to say and mend (it owns the comparison of clocks).
    if (e.code === 'MULTILEG_KRB_CLOCK_SKEW')
      checks.push({
        name: 'SPN',
        verdict: 'warn',
        detail: `${canonical}: no service ticket: the KDC refused this machine's time (${e.code}; the clock check says what to change)`,
      });
    else
      checks.push({
        name: 'SPN',
        verdict: unknown ? 'FAIL' : 'warn',
        detail: `${canonical}: ${unknown ? 'the KDC does not know this service principal' : `no service ticket: ${forCli(cause)} (${e.code})`}`,
        // With -u given, "or give -u user:password for the NTLM fallback" would name what is there.
        fix: `${
          fix
            ? forCli(req.user ? withoutFallbackHint(fix) : fix)
            : "run it with -v, and with KRB5_TRACE=/dev/stderr for GSS-API's own steps"
        }${missingKrb5Config(e.code)}`,
      });
    return { checks, ticketWorks: false, failure: e.code };
  } finally {
    // Only its first token was wanted: the context is freed now, so that it does not count as a
    // handshake in flight (C4) while the authenticated request below runs.
    context.dispose?.();
  }
}

/**
 * The clock check: the server's Date (`date`) against this machine's clock, and (`kdcSkew`) a KDC
 * that refused this machine's time (KRB5KRB_AP_ERR_SKEW), which a server's Date cannot show: the
 * KDC's clock is another's. Says what it compared, and which clock is likely off.
 */
function clockCheck(date: string | undefined, kdcSkew: boolean): Check {
  const skew = date ? Math.round((Date.parse(date) - Date.now()) / 1000) : undefined;
  const abs = skew === undefined || Number.isNaN(skew) ? undefined : Math.abs(skew);
  const server =
    abs === undefined
      ? undefined
      : abs <= 60
        ? `the server's Date is within ${Math.max(abs, 1)} s of this machine's`
        : `the server's Date is ${abs} s ${skew! >= 0 ? 'ahead of' : 'behind'} this machine`;
  if (kdcSkew)
    return {
      name: 'clock',
      verdict: 'FAIL',
      detail: `the KDC refused this machine's time as further than its tolerance from its own (KRB5KRB_AP_ERR_SKEW, MULTILEG_KRB_CLOCK_SKEW); ${
        server === undefined
          ? "the KDC's clock or this machine's is off"
          : abs! <= 60
            ? `${server}, so the KDC's clock is likely off, or the KDC time offset the ticket cache keeps from the last kinit`
            : `${server} too, so this machine's clock is likely the one that is off`
      }`,
      // MIT keeps the KDC's offset from the last kinit in the ticket cache (kdc_timesync): a clock
      // set since makes it wrong, and a kinit alone mends that.
      fix: `kinit again (the ticket cache keeps the KDC's time offset from the last kinit); if it stays, set the clock that is off by NTP (here: chronyc tracking, timedatectl; a Windows domain controller: w32tm /resync); the tolerance is clockskew in krb5.conf [libdefaults] (MIT's default ${MAX_SKEW_S} s)`,
    };
  if (server === undefined) return { name: 'clock', verdict: 'skip', detail: 'the server sends no Date header' };
  return {
    name: 'clock',
    verdict: abs! > MAX_SKEW_S ? 'FAIL' : abs! > 60 ? 'warn' : 'ok',
    detail: server,
    ...(abs! > 60 ? { fix: 'synchronise the clocks (NTP): Kerberos refuses more than 5 minutes of skew' } : {}),
  };
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

/**
 * R4: the command's state file (refusals.ts), one for the run, as a request's run keeps it. Each
 * check makes an agent of its own, and each would send a password anew (a probe through a proxy
 * sends -U's): with the file a password refused lately — by a run of the command, of doctor, or an
 * earlier check of this run — is held back, and a refusal met here is kept for the runs after it.
 * Without it a help desk's doctor, run again and again with a wrong password, sent it each time (an
 * account lockout), even while the command held it back.
 */
function runRefusals(req: CliRequest): RefusalFile {
  return new RefusalFile({
    dir: () => stateDir(),
    forget: req.forgetRefusals,
    warn: (line) => process.stderr.write(`multileg doctor: Warning: ${line}\n`),
  });
}

/**
 * The legs of one of doctor's requests; with -v, each written to stderr as it happens, the command's
 * -v lines (credentials redacted), after `what` says which request they are.
 */
function traceOf(req: CliRequest, what: string): Trace {
  if (!req.verbose) return new Trace();
  process.stderr.write(`* doctor: ${what}\n`);
  return new Trace((line) => process.stderr.write(`${line}\n`));
}

/** One request without the origin's credentials (a proxy's go: -U): the protocol, the offered schemes, the Date header. */
async function probe(req: CliRequest, http1: boolean, deadline: AbortSignal | undefined, refusals: RefusalFile) {
  const trace = traceOf(req, `a GET without the server's credentials${http1 ? ', HTTP/1.1 only' : ''}`);
  const agent = new MultilegAgent({
    ...req.agent,
    negotiate: false,
    trustedOrigins: [req.url.origin],
    refusalMemory: refusals,
  });
  try {
    const res = await request(req.url, {
      dispatcher: agent,
      method: 'GET',
      ...(http1 ? { allowH2: false } : {}),
      ...(deadline ? { signal: deadline } : {}),
    } as Parameters<typeof request>[1]);
    // T3: nginx (`ssl_verify_client on`) says "no certificate" with a 400 page of its own: its
    // head tells such a page (a few hundred bytes) from others, whose bodies are not kept.
    const headers = res.headers as Record<string, string | string[]>;
    const nginx =
      res.statusCode === 400 && mayBeCertificateAnswer(headers)
        ? certificateAnswer({ headers, body: [Buffer.from(await res.body.arrayBuffer())] })
        : void (await res.body.dump());
    return {
      status: res.statusCode,
      protocol: trace.lastDelivered?.response?.protocol,
      /**
       * H2: the server spoke HTTP/2 but refused this request there with HTTP_1_1_REQUIRED (IIS), and
       * the answer came over HTTP/1.1: the server does speak HTTP/2.
       */
      http1Required: trace.legs.some((l) => l.request.target !== 'proxy' && l.error && http1Required(l.error.error)),
      offered: challengeSchemes(res.headers, res.statusCode),
      date: [res.headers.date].flat()[0],
      /** nginx's 400 page about the client certificate: none sent (`missing`), or the one sent refused. */
      nginx,
      /** H5: a forwarding proxy's final 407: whether -U's credentials went with it, and why it stood. */
      proxy407:
        res.statusCode === 407
          ? {
              sent: trace.lastDelivered?.request.headers.some(([name]) => name === 'proxy-authorization') === true,
              last: trace.unanswered407.at(-1),
            }
          : undefined,
    };
  } finally {
    trace.stop();
    await agent.destroy().catch(() => {});
  }
}

/**
 * T3: the --cert certificate itself — its subject, issuer and dates, and whether the key is its
 * own — and (`cert`) the certificate when it can be read. Only the certificate's names and dates
 * are printed: never the key, nor the passphrase (S2), which the library's reasons do not hold.
 */
function ownCertificate(given: ClientCertificate): { check: Check; cert?: X509Certificate } {
  const name = 'client certificate';
  let cert: X509Certificate | undefined;
  try {
    cert = new X509Certificate(given.cert);
  } catch {}
  let problem: string | undefined;
  let mismatch = false;
  try {
    usableCertificate(given, (reason, cause) => Object.assign(new Error(reason), { cause }));
  } catch (err) {
    problem = forCli((err as Error).message);
    mismatch = (err as { cause?: { code?: unknown } }).cause?.code === 'ERR_OSSL_X509_KEY_VALUES_MISMATCH';
  }
  if (!cert)
    return {
      check: {
        name,
        verdict: 'FAIL',
        detail: `--cert cannot be used: ${problem ?? 'it holds no certificate'}`,
        fix: 'give the certificate (PEM or DER) with --cert and its key with --key',
      },
    };
  const about = `subject ${nameLine(cert.subject)}; issuer ${nameLine(cert.issuer)}`;
  if (mismatch)
    return {
      cert,
      check: {
        name,
        verdict: 'FAIL',
        detail: `${about}; the key is not its own (key values mismatch)`,
        fix: 'give the key the certificate was issued for with --key (or one PEM file holding both with --cert)',
      },
    };
  if (problem) return { cert, check: { name, verdict: 'FAIL', detail: `${about}; ${problem}` } };
  const now = Date.now();
  if (Date.parse(cert.validTo) < now)
    return {
      cert,
      check: {
        name,
        verdict: 'FAIL',
        detail: `${about}; expired ${cert.validTo}`,
        fix: "renew it (a server refuses an expired certificate); if it is not expired, set this machine's clock",
      },
    };
  if (Date.parse(cert.validFrom) > now)
    return {
      cert,
      check: {
        name,
        verdict: 'FAIL',
        detail: `${about}; not valid before ${cert.validFrom}`,
        fix: "renew it (ask for one valid today), or set this machine's clock if it is behind",
      },
    };
  return { cert, check: { name, verdict: 'ok', detail: `${about}; valid to ${cert.validTo}; the key is its own` } };
}

/** How a server showed that it requires a client certificate none was given for (T3). */
interface Demand {
  readonly how: string;
  /** The CAs it named, where the refusal said (the library's error). */
  readonly issuers?: readonly DistinguishedName[];
}

/**
 * T3: the server's side of client certificates, from the probe of its TLS CertificateRequest (the
 * agent's own, acceptable-issuers.ts): whether the --cert certificate's issuer is one of the CAs
 * it accepts; without --cert, whether it requires one (`demand`: the requests without one showed
 * it). Nothing when it neither asks nor was given one.
 */
function serverCertificate(
  seen: ProbeAnswer,
  given: ClientCertificate | undefined,
  cert: X509Certificate | undefined,
  demand: Demand | undefined,
  /** The TLS check ran (not through a proxy): it says why no handshake completed. */
  tlsChecked: boolean,
): Check | undefined {
  const issuers = seen.told ? seen.issuers : demand?.issuers;
  if (!given) {
    if (demand)
      return {
        name: 'client certificate',
        verdict: 'FAIL',
        detail: `none given, and the server requires one (${demand.how})${issuers?.length ? `; it accepts certificates issued by ${caNames(issuers, 4)}` : ''}`,
        fix: `give one${issuers?.length ? ' issued by one of them' : ''} with --cert and --key`,
      };
    if (!issuers) return undefined;
    return {
      name: 'client certificate',
      verdict: 'ok',
      detail: `none given; the server asks for one in TLS and answered without it${issuers.length ? ` (it accepts certificates issued by ${caNames(issuers, 4)})` : ''}`,
    };
  }
  if (!seen.told)
    return {
      name: 'client CAs',
      verdict: 'skip',
      detail: `not seen: no TLS handshake with the server completed${tlsChecked ? ' (the TLS check says why)' : ''}`,
    };
  if (!issuers)
    return {
      name: 'client CAs',
      verdict: 'warn',
      detail:
        'the server asks for no client certificate in the TLS handshake: the one given with --cert is not presented',
      fix: 'nothing to do if this URL needs none; otherwise check the URL (a server that asks for one at some paths only asks later, by renegotiating)',
    };
  if (issuers.length === 0)
    return {
      name: 'client CAs',
      verdict: 'ok',
      detail: 'the server asks for a client certificate naming no CA (any may do)',
    };
  const issuer = cert
    ? `the --cert certificate's issuer (${nameLine(cert.issuer)})`
    : "the --cert certificate's issuer";
  if (issuedByOneOf(given.cert, issuers))
    return {
      name: 'client CAs',
      verdict: 'ok',
      detail: `${issuer} is one of the CAs the server accepts (${caNames(issuers, 4)})`,
    };
  return {
    name: 'client CAs',
    verdict: 'FAIL',
    detail: `${issuer} is not one of the CAs the server accepts: ${caNames(issuers, 4)}`,
    fix: 'give a certificate issued by one of them with --cert and --key',
  };
}

/** The MultilegError in `err`'s cause chain (undici's request and fetch wrap ours), if any. */
function multilegCause(err: unknown): MultilegError | undefined {
  const e = rootCause(err);
  return e instanceof MultilegError ? e : undefined;
}

/**
 * The schemes check when the probe's request failed over the client certificate (T3); undefined
 * for any other failure. `given`: --cert was (a requirement without one is the certificate check's).
 */
function certificateFailure(err: unknown, given: boolean, issuerRefused: boolean): Check | undefined {
  const e = multilegCause(err);
  if (e instanceof ConfigError && e.option === 'clientCertificate')
    return {
      name: 'schemes',
      verdict: 'skip',
      detail: 'not seen: --cert/--key cannot be used (the client certificate check says why)',
    };
  if (e instanceof ClientCertificateRequiredError && !given)
    return {
      name: 'schemes',
      verdict: 'skip',
      detail: 'not seen: the server requires a client certificate (the client certificate check says which)',
    };
  if (!(e instanceof ClientCertificateRefusedError)) return undefined;
  const alert = e.alert && alertName(e.alert);
  const how = e.answered
    ? `it answered ${e.answered}`
    : alert
      ? `TLS alert ${alert} in the handshake`
      : 'it closed the connection that presented it before answering';
  return {
    name: 'schemes',
    verdict: 'FAIL',
    detail: `not seen: the server refused the client certificate given with --cert (${how})`,
    fix:
      alert === 'certificate_expired'
        ? "renew it (expired, or not valid yet, by the server's clock)"
        : alert === 'certificate_revoked'
          ? 'it was revoked: get a new one'
          : issuerRefused
            ? 'give a certificate issued by one of the CAs it accepts (the client CAs check names them) with --cert and --key'
            : 'give one issued by a CA it accepts, valid today, with --cert and --key',
  };
}

/**
 * The request's options that doctor takes (they parse as the request's, so a command line can be
 * copied) but does not use: its requests are GETs of the URL, without a body, headers of the
 * user's or redirects, and its checks are its only output. Given, they are named in a warning:
 * silently dropped, `doctor -X POST -d @body.json` read as if it had checked that POST. (-v is
 * used: it shows doctor's own requests, as it shows the command's.)
 */
const NOT_DOCTORS = new Set([
  '--request',
  '--header',
  '--data',
  '--data-binary',
  '--data-raw',
  '--data-urlencode',
  '--get',
  '--form',
  '--upload-file',
  '--user-agent',
  '--referer',
  '--compressed',
  '--location',
  '--location-trusted',
  '--post301',
  '--post302',
  '--post303',
  '--max-redirs',
  '--include',
  '--head',
  '--fail',
  '--fail-early',
  '--fail-with-body',
  '--output',
  '--remote-name',
  '--remote-name-all',
  '--create-dirs',
  '--dump-header',
  '--write-out',
  '--har',
  '--cookie-jar',
  '--retry',
  '--retry-delay',
  '--retry-max-time',
  '--retry-all-errors',
  '--retry-connrefused',
]);

export async function doctor(argv: string[]): Promise<number> {
  // Its own usage line and description under --help; the options are the request's.
  const cmd = program('multileg doctor')
    .name('multileg doctor')
    .usage('[options] <url>')
    .description(
      "checks one URL's setup, each check with a verdict and the fix: Node, Kerberos (ticket, expiry, SPN), TLS trust, the client certificate (--cert's and the CAs the server accepts), the schemes offered over HTTP/2 and HTTP/1.1, clock skew, the proxy, and an authenticated request; takes the request's options, but its requests are GETs of the URL and its checks its only output: -X, -H, -d, -F, -T, -L, -i, -o, -w, --har, --retry and the like are not used (a warning names them); -v shows its requests on stderr; --json prints the checks as one JSON object (url, ok, failed, checks: name, ok, verdict, detail, fix); exits 1 when a check fails",
    );
  // Its one URL: the request's argument says "the URLs to request, one after another".
  const url = cmd.registeredArguments[0];
  if (url) url.description = 'the URL whose setup to check (no scheme means https://)';
  const urlOption = cmd.options.find((o) => o.long === '--url');
  if (urlOption) urlOption.description = 'the URL whose setup to check, as given without a flag';
  const parsed = await parseCliOrExit(argv, 'multileg doctor', cmd);
  if (typeof parsed === 'number') return parsed;
  const unused = cmd.options.filter(
    (o) => o.long && NOT_DOCTORS.has(o.long) && cmd.getOptionValueSource(o.attributeName()) === 'cli',
  );
  // -s hides it as the command's warnings (-sS shows it).
  if (unused.length > 0 && (!parsed.silent || parsed.showError))
    process.stderr.write(
      `multileg doctor: Warning: ${unused.map((o) => o.short ?? o.long).join(', ')}: not used here (doctor's requests are GETs of the URL, and its checks are its output); run the request itself without doctor for them\n`,
    );
  // `-U user`: its password is asked for as a request's is; the proxy checks would otherwise run
  // without it and say to give the -U that was given.
  // -u user likewise, as a request reads it (asked for on a terminal, --password-stdin, netrc):
  // without a terminal to ask on, bad usage naming the fix — not an authentication check skipped
  // and "no problem found" where the command itself would stop there.
  let req: CliRequest;
  let credentials: Credentials | undefined;
  try {
    req = { ...parsed, agent: await withProxyPassword(parsed) };
    credentials = await credentialsFor(req);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`multileg doctor: ${err.message}\n`);
    return err instanceof UsageError ? err.exit : EXIT.usage;
  }
  // The checks are about one origin's setup (its SPN, certificate, proxy): one URL, as before.
  if (req.transfers.length > 1) {
    process.stderr.write(`multileg doctor: checks one URL (got ${req.transfers.length}): run it once per URL\n`);
    return EXIT.usage;
  }
  // A reader that went away (`| head`) is not an error here (a request's body is curl's 23: doctor
  // is no transfer): the checks run on and their verdict is the exit code. Any other write failure
  // still ends the process as before.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
  });
  // Its modules are loaded; its probes may speak HTTP/1.1 (wasm.ts).
  await keepWasmOnBaseline();
  const refusals = runRefusals(req);
  // --json: the checks as one object at the end, nothing else on stdout.
  const json = req.json === true;
  if (!json) process.stdout.write(`multileg doctor ${req.url.href}\n`);
  const checks: Check[] = [];
  const add = (c: Check) => {
    checks.push(c);
    if (!json) print(c);
  };
  const summary = () => summarize(req.url.href, checks, json);
  // R1: -m bounds the whole run, as it bounds a request (a monitoring check's doctor -m 10 waited
  // out a silent server's 300 s): the check it runs out under fails naming it, those after are not run.
  const deadline = req.maxTime !== undefined ? AbortSignal.timeout(req.maxTime) : undefined;
  const ranOut = () => deadline?.aborted === true;
  const notRun = (name: string): Check => ({ name, verdict: 'skip', detail: 'not run: -m (--max-time) ran out' });
  const ranOutUnder = (name: string): Check => ({
    name,
    verdict: 'FAIL',
    detail: `no answer within -m (--max-time: ${req.maxTime} ms)`,
    fix: 'raise -m; without it this check waits as long as a request would',
  });
  const timed = async (name: string, work: () => Promise<Check>): Promise<Check> => {
    if (ranOut()) return notRun(name);
    const c = await within(work, deadline);
    return c === RAN_OUT ? ranOutUnder(name) : c;
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

  let proxy: ProxyRoute | undefined;
  try {
    // (With the run's state file: the client certificate probe's CONNECT sends -U's password, R4.)
    proxy = new ProxyResolver(req.agent.proxy, process.env, undefined, req.agent.connectTo, refusals).route(
      req.url.origin,
    );
  } catch (err) {
    // A proxy URL that cannot be used (socks5://, not a URL): every check after this one would
    // go through it, so none is run; the message names the variable or -x and the fix.
    if (!(err instanceof ConfigError)) throw err;
    add({ name: 'proxy', verdict: 'FAIL', detail: `${forCli(err.message)} (${err.code})` });
    return summary();
  }
  add(await timed('proxy', () => proxyCheck(proxy)));

  const tls = req.url.protocol === 'https:' && !proxy ? await timed('TLS', () => tlsTrust(req)) : undefined;
  if (tls) add(tls);

  // T3: the client certificate given (--cert), and what the server's TLS handshake asks of one (the
  // agent's own probe: one handshake without a certificate, through the proxy's tunnel if any).
  const given = req.agent.clientCertificate as ClientCertificate | undefined;
  const own = given ? ownCertificate(given) : undefined;
  // (Not where the TLS check saw no trusted handshake: the probe, which verifies the server as the
  // sessions do, would not tell either, and a silent server would hold it to its timeout.)
  const seen: ProbeAnswer =
    req.url.protocol === 'https:' &&
    proxy?.kind !== 'forward' &&
    (!tls || tls.verdict === 'ok' || tls.verdict === 'warn')
      ? await probeAcceptableIssuers({
          origin: req.url.origin,
          tls: req.agent.connect ?? {},
          alpn: alpnFor(!req.http1),
          route: proxy,
          connectTo: req.agent.connectTo,
          limits: resolveLimits(req.agent.limits),
          ...(deadline ? { signal: deadline } : {}),
        })
      : { told: false };

  let h2: Awaited<ReturnType<typeof probe>> | undefined;
  let h1: Awaited<ReturnType<typeof probe>> | undefined;
  let failure: unknown;
  /** H5: why the proxy's final 407 to the CONNECT stood, in the command's words. */
  let tunnel407: string | undefined;
  const ranOutBefore = ranOut();
  if (!ranOutBefore)
    try {
      h2 = await probe(req, false, deadline, refusals);
      h1 = await probe(req, true, deadline, refusals);
    } catch (err) {
      failure = err;
    }
  // Without --cert, the requests without one showed that the server requires one: it refused the
  // TLS handshake, answered nginx's 400 page, or asked for nothing but a certificate (Transport).
  const required = (() => {
    if (given) return undefined;
    const e = multilegCause(failure);
    if (e instanceof ClientCertificateRequiredError)
      return { how: 'it refused the TLS handshake without one', issuers: e.acceptableIssuers };
    const missing = [h2, h1].find((p) => p?.nginx?.said === 'missing')?.nginx;
    if (missing) return { how: `it answered ${missing.words}` };
    if (h2?.status === 401 && h2.offered.length > 0 && h2.offered.every((o) => /^transport$/i.test(o)))
      return { how: 'it answered 401 offering Transport only' };
    return undefined;
  })();
  if (own) add(own.check);
  const server =
    req.url.protocol === 'https:'
      ? serverCertificate(seen, given, own?.cert, required, tls !== undefined)
      : given && {
          name: 'client CAs',
          verdict: 'warn' as const,
          detail: 'an http:// URL has no TLS: the certificate given with --cert is not presented',
          fix: 'use the https:// URL, if the server has one',
        };
  if (server) add(server);

  if (h2 && h1) {
    const show = (p: Awaited<ReturnType<typeof probe>>) =>
      `${p.protocol === 'h2' ? 'HTTP/2' : 'HTTP/1.1'} ${p.status}${p.offered.length ? ` offers ${p.offered.join(', ')}` : ''}`;
    // (A forwarding proxy's 407 is the proxy's asking: the proxy authentication check below.)
    const none = h2.status !== 401 && h1.status !== 401 && h2.status !== 407;
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
      detail: `${
        h2.protocol !== 'h2' && h2.http1Required
          ? `HTTP/2 refused with HTTP_1_1_REQUIRED (the server wants HTTP/1.1 here); over HTTP/1.1: ${show(h1)}`
          : `${show(h2)}; ${unseen ?? (h2.protocol === 'h2' ? `over HTTP/1.1: ${show(h1)}` : 'the server does not speak HTTP/2')}`
      }${none ? (required ? ' (a client certificate is asked for first)' : ' (no authentication asked for at this URL)') : ''}`,
    });
  } else if (ranOutBefore) add(notRun('schemes'));
  else {
    // It was reached where it refused the certificate, or required one: say that, not "could not be reached".
    const issuerRefused = server?.name === 'client CAs' && server.verdict === 'FAIL';
    const unreached = describeFailure(failure, req);
    // H5: the proxy's final 407 to CONNECT stopped it before the server: the proxy authentication
    // check below says why, as for a forwarding proxy's 407 (not "the server could not be reached").
    if (multilegCause(failure) instanceof ProxyAuthenticationError) tunnel407 = unreached.message;
    add(
      certificateFailure(failure, given !== undefined, issuerRefused) ??
        (tunnel407 !== undefined
          ? {
              name: 'schemes',
              verdict: 'skip',
              detail: "not seen: the proxy's 407 to CONNECT stood (the proxy authentication check says why)",
            }
          : undefined) ?? {
          name: 'schemes',
          verdict: 'FAIL',
          detail: `the server could not be reached: ${unreached.message}`,
          // `multileg doctor help`: the host `help` does not resolve; its --help was likely meant.
          ...(req.helpMeant && unreached.exit === EXIT.resolve ? { fix: `did you mean ${req.helpMeant}?` } : {}),
        },
    );
  }

  const negotiateOffered = h2?.offered.some((s) => s.toLowerCase() === 'negotiate') ?? true;
  let ticketWorks = false;
  let kerberosFailure: string | undefined;
  if (addon && negotiateOffered) {
    add(
      await timed('ticket', () =>
        negotiate.keytab
          ? keytabTickets(negotiate.keytab, negotiate.principal)
          : klist(negotiate.ccache, credentials !== undefined),
      ),
    );
    // The KDC may be the one that does not answer.
    const k = ranOut() ? undefined : await within(() => kerberos(req), deadline);
    if (k === undefined) add(notRun('SPN'));
    else if (k === RAN_OUT) add(ranOutUnder('SPN'));
    else {
      for (const c of k.checks) add(c);
      ticketWorks = k.ticketWorks;
      kerberosFailure = k.failure;
    }
  }

  // After the Kerberos checks: a KDC that refused this machine's time is this check's to say (the
  // SPN check's "clock skew" beside an "ok" here read as a contradiction).
  if (h2 && h1) add(clockCheck(h2.date, kerberosFailure === 'MULTILEG_KRB_CLOCK_SKEW'));
  else if (kerberosFailure === 'MULTILEG_KRB_CLOCK_SKEW') add(clockCheck(undefined, true));

  // H5: a forwarding proxy's final 407 stopped the requests before the server: the command's words
  // for it (refused, held back, or none given), not the server's "asks for authentication".
  const stood407 = h2?.proxy407 && proxy ? h2.proxy407 : undefined;
  if (stood407 && proxy) {
    const user = typeof req.agent.proxy === 'object' ? req.agent.proxy.credentials?.username : undefined;
    const last = stood407.last;
    add({
      name: 'proxy authentication',
      verdict: 'FAIL',
      detail: explain407({
        proxy: proxy.proxy.origin,
        offered: h2?.offered ?? [],
        sent: stood407.sent,
        unusable: last?.unusable ?? [],
        schemes: typeof req.agent.proxy === 'object' ? req.agent.proxy.schemes : undefined,
        ...(last?.reason === 'refused-lately' && last.heldBackFor !== undefined
          ? { heldBack: { ms: last.heldBackFor, user, at: refusals.heldBack(proxy.proxy.origin, true)?.at } }
          : {}),
      }),
    });
  }
  if (tunnel407 !== undefined) add({ name: 'proxy authentication', verdict: 'FAIL', detail: tunnel407 });
  // A certificate required and none given: the client certificate check has said so and its fix.
  if (h2 && !stood407 && (h2.status === 401 || h2.offered.length > 0) && !required)
    add(
      ranOut()
        ? notRun('authentication')
        : await authenticate(
            req,
            credentials,
            // Refused there with HTTP_1_1_REQUIRED, the server spoke HTTP/2: a move to HTTP/1.1 is news.
            h2.http1Required ? 'h2' : h2.protocol,
            h2.http1Required,
            h2.offered,
            ticketWorks,
            kerberosFailure,
            proxy?.kind === 'forward',
            deadline,
            refusals,
          ),
    );

  return summary();
}

/** The last line (with `json`, the whole report: {@link DoctorReport}), and the exit code: 1 when a check failed. */
function summarize(url: string, checks: readonly Check[], json: boolean): number {
  const failed = checks.filter((c) => c.verdict === 'FAIL').length;
  if (json) {
    const report: DoctorReport = {
      url,
      ok: failed === 0,
      failed,
      checks: checks.map((c) => ({
        name: c.name,
        ok: c.verdict !== 'FAIL',
        verdict: c.verdict,
        detail: c.detail,
        fix: c.fix ?? null,
      })),
    };
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } else process.stdout.write(failed ? `${failed} check(s) failed\n` : 'no problem found\n');
  return failed ? EXIT.failure : EXIT.ok;
}

/** A real authenticated request: which scheme won, and whether it had to move to HTTP/1.1. */
async function authenticate(
  req: CliRequest,
  /** -u's (or the netrc file's), resolved as the command resolves them. */
  credentials: Credentials | undefined,
  /** The protocol the server spoke to the probe: `h2` too where it refused it there with HTTP_1_1_REQUIRED. */
  probed: string | undefined,
  /** The probe's HTTP/2 request was refused with HTTP_1_1_REQUIRED (IIS), not answered. */
  refusedH2: boolean,
  /** The schemes the server's 401 offered. */
  offered: readonly string[],
  ticketWorks: boolean,
  /** The code of the SPN check's failure, when it failed. */
  kerberosFailure: string | undefined,
  /** Through a forwarding proxy: the protocol seen is the proxy's, not the server's. */
  forwarded: boolean,
  /** -m's end of the run. */
  deadline: AbortSignal | undefined,
  /** The run's state file ({@link runRefusals}). */
  refusals: RefusalFile,
): Promise<Check> {
  // The server asks for authentication and nothing here can answer it: that is the problem.
  // A ticket is there, but no service ticket for this server: kinit would not help, the SPN check's fix does.
  if (!credentials && !ticketWorks && kerberosFailure && !ticketFixes(kerberosFailure))
    return {
      name: 'authentication',
      verdict: 'FAIL',
      detail:
        kerberosFailure === 'MULTILEG_KRB_KEYTAB'
          ? `the server asks for authentication; the client keytab gives no Kerberos ticket (${kerberosFailure}), and there is no password`
          : `the server asks for authentication; the Kerberos ticket gets no service ticket for it (${kerberosFailure}), and there is no password`,
      fix: `the ${kerberosFailure === 'MULTILEG_KRB_CLOCK_SKEW' ? 'clock' : 'SPN'} check above says what to change; or give -u DOMAIN\\user (NTLM)`,
    };
  // A server that offers no Negotiate: no ticket answers it, only a password (kinit was no fix).
  const scheme = offered.find((s) => /^(ntlm|digest|basic)$/i.test(s));
  if (!credentials && scheme && !offered.some((s) => /^negotiate$/i.test(s)))
    return {
      name: 'authentication',
      verdict: 'FAIL',
      detail: `the server asks for authentication (${offered.join(', ')}), and no password was given`,
      fix: `give -u ${/^ntlm$/i.test(scheme) ? 'DOMAIN\\user' : 'user'} (the password is asked for on a terminal, or comes from --password-stdin / MULTILEG_PASSWORD)`,
    };
  if (!credentials && !ticketWorks)
    return {
      name: 'authentication',
      verdict: 'FAIL',
      detail: 'the server asks for authentication, and there is no usable Kerberos ticket and no password',
      fix: `${ccacheOf(req) ? `kinit -c ${ccacheOf(req)}` : 'kinit'} user@REALM (or --keytab FILE where no one types a password), or give -u DOMAIN\\user (NTLM)`,
    };
  const trace = traceOf(req, 'the authenticated GET');
  const agent = new MultilegAgent({
    ...req.agent,
    ...(credentials ? { credentials } : {}),
    trustedOrigins: [req.url.origin],
    refusalMemory: refusals,
  });
  try {
    // --http1.1: the request goes as the command's would (transfer.ts), never tried over HTTP/2.
    const res = await request(req.url, {
      dispatcher: agent,
      method: 'GET',
      ...(req.http1 ? { allowH2: false } : {}),
      ...(deadline ? { signal: deadline } : {}),
    } as Parameters<typeof request>[1]);
    await res.body.dump();
    // The origin's (a proxy's handshake, H5, is not this check's).
    const h = trace.handshakes.findLast((r) => !r.proxy);
    const held = res.statusCode === 401 && credentials ? refusals.heldBack(req.url.origin) : undefined;
    // R1/R4: it gave up waiting for another run's try of this password (its lock), at
    // limits.queueTimeout: none went, and its 401 is the answer — said so, not "without a handshake".
    const waiting = res.statusCode === 401 && credentials && !h ? refusals.waitingFor(req.url.origin) : undefined;
    if (waiting) return { name: 'authentication', verdict: 'FAIL', detail: `401: ${lockWaitLine(waiting)}` };
    if (!h && held && credentials)
      return {
        name: 'authentication',
        verdict: 'FAIL',
        detail: `401: no credentials were sent: ${heldBackWhy(req.url.origin, credentials, held.at, Math.max(0, held.until - Date.now()))}`,
        fix: 'fix the password (-u DOMAIN\\user:password), or pass --forget-refusals to try it now',
      };
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
    // Basic to an http:// URL: the password went as readable as typed (curl sends it so too).
    const cleartext = /^basic$/i.test(h.scheme) && req.url.protocol === 'http:';
    return {
      name: 'authentication',
      verdict: failed ? 'FAIL' : moved || cleartext ? 'warn' : 'ok',
      detail: `${h.scheme}, ${h.legs} leg(s), ${outcome}${h.identity ? ` as ${h.identity}` : ''} over ${over} → ${res.statusCode}${why ?? ''}${moved ? '; needs HTTP/1.1 for authentication (multileg moves there by itself)' : ''}${cleartext ? '; the password went in cleartext (Basic over http://: anyone on the way reads it)' : ''}`,
      // A refusal's fix wins: the move to HTTP/1.1 is then a note in the detail, nothing to do.
      ...(failed
        ? { fix: refused }
        : cleartext
          ? { fix: 'use the https:// URL, if the server has one' }
          : moved
            ? {
                fix: refusedH2
                  ? 'nothing to do; the server refuses authentication over HTTP/2 (HTTP_1_1_REQUIRED, as IIS does for Windows authentication)'
                  : 'nothing to do; the server cannot keep a handshake across HTTP/2 streams (IIS, Apache mod_auth_gssapi)',
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
