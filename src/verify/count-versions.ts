import type pg from 'pg';
import { versionLabel } from '../crypto/envelope.js';
import { relationSize, type TableInfo } from '../db/catalog.js';
import { displayName, quoteIdent, quoteQualified, type QualifiedName } from '../db/ident.js';
import { envelopeHead, versionExpr } from '../backfill/sweep-sql.js';
import { countLiveQuarantine } from '../state/quarantine.js';
import { countedLeaves } from '../db/unlogged.js';

export interface ColumnCounts {
  table: string;
  column: string;
  /** Values by key version, e.g. { v1: 10, v2: 990 }. */
  byVersion: Record<string, number>;
  notOurs: number;
  nulls: number;
  /** Values of any version other than the target (quarantined ones included). */
  nonTarget: number;
  /** Entries in pgrekey.quarantine for this column (null when setup has not run). */
  quarantined: number | null;
  /** Non-target values per leaf relation ("schema.name"), where there are any. */
  nonTargetByLeaf: Record<string, number>;
}

/** Blocks per counting query: short statements, no long-lived snapshot. */
const VERIFY_CHUNK_BLOCKS = 16_384;
const NULL_CODE = -1;
const NOT_OURS_CODE = 0;

/**
 * Counts values per version for every configured column, reading each
 * relation in ctid block ranges, one short statement each.
 */
export async function countVersions(db: pg.Pool | pg.ClientBase, tables: TableInfo[], target: number, withQuarantine: boolean): Promise<ColumnCounts[]> {
  const out: ColumnCounts[] = [];
  for (const table of tables) {
    // Unlogged leaves too: run does not follow them, but what they hold is not converged.
    const acc = await countLeaves(db, table.display, countedLeaves(table), table.config.columns, target);
    if (withQuarantine) {
      // Only entries that still describe a stored value: not the ones the application has overwritten or deleted since.
      const live = await countLiveQuarantine(db, table);
      for (const a of acc) a.quarantined = live.get(a.column) ?? 0;
    }
    out.push(...acc);
  }
  return out;
}

/** Counts per column over the given relations, reported under `label` (a configured table, or a relation outside them). */
export async function countLeaves(db: pg.Pool | pg.ClientBase, label: string, leaves: readonly QualifiedName[], cols: readonly string[], target: number): Promise<ColumnCounts[]> {
  const acc: ColumnCounts[] = cols.map((column) => ({ table: label, column, byVersion: {}, notOurs: 0, nulls: 0, nonTarget: 0, quarantined: null, nonTargetByLeaf: {} }));
  for (const leaf of leaves) {
    // After a sweep nearly every value is at the target: tested first, by its prefix.
    for (const row of await countRelation(db, leaf, cols, [target])) {
      const a = acc[row.col]!;
      if (row.code === NULL_CODE) a.nulls += row.n;
      else if (row.code === NOT_OURS_CODE) a.notOurs += row.n;
      else {
        const version = versionLabel(row.code);
        a.byVersion[version] = (a.byVersion[version] ?? 0) + row.n;
        if (row.code !== target) {
          a.nonTarget += row.n;
          const name = displayName(leaf);
          a.nonTargetByLeaf[name] = (a.nonTargetByLeaf[name] ?? 0) + row.n;
        }
      }
    }
  }
  return acc;
}

/**
 * Values per (column index, version code) of one relation, `FROM ONLY` it; nothing for a relation
 * that no longer exists. `fast`: versions tested by their `vN:` prefix before the regular expression
 * (the same code: a value that starts with `vN:` is version N), which costs ~5 us per row and
 * made the recount after a 1M-row backfill take 5 s; with the target first it takes ~1 s.
 */
export async function countRelation(db: pg.Pool | pg.ClientBase, leaf: QualifiedName, cols: readonly string[], fast: readonly number[] = []): Promise<{ col: number; code: number; n: number }[]> {
  const rel = quoteQualified(leaf);
  const values = cols.map((c, i) => `(${i}, t.${quoteIdent(c)})`).join(', ');
  const head = envelopeHead('x.val');
  const sql = (openEnded: boolean) => {
    const p = openEnded ? 2 : 3;
    const quick = fast.map((_, i) => ` when starts_with(${head}, $${p + 2 * i}::text) then $${p + 2 * i + 1}::int`).join('');
    return `
    select x.col, case when x.val is null then ${NULL_CODE}${quick} else coalesce(${versionExpr('x.val')}, ${NOT_OURS_CODE}) end as code, count(*)::float8 as n
      from only ${rel} t cross join lateral (values ${values}) as x(col, val)
     where t.ctid >= format('(%s,0)', $1::bigint)::tid ${openEnded ? '' : `and t.ctid < format('(%s,0)', $2::bigint)::tid`}
     group by 1, 2`;
  };
  const quickArgs = fast.flatMap((v) => [`v${v}:`, v]);
  const rows: { col: number; code: number; n: number }[] = [];
  for (let start = 0; ; start += VERIFY_CHUNK_BLOCKS) {
    // A table dropped meanwhile (run learns of it from its catalog watch a moment later) has nothing left to count.
    const total = (await relationSize(db, rel)).blocks;
    if (total === null) return rows;
    const end = start + VERIFY_CHUNK_BLOCKS;
    const last = end >= total;
    const r = await db.query<{ col: number; code: number; n: number }>(sql(last), [...(last ? [start] : [start, end]), ...quickArgs]);
    rows.push(...r.rows);
    if (last) return rows;
  }
}
