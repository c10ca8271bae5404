import type pg from 'pg';
import { checkout } from '../db/connect.js';
import { readServerIdentity, recordSlotServer } from './server-identity.js';

export interface SlotInfo {
  exists: boolean;
  plugin: string | null;
  database: string | null;
  active: boolean;
  activePid: number | null;
  walStatus: string | null;
  confirmedFlushLsn: string | null;
  restartLsn: string | null;
  /** Bytes between the server's current WAL position and confirmed_flush_lsn. */
  lagBytes: number | null;
  /** WAL the server keeps for this slot (current position - restart_lsn). */
  retainedBytes: number | null;
  currentLsn: string;
}

export async function readSlot(db: pg.Pool | pg.ClientBase, slot: string): Promise<SlotInfo> {
  const r = await db.query(
    `select s.slot_name is not null as exists, s.plugin, s.database, coalesce(s.active, false) as active, s.active_pid as "activePid",
            s.wal_status as "walStatus", s.confirmed_flush_lsn::text as "confirmedFlushLsn", s.restart_lsn::text as "restartLsn",
            pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::float8 as "lagBytes",
            pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::float8 as "retainedBytes",
            pg_current_wal_lsn()::text as "currentLsn"
       from (select 1) one left join pg_replication_slots s on s.slot_name = $1`,
    [slot],
  );
  return r.rows[0] as SlotInfo;
}

/**
 * The slot holds back more WAL than replication.max_retained_wal (0 = off):
 * the server cannot recycle it, and its disk fills if the slot never moves.
 */
export function retainedWalExceeded(s: SlotInfo, maxBytes: number): boolean {
  return maxBytes > 0 && s.retainedBytes !== null && s.retainedBytes > maxBytes;
}

/** 1536 -> "1.5 kB", for log lines and status. */
export function formatBytes(bytes: number | null): string {
  if (bytes === null) return '?';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  let n = bytes;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

/** A slot that exists but can no longer deliver every change (rule 6 of the argument). */
export function slotUnusable(s: SlotInfo): string | null {
  if (!s.exists) return 'slot does not exist';
  if (s.walStatus === 'lost') return "slot's wal_status is 'lost' (WAL it needed was removed)";
  return null;
}

/**
 * A slot that shows in pg_replication_slots but is not created yet: a session
 * is still inside pg_create_logical_replication_slot (waiting for a
 * consistent snapshot), and confirmed_flush_lsn is set only at its end. Such
 * a slot is not ready: nothing can stream from it (its creator holds it), and
 * if the creator is cancelled or dies, PostgreSQL drops it.
 */
export function slotBeingCreated(s: SlotInfo): boolean {
  // A physical slot (no plugin) never has a confirmed_flush_lsn; a logical one has its plugin from the start.
  return s.exists && s.plugin !== null && s.confirmedFlushLsn === null;
}

/** A transaction that holds up the creation of a logical slot (never its query text: it may hold plaintext). */
export type SlotBlocker =
  | { kind: 'session'; pid: number; database: string | null; application: string; state: string | null; xactSeconds: number | null }
  | { kind: 'prepared'; gid: string; database: string; owner: string; preparedSeconds: number };

export interface CreateSlotOptions {
  /** Called while the slot waits for other transactions to end: first after `firstReportMs`, then every `reportEveryMs`. */
  onWait?: (blockers: SlotBlocker[], waitedMs: number) => void;
  firstReportMs?: number;
  reportEveryMs?: number;
}

/**
 * Creates the logical slot. PostgreSQL first waits for every transaction
 * that has an xid, in any database of the cluster, to end (it needs a
 * consistent snapshot), prepared transactions included, so a forgotten
 * `idle in transaction` session or `PREPARE TRANSACTION` holds setup up
 * indefinitely. While it waits, `onWait` is told who blocks it. Throws
 * PostgreSQL's 42710 (duplicate_object) if another session created or is
 * creating a slot of that name meanwhile. Records the server it was created on (server-identity.ts).
 */
export async function createSlot(pool: pg.Pool, slot: string, event: 'created' | 'recreated', reason: string | null, opts: CreateSlotOptions = {}): Promise<string> {
  const creator = await checkout(pool);
  let lsn: string;
  let failover = false;
  try {
    const me = (await creator.query<{ pid: number; since: string; v: number }>(`select pg_backend_pid() as pid, clock_timestamp()::text as since, current_setting('server_version_num')::int as v`)).rows[0]!;
    failover = me.v >= 170000;
    const started = Date.now();
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const arm = (ms: number) => {
      timer = setTimeout(() => void report(), ms);
      timer.unref();
    };
    const report = async (): Promise<void> => {
      const blockers = await slotBlockers(pool, me.pid, me.since).catch(() => null);
      if (done) return; // created meanwhile: no late warning, no new timer
      try {
        if (blockers?.length) opts.onWait?.(blockers, Date.now() - started);
      } catch {
        // a failing report must not end the process; the slot creation goes on
      }
      arm(opts.reportEveryMs ?? 10_000);
    };
    if (opts.onWait) arm(opts.firstReportMs ?? 3_000);
    try {
      // 17+: a failover slot (temporary false, two_phase false, failover true), which standbys with
      // sync_replication_slots = on keep a copy of, so that it survives a promotion.
      const sql = failover ? `select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)` : `select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput')`;
      lsn = (await creator.query<{ lsn: string }>(sql, [slot])).rows[0]!.lsn;
    } finally {
      done = true;
      clearTimeout(timer);
    }
  } finally {
    creator.release();
  }
  await pool.query(`insert into pgrekey.slot_event (slot_name, event, lsn, reason) values ($1, $2, $3, $4)`, [slot, event, lsn, reason]);
  await recordSlotServer(pool, slot, await readServerIdentity(pool), failover);
  return lsn;
}

/**
 * The transactions the backend `pid` (inside pg_create_logical_replication_slot)
 * waits for, the one it waits for right now first: sessions (pg_blocking_pids,
 * and every other session holding an xid since before `since`, which it will
 * wait for next) and prepared transactions (pg_prepared_xacts: a prepared
 * transaction holds its xid with no session, and pg_blocking_pids reports it
 * as pid 0; the xid awaited is in pg_locks). `since`: when the creation began
 * (null: unknown, only what blocks it now, and every prepared transaction).
 */
export async function slotBlockers(db: pg.Pool | pg.ClientBase, pid: number, since: string | null = null): Promise<SlotBlocker[]> {
  const sessions = await db.query<{ pid: number; database: string | null; application: string; state: string | null; xactSeconds: number | null }>(
    `select a.pid, a.datname as database, a.application_name as application, a.state,
            extract(epoch from now() - a.xact_start)::int as "xactSeconds"
       from pg_stat_activity a
      where a.pid <> $1
        and (a.pid = any(pg_blocking_pids($1))
             or (a.backend_xid is not null and $2::timestamptz is not null and a.xact_start < $2::timestamptz))
      order by a.pid = any(pg_blocking_pids($1)) desc, a.xact_start`,
    [pid, since],
  );
  const prepared = await db.query<{ gid: string; database: string; owner: string; preparedSeconds: number }>(
    `select p.gid, p.database, p.owner, extract(epoch from now() - p.prepared)::int as "preparedSeconds"
       from pg_prepared_xacts p
      where p.transaction in (select l.transactionid from pg_locks l where l.pid = $1 and not l.granted and l.locktype = 'transactionid')
         or $2::timestamptz is null or p.prepared < $2::timestamptz
      order by p.transaction in (select l.transactionid from pg_locks l where l.pid = $1 and not l.granted and l.locktype = 'transactionid') desc, p.prepared`,
    [pid, since],
  );
  return [...sessions.rows.map((r) => ({ kind: 'session' as const, ...r })), ...prepared.rows.map((r) => ({ kind: 'prepared' as const, ...r }))];
}

function formatAge(secs: number | null): string {
  const s = secs ?? 0;
  return s >= 60 ? `${Math.floor(s / 60)}m${s % 60}s` : `${s}s`;
}

/** A gid as an SQL string literal, for COMMIT PREPARED / ROLLBACK PREPARED. */
function gidLiteral(gid: string): string {
  return `'${gid.replace(/'/g, "''")}'`;
}

/**
 * "pid 123 in database app (application psql, idle in transaction for 4m10s)", or
 * "prepared transaction 'tx-42' in database app (owner app, prepared 4m10s ago)".
 */
export function describeBlocker(b: SlotBlocker): string {
  if (b.kind === 'prepared') return `prepared transaction ${gidLiteral(b.gid)} in database ${b.database} (owner ${b.owner}, prepared ${formatAge(b.preparedSeconds)} ago)`;
  return `pid ${b.pid} in database ${b.database ?? '?'} (application ${b.application || '?'}, ${b.state ?? 'state unknown'} for ${formatAge(b.xactSeconds)})`;
}

/** What the operator can do about these blockers. */
function blockerAdvice(blockers: SlotBlocker[]): string {
  const out = [];
  if (blockers.some((b) => b.kind === 'session')) out.push('let them finish, or end a session with pg_terminate_backend(pid)');
  const prepared = blockers.find((b) => b.kind === 'prepared');
  if (prepared?.kind === 'prepared') {
    out.push(
      `finish a prepared transaction (it has no session; it outlives restarts): COMMIT PREPARED ${gidLiteral(prepared.gid)} or ROLLBACK PREPARED ${gidLiteral(prepared.gid)}, ` +
        `connected to its database (${prepared.database}) as its owner or a superuser, once its transaction manager agrees`,
    );
  }
  return out.join('; ');
}

/** The log line while a slot waits: who, and what the operator can do. */
export function logSlotWait(log: { warn: (o: object, msg: string) => void }, slot: string): CreateSlotOptions['onWait'] {
  return (blockers, waitedMs) =>
    log.warn(
      { slot, waitedSeconds: Math.round(waitedMs / 1000), blockers: blockers.map(describeBlocker) },
      `creating the replication slot waits for ${blockers.length} open transaction(s) to end (PostgreSQL needs a consistent snapshot across all databases); ` +
        blockerAdvice(blockers),
    );
}

export interface SlotCreationWaitOptions {
  /** Called at once, then every `reportEveryMs`, while another session creates the slot. */
  onWait?: (creator: { pid: number | null; application: string | null }, blockers: SlotBlocker[], waitedMs: number) => void;
  reportEveryMs?: number;
  pollMs?: number;
}

/**
 * Waits while another session creates `slot` (see slotBeingCreated), until
 * the slot is ready (its confirmed_flush_lsn is set) or gone (its creator was
 * cancelled: PostgreSQL drops a slot whose creation failed). Returns the
 * slot as it is then. No time bound, like the creation itself: the creator
 * waits for transactions that only their owners can end, and `onWait` names them.
 */
export async function waitForSlotCreation(db: pg.Pool, slot: string, opts: SlotCreationWaitOptions = {}): Promise<SlotInfo> {
  const started = Date.now();
  let nextReport = started;
  for (;;) {
    const s = await readSlot(db, slot);
    if (!slotBeingCreated(s)) return s;
    if (opts.onWait && Date.now() >= nextReport) {
      nextReport = Date.now() + (opts.reportEveryMs ?? 10_000);
      const who = s.activePid
        ? (await db
            .query<{ since: string | null; application: string | null }>(`select query_start::text as since, application_name as application from pg_stat_activity where pid = $1`, [s.activePid])
            .catch(() => null))?.rows[0]
        : undefined;
      const blockers = s.activePid ? await slotBlockers(db, s.activePid, who?.since ?? null).catch(() => []) : [];
      try {
        opts.onWait({ pid: s.activePid, application: who?.application ?? null }, blockers, Date.now() - started);
      } catch {
        // a failing report must not end the wait
      }
    }
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 200));
  }
}

/** The log line while another session creates the slot. */
export function logSlotCreationWait(log: { warn: (o: object, msg: string) => void }, slot: string): SlotCreationWaitOptions['onWait'] {
  return (creator, blockers, waitedMs) =>
    log.warn(
      { slot, creatorPid: creator.pid, waitedSeconds: Math.round(waitedMs / 1000), blockers: blockers.map(describeBlocker) },
      `replication slot ${slot} is being created by another session (pid ${creator.pid ?? '?'}, application ${creator.application || '?'}: another pg-rekey setup, or run recreating it); ` +
        'it is not ready yet, waiting for it' +
        (blockers.length ? `; it waits for ${blockers.length} open transaction(s) to end: ${blockerAdvice(blockers)}` : ''),
    );
}

/** Drops a slot, first ending the walsender that holds it (if any). */
export async function dropSlot(db: pg.Pool | pg.ClientBase, slot: string, reason: string): Promise<boolean> {
  const s = await readSlot(db, slot);
  if (!s.exists) return false;
  if (s.activePid) {
    await db.query(`select pg_terminate_backend($1)`, [s.activePid]);
    for (let i = 0; i < 50 && (await readSlot(db, slot)).active; i++) await new Promise((r) => setTimeout(r, 100));
  }
  await db.query(`select pg_drop_replication_slot($1)`, [slot]);
  await db.query(`insert into pgrekey.slot_event (slot_name, event, reason) values ($1, 'dropped', $2)`, [slot, reason]).catch(() => undefined);
  return true;
}

export async function slotRecreations(db: pg.Pool | pg.ClientBase, slot: string): Promise<number> {
  const r = await db.query<{ n: number }>(`select count(*)::int as n from pgrekey.slot_event where slot_name = $1 and event = 'recreated'`, [slot]);
  return r.rows[0]!.n;
}
