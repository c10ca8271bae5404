// sweep.workers: 4 workers (2 in `run`, 2 `sweep-worker` processes) sweep one table on leased block
// ranges; both sweep-workers are SIGKILLed mid-range. Every range of the generation must end done,
// the killed workers' ranges taken again after their lease expired (never skipped), no v1 value
// left (counted as superuser), and every application write intact (a concurrent writer, a ledger).
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { incidentsConfig, prepareSweep, testRing } from '../support/fixtures.js';
import { cli, countPrefix, eventually, startDaemon, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { spawnCli, type CliProcess } from '../support/cli.js';
import { checkWorkloadLedger, createWorkloadTable, prefill, startWorkload, WriteLedger } from '../support/workload.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { advanceRange, claimRange, completeRelation, LeaseLost, planRanges } from '../../src/backfill/range-lease.js';
import { ensureSegment, restartSegments } from '../../src/state/segments.js';

const ROWS = 16_000;
const LEASE = '2s';
const RELATION = 'public.calls';

let db: TestDatabase;
let ring: KeyRing;
const procs: CliProcess[] = [];

beforeAll(async () => {
  db = await createTestDatabase('sweep_workers');
  ring = await testRing();
});
afterAll(async () => {
  for (const p of procs) await p.stop('SIGKILL').catch(() => undefined);
  await db?.drop();
});

interface RangeRow {
  first: number;
  end: number | null;
  next: number;
  state: string;
  owner: string | null;
  leases: number;
  doneBy: string | null;
}

async function ranges(pool: pg.Pool, generation?: number): Promise<RangeRow[]> {
  const r = await pool.query<RangeRow>(
    `select first_block::int as first, end_block::int as "end", next_block::int as next, state, owner, leases, done_by as "doneBy"
       from pgrekey.sweep_range
      where relation = $1 and generation = coalesce($2, (select generation from pgrekey.sweep_segment where relation = $1 and segment_start = 0))
      order by first_block`,
    [RELATION, generation ?? null],
  );
  return r.rows;
}

/** The owner tokens of a process: `<role>@<host>/<pid>/<random>/<worker>`. */
const ownedBy = (pid: number) => (owner: string | null) => owner !== null && owner.split('/')[1] === String(pid);

describe('sweep workers', () => {
  it('4 workers, 2 SIGKILLed mid-sweep: every range of the generation swept, the killed ones taken again after their lease, nothing skipped', async () => {
    const pool = db.pool;
    await createWorkloadTable(pool, 'calls');
    const ledger = new WriteLedger();
    await prefill(pool, 'calls', ring, ledger, { rows: ROWS, version: 1, xmlEvery: 50 });
    const blocks = Number((await pool.query<{ b: string }>(`select (pg_relation_size('calls') / 8192)::text as b`)).rows[0]!.b);
    expect(blocks).toBeGreaterThan(150);

    // Paced so the sweep lasts long enough to kill workers in the middle of their ranges: 4 workers
    // share max_rate (each gets a quarter of it); fixed 2-block chunks.
    const files: DaemonFiles = writeDaemonFiles(db.url, [{ name: 'calls', columns: ['title', 'raw_xml'] }], {
      sweep: { workers: 2, range_lease: LEASE, max_rate: 2000, nice_ratio: 0, chunk_time: 0, chunk_blocks: 2 },
    });
    const setup = await cli(files, 'setup');
    expect(setup.code, setup.stdout + setup.stderr).toBe(0);

    // Paused until both sweep-workers have joined (a worker leases its range before the throttle's gate), so
    // a slow start on a busy machine cannot let run's workers finish alone.
    const paused = await cli(files, 'pause', '--reason', 'until the sweep-workers joined');
    expect(paused.code, paused.stderr).toBe(0);
    const workload = startWorkload(db.url, ring, ledger, { table: 'calls', v1Writers: 1, v2Writers: 1, hotWriters: 0, hotIds: [], firstNewId: ROWS + 1, pauseMs: 20, seed: 11 });
    const daemon = await startDaemon(files, '--exit-when-converged');
    procs.push(daemon.proc);
    await eventually('the run daemon to plan ranges', async () => (await ranges(pool)).length > 0, 30_000);

    const joiners = [0, 1].map(() => spawnCli(['sweep-worker', '--workers', '1', ...files.args]));
    procs.push(...joiners);
    const pids = joiners.map((j) => j.child.pid!);
    await eventually(
      'both sweep-workers to lease a range',
      async () => {
        const rs = await ranges(pool);
        return pids.every((pid) => rs.some((r) => ownedBy(pid)(r.owner) && r.state === 'pending'));
      },
      60_000,
    );
    const resumed = await cli(files, 'resume');
    expect(resumed.code, resumed.stderr).toBe(0);
    // Each sweep-worker holds a range it has checkpointed in (mid-range) and not finished.
    await eventually(
      'both sweep-workers to be mid-range',
      async () => {
        const rs = await ranges(pool);
        return pids.every((pid) => rs.some((r) => ownedBy(pid)(r.owner) && r.state === 'pending' && r.next > r.first));
      },
      60_000,
    );
    for (const j of joiners) j.child.kill('SIGKILL');
    await Promise.all(joiners.map((j) => j.exited));
    const atKill = (await ranges(pool)).filter((r) => r.state === 'pending' && pids.some((pid) => ownedBy(pid)(r.owner)));
    expect(atKill.length).toBeGreaterThanOrEqual(2);
    const generation = (await pool.query<{ g: number }>(`select generation as g from pgrekey.sweep_segment where relation = $1`, [RELATION])).rows[0]!.g;

    // The run daemon's two workers finish, the killed workers' ranges included once their leases expire.
    await eventually('the relation swept', async () => (await pool.query(`select 1 from pgrekey.sweep_segment where relation = $1 and state = 'done'`, [RELATION])).rowCount === 1, 90_000).catch(async (e) => {
      // What was left, and what the daemon said about it.
      const seg = (await pool.query(`select * from pgrekey.sweep_segment`)).rows;
      const rs = await ranges(pool);
      const said = daemon.proc.lines.filter((l) => /sweep|range|warn|error/i.test(l.text)).slice(-15).map((l) => l.text);
      throw new Error(`${(e as Error).message}\nsegment: ${JSON.stringify(seg)}\nranges: ${JSON.stringify(rs)}\ndaemon: ${said.join('\n')}`);
    });
    const stats = await workload.stop();
    expect(stats.commits).toBeGreaterThan(20);

    const after = await ranges(pool, generation);
    // Every range done, and together they cover the relation from block 0 with no gap (the last open-ended).
    expect(after.every((r) => r.state === 'done')).toBe(true);
    expect(after[0]!.first).toBe(0);
    for (let i = 1; i < after.length; i++) expect(after[i]!.first).toBe(after[i - 1]!.end);
    expect(after.at(-1)!.end).toBeNull();
    // The killed workers' ranges: leased again (after expiry) and finished by a live worker.
    for (const k of atKill) {
      const now = after.find((r) => r.first === k.first)!;
      expect(now.leases, `range from block ${k.first}`).toBeGreaterThanOrEqual(2);
      expect(pids.some((pid) => ownedBy(pid)(now.doneBy))).toBe(false);
      expect(now.next).toBeGreaterThanOrEqual(k.next);
    }
    // Superuser counts: no value of the old version anywhere; every application write intact.
    await eventually('no v1 value left', async () => (await countPrefix(pool, 'calls', 'title', 'v1:')) + (await countPrefix(pool, 'calls', 'raw_xml', 'v1:')) === 0, 30_000);
    const report = await checkWorkloadLedger(pool, 'calls', ledger, ring);
    expect({ ...report, rows: 0, values: 0, byVersion: {} }).toEqual({ rows: 0, values: 0, byVersion: {}, notTarget: [], doubleEncrypted: [], mismatched: [], regressed: [], missing: [] });
    expect(report.rows).toBeGreaterThanOrEqual(ROWS);
    await daemon.proc.stop('SIGTERM');
  }, 240_000);

  it('fencing: a worker whose lease expired can neither checkpoint nor finish its range; the relation is done only when every range is, each under the current file node', async () => {
    const pool = db.pool;
    await pool.query(`create table fenced (id bigint primary key, title text)`);
    await prepareSweep(pool, [incidentsConfig('fenced', ['title'])]); // the state migrations (setup's)
    await ensureSegment(pool, 'public.fenced', 'public.fenced');
    const node = (await pool.query<{ n: string }>(`select pg_relation_filenode('fenced')::text as n`)).rows[0]!.n;
    const none = { scanned: 0, rewritten: 0, conflicts: 0, quarantined: 0 };
    const quoted = '"public"."fenced"';
    const gen = await planRanges(pool, 'public.fenced', async () => 40, 1);
    // 40 blocks, one worker: ranges [0,16) [16,32) [32,...).
    const a = (await claimRange(pool, 'public.fenced', gen, 'A', 1000))!;
    expect([a.first, a.end, a.next]).toEqual([0, 16, 0]);
    // A sweeps half its range under a file node the table no longer has (rewritten since: VACUUM FULL).
    await advanceRange(pool, a, 'A', 1000, 8, false, '1', none);
    const b = (await claimRange(pool, 'public.fenced', gen, 'B', 60_000))!;
    expect(b.first).toBe(16);
    await advanceRange(pool, b, 'B', 60_000, 32, true, node, none);
    await eventually("A's lease to expire", async () => (await pool.query(`select 1 from pgrekey.sweep_range where owner = 'A' and lease_until < clock_timestamp()`)).rowCount === 1, 10_000);
    expect(await completeRelation(pool, 'public.fenced', quoted, gen)).toBe('not-yet');
    // A's late checkpoint is refused: its range stays where A last checkpointed it.
    await expect(advanceRange(pool, a, 'A', 1000, 16, true, node, none)).rejects.toBeInstanceOf(LeaseLost);
    const c = (await claimRange(pool, 'public.fenced', gen, 'C', 60_000))!;
    expect([c.first, c.next, c.leases]).toEqual([0, 8, 2]);
    // C finishes it under the current file node: the range is still not vouched for (A's half moved).
    await advanceRange(pool, c, 'C', 60_000, 16, true, node, none);
    const d = (await claimRange(pool, 'public.fenced', gen, 'D', 60_000))!;
    expect([d.first, d.end]).toEqual([32, null]);
    expect(await completeRelation(pool, 'public.fenced', quoted, gen)).toBe('not-yet');
    await advanceRange(pool, d, 'D', 60_000, 40, true, node, none);
    expect(await claimRange(pool, 'public.fenced', gen, 'E', 60_000)).toBeNull();
    expect(await completeRelation(pool, 'public.fenced', quoted, gen)).toBe('rewritten');
    expect((await pool.query(`select state from pgrekey.sweep_segment where relation = 'public.fenced'`)).rows[0].state).not.toBe('done');

    // A new generation swept under one file node: done.
    await restartSegments(pool, ['public.fenced']);
    const gen2 = await planRanges(pool, 'public.fenced', async () => 40, 1);
    expect(gen2).toBe(gen + 1);
    for (let r = await claimRange(pool, 'public.fenced', gen2, 'E', 60_000); r; r = await claimRange(pool, 'public.fenced', gen2, 'E', 60_000)) {
      await advanceRange(pool, r, 'E', 60_000, r.end ?? 40, true, node, none);
    }
    expect(await completeRelation(pool, 'public.fenced', quoted, gen2)).toBe('done');
    expect((await pool.query(`select state from pgrekey.sweep_segment where relation = 'public.fenced'`)).rows[0].state).toBe('done');
    // The old generation's ranges are gone.
    expect((await pool.query(`select 1 from pgrekey.sweep_range where relation = 'public.fenced' and generation = $1`, [gen])).rowCount).toBe(0);
  });
});
