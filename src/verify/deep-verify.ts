import type pg from 'pg';
import type { Logger } from '../logger.js';
import type { SweepSettings } from '../config/load-config.js';
import type { KeyRing } from '../crypto/key-ring.js';
import { versionLabel } from '../crypto/envelope.js';
import { checkValue } from '../crypto/rewrite.js';
import { relationSize, type TableInfo } from '../db/catalog.js';
import { inTransaction } from '../db/connect.js';
import { displayName, quoteIdent, quoteQualified, type QualifiedName } from '../db/ident.js';
import { countedLeaves } from '../db/unlogged.js';
import { planChunk, type ChunkRange } from '../backfill/chunk-plan.js';
import type { ProgressSink } from '../backfill/progress.js';
import { ChunkController } from '../throttle/chunk-controller.js';
import type { LiveSettings } from '../throttle/live-settings.js';
import type { Throttle } from '../throttle/throttle.js';
import { sleep } from '../timing.js';
import { emptyColumn, MAX_FAILURE_DETAILS, tally, totals, type DeepColumn, type DeepFailure, type DeepTotals } from './deep-tally.js';

/**
 * `verify --decrypt`: opens every `v<N>:` value of the configured columns with the key of its
 * version (and forgets the plaintext). The rewrite path proves its own round trip; this checks
 * what the applications wrote: a target-version value that does not open with the target key
 * was written by an instance with another key (unreadable by the others), and an old-version
 * value that does not open with its old key would be quarantined by the rotation.
 *
 * Read like the sweep reads: ctid block ranges sized to sweep.chunk_time, one short read-only
 * statement each, behind the sweep's throttle (pause, replica lag, load) and nice_ratio. With
 * `sample`, only random block ranges are read, until `sample` values of each column of a
 * relation have been checked (or a bounded number of blocks was read).
 */
export interface DeepVerifyOptions {
  ring: KeyRing;
  /** Values per column of each relation, from random block ranges; undefined = every value. */
  sample?: number;
  settings: SweepSettings;
  live?: LiveSettings;
  throttle?: Throttle;
  progress: ProgressSink;
  signal?: AbortSignal;
  log: Logger;
}

export interface DeepRelation {
  table: string;
  relation: string;
  blocks: number;
  blocksRead: number;
  rowsRead: number;
}

export interface DeepVerifyResult {
  target: string;
  mode: 'full' | 'sample';
  /** --sample N: values per column of each relation (null for a full pass). */
  samplePerColumn: number | null;
  columns: DeepColumn[];
  /** The first MAX_FAILURE_DETAILS values that did not open: where (ctid as read), never what. */
  failures: DeepFailure[];
  totals: DeepTotals;
  relations: DeepRelation[];
  /** Stopped by a signal before the end: the counts cover part of the data. */
  interrupted: boolean;
  startedAt: string;
  finishedAt: string;
}

/** Blocks per random range of a sampled pass. */
const SAMPLE_RANGE_BLOCKS = 4;
/** A sampled pass reads at most max(this, 16 x N) blocks of a relation. */
const SAMPLE_MIN_BUDGET_BLOCKS = 64;

export async function runDeepVerify(pool: pg.Pool, tables: readonly TableInfo[], opts: DeepVerifyOptions): Promise<DeepVerifyResult> {
  const startedAt = new Date().toISOString();
  const columns: DeepColumn[] = [];
  const failures: DeepFailure[] = [];
  const relations: DeepRelation[] = [];
  const log = opts.log.child({ component: 'deep-verify' });
  for (const table of tables) {
    const cols = table.config.columns.map((c) => emptyColumn(table.display, c));
    columns.push(...cols);
    for (const leaf of countedLeaves(table)) {
      if (opts.signal?.aborted) break;
      const rel: DeepRelation = { table: table.display, relation: displayName(leaf), blocks: 0, blocksRead: 0, rowsRead: 0 };
      relations.push(rel);
      // The --sample bound is per column of each relation: values checked here so far, per column.
      const checked = cols.map(() => 0);
      let opened = 0;
      let failed = 0;
      const onRows = (rows: unknown[][]) => {
        for (const row of rows) {
          for (let j = 0; j < cols.length; j++) {
            const v = row[j + 1] as string | null;
            if (v === null || (opts.sample !== undefined && checked[j]! >= opts.sample)) continue;
            const outcome = checkValue(v, opts.ring);
            if (!outcome) continue;
            checked[j]!++;
            const c = cols[j]!;
            const kind = tally(c, outcome);
            if (kind === 'opened') opened++;
            if (kind === 'failed') {
              failed++;
              if (failures.length < MAX_FAILURE_DETAILS) {
                failures.push({ table: table.display, relation: rel.relation, column: c.column, ctid: row[0] as string, version: versionLabel(outcome.version), reason: outcome.outcome });
              }
            }
          }
        }
      };
      const enough = () => opts.sample !== undefined && checked.every((n) => n >= opts.sample!);
      await readRelation(pool, leaf, table.config.columns, rel, opts, { onRows, enough, counts: () => ({ checked: opened + failed, failed }) });
    }
  }
  const t = totals(columns, opts.ring.target);
  log.info({ mode: opts.sample === undefined ? 'full' : 'sample', ...t }, 'deep verify finished');
  return {
    target: versionLabel(opts.ring.target),
    mode: opts.sample === undefined ? 'full' : 'sample',
    samplePerColumn: opts.sample ?? null,
    columns,
    failures,
    totals: t,
    relations,
    interrupted: opts.signal?.aborted === true,
    startedAt,
    finishedAt: new Date().toISOString(),
  };
}

/** Rows of a block range holding a `v<N>:` value in any configured column: ctid, then the columns. */
function selectSql(leaf: QualifiedName, columns: readonly string[], range: ChunkRange): string {
  const bounds = `t.ctid >= format('(%s,0)', $1::bigint)::tid` + (range.end === null ? '' : ` and t.ctid < format('(%s,0)', $2::bigint)::tid`);
  const ours = columns.map((c) => `substr(t.${quoteIdent(c)}, 1, 12) ~ '^v[1-9][0-9]{0,8}:'`).join(' or ');
  return `select t.ctid::text, ${columns.map((c) => `t.${quoteIdent(c)}`).join(', ')} from only ${quoteQualified(leaf)} t where ${bounds} and (${ours})`;
}

async function readRange(pool: pg.Pool, leaf: QualifiedName, columns: readonly string[], range: ChunkRange, statementTimeoutMs: number): Promise<unknown[][]> {
  return inTransaction(pool, 'begin isolation level read committed read only', async (client) => {
    await client.query(`select set_config('statement_timeout', $1, true)`, [`${statementTimeoutMs}ms`]);
    const r = await client.query({ text: selectSql(leaf, columns, range), values: range.end === null ? [range.start] : [range.start, range.end], rowMode: 'array' });
    return r.rows as unknown[][];
  });
}

async function readRelation(
  pool: pg.Pool,
  leaf: QualifiedName,
  columns: readonly string[],
  rel: DeepRelation,
  opts: DeepVerifyOptions,
  hooks: { onRows: (rows: unknown[][]) => void; enough: () => boolean; counts: () => { checked: number; failed: number } },
): Promise<void> {
  const quoted = quoteQualified(leaf);
  const started = Date.now();
  let settings = opts.live ? (await opts.live.refresh()).sweep : opts.settings;
  const controller = new ChunkController({ targetMs: settings.chunkTimeMs, initialBlocks: settings.chunkBlocks, minBlocks: settings.minChunkBlocks, maxBlocks: settings.maxChunkBlocks });
  const first = (await relationSize(pool, quoted)).blocks;
  if (first === null) return; // dropped meanwhile: nothing left to check
  rel.blocks = first;
  const sampled = opts.sample !== undefined ? sampleRanges(first, Math.max(SAMPLE_MIN_BUDGET_BLOCKS, 16 * opts.sample)) : null;
  opts.progress.start(rel.relation, 0);
  let next = 0;
  let chunks = 0;
  for (;;) {
    if (opts.signal?.aborted || hooks.enough()) break;
    await opts.throttle?.gate(opts.signal);
    if (opts.signal?.aborted) break;
    if (opts.live) settings = (await opts.live.refresh()).sweep;
    let range: ChunkRange;
    if (sampled) {
      const start = sampled.next();
      if (start === null) break;
      range = planChunk(start, first, SAMPLE_RANGE_BLOCKS);
    } else {
      const total = (await relationSize(pool, quoted)).blocks;
      if (total === null) break;
      rel.blocks = total;
      range = planChunk(next, total, controller.next());
    }
    const t0 = Date.now();
    let rows: unknown[][];
    try {
      rows = await readRange(pool, leaf, columns, range, settings.statementTimeoutMs);
    } catch (e) {
      // Dropped meanwhile (run learns of it from its catalog watch): nothing left to check in it.
      if ((e as { code?: string }).code === '42P01') break;
      throw e;
    }
    const took = Date.now() - t0;
    const blocks = (range.end ?? Math.max(rel.blocks, range.start + 1)) - range.start;
    controller.observe(blocks, rows.length, took);
    rel.blocksRead += blocks;
    rel.rowsRead += rows.length;
    chunks++;
    hooks.onRows(rows);
    const n = hooks.counts();
    next = range.end ?? rel.blocks;
    opts.progress.chunk(rel.relation, {
      nextBlock: sampled ? rel.blocksRead : next,
      totalBlocks: sampled ? Math.min(rel.blocks, sampled.budget) : rel.blocks,
      chunks,
      scanned: rel.rowsRead,
      rewritten: n.checked,
      conflicts: 0,
      quarantined: n.failed,
      elapsedMs: Date.now() - started,
      chunkBlocks: blocks,
    });
    if (!sampled && range.end === null) break;
    // nice_ratio, as the sweep: sleep ratio x the time the chunk took.
    if (settings.niceRatio > 0) await sleep(settings.niceRatio * took, opts.signal);
  }
  const n = hooks.counts();
  opts.progress.finish(rel.relation, { chunks, scanned: rel.rowsRead, rewritten: n.checked, conflicts: 0, quarantined: n.failed });
}

/** Random block ranges of a relation, each once, until `budget` blocks have been handed out. */
export function sampleRanges(totalBlocks: number, budget: number, random: () => number = Math.random): { budget: number; next(): number | null } {
  const ranges = Math.max(1, Math.ceil(totalBlocks / SAMPLE_RANGE_BLOCKS));
  const allowed = Math.min(ranges, Math.ceil(budget / SAMPLE_RANGE_BLOCKS));
  // A partial Fisher-Yates over the range indices, kept sparse: a huge relation costs only what is drawn.
  const swapped = new Map<number, number>();
  let drawn = 0;
  return {
    budget: allowed * SAMPLE_RANGE_BLOCKS,
    next() {
      if (drawn >= allowed) return null;
      const j = drawn + Math.floor(random() * (ranges - drawn));
      const pick = swapped.get(j) ?? j;
      swapped.set(j, swapped.get(drawn) ?? drawn);
      drawn++;
      return pick * SAMPLE_RANGE_BLOCKS;
    },
  };
}
