/** Squid forward proxy with Basic / Negotiate / (fake) NTLM proxy auth (recipe §6), or some of them. */
import { chown, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort } from './net.ts';
import { type Daemon, runOk, spawnDaemon, waitDaemon } from './proc.ts';

export interface SquidOptions {
  readonly labDir: string;
  readonly krb5Conf: string;
  readonly keytab: string;
  readonly realm: string;
  /** `proxy` uid/gid when running as root. */
  readonly runAs?: { uid: number; gid: number };
  /** Its directory under `labDir` (a second Squid needs its own). Default `squid`. */
  readonly name?: string;
  /** The schemes it asks for, in its `Proxy-Authenticate` order. Default all three. */
  readonly schemes?: readonly SquidScheme[];
}

export type SquidScheme = 'negotiate' | 'ntlm' | 'basic';

export interface Squid {
  /** `http://localhost:PORT`. Basic user alice/alicepw; Negotiate (Kerberos); NTLM via ntlm_fake_auth (accepts ANY password). */
  readonly origin: string;
  readonly port: number;
  readonly cacheLog: string;
  stop(): Promise<void>;
}

export async function startSquid(o: SquidOptions): Promise<Squid> {
  const S = join(o.labDir, o.name ?? 'squid');
  const schemes = new Set(o.schemes ?? ['negotiate', 'ntlm', 'basic']);
  for (const d of ['logs', 'run', 'rcache']) {
    await mkdir(join(S, d), { recursive: true });
    if (o.runAs) await chown(join(S, d), o.runAs.uid, o.runAs.gid);
  }
  await runOk('/usr/bin/htpasswd', ['-cbm', join(S, 'passwd'), 'alice', 'alicepw']);
  const port = await freePort();
  const conf = `http_port 127.0.0.1:${port}
visible_hostname localhost
dns_nameservers 127.0.0.1
hosts_file /etc/hosts
udp_incoming_address 127.0.0.1
udp_outgoing_address 127.0.0.1
pid_filename ${S}/run/squid.pid
${o.runAs ? 'cache_effective_user proxy' : ''}
access_log stdio:${S}/logs/access.log
cache_log ${S}/logs/cache.log
cache_store_log none
coredump_dir ${S}/run
netdb_filename none
cache deny all
cache_mem 8 MB
icp_port 0
htcp_port 0
pinger_enable off
shutdown_lifetime 0 seconds
logfile_rotate 0
${
  schemes.has('negotiate')
    ? `auth_param negotiate program /usr/lib/squid/negotiate_kerberos_auth -k ${o.keytab} -s HTTP/localhost@${o.realm}
auth_param negotiate children 2 startup=1 idle=1
auth_param negotiate keep_alive on`
    : ''
}
${
  schemes.has('ntlm')
    ? `auth_param ntlm program /usr/lib/squid/ntlm_fake_auth
auth_param ntlm children 2 startup=1 idle=1`
    : ''
}
${
  schemes.has('basic')
    ? `auth_param basic program /usr/lib/squid/basic_ncsa_auth ${S}/passwd
auth_param basic children 2 startup=1 idle=1
auth_param basic realm lab-proxy`
    : ''
}
acl to_loopback dst 127.0.0.0/8
acl from_loopback src 127.0.0.0/8
acl authed proxy_auth REQUIRED
http_access deny !to_loopback
http_access allow from_loopback authed
http_access deny all
`;
  const confFile = join(S, 'squid.conf');
  await writeFile(confFile, conf);
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    LANG: 'C',
    KRB5_CONFIG: o.krb5Conf,
    KRB5RCACHEDIR: join(S, 'rcache'),
    KRB5_KTNAME: `FILE:${o.keytab}`,
  };
  const log = join(S, 'logs/stdout.log');
  const d: Daemon = spawnDaemon('squid', '/usr/sbin/squid', ['-N', '-f', confFile], env, log);
  await waitDaemon(d, port, log);
  return { origin: `http://localhost:${port}`, port, cacheLog: join(S, 'logs/cache.log'), stop: () => d.stop(10_000) };
}
