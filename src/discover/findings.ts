import { versionLabel } from '../crypto/envelope.js';
import { quoteIdent } from '../db/ident.js';
import type { TableConfig } from '../config/load-config.js';

/**
 * What `discover` reports, as plain data (for verify's "outside the configuration" section,
 * `pg-rekey report` and pgrekey.check_result). Counts and names only, never a value.
 */
export interface DiscoveredColumn {
  relation: string;
  kind: 'table' | 'partition' | 'matview' | 'foreign table';
  /** What `tables:` names for it: the partition root for a partition, else the relation. */
  configName: string;
  column: string;
  type: string;
  json: boolean;
  /** pg-rekey can rewrite its type (text, varchar, citext). */
  rewritable: boolean;
  /** The configured table whose column this is, or null. */
  configured: string | null;
  /** Rows read holding an envelope, by version (json: by the version of the first envelope in the value). */
  byVersion: Record<string, number>;
  /** Of those, not at the target version. */
  oldValues: number;
  rowsRead: number;
  /** Every row of the relation was read. */
  exact: boolean;
}

export interface NotChecked {
  relation: string;
  /** null: the whole relation. */
  column: string | null;
  reason: string;
}

export interface MatviewFinding {
  matview: string;
  /** Configured columns its definition reads, as table.column. */
  reads: string[];
  populated: boolean;
}

export interface DiscoverResult {
  target: string;
  mode: 'full' | 'sample';
  /** Sampled: the bounds used (rows and about how many blocks per relation, statement timeout). */
  bounds: { rowsPerRelation: number; sampleBlocks: number; statementTimeoutMs: number } | null;
  relationsScanned: number;
  rowsRead: number;
  /** Columns holding envelopes, and every configured column. */
  columns: DiscoveredColumn[];
  notChecked: NotChecked[];
  matviews: MatviewFinding[];
  /** Old-version values found outside the configured columns (in the rows read). */
  unconfiguredOld: number;
  /** `tables:` as it would be with the rewritable unconfigured columns added. */
  snippet: string;
  /** No old-version value outside the configuration was found (in what was read), and nothing was left unchecked. */
  ok: boolean;
  startedAt: string;
  finishedAt: string;
}

export function countOld(byVersion: Record<string, number>, target: number): number {
  const t = versionLabel(target);
  return Object.entries(byVersion).reduce((n, [v, k]) => (v === t ? n : n + k), 0);
}

/** Unconfigured columns that hold old-version values: what keeps the old key needed. */
export function unconfiguredOld(columns: readonly DiscoveredColumn[]): DiscoveredColumn[] {
  return columns.filter((c) => c.configured === null && c.oldValues > 0);
}

/** A name as the config parses it (SQL rules), written so YAML keeps it: plain, or '"Mixed Case"'. */
function yamlName(sqlName: string): string {
  return /^[a-z_][a-z0-9_$.]*$/.test(sqlName) ? sqlName : `'${sqlName.replace(/'/g, "''")}'`;
}
const columnName = (c: string) => yamlName(/^[a-z_][a-z0-9_$]*$/.test(c) ? c : quoteIdent(c));

/**
 * The `tables:` list to paste: every configured table with its columns, plus the unconfigured
 * columns of tables (partition roots for partitions) that hold envelopes, marked. Columns
 * pg-rekey cannot rewrite (char(n), json) and materialized views (REFRESH them instead) are
 * listed as comments, not entries.
 */
export function renderSnippet(configured: readonly (TableConfig & { display: string })[], found: readonly DiscoveredColumn[]): string {
  const entries = new Map<string, { columns: string[]; added: string[]; notes: string[] }>();
  for (const t of configured) entries.set(t.display, { columns: [...t.columns], added: [], notes: [] });
  const comments: string[] = [];
  for (const c of found) {
    if (c.configured !== null || Object.keys(c.byVersion).length === 0) continue;
    const where = `${c.configName}.${c.column}`;
    if (c.kind === 'matview') continue;
    if (c.json) {
      comments.push(`# ${where} (${c.type}): envelopes inside JSON; pg-rekey cannot rewrite them: re-encrypt them in the application`);
      continue;
    }
    if (!c.rewritable) {
      comments.push(`# ${where} (${c.type}): holds envelopes, but pg-rekey rewrites text/varchar only: ALTER ... TYPE text first, then add it`);
      continue;
    }
    const e = entries.get(c.configName) ?? { columns: [], added: [], notes: [] };
    entries.set(c.configName, e);
    if (e.columns.includes(c.column) || e.added.includes(c.column)) continue;
    e.added.push(c.column);
    e.notes.push(`${c.column}: ${versionsText(c.byVersion)}${c.exact ? '' : ' in the rows sampled'}`);
  }
  const lines = ['tables:'];
  for (const [name, e] of entries) {
    lines.push(`  - name: ${yamlName(name)}`);
    lines.push(`    columns: [${[...e.columns, ...e.added].map(columnName).join(', ')}]${e.added.length ? `   # added by discover: ${e.notes.join('; ')}` : ''}`);
  }
  return [...lines, ...comments].join('\n');
}

export function versionsText(byVersion: Record<string, number>): string {
  return Object.entries(byVersion)
    .sort(([a], [b]) => Number(a.slice(1)) - Number(b.slice(1)))
    .map(([v, n]) => `${v} ${n}`)
    .join(', ');
}
