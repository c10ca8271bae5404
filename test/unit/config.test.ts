import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../src/config/load-config.js';
import { loadKeyRing, loadTargetVersion } from '../../src/crypto/key-ring.js';
import { ConfigError, describeError } from '../../src/errors.js';
import { KEY_HEX } from '../support/fixtures.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-config-'));
let n = 0;
function file(text: string, name = `c${n++}.yaml`): string {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
}
const MINIMAL = 'tables:\n  - name: incidents\n    columns: [title]\n';

/** Runs fn, expects a ConfigError, returns its full terminal text (message, problems, hint). */
function configError(fn: () => unknown): { err: ConfigError; text: string } {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return { err: e as ConfigError, text: describeError(e) };
  }
  throw new Error('expected a ConfigError');
}

describe('loadConfig', () => {
  afterEach(() => vi.restoreAllMocks());

  it('reads a minimal file and fills every default', () => {
    const c = loadConfig({ config: file(MINIMAL) }, {});
    expect(c.tables).toEqual([{ schema: 'public', name: 'incidents', columns: ['title'] }]);
    expect(c.sweep).toEqual({
      mode: 'auto', latencyRatio: 1.1, probeIntervalMs: 100, baselineIntervalMs: 60_000, maxRate: 0, maxWalRate: 0,
      chunkTimeMs: 5, chunkBlocks: 8, minChunkBlocks: 1, maxChunkBlocks: 8192, niceRatio: 4,
      statementTimeoutMs: 30_000, lockTimeoutMs: 500, wrongKeyThreshold: 8, progressIntervalMs: 5_000, workers: 1, rangeLeaseMs: 30_000,
    });
    expect(c.throttle).toEqual({
      maxReplicaLagMs: 10_000, maxReplicaLagBytes: 1024 ** 3, maxActiveBackends: 0, criticalActiveBackends: 0,
      criticalAction: 'stop', hibernateMs: 60_000, pauseFile: undefined, checkIntervalMs: 1_000,
    });
    expect(c.replication).toEqual({ slot: 'pg_rekey', publication: 'pg_rekey', maxRetainedWalBytes: 10 * 1024 ** 3, origin: 'auto' });
    expect(c.connectionString).toBeUndefined();
    expect(c.connectionSource).toBe('PG* variables');
    expect(c.logLevel).toBeUndefined(); // each command picks its default
    expect(Object.isFrozen(c.sweep) && Object.isFrozen(c.tables[0])).toBe(true);
  });

  it('reports a missing file: default path, explicit path, PG_REKEY_CONFIG', () => {
    vi.spyOn(process, 'cwd').mockReturnValue(dir);
    const absent = configError(() => loadConfig({}, {}));
    expect(absent.err.message).toMatch(/no config file: pg-rekey\.yaml/);
    expect(absent.text).toMatch(/hint: pass -c/);
    const missing = path.join(dir, 'nope.yaml');
    expect(configError(() => loadConfig({ config: missing }, {})).text).toMatch(/cannot read config file .*nope\.yaml: ENOENT\nhint: /);
    expect(configError(() => loadConfig({}, { PG_REKEY_CONFIG: missing })).err.message).toMatch(/nope\.yaml: ENOENT/);
  });

  it('reports bad YAML and a document that is not a mapping', () => {
    const bad = configError(() => loadConfig({ config: file('tables: [\n  - name: x\n') }, {}));
    expect(bad.err.message).toMatch(/is not valid YAML/);
    expect(bad.err.problems.length).toBeGreaterThan(0);
    expect(configError(() => loadConfig({ config: file('- a\n- b\n') }, {})).err.message).toMatch(/must be a YAML mapping/);
    expect(configError(() => loadConfig({ config: file('') }, {})).text).toMatch(/tables/);
  });

  it('lists every schema problem at once: unknown fields, bad duration, bad numbers', () => {
    const text = `${MINIMAL}    extra: 1\nsweep:\n  statement_timeout: 5 minutes\n  lock_timeout: 2x\n  chunk_blocks: 0\nbogus: true\n`;
    const { err } = configError(() => loadConfig({ config: file(text) }, {}));
    expect(err.problems).toHaveLength(5);
    expect(err.problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^tables\.0: .*"extra"/),
        expect.stringMatching(/^\(top level\): .*"bogus"/),
        expect.stringMatching(/^sweep\.statement_timeout: a duration like/),
        expect.stringMatching(/^sweep\.lock_timeout: a duration like/),
        expect.stringMatching(/^sweep\.chunk_blocks: /),
      ]),
    );
  });

  it('daemon.shutdown_timeout: 10s by default, a duration of at least 1s, overridable from the environment', () => {
    expect(loadConfig({ config: file(MINIMAL) }, {}).daemon.shutdownTimeoutMs).toBe(10_000);
    expect(loadConfig({ config: file(`${MINIMAL}daemon:\n  shutdown_timeout: 30s\n`) }, {}).daemon.shutdownTimeoutMs).toBe(30_000);
    expect(loadConfig({ config: file(MINIMAL) }, { PG_REKEY_DAEMON_SHUTDOWN_TIMEOUT: '2500ms' }).daemon.shutdownTimeoutMs).toBe(2_500);
    expect(loadConfig({ config: file(MINIMAL) }, { PG_REKEY_REPLICATION_ORIGIN: 'off' }).replication.origin).toBe('off');
    expect(configError(() => loadConfig({ config: file(MINIMAL) }, { PG_REKEY_REPLICATION_ORIGIN: 'yes' })).text).toMatch(/replication\.origin/);
    const { err } = configError(() => loadConfig({ config: file(`${MINIMAL}daemon:\n  shutdown_timeout: 200ms\n`) }, {}));
    expect(err.problems).toEqual([expect.stringMatching(/^daemon\.shutdown_timeout: at least 1s/)]);
  });

  it('converts durations', () => {
    const c = loadConfig({ config: file(`${MINIMAL}sweep:\n  statement_timeout: 1.5s\n  lock_timeout: 250ms\n  progress_interval: 2m\n`) }, {});
    expect([c.sweep.statementTimeoutMs, c.sweep.lockTimeoutMs, c.sweep.progressIntervalMs]).toEqual([1500, 250, 120_000]);
    expect(loadConfig({ config: file(`${MINIMAL}sweep:\n  lock_timeout: 750\n`) }, {}).sweep.lockTimeoutMs).toBe(750);
  });

  it('sweep.workers: 1 by default (no ranges); range_lease at least 1s', () => {
    const d = loadConfig({ config: file(MINIMAL) }, {});
    expect([d.sweep.workers, d.sweep.rangeLeaseMs]).toEqual([1, 30_000]);
    const c = loadConfig({ config: file(`${MINIMAL}sweep:\n  workers: 4\n  range_lease: 5s\n`) }, {});
    expect([c.sweep.workers, c.sweep.rangeLeaseMs]).toEqual([4, 5000]);
    const { err } = configError(() => loadConfig({ config: file(`${MINIMAL}sweep:\n  workers: 0\n  range_lease: 200ms\n`) }, {}));
    expect(err.problems).toEqual([expect.stringMatching(/^sweep\.workers/), expect.stringMatching(/^sweep\.range_lease: at least 1s/)]);
  });

  it('rejects a table listed twice, even spelled differently, and a column listed twice', () => {
    const text = 'tables:\n  - name: incidents\n    columns: [title]\n  - name: public.Incidents\n    columns: [raw_xml, "raw_xml"]\n';
    const { err } = configError(() => loadConfig({ config: file(text) }, {}));
    expect(err.problems).toEqual([
      'tables[1].name: public.Incidents is listed twice; list its columns once',
      'tables[1].columns: a column is listed twice',
    ]);
  });

  it('rejects bad identifiers with the field that holds them', () => {
    const text = [
      'tables:',
      '  - name: "a.b.c"',
      '    columns: [title]',
      '  - name: "bad name"',
      '    columns: [title]',
      "  - name: '\"unterminated'",
      '    columns: [title]',
      '  - name: ok',
      '    columns: ["t.title", ";drop"]',
      '',
    ].join('\n');
    const { err } = configError(() => loadConfig({ config: file(text) }, {}));
    expect(err.problems).toHaveLength(5);
    expect(err.problems[0]).toBe('tables[0].name: use table or schema.table');
    expect(err.problems[1]).toBe(`tables[1].name: expected "." after "bad" in "bad name"`);
    expect(err.problems[2]).toMatch(/^tables\[2\]\.name: unterminated quoted identifier/);
    expect(err.problems[3]).toBe('tables[3].columns[0]: a column name, without table');
    expect(err.problems[4]).toMatch(/^tables\[3\]\.columns\[1\]: unexpected character ";"/);
  });

  it('parses quoted names the way PostgreSQL does', () => {
    const text = `tables:\n  - name: '"My Schema"."Calls.2024"'\n    columns: ['"Raw ""XML"""', Title]\n  - name: Ops.Incidents\n    columns: [title]\n`;
    const c = loadConfig({ config: file(text) }, {});
    expect(c.tables).toEqual([
      { schema: 'My Schema', name: 'Calls.2024', columns: ['Raw "XML"', 'title'] },
      { schema: 'ops', name: 'incidents', columns: ['title'] },
    ]);
  });

  it('folds only ASCII letters of unquoted names, as PostgreSQL does in UTF-8', () => {
    const c = loadConfig({ config: file('tables:\n  - name: Äpfel\n    columns: [ÉTAT]\n') }, {});
    expect(c.tables[0]).toMatchObject({ name: 'Äpfel', columns: ['État'] });
  });

  it('applies precedence flag > env > file > default', () => {
    const withFile = file(`database: postgres://file/db\n${MINIMAL}sweep:\n  chunk_blocks: 100\nlog_level: warn\n`);
    const env = { DATABASE_URL: 'postgres://env/db', PG_REKEY_SWEEP_CHUNK_BLOCKS: '50', PG_REKEY_LOG_LEVEL: 'error' };
    const all = loadConfig({ config: withFile, databaseUrl: 'postgres://flag/db', logLevel: 'debug' }, env);
    expect([all.connectionString, all.connectionSource, all.sweep.chunkBlocks, all.logLevel]).toEqual(['postgres://flag/db', 'flag', 50, 'debug']);
    const envWins = loadConfig({ config: withFile }, env);
    expect([envWins.connectionString, envWins.connectionSource, envWins.sweep.chunkBlocks, envWins.logLevel]).toEqual(['postgres://env/db', 'env', 50, 'error']);
    const fileWins = loadConfig({ config: withFile }, {});
    expect([fileWins.connectionString, fileWins.connectionSource, fileWins.sweep.chunkBlocks, fileWins.logLevel]).toEqual(['postgres://file/db', 'file', 100, 'warn']);
    const defaults = loadConfig({ config: file(MINIMAL) }, { PG_REKEY_SWEEP_NICE_RATIO: '' });
    expect([defaults.connectionSource, defaults.sweep.chunkBlocks, defaults.sweep.niceRatio]).toEqual(['PG* variables', 8, 4]);
  });

  it('validates environment overrides like file values', () => {
    const { err } = configError(() => loadConfig({ config: file(MINIMAL) }, { PG_REKEY_SWEEP_CHUNK_BLOCKS: 'lots', PG_REKEY_SWEEP_LOCK_TIMEOUT: '3s' }));
    expect(err.problems).toEqual([expect.stringMatching(/^sweep\.chunk_blocks: /)]);
    expect(loadConfig({ config: file(MINIMAL) }, { PG_REKEY_SWEEP_LOCK_TIMEOUT: '3s' }).sweep.lockTimeoutMs).toBe(3000);
  });
});

describe('loadKeyRing', () => {
  const V1 = 'LIBSODIUM_ENCRYPTION_KEY';
  const V2 = 'LIBSODIUM_ENCRYPTION_KEY_V2';
  const TARGET = 'LIBSODIUM_ENCRYPTION_KEY_VERSION';
  // A bad key that is still mostly hex: any 16-character run of it in a message is a leak.
  const BAD_KEY = `${KEY_HEX[3]!.slice(0, 60)}zz`;
  const allHex = [KEY_HEX[1]!, KEY_HEX[2]!, KEY_HEX[3]!, BAD_KEY];

  function keyError(env: Record<string, string>, envFile?: string): ConfigError {
    const { err, text } = configError(() => loadKeyRing({ env, envFile }));
    for (const hex of allHex) for (let i = 0; i + 16 <= hex.length; i += 8) expect(text).not.toContain(hex.slice(i, i + 16));
    return err;
  }

  it('builds a ring from the application variables', () => {
    const ring = loadKeyRing({ env: { [V1]: KEY_HEX[1]!, [V2]: KEY_HEX[2]!.toUpperCase(), [TARGET]: 'v2' } });
    expect([ring.target, ring.versions, ring.oldVersions]).toEqual([2, [1, 2], [1]]);
    expect(Buffer.from(ring.key(2)!).toString('hex')).toBe(KEY_HEX[2]);
    expect(JSON.stringify(ring)).not.toContain(KEY_HEX[1]!.slice(0, 16));
  });

  it('rejects a key that is not 64 hex characters, without quoting it', () => {
    const short = keyError({ [V1]: KEY_HEX[1]!.slice(0, 63), [V2]: KEY_HEX[2]!, [TARGET]: 'v2' });
    expect(short.problems).toEqual([`${V1} must be 64 hex characters (32 bytes); it has 63 characters`]);
    const nonHex = keyError({ [V1]: KEY_HEX[1]!, [V2]: BAD_KEY, [TARGET]: 'v2' });
    expect(nonHex.problems[0]).toBe(`${V2} must be 64 hex characters (32 bytes); it has 62 characters including non-hex ones`);
    // The target's own key is bad: report that once, not also "has no key".
    expect(nonHex.problems).toHaveLength(1);
  });

  it('refuses two versions with the same key (a copy-paste slip), naming the variables only', () => {
    const err = keyError({ [V1]: KEY_HEX[1]!, [V2]: KEY_HEX[1]!.toUpperCase(), [TARGET]: 'v2' });
    expect(err.problems).toEqual([`${V1} and ${V2} hold the same key: every version needs its own key (check which one the application uses for each version)`]);
  });

  it('requires a target that has a key, and an old version besides it', () => {
    expect(keyError({ [V1]: KEY_HEX[1]!, [V2]: KEY_HEX[2]!, [TARGET]: 'v3' }).problems).toEqual([
      'target version v3 has no key: set LIBSODIUM_ENCRYPTION_KEY_V3',
    ]);
    expect(keyError({ [V2]: KEY_HEX[2]!, [TARGET]: 'v2' }).problems[0]).toMatch(/^only the target key v2 is configured/);
    expect(keyError({ [V1]: KEY_HEX[1]!, [V2]: KEY_HEX[2]! }).problems).toEqual([expect.stringMatching(new RegExp(`^${TARGET} is not set`))]);
    expect(keyError({ [V1]: KEY_HEX[1]!, [V2]: KEY_HEX[2]!, [TARGET]: 'two' }).problems).toEqual([`${TARGET} must look like v1..v9`]);
  });

  it('reports every key problem at once', () => {
    const err = keyError({ [V1]: 'abc', [V2]: BAD_KEY });
    expect(err.problems).toHaveLength(3);
    expect(err.hint).toMatch(/pass --env-file/);
  });

  it('reads the env file, and the environment wins over it', () => {
    const envFile = file(`${V1}=${KEY_HEX[3]}\n${V2}=${KEY_HEX[2]}\n${TARGET}=v1\n`, '.env.local');
    const fromFile = loadKeyRing({ env: {}, envFile });
    expect([fromFile.target, Buffer.from(fromFile.key(1)!).toString('hex')]).toEqual([1, KEY_HEX[3]]);
    const mixed = loadKeyRing({ env: { [V1]: KEY_HEX[1]!, [TARGET]: 'v2' }, envFile });
    expect([mixed.target, Buffer.from(mixed.key(1)!).toString('hex'), Buffer.from(mixed.key(2)!).toString('hex')]).toEqual([2, KEY_HEX[1], KEY_HEX[2]]);
    expect(loadTargetVersion({ env: {}, envFile })).toBe(1);
    const badInFile = keyError({}, file(`${V1}=${BAD_KEY}\n${V2}=${KEY_HEX[2]}\n${TARGET}=v2\n`, '.env.bad'));
    expect(badInFile.hint).toContain('.env.bad');
  });

  it('reports an env file it cannot read', () => {
    const err = keyError({ [TARGET]: 'v2' }, path.join(dir, 'missing.env'));
    expect(err.message).toMatch(/cannot read env file .*missing\.env: ENOENT/);
    expect(err.hint).toMatch(/--env-file/);
  });

  it('loadTargetVersion needs only the target variable', () => {
    expect(loadTargetVersion({ env: { [TARGET]: 'v3' } })).toBe(3);
    expect(() => loadTargetVersion({ env: {} })).toThrow(/LIBSODIUM_ENCRYPTION_KEY_VERSION is not set/);
    expect(() => loadTargetVersion({ env: { [TARGET]: 'x' } })).toThrow(/not a version like v2/);
  });
});
