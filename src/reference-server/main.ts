/**
 * Runs the reference server standalone, for the demo and manual poking:
 *   node_modules/.bin/node src/reference-server/main.ts [--mode session|none|per-request|iis|legacy] [--port 8443]
 *     [--host 127.0.0.1] [--iis-via rst|goaway] [--schemes Negotiate,NTLM] [--max-contexts 8]
 *     [--channel-binding] [--log] [--ca-file ca.pem]
 * Prints its origin on the first line of stdout (scripts read it), then runs until SIGINT/SIGTERM;
 * answers a `stats` line on stdin with its counters as JSON.
 */
import { writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { startReferenceServer } from './server.ts';
import type { ReferenceServerMode, ReferenceServerOptions } from './types.ts';

const MODES: readonly ReferenceServerMode[] = ['session', 'none', 'per-request', 'iis', 'legacy'];

function fail(message: string): never {
  process.stderr.write(`reference-server: ${message}\n`);
  process.exit(2);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      mode: { type: 'string', default: 'session' },
      port: { type: 'string', default: '0' },
      host: { type: 'string', default: '127.0.0.1' },
      'iis-via': { type: 'string', default: 'rst' },
      schemes: { type: 'string' },
      'max-contexts': { type: 'string' },
      'channel-binding': { type: 'boolean', default: false },
      log: { type: 'boolean', default: false },
      'ca-file': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(
      'usage: node_modules/.bin/node src/reference-server/main.ts [--mode session|none|per-request|iis|legacy] [--port N] [--host H]\n' +
        '         [--iis-via rst|goaway] [--schemes Negotiate,NTLM] [--max-contexts N] [--channel-binding] [--log]\n' +
        '         [--ca-file FILE]   (writes the test CA there, for --cacert)\n' +
        'users: EXAMPLE\\alice / alicepw, EXAMPLE\\bob / bobpw; CA: src/reference-server/test-pki.ts (CA_CERT)\n',
    );
    return;
  }
  const mode = values.mode as ReferenceServerMode;
  if (!MODES.includes(mode)) fail(`--mode must be one of ${MODES.join(', ')}`);
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail('--port must be an integer 0..65535');
  const iisVia = values['iis-via'];
  if (iisVia !== 'rst' && iisVia !== 'goaway') fail('--iis-via must be rst or goaway');
  const opts: ReferenceServerOptions = {
    mode,
    port,
    host: values.host,
    iisVia,
    requireChannelBinding: values['channel-binding'],
  };
  if (values.schemes)
    opts.schemes = values.schemes
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  if (values['max-contexts'] !== undefined) {
    const max = Number(values['max-contexts']);
    if (!Number.isInteger(max) || max < 0) fail('--max-contexts must be a non-negative integer');
    opts.maxIncompleteContexts = max;
  }
  if (values.log) {
    // Standalone use only: the log shows outcomes, never the Authorization values.
    opts.onExchange = (e) =>
      process.stderr.write(
        `${e.seq} ${e.sessionId} ${e.protocol} ${e.method} ${e.path} -> ${e.status ?? '-'} ${e.outcome}` +
          `${e.user ? ` ${e.user}` : ''}${e.reason ? ` (${e.reason})` : ''}\n`,
      );
  }
  const server = await startReferenceServer(opts);
  if (values['ca-file']) writeFileSync(values['ca-file'], server.ca);
  process.stdout.write(`${server.origin}\n`);
  const stop = () => {
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  // A line `stats` on stdin is answered with the counters as one JSON line (the benchmark reads it).
  createInterface({ input: process.stdin }).on('line', (line) => {
    if (line.trim() === 'stats') process.stdout.write(`${JSON.stringify(server.stats)}\n`);
  });
}

main().catch((err: unknown) => fail(err instanceof Error ? err.message : String(err)));
