// The sweep's own array-literal builder must produce exactly what node-postgres sends for a JS array.
import fc from 'fast-check';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { arrayLiteral } from '../../src/db/array-literal.js';

// node-postgres's own conversion of a parameter value (pg/lib/utils.js).
const { prepareValue: pgPrepare } = createRequire(import.meta.url)('pg/lib/utils.js') as { prepareValue: (v: unknown) => unknown };

describe('arrayLiteral', () => {
  it('quotes every element, escapes backslash and double quote, writes null as NULL', () => {
    expect(arrayLiteral([])).toBe('{}');
    expect(arrayLiteral(['(0,1)', '(12,34)'])).toBe('{"(0,1)","(12,34)"}');
    expect(arrayLiteral(['a"b', 'c\\d', null, 'NULL', '', ' x ', '{,}'])).toBe('{"a\\"b","c\\\\d",NULL,"NULL",""," x ","{,}"}');
  });

  it('is the text node-postgres builds for the same array, for any strings and nulls', () => {
    fc.assert(
      fc.property(fc.array(fc.option(fc.string({ unit: 'binary' }), { nil: null })), (xs) => {
        expect(arrayLiteral(xs)).toBe(pgPrepare(xs));
      }),
      { numRuns: 500 },
    );
  });
});
