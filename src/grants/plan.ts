/**
 * The SQL that gives a role exactly what pg-rekey needs for a config: a psql script, all or
 * nothing (ON_ERROR_STOP and one transaction), idempotent (a second run changes nothing and
 * fails on nothing). Pure: the catalog facts come in, the text goes out.
 */
import { quoteIdent } from '../db/ident.js';
import { ConfigError } from '../errors.js';

export interface GrantTable {
  /** schema.table for comments. */
  display: string;
  /** "schema"."table" of the configured table. */
  quoted: string;
  partitioned: boolean;
  columns: readonly string[];
  /** Every relation that holds its rows (itself, partitions, INHERITS children): each is read and updated on its own. */
  leaves: readonly { quoted: string; schema: string; rowSecurity: boolean }[];
}

export interface GrantFacts {
  role: string;
  tables: readonly GrantTable[];
  publication: string;
  /** null: the publication does not exist yet; else the leaves (quoted) it does not publish. */
  unpublished: readonly string[] | null;
  stateSchema: string;
  /** Configured tables with `triggers: skip` (rewrites set session_replication_role = replica). */
  skipTriggers?: readonly string[];
  /** replication.slot when replication.origin is not off: the origins pgrekey_<slot>_sweep/_stream (16+). */
  originSlot?: string;
  /** For the header. */
  database: string;
  serverVersion: string;
  configPath: string;
}

/**
 * A name in a `--` comment: control characters become '?'. A newline would end the comment, and psql
 * runs a line that starts with a backslash as a meta-command (\! runs a shell): a table named
 * "x\n\\! cmd" must not become a command of a script a superuser runs.
 */
const safe = (s: string) => s.replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, '?');

const lit = (s: string) => `'${s.replace(/'/g, "''")}'`;

/** `select '<stmt>' where <cond> \gexec`: psql runs the statement only when the condition holds. */
function gexecIf(statement: string, condition: string): string {
  return `select ${lit(statement)} where ${condition} \\gexec`;
}

/**
 * `triggers: skip` runs rewrites with session_replication_role = replica: a superuser, or (15+) a
 * role granted SET on the parameter. PostgreSQL 14 has no such grant: a comment only there.
 */
function skipTriggersGrant(f: GrantFacts, role: string): string[] {
  const skip = f.skipTriggers ?? [];
  const grant = `grant set on parameter session_replication_role to ${role};`;
  const head = [
    '-- With `triggers: skip` (README "Triggers") rewrites run with session_replication_role = replica, so that',
    '-- ordinary triggers (updated_at, audit) do not fire: a superuser, or from PostgreSQL 15 on this grant.',
  ];
  if (skip.length === 0) return [...head, `-- ${safe(grant)}`];
  if (Number.parseInt(f.serverVersion, 10) < 15) {
    return [...head, `-- ${safe(skip.join(', '))} say triggers: skip, and PostgreSQL ${safe(f.serverVersion)} cannot grant it: run pg-rekey as a superuser, or use triggers: fire.`];
  }
  return [...head, `-- ${safe(skip.join(', '))} say triggers: skip.`, grant];
}

/**
 * PostgreSQL 16+: the replication origins pg-rekey's rewrites carry (replication/origin.ts), made
 * here so the role needs no right to create or drop origins (a right over every origin of the
 * cluster), and the two session functions it calls.
 */
function originGrants(f: GrantFacts, role: string): string[] {
  if (f.originSlot === undefined) return [];
  const head = [
    '',
    "-- PostgreSQL 16+ (replication.origin: auto): pg-rekey's rewrites carry a replication origin, so consumers with",
    "-- origin = none (subscriptions, Debezium) skip them. Optional: without it setup and run say the origin is off, and why.",
  ];
  if (Number.parseInt(f.serverVersion, 10) < 16) return [...head, `-- PostgreSQL ${f.serverVersion}: consumers cannot skip an origin before 16; nothing to grant.`];
  const names = [`pgrekey_${f.originSlot}_sweep`, `pgrekey_${f.originSlot}_stream`];
  return [
    ...head,
    ...names.map((n) => gexecIf(`select pg_replication_origin_create(${lit(n)})`, `not exists (select from pg_replication_origin where roname = ${lit(n)})`)),
    `grant execute on function pg_replication_origin_session_setup(text), pg_replication_origin_session_reset() to ${role};`,
  ];
}

export function renderGrants(f: GrantFacts): string {
  // Names go into quoted identifiers and literals, where psql keeps them whole; still, a script a superuser
  // runs is no place for a name that spans lines: refuse it, say which.
  const names = [f.role, f.publication, ...f.tables.flatMap((t) => [t.quoted, ...t.columns, ...t.leaves.map((l) => l.quoted)])];
  const bad = names.filter((n) => safe(n) !== n);
  if (bad.length) {
    throw new ConfigError(
      `${bad.length} name(s) contain control characters (a newline, a tab, ...): ${bad.map((n) => JSON.stringify(n)).join(', ')}`,
      'rename them (ALTER TABLE ... RENAME, ALTER ROLE ... RENAME TO) or write the grants by hand',
    );
  }
  const role = quoteIdent(f.role);
  const leaves = f.tables.flatMap((t) => t.leaves.map((l) => ({ ...l, table: t })));
  const schemas = [...new Set([...f.tables.map((t) => t.quoted.split('.')[0]!), ...leaves.map((l) => quoteIdent(l.schema))])];
  const rls = leaves.filter((l) => l.rowSecurity);
  const out: string[] = [
    `-- pg-rekey grants: what role ${safe(f.role)} needs for ${safe(f.configPath)}`,
    `-- generated from database ${safe(f.database)} (PostgreSQL ${safe(f.serverVersion)}); run it again after changing tables: in the config or adding partitions`,
    '-- Run as a superuser (or as the tables\' owner together with a role that may grant REPLICATION):',
    '--   psql -d <database> -v pw=<password> -f grants.sql',
    `-- Without -v pw the role gets no password (set one later with \\password ${safe(f.role)}, or use ~/.pgpass and pg_hba.conf).`,
    '-- All or nothing: the first error stops psql and rolls everything back. Running it twice changes nothing.',
    '\\set ON_ERROR_STOP on',
    'begin;',
    '',
    '-- LOGIN to connect; REPLICATION to create the logical slot (setup) and stream from it (run).',
    '-- On managed services grant the provider\'s role instead (RDS/Aurora: GRANT rds_replication).',
    gexecIf(`create role ${role} login replication`, `not exists (select from pg_roles where rolname = ${lit(f.role)})`),
    `alter role ${role} login replication;`,
    '\\if :{?pw}',
    `alter role ${role} password :'pw';`,
    '\\endif',
    `grant connect on database :"DBNAME" to ${role};`,
    '',
    `-- pg-rekey's state (progress, quarantine, history; never values or keys), owned by the role.`,
    `create schema if not exists ${quoteIdent(f.stateSchema)} authorization ${role};`,
    '',
    '-- SELECT on each relation (the sweep reads ctid, which column grants do not cover), UPDATE only on',
    '-- the encrypted columns. No INSERT, no DELETE, no DDL.',
    ...schemas.map((s) => `grant usage on schema ${s} to ${role};`),
  ];
  for (const t of f.tables) {
    out.push(`-- ${safe(t.display)}${t.leaves.length > 1 || t.leaves[0]?.quoted !== t.quoted ? ` and the ${t.leaves.length} relation(s) that hold its rows` : ''}`);
    const rels = [...new Set([t.quoted, ...t.leaves.map((l) => l.quoted)])];
    out.push(`grant select on ${rels.join(', ')} to ${role};`);
    for (const r of rels) out.push(`grant update (${t.columns.map(quoteIdent).join(', ')}) on ${r} to ${role};`);
  }
  out.push(
    '',
    '-- The load throttle reads other sessions in pg_stat_activity; the monitoring role shows their state. No data access.',
    `grant pg_monitor to ${role};`,
    '',
    ...skipTriggersGrant(f, role),
    ...originGrants(f, role),
    '',
    '-- PostgreSQL 14 and older let every role create objects in schema public (15+ do not): consider',
    '-- REVOKE CREATE ON SCHEMA public FROM PUBLIC there (check your applications first).',
  );
  if (rls.length) {
    out.push(
      '',
      `-- Row level security is on for ${safe(rls.map((l) => l.quoted).join(', '))}: pg-rekey must see every row`,
      '-- (its sessions run with row_security = off, so a hidden row is an error, never a silent skip). Needs a superuser.',
      `alter role ${role} bypassrls;`,
    );
  } else {
    out.push(
      '',
      '-- Row level security is off on every configured relation today. pg-rekey must see every row: its sessions run',
      '-- with row_security = off, so a policy turned on later (ENABLE ROW LEVEL SECURITY) makes setup, backfill and',
      '-- verify refuse and run stop (exit 2) instead of counting part of a table. Then, as a superuser, either',
      `--   alter role ${role} bypassrls;`,
      "-- or run pg-rekey as the table's owner (the owner sees every row unless the table has FORCE ROW LEVEL SECURITY).",
    );
  }
  out.push('', `-- The publication the stream decodes (inserts and updates; deletes and truncates need no rewrite).`);
  if (f.unpublished === null) {
    const roots = f.tables.map((t) => t.quoted).join(', ');
    out.push(
      gexecIf(
        `create publication ${quoteIdent(f.publication)} for table ${roots} with (publish = 'insert, update')`,
        `not exists (select from pg_publication where pubname = ${lit(f.publication)})`,
      ),
    );
  } else {
    for (const t of f.tables) {
      const missing = t.leaves.filter((l) => f.unpublished!.includes(l.quoted));
      if (missing.length === 0) continue;
      // A partition is published through its root; an INHERITS child only through its own entry.
      const add = t.partitioned ? [{ rel: t.quoted, sql: t.quoted }] : missing.map((l) => ({ rel: l.quoted, sql: `only ${l.quoted}` }));
      for (const a of add) {
        out.push(
          gexecIf(
            `alter publication ${quoteIdent(f.publication)} add table ${a.sql}`,
            `not exists (select from pg_publication_rel pr join pg_publication p on p.oid = pr.prpubid where p.pubname = ${lit(f.publication)} and pr.prrelid = ${lit(a.rel)}::regclass)`,
          ),
        );
      }
    }
  }
  out.push(
    '',
    'commit;',
    '',
    `-- Afterwards (after \`pg-rekey teardown --drop-state\`): DROP PUBLICATION ${safe(quoteIdent(f.publication))}; DROP OWNED BY ${safe(role)}; DROP ROLE ${safe(role)};${f.originSlot !== undefined && Number.parseInt(f.serverVersion, 10) >= 16 ? ` The origins: teardown drops them when it may, else prints the pg_replication_origin_drop to run as a superuser.` : ''}`,
    '',
  );
  return out.join('\n');
}
