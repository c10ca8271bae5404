/**
 * What status may claim, decided from state alone (pure): a sweep that is paused or throttled is not
 * "running" at some rate with an ETA; a daemon that holds the slot's lease but has not written its
 * first heartbeat is starting, not absent; a daemon's last count is stale once a backfill finished
 * after it; one overall line sums the sweep.
 */
import type { Segment } from '../state/segments.js';
import { passProgress } from '../backfill/chunk-plan.js';

export type SweepState = Segment['state'] | 'paused' | 'throttled';

/** The state to show for a segment, given the sweep-wide pause and throttle. */
export function shownState(s: Pick<Segment, 'state'>, t: { paused: boolean; reason: string | null }): SweepState {
  if (s.state !== 'running') return s.state;
  if (t.paused) return 'paused';
  if (t.reason) return 'throttled';
  return 'running';
}

/** A rate and an ETA only for a segment that is sweeping right now. */
export function liveFigures<T extends { rowsPerSec: number | null; etaSeconds: number | null }>(s: T, state: SweepState): T {
  return state === 'running' ? s : { ...s, rowsPerSec: null, etaSeconds: null };
}

export interface RunRow {
  id: number;
  command: string;
  startedAt: Date;
  finishedAt: Date | null;
  outcome: string | null;
  summary?: { converged?: boolean | null; remaining?: number | null } | null;
}

/** The newest backfill that finished after `since` (the daemon's last count), if any: its count is newer. */
export function newerBackfill(runs: readonly RunRow[], since: Date | null): RunRow | null {
  const done = runs.filter((r) => r.command === 'backfill' && r.finishedAt && (!since || r.finishedAt > since) && r.summary && r.summary.converged != null);
  return done.sort((a, b) => b.finishedAt!.getTime() - a.finishedAt!.getTime())[0] ?? null;
}

export function describeNewerBackfill(r: RunRow): string {
  const s = r.summary!;
  return s.converged
    ? `a backfill (run ${r.id}) finished after it, at ${r.finishedAt!.toISOString()}: no old-version value left then (the daemon's next check confirms; \`pg-rekey verify\` counts now)`
    : `a backfill (run ${r.id}) finished after it, at ${r.finishedAt!.toISOString()}: ${s.remaining ?? '?'} old-version value(s) left then`;
}

/** The newest verify as pgrekey.event recorded it (counts only). */
export interface VerifyRecord {
  at: Date;
  host: string | null;
  converged: boolean | null;
  remaining: number | null;
}

/** A verify newer than the daemon's last count (or any, without one): its count is the newer one. */
export function newerVerify(v: VerifyRecord | null, since: Date | null): VerifyRecord | null {
  return v && (!since || v.at > since) ? v : null;
}

export function describeNewerVerify(v: VerifyRecord): string {
  const verdict = v.converged === null ? '' : v.converged ? ' (converged)' : ' (NOT converged)';
  return `a verify at ${v.at.toISOString()}${v.host ? ` on ${v.host}` : ''} counted ${v.remaining ?? '?'} old-version value(s)${verdict}`;
}

/** The newest count of the old-version values left, whoever made it. */
export interface NewestCount {
  remaining: number | null;
  converged: boolean | null;
  source: 'daemon' | 'backfill' | 'verify';
  at: Date;
  ageSeconds: number;
}

/** The newest of the daemon's last check, the last finished backfill's count and the last verify (pure). */
export function newestCount(
  daemon: { lastCheckAt: Date | null; remaining: number | null; convergedAt: Date | null } | null,
  runs: readonly RunRow[],
  verify: VerifyRecord | null,
  now: Date,
): NewestCount | null {
  const found: Omit<NewestCount, 'ageSeconds'>[] = [];
  if (daemon?.lastCheckAt) found.push({ source: 'daemon', at: daemon.lastCheckAt, remaining: daemon.remaining, converged: daemon.convergedAt !== null });
  const b = newerBackfill(runs, null);
  if (b) found.push({ source: 'backfill', at: b.finishedAt!, remaining: b.summary!.remaining ?? null, converged: b.summary!.converged ?? null });
  if (verify) found.push({ source: 'verify', at: verify.at, remaining: verify.remaining, converged: verify.converged });
  const n = found.sort((x, y) => y.at.getTime() - x.at.getTime())[0];
  return n ? { ...n, ageSeconds: Math.max(0, Math.round((now.getTime() - n.at.getTime()) / 1000)) } : null;
}

/** Rows rewritten per second right now: the sweeping relations' recent rates and the stream's (null: nothing rewrites). */
export function aggregateRate(sweepRates: readonly (number | null)[], streamRate: number | null): number | null {
  const rates = [...sweepRates, streamRate].filter((x): x is number => x !== null && Number.isFinite(x));
  return rates.length ? Math.round(rates.reduce((n, x) => n + x, 0)) : null;
}

export interface SweepOverall {
  relations: number;
  done: number;
  blocksDone: number;
  blocksTotal: number;
  percent: number;
  /** null when nothing is sweeping now (paused, throttled, done, or not started). */
  etaSeconds: number | null;
}

/**
 * Blocks swept against each relation's size when its pass started (the growing tail is not
 * counted: % never goes backwards as rewritten rows grow a table), over every relation; an ETA
 * only while one sweeps.
 */
export function sweepOverall(segments: readonly (Segment & { etaSeconds: number | null })[], state: (s: Segment) => SweepState): SweepOverall {
  let blocksDone = 0;
  let blocksTotal = 0;
  let eta: number | null = null;
  let pendingBlocks = 0;
  let pace: number | null = null; // seconds per block of the relation sweeping now
  for (const s of segments) {
    const pass = passProgress(s.nextBlock, s.totalBlocks, s.startBlocks, s.state === 'done');
    blocksTotal += pass.of;
    blocksDone += pass.done;
    if (s.state === 'pending') pendingBlocks += pass.of;
    if (state(s) === 'running' && s.etaSeconds !== null) {
      eta = (eta ?? 0) + s.etaSeconds;
      const left = pass.of - s.nextBlock;
      if (left > 0) pace = s.etaSeconds / left;
    }
  }
  if (eta !== null && pace !== null) eta += pendingBlocks * pace;
  return {
    relations: segments.length,
    done: segments.filter((s) => s.state === 'done').length,
    blocksDone,
    blocksTotal,
    percent: blocksTotal > 0 ? Number(((100 * blocksDone) / blocksTotal).toFixed(1)) : segments.length ? 100 : 0,
    etaSeconds: eta,
  };
}
