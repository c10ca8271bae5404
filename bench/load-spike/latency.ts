// Foreground transaction samples and their summary. A sample's latency runs from the transaction's
// *scheduled* start (its slot in the fixed timetable), not from when a connection picked it up, so a
// stall shows up in every transaction that should have started during it (no coordinated omission).

export const KIND_READ = 0;
export const KIND_UPDATE = 1;

/** Columnar, so a minute of samples crosses the IPC channel cheaply. */
export interface Samples {
  /** Scheduled start, epoch ms (performance.timeOrigin + performance.now()). */
  scheduled: number[];
  /** ms from scheduled start to completion. */
  latency: number[];
  kind: number[];
  failed: number[];
}

export interface LatencySummary {
  /** Transactions scheduled inside the window. */
  scheduled: number;
  completed: number;
  failed: number;
  /** completed / window seconds. */
  ratePerSec: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
  readP99: number;
  updateP99: number;
  /** Transactions that took longer than 100 ms. */
  over100ms: number;
}

export function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

/** Summary of the samples scheduled in [from, to) (epoch ms). */
export function summarize(s: Samples, from: number, to: number): LatencySummary {
  const all: number[] = [];
  const reads: number[] = [];
  const updates: number[] = [];
  let scheduled = 0;
  let failed = 0;
  for (let i = 0; i < s.scheduled.length; i++) {
    const t = s.scheduled[i]!;
    if (t < from || t >= to) continue;
    scheduled++;
    if (s.failed[i]) {
      failed++;
      continue;
    }
    all.push(s.latency[i]!);
    (s.kind[i] === KIND_UPDATE ? updates : reads).push(s.latency[i]!);
  }
  const sorted = (xs: number[]) => Float64Array.from(xs).sort();
  const a = sorted(all);
  return {
    scheduled,
    completed: all.length,
    failed,
    ratePerSec: all.length / ((to - from) / 1000),
    p50: quantile(a, 0.5),
    p95: quantile(a, 0.95),
    p99: quantile(a, 0.99),
    max: a.length ? a[a.length - 1]! : NaN,
    readP99: quantile(sorted(reads), 0.99),
    updateP99: quantile(sorted(updates), 0.99),
    over100ms: all.filter((x) => x > 100).length,
  };
}
