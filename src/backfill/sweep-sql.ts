import { quoteIdent, quoteQualified, type QualifiedName } from '../db/ident.js';
import type { ChunkRange } from './chunk-plan.js';

/**
 * SQL text for one relation. Only quoted identifiers are interpolated; every
 * value (block numbers, versions, ctids, stored values) is a $n parameter.
 */

/**
 * The key version of a stored value as an int, or NULL when it is not ours.
 * substr() reads a TOASTed value by slice, so a 10 MB value is not fetched
 * whole just to look at its prefix (regexp or left() would detoast it all).
 * COLLATE "C" everywhere pg-rekey matches or compares a stored value: bytes, whatever the
 * column's collation (a nondeterministic one refuses regular expressions and starts_with, and
 * its equality could match a value that differs in bytes).
 */
export function versionExpr(columnSql: string): string {
  return `substring(${envelopeHead(columnSql)} from '^v([1-9][0-9]{0,8}):')::int`;
}

/** A stored value's first 12 characters, as bytes (see versionExpr): what every prefix test looks at. */
export function envelopeHead(columnSql: string): string {
  return `substr(${columnSql}, 1, 12) collate "C"`;
}

/**
 * Rows of the chunk with at least one configured column at a non-target
 * version. $1 block start, $2 block end (omitted when open-ended), then
 * $n target version, $n+1 versions to rewrite (or null = all), and, when
 * `keyColumns` is given, $n+2 their names: each row's key as a jsonb object.
 * The key is only needed for quarantine entries; building it for every row
 * costs PostgreSQL and Node time, so the sweep asks for it only when the
 * table already has quarantined values (and looks keys up by ctid otherwise).
 * Then the prefixes of selectChunkParams (`fast`: how many wanted ones).
 */
export function selectChunkSql(leaf: QualifiedName, columns: readonly string[], keyColumns: readonly string[] | null, range: ChunkRange, fast = 0): string {
  const rel = quoteQualified(leaf);
  const bounds =
    range.end === null
      ? `t.ctid >= format('(%s,0)', $1::bigint)::tid`
      : `t.ctid >= format('(%s,0)', $1::bigint)::tid and t.ctid < format('(%s,0)', $2::bigint)::tid`;
  const p = range.end === null ? 2 : 3;
  const k = p + 2 + (keyColumns ? 1 : 0);
  // A regexp match and a prefix test on the first 12 characters: ~4x cheaper per row than
  // extracting the version with versionExpr (measured on 500k rows: 0.23 s against 0.9 s).
  const ours = `coalesce('^v(' || array_to_string($${p + 1}::int[], '|') || '):', '^v[1-9][0-9]{0,8}:')`;
  const target = `'v' || $${p}::int || ':'`;
  // Before the regexp, prefix tests with text parameters (selectChunkParams): the target's `vN:`
  // (not wanted) and each wanted version's, which is every value a sweep usually meets: the
  // regexp alone cost ~2.5 us per row (1M rows: 2.8 s of 3.1 s), these ~1 us. Exactly the same
  // rows: a value that starts with `vN:` is version N.
  const wanted = columns
    .map((c) => {
      const head = envelopeHead(`t.${quoteIdent(c)}`);
      const quick = Array.from({ length: fast }, (_, i) => ` when starts_with(${head}, $${k + 1 + i}::text) then true`).join('');
      return `case when starts_with(${head}, $${k}::text) then false${quick} else (${head} ~ ${ours} and not starts_with(${head}, ${target})) end`;
    })
    .join(' or ');
  const key = keyColumns ? `${rowKeySql(keyColumns, `$${p + 2}`)} as row_key, ` : '';
  return `select t.ctid::text as ctid, ${key}${columns.map((c) => `t.${quoteIdent(c)}`).join(', ')}
  from only ${rel} t
 where ${bounds} and (${wanted})`;
}

/**
 * The parameters of selectChunkSql, in order, and how many wanted prefixes they carry (its `fast`):
 * every version with a key that the sweep rewrites (not the target; only `onlyVersions` when given).
 */
export function selectChunkParams(
  range: ChunkRange,
  target: number,
  onlyVersions: ReadonlySet<number> | undefined,
  keyColumns: readonly string[] | null,
  keyed: readonly number[],
): { values: unknown[]; fast: number } {
  const wanted = keyed.filter((v) => v !== target && (!onlyVersions || onlyVersions.has(v)));
  return {
    values: [
      range.start,
      ...(range.end === null ? [] : [range.end]),
      target,
      onlyVersions ? [...onlyVersions] : null,
      ...(keyColumns ? [keyColumns] : []),
      `v${target}:`,
      ...wanted.map((v) => `v${v}:`),
    ],
    fast: wanted.length,
  };
}

/** A row's key as a jsonb object {"column": "value as text"}, with the column names passed as `namesParam` (text[]). */
function rowKeySql(keyColumns: readonly string[], namesParam: string): string {
  return `jsonb_object(${namesParam}::text[], array[${keyColumns.map((k) => `t.${quoteIdent(k)}::text`).join(', ')}])`;
}

/**
 * The keys of rows still at these ctids (TID Scan): $1 tid[], $2 key column names; with
 * the sha256 of each configured column's value, so that a ctid now holding another row
 * (its line pointer reused after the row was updated and pruned) is not taken for it.
 */
export function rowKeysByCtidSql(leaf: QualifiedName, keyColumns: readonly string[], columns: readonly string[]): string {
  const shas = columns.map((c, i) => `sha256(convert_to(t.${quoteIdent(c)}::text, 'UTF8')) as s${i}`).join(', ');
  return `select t.ctid::text as ctid, ${rowKeySql(keyColumns, '$2')} as row_key, ${shas}
  from only ${quoteQualified(leaf)} t
 where t.ctid = any($1::tid[])`;
}

/**
 * Batched compare-and-swap. A row is written only if it is still the same
 * tuple version (ctid) and every column being rewritten still holds the value
 * that was decrypted. If an application updated the row in between, the new
 * version has another ctid, the CAS matches nothing, and the stream handles
 * the new version. Under READ COMMITTED a row updated while we wait for its
 * lock is re-checked against these conditions (EvalPlanQual), so the same holds.
 * $1 tid[], then per column ($old text[], $new text[]), then, with `range`,
 * the chunk's block start (and end unless open-ended), then, with
 * `keyColumns`, their names (text[]).
 *
 * Returns, per row written: its ctid as read (`tid`), and per configured
 * column `k<i>`, what is stored now (in RETURNING, `t` is the row as stored,
 * after BEFORE triggers): 0 the new value (or the column was not rewritten),
 * 1 still the old value (a trigger kept OLD.c: the rewrite did not stick),
 * 2 another value (a trigger changed it). Compared byte for byte (COLLATE "C"),
 * whatever the column's collation. With `keyColumns`, a row where a column did
 * not get its new value also returns its key (`row_key`): its ctid has moved.
 *
 * Pass the chunk's range: every ctid comes from it, and the bound lets the
 * planner read only those blocks. With `ctid = any($1)` alone it prices each
 * tid as a random page read and picks a Seq Scan of the whole table for every
 * chunk once the table has fewer than roughly 4 blocks per tid (seen: 1,365
 * tids on a 1,900-block table; a default 256-block chunk of ~5,000 rows does
 * so on tables up to ~150 MB).
 */
export function casUpdateSql(leaf: QualifiedName, columns: readonly string[], range?: ChunkRange, keyColumns?: readonly string[]): string {
  const rel = quoteQualified(leaf);
  const names = columns.flatMap((_, i) => [`o${i}`, `n${i}`]);
  const arrays = columns.flatMap((_, i) => [`$${2 + 2 * i}::text[]`, `$${3 + 2 * i}::text[]`]);
  const { sets, guards } = casColumnsSql(columns);
  const p = 2 + 2 * columns.length;
  const bounds = !range
    ? ''
    : `t.ctid >= format('(%s,0)', $${p}::bigint)::tid and ` + (range.end === null ? '' : `t.ctid < format('(%s,0)', $${p + 1}::bigint)::tid and `);
  const keyParam = p + (!range ? 0 : range.end === null ? 1 : 2);
  const stored = (c: string, x: string) => `t.${quoteIdent(c)}::text = ${x} collate "C"`;
  const kept = columns.map((c, i) => `case when v.n${i} is null or ${stored(c, `v.n${i}`)} then 0 when ${stored(c, `v.o${i}`)} then 1 else 2 end as k${i}`);
  const allNew = columns.map((c, i) => `(v.n${i} is null or ${stored(c, `v.n${i}`)})`).join(' and ');
  const key = keyColumns ? `, case when ${allNew} then null else ${rowKeySql(keyColumns, `$${keyParam}`)} end as row_key` : '';
  return `update only ${rel} as t set ${sets}
  from unnest($1::tid[], ${arrays.join(', ')}) as v(tid, ${names.join(', ')})
 where ${bounds}t.ctid = any($1::tid[]) and t.ctid = v.tid and ${guards}
returning v.tid::text as tid, ${kept.join(', ')}${key}`;
}

/**
 * The column half of every compare-and-swap (sweep by ctid, stream by key): with the
 * batch unnested as `v(..., o0, n0, o1, n1, ...)`, set each column to its new value
 * where there is one, and require every column being rewritten to still hold its old value.
 */
export function casColumnsSql(columns: readonly string[]): { sets: string; guards: string } {
  return {
    sets: columns.map((c, i) => `${quoteIdent(c)} = coalesce(v.n${i}, t.${quoteIdent(c)})`).join(', '),
    guards: columns.map((c, i) => `(v.n${i} is null or t.${quoteIdent(c)}::text = v.o${i} collate "C")`).join(' and '),
  };
}
