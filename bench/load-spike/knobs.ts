// The benchmark's knobs: environment variables with defaults. The ones set are listed in RESULTS.md.
export const KNOB_DEFAULTS = {
  /** Rows in `incidents`. */
  BENCH_ROWS: 1_000_000,
  /** Foreground transactions per second, all connections together. */
  BENCH_RATE: 300,
  /** Foreground connections. */
  BENCH_CLIENTS: 8,
  /** Share of foreground transactions that are updates (the rest are reads by key). */
  BENCH_UPDATE_FRACTION: 0.2,
  /** Workload time before each measured window opens. */
  BENCH_WARMUP_SECONDS: 3,
  /** Length of the baseline windows. */
  BENCH_BASELINE_SECONDS: 25,
  /** Workload-alone window right before each rotation, to compare it with the machine as it is at that moment. */
  BENCH_PRE_BASELINE_SECONDS: 10,
  /** The classic batch runs this long (it would take far longer to finish). */
  BENCH_CLASSIC_SECONDS: 30,
  /** Before each scenario, wait up to this long for the machine to be at most half busy (other jobs share it). */
  BENCH_QUIET_WAIT_SECONDS: 45,
  /** A pg-rekey backfill still running after this long is stopped (SIGTERM) and reported as partial; 0 = no limit. */
  BENCH_SWEEP_LIMIT_SECONDS: 60,
  /** The pgbench-driven workload (Debian's /usr/bin/pgbench): 1 = also measure baseline, runbook batch and pg-rekey defaults under it; 0 = skip. */
  BENCH_PGBENCH: 1,
  /** pgbench clients and total rate (transactions/s; each a primary-key SELECT and an UPDATE of status). */
  BENCH_PGBENCH_CLIENTS: 4,
  BENCH_PGBENCH_RATE: 300,
  /** Stream-latency scenario: fresh v1 INSERTs per second (each its own autocommit transaction) while `pg-rekey run` streams and sweeps ... */
  BENCH_STREAM_RATE: 1000,
  /** ... for this long ... */
  BENCH_STREAM_SECONDS: 30,
  /**
   * ... over this many connections. A synchronous commit per write: with 4, a machine busy enough to stretch a commit
   * to ~5 ms held the writer to 840 writes/s (2026-12-07); open loop, idle connections cost nothing.
   */
  BENCH_STREAM_CONNECTIONS: 16,
  /** After the writes, how long to wait for the last of them to be rewritten before counting the rest as not rewritten. */
  BENCH_STREAM_WAIT_SECONDS: 60,
} as const;

export type Knobs = Record<keyof typeof KNOB_DEFAULTS, number>;

/**
 * Extra pg-rekey scenarios: default settings except the given `sweep:` fields. BENCH_SWEEP_VARIANTS lists
 * them separated by `;`, fields as `name=value` separated by `,`: `nice_ratio=1;chunk_time=25ms,nice_ratio=1`.
 * Default: none (each adds a minute or two; e.g. `mode=duty,nice_ratio=0;latency_ratio=1.5`).
 */
export function sweepVariants(env: NodeJS.ProcessEnv = process.env): Record<string, string | number>[] {
  const raw = env.BENCH_SWEEP_VARIANTS ?? '';
  return raw
    .split(';')
    .filter((v) => v.trim() !== '')
    .map((v) => fields('BENCH_SWEEP_VARIANTS', v));
}

/**
 * BENCH_STREAM_DAEMON: `daemon:` fields for the stream-latency scenario's `pg-rekey run`, as `name=value`
 * separated by `,` (e.g. `stream_batch_delay=20ms`). Default: none (the defaults are what the target is about).
 */
export function streamDaemonSettings(env: NodeJS.ProcessEnv = process.env): Record<string, string | number> {
  const raw = env.BENCH_STREAM_DAEMON ?? '';
  return raw.trim() === '' ? {} : fields('BENCH_STREAM_DAEMON', raw);
}

function fields(knob: string, v: string): Record<string, string | number> {
  return Object.fromEntries(
    v.split(',').map((field) => {
      const m = /^\s*([a-z_]+)\s*=\s*(\S+)\s*$/.exec(field);
      if (!m) throw new Error(`${knob}: "${field}" is not name=value (e.g. nice_ratio=1;chunk_time=25ms,nice_ratio=1)`);
      return [m[1]!, /^\d+(\.\d+)?$/.test(m[2]!) ? Number(m[2]) : m[2]!];
    }),
  );
}

/**
 * BENCH_ONLY: run only the listed scenarios (comma-separated keys, for reruns), e.g. `stream-latency` or
 * `default,stream-latency`. The bench workload's baseline always runs (everything is compared with it).
 * Keys: probe, classic, runbook, default, duty, variant-N, unthrottled, floor, floor-unnest, pgbench
 * (the pgbench workload's three scenarios), stream-latency. Unset or empty: all of them.
 */
export function benchOnly(env: NodeJS.ProcessEnv = process.env): (key: string) => boolean {
  const keys = (env.BENCH_ONLY ?? '')
    .split(',')
    .map((k) => k.trim())
    .filter(Boolean);
  return (key) => keys.length === 0 || key === 'baseline' || keys.includes(key);
}

/** Knobs that may be 0; the others must be positive. */
const ZERO_OK = new Set(['BENCH_UPDATE_FRACTION', 'BENCH_WARMUP_SECONDS', 'BENCH_QUIET_WAIT_SECONDS', 'BENCH_SWEEP_LIMIT_SECONDS', 'BENCH_PGBENCH']);

export function readKnobs(env: NodeJS.ProcessEnv = process.env): Knobs {
  const out = {} as Knobs;
  for (const [name, dflt] of Object.entries(KNOB_DEFAULTS) as [keyof Knobs, number][]) {
    const raw = env[name];
    const n = raw === undefined || raw === '' ? dflt : Number(raw);
    if (!Number.isFinite(n) || n < 0 || (n === 0 && !ZERO_OK.has(name))) throw new Error(`${name} must be a number ${ZERO_OK.has(name) ? '>= 0' : '> 0'}, got "${raw}"`);
    out[name] = n;
  }
  return out;
}

/** `BENCH_ROWS=200000 ` for the knobs set in the environment, quoted for a shell. */
export function setKnobs(env: NodeJS.ProcessEnv = process.env): string {
  return [...Object.keys(KNOB_DEFAULTS), 'BENCH_SWEEP_VARIANTS', 'BENCH_ONLY', 'BENCH_STREAM_DAEMON']
    .filter((k) => env[k] !== undefined)
    .map((k) => `${k}=${/^[\w.,=-]+$/.test(env[k]!) ? env[k] : `'${env[k]}'`} `)
    .join('');
}
