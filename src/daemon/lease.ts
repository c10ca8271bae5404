import { connectionConfig, locatorFor } from '../db/connect.js';
import { primaryClientClass } from '../db/primary.js';
import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import pg from 'pg';
import { ConfigError } from '../errors.js';
import type { Logger } from '../logger.js';

/**
 * One daemon per slot. `run` holds a lease on its replication slot for its
 * whole life: a session advisory lock keyed on the slot name,
 * pg_try_advisory_lock(hashtext('pg-rekey'), hashtext(slot)), on a dedicated
 * connection of its own (TCP keepalive on). It is taken before anything else
 * run does; a second `run` on the same slot finds it taken and exits 2 naming
 * the holder, without writing anything. If the lease connection ends, the
 * lock is gone with it (another daemon may take over at once): the daemon
 * stops and writes no more state of its own.
 *
 * Keyed on the slot, never on a host, a config file or a database role: the
 * slot is what two daemons would fight over (leader locks keyed on anything
 * else have produced two leaders elsewhere). Slot names are cluster-wide but
 * advisory locks live in one database: both daemons of a slot connect to the
 * slot's database, which is where the lock is taken.
 *
 * The holder records itself (host, pid, start time) in pgrekey.daemon on the
 * lease connection right after taking the lock; that start time is the
 * lease's token, and the daemon's status writes only update a row that still
 * carries it, so a daemon that lost its lease cannot overwrite a successor's
 * row even before it notices the loss.
 *
 * For the HA issue (not built here): standby daemons would wait on
 * pg_advisory_lock instead of failing on pg_try_advisory_lock, and the token
 * becomes a fencing term (a counter bumped by each new holder, stored with the
 * slot's state) checked on every state write, sweep checkpoint and stream
 * batch, not only on the status row. A pooler in transaction mode between
 * pg-rekey and PostgreSQL breaks session advisory locks: the lease needs a
 * direct session.
 */

const NAMESPACE = 'pg-rekey';
/** How often the lease connection is checked, and how long a check may take before the lease counts as lost. */
const PING_EVERY_MS = 5_000;
const PING_TIMEOUT_MS = 15_000;
/** How long a lease whose connection ended is taken again before it counts as lost (a server restart takes seconds). */
const REGAIN_MS = 30_000;

const LOCK_MATCH = `l.locktype = 'advisory' and l.granted and l.objsubid = 2
  and l.database = (select oid from pg_database where datname = current_database())
  and l.classid = hashtext($1)::oid and l.objid = hashtext($2)::oid`;

/** Who holds a slot's lease: as the holder recorded itself, and its session as the server shows it. */
export interface LeaseHolder {
  slot: string;
  /** The advisory lock is held by some session right now. */
  held: boolean;
  /** Recorded by the holder in pgrekey.daemon when it took the lease (null: no record). */
  host: string | null;
  pid: number | null;
  startedAt: Date | null;
  /** The session holding the lock (client address and application only where pg_stat_activity shows them). */
  backendPid: number | null;
  clientAddr: string | null;
  applicationName: string | null;
}

/** Reads who holds the lease of `slot` (status, teardown, and a `run` that finds it taken). */
export async function readLeaseHolder(db: pg.Pool | pg.ClientBase, slot: string): Promise<LeaseHolder> {
  const lock = (
    await db.query<{ pid: number; addr: string | null; app: string | null }>(
      `select l.pid, host(a.client_addr) as addr, a.application_name as app
         from pg_locks l left join pg_stat_activity a on a.pid = l.pid where ${LOCK_MATCH} limit 1`,
      [NAMESPACE, slot],
    )
  ).rows[0];
  let rec: { host: string | null; pid: number | null; started_at: Date | null } | undefined;
  try {
    rec = (await db.query(`select host, pid, started_at from pgrekey.daemon where slot_name = $1`, [slot])).rows[0];
  } catch {
    rec = undefined; // no state schema (yet): the lock is all there is to show
  }
  return {
    slot,
    held: lock !== undefined,
    host: rec?.host ?? null,
    pid: rec?.pid ?? null,
    startedAt: rec?.started_at ?? null,
    backendPid: lock?.pid ?? null,
    clientAddr: lock?.addr ?? null,
    applicationName: lock?.app ?? null,
  };
}

/** "pid 123 on host-a, started 2026-...; lease session: backend pid 456 from 10.0.0.5" */
export function describeHolder(h: LeaseHolder): string {
  const who = h.pid !== null ? `pid ${h.pid} on ${h.host ?? '?'}, started ${h.startedAt?.toISOString() ?? '?'}` : 'a process with no record in pgrekey.daemon';
  const session = h.backendPid !== null ? `; lease session: backend pid ${h.backendPid}${h.clientAddr ? ` from ${h.clientAddr}` : ''}${h.applicationName ? ` (${h.applicationName})` : ''}` : '';
  return `${who}${session}`;
}

/** Ends the session holding the lease of `slot` (teardown --force): its daemon stops. True if one was ended. */
export async function terminateLeaseHolder(db: pg.Pool | pg.ClientBase, slot: string): Promise<boolean> {
  // First the status row stops naming the daemon: it must not take the lease again afterwards.
  await db.query(`update pgrekey.daemon set started_at = now(), pid = null where slot_name = $1`, [slot]).catch(() => undefined);
  const r = await db.query<{ ok: boolean }>(`select pg_terminate_backend(l.pid) as ok from pg_locks l where ${LOCK_MATCH}`, [NAMESPACE, slot]);
  return r.rows.some((x) => x.ok);
}

/** Another `run` holds the slot: exit 2, naming it. */
export class LeaseHeld extends ConfigError {
  constructor(readonly holder: LeaseHolder) {
    super(
      `replication slot ${holder.slot} is in use by another pg-rekey run: ${describeHolder(holder)}`,
      'run one daemon per slot: stop that one first (SIGTERM), or give this one its own replication.slot and replication.publication',
    );
  }
}

/** The lease's own connection: named in pg_stat_activity, with TCP keepalive so a dead peer is noticed. */
function leaseClient(connectionString: string | undefined, connectionTimeoutMillis: number): pg.Client {
  // To the primary of a host list (db/primary.ts): after a failover, regain() finds the new one.
  const Client = primaryClientClass(locatorFor(connectionString));
  return new Client({ ...connectionConfig(connectionString, { rowSecurityOff: false }), application_name: 'pg-rekey-lease', keepAlive: true, keepAliveInitialDelayMillis: 10_000, connectionTimeoutMillis });
}

/** The session advisory lock keyed on the slot; false when another session holds it. */
async function tryLock(client: pg.Client, slot: string): Promise<boolean> {
  return (await client.query<{ ok: boolean }>(`select pg_try_advisory_lock(hashtext($1), hashtext($2)) as ok`, [NAMESPACE, slot])).rows[0]!.ok;
}

export interface LeaseOptions {
  connectionString: string | undefined;
  slot: string;
  log: Logger;
}

/** What this process recorded when it took the lease; `startedAt` (text, full precision) is the token. */
export interface LeaseToken {
  host: string;
  pid: number;
  startedAt: string;
}

/**
 * The lease this process holds. Emits 'lost' (once, with the cause) when the
 * lease connection ends or stops answering; never after release().
 */
export class SlotLease extends EventEmitter {
  private state: 'held' | 'regaining' | 'lost' | 'released' = 'held';
  private readonly timer: NodeJS.Timeout;

  private constructor(
    private client: pg.Client,
    readonly slot: string,
    readonly token: LeaseToken,
    private readonly log: Logger,
    private readonly o: LeaseOptions,
  ) {
    super();
    this.listen(client);
    this.timer = setInterval(() => void this.ping(), PING_EVERY_MS);
    this.timer.unref();
  }

  private listen(client: pg.Client): void {
    client.on('error', (e) => this.connectionLost(client, e));
    client.on('end', () => this.connectionLost(client, new Error('the lease connection was closed')));
  }

  /** Takes the lease of `slot` and records this process as its holder; throws LeaseHeld if another session has it. */
  static async acquire(o: LeaseOptions): Promise<SlotLease> {
    const client = leaseClient(o.connectionString, 15_000);
    const ignore = () => undefined;
    client.on('error', ignore); // until the lease listens; a failed query still rejects
    await client.connect();
    try {
      if (!(await tryLock(client, o.slot))) throw new LeaseHeld(await readLeaseHolder(client, o.slot));
      const token: LeaseToken = { host: hostname(), pid: process.pid, startedAt: '' };
      // A new holder: the row is this process's from now on. Not converged until this daemon has checked.
      token.startedAt = (
        await client.query<{ t: string }>(
          `insert into pgrekey.daemon as d (slot_name, host, pid, started_at, heartbeat_at, stream_connected, converged_at, stopped_at)
           values ($1, $2, $3, now(), now(), false, null, null)
           on conflict (slot_name) do update set host = excluded.host, pid = excluded.pid, started_at = excluded.started_at,
             heartbeat_at = excluded.heartbeat_at, stream_connected = false, converged_at = null, stopped_at = null
           returning started_at::text as t`,
          [o.slot, token.host, token.pid],
        )
      ).rows[0]!.t;
      client.off('error', ignore);
      const lease = new SlotLease(client, o.slot, token, o.log.child({ component: 'lease', slot: o.slot }), o);
      lease.log.info({ host: token.host, pid: token.pid }, `holding the lease of replication slot ${o.slot}: no other pg-rekey run can use it while this one runs`);
      return lease;
    } catch (e) {
      await client.end().catch(() => undefined);
      throw e;
    }
  }

  get held(): boolean {
    return this.state === 'held';
  }

  /** Lets the lock go (ends the session). */
  async release(): Promise<void> {
    if (this.state === 'released') return;
    const wasHeld = this.state === 'held';
    this.state = 'released';
    clearInterval(this.timer);
    if (wasHeld) await this.client.end().catch(() => undefined);
  }

  /** The lease can no longer be trusted: tell the daemon (once). */
  lose(cause: unknown): void {
    if (this.state !== 'held' && this.state !== 'regaining') return;
    this.state = 'lost';
    clearInterval(this.timer);
    this.emit('lost', cause);
    void this.client.end().catch(() => undefined);
  }

  /**
   * The lease connection ended (a server restart, a failover, a network cut): the lock is gone
   * with it. Nothing is written meanwhile (`held` is false). For up to REGAIN_MS the lease is
   * taken again, and kept only if the status row still names this process, i.e. no other run
   * held the slot in between; otherwise, or past the bound, it is lost.
   */
  private connectionLost(client: pg.Client, cause: unknown): void {
    if (client !== this.client || this.state !== 'held') return;
    this.state = 'regaining';
    this.log.warn({ err: cause, regainWithinMs: REGAIN_MS }, 'the lease connection ended; writing no state until the lease is taken again');
    void this.regain(cause);
  }

  private async regain(cause: unknown): Promise<void> {
    const deadline = Date.now() + REGAIN_MS;
    for (let attempt = 1; this.state === 'regaining'; attempt++) {
      const client = leaseClient(this.o.connectionString, 5_000);
      client.on('error', () => undefined);
      try {
        await client.connect();
        if (!(await tryLock(client, this.slot))) throw new LeaseHeld(await readLeaseHolder(client, this.slot));
        const ours = await client.query(`select 1 from pgrekey.daemon where slot_name = $1 and host = $2 and pid = $3 and started_at = $4::timestamptz`, [this.slot, this.token.host, this.token.pid, this.token.startedAt]);
        if (ours.rowCount === 0) throw new Error('another pg-rekey run held the slot while the lease connection was down (the status row names it)');
        if (this.state !== 'regaining') {
          await client.end().catch(() => undefined);
          return;
        }
        this.client = client;
        this.listen(client);
        this.state = 'held';
        this.log.info({ attempt }, `the lease of replication slot ${this.slot} is held again`);
        return;
      } catch (e) {
        await client.end().catch(() => undefined);
        const final = e instanceof LeaseHeld || (e instanceof Error && e.message.startsWith('another pg-rekey run'));
        if (final || Date.now() + 1_000 > deadline) return this.lose(final ? e : cause);
        await new Promise((r) => setTimeout(r, Math.min(1_000 * attempt, 5_000)).unref());
      }
    }
  }

  /**
   * A connection can die without a word (network cut, server gone): a check that
   * does not answer within PING_TIMEOUT_MS counts as a lost lease, since the
   * server may already have ended the session and released the lock.
   */
  private async ping(): Promise<void> {
    if (this.state !== 'held') return;
    const client = this.client;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the lease connection did not answer within ${PING_TIMEOUT_MS / 1000} s`)), PING_TIMEOUT_MS);
      timer.unref();
    });
    try {
      await Promise.race([client.query('select 1'), timeout]);
    } catch (e) {
      // The server may have ended the session already: take the lease again (or lose it).
      void client.end().catch(() => undefined);
      this.connectionLost(client, e);
    } finally {
      clearTimeout(timer);
    }
  }
}
