// The second foreground workload, driven by Debian's pgbench (/usr/bin/pgbench): N clients,
// --rate R transactions/s in total, each transaction a primary-key SELECT and an UPDATE of a
// non-encrypted column. Latency per transaction comes from pgbench's own per-transaction log (-l):
// with --rate, a line's `time` plus its `schedule_lag` runs from the transaction's scheduled start,
// so stalls count (no coordinated omission), as in the bench's own workload.
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { KIND_UPDATE, type Samples } from './latency.js';
import type { Workload } from './measure.js';

export const PGBENCH = '/usr/bin/pgbench';

export interface PgbenchConfig {
  url: string;
  rows: number;
  rate: number;
  clients: number;
  /** Where the script and the per-transaction logs go. */
  dir: string;
}

const SCRIPT = `\\set id random(1, :rows)
begin;
select id, title, status, updated_at from incidents where id = :id;
update incidents set status = 'seen', updated_at = now() where id = :id;
end;
`;

/** A pgbench run that goes on until stop(); `warmupMs` after it starts. */
export async function startPgbench(cfg: PgbenchConfig, warmupMs: number): Promise<Workload> {
  mkdirSync(cfg.dir, { recursive: true });
  const script = path.join(cfg.dir, 'fg.sql');
  writeFileSync(script, SCRIPT);
  const prefix = `pgb${Date.now()}`;
  const args = ['-n', '-M', 'prepared', '-c', String(cfg.clients), '-j', String(Math.min(2, cfg.clients)), '-R', String(cfg.rate), '-T', '3600', '-f', script, '-D', `rows=${cfg.rows}`, '-l', `--log-prefix=${path.join(cfg.dir, prefix)}`, cfg.url];
  const child = spawn(PGBENCH, args, { stdio: ['ignore', 'ignore', 'pipe'], cwd: cfg.dir });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await new Promise((r) => setTimeout(r, warmupMs));
  if (child.exitCode !== null) throw new Error(`pgbench exited (${child.exitCode}): ${stderr}`);
  return {
    pid: child.pid!,
    async stop() {
      // pgbench writes its log lines through stdio buffers; the caller stops it a little after its
      // last window (transactions due in a window are logged by then), so what a kill loses is not measured.
      await new Promise((r) => setTimeout(r, 1500));
      child.kill('SIGINT');
      await exited;
      return { samples: readLogs(cfg.dir, prefix), stillInFlight: 0 };
    },
  };
}

/** Per-transaction lines: client_id transaction_no time_us script_no epoch_s epoch_us schedule_lag_us. */
function readLogs(dir: string, prefix: string): Samples {
  const s: Samples = { scheduled: [], latency: [], kind: [], failed: [] };
  for (const f of readdirSync(dir).filter((n) => n.startsWith(`${prefix}.`))) {
    for (const line of readFileSync(path.join(dir, f), 'utf8').split('\n')) {
      const x = line.trim().split(/\s+/);
      if (x.length < 7) continue;
      const failed = x[2] === 'failed' || x[2] === 'skipped';
      const timeUs = failed ? 0 : Number(x[2]);
      const lagUs = Number(x[6]);
      const doneMs = Number(x[4]) * 1000 + Number(x[5]) / 1000;
      s.scheduled.push(doneMs - (timeUs + lagUs) / 1000);
      s.latency.push((timeUs + lagUs) / 1000);
      s.kind.push(KIND_UPDATE);
      s.failed.push(failed ? 1 : 0);
    }
  }
  return s;
}
