import type pg from 'pg';
import type { TableInfo } from '../db/catalog.js';
import { displayName, quoteIdent, quoteQualified } from '../db/ident.js';
import { openTransactionsNow, waitForTransactions, type OpenTransaction } from '../db/open-transactions.js';
import { countVersions } from '../verify/count-versions.js';
import { countQuarantine, pruneQuarantine } from '../state/quarantine.js';
import { parseLsn, type Lsn } from '../replication/lsn.js';
import { unpublishedLeaves } from '../replication/publication.js';
import type { QualifiedName } from '../db/ident.js';
import { countedLeaves, isUnlogged } from '../db/unlogged.js';
import { rowSecurityNotOff, rowSecurityProblems } from '../db/row-security.js';
import { blocksConvergence, findOutsideRelations, outsideProblems, type OutsideRelation } from '../verify/outside.js';

export interface ConvergenceCheck {
  sweepDone: boolean;
  streamCaughtUp: boolean;
  remaining: number | null;
  /** Non-target values per followed leaf relation at this count (where there are any; unlogged leaves are not in it). */
  remainingByLeaf: Record<string, number>;
  /**
   * Why a count of 0 would prove nothing (design.md rule 7), each with its fix: leaves the stream
   * cannot follow (UNLOGGED, or not in the publication), and relations that left the configured
   * tables holding old-version values (detached partitions, NO INHERIT children) not in `ignore:`.
   */
  blockers: string[];
  /** Former leaves of the configured tables, counted (see verify/outside.ts). */
  outside: OutsideRelation[];
  quarantined: number;
  /** Stale quarantine entries dropped by this check (values since overwritten or deleted). */
  pruned: number;
  /**
   * Transactions that were open when the count ended and had not ended within the wait:
   * their writes are invisible to the count and not yet decoded, so they hold convergence back.
   */
  openTransactions: OpenTransaction[];
  converged: boolean;
  /** Sweep done and stream caught up, but every remaining value is quarantined. */
  stuckOnQuarantine: boolean;
}

/** True when every leaf of every configured table is swept in the current generation. */
export async function sweepComplete(db: pg.Pool, tables: readonly TableInfo[]): Promise<boolean> {
  const leaves = tables.flatMap((t) => t.leaves.map(displayName));
  const r = await db.query<{ n: number }>(`select count(*)::int as n from pgrekey.sweep_segment where relation = any($1::text[]) and state = 'done'`, [leaves]);
  return r.rows[0]!.n === leaves.length;
}

export interface ConvergenceWaits {
  /** How long to wait for the transactions open at the end of the count. */
  transactionsMs: number;
  /** How long to wait for the stream to apply past the server's position after them. */
  streamMs: number;
  signal?: AbortSignal;
  /** The stream's publication: a leaf it does not publish holds convergence back. Unset: not checked. */
  publication?: string;
  /** `ignore:` of the config: former leaves that no longer hold convergence back. */
  ignore?: readonly QualifiedName[];
}

/**
 * Converged = every table swept since the slot was created (setup and slot
 * recreation reset the sweep), a count finds no non-target value, every
 * transaction that was open when the count ended has ended (design.md rule 7:
 * prepared ones included; their writes were invisible to the count), the
 * stream has applied everything up to the server's WAL position after they
 * ended (so it rewrote what they committed), and no value is quarantined.
 */
export async function checkConvergence(
  db: pg.Pool,
  tables: readonly TableInfo[],
  target: number,
  stream: { appliedLsn: Lsn; ping(): void },
  waits: ConvergenceWaits = { transactionsMs: 10_000, streamMs: 10_000 },
): Promise<ConvergenceCheck> {
  const sweepDone = await sweepComplete(db, tables);
  let pruned = 0;
  // Housekeeping only: a table that cannot be read right now (dropped, locked) keeps its entries.
  if ((await countQuarantine(db)) > 0) for (const t of tables) pruned += await pruneQuarantine(db, t).catch(() => 0);
  const notYet = { streamCaughtUp: false, remaining: null, remainingByLeaf: {}, blockers: [], outside: [], pruned, openTransactions: [], converged: false, stuckOnQuarantine: false };
  if (!sweepDone) return { sweepDone, ...notYet, quarantined: await quarantinedIn(db, tables) };
  const counts = await countVersions(db, [...tables], target, false);
  const remaining = counts.reduce((n, c) => n + c.nonTarget, 0);
  const remainingByLeaf: Record<string, number> = {};
  const unlogged = new Set(tables.flatMap((t) => t.unlogged.map(displayName)));
  for (const c of counts) {
    for (const [leaf, n] of Object.entries(c.nonTargetByLeaf)) if (!unlogged.has(leaf)) remainingByLeaf[leaf] = (remainingByLeaf[leaf] ?? 0) + n;
  }
  // The transaction rule: whatever was open when the count ended must end, and be streamed, first.
  const { xids } = await openTransactionsNow(db);
  const { open } = await waitForTransactions(db, xids, { timeoutMs: waits.transactionsMs, signal: waits.signal });
  // Insert, not flush, position: a commit with synchronous_commit off is visible before it is flushed.
  const current = parseLsn((await db.query<{ lsn: string }>(`select pg_current_wal_insert_lsn()::text as lsn`)).rows[0]!.lsn);
  const deadline = Date.now() + waits.streamMs;
  while (open.length === 0 && stream.appliedLsn < current && Date.now() < deadline && !waits.signal?.aborted) {
    stream.ping();
    await new Promise((r) => setTimeout(r, 100));
  }
  const streamCaughtUp = open.length === 0 && stream.appliedLsn >= current;
  // Counted after the catch-up: a value the stream quarantined after the count is not in it.
  const quarantined = await quarantinedIn(db, tables);
  // Read last, fresh: a leaf switched to UNLOGGED during the count is caught here, not at the next catalog check.
  const blockers = await unfollowedLeaves(db, tables, waits.publication);
  const outside = await findOutsideRelations(db, tables, target, waits.ignore ?? []);
  blockers.push(...outsideProblems(outside));
  // Row security enabled since the last catalog check: what this role counted may be part of a table.
  const notOff = await rowSecurityNotOff(db);
  if (notOff) blockers.push(notOff);
  blockers.push(...(await rowSecurityProblems(db, tables)).map((h) => h.problem));
  return {
    sweepDone,
    streamCaughtUp,
    remaining,
    remainingByLeaf,
    blockers,
    outside,
    quarantined,
    pruned,
    openTransactions: open,
    converged: streamCaughtUp && remaining === 0 && quarantined === 0 && blockers.length === 0 && !outside.some(blocksConvergence),
    stuckOnQuarantine: streamCaughtUp && remaining > 0 && quarantined >= remaining,
  };
}

/**
 * Leaves of the configured tables the stream cannot follow, read afresh, each with its fix:
 * UNLOGGED (or temporary) ones, and (with `publication`) ones the publication does not publish.
 * A transaction open at the count may still commit old-version values there, and nothing would
 * rewrite them: while one exists, a count of 0 proves nothing.
 */
export async function unfollowedLeaves(db: pg.Pool, tables: readonly TableInfo[], publication?: string): Promise<string[]> {
  const leaves = tables.flatMap((t) => countedLeaves(t).map((l) => ({ table: t, leaf: l })));
  if (leaves.length === 0) return [];
  const r = await db.query<{ q: string; persistence: string | null }>(
    `select q, c.relpersistence::text as persistence from unnest($1::text[]) q left join pg_class c on c.oid = to_regclass(q)`,
    [leaves.map((l) => quoteQualified(l.leaf))],
  );
  const persistence = new Map(r.rows.map((x) => [x.q, x.persistence]));
  const out: string[] = [];
  // A relation that holds a table's rows now but is not among the leaves counted (a partition or
  // child created since these leaves were read: a check that began before run's catalog check saw
  // it) was not in the count.
  const fresh = await db.query<{ table_oid: number; schema: string; name: string }>(
    `with recursive d(root, oid) as (select t, t from unnest($1::oid[]) t union select d.root, i.inhrelid from pg_inherits i join d on i.inhparent = d.oid)
     select d.root::int as table_oid, n.nspname as schema, c.relname as name
       from d join pg_class c on c.oid = d.oid join pg_namespace n on n.oid = c.relnamespace where c.relkind <> 'p'`,
    [tables.map((t) => t.oid)],
  );
  for (const t of tables) {
    const known = new Set(countedLeaves(t).map(displayName));
    for (const row of fresh.rows.filter((x) => x.table_oid === t.oid)) {
      const name = displayName(row);
      if (!known.has(name)) out.push(`${name} is a new leaf of ${t.display} that this count did not cover; it is swept and counted once run's catalog check has found it`);
    }
  }
  for (const { table, leaf } of leaves) {
    const p = persistence.get(quoteQualified(leaf));
    if (p === 'u' || p === 't' || (p === undefined && isUnlogged(table, leaf))) {
      out.push(`${displayName(leaf)} (a leaf of ${table.display}) is UNLOGGED: logical decoding never sees its writes; make it logged: ALTER TABLE ${displayName(leaf)} SET LOGGED`);
    }
  }
  if (publication) {
    const logged = leaves.filter(({ leaf }) => persistence.get(quoteQualified(leaf)) === 'p').map((l) => l.leaf);
    for (const relation of (await unpublishedLeaves(db, publication, logged)) ?? []) {
      out.push(`${relation} is not in publication ${publication}: its writes are not streamed; as the publication's owner (who must also own the table) or a superuser: ALTER PUBLICATION ${quoteIdent(publication)} ADD TABLE ONLY ${relation}`);
    }
  }
  return out;
}

/** Quarantine entries of the configured tables (a table since dropped or left out of the config holds nothing back). */
async function quarantinedIn(db: pg.Pool, tables: readonly TableInfo[]): Promise<number> {
  let n = 0;
  for (const t of tables) n += await countQuarantine(db, t.display);
  return n;
}
