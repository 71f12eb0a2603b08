/**
 * A corporate service behind an authenticating proxy (H5).
 *
 * In an office network this is what a Node service does: the proxy wants Negotiate (Kerberos, from
 * the ticket cache, SPN `HTTP@proxy.corp.example`) or NTLM, and the intranet service wants Windows
 * authentication too — with its own credentials:
 *
 *   HTTPS_PROXY=http://proxy.corp.example:8080 NO_PROXY=.internal node_modules/.bin/node examples/proxy.ts https://service.corp.example/api
 *
 *   const agent = new MultilegAgent({
 *     credentials: { username: 'CORP\\svc-report', password: process.env.SVC_PASSWORD! }, // for the service
 *     trustedOrigins: ['https://service.corp.example'], // ...and only for it
 *     proxy: { credentials: { username: 'CORP\\alice', password: process.env.PROXY_PASSWORD! } }, // for the proxy
 *   });                // proxy.uri defaults to HTTPS_PROXY (https URLs) / HTTP_PROXY (http URLs); NO_PROXY honoured
 *   const res = await fetch('https://service.corp.example/api', { dispatcher: agent });
 *
 * Without an argument it runs self-contained on loopback: the reference server (NTLM, the
 * multilegged-auth draft) as the service, behind the reference proxy asking for Basic.
 *
 *   node_modules/.bin/node examples/proxy.ts         # self-contained (the project's Node 22)
 *   node_modules/.bin/node examples/proxy.ts <url>   # through HTTPS_PROXY (an http:// url: HTTP_PROXY), Kerberos ticket or PROXY_USER/PROXY_PASSWORD
 */
import { fetch } from 'undici';
import { MultilegAgent } from '../src/index.ts';
import { startReferenceProxy, startReferenceServer } from '../src/reference-server/index.ts';

async function selfContained(): Promise<void> {
  const service = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
  const proxy = await startReferenceProxy({ basicUsers: { 'proxy-user': 'proxy-pw' }, proxySupport: true });
  const agent = new MultilegAgent({
    credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' }, // the service's
    negotiate: false,
    connect: { ca: service.ca },
    // The plain-http origin too, below: a password sent over http must be trusted explicitly (S4).
    trustedOrigins: [service.origin, `http://localhost:${service.port}`],
    proxy: {
      uri: proxy.origin,
      connect: { ca: proxy.ca },
      credentials: { username: 'proxy-user', password: 'proxy-pw' }, // the proxy's, never sent to the service
    },
  });
  try {
    // https: a CONNECT tunnel (407 → Basic on the proxy socket), then TLS + h2 and NTLM to the service.
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        fetch(`${service.origin}/report/${i}`, { dispatcher: agent }).then(
          async (r) => [r.status, ((await r.json()) as { user: string; protocol: string }).protocol] as const,
        ),
      ),
    );
    console.log(`https through the tunnel: ${results.filter(([s]) => s === 200).length}/20 ok over ${results[0]![1]}`);
    // http: forwarded in absolute form; Proxy-support lets the NTLM session stand (H4).
    const res = await fetch(`http://localhost:${service.port}/report/plain`, { dispatcher: agent });
    console.log(`http forwarded by the proxy: ${res.status} as ${((await res.json()) as { user: string }).user}`);
    console.log('proxy saw:', proxy.exchanges.map((e) => `${e.method} ${e.status}`).join(', '));
    console.log(
      'handshakes:',
      agent
        .handshakes()
        .map((h) => `${h.scheme}/${h.outcome}/${h.protocol}`)
        .join(', '),
    );
  } finally {
    await agent.close();
    await proxy.close();
    await service.close();
  }
}

async function real(url: string): Promise<void> {
  const user = process.env.PROXY_USER;
  const agent = new MultilegAgent({
    proxy: user ? { credentials: { username: user, password: process.env.PROXY_PASSWORD ?? '' } } : {},
  });
  try {
    const res = await fetch(url, { dispatcher: agent });
    console.log(res.status, res.headers.get('content-type'));
    console.log((await res.text()).slice(0, 500));
  } finally {
    await agent.close();
  }
}

const url = process.argv[2];
await (url ? real(url) : selfContained());
