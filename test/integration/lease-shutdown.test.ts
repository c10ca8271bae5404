// One daemon per slot, and a shutdown that ends within daemon.shutdown_timeout whatever the daemon
// is doing: a second `run` on a held slot, the lease connection lost, SIGTERM during a catalog
// refresh blocked on a lock, during a reconnect backoff and during a slot-creation wait, and an
// HTTP port already in use.
import net from 'node:net';
import os from 'node:os';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { adminUrl, createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, testRing } from '../support/fixtures.js';
import { cli, countPrefix, eventually, startDaemon, writeDaemonFiles, type DaemonFiles, type RunningDaemon } from '../support/daemon.js';
import { runCli, spawnCli, type CliProcess } from '../support/cli.js';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js';
import { encryptValue } from '../../src/crypto/rewrite.js';

/** daemon.shutdown_timeout in these tests, and what a process may take beyond it to exit. */
const BOUND_MS = 3_000;
const EXIT_SLACK_MS = 2_500;
const TABLES = [{ name: 'incidents', columns: ['title'] }];
const loopback = () => ['127.0.0.1', 'localhost', '[::1]'].includes(new URL(adminUrl()).hostname);

const dbs: TestDatabase[] = [];
const procs: CliProcess[] = [];
const proxies: TcpProxy[] = [];
const clients: pg.Client[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) await c.end().catch(() => undefined);
  for (const p of procs.splice(0)) await p.stop('SIGKILL');
  for (const p of proxies.splice(0)) await p.close();
});

afterAll(async () => {
  for (const db of dbs) await db.drop();
});

async function newDb(prefix: string, rows = 500, o: { partitioned?: boolean } = {}): Promise<TestDatabase> {
  const db = await createTestDatabase(prefix);
  dbs.push(db);
  const ring = await testRing();
  if (!o.partitioned) await db.pool.query(`create table incidents (id bigint primary key, title text)`);
  else {
    await db.pool.query(`create table incidents (id bigint primary key, title text) partition by range (id)`);
    await db.pool.query(`create table incidents_p1 partition of incidents for values from (minvalue) to (maxvalue)`);
  }
  const data: unknown[][] = [];
  for (let id = 1; id <= rows; id++) data.push([id, encryptValue(Buffer.from(`incident ${id}`), 1, ring)]);
  await insertBatched(db.pool, 'incidents', ['id', 'title'], ['bigint', 'text'], data);
  return db;
}

function files(url: string, daemon: Record<string, unknown> = {}): DaemonFiles {
  return writeDaemonFiles(url, TABLES, { daemon: { shutdown_timeout: `${BOUND_MS}ms`, ...daemon } });
}

async function setup(f: DaemonFiles, url?: string): Promise<void> {
  const args = url ? ['setup', '-c', f.configPath, '--env-file', f.envPath, '--database-url', url] : ['setup', ...f.args];
  const r = await runCli(args, { timeoutMs: 120_000 });
  expect(r.code, r.stdout + r.stderr).toBe(0);
}

async function start(f: DaemonFiles): Promise<RunningDaemon> {
  const d = await startDaemon(f);
  procs.push(d.proc);
  return d;
}

async function client(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => undefined);
  await c.connect();
  clients.push(c);
  return c;
}

/** The backend holding the slot's lease (a session advisory lock keyed on the slot name), if any. */
async function leaseBackend(pool: pg.Pool, slot: string): Promise<number | null> {
  const r = await pool.query<{ pid: number }>(
    `select pid from pg_locks
      where locktype = 'advisory' and granted and objsubid = 2 and database = (select oid from pg_database where datname = current_database())
        and classid = hashtext('pg-rekey')::oid and objid = hashtext($1)::oid`,
    [slot],
  );
  return r.rows[0]?.pid ?? null;
}

async function statusRow(pool: pg.Pool, slot: string): Promise<{ pid: number; host: string; started_at: Date; stopped_at: Date | null; heartbeat_at: Date } | undefined> {
  return (await pool.query(`select pid, host, started_at, stopped_at, heartbeat_at from pgrekey.daemon where slot_name = $1`, [slot])).rows[0];
}

const slotOf = (f: DaemonFiles) => `s_${new URL(f.args[f.args.indexOf('--database-url') + 1]!).pathname.slice(1)}`.slice(0, 63);

/** Sends SIGTERM, returns the result and how long the exit took. The harness kills it after 20 s. */
async function terminate(p: CliProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string; ms: number }> {
  const t0 = Date.now();
  const r = await p.stop('SIGTERM', 20_000);
  return { ...r, ms: Date.now() - t0 };
}

describe('one daemon per slot', () => {
  it('a second run on the same slot exits 2 at once naming the first (pid, host, start); status and teardown name the first daemon', async () => {
    const db = await newDb('lease_second');
    const f = files(db.url);
    await setup(f);
    const first = await start(f);
    const pid = first.proc.child.pid!;
    await eventually('the first daemon converged', async () => (await countPrefix(db.pool, 'incidents', 'title', 'v1:')) === 0);
    await eventually('the first daemon wrote its status row', async () => (await statusRow(db.pool, slotOf(f)))?.pid === pid);
    const before = (await statusRow(db.pool, slotOf(f)))!;

    const t0 = Date.now();
    const second = await runCli(['run', ...f.args], { timeoutMs: 20_000 });
    const ms = Date.now() - t0;
    expect(second.code, second.stderr.slice(-3000)).toBe(2);
    expect(ms).toBeLessThan(8_000); // process start included; no waiting
    expect(second.stderr).toMatch(new RegExp(`pid ${pid} on ${os.hostname()}`));
    expect(second.stderr).toMatch(/started \d{4}-\d\d-\d\dT/);
    expect(second.stderr).toMatch(new RegExp(`slot ${slotOf(f)}`));
    expect(second.stderr).not.toMatch(/pg-rekey run started/);

    // The status row is still the first daemon's: same pid and start, running, not stopped.
    const after = (await statusRow(db.pool, slotOf(f)))!;
    expect({ pid: after.pid, host: after.host, started_at: after.started_at, stopped_at: after.stopped_at }).toEqual({
      pid,
      host: os.hostname(),
      started_at: before.started_at,
      stopped_at: null,
    });
    const status = await cli(f, 'status', '--json');
    expect(status.code, status.stderr).toBe(0);
    const s = JSON.parse(status.stdout);
    expect(s.replication.daemon).toMatchObject({ pid, host: os.hostname(), stoppedAt: null });
    expect(s.replication.daemon.leaseHeld).toBe(true);
    const text = await cli(f, 'status');
    expect(text.stdout).toMatch(new RegExp(`daemon: pid ${pid} on ${os.hostname()}`));
    await eventually('the first daemon says CONVERGED', async () => JSON.parse((await cli(f, 'status', '--json')).stdout).replication.converged === true);

    // teardown names the daemon (its pid and host), not the walsender's backend pid.
    const td = await cli(f, 'teardown');
    expect(td.code).toBe(2);
    expect(td.stderr).toMatch(new RegExp(`pid ${pid} on ${os.hostname()}`));

    const res = await terminate(first.proc);
    expect(res.code, res.stderr.slice(-2000)).toBe(0);
    // Once the first has stopped the slot is free again.
    expect(await leaseBackend(db.pool, slotOf(f))).toBeNull();
    const again = await start(f);
    expect((await terminate(again.proc)).code).toBe(0);
  });

  it('the lease connection terminated: the daemon takes the lease again and goes on; if another run held the slot meanwhile it stops with exit 3 and writes no more state', async () => {
    const db = await newDb('lease_lost');
    const f = files(db.url);
    await setup(f);
    const d = await start(f);
    let backend = await leaseBackend(db.pool, slotOf(f));
    expect(backend).not.toBeNull();
    await eventually('the status row is written', async () => (await statusRow(db.pool, slotOf(f)))?.pid === d.proc.child.pid);
    // A lost session alone (a restart, a network cut): the lock is free and the row still names it.
    const from = d.proc.lines.length;
    await db.pool.query(`select pg_terminate_backend($1)`, [backend]);
    await d.proc.waitForLine(/is held again/, { fromIndex: from, timeoutMs: 20_000 });
    backend = await leaseBackend(db.pool, slotOf(f));
    expect(backend).not.toBeNull();
    // Another holder in between (simulated: the status row no longer names this daemon): never taken again.
    await db.pool.query(`update pgrekey.daemon set started_at = now() - interval '1 hour', pid = 1 where slot_name = $1`, [slotOf(f)]);
    await db.pool.query(`select pg_terminate_backend($1)`, [backend]);
    const t0 = Date.now();
    const res = await Promise.race([d.proc.exited, new Promise<null>((r) => setTimeout(() => r(null), 20_000))]);
    expect(res, 'the daemon kept running after losing its lease').not.toBeNull();
    expect(Date.now() - t0).toBeLessThan(10_000 + BOUND_MS + EXIT_SLACK_MS);
    expect(res!.code, res!.stderr.slice(-2000)).toBe(3);
    expect(res!.stderr).toMatch(/lease .*lost/i);
    const row = (await statusRow(db.pool, slotOf(f)))!;
    expect(row.pid).toBe(1); // it did not write over a possible successor's row
  });

  it('teardown --force ends the running daemon through its lease: it stops (exit 3) and does not recreate the slot', async () => {
    const db = await newDb('lease_teardown', 10);
    const f = files(db.url);
    await setup(f);
    const d = await start(f);
    const td = await cli(f, 'teardown', '--force');
    expect(td.code, td.stderr).toBe(0);
    expect(td.stdout).toMatch(/dropped replication slot/);
    expect(td.stderr).toMatch(/ended the lease session of the running pg-rekey run/);
    expect(td.stderr).toMatch(new RegExp(`"daemon":"pid ${d.proc.child.pid} on ${os.hostname()}`));
    const res = await Promise.race([d.proc.exited, new Promise<null>((r) => setTimeout(() => r(null), 15_000))]);
    expect(res, 'the daemon kept running after teardown --force').not.toBeNull();
    expect(res!.code, res!.stderr.slice(-2000)).toBe(3);
    expect(res!.stderr).toMatch(/LEASE LOST/);
    expect(res!.stderr).not.toMatch(/replication slot recreated/);
    const slots = await db.pool.query(`select count(*)::int as n from pg_replication_slots where slot_name = $1`, [slotOf(f)]);
    expect(slots.rows[0].n).toBe(0);
  });

  it('the HTTP port in use: exit 2 naming the port and daemon.http_port', async () => {
    const db = await newDb('lease_port', 10);
    const f = files(db.url);
    await setup(f);
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as net.AddressInfo).port;
    try {
      const r = await runCli(['run', ...f.args], { timeoutMs: 20_000, env: { PG_REKEY_DAEMON_HTTP_PORT: String(port) } });
      expect(r.code, r.stderr.slice(-2000)).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`port ${port}`));
      expect(r.stderr).toMatch(/daemon\.http_port/);
      expect(r.stderr).not.toMatch(/EADDRINUSE.*\n.*at /); // no stack trace
      expect(await leaseBackend(db.pool, slotOf(f))).toBeNull();
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});

describe('bounded shutdown', () => {
  it('SIGTERM while a catalog refresh waits for a lock: exits within daemon.shutdown_timeout', async () => {
    const db = await newDb('bound_catalog', 500, { partitioned: true });
    const f = files(db.url);
    await setup(f);
    const d = await start(f);
    const locker = await client(db.url);
    await locker.query('begin');
    // The periodic catalog check (every slot_check_interval, 1 s here) follows the partition tree
    // through pg_inherits (pg_partition_tree, or a recursive query of pg_inherits), which takes
    // ACCESS SHARE on it: it waits behind this lock. The stream's and the sweep's writes do not
    // read pg_inherits, and give up on a lock after sweep.lock_timeout anyway.
    await locker.query('lock table pg_catalog.pg_inherits in access exclusive mode');
    await eventually('a catalog refresh waits for the lock', async () => {
      const r = await db.pool.query(
        `select count(*)::int as n from pg_stat_activity
          where datname = current_database() and application_name like 'pg-rekey%' and wait_event_type = 'Lock'
            and (query like '%pg_partition_tree%' or query like '%pg_inherits%')`,
      );
      return r.rows[0].n > 0;
    });
    const res = await terminate(d.proc);
    await locker.query('rollback');
    expect(res.signal, `killed: did not exit within 20 s\n${res.stderr.slice(-2000)}`).toBeNull();
    expect(res.ms).toBeLessThan(BOUND_MS + EXIT_SLACK_MS);
    // Exit 0 when the batch, acknowledgement and checkpoint were drained and only read-only work
    // still waited, 3 if some of the drain waited too; either way the log names the refresh.
    expect([0, 3], res.stderr.slice(-2000)).toContain(res.code);
    expect(res.stderr).toMatch(/(drain complete; exiting without waiting any longer|shutdown did not finish within daemon\.shutdown_timeout) \(?[^"]*a catalog refresh/);
  });

  it.skipIf(!loopback())('SIGTERM during the stream\'s reconnect backoff: exits within daemon.shutdown_timeout', async () => {
    const db = await newDb('bound_backoff');
    const proxy = await startTcpProxy({ target: db.url });
    proxies.push(proxy);
    const f = files(proxy.urlFor(db.url));
    await setup(f, db.url);
    const d = await start(f);
    const from = d.proc.lines.length;
    // New connections are refused from now on; the open ones (pool, lease) go on working.
    proxy.setMode('reset');
    expect(proxy.cut('replication')).toBeGreaterThan(0);
    await d.proc.waitForLine((t) => /reconnecting to the replication slot/.test(t) && /"attempt":[3-9]/.test(t), { fromIndex: from, timeoutMs: 20_000 });
    const res = await terminate(d.proc);
    expect(res.signal, `killed: did not exit within 20 s\n${res.stderr.slice(-2000)}`).toBeNull();
    expect(res.ms).toBeLessThan(BOUND_MS + EXIT_SLACK_MS);
    expect(res.code, res.stderr.slice(-2000)).toBe(0);
    expect(res.stderr).toMatch(/"msg":"stopped"/);
  });

  it('SIGTERM while run waits to create its slot (an open transaction): exits within daemon.shutdown_timeout', async () => {
    const db = await newDb('bound_slotwait', 10);
    const f = files(db.url);
    await setup(f);
    await db.pool.query(`select pg_drop_replication_slot($1)`, [slotOf(f)]);
    // A transaction with an xid: creating a logical slot waits for it to end.
    const holder = await client(db.url);
    await holder.query('begin');
    await holder.query(`insert into incidents values (1000001, null)`);
    const p = spawnCli(['run', ...f.args]);
    procs.push(p);
    try {
      await p.waitForLine(/REPLICATION SLOT LOST OR MISSING/, { timeoutMs: 20_000 });
      await eventually('the slot creation waits', async () => {
        const r = await db.pool.query(
          `select count(*)::int as n from pg_stat_activity where datname = current_database() and query like '%pg_create_logical_replication_slot%' and state = 'active' and pid <> pg_backend_pid()`,
        );
        return r.rows[0].n > 0;
      });
      const res = await terminate(p);
      expect(res.signal, `killed: did not exit within 20 s\n${res.stderr.slice(-2000)}`).toBeNull();
      expect(res.ms).toBeLessThan(BOUND_MS + EXIT_SLACK_MS);
      // Nothing had started, so nothing was left to drain; the slot creation was left waiting.
      expect(res.code, res.stderr.slice(-2000)).toBe(0);
      expect(res.stderr).not.toMatch(/pg-rekey run started/);
      expect(res.stderr).toMatch(/drain complete; exiting without waiting any longer [^"]*slot creation/);
    } finally {
      await holder.query('rollback').catch(() => undefined);
    }
  });
});
