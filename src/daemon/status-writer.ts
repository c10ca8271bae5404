import type { Context } from '../context.js';
import type { KeyRing } from '../crypto/key-ring.js';
import { versionLabel } from '../crypto/envelope.js';
import { readStatus } from '../commands/status.js';
import { formatLsn, type Lsn } from '../replication/lsn.js';
import { PG_REKEY_VERSION } from '../version.js';
import type { ConvergenceStatus } from './convergence-runner.js';
import type { SlotLease } from './lease.js';
import type { LiveView } from './status-page.js';
import { StatusPageSource } from './status-view.js';

/** What the daemon says about itself comes from these (given by the supervisor). */
export interface StatusSource {
  stopping(): boolean;
  /** Undefined until startup built the stream. */
  stream(): { connected: boolean; appliedLsn: Lsn; rewrites: number } | undefined;
  sweepDone(): boolean;
  convergence(): ConvergenceStatus;
}

/**
 * What the daemon says about itself: its status row (pgrekey.daemon, the
 * heartbeat `pg-rekey status` reads) and its status page (the HTTP `/`).
 */
export class StatusWriter {
  private rateSample = { at: Date.now(), rewrites: 0, perSec: 0 };
  private readonly page: StatusPageSource;

  constructor(
    private readonly ctx: Context,
    private readonly ring: KeyRing,
    private readonly lease: SlotLease,
    private readonly opts: { exitWhenConverged: boolean; quietPeriodMs: number },
    private readonly source: StatusSource,
  ) {
    this.page = new StatusPageSource(
      () => readStatus(ctx.pool, ctx.config.replication.slot, ctx.config.replication.maxRetainedWalBytes),
      () => this.liveView(),
    );
  }

  /** The status page's HTML. */
  html(): Promise<string> {
    return this.page.html();
  }

  /** What the status page shows next to the state tables: the daemon's own view. */
  private liveView(): LiveView {
    const stream = this.source.stream();
    const c = this.source.convergence();
    return {
      slot: this.ctx.config.replication.slot,
      targetVersion: versionLabel(this.ring.target),
      version: PG_REKEY_VERSION,
      streamConnected: (stream?.connected ?? false) && !this.source.stopping(),
      appliedLsn: stream && stream.appliedLsn > 0n ? formatLsn(stream.appliedLsn) : null,
      sweepDone: this.source.sweepDone(),
      convergedAt: c.convergedAt,
      checks: c.checks,
    };
  }

  /**
   * The status row (pgrekey.daemon), written only while the lease is held and
   * only over a row that still names this lease's holder (host, pid, start
   * time recorded when the lease was taken): a daemon that lost its lease
   * cannot overwrite a successor's row, even before it notices the loss.
   */
  async write(stopped = false): Promise<void> {
    const lease = this.lease;
    if (!lease.held) return;
    const conv = this.source.convergence();
    const c = conv.lastCheck;
    const stream = this.source.stream(); // undefined when startup did not get that far
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
        (stream?.connected ?? false) && !this.source.stopping(),
        this.source.sweepDone(),
        c?.remaining ?? null,
        c?.quarantined ?? null,
        conv.lastCheckAt,
        conv.convergedAt,
        rewrites,
        this.rateSample.perSec,
        stopped,
        lease.token.startedAt,
        this.opts.exitWhenConverged ? this.opts.quietPeriodMs / 1000 : null,
        conv.quietSince,
      ],
    );
    if (r.rowCount === 0) lease.lose(new Error('the status row in pgrekey.daemon names another daemon: another pg-rekey run holds the slot now'));
  }
}
