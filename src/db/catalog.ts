import type pg from 'pg';
import { ConfigError } from '../errors.js';
import type { TableConfig } from '../config/load-config.js';
import { didYouMean } from '../config/suggest.js';
import { displayName, quoteIdent, quoteQualified, type QualifiedName } from './ident.js';

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
  /**
   * Every relation that can hold the table's rows, each swept, streamed and counted on its own
   * (`FROM ONLY`): the table itself, or every leaf partition; for a table with legacy INHERITS
   * children (any depth), the table itself and every descendant (a parent holds rows of its own).
   */
  leaves: QualifiedName[];
  /**
   * The leaves that are UNLOGGED (or temporary): logical decoding never sees their writes. They
   * are in `leaves` as resolveTables returns them (backfill may rewrite them, verify counts them);
   * run refuses them at start (db/unlogged.ts) and, under run, follows a view without them.
   */
  unlogged: QualifiedName[];
}

interface ClassRow { oid: number; relkind: string; relreplident: string }
interface ColumnRow { attname: string; typname: string; category: string; shown: string }
interface KeyRow { indisprimary: boolean; indisreplident: boolean; cols: string[] }
interface LeafRow { oid: number; schema: string; name: string; relkind: string; relreplident: string; persistence: string; partition: boolean; self: boolean }

// Text types whose values round-trip unchanged. char(n) pads with blanks and
// name truncates at 63 bytes: both would corrupt a ciphertext.
const ACCEPTED_TYPES = new Set(['text', 'varchar', 'citext']);

/** An identifier as the config must write it: quoted when it is not all lower case (YAML needs the quotes inside: '"Note"'). */
function identText(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : `'${quoteIdent(name)}'`;
}

/** " (did you mean public.incidents?)" from the tables and partitioned tables this database has, or ''. */
async function tableSuggestion(db: pg.Pool | pg.ClientBase, name: string): Promise<string> {
  const { rows } = await db.query<{ schema: string; name: string }>(
    `select n.nspname as schema, c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema', 'pgrekey')`,
  );
  return didYouMean(name, rows.map((r) => displayName(r)));
}

/**
 * Resolves every configured table and checks, all at once: it exists, each
 * column exists and is text-like, the table has a primary key or replica
 * identity index, and this role may SELECT and UPDATE it. Throws one
 * ConfigError listing every problem.
 */
export async function resolveTables(db: pg.Pool | pg.ClientBase, tables: readonly TableConfig[]): Promise<TableInfo[]> {
  const { tables: out, problems } = await inspectTables(db, tables);
  if (problems.length) {
    throw new ConfigError(
      `${problems.length} problem(s) with the configured tables`,
      'fix the tables or the `tables:` section of the config, then run the command again',
      problems,
    );
  }
  return out;
}

/**
 * The same checks, without throwing: the tables that could be resolved (a table this role may
 * not read or update is resolved too: only its privileges are wrong) and every problem found.
 * setup judges the rest (row security, triggers, the publication) on those tables in the same pass.
 */
export async function inspectTables(db: pg.Pool | pg.ClientBase, tables: readonly TableConfig[]): Promise<{ tables: TableInfo[]; problems: string[] }> {
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
      problems.push(`${name}: no such table${await tableSuggestion(db, name)} (names are case-sensitive when quoted; check the schema)`);
      continue;
    }
    if (cls.relkind !== 'r' && cls.relkind !== 'p') {
      problems.push(`${name}: is not a table (relkind ${cls.relkind}); configure the underlying table`);
      continue;
    }
    const cols = new Map(
      (
        await db.query<ColumnRow>(
          // The type under every level of domain (a domain over a domain over text is text-like).
          `select a.attname, b.typname::text as typname, t.typcategory::text as category,
                  format_type(a.atttypid, a.atttypmod) as shown
             from pg_attribute a
             join pg_type t on t.oid = a.atttypid
             cross join lateral (
               with recursive chain(oid, depth) as (
                 select a.atttypid, 0
                 union all select d.typbasetype, c.depth + 1 from chain c join pg_type d on d.oid = c.oid where d.typtype = 'd')
               select k.typname from chain c join pg_type k on k.oid = c.oid order by c.depth desc limit 1) b
            where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped`,
          [cls.oid],
        )
      ).rows.map((r) => [r.attname, r]),
    );
    for (const c of t.columns) {
      const col = cols.get(c);
      if (!col) problems.push(`${name}.${c}: no such column${didYouMean(c, cols.keys(), identText)}`);
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
    const leafRows = await findLeaves(db, cls.oid);
    const leafProblems = key ? await checkLeaves(db, name, leafRows, key.cols, present) : [];
    problems.push(...leafProblems);
    if (key && leafProblems.length === 0) {
      const leaves = leafRows.map((l) => ({ schema: l.schema, name: l.name }));
      out.push({
        config: t,
        display: name,
        quoted: quoteQualified(t),
        oid: cls.oid,
        partitioned: cls.relkind === 'p',
        keyColumns: key.cols,
        keySource: key.source,
        leaves,
        unlogged: leafRows.filter((l) => l.persistence !== 'p').map((l) => ({ schema: l.schema, name: l.name })),
      });
    }
  }
  return { tables: out, problems };
}

/**
 * The relations that hold the table's rows: pg_inherits followed to any depth covers both leaf
 * partitions (of every level) and legacy INHERITS children (of every level). A partitioned table
 * holds no rows itself; a regular parent does, so it is a leaf of its own. The table comes first.
 */
async function findLeaves(db: pg.Pool | pg.ClientBase, oid: number): Promise<LeafRow[]> {
  return (
    await db.query<LeafRow>(
      `with recursive d(oid) as (select $1::oid union select i.inhrelid from pg_inherits i join d on i.inhparent = d.oid)
       select c.oid::int as oid, n.nspname as schema, c.relname as name, c.relkind::text as relkind, c.relreplident::text as relreplident,
              c.relpersistence::text as persistence, c.relispartition as partition, c.oid = $1::oid as self
         from d join pg_class c on c.oid = d.oid join pg_namespace n on n.oid = c.relnamespace
        where c.relkind <> 'p'
        order by c.oid <> $1::oid, 2, 3`,
      [oid],
    )
  ).rows;
}

/**
 * What pg-rekey needs of every leaf besides the table itself: a relation it can scan by ctid (not
 * a foreign table); and of an INHERITS child, this role's SELECT and UPDATE on the configured
 * columns (the child is read and written directly: the grants on the parent do not cover that)
 * and, since a child inherits neither the primary key nor the replica identity, a key of its own
 * on the parent's key columns (the rewrite's compare-and-swap finds rows by them, and once
 * published, a child without a replica identity would refuse the application's UPDATEs).
 */
async function checkLeaves(db: pg.Pool | pg.ClientBase, table: string, leaves: readonly LeafRow[], keyCols: readonly string[], columns: readonly string[]): Promise<string[]> {
  const problems: string[] = [];
  for (const l of leaves) {
    if (l.self) continue;
    const name = displayName(l);
    const what = `${name} (${l.partition ? 'partition' : 'inheritance child'} of ${table})`;
    if (l.relkind !== 'r') {
      problems.push(`${what}: is a foreign table (relkind ${l.relkind}); pg-rekey can neither sweep nor stream it: detach it (ALTER TABLE ${table} DETACH PARTITION / ALTER TABLE ${name} NO INHERIT ${table}) and rotate its values where it is stored`);
      continue;
    }
    // A partition has the partitioned table's key. (It is read and written directly too, so it
    // needs its own grants as well; not checked here yet: the sweep then fails loudly on it.)
    if (l.partition) continue;
    const privs = (
      await db.query<{ sel: boolean; upd: string[]; me: string }>(
        `select has_table_privilege($1::oid, 'SELECT') as sel, quote_ident(current_user) as me,
                array(select c from unnest($2::text[]) c where not has_column_privilege($1::oid, c, 'UPDATE')) as upd`,
        [l.oid, columns],
      )
    ).rows[0]!;
    if (!privs.sel) problems.push(`${what}: this role lacks SELECT on it (GRANT SELECT ON ${name} TO ${privs.me}); see sql/roles.sql`);
    if (privs.upd.length) problems.push(`${what}: this role lacks UPDATE on column(s) ${privs.upd.join(', ')} (GRANT UPDATE (${privs.upd.join(', ')}) ON ${name} TO ${privs.me}); see sql/roles.sql`);
    const own: string[] = [];
    const key = await findKey(db, l, what, own);
    if (!key) {
      problems.push(`${own.join('; ')} (an inheritance child needs its own: ALTER TABLE ${name} ADD PRIMARY KEY (${keyCols.join(', ')}))`);
    } else if (key.cols.join('\0') !== keyCols.join('\0')) {
      problems.push(`${what}: its ${key.source} is on (${key.cols.join(', ')}), the table's on (${keyCols.join(', ')}); pg-rekey finds a row of every leaf by the table's key: give ${name} a primary key or replica identity index on (${keyCols.join(', ')})`);
    }
  }
  return problems;
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
