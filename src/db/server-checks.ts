import type pg from 'pg';

export const MIN_SERVER_VERSION = 140000; // TID range scans arrive in PostgreSQL 14

export interface ServerFacts {
  versionNum: number;
  version: string;
  walLevel: string;
  maxReplicationSlots: number;
  maxWalSenders: number;
  usedSlots: number;
  isSuperuser: boolean;
  canReplicate: boolean;
  canCreateInDatabase: boolean;
  stateSchemaExists: boolean;
  canCreateInStateSchema: boolean;
  /** Tables and sequences in schema pgrekey this role does not own (a pending migration that alters one fails). */
  stateObjectsNotOwned: { name: string; owner: string }[];
  currentUser: string;
  database: string;
  /** current_user and current_database() as SQL identifiers (quote_ident: quoted only when needed). */
  currentUserSql: string;
  databaseSql: string;
}

export async function readServerFacts(db: pg.Pool | pg.ClientBase): Promise<ServerFacts> {
  const r = await db.query(`
    select current_setting('server_version_num')::int as "versionNum",
           current_setting('server_version') as version,
           current_setting('wal_level') as "walLevel",
           current_setting('max_replication_slots')::int as "maxReplicationSlots",
           current_setting('max_wal_senders')::int as "maxWalSenders",
           (select count(*)::int from pg_replication_slots) as "usedSlots",
           r.rolsuper as "isSuperuser",
           (r.rolreplication or r.rolsuper) as "canReplicate",
           has_database_privilege(current_database(), 'CREATE') as "canCreateInDatabase",
           to_regnamespace('pgrekey') is not null as "stateSchemaExists",
           coalesce(has_schema_privilege(to_regnamespace('pgrekey')::oid, 'CREATE'), false) as "canCreateInStateSchema",
           array(select json_build_object('name', format('%I.%I', 'pgrekey', c.relname), 'owner', pg_get_userbyid(c.relowner))
                   from pg_class c
                  where c.relnamespace = to_regnamespace('pgrekey') and c.relkind in ('r', 'p', 'S') and not pg_has_role(c.relowner, 'USAGE')
                  order by c.relname) as "stateObjectsNotOwned",
           current_user as "currentUser", current_database() as database,
           quote_ident(current_user) as "currentUserSql", quote_ident(current_database()) as "databaseSql"
      from pg_roles r where r.rolname = current_user`);
  return r.rows[0] as ServerFacts;
}

/** Replication-specific problems: slot headroom, REPLICATION attribute. */
export function replicationProblems(f: ServerFacts, slotExists: boolean): string[] {
  const out: string[] = [];
  if (!slotExists && f.usedSlots >= f.maxReplicationSlots) {
    out.push(`all ${f.maxReplicationSlots} replication slots are in use (max_replication_slots): raise it (needs a restart) or drop an unused slot`);
  }
  if (f.maxWalSenders < 1) out.push('max_wal_senders is 0: set it to at least 1 more than the standbys need (needs a restart)');
  if (!f.canReplicate) {
    out.push(`role ${f.currentUser} lacks the REPLICATION attribute needed to stream from the slot: ALTER ROLE ${f.currentUserSql} REPLICATION (managed services: grant rds_replication or the equivalent)`);
  }
  return out;
}

/** Problems that stop setup, each with what to do about it. */
export function serverProblems(f: ServerFacts): string[] {
  const out: string[] = [];
  if (f.versionNum < MIN_SERVER_VERSION) {
    out.push(`PostgreSQL ${f.version} is too old: pg-rekey needs 14 or newer (TID range scans); upgrade the server`);
  }
  if (f.walLevel !== 'logical') {
    out.push(
      `wal_level is '${f.walLevel}', pg-rekey needs 'logical': ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL ` +
        `(a reload is not enough). Managed services: RDS/Aurora rds.logical_replication = 1, Cloud SQL cloudsql.logical_decoding = on, Azure wal_level = LOGICAL`,
    );
  }
  if (!f.stateSchemaExists && !f.canCreateInDatabase) {
    out.push(
      `role ${f.currentUser} may not create the pgrekey schema: GRANT CREATE ON DATABASE ${f.databaseSql} TO ${f.currentUserSql}, ` +
        `or have a superuser create it for the role: CREATE SCHEMA pgrekey AUTHORIZATION ${f.currentUserSql} (see sql/roles.sql)`,
    );
  }
  if (f.stateSchemaExists && !f.canCreateInStateSchema) {
    out.push(`role ${f.currentUser} may not create objects in schema pgrekey: GRANT CREATE ON SCHEMA pgrekey TO ${f.currentUserSql}, or run setup as its owner (see sql/roles.sql)`);
  }
  return out;
}

/** Problems applying `pending` migrations to an existing state schema (objects another role owns cannot be altered). */
export function stateProblems(f: ServerFacts, pending: readonly string[]): string[] {
  if (pending.length === 0 || f.stateObjectsNotOwned.length === 0) return [];
  return [
    `the pending state migrations (${pending.join(', ')}) change schema pgrekey, but role ${f.currentUser} does not own ` +
      f.stateObjectsNotOwned.map((o) => `${o.name} (owned by ${o.owner})`).join(', ') +
      `: run setup once as that role, or as it: ${[...new Set(f.stateObjectsNotOwned.map((o) => o.name))].map((n) => `ALTER TABLE ${n} OWNER TO ${f.currentUserSql}`).join('; ')}`,
  ];
}
