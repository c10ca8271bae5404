// The rollout gate (issue 10, item 4): the stream records every old-version value an application
// writes (not pg-rekey's own rewrites), and `run --exit-when-converged --quiet-period` exits only
// once converged and quiet: a stale writer keeps it running although the data converges again and
// again; after the writer stops it exits 0 once the period has passed since the last write.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, KEY_HEX, testRing } from '../support/fixtures.js';
import { cli, eventually, startDaemon, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';

let db: TestDatabase;
let files: DaemonFiles;
let ring: KeyRing;

beforeAll(async () => {
  db = await createTestDatabase('rollout_gate');
  ring = await testRing();
  await db.pool.query(`create table incidents (id bigint primary key, title text)`);
  const rows: unknown[][] = [];
  for (let id = 1; id <= 500; id++) rows.push([id, encryptValue(Buffer.from(`incident ${id}`), 1, ring)]);
  await insertBatched(db.pool, 'incidents', ['id', 'title'], ['bigint', 'text'], rows);
  files = writeDaemonFiles(db.url, [
    { name: 'incidents', columns: ['title'] },
    { name: 'notes', columns: ['title', 'raw_xml'] },
  ]);
  await db.pool.query(`create table notes (id bigint primary key, title text, raw_xml text)`);
  expect((await cli(files, 'setup')).code).toBe(0);
});

afterAll(async () => {
  await db.drop();
});

async function recorded(table: string, column: string): Promise<number> {
  const r = await db.pool.query<{ n: string }>(`select coalesce(sum(writes), 0)::text as n from pgrekey.old_version_write where version = 1 and table_name = $1 and column_name = $2`, [table, column]);
  return Number(r.rows[0]!.n);
}

describe('the rollout gate', () => {
  it('a stale v1 writer keeps run --exit-when-converged --quiet-period 3s running; after it stops, exit 0 once the period has passed', async () => {
    let stop = false;
    let writes = 0;
    let lastWriteAt = 0;
    // An application instance that still writes v1 every ~1 s: within the 3 s quiet period, and with
    // room between writes for a count that finds none in flight (converged again, so that run can
    // say the next write restarted the wait; at one write per 200 ms a busy machine's stream never
    // left a count without one).
    const staleWriter = (async () => {
      for (let i = 0; !stop; i++) {
        await db.pool.query(`update incidents set title = $1 where id = $2`, [encryptValue(Buffer.from(`stale ${i}`), 1, ring), 1 + (i % 500)]);
        writes++;
        lastWriteAt = Date.now();
        await new Promise((r) => setTimeout(r, 1_000));
      }
    })();
    const d = await startDaemon(files, '--exit-when-converged', '--quiet-period', '3s');
    let exitedEarly = false;
    void d.proc.exited.then(() => (exitedEarly = !stop));
    try {
      // The data converges (the stream rewrites each stale write within a batch delay)...
      await d.proc.waitForLine(/"msg":"CONVERGED:/, { timeoutMs: 60_000 });
      await d.proc.waitForLine(/waiting for --quiet-period 3s without old-version writes/, { timeoutMs: 30_000 });
      // ...and the writes keep restarting the quiet period: run keeps running well past 3 s.
      const converged = d.proc.lines.length;
      await d.proc.waitForLine(/an old-version write restarted the quiet period \(the last v1 write \(public\.incidents\.title\)/, { timeoutMs: 45_000, fromIndex: converged });
      // Longer than the quiet period, with writes all along: it must still be running.
      await new Promise((r) => setTimeout(r, 4_000));
      expect(exitedEarly, 'run exited while the stale writer was still writing v1').toBe(false);
      expect(writes).toBeGreaterThan(5);

      const metrics = await (await fetch(`${d.httpUrl}/metrics`)).text();
      const total = Number(/pg_rekey_old_version_writes_total\{version="v1",table="public\.incidents"\} (\d+)/.exec(metrics)?.[1]);
      expect(total).toBeGreaterThan(3);
      const last = Number(/pg_rekey_old_version_last_write_timestamp_seconds\{version="v1",table="public\.incidents"\} ([\d.e+]+)/.exec(metrics)?.[1]);
      expect(Math.abs(last * 1000 - Date.now())).toBeLessThan(10_000);

      const status = await cli(files, 'status');
      expect(status.code).toBe(0);
      expect(status.stdout).toMatch(/last v1 write seen \d+s ago \(public\.incidents\.title; \d+ in the last hour, \d+ recorded\): an application instance still writes v1/);
      expect(status.stdout).toMatch(/run --exit-when-converged waits for --quiet-period 3s/);
      const verify = await cli(files, 'verify', '--json');
      const report = JSON.parse(verify.stdout) as { rollout: { stillWritten: string[] } };
      expect(report.rollout.stillWritten).toEqual(['v1']);
    } catch (e) {
      // The daemon holds the slot's lease: the next test could not start its own.
      await d.proc.stop('SIGKILL', 5_000).catch(() => undefined);
      throw e;
    } finally {
      stop = true;
      await staleWriter;
    }
    const stoppedAt = lastWriteAt;
    const res = await Promise.race([d.proc.exited, new Promise<never>((_, rej) => setTimeout(() => rej(new Error('run did not exit within 60 s after the stale writer stopped')), 60_000))]);
    expect(res.code, res.stderr.slice(-2000)).toBe(0);
    expect(Date.now() - stoppedAt, 'exited before 3 s without an old-version write').toBeGreaterThanOrEqual(3_000);
    expect(res.stderr).toMatch(/CONVERGED AND QUIET: no old-version write for \d+s \(--quiet-period 3s\); exiting/);
    // Every stale write was recorded (a transaction replayed after a reconnect is not counted twice).
    expect(await recorded('public.incidents', 'title')).toBe(writes);
  }, 180_000);

  it('a transaction the stream decodes again after a reconnect is not counted again', async () => {
    const d = await startDaemon(files);
    const metric = async () => Number(/pg_rekey_old_version_writes_total\{version="v1",table="public\.incidents"\} (\d+)/.exec(await (await fetch(`${d.httpUrl}/metrics`)).text())?.[1] ?? 0);
    let replayed = false;
    try {
      // The stream acknowledges every 2 s: a walsender ended just after the writes were recorded
      // usually makes it decode them again (the in-process counter shows it); try a few times.
      for (let attempt = 1; attempt <= 3 && !replayed; attempt++) {
        const m0 = await metric();
        const r0 = await recorded('public.incidents', 'title');
        for (let i = 0; i < 20; i++) await db.pool.query(`update incidents set title = $1 where id = $2`, [encryptValue(Buffer.from(`replay ${attempt} ${i}`), 1, ring), 100 + i]);
        await eventually('the 20 writes recorded', async () => (await recorded('public.incidents', 'title')) === r0 + 20, 30_000);
        const from = d.proc.lines.length;
        await db.pool.query(`select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1 and active_pid is not null`, [`s_${db.name}`.slice(0, 63)]);
        await d.proc.waitForLine(/"msg":"streaming"/, { timeoutMs: 60_000, fromIndex: from });
        await db.pool.query(`update incidents set title = $1 where id = 1`, [encryptValue(Buffer.from(`after ${attempt}`), 1, ring)]);
        await eventually('the write after the reconnect recorded', async () => (await recorded('public.incidents', 'title')) >= r0 + 21, 30_000);
        expect(await recorded('public.incidents', 'title')).toBe(r0 + 21);
        replayed = (await metric()) - m0 > 21;
      }
    } finally {
      await d.proc.stop('SIGTERM', 10_000);
    }
    expect(replayed, 'no attempt made the stream decode recorded transactions again').toBe(true);
  }, 180_000);

  it("pg-rekey's own rewrites are not counted: a sweep rewriting raw_xml next to a quarantined v1 title records only the application's writes", async () => {
    const wrong = await testRing(2, [1, 2], { 1: KEY_HEX[9]! });
    // Five rows written by the application after the slot: a corrupt v1 title (another key) and a good v1 raw_xml.
    await db.pool.query(`insert into notes select g, $1, $2 from generate_series(1, 5) g`, [encryptValue(Buffer.from('corrupt'), 1, wrong), encryptValue(Buffer.from('<xml/>'), 1, ring)]);
    const d = await startDaemon(files);
    try {
      await eventually('raw_xml rewritten', async () => (await db.pool.query(`select count(*)::int as n from notes where starts_with(raw_xml, 'v2:')`)).rows[0].n === 5, 60_000);
      // A later application write: once it is recorded, the stream has decoded pg-rekey's rewrites before it.
      const before = await recorded('public.incidents', 'title');
      await db.pool.query(`update incidents set title = $1 where id = 1`, [encryptValue(Buffer.from('marker'), 1, ring)]);
      await eventually('the later write recorded', async () => (await recorded('public.incidents', 'title')) === before + 1, 30_000);
    } finally {
      await d.proc.stop('SIGTERM', 10_000);
    }
    // One INSERT of five rows: five title and five raw_xml values. pg-rekey's UPDATEs (raw_xml -> v2,
    // the title carried along as it was) would add five more titles if they were counted.
    expect(await recorded('public.notes', 'title')).toBe(5);
    expect(await recorded('public.notes', 'raw_xml')).toBe(5);
  }, 120_000);
});
