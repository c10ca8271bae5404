import type pg from 'pg';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { RuntimeFailure } from '../errors.js';
import { sleep } from '../timing.js';
import { decide, type Decision, type Signals, type ThrottleReason } from './decide.js';
import type { LiveSettings } from './live-settings.js';
import { readSignals } from './signals.js';

export interface ThrottleState {
  reason: ThrottleReason | null;
  detail: string;
  since: Date | null;
}

/**
 * Gate in front of every sweep chunk: waits while any throttle signal says
 * so. Signals are read at most once per check interval; the state is
 * logged once per change, published to pgrekey.control for `status`, and
 * counted in metrics (time throttled by reason).
 */
export class Throttle {
  private state: ThrottleState = { reason: null, detail: '', since: null };
  private lastRead = 0;
  private last: Decision = { reason: null, detail: '' };
  private readonly log: Logger;

  constructor(
    private readonly db: pg.Pool,
    private readonly live: LiveSettings,
    log: Logger,
    private readonly metrics?: Metrics,
  ) {
    this.log = log.child({ component: 'throttle' });
  }

  get current(): ThrottleState {
    return this.state;
  }

  /** Resolves when the sweep may run its next chunk (or the signal aborts). */
  async gate(signal?: AbortSignal): Promise<void> {
    for (;;) {
      if (signal?.aborted) return;
      const { throttle } = await this.live.refresh();
      const now = Date.now();
      if (now - this.lastRead >= throttle.checkIntervalMs || this.state.reason !== null) {
        this.lastRead = now;
        let s: Signals;
        try {
          s = await readSignals(this.db, throttle.pauseFile);
        } catch (e) {
          this.log.warn({ err: e }, 'could not read throttle signals; going on');
          return;
        }
        this.last = decide(s, throttle);
      }
      await this.transition(this.last);
      if (this.last.reason === null) return;
      if (this.last.reason === 'critical-load') {
        if (throttle.criticalAction === 'stop') {
          throw new RuntimeFailure(
            `critical load: ${this.last.detail}; the sweep stopped`,
            'find out what loads the server; rerun when it is quiet (progress is kept), raise throttle.critical_active_backends, or set critical_action: hibernate',
          );
        }
        this.log.warn({ detail: this.last.detail, hibernateMs: throttle.hibernateMs }, 'critical load: hibernating');
        await this.wait('critical-load', throttle.hibernateMs, signal);
      } else {
        await this.wait(this.last.reason, throttle.checkIntervalMs, signal);
      }
    }
  }

  /** A chunk hit lock_timeout and will be retried: count it and show it. */
  noteLockWait(): void {
    this.metrics?.sweepLockTimeouts.inc();
    this.log.info('sweep chunk waited too long for a row lock (lock_timeout); backing off and retrying it');
  }

  /** Clears the published state (end of a sweep). */
  async clear(): Promise<void> {
    await this.transition({ reason: null, detail: '' });
  }

  private async wait(reason: ThrottleReason, ms: number, signal?: AbortSignal): Promise<void> {
    const t0 = Date.now();
    await sleep(ms, signal);
    this.metrics?.sweepThrottledSeconds.inc({ reason }, (Date.now() - t0) / 1000);
  }

  private async transition(d: Decision): Promise<void> {
    if (d.reason === this.state.reason && d.detail === this.state.detail) return;
    const prev = this.state;
    this.state = { reason: d.reason, detail: d.detail, since: d.reason === prev.reason && prev.since ? prev.since : d.reason ? new Date() : null };
    if (prev.reason) this.metrics?.sweepThrottled.set({ reason: prev.reason }, 0);
    if (d.reason) this.metrics?.sweepThrottled.set({ reason: d.reason }, 1);
    if (d.reason && d.reason !== prev.reason) this.log.warn({ reason: d.reason, detail: d.detail }, 'sweep throttled');
    else if (!d.reason && prev.reason) this.log.info({ reason: prev.reason, pausedMs: Date.now() - (prev.since?.getTime() ?? Date.now()) }, 'sweep released');
    await this.db
      .query(`update pgrekey.control set throttle_reason = $1, throttle_detail = $2, throttled_since = $3, throttle_updated_at = now()`, [
        this.state.reason,
        this.state.detail || null,
        this.state.since,
      ])
      .catch((e) => this.log.warn({ err: e }, 'could not publish the throttle state'));
  }
}
