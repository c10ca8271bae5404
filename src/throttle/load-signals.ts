import type pg from 'pg';
import { APPLICATION_NAME } from '../db/connect.js';
import type { LoadReading } from './latency-controller.js';

// In one statement: sessions waiting for a lock that one of pg-rekey's sessions holds
// (pg_blocking_pids only for sessions that wait on a lock, so it stays cheap); the largest
// physical standby's replay distance (logical walsenders, pg-rekey's own among them, are
// recognised by their slot); the largest lag of another *active* logical slot (an inactive one
// lags by definition and is replication.max_retained_wal's business); WAL segments waiting for
// the archiver (current segment - last archived - 1, when archive_mode is on).
const LOAD_SQL = `
  with seg as (select pg_size_bytes(current_setting('wal_segment_size')) as size),
  arch as (
    select case when current_setting('archive_mode') <> 'off' and a.last_archived_wal ~ '^[0-9A-F]{24}$' then a.last_archived_wal end as last
      from pg_stat_archiver a)
  select
    (select count(*) from pg_stat_activity w
      where w.wait_event_type = 'Lock' and w.pid <> pg_backend_pid() and coalesce(w.application_name, '') not like $1
        and exists (select 1 from pg_stat_activity h where h.pid = any (pg_blocking_pids(w.pid)) and h.application_name like $1))::int as "blockedByUs",
    (select max(pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)) from pg_stat_replication r
      where r.pid not in (select s.active_pid from pg_replication_slots s where s.slot_type = 'logical' and s.active_pid is not null))::float8 as "standbyLagBytes",
    (select max(pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)) from pg_replication_slots s
      where s.slot_type = 'logical' and s.active and s.slot_name <> $2)::float8 as "slotLagBytes",
    (select (('x' || substr(w, 9, 8))::bit(32)::bigint * (4294967296 / seg.size) + ('x' || substr(w, 17, 8))::bit(32)::bigint)
          - (('x' || substr(arch.last, 9, 8))::bit(32)::bigint * (4294967296 / seg.size) + ('x' || substr(arch.last, 17, 8))::bit(32)::bigint) - 1
       from seg, arch, pg_walfile_name(pg_current_wal_lsn()) w where arch.last is not null)::float8 as "archiverBacklog",
    current_setting('track_wal_io_timing') = 'on' as timing,
    current_setting('server_version_num')::int as version`;

// Cumulative WAL syncs and their time (ms): pg_stat_wal before 18, pg_stat_io's wal rows from 18 on.
const SYNC_SQL_17 = `select wal_sync::float8 as n, wal_sync_time::float8 as ms from pg_stat_wal`;
const SYNC_SQL_18 = `select coalesce(sum(fsyncs), 0)::float8 as n, coalesce(sum(fsync_time), 0)::float8 as ms from pg_stat_io where object = 'wal'`;

/** Reads the controller's load signals; WAL sync time only where track_wal_io_timing is on. */
export class LoadSignals {
  private lastSync: { n: number; ms: number } | null = null;

  constructor(
    private readonly db: pg.Pool,
    private readonly ownSlot: string,
  ) {}

  async read(): Promise<LoadReading> {
    const r = (await this.db.query(LOAD_SQL, [`${APPLICATION_NAME}%`, this.ownSlot])).rows[0] as LoadReading & { timing: boolean; version: number };
    let walSyncMs: number | null = null;
    if (r.timing) {
      const s = (await this.db.query<{ n: number; ms: number }>(r.version >= 180000 ? SYNC_SQL_18 : SYNC_SQL_17)).rows[0]!;
      if (this.lastSync && s.n > this.lastSync.n) walSyncMs = (s.ms - this.lastSync.ms) / (s.n - this.lastSync.n);
      this.lastSync = s;
    }
    return { blockedByUs: r.blockedByUs, standbyLagBytes: r.standbyLagBytes, slotLagBytes: r.slotLagBytes, archiverBacklog: r.archiverBacklog, walSyncMs };
  }
}
