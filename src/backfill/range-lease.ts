import type pg from 'pg';
import { inTransaction } from '../db/connect.js';
import type { ChunkCounts } from '../state/segments.js';

/**
 * Terminology (sweep.workers > 1, sql/012_sweep_range.sql):
 * - range: blocks [first, end) of one relation in one sweep generation; the last one is
 *   open-ended (end null), since the table grows while it is swept.
 * - lease: a worker's claim on a range, held until lease_until on the database's clock and
 *   renewed by every checkpoint and by a timer while the worker is alive.
 * - owner: the worker's token. Every write to a range is fenced on (owner, lease not expired):
 *   a worker whose lease expired (paused, partitioned, killed and replaced) can neither move its
 *   checkpoint nor mark it done; its next checkpoint fails and its chunk rolls back.
 *
 * A crashed worker's range keeps its next_block (committed with its last chunk) and is leased
 * again once its lease expires: at most one chunk is swept twice, none is skipped.
 *
 * Where the leader's fencing term (issue 13, `pgrekey.term`) plugs in: every statement below
 * that writes pgrekey.sweep_range or pgrekey.sweep_segment runs in a transaction of the worker's
 * own connection; a term check belongs in the same statements (or the trigger on those tables),
 * with the worker's connection carrying the term it joined under.
 */

export interface LeasedRange {
  relation: string;
  generation: number;
  first: number;
  /** Exclusive; null = to the end of the relation. */
  end: number | null;
  /** Resume here (first, or where a worker before this one checkpointed). */
  next: number;
  /** How many times it has been leased, this lease included. */
  leases: number;
}

/** The fenced checkpoint found the lease gone: the chunk's transaction is rolled back. */
export class LeaseLost extends Error {
  constructor(r: Pick<LeasedRange, 'relation' | 'first'>, owner: string) {
    super(`lease on ${r.relation} blocks from ${r.first} lost by ${owner} (expired and taken again, or the generation restarted): its last chunk was rolled back`);
  }
}

const LEASE = `now() + $LEASE::float8 * interval '1 millisecond'`;
const lease = (sql: string, param: number) => sql.replaceAll('$LEASE', `$${param}`);

/** Blocks per range: several ranges per worker, so a fast worker takes over from a slow one (pure). */
export function rangeBlocks(totalBlocks: number, workers: number): number {
  return Math.max(16, Math.ceil(totalBlocks / Math.max(1, workers * 8)));
}

/** Range bounds from `from` over `totalBlocks`; the last open-ended (pure). */
export function splitRanges(from: number, totalBlocks: number, size: number): { first: number; end: number | null }[] {
  const out: { first: number; end: number | null }[] = [];
  let first = from;
  while (first + size < totalBlocks) {
    out.push({ first, end: first + size });
    first += size;
  }
  out.push({ first, end: null });
  return out;
}

/**
 * Plans the ranges of a relation's current generation unless they exist, under the segment
 * row's lock (two processes never plan two different splits). Returns the generation.
 */
export async function planRanges(pool: pg.Pool, relation: string, blocks: (c: pg.ClientBase) => Promise<number>, workers: number): Promise<number> {
  return inTransaction(pool, 'begin', async (c) => {
    const seg = await c.query<{ generation: number; state: string }>(
      `select generation, state from pgrekey.sweep_segment where relation = $1 and segment_start = 0 for update`,
      [relation],
    );
    const row = seg.rows[0];
    if (!row) throw new Error(`no sweep segment for ${relation}: the sweep creates it before planning ranges`);
    if (row.state === 'done') return row.generation;
    const has = await c.query(`select 1 from pgrekey.sweep_range where relation = $1 and generation = $2 limit 1`, [relation, row.generation]);
    if (has.rowCount) return row.generation;
    // Ranges of older generations mean nothing any more (a late checkpoint on one fails its fence).
    await c.query(`delete from pgrekey.sweep_range where relation = $1 and generation < $2`, [relation, row.generation]);
    const total = await blocks(c);
    // From block 0 even when a single-worker sweep of this generation had got further: that part
    // was swept under a file node no range records, so the completion check could not vouch for it.
    const ranges = splitRanges(0, total, rangeBlocks(total, workers));
    await c.query(
      `insert into pgrekey.sweep_range (relation, generation, first_block, end_block, next_block)
       select $1, $2, f, e, f from unnest($3::bigint[], $4::bigint[]) as r(f, e)`,
      [relation, row.generation, ranges.map((r) => r.first), ranges.map((r) => r.end)],
    );
    await c.query(`update pgrekey.sweep_segment set state = 'running', started_at = coalesce(started_at, now()), updated_at = now() where relation = $1 and segment_start = 0`, [relation]);
    return row.generation;
  });
}

/** The relation's current generation and whether its segment is done. */
export async function segmentGeneration(db: pg.Pool | pg.ClientBase, relation: string): Promise<{ generation: number; done: boolean } | null> {
  const r = await db.query<{ generation: number; state: string }>(`select generation, state from pgrekey.sweep_segment where relation = $1 and segment_start = 0`, [relation]);
  return r.rows[0] ? { generation: r.rows[0].generation, done: r.rows[0].state === 'done' } : null;
}

/** Leases the first free range (pending, never leased or its lease expired) of the generation; null if none is free now. */
export async function claimRange(db: pg.Pool | pg.ClientBase, relation: string, generation: number, owner: string, leaseMs: number): Promise<LeasedRange | null> {
  const r = await db.query<{ first: string; end: string | null; next: string; leases: number }>(
    lease(
      `update pgrekey.sweep_range r
          set owner = $3, lease_until = ${LEASE}, leases = r.leases + 1
         from (select relation, generation, first_block from pgrekey.sweep_range
                where relation = $1 and generation = $2 and state = 'pending' and (lease_until is null or lease_until < clock_timestamp())
                order by first_block limit 1 for update skip locked) free
        where (r.relation, r.generation, r.first_block) = (free.relation, free.generation, free.first_block)
    returning r.first_block::text as first, r.end_block::text as end, r.next_block::text as next, r.leases`,
      4,
    ),
    [relation, generation, owner, leaseMs],
  );
  const row = r.rows[0];
  return row ? { relation, generation, first: Number(row.first), end: row.end === null ? null : Number(row.end), next: Number(row.next), leases: row.leases } : null;
}

/** What is left of a generation: ranges not done, and of those, leased by a live worker now. */
export async function rangesLeft(db: pg.Pool | pg.ClientBase, relation: string, generation: number): Promise<{ pending: number; leased: number; total: number }> {
  const r = await db.query<{ pending: number; leased: number; total: number }>(
    `select count(*) filter (where state = 'pending')::int as pending,
            count(*) filter (where state = 'pending' and lease_until >= clock_timestamp())::int as leased,
            count(*)::int as total
       from pgrekey.sweep_range where relation = $1 and generation = $2`,
    [relation, generation],
  );
  return r.rows[0]!;
}

/**
 * The fenced checkpoint of a chunk, in the chunk's own transaction: moves the range's next block,
 * renews the lease, and marks the range done after its last chunk. Throws LeaseLost (rolling the
 * chunk back) when this owner no longer holds an unexpired lease on the range.
 */
export async function advanceRange(
  c: pg.Pool | pg.ClientBase,
  r: LeasedRange,
  owner: string,
  leaseMs: number,
  next: number,
  done: boolean,
  node: string | null,
  counts: ChunkCounts,
): Promise<string | null> {
  const q = await c.query<{ lsn: string }>(
    lease(
      `update pgrekey.sweep_range
          set next_block = $5, lease_until = ${LEASE},
              -- A range swept partly under another file node (a worker before this one, then a table
              -- rewrite) is poisoned: null never matches, so the relation's generation starts over.
              relfilenode = case when next_block = first_block or relfilenode = $7::oid then $7::oid end,
              rows_rewritten = rows_rewritten + $8,
              state = case when $6 then 'done' else 'pending' end,
              done_at = case when $6 then now() end, done_by = case when $6 then $4 end
        where relation = $1 and generation = $2 and first_block = $3 and owner = $4 and state = 'pending' and lease_until > clock_timestamp()
    returning pg_current_wal_insert_lsn()::text as lsn`,
      9,
    ),
    [r.relation, r.generation, r.first, owner, next, done, node, counts.rewritten, leaseMs],
  );
  if (!q.rowCount) throw new LeaseLost(r, owner);
  return q.rows[0]!.lsn;
}

/** Renews a lease between checkpoints (a throttle pause, a long chunk); false when it is lost. */
export async function renewLease(db: pg.Pool | pg.ClientBase, r: LeasedRange, owner: string, leaseMs: number): Promise<boolean> {
  const q = await db.query(
    lease(`update pgrekey.sweep_range set lease_until = ${LEASE} where relation = $1 and generation = $2 and first_block = $3 and owner = $4 and state = 'pending' and lease_until > clock_timestamp()`, 5),
    [r.relation, r.generation, r.first, owner, leaseMs],
  );
  return (q.rowCount ?? 0) > 0;
}

/** Gives a range back at once (a clean stop): its checkpoint stays, the next worker resumes there. */
export async function releaseRange(db: pg.Pool | pg.ClientBase, r: LeasedRange, owner: string): Promise<void> {
  await db.query(`update pgrekey.sweep_range set lease_until = null, owner = null where relation = $1 and generation = $2 and first_block = $3 and owner = $4 and state = 'pending'`, [
    r.relation,
    r.generation,
    r.first,
    owner,
  ]);
}

/**
 * Wrong key: ranges of the current generation holding blocks from `block` on go back to before
 * it, so the values quarantined there are read again once the key is fixed.
 */
export async function rewindRanges(db: pg.Pool | pg.ClientBase, relation: string, block: number): Promise<void> {
  await db.query(
    `update pgrekey.sweep_range r
        set next_block = greatest(r.first_block, least(r.next_block, $2)), state = 'pending', done_at = null, done_by = null
       from pgrekey.sweep_segment s
      where s.relation = $1 and s.segment_start = 0 and r.relation = $1 and r.generation = s.generation
        and (r.end_block is null or r.end_block > $2) and r.next_block > $2`,
    [relation, block],
  );
}

export type Completion = 'done' | 'not-yet' | 'rewritten';

/**
 * Marks the relation's segment done when, and only when, every range of its current generation
 * is done and was swept under the relation's current file node (a table rewrite between two
 * ranges moves rows across them). Under an ACCESS SHARE lock, so no rewrite lands meanwhile.
 * 'rewritten': ranges were swept under another file node; the caller restarts the generation.
 */
export async function completeRelation(pool: pg.Pool, relation: string, quoted: string, generation: number): Promise<Completion> {
  return inTransaction(pool, 'begin', async (c) => {
    await c.query(`lock table only ${quoted} in access share mode`);
    const r = await c.query<{ left: number; stale: number; total: number; blocks: string; rewritten: string; node: string | null }>(
      `select count(*) filter (where state <> 'done')::int as left,
              count(*) filter (where state = 'done' and relfilenode is distinct from pg_relation_filenode(to_regclass($3)))::int as stale,
              count(*)::int as total,
              (pg_relation_size(to_regclass($3)) / current_setting('block_size')::bigint)::text as blocks,
              coalesce(sum(rows_rewritten), 0)::text as rewritten
         from pgrekey.sweep_range where relation = $1 and generation = $2`,
      [relation, generation, quoted],
    );
    const s = r.rows[0]!;
    if (s.total === 0 || s.left > 0) return 'not-yet';
    if (s.stale > 0) return 'rewritten';
    const u = await c.query(
      `update pgrekey.sweep_segment
          set state = 'done', next_block = $3, total_blocks = $3, finished_at = now(), updated_at = now(),
              rows_rewritten = rows_rewritten + $4, relfilenode = pg_relation_filenode(to_regclass($5))
        where relation = $1 and segment_start = 0 and generation = $2 and state <> 'done'`,
      [relation, generation, Number(s.blocks), Number(s.rewritten), quoted],
    );
    return u.rowCount ? 'done' : 'not-yet';
  });
}

/**
 * The workers sweeping now, of every process: unexpired leases on ranges not done. The rate
 * budget's divisor (a worker that died counts until its lease expires: its share goes unused).
 */
export async function liveWorkers(db: pg.Pool | pg.ClientBase): Promise<number> {
  const r = await db.query<{ n: number }>(`select count(distinct owner)::int as n from pgrekey.sweep_range where state = 'pending' and lease_until > clock_timestamp()`);
  return r.rows[0]?.n ?? 0;
}
