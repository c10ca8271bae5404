import { describe, expect, it } from 'vitest';
import { liveFigures, newerBackfill, shownState, sweepOverall } from '../../src/commands/status-truth.js';
import type { Segment } from '../../src/state/segments.js';

const seg = (o: Partial<Segment> & { etaSeconds?: number | null }): Segment & { etaSeconds: number | null } =>
  ({ tableName: 't', relation: 'public.t', segmentStart: 0, segmentEnd: null, nextBlock: 0, totalBlocks: 100, state: 'pending', generation: 1, chunks: 0, rowsScanned: 0, rowsRewritten: 0, rowsConflict: 0, rowsQuarantined: 0, startedAt: null, updatedAt: new Date(), finishedAt: null, chunkBlocks: null, rowsPerSec: null, lockTimeouts: 0, relfilenode: null, etaSeconds: null, ...o }) as Segment & { etaSeconds: number | null };

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
});
