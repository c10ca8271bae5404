import type { Context } from '../context.js';
import type { KeyRing } from '../crypto/key-ring.js';
import type { TableInfo } from '../db/catalog.js';
import { displayName } from '../db/ident.js';
import { EXIT_RUNTIME, RuntimeFailure } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { LogProgress, type ProgressSink } from '../backfill/progress.js';
import { sweepAll } from '../backfill/worker-pool.js';
import type { RewriteOrigins } from '../replication/origin.js';
import { restartSegments } from '../state/segments.js';
import { LiveSettings, withMode } from '../throttle/live-settings.js';
import { Throttle } from '../throttle/throttle.js';
import { autoPacer, type AutoPacer } from '../throttle/pacer.js';
import { sleep } from '../timing.js';

/** What the sweep needs from the rest of the daemon (given by the supervisor). */
export interface SweepRunnerDeps {
  /** The daemon is stopping: no new pass. */
  stopping(): boolean;
  /** The configured tables as of now (the catalog refresh replaces them). */
  tables(): TableInfo[];
  /** A pass over every configured table completed: check convergence now. */
  onComplete(): void;
  /** A pass failed: follow the catalog; true when the configured tables changed. */
  refreshCatalog(trigger: string): Promise<boolean>;
  /** The stream must not take the sweep's own rewrites for an application's old-version writes. */
  noteOwnTransaction(xid: number): void;
  /** replication.origin of the sweep's rewrites, as resolved at startup. */
  origin(): RewriteOrigins['sweep'];
  stop(code: number): void;
}

/**
 * The sweep of `run`: passes over every configured table (worker-pool.ts), one
 * after the other, waiting between them until something calls for another:
 * a recreated slot (every relation from block 0), new or rewritten relations,
 * values found stuck after a complete pass. Owns the sweep's flags; the
 * others change them only through restartAll() and again().
 */
export class SweepRunner {
  private abort = new AbortController();
  /** The slot was recreated: every relation from block 0 at the next pass. */
  private stale = false;
  private wake: (() => void) | null = null;
  private complete = false;
  /** Relations to sweep again from block 0 (new partitions, rewritten tables). */
  private readonly resweep = new Set<string>();
  /** The tables changed during a sweep pass: run another pass before calling it complete. */
  private again = false;
  /** Values the sweep opened, by version (the run history records them: state/runs.ts keyOpenedBefore). */
  readonly opened = new Map<number, number>();
  private running: Promise<void> = Promise.resolve();

  constructor(
    private readonly ctx: Context,
    private readonly ring: KeyRing,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly deps: SweepRunnerDeps,
    private readonly fast: boolean,
  ) {}

  /** Every configured table was swept since the slot was created, and nothing called for another pass since. */
  get done(): boolean {
    return this.complete;
  }

  /** The slot was recreated and the pass that restarts every relation has not begun yet. */
  get restarting(): boolean {
    return this.stale;
  }

  /** Aborted when the pass in flight is abandoned (a recreated slot, a rewritten relation, the shutdown). */
  get signal(): AbortSignal {
    return this.abort.signal;
  }

  /** The loop of passes; `finished` resolves when it ends (after stop()). */
  start(): void {
    this.running = this.loop();
  }

  /** The pass in flight: its chunk and checkpoint (resolved when the sweep never started). */
  get finished(): Promise<void> {
    return this.running;
  }

  /** Abandons the pass in flight (the chunk in flight finishes, with its checkpoint) and ends the loop. */
  stop(): void {
    this.abort.abort();
    this.wake?.();
  }

  /** The slot was recreated: sweep every relation again from block 0, starting now. */
  restartAll(): void {
    this.complete = false;
    this.stale = true;
    this.abort.abort();
    this.wake?.();
  }

  /** Sweep these relations again from block 0 and run another pass; `abandon` starts it now. */
  sweepAgain(relations: Iterable<string>, abandon = false): void {
    for (const r of relations) this.resweep.add(r);
    this.complete = false;
    this.again = true;
    if (abandon) this.abort.abort();
    this.wake?.();
  }

  private async loop(): Promise<void> {
    const { pool, config } = this.ctx;
    const live = new LiveSettings(pool, withMode(config, this.fast ? 'fast' : undefined), this.ctx.log);
    const throttle = new Throttle(pool, live, this.ctx.log, this.metrics);
    const pacer = autoPacer(this.ctx, live, this.metrics);
    try {
      await this.passes(live, throttle, pacer);
    } finally {
      await pacer.stop();
    }
  }

  private async passes(live: LiveSettings, throttle: Throttle, pacer: AutoPacer): Promise<void> {
    const { pool, config } = this.ctx;
    const progress = this.progress();
    while (!this.deps.stopping()) {
      if (this.stale) {
        this.stale = false;
        await restartSegments(pool, this.deps.tables().flatMap((t) => t.leaves.map(displayName)));
        this.log.warn('sweep restarted from block 0 (new replication slot)');
      }
      this.abort = new AbortController();
      this.again = false;
      try {
        if (this.resweep.size) {
          const relations = [...this.resweep];
          await restartSegments(pool, relations);
          relations.forEach((r) => this.resweep.delete(r));
        }
        // Rewrites, conflicts and quarantined values are counted per chunk by the progress sink.
        await sweepAll(pool, this.deps.tables(), {
          workers: config.sweep.workers,
          leaseMs: config.sweep.rangeLeaseMs,
          role: 'run',
          settings: live.current.sweep,
          live,
          throttle,
          pacer,
          ring: this.ring,
          signal: this.abort.signal,
          progress,
          log: this.ctx.log,
          onWriteXid: (xid) => this.deps.noteOwnTransaction(xid),
          origin: this.deps.origin(),
          opened: this.opened,
        });
        await throttle.clear();
        await pacer.stop(); // no probing while no pass runs (the next pass starts it again)
      } catch (e) {
        if (this.deps.stopping()) break;
        if (e instanceof RuntimeFailure) {
          this.log.fatal({ err: e, hint: e.hint }, 'sweep cannot continue');
          return this.deps.stop(EXIT_RUNTIME);
        }
        // A table dropped or rewritten under the sweep: follow the catalog and go on at once.
        if (await this.deps.refreshCatalog('sweep failed').catch(() => false)) {
          this.log.info({ err: e }, 'sweep interrupted by a change of the configured tables; going on');
          continue;
        }
        this.log.warn({ err: e }, 'sweep failed; retrying in 5s');
        await sleep(5_000, this.abort.signal);
        continue;
      }
      if (this.deps.stopping() || this.abort.signal.aborted || this.again) continue;
      if (!this.complete) this.log.info('sweep complete for every configured table');
      this.complete = true;
      this.deps.onComplete();
      await new Promise<void>((r) => (this.wake = r));
      this.wake = null;
    }
  }

  private progress(): ProgressSink {
    const logSink = new LogProgress(this.ctx.log, this.ctx.config.sweep.progressIntervalMs);
    // Counters move per chunk (a sweep pass can take hours): add what each chunk added.
    const seen = new Map<string, { rewritten: number; conflicts: number; quarantined: number }>();
    const tableOf = (rel: string) => this.deps.tables().find((t) => t.leaves.some((l) => displayName(l) === rel))?.display ?? rel;
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
}
