/**
 * A password rotated while the service runs: the reference server (session mode, NTLM) changes
 * alice's password, as a domain controller would, and the agent learns the new one from its vault
 * with `agent.setCredentials` — no new agent, no request cut. Prints, for each phase, the answers,
 * the server's sessions and the 401s it sent. Needs no system packages.
 *
 *   node_modules/.bin/node examples/rotate-password.ts
 */
import { fetch } from 'undici';
import { MultilegAgent } from '../src/index.ts';
import { startReferenceServer } from '../src/reference-server/index.ts';

const REQUESTS = 50;
const server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
const agent = new MultilegAgent({
  credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
  connect: { ca: server.ca },
  trustedOrigins: [server.origin],
});

async function phase(name: string): Promise<void> {
  const before = server.exchanges.length;
  const answers = await Promise.all(
    Array.from({ length: REQUESTS }, async (_, i) => {
      const res = await fetch(`${server.origin}/rotate/${i}`, { dispatcher: agent });
      return { status: res.status, user: ((await res.json()) as { user: string | null }).user };
    }),
  );
  const wire = server.exchanges.slice(before);
  const ok = answers.filter((a) => a.status === 200).length;
  const users = [...new Set(answers.map((a) => a.user))].join(', ');
  const sessions = [...new Set(wire.map((e) => e.sessionId))].join(', ');
  const challenged = wire.filter((e) => e.status === 401).length;
  console.log(`${name}: ${ok}/${REQUESTS} ok as ${users}; server sessions ${sessions}; 401s sent ${challenged}`);
}

try {
  await phase('before the rotation');
  // The domain controller changes the password. The agent's session stays authenticated as alice:
  // a server keeps a session authenticated as whoever opened it.
  server.options.users = { ...server.options.users, 'EXAMPLE\\alice': 'n3w-Passw0rd' };
  await phase('rotated on the server only');
  // The service reads the new password from its vault. The old session retires; a new one
  // authenticates with the new password, one handshake first (R4: a wrong one would be tried once).
  agent.setCredentials({ username: 'EXAMPLE\\alice', password: 'n3w-Passw0rd' });
  await phase('after setCredentials');
  console.log(`handshakes: ${agent.stats().handshakes}, failed: ${agent.stats().failedHandshakes}`);
} finally {
  await agent.close();
  await server.close();
}
