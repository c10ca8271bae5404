import { z } from 'zod';

/**
 * The pg-rekey.yaml file. Every tuning field has a default; only `tables` is
 * required. Field names are snake_case as YAML users expect.
 */
export const duration = z.union([z.number().nonnegative(), z.string().regex(/^\d+(\.\d+)?\s*(ms|s|m|h)$/, 'a duration like 500ms, 2s, 5m')]);
/** Bytes: a number or `512kB`, `256MB`, `2GB`. */
export const size = z.union([z.number().nonnegative(), z.string().regex(/^\d+(\.\d+)?\s*(B|kB|MB|GB|TB)$/, 'a size like 64MB or 1GB')]);

export const tableSchema = z.strictObject({
  /** `table` (schema public) or `schema.table`; quote unusual names: `"My Schema"."Calls"`. */
  name: z.string().min(1),
  /** Text columns holding `v<N>:` values. */
  columns: z.array(z.string().min(1)).min(1),
  /** What pg-rekey's rewrites do about this table's UPDATE triggers (overrides the top-level `triggers:`). */
  triggers: z.enum(['fire', 'skip']).optional(),
});

export const sweepSchema = z.strictObject({
  /**
   * How the sweep paces itself. auto: a feedback controller holds the foreground's latency (a probe's own
   * read and commit, against a baseline learned while the sweep pauses) near latency_ratio x baseline,
   * slowing down on lock waits, standby or slot lag and archiver backlog; duty: chunk_time and nice_ratio
   * alone (the behaviour before auto); fast: unthrottled (no pacing, large chunks; `--fast`).
   */
  mode: z.enum(['auto', 'duty', 'fast']).default('auto'),
  /** auto: the probe's latency may rise to this many times its baseline (and at least 0.1 ms above it). */
  latency_ratio: z.number().min(1).max(100).default(1.1),
  /** auto: how often the probe reads and commits on its own connection. */
  probe_interval: duration.refine((d) => toMillis(d) >= 10, 'at least 10ms').default('100ms'),
  /** auto: how often the baseline is learned again (the sweep pauses for about 22 probe intervals). */
  baseline_interval: duration.refine((d) => toMillis(d) >= 1000, 'at least 1s').default('60s'),
  /** Hard limit of rows rewritten per second (auto and duty); 0 = none. */
  max_rate: z.number().min(0).default(0),
  /** Hard limit of WAL the sweep writes per second (standbys, archiving); 0 = none. */
  max_wal_rate: size.default(0),
  /** Target duration of one chunk (one short transaction); chunks are sized to it. 0 = fixed chunks of chunk_blocks. */
  chunk_time: duration.default('5ms'),
  /** Heap blocks (8 kB pages) of the first chunk of each relation (the fixed size when chunk_time is 0). */
  chunk_blocks: z.number().int().min(1).max(131072).default(8),
  /** Bounds of the chunk size in blocks. */
  min_chunk_blocks: z.number().int().min(1).max(131072).default(1),
  max_chunk_blocks: z.number().int().min(1).max(131072).default(8192),
  /** Sleep this many ms per ms of chunk work (gh-ost's nice-ratio); 0 = no pause. */
  nice_ratio: z.number().min(0).max(100).default(4),
  /** statement_timeout for each chunk's statements. */
  statement_timeout: duration.default('30s'),
  /**
   * lock_timeout of sweep chunks and stream batches: pg-rekey yields to application locks. Keep it
   * below deadlock_timeout (1 s), so pg-rekey times out of a lock cycle before the deadlock
   * detector picks an application transaction as the victim.
   */
  lock_timeout: duration.default('500ms'),
  /** Stop with "wrong key?" when this many values of a version fail to decrypt before any succeeds. */
  wrong_key_threshold: z.number().int().min(1).default(8),
  /** Seconds between progress log lines when stderr is not a terminal. */
  progress_interval: duration.default('5s'),
  /**
   * Connections that sweep one relation together, each on block ranges it leases from
   * pgrekey.sweep_range (`pg-rekey sweep-worker` processes on other hosts join them). The pacing
   * (max_rate, max_wal_rate, nice_ratio, the auto controller's rate) is for all of them together.
   * 1 = one connection walks each relation from block 0 (no ranges).
   */
  workers: z.number().int().min(1).max(64).default(1),
  /** How long a range stays leased to a worker that stopped renewing it (crashed, partitioned) before another takes it. */
  range_lease: duration.refine((d) => toMillis(d) >= 1000, 'at least 1s').default('30s'),
});

export const throttleSchema = z.strictObject({
  /** Pause the sweep while a physical standby's replay_lag exceeds this (0 = ignore). */
  max_replica_lag: duration.default('10s'),
  /** ... or while a standby is this many bytes of WAL behind (0 = ignore). */
  max_replica_lag_bytes: size.default('1GB'),
  /** Pause the sweep while more than this many client backends are active (0 = ignore). */
  max_active_backends: z.number().int().min(0).default(0),
  /** Above this many active backends: stop the sweep (critical_action: stop) or hibernate (0 = ignore). */
  critical_active_backends: z.number().int().min(0).default(0),
  critical_action: z.enum(['stop', 'hibernate']).default('stop'),
  /** How long to hibernate after a critical load reading. */
  hibernate_time: duration.default('60s'),
  /** While this file exists, the sweep pauses (touch it to pause, rm it to resume). */
  pause_file: z.string().min(1).optional(),
  /** How often throttle signals are read while sweeping or paused. */
  check_interval: duration.default('1s'),
});

export const replicationSchema = z.strictObject({
  /** Logical replication slot name. */
  slot: z.string().regex(/^[a-z0-9_]{1,63}$/, 'lower case letters, digits and _ only (a PostgreSQL slot name)').default('pg_rekey'),
  /** Publication name. */
  publication: z.string().min(1).max(63).default('pg_rekey'),
  /** Warn (log, status, metrics) while the slot holds back more WAL than this: the server cannot recycle it. 0 = off. */
  max_retained_wal: size.default('10GB'),
  /**
   * Replication origin on pg-rekey's rewrites (PostgreSQL 16+, see replication/origin.ts), so that
   * consumers with `origin = none` (subscriptions, Debezium) can skip them. auto: on when the server
   * is 16+ and the role may set it up (otherwise off, with a log line saying why); on: refuse to run
   * without it; off: never.
   */
  origin: z.enum(['auto', 'on', 'off']).default('auto'),
});

export const daemonSchema = z.strictObject({
  /** Address of the HTTP endpoint (/ status page, /healthz, /readyz, /metrics). */
  http_host: z.string().min(1).default('127.0.0.1'),
  /** Port of the HTTP endpoint; 0 = pick a free port (logged at start). */
  http_port: z.number().int().min(0).max(65535).default(9187),
  /** How often `run` counts remaining values to decide convergence. */
  check_interval: duration.default('30s'),
  /** How often `run` checks that the replication slot still exists and is not lost. */
  slot_check_interval: duration.default('10s'),
  /** Stream batches: flush after this many rows ... */
  stream_batch_rows: z.number().int().min(1).max(100000).default(2000),
  /** ... or when the oldest pending rewrite has waited this long. */
  stream_batch_delay: duration.default('20ms'),
  /**
   * SIGTERM/SIGINT (or any other stop) drains the batch in flight, its acknowledgement and the sweep's
   * checkpoint; past this bound `run` exits anyway (work left replays from the slot). At least 1s.
   */
  shutdown_timeout: duration.refine((d) => toMillis(d) >= 1000, 'at least 1s (the drain needs a moment)').default('10s'),
});

export const fileSchema = z.strictObject({
  /** Connection string; else DATABASE_URL; else libpq PG* variables. */
  database: z.string().min(1).optional(),
  tables: z.array(tableSchema).min(1),
  /**
   * User triggers that fire on an UPDATE of a configured column: `fire` (pg-rekey's rewrites fire
   * them like any UPDATE) or `skip` (rewrites run with session_replication_role = replica, so only
   * ENABLE ALWAYS and ENABLE REPLICA triggers fire). Unset: setup, run and backfill refuse a table
   * that has such triggers until this (or the table's own `triggers:`) decides.
   */
  triggers: z.enum(['fire', 'skip']).optional(),
  /**
   * Relations that were leaves of a configured table (a partition detached, an INHERITS child
   * unlinked with NO INHERIT) and that may keep their old-version values: `table` (schema public)
   * or `schema.table`. verify still counts and lists them, but they no longer hold convergence back.
   */
  ignore: z.array(z.string().min(1)).default([]),
  sweep: sweepSchema.default(() => sweepSchema.parse({})),
  throttle: throttleSchema.default(() => throttleSchema.parse({})),
  replication: replicationSchema.default(() => replicationSchema.parse({})),
  daemon: daemonSchema.default(() => daemonSchema.parse({})),
  /** Unset: `run` and `backfill` log at info, one-shot commands (setup, verify, status, teardown) at warn. */
  log_level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).optional(),
  /** Unset: `pretty` (ISO time, level name, component, message, fields) when stderr is a terminal, `json` lines otherwise. */
  log_format: z.enum(['pretty', 'json']).optional(),
});

export type FileConfig = z.infer<typeof fileSchema>;

/** Converts `256MB` (or a number of bytes) to bytes. */
export function toBytes(d: number | string): number {
  if (typeof d === 'number') return d;
  const m = /^(\d+(?:\.\d+)?)\s*(B|kB|MB|GB|TB)$/.exec(d.trim());
  if (!m) throw new Error(`not a size: ${d}`);
  return Math.round(Number(m[1]) * { B: 1, kB: 1024, MB: 1024 ** 2, GB: 1024 ** 3, TB: 1024 ** 4 }[m[2] as 'B' | 'kB' | 'MB' | 'GB' | 'TB']);
}

/** Converts `2s`, `500ms`, `5m` or a number of milliseconds to milliseconds. */
export function toMillis(d: number | string): number {
  if (typeof d === 'number') return d;
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)$/.exec(d.trim());
  if (!m) throw new Error(`not a duration: ${d}`);
  const n = Number(m[1]);
  return Math.round(n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h']);
}
