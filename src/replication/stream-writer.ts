import { createHash } from 'node:crypto';
import type pg from 'pg';
import type { KeyRing } from '../crypto/key-ring.js';
import { rewriteValue } from '../crypto/rewrite.js';
import { parseVersioned } from '../crypto/envelope.js';
import { quoteIdent } from '../db/ident.js';
import { casColumnsSql, versionExpr } from '../backfill/sweep-sql.js';
import { checkout } from '../db/connect.js';
import { clearQuarantine, recordQuarantine, type QuarantineEntry } from '../state/quarantine.js';
import { keyMatchSql, type StreamRelation } from './relation-map.js';
import type { RowWork } from './rewrite-plan.js';

export interface BatchLimits {
  /** Flush when this many rows are pending. */
  maxRows: number;
  /** Flush when pending values add up to this many bytes (10 MB values exist). */
  maxBytes: number;
  /** Flush when the oldest pending row waited this long. */
  maxDelayMs: number;
  /**
   * lock_timeout of a flush. Below deadlock_timeout (1 s by default), so that when a batch and
   * application transactions (queued on the same rows behind the sweep) form a lock cycle,
   * pg-rekey gives way before the deadlock detector aborts an application transaction. A flush
   * that times out fails the session; the batch replays from the slot.
   */
  lockTimeoutMs?: number;
}

export const DEFAULT_BATCH: BatchLimits = { maxRows: 2000, maxBytes: 32 * 1024 * 1024, maxDelayMs: 50 };

interface Pending {
  rel: StreamRelation;
  rows: Map<string, RowWork>;
}

export interface FlushResult {
  rewritten: Map<string, number>; // by table
  quarantined: Map<string, number>;
  conflicts: number;
}

/**
 * Collects the rows the stream must rewrite, per relation, deduplicated by
 * key (the latest message for a row wins), and writes them in one
 * transaction per flush with a compare-and-swap by key:
 *   UPDATE t SET c = new WHERE <key> = k AND c = old
 * A row changed again since the message no longer matches and is left to
 * the later message that carried its new value.
 */
export class StreamWriter {
  private pending = new Map<string, Pending>();
  private rows = 0;
  private bytes = 0;
  private oldest = 0;

  constructor(
    private readonly pool: pg.Pool,
    private readonly ring: KeyRing,
    readonly limits: BatchLimits = DEFAULT_BATCH,
  ) {}

  get size(): number {
    return this.rows;
  }

  add(rel: StreamRelation, work: RowWork): void {
    const id = rel.quoted;
    let p = this.pending.get(id);
    if (!p) this.pending.set(id, (p = { rel, rows: new Map() }));
    const k = JSON.stringify(work.key);
    // The latest message for a row wins outright: its new tuple holds every configured column
    // (a value, NULL, or 'u' to read back), so it says all that is left to do for the row.
    // Merging kept an earlier message's old value of a column the later message shows at
    // target; the whole-row compare-and-swap then failed on that stale column and the other
    // column was never rewritten (no later message would come for it).
    if (!p.rows.has(k)) this.rows++;
    p.rows.set(k, { key: work.key, rewrite: new Map(work.rewrite), readBack: [...work.readBack] });
    for (const v of work.rewrite.values()) this.bytes += v.length;
    if (this.oldest === 0) this.oldest = Date.now();
  }

  due(now = Date.now()): boolean {
    return this.rows >= this.limits.maxRows || this.bytes >= this.limits.maxBytes || (this.rows > 0 && now - this.oldest >= this.limits.maxDelayMs);
  }

  /** Drops pending work (after a stream error: it replays from the slot). */
  discard(): void {
    this.pending = new Map();
    this.rows = this.bytes = this.oldest = 0;
  }

  async flush(): Promise<FlushResult> {
    const result: FlushResult = { rewritten: new Map(), quarantined: new Map(), conflicts: 0 };
    if (this.rows === 0) return result;
    const batches = [...this.pending.values()];
    const client = await checkout(this.pool);
    try {
      await client.query('begin');
      if (this.limits.lockTimeoutMs) await client.query(`select set_config('lock_timeout', $1, true)`, [String(this.limits.lockTimeoutMs)]);
      for (const b of batches) await this.flushRelation(client, b, result);
      await client.query('commit');
      client.release();
    } catch (e) {
      await client.query('rollback').catch(() => undefined);
      client.release(true);
      throw e;
    }
    this.discard();
    return result;
  }

  private async flushRelation(client: pg.PoolClient, b: Pending, out: FlushResult): Promise<void> {
    const { rel } = b;
    const rows = [...b.rows.values()];
    await this.readBack(client, rel, rows);
    const cols = rel.columns;
    const keys: string[][] = rel.keyColumns.map(() => []);
    const olds: (string | null)[][] = cols.map(() => []);
    const news: (string | null)[][] = cols.map(() => []);
    const failures: QuarantineEntry[] = [];
    /** Per CAS row (in order): its key and the columns it rewrites, to clear their quarantine entries once written. */
    const casRows: { rowKey: Record<string, string | null>; columns: string[] }[] = [];
    for (const row of rows) {
      const o: (string | null)[] = [];
      const n: (string | null)[] = [];
      for (const c of cols) {
        const old = row.rewrite.get(c);
        const r = old === undefined ? null : rewriteValue(old, this.ring);
        if (r?.kind === 'rewritten') {
          o.push(old!);
          n.push(r.value);
          continue;
        }
        o.push(null);
        n.push(null);
        if (r?.kind === 'failed') {
          failures.push({
            table: rel.table,
            column: c,
            rowKey: Object.fromEntries(rel.keyColumns.map((k, i) => [k, row.key[i] ?? null])),
            version: r.version,
            reason: r.reason,
            sha256: createHash('sha256').update(old!).digest(),
          });
        }
      }
      if (n.every((x) => x === null)) continue;
      casRows.push({ rowKey: Object.fromEntries(rel.keyColumns.map((k, i) => [k, row.key[i] ?? null])), columns: cols.filter((_, i) => n[i] !== null) });
      row.key.forEach((k, i) => keys[i]!.push(k));
      o.forEach((x, i) => olds[i]!.push(x));
      n.forEach((x, i) => news[i]!.push(x));
    }
    if (keys[0]!.length > 0) {
      const params: unknown[] = [...keys];
      cols.forEach((_, i) => params.push(olds[i], news[i]));
      const upd = await client.query<{ ord: number; n: number }>(casByKeySql(rel), params);
      const written = upd.rows.reduce((s, r) => s + r.n, 0);
      out.conflicts += keys[0]!.length - upd.rowCount!;
      out.rewritten.set(rel.table, (out.rewritten.get(rel.table) ?? 0) + written);
      // A value quarantined earlier and since fixed by the application was just rewritten: its entry
      // no longer describes a stored value (the sweep clears such entries too).
      const cleared = upd.rows.flatMap((r) => {
        const w = casRows[r.ord - 1]!;
        return w.columns.map((column) => ({ column, rowKey: w.rowKey }));
      });
      await clearQuarantine(client, rel.table, cleared);
    }
    if (failures.length) {
      await recordQuarantine(client, failures, 'stream');
      out.quarantined.set(rel.table, (out.quarantined.get(rel.table) ?? 0) + failures.length);
    }
  }

  /** Columns sent as unchanged TOAST: fetch their current value by key. */
  private async readBack(client: pg.PoolClient, rel: StreamRelation, rows: RowWork[]): Promise<void> {
    const need = rows.filter((r) => r.readBack.length > 0);
    if (need.length === 0) return;
    const cols = [...new Set(need.flatMap((r) => r.readBack))];
    const keyArrays = rel.keyColumns.map((_, i) => need.map((r) => r.key[i]!));
    const vs = rel.keyColumns.map((_, i) => `$${i + 1}::text[]`).join(', ');
    const kn = rel.keyColumns.map((_, i) => `k${i}`).join(', ');
    // Only the first 12 characters decide whether a value needs work; fetch the
    // full value only for those that do, so a 10 MB value at target costs nothing.
    const sql = `select v.ord::int as ord, ${cols.map((c) => `case when ${versionExpr(`t.${quoteIdent(c)}`)} <> $${rel.keyColumns.length + 1} then t.${quoteIdent(c)} end`).join(', ')}
      from unnest(${vs}) with ordinality as v(${kn}, ord) join only ${rel.quoted} t on ${keyMatchSql(rel)}`;
    const r = await client.query({ text: sql, values: [...keyArrays, this.ring.target], rowMode: 'array' });
    for (const row of r.rows as unknown[][]) {
      const work = need[(row[0] as number) - 1]!;
      cols.forEach((c, i) => {
        const v = row[i + 1];
        if (work.readBack.includes(c) && typeof v === 'string' && parseVersioned(v)) work.rewrite.set(c, v);
      });
    }
  }
}

/**
 * Batched compare-and-swap by key. $1..$k key values as text (cast back to
 * the key types), then per configured column ($old, $new); a null new value
 * leaves that column alone. Returns, per row written, its position in the arrays (from 1) and how many values changed.
 */
export function casByKeySql(rel: StreamRelation): string {
  const k = rel.keyColumns.length;
  const cols = rel.columns;
  const arrays = [...rel.keyColumns.map((_, i) => `$${i + 1}::text[]`), ...cols.flatMap((_, i) => [`$${k + 1 + 2 * i}::text[]`, `$${k + 2 + 2 * i}::text[]`])];
  const names = [...rel.keyColumns.map((_, i) => `k${i}`), ...cols.flatMap((_, i) => [`o${i}`, `n${i}`])];
  const { sets, guards } = casColumnsSql(cols);
  const count = cols.map((_, i) => `(v.n${i} is not null)::int`).join(' + ');
  return `update only ${rel.quoted} as t set ${sets}
  from unnest(${arrays.join(', ')}) with ordinality as v(${names.join(', ')}, ord)
 where ${keyMatchSql(rel)} and ${guards}
returning v.ord::int as ord, ${count} as n`;
}
