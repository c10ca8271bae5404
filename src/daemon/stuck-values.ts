import type pg from 'pg';
import type { TableInfo } from '../db/catalog.js';
import { displayName, quoteIdent, quoteQualified } from '../db/ident.js';
import { versionExpr } from '../backfill/sweep-sql.js';

/**
 * Old-version values that stay where they are: the same row version (ctid) holding the same
 * value (md5) at two convergence checks in a row, with the sweep complete and the stream caught
 * up in between. A stale writer's values do not qualify (the stream rewrites each within
 * milliseconds, so a later check finds other rows); what slipped past both the sweep and the
 * stream does. Identities only: never the values.
 */
const PER_LEAF = 1_000;

export async function oldValueIdentities(db: pg.Pool, table: TableInfo, leaf: string, target: number): Promise<Set<string>> {
  const l = table.leaves.find((x) => displayName(x) === leaf);
  if (!l) return new Set();
  const cols = table.config.columns;
  const values = cols.map((c, i) => `(${i}, t.${quoteIdent(c)})`).join(', ');
  // Quarantined values stay put by design (they wait for an operator): they are not "stuck".
  const r = await db.query<{ id: string }>(
    `select t.ctid::text || ':' || x.col || ':' || md5(x.val) as id
       from only ${quoteQualified(l)} t cross join lateral (values ${values}) as x(col, val)
      where ${versionExpr('x.val')} <> $1
        and not exists (select 1 from pgrekey.quarantine q
                         where q.table_name = $2 and q.column_name = ($3::text[])[x.col + 1]
                           and q.value_sha256 = sha256(convert_to(x.val, 'UTF8')))
      limit ${PER_LEAF}`,
    [target, table.display, cols],
  );
  return new Set(r.rows.map((x) => x.id));
}

/** Tracks, per leaf, the old-value identities of the last check; says which leaves still hold some of the same ones. */
export class StuckValues {
  private last = new Map<string, Set<string>>();

  /** Records this check's identities per leaf; returns the leaves where one seen at the previous check is still there. */
  observe(now: Map<string, Set<string>>): string[] {
    const stuck: string[] = [];
    for (const [leaf, ids] of now) {
      const before = this.last.get(leaf);
      if (before && [...ids].some((id) => before.has(id))) stuck.push(leaf);
    }
    this.last = now;
    return stuck;
  }

  clear(): void {
    this.last.clear();
  }

  forget(leaf: string): void {
    this.last.delete(leaf);
  }
}
