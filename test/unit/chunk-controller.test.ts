import { describe, expect, it } from 'vitest';
import { ChunkController } from '../../src/throttle/chunk-controller.js';

const base = { targetMs: 100, initialBlocks: 8, minBlocks: 1, maxBlocks: 4096 };

/** Simulates a relation where each block costs `msPerBlock(i)` ms for chunk i. */
function run(c: ChunkController, chunks: number, msPerBlock: (i: number) => number): { sizes: number[]; times: number[] } {
  const sizes: number[] = [];
  const times: number[] = [];
  for (let i = 0; i < chunks; i++) {
    const b = c.next();
    const t = b * msPerBlock(i);
    sizes.push(b);
    times.push(t);
    c.observe(b, b * 50, t);
  }
  return { sizes, times };
}

describe('ChunkController', () => {
  it('starts small and grows at most 2x per chunk toward the target', () => {
    const { sizes, times } = run(new ChunkController(base), 12, () => 0.5); // 200 blocks fit in 100 ms
    expect(sizes[0]).toBe(8);
    for (let i = 1; i < sizes.length; i++) expect(sizes[i]!).toBeLessThanOrEqual(sizes[i - 1]! * 2);
    expect(sizes.at(-1)).toBe(200);
    expect(times.at(-1)).toBeCloseTo(100, 0);
  });

  it('reacts to a step to a slower region within two chunks', () => {
    const c = new ChunkController(base);
    run(c, 15, () => 0.5); // converged at 200 blocks
    // TOAST-heavy region: 10x slower. The first chunk there overshoots (1000 ms); the next must be near target.
    const { times } = run(c, 3, () => 5);
    expect(times[0]).toBeCloseTo(1000, 0);
    expect(times[1]!).toBeLessThanOrEqual(150);
    expect(times[2]!).toBeLessThanOrEqual(150);
  });

  it('a single spike does not collapse the size for long', () => {
    const c = new ChunkController(base);
    run(c, 15, () => 0.5);
    const { sizes } = run(c, 12, (i) => (i === 0 ? 5 : 0.5)); // one slow chunk, then normal again
    expect(sizes[1]!).toBeLessThan(50); // shrank right after the spike
    expect(sizes.at(-1)!).toBeGreaterThanOrEqual(190); // and grew back within ~a dozen chunks
  });

  it('stays near the target under noise', () => {
    let seed = 1;
    const noise = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 0.6 + 0.7; // 0.7..1.3
    const { times } = run(new ChunkController(base), 200, () => 0.5 * noise());
    const tail = times.slice(50);
    const mean = tail.reduce((a, b) => a + b, 0) / tail.length;
    expect(mean).toBeGreaterThan(70);
    expect(mean).toBeLessThan(130);
    expect(Math.max(...tail)).toBeLessThan(300);
  });

  it('respects the block bounds and fixed mode', () => {
    const bounded = run(new ChunkController({ ...base, maxBlocks: 64 }), 20, () => 0.01);
    expect(Math.max(...bounded.sizes)).toBe(64);
    const floor = run(new ChunkController({ ...base, minBlocks: 4 }), 20, () => 1000);
    expect(Math.min(...floor.sizes)).toBe(4);
    const fixed = run(new ChunkController({ ...base, targetMs: 0, initialBlocks: 32 }), 10, (i) => (i % 2 ? 5 : 0.1));
    expect(new Set(fixed.sizes)).toEqual(new Set([32]));
  });

  it('keeps an EWMA of rows per second and can be retuned', () => {
    const c = new ChunkController(base);
    c.observe(8, 1000, 100);
    expect(c.rate).toBe(10_000);
    c.observe(8, 0, 100);
    expect(c.rate).toBeCloseTo(7000, 0);
    run(c, 15, () => 0.5);
    c.retune({ targetMs: 50 });
    const { times } = run(c, 3, () => 0.5);
    expect(times.at(-1)!).toBeLessThanOrEqual(55);
  });

  it('shrinks to a quarter after a statement timeout and learns again from there', () => {
    const c = new ChunkController(base);
    run(c, 15, () => 0.5); // 200 blocks
    c.shrink();
    expect(c.next()).toBe(50);
    const { sizes } = run(c, 4, () => 0.5);
    expect(sizes[1]!).toBeLessThanOrEqual(100); // grows back at most 2x per chunk
  });
});
