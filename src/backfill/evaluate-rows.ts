import { createHash } from 'node:crypto';
import type { KeyRing } from '../crypto/key-ring.js';
import { parseVersioned } from '../crypto/envelope.js';
import { rewriteValue, type FailureReason, type RewriteOptions } from '../crypto/rewrite.js';
import { rowErrorReason } from '../replication/cas-outcome.js';

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
  const n = columns.length;
  // Plain loops and one scratch array for the row's new values: this runs for every value a sweep reads.
  const news: (string | null)[] = new Array<string | null>(n);
  for (const row of rows) {
    let any = false;
    for (let i = 0; i < n; i++) {
      const value = row.values[i] ?? null;
      news[i] = null;
      if (value === null) continue;
      const out = rewriteValue(value, ring, opts);
      if (out.kind === 'rewritten') {
        news[i] = out.value;
        any = true;
        bump(plan.opened, out.version);
        plan.rewrittenKeys.push({ ctid: row.ctid, column: columns[i]!, rowKey: row.rowKey });
      } else if (out.kind === 'failed') {
        if (out.reason === 'mac-failure') bump(plan.macFailures, out.version);
        plan.failures.push({
          ctid: row.ctid,
          column: columns[i]!,
          rowKey: row.rowKey,
          version: out.version,
          reason: out.reason,
          sha256: createHash('sha256').update(value).digest(),
        });
      }
    }
    if (!any) continue;
    plan.ctids.push(row.ctid);
    for (let i = 0; i < n; i++) {
      plan.olds[i]!.push(news[i] === null ? null : (row.values[i] ?? null));
      plan.news[i]!.push(news[i]!);
    }
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

/** The first version of which at least one value was read, every one failed to open (MAC failure) and none opened, or null. */
export function everyValueFailed(opened: Map<number, number>, macFailures: Map<number, number>): number | null {
  for (const [version, failed] of macFailures) {
    if (failed > 0 && (opened.get(version) ?? 0) === 0) return version;
  }
  return null;
}

export function mergeCounts(into: Map<number, number>, from: Map<number, number>): void {
  for (const [k, v] of from) into.set(k, (into.get(k) ?? 0) + v);
}

/** Why a write was given up on: its UPDATE raised (SQLSTATE, constraint), or a trigger kept the old value. */
export type WriteFailureReason = `update-raised:${string}` | 'did-not-stick';

/** A value whose rewrite was given up on at write time; recorded in the quarantine like a Failure. */
export interface WriteFailure extends Omit<Failure, 'reason'> {
  reason: WriteFailureReason;
}

/** One row returned by the batched CAS (casUpdateSql): its ctid as read, per column what is stored now, and its key where a column did not get its new value. */
export interface CasReturned {
  tid: string;
  /** Per configured column: 0 the new value (or not rewritten), 1 still the old value, 2 another value. */
  kept: number[];
  rowKey?: RowKey | null;
}

export interface CasJudgement {
  /** One entry per value rewritten and stored as written. */
  written: { ctid: string; column: string; rowKey?: RowKey }[];
  /** Rows the CAS matched nothing for (changed since the read): the stream's, and the next pass's. */
  conflicts: number;
  /** Values a trigger replaced with another value than the one written: left as they are. */
  replaced: number;
  /** Values given up on: the row's UPDATE raised, or the rewrite did not stick. */
  failures: WriteFailure[];
}

/**
 * What the chunk's compare-and-swap did to every value of the plan (pure): `returned` are the
 * rows it wrote (see casUpdateSql), `raised` the rows whose UPDATE raised a row error when
 * redone one by one (by ctid), with the error. A row that raised is quarantined in every column
 * it would have rewritten (its UPDATE as a whole failed); a column whose stored value is still
 * the old one after the UPDATE (a BEFORE UPDATE trigger kept OLD.c) is quarantined as
 * 'did-not-stick' and never rewritten again by this pass.
 */
export function judgeCas(plan: ChunkPlan, columns: readonly string[], returned: readonly CasReturned[], raised: ReadonlyMap<string, unknown>): CasJudgement {
  const out: CasJudgement = { written: [], conflicts: 0, replaced: 0, failures: [] };
  const byTid = new Map(returned.map((r) => [r.tid, r]));
  // Every column of a row carries that row's key (evaluateRows): by ctid, and only when the rows were read with keys.
  const keys = plan.rewrittenKeys.some((k) => k.rowKey !== undefined) ? new Map(plan.rewrittenKeys.map((k) => [k.ctid, k.rowKey])) : null;
  plan.ctids.forEach((ctid, i) => {
    const back = byTid.get(ctid);
    const error = raised.get(ctid);
    if (!back && error === undefined) {
      out.conflicts++;
      return;
    }
    columns.forEach((column, j) => {
      const old = plan.olds[j]![i];
      if (plan.news[j]![i] === null || old === null || old === undefined) return;
      const rowKey = back?.rowKey ?? keys?.get(ctid);
      const fail = (reason: WriteFailureReason) =>
        out.failures.push({ ctid, column, rowKey, version: parseVersioned(old)?.version ?? 0, reason, sha256: createHash('sha256').update(old).digest() });
      if (error !== undefined) return fail(rowErrorReason(error));
      const kept = back!.kept[j] ?? 0;
      if (kept === 0) out.written.push({ ctid, column, rowKey: keys?.get(ctid) });
      else if (kept === 1) fail('did-not-stick');
      else out.replaced++;
    });
  });
  return out;
}

/**
 * The plan without the values given up on earlier in this pass (pure): a rewrite that did not
 * stick still moved its row (the UPDATE happened, with the old value kept), often to a block
 * ahead of the sweep, where the sweep would find it again. `givenUp` holds the sha256 (hex) of
 * such values; a row left with nothing to rewrite drops out of the CAS. Returns how many values
 * were dropped.
 */
export function withoutGivenUp(plan: ChunkPlan, columns: readonly string[], givenUp: ReadonlySet<string>): { plan: ChunkPlan; dropped: number } {
  if (givenUp.size === 0 || plan.ctids.length === 0) return { plan, dropped: 0 };
  const out: ChunkPlan = { ...plan, ctids: [], olds: columns.map(() => []), news: columns.map(() => []), rewrittenKeys: [] };
  const drop = new Set<string>();
  plan.ctids.forEach((ctid, i) => {
    const olds = columns.map((_, j) => plan.olds[j]![i] ?? null);
    const news = columns.map((_, j) => plan.news[j]![i] ?? null);
    columns.forEach((column, j) => {
      if (news[j] === null || !givenUp.has(createHash('sha256').update(olds[j]!).digest('hex'))) return;
      olds[j] = null;
      news[j] = null;
      drop.add(`${ctid}\u0000${column}`);
    });
    if (news.every((n) => n === null)) return;
    out.ctids.push(ctid);
    columns.forEach((_, j) => {
      out.olds[j]!.push(olds[j]!);
      out.news[j]!.push(news[j]!);
    });
  });
  out.rewrittenKeys = plan.rewrittenKeys.filter((k) => !drop.has(`${k.ctid}\u0000${k.column}`));
  return { plan: out, dropped: drop.size };
}

/** Row errors (classes 22, 23, P0, ...: a raising trigger, a CHECK or domain constraint): the row is quarantined, the work goes on. */
export { isRowError } from '../replication/cas-outcome.js';
