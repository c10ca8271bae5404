import { parseVersioned } from '../crypto/envelope.js';
import type { SightingRow } from '../state/old-version-writes.js';

/**
 * The rollout gate's eyes: old-version values in the INSERTs and UPDATEs the stream decodes
 * from the applications. Pure; the stream feeds it, its writer persists what it collected
 * before the slot is acknowledged past it (state/old-version-writes.ts).
 *
 * Counted: a configured column whose value is in the decoded new tuple and carries a version
 * other than the target. Not counted: a column sent as unchanged TOAST (not written by that
 * transaction), and every change of a transaction pg-rekey made itself (its stream flushes
 * and sweep chunks write the target version; a column they leave as it is, a quarantined
 * value, is not a write of the application). An application UPDATE of another column of a
 * row still holding an old value counts: pgoutput does not say which columns an UPDATE set,
 * and erring this way only makes the gate wait longer.
 */
export function oldVersionColumns(tuple: Record<string, unknown>, columns: readonly string[], target: number): { column: string; version: number }[] {
  const out: { column: string; version: number }[] = [];
  for (const column of columns) {
    const v = tuple[column];
    if (typeof v !== 'string') continue; // NULL, unchanged TOAST (undefined), or not in this relation
    const parsed = parseVersioned(v);
    if (parsed && parsed.version !== target) out.push({ column, version: parsed.version });
  }
  return out;
}

/** One decoded transaction as the stream saw it at its BEGIN. */
export interface DecodedTransaction {
  /** Commit time, microseconds since the Unix epoch (pgoutput BEGIN). */
  commitTimeMicros: bigint;
  /** Final LSN of the transaction (pgoutput BEGIN), as text. */
  commitLsn: string;
}

/** Collects sightings per (version, table, column, transaction) until taken for persisting. */
export class OldVersionSightings {
  private pending = new Map<string, SightingRow>();
  /** Per column, the LSN of the last transaction handed out for persisting in this session. */
  private handedOut = new Map<string, string>();
  /** Newest commit time seen (ms), across sessions of this process. */
  private newest = 0;

  note(txn: DecodedTransaction, version: number, table: string, column: string): void {
    const id = JSON.stringify([version, table, column]);
    const key = `${id}@${txn.commitLsn}`;
    const commitMs = Number(txn.commitTimeMicros) / 1000;
    const row = this.pending.get(key);
    if (row) row.writes++;
    else this.pending.set(key, { version, table, column, writes: 1, commitMs, lsn: txn.commitLsn, continues: this.handedOut.get(id) === txn.commitLsn });
    if (commitMs > this.newest) this.newest = commitMs;
  }

  get size(): number {
    return this.pending.size;
  }

  /** Commit time (ms, server clock) of the newest old-version write seen by this process, 0 if none. */
  get newestCommitMs(): number {
    return this.newest;
  }

  /** The rows to persist now; they are forgotten here. */
  take(): SightingRow[] {
    const rows = [...this.pending.values()];
    this.pending = new Map();
    for (const r of rows) this.handedOut.set(JSON.stringify([r.version, r.table, r.column]), r.lsn);
    return rows;
  }

  /** After a stream error: what was not persisted replays from the slot, and the session's memory goes. */
  discard(): void {
    this.pending = new Map();
    this.handedOut = new Map();
  }
}
