import { versionLabel } from '../crypto/envelope.js';
import { formatDuration } from '../format.js';
import type { OldVersionWrites } from '../state/old-version-writes.js';

/**
 * The rollout gate as the operator reads it (status, verify, report): is an application
 * instance still writing an old key? Pure: from the recorded old-version writes and a clock.
 */

/** A write this recent means an instance still writes the old key (the README's runbook waits 15 minutes). */
export const RECENT_MS = 60 * 60 * 1000;

export interface VersionSighting {
  version: string;
  /** Where the newest write of this version went. */
  table: string;
  column: string;
  lastAt: Date;
  agoSeconds: number;
  /** Across every table and column of this version. */
  total: number;
  lastHour: number;
}

/** The newest write per version, most recent first. */
export function latestByVersion(writes: readonly OldVersionWrites[], nowMs: number): VersionSighting[] {
  const by = new Map<number, VersionSighting>();
  for (const w of writes) {
    const v = by.get(w.version);
    if (!v) {
      by.set(w.version, { version: versionLabel(w.version), table: w.table, column: w.column, lastAt: w.lastAt, agoSeconds: Math.max(0, (nowMs - w.lastAt.getTime()) / 1000), total: w.total, lastHour: w.lastHour });
      continue;
    }
    v.total += w.total;
    v.lastHour += w.lastHour;
    if (w.lastAt > v.lastAt) Object.assign(v, { table: w.table, column: w.column, lastAt: w.lastAt, agoSeconds: Math.max(0, (nowMs - w.lastAt.getTime()) / 1000) });
  }
  return [...by.values()].sort((a, b) => b.lastAt.getTime() - a.lastAt.getTime());
}

/** "last v1 write seen 4m ago (incidents.title): an application instance still writes v1", one line per version. */
export function describeSightings(writes: readonly OldVersionWrites[], nowMs: number): string[] {
  return latestByVersion(writes, nowMs).map((s) => {
    const where = `${s.table}.${s.column}`;
    const counts = `${s.lastHour} in the last hour, ${s.total} recorded`;
    return s.agoSeconds * 1000 < RECENT_MS
      ? `last ${s.version} write seen ${formatDuration(s.agoSeconds)} ago (${where}; ${counts}): an application instance still writes ${s.version}`
      : `last ${s.version} write seen ${formatDuration(s.agoSeconds)} ago (${where}; ${counts}): none in the last hour`;
  });
}

export interface QuietState {
  /** Where the quiet period counts from (the last old-version write, or the slot's creation if later). */
  since: Date | null;
  quietSeconds: number | null;
  /** The period asked for (run --exit-when-converged --quiet-period, report --quiet-period), seconds. */
  periodSeconds: number;
  quiet: boolean;
}

/** Quiet from `since` up to `observedUntil` (when the stream was last known caught up); null when not observed. */
export function quietState(since: Date | null, observedUntil: Date | null, periodSeconds: number): QuietState {
  const quietSeconds = since === null || observedUntil === null ? null : Math.max(0, (observedUntil.getTime() - since.getTime()) / 1000);
  return { since, quietSeconds, periodSeconds, quiet: quietSeconds !== null && quietSeconds >= periodSeconds };
}
