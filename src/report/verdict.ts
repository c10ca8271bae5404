import { formatDuration } from '../format.js';
import { blocksConvergence } from '../verify/outside.js';
import { versionLabel } from '../crypto/envelope.js';
import type { Criterion, RecordedCheck, RotationRecord, Verdict } from './record.js';

/**
 * The verdict of the rotation record: may the old key go? Yes only when verify's checks pass
 * (converged: no old-version value, quarantined ones included; no transaction open at the count;
 * every leaf followed; no relation that left a configured table holding old values), no
 * application wrote an old version for the quiet period, no key changed between runs, and no
 * deep check failed, and both deep checks passed in full (see `fullPassCriterion`): a sample
 * proves nothing about the values it did not read. Pure.
 */
export function decideVerdict(r: Omit<RotationRecord, 'verdict'>): Verdict {
  const v = r.verify;
  const criteria: Criterion[] = [];
  const old = r.counts.now.reduce((n, c) => n + c.nonTarget, 0);
  criteria.push({
    name: 'converged (verify)',
    ok: v.converged,
    blocks: true,
    evidence: v.converged
      ? `0 values of an old version in ${r.counts.now.length} configured column(s); no transaction open at the count; every leaf followed by the stream; no relation outside the configuration holds old values`
      : [
          old ? `${old} value(s) not at ${r.target}${v.quarantined ? ` (${v.quarantined} quarantined)` : ''}` : null,
          v.openTransactions.length ? `${v.openTransactions.length} transaction(s) open at the count` : null,
          v.unfollowed.length ? `${v.unfollowed.length} leaf relation(s) not followed by the stream: ${v.unfollowed.join(', ')}` : null,
          v.outside.some(blocksConvergence) ? `relations outside the configured tables hold old values: ${v.outside.filter(blocksConvergence).map((o) => o.relation).join(', ')}` : null,
        ]
          .filter(Boolean)
          .join('; ') || 'not converged',
  });
  criteria.push({
    name: 'no quarantined values',
    ok: (v.quarantined ?? 0) === 0,
    blocks: true,
    evidence: r.quarantine.total ? `${r.quarantine.total} quarantined: ${r.quarantine.byReason.map((q) => `${q.reason} ${q.count}`).join(', ')}` : 'quarantine empty',
  });
  const g = r.rollout.gate;
  const lastWrite = r.rollout.writes[0];
  criteria.push({
    name: `quiet for ${formatDuration(g.periodSeconds)} (no application wrote an old version)`,
    ok: g.quietSeconds === null ? null : g.quiet,
    blocks: true,
    evidence:
      g.since === null
        ? 'not recorded (no slot creation and no old-version write in the state)'
        : g.quietSeconds === null
          ? 'not observed: no `pg-rekey run` convergence check passed, so the stream has not decoded the writes since the slot was created (run `pg-rekey run --exit-when-converged --quiet-period ...`)'
          : `${lastWrite ? `last old-version write: v${lastWrite.version} to ${lastWrite.table}.${lastWrite.column} committed at ${lastWrite.lastAt.toISOString()}` : 'no old-version write recorded since the slot was created'}; quiet since ${g.since.toISOString()}: ${formatDuration(g.quietSeconds)} as of the last passed convergence check`,
  });
  const changed = r.keys.filter((k) => k.changed);
  criteria.push({
    name: 'one key per version throughout',
    ok: changed.length === 0,
    blocks: true,
    evidence: changed.length ? `the key of ${changed.map((k) => k.version).join(', ')} differs between runs (or from this environment): values may be written under two keys of one version` : `${r.keys.length} version(s), each with one fingerprint in every run that held it`,
  });
  const since = g.since;
  const configured = r.counts.now.map((c) => `${c.table}.${c.column}`);
  criteria.push(fullPassCriterion('deep verify (a full `verify --decrypt`: every target value opens with the target key)', 'verify --decrypt', r.checks.deepVerify, r.target, since, null));
  criteria.push(fullPassCriterion('discover (a full `discover --full`: no old-version value outside the configuration, nothing left unchecked)', 'discover --full', r.checks.discover, r.target, since, configured));
  const failed = criteria.filter((c) => c.blocks && c.ok !== true);
  const oldKeyMayGo = failed.length === 0;
  return {
    oldKeyMayGo,
    summary: oldKeyMayGo
      ? `the old key may go: converged and quiet for ${formatDuration(g.periodSeconds)}; full deep verify and discover passed since`
      : `the old key must stay: ${failed.map((c) => c.name).join('; ')}`,
    criteria,
  };
}

/**
 * A deep check (verify --decrypt, discover) as evidence: it counts only as a FULL pass (every
 * value read) at the current target that started after the last change that matters, and only
 * if no failure of that check (full or sampled: a sample that found something found it) was
 * recorded after it. The change that matters is `since`: the later of the slot's creation and
 * the last old-version write an application made (the end of the rollout: a stale or
 * misconfigured instance can have written the values a check must see until then). For discover
 * also: every column it took as configured (so did not count) must still be configured, or
 * the old values it skipped there are counted by nobody. `checks` holds the latest record per
 * mode and outcome (state/check-results.ts). Not run, sampled only, or too old: blocks.
 */
export function fullPassCriterion(name: string, command: string, checks: readonly RecordedCheck[], target: string, since: Date | null, configured: readonly string[] | null): Criterion {
  const atTarget = checks.filter((c) => versionLabel(c.targetVersion) === target);
  const byTime = (a: RecordedCheck, b: RecordedCheck) => b.startedAt.localeCompare(a.startedAt) || b.finishedAt.localeCompare(a.finishedAt);
  const pass = atTarget.filter((c) => c.mode === 'full' && c.ok).sort(byTime)[0];
  const failure = atTarget.filter((c) => !c.ok).sort(byTime)[0];
  const said = (c: RecordedCheck) => `\`${c.command}\` (${c.mode}) started ${c.startedAt}${c.host ? ` on ${c.host}` : ''}`;
  const blocked = (evidence: string): Criterion => ({ name, ok: false, blocks: true, evidence });
  if (failure && (!pass || failure.startedAt >= pass.startedAt)) {
    return blocked(`FAILED: ${said(failure)}; the old key must stay until a later \`${command}\` passes${failure.mode === 'sample' ? ' (a sample that finds something is evidence; one that finds nothing is not)' : ''}`);
  }
  if (!pass) {
    const sampled = atTarget.find((c) => c.mode === 'sample' && c.ok);
    return blocked(sampled ? `only sampled: ${said(sampled)} read part of the values; run \`${command}\` (every value)` : `not run at ${target}: run \`${command}\``);
  }
  if (since && Date.parse(pass.startedAt) < since.getTime()) {
    return blocked(`too old: ${said(pass)} passed, but before ${since.toISOString()} (the last old-version write by an application, or the slot's creation): run \`${command}\` again`);
  }
  if (configured) {
    const now = new Set(configured);
    const skipped = configuredIn(pass.result).filter((c) => !now.has(c));
    if (skipped.length) return blocked(`stale: ${said(pass)} took ${skipped.join(', ')} as configured, and it is not configured now (nobody counts it): run \`${command}\` again`);
  }
  return { name, ok: true, blocks: true, evidence: `passed: ${said(pass)}, finished ${pass.finishedAt}; no failure recorded after it` };
}

/** The configured columns (table.column) a recorded discover result saw (it does not count their old values). */
function configuredIn(result: object): string[] {
  const cols = (result as { columns?: unknown }).columns;
  if (!Array.isArray(cols)) return [];
  const out = new Set<string>();
  for (const c of cols as { configured?: unknown; column?: unknown }[]) if (typeof c.configured === 'string' && typeof c.column === 'string') out.add(`${c.configured}.${c.column}`);
  return [...out];
}
