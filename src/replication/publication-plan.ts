import type pg from 'pg';
import type { TableInfo } from '../db/catalog.js';
import { quoteQualified } from '../db/ident.js';
import type { ServerFacts } from '../db/server-checks.js';

/**
 * What setup does about the publication (created, fixed, left alone, or refused with the
 * statements its owner runs): see planPublication.
 */

export interface PublicationPlan {
  state: 'created' | 'updated' | 'unchanged';
  /** SQL to run in setup's transaction. */
  statements: string[];
  /** Why setup cannot go on, each with the statements that fix it and who may run them. */
  problems: string[];
  /** What the statements change in an existing publication, for the operator. */
  changes: string[];
  /** What the publication publishes afterwards, for setup's output. */
  summary: string;
}

interface TableRow {
  oid: number;
  sql: string;
  owner: string;
  ownerSql: string;
  mine: boolean;
}

interface PublicationRow {
  oid: number;
  owner: string;
  ownerSql: string;
  mine: boolean;
  allTables: boolean;
  insert: boolean;
  update: boolean;
  delete: boolean;
  truncate: boolean;
  viaRoot: boolean;
  /** Table entries (pg_publication_rel) that are not configured tables (or their inheritance children), and configured tables without an entry. */
  extraEntries: number;
  missingEntries: number;
  /** Schema entries (PostgreSQL 15+). */
  schemas: number;
  /** Entries with a row filter or a column list (PostgreSQL 15+). */
  filtered: number;
}

/** One thing wrong with an existing publication, and the statements that fix it. */
interface Issue {
  problem: string;
  fix: string[];
  /** Tables whose ownership the fix needs besides the publication's (ADD TABLE). */
  needsTables: TableRow[];
}

const ACTIONS = ['insert', 'update', 'delete', 'truncate'] as const;

/**
 * What setup does about the publication, or why it cannot: pg-rekey's stream
 * needs every leaf of every configured table published, INSERT and UPDATE,
 * under the leaf's own name (publish_via_partition_root = false: the stream
 * maps leaf relations), every row (no row filter) and the key and encrypted
 * columns (no column list without them).
 *
 * - Missing: created for exactly the configured tables; needs CREATE on the
 *   database and ownership of the tables.
 * - Present and right: left alone, unless this role may make it exactly the
 *   configured tables (it owns the publication and every table), as setup
 *   always did.
 * - Present and wrong: fixed when this role owns the publication (and the
 *   tables a fix adds); otherwise refused, naming the statements its owner runs.
 */
export async function planPublication(db: pg.ClientBase | pg.Pool, name: string, tables: readonly TableInfo[], facts: ServerFacts): Promise<PublicationPlan> {
  const nameSql = (await db.query<{ q: string }>(`select quote_ident($1) as q`, [name])).rows[0]!.q;
  const rows = (
    await db.query<TableRow>(
      `select c.oid::int as oid, format('%I.%I', n.nspname, c.relname) as sql, pg_get_userbyid(c.relowner) as owner,
              quote_ident(pg_get_userbyid(c.relowner)) as "ownerSql", pg_has_role(c.relowner, 'USAGE') as mine
         from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = any($1::oid[])`,
      [tables.map((t) => t.oid)],
    )
  ).rows;
  const byOid = new Map(rows.map((r) => [r.oid, r]));
  const rowOf = (t: TableInfo) => byOid.get(t.oid)!;
  const list = tables.map((t) => rowOf(t).sql).join(', ');
  const createSql = `CREATE PUBLICATION ${nameSql} FOR TABLE ${list} WITH (publish = 'insert, update')`;
  const exactSql = [`ALTER PUBLICATION ${nameSql} SET TABLE ${list}`, `ALTER PUBLICATION ${nameSql} SET (publish = 'insert, update', publish_via_partition_root = false)`];
  const pg15 = facts.versionNum >= 150000;
  const p = (
    await db.query<PublicationRow>(
      `select p.oid::int as oid, pg_get_userbyid(p.pubowner) as owner, quote_ident(pg_get_userbyid(p.pubowner)) as "ownerSql",
              pg_has_role(p.pubowner, 'USAGE') as mine, p.puballtables as "allTables",
              p.pubinsert as insert, p.pubupdate as update, p.pubdelete as delete, p.pubtruncate as truncate, p.pubviaroot as "viaRoot",
              -- Entries besides those CREATE PUBLICATION FOR TABLE <configured> makes (the tables, and their
              -- legacy-inheritance descendants of the moment), and configured tables without their own entry.
              (select count(*)::int from pg_publication_rel pr
                where pr.prpubid = p.oid
                  and pr.prrelid not in (with recursive d(oid) as (select unnest($2::oid[])
                                                                    union select i.inhrelid from pg_inherits i join d on i.inhparent = d.oid join pg_class k on k.oid = i.inhrelid and not k.relispartition)
                                         select oid from d)) as "extraEntries",
              (select count(*)::int from unnest($2::oid[]) o where o not in (select prrelid from pg_publication_rel where prpubid = p.oid)) as "missingEntries",
              ${pg15 ? '(select count(*)::int from pg_publication_namespace where pnpubid = p.oid)' : '0'} as schemas,
              ${pg15 ? '(select count(*)::int from pg_publication_rel where prpubid = p.oid and (prqual is not null or prattrs is not null))' : '0'} as filtered
         from pg_publication p where p.pubname = $1`,
      [name, tables.map((t) => t.oid)],
    )
  ).rows[0];
  const summary = 'insert, update of the configured tables';

  if (!p) {
    const problems: string[] = [];
    const orCreate = `or have the tables' owner or a superuser create it: ${createSql}`;
    if (!facts.canCreateInDatabase) {
      problems.push(`creating publication ${name} needs CREATE on database ${facts.database}: GRANT CREATE ON DATABASE ${facts.databaseSql} TO ${facts.currentUserSql}; ${orCreate}`);
    }
    const foreign = tables.map(rowOf).filter((r) => !r.mine);
    if (foreign.length) {
      problems.push(
        `creating publication ${name} needs ownership of ${foreign.map((r) => `${r.sql} (owned by ${r.owner})`).join(', ')}: ` +
          `run setup once as that role or a superuser, ${orCreate} (see sql/roles.sql)`,
      );
    }
    return { state: 'created', statements: problems.length ? [] : [createSql], problems, changes: [], summary };
  }

  const issues: Issue[] = [];
  // Every leaf of every configured table, published through itself, an ancestor, or (15+) a schema.
  const missing = await missingLeaves(db, p.oid, p.allTables, tables, pg15);
  if (missing.length) {
    const names = missing.map((m) => m.leaves.map((l) => l.sql).join(', '));
    issues.push({
      problem:
        `publication ${name} does not publish ${names.join(', ')} (configured${missing.some((m) => m.table.partitioned) ? '; a partitioned table needs every leaf published' : ''}` +
        `${missing.some((m) => m.only) ? '; FOR TABLE / ADD TABLE of an inheritance parent publishes the children of that moment only, never later ones' : ''}): their changes would never reach the stream`,
      fix: [`ALTER PUBLICATION ${nameSql} ADD TABLE ${missing.map((m) => m.entries.join(', ')).join(', ')}`],
      needsTables: missing.flatMap((m) => m.owners),
    });
  }
  if (pg15) {
    // Row filters and column lists on an entry that publishes a configured leaf.
    for (const t of tables) {
      const need = [...new Set([...t.keyColumns, ...t.config.columns])];
      const leaves = t.leaves.map(quoteQualified);
      const filtered = await db.query<{ oid: number; sql: string; owner: string; ownerSql: string; mine: boolean; rowFilter: boolean; columns: string[] | null }>(
        `with leaf as (select to_regclass(q)::oid as relid from unnest($2::text[]) q),
              up as (select leaf.relid as rel from leaf union select a.relid from leaf, pg_partition_ancestors(leaf.relid) a)
         select c.oid::int as oid, format('%I.%I', n.nspname, c.relname) as sql, pg_get_userbyid(c.relowner) as owner,
                quote_ident(pg_get_userbyid(c.relowner)) as "ownerSql", pg_has_role(c.relowner, 'USAGE') as mine,
                pr.prqual is not null as "rowFilter",
                case when pr.prattrs is null then null
                     else array(select attname::text from pg_attribute where attrelid = pr.prrelid and attnum = any(pr.prattrs::int2[])) end as columns
           from pg_publication_rel pr join pg_class c on c.oid = pr.prrelid join pg_namespace n on n.oid = c.relnamespace
          where pr.prpubid = $1 and pr.prrelid in (select rel from up) and (pr.prqual is not null or pr.prattrs is not null)`,
        [p.oid, leaves],
      );
      for (const e of filtered.rows) {
        const lacking = e.columns ? need.filter((c) => !e.columns!.includes(c)) : [];
        if (!e.rowFilter && lacking.length === 0) continue;
        const what = [e.rowFilter ? 'a row filter (WHERE): rows it leaves out would never be rewritten' : '', lacking.length ? `a column list without ${lacking.join(', ')}` : '']
          .filter(Boolean)
          .join(' and ');
        issues.push({
          problem: `publication ${name} publishes ${e.sql} with ${what}`,
          fix: [`ALTER PUBLICATION ${nameSql} DROP TABLE ${e.sql}`, `ALTER PUBLICATION ${nameSql} ADD TABLE ${e.sql}`],
          needsTables: [e],
        });
      }
    }
  }
  const options: string[] = [];
  const optionProblems: string[] = [];
  if (!p.insert || !p.update) {
    const now = ACTIONS.filter((a) => p[a]);
    const want = ACTIONS.filter((a) => p[a] || a === 'insert' || a === 'update');
    optionProblems.push(`does not publish ${[!p.insert ? 'insert' : '', !p.update ? 'update' : ''].filter(Boolean).join(' and ')} (publish = '${now.join(', ')}'): pg-rekey rewrites what INSERTs and UPDATEs write`);
    options.push(`publish = '${want.join(', ')}'`);
  }
  if (p.viaRoot) {
    optionProblems.push(
      `has publish_via_partition_root = true: changes to partitions would arrive under the root table's name, and pg-rekey's stream maps leaf relations (it would miss them)`,
    );
    options.push('publish_via_partition_root = false');
  }
  if (options.length) issues.push({ problem: `publication ${name} ${optionProblems.join('; it ')}`, fix: [`ALTER PUBLICATION ${nameSql} SET (${options.join(', ')})`], needsTables: [] });

  const ownsAll = tables.every((t) => rowOf(t).mine);
  const exact = !p.allTables && p.schemas === 0 && p.filtered === 0 && p.extraEntries === 0 && p.missingEntries === 0 && p.insert && p.update && !p.delete && !p.truncate && !p.viaRoot;
  const publishes = ACTIONS.filter((a) => p[a]).join(', ');
  if (issues.length === 0) {
    if (p.mine && !p.allTables && ownsAll && !exact) {
      return { state: 'updated', statements: exactSql, problems: [], changes: ['made it publish exactly the configured tables, insert and update'], summary };
    }
    return { state: 'unchanged', statements: [], problems: [], changes: [], summary: exact ? summary : `${publishes}; it covers the configured tables` };
  }
  const canFix = p.mine && issues.every((i) => i.needsTables.every((t) => t.mine));
  if (canFix) {
    // Exactly the configured tables when this role may set that (as setup always did); else the fixes alone.
    const statements = !p.allTables && ownsAll ? exactSql : issues.flatMap((i) => i.fix);
    return { state: 'updated', statements, problems: [], changes: issues.map((i) => `fixed: ${i.problem}`), summary };
  }
  const problems = issues.map((i) => {
    const foreign = i.needsTables.filter((t) => !t.mine);
    const who = p.mine
      ? `as the owner of ${foreign.map((t) => `${t.sql} (${t.owner})`).join(', ')} or a superuser`
      : `as its owner ${p.owner}${i.needsTables.length ? ` (who must also own ${i.needsTables.map((t) => `${t.sql}, owned by ${t.owner}`).join('; ')})` : ''} or a superuser`;
    return `${i.problem}; to fix it, ${who}, run ${i.fix.map((s) => `${s};`).join(' ')}`;
  });
  return { state: 'unchanged', statements: [], problems, changes: [], summary: publishes };
}

interface MissingLeaves {
  table: TableInfo;
  /** What is unpublished: the table when it is added whole, else the leaves no entry, ancestor entry or schema entry publishes. */
  leaves: TableRow[];
  /** What ADD TABLE takes for them. */
  entries: string[];
  /** True when they are added ONLY (each on its own, not with its descendants). */
  only: boolean;
  /** Whose ownership ADD TABLE needs besides the publication's. */
  owners: TableRow[];
}

/**
 * The unpublished leaves of each table, and the ADD TABLE entries that publish them. `ADD TABLE
 * parent` adds a legacy-inheritance parent with the descendants it has then (and fails on one
 * already a member); a partitioned table is published whole through its root. So: a table of
 * which nothing is published yet, or a partitioned one, is added by its name; otherwise each
 * missing leaf (an INHERITS child created after the publication, say) is added ONLY by itself.
 */
async function missingLeaves(db: pg.ClientBase | pg.Pool, pubOid: number, allTables: boolean, tables: readonly TableInfo[], pg15: boolean): Promise<MissingLeaves[]> {
  const out: MissingLeaves[] = [];
  for (const t of tables) {
    const leaves = await db.query<TableRow & { covered: boolean }>(
      `with leaf as (select ord, to_regclass(q)::oid as relid from unnest($2::text[]) with ordinality x(q, ord)),
            up as (select leaf.relid, leaf.relid as rel from leaf
                    union select leaf.relid, a.relid from leaf, pg_partition_ancestors(leaf.relid) a)
       select c.oid::int as oid, format('%I.%I', n.nspname, c.relname) as sql, pg_get_userbyid(c.relowner) as owner,
              quote_ident(pg_get_userbyid(c.relowner)) as "ownerSql", pg_has_role(c.relowner, 'USAGE') as mine,
              ($3 or exists (select 1 from up join pg_publication_rel pr on pr.prrelid = up.rel and pr.prpubid = $1 where up.relid = leaf.relid)
              ${pg15 ? 'or exists (select 1 from up join pg_class k on k.oid = up.rel join pg_publication_namespace pn on pn.pnnspid = k.relnamespace and pn.pnpubid = $1 where up.relid = leaf.relid)' : ''}) as covered
         from leaf join pg_class c on c.oid = leaf.relid join pg_namespace n on n.oid = c.relnamespace
        order by leaf.ord`,
      [pubOid, t.leaves.map(quoteQualified), allTables],
    );
    const absent = leaves.rows.filter((l) => !l.covered);
    if (absent.length === 0) continue;
    const root = (
      await db.query<TableRow>(
        `select c.oid::int as oid, format('%I.%I', n.nspname, c.relname) as sql, pg_get_userbyid(c.relowner) as owner,
                quote_ident(pg_get_userbyid(c.relowner)) as "ownerSql", pg_has_role(c.relowner, 'USAGE') as mine
           from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = $1`,
        [t.oid],
      )
    ).rows[0]!;
    const whole = t.partitioned || absent.length === leaves.rows.length;
    out.push(
      whole
        ? { table: t, leaves: [root], entries: [root.sql], only: false, owners: t.partitioned ? [root] : absent }
        : { table: t, leaves: absent, entries: absent.map((l) => `ONLY ${l.sql}`), only: true, owners: absent },
    );
  }
  return out;
}
