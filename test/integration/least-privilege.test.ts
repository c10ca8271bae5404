// The whole flow as the role from sql/roles.sql, with exactly the privileges it grants.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, testRing } from '../support/fixtures.js';
import { cli, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { spawnCli } from '../support/cli.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import pg from 'pg';

let db: TestDatabase;
let files: DaemonFiles;
let worker: pg.Pool;
const PASSWORD = 'rekey-test-password';

/** Runs sql/roles.sql with psql, as its header says, as the superuser of the test cluster. */
function applyRolesSql(url: string): void {
  execFileSync('psql', ['-X', '-q', '-v', `pw=${PASSWORD}`, '-f', fileURLToPath(new URL('../../sql/roles.sql', import.meta.url)), url], { stdio: 'pipe' });
}

beforeAll(async () => {
  db = await createTestDatabase('leastpriv');
  const ring = await testRing();
  await db.pool.query(`
    create table incidents (id bigint primary key, title text, status text not null default 'open');
    create table incident_communications (id bigint primary key, incident_id bigint, body text);
    create table cfs_incidents (id bigint primary key, raw_xml text);
    create table payroll (id bigint primary key, salary text);`);
  const rows = (n: number, label: string) => Array.from({ length: n }, (_, i) => [i + 1, encryptValue(Buffer.from(`${label} ${i + 1}`), 1, ring)]);
  await insertBatched(db.pool, 'incidents', ['id', 'title'], ['bigint', 'text'], rows(2000, 'incident'));
  await insertBatched(db.pool, 'incident_communications', ['id', 'body'], ['bigint', 'text'], rows(1000, 'message'));
  await insertBatched(db.pool, 'cfs_incidents', ['id', 'raw_xml'], ['bigint', 'text'], rows(500, '<call/>'));
  await db.pool.query(`drop role if exists rekey_worker`);
  applyRolesSql(db.url);
  const url = new URL(db.url);
  url.username = 'rekey_worker';
  url.password = PASSWORD;
  worker = new pg.Pool({ connectionString: url.toString(), max: 2 });
  worker.on('error', () => undefined);
  files = writeDaemonFiles(url.toString(), [
    { name: 'incidents', columns: ['title'] },
    { name: 'incident_communications', columns: ['body'] },
    { name: 'cfs_incidents', columns: ['raw_xml'] },
  ], { replication: { publication: 'pg_rekey' } });
});

afterAll(async () => {
  await worker?.end();
  await db.pool.query(`drop publication if exists pg_rekey`).catch(() => undefined);
  await db.pool.query(`drop schema if exists pgrekey cascade`).catch(() => undefined);
  await db.drop();
  // Roles are cluster-wide: remove this one once its database is gone.
  const admin = new pg.Client({ connectionString: db.url.replace(/\/[^/]+$/, '/postgres') });
  await admin.connect();
  await admin.query(`drop role if exists rekey_worker`).catch(() => undefined);
  await admin.end();
});

describe('least privilege (sql/roles.sql)', () => {
  it('the role is not a superuser and cannot do more than pg-rekey needs', async () => {
    const me = (await worker.query(`select rolsuper, rolreplication from pg_roles where rolname = current_user`)).rows[0];
    expect(me).toEqual({ rolsuper: false, rolreplication: true });
    await expect(worker.query(`insert into incidents (id) values (999999)`)).rejects.toThrow(/permission denied/);
    await expect(worker.query(`update incidents set status = 'x' where id = 1`)).rejects.toThrow(/permission denied/);
    await expect(worker.query(`delete from incidents where id = 1`)).rejects.toThrow(/permission denied/);
    await expect(worker.query(`select * from payroll`)).rejects.toThrow(/permission denied/);
    // Before PostgreSQL 15 every role may create in schema public (see the note in sql/roles.sql).
    if (inject('pgMajor') >= 15) await expect(worker.query(`create table public.mine (x int)`)).rejects.toThrow(/permission denied/);
  });

  it('setup, run (with an old app still writing v1), verify, status, pause/resume/set, teardown', async () => {
    const setup = await cli(files, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
    expect(setup.stdout).toMatch(/publication pg_rekey: unchanged/); // made by the owner in roles.sql
    const run = spawnCli(['run', '--exit-when-converged', ...files.args]);
    await run.waitForLine(/"msg":"streaming"/);
    const ring = await testRing();
    await db.pool.query(`insert into incidents (id, title) values (5000, $1)`, [encryptValue(Buffer.from('old app write'), 1, ring)]);
    const res = await run.exited;
    expect(res.code, res.stderr.slice(-1500)).toBe(0);
    expect((await cli(files, 'verify')).code).toBe(0);
    expect((await cli(files, 'status', '--json')).code).toBe(0);
    for (const args of [['pause'], ['resume'], ['set', 'nice-ratio=1'], ['set', '--reset']]) expect((await cli(files, ...args)).code, args.join(' ')).toBe(0);
    const down = await cli(files, 'teardown');
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toMatch(/dropped replication slot/);
    expect(down.stdout).toMatch(/kept publication pg_rekey: it is owned by postgres/);
    const left = await db.pool.query(`select count(*)::int as n from pg_replication_slots where database = current_database()`);
    expect(left.rows[0].n).toBe(0);
  });
});
