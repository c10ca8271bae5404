// `make bench`: the load-spike benchmark of the "load-aware sweep" issue. Rotates a >= 1M-row
// `incidents` table from v1 to v2 in several ways under the same open-loop foreground workload and
// writes bench/RESULTS.md. Not a test: nothing here asserts; the targets are reported as met or not.
// Run from the repo root after `npm run build`: node --import tsx bench/load-spike/run.ts
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { loadKeyRing } from '../../src/crypto/key-ring.js';
import { initSodium } from '../../src/crypto/secretbox.js';
import { SERVER_SETTINGS, startBenchCluster, type BenchCluster } from './cluster.js';
import { countV1, createTables, loadPristine, restoreIncidents, tableFacts } from './dataset.js';
import { benchOnly, readKnobs, setKnobs, streamDaemonSettings, sweepVariants } from './knobs.js';
import { summarize } from './latency.js';
import { observe, startWorkload } from './measure.js';
import { waitForQuiet } from './sampler.js';
import { ROOT, resolvedSettings, runCli, snapshotBuild, writeConfig, writeKeys } from './pg-rekey-cli.js';
import { renderResults, type RunInfo, type ScenarioResult } from './report.js';
import { CLASSIC_BATCH, classicBatch, loadFloorValues, prepareFloor } from './rotators.js';
import type { WorkloadConfig } from './workload.js';
import { PGBENCH, startPgbench } from './pgbench.js';
import { renderPlot } from './plot.js';
import { LatencyProbe } from '../../src/throttle/latency-probe.js';
import { createLogger } from '../../src/logger.js';
import type { Workload } from './measure.js';
import { measureStreamLatency } from './stream-latency.js';

const K = readKnobs();
const only = benchOnly();
const ROWS = Math.round(K.BENCH_ROWS);
const WORK_DIR = path.join(ROOT, '.bench-data');
const RESULTS_FILE = path.join(ROOT, 'bench', 'RESULTS.md');
const PLOT_FILE = path.join(ROOT, 'bench', 'results-p99-vs-rate.svg');
const T0 = Date.now();
const LOAD_AT_START = os.loadavg();
const BUILD = buildInfo();
const log = (msg: string) => console.log(`[${((Date.now() - T0) / 1000).toFixed(0).padStart(4)} s] ${msg}`);
/** node-pg sends an array parameter as one string; V8 strings end at 2^29 - 24 characters (~150 bytes a value here). */
const MAX_UNNEST_ROWS = 3_000_000;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** pg-rekey sweep configurations measured (only the `sweep:` fields that differ from the defaults). */
const SWEEPS: { key: string; title: string; sweep: Record<string, unknown>; args?: string[] }[] = [
  { key: 'default', title: 'pg-rekey backfill, defaults (mode auto)', sweep: {} },
  { key: 'duty', title: 'pg-rekey backfill, mode duty (the defaults before auto: chunk_time 5ms, nice_ratio 4)', sweep: { mode: 'duty' } },
  ...sweepVariants().map((sweep, i) => ({
    key: `variant-${i + 1}`,
    title: `pg-rekey backfill, defaults but ${Object.entries(sweep)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
    sweep,
  })),
  // --fast: sweep.mode fast (chunk_time 250ms, read ahead). Much larger chunks were slower (2s: ~75k
  // rows/s against ~95k, 2026-11-28): a few huge CAS statements, longer row locks, less overlap.
  { key: 'unthrottled', title: 'pg-rekey backfill --fast (unthrottled)', sweep: {}, args: ['--fast'] },
];

async function main(): Promise<void> {
  const work = path.join(WORK_DIR, 'load-spike');
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const envFile = path.join(work, 'keys.env');
  snapshotBuild(path.join(work, 'pg-rekey'));
  let cluster: BenchCluster | undefined;
  /** Connections to close before the cluster stops (an idle client would see the shutdown as an error). */
  const connections: { end(): Promise<void> }[] = [];
  try {
    cluster = await startBenchCluster(WORK_DIR);
    const { url, pid: postmaster } = cluster;
    log(`PostgreSQL up (${cluster.dataDir})`);
    const db = new pg.Client({ connectionString: url, application_name: 'bench-admin' });
    const admin = new pg.Pool({ connectionString: url, max: 2, application_name: 'bench-admin' });
    db.on('error', () => undefined);
    admin.on('error', () => undefined);
    connections.push(db, admin);
    await db.connect();
    await db.query('create extension pg_stat_statements');

    await writeKeys(envFile);
    await initSodium();
    const ring = loadKeyRing({ env: {}, envFile });
    await createTables(db);
    let t = Date.now();
    const { meanValueBytes } = await loadPristine(db, ROWS, ring);
    log(`loaded ${ROWS} rows (v1, and their v2 values for the floor) in ${((Date.now() - t) / 1000).toFixed(1)} s`);
    t = Date.now();
    await restoreIncidents(db);
    const restoreSeconds = (Date.now() - t) / 1000;
    const table = await tableFacts(db);
    log(`incidents restored in ${restoreSeconds.toFixed(1)} s: ${table.blocks} blocks, heap ${table.heapMB.toFixed(0)} MB`);

    const cliFlags = (config: string) => ['-c', config, '--env-file', envFile, '--database-url', url];
    const configs = SWEEPS.map((s) => writeConfig(path.join(work, `${s.key}.yaml`), s.sweep));
    const setup = await runCli(['setup', ...cliFlags(configs[0]!)]);
    if (setup.code !== 0) throw new Error(`pg-rekey setup exited ${setup.code}:\n${setup.stderr}`);
    log('pg-rekey setup done (state schema, publication, replication slot)');

    const workload: WorkloadConfig = { url, rows: ROWS, rate: K.BENCH_RATE, clients: K.BENCH_CLIENTS, updateFraction: K.BENCH_UPDATE_FRACTION, seed: 42 };
    const results: ScenarioResult[] = [];
    const failed: RunInfo['failed'] = [];

    /**
     * One scenario under the workload: optionally a baseline window of its own right before the
     * rotation (same table state, same workload process), then the rotation's window. A rotation that
     * fails is reported as such and the run goes on with the next one.
     */
    type Fg = ScenarioResult['workload'];
    const startFg = (fg: Fg): Promise<Workload> =>
      fg === 'pgbench'
        ? startPgbench({ url, rows: ROWS, rate: K.BENCH_PGBENCH_RATE, clients: K.BENCH_PGBENCH_CLIENTS, dir: path.join(work, 'pgbench') }, K.BENCH_WARMUP_SECONDS * 1000)
        : startWorkload(workload, K.BENCH_WARMUP_SECONDS * 1000);
    async function scenario<T>(
      r: Pick<ScenarioResult, 'key' | 'title' | 'settings' | 'workload'>,
      rotate: () => Promise<T>,
      describe: (value: T, windowMs: number) => Pick<ScenarioResult, 'rotation'> & Partial<Pick<ScenarioResult, 'sweep' | 'note' | 'maxRssMB' | 'stream'>>,
      preBaseline = true,
    ): Promise<void> {
      try {
        await measureScenario(r, rotate, describe, preBaseline);
      } catch (e) {
        if (r.key === 'baseline' && r.workload === 'bench') throw e;
        log(`${r.title} FAILED: ${(e as Error).message}`);
        failed.push({ title: r.title, error: (e as Error).message.slice(0, 2000) });
      }
      writeFileSync(path.join(work, 'results.json'), JSON.stringify({ results, failed }, null, 2));
    }

    async function measureScenario<T>(
      r: Pick<ScenarioResult, 'key' | 'title' | 'settings' | 'workload'>,
      rotate: () => Promise<T>,
      describe: (value: T, windowMs: number) => Pick<ScenarioResult, 'rotation'> & Partial<Pick<ScenarioResult, 'sweep' | 'note' | 'maxRssMB' | 'stream'>>,
      preBaseline: boolean,
    ): Promise<void> {
      const quiet = await waitForQuiet(K.BENCH_QUIET_WAIT_SECONDS * 1000);
      const wl = await startFg(r.workload);
      const windows = (async () => {
        const pre = preBaseline ? await observe(admin, postmaster, wl, () => sleep(K.BENCH_PRE_BASELINE_SECONDS * 1000)) : null;
        return { pre, main: await observe(admin, postmaster, wl, rotate) };
      })();
      await windows.catch(() => undefined);
      const { samples, stillInFlight } = await wl.stop();
      const { pre, main } = await windows;
      const windowMs = main.w.to - main.w.from;
      const done: ScenarioResult = {
        ...r,
        ...describe(main.value, windowMs),
        w: main.w,
        latency: summarize(samples, main.w.from, main.w.to),
        stuck: stillInFlight,
        quiet,
        pre: pre ? { w: pre.w, latency: summarize(samples, pre.w.from, pre.w.to) } : null,
        v1Left: null,
        heapAfterMB: (await tableFacts(db)).heapMB,
      };
      if (done.rotation) done.v1Left = await countV1(db);
      results.push(done);
      const l = done.latency;
      log(
        `${r.title}: p50 ${l.p50.toFixed(1)} p99 ${l.p99.toFixed(1)} max ${l.max.toFixed(0)} ms, ${l.ratePerSec.toFixed(0)} tx/s` +
          (done.pre ? ` (right before: p99 ${done.pre.latency.p99.toFixed(1)} ms)` : '') +
          (done.rotation ? `; ${done.rotation.rows} rows in ${(done.rotation.ms / 1000).toFixed(1)} s = ${done.rotation.rowsPerSec.toFixed(0)} rows/s` : '') +
          `; WAL ${(done.w.walBytes / 2 ** 20).toFixed(0)} MB`,
      );
    }

    const baseline = (fg: Fg, title: string) =>
      scenario(
        { key: 'baseline', workload: fg, title, settings: `${K.BENCH_BASELINE_SECONDS} s of the workload alone` },
        () => sleep(K.BENCH_BASELINE_SECONDS * 1000),
        () => ({ rotation: null }),
        false,
      );
    const classic = async (fg: Fg, perTransaction: boolean) => {
      if (!only(perTransaction ? 'runbook' : 'classic')) return;
      await restoreIncidents(db);
      const shape = perTransaction ? `the ${CLASSIC_BATCH} UPDATEs of a batch in one transaction (the runbook's shape)` : 'one autocommit UPDATE by id per row';
      log(`classic batch (${perTransaction ? `${CLASSIC_BATCH} per transaction` : 'autocommit'}) under ${fg} for up to ${K.BENCH_CLASSIC_SECONDS} s`);
      await scenario(
        {
          key: perTransaction ? 'runbook' : 'classic',
          workload: fg,
          title: perTransaction ? `runbook batch (${CLASSIC_BATCH} per transaction, UPDATE per row)` : 'classic batch (500 by key, autocommit UPDATE per row)',
          settings: `batches of ${CLASSIC_BATCH} v1 rows by key (\`where title like 'v1:%' and id > $last order by id limit ${CLASSIC_BATCH}\`), re-encrypted in the bench process, ${shape}, 1 connection, no throttle, stopped after ${K.BENCH_CLASSIC_SECONDS} s`,
        },
        () => classicBatch(url, ring, performance.now() + K.BENCH_CLASSIC_SECONDS * 1000, perTransaction),
        (v, ms) => ({ rotation: rotation(v.rows, ms, v.done, NaN) }),
      );
    };
    const sweep = async (fg: Fg, i: number) => {
      const s = SWEEPS[i]!;
      if (!only(s.key)) return;
      await restoreIncidents(db);
      log(`${s.title} under ${fg} (limit ${K.BENCH_SWEEP_LIMIT_SECONDS} s)`);
      const config = configs[i]!;
      const resolved = resolvedSettings(config);
      const args = ['backfill', '--restart', '--json', ...(s.args ?? []), ...cliFlags(config)];
      await scenario(
        { key: s.key, workload: fg, title: s.title, settings: `\`pg-rekey ${args.slice(0, 4 + (s.args?.length ?? 0)).join(' ')}\`; resolved sweep settings ${JSON.stringify(resolved.sweep)}, throttle ${JSON.stringify(resolved.throttle)}` },
        () => runCli(args, K.BENCH_SWEEP_LIMIT_SECONDS * 1000),
        (run) => {
          writeFileSync(path.join(work, `${s.key}-${fg}.stderr.log`), run.stderr);
          // Exit 1: backfill finished its passes with old-version values left (moved by the workload behind it); measured as run.
          if (run.code !== 0 && run.code !== 1 && !run.timedOut) throw new Error(`pg-rekey backfill (${s.key}) exited ${run.code}:\n${run.stderr.slice(-4000)}`);
          // Stopped at the time limit (SIGTERM), it still prints its summary; else the counts come from its progress lines.
          const out = parseJson(run.stdout) ?? partialBackfill(run.stderr);
          return {
            rotation: rotation(out.rewritten, run.wallMs, !run.timedOut, run.cpuSeconds),
            sweep: { config: readFileSync(config, 'utf8').trim(), resolved, chunks: out.relations[0]?.chunks ?? 0, blocks: out.relations[0]?.blocks ?? 0, conflicts: out.conflicts, walBytes: out.walBytes ?? null, commits: out.commits ?? null, pacing: lastPacing(run.stderr) },
            maxRssMB: run.maxRssMB,
          };
        },
      );
    };

    // The bench's own workload: baseline, both classic batches, every pg-rekey configuration, the floors.
    log(`baseline: workload alone for ${K.BENCH_BASELINE_SECONDS} s`);
    await baseline('bench', 'baseline (workload alone)');
    // What sweep.mode auto's probe costs by itself: its commit and read every 100 ms, no sweep.
    if (only('probe')) {
      await scenario(
        { key: 'probe', workload: 'bench', title: 'pg-rekey latency probe alone (no sweep)', settings: `the auto mode's probe (src/throttle/latency-probe.ts) every 100 ms for ${K.BENCH_BASELINE_SECONDS} s, nothing rotated` },
        async () => {
          const probe = new LatencyProbe(url, () => 100, () => undefined, createLogger('silent'));
          probe.start();
          await sleep(K.BENCH_BASELINE_SECONDS * 1000);
          await probe.stop();
        },
        () => ({ rotation: null }),
      );
    }
    await classic('bench', false);
    await classic('bench', true);
    for (const i of SWEEPS.keys()) await sweep('bench', i);

    // The stream's rewrite latency: `pg-rekey run` (stream + sweep) while fresh v1 rows are written at BENCH_STREAM_RATE.
    if (only('stream-latency')) {
      await restoreIncidents(db);
      // http_port 0: a free port, read from the run's log (a fixed one could be taken on a shared machine).
      const daemon = { http_port: 0, ...streamDaemonSettings() };
      const config = writeConfig(path.join(work, 'stream-latency.yaml'), {}, { daemon });
      const runArgs = ['run', ...cliFlags(config)];
      log(`pg-rekey run (stream + sweep) with ${K.BENCH_STREAM_RATE} v1 writes/s for ${K.BENCH_STREAM_SECONDS} s`);
      await scenario(
        {
          key: 'stream-latency',
          workload: 'bench',
          title: `pg-rekey run: stream rewrite latency (stream + sweep, ${Object.keys(daemon).length > 1 ? `daemon: ${JSON.stringify(daemon)}` : 'defaults'}; ${K.BENCH_STREAM_RATE.toLocaleString('en-US')} v1 writes/s)`,
          settings:
            `\`pg-rekey run -c\` (default settings, sweep.mode auto; daemon: \`${JSON.stringify(daemon)}\`) on the table restored to all-v1, so the sweep runs meanwhile; once /readyz says it streams and it has applied the WAL written before, ` +
            `${(K.BENCH_STREAM_RATE * K.BENCH_STREAM_SECONDS).toLocaleString('en-US')} INSERTs of fresh rows (new ids, a v1 title each, encrypted beforehand) at ${K.BENCH_STREAM_RATE.toLocaleString('en-US')}/s for ${K.BENCH_STREAM_SECONDS} s ` +
            `after ${K.BENCH_WARMUP_SECONDS} s of the same writes as a warm-up (reported apart), ` +
            `open loop over ${K.BENCH_STREAM_CONNECTIONS} connections, each its own autocommit transaction; then up to ${K.BENCH_STREAM_WAIT_SECONDS} s for every row to be v2; then SIGTERM. ` +
            'Latency per row: `pg_xact_commit_timestamp` of the rewrite (the row\'s current xmin) minus that of the INSERT (track_commit_timestamp=on); the rewrite\'s commit origin says whether the stream or the sweep did it. ' +
            "The window (rows/s = the run's sweep) runs from the daemon's start to its exit",
        },
        () =>
          measureStreamLatency(
            { url, ring, runArgs, firstId: ROWS + 1, rate: K.BENCH_STREAM_RATE, warmupSeconds: K.BENCH_WARMUP_SECONDS, seconds: K.BENCH_STREAM_SECONDS, connections: K.BENCH_STREAM_CONNECTIONS, waitSeconds: K.BENCH_STREAM_WAIT_SECONDS, rowsFile: path.join(work, 'stream-latency.rows.csv'), log },
            db,
          ),
        ({ stream, run }) => {
          writeFileSync(path.join(work, 'stream-latency.stderr.log'), run.stderr);
          return { rotation: rotation(stream.atStop.sweep, run.wallMs, false, run.cpuSeconds), stream, maxRssMB: run.maxRssMB };
        },
      );
      const l = results.at(-1)?.stream?.latency;
      if (l) log(`stream rewrite latency: p50 ${l.p50.toFixed(1)} p99 ${l.p99.toFixed(1)} max ${l.max.toFixed(0)} ms`);
    }

    // 5. the floor, from a table and from arrays the client sends
    for (const fromClient of [false, true]) {
      if (!only(fromClient ? 'floor-unnest' : 'floor')) continue;
      if (fromClient && ROWS > MAX_UNNEST_ROWS) {
        log(`skipping the unnest floor: ${ROWS} values would not fit in one parameter string`);
        continue;
      }
      await restoreIncidents(db);
      const floor = await prepareFloor(url, fromClient ? await loadFloorValues(db) : undefined);
      log(`floor: one UPDATE of every row with precomputed v2 values ${fromClient ? 'sent as arrays' : 'from a table'}, under the workload`);
      await scenario(
        fromClient
          ? {
              key: 'floor-unnest',
              workload: 'bench',
              title: 'floor (one UPDATE, values sent as arrays)',
              settings:
                '`update incidents i set title = v.title from unnest($1::bigint[], $2::text[]) as v(id, title) where i.id = v.id` with every id and v2 value as the two parameters (re-encrypted beforehand, not timed), one transaction',
            }
          : {
              key: 'floor',
              workload: 'bench',
              title: 'floor (one UPDATE, values from a table)',
              settings: '`update incidents i set title = r.title from incidents_rekeyed r where r.id = i.id` (values re-encrypted beforehand, not timed), one transaction',
            },
        () => floor.run(),
        (v) => ({ rotation: rotation(v.rows, v.updateMs, true, NaN), note: `plan: ${floor.plan}` }),
      );
    }

    // The pgbench-driven workload (the issue's): baseline, the runbook batch, pg-rekey's defaults.
    if (K.BENCH_PGBENCH && !only('pgbench')) log('skipping the pgbench workload (BENCH_ONLY)');
    else if (K.BENCH_PGBENCH && existsSync(PGBENCH)) {
      log(`pgbench: ${K.BENCH_PGBENCH_CLIENTS} clients, --rate ${K.BENCH_PGBENCH_RATE}`);
      await restoreIncidents(db);
      await baseline('pgbench', 'baseline (pgbench alone)');
      await classic('pgbench', true);
      await sweep('pgbench', 0);
    } else if (K.BENCH_PGBENCH) log(`skipping the pgbench workload: ${PGBENCH} not found`);

    const info = { ...(await runInfo(db, table, meanValueBytes, restoreSeconds)), failed };
    writeFileSync(path.join(work, 'results.json'), JSON.stringify({ info, results }, null, 2));
    writeFileSync(RESULTS_FILE, renderResults(info, results, path.basename(PLOT_FILE)));
    writeFileSync(PLOT_FILE, renderPlot(results));
    log(`wrote ${path.relative(ROOT, RESULTS_FILE)} (raw numbers: ${path.relative(ROOT, path.join(work, 'results.json'))})`);
    if (failed.length > 0) process.exitCode = 1;
  } finally {
    rmSync(envFile, { force: true });
    for (const c of connections) await c.end().catch(() => undefined);
    await cluster?.stop();
  }
}

interface BackfillJson {
  rewritten: number;
  conflicts: number;
  walBytes?: number;
  commits?: number;
  relations: { chunks: number; blocks: number }[];
}

function parseJson(text: string): BackfillJson | null {
  try {
    return JSON.parse(text) as BackfillJson;
  } catch {
    return null;
  }
}

/** What a backfill stopped at the time limit had done, from its last progress line. */
function partialBackfill(stderr: string): BackfillJson {
  const last = stderr
    .split('\n')
    .filter((l) => l.includes('"sweep progress"') || l.includes('"relation swept"'))
    .map((l) => JSON.parse(l) as { rewritten?: number; chunk?: number; blocks?: number; conflicts?: number })
    .pop();
  return { rewritten: last?.rewritten ?? 0, conflicts: last?.conflicts ?? 0, relations: [{ chunks: last?.chunk ?? 0, blocks: last?.blocks ?? 0 }] };
}

/** The auto controller's last published view, from the backfill's log (rate, baseline, target, slowdowns). */
function lastPacing(stderr: string): string | null {
  const lines = stderr.split('\n').filter((l) => l.includes('"component":"pacer"'));
  const n = lines.length;
  if (n === 0) return null;
  const last = JSON.parse(lines[n - 1]!) as { rate?: number; baselineMs?: number; targetMs?: number; reason?: string };
  const reasons = new Map<string, number>();
  for (const l of lines) {
    const x = JSON.parse(l) as { reason?: string; slowdowns?: number };
    if (x.reason) reasons.set(x.reason, (reasons.get(x.reason) ?? 0) + (x.slowdowns ?? 1));
  }
  return `last logged: rate ${last.rate} rows/s, probe baseline ${last.baselineMs?.toFixed(2)} ms, target ${last.targetMs?.toFixed(2)} ms; slowdowns ${[...reasons].map(([k, v]) => `${k} ${v}`).join(', ')}`;
}

/** cpuSeconds: of the rotating process when it is not the bench process itself (NaN: use the window's bench CPU). */
function rotation(rows: number, ms: number, complete: boolean, cpuSeconds: number): ScenarioResult['rotation'] {
  const rowsPerSec = rows / (ms / 1000);
  return { rows, ms, rowsPerSec, complete, estimatedTotalS: complete ? null : ROWS / rowsPerSec, cpuSeconds };
}

/** The commit the CLI is built from, and what differs from it under src/ and sql/ (read at start). */
function buildInfo(): Pick<RunInfo, 'commit' | 'uncommitted'> {
  const git = (...args: string[]) => {
    try {
      return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8' });
    } catch {
      return '?';
    }
  };
  return {
    commit: `${git('rev-parse', '--short', 'HEAD').trim()} (${git('log', '-1', '--format=%s').trim().slice(0, 80)})`,
    uncommitted: git('status', '--porcelain', '--', 'src', 'sql')
      .split('\n')
      .filter(Boolean)
      .map((l) => l.slice(3)),
  };
}

async function runInfo(db: pg.Client, table: Awaited<ReturnType<typeof tableFacts>>, meanValueBytes: number, restoreSeconds: number): Promise<Omit<RunInfo, 'failed'>> {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const meminfo = readFileSync('/proc/meminfo', 'utf8');
  const srv = (await db.query<{ v: string; c: string }>(`select version() as v, current_setting('data_checksums') as c`)).rows[0]!;
  return {
    date: new Date(T0).toISOString(),
    durationS: (Date.now() - T0) / 1000,
    loadAtStart: LOAD_AT_START.map((x) => x.toFixed(2)).join(' '),
    nproc: os.availableParallelism(),
    memory: `${(Number(/MemTotal:\s+(\d+)/.exec(meminfo)?.[1] ?? 0) / 2 ** 20).toFixed(1)} GiB`,
    cpuModel: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1]?.trim() ?? '?',
    kernel: os.release(),
    node: process.version,
    postgres: srv.v,
    dataChecksums: srv.c,
    serverSettings: SERVER_SETTINGS.map(([k, v]) => `${k}=${v}`),
    ...BUILD,
    command: `${setKnobs()}${process.env.MAKELEVEL ? 'make bench' : 'node --import tsx bench/load-spike/run.ts'}`,
    knobs: K,
    table: { ...table, rows: ROWS, meanValueBytes, restoreSeconds },
  };
}

await main();
