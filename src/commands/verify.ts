import type { GlobalFlags } from '../config/load-config.js';
import { openContext } from '../context.js';
import { loadTargetVersion } from '../crypto/key-ring.js';
import { versionLabel } from '../crypto/envelope.js';
import { resolveTables } from '../db/catalog.js';
import { stateIsCurrent } from '../db/migrate.js';
import { ConfigError, EXIT_NOT_CONVERGED, EXIT_OK } from '../errors.js';
import { rowSecurityProblems } from '../db/row-security.js';
import { formatDuration, renderTable } from '../format.js';
import { openWriters, type OpenTransaction } from '../db/open-transactions.js';
import { countVersions, type ColumnCounts } from '../verify/count-versions.js';

export interface VerifyReport {
  target: string;
  converged: boolean;
  remaining: number;
  quarantined: number | null;
  columns: ColumnCounts[];
  /**
   * Transactions open when the count ended that did not end within a few seconds (prepared ones
   * included): their writes are invisible to the count, so it proves nothing until they end.
   */
  openTransactions: OpenTransaction[];
}

/** How long verify waits for the transactions open at the end of its count before it reports them. */
const OPEN_TRANSACTION_WAIT_MS = 5_000;

/** Counts values by version per column; exit 0 only when nothing but the target remains. */
export async function verifyCommand(flags: GlobalFlags, opts: { json?: boolean }): Promise<number> {
  const target = loadTargetVersion({ env: process.env, envFile: flags.envFile });
  const ctx = await openContext(flags);
  try {
    const tables = await resolveTables(ctx.pool, ctx.config.tables);
    // A count of part of a table is worse than none: refuse rather than print it.
    const hidden = await rowSecurityProblems(ctx.pool, tables);
    if (hidden.length) {
      throw new ConfigError(
        'cannot count every row: row level security would hide rows of configured tables from this role',
        'grant what each line says (or run verify as a role that sees every row); no count is printed for a table that could not be read whole',
        hidden.map((h) => h.problem),
      );
    }
    const withState = await stateIsCurrent(ctx.pool);
    const columns = await countVersions(ctx.pool, tables, target, withState);
    const remaining = columns.reduce((n, c) => n + c.nonTarget, 0);
    const openTransactions = await openWriters(ctx.pool, OPEN_TRANSACTION_WAIT_MS);
    const report: VerifyReport = {
      target: versionLabel(target),
      converged: remaining === 0 && openTransactions.length === 0,
      remaining,
      quarantined: withState ? columns.reduce((n, c) => n + (c.quarantined ?? 0), 0) : null,
      columns,
      openTransactions,
    };
    ctx.log.child({ component: 'verify' }).info({ converged: report.converged, remaining, quarantined: report.quarantined, openTransactions: openTransactions.length }, 'verify finished');
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
  const open = r.openTransactions.length
    ? `\n${renderOpenTransactions(r.openTransactions)}\nNOT converged: ${r.openTransactions.length} transaction(s) open at the count may still commit old-version writes the count cannot see; ` +
      'verify again once they have ended (COMMIT PREPARED / ROLLBACK PREPARED a prepared one)'
    : '';
  const verdict = r.converged
    ? `converged: every value is at ${r.target} (or not ours), and no transaction open at the count is left; the old key(s) are no longer needed by these columns`
    : r.remaining === 0
      ? `no value of an old version was counted, but that is no proof yet`
      : `NOT converged: ${r.remaining} value(s) are not at ${r.target}` +
        (r.quarantined ? `; ${r.quarantined} are quarantined (see \`pg-rekey status\` and pgrekey.quarantine)` : '; `pg-rekey run` (or `pg-rekey backfill`) rewrites them');
  return `target ${r.target}\n${table}\n${verdict}${open}`;
}

/** One line per open transaction: what it is, where, how old. Never its query. */
export function renderOpenTransactions(ts: readonly OpenTransaction[]): string {
  return renderTable(
    ['open transaction', 'database', 'application', 'state', 'age'],
    ts.map((t) => [
      t.kind === 'prepared' ? `prepared gid ${t.gid}` : t.kind === 'session' ? `pid ${t.pid}` : `xid ${t.xid} (not visible to this role: pg_read_all_stats shows it)`,
      t.database ?? '?',
      t.application ?? '',
      t.state ?? '',
      t.ageSeconds === null ? '?' : formatDuration(t.ageSeconds),
    ]),
  );
}
