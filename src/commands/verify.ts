import type { GlobalFlags } from '../config/load-config.js';
import { openContext } from '../context.js';
import { loadTargetVersion } from '../crypto/key-ring.js';
import { versionLabel } from '../crypto/envelope.js';
import { resolveTables } from '../db/catalog.js';
import { stateIsCurrent } from '../db/migrate.js';
import { EXIT_NOT_CONVERGED, EXIT_OK } from '../errors.js';
import { renderTable } from '../format.js';
import { countVersions, type ColumnCounts } from '../verify/count-versions.js';

export interface VerifyReport {
  target: string;
  converged: boolean;
  remaining: number;
  quarantined: number | null;
  columns: ColumnCounts[];
}

/** Counts values by version per column; exit 0 only when nothing but the target remains. */
export async function verifyCommand(flags: GlobalFlags, opts: { json?: boolean }): Promise<number> {
  const target = loadTargetVersion({ env: process.env, envFile: flags.envFile });
  const ctx = await openContext(flags);
  try {
    const tables = await resolveTables(ctx.pool, ctx.config.tables);
    const withState = await stateIsCurrent(ctx.pool);
    const columns = await countVersions(ctx.pool, tables, target, withState);
    const remaining = columns.reduce((n, c) => n + c.nonTarget, 0);
    const report: VerifyReport = {
      target: versionLabel(target),
      converged: remaining === 0,
      remaining,
      quarantined: withState ? columns.reduce((n, c) => n + (c.quarantined ?? 0), 0) : null,
      columns,
    };
    ctx.log.child({ component: 'verify' }).info({ converged: report.converged, remaining, quarantined: report.quarantined }, 'verify finished');
    process.stdout.write(opts.json ? `${JSON.stringify(report, null, 2)}\n` : `${renderVerify(report)}\n`);
    return report.converged ? EXIT_OK : EXIT_NOT_CONVERGED;
  } finally {
    await ctx.close();
  }
}

export function renderVerify(r: VerifyReport): string {
  const versions = [...new Set(r.columns.flatMap((c) => Object.keys(c.byVersion)))].sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)));
  const table = renderTable(
    ['table', 'column', ...versions, 'not ours', 'null', 'quarantined', 'remaining'],
    r.columns.map((c) => [c.table, c.column, ...versions.map((v) => c.byVersion[v] ?? 0), c.notOurs, c.nulls, c.quarantined ?? '-', c.nonTarget]),
  );
  const verdict = r.converged
    ? `converged: every value is at ${r.target} (or not ours); the old key(s) are no longer needed by these columns`
    : `NOT converged: ${r.remaining} value(s) are not at ${r.target}` +
      (r.quarantined ? `; ${r.quarantined} are quarantined (see \`pg-rekey status\` and pgrekey.quarantine)` : '; run `pg-rekey backfill`');
  return `target ${r.target}\n${table}\n${verdict}`;
}
