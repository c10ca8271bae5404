import { createHash } from 'node:crypto';
import type { KeyRing } from '../crypto/key-ring.js';
import { rewriteValue, type FailureReason, type RewriteOptions } from '../crypto/rewrite.js';

export type RowKey = Record<string, string | null>;

/** One row as read by the sweep: its ctid, key (for quarantine; when it was read) and the configured columns. */
export interface ScannedRow {
  ctid: string;
  rowKey?: RowKey;
  values: (string | null)[];
}

export interface Failure {
  ctid: string;
  column: string;
  /** Absent when the chunk was read without keys: looked up by ctid before it is recorded. */
  rowKey?: RowKey;
  version: number;
  reason: FailureReason;
  sha256: Buffer;
}

/** Column-major arrays ready for the batched compare-and-swap. */
export interface ChunkPlan {
  ctids: string[];
  /** Per configured column: old and new values, null where that column is left alone. */
  olds: (string | null)[][];
  news: (string | null)[][];
  /** One entry per rewritten value: counts, and clears stale quarantine entries. */
  rewrittenKeys: { ctid: string; column: string; rowKey?: RowKey }[];
  failures: Failure[];
  /** Per version: values that decrypted / failed with a MAC error in this chunk. */
  opened: Map<number, number>;
  macFailures: Map<number, number>;
}

/**
 * Decides, for every value of a chunk, what the sweep writes. Pure apart from
 * nonces. A row that needs no write (every column at target, not ours, or
 * failed) is left out of the CAS arrays entirely.
 */
export function evaluateRows(rows: ScannedRow[], columns: readonly string[], ring: KeyRing, opts: RewriteOptions = {}): ChunkPlan {
  const plan: ChunkPlan = {
    ctids: [],
    olds: columns.map(() => []),
    news: columns.map(() => []),
    rewrittenKeys: [],
    failures: [],
    opened: new Map(),
    macFailures: new Map(),
  };
  const bump = (m: Map<number, number>, v: number) => m.set(v, (m.get(v) ?? 0) + 1);
  for (const row of rows) {
    const olds: (string | null)[] = [];
    const news: (string | null)[] = [];
    let any = false;
    columns.forEach((column, i) => {
      const value = row.values[i] ?? null;
      const out = value === null ? null : rewriteValue(value, ring, opts);
      if (out?.kind === 'rewritten') {
        olds.push(value);
        news.push(out.value);
        any = true;
        bump(plan.opened, out.version);
        plan.rewrittenKeys.push({ ctid: row.ctid, column, rowKey: row.rowKey });
        return;
      }
      olds.push(null);
      news.push(null);
      if (out?.kind === 'failed') {
        if (out.reason === 'mac-failure') bump(plan.macFailures, out.version);
        plan.failures.push({
          ctid: row.ctid,
          column,
          rowKey: row.rowKey,
          version: out.version,
          reason: out.reason,
          sha256: createHash('sha256').update(value!).digest(),
        });
      }
    });
    if (!any) continue;
    plan.ctids.push(row.ctid);
    columns.forEach((_, i) => {
      plan.olds[i]!.push(olds[i]!);
      plan.news[i]!.push(news[i]!);
    });
  }
  return plan;
}

/**
 * "Wrong key?" guard: a version whose first values all fail to open is far
 * more likely a wrong key than a table of corrupt values. Returns the first
 * such version, given the totals so far (including this chunk), or null.
 */
export function suspectWrongKey(opened: Map<number, number>, macFailures: Map<number, number>, threshold: number): number | null {
  for (const [version, failed] of macFailures) {
    if ((opened.get(version) ?? 0) === 0 && failed >= threshold) return version;
  }
  return null;
}

export function mergeCounts(into: Map<number, number>, from: Map<number, number>): void {
  for (const [k, v] of from) into.set(k, (into.get(k) ?? 0) + v);
}
