import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { planChunk, percentDone } from '../../src/backfill/chunk-plan.js';
import { evaluateRows, suspectWrongKey, type ScannedRow } from '../../src/backfill/evaluate-rows.js';
import { casUpdateSql, selectChunkParams, selectChunkSql, versionExpr } from '../../src/backfill/sweep-sql.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { decryptValue, encryptValue } from '../../src/crypto/rewrite.js';
import { displayName, parseIdentifierPath, quoteIdent, quoteQualified } from '../../src/db/ident.js';
import { testRing } from '../support/fixtures.js';

let ring: KeyRing;
beforeAll(async () => {
  ring = await testRing(2, [1, 2, 3]);
});

describe('planChunk', () => {
  it('walks fixed ranges and makes the last chunk open-ended', () => {
    expect(planChunk(0, 100, 30)).toEqual({ start: 0, end: 30 });
    expect(planChunk(60, 100, 30)).toEqual({ start: 60, end: 90 });
    expect(planChunk(90, 100, 30)).toEqual({ start: 90, end: null });
    // Exactly reaching the end is the last chunk too: blocks added meanwhile are read.
    expect(planChunk(70, 100, 30)).toEqual({ start: 70, end: null });
    expect(planChunk(0, 0, 30)).toEqual({ start: 0, end: null });
    // Resuming beyond a relation that shrank: one open-ended chunk.
    expect(planChunk(500, 100, 30)).toEqual({ start: 500, end: null });
  });

  it('never plans an empty chunk, and stops at a segment end', () => {
    expect(planChunk(5, 100, 0)).toEqual({ start: 5, end: 6 });
    expect(planChunk(5, 100, 2.9)).toEqual({ start: 5, end: 7 });
    expect(planChunk(0, 100, 30, 50)).toEqual({ start: 0, end: 30 });
    expect(planChunk(30, 100, 30, 50)).toEqual({ start: 30, end: 50 });
  });

  it('reports percent done', () => {
    expect([percentDone(0, 0), percentDone(25, 100), percentDone(150, 100)]).toEqual([100, 25, 100]);
  });
});

describe('evaluateRows', () => {
  const pt = (s: string) => Buffer.from(s);
  const row = (ctid: string, id: number, ...values: (string | null)[]): ScannedRow => ({ ctid, rowKey: { id: String(id) }, values });

  it('rewrites non-target values and leaves rows that need no write out of the CAS arrays', () => {
    const v1 = encryptValue(pt('one'), 1, ring);
    const v3 = encryptValue(pt('three'), 3, ring);
    const v2 = encryptValue(pt('two'), 2, ring);
    const rows = [
      row('(0,1)', 1, v1, null),
      row('(0,2)', 2, v2, 'not ours'), // nothing to do
      row('(0,3)', 3, null, null), // nothing to do
      row('(0,4)', 4, v2, v3),
    ];
    const plan = evaluateRows(rows, ['title', 'raw'], ring);
    expect(plan.ctids).toEqual(['(0,1)', '(0,4)']);
    expect(plan.olds).toEqual([
      [v1, null],
      [null, v3],
    ]);
    expect(plan.news[0]![1]).toBeNull();
    expect(plan.news[1]![0]).toBeNull();
    const [n1, n3] = [plan.news[0]![0]!, plan.news[1]![1]!];
    expect(n1.startsWith('v2:') && n3.startsWith('v2:')).toBe(true);
    expect(Buffer.from(decryptValue(n1, ring)!).toString()).toBe('one');
    expect(Buffer.from(decryptValue(n3, ring)!).toString()).toBe('three');
    expect(plan.rewrittenKeys).toEqual([
      { ctid: '(0,1)', column: 'title', rowKey: { id: '1' } },
      { ctid: '(0,4)', column: 'raw', rowKey: { id: '4' } },
    ]);
    expect(plan.failures).toEqual([]);
    expect([...plan.opened]).toEqual([
      [1, 1],
      [3, 1],
    ]);
  });

  it('records failures with their reason and a fingerprint, and writes nothing for them', () => {
    const good = encryptValue(pt('fine'), 1, ring);
    const body = good.slice(3);
    const sealed = Buffer.from(body, 'base64');
    sealed[30] = sealed[30]! ^ 0x01; // inside the MAC/ciphertext
    const cases: [string, string][] = [
      ['v1:not*base64!', 'bad-base64'],
      ['v1:', 'too-short'],
      [`v1:${sealed.subarray(0, 20).toString('base64')}`, 'too-short'],
      [`v1:${sealed.toString('base64')}`, 'mac-failure'],
      [`v7:${body}`, 'unknown-version'],
    ];
    const rows = cases.map(([value], i) => row(`(1,${i + 1})`, 10 + i, value, good));
    const plan = evaluateRows(rows, ['title', 'other'], ring);
    expect(plan.failures.map((f) => [f.column, f.rowKey?.id, f.version, f.reason])).toEqual(
      cases.map(([, reason], i) => ['title', String(10 + i), reason === 'unknown-version' ? 7 : 1, reason]),
    );
    for (const [i, f] of plan.failures.entries()) {
      expect(f.sha256.equals(createHash('sha256').update(cases[i]![0]).digest())).toBe(true);
    }
    // Every row still has its good second column rewritten; the bad first column is left alone.
    expect(plan.ctids).toHaveLength(cases.length);
    expect(plan.olds[0]!.every((o) => o === null) && plan.news[0]!.every((v) => v === null)).toBe(true);
    expect(plan.news[1]!.every((v) => v !== null && v.startsWith('v2:'))).toBe(true);
    expect([...plan.macFailures]).toEqual([[1, 1]]);
    expect(plan.opened.get(1)).toBe(cases.length);
  });

  it('leaves at-target, not-ours and versions excluded by --from untouched', () => {
    const v2 = encryptValue(pt('t'), 2, ring);
    const v3 = encryptValue(pt('x'), 3, ring);
    const v1 = encryptValue(pt('y'), 1, ring);
    const plan = evaluateRows([row('(0,1)', 1, v2), row('(0,2)', 2, 'V1:abc'), row('(0,3)', 3, v3), row('(0,4)', 4, v1)], ['c'], ring, {
      onlyVersions: new Set([1]),
    });
    expect(plan.ctids).toEqual(['(0,4)']);
    expect(plan.failures).toEqual([]);
  });
});

describe('suspectWrongKey', () => {
  const m = (...pairs: [number, number][]) => new Map(pairs);
  it('flags a version only when its first values all failed, at the threshold', () => {
    expect(suspectWrongKey(m(), m([1, 7]), 8)).toBeNull();
    expect(suspectWrongKey(m(), m([1, 8]), 8)).toBe(1);
    expect(suspectWrongKey(m([1, 1]), m([1, 500]), 8)).toBeNull();
    expect(suspectWrongKey(m([1, 10]), m([1, 1], [3, 9]), 8)).toBe(3);
  });
});

describe('identifiers', () => {
  const hostile = 'a"b; drop table x';
  it('quotes by doubling quotes', () => {
    expect(quoteIdent(hostile)).toBe('"a""b; drop table x"');
    expect(quoteQualified({ schema: 'My Schema', name: hostile })).toBe('"My Schema"."a""b; drop table x"');
    expect(displayName({ schema: 'public', name: 'incidents' })).toBe('public.incidents');
    expect(displayName({ schema: 'public', name: hostile })).toBe('public."a""b; drop table x"');
    expect(() => quoteIdent('a\0b')).toThrow(/NUL/);
  });

  it('parses names as PostgreSQL does, and round-trips quoted ones', () => {
    expect(parseIdentifierPath('Public.Incidents')).toEqual(['public', 'incidents']);
    expect(parseIdentifierPath(quoteQualified({ schema: 'S.1', name: hostile }))).toEqual(['S.1', hostile]);
    expect(parseIdentifierPath('  _x$1  ')).toEqual(['_x$1']);
    expect(parseIdentifierPath('a.b.c')).toEqual(['a', 'b', 'c']);
    for (const bad of ['', 'a.', '.a', 'a..b', '""', '"open', 'a b', '1abc', 'a;b', 'a"b"']) {
      expect(typeof parseIdentifierPath(bad), bad).toBe('string');
    }
  });
});

describe('sweep SQL', () => {
  const leaf = { schema: 'x"; drop schema public; --', name: 'a"b; drop table x' };
  const cols = ['c"1; delete from y', 'plain'];
  /** The SQL with every quoted identifier removed: nothing hostile may remain outside quotes. */
  const outsideQuotes = (sql: string) => sql.replace(/"(?:[^"]|"")*"/g, '<id>');

  it('select: quotes every identifier, passes every value as a parameter', () => {
    const open = selectChunkSql(leaf, cols, ['id"x'], { start: 0, end: null });
    const closed = selectChunkSql(leaf, cols, ['id"x'], { start: 0, end: 10 });
    for (const sql of [open, closed]) {
      expect(sql).toContain('from only "x""; drop schema public; --"."a""b; drop table x" t');
      expect(sql).toContain('t."c""1; delete from y"');
      expect(sql).toContain('t."id""x"::text');
      expect(outsideQuotes(sql)).not.toMatch(/drop|delete|;|--/);
    }
    expect(closed).toMatch(/t\.ctid < format\('\(%s,0\)', \$2::bigint\)::tid/);
    // Open-ended: $1 start, $2 target, $3 versions, $4 key names, $5 the target's prefix.
    expect(open).toContain('starts_with(substr(t."plain", 1, 12) collate "C", $5::text) then false');
    expect(open).not.toContain('$6');
    expect(closed).toContain('$4::int[]');
    expect(closed).toContain('jsonb_object($5::text[]');
    // Without key columns: no key, and no parameter for their names.
    const keyless = selectChunkSql(leaf, cols, null, { start: 0, end: 10 });
    expect(keyless).not.toContain('jsonb_object');
    expect(keyless).toContain('$5::text) then false');
    expect(keyless).not.toContain('$6');
    expect(keyless).toContain('$4::int[]');
    // With wanted versions' prefixes (selectChunkParams): each tested before the regexp.
    const quick = selectChunkSql(leaf, ['c'], null, { start: 0, end: 10 }, 2);
    expect(quick).toContain('case when starts_with(substr(t."c", 1, 12) collate "C", $5::text) then false when starts_with(substr(t."c", 1, 12) collate "C", $6::text) then true when starts_with(substr(t."c", 1, 12) collate "C", $7::text) then true else (');
    expect(selectChunkParams({ start: 0, end: 10 }, 2, undefined, null, [1, 2, 3])).toEqual({ values: [0, 10, 2, null, 'v2:', 'v1:', 'v3:'], fast: 2 });
    expect(selectChunkParams({ start: 4, end: null }, 3, new Set([1]), ['id'], [1, 2, 3])).toEqual({ values: [4, 3, [1], ['id'], 'v3:', 'v1:'], fast: 1 });
  });

  it('CAS update: quotes identifiers, bounds the chunk and guards every rewritten column', () => {
    const sql = casUpdateSql(leaf, cols, { start: 0, end: 8 });
    expect(sql).toContain('update only "x""; drop schema public; --"."a""b; drop table x" as t');
    expect(sql).toContain('"c""1; delete from y" = coalesce(v.n0, t."c""1; delete from y")');
    // Byte comparison (COLLATE "C") whatever the column's collation.
    expect(sql).toContain('(v.n0 is null or t."c""1; delete from y"::text = v.o0 collate "C")');
    expect(sql).toContain('(v.n1 is null or t."plain"::text = v.o1 collate "C")');
    expect(sql).toContain('unnest($1::tid[], $2::text[], $3::text[], $4::text[], $5::text[])');
    expect(sql).toContain(`where t.ctid >= format('(%s,0)', $6::bigint)::tid and t.ctid < format('(%s,0)', $7::bigint)::tid and t.ctid = any($1::tid[])`);
    expect(casUpdateSql(leaf, ['x'], { start: 5, end: null })).toContain(`where t.ctid >= format('(%s,0)', $4::bigint)::tid and t.ctid = any($1::tid[])`);
    expect(casUpdateSql(leaf, ['x'])).toContain('where t.ctid = any($1::tid[]) and t.ctid = v.tid');
    expect(outsideQuotes(sql)).not.toMatch(/drop|delete|;|--/);
  });

  it('reads the version from a prefix slice only, as bytes (COLLATE "C": a nondeterministic collation refuses regular expressions)', () => {
    expect(versionExpr('t."c"')).toBe(`substring(substr(t."c", 1, 12) collate "C" from '^v([1-9][0-9]{0,8}):')::int`);
  });
});
