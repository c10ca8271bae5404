import { describe, expect, it } from 'vitest';
import type pg from 'pg';
import { Fenced, FENCED_SQLSTATE, isFencedError } from '../../src/daemon/leader-term.js';
import { watchQueries } from '../../src/daemon/term-pool.js';
import { describeLeadership } from '../../src/state/leadership.js';

const fenced = Object.assign(new Error('pg-rekey FENCED: ...'), { code: FENCED_SQLSTATE });

/** A stand-in for a pg client: fails every query with `err`, in the promise or the callback form. */
function fakeClient(err: Error | null): pg.PoolClient {
  return {
    query(...args: unknown[]) {
      const cb = args[args.length - 1];
      if (typeof cb === 'function') {
        queueMicrotask(() => (cb as (e: Error | null, r?: unknown) => void)(err, err ? undefined : { rows: [] }));
        return undefined;
      }
      return err ? Promise.reject(err) : Promise.resolve({ rows: [] });
    },
  } as unknown as pg.PoolClient;
}

describe('the term pool reports refused writes', () => {
  it('sees a FENCED error of the promise form and still rejects to the caller', async () => {
    const seen: unknown[] = [];
    const c = fakeClient(fenced);
    watchQueries(c, (e) => seen.push(e));
    await expect(c.query('update pgrekey.daemon set pid = 1')).rejects.toBe(fenced);
    expect(seen).toEqual([fenced]);
  });

  it('sees an error of the callback form (pg-pool uses it) and still calls back with it', async () => {
    const seen: unknown[] = [];
    const c = fakeClient(fenced);
    watchQueries(c, (e) => seen.push(e));
    const got = await new Promise((resolve) => (c.query as unknown as (t: string, cb: (e: unknown) => void) => void)('select 1', resolve));
    expect(got).toBe(fenced);
    expect(seen).toEqual([fenced]);
  });

  it('passes successes through untouched', async () => {
    const seen: unknown[] = [];
    const c = fakeClient(null);
    watchQueries(c, (e) => seen.push(e));
    await expect(c.query('select 1')).resolves.toEqual({ rows: [] });
    expect(seen).toEqual([]);
  });

  it('tells a FENCED error from others by SQLSTATE only', () => {
    expect(isFencedError(fenced)).toBe(true);
    expect(isFencedError(Object.assign(new Error('pg-rekey FENCED'), { code: '40001' }))).toBe(false);
    expect(isFencedError(null)).toBe(false);
    const f = new Fenced('s1', '3', "the slot's current term is 4");
    expect(f.message).toMatch(/^FENCED: .*term 3.*current term is 4/);
    expect(f.hint).toMatch(/pg-rekey status/);
  });
});

describe('status: leader and standbys', () => {
  it('names the term, the leader and each standby', () => {
    const lines = describeLeadership({
      leader: { term: 4, host: 'a', pid: 10, since: new Date(0) },
      standbys: [{ host: 'b', pid: 11, startedAt: new Date(0), heartbeatAt: new Date(0) }],
    });
    expect(lines.join('\n')).toMatch(/leader: term 4, started by pid 10 on a/);
    expect(lines.join('\n')).toMatch(/standbys \(run --standby\): pid 11 on b/);
    expect(describeLeadership({ leader: null, standbys: [] })).toEqual(['  standbys: none']);
  });
});
