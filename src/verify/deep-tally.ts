import { versionLabel } from '../crypto/envelope.js';
import type { CheckOutcome } from '../crypto/rewrite.js';

/**
 * What `verify --decrypt` found in one configured column: per version, the values it opened
 * with the key of their version, those that did not open, and those it could not check (no
 * key of that version configured). Counts only: never a value.
 */
export interface DeepColumn {
  table: string;
  column: string;
  /** Values read per version label (opened + failed + noKey). */
  read: Record<string, number>;
  opened: Record<string, number>;
  /** Values that did not open with the key of their version, per version label. */
  failed: Record<string, number>;
  /** Values of a version without a configured key: not checked. */
  noKey: Record<string, number>;
  /** Failures by reason ('mac-failure', 'bad-base64', 'too-short'). */
  reasons: Record<string, number>;
}

/** Where a value that did not open is: a ctid (as read: the row may move since) and why; never the value. */
export interface DeepFailure {
  table: string;
  relation: string;
  column: string;
  ctid: string;
  version: string;
  reason: string;
}

/** At most this many failures are listed with their ctids; the counts cover all of them. */
export const MAX_FAILURE_DETAILS = 10;

export function emptyColumn(table: string, column: string): DeepColumn {
  return { table, column, read: {}, opened: {}, failed: {}, noKey: {}, reasons: {} };
}

const bump = (m: Record<string, number>, k: string, n = 1) => void (m[k] = (m[k] ?? 0) + n);

/** Adds one checked value to its column; returns a failure record when it did not open. */
export function tally(c: DeepColumn, outcome: NonNullable<CheckOutcome>): 'opened' | 'no-key' | 'failed' {
  const v = versionLabel(outcome.version);
  bump(c.read, v);
  if (outcome.outcome === 'opened') {
    bump(c.opened, v);
    return 'opened';
  }
  if (outcome.outcome === 'no-key') {
    bump(c.noKey, v);
    return 'no-key';
  }
  bump(c.failed, v);
  bump(c.reasons, outcome.outcome);
  return 'failed';
}

export interface DeepTotals {
  /** Target-version values that do not open with the target key: an application writes with another key. */
  targetFailed: number;
  /** Old-version values that do not open with their old key: the rewrite would quarantine them. */
  oldFailed: number;
  /** Values of versions without a key: not checked. */
  notChecked: number;
  /** Values read (of any version). */
  read: number;
}

export function totals(columns: readonly DeepColumn[], target: number): DeepTotals {
  const t = versionLabel(target);
  const sum = (m: Record<string, number>, keep: (v: string) => boolean) => Object.entries(m).reduce((n, [v, k]) => (keep(v) ? n + k : n), 0);
  return {
    targetFailed: columns.reduce((n, c) => n + sum(c.failed, (v) => v === t), 0),
    oldFailed: columns.reduce((n, c) => n + sum(c.failed, (v) => v !== t), 0),
    notChecked: columns.reduce((n, c) => n + sum(c.noKey, () => true), 0),
    read: columns.reduce((n, c) => n + sum(c.read, () => true), 0),
  };
}
