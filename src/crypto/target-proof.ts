import type pg from 'pg';
import type { Logger } from '../logger.js';
import type { TableInfo } from '../db/catalog.js';
import { displayName, quoteIdent, quoteQualified } from '../db/ident.js';
import { ConfigError } from '../errors.js';
import { versionLabel } from './envelope.js';
import { keyVarName, type KeyRing } from './key-ring.js';
import { decryptValue } from './rewrite.js';

/**
 * Before the first rewrite: does pg-rekey's target key open the target-version
 * values the applications already stored? A target key that is not the
 * applications' (a slip between two secret stores) would turn every rewrite
 * into a value no application can read, and verify would still count it "at
 * target". So: read a bounded sample of target-version values (the first and
 * the last blocks of each relation: old rows and the newest writes, by TID
 * range), then, until enough are found, the middle (a leaf up to 128 MB whole, a larger one
 * in ranges spread over it, within a bounded number of blocks) and decrypt them. If values were found and none
 * opens, stop before writing anything (exit 2). Some opening and some not is
 * a misconfigured application instance: warned, not fatal (verify --decrypt
 * is the check for that).
 */
export interface TargetProof {
  sampled: number;
  opened: number;
  /** Per "table.column": values that did not open. */
  failedBy: Record<string, number>;
  /** Blocks read looking for target values (over every leaf and column), and the blocks there were. */
  blocksRead: number;
  blocksTotal: number;
}

/** Target values wanted per column of each leaf. */
const SAMPLE_PER_COLUMN = 32;
/** The first and the last blocks: old rows and the newest writes. */
const EDGE_BLOCKS = 256;
/**
 * Past the edges, blocks read per column of each leaf until SAMPLE_PER_COLUMN values are found:
 * a leaf this size (128 MB at 8 kB blocks) is read whole; a larger one in WINDOWS ranges spread
 * evenly over its middle, so that target values anywhere in a table are found.
 */
const MIDDLE_BUDGET_BLOCKS = 16_384;
const WINDOWS = 32;

/** The block ranges [start, end) to read, in order: the edges first, then the middle (whole, or spread windows). */
export function proofRanges(blocks: number, budget = MIDDLE_BUDGET_BLOCKS, windows = WINDOWS, edge = EDGE_BLOCKS): [number, number][] {
  if (blocks <= 2 * edge) return [[0, blocks]];
  const out: [number, number][] = [
    [0, edge],
    [blocks - edge, blocks],
  ];
  const lo = edge;
  const hi = blocks - edge;
  if (hi - lo <= budget) {
    out.push([lo, hi]);
    return out;
  }
  const width = Math.max(1, Math.floor(budget / windows));
  const step = (hi - lo - width) / (windows - 1);
  for (let i = 0; i < windows; i++) {
    const start = lo + Math.floor(i * step);
    out.push([start, Math.min(hi, start + width)]);
  }
  return out;
}

export async function sampleTargetValues(db: pg.Pool, tables: readonly TableInfo[], ring: KeyRing): Promise<TargetProof> {
  const proof: TargetProof = { sampled: 0, opened: 0, failedBy: {}, blocksRead: 0, blocksTotal: 0 };
  const prefix = `${versionLabel(ring.target)}:`;
  for (const t of tables) {
    for (const leaf of t.leaves) {
      const rel = quoteQualified(leaf);
      const size = await db.query<{ blocks: string | null }>(`select (pg_relation_size(to_regclass($1)) / current_setting('block_size')::bigint)::text as blocks`, [rel]);
      const blocks = Number(size.rows[0]?.blocks ?? 0);
      for (const column of t.config.columns) {
        const c = quoteIdent(column);
        proof.blocksTotal += blocks;
        let found = 0;
        // TID range scans (PostgreSQL 14+), the last one open-ended (the relation may have grown): bounded work on any table size.
        const ranges = proofRanges(blocks);
        for (let i = 0; i < ranges.length && found < SAMPLE_PER_COLUMN; i++) {
          const [start, end] = ranges[i]!;
          const last = end >= blocks;
          const r = last
            ? await db.query<{ v: string }>(
                `select t.${c} as v from only ${rel} t where t.ctid >= format('(%s,0)', $2::bigint)::tid and starts_with(t.${c}::text collate "C", $1) limit $3`,
                [prefix, start, SAMPLE_PER_COLUMN - found],
              )
            : await db.query<{ v: string }>(
                `select t.${c} as v from only ${rel} t where t.ctid >= format('(%s,0)', $2::bigint)::tid and t.ctid < format('(%s,0)', $3::bigint)::tid and starts_with(t.${c}::text collate "C", $1) limit $4`,
                [prefix, start, end, SAMPLE_PER_COLUMN - found],
              );
          proof.blocksRead += end - start;
          for (const { v } of r.rows) {
            found++;
            proof.sampled++;
            if (decryptValue(v, ring)) proof.opened++;
            else {
              const k = `${t.display}.${column} (${displayName(leaf)})`;
              proof.failedBy[k] = (proof.failedBy[k] ?? 0) + 1;
            }
          }
        }
      }
    }
  }
  return proof;
}

/** Throws ConfigError (exit 2) when target-version values exist and none opens with the target key; warns when only some fail. */
export async function proveTargetKey(db: pg.Pool, tables: readonly TableInfo[], ring: KeyRing, log: Logger): Promise<TargetProof> {
  const p = await sampleTargetValues(db, tables, ring);
  const label = versionLabel(ring.target);
  const l = log.child({ component: 'target-key' });
  const read = { blocksRead: p.blocksRead, blocksTotal: p.blocksTotal };
  const where = p.blocksRead >= p.blocksTotal ? `in the ${p.blocksTotal} block(s) of the configured columns (all read)` : `in the ${p.blocksRead} of ${p.blocksTotal} block(s) read (the edges of each relation and ranges spread over its middle)`;
  if (p.sampled === 0) {
    l.info({ target: label, ...read }, `no ${label} value found ${where}: the target key cannot be checked against the applications' writes; make sure ${keyVarName(ring.target)} is the applications' key`);
  } else if (p.opened === 0) {
    throw new ConfigError(
      `your ${label} key does not decrypt the ${label} values already stored: is ${keyVarName(ring.target)} the application's? (${p.sampled} sampled ${where}, none opened)`,
      `compare ${keyVarName(ring.target)} with the key the applications use for ${label}; nothing was written`,
      Object.entries(p.failedBy).map(([where, n]) => `${where}: ${n} ${label} value(s) did not open`),
    );
  } else if (p.opened < p.sampled) {
    l.warn({ target: label, sampled: p.sampled, opened: p.opened, failedBy: p.failedBy, ...read }, `some stored ${label} values do not open with the target key: an application instance may write with another ${label} key; run \`pg-rekey verify\` and check the applications' keys`);
  } else {
    l.info({ target: label, sampled: p.sampled, ...read }, `the target key opens the ${label} values already stored (${p.sampled} sampled ${where})`);
  }
  return p;
}
