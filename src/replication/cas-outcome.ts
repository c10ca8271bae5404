import { createHash } from 'node:crypto';

/**
 * What a compare-and-swap that matched nothing means (pure logic).
 *
 * Only once the source transaction is visible (see visibility.ts) is a miss
 * evidence of anything: then the row is re-read by key, and
 * - gone (deleted, or its key changed): superseded, a later message carries it;
 * - a rewritten column holds another value than the message's: superseded by
 *   a newer committed write, which the slot delivers later;
 * - every column still holds the message's old value: nothing explains the
 *   miss (a BEFORE UPDATE trigger returning NULL, an UPDATE policy): retry,
 *   and after a few attempts quarantine it ('not-applied'), never drop it.
 */
export type Miss = 'superseded' | 'still-old';

/** `current`: the row as re-read by key (undefined: not found); `stillOld`: every rewritten column still holds the message's old value. */
export function classifyMiss(current: { stillOld: boolean } | undefined): Miss {
  return current?.stillOld ? 'still-old' : 'superseded';
}

/** SQLSTATE classes of a row's own data, not of the session: the row is quarantined and the work goes on. */
const ROW_ERROR_CLASSES = ['22', '23', 'P0', '44', '2F', '38', '39'];

export function isRowError(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  return typeof code === 'string' && ROW_ERROR_CLASSES.some((c) => code.startsWith(c));
}

/** The quarantine reason of a row whose UPDATE raised: SQLSTATE and constraint name, never the message (it can hold values). */
export function rowErrorReason(err: unknown): `update-raised:${string}` {
  const e = err as { code?: string; constraint?: string };
  const constraint = e.constraint && /^[\w$ .-]{1,63}$/.test(e.constraint) ? `:${e.constraint}` : '';
  return `update-raised:${e.code ?? 'unknown'}${constraint}`;
}

/**
 * Notices rewrites that do not stick: the same old value of the same row and
 * column comes back after pg-rekey rewrote it (an AFTER trigger or a rule that
 * writes the old value back, an application that keeps writing one cached
 * ciphertext). A fresh encryption by an application has a new nonce, so a
 * repeat of the exact value is a loop, not a new write. After `limit`
 * repeats the value is quarantined instead of rewritten again.
 */
export class StickTracker {
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly limit = 3,
    private readonly capacity = 50_000,
  ) {}

  static id(table: string, key: readonly string[], column: string, value: string): string {
    return createHash('sha256').update(JSON.stringify([table, key, column])).update(value).digest('base64');
  }

  /** Records that this value was rewritten; true when it has now come back `limit` times. */
  rewritten(id: string): boolean {
    const n = (this.seen.get(id) ?? 0) + 1;
    this.seen.delete(id);
    this.seen.set(id, n);
    if (this.seen.size > this.capacity) this.seen.delete(this.seen.keys().next().value!);
    return n > this.limit;
  }

  /** Given up on: the stream no longer rewrites this value (the sweep may, and clears its entry). */
  giveUp(id: string): void {
    this.seen.set(id, Number.POSITIVE_INFINITY);
  }

  givenUp(id: string): boolean {
    return this.seen.get(id) === Number.POSITIVE_INFINITY;
  }
}
