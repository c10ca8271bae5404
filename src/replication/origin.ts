import type pg from 'pg';
import type { Logger } from '../logger.js';
import { checkout } from '../db/connect.js';
import { ConfigError } from '../errors.js';

/**
 * Replication origins on pg-rekey's rewrites (PostgreSQL 16+).
 *
 * A session that called pg_replication_origin_session_setup(name) stamps every change it
 * writes (and its commits) with that origin. Logical consumers can then skip them: a
 * subscription or a pgoutput client with `origin = none` (16+), Debezium, test_decoding's
 * `only-local`. pg-rekey's own stream skips the transactions of its own origins.
 *
 * Facts this module relies on (checked on 14-18):
 * - One origin can be set up by one session at a time (55006 "already active for PID n");
 *   PostgreSQL 18 has no way to share it. The sweep and the stream write concurrently, so
 *   each writer has its own origin, set up for one transaction and reset after it. A second
 *   process writing for the same slot (a `backfill` beside `run`) finds it in use and writes
 *   that transaction without an origin, which is always safe (it is the behaviour without
 *   the feature).
 * - The origin is taken per WAL record: set up before the first write of the transaction and
 *   reset after its commit, every change and the commit carry it.
 * - Names starting with pg_ are reserved, hence `pgrekey_<slot>_sweep` / `_stream`.
 *
 * Why pg-rekey's stream may skip its own origins (the convergence argument, design.md rules
 * 2 and 7): a change the stream skips must never be one it has work for. A rewrite
 * transaction writes the CAS (values at the target version, or values the writer has already
 * quarantined) and pgrekey.* state (not published). Anything else in it comes from a trigger
 * or a rule on a relation it writes (an AFTER trigger writing the old value back, an audit
 * INSERT of the old value into a configured table, a cascade): such a transaction carries no
 * origin at all, so the stream decodes and compares it as before. The check is made before the
 * first write and again after the writes, when this transaction's UPDATE holds ROW EXCLUSIVE on
 * every relation it wrote: CREATE TRIGGER, ENABLE TRIGGER and CREATE RULE wait for that lock,
 * so a trigger either shows in the second check (the transaction is rolled back and retried)
 * or cannot fire in it. Only pg-rekey's own sessions ever set these origins up; an application
 * write, or a write arriving through another origin (a subscription feeding the table), is
 * never skipped: the stream skips by name, not with `origin = none`.
 */
export interface OriginNames {
  sweep: string;
  stream: string;
}

export function originNames(slot: string): OriginNames {
  return { sweep: `pgrekey_${slot}_sweep`, stream: `pgrekey_${slot}_stream` };
}

export const SESSION_FUNCTIONS = ['pg_replication_origin_session_setup(text)', 'pg_replication_origin_session_reset()'] as const;

export interface OriginState {
  on: boolean;
  names: OriginNames;
  /** Why it is off (unset when on). */
  reason?: string;
  /** Statements that turn it on, to run as a superuser. */
  fixes: string[];
  /** Off only because the origins do not exist yet, and this role may create them (setup will). */
  creatable?: boolean;
}

/**
 * What `replication.origin` resolves to on this server for this role. `create`: create the
 * missing origins if this role may (setup does; run only uses them).
 */
export async function resolveOrigin(db: pg.Pool | pg.ClientBase, setting: 'auto' | 'on' | 'off', slot: string, create = false): Promise<OriginState> {
  const names = originNames(slot);
  if (setting === 'off') return { on: false, names, reason: 'replication.origin is off', fixes: [] };
  const v = Number((await db.query<{ v: string }>(`select current_setting('server_version_num') as v`)).rows[0]!.v);
  if (v < 160000) return { on: false, names, reason: `the server is PostgreSQL ${Math.floor(v / 10000)}; consumers can skip an origin (origin = none) from 16`, fixes: [] };
  const priv = await db.query<{ f: string; ok: boolean }>(`select f, has_function_privilege(f, 'execute') as ok from unnest($1::text[]) f`, [[...SESSION_FUNCTIONS, 'pg_replication_origin_create(text)']]);
  const may = new Map(priv.rows.map((r) => [r.f, r.ok]));
  const role = (await db.query<{ r: string }>(`select current_user as r`)).rows[0]!.r;
  const fixes: string[] = [];
  const missingGrants = SESSION_FUNCTIONS.filter((f) => !may.get(f));
  if (missingGrants.length) fixes.push(`GRANT EXECUTE ON FUNCTION ${missingGrants.join(', ')} TO ${quoteRole(role)};`);
  let missing = await missingOrigins(db, names);
  if (missing.length && create && may.get('pg_replication_origin_create(text)')) {
    for (const n of missing) await db.query(`select pg_replication_origin_create($1)`, [n]).catch((e: { code?: string }) => (e.code === '23505' ? undefined : Promise.reject(e)));
    missing = await missingOrigins(db, names);
  }
  const creatable = missing.length > 0 && missingGrants.length === 0 && may.get('pg_replication_origin_create(text)') === true;
  for (const n of missing) fixes.push(`SELECT pg_replication_origin_create('${n}');`);
  if (fixes.length === 0) return { on: true, names, fixes };
  const why = [missingGrants.length ? `role ${role} may not execute ${missingGrants.join(', ')}` : '', missing.length ? `origin(s) ${missing.join(', ')} do not exist` : ''].filter(Boolean).join('; ');
  return { on: false, names, reason: why, fixes, creatable };
}

/** setup's check (before any change): with `replication.origin: on`, what keeps the origin off. */
export async function originProblems(db: pg.ClientBase, setting: 'auto' | 'on' | 'off', slot: string): Promise<string[]> {
  if (setting !== 'on') return [];
  const st = await resolveOrigin(db, setting, slot);
  if (st.on || st.creatable) return [];
  return [`replication.origin is on, but ${st.reason}${st.fixes.length ? `: run as a superuser ${st.fixes.join(' ')}` : ' (set replication.origin to auto or off)'}`];
}

/** setup, after the slot: creates the origins when it may; one line for its report, and a log line when the origin stays off. */
export async function setupOrigins(db: pg.Pool, setting: 'auto' | 'on' | 'off', slot: string, log: Logger): Promise<string> {
  const st = await resolveOrigin(db, setting, slot, true);
  if (st.on) {
    log.info({ origins: [st.names.sweep, st.names.stream] }, 'replication origins ready');
    return `replication origin: on (${st.names.sweep}, ${st.names.stream}): consumers with origin = none skip pg-rekey's rewrites`;
  }
  const fix = st.fixes.length ? `; to turn it on, run as a superuser: ${st.fixes.join(' ')}` : '';
  log[st.fixes.length ? 'warn' : 'info']({ reason: st.reason, fix: st.fixes.length ? st.fixes : undefined }, `replication origin off: ${st.reason}`);
  return `replication origin: off (${st.reason}): other logical consumers see each rewrite as an UPDATE${fix}`;
}

async function missingOrigins(db: pg.Pool | pg.ClientBase, names: OriginNames): Promise<string[]> {
  const want = [names.sweep, names.stream];
  const r = await db.query<{ roname: string }>(`select roname from pg_replication_origin where roname = any($1::text[])`, [want]);
  const have = new Set(r.rows.map((x) => x.roname));
  return want.filter((n) => !have.has(n));
}

/** Drops the slot's origins (teardown); returns the statements left for a superuser when this role may not. */
export async function dropOrigins(db: pg.Pool, slot: string): Promise<{ dropped: string[]; left: string[] }> {
  const names = originNames(slot);
  const r = await db.query<{ roname: string }>(`select roname from pg_replication_origin where roname = any($1::text[])`, [[names.sweep, names.stream]]);
  const may = (await db.query<{ ok: boolean }>(`select has_function_privilege('pg_replication_origin_drop(text)', 'execute') as ok`)).rows[0]!.ok;
  const out = { dropped: [] as string[], left: [] as string[] };
  for (const { roname } of r.rows) {
    if (!may) {
      out.left.push(`SELECT pg_replication_origin_drop('${roname}');`);
      continue;
    }
    // An origin in use by a session (a rewrite still running) cannot be dropped: left for later.
    const ok = await db.query(`select pg_replication_origin_drop($1)`, [roname]).then(() => true, () => false);
    (ok ? out.dropped : out.left).push(ok ? roname : `SELECT pg_replication_origin_drop('${roname}');`);
  }
  return out;
}

function quoteRole(role: string): string {
  return /^[a-z_][a-z0-9_]*$/.test(role) ? role : `"${role.replace(/"/g, '""')}"`;
}

/** A relation a rewrite transaction writes, and whether its UPDATE runs with session_replication_role = replica (`triggers: skip`). */
export interface OriginRelation {
  quoted: string;
  replica: boolean;
}

/**
 * Does an UPDATE of these relations fire anything that may write: an UPDATE trigger (statement or
 * row) or a rule that fires in the session's mode (ENABLE and ENABLE ALWAYS normally; ENABLE
 * REPLICA and ALWAYS under session_replication_role = replica). Internal triggers that only check
 * (foreign key checks on the referencing side, deferred unique rechecks) do not write and do not
 * count; cascading foreign key actions do.
 */
const FIRES_SQL = `with rel as (select to_regclass(r) as oid, replica from unnest($1::text[], $2::bool[]) x(r, replica))
  select exists (
    select from rel join pg_trigger tg on tg.tgrelid = rel.oid join pg_proc p on p.oid = tg.tgfoid
     where (tg.tgtype & 16) <> 0 and tg.tgenabled = any(case when rel.replica then array['R', 'A'] else array['O', 'A'] end::"char"[])
       and not (tg.tgisinternal and p.pronamespace = 'pg_catalog'::regnamespace
                and p.proname in ('RI_FKey_check_upd', 'RI_FKey_noaction_upd', 'RI_FKey_restrict_upd', 'unique_key_recheck'))
  ) or exists (
    select from rel join pg_rewrite rw on rw.ev_class = rel.oid
     where rw.rulename <> '_RETURN' and rw.ev_enabled = any(case when rel.replica then array['R', 'A'] else array['O', 'A'] end::"char"[])
  ) as fires`;

/** A trigger or rule appeared on a relation between the two checks: the transaction is rolled back and retried. */
export class OriginRecheckFailed extends Error {
  /** serialization_failure: every caller already retries it (a sweep chunk, a stream batch that replays). */
  readonly code = '40001';
  constructor() {
    super('a trigger or rule appeared on a relation while pg-rekey rewrote it; retrying the rewrite without a replication origin');
  }
}

/** One writer's origin (the sweep's or the stream's), used one transaction at a time. */
export class RewriteOrigin {
  /** Relations known to fire triggers or rules: their transactions carry no origin (until restart, even if the trigger is dropped). */
  private readonly fires = new Set<string>();
  private busyLogged = false;

  constructor(
    readonly name: string | null,
    private readonly log?: Logger,
  ) {}

  /**
   * Before BEGIN: sets the origin up on this session when every relation the transaction will
   * write fires nothing. Returns whether it did; when true, call `confirm` after the writes
   * and `end` after the commit or rollback (or discard the client).
   */
  async start(client: pg.ClientBase, relations: readonly OriginRelation[]): Promise<boolean> {
    if (this.name === null) return false;
    if (relations.some((r) => this.fires.has(key(r))) || (await firesAnything(client, relations))) {
      relations.forEach((r) => this.fires.add(key(r)));
      return false;
    }
    try {
      await client.query(`select pg_replication_origin_session_setup($1)`, [this.name]);
    } catch (e) {
      // 55006: set up by another session; 53400: the server has no free origin slot (max_active_replication_origins).
      const code = (e as { code?: string }).code;
      if (code !== '55006' && code !== '53400') throw e;
      const why = code === '55006' ? 'is in use by another session (another pg-rekey process for this slot?)' : 'cannot be set up: the server has no free replication origin slot (max_active_replication_origins, max_replication_slots before 18)';
      if (!this.busyLogged) this.log?.warn({ origin: this.name, code }, `replication origin ${this.name} ${why}: rewrites are written without it while it is so`);
      this.busyLogged = true;
      return false;
    }
    return true;
  }

  /** After the writes, inside the transaction (its UPDATEs hold ROW EXCLUSIVE): still nothing that fires. */
  async confirm(client: pg.ClientBase, relations: readonly OriginRelation[]): Promise<void> {
    if (!(await firesAnything(client, relations))) return;
    relations.forEach((r) => this.fires.add(key(r)));
    throw new OriginRecheckFailed();
  }

  /** After the transaction ended: the session no longer carries the origin. */
  async end(client: pg.ClientBase): Promise<void> {
    await client.query(`select pg_replication_origin_session_reset()`);
  }
}

async function firesAnything(client: pg.ClientBase, relations: readonly OriginRelation[]): Promise<boolean> {
  return (await client.query<{ fires: boolean }>(FIRES_SQL, [relations.map((r) => r.quoted), relations.map((r) => r.replica)])).rows[0]!.fires;
}

const key = (r: OriginRelation) => `${r.replica ? 'replica' : 'origin'} ${r.quoted}`;

/**
 * db/connect.ts inTransaction with the writer's origin: set up before BEGIN when the relations
 * fire nothing, confirmed before COMMIT, reset after it. A session that may still carry the
 * origin is discarded, never returned to the pool.
 */
export async function inOriginTransaction<T>(pool: pg.Pool, origin: RewriteOrigin | undefined, relations: readonly OriginRelation[], begin: string, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await checkout(pool);
  let marked = false;
  try {
    marked = origin ? await origin.start(client, relations) : false;
    await client.query(begin);
    const out = await fn(client);
    if (marked) await origin!.confirm(client, relations);
    await client.query('commit');
    // Committed: a failed reset only costs the connection.
    client.release(marked && !(await origin!.end(client).then(() => true, () => false)) ? true : undefined);
    return out;
  } catch (e) {
    await client.query('rollback').catch(() => undefined);
    client.release(true);
    throw e;
  }
}

export interface RewriteOrigins {
  state: OriginState;
  sweep?: RewriteOrigin;
  stream?: { writer: RewriteOrigin; skip: ReadonlySet<string> };
}

/**
 * `replication.origin` for a command that rewrites (run, backfill): says in the log whether the
 * rewrites carry the origin and, when not, why and what turns it on. `on` refuses (exit 2)
 * when it cannot be had.
 */
export async function rewriteOrigins(db: pg.Pool, setting: 'auto' | 'on' | 'off', slot: string, log: Logger): Promise<RewriteOrigins> {
  const state = await resolveOrigin(db, setting, slot);
  const l = log.child({ component: 'origin' });
  if (!state.on) {
    const detail = { reason: state.reason, fix: state.fixes.length ? state.fixes : undefined };
    if (setting === 'on') throw new ConfigError(`replication.origin is on, but pg-rekey's rewrites cannot carry a replication origin: ${state.reason}`, state.fixes.length ? `run as a superuser: ${state.fixes.join(' ')}` : 'set replication.origin to auto or off');
    l.info(detail, `replication origin off (${state.reason}): other logical consumers see each rewrite as an ordinary UPDATE`);
    return { state };
  }
  l.info({ origins: [state.names.sweep, state.names.stream] }, `replication origin on: rewrites carry ${state.names.sweep} (sweep) and ${state.names.stream} (stream); consumers with origin = none skip them`);
  const sweep = new RewriteOrigin(state.names.sweep, l);
  return { state, sweep, stream: { writer: new RewriteOrigin(state.names.stream, l), skip: new Set([state.names.sweep, state.names.stream]) } };
}
