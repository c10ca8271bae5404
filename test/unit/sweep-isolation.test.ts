// The pure parts of the sweep's failure isolation and of backfill's convergence: judging what a
// chunk's compare-and-swap did, not retrying values whose rewrite did not stick, deciding which
// relations another pass can help, merging passes and reporting what is left and why.
import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { evaluateRows, isRowError, judgeCas, withoutGivenUp, type ChunkPlan, type ScannedRow } from '../../src/backfill/evaluate-rows.js';
import { casUpdateSql } from '../../src/backfill/sweep-sql.js';
import { leftBehind, type RelationResult } from '../../src/backfill/sweep.js';
import { mergePasses, renderBackfill, summarize } from '../../src/commands/backfill.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import type { ColumnCounts } from '../../src/verify/count-versions.js';
import { testRing } from '../support/fixtures.js';

let ring: KeyRing;
beforeAll(async () => {
  ring = await testRing(2, [1, 2, 3]);
});

const sha = (s: string) => createHash('sha256').update(s).digest();
const row = (ctid: string, id: number, ...values: (string | null)[]): ScannedRow => ({ ctid, rowKey: { id: String(id) }, values });

/** Four rows, two columns: (0,1) title only, (0,2) both, (0,3) raw only, (0,4) title only. */
function fourRows(withKeys = true): { plan: ChunkPlan; v: Record<string, string> } {
  const v = {
    t1: encryptValue(Buffer.from('t1'), 1, ring),
    t2: encryptValue(Buffer.from('t2'), 1, ring),
    r2: encryptValue(Buffer.from('r2'), 3, ring),
    r3: encryptValue(Buffer.from('r3'), 1, ring),
    t4: encryptValue(Buffer.from('t4'), 1, ring),
  };
  const rows = [row('(0,1)', 1, v.t1, null), row('(0,2)', 2, v.t2, v.r2), row('(0,3)', 3, null, v.r3), row('(0,4)', 4, v.t4, null)];
  const plan = evaluateRows(withKeys ? rows : rows.map(({ ctid, values }) => ({ ctid, values })), ['title', 'raw'], ring);
  return { plan, v };
}

describe('judgeCas: what a chunk’s compare-and-swap did', () => {
  it('the fast path: rows returned with every column stored as written are rewritten; rows not returned are conflicts', () => {
    const { plan } = fourRows();
    const j = judgeCas(plan, ['title', 'raw'], [{ tid: '(0,1)', kept: [0, 0] }, { tid: '(0,2)', kept: [0, 0] }, { tid: '(0,4)', kept: [0, 0] }], new Map());
    expect(j.written).toEqual([
      { ctid: '(0,1)', column: 'title', rowKey: { id: '1' } },
      { ctid: '(0,2)', column: 'title', rowKey: { id: '2' } },
      { ctid: '(0,2)', column: 'raw', rowKey: { id: '2' } },
      { ctid: '(0,4)', column: 'title', rowKey: { id: '4' } },
    ]);
    expect([j.conflicts, j.replaced, j.failures]).toEqual([1, 0, []]);
  });

  it('a row whose UPDATE raised is quarantined in every column it would have rewritten, with SQLSTATE and constraint, never the message', () => {
    const { plan, v } = fourRows();
    const check = Object.assign(new Error('new row violates check constraint "len" with value v1:secret'), { code: '23514', constraint: 'len' });
    const raised = new Map<string, unknown>([
      ['(0,2)', check],
      ['(0,3)', Object.assign(new Error('row 3 is frozen'), { code: 'P0001' })],
    ]);
    const j = judgeCas(plan, ['title', 'raw'], [{ tid: '(0,1)', kept: [0, 0] }, { tid: '(0,4)', kept: [0, 0] }], raised);
    expect(j.written.map((w) => w.ctid)).toEqual(['(0,1)', '(0,4)']);
    expect(j.conflicts).toBe(0);
    expect(j.failures).toEqual([
      { ctid: '(0,2)', column: 'title', rowKey: { id: '2' }, version: 1, reason: 'update-raised:23514:len', sha256: sha(v.t2!) },
      { ctid: '(0,2)', column: 'raw', rowKey: { id: '2' }, version: 3, reason: 'update-raised:23514:len', sha256: sha(v.r2!) },
      { ctid: '(0,3)', column: 'raw', rowKey: { id: '3' }, version: 1, reason: 'update-raised:P0001', sha256: sha(v.r3!) },
    ]);
    expect(JSON.stringify(j.failures)).not.toMatch(/secret|frozen/);
  });

  it('a column still holding its old value after the UPDATE did not stick; another value is left alone (replaced); keys come from RETURNING when read without', () => {
    const { plan, v } = fourRows(false);
    const j = judgeCas(
      plan,
      ['title', 'raw'],
      [
        { tid: '(0,1)', kept: [1, 0], rowKey: { id: '1' } },
        { tid: '(0,2)', kept: [0, 2], rowKey: { id: '2' } },
        { tid: '(0,3)', kept: [0, 0], rowKey: null },
        { tid: '(0,4)', kept: [0, 0], rowKey: null },
      ],
      new Map(),
    );
    expect(j.failures).toEqual([{ ctid: '(0,1)', column: 'title', rowKey: { id: '1' }, version: 1, reason: 'did-not-stick', sha256: sha(v.t1!) }]);
    expect(j.written.map((w) => [w.ctid, w.column])).toEqual([
      ['(0,2)', 'title'],
      ['(0,3)', 'raw'],
      ['(0,4)', 'title'],
    ]);
    expect([j.conflicts, j.replaced]).toEqual([0, 1]);
    // A row that raised, read without keys: its key is looked up by ctid later (still there, rolled back).
    const raisedOnly = judgeCas(plan, ['title', 'raw'], [], new Map([['(0,4)', { code: '22001' }]]));
    expect(raisedOnly.failures).toEqual([{ ctid: '(0,4)', column: 'title', rowKey: undefined, version: 1, reason: 'update-raised:22001', sha256: sha(v.t4!) }]);
    expect(raisedOnly.conflicts).toBe(3);
  });

  it('isRowError: data errors of the row (22, 23, P0, ...) but not session, lock or connection errors', () => {
    for (const code of ['22001', '22P02', '22021', '23514', '23502', '23505', 'P0001', 'P0004']) expect(isRowError({ code }), code).toBe(true);
    for (const code of ['40P01', '55P03', '57014', '42501', '08006', '53300', 'XX000', undefined]) expect(isRowError({ code }), String(code)).toBe(false);
    expect(isRowError(new Error('ECONNRESET'))).toBe(false);
  });
});

describe('withoutGivenUp: values whose rewrite did not stick are not tried again in the same pass', () => {
  it('drops those values, and rows left with nothing to rewrite', () => {
    const { plan, v } = fourRows();
    const givenUp = new Set([sha(v.t2!).toString('hex'), sha(v.t4!).toString('hex')]);
    const { plan: p, dropped } = withoutGivenUp(plan, ['title', 'raw'], givenUp);
    expect(dropped).toBe(2);
    expect(p.ctids).toEqual(['(0,1)', '(0,2)', '(0,3)']);
    expect(p.olds).toEqual([
      [v.t1, null, null],
      [null, v.r2, v.r3],
    ]);
    expect(p.news[0]![1]).toBeNull();
    expect(p.news[1]![1]).not.toBeNull();
    expect(p.rewrittenKeys.map((k) => [k.ctid, k.column])).toEqual([
      ['(0,1)', 'title'],
      ['(0,2)', 'raw'],
      ['(0,3)', 'raw'],
    ]);
    expect(withoutGivenUp(plan, ['title', 'raw'], new Set())).toEqual({ plan, dropped: 0 });
  });
});

describe('casUpdateSql: the batched CAS reports what is stored', () => {
  const leaf = { schema: 'public', name: 't' };
  it('returns per column whether the new value, the old value or another one is stored (byte-wise), and the key of a row that did not get its new values', () => {
    const sql = casUpdateSql(leaf, ['title', 'raw'], { start: 0, end: 8 }, ['id', 'Region']);
    expect(sql).toContain(`case when v.n0 is null or t."title"::text = v.n0 collate "C" then 0 when t."title"::text = v.o0 collate "C" then 1 else 2 end as k0`);
    expect(sql).toContain(`case when v.n1 is null or t."raw"::text = v.n1 collate "C" then 0 when t."raw"::text = v.o1 collate "C" then 1 else 2 end as k1`);
    // Key names come after the range bounds ($6 start, $7 end).
    expect(sql).toContain(`else jsonb_object($8::text[], array[t."id"::text, t."Region"::text]) end as row_key`);
    expect(casUpdateSql(leaf, ['x'], { start: 5, end: null }, ['id'])).toContain('jsonb_object($5::text[]');
    expect(casUpdateSql(leaf, ['x'], { start: 5, end: null })).not.toContain('row_key');
  });
});

describe('leftBehind: what a pass left, and which relations another pass can help', () => {
  const counts = (table: string, column: string, byVersion: Record<string, number>, quarantined: number | null, nonTargetByLeaf: Record<string, number>): ColumnCounts => ({
    table,
    column,
    byVersion,
    notOurs: 0,
    nulls: 0,
    nonTarget: Object.entries(byVersion).reduce((n, [k, x]) => (k === 'v2' ? n : n + x), 0),
    quarantined,
    nonTargetByLeaf,
  });

  it('nothing left: no columns, nothing to sweep again', () => {
    expect(leftBehind([counts('public.a', 'c', { v2: 10 }, 0, {})], 2)).toEqual({ columns: [], resweep: [] });
  });

  it('values all quarantined are reported but not swept again (another pass would only find them again)', () => {
    const l = leftBehind([counts('public.a', 'c', { v1: 3, v2: 10 }, 3, { 'public.a': 3 }), counts('public.a', 'd', { v1: 1 }, 1, { 'public.a': 1 })], 2);
    expect(l).toEqual({
      columns: [
        { table: 'public.a', column: 'c', remaining: 3, quarantined: 3 },
        { table: 'public.a', column: 'd', remaining: 1, quarantined: 1 },
      ],
      resweep: [],
    });
  });

  it('values not quarantined: the leaves of that table that hold old values are swept again, other tables are not', () => {
    const l = leftBehind(
      [
        counts('public.parted', 'c', { v1: 4, v3: 1, v2: 100 }, 2, { 'public.parted_a': 3, 'public.parted_b': 2 }),
        counts('public.parted', 'd', { v1: 1 }, 0, { 'public.parted_b': 1, 'public.parted_c': 0 }),
        counts('public.other', 'c', { v1: 5 }, 5, { 'public.other': 5 }),
      ],
      2,
    );
    expect(l.columns).toEqual([
      { table: 'public.parted', column: 'c', remaining: 5, quarantined: 2 },
      { table: 'public.parted', column: 'd', remaining: 1, quarantined: 0 },
      { table: 'public.other', column: 'c', remaining: 5, quarantined: 5 },
    ]);
    expect(l.resweep).toEqual([
      { relation: 'public.parted_a', remaining: 3 },
      { relation: 'public.parted_b', remaining: 3 },
    ]);
  });

  it('with --from only the chosen versions count; quarantine entries beyond them do not make it negative; no state (null) counts as none quarantined', () => {
    const l = leftBehind([counts('public.a', 'c', { v1: 2, v3: 7 }, 9, { 'public.a': 9 })], 2, new Set([1]));
    expect(l).toEqual({ columns: [{ table: 'public.a', column: 'c', remaining: 2, quarantined: 2 }], resweep: [] });
    expect(leftBehind([counts('public.a', 'c', { v1: 2 }, null, { 'public.a': 2 })], 2).resweep).toEqual([{ relation: 'public.a', remaining: 2 }]);
  });
});

describe('backfill: passes merged, and the report of what is left and why', () => {
  const result = (relation: string, o: Partial<RelationResult> = {}): RelationResult => ({
    table: relation,
    relation,
    blocks: 10,
    chunks: 2,
    walBytes: 0,
    commits: 2,
    scanned: 5,
    rewritten: 5,
    conflicts: 0,
    quarantined: 0,
    alreadyDone: false,
    ...o,
  });

  it('adds counts of every pass per relation; blocks and quarantined are those of its last pass (which re-examined every row)', () => {
    const merged = mergePasses([
      [result('public.a', { conflicts: 1, quarantined: 2 }), result('public.b', { alreadyDone: true, rewritten: 0, scanned: 0, chunks: 0 })],
      [result('public.a', { rewritten: 1, scanned: 3, quarantined: 2, blocks: 11 })],
      [result('public.a', { rewritten: 0, scanned: 2, quarantined: 2, blocks: 12 })],
    ]);
    expect(merged).toEqual([
      { ...result('public.a'), chunks: 6, scanned: 10, rewritten: 6, conflicts: 1, quarantined: 2, blocks: 12, commits: 6, passes: 3 },
      { ...result('public.b', { alreadyDone: true, rewritten: 0, scanned: 0, chunks: 0 }), passes: 1 },
    ]);
  });

  it('converged: says so, with the passes it took', () => {
    const rel = mergePasses([[result('public.a', { conflicts: 1 })], [result('public.a', { rewritten: 1 })]]);
    const s = summarize(rel, 2, false, 2, { columns: [], resweep: [] });
    expect(s).toMatchObject({ converged: true, remaining: 0, remainingQuarantined: 0, passes: 2, rewritten: 6, conflicts: 1 });
    const text = renderBackfill(rel, s);
    expect(text).toMatch(/swept 2 times: old values found behind the sweep/);
    expect(text).toMatch(/no value of an old version remains in the configured tables \(after 2 passes/);
  });

  it('not converged: per column, how many are quarantined and how many still moving under a live writer, and what to do', () => {
    const rel = mergePasses([[result('public.a', { quarantined: 2 })]]);
    const s = summarize(rel, 2, false, 4, {
      columns: [
        { table: 'public.a', column: 'title', remaining: 5, quarantined: 2 },
        { table: 'public.b', column: 'note', remaining: 1, quarantined: 1 },
      ],
      resweep: [{ relation: 'public.a', remaining: 5 }],
    });
    expect(s).toMatchObject({ converged: false, remaining: 6, remainingQuarantined: 3 });
    const text = renderBackfill(rel, s);
    expect(text).toMatch(/^NOT converged: 6 value\(s\) of an old version remain after 4 pass\(es\):$/m);
    expect(text).toMatch(/^ {2}public\.a\.title: 2 quarantined \(see `pg-rekey status` and pgrekey\.quarantine.*; 3 not quarantined: still being written or moved by the application after 4 pass\(es\)/m);
    expect(text).toMatch(/^ {2}public\.b\.note: 1 quarantined/m);
    expect(text).not.toMatch(/public\.b\.note: .*not quarantined/);
  });

  it('a dry run counts nothing afterwards: no verdict', () => {
    const rel = mergePasses([[result('public.a')]]);
    const s = summarize(rel, 2, true, 1, null);
    expect(s).toMatchObject({ dryRun: true, converged: null, remaining: null });
    expect(renderBackfill(rel, s)).not.toMatch(/converged|remains/);
  });
});
