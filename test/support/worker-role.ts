// A least-privilege role for one test database, like the one sql/roles.sql (pg-rekey grants) makes:
// LOGIN REPLICATION, CONNECT, its own pgrekey schema; the test grants SELECT / UPDATE (columns) and
// creates the publication as the superuser. Roles are cluster-wide: each file names its own.
import type { TestDatabase } from './db.js';

export interface WorkerRole {
  name: string;
  /** The database URL as this role. */
  url: string;
  /** Drops what the role owns in the database (its state schema, its grants), the publication, and the role. */
  drop(): Promise<void>;
}

export async function createWorkerRole(db: TestDatabase, name: string, publication: string): Promise<WorkerRole> {
  await db.pool.query(`
    drop role if exists ${name};
    create role ${name} login replication password 'pw';
    grant connect on database "${db.name}" to ${name};
    create schema pgrekey authorization ${name};
  `);
  const url = new URL(db.url);
  url.username = name;
  url.password = 'pw';
  return {
    name,
    url: url.toString(),
    async drop() {
      await db.pool.query(`select pg_terminate_backend(pid) from pg_stat_activity where usename = $1`, [name]).catch(() => undefined);
      await db.pool
        .query(`drop publication if exists ${publication}; drop schema if exists pgrekey cascade; drop owned by ${name}; drop role if exists ${name}`)
        .catch((e) => console.log(`cleanup of ${name}: ${(e as Error).message}`));
    },
  };
}
