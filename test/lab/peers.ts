/**
 * Which real peers this machine has, and the CI-fails / laptop-skips rule for tests that need them.
 * Install them with `scripts/install-peers.sh`.
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { createRequire } from 'node:module';

export type PeerName =
  | 'kdc'
  | 'apache'
  | 'gssntlmssp'
  | 'python-gssapi'
  | 'squid'
  | 'nginx'
  | 'curl'
  | 'openssl'
  | 'kerberos-addon'
  | 'gss-binding';

export const PYTHON = '/usr/bin/python3';
export const GSSNTLMSSP_SO = '/usr/lib/x86_64-linux-gnu/gssntlmssp/gssntlmssp.so';
export const APACHE_MODULES = '/usr/lib/apache2/modules';

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** First existing executable among `paths`, or undefined. */
export function findBin(...paths: string[]): string | undefined {
  return paths.find(executable);
}

export interface PeerStatus {
  readonly available: boolean;
  /** What is missing, when not available. */
  readonly missing: readonly string[];
}

function check(parts: Array<[string, boolean | (() => boolean)]>): PeerStatus {
  const missing: string[] = [];
  for (const [what, ok] of parts) if (!(typeof ok === 'function' ? ok() : ok)) missing.push(what);
  return { available: missing.length === 0, missing };
}

let cache: Record<PeerName, PeerStatus> | undefined;

/** Which peers are installed (cached for the process). */
export function peerAvailability(): Readonly<Record<PeerName, PeerStatus>> {
  if (cache) return cache;
  const pyGssapi = (): boolean => {
    if (!executable(PYTHON)) return false;
    try {
      execFileSync(PYTHON, ['-c', 'import gssapi'], { stdio: 'ignore', timeout: 10_000 });
      return true;
    } catch {
      return false;
    }
  };
  const addon = (): boolean => {
    try {
      createRequire(import.meta.url)('kerberos');
      return true;
    } catch {
      return false;
    }
  };
  const gssBinding = (): boolean => {
    try {
      (createRequire(import.meta.url)('koffi') as { load(p: string): unknown }).load('libgssapi_krb5.so.2');
      return true;
    } catch {
      return false;
    }
  };
  const ntlmssp = existsSync(GSSNTLMSSP_SO) || existsSync('/usr/lib64/gssntlmssp/gssntlmssp.so');
  cache = {
    kdc: check([
      ['krb5kdc', !!findBin('/usr/sbin/krb5kdc')],
      ['kdb5_util', !!findBin('/usr/sbin/kdb5_util')],
      ['kadmin.local', !!findBin('/usr/sbin/kadmin.local')],
      ['kinit', !!findBin('/usr/bin/kinit')],
    ]),
    apache: check([
      ['apache2', !!findBin('/usr/sbin/apache2')],
      ['mod_auth_gssapi', existsSync(`${APACHE_MODULES}/mod_auth_gssapi.so`)],
      ['mod_http2', existsSync(`${APACHE_MODULES}/mod_http2.so`)],
      ['mod_ssl', existsSync(`${APACHE_MODULES}/mod_ssl.so`)],
      ['htpasswd', !!findBin('/usr/bin/htpasswd')],
      ['openssl', !!findBin('/usr/bin/openssl')],
    ]),
    gssntlmssp: check([['gss-ntlmssp', ntlmssp]]),
    'python-gssapi': check([['/usr/bin/python3 with python3-gssapi', pyGssapi]]),
    squid: check([['squid', !!findBin('/usr/sbin/squid')]]),
    nginx: check([['nginx', !!findBin('/usr/sbin/nginx')]]),
    curl: check([['curl', !!findBin('/usr/bin/curl')]]),
    openssl: check([['openssl', !!findBin('/usr/bin/openssl')]]),
    'kerberos-addon': check([["the optional 'kerberos' npm package (built)", addon]]),
    'gss-binding': check([["the optional 'koffi' npm package and the system's libgssapi_krb5.so.2", gssBinding]]),
  };
  return cache;
}

/**
 * The rule for tests that need real peers: returns true when all `names` are present. When one is
 * missing, throws under `CI=true` (the test run must fail, not silently skip) and otherwise warns
 * loudly and returns false so that the caller can skip (`describe.skipIf(!requirePeer(...))`).
 */
export function requirePeer(...names: PeerName[]): boolean {
  const avail = peerAvailability();
  const missing = names.flatMap((n) => avail[n].missing.map((m) => `${n}: ${m}`));
  if (missing.length === 0) return true;
  const msg = `real-peer test needs ${missing.join(', ')}; run scripts/install-peers.sh`;
  if (process.env.CI === 'true') throw new Error(`${msg} (CI=true: missing peers fail the run)`);
  console.warn(`\n!!! SKIPPING: ${msg}\n`);
  return false;
}
