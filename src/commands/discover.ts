import type { GlobalFlags } from '../config/load-config.js';
import { openContext } from '../context.js';
import { loadTargetVersion } from '../crypto/key-ring.js';
import { resolveTables } from '../db/catalog.js';
import { ConfigError, EXIT_NOT_CONVERGED, EXIT_OK } from '../errors.js';
import { renderTable } from '../format.js';
import { DEFAULT_SCAN, discover } from '../discover/discover.js';
import { unconfiguredOld, versionsText, type DiscoverResult } from '../discover/findings.js';
import { recordCheck } from '../state/check-results.js';

export interface DiscoverFlags {
  full?: boolean;
  rows?: string;
  json?: boolean;
}

function positive(flag: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new ConfigError(`${flag} ${raw}: not a positive whole number`, `pass e.g. ${flag} ${fallback}`);
  return n;
}

/** Scans the database for envelopes outside the configuration; exit 1 when old-version values are found there. */
export async function discoverCommand(flags: GlobalFlags, opts: DiscoverFlags): Promise<number> {
  const target = loadTargetVersion({ env: process.env, envFile: flags.envFile });
  const rowsPerRelation = positive('--rows', opts.rows, DEFAULT_SCAN.rowsPerRelation);
  const ctx = await openContext(flags);
  try {
    const tables = await resolveTables(ctx.pool, ctx.config.tables);
    const result = await discover(ctx.pool, tables, { ...DEFAULT_SCAN, rowsPerRelation, full: opts.full === true, target, log: ctx.log });
    await recordCheck(ctx.pool, { kind: 'discover', mode: result.mode, command: opts.full ? 'discover --full' : 'discover', targetVersion: target, startedAt: result.startedAt, ok: result.ok, result }, ctx.log);
    process.stdout.write(opts.json ? `${JSON.stringify(result, null, 2)}\n` : `${renderDiscover(result)}\n`);
    return result.ok ? EXIT_OK : EXIT_NOT_CONVERGED;
  } finally {
    await ctx.close();
  }
}

/** How the scan was bounded, in words. */
export function scanNote(r: DiscoverResult): string {
  return r.bounds
    ? `sampled: up to ${r.bounds.rowsPerRelation} rows from about ${r.bounds.sampleBlocks} random blocks of each relation (smaller ones whole), ` +
        `${r.bounds.statementTimeoutMs / 1000}s each; ${r.rowsRead} rows of ${r.relationsScanned} relation(s) read. A sample can miss values: \`pg-rekey discover --full\` reads every row`
    : `full: every row of ${r.relationsScanned} relation(s) read (${r.rowsRead} rows)`;
}

export function renderDiscover(r: DiscoverResult): string {
  const status = (c: DiscoverResult['columns'][number]) =>
    c.configured !== null
      ? `configured (${c.configured})`
      : c.kind === 'matview'
        ? c.oldValues > 0 ? 'OLD VALUES: a materialized view, REFRESH it once converged' : 'materialized view'
        : c.json
          ? c.oldValues > 0 ? 'OLD VALUES inside JSON (reported, not configurable)' : 'envelopes inside JSON (reported, not configurable)'
          : c.oldValues > 0 ? 'OLD VALUES, not configured' : 'not configured (target version only)';
  const lines = [`target ${r.target}; ${scanNote(r)}`];
  if (r.columns.length) {
    lines.push(
      renderTable(
        ['relation', 'column', 'type', 'envelopes (rows read)', 'old', 'rows read', 'status'],
        r.columns.map((c) => [c.relation, c.column, c.type, versionsText(c.byVersion) || '-', c.oldValues, c.exact ? c.rowsRead : `${c.rowsRead} (sample)`, status(c)]),
      ),
    );
  } else lines.push('no column holds v<N>: envelopes in the rows read');
  lines.push(...renderFindings(r));
  lines.push('', '# tables: for pg-rekey.yaml, with the columns discover found added:', r.snippet);
  return lines.join('\n');
}

/** The verdict lines shared by `discover` and verify's "outside the configuration" section. */
export function renderFindings(r: DiscoverResult, maxNotChecked = Infinity): string[] {
  const lines: string[] = [];
  for (const m of r.matviews) {
    lines.push(
      `materialized view ${m.matview} reads ${m.reads.join(', ')}: it keeps copies of those ciphertexts at the version they had when it was last refreshed; ` +
        (m.populated ? 'REFRESH MATERIALIZED VIEW it once the rotation has converged, before the old key goes' : 'it is not populated (WITH NO DATA): it holds nothing until REFRESH'),
    );
  }
  if (r.notChecked.length) {
    lines.push(`NOT CHECKED: ${r.notChecked.length} relation(s) or column(s) could not be read, so this says nothing about them:`);
    for (const n of r.notChecked.slice(0, maxNotChecked)) lines.push(`  ${n.relation}${n.column ? `.${n.column}` : ''}: ${n.reason}`);
    if (r.notChecked.length > maxNotChecked) lines.push(`  ... and ${r.notChecked.length - maxNotChecked} more (\`pg-rekey discover\` lists them all)`);
  }
  const old = unconfiguredOld(r.columns);
  if (old.length) {
    lines.push(
      `OLD VALUES OUTSIDE THE CONFIGURATION: ${r.unconfiguredOld} old-version value(s) in ${old.length} column(s) nothing rotates; they would be unreadable without the old key: ` +
        old.map((c) => `${c.relation}.${c.column}`).join(', '),
    );
  } else lines.push(`no old-version value outside the configured columns${r.bounds ? ' in the rows sampled' : ''}`);
  return lines;
}
