// The replication stream under `pg-rekey run`: real slot, real daemon process.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { createIncidentsTable, insertBatched, testRing, xmlPlaintext, rng, checkLedger, type Ledger } from '../support/fixtures.js';
import { cli, countPrefix, eventually, startDaemon, writeDaemonFiles, type DaemonFiles, type RunningDaemon } from '../support/daemon.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';

let db: TestDatabase;
let files: DaemonFiles;
let ring: KeyRing;
let daemon: RunningDaemon | null = null;

beforeAll(async () => {
  db = await createTestDatabase('stream');
  ring = await testRing();
  await createIncidentsTable(db.pool);
  await db.pool.query(`alter table incidents add column note text`); // not configured
  await db.pool.query(`create table other (id bigint primary key, title text)`); // not configured
  files = writeDaemonFiles(db.url, [{ name: 'incidents', columns: ['title', 'raw_xml'] }]);
  const setup = await cli(files, 'setup');
  expect(setup.code, setup.stderr).toBe(0);
});

afterAll(async () => {
  if (daemon) await daemon.proc.stop('SIGKILL');
  await db.drop();
});

describe('pg-rekey run', () => {
  it('rewrites a new v1 INSERT to v2 within a bounded time, leaves v2, unconfigured columns and tables alone', async () => {
    daemon = await startDaemon(files);
    // The sweep of the (empty) table must be over, so what follows is the stream's work alone.
    await daemon.proc.waitForLine(/sweep complete for every configured table/);
    const v2 = encryptValue(Buffer.from('already new'), 2, ring);
    const v1note = encryptValue(Buffer.from('note stays v1'), 1, ring);
    await db.pool.query(`insert into incidents (id, title, note) values (1, $1, $2), (2, $3, null)`, [encryptValue(Buffer.from('fresh v1 write'), 1, ring), v1note, v2]);
    await db.pool.query(`insert into other values (1, $1)`, [v1note]);
    const ms = await eventually('v1 insert rewritten', async () => (await countPrefix(db.pool, 'incidents', 'title', 'v1:')) === 0, 10_000);
    expect(ms).toBeLessThan(10_000);
    const rows = (await db.pool.query(`select id, title, note from incidents order by id`)).rows;
    expect(rows[0].title.startsWith('v2:')).toBe(true);
    expect(rows[0].note).toBe(v1note);
    expect(rows[1].title).toBe(v2);
    expect((await db.pool.query(`select title from other`)).rows[0].title).toBe(v1note);
    const metrics = await (await fetch(`${daemon.httpUrl}/metrics`)).text();
    expect(metrics, metrics.split("\n").filter((l) => l.startsWith("pg_rekey_rewrites")).join("\n")).toMatch(/pg_rekey_rewrites_total\{source="stream",table="public.incidents"\} 1/);
    expect((await fetch(`${daemon.httpUrl}/readyz`)).status).toBe(200);
  });

});

describe("the 'u' path (unchanged TOAST)", () => {
  let db2: TestDatabase;
  afterAll(async () => {
    if (daemon) await daemon.proc.stop('SIGKILL');
    daemon = null;
    await db2?.drop();
  });

  it('rewrites a TOASTed v1 column that arrives as unchanged when only another column is updated', async () => {
    if (daemon) await daemon.proc.stop('SIGTERM');
    daemon = null;
    db2 = await createTestDatabase('stream_u');
    await db2.pool.query(`create table calls (id bigint primary key, status text not null default 'open', title text, raw_xml text)`);
    // Written before the slot exists: only the sweep (slowed down here) or the 'u' path can reach them.
    const rand = rng(11);
    const filler: unknown[][] = [];
    for (let id = 1; id <= 6000; id++) filler.push([id, encryptValue(Buffer.from(`call ${id}`), 1, ring)]);
    await insertBatched(db2.pool, 'calls', ['id', 'title'], ['bigint', 'text'], filler);
    const pt = xmlPlaintext(9999, rand);
    await db2.pool.query(`insert into calls (id, raw_xml) values (9999, $1)`, [encryptValue(pt, 1, ring)]);
    const lastBlock = Number((await db2.pool.query(`select (ctid::text::point)[0] as b from calls where id = 9999`)).rows[0].b);
    expect(lastBlock).toBeGreaterThan(20);
    const f = writeDaemonFiles(db2.url, [{ name: 'calls', columns: ['title', 'raw_xml'] }], { sweep: { chunk_time: 0, chunk_blocks: 1, nice_ratio: 100 } });
    expect((await cli(f, 'setup')).code).toBe(0);
    daemon = await startDaemon(f);
    await db2.pool.query(`update calls set status = 'closed' where id = 9999`);
    await eventually('u-path row rewritten', async () => (await countPrefix(db2.pool, 'calls', 'raw_xml', 'v1:')) === 0, 10_000);
    const swept = Number((await db2.pool.query(`select next_block from pgrekey.sweep_segment`)).rows[0].next_block);
    expect(swept).toBeLessThan(lastBlock); // the sweep had not got there: the stream did it
    const ledger: Ledger = new Map([[9999, pt]]);
    const check = await checkLedger(db2.pool, 'calls', 'raw_xml', ledger, ring);
    expect(check.mismatched).toEqual([]);
    expect(check.checked).toBe(1);
  });
});
