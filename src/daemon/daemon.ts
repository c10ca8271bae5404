import type { Server } from 'node:http';
import type { Context } from '../context.js';
import type { KeyRing } from '../crypto/key-ring.js';
import type { TableInfo } from '../db/catalog.js';
import { displayName } from '../db/ident.js';
import { ConfigError, EXIT_NOT_CONVERGED, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, exitCodeOf, RuntimeFailure } from '../errors.js';
import { Metrics } from '../metrics.js';
import { versionLabel } from '../crypto/envelope.js';
import { PG_REKEY_VERSION } from '../version.js';
import { LogProgress, type ProgressSink } from '../backfill/progress.js';
import { sweepAll } from '../backfill/worker-pool.js';
import { sleep } from '../timing.js';
import { ensureSegment, rememberLeaves, restartSegments } from '../state/segments.js';
import { summarizeQuarantine } from '../state/quarantine.js';
import { formatLsn, parseLsn } from '../replication/lsn.js';
import { RelationMap } from '../replication/relation-map.js';
import { createSlot, dropSlot, formatBytes, logSlotWait, readSlot, retainedWalExceeded, slotUnusable, type SlotInfo } from '../replication/slot.js';
import { assessSlotServer } from '../replication/server-identity.js';
import { rewriteOrigins, type RewriteOrigins } from '../replication/origin.js';
import { ReplicationStream } from '../replication/stream.js';
import { StreamWriter, type BatchLimits, type FlushResult } from '../replication/stream-writer.js';
import { CatalogWatch } from './catalog-watch.js';
import { checkConvergence, type ConvergenceCheck } from './convergence.js';
import { oldValueIdentities, StuckValues } from './stuck-values.js';
import { LiveSettings } from '../throttle/live-settings.js';
import { Throttle } from '../throttle/throttle.js';
import { withMode } from '../throttle/live-settings.js';
import { autoPacer, type AutoPacer } from '../throttle/pacer.js';
import { startHttp, type HttpEndpoint } from './http.js';
import { endStaleWalsender, Fenced } from './leader-term.js';
import { readStatus } from '../commands/status.js';
import type { LiveView } from './status-page.js';
import { CheckHistory, StatusPageSource } from './status-view.js';
import { quietSince, readOldVersionWrites } from '../state/old-version-writes.js';
import { recordEvent } from '../state/events.js';
import { formatDuration } from '../format.js';
import type { SlotLease } from './lease.js';
import type { ShutdownBound } from './shutdown-bound.js';

export interface DaemonOptions {
  exitWhenConverged: boolean;
  /**
   * --quiet-period: with exitWhenConverged, exit only once no old-version write has been seen for
   * this long (counted from the last one's commit time, or the slot's creation); 0 = at once.
   */
  quietPeriodMs: number;
  /** The slot's lease, taken by the caller before anything else (lease.ts); losing it stops the daemon. */
  lease: SlotLease;
  /** Bounds the shutdown (daemon.shutdown_timeout); armed by the first stop. */
  bound: ShutdownBound;
  /** `run --fast`: sweep.mode fast (unthrottled). */
  fast?: boolean;
  /** A standby's endpoint (run --standby), served by this daemon from now on instead of opening its own. */
  http?: HttpEndpoint;
}

/**
 * `pg-rekey run`: the stream and the sweep in one process, an HTTP endpoint,
 * a slot watchdog and periodic convergence checks. Resolves with the exit code.
 */
export class Daemon {
  readonly metrics = new Metrics();
  private readonly log;
  private relations!: RelationMap;
  private stream!: ReplicationStream;
  private stopping = false;
  private finish!: (code: number) => void;
  private readonly finished = new Promise<number>((r) => (this.finish = r));
  private sweepAbort = new AbortController();
  private sweepStale = false;
  private sweepWake: (() => void) | null = null;
  private sweepDone = false;
  private lastCheck: ConvergenceCheck | null = null;
  private convergedAt: Date | null = null;
  private slotMutex: Promise<void> = Promise.resolve();
  private readonly refreshedAt = new Map<string, number>();
  private catalog!: CatalogWatch;
  private catalogMutex: Promise<unknown> = Promise.resolve();
  /** Relations to sweep again from block 0 (new partitions, rewritten tables). */
  private readonly resweep = new Set<string>();
  /** The tables changed during a sweep pass: run another pass before calling it complete. */
  private sweepAgain = false;
  private serverVersionNum = 0;
  /** replication.origin as resolved at start (replication/origin.ts). */
  private origins: RewriteOrigins = { state: { on: false, names: { sweep: '', stream: '' }, fixes: [] } };
  private lastCheckAt: Date | null = null;
  private rateSample = { at: Date.now(), rewrites: 0, perSec: 0 };
  private retainedWalHigh = false;
  /** The last convergence checks, for the status page. */
  private readonly checks = new CheckHistory();
  /** Values the sweep opened, by version (the run history records them: state/runs.ts keyOpenedBefore). */
  readonly opened = new Map<number, number>();
  private readonly page: StatusPageSource;
  private writer!: StreamWriter;
  private readonly startedAtMs = Date.now();
  /** The rollout gate at the last check: where the quiet period counts from, and how long it has been. */
  private quiet: { since: Date | null; quietMs: number } = { since: null, quietMs: 0 };
  /** The quiet-period start last logged as awaited (a new old-version write restarts it). */
  private quietLogged: number | null = null;

  constructor(
    private readonly ctx: Context,
    private readonly ring: KeyRing,
    private tables: TableInfo[],
    private readonly opts: DaemonOptions,
  ) {
    this.log = ctx.log.child({ component: 'daemon' });
    this.metrics.info.set({ target_version: versionLabel(ring.target), slot: ctx.config.replication.slot, version: PG_REKEY_VERSION }, 1);
    this.metrics.slotRetainedWalMaxBytes.set(ctx.config.replication.maxRetainedWalBytes);
    this.metrics.leader.set(1);
    this.metrics.term.set(Number(opts.lease.token.term));
    const onLost = (cause: unknown) => {
      const slot = ctx.config.replication.slot;
      this.metrics.leader.set(0);
      if (cause instanceof Fenced) {
        this.log.fatal({ err: cause, slot, term: opts.lease.token.term }, `LEASE LOST: ${cause.message} (exit 3)`);
        return this.stop(EXIT_RUNTIME);
      }
      this.log.fatal(
        { err: cause, slot },
        `LEASE LOST: the connection holding the lease of replication slot ${slot} ended, so another pg-rekey run may take the slot over now; ` +
          'stopping without writing more state (exit 3). Restart `pg-rekey run` once the database is reachable (or let the other one run)',
      );
      this.stop(EXIT_RUNTIME);
    };
    this.page = new StatusPageSource(
      () => readStatus(ctx.pool, ctx.config.replication.slot, ctx.config.replication.maxRetainedWalBytes),
      () => this.liveView(),
    );
    opts.lease.on('lost', onLost);
    if (!opts.lease.held) onLost(new Error('the lease was lost before the daemon started'));
  }

  /**
   * Startup order: the lease (taken by the caller), the HTTP endpoint, the
   * catalog and the slot, then the stream, the sweep and the timers. A stop
   * during startup (a signal while a slot creation waits, say) goes straight
   * to the shutdown; shutdown() stops the parts in reverse order.
   */
  async run(): Promise<number> {
    const { config } = this.ctx;
    // Before anything touches the slot: a port in use is a configuration error (exit 2).
    const http = await this.listen();
    const startup = this.opts.bound.track('startup: reading the catalog, checking (or creating) the replication slot', this.startup());
    let started: boolean;
    try {
      started = await Promise.race([startup.then(() => true), this.finished.then(() => false)]);
    } catch (e) {
      await this.shutdown(exitCodeOf(e), http.server, Promise.resolve(), []).catch(() => undefined);
      throw e;
    }
    if (!started) return this.shutdown(await this.finished, http.server, Promise.resolve(), []);
    this.log.info(
      { http: `http://${config.daemon.httpHost}:${http.port}`, slot: config.replication.slot, tables: this.tables.map((t) => t.display), exitWhenConverged: this.opts.exitWhenConverged },
      'pg-rekey run started: / (status page) /healthz /readyz /metrics',
    );
    this.stream.start();
    const sweeping = this.sweepLoop();
    const timers = [
      setInterval(() => void this.watchSlot().catch((e) => this.log.warn({ err: e }, 'slot check failed')), config.daemon.slotCheckIntervalMs),
      setInterval(
        () =>
          void this.track(this.checkNow()).catch((e) => {
            this.log.warn({ err: e }, 'convergence check failed');
            void this.refreshCatalog('convergence check failed').catch(() => undefined); // a configured table dropped?
          }),
        config.daemon.checkIntervalMs,
      ),
      setInterval(() => void this.refreshCatalog('periodic catalog check').catch((e) => this.log.warn({ err: e }, 'catalog check failed')), config.daemon.slotCheckIntervalMs),
    ];
    return this.shutdown(await this.finished, http.server, sweeping, timers);
  }

  /** The HTTP endpoint; a port in use (or not ours to take) is a configuration error that names the setting. */
  private async listen(): Promise<{ server: Server; port: number }> {
    const { httpHost, httpPort } = this.ctx.config.daemon;
    const term = this.opts.lease.token.term;
    const health = {
      ready: () => (this.stream?.connected ? { ok: true, reason: `streaming (role: leader, term ${term})` } : { ok: false, reason: `replication stream not connected (role: leader, term ${term})` }),
    };
    if (this.opts.http) {
      this.opts.http.serve({ metrics: this.metrics, health, page: () => this.page.html() });
      return this.opts.http;
    }
    try {
      return await startHttp(httpHost, httpPort, this.metrics, health, () => this.page.html());
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const fix = 'set daemon.http_port in the config (or PG_REKEY_DAEMON_HTTP_PORT) to a free port, or 0 to pick one (logged at start)';
      if (code === 'EADDRINUSE') {
        throw new ConfigError(`cannot listen on ${httpHost}:${httpPort} for /healthz /readyz /metrics: port ${httpPort} is already in use (another pg-rekey run, for another slot? another service?)`, fix);
      }
      if (code === 'EACCES') throw new ConfigError(`cannot listen on ${httpHost}:${httpPort}: permission denied (ports below 1024 need privileges)`, fix);
      if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') {
        throw new ConfigError(`cannot listen on ${httpHost}:${httpPort}: ${httpHost} is not an address of this host`, 'set daemon.http_host (or PG_REKEY_DAEMON_HTTP_HOST) to an address of this host, e.g. 127.0.0.1 or 0.0.0.0');
      }
      throw e;
    }
  }

  private async startup(): Promise<void> {
    const { config, pool } = this.ctx;
    this.relations = await RelationMap.build(pool, this.tables);
    this.catalog = new CatalogWatch(pool, config.tables, this.tables, { publication: config.replication.publication, target: this.ring.target, log: this.ctx.log });
    await this.catalog.init(); // refuses UNLOGGED leaves; adds INHERITS children created since setup to the publication
    this.serverVersionNum = Number((await pool.query<{ v: string }>(`select current_setting('server_version_num') as v`)).rows[0]!.v);
    await this.ensureSlot('startup check');
    this.origins = await rewriteOrigins(pool, config.replication.origin, config.replication.slot, this.ctx.log);
    this.metrics.rewriteOrigin.set(this.origins.state.on ? 1 : 0);
    const writer = (this.writer = new CatalogFollowingWriter(pool, this.ring, { maxRows: config.daemon.streamBatchRows, maxBytes: 32 * 1024 * 1024, maxDelayMs: config.daemon.streamBatchDelayMs, lockTimeoutMs: config.sweep.lockTimeoutMs }, () =>
      this.refreshCatalog('stream write failed'),
    ));
    // The gate's metric starts from the record, so that a restart keeps the last write's time.
    const last = new Map<string, { version: string; table: string; at: number }>();
    for (const w of await readOldVersionWrites(pool)) {
      const k = `${w.version} ${w.table}`;
      const at = w.lastAt.getTime() / 1000;
      if (at > (last.get(k)?.at ?? 0)) last.set(k, { version: versionLabel(w.version), table: w.table, at });
    }
    for (const l of last.values()) this.metrics.oldVersionLastWrite.set({ version: l.version, table: l.table }, l.at);
    this.stream = new ReplicationStream({
      connectionString: config.connectionString,
      slot: config.replication.slot,
      publication: config.replication.publication,
      relations: () => this.relations,
      writer,
      ring: this.ring,
      log: this.ctx.log,
      metrics: this.metrics,
      onSlotLost: (reason) => this.ensureSlot(reason),
      beforeSession: () => this.ensureSlot('stream (re)connect'),
      onUnknownRelation: (schema, name) => this.refreshTables(schema, name),
      origins: this.origins.stream,
      beforeConnect: () => this.takeWalsender(),
    });
  }

  /**
   * Before each stream connect: prove the lease and term are still ours (on the lease session),
   * then end a walsender a former leader left on the slot (paused or cut off, it still holds it).
   */
  private async takeWalsender(): Promise<void> {
    await this.opts.lease.confirm();
    const pid = await endStaleWalsender(this.ctx.pool, this.ctx.config.replication.slot);
    if (pid !== null) this.log.warn({ walsenderPid: pid, term: this.opts.lease.token.term }, 'ended the walsender a former leader left on the replication slot (this daemon holds the lease)');
  }

  /**
   * Stops the parts in reverse order of their start and drains them; the
   * ShutdownBound (armed by stop()) ends the process if this takes longer
   * than daemon.shutdown_timeout, and logs which of the named steps was left.
   */
  private async shutdown(code: number, http: Server, sweeping: Promise<void>, timers: NodeJS.Timeout[]): Promise<number> {
    const bound = this.opts.bound;
    this.stopping = true;
    bound.arm(`exit ${code}`);
    timers.forEach(clearInterval);
    this.sweepAbort.abort();
    this.sweepWake?.();
    // Not waited for (read-only, or ending by themselves), only named if the bound is reached while they run.
    void bound.track('a catalog refresh', this.catalogMutex);
    void bound.track('a slot check or slot creation', this.slotMutex);
    // Drain both at once: the chunk in flight, and the stream's batch (flush, acknowledge).
    await Promise.all([
      bound.track('sweep: the chunk in flight and its checkpoint', sweeping),
      this.stream ? bound.track('stream: the batch in flight, its commit and acknowledgement', this.stream.stop()) : undefined,
    ]);
    await bound.track('convergence checks in flight', Promise.allSettled([...this.inFlight])); // checks started by a timer use the pool too
    // After a lost lease another daemon may own the row already: nothing more is written.
    if (this.opts.lease.held) await bound.track('the final status row', this.writeState(true).catch(() => undefined));
    await bound.track(
      'closing the HTTP endpoint',
      new Promise((r) => {
        http.close(r);
        http.closeAllConnections(); // keep-alive scrapers
      }),
    );
    this.log.info({ code, applied: this.stream ? formatLsn(this.stream.appliedLsn) : null }, 'stopped');
    return code;
  }

  private readonly inFlight = new Set<Promise<unknown>>();

  /** Keeps a background task known, so shutdown waits for it before closing the pool. */
  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p)).catch(() => undefined);
    return p;
  }

  /** What the status page shows next to the state tables: the daemon's own view. */
  private liveView(): LiveView {
    const stream = this.stream as ReplicationStream | undefined; // undefined until startup got that far
    return {
      slot: this.ctx.config.replication.slot,
      targetVersion: versionLabel(this.ring.target),
      version: PG_REKEY_VERSION,
      streamConnected: (stream?.connected ?? false) && !this.stopping,
      appliedLsn: stream && stream.appliedLsn > 0n ? formatLsn(stream.appliedLsn) : null,
      sweepDone: this.sweepDone,
      convergedAt: this.convergedAt,
      checks: this.checks.list,
    };
  }

  /** True when the last convergence check passed. */
  get converged(): boolean {
    return this.convergedAt !== null;
  }

  /**
   * Drain and exit with `code` (the first stop's code wins): a signal (0),
   * convergence, a failure, a lost lease. Arms the shutdown bound.
   */
  stop(code = EXIT_OK): void {
    this.stopping = true;
    this.opts.bound.arm(`exit ${code}`);
    this.finish(code);
  }

  private async sweepLoop(): Promise<void> {
    const { pool, config } = this.ctx;
    const live = new LiveSettings(pool, withMode(config, this.opts.fast ? 'fast' : undefined), this.ctx.log);
    const throttle = new Throttle(pool, live, this.ctx.log, this.metrics);
    const pacer = autoPacer(this.ctx, live, this.metrics);
    try {
      await this.sweepPasses(live, throttle, pacer);
    } finally {
      await pacer.stop();
    }
  }

  private async sweepPasses(live: LiveSettings, throttle: Throttle, pacer: AutoPacer): Promise<void> {
    const { pool, config } = this.ctx;
    const progress = this.sweepProgress();
    while (!this.stopping) {
      if (this.sweepStale) {
        this.sweepStale = false;
        await restartSegments(pool, this.tables.flatMap((t) => t.leaves.map(displayName)));
        this.log.warn('sweep restarted from block 0 (new replication slot)');
      }
      this.sweepAbort = new AbortController();
      this.sweepAgain = false;
      try {
        if (this.resweep.size) {
          const relations = [...this.resweep];
          await restartSegments(pool, relations);
          relations.forEach((r) => this.resweep.delete(r));
        }
        // Rewrites, conflicts and quarantined values are counted per chunk by the progress sink.
        await sweepAll(pool, this.tables, {
          workers: config.sweep.workers,
          leaseMs: config.sweep.rangeLeaseMs,
          role: 'run',
          settings: live.current.sweep,
          live,
          throttle,
          pacer,
          ring: this.ring,
          signal: this.sweepAbort.signal,
          progress,
          log: this.ctx.log,
          // The stream must not take the sweep's own rewrites for an application's old-version writes.
          onWriteXid: (xid) => this.writer.noteOwnTransaction(xid),
          origin: this.origins.sweep,
          opened: this.opened,
        });
        await throttle.clear();
        await pacer.stop(); // no probing while no pass runs (the next pass starts it again)
      } catch (e) {
        if (this.stopping) break;
        if (e instanceof RuntimeFailure) {
          this.log.fatal({ err: e, hint: e.hint }, 'sweep cannot continue');
          return this.stop(EXIT_RUNTIME);
        }
        // A table dropped or rewritten under the sweep: follow the catalog and go on at once.
        if (await this.refreshCatalog('sweep failed').catch(() => false)) {
          this.log.info({ err: e }, 'sweep interrupted by a change of the configured tables; going on');
          continue;
        }
        this.log.warn({ err: e }, 'sweep failed; retrying in 5s');
        await sleep(5_000, this.sweepAbort.signal);
        continue;
      }
      if (this.stopping || this.sweepAbort.signal.aborted || this.sweepAgain) continue;
      if (!this.sweepDone) this.log.info('sweep complete for every configured table');
      this.sweepDone = true;
      void this.track(this.checkNow()).catch((e) => this.log.warn({ err: e }, 'convergence check failed'));
      await new Promise<void>((r) => (this.sweepWake = r));
      this.sweepWake = null;
    }
  }

  private sweepProgress(): ProgressSink {
    const logSink = new LogProgress(this.ctx.log, this.ctx.config.sweep.progressIntervalMs);
    // Counters move per chunk (a sweep pass can take hours): add what each chunk added.
    const seen = new Map<string, { rewritten: number; conflicts: number; quarantined: number }>();
    const tableOf = (rel: string) => this.tables.find((t) => t.leaves.some((l) => displayName(l) === rel))?.display ?? rel;
    return {
      start: (rel, next) => {
        seen.set(rel, { rewritten: 0, conflicts: 0, quarantined: 0 });
        logSink.start(rel, next);
      },
      chunk: (rel, p) => {
        const before = seen.get(rel) ?? { rewritten: 0, conflicts: 0, quarantined: 0 };
        const table = tableOf(rel);
        this.metrics.rewrites.inc({ source: 'sweep', table }, p.rewritten - before.rewritten);
        this.metrics.quarantined.inc({ source: 'sweep', table }, p.quarantined - before.quarantined);
        this.metrics.casConflicts.inc({ source: 'sweep' }, p.conflicts - before.conflicts);
        seen.set(rel, { rewritten: p.rewritten, conflicts: p.conflicts, quarantined: p.quarantined });
        this.metrics.sweepBlocksDone.set({ relation: rel }, p.nextBlock);
        this.metrics.sweepBlocksTotal.set({ relation: rel }, p.startBlocks ?? p.totalBlocks);
        if (p.chunkBlocks !== undefined) this.metrics.sweepChunkBlocks.set({ relation: rel }, p.chunkBlocks);
        if (p.rowsPerSec !== undefined) this.metrics.sweepRowsPerSecond.set({ relation: rel }, p.rowsPerSec);
        logSink.chunk(rel, p);
      },
      finish: (rel, p) => logSink.finish(rel, p),
    };
  }

  /** Makes sure the slot exists and is usable; otherwise recreates it and restarts the sweep (rule 6). */
  private ensureSlot(reason: string): Promise<void> {
    const run = async () => {
      const { pool, config } = this.ctx;
      const slot = config.replication.slot;
      const info = await readSlot(pool, slot);
      // A different cluster, or a promotion the slot did or did not survive (server-identity.ts).
      const { problem, survived } = await assessSlotServer(pool, slot, info, slotUnusable(info), this.serverVersionNum);
      if (survived) {
        this.metrics.slotFailovers.inc({ outcome: 'continued' });
        this.invalidate(); // a verdict of the old primary is not one of this server's: check again
        this.log.warn(
          { slot, fromTimeline: survived.from, toTimeline: survived.to, confirmedFlushLsn: info.confirmedFlushLsn, trigger: reason },
          `FAILOVER: the server is a promoted standby (timeline ${survived.from} -> ${survived.to}) and replication slot ${slot} survived it (a synced failover slot, or one an HA manager carried): continuing from it, no re-sweep; the stream replays from the slot's position`,
        );
      }
      if (!problem) return;
      if (problem.startsWith('failover:')) this.metrics.slotFailovers.inc({ outcome: 'recreated' });
      this.log.error({ slot, problem, trigger: reason }, 'REPLICATION SLOT LOST OR MISSING, OR NOT TRUSTED ON THIS SERVER: changes may have been missed; recreating the slot and re-sweeping every table from block 0');
      if (info.exists) await dropSlot(pool, slot, problem);
      const lsn = await createSlot(pool, slot, 'recreated', problem, { onWait: logSlotWait(this.log, slot) });
      this.metrics.slotRecreations.inc();
      this.sweepDone = false;
      this.invalidate();
      this.sweepStale = true;
      this.sweepAbort.abort();
      this.sweepWake?.();
      this.log.warn({ slot, lsn }, 'replication slot recreated');
    };
    const p = this.slotMutex.then(run);
    this.slotMutex = p.catch(() => undefined);
    return p;
  }

  private async watchSlot(): Promise<void> {
    const info = await readSlot(this.ctx.pool, this.ctx.config.replication.slot);
    if (info.lagBytes !== null) this.metrics.streamLagBytes.set(info.lagBytes);
    else this.metrics.streamLagBytes.forget();
    this.noteRetainedWal(info);
    if (slotUnusable(info)) await this.ensureSlot('periodic slot check');
    if (info.activePid) await this.refuseSynchronousRole(info.activePid);
    await this.writeState();
  }

  /**
   * synchronous_standby_names = '*' (or a list naming pg-rekey-stream) makes pg-rekey's logical
   * walsender a synchronous standby: an application's COMMIT then waits for pg-rekey to confirm
   * it, while pg-rekey waits for that commit to become visible before rewriting (the visibility
   * rule) and confirms nothing before the rewrite: every commit on the primary would hang. Stop,
   * and say what to change.
   */
  private async refuseSynchronousRole(pid: number): Promise<void> {
    const r = await this.ctx.pool.query<{ s: string | null }>(`select sync_state as s from pg_stat_replication where pid = $1`, [pid]);
    const state = r.rows[0]?.s;
    if (state !== 'sync' && state !== 'quorum') return;
    this.log.fatal(
      { syncState: state, walsenderPid: pid, hint: "name the physical standbys in synchronous_standby_names (e.g. 'FIRST 1 (standby1)') instead of '*', then start pg-rekey run again" },
      `pg-rekey's replication connection was chosen as a synchronous standby (sync_state ${state}): application commits would wait for pg-rekey, which waits for them; stopping`,
    );
    this.stop(EXIT_USAGE);
  }

  /** Metrics of the WAL the slot holds back; one warning per crossing of replication.max_retained_wal. */
  private noteRetainedWal(info: SlotInfo): void {
    const max = this.ctx.config.replication.maxRetainedWalBytes;
    const high = retainedWalExceeded(info, max);
    // A slot that is missing (or has no restart_lsn) retains nothing we can measure: no sample, not 0.
    if (info.retainedBytes !== null) {
      this.metrics.slotRetainedWalBytes.set(info.retainedBytes);
      this.metrics.slotRetainedWalExceeded.set(high ? 1 : 0);
    } else {
      this.metrics.slotRetainedWalBytes.forget();
      this.metrics.slotRetainedWalExceeded.forget();
    }
    const fields = { slot: this.ctx.config.replication.slot, retainedBytes: info.retainedBytes, maxRetainedWalBytes: max, streamConnected: this.stream.connected };
    if (high && !this.retainedWalHigh) {
      this.log.warn(
        fields,
        `the replication slot retains ${formatBytes(info.retainedBytes)} of WAL, above replication.max_retained_wal (${formatBytes(max)}): the server keeps that WAL on disk until the stream confirms past it; ` +
          'check that the stream is connected and keeping up (`pg-rekey status`), and the disk space of pg_wal',
      );
    } else if (!high && this.retainedWalHigh) {
      this.log.info(fields, `WAL retained by the replication slot is back under replication.max_retained_wal (${formatBytes(max)})`);
    }
    this.retainedWalHigh = high;
  }

  /** A change arrived for a relation we do not know: maybe a partition was attached. */
  private async refreshTables(schema: string, name: string): Promise<boolean> {
    const id = displayName({ schema, name });
    if (Date.now() - (this.refreshedAt.get(id) ?? 0) < 10_000) return false;
    await this.refreshCatalog(`change for unknown relation ${id}`);
    this.refreshedAt.set(id, Date.now());
    return this.relations.get(schema, name) !== undefined;
  }

  /**
   * Follows DDL on the configured tables (see CatalogWatch): a dropped table is
   * left out; a new partition is streamed and swept; a rewritten relation is
   * swept again from block 0, since its rows moved, maybe behind the sweep's
   * checkpoint; anything else (a configured column or the key gone, a table
   * created again, an UPDATE trigger without a `triggers:` decision) stops run
   * with the problem. True when something changed.
   */
  private refreshCatalog(trigger: string): Promise<boolean> {
    const run = async (): Promise<boolean> => {
      if (this.stopping) return false;
      const c = await this.catalog.check();
      if (c.hidden.length) {
        // Exit 2 as at the start: a grant (or the connection) fixes it, and nothing was claimed meanwhile.
        this.log.fatal(
          { problems: c.hidden, trigger, hint: 'grant what each problem says (or run as a role that sees every row), then start `pg-rekey run` again; the slot keeps the changes made meanwhile' },
          `row security now hides rows of a configured table from this role: a count of 0 would prove nothing, so run stops (exit 2): ${c.hidden.join('; ')}`,
        );
        this.stop(EXIT_USAGE);
        return false;
      }
      if (c.problems.length) {
        this.log.fatal(
          { problems: c.problems, trigger, hint: 'fix the table or the `tables:` section of the config, run `pg-rekey setup`, then start `pg-rekey run` again' },
          `a configured table changed in a way run cannot follow; stopping: ${c.problems.join('; ')}`,
        );
        this.stop(EXIT_RUNTIME);
        return false;
      }
      if (!c.changed) return false;
      const relations = await RelationMap.build(this.ctx.pool, c.tables);
      for (const l of [...c.added, ...c.rewritten]) await ensureSegment(this.ctx.pool, l.table, l.relation);
      // Unlogged leaves too (not swept, but counted): one that leaves later is listed outside the configured tables.
      await rememberLeaves(this.ctx.pool, c.full);
      this.catalog.accept(c);
      this.tables = c.tables;
      this.relations = relations;
      for (const table of c.dropped) {
        this.log.error({ table, trigger }, `configured table ${table} no longer exists (dropped): it is no longer streamed, swept or counted; remove it from \`tables:\` in the config before the next start`);
      }
      for (const l of c.removed) {
        const held = l.oldValues ? `it holds ${l.oldValues} old-version value(s), which nothing rotates now: \`pg-rekey verify\` lists it outside the configured tables (and run does not converge) until you add it to \`tables:\` or \`ignore:\`` : l.oldValues === 0 ? 'it holds no old-version value' : '';
        this.log[l.oldValues ? 'warn' : 'info']({ ...l, trigger }, `${l.relation} is no longer a leaf of ${l.table} (${l.why ?? 'detached or dropped'}): no longer streamed or swept${held ? `; ${held}` : ''}`);
      }
      for (const l of c.added) this.log.info({ ...l, trigger }, `new leaf ${l.relation} of ${l.table} (${l.why ?? 'partition attached or created'}): now streamed, and swept from block 0`);
      for (const l of c.rewritten) {
        this.log.warn({ ...l, trigger }, `${l.relation} was rewritten (ALTER TABLE ... TYPE, VACUUM FULL, CLUSTER, TRUNCATE): its rows moved without an UPDATE the stream could see; sweeping it again from block 0`);
      }
      if (c.added.length && this.serverVersionNum < 150000) void this.refreshWalsender(c.added.map((l) => l.relation));
      [...c.added, ...c.rewritten].forEach((l) => this.resweep.add(l.relation));
      this.sweepDone = false;
      this.invalidate(); // checked again once the sweep pass over the new set of relations is complete
      this.sweepAgain = true;
      // Chunks of a rewritten relation are wasted, and a detached or unlogged one is no longer ours: start the pass over now.
      if (c.rewritten.length || c.removed.length || c.unlogged.length) this.sweepAbort.abort();
      this.sweepWake?.();
      return true;
    };
    const p = this.catalogMutex.then(run);
    this.catalogMutex = p.catch(() => undefined);
    return p;
  }

  /**
   * PostgreSQL 14 and older: a walsender that decoded changes of a table before
   * it was attached as a partition keeps it as "not published" (pgoutput's
   * relation cache ignores the attach) and skips its later changes for as long
   * as it lives. Once the stream has acknowledged past the attach, end our
   * walsender: the next one starts after every change from before the attach,
   * with a fresh cache. The new partitions are swept again after that, so what
   * the old walsender skipped is swept.
   */
  private async refreshWalsender(relations: string[]): Promise<void> {
    const { pool, config } = this.ctx;
    const slot = config.replication.slot;
    try {
      const past = parseLsn((await pool.query<{ l: string }>(`select pg_current_wal_flush_lsn()::text as l`)).rows[0]!.l);
      this.log.info({ relations }, 'PostgreSQL < 15: restarting the replication connection once the stream is past the attach, so that the new partition is published to it');
      for (;;) {
        if (this.stopping) return;
        this.stream.ping();
        const s = await readSlot(pool, slot);
        if (this.stream.appliedLsn >= past && s.confirmedFlushLsn && parseLsn(s.confirmedFlushLsn) >= past) break;
        await sleep(200);
      }
      await pool.query(`select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1 and active_pid is not null`, [slot]);
      relations.forEach((r) => this.resweep.add(r));
      this.sweepDone = false;
      this.invalidate();
      this.sweepAgain = true;
      this.sweepWake?.();
    } catch (e) {
      this.log.error({ err: e, relations }, 'could not restart the replication connection for a new partition: its writes may not be streamed; restart `pg-rekey run` (and if `pg-rekey verify` does not converge, `pg-rekey backfill --restart`)');
    }
  }

  /** A check is running: a timer tick meanwhile does not start a second one. */
  private checking = false;
  /**
   * Bumped whenever what a check relies on is reset (slot recreated, tables changed, a re-sweep):
   * a check that was running meanwhile (its count and waits take seconds) is discarded, not believed.
   */
  private invalidations = 0;

  /**
   * What a check relied on was reset: the last verdict no longer holds, in the daemon and in what it
   * exports (pg_rekey_converged 0, the remaining count absent until the next check), so a dashboard
   * or an alert never shows "converged" through a re-sweep.
   */
  private invalidate(): void {
    this.invalidations++;
    this.convergedAt = null;
    this.metrics.converged.set(0);
    this.metrics.remaining.forget();
  }
  /** Old-version values seen at the last check with the sweep done and the stream caught up. */
  private readonly suspects = new StuckValues();

  private async checkNow(): Promise<void> {
    if (this.stopping || !this.sweepDone || this.sweepStale || this.checking) return;
    this.checking = true;
    try {
      await this.check();
    } finally {
      this.checking = false;
    }
  }

  private async check(): Promise<void> {
    const generation = this.invalidations;
    const tables = this.tables;
    // Server clock, before the count: every commit before it is decoded once the check says the stream caught up.
    const checkStarted = (await this.ctx.pool.query<{ now: Date }>(`select clock_timestamp() as now`)).rows[0]!.now;
    const waitMs = Math.max(1_000, Math.min(20_000, this.ctx.config.daemon.checkIntervalMs));
    const c = await checkConvergence(this.ctx.pool, tables, this.ring.target, this.stream, {
      transactionsMs: waitMs,
      streamMs: 10_000,
      signal: this.sweepAbort.signal,
      publication: this.ctx.config.replication.publication,
      ignore: this.ctx.config.ignore,
    });
    if (this.stopping || this.sweepStale || !this.sweepDone || generation !== this.invalidations) return;
    this.lastCheck = c;
    this.lastCheckAt = new Date();
    const unlogged = new Set(tables.flatMap((t) => t.unlogged.map(displayName)));
    // A check that stopped before its count (the stream not caught up) counted no relation: none shows "0 remaining".
    const counted = c.remaining === null ? [] : tables.flatMap((t) => t.leaves.map(displayName)).filter((l) => !unlogged.has(l));
    this.checks.record(c, this.lastCheckAt, counted);
    if (c.pruned > 0) this.log.info({ pruned: c.pruned, quarantined: c.quarantined }, 'dropped quarantine entries whose values the application has since overwritten or deleted');
    if (c.remaining !== null) this.metrics.remaining.set(c.remaining);
    this.metrics.converged.set(c.converged ? 1 : 0);
    this.metrics.openTransactions.set(c.openTransactions.length);
    this.metrics.lastCheck.set(this.lastCheckAt.getTime() / 1000);
    const wasConverged = this.convergedAt !== null;
    if (c.converged !== wasConverged) {
      await recordEvent(this.ctx.pool, c.converged ? 'converged' : 'unconverged', { remaining: c.remaining, quarantined: c.quarantined }).catch((e) => this.log.warn({ err: e }, 'could not record the convergence event'));
    }
    if (c.converged && !wasConverged) {
      this.convergedAt = new Date();
      this.log.info({ remaining: 0, quarantined: c.quarantined }, 'CONVERGED: every table swept since the slot was created, no value of an old version remains, no transaction open at the count is left, the stream is caught up past them');
    } else if (!c.converged && wasConverged) {
      this.convergedAt = null;
      this.log.warn({ remaining: c.remaining, openTransactions: c.openTransactions.length }, 'no longer converged: old-version values appeared (a stale writer?) or transactions are open that may commit some; the stream is rewriting them');
    } else if (!c.converged) {
      this.log.info({ sweepDone: c.sweepDone, streamCaughtUp: c.streamCaughtUp, remaining: c.remaining, quarantined: c.quarantined, openTransactions: c.openTransactions.length, blockers: c.blockers }, 'not converged yet');
    }
    if (c.openTransactions.length) {
      this.log.warn(
        { openTransactions: c.openTransactions.slice(0, 20) },
        `not converged while ${c.openTransactions.length} transaction(s) that were open at the count are still open (prepared ones included): ` +
          'their writes are invisible to the count and not yet streamed; waiting for them to commit or roll back (COMMIT PREPARED / ROLLBACK PREPARED for a prepared one)',
      );
    }
    await this.resweepStuck(c);
    await this.updateQuiet(checkStarted);
    await this.writeState();
    if (!this.opts.exitWhenConverged) return;
    if (c.converged && this.quiet.quietMs >= this.opts.quietPeriodMs) {
      if (this.opts.quietPeriodMs > 0) {
        this.log.info(
          { quietSince: this.quiet.since, quietFor: formatDuration(this.quiet.quietMs / 1000), quietPeriod: formatDuration(this.opts.quietPeriodMs / 1000) },
          `CONVERGED AND QUIET: no old-version write for ${formatDuration(this.quiet.quietMs / 1000)} (--quiet-period ${formatDuration(this.opts.quietPeriodMs / 1000)}); exiting`,
        );
      }
      return this.stop(EXIT_OK);
    }
    if (c.converged) await this.logQuietWait();
    if (c.stuckOnQuarantine) {
      const q = await summarizeQuarantine(this.ctx.pool);
      this.log.error({ remaining: c.remaining, quarantine: q }, 'sweep complete but quarantined values remain; they need an operator (see pgrekey.quarantine)');
      this.stop(EXIT_NOT_CONVERGED);
    }
  }

  /**
   * The rollout gate: how long since the last old-version write an application made (its commit
   * time; the slot's creation if later, since nothing before it was decoded), measured at the
   * start of this check, when the stream has decoded every commit before it.
   */
  private async updateQuiet(checkStarted: Date): Promise<void> {
    const q = await quietSince(this.ctx.pool, this.ctx.config.replication.slot);
    const seen = this.writer.sightings.newestCommitMs; // decoded, maybe not recorded yet
    const since = Math.max(q.since?.getTime() ?? this.startedAtMs, seen);
    this.quiet = { since: new Date(since), quietMs: Math.max(0, checkStarted.getTime() - since) };
    this.metrics.quietSeconds.set(this.quiet.quietMs / 1000);
  }

  /** Converged, not yet quiet for --quiet-period: say what run waits for (again when a write restarts it). */
  private async logQuietWait(): Promise<void> {
    const since = this.quiet.since!.getTime();
    if (this.quietLogged === since) return;
    const first = this.quietLogged === null;
    this.quietLogged = since;
    const last = (await readOldVersionWrites(this.ctx.pool))[0];
    const period = formatDuration(this.opts.quietPeriodMs / 1000);
    const what = last && last.lastAt.getTime() >= since - 1 ? `the last ${versionLabel(last.version)} write (${last.table}.${last.column}) committed at ${last.lastAt.toISOString()}` : 'no old-version write since the slot was created';
    this.log.info(
      { quietSince: new Date(since), quietFor: formatDuration(this.quiet.quietMs / 1000), quietPeriod: period, exitsAt: new Date(since + this.opts.quietPeriodMs) },
      first
        ? `converged; waiting for --quiet-period ${period} without old-version writes before exiting (${what}); a new one restarts the wait`
        : `an old-version write restarted the quiet period (${what}): an application instance still writes an old key; waiting for ${period} without one`,
    );
  }

  /**
   * The sweep is complete and the stream caught up, yet old-version values remain that are not
   * quarantined: something placed them where neither saw them (a row moved behind the sweep's
   * checkpoint by an UPDATE of another column, a change the stream was not decoding for that
   * relation). A leaf where the same value sits in the same row version at two checks in a row is
   * swept again from block 0 (stuck-values.ts: a stale writer's values, which the stream
   * rewrites meanwhile, do not cause re-sweeps).
   */
  private async resweepStuck(c: ConvergenceCheck): Promise<void> {
    if (!c.streamCaughtUp || c.remaining === null || c.remaining <= c.quarantined) {
      this.suspects.clear();
      return;
    }
    const now = new Map<string, Set<string>>();
    for (const leaf of Object.keys(c.remainingByLeaf)) {
      const table = this.tables.find((t) => t.leaves.some((l) => displayName(l) === leaf));
      if (table) now.set(leaf, await oldValueIdentities(this.ctx.pool, table, leaf, this.ring.target));
    }
    const again = this.suspects.observe(now);
    if (again.length === 0) return;
    for (const leaf of again) {
      const n = c.remainingByLeaf[leaf];
      this.log.warn(
        { relation: leaf, remaining: n, quarantined: c.quarantined },
        `RE-SWEEP: ${leaf} still holds ${n} old-version value(s), the same ones as at the last check, with the sweep complete and the stream caught up; sweeping it again from block 0`,
      );
      this.metrics.resweeps.inc({ reason: 'old values after complete sweep' });
      this.resweep.add(leaf);
      this.suspects.forget(leaf);
    }
    this.sweepDone = false;
    this.invalidate();
    this.sweepAgain = true;
    this.sweepWake?.();
  }

  /**
   * The status row (pgrekey.daemon), written only while the lease is held and
   * only over a row that still names this lease's holder (host, pid, start
   * time recorded when the lease was taken): a daemon that lost its lease
   * cannot overwrite a successor's row, even before it notices the loss.
   */
  private async writeState(stopped = false): Promise<void> {
    const lease = this.opts.lease;
    if (!lease.held) return;
    const c = this.lastCheck;
    const stream = this.stream as ReplicationStream | undefined; // undefined when startup did not get that far
    const rewrites = stream?.rewrites ?? 0;
    const now = Date.now();
    if (now - this.rateSample.at >= 1000) {
      const perSec = ((rewrites - this.rateSample.rewrites) * 1000) / (now - this.rateSample.at);
      this.rateSample = { at: now, rewrites, perSec };
    }
    const r = await this.ctx.pool.query(
      `insert into pgrekey.daemon as d (slot_name, host, pid, started_at, heartbeat_at, applied_lsn, stream_connected, sweep_done, remaining, quarantined, last_check_at, converged_at, stream_rewrites, stream_rewrites_per_sec, stopped_at, quiet_period_s, quiet_since)
       values ($1, $2, $3, $14::timestamptz, now(), $4::pg_lsn, $5, $6, $7, $8, $9, $10, $11, $12, case when $13 then now() end, $15, $16)
       on conflict (slot_name) do update set
         heartbeat_at = now(), applied_lsn = excluded.applied_lsn, stream_connected = excluded.stream_connected,
         sweep_done = excluded.sweep_done, remaining = excluded.remaining, quarantined = excluded.quarantined,
         last_check_at = excluded.last_check_at, converged_at = excluded.converged_at,
         stream_rewrites = excluded.stream_rewrites, stream_rewrites_per_sec = excluded.stream_rewrites_per_sec,
         stopped_at = excluded.stopped_at, quiet_period_s = excluded.quiet_period_s, quiet_since = excluded.quiet_since
       where d.host = excluded.host and d.pid = excluded.pid and d.started_at = excluded.started_at`,
      [
        this.ctx.config.replication.slot,
        lease.token.host,
        lease.token.pid,
        stream && stream.appliedLsn > 0n ? formatLsn(stream.appliedLsn) : null,
        (stream?.connected ?? false) && !this.stopping,
        this.sweepDone,
        c?.remaining ?? null,
        c?.quarantined ?? null,
        this.lastCheckAt,
        this.convergedAt,
        rewrites,
        this.rateSample.perSec,
        stopped,
        lease.token.startedAt,
        this.opts.exitWhenConverged ? this.opts.quietPeriodMs / 1000 : null,
        this.quiet.since,
      ],
    );
    if (r.rowCount === 0) lease.lose(new Error('the status row in pgrekey.daemon names another daemon: another pg-rekey run holds the slot now'));
  }
}

/** SQLSTATEs of a write to a relation or column that no longer exists. */
const UNDEFINED_RELATION_OR_COLUMN = new Set(['42P01', '42703']);

/**
 * The stream's writer; a flush that fails because a configured table or column
 * is gone re-reads the catalog before the error ends the session, so the replay
 * after the reconnect leaves the dropped table out instead of failing again.
 */
class CatalogFollowingWriter extends StreamWriter {
  constructor(
    pool: ConstructorParameters<typeof StreamWriter>[0],
    ring: KeyRing,
    limits: BatchLimits,
    private readonly onMissing: () => Promise<unknown>,
  ) {
    super(pool, ring, limits);
  }

  override async flush(): Promise<FlushResult> {
    try {
      return await super.flush();
    } catch (e) {
      if (UNDEFINED_RELATION_OR_COLUMN.has((e as { code?: string }).code ?? '')) await this.onMissing().catch(() => undefined);
      throw e;
    }
  }
}
