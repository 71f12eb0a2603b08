/**
 * The command line's last two exit paths, each forced in the child process by a preloaded module
 * (no DNS query leaves the machine): an unknown host (curl's 6) and a bug of ours (1, one line,
 * no stack trace).
 */
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runCli } from './cli-helpers.ts';

const preload = (name: string) => `--import ${fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url))}`;

describe('multileg command line: exit paths a test can only force', () => {
  it('exits 6 like curl when the host name does not resolve, with one line naming it', async () => {
    const r = await runCli(['https://nowhere.test/x'], { env: { NODE_OPTIONS: preload('dns-fails.mjs') } });
    expect(r.code).toBe(6);
    expect(r.stderr.trim()).toBe('multileg: could not resolve host nowhere.test');
    expect(r.stdout).toBe('');
  });

  it('exits 1 with one line and no stack trace when something of ours breaks', async () => {
    const r = await runCli(['--max-time', '5000', 'https://localhost:1/x'], {
      env: { NODE_OPTIONS: preload('crash-on-request.mjs') },
    });
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe('multileg: unexpected error: simulated internal bug');
  });
});
