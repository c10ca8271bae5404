import type pg from 'pg';
import type { FailureReason } from '../crypto/rewrite.js';

export interface QuarantineEntry {
  table: string;
  column: string;
  rowKey: Record<string, string | null>;
  version: number;
  reason: FailureReason;
  sha256: Buffer;
}

/**
 * Records values that could not be rewritten. Never the value itself: its
 * row key, version, reason and a sha256 fingerprint. Upsert, so a value seen
 * again (next sweep, the stream) bumps last_seen and seen_count.
 */
export async function recordQuarantine(db: pg.ClientBase | pg.Pool, entries: QuarantineEntry[], source: 'sweep' | 'stream'): Promise<void> {
  // ON CONFLICT cannot touch the same row twice in one statement: keep the last.
  const unique = new Map(entries.map((e) => [JSON.stringify([e.table, e.column, e.rowKey]), e]));
  if (unique.size === 0) return;
  const es = [...unique.values()];
  await db.query(
    `insert into pgrekey.quarantine (table_name, column_name, row_key, version, reason, value_sha256, source)
     select t, c, k, v, r, h, $7 from unnest($1::text[], $2::text[], $3::jsonb[], $4::int[], $5::text[], $6::bytea[]) as x(t, c, k, v, r, h)
     on conflict (table_name, column_name, row_key) do update
        set version = excluded.version, reason = excluded.reason, value_sha256 = excluded.value_sha256,
            source = excluded.source, last_seen = now(), seen_count = pgrekey.quarantine.seen_count + 1`,
    [
      es.map((e) => e.table),
      es.map((e) => e.column),
      es.map((e) => JSON.stringify(e.rowKey)),
      es.map((e) => e.version),
      es.map((e) => e.reason),
      es.map((e) => e.sha256),
      source,
    ],
  );
}

/** Drops entries for values that have since been rewritten (e.g. after a key was fixed). */
export async function clearQuarantine(db: pg.ClientBase | pg.Pool, table: string, keys: { column: string; rowKey: object }[]): Promise<void> {
  if (keys.length === 0) return;
  await db.query(
    `delete from pgrekey.quarantine q using unnest($2::text[], $3::jsonb[]) as x(c, k)
      where q.table_name = $1 and q.column_name = x.c and q.row_key = x.k`,
    [table, keys.map((k) => k.column), keys.map((k) => JSON.stringify(k.rowKey))],
  );
}

export async function countQuarantine(db: pg.ClientBase | pg.Pool, table?: string): Promise<number> {
  const r = await db.query<{ n: string }>(`select count(*) as n from pgrekey.quarantine where $1::text is null or table_name = $1`, [table ?? null]);
  return Number(r.rows[0]!.n);
}

export interface QuarantineSummary {
  table: string;
  column: string;
  version: number | null;
  reason: string;
  count: number;
}

export async function summarizeQuarantine(db: pg.ClientBase | pg.Pool): Promise<QuarantineSummary[]> {
  return (
    await db.query<QuarantineSummary>(
      `select table_name as table, column_name as column, version, reason, count(*)::int as count
         from pgrekey.quarantine group by 1, 2, 3, 4 order by 1, 2, 3, 4`,
    )
  ).rows;
}
