import type pg from 'pg';
import { ConfigError } from '../errors.js';
import type { TableConfig } from '../config/load-config.js';
import { displayName, quoteQualified, type QualifiedName } from './ident.js';

/** A configured table as found in the catalog. */
export interface TableInfo {
  config: TableConfig;
  /** schema.table for humans and for pgrekey state rows. */
  display: string;
  /** "schema"."table" for SQL text. */
  quoted: string;
  oid: number;
  partitioned: boolean;
  /** Columns that identify a row for compare-and-swap and quarantine. */
  keyColumns: string[];
  keySource: 'primary key' | 'replica identity index';
  /** Relations the sweep scans: the table itself, or every leaf partition. */
  leaves: QualifiedName[];
}

interface ClassRow { oid: number; relkind: string; relreplident: string }
interface ColumnRow { attname: string; typname: string; category: string; shown: string }
interface KeyRow { indisprimary: boolean; indisreplident: boolean; cols: string[] }
interface LeafRow { schema: string; name: string }

// Text types whose values round-trip unchanged. char(n) pads with blanks and
// name truncates at 63 bytes: both would corrupt a ciphertext.
const ACCEPTED_TYPES = new Set(['text', 'varchar', 'citext']);

/**
 * Resolves every configured table and checks, all at once: it exists, each
 * column exists and is text-like, the table has a primary key or replica
 * identity index, and this role may SELECT and UPDATE it. Throws one
 * ConfigError listing every problem.
 */
export async function resolveTables(db: pg.Pool | pg.ClientBase, tables: readonly TableConfig[]): Promise<TableInfo[]> {
  const problems: string[] = [];
  const out: TableInfo[] = [];
  for (const t of tables) {
    const name = displayName(t);
    const cls = (
      await db.query<ClassRow>(
        `select c.oid::int as oid, c.relkind::text as relkind, c.relreplident::text as relreplident
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where n.nspname = $1 and c.relname = $2`,
        [t.schema, t.name],
      )
    ).rows[0];
    if (!cls) {
      problems.push(`${name}: no such table (names are case-sensitive when quoted; check the schema)`);
      continue;
    }
    if (cls.relkind !== 'r' && cls.relkind !== 'p') {
      problems.push(`${name}: is not a table (relkind ${cls.relkind}); configure the underlying table`);
      continue;
    }
    const cols = new Map(
      (
        await db.query<ColumnRow>(
          `select a.attname, coalesce(bt.typname, t.typname)::text as typname, t.typcategory::text as category,
                  format_type(a.atttypid, a.atttypmod) as shown
             from pg_attribute a
             join pg_type t on t.oid = a.atttypid
             left join pg_type bt on t.typtype = 'd' and bt.oid = t.typbasetype
            where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped`,
          [cls.oid],
        )
      ).rows.map((r) => [r.attname, r]),
    );
    for (const c of t.columns) {
      const col = cols.get(c);
      if (!col) problems.push(`${name}.${c}: no such column`);
      else if (!ACCEPTED_TYPES.has(col.typname)) {
        problems.push(`${name}.${c}: type ${col.shown} is not text-like; pg-rekey rewrites text or varchar columns only`);
      }
    }
    const key = await findKey(db, cls, name, problems);
    // Table-level SELECT (the sweep reads ctid, a system column that column grants
    // do not cover); UPDATE only on the configured columns is enough.
    const present = t.columns.filter((c) => cols.has(c));
    const privs = (
      await db.query<{ sel: boolean; upd: string[]; me: string }>(
        `select has_table_privilege($1::oid, 'SELECT') as sel, quote_ident(current_user) as me,
                array(select c from unnest($2::text[]) c where not has_column_privilege($1::oid, c, 'UPDATE')) as upd`,
        [cls.oid, present],
      )
    ).rows[0]!;
    if (!privs.sel) problems.push(`${name}: this role lacks SELECT on the table (GRANT SELECT ON ${name} TO ${privs.me}); see sql/roles.sql`);
    if (privs.upd.length) problems.push(`${name}: this role lacks UPDATE on column(s) ${privs.upd.join(', ')} (GRANT UPDATE (${privs.upd.join(', ')}) ON ${name} TO ${privs.me}); see sql/roles.sql`);
    const leaves =
      cls.relkind === 'p'
        ? (
            await db.query<LeafRow>(
              `select n.nspname as schema, c.relname as name
                 from pg_partition_tree($1::regclass) p
                 join pg_class c on c.oid = p.relid join pg_namespace n on n.oid = c.relnamespace
                where p.isleaf order by 1, 2`,
              [cls.oid],
            )
          ).rows
        : [{ schema: t.schema, name: t.name }];
    if (key) {
      out.push({
        config: t,
        display: name,
        quoted: quoteQualified(t),
        oid: cls.oid,
        partitioned: cls.relkind === 'p',
        keyColumns: key.cols,
        keySource: key.source,
        leaves,
      });
    }
  }
  if (problems.length) {
    throw new ConfigError(
      `${problems.length} problem(s) with the configured tables`,
      'fix the tables or the `tables:` section of the config, then run the command again',
      problems,
    );
  }
  return out;
}

async function findKey(
  db: pg.Pool | pg.ClientBase,
  cls: ClassRow,
  name: string,
  problems: string[],
): Promise<{ cols: string[]; source: TableInfo['keySource'] } | null> {
  const rows = (
    await db.query<KeyRow>(
      `select i.indisprimary, i.indisreplident,
              array(select a.attname::text from unnest(i.indkey) with ordinality k(attnum, ord)
                      join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum order by k.ord) as cols
         from pg_index i where i.indrelid = $1 and (i.indisprimary or i.indisreplident)`,
      [cls.oid],
    )
  ).rows;
  const pk = rows.find((r) => r.indisprimary);
  const ri = rows.find((r) => r.indisreplident);
  if (cls.relreplident === 'n') {
    problems.push(
      `${name}: REPLICA IDENTITY NOTHING; UPDATEs of a published table would fail. Run ALTER TABLE ${name} REPLICA IDENTITY DEFAULT (with a primary key) or USING INDEX <unique index>`,
    );
    return null;
  }
  if (cls.relreplident === 'i' && ri) return { cols: ri.cols, source: 'replica identity index' };
  if (pk) return { cols: pk.cols, source: 'primary key' };
  problems.push(
    `${name}: has neither a primary key nor a replica identity index; add a primary key, or ALTER TABLE ${name} REPLICA IDENTITY USING INDEX <unique not-null index>`,
  );
  return null;
}

export interface RelationSize {
  /** Size in blocks, fresh (relpages is a stale estimate); null when the relation no longer exists. */
  blocks: number | null;
  /** pg_relation_filenode: a table rewrite (VACUUM FULL, CLUSTER, ALTER TABLE ... TYPE) changes it. */
  node: string | null;
}

/** The size and file node of a relation given as quoted SQL text (e.g. `"public"."incidents"`). */
export async function relationSize(db: pg.Pool | pg.ClientBase, quoted: string): Promise<RelationSize> {
  const r = await db.query<{ blocks: string | null; node: string | null }>(
    `select (pg_relation_size(to_regclass($1)) / current_setting('block_size')::bigint)::bigint as blocks, pg_relation_filenode(to_regclass($1))::text as node`,
    [quoted],
  );
  const row = r.rows[0]!;
  return { blocks: row.blocks === null ? null : Number(row.blocks), node: row.node };
}
