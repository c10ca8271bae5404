import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startCluster, type PgMajor } from '../support/cluster.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { runCli, spawnCli, type CliResult } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { checkLedger, createIncidentsTable, fillIncidents, KEY_HEX, keyEnv, testRing, writeCliFiles, type CliFiles } from '../support/fixtures.js';

let ring: KeyRing;
const dbs: TestDatabase[] = [];
beforeAll(async () => {
  ring = await testRing();
});
afterAll(async () => {
  for (const db of dbs) await db.drop();
});

async function database(prefix: string): Promise<TestDatabase> {
  const db = await createTestDatabase(prefix);
  dbs.push(db);
  return db;
}

function files(db: TestDatabase, tables: string[], sweep?: Record<string, unknown>, env?: Record<string, string>): CliFiles {
  return writeCliFiles({ databaseUrl: db.url, tables: tables.map((name) => ({ name, columns: ['title', 'raw_xml'] })), sweep, env, replication: { slot: db.name, publication: 'rekey_pub' } });
}

const cli = (f: CliFiles, args: string[], env: Record<string, string> = {}) => runCli(['-c', f.configPath, '--env-file', f.envPath, ...args], { env });
const output = (r: CliResult) => r.stdout + r.stderr;

describe('pg-rekey CLI without a database', () => {
  it('--help exits 0 and lists the commands and exit codes', async () => {
    const r = await runCli(['--help']);
    expect(r.code).toBe(0);
    for (const cmd of ['setup', 'backfill', 'verify', 'status', 'keygen']) expect(r.stdout).toMatch(new RegExp(`^\\s+${cmd}\\b`, 'm'));
    expect(r.stdout).toContain('Exit codes:');
  });

  it('unknown command exits 2', async () => {
    const r = await runCli(['frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown command 'frobnicate'/);
  });

  it('missing config exits 2 with a hint', async () => {
    const cwd = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-empty-'));
    const r = await runCli(['setup'], { cwd });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/error: no config file: pg-rekey\.yaml is not in .*\nhint: pass -c/);
  });

  it('keygen prints 64 hex characters, a new key each time', async () => {
    const [a, b] = await Promise.all([runCli(['keygen']), runCli(['keygen'])]);
    expect([a.code, b.code]).toEqual([0, 0]);
    expect(a.stdout).toMatch(/^[0-9a-f]{64}\n$/);
    expect(b.stdout).not.toBe(a.stdout);
  });

  it('an unreachable database exits 3 with a hint', async () => {
    const f = writeCliFiles({ databaseUrl: 'postgres://postgres@127.0.0.1:1/nowhere', tables: [{ name: 'incidents', columns: ['title'] }] });
    const r = await cli(f, ['setup']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/error: cannot connect to PostgreSQL \(connection from file\).*ECONNREFUSED/);
    expect(r.stderr).toMatch(/^hint: check --database-url/m);
  });

  it('a bad key exits 2 and never shows the key', async () => {
    const bad = KEY_HEX[1]!.slice(0, 63);
    const f = writeCliFiles({ tables: [{ name: 'incidents', columns: ['title'] }], env: { ...keyEnv(), LIBSODIUM_ENCRYPTION_KEY: bad } });
    const r = await cli(f, ['backfill']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('LIBSODIUM_ENCRYPTION_KEY must be 64 hex characters (32 bytes); it has 63 characters');
    for (const hex of [bad, KEY_HEX[2]!]) for (let i = 0; i + 12 <= hex.length; i += 6) expect(output(r)).not.toContain(hex.slice(i, i + 12));
  });
});

describe('pg-rekey CLI against PostgreSQL', () => {
  it('setup refuses a table without primary key, lists the problem and creates nothing', async () => {
    const db = await database('cli_nopk');
    await createIncidentsTable(db.pool, 'incidents');
    await createIncidentsTable(db.pool, 'nopk', { primaryKey: false });
    const r = await cli(files(db, ['incidents', 'nopk', 'missing']), ['setup']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/setup found 2 problem\(s\); nothing was changed/);
    expect(r.stderr).toMatch(/- public\.nopk: has neither a primary key nor a replica identity index/);
    expect(r.stderr).toMatch(/- public\.missing: no such table/);
    const left = await db.pool.query(
      `select to_regnamespace('pgrekey') is null as no_schema,
              not exists (select from pg_replication_slots where slot_name = $1) as no_slot,
              not exists (select from pg_publication) as no_publication`,
      [db.name],
    );
    expect(left.rows[0]).toEqual({ no_schema: true, no_slot: true, no_publication: true });
  });

  it('setup (idempotent), verify, backfill, verify, status', async () => {
    const db = await database('cli_flow');
    await createIncidentsTable(db.pool, 'incidents');
    const filled = await fillIncidents(db.pool, 'incidents', ring, { rows: 3000, xmlEvery: 50, seed: 21 });
    const f = files(db, ['incidents']);
    const first = await cli(f, ['setup']);
    expect(first.code, output(first)).toBe(0);
    expect(first.stdout).toMatch(/applied migrations: 001_state\.sql/);
    const second = await cli(f, ['setup']);
    expect(second.code, output(second)).toBe(0);
    expect(second.stdout).toMatch(/state schema pgrekey is up to date/);

    const before = await cli(f, ['verify']);
    expect(before.code, output(before)).toBe(1);
    expect(before.stdout).toMatch(new RegExp(`NOT converged: ${filled.counts.title.v1 + filled.counts.raw_xml.v1} value\\(s\\) are not at v2`));

    const backfill = await cli(f, ['backfill', '--json']);
    expect(backfill.code, output(backfill)).toBe(0);
    expect(JSON.parse(backfill.stdout)).toMatchObject({ target: 'v2', rewritten: filled.counts.title.v1 + filled.counts.raw_xml.v1, quarantined: 0 });

    const after = await cli(f, ['verify']);
    expect(after.code, output(after)).toBe(0);
    const json = await cli(f, ['verify', '--json']);
    expect(json.code).toBe(0);
    const report = JSON.parse(json.stdout) as { converged: boolean; remaining: number; columns: { column: string; byVersion: Record<string, number> }[] };
    expect(report).toMatchObject({ converged: true, remaining: 0, quarantined: 0 });
    expect(report.columns.map((c) => [c.column, c.byVersion])).toEqual([
      ['title', { v2: filled.ledger.title.size }],
      ['raw_xml', { v2: filled.ledger.raw_xml.size }],
    ]);
    expect((await checkLedger(db.pool, 'incidents', 'raw_xml', filled.ledger.raw_xml, ring)).mismatched).toEqual([]);

    const status = await cli(f, ['status', '--json']);
    expect(status.code, output(status)).toBe(0);
    const s = JSON.parse(status.stdout) as { sweep: { relation: string; state: string; percent: number; rowsRewritten: number }[] };
    expect(s.sweep).toEqual([expect.objectContaining({ relation: 'public.incidents', state: 'done', percent: 100, rowsRewritten: filled.counts.title.v1 + filled.counts.raw_xml.v1 })]);
  });

  it('setup waits for an open transaction before creating the slot, names it in a warning, and completes once it ends', async () => {
    // A cluster of its own: the open transaction below would hold up every other test file's setup
    // (slot creation waits for xids in all databases), and theirs would show up in this warning.
    const cluster = await startCluster(inject('pgMajor') as PgMajor);
    const pool = new pg.Pool({ connectionString: cluster.url, max: 3 });
    pool.on('error', () => undefined);
    try {
      await createIncidentsTable(pool, 'incidents');
      const f = writeCliFiles({ databaseUrl: cluster.url, tables: [{ name: 'incidents', columns: ['title', 'raw_xml'] }], replication: { slot: 'slotwait', publication: 'rekey_pub' } });
      // A transaction with an xid, left open: PostgreSQL cannot create a logical slot until it ends.
      const blocker = await pool.connect();
      let released = false;
      try {
        await blocker.query(`set application_name = 'forgotten-psql'`);
        await blocker.query('begin');
        await blocker.query(`select txid_current()`);
        const blockerPid = (await blocker.query<{ pid: number }>(`select pg_backend_pid() as pid`)).rows[0]!.pid;
        const setup = spawnCli(['-c', f.configPath, '--env-file', f.envPath, 'setup']);
        const warning = (await setup.waitForLine(/creating the replication slot waits for/, { timeoutMs: 30_000 })).text;
        expect(warning).toContain(`"blockers":["pid ${blockerPid} in database postgres (application forgotten-psql, idle in transaction for`);
        expect(warning).toContain('pg_terminate_backend');
        expect(setup.child.exitCode).toBeNull();
        await blocker.query('rollback');
        blocker.release();
        released = true;
        const r = await setup.exited;
        expect(r.code, r.stdout + r.stderr).toBe(0);
        expect(r.stdout).toMatch(/created replication slot slotwait/);
      } finally {
        if (!released) {
          await blocker.query('rollback').catch(() => undefined);
          blocker.release();
        }
      }
    } finally {
      await pool.end().catch(() => undefined);
      await cluster.stop();
    }
  });

  it('a backfill killed with SIGKILL resumes from its checkpoint', async () => {
    const db = await database('cli_kill');
    await createIncidentsTable(db.pool, 'big');
    const filled = await fillIncidents(db.pool, 'big', ring, { rows: 30_000, seed: 8, mix: { v1: 0.9, v2: 0.1, null: 0, notOurs: 0 } });
    const f = files(db, ['big'], { chunk_time: 0, chunk_blocks: 1, nice_ratio: 3, progress_interval: '0ms' });
    expect((await cli(f, ['setup'])).code).toBe(0);

    const proc = spawnCli(['-c', f.configPath, '--env-file', f.envPath, 'backfill']);
    await proc.waitForLine((t) => t.includes('"sweep progress"') && (JSON.parse(t) as { block: number }).block >= 20);
    const killed = await proc.stop('SIGKILL');
    expect(killed.signal).toBe('SIGKILL');

    const status = await cli(f, ['status', '--json']);
    const seg = (JSON.parse(status.stdout) as { sweep: { state: string; nextBlock: number; totalBlocks: number; rowsRewritten: number }[] }).sweep[0]!;
    expect(seg.state).toBe('running');
    expect(seg.nextBlock).toBeGreaterThanOrEqual(20);
    expect(seg.nextBlock).toBeLessThan(seg.totalBlocks);
    expect(seg.rowsRewritten).toBeGreaterThan(0);
    expect(seg.rowsRewritten).toBeLessThan(filled.counts.title.v1);

    // The environment overrides the file (faster chunks for the rest).
    const resumed = await cli(f, ['backfill'], { PG_REKEY_SWEEP_CHUNK_BLOCKS: '64', PG_REKEY_SWEEP_NICE_RATIO: '0' });
    expect(resumed.code, output(resumed)).toBe(0);
    const resume = resumed.stderr.split('\n').find((l) => l.includes('"resuming sweep"'));
    expect(JSON.parse(resume!)).toMatchObject({ resumeAt: seg.nextBlock });
    const done = (JSON.parse((await cli(f, ['status', '--json'])).stdout) as { sweep: { state: string; rowsRewritten: number }[] }).sweep[0]!;
    expect(done).toMatchObject({ state: 'done', rowsRewritten: filled.counts.title.v1 });
    const verify = await cli(f, ['verify']);
    expect(verify.code, output(verify)).toBe(0);
    expect((await checkLedger(db.pool, 'big', 'title', filled.ledger.title, ring)).byVersion).toEqual({ v2: 30_000 });
  });
});
