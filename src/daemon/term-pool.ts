import pg from 'pg';
import { createPool, locatorFor } from '../db/connect.js';
import { primaryClientClass } from '../db/primary.js';
import { isFencedError } from './leader-term.js';

/**
 * The leader's pool: every connection carries the leader's term (pgrekey.term, pgrekey.slot) from
 * its first statement on, so each of its state writes is fenced by the database
 * (sql/010_leader_term.sql). The settings are made inside connect(), before pg-pool hands the
 * connection out (a failure fails the connect). Any query refused as FENCED (SQLSTATE RKF01),
 * wherever it was issued (the sweep, the stream's batch, a status write), calls `onFenced` once:
 * the daemon stops.
 */
/**
 * The term, and a session-level shared hold on the slot's term lock for the life of the
 * connection: the next leader's bump (leader-term.ts) ends every connection of this pool before
 * its term starts, so none of them keeps a transaction open (row locks on the application's
 * tables, say) past a takeover, paused or not.
 */
const TERM_SESSION_SQL = `select set_config('pgrekey.term', $1, false), set_config('pgrekey.slot', $2, false),
  pg_advisory_lock_shared(hashtext('pg-rekey-term'), hashtext($2))`;

export function createTermPool(o: { connectionString: string | undefined; max: number; slot: string; term: string; onFenced: (e: unknown) => void }): pg.Pool {
  let reported = false;
  const seen = (e: unknown) => {
    if (reported || !isFencedError(e)) return;
    reported = true;
    o.onFenced(e);
  };
  // On top of the primary's client (db/primary.ts): with a host list each connection still goes
  // to the host that is the primary now (after a failover, the new one), then takes its term.
  const Base = primaryClientClass(locatorFor(o.connectionString));
  class TermClient extends Base {
    constructor(config?: string | pg.ClientConfig) {
      super(config);
      watchQueries(this as unknown as pg.ClientBase, seen);
    }

    override connect(): Promise<pg.Client>;
    override connect(callback: ((err: Error) => void) | ((err: null, c: pg.Client) => void)): void;
    override connect(callback?: ((err: Error) => void) | ((err: null, c: pg.Client) => void)): Promise<pg.Client> | void {
      const done = super
        .connect()
        .then(() => (pg.Client.prototype.query as (text: string, values: unknown[]) => Promise<unknown>).call(this, TERM_SESSION_SQL, [o.term, o.slot]))
        .then(() => this as pg.Client);
      if (!callback) return done;
      done.then((c) => (callback as (err: null, c: pg.Client) => void)(null, c), callback as (err: Error) => void);
    }
  }
  return createPool({ connectionString: o.connectionString, max: o.max, Client: TermClient });
}

/** Reports every error of `client.query` to `seen` (promise and callback forms; pg-pool uses the callback one). */
export function watchQueries(client: pg.ClientBase, seen: (e: unknown) => void): void {
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
