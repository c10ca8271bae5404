// The metric names a PromQL expression selects, for checking dashboards and rules against /metrics.
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { repoRoot } from './cli.js';

const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'inf', 'nan', 'start', 'end']);

/**
 * Every identifier in `expr` that selects a series: not a function (followed by "("), not a
 * keyword, label name, label value, duration, number or Grafana variable ($x, ${x}, [$__rate_interval]).
 */
export function selectedMetrics(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, ' ') // strings
    .replace(/\{[^}]*\}/g, ' ') // label matchers
    .replace(/\[[^\]]*\]/g, ' ') // ranges, subqueries
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ') // label lists
    .replace(/\$\{[^}]*\}|\$\w+/g, ' '); // Grafana variables
  const names = new Set<string>();
  for (const m of stripped.matchAll(/\d[\w.]*|([a-zA-Z_:][\w:]*)(\s*\()?/g)) {
    const [, ident, call] = m;
    if (!ident || call || KEYWORDS.has(ident)) continue;
    names.add(ident);
  }
  return [...names];
}

/** Metric names declared on a /metrics page (`# TYPE` lines), with the series names of histograms and summaries. */
export function exportedMetrics(text: string): Set<string> {
  const out = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, name, type] = m as unknown as [string, string, string];
    out.add(name);
    if (type === 'histogram') ['_bucket', '_sum', '_count'].forEach((s) => out.add(name + s));
    if (type === 'summary') ['_sum', '_count'].forEach((s) => out.add(name + s));
  }
  return out;
}

/** Names a pg-rekey metric anywhere in a text (annotation templates with `query`, Grafana template queries). */
export function mentionedMetrics(text: string): string[] {
  return [...new Set(text.match(/\bpg_rekey_[a-z0-9_]+/g) ?? [])];
}

export const ALERT_RULES = `${repoRoot}deploy/prometheus/pg-rekey-alerts.yml`;
export const ALERT_TESTS = [`${repoRoot}deploy/prometheus/pg-rekey-alerts.test.yml`, `${repoRoot}deploy/prometheus/pg-rekey-alerts.long.test.yml`];
export const DASHBOARD = `${repoRoot}deploy/grafana/pg-rekey.json`;

/** Every PromQL expression of the dashboard's panels (nested rows included). */
export function dashboardExprs(file = DASHBOARD): { where: string; expr: string }[] {
  const d = JSON.parse(readFileSync(file, 'utf8')) as { panels: Panel[] };
  const out: { where: string; expr: string }[] = [];
  const walk = (panels: Panel[]): void => {
    for (const p of panels) {
      for (const t of p.targets ?? []) if (t.expr) out.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr });
      walk(p.panels ?? []);
    }
  };
  walk(d.panels);
  return out;
}

interface Panel {
  title: string;
  targets?: { refId: string; expr?: string }[];
  panels?: Panel[];
}

/** Every alert's expression. */
export function ruleExprs(file = ALERT_RULES): { where: string; expr: string }[] {
  const doc = parse(readFileSync(file, 'utf8')) as { groups: { rules: { alert?: string; record?: string; expr: string }[] }[] };
  return doc.groups.flatMap((g) => g.rules.map((r) => ({ where: `rule ${r.alert ?? r.record}`, expr: String(r.expr) })));
}
