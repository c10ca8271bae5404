import type { GlobalFlags } from '../config/load-config.js';
import { openContext, requireState } from '../context.js';
import { loadKeyRing, keyVarName, type KeyRing } from '../crypto/key-ring.js';
import { parseVersionLabel, versionLabel } from '../crypto/envelope.js';
import { initSodium, memzero } from '../crypto/secretbox.js';
import { proveTargetKey } from '../crypto/target-proof.js';
import { refuseHiddenRows } from '../db/row-security.js';
import { refuseTriggerSurprises } from '../db/triggers.js';
import { unloggedBackfillWarning } from '../db/unlogged.js';
import { resolveTables } from '../db/catalog.js';
import { ConfigError, EXIT_NOT_CONVERGED, EXIT_OK, RuntimeFailure } from '../errors.js';
import { renderTable } from '../format.js';
import { LogProgress, TtyProgress } from '../backfill/progress.js';
import { countLeftBehind, type LeftBehind, type RelationResult } from '../backfill/sweep.js';
import { sweepAll } from '../backfill/worker-pool.js';
import { displayName } from '../db/ident.js';
import { rememberLeaves, restartSegments } from '../state/segments.js';
import { finishRun, openedSummary, startRun } from '../state/runs.js';
import { onShutdownSignals } from '../signals.js';
import { LiveSettings } from '../throttle/live-settings.js';
import { Throttle } from '../throttle/throttle.js';
import { autoPacer, type AutoPacer } from '../throttle/pacer.js';
import { withMode } from '../throttle/live-settings.js';
import { rewriteOrigins } from '../replication/origin.js';

export interface BackfillOptions {
  dryRun?: boolean;
  restart?: boolean;
  from?: string;
  json?: boolean;
  /** Unthrottled (sweep.mode fast): for a suspected key compromise. */
  fast?: boolean;
}

/** Parses --from v1[,v3]: old versions that have a key. */
export function parseFrom(from: string | undefined, ring: KeyRing): Set<number> | undefined {
  if (from === undefined) return undefined;
  const out = new Set<number>();
  for (const part of from.split(',')) {
    const v = parseVersionLabel(part);
    if (v === null) throw new ConfigError(`--from ${from}: "${part}" is not a version like v1`, 'pass e.g. --from v1 or --from v1,v3');
    if (v === ring.target) throw new ConfigError(`--from ${versionLabel(v)} is the target version; nothing to rewrite`, 'name old versions only');
    if (!ring.has(v)) throw new ConfigError(`--from ${versionLabel(v)}: no key configured`, `set ${keyVarName(v)}`);
    out.add(v);
  }
  return out;
}

/** Connections for a sweep of `workers` workers: each may read one chunk ahead on a second one; plus the pacer's and the state's. */
export function sweepPoolSize(workers: number): number {
  return 1 + 2 * Math.max(1, workers);
}

export const BACKFILL_CONNECT_WAIT_MS = 120_000;

/** Passes over relations that still hold old-version values after the first one. */
export const MAX_EXTRA_PASSES = 3;

/** A relation's results over every pass that swept it. */
export interface BackfillRelation extends RelationResult {
  /** Passes that swept it (1, or more when old values were found behind the sweep). */
  passes: number;
}

/**
 * One full sweep of every configured table, then a recount: no stream runs during a backfill,
 * so a value written or moved behind the sweep (an application UPDATE of another column moves
 * a row to another block) is left behind. Relations that still hold old-version values that
 * are not quarantined are swept again, at most MAX_EXTRA_PASSES times. Exit 1 when old-version
 * values remain (quarantined, or still being written), with a report of what and why.
 */
export async function backfillCommand(flags: GlobalFlags, opts: BackfillOptions): Promise<number> {
  const ring = loadKeyRing({ env: process.env, envFile: flags.envFile });
  const onlyVersions = parseFrom(opts.from, ring);
  await initSodium();
  // Waits up to 2 minutes for an unreachable database (about what a chunk's retries ride out), then exits 3.
  const ctx = await openContext(flags, { poolSize: (c) => sweepPoolSize(c.sweep.workers), defaultLogLevel: 'info', waitForDatabaseMs: BACKFILL_CONNECT_WAIT_MS });
  const abort = new AbortController();
  const stopSignals = onShutdownSignals(ctx.log, () => abort.abort());
  const log = ctx.log.child({ component: 'backfill' });
  let runId: number | null = null;
  let pacer: AutoPacer | undefined;
  try {
    if (!opts.dryRun) await requireState(ctx.pool);
    const tables = await resolveTables(ctx.pool, ctx.config.tables);
    await refuseHiddenRows(ctx.pool, tables);
    // Triggers a rewrite would fire without a decision (one created since setup), or a `skip` this role may not do.
    await refuseTriggerSurprises(ctx.pool, tables, ctx.log);
    // backfill alone may rewrite an UNLOGGED relation, but nothing follows its writes afterwards.
    const unlogged = unloggedBackfillWarning(tables);
    if (unlogged) log.warn({ relations: unlogged.relations }, unlogged.message);
    // Before anything is written (a dry run too): the target key must open what the applications wrote with it.
    await proveTargetKey(ctx.pool, tables, ring, ctx.log);
    // A dry run writes nothing, so it carries no origin either.
    const origin = opts.dryRun ? undefined : (await rewriteOrigins(ctx.pool, ctx.config.replication.origin, ctx.config.replication.slot, ctx.log)).sweep;
    // Every leaf remembered before the sweep: one that leaves before the sweep reaches it stays listed by verify.
    if (!opts.dryRun) await rememberLeaves(ctx.pool, tables);
    if (!opts.dryRun) runId = await startRun(ctx.pool, 'backfill', ring);
    const tty = process.stderr.isTTY === true && !opts.json;
    // A dry run writes nothing (not even the throttle state) and may run before setup: it is not throttled.
    const config = withMode(ctx.config, opts.fast ? 'fast' : undefined);
    const live = opts.dryRun ? undefined : new LiveSettings(ctx.pool, config, ctx.log);
    const throttle = live ? new Throttle(ctx.pool, live, ctx.log) : undefined;
    pacer = live ? autoPacer(ctx, live) : undefined;
    // Values that opened, by version: recorded with the run (the evidence that these keys are right).
    const opened = new Map<number, number>();
    const sweepOpts = {
      opened,
      workers: config.sweep.workers,
      leaseMs: config.sweep.rangeLeaseMs,
      role: 'backfill',
      origin,
      settings: config.sweep,
      live,
      throttle,
      pacer,
      ring,
      dryRun: opts.dryRun,
      onlyVersions,
      signal: abort.signal,
      progress: tty ? new TtyProgress(opts.dryRun ? 'would be rewritten' : 'rewritten') : new LogProgress(ctx.log, ctx.config.sweep.progressIntervalMs, opts.dryRun === true),
      log: ctx.log,
    };
    const passes: RelationResult[][] = [await sweepAll(ctx.pool, tables, { ...sweepOpts, restart: opts.restart })];
    // A dry run wrote nothing: a recount would find every value it would have rewritten.
    let left: LeftBehind | null = null;
    while (!opts.dryRun && !abort.signal.aborted) {
      left = await countLeftBehind(ctx.pool, tables, ring.target, onlyVersions);
      if (left.resweep.length === 0 || passes.length > MAX_EXTRA_PASSES || abort.signal.aborted) break;
      const again = new Set(left.resweep.map((r) => r.relation));
      log.warn(
        { pass: passes.length + 1, relations: left.resweep, columns: left.columns },
        'old-version values remain behind the sweep that are not quarantined: the application wrote them, or moved their rows ' +
          '(an UPDATE of another column can move a row to a block already swept), after the sweep had passed, and no stream runs ' +
          'during a backfill to rewrite them; sweeping those relations again from block 0',
      );
      await restartSegments(ctx.pool, [...again]);
      const subset = tables.map((t) => ({ ...t, leaves: t.leaves.filter((l) => again.has(displayName(l))) })).filter((t) => t.leaves.length > 0);
      passes.push(await sweepAll(ctx.pool, subset, sweepOpts));
    }
    await throttle?.clear();
    const relations = mergePasses(passes);
    const summary = summarize(relations, ring.target, opts.dryRun === true, passes.length, abort.signal.aborted ? null : left);
    if (runId !== null) await finishRun(ctx.pool, runId, abort.signal.aborted ? 'interrupted' : summary.converged === false ? 'not-converged' : 'ok', { ...summary, opened: openedSummary(opened) });
    process.stdout.write(opts.json ? `${JSON.stringify({ ...summary, relations }, null, 2)}\n` : `${renderBackfill(relations, summary)}\n`);
    if (abort.signal.aborted) {
      throw new RuntimeFailure(
        'interrupted by a signal after finishing the chunk in flight',
        opts.dryRun ? 'a dry run keeps no checkpoint: run it again to scan from block 0' : 'run `pg-rekey backfill` again to resume from the checkpoint',
      );
    }
    if (summary.converged === false) {
      log.warn({ remaining: summary.remaining, quarantined: summary.remainingQuarantined, passes: passes.length, columns: left?.columns }, 'backfill finished with old-version values left');
      return EXIT_NOT_CONVERGED;
    }
    return EXIT_OK;
  } catch (e) {
    if (runId !== null && !abort.signal.aborted) {
      await finishRun(ctx.pool, runId, 'failed', { error: (e as Error).message }).catch(() => undefined);
    }
    // A stop requested while a chunk waited to be retried: an interruption, not the retried error.
    if (abort.signal.aborted && !(e instanceof RuntimeFailure)) {
      if (runId !== null) await finishRun(ctx.pool, runId, 'interrupted', {}).catch(() => undefined);
      throw new RuntimeFailure('interrupted by a signal while a chunk waited to be retried', 'run `pg-rekey backfill` again to resume from the checkpoint');
    }
    throw e;
  } finally {
    await pacer?.stop();
    stopSignals();
    ring.wipe(memzero);
    await ctx.close();
  }
}

/** Per relation, in first-swept order: counts added over the passes; blocks and quarantined as of its last pass (which re-examined every row). */
export function mergePasses(passes: readonly RelationResult[][]): BackfillRelation[] {
  const out = new Map<string, BackfillRelation>();
  for (const pass of passes) {
    for (const r of pass) {
      const m = out.get(r.relation);
      if (!m) {
        out.set(r.relation, { ...r, passes: 1 });
        continue;
      }
      m.passes++;
      m.chunks += r.chunks;
      m.scanned += r.scanned;
      m.rewritten += r.rewritten;
      m.conflicts += r.conflicts;
      m.quarantined = r.quarantined;
      m.walBytes += r.walBytes;
      m.commits += r.commits;
      m.blocks = r.blocks;
      m.alreadyDone = m.alreadyDone && r.alreadyDone;
    }
  }
  return [...out.values()];
}

export function summarize(results: readonly BackfillRelation[], target: number, dryRun: boolean, passes = 1, left: LeftBehind | null = null) {
  const sum = (k: 'scanned' | 'rewritten' | 'conflicts' | 'quarantined') => results.reduce((n, r) => n + r[k], 0);
  const remaining = left ? left.columns.reduce((n, c) => n + c.remaining, 0) : null;
  const remainingQuarantined = left ? left.columns.reduce((n, c) => n + c.quarantined, 0) : null;
  // A dry run wrote nothing: its counts say what would be done, never "rewritten".
  const done = dryRun ? { wouldRewrite: sum('rewritten'), wouldQuarantine: sum('quarantined') } : { rewritten: sum('rewritten'), quarantined: sum('quarantined') };
  return {
    target: versionLabel(target),
    dryRun,
    relations: results.length,
    rowsScanned: sum('scanned'),
    ...done,
    /** WAL written during the sweep's write transactions (other sessions' included) and write commits: the cost per row. */
    walBytes: results.reduce((n, r) => n + r.walBytes, 0),
    commits: results.reduce((n, r) => n + r.commits, 0),
    conflicts: sum('conflicts'),
    passes,
    /** Counted after the last pass (null for a dry run or an interrupted one, which count nothing). */
    converged: remaining === null ? null : remaining === 0,
    remaining,
    remainingQuarantined,
    /** Columns with old-version values left: how many, and how many of them quarantined. */
    left: left?.columns ?? null,
  };
}

export function renderBackfill(results: readonly BackfillRelation[], s: ReturnType<typeof summarize>): string {
  const verb = s.dryRun ? 'would rewrite' : 'rewritten';
  const note = (r: BackfillRelation) => (r.passes > 1 ? `swept ${r.passes} times: old values found behind the sweep` : r.alreadyDone ? 'already done (--restart to redo)' : '');
  const table = renderTable(
    ['relation', 'blocks swept', 'rows read', verb, 'CAS conflicts', s.dryRun ? 'would quarantine' : 'quarantined', 'note'],
    results.map((r) => [r.relation, r.blocks, r.scanned, r.rewritten, r.conflicts, r.quarantined, note(r)]),
  );
  const rewritten = s.rewritten ?? s.wouldRewrite ?? 0;
  const quarantined = s.quarantined ?? s.wouldQuarantine ?? 0;
  const lines = [table, `${s.dryRun ? 'dry run, nothing written: ' : ''}${rewritten} value(s) ${s.dryRun ? 'would be rewritten' : 'rewritten'} to ${s.target}`];
  if (s.conflicts) lines.push(`${s.conflicts} row(s) changed under the sweep (CAS conflict): their new versions were left to the stream and to the recount after the pass`);
  if (quarantined) lines.push(s.dryRun ? `${quarantined} value(s) would not open and would be left untouched (quarantined)` : `${quarantined} value(s) could not be rewritten and were left untouched: see \`pg-rekey status\` and pgrekey.quarantine`);
  if (s.converged === true) {
    lines.push(`no value of an old version remains in the configured tables${s.passes > 1 ? ` (after ${s.passes} passes: the recount found values behind the sweep, and the next pass rewrote them)` : ''}`);
  } else if (s.converged === false) {
    lines.push(`NOT converged: ${s.remaining} value(s) of an old version remain after ${s.passes} pass(es):`);
    for (const c of s.left ?? []) {
      const why: string[] = [];
      if (c.quarantined) why.push(`${c.quarantined} quarantined (see \`pg-rekey status\` and pgrekey.quarantine: fix the cause, e.g. a missing key or a trigger or constraint that rejects the rewrite, then \`pg-rekey backfill --restart\`)`);
      const moving = c.remaining - c.quarantined;
      if (moving) {
        why.push(
          `${moving} not quarantined: still being written or moved by the application after ${s.passes} pass(es) ` +
            '(`pg-rekey run` rewrites such writes as they commit; or run `pg-rekey backfill` again once the old writers are gone)',
        );
      }
      lines.push(`  ${c.table}.${c.column}: ${why.join('; ')}`);
    }
  }
  return lines.join('\n');
}
