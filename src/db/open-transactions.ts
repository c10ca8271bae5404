import type pg from 'pg';
import { sleep } from '../timing.js';
import { hasEnded, parseSnapshot, xid32, type Snapshot } from './snapshot.js';

/**
 * The transaction rule of the convergence argument (design.md rule 7): a count
 * that finds no old-version value proves nothing about a transaction that was
 * open while it ran, since its writes are invisible to the count and not yet
 * decoded by the stream. Such a transaction holds an xid (every write takes
 * one); prepared transactions hold theirs until COMMIT/ROLLBACK PREPARED.
 */
export interface OpenTransaction {
  xid: string;
  kind: 'session' | 'prepared' | 'unknown';
  /** Backend pid of a session. */
  pid?: number;
  /** gid of a prepared transaction. */
  gid?: string;
  /** null: the transaction ended between the snapshot and this lookup (it is then no longer waited for). */
  database: string | null;
  application?: string | null;
  state?: string | null;
  ageSeconds: number | null;
}

/** A fresh snapshot of the server (in a transaction: that transaction's own, under REPEATABLE READ). */
export async function currentSnapshot(db: pg.Pool | pg.ClientBase): Promise<Snapshot> {
  return parseSnapshot((await db.query<{ s: string }>(`select pg_current_snapshot()::text as s`)).rows[0]!.s);
}

/**
 * Every transaction holding an xid, in the whole cluster, that was open at the
 * moment of the call: an xid is assigned first (so that nothing open is above
 * the snapshot's xmax unseen), then a snapshot lists every xid in progress
 * below it. Privilege-free; `describe` adds what the role may see.
 */
export async function openTransactionsNow(db: pg.Pool | pg.ClientBase): Promise<{ xids: bigint[]; snapshot: Snapshot }> {
  const mark = BigInt((await db.query<{ x: string }>(`select pg_current_xact_id()::text as x`)).rows[0]!.x);
  const snapshot = await currentSnapshot(db);
  const xids = [...snapshot.xip].filter((x) => x < mark);
  return { xids, snapshot };
}

/** Names each xid: a session (pid, database, application, state, age) or a prepared transaction (gid, database, age). Never a query text. */
export async function describeTransactions(db: pg.Pool | pg.ClientBase, xids: readonly bigint[]): Promise<OpenTransaction[]> {
  if (xids.length === 0) return [];
  const small = xids.map((x) => String(xid32(x)));
  const sessions = await db.query<{ xid: string; pid: number; datname: string | null; application_name: string | null; state: string | null; age: number | null }>(
    `select backend_xid::text as xid, pid, datname, application_name, state,
            extract(epoch from now() - xact_start)::float8 as age
       from pg_stat_activity where backend_xid::text = any($1::text[])`,
    [small],
  );
  const prepared = await db.query<{ xid: string; gid: string; database: string; age: number }>(
    `select transaction::text as xid, gid, database, extract(epoch from now() - prepared)::float8 as age
       from pg_prepared_xacts where transaction::text = any($1::text[])`,
    [small],
  );
  const bySmall = new Map<string, OpenTransaction>();
  for (const s of sessions.rows) {
    bySmall.set(s.xid, { xid: s.xid, kind: 'session', pid: s.pid, database: s.datname, application: s.application_name, state: s.state, ageSeconds: s.age === null ? null : Math.round(s.age) });
  }
  for (const p of prepared.rows) bySmall.set(p.xid, { xid: p.xid, kind: 'prepared', gid: p.gid, database: p.database, ageSeconds: Math.round(p.age) });
  return small.map((x) => bySmall.get(x) ?? { xid: x, kind: 'unknown', database: null, ageSeconds: null });
}

export interface WaitResult {
  /** Transactions of `xids` still open when the wait ended (described). */
  open: OpenTransaction[];
}

/**
 * Waits until each of `xids` has ended (committed, aborted, or prepared-and-
 * then-finished), up to `timeoutMs` or until `signal` aborts. A transaction
 * known to belong to another database cannot write the configured tables and
 * is not waited for; one this role cannot see is (its database is unknown).
 */
export async function waitForTransactions(
  db: pg.Pool,
  xids: readonly bigint[],
  opts: { timeoutMs: number; signal?: AbortSignal; pollMs?: number },
): Promise<WaitResult> {
  const deadline = Date.now() + opts.timeoutMs;
  const here = (await db.query<{ d: string }>(`select current_database() as d`)).rows[0]!.d;
  let pending = [...xids];
  for (;;) {
    const snap = await currentSnapshot(db);
    pending = pending.filter((x) => !hasEnded(x, snap));
    if (pending.length === 0) return { open: [] };
    const described = await describeTransactions(db, pending);
    const relevant = described.filter((t) => t.database === null || t.database === here);
    if (relevant.length === 0) return { open: [] };
    pending = pending.filter((x) => relevant.some((t) => t.xid === String(xid32(x))));
    if (Date.now() >= deadline || opts.signal?.aborted) return { open: relevant };
    await sleep(opts.pollMs ?? 100, opts.signal);
  }
}

