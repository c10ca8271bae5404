import { describe, expect, it } from 'vitest';
import { prettyChunk, prettyLine } from '../../src/terminal/pretty-log.js';
import { StderrLine } from '../../src/terminal/stderr-line.js';

describe('pretty log lines', () => {
  it('ISO time, level name, component, message, then the fields', () => {
    const line = prettyLine({ level: 40, time: Date.UTC(2026, 11, 2, 3, 4, 5, 6), pid: 7, name: 'pg-rekey', component: 'sweep', msg: 'values could not be rewritten', quarantined: 2, block: 8 });
    expect(line).toBe('2026-12-02T03:04:05.006Z WARN  sweep      values could not be rewritten  quarantined=2 block=8');
  });

  it('quotes strings with spaces, flattens one level of objects, keeps arrays as JSON', () => {
    const line = prettyLine({ level: 50, time: 0, msg: 'failed', err: { type: 'Error', message: 'no such table' }, relations: ['a', 'b'], note: 'x y' });
    expect(line).toContain('ERROR -          failed');
    expect(line).toContain('err.type=Error err.message="no such table"');
    expect(line).toContain('relations=["a","b"] note="x y"');
  });

  it('colours only the level when asked', () => {
    expect(prettyLine({ level: 30, time: 0, msg: 'm' }, { colour: true })).toContain('\x1b[32mINFO \x1b[0m');
    expect(prettyLine({ level: 30, time: 0, msg: 'm' })).not.toContain('\x1b[');
  });

  it('a chunk of several JSON lines becomes as many lines; a line that is not JSON passes through', () => {
    const out = prettyChunk(`${JSON.stringify({ level: 30, time: 0, msg: 'a' })}\nnot json\n`);
    expect(out.split('\n')).toEqual([expect.stringContaining('INFO'), 'not json', '']);
  });
});

describe('the stderr status line', () => {
  it('a log line clears the bar, is written whole on its own line, and the bar is drawn again under it', () => {
    let out = '';
    const line = new StderrLine({ write: (t: string) => (out += t) });
    line.log('before\n');
    line.draw('[##..] 50%');
    line.log('a log line\n');
    line.draw('[###.] 75%');
    line.end('done');
    line.log('after\n');
    // What a terminal shows: apply \r and erase-line.
    const screen: string[] = [''];
    for (const part of out.split(/(\r\x1b\[K|\n)/)) {
      if (part === '\r\x1b[K') screen[screen.length - 1] = '';
      else if (part === '\n') screen.push('');
      else screen[screen.length - 1] += part;
    }
    expect(screen).toEqual(['before', 'a log line', 'done', 'after', '']);
  });
});
