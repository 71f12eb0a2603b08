/**
 * The real-peer test lab: a throwaway MIT realm, Apache (mod_auth_gssapi/gss-ntlmssp, Basic, Digest, h2),
 * an optional Apache forward proxy, squid, and a python3-gssapi acceptor — all on loopback, on ports
 * picked at run time, under one temp dir. Recipe and traps: /work/shared/notes/real-peers.md.
 *
 *   const lab = await startLab({ apache: true });
 *   const restore = lab.applyEnv();   // the kerberos addon reads KRB5_CONFIG/KRB5CCNAME from process.env
 *   ...
 *   restore(); await lab.stop();
 */
import { readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Apache, type CertificateApache, startApache, startCertificateApache } from './apache.ts';
import { type Realm, startRealm } from './krb5.ts';
import { type CertificateNginx, startCertificateNginx } from './nginx.ts';
import { type PyAcceptor, startPyAcceptor } from './py-acceptor.ts';
import { type Squid, startSquid } from './squid.ts';

export { APACHE_LOCATIONS, type Apache, BASIC_USER, type CertificateApache, DIGEST_REALM } from './apache.ts';
export { ALICE, CAROL, INTRANET_HOST, OTHER_REALM, REALM, type Realm } from './krb5.ts';
export { freePort, waitForPort } from './net.ts';
export { type PeerName, type PeerStatus, PYTHON, peerAvailability, requirePeer } from './peers.ts';
export { type RunResult, run, runOk } from './proc.ts';
export { type AcceptorMech, type AcceptorReply, type PyAcceptor, startPyAcceptor } from './py-acceptor.ts';
export type { Squid } from './squid.ts';

export interface LabOptions {
  /** MIT KDC with realm EXAMPLE.TEST, alice/alicepw, HTTP/localhost in a keytab, alice kinit'ed. Implied by apache/squid. */
  readonly kdc?: boolean;
  readonly apache?: boolean;
  readonly squid?: boolean;
  /** A second Squid (`lab.negotiateSquid`) that asks for Negotiate only (implies kdc). */
  readonly negotiateSquid?: boolean;
  /** The Apache GSSAPI forward-proxy vhost (implies apache). */
  readonly apacheProxy?: boolean;
  /** A python3-gssapi acceptor process (lab.acceptor). */
  readonly pythonAcceptor?: boolean;
}

/** NTLM users known to gss-ntlmssp acceptors (Apache /ntlm, /spnego2, the python acceptor). */
export const NTLM_USERS = [
  { domain: 'EXAMPLE', username: 'alice', password: 'alicepw' },
  { domain: 'EXAMPLE', username: 'bob', password: 'bobpw' },
] as const;

export interface Lab {
  readonly dir: string;
  /**
   * Env a GSS client (and in-process acceptor) needs: KRB5_CONFIG, KRB5CCNAME (alice's ticket), KRB5RCACHEDIR,
   * KRB5_KTNAME, NTLM_USER_FILE, KRB5_KDC_PROFILE. Note: with NTLM_USER_FILE set, SPNEGO without a ticket
   * silently uses that file's first user via gss-ntlmssp; drop it to see "no ticket" errors.
   */
  readonly env: Readonly<Record<string, string>>;
  readonly ntlmUserFile: string;
  readonly realm?: Realm;
  readonly apache?: Apache;
  readonly squid?: Squid;
  /** With `negotiateSquid`: a Squid whose only `Proxy-Authenticate` is Negotiate (Kerberos). */
  readonly negotiateSquid?: Squid;
  readonly acceptor?: PyAcceptor;
  /**
   * Copies `env` (plus `overrides`; `undefined` deletes) into process.env — the kerberos addon and
   * MIT krb5 read it at call time. Returns a function that restores the previous values.
   */
  applyEnv(overrides?: Record<string, string | undefined>): () => void;
  /** Stops every process and removes the dir. Safe to call twice. */
  stop(): Promise<void>;
}

function lookupUser(name: string): { uid: number; gid: number } | undefined {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[0] === name && f[2] && f[3]) return { uid: Number(f[2]), gid: Number(f[3]) };
    }
  } catch {}
  return undefined;
}

/**
 * Apache asking for client certificates of `o.clientCas` ({@link startCertificateApache}), in a temp
 * dir of its own (as www-data when root), the dir removed when it stops. Needs the `apache` peer only.
 */
export async function certificateApache(
  o: Omit<Parameters<typeof startCertificateApache>[0], 'dir' | 'runAs'>,
): Promise<CertificateApache> {
  const dir = await mkdtemp(join(tmpdir(), 'multileg-lab-'));
  await chmod(dir, 0o755); // Apache workers (www-data) read htdocs
  const www = process.getuid?.() === 0 ? lookupUser('www-data') : undefined;
  try {
    const apache = await startCertificateApache({ ...o, dir, ...(www ? { runAs: www } : {}) });
    return {
      origin: apache.origin,
      stop: async () => {
        await apache.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}

/** nginx requiring a client certificate (`ssl_verify_client on`) in a temp dir of its own; `stop` removes it. */
export async function certificateNginx(
  o: Omit<Parameters<typeof startCertificateNginx>[0], 'dir'>,
): Promise<CertificateNginx> {
  const dir = await mkdtemp(join(tmpdir(), 'multileg-lab-'));
  try {
    const nginx = await startCertificateNginx({ ...o, dir });
    return {
      origin: nginx.origin,
      stop: async () => {
        await nginx.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}

/** Applies env values to process.env; returns a restorer. */
export function applyEnv(values: Record<string, string | undefined>): () => void {
  const saved: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(values)) {
    saved[k] = process.env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  return () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
}

export async function startLab(opts: LabOptions = {}): Promise<Lab> {
  const wantApache = !!(opts.apache || opts.apacheProxy);
  const wantKdc = !!(opts.kdc || wantApache || opts.squid || opts.negotiateSquid);
  const dir = await mkdtemp(join(tmpdir(), 'multileg-lab-'));
  await chmod(dir, 0o755); // Apache workers (www-data) and squid helpers (proxy) read keytab, user file, htdocs
  const root = process.getuid?.() === 0;
  const stops: Array<() => Promise<void>> = [];
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await Promise.allSettled(stops.reverse().map((s) => s()));
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await mkdir(join(dir, 'ntlm'));
    const ntlmUserFile = join(dir, 'ntlm', 'users');
    await writeFile(ntlmUserFile, NTLM_USERS.map((u) => `${u.domain}:${u.username}:${u.password}\n`).join(''));
    await chmod(ntlmUserFile, 0o644);
    let realm: Realm | undefined;
    if (wantKdc) {
      realm = await startRealm(dir);
      stops.push(() => realm!.stop());
    }
    const env: Record<string, string> = { NTLM_USER_FILE: ntlmUserFile, LANG: 'C' };
    if (realm) {
      Object.assign(env, {
        KRB5_CONFIG: realm.krb5Conf,
        KRB5_KDC_PROFILE: realm.kdcConf,
        KRB5CCNAME: realm.ccache,
        KRB5_KTNAME: `FILE:${realm.keytab}`,
        KRB5RCACHEDIR: join(realm.dir, 'rcache'),
      });
    } else {
      // Never fall back to /etc/krb5.conf (it names external KDCs).
      await writeFile(
        join(dir, 'krb5.conf'),
        '[libdefaults]\n    default_realm = EXAMPLE.TEST\n    dns_lookup_kdc = false\n',
      );
      Object.assign(env, { KRB5_CONFIG: join(dir, 'krb5.conf'), KRB5CCNAME: `FILE:${join(dir, 'no-ccache')}` });
    }
    let apache: Apache | undefined;
    if (wantApache && realm) {
      const www = root ? lookupUser('www-data') : undefined;
      apache = await startApache({
        labDir: dir,
        krb5Conf: realm.krb5Conf,
        keytab: realm.keytab,
        ntlmUserFile,
        proxy: !!opts.apacheProxy,
        ...(www ? { runAs: www } : {}),
      });
      stops.push(() => apache!.stop());
    }
    const proxyUser = root && (opts.squid || opts.negotiateSquid) ? lookupUser('proxy') : undefined;
    const squidOf = realm && {
      labDir: dir,
      krb5Conf: realm.krb5Conf,
      keytab: realm.keytab,
      realm: realm.realm,
      ...(proxyUser ? { runAs: proxyUser } : {}),
    };
    let squid: Squid | undefined;
    if (opts.squid && squidOf) {
      squid = await startSquid(squidOf);
      stops.push(() => squid!.stop());
    }
    let negotiateSquid: Squid | undefined;
    if (opts.negotiateSquid && squidOf) {
      negotiateSquid = await startSquid({ ...squidOf, name: 'squid-negotiate', schemes: ['negotiate'] });
      stops.push(() => negotiateSquid!.stop());
    }
    let acceptor: PyAcceptor | undefined;
    if (opts.pythonAcceptor) {
      acceptor = await startPyAcceptor({ PATH: process.env.PATH ?? '/usr/bin:/bin', ...env });
      stops.push(() => acceptor!.close());
    }
    return {
      dir,
      env,
      ntlmUserFile,
      ...(realm ? { realm } : {}),
      ...(apache ? { apache } : {}),
      ...(squid ? { squid } : {}),
      ...(negotiateSquid ? { negotiateSquid } : {}),
      ...(acceptor ? { acceptor } : {}),
      applyEnv: (overrides = {}) => applyEnv({ ...env, ...overrides }),
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
export {
  challengeFor,
  driveHandshake,
  type HandshakeResult,
  type HttpResult,
  header,
  headerValues,
  labClient,
  legInfo,
  parseChallenges,
  send,
  tlsServerEndPoint,
} from './http.ts';
