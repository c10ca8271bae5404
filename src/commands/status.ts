import type { GlobalFlags } from '../config/load-config.js';
import { openContext, requireState } from '../context.js';
import { EXIT_OK } from '../errors.js';
import { renderTable } from '../format.js';
import { percentDone } from '../backfill/chunk-plan.js';
import { listSegments, type Segment } from '../state/segments.js';
import { summarizeQuarantine, type QuarantineSummary } from '../state/quarantine.js';

export interface StatusReport {
  sweep: (Segment & { percent: number })[];
  quarantine: { total: number; byColumn: QuarantineSummary[] };
  lastRuns: { id: number; command: string; startedAt: Date; finishedAt: Date | null; outcome: string | null }[];
}

export async function readStatus(ctxPool: Parameters<typeof listSegments>[0]): Promise<StatusReport> {
  const segments = await listSegments(ctxPool);
  const byColumn = await summarizeQuarantine(ctxPool);
  const runs = await ctxPool.query(
    `select id::float8 as id, command, started_at as "startedAt", finished_at as "finishedAt", outcome from pg_rekey.run order by id desc limit 5`,
  );
  return {
    sweep: segments.map((s) => ({ ...s, percent: Number(percentDone(s.nextBlock, s.totalBlocks ?? 0).toFixed(1)) })),
    quarantine: { total: byColumn.reduce((n, q) => n + q.count, 0), byColumn },
    lastRuns: runs.rows,
  };
}

/** Sweep progress per relation, quarantine, recent runs. Reads state only. */
export async function statusCommand(flags: GlobalFlags, opts: { json?: boolean }): Promise<number> {
  const ctx = await openContext(flags);
  try {
    await requireState(ctx.pool);
    const report = await readStatus(ctx.pool);
    process.stdout.write(opts.json ? `${JSON.stringify(report, null, 2)}\n` : `${renderStatus(report)}\n`);
    return EXIT_OK;
  } finally {
    await ctx.close();
  }
}

function renderStatus(r: StatusReport): string {
  const sweep = renderTable(
    ['relation', 'state', 'gen', 'blocks done', 'total', '%', 'rewritten', 'conflicts', 'quarantined', 'updated'],
    r.sweep.map((s) => [s.relation, s.state, s.generation, s.nextBlock, s.totalBlocks ?? 0, s.percent, s.rowsRewritten, s.rowsConflict, s.rowsQuarantined, s.updatedAt.toISOString()]),
  );
  const q = r.quarantine.total
    ? `quarantine: ${r.quarantine.total} value(s)\n` +
      renderTable(['table', 'column', 'version', 'reason', 'count'], r.quarantine.byColumn.map((x) => [x.table, x.column, x.version === null ? '?' : `v${x.version}`, x.reason, x.count]))
    : 'quarantine: empty';
  const runs = r.lastRuns.length
    ? renderTable(['run', 'command', 'started', 'outcome'], r.lastRuns.map((x) => [x.id, x.command, x.startedAt.toISOString(), x.outcome ?? 'running']))
    : 'no runs yet';
  return `sweep\n${sweep}\n\n${q}\n\n${runs}`;
}
