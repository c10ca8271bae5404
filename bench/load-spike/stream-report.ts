// RESULTS.md's part for the stream-latency scenario (stream-latency.ts): the target's row and a section.
import type { ScenarioResult } from './report.js';

/** Issue 11, target 3: the stream's rewrite latency p99 under 100 ms at 1,000 writes/s while the sweep runs. */
const TARGET_P99_MS = 100;
const TARGET_RATE = 1000;

const f = (x: number | undefined | null, d = 1) => (x === undefined || x === null || Number.isNaN(x) ? '-' : Number.isFinite(x) ? x.toFixed(d) : 'never');
const int = (x: number) => Math.round(x).toLocaleString('en-US');
/** A latency: "never" for a row not rewritten within the wait. */
const ms = (x: number, d = 1) => (Number.isFinite(x) ? `${f(x, d)} ms` : f(x));

/** The targets table's row: [target, measured, verdict]. */
export function streamTargetRow(r: ScenarioResult | undefined): string[] {
  const target = `stream rewrite latency p99 under ${TARGET_P99_MS} ms at ${int(TARGET_RATE)} writes/s while the sweep runs`;
  const s = r?.stream;
  if (!s) return [target, 'the stream-latency scenario did not run (or failed)', '**not measured**'];
  const l = s.latency;
  const sweepRate = s.duringWrites.sweep / s.duringWrites.seconds;
  const measured =
    `p99 ${ms(l.p99)} (p50 ${ms(l.p50)}, p95 ${ms(l.p95)}, max ${ms(l.max, 0)}) over ${int(s.committed)} writes at ${int(s.writesPerSec)} writes/s; ` +
    `the sweep rewrote ${int(s.duringWrites.sweep)} rows (${int(sweepRate)} rows/s) meanwhile; ${int(s.notRewritten)} not rewritten within the bound`;
  // Shown only at the stated load: the writes at (nearly) the target rate, and the sweep at work meanwhile.
  const why: string[] = [];
  if (s.writesPerSec < 0.95 * TARGET_RATE) why.push(`only ${int(s.writesPerSec)} writes/s were committed`);
  if (s.duringWrites.sweep === 0) why.push('the sweep rewrote nothing meanwhile');
  const verdict = l.p99 >= TARGET_P99_MS ? '**not met**' : why.length ? `**not shown**: ${why.join('; ')}` : 'met';
  return [target, measured, verdict];
}

function table(head: string[], rows: (string | number)[][]): string {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((x) => `| ${x.join(' | ')} |`)].join('\n');
}

/** "## Stream rewrite latency" with every figure of the scenario; empty when it did not run. */
export function streamSection(r: ScenarioResult | undefined): string[] {
  const s = r?.stream;
  if (!r || !s) return [];
  const l = s.latency;
  const d = s.duringWrites;
  return [
    '## Stream rewrite latency (`pg-rekey run`, stream and sweep together)',
    '',
    table(
      ['warm-up writes', 'their p99 ms', 'their max ms', 'writes offered', 'committed', 'failed', 'writes/s', 'write p99 ms (client)', 'rewritten by the stream', 'by the sweep', 'other', 'not rewritten', 'latency p50 ms', 'p95', 'p99', 'max', 'mean', '> 100 ms'],
      [[int(s.warmup.writes), f(s.warmup.p99), f(s.warmup.max, 0), int(s.offered), int(s.committed), int(s.failed), int(s.writesPerSec), f(s.writeP99Ms, 2), int(s.rewritten.stream), int(s.rewritten.sweep), int(s.rewritten.other), int(s.notRewritten), f(l.p50), f(l.p95), f(l.p99), f(l.max, 0), f(l.mean), int(l.over100ms)]],
    ),
    '',
    table(
      ['streaming after', 'caught up after', 'writes s', 'sweep rows meanwhile', 'sweep rows/s meanwhile', 'stream rewrites meanwhile', 'stream visibility waits meanwhile', 'wait for the last rewrite', 'run: sweep rows in all', 'run: stream rewrites in all', 'run peak RSS MB', 'run CPU s', 'exit on SIGTERM', 'drain s', 'fg p99 ms', 'fg p99 right before'],
      [
        [
          `${f(s.readyMs / 1000)} s`,
          `${f(s.caughtUpMs / 1000)} s`,
          f(d.seconds),
          int(d.sweep),
          int(d.sweep / d.seconds),
          int(d.stream),
          `${f(d.visibilityWaitS)} s`,
          `${f(s.waitedMs / 1000)} s`,
          int(s.atStop.sweep),
          int(s.atStop.stream),
          f(r.maxRssMB, 0),
          f(r.rotation?.cpuSeconds),
          s.exit.code === 0 ? '0' : `**${s.exit.code}**`,
          f(s.exit.ms / 1000),
          f(r.latency.p99, 2),
          r.pre ? f(r.pre.latency.p99, 2) : '-',
        ],
      ],
    ),
    '',
    'Latency: `pg_xact_commit_timestamp` of the rewrite that made the row v2 minus that of its INSERT (both on the server\'s clock;',
    'a commit timestamp is taken just before the commit record is written, so the rewrite\'s own WAL flush is not included, the INSERT\'s is).',
    'Warm-up: the writes of the first BENCH_WARMUP_SECONDS on the same timetable (the step from no writes to the full rate, not the steady state);',
    'every other figure is over the writes after it. A row not rewritten within the wait counts as infinitely late in the quantiles. "By the sweep": the row\'s rewrite carried the',
    "sweep's replication origin (the sweep reached the new row first). Stream rewrites meanwhile include the rows the foreground",
    "workload's updates move (their title is still v1). Write p99: the writer's INSERT answered, from its due time on the timetable.",
    'Caught up: the writes start once the stream has applied the WAL written before it connected (`pg_rekey_stream_applied_lsn`; the',
    "foreground's updates of v1 rows while the run started are a backlog it first works off). Visibility waits: the daemon's",
    '`pg_rekey_stream_visibility_wait_seconds_total`, time its flushes waited for decoded commits to become visible (design.md rule 3).',
    '',
  ];
}
