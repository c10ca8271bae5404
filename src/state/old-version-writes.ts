import type pg from 'pg';

/**
 * The rollout gate's record (pgrekey.old_version_write, sql/008): old-version values in
 * application writes the stream decoded, by version, table and column.
 */
export interface SightingRow {
  version: number;
  table: string;
  column: string;
  /** Values seen in this transaction for this column. */
  writes: number;
  /** The transaction's commit time (from its BEGIN), ms since the epoch, server clock. */
  commitMs: number;
  /** The transaction's commit LSN (text, as PostgreSQL prints it). */
  lsn: string;
  /** Part of a transaction whose first part this session already recorded (a transaction applied across flushes). */
  continues: boolean;
}

/**
 * Records sightings; a transaction at or before the last LSN recorded for that column is not
 * counted again (the stream replays unacknowledged transactions after a reconnect), unless it
 * continues what this session recorded. Also prunes the per-minute table past two hours.
 */
export async function recordSightings(db: pg.Pool | pg.ClientBase, rows: readonly SightingRow[]): Promise<void> {
  if (rows.length === 0) return;
  await db.query(
    `with x as (
       select * from unnest($1::int[], $2::text[], $3::text[], $4::bigint[], $5::float8[], $6::pg_lsn[], $7::boolean[])
         as x(version, table_name, column_name, n, ms, lsn, continues)),
     fresh as (
       select x.version, x.table_name, x.column_name, x.n, to_timestamp(x.ms / 1000.0) as at, x.lsn
         from x left join pgrekey.old_version_write w using (version, table_name, column_name)
        where w.last_lsn is null or x.lsn > w.last_lsn or (x.lsn = w.last_lsn and x.continues)),
     up as (
       insert into pgrekey.old_version_write as w (version, table_name, column_name, writes, first_at, last_at, last_lsn)
       select version, table_name, column_name, sum(n), min(at), max(at), max(lsn) from fresh group by 1, 2, 3
       on conflict (version, table_name, column_name) do update
          set writes = w.writes + excluded.writes, last_at = greatest(w.last_at, excluded.last_at), last_lsn = greatest(w.last_lsn, excluded.last_lsn))
     insert into pgrekey.old_version_write_minute as m (version, table_name, column_name, minute, writes)
     select version, table_name, column_name, date_trunc('minute', at), sum(n) from fresh group by 1, 2, 3, 4
     on conflict (version, table_name, column_name, minute) do update set writes = m.writes + excluded.writes`,
    [
      rows.map((r) => r.version),
      rows.map((r) => r.table),
      rows.map((r) => r.column),
      rows.map((r) => r.writes),
      rows.map((r) => r.commitMs),
      rows.map((r) => r.lsn),
      rows.map((r) => r.continues),
    ],
  );
  await db.query(`delete from pgrekey.old_version_write_minute where minute < now() - interval '2 hours'`);
}

export interface OldVersionWrites {
  version: number;
  table: string;
  column: string;
  /** Since the state was created. */
  total: number;
  lastHour: number;
  firstAt: Date;
  lastAt: Date;
}

/** Every version/table/column that saw an old-version write, the most recent first. */
export async function readOldVersionWrites(db: pg.Pool | pg.ClientBase): Promise<OldVersionWrites[]> {
  const r = await db.query<OldVersionWrites>(
    `select w.version, w.table_name as table, w.column_name as column, w.writes::float8 as total,
            coalesce((select sum(m.writes) from pgrekey.old_version_write_minute m
                       where (m.version, m.table_name, m.column_name) = (w.version, w.table_name, w.column_name)
                         and m.minute > now() - interval '1 hour'), 0)::float8 as "lastHour",
            w.first_at as "firstAt", w.last_at as "lastAt"
       from pgrekey.old_version_write w order by w.last_at desc, w.version, w.table_name, w.column_name`,
  );
  return r.rows;
}

/**
 * Where the quiet period counts from: the last old-version write, or the slot's creation when
 * later (writes before it were never decoded; a recreation loses those in between). Null when
 * neither is recorded.
 */
export async function quietSince(db: pg.Pool | pg.ClientBase, slot: string): Promise<{ since: Date | null; lastWrite: Date | null; slotCreated: Date | null }> {
  const r = await db.query<{ last_write: Date | null; slot_created: Date | null }>(
    `select (select max(last_at) from pgrekey.old_version_write) as last_write,
            (select max(at) from pgrekey.slot_event where slot_name = $1 and event in ('created', 'recreated')) as slot_created`,
    [slot],
  );
  const { last_write: lastWrite, slot_created: slotCreated } = r.rows[0]!;
  const since = [lastWrite, slotCreated].filter((d): d is Date => d !== null).sort((a, b) => b.getTime() - a.getTime())[0] ?? null;
  return { since, lastWrite, slotCreated };
}
