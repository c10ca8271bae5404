import type pg from 'pg';
import { ConfigError } from '../errors.js';
import type { TableInfo } from './catalog.js';
import { displayName, quoteQualified } from './ident.js';
import type { Logger } from '../logger.js';
import { decisionReport, decodeTgtype, undecidedProblems, type TableTriggers, type TriggerState, type UpdateTrigger } from './trigger-decision.js';

/**
 * Triggers are a decision, not a surprise (README "Triggers"): each configured table's user
 * triggers that fire on pg-rekey's UPDATE of its configured columns, and whether this role may run
 * rewrites with session_replication_role = replica (`triggers: skip`). setup lists them and
 * refuses while a table has some and no decision; run and backfill refuse the same way before
 * their first rewrite (a trigger created since setup). The rule of what fires is in
 * trigger-decision.ts.
 */

/**
 * The triggers of every leaf (the relations pg-rekey's UPDATEs write): a statement trigger of a
 * partitioned or inheritance parent does not fire on an UPDATE of a leaf, a row trigger of a
 * partitioned table is cloned onto each partition (PostgreSQL 14 marks the clone internal, with
 * tgparentid set). Left out: disabled triggers, internal ones (foreign keys, deferred unique
 * checks), UPDATE OF lists without a configured column (pg-rekey's UPDATE sets only those).
 * Rules ON UPDATE are listed too: they follow session_replication_role like triggers.
 */
export async function findUpdateTriggers(db: pg.Pool | pg.ClientBase, tables: readonly TableInfo[]): Promise<TableTriggers[]> {
  const out: TableTriggers[] = [];
  for (const t of tables) {
    const leaves = t.leaves.map(quoteQualified);
    const r = await db.query<{ ord: number; name: string; tgtype: number; state: TriggerState; function: string; columns: string[] | null; when: boolean }>(
      `select x.ord::int as ord, tg.tgname as name, tg.tgtype::int as tgtype, tg.tgenabled::text as state, tg.tgfoid::regproc::text as function,
              case when cardinality(tg.tgattr::int2[]) = 0 then null
                   else array(select a.attname::text from pg_attribute a where a.attrelid = tg.tgrelid and a.attnum = any(tg.tgattr::int2[]) order by a.attnum) end as columns,
              tg.tgqual is not null as when
         from unnest($1::text[]) with ordinality x(rel, ord)
         join pg_trigger tg on tg.tgrelid = to_regclass(x.rel)
        where tg.tgtype::int & 16 <> 0
          and tg.tgenabled <> 'D'
          and (not tg.tgisinternal or tg.tgparentid <> 0)
          and (tg.tgconstraint = 0 or exists (select 1 from pg_constraint c where c.oid = tg.tgconstraint and c.contype = 't'))
          and (cardinality(tg.tgattr::int2[]) = 0
               or exists (select 1 from pg_attribute a where a.attrelid = tg.tgrelid and a.attnum = any(tg.tgattr::int2[]) and a.attname = any($2::text[])))
        order by x.ord, tg.tgname`,
      [leaves, t.config.columns],
    );
    const rules = await db.query<{ ord: number; name: string; instead: boolean; state: TriggerState; when: boolean }>(
      `select x.ord::int as ord, r.rulename::text as name, r.is_instead as instead, r.ev_enabled::text as state, r.ev_qual <> '<>' as when
         from unnest($1::text[]) with ordinality x(rel, ord)
         join pg_rewrite r on r.ev_class = to_regclass(x.rel)
        where r.ev_type = '2' and r.ev_enabled <> 'D'
        order by x.ord, r.rulename`,
      [leaves],
    );
    const triggers: UpdateTrigger[] = r.rows.map((row) => ({
      kind: 'trigger' as const,
      relation: displayName(t.leaves[row.ord - 1]!),
      name: row.name,
      ...decodeTgtype(row.tgtype),
      state: row.state,
      function: row.function,
      columns: row.columns,
      when: row.when,
    }));
    for (const row of rules.rows) {
      triggers.push({ kind: 'rule', relation: displayName(t.leaves[row.ord - 1]!), name: row.name, timing: row.instead ? 'DO INSTEAD' : 'DO ALSO', level: 'STATEMENT', state: row.state, function: '', columns: null, when: row.when });
    }
    out.push({ table: t.display, columns: t.config.columns, decision: t.config.triggers, triggers });
  }
  return out;
}

/** Whether rewrites of this table run with session_replication_role = replica. */
export function skipsTriggers(t: Pick<TableInfo, 'config'>): boolean {
  return t.config.triggers === 'skip';
}

/**
 * Why this role may not run rewrites with session_replication_role = replica (null when it may,
 * or no table says `triggers: skip`): a superuser may; from PostgreSQL 15 on, so may a role
 * granted SET on the parameter.
 */
export async function skipPrivilegeProblem(db: pg.Pool | pg.ClientBase, tables: readonly TableInfo[]): Promise<string | null> {
  const skipping = tables.filter(skipsTriggers).map((t) => t.display);
  if (skipping.length === 0) return null;
  const me = (
    await db.query<{ superuser: boolean; role: string; pg15: boolean }>(
      `select rolsuper as superuser, quote_ident(current_user) as role, current_setting('server_version_num')::int >= 150000 as pg15 from pg_roles where rolname = current_user`,
    )
  ).rows[0]!;
  if (me.superuser) return null;
  const what = `\`triggers: skip\` (${skipping.join(', ')}) runs rewrites with session_replication_role = replica`;
  if (!me.pg15) {
    return `${what}, which only a superuser may set on PostgreSQL 14 (GRANT SET ON PARAMETER exists from 15 on): run pg-rekey as a superuser, or choose \`triggers: fire\``;
  }
  const granted = (await db.query<{ ok: boolean }>(`select has_parameter_privilege('session_replication_role', 'SET') as ok`)).rows[0]!.ok;
  if (granted) return null;
  return `${what}, which role ${me.role} may not set: as a superuser run GRANT SET ON PARAMETER session_replication_role TO ${me.role}; (see sql/roles.sql), or choose \`triggers: fire\``;
}

/**
 * Replica mode also skips the internal triggers that enforce foreign keys. A configured column in a
 * foreign key (on either side) changes its stored value at every rewrite: with `skip` the key would
 * no longer be checked, silently. Refused; with `fire` such a rewrite fails the check and is quarantined.
 */
export async function skipForeignKeyProblems(db: pg.Pool | pg.ClientBase, tables: readonly TableInfo[]): Promise<string[]> {
  const skipping = tables.filter(skipsTriggers);
  if (skipping.length === 0) return [];
  const pairs = skipping.flatMap((t) => t.leaves.flatMap((l) => t.config.columns.map((c) => ({ table: t.display, rel: quoteQualified(l), col: c }))));
  const r = await db.query<{ i: number; conname: string; def: string }>(
    `select p.i, con.conname::text as conname, pg_get_constraintdef(con.oid) as def
       from unnest($1::text[], $2::text[]) with ordinality as p(rel, col, i)
       join pg_attribute a on a.attrelid = to_regclass(p.rel) and a.attname = p.col
       join pg_constraint con on con.contype = 'f'
        and ((con.conrelid = a.attrelid and a.attnum = any (con.conkey)) or (con.confrelid = a.attrelid and a.attnum = any (con.confkey)))`,
    [pairs.map((p) => p.rel), pairs.map((p) => p.col)],
  );
  return r.rows.map((row) => {
    const p = pairs[row.i - 1]!;
    return `${p.table}: \`triggers: skip\` would also skip the foreign key ${row.conname} (${row.def}) on its configured column ${p.col}: every rewrite changes the stored value, so the key would go unchecked; use \`triggers: fire\` (a rewrite that breaks the key is then quarantined)`;
  });
}

/** Every trigger problem of the tables: undecided tables, a `skip` this role may not do, a `skip` that would skip a foreign key. */
export async function triggerProblems(db: pg.Pool | pg.ClientBase, tables: readonly TableInfo[]): Promise<{ problems: string[]; found: TableTriggers[] }> {
  const found = await findUpdateTriggers(db, tables);
  const problems = undecidedProblems(found);
  const privilege = await skipPrivilegeProblem(db, tables);
  if (privilege) problems.push(privilege);
  problems.push(...(await skipForeignKeyProblems(db, tables)));
  return { problems, found };
}

/**
 * For run and backfill, before their first rewrite: refuse (exit 2) what setup refuses; log what
 * the decided tables' rewrites fire (one line per table, as setup prints it).
 */
export async function refuseTriggerSurprises(db: pg.Pool | pg.ClientBase, tables: readonly TableInfo[], log?: Logger): Promise<void> {
  const { problems, found } = await triggerProblems(db, tables);
  if (problems.length === 0) {
    const triggerLog = log?.child({ component: 'triggers' });
    for (const f of found) for (const line of decisionReport([f])) triggerLog?.info({ table: f.table, decision: f.decision }, line);
    return;
  }
  throw new ConfigError(
    `${problems.length} trigger problem(s): a rewrite would fire triggers nobody decided about, or cannot skip them`,
    'decide with `triggers: fire` or `triggers: skip` (per table or top-level) and grant what each line says; nothing was written',
    problems,
  );
}

/**
 * Runs `fn` (statements of the current transaction) with session_replication_role = replica
 * when `skip`, and sets it back afterwards: SET LOCAL (set_config(..., true)), so a pooled
 * connection never leaves the transaction in replica mode, and the state writes of the same
 * transaction run in the mode they had. On an error the transaction (or its savepoint) is rolled
 * back, which undoes the setting too.
 */
export async function withTriggersSkipped<T>(client: pg.ClientBase, skip: boolean, fn: () => Promise<T>): Promise<T> {
  if (!skip) return fn();
  const prior = (
    await client.query<{ prior: string }>(`select current_setting('session_replication_role') as prior, set_config('session_replication_role', 'replica', true) as now`)
  ).rows[0]!.prior;
  const out = await fn();
  await client.query(`select set_config('session_replication_role', $1, true)`, [prior]);
  return out;
}
