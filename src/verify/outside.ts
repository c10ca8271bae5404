import type pg from 'pg';
import type { TableInfo } from '../db/catalog.js';
import { displayName, quoteQualified, type QualifiedName } from '../db/ident.js';
import { countedLeaves } from '../db/unlogged.js';
import { countLeaves, type ColumnCounts } from './count-versions.js';

/**
 * A relation that was a leaf of a configured table (pgrekey.sweep_segment holds a row for every
 * relation ever swept for it) and is not any more: a partition detached, an INHERITS child
 * unlinked (NO INHERIT), maybe renamed since. Nothing streams, sweeps or counts it as part of a
 * table now; the old-version values it still holds would be lost with the old key. verify and
 * run's convergence hold back until the operator adds it to `tables:` or lists it in `ignore:`.
 */
export interface OutsideRelation {
  /** Its name now. */
  relation: string;
  /** The configured table it was a leaf of. */
  wasPartOf: string;
  /** Listed in `ignore:` (by its name now or the one it had as a leaf). */
  ignored: boolean;
  /** Per configured column of that table still present in it; null when it could not be counted. */
  columns: ColumnCounts[] | null;
  /** Values not at the target version; null when it could not be counted. */
  remaining: number | null;
  /** Why it could not be counted. */
  error: string | null;
}

/** True when the relation keeps a count of 0 from being a proof: not ignored, and holding old-version values (or not countable). */
export function blocksConvergence(o: OutsideRelation): boolean {
  return !o.ignored && (o.remaining === null || o.remaining > 0);
}

/**
 * The relations outside the configured tables that were leaves of one of them, counted. Empty
 * when the state schema has no record of leaves (setup has not run, or predates it).
 */
export async function findOutsideRelations(db: pg.Pool, tables: readonly TableInfo[], target: number, ignore: readonly QualifiedName[]): Promise<OutsideRelation[]> {
  if (tables.length === 0) return [];
  const state = (
    await db.query<{ segments: boolean; relid: boolean }>(
      `select to_regclass('pgrekey.sweep_segment') is not null as segments,
              exists (select 1 from pg_attribute where attrelid = to_regclass('pgrekey.sweep_segment') and attname = 'relid' and not attisdropped) as relid`,
    )
  ).rows[0]!;
  if (!state.segments) return [];
  // By oid (sql/006: follows a rename), else (state from before it) by the name it had.
  const rows = (
    await db.query<{ table_name: string; relation: string; oid: number; schema: string; name: string; relkind: string }>(
      `select distinct on (c.oid) s.table_name, s.relation, c.oid::int as oid, n.nspname as schema, c.relname as name, c.relkind::text as relkind
         from pgrekey.sweep_segment s
         join pg_class c on c.oid = ${state.relid ? 'coalesce(s.relid, to_regclass(s.relation))' : 'to_regclass(s.relation)'}
         join pg_namespace n on n.oid = c.relnamespace
        where s.table_name = any($1::text[])
          and not exists (select 1 from unnest($2::text[]) q where to_regclass(q) = c.oid)
        order by c.oid, s.relation`,
      [tables.map((t) => t.display), tables.flatMap((t) => countedLeaves(t).map(quoteQualified))],
    )
  ).rows;
  const ignored = new Set(ignore.map(displayName));
  const out: OutsideRelation[] = [];
  for (const r of rows) {
    const leaf = { schema: r.schema, name: r.name };
    const relation = displayName(leaf);
    const table = tables.find((t) => t.display === r.table_name)!;
    const o: OutsideRelation = { relation, wasPartOf: table.display, ignored: ignored.has(relation) || ignored.has(r.relation), columns: null, remaining: null, error: null };
    out.push(o);
    if (r.relkind !== 'r') {
      o.error = `not a table any more (relkind ${r.relkind})`;
      continue;
    }
    try {
      // The table's configured columns that it still has (a column dropped from it took its values along).
      const present = (
        await db.query<{ c: string }>(`select attname::text as c from pg_attribute where attrelid = $1::oid and attnum > 0 and not attisdropped and attname = any($2::text[])`, [
          r.oid,
          table.config.columns,
        ])
      ).rows.map((x) => x.c);
      const cols = table.config.columns.filter((c) => present.includes(c));
      o.columns = cols.length ? await countLeaves(db, relation, [leaf], cols, target) : [];
      o.remaining = o.columns.reduce((n, c) => n + c.nonTarget, 0);
    } catch (e) {
      o.error = `cannot count it: ${(e as Error).message}`;
    }
  }
  return out.sort((a, b) => a.relation.localeCompare(b.relation));
}

/** One line per relation that blocks convergence, with what the operator can do. */
export function outsideProblems(outside: readonly OutsideRelation[]): string[] {
  return outside.filter(blocksConvergence).map(
    (o) =>
      `${o.relation} was a leaf of ${o.wasPartOf} and is not any more (detached, NO INHERIT), ` +
      (o.remaining === null ? `and could not be counted (${o.error})` : `and holds ${o.remaining} old-version value(s)`) +
      `: nothing streams or sweeps it now; add it to \`tables:\` (then \`pg-rekey setup\`) to rotate it, or, if its values may stay unreadable without the old key, list it under \`ignore:\``,
  );
}
