import { hostname } from 'node:os';
import type pg from 'pg';

/**
 * pgrekey.event (sql/008): what the rotation record's timeline needs and no other table keeps.
 * Details hold counts, names and reasons, never a value.
 */
export type EventKind = 'verify' | 'report' | 'pause' | 'resume' | 'converged' | 'unconverged';

export async function recordEvent(db: pg.Pool | pg.ClientBase, kind: EventKind, detail: object = {}): Promise<void> {
  await db.query(`insert into pgrekey.event (kind, host, detail) values ($1, $2, $3)`, [kind, hostname(), JSON.stringify(detail)]);
}

export interface EventRow {
  id: number;
  at: Date;
  kind: EventKind;
  host: string | null;
  role: string;
  detail: Record<string, unknown>;
}

export async function listEvents(db: pg.Pool | pg.ClientBase): Promise<EventRow[]> {
  const r = await db.query<EventRow>(`select id::float8 as id, at, kind, host, db_role as role, coalesce(detail, '{}') as detail from pgrekey.event order by at, id`);
  return r.rows;
}

/** When each kind last happened (null: never). */
export async function lastEventAt(db: pg.Pool | pg.ClientBase, kind: EventKind): Promise<Date | null> {
  const r = await db.query<{ at: Date | null }>(`select max(at) as at from pgrekey.event where kind = $1`, [kind]);
  return r.rows[0]?.at ?? null;
}

/** The newest event of a kind (null: never). */
export async function lastEvent(db: pg.Pool | pg.ClientBase, kind: EventKind): Promise<EventRow | null> {
  const r = await db.query<EventRow>(
    `select id::float8 as id, at, kind, host, db_role as role, coalesce(detail, '{}') as detail from pgrekey.event where kind = $1 order by at desc, id desc limit 1`,
    [kind],
  );
  return r.rows[0] ?? null;
}
