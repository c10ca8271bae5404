import { connectionConfig, locatorFor } from '../db/connect.js';
import { primaryClientClass } from '../db/primary.js';
import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import pg from 'pg';
import { ConfigError } from '../errors.js';
import type { Logger } from '../logger.js';
import { bumpTerm, carryTerm, currentTerm, Fenced } from './leader-term.js';

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
 * Standbys and the fencing term (HA): `run --standby` polls the lock instead
 * of exiting (standby.ts). Each new holder bumps the slot's term right after
 * taking the lock (leader-term.ts) and its pool carries that term, so the
 * database refuses every state write of an older term: a holder that was
 * paused past the lease and wakes up cannot write, even before it notices.
 *
 * How long a dead or paused holder keeps the lock: kill -9 closes its sockets,
 * and the server ends the session at once. A paused process (SIGSTOP, a long
 * GC) or a hung network sends no more pings: the server ends the lease session
 * after LEASE_TIMEOUT_MS idle (idle_session_timeout, set on this session), and
 * its TCP keepalives and tcp_user_timeout (also set here) notice a dead peer
 * within about the same time. A pooler in transaction mode between pg-rekey
 * and PostgreSQL breaks session advisory locks: the lease needs a direct session.
 */

const NAMESPACE = 'pg-rekey';
/** How often the lease connection is checked, and how long a check may take before the lease counts as lost. */
const PING_EVERY_MS = 2_000;
const PING_TIMEOUT_MS = 8_000;
/**
 * The server ends a lease session that sent nothing for this long (idle_session_timeout), which
 * releases the lock: a paused or cut-off holder loses the slot after at most this long, and a
 * standby takes over within about a second more. Pings come every PING_EVERY_MS.
 */
export const LEASE_TIMEOUT_MS = 10_000;
/** Server-side TCP settings of the lease session: a dead peer is noticed within about LEASE_TIMEOUT_MS. */
const LEASE_SESSION_SETTINGS: Record<string, string> = {
  idle_session_timeout: `${LEASE_TIMEOUT_MS}ms`,
  tcp_keepalives_idle: '5',
  tcp_keepalives_interval: '2',
  tcp_keepalives_count: '3',
  tcp_user_timeout: `${LEASE_TIMEOUT_MS}`,
};
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
  // First the status row stops naming the daemon, and its term ends (every state write of it is
  // refused from now on): it must not take the lease again afterwards, nor write.
  await db.query(`update pgrekey.daemon set started_at = now(), pid = null where slot_name = $1`, [slot]).catch(() => undefined);
  await db.query(`update pgrekey.leader set term = term + 1, host = null, pid = null, since = clock_timestamp() where slot_name = $1`, [slot]).catch(() => undefined);
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
  return new Client({ ...connectionConfig(connectionString, { rowSecurityOff: false }), application_name: 'pg-rekey-lease', keepAlive: true, keepAliveInitialDelayMillis: 5_000, connectionTimeoutMillis });
}

/** Connects a lease session with its server-side timeouts (LEASE_SESSION_SETTINGS). */
export async function connectLeaseClient(connectionString: string | undefined, connectionTimeoutMillis = 15_000): Promise<pg.Client> {
  const client = leaseClient(connectionString, connectionTimeoutMillis);
  client.on('error', () => undefined); // until a lease listens; a failed query still rejects
  try {
    await client.connect();
    const names = Object.keys(LEASE_SESSION_SETTINGS);
    await client.query(`select ${names.map((_, i) => `set_config($${2 * i + 1}, $${2 * i + 2}, false)`).join(', ')}`, names.flatMap((n) => [n, LEASE_SESSION_SETTINGS[n]!]));
    return client;
  } catch (e) {
    await client.end().catch(() => undefined);
    throw e;
  }
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
  /** The fencing term this holder started (int8 as text): every state write of this process carries it. */
  term: string;
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
    const client = await connectLeaseClient(o.connectionString);
    try {
      const lease = await SlotLease.take(client, o);
      if (!lease) throw new LeaseHeld(await readLeaseHolder(client, o.slot));
      return lease;
    } catch (e) {
      await client.end().catch(() => undefined);
      throw e;
    }
  }

  /**
   * Tries the lock on `client` (a connectLeaseClient session): null when another session holds it
   * (the client stays open, for a standby's next try). Otherwise starts a new term, records this
   * process as the holder and returns the lease, which owns the client from then on.
   */
  static async take(client: pg.Client, o: LeaseOptions): Promise<SlotLease | null> {
    if (!(await tryLock(client, o.slot))) return null;
    try {
      const token: LeaseToken = { host: hostname(), pid: process.pid, startedAt: '', term: '' };
      token.term = await bumpTerm(client, o.slot, token.host, token.pid);
      await carryTerm(client, o.slot, token.term);
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
      client.removeAllListeners('error');
      const lease = new SlotLease(client, o.slot, token, o.log.child({ component: 'lease', slot: o.slot }), o);
      lease.log.info({ host: token.host, pid: token.pid, term: token.term }, `holding the lease of replication slot ${o.slot} in term ${token.term}: no other pg-rekey run can use it while this one runs`);
      return lease;
    } catch (e) {
      // The lock goes with the session: a half-taken lease is no lease.
      await client.end().catch(() => undefined);
      throw e;
    }
  }

  /**
   * Proves, on the lease session itself, that this process still leads the slot: the session is
   * alive (so it holds the lock) and the slot's term is still this lease's. Throws Fenced (or the
   * connection's error) otherwise. The stream calls it before every connect, so a holder that lost
   * the lease never takes the slot's walsender back.
   */
  async confirm(): Promise<void> {
    if (this.state === 'regaining') throw new Error('the lease connection ended and is being taken again: not streaming until it is held');
    if (this.state !== 'held') throw new Fenced(this.slot, this.token.term, `its lease is ${this.state}`);
    const term = await currentTerm(this.client, this.slot);
    if (term !== this.token.term) {
      const e = new Fenced(this.slot, this.token.term, `the slot's current term is ${term ?? 'none'}`);
      this.fence(e);
      throw e;
    }
  }

  /** The database refused a write of this term (or confirm() found a newer one): lost, with a Fenced cause. */
  fence(cause: unknown): void {
    this.lose(cause instanceof Fenced ? cause : new Fenced(this.slot, this.token.term, `the database refused a state write of this term (${(cause as Error)?.message ?? cause})`));
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
   * taken again, and kept only if the slot's term is still this lease's, i.e. no other run
   * held the slot in between (a new holder bumps it); otherwise, or past the bound, it is lost.
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
      let client: pg.Client | null = null;
      try {
        client = await connectLeaseClient(this.o.connectionString, 5_000);
        if (!(await tryLock(client, this.slot))) throw new LeaseHeld(await readLeaseHolder(client, this.slot));
        const term = await currentTerm(client, this.slot);
        if (term !== this.token.term) throw new Fenced(this.slot, this.token.term, `another pg-rekey run held the slot while the lease connection was down (the slot's term is now ${term ?? 'none'})`);
        await carryTerm(client, this.slot, this.token.term);
        if (this.state !== 'regaining') {
          await client.end().catch(() => undefined);
          return;
        }
        client.removeAllListeners('error');
        this.client = client;
        this.listen(client);
        this.state = 'held';
        this.log.info({ attempt }, `the lease of replication slot ${this.slot} is held again`);
        return;
      } catch (e) {
        await client?.end().catch(() => undefined);
        const final = e instanceof LeaseHeld || e instanceof Fenced;
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
