// Pure parts of verify --decrypt and discover: the value check, the tally, random block ranges,
// the tables: snippet.
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { checkValue, encryptValue } from '../../src/crypto/rewrite.js';
import { emptyColumn, tally, totals } from '../../src/verify/deep-tally.js';
import { sampleRanges } from '../../src/verify/deep-verify.js';
import { proofRanges } from '../../src/crypto/target-proof.js';
import { renderSnippet, unconfiguredOld, type DiscoveredColumn } from '../../src/discover/findings.js';
import { parseIdentifierPath } from '../../src/db/ident.js';
import { KEY_HEX, rng, testRing } from '../support/fixtures.js';

describe('checkValue', () => {
  it('opens with the key of the value\'s own version, and says why not', async () => {
    const ring = await testRing();
    const stray = await testRing(2, [1, 2], { 2: KEY_HEX[9]! });
    const targetOnly = await testRing(2, [2]);
    expect(checkValue(encryptValue(Buffer.from('x'), 2, ring), ring)).toEqual({ version: 2, outcome: 'opened' });
    expect(checkValue(encryptValue(Buffer.from('x'), 1, ring), ring)).toEqual({ version: 1, outcome: 'opened' });
    expect(checkValue(encryptValue(Buffer.from('x'), 2, stray), ring)).toEqual({ version: 2, outcome: 'mac-failure' });
    expect(checkValue(encryptValue(Buffer.from('x'), 1, ring), targetOnly)).toEqual({ version: 1, outcome: 'no-key' });
    expect(checkValue('v2:AAAA', ring)).toEqual({ version: 2, outcome: 'too-short' });
    expect(checkValue('v2:not base64!', ring)).toEqual({ version: 2, outcome: 'bad-base64' });
    expect(checkValue('plain text', ring)).toBeNull();
  });
});

describe('tally', () => {
  it('counts per version, and totals split target and old failures', () => {
    const c = emptyColumn('public.t', 'c');
    expect(tally(c, { version: 2, outcome: 'opened' })).toBe('opened');
    expect(tally(c, { version: 2, outcome: 'mac-failure' })).toBe('failed');
    expect(tally(c, { version: 1, outcome: 'bad-base64' })).toBe('failed');
    expect(tally(c, { version: 3, outcome: 'no-key' })).toBe('no-key');
    expect(c).toMatchObject({ read: { v1: 1, v2: 2, v3: 1 }, opened: { v2: 1 }, failed: { v1: 1, v2: 1 }, noKey: { v3: 1 }, reasons: { 'mac-failure': 1, 'bad-base64': 1 } });
    expect(totals([c], 2)).toEqual({ targetFailed: 1, oldFailed: 1, notChecked: 1, read: 4 });
  });
});

describe('sampleRanges', () => {
  it('hands out distinct random ranges within the relation, up to the budget', () => {
    const s = sampleRanges(10_000, 64, rng(7));
    const starts: number[] = [];
    for (let x = s.next(); x !== null; x = s.next()) starts.push(x);
    expect(starts.length).toBe(16);
    expect(new Set(starts).size).toBe(16);
    for (const b of starts) expect(b % 4 === 0 && b >= 0 && b < 10_000).toBe(true);
    expect(s.budget).toBe(64);
  });

  it('covers every range of a relation smaller than the budget, each once', () => {
    const s = sampleRanges(21, 1000, rng(3));
    const starts: number[] = [];
    for (let x = s.next(); x !== null; x = s.next()) starts.push(x);
    expect(starts.sort((a, b) => a - b)).toEqual([0, 4, 8, 12, 16, 20]);
  });
});

const found = (o: Partial<DiscoveredColumn>): DiscoveredColumn => ({
  relation: 'public.incidents',
  kind: 'table',
  configName: 'public.incidents',
  column: 'notes',
  type: 'text',
  json: false,
  rewritable: true,
  configured: null,
  byVersion: { v1: 3 },
  oldValues: 3,
  rowsRead: 10,
  exact: true,
  ...o,
});

describe('renderSnippet', () => {
  it('adds found columns to configured tables and new ones, as YAML the config parses back', () => {
    const snippet = renderSnippet(
      [{ schema: 'public', name: 'incidents', columns: ['title'], display: 'public.incidents' }],
      [
        found({}),
        found({ relation: 'public.calls_b', kind: 'partition', configName: 'public.calls', column: 'note', exact: false }),
        found({ relation: '"CAD"."Call Notes"', configName: '"CAD"."Call Notes"', column: 'Body Text' }),
        found({ relation: 'public.mv', kind: 'matview', configName: 'public.mv', column: 'title' }),
        found({ relation: 'public.events', configName: 'public.events', column: 'payload', json: true, rewritable: false, type: 'jsonb' }),
        found({ relation: 'public.codes', configName: 'public.codes', column: 'code', rewritable: false, type: 'character(60)' }),
        found({ column: 'title', configured: 'public.incidents' }),
      ],
    );
    const doc = parse(snippet) as { tables: { name: string; columns: string[] }[] };
    expect(doc.tables.map((t) => [parseIdentifierPath(t.name), t.columns.map((c) => parseIdentifierPath(c))])).toEqual([
      [['public', 'incidents'], [['title'], ['notes']]],
      [['public', 'calls'], [['note']]],
      [['CAD', 'Call Notes'], [['Body Text']]],
    ]);
    expect(snippet).toContain('note: v1 3 in the rows sampled');
    expect(snippet).toMatch(/# public\.events\.payload \(jsonb\): envelopes inside JSON/);
    expect(snippet).toMatch(/# public\.codes\.code \(character\(60\)\): .*text\/varchar only/);
    expect(snippet).not.toContain('public.mv');
  });

  it('unconfiguredOld: only columns outside the configuration holding old values', () => {
    expect(unconfiguredOld([found({}), found({ configured: 'public.incidents' }), found({ oldValues: 0, byVersion: { v2: 4 } })]).length).toBe(1);
  });
});

describe('the target-key proof\'s block ranges', () => {
  it('the edges first, then the middle: whole within the budget, else windows spread evenly over it', () => {
    expect(proofRanges(0)).toEqual([[0, 0]]);
    expect(proofRanges(500)).toEqual([[0, 500]]);
    expect(proofRanges(620)).toEqual([[0, 256], [364, 620], [256, 364]]);
    const big = proofRanges(1_000_000, 16_384, 32);
    expect(big.slice(0, 2)).toEqual([[0, 256], [999_744, 1_000_000]]);
    const middle = big.slice(2);
    expect(middle).toHaveLength(32);
    expect(middle[0]![0]).toBe(256);
    expect(middle.at(-1)![1]).toBe(999_744);
    expect(middle.reduce((n, [a, b]) => n + b - a, 0)).toBeLessThanOrEqual(16_384);
    // Spread: no gap between windows wider than 1/31 of the middle.
    for (let i = 1; i < middle.length; i++) expect(middle[i]![0] - middle[i - 1]![0]).toBeLessThanOrEqual(Math.ceil((999_744 - 256) / 31));
  });
});
