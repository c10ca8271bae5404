import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { keyMaterialIn, keysGiven } from '../support/key-leak.js';
import { KEY_HEX } from '../support/fixtures.js';

describe('the suite-wide key leak guard', () => {
  const other = 'ab'.repeat(32);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'key-leak-'));
  const envFile = path.join(dir, '.env.local');
  writeFileSync(envFile, `LIBSODIUM_ENCRYPTION_KEY=${KEY_HEX[1]}\nexport LIBSODIUM_ENCRYPTION_KEY_V3="${other}"\nOTHER=1\n`);
  const keys = keysGiven(['-c', 'x.yaml', '--env-file', envFile, 'verify'], { LIBSODIUM_ENCRYPTION_KEY_V9: 'cd'.repeat(32) });

  it('knows the keys of --env-file, of the environment and the fixtures', () => {
    const hexes = [...keys.values()];
    expect(hexes).toContain(other);
    expect(hexes).toContain('cd'.repeat(32));
    expect(hexes).toContain(KEY_HEX[2]);
  });

  it('finds a key in hex (either case) or base64, and names it without printing it', () => {
    expect(keyMaterialIn(`error: bad key ${other.toUpperCase()}`, keys)).toEqual([expect.stringContaining('LIBSODIUM_ENCRYPTION_KEY_V3')]);
    expect(keyMaterialIn(`{"key":"${Buffer.from(KEY_HEX[2]!, 'hex').toString('base64')}"}`, keys)).toEqual(['fixture key v2']);
    expect(keyMaterialIn(`k=${Buffer.from('cd'.repeat(32), 'hex').toString('base64url')}`, keys)).toEqual(['LIBSODIUM_ENCRYPTION_KEY_V9']);
  });

  it('finds nothing in ordinary output (fingerprints, envelopes)', () => {
    expect(keyMaterialIn('v1 fingerprint sha256:0a1b2c... converged; v1:QUJDREVGR0g=', keys)).toEqual([]);
  });
});
