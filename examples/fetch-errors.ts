/**
 * Typed errors through fetch. fetch reports every failure as `TypeError('fetch failed')`; multileg's
 * typed error (a `MultilegError` with a stable `code` and a message naming the fix) is its `cause`.
 * `undici.request` throws the typed error itself.
 *
 *   node_modules/.bin/node examples/fetch-errors.ts   # self-contained, on loopback (the project's
 *                                                     # Node 22: a system Node 20 cannot run .ts)
 *
 * Here `limits.maxLegs: 1` stops the reference server's NTLM handshake, which takes 2 legs
 * (NEGOTIATE, then AUTHENTICATE in answer to the server's CHALLENGE).
 */
import { fetch, request } from 'undici';
import { MultilegAgent, MultilegError } from '../src/index.ts';
import { startReferenceServer } from '../src/reference-server/index.ts';

const server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
const agent = new MultilegAgent({
  credentials: { username: 'EXAMPLE\\alice', password: 'alicepw' },
  trustedOrigins: [server.origin],
  connect: { ca: server.ca },
  limits: { maxLegs: 1 },
});
try {
  await fetch(`${server.origin}/report`, { dispatcher: agent });
} catch (err) {
  // err is TypeError('fetch failed'); ours is its cause.
  const cause = (err as Error).cause;
  if (cause instanceof MultilegError)
    console.log(`fetch: ${(err as Error).message}; cause ${cause.code}: ${cause.message}`);
  else throw err;
}
try {
  await request(`${server.origin}/report`, { dispatcher: agent });
} catch (err) {
  if (err instanceof MultilegError) console.log(`request: ${err.code}`);
  else throw err;
}
await agent.close();
await server.close();
