// sweep.mode auto: the latency controller slows the sweep down when the foreground's latency rises
// (here: its probe's commit must wait for a lock the test holds) and speeds it up again afterwards.
// Assertions are on the controller's published state (pgrekey.control.controller), never on timings.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { createCallsTable, testRing } from '../support/fixtures.js';
import { cli, eventually, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { spawnCli } from '../support/cli.js';
import type { PacerState } from '../../src/throttle/pacer.js';

let db: TestDatabase;
let files: DaemonFiles;

// A hard limit keeps the sweep running long enough to watch; the baseline is learned once; a target of
// 3x the baseline keeps a busy test machine's noise from cutting the rate (the stall below is far above it).
const SWEEP = { mode: 'auto', max_rate: 1500, latency_ratio: 3, chunk_time: '5ms', baseline_interval: '10m', probe_interval: '100ms' };
const THROTTLE = { check_interval: '200ms' };

async function controller(): Promise<PacerState | null> {
  return (await db.pool.query(`select controller from pgrekey.control`)).rows[0].controller as PacerState | null;
}

async function nextBlock(): Promise<number> {
  return Number((await db.pool.query(`select next_block from pgrekey.sweep_segment`)).rows[0].next_block);
}

beforeAll(async () => {
  db = await createTestDatabase('auto_pacing');
  await createCallsTable(db.pool, 'calls', 60_000, await testRing(), 100);
  files = writeDaemonFiles(db.url, [{ name: 'calls', columns: ['title'] }], { sweep: SWEEP, throttle: THROTTLE });
  expect((await cli(files, 'setup')).code).toBe(0);
});

afterAll(async () => {
  await db.drop();
});

describe('sweep.mode auto', () => {
  it('learns a baseline, paces, cuts the rate within a probe interval when the probe stalls, and grows again after', async () => {
    const p = spawnCli(['backfill', '--restart', ...files.args]);
    try {
      // Learned, and growing: the rate is above where it started (500 rows/s).
      await eventually('the controller runs and has grown its rate', async () => {
        const c = await controller();
        return c?.phase === 'running' && c.baselineMs !== null && c.rate > 600;
      }, 30_000);
      const before = (await controller())!;
      // latency_ratio x the baseline, or more when the probe is too noisy to resolve that (its noise floor).
      expect(before.targetMs!).toBeGreaterThanOrEqual(before.baselineMs! * 3 - 1e-9);
      expect(before.rate).toBeLessThanOrEqual(1500); // max_rate is a hard limit

      // The foreground's latency rises: the probe's commit waits for this lock.
      const locker = await db.pool.connect();
      try {
        await locker.query('begin');
        await locker.query('lock table pgrekey.probe in exclusive mode');
        await eventually('the controller cut the rate (probe-spike)', async () => {
          const c = await controller();
          return c !== null && c.slowedBy === 'probe-spike' && c.rate <= before.rate / 4;
        }, 15_000);
        const slowed = (await controller())!;
        expect(slowed.cuts['probe-spike']).toBeGreaterThan(0);
        expect((await cli(files, 'status')).stdout).toMatch(/sweep pacing \(auto\): probe .* against target .*\n\s+last slowed down .*: probe-spike/);
      } finally {
        await locker.query('commit').catch(() => undefined);
        locker.release();
      }
      // The stall ends: the rate grows again and the sweep moves on.
      const low = (await controller())!.rate;
      const at = await nextBlock();
      await eventually('the rate grows again after the stall', async () => ((await controller())?.rate ?? 0) > Math.max(2 * low, 100), 30_000);
      await eventually('the sweep moves on', async () => (await nextBlock()) > at, 15_000);
      const res = await p.stop('SIGTERM');
      expect(res.stderr).toMatch(/"reason":"probe-spike".*"msg":"sweep slowing down"/);
    } finally {
      await p.stop('SIGTERM').catch(() => undefined);
    }
  });

  it('the probe leaves no row behind, and the sweep in auto mode completes with every value rewritten', async () => {
    await createCallsTable(db.pool, 'notes', 500, await testRing()); // a chunk or two: done whatever the rate
    const f = writeDaemonFiles(db.url, [{ name: 'notes', columns: ['title'] }], { sweep: { mode: 'auto', chunk_time: '5ms' }, throttle: THROTTLE });
    const r = await cli(f, 'backfill');
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expect(Number((await db.pool.query(`select count(*) from notes where title like 'v1:%'`)).rows[0].count)).toBe(0);
    expect(Number((await db.pool.query(`select count(*) from pgrekey.probe`)).rows[0].count)).toBe(0);
  });
});

