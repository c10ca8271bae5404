// Measured windows: the foreground workload runs in its own process across one or more windows; around
// each window: WAL position, CPU per process group, backend wait events, top statements. Latency is
// summarized per window once the workload has stopped (transactions due inside the window count).
import { fork, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import type { Samples } from './latency.js';
import { machineCpu, processCpu, sampleWaits, serverCpu, TICKS_PER_SEC, topStatements, type StatementStat, type WaitProfile } from './sampler.js';
import type { WorkloadConfig } from './workload.js';

export interface Window {
  /** Epoch ms. */
  from: number;
  to: number;
  walBytes: number;
  cpu: { server: number; workload: number; bench: number; machineBusyPct: number; machineBusySeconds: number };
  waits: { ticks: number; profile: WaitProfile };
  statements: StatementStat[];
  /** Updates of `incidents` in the window, and how many of them were HOT (no index entry, same page). */
  updates: { all: number; hot: number };
}

async function updateCounts(admin: pg.Pool): Promise<{ all: number; hot: number }> {
  const c = await admin.connect();
  try {
    await c.query('select pg_stat_clear_snapshot()');
    const r = await c.query<{ u: string; h: string }>(`select n_tup_upd as u, n_tup_hot_upd as h from pg_stat_user_tables where relname = 'incidents'`);
    return { all: Number(r.rows[0]?.u ?? 0), hot: Number(r.rows[0]?.h ?? 0) };
  } finally {
    c.release();
  }
}

export interface Workload {
  pid: number;
  /** Stops scheduling, waits for the transactions in flight, returns every sample. */
  stop(): Promise<{ samples: Samples; stillInFlight: number }>;
}

const epoch = () => performance.timeOrigin + performance.now();

function message<T>(child: ChildProcess, type: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (m: { type: string }) => {
      if (m.type !== type) return;
      child.off('message', onMessage);
      child.off('exit', onExit);
      resolve(m as T);
    };
    const onExit = (code: number | null) => reject(new Error(`workload process exited (${code}) before sending ${type}`));
    child.on('message', onMessage);
    child.once('exit', onExit);
  });
}

/** Forks workload.ts, waits until its connections are ready, starts the timetable, waits `warmupMs`. */
export async function startWorkload(cfg: WorkloadConfig, warmupMs: number): Promise<Workload> {
  const child = fork(path.join(import.meta.dirname, 'workload.ts'), [JSON.stringify(cfg)], { execArgv: ['--import', 'tsx'], stdio: 'inherit' });
  await message(child, 'ready');
  child.send({ type: 'start' });
  await new Promise((r) => setTimeout(r, warmupMs));
  return {
    pid: child.pid!,
    async stop() {
      const result = message<{ samples: Samples; stillInFlight: number }>(child, 'result');
      const exited = new Promise((res) => (child.exitCode !== null ? res(null) : child.once('exit', res)));
      child.send({ type: 'stop' });
      const r = await result;
      await exited;
      return r;
    },
  };
}

/** Runs `body` as one measured window (the workload, if any, already running). */
export async function observe<T>(admin: pg.Pool, postmaster: number, workload: Workload | null, body: () => Promise<T>): Promise<{ value: T; w: Window }> {
  await admin.query('select pg_stat_statements_reset()');
  const lsn0 = (await admin.query<{ l: string }>('select pg_current_wal_lsn()::text as l')).rows[0]!.l;
  const upd0 = await updateCounts(admin);
  const server0 = serverCpu(postmaster);
  const machine0 = machineCpu();
  const workload0 = workload ? processCpu(workload.pid) : 0;
  const bench0 = process.cpuUsage();
  const waits = sampleWaits(admin);
  const from = epoch();
  let value: T;
  let to: number;
  try {
    value = await body();
  } finally {
    to = epoch();
  }
  const bench = process.cpuUsage(bench0);
  const workloadCpu = workload ? processCpu(workload.pid) - workload0 : 0;
  const machine1 = machineCpu();
  const server = serverCpu(postmaster) - server0;
  const wal = (await admin.query<{ d: string }>('select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint as d', [lsn0])).rows[0]!.d;
  // Backends flush their table counters at most once a second (PostgreSQL 15+): wait for the last ones.
  await new Promise((r) => setTimeout(r, 1100));
  const upd1 = await updateCounts(admin);
  return {
    value,
    w: {
      from,
      to,
      walBytes: Number(wal),
      cpu: {
        server,
        workload: workloadCpu,
        bench: (bench.user + bench.system) / 1e6,
        machineBusyPct: (100 * (machine1.busy - machine0.busy)) / Math.max(1, machine1.total - machine0.total),
        machineBusySeconds: (machine1.busy - machine0.busy) / TICKS_PER_SEC,
      },
      waits: await waits.stop(),
      statements: await topStatements(admin),
      updates: { all: upd1.all - upd0.all, hot: upd1.hot - upd0.hot },
    },
  };
}
