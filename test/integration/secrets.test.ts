// Every line pg-rekey prints in a full run with bad inputs: no key, no plaintext, no full ciphertext.
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { KEY_HEX, insertBatched, testRing } from '../support/fixtures.js';
import { cli, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { runCli, spawnCli } from '../support/cli.js';
import { encryptValue } from '../../src/crypto/rewrite.js';

let db: TestDatabase;
let files: DaemonFiles;
const output: string[] = [];
const plaintexts: string[] = [];
const stored: string[] = [];

async function capture(...args: string[]): Promise<number | null> {
  const r = await cli(files, ...args);
  output.push(r.stdout, r.stderr);
  return r.code;
}

beforeAll(async () => {
  db = await createTestDatabase('secrets');
  const ring = await testRing();
  await db.pool.query(`create table notes (id bigint primary key, body text)`);
  const rows: unknown[][] = [];
  for (let id = 1; id <= 300; id++) {
    const pt = `caller reports smoke at ${1000 + id} Elm St, unit ${id}`;
    plaintexts.push(pt);
    const v = encryptValue(Buffer.from(pt), id % 4 === 0 ? 2 : 1, ring);
    stored.push(v);
    rows.push([id, v]);
  }
  // Corrupt values next to good ones: they end up in error paths and the quarantine.
  const good = stored[0]!;
  const corrupt = [`v1:${good.slice(3, -6)}AAAA==`, 'v1:', 'v7:' + good.slice(3), `v1:${good.slice(3)}!`];
  corrupt.forEach((v, i) => {
    stored.push(v);
    rows.push([10_000 + i, v]);
  });
  await insertBatched(db.pool, 'notes', ['id', 'body'], ['bigint', 'text'], rows);
  files = writeDaemonFiles(db.url, [{ name: 'notes', columns: ['body'] }], { log_level: 'trace' });
});

afterAll(async () => {
  await db.drop();
});

describe('secrets never reach logs or error messages', () => {
  it('runs a full flow with bad inputs and checks every line', async () => {
    // Bad keys: too short, not hex, a wrong v1 key (wrong-key stop).
    for (const env of [
      { LIBSODIUM_ENCRYPTION_KEY: KEY_HEX[1]!.slice(0, 60), LIBSODIUM_ENCRYPTION_KEY_V2: KEY_HEX[2]!, LIBSODIUM_ENCRYPTION_KEY_VERSION: 'v2' },
      { LIBSODIUM_ENCRYPTION_KEY: `zz${KEY_HEX[1]!.slice(2)}`, LIBSODIUM_ENCRYPTION_KEY_V2: KEY_HEX[2]!, LIBSODIUM_ENCRYPTION_KEY_VERSION: 'v2' },
      { LIBSODIUM_ENCRYPTION_KEY: KEY_HEX[9]!, LIBSODIUM_ENCRYPTION_KEY_V2: KEY_HEX[2]!, LIBSODIUM_ENCRYPTION_KEY_VERSION: 'v2' },
    ]) {
      const envFile = `${files.dir}/bad.env`;
      writeFileSync(envFile, Object.entries(env).map(([k, v]) => `${k}=${v}\n`).join(''), { mode: 0o600 });
      if (env.LIBSODIUM_ENCRYPTION_KEY === KEY_HEX[9]) expect(await capture('setup')).toBe(0);
      const r = await runCli(['backfill', '-c', files.configPath, '--env-file', envFile, '--database-url', db.url, '--log-level', 'trace']);
      output.push(r.stdout, r.stderr);
      expect([2, 3]).toContain(r.code);
    }
    // The real keys: dry run, backfill (quarantines the corrupt ones), run with the stream, verify, status, teardown.
    expect(await capture('backfill', '--dry-run', '--log-level', 'trace')).toBe(0);
    expect(await capture('backfill', '--log-level', 'trace')).toBe(1); // quarantined values remain
    const run = spawnCli(['run', '--exit-when-converged', '--log-level', 'trace', ...files.args]);
    await run.waitForLine(/"msg":"streaming"/);
    const ring = await testRing();
    const late = encryptValue(Buffer.from('late write from an old app instance'), 1, ring);
    plaintexts.push('late write from an old app instance');
    stored.push(late);
    await db.pool.query(`insert into notes values (20000, $1), (20001, 'v1:!!!!')`, [late]);
    const res = await run.exited;
    output.push(res.stdout, res.stderr);
    expect(res.code).toBe(1); // quarantined values remain
    expect(await capture('verify', '--json')).toBe(1);
    expect(await capture('status', '--json')).toBe(0);
    expect(await capture('status')).toBe(0);
    expect(await capture('teardown', '--force')).toBe(0);

    const all = output.join('\n');
    expect(all.length).toBeGreaterThan(5_000); // the check below looked at real output
    expect(all).toMatch(/wrong key for v1/);
    expect(all).toMatch(/must be 64 hex characters/);
    for (const hex of Object.values(KEY_HEX)) {
      for (const form of [hex, hex.toUpperCase(), Buffer.from(hex, 'hex').toString('base64'), hex.slice(0, 32), hex.slice(32)]) {
        expect(all, 'a key appears in the output').not.toContain(form);
      }
      expect(all).not.toContain(Buffer.from(hex, 'hex').toString('latin1'));
    }
    for (const pt of plaintexts) expect(all, 'a plaintext appears in the output').not.toContain(pt);
    for (const v of stored) if (v.length > 8) expect(all, 'a stored value appears in the output').not.toContain(v.slice(3, 43));
  });
});
