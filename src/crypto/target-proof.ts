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
 * range, never a full scan) and decrypt them. If values were found and none
 * opens, stop before writing anything (exit 2). Some opening and some not is
 * a misconfigured application instance: warned, not fatal (verify --decrypt
 * is the check for that).
 */
export interface TargetProof {
  sampled: number;
  opened: number;
  /** Per "table.column": values that did not open. */
  failedBy: Record<string, number>;
}

const SAMPLE_PER_COLUMN = 32;
const SAMPLE_BLOCKS = 256;

export async function sampleTargetValues(db: pg.Pool, tables: readonly TableInfo[], ring: KeyRing): Promise<TargetProof> {
  const proof: TargetProof = { sampled: 0, opened: 0, failedBy: {} };
  const prefix = `${versionLabel(ring.target)}:`;
  for (const t of tables) {
    for (const leaf of t.leaves) {
      const rel = quoteQualified(leaf);
      const size = await db.query<{ blocks: string | null }>(`select (pg_relation_size(to_regclass($1)) / current_setting('block_size')::bigint)::text as blocks`, [rel]);
      const blocks = Number(size.rows[0]?.blocks ?? 0);
      for (const column of t.config.columns) {
        const c = quoteIdent(column);
        // Head and tail block ranges (TID range scans, PostgreSQL 14+): bounded work on any table size.
        const r = await db.query<{ v: string }>(
          `(select t.${c} as v from only ${rel} t where t.ctid < format('(%s,0)', $2::bigint)::tid and starts_with(t.${c}::text collate "C", $1) limit $3)
           union all
           (select t.${c} as v from only ${rel} t where t.ctid >= format('(%s,0)', greatest($4::bigint - $2::bigint, $2::bigint))::tid and starts_with(t.${c}::text collate "C", $1) limit $3)`,
          [prefix, SAMPLE_BLOCKS, SAMPLE_PER_COLUMN, blocks],
        );
        for (const { v } of r.rows) {
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
  return proof;
}

/** Throws ConfigError (exit 2) when target-version values exist and none opens with the target key; warns when only some fail. */
export async function proveTargetKey(db: pg.Pool, tables: readonly TableInfo[], ring: KeyRing, log: Logger): Promise<TargetProof> {
  const p = await sampleTargetValues(db, tables, ring);
  const label = versionLabel(ring.target);
  const l = log.child({ component: 'target-key' });
  if (p.sampled === 0) {
    l.info({ target: label }, `no ${label} value is stored yet in the configured columns: the target key cannot be checked against the applications' writes; make sure ${keyVarName(ring.target)} is the applications' key`);
  } else if (p.opened === 0) {
    throw new ConfigError(
      `your ${label} key does not decrypt the ${label} values already stored: is ${keyVarName(ring.target)} the application's? (${p.sampled} sampled, none opened)`,
      `compare ${keyVarName(ring.target)} with the key the applications use for ${label}; nothing was written`,
      Object.entries(p.failedBy).map(([where, n]) => `${where}: ${n} ${label} value(s) did not open`),
    );
  } else if (p.opened < p.sampled) {
    l.warn({ target: label, sampled: p.sampled, opened: p.opened, failedBy: p.failedBy }, `some stored ${label} values do not open with the target key: an application instance may write with another ${label} key; run \`pg-rekey verify\` and check the applications' keys`);
  } else {
    l.info({ target: label, sampled: p.sampled }, `the target key opens the ${label} values already stored`);
  }
  return p;
}
