import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Real peers and loopback servers: generous timeouts, never timing assertions.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // The command keeps refused passwords in $XDG_STATE_HOME/multileg (R4): a test's commands never
    // read or write the user's own (runCli gives each run a directory of its own besides).
    env: { XDG_STATE_HOME: mkdtempSync(join(tmpdir(), 'multileg-test-state-')) },
    // Real-peer suites share one lab per file. Three workers on a 2-core box, not two: most non-CLI
    // files wait on peers and timers (reliability.test.ts: 9 s of CPU in 41 s), which left a core idle
    // beside them; the CLI files use a core each. Measured with coverage, 2 CLI files among 8: 111 s
    // with two workers, 78 s with three, 77 with four.
    maxWorkers: 3,
    // Coverage is part of the whole suite's output (`npm test` passes --coverage; one file run by
    // hand stays quiet): reported, never a pass/fail threshold, so a branch that a slow peer happens
    // not to reach cannot fail the build.
    coverage: {
      provider: 'v8',
      include: ['src/**/*.ts'],
      reporter: ['text-summary', ['text', { skipFull: true }]],
      reportOnFailure: true,
    },
  },
});
