import { formatDuration } from '../format.js';
import { formatBytes } from '../replication/slot.js';
import { CONTROLLER_FRESH_MS, remainingAndRate, renderController, type StatusReport } from '../commands/status.js';
import { describeNewerBackfill, describeNewerVerify } from '../commands/status-truth.js';

/** One convergence check as the daemon saw it (the page lists the last few). */
export interface CheckRecord {
  at: Date;
  sweepDone: boolean;
  streamCaughtUp: boolean;
  remaining: number | null;
  quarantined: number;
  openTransactions: number;
  converged: boolean;
  /** Why a count of 0 would prove nothing (unfollowed leaves, relations outside), as the check said. */
  blockers: string[];
  /** Leaves this check counted; with `remainingByLeaf`, a counted leaf that is not in it held 0. */
  counted: string[];
  remainingByLeaf: Record<string, number>;
}

/** What the daemon knows in memory, next to what the state tables say. */
export interface LiveView {
  slot: string;
  targetVersion: string;
  version: string;
  streamConnected: boolean;
  appliedLsn: string | null;
  sweepDone: boolean;
  convergedAt: Date | null;
  /** Newest first. */
  checks: CheckRecord[];
}

export interface StatusPageView {
  now: Date;
  live: LiveView;
  /** null when the state could not be read (the error says why). */
  report: StatusReport | null;
  error: string | null;
  refreshSeconds: number;
}

const HTML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Every name on the page (tables can be named anything, `<script>` included) goes through this. */
export function escapeHtml(s: unknown): string {
  return String(s).replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]!);
}

const e = escapeHtml;
const iso = (d: Date | null | undefined): string => (d ? e(d.toISOString().replace(/\.\d+Z$/, 'Z')) : '-');
const num = (n: number | null | undefined): string => (n === null || n === undefined ? '-' : e(Math.round(n).toLocaleString('en-US')));

function bar(percent: number): string {
  const p = Math.max(0, Math.min(100, Number.isFinite(percent) ? percent : 0));
  return `<div class="bar" role="progressbar" aria-valuenow="${p.toFixed(1)}" aria-valuemin="0" aria-valuemax="100"><div style="width:${p.toFixed(1)}%"></div></div><span class="pct">${p.toFixed(1)}%</span>`;
}

function table(header: string[], rows: string[][], cls = ''): string {
  if (rows.length === 0) return '';
  const head = header.map((h) => `<th>${e(h)}</th>`).join('');
  // A cell holding a progress bar stays on one line.
  const td = (c: string) => (c.startsWith('<div class="bar"') ? `<td class="nowrap">${c}</td>` : `<td>${c}</td>`);
  return `<table${cls ? ` class="${cls}"` : ''}><thead><tr>${head}</tr></thead><tbody>${rows.map((r) => `<tr>${r.map(td).join('')}</tr>`).join('')}</tbody></table>`;
}

/** The one-line verdict at the top: converged, or why not (never "converged" without a check that said so). */
function verdict(v: StatusPageView): string {
  const { live } = v;
  const last = live.checks[0];
  if (live.convergedAt && last?.converged) return `<p class="verdict ok">CONVERGED since ${iso(live.convergedAt)}</p>`;
  const why: string[] = [];
  if (!live.streamConnected) why.push('the replication stream is not connected');
  if (!live.sweepDone) why.push('the sweep has not covered every table yet');
  if (!last) why.push('no convergence check yet (the first runs once the sweep is complete)');
  else if (!last.converged) {
    if (last.remaining) why.push(`${num(last.remaining)} old-version value(s) at the last check`);
    if (last.quarantined) why.push(`${num(last.quarantined)} quarantined value(s)`);
    if (last.openTransactions) why.push(`${num(last.openTransactions)} open transaction(s) at the last check`);
    if (!last.streamCaughtUp && last.sweepDone) why.push('the stream had not caught up at the last check');
    if (last.blockers.length) why.push(`${last.blockers.length} blocker(s) listed below`);
  }
  return `<p class="verdict bad">NOT CONVERGED: ${why.map(e).join('; ') || 'see the last checks'}</p>`;
}

function streamSection(v: StatusPageView): string {
  const r = v.report?.replication;
  const i = r?.info;
  const rows: [string, string][] = [
    ['stream', v.live.streamConnected ? '<span class="ok">connected</span>' : '<span class="bad">not connected</span>'],
    ['applied LSN', e(v.live.appliedLsn ?? '-')],
  ];
  if (r && i && !i.exists) rows.push(['replication slot', `<span class="bad">${e(r.slot)} is MISSING</span>`]);
  if (r && i?.exists) {
    rows.push(['lag', `${e(formatBytes(i.lagBytes))}${r.lagSeconds === null ? '' : ` (~${e(formatDuration(r.lagSeconds))})`}`]);
    rows.push(['WAL retained by the slot', `${e(formatBytes(i.retainedBytes))}${r.retainedWal.exceeded ? ` <span class="bad">above replication.max_retained_wal (${e(formatBytes(r.retainedWal.maxBytes))})</span>` : ''}`]);
    rows.push(['slot', `${e(r.slot)}: ${i.active ? 'active' : 'inactive'}${i.walStatus ? `, wal_status ${e(i.walStatus)}` : ''}, recreated ${num(r.slotRecreations)} time(s)`]);
  }
  const d = r?.daemon;
  if (d) rows.push(['stream rewrites', `${num(d.streamRewrites)} (${e((d.streamRewritesPerSec ?? 0).toFixed(1))}/s recently)`]);
  return `<h2>Stream</h2>${table(['', ''], rows.map(([k, x]) => [e(k), x]), 'kv')}`;
}

function throttleSection(t: StatusReport['throttle']): string {
  let state: string;
  if (t.paused) state = `<span class="bad">PAUSED</span> by ${e(t.pausedBy ?? '?')} at ${iso(t.pausedAt)}${t.pauseReason ? `: ${e(t.pauseReason)}` : ''} (<code>pg-rekey resume</code> continues)`;
  else if (t.reason) state = `<span class="warn">THROTTLED</span> since ${iso(t.since)}: ${e(t.reason)}${t.detail ? ` (${e(t.detail)})` : ''}`;
  else state = '<span class="ok">not throttled</span>';
  const o = Object.entries(t.overrides);
  const c = t.controller && t.controllerAt && Date.now() - t.controllerAt.getTime() < CONTROLLER_FRESH_MS ? renderController(t.controller, t.controllerAt) : [];
  return `<h2>Throttle</h2><p>sweep ${state}</p>${c.map((l) => `<p>${e(l.trim())}</p>`).join('')}${o.length ? `<p>runtime settings (pg-rekey set): ${o.map(([k, x]) => `<code>${e(k)}=${e(x)}</code>`).join(' ')}</p>` : ''}`;
}

/** Per table, per relation: sweep progress, rate, ETA, and the remaining values of the last check. */
function tablesSection(v: StatusPageView): string {
  const sweep = v.report?.sweep ?? [];
  const last = v.live.checks[0];
  const remainingOf = (relation: string): string => {
    if (!last || !last.counted.includes(relation)) return '<span class="muted">not counted yet</span>';
    return num(last.remainingByLeaf[relation] ?? 0);
  };
  if (sweep.length === 0) return '<h2>Tables</h2><p class="muted">no sweep state yet</p>';
  const o = v.report!.overall;
  const held = v.report!.throttle.paused ? ', PAUSED: no ETA' : v.report!.throttle.reason ? ', THROTTLED: no ETA' : '';
  const overall = `<p>${bar(o.percent)} overall: ${num(o.done)} of ${num(o.relations)} relation(s) done, ${num(o.blocksDone)} of ${num(o.blocksTotal)} blocks swept${o.etaSeconds !== null ? `, ETA ~${e(formatDuration(o.etaSeconds))}` : held}; ${e(remainingAndRate(o))}</p>`;
  const byTable = new Map<string, typeof sweep>();
  for (const s of sweep) byTable.set(s.tableName, [...(byTable.get(s.tableName) ?? []), s]);
  const parts = [...byTable].map(([name, segs]) => {
    // As the overall line counts: against each relation's size when its pass started (the tail it grew by is not progress).
    const total = segs.reduce((n, s) => n + s.blocksOf, 0);
    const done = segs.reduce((n, s) => n + s.blocksDone, 0);
    const allDone = segs.every((s) => s.state === 'done');
    const rows = segs.map((s) => [
      `<code>${e(s.relation)}</code>`,
      e(s.shown),
      bar(s.state === 'done' ? 100 : s.percent),
      `${num(s.blocksDone)} / ${num(s.blocksOf)}${s.tailBlocks > 0 ? ` <span class="muted">(+${num(s.tailBlocks)} grown since the pass started: swept too)</span>` : ''}`,
      s.rowsPerSec === null ? '-' : num(s.rowsPerSec),
      s.etaSeconds === null ? '-' : e(formatDuration(s.etaSeconds)),
      num(s.rowsRewritten),
      num(s.rowsQuarantined),
      remainingOf(s.relation),
    ]);
    return `<h3><code>${e(name)}</code></h3>${bar(allDone ? 100 : total > 0 ? (100 * done) / total : 0)}${table(['relation', 'state', 'progress', 'blocks swept / at start', 'rows/s', 'ETA', 'rewritten', 'quarantined', 'remaining at last check'], rows)}`;
  });
  return `<h2>Tables</h2>${overall}${parts.join('')}`;
}

function checksSection(checks: CheckRecord[]): string {
  if (checks.length === 0) return '<h2>Last checks</h2><p class="muted">no convergence check yet: the first runs once the sweep has covered every table</p>';
  const rows = checks.map((c) => [
    iso(c.at),
    c.converged ? '<span class="ok">converged</span>' : '<span class="bad">not converged</span>',
    num(c.remaining),
    num(c.quarantined),
    num(c.openTransactions),
    c.sweepDone ? 'yes' : 'no',
    c.streamCaughtUp ? 'yes' : 'no',
  ]);
  const blockers = checks[0]!.blockers;
  return (
    `<h2>Last checks</h2>${table(['ended', 'result', 'remaining', 'quarantined', 'open transactions', 'sweep complete', 'stream caught up'], rows)}` +
    (blockers.length ? `<p>Held back at the last check by:</p><ul>${blockers.map((b) => `<li>${e(b)}</li>`).join('')}</ul>` : '')
  );
}

function otherSections(r: StatusReport): string {
  const q = r.quarantine.byColumn.map((x) => [`<code>${e(x.table)}</code>`, `<code>${e(x.column)}</code>`, x.version === null ? '?' : `v${e(x.version)}`, e(x.reason), num(x.count)]);
  const open = r.openTransactions.map((t) => [e(t.kind), e(t.kind === 'prepared' ? (t.gid ?? '?') : (t.pid ?? '?')), e(t.application ?? '-'), e(t.state ?? '-'), t.ageSeconds === null ? '-' : e(formatDuration(t.ageSeconds))]);
  const runs = r.lastRuns.map((x) => [num(x.id), e(x.command), iso(x.startedAt), x.outcome ? e(x.outcome) : 'running']);
  return (
    `<h2>Quarantine</h2>${q.length ? table(['table', 'column', 'version', 'reason', 'values'], q) : '<p class="muted">empty</p>'}` +
    (open.length ? `<h2>Open transactions holding convergence back</h2>${table(['kind', 'pid / gid', 'application', 'state', 'age'], open)}` : '') +
    `<h2>Recent runs</h2>${runs.length ? table(['run', 'command', 'started', 'outcome'], runs) : '<p class="muted">none</p>'}`
  );
}

const CSS = `body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:75em}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.3em 0}th,td{padding:.2em .6em;text-align:left;border-bottom:1px solid #eee;vertical-align:middle}
th{font-weight:600;background:#f6f6f6}table.kv thead{display:none}code{font-size:.95em;overflow-wrap:break-word}td.nowrap{white-space:nowrap}
.bar{display:inline-block;width:12em;height:.9em;background:#e4e4e4;border-radius:3px;overflow:hidden;vertical-align:middle}
.bar>div{height:100%;background:#3b7dd8}.pct{margin-left:.5em;font-variant-numeric:tabular-nums}
td{font-variant-numeric:tabular-nums}.ok{color:#17752c;font-weight:600}.bad{color:#b3261e;font-weight:600}.warn{color:#a55c00;font-weight:600}
.muted{color:#777}.verdict{font-size:1.1em;padding:.4em .6em;border-radius:4px}.verdict.ok{background:#e3f4e6}.verdict.bad{background:#fbe9e7}
.meta{color:#555}.error{background:#fbe9e7;padding:.4em .6em}`;

/** The daemon's status page: plain HTML, inline CSS, no script, refreshed by the browser every few seconds. */
export function renderStatusPage(v: StatusPageView): string {
  const { live } = v;
  const body = [
    `<h1>pg-rekey run</h1>`,
    `<p class="meta">slot <code>${e(live.slot)}</code> &middot; target key ${e(live.targetVersion)} &middot; pg-rekey ${e(live.version)} &middot; as of ${iso(v.now)} (refreshes every ${e(v.refreshSeconds)}s) &middot; <a href="/metrics">/metrics</a></p>`,
    verdict(v),
    v.error ? `<p class="error">cannot read the state from the database: ${e(v.error)}</p>` : '',
    v.report?.newerBackfill ? `<p>Since the last check: ${e(describeNewerBackfill(v.report.newerBackfill))}</p>` : '',
    v.report?.newerVerify ? `<p>Since the last check: ${e(describeNewerVerify(v.report.newerVerify))}</p>` : '',
    streamSection(v),
    v.report ? throttleSection(v.report.throttle) : '',
    tablesSection(v),
    checksSection(live.checks),
    v.report ? otherSections(v.report) : '',
  ].join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="${e(v.refreshSeconds)}">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>pg-rekey: ${e(live.slot)}</title>
<style>${CSS}</style></head>
<body>
${body}
</body></html>
`;
}
