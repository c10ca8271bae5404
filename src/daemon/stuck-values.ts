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
    `select t.ctid::text || ':' || x.col || ':' || md5(x.val) || ':' || t.xmin::text as id
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

/** Where a stuck value sits, for the log: row version, column (by position), the xid that wrote it. Never the value. */
export interface StuckCell {
  ctid: string;
  column: number;
  xmin: string;
}

/** Tracks, per leaf, the old-value identities of the last check; says which leaves still hold some of the same ones. */
export class StuckValues {
  private last = new Map<string, Set<string>>();
  private found = new Map<string, string[]>();

  /** Records this check's identities per leaf; returns the leaves where one seen at the previous check is still there. */
  observe(now: Map<string, Set<string>>): string[] {
    this.found = new Map();
    for (const [leaf, ids] of now) {
      const before = this.last.get(leaf);
      const same = before ? [...ids].filter((id) => before.has(id)) : [];
      if (same.length) this.found.set(leaf, same);
    }
    this.last = now;
    return [...this.found.keys()];
  }

  /** Up to `n` of the cells the last observe found stuck in `leaf` (identities `ctid:column:md5:xmin`). */
  cells(leaf: string, n = 10): StuckCell[] {
    return (this.found.get(leaf) ?? []).slice(0, n).map((id) => {
      const [ctid = '', column = '', , xmin = ''] = id.split(':');
      return { ctid, column: Number(column), xmin };
    });
  }

  clear(): void {
    this.last.clear();
  }

  forget(leaf: string): void {
    this.last.delete(leaf);
  }
}
