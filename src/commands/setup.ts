import type pg from 'pg';
import type { GlobalFlags } from '../config/load-config.js';
import { openContext } from '../context.js';
import { rowSecurityProblems } from '../db/row-security.js';
import { unloggedProblems } from '../db/unlogged.js';
import { triggerProblems } from '../db/triggers.js';
import { decisionReport } from '../db/trigger-decision.js';
import { constraintNotes } from '../db/constraints.js';
import { inspectTables, type resolveTables, type TableInfo } from '../db/catalog.js';
import { displayName } from '../db/ident.js';
import { planPublication, type PublicationPlan } from '../replication/publication-plan.js';
import { migrate, lockMigrations, pendingMigrations } from '../db/migrate.js';
import { checkout } from '../db/connect.js';
import { readServerFacts, replicationProblems, serverProblems, stateProblems, type ServerFacts } from '../db/server-checks.js';
import { ConfigError, EXIT_OK } from '../errors.js';
import type { Logger } from '../logger.js';
import { ensureSegment, restartSegments } from '../state/segments.js';
import { originProblems, setupOrigins } from '../replication/origin.js';
import { createSlot, dropSlot, logSlotCreationWait, logSlotWait, readSlot, slotBeingCreated, slotUnusable, waitForSlotCreation, type SlotInfo } from '../replication/slot.js';

/**
 * All or nothing, in three steps:
 * 1. checks, every one before any change, reporting all problems at once
 *    (server, role, state schema, every configured table, the publication
 *    as it is or as it would be created, the slot name); a problem changes
 *    nothing and exits 2, each problem with the statement that fixes it;
 * 2. in one transaction: the state migrations, the publication, the sweep
 *    segments (a failure rolls all of it back);
 * 3. last, the replication slot (it cannot be created in a transaction that
 *    wrote anything, and it waits for every transaction in the cluster).
 * Idempotent. Whenever a slot is (re)created the sweep starts over from
 * block 0 (rule 6 in design.md).
 */
export async function setupCommand(flags: GlobalFlags): Promise<number> {
  const ctx = await openContext(flags);
  try {
    const log = ctx.log.child({ component: 'setup' });
    const { slot, publication } = ctx.config.replication;
    const client = await checkout(ctx.pool);
    let facts: ServerFacts;
    let tables: TableInfo[];
    let applied: string[];
    let pub: PublicationPlan;
    let notes: string[];
    try {
      await client.query('begin');
      try {
        // Serializes setups (and migrations): a second setup checks what the first one made.
        await lockMigrations(client);
        ({ facts, tables, pub, notes } = await check(client, ctx.config.tables, slot, publication, ctx.config.replication.origin));
        applied = await migrate(client, { inTransaction: true });
        for (const sql of pub.statements) await client.query(sql);
        for (const t of tables) for (const leaf of t.leaves) await ensureSegment(client, t.display, displayName(leaf));
        await client.query('commit');
      } catch (e) {
        await client.query('rollback').catch(() => undefined);
        throw e;
      }
    } finally {
      client.release();
    }
    if (pub.changes.length) log.info({ publication, changes: pub.changes }, `publication ${publication} ${pub.state}`);
    const slotLine = await readySlot(ctx.pool, log, slot, facts.database);
    const originLine = await setupOrigins(ctx.pool, ctx.config.replication.origin, slot, log);
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
        ...notes,
        `publication ${publication}: ${pub.state} (${pub.summary})`,
        ...pub.changes.map((c) => `  ${c}`),
        slotLine,
        originLine,
        'setup complete; a replication slot retains WAL until `pg-rekey teardown`: keep `pg-rekey run` running',
      ].join('\n') + '\n',
    );
    return EXIT_OK;
  } finally {
    await ctx.close();
  }
}

/** Step 1: every check, read-only; throws one ConfigError listing every problem. */
async function check(
  db: pg.ClientBase,
  configured: Parameters<typeof resolveTables>[1],
  slot: string,
  publication: string,
  origin: 'auto' | 'on' | 'off' = 'auto',
): Promise<{ facts: ServerFacts; tables: TableInfo[]; pub: PublicationPlan; notes: string[] }> {
  const facts = await readServerFacts(db);
  const slotInfo = await readSlot(db, slot);
  const problems = [...serverProblems(facts), ...replicationProblems(facts, slotInfo.exists)];
  if (slotInfo.exists && (slotInfo.plugin !== 'pgoutput' || slotInfo.database !== facts.database)) {
    problems.push(`a slot named ${slot} already exists for ${slotInfo.plugin ?? 'physical replication'} in database ${slotInfo.database ?? '-'}: choose another replication.slot in the config`);
  }
  problems.push(...stateProblems(facts, (await pendingMigrations(db)).map((m) => m.name)));
  // Every problem in one pass: the checks below judge the tables that resolved, whatever is wrong with the others.
  const inspected = await inspectTables(db, configured);
  const tables: TableInfo[] = inspected.tables;
  problems.push(...inspected.problems);
  const tablesOk = tables.length > 0;
  // Row security that would hide rows from this role: every count and rewrite would see part of a table.
  if (tablesOk) problems.push(...(await rowSecurityProblems(db, tables)).map((h) => h.problem));
  // Logical decoding never sees an UNLOGGED relation: its writes would never be streamed.
  if (tablesOk) problems.push(...unloggedProblems(tables));
  // Triggers a rewrite would fire are a decision of the config (triggers: fire | skip), and skip needs a privilege.
  const triggers = tablesOk ? await triggerProblems(db, tables) : { problems: [], found: [] };
  problems.push(...triggers.problems);
  // The publication is judged against the tables that resolved (the others are problems above already).
  const pub = tablesOk && tables.length ? await planPublication(db, publication, tables, facts) : { state: 'unchanged' as const, statements: [], problems: [], changes: [], summary: '' };
  problems.push(...pub.problems);
  problems.push(...(await originProblems(db, origin, slot)));
  if (problems.length) {
    throw new ConfigError(`setup found ${problems.length} problem(s); nothing was changed`, 'fix each problem listed, then run `pg-rekey setup` again', problems);
  }
  // Constraints that can reject a rewrite: warnings (such a row is quarantined), said before anything runs.
  const constraints = (await constraintNotes(db, tables)).map((c) => `warning: ${c.note}`);
  return { facts, tables, pub, notes: [...decisionReport(triggers.found), ...constraints] };
}

/**
 * Step 3: the slot exists and is fully created. A slot another session is
 * still creating (another setup, or run recreating it) is waited for, never
 * reported as ready; one it failed to create (gone after the wait) is created.
 */
async function readySlot(pool: pg.Pool, log: Logger, slot: string, database: string): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    let info: SlotInfo = await readSlot(pool, slot);
    let creator: number | null = null;
    if (slotBeingCreated(info)) {
      creator = info.activePid;
      info = await waitForSlotCreation(pool, slot, { onWait: logSlotCreationWait(log, slot) });
    }
    let reason: string | null = null;
    if (info.exists) {
      if (info.plugin !== 'pgoutput' || info.database !== database) {
        throw new ConfigError(`a slot named ${slot} was created meanwhile for ${info.plugin ?? 'physical replication'} in database ${info.database ?? '-'}`, 'choose another replication.slot in the config');
      }
      reason = slotUnusable(info);
      if (!reason) {
        return creator !== null
          ? `replication slot ${slot} was being created by another session (pid ${creator}); it is ready now (confirmed ${info.confirmedFlushLsn})`
          : `replication slot ${slot} exists (confirmed ${info.confirmedFlushLsn})`;
      }
      await dropSlot(pool, slot, reason);
    }
    try {
      const lsn = await createSlot(pool, slot, reason ? 'recreated' : 'created', reason, { onWait: logSlotWait(log, slot) });
      await restartSegments(pool);
      log.info({ slot, lsn }, 'replication slot created');
      return `created replication slot ${slot} at ${lsn}; the sweep starts from block 0`;
    } catch (e) {
      // Another session began creating it between our look and our create: wait for that one instead.
      if ((e as { code?: string }).code === '42710' && attempt < 5) continue;
      throw e;
    }
  }
}
