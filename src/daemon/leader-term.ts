import type pg from 'pg';
import { RuntimeFailure } from '../errors.js';

/**
 * The fencing term of a slot (sql/010_leader_term.sql). Each new holder of the slot's lease bumps
 * pgrekey.leader.term on the lease connection, right after taking the lock; every connection of
 * its pool then carries the term (session settings pgrekey.term, pgrekey.slot), and the state
 * tables refuse a statement whose term is not the current one with SQLSTATE RKF01. A leader that
 * was paused (GC, SIGSTOP, a network stall) and wakes up after another took over cannot write.
 */

/** SQLSTATE of a state write refused because the session's term is not the slot's current one. */
export const FENCED_SQLSTATE = 'RKF01';

export function isFencedError(e: unknown): boolean {
  return (e as { code?: string } | null)?.code === FENCED_SQLSTATE;
}

/** This process's term is no longer the slot's: it must stop without writing (exit 3). */
export class Fenced extends RuntimeFailure {
  constructor(
    readonly slot: string,
    readonly term: string,
    detail: string,
  ) {
    super(
      `FENCED: this pg-rekey run led replication slot ${slot} in term ${term}, but ${detail}; another pg-rekey run leads the slot now, so this one stops without writing more state`,
      'nothing to do if another run leads the slot (`pg-rekey status` names it); this process was paused or cut off from the database for longer than the lease allows (README "HA and failover")',
    );
  }
}

const TERM_LOCK = `hashtext('pg-rekey-term'), hashtext($1)`;
const TERM_LOCK_MATCH = `l.locktype = 'advisory' and l.granted and l.objsubid = 2 and l.mode = 'ShareLock'
  and l.database = (select oid from pg_database where datname = current_database())
  and l.classid = hashtext('pg-rekey-term')::oid and l.objid = hashtext($1)::oid and l.pid <> pg_backend_pid()`;

/**
 * Starts a new term for `slot` and returns it (text: int8). Call only while holding the slot's
 * lease, on the lease connection. Takes the term lock exclusively. Every session that holds it
 * shared belongs to an older term (each connection of a leader's pool holds it for its life, and
 * each fenced write for its transaction): those sessions are ended first, since none of them can
 * ever write again, and a paused leader's could keep a transaction (and its row locks) open for as
 * long as it is paused. Then every write of the old term has committed or rolled back before the
 * new term exists.
 */
export async function bumpTerm(client: pg.ClientBase, slot: string, host: string, pid: number): Promise<string> {
  await client.query(`select pg_terminate_backend(l.pid, 5000) from pg_locks l where ${TERM_LOCK_MATCH}`, [slot]);
  for (let attempt = 1; ; attempt++) {
    await client.query('begin');
    try {
      await client.query(`set local lock_timeout = '1s'`);
      await client.query(`select pg_advisory_xact_lock(${TERM_LOCK})`, [slot]);
      // `since` once the lock is ours: every transaction of the old term committed (or rolled back) before it.
      const term = (
        await client.query<{ term: string }>(
          `insert into pgrekey.leader as l (slot_name, term, host, pid, since) values ($1, 1, $2, $3, clock_timestamp())
           on conflict (slot_name) do update set term = l.term + 1, host = excluded.host, pid = excluded.pid, since = excluded.since
           returning term::text as term`,
          [slot, host, pid],
        )
      ).rows[0]!.term;
      await client.query('commit');
      return term;
    } catch (e) {
      await client.query('rollback').catch(() => undefined);
      if ((e as { code?: string }).code !== '55P03' || attempt >= 10) throw e;
      // lock_timeout: sessions of the old term hold the term lock (a paused leader's open transaction).
      await client.query(`select pg_terminate_backend(l.pid, 5000) from pg_locks l where ${TERM_LOCK_MATCH}`, [slot]);
    }
  }
}

/** The slot's current term (null: no daemon ever led it). */
export async function currentTerm(db: pg.ClientBase | pg.Pool, slot: string): Promise<string | null> {
  const r = await db.query<{ term: string }>(`select term::text as term from pgrekey.leader where slot_name = $1`, [slot]);
  return r.rows[0]?.term ?? null;
}

/** Makes a session write for `term` of `slot` (every later state write is fenced by it). */
export async function carryTerm(client: pg.ClientBase, slot: string, term: string): Promise<void> {
  await client.query(`select set_config('pgrekey.term', $1, false), set_config('pgrekey.slot', $2, false)`, [term, slot]);
}

/**
 * Ends the walsender streaming from `slot` for another process. Only the lease holder calls this,
 * before it connects its stream: any other walsender on the slot belongs to a daemon that lost
 * the lease (paused, cut off) and would otherwise keep the slot ("replication slot is active for
 * PID ...") until wal_sender_timeout. True when one was ended.
 */
export async function endStaleWalsender(pool: pg.Pool, slot: string): Promise<number | null> {
  const r = await pool.query<{ pid: number }>(
    `select active_pid as pid from pg_replication_slots where slot_name = $1 and active_pid is not null and active_pid <> pg_backend_pid()`,
    [slot],
  );
  const pid = r.rows[0]?.pid;
  if (pid === undefined) return null;
  await pool.query(`select pg_terminate_backend($1, 5000)`, [pid]);
  return pid;
}
