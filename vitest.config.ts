import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    reporters: ['default'],
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          // vitest 4 rejects projects with different maxWorkers sharing a sequence.groupOrder.
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          globalSetup: ['test/support/global-setup.ts'],
          // Every CLI output is searched for the keys it was given (test/support/key-leak.ts).
          setupFiles: ['test/support/leak-check.ts'],
          testTimeout: 180_000,
          hookTimeout: 180_000,
          // At most two test files run at once against the shared cluster.
          maxWorkers: 2,
          sequence: { groupOrder: 1 },
        },
      },
      {
        test: {
          // Real Patroni + etcd + PostgreSQL 15 from Debian (make test-ha): one file at a time.
          name: 'ha',
          include: ['test/ha/**/*.test.ts'],
          setupFiles: ['test/support/leak-check.ts'],
          testTimeout: 300_000,
          hookTimeout: 180_000,
          maxWorkers: 1,
          sequence: { groupOrder: 2 },
        },
      },
    ],
  },
});
