/**
 * Transaction ids and snapshots, as pure logic (no database).
 *
 * PostgreSQL facts this relies on:
 * - `pg_current_snapshot()::text` is `xmin:xmax:xip1,xip2,...` with 64-bit
 *   transaction ids (xid8, epoch in the high 32 bits).
 * - A transaction id x is in progress for a snapshot iff x >= xmax, or x is
 *   in xip. xmax is latestCompletedXid + 1, so a running transaction whose
 *   xid is above every completed one is NOT listed in xip: it is only
 *   excluded by `x >= xmax`.
 * - A commit is flushed to WAL (and so decoded and sent by logical walsenders)
 *   before the committing backend leaves the proc array; with synchronous
 *   replication it first waits for the standby. Until then its changes are
 *   invisible to every other snapshot.
 * - pgoutput's BEGIN carries the 32-bit xid; pg_stat_activity.backend_xid and
 *   pg_prepared_xacts.transaction are 32-bit `xid` too.
 */
export interface Snapshot {
  xmin: bigint;
  xmax: bigint;
  xip: ReadonlySet<bigint>;
}

export function parseSnapshot(text: string): Snapshot {
  const m = /^(\d+):(\d+):([\d,]*)$/.exec(text.trim());
  if (!m) throw new Error(`not a pg_snapshot: ${JSON.stringify(text)}`);
  const xip = new Set(m[3] ? m[3].split(',').map((x) => BigInt(x)) : []);
  return { xmin: BigInt(m[1]!), xmax: BigInt(m[2]!), xip };
}

const EPOCH = 1n << 32n;
const HALF = 1n << 31n;

/**
 * The 64-bit id of a 32-bit xid, given `reference`, an xid8 of the same era
 * (a current snapshot's xmax): the value with these low 32 bits nearest to it.
 * Live xids are always within 2^31 of each other (wraparound protection), and
 * an xid still in progress may lie above xmax, so "not above the reference"
 * would be wrong.
 */
export function fullXid(xid32: number | bigint, reference: bigint): bigint {
  const low = BigInt(xid32) & (EPOCH - 1n);
  let full = (reference & ~(EPOCH - 1n)) | low;
  if (full - reference > HALF) full -= EPOCH;
  else if (reference - full > HALF) full += EPOCH;
  return full;
}

/** True when the (64-bit) transaction id is no longer in progress for this snapshot: committed or aborted. */
export function hasEnded(xid: bigint, s: Snapshot): boolean {
  if (xid < s.xmin) return true;
  if (xid >= s.xmax) return false;
  return !s.xip.has(xid);
}

/** The 32-bit xids (as decoded) whose transactions this snapshot still sees as in progress. */
export function stillInProgress(xids: Iterable<number>, s: Snapshot): number[] {
  const out: number[] = [];
  for (const x of new Set(xids)) if (!hasEnded(fullXid(x, s.xmax), s)) out.push(x);
  return out;
}

/** The 32-bit form of a 64-bit xid (to match pg_stat_activity.backend_xid and pg_prepared_xacts.transaction). */
export function xid32(xid: bigint): number {
  return Number(xid & (EPOCH - 1n));
}
