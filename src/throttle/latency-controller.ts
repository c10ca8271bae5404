/**
 * The `sweep.mode: auto` controller: holds the foreground's latency near a target by setting the
 * sweep's rate (rows rewritten per second). Pure: feed it probe samples and load readings with
 * their time, read the rate. In the spirit of TCP's AIMD and of CockroachDB's elastic admission
 * control, which holds background work to a latency target:
 *
 * - The target is learned: while the sweep pauses, the probe's median latency is the baseline;
 *   target = baseline x ratio, and at least baseline + minMarginMs and baseline + 2.5 standard errors
 *   of a window's median against the baseline's (a rise the probe's noise hides cannot be acted on: a noisy probe would
 *   otherwise cut the rate on noise alone). The caller pauses the sweep while `learning` is true,
 *   and the baseline is learned again every relearnMs (the foreground's own load changes over a
 *   day). The samples of the last learnings are pooled (up to poolSamples) while their medians
 *   agree within poolDrift; a learning that disagrees starts the pool anew.
 * - Measured = the median of the last `window` probe samples.
 * - The tail counts too (the foreground's p99 is what an application feels, and the median is blind
 *   to a sweep that delays one transaction in ten): the baseline's 90th percentile, x ratio, is the
 *   tail threshold; more than tailLimit of the last tailWindow samples above it cuts (at most once
 *   per tailWindow samples), and the rate grows only while at most tailGrowLimit of them are.
 * - Grow slowly: each probe sample within target adds to the rate (x slowStartGrowth per sample
 *   until the first cut, then + increase x rate, at least minStep).
 * - Cut fast: a single sample above spikeFactor x target halves the rate at once (within one probe
 *   interval of a spike); a measured median above target halves it (at most once per window, so
 *   the samples from before a cut do not cut again); any other congestion reading (lock waits
 *   behind the sweep, a standby or another logical slot falling behind, the archiver's backlog,
 *   WAL sync time) halves it too and holds growth until a clean reading.
 * - Never above maxRate nor below minRate (hard limits; the throttle's pauses come on top).
 */
export interface LatencyControllerSettings {
  /** Target = baseline x ratio. */
  ratio: number;
  /** Target >= baseline + this (ms). */
  minMarginMs: number;
  /** Rows per second at start and after nothing is known. */
  initialRate: number;
  minRate: number;
  /** 0 or Infinity = no limit. */
  maxRate: number;
  /** Probe samples in the sliding window (median). */
  window: number;
  /** Samples that make a baseline (the first `baselineSkip` after the pause are ignored: the sweep's last chunk may still echo). */
  baselineSamples: number;
  baselineSkip: number;
  /** Learn the baseline again this often (ms). */
  relearnMs: number;
  /** Baseline samples kept across learnings. */
  poolSamples: number;
  /** A learning whose median differs from the pool's by more than this share replaces the pool. */
  poolDrift: number;
  /** Multiplicative decrease. */
  decrease: number;
  /** Additive increase per sample within target, as a fraction of the rate ... */
  increase: number;
  /** ... and at least this many rows/s. */
  minStep: number;
  /** Before the first cut: multiply by this per sample within target. */
  slowStartGrowth: number;
  /** A single sample above target x spikeFactor cuts at once. */
  spikeFactor: number;
  /** Probe samples over which the tail is judged. */
  tailWindow: number;
  /** More than this share of them above the tail threshold cuts ... */
  tailLimit: number;
  /** ... and the rate grows only while at most this share are. */
  tailGrowLimit: number;
}

export const DEFAULT_CONTROLLER: Omit<LatencyControllerSettings, 'ratio' | 'maxRate' | 'relearnMs'> = {
  minMarginMs: 0.1,
  initialRate: 500,
  minRate: 20,
  window: 10,
  baselineSamples: 20,
  baselineSkip: 2,
  poolSamples: 80,
  poolDrift: 0.2,
  decrease: 0.5,
  increase: 0.02,
  minStep: 20,
  slowStartGrowth: 1.08,
  spikeFactor: 3,
  tailWindow: 30,
  tailLimit: 0.25,
  tailGrowLimit: 0.15,
};

/** Why the controller last slowed the sweep down. */
export type SlowReason = 'probe-spike' | 'probe-latency' | 'probe-tail' | 'lock-waits' | 'standby-lag' | 'slot-lag' | 'archiver-backlog' | 'wal-sync';

/** A reading of the server's other load signals (load-signals.ts); null = not available here. */
export interface LoadReading {
  /** Backends waiting for a lock held by one of pg-rekey's sessions. */
  blockedByUs: number;
  /** Largest replay lag of a physical standby, bytes (null: no standby). */
  standbyLagBytes: number | null;
  /** Largest lag of another active logical slot behind the current WAL position, bytes (null: none). */
  slotLagBytes: number | null;
  /** WAL segments ready but not archived yet (null: archiving off). */
  archiverBacklog: number | null;
  /** Mean WAL sync time per sync since the previous reading, ms (null: track_wal_io_timing off, or no sync). */
  walSyncMs: number | null;
}

/** Floors under which a rising gauge is noise. */
const STANDBY_LAG_FLOOR = 16 * 1024 * 1024;
const SLOT_LAG_FLOOR = 64 * 1024 * 1024;
const ARCHIVER_FLOOR = 2;

export interface ControllerState {
  phase: 'learning' | 'running';
  /** Probe median while the sweep paused, ms (null until learned). */
  baselineMs: number | null;
  targetMs: number | null;
  /** Median of the recent probe samples, ms. */
  measuredMs: number | null;
  /** The baseline's 90th percentile x ratio, ms (null until learned). */
  tailMs: number | null;
  /** Share of the last tailWindow samples above tailMs (null: none yet). */
  tailShare: number | null;
  /** The rate the sweep is paced to, rows/s. */
  rate: number;
  slowedBy: SlowReason | null;
  slowedDetail: string | null;
  /** When it last slowed down (epoch ms). */
  slowedAt: number | null;
  /** Cuts so far, by reason. */
  cuts: Partial<Record<SlowReason, number>>;
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

const quantile = (xs: readonly number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!;
};

export class LatencyController {
  private readonly s: LatencyControllerSettings;
  private phase: 'learning' | 'running' = 'learning';
  private learned: number[] = [];
  /** Baseline samples of the last learnings that agree. */
  private pool: number[] = [];
  private learningSeen = 0;
  private baseline: number | null = null;
  /** 2.5 standard errors of a window's median against the baseline's, from the pool's spread (ms). */
  private noiseMs = 0;
  /** The 90th percentile of the baseline samples: a spike must clear twice that too (noise). */
  private baselineHigh: number | null = null;
  /** Rows/s the sweep actually achieved recently: the rate does not grow past twice that. */
  private achieved: number | null = null;
  private recent: number[] = [];
  /** 1 per recent sample above the tail threshold, else 0 (the last tailWindow). */
  private tail: number[] = [];
  private samplesSinceCut = Infinity;
  private cutOnce = false;
  private r: number;
  private learnedAt = 0;
  private prev: LoadReading | null = null;
  private congested = false;
  private walSyncBaseline: number | null = null;
  private last: Pick<ControllerState, 'slowedBy' | 'slowedDetail' | 'slowedAt'> = { slowedBy: null, slowedDetail: null, slowedAt: null };
  private readonly cuts: Partial<Record<SlowReason, number>> = {};

  constructor(settings: Partial<LatencyControllerSettings> & Pick<LatencyControllerSettings, 'ratio' | 'maxRate' | 'relearnMs'>) {
    this.s = { ...DEFAULT_CONTROLLER, ...settings };
    this.r = this.clamp(this.s.initialRate);
  }

  /** The rate to pace the sweep to (rows/s). 0 while learning: the sweep must pause. */
  get rate(): number {
    return this.phase === 'learning' ? 0 : this.r;
  }

  get learning(): boolean {
    return this.phase === 'learning';
  }

  get targetMs(): number | null {
    return this.baseline === null ? null : Math.max(this.baseline * this.s.ratio, this.baseline + this.s.minMarginMs, this.baseline + this.noiseMs);
  }

  /** Samples above this are the tail (the baseline's 90th percentile x ratio). */
  get tailMs(): number | null {
    return this.baselineHigh === null ? null : Math.max(this.baselineHigh * this.s.ratio, this.baselineHigh + this.s.minMarginMs);
  }

  private get tailShare(): number | null {
    return this.tail.length ? this.tail.reduce((a, b) => a + b, 0) / this.tail.length : null;
  }

  /** Live changes (`pg-rekey set`): keeps what was learned. */
  retune(settings: Partial<Pick<LatencyControllerSettings, 'ratio' | 'maxRate' | 'relearnMs'>>): void {
    Object.assign(this.s, settings);
    this.r = this.clamp(this.r);
  }

  /** Pause and learn the baseline again (the caller holds the sweep while `learning`). */
  relearn(): void {
    this.phase = 'learning';
    this.learned = [];
    this.learningSeen = 0;
  }

  /** Call with the time now: true when a relearn was started (it is due). */
  tick(now: number): boolean {
    if (this.phase === 'running' && now - this.learnedAt >= this.s.relearnMs) {
      this.relearn();
      return true;
    }
    return false;
  }

  /** One probe sample (ms), or a lower bound of one still in flight (`overdue`: spike check only). */
  observeProbe(ms: number, now: number, overdue = false): void {
    if (this.phase === 'learning') {
      if (overdue) return;
      if (this.learningSeen++ < this.s.baselineSkip) return;
      this.learned.push(ms);
      if (this.learned.length >= this.s.baselineSamples) {
        const m = median(this.learned);
        const poolMedian = this.pool.length ? median(this.pool) : null;
        this.pool = poolMedian !== null && Math.abs(m - poolMedian) <= this.s.poolDrift * poolMedian ? [...this.pool, ...this.learned].slice(-this.s.poolSamples) : [...this.learned];
        this.baseline = median(this.pool);
        this.baselineHigh = quantile(this.pool, 0.9);
        // A median's standard error ~ 1.25 sigma / sqrt(n) (sigma from the interquartile range): the
        // window's median against the baseline's, each with its own error; 2.5 of them together.
        const sigma = (quantile(this.pool, 0.75) - quantile(this.pool, 0.25)) / 1.35;
        this.noiseMs = 2.5 * 1.25 * sigma * Math.sqrt(1 / this.s.window + 1 / this.pool.length);
        this.phase = 'running';
        this.learnedAt = now;
        this.recent = [];
        this.tail = [];
        this.samplesSinceCut = Infinity;
      }
      return;
    }
    const target = this.targetMs!;
    const spike = Math.max(target * this.s.spikeFactor, 2 * (this.baselineHigh ?? 0));
    if (ms > spike) {
      this.cut('probe-spike', `probe ${ms.toFixed(2)} ms > spike threshold ${spike.toFixed(2)} ms (target ${target.toFixed(2)} ms)`, now);
      if (!overdue) this.push(ms);
      return;
    }
    if (overdue) return;
    this.push(ms);
    this.samplesSinceCut++;
    const measured = median(this.recent);
    if (this.recent.length >= Math.min(3, this.s.window) && measured > target) {
      if (this.samplesSinceCut >= this.s.window) this.cut('probe-latency', `probe median ${measured.toFixed(2)} ms > target ${target.toFixed(2)} ms`, now);
      return;
    }
    const share = this.tailShare!;
    if (this.tail.length >= this.s.tailWindow && share > this.s.tailLimit) {
      if (this.samplesSinceCut >= this.s.tailWindow) {
        const pct = (x: number) => `${Math.round(100 * x)}%`;
        this.cut('probe-tail', `${pct(share)} of the last ${this.tail.length} probes above ${this.tailMs!.toFixed(2)} ms (the baseline's 90th percentile x ${this.s.ratio}; at most ${pct(this.s.tailLimit)})`, now);
      }
      return;
    }
    if (!this.congested && measured <= target && share <= this.s.tailGrowLimit) this.grow();
  }

  /** What the sweep achieved recently (rows/s): the rate does not run away above what is done. */
  observeAchieved(rowsPerSec: number): void {
    if (Number.isFinite(rowsPerSec)) this.achieved = rowsPerSec;
  }

  /** A reading of the other load signals; any one rising (or lock waits behind the sweep) cuts. */
  observeLoad(x: LoadReading, now: number): void {
    const p = this.prev;
    this.prev = x;
    const why = congestion(x, p, this.walSyncBaseline);
    if (x.walSyncMs !== null && !why) this.walSyncBaseline = this.walSyncBaseline === null ? x.walSyncMs : 0.8 * this.walSyncBaseline + 0.2 * x.walSyncMs;
    this.congested = why !== null;
    if (why && this.phase === 'running') this.cut(why.reason, why.detail, now);
  }

  state(): ControllerState {
    return {
      phase: this.phase,
      baselineMs: this.baseline,
      targetMs: this.targetMs,
      measuredMs: this.recent.length ? median(this.recent) : null,
      tailMs: this.tailMs,
      tailShare: this.tailShare,
      rate: this.r,
      ...this.last,
      cuts: { ...this.cuts },
    };
  }

  private push(ms: number): void {
    this.recent.push(ms);
    if (this.recent.length > this.s.window) this.recent.shift();
    this.tail.push(ms > this.tailMs! ? 1 : 0);
    if (this.tail.length > this.s.tailWindow) this.tail.shift();
  }

  private grow(): void {
    const next = this.cutOnce ? this.r + Math.max(this.s.minStep, this.s.increase * this.r) : this.r * this.s.slowStartGrowth;
    const ceiling = this.achieved === null ? Infinity : Math.max(2 * this.achieved, this.s.initialRate);
    if (this.r >= ceiling) return;
    this.r = this.clamp(Math.min(next, ceiling));
  }

  private cut(reason: SlowReason, detail: string, now: number): void {
    this.r = this.clamp(this.r * this.s.decrease);
    this.cutOnce = true;
    this.samplesSinceCut = 0;
    this.cuts[reason] = (this.cuts[reason] ?? 0) + 1;
    this.last = { slowedBy: reason, slowedDetail: detail, slowedAt: now };
  }

  private clamp(n: number): number {
    const max = this.s.maxRate > 0 ? this.s.maxRate : Infinity;
    return Math.max(Math.min(this.s.minRate, max), Math.min(max, n));
  }
}

/** The first load signal that says "slow down", comparing a reading with the previous one (pure). */
export function congestion(x: LoadReading, prev: LoadReading | null, walSyncBaselineMs: number | null): { reason: SlowReason; detail: string } | null {
  if (x.blockedByUs > 0) return { reason: 'lock-waits', detail: `${x.blockedByUs} session(s) wait for a lock held by pg-rekey` };
  const rising = (now: number | null, before: number | null | undefined, floor: number) => now !== null && now > floor && before !== null && before !== undefined && now > before;
  if (rising(x.standbyLagBytes, prev?.standbyLagBytes, STANDBY_LAG_FLOOR)) {
    return { reason: 'standby-lag', detail: `a physical standby is ${mib(x.standbyLagBytes!)} behind and falling further behind` };
  }
  if (rising(x.slotLagBytes, prev?.slotLagBytes, SLOT_LAG_FLOOR)) {
    return { reason: 'slot-lag', detail: `another logical consumer's slot is ${mib(x.slotLagBytes!)} behind and falling further behind` };
  }
  if (rising(x.archiverBacklog, prev?.archiverBacklog, ARCHIVER_FLOOR)) {
    return { reason: 'archiver-backlog', detail: `${x.archiverBacklog} WAL segment(s) wait to be archived, more than before` };
  }
  if (x.walSyncMs !== null && walSyncBaselineMs !== null && x.walSyncMs > 2 * walSyncBaselineMs + 0.5) {
    return { reason: 'wal-sync', detail: `WAL sync ${x.walSyncMs.toFixed(2)} ms per sync, usually ${walSyncBaselineMs.toFixed(2)} ms` };
  }
  return null;
}

function mib(b: number): string {
  return `${(b / 1048576).toFixed(0)} MB`;
}
