import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';

describe('integration harness', () => {
  let db: TestDatabase;

  beforeAll(async () => {
    db = await createTestDatabase('harness');
  });

  afterAll(async () => {
    await db?.drop();
  });

  it('runs with wal_level=logical on the requested major', async () => {
    const wal = await db.pool.query<{ wal_level: string }>('show wal_level');
    expect(wal.rows[0]?.wal_level).toBe('logical');
    const version = await db.pool.query<{ v: string }>(`select current_setting('server_version_num') as v`);
    expect(Math.floor(Number(version.rows[0]?.v) / 10_000)).toBe(inject('pgMajor'));
  });

  it('creates and drops a pgoutput logical slot in the test database', async () => {
    const slot = `${db.name}_slot`;
    await db.pool.query(`select pg_create_logical_replication_slot($1, 'pgoutput')`, [slot]);
    const { rows } = await db.pool.query<{ database: string; plugin: string }>(
      'select database, plugin from pg_replication_slots where slot_name = $1',
      [slot],
    );
    expect(rows).toEqual([{ database: db.name, plugin: 'pgoutput' }]);
    await db.pool.query('select pg_drop_replication_slot($1)', [slot]);
  });

  it('plans a TID range scan for a ctid range', async () => {
    await db.pool.query('create table t (id int primary key, payload text)');
    await db.pool.query(`insert into t select g, repeat('x', 100) from generate_series(1, 2000) g`);
    await db.pool.query('analyze t');
    const { rows } = await db.pool.query<{ 'QUERY PLAN': string }>(
      `explain select * from t where ctid >= '(0,0)'::tid and ctid < '(10,0)'::tid`,
    );
    expect(rows.map((r) => r['QUERY PLAN']).join('\n')).toContain('Tid Range Scan');
  });
});
