// Issue 9, item 7: pg-rekey's rewrites carry a replication origin (PostgreSQL 16+), so other
// logical consumers (origin = none) can skip them, and its own stream skips them too; rewrites
// that fire triggers carry none (the stream must see what the triggers wrote).
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, testRing } from '../support/fixtures.js';
import { cli, countPrefix, eventually, startDaemon, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';

const major = () => inject('pgMajor') as number;
const PASSWORD = 'origin-test-password';

let db: TestDatabase;
let ring: KeyRing;

const v1 = (label: string) => encryptValue(Buffer.from(label), 1, ring);

/** Changes a test_decoding slot saw, as its text lines (BEGIN/COMMIT dropped). */
async function decoded(slot: string, onlyLocal: boolean, pool = db.pool): Promise<string[]> {
  const r = await pool.query<{ data: string }>(`select data from pg_logical_slot_peek_changes($1, null, null, 'only-local', $2)`, [slot, onlyLocal ? '1' : '0']);
  return r.rows.map((x) => x.data).filter((d) => d.startsWith('table '));
}

const updatesOf = (lines: string[], table: string) => lines.filter((l) => l.startsWith(`table public.${table}: UPDATE:`));
const insertsOf = (lines: string[], table: string) => lines.filter((l) => l.startsWith(`table public.${table}: INSERT:`));

async function metric(httpUrl: string, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${httpUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(labels ? `${name}{${labels}} ` : `${name} `));
  return line ? Number(line.split(' ').pop()) : 0;
}

beforeAll(async () => {
  ring = await testRing();
  db = await createTestDatabase('origin');
});

afterAll(async () => {
  await db?.drop();
  const admin = new pg.Client({ connectionString: db.url.replace(/\/[^/]+$/, '/postgres') });
  await admin.connect();
  await admin.query(`drop role if exists origin_worker`).catch(() => undefined);
  await admin.end();
});

describe('replication origin on pg-rekey rewrites', () => {
  it.skipIf(major() >= 16)('PostgreSQL 14/15: off, and setup says why; origin: on refuses', async () => {
    await db.pool.query(`create table t14 (id bigint primary key, c text)`);
    await db.pool.query(`insert into t14 values (1, $1)`, [v1('a')]);
    const files = writeDaemonFiles(db.url, [{ name: 't14', columns: ['c'] }], { replication: { slot: `o14_${db.name}`.slice(0, 63), publication: 'o14' } });
    const setup = await cli(files, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
    expect(setup.stdout).toMatch(/replication origin: off \(the server is PostgreSQL 1[45]; .*from 16\)/);
    const on = writeDaemonFiles(db.url, [{ name: 't14', columns: ['c'] }], { replication: { slot: `o14_${db.name}`.slice(0, 63), publication: 'o14', origin: 'on' } });
    const refused = await cli(on, 'backfill');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/replication\.origin is on, but .*PostgreSQL 1[45]/);
    expect((await cli(files, 'teardown', '--force')).code).toBe(0);
  });

  it.skipIf(major() < 16)(
    '16+: sweep and stream rewrites carry the origin (a local-only decoder does not see them, but sees the application), the stream skips them; a table with a trigger is rewritten without it and its trigger side effects are streamed',
    async () => {
      await db.pool.query(`
        create table incidents (id bigint primary key, title text);
        create table notes (id bigint primary key, body text);
        create table notes_audit (id bigserial primary key, note_id bigint, old_body text);
        create function notes_audit() returns trigger language plpgsql as $$
          begin insert into notes_audit (note_id, old_body) values (old.id, old.body); return new; end $$;
        create trigger notes_audit after update of body on notes for each row execute function notes_audit();
        create table quiet (id bigint primary key, body text);
        create trigger quiet_audit after update of body on quiet for each row execute function notes_audit();`);
      await insertBatched(db.pool, 'quiet', ['id', 'body'], ['bigint', 'text'], Array.from({ length: 30 }, (_, i) => [i + 1, v1(`quiet ${i + 1}`)]));
      await insertBatched(db.pool, 'incidents', ['id', 'title'], ['bigint', 'text'], Array.from({ length: 300 }, (_, i) => [i + 1, v1(`incident ${i + 1}`)]));
      await insertBatched(db.pool, 'notes', ['id', 'body'], ['bigint', 'text'], Array.from({ length: 50 }, (_, i) => [i + 1, v1(`note ${i + 1}`)]));
      // notes_audit first: the sweep is past it before the notes rewrites fill it, so only the stream can rotate the audit rows.
      const files = writeDaemonFiles(db.url, [
        { name: 'notes_audit', columns: ['old_body'] },
        { name: 'incidents', columns: ['title'] },
        { name: 'notes', columns: ['body'], triggers: 'fire' },
        // triggers: skip: its plain ENABLE trigger does not fire in the rewrites, so they may carry the origin.
        { name: 'quiet', columns: ['body'], triggers: 'skip' },
      ]);
      const setup = await cli(files, 'setup');
      expect(setup.code, setup.stderr).toBe(0);
      expect(setup.stdout).toMatch(/replication origin: on \(pgrekey_s_origin\w*_sweep, pgrekey_s_origin\w*_stream\)/);
      // A second consumer, created after setup: it sees every rewrite pg-rekey makes from now on.
      const watcher = `w_${db.name}`.slice(0, 63);
      await db.pool.query(`select pg_create_logical_replication_slot($1, 'test_decoding')`, [watcher]);
      const d = await startDaemon(files);
      try {
        await d.proc.waitForLine(/replication origin on: rewrites carry/, { fromIndex: 0 });
        // The application, while run streams: old-version writes the stream rewrites.
        for (let i = 0; i < 20; i++) await db.pool.query(`insert into incidents values ($1, $2)`, [1000 + i, v1(`app ${i}`)]);
        // One stream batch writing incidents and notes would carry no origin (notes fires a trigger): let the first go alone.
        await eventually('the application rows rewritten', async () => (await db.pool.query(`select count(*)::int as n from incidents where id >= 1000 and starts_with(title, 'v1:')`)).rows[0].n === 0, 30_000);
        await db.pool.query(`update notes set body = $1 where id = 1`, [v1('edited note')]);
        await eventually('every v1 value rotated', async () => (await countPrefix(db.pool, 'incidents', 'title', 'v1:')) + (await countPrefix(db.pool, 'notes', 'body', 'v1:')) + (await countPrefix(db.pool, 'notes_audit', 'old_body', 'v1:')) === 0, 60_000);
        await eventually('run converged', async () => (await metric(d.httpUrl, 'pg_rekey_converged', '')) === 1, 60_000);
        const skipped = await metric(d.httpUrl, 'pg_rekey_stream_changes_total', 'handling="skipped_own_origin"');
        const decodedByStream = await metric(d.httpUrl, 'pg_rekey_stream_changes_total', 'handling="decoded"');
        const all = await decoded(watcher, false);
        const local = await decoded(watcher, true);
        // Every incidents rewrite (300 swept, 20 streamed) is an UPDATE the watcher saw, marked with the origin.
        expect(updatesOf(all, 'incidents').length).toBeGreaterThanOrEqual(320);
        expect(updatesOf(local, 'incidents')).toEqual([]);
        // The application's writes are local: never skipped.
        expect(insertsOf(local, 'incidents').length).toBe(20);
        expect(updatesOf(local, 'notes').some((l) => l.includes("'v1:"))).toBe(true);
        // notes fires a trigger: its rewrites carry no origin, and the audit rows they wrote were streamed and rotated.
        expect(updatesOf(local, 'notes').filter((l) => l.includes("'v2:")).length).toBeGreaterThanOrEqual(50);
        expect(insertsOf(local, 'notes_audit').length).toBeGreaterThanOrEqual(51);
        expect(d.proc.lines.map((l) => l.text).join('\n')).not.toMatch(/RE-SWEEP/);
        expect(updatesOf(all, 'quiet').length).toBeGreaterThanOrEqual(30);
        expect(updatesOf(local, 'quiet')).toEqual([]);
        expect(await countPrefix(db.pool, 'quiet', 'body', 'v1:')).toBe(0);
        // pg-rekey's own stream: its own marked rewrites are skipped, not compared.
        expect(skipped).toBeGreaterThanOrEqual(300);
        console.log(`origin on: watcher saw ${all.length} changes, ${local.length} local; pg-rekey stream skipped ${skipped}, decoded ${decodedByStream}`);
      } finally {
        await d.proc.stop('SIGTERM');
        await db.pool.query(`select pg_drop_replication_slot($1)`, [watcher]).catch(() => undefined);
      }
      const down = await cli(files, 'teardown', '--force');
      expect(down.code, down.stderr).toBe(0);
      expect(down.stdout).toMatch(/dropped replication origin pgrekey_s_origin\w*_sweep/);
      const left = await db.pool.query(`select count(*)::int as n from pg_replication_origin where roname like 'pgrekey\\_s\\_origin%'`);
      expect(left.rows[0].n).toBe(0);
    },
    180_000,
  );

  it.skipIf(major() < 16)('16+, least privilege: without the grant setup says the GRANT and run falls back (converges, no origin); with it, the origin is on; origin: on refuses without it', async () => {
    // Its own database: the state schema must be the worker's (sql/roles.sql), not the superuser's of the test above.
    const lp = await createTestDatabase('originlp');
    await lp.pool.query(`create table calls (id bigint primary key, raw text)`);
    await insertBatched(lp.pool, 'calls', ['id', 'raw'], ['bigint', 'text'], Array.from({ length: 100 }, (_, i) => [i + 1, v1(`call ${i + 1}`)]));
    await lp.pool.query(`drop role if exists origin_worker`);
    await lp.pool.query(`create role origin_worker login replication password '${PASSWORD}'`);
    await lp.pool.query(`grant connect on database "${lp.name}" to origin_worker`);
    await lp.pool.query(`create schema if not exists pgrekey authorization origin_worker`);
    await lp.pool.query(`grant select, update (raw) on calls to origin_worker`);
    await lp.pool.query(`create publication lp_calls for table calls with (publish = 'insert, update')`);
    const url = new URL(lp.url);
    url.username = 'origin_worker';
    url.password = PASSWORD;
    const slot = `lp_${lp.name}`.slice(0, 63);
    const files = writeDaemonFiles(url.toString(), [{ name: 'calls', columns: ['raw'] }], { replication: { slot, publication: 'lp_calls' } });
    const strict = writeDaemonFiles(url.toString(), [{ name: 'calls', columns: ['raw'] }], { replication: { slot, publication: 'lp_calls', origin: 'on' } });
    try {
      const refused = await cli(strict, 'setup');
      expect(refused.code, refused.stderr).toBe(2);
      expect(refused.stderr).toMatch(/replication\.origin is on, but role origin_worker may not execute pg_replication_origin_session_setup/);
      const setup = await cli(files, 'setup');
      expect(setup.code, setup.stderr).toBe(0);
      const line = setup.stdout.split('\n').find((l) => l.startsWith('replication origin:'))!;
      expect(line).toMatch(/^replication origin: off \(role origin_worker may not execute .*; origin\(s\) .* do not exist\)/);
      expect(line).toContain('GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text), pg_replication_origin_session_reset() TO origin_worker;');
      expect(line).toContain(`SELECT pg_replication_origin_create('pgrekey_${slot}_sweep');`);
      const run = await cli(files, 'run', '--exit-when-converged');
      expect(run.code, run.stderr.slice(-2000)).toBe(0);
      expect(run.stderr).toMatch(/replication origin off \(role origin_worker may not execute/);
      expect(await countPrefix(lp.pool, 'calls', 'raw', 'v1:')).toBe(0);
      // The superuser runs what setup printed; setup then says on, and the rewrites carry it.
      for (const stmt of line.split('run as a superuser: ')[1]!.split(/(?<=;) /)) await lp.pool.query(stmt);
      const again = await cli(files, 'setup');
      expect(again.code, again.stderr).toBe(0);
      expect(again.stdout).toMatch(/replication origin: on/);
      const watcher = `lw_${lp.name}`.slice(0, 63);
      await lp.pool.query(`select pg_create_logical_replication_slot($1, 'test_decoding')`, [watcher]);
      await lp.pool.query(`update calls set raw = $1 where id <= 10`, [v1('rewritten again')]);
      const run2 = await cli(files, 'run', '--exit-when-converged');
      expect(run2.code, run2.stderr.slice(-2000)).toBe(0);
      expect(run2.stderr).toMatch(/replication origin on: rewrites carry/);
      const all = updatesOf(await decoded(watcher, false, lp.pool), 'calls');
      const local = updatesOf(await decoded(watcher, true, lp.pool), 'calls');
      expect(all.filter((l) => l.includes("'v2:")).length).toBe(10);
      expect(local.filter((l) => l.includes("'v2:"))).toEqual([]);
      expect(local.filter((l) => l.includes("'v1:")).length).toBe(10);
      await lp.pool.query(`select pg_drop_replication_slot($1)`, [watcher]);
      // teardown as the worker may not drop origins: it says how.
      const down = await cli(files, 'teardown', '--force');
      expect(down.code, down.stderr).toBe(0);
      expect(down.stdout).toMatch(/kept replication origin\(s\): this role may not drop them; as a superuser run SELECT pg_replication_origin_drop\('pgrekey_lp_/);
    } finally {
      await lp.pool.query(`select pg_replication_origin_drop(roname) from pg_replication_origin where roname like 'pgrekey\\_lp\\_%'`).catch(() => undefined);
      await lp.drop();
    }
  }, 180_000);
});
