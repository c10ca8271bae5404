import type pg from 'pg';
import { createPool } from '../db/connect.js';
import { isFencedError } from './leader-term.js';

/**
 * The leader's pool: every connection carries the leader's term (pgrekey.term, pgrekey.slot) from
 * its first statement on, so each of its state writes is fenced by the database
 * (sql/010_leader_term.sql). The setting is the first query queued on a new connection, before
 * pg-pool hands it out. Any query refused as FENCED (SQLSTATE RKF01), wherever it was issued (the
 * sweep, the stream's batch, a status write), calls `onFenced` once: the daemon stops.
 */
export function createTermPool(o: { connectionString: string | undefined; max: number; slot: string; term: string; onFenced: (e: unknown) => void }): pg.Pool {
  const pool = createPool({ connectionString: o.connectionString, max: o.max });
  let reported = false;
  const seen = (e: unknown) => {
    if (reported || !isFencedError(e)) return;
    reported = true;
    o.onFenced(e);
  };
  pool.on('connect', (client: pg.PoolClient) => {
    // Queued first on this client: every later query of it runs with the term set. A failure here
    // fails the connection's next queries too (the server is gone), never runs them without it.
    client.query(`select set_config('pgrekey.term', $1, false), set_config('pgrekey.slot', $2, false)`, [o.term, o.slot]).catch(() => undefined);
    watchQueries(client, seen);
  });
  return pool;
}

/** Reports every error of `client.query` to `seen` (promise and callback forms; both are used by pg-pool). */
export function watchQueries(client: pg.PoolClient, seen: (e: unknown) => void): void {
  const query = client.query.bind(client) as (...args: unknown[]) => unknown;
  (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
    const last = args.length - 1;
    if (typeof args[last] === 'function') {
      const cb = args[last] as (err: unknown, ...rest: unknown[]) => void;
      args[last] = (err: unknown, ...rest: unknown[]) => {
        if (err) seen(err);
        cb(err, ...rest);
      };
      return query(...args);
    }
    const r = query(...args);
    if (r && typeof (r as Promise<unknown>).then === 'function') (r as Promise<unknown>).then(undefined, seen);
    return r;
  };
}
