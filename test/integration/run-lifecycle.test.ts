// `pg-rekey run` from the operator's side: convergence exit codes, signals, status, teardown.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, testRing } from '../support/fixtures.js';
import { cli, countPrefix, startDaemon, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { spawnCli } from '../support/cli.js';
import { encryptValue } from '../../src/crypto/rewrite.js';

let db: TestDatabase;
let files: DaemonFiles;

beforeAll(async () => {
  db = await createTestDatabase('lifecycle');
  const ring = await testRing();
  await db.pool.query(`create table incidents (id bigint primary key, title text)`);
  const rows: unknown[][] = [];
  for (let id = 1; id <= 3000; id++) rows.push([id, encryptValue(Buffer.from(`incident ${id}`), id % 3 === 0 ? 2 : 1, ring)]);
  await insertBatched(db.pool, 'incidents', ['id', 'title'], ['bigint', 'text'], rows);
  files = writeDaemonFiles(db.url, [{ name: 'incidents', columns: ['title'] }]);
  expect((await cli(files, 'setup')).code).toBe(0);
});

afterAll(async () => {
  await db.drop();
});

describe('run lifecycle', () => {
  it('teardown refuses while not converged and says why', async () => {
    const r = await cli(files, 'teardown');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/refusing to tear down: \d+ value\(s\) are not at the target/);
    expect(r.stderr).toMatch(/--force/);
    expect((await db.pool.query(`select count(*)::int as n from pg_replication_slots where database = current_database()`)).rows[0].n).toBe(1);
  });

  it('SIGTERM drains and exits 0 within a few seconds', async () => {
    const d = await startDaemon(files);
    const t0 = Date.now();
    const res = await d.proc.stop('SIGTERM', 10_000);
    expect(res.code).toBe(0);
    expect(Date.now() - t0).toBeLessThan(8_000);
    expect(res.stderr).toMatch(/"msg":"stopped"/);
    expect(res.stderr).not.toMatch(/Cannot use a pool after calling end/);
    const status = await cli(files, 'status');
    expect(status.stdout).toMatch(/daemon: STOPPED cleanly at /);
    expect(status.stdout).toMatch(/ run +\S+ +interrupted/); // the run history has it
  });

  it('status shows the slot, lag and the daemon', async () => {
    const r = await cli(files, 'status', '--json');
    expect(r.code, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s.replication.info.exists).toBe(true);
    expect(typeof s.replication.info.lagBytes).toBe('number');
    expect(typeof s.replication.info.retainedBytes).toBe('number');
    expect(s.replication.daemon.pid).toBeGreaterThan(0);
    expect(s.replication.slotRecreations).toBe(0);
    const text = await cli(files, 'status');
    expect(text.stdout).toMatch(/replication slot s_lifecycle_\w+: inactive/);
  });

  it('--exit-when-converged exits 0 once converged; verify agrees; metrics were exposed', async () => {
    const proc = spawnCli(['run', '--exit-when-converged', ...files.args]);
    const started = await proc.waitForLine(/pg-rekey run started/);
    const http = JSON.parse(started.text).http as string;
    const metrics = await (await fetch(`${http}/metrics`)).text();
    for (const name of ['pg_rekey_rewrites_total', 'pg_rekey_sweep_blocks_done', 'pg_rekey_stream_lag_bytes', 'pg_rekey_stream_applied_lsn', 'pg_rekey_remaining_values', 'pg_rekey_quarantined_total']) {
      expect(metrics).toContain(name);
    }
    const res = await proc.exited;
    expect(res.code, res.stderr.slice(-2000)).toBe(0);
    expect(res.stderr).toMatch(/CONVERGED/);
    expect(await countPrefix(db.pool, 'incidents', 'title', 'v1:')).toBe(0);
    expect((await cli(files, 'verify')).code).toBe(0);
    const status = JSON.parse((await cli(files, 'status', '--json')).stdout);
    expect(status.replication.converged).toBe(true);
  });

  it('--exit-when-converged exits 1 when only quarantined values remain', async () => {
    await db.pool.query(`insert into incidents values (900001, 'v1:AAAA'), (900002, 'v7:AAAA')`);
    const res = await spawnCli(['run', '--exit-when-converged', ...files.args]).exited;
    expect(res.code, res.stderr.slice(-2000)).toBe(1);
    expect(res.stderr).toMatch(/quarantined values remain/);
    const q = await db.pool.query(`select reason from pgrekey.quarantine order by reason`);
    expect(q.rows.map((r) => r.reason)).toEqual(['too-short', 'unknown-version']);
    expect((await db.pool.query(`select title from incidents where id = 900001`)).rows[0].title).toBe('v1:AAAA');
  });

  it('teardown --force drops slot and publication; --drop-state the schema; no slot is left', async () => {
    const r = await cli(files, 'teardown', '--force', '--drop-state');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/dropped replication slot/);
    const left = await db.pool.query(`select (select count(*)::int from pg_replication_slots where database = current_database()) as slots,
      (select count(*)::int from pg_publication) as pubs, to_regnamespace('pgrekey') is null as schema_gone`);
    expect(left.rows[0]).toEqual({ slots: 0, pubs: 0, schema_gone: true });
    // The quarantined v1/v7 values still count as not converged: a plain teardown keeps refusing.
    expect((await cli(files, 'teardown')).code).toBe(2);
    const again = await cli(files, 'teardown', '--force');
    expect(again.code, again.stderr).toBe(0); // idempotent
    expect(again.stdout).toMatch(/no replication slot .* \(already gone\)/);
  });
});
