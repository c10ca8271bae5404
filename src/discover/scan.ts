import type pg from 'pg';
import { versionLabel } from '../crypto/envelope.js';
import { relationSize } from '../db/catalog.js';
import { inTransaction } from '../db/connect.js';
import { quoteIdent, quoteQualified } from '../db/ident.js';
import type { CandidateColumn, CandidateRelation } from './candidates.js';

export interface ScanOptions {
  /** Read every row (ctid chunks) instead of a sample. */
  full: boolean;
  /** Sampled: at most this many rows of a relation. */
  rowsPerRelation: number;
  /** Sampled: about this many blocks of a relation (TABLESAMPLE SYSTEM); a relation this small is read whole. */
  sampleBlocks: number;
  /** Sampled: the bound of each relation's statement; past it the relation is "not checked". */
  statementTimeoutMs: number;
}

export interface RelationScan {
  blocks: number;
  rowsRead: number;
  /** Every row was read (--full, or a relation small enough to be read whole within the row bound). */
  exact: boolean;
  /** Per column: rows holding an envelope, by version label (for json: rows holding one, by the first one's version). */
  byColumn: Map<string, Record<string, number>>;
  /** Why it could not be read (permission, timeout, ...), or null. */
  error: string | null;
}

/** Blocks per statement of a --full scan (like verify's count). */
const FULL_CHUNK_BLOCKS = 16_384;

const PREFIX = `'^v[1-9][0-9]{0,8}:'`;
// The strict stored format (crypto/envelope.ts): v<N>: then canonical padded base64 of at least
// nonce + MAC (40 bytes: 56 characters). A prefix alone ("v1: see ticket") is not an envelope.
const STRICT = `'^v[1-9][0-9]{0,8}:(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$'`;
// Inside json: a JSON string that is an envelope.
const IN_JSON = `'"v([1-9][0-9]{0,8}):[A-Za-z0-9+/]{54,}={0,2}"'`;

/**
 * The version of the envelope a column value is, as an int, else NULL. The prefix is tested
 * on the first 12 characters (substr reads a TOASTed value by slice), the full format only
 * then. char(n) is read as text (trailing blanks dropped).
 */
export function envelopeVersionSql(c: CandidateColumn): string {
  const x = `t.${quoteIdent(c.name)}::text`;
  if (c.json) return `substring(${x} from ${IN_JSON})::int`;
  return `case when substr(${x}, 1, 12) ~ ${PREFIX} then case when char_length(${x}) >= strpos(${x}, ':') + 56 and ${x} ~ ${STRICT} then substring(substr(${x}, 1, 12) from '^v([1-9][0-9]{0,8}):')::int end end`;
}

function scanSql(rel: CandidateRelation, cols: readonly CandidateColumn[], from: string, where: string, limit: string): string {
  const codes = cols.map((c, i) => `${envelopeVersionSql(c)} as k${i}`).join(', ');
  const unpivot = cols.map((_, i) => `(${i}, s.k${i})`).join(', ');
  return `with s as materialized (select ${codes} from only ${quoteQualified(rel)} t ${from} ${where} ${limit})
    select -1 as col, null::int as version, count(*)::float8 as n from s
    union all
    select x.col, x.version, count(*)::float8 as n from s cross join lateral (values ${unpivot}) as x(col, version) where x.version is not null group by 1, 2`;
}

/** Scans one relation's readable candidate columns: sampled (bounded rows, blocks and time) or whole. */
export async function scanRelation(pool: pg.Pool, rel: CandidateRelation, cols: readonly CandidateColumn[], opts: ScanOptions): Promise<RelationScan> {
  const out: RelationScan = { blocks: 0, rowsRead: 0, exact: false, byColumn: new Map(cols.map((c) => [c.name, {}])), error: null };
  const add = (rows: { col: number; version: number | null; n: number }[]) => {
    for (const r of rows) {
      if (r.col < 0) out.rowsRead += r.n;
      else {
        const m = out.byColumn.get(cols[r.col]!.name)!;
        const v = versionLabel(r.version!);
        m[v] = (m[v] ?? 0) + r.n;
      }
    }
  };
  try {
    out.blocks = (await relationSize(pool, quoteQualified(rel))).blocks ?? 0;
    if (opts.full) {
      // ctid chunks need table-level SELECT; with column grants only, one statement.
      if (!rel.tableSelect) {
        add((await pool.query(scanSql(rel, cols, '', '', ''))).rows);
      } else {
        for (let start = 0; ; start += FULL_CHUNK_BLOCKS) {
          const total = (await relationSize(pool, quoteQualified(rel))).blocks ?? 0;
          const last = start + FULL_CHUNK_BLOCKS >= total;
          const where = `where t.ctid >= format('(%s,0)', $1::bigint)::tid` + (last ? '' : ` and t.ctid < format('(%s,0)', $2::bigint)::tid`);
          add((await pool.query(scanSql(rel, cols, '', where, ''), last ? [start] : [start, start + FULL_CHUNK_BLOCKS])).rows);
          if (last) break;
        }
      }
      out.exact = true;
      return out;
    }
    // Sampled: a small relation whole, else TABLESAMPLE SYSTEM (whole random blocks, so only
    // about sampleBlocks of them are read), always under a row bound and a statement timeout.
    const whole = out.blocks <= opts.sampleBlocks;
    const pct = whole ? 100 : Math.min(100, (100 * opts.sampleBlocks) / Math.max(out.blocks, 1));
    const sql = whole ? scanSql(rel, cols, '', '', 'limit $1') : scanSql(rel, cols, 'tablesample system ($2) repeatable ($3)', '', 'limit $1');
    const params = whole ? [opts.rowsPerRelation] : [opts.rowsPerRelation, pct, Math.floor(Math.random() * 2 ** 31)];
    const rows = await inTransaction(pool, 'begin isolation level read committed read only', async (client) => {
      await client.query(`select set_config('statement_timeout', $1, true)`, [`${opts.statementTimeoutMs}ms`]);
      return (await client.query<{ col: number; version: number | null; n: number }>(sql, params)).rows;
    });
    add(rows);
    // Read whole and the row bound not reached: every row was seen.
    out.exact = whole && out.rowsRead < opts.rowsPerRelation;
    return out;
  } catch (e) {
    const code = (e as { code?: string }).code;
    out.error =
      code === '57014'
        ? `not checked: the sampled read took longer than ${opts.statementTimeoutMs / 1000}s (statement_timeout); run \`pg-rekey discover --full\``
        : `not checked: ${(e as Error).message}${code ? ` [${code}]` : ''}`;
    return out;
  }
}
