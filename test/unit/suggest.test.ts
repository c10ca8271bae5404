import { describe, expect, it } from 'vitest';
import { closest, didYouMean, editDistance } from '../../src/config/suggest.js';

describe('did you mean', () => {
  it('edit distance', () => {
    expect(editDistance('titel', 'title')).toBe(1);
    expect(editDistance('kitten', 'sitting')).toBe(3);
    expect(editDistance('incident', 'incidents')).toBe(1);
    expect(editDistance('abc', 'xyz', 1)).toBe(2);
  });

  it('a case-only difference comes first, then near names; far names never', () => {
    expect(closest('note', ['Note', 'notes', 'raw_xml'])).toEqual(['Note', 'notes']);
    expect(closest('incident', ['incidents', 'incident_communications', 'cfs_incidents'])).toEqual(['incidents']);
    expect(closest('titel', ['title', 'raw_xml', 'id'])).toEqual(['title']);
    expect(closest('zzz', ['title', 'raw_xml'])).toEqual([]);
  });

  it('renders the hint, or nothing', () => {
    expect(didYouMean('nice_ratio', ['nice-ratio', 'chunk-time'])).toBe(' (did you mean nice-ratio?)');
    expect(didYouMean('note', ['Note'], (c) => `"${c}"`)).toBe(' (did you mean "Note"?)');
    expect(didYouMean('zzz', ['title'])).toBe('');
  });
});
