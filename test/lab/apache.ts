/**
 * Apache httpd with mod_auth_gssapi (Kerberos, gss-ntlmssp), Basic, Digest, h2 over TLS, and a GSSAPI
 * forward proxy (recipe: /work/shared/notes/real-peers.md §5).
 */
import { createHash } from 'node:crypto';
import { chmod, chown, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { INTRANET_HOST } from './krb5.ts';
import { freePort } from './net.ts';
import { APACHE_MODULES } from './peers.ts';
import { type Daemon, runOk, spawnDaemon, waitDaemon } from './proc.ts';

export interface ApacheOptions {
  readonly labDir: string;
  readonly krb5Conf: string;
  readonly keytab: string;
  readonly ntlmUserFile: string;
  /** Add the GSSAPI forward-proxy vhost. */
  readonly proxy: boolean;
  /** `www-data` uid/gid when running as root. */
  readonly runAs?: { uid: number; gid: number };
}

export interface Apache {
  /** `https://localhost:PORT` (TLS, h2 + http/1.1). */
  readonly origin: string;
  /** `http://localhost:PORT` (cleartext, h2c + http/1.1). */
  readonly cleartextOrigin: string;
  /** `http://localhost:PORT` of the forward proxy vhost, when started with `apacheProxy`. */
  readonly proxyOrigin?: string;
  readonly tlsPort: number;
  readonly port: number;
  readonly proxyPort?: number;
  /** PEM of Apache's self-signed server certificate (trust it as the CA). */
  readonly ca: string;
  readonly certFile: string;
  readonly errorLog: string;
  readonly accessLog: string;
  stop(): Promise<void>;
}

export const APACHE_LOCATIONS = [
  'protected',
  'ntlm',
  'spnego2',
  'basic',
  'digest',
  'digest-once',
  'public',
  'krb-session',
] as const;
export const BASIC_USER = { username: 'alice', password: 'alicepw' } as const;
export const DIGEST_REALM = 'digest-realm';

export async function startApache(o: ApacheOptions): Promise<Apache> {
  const A = join(o.labDir, 'apache');
  for (const d of ['conf', 'logs', 'run', 'rcache', ...APACHE_LOCATIONS.map((l) => `htdocs/${l}`)]) {
    await mkdir(join(A, d), { recursive: true });
  }
  if (o.runAs) {
    for (const d of ['rcache', 'logs']) await chown(join(A, d), o.runAs.uid, o.runAs.gid);
  }
  await chmod(join(A, 'rcache'), 0o700);
  const key = join(A, 'conf/server.key');
  const certFile = join(A, 'conf/server.crt');
  await runOk('/usr/bin/openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    key,
    '-out',
    certFile,
    '-days',
    '30',
    '-subj',
    '/CN=localhost',
    '-addext',
    // The made-up intranet name too: reached through --resolve, TLS still checks it.
    `subjectAltName=DNS:localhost,DNS:${INTRANET_HOST},IP:127.0.0.1`,
  ]);
  for (const l of APACHE_LOCATIONS) await writeFile(join(A, `htdocs/${l}/index.html`), `hello from /${l}\n`);
  await runOk('/usr/bin/htpasswd', ['-cbm', join(A, 'conf/htpasswd'), BASIC_USER.username, BASIC_USER.password]);
  const ha1 = createHash('md5').update(`${BASIC_USER.username}:${DIGEST_REALM}:${BASIC_USER.password}`).digest('hex');
  await writeFile(join(A, 'conf/htdigest'), `${BASIC_USER.username}:${DIGEST_REALM}:${ha1}\n`);

  const tlsPort = await freePort();
  const port = await freePort();
  const proxyPort = o.proxy ? await freePort() : undefined;
  const M = APACHE_MODULES;
  const mods = [
    'mpm_event',
    'authn_core',
    'authn_file',
    'authz_core',
    'authz_user',
    'auth_basic',
    'auth_digest',
    'auth_gssapi',
    'socache_shmcb',
    'ssl',
    'http2',
    'headers',
    'mime',
    'dir',
    'setenvif',
    'rewrite',
    ...(o.proxy ? ['proxy', 'proxy_connect', 'proxy_http'] : []),
  ];
  const conf = `ServerRoot ${A}
ServerName localhost
DefaultRuntimeDir ${A}/run
PidFile ${A}/run/httpd.pid
Listen 127.0.0.1:${tlsPort}
Listen 127.0.0.1:${port}
${o.runAs ? 'User www-data\nGroup www-data' : ''}
${mods.map((m) => `LoadModule ${m}_module ${M}/mod_${m}.so`).join('\n')}
TypesConfig /etc/mime.types
DirectoryIndex index.html
ErrorLog ${A}/logs/error.log
LogLevel warn auth_gssapi:debug
# at=: when the request arrived (µs). Lines are written when a request ends, which under load is
# not always the order they arrived in (a 401 can be logged after the retry it caused).
# scheme=: the scheme of the request's Authorization (never its credentials), - without one.
SetEnvIf Authorization "^(\\S+)" auth_scheme=$1
LogFormat "%h \\"%r\\" %>s %{remote}p proto=%H user=%u at=%{begin:usec}t scheme=%{auth_scheme}e" lab
CustomLog ${A}/logs/access.log lab
KeepAliveTimeout 30
MaxKeepAliveRequests 1000
StartServers 1
ServerLimit 2
ThreadsPerChild 16
MaxRequestWorkers 32
Protocols h2 http/1.1
H2Direct on
SSLSessionCache shmcb:${A}/run/ssl_scache(512000)
DocumentRoot ${A}/htdocs
<Directory ${A}/htdocs>
    Require all granted
</Directory>
Header always set X-Remote-User "expr=%{REMOTE_USER}"
Header always set X-Protocol "expr=%{SERVER_PROTOCOL}"
<VirtualHost 127.0.0.1:${tlsPort}>
    SSLEngine on
    SSLCertificateFile ${certFile}
    SSLCertificateKeyFile ${key}
    Protocols h2 http/1.1
</VirtualHost>
<VirtualHost 127.0.0.1:${port}>
    Protocols h2c http/1.1
</VirtualHost>
# Kerberos only (1 leg)
<Location /protected>
    AuthType GSSAPI
    AuthName "GSSAPI Kerberos"
    GssapiCredStore keytab:${o.keytab}
    GssapiAllowedMech krb5
    GssapiPublishMech On
    Require valid-user
</Location>
# Kerberos, the authenticated request answered with a 302: mod_rewrite in a Location runs after
# authentication (mod_alias's Redirect there answers before it: no handshake at all)
<Location /krb-redirect>
    AuthType GSSAPI
    AuthName "GSSAPI Kerberos"
    GssapiCredStore keytab:${o.keytab}
    GssapiAllowedMech krb5
    Require valid-user
    RewriteEngine On
    RewriteRule ^ /protected/ [R=302,L]
</Location>
# Kerberos, session mode (Persistent-Auth: true): the HTTP/1.1 connection stays authenticated
<Location /krb-session>
    AuthType GSSAPI
    AuthName "GSSAPI Kerberos session"
    GssapiCredStore keytab:${o.keytab}
    GssapiAllowedMech krb5
    GssapiConnectionBound On
    GssapiPublishMech On
    Header always set Persistent-Auth true "expr=%{REQUEST_STATUS} == 200"
    Require valid-user
</Location>
# NTLM via gss-ntlmssp, multi-leg, HTTP/1.1 only in practice
<Location /ntlm>
    AuthType GSSAPI
    AuthName "GSSAPI NTLM"
    GssapiAllowedMech ntlmssp
    GssapiConnectionBound On
    GssapiPublishMech On
    Require valid-user
</Location>
<Location /basic>
    AuthType Basic
    AuthName "basic-realm"
    AuthUserFile ${A}/conf/htpasswd
    Require valid-user
</Location>
<Location /digest>
    AuthType Digest
    AuthName "${DIGEST_REALM}"
    AuthDigestProvider file
    AuthUserFile ${A}/conf/htdigest
    Require valid-user
</Location>
# One-time nonces: each answer's Authentication-Info names the next (nextnonce), the used one is stale.
<Location /digest-once>
    AuthType Digest
    AuthName "${DIGEST_REALM}"
    AuthDigestProvider file
    AuthUserFile ${A}/conf/htdigest
    AuthDigestNonceLifetime 0
    Require valid-user
</Location>
# krb5 + ntlmssp; NO GssapiCredStore (keytab via KRB5_KTNAME env): with it the child segfaults on SPNEGO/NTLM
<Location /spnego2>
    AuthType GSSAPI
    AuthName "GSSAPI SPNEGO2"
    GssapiAllowedMech krb5
    GssapiAllowedMech ntlmssp
    GssapiConnectionBound On
    GssapiPublishMech On
    Require valid-user
</Location>
${
  proxyPort
    ? `Listen 127.0.0.1:${proxyPort}
<VirtualHost 127.0.0.1:${proxyPort}>
    Protocols http/1.1
    ProxyRequests On
    AllowCONNECT ${tlsPort} ${port}
    <Proxy "*">
        AuthType GSSAPI
        AuthName "GSSAPI proxy"
        GssapiAllowedMech krb5
        GssapiAllowedMech ntlmssp
        GssapiConnectionBound On
        Require valid-user
    </Proxy>
    # never proxy off-box
    <ProxyMatch "^(?!(https?://)?(localhost|127\\.0\\.0\\.1)[:/])">
        Require all denied
    </ProxyMatch>
</VirtualHost>`
    : ''
}
`;
  const confFile = join(A, 'conf/httpd.conf');
  await writeFile(confFile, conf);
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    LANG: 'C',
    KRB5_CONFIG: o.krb5Conf,
    KRB5RCACHEDIR: join(A, 'rcache'),
    NTLM_USER_FILE: o.ntlmUserFile,
    KRB5_KTNAME: `FILE:${o.keytab}`,
  };
  const log = join(A, 'logs/stdout.log');
  const d: Daemon = spawnDaemon('apache2', '/usr/sbin/apache2', ['-f', confFile, '-DFOREGROUND'], env, log);
  await waitDaemon(d, tlsPort, log);
  await waitDaemon(d, port, log);
  if (proxyPort) await waitDaemon(d, proxyPort, log);
  const ca = await readFile(certFile, 'utf8');
  return {
    origin: `https://localhost:${tlsPort}`,
    cleartextOrigin: `http://localhost:${port}`,
    ...(proxyPort ? { proxyOrigin: `http://localhost:${proxyPort}`, proxyPort } : {}),
    tlsPort,
    port,
    ca,
    certFile,
    errorLog: join(A, 'logs/error.log'),
    accessLog: join(A, 'logs/access.log'),
    stop: () => d.stop(),
  };
}

/** Apache asking for a client certificate in TLS (`SSLVerifyClient optional`): see {@link startCertificateApache}. */
/** A server that asks for (or requires) a TLS client certificate: Apache's here, nginx's (nginx.ts). */
export interface CertificateServer {
  /** `https://localhost:PORT` (h2 + http/1.1). */
  readonly origin: string;
  stop(): Promise<void>;
}
export type CertificateApache = CertificateServer;

/** What a {@link CertificateServer} is made of: its directory, its own certificate and key, the client CAs it takes. */
export interface CertificateServerOptions {
  readonly dir: string;
  readonly cert: string;
  readonly key: string;
  readonly clientCas: readonly string[];
  /** `TLSv1.2`: that version only. */
  readonly maxVersion?: 'TLSv1.2' | 'TLSv1.3';
}

/**
 * Apache httpd (mod_ssl, mod_http2) of its own, no Kerberos: its TLS vhost asks every client for a
 * certificate of `clientCas` (`SSLVerifyClient optional`, `SSLCACertificateFile`: Apache names them
 * in its CertificateRequest) and answers `Transport mode="tls-client-certificate"` 401 until one it
 * verifies is presented; then 200 with the text `certificate`. `cert`/`key`: its server certificate.
 * `maxVersion` `TLSv1.2` keeps it to TLS 1.2 (`SSLProtocol`). `verify` `require`: `SSLVerifyClient
 * require` instead (a handshake without a certificate fails). `location` `/cert`: the vhost asks for
 * none in its handshake and `verify` holds for `<Location /cert>` alone (IIS's "Require SSL" + client
 * certificates on a folder whose binding does not negotiate them up front): Apache asks for it mid-
 * connection then — a TLS 1.2 renegotiation, TLS 1.3 post-handshake authentication (403 "Cannot
 * perform Post-Handshake Authentication" to a client that does not offer it), and over h2 it resets
 * the stream HTTP_1_1_REQUIRED; `/` (index.html `public`) needs none. `runAs` as {@link ApacheOptions.runAs}.
 */
export async function startCertificateApache(
  o: CertificateServerOptions & {
    readonly verify?: 'optional' | 'require';
    readonly location?: '/cert';
    readonly runAs?: { uid: number; gid: number };
  },
): Promise<CertificateApache> {
  const A = join(o.dir, 'apache-cert');
  for (const d of ['conf', 'logs', 'run', 'htdocs/cert']) await mkdir(join(A, d), { recursive: true });
  if (o.runAs) await chown(join(A, 'logs'), o.runAs.uid, o.runAs.gid);
  await writeFile(join(A, 'conf/server.crt'), o.cert);
  await writeFile(join(A, 'conf/server.key'), o.key);
  await writeFile(join(A, 'conf/client-cas.pem'), o.clientCas.join(''));
  await writeFile(join(A, 'htdocs/index.html'), o.location ? 'public' : 'certificate');
  await writeFile(join(A, 'htdocs/cert/index.html'), 'certificate');
  const tlsPort = await freePort();
  const M = APACHE_MODULES;
  const mods = ['mpm_event', 'authz_core', 'socache_shmcb', 'ssl', 'http2', 'headers', 'rewrite', 'mime', 'dir'];
  const conf = `ServerRoot ${A}
ServerName localhost
DefaultRuntimeDir ${A}/run
PidFile ${A}/run/httpd.pid
Listen 127.0.0.1:${tlsPort}
${o.runAs ? 'User www-data\nGroup www-data' : ''}
${mods.map((m) => `LoadModule ${m}_module ${M}/mod_${m}.so`).join('\n')}
TypesConfig /etc/mime.types
DirectoryIndex index.html
ErrorLog ${A}/logs/error.log
LogLevel warn
StartServers 1
ServerLimit 1
ThreadsPerChild 8
MaxRequestWorkers 8
SSLSessionCache shmcb:${A}/run/ssl_scache(512000)
DocumentRoot ${A}/htdocs
<Directory ${A}/htdocs>
    Require all granted
</Directory>
<VirtualHost 127.0.0.1:${tlsPort}>
    SSLEngine on
    SSLCertificateFile ${A}/conf/server.crt
    SSLCertificateKeyFile ${A}/conf/server.key
    ${o.maxVersion === 'TLSv1.2' ? 'SSLProtocol -all +TLSv1.2' : ''}
    SSLVerifyDepth 2
    SSLCACertificateFile ${A}/conf/client-cas.pem
    Protocols h2 http/1.1
    Header always set WWW-Authenticate "Transport mode=\\"tls-client-certificate\\"" "expr=%{REQUEST_STATUS} == 401"
    ${o.location ? `<Location ${o.location}>` : ''}
    SSLVerifyClient ${o.verify ?? 'optional'}
    RewriteEngine on
    RewriteCond %{SSL:SSL_CLIENT_VERIFY} !=SUCCESS
    RewriteRule ^ - [R=401]
    ${o.location ? '</Location>' : ''}
</VirtualHost>
`;
  const confFile = join(A, 'conf/httpd.conf');
  await writeFile(confFile, conf);
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' };
  const log = join(A, 'logs/stdout.log');
  const d: Daemon = spawnDaemon('apache2', '/usr/sbin/apache2', ['-f', confFile, '-DFOREGROUND'], env, log);
  await waitDaemon(d, tlsPort, log);
  return { origin: `https://localhost:${tlsPort}`, stop: () => d.stop() };
}
