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

/** Where a pass stands against the relation's size when it started (pure). */
export interface PassProgress {
  /** Blocks of the starting size swept (all of them once the pass is done). */
  done: number;
  /** The starting size: what % and ETA count against. */
  of: number;
  /** Blocks the relation grew by since (rewritten rows moved to new pages, inserts): the tail. */
  grown: number;
  /** Of the tail, blocks swept so far. */
  tailSwept: number;
  percent: number;
}

/**
 * A pass's progress against the size when it started: rewriting rows grows a table (an UPDATE
 * writes a new row version, at its end when the pages are full), and the sweep covers that tail
 * too, but % never goes backwards and the total stays the size it started with. Without a
 * recorded starting size (a pass begun before sql/013), the size now.
 */
export function passProgress(nextBlock: number, totalBlocks: number | null, startBlocks: number | null | undefined, finished = false): PassProgress {
  const total = totalBlocks ?? 0;
  const of = startBlocks ?? total;
  const done = finished ? of : Math.min(nextBlock, of);
  return { done, of, grown: Math.max(0, total - of), tailSwept: Math.max(0, Math.min(nextBlock, total) - of), percent: finished ? 100 : percentDone(done, of) };
}
