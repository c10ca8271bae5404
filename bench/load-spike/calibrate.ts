// What the foreground feels at fixed sweep rates, and what the auto mode's probe sees meanwhile: the
// calibration behind the controller's target (not part of `make bench`).
//
//   node --import tsx bench/load-spike/calibrate.ts [rates=1000,2000,4000,8000,16000] [workloads=pgbench,bench]
//
// For each workload and rate: the table restored to all-v1, the workload started, a window of the
// workload alone, then `pg-rekey backfill` held at that rate (sweep.mode auto with max_rate = the rate
// and latency_ratio 100, so only the hard limit paces it) for CAL_SECONDS (30). A probe like the
// auto mode's (src/throttle/latency-probe.ts) samples every 100 ms in both windows. Rate "auto" runs
// the defaults. Writes .bench-data/calibrate/calibrate.md.
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { loadKeyRing } from '../../src/crypto/key-ring.js';
import { initSodium } from '../../src/crypto/secretbox.js';
import { createLogger } from '../../src/logger.js';
import { LatencyProbe } from '../../src/throttle/latency-probe.js';
import { startBenchCluster } from './cluster.js';
import { createTables, loadPristine, restoreIncidents } from './dataset.js';
import { summarize } from './latency.js';
import { startWorkload, type Workload } from './measure.js';
import { ROOT, runCli, snapshotBuild, writeConfig, writeKeys } from './pg-rekey-cli.js';
import { startPgbench } from './pgbench.js';

const RATES = (process.argv[2] ?? '1000,2000,4000,8000,16000').split(',');
const WORKLOADS = (process.argv[3] ?? 'pgbench,bench').split(',') as ('pgbench' | 'bench')[];
const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);
const SECONDS = Number(process.env.CAL_SECONDS ?? 30);
const PRE_SECONDS = 10;
const WORK = path.join(ROOT, '.bench-data', 'calibrate');
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const q = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]! : NaN;
};

interface Row {
  workload: string;
  rate: string;
  rowsPerSec: number;
  fg: { pre: number; during: number };
  probe: { pre: number[]; during: number[] };
}

/** Probe samples (ms) taken while `body` runs. */
async function probed<T>(url: string, body: () => Promise<T>): Promise<{ value: T; samples: number[] }> {
  const samples: number[] = [];
  const probe = new LatencyProbe(url, () => 100, (ms, overdue) => void (overdue ? undefined : samples.push(ms)), createLogger('silent'));
  probe.start();
  try {
    return { value: await body(), samples };
  } finally {
    await probe.stop();
  }
}

async function main(): Promise<void> {
  rmSync(WORK, { recursive: true, force: true });
  mkdirSync(WORK, { recursive: true });
  snapshotBuild(path.join(WORK, 'pg-rekey'));
  const envFile = path.join(WORK, 'keys.env');
  const cluster = await startBenchCluster(path.join(ROOT, '.bench-data'));
  const db = new pg.Client({ connectionString: cluster.url, application_name: 'bench-admin' });
  db.on('error', () => undefined);
  const rows: Row[] = [];
  try {
    await db.connect();
    await writeKeys(envFile);
    await initSodium();
    await createTables(db);
    await loadPristine(db, ROWS, loadKeyRing({ env: {}, envFile }));
    const flags = (config: string) => ['-c', config, '--env-file', envFile, '--database-url', cluster.url];
    const config = (rate: string) => writeConfig(path.join(WORK, `rate-${rate}.yaml`), rate === 'auto' ? {} : { max_rate: Number(rate), latency_ratio: 100 });
    const setup = await runCli(['setup', ...flags(config('auto'))]);
    if (setup.code !== 0) throw new Error(`setup exited ${setup.code}: ${setup.stderr}`);
    for (const workload of WORKLOADS) {
      for (const rate of RATES) {
        await restoreIncidents(db);
        const wl: Workload =
          workload === 'pgbench'
            ? await startPgbench({ url: cluster.url, rows: ROWS, rate: 300, clients: 4, dir: path.join(WORK, 'pgbench') }, 3000)
            : await startWorkload({ url: cluster.url, rows: ROWS, rate: 300, clients: 8, updateFraction: 0.2, seed: 42 }, 3000);
        const t0 = Date.now();
        const pre = await probed(cluster.url, () => sleep(PRE_SECONDS * 1000));
        const t1 = Date.now();
        const during = await probed(cluster.url, () => runCli(['backfill', '--restart', '--json', ...flags(config(rate))], SECONDS * 1000));
        const t2 = Date.now();
        const { samples } = await wl.stop();
        const rewritten = lastRewritten(during.value.stderr, during.value.stdout);
        const row: Row = {
          workload,
          rate,
          rowsPerSec: rewritten / (during.value.wallMs / 1000),
          fg: { pre: summarize(samples, t0, t1).p99, during: summarize(samples, t1, t2).p99 },
          probe: { pre: pre.samples, during: during.samples },
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
    `# Calibration: foreground p99 and the probe at fixed sweep rates (${new Date().toISOString()}, ${ROWS} rows, ${SECONDS} s each)`,
    '',
    '| workload | rate | rows/s | fg p99 before | fg p99 during | ratio | probe p50 before/during | probe p90 before/during | probe p99 before/during | probe samples > before p90 |',
    '|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map(line),
  ].join('\n');
  writeFileSync(path.join(WORK, 'calibrate.md'), `${md}\n`);
  console.log(`wrote ${path.join(WORK, 'calibrate.md')}`);
}

function line(r: Row): string {
  const f = (x: number) => x.toFixed(2);
  const p = (k: number) => `${f(q(r.probe.pre, k))} / ${f(q(r.probe.during, k))}`;
  const above = r.probe.during.filter((x) => x > q(r.probe.pre, 0.9)).length / Math.max(1, r.probe.during.length);
  return `| ${r.workload} | ${r.rate} | ${r.rowsPerSec.toFixed(0)} | ${f(r.fg.pre)} | ${f(r.fg.during)} | ${(r.fg.during / r.fg.pre).toFixed(2)}x | ${p(0.5)} | ${p(0.9)} | ${p(0.99)} | ${(100 * above).toFixed(0)}% |`;
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
