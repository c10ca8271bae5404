import type pg from 'pg';

/**
 * Which server a replication slot lives on. A slot of pg-rekey's name is trusted only on the
 * server it was created on, or on a standby of it promoted since (same system identifier, a
 * newer timeline), where the slot exists only if it was carried over: a failover slot synced by
 * the standby (PostgreSQL 17+, sync_replication_slots) or one an HA manager copied (Patroni's
 * permanent slots). A different system identifier is another cluster (a restore, a logical
 * copy, a new cluster behind the same address): its slot of that name says nothing about the
 * changes pg-rekey has seen, so it is recreated and everything swept again (rule 6).
 */

export interface ServerIdentity {
  /** pg_control_system().system_identifier, as text (a 64-bit number). */
  systemIdentifier: string;
  /** The timeline the server writes WAL on now. */
  timeline: number;
}

export interface RecordedServer extends ServerIdentity {
  failover: boolean;
}

/** The server pg-rekey is connected to (a primary: pg_walfile_name fails in recovery). */
export async function readServerIdentity(db: pg.Pool | pg.ClientBase): Promise<ServerIdentity> {
  // The first 8 hex digits of a WAL file name are its timeline; pg_control_checkpoint() would
  // show the old one until the first checkpoint after a promotion.
  const r = await db.query<{ sysid: string; tli: number }>(
    `select (select system_identifier::text from pg_control_system()) as sysid,
            ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int as tli`,
  );
  return { systemIdentifier: r.rows[0]!.sysid, timeline: r.rows[0]!.tli };
}

export async function readRecordedServer(db: pg.Pool | pg.ClientBase, slot: string): Promise<RecordedServer | null> {
  const r = await db.query<{ sysid: string; tli: number; failover: boolean }>(`select system_identifier as sysid, timeline as tli, failover from pgrekey.slot_server where slot_name = $1`, [slot]);
  const row = r.rows[0];
  return row ? { systemIdentifier: row.sysid, timeline: row.tli, failover: row.failover } : null;
}

/** Records the server a slot was just created on (replacing what was recorded for that name). */
export async function recordSlotServer(db: pg.Pool | pg.ClientBase, slot: string, id: ServerIdentity, failover: boolean): Promise<void> {
  await db.query(
    `insert into pgrekey.slot_server (slot_name, system_identifier, timeline, failover) values ($1, $2, $3, $4)
     on conflict (slot_name) do update set system_identifier = excluded.system_identifier, timeline = excluded.timeline,
       failover = excluded.failover, created_at = now(), failed_over_at = null`,
    [slot, id.systemIdentifier, id.timeline, failover],
  );
}

/** The slot survived a promotion: the new timeline is the one it lives on now. */
export async function recordFailover(db: pg.Pool | pg.ClientBase, slot: string, timeline: number): Promise<void> {
  await db.query(`update pgrekey.slot_server set timeline = $2, failed_over_at = now() where slot_name = $1`, [slot, timeline]);
}

export type ServerVerdict =
  /** No record (a slot made before pg-rekey recorded servers): recorded now, trusted as before. */
  | { kind: 'unrecorded' }
  | { kind: 'same' }
  /** A promotion since the slot was made (or last seen). */
  | { kind: 'new-timeline'; from: number; to: number; failover: boolean }
  /** Another cluster: never trust a slot of that name there. */
  | { kind: 'other-server'; recorded: string; now: string };

export function judgeServer(recorded: RecordedServer | null, now: ServerIdentity): ServerVerdict {
  if (!recorded) return { kind: 'unrecorded' };
  if (recorded.systemIdentifier !== now.systemIdentifier) return { kind: 'other-server', recorded: recorded.systemIdentifier, now: now.systemIdentifier };
  if (recorded.timeline !== now.timeline) return { kind: 'new-timeline', from: recorded.timeline, to: now.timeline, failover: recorded.failover };
  return { kind: 'same' };
}

/** Why a slot of that name cannot be trusted on this server (null: it can, if it exists and is usable). */
export function distrustReason(v: ServerVerdict): string | null {
  if (v.kind !== 'other-server') return null;
  return `the server is a different PostgreSQL cluster (system identifier ${v.now}, the slot was created on ${v.recorded}: a restored copy, a new cluster behind the same address?); a slot of that name there says nothing about what pg-rekey has seen`;
}

/** Why the slot is missing after a promotion: what the operator could change so that the next one keeps it. */
export function missingAfterFailover(v: ServerVerdict, serverVersionNum: number): string | null {
  if (v.kind !== 'new-timeline') return null;
  const why =
    serverVersionNum < 170000
      ? `PostgreSQL ${Math.floor(serverVersionNum / 10000)} does not carry logical slots over a promotion unless an HA manager copies them (Patroni permanent slots)`
      : v.failover
        ? 'the failover slot was not synced to this standby yet (sync_replication_slots = on, hot_standby_feedback = on, a dbname in primary_conninfo, synchronized_standby_slots on the primary: see README "HA and failover")'
        : 'the slot was not created as a failover slot';
  return `failover: the server is on timeline ${v.to} (the slot was on ${v.from}) and the slot did not survive the promotion: ${why}`;
}

export interface SlotAssessment {
  /** Why the slot must be (re)created and everything swept again; null: use it. */
  problem: string | null;
  /** The slot survived a promotion (timeline from -> to): continue from it, no re-sweep. */
  survived: { from: number; to: number } | null;
}

/**
 * What the slot (as `info` shows it) is worth on the server pg-rekey is connected to now; records
 * the server for a slot made before servers were recorded, and a new timeline the slot survived.
 */
export async function assessSlotServer(db: pg.Pool, slot: string, info: { exists: boolean }, unusable: string | null, serverVersionNum: number): Promise<SlotAssessment> {
  const now = await readServerIdentity(db);
  const v = judgeServer(await readRecordedServer(db, slot), now);
  const distrust = distrustReason(v);
  if (distrust) return { problem: distrust, survived: null };
  if (unusable) return { problem: (!info.exists && missingAfterFailover(v, serverVersionNum)) || unusable, survived: null };
  if (v.kind === 'unrecorded') {
    const failover = serverVersionNum >= 170000 && (await db.query<{ f: boolean }>(`select failover as f from pg_replication_slots where slot_name = $1`, [slot])).rows[0]?.f === true;
    await recordSlotServer(db, slot, now, failover);
  }
  if (v.kind !== 'new-timeline') return { problem: null, survived: null };
  await recordFailover(db, slot, v.to);
  return { problem: null, survived: { from: v.from, to: v.to } };
}
