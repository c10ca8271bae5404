import { describe, expect, it } from 'vitest';
import { aggregateRate, describeNewerVerify, liveFigures, newerBackfill, newerVerify, newestCount, shownState, sweepOverall } from '../../src/commands/status-truth.js';
import { renderOverall } from '../../src/commands/status.js';
import { passProgress } from '../../src/backfill/chunk-plan.js';
import { etaSeconds } from '../../src/backfill/progress.js';
import type { Segment } from '../../src/state/segments.js';

const seg = (o: Partial<Segment> & { etaSeconds?: number | null }): Segment & { etaSeconds: number | null } =>
  ({ tableName: 't', relation: 'public.t', segmentStart: 0, segmentEnd: null, nextBlock: 0, totalBlocks: 100, state: 'pending', generation: 1, chunks: 0, rowsScanned: 0, rowsRewritten: 0, rowsConflict: 0, rowsQuarantined: 0, startedAt: null, updatedAt: new Date(), finishedAt: null, chunkBlocks: null, rowsPerSec: null, lockTimeouts: 0, relfilenode: null, startBlocks: null, etaSeconds: null, ...o }) as Segment & { etaSeconds: number | null };

describe('status says what is true', () => {
  it('a running segment of a paused or throttled sweep is shown paused/throttled, without a rate or an ETA', () => {
    const s = seg({ state: 'running', rowsPerSec: 900, etaSeconds: 30 });
    expect(shownState(s, { paused: true, reason: null })).toBe('paused');
    expect(shownState(s, { paused: false, reason: 'replica lag' })).toBe('throttled');
    expect(shownState(s, { paused: false, reason: null })).toBe('running');
    expect(shownState(seg({ state: 'done' }), { paused: true, reason: null })).toBe('done');
    expect(liveFigures(s, 'paused')).toMatchObject({ rowsPerSec: null, etaSeconds: null });
    expect(liveFigures(s, 'running')).toMatchObject({ rowsPerSec: 900, etaSeconds: 30 });
  });

  it('the overall line counts blocks swept (done relations whole), an ETA only while one sweeps, pending relations at its pace', () => {
    const segs = [seg({ relation: 'a', state: 'done', nextBlock: 150, totalBlocks: 100 }), seg({ relation: 'b', state: 'running', nextBlock: 50, totalBlocks: 100, etaSeconds: 10 }), seg({ relation: 'c', state: 'pending', totalBlocks: 200 })];
    const o = sweepOverall(segs, (s) => (s.state === 'running' ? 'running' : s.state));
    expect(o).toMatchObject({ relations: 3, done: 1, blocksDone: 150, blocksTotal: 400, percent: 37.5 });
    expect(o.etaSeconds).toBeCloseTo(10 + 200 * (10 / 50));
    expect(sweepOverall(segs, (s) => (s.state === 'running' ? 'paused' : s.state)).etaSeconds).toBeNull();
  });

  it('progress counts against the size when the pass started: a table that grows as rows are rewritten never makes % go back', () => {
    // 983 blocks at the start; every rewritten row moves to a new page at the end (fillfactor 100).
    let last = -1;
    for (let next = 0; next <= 1965; next += 50) {
      const total = 983 + Math.min(next, 982);
      const p = passProgress(next, total, 983);
      expect(p.of).toBe(983);
      expect(p.percent).toBeGreaterThanOrEqual(last);
      last = p.percent;
      const o = sweepOverall([seg({ state: 'running', nextBlock: next, totalBlocks: total, startBlocks: 983 })], () => 'running');
      expect(o.blocksTotal).toBe(983);
      expect(o.blocksDone).toBe(Math.min(next, 983));
    }
    expect(passProgress(1500, 1965, 983)).toMatchObject({ done: 983, of: 983, percent: 100, grown: 982, tailSwept: 517 });
    // A done relation is all of its starting size; without a recorded start (before sql/013), the size now.
    expect(passProgress(1965, 1965, 983, true)).toMatchObject({ done: 983, percent: 100 });
    expect(passProgress(50, 100, null)).toMatchObject({ done: 50, of: 100, percent: 50, grown: 0 });
    // ETA: the blocks left of the starting size at the pace so far; 0 once in the tail.
    expect(etaSeconds(0, { nextBlock: 400, totalBlocks: 1383, startBlocks: 983, elapsedMs: 40_000, chunks: 1, scanned: 0, rewritten: 0, conflicts: 0, quarantined: 0 })).toBe(58);
    expect(etaSeconds(0, { nextBlock: 1200, totalBlocks: 1965, startBlocks: 983, elapsedMs: 40_000, chunks: 1, scanned: 0, rewritten: 0, conflicts: 0, quarantined: 0 })).toBe(0);
    const grown = sweepOverall([seg({ relation: 'a', state: 'done', nextBlock: 1965, totalBlocks: 1965, startBlocks: 983 }), seg({ relation: 'b', state: 'pending', totalBlocks: 17 })], (s) => s.state);
    expect(grown).toMatchObject({ blocksDone: 983, blocksTotal: 1000, percent: 98.3 });
  });

  it("a backfill that finished after the daemon's last check makes that check stale", () => {
    const t = (m: number) => new Date(Date.UTC(2026, 11, 2, 3, m));
    const runs = [
      { id: 3, command: 'backfill', startedAt: t(1), finishedAt: t(5), outcome: 'ok', summary: { converged: true, remaining: 0 } },
      { id: 2, command: 'run', startedAt: t(0), finishedAt: null, outcome: null, summary: null },
      { id: 1, command: 'backfill', startedAt: t(0), finishedAt: t(1), outcome: 'not-converged', summary: { converged: false, remaining: 9 } },
    ];
    expect(newerBackfill(runs, t(3))?.id).toBe(3);
    expect(newerBackfill(runs, t(6))).toBeNull();
    expect(newerBackfill(runs, null)?.id).toBe(3);
  });

  it('a verify newer than the daemon\'s last check makes that check stale, and says what it counted', () => {
    const t = (m: number) => new Date(Date.UTC(2026, 11, 2, 3, m));
    const v = { at: t(5), host: 'ops1', converged: false, remaining: 12 };
    expect(newerVerify(v, t(3))).toBe(v);
    expect(newerVerify(v, t(6))).toBeNull();
    expect(newerVerify(v, null)).toBe(v);
    expect(newerVerify(null, t(3))).toBeNull();
    expect(describeNewerVerify(v)).toBe('a verify at 2026-12-02T03:05:00.000Z on ops1 counted 12 old-version value(s) (NOT converged)');
    expect(describeNewerVerify({ ...v, remaining: 0, converged: true, host: null })).toBe('a verify at 2026-12-02T03:05:00.000Z counted 0 old-version value(s) (converged)');
  });

  it('the overall line: the newest count of daemon, backfill and verify with its age, and the rate of everything rewriting now', () => {
    const t = (m: number) => new Date(Date.UTC(2026, 11, 2, 3, m));
    const daemon = { lastCheckAt: t(4), remaining: 40, convergedAt: null };
    const runs = [{ id: 3, command: 'backfill', startedAt: t(1), finishedAt: t(6), outcome: 'ok', summary: { converged: false, remaining: 7 } }];
    const verify = { at: t(2), host: null, converged: false, remaining: 90 };
    expect(newestCount(daemon, runs, verify, t(9))).toEqual({ source: 'backfill', at: t(6), remaining: 7, converged: false, ageSeconds: 180 });
    expect(newestCount(daemon, [], verify, t(9))).toMatchObject({ source: 'daemon', remaining: 40, ageSeconds: 300 });
    expect(newestCount(null, [], { ...verify, at: t(8) }, t(9))).toMatchObject({ source: 'verify', remaining: 90, ageSeconds: 60 });
    expect(newestCount(null, [], null, t(9))).toBeNull();
    expect(aggregateRate([100.4, null, 50], 10)).toBe(160);
    expect(aggregateRate([null], null)).toBeNull();
    const o = { ...sweepOverall([seg({ state: 'running', nextBlock: 50, startBlocks: 100, totalBlocks: 150, etaSeconds: 30 })], () => 'running'), remaining: newestCount(daemon, runs, verify, t(9)), rowsPerSec: 160 };
    expect(renderOverall(o, { paused: false, reason: null })).toBe(
      'sweep: 0 of 1 relation(s) done, 50 of 100 blocks (50%), ETA ~30s; 7 old-version value(s) left at the newest count (backfill, 3m ago); 160 rows/s rewritten now',
    );
    expect(renderOverall({ ...o, etaSeconds: null, remaining: null, rowsPerSec: null }, { paused: true, reason: null })).toBe(
      'sweep: 0 of 1 relation(s) done, 50 of 100 blocks (50%), PAUSED: no ETA; no count of old-version values yet (`pg-rekey verify` counts); nothing rewriting now',
    );
  });
});
