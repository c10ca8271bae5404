// Database failover under `pg-rekey run`: a primary and its physical standby (standby.ts), pg-rekey
// given both hosts (libpq syntax), application writers (v1 and v2); the primary is stopped
// immediately (SIGQUIT to the postmaster, as `pg_ctl stop -m immediate`) and the standby promoted.
// 18: the slot is a failover slot the standby synced, and run continues from it without a
// re-sweep. 14: no logical slot survives a promotion: run recreates it and sweeps everything again,
// and says so. Both: the writers move to the new primary, run converges, the ledger is intact.
// Then the record of the slot's server is made to name another cluster (a restored copy): run
// does not trust the slot, recreates it and sweeps again.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startCluster, type Cluster, type PgMajor } from '../support/cluster.js';
import { startSyncStandby, type SyncStandby } from '../support/standby.js';
import { testRing } from '../support/fixtures.js';
import { cli, eventually, startDaemon, writeDaemonFiles, type RunningDaemon } from '../support/daemon.js';
import { checkWorkloadLedger, commitsSince, createWorkloadTable, prefill, startWorkload, WriteLedger, type Workload, type WorkloadSpec } from '../support/workload.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';

const TABLE = 'calls';
const DB = 'failover';
const SLOT = 'rekey_failover';
const PREFILL = 6_000;
const SEED = Number(process.env.PG_REKEY_TEST_SEED ?? Date.now() % 100_000);
const major = () => inject('pgMajor') as PgMajor;

let ring: KeyRing;
let primary: Cluster | undefined;
let standby: SyncStandby | undefined;
const pools: pg.Pool[] = [];
const workloads: Workload[] = [];
let daemon: RunningDaemon | undefined;

beforeAll(async () => {
  ring = await testRing();
  console.log(`[failover] PostgreSQL ${major()}, seed ${SEED}`);
});

afterAll(async () => {
  for (const w of workloads.splice(0)) await w.stop().catch(() => undefined);
  await daemon?.proc.stop('SIGKILL');
  for (const p of pools.splice(0)) await p.end().catch(() => undefined);
  await standby?.stop().catch(() => undefined);
  await primary?.stop().catch(() => undefined);
});

function dbUrl(base: string): string {
  const u = new URL(base);
  u.pathname = `/${DB}`;
  return u.toString();
}

function poolOf(url: string): pg.Pool {
  const p = new pg.Pool({ connectionString: url, max: 3 });
  p.on('error', () => undefined); // connections to the primary die with it
  pools.push(p);
  return p;
}

function spec(o: Partial<WorkloadSpec> = {}): WorkloadSpec {
  return { table: TABLE, v1Writers: 2, v2Writers: 1, hotWriters: 1, hotIds: [1, 2, 3, 4], firstNewId: 1_000_000, pauseMs: 15, seed: SEED, errorPauseMs: 200, ...o };
}

/** `pg_ctl stop -m immediate`: SIGQUIT to the postmaster; no shutdown checkpoint, every session cut. */
async function stopImmediately(c: Cluster): Promise<void> {
  const pid = Number(readFileSync(path.join(c.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  process.kill(pid, 'SIGQUIT');
  await eventually('the old primary to exit', async () => {
    try {
      process.kill(pid, 0);
      return false;
    } catch {
      return true;
    }
  }, 30_000);
}

async function metric(d: RunningDaemon, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`${d.httpUrl}/metrics`)).text();
  const m = new RegExp(`^${name}${labels.replace(/[{}]/g, '\\$&')} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

describe('database failover under run', () => {
  it('primary stopped immediately, standby promoted: writers move, run follows to the new primary and converges with the ledger intact', async () => {
    const pg18 = major() >= 17;
    // synchronous_commit on (with the standby synchronous): a commit acknowledged to a writer is on
    // the standby, so the ledger may demand it after the failover.
    primary = await startCluster(major(), { settings: { synchronous_commit: 'on' } });
    const admin = new pg.Client({ connectionString: primary.url });
    await admin.connect();
    await admin.query(`create database ${DB}`);
    await admin.end();
    const primaryUrl = dbUrl(primary.url);
    const ledger = new WriteLedger();
    const p1 = poolOf(primaryUrl);
    await createWorkloadTable(p1, TABLE);
    await prefill(p1, TABLE, ring, ledger, { rows: PREFILL, version: 1, xmlEvery: 10, seed: SEED });

    standby = await startSyncStandby(primary, { name: 'failover_standby', ...(pg18 ? { syncSlotsOf: DB } : {}) });
    const standbyUrl = dbUrl(standby.url);
    // Both hosts, libpq style; pg-rekey must find the primary itself (read-write is its default).
    const multiUrl = `postgres://postgres@127.0.0.1:${primary.port},127.0.0.1:${standby.port}/${DB}`;
    const files = writeDaemonFiles(multiUrl, [{ name: TABLE, columns: ['title', 'raw_xml'] }], {
      replication: { slot: SLOT },
      sweep: { chunk_time: 0, chunk_blocks: 16, nice_ratio: 0.5 },
    });
    const setup = await cli(files, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
    const slotRow = (await p1.query<{ failover: boolean }>(`select ${pg18 ? 'failover' : 'false as failover'} from pg_replication_slots where slot_name = $1`, [SLOT])).rows[0];
    expect(slotRow?.failover).toBe(pg18);

    daemon = await startDaemon(files);
    const d = daemon;
    let w = startWorkload(primaryUrl, ring, ledger, spec());
    workloads.push(w);
    await d.proc.waitForLine(/"msg":"sweep complete for every configured table"/, { timeoutMs: 90_000 });

    const sp = poolOf(standbyUrl);
    if (pg18) {
      // The failover slot is synced (persistent, not the temporary first copy) before the primary goes.
      await eventually(
        'the standby to hold a synced copy of the failover slot',
        async () => (await sp.query(`select 1 from pg_replication_slots where slot_name = $1 and synced and not temporary and confirmed_flush_lsn is not null`, [SLOT])).rowCount === 1,
        60_000,
      ).catch((e: Error) => {
        throw new Error(`${e.message}\nstandby log:\n${standby!.log().slice(-3000)}`);
      });
    }
    await new Promise((r) => setTimeout(r, 1_000)); // writers keep going on the primary a little longer

    const failoverLine = d.proc.lines.length;
    await stopImmediately(primary);
    const killedAt = Date.now();
    await w.stop(); // the application's old connections are gone; it reconnects to the new primary
    workloads.splice(workloads.indexOf(w), 1);
    await standby.promote();
    const promotedAt = Date.now();
    w = startWorkload(standbyUrl, ring, ledger, spec({ firstNewId: 2_000_000 }));
    workloads.push(w);

    // run finds the new primary through the host list and goes on streaming there.
    await d.proc.waitForLine(/"msg":"streaming"/, { fromIndex: failoverLine, timeoutMs: 60_000 });
    const reconnectedMs = Date.now() - promotedAt;
    await new Promise((r) => setTimeout(r, 4_000));
    const stats = await w.stop();
    workloads.splice(workloads.indexOf(w), 1);
    expect(commitsSince(stats, promotedAt)).toBeGreaterThan(50);

    const stoppedLine = d.proc.lines.length;
    await eventually('no v1 value left on the new primary', async () => {
      const r = await sp.query<{ n: number }>(`select count(*)::int as n from ${TABLE} where starts_with(title, 'v1:') or starts_with(raw_xml, 'v1:')`);
      return r.rows[0]!.n === 0;
    }, 90_000);
    await d.proc.waitForLine(/"msg":"CONVERGED/, { fromIndex: stoppedLine, timeoutMs: 90_000 });
    expect(d.proc.child.exitCode).toBeNull(); // the daemon followed the failover; it did not exit

    const after = d.proc.lines.slice(failoverLine).map((l) => l.text);
    // The lease went with the old primary and was taken again on the new one.
    expect(after.some((t) => /is held again/.test(t))).toBe(true);
    const events = (await sp.query<{ event: string; reason: string | null }>(`select event, reason from pgrekey.slot_event where slot_name = $1 order by at`, [SLOT])).rows;
    const server = (await sp.query(`select timeline, failed_over_at is not null as "failedOver", failover from pgrekey.slot_server where slot_name = $1`, [SLOT])).rows[0];
    if (pg18) {
      // Continued from the synced failover slot: no recreation, no re-sweep.
      expect(after.some((t) => /"msg":"FAILOVER: the server is a promoted standby/.test(t))).toBe(true);
      expect(after.some((t) => /sweep restarted from block 0/.test(t))).toBe(false);
      expect(events.filter((e) => e.event === 'recreated')).toEqual([]);
      expect(await metric(d, 'pg_rekey_slot_failovers_total', '{outcome="continued"}')).toBe(1);
      expect(await metric(d, 'pg_rekey_slot_recreations_total')).toBe(0);
      expect(server).toMatchObject({ timeline: 2, failedOver: true, failover: true });
    } else {
      // The slot did not survive: recreated, everything swept again, and the log says why.
      expect(after.some((t) => /REPLICATION SLOT LOST, MISSING OR NOT TRUSTED/.test(t) && /did not survive the promotion/.test(t))).toBe(true);
      expect(after.some((t) => /sweep restarted from block 0/.test(t))).toBe(true);
      expect(events.filter((e) => e.event === 'recreated').map((e) => e.reason)).toEqual([expect.stringMatching(/^failover: .*timeline 2.*does not carry logical slots/)]);
      expect(await metric(d, 'pg_rekey_slot_failovers_total', '{outcome="recreated"}')).toBe(1);
      expect(server).toMatchObject({ timeline: 2, failedOver: false, failover: false });
    }

    const verify = await cli(files, 'verify', '--json');
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    const report = await checkWorkloadLedger(sp, TABLE, ledger, ring);
    const problems = { notTarget: report.notTarget.slice(0, 20), doubleEncrypted: report.doubleEncrypted.slice(0, 20), mismatched: report.mismatched.slice(0, 20), regressed: report.regressed.slice(0, 20), missing: report.missing.slice(0, 20) };
    expect(problems).toEqual({ notTarget: [], doubleEncrypted: [], mismatched: [], regressed: [], missing: [] });
    expect(report.values).toBeGreaterThanOrEqual(PREFILL);
    expect(Object.keys(report.byVersion)).toEqual(['v2']);

    // Then a server that is not the one the slot was made on (a restored copy whose state schema
    // came along): a slot of that name there is not trusted; recreated and re-swept, saying why.
    const otherLine = d.proc.lines.length;
    const realSysid = (await sp.query<{ s: string }>(`select system_identifier::text as s from pg_control_system()`)).rows[0]!.s;
    await sp.query(`update pgrekey.slot_server set system_identifier = '1' where slot_name = $1`, [SLOT]);
    await sp.query(`select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1 and active_pid is not null`, [SLOT]);
    await d.proc.waitForLine((t) => /NOT TRUSTED/.test(t) && /different PostgreSQL cluster \(system identifier \d+, the slot was created on 1: /.test(t), { fromIndex: otherLine, timeoutMs: 60_000 });
    await d.proc.waitForLine(/sweep restarted from block 0/, { fromIndex: otherLine, timeoutMs: 60_000 });
    await d.proc.waitForLine(/"msg":"CONVERGED/, { fromIndex: otherLine, timeoutMs: 90_000 });
    expect((await sp.query(`select system_identifier as s from pgrekey.slot_server where slot_name = $1`, [SLOT])).rows[0]).toEqual({ s: realSysid });
    console.log(`[failover] PG ${major()}: ${JSON.stringify({ reconnectedMs, killedToPromotedMs: promotedAt - killedAt, commits: stats.commits, inDoubt: ledger.inDoubt, events: events.map((e) => e.event) })}`);
  }, 300_000);
});
