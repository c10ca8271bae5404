/**
 * Which block range the next chunk covers. Pure. The last chunk is open-ended
 * (no upper ctid bound), so rows in blocks added while the sweep ran are not
 * missed; a TID range scan with only a lower bound reads to the end.
 */
export interface ChunkRange {
  start: number;
  /** Exclusive upper block; null = to the end of the relation. */
  end: number | null;
}

export function planChunk(nextBlock: number, totalBlocks: number, chunkBlocks: number, segmentEnd: number | null = null): ChunkRange {
  const limit = segmentEnd ?? totalBlocks;
  const end = nextBlock + Math.max(1, Math.floor(chunkBlocks));
  if (end >= limit) return { start: nextBlock, end: segmentEnd };
  return { start: nextBlock, end };
}

/** Percent of blocks done, for progress; 100 when the relation is empty. */
export function percentDone(nextBlock: number, totalBlocks: number): number {
  if (totalBlocks <= 0) return 100;
  return Math.min(100, (100 * nextBlock) / totalBlocks);
}
