// Issue 8: every old-key write is rewritten and run converges by itself, also when a commit is
// decoded before it is visible (synchronous replication), and convergence accounts for open and
// prepared transactions (design.md, rules 3 and 7).
//
// The first two tests run on a primary of their own with a real synchronous physical standby
// (test/support/standby.ts): the shared cluster of global-setup.ts never changes its settings.
// The last ones run on the shared cluster (max_prepared_transactions > 0 there) and hold
// transactions open only for seconds, always ended in `finally`: creating a logical slot waits for
// every transaction of the cluster, prepared ones included, so a leftover would hang other files.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseMajor, startCluster, type Cluster } from '../support/cluster.js';
import { startSyncStandby, type SyncStandby } from '../support/standby.js';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, testRing } from '../support/fixtures.js';
import { cli, countPrefix, eventually, startDaemon, writeDaemonFiles, type DaemonFiles, type RunningDaemon } from '../support/daemon.js';
import { spawnCli, type CliProcess } from '../support/cli.js';
import { checkWorkloadLedger, createWorkloadTable, prefill, startWorkload, WriteLedger, type Workload } from '../support/workload.js';
import { decryptValue, encryptValue } from '../../src/crypto/rewrite.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { parseLsn } from '../../src/replication/lsn.js';

const major = parseMajor(process.env.PG_REKEY_TEST_PG_MAJOR);
const SEED = Number(process.env.PG_REKEY_TEST_SEED ?? Date.now() % 100_000);

let ring: KeyRing;
const daemons: RunningDaemon[] = [];
const procs: CliProcess[] = [];

beforeAll(async () => {
  ring = await testRing();
  console.log(`[stream-visibility] PostgreSQL ${major}, seed ${SEED}`);
});

afterAll(async () => {
  for (const d of daemons.splice(0)) await d.proc.stop('SIGKILL');
  for (const p of procs.splice(0)) await p.stop('SIGKILL');
});

/** A URL whose sessions wait for the synchronous standby's apply at COMMIT (the server default here is off). */
function remoteApplyUrl(url: string): string {
  const u = new URL(url);
  u.searchParams.set('options', '-c synchronous_commit=remote_apply');
  return u.toString();
}

function dbUrl(clusterUrl: string, name: string): string {
  const u = new URL(clusterUrl);
  u.pathname = `/${name}`;
  return u.toString();
}

/** Counter lines of the stream (rewrites, CAS outcomes, visibility waits, quarantine), excluding reconnects. */
async function streamMetrics(d: RunningDaemon): Promise<{ counters: string[]; appliedLsn: number }> {
  const text = await (await fetch(`${d.httpUrl}/metrics`)).text();
  const lines = text.split('\n').filter((l) => l.startsWith('pg_rekey_'));
  const counters = lines.filter((l) => {
    const name = l.split(/[{ ]/)[0]!;
    return name.endsWith('_total') && !name.includes('reconnects') && (name.includes('stream') || l.includes('source="stream"'));
  });
  const applied = lines.find((l) => l.startsWith('pg_rekey_stream_applied_lsn '));
  return { counters, appliedLsn: applied ? Number(applied.split(' ')[1]) : 0 };
}

/** The daemon's log without its periodic lines, for failure messages. */
function logTail(d: RunningDaemon | CliProcess, n = 25): string {
  const lines = 'proc' in d ? d.proc.lines : d.lines;
  return lines
    .filter((l) => !/sweep progress|"msg":"not converged yet"/.test(l.text))
    .slice(-n)
    .map((l) => l.text)
    .join('\n');
}

describe('with a synchronous standby (a primary of its own)', () => {
  let primary: Cluster;
  let standby: SyncStandby;
  let admin: pg.Pool;
  const pools: pg.Pool[] = [];

  beforeAll(async () => {
    primary = await startCluster(major);
    // A 10 ms round trip to the standby, as to one in another building: every synchronous commit
    // is decoded that long before it becomes visible.
    standby = await startSyncStandby(primary, { name: 'sync_standby', linkDelayMs: 5 });
    admin = new pg.Pool({ connectionString: primary.url, max: 2 });
    admin.on('error', () => undefined);
  });

  afterAll(async () => {
    for (const d of daemons.splice(0)) await d.proc.stop('SIGKILL');
    for (const p of pools) await p.end().catch(() => undefined);
    await admin?.end().catch(() => undefined);
    await standby?.stop();
    await primary?.stop();
  });

  async function newDb(prefix: string): Promise<{ url: string; pool: pg.Pool }> {
    const name = `${prefix}_${randomBytes(3).toString('hex')}`;
    await admin.query(`create database ${name}`);
    const url = dbUrl(primary.url, name);
    const pool = new pg.Pool({ connectionString: url, max: 4 });
    pool.on('error', () => undefined);
    pools.push(pool);
    return { url, pool };
  }

  it('a v1 INSERT decoded while it is still invisible (its remote_apply COMMIT waits for a paused standby) is rewritten once it commits, without any operator step', async () => {
    const db = await newDb('vis_race');
    await db.pool.query(`create table incidents (id bigint primary key, title text)`);
    const files = writeDaemonFiles(db.url, [{ name: 'incidents', columns: ['title'] }]);
    const setup = await cli(files, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
    const d = await startDaemon(files);
    daemons.push(d);
    await d.proc.waitForLine(/sweep complete for every configured table/, { timeoutMs: 30_000 });
    const slot = `s_${new URL(db.url).pathname.slice(1)}`;

    const app = new pg.Client({ connectionString: remoteApplyUrl(db.url), application_name: 'app-remote-apply' });
    app.on('error', () => undefined);
    await app.connect();
    const appPid = (await app.query<{ pid: number }>(`select pg_backend_pid() as pid`)).rows[0]!.pid;
    expect((await app.query(`show synchronous_commit`)).rows[0].synchronous_commit).toBe('remote_apply');
    const plaintext = Buffer.from('call 911: structure fire, written while the standby is behind');
    let committed: Promise<unknown> | undefined;
    let paused = false;
    try {
      await standby.pauseReplay();
      paused = true;
      const before = await streamMetrics(d);
      // Autocommit INSERT: the commit record is flushed (so decoded and sent to the stream), then
      // the backend waits for the standby's apply, still in the proc array: invisible to others.
      committed = app.query(`insert into incidents values (1, $1)`, [encryptValue(plaintext, 1, ring)]);
      committed.catch(() => undefined);
      await eventually(
        'the application COMMIT to wait for the synchronous standby (wait_event SyncRep)',
        async () => (await admin.query(`select 1 from pg_stat_activity where pid = $1 and wait_event = 'SyncRep'`, [appPid])).rowCount === 1,
        15_000,
      );
      const flushed = (await db.pool.query<{ l: string }>(`select pg_current_wal_flush_lsn()::text as l`)).rows[0]!.l;
      // The logical walsender decoded the commit and sent the transaction to pg-rekey.
      await eventually(
        `pg-rekey's walsender to send past ${flushed}`,
        async () =>
          (
            await db.pool.query(
              `select 1 from pg_stat_replication r join pg_replication_slots s on s.active_pid = r.pid where s.slot_name = $1 and r.sent_lsn >= $2::pg_lsn`,
              [slot, flushed],
            )
          ).rowCount === 1,
        15_000,
      );
      // Give the stream its chance to act on the invisible row: a stream counter moves (a CAS
      // outcome, a visibility wait) or it applies past the commit. A stream that waits for the
      // transaction to become visible does none of this until replay resumes: the wait is bounded.
      const acted = await eventually(
        'the stream to act on the delivered transaction',
        async () => {
          const now = await streamMetrics(d);
          return now.counters.join('\n') !== before.counters.join('\n') || now.appliedLsn >= Number(parseLsn(flushed));
        },
        5_000,
      ).then(
        () => true,
        () => false,
      );
      const during = await streamMetrics(d);
      console.log(`[stream-visibility] PG ${major} race: stream acted while the row was invisible: ${acted}; ${JSON.stringify(during.counters)}`);
      expect((await db.pool.query(`select count(*)::int as n from incidents`)).rows[0].n).toBe(0); // still invisible
      await standby.resumeReplay();
      paused = false;
      await Promise.race([
        committed,
        new Promise((_, reject) => setTimeout(() => reject(new Error('the remote_apply COMMIT did not return within 30 s of resuming replay')), 30_000).unref()),
      ]);
      await eventually('the v1 row to be rewritten to v2 by run alone', async () => (await countPrefix(db.pool, 'incidents', 'title', 'v1:')) === 0, 20_000).catch(async (e: Error) => {
        const m = await streamMetrics(d);
        const left = (await db.pool.query(`select id, left(title, 3) as version from incidents`)).rows;
        const lastCheck = [...d.proc.lines].reverse().find((l) => /"msg":"not converged yet"/.test(l.text))?.text;
        throw new Error(`${e.message}\nrows: ${JSON.stringify(left)}\nstream counters: ${m.counters.join('; ')}\nlast convergence check: ${lastCheck}\ndaemon log (tail):\n${logTail(d)}`);
      });
      const row = (await db.pool.query(`select title from incidents where id = 1`)).rows[0];
      expect(row.title.startsWith('v2:')).toBe(true);
      expect(Buffer.compare(Buffer.from(decryptValue(row.title, ring)!), plaintext)).toBe(0);
      await eventually('status to say converged', async () => {
        const s = await cli(files, 'status', '--json');
        return s.code === 0 && JSON.parse(s.stdout).replication.converged === true;
      }, 20_000);
    } finally {
      if (paused) await standby.resumeReplay().catch(() => undefined);
      await Promise.race([committed, new Promise((r) => setTimeout(r, 10_000).unref())]).catch(() => undefined);
      await app.end().catch(() => undefined);
      await d.proc.stop('SIGTERM', 10_000);
      daemons.splice(daemons.indexOf(d), 1);
    }
  });

  it('concurrent v1/v2 writers with synchronous_commit = remote_apply for 15 s after the sweep: every value v2, the ledger intact, run converges by itself', async () => {
    const db = await newDb('vis_writers');
    const TABLE = 'calls';
    const ledger = new WriteLedger();
    await createWorkloadTable(db.pool, TABLE);
    await prefill(db.pool, TABLE, ring, ledger, { rows: 2000, version: 1, xmlEvery: 10, seed: SEED });
    const files = writeDaemonFiles(db.url, [{ name: TABLE, columns: ['title', 'raw_xml'] }]);
    const setup = await cli(files, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
    const d = await startDaemon(files);
    daemons.push(d);
    // The sweep is over before the writers start: what they write is the stream's job alone.
    await d.proc.waitForLine(/sweep complete for every configured table/, { timeoutMs: 60_000 });
    let w: Workload | undefined = startWorkload(remoteApplyUrl(db.url), ring, ledger, {
      table: TABLE,
      v1Writers: 3,
      v2Writers: 1,
      hotWriters: 2,
      hotIds: [1, 2, 3, 4, 5, 6, 7, 8],
      firstNewId: 1_000_000,
      pauseMs: 3,
      seed: SEED,
    });
    try {
      // The writers' own duration (not a synchronisation): 15 s of application traffic.
      await new Promise((r) => setTimeout(r, 15_000));
      const stats = await w.stop();
      w = undefined;
      const stoppedAt = d.proc.lines.length;
      expect(stats.errors.slice(0, 5)).toEqual([]);
      expect(stats.commits).toBeGreaterThan(300);
      const v1Left = async () => (await countPrefix(db.pool, TABLE, 'title', 'v1:')) + (await countPrefix(db.pool, TABLE, 'raw_xml', 'v1:'));
      await eventually('no v1 value left', async () => (await v1Left()) === 0, 30_000).catch(async (e: Error) => {
        const m = await streamMetrics(d);
        const lastCheck = [...d.proc.lines].reverse().find((l) => /"msg":"not converged yet"/.test(l.text))?.text;
        throw new Error(
          `${e.message}: ${await v1Left()} v1 value(s) remain after ${stats.commits} commits (${JSON.stringify(stats.byOp)})\n` +
            `stream counters: ${m.counters.join('; ')}\nlast convergence check: ${lastCheck}\ndaemon log (tail):\n${logTail(d)}`,
        );
      });
      const report = await checkWorkloadLedger(db.pool, TABLE, ledger, ring);
      const problems = { notTarget: report.notTarget.slice(0, 20), doubleEncrypted: report.doubleEncrypted.slice(0, 20), mismatched: report.mismatched.slice(0, 20), regressed: report.regressed.slice(0, 20), missing: report.missing.slice(0, 20) };
      expect(problems).toEqual({ notTarget: [], doubleEncrypted: [], mismatched: [], regressed: [], missing: [] });
      expect(Object.keys(report.byVersion)).toEqual(['v2']);
      await d.proc.waitForLine(/"msg":"CONVERGED/, { fromIndex: stoppedAt, timeoutMs: 30_000 }).catch(async () => {
        const s = JSON.parse((await cli(files, 'status', '--json')).stdout);
        if (!s.replication.converged) throw new Error(`run did not report CONVERGED after the writers stopped\n${logTail(d)}`);
      });
      const verify = await cli(files, 'verify', '--json');
      expect(verify.code, verify.stdout + verify.stderr).toBe(0);
      const m = await streamMetrics(d);
      console.log(`[stream-visibility] PG ${major} writers: ${JSON.stringify({ commits: stats.commits, byOp: stats.byOp, values: report.values, stream: m.counters })}`);
    } finally {
      await w?.stop().catch(() => undefined);
      await d.proc.stop('SIGTERM', 10_000);
      daemons.splice(daemons.indexOf(d), 1);
    }
  });
});

/**
 * On the shared cluster: a session with an open transaction and a prepared transaction, each
 * holding a v1 insert into `table`. close() ends both (COMMIT / COMMIT PREPARED, or ROLLBACK in
 * `finally`), and never leaves either behind.
 */
async function holdOpenWriters(db: TestDatabase, table: string, ids: { open: number; prepared: number }): Promise<{
  gid: string;
  pid: number;
  commit(): Promise<void>;
  close(): Promise<void>;
}> {
  const gid = `pgrekey_test_${randomBytes(4).toString('hex')}`;
  const session = new pg.Client({ connectionString: db.url, application_name: 'app-open-xact' });
  session.on('error', () => undefined);
  await session.connect();
  const pid = (await session.query<{ pid: number }>(`select pg_backend_pid() as pid`)).rows[0]!.pid;
  let sessionOpen = false;
  let prepared = false;
  const close = async (): Promise<void> => {
    if (prepared) {
      await db.pool.query(`rollback prepared '${gid}'`).catch(() => undefined);
      prepared = false;
    }
    if (sessionOpen) await session.query('rollback').catch(() => undefined);
    sessionOpen = false;
    await session.end().catch(() => undefined);
    // Backstop: whatever happened above, no prepared transaction of this test survives it.
    await db.pool.query(`select gid from pg_prepared_xacts where gid = $1`, [gid]).then(async (r) => {
      if (r.rowCount) await db.pool.query(`rollback prepared '${gid}'`);
    });
  };
  try {
    const p = new pg.Client({ connectionString: db.url, application_name: 'app-prepare' });
    p.on('error', () => undefined);
    await p.connect();
    try {
      await p.query('begin');
      await p.query(`insert into ${table} values ($1, $2)`, [ids.prepared, encryptValue(Buffer.from(`prepared ${ids.prepared}`), 1, ring)]);
      await p.query(`prepare transaction '${gid}'`);
      prepared = true;
    } finally {
      await p.end().catch(() => undefined);
    }
    await session.query('begin');
    sessionOpen = true;
    await session.query(`insert into ${table} values ($1, $2)`, [ids.open, encryptValue(Buffer.from(`open ${ids.open}`), 1, ring)]);
  } catch (e) {
    await close();
    throw e;
  }
  return {
    gid,
    pid,
    async commit() {
      await db.pool.query(`commit prepared '${gid}'`);
      prepared = false;
      await session.query('commit');
      sessionOpen = false;
    },
    close,
  };
}

async function preparedTransactionsEnabled(db: TestDatabase): Promise<boolean> {
  return Number((await db.pool.query(`select current_setting('max_prepared_transactions') as n`)).rows[0].n) > 0;
}

/** "pid 123", "pid: 123", `"pid":123`, "pid=123". */
const namesPid = (text: string, pid: number) => new RegExp(`pid\\W{0,4}${pid}\\b`).test(text);

describe('open and prepared transactions holding v1 writes (shared cluster)', () => {
  let db: TestDatabase;
  let files: DaemonFiles;

  beforeAll(async () => {
    db = await createTestDatabase('vis_xacts');
    await db.pool.query(`create table incidents (id bigint primary key, title text)`);
    const rows: unknown[][] = [];
    for (let id = 1; id <= 200; id++) rows.push([id, encryptValue(Buffer.from(`incident ${id}`), 2, ring)]);
    await insertBatched(db.pool, 'incidents', ['id', 'title'], ['bigint', 'text'], rows);
    files = writeDaemonFiles(db.url, [{ name: 'incidents', columns: ['title'] }]);
    const setup = await cli(files, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
  });

  afterAll(async () => {
    await db?.drop();
  });

  it('verify exits 1 while a prepared and an open transaction hold v1 inserts, and names them (gid, pid)', async (ctx) => {
    if (!(await preparedTransactionsEnabled(db))) ctx.skip('max_prepared_transactions is 0 on this server');
    const h = await holdOpenWriters(db, 'incidents', { open: 1001, prepared: 1002 });
    try {
      const r = await cli(files, 'verify');
      const out = r.stdout + r.stderr;
      expect({ code: r.code, namesGid: out.includes(h.gid), namesPid: namesPid(out, h.pid) }, out).toEqual({ code: 1, namesGid: true, namesPid: true });
    } finally {
      await h.close();
    }
  });

  it('run --exit-when-converged does not exit 0 while they are open; after COMMIT PREPARED and COMMIT it converges, exit 0, no v1 left', async (ctx) => {
    if (!(await preparedTransactionsEnabled(db))) ctx.skip('max_prepared_transactions is 0 on this server');
    const h = await holdOpenWriters(db, 'incidents', { open: 2001, prepared: 2002 });
    let proc: CliProcess | undefined;
    try {
      proc = spawnCli(['run', '--exit-when-converged', ...files.args]);
      procs.push(proc);
      await proc.waitForLine(/sweep complete for every configured table/, { timeoutMs: 30_000 });
      // While they are open, watch run for three convergence checks (its status row's
      // last_check_at), at most 8 s (a check that itself waits for the transactions never ends).
      const slot = `s_${db.name}`.slice(0, 63);
      const checks = new Set<string>();
      let exit: { code: number | null } | undefined;
      void proc.exited.then((r) => (exit = r));
      await eventually(
        'three convergence checks (or 8 s) while the transactions are open',
        async () => {
          const r = await db.pool.query<{ t: string | null }>(`select last_check_at::text as t from pgrekey.daemon where slot_name = $1`, [slot]).catch(() => ({ rows: [] as { t: string | null }[] }));
          if (r.rows[0]?.t) checks.add(r.rows[0].t);
          return exit !== undefined || checks.size >= 3;
        },
        8_000,
      ).catch(() => undefined);
      expect(exit?.code, `run exited ${exit?.code} while a prepared and an open transaction held v1 inserts:\n${logTail(proc)}`).not.toBe(0);
      expect(exit, `run exited (${exit?.code}) while the transactions were open:\n${logTail(proc)}`).toBeUndefined();
      await h.commit();
      const res = await Promise.race([
        proc.exited,
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`run did not converge within 30 s of COMMIT PREPARED / COMMIT:\n${logTail(proc!)}`)), 30_000).unref()),
      ]);
      expect(res.code, logTail(proc)).toBe(0);
      expect(await countPrefix(db.pool, 'incidents', 'title', 'v1:')).toBe(0);
      expect((await db.pool.query(`select count(*)::int as n from incidents where id in (2001, 2002)`)).rows[0].n).toBe(2);
      expect((await cli(files, 'verify')).code).toBe(0);
    } finally {
      await h.close();
      if (proc) {
        await proc.stop('SIGTERM', 10_000);
        procs.splice(procs.indexOf(proc), 1);
      }
    }
  });

  it('setup names a prepared transaction (its gid) that holds up the creation of the slot', async (ctx) => {
    if (!(await preparedTransactionsEnabled(db))) ctx.skip('max_prepared_transactions is 0 on this server');
    const db2 = await createTestDatabase('vis_setup_prepared');
    const gid = `pgrekey_setup_${randomBytes(4).toString('hex')}`;
    let prepared = false;
    let proc: CliProcess | undefined;
    try {
      await db2.pool.query(`create table incidents (id bigint primary key, title text)`);
      await db2.pool.query(`create table app_other (id bigint primary key, title text)`); // not configured
      const f = writeDaemonFiles(db2.url, [{ name: 'incidents', columns: ['title'] }]);
      const p = await db2.pool.connect();
      try {
        await p.query('begin');
        await p.query(`insert into app_other values (1, $1)`, [encryptValue(Buffer.from('prepared'), 1, ring)]);
        await p.query(`prepare transaction '${gid}'`);
        prepared = true;
      } finally {
        p.release();
      }
      proc = spawnCli(['setup', ...f.args]);
      procs.push(proc);
      // The slot-wait report comes after 3 s, then every 10 s.
      const line = await proc.waitForLine((t) => t.includes(gid), { timeoutMs: 15_000 });
      expect(line.text).toMatch(/prepared/i);
      await db2.pool.query(`commit prepared '${gid}'`);
      prepared = false;
      const res = await Promise.race([
        proc.exited,
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error('setup did not finish within 30 s of COMMIT PREPARED')), 30_000).unref()),
      ]);
      expect(res.code, res.stderr).toBe(0);
    } finally {
      if (prepared) await db2.pool.query(`rollback prepared '${gid}'`).catch(() => undefined);
      await db2.pool.query(`select gid from pg_prepared_xacts where gid = $1`, [gid]).then(async (r) => {
        if (r.rowCount) await db2.pool.query(`rollback prepared '${gid}'`);
      });
      if (proc) {
        await proc.stop('SIGTERM', 10_000);
        procs.splice(procs.indexOf(proc), 1);
      }
      await db2.drop();
    }
  });
});
