import type pg from 'pg';
import type { GlobalFlags } from '../config/load-config.js';
import { openContext } from '../context.js';
import { resolveTables, type TableInfo } from '../db/catalog.js';
import { displayName } from '../db/ident.js';
import { migrate } from '../db/migrate.js';
import { checkout } from '../db/connect.js';
import { readServerFacts, replicationProblems, serverProblems } from '../db/server-checks.js';
import { ConfigError, EXIT_OK } from '../errors.js';
import { ensureSegment, restartSegments } from '../state/segments.js';
import { createSlot, dropSlot, ensurePublication, logSlotWait, readSlot, slotUnusable } from '../replication/slot.js';

/**
 * Checks the server, the role and every configured table, reporting all
 * problems at once; then applies the state migrations, creates the
 * publication and the replication slot. Idempotent. The slot is created
 * before any sweep can start; whenever a slot is (re)created the sweep
 * starts over from block 0 (rule 6 in design.md).
 */
export async function setupCommand(flags: GlobalFlags): Promise<number> {
  const ctx = await openContext(flags);
  try {
    const log = ctx.log.child({ component: 'setup' });
    const { slot, publication } = ctx.config.replication;
    const facts = await readServerFacts(ctx.pool);
    const slotInfo = await readSlot(ctx.pool, slot);
    const problems = [...serverProblems(facts), ...replicationProblems(facts, slotInfo.exists)];
    if (slotInfo.exists && (slotInfo.plugin !== 'pgoutput' || slotInfo.database !== facts.database)) {
      problems.push(`a slot named ${slot} already exists for ${slotInfo.plugin} in database ${slotInfo.database}: choose another replication.slot in the config`);
    }
    let tables: TableInfo[] = [];
    try {
      tables = await resolveTables(ctx.pool, ctx.config.tables);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      problems.push(...e.problems);
    }
    problems.push(...(await publicationProblems(ctx.pool, publication, tables)));
    if (problems.length) {
      throw new ConfigError(`setup found ${problems.length} problem(s); nothing was changed`, 'fix each problem listed, then run `pg-rekey setup` again', problems);
    }
    const client = await checkout(ctx.pool);
    let applied: string[];
    try {
      applied = await migrate(client);
    } finally {
      client.release();
    }
    const pub = (await publicationMatches(ctx.pool, publication, tables)) ? 'unchanged' : await ensurePublication(ctx.pool, publication, tables);
    for (const t of tables) for (const leaf of t.leaves) await ensureSegment(ctx.pool, t.display, displayName(leaf));
    let slotLine = `replication slot ${slot} exists (confirmed ${slotInfo.confirmedFlushLsn})`;
    const unusable = slotInfo.exists ? slotUnusable(slotInfo) : null;
    if (!slotInfo.exists || unusable) {
      if (unusable) await dropSlot(ctx.pool, slot, unusable);
      const lsn = await createSlot(ctx.pool, slot, unusable ? 'recreated' : 'created', unusable, { onWait: logSlotWait(log, slot) });
      await restartSegments(ctx.pool);
      slotLine = `created replication slot ${slot} at ${lsn}; the sweep starts from block 0`;
      log.info({ slot, lsn }, 'replication slot created');
    }
    log.info({ applied, tables: tables.map((t) => t.display) }, 'setup complete');
    process.stdout.write(
      [
        `PostgreSQL ${facts.version}, wal_level=${facts.walLevel}, role ${facts.currentUser}`,
        applied.length ? `applied migrations: ${applied.join(', ')}` : 'state schema pgrekey is up to date',
        ...tables.map(
          (t) =>
            `table ${t.display}: columns ${t.config.columns.join(', ')}; row key ${t.keyColumns.join(', ')} (${t.keySource})` +
            (t.partitioned ? `; ${t.leaves.length} leaf partition(s)` : ''),
        ),
        `publication ${publication}: ${pub} (insert, update)`,
        slotLine,
        'setup complete; a replication slot retains WAL until `pg-rekey teardown`: keep `pg-rekey run` running',
      ].join('\n') + '\n',
    );
    return EXIT_OK;
  } finally {
    await ctx.close();
  }
}

async function publicationMatches(db: pg.Pool, name: string, tables: TableInfo[]): Promise<boolean> {
  const r = await db.query<{ oids: number[]; publish: string }>(
    `select array(select prrelid::int from pg_publication_rel where prpubid = p.oid order by 1) as oids,
            concat_ws(',', case when pubinsert then 'i' end, case when pubupdate then 'u' end, case when pubdelete then 'd' end, case when pubtruncate then 't' end) as publish
       from pg_publication p where pubname = $1 and not puballtables`,
    [name],
  );
  const row = r.rows[0];
  if (!row) return false;
  const want = tables.map((t) => t.oid).sort((a, b) => a - b);
  return row.publish === 'i,u' && JSON.stringify(row.oids) === JSON.stringify(want);
}

/** Creating or changing a publication needs ownership of the tables (or superuser). */
async function publicationProblems(db: pg.Pool, name: string, tables: TableInfo[]): Promise<string[]> {
  if (tables.length === 0 || (await publicationMatches(db, name, tables))) return [];
  const r = await db.query<{ relname: string; owner: string }>(
    `select c.oid::regclass::text as relname, pg_get_userbyid(c.relowner) as owner
       from pg_class c where c.oid = any($1::oid[]) and not pg_has_role(c.relowner, 'USAGE')`,
    [tables.map((t) => t.oid)],
  );
  return r.rows.map(
    (x) => `creating publication ${name} needs ownership of ${x.relname} (owned by ${x.owner}): run setup once as the owner or a superuser, or create it yourself: CREATE PUBLICATION ${name} FOR TABLE ... WITH (publish = 'insert, update') (see sql/roles.sql)`,
  );
}
