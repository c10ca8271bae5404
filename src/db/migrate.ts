import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';

/** sql/NNN_name.sql, shipped next to dist/ in the package. */
const SQL_DIR = fileURLToPath(new URL('../../sql/', import.meta.url));
// Not "pg_rekey": PostgreSQL reserves the pg_ prefix for system schemas
// (CREATE SCHEMA pg_rekey fails with "unacceptable schema name").
export const STATE_SCHEMA = 'pgrekey';
// Any constant works; it only has to be the same for every pg-rekey process.
const MIGRATION_LOCK = 0x70677265; // "pgre"

export interface Migration {
  id: number;
  name: string;
  sql: string;
}

export function listMigrations(dir = SQL_DIR): Migration[] {
  return readdirSync(dir)
    .filter((f) => /^\d{3}_[a-z0-9_]+\.sql$/.test(f))
    .sort()
    .map((f) => ({ id: Number(f.slice(0, 3)), name: f, sql: readFileSync(`${dir}/${f}`, 'utf8') }));
}

export interface MigrateOptions {
  /**
   * The caller has opened a transaction on `client` and commits or rolls it
   * back: every migration runs in it (setup applies them together with the
   * publication, all or nothing), under a transaction-level advisory lock.
   * Migrations must therefore not need to run outside a transaction block
   * (no CREATE INDEX CONCURRENTLY).
   */
  inTransaction?: boolean;
}

/** Takes the lock that serializes migrations (and setup), until the end of the caller's transaction. */
export async function lockMigrations(client: pg.ClientBase): Promise<void> {
  await client.query('select pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
}

/** The migrations not applied yet (all of them when the state schema or its migration table is missing). */
export async function pendingMigrations(client: pg.ClientBase | pg.Pool): Promise<Migration[]> {
  const r = await client.query<{ ok: boolean }>(`select to_regclass($1) is not null as ok`, [`${STATE_SCHEMA}.migration`]);
  const done = r.rows[0]?.ok ? new Set((await client.query<{ id: number }>(`select id from ${STATE_SCHEMA}.migration`)).rows.map((x) => x.id)) : new Set<number>();
  return listMigrations().filter((m) => !done.has(m.id));
}

/**
 * Applies pending migrations under an advisory lock so two `setup` runs cannot
 * race: each in its own transaction, or all in the caller's (see
 * MigrateOptions). Returns the names applied (empty when up to date: setup is
 * idempotent).
 */
export async function migrate(client: pg.ClientBase, opts: MigrateOptions = {}): Promise<string[]> {
  const applied: string[] = [];
  if (opts.inTransaction) await lockMigrations(client);
  else await client.query('select pg_advisory_lock($1)', [MIGRATION_LOCK]);
  try {
    // CREATE SCHEMA IF NOT EXISTS still needs CREATE on the database; a least-privilege
    // role gets the schema made for it (sql/roles.sql), so only create when missing.
    const exists = (await client.query(`select to_regnamespace($1) is not null as e`, [STATE_SCHEMA])).rows[0].e as boolean;
    if (!exists) await client.query(`create schema ${STATE_SCHEMA}`);
    await client.query(
      `create table if not exists ${STATE_SCHEMA}.migration (id integer primary key, name text not null, applied_at timestamptz not null default now())`,
    );
    const done = new Set(
      (await client.query<{ id: number }>(`select id from ${STATE_SCHEMA}.migration`)).rows.map((r) => r.id),
    );
    for (const m of listMigrations()) {
      if (done.has(m.id)) continue;
      if (opts.inTransaction) {
        await client.query(m.sql);
        await client.query(`insert into ${STATE_SCHEMA}.migration (id, name) values ($1, $2)`, [m.id, m.name]);
        applied.push(m.name);
        continue;
      }
      await client.query('begin');
      try {
        await client.query(m.sql);
        await client.query(`insert into ${STATE_SCHEMA}.migration (id, name) values ($1, $2)`, [m.id, m.name]);
        await client.query('commit');
      } catch (e) {
        await client.query('rollback');
        throw e;
      }
      applied.push(m.name);
    }
  } finally {
    if (!opts.inTransaction) await client.query('select pg_advisory_unlock($1)', [MIGRATION_LOCK]);
  }
  return applied;
}

/** True when setup has been run (the state schema is there and current). */
export async function stateIsCurrent(client: pg.ClientBase | pg.Pool): Promise<boolean> {
  const r = await client.query<{ ok: boolean }>(`select to_regclass($1) is not null as ok`, [`${STATE_SCHEMA}.migration`]);
  if (!r.rows[0]?.ok) return false;
  const ids = (await client.query<{ id: number }>(`select id from ${STATE_SCHEMA}.migration`)).rows.map((x) => x.id);
  return listMigrations().every((m) => ids.includes(m.id));
}
