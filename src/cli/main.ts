#!/usr/bin/env node
/**
 * `multileg`: a curl-like client for intranet services that want NTLM, Negotiate/Kerberos or a
 * client certificate, over HTTP/2 and HTTP/1.1. Exit codes: 0 done, 1 a typed failure
 * (MultilegError: the message names the fix), 2 bad usage, 22 an HTTP error with --fail.
 */
import { createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { CommanderError } from 'commander';
import { request } from 'undici';
import { MultilegAgent } from '../agent.ts';
import { ConfigError, MultilegError } from '../errors.ts';
import { parseCli } from './options.ts';

async function main(argv: string[]): Promise<number> {
  let req: ReturnType<typeof parseCli>;
  try {
    req = parseCli(argv);
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    if (err instanceof ConfigError) {
      process.stderr.write(`multileg: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const agent = new MultilegAgent(req.agent);
  if (req.verbose) {
    agent.onHandshake((r) =>
      process.stderr.write(
        `* handshake ${r.scheme} on session ${r.sessionId} (${r.protocol ?? '?'}): ${r.legs} legs, Auth-ID ${r.authIdCarried ? 'carried' : 'not used'}, ${r.outcome}${r.identity ? ` as ${r.identity}` : ''}${r.fallbackReason ? `; Kerberos skipped: ${r.fallbackReason}` : ''}\n`,
      ),
    );
  }
  try {
    const res = await request(req.url, {
      dispatcher: agent,
      method: req.method as 'GET',
      headers: req.headers,
      body: req.body ?? null,
      ...(req.http1 ? { allowH2: false } : {}),
    } as Parameters<typeof request>[1]);
    if (req.include) {
      process.stdout.write(`HTTP ${res.statusCode}\n`);
      for (const [k, v] of Object.entries(res.headers)) {
        for (const value of Array.isArray(v) ? v : [v]) process.stdout.write(`${k}: ${value}\n`);
      }
      process.stdout.write('\n');
    }
    await pipeline(res.body, req.output ? createWriteStream(req.output) : process.stdout, { end: Boolean(req.output) });
    if (req.verbose) {
      const s = agent.stats();
      process.stderr.write(
        `* ${s.sessions} session(s), ${s.handshakes} handshake(s), ${s.legs} leg(s) with credentials\n`,
      );
    }
    return req.fail && res.statusCode >= 400 ? 22 : 0;
  } catch (err) {
    const e = err instanceof MultilegError ? err : ((err as { cause?: unknown }).cause ?? err);
    const code = e instanceof MultilegError ? ` (${e.code})` : '';
    process.stderr.write(`multileg: ${(e as Error).message}${code}\n`);
    return 1;
  } finally {
    await agent.destroy().catch(() => {});
  }
}

process.exitCode = await main(process.argv.slice(2));
