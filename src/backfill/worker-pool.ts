import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type pg from 'pg';
import type { SweepSettings } from '../config/load-config.js';
import { relationSize, type TableInfo } from '../db/catalog.js';
import { displayName, quoteQualified, type QualifiedName } from '../db/ident.js';
import { ensureSegment, restartSegments, rewindSegment } from '../state/segments.js';
import { sleep } from '../timing.js';
import type { ProgressSink } from './progress.js';
import {
  advanceRange, claimRange, completeRelation, LeaseLost, liveWorkers, planRanges, rangesLeft, releaseRange, renewLease, rewindRanges, segmentGeneration, type LeasedRange,
} from './range-lease.js';
import {
  checkSomeOpened, chunkPolicy, hardLimitWait, newKeyGuard, sweepRelation, sweepTables, TableRewritten, WrongKeyError, type KeyGuard, type RangeSpan, type RelationResult, type SweepOptions,
} from './sweep.js';

export interface WorkerPoolOptions extends SweepOptions {
  /** Workers (connections) of this process; each leases ranges until none of the generation is left. */
  workers: number;
  /** Lease duration, ms: a range of a worker that stopped renewing it is taken again after this. */
  leaseMs: number;
  /** Names this process in the owner tokens (`sweep-worker` or `run`); host and pid are added. */
  role?: string;
  /** Join only (sweep-worker): never create a relation's segment, nor restart a generation with --restart. */
  join?: boolean;
}

/**
 * Sweeps every configured table: with one worker (or a dry run, which keeps no state) as
 * sweepTables always has; with more, on leased block ranges (range-lease.ts).
 */
export async function sweepAll(pool: pg.Pool, tables: TableInfo[], opts: SweepOptions & { workers: number; leaseMs: number; role?: string }): Promise<RelationResult[]> {
  if (opts.workers <= 1 || opts.dryRun) return sweepTables(pool, tables, opts);
  return sweepWithWorkers(pool, tables, opts);
}

/** The workers holding a lease now, of every process (read every lease/3): the rate budget's divisor. */
class Share {
  constructor(public current: number) {}
}

/**
 * N workers in this process sweep the relations one after another, all of them on the same
 * relation at a time, each leasing ranges of its current generation. A relation is complete only
 * when every range of the generation is done (completeRelation): a range of a worker that died is
 * waited for until its lease expires and is then taken again, never skipped.
 */
export async function sweepWithWorkers(pool: pg.Pool, tables: TableInfo[], opts: WorkerPoolOptions): Promise<RelationResult[]> {
  const processId = `${opts.role ?? 'sweep'}@${hostname()}/${process.pid}/${randomBytes(4).toString('hex')}`;
  const log = opts.log.child({ component: 'sweep-workers', process: processId });
  if (opts.restart && !opts.join) {
    await restartSegments(pool, tables.flatMap((t) => t.leaves.map(displayName)));
    for (const t of tables) await pool.query(`delete from pgrekey.quarantine where table_name = $1 and source = 'sweep'`, [t.display]);
  }
  const stop = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
  const guard = newKeyGuard();
  // Until the first count: this process's workers.
  const share = new Share(opts.workers);
  const results = new Map<string, RelationResult>();
  const pollMs = Math.max(50, Math.min(1000, opts.leaseMs / 4));
  let failure: unknown = null;

  const merge = (relation: string, table: string, r: RelationResult | null, alreadyDone = false) => {
    const m = results.get(relation) ?? { table, relation, blocks: 0, chunks: 0, scanned: 0, rewritten: 0, conflicts: 0, quarantined: 0, alreadyDone, walBytes: 0, commits: 0 };
    if (r) {
      m.blocks = Math.max(m.blocks, r.blocks);
      for (const k of ['chunks', 'scanned', 'rewritten', 'conflicts', 'quarantined', 'walBytes', 'commits'] as const) m[k] += r[k];
      m.alreadyDone = false;
    }
    results.set(relation, m);
  };

  const worker = async (n: number): Promise<void> => {
    const owner = `${processId}/${n}`;
    const wlog = log.child({ worker: n });
    for (const table of tables) {
      for (const leaf of table.leaves) {
        if (signal.aborted) return;
        // sweep-worker joins relations whose sweep run or backfill started; it never starts one.
        if (!opts.join) await ensureSegment(pool, table.display, displayName(leaf));
        await sweepLeaf(table, leaf, owner, wlog);
      }
    }
  };

  const sweepLeaf = async (table: TableInfo, leaf: QualifiedName, owner: string, wlog: typeof log): Promise<void> => {
    const relation = displayName(leaf);
    const quoted = quoteQualified(leaf);
    let swept = false;
    while (!signal.aborted) {
      const seg = await segmentGeneration(pool, relation);
      if (!seg || seg.done) {
        if (!swept) merge(relation, table.display, null, true);
        return;
      }
      await planRanges(pool, relation, async (c) => (await relationSize(c, quoted)).blocks ?? 0, opts.workers);
      const range = await claimRange(pool, relation, seg.generation, owner, opts.leaseMs);
      if (range) {
        swept = true;
        if (range.leases > 1) wlog.info({ relation, firstBlock: range.first, resumeAt: range.next, leases: range.leases }, 'range leased again (its worker stopped or lost its lease): resuming at its checkpoint');
        await sweepRange(table, leaf, range, owner, wlog);
        continue;
      }
      const left = await rangesLeft(pool, relation, seg.generation);
      if (left.pending === 0) {
        const c = await completeRelation(pool, relation, quoted, seg.generation);
        if (c === 'done') {
          wlog.info({ relation, generation: seg.generation, ranges: left.total }, 'every range of the generation swept: relation done');
          opts.progress.finish(relation, totals.get(relation) ?? { chunks: 0, scanned: 0, rewritten: 0, conflicts: 0, quarantined: 0 });
        } else if (c === 'rewritten') await restartGeneration(relation, seg.generation, wlog);
        continue;
      }
      // Ranges leased by other workers: wait until they are done, or their lease expires (then take them).
      await sleep(pollMs, signal);
    }
  };

  const restartGeneration = async (relation: string, generation: number, wlog: typeof log) => {
    const r = await pool.query(`select 1 from pgrekey.sweep_segment where relation = $1 and segment_start = 0 and generation = $2`, [relation, generation]);
    if (!r.rowCount) return; // another worker restarted it already
    wlog.warn({ relation, generation }, 'the table was rewritten while its ranges were swept (VACUUM FULL, CLUSTER, ALTER TABLE ... TYPE): its rows moved; sweeping it again from block 0');
    await restartSegments(pool, [relation]);
  };

  const sweepRange = async (table: TableInfo, leaf: QualifiedName, range: LeasedRange, owner: string, wlog: typeof log): Promise<void> => {
    const renewing = setInterval(() => {
      void renewLease(pool, range, owner, opts.leaseMs).then(
        (ok) => ok || wlog.warn({ relation: range.relation, firstBlock: range.first }, 'range lease lost (expired and taken by another worker?): its next checkpoint will fail and roll back'),
        () => undefined,
      );
    }, Math.max(100, opts.leaseMs / 3));
    const span: RangeSpan = {
      next: range.next,
      end: range.end,
      checkpoint: (c, next, done, node, counts) => advanceRange(c, range, owner, opts.leaseMs, next, done, node, counts),
      pace: (rows, wal, started, chunkMs, s) => pace(rows, wal, started, chunkMs, s),
    };
    try {
      merge(range.relation, table.display, await sweepRelation(pool, table, leaf, { ...opts, signal, progress: rangeProgress(range.relation) }, guard, span));
    } catch (e) {
      if (e instanceof LeaseLost) wlog.warn({ err: e }, 'range lease lost: leaving the range to its new owner');
      else if (e instanceof TableRewritten) await restartGeneration(range.relation, range.generation, wlog);
      else throw e;
    } finally {
      clearInterval(renewing);
      // A stop leaves the range at its checkpoint for the next worker, without waiting for the lease to expire.
      if (signal.aborted) await releaseRange(pool, range, owner).catch(() => undefined);
    }
  };

  // The sink sees one relation's progress, added up over the ranges its workers sweep at once
  // (each range's sweep counts from 0): started once, counts that only grow.
  const totals = new Map<string, { chunks: number; scanned: number; rewritten: number; conflicts: number; quarantined: number }>();
  const rangeProgress = (relation: string): ProgressSink => {
    const last = { chunks: 0, scanned: 0, rewritten: 0, conflicts: 0, quarantined: 0 };
    return {
      start: (rel, next) => {
        if (totals.has(rel)) return;
        totals.set(rel, { chunks: 0, scanned: 0, rewritten: 0, conflicts: 0, quarantined: 0 });
        opts.progress.start(rel, next);
      },
      chunk: (rel, p) => {
        const t = totals.get(relation)!;
        for (const k of ['chunks', 'scanned', 'rewritten', 'conflicts', 'quarantined'] as const) {
          t[k] += p[k] - last[k];
          last[k] = p[k];
        }
        opts.progress.chunk(rel, { ...p, ...t });
      },
      finish: () => undefined,
    };
  };

  /** The pause after a chunk: each worker's share of the rate budget (max_rate, max_wal_rate, the auto rate, nice_ratio). */
  const pace = async (rows: number, walBytes: number, started: number, chunkMs: number, s: SweepSettings): Promise<void> => {
    const k = Math.max(1, share.current);
    const p = chunkPolicy(s, { dryRun: false, paced: opts.pacer !== undefined, pacedChunkMs: opts.pacer?.chunkTimeMs });
    if (p.paced) return opts.pacer!.afterChunk(rows, walBytes, started, chunkMs, signal, k);
    // nice_ratio n: one worker is busy 1/(1+n) of the time; k workers each sleep so that together they are too.
    const nice = p.niceRatio > 0 ? chunkMs * ((1 + p.niceRatio) * k - 1) : 0;
    const wait = Math.max(nice, hardLimitWait(rows, walBytes, chunkMs, { maxRate: s.maxRate / k, maxWalRate: s.maxWalRate / k }));
    if (wait > 0) await sleep(wait, signal);
  };

  const counting = setInterval(() => {
    void liveWorkers(pool).then(
      (n) => (share.current = Math.max(1, n)),
      () => undefined,
    );
  }, Math.max(100, opts.leaseMs / 3));
  const runners = Array.from({ length: opts.workers }, (_, i) =>
    worker(i + 1).catch((e) => {
      failure ??= e;
      stop.abort();
    }),
  );
  await Promise.all(runners);
  clearInterval(counting);
  if (failure) {
    if (failure instanceof WrongKeyError) await rewindAfterWrongKey(pool, guard, failure.version);
    throw failure;
  }
  await checkSomeOpened(pool, opts, guard, async (rel, block) => {
    await rewindRanges(pool, rel, block);
    await rewindSegment(pool, rel, block);
  });
  return tables.flatMap((t) => t.leaves.map(displayName)).flatMap((rel) => (results.has(rel) ? [results.get(rel)!] : []));
}

/** Values of the failing version quarantined in ranges already checkpointed would never be read again: back to the first failure. */
async function rewindAfterWrongKey(pool: pg.Pool, guard: KeyGuard, version: number): Promise<void> {
  for (const [rel, block] of guard.firstFailure.get(version) ?? []) {
    await rewindRanges(pool, rel, block);
    await rewindSegment(pool, rel, block);
  }
}
