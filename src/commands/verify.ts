import type { GlobalFlags } from '../config/load-config.js';
import { openContext } from '../context.js';
import { loadKeyRing, loadTargetVersion, type KeyRing } from '../crypto/key-ring.js';
import { initSodium, memzero } from '../crypto/secretbox.js';
import { versionLabel } from '../crypto/envelope.js';
import { resolveTables } from '../db/catalog.js';
import { stateIsCurrent } from '../db/migrate.js';
import { ConfigError, EXIT_NOT_CONVERGED, EXIT_OK, RuntimeFailure } from '../errors.js';
import { refuseHiddenRows } from '../db/row-security.js';
import { formatDuration, renderTable } from '../format.js';
import { waitForTransactions, type OpenTransaction } from '../db/open-transactions.js';
import { countInOneSnapshot } from '../verify/snapshot-count.js';
import type { ColumnCounts } from '../verify/count-versions.js';
import { blocksConvergence, findOutsideRelations, outsideProblems, type OutsideRelation } from '../verify/outside.js';
import { unfollowedLeaves } from '../daemon/convergence.js';
import { displayName } from '../db/ident.js';
import { DEFAULT_SCAN, discover } from '../discover/discover.js';
import type { DiscoverResult } from '../discover/findings.js';
import { runDeepVerify, type DeepVerifyResult } from '../verify/deep-verify.js';
import { renderDeepVerify, renderOutsideConfiguration } from '../verify/render-checks.js';
import { recordCheck } from '../state/check-results.js';
import { LogProgress, TtyProgress } from '../backfill/progress.js';
import { stderrLine } from '../terminal/stderr-line.js';
import { LiveSettings } from '../throttle/live-settings.js';
import { Throttle } from '../throttle/throttle.js';
import { onShutdownSignals } from '../signals.js';
import type { Context } from '../context.js';
import type { TableInfo } from '../db/catalog.js';
import { readRollout, renderRollout, type RolloutStatus } from './status.js';
import { recordEvent } from '../state/events.js';
import { rememberLeaves } from '../state/segments.js';
import { countedLeaves } from '../db/unlogged.js';

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
  /**
   * discover's sampled check of everything outside the configuration (other columns, other
   * tables, materialized views, json); null when it could not run (`outsideConfigurationError`).
   * Counts toward the exit code only with --strict.
   */
  outsideConfiguration: DiscoverResult | null;
  outsideConfigurationError: string | null;
  /** verify --decrypt: what opened and what did not (null without --decrypt). */
  decrypt: DeepVerifyResult | null;
  /** The exit code's reasons beyond `converged`: --decrypt failures, --strict findings. */
  problems: string[];
  /**
   * The rollout gate (after setup): old-version writes of the applications the stream recorded.
   * It does not change the verdict on the data; `report` and `run --quiet-period` weigh it.
   */
  rollout: RolloutStatus | null;
}

/** verify's count and its checks of the configured tables (also the evidence of `report`'s verdict). */
export type VerifyCounts = Omit<VerifyReport, 'outsideConfiguration' | 'outsideConfigurationError' | 'decrypt' | 'problems'>;

export interface VerifyOptions {
  json?: boolean;
  /** Decrypt the values (needs the target key; old keys optional). */
  decrypt?: boolean;
  /** With --decrypt: N values per column of each relation, from random blocks. */
  sample?: string;
  /** Count what discover finds outside the configuration (and what it could not check) toward the exit code. */
  strict?: boolean;
}

/** How long verify waits for the transactions open at the end of its count before it reports them. */
const OPEN_TRANSACTION_WAIT_MS = 5_000;

/** Counts values by version per column; exit 0 only when nothing but the target remains. */
export async function verifyCommand(flags: GlobalFlags, opts: VerifyOptions): Promise<number> {
  const target = loadTargetVersion({ env: process.env, envFile: flags.envFile });
  const sample = parseSample(opts);
  // --decrypt needs the target key; the old keys are optional (their values are then "not checked").
  const ring = opts.decrypt ? loadKeyRing({ env: process.env, envFile: flags.envFile }, { targetOnly: true }) : null;
  if (ring) await initSodium();
  // --decrypt reports progress on stderr (info lines), as backfill does.
  const ctx = await openContext(flags, { defaultLogLevel: opts.decrypt ? 'info' : 'warn', poolSize: 3 });
  try {
    const tables = await resolveTables(ctx.pool, ctx.config.tables);
    const counts = await collectVerify(ctx, tables, target);
    const { outside } = counts;
    const oc = await outsideConfiguration(ctx, tables, target, new Set(outside.map((o) => o.relation)));
    const decrypt = ring ? await deepVerify(ctx, tables, ring, sample) : null;
    const problems: string[] = [];
    if (decrypt && decrypt.totals.targetFailed > 0) problems.push(`${decrypt.totals.targetFailed} ${versionLabel(target)} value(s) do not open with the target key`);
    if (opts.strict) {
      if (!oc.result) problems.push(`--strict: the check outside the configuration could not run`);
      else {
        if (oc.result.unconfiguredOld > 0) problems.push(`--strict: ${oc.result.unconfiguredOld} old-version value(s) outside the configuration`);
        if (oc.result.notChecked.length) problems.push(`--strict: ${oc.result.notChecked.length} relation(s) or column(s) outside the configuration could not be checked`);
      }
    }
    const report: VerifyReport = { ...counts, outsideConfiguration: oc.result, outsideConfigurationError: oc.error, decrypt, problems };
    ctx.log
      .child({ component: 'verify' })
      .info({ converged: report.converged, remaining: report.remaining, quarantined: report.quarantined, openTransactions: report.openTransactions.length, unfollowed: report.unfollowed.length, outside: outside.length }, 'verify finished');
    // The rotation record: when verify ran and what it found (`report`, `teardown --drop-state`).
    // Not fatal: verify's own output and exit code stand (a role that may not write pgrekey.event).
    if (report.rollout) {
      await recordEvent(ctx.pool, 'verify', verifyEventDetail(report)).catch((e) =>
        ctx.log.warn({ component: 'verify', err: e }, 'could not record this verify in pgrekey.event (the rotation record will not show it); its output stands'),
      );
    }
    process.stdout.write(opts.json ? `${JSON.stringify(report, null, 2)}\n` : `${renderVerify(report, opts.strict === true)}\n`);
    if (decrypt?.interrupted) throw new RuntimeFailure('verify --decrypt was interrupted by a signal', 'its counts cover only part of the values: run it again');
    return report.converged && problems.length === 0 ? EXIT_OK : EXIT_NOT_CONVERGED;
  } finally {
    ring?.wipe(memzero);
    await ctx.close();
  }
}

/** What a verify event records: its verdict and counts (names and numbers only). */
export function verifyEventDetail(r: VerifyReport): object {
  return {
    converged: r.converged && r.problems.length === 0,
    remaining: r.remaining,
    quarantined: r.quarantined,
    openTransactions: r.openTransactions.length,
    unfollowed: r.unfollowed.length,
    outside: r.outside.length,
    problems: r.problems,
    columns: r.columns.map((c) => ({ table: c.table, column: c.column, byVersion: c.byVersion, notOurs: c.notOurs, nulls: c.nulls, quarantined: c.quarantined, nonTarget: c.nonTarget })),
  };
}

/** verify's count and its checks of the configured tables (also the evidence of `report`'s verdict). */
export async function collectVerify(ctx: Context, tables: TableInfo[], target: number): Promise<VerifyCounts> {
  // A count of part of a table is worse than none: refuse rather than print it.
  await refuseHiddenRows(ctx.pool, tables, 'cannot count every row');
  const withState = await stateIsCurrent(ctx.pool);
  // Remember every leaf counted now (when this role may): one that leaves later is listed outside the configured tables.
  if (withState) await rememberCountedLeaves(ctx, tables);
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
  return {
    target: versionLabel(target),
    converged: remaining === 0 && openTransactions.length === 0 && unfollowed.length === 0 && !outside.some(blocksConvergence),
    remaining,
    quarantined: withState ? columns.reduce((n, c) => n + (c.quarantined ?? 0), 0) : null,
    columns,
    openTransactions,
    unfollowed,
    outside,
    ignore: ctx.config.ignore.map(displayName),
    rollout: withState
      ? await readRollout(ctx.pool, ctx.config.replication.slot).catch((e) => {
          ctx.log.warn({ component: 'verify', err: e }, 'could not read the rollout gate from the state (pgrekey.old_version_write); verify goes on without it');
          return null;
        })
      : null,
  };
}

/**
 * verify remembers the leaves it counts (a segment row by oid, as run and backfill do), so that a
 * partition attached while run was stopped and detached before any sweep reached it is still
 * listed outside the configured tables afterwards. A role that may not write the state (a
 * read-only auditor) remembers nothing: it is told, and its count of what exists now stands.
 */
async function rememberCountedLeaves(ctx: Context, tables: TableInfo[]): Promise<void> {
  const may = (await ctx.pool.query<{ ok: boolean }>(`select has_table_privilege('pgrekey.sweep_segment', 'INSERT') as ok`)).rows[0]!.ok;
  if (!may) {
    ctx.log.info({ component: 'verify' }, 'this role may not write pgrekey.sweep_segment: the leaves counted now are not remembered (run and backfill remember them)');
    return;
  }
  await rememberLeaves(ctx.pool, tables.map((t) => ({ display: t.display, leaves: countedLeaves(t) })));
}

function parseSample(opts: VerifyOptions): number | undefined {
  if (opts.sample === undefined) return undefined;
  if (!opts.decrypt) throw new ConfigError('--sample needs --decrypt', 'run `pg-rekey verify --decrypt --sample 100` (N values of each column), or `verify --decrypt` for every value');
  const n = Number(opts.sample);
  if (!Number.isInteger(n) || n < 1) throw new ConfigError(`--sample ${opts.sample}: not a positive whole number`, 'pass e.g. --sample 100 (values per column)');
  return n;
}

/** discover's sampled check outside the configuration; an error is reported, not fatal (--strict counts it). */
async function outsideConfiguration(ctx: Context, tables: TableInfo[], target: number, departed: Set<string>): Promise<{ result: DiscoverResult | null; error: string | null }> {
  try {
    const result = await discover(ctx.pool, tables, { ...DEFAULT_SCAN, full: false, target, log: ctx.log, skipConfigured: true, exclude: departed });
    await recordCheck(ctx.pool, { kind: 'discover', mode: 'sample', command: 'verify', targetVersion: target, startedAt: result.startedAt, ok: result.ok, result }, ctx.log);
    return { result, error: null };
  } catch (e) {
    ctx.log.warn({ component: 'verify', err: e }, 'the check outside the configuration failed');
    return { result: null, error: (e as Error).message };
  }
}

/** verify --decrypt: throttled like the sweep (when setup has made the state it reads its signals from), with progress on stderr. */
async function deepVerify(ctx: Context, tables: TableInfo[], ring: KeyRing, sample: number | undefined): Promise<DeepVerifyResult> {
  const abort = new AbortController();
  const stopSignals = onShutdownSignals(ctx.log, () => abort.abort());
  try {
    const withState = await stateIsCurrent(ctx.pool);
    const live = withState ? new LiveSettings(ctx.pool, ctx.config, ctx.log) : undefined;
    const throttle = live ? new Throttle(ctx.pool, live, ctx.log) : undefined;
    const progress = process.stderr.isTTY
      ? new TtyProgress('checked', stderrLine, (p) => `${p.quarantined} did not open`)
      : new LogProgress(ctx.log, ctx.config.sweep.progressIntervalMs, { component: 'deep-verify', rewritten: 'checked', quarantined: 'didNotOpen', progress: 'deep verify progress', done: 'relation checked', conflicts: false });
    const result = await runDeepVerify(ctx.pool, tables, { ring, sample, settings: ctx.config.sweep, live, throttle, progress, signal: abort.signal, log: ctx.log });
    await throttle?.clear();
    const command = `verify --decrypt${sample !== undefined ? ` --sample ${sample}` : ''}`;
    await recordCheck(ctx.pool, { kind: 'deep-verify', mode: result.mode, command, targetVersion: ring.target, startedAt: result.startedAt, ok: result.totals.targetFailed === 0 && !result.interrupted, result }, ctx.log);
    return result;
  } finally {
    stopSignals();
  }
}

export function renderVerify(r: VerifyReport, strict = false): string {
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
  const elsewhere = r.outsideConfiguration && !r.outsideConfiguration.ok ? ' (but not by what "outside the configuration" lists below)' : '';
  const stale = r.rollout?.stillWritten ?? [];
  const verdict = r.converged
    ? `converged: every value is at ${r.target} (or not ours), and no transaction open at the count is left; ` +
      (stale.length
        ? `but an application instance wrote ${stale.join(', ')} within the last hour (below): the stream rewrites it, yet the old key must stay until every instance writes ${r.target}`
        : `the old key(s) are no longer needed by these columns${elsewhere}`)
    : r.remaining === 0
      ? `no value of an old version was counted, but that is no proof yet`
      : `NOT converged: ${r.remaining} value(s) are not at ${r.target}` +
        (r.quarantined ? `; ${r.quarantined} are quarantined (see \`pg-rekey status\` and pgrekey.quarantine)` : '; `pg-rekey run` (or `pg-rekey backfill`) rewrites them');
  const deep = r.decrypt ? renderDeepVerify(r.decrypt) : '';
  const config = renderOutsideConfiguration(r.outsideConfiguration, r.outsideConfigurationError, strict);
  const problems = r.problems.length ? `\nNOT OK: ${r.problems.join('; ')}` : '';
  const rollout = r.rollout ? `\n${renderRollout(r.rollout)}` : '';
  return `target ${r.target}\n${table}\n${verdict}${open}${unfollowed}${outside}${config}${deep}${rollout}${problems}`;
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
