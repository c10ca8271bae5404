import { describe, expect, it } from 'vitest';
import { StuckValues } from '../../src/daemon/stuck-values.js';

describe('stuck old-version values (run re-sweeps only what stays put)', () => {
  it('a leaf is stuck only when a value seen at the previous check is still in the same row version', () => {
    const s = new StuckValues();
    expect(s.observe(new Map([['public.t', new Set(['(0,1):0:aa'])]]))).toEqual([]);
    // A stale writer: other rows each time (the stream rewrote the earlier ones).
    expect(s.observe(new Map([['public.t', new Set(['(3,7):0:bb'])]]))).toEqual([]);
    // The same row version with the same value twice in a row: stuck.
    expect(s.observe(new Map([['public.t', new Set(['(3,7):0:bb', '(4,1):0:cc'])], ['public.u', new Set(['(0,1):0:dd'])]]))).toEqual(['public.t']);
    s.forget('public.t');
    expect(s.observe(new Map([['public.t', new Set(['(3,7):0:bb'])], ['public.u', new Set(['(0,1):0:dd'])]]))).toEqual(['public.u']);
    s.clear();
    expect(s.observe(new Map([['public.u', new Set(['(0,1):0:dd'])]]))).toEqual([]);
  });

  it('says where the stuck values sit (row version, column, writing xid) and nothing of the values', () => {
    const s = new StuckValues();
    s.observe(new Map([['public.t', new Set(['(3,7):1:bb:901', '(4,1):0:cc:902'])]]));
    expect(s.observe(new Map([['public.t', new Set(['(3,7):1:bb:901', '(5,2):0:ee:950'])]]))).toEqual(['public.t']);
    expect(s.cells('public.t')).toEqual([{ ctid: '(3,7)', column: 1, xmin: '901' }]);
    expect(s.cells('public.u')).toEqual([]);
  });
});
