import { existsSync, readFileSync } from 'node:fs';
import { HostListError, parseHostTargets } from '../db/hosts.js';
import { parseDocument } from 'yaml';
import { ConfigError } from '../errors.js';
import { parseIdentifierPath, type QualifiedName } from '../db/ident.js';
import { daemonSchema, fileSchema, replicationSchema, sweepSchema, throttleSchema, toBytes, toMillis, type FileConfig } from './schema.js';

/** Flags shared by every command that talks to the database. */
export interface GlobalFlags {
  config?: string;
  envFile?: string;
  databaseUrl?: string;
  logLevel?: string;
  logFormat?: string;
}

export type TriggerDecision = 'fire' | 'skip';

export interface TableConfig extends QualifiedName {
  columns: string[];
  /** What rewrites do about the table's UPDATE triggers: the table's `triggers:`, else the top-level one; unset = undecided. */
  triggers?: TriggerDecision;
}

export type SweepMode = 'auto' | 'duty' | 'fast';

export interface SweepSettings {
  /** auto: latency-targeted feedback controller; duty: chunk_time and nice_ratio; fast: unthrottled. */
  mode: SweepMode;
  /** auto: the probe's latency target, as a multiple of its baseline. */
  latencyRatio: number;
  probeIntervalMs: number;
  baselineIntervalMs: number;
  /** Rows rewritten per second at most; 0 = no limit. */
  maxRate: number;
  /** WAL bytes per second at most; 0 = no limit. */
  maxWalRate: number;
  /** Target chunk duration; 0 = fixed chunks of chunkBlocks. */
  chunkTimeMs: number;
  /** First chunk of each relation (the fixed size when chunkTimeMs is 0). */
  chunkBlocks: number;
  minChunkBlocks: number;
  maxChunkBlocks: number;
  niceRatio: number;
  statementTimeoutMs: number;
  lockTimeoutMs: number;
  wrongKeyThreshold: number;
  progressIntervalMs: number;
  /** Connections sweeping each relation together on leased block ranges (1 = no ranges). */
  workers: number;
  /** A range leased to a worker that stopped renewing it is taken again after this, ms. */
  rangeLeaseMs: number;
}

export interface ThrottleSettings {
  maxReplicaLagMs: number;
  maxReplicaLagBytes: number;
  maxActiveBackends: number;
  criticalActiveBackends: number;
  criticalAction: 'stop' | 'hibernate';
  hibernateMs: number;
  pauseFile: string | undefined;
  checkIntervalMs: number;
}

export interface DaemonSettings {
  httpHost: string;
  httpPort: number;
  checkIntervalMs: number;
  slotCheckIntervalMs: number;
  streamBatchRows: number;
  streamBatchDelayMs: number;
  /** Bound of a shutdown (drain, then exit anyway), ms. */
  shutdownTimeoutMs: number;
}

export interface Config {
  configPath: string;
  /** undefined: let libpq-style PG* variables decide (pg does that). */
  connectionString: string | undefined;
  connectionSource: 'flag' | 'env' | 'file' | 'PG* variables';
  tables: readonly TableConfig[];
  /** Former leaves of configured tables accepted as they are (`ignore:`). */
  ignore: readonly QualifiedName[];
  sweep: SweepSettings;
  throttle: ThrottleSettings;
  replication: { slot: string; publication: string; /** 0 = no warning. */ maxRetainedWalBytes: number; origin: 'auto' | 'on' | 'off' };
  daemon: DaemonSettings;
  /** undefined: the command's own default (see schema.ts). */
  logLevel: FileConfig['log_level'];
  /** undefined: pretty on a terminal, json otherwise (logger.ts). */
  logFormat: FileConfig['log_format'];
}

export const DEFAULT_CONFIG_PATH = 'pg-rekey.yaml';

/**
 * Environment overrides for tuning, derived from the schema:
 * PG_REKEY_SWEEP_CHUNK_BLOCKS, PG_REKEY_REPLICATION_SLOT, PG_REKEY_DAEMON_HTTP_PORT, ...
 * and PG_REKEY_LOG_LEVEL, PG_REKEY_LOG_FORMAT.
 */
function envOverrides(env: Record<string, string | undefined>): Record<string, unknown> {
  const out: Record<string, Record<string, unknown>> = {};
  const sections = { sweep: sweepSchema, throttle: throttleSchema, replication: replicationSchema, daemon: daemonSchema } as const;
  for (const [section, schema] of Object.entries(sections)) {
    for (const [key, field] of Object.entries(schema.shape)) {
      const raw = env[`PG_REKEY_${section}_${key}`.toUpperCase()];
      if (raw === undefined || raw === '') continue;
      // Environment values are strings: keep the string when the field takes it (a slot named
      // "123"), else try it as a number (chunk_blocks=64).
      const asString = (field as { safeParse(v: unknown): { success: boolean } }).safeParse(raw).success;
      (out[section] ??= {})[key] = !asString && /^-?\d+(\.\d+)?$/.test(raw) ? Number(raw) : raw;
    }
  }
  return out;
}

function readYaml(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(
      `cannot read config file ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
      'pass the file with -c/--config or PG_REKEY_CONFIG; see pg-rekey.example.yaml',
    );
  }
  const doc = parseDocument(text);
  if (doc.errors.length > 0) {
    throw new ConfigError(
      `${path} is not valid YAML`,
      'fix the syntax at the positions listed',
      doc.errors.map((e) => e.message.split('\n')[0]!),
    );
  }
  return doc.toJS() ?? {};
}

function parseTables(tables: FileConfig['tables'], problems: string[], triggers: TriggerDecision | undefined): TableConfig[] {
  const seen = new Set<string>();
  return tables.flatMap((t, i) => {
    const parts = parseIdentifierPath(t.name);
    if (typeof parts === 'string' || parts.length > 2) {
      problems.push(`tables[${i}].name: ${typeof parts === 'string' ? parts : 'use table or schema.table'}`);
      return [];
    }
    const [schema, name] = parts.length === 2 ? parts : ['public', parts[0]!];
    const key = JSON.stringify([schema, name]);
    if (seen.has(key)) problems.push(`tables[${i}].name: ${t.name} is listed twice; list its columns once`);
    seen.add(key);
    const columns = t.columns.map((c, j) => {
      const p = parseIdentifierPath(c);
      if (typeof p === 'string' || p.length !== 1) {
        problems.push(`tables[${i}].columns[${j}]: ${typeof p === 'string' ? p : 'a column name, without table'}`);
        return c;
      }
      return p[0]!;
    });
    if (new Set(columns).size !== columns.length) problems.push(`tables[${i}].columns: a column is listed twice`);
    const decision = t.triggers ?? triggers;
    return [{ schema: schema!, name: name!, columns, ...(decision ? { triggers: decision } : {}) }];
  });
}

function parseIgnore(names: readonly string[], problems: string[]): QualifiedName[] {
  return names.flatMap((n, i) => {
    const parts = parseIdentifierPath(n);
    if (typeof parts === 'string' || parts.length > 2) {
      problems.push(`ignore[${i}]: ${typeof parts === 'string' ? parts : 'use table or schema.table'}`);
      return [];
    }
    return [parts.length === 2 ? { schema: parts[0]!, name: parts[1]! } : { schema: 'public', name: parts[0]! }];
  });
}

/**
 * Resolves the configuration. Precedence: flag > environment > file > default.
 * Returns a frozen object; throws one ConfigError listing every problem.
 */
export function loadConfig(flags: GlobalFlags, env: Record<string, string | undefined> = process.env): Config {
  const configPath = flags.config ?? env.PG_REKEY_CONFIG ?? DEFAULT_CONFIG_PATH;
  if (!flags.config && !env.PG_REKEY_CONFIG && !existsSync(configPath)) {
    throw new ConfigError(
      `no config file: ${DEFAULT_CONFIG_PATH} is not in ${process.cwd()}`,
      'pass -c path/to/pg-rekey.yaml (or set PG_REKEY_CONFIG); see pg-rekey.example.yaml for the format',
    );
  }
  const raw = readYaml(configPath);
  const merged = mergeOverrides(raw, envOverrides(env));
  if (env.PG_REKEY_LOG_LEVEL) merged.log_level = env.PG_REKEY_LOG_LEVEL;
  if (flags.logLevel) merged.log_level = flags.logLevel;
  if (env.PG_REKEY_LOG_FORMAT) merged.log_format = env.PG_REKEY_LOG_FORMAT;
  if (flags.logFormat) merged.log_format = flags.logFormat;
  const parsed = fileSchema.safeParse(merged);
  if (!parsed.success) {
    throw new ConfigError(
      `${configPath} has ${parsed.error.issues.length} problem(s)`,
      'fix the fields named above (environment overrides are PG_REKEY_<SECTION>_<FIELD>)',
      parsed.error.issues.map((iss) => `${iss.path.join('.') || '(top level)'}: ${iss.message}`),
    );
  }
  const file = parsed.data;
  const problems: string[] = [];
  const tables = parseTables(file.tables, problems, file.triggers);
  const ignore = parseIgnore(file.ignore, problems);
  if (problems.length) throw new ConfigError(`${configPath} has ${problems.length} problem(s)`, 'fix the fields named above', problems);

  const [connectionString, connectionSource] = flags.databaseUrl
    ? [flags.databaseUrl, 'flag' as const]
    : env.DATABASE_URL
      ? [env.DATABASE_URL, 'env' as const]
      : file.database
        ? [file.database, 'file' as const]
        : [undefined, 'PG* variables' as const];
  try {
    parseHostTargets(connectionString, env);
  } catch (e) {
    if (!(e instanceof HostListError)) throw e;
    throw new ConfigError(`the database connection (${connectionSource}): ${e.message}`, 'fix the host list or target_session_attrs (libpq syntax: postgres://user@h1:5432,h2:5432/db?target_session_attrs=read-write)');
  }

  const s = file.sweep;
  return deepFreeze({
    configPath,
    connectionString,
    connectionSource,
    tables,
    ignore,
    sweep: {
      mode: s.mode,
      latencyRatio: s.latency_ratio,
      probeIntervalMs: toMillis(s.probe_interval),
      baselineIntervalMs: toMillis(s.baseline_interval),
      maxRate: s.max_rate,
      maxWalRate: toBytes(s.max_wal_rate),
      chunkTimeMs: toMillis(s.chunk_time),
      chunkBlocks: s.chunk_blocks,
      minChunkBlocks: s.min_chunk_blocks,
      maxChunkBlocks: s.max_chunk_blocks,
      niceRatio: s.nice_ratio,
      statementTimeoutMs: toMillis(s.statement_timeout),
      lockTimeoutMs: toMillis(s.lock_timeout),
      wrongKeyThreshold: s.wrong_key_threshold,
      progressIntervalMs: toMillis(s.progress_interval),
      workers: s.workers,
      rangeLeaseMs: toMillis(s.range_lease),
    },
    throttle: {
      maxReplicaLagMs: toMillis(file.throttle.max_replica_lag),
      maxReplicaLagBytes: toBytes(file.throttle.max_replica_lag_bytes),
      maxActiveBackends: file.throttle.max_active_backends,
      criticalActiveBackends: file.throttle.critical_active_backends,
      criticalAction: file.throttle.critical_action,
      hibernateMs: toMillis(file.throttle.hibernate_time),
      pauseFile: file.throttle.pause_file,
      checkIntervalMs: toMillis(file.throttle.check_interval),
    },
    replication: { slot: file.replication.slot, publication: file.replication.publication, maxRetainedWalBytes: toBytes(file.replication.max_retained_wal), origin: file.replication.origin },
    daemon: {
      httpHost: file.daemon.http_host,
      httpPort: file.daemon.http_port,
      checkIntervalMs: toMillis(file.daemon.check_interval),
      slotCheckIntervalMs: toMillis(file.daemon.slot_check_interval),
      streamBatchRows: file.daemon.stream_batch_rows,
      streamBatchDelayMs: toMillis(file.daemon.stream_batch_delay),
      shutdownTimeoutMs: toMillis(file.daemon.shutdown_timeout),
    },
    logLevel: file.log_level,
    logFormat: file.log_format,
  });
}

function mergeOverrides(raw: unknown, overrides: Record<string, unknown>): Record<string, unknown> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError('the config file must be a YAML mapping with a `tables:` list', 'see pg-rekey.example.yaml');
  }
  const out: Record<string, unknown> = { ...(raw as Record<string, unknown>) };
  for (const [section, values] of Object.entries(overrides)) {
    const base = out[section];
    out[section] = { ...(typeof base === 'object' && base !== null ? base : {}), ...(values as object) };
  }
  return out;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}
