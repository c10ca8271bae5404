import { hostname } from 'node:os';
import type { Context } from '../context.js';
import type { KeyRing } from '../crypto/key-ring.js';
import type { TableInfo } from '../db/catalog.js';
import { displayName } from '../db/ident.js';
import { EXIT_NOT_CONVERGED, EXIT_OK, EXIT_RUNTIME, RuntimeFailure } from '../errors.js';
import { Metrics } from '../metrics.js';
import { LogProgress, type ProgressSink } from '../backfill/progress.js';
import { sweepTables } from '../backfill/sweep.js';
import { sleep } from '../timing.js';
import { ensureSegment, restartSegments } from '../state/segments.js';
import { summarizeQuarantine } from '../state/quarantine.js';
import { formatLsn, parseLsn } from '../replication/lsn.js';
import { RelationMap } from '../replication/relation-map.js';
import { createSlot, dropSlot, formatBytes, logSlotWait, readSlot, retainedWalExceeded, slotUnusable, type SlotInfo } from '../replication/slot.js';
import { ReplicationStream } from '../replication/stream.js';
import { StreamWriter, type BatchLimits, type FlushResult } from '../replication/stream-writer.js';
import { CatalogWatch } from './catalog-watch.js';
import { checkConvergence, type ConvergenceCheck } from './convergence.js';
import { LiveSettings } from '../throttle/live-settings.js';
import { Throttle } from '../throttle/throttle.js';
import { startHttp } from './http.js';

export interface DaemonOptions {
  exitWhenConverged: boolean;
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
  private lastCheckAt: Date | null = null;
  private rateSample = { at: Date.now(), rewrites: 0, perSec: 0 };
  private retainedWalHigh = false;

  constructor(
    private readonly ctx: Context,
    private readonly ring: KeyRing,
    private tables: TableInfo[],
    private readonly opts: DaemonOptions,
  ) {
    this.log = ctx.log.child({ component: 'daemon' });
  }

  async run(): Promise<number> {
    const { config, pool } = this.ctx;
    this.relations = await RelationMap.build(pool, this.tables);
    this.catalog = new CatalogWatch(pool, config.tables, this.tables);
    await this.catalog.init();
    this.serverVersionNum = Number((await pool.query<{ v: string }>(`select current_setting('server_version_num') as v`)).rows[0]!.v);
    await this.ensureSlot('startup check');
    const writer = new CatalogFollowingWriter(pool, this.ring, { maxRows: config.daemon.streamBatchRows, maxBytes: 32 * 1024 * 1024, maxDelayMs: config.daemon.streamBatchDelayMs, lockTimeoutMs: config.sweep.lockTimeoutMs }, () =>
      this.refreshCatalog('stream write failed'),
    );
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
      onUnknownRelation: (schema, name) => this.refreshTables(schema, name),
    });
    const http = await startHttp(config.daemon.httpHost, config.daemon.httpPort, this.metrics, {
      ready: () => (this.stream.connected ? { ok: true, reason: 'streaming' } : { ok: false, reason: 'replication stream not connected' }),
    });
    this.log.info(
      { http: `http://${config.daemon.httpHost}:${http.port}`, slot: config.replication.slot, tables: this.tables.map((t) => t.display), exitWhenConverged: this.opts.exitWhenConverged },
      'pg-rekey run started: /healthz /readyz /metrics',
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
    const code = await this.finished;
    this.stopping = true;
    timers.forEach(clearInterval);
    this.sweepAbort.abort();
    this.sweepWake?.();
    // Drain both at once: the chunk in flight, and the stream's batch (flush, acknowledge).
    await Promise.all([sweeping, this.stream.stop()]);
    await Promise.allSettled([...this.inFlight]); // checks started by a timer use the pool too
    await this.writeState(true).catch(() => undefined);
    await new Promise((r) => http.server.close(r));
    this.log.info({ code, applied: formatLsn(this.stream.appliedLsn) }, 'stopped');
    return code;
  }

  private readonly inFlight = new Set<Promise<unknown>>();

  /** Keeps a background task known, so shutdown waits for it before closing the pool. */
  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p)).catch(() => undefined);
    return p;
  }

  /** True when the last convergence check passed. */
  get converged(): boolean {
    return this.convergedAt !== null;
  }

  /** First signal: drain and exit 0. */
  stop(code = EXIT_OK): void {
    this.finish(code);
  }

  private async sweepLoop(): Promise<void> {
    const { pool, config } = this.ctx;
    const progress = this.sweepProgress();
    const live = new LiveSettings(pool, config, this.ctx.log);
    const throttle = new Throttle(pool, live, this.ctx.log, this.metrics);
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
        await sweepTables(pool, this.tables, { settings: config.sweep, live, throttle, ring: this.ring, signal: this.sweepAbort.signal, progress, log: this.ctx.log });
        await throttle.clear();
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
        this.metrics.sweepBlocksTotal.set({ relation: rel }, p.totalBlocks);
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
      const problem = slotUnusable(info);
      if (!problem) return;
      this.log.error({ slot, problem, trigger: reason }, 'REPLICATION SLOT LOST OR MISSING: changes may have been missed; recreating the slot and re-sweeping every table from block 0');
      if (info.exists) await dropSlot(pool, slot, problem);
      const lsn = await createSlot(pool, slot, 'recreated', problem, { onWait: logSlotWait(this.log, slot) });
      this.metrics.slotRecreations.inc();
      this.sweepDone = false;
      this.convergedAt = null;
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
    this.noteRetainedWal(info);
    if (slotUnusable(info)) await this.ensureSlot('periodic slot check');
    await this.writeState();
  }

  /** Metrics of the WAL the slot holds back; one warning per crossing of replication.max_retained_wal. */
  private noteRetainedWal(info: SlotInfo): void {
    const max = this.ctx.config.replication.maxRetainedWalBytes;
    this.metrics.slotRetainedWalMaxBytes.set(max);
    if (info.retainedBytes !== null) this.metrics.slotRetainedWalBytes.set(info.retainedBytes);
    const high = retainedWalExceeded(info, max);
    this.metrics.slotRetainedWalExceeded.set(high ? 1 : 0);
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
   * created again) stops run with the problem. True when something changed.
   */
  private refreshCatalog(trigger: string): Promise<boolean> {
    const run = async (): Promise<boolean> => {
      if (this.stopping) return false;
      const c = await this.catalog.check();
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
      this.catalog.accept(c);
      this.tables = c.tables;
      this.relations = relations;
      for (const table of c.dropped) {
        this.log.error({ table, trigger }, `configured table ${table} no longer exists (dropped): it is no longer streamed, swept or counted; remove it from \`tables:\` in the config before the next start`);
      }
      for (const l of c.removed) this.log.info({ ...l, trigger }, `${l.relation} is no longer a partition of ${l.table} (detached or dropped): no longer streamed or swept`);
      for (const l of c.added) this.log.info({ ...l, trigger }, `new partition ${l.relation} of ${l.table} (attached or created): now streamed, and swept from block 0`);
      for (const l of c.rewritten) {
        this.log.warn({ ...l, trigger }, `${l.relation} was rewritten (ALTER TABLE ... TYPE, VACUUM FULL, CLUSTER, TRUNCATE): its rows moved without an UPDATE the stream could see; sweeping it again from block 0`);
      }
      if (c.added.length && this.serverVersionNum < 150000) void this.refreshWalsender(c.added.map((l) => l.relation));
      [...c.added, ...c.rewritten].forEach((l) => this.resweep.add(l.relation));
      this.sweepDone = false;
      this.sweepAgain = true;
      this.convergedAt = null; // checked again once the sweep pass over the new set of relations is complete
      if (c.rewritten.length) this.sweepAbort.abort(); // its chunks after the rewrite are wasted: start over now
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
      this.sweepAgain = true;
      this.convergedAt = null;
      this.sweepWake?.();
    } catch (e) {
      this.log.error({ err: e, relations }, 'could not restart the replication connection for a new partition: its writes may not be streamed; restart `pg-rekey run` (and if `pg-rekey verify` does not converge, `pg-rekey backfill --restart`)');
    }
  }

  /** A check is running: a timer tick meanwhile does not start a second one. */
  private checking = false;
  /** Leaves that held old-version values at the last check with the sweep done and the stream caught up. */
  private suspects = new Map<string, number>();

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
    const waitMs = Math.max(1_000, Math.min(20_000, this.ctx.config.daemon.checkIntervalMs));
    const c = await checkConvergence(this.ctx.pool, this.tables, this.ring.target, this.stream, { transactionsMs: waitMs, streamMs: 10_000, signal: this.sweepAbort.signal });
    if (this.stopping || this.sweepStale) return;
    this.lastCheck = c;
    this.lastCheckAt = new Date();
    if (c.pruned > 0) this.log.info({ pruned: c.pruned, quarantined: c.quarantined }, 'dropped quarantine entries whose values the application has since overwritten or deleted');
    if (c.remaining !== null) this.metrics.remaining.set(c.remaining);
    this.metrics.converged.set(c.converged ? 1 : 0);
    this.metrics.openTransactions.set(c.openTransactions.length);
    const wasConverged = this.convergedAt !== null;
    if (c.converged && !wasConverged) {
      this.convergedAt = new Date();
      this.log.info({ remaining: 0, quarantined: c.quarantined }, 'CONVERGED: every table swept since the slot was created, no value of an old version remains, no transaction open at the count is left, the stream is caught up past them');
    } else if (!c.converged && wasConverged) {
      this.convergedAt = null;
      this.log.warn({ remaining: c.remaining, openTransactions: c.openTransactions.length }, 'no longer converged: old-version values appeared (a stale writer?) or transactions are open that may commit some; the stream is rewriting them');
    } else if (!c.converged) {
      this.log.info({ sweepDone: c.sweepDone, streamCaughtUp: c.streamCaughtUp, remaining: c.remaining, quarantined: c.quarantined, openTransactions: c.openTransactions.length }, 'not converged yet');
    }
    if (c.openTransactions.length) {
      this.log.warn(
        { openTransactions: c.openTransactions.slice(0, 20) },
        `not converged while ${c.openTransactions.length} transaction(s) that were open at the count are still open (prepared ones included): ` +
          'their writes are invisible to the count and not yet streamed; waiting for them to commit or roll back (COMMIT PREPARED / ROLLBACK PREPARED for a prepared one)',
      );
    }
    this.resweepStuck(c);
    await this.writeState();
    if (!this.opts.exitWhenConverged) return;
    if (c.converged) return this.stop(EXIT_OK);
    if (c.stuckOnQuarantine) {
      const q = await summarizeQuarantine(this.ctx.pool);
      this.log.error({ remaining: c.remaining, quarantine: q }, 'sweep complete but quarantined values remain; they need an operator (see pgrekey.quarantine)');
      this.stop(EXIT_NOT_CONVERGED);
    }
  }

  /**
   * The sweep is complete and the stream caught up, yet old-version values remain that are not
   * quarantined: something placed them where neither saw them (a row moved behind the sweep's
   * checkpoint by an UPDATE of another column, a change the stream was not decoding for that
   * relation). A leaf that holds such values at two checks in a row is swept again from block 0
   * (at one check they may still be a stale writer's, which the stream rewrites meanwhile).
   */
  private resweepStuck(c: ConvergenceCheck): void {
    if (!c.streamCaughtUp || c.remaining === null || c.remaining <= c.quarantined) {
      this.suspects.clear();
      return;
    }
    const again = Object.entries(c.remainingByLeaf).filter(([leaf]) => this.suspects.has(leaf));
    this.suspects = new Map(Object.entries(c.remainingByLeaf));
    if (again.length === 0) return;
    for (const [leaf, n] of again) {
      this.log.warn(
        { relation: leaf, remaining: n, quarantined: c.quarantined },
        `RE-SWEEP: ${leaf} still holds ${n} old-version value(s) with the sweep complete and the stream caught up, at two checks in a row; sweeping it again from block 0`,
      );
      this.metrics.resweeps.inc({ reason: 'old values after complete sweep' });
      this.resweep.add(leaf);
      this.suspects.delete(leaf);
    }
    this.sweepDone = false;
    this.sweepAgain = true;
    this.convergedAt = null;
    this.sweepWake?.();
  }

  private async writeState(stopped = false): Promise<void> {
    const c = this.lastCheck;
    const now = Date.now();
    if (now - this.rateSample.at >= 1000) {
      const perSec = ((this.stream.rewrites - this.rateSample.rewrites) * 1000) / (now - this.rateSample.at);
      this.rateSample = { at: now, rewrites: this.stream.rewrites, perSec };
    }
    await this.ctx.pool.query(
      `insert into pgrekey.daemon as d (slot_name, host, pid, started_at, heartbeat_at, applied_lsn, stream_connected, sweep_done, remaining, quarantined, last_check_at, converged_at, stream_rewrites, stream_rewrites_per_sec, stopped_at)
       values ($1, $2, $3, now(), now(), $4::pg_lsn, $5, $6, $7, $8, $9, $10, $11, $12, case when $13 then now() end)
       on conflict (slot_name) do update set host = excluded.host, pid = excluded.pid,
         started_at = case when d.pid is distinct from excluded.pid then now() else d.started_at end,
         heartbeat_at = now(), applied_lsn = excluded.applied_lsn, stream_connected = excluded.stream_connected,
         sweep_done = excluded.sweep_done, remaining = excluded.remaining, quarantined = excluded.quarantined,
         last_check_at = excluded.last_check_at, converged_at = excluded.converged_at,
         stream_rewrites = excluded.stream_rewrites, stream_rewrites_per_sec = excluded.stream_rewrites_per_sec,
         stopped_at = excluded.stopped_at`,
      [
        this.ctx.config.replication.slot,
        hostname(),
        process.pid,
        this.stream.appliedLsn > 0n ? formatLsn(this.stream.appliedLsn) : null,
        this.stream.connected && !this.stopping,
        this.sweepDone,
        c?.remaining ?? null,
        c?.quarantined ?? null,
        this.lastCheckAt,
        this.convergedAt,
        this.stream.rewrites,
        this.rateSample.perSec,
        stopped,
      ],
    );
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
