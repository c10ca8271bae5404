/**
 * What a compare-and-swap that matched nothing means (pure logic).
 *
 * Only once the source transaction is visible (see visibility.ts) is a miss
 * evidence of anything: then the row is re-read by key, and
 * - gone (deleted, or its key changed): superseded, a later message carries it;
 * - every rewritten column holds another value than the message's: superseded
 *   by newer committed writes, which the slot delivers later (or pg-rekey's own
 *   rewrite, which it skips);
 * - some do and some still hold the message's old value: the row version that
 *   changed them may be pg-rekey's own (a flush that rewrote one column carries
 *   the others as they were, and the stream skips its own origin), so no later
 *   message need come for the others: they are compared and swapped again, alone;
 * - every column still holds the message's old value: nothing explains the
 *   miss (a BEFORE UPDATE trigger returning NULL, an UPDATE policy): retry,
 *   and after a few attempts quarantine it ('not-applied'), never drop it.
 */
import type { RowWork } from './rewrite-plan.js';

export type Miss = 'superseded' | 'still-old';

/** One row of a batched CAS: per configured column, the value expected and the value to write (null: column left alone). */
export interface CasRow {
  work: RowWork;
  olds: (string | null)[];
  news: (string | null)[];
}

/**
 * A missed row re-read with `same[j]`: column j holds the old value (or is not rewritten). When
 * some rewritten columns still hold their old values and others do not, returns the row narrowed
 * to the former (the latter also leave its work); otherwise null (a plain miss).
 */
export function narrowToStillOld(c: CasRow, same: readonly boolean[], columns: readonly string[]): CasRow | null {
  const rewritten = c.olds.map((o) => o !== null);
  const keep = rewritten.map((r, j) => r && same[j] === true);
  if (!keep.some(Boolean) || keep.every((k, j) => k === rewritten[j])) return null;
  columns.forEach((col, j) => rewritten[j] && !keep[j] && c.work.rewrite.delete(col));
  return { work: c.work, olds: c.olds.map((o, j) => (keep[j] ? o : null)), news: c.news.map((n, j) => (keep[j] ? n : null)) };
}

/** `current`: the row as re-read by key (undefined: not found); `stillOld`: every rewritten column still holds the message's old value. */
export function classifyMiss(current: { stillOld: boolean } | undefined): Miss {
  return current?.stillOld ? 'still-old' : 'superseded';
}

/** SQLSTATE classes of a row's own data, not of the session: the row is quarantined and the work goes on. */
const ROW_ERROR_CLASSES = ['22', '23', 'P0', '44', '2F', '38', '39'];

export function isRowError(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  return typeof code === 'string' && ROW_ERROR_CLASSES.some((c) => code.startsWith(c));
}

/**
 * Classes that say nothing about the rows: the session, the server or the catalog (connection,
 * resources, operator intervention, lock/serialization, object state, system and internal errors,
 * a table or column dropped, which run follows). Such a failure replays the batch.
 */
const TRANSIENT_CLASSES = ['08', '40', '53', '55', '57', '58', 'XX', 'F0', 'HV'];
const CATALOG_CODES = new Set(['42P01', '42703']);

/**
 * The stream isolates by row every error that is deterministic for those rows, beyond the row
 * classes: a trigger that reads a table the role may not (42501), a function it cannot run, a
 * constraint trigger's own error. Replaying such a batch would fail the same way forever and
 * hold back every other table.
 */
export function isolatedByRow(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  if (typeof code !== 'string' || code.length !== 5) return false;
  if (CATALOG_CODES.has(code)) return false;
  // Row security (42501 from check_enable_rls): a grant is missing, not a row at fault. Replayed, never
  // quarantined: run's catalog check stops run (exit 2) naming the grant, and after it the slot replays these rows.
  if ((err as { routine?: unknown }).routine === 'check_enable_rls') return false;
  return !TRANSIENT_CLASSES.some((c) => code.startsWith(c));
}

/** The quarantine reason of a row whose UPDATE raised: SQLSTATE and constraint name, never the message (it can hold values). */
export function rowErrorReason(err: unknown): `update-raised:${string}` {
  const e = err as { code?: string; constraint?: string };
  const constraint = e.constraint && /^[\w$ .-]{1,63}$/.test(e.constraint) ? `:${e.constraint}` : '';
  return `update-raised:${e.code ?? 'unknown'}${constraint}`;
}

/**
 * A database error as it may be logged: SQLSTATE, constraint, table, never the message or
 * detail (a trigger's RAISE or a constraint's "Failing row contains (...)" can quote values).
 */
export class SanitizedDbError extends Error {
  readonly code: string | undefined;
  constructor(what: string, err: unknown) {
    const e = err as { code?: string; constraint?: string; routine?: string };
    super(`${what} failed with SQLSTATE ${e.code ?? 'unknown'}${e.constraint ? ` (constraint ${e.constraint})` : ''}${e.routine ? ` in ${e.routine}` : ''}; the message is not shown (it may quote values)`);
    this.code = e.code;
  }
}

/**
 * What pg-rekey's own stream writes wrote, by 32-bit xid of their transaction, so that a change
 * decoded from one of them is recognised: an old-version value in a column pg-rekey itself set in
 * that transaction means the rewrite did not stick (an AFTER trigger or a rule wrote the old value
 * back within pg-rekey's UPDATE). Rewriting it again would loop forever. Other columns of the same
 * change hold what the application wrote (the CAS leaves them as they are) and are handled as
 * usual; an application re-saving a cached old ciphertext writes from its own transactions.
 */
export class OwnTransactions {
  private readonly wrote = new Map<number, Set<string>>();

  constructor(private readonly capacity = 200) {}

  private static cell(table: string, key: readonly string[], column: string): string {
    return JSON.stringify([table, key, column]);
  }

  /** Records the cells one flush transaction wrote. */
  add(xid32: number, cells: readonly { table: string; key: readonly string[]; column: string }[]): void {
    if (cells.length === 0) return;
    const x = xid32 >>> 0;
    const set = this.wrote.get(x) ?? new Set<string>();
    for (const c of cells) set.add(OwnTransactions.cell(c.table, c.key, c.column));
    this.wrote.delete(x);
    this.wrote.set(x, set);
    while (this.wrote.size > this.capacity) this.wrote.delete(this.wrote.keys().next().value!);
  }

  /** True when the transaction `xid` (as decoded) was one of pg-rekey's flushes that wrote something. */
  hasTransaction(xid: number | undefined): boolean {
    return xid !== undefined && this.wrote.has(xid >>> 0);
  }

  /** True when the transaction `xid` (as decoded) was pg-rekey's and it set this cell. */
  wroteCell(xid: number | undefined, table: string, key: readonly string[], column: string): boolean {
    if (xid === undefined) return false;
    return this.wrote.get(xid >>> 0)?.has(OwnTransactions.cell(table, key, column)) === true;
  }
}

/**
 * The 32-bit xids of pg-rekey's other write transactions in this process (the sweep's chunks),
 * the most recent `capacity` of them: changes decoded from them are not the application's.
 */
export class RecentXids {
  private readonly xids = new Set<number>();

  constructor(private readonly capacity = 20_000) {}

  add(xid32: number): void {
    const x = xid32 >>> 0;
    this.xids.delete(x);
    this.xids.add(x);
    if (this.xids.size > this.capacity) this.xids.delete(this.xids.values().next().value!);
  }

  has(xid: number | undefined): boolean {
    return xid !== undefined && this.xids.has(xid >>> 0);
  }
}
