import type pg from 'pg';
import { displayName } from '../db/ident.js';

/** A sweep segment row (see sql/001_state.sql). */
export interface Segment {
  tableName: string;
  relation: string;
  segmentStart: number;
  segmentEnd: number | null;
  nextBlock: number;
  totalBlocks: number | null;
  state: 'pending' | 'running' | 'done';
  generation: number;
  chunks: number;
  rowsScanned: number;
  rowsRewritten: number;
  rowsConflict: number;
  rowsQuarantined: number;
  startedAt: Date | null;
  updatedAt: Date;
  finishedAt: Date | null;
  /** Current chunk size (blocks) and recent rewrite rate; null before the first chunk. */
  chunkBlocks: number | null;
  rowsPerSec: number | null;
  lockTimeouts: number;
  /** pg_relation_filenode when the checkpoint was last written (null before). */
  relfilenode: string | null;
  /** The relation's size when this pass started (block 0); null before it starts. Progress counts against it. */
  startBlocks: number | null;
}

const COLUMNS = `table_name as "tableName", relation, segment_start::float8 as "segmentStart", segment_end::float8 as "segmentEnd",
  next_block::float8 as "nextBlock", total_blocks::float8 as "totalBlocks", state, generation, chunks::float8 as chunks,
  rows_scanned::float8 as "rowsScanned", rows_rewritten::float8 as "rowsRewritten", rows_conflict::float8 as "rowsConflict",
  rows_quarantined::float8 as "rowsQuarantined", started_at as "startedAt", updated_at as "updatedAt", finished_at as "finishedAt",
  chunk_blocks as "chunkBlocks", rows_per_sec as "rowsPerSec", lock_timeouts::float8 as "lockTimeouts", relfilenode::text as relfilenode,
  start_blocks::float8 as "startBlocks"`;

export async function listSegments(db: pg.Pool | pg.ClientBase): Promise<Segment[]> {
  return (await db.query<Segment>(`select ${COLUMNS} from pgrekey.sweep_segment order by table_name, relation, segment_start`)).rows;
}

/** Returns the segment of a relation, creating it at block 0 if new. */
export async function ensureSegment(db: pg.Pool | pg.ClientBase, tableName: string, relation: string): Promise<Segment> {
  await db.query(
    `insert into pgrekey.sweep_segment (table_name, relation) values ($1, $2) on conflict (relation, segment_start) do nothing`,
    [tableName, relation],
  );
  return (await db.query<Segment>(`select ${COLUMNS} from pgrekey.sweep_segment where relation = $1 and segment_start = 0`, [relation])).rows[0]!;
}

/** Starts a relation over from block 0 in a new generation (--restart, slot recreated). */
export async function restartSegments(db: pg.Pool | pg.ClientBase, relations?: string[]): Promise<void> {
  await db.query(
    `update pgrekey.sweep_segment
        set next_block = segment_start, state = 'pending', generation = generation + 1, chunks = 0,
            rows_scanned = 0, rows_rewritten = 0, rows_conflict = 0, rows_quarantined = 0,
            started_at = null, finished_at = null, start_blocks = null, updated_at = now()
      where $1::text[] is null or relation = any($1::text[])`,
    [relations ?? null],
  );
}

/** Records the relation's current file node with its checkpoint. */
export async function recordFilenode(db: pg.Pool | pg.ClientBase, relation: string, filenode: string | null): Promise<void> {
  await db.query(`update pgrekey.sweep_segment set relfilenode = $2::oid where relation = $1 and segment_start = 0`, [relation, filenode]);
}

/** Records the relation's size as the pass starts (block 0): progress counts against it, not against the growing size. */
export async function recordStartBlocks(db: pg.Pool | pg.ClientBase, relation: string, blocks: number): Promise<void> {
  await db.query(`update pgrekey.sweep_segment set start_blocks = $2 where relation = $1 and segment_start = 0`, [relation, blocks]);
}

/** Moves a relation's checkpoint back to `block` (if it is past it), to be swept again from there. */
export async function rewindSegment(db: pg.Pool | pg.ClientBase, relation: string, block: number): Promise<void> {
  await db.query(
    `update pgrekey.sweep_segment
        set next_block = least(next_block, $2), state = 'running', finished_at = null, updated_at = now()
      where relation = $1 and segment_start = 0 and next_block > $2`,
    [relation, block],
  );
}

export interface ChunkCounts {
  scanned: number;
  rewritten: number;
  conflicts: number;
  quarantined: number;
}

/** Checkpoint after a chunk, in the chunk's own transaction. */
export async function advanceSegment(
  db: pg.ClientBase,
  relation: string,
  nextBlock: number,
  totalBlocks: number,
  done: boolean,
  c: ChunkCounts,
  pace: { chunkBlocks: number; rowsPerSec: number } | null = null,
): Promise<string | null> {
  // The WAL insert position after the chunk's writes (the sweep's WAL per chunk, for sweep.max_wal_rate).
  const r = await db.query<{ lsn: string }>(
    `update pgrekey.sweep_segment
        set next_block = $2, total_blocks = $3, state = case when $4 then 'done' else 'running' end,
            chunks = chunks + 1, rows_scanned = rows_scanned + $5, rows_rewritten = rows_rewritten + $6,
            rows_conflict = rows_conflict + $7, rows_quarantined = rows_quarantined + $8,
            started_at = coalesce(started_at, now()), updated_at = now(),
            finished_at = case when $4 then now() end,
            chunk_blocks = coalesce($9, chunk_blocks), rows_per_sec = coalesce($10, rows_per_sec)
      where relation = $1 and segment_start = 0
  returning pg_current_wal_insert_lsn()::text as lsn`,
    [relation, nextBlock, totalBlocks, done, c.scanned, c.rewritten, c.conflicts, c.quarantined, pace?.chunkBlocks ?? null, pace?.rowsPerSec ?? null],
  );
  return r.rows[0]?.lsn ?? null;
}

/**
 * Remembers every leaf of the configured tables, by oid (the row's relid, sql/006), before
 * anything relies on it: a leaf with a segment row is listed "outside the configured tables"
 * once it leaves (verify/outside.ts), and one without is forgotten. A partition attached while
 * nothing ran and detached before the sweep reached it would otherwise hold old-version values
 * that nothing counts. New rows start at block 0 (pending); existing ones are left as they are.
 */
export async function rememberLeaves(db: pg.Pool | pg.ClientBase, tables: readonly { display: string; leaves: readonly { schema: string; name: string }[] }[]): Promise<void> {
  const rows = tables.flatMap((t) => t.leaves.map((l) => [t.display, displayName(l)] as const));
  if (rows.length === 0) return;
  await db.query(
    `insert into pgrekey.sweep_segment (table_name, relation)
     select t, r from unnest($1::text[], $2::text[]) as x(t, r)
     on conflict (relation, segment_start) do nothing`,
    [rows.map((r) => r[0]), rows.map((r) => r[1])],
  );
}
