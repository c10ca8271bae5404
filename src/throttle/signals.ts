import { existsSync } from 'node:fs';
import type pg from 'pg';
import { APPLICATION_NAME } from '../db/connect.js';
import type { Signals } from './decide.js';

// Physical standbys only: logical walsenders (pg-rekey's own stream among
// them) also appear in pg_stat_replication and are recognised by their slot.
const SIGNALS_SQL = `
  with standby as (
    select r.replay_lag, r.replay_lsn from pg_stat_replication r
     where r.pid not in (select s.active_pid from pg_replication_slots s where s.slot_type = 'logical' and s.active_pid is not null))
  select c.paused, c.pause_reason as "pauseReason",
         (select coalesce(max(extract(epoch from replay_lag)) * 1000, 0) from standby)::float8 as "replicaLagMs",
         (select coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0) from standby)::float8 as "replicaLagBytes",
         (select count(*) from pg_stat_activity a
           where a.state = 'active' and a.backend_type = 'client backend' and a.pid <> pg_backend_pid()
             and coalesce(a.application_name, '') not like $1)::int as "activeBackends"
    from pgrekey.control c`;

/**
 * Reads every throttle signal in one statement. A role without pg_monitor
 * (or pg_read_all_stats) sees other roles' sessions without their state, so
 * the load signal undercounts: sql/roles.sql grants pg_monitor.
 */
export async function readSignals(db: pg.Pool, pauseFile: string | undefined): Promise<Signals> {
  const r = await db.query(SIGNALS_SQL, [`${APPLICATION_NAME}%`]);
  const row = r.rows[0] ?? { paused: false, pauseReason: null, replicaLagMs: 0, replicaLagBytes: 0, activeBackends: 0 };
  return { ...(row as Omit<Signals, 'pauseFile'>), pauseFile: pauseFile !== undefined && existsSync(pauseFile) };
}
