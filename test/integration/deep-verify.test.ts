// verify --decrypt (issue 10, item 2): a "misconfigured application instance" writes v2 values with
// another v2 key. Plain verify counts prefixes and is satisfied; verify --decrypt (full and sampled)
// opens the values and finds them, by table and column, never printing a value or a key.
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, KEY_HEX, testRing } from '../support/fixtures.js';
import { cli, eventually, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { spawnCli } from '../support/cli.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import type { VerifyReport } from '../../src/commands/verify.js';

let db: TestDatabase;
let files: DaemonFiles;
let ring: KeyRing;
/** The applications' v2 key, and the one a misconfigured instance has. */
let stray: KeyRing;
const ROWS = 1800;
/** Every 6th row was written by the misconfigured instance. */
const strayRow = (id: number) => id % 6 === 0;
const STRAY = Math.floor(ROWS / 6);

const report = (stdout: string) => JSON.parse(stdout) as VerifyReport;

beforeAll(async () => {
  db = await createTestDatabase('deep_verify');
  ring = await testRing();
  stray = await testRing(2, [1, 2], { 2: KEY_HEX[9]! });
  await db.pool.query(`create table incidents (id bigint primary key, title text, notes text)`);
  const rows = Array.from({ length: ROWS }, (_, i) => {
    const id = i + 1;
    return [id, encryptValue(Buffer.from(`incident ${id}`), 2, strayRow(id) ? stray : ring), id % 3 === 0 ? encryptValue(Buffer.from(`note ${id}`), 2, ring) : null];
  });
  await insertBatched(db.pool, 'incidents', ['id', 'title', 'notes'], ['bigint', 'text', 'text'], rows);
  files = writeDaemonFiles(db.url, [{ name: 'incidents', columns: ['title', 'notes'] }], { sweep: { chunk_time: '2ms', nice_ratio: 1 } });
  expect((await cli(files, 'setup')).code).toBe(0);
});

afterAll(async () => {
  await db.drop();
});

function noSecrets(text: string): void {
  for (const hex of Object.values(KEY_HEX)) expect(text).not.toContain(hex.slice(0, 16));
  expect(text).not.toMatch(/incident \d+|note \d+/);
  expect(text).not.toMatch(/v2:[A-Za-z0-9+/]{20}/);
}

describe('verify --decrypt', () => {
  it('plain verify counts prefixes and is satisfied: it is not affected', async () => {
    const r = await cli(files, 'verify', '--json');
    expect(r.code, r.stderr.slice(-500)).toBe(0);
    expect(report(r.stdout).decrypt).toBeNull();
  });

  it('a full pass finds every v2 value the misconfigured instance wrote, by table and column; exit 1', async () => {
    const r = await cli(files, 'verify', '--decrypt', '--json');
    expect(r.code, r.stderr.slice(-500)).toBe(1);
    const d = report(r.stdout).decrypt!;
    expect(d.mode).toBe('full');
    const title = d.columns.find((c) => c.column === 'title')!;
    const notes = d.columns.find((c) => c.column === 'notes')!;
    expect(title.failed).toEqual({ v2: STRAY });
    expect(title.opened).toEqual({ v2: ROWS - STRAY });
    expect(title.reasons).toEqual({ 'mac-failure': STRAY });
    expect(notes.failed).toEqual({});
    expect(notes.opened).toEqual({ v2: ROWS / 3 });
    expect(d.totals).toMatchObject({ targetFailed: STRAY, oldFailed: 0 });
    // A capped list of where, by ctid; never the value.
    expect(d.failures.length).toBe(10);
    expect(d.failures[0]).toMatchObject({ table: 'public.incidents', column: 'title', version: 'v2', reason: 'mac-failure' });
    expect(d.failures[0]!.ctid).toMatch(/^\(\d+,\d+\)$/);
    // Chunked: more than one range read (chunk_time 2ms from 8 blocks), every block covered.
    expect(d.relations[0]!.blocksRead).toBeGreaterThanOrEqual(d.relations[0]!.blocks);
    // Progress on stderr, as backfill's (JSON lines when stderr is not a terminal).
    expect(r.stderr).toMatch(/"component":"deep-verify".*"relation checked"/);
    noSecrets(r.stdout + r.stderr);
    const text = await cli(files, 'verify', '--decrypt');
    expect(text.code).toBe(1);
    expect(text.stdout).toContain(`NOT OK: ${STRAY} v2 value(s) do not open with the target key (public.incidents.title: ${STRAY})`);
    noSecrets(text.stdout + text.stderr);
  });

  it('a sampled pass reads at most N values per column and still finds them', async () => {
    const r = await cli(files, 'verify', '--decrypt', '--sample', '100', '--json');
    expect(r.code, r.stderr.slice(-500)).toBe(1);
    const d = report(r.stdout).decrypt!;
    expect(d.mode).toBe('sample');
    const title = d.columns.find((c) => c.column === 'title')!;
    expect(title.read.v2).toBe(100);
    // 1 in 6 is the misconfigured instance's: 100 values without one is a 1e-8 chance.
    expect(title.failed.v2).toBeGreaterThan(0);
    expect(d.columns.find((c) => c.column === 'notes')!.read.v2).toBe(100);
    // Random block ranges: not the whole relation.
    expect(d.relations[0]!.blocksRead).toBeLessThan(d.relations[0]!.blocks);
    expect((await cli(files, 'verify', '--sample', '5')).code).toBe(2);
  });

  it('the state keeps each result for the report', async () => {
    const r = await db.pool.query(`select kind, mode, command, ok, result->'totals'->>'targetFailed' as failed from pgrekey.check_result where kind = 'deep-verify' order by id`);
    expect(r.rows.map((x) => [x.mode, x.command, x.ok])).toEqual([
      ['full', 'verify --decrypt', false],
      ['full', 'verify --decrypt', false],
      ['sample', 'verify --decrypt --sample 100', false],
    ]);
    expect(Number(r.rows[0].failed)).toBe(STRAY);
  });

  it('once the values are re-encrypted with the applications\' key: exit 0, full and sampled', async () => {
    const { rows } = await db.pool.query<{ id: string }>(`select id from incidents`);
    for (const { id } of rows.filter((x) => strayRow(Number(x.id)))) {
      await db.pool.query(`update incidents set title = $2 where id = $1`, [id, encryptValue(Buffer.from(`incident ${id}`), 2, ring)]);
    }
    for (const args of [['verify', '--decrypt'], ['verify', '--decrypt', '--sample', '50']]) {
      const r = await cli(files, ...args);
      expect(r.code, `${args.join(' ')}: ${r.stdout.slice(-800)}`).toBe(0);
      expect(r.stdout).toContain('every v2 value read opens with the target key');
    }
  });

  it('throttled like the sweep: paused (`pg-rekey pause`), it reads nothing until resumed', async () => {
    expect((await cli(files, 'pause', '--reason', 'deep verify test')).code).toBe(0);
    const p = spawnCli(['verify', '--decrypt', ...files.args]);
    try {
      await p.waitForLine(/"sweep throttled".*"reason":"paused"|"reason":"paused".*"sweep throttled"/, { timeoutMs: 60_000 });
      await eventually('the throttle state published as paused', async () => (await db.pool.query(`select throttle_reason from pgrekey.control`)).rows[0]?.throttle_reason === 'paused', 10_000);
      // Held at the gate: not a block read (no relation finished) while the switch is on.
      await new Promise((r) => setTimeout(r, 1_500));
      expect(p.child.exitCode).toBeNull();
      expect(p.lines.some((l) => /relation checked/.test(l.text))).toBe(false);
      expect((await cli(files, 'resume')).code).toBe(0);
      const done = await Promise.race([p.exited, new Promise<null>((r) => setTimeout(() => r(null), 60_000))]);
      expect(done, 'verify --decrypt did not finish within 60 s of resume').not.toBeNull();
      expect(done!.code, done!.stdout.slice(-500)).toBe(0);
      expect(done!.stderr).toMatch(/relation checked/);
    } finally {
      if (p.child.exitCode === null) await p.stop('SIGKILL');
      await cli(files, 'resume');
    }
  });

  it('old-version values that do not open with their own key are reported (they would be quarantined)', async () => {
    const wrongV1 = await testRing(2, [1, 2], { 1: KEY_HEX[9]! });
    await db.pool.query(`insert into incidents (id, title) select g, $1 from generate_series(5001, 5003) g`, [encryptValue(Buffer.from('old'), 1, wrongV1)]);
    await db.pool.query(`insert into incidents (id, title) values (5004, $1), (5005, 'v1:not base64!')`, [encryptValue(Buffer.from('old'), 1, ring)]);
    const r = await cli(files, 'verify', '--decrypt', '--json');
    expect(r.code).toBe(1); // v1 values remain: not converged
    const d = report(r.stdout).decrypt!;
    const title = d.columns.find((c) => c.column === 'title')!;
    expect(title.failed).toEqual({ v1: 4 });
    expect(title.opened.v1).toBe(1);
    expect(title.reasons).toEqual({ 'mac-failure': 3, 'bad-base64': 1 });
    expect(d.totals).toMatchObject({ targetFailed: 0, oldFailed: 4 });
    const text = await cli(files, 'verify', '--decrypt');
    expect(text.stdout).toMatch(/4 old-version value\(s\) do not open with the key of their version \(public\.incidents\.title: v1 4\): the rotation quarantines them/);
  });

  it('after the old key is removed: only the target key is needed; old values are "not checked"', async () => {
    writeFileSync(files.envPath, `LIBSODIUM_ENCRYPTION_KEY_V2=${KEY_HEX[2]}\nLIBSODIUM_ENCRYPTION_KEY_VERSION=v2\n`, { mode: 0o600 });
    const r = await cli(files, 'verify', '--decrypt', '--json');
    expect(r.code, r.stderr.slice(-500)).toBe(1);
    const d = report(r.stdout).decrypt!;
    expect(d.columns.find((c) => c.column === 'title')!.noKey).toEqual({ v1: 5 });
    expect(d.totals.notChecked).toBe(5);
  });
});
