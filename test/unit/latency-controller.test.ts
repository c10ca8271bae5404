import { describe, expect, it } from 'vitest';
import { congestion, LatencyController, type LoadReading } from '../../src/throttle/latency-controller.js';
import { chunkPolicy, hardLimitWait } from '../../src/backfill/sweep.js';
import type { SweepSettings } from '../../src/config/load-config.js';
import { rng } from '../support/fixtures.js';

const BASE = 1.0; // ms: the probe with the sweep paused
const CAPACITY = 20_000; // rows/s at which the probe latency doubles
/** A probe latency that rises with the sweep's rate (a queue in front of the WAL flush), with noise. */
const model = (rate: number, noise: () => number) => BASE * (1 + (rate / CAPACITY) ** 2) * (1 + noise());

/** Deterministic noise in [-a, a]. */
function noise(seed: number, a: number): () => number {
  const r = rng(seed);
  return () => (r() * 2 - 1) * a;
}

const calm: LoadReading = { blockedByUs: 0, standbyLagBytes: null, slotLagBytes: null, archiverBacklog: null, walSyncMs: null };

/** Runs the closed loop for `seconds` of 100 ms probes; returns the rates seen (one per probe). */
function simulate(c: LatencyController, seconds: number, n: () => number, t0 = 0, latency = model): { rates: number[]; lats: number[]; t: number } {
  const rates: number[] = [];
  const lats: number[] = [];
  let t = t0;
  for (let i = 0; i < seconds * 10; i++) {
    t += 100;
    const lat = latency(c.rate, n);
    c.observeProbe(lat, t);
    rates.push(c.rate);
    lats.push(lat);
  }
  return { rates, lats, t };
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

describe('latency controller (sweep.mode auto)', () => {
  it('learns a baseline while the sweep pauses (rate 0), then paces', () => {
    const c = new LatencyController({ ratio: 1.1, maxRate: 0, relearnMs: 30_000 });
    expect(c.learning).toBe(true);
    expect(c.rate).toBe(0);
    simulate(c, 2.2, () => 0);
    expect(c.learning).toBe(false);
    expect(c.state().baselineMs).toBeCloseTo(BASE, 5);
    expect(c.targetMs).toBeCloseTo(1.1, 5);
    expect(c.rate).toBeGreaterThan(0);
  });

  it('converges near the target: the rate where the latency is 1.1x the baseline, with noise', () => {
    const c = new LatencyController({ ratio: 1.1, maxRate: 0, relearnMs: 1e9 });
    const { rates, lats } = simulate(c, 120, noise(7, 0.03));
    const equilibrium = CAPACITY * Math.sqrt(0.1); // (r/C)^2 = 0.1
    const late = rates.slice(-600); // the last minute
    expect(mean(late)).toBeGreaterThan(0.5 * equilibrium);
    expect(mean(late)).toBeLessThan(1.3 * equilibrium);
    // The latency it holds: near the target, not far above it.
    const held = lats.slice(-600).sort((a, b) => a - b)[300]!;
    expect(held).toBeLessThan(1.1 * 1.1);
    expect(held).toBeGreaterThan(1.0);
  });

  it('backs off within one probe interval of a sudden foreground spike, and recovers after it', () => {
    const c = new LatencyController({ ratio: 1.1, maxRate: 0, relearnMs: 1e9 });
    const before = simulate(c, 60, noise(3, 0.03));
    const rate = c.rate;
    c.observeProbe(25, before.t + 100); // the application's latency jumps: one sample
    expect(c.rate).toBeLessThanOrEqual(rate * 0.5 + 1e-9);
    expect(c.state().slowedBy).toBe('probe-spike');
    // A spike that lasts: every sample cuts again, down to the minimum.
    let t = before.t + 100;
    for (let i = 0; i < 20; i++) c.observeProbe(25, (t += 100));
    expect(c.rate).toBe(20);
    // It ends: the rate grows back.
    simulate(c, 30, noise(4, 0.03), t);
    expect(c.rate).toBeGreaterThan(1000);
  });

  it('slows down for the tail the median does not see: one probe in five delayed by the sweep', () => {
    // A sweep that collides with a share of the foreground's transactions proportional to its rate
    // (CPU or WAL flush queues), each collision doubling that transaction's latency: the median stays
    // at the baseline until half collide, the 90th percentile doubles as soon as one in ten does.
    const C = 10_000; // rows/s at which every probe collides
    const r = rng(11);
    const collide = (rate: number, n: () => number) => BASE * (1 + n()) * (r() < rate / C ? 2 : 1);
    const c = new LatencyController({ ratio: 1.1, maxRate: 0, relearnMs: 1e9 });
    const { rates, lats } = simulate(c, 120, noise(5, 0.03), 0, collide);
    const late = rates.slice(-600);
    // It holds the share of probes delayed near tailLimit (25%), not near the median's 50%.
    expect(mean(late) / C).toBeLessThan(0.3);
    expect(mean(late) / C).toBeGreaterThan(0.08);
    expect(c.state().cuts['probe-tail']).toBeGreaterThan(0);
    const delayed = lats.slice(-600).filter((x) => x > 1.5 * BASE).length / 600;
    expect(delayed).toBeLessThan(0.3);
  });

  it('a long-tailed foreground the sweep does not touch: the tail rule does not hold the rate down', () => {
    // Latencies with a heavy tail (lognormal-ish), whatever the rate: the baseline's 90th percentile
    // is exceeded by ~10% of the samples, well under tailLimit.
    const r = rng(13);
    const heavy = () => BASE * Math.exp(0.5 * Math.sqrt(-2 * Math.log(Math.max(r(), 1e-9))) * Math.cos(2 * Math.PI * r()));
    const c = new LatencyController({ ratio: 1.1, maxRate: 20_000, relearnMs: 1e9 });
    const { rates } = simulate(c, 120, () => 0, 0, () => heavy());
    expect(mean(rates.slice(-300))).toBeGreaterThan(0.5 * 20_000);
    // Learnings that agree are pooled (a steadier baseline); the target stays above the probe's noise.
    const pooled = new LatencyController({ ratio: 1.1, maxRate: 20_000, relearnMs: 5_000 });
    let t = 0;
    for (let i = 0; i < 12; i++) {
      ({ t } = simulate(pooled, 5, () => 0, t, () => heavy()));
      pooled.tick(t);
    }
    simulate(pooled, 2.5, () => 0, t, () => heavy());
    expect(pooled.state().baselineMs).toBeGreaterThan(0.85 * BASE);
    expect(pooled.state().baselineMs).toBeLessThan(1.15 * BASE);
    expect(pooled.state().targetMs).toBeGreaterThan(1.1 * pooled.state().baselineMs!);
  });

  it('a probe still in flight after an interval counts as a spike at once (a stall is seen before it ends)', () => {
    const c = new LatencyController({ ratio: 1.1, maxRate: 0, relearnMs: 1e9 });
    const { t } = simulate(c, 20, () => 0);
    const rate = c.rate;
    c.observeProbe(0.5, t + 50, true); // overdue but below any threshold: nothing
    expect(c.rate).toBe(rate);
    c.observeProbe(150, t + 150, true);
    expect(c.rate).toBeLessThan(rate);
    expect(c.state().slowedBy).toBe('probe-spike');
  });

  it('a lagging standby slows it down and holds its growth until the standby stops falling behind', () => {
    const c = new LatencyController({ ratio: 1.1, maxRate: 0, relearnMs: 1e9 });
    let { t } = simulate(c, 20, () => 0);
    const rate = c.rate;
    const lag = (mb: number) => ({ ...calm, standbyLagBytes: mb * 1048576 });
    c.observeLoad(lag(20), t);
    expect(c.rate).toBe(rate); // first reading: nothing to compare with
    c.observeLoad(lag(40), t);
    expect(c.rate).toBe(rate * 0.5);
    expect(c.state().slowedBy).toBe('standby-lag');
    const held = c.rate;
    ({ t } = simulate(c, 3, () => 0, t));
    expect(c.rate).toBe(held); // no growth while congested
    c.observeLoad(lag(30), t); // catching up
    simulate(c, 3, () => 0, t);
    expect(c.rate).toBeGreaterThan(held);
  });

  it('never exceeds max_rate nor goes below its minimum', () => {
    const c = new LatencyController({ ratio: 1.1, maxRate: 3000, relearnMs: 1e9 });
    const { rates } = simulate(c, 60, () => 0, 0, () => BASE); // a server that never slows down
    expect(Math.max(...rates)).toBeLessThanOrEqual(3000);
    expect(c.rate).toBe(3000);
    const low = new LatencyController({ ratio: 1.1, maxRate: 0, relearnMs: 1e9 });
    const r = simulate(low, 2.2, () => 0);
    simulate(low, 10, () => 0, r.t, () => 50 * BASE); // always far above target
    expect(low.rate).toBe(20);
  });

  it('does not run away above twice what the sweep achieves', () => {
    const c = new LatencyController({ ratio: 1.1, maxRate: 0, relearnMs: 1e9 });
    c.observeAchieved(NaN); // not measured yet: ignored
    c.observeAchieved(800);
    simulate(c, 30, () => 0, 0, () => BASE);
    expect(c.rate).toBeLessThanOrEqual(1600);
    expect(c.rate).toBeGreaterThan(800);
  });

  it('learns the baseline again every relearn interval (the sweep pauses meanwhile), keeping its rate', () => {
    const c = new LatencyController({ ratio: 1.1, maxRate: 0, relearnMs: 10_000 });
    const { t } = simulate(c, 5, () => 0);
    const rate = c.rate;
    expect(c.tick(t)).toBe(false);
    expect(c.tick(t + 10_000)).toBe(true);
    expect(c.rate).toBe(0);
    simulate(c, 2.2, () => 0, t + 10_000, () => 2 * BASE); // the foreground got heavier
    expect(c.state().baselineMs).toBeCloseTo(2 * BASE, 5);
    expect(c.rate).toBeGreaterThanOrEqual(rate);
  });
});

describe('load signals that slow the sweep', () => {
  it('lock waits behind pg-rekey, rising standby / slot lag and archiver backlog, slow WAL syncs', () => {
    expect(congestion({ ...calm, blockedByUs: 2 }, calm, null)?.reason).toBe('lock-waits');
    const mb = 1048576;
    expect(congestion({ ...calm, standbyLagBytes: 30 * mb }, { ...calm, standbyLagBytes: 20 * mb }, null)?.reason).toBe('standby-lag');
    expect(congestion({ ...calm, standbyLagBytes: 30 * mb }, { ...calm, standbyLagBytes: 40 * mb }, null)).toBeNull(); // catching up
    expect(congestion({ ...calm, standbyLagBytes: 2 * mb }, { ...calm, standbyLagBytes: 1 * mb }, null)).toBeNull(); // noise below the floor
    expect(congestion({ ...calm, slotLagBytes: 100 * mb }, { ...calm, slotLagBytes: 90 * mb }, null)?.reason).toBe('slot-lag');
    expect(congestion({ ...calm, archiverBacklog: 5 }, { ...calm, archiverBacklog: 3 }, null)?.reason).toBe('archiver-backlog');
    expect(congestion({ ...calm, walSyncMs: 4 }, calm, 1)?.reason).toBe('wal-sync');
    expect(congestion({ ...calm, walSyncMs: 1.2 }, calm, 1)).toBeNull();
    expect(congestion(calm, null, null)).toBeNull();
  });
});

describe('sweep modes', () => {
  const s = { mode: 'auto', chunkTimeMs: 5, niceRatio: 4, maxRate: 0, maxWalRate: 0 } as SweepSettings;
  it('auto paces (no nice_ratio sleep) only with a pacer; duty keeps chunk_time and nice_ratio; fast is unthrottled', () => {
    expect(chunkPolicy(s, { dryRun: false, paced: true, pacedChunkMs: 12 })).toEqual({ chunkTimeMs: 12, niceRatio: 0, pipeline: false, paced: true });
    expect(chunkPolicy(s, { dryRun: false, paced: false })).toEqual({ chunkTimeMs: 5, niceRatio: 4, pipeline: false, paced: false });
    expect(chunkPolicy({ ...s, mode: 'duty' }, { dryRun: false, paced: true })).toEqual({ chunkTimeMs: 5, niceRatio: 4, pipeline: false, paced: false });
    expect(chunkPolicy({ ...s, mode: 'fast' }, { dryRun: false, paced: true })).toEqual({ chunkTimeMs: 250, niceRatio: 0, pipeline: true, paced: false });
    expect(chunkPolicy({ ...s, mode: 'fast' }, { dryRun: true, paced: false }).pipeline).toBe(false);
  });
  it('max_rate and max_wal_rate are hard limits in duty and fast modes too', () => {
    expect(hardLimitWait(1000, 0, 100, { maxRate: 2000, maxWalRate: 0 })).toBe(400);
    expect(hardLimitWait(1000, 4_000_000, 100, { maxRate: 2000, maxWalRate: 1_000_000 })).toBe(3900);
    expect(hardLimitWait(1000, 1e9, 100, { maxRate: 0, maxWalRate: 0 })).toBe(0);
  });
});
