import { describe, expect, it } from 'vitest';
import { rangeBlocks, splitRanges } from '../../src/backfill/range-lease.js';
import { planChunk } from '../../src/backfill/chunk-plan.js';

describe('sweep ranges (sweep.workers)', () => {
  it('cover the relation from the checkpoint with no gap and no overlap, the last open-ended', () => {
    for (const [from, total, size] of [[0, 0, 16], [0, 1, 16], [0, 16, 16], [0, 17, 16], [5, 1000, 16], [0, 100_000, 1563], [990, 1000, 16]] as const) {
      const rs = splitRanges(from, total, size);
      expect(rs[0]!.first).toBe(from);
      for (let i = 1; i < rs.length; i++) expect(rs[i]!.first).toBe(rs[i - 1]!.end);
      expect(rs.at(-1)!.end).toBeNull();
      expect(rs.slice(0, -1).every((r) => r.end! - r.first === size)).toBe(true);
    }
  });

  it('several ranges per worker, never tiny ones', () => {
    expect(rangeBlocks(100_000, 4)).toBe(3125);
    expect(rangeBlocks(100, 4)).toBe(16);
    expect(splitRanges(0, 100_000, rangeBlocks(100_000, 4)).length).toBe(32);
  });

  it("a range's chunks stop at its end, even when the relation is smaller now", () => {
    expect(planChunk(10, 1000, 8, 16)).toEqual({ start: 10, end: 16 });
    expect(planChunk(10, 12, 8, 16)).toEqual({ start: 10, end: 16 });
    expect(planChunk(0, 1000, 8, 16)).toEqual({ start: 0, end: 8 });
  });
});
