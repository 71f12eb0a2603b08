/** A throwaway MIT Kerberos realm on loopback (recipe: /work/shared/notes/real-peers.md §2). */
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort } from './net.ts';
import { type Daemon, run, runOk, spawnDaemon, waitDaemon } from './proc.ts';

export const REALM = 'EXAMPLE.TEST';
export const ALICE = { principal: `alice@${REALM}`, password: 'alicepw' } as const;
/** A second realm served by the same KDC, with no trust to EXAMPLE.TEST (a "ticket for the wrong realm"). */
export const OTHER_REALM = 'OTHER.TEST';
export const CAROL = { principal: `carol@${OTHER_REALM}`, password: 'carolpw' } as const;
/**
 * A made-up intranet name that DNS does not know (`.test` is reserved): Apache's keytab holds
 * `HTTP/intranet.example.test` too and its certificate names it, so a client that connects to
 * 127.0.0.1 for it (curl's --resolve) authenticates with that SPN.
 */
export const INTRANET_HOST = 'intranet.example.test';

export interface Realm {
  readonly realm: string;
  readonly dir: string;
  readonly kdcPort: number;
  readonly krb5Conf: string;
  readonly kdcConf: string;
  /** Keytab holding HTTP/localhost@EXAMPLE.TEST and HTTP/intranet.example.test@EXAMPLE.TEST. */
  readonly keytab: string;
  /** `FILE:` ccache holding alice's TGT (after startup). */
  readonly ccache: string;
  /** Env for KDC tools (kadmin.local, kinit). */
  readonly toolEnv: NodeJS.ProcessEnv;
  /** `kinit` into a ccache (default: the lab ccache). `lifetime` is kinit's `-l`, e.g. `'5s'`. */
  kinit(opts?: { principal?: string; password?: string; ccache?: string; lifetime?: string }): Promise<void>;
  /** `kadmin.local -q <query>`. */
  kadmin(query: string): Promise<string>;
  /**
   * kinit alice into `FILE:<path>` and stamp the ccache header with a KDC time offset of `seconds`
   * (ccache v4 DeltaTime tag). With kdc_timesync (MIT's default) the client then believes its clock is off
   * by that much, so a TGS request gets KRB_AP_ERR_SKEW from the real KDC: a faithful clock-skew failure
   * without touching the system clock.
   */
  writeSkewedCcache(path: string, seconds: number): Promise<string>;
  /** Writes a krb5.conf like the lab's but with the KDC at another port (for "KDC unreachable"). */
  writeKrb5Conf(path: string, kdcPort: number): Promise<void>;
  stop(): Promise<void>;
}

function krb5ConfText(dir: string, kdcPort: number): string {
  return `[libdefaults]
    default_realm = ${REALM}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    ignore_acceptor_hostname = false
    udp_preference_limit = 1
    kdc_timeout = 1s
    max_retries = 1
    default_ccache_name = FILE:${dir}/ccache
    default_keytab_name = FILE:${dir}/http.keytab
[realms]
    ${REALM} = {
        kdc = 127.0.0.1:${kdcPort}
    }
    ${OTHER_REALM} = {
        kdc = 127.0.0.1:${kdcPort}
    }
[domain_realm]
    localhost = ${REALM}
    .localhost = ${REALM}
    ${INTRANET_HOST} = ${REALM}
`;
}

export async function startRealm(labDir: string): Promise<Realm> {
  const dir = join(labDir, 'krb5');
  await mkdir(join(dir, 'db'), { recursive: true });
  await mkdir(join(dir, 'rcache'), { recursive: true });
  const kdcPort = await freePort(true);
  const krb5Conf = join(dir, 'krb5.conf');
  const kdcConf = join(dir, 'kdc.conf');
  const keytab = join(dir, 'http.keytab');
  const ccache = `FILE:${join(dir, 'alice.ccache')}`;
  await writeFile(krb5Conf, krb5ConfText(dir, kdcPort));
  await writeFile(
    kdcConf,
    `[kdcdefaults]
    kdc_listen = 127.0.0.1:${kdcPort}
    kdc_tcp_listen = 127.0.0.1:${kdcPort}
[realms]
    ${REALM} = {
        database_name = ${dir}/db/principal
        key_stash_file = ${dir}/db/stash
        acl_file = ${dir}/kadm5.acl
        max_life = 10h 0m 0s
        max_renewable_life = 7d 0h 0m 0s
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }
    ${OTHER_REALM} = {
        database_name = ${dir}/db/other
        key_stash_file = ${dir}/db/stash-other
        acl_file = ${dir}/kadm5.acl
        max_life = 10h 0m 0s
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }
[logging]
    kdc = FILE:${dir}/kdc.log
    default = FILE:${dir}/kdc.log
`,
  );
  await writeFile(join(dir, 'kadm5.acl'), '');
  const toolEnv: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    LANG: 'C',
    KRB5_CONFIG: krb5Conf,
    KRB5_KDC_PROFILE: kdcConf,
    KRB5RCACHEDIR: join(dir, 'rcache'),
    KRB5CCNAME: ccache,
  };
  await runOk('/usr/sbin/kdb5_util', ['create', '-s', '-r', REALM, '-P', `masterpw-${process.pid}`], { env: toolEnv });
  const kadmin = async (query: string): Promise<string> =>
    (await runOk('/usr/sbin/kadmin.local', ['-q', query], { env: toolEnv })).stdout;
  await kadmin(`addprinc -pw ${ALICE.password} ${ALICE.principal}`);
  await kadmin(`addprinc -randkey HTTP/localhost@${REALM}`);
  await kadmin(`ktadd -k ${keytab} HTTP/localhost@${REALM}`);
  await kadmin(`addprinc -randkey HTTP/${INTRANET_HOST}@${REALM}`);
  await kadmin(`ktadd -k ${keytab} HTTP/${INTRANET_HOST}@${REALM}`);
  await chmod(keytab, 0o644); // Apache runs as www-data, squid helpers as proxy
  await runOk('/usr/sbin/kdb5_util', ['create', '-s', '-r', OTHER_REALM, '-P', `masterpw-${process.pid}`], {
    env: toolEnv,
  });
  await runOk(
    '/usr/sbin/kadmin.local',
    ['-r', OTHER_REALM, '-q', `addprinc -pw ${CAROL.password} ${CAROL.principal}`],
    {
      env: toolEnv,
    },
  );
  const log = join(dir, 'kdc.stdout');
  const kdc: Daemon = spawnDaemon(
    'krb5kdc',
    '/usr/sbin/krb5kdc',
    ['-n', '-P', join(dir, 'kdc.pid'), '-r', REALM, '-r', OTHER_REALM],
    toolEnv,
    log,
  );
  await waitDaemon(kdc, kdcPort, log);
  const realm: Realm = {
    realm: REALM,
    dir,
    kdcPort,
    krb5Conf,
    kdcConf,
    keytab,
    ccache,
    toolEnv,
    kadmin,
    async kinit(opts = {}) {
      const args = [];
      if (opts.lifetime) args.push('-l', opts.lifetime);
      args.push(opts.principal ?? ALICE.principal);
      const r = await run('/usr/bin/kinit', args, {
        env: { ...toolEnv, KRB5CCNAME: opts.ccache ?? ccache },
        input: `${opts.password ?? ALICE.password}\n`,
      });
      if (r.code !== 0) throw new Error(`lab: kinit failed: ${r.stderr}`);
    },
    async writeSkewedCcache(path: string, seconds: number) {
      await realm.kinit({ ccache: `FILE:${path}` });
      const b = await readFile(path);
      if (b.readUInt16BE(0) !== 0x0504) throw new Error('lab: ccache is not FILE v4');
      const rest = b.subarray(4 + b.readUInt16BE(2));
      const hdr = Buffer.alloc(16);
      hdr.writeUInt16BE(12, 2); // header length
      hdr.writeUInt16BE(0x0504, 0);
      hdr.writeUInt16BE(1, 4); // tag: DeltaTime
      hdr.writeUInt16BE(8, 6);
      hdr.writeInt32BE(seconds, 8);
      hdr.writeInt32BE(0, 12);
      await writeFile(path, Buffer.concat([hdr, rest]));
      return `FILE:${path}`;
    },
    async writeKrb5Conf(path: string, port: number) {
      await writeFile(path, krb5ConfText(dir, port));
    },
    async stop() {
      await kdc.stop();
    },
  };
  await realm.kinit();
  return realm;
}
