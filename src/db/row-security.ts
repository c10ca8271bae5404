import type pg from 'pg';
import type { TableInfo } from './catalog.js';
import { displayName, quoteIdent, quoteQualified } from './ident.js';
import { ConfigError } from '../errors.js';

/**
 * Row security decides what a role sees: with a policy the role does not
 * match, a count finds 0 and an UPDATE matches nothing, silently. pg-rekey
 * sessions set row_security = off (db/connect.ts), which turns such a query
 * into an error; this check finds those relations before anything runs, and
 * says what to grant. A role sees every row when it is a superuser, has
 * BYPASSRLS, or owns the table (membership counts) and the table does not
 * FORCE ROW LEVEL SECURITY.
 */
export interface RowSecurityProblem {
  table: string;
  relation: string;
  forced: boolean;
  problem: string;
}

export async function rowSecurityProblems(db: pg.Pool | pg.ClientBase, tables: readonly TableInfo[]): Promise<RowSecurityProblem[]> {
  const leaves = tables.flatMap((t) => t.leaves.map((l) => ({ table: t.display, relation: displayName(l), quoted: quoteQualified(l) })));
  if (leaves.length === 0) return [];
  const r = await db.query<{ rel: string; enabled: boolean; forced: boolean; owner: boolean; owner_name: string; bypass: boolean }>(
    `select x.rel, c.relrowsecurity as enabled, c.relforcerowsecurity as forced,
            pg_has_role(c.relowner, 'USAGE') as owner, pg_get_userbyid(c.relowner) as owner_name,
            (select rolsuper or rolbypassrls from pg_roles where rolname = current_user) as bypass
       from unnest($1::text[]) as x(rel) join pg_class c on c.oid = to_regclass(x.rel)`,
    [leaves.map((l) => l.quoted)],
  );
  const role = (await db.query<{ u: string }>(`select current_user as u`)).rows[0]!.u;
  const out: RowSecurityProblem[] = [];
  for (const row of r.rows) {
    if (!row.enabled || row.bypass || (row.owner && !row.forced)) continue;
    const leaf = leaves.find((l) => l.quoted === row.rel)!;
    const fix = row.forced
      ? `ALTER ROLE ${quoteIdent(role)} BYPASSRLS (the table FORCEs row level security, so even its owner is filtered)`
      : `ALTER ROLE ${quoteIdent(role)} BYPASSRLS, or run pg-rekey as the table's owner (${row.owner_name})`;
    out.push({
      table: leaf.table,
      relation: leaf.relation,
      forced: row.forced,
      problem: `${leaf.relation} has row level security${row.forced ? ' (FORCE)' : ''} enabled and role ${role} would not see every row: run as a superuser, or ${fix}`,
    });
  }
  return out;
}

/**
 * The fail-loud switch is only as good as its arrival: `-c row_security=off` is a startup option,
 * which a connection pooler (PgBouncer) may drop, and which a connection string's own `options`
 * could replace. Null when this session has row_security off, else the problem with its fix.
 */
export async function rowSecurityNotOff(db: pg.Pool | pg.ClientBase): Promise<string | null> {
  const r = await db.query<{ v: string; bypass: boolean }>(
    `select current_setting('row_security') as v, (select rolsuper or rolbypassrls from pg_roles where rolname = current_user) as bypass`,
  );
  const { v, bypass } = r.rows[0]!;
  if (v === 'off' || bypass) return null; // a role that bypasses row security sees every row whatever the setting
  return (
    `this session has row_security = ${v}, not off: the startup option -c row_security=off that pg-rekey sends did not take effect ` +
    '(a connection pooler such as PgBouncer drops startup options; an `options` of the connection string may replace it), ' +
    'so a policy could silently hide rows instead of raising an error. Connect to PostgreSQL directly (or through a pooler in session mode ' +
    "that passes `options` on), or give the role BYPASSRLS (ALTER ROLE ... BYPASSRLS)"
  );
}

/** For commands that read or rewrite (backfill, run, verify): refuse (exit 2) rather than work on part of a table. */
export async function refuseHiddenRows(db: pg.Pool | pg.ClientBase, tables: readonly TableInfo[], what = 'pg-rekey would not see every row'): Promise<void> {
  const notOff = await rowSecurityNotOff(db);
  if (notOff) {
    throw new ConfigError(`${what}: row_security is not off in pg-rekey's session`, 'connect so that the startup option arrives, then run the command again; nothing was counted or written', [notOff]);
  }
  const hidden = await rowSecurityProblems(db, tables);
  if (hidden.length === 0) return;
  throw new ConfigError(
    `${what}: row level security would hide rows of configured tables from this role`,
    'grant what each line says (or run as a role that sees every row); nothing was counted or written for a table that could not be read whole',
    hidden.map((h) => h.problem),
  );
}
