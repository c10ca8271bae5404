// Gaps of issue 9 around setup and teardown: setup's fix for an INHERITS child the publication
// does not publish must be a statement that works (`ADD TABLE ONLY child`: `ADD TABLE parent`
// fails on a parent that is a member already), and teardown must not drop the slot while a
// relation that left a configured table still holds old-version values nobody accepted.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, testRing } from '../support/fixtures.js';
import { createWorkerRole, type WorkerRole } from '../support/worker-role.js';
import { cli, writeDaemonFiles } from '../support/daemon.js';

let ring: KeyRing;
const dbs: TestDatabase[] = [];
const ROLE = `inhpub_worker_${process.pid}`;
let worker: WorkerRole | undefined;
const v1 = (text: string) => encryptValue(Buffer.from(text), 1, ring);

async function newDb(prefix: string): Promise<TestDatabase> {
  const db = await createTestDatabase(prefix);
  dbs.push(db);
  return db;
}

beforeAll(async () => {
  ring = await testRing();
});

afterAll(async () => {
  await worker?.drop();
  for (const d of dbs) await d.drop();
});

describe('setup and a publication of an inheritance parent', () => {
  it('a child created after the publication: setup names ADD TABLE ONLY <child> (not ADD TABLE <parent>), and that statement fixes it', async () => {
    const db = await newDb('inh_pubfix');
    worker = await createWorkerRole(db, ROLE, 'pgrekey_inh');
    await db.pool.query(`
      create table memos (id bigint primary key, secret text);
      create table memos_a (primary key (id)) inherits (memos);
      create publication pgrekey_inh for table memos with (publish = 'insert, update');
      create table memos_b (primary key (id)) inherits (memos);
      grant select, update (secret) on memos, memos_a, memos_b to ${ROLE};
    `);
    await insertBatched(db.pool, 'memos_b', ['id', 'secret'], ['bigint', 'text'], [[1, v1('memo 1')]]);
    const files = writeDaemonFiles(worker.url, [{ name: 'memos', columns: ['secret'] }], { replication: { publication: 'pgrekey_inh' } });
    const refused = await cli(files, 'setup');
    expect(refused.code, refused.stdout + refused.stderr).toBe(2);
    expect(refused.stderr).toMatch(/publication pgrekey_inh does not publish public\.memos_b/);
    expect(refused.stderr).not.toMatch(/ADD TABLE public\.memos\b/);
    const fix = /run (ALTER PUBLICATION pgrekey_inh ADD TABLE ONLY public\.memos_b);/.exec(refused.stderr);
    expect(fix, refused.stderr).not.toBeNull();
    // The owner runs exactly what setup printed; then setup goes through.
    await db.pool.query(fix![1]!);
    const ok = await cli(files, 'setup');
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/publication pgrekey_inh: unchanged/);
    const members = await db.pool.query(`select prrelid::regclass::text as rel from pg_publication_rel pr join pg_publication p on p.oid = pr.prpubid where p.pubname = 'pgrekey_inh' order by 1`);
    expect(members.rows.map((r) => r.rel)).toEqual(['memos', 'memos_a', 'memos_b']);
  });
});

describe('teardown and relations that left a configured table', () => {
  it('refuses (exit 2) while a detached partition holds v1 values that are not in ignore:, naming it; tears down once it is accepted', async () => {
    const db = await newDb('teardown_outside');
    await db.pool.query(`
      create table events (region text not null, id bigint not null, secret text, primary key (region, id)) partition by list (region);
      create table events_a partition of events for values in ('a');
      create table events_b partition of events for values in ('b');
    `);
    const rows = (region: string, n: number) => Array.from({ length: n }, (_, i) => [region, i + 1, v1(`${region} ${i + 1}`)]);
    await insertBatched(db.pool, 'events', ['region', 'id', 'secret'], ['text', 'bigint', 'text'], [...rows('a', 30), ...rows('b', 30)]);
    const files = writeDaemonFiles(db.url, [{ name: 'events', columns: ['secret'] }]);
    expect((await cli(files, 'setup')).code).toBe(0);
    const backfill = await cli(files, 'backfill');
    expect(backfill.code, backfill.stdout + backfill.stderr).toBe(0);
    // Old-version values written into a partition after the backfill, then the partition leaves.
    for (let id = 101; id <= 105; id++) await db.pool.query(`insert into events_b values ('b', $1, $2)`, [id, v1(`b ${id}`)]);
    await db.pool.query(`alter table events detach partition events_b`);

    const refused = await cli(files, 'teardown');
    expect(refused.code, refused.stdout + refused.stderr).toBe(2);
    expect(refused.stderr).toMatch(/refusing to tear down: 1 relation\(s\) that left the configured tables still hold old-version values/);
    expect(refused.stderr).toMatch(/public\.events_b was a leaf of public\.events .*holds 5 old-version value/);
    const slots = await db.pool.query(`select count(*)::int as n from pg_replication_slots where database = current_database()`);
    expect(slots.rows[0].n).toBe(1);

    const accepted = writeDaemonFiles(db.url, [{ name: 'events', columns: ['secret'] }], { ignore: ['events_b'] });
    const down = await cli(accepted, 'teardown');
    expect(down.code, down.stdout + down.stderr).toBe(0);
    expect(down.stdout).toMatch(/dropped replication slot/);
  });
});
