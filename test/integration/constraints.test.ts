// Constraints that would reject a rewrite (issue 9, item 6): setup names a table CHECK on the
// column, a domain with CHECKs at two levels (a domain over a domain over text, which setup used to
// refuse as "not text-like") and a nondeterministic collation, as warnings; then a v2 value that
// violates a constraint is quarantined with its reason by the sweep and by the stream while the
// other rows are rewritten, and a column with a nondeterministic collation is rotated like any
// other (the sweep's regular expression used to fail on it with a raw SQLSTATE error, exit 3).
// Run as a least-privilege role like sql/roles.sql's; counts checked as the superuser.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { decryptValue, encryptValue } from '../../src/crypto/rewrite.js';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, testRing } from '../support/fixtures.js';
import { createWorkerRole, type WorkerRole } from '../support/worker-role.js';
import { cli, eventually, startDaemon, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';

let ring: KeyRing;
let db: TestDatabase;
let files: DaemonFiles;
let worker: WorkerRole;
const ROLE = `con_worker_${process.pid}`;
const PUB = 'pgrekey_con';
const v1 = (text: string) => encryptValue(Buffer.from(text), 1, ring);

async function v1Left(table: string): Promise<number> {
  return (await db.pool.query(`select count(*)::int as n from ${table} where starts_with(secret::text collate "C", 'v1:')`)).rows[0].n;
}

/** Quarantine entries of a table as "source id reason", sorted. */
async function quarantined(table: string): Promise<string[]> {
  const r = await db.pool.query(`select source, row_key ->> 'id' as id, reason from pgrekey.quarantine where table_name = $1 order by (row_key ->> 'id')::int`, [`public.${table}`]);
  return r.rows.map((x) => `${x.source} ${x.id} ${x.reason}`);
}

async function fill(table: string, ids: number[]): Promise<void> {
  await insertBatched(db.pool, table, ['id', 'secret'], ['bigint', 'text'], ids.map((id) => [id, v1(`${table} ${id}`)]));
}
const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

beforeAll(async () => {
  ring = await testRing();
  db = await createTestDatabase('constraints');
  worker = await createWorkerRole(db, ROLE, PUB);
  await db.pool.query(`
    -- Only v1 values pass for rows 1..10 (a check written for the old key's values).
    create table checked (id bigint primary key, secret text, constraint secret_is_v1 check (secret like 'v1:%' or id > 10));
    create domain enc_base as text constraint enc_base_size check (length(value) < 10000);
    create domain enc_v1 as enc_base constraint enc_v1_prefix check (value like 'v1:%');
    create table domained (id bigint primary key, secret enc_v1);
    create collation ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
    create table ci_notes (id bigint primary key, secret text collate ci);
    grant select, update (secret) on checked, domained, ci_notes to ${ROLE};
    create publication ${PUB} for table checked, domained, ci_notes with (publish = 'insert, update');
  `);
  await fill('checked', range(1, 30));
  await fill('domained', range(1, 5));
  await fill('ci_notes', range(1, 20));
  files = writeDaemonFiles(
    worker.url,
    ['checked', 'domained', 'ci_notes'].map((name) => ({ name, columns: ['secret'] })),
    { replication: { publication: PUB }, sweep: { chunk_time: 0, chunk_blocks: 4, nice_ratio: 0 } },
  );
});

afterAll(async () => {
  await worker?.drop();
  await db.drop();
});

describe('constraints on the configured columns', () => {
  it('setup accepts a domain over a domain over text and warns about each constraint and the collation, saying what will happen', async () => {
    const r = await cli(files, 'setup');
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const warnings = r.stdout.split('\n').filter((l) => l.startsWith('warning: '));
    expect(warnings.find((l) => l.includes('public.checked.secret: CHECK constraint secret_is_v1'))).toMatch(/is not written: that row is quarantined .*update-raised:23514/);
    expect(warnings.find((l) => l.includes('public.domained.secret'))).toMatch(
      /type enc_v1 is a domain over enc_base over text with CHECK constraint\(s\) enc_v1_prefix \(CHECK .*\) of enc_v1, enc_base_size \(CHECK .*\) of enc_base: .*quarantined/,
    );
    expect(warnings.find((l) => l.includes('public.ci_notes.secret'))).toMatch(/nondeterministic collation ci .*COLLATE "C"/);
    expect(warnings).toHaveLength(3);
  });

  it('backfill: the rows whose v2 value a constraint rejects are quarantined with the reason, the others rewritten; the collated column is rotated', async () => {
    const r = await cli(files, 'backfill');
    expect(r.code, r.stdout + r.stderr).toBe(1); // quarantined values remain
    expect(`${r.stdout}${r.stderr}`).not.toMatch(/SQLSTATE/);
    expect(r.stdout).toMatch(/NOT converged: 15 value\(s\) of an old version remain/);
    expect(r.stdout).not.toMatch(/no value of an old version remains/);
    expect(await v1Left('checked')).toBe(10);
    expect(await quarantined('checked')).toEqual(range(1, 10).map((id) => `sweep ${id} update-raised:23514:secret_is_v1`));
    expect(await v1Left('domained')).toBe(5);
    expect(await quarantined('domained')).toEqual(range(1, 5).map((id) => `sweep ${id} update-raised:23514:enc_v1_prefix`));
    expect(await v1Left('ci_notes')).toBe(0);
    for (const row of (await db.pool.query(`select id, secret from ci_notes`)).rows) expect(Buffer.from(decryptValue(row.secret, ring)!).toString()).toBe(`ci_notes ${row.id}`);
  });

  it('the stream quarantines the same way, and rewrites what passes', async () => {
    const daemon = await startDaemon(files);
    try {
      await fill('checked', [-1, -2, 100]); // -1, -2: rejected as v2 (id <= 10); 100 passes
      await fill('domained', [50]);
      await fill('ci_notes', [50, 51]);
      await eventually('the stream quarantined the rejected rows', async () => (await quarantined('checked')).length === 12 && (await quarantined('domained')).length === 6, 20_000);
      await eventually('the stream rewrote what passes', async () => (await v1Left('ci_notes')) === 0 && (await v1Left('checked')) === 12, 20_000);
    } finally {
      const r = await daemon.proc.stop('SIGTERM', 15_000);
      expect(r.code, r.stderr.slice(-2000)).toBe(0);
    }
    const checked = await quarantined('checked');
    expect(checked.slice(0, 2)).toEqual(['stream -2 update-raised:23514:secret_is_v1', 'stream -1 update-raised:23514:secret_is_v1']);
    expect(await quarantined('domained')).toContain('stream 50 update-raised:23514:enc_v1_prefix');
    const verify = await cli(files, 'verify');
    expect(verify.code, verify.stdout).toBe(1);
    expect(verify.stdout).toMatch(/NOT converged: 18 value\(s\) are not at v2/);
    expect(verify.stdout).not.toMatch(/^converged/m);
  });
});
