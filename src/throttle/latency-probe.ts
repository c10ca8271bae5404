import type pg from 'pg';
import { APPLICATION_NAME, createPool } from '../db/connect.js';
import type { Logger } from '../logger.js';

/**
 * What the application feels, sampled by pg-rekey itself (in the spirit of gh-ost's heartbeat):
 * every interval, on a connection of its own, a tiny commit (an upsert of this probe's row in the
 * unlogged pgrekey.probe: it takes an xid, so its commit waits for a WAL flush behind everyone
 * else's, as the application's commits do) and a tiny read by primary key. A sample is the time
 * of both. A probe still unanswered after an interval is reported as `overdue` with its elapsed
 * time, so a stall is seen within one interval, not when it ends.
 *
 * Its own cost: two round trips and one small commit per interval (10 commits/s at 100 ms); the
 * row is HOT-updated in place and the table stays one page.
 */
const BEAT = {
  name: 'pgrekey_probe_beat',
  text: `insert into pgrekey.probe (pid, at) values (pg_backend_pid(), now()) on conflict (pid) do update set at = excluded.at`,
};
const READ = { name: 'pgrekey_probe_read', text: `select at from pgrekey.probe where pid = pg_backend_pid()` };

export const PROBE_APPLICATION_NAME = `${APPLICATION_NAME} probe`;

export class LatencyProbe {
  private readonly pool: pg.Pool;
  private timer: NodeJS.Timeout | null = null;
  private inFlightSince: number | null = null;
  private failing = false;
  private lastOk = 0;
  private stopped = false;

  constructor(
    connectionString: string | undefined,
    private readonly intervalMs: () => number,
    private readonly onSample: (ms: number, overdue: boolean) => void,
    private readonly log: Logger,
  ) {
    this.pool = createPool({ connectionString, applicationName: PROBE_APPLICATION_NAME, max: 1 });
  }

  /** True while probes fail (no samples): the caller paces without them. */
  get down(): boolean {
    return this.failing && Date.now() - this.lastOk > 5 * this.intervalMs();
  }

  start(): void {
    this.lastOk = Date.now();
    const loop = async () => {
      if (this.stopped) return;
      const started = performance.now();
      this.inFlightSince = started;
      try {
        await this.pool.query(BEAT);
        await this.pool.query(READ);
        const ms = performance.now() - started;
        this.inFlightSince = null;
        this.lastOk = Date.now();
        if (this.failing) this.log.info('latency probe answers again');
        this.failing = false;
        this.onSample(ms, false);
      } catch (e) {
        this.inFlightSince = null;
        if (!this.failing) this.log.warn({ err: e }, 'latency probe failed; pacing the sweep without it until it answers (sweep.mode auto)');
        this.failing = true;
      }
      if (this.stopped) return;
      this.timer = setTimeout(() => void loop(), Math.max(0, this.intervalMs() - (performance.now() - started)));
    };
    void loop();
    // A probe that does not answer is a stall the controller must see now, not when it ends.
    const watch = setInterval(() => {
      if (this.stopped) return clearInterval(watch);
      const since = this.inFlightSince;
      if (since !== null && performance.now() - since > this.intervalMs()) this.onSample(performance.now() - since, true);
    }, this.intervalMs());
    watch.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.pool.query(`delete from pgrekey.probe where pid = pg_backend_pid()`).catch(() => undefined);
    await this.pool.end().catch(() => undefined);
  }
}
