// setup is all or nothing (issue 8, item 6): every check before any change, the slot last,
// and what it waits for named (prepared transactions, a slot another setup is still creating).
//
// One cluster of this file's own: a prepared transaction or a half-created slot holds up every
// slot creation of the cluster, which would hang other test files' setup (and show up in our warnings).
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { spawnCli, runCli, type CliResult } from '../support/cli.js';
import { startCluster, type Cluster, type PgMajor } from '../support/cluster.js';
import { createIncidentsTable, writeCliFiles, type CliFiles } from '../support/fixtures.js';

let cluster: Cluster;
let admin: pg.Pool;
const pools: pg.Pool[] = [];

beforeAll(async () => {
  cluster = await startCluster(inject('pgMajor') as PgMajor);
  admin = pool(cluster.url);
  const mpt = (await admin.query<{ v: number }>(`select current_setting('max_prepared_transactions')::int as v`)).rows[0]!.v;
  // The prepared-transaction cases need it (test/support/cluster.ts launches with max_prepared_transactions=20).
  expect(mpt, 'max_prepared_transactions of the test cluster').toBeGreaterThan(0);
});

afterAll(async () => {
  // A prepared transaction outlives its session: a failed test must not leave one (it would hold up slot creation).
  if (admin) {
    for (const p of (await admin.query<{ gid: string; database: string }>(`select gid, database from pg_prepared_xacts`).catch(() => ({ rows: [] }))).rows) {
      const c = new pg.Client({ connectionString: urlOf(p.database) });
      await c.connect().then(() => c.query(`rollback prepared '${p.gid.replace(/'/g, "''")}'`)).catch(() => undefined);
      await c.end().catch(() => undefined);
    }
  }
  for (const p of pools) await p.end().catch(() => undefined);
  await cluster?.stop();
});

function pool(url: string): pg.Pool {
  const p = new pg.Pool({ connectionString: url, max: 4 });
  p.on('error', () => undefined);
  pools.push(p);
  return p;
}

function urlOf(database: string, user = 'postgres'): string {
  const u = new URL(cluster.url);
  u.pathname = `/${database}`;
  u.username = user;
  return u.toString();
}

const unique = (prefix: string) => `${prefix}_${randomBytes(3).toString('hex')}`;

async function database(prefix: string): Promise<{ name: string; pool: pg.Pool }> {
  const name = unique(prefix);
  await admin.query(`create database ${name}`);
  return { name, pool: pool(urlOf(name)) };
}

/** A login role with REPLICATION, no CREATE on any database, no superuser (roles are cluster-wide: unique names). */
async function role(prefix: string): Promise<string> {
  const name = unique(prefix);
  await admin.query(`create role ${name} login replication`);
  return name;
}

function files(url: string, tables: string[], slot: string, publication = 'rekey_pub'): CliFiles {
  return writeCliFiles({ databaseUrl: url, tables: tables.map((name) => ({ name, columns: ['title', 'raw_xml'] })), replication: { slot, publication } });
}

const setupArgs = (f: CliFiles) => ['-c', f.configPath, '--env-file', f.envPath, 'setup'];
const setup = (f: CliFiles): Promise<CliResult> => runCli(setupArgs(f));
const output = (r: CliResult) => r.stdout + r.stderr;
/** setup's own error report (error, problems, hint), without runtime warnings Node may print. */
const report = (r: CliResult) => r.stderr.split('\n').filter((l) => /^(error|hint): |^  - /.test(l)).join('\n');

/** What setup may have changed: the state schema and its tables, publications, the slot. */
async function leftovers(db: pg.Pool, slot: string) {
  const r = await db.query(
    `select to_regnamespace('pgrekey') is not null as schema,
            (select count(*)::int from pg_class where relnamespace = to_regnamespace('pgrekey')) as "stateRelations",
            (select coalesce(array_agg(pubname::text order by pubname), '{}') from pg_publication) as publications,
            exists (select from pg_replication_slots where slot_name = $1) as slot`,
    [slot],
  );
  return r.rows[0] as { schema: boolean; stateRelations: number; publications: string[]; slot: boolean };
}

/** The statements a refusal tells the publication's owner to run ("..., run ALTER ...; ALTER ...;"). */
function fixStatements(text: string): string[] {
  return [...text.matchAll(/run ((?:ALTER|CREATE) PUBLICATION [^\n]*;)\s*$/gm)].flatMap((m) => m[1]!.split(/;\s*/).filter(Boolean));
}

/** Prepares a transaction that wrote something (holds an xid with no session) in `db`; returns its gid. */
async function prepareTransaction(db: pg.Pool, gid: string): Promise<void> {
  await db.query(`create table if not exists prepared_scratch (x int)`);
  const c = await db.connect();
  try {
    await c.query('begin');
    await c.query(`insert into prepared_scratch values (1)`);
    await c.query(`prepare transaction '${gid}'`);
  } finally {
    c.release();
  }
}

async function finishPrepared(db: pg.Pool, gid: string): Promise<void> {
  await db.query(`rollback prepared '${gid}'`).catch((e: { code?: string }) => {
    if (e.code !== '42704') throw e; // already finished
  });
}

async function waitFor<T>(what: string, probe: () => Promise<T | null | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('setup checks everything before it changes anything', () => {
  it('a role without CREATE on the database: exit 2 naming the GRANT; no schema, migrations, publication or slot are left', async () => {
    const db = await database('nocreate');
    await createIncidentsTable(db.pool, 'incidents');
    const worker = await role('nocreate_w');
    // The worker owns the table (so creating the publication needs nothing but CREATE on the database).
    await db.pool.query(`alter table incidents owner to ${worker}`);
    const slot = unique('s_nocreate');
    const f = files(urlOf(db.name, worker), ['incidents'], slot);

    // No state schema yet: both the schema and the publication need CREATE on the database.
    const first = await setup(f);
    expect(first.code, output(first)).toBe(2);
    expect(first.stderr).toMatch(/setup found 2 problem\(s\); nothing was changed/);
    expect(first.stderr).toContain(`may not create the pgrekey schema: GRANT CREATE ON DATABASE ${db.name} TO ${worker}`);
    expect(first.stderr).toContain(`creating publication rekey_pub needs CREATE on database ${db.name}: GRANT CREATE ON DATABASE ${db.name} TO ${worker}`);
    expect(first.stderr).toContain(`CREATE PUBLICATION rekey_pub FOR TABLE public.incidents WITH (publish = 'insert, update')`);
    expect(report(first)).not.toContain('...');
    expect(await leftovers(db.pool, slot)).toEqual({ schema: false, stateRelations: 0, publications: [], slot: false });

    // The schema made for the worker (as sql/roles.sql does): the publication still needs CREATE on the
    // database. This was the half-done setup of issue 8 (migrations applied, then CREATE PUBLICATION failed).
    await db.pool.query(`create schema pgrekey authorization ${worker}`);
    const second = await setup(f);
    expect(second.code, output(second)).toBe(2);
    expect(second.stderr).toMatch(/setup found 1 problem\(s\); nothing was changed/);
    expect(second.stderr).toContain(`GRANT CREATE ON DATABASE ${db.name} TO ${worker}`);
    expect(await leftovers(db.pool, slot)).toEqual({ schema: true, stateRelations: 0, publications: [], slot: false });

    // The GRANT it names is the fix.
    await db.pool.query(`grant create on database ${db.name} to ${worker}`);
    const third = await setup(f);
    expect(third.code, output(third)).toBe(0);
    expect(third.stdout).toMatch(/applied migrations: 001_state\.sql/);
    expect(third.stdout).toMatch(/publication rekey_pub: created/);
    expect(third.stdout).toMatch(new RegExp(`created replication slot ${slot} at `));
    expect(await leftovers(db.pool, slot)).toMatchObject({ schema: true, publications: ['rekey_pub'], slot: true });

    // Idempotent: nothing to do the second time.
    const again = await setup(f);
    expect(again.code, output(again)).toBe(0);
    expect(again.stdout).toMatch(/state schema pgrekey is up to date/);
    expect(again.stdout).toMatch(/publication rekey_pub: unchanged \(insert, update of the configured tables\)/);
    expect(again.stdout).toMatch(new RegExp(`replication slot ${slot} exists \\(confirmed [0-9A-F]+/[0-9A-F]+\\)`));
  });

  describe('an existing publication that does not fit, made by another role', () => {
    let db: { name: string; pool: pg.Pool };
    let worker: string;
    let f: CliFiles;
    let slot: string;
    beforeAll(async () => {
      db = await database('pubcheck');
      await createIncidentsTable(db.pool, 'incidents');
      // A partitioned table: publish_via_partition_root = true would send its changes under "calls", not the leaves.
      await db.pool.query(`create table calls (id bigint primary key, title text, raw_xml text) partition by range (id);
        create table calls_1 partition of calls for values from (0) to (1000);
        create table calls_2 partition of calls for values from (1000) to (2000)`);
      worker = await role('pubcheck_w');
      // As sql/roles.sql: the state schema made for the worker, SELECT and column UPDATE, no ownership, no CREATE on the database.
      await db.pool.query(`create schema pgrekey authorization ${worker};
        grant select on incidents, calls to ${worker};
        grant update (title, raw_xml) on incidents, calls to ${worker}`);
      slot = unique('s_pubcheck');
      f = files(urlOf(db.name, worker), ['incidents', 'calls'], slot);
    });

    it('publish_via_partition_root = true: refused, nothing changed, the ALTER PUBLICATION named', async () => {
      await db.pool.query(`create publication rekey_pub for table incidents, calls with (publish = 'insert, update', publish_via_partition_root = true)`);
      try {
        const r = await setup(f);
        expect(r.code, output(r)).toBe(2);
        expect(r.stderr).toMatch(/setup found 1 problem\(s\); nothing was changed/);
        expect(r.stderr).toMatch(/publication rekey_pub has publish_via_partition_root = true: changes to partitions would arrive under the root table's name/);
        expect(r.stderr).toContain(`as its owner postgres or a superuser, run ALTER PUBLICATION rekey_pub SET (publish_via_partition_root = false);`);
        expect(report(r)).not.toContain('...');
        expect(await leftovers(db.pool, slot)).toEqual({ schema: true, stateRelations: 0, publications: ['rekey_pub'], slot: false });
        expect((await db.pool.query(`select pubviaroot from pg_publication where pubname = 'rekey_pub'`)).rows[0]).toEqual({ pubviaroot: true });
      } finally {
        await db.pool.query(`drop publication if exists rekey_pub`);
      }
    });

    it('a configured table not published, update not published: refused with the real table name; the printed statements fix it', async () => {
      await db.pool.query(`create publication rekey_pub for table incidents with (publish = 'insert')`);
      try {
        const r = await setup(f);
        expect(r.code, output(r)).toBe(2);
        expect(r.stderr).toMatch(/setup found 2 problem\(s\); nothing was changed/);
        expect(r.stderr).toMatch(/publication rekey_pub does not publish public\.calls \(configured; a partitioned table needs every leaf published\)/);
        expect(r.stderr).toContain(`run ALTER PUBLICATION rekey_pub ADD TABLE public.calls;`);
        expect(r.stderr).toMatch(/publication rekey_pub does not publish update \(publish = 'insert'\)/);
        expect(r.stderr).toContain(`run ALTER PUBLICATION rekey_pub SET (publish = 'insert, update');`);
        expect(report(r)).not.toContain('...');
        expect(await leftovers(db.pool, slot)).toEqual({ schema: true, stateRelations: 0, publications: ['rekey_pub'], slot: false });

        // The owner runs exactly what setup printed; then setup goes through and leaves the publication alone.
        const statements = fixStatements(r.stderr);
        expect(statements).toEqual([`ALTER PUBLICATION rekey_pub ADD TABLE public.calls`, `ALTER PUBLICATION rekey_pub SET (publish = 'insert, update')`]);
        for (const sql of statements) await db.pool.query(sql);
        const ok = await setup(f);
        expect(ok.code, output(ok)).toBe(0);
        expect(ok.stdout).toMatch(/publication rekey_pub: unchanged/);
        expect(ok.stdout).toMatch(new RegExp(`created replication slot ${slot}`));
      } finally {
        await db.pool.query(`select pg_drop_replication_slot($1) from pg_replication_slots where slot_name = $1`, [slot]);
        await db.pool.query(`drop publication if exists rekey_pub; drop schema pgrekey cascade; create schema pgrekey authorization ${worker}`);
      }
    });

    // Row filters arrive in PostgreSQL 15.
    it.skipIf((inject('pgMajor') as number) < 15)('PostgreSQL 15+: a row filter on a configured table is refused', async () => {
      await db.pool.query(`create publication rekey_pub for table incidents where (id > 100), calls with (publish = 'insert, update')`);
      try {
        const r = await setup(f);
        expect(r.code, output(r)).toBe(2);
        expect(r.stderr).toMatch(/publication rekey_pub publishes public\.incidents with a row filter/);
        expect(r.stderr).toContain(`run ALTER PUBLICATION rekey_pub DROP TABLE public.incidents; ALTER PUBLICATION rekey_pub ADD TABLE public.incidents;`);
        expect(await leftovers(db.pool, slot)).toEqual({ schema: true, stateRelations: 0, publications: ['rekey_pub'], slot: false });
      } finally {
        await db.pool.query(`drop publication if exists rekey_pub`);
      }
    });

    it('the owner of the publication and the tables: setup fixes it in the same transaction as the migrations', async () => {
      await db.pool.query(`create publication rekey_pub for table incidents with (publish = 'insert', publish_via_partition_root = true)`);
      const ownerSlot = unique('s_pubowner');
      try {
        const r = await setup(files(urlOf(db.name), ['incidents', 'calls'], ownerSlot));
        expect(r.code, output(r)).toBe(0);
        expect(r.stdout).toMatch(/publication rekey_pub: updated/);
        expect(r.stdout).toMatch(/fixed: publication rekey_pub does not publish public\.calls/);
        expect(r.stdout).toMatch(/fixed: publication rekey_pub does not publish update .*; it has publish_via_partition_root = true/);
        const pub = await db.pool.query(
          `select pubinsert, pubupdate, pubdelete, pubviaroot, array(select prrelid::regclass::text from pg_publication_rel where prpubid = p.oid order by 1) as tables
             from pg_publication p where pubname = 'rekey_pub'`,
        );
        expect(pub.rows[0]).toEqual({ pubinsert: true, pubupdate: true, pubdelete: false, pubviaroot: false, tables: ['calls', 'incidents'] });
      } finally {
        await db.pool.query(`select pg_drop_replication_slot($1) from pg_replication_slots where slot_name = $1`, [ownerSlot]);
        await db.pool.query(`drop publication if exists rekey_pub`);
      }
    });
  });
});

describe('setup says what the slot creation waits for', () => {
  it('names a prepared transaction (gid, database, age) and completes after ROLLBACK PREPARED', async () => {
    const db = await database('prepared');
    await createIncidentsTable(db.pool, 'incidents');
    const other = await database('prepared_app'); // prepared transactions block slot creation in every database
    const gid = unique('rekey-test-gid');
    const slot = unique('s_prepared');
    await prepareTransaction(other.pool, gid);
    try {
      const proc = spawnCli(setupArgs(files(urlOf(db.name), ['incidents'], slot)));
      const warning = (await proc.waitForLine(/creating the replication slot waits for/, { timeoutMs: 30_000 })).text;
      expect(warning).toContain(`prepared transaction '${gid}' in database ${other.name} (owner postgres, prepared `);
      expect(warning).toMatch(/prepared \d+s ago\)/);
      expect(warning).toContain(`COMMIT PREPARED '${gid}' or ROLLBACK PREPARED '${gid}'`);
      expect(proc.child.exitCode).toBeNull();
      // The migrations and the publication are committed before the slot is created (nothing waits inside a transaction).
      expect(await leftovers(db.pool, slot)).toMatchObject({ schema: true, publications: ['rekey_pub'], slot: true });
      await finishPrepared(other.pool, gid);
      const r = await proc.exited;
      expect(r.code, output(r)).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`created replication slot ${slot} at `));
    } finally {
      await finishPrepared(other.pool, gid);
    }
  });

  it('a slot another setup is still creating is never reported as ready: the second setup waits for it, naming that session', async () => {
    const db = await database('halfslot');
    await createIncidentsTable(db.pool, 'incidents');
    const slot = unique('s_half');
    const f = files(urlOf(db.name), ['incidents'], slot);
    const gid = unique('rekey-half-gid');
    await prepareTransaction(db.pool, gid);
    try {
      const first = spawnCli(setupArgs(f));
      await first.waitForLine(/creating the replication slot waits for/, { timeoutMs: 30_000 });
      // Inside pg_create_logical_replication_slot: listed, held by its creator, no confirmed_flush_lsn yet.
      const half = await waitFor('the half-created slot', async () =>
        (await db.pool.query<{ active_pid: number; confirmed: string | null }>(`select active_pid, confirmed_flush_lsn::text as confirmed from pg_replication_slots where slot_name = $1`, [slot])).rows[0],
      );
      expect(half.confirmed).toBeNull();
      expect(half.active_pid).toBeGreaterThan(0);

      const second = spawnCli(setupArgs(f));
      const line = (await second.waitForLine(/is being created by another session/, { timeoutMs: 30_000 })).text;
      expect(line).toContain(`replication slot ${slot} is being created by another session (pid ${half.active_pid}, application pg-rekey`);
      expect(line).toContain(`prepared transaction '${gid}'`);
      expect(second.child.exitCode).toBeNull();
      expect(first.child.exitCode).toBeNull();

      await finishPrepared(db.pool, gid);
      const [a, b] = await Promise.all([first.exited, second.exited]);
      expect(a.code, output(a)).toBe(0);
      expect(a.stdout).toMatch(new RegExp(`created replication slot ${slot} at `));
      expect(b.code, output(b)).toBe(0);
      expect(b.stdout).not.toMatch(/confirmed null/);
      expect(b.stdout).toMatch(new RegExp(`replication slot ${slot} was being created by another session \\(pid ${half.active_pid}\\); it is ready now \\(confirmed [0-9A-F]+/[0-9A-F]+\\)`));
      const events = await db.pool.query(`select event from pgrekey.slot_event where slot_name = $1`, [slot]);
      expect(events.rows).toEqual([{ event: 'created' }]);
    } finally {
      await finishPrepared(db.pool, gid);
    }
  });
});
