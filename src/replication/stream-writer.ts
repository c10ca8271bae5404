import { createHash } from 'node:crypto';
import type pg from 'pg';
import type { KeyRing } from '../crypto/key-ring.js';
import { rewriteValue } from '../crypto/rewrite.js';
import { parseVersioned } from '../crypto/envelope.js';
import { displayName, quoteIdent } from '../db/ident.js';
import { casColumnsSql, versionExpr } from '../backfill/sweep-sql.js';
import { withTriggersSkipped } from '../db/triggers.js';
import { inOriginTransaction, type OriginRelation, type RewriteOrigin } from './origin.js';
import type { Logger } from '../logger.js';
import { backoffMs, sleep } from '../timing.js';
import { classifyMiss, isolatedByRow, narrowToStillOld, OwnTransactions, RecentXids, rowErrorReason, SanitizedDbError, type CasRow } from './cas-outcome.js';
import { OldVersionSightings, type DecodedTransaction } from './old-version-sightings.js';
import { recordSightings } from '../state/old-version-writes.js';
import { StopWhileWaiting, waitUntilVisible } from './visibility.js';
import { clearQuarantine, recordQuarantine, type QuarantineEntry } from '../state/quarantine.js';
import { keyMatchSql, type StreamRelation } from './relation-map.js';
import type { RowWork } from './rewrite-plan.js';

export interface BatchLimits {
  /** Flush when this many rows are pending. */
  maxRows: number;
  /** Flush when pending values add up to this many bytes (10 MB values exist). */
  maxBytes: number;
  /** Flush when the oldest pending row waited this long. */
  maxDelayMs: number;
  /**
   * lock_timeout of a flush. Below deadlock_timeout (1 s by default), so that when a batch and
   * application transactions (queued on the same rows behind the sweep) form a lock cycle,
   * pg-rekey gives way before the deadlock detector aborts an application transaction. A flush
   * that times out fails the session; the batch replays from the slot.
   */
  lockTimeoutMs?: number;
}

export const DEFAULT_BATCH: BatchLimits = { maxRows: 2000, maxBytes: 32 * 1024 * 1024, maxDelayMs: 20 };

interface Pending {
  rel: StreamRelation;
  rows: Map<string, RowWork>;
}

export interface FlushResult {
  rewritten: Map<string, number>; // by table
  quarantined: Map<string, number>;
  /** CAS misses explained by a newer committed write or a delete of the row (a later message carries it). */
  superseded: number;
  /** CAS misses with the row still holding the old value: tried again. */
  retried: number;
  /** Rows given up on (raised, did not stick, never applied): quarantined with the reason. */
  givenUp: number;
  /** Time spent waiting for the batch's transactions to become visible. */
  visibilityWaitMs: number;
}

export interface WriterHooks {
  log?: Logger;
  /** Aborted when the stream stops: a visibility wait or retry pause ends, the batch replays. */
  signal?: AbortSignal;
  /** The origin flush transactions carry (replication/origin.ts); unset: none. */
  origin?: RewriteOrigin;
}

/** Attempts of a row whose CAS matched nothing although it still holds the old value. */
const MAX_ATTEMPTS = 4;

/**
 * Collects the rows the stream must rewrite, per relation, deduplicated by
 * key (the latest message for a row wins), and writes them in one
 * transaction per flush with a compare-and-swap by key:
 *   UPDATE t SET c = new WHERE <key> = k AND c = old
 * First it waits until the transactions the rows came from are visible
 * (visibility.ts): before that a miss means "not yet", not "changed". A miss
 * afterwards is re-read: superseded by a newer write (left to the later
 * message), or unexplained (retried, then quarantined). A row whose UPDATE
 * raises (trigger, CHECK, domain) or whose rewrite does not stick is
 * quarantined with its reason; the rest of the batch goes on.
 */
export class StreamWriter {
  private pending = new Map<string, Pending>();
  private rows = 0;
  private bytes = 0;
  private oldest = 0;
  private hooks: WriterHooks = {};
  /** pg-rekey's own flush transactions: a non-target value decoded from one of them did not stick. */
  private readonly own = new OwnTransactions();
  /** The xid of the flush transaction in progress. */
  private xid = 0;
  /** pg-rekey's other write transactions (the sweep's chunks in this process). */
  private readonly otherOwn = new RecentXids();
  /** Old-version values in application writes (the rollout gate), persisted at the next flush. */
  readonly sightings = new OldVersionSightings();

  constructor(
    private readonly pool: pg.Pool,
    private readonly ring: KeyRing,
    readonly limits: BatchLimits = DEFAULT_BATCH,
  ) {}

  /** Rows pending, plus one while sightings wait to be recorded (the slot must not move past them). */
  get size(): number {
    return this.rows + (this.sightings.size > 0 ? 1 : 0);
  }

  /** A sweep chunk's write transaction (32-bit xid): its decoded changes are pg-rekey's, not the application's. */
  noteOwnTransaction(xid32: number): void {
    this.otherOwn.add(xid32);
  }

  /** True when the decoded transaction `xid` was written by pg-rekey (a stream flush or a sweep chunk). */
  isOwnTransaction(xid: number | undefined): boolean {
    return this.own.hasTransaction(xid) || this.otherOwn.has(xid);
  }

  /** An old-version value in an application's write: recorded (with the rewrites) before the slot moves past it. */
  noteSighting(txn: DecodedTransaction, version: number, table: string, column: string): void {
    this.sightings.note(txn, version, table, column);
    if (this.oldest === 0) this.oldest = Date.now();
  }

  /** Logger and stop signal (the stream sets them). */
  attach(hooks: WriterHooks): void {
    this.hooks = hooks;
  }

  add(rel: StreamRelation, work: RowWork): void {
    const id = rel.quoted;
    let p = this.pending.get(id);
    if (!p) this.pending.set(id, (p = { rel, rows: new Map() }));
    const k = JSON.stringify(work.key);
    // The latest message for a row wins outright: its new tuple holds every configured column
    // (a value, NULL, or 'u' to read back), so it says all that is left to do for the row.
    // Merging kept an earlier message's old value of a column the later message shows at
    // target; the whole-row compare-and-swap then failed on that stale column and the other
    // column was never rewritten (no later message would come for it).
    if (!p.rows.has(k)) this.rows++;
    p.rows.set(k, { key: work.key, rewrite: new Map(work.rewrite), readBack: [...work.readBack], xid: work.xid });
    for (const v of work.rewrite.values()) this.bytes += v.length;
    if (this.oldest === 0) this.oldest = Date.now();
  }

  due(now = Date.now()): boolean {
    return this.rows >= this.limits.maxRows || this.bytes >= this.limits.maxBytes || (this.size > 0 && now - this.oldest >= this.limits.maxDelayMs);
  }

  /** Drops pending work (after a stream error: it replays from the slot). */
  discard(): void {
    this.pending = new Map();
    this.rows = this.bytes = this.oldest = 0;
    this.sightings.discard();
  }

  /** Drops pending rewrites after a flush; sightings noted meanwhile stay for the next one. */
  private clearRows(): void {
    this.pending = new Map();
    this.rows = this.bytes = 0;
    this.oldest = this.sightings.size > 0 ? Date.now() : 0;
  }

  async flush(): Promise<FlushResult> {
    const result: FlushResult = { rewritten: new Map(), quarantined: new Map(), superseded: 0, retried: 0, givenUp: 0, visibilityWaitMs: 0 };
    // Before the slot can move past them (a failure below replays them; recorded ones are not counted twice).
    if (this.sightings.size > 0) await recordSightings(this.pool, this.sightings.take());
    if (this.rows === 0) {
      this.clearRows();
      return result;
    }
    let work = [...this.pending.values()];
    const xids = work.flatMap((b) => [...b.rows.values()].flatMap((r) => (r.xid === undefined ? [] : [r.xid])));
    result.visibilityWaitMs = await waitUntilVisible(this.pool, xids, this.hooks);
    for (let attempt = 1; work.length > 0; attempt++) {
      const last = attempt >= MAX_ATTEMPTS;
      const left: Pending[] = [];
      await this.inTransaction(work.map((b) => ({ quoted: b.rel.quoted, replica: b.rel.skipTriggers === true })), async (client) => {
        for (const b of work) {
          const rows = await this.flushRelation(client, b, result, last);
          if (rows.length) left.push({ rel: b.rel, rows: new Map(rows.map((r) => [JSON.stringify(r.key), r])) });
        }
      });
      work = left;
      if (work.length === 0) break;
      const n = work.reduce((s, b) => s + b.rows.size, 0);
      result.retried += n;
      this.hooks.log?.info({ rows: n, attempt }, 'compare-and-swap matched nothing although the rows still hold their old values; trying again');
      await sleep(backoffMs(attempt, 50, 1_000), this.hooks.signal);
      if (this.hooks.signal?.aborted) throw new StopWhileWaiting();
    }
    this.clearRows();
    return result;
  }

  private inTransaction(relations: OriginRelation[], fn: (c: pg.PoolClient) => Promise<void>): Promise<void> {
    // READ COMMITTED whatever default_transaction_isolation says: the CAS argument relies on an
    // UPDATE that waited for a row lock re-checking the new row version, not failing with 40001.
    return inOriginTransaction(this.pool, this.hooks.origin, relations, 'begin isolation level read committed', async (client) => {
      // Constraints immediate: a deferred one raises in the row's savepoint, not at COMMIT.
      await client.query('set constraints all immediate');
      const xid = await client.query<{ x: string }>(`select pg_current_xact_id()::text as x`);
      this.xid = Number(BigInt(xid.rows[0]!.x) & 0xffffffffn);
      if (this.limits.lockTimeoutMs) await client.query(`select set_config('lock_timeout', $1, true)`, [String(this.limits.lockTimeoutMs)]);
      await fn(client);
    });
  }

  /** Writes one relation's rows; returns those to try again (a miss that nothing explains yet). */
  private async flushRelation(client: pg.PoolClient, b: Pending, out: FlushResult, last: boolean): Promise<RowWork[]> {
    const { rel } = b;
    const rows = [...b.rows.values()];
    const cols = rel.columns;
    const failures: QuarantineEntry[] = [];
    const quarantine = (w: RowWork, column: string, old: string, reason: QuarantineEntry['reason'], version?: number) =>
      failures.push({ table: rel.table, column, rowKey: rowKeyOf(rel, w), version: version ?? parseVersioned(old)?.version ?? 0, reason, sha256: createHash('sha256').update(old).digest() });
    // An old-version value in a change pg-rekey's own UPDATE made: the rewrite did not stick (an
    // AFTER trigger or a rule wrote it back). Recorded, never rewritten again (that would loop).
    for (const row of rows) {
      for (const [col, old] of [...row.rewrite]) {
        if (!this.own.wroteCell(row.xid, rel.table, row.key, col)) continue;
        out.givenUp++;
        quarantine(row, col, old, 'did-not-stick');
        row.rewrite.delete(col);
      }
    }
    await this.readBack(client, rel, rows);
    const cas: CasRow[] = [];
    for (const row of rows) {
      const c: CasRow = { work: row, olds: [], news: [] };
      for (const col of cols) {
        const old = row.rewrite.get(col);
        const r = old === undefined ? null : rewriteValue(old, this.ring);
        const ok = r?.kind === 'rewritten';
        c.olds.push(ok ? old! : null);
        c.news.push(ok ? r.value : null);
        if (r?.kind === 'failed') quarantine(row, col, old!, r.reason, r.version);
      }
      if (c.news.some((x) => x !== null)) cas.push(c);
    }
    const retry: RowWork[] = [];
    const written: { column: string; rowKey: Record<string, string | null> }[] = [];
    // A miss whose row still holds the old value in some rewritten columns and not in others: the
    // changed ones are superseded (a later message, or pg-rekey's own rewrite, which the stream
    // skips), the others are tried again at once, alone. Each round has fewer columns: it ends.
    for (let round = cas; round.length > 0; ) {
      round = await this.applyCas(client, rel, round, out, quarantine, written, retry, last);
    }
    // A value quarantined earlier and since fixed by the application was just rewritten: its entry
    // no longer describes a stored value (the sweep clears such entries too).
    await clearQuarantine(client, rel.table, written);
    if (failures.length) {
      await recordQuarantine(client, failures, 'stream');
      out.quarantined.set(rel.table, (out.quarantined.get(rel.table) ?? 0) + failures.length);
    }
    return retry;
  }

  /**
   * One batched CAS and what each row's outcome means; returns the rows to CAS again at once
   * (narrowed to the columns that still hold their old values).
   */
  private async applyCas(
    client: pg.PoolClient,
    rel: StreamRelation,
    cas: CasRow[],
    out: FlushResult,
    quarantine: (w: RowWork, column: string, old: string, reason: QuarantineEntry['reason']) => void,
    written: { column: string; rowKey: Record<string, string | null> }[],
    retry: RowWork[],
    last: boolean,
  ): Promise<CasRow[]> {
    const cols = rel.columns;
    // `triggers: skip`: the CAS alone runs in replica mode (db/triggers.ts), not the state writes.
    const outcome = await withTriggersSkipped(client, rel.skipTriggers === true, () => this.compareAndSwap(client, rel, cas));
    const misses: number[] = [];
    cas.forEach((c, i) => {
      const rewrittenCols = cols.filter((_, j) => c.news[j] !== null);
      const raised = outcome.raised.get(i);
      const sticks = outcome.applied.get(i);
      if (raised !== undefined) {
        out.givenUp++;
        rewrittenCols.forEach((col) => quarantine(c.work, col, c.olds[cols.indexOf(col)]!, rowErrorReason(raised)));
      } else if (sticks === false) {
        // A BEFORE UPDATE trigger (or a rule) kept another value than the one written.
        out.givenUp++;
        rewrittenCols.forEach((col) => quarantine(c.work, col, c.olds[cols.indexOf(col)]!, 'did-not-stick'));
        // The UPDATE happened (with the trigger's value): its change comes back decoded and must not be rewritten again.
        this.own.add(this.xid, rewrittenCols.map((column) => ({ table: rel.table, key: c.work.key, column })));
      } else if (sticks === true) {
        out.rewritten.set(rel.table, (out.rewritten.get(rel.table) ?? 0) + rewrittenCols.length);
        rewrittenCols.forEach((column) => written.push({ column, rowKey: rowKeyOf(rel, c.work) }));
        this.own.add(this.xid, rewrittenCols.map((column) => ({ table: rel.table, key: c.work.key, column })));
      } else misses.push(i);
    });
    if (misses.length === 0) return [];
    const now = await this.reread(client, rel, misses.map((i) => cas[i]!));
    const again: CasRow[] = [];
    misses.forEach((i, n) => {
      const c = cas[i]!;
      const row = now.get(n);
      const narrowed = row && !row.stillOld ? narrowToStillOld(c, row.columns, cols) : null;
      if (narrowed) again.push(narrowed);
      else if (classifyMiss(row) === 'superseded') out.superseded++;
      else if (!last) retry.push(c.work);
      else {
        out.givenUp++;
        cols.forEach((col, j) => c.olds[j] !== null && quarantine(c.work, col, c.olds[j]!, 'not-applied'));
      }
    });
    return again;
  }

  /**
   * The batched CAS. A row error (class 22, 23, P0: a raising trigger, a CHECK or domain
   * constraint) rolls the batch back to a savepoint and redoes it row by row, each in its own
   * savepoint, so that one bad row is quarantined and the others are written.
   * Returns, by position in `cas`: written (true: the stored values are the new ones; false: a
   * trigger kept another value) or raised; a position in neither matched nothing.
   */
  private async compareAndSwap(client: pg.PoolClient, rel: StreamRelation, cas: CasRow[]): Promise<{ applied: Map<number, boolean>; raised: Map<number, unknown> }> {
    const applied = new Map<number, boolean>();
    const raised = new Map<number, unknown>();
    const run = async (rows: CasRow[], offset: number) => {
      const params: unknown[] = rel.keyColumns.map((_, k) => rows.map((r) => r.work.key[k]!));
      rel.columns.forEach((_, j) => params.push(rows.map((r) => r.olds[j]), rows.map((r) => r.news[j])));
      const upd = await client.query<{ ord: number; sticks: boolean }>(casByKeySql(rel), params);
      for (const r of upd.rows) applied.set(offset + r.ord - 1, r.sticks);
    };
    const what = `rewriting ${rel.table} (${displayName(rel.leaf)})`;
    await client.query('savepoint pgrekey_cas');
    try {
      await run(cas, 0);
      return { applied, raised };
    } catch (e) {
      if (!isolatedByRow(e)) throw sanitized(what, e);
      await client.query('rollback to savepoint pgrekey_cas');
    }
    applied.clear();
    for (let i = 0; i < cas.length; i++) {
      await client.query('savepoint pgrekey_cas_row');
      try {
        await run([cas[i]!], i);
      } catch (e) {
        if (!isolatedByRow(e)) throw sanitized(what, e);
        await client.query('rollback to savepoint pgrekey_cas_row');
        raised.set(i, e);
      }
    }
    return { applied, raised };
  }

  /** Re-reads missed rows by key: found or not, and which rewritten columns still hold the old value (all of them: stillOld). Indexed by position in `rows`. */
  private async reread(client: pg.PoolClient, rel: StreamRelation, rows: CasRow[]): Promise<Map<number, { stillOld: boolean; columns: boolean[] }>> {
    const k = rel.keyColumns.length;
    const params: unknown[] = rel.keyColumns.map((_, i) => rows.map((r) => r.work.key[i]!));
    rel.columns.forEach((_, j) => params.push(rows.map((r) => r.olds[j])));
    const arrays = [...rel.keyColumns.map((_, i) => `$${i + 1}::text[]`), ...rel.columns.map((_, j) => `$${k + 1 + j}::text[]`)];
    const names = [...rel.keyColumns.map((_, i) => `k${i}`), ...rel.columns.map((_, j) => `o${j}`)];
    const same = rel.columns.map((c, j) => `(v.o${j} is null or t.${quoteIdent(c)}::text collate "C" is not distinct from v.o${j})`);
    const r = await client.query<{ ord: number; same: boolean[] }>(
      `select v.ord::int as ord, array[${same.join(', ')}] as same from unnest(${arrays.join(', ')}) with ordinality as v(${names.join(', ')}, ord) join only ${rel.quoted} t on ${keyMatchSql(rel)}`,
      params,
    );
    return new Map(r.rows.map((x) => [x.ord - 1, { stillOld: x.same.every(Boolean), columns: x.same }]));
  }

  /** Columns sent as unchanged TOAST: fetch their current value by key. */
  private async readBack(client: pg.PoolClient, rel: StreamRelation, rows: RowWork[]): Promise<void> {
    const need = rows.filter((r) => r.readBack.length > 0);
    if (need.length === 0) return;
    const cols = [...new Set(need.flatMap((r) => r.readBack))];
    const keyArrays = rel.keyColumns.map((_, i) => need.map((r) => r.key[i]!));
    const vs = rel.keyColumns.map((_, i) => `$${i + 1}::text[]`).join(', ');
    const kn = rel.keyColumns.map((_, i) => `k${i}`).join(', ');
    // Only the first 12 characters decide whether a value needs work; fetch the
    // full value only for those that do, so a 10 MB value at target costs nothing.
    const sql = `select v.ord::int as ord, ${cols.map((c) => `case when ${versionExpr(`t.${quoteIdent(c)}`)} <> $${rel.keyColumns.length + 1} then t.${quoteIdent(c)} end`).join(', ')}
      from unnest(${vs}) with ordinality as v(${kn}, ord) join only ${rel.quoted} t on ${keyMatchSql(rel)}`;
    const r = await client.query({ text: sql, values: [...keyArrays, this.ring.target], rowMode: 'array' });
    for (const row of r.rows as unknown[][]) {
      const work = need[(row[0] as number) - 1]!;
      cols.forEach((c, i) => {
        const v = row[i + 1];
        if (work.readBack.includes(c) && typeof v === 'string' && parseVersioned(v)) work.rewrite.set(c, v);
      });
    }
  }
}

/** A row's key as the state tables record it: key column name -> value as text. */
function rowKeyOf(rel: StreamRelation, w: RowWork): Record<string, string | null> {
  return Object.fromEntries(rel.keyColumns.map((k, i) => [k, w.key[i] ?? null]));
}

/** A database error (it has a SQLSTATE) loses its message, which may quote values; others (a dropped socket) stay as they are. */
function sanitized(what: string, e: unknown): unknown {
  return typeof (e as { code?: unknown })?.code === 'string' && /^[0-9A-Z]{5}$/.test((e as { code: string }).code) ? new SanitizedDbError(what, e) : e;
}

/**
 * Batched compare-and-swap by key. $1..$k key values as text (cast back to
 * the key types), then per configured column ($old, $new); a null new value
 * leaves that column alone. Returns, per row written, its position in the arrays (from 1) and whether the stored values are the new ones.
 */
export function casByKeySql(rel: StreamRelation): string {
  const k = rel.keyColumns.length;
  const cols = rel.columns;
  const arrays = [...rel.keyColumns.map((_, i) => `$${i + 1}::text[]`), ...cols.flatMap((_, i) => [`$${k + 1 + 2 * i}::text[]`, `$${k + 2 + 2 * i}::text[]`])];
  const names = [...rel.keyColumns.map((_, i) => `k${i}`), ...cols.flatMap((_, i) => [`o${i}`, `n${i}`])];
  const { sets, guards } = casColumnsSql(cols);
  // In RETURNING, t is the row as stored (after BEFORE triggers): did the new values stick?
  const sticks = cols.map((c, i) => `(v.n${i} is null or t.${quoteIdent(c)}::text collate "C" is not distinct from v.n${i})`).join(' and ');
  return `update only ${rel.quoted} as t set ${sets}
  from unnest(${arrays.join(', ')}) with ordinality as v(${names.join(', ')}, ord)
 where ${keyMatchSql(rel)} and ${guards}
returning v.ord::int as ord, ${sticks} as sticks`;
}
