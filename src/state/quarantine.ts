import type pg from 'pg';
import type { FailureReason } from '../crypto/rewrite.js';
import type { TableInfo } from '../db/catalog.js';
import { quoteIdent } from '../db/ident.js';

export interface QuarantineEntry {
  table: string;
  column: string;
  rowKey: Record<string, string | null>;
  version: number;
  /** A decryption failure (FailureReason) or a write that failed: 'update-raised:<SQLSTATE>[:constraint]', 'did-not-stick', 'not-applied'. */
  reason: FailureReason | `update-raised:${string}` | 'did-not-stick' | 'not-applied';
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

/**
 * The condition, on an entry `q` of `table`, that it still describes a stored value: the row
 * its key names exists and the column holds a value with the recorded sha256. An entry that
 * fails it is stale: the application has since overwritten the value (with a good one, a
 * target-version one, plaintext, NULL) or deleted the row, which the stream does not see as
 * a rewrite. Parameters: $1 table name (display), then $2.. the key columns' names, then one
 * per configured column. Key values are cast back to the key's type, so the primary key (or
 * replica identity) index finds the row.
 */
function liveEntrySql(table: TableInfo, keyTypes: readonly string[]): string {
  const keys = table.keyColumns.map((k, i) => `t.${quoteIdent(k)} = (q.row_key ->> $${2 + i}::text)::${keyTypes[i]}`);
  const first = 2 + table.keyColumns.length;
  const value = `case q.column_name ${table.config.columns.map((c, i) => `when $${first + i}::text then t.${quoteIdent(c)}::text`).join(' ')} end`;
  return `exists (select 1 from ${table.quoted} t where ${keys.join(' and ')} and sha256(convert_to(${value}, 'UTF8')) = q.value_sha256)`;
}

/** The key columns' types as SQL (format_type output, quoted by PostgreSQL where needed). */
async function keyColumnTypes(db: pg.ClientBase | pg.Pool, table: TableInfo): Promise<string[]> {
  const r = await db.query<{ attname: string; type: string }>(
    `select a.attname, format_type(a.atttypid, a.atttypmod) as type from pg_attribute a where a.attrelid = $1 and a.attname = any($2::text[])`,
    [table.oid, table.keyColumns],
  );
  return table.keyColumns.map((k) => {
    const t = r.rows.find((row) => row.attname === k);
    if (!t) throw new Error(`key column ${k} of ${table.display} not found`);
    return t.type;
  });
}

const liveParams = (table: TableInfo) => [table.display, ...table.keyColumns, ...table.config.columns];

/**
 * Live entries of `table` per column (stale ones are not counted). If that cannot be told
 * (e.g. an entry's key no longer casts to the key's type): every entry of the table.
 */
export async function countLiveQuarantine(db: pg.ClientBase | pg.Pool, table: TableInfo): Promise<Map<string, number>> {
  const byColumn = async (sql: string, params: unknown[]) =>
    new Map((await db.query<{ column_name: string; n: number }>(sql, params)).rows.map((row) => [row.column_name, row.n]));
  try {
    const types = await keyColumnTypes(db, table);
    const params = liveParams(table);
    // An entry keyed by other columns than the table's current key cannot be checked: it counts.
    return await byColumn(
      `select q.column_name, count(*)::float8 as n from pgrekey.quarantine q
        where q.table_name = $1 and (not q.row_key ?& $${params.length + 1}::text[] or ${liveEntrySql(table, types)}) group by 1`,
      [...params, table.keyColumns],
    );
  } catch {
    return byColumn(`select column_name, count(*)::float8 as n from pgrekey.quarantine where table_name = $1 group by 1`, [table.display]);
  }
}

/** Deletes the stale entries of `table` (of its configured columns); returns how many. */
export async function pruneQuarantine(db: pg.ClientBase | pg.Pool, table: TableInfo): Promise<number> {
  const types = await keyColumnTypes(db, table);
  const params = liveParams(table);
  const r = await db.query(
    // Only entries keyed by the table's current key columns: after a key change, `row_key ->> name`
    // would be NULL for every entry and all of them would look stale.
    `delete from pgrekey.quarantine q
      where q.table_name = $1 and q.column_name = any($${params.length + 1}::text[]) and q.row_key ?& $${params.length + 2}::text[]
        and not ${liveEntrySql(table, types)}`,
    [...params, table.config.columns, table.keyColumns],
  );
  return r.rowCount ?? 0;
}
