// The target key is proven before the first rewrite (issue 10, item 1): with a target key that is not
// the applications' (a slip between two secret stores), backfill (dry run too) and run refuse before
// writing anything, and the data stays byte-identical; two versions with one key are refused.
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { KEY_HEX, tableChecksum, testRing } from '../support/fixtures.js';
import { cli, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { runCli } from '../support/cli.js';
import { encryptValue } from '../../src/crypto/rewrite.js';

let db: TestDatabase;
/** Narrow rows (about 220 per block): 70,000 of them fill about 310 blocks. */
const FILLER_ROWS = 70_000;
let files: DaemonFiles;

function writeEnv(v2: string, v1 = KEY_HEX[1]!): void {
  writeFileSync(files.envPath, `LIBSODIUM_ENCRYPTION_KEY=${v1}\nLIBSODIUM_ENCRYPTION_KEY_V2=${v2}\nLIBSODIUM_ENCRYPTION_KEY_VERSION=v2\n`, { mode: 0o600 });
}

beforeAll(async () => {
  db = await createTestDatabase('target_key');
  const ring = await testRing();
  await db.pool.query(`create table incidents (id bigint primary key, title text)`);
  // 50 written by old instances (v1), 50 by new ones (v2, with the applications' v2 key).
  for (let id = 1; id <= 100; id++) await db.pool.query(`insert into incidents values ($1, $2)`, [id, encryptValue(Buffer.from(`incident ${id}`), id <= 50 ? 1 : 2, ring)]);
  files = writeDaemonFiles(db.url, [{ name: 'incidents', columns: ['title'] }]);
  expect((await cli(files, 'setup')).code).toBe(0);
});

afterAll(async () => {
  await db.drop();
});

describe('the target key', () => {
  it('a v2 key that is not the applications\': backfill, its dry run and run refuse before any write', async () => {
    writeEnv(KEY_HEX[9]!);
    const before = await tableChecksum(db.pool, 'incidents');
    for (const args of [['backfill', '--dry-run'], ['backfill']]) {
      const r = await cli(files, ...args);
      expect(r.code, `${args.join(' ')}: ${r.stderr.slice(-800)}`).toBe(2);
      expect(r.stderr).toMatch(/your v2 key does not decrypt the v2 values already stored: is LIBSODIUM_ENCRYPTION_KEY_V2 the application's\?/);
      expect(r.stderr + r.stdout).not.toContain(KEY_HEX[9]!.slice(0, 16));
    }
    const run = await runCli(['run', '--exit-when-converged', ...files.args], { timeoutMs: 60_000 });
    expect(run.code, run.stderr.slice(-800)).toBe(2);
    expect(run.stderr).toMatch(/does not decrypt the v2 values already stored/);
    expect(await tableChecksum(db.pool, 'incidents')).toBe(before);
  });

  it('two versions with the same key: exit 2 naming both variables, never the key', async () => {
    writeEnv(KEY_HEX[1]!);
    const r = await cli(files, 'backfill', '--dry-run');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/LIBSODIUM_ENCRYPTION_KEY and LIBSODIUM_ENCRYPTION_KEY_V2 hold the same key/);
    expect(r.stderr).not.toContain(KEY_HEX[1]!.slice(0, 16));
  });

  it("the applications' key: the proof passes and backfill rewrites the v1 values", async () => {
    writeEnv(KEY_HEX[2]!);
    const r = await cli(files, 'backfill');
    expect(r.code, r.stderr.slice(-800)).toBe(0);
    expect(r.stderr).toMatch(/the target key opens the v2 values already stored/);
    expect(Number((await db.pool.query(`select count(*) from incidents where starts_with(title, 'v1:')`)).rows[0].count)).toBe(0);
  });

  it('a wrong v1 key with fewer v1 values than wrong_key_threshold: backfill, its dry run and run stop (exit 3) saying so, data byte-identical', async () => {
    // The applications' v1 key wrote 5 new values (threshold 8); pg-rekey is given another v1 key.
    const ring = await testRing();
    for (let id = 101; id <= 105; id++) await db.pool.query(`insert into incidents values ($1, $2)`, [id, encryptValue(Buffer.from(`late incident ${id}`), 1, ring)]);
    writeEnv(KEY_HEX[2]!, KEY_HEX[9]!);
    const before = await tableChecksum(db.pool, 'incidents');
    const said = /none of the 5 v1 value\(s\) read opened with LIBSODIUM_ENCRYPTION_KEY: is it the application's v1 key\?/;
    for (const args of [['backfill', '--dry-run'], ['backfill']]) {
      const r = await cli(files, ...args);
      expect(r.code, `${args.join(' ')}: ${r.stderr.slice(-800)}`).toBe(3);
      expect(r.stderr).toMatch(said);
      expect(r.stderr + r.stdout).not.toContain(KEY_HEX[9]!.slice(0, 16));
    }
    const run = await runCli(['run', '--exit-when-converged', ...files.args], { timeoutMs: 60_000 });
    expect(run.code, run.stderr.slice(-800)).toBe(3);
    expect(run.stderr).toMatch(said);
    expect(await tableChecksum(db.pool, 'incidents')).toBe(before);
    // The right v1 key: the values that failed are read again and rewritten.
    writeEnv(KEY_HEX[2]!);
    const fixed = await cli(files, 'backfill');
    expect(fixed.code, fixed.stderr.slice(-800)).toBe(0);
    expect(Number((await db.pool.query(`select count(*) from incidents where starts_with(title, 'v1:')`)).rows[0].count)).toBe(0);
  });

  it('v2 values only in the middle blocks of a table, and a v2 key that is not the applications\': found, and backfill and its dry run refuse (exit 2)', async () => {
    // About 620 blocks of narrow rows: the applications' v2 values sit near block 310, outside the
    // first and the last 256 blocks.
    const ring = await testRing();
    await db.pool.query(`create table archive (id bigint primary key, title text)`);
    await db.pool.query(`insert into archive select g, null from generate_series(1, $1) g`, [FILLER_ROWS]);
    for (let id = FILLER_ROWS + 1; id <= FILLER_ROWS + 20; id++) await db.pool.query(`insert into archive values ($1, $2)`, [id, encryptValue(Buffer.from(`archived ${id}`), 2, ring)]);
    await db.pool.query(`insert into archive select g, null from generate_series($1::bigint + 21, 2 * $1::bigint) g`, [FILLER_ROWS]);
    const { blocks, first, last } = (await db.pool.query(
      `select pg_relation_size('archive') / current_setting('block_size')::int as blocks, min((ctid::text::point)[0]) as first, max((ctid::text::point)[0]) as last from archive where title is not null`,
    )).rows[0];
    expect([Number(first) >= 256, Number(last) < Number(blocks) - 256], `v2 values in blocks ${first}-${last} of ${blocks}: the middle`).toEqual([true, true]);
    const archive = writeDaemonFiles(db.url, [{ name: 'archive', columns: ['title'] }]);
    writeFileSync(archive.envPath, `LIBSODIUM_ENCRYPTION_KEY=${KEY_HEX[1]}\nLIBSODIUM_ENCRYPTION_KEY_V2=${KEY_HEX[9]}\nLIBSODIUM_ENCRYPTION_KEY_VERSION=v2\n`, { mode: 0o600 });
    const before = await tableChecksum(db.pool, 'archive');
    for (const args of [['backfill', '--dry-run'], ['backfill']]) {
      const r = await cli(archive, ...args);
      expect(r.code, `${args.join(' ')}: ${r.stderr.slice(-800)}`).toBe(2);
      expect(r.stderr).toMatch(/your v2 key does not decrypt the v2 values already stored: is LIBSODIUM_ENCRYPTION_KEY_V2 the application's\? \(20 sampled in the \d+ block\(s\) of the configured columns \(all read\), none opened\)/);
    }
    expect(await tableChecksum(db.pool, 'archive')).toBe(before);
  });
});
