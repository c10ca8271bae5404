import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ShutdownBound } from '../../src/daemon/shutdown-bound.js';
import type { Logger } from '../../src/logger.js';

function recorder() {
  const lines: { level: string; fields: Record<string, unknown>; msg: string }[] = [];
  const log = {
    warn: (fields: Record<string, unknown>, msg: string) => lines.push({ level: 'warn', fields, msg }),
    error: (fields: Record<string, unknown>, msg: string) => lines.push({ level: 'error', fields, msg }),
  } as unknown as Logger;
  return { log, lines };
}

const never = () => new Promise<void>(() => undefined);

describe('ShutdownBound', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('does nothing until armed, then exits 3 at the bound naming what is still in progress', async () => {
    const { log, lines } = recorder();
    const exits: number[] = [];
    const b = new ShutdownBound(10_000, log, (c) => exits.push(c));
    b.track('stream: the batch in flight', never());
    const done = b.track('sweep: the chunk in flight', Promise.resolve());
    await done;
    vi.advanceTimersByTime(60_000);
    expect(exits).toEqual([]); // not armed
    b.arm('signal');
    b.arm('again'); // the first arm counts
    vi.advanceTimersByTime(9_999);
    expect(exits).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(exits).toEqual([3]);
    expect(lines).toHaveLength(1);
    expect(lines[0]!.level).toBe('error');
    expect(lines[0]!.fields).toMatchObject({ left: ['stream: the batch in flight'], stopReason: 'signal', boundMs: 10_000 });
    expect(lines[0]!.msg).toMatch(/daemon\.shutdown_timeout \(10 s\); exiting anyway \(exit 3\) .*stream: the batch in flight.*replay from the slot/);
  });

  it('after the drain, exits with the run\'s own code and says what it did not wait for', async () => {
    const { log, lines } = recorder();
    const exits: number[] = [];
    const b = new ShutdownBound(3_000, log, (c) => exits.push(c));
    b.arm('signal');
    b.track('a catalog refresh', never());
    b.drained(0);
    b.drained(3); // the first drained code counts
    vi.advanceTimersByTime(3_000);
    expect(exits).toEqual([0]);
    expect(lines[0]!.level).toBe('warn');
    expect(lines[0]!.msg).toMatch(/^drain complete; exiting without waiting any longer \(daemon\.shutdown_timeout 3 s\) for: a catalog refresh$/);
  });

  it('a rejected step is no longer in progress', async () => {
    const { log } = recorder();
    const b = new ShutdownBound(1_000, log, () => undefined);
    const p = b.track('closing', Promise.reject(new Error('x')));
    await expect(p).rejects.toThrow('x');
    expect(b.left()).toEqual([]);
  });
});
