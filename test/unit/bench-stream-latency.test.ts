// The bench's pure parts for the stream-latency scenario: BENCH_ONLY, the open-loop timetable, the target's verdict.
import { describe, expect, it } from 'vitest';
import { benchOnly } from '../../bench/load-spike/knobs.js';
import { openLoop } from '../../bench/load-spike/timetable.js';
import { streamTargetRow } from '../../bench/load-spike/stream-report.js';
import type { ScenarioResult } from '../../bench/load-spike/report.js';
import type { StreamLatency } from '../../bench/load-spike/stream-latency.js';

describe('BENCH_ONLY', () => {
  it('unset: every scenario; set: the listed ones and the baseline', () => {
    expect(benchOnly({})('duty')).toBe(true);
    const only = benchOnly({ BENCH_ONLY: 'stream-latency, default' });
    expect(['baseline', 'stream-latency', 'default', 'duty', 'pgbench'].map(only)).toEqual([true, true, true, false, false]);
  });
});

describe('openLoop', () => {
  it('dispatches `count` slots on the timetable, each with its due time, then finishes', async () => {
    const due: number[] = [];
    const t0 = performance.now();
    await openLoop(1000, (d, i) => (due[i] = d), 50).finished;
    expect(due).toHaveLength(50);
    expect(due[49]! - due[0]!).toBeCloseTo(49, 5);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(48);
  });
});

describe('stream latency target', () => {
  const stream = (p99: number, writesPerSec = 1000, sweep = 5000): ScenarioResult =>
    ({
      stream: {
        committed: 30_000,
        writesPerSec,
        notRewritten: 0,
        latency: { p50: 40, p95: 70, p99, max: 120, mean: 45, over100ms: 3 },
        duringWrites: { sweep, stream: 30_000, seconds: 30, visibilityWaitS: 0 },
      } as StreamLatency,
    }) as ScenarioResult;

  it('met only under 100 ms at the stated load', () => {
    expect(streamTargetRow(stream(80))[2]).toBe('met');
    expect(streamTargetRow(stream(100))[2]).toBe('**not met**');
    expect(streamTargetRow(stream(80, 700))[2]).toMatch(/not shown.*700 writes\/s/);
    expect(streamTargetRow(stream(80, 1000, 0))[2]).toMatch(/not shown.*sweep rewrote nothing/);
    expect(streamTargetRow(undefined)[2]).toBe('**not measured**');
  });

  it('a row never rewritten makes the p99 "never"', () => {
    expect(streamTargetRow(stream(Infinity))[1]).toMatch(/^p99 never \(p50 40.0 ms, p95 70.0 ms, max 120 ms\)/);
  });
});
