// Each throttle signal pauses a running sweep (`pg-rekey backfill`) and releases it.
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { createCallsTable, testRing } from '../support/fixtures.js';
import { cli, eventually, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { spawnCli, type CliProcess } from '../support/cli.js';
import { startFakeStandby } from '../support/fake-standby.js';

let db: TestDatabase;
let files: DaemonFiles;
let pauseFile: string;

// Slow enough to watch: one block per chunk, 30 ms of sleep per ms of work.
const SWEEP = { chunk_time: 0, chunk_blocks: 1, nice_ratio: 30 };
const THROTTLE = { check_interval: '100ms', max_active_backends: 3, max_replica_lag_bytes: '64kB', max_replica_lag: 0 };

async function nextBlock(pool: pg.Pool): Promise<number> {
  return Number((await pool.query(`select next_block from pgrekey.sweep_segment`)).rows[0].next_block);
}

/** `n` sessions busy in pg_sleep, on connections of their own (the test's pool stays free). */
async function busySessions(n: number, seconds: number): Promise<void> {
  const pool = new pg.Pool({ connectionString: db.url, max: n });
  pool.on('error', () => undefined);
  try {
    await Promise.all(Array.from({ length: n }, () => pool.query(`select pg_sleep($1)`, [seconds])));
  } finally {
    await pool.end();
  }
}

/** True when the sweep did not advance over `ms` (it is held back). */
async function stalled(pool: pg.Pool, ms = 1200): Promise<boolean> {
  const a = await nextBlock(pool);
  await new Promise((r) => setTimeout(r, ms));
  return (await nextBlock(pool)) === a;
}

async function throttleReason(): Promise<string | null> {
  return JSON.parse((await cli(files, 'status', '--json')).stdout).throttle.reason;
}

async function startBackfill(): Promise<CliProcess> {
  const p = spawnCli(['backfill', '--restart', ...files.args]);
  await eventually('the sweep moves', async () => (await nextBlock(db.pool)) > 2, 15_000);
  return p;
}

beforeAll(async () => {
  db = await createTestDatabase('throttle');
  await createCallsTable(db.pool, 'calls', 12_000, await testRing(), 200);
  files = writeDaemonFiles(db.url, [{ name: 'calls', columns: ['title'] }], { sweep: SWEEP, throttle: THROTTLE });
  pauseFile = path.join(files.dir, 'pause');
  files = writeDaemonFiles(db.url, [{ name: 'calls', columns: ['title'] }], { sweep: SWEEP, throttle: { ...THROTTLE, pause_file: pauseFile } });
  expect((await cli(files, 'setup')).code).toBe(0);
});

afterAll(async () => {
  await db.drop();
});

describe('throttle signals hold a running sweep back and release it', () => {
  it('lock waits: a chunk that hits lock_timeout is retried later and counted', async () => {
    const f = writeDaemonFiles(db.url, [{ name: 'calls', columns: ['title'] }], { sweep: { ...SWEEP, lock_timeout: '100ms' }, throttle: THROTTLE });
    const locker = await db.pool.connect();
    let p: ReturnType<typeof spawnCli> | undefined;
    try {
      await locker.query('begin');
      await locker.query(`select 1 from calls where id = 150 for update`); // a row a few blocks in (block ~6: reached within seconds even on a busy machine)
      p = spawnCli(['backfill', ...f.args]);
      await p.waitForLine(/lock_timeout/, { timeoutMs: 20_000 });
    } finally {
      await locker.query('commit').catch(() => undefined);
      locker.release();
    }
    await p!.stop('SIGTERM');
    const seg = (await db.pool.query(`select lock_timeouts::int as n from pgrekey.sweep_segment`)).rows[0];
    expect(seg.n).toBeGreaterThan(0);
  });

  it('pg-rekey pause / resume (the switch in the state table)', async () => {
    const p = await startBackfill();
    expect((await cli(files, 'pause', '--reason', 'month-end close')).code).toBe(0);
    await eventually('throttled: paused', async () => (await throttleReason()) === 'paused', 5_000);
    expect(await stalled(db.pool)).toBe(true);
    expect((await cli(files, 'status')).stdout).toMatch(/THROTTLED since .*: paused \(pg-rekey pause: month-end close\)/);
    expect((await cli(files, 'resume')).code).toBe(0);
    expect(await stalled(db.pool)).toBe(false);
    await p.stop('SIGTERM');
  });

  it('the pause file', async () => {
    const p = await startBackfill();
    writeFileSync(pauseFile, '');
    await eventually('throttled: pause-file', async () => (await throttleReason()) === 'pause-file', 5_000);
    expect(await stalled(db.pool)).toBe(true);
    rmSync(pauseFile);
    expect(existsSync(pauseFile)).toBe(false);
    expect(await stalled(db.pool)).toBe(false);
    await p.stop('SIGTERM');
  });

  it('load: more active backends than max_active_backends', async () => {
    const p = await startBackfill();
    // Long enough that the stall check (after the status CLI has seen the throttle, ~1-2 s on a busy
    // machine) falls inside the busy period: with 3 s, a slow CI machine saw the sweep already released.
    const busy = busySessions(5, 8);
    await eventually('throttled: load', async () => (await throttleReason()) === 'load', 5_000);
    expect(await stalled(db.pool)).toBe(true);
    await busy;
    expect(await stalled(db.pool)).toBe(false);
    const res = await p.stop('SIGTERM');
    expect(res.stderr).toMatch(/"reason":"load".*"msg":"sweep throttled"/);
    expect(res.stderr).toMatch(/"msg":"sweep released"/);
  });

  it('replica lag: a standby that does not replay', async () => {
    // The standby connects once the sweep moves: connected first, the WAL of the backfill's own
    // start-up (run record, leaves, the key proofs) could already put it over 64kB before the sweep
    // reached block 3 (CI saw the sweep held from its start, on PostgreSQL 18).
    const p = await startBackfill();
    const standby = await startFakeStandby(db.url);
    try {
      await db.pool.query(`insert into calls (id, pad) select g, repeat('y', 500) from generate_series(100000, 100400) g`); // WAL
      await eventually('throttled: replica-lag', async () => (await throttleReason()) === 'replica-lag', 10_000);
      expect(await stalled(db.pool)).toBe(true);
      standby.catchUp();
      expect(await stalled(db.pool, 2000)).toBe(false);
    } finally {
      await p.stop('SIGTERM');
      await standby.stop();
    }
  });

  it('critical load stops the sweep with exit 3 and a clear message', async () => {
    const f = writeDaemonFiles(db.url, [{ name: 'calls', columns: ['title'] }], { sweep: SWEEP, throttle: { ...THROTTLE, critical_active_backends: 4 } });
    const p = spawnCli(['backfill', '--restart', ...f.args]);
    await eventually('the sweep moves', async () => (await nextBlock(db.pool)) > 2, 15_000);
    const busy = busySessions(6, 2);
    const res = await p.exited;
    await busy;
    expect(res.code).toBe(3);
    expect(res.stderr).toMatch(/critical load: \d+ active backends > critical_active_backends 4/);
  });

  it('pg-rekey set changes a running sweep without a restart', async () => {
    const p = await startBackfill();
    expect((await cli(files, 'set', 'chunk-blocks=7', 'nice-ratio=1')).code).toBe(0);
    await eventually('chunk size picked up', async () => JSON.parse((await cli(files, 'status', '--json')).stdout).sweep[0].chunkBlocks === 7, 5_000);
    const shown = await cli(files, 'set');
    expect(shown.stdout).toMatch(/chunk-blocks\s+7\s+pg-rekey set \(7\)/);
    expect((await cli(files, 'set', '--reset')).code).toBe(0);
    await p.stop('SIGTERM');
  });
});
