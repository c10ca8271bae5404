import type pg from 'pg';
import type { TableInfo } from '../db/catalog.js';
import { displayName } from '../db/ident.js';
import { countVersions } from '../verify/count-versions.js';
import { countQuarantine, pruneQuarantine } from '../state/quarantine.js';
import { parseLsn, type Lsn } from '../replication/lsn.js';

export interface ConvergenceCheck {
  sweepDone: boolean;
  streamCaughtUp: boolean;
  remaining: number | null;
  quarantined: number;
  /** Stale quarantine entries dropped by this check (values since overwritten or deleted). */
  pruned: number;
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

/**
 * Converged = every table swept since the slot was created (setup and slot
 * recreation reset the sweep), the stream has applied everything up to the
 * server's WAL position at the start of the check, and a count finds no
 * non-target value.
 */
export async function checkConvergence(
  db: pg.Pool,
  tables: readonly TableInfo[],
  target: number,
  stream: { appliedLsn: Lsn; ping(): void },
  waitMs = 10_000,
): Promise<ConvergenceCheck> {
  const sweepDone = await sweepComplete(db, tables);
  let pruned = 0;
  // Housekeeping only: a table that cannot be read right now (dropped, locked) keeps its entries.
  if ((await countQuarantine(db)) > 0) for (const t of tables) pruned += await pruneQuarantine(db, t).catch(() => 0);
  const quarantined = await countQuarantine(db);
  if (!sweepDone) return { sweepDone, streamCaughtUp: false, remaining: null, quarantined, pruned, converged: false, stuckOnQuarantine: false };
  const current = parseLsn((await db.query<{ lsn: string }>(`select pg_current_wal_flush_lsn()::text as lsn`)).rows[0]!.lsn);
  const deadline = Date.now() + waitMs;
  while (stream.appliedLsn < current && Date.now() < deadline) {
    stream.ping();
    await new Promise((r) => setTimeout(r, 100));
  }
  const streamCaughtUp = stream.appliedLsn >= current;
  const counts = await countVersions(db, [...tables], target, false);
  const remaining = counts.reduce((n, c) => n + c.nonTarget, 0);
  return {
    sweepDone,
    streamCaughtUp,
    remaining,
    quarantined,
    pruned,
    converged: streamCaughtUp && remaining === 0,
    stuckOnQuarantine: streamCaughtUp && remaining > 0 && quarantined >= remaining,
  };
}
