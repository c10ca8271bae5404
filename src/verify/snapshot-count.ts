import type pg from 'pg';
import type { TableInfo } from '../db/catalog.js';
import { inTransaction } from '../db/connect.js';
import { currentSnapshot, describeTransactions, openTransactionsNow } from '../db/open-transactions.js';
import type { Snapshot } from '../db/snapshot.js';
import { countLiveQuarantine } from '../state/quarantine.js';
import { countVersions, type ColumnCounts } from './count-versions.js';

/**
 * verify's count, under ONE snapshot (a REPEATABLE READ, read-only transaction, like pg_dump):
 * chunked counts with a snapshot each can miss a row that an UPDATE of another column moves from a
 * block not yet counted into one already counted (no old-version writer needed: the last v1 rows
 * of a table), and a table rewrite (VACUUM FULL, CLUSTER) in the middle compacts rows behind the
 * count. One snapshot sees every row version exactly once, and its ACCESS SHARE locks hold such a
 * rewrite off until the count is done. What it cannot see: the transactions in progress at the
 * snapshot, returned for the transaction rule.
 */
export interface SnapshotCount {
  columns: ColumnCounts[];
  snapshot: Snapshot;
  /**
   * Transactions that were in progress when the snapshot was taken (so invisible to the count),
   * that may write the configured tables: this database's (pg-rekey's own sessions excepted: they
   * write only target-version values and state), or of a database not known any more.
   */
  inProgress: bigint[];
  /** Every transaction holding an xid just after the count (any database): they too must end before the count proves anything. */
  openAfter: bigint[];
}

export async function countInOneSnapshot(pool: pg.Pool, tables: TableInfo[], target: number, withQuarantine: boolean): Promise<SnapshotCount> {
  const { columns, snapshot } = await inTransaction(pool, 'begin isolation level repeatable read read only', async (client) => {
    // The first statement takes the transaction's snapshot.
    const snap = await currentSnapshot(client);
    return { snapshot: snap, columns: await countVersions(client, tables, target, false) };
  });
  if (withQuarantine) {
    for (const t of tables) {
      const live = await countLiveQuarantine(pool, t);
      for (const c of columns) if (c.table === t.display) c.quarantined = live.get(c.column) ?? 0;
    }
  }
  // In progress at the snapshot: its xip, and running xids at or above its xmax (not listed there).
  const { xids: now } = await openTransactionsNow(pool);
  const candidates = [...new Set([...snapshot.xip, ...now.filter((x) => x >= snapshot.xmax)])];
  const here = (await pool.query<{ d: string }>(`select current_database() as d`)).rows[0]!.d;
  const described = await describeTransactions(pool, candidates);
  const inProgress = candidates.filter((_, i) => {
    const t = described[i]!;
    if (t.kind === 'unknown') return true;
    if (t.database !== null && t.database !== here) return false;
    return !(t.kind === 'session' && (t.application ?? '').startsWith('pg-rekey'));
  });
  return { columns, snapshot, inProgress, openAfter: now };
}
