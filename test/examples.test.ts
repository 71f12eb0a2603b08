import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { runCommand } from './cli-helpers.ts';

const EXAMPLES = new URL('../examples/', import.meta.url);
const runExample = (name: string) => runCommand(process.execPath, [new URL(name, EXAMPLES).pathname]);

/** Every example runs self-contained on loopback (no system peers): each is run to its end here. */
const TESTED = ['demo.ts', 'fetch-errors.ts', 'proxy.ts', 'rotate-password.ts'];

describe('examples', () => {
  it('every example is run by this file', () => {
    expect(
      readdirSync(EXAMPLES)
        .filter((f) => f.endsWith('.ts'))
        .sort(),
    ).toEqual(TESTED);
  });

  it('fetch-errors: through fetch the typed error is the cause of TypeError("fetch failed"); request throws it itself', async () => {
    const r = await runExample('fetch-errors.ts');
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(
      'fetch: fetch failed; cause MULTILEG_LEG_LIMIT: NTLM handshake exceeded limits.maxLegs (1): the scheme takes more legs than that (NTLM, alone or inside Negotiate, takes 2); raise limits.maxLegs (default 6)\n' +
        'request: MULTILEG_LEG_LIMIT\n',
    );
    expect(r.code).toBe(0);
  });

  it('H5: proxy: https through the CONNECT tunnel and http forwarded by the reference proxy, each with the service password, runs to its end', async () => {
    const r = await runExample('proxy.ts');
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('https through the tunnel: 20/20 ok over h2\n');
    expect(r.stdout).toContain('http forwarded by the proxy: 200 as EXAMPLE\\alice\n');
    expect(r.code).toBe(0);
  });

  it('S6/R4: rotate-password: after setCredentials a new session authenticates with the new password, no handshake fails', async () => {
    const r = await runExample('rotate-password.ts');
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(
      'before the rotation: 50/50 ok as EXAMPLE\\alice; server sessions s1; 401s sent 2\n' +
        'rotated on the server only: 50/50 ok as EXAMPLE\\alice; server sessions s1; 401s sent 0\n' +
        'after setCredentials: 50/50 ok as EXAMPLE\\alice; server sessions s2; 401s sent 1\n' +
        'handshakes: 2, failed: 0\n',
    );
    expect(r.code).toBe(0);
  });

  it('demo: 200 concurrent fetches succeed in each reference-server mode', async () => {
    const r = await runExample('demo.ts');
    expect(r.stderr).toBe('');
    for (const mode of ['session', 'per-request', 'iis']) expect(r.stdout).toContain(`== server mode "${mode}"`);
    expect(r.stdout.match(/ {2}200\/200 responses 200, as EXAMPLE\\alice, in \d+ ms\n/g)).toHaveLength(3);
    expect(r.code).toBe(0);
  }, 30_000);
});
