// Pure parts of the rollout gate and the rotation record: key fingerprints, the sightings the
// stream collects, the verdict, the layouts (escaping), the gate's wording.
import { describe, expect, it } from 'vitest';
import { keyFingerprint, FINGERPRINT_LABEL } from '../../src/crypto/fingerprint.js';
import { createHmac } from 'node:crypto';
import { OldVersionSightings, oldVersionColumns } from '../../src/replication/old-version-sightings.js';
import { decideVerdict } from '../../src/report/verdict.js';
import { keyEntries } from '../../src/report/collect.js';
import { layoutRecord } from '../../src/report/document.js';
import { renderHtml, renderMarkdown } from '../../src/report/render.js';
import { describeSightings, quietState } from '../../src/rollout/gate.js';
import type { RotationRecord } from '../../src/report/record.js';

const key = (b: number) => new Uint8Array(32).fill(b);

describe('key fingerprints', () => {
  it('are a labelled, truncated HMAC keyed by the key: stable, distinct per key, never the key', () => {
    const fp = keyFingerprint(key(7));
    expect(fp).toMatch(/^fp1:[0-9a-f]{32}$/);
    expect(keyFingerprint(key(7))).toBe(fp);
    expect(keyFingerprint(key(8))).not.toBe(fp);
    expect(fp.slice(4)).toBe(createHmac('sha256', key(7)).update(FINGERPRINT_LABEL).digest('hex').slice(0, 32));
    expect(fp).not.toContain(Buffer.from(key(7)).toString('hex').slice(0, 8));
    // Not a plain hash of the key: a different label gives another value.
    expect(createHmac('sha256', key(7)).update('another label').digest('hex').slice(0, 32)).not.toBe(fp.slice(4));
  });
});

describe('old-version sightings', () => {
  const txn = (lsn: string, ms = 1_000) => ({ commitLsn: lsn, commitTimeMicros: BigInt(ms) * 1000n });
  it('counts configured columns with a value at an old version; NULL, unchanged TOAST, target and foreign values are not writes', () => {
    expect(oldVersionColumns({ a: 'v1:AAAA', b: 'v2:AAAA', c: null, d: undefined, e: 'plain', f: 'v3:AA' }, ['a', 'b', 'c', 'd', 'e', 'f', 'g'], 2)).toEqual([
      { column: 'a', version: 1 },
      { column: 'f', version: 3 },
    ]);
  });
  it('aggregates per column and transaction; a transaction continued after a flush is marked, a new session forgets', () => {
    const s = new OldVersionSightings();
    s.note(txn('0/10'), 1, 't', 'c');
    s.note(txn('0/10'), 1, 't', 'c');
    s.note(txn('0/20', 2_000), 1, 't', 'c');
    expect(s.newestCommitMs).toBe(2_000);
    expect(s.take().map((r) => [r.lsn, r.writes, r.continues])).toEqual([
      ['0/10', 2, false],
      ['0/20', 1, false],
    ]);
    expect(s.size).toBe(0);
    s.note(txn('0/20', 2_000), 1, 't', 'c'); // the rest of 0/20, after a flush in its middle
    expect(s.take()[0]!.continues).toBe(true);
    s.discard();
    s.note(txn('0/20', 2_000), 1, 't', 'c'); // replayed after a reconnect: not a continuation
    expect(s.take()[0]!.continues).toBe(false);
  });
});

describe('the gate', () => {
  it('quiet only up to when the stream was observed caught up', () => {
    const since = new Date(0);
    expect(quietState(since, null, 60).quietSeconds).toBeNull();
    expect(quietState(since, new Date(59_000), 60).quiet).toBe(false);
    expect(quietState(since, new Date(60_000), 60).quiet).toBe(true);
  });
  it('says which instance still writes what', () => {
    const w = (version: number, column: string, agoMs: number, total = 3) => ({ version, table: 'public.incidents', column, total, lastHour: total, firstAt: new Date(0), lastAt: new Date(1e9 - agoMs) });
    expect(describeSightings([w(1, 'title', 240_000), w(1, 'raw_xml', 500_000), w(3, 'title', 3 * 3600_000)], 1e9)).toEqual([
      'last v1 write seen 4m ago (public.incidents.title; 6 in the last hour, 6 recorded): an application instance still writes v1',
      'last v3 write seen 3.0h ago (public.incidents.title; 3 in the last hour, 3 recorded): none in the last hour',
    ]);
  });
});

function record(o: Partial<Omit<RotationRecord, 'verdict'>> = {}): Omit<RotationRecord, 'verdict'> {
  return {
    generatedAt: '2026-12-02T00:00:00.000Z',
    generatedBy: { role: 'rekey_worker', host: 'ops-1', database: 'cad', server: '18.4' },
    target: 'v2',
    keys: keyEntries([{ id: 1, command: 'run', host: 'h', pid: 1, role: 'r', startedAt: '', finishedAt: null, outcome: 'ok', fingerprints: { v1: 'fp1:a', v2: 'fp1:b' } }], { v2: 'fp1:b' }, 2),
    timeline: [],
    runs: [],
    counts: { now: [{ table: 'public.incidents', column: 'title', byVersion: { v2: 10 }, notOurs: 0, nulls: 0, nonTarget: 0, quarantined: 0, nonTargetByLeaf: {} }], before: null, sweep: [] },
    quarantine: { total: 0, byReason: [], byColumn: [] },
    rollout: { writes: [], summary: [], stillWritten: [], quietSince: new Date(0), observedUntil: new Date(3_600_000), quietSeconds: 3600, quietPeriodSeconds: null, gate: quietState(new Date(0), new Date(3_600_000), 900) },
    verify: { converged: true, remaining: 0, quarantined: 0, openTransactions: [], unfollowed: [], outside: [], ignore: [] },
    checks: { deepVerify: [], discover: [] },
    notRecorded: [],
    ...o,
  };
}

type Check = RotationRecord['checks']['discover'][number];
const at = (s: number) => new Date(3_600_000 + s * 1000).toISOString();
/** A recorded check, started at `s` seconds after the record's quiet-since + 1h (finished 10 s later). */
function check(kind: Check['kind'], mode: Check['mode'], ok: boolean, s: number, o: Partial<Check> = {}): Check {
  const command = kind === 'discover' ? (mode === 'full' ? 'discover --full' : 'verify') : mode === 'full' ? 'verify --decrypt' : 'verify --decrypt --sample 100';
  const result = kind === 'discover' ? { columns: [{ relation: 'public.incidents', column: 'title', configured: 'public.incidents' }] } : {};
  return { kind, mode, command, targetVersion: 2, startedAt: at(s), finishedAt: at(s + 10), ok, host: null, result, ...o };
}
const passed = { deepVerify: [check('deep-verify', 'full', true, 0)], discover: [check('discover', 'full', true, 0)] };
const criterion = (v: ReturnType<typeof decideVerdict>, name: string) => v.criteria.find((c) => c.name.startsWith(name))!;

describe('the verdict', () => {
  it('converged, quiet, and a full deep verify and a full discover passed since the rollout ended: the old key may go', () => {
    const v = decideVerdict(record({ checks: passed }));
    expect(v.oldKeyMayGo).toBe(true);
    expect(criterion(v, 'discover').evidence).toMatch(/^passed: `discover --full` \(full\) started /);
  });
  it('not quiet, not observed, a changed key, quarantine or a failed deep check: the old key must stay', () => {
    const rollout = (observedUntil: Date | null) => ({ ...record().rollout, observedUntil, gate: quietState(new Date(0), observedUntil, 900) });
    expect(decideVerdict(record({ checks: passed, rollout: rollout(new Date(60_000)) })).summary).toMatch(/^the old key must stay: quiet for 15m/);
    expect(decideVerdict(record({ checks: passed, rollout: rollout(null) })).criteria[2]!.evidence).toMatch(/not observed: no `pg-rekey run` convergence check passed/);
    expect(decideVerdict(record({ checks: passed, rollout: rollout(null) })).oldKeyMayGo).toBe(false);
    const changed = keyEntries([{ id: 1, command: 'run', host: null, pid: null, role: null, startedAt: '', finishedAt: null, outcome: null, fingerprints: { v2: 'fp1:b' } }], { v2: 'fp1:c' }, 2);
    expect(changed[0]!.changed).toBe(true);
    expect(decideVerdict(record({ checks: passed, keys: changed })).oldKeyMayGo).toBe(false);
    expect(decideVerdict(record({ checks: passed, quarantine: { total: 2, byReason: [{ reason: 'mac-failure', count: 2 }], byColumn: [] }, verify: { ...record().verify, quarantined: 2 } })).oldKeyMayGo).toBe(false);
    const v = decideVerdict(record({ checks: { ...passed, deepVerify: [check('deep-verify', 'full', false, 5)] } }));
    expect(v.oldKeyMayGo).toBe(false);
    expect(criterion(v, 'deep verify').evidence).toMatch(/^FAILED: `verify --decrypt` \(full\)/);
  });
  it('deep checks not run, or only sampled: the old key must stay (a sample proves nothing about what it did not read)', () => {
    const none = decideVerdict(record());
    expect(none.oldKeyMayGo).toBe(false);
    expect(none.criteria.filter((c) => c.ok !== true).map((c) => c.evidence)).toEqual(['not run at v2: run `verify --decrypt`', 'not run at v2: run `discover --full`']);
    const sampled = decideVerdict(record({ checks: { deepVerify: [check('deep-verify', 'sample', true, 0)], discover: [check('discover', 'sample', true, 0)] } }));
    expect(sampled.oldKeyMayGo).toBe(false);
    expect(criterion(sampled, 'discover').evidence).toMatch(/^only sampled: `verify` \(sample\)/);
    expect(criterion(sampled, 'deep verify').evidence).toMatch(/^only sampled: `verify --decrypt --sample 100` \(sample\)/);
  });
  it('a failed discover --full is not hidden by a later sampled pass (every plain verify records one); a later full pass lifts it', () => {
    const failedFull = check('discover', 'full', false, 0);
    const hidden = decideVerdict(record({ checks: { deepVerify: passed.deepVerify, discover: [failedFull, check('discover', 'sample', true, 60)] } }));
    expect(hidden.oldKeyMayGo).toBe(false);
    expect(criterion(hidden, 'discover').evidence).toMatch(/^FAILED: `discover --full` \(full\) started .*until a later `discover --full` passes/);
    // An earlier full pass does not outweigh a later failure either.
    expect(decideVerdict(record({ checks: { deepVerify: passed.deepVerify, discover: [check('discover', 'full', true, -60), failedFull] } })).oldKeyMayGo).toBe(false);
    // A sample that found something is evidence: it blocks a full pass older than it.
    expect(decideVerdict(record({ checks: { deepVerify: passed.deepVerify, discover: [check('discover', 'full', true, 0), check('discover', 'sample', false, 60)] } })).oldKeyMayGo).toBe(false);
    expect(decideVerdict(record({ checks: { deepVerify: [check('deep-verify', 'full', true, 0), check('deep-verify', 'sample', false, 60)], discover: passed.discover } })).oldKeyMayGo).toBe(false);
    // A full pass after the failure lifts it.
    expect(decideVerdict(record({ checks: { deepVerify: passed.deepVerify, discover: [failedFull, check('discover', 'sample', true, 60), check('discover', 'full', true, 120)] } })).oldKeyMayGo).toBe(true);
  });
  it('a full pass from before the rollout ended, at another target, or with a column configured then and not now does not count', () => {
    // Started before the last old-version write (quiet since): an instance wrote old values after it.
    const late = { ...record().rollout, quietSince: new Date(7_200_000), gate: quietState(new Date(7_200_000), new Date(9_000_000), 900) };
    const early = decideVerdict(record({ rollout: late, checks: passed }));
    expect(early.oldKeyMayGo).toBe(false);
    expect(early.criteria.filter((c) => c.ok !== true).map((c) => c.evidence.split(':')[0])).toEqual(['too old', 'too old']);
    const v1 = decideVerdict(record({ checks: { deepVerify: [check('deep-verify', 'full', true, 0, { targetVersion: 1 })], discover: passed.discover } }));
    expect(criterion(v1, 'deep verify').evidence).toBe('not run at v2: run `verify --decrypt`');
    // The discover took incidents.notes as configured (so did not count its old values); it is not configured now.
    const wider = check('discover', 'full', true, 0, { result: { columns: [{ configured: 'public.incidents', column: 'title' }, { configured: 'public.incidents', column: 'notes' }] } });
    const stale = decideVerdict(record({ checks: { deepVerify: passed.deepVerify, discover: [wider] } }));
    expect(stale.oldKeyMayGo).toBe(false);
    expect(criterion(stale, 'discover').evidence).toMatch(/^stale: .* took public\.incidents\.notes as configured/);
  });
});

describe('layouts', () => {
  it('HTML escapes every name; Markdown escapes pipes', () => {
    const r = record({ checks: { ...passed, discover: [check('discover', 'full', true, 0, { result: {} })] }, counts: { ...record().counts, now: [{ table: 'public."<script>alert(1)</script>"', column: 'a|b', byVersion: { v2: 1 }, notOurs: 0, nulls: 0, nonTarget: 0, quarantined: 0, nonTargetByLeaf: {} }] } });
    const full = { ...r, verdict: decideVerdict(r) };
    const html = renderHtml(layoutRecord(full));
    expect(html).not.toContain('<script>');
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(html).toMatch(/<p id="verdict" class="verdict ok">Verdict: the old key may go/);
    expect(renderMarkdown(layoutRecord(full))).toContain('| a\\|b |');
  });
});
