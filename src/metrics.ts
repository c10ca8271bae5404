import { Counter, Gauge, Registry, collectDefaultMetrics, type GaugeConfiguration, type LabelValues } from 'prom-client';

/**
 * A gauge with no sample until its value is known. prom-client prints an
 * unlabelled gauge that was never set as 0, and for pg-rekey a 0 reads as
 * "done" (no values remaining, no WAL retained): before the first slot check
 * or convergence count these gauges are declared (HELP, TYPE) but absent.
 */
export class KnownGauge extends Gauge {
  private known = false;

  constructor(config: Omit<GaugeConfiguration<string>, 'labelNames' | 'collect'>) {
    super(config);
  }

  /** Unlabelled: set(value) only. */
  override set(value: number | LabelValues<string>, labelled?: number): void {
    if (typeof value !== 'number' || labelled !== undefined) throw new Error('a KnownGauge has no labels: set(value)');
    this.known = true;
    super.set(value);
  }

  /** Back to unknown (no sample), e.g. when the slot it describes is gone. */
  forget(): void {
    this.known = false;
    super.reset();
  }

  override async get(): ReturnType<Gauge['get']> {
    const m = await super.get();
    return this.known ? m : { ...m, values: [] };
  }
}

/**
 * Everything `pg-rekey run` exposes on /metrics. One registry per daemon so
 * tests can run several in one process.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly rewrites = new Counter({ name: 'pg_rekey_rewrites_total', help: 'Values rewritten to the target key version', labelNames: ['source', 'table'] as const, registers: [this.registry] });
  readonly quarantined = new Counter({ name: 'pg_rekey_quarantined_total', help: 'Values that could not be rewritten (left untouched, recorded in pgrekey.quarantine)', labelNames: ['source', 'table'] as const, registers: [this.registry] });
  readonly casConflicts = new Counter({ name: 'pg_rekey_cas_conflicts_total', help: 'Rewrites skipped because the row changed first (compare-and-swap lost)', labelNames: ['source'] as const, registers: [this.registry] });
  readonly sweepBlocksDone = new Gauge({ name: 'pg_rekey_sweep_blocks_done', help: 'Heap blocks swept in the current pass (past pg_rekey_sweep_blocks_total while it sweeps the tail the table grew by)', labelNames: ['relation'] as const, registers: [this.registry] });
  readonly sweepBlocksTotal = new Gauge({ name: 'pg_rekey_sweep_blocks_total', help: 'Heap blocks of the relation when its current sweep pass started (progress counts against it)', labelNames: ['relation'] as const, registers: [this.registry] });
  readonly sweepChunkBlocks = new Gauge({ name: 'pg_rekey_sweep_chunk_blocks', help: 'Current chunk size in blocks (sized to sweep.chunk_time)', labelNames: ['relation'] as const, registers: [this.registry] });
  readonly sweepRowsPerSecond = new Gauge({ name: 'pg_rekey_sweep_rows_per_second', help: 'Recent sweep rewrite rate (EWMA)', labelNames: ['relation'] as const, registers: [this.registry] });
  readonly sweepThrottled = new Gauge({ name: 'pg_rekey_sweep_throttled', help: '1 while the sweep is held back for this reason', labelNames: ['reason'] as const, registers: [this.registry] });
  readonly sweepThrottledSeconds = new Counter({ name: 'pg_rekey_sweep_throttled_seconds_total', help: 'Time the sweep spent held back, by reason', labelNames: ['reason'] as const, registers: [this.registry] });
  readonly sweepTargetLatency = new KnownGauge({ name: 'pg_rekey_sweep_target_latency_seconds', help: 'sweep.mode auto: the latency probe target (baseline x sweep.latency_ratio)', registers: [this.registry] });
  readonly sweepProbeLatency = new KnownGauge({ name: 'pg_rekey_sweep_probe_latency_seconds', help: "sweep.mode auto: median of the latency probe's recent samples (a tiny commit and read on a connection of its own)", registers: [this.registry] });
  readonly sweepBaselineLatency = new KnownGauge({ name: 'pg_rekey_sweep_baseline_latency_seconds', help: 'sweep.mode auto: the probe latency learned while the sweep paused', registers: [this.registry] });
  readonly sweepProbeTailShare = new KnownGauge({ name: 'pg_rekey_sweep_probe_tail_share', help: "sweep.mode auto: share (0-1) of the probe's last 30 samples above latency_ratio x the baseline's 90th percentile (above 0.25 the controller slows down)", registers: [this.registry] });
  readonly sweepRateLimit = new KnownGauge({ name: 'pg_rekey_sweep_rate_limit_rows_per_second', help: 'sweep.mode auto: the rate the controller paces the sweep to', registers: [this.registry] });
  readonly sweepSlowdowns = new Counter({ name: 'pg_rekey_sweep_slowdowns_total', help: 'sweep.mode auto: times the controller cut the rate, by reason (probe-spike, probe-latency, probe-tail, lock-waits, standby-lag, slot-lag, archiver-backlog, wal-sync)', labelNames: ['reason'] as const, registers: [this.registry] });
  readonly sweepLockTimeouts = new Counter({ name: 'pg_rekey_sweep_lock_timeouts_total', help: 'Sweep chunks that hit lock_timeout and were retried later', registers: [this.registry] });
  readonly streamLagBytes = new KnownGauge({ name: 'pg_rekey_stream_lag_bytes', help: "Bytes of WAL between the server's current position and the last position the stream applied", registers: [this.registry] });
  readonly streamAppliedLsn = new KnownGauge({ name: 'pg_rekey_stream_applied_lsn', help: 'Last WAL position whose rewrites are committed, as a number', registers: [this.registry] });
  readonly streamConnected = new Gauge({ name: 'pg_rekey_stream_connected', help: '1 while the replication connection is streaming', registers: [this.registry] });
  readonly streamReconnects = new Counter({ name: 'pg_rekey_stream_reconnects_total', help: 'Replication connection attempts after an error', registers: [this.registry] });
  readonly slotRetainedWalBytes = new KnownGauge({ name: 'pg_rekey_slot_retained_wal_bytes', help: "WAL the server keeps for the slot (current position - restart_lsn), at the last slot check", registers: [this.registry] });
  readonly slotRetainedWalMaxBytes = new Gauge({ name: 'pg_rekey_slot_retained_wal_max_bytes', help: 'replication.max_retained_wal: the warning threshold for retained WAL (0 = off)', registers: [this.registry] });
  readonly slotRetainedWalExceeded = new KnownGauge({ name: 'pg_rekey_slot_retained_wal_exceeded', help: '1 while the slot retains more WAL than replication.max_retained_wal', registers: [this.registry] });
  readonly slotRecreations = new Counter({ name: 'pg_rekey_slot_recreations_total', help: 'Times the replication slot was found lost or missing and recreated (the sweep restarts)', registers: [this.registry] });
  readonly slotFailovers = new Counter({ name: 'pg_rekey_slot_failovers_total', help: 'Promotions (a new timeline of the same cluster) seen under the replication slot, by whether the slot survived (continued: no re-sweep) or not (recreated: the sweep restarts)', labelNames: ['outcome'] as const, registers: [this.registry] });
  readonly streamRows = new Counter({ name: 'pg_rekey_stream_rows_total', help: 'Stream rewrites that did not simply apply, by outcome: superseded (a newer write or a delete came first), retried, given_up (quarantined with a reason)', labelNames: ['outcome'] as const, registers: [this.registry] });
  readonly streamChanges = new Counter({ name: 'pg_rekey_stream_changes_total', help: "INSERT/UPDATE messages of the published tables the stream received, by handling: decoded (compared with the target version), skipped_own_origin (pg-rekey's own rewrites, marked with its replication origin)", labelNames: ['handling'] as const, registers: [this.registry] });
  readonly rewriteOrigin = new Gauge({ name: 'pg_rekey_rewrite_origin', help: "1 when pg-rekey's rewrites carry its replication origin (replication.origin), 0 when they do not", registers: [this.registry] });
  readonly streamVisibilityWait = new Counter({ name: 'pg_rekey_stream_visibility_wait_seconds_total', help: 'Time the stream waited for decoded transactions to become visible before rewriting (synchronous replication makes it grow)', registers: [this.registry] });
  readonly resweeps = new Counter({ name: 'pg_rekey_resweeps_total', help: 'Relations swept again because a convergence check found old-version values after a complete sweep, by reason', labelNames: ['reason'] as const, registers: [this.registry] });
  readonly openTransactions = new KnownGauge({ name: 'pg_rekey_convergence_open_transactions', help: 'Transactions open at the last convergence check that hold it back (they may commit old-version writes)', registers: [this.registry] });
  readonly remaining = new KnownGauge({ name: 'pg_rekey_remaining_values', help: 'Values of a non-target version when last counted', registers: [this.registry] });
  readonly converged = new Gauge({ name: 'pg_rekey_converged', help: '1 when the last convergence check passed (0 before the first one)', registers: [this.registry] });
  readonly lastCheck = new KnownGauge({ name: 'pg_rekey_last_check_timestamp_seconds', help: 'When the last convergence check ended (Unix time); absent before the first one', registers: [this.registry] });
  readonly info = new Gauge({ name: 'pg_rekey_info', help: 'Always 1: the target key version, the replication slot and the pg-rekey version of this daemon', labelNames: ['target_version', 'slot', 'version'] as const, registers: [this.registry] });
  readonly oldVersionWrites = new Counter({ name: 'pg_rekey_old_version_writes_total', help: 'Old-version values in application INSERTs/UPDATEs decoded by the stream (pg-rekey\'s own rewrites excluded): an application instance still writes an old key', labelNames: ['version', 'table'] as const, registers: [this.registry] });
  readonly oldVersionLastWrite = new Gauge({ name: 'pg_rekey_old_version_last_write_timestamp_seconds', help: 'Commit time (Unix seconds) of the last application write of an old-version value, as recorded', labelNames: ['version', 'table'] as const, registers: [this.registry] });
  readonly leader = new Gauge({ name: 'pg_rekey_leader', help: '1 while this process leads its replication slot (holds the lease), 0 while it waits as a standby (run --standby)', registers: [this.registry] });
  readonly term = new Gauge({ name: 'pg_rekey_term', help: "The slot's fencing term this process leads in (absent on a standby)", registers: [this.registry] });
  readonly quietSeconds = new Gauge({ name: 'pg_rekey_quiet_seconds', help: 'Seconds since the last old-version write (or the slot creation, if later) at the last convergence check', registers: [this.registry] });

  constructor() {
    // One prefix for everything: pg_rekey_process_cpu_seconds_total, pg_rekey_nodejs_heap_size_used_bytes, ...
    collectDefaultMetrics({ register: this.registry, prefix: 'pg_rekey_' });
  }
}
