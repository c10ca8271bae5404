import type { ColumnCounts } from '../verify/count-versions.js';
import type { OutsideRelation } from '../verify/outside.js';
import type { OpenTransaction } from '../db/open-transactions.js';
import type { RolloutStatus } from '../commands/status.js';
import type { QuietState } from '../rollout/gate.js';
import type { CheckRecord } from '../state/check-results.js';

/** A recorded `verify --decrypt` or `discover` (pgrekey.check_result). */
export type RecordedCheck = CheckRecord & { finishedAt: string; host: string | null };

/**
 * The rotation record (`pg-rekey report`): what an auditor files. Names, counts, times, roles,
 * hosts and one-way key fingerprints; never a key, a stored value or a plaintext.
 */
export interface RotationRecord {
  generatedAt: string;
  /** Who produced this report: the database role (current_user), the host, the database. */
  generatedBy: { role: string; host: string; database: string; server: string };
  target: string;
  keys: KeyEntry[];
  timeline: TimelineEntry[];
  runs: RunEntry[];
  counts: {
    /** verify's count, now. */
    now: ColumnCounts[];
    /** The first count recorded (the first `verify`), or null when none was. */
    before: { at: string; columns: Pick<ColumnCounts, 'table' | 'column' | 'byVersion' | 'notOurs' | 'nulls' | 'nonTarget'>[] } | null;
    /** What the sweep rewrote, per relation (all passes of its current generation). */
    sweep: { table: string; relation: string; state: string; generation: number; rewritten: number; conflicts: number; quarantined: number; finishedAt: string | null }[];
  };
  quarantine: { total: number; byReason: { reason: string; count: number }[]; byColumn: { table: string; column: string; version: string; reason: string; count: number }[] };
  rollout: RolloutStatus & { gate: QuietState };
  verify: { converged: boolean; remaining: number; quarantined: number | null; openTransactions: OpenTransaction[]; unfollowed: string[]; outside: OutsideRelation[]; ignore: string[] };
  /** The latest `verify --decrypt` and `discover` results, per mode (empty: not run). */
  checks: { deepVerify: RecordedCheck[]; discover: RecordedCheck[] };
  verdict: Verdict;
  /** What the state does not record, so that the reader knows what this report cannot show. */
  notRecorded: string[];
}

export interface KeyEntry {
  version: string;
  /** fp1:... (crypto/fingerprint.ts). */
  fingerprints: { fingerprint: string; runs: number[]; inEnvironment: boolean }[];
  /** More than one fingerprint for this version: its key changed between runs (or in this environment). */
  changed: boolean;
  target: boolean;
}

export interface TimelineEntry {
  at: string;
  what: string;
  detail: string | null;
  host: string | null;
  role: string | null;
}

export interface RunEntry {
  id: number;
  command: string;
  host: string | null;
  pid: number | null;
  role: string | null;
  startedAt: string;
  finishedAt: string | null;
  outcome: string | null;
  fingerprints: Record<string, string> | null;
}

export interface Criterion {
  name: string;
  /** true met, false not met, null not run / not recorded. */
  ok: boolean | null;
  /** Whether it decides the verdict (a criterion not run that does not block is only reported). */
  blocks: boolean;
  evidence: string;
}

export interface Verdict {
  oldKeyMayGo: boolean;
  summary: string;
  criteria: Criterion[];
}
