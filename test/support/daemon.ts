// Starting `pg-rekey run` as a subprocess against a test database, with fast check intervals.
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import { stringify } from 'yaml';
import { keyEnv } from './fixtures.js';
import { runCli, spawnCli, type CliProcess, type CliResult } from './cli.js';

export interface DaemonFiles {
  dir: string;
  configPath: string;
  envPath: string;
  /** Arguments every command needs: -c, --env-file, --database-url. */
  args: string[];
}

export function writeDaemonFiles(databaseUrl: string, tables: { name: string; columns: string[]; triggers?: 'fire' | 'skip' }[], extra: Record<string, unknown> = {}): DaemonFiles {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-run-'));
  const doc = {
    tables,
    ...extra,
    // The suite's sweeps are paced by chunk_time and nice_ratio (mode duty) unless a test asks for auto:
    // auto learns a baseline first and starts slowly, which the tests that watch a sweep do not expect.
    sweep: { progress_interval: '1s', mode: 'duty', ...((extra.sweep as object) ?? {}) },
    daemon: { http_port: 0, check_interval: '1s', slot_check_interval: '1s', ...((extra.daemon as object) ?? {}) },
    // Slot names are cluster-wide and test files share one cluster: one slot per test database.
    replication: { slot: `s_${databaseUrl.replace(/[?#].*$/, '').split('/').pop() ?? ''}`.slice(0, 63), ...((extra.replication as object) ?? {}) },
  };
  const configPath = path.join(dir, 'pg-rekey.yaml');
  writeFileSync(configPath, stringify(doc));
  const envPath = path.join(dir, '.env.local');
  writeFileSync(envPath, Object.entries(keyEnv()).map(([k, v]) => `${k}=${v}\n`).join(''), { mode: 0o600 });
  return { dir, configPath, envPath, args: ['-c', configPath, '--env-file', envPath, '--database-url', databaseUrl] };
}

export async function cli(files: DaemonFiles, ...args: string[]): Promise<CliResult> {
  return runCli([...args, ...files.args], { timeoutMs: 120_000 });
}

export interface RunningDaemon {
  proc: CliProcess;
  httpUrl: string;
}

/** Starts `run` and waits until it streams; returns its HTTP base URL. */
export async function startDaemon(files: DaemonFiles, ...extraArgs: string[]): Promise<RunningDaemon> {
  const proc = spawnCli(['run', ...extraArgs, ...files.args]);
  const started = await proc.waitForLine(/pg-rekey run started/, { timeoutMs: 30_000 });
  const httpUrl = (JSON.parse(started.text) as { http: string }).http;
  await proc.waitForLine(/"msg":"streaming"/, { timeoutMs: 30_000 });
  return { proc, httpUrl };
}

/** Polls `fn` until it returns true, or fails after timeoutMs. */
export async function eventually(what: string, fn: () => Promise<boolean>, timeoutMs = 20_000): Promise<number> {
  const start = Date.now();
  for (;;) {
    if (await fn()) return Date.now() - start;
    if (Date.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function countPrefix(pool: pg.Pool, table: string, column: string, prefix: string): Promise<number> {
  const r = await pool.query<{ n: number }>(`select count(*)::int as n from ${table} where starts_with(${column}, $1)`, [prefix]);
  return r.rows[0]!.n;
}
