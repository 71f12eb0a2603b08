/** Random bytes for per-request work, from a pool (see {@link pooledRandom}). */
import { randomFillSync } from 'node:crypto';

/**
 * Random bytes from a 4 KiB pool refilled from the CSPRNG: a per-request handshake needs 24 of them,
 * and one call into OpenSSL each was a measurable share of per-request mode (the reference server's
 * Auth-IDs and server challenges take theirs from here too). Every byte is handed out once (a copy:
 * the pool is overwritten when refilled).
 */
const randomPool = Buffer.alloc(4096);
let randomUsed = randomPool.length;
export function pooledRandom(n: number): Buffer {
  if (n > randomPool.length) return randomFillSync(Buffer.alloc(n));
  if (randomUsed + n > randomPool.length) {
    randomFillSync(randomPool);
    randomUsed = 0;
  }
  const out = Buffer.from(randomPool.subarray(randomUsed, randomUsed + n));
  randomUsed += n;
  return out;
}
