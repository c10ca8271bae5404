// Standby daemons and the fencing term (README "HA and failover"): several `run --standby` on one
// slot with v1/v2 writers and hot rows; the leader is kill -9'ed three times at random moments and
// a standby takes over within the bound each time; the ledger stays intact and no state row carries
// an old term after the next one started. A leader SIGSTOPped until a standby took over, then
// resumed, is fenced: the database refuses its state writes and it exits 3.
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { rng, testRing } from '../support/fixtures.js';
import { cli, countPrefix, eventually, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { spawnCli, type CliProcess } from '../support/cli.js';
import { checkWorkloadLedger, createWorkloadTable, prefill, startWorkload, WriteLedger, type LedgerReport, type Workload } from '../support/workload.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';

const TABLE = 'calls';
const CONFIGURED = [{ name: TABLE, columns: ['title', 'raw_xml'] }];
const SEED = Number(process.env.PG_REKEY_TEST_SEED ?? Date.now() % 100_000);
const major = () => inject('pgMajor');
/** The documented takeover bound after a leader is killed (README "HA and failover"). */
const TAKEOVER_BOUND_MS = 10_000;
/** After a leader is paused: the lease session's idle_session_timeout (10 s) + the poll + startup. */
const PAUSED_TAKEOVER_BOUND_MS = 25_000;
/** Small fixed chunks with a nice ratio: the sweep is still walking the table during the kills. */
const SLOW_SWEEP = { chunk_time: 0, chunk_blocks: 8, nice_ratio: 3 };

let ring: KeyRing;
const procs: CliProcess[] = [];
const workloads: Workload[] = [];
const dbs: TestDatabase[] = [];

beforeAll(async () => {
  ring = await testRing();
  console.log(`[standby-daemons] PostgreSQL ${major()}, seed ${SEED}`);
});

afterEach(async () => {
  for (const w of workloads.splice(0)) await w.stop().catch(() => undefined);
  for (const p of procs.splice(0)) {
    if (p.child.pid && p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGCONT'); // a stopped one cannot die otherwise
    await p.stop('SIGKILL');
  }
});

afterAll(async () => {
  for (const db of dbs) await db.drop();
});

interface Member {
  proc: CliProcess;
  httpUrl: string;
}

/** `run --standby`: leads at once if the slot is free, else waits as a standby. */
async function join(files: DaemonFiles): Promise<Member> {
  const proc = spawnCli(['run', '--standby', ...files.args]);
  procs.push(proc);
  const line = await proc.waitForLine(/pg-rekey run started/, { timeoutMs: 60_000 });
  return { proc, httpUrl: (JSON.parse(line.text) as { http: string }).http };
}

interface LeaderRow {
  term: number;
  pid: number;
  since: Date;
}

async function leaderRow(pool: pg.Pool, slot: string): Promise<LeaderRow | null> {
  const r = await pool.query<{ term: string; pid: number; since: Date }>(`select term::text as term, pid, since from pgrekey.leader where slot_name = $1`, [slot]);
  return r.rows[0] ? { ...r.rows[0], term: Number(r.rows[0].term) } : null;
}

async function ready(m: Member): Promise<{ status: number; body: string }> {
  const r = await fetch(`${m.httpUrl}/readyz`).catch(() => null);
  return r ? { status: r.status, body: await r.text() } : { status: 0, body: '' };
}

async function leaderMetric(m: Member): Promise<number | null> {
  const text = await (await fetch(`${m.httpUrl}/metrics`)).text();
  const v = /^pg_rekey_leader (\d+)/m.exec(text);
  return v ? Number(v[1]) : null;
}

const alive = (m: Member) => m.proc.child.exitCode === null && m.proc.child.signalCode === null;

/**
 * After the leader in `prev` died or hung: waits for a new term led by one of `members`, and for
 * that member to stream (/readyz 200). Returns it and how long each step took from `t0`.
 */
async function awaitTakeover(pool: pg.Pool, slot: string, prev: LeaderRow, members: Member[], t0: number, boundMs: number): Promise<{ leader: Member; row: LeaderRow; leaseMs: number; readyMs: number }> {
  let row: LeaderRow | null = null;
  await eventually(`a new term after term ${prev.term}`, async () => {
    row = await leaderRow(pool, slot);
    return row !== null && row.term > prev.term;
  }, boundMs + 20_000);
  const leaseMs = Date.now() - t0;
  const newRow = row as unknown as LeaderRow;
  const leader = members.find((m) => m.proc.child.pid === newRow.pid);
  expect(leader, `the new leader (pid ${newRow.pid}) is one of the standbys`).toBeDefined();
  await eventually('the new leader streams (/readyz 200)', async () => (await ready(leader!)).status === 200, boundMs + 20_000);
  return { leader: leader!, row: newRow, leaseMs, readyMs: Date.now() - t0 };
}

/**
 * No state row carries a term after the next term started (`since` of each term, recorded as
 * they happened; the bump's clock_timestamp() is taken once every old-term transaction ended).
 */
async function expectNoStaleTermWrites(pool: pg.Pool, terms: Map<number, Date>): Promise<void> {
  const stamped = await pool.query<{ tbl: string; term: string; ts: Date }>(
    `select 'daemon' as tbl, term::text as term, heartbeat_at as ts from pgrekey.daemon where term is not null
     union all select 'sweep_segment', term::text, updated_at from pgrekey.sweep_segment where term is not null
     union all select 'event', term::text, at from pgrekey.event where term is not null
     union all select 'quarantine', term::text, last_seen from pgrekey.quarantine where term is not null
     union all select 'slot_event', term::text, at from pgrekey.slot_event where term is not null
     union all select 'run', term::text, coalesce(finished_at, started_at) from pgrekey.run where term is not null`,
  );
  expect(stamped.rows.length).toBeGreaterThan(0);
  const late = stamped.rows.filter((r) => {
    const next = terms.get(Number(r.term) + 1);
    return next !== undefined && r.ts.getTime() >= next.getTime();
  });
  expect(late.map((r) => `${r.tbl}: term ${r.term} at ${r.ts.toISOString()}`)).toEqual([]);
}

function expectLedgerIntact(r: LedgerReport): void {
  const problems = { notTarget: r.notTarget.slice(0, 20), doubleEncrypted: r.doubleEncrypted.slice(0, 20), mismatched: r.mismatched.slice(0, 20), regressed: r.regressed.slice(0, 20), missing: r.missing.slice(0, 20) };
  expect(problems).toEqual({ notTarget: [], doubleEncrypted: [], mismatched: [], regressed: [], missing: [] });
  expect(Object.keys(r.byVersion)).toEqual(['v2']);
}

async function scenario(prefix: string, rows: number): Promise<{ db: TestDatabase; files: DaemonFiles; ledger: WriteLedger; slot: string }> {
  const db = await createTestDatabase(prefix);
  dbs.push(db);
  const ledger = new WriteLedger();
  await createWorkloadTable(db.pool, TABLE);
  await prefill(db.pool, TABLE, ring, ledger, { rows, version: 1, xmlEvery: 10, seed: SEED });
  const files = writeDaemonFiles(db.url, CONFIGURED, { sweep: SLOW_SWEEP, daemon: { shutdown_timeout: '5s' } });
  const setup = await cli(files, 'setup');
  expect(setup.code, setup.stderr).toBe(0);
  return { db, files, ledger, slot: `s_${new URL(db.url).pathname.slice(1)}`.slice(0, 63) };
}

function writers(db: TestDatabase, ledger: WriteLedger): Workload {
  const w = startWorkload(db.url, ring, ledger, { table: TABLE, v1Writers: 2, v2Writers: 1, hotWriters: 2, hotIds: [1, 2, 3, 4, 5, 6], firstNewId: 1_000_000, pauseMs: 10, seed: SEED, errorPauseMs: 50 });
  workloads.push(w);
  return w;
}

async function v1Remaining(pool: pg.Pool): Promise<number> {
  return (await countPrefix(pool, TABLE, 'title', 'v1:')) + (await countPrefix(pool, TABLE, 'raw_xml', 'v1:'));
}

describe('standby daemons on one slot', () => {
  it('three, then two daemons: the leader is kill -9ed three times under writers; a standby takes over within the bound each time, the ledger stays intact', async () => {
    const { db, files, ledger, slot } = await scenario('standby_kill', 8_000);
    // Every state table is fenced, except the term's own, the standbys', the migrations' and the probe's heartbeat rows.
    const unfenced = await db.pool.query<{ t: string }>(
      `select c.relname as t from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'pgrekey' and c.relkind in ('r', 'p')
          and not exists (select from pg_trigger g where g.tgrelid = c.oid and g.tgname = 'fence')
        order by 1`,
    );
    expect(unfenced.rows.map((r) => r.t)).toEqual(['leader', 'migration', 'probe', 'standby']);
    const rand = rng(SEED);
    const first = await join(files);
    await eventually('the first daemon streams', async () => (await ready(first)).status === 200, 60_000);
    const members = [first, await join(files), await join(files)];
    // Standbys: alive, not ready, role standby everywhere (readyz, metrics, status).
    for (const s of members.slice(1)) {
      const r = await ready(s);
      expect(r.status).toBe(503);
      expect(r.body).toMatch(/standby/);
      expect(await leaderMetric(s)).toBe(0);
      expect((await fetch(`${s.httpUrl}/healthz`)).status).toBe(200);
    }
    expect(await leaderMetric(first)).toBe(1);
    await eventually('status lists the two standbys', async () => {
      const st = await cli(files, 'status', '--json');
      const j = JSON.parse(st.stdout) as { replication: { leader: { term: number } | null; standbys: unknown[] } };
      return j.replication.leader !== null && j.replication.standbys.length === 2;
    }, 20_000);

    const workload = writers(db, ledger);
    let row = (await leaderRow(db.pool, slot))!;
    const terms = new Map<number, Date>([[row.term, row.since]]);
    for (let kill = 1; kill <= 3; kill++) {
      if (kill === 3) members.push(await join(files)); // a replacement standby: two daemons again
      const leader = members.find((m) => m.proc.child.pid === row.pid)!;
      expect(leader, `leader pid ${row.pid} is one of ours`).toBeDefined();
      await new Promise((r) => setTimeout(r, 1_000 + Math.floor(rand() * 3_000)));
      const t0 = Date.now();
      leader.proc.child.kill('SIGKILL');
      const live = members.filter((m) => m !== leader && alive(m));
      const t = await awaitTakeover(db.pool, slot, row, live, t0, TAKEOVER_BOUND_MS);
      console.log(`[standby-daemons] kill ${kill} (${live.length + 1} daemons): lease taken after ${t.leaseMs} ms, streaming after ${t.readyMs} ms (term ${t.row.term})`);
      expect(t.leaseMs).toBeLessThanOrEqual(TAKEOVER_BOUND_MS);
      expect(t.readyMs).toBeLessThanOrEqual(TAKEOVER_BOUND_MS);
      expect(await leaderMetric(t.leader)).toBe(1);
      expect(t.row.term).toBe(row.term + 1);
      row = t.row;
      terms.set(row.term, row.since);
      members.splice(members.indexOf(leader), 1);
    }
    const stats = await workload.stop();
    expect(stats.commits).toBeGreaterThan(100);
    const leader = members.find((m) => m.proc.child.pid === row.pid)!;
    await eventually('no v1 value left', async () => (await v1Remaining(db.pool)) === 0, 90_000);
    await leader.proc.waitForLine(/"msg":"CONVERGED/, { timeoutMs: 60_000 });
    expectLedgerIntact(await checkWorkloadLedger(db.pool, TABLE, ledger, ring));
    await expectNoStaleTermWrites(db.pool, terms);
    const verify = await cli(files, 'verify', '--json');
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
  }, 300_000);

  it('a leader SIGSTOPped until a standby took over is fenced when it resumes: its state writes are refused and it exits 3', async () => {
    const { db, files, ledger, slot } = await scenario('standby_stop', 8_000);
    const a = await join(files);
    await eventually('the first daemon streams', async () => (await ready(a)).status === 200, 60_000);
    const b = await join(files);
    expect((await ready(b)).status).toBe(503);
    const workload = writers(db, ledger);
    await new Promise((r) => setTimeout(r, 2_000));
    const before = (await leaderRow(db.pool, slot))!;
    expect(before.pid).toBe(a.proc.child.pid);
    const t0 = Date.now();
    process.kill(a.proc.child.pid!, 'SIGSTOP');
    const t = await awaitTakeover(db.pool, slot, before, [b], t0, PAUSED_TAKEOVER_BOUND_MS);
    console.log(`[standby-daemons] SIGSTOP: lease taken after ${t.leaseMs} ms, streaming after ${t.readyMs} ms (term ${t.row.term})`);
    expect(t.readyMs).toBeLessThanOrEqual(PAUSED_TAKEOVER_BOUND_MS);
    // Let the new leader write for a while, then wake the old one up.
    await new Promise((r) => setTimeout(r, 2_000));
    const fromLine = a.proc.lines.length;
    process.kill(a.proc.child.pid!, 'SIGCONT');
    const exit = await Promise.race([a.proc.exited, new Promise<null>((r) => setTimeout(() => r(null), 30_000))]);
    expect(exit, 'the resumed leader exits within 30 s').not.toBeNull();
    expect(exit!.code, a.proc.lines.slice(-20).map((l) => l.text).join('\n')).toBe(3);
    const said = a.proc.lines.slice(fromLine).map((l) => l.text);
    expect(said.some((l) => /FENCED|LEASE LOST/.test(l)), said.join('\n')).toBe(true);
    const refused = said.filter((l) => /the database refused a state write/.test(l));
    console.log(`[standby-daemons] resumed leader: ${refused.length ? 'a state write was refused by the database (RKF01)' : 'stopped before it tried a state write'}`);
    // The database refuses a session of the old term, whatever it writes.
    const old = new pg.Client({ connectionString: db.url });
    await old.connect();
    try {
      await old.query(`select set_config('pgrekey.term', $1, false), set_config('pgrekey.slot', $2, false)`, [String(before.term), slot]);
      for (const sql of [`update pgrekey.sweep_segment set next_block = 0`, `update pgrekey.daemon set heartbeat_at = now()`, `insert into pgrekey.event (kind) values ('x')`, `delete from pgrekey.quarantine`]) {
        await expect(old.query(sql), sql).rejects.toMatchObject({ code: 'RKF01' });
      }
    } finally {
      await old.end();
    }
    // The new leader carries on: writers' values converge, ledger intact, no row of the old term after the new one started.
    await workload.stop();
    await eventually('no v1 value left', async () => (await v1Remaining(db.pool)) === 0, 90_000);
    await b.proc.waitForLine(/"msg":"CONVERGED/, { timeoutMs: 60_000 });
    expectLedgerIntact(await checkWorkloadLedger(db.pool, TABLE, ledger, ring));
    await expectNoStaleTermWrites(db.pool, new Map([[before.term, before.since], [t.row.term, t.row.since]]));
    expect((await ready(b)).status).toBe(200);
  }, 240_000);
});
