// Where the time goes: CPU seconds per process group (from /proc) and what the server's backends were
// doing (pg_stat_activity sampled every 100 ms, grouped by application_name).
import { readdirSync, readFileSync } from 'node:fs';
import type pg from 'pg';

export const TICKS_PER_SEC = 100; // USER_HZ on Linux

/** Fields after the parenthesised command name of /proc/<pid>/stat (index 0 = state). */
function statFields(pid: number): string[] | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(') ') + 2).split(' ');
  } catch {
    return null;
  }
}

/** CPU seconds of one process (user + system); with `reaped`, plus its waited-for children's. */
export function processCpu(pid: number, reaped = false): number {
  const f = statFields(pid);
  if (!f) return NaN;
  const [utime, stime, cutime, cstime] = [11, 12, 13, 14].map((i) => Number(f[i]));
  return (utime! + stime! + (reaped ? cutime! + cstime! : 0)) / TICKS_PER_SEC;
}

/** CPU seconds of the whole server: the postmaster, its live children, and the children it has reaped. */
export function serverCpu(postmaster: number): number {
  // A backend reaped while /proc is scanned would be in neither sum (a window that ends as its
  // connections close hits exactly that): scan again until the postmaster's reaped total holds still.
  for (;;) {
    const reaped = processCpu(postmaster, true);
    let live = 0;
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      const f = statFields(Number(name));
      if (f && Number(f[1]) === postmaster) live += processCpu(Number(name));
    }
    if (processCpu(postmaster, true) === reaped) return reaped + live;
  }
}

/** Busy and total jiffies of the machine (all cores). */
export function machineCpu(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.reduce((a, b) => a + b, 0);
  const idle = v[3]! + (v[4] ?? 0); // idle + iowait
  return { busy: total - idle, total };
}

/** Polls a child's CPU time, so the last value survives the child's exit. */
export function trackCpu(pid: number, everyMs = 100): { stop(): number; maxRssMB(): number } {
  let last = processCpu(pid);
  let rss = 0;
  const t = setInterval(() => {
    const v = processCpu(pid);
    if (!Number.isNaN(v)) last = v;
    rss = Math.max(rss, peakRssMB(pid));
  }, everyMs);
  return {
    stop() {
      clearInterval(t);
      return last;
    },
    maxRssMB: () => rss,
  };
}

/** The process's peak resident set (VmHWM), MB; 0 once it is gone. */
function peakRssMB(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

/** Per application_name: samples with the backend active, and the share per wait event ('CPU' = running, no wait). */
export type WaitProfile = Record<string, { activeSamples: number; events: Record<string, number> }>;

export function sampleWaits(pool: pg.Pool, everyMs = 100): { stop(): Promise<{ ticks: number; profile: WaitProfile }> } {
  const profile: WaitProfile = {};
  let ticks = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      const started = Date.now();
      const r = await pool.query<{ app: string; ev: string }>(
        `select coalesce(nullif(application_name, ''), backend_type) as app,
                case when wait_event is null then 'CPU' else wait_event_type || ':' || wait_event end as ev
           from pg_stat_activity
          where state is distinct from 'idle' and pid <> pg_backend_pid() and backend_type = 'client backend'`,
      );
      ticks++;
      for (const { app, ev } of r.rows) {
        const p = (profile[app] ??= { activeSamples: 0, events: {} });
        p.activeSamples++;
        p.events[ev] = (p.events[ev] ?? 0) + 1;
      }
      await new Promise((res) => setTimeout(res, Math.max(0, everyMs - (Date.now() - started))));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { ticks, profile };
    },
  };
}

export interface StatementStat {
  calls: number;
  totalMs: number;
  meanMs: number;
  rows: number;
  query: string;
}

/** Top statements by total execution time since the last reset, without the benchmark's own probes. */
export async function topStatements(pool: pg.Pool, limit = 6): Promise<StatementStat[]> {
  const r = await pool.query<{ calls: string; total: number; mean: number; rows: string; query: string }>(
    `select calls, total_exec_time as total, mean_exec_time as mean, rows, query from pg_stat_statements
      where query not like '%pg_stat_activity%' and query not like '%pg_stat_statements%' and query not like '%pg_current_wal_lsn%'
      order by total_exec_time desc limit $1`,
    [limit],
  );
  return r.rows.map((x) => ({ calls: Number(x.calls), totalMs: x.total, meanMs: x.mean, rows: Number(x.rows), query: x.query.replace(/\s+/g, ' ').trim() }));
}

/**
 * Waits (up to `maxMs`) for a `sampleMs` stretch in which the machine is at most `maxBusyPct` busy, so a
 * scenario does not start in the middle of someone else's burst. Returns how long it waited and how busy
 * the last stretch was; the scenario starts either way.
 */
export async function waitForQuiet(maxMs: number, maxBusyPct = 50, sampleMs = 2000): Promise<{ waitedMs: number; busyPct: number }> {
  const started = Date.now();
  for (;;) {
    const a = machineCpu();
    await new Promise((r) => setTimeout(r, sampleMs));
    const b = machineCpu();
    const busyPct = (100 * (b.busy - a.busy)) / Math.max(1, b.total - a.total);
    if (busyPct <= maxBusyPct || Date.now() - started >= maxMs) return { waitedMs: Date.now() - started, busyPct };
  }
}
