// `pg-rekey grants`: the SQL generated from the config and the catalog, applied with psql to a fresh
// database, lets `setup` pass as that role on the first try, and the role can rotate everything.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encryptValue } from '../../src/crypto/rewrite.js';
import { runCli, type CliResult } from '../support/cli.js';
import { adminUrl, createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, testRing, writeCliFiles } from '../support/fixtures.js';

let db: TestDatabase;
let role: string;
const PASSWORD = 'grants-test-password';
const output = (r: CliResult) => r.stdout + r.stderr;

function psql(url: string, file: string): { code: number; out: string } {
  try {
    return { code: 0, out: execFileSync('psql', ['-X', '-q', '-v', `pw=${PASSWORD}`, '-f', file, url], { encoding: 'utf8', stdio: 'pipe' }) };
  } catch (e) {
    const err = e as { status: number; stdout: string; stderr: string };
    return { code: err.status, out: `${err.stdout}${err.stderr}` };
  }
}

beforeAll(async () => {
  db = await createTestDatabase('grants');
  role = `rk_${db.name}`.slice(0, 60);
  const ring = await testRing();
  await db.pool.query(`
    create table incidents (id bigint primary key, title text, status text);
    create table calls (id bigint, at date, notes text, primary key (id, at)) partition by range (at);
    create table calls_2025 partition of calls for values from ('2025-01-01') to ('2026-01-01');
    create table calls_2026 partition of calls for values from ('2026-01-01') to ('2027-01-01');
    create table secrets (id bigint primary key, body text);
    alter table secrets enable row level security;
    create policy only_open on secrets using (false);
    create table payroll (id bigint primary key, salary text);`);
  const v1 = (i: number) => encryptValue(Buffer.from(`value ${i}`), 1, ring);
  await insertBatched(db.pool, 'incidents', ['id', 'title'], ['bigint', 'text'], Array.from({ length: 300 }, (_, i) => [i + 1, v1(i)]));
  await insertBatched(db.pool, 'calls', ['id', 'at', 'notes'], ['bigint', 'date', 'text'], Array.from({ length: 200 }, (_, i) => [i + 1, i % 2 ? '2025-06-01' : '2026-06-01', v1(i)]));
  await insertBatched(db.pool, 'secrets', ['id', 'body'], ['bigint', 'text'], Array.from({ length: 50 }, (_, i) => [i + 1, v1(i)]));
});

afterAll(async () => {
  await db.drop();
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  await admin.query(`drop role if exists ${admin.escapeIdentifier(role)}`).catch(() => undefined);
  await admin.end();
});

describe('pg-rekey grants', () => {
  it('the generated SQL, applied twice with psql, lets setup pass as that role on the first try, and the role rotates every table', async () => {
    const tables = [
      { name: 'incidents', columns: ['title'] },
      { name: 'calls', columns: ['notes'] },
      { name: 'secrets', columns: ['body'] },
    ];
    const admin = writeCliFiles({ databaseUrl: db.url, tables, replication: { slot: db.name, publication: 'pg_rekey' } });
    const grants = await runCli(['-c', admin.configPath, 'grants', '--role', role]);
    expect(grants.code, output(grants)).toBe(0);
    expect(grants.stdout).toMatch(/^\\set ON_ERROR_STOP on$/m);
    expect(grants.stdout).toContain(`grant update ("notes") on "public"."calls_2026" to "${role}";`);
    expect(grants.stdout).toContain(`alter role "${role}" bypassrls;`);
    expect(grants.stdout).not.toContain('payroll');
    const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-grants-')), 'grants.sql');
    writeFileSync(file, grants.stdout);
    for (const attempt of [1, 2]) {
      const applied = psql(db.url, file);
      expect(applied.code, `psql attempt ${attempt}: ${applied.out}`).toBe(0);
    }

    const url = new URL(db.url);
    url.username = role;
    url.password = PASSWORD;
    const worker = writeCliFiles({ databaseUrl: url.toString(), tables, replication: { slot: db.name, publication: 'pg_rekey' } });
    const cli = (...args: string[]) => runCli(['-c', worker.configPath, '--env-file', worker.envPath, ...args]);
    const setup = await cli('setup');
    expect(setup.code, output(setup)).toBe(0);
    expect(setup.stdout).toMatch(/publication pg_rekey: unchanged/);
    const backfill = await cli('backfill');
    expect(backfill.code, output(backfill)).toBe(0);
    const verify = await cli('verify');
    expect(verify.code, output(verify)).toBe(0);
    // Counted as the superuser: nothing of v1 left anywhere, the policy's table included.
    const left = await db.pool.query<{ n: number }>(
      `select (select count(*) from incidents where title like 'v1:%') + (select count(*) from calls where notes like 'v1:%') + (select count(*) from secrets where body like 'v1:%') as n`,
    );
    expect(Number(left.rows[0]!.n)).toBe(0);
    const teardown = await cli('teardown');
    expect(teardown.code, output(teardown)).toBe(0);
  });

  it('setup reports every problem in one pass: a missing SELECT and the publication this role may not create', async () => {
    await db.pool.query(`drop publication if exists pg_rekey`);
    await db.pool.query(`revoke select on incidents from ${role}`);
    const url = new URL(db.url);
    url.username = role;
    url.password = PASSWORD;
    const worker = writeCliFiles({ databaseUrl: url.toString(), tables: [{ name: 'incidents', columns: ['title'] }, { name: 'calls', columns: ['notes'] }], replication: { slot: `${db.name}_2`, publication: 'pg_rekey' } });
    const setup = await runCli(['-c', worker.configPath, '--env-file', worker.envPath, 'setup']);
    expect(setup.code, output(setup)).toBe(2);
    expect(setup.stderr).toMatch(/public\.incidents: this role lacks SELECT on the table/);
    // Judged in the same pass (it used to wait for the next attempt, once the tables all resolved).
    expect(setup.stderr).toMatch(/publication pg_rekey/i);
  });
});
