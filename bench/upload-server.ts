/** The reference server for bench/upload.ts, in its own process: reports when each upload's first body bytes arrive. */
import { startReferenceServer } from '../src/reference-server/index.ts';

const server = await startReferenceServer({ mode: 'session' });
const seen = new Set<string>();
server.on('bodyChunk', ({ path }) => {
  if (seen.has(path)) return;
  seen.add(path);
  process.send?.({ path, at: performance.timeOrigin + performance.now() });
});
process.send?.({ origin: server.origin, ca: server.ca });
process.on('disconnect', () => {
  server.close().then(() => process.exit(0));
});
