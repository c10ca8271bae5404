import { formatDuration } from '../format.js';
import { blocksConvergence } from '../verify/outside.js';
import type { Criterion, RotationRecord, Verdict } from './record.js';

/**
 * The verdict of the rotation record: may the old key go? Yes only when verify's checks pass
 * (converged: no old-version value, quarantined ones included; no transaction open at the count;
 * every leaf followed; no relation that left a configured table holding old values), no
 * application wrote an old version for the quiet period, no key changed between runs, and no
 * deep check that was run failed. Checks that were not run are reported as such and do not
 * block (the runbook's condition is "converged and quiet"). Pure.
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
  for (const [name, list] of [
    ['deep verify (verify --decrypt: target values open with the target key)', r.checks.deepVerify],
    ['discover (no old-version values outside the configuration)', r.checks.discover],
  ] as const) {
    const latest = [...list].sort((a, b) => b.finishedAt.localeCompare(a.finishedAt))[0];
    criteria.push({
      name,
      ok: latest ? latest.ok : null,
      blocks: latest !== undefined,
      evidence: latest ? `${latest.ok ? 'passed' : 'FAILED'}: \`${latest.command}\` (${latest.mode}) finished ${latest.finishedAt}${latest.host ? ` on ${latest.host}` : ''}` : 'not run',
    });
  }
  const failed = criteria.filter((c) => c.blocks && c.ok !== true);
  const oldKeyMayGo = failed.length === 0;
  return {
    oldKeyMayGo,
    summary: oldKeyMayGo
      ? `the old key may go: converged and quiet for ${formatDuration(g.periodSeconds)}${criteria.some((c) => c.ok === null) ? ' (some checks were not run; see below)' : ''}`
      : `the old key must stay: ${failed.map((c) => c.name).join('; ')}`,
    criteria,
  };
}
