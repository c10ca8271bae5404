// `pg-rekey run` under application load and failures: concurrent v1/v2 writers and hot rows,
// SIGKILLed daemons, a PostgreSQL restart, a slot dropped under the daemon. Every scenario ends
// with convergence and a ledger check: every value is v2 and decrypts (once) to the plaintext the
// application last committed.
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { startCluster, type Cluster, type PgMajor } from '../support/cluster.js';
import { testRing, xmlPlaintext, rng } from '../support/fixtures.js';
import { cli, countPrefix, eventually, startDaemon, writeDaemonFiles, type DaemonFiles, type RunningDaemon } from '../support/daemon.js';
import { checkWorkloadLedger, commitsSince, createWorkloadTable, prefill, startWorkload, WriteLedger, type LedgerReport, type PendingWrite, type Workload, type WorkloadSpec } from '../support/workload.js';
import { decryptValue, encryptValue } from '../../src/crypto/rewrite.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';

const TABLE = 'calls';
const CONFIGURED = [{ name: TABLE, columns: ['title', 'raw_xml'] }];
/** Seeds the writers; printed so a failing run can be replayed with PG_REKEY_TEST_SEED. */
const SEED = Number(process.env.PG_REKEY_TEST_SEED ?? Date.now() % 100_000);
const major = () => inject('pgMajor');
/** Rows written with v1 before setup: about 550 heap blocks for the sweep. */
const PREFILL = 12_000;
/** Fixed small chunks and a nice ratio: the sweep is still walking the table while the writers run. */
const SLOW_SWEEP = { chunk_time: 0, chunk_blocks: 8, nice_ratio: 2 };

let ring: KeyRing;
const daemons: RunningDaemon[] = [];
const workloads: Workload[] = [];
const dbs: TestDatabase[] = [];

beforeAll(async () => {
  ring = await testRing();
  console.log(`[stream-resilience] PostgreSQL ${major()}, seed ${SEED}`);
});

afterEach(async () => {
  for (const w of workloads.splice(0)) await w.stop().catch(() => undefined);
  for (const d of daemons.splice(0)) await d.proc.stop('SIGKILL');
});

afterAll(async () => {
  for (const db of dbs) await db.drop();
});

async function start(files: DaemonFiles): Promise<RunningDaemon> {
  const d = await startDaemon(files);
  daemons.push(d);
  return d;
}

function workloadSpec(o: Partial<WorkloadSpec> = {}): WorkloadSpec {
  return { table: TABLE, v1Writers: 2, v2Writers: 1, hotWriters: 3, hotIds: [1, 2, 3, 4, 5, 6, 7, 8], firstNewId: 1_000_000, pauseMs: 4, seed: SEED, ...o };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function v1Remaining(pool: pg.Pool): Promise<number> {
  return (await countPrefix(pool, TABLE, 'title', 'v1:')) + (await countPrefix(pool, TABLE, 'raw_xml', 'v1:'));
}

/**
 * For RE-SWEEP lines: who committed each stuck cell's row version (the origin of the writing
 * transaction: pg-rekey's stream or sweep, or none for the application), PostgreSQL 16+.
 */
async function writers(pool: pg.Pool, lines: string[]): Promise<Record<string, string>> {
  const xmins = [...new Set(lines.flatMap((t) => [...t.matchAll(/"xmin":"(\d+)"/g)].map((m) => m[1]!)))];
  if (major() < 16 || xmins.length === 0) return {};
  const r = await pool.query(
    `select x::text as xmin, coalesce(o.roname, case when c.roident = 0 then 'none (application)' end, 'origin ' || c.roident) as origin
       from unnest($1::xid[]) x cross join lateral pg_xact_commit_timestamp_origin(x) c left join pg_replication_origin o on o.roident = c.roident`,
    [xmins],
  ).catch((e: Error) => ({ rows: [{ xmin: '?', origin: e.message }] }));
  return Object.fromEntries(r.rows.map((x: { xmin: string; origin: string }) => [x.xmin, x.origin]));
}

/**
 * After the writers stopped: no v1 value left (bounded), the daemon says CONVERGED after
 * `fromLine`, and `verify --json` agrees. Returns how long the v1 count took to reach 0.
 */
async function expectConvergence(pool: pg.Pool, files: DaemonFiles, d: RunningDaemon, fromLine: number): Promise<number> {
  const ms = await eventually('no v1 value left', async () => (await v1Remaining(pool)) === 0, 60_000).catch(async (e: Error) => {
    throw new Error(`${e.message}\n${await diagnose(pool, d)}`);
  });
  await d.proc.waitForLine(/"msg":"CONVERGED/, { fromIndex: fromLine, timeoutMs: 45_000 });
  const verify = await cli(files, 'verify', '--json');
  expect(verify.code, verify.stdout + verify.stderr).toBe(0);
  const report = JSON.parse(verify.stdout) as { converged: boolean; remaining: number };
  expect(report).toMatchObject({ converged: true, remaining: 0 });
  return ms;
}

/** What is left and what the daemon said last, for a failure message. */
async function diagnose(pool: pg.Pool, d: RunningDaemon): Promise<string> {
  const left = await pool.query(
    `select id, title_seq, xml_seq, left(title, 3) as t, left(raw_xml, 3) as x, status from ${TABLE} where starts_with(title, 'v1:') or starts_with(raw_xml, 'v1:') order by id limit 20`,
  );
  const seg = await pool.query(`select relation, state, generation, next_block, total_blocks from pgrekey.sweep_segment`);
  const slot = await pool.query(`select slot_name, active, confirmed_flush_lsn::text, pg_current_wal_lsn()::text as current from pg_replication_slots where database = current_database()`);
  const log = d.proc.lines.filter((l) => !/sweep progress|"msg":"not converged yet"/.test(l.text)).slice(-30).map((l) => l.text);
  return [`v1 rows left: ${JSON.stringify(left.rows)}`, `segments: ${JSON.stringify(seg.rows)}`, `slot: ${JSON.stringify(slot.rows)}`, 'daemon log (tail):', ...log].join('\n');
}

function expectLedgerIntact(r: LedgerReport, minValues: number): void {
  const problems = { notTarget: r.notTarget.slice(0, 20), doubleEncrypted: r.doubleEncrypted.slice(0, 20), mismatched: r.mismatched.slice(0, 20), regressed: r.regressed.slice(0, 20), missing: r.missing.slice(0, 20) };
  expect(problems).toEqual({ notTarget: [], doubleEncrypted: [], mismatched: [], regressed: [], missing: [] });
  expect(r.values).toBeGreaterThanOrEqual(minValues);
  expect(Object.keys(r.byVersion)).toEqual(['v2']);
}

async function rewritesBySource(d: RunningDaemon): Promise<Record<string, number>> {
  const text = await (await fetch(`${d.httpUrl}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^pg_rekey_rewrites_total\{source="(\w+)",table="[^"]*"\} (\d+)/gm)) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
  return out;
}

interface Scenario {
  db: { pool: pg.Pool; url: string };
  files: DaemonFiles;
  ledger: WriteLedger;
}

/** Table with `rows` v1 rows written before setup (so the sweep has work), then `setup`. */
async function scenario(db: { pool: pg.Pool; url: string }, rows: number, sweep: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<Scenario> {
  const ledger = new WriteLedger();
  await createWorkloadTable(db.pool, TABLE);
  await prefill(db.pool, TABLE, ring, ledger, { rows, version: 1, xmlEvery: 10, seed: SEED });
  const files = writeDaemonFiles(db.url, CONFIGURED, { sweep, ...extra });
  const setup = await cli(files, 'setup');
  expect(setup.code, setup.stderr).toBe(0);
  return { db, files, ledger };
}

async function newDb(prefix: string): Promise<TestDatabase> {
  const db = await createTestDatabase(prefix);
  dbs.push(db);
  return db;
}

function summary(label: string, o: Record<string, unknown>): void {
  console.log(`[stream-resilience] PG ${major()} ${label}: ${JSON.stringify(o)}`);
}

describe('run under concurrent application writers', () => {
  it('old and new app instances and hot-row writers for 8 s: converges, no lost update, no double encryption', async () => {
    const db = await newDb('resil_writers');
    const s = await scenario(db, PREFILL, SLOW_SWEEP);
    const d = await start(s.files);
    const t0 = Date.now();
    const w = startWorkload(db.url, ring, s.ledger, workloadSpec());
    workloads.push(w);
    await sleep(8_000);
    const sweepRunningDuringWrites = (await db.pool.query(`select state from pgrekey.sweep_segment`)).rows[0].state !== 'done';
    const stats = await w.stop();
    workloads.splice(workloads.indexOf(w), 1);
    const stoppedAt = d.proc.lines.length;
    expect(stats.errors).toEqual([]);
    expect(stats.commits).toBeGreaterThan(500);
    const convergedMs = await expectConvergence(db.pool, s.files, d, stoppedAt);
    const report = await checkWorkloadLedger(db.pool, TABLE, s.ledger, ring);
    expectLedgerIntact(report, PREFILL);
    const bySource = await rewritesBySource(d);
    expect(bySource.stream ?? 0).toBeGreaterThan(100);
    expect(bySource.sweep ?? 0).toBeGreaterThan(1000);
    summary('concurrent writers', { commits: stats.commits, byOp: stats.byOp, sweepRunningDuringWrites, convergedMsAfterStop: convergedMs, totalMs: Date.now() - t0, rewrites: bySource, values: report.values });
  });

  it('a v1 column superseded by a later message in the same batch: the other column is still rewritten', async () => {
    // Two messages for one row land in one stream batch (2 s batch delay): the first carries
    // title v1 and raw_xml v1; the second title v2 and raw_xml as unchanged TOAST ('u').
    // The batch must compare raw_xml against its current value, not a stale title.
    const db = await newDb('resil_merge');
    const s = await scenario(db, 10, {}, { daemon: { stream_batch_delay: '2s' } });
    const d = await start(s.files);
    await d.proc.waitForLine(/sweep complete/, { timeoutMs: 20_000 });
    const [t1, x1, t2] = [Buffer.from('first title'), xmlPlaintext(4242, rng(SEED)), Buffer.from('second title')];
    await db.pool.query(`insert into ${TABLE} (id, title, raw_xml) values (4242, $1, $2)`, [encryptValue(Buffer.from('x'), 2, ring), encryptValue(xmlPlaintext(1, rng(1)), 2, ring)]);
    await sleep(2_500); // the insert's batch (nothing to do) is flushed
    await db.pool.query(`update ${TABLE} set title = $1, raw_xml = $2 where id = 4242`, [encryptValue(t1, 1, ring), encryptValue(x1, 1, ring)]);
    await db.pool.query(`update ${TABLE} set title = $1 where id = 4242`, [encryptValue(t2, 2, ring)]);
    await eventually('raw_xml of row 4242 rewritten', async () => (await countPrefix(db.pool, TABLE, 'raw_xml', 'v1:')) === 0, 15_000);
    const row = (await db.pool.query(`select title, raw_xml from ${TABLE} where id = 4242`)).rows[0];
    expect(Buffer.from(decryptOrThrow(row.title)).toString()).toBe('second title');
    expect(Buffer.compare(Buffer.from(decryptOrThrow(row.raw_xml)), x1)).toBe(0);
  });
});


describe('run survives failures', () => {
  it('the daemon is SIGKILLed 4 times at random moments under load: it resumes, converges, skips nothing', async () => {
    const db = await newDb('resil_kill');
    const s = await scenario(db, PREFILL, SLOW_SWEEP);
    const generation = async () => Number((await db.pool.query(`select generation from pgrekey.sweep_segment`)).rows[0].generation);
    const genBefore = await generation();
    const rand = rng(SEED + 1);
    let d = await start(s.files);
    const runs = [d];
    const w = startWorkload(db.url, ring, s.ledger, workloadSpec());
    workloads.push(w);
    const kills: { afterMs: number; sweptBlocks: number; restartMs: number }[] = [];
    let resumed = 0;
    for (let i = 0; i < 4; i++) {
      const afterMs = 600 + Math.floor(rand() * 1800);
      await sleep(afterMs);
      const sweptBlocks = Number((await db.pool.query(`select next_block from pgrekey.sweep_segment`)).rows[0].next_block);
      const res = await d.proc.stop('SIGKILL');
      daemons.splice(daemons.indexOf(d), 1);
      expect(res.signal).toBe('SIGKILL');
      await sleep(Math.floor(rand() * 400));
      const t = Date.now();
      d = await start(s.files);
      runs.push(d);
      kills.push({ afterMs, sweptBlocks, restartMs: Date.now() - t });
      if (d.proc.lines.some((l) => /"msg":"resuming sweep"/.test(l.text))) resumed++;
    }
    await sleep(1_500);
    const stats = await w.stop();
    workloads.splice(workloads.indexOf(w), 1);
    expect(stats.errors).toEqual([]);
    const stoppedAt = d.proc.lines.length;
    const convergedMs = await expectConvergence(db.pool, s.files, d, stoppedAt);
    expectLedgerIntact(await checkWorkloadLedger(db.pool, TABLE, s.ledger, ring), PREFILL);
    // A crash is not a lost slot: the sweep resumed from its checkpoint, the slot was not recreated.
    const restarts = runs.flatMap((r, i) => r.proc.lines.filter((l) => /RE-SWEEP|block 0|recreated|SLOT LOST/.test(l.text)).map((l) => `run ${i + 1}: ${l.text.slice(0, 1500)}`));
    expect((await db.pool.query(`select count(*)::int as n from pgrekey.slot_event where event = 'recreated'`)).rows[0].n, restarts.join('\n')).toBe(0);
    // The only new generations allowed are RE-SWEEPs (the checks found old values stuck after a complete
    // sweep with the stream caught up, and swept again). CI saw genBefore + 1: values the stream dropped
    // as superseded when its compare-and-swap missed on one column only (stream-isolation.test.ts has the
    // deterministic case, fixed). Should another cause remain, these lines say where and who wrote them.
    const resweeps = restarts.filter((t) => /RE-SWEEP/.test(t)).length;
    expect(restarts.filter((t) => !/RE-SWEEP/.test(t)), 'sweep restarts other than RE-SWEEPs').toEqual([]);
    expect(await generation(), restarts.join('\n')).toBe(genBefore + resweeps);
    summary('SIGKILL x4', { commits: stats.commits, kills, sweepResumedAfterKill: resumed, resweeps, convergedMsAfterStop: convergedMs, ...(resweeps ? { resweepLines: restarts, writers: await writers(db.pool, restarts) } : {}) });
  });

  it('PostgreSQL restarts while run is active: writes go on, the daemon reconnects and converges', async () => {
    const cluster: Cluster = await startCluster(major() as PgMajor);
    let pool: pg.Pool | null = null;
    let w: Workload | null = null;
    let d: RunningDaemon | null = null;
    try {
      const admin = new pg.Client({ connectionString: cluster.url });
      await admin.connect();
      await admin.query('create database resil_restart');
      await admin.end();
      const url = new URL(cluster.url);
      url.pathname = '/resil_restart';
      pool = new pg.Pool({ connectionString: url.toString(), max: 3 });
      pool.on('error', () => undefined); // idle connections die with the restart
      const s = await scenario({ pool, url: url.toString() }, PREFILL, SLOW_SWEEP);
      d = await startDaemon(s.files);
      w = startWorkload(url.toString(), ring, s.ledger, workloadSpec({ errorPauseMs: 150 }));
      await sleep(3_000);
      const restartLine = d.proc.lines.length;
      const sweepAtRestart = (await pool.query(`select state, next_block from pgrekey.sweep_segment`)).rows[0];
      const t0 = Date.now();
      await cluster.restart();
      const restartedAt = Date.now();
      await d.proc.waitForLine(/"msg":"streaming"/, { fromIndex: restartLine, timeoutMs: 30_000 });
      const reconnectedMs = Date.now() - restartedAt;
      await sleep(4_000);
      const stats = await w.stop();
      w = null;
      const after = d.proc.lines.slice(restartLine).map((l) => l.text);
      expect(after.some((t) => /"msg":"replication connection failed"/.test(t))).toBe(true);
      expect(after.some((t) => /"msg":"reconnecting to the replication slot"/.test(t))).toBe(true);
      // The lease went with the restart and was taken again (no other run held the slot meanwhile).
      expect(after.some((t) => /"msg":"the lease connection ended/.test(t))).toBe(true);
      expect(after.some((t) => /is held again/.test(t))).toBe(true);
      expect(stats.failed + stats.inDoubt).toBeGreaterThan(0); // the writers did see the restart
      expect(commitsSince(stats, restartedAt)).toBeGreaterThan(200); // and went on writing after it
      const stoppedAt = d.proc.lines.length;
      const convergedMs = await expectConvergence(pool, s.files, d, stoppedAt);
      expectLedgerIntact(await checkWorkloadLedger(pool, TABLE, s.ledger, ring), PREFILL);
      summary('PostgreSQL restart', {
        restartMs: restartedAt - t0,
        reconnectedMsAfterRestart: reconnectedMs,
        commits: stats.commits,
        commitsAfterRestart: commitsSince(stats, restartedAt),
        failed: stats.failed,
        inDoubt: stats.inDoubt,
        sweepAtRestart,
        sweepChunkRetries: after.filter((t) => /retryable error; retrying/.test(t)).length,
        sweepFailures: after.filter((t) => /"msg":"sweep failed/.test(t)).length,
        convergedMsAfterStop: convergedMs,
      });
    } finally {
      await w?.stop().catch(() => undefined);
      await d?.proc.stop('SIGKILL');
      await pool?.end().catch(() => undefined);
      await cluster.stop();
    }
  });

  it('the slot is dropped under the running daemon: recreated, re-swept, rows written in between end up v2', async () => {
    const db = await newDb('resil_slot');
    const s = await scenario(db, 5_000, { chunk_blocks: 64 });
    const slot = `s_${db.name}`.slice(0, 63);
    const d = await start(s.files);
    await d.proc.waitForLine(/"msg":"sweep complete/, { timeoutMs: 30_000 });
    const generation = async () => Number((await db.pool.query(`select generation from pgrekey.sweep_segment`)).rows[0].generation);
    const genBefore = await generation();
    const w = startWorkload(db.url, ring, s.ledger, workloadSpec({ v2Writers: 1, v1Writers: 2, hotWriters: 2 }));
    workloads.push(w);
    await sleep(2_000);
    const dropLine = d.proc.lines.length;
    const sweptBefore = (await rewritesBySource(d)).sweep ?? 0;

    // In one transaction: write v1 values, end the walsender and drop the slot. The old slot never
    // delivers these changes (dropped before they commit) and the new one starts after them (its
    // creation waits for this transaction), so only the re-sweep can find them.
    const gapIds = Array.from({ length: 300 }, (_, i) => 2_000_000 + i);
    const gapUpdated = Array.from({ length: 200 }, (_, i) => 1000 + i); // already swept to v2
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    const inserted: PendingWrite[] = [];
    const updated: PendingWrite[] = [];
    let attempts = 0;
    try {
      await c.query('begin');
      const rand = rng(SEED + 2);
      for (const id of gapIds) {
        const pt = Buffer.from(`written while the slot was gone ${id}`);
        const xml = id % 5 === 0 ? xmlPlaintext(id, rand) : null;
        await c.query(`insert into ${TABLE} (id, title, raw_xml, title_seq, xml_seq) values ($1, $2, $3, 1, $4)`, [id, encryptValue(pt, 1, ring), xml && encryptValue(xml, 1, ring), xml ? 1 : 0]);
        inserted.push({ id, column: 'title', seq: 1, plaintext: pt });
        if (xml) inserted.push({ id, column: 'raw_xml', seq: 1, plaintext: xml });
      }
      for (const id of gapUpdated) {
        const pt = Buffer.from(`old app update while the slot was gone ${id}`);
        const r = await c.query(`update ${TABLE} set title = $2, title_seq = title_seq + 1 where id = $1 returning title_seq`, [id, encryptValue(pt, 1, ring)]);
        updated.push({ id, column: 'title', seq: r.rows[0].title_seq, plaintext: pt });
      }
      for (;;) {
        attempts++;
        await c.query('savepoint drop_slot');
        try {
          const pid = (await c.query(`select active_pid from pg_replication_slots where slot_name = $1`, [slot])).rows[0]?.active_pid;
          if (pid) await c.query(`select pg_terminate_backend($1)`, [pid]);
          for (let i = 0; i < 200 && (await c.query(`select active from pg_replication_slots where slot_name = $1`, [slot])).rows[0]?.active; i++) await sleep(10);
          await c.query(`select pg_drop_replication_slot($1)`, [slot]);
          break;
        } catch (e) {
          await c.query('rollback to savepoint drop_slot');
          // 55006: the daemon took the slot again before the drop; try again.
          if ((e as { code?: string }).code !== '55006' || attempts >= 10) throw e;
        }
      }
      await c.query('commit');
    } finally {
      await c.end().catch(() => undefined);
    }
    for (const id of gapIds) s.ledger.commit(inserted.filter((x) => x.id === id), id);
    s.ledger.commit(updated);
    const droppedAt = Date.now();

    await eventually('slot recreated', async () => (await db.pool.query(`select count(*)::int as n from pgrekey.slot_event where event = 'recreated'`)).rows[0].n === 1, 60_000).catch((e: Error) => {
      const log = d.proc.lines.slice(dropLine).filter((l) => !/sweep progress|not converged yet/.test(l.text)).slice(-30).map((l) => l.text.slice(0, 400));
      throw new Error([e.message, ...log].join('\n'));
    });
    const recreatedMs = Date.now() - droppedAt;
    await eventually('sweep generation bumped', async () => (await generation()) > genBefore, 10_000);
    await sleep(2_000); // writers go on against the new slot
    const stats = await w.stop();
    workloads.splice(workloads.indexOf(w), 1);
    expect(stats.errors).toEqual([]);
    expect(d.proc.lines.slice(dropLine).some((l) => /REPLICATION SLOT LOST/.test(l.text))).toBe(true);
    expect(d.proc.lines.slice(dropLine).some((l) => /"msg":"sweep restarted from block 0/.test(l.text))).toBe(true);
    const stoppedAt = d.proc.lines.length;
    const convergedMs = await expectConvergence(db.pool, s.files, d, stoppedAt);
    const gap = await db.pool.query(`select count(*)::int as n from ${TABLE} where (id = any($1::bigint[]) or id = any($2::bigint[])) and starts_with(title, 'v2:')`, [gapIds, gapUpdated]);
    expect(gap.rows[0].n).toBe(gapIds.length + gapUpdated.length);
    expectLedgerIntact(await checkWorkloadLedger(db.pool, TABLE, s.ledger, ring), 5_000);
    // One generation for the new slot; a RE-SWEEP of values the checks saw stuck meanwhile may add
    // another (CI saw genBefore + 2 twice): more sweeping, never less.
    const generations = (await generation()) - genBefore;
    expect(generations).toBeGreaterThanOrEqual(1);
    // No slot delivered the in-between writes: the sweep passes after the drop rewrote them (the
    // sweep's rewrite counter, across every pass, aborted ones included).
    const resweptRewrites = ((await rewritesBySource(d)).sweep ?? 0) - sweptBefore;
    expect(resweptRewrites).toBeGreaterThan(0);
    const resweepLines = generations > 1 ? d.proc.lines.filter((l) => /RE-SWEEP/.test(l.text)).map((l) => l.text.slice(0, 1500)) : [];
    summary('slot dropped', { dropAttempts: attempts, recreatedMsAfterDrop: recreatedMs, generations, resweptRewrites, commits: stats.commits, convergedMsAfterStop: convergedMs, ...(resweepLines.length ? { resweepLines, writers: await writers(db.pool, resweepLines) } : {}) });
  });
});

function decryptOrThrow(value: string): Uint8Array {
  const pt = decryptValue(value, ring);
  if (!pt) throw new Error('value does not decrypt');
  return pt;
}
