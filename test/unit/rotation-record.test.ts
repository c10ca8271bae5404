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

describe('the verdict', () => {
  it('converged and quiet: the old key may go; checks not run are reported, not blocking', () => {
    const v = decideVerdict(record());
    expect(v.oldKeyMayGo).toBe(true);
    expect(v.criteria.filter((c) => c.ok === null).map((c) => c.evidence)).toEqual(['not run', 'not run']);
  });
  it('not quiet, not observed, a changed key, quarantine or a failed deep check: the old key must stay', () => {
    const rollout = (observedUntil: Date | null) => ({ ...record().rollout, observedUntil, gate: quietState(new Date(0), observedUntil, 900) });
    expect(decideVerdict(record({ rollout: rollout(new Date(60_000)) })).summary).toMatch(/^the old key must stay: quiet for 15m/);
    expect(decideVerdict(record({ rollout: rollout(null) })).criteria[2]!.evidence).toMatch(/not observed: no `pg-rekey run` convergence check passed/);
    expect(decideVerdict(record({ rollout: rollout(null) })).oldKeyMayGo).toBe(false);
    const changed = keyEntries([{ id: 1, command: 'run', host: null, pid: null, role: null, startedAt: '', finishedAt: null, outcome: null, fingerprints: { v2: 'fp1:b' } }], { v2: 'fp1:c' }, 2);
    expect(changed[0]!.changed).toBe(true);
    expect(decideVerdict(record({ keys: changed })).oldKeyMayGo).toBe(false);
    expect(decideVerdict(record({ quarantine: { total: 2, byReason: [{ reason: 'mac-failure', count: 2 }], byColumn: [] }, verify: { ...record().verify, quarantined: 2 } })).oldKeyMayGo).toBe(false);
    const failed = { kind: 'deep-verify' as const, mode: 'full' as const, command: 'verify --decrypt', targetVersion: 2, startedAt: '1970-01-01T00:00:00.000Z', finishedAt: '1970-01-01T00:00:00.000Z', ok: false, host: null, result: {} };
    const v = decideVerdict(record({ checks: { deepVerify: [failed], discover: [] } }));
    expect(v.oldKeyMayGo).toBe(false);
    expect(v.criteria.find((c) => c.name.startsWith('discover'))!.evidence).toBe('not run');
  });
});

describe('layouts', () => {
  it('HTML escapes every name; Markdown escapes pipes', () => {
    const r = record({ counts: { ...record().counts, now: [{ table: 'public."<script>alert(1)</script>"', column: 'a|b', byVersion: { v2: 1 }, notOurs: 0, nulls: 0, nonTarget: 0, quarantined: 0, nonTargetByLeaf: {} }] } });
    const full = { ...r, verdict: decideVerdict(r) };
    const html = renderHtml(layoutRecord(full));
    expect(html).not.toContain('<script>');
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(html).toMatch(/<p id="verdict" class="verdict ok">Verdict: the old key may go/);
    expect(renderMarkdown(layoutRecord(full))).toContain('| a\\|b |');
  });
});
