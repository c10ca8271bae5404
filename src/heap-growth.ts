import v8 from 'node:v8';

/**
 * How far V8 lets the heap grow past what survived its last full collection, in percent.
 * By default it picks a factor of up to 4 when it sees a high allocation rate and plenty of
 * memory: a `backfill --fast` of 1M rows, whose chunks (~11k rows each, one being written while
 * the next is read) keep ~20-40 MB alive, grew its heap to 185 MB and its RSS to 250-285 MB,
 * climbing chunk after chunk. Bounded at 1.5x, the collector runs more often on a small heap
 * (measured: see bench/RSS.md).
 */
export const HEAP_GROWING_PERCENT = 50;

/**
 * Sets V8's heap growing factor for this process (read at every full collection, so it applies
 * although the heap is already set up). Call once, first thing.
 */
export function boundHeapGrowth(percent = HEAP_GROWING_PERCENT): void {
  v8.setFlagsFromString(`--heap-growing-percent=${percent}`);
}
