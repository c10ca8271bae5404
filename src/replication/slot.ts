import type pg from 'pg';
import type { TableInfo } from '../db/catalog.js';
import { checkout } from '../db/connect.js';
import { quoteIdent } from '../db/ident.js';

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
 * Publication for exactly the configured tables, INSERT and UPDATE only.
 * A partitioned table brings its partitions, present and future; changes
 * arrive under the leaf's name (publish_via_partition_root off).
 */
export async function ensurePublication(db: pg.Pool | pg.ClientBase, name: string, tables: readonly TableInfo[]): Promise<'created' | 'updated'> {
  const list = tables.map((t) => t.quoted).join(', ');
  const exists = (await db.query(`select 1 from pg_publication where pubname = $1`, [name])).rowCount! > 0;
  if (exists) {
    await db.query(`alter publication ${quoteIdent(name)} set table ${list}`);
    await db.query(`alter publication ${quoteIdent(name)} set (publish = 'insert, update')`);
    return 'updated';
  }
  await db.query(`create publication ${quoteIdent(name)} for table ${list} with (publish = 'insert, update')`);
  return 'created';
}

/** A transaction that holds up the creation of a logical slot (never its query text: it may hold plaintext). */
export interface SlotBlocker {
  pid: number;
  database: string | null;
  application: string;
  state: string | null;
  xactSeconds: number | null;
}

export interface CreateSlotOptions {
  /** Called while the slot waits for other transactions to end: first after `firstReportMs`, then every `reportEveryMs`. */
  onWait?: (blockers: SlotBlocker[], waitedMs: number) => void;
  firstReportMs?: number;
  reportEveryMs?: number;
}

/**
 * Creates the logical slot. PostgreSQL first waits for every transaction
 * that has an xid, in any database of the cluster, to end (it needs a
 * consistent snapshot), so a forgotten `idle in transaction` session holds
 * setup up indefinitely. While it waits, `onWait` is told who blocks it.
 */
export async function createSlot(pool: pg.Pool, slot: string, event: 'created' | 'recreated', reason: string | null, opts: CreateSlotOptions = {}): Promise<string> {
  const creator = await checkout(pool);
  let lsn: string;
  try {
    const pid = (await creator.query<{ pid: number }>(`select pg_backend_pid() as pid`)).rows[0]!.pid;
    const started = Date.now();
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const arm = (ms: number) => {
      timer = setTimeout(() => void report(), ms);
      timer.unref();
    };
    const report = async (): Promise<void> => {
      const blockers = await slotBlockers(pool, pid).catch(() => null);
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
      lsn = (await creator.query<{ lsn: string }>(`select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput')`, [slot])).rows[0]!.lsn;
    } finally {
      done = true;
      clearTimeout(timer);
    }
  } finally {
    creator.release();
  }
  await pool.query(`insert into pgrekey.slot_event (slot_name, event, lsn, reason) values ($1, $2, $3, $4)`, [slot, event, lsn, reason]);
  return lsn;
}

/** The sessions whose transactions the backend `pid` waits for. */
export async function slotBlockers(db: pg.Pool | pg.ClientBase, pid: number): Promise<SlotBlocker[]> {
  const r = await db.query<SlotBlocker>(
    `select a.pid, a.datname as database, a.application_name as application, a.state,
            extract(epoch from now() - a.xact_start)::int as "xactSeconds"
       from pg_stat_activity a
      where a.pid = any(pg_blocking_pids($1))
      order by a.xact_start`,
    [pid],
  );
  return r.rows;
}

/** "pid 123 in database app (application psql, idle in transaction for 4m10s)" */
export function describeBlocker(b: SlotBlocker): string {
  const secs = b.xactSeconds ?? 0;
  const age = secs >= 60 ? `${Math.floor(secs / 60)}m${secs % 60}s` : `${secs}s`;
  return `pid ${b.pid} in database ${b.database ?? '?'} (application ${b.application || '?'}, ${b.state ?? 'state unknown'} for ${age})`;
}

/** The log line while a slot waits: who, and what the operator can do. */
export function logSlotWait(log: { warn: (o: object, msg: string) => void }, slot: string): CreateSlotOptions['onWait'] {
  return (blockers, waitedMs) =>
    log.warn(
      { slot, waitedSeconds: Math.round(waitedMs / 1000), blockers: blockers.map(describeBlocker) },
      `creating the replication slot waits for ${blockers.length} open transaction(s) to end (PostgreSQL needs a consistent snapshot across all databases); ` +
        'let them finish, or end them with pg_terminate_backend(pid)',
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
