import type { GlobalFlags } from '../config/load-config.js';
import { openContext } from '../context.js';
import { loadTargetVersion } from '../crypto/key-ring.js';
import { versionLabel } from '../crypto/envelope.js';
import { resolveTables } from '../db/catalog.js';
import { stateIsCurrent } from '../db/migrate.js';
import { EXIT_NOT_CONVERGED, EXIT_OK } from '../errors.js';
import { refuseHiddenRows } from '../db/row-security.js';
import { formatDuration, renderTable } from '../format.js';
import { waitForTransactions, type OpenTransaction } from '../db/open-transactions.js';
import { countInOneSnapshot } from '../verify/snapshot-count.js';
import type { ColumnCounts } from '../verify/count-versions.js';
import { blocksConvergence, findOutsideRelations, outsideProblems, type OutsideRelation } from '../verify/outside.js';
import { unfollowedLeaves } from '../daemon/convergence.js';
import { displayName } from '../db/ident.js';

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
  /**
   * Leaves of the configured tables the stream cannot follow (UNLOGGED, not in the publication),
   * each with its fix: a count of 0 proves nothing while one exists (design.md rule 7).
   */
  unfollowed: string[];
  /** Relations that were leaves of a configured table and are not any more (detached, NO INHERIT), counted. */
  outside: OutsideRelation[];
  /** `ignore:` of the config. */
  ignore: string[];
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
    await refuseHiddenRows(ctx.pool, tables, 'cannot count every row');
    const withState = await stateIsCurrent(ctx.pool);
    // One snapshot for the whole count (snapshot-count.ts): no row counted twice or missed as it moves.
    const counted = await countInOneSnapshot(ctx.pool, tables, target, withState);
    const columns = counted.columns;
    const remaining = columns.reduce((n, c) => n + c.nonTarget, 0);
    // The transaction rule: those in progress at the snapshot, and those open now, must end first.
    const { open } = await waitForTransactions(ctx.pool, [...new Set([...counted.inProgress, ...counted.openAfter])], { timeoutMs: OPEN_TRANSACTION_WAIT_MS });
    const openTransactions = open.sort((a, b) => (b.ageSeconds ?? 0) - (a.ageSeconds ?? 0));
    // Once setup has made the publication, a leaf it does not publish is one the stream does not follow.
    const unfollowed = await unfollowedLeaves(ctx.pool, tables, withState ? ctx.config.replication.publication : undefined);
    const outside = await findOutsideRelations(ctx.pool, tables, target, ctx.config.ignore);
    const report: VerifyReport = {
      target: versionLabel(target),
      converged: remaining === 0 && openTransactions.length === 0 && unfollowed.length === 0 && !outside.some(blocksConvergence),
      remaining,
      quarantined: withState ? columns.reduce((n, c) => n + (c.quarantined ?? 0), 0) : null,
      columns,
      openTransactions,
      unfollowed,
      outside,
      ignore: ctx.config.ignore.map(displayName),
    };
    ctx.log
      .child({ component: 'verify' })
      .info({ converged: report.converged, remaining, quarantined: report.quarantined, openTransactions: openTransactions.length, unfollowed: unfollowed.length, outside: outside.length }, 'verify finished');
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
  const outside = renderOutside(r);
  const unfollowed = r.unfollowed.length
    ? `\nNOT converged: ${r.unfollowed.length} relation(s) of the configured tables are not followed by the stream, so a count of them proves nothing:\n${r.unfollowed.map((u) => `  ${u}`).join('\n')}`
    : '';
  const verdict = r.converged
    ? `converged: every value is at ${r.target} (or not ours), and no transaction open at the count is left; the old key(s) are no longer needed by these columns`
    : r.remaining === 0
      ? `no value of an old version was counted, but that is no proof yet`
      : `NOT converged: ${r.remaining} value(s) are not at ${r.target}` +
        (r.quarantined ? `; ${r.quarantined} are quarantined (see \`pg-rekey status\` and pgrekey.quarantine)` : '; `pg-rekey run` (or `pg-rekey backfill`) rewrites them');
  return `target ${r.target}\n${table}\n${verdict}${open}${unfollowed}${outside}`;
}

/** The relations that left the configured tables: counted, and what holds convergence back. */
export function renderOutside(r: Pick<VerifyReport, 'outside' | 'target' | 'ignore'>): string {
  if (r.outside.length === 0) return r.ignore.length ? `\nignore: ${r.ignore.join(', ')} (none of them was a leaf of a configured table)` : '';
  const versions = [...new Set(r.outside.flatMap((o) => (o.columns ?? []).flatMap((c) => Object.keys(c.byVersion))))].sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)));
  const table = renderTable(
    ['relation', 'was a leaf of', 'column', ...versions, 'not ours', 'null', 'remaining', 'ignore:'],
    r.outside.flatMap((o) =>
      o.columns === null || o.columns.length === 0
        ? [[o.relation, o.wasPartOf, o.error ?? '(no configured column left)', ...versions.map(() => '-'), '-', '-', o.remaining ?? '?', o.ignored ? 'ignored' : '']]
        : o.columns.map((c) => [o.relation, o.wasPartOf, c.column, ...versions.map((v) => c.byVersion[v] ?? 0), c.notOurs, c.nulls, c.nonTarget, o.ignored ? 'ignored' : '']),
    ),
  );
  const blocking = outsideProblems(r.outside);
  const ignored = r.outside.filter((o) => o.ignored && (o.remaining ?? 1) > 0);
  return (
    `\noutside the configured tables (relations that were leaves of them: nothing streams, sweeps or counts them as part of a table now):\n${table}` +
    (blocking.length ? `\nNOT converged: ${blocking.length} of them hold old-version values:\n${blocking.map((b) => `  ${b}`).join('\n')}` : '') +
    (ignored.length ? `\nignored (\`ignore:\`): ${ignored.map((o) => `${o.relation} (${o.remaining ?? '?'} old-version value(s) stay unreadable without the old key)`).join(', ')}` : '')
  );
}

/** One line per open transaction: what it is, where, how old. Never its query. */
export function renderOpenTransactions(ts: readonly OpenTransaction[]): string {
  return renderTable(
    ['open transaction', 'database', 'application', 'state', 'age'],
    ts.map((t) => [
      t.kind === 'prepared' ? `prepared gid ${t.gid}` : t.kind === 'session' ? `pid ${t.pid}` : `xid ${t.xid} (its session ended meanwhile or is not shown)`,
      t.database ?? '?',
      t.application ?? '',
      t.state ?? '',
      t.ageSeconds === null ? '?' : formatDuration(t.ageSeconds),
    ]),
  );
}
