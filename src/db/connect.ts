import pg from 'pg';
import { RuntimeFailure } from '../errors.js';

export const APPLICATION_NAME = 'pg-rekey';

export interface ConnectOptions {
  connectionString: string | undefined;
  /** Shown in pg_stat_activity, so load checks can exclude pg-rekey's own backends. */
  applicationName?: string;
  max?: number;
}

/**
 * A pool for pg-rekey's own work. With no connection string, pg reads the
 * libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGSSLMODE).
 */
export function createPool(opts: ConnectOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: opts.connectionString,
    application_name: opts.applicationName ?? APPLICATION_NAME,
    max: opts.max ?? 4,
    idleTimeoutMillis: 30_000,
    connectionTimeoutMillis: 15_000,
  });
  // An idle client that loses its connection emits here; without a listener the process dies.
  pool.on('error', () => undefined);
  return pool;
}

/**
 * Checks out a pool client that cannot crash the process: a connection lost
 * while the client is checked out but between queries emits 'error' on the
 * client, and an EventEmitter 'error' without a listener kills Node. The next
 * query on it then fails normally and the caller's error path runs.
 */
export async function checkout(pool: pg.Pool): Promise<pg.PoolClient> {
  const client = await pool.connect();
  const ignore = () => undefined;
  client.on('error', ignore);
  const release = client.release.bind(client);
  client.release = (err?: Error | boolean) => {
    client.off('error', ignore);
    release(err);
  };
  return client;
}

/** SQLSTATE classes that mean "try again later", never "give up". */
const RETRYABLE = new Set([
  '40001', // serialization_failure
  '40P01', // deadlock_detected
  '55P03', // lock_not_available (lock_timeout)
  '57014', // query_canceled (statement_timeout)
  '57P01', // admin_shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now
  '53300', // too_many_connections
  '08000', '08003', '08006', '08001', '08004', // connection exceptions
]);
const NODE_NETWORK = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);

export function isRetryable(err: unknown): boolean {
  const code = (err as { code?: string })?.code;
  if (code && (RETRYABLE.has(code) || NODE_NETWORK.has(code))) return true;
  const msg = (err as Error)?.message ?? '';
  // pg reports a dropped socket without a code.
  return /Connection terminated|connection ended|Client has encountered a connection error/i.test(msg);
}

/** Wraps a failure to connect into an error that says what to check. */
export async function checkConnection(pool: pg.Pool, source: string): Promise<void> {
  try {
    await pool.query('select 1');
  } catch (e) {
    const err = e as { code?: string; message?: string };
    throw new RuntimeFailure(
      `cannot connect to PostgreSQL (connection from ${source}): ${err.message ?? 'unknown error'}${err.code ? ` [${err.code}]` : ''}`,
      'check --database-url / DATABASE_URL / `database:` in the config (or PGHOST, PGPORT, PGUSER, PGDATABASE), that the server is up, and pg_hba.conf',
    );
  }
}
