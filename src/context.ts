import type pg from 'pg';
import { loadConfig, type Config, type GlobalFlags } from './config/load-config.js';
import { createLogger, type Logger } from './logger.js';
import { checkConnection, createPool, waitForConnection } from './db/connect.js';
import { stateIsCurrent } from './db/migrate.js';
import { ConfigError } from './errors.js';

/** What a command gets: frozen config, a logger, a pool; close() releases it all. */
export interface Context {
  config: Config;
  log: Logger;
  pool: pg.Pool;
  close(): Promise<void>;
}

export interface OpenOptions {
  /** Connections at most; a function of the config when it depends on it (sweep.workers). */
  poolSize?: number | ((config: Config) => number);
  defaultLogLevel?: 'info' | 'warn';
  /**
   * How long to wait for an unreachable database (ms; Infinity = as long as
   * it takes), retrying with capped backoff and one log line per attempt.
   * Unset: fail at once (exit 3), as one-shot commands do. SIGINT/SIGTERM
   * while waiting throws ConnectWaitInterrupted.
   */
  waitForDatabaseMs?: number;
}

export async function openContext(flags: GlobalFlags, opts: OpenOptions = {}): Promise<Context> {
  const config = loadConfig(flags);
  // One-shot commands print their result on stdout; their info lines would only repeat it.
  const log = createLogger(config.logLevel ?? opts.defaultLogLevel ?? 'warn', config.logFormat);
  const pool = createPool({ connectionString: config.connectionString, max: typeof opts.poolSize === 'function' ? opts.poolSize(config) : opts.poolSize });
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  try {
    if (opts.waitForDatabaseMs === undefined) await checkConnection(pool, config.connectionSource);
    else {
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      await waitForConnection(pool, { source: config.connectionSource, log, maxWaitMs: opts.waitForDatabaseMs, signal: stop.signal });
    }
  } catch (e) {
    await pool.end();
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  return { config, log, pool, close: () => pool.end() };
}

export async function requireState(pool: pg.Pool): Promise<void> {
  if (!(await stateIsCurrent(pool))) {
    throw new ConfigError('the pgrekey state schema is missing or out of date', 'run `pg-rekey setup` first (it is idempotent)');
  }
}
