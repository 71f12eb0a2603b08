import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Real peers and loopback servers: generous timeouts, never timing assertions.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Real-peer suites share one lab per file; keep files from fighting over CPU on a 2-core box.
    maxWorkers: 2,
  },
});
