import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics.js';

const sampleOf = (text: string, name: string) => new RegExp(`^${name}(\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)?.[2];

describe('metrics', () => {
  it('a gauge not known yet is declared without a sample; set gives one, forget takes it away again', async () => {
    const m = new Metrics();
    let text = await m.registry.metrics();
    expect(text).toMatch(/^# TYPE pg_rekey_remaining_values gauge$/m);
    expect(sampleOf(text, 'pg_rekey_remaining_values')).toBeUndefined();
    m.remaining.set(0);
    text = await m.registry.metrics();
    expect(sampleOf(text, 'pg_rekey_remaining_values')).toBe('0');
    m.remaining.forget();
    expect(sampleOf(await m.registry.metrics(), 'pg_rekey_remaining_values')).toBeUndefined();
    expect(() => m.remaining.set({ a: 'b' } as never, 1)).toThrow(/no labels/);
  });

  it('process metrics carry the one prefix', async () => {
    const text = await new Metrics().registry.metrics();
    expect(text).toMatch(/^# TYPE pg_rekey_process_cpu_seconds_total counter$/m);
    expect(text).not.toMatch(/process_process_/);
    const names = [...text.matchAll(/^# TYPE (\S+) /gm)].map((x) => x[1]!);
    expect(names.filter((n) => !n.startsWith('pg_rekey_'))).toEqual([]);
  });
});
