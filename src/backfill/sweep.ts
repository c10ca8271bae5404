import type pg from 'pg';
import type { Logger } from '../logger.js';
import { keyVarName, type KeyRing } from '../crypto/key-ring.js';
import { parseVersionLabel, versionLabel } from '../crypto/envelope.js';
import type { SweepSettings } from '../config/load-config.js';
import { relationSize, type TableInfo } from '../db/catalog.js';
import { displayName, quoteQualified, type QualifiedName } from '../db/ident.js';
import { checkout, isRetryable } from '../db/connect.js';
import { arrayLiteral } from '../db/array-literal.js';
import { skipsTriggers, withTriggersSkipped } from '../db/triggers.js';
import type { OriginRelation, RewriteOrigin } from '../replication/origin.js';
import { RuntimeFailure } from '../errors.js';
import { backoffMs, sleep } from '../timing.js';
import { ensureSegment, advanceSegment, recordFilenode, recordStartBlocks, restartSegments, rewindSegment, type ChunkCounts } from '../state/segments.js';
import { keyOpenedBefore } from '../state/runs.js';
import { clearQuarantine, countQuarantine, recordQuarantine, type QuarantineEntry } from '../state/quarantine.js';
import { planChunk, type ChunkRange } from './chunk-plan.js';
import {
  evaluateRows, everyValueFailed, isRowError, judgeCas, mergeCounts, suspectWrongKey, withoutGivenUp, type CasJudgement, type CasReturned, type ChunkPlan, type RowKey, type ScannedRow,
} from './evaluate-rows.js';
import { casUpdateSql, rowKeysByCtidSql, selectChunkParams, selectChunkSql } from './sweep-sql.js';
import type { ProgressSink } from './progress.js';
import { ChunkController } from '../throttle/chunk-controller.js';
import type { LiveSettings } from '../throttle/live-settings.js';
import type { Throttle } from '../throttle/throttle.js';
import type { AutoPacer } from '../throttle/pacer.js';
import { parseLsn } from '../replication/lsn.js';
import { countVersions, type ColumnCounts } from '../verify/count-versions.js';

export interface SweepOptions {
  settings: SweepSettings;
  ring: KeyRing;
  dryRun?: boolean;
  restart?: boolean;
  /** backfill --from: only these versions are rewritten. */
  onlyVersions?: ReadonlySet<number>;
  signal?: AbortSignal;
  progress: ProgressSink;
  log: Logger;
  /** Called before every chunk; resolves when the sweep may go on (tests). */
  beforeChunk?: () => Promise<void>;
  /** Runtime overrides (`pg-rekey set`) re-read between chunks; without it `settings` is used as is. */
  live?: LiveSettings;
  /** Throttle signals (pause switch, replica lag, load); without it the sweep never waits. */
  throttle?: Throttle;
  /**
   * Told the 32-bit xid of every chunk's write transaction before it commits (run: the stream
   * then knows the changes it decodes from them are pg-rekey's, not an application's write).
   */
  onWriteXid?: (xid32: number) => void;
  /** sweep.mode auto: paces chunks to the latency controller's rate; without it auto sweeps as duty does. */
  pacer?: AutoPacer;
  /** The replication origin chunk writes carry (replication/origin.ts); without it, none. */
  origin?: RewriteOrigin;
  /** Values that opened, by version, added to at the end of the sweep (backfill records them: state/runs.ts keyOpenedBefore). */
  opened?: Map<number, number>;
}

/**
 * sweep.workers > 1 (backfill/worker-pool.ts): a leased block range of the relation is swept
 * instead of the whole relation, checkpointed in the range's row instead of the segment's.
 */
export interface RangeSpan {
  /** Resume here. */
  next: number;
  /** Exclusive; null = to the end of the relation. */
  end: number | null;
  /**
   * The fenced checkpoint, in the chunk's transaction (throws, rolling the chunk back, when the
   * lease is lost). `node`: the file node the chunk was read under, null when a rewrite was seen.
   */
  checkpoint(client: pg.ClientBase, next: number, done: boolean, node: string | null, counts: ChunkCounts): Promise<string | null>;
  /** The pause after a chunk (the pool's share of the rate budget), instead of the sweep's own. */
  pace(rows: number, walBytes: number, chunkStarted: number, chunkMs: number, settings: SweepSettings, signal?: AbortSignal): Promise<void>;
}

/** A range worker saw the table rewritten (its rows moved): the relation's generation starts over. */
export class TableRewritten extends Error {
  constructor(readonly relation: string) {
    super(REWRITTEN_MSG);
  }
}

/** The fast mode's chunk duration: much larger chunks were slower (2 s: ~75k rows/s against ~95k). */
export const FAST_CHUNK_MS = 250;

/** What a mode means for one chunk (pure): the chunk duration aimed at, the sleep after it, read-ahead. */
export function chunkPolicy(s: SweepSettings, opts: { dryRun: boolean; paced: boolean; pacedChunkMs?: number }): { chunkTimeMs: number; niceRatio: number; pipeline: boolean; paced: boolean } {
  if (s.mode === 'fast') return { chunkTimeMs: s.chunkTimeMs === 0 ? 0 : Math.max(s.chunkTimeMs, FAST_CHUNK_MS), niceRatio: 0, pipeline: !opts.dryRun, paced: false };
  if (s.mode === 'auto' && opts.paced) return { chunkTimeMs: s.chunkTimeMs === 0 ? 0 : (opts.pacedChunkMs ?? s.chunkTimeMs), niceRatio: 0, pipeline: false, paced: true };
  return { chunkTimeMs: s.chunkTimeMs, niceRatio: s.niceRatio, pipeline: !opts.dryRun && s.niceRatio === 0, paced: false };
}

export interface RelationResult extends ChunkCounts {
  table: string;
  relation: string;
  blocks: number;
  chunks: number;
  /** Already complete from an earlier run; nothing scanned now. */
  alreadyDone: boolean;
  /** WAL the server wrote during this relation's write transactions (other sessions' included), bytes. */
  walBytes: number;
  /** Write transactions committed (one per chunk that had something to write, or moved the checkpoint). */
  commits: number;
}

const MAX_CHUNK_RETRIES = 10;
/** A chunk read ahead is dropped when the throttle held the sweep longer than this before its turn. */
const STALE_PREFETCH_MS = 250;
/** The cached relation size is read again at least this often (progress, ETA). */
const SIZE_REFRESH_MS = 5_000;
const REWRITTEN_MSG =
  'the table was rewritten since the sweep passed its checkpoint (VACUUM FULL, CLUSTER, ALTER TABLE ... TYPE): its rows have moved; sweeping it again from block 0';

/** What a chunk's write did: counts, quarantine reasons, values a trigger replaced. */
interface ChunkWrite {
  counts: ChunkCounts;
  reasons: Record<string, number>;
  replaced: number;
  /** sha256 (hex) of the values whose rewrite did not stick: not tried again in this pass. */
  stuck: string[];
  /** WAL written meanwhile (the server's insert position moved by this much: other sessions' WAL included). */
  walBytes: number;
}

/** One chunk as read and evaluated, before its write. */
interface ChunkRead {
  total: number;
  range: ChunkRange;
  /** The chunk size it was planned with. */
  blocks: number;
  scanned: number;
  plan: ChunkPlan;
  /** The relation's file node as last seen when this chunk was read. */
  node: string | null;
}

/** The last chunk found the relation rewritten between its read and its write: nothing was written. */
class RelationRewritten extends Error {}

/**
 * One full sweep of every configured table (each leaf partition in turn).
 * Each chunk is one short transaction: select rows with non-target values in
 * a ctid block range, rewrite them with one batched compare-and-swap, record
 * failures in the quarantine, and checkpoint, all committed together, so a
 * crash anywhere replays at most one chunk.
 */
export async function sweepTables(pool: pg.Pool, tables: TableInfo[], opts: SweepOptions): Promise<RelationResult[]> {
  const results: RelationResult[] = [];
  const guard: KeyGuard = { opened: new Map(), macFailures: new Map(), firstFailure: new Map() };
  if (opts.restart && !opts.dryRun) {
    await restartSegments(pool, tables.flatMap((t) => t.leaves.map(displayName)));
    for (const t of tables) await pool.query(`delete from pgrekey.quarantine where table_name = $1 and source = 'sweep'`, [t.display]);
  }
  for (const table of tables) {
    for (const leaf of table.leaves) {
      if (opts.signal?.aborted) return results;
      try {
        results.push(await sweepRelation(pool, table, leaf, opts, guard));
      } catch (e) {
        // Values of this version quarantined in chunks already checkpointed would never be
        // read again after the key is fixed: move those relations back to their first failure.
        if (e instanceof WrongKeyError && !opts.dryRun) {
          for (const [rel, block] of guard.firstFailure.get(e.version) ?? []) await rewindSegment(pool, rel, block);
        }
        throw e;
      }
    }
  }
  await checkSomeOpened(pool, opts, guard, (rel, block) => rewindSegment(pool, rel, block));
  return results;
}

/**
 * At the end of a sweep (one worker or many). Below wrong_key_threshold the per-chunk guard never
 * fired, yet every value of a version that was read may have failed: a wrong key just as surely
 * (an old version with few values left). Stop as the threshold does, so that the operator hears it
 * instead of "values left"; `rewind` moves each relation back to its first failure.
 */
export async function checkSomeOpened(pool: pg.Pool, opts: SweepOptions, guard: KeyGuard, rewind: (rel: string, block: number) => Promise<void>): Promise<void> {
  if (opts.opened) mergeCounts(opts.opened, guard.opened);
  const unopened = opts.signal?.aborted ? null : everyValueFailed(guard.opened, guard.macFailures);
  // Unless this very key opened values of that version in an earlier run: then the ones left are corrupt (a --restart re-examining the quarantine).
  if (unopened !== null && !(await keyOpenedBefore(pool, opts.ring, unopened))) {
    if (!opts.dryRun) for (const [rel, block] of guard.firstFailure.get(unopened) ?? []) await rewind(rel, block);
    throw new NoneOpenedError(unopened, guard.macFailures.get(unopened)!);
  }
}

export function newKeyGuard(): KeyGuard {
  return { opened: new Map(), macFailures: new Map(), firstFailure: new Map() };
}

/** Per version, across the whole sweep: values opened, MAC failures, and where failures began. */
export interface KeyGuard {
  opened: Map<number, number>;
  macFailures: Map<number, number>;
  /** version -> relation -> first chunk start block with a MAC failure while no value of that version had opened. */
  firstFailure: Map<number, Map<string, number>>;
}

export class WrongKeyError extends RuntimeFailure {
  constructor(
    readonly version: number,
    failed: number,
    relation: string,
  ) {
    const label = versionLabel(version);
    super(
      `wrong key for ${label}? the first ${failed} ${label} values read (in ${relation}) all failed to decrypt, none succeeded; stopped`,
      `check that the ${label} key variable holds the key the application used for ${label}; nothing was written for the failing chunk, ` +
        `and the next run resumes from before the first ${label} value that failed (entries already in the quarantine are cleared when those values are rewritten)`,
    );
  }
}

/**
 * Whatever the count: every value of a version that was read failed to open (MAC failure), at
 * least one was read, and none opened. Threshold-free twin of the "wrong key?" guard (below it).
 */
class NoneOpenedError extends RuntimeFailure {
  constructor(
    readonly version: number,
    failed: number,
  ) {
    const label = versionLabel(version);
    super(
      `none of the ${failed} ${label} value(s) read opened with ${keyVarName(version)}: is it the application's ${label} key? stopped (below wrong_key_threshold, but not one ${label} value opened)`,
      `check that ${keyVarName(version)} holds the key the application used for ${label} (if it does, those values were corrupt before pg-rekey: see pgrekey.quarantine); ` +
        `they were left untouched (quarantined), and the next run reads them again from before the first one that failed`,
    );
  }
}

export async function sweepRelation(
  pool: pg.Pool,
  table: TableInfo,
  leaf: QualifiedName,
  opts: SweepOptions,
  guard: KeyGuard,
  span?: RangeSpan,
): Promise<RelationResult> {
  const relation = displayName(leaf);
  const log = opts.log.child({ component: 'sweep', table: table.display, relation });
  const columns = table.config.columns;
  const result: RelationResult = { table: table.display, relation, blocks: 0, chunks: 0, scanned: 0, rewritten: 0, conflicts: 0, quarantined: 0, alreadyDone: false, walBytes: 0, commits: 0 };
  const dry = opts.dryRun === true;
  // Chunk writes carry the replication origin when the leaf fires nothing on UPDATE (replication/origin.ts).
  const origin = opts.origin && !dry ? { origin: opts.origin, relations: [{ quoted: quoteQualified(leaf), replica: skipsTriggers(table) }] } : undefined;
  let next = span?.next ?? 0;
  const seg = dry || span ? null : await ensureSegment(pool, table.display, relation);
  if (seg?.state === 'done') {
    log.info({ generation: seg.generation, finishedAt: seg.finishedAt }, 'already swept in this generation; use --restart to sweep again');
    return { ...result, alreadyDone: true, blocks: seg.totalBlocks ?? 0 };
  }
  // A table rewrite (VACUUM FULL, CLUSTER, ALTER TABLE ... TYPE) gives the relation a new file node.
  // (A table dropped meanwhile has none, and fails at its first chunk, as before, not here.)
  const sizeNow = await relationSize(pool, quoteQualified(leaf));
  let knownNode = sizeNow.node;
  // The size when this pass started (block 0): progress, % and ETA count against it, not against a
  // size that grows as rewritten rows move to new pages (the sweep covers that tail too).
  let startBlocks = seg?.startBlocks ?? sizeNow.blocks ?? 0;
  const passStarts = async (blocks: number): Promise<void> => {
    startBlocks = blocks;
    if (!dry) await recordStartBlocks(pool, relation, blocks);
  };
  let rewrittenMidway = false;
  let prefetched: { start: number; read: Promise<ChunkRead> } | null = null;
  /** Rows moved under the sweep (a table rewrite): what it passed says nothing any more. Again from block 0. */
  const restartRelation = async (): Promise<void> => {
    if (span) throw new TableRewritten(relation);
    rewrittenMidway = false;
    prefetched = null;
    log.warn({ checkpoint: next }, REWRITTEN_MSG);
    await rewindSegment(pool, relation, 0);
    if (knownNode !== null) await recordFilenode(pool, relation, knownNode);
    next = 0;
    await passStarts((await relationSize(pool, quoteQualified(leaf))).blocks ?? 0);
  };
  if (seg) {
    next = seg.nextBlock;
    if (next > 0 && knownNode !== null && seg.relfilenode !== null && seg.relfilenode !== knownNode) await restartRelation();
    else if (knownNode !== null) await recordFilenode(pool, relation, knownNode);
    if (next > 0) log.info({ resumeAt: next }, 'resuming sweep');
    // A pass from block 0, or one begun before the size was recorded (sql/013).
    if (seg.nextBlock === 0 || seg.startBlocks === null) await passStarts(sizeNow.blocks ?? 0);
  }
  const hadQuarantine = !dry && (await countQuarantine(pool, table.display)) > 0;
  /** sha256 (hex) of values whose rewrite did not stick in this pass (a trigger kept the old value). */
  const givenUp = new Set<string>();
  // Row keys are read with every row only while the table has quarantine entries to clear.
  const withKeys = hadQuarantine;
  const keyed = opts.ring.versions;
  const started = Date.now();
  const policy = (s: SweepSettings) => chunkPolicy(s, { dryRun: dry, paced: opts.pacer !== undefined, pacedChunkMs: opts.pacer?.chunkTimeMs });
  const controllerSettings = (s: SweepSettings) => ({ targetMs: policy(s).chunkTimeMs, initialBlocks: s.chunkBlocks, minBlocks: s.minChunkBlocks, maxBlocks: s.maxChunkBlocks });
  let settings = opts.live ? (await opts.live.refresh()).sweep : opts.settings;
  const controller = new ChunkController(controllerSettings(settings));

  // The relation's size, read again only when a chunk may reach its end (the last chunk is
  // open-ended, so growth is never missed) or for progress every few seconds: one round trip
  // less per chunk. A table that shrank meanwhile (vacuum truncation) just yields empty chunks.
  // The same query also notices a table rewrite while the sweep runs (a new file node).
  let size: { blocks: number; at: number } | null = null;
  const relationBlocks = async (client: pg.ClientBase, start: number, blocks: number): Promise<number> => {
    if (size && start + blocks < size.blocks && Date.now() - size.at < SIZE_REFRESH_MS) return size.blocks;
    const now = await relationSize(client, quoteQualified(leaf));
    if (now.node !== knownNode) rewrittenMidway = true;
    knownNode = now.node;
    // A dropped table reads as empty here; its chunk's SELECT then fails as before (42P01).
    size = { blocks: now.blocks ?? 0, at: Date.now() };
    return size.blocks;
  };

  /**
   * Reads a chunk and decides every value's fate: in its own read-only transaction when read ahead
   * (the CAS makes a stale read harmless), else at the start of the chunk's write transaction.
   */
  const readChunk = (start: number, blocks: number, s: SweepSettings): Promise<ChunkRead> => inTransaction(pool, true, s, undefined, (client) => readOn(client, start, blocks));
  const readOn = async (client: pg.ClientBase, start: number, blocks: number): Promise<ChunkRead> => {
    const total = await relationBlocks(client, start, blocks);
    const range = planChunk(start, total, blocks, span?.end ?? null);
    const keys = withKeys ? table.keyColumns : null;
    const args = selectChunkParams(range, opts.ring.target, opts.onlyVersions, keys, keyed);
    const rows = await client.query({ text: selectChunkSql(leaf, columns, keys, range, args.fast), values: args.values, rowMode: 'array' });
    const scanned: ScannedRow[] = withKeys
      ? rows.rows.map((r: unknown[]) => ({ ctid: r[0] as string, rowKey: r[1] as RowKey, values: r.slice(2) as (string | null)[] }))
      : rows.rows.map((r: unknown[]) => ({ ctid: r[0] as string, values: r.slice(1) as (string | null)[] }));
    return { total, range, blocks, scanned: scanned.length, node: knownNode, plan: evaluateRows(scanned, columns, opts.ring, { onlyVersions: opts.onlyVersions }) };
  };

  /**
   * Failures read without their row's key get it by ctid, if the ctid still holds the value
   * that failed. Otherwise the row was updated since the read: its new version is the
   * stream's (and the next sweep's) to judge.
   */
  const withRowKeys = async <F extends { ctid: string; column: string; rowKey?: RowKey; sha256: Buffer }>(client: pg.ClientBase, failures: F[]): Promise<(F & { rowKey: RowKey })[]> => {
    const missing = [...new Set(failures.filter((f) => !f.rowKey).map((f) => f.ctid))];
    const found = new Map<string, { rowKey: RowKey; shas: (Buffer | null)[] }>();
    if (missing.length) {
      const r = await client.query({ text: rowKeysByCtidSql(leaf, table.keyColumns, columns), values: [missing, table.keyColumns], rowMode: 'array' });
      for (const row of r.rows as unknown[][]) found.set(row[0] as string, { rowKey: row[1] as RowKey, shas: row.slice(2) as (Buffer | null)[] });
    }
    return failures.flatMap((f) => {
      if (f.rowKey) return [{ ...f, rowKey: f.rowKey }];
      const now = found.get(f.ctid);
      const sha = now?.shas[columns.indexOf(f.column)];
      return now && sha && sha.equals(f.sha256) ? [{ ...f, rowKey: now.rowKey }] : [];
    });
  };

  /**
   * The chunk's compare-and-swap. Fast path: one batched statement. Row by row (after the
   * batch raised a row error): each row in its own savepoint, deferred constraints checked at
   * once, so a row that raises is rolled back alone and the others are written.
   */
  const compareAndSwap = async (client: pg.ClientBase, plan: ChunkPlan, range: ChunkRange, rowByRow: boolean): Promise<{ returned: CasReturned[]; raised: Map<string, unknown> }> => {
    const sql = casUpdateSql(leaf, columns, range, table.keyColumns);
    const params = (rows: number[] | null) => {
      const pick = <T,>(xs: T[]) => (rows === null ? xs : rows.map((i) => xs[i]!));
      // Array literals built here, not by node-postgres (db/array-literal.ts): the same text, cheaper.
      const out: unknown[] = [arrayLiteral(pick(plan.ctids))];
      columns.forEach((_, j) => out.push(arrayLiteral(pick(plan.olds[j]!)), arrayLiteral(pick(plan.news[j]!))));
      out.push(range.start, ...(range.end === null ? [] : [range.end]), table.keyColumns);
      return out;
    };
    const parse = (rows: Record<string, unknown>[]): CasReturned[] =>
      rows.map((row) => ({ tid: row.tid as string, kept: columns.map((_, j) => Number(row[`k${j}`])), rowKey: (row.row_key as RowKey | null) ?? null }));
    const raised = new Map<string, unknown>();
    if (!rowByRow) return { returned: parse((await client.query(sql, params(null))).rows), raised };
    const returned: CasReturned[] = [];
    await client.query('set constraints all immediate');
    await client.query('savepoint pgrekey_row');
    for (let i = 0; i < plan.ctids.length; i++) {
      try {
        returned.push(...parse((await client.query(sql, params([i]))).rows));
        await client.query('release savepoint pgrekey_row; savepoint pgrekey_row');
      } catch (e) {
        if (!isRowError(e)) throw e;
        await client.query('rollback to savepoint pgrekey_row');
        raised.set(plan.ctids[i]!, e);
      }
    }
    await client.query('release savepoint pgrekey_row');
    return { returned, raised };
  };

  /** The CAS, the quarantine and the checkpoint of one chunk, committed together. */
  const writeChunk = (r: ChunkRead, s: SweepSettings, chunkStarted: number, rowByRow: boolean): Promise<ChunkWrite> =>
    inTransaction(pool, false, s, origin, (client, walAtBegin) => writeOn(client, walAtBegin, r, chunkStarted, rowByRow));
  const writeOn = async (client: pg.ClientBase, walAtBegin: string | null, r: ChunkRead, chunkStarted: number, rowByRow: boolean): Promise<ChunkWrite> => {
    const { range, total } = r;
    if (range.end === null) {
      // The last chunk marks the relation done: make sure no rewrite (VACUUM FULL, CLUSTER, ...) moved its
      // rows since the read. The lock holds any rewrite off until this commits.
      await client.query(`lock table only ${quoteQualified(leaf)} in access share mode`);
      const now = (await relationSize(client, quoteQualified(leaf))).node;
      if (now !== r.node) {
        knownNode = now;
        throw new RelationRewritten();
      }
    }
    if (opts.onWriteXid) {
      const x = await client.query<{ x: string }>(`select pg_current_xact_id()::text as x`);
      opts.onWriteXid(Number(BigInt(x.rows[0]!.x) & 0xffffffffn));
    }
    // Before the CAS: a row it rewrites (another column of it) moves to a new ctid.
    const failures: (QuarantineEntry & { ctid: string })[] = (await withRowKeys(client, r.plan.failures)).map((f) => ({ ...f, table: table.display }));
    let judged: CasJudgement = { written: [], conflicts: 0, replaced: 0, failures: [] };
    // Values whose rewrite did not stick earlier in this pass (their rows moved ahead): not again.
    const { plan } = withoutGivenUp(r.plan, columns, givenUp);
    if (plan.ctids.length > 0) {
      // `triggers: skip`: the CAS alone runs in replica mode (db/triggers.ts), not the state writes below.
      const cas = await withTriggersSkipped(client, skipsTriggers(table), () => compareAndSwap(client, plan, range, rowByRow));
      judged = judgeCas(plan, columns, cas.returned, cas.raised);
      // A row that raised was rolled back: it is still at its ctid, with the value that failed.
      for (const f of await withRowKeys(client, judged.failures)) failures.push({ ...f, table: table.display });
    }
    const written = judged.written;
    // A failure whose row moved since the read is not recorded (nor counted): its new version is judged anew.
    const counts: ChunkCounts = { scanned: r.scanned, rewritten: written.length, conflicts: judged.conflicts + judged.replaced, quarantined: failures.length };
    await recordQuarantine(client, failures, 'sweep');
    if (hadQuarantine) await clearQuarantine(client, table.display, written.map((k) => ({ column: k.column, rowKey: k.rowKey! })));
    const took = Date.now() - chunkStarted;
    const walAtEnd = span
      ? await span.checkpoint(client, range.end ?? total, range.end === span.end, rewrittenMidway ? null : r.node, counts)
      : await advanceSegment(client, relation, range.end ?? total, total, range.end === null, counts, {
          chunkBlocks: r.blocks,
          rowsPerSec: controller.rate === null ? (counts.rewritten * 1000) / Math.max(took, 1) : controller.rate,
        });
    const walBytes = walAtBegin && walAtEnd ? Number(parseLsn(walAtEnd) - parseLsn(walAtBegin)) : 0;
    const reasons: Record<string, number> = {};
    for (const f of failures) reasons[f.reason] = (reasons[f.reason] ?? 0) + 1;
    const stuck = judged.failures.filter((f) => f.reason === 'did-not-stick').map((f) => f.sha256.toString('hex'));
    return { counts, reasons, replaced: judged.replaced, stuck, walBytes };
  };

  /** "Wrong key?": the values of a version read so far (this chunk included) all failed to open. */
  const checkKeys = (r: ChunkRead, s: SweepSettings): void => {
    const okSoFar = new Map(guard.opened);
    const badSoFar = new Map(guard.macFailures);
    mergeCounts(okSoFar, r.plan.opened);
    mergeCounts(badSoFar, r.plan.macFailures);
    const suspect = suspectWrongKey(okSoFar, badSoFar, s.wrongKeyThreshold);
    if (suspect !== null) throw new WrongKeyError(suspect, badSoFar.get(suspect)!, relation);
  };

  /**
   * One statement for the whole chunk is the fast path; only a chunk whose batch (or its commit, for a
   * deferred constraint) raised a row error pays for savepoints: written again in a transaction of its
   * own, from the same read (the CAS makes it safe).
   */
  const redoRowByRow = (r: ChunkRead, s: SweepSettings, chunkStarted: number, e: unknown): Promise<ChunkWrite> => {
    log.warn(
      { block: r.range.start, rows: r.plan.ctids.length, code: (e as { code?: string }).code },
      "a row's rewrite raised (a trigger, a CHECK or domain constraint, ...): the chunk's batch was rolled back; redoing it row by row, each row in its own savepoint",
    );
    return writeChunk(r, s, chunkStarted, true);
  };

  // With nice_ratio 0 the next chunk is read and evaluated (on a second connection) while the
  // current one is written (`prefetched`): PostgreSQL writes while Node decrypts. Throttled sweeps
  // stay serial, so the sweep never keeps two backends busy at once when it is asked to be gentle.
  opts.progress.start(relation, next);
  for (;;) {
    // The throttle may wait a long time: a stop requested meanwhile must not start another chunk.
    const gateStarted = Date.now();
    if (!opts.signal?.aborted) await opts.beforeChunk?.();
    if (!opts.signal?.aborted) await opts.throttle?.gate(opts.signal);
    if (!opts.signal?.aborted && opts.pacer && settings.mode === 'auto') await opts.pacer.beforeChunk(opts.signal);
    if (opts.live) {
      settings = (await opts.live.refresh()).sweep;
      controller.retune(controllerSettings(settings));
    }
    // A read older than a throttle wait is stale (more CAS conflicts): read again.
    if (Date.now() - gateStarted > STALE_PREFETCH_MS) prefetched = null;
    if (opts.signal?.aborted) {
      log.info({ nextBlock: next }, dry ? 'interrupted (dry run: nothing kept)' : 'interrupted; the next run resumes here');
      break;
    }
    const chunkStarted = Date.now();
    const onLockTimeout = async () => {
      opts.throttle?.noteLockWait();
      if (!dry) await pool.query(`update pgrekey.sweep_segment set lock_timeouts = lock_timeouts + 1 where relation = $1 and segment_start = 0`, [relation]).catch(() => undefined);
    };
    let chunkBlocks = controller.next();
    const retry: RetryHooks = {
      onLockTimeout,
      // A chunk too big to finish within statement_timeout must not be retried at the same size.
      onStatementTimeout: () => {
        controller.shrink();
        chunkBlocks = controller.next();
      },
      signal: opts.signal,
    };
    const s = settings;
    const { pipeline } = policy(s);
    let outcome: ({ read: ChunkRead } & ChunkWrite) | null = null;
    try {
      outcome = await withRetries(log, retry, async (attempt) => {
        // Only a first attempt may use the read made during the previous chunk's write.
        const ahead = attempt === 1 && prefetched?.start === next ? prefetched.read : null;
        prefetched = null;
        if (!ahead && !pipeline && !dry) {
          // One transaction reads and writes the chunk (3 round trips fewer than a read-only one before it).
          let read: ChunkRead | null = null;
          try {
            return await inTransaction(pool, false, s, origin, async (client, walAtBegin) => {
              const r = (read = await readOn(client, next, chunkBlocks));
              checkKeys(r, s);
              return { read: r, ...(await writeOn(client, walAtBegin, r, chunkStarted, false)) };
            });
          } catch (e) {
            if (!isRowError(e) || read === null) throw e;
            return { read, ...(await redoRowByRow(read, s, chunkStarted, e)) };
          }
        }
        const r = await (ahead ?? readChunk(next, chunkBlocks, s));
        checkKeys(r, s);
        if (pipeline && r.range.end !== null) {
          const nextRead = readChunk(r.range.end, controller.next(), s);
          nextRead.catch(() => undefined); // a read never used is dropped; a used one is awaited above
          prefetched = { start: r.range.end, read: nextRead };
        }
        if (dry) return { read: r, counts: { scanned: r.scanned, rewritten: r.plan.rewrittenKeys.length, conflicts: 0, quarantined: r.plan.failures.length }, reasons: {}, replaced: 0, stuck: [], walBytes: 0 };
        try {
          return { read: r, ...(await writeChunk(r, s, chunkStarted, false)) };
        } catch (e) {
          if (!isRowError(e)) throw e;
          return { read: r, ...(await redoRowByRow(r, s, chunkStarted, e)) };
        }
      });
    } catch (e) {
      if (!(e instanceof RelationRewritten)) throw e;
    }
    if (!outcome) {
      await restartRelation();
      continue;
    }
    const { read, counts, reasons, replaced, stuck, walBytes } = outcome;
    // Only after the commit: a rolled-back chunk gave up on nothing.
    for (const sha of stuck) givenUp.add(sha);
    const { total, range, plan } = read;
    chunkBlocks = read.blocks;
    // Only after the commit: a retried chunk must not count twice.
    mergeCounts(guard.opened, plan.opened);
    mergeCounts(guard.macFailures, plan.macFailures);
    for (const version of plan.macFailures.keys()) {
      if ((guard.opened.get(version) ?? 0) > 0) continue;
      const first = guard.firstFailure.get(version) ?? new Map<string, number>();
      // The lowest start: range workers meet failures out of block order.
      if (!first.has(relation) || first.get(relation)! > range.start) first.set(relation, range.start);
      guard.firstFailure.set(version, first);
    }
    result.chunks++;
    // Blocks swept so far (where the next chunk starts), not the relation's size: an interrupted sweep reports what it covered.
    result.blocks = range.end ?? total;
    result.scanned += counts.scanned;
    // A CAS conflict means the row changed after it was read; its new version is the stream's job.
    result.rewritten += counts.rewritten;
    result.conflicts += counts.conflicts;
    result.quarantined += counts.quarantined;
    result.walBytes += walBytes;
    if (!dry) result.commits++;
    if (counts.quarantined > 0) log.warn({ quarantined: counts.quarantined, block: range.start, reasons }, 'values could not be rewritten; recorded in pgrekey.quarantine and left untouched');
    if (replaced > 0) log.info({ replaced, block: range.start }, 'a trigger stored other values than the ones written; left as they are');
    const chunkMs = Date.now() - chunkStarted;
    controller.observe((range.end ?? total) - range.start, counts.rewritten, chunkMs);
    next = range.end ?? total;
    if (rewrittenMidway && !dry) {
      await restartRelation();
      continue;
    }
    opts.progress.chunk(relation, { nextBlock: next, totalBlocks: total, startBlocks, ...result, elapsedMs: Date.now() - started, chunkBlocks, rowsPerSec: controller.rate ?? 0 });
    if (range.end === (span ? span.end : null)) break;
    const p = policy(settings);
    if (span) await span.pace(counts.rewritten, walBytes, chunkStarted, chunkMs, settings, opts.signal);
    else if (p.paced) {
      await opts.pacer!.afterChunk(counts.rewritten, walBytes, chunkStarted, chunkMs, opts.signal);
      controller.retune(controllerSettings(settings));
    } else {
      const wait = Math.max(p.niceRatio * chunkMs, hardLimitWait(counts.rewritten, walBytes, chunkMs, settings));
      if (wait > 0) await sleep(wait, opts.signal);
    }
  }
  // An interrupted relation is not "swept": only its last chunk says that (a range's: the pool's).
  if (!opts.signal?.aborted && !span) opts.progress.finish(relation, result);
  return result;
}

/** Duty and fast modes: the sleep that keeps a chunk under sweep.max_rate and max_wal_rate (pure). */
export function hardLimitWait(rows: number, walBytes: number, chunkMs: number, s: Pick<SweepSettings, 'maxRate' | 'maxWalRate'>): number {
  const byRows = s.maxRate > 0 ? (rows * 1000) / s.maxRate : 0;
  const byWal = s.maxWalRate > 0 ? (walBytes * 1000) / s.maxWalRate : 0;
  return Math.max(0, Math.max(byRows, byWal) - chunkMs);
}

async function inTransaction<T>(pool: pg.Pool, readOnly: boolean, s: SweepSettings, marked: { origin: RewriteOrigin; relations: OriginRelation[] } | undefined, fn: (c: pg.PoolClient, walAtBegin: string | null) => Promise<T>): Promise<T> {
  const client = await checkout(pool);
  let withOrigin = false;
  try {
    withOrigin = marked ? await marked.origin.start(client, marked.relations) : false;
    await client.query(readOnly ? 'begin read only' : 'begin');
    // set_config(..., true) is SET LOCAL with the value as a parameter; the WAL insert position
    // comes with it (the chunk's WAL, for sweep.max_wal_rate and the WAL-per-row figures).
    const set = await client.query<{ lsn: string }>(`select set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true), pg_current_wal_insert_lsn()::text as lsn`, [
      String(s.statementTimeoutMs),
      String(s.lockTimeoutMs),
    ]);
    const out = await fn(client, set.rows[0]?.lsn ?? null);
    if (withOrigin) await marked!.origin.confirm(client, marked!.relations);
    await client.query(readOnly ? 'rollback' : 'commit');
    // Committed: a failed reset only costs the connection.
    client.release(withOrigin && !(await marked!.origin.end(client).then(() => true, () => false)) ? true : undefined);
    return out;
  } catch (e) {
    await client.query('rollback').catch(() => undefined);
    // A session that may still carry the origin never goes back to the pool.
    client.release(isRetryable(e) || withOrigin ? true : undefined);
    throw e;
  }
}

/** Lock and statement timeouts, dropped connections: wait and redo the chunk. */
interface RetryHooks {
  onLockTimeout: () => Promise<void>;
  onStatementTimeout: () => void;
  /** A stop requested while waiting to retry ends the wait and gives up on the chunk. */
  signal?: AbortSignal;
}

async function withRetries<T>(log: Logger, hooks: RetryHooks, fn: (attempt: number) => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (e) {
      if (!isRetryable(e) || attempt >= MAX_CHUNK_RETRIES || hooks.signal?.aborted) throw e;
      const code = (e as { code?: string }).code;
      if (code === '55P03') await hooks.onLockTimeout();
      if (code === '57014') hooks.onStatementTimeout();
      const waitMs = backoffMs(attempt, 250, 30_000);
      log.warn({ attempt, waitMs, code, reason: (e as Error).message }, 'chunk failed with a retryable error; retrying');
      await sleep(waitMs, hooks.signal);
      if (hooks.signal?.aborted) throw e;
    }
  }
}


/** Old-version values left in one configured column after a pass. */
export interface LeftColumn {
  table: string;
  column: string;
  /** Values of an old version (of the versions being rewritten, with --from). */
  remaining: number;
  /** Of those, quarantined (live entries: they still describe the stored value). */
  quarantined: number;
}

export interface LeftBehind {
  /** Columns that still hold old-version values. */
  columns: LeftColumn[];
  /**
   * Leaves to sweep again: they hold old-version values in a table where some are not
   * quarantined, so a pass can still rewrite them (a row moved or written behind the sweep).
   */
  resweep: { relation: string; remaining: number }[];
}

/**
 * What a pass left behind (pure): from verify's counts (with quarantine), the columns that
 * still hold old-version values, and the leaves worth another pass. Values that are all
 * quarantined are not: another pass would only find them again.
 */
export function leftBehind(counts: readonly ColumnCounts[], target: number, onlyVersions?: ReadonlySet<number>): LeftBehind {
  const columns: LeftColumn[] = [];
  const unexplained = new Map<string, number>();
  for (const c of counts) {
    const remaining = Object.entries(c.byVersion).reduce((n, [label, k]) => {
      const v = parseVersionLabel(label);
      return v === null || v === target || (onlyVersions && !onlyVersions.has(v)) ? n : n + k;
    }, 0);
    if (remaining === 0) continue;
    const quarantined = Math.min(remaining, c.quarantined ?? 0);
    columns.push({ table: c.table, column: c.column, remaining, quarantined });
    unexplained.set(c.table, (unexplained.get(c.table) ?? 0) + remaining - quarantined);
  }
  const byLeaf = new Map<string, number>();
  for (const c of counts) {
    if (!(unexplained.get(c.table) ?? 0)) continue;
    for (const [leaf, n] of Object.entries(c.nonTargetByLeaf ?? {})) if (n > 0) byLeaf.set(leaf, (byLeaf.get(leaf) ?? 0) + n);
  }
  return { columns, resweep: [...byLeaf].map(([relation, remaining]) => ({ relation, remaining })) };
}

/** Counts what a pass left behind in these tables (read-only; verify's counting, in ctid chunks). */
export async function countLeftBehind(pool: pg.Pool, tables: TableInfo[], target: number, onlyVersions?: ReadonlySet<number>): Promise<LeftBehind> {
  return leftBehind(await countVersions(pool, tables, target, true), target, onlyVersions);
}
