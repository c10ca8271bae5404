import type pg from 'pg';
import { STATE_SCHEMA } from '../db/migrate.js';
import { displayName, quoteIdent, type QualifiedName } from '../db/ident.js';

/** A column that may hold `v<N>:` envelopes: text-like (text, varchar, char, citext, domains over them), or json/jsonb. */
export interface CandidateColumn {
  name: string;
  /** As PostgreSQL shows it: `character varying(200)`, `my_domain`. */
  type: string;
  /** json or jsonb (envelopes may sit inside as strings: reported, never configured). */
  json: boolean;
  /** pg-rekey can rewrite it (text, varchar, citext); char(n) pads and is not rewritable as is. */
  rewritable: boolean;
  /** Why this role cannot read it, or null. */
  unreadable: string | null;
}

/** A relation that stores rows (table, partition, INHERITS child, materialized view, foreign table) with candidate columns. */
export interface CandidateRelation extends QualifiedName {
  oid: number;
  display: string;
  kind: 'table' | 'partition' | 'matview' | 'foreign table';
  /** What `tables:` would name: the partition root for a partition, else the relation. */
  configName: string;
  /** Table-level SELECT (the ctid chunks of --full need it; column grants do not cover ctid). */
  tableSelect: boolean;
  /** A materialized view created WITH NO DATA (holds nothing until REFRESH). */
  unpopulated: boolean;
  /** Why the relation cannot be read at all (schema USAGE, SELECT, row security), or null. */
  unreadable: string | null;
  columns: CandidateColumn[];
}

interface Row {
  oid: number;
  schema: string;
  name: string;
  relkind: string;
  root_schema: string | null;
  root_name: string | null;
  usage: boolean;
  tsel: boolean;
  rls: boolean;
  forced: boolean;
  owner: boolean;
  bypass: boolean;
  populated: boolean;
  col: string;
  shown: string;
  base: string;
  category: string;
  csel: boolean;
}

/**
 * Every schema except pg-rekey's own state schema, the system ones and other sessions'
 * temporary schemas: relations that store rows, with their text-like and json columns, and
 * what this role may read. Nothing readable is left out without a reason: a relation or
 * column this role cannot read is returned with `unreadable` set, to be reported as not checked.
 */
export async function listCandidates(db: pg.Pool | pg.ClientBase): Promise<CandidateRelation[]> {
  const r = await db.query<Row>(
    `with recursive base(oid, base) as (
       select t.oid, t.oid from pg_type t where t.typtype <> 'd'
       union all
       select d.oid, b.base from pg_type d join base b on d.typbasetype = b.oid where d.typtype = 'd')
     select c.oid::int as oid, n.nspname as schema, c.relname as name, c.relkind::text as relkind,
            rn.nspname as root_schema, rc.relname as root_name,
            has_schema_privilege(n.oid, 'USAGE') as usage, has_table_privilege(c.oid, 'SELECT') as tsel,
            c.relrowsecurity as rls, c.relforcerowsecurity as forced, pg_has_role(c.relowner, 'USAGE') as owner,
            (select rolsuper or rolbypassrls from pg_roles where rolname = current_user) as bypass,
            c.relispopulated as populated,
            a.attname as col, format_type(a.atttypid, a.atttypmod) as shown, bt.typname::text as base, bt.typcategory::text as category,
            has_column_privilege(c.oid, a.attnum, 'SELECT') as csel
       from pg_class c
       join pg_namespace n on n.oid = c.relnamespace
       join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
       join base b on b.oid = a.atttypid
       join pg_type bt on bt.oid = b.base
       left join pg_class rc on c.relispartition and rc.oid = pg_partition_root(c.oid)
       left join pg_namespace rn on rn.oid = rc.relnamespace
      where c.relkind in ('r', 'm', 'f')
        and c.relpersistence <> 't'
        and n.nspname not in ('pg_catalog', 'information_schema', $1)
        and n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
        and ((bt.typcategory = 'S' and bt.typname <> 'name') or bt.typname in ('json', 'jsonb'))
      order by n.nspname, c.relname, a.attnum`,
    [STATE_SCHEMA],
  );
  const byOid = new Map<number, CandidateRelation>();
  const role = r.rows.length ? (await db.query<{ u: string }>(`select current_user as u`)).rows[0]!.u : '';
  for (const x of r.rows) {
    let rel = byOid.get(x.oid);
    if (!rel) {
      const display = displayName({ schema: x.schema, name: x.name });
      const kind = x.relkind === 'm' ? 'matview' : x.relkind === 'f' ? 'foreign table' : x.root_name && x.root_schema ? 'partition' : 'table';
      rel = {
        oid: x.oid,
        schema: x.schema,
        name: x.name,
        display,
        kind,
        configName: x.root_name && x.root_schema ? displayName({ schema: x.root_schema, name: x.root_name }) : display,
        tableSelect: x.tsel,
        unpopulated: x.relkind === 'm' && !x.populated,
        unreadable: relationUnreadable(x, role),
        columns: [],
      };
      byOid.set(x.oid, rel);
    }
    const json = x.base === 'json' || x.base === 'jsonb';
    rel.columns.push({
      name: x.col,
      type: x.shown,
      json,
      rewritable: !json && ['text', 'varchar', 'citext'].includes(x.base),
      unreadable: x.csel ? null : `role ${role} lacks SELECT on this column (GRANT SELECT (${x.col}) ON ${rel.display} TO ${role})`,
    });
  }
  for (const rel of byOid.values()) {
    if (!rel.unreadable && !rel.tableSelect && rel.columns.every((c) => c.unreadable)) {
      rel.unreadable = `role ${role} lacks SELECT on ${rel.display} (GRANT SELECT ON ${rel.display} TO ${role})`;
    }
  }
  return [...byOid.values()];
}

function relationUnreadable(x: Row, role: string): string | null {
  const rel = displayName({ schema: x.schema, name: x.name });
  if (!x.usage) return `role ${role} lacks USAGE on schema ${x.schema} (GRANT USAGE ON SCHEMA ${quoteIdent(x.schema)} TO ${role})`;
  if (x.relkind === 'f') return 'a foreign table: its rows live on another server; run discover there';
  // Row security would hide rows (sessions run with row_security = off, so a read raises instead of counting part of the table).
  if (x.rls && !x.bypass && (!x.owner || x.forced)) return `row level security${x.forced ? ' (FORCE)' : ''} would hide rows of ${rel} from role ${role}: run as a role with BYPASSRLS${x.forced ? '' : ' or the owner'}`;
  return null;
}
