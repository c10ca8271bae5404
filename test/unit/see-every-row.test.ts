// The pure parts of "see every row" (issue 9, items 2-4): the `ignore:` key, verify's verdict and
// its "outside the configured tables" section, the unlogged refusals and the view run follows.
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load-config.js';
import type { TableInfo } from '../../src/db/catalog.js';
import { countedLeaves, followedView, unloggedBackfillWarning, unloggedProblems } from '../../src/db/unlogged.js';
import { ConfigError, describeError } from '../../src/errors.js';
import { renderVerify, type VerifyReport } from '../../src/commands/verify.js';
import { blocksConvergence, outsideProblems, type OutsideRelation } from '../../src/verify/outside.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-ser-'));
let n = 0;
const file = (text: string) => {
  const p = path.join(dir, `c${n++}.yaml`);
  writeFileSync(p, text);
  return p;
};
const TABLES = 'tables:\n  - name: incidents\n    columns: [title]\n';

const table = (o: Partial<TableInfo> = {}): TableInfo => ({
  config: { schema: 'public', name: 'logs', columns: ['secret'] },
  display: 'public.logs',
  quoted: '"public"."logs"',
  oid: 1,
  partitioned: true,
  keyColumns: ['id'],
  keySource: 'primary key',
  leaves: [{ schema: 'public', name: 'logs_1' }, { schema: 'public', name: 'logs_2' }],
  unlogged: [],
  ...o,
});

const outside = (o: Partial<OutsideRelation> = {}): OutsideRelation => ({
  relation: 'public.events_a',
  wasPartOf: 'public.events',
  ignored: false,
  columns: [{ table: 'public.events_a', column: 'secret', byVersion: { v1: 7, v2: 3 }, notOurs: 0, nulls: 1, nonTarget: 7, quarantined: null, nonTargetByLeaf: { 'public.events_a': 7 } }],
  remaining: 7,
  error: null,
  ...o,
});

const report = (o: Partial<VerifyReport> = {}): VerifyReport => ({
  target: 'v2',
  converged: false,
  remaining: 0,
  quarantined: 0,
  columns: [{ table: 'public.events', column: 'secret', byVersion: { v2: 20 }, notOurs: 0, nulls: 0, nonTarget: 0, quarantined: 0, nonTargetByLeaf: {} }],
  openTransactions: [],
  unfollowed: [],
  outside: [],
  ignore: [],
  outsideConfiguration: null,
  outsideConfigurationError: null,
  decrypt: null,
  problems: [],
  rollout: null,
  ...o,
});

describe('ignore:', () => {
  it('defaults to none; takes table or schema.table, parsed like SQL names', () => {
    expect(loadConfig({ config: file(TABLES) }, {}).ignore).toEqual([]);
    const c = loadConfig({ config: file(`${TABLES}ignore: [incidents_2019, archive."Old Calls", Public.X]\n`) }, {});
    expect(c.ignore).toEqual([
      { schema: 'public', name: 'incidents_2019' },
      { schema: 'archive', name: 'Old Calls' },
      { schema: 'public', name: 'x' },
    ]);
  });

  it('refuses a name with three parts or a broken quote, naming the entry', () => {
    let text = '';
    try {
      loadConfig({ config: file(`${TABLES}ignore: [a.b.c, '"open']\n`) }, {});
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      text = describeError(e);
    }
    expect(text).toContain('ignore[0]: use table or schema.table');
    expect(text).toContain('ignore[1]: unterminated quoted identifier');
  });
});

describe('relations outside the configured tables', () => {
  it('hold convergence back while they hold old-version values (or cannot be counted), unless ignored', () => {
    expect(blocksConvergence(outside())).toBe(true);
    expect(blocksConvergence(outside({ remaining: null, columns: null, error: 'cannot count it: permission denied' }))).toBe(true);
    expect(blocksConvergence(outside({ remaining: 0 }))).toBe(false);
    expect(blocksConvergence(outside({ ignored: true }))).toBe(false);
    expect(outsideProblems([outside()])).toEqual([expect.stringMatching(/^public\.events_a was a leaf of public\.events .*holds 7 old-version value\(s\).*`tables:`.*`ignore:`/)]);
  });

  it('verify lists them with their counts and never says converged over one that holds old values', () => {
    const text = renderVerify(report({ outside: [outside()] }));
    expect(text).toContain('outside the configured tables');
    expect(text).toMatch(/public\.events_a\s+\|?\s*public\.events/);
    expect(text).toMatch(/NOT converged: 1 of them hold old-version values/);
    expect(text).not.toMatch(/^converged/m);
    const accepted = renderVerify(report({ converged: true, outside: [outside({ ignored: true })], ignore: ['public.events_a'] }));
    expect(accepted).toMatch(/^converged/m);
    expect(accepted).toContain('ignored (`ignore:`): public.events_a (7 old-version value(s) stay unreadable without the old key)');
  });

  it('verify names leaves the stream does not follow', () => {
    const text = renderVerify(report({ unfollowed: ['public.logs_2 (a leaf of public.logs) is UNLOGGED: ...'] }));
    expect(text).toContain('NOT converged: 1 relation(s) of the configured tables are not followed by the stream');
    expect(text).toContain('public.logs_2 (a leaf of public.logs) is UNLOGGED');
  });
});

describe('unlogged leaves', () => {
  const t = table({ unlogged: [{ schema: 'public', name: 'logs_2' }] });

  it('run and setup refuse each one with the fix; backfill only warns', () => {
    expect(unloggedProblems([table()])).toEqual([]);
    expect(unloggedProblems([t])).toEqual([expect.stringMatching(/^public\.logs_2 \(a leaf of public\.logs\) is UNLOGGED .*ALTER TABLE public\.logs_2 SET LOGGED/)]);
    expect(unloggedBackfillWarning([table()])).toBeNull();
    expect(unloggedBackfillWarning([t])).toMatchObject({ relations: ['public.logs_2'], message: expect.stringMatching(/not followed/) });
  });

  it('run follows the table without them, and still counts them', () => {
    const f = followedView(t);
    expect(f.leaves).toEqual([{ schema: 'public', name: 'logs_1' }]);
    expect(countedLeaves(f)).toEqual([{ schema: 'public', name: 'logs_1' }, { schema: 'public', name: 'logs_2' }]);
    expect(countedLeaves(t)).toEqual(t.leaves);
    expect(followedView(table())).toEqual(table());
  });
});
