import { describe, expect, it } from 'vitest';
import { decide, type Signals } from '../../src/throttle/decide.js';
import { applyOverrides, parseAssignments, showSetting } from '../../src/throttle/live-settings.js';
import type { SweepSettings, ThrottleSettings } from '../../src/config/load-config.js';
import { ConfigError } from '../../src/errors.js';

const t: ThrottleSettings = {
  maxReplicaLagMs: 10_000, maxReplicaLagBytes: 1 << 30, maxActiveBackends: 8, criticalActiveBackends: 20,
  criticalAction: 'stop', hibernateMs: 60_000, pauseFile: '/tmp/x', checkIntervalMs: 1000,
};
const calm: Signals = { paused: false, pauseReason: null, pauseFile: false, replicaLagMs: 0, replicaLagBytes: 0, activeBackends: 1 };
const sweep: SweepSettings = {
  mode: 'auto', latencyRatio: 1.1, probeIntervalMs: 100, baselineIntervalMs: 30_000, maxRate: 0, maxWalRate: 0,
  chunkTimeMs: 100, chunkBlocks: 8, minChunkBlocks: 1, maxChunkBlocks: 8192, niceRatio: 0.5,
  statementTimeoutMs: 30_000, lockTimeoutMs: 2000, wrongKeyThreshold: 8, progressIntervalMs: 5000, workers: 1, rangeLeaseMs: 30_000,
};

describe('decide', () => {
  it('lets the sweep run when every signal is calm', () => {
    expect(decide(calm, t).reason).toBeNull();
  });

  it('each signal alone throttles, with a detail that names the threshold', () => {
    expect(decide({ ...calm, paused: true, pauseReason: 'month end' }, t)).toEqual({ reason: 'paused', detail: 'pg-rekey pause: month end' });
    expect(decide({ ...calm, pauseFile: true }, t).reason).toBe('pause-file');
    expect(decide({ ...calm, replicaLagMs: 12_000 }, t).detail).toMatch(/12000 ms > max_replica_lag 10000 ms/);
    expect(decide({ ...calm, replicaLagBytes: 2 ** 31 }, t).reason).toBe('replica-lag');
    expect(decide({ ...calm, activeBackends: 9 }, t).detail).toMatch(/9 active backends > max_active_backends 8/);
    expect(decide({ ...calm, activeBackends: 21 }, t).reason).toBe('critical-load');
  });

  it('critical load wins over everything; a threshold of 0 switches its signal off', () => {
    expect(decide({ ...calm, paused: true, activeBackends: 50 }, t).reason).toBe('critical-load');
    const off = { ...t, maxReplicaLagMs: 0, maxReplicaLagBytes: 0, maxActiveBackends: 0, criticalActiveBackends: 0 };
    expect(decide({ ...calm, replicaLagMs: 1e9, replicaLagBytes: 1e12, activeBackends: 500 }, off).reason).toBeNull();
  });
});

describe('runtime settings', () => {
  it('parses and validates name=value pairs', () => {
    expect(parseAssignments(['chunk-time=50ms', 'nice-ratio=0.5', 'max-replica-lag=2s', 'max-replica-lag-bytes=64MB'])).toHaveLength(4);
    let err: unknown;
    try {
      parseAssignments(['chunk-time=fast', 'bogus=1', 'nice-ratio', 'max-active-backends=-1']);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toHaveLength(4);
    expect((err as ConfigError).problems.join('\n')).toMatch(/bogus: not a runtime setting; one of mode, latency-ratio, max-rate, max-wal-rate, chunk-time/);
  });

  it('overrides win over the config, and show what is in effect', () => {
    const eff = applyOverrides({ sweep, throttle: t }, new Map([['chunk-time', '50ms'], ['nice-ratio', '2'], ['max-replica-lag', '2s'], ['critical-action', 'hibernate']]));
    expect(eff.sweep.chunkTimeMs).toBe(50);
    expect(eff.sweep.niceRatio).toBe(2);
    expect(eff.throttle.maxReplicaLagMs).toBe(2000);
    expect(eff.throttle.criticalAction).toBe('hibernate');
    expect(sweep.chunkTimeMs).toBe(100); // the config itself is untouched
    expect(showSetting('chunk-time', eff)).toBe('50ms');
  });
});
