import type { Context } from '../context.js';
import type { KeyRing } from '../crypto/key-ring.js';
import { versionLabel } from '../crypto/envelope.js';
import type { TableInfo } from '../db/catalog.js';
import { displayName } from '../db/ident.js';
import { EXIT_NOT_CONVERGED, EXIT_OK } from '../errors.js';
import { formatDuration } from '../format.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { Lsn } from '../replication/lsn.js';
import { recordEvent } from '../state/events.js';
import { quietSince, readOldVersionWrites } from '../state/old-version-writes.js';
import { summarizeQuarantine } from '../state/quarantine.js';
import { checkConvergence, type ConvergenceCheck } from './convergence.js';
import { CheckHistory } from './status-view.js';
import { oldValueIdentities, StuckValues } from './stuck-values.js';

/** What the convergence checks need from the rest of the daemon (given by the supervisor). */
export interface ConvergenceRunnerDeps {
  stopping(): boolean;
  tables(): TableInfo[];
  /** The sweep: done, its slot-restart pending, and the signal that abandons its pass (and a check). */
  sweep(): { done: boolean; restarting: boolean; signal: AbortSignal };
  stream(): { appliedLsn: Lsn; ping(): void; newestOldVersionCommitMs: number };
  /** Values stuck after a complete sweep: sweep these leaves again from block 0. */
  resweep(leaves: string[]): void;
  /** A check failed: maybe a configured table was dropped. */
  refreshCatalog(trigger: string): Promise<unknown>;
  /** The status row, after each check. */
  writeState(): Promise<void>;
  stop(code: number): void;
}

/** The verdicts so far, for the status row and the status page (read-only). */
export interface ConvergenceStatus {
  lastCheck: ConvergenceCheck | null;
  lastCheckAt: Date | null;
  convergedAt: Date | null;
  quietSince: Date | null;
  checks: CheckHistory['list'];
}

/**
 * Periodic convergence checks (convergence.ts) once the sweep is complete,
 * every daemon.check_interval and after each complete pass: CONVERGED and its
 * metric, the rollout gate's quiet period, re-sweeps of stuck values, and the
 * exit of --exit-when-converged. A false "converged" is permanent data loss:
 * whatever a check relied on being reset (invalidate()) discards its verdict.
 */
export class ConvergenceRunner {
  private lastCheck: ConvergenceCheck | null = null;
  private lastCheckAt: Date | null = null;
  private convergedAt: Date | null = null;
  /** The last convergence checks, for the status page. */
  private readonly checks = new CheckHistory();
  /** A check is running: a timer tick meanwhile does not start a second one. */
  private checking = false;
  /**
   * Bumped whenever what a check relies on is reset (slot recreated, tables changed, a re-sweep):
   * a check that was running meanwhile (its count and waits take seconds) is discarded, not believed.
   */
  private invalidations = 0;
  /** Old-version values seen at the last check with the sweep done and the stream caught up. */
  private readonly suspects = new StuckValues();
  /** The rollout gate at the last check: where the quiet period counts from, and how long it has been. */
  private quiet: { since: Date | null; quietMs: number } = { since: null, quietMs: 0 };
  /** The quiet-period start last logged as awaited (a new old-version write restarts it). */
  private quietLogged: number | null = null;
  private readonly inFlight = new Set<Promise<unknown>>();
  private timer: NodeJS.Timeout | null = null;
  private readonly startedAtMs = Date.now();

  constructor(
    private readonly ctx: Context,
    private readonly ring: KeyRing,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly opts: { exitWhenConverged: boolean; quietPeriodMs: number },
    private readonly deps: ConvergenceRunnerDeps,
  ) {}

  start(): void {
    this.timer = setInterval(
      () =>
        void this.track(this.checkNow()).catch((e) => {
          this.log.warn({ err: e }, 'convergence check failed');
          void this.deps.refreshCatalog('convergence check failed').catch(() => undefined); // a configured table dropped?
        }),
      this.ctx.config.daemon.checkIntervalMs,
    );
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** Checks started by a timer or a complete pass use the pool too: shutdown waits for them before closing it. */
  drain(): Promise<unknown> {
    return Promise.allSettled([...this.inFlight]);
  }

  /** The sweep completed a pass: check now. */
  checkSoon(): void {
    void this.track(this.checkNow()).catch((e) => this.log.warn({ err: e }, 'convergence check failed'));
  }

  /** True when the last convergence check passed. */
  get converged(): boolean {
    return this.convergedAt !== null;
  }

  get status(): ConvergenceStatus {
    return { lastCheck: this.lastCheck, lastCheckAt: this.lastCheckAt, convergedAt: this.convergedAt, quietSince: this.quiet.since, checks: this.checks.list };
  }

  /**
   * What a check relied on was reset: the last verdict no longer holds, in the daemon and in what it
   * exports (pg_rekey_converged 0, the remaining count absent until the next check), so a dashboard
   * or an alert never shows "converged" through a re-sweep.
   */
  invalidate(): void {
    this.invalidations++;
    this.convergedAt = null;
    this.metrics.converged.set(0);
    this.metrics.remaining.forget();
  }

  /** Keeps a background task known, so shutdown waits for it before closing the pool. */
  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p)).catch(() => undefined);
    return p;
  }

  private async checkNow(): Promise<void> {
    const sweep = this.deps.sweep();
    if (this.deps.stopping() || !sweep.done || sweep.restarting || this.checking) return;
    this.checking = true;
    try {
      await this.check();
    } finally {
      this.checking = false;
    }
  }

  private async check(): Promise<void> {
    const generation = this.invalidations;
    const tables = this.deps.tables();
    // Server clock, before the count: every commit before it is decoded once the check says the stream caught up.
    const checkStarted = (await this.ctx.pool.query<{ now: Date }>(`select clock_timestamp() as now`)).rows[0]!.now;
    const waitMs = Math.max(1_000, Math.min(20_000, this.ctx.config.daemon.checkIntervalMs));
    const c = await checkConvergence(this.ctx.pool, tables, this.ring.target, this.deps.stream(), {
      transactionsMs: waitMs,
      streamMs: 10_000,
      signal: this.deps.sweep().signal,
      publication: this.ctx.config.replication.publication,
      ignore: this.ctx.config.ignore,
    });
    const sweep = this.deps.sweep();
    if (this.deps.stopping() || sweep.restarting || !sweep.done || generation !== this.invalidations) return;
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
    await this.deps.writeState();
    if (!this.opts.exitWhenConverged) return;
    if (c.converged && this.quiet.quietMs >= this.opts.quietPeriodMs) {
      if (this.opts.quietPeriodMs > 0) {
        this.log.info(
          { quietSince: this.quiet.since, quietFor: formatDuration(this.quiet.quietMs / 1000), quietPeriod: formatDuration(this.opts.quietPeriodMs / 1000) },
          `CONVERGED AND QUIET: no old-version write for ${formatDuration(this.quiet.quietMs / 1000)} (--quiet-period ${formatDuration(this.opts.quietPeriodMs / 1000)}); exiting`,
        );
      }
      return this.deps.stop(EXIT_OK);
    }
    if (c.converged) await this.logQuietWait();
    if (c.stuckOnQuarantine) {
      const q = await summarizeQuarantine(this.ctx.pool);
      this.log.error({ remaining: c.remaining, quarantine: q }, 'sweep complete but quarantined values remain; they need an operator (see pgrekey.quarantine)');
      this.deps.stop(EXIT_NOT_CONVERGED);
    }
  }

  /**
   * The rollout gate: how long since the last old-version write an application made (its commit
   * time; the slot's creation if later, since nothing before it was decoded), measured at the
   * start of this check, when the stream has decoded every commit before it.
   */
  private async updateQuiet(checkStarted: Date): Promise<void> {
    const q = await quietSince(this.ctx.pool, this.ctx.config.replication.slot);
    const seen = this.deps.stream().newestOldVersionCommitMs; // decoded, maybe not recorded yet
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
    const tableOf = new Map<string, TableInfo>();
    for (const leaf of Object.keys(c.remainingByLeaf)) {
      const table = this.deps.tables().find((t) => t.leaves.some((l) => displayName(l) === leaf));
      if (!table) continue;
      tableOf.set(leaf, table);
      now.set(leaf, await oldValueIdentities(this.ctx.pool, table, leaf, this.ring.target));
    }
    const again = this.suspects.observe(now);
    if (again.length === 0) return;
    for (const leaf of again) {
      const n = c.remainingByLeaf[leaf];
      const columns = tableOf.get(leaf)?.config.columns ?? [];
      // Where they sit (row version, column, writing xid), never the values: what an operator or a bug report needs.
      const cells = this.suspects.cells(leaf).map((x) => ({ ctid: x.ctid, column: columns[x.column] ?? String(x.column), xmin: x.xmin }));
      this.log.warn(
        { relation: leaf, remaining: n, quarantined: c.quarantined, cells },
        `RE-SWEEP: ${leaf} still holds ${n} old-version value(s), the same ones as at the last check, with the sweep complete and the stream caught up; sweeping it again from block 0`,
      );
      this.metrics.resweeps.inc({ reason: 'old values after complete sweep' });
    }
    for (const leaf of again) this.suspects.forget(leaf);
    this.invalidate();
    this.deps.resweep(again);
  }
}
