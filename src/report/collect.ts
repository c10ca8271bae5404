import { hostname } from 'node:os';
import type { Context } from '../context.js';
import type { TableInfo } from '../db/catalog.js';
import { versionLabel } from '../crypto/envelope.js';
import { collectVerify } from '../commands/verify.js';
import { readRollout } from '../commands/status.js';
import { quietState } from '../rollout/gate.js';
import { listEvents, type EventRow } from '../state/events.js';
import { listSegments } from '../state/segments.js';
import { summarizeQuarantine } from '../state/quarantine.js';
import { latestChecks } from '../state/check-results.js';
import { decideVerdict } from './verdict.js';
import type { KeyEntry, RecordedCheck, RotationRecord, RunEntry, TimelineEntry } from './record.js';

export interface CollectOptions {
  target: number;
  /** Fingerprints of the keys in this environment (version label -> fp). */
  environment: Record<string, string>;
  quietPeriodSeconds: number;
}

/** Reads everything the rotation record needs; the count and checks are verify's own. */
export async function collectRecord(ctx: Context, tables: TableInfo[], o: CollectOptions): Promise<RotationRecord> {
  const db = ctx.pool;
  const slot = ctx.config.replication.slot;
  const who = (await db.query<{ role: string; database: string; server: string; now: Date }>(`select current_user as role, current_database() as database, current_setting('server_version') as server, now() as now`)).rows[0]!;
  const verify = await collectVerify(ctx, tables, o.target);
  const rollout = await readRollout(db, slot);
  const runs = await readRuns(db);
  const events = await listEvents(db);
  const checks = await latestChecks(db);
  const quarantine = await summarizeQuarantine(db);
  const byReason = new Map<string, number>();
  for (const q of quarantine) byReason.set(q.reason, (byReason.get(q.reason) ?? 0) + q.count);
  const firstVerify = events.find((e) => e.kind === 'verify' && Array.isArray(e.detail.columns));
  const record: Omit<RotationRecord, 'verdict'> = {
    generatedAt: who.now.toISOString(),
    generatedBy: { role: who.role, host: hostname(), database: who.database, server: who.server },
    target: versionLabel(o.target),
    keys: keyEntries(runs, o.environment, o.target),
    timeline: await timeline(db, slot, runs, events, checks, rollout),
    runs,
    counts: {
      now: verify.columns,
      before: firstVerify ? { at: firstVerify.at.toISOString(), columns: firstVerify.detail.columns as NonNullable<RotationRecord['counts']['before']>['columns'] } : null,
      sweep: (await listSegments(db)).map((s) => ({ table: s.tableName, relation: s.relation, state: s.state, generation: s.generation, rewritten: s.rowsRewritten, conflicts: s.rowsConflict, quarantined: s.rowsQuarantined, finishedAt: s.finishedAt?.toISOString() ?? null })),
    },
    quarantine: {
      total: quarantine.reduce((n, q) => n + q.count, 0),
      byReason: [...byReason].map(([reason, count]) => ({ reason, count })),
      byColumn: quarantine.map((q) => ({ table: q.table, column: q.column, version: q.version === null ? '?' : versionLabel(q.version), reason: q.reason, count: q.count })),
    },
    rollout: { ...rollout, gate: quietState(rollout.quietSince, rollout.observedUntil, o.quietPeriodSeconds) },
    verify: { converged: verify.converged, remaining: verify.remaining, quarantined: verify.quarantined, openTransactions: verify.openTransactions, unfollowed: verify.unfollowed, outside: verify.outside, ignore: verify.ignore },
    checks: { deepVerify: checks.filter((c) => c.kind === 'deep-verify'), discover: checks.filter((c) => c.kind === 'discover') },
    notRecorded: [
      ...(firstVerify ? [] : ['the counts before the rotation: no `pg-rekey verify` was recorded before this report (run it before `run` to record them)']),
      'pauses and resumes before this version of pg-rekey, and how long each throttle lasted (only the current throttle state is kept)',
      'rewrites by the stream per table (only the running daemon\'s total; the sweep\'s are per relation above)',
    ],
  };
  return { ...record, verdict: decideVerdict(record) };
}

async function readRuns(db: Context['pool']): Promise<RunEntry[]> {
  const r = await db.query<{ id: number; command: string; host: string | null; pid: number | null; role: string | null; started_at: Date; finished_at: Date | null; outcome: string | null; key_fingerprints: Record<string, string> | null }>(
    `select id::float8 as id, command, host, pid, db_role as role, started_at, finished_at, outcome, key_fingerprints from pgrekey.run order by id`,
  );
  return r.rows.map((x) => ({ id: x.id, command: x.command, host: x.host, pid: x.pid, role: x.role, startedAt: x.started_at.toISOString(), finishedAt: x.finished_at?.toISOString() ?? null, outcome: x.outcome, fingerprints: x.key_fingerprints }));
}

/** Per version, every fingerprint seen (runs that held it, this environment). */
export function keyEntries(runs: readonly RunEntry[], environment: Record<string, string>, target: number): KeyEntry[] {
  const by = new Map<string, Map<string, { runs: number[]; inEnvironment: boolean }>>();
  const at = (version: string, fp: string) => {
    const m = by.get(version) ?? new Map();
    by.set(version, m);
    const e = m.get(fp) ?? { runs: [], inEnvironment: false };
    m.set(fp, e);
    return e;
  };
  for (const run of runs) for (const [version, fp] of Object.entries(run.fingerprints ?? {})) at(version, fp).runs.push(run.id);
  for (const [version, fp] of Object.entries(environment)) at(version, fp).inEnvironment = true;
  return [...by]
    .sort(([a], [b]) => Number(a.slice(1)) - Number(b.slice(1)))
    .map(([version, m]) => ({ version, fingerprints: [...m].map(([fingerprint, e]) => ({ fingerprint, ...e })), changed: m.size > 1, target: version === versionLabel(target) }));
}

async function timeline(db: Context['pool'], slot: string, runs: RunEntry[], events: EventRow[], checks: RecordedCheck[], rollout: RotationRecord['rollout'] | Awaited<ReturnType<typeof readRollout>>): Promise<TimelineEntry[]> {
  const out: TimelineEntry[] = [];
  const add = (at: Date | string, what: string, detail: string | null = null, host: string | null = null, role: string | null = null) => out.push({ at: typeof at === 'string' ? at : at.toISOString(), what, detail, host, role });
  const migrated = await db.query<{ at: Date }>(`select min(applied_at) as at from pgrekey.migration`);
  if (migrated.rows[0]?.at) add(migrated.rows[0].at, 'setup: state schema created');
  const slots = await db.query<{ event: string; at: Date; reason: string | null; lsn: string | null }>(`select event, at, reason, lsn::text as lsn from pgrekey.slot_event where slot_name = $1 order by at, id`, [slot]);
  for (const s of slots.rows) add(s.at, s.event === 'created' ? `setup: replication slot ${slot} created` : s.event === 'recreated' ? `replication slot ${slot} RECREATED (the sweep restarted from block 0)` : `replication slot ${slot} dropped`, [s.reason, s.lsn ? `at ${s.lsn}` : null].filter(Boolean).join(', ') || null);
  for (const r of runs) {
    add(r.startedAt, `${r.command} #${r.id} started`, r.pid ? `pid ${r.pid}` : null, r.host, r.role);
    if (r.finishedAt) add(r.finishedAt, `${r.command} #${r.id} finished: ${r.outcome ?? '?'}`, null, r.host, r.role);
  }
  for (const e of events) {
    const d = e.detail;
    const what =
      e.kind === 'verify' ? `verify: ${d.converged ? 'converged' : `NOT converged (${d.remaining ?? '?'} old-version value(s))`}`
      : e.kind === 'report' ? `report written (${d.format ?? '?'}${d.file ? `, ${d.file}` : ''}): ${d.oldKeyMayGo ? 'the old key may go' : 'the old key must stay'}`
      : e.kind === 'pause' ? 'sweep paused'
      : e.kind === 'resume' ? 'sweep resumed'
      : e.kind === 'converged' ? 'run: CONVERGED'
      : 'run: no longer converged';
    add(e.at, what, e.kind === 'pause' ? `reason: ${(d.reason as string | null) ?? 'none given'}` : null, e.host, e.role);
  }
  for (const c of checks) add(c.finishedAt, `${c.kind === 'deep-verify' ? 'deep verify' : 'discover'} (${c.mode}): ${c.ok ? 'passed' : 'FAILED'}`, c.command, c.host, null);
  for (const w of rollout.writes) {
    add(w.firstAt, `first v${w.version} write by an application seen (${w.table}.${w.column})`);
    add(w.lastAt, `last v${w.version} write by an application seen (${w.table}.${w.column})`, `${w.total} recorded`);
  }
  if (rollout.quietSince) add(rollout.quietSince, 'quiet since (no old-version write after this)');
  return out.sort((a, b) => a.at.localeCompare(b.at));
}
