import { describe, expect, it } from 'vitest';
import { runCommand } from './cli-helpers.ts';

describe('examples', () => {
  it('fetch-errors: through fetch the typed error is the cause of TypeError("fetch failed"); request throws it itself', async () => {
    const r = await runCommand(process.execPath, [new URL('../examples/fetch-errors.ts', import.meta.url).pathname]);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(
      'fetch: fetch failed; cause MULTILEG_LEG_LIMIT: NTLM handshake exceeded limits.maxLegs (1): the server keeps challenging; check credentials or raise limits.maxLegs\n' +
        'request: MULTILEG_LEG_LIMIT\n',
    );
    expect(r.code).toBe(0);
  });
});
