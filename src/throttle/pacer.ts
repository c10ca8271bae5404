import type pg from 'pg';
import type { SweepSettings } from '../config/load-config.js';
import type { Context } from '../context.js';
import type { LiveSettings } from './live-settings.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { sleep } from '../timing.js';
import { LatencyController, type ControllerState } from './latency-controller.js';
import { LatencyProbe } from './latency-probe.js';
import { LoadSignals } from './load-signals.js';

export interface PacerOptions {
  pool: pg.Pool;
  connectionString: string | undefined;
  /** The sweep settings in effect now (live: `pg-rekey set`). */
  settings: () => SweepSettings;
  /** How often load signals are read and the state is published (throttle.check_interval). */
  checkIntervalMs: () => number;
  /** pg-rekey's own slot, left out of "other logical slots". */
  slot: string;
  log: Logger;
  metrics?: Metrics;
}

/** The controller's state as `status` shows it (pgrekey.control.controller). */
export interface PacerState extends ControllerState {
  /** Rows/s rewritten over the last few seconds. */
  achievedRate: number;
  /** Chunk duration aimed at now, ms (grows when the pace keeps the sweep busy). */
  chunkTimeMs: number;
  /** The probe gets no answers: paced at the minimum rate meanwhile. */
  probeDown: boolean;
  maxRate: number;
  maxWalRate: number;
}

/** A chunk's duration goes up to this when the pace keeps the sweep busy most of the time. */
const MAX_AUTO_CHUNK_MS = 50;

/**
 * `sweep.mode: auto`: paces the sweep to the LatencyController's rate. Runs the probe and reads the
 * load signals in the background; before a chunk, holds the sweep while the baseline is learned;
 * after a chunk, sleeps until the chunk's rows (and WAL, under max_wal_rate) fit the rate, in
 * slices of one probe interval, so a cut during the sleep lengthens it at once.
 */
export class AutoPacer {
  readonly controller: LatencyController;
  private probe: LatencyProbe | null = null;
  private readonly signals: LoadSignals;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | null = null;
  private done: { at: number; rows: number }[] = [];
  private chunkMs: number;
  private lastLogged: { reason: string | null; at: number; cuts: number } = { reason: null, at: 0, cuts: 0 };
  private learningLogged = false;
  private readonly counted: Record<string, number> = {};

  constructor(private readonly o: PacerOptions) {
    const s = o.settings();
    this.log = o.log.child({ component: 'pacer' });
    this.chunkMs = s.chunkTimeMs;
    this.controller = new LatencyController({ ratio: s.latencyRatio, maxRate: s.maxRate, relearnMs: s.baselineIntervalMs });
    this.signals = new LoadSignals(o.pool, o.slot);
  }

  private started = false;
  private stopped = false;

  private get probeDown(): boolean {
    return this.probe?.down ?? false;
  }

  private newProbe(): LatencyProbe {
    return new LatencyProbe(this.o.connectionString, () => this.o.settings().probeIntervalMs, (ms, overdue) => this.controller.observeProbe(ms, Date.now(), overdue), this.log);
  }

  /** Starts the probe and the load readings (the first auto chunk does it). */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.stopped = false;
    const probe = this.newProbe();
    this.probe = probe;
    probe.start();
    const tick = async () => {
      const s = this.o.settings();
      this.controller.retune({ ratio: s.latencyRatio, maxRate: s.maxRate, relearnMs: s.baselineIntervalMs });
      try {
        this.controller.observeLoad(await this.signals.read(), Date.now());
      } catch (e) {
        this.log.warn({ err: e }, 'could not read the load signals; going on without them');
      }
      if (this.stopped) return;
      await this.publish();
      if (!this.stopped) this.timer = setTimeout(() => void tick(), this.o.checkIntervalMs());
    };
    this.timer = setTimeout(() => void tick(), 0);
  }

  /** Stops the probe and the readings; a later chunk starts them again (the baseline is learned anew). */
  async stop(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.stopped = true;
    if (!this.started) return;
    this.started = false;
    await this.probe?.stop();
    this.probe = null;
    this.controller.relearn();
  }

  /** The chunk duration the sweep should size its chunks to now. */
  get chunkTimeMs(): number {
    return this.chunkMs;
  }

  /** Before a chunk: waits while the baseline is (re)learned. */
  async beforeChunk(signal?: AbortSignal): Promise<void> {
    this.start();
    if (this.controller.tick(Date.now())) this.learningLogged = false;
    while (this.controller.learning && !signal?.aborted && !this.probeDown) {
      if (!this.learningLogged) {
        this.learningLogged = true;
        this.log.debug('learning the probe latency baseline (the sweep pauses)');
      }
      await sleep(this.o.settings().probeIntervalMs, signal);
    }
  }

  /**
   * After a chunk that started at `startedAt` (epoch ms), took `chunkMs` and rewrote `rows` rows writing about `walBytes`.
   * `share`: how many workers (of every process, sweep.workers) split the rate: each gets 1/share of it.
   */
  async afterChunk(rows: number, walBytes: number, startedAt: number, chunkMs: number, signal?: AbortSignal, share = 1): Promise<void> {
    const now = Date.now();
    this.done.push({ at: now, rows });
    while (this.done.length && this.done[0]!.at < now - 3000) this.done.shift();
    this.controller.observeAchieved(this.achieved(now));
    const s = this.o.settings();
    const due = () => {
      const rate = (this.probeDown ? 20 : this.controller.rate) / share;
      const byRows = rate > 0 ? (rows * 1000) / rate : Infinity;
      const byWal = s.maxWalRate > 0 ? (walBytes * 1000 * share) / s.maxWalRate : 0;
      return startedAt + Math.max(byRows, byWal);
    };
    let slept = 0;
    for (let left = due() - Date.now(); left > 0 && !signal?.aborted; left = due() - Date.now()) {
      const step = Math.min(left, s.probeIntervalMs);
      await sleep(step, signal);
      slept += step;
      if (this.controller.learning) break; // beforeChunk waits for the baseline
    }
    // Bigger chunks when the pace leaves little idle time (fewer commits for the same rate), smaller when it leaves much.
    const busy = chunkMs / Math.max(1, chunkMs + slept);
    if (busy > 0.6) this.chunkMs = Math.min(MAX_AUTO_CHUNK_MS, Math.max(this.chunkMs, 1) * 1.25);
    else if (busy < 0.3) this.chunkMs = Math.max(s.chunkTimeMs, this.chunkMs / 1.25);
  }

  state(): PacerState {
    const s = this.o.settings();
    return { ...this.controller.state(), achievedRate: this.achieved(Date.now()), chunkTimeMs: this.chunkMs, probeDown: this.probeDown, maxRate: s.maxRate, maxWalRate: s.maxWalRate };
  }

  private achieved(now: number): number {
    const since = this.done[0]?.at;
    if (since === undefined || now - since < 500) return NaN;
    return (this.done.reduce((n, d) => n + d.rows, 0) * 1000) / (now - since);
  }

  /** State for `status` (pgrekey.control), metrics, and a log line when it slows down (at most one per 5 s). */
  private async publish(): Promise<void> {
    const st = this.state();
    const m = this.o.metrics;
    if (m) {
      if (st.targetMs !== null) m.sweepTargetLatency.set(st.targetMs / 1000);
      if (st.measuredMs !== null) m.sweepProbeLatency.set(st.measuredMs / 1000);
      if (st.baselineMs !== null) m.sweepBaselineLatency.set(st.baselineMs / 1000);
      if (st.tailShare !== null) m.sweepProbeTailShare.set(st.tailShare);
      m.sweepRateLimit.set(st.rate);
      for (const [reason, n] of Object.entries(st.cuts)) {
        m.sweepSlowdowns.inc({ reason }, (n ?? 0) - (this.counted[reason] ?? 0));
        this.counted[reason] = n ?? 0;
      }
    }
    const cuts = Object.values(st.cuts).reduce((a, b) => a + (b ?? 0), 0);
    const now = Date.now();
    if (cuts > this.lastLogged.cuts && (st.slowedBy !== this.lastLogged.reason || now - this.lastLogged.at >= 5000)) {
      this.log.info(
        { reason: st.slowedBy, detail: st.slowedDetail, rate: Math.round(st.rate), baselineMs: st.baselineMs, targetMs: st.targetMs, measuredMs: st.measuredMs, slowdowns: cuts - this.lastLogged.cuts },
        'sweep slowing down',
      );
      this.lastLogged = { reason: st.slowedBy, at: now, cuts };
    }
    await this.o.pool.query(`update pgrekey.control set controller = $1::jsonb, controller_at = now()`, [JSON.stringify(st)]).catch((e) => this.log.debug({ err: e }, 'could not publish the controller state'));
  }
}

/** The sweep.mode auto pacer of a command's sweep (its probe starts with the first auto chunk, so duty and fast sweeps never run it). */
export function autoPacer(ctx: Pick<Context, 'pool' | 'config' | 'log'>, live: LiveSettings, metrics?: Metrics): AutoPacer {
  return new AutoPacer({
    pool: ctx.pool,
    connectionString: ctx.config.connectionString,
    settings: () => live.current.sweep,
    checkIntervalMs: () => live.current.throttle.checkIntervalMs,
    slot: ctx.config.replication.slot,
    log: ctx.log,
    metrics,
  });
}
