import type { GlobalFlags } from '../config/load-config.js';
import { openContext, requireState } from '../context.js';
import { loadKeyRing } from '../crypto/key-ring.js';
import { initSodium, memzero } from '../crypto/secretbox.js';
import { refuseHiddenRows } from '../db/row-security.js';
import { refuseTriggerSurprises } from '../db/triggers.js';
import { resolveTables } from '../db/catalog.js';
import { displayName } from '../db/ident.js';
import { ConfigError, EXIT_OK, RuntimeFailure } from '../errors.js';
import { LogProgress } from '../backfill/progress.js';
import { sweepWithWorkers } from '../backfill/worker-pool.js';
import { sweepPoolSize } from './backfill.js';
import { onShutdownSignals } from '../signals.js';
import { LiveSettings } from '../throttle/live-settings.js';
import { Throttle } from '../throttle/throttle.js';
import { autoPacer } from '../throttle/pacer.js';
import { rewriteOrigins } from '../replication/origin.js';

export interface SweepWorkerOptions {
  /** Workers in this process (default: sweep.workers). */
  workers?: string;
}

/**
 * Joins the sweep that `run` or `backfill` (with sweep.workers > 1) is doing, from another host:
 * leases block ranges of each relation's current generation until none is left, then exits 0.
 * Creates no slot and starts no sweep of its own: relations without a sweep segment (no sweep
 * started) or with a finished one are left alone, so the convergence argument (the sweep starts
 * after the slot) stays `run`'s.
 */
export async function sweepWorkerCommand(flags: GlobalFlags, opts: SweepWorkerOptions): Promise<number> {
  const workersFlag = opts.workers === undefined ? undefined : Number(opts.workers);
  if (workersFlag !== undefined && (!Number.isInteger(workersFlag) || workersFlag < 1 || workersFlag > 64)) {
    throw new ConfigError(`--workers ${opts.workers}: not a whole number from 1 to 64`, 'pass e.g. --workers 4');
  }
  const ring = loadKeyRing({ env: process.env, envFile: flags.envFile });
  await initSodium();
  const ctx = await openContext(flags, { poolSize: (c) => sweepPoolSize(workersFlag ?? c.sweep.workers), defaultLogLevel: 'info', waitForDatabaseMs: 120_000 });
  const abort = new AbortController();
  const stopSignals = onShutdownSignals(ctx.log, () => abort.abort());
  const log = ctx.log.child({ component: 'sweep-worker' });
  const live = new LiveSettings(ctx.pool, ctx.config, ctx.log);
  const pacer = autoPacer(ctx, live);
  try {
    await requireState(ctx.pool);
    const all = await resolveTables(ctx.pool, ctx.config.tables);
    await refuseHiddenRows(ctx.pool, all);
    await refuseTriggerSurprises(ctx.pool, all, ctx.log);
    // Only relations whose sweep was started by run or backfill (a segment row exists).
    const started = new Set((await ctx.pool.query<{ relation: string }>(`select relation from pgrekey.sweep_segment where segment_start = 0`)).rows.map((r) => r.relation));
    const tables = all.map((t) => ({ ...t, leaves: t.leaves.filter((l) => started.has(displayName(l))) })).filter((t) => t.leaves.length > 0);
    if (tables.length === 0) {
      throw new ConfigError('no sweep to join: no configured relation has a sweep segment yet', 'start `pg-rekey run` (or `pg-rekey backfill`) first; sweep-worker only helps a sweep they started');
    }
    const origin = (await rewriteOrigins(ctx.pool, ctx.config.replication.origin, ctx.config.replication.slot, ctx.log)).sweep;
    const workers = workersFlag ?? ctx.config.sweep.workers;
    log.info({ workers, relations: tables.flatMap((t) => t.leaves.map(displayName)) }, 'joining the sweep');
    const results = await sweepWithWorkers(ctx.pool, tables, {
      workers,
      leaseMs: ctx.config.sweep.rangeLeaseMs,
      role: 'sweep-worker',
      join: true,
      settings: ctx.config.sweep,
      live,
      throttle: new Throttle(ctx.pool, live, ctx.log),
      pacer,
      ring,
      origin,
      signal: abort.signal,
      progress: new LogProgress(ctx.log, ctx.config.sweep.progressIntervalMs),
      log: ctx.log,
    });
    if (abort.signal.aborted) throw new RuntimeFailure('interrupted by a signal', 'its ranges were released at their checkpoints: another worker (or `pg-rekey sweep-worker` again) resumes them');
    const rewritten = results.reduce((n, r) => n + r.rewritten, 0);
    log.info({ rewritten, relations: results.length }, 'no range of the current generations left to sweep');
    process.stdout.write(`${JSON.stringify({ relations: results.map((r) => ({ relation: r.relation, rewritten: r.rewritten, scanned: r.scanned, chunks: r.chunks, alreadyDone: r.alreadyDone })), rewritten })}\n`);
    return EXIT_OK;
  } finally {
    await pacer.stop();
    stopSignals();
    ring.wipe(memzero);
    await ctx.close();
  }
}
