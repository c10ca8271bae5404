import type { Logger } from '../logger.js';
import { stderrLine, type StderrLine } from '../terminal/stderr-line.js';
import { passProgress } from './chunk-plan.js';

export interface ChunkProgress {
  nextBlock: number;
  /** The relation's size now (it grows as rows are rewritten). */
  totalBlocks: number;
  /** Its size when the pass started: % and ETA count against it (without it, totalBlocks). */
  startBlocks?: number;
  chunks: number;
  scanned: number;
  rewritten: number;
  conflicts: number;
  quarantined: number;
  elapsedMs: number;
  /** Size of the chunk just done, and the recent rewrite rate (EWMA). */
  chunkBlocks?: number;
  rowsPerSec?: number;
}

/** Where the sweep reports progress: a bar on a terminal, log lines otherwise. */
export interface ProgressSink {
  start(relation: string, nextBlock: number): void;
  chunk(relation: string, p: ChunkProgress): void;
  finish(relation: string, p: Omit<ChunkProgress, 'nextBlock' | 'totalBlocks' | 'elapsedMs' | 'chunkBlocks' | 'rowsPerSec'>): void;
}

function rate(p: ChunkProgress): number {
  return p.elapsedMs > 0 ? Math.round((p.rewritten * 1000) / p.elapsedMs) : 0;
}

/**
 * Seconds left, from blocks per second since `startBlock` (where this process began), for the blocks
 * left of the pass's starting size (the tail the table grew by is not counted); null until it can tell.
 */
export function etaSeconds(startBlock: number, p: ChunkProgress): number | null {
  const done = p.nextBlock - startBlock;
  if (done <= 0 || p.elapsedMs <= 0) return null;
  const left = Math.max(0, (p.startBlocks ?? p.totalBlocks) - p.nextBlock);
  return Math.max(0, Math.round((left * p.elapsedMs) / done / 1000));
}

/** What the log lines call things: a sweep's, a dry run's, verify --decrypt's. */
export interface ProgressLabels {
  component: string;
  /** Field names of the `rewritten` and `quarantined` counts. */
  rewritten: string;
  quarantined: string;
  progress: string;
  done: string;
  /** Report CAS conflicts (nothing is written by a check, so it has none). */
  conflicts: boolean;
}

const SWEEP_LABELS: ProgressLabels = { component: 'sweep', rewritten: 'rewritten', quarantined: 'quarantined', progress: 'sweep progress', done: 'relation swept', conflicts: true };
// A dry run's lines say what would be rewritten, never "rewritten".
const DRY_RUN_LABELS: ProgressLabels = { ...SWEEP_LABELS, rewritten: 'wouldRewrite', quarantined: 'wouldQuarantine', progress: 'dry run progress', done: 'relation scanned (dry run, nothing written)' };

/** Structured lines, at most one per interval per relation, plus one at the end. */
export class LogProgress implements ProgressSink {
  private readonly last = new Map<string, number>();
  private readonly startBlock = new Map<string, number>();
  private readonly labels: ProgressLabels;
  /** `labels`: true for a dry run, or the names of another kind of pass. */
  constructor(
    private readonly log: Logger,
    private readonly intervalMs: number,
    labels: boolean | ProgressLabels = false,
  ) {
    this.labels = labels === true ? DRY_RUN_LABELS : labels === false ? SWEEP_LABELS : labels;
  }

  private counts(p: { rewritten: number; quarantined: number }): Record<string, number> {
    return { [this.labels.rewritten]: p.rewritten, [this.labels.quarantined]: p.quarantined };
  }

  start(relation: string, nextBlock: number): void {
    this.startBlock.set(relation, nextBlock);
    this.last.set(relation, Date.now());
  }

  chunk(relation: string, p: ChunkProgress): void {
    const now = Date.now();
    if (now - (this.last.get(relation) ?? 0) < this.intervalMs) return;
    this.last.set(relation, now);
    const pass = passProgress(p.nextBlock, p.totalBlocks, p.startBlocks);
    this.log.info(
      {
        component: this.labels.component,
        relation,
        chunk: p.chunks,
        block: p.nextBlock,
        // The size when the pass started; the blocks the table grew by since are the tail.
        blocks: pass.of,
        percent: Number(pass.percent.toFixed(1)),
        ...(pass.grown > 0 ? { tailBlocks: pass.grown } : {}),
        ...this.counts(p),
        chunkBlocks: p.chunkBlocks,
        rowsPerSec: Math.round(p.rowsPerSec ?? rate(p)),
        etaSec: etaSeconds(this.startBlock.get(relation) ?? 0, p),
      },
      this.labels.progress,
    );
  }

  finish(relation: string, p: Parameters<ProgressSink['finish']>[1]): void {
    const { rewritten: _r, quarantined: _q, conflicts, ...rest } = p;
    this.log.info({ component: this.labels.component, relation, ...rest, ...(this.labels.conflicts ? { conflicts } : {}), ...this.counts(p) }, this.labels.done);
  }
}

/** Pads or shortens a relation name to a fixed column, keeping its end (the table name). */
function fit(relation: string, width = 32): string {
  return relation.length <= width ? relation.padEnd(width) : `…${relation.slice(relation.length - width + 1)}`;
}

/** One redrawn line per relation on a terminal (stderr's status line: log lines go above it). */
export class TtyProgress implements ProgressSink {
  private readonly startBlock = new Map<string, number>();
  constructor(
    private readonly verb = 'rewritten',
    private readonly out: StderrLine = stderrLine,
    private readonly finishDetail = (p: Parameters<ProgressSink['finish']>[1]) => `${p.conflicts} CAS conflicts, ${p.quarantined} quarantined`,
  ) {}

  start(relation: string, nextBlock: number): void {
    this.startBlock.set(relation, nextBlock);
  }

  chunk(relation: string, p: ChunkProgress): void {
    const pass = passProgress(p.nextBlock, p.totalBlocks, p.startBlocks);
    const pct = pass.percent;
    const width = 24;
    const filled = Math.round((pct / 100) * width);
    const eta = etaSeconds(this.startBlock.get(relation) ?? 0, p);
    this.out.draw(
      `${fit(relation)} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${pct.toFixed(1).padStart(5)}%` +
        `  ${p.rewritten} ${this.verb}  ${rate(p)}/s  ETA ${eta === null ? '?' : `${eta}s`}` +
        (pass.tailSwept > 0 ? `  (tail: ${pass.tailSwept} of ${pass.grown} blocks the table grew by)` : ''),
    );
  }

  finish(relation: string, p: Parameters<ProgressSink['finish']>[1]): void {
    this.out.end(`${fit(relation)} done: ${p.rewritten} ${this.verb}, ${this.finishDetail(p)}`);
  }
}

export const silentProgress: ProgressSink = { start() {}, chunk() {}, finish() {} };
