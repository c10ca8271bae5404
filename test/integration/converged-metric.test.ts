// pg_rekey_converged follows the daemon's verdict: once what a check relied on is reset (here a table
// rewritten by VACUUM FULL: its rows moved unseen, the sweep starts it over), the metric is 0 and the
// remaining count has no sample until the next check, so a dashboard or an alert never says "converged"
// through a re-sweep.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encryptValue } from '../../src/crypto/rewrite.js';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { cli, eventually, startDaemon, writeDaemonFiles, type RunningDaemon } from '../support/daemon.js';
import { insertBatched, testRing } from '../support/fixtures.js';

let db: TestDatabase;
let daemon: RunningDaemon | null = null;

function sample(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

beforeAll(async () => {
  db = await createTestDatabase('converged_metric');
  const ring = await testRing();
  await db.pool.query(`create table incidents (id bigint primary key, title text)`);
  await insertBatched(db.pool, 'incidents', ['id', 'title'], ['bigint', 'text'], Array.from({ length: 500 }, (_, i) => [i + 1, encryptValue(Buffer.from(`incident ${i}`), 1, ring)]));
});

afterAll(async () => {
  await daemon?.proc.stop('SIGTERM', 15_000);
  await db?.drop();
});

describe('pg_rekey_converged', () => {
  it('drops to 0 (and the remaining count to no sample) as soon as a re-sweep is due, not at the next completed check', async () => {
    const files = writeDaemonFiles(db.url, [{ name: 'incidents', columns: ['title'] }]);
    expect((await cli(files, 'setup')).code).toBe(0);
    daemon = await startDaemon(files);
    const scrape = async () => (await fetch(`${daemon!.httpUrl}/metrics`)).text();
    await eventually('converged, in /metrics', async () => sample(await scrape(), 'pg_rekey_converged') === 1, 60_000);
    expect(sample(await scrape(), 'pg_rekey_remaining_values')).toBe(0);
    // Held back: the re-sweep cannot complete, so no check can say anything new.
    expect((await cli(files, 'pause', '--reason', 'converged-metric test')).code).toBe(0);
    await db.pool.query('vacuum full incidents');
    await eventually(
      'pg_rekey_converged 0 and no remaining sample after the rewrite',
      async () => {
        const text = await scrape();
        return sample(text, 'pg_rekey_converged') === 0 && sample(text, 'pg_rekey_remaining_values') === undefined;
      },
      60_000,
    );
    await daemon.proc.waitForLine(/was rewritten/, { timeoutMs: 10_000 });
  });
});
