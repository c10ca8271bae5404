import type pg from 'pg';
import { loadConfig, type Config, type GlobalFlags } from './config/load-config.js';
import { createLogger, type Logger } from './logger.js';
import { checkConnection, createPool } from './db/connect.js';
import { stateIsCurrent } from './db/migrate.js';
import { ConfigError } from './errors.js';

/** What a command gets: frozen config, a logger, a pool; close() releases it all. */
export interface Context {
  config: Config;
  log: Logger;
  pool: pg.Pool;
  close(): Promise<void>;
}

export async function openContext(flags: GlobalFlags, opts: { poolSize?: number; defaultLogLevel?: 'info' | 'warn' } = {}): Promise<Context> {
  const config = loadConfig(flags);
  // One-shot commands print their result on stdout; their info lines would only repeat it.
  const log = createLogger(config.logLevel ?? opts.defaultLogLevel ?? 'warn');
  const pool = createPool({ connectionString: config.connectionString, max: opts.poolSize });
  try {
    await checkConnection(pool, config.connectionSource);
  } catch (e) {
    await pool.end();
    throw e;
  }
  return { config, log, pool, close: () => pool.end() };
}

export async function requireState(pool: pg.Pool): Promise<void> {
  if (!(await stateIsCurrent(pool))) {
    throw new ConfigError('the pgrekey state schema is missing or out of date', 'run `pg-rekey setup` first (it is idempotent)');
  }
}
