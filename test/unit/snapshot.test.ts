import { describe, expect, it } from 'vitest';
import { fullXid, hasEnded, parseSnapshot, stillInProgress, xid32 } from '../../src/db/snapshot.js';
import { classifyMiss, isolatedByRow, narrowToStillOld, isRowError, OwnTransactions, rowErrorReason, SanitizedDbError } from '../../src/replication/cas-outcome.js';

const E = 1n << 32n;

describe('snapshots', () => {
  it('parses pg_current_snapshot text', () => {
    const s = parseSnapshot('100:105:100,102');
    expect(s.xmin).toBe(100n);
    expect(s.xmax).toBe(105n);
    expect([...s.xip]).toEqual([100n, 102n]);
    expect(parseSnapshot('7:7:').xip.size).toBe(0);
    expect(() => parseSnapshot('nonsense')).toThrow(/not a pg_snapshot/);
  });

  it('a running xid above xmax is in progress, though not listed in xip', () => {
    // latestCompletedXid = 104, xid 106 running (assigned after it): xmax 105, xip empty.
    const s = parseSnapshot('105:105:');
    expect(hasEnded(106n, s)).toBe(false);
    expect(hasEnded(104n, s)).toBe(true);
    expect(stillInProgress([106, 104], s)).toEqual([106]);
  });

  it('xids listed in xip are in progress; others below xmax have ended', () => {
    const s = parseSnapshot('100:110:100,103');
    expect(stillInProgress([100, 101, 103, 109, 110], s)).toEqual([100, 103, 110]);
  });

  it('maps 32-bit xids to the nearest 64-bit xid of the reference epoch, across wraparound', () => {
    expect(fullXid(5, 3n * E + 10n)).toBe(3n * E + 5n);
    // An xid just below the epoch boundary while the reference is just past it: previous epoch.
    expect(fullXid(0xfffffff0, 3n * E + 10n)).toBe(2n * E + 0xfffffff0n);
    // An in-progress xid above xmax just past the boundary, reference just before it: next epoch.
    expect(fullXid(3, 3n * E - 2n)).toBe(3n * E + 3n);
    expect(xid32(3n * E + 77n)).toBe(77);
    const s = parseSnapshot(`${3n * E - 2n}:${3n * E - 2n}:`);
    expect(stillInProgress([3], s)).toEqual([3]);
  });
});

describe('CAS outcomes', () => {
  it('a miss is superseded when the row is gone or changed, unexplained when it still holds the old value', () => {
    expect(classifyMiss(undefined)).toBe('superseded');
    expect(classifyMiss({ stillOld: false })).toBe('superseded');
    expect(classifyMiss({ stillOld: true })).toBe('still-old');
  });

  it('a miss on one column of two: the one that still holds its old value is tried again alone, the other leaves the work', () => {
    const work = { key: ['7'], rewrite: new Map([['title', 'v1:t'], ['body', 'v1:b']]), readBack: [] };
    const row = { work, olds: ['v1:t', 'v1:b', null], news: ['v2:t', 'v2:b', null] };
    // title was changed (a newer write, or pg-rekey's own flush), body still holds the message's value.
    const narrowed = narrowToStillOld(row, [false, true, true], ['title', 'body', 'other']);
    expect(narrowed).toEqual({ work, olds: [null, 'v1:b', null], news: [null, 'v2:b', null] });
    expect([...work.rewrite.keys()]).toEqual(['body']);
    // Neither, or both, still old: not a partial miss (superseded, or unexplained).
    const fresh = () => ({ work: { key: ['7'], rewrite: new Map([['title', 'v1:t'], ['body', 'v1:b']]), readBack: [] }, olds: ['v1:t', 'v1:b'], news: ['v2:t', 'v2:b'] });
    expect(narrowToStillOld(fresh(), [false, false], ['title', 'body'])).toBeNull();
    expect(narrowToStillOld(fresh(), [true, true], ['title', 'body'])).toBeNull();
    // A column that was not being rewritten counts for nothing.
    expect(narrowToStillOld({ ...fresh(), olds: ['v1:t', null], news: ['v2:t', null] }, [false, true], ['title', 'body'])).toBeNull();
  });

  it('row errors are data/constraint/trigger classes, never session ones', () => {
    for (const code of ['23514', '23505', '22001', 'P0001', '44000']) expect(isRowError({ code })).toBe(true);
    for (const code of ['55P03', '57014', '40P01', '08006', '42501', undefined]) expect(isRowError({ code })).toBe(false);
    expect(rowErrorReason({ code: '23514', constraint: 'title_len', message: 'new row ... Failing row contains (v1:secret)' })).toBe('update-raised:23514:title_len');
    expect(rowErrorReason({ code: 'P0001', message: 'v1:abc' })).toBe('update-raised:P0001');
  });

  it('the stream isolates by row every deterministic error, never a transient or catalog one', () => {
    for (const code of ['23514', 'P0001', '42501', '42883', '0A000']) expect(isolatedByRow({ code })).toBe(true);
    for (const code of ['40001', '40P01', '55P03', '57014', '08006', '53200', 'XX000', '42P01', '42703', undefined, 'ECONNRESET']) expect(isolatedByRow({ code })).toBe(false);
  });

  it('a row-security refusal (42501 from check_enable_rls) is a missing grant: replayed, never isolated and quarantined', () => {
    expect(isolatedByRow({ code: '42501', routine: 'check_enable_rls' })).toBe(false);
    expect(isolatedByRow({ code: '42501', routine: 'aclcheck_error' })).toBe(true);
  });

  it('a sanitized database error keeps the SQLSTATE and drops the message', () => {
    const e = new SanitizedDbError('rewriting public.t', { code: '42501', message: 'permission denied ... v1:AAAA', routine: 'aclcheck_error' });
    expect(e.code).toBe('42501');
    expect(e.message).not.toContain('v1:');
    expect(e.message).toMatch(/SQLSTATE 42501/);
  });

  it("recognises the cells pg-rekey's own transactions wrote, by 32-bit xid (signed as the library parses it, too)", () => {
    const own = new OwnTransactions(2);
    own.add(0xfffffffe, [{ table: 'public.t', key: ['1'], column: 'title' }]);
    expect(own.wroteCell(-2, 'public.t', ['1'], 'title')).toBe(true);
    expect(own.wroteCell(0xfffffffe, 'public.t', ['1'], 'title')).toBe(true);
    // Another column of the same change: the application's value, not pg-rekey's.
    expect(own.wroteCell(-2, 'public.t', ['1'], 'raw_xml')).toBe(false);
    expect(own.wroteCell(-2, 'public.t', ['2'], 'title')).toBe(false);
    own.add(5, [{ table: 'public.t', key: ['1'], column: 'title' }]);
    own.add(6, [{ table: 'public.t', key: ['1'], column: 'title' }]);
    expect(own.wroteCell(-2, 'public.t', ['1'], 'title')).toBe(false); // capacity: the oldest is forgotten
    expect(own.wroteCell(undefined, 'public.t', ['1'], 'title')).toBe(false);
  });
});
