import type pg from 'pg';
import type { TableInfo } from '../db/catalog.js';
import { displayName } from '../db/ident.js';
import { openTransactionsNow, waitForTransactions, type OpenTransaction } from '../db/open-transactions.js';
import { countVersions } from '../verify/count-versions.js';
import { countQuarantine, pruneQuarantine } from '../state/quarantine.js';
import { parseLsn, type Lsn } from '../replication/lsn.js';

export interface ConvergenceCheck {
  sweepDone: boolean;
  streamCaughtUp: boolean;
  remaining: number | null;
  /** Non-target values per leaf relation at this count (where there are any). */
  remainingByLeaf: Record<string, number>;
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
  const notYet = { streamCaughtUp: false, remaining: null, remainingByLeaf: {}, pruned, openTransactions: [], converged: false, stuckOnQuarantine: false };
  if (!sweepDone) return { sweepDone, ...notYet, quarantined: await quarantinedIn(db, tables) };
  const counts = await countVersions(db, [...tables], target, false);
  const remaining = counts.reduce((n, c) => n + c.nonTarget, 0);
  const remainingByLeaf: Record<string, number> = {};
  for (const c of counts) for (const [leaf, n] of Object.entries(c.nonTargetByLeaf)) remainingByLeaf[leaf] = (remainingByLeaf[leaf] ?? 0) + n;
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
  return {
    sweepDone,
    streamCaughtUp,
    remaining,
    remainingByLeaf,
    quarantined,
    pruned,
    openTransactions: open,
    converged: streamCaughtUp && remaining === 0 && quarantined === 0,
    stuckOnQuarantine: streamCaughtUp && remaining > 0 && quarantined >= remaining,
  };
}

/** Quarantine entries of the configured tables (a table since dropped or left out of the config holds nothing back). */
async function quarantinedIn(db: pg.Pool, tables: readonly TableInfo[]): Promise<number> {
  let n = 0;
  for (const t of tables) n += await countQuarantine(db, t.display);
  return n;
}
