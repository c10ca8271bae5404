import type pg from 'pg';
import type { Logger } from '../logger.js';
import { versionLabel } from '../crypto/envelope.js';
import type { TableInfo } from '../db/catalog.js';
import { displayName, quoteQualified } from '../db/ident.js';
import { listCandidates } from './candidates.js';
import { scanRelation, type ScanOptions } from './scan.js';
import { countOld, renderSnippet, unconfiguredOld, type DiscoveredColumn, type DiscoverResult, type MatviewFinding, type NotChecked } from './findings.js';

/**
 * `pg-rekey discover`: every text-like and json column of every relation that stores rows,
 * in every schema but pg-rekey's own and the system ones, scanned for `v<N>:` envelopes.
 * Sampled by default (bounded rows, blocks and time per relation), exact with `full`. What
 * this role cannot read is reported as not checked, never left out.
 */
export interface DiscoverOptions extends ScanOptions {
  target: number;
  log: Logger;
  /** Do not scan the configured columns (verify counts them exactly itself). */
  skipConfigured?: boolean;
  /** Relations (display names) reported elsewhere (verify's departed leaves): not scanned. */
  exclude?: ReadonlySet<string>;
}

export const DEFAULT_SCAN: Omit<ScanOptions, 'full'> = { rowsPerRelation: 5_000, sampleBlocks: 64, statementTimeoutMs: 10_000 };

export async function discover(pool: pg.Pool, tables: readonly TableInfo[], opts: DiscoverOptions): Promise<DiscoverResult> {
  const startedAt = new Date().toISOString();
  const log = opts.log.child({ component: 'discover' });
  const configured = await configuredColumns(pool, tables);
  const candidates = (await listCandidates(pool)).filter((r) => !opts.exclude?.has(r.display));
  const columns: DiscoveredColumn[] = [];
  const notChecked: NotChecked[] = [];
  let rowsRead = 0;
  let scanned = 0;
  for (const rel of candidates) {
    const owner = configured.get(rel.oid);
    const isConfigured = (c: string) => (owner?.columns.has(c) ? owner.table : null);
    const wanted = rel.columns.filter((c) => !(opts.skipConfigured && isConfigured(c.name)));
    if (wanted.length === 0) continue;
    if (rel.unpopulated) continue; // WITH NO DATA: holds nothing until REFRESH (listed below if it reads a configured column)
    if (rel.unreadable) {
      notChecked.push({ relation: rel.display, column: null, reason: rel.unreadable });
      continue;
    }
    for (const c of wanted) if (c.unreadable) notChecked.push({ relation: rel.display, column: c.name, reason: c.unreadable });
    const readable = wanted.filter((c) => !c.unreadable);
    if (readable.length === 0) continue;
    const scan = await scanRelation(pool, rel, readable, opts);
    if (scan.error) {
      notChecked.push({ relation: rel.display, column: null, reason: scan.error });
      log.warn({ relation: rel.display, reason: scan.error }, 'relation not checked');
      continue;
    }
    scanned++;
    rowsRead += scan.rowsRead;
    for (const c of readable) {
      const byVersion = scan.byColumn.get(c.name) ?? {};
      const conf = isConfigured(c.name);
      if (conf === null && Object.keys(byVersion).length === 0) continue;
      columns.push({
        relation: rel.display,
        kind: rel.kind,
        configName: rel.configName,
        column: c.name,
        type: c.type,
        json: c.json,
        rewritable: c.rewritable,
        configured: conf,
        byVersion,
        oldValues: countOld(byVersion, opts.target),
        rowsRead: scan.rowsRead,
        exact: scan.exact,
      });
    }
  }
  const matviews = await matviewsReadingConfigured(pool, tables);
  const old = unconfiguredOld(columns);
  const result: DiscoverResult = {
    target: versionLabel(opts.target),
    mode: opts.full ? 'full' : 'sample',
    bounds: opts.full ? null : { rowsPerRelation: opts.rowsPerRelation, sampleBlocks: opts.sampleBlocks, statementTimeoutMs: opts.statementTimeoutMs },
    relationsScanned: scanned,
    rowsRead,
    columns,
    notChecked,
    matviews,
    unconfiguredOld: old.reduce((n, c) => n + c.oldValues, 0),
    snippet: renderSnippet(tables.map((t) => ({ ...t.config, display: t.display })), columns),
    ok: old.length === 0 && notChecked.length === 0,
    startedAt,
    finishedAt: new Date().toISOString(),
  };
  log.info({ mode: result.mode, relations: scanned, rowsRead, unconfiguredOld: result.unconfiguredOld, notChecked: notChecked.length, matviews: matviews.length }, 'discover finished');
  return result;
}

/** relation oid -> the configured table and columns it holds (the table itself and every leaf). */
async function configuredColumns(pool: pg.Pool, tables: readonly TableInfo[]): Promise<Map<number, { table: string; columns: Set<string> }>> {
  const out = new Map<number, { table: string; columns: Set<string> }>();
  for (const t of tables) {
    const names = [t.quoted, ...t.leaves.map(quoteQualified)];
    const r = await pool.query<{ oid: number | null }>(`select to_regclass(x)::oid::int as oid from unnest($1::text[]) x`, [names]);
    for (const { oid } of r.rows) if (oid !== null) out.set(oid, { table: t.display, columns: new Set(t.config.columns) });
  }
  return out;
}

/**
 * Materialized views whose definition reads a configured column (pg_rewrite's dependencies on
 * the table, a leaf, or the partitioned root), directly or through views and other materialized
 * views (every column of such a view counts as derived from it): they hold copies of its
 * ciphertexts, which stay at the old version until REFRESH MATERIALIZED VIEW.
 */
async function matviewsReadingConfigured(pool: pg.Pool, tables: readonly TableInfo[]): Promise<MatviewFinding[]> {
  const pairs: { rel: string; col: string; label: string }[] = [];
  for (const t of tables) for (const rel of [t.quoted, ...t.leaves.map(quoteQualified)]) for (const col of t.config.columns) pairs.push({ rel, col, label: `${t.display}.${col}` });
  if (pairs.length === 0) return [];
  const r = await pool.query<{ schema: string; name: string; populated: boolean; label: string }>(
    `with recursive reads(relid, attnum, label) as (
       select a.attrelid, a.attnum, p.label
         from unnest($1::text[], $2::text[], $3::text[]) as p(rel, col, label)
         join pg_attribute a on a.attrelid = to_regclass(p.rel) and a.attname = p.col
       union
       select v.oid, va.attnum, r.label
         from reads r
         join pg_depend d on d.refclassid = 'pg_class'::regclass and d.refobjid = r.relid and d.refobjsubid = r.attnum and d.classid = 'pg_rewrite'::regclass
         join pg_rewrite w on w.oid = d.objid
         join pg_class v on v.oid = w.ev_class and v.relkind in ('v', 'm')
         join pg_attribute va on va.attrelid = v.oid and va.attnum > 0 and not va.attisdropped)
     select distinct vn.nspname as schema, v.relname as name, v.relispopulated as populated, r.label
       from reads r
       join pg_class v on v.oid = r.relid and v.relkind = 'm'
       join pg_namespace vn on vn.oid = v.relnamespace
      order by 1, 2, 4`,
    [pairs.map((p) => p.rel), pairs.map((p) => p.col), pairs.map((p) => p.label)],
  );
  const out = new Map<string, MatviewFinding>();
  for (const x of r.rows) {
    const name = displayName(x);
    const m = out.get(name) ?? { matview: name, reads: [], populated: x.populated };
    out.set(name, m);
    if (!m.reads.includes(x.label)) m.reads.push(x.label);
  }
  return [...out.values()];
}
