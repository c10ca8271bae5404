import { chmodSync, mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadKeyRing } from '../../src/crypto/key-ring.js';
import { ConfigError } from '../../src/errors.js';

const K1 = '11'.repeat(32);
const K2 = '22'.repeat(32);

function keyFile(content: string, mode: number): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-keyfile-'));
  const p = path.join(dir, 'key');
  writeFileSync(p, content);
  chmodSync(p, mode);
  return p;
}

function problems(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  }
  return [];
}

describe('keys from files (_FILE variables)', () => {
  it('reads a private key file, trimming the newline', () => {
    const ring = loadKeyRing({ env: { LIBSODIUM_ENCRYPTION_KEY_FILE: keyFile(`${K1}\n`, 0o600), LIBSODIUM_ENCRYPTION_KEY_V2: K2, LIBSODIUM_ENCRYPTION_KEY_VERSION: 'v2' } });
    expect(Buffer.from(ring.key(1)!).toString('hex')).toBe(K1);
  });

  it('refuses a key file readable by group or others, saying how to fix it, never showing the key', () => {
    const p = keyFile(K2, 0o644);
    const msgs = problems(() => loadKeyRing({ env: { LIBSODIUM_ENCRYPTION_KEY: K1, LIBSODIUM_ENCRYPTION_KEY_V2_FILE: p, LIBSODIUM_ENCRYPTION_KEY_VERSION: 'v2' } }));
    expect(msgs).toEqual([`LIBSODIUM_ENCRYPTION_KEY_V2_FILE: ${p} is readable or writable by group or others (mode 644); run chmod 600 ${p}`]);
    expect(msgs.join()).not.toContain(K2);
  });

  it('refuses a variable set both directly and as a file, and a missing file', () => {
    const msgs = problems(() =>
      loadKeyRing({ env: { LIBSODIUM_ENCRYPTION_KEY: K1, LIBSODIUM_ENCRYPTION_KEY_FILE: keyFile(K1, 0o600), LIBSODIUM_ENCRYPTION_KEY_V2_FILE: '/nonexistent/k', LIBSODIUM_ENCRYPTION_KEY_VERSION: 'v2' } }),
    );
    expect(msgs[0]).toMatch(/both LIBSODIUM_ENCRYPTION_KEY and LIBSODIUM_ENCRYPTION_KEY_FILE are set/);
    expect(msgs[1]).toMatch(/LIBSODIUM_ENCRYPTION_KEY_V2_FILE: cannot read \/nonexistent\/k \(ENOENT\)/);
  });
});

describe('keys from systemd credentials (LoadCredential=, $CREDENTIALS_DIRECTORY)', () => {
  // systemd grants the service's user read access with an ACL on tmpfs: stat then shows mode 440.
  function credentials(): { dir: string; outside: string } {
    const root = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-creds-'));
    const dir = path.join(root, 'pg-rekey.service');
    mkdirSync(dir, { mode: 0o500 });
    writeFileSync(path.join(dir, 'key-v1'), `${K1}\n`, { mode: 0o440 });
    const outside = path.join(root, 'pg-rekey.service-other');
    mkdirSync(outside);
    writeFileSync(path.join(outside, 'key-v1'), `${K1}\n`, { mode: 0o644 });
    symlinkSync(path.join(outside, 'key-v1'), path.join(dir, 'link-out'));
    return { dir, outside };
  }
  const base = { LIBSODIUM_ENCRYPTION_KEY_V2: K2, LIBSODIUM_ENCRYPTION_KEY_VERSION: 'v2' };

  it('accepts a credential file whose ACL mask shows as group bits, inside $CREDENTIALS_DIRECTORY only', () => {
    const { dir } = credentials();
    const ring = loadKeyRing({ env: { ...base, CREDENTIALS_DIRECTORY: dir, LIBSODIUM_ENCRYPTION_KEY_FILE: path.join(dir, 'key-v1') } });
    expect(Buffer.from(ring.key(1)!).toString('hex')).toBe(K1);
    // The same file without the variable systemd sets: refused as before.
    expect(problems(() => loadKeyRing({ env: { ...base, LIBSODIUM_ENCRYPTION_KEY_FILE: path.join(dir, 'key-v1') } }))[0]).toMatch(/mode 440\); run chmod 600/);
  });

  it('checks a file outside the directory (a sibling with the same prefix, a symbolic link out of it) like any other', () => {
    const { dir, outside } = credentials();
    for (const file of [path.join(outside, 'key-v1'), path.join(dir, 'link-out'), path.join(dir, '..', 'pg-rekey.service-other', 'key-v1')]) {
      expect(problems(() => loadKeyRing({ env: { ...base, CREDENTIALS_DIRECTORY: dir, LIBSODIUM_ENCRYPTION_KEY_FILE: file } }))[0], file).toMatch(/mode 644\); run chmod 600/);
    }
    // A relative CREDENTIALS_DIRECTORY is not systemd's: no exception.
    expect(problems(() => loadKeyRing({ env: { ...base, CREDENTIALS_DIRECTORY: path.relative(process.cwd(), dir), LIBSODIUM_ENCRYPTION_KEY_FILE: path.join(dir, 'key-v1') } }))[0]).toMatch(/mode 440/);
  });
});
