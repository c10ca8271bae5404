import type pg from 'pg';
import type { TableInfo } from './catalog.js';
import { displayName, quoteQualified } from './ident.js';

/**
 * Constraints that can reject a rewrite, found by setup before anything runs (issue 9, item 6):
 * CHECK constraints of a leaf that involve a configured column, CHECK constraints of the
 * column's domain at every nesting level, and a nondeterministic collation on the column.
 *
 * These are warnings, not refusals: a rewritten value that violates a constraint is not written;
 * the UPDATE raises (23514), the sweep and the stream redo that batch row by row in savepoints,
 * the row is quarantined as `update-raised:23514:<constraint>` and everything else goes on. Only
 * the operator knows whether the constraint is wrong (a `like 'v1:%'` check) or the value is; the
 * quarantine names the row. A nondeterministic collation rejects nothing: pg-rekey reads and
 * compares the stored bytes (COLLATE "C"), so the collation changes neither what it finds nor
 * what its compare-and-swap matches.
 */

export interface ConstraintNote {
  table: string;
  column: string;
  kind: 'check' | 'domain' | 'collation';
  /** For the operator: what it is and what will happen. */
  note: string;
}

const QUARANTINED =
  'a rewritten value that violates it is not written: that row is quarantined with the reason update-raised:23514:<constraint> (see `pg-rekey status` and pgrekey.quarantine) and the other rows go on';

export async function constraintNotes(db: pg.Pool | pg.ClientBase, tables: readonly TableInfo[]): Promise<ConstraintNote[]> {
  const out: ConstraintNote[] = [];
  for (const t of tables) {
    const cols = t.config.columns;
    // Table CHECK constraints, on the table and on each leaf (a child may add its own), once per name and definition.
    const rels = [t.quoted, ...t.leaves.map(quoteQualified)];
    const checks = await db.query<{ rel: number; name: string; def: string; cols: string[] }>(
      `select x.ord::int as rel, k.conname::text as name, pg_get_constraintdef(k.oid) as def,
              array(select a.attname::text from pg_attribute a where a.attrelid = k.conrelid and a.attnum = any(k.conkey) and a.attname = any($2::text[]) order by a.attnum) as cols
         from unnest($1::text[]) with ordinality x(rel, ord)
         join pg_constraint k on k.conrelid = to_regclass(x.rel) and k.contype = 'c'
        where exists (select 1 from pg_attribute a where a.attrelid = k.conrelid and a.attnum = any(k.conkey) and a.attname = any($2::text[]))
        order by x.ord, k.conname`,
      [rels, cols],
    );
    const seen = new Map<string, { cols: string[]; def: string; on: string[] }>();
    for (const r of checks.rows) {
      const on = r.rel === 1 ? t.display : displayName(t.leaves[r.rel - 2]!);
      const k = `${r.name}\0${r.def}`;
      const s = seen.get(k);
      if (s) {
        if (!s.on.includes(on)) s.on.push(on);
      } else seen.set(k, { cols: r.cols, def: r.def, on: [on] });
    }
    for (const [k, s] of seen) {
      const name = k.split('\0')[0]!;
      const where = s.on.length <= 3 ? s.on.join(', ') : `${s.on.length} relations`;
      out.push({ table: t.display, column: s.cols.join(', '), kind: 'check', note: `${t.display}.${s.cols.join(', ')}: CHECK constraint ${name} (${s.def}) on ${where}: ${QUARANTINED}` });
    }

    // Domains, at every level (a domain over a domain over text), with their CHECK constraints; and the collation.
    const types = await db.query<{ col: string; depth: number; type: string; domain: boolean; checks: string[] }>(
      `with recursive chain(col, oid, depth) as (
         select a.attname::text, a.atttypid, 0 from pg_attribute a where a.attrelid = $1 and a.attname = any($2::text[]) and not a.attisdropped
         union all select c.col, d.typbasetype, c.depth + 1 from chain c join pg_type d on d.oid = c.oid where d.typtype = 'd')
       select c.col, c.depth, format_type(c.oid, null) as type, t.typtype = 'd' as domain,
              array(select format('%s (%s)', k.conname, pg_get_constraintdef(k.oid)) from pg_constraint k where k.contypid = c.oid and k.contype = 'c' order by k.conname) as checks
         from chain c join pg_type t on t.oid = c.oid order by c.col, c.depth`,
      [t.oid, cols],
    );
    for (const col of cols) {
      const chain = types.rows.filter((r) => r.col === col);
      const domains = chain.filter((r) => r.domain);
      if (domains.length === 0) continue;
      const checksOf = domains.flatMap((d) => d.checks.map((c) => `${c} of ${d.type}`));
      const over = chain.slice(1).map((r) => r.type).join(' over ');
      out.push({
        table: t.display,
        column: col,
        kind: 'domain',
        note:
          `${t.display}.${col}: type ${chain[0]!.type} is a domain over ${over}` +
          (checksOf.length ? ` with CHECK constraint(s) ${checksOf.join(', ')}: ${QUARANTINED}` : ' without CHECK constraints: nothing to do'),
      });
    }
    const collations = await db.query<{ col: string; collation: string; provider: string }>(
      `select a.attname::text as col, co.collname::text as collation, co.collprovider::text as provider
         from pg_attribute a join pg_collation co on co.oid = a.attcollation
        where a.attrelid = $1 and a.attname = any($2::text[]) and not a.attisdropped and not co.collisdeterministic`,
      [t.oid, cols],
    );
    for (const c of collations.rows) {
      out.push({
        table: t.display,
        column: c.col,
        kind: 'collation',
        note:
          `${t.display}.${c.col}: nondeterministic collation ${c.collation} (provider ${c.provider === 'i' ? 'icu' : c.provider}): pg-rekey reads and compares the stored bytes (COLLATE "C"), ` +
          'so the collation changes neither which values it finds nor what its compare-and-swap matches; nothing to do',
      });
    }
  }
  return out;
}
