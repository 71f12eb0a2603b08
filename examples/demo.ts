/**
 * The demo: starts the reference server (the server half of the multilegged-auth draft) on
 * loopback and sends 200 concurrent fetches through a new MultilegAgent in each of its modes:
 * session, per-request, and IIS (HTTP/2 refused with HTTP_1_1_REQUIRED, so HTTP/1.1; the session
 * count includes the refused HTTP/2 one). Needs no system packages.
 *
 *   npm run demo
 */
import { fetch } from 'undici';
import { type HandshakeReport, MultilegAgent } from '../src/index.ts';
import { type ReferenceServerMode, startReferenceServer } from '../src/reference-server/index.ts';

const CONCURRENCY = 200;

async function run(mode: ReferenceServerMode, schemes: string[]): Promise<void> {
  const server = await startReferenceServer({ mode, schemes });
  const agent = new MultilegAgent({
    credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
    connect: { ca: server.ca },
    // The password goes only here (docs/SECURITY.md): an agent with a password requires the list.
    trustedOrigins: [server.origin],
  });
  const started = performance.now();
  const responses = await Promise.all(
    Array.from({ length: CONCURRENCY }, (_, i) =>
      fetch(`${server.origin}/demo/${i}`, { dispatcher: agent, method: 'POST', body: `request ${i}` }).then(
        async (res) => ({ status: res.status, body: (await res.json()) as { user: string | null; protocol: string } }),
      ),
    ),
  );
  const ms = performance.now() - started;
  const ok = responses.filter((r) => r.status === 200).length;
  const users = new Set(responses.map((r) => r.body.user));
  const reports: readonly HandshakeReport[] = agent.handshakes();
  const stats = agent.stats();
  const sessions = new Set(server.exchanges.map((e) => e.sessionId));
  console.log(`\n== server mode "${mode}", offering ${schemes.join(', ')}`);
  console.log(`  ${ok}/${CONCURRENCY} responses 200, as ${[...users].join(', ')}, in ${ms.toFixed(0)} ms`);
  console.log(`  sessions: ${sessions.size} (${[...new Set(responses.map((r) => r.body.protocol))].join(', ')})`);
  console.log(`  wire requests: ${server.exchanges.length} for ${CONCURRENCY} user requests`);
  console.log(`  handshakes: ${stats.handshakes}, legs with credentials: ${stats.legs}`);
  const first = reports[0];
  if (first) {
    console.log(
      `  first handshake: ${first.scheme} on ${first.sessionId} (${first.protocol}), ${first.legs} legs, ` +
        `Auth-ID carried: ${first.authIdCarried}, outcome: ${first.outcome}`,
    );
  }
  const outcomes = new Map<string, number>();
  for (const r of reports) outcomes.set(r.outcome, (outcomes.get(r.outcome) ?? 0) + 1);
  console.log(`  outcomes: ${[...outcomes].map(([k, v]) => `${k} × ${v}`).join(', ')}`);
  await agent.close();
  await server.close();
  if (ok !== CONCURRENCY) process.exitCode = 1;
}

await run('session', ['Negotiate', 'NTLM']);
await run('per-request', ['Negotiate']);
await run('iis', ['Negotiate', 'NTLM']);
