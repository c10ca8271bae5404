import type pg from 'pg';

/** A standby whose heartbeat is older than this is not listed (it died without removing its row). */
const STANDBY_STALE_S = 30;

export interface Leadership {
  /** The slot's current fencing term and who started it (null: no run led it yet, or state before migration 010). */
  leader: { term: number; host: string | null; pid: number | null; since: Date } | null;
  /** `run --standby` processes waiting for the slot's lease (heartbeat within the last 30 s). */
  standbys: { host: string; pid: number; startedAt: Date; heartbeatAt: Date }[];
}

/** Reads pgrekey.leader and pgrekey.standby for `slot` (status). */
export async function readLeadership(db: pg.Pool | pg.ClientBase, slot: string): Promise<Leadership> {
  const has = await db.query<{ ok: boolean }>(`select to_regclass('pgrekey.leader') is not null and to_regclass('pgrekey.standby') is not null as ok`);
  if (!has.rows[0]?.ok) return { leader: null, standbys: [] };
  const l = await db.query<{ term: string; host: string | null; pid: number | null; since: Date }>(`select term::text as term, host, pid, since from pgrekey.leader where slot_name = $1`, [slot]);
  const s = await db.query<{ host: string; pid: number; startedAt: Date; heartbeatAt: Date }>(
    `select host, pid, started_at as "startedAt", heartbeat_at as "heartbeatAt" from pgrekey.standby
      where slot_name = $1 and heartbeat_at > now() - make_interval(secs => $2) order by started_at`,
    [slot, STANDBY_STALE_S],
  );
  const row = l.rows[0];
  return { leader: row ? { ...row, term: Number(row.term) } : null, standbys: s.rows };
}

/** "leader: term 3 (pid 12 on host-a, since ...); standbys: pid 13 on host-b, pid 14 on host-c" */
export function describeLeadership(x: Leadership): string[] {
  const lines: string[] = [];
  if (x.leader) lines.push(`  leader: term ${x.leader.term}, started by pid ${x.leader.pid ?? '?'} on ${x.leader.host ?? '?'} at ${x.leader.since.toISOString()}`);
  lines.push(x.standbys.length ? `  standbys (run --standby): ${x.standbys.map((s) => `pid ${s.pid} on ${s.host} (waiting since ${s.startedAt.toISOString()})`).join(', ')}` : '  standbys: none');
  return lines;
}
