import type { GlobalFlags } from '../config/load-config.js';
import { openContext, requireState } from '../context.js';
import { loadKeyRing, keyVarName, type KeyRing } from '../crypto/key-ring.js';
import { parseVersionLabel, versionLabel } from '../crypto/envelope.js';
import { initSodium, memzero } from '../crypto/secretbox.js';
import { resolveTables } from '../db/catalog.js';
import { ConfigError, EXIT_OK, RuntimeFailure } from '../errors.js';
import { renderTable } from '../format.js';
import { LogProgress, TtyProgress } from '../backfill/progress.js';
import { sweepTables, type RelationResult } from '../backfill/sweep.js';
import { finishRun, startRun } from '../state/runs.js';
import { onShutdownSignals } from '../signals.js';
import { LiveSettings } from '../throttle/live-settings.js';
import { Throttle } from '../throttle/throttle.js';

export interface BackfillOptions {
  dryRun?: boolean;
  restart?: boolean;
  from?: string;
  json?: boolean;
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

export const BACKFILL_CONNECT_WAIT_MS = 120_000;

/** One full sweep of every configured table, then exit. */
export async function backfillCommand(flags: GlobalFlags, opts: BackfillOptions): Promise<number> {
  const ring = loadKeyRing({ env: process.env, envFile: flags.envFile });
  const onlyVersions = parseFrom(opts.from, ring);
  await initSodium();
  // Waits up to 2 minutes for an unreachable database (about what a chunk's retries ride out), then exits 3.
  const ctx = await openContext(flags, { poolSize: 3, defaultLogLevel: 'info', waitForDatabaseMs: BACKFILL_CONNECT_WAIT_MS });
  const abort = new AbortController();
  const stopSignals = onShutdownSignals(ctx.log, () => abort.abort());
  let runId: number | null = null;
  try {
    if (!opts.dryRun) await requireState(ctx.pool);
    const tables = await resolveTables(ctx.pool, ctx.config.tables);
    if (!opts.dryRun) runId = await startRun(ctx.pool, 'backfill', ring.target);
    const tty = process.stderr.isTTY === true && !opts.json;
    // A dry run writes nothing (not even the throttle state) and may run before setup: it is not throttled.
    const live = opts.dryRun ? undefined : new LiveSettings(ctx.pool, ctx.config, ctx.log);
    const throttle = live ? new Throttle(ctx.pool, live, ctx.log) : undefined;
    const results = await sweepTables(ctx.pool, tables, {
      settings: ctx.config.sweep,
      live,
      throttle,
      ring,
      dryRun: opts.dryRun,
      restart: opts.restart,
      onlyVersions,
      signal: abort.signal,
      progress: tty ? new TtyProgress(opts.dryRun ? 'would be rewritten' : 'rewritten') : new LogProgress(ctx.log, ctx.config.sweep.progressIntervalMs),
      log: ctx.log,
    });
    await throttle?.clear();
    const summary = summarize(results, ring.target, opts.dryRun === true);
    if (runId !== null) await finishRun(ctx.pool, runId, abort.signal.aborted ? 'interrupted' : 'ok', summary);
    process.stdout.write(opts.json ? `${JSON.stringify({ ...summary, relations: results }, null, 2)}\n` : `${renderBackfill(results, summary)}\n`);
    if (abort.signal.aborted) {
      throw new RuntimeFailure(
        'interrupted by a signal after finishing the chunk in flight',
        opts.dryRun ? 'a dry run keeps no checkpoint: run it again to scan from block 0' : 'run `pg-rekey backfill` again to resume from the checkpoint',
      );
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
    stopSignals();
    ring.wipe(memzero);
    await ctx.close();
  }
}

function summarize(results: RelationResult[], target: number, dryRun: boolean) {
  const sum = (k: 'scanned' | 'rewritten' | 'conflicts' | 'quarantined') => results.reduce((n, r) => n + r[k], 0);
  return {
    target: versionLabel(target),
    dryRun,
    relations: results.length,
    rowsScanned: sum('scanned'),
    rewritten: sum('rewritten'),
    conflicts: sum('conflicts'),
    quarantined: sum('quarantined'),
  };
}

function renderBackfill(results: RelationResult[], s: ReturnType<typeof summarize>): string {
  const verb = s.dryRun ? 'would rewrite' : 'rewritten';
  const table = renderTable(
    ['relation', 'blocks', 'rows read', verb, 'CAS conflicts', s.dryRun ? 'would quarantine' : 'quarantined', 'note'],
    results.map((r) => [r.relation, r.blocks, r.scanned, r.rewritten, r.conflicts, r.quarantined, r.alreadyDone ? 'already done (--restart to redo)' : '']),
  );
  const lines = [table, `${s.dryRun ? 'dry run, nothing written: ' : ''}${s.rewritten} value(s) ${s.dryRun ? 'would be rewritten' : 'rewritten'} to ${s.target}`];
  if (s.conflicts) lines.push(`${s.conflicts} row(s) changed under the sweep (CAS conflict): their new versions are left to the stream / the next sweep`);
  if (s.quarantined) lines.push(`${s.quarantined} value(s) could not be rewritten and were left untouched: see \`pg-rekey status\` and pgrekey.quarantine`);
  return lines.join('\n');
}
