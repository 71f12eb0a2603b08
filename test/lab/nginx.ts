/**
 * nginx requiring a TLS client certificate (`ssl_verify_client on`): unlike Apache, IIS or Node, it
 * completes the TLS handshake without one (or with one it refuses) and answers every request 400
 * "No required SSL certificate was sent" (or "The SSL certificate error"). h2 and HTTP/1.1 on one
 * port; 200 with the verified certificate's issuer DN otherwise.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CertificateServer, CertificateServerOptions } from './apache.ts';
import { freePort } from './net.ts';
import { type Daemon, spawnDaemon, waitDaemon } from './proc.ts';

export type CertificateNginx = CertificateServer;

export async function startCertificateNginx(o: CertificateServerOptions): Promise<CertificateNginx> {
  const N = join(o.dir, 'nginx');
  await mkdir(join(N, 'logs'), { recursive: true });
  await writeFile(join(N, 'server.crt'), o.cert);
  await writeFile(join(N, 'server.key'), o.key);
  await writeFile(join(N, 'client-cas.pem'), o.clientCas.join(''));
  const port = await freePort();
  // master_process off: one process, stopped with the daemon (no pid-file dance, no workers left).
  const conf = `daemon off;
master_process off;
worker_processes 1;
pid ${N}/nginx.pid;
error_log ${N}/logs/error.log warn;
events { worker_connections 64; }
http {
  access_log ${N}/logs/access.log;
  client_body_temp_path ${N}/body;
  proxy_temp_path ${N}/proxy;
  fastcgi_temp_path ${N}/fastcgi;
  uwsgi_temp_path ${N}/uwsgi;
  scgi_temp_path ${N}/scgi;
  server {
    listen 127.0.0.1:${port} ssl http2;
    server_name localhost;
    ssl_certificate ${N}/server.crt;
    ssl_certificate_key ${N}/server.key;
    ssl_protocols ${o.maxVersion === 'TLSv1.2' ? 'TLSv1.2' : 'TLSv1.2 TLSv1.3'};
    ssl_client_certificate ${N}/client-cas.pem;
    ssl_verify_client on;
    location / { return 200 "certificate $ssl_client_i_dn_legacy"; }
  }
}
`;
  const confFile = join(N, 'nginx.conf');
  await writeFile(confFile, conf);
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' };
  const log = join(N, 'logs/stdout.log');
  const d: Daemon = spawnDaemon(
    'nginx',
    '/usr/sbin/nginx',
    ['-c', confFile, '-p', N, '-e', join(N, 'logs/error.log')],
    env,
    log,
  );
  await waitDaemon(d, port, log);
  return { origin: `https://localhost:${port}`, stop: () => d.stop() };
}
