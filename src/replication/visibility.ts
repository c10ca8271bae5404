import type pg from 'pg';
import type { Logger } from '../logger.js';
import { stillInProgress } from '../db/snapshot.js';
import { currentSnapshot } from '../db/open-transactions.js';
import { sleep } from '../timing.js';

/** The stream stopped while a batch waited for its transactions: nothing was written, the batch replays. */
export class StopWhileWaiting extends Error {
  constructor() {
    super('stopping while waiting for decoded transactions to become visible; the batch replays from the slot');
  }
}

/**
 * Waits until every transaction a batch came from is visible to a fresh
 * snapshot (design.md rule 3, corollary). The walsender decodes and sends a
 * commit once it is flushed, before the committing backend leaves the proc
 * array; with synchronous replication the backend first waits for the
 * standby (with remote_apply, for its replay). A compare-and-swap before then
 * runs on a snapshot that does not see the row and matches nothing.
 *
 * No bound on the wait itself: the application's COMMIT has not returned
 * either, and the batch cannot be acknowledged before its rewrites are done.
 * It says what it waits for, and a stop ends it (the batch replays).
 * Returns how long it waited.
 */
export async function waitUntilVisible(
  db: pg.Pool | pg.ClientBase,
  xids: readonly number[],
  opts: { log?: Logger; signal?: AbortSignal; firstWarnMs?: number; warnEveryMs?: number },
): Promise<number> {
  const started = Date.now();
  let pending = [...new Set(xids)];
  let pause = 1;
  let nextWarn = started + (opts.firstWarnMs ?? 3_000);
  for (;;) {
    const snap = await currentSnapshot(db);
    pending = stillInProgress(pending, snap);
    if (pending.length === 0) return Date.now() - started;
    if (opts.signal?.aborted) throw new StopWhileWaiting();
    if (Date.now() >= nextWarn) {
      opts.log?.warn(
        { xids: pending.slice(0, 10), transactions: pending.length, waitedMs: Date.now() - started },
        'waiting for decoded transactions to become visible before rewriting their rows: their commits are in the WAL but their backends have not finished committing ' +
          '(a synchronous standby that has not confirmed? see pg_stat_replication and synchronous_standby_names); nothing is acknowledged meanwhile',
      );
      nextWarn = Date.now() + (opts.warnEveryMs ?? 10_000);
    }
    await sleep(pause, opts.signal);
    pause = Math.min(pause * 2, 200);
  }
}
