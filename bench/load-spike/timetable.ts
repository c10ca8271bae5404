// The open-loop timetable shared by the foreground workload and the stream-latency writer: slot i is
// due at t0 + i / rate whatever happened to earlier ones, so a slow database cannot slow the offered
// load down (no coordinated omission); the caller measures each slot from its due time.

export interface Timetable {
  /** No slot is dispatched after this. */
  stop(): void;
  /** Resolves once `count` slots have been dispatched, or at stop(). */
  finished: Promise<void>;
}

/** Calls `dispatch(due, i)` (due: performance.now() ms) for slots 0, 1, ... at `rate` per second, up to `count`. */
export function openLoop(rate: number, dispatch: (due: number, i: number) => void, count = Infinity): Timetable {
  const interval = 1000 / rate;
  const t0 = performance.now();
  let i = 0;
  let stopped = false;
  let end!: () => void;
  const finished = new Promise<void>((r) => (end = r));
  const tick = () => {
    if (stopped) return end();
    const now = performance.now();
    // Catch up on every slot that fell due while this process was not scheduled.
    for (; i < count && t0 + i * interval <= now; i++) dispatch(t0 + i * interval, i);
    if (i >= count) return end();
    setTimeout(tick, Math.max(0, t0 + i * interval - performance.now()));
  };
  tick();
  return {
    stop() {
      stopped = true;
      end();
    },
    finished,
  };
}
