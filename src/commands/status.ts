import type { GlobalFlags } from '../config/load-config.js';
import { openContext, requireState } from '../context.js';
import { EXIT_OK } from '../errors.js';
import { renderTable } from '../format.js';
import { passProgress } from '../backfill/chunk-plan.js';
import { listSegments, type Segment } from '../state/segments.js';
import { summarizeQuarantine, type QuarantineSummary } from '../state/quarantine.js';
import { formatBytes, readSlot, retainedWalExceeded, slotRecreations, type SlotInfo } from '../replication/slot.js';
import { formatDuration } from '../format.js';
import { readOverrides } from '../throttle/live-settings.js';
import { describeTransactions, openTransactionsNow, type OpenTransaction } from '../db/open-transactions.js';
import { renderOpenTransactions } from './verify.js';
import { readLeaseHolder } from '../daemon/lease.js';
import {
  aggregateRate, describeNewerBackfill, describeNewerVerify, liveFigures, newerBackfill, newerVerify, newestCount, shownState, sweepOverall,
  type NewestCount, type RunRow, type SweepOverall, type SweepState, type VerifyRecord,
} from './status-truth.js';
import { lastEvent } from '../state/events.js';
import { describeLeadership, readLeadership, type Leadership } from '../state/leadership.js';
import { quietSince, readOldVersionWrites, type OldVersionWrites } from '../state/old-version-writes.js';
import { describeSightings, latestByVersion, RECENT_MS } from '../rollout/gate.js';
import type { PacerState } from '../throttle/pacer.js';

export interface ReplicationStatus {
  slot: string;
  info: SlotInfo;
  /** Time the stream's acknowledgements trail the server (pg_stat_replication.flush_lag), seconds. */
  lagSeconds: number | null;
  slotRecreations: number;
  /** WAL the slot holds back against replication.max_retained_wal (maxBytes 0 = no threshold). */
  retainedWal: { bytes: number | null; maxBytes: number; exceeded: boolean };
  daemon: {
    /** The daemon's own host and pid, as it recorded them when it took the slot's lease. */
    host: string;
    pid: number;
    /** When that daemon started (took the lease). */
    startedAt: Date | null;
    /** A `run` holds the slot's lease right now (read from pg_locks); false: none is running. */
    leaseHeld: boolean;
    heartbeatAt: Date;
    appliedLsn: string | null;
    streamConnected: boolean;
    sweepDone: boolean;
    remaining: number | null;
    quarantined: number | null;
    lastCheckAt: Date | null;
    convergedAt: Date | null;
    streamRewrites: number | null;
    streamRewritesPerSec: number | null;
    /** Set when `run` exited cleanly; a heartbeat that stopped without it means the daemon died. */
    stoppedAt: Date | null;
  } | null;
  converged: boolean;
  /** A `run` holds the slot's lease but has not written its own daemon row yet (its first seconds). */
  starting: { backendPid: number | null } | null;
  /** The slot's fencing term (who leads) and the standbys waiting (README "HA and failover"). */
  leader: Leadership['leader'];
  standbys: Leadership['standbys'];
}

export interface ThrottleStatus {
  paused: boolean;
  pauseReason: string | null;
  pausedBy: string | null;
  pausedAt: Date | null;
  /** null = the sweep is not held back. */
  reason: string | null;
  detail: string | null;
  since: Date | null;
  /** Runtime overrides from `pg-rekey set`. */
  overrides: Record<string, string>;
  /** sweep.mode auto: the latency controller's state as the sweeping process last published it (about once a second). */
  controller: PacerState | null;
  controllerAt: Date | null;
}

export interface StatusReport {
  replication: ReplicationStatus;
  throttle: ThrottleStatus;
  /** `state` as stored; `shown`: paused or throttled while the sweep is held back (no rate, no ETA then). */
  /**
   * percent, blocksDone and blocksOf count against the relation's size when its pass started
   * (startBlocks); tailBlocks: what it grew by since (swept too, but not progress going backwards).
   */
  sweep: (Segment & { percent: number; blocksDone: number; blocksOf: number; tailBlocks: number; etaSeconds: number | null; shown: SweepState })[];
  /**
   * Every relation together: blocks swept against their sizes when their passes started; the
   * newest count of old-version values (the daemon's check, a backfill's or a verify's, with its
   * age); rows rewritten per second now (sweeping relations and a running daemon's stream).
   */
  overall: StatusOverall;
  quarantine: { total: number; byColumn: QuarantineSummary[] };
  lastRuns: RunRow[];
  /** A backfill that finished after the daemon's last count: that count is stale. */
  newerBackfill: RunRow | null;
  /** A verify newer than the daemon's last count: that count is stale too. */
  newerVerify: VerifyRecord | null;
  /**
   * Transactions of this database (prepared ones included) holding an xid for 10 s or more: they
   * may commit old-version writes no count sees yet, so they hold convergence back while open.
   */
  openTransactions: OpenTransaction[];
  /** The rollout gate: old-version writes of the applications the stream saw, and how long it has been quiet. */
  rollout: RolloutStatus;
}

export type StatusOverall = SweepOverall & { remaining: NewestCount | null; rowsPerSec: number | null };

export interface RolloutStatus {
  writes: OldVersionWrites[];
  /** The lines status and verify print ("last v1 write seen 4m ago (incidents.title): ..."). */
  summary: string[];
  /** Versions an application wrote within the last hour: an instance still writes them. */
  stillWritten: string[];
  /** The last old-version write, or the slot's creation if later (null: neither recorded). */
  quietSince: Date | null;
  /**
   * Up to when the stream is known to have decoded every commit: the daemon's last convergence
   * check, when it passed (it waits for the stream to catch up). Null: not observed (no `run`
   * followed the slot, or its last check did not pass), so writes since are unseen.
   */
  observedUntil: Date | null;
  /** observedUntil - quietSince; null when not observed. */
  quietSeconds: number | null;
  /** What a `run --exit-when-converged --quiet-period` waits for (null: no such run recorded). */
  quietPeriodSeconds: number | null;
}

/** The rollout gate from the state (status, verify, report). */
export async function readRollout(db: Parameters<typeof listSegments>[0], slot: string): Promise<RolloutStatus> {
  const writes = await readOldVersionWrites(db);
  const q = await quietSince(db, slot);
  const r = await db.query<{ now: Date; period: number | null; observed: Date | null }>(
    `select now() as now, d.quiet_period_s as period, case when d.converged_at is not null then d.last_check_at end as observed
       from (select 1) one left join pgrekey.daemon d on d.slot_name = $1`,
    [slot],
  );
  const now = r.rows[0]!.now.getTime();
  const observedUntil = r.rows[0]!.observed;
  return {
    writes,
    summary: describeSightings(writes, now),
    stillWritten: latestByVersion(writes, now).filter((v) => v.agoSeconds * 1000 < RECENT_MS).map((v) => v.version),
    quietSince: q.since,
    observedUntil,
    quietSeconds: q.since && observedUntil ? Math.max(0, (observedUntil.getTime() - q.since.getTime()) / 1000) : null,
    quietPeriodSeconds: r.rows[0]!.period,
  };
}

export function renderRollout(r: RolloutStatus): string {
  const lines = r.summary.length ? r.summary : ['no old-version write by an application recorded since the slot was created'];
  const quiet = !r.quietSince
    ? 'quiet since: not recorded'
    : r.observedUntil
      ? `quiet (no old-version write) for ${formatDuration(r.quietSeconds)}: since ${r.quietSince.toISOString()}, as of the last passed convergence check at ${r.observedUntil.toISOString()}`
      : `no old-version write recorded since ${r.quietSince.toISOString()}, but quiet is not established: no \`pg-rekey run\` check passed (the stream has not decoded every write)`;
  const gate = r.quietPeriodSeconds ? `; run --exit-when-converged waits for --quiet-period ${formatDuration(r.quietPeriodSeconds)}${(r.quietSeconds ?? 0) >= r.quietPeriodSeconds ? ' (reached)' : ` (${formatDuration(r.quietPeriodSeconds - (r.quietSeconds ?? 0))} to go, if no old-version write comes)`}` : '';
  return `rollout: ${lines.join('\n  ')}\n  ${quiet}${gate}`;
}

/** An xid held this long is worth showing; shorter ones are ordinary traffic. */
const OPEN_TRANSACTION_MIN_AGE_S = 10;

async function longOpenTransactions(db: Parameters<typeof listSegments>[0]): Promise<OpenTransaction[]> {
  const { xids } = await openTransactionsNow(db);
  const here = (await db.query<{ d: string }>(`select current_database() as d`)).rows[0]!.d;
  const all = await describeTransactions(db, xids);
  return all.filter((t) => (t.database === here || t.database === null) && t.kind !== 'unknown' && (t.ageSeconds ?? 0) >= OPEN_TRANSACTION_MIN_AGE_S).sort((a, b) => (b.ageSeconds ?? 0) - (a.ageSeconds ?? 0));
}

async function readReplication(db: Parameters<typeof listSegments>[0], slot: string, maxRetainedWalBytes: number): Promise<ReplicationStatus> {
  const info = await readSlot(db, slot);
  const lag = info.activePid
    ? await db.query<{ s: number | null }>(`select extract(epoch from flush_lag)::float8 as s from pg_stat_replication where pid = $1`, [info.activePid])
    : null;
  const d = await db.query(
    `select host, pid, started_at as "startedAt", heartbeat_at as "heartbeatAt", applied_lsn::text as "appliedLsn", stream_connected as "streamConnected",
            sweep_done as "sweepDone", remaining::float8 as remaining, quarantined::float8 as quarantined,
            last_check_at as "lastCheckAt", converged_at as "convergedAt",
            stream_rewrites::float8 as "streamRewrites", stream_rewrites_per_sec as "streamRewritesPerSec", stopped_at as "stoppedAt"
       from pgrekey.daemon where slot_name = $1`,
    [slot],
  );
  const lease = await readLeaseHolder(db, slot);
  const daemon = d.rows[0] ? ({ ...d.rows[0], leaseHeld: lease.held } as NonNullable<ReplicationStatus['daemon']>) : null;
  const starting = lease.held && (!daemon || daemon.stoppedAt) ? { backendPid: lease.backendPid } : null;
  return {
    slot,
    info,
    lagSeconds: lag?.rows[0]?.s ?? null,
    slotRecreations: await slotRecreations(db, slot),
    retainedWal: { bytes: info.retainedBytes, maxBytes: maxRetainedWalBytes, exceeded: retainedWalExceeded(info, maxRetainedWalBytes) },
    daemon,
    converged: daemon?.convergedAt != null && !starting,
    starting,
    ...(await readLeadership(db, slot)),
  };
}

export async function readStatus(ctxPool: Parameters<typeof listSegments>[0], slot: string, maxRetainedWalBytes = 0): Promise<StatusReport> {
  const segments = await listSegments(ctxPool);
  const byColumn = await summarizeQuarantine(ctxPool);
  const runs = await ctxPool.query(
    `select id::float8 as id, command, started_at as "startedAt", finished_at as "finishedAt", outcome, summary from pgrekey.run order by id desc limit 5`,
  );
  const c = (
    await ctxPool.query(
      `select paused, pause_reason as "pauseReason", paused_by as "pausedBy", paused_at as "pausedAt", throttle_reason as reason,
              throttle_detail as detail, throttled_since as since, controller, controller_at as "controllerAt" from pgrekey.control`,
    )
  ).rows[0];
  const overrides = Object.fromEntries(await readOverrides(ctxPool));
  const replication = await readReplication(ctxPool, slot, maxRetainedWalBytes);
  const shown = (s: Segment) => shownState(s, c);
  const sweep = segments.map((s) => {
    const pass = passProgress(s.nextBlock, s.totalBlocks, s.startBlocks, s.state === 'done');
    return liveFigures({ ...s, percent: Number(pass.percent.toFixed(1)), blocksDone: pass.done, blocksOf: pass.of, tailBlocks: pass.grown, etaSeconds: eta(s), shown: shown(s) }, shown(s));
  });
  const verify = await lastVerify(ctxPool);
  const d = replication.daemon;
  const streamRate = d && d.leaseHeld && !d.stoppedAt ? d.streamRewritesPerSec : null;
  const now = (await ctxPool.query<{ now: Date }>('select now() as now')).rows[0]!.now;
  return {
    replication,
    throttle: { ...c, overrides },
    sweep,
    overall: { ...sweepOverall(sweep, shown), remaining: newestCount(d, runs.rows, verify, now), rowsPerSec: aggregateRate(sweep.map((s) => s.rowsPerSec), streamRate) },
    quarantine: { total: byColumn.reduce((n, q) => n + q.count, 0), byColumn },
    lastRuns: runs.rows,
    newerBackfill: newerBackfill(runs.rows, d?.lastCheckAt ?? null),
    newerVerify: newerVerify(verify, d?.lastCheckAt ?? null),
    openTransactions: await longOpenTransactions(ctxPool),
    rollout: await readRollout(ctxPool, slot),
  };
}

/** The newest verify's verdict and count, from pgrekey.event (null: none recorded). */
async function lastVerify(db: Parameters<typeof listSegments>[0]): Promise<VerifyRecord | null> {
  const v = await lastEvent(db, 'verify');
  if (!v) return null;
  const { converged, remaining } = v.detail;
  return { at: v.at, host: v.host, converged: typeof converged === 'boolean' ? converged : null, remaining: typeof remaining === 'number' ? remaining : null };
}

/** Seconds left for a running relation: the blocks left of its starting size, at its average pace so far (throttled time included). */
export function eta(s: Segment): number | null {
  const of = s.startBlocks ?? s.totalBlocks;
  if (s.state !== 'running' || !s.startedAt || of === null || s.nextBlock <= 0) return null;
  const elapsed = (s.updatedAt.getTime() - s.startedAt.getTime()) / 1000;
  return elapsed > 0 ? Math.max(0, (Math.max(0, of - s.nextBlock) * elapsed) / s.nextBlock) : null;
}

/** Slot, daemon, throttle, sweep progress per relation, quarantine, recent runs. Reads state only. */
export async function statusCommand(flags: GlobalFlags, opts: { json?: boolean; watch?: boolean | string }): Promise<number> {
  const ctx = await openContext(flags);
  try {
    await requireState(ctx.pool);
    const everyMs = opts.watch === undefined || opts.watch === false ? 0 : 1000 * (opts.watch === true ? 2 : Math.max(0.5, Number(opts.watch) || 2));
    let stop = false;
    const onSignal = () => (stop = true);
    process.once('SIGINT', onSignal);
    try {
      do {
        const report = await readStatus(ctx.pool, ctx.config.replication.slot, ctx.config.replication.maxRetainedWalBytes);
        const text = opts.json ? JSON.stringify(report, null, everyMs ? 0 : 2) : renderStatus(report);
        // --watch on a terminal redraws in place; elsewhere (and with --json) it appends.
        if (everyMs && !opts.json && process.stdout.isTTY) process.stdout.write('\x1b[2J\x1b[H');
        process.stdout.write(`${everyMs && !opts.json ? `${new Date().toISOString()}  (every ${everyMs / 1000}s, Ctrl-C to stop)\n` : ''}${text}\n`);
        if (everyMs) await new Promise((r) => setTimeout(r, everyMs));
      } while (everyMs && !stop);
    } finally {
      process.off('SIGINT', onSignal);
    }
    return EXIT_OK;
  } finally {
    await ctx.close();
  }
}

function mb(bytes: number | null): string {
  return bytes === null ? '?' : `${(bytes / 1048576).toFixed(1)} MB`;
}

function renderReplication(r: ReplicationStatus, newer: RunRow | null, verify: VerifyRecord | null): string {
  const i = r.info;
  if (!i.exists) return `replication slot ${r.slot}: MISSING (run \`pg-rekey setup\`, or \`pg-rekey run\` recreates it and re-sweeps)`;
  const lines = [
    `replication slot ${r.slot}: ${i.active ? 'active' : 'inactive'}${i.walStatus ? `, wal_status ${i.walStatus}` : ''}, confirmed ${i.confirmedFlushLsn}, server at ${i.currentLsn}`,
    `  lag ${mb(i.lagBytes)}${r.lagSeconds === null ? '' : ` (~${formatDuration(r.lagSeconds)})`}, WAL retained by the slot ${mb(i.retainedBytes)}, recreated ${r.slotRecreations} time(s)`,
  ];
  if (r.retainedWal.exceeded) {
    lines.push(
      `  WARNING: the slot retains more WAL than replication.max_retained_wal (${formatBytes(r.retainedWal.maxBytes)}); the server keeps it on disk until the stream confirms past it: ` +
        'is `pg-rekey run` running and keeping up? (once converged, `pg-rekey teardown` drops the slot)',
    );
  }
  const d = r.daemon;
  if (r.starting) {
    lines.push(`daemon: \`pg-rekey run\` is STARTING (it holds the slot's lease, backend pid ${r.starting.backendPid ?? '?'}; its first heartbeat follows within seconds)`);
  } else if (d) {
    lines.push(
      d.stoppedAt
        ? `daemon: STOPPED cleanly at ${d.stoppedAt.toISOString()} (pid ${d.pid} on ${d.host}); sweep ${d.sweepDone ? 'was complete' : 'resumes at the next start'}`
        : d.leaseHeld
          ? `daemon: pid ${d.pid} on ${d.host}, running since ${d.startedAt?.toISOString() ?? '?'} (holds the slot's lease), last heartbeat ${d.heartbeatAt.toISOString()}${staleHeartbeat(d.heartbeatAt) ? ' (STALE: hung, or cut off from the database?)' : ''}, stream ${d.streamConnected ? 'connected' : 'not connected'}, sweep ${d.sweepDone ? 'complete' : 'running'}`
          : `daemon: pid ${d.pid} on ${d.host} is NOT RUNNING: it did not stop cleanly (killed, crashed, or lost its lease connection); last heartbeat ${d.heartbeatAt.toISOString()}; start \`pg-rekey run\` again (the sweep resumes, the stream replays)`,
      `  stream rewrites: ${d.streamRewrites ?? 0} (${(d.streamRewritesPerSec ?? 0).toFixed(1)}/s recently)`,
      `  ${d.convergedAt ? `${d.stoppedAt ? 'was CONVERGED' : 'CONVERGED'} since ${d.convergedAt.toISOString()}` : 'not converged'}${d.lastCheckAt ? ` (last check ${d.lastCheckAt.toISOString()}: ${d.remaining ?? '?'} remaining, ${d.quarantined ?? 0} quarantined)` : ' (no check yet)'}`,
    );
    if (newer) lines.push(`  that check is older than the latest backfill: ${describeNewerBackfill(newer)}`);
    if (verify) lines.push(`  that check is older than the latest verify: ${describeNewerVerify(verify)}`);
  } else {
    lines.push('daemon: `pg-rekey run` has not run yet');
    if (newer) lines.push(`  ${describeNewerBackfill(newer)}`);
    if (verify) lines.push(`  ${describeNewerVerify(verify)}`);
  }
  if (r.leader || r.standbys.length) lines.push(...describeLeadership(r));
  return lines.join('\n');
}

/** A heartbeat older than a minute: the daemon is not running (it writes one every slot_check_interval). */
function staleHeartbeat(at: Date): boolean {
  return Date.now() - at.getTime() > 60_000;
}

/** Controller state older than this is from a sweep that is not running any more. */
export const CONTROLLER_FRESH_MS = 30_000;

const ms = (x: number | null) => (x === null ? '?' : `${x.toFixed(2)} ms`);

/** The tail the controller holds: the share of recent probes above the baseline's 90th percentile x ratio. */
const tail = (c: PacerState) => (c.tailShare == null || c.tailMs == null ? '' : `, ${Math.round(100 * c.tailShare)}% of recent probes above ${ms(c.tailMs)}`);

/** sweep.mode auto: target, measured, rate, and why it last slowed down. */
export function renderController(c: PacerState, at: Date): string[] {
  const limits = [c.maxRate > 0 ? `max_rate ${c.maxRate}` : '', c.maxWalRate > 0 ? `max_wal_rate ${formatBytes(c.maxWalRate)}/s` : ''].filter(Boolean).join(', ');
  const lines = [
    c.phase === 'learning'
      ? `sweep pacing (auto): LEARNING the probe baseline (the sweep pauses for about a second)${c.baselineMs === null ? '' : `; last baseline ${ms(c.baselineMs)}`}`
      : `sweep pacing (auto): probe ${ms(c.measuredMs)} against target ${ms(c.targetMs)} (baseline ${ms(c.baselineMs)})${tail(c)}; rate ${Math.round(c.rate)} rows/s, achieved ${c.achievedRate === null || Number.isNaN(c.achievedRate) ? '?' : Math.round(c.achievedRate)} rows/s, chunk ${c.chunkTimeMs.toFixed(0)} ms${limits ? `; ${limits}` : ''}`,
  ];
  if (c.slowedBy) lines.push(`  last slowed down ${c.slowedAt ? new Date(c.slowedAt).toISOString() : '?'}: ${c.slowedBy} (${c.slowedDetail ?? ''}); slowdowns: ${Object.entries(c.cuts).map(([k, n]) => `${k} ${n}`).join(', ')}`);
  if (c.probeDown) lines.push('  WARNING: the latency probe gets no answers: paced at the minimum rate until it does');
  lines.push(`  (as of ${at.toISOString()})`);
  return lines;
}

function renderThrottle(t: ThrottleStatus): string {
  const lines = [
    t.reason
      ? `sweep THROTTLED since ${t.since?.toISOString() ?? '?'}: ${t.reason} (${t.detail ?? ''})`
      : t.paused
        ? 'sweep paused (takes effect before the next chunk)'
        : 'sweep not throttled',
  ];
  if (t.paused) lines.push(`  paused by ${t.pausedBy ?? '?'} at ${t.pausedAt?.toISOString() ?? '?'}${t.pauseReason ? `: ${t.pauseReason}` : ''}; \`pg-rekey resume\` continues`);
  const c = t.controller;
  if (c && t.controllerAt && Date.now() - t.controllerAt.getTime() < CONTROLLER_FRESH_MS) lines.push(...renderController(c, t.controllerAt));
  const o = Object.entries(t.overrides);
  if (o.length) lines.push(`  runtime settings (pg-rekey set): ${o.map(([k, v]) => `${k}=${v}`).join(' ')}`);
  return lines.join('\n');
}

/** The one overall line: sweep progress and ETA, the newest count of what is left, the rate now. */
export function renderOverall(o: StatusOverall, t: Pick<ThrottleStatus, 'paused' | 'reason'>): string {
  return (
    `sweep: ${o.done} of ${o.relations} relation(s) done, ${o.blocksDone} of ${o.blocksTotal} blocks (${o.percent}%)` +
    (o.etaSeconds !== null ? `, ETA ~${formatDuration(o.etaSeconds)}` : t.paused ? ', PAUSED: no ETA' : t.reason ? ', THROTTLED: no ETA' : '') +
    `; ${remainingAndRate(o)}`
  );
}

/** The overall line's end (status and the status page): the newest count of what is left, with its age, and the rate now. */
export function remainingAndRate(o: Pick<StatusOverall, 'remaining' | 'rowsPerSec'>): string {
  const n = o.remaining;
  const left = n
    ? `${n.remaining ?? '?'} old-version value(s) left at the newest count (${n.source}, ${formatDuration(n.ageSeconds)} ago${n.converged ? ', converged' : ''})`
    : 'no count of old-version values yet (`pg-rekey verify` counts)';
  return `${left}; ${o.rowsPerSec === null ? 'nothing rewriting now' : `${o.rowsPerSec} rows/s rewritten now`}`;
}

function renderStatus(r: StatusReport): string {
  const sweep = renderTable(
    ['relation', 'state', 'gen', 'blocks done', 'of', '%', 'tail', 'chunk', 'rows/s', 'ETA', 'rewritten', 'conflicts', 'quarantined', 'lock waits'],
    r.sweep.map((s) => [
      s.relation, s.shown, s.generation, s.blocksDone, s.blocksOf, s.percent, s.tailBlocks > 0 ? `+${s.tailBlocks}` : '-',
      s.chunkBlocks ?? '-', s.rowsPerSec === null ? '-' : Math.round(s.rowsPerSec), s.etaSeconds === null ? '-' : formatDuration(s.etaSeconds),
      s.rowsRewritten, s.rowsConflict, s.rowsQuarantined, s.lockTimeouts,
    ]),
  );
  const q = r.quarantine.total
    ? `quarantine: ${r.quarantine.total} value(s)\n` +
      renderTable(['table', 'column', 'version', 'reason', 'count'], r.quarantine.byColumn.map((x) => [x.table, x.column, x.version === null ? '?' : `v${x.version}`, x.reason, x.count]))
    : 'quarantine: empty';
  const runs = r.lastRuns.length
    ? renderTable(['run', 'command', 'started', 'outcome'], r.lastRuns.map((x) => [x.id, x.command, x.startedAt.toISOString(), x.outcome ?? 'running']))
    : 'no runs yet';
  const open = r.openTransactions.length
    ? `\n\nOPEN TRANSACTIONS holding convergence back (they may commit old-version writes; COMMIT/ROLLBACK PREPARED a forgotten prepared one)\n${renderOpenTransactions(r.openTransactions)}`
    : '';
  return `${renderReplication(r.replication, r.newerBackfill, r.newerVerify)}\n${renderRollout(r.rollout)}\n\n${renderThrottle(r.throttle)}\n${renderOverall(r.overall, r.throttle)}\n${sweep}\n\n${q}\n\n${runs}${open}`;
}
