import { renderTable } from '../format.js';
import { keyVarName } from '../crypto/key-ring.js';
import { parseVersionLabel } from '../crypto/envelope.js';
import { renderFindings, scanNote } from '../commands/discover.js';
import type { DiscoverResult } from '../discover/findings.js';
import type { DeepVerifyResult } from './deep-verify.js';
import { versionsText } from '../discover/findings.js';

/** verify --decrypt's section: per column, values opened and not, by version; the first failures by ctid. */
export function renderDeepVerify(r: DeepVerifyResult): string {
  const versions = [...new Set(r.columns.flatMap((c) => Object.keys(c.read)))].sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)));
  const how =
    r.mode === 'sample'
      ? `decrypted a sample: up to ${r.samplePerColumn} values of each column of each relation, from random block ranges (\`verify --decrypt\` without --sample opens every value)`
      : 'decrypted every v<N>: value';
  const table = renderTable(
    ['table', 'column', ...versions.map((v) => `${v} opened`), ...versions.map((v) => `${v} did not open`), 'no key'],
    r.columns.map((c) => [
      c.table,
      c.column,
      ...versions.map((v) => c.opened[v] ?? 0),
      ...versions.map((v) => c.failed[v] ?? 0),
      Object.values(c.noKey).reduce((a, b) => a + b, 0),
    ]),
  );
  const lines = [`\n${how} (${r.totals.read} values in ${r.relations.length} relation(s)):`, table];
  const targetVersion = parseVersionLabel(r.target) ?? 0;
  if (r.totals.targetFailed) {
    const where = r.columns.filter((c) => (c.failed[r.target] ?? 0) > 0).map((c) => `${c.table}.${c.column}: ${c.failed[r.target]}`);
    lines.push(
      `NOT OK: ${r.totals.targetFailed} ${r.target} value(s) do not open with the target key (${where.join('; ')}): an application instance writes ${r.target} values with another key ` +
        `(or they were corrupted); the applications with ${keyVarName(targetVersion)} cannot read them. Find the instance whose ${keyVarName(targetVersion)} differs, fix it, and re-encrypt those values from its key`,
    );
  } else lines.push(`every ${r.target} value read opens with the target key`);
  if (r.totals.oldFailed) {
    const where = r.columns.filter((c) => Object.entries(c.failed).some(([v, n]) => v !== r.target && n > 0)).map((c) => `${c.table}.${c.column}: ${versionsText(Object.fromEntries(Object.entries(c.failed).filter(([v]) => v !== r.target)))}`);
    lines.push(`${r.totals.oldFailed} old-version value(s) do not open with the key of their version (${where.join('; ')}): the rotation quarantines them (untouched); check that key, or the values were corrupted before`);
  }
  if (r.totals.notChecked) lines.push(`${r.totals.notChecked} value(s) of a version without a configured key were not checked (${[...new Set(r.columns.flatMap((c) => Object.keys(c.noKey)))].join(', ')})`);
  if (r.failures.length) {
    lines.push(`first ${r.failures.length} that did not open (ctid as read; the row may have moved since):`);
    lines.push(...r.failures.map((f) => `  ${f.relation} ctid ${f.ctid} ${f.column}: ${f.version}, ${f.reason}`));
  }
  if (r.interrupted) lines.push('INTERRUPTED: the counts above cover only what was read before the signal');
  return lines.join('\n');
}

/** verify's "outside the configuration" section (discover's sampled check), kept apart from the departed leaves above it. */
export function renderOutsideConfiguration(r: DiscoverResult | null, error: string | null, strict: boolean): string {
  if (!r) return `\noutside the configuration: NOT CHECKED (${error ?? 'unknown error'})${strict ? '; --strict counts this as not converged' : ''}`;
  const lines = [`\noutside the configuration (columns of other tables, materialized views, json; ${scanNote(r)}):`];
  const other = r.columns.filter((c) => c.configured === null);
  if (other.length) {
    lines.push(renderTable(['relation', 'column', 'type', 'envelopes (rows read)', 'old'], other.map((c) => [c.relation, c.column, c.type, versionsText(c.byVersion), c.oldValues])));
  }
  lines.push(...renderFindings(r, 10).map((l) => (l.startsWith('  ') ? l : `  ${l}`)));
  if (!r.ok || r.notChecked.length) lines.push(strict ? '  --strict: this counts as not converged' : '  (not part of the exit code; `verify --strict` counts it; `pg-rekey discover` prints a `tables:` snippet)');
  return lines.join('\n');
}
