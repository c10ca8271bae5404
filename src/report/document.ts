import { formatDuration } from '../format.js';
import type { RotationRecord } from './record.js';

/**
 * The rotation record laid out for people: sections of paragraphs, lists and tables, rendered
 * as Markdown or HTML (render-*.ts) from the same layout. Pure.
 */
export type Block =
  | { kind: 'p'; text: string; tone?: 'ok' | 'bad' | 'note' }
  | { kind: 'list'; items: string[] }
  | { kind: 'table'; header: string[]; rows: (string | number)[][] };

export interface Section {
  heading: string;
  blocks: Block[];
}

export interface ReportDocument {
  title: string;
  subtitle: string;
  verdict: { ok: boolean; text: string };
  sections: Section[];
}

const mark = (ok: boolean | null) => (ok === null ? 'not run' : ok ? 'yes' : 'NO');

export function layoutRecord(r: RotationRecord): ReportDocument {
  const versions = [...new Set([...r.counts.now, ...(r.counts.before?.columns ?? [])].flatMap((c) => Object.keys(c.byVersion)))].sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)));
  const countRows = (cols: RotationRecord['counts']['now'] | NonNullable<RotationRecord['counts']['before']>['columns']) =>
    cols.map((c) => [c.table, c.column, ...versions.map((v) => c.byVersion[v] ?? 0), c.notOurs, c.nulls, c.nonTarget]);
  const countHeader = ['table', 'column', ...versions, 'not ours', 'null', `not at ${r.target}`];
  const sections: Section[] = [
    {
      heading: 'Verdict and evidence',
      blocks: [
        { kind: 'p', text: r.verdict.summary, tone: r.verdict.oldKeyMayGo ? 'ok' : 'bad' },
        { kind: 'table', header: ['criterion', 'met', 'evidence'], rows: r.verdict.criteria.map((c) => [c.name, mark(c.ok), c.evidence]) },
      ],
    },
    {
      heading: 'Keys',
      blocks: [
        { kind: 'p', text: `Target version ${r.target}. Fingerprints are HMAC-SHA256 keyed by the key over the label "pg-rekey key fingerprint v1", truncated to 128 bits: they identify a key and reveal nothing of it.`, tone: 'note' },
        {
          kind: 'table',
          header: ['version', 'fingerprint', 'held by runs', 'in this environment', 'note'],
          rows: r.keys.flatMap((k) => k.fingerprints.map((f) => [k.version + (k.target ? ' (target)' : ''), f.fingerprint, f.runs.length ? f.runs.map((n) => `#${n}`).join(', ') : '-', f.inEnvironment ? 'yes' : 'no', k.changed ? 'KEY CHANGED for this version' : ''])),
        },
      ],
    },
    {
      heading: 'Operator',
      blocks: [{ kind: 'list', items: [`database role: ${r.generatedBy.role}`, `host: ${r.generatedBy.host}`, `database: ${r.generatedBy.database} (PostgreSQL ${r.generatedBy.server})`, `report generated: ${r.generatedAt}`] }],
    },
    {
      heading: 'Timeline',
      blocks: [{ kind: 'table', header: ['time (UTC)', 'what', 'detail', 'host', 'role'], rows: r.timeline.map((t) => [t.at, t.what, t.detail ?? '', t.host ?? '', t.role ?? '']) }],
    },
    {
      heading: 'Runs',
      blocks: [{ kind: 'table', header: ['run', 'command', 'host', 'pid', 'role', 'started', 'finished', 'outcome'], rows: r.runs.map((x) => [`#${x.id}`, x.command, x.host ?? '', x.pid ?? '', x.role ?? '', x.startedAt, x.finishedAt ?? 'running or died', x.outcome ?? '']) }],
    },
    {
      heading: 'Counts per table, column and version',
      blocks: [
        { kind: 'p', text: `Now (verify's count, under one snapshot):` },
        { kind: 'table', header: countHeader, rows: countRows(r.counts.now) },
        ...(r.counts.before
          ? [{ kind: 'p', text: `Before (the first recorded verify, ${r.counts.before.at}):` } as Block, { kind: 'table', header: countHeader, rows: countRows(r.counts.before.columns) } as Block]
          : [{ kind: 'p', text: 'Before: not recorded (no `pg-rekey verify` ran before the rotation).', tone: 'note' } as Block]),
        { kind: 'p', text: 'Rewritten by the sweep, per relation:' },
        { kind: 'table', header: ['table', 'relation', 'state', 'generation', 'rewritten', 'CAS conflicts', 'quarantined', 'finished'], rows: r.counts.sweep.map((s) => [s.table, s.relation, s.state, s.generation, s.rewritten, s.conflicts, s.quarantined, s.finishedAt ?? '']) },
      ],
    },
    {
      heading: 'Quarantine',
      blocks: r.quarantine.total
        ? [
            { kind: 'p', text: `${r.quarantine.total} value(s) quarantined (untouched; rows in pgrekey.quarantine).`, tone: 'bad' },
            { kind: 'table', header: ['reason', 'count'], rows: r.quarantine.byReason.map((q) => [q.reason, q.count]) },
            { kind: 'table', header: ['table', 'column', 'version', 'reason', 'count'], rows: r.quarantine.byColumn.map((q) => [q.table, q.column, q.version, q.reason, q.count]) },
          ]
        : [{ kind: 'p', text: 'Empty: every value pg-rekey read could be rewritten.', tone: 'ok' }],
    },
    {
      heading: 'Rollout: old-version writes by applications',
      blocks: [
        { kind: 'p', text: r.rollout.summary.length ? r.rollout.summary.join('; ') : 'No application wrote an old-version value since the slot was created.' },
        { kind: 'table', header: ['version', 'table', 'column', 'last hour', 'recorded', 'first', 'last'], rows: r.rollout.writes.map((w) => [`v${w.version}`, w.table, w.column, w.lastHour, w.total, w.firstAt.toISOString(), w.lastAt.toISOString()]) },
        {
          kind: 'p',
          text: !r.rollout.gate.since
            ? 'Quiet since: not recorded.'
            : r.rollout.gate.quietSeconds === null
              ? `No old-version write recorded since ${r.rollout.gate.since.toISOString()}, but quiet is not established: no \`pg-rekey run\` convergence check passed, so the stream has not decoded every write since.`
              : `Quiet since ${r.rollout.gate.since.toISOString()}: ${formatDuration(r.rollout.gate.quietSeconds)} as of the last passed convergence check (${r.rollout.observedUntil?.toISOString()}); the report asks for ${formatDuration(r.rollout.gate.periodSeconds)}.`,
        },
      ],
    },
    {
      heading: 'Outside the configuration',
      blocks: [
        r.verify.outside.length
          ? { kind: 'table', header: ['relation', 'was a leaf of', 'old-version values', 'ignore:'], rows: r.verify.outside.map((o) => [o.relation, o.wasPartOf, o.remaining ?? '?', o.ignored ? 'ignored' : '']) }
          : { kind: 'p', text: 'No relation that left a configured table (detached partition, NO INHERIT child) is recorded.' },
        ...(r.verify.unfollowed.length ? [{ kind: 'list', items: r.verify.unfollowed.map((u) => `not followed by the stream: ${u}`) } as Block] : []),
      ],
    },
    {
      heading: 'Deep checks',
      blocks: (['deep-verify', 'discover'] as const).map((kind) => {
        const list = kind === 'deep-verify' ? r.checks.deepVerify : r.checks.discover;
        return list.length
          ? ({ kind: 'table', header: ['check', 'mode', 'command', 'finished', 'host', 'result', 'details'], rows: list.map((c) => [kind, c.mode, c.command, c.finishedAt, c.host ?? '', c.ok ? 'passed' : 'FAILED', checkDetails(c.result as Record<string, unknown>)]) } as Block)
          : ({ kind: 'p', text: `${kind === 'deep-verify' ? 'verify --decrypt' : 'discover'}: NOT RUN.`, tone: 'note' } as Block);
      }),
    },
    { heading: 'Not recorded', blocks: [{ kind: 'list', items: r.notRecorded }] },
  ];
  return {
    title: `pg-rekey rotation record: ${r.generatedBy.database}, target ${r.target}`,
    subtitle: `generated ${r.generatedAt} by ${r.generatedBy.role} on ${r.generatedBy.host}`,
    verdict: { ok: r.verdict.oldKeyMayGo, text: r.verdict.summary },
    sections,
  };
}

/** A one-line summary of a recorded check's result object: its numeric totals only. */
function checkDetails(result: Record<string, unknown>): string {
  const parts: string[] = [];
  const totals = result.totals;
  if (totals && typeof totals === 'object') for (const [k, v] of Object.entries(totals)) if (typeof v === 'number') parts.push(`${k} ${v}`);
  for (const k of ['relationsScanned', 'rowsRead', 'unconfiguredOld']) if (typeof result[k] === 'number') parts.push(`${k} ${result[k] as number}`);
  if (Array.isArray(result.matviews)) parts.push(`matviews ${result.matviews.length}`);
  return parts.join(', ');
}
