// Per-test databases on the cluster provided by global-setup.ts.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { inject } from 'vitest';

export interface TestDatabase {
  name: string;
  url: string;
  pool: pg.Pool;
  drop(): Promise<void>;
}

export function adminUrl(): string {
  return inject('pgAdminUrl');
}

export function databaseUrl(name: string): string {
  const url = new URL(adminUrl());
  url.pathname = `/${name}`;
  return url.toString();
}

async function withAdmin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: adminUrl() });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

export async function createTestDatabase(prefix: string): Promise<TestDatabase> {
  const clean = prefix.toLowerCase().replace(/[^a-z0-9_]/g, '_').slice(0, 40);
  const name = `${clean}_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
  await withAdmin(async (c) => {
    await c.query(`CREATE DATABASE ${c.escapeIdentifier(name)}`);
    // Backstop: a test that fails while holding a transaction open (a row locker, a writer) must not
    // keep an xid alive for long, because creating a logical slot waits for every xid in the cluster:
    // every other test file's `setup` would hang behind it.
    await c.query(`ALTER DATABASE ${c.escapeIdentifier(name)} SET idle_in_transaction_session_timeout = '60s'`);
  });
  const pool = new pg.Pool({ connectionString: databaseUrl(name), max: 5 });
  // Idle clients are terminated when a test restarts or drops things; without a listener that kills the worker.
  pool.on('error', () => undefined);
  return {
    name,
    url: databaseUrl(name),
    pool,
    async drop() {
      // Sessions first: pool.end() waits for clients a failed test never released (and their open transactions).
      await dropDatabase(name);
      await Promise.race([pool.end(), new Promise((r) => setTimeout(r, 5_000).unref())]);
    },
  };
}

// A logical slot blocks DROP DATABASE; an active one must lose its walsender first, which exits asynchronously.
async function dropSlots(client: pg.Client, name: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const { rows } = await client.query<{ slot_name: string; active_pid: number | null }>(
      'select slot_name, active_pid from pg_replication_slots where database = $1',
      [name],
    );
    if (rows.length === 0) return;
    for (const slot of rows) {
      if (slot.active_pid !== null) {
        await client.query('select pg_terminate_backend($1)', [slot.active_pid]);
        continue;
      }
      try {
        await client.query('select pg_drop_replication_slot($1)', [slot.slot_name]);
      } catch (err) {
        // 55006 object_in_use: a client re-acquired the slot; 42704 undefined_object: already dropped.
        const code = (err as { code?: string }).code;
        if (code !== '55006' && code !== '42704') throw err;
      }
    }
    if (Date.now() > deadline) throw new Error(`could not drop replication slots of database ${name}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function dropDatabase(name: string): Promise<void> {
  await withAdmin(async (client) => {
    await client.query('select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()', [
      name,
    ]);
    await dropSlots(client, name);
    // Replication origins are cluster-wide too (and each used one holds a server slot until dropped):
    // those of this database's slot (test/support/daemon.ts names it).
    const slot = `s_${name}`.slice(0, 63);
    await client
      .query(`select pg_replication_origin_drop(roname) from pg_replication_origin where roname = any($1::text[])`, [[`pgrekey_${slot}_sweep`, `pgrekey_${slot}_stream`]])
      .catch(() => undefined);
    // WITH (FORCE) (PostgreSQL 13+) also terminates sessions that connected after the terminate above.
    await client.query(`DROP DATABASE IF EXISTS ${client.escapeIdentifier(name)} WITH (FORCE)`);
  });
}

/** The database's URL as another role (one a test created with a password). */
export function urlAs(url: string, user: string, password: string): string {
  const u = new URL(url);
  u.username = user;
  u.password = password;
  return u.toString();
}

/** Drops a test's database, then its role (roles are cluster-wide: only once its database is gone). */
export async function dropDatabaseAndRole(db: TestDatabase, role: string): Promise<void> {
  await db.drop();
  await withAdmin(async (c) => {
    await c.query(`drop role if exists ${c.escapeIdentifier(role)}`).catch(() => undefined);
  });
}
