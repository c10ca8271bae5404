// Schema changes under a running `pg-rekey run`: a table rewritten by ALTER COLUMN ... TYPE while the
// sweep is half way through it, columns added, a configured table dropped with its changes still in flight.
// The daemon adapts (or would stop with a clear message); it never crash-loops and never writes the wrong column.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { decryptValue, encryptValue } from '../../src/crypto/rewrite.js';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, testRing } from '../support/fixtures.js';
import { cli, countPrefix, eventually, startDaemon, writeDaemonFiles, type DaemonFiles, type RunningDaemon } from '../support/daemon.js';

let db: TestDatabase;
let ring: KeyRing;
let files: DaemonFiles;
let daemon: RunningDaemon;

const DEAD = 2000; // rows deleted before the run: the rewrite compacts them away and moves the live rows down
const LIVE = 600;

const v1 = (text: string) => encryptValue(Buffer.from(text), 1, ring);
const plaintext = (v: string) => Buffer.from(decryptValue(v, ring)!).toString();

/** md5 over the given columns of every row, in row text order. */
async function checksum(table: string, cols: string): Promise<string> {
  return (await db.pool.query(`select md5(string_agg(t::text, ',' order by t::text)) as s from (select ${cols} from ${table}) t`)).rows[0].s ?? '';
}

async function segment(relation: string): Promise<{ next_block: number; state: string; generation: number }> {
  const r = await db.pool.query(`select next_block::int, state, generation from pgrekey.sweep_segment where relation = $1`, [relation]);
  return r.rows[0];
}

/** Daemon lines since `from` whose text matches. */
const linesSince = (from: number, re: RegExp) => daemon.proc.lines.slice(from).filter((l) => re.test(l.text)).map((l) => l.text);

beforeAll(async () => {
  db = await createTestDatabase('schema_changes');
  ring = await testRing();
  await db.pool.query(`
    create table retyped (id bigint primary key, amount int not null, secret text, note text, pad text) with (autovacuum_enabled = false);
    create table grows (id bigint primary key, secret text, note text);
    create table doomed (id bigint primary key, secret text);
  `);
  const rows: unknown[][] = [];
  for (let id = 1; id <= DEAD + LIVE; id++) {
    const live = id > DEAD;
    rows.push([id, id * 3, live ? v1(`retyped ${id}`) : encryptValue(Buffer.from('gone'), 2, ring), live ? v1(`note ${id}`) : null, live ? 'p' : 'p'.repeat(200)]);
  }
  await insertBatched(db.pool, 'retyped', ['id', 'amount', 'secret', 'note', 'pad'], ['bigint', 'int', 'text', 'text', 'text'], rows);
  await db.pool.query(`delete from retyped where id <= $1`, [DEAD]);
  const small = (n: number) => Array.from({ length: n }, (_, i) => [i + 1, v1(`secret ${i + 1}`), v1(`note ${i + 1}`)]);
  await insertBatched(db.pool, 'grows', ['id', 'secret', 'note'], ['bigint', 'text', 'text'], small(50));
  await insertBatched(db.pool, 'doomed', ['id', 'secret'], ['bigint', 'text'], small(20).map((r) => r.slice(0, 2)));
  // One block per chunk with a pause after each: slow enough to change the schema half way through `retyped`.
  files = writeDaemonFiles(db.url, [
    { name: 'retyped', columns: ['secret'] },
    { name: 'grows', columns: ['secret'] },
    { name: 'doomed', columns: ['secret'] },
  ], { sweep: { chunk_time: 0, chunk_blocks: 1, nice_ratio: 15 } });
  const setup = await cli(files, 'setup');
  expect(setup.code, setup.stderr).toBe(0);
  daemon = await startDaemon(files);
});

afterAll(async () => {
  if (daemon) await daemon.proc.stop('SIGKILL');
  await db?.drop();
});

describe('schema changes under run', () => {
  it('ALTER COLUMN <other column> TYPE rewrites the table half way through its sweep: swept again from block 0, other columns untouched', async () => {
    const blocks = Number((await db.pool.query(`select pg_relation_size('retyped') / 8192 as b`)).rows[0].b);
    const firstLive = Number((await db.pool.query(`select min((ctid::text::point)[0]) as b from retyped`)).rows[0].b);
    expect(firstLive).toBeGreaterThan(40);
    await eventually('the sweep is half way through the dead rows of retyped', async () => (await segment('public.retyped'))?.next_block >= 25, 20_000);
    const before = await checksum('retyped', 'id, amount, note, pad');
    const node = (await db.pool.query(`select pg_relation_filenode('retyped') as n`)).rows[0].n;
    const from = daemon.proc.lines.length;
    const checkpoint = (await segment('public.retyped')).next_block;

    await db.pool.query(`alter table retyped alter column amount type bigint`);

    expect((await db.pool.query(`select pg_relation_filenode('retyped') as n`)).rows[0].n).not.toBe(node);
    // The live v1 rows moved down, behind the checkpoint the sweep had reached: without a restart they would never be read.
    const moved = await db.pool.query(`select max((ctid::text::point)[0])::int as b, count(*)::int as n from retyped where secret like 'v1:%'`);
    expect(moved.rows[0].n).toBe(LIVE);
    expect(moved.rows[0].b).toBeLessThan(checkpoint);
    expect(Number((await db.pool.query(`select pg_relation_size('retyped') / 8192 as b`)).rows[0].b)).toBeLessThan(blocks / 2);
    // A v1 write after the change goes to the right column; the other columns keep their values.
    await db.pool.query(`insert into retyped (id, amount, secret, note) values (9001, 5000000000, $1, $2)`, [v1('after alter'), v1('note after alter')]);

    const ms = await eventually('every v1 value of retyped rewritten', async () => (await countPrefix(db.pool, 'retyped', 'secret', 'v1:')) === 0, 30_000);
    expect(await checksum('retyped', 'id, amount, note, pad')).not.toBe('');
    expect(await checksum('(select * from retyped where id <> 9001) r', 'id, amount, note, pad')).toBe(before);
    const row = (await db.pool.query(`select amount::text, secret, note from retyped where id = 9001`)).rows[0];
    expect(row.amount).toBe('5000000000');
    expect(plaintext(row.secret)).toBe('after alter');
    expect(row.secret.startsWith('v2:')).toBe(true);
    expect(row.note.startsWith('v1:')).toBe(true);
    expect(plaintext(row.note)).toBe('note after alter');
    for (const r of (await db.pool.query(`select id, secret from retyped where id <> 9001`)).rows) expect(plaintext(r.secret)).toBe(`retyped ${r.id}`);
    const restarted = linesSince(from, /public\.retyped was rewritten/);
    expect(restarted.length, daemon.proc.lines.slice(from).map((l) => l.text).join('\n')).toBeGreaterThan(0);
    console.log(`retyped: ${restarted[0]}`);
    expect((await segment('public.retyped')).generation).toBeGreaterThan(1);
    expect(linesSince(from, /replication connection failed|sweep failed|fatal/i)).toEqual([]);
    console.log(`ALTER COLUMN TYPE mid-sweep: converged ${ms} ms after the change`);
  });

  it('columns added (one of them rewriting the table): new v1 writes are rewritten in the configured column only', async () => {
    await daemon.proc.waitForLine(/sweep complete for every configured table/, { timeoutMs: 20_000 });
    const from = daemon.proc.lines.length;
    const before = await checksum('grows', 'id, note');
    await db.pool.query(`alter table grows add column extra text`);
    await db.pool.query(`alter table grows add column added_at timestamptz not null default clock_timestamp()`); // volatile default: a rewrite
    await db.pool.query(`insert into grows (id, secret, note, extra) values (1000, $1, $2, $3)`, [v1('s 1000'), v1('n 1000'), v1('e 1000')]);
    await db.pool.query(`update grows set secret = $1, extra = $2 where id = 7`, [v1('s 7 updated'), v1('e 7')]);
    const extras = await checksum('grows', 'id, extra, added_at');
    await eventually('new v1 writes rewritten', async () => (await countPrefix(db.pool, 'grows', 'secret', 'v1:')) === 0, 10_000);
    expect(await checksum('grows', 'id, extra, added_at')).toBe(extras);
    expect(await checksum('(select * from grows where id <> 1000) g', 'id, note')).toBe(before);
    const rows = (await db.pool.query(`select id, secret, note, extra from grows where id in (7, 1000) order by id`)).rows;
    expect(rows.map((r) => [plaintext(r.secret), r.secret.slice(0, 3), plaintext(r.extra), r.extra.slice(0, 3), plaintext(r.note), r.note.slice(0, 3)])).toEqual([
      ['s 7 updated', 'v2:', 'e 7', 'v1:', 'note 7', 'v1:'],
      ['s 1000', 'v2:', 'e 1000', 'v1:', 'n 1000', 'v1:'],
    ]);
    expect(linesSince(from, /replication connection failed|sweep failed|fatal/i)).toEqual([]);
  });

  it('a configured table dropped with its changes still in flight: left out with a clear message; the daemon goes on, converges, no crash loop', async () => {
    const from = daemon.proc.lines.length;
    // The insert is decoded and sent after the table is gone: its rewrite can only fail.
    const c = await db.pool.connect();
    try {
      await c.query('begin');
      await c.query(`insert into grows (id, secret) values (2000, $1)`, [v1('s 2000')]);
      await c.query(`insert into doomed (id, secret) values (2000, $1)`, [v1('doomed 2000')]);
      await c.query('drop table doomed');
      await c.query('commit');
    } finally {
      c.release();
    }
    const line = await daemon.proc.waitForLine(/doomed/, { fromIndex: from, timeoutMs: 15_000 });
    console.log(`dropped: ${line.text}`);
    await eventually('the write to the other table in the same transaction rewritten', async () => (await countPrefix(db.pool, 'grows', 'secret', 'v1:')) === 0, 15_000);
    await db.pool.query(`insert into grows (id, secret) values (2001, $1)`, [v1('s 2001')]);
    await eventually('a later write rewritten', async () => (await countPrefix(db.pool, 'grows', 'secret', 'v1:')) === 0, 10_000);
    await daemon.proc.waitForLine(/CONVERGED/, { fromIndex: from, timeoutMs: 15_000 });
    // No loop: the stream failed at most once (the flush into the dropped table), and nothing fails any more.
    const quiet = daemon.proc.lines.length;
    await new Promise((r) => setTimeout(r, 2_500));
    expect(daemon.proc.child.exitCode).toBe(null);
    expect(linesSince(quiet, /failed/)).toEqual([]);
    const streamFailures = linesSince(from, /replication connection failed/);
    expect(streamFailures.length, streamFailures.join('\n')).toBeLessThanOrEqual(1);
    expect(linesSince(from, /sweep failed|fatal/)).toEqual([]);
    expect(linesSince(from, /no longer exists \(dropped\)/)).toHaveLength(1);

    // The config still names the dropped table: commands refuse it clearly (no restart loop of a half-working daemon).
    const verify = await cli(files, 'verify');
    expect(verify.code).toBe(2);
    expect(verify.stderr).toContain('public.doomed: no such table');
    const stopped = await daemon.proc.stop('SIGTERM', 10_000);
    expect(stopped.code).toBe(0);
    const rerun = await cli(files, 'run');
    expect(rerun.code).toBe(2);
    expect(rerun.stderr).toContain('public.doomed: no such table');
    const rest = writeDaemonFiles(db.url, [{ name: 'retyped', columns: ['secret'] }, { name: 'grows', columns: ['secret'] }]);
    const ok = await cli(rest, 'verify');
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
  });
});
