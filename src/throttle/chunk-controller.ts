/**
 * Sizes sweep chunks to a target duration, in the spirit of
 * pt-online-schema-change's --chunk-time. Pure: feed it what each chunk
 * took, ask it for the next size.
 *
 * - An exponentially weighted average of blocks per millisecond (and rows
 *   per second, for progress) sizes the next chunk: target_ms * blocks/ms.
 * - Growth is clamped per step (x maxGrowth), so one fast, empty region does
 *   not produce a huge chunk just before a dense one. Start small.
 * - Shrinking is not clamped, and a chunk that overshoots the target by more
 *   than `overshoot` replaces the average with its own rate at once: one slow
 *   (TOAST-heavy, contended) chunk is followed by a small one, not by several
 *   more slow ones while an average catches up.
 */
export interface ControllerSettings {
  /** Target chunk duration; 0 = fixed chunks of initialBlocks. */
  targetMs: number;
  initialBlocks: number;
  minBlocks: number;
  maxBlocks: number;
  /** Largest factor by which one chunk may be bigger than the previous one. */
  maxGrowth?: number;
  /** Weight of the newest observation in the averages, 0..1. */
  alpha?: number;
  /** A chunk longer than overshoot * targetMs resets the average to its own rate. */
  overshoot?: number;
}

export class ChunkController {
  private blocksPerMs: number | null = null;
  private rowsPerSec: number | null = null;
  private size: number;
  private readonly s: Required<ControllerSettings>;

  constructor(settings: ControllerSettings) {
    this.s = { maxGrowth: 2, alpha: 0.3, overshoot: 2, ...settings };
    this.size = this.clamp(this.s.initialBlocks);
  }

  /** Blocks for the next chunk. */
  next(): number {
    return this.size;
  }

  /** Recent rows rewritten per second (EWMA), null before the first chunk. */
  get rate(): number | null {
    return this.rowsPerSec;
  }

  /** Updates the settings (runtime `pg-rekey set`), keeping what was learned. */
  retune(settings: Partial<ControllerSettings>): void {
    Object.assign(this.s, settings);
    this.size = this.clamp(this.s.targetMs > 0 ? this.size : this.s.initialBlocks);
  }

  observe(blocks: number, rows: number, elapsedMs: number): void {
    const ms = Math.max(elapsedMs, 0.5);
    const bpm = blocks / ms;
    const rps = (rows * 1000) / ms;
    const a = this.s.alpha;
    this.rowsPerSec = this.rowsPerSec === null ? rps : a * rps + (1 - a) * this.rowsPerSec;
    if (this.s.targetMs <= 0) return;
    const slow = elapsedMs > this.s.overshoot * this.s.targetMs;
    this.blocksPerMs = this.blocksPerMs === null || slow ? bpm : a * bpm + (1 - a) * this.blocksPerMs;
    const wanted = this.s.targetMs * this.blocksPerMs;
    this.size = this.clamp(Math.min(wanted, this.size * this.s.maxGrowth));
  }

  /** After a chunk failed on statement_timeout: a quarter of the size, and forget the average. */
  shrink(): void {
    this.size = this.clamp(this.size / 4);
    this.blocksPerMs = null;
  }

  private clamp(n: number): number {
    return Math.max(this.s.minBlocks, Math.min(this.s.maxBlocks, Math.max(1, Math.floor(n))));
  }
}
