// What the foreground feels at fixed sweep rates, measured so that the machine's own drift cancels
// out: the calibration behind the auto controller's constants (not part of `make bench`).
//
//   node --import tsx bench/load-spike/calibrate.ts [rates=0,2000,8000] [workloads=pgbench,bench]
//
// Windows of a few seconds compare badly (a checkpoint, a page's first write after it, another job:
// two 10 s windows of the workload alone differ by 15% or more in p99). So for each workload and
// rate, one workload process and one `pg-rekey backfill` held at that rate (sweep.mode auto with
// max_rate = the rate and latency_ratio 100, so only the hard limit paces it) run for CAL_CYCLES (10)
// cycles of CAL_ON_SECONDS (5) swept and as long paused (throttle.pause_file); the first two cycles
// are warm-up (the rate grows to its limit), and the first second after each switch is left out. The
// foreground's p99 over every "on" window is compared with the p99 over every "off" window, and the
// probe (like the auto mode's, every 100 ms) is summarised the same way. Rate 0: no backfill at all,
// the same switching (the A/A comparison: the noise of the method). Writes .bench-data/calibrate/calibrate.md.
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { createLogger } from '../../src/logger.js';
import { LatencyProbe } from '../../src/throttle/latency-probe.js';
import { startBenchCluster } from './cluster.js';
import { keysAndTables, restoreIncidents } from './dataset.js';
import { quantile, type Samples } from './latency.js';
import { startWorkload, type Workload } from './measure.js';
import { ROOT, runCli, snapshotBuild, writeConfig } from './pg-rekey-cli.js';
import { startPgbench } from './pgbench.js';

const RATES = (process.argv[2] ?? '0,2000,8000').split(',').map(Number);
const WORKLOADS = (process.argv[3] ?? 'pgbench,bench').split(',') as ('pgbench' | 'bench')[];
const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);
const CYCLES = Number(process.env.CAL_CYCLES ?? 10);
const ON_MS = Number(process.env.CAL_ON_SECONDS ?? 5) * 1000;
const WARMUP_CYCLES = 2;
const GUARD_MS = 1000;
const WORK = path.join(ROOT, '.bench-data', 'calibrate');
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const epoch = () => performance.timeOrigin + performance.now();
const q = (xs: number[], p: number) => quantile(Float64Array.from(xs).sort(), p);

type Span = [number, number];
interface Row {
  workload: string;
  rate: number;
  rowsPerSec: number;
  fg: { on: number[]; off: number[] };
  probe: { on: number[]; off: number[] };
}

const inside = (spans: Span[], t: number) => spans.some(([a, b]) => t >= a && t < b);

/** Latencies of the transactions scheduled inside the spans. */
function pick(s: Samples, spans: Span[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < s.scheduled.length; i++) if (!s.failed[i] && inside(spans, s.scheduled[i]!)) out.push(s.latency[i]!);
  return out;
}

async function main(): Promise<void> {
  rmSync(WORK, { recursive: true, force: true });
  mkdirSync(WORK, { recursive: true });
  snapshotBuild(path.join(WORK, 'pg-rekey'));
  const envFile = path.join(WORK, 'keys.env');
  const pauseFile = path.join(WORK, 'pause');
  const cluster = await startBenchCluster(path.join(ROOT, '.bench-data'));
  const db = new pg.Client({ connectionString: cluster.url, application_name: 'bench-admin' });
  db.on('error', () => undefined);
  const rows: Row[] = [];
  try {
    await db.connect();
    await keysAndTables(db, envFile, ROWS);
    const flags = (config: string) => ['-c', config, '--env-file', envFile, '--database-url', cluster.url];
    const throttle = { throttle: { pause_file: pauseFile, check_interval: '100ms' } };
    const config = (rate: number) => writeConfig(path.join(WORK, `rate-${rate}.yaml`), { max_rate: Math.max(rate, 1), latency_ratio: 100 }, throttle);
    const setup = await runCli(['setup', ...flags(config(0))]);
    if (setup.code !== 0) throw new Error(`setup exited ${setup.code}: ${setup.stderr}`);
    for (const workload of WORKLOADS) {
      for (const rate of RATES) {
        await restoreIncidents(db);
        writeFileSync(pauseFile, '');
        const wl: Workload =
          workload === 'pgbench'
            ? await startPgbench({ url: cluster.url, rows: ROWS, rate: 300, clients: 4, dir: path.join(WORK, 'pgbench') }, 3000)
            : await startWorkload({ url: cluster.url, rows: ROWS, rate: 300, clients: 8, updateFraction: 0.2, seed: 42 }, 3000);
        const probes: { t: number; ms: number }[] = [];
        const probe = new LatencyProbe(cluster.url, () => 100, (ms, overdue) => void (overdue ? undefined : probes.push({ t: epoch() - ms, ms })), createLogger('silent'));
        probe.start();
        const total = CYCLES * 2 * ON_MS;
        const cli = rate > 0 ? runCli(['backfill', '--restart', '--json', ...flags(config(rate))], total + 5000) : null;
        await sleep(2000); // the CLI starts (paused)
        const on: Span[] = [];
        const off: Span[] = [];
        for (let c = 0; c < CYCLES; c++) {
          for (const sweeping of [true, false]) {
            if (sweeping) rmSync(pauseFile, { force: true });
            else writeFileSync(pauseFile, '');
            const t = epoch();
            await sleep(ON_MS);
            if (c >= WARMUP_CYCLES) (sweeping ? on : off).push([t + GUARD_MS, t + ON_MS]);
          }
        }
        writeFileSync(pauseFile, '');
        await probe.stop();
        const run = await cli;
        const { samples } = await wl.stop();
        const row: Row = {
          workload,
          rate,
          rowsPerSec: run ? lastRewritten(run.stderr, run.stdout) / ((CYCLES * ON_MS) / 1000) : 0,
          fg: { on: pick(samples, on), off: pick(samples, off) },
          probe: { on: probes.filter((p) => inside(on, p.t)).map((p) => p.ms), off: probes.filter((p) => inside(off, p.t)).map((p) => p.ms) },
        };
        rows.push(row);
        console.log(line(row));
      }
    }
  } finally {
    await db.end().catch(() => undefined);
    await cluster.stop();
    rmSync(envFile, { force: true });
  }
  const md = [
    `# Calibration: the foreground and the probe, sweeping vs paused, at fixed sweep rates`,
    '',
    `${new Date().toISOString()}; ${ROWS} rows; ${CYCLES} cycles of ${ON_MS / 1000} s swept and ${ON_MS / 1000} s paused (the first ${WARMUP_CYCLES} left out, and the first ${GUARD_MS / 1000} s after each switch); \`node --import tsx bench/load-spike/calibrate.ts ${RATES.join(',')} ${WORKLOADS.join(',')}\`.`,
    'rows/s: rewritten per second swept. Rate 0: nothing swept (the A/A comparison: the noise of the method).',
    '',
    '| workload | max_rate | rows/s swept | fg p50 off / on | fg p99 off / on | p99 on/off | fg samples on | probe p50 off / on | probe p90 off / on | probes on above the off p90 |',
    '|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map(line),
  ].join('\n');
  writeFileSync(path.join(WORK, 'calibrate.md'), `${md}\n`);
  console.log(`wrote ${path.join(WORK, 'calibrate.md')}`);
}

function line(r: Row): string {
  const f = (x: number) => x.toFixed(2);
  const both = (x: { on: number[]; off: number[] }, k: number) => `${f(q(x.off, k))} / ${f(q(x.on, k))}`;
  const above = r.probe.on.filter((x) => x > q(r.probe.off, 0.9)).length / Math.max(1, r.probe.on.length);
  return `| ${r.workload} | ${r.rate} | ${r.rowsPerSec.toFixed(0)} | ${both(r.fg, 0.5)} | ${both(r.fg, 0.99)} | ${(q(r.fg.on, 0.99) / q(r.fg.off, 0.99)).toFixed(2)}x | ${r.fg.on.length} | ${both(r.probe, 0.5)} | ${both(r.probe, 0.9)} | ${(100 * above).toFixed(0)}% |`;
}

/** Rows rewritten: the summary on stdout, else the last progress line. */
function lastRewritten(stderr: string, stdout: string): number {
  try {
    return (JSON.parse(stdout) as { rewritten: number }).rewritten;
  } catch {
    const last = stderr
      .split('\n')
      .filter((l) => l.includes('"sweep progress"'))
      .pop();
    return last ? ((JSON.parse(last) as { rewritten?: number }).rewritten ?? 0) : 0;
  }
}

await main();
