import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load-config.js';
import { decisionReport, decodeTgtype, fires, groupTriggers, undecidedProblems, type UpdateTrigger } from '../../src/db/trigger-decision.js';

const trigger = (o: Partial<UpdateTrigger> = {}): UpdateTrigger => ({
  relation: 'public.calls',
  name: 'touch',
  timing: 'BEFORE',
  level: 'ROW',
  state: 'O',
  function: 'touch_row',
  columns: null,
  when: false,
  ...o,
});

describe('which triggers fire on a rewrite', () => {
  it('decodes pg_trigger.tgtype', () => {
    expect(decodeTgtype(1 | 2 | 16)).toEqual({ timing: 'BEFORE', level: 'ROW' });
    expect(decodeTgtype(1 | 16)).toEqual({ timing: 'AFTER', level: 'ROW' });
    expect(decodeTgtype(16)).toEqual({ timing: 'AFTER', level: 'STATEMENT' });
    expect(decodeTgtype(1 | 64 | 16)).toEqual({ timing: 'INSTEAD OF', level: 'ROW' });
  });

  it('origin mode (fire, or undecided) fires ENABLE and ENABLE ALWAYS; replica mode (skip) ENABLE ALWAYS and ENABLE REPLICA', () => {
    expect([fires('O', 'fire'), fires('A', 'fire'), fires('R', 'fire')]).toEqual([true, true, false]);
    expect([fires('O', undefined), fires('A', undefined), fires('R', undefined)]).toEqual([true, true, false]);
    expect([fires('O', 'skip'), fires('A', 'skip'), fires('R', 'skip')]).toEqual([false, true, true]);
  });

  it('a row trigger cloned onto partitions is listed once, with its leaves', () => {
    const g = groupTriggers([trigger({ relation: 'public.p1' }), trigger({ relation: 'public.p2' }), trigger({ name: 'audit', timing: 'AFTER', relation: 'public.p1' })]);
    expect(g.map((x) => [x.trigger.name, x.on])).toEqual([
      ['touch', ['public.p1', 'public.p2']],
      ['audit', ['public.p1']],
    ]);
  });

  it('refuses an undecided table with triggers, naming each; a decided one or one without triggers is no problem', () => {
    const found = [
      { table: 'public.calls', columns: ['secret'], decision: undefined, triggers: [trigger(), trigger({ name: 'audit', timing: 'AFTER', state: 'A', columns: ['secret'], function: 'audit_row' })] },
      { table: 'public.notes', columns: ['body'], decision: undefined, triggers: [] },
      { table: 'public.done', columns: ['body'], decision: 'fire' as const, triggers: [trigger({ relation: 'public.done' })] },
    ];
    const problems = undecidedProblems(found);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^public\.calls: trigger\(s\) fire on an UPDATE of secret/);
    expect(problems[0]).toContain('"touch" BEFORE ROW (ENABLE, function touch_row) on public.calls');
    expect(problems[0]).toContain('"audit" AFTER ROW (ENABLE ALWAYS, UPDATE OF secret, function audit_row) on public.calls');
  });

  it('names a rule ON UPDATE as a rule, and a table with only rules as having rules', () => {
    const rule = trigger({ kind: 'rule', name: 'log_update', timing: 'DO ALSO', level: 'STATEMENT', function: '', when: true });
    const [p] = undecidedProblems([{ table: 'public.ruled', columns: ['secret'], decision: undefined, triggers: [rule] }]);
    expect(p).toMatch(/^public\.ruled: rule\(s\) fire on an UPDATE of secret/);
    expect(p).toContain('rule "log_update" ON UPDATE DO ALSO (ENABLE, with a WHERE condition) on public.calls');
    const [both] = undecidedProblems([{ table: 'public.t', columns: ['c'], decision: undefined, triggers: [rule, trigger()] }]);
    expect(both).toMatch(/^public\.t: trigger\(s\) and rule\(s\) fire/);
  });

  it('reports, under skip, which triggers still fire (ALWAYS, REPLICA) and which do not', () => {
    const [line] = decisionReport([
      { table: 'public.calls', columns: ['secret'], decision: 'skip', triggers: [trigger(), trigger({ name: 'always', state: 'A' }), trigger({ name: 'replica', state: 'R' })] },
    ]);
    expect(line).toMatch(/^table public\.calls: triggers: skip; .*"touch" .* does not fire; STILL FIRING .*"always" .*"replica"/);
    const [fire] = decisionReport([{ table: 'public.calls', columns: ['secret'], decision: 'fire', triggers: [trigger(), trigger({ name: 'replica', state: 'R' })] }]);
    expect(fire).toMatch(/triggers: fire; each rewrite fires "touch" .*; not fired \(ENABLE REPLICA, only in replica mode\): "replica"/);
  });
});

describe('the triggers: decision in the config', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-triggers-'));
  const load = (text: string) => {
    const p = path.join(dir, `c${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(p, text);
    return loadConfig({ config: p }, {});
  };

  it('per table overrides the top level; unset stays undecided', () => {
    const c = load('triggers: skip\ntables:\n  - name: a\n    columns: [x]\n  - name: b\n    columns: [x]\n    triggers: fire\n');
    expect(c.tables.map((t) => t.triggers)).toEqual(['skip', 'fire']);
    expect(load('tables:\n  - name: a\n    columns: [x]\n').tables[0]!.triggers).toBeUndefined();
  });

  it('accepts only fire or skip', () => {
    expect(() => load('triggers: off\ntables:\n  - name: a\n    columns: [x]\n')).toThrow(/problem/);
  });
});
