import { readFileSync } from 'node:fs';
import { inspect } from 'node:util';
import nacl from 'tweetnacl';
import { beforeAll, describe, expect, it } from 'vitest';
import { decodeBase64Strict, parseVersioned } from '../../src/crypto/envelope.js';
import { KeyRing } from '../../src/crypto/key-ring.js';
import { decryptValue, encryptValue, rewriteValue } from '../../src/crypto/rewrite.js';
import fc from 'fast-check';
import { freshNonce, initSodium, open, reseal, resealBase64, seal } from '../../src/crypto/secretbox.js';

interface Vector { version: number; plaintext_hex: string; nonce_hex: string; stored: string }
const fixture = JSON.parse(readFileSync(new URL('../fixtures/secretbox-vectors.json', import.meta.url), 'utf8')) as {
  keys_hex: Record<string, string>;
  vectors: Vector[];
};
const keyBytes = (v: number) => Uint8Array.from(Buffer.from(fixture.keys_hex[String(v)]!, 'hex'));
const ring = (target: number, versions = [1, 2, 3]) => new KeyRing(target, new Map(versions.map((v) => [v, keyBytes(v)])));

beforeAll(initSodium);

describe('envelope', () => {
  it('parses only lowercase v<N>: prefixes without leading zeros', () => {
    expect(parseVersioned('v1:abc')).toEqual({ version: 1, body: 'abc' });
    expect(parseVersioned('v12:')).toEqual({ version: 12, body: '' });
    for (const notOurs of ['V1:x', 'v1 :x', ' v1:x', 'v01:x', 'v0:x', 'vx:1', 'text v1:x', '', 'v:', 'v1']) {
      expect(parseVersioned(notOurs), notOurs).toBeNull();
    }
  });

  it('decodes only canonical padded base64', () => {
    expect(decodeBase64Strict('QQ==')?.toString()).toBe('A');
    expect(decodeBase64Strict('')?.length).toBe(0);
    for (const bad of ['QQ', 'QQ=', 'Q===', 'QR==', 'QQ==\n', 'Q Q==', '!!!!', 'QUJD-A==']) {
      expect(decodeBase64Strict(bad), JSON.stringify(bad)).toBeNull();
    }
  });
});

describe('secretbox compatibility with libsodium outside libsodium-wrappers', () => {
  it.each(fixture.vectors)('seal reproduces the system libsodium output for v$version', (vec) => {
    const sealed = seal(Buffer.from(vec.plaintext_hex, 'hex'), keyBytes(vec.version), Buffer.from(vec.nonce_hex, 'hex'));
    expect(`v${vec.version}:${sealed.toString('base64')}`).toBe(vec.stored);
  });

  it.each(fixture.vectors)('decrypts the system libsodium output for v$version', (vec) => {
    expect(Buffer.from(decryptValue(vec.stored, ring(2))!).toString('hex')).toBe(vec.plaintext_hex);
  });

  it('tweetnacl (an independent implementation) opens what pg-rekey writes, and vice versa', () => {
    const msg = Buffer.from('Wohnungsbrand, 2 Personen vermisst \u{1F692}');
    const stored = encryptValue(msg, 2, ring(2));
    const sealed = Buffer.from(parseVersioned(stored)!.body, 'base64');
    const opened = nacl.secretbox.open(sealed.subarray(24), sealed.subarray(0, 24), keyBytes(2));
    expect(Buffer.from(opened!).equals(msg)).toBe(true);

    const nonce = nacl.randomBytes(24);
    const theirs = Buffer.concat([nonce, nacl.secretbox(msg, nonce, keyBytes(1))]);
    expect(Buffer.from(open(theirs, keyBytes(1))!).equals(msg)).toBe(true);
  });

  it.each(fixture.vectors)('reseal opens the system libsodium output for v$version and seals it exactly as libsodium would', (vec) => {
    if (vec.version === 2) return; // the target: nothing to reseal
    const sealed = Buffer.from(parseVersioned(vec.stored)!.body, 'base64');
    const nonce = Buffer.alloc(24, 7);
    const out = reseal(sealed, keyBytes(vec.version), keyBytes(2), nonce);
    expect(out.ok).toBe(true);
    const expected = nacl.secretbox(Buffer.from(vec.plaintext_hex, 'hex'), nonce, keyBytes(2));
    expect(out.ok && out.sealed.equals(Buffer.concat([nonce, expected]))).toBe(true);
  });

  it('reseal: sizes around its reused buffer (64 kB) and far beyond, in any order, each checked by tweetnacl', () => {
    const sizes = [0, 1, 100, 65_536 - 40, 65_536 - 39, 65_536, 200_000, 3, 2_000_000, 50];
    for (const size of sizes) {
      const msg = Buffer.alloc(size);
      for (let i = 0; i < size; i++) msg[i] = (i * 31 + size) & 0xff;
      const n1 = nacl.randomBytes(24);
      const sealed = Buffer.concat([n1, nacl.secretbox(msg, n1, keyBytes(1))]);
      const out = reseal(sealed, keyBytes(1), keyBytes(2));
      expect(out.ok, `size ${size}`).toBe(true);
      if (!out.ok) continue;
      const opened = nacl.secretbox.open(out.sealed.subarray(24), out.sealed.subarray(0, 24), keyBytes(2));
      expect(opened && Buffer.from(opened).equals(msg), `size ${size}`).toBe(true);
    }
  });

  it('reseal: the wrong key or a flipped byte is a MAC failure, and the next value still reseals', () => {
    const msg = Buffer.from('call notes');
    const n1 = nacl.randomBytes(24);
    const sealed = Buffer.concat([n1, nacl.secretbox(msg, n1, keyBytes(1))]);
    expect(reseal(sealed, keyBytes(2), keyBytes(2))).toEqual({ ok: false, reason: 'mac-failure' });
    const flipped = Buffer.from(sealed);
    flipped[30]! ^= 1;
    expect(reseal(flipped, keyBytes(1), keyBytes(2))).toEqual({ ok: false, reason: 'mac-failure' });
    expect(reseal(sealed.subarray(0, 39), keyBytes(1), keyBytes(2))).toEqual({ ok: false, reason: 'mac-failure' });
    expect(reseal(sealed, keyBytes(1), keyBytes(2)).ok).toBe(true);
  });

  it('resealBase64 is decodeBase64Strict, the length check and reseal in one: same outcome, same output for the same nonce', () => {
    const nonce = Buffer.alloc(24, 9);
    const viaBuffers = (body: string) => {
      const sealed = decodeBase64Strict(body);
      if (!sealed) return { ok: false, reason: 'bad-base64' };
      if (sealed.length < 40) return { ok: false, reason: 'too-short' };
      const out = reseal(sealed, keyBytes(1), keyBytes(2), nonce);
      return out.ok ? { ok: true, body: out.sealed.toString('base64') } : out;
    };
    const good = (msg: Uint8Array) => {
      const n1 = nacl.randomBytes(24);
      return Buffer.concat([n1, nacl.secretbox(msg, n1, keyBytes(1))]).toString('base64');
    };
    const bodies = fc.oneof(
      fc.uint8Array({ maxLength: 300 }).map(good),
      fc.uint8Array({ maxLength: 80 }).map((b) => Buffer.from(b).toString('base64')),
      fc.tuple(fc.uint8Array({ maxLength: 100 }).map(good), fc.nat(), fc.constantFrom('!', '=', 'A', '\n', ' ', '-', '')).map(([b, i, c]) => b.slice(0, i % (b.length + 1)) + c + b.slice(i % (b.length + 1) + 1)),
      fc.string({ maxLength: 60 }),
    );
    fc.assert(
      fc.property(bodies, (body) => {
        expect(resealBase64(body, keyBytes(1), keyBytes(2), nonce)).toEqual(viaBuffers(body));
      }),
      { numRuns: 2000 },
    );
    for (const size of [0, 100, 65_536 - 40, 65_536, 200_000, 2_000_000, 5]) {
      const body = good(Buffer.alloc(size, size & 0xff));
      expect(resealBase64(body, keyBytes(1), keyBytes(2), nonce), `size ${size}`).toEqual(viaBuffers(body));
    }
  });

  it('hands out distinct nonces across pool refills', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 5000; i++) seen.add(Buffer.from(freshNonce()).toString('hex'));
    expect(seen.size).toBe(5000);
  });
});

describe('rewriteValue', () => {
  const target2 = ring(2);

  it('rewrites an old version to the target, preserving the exact bytes', () => {
    for (const vec of fixture.vectors.filter((v) => v.version !== 2)) {
      const out = rewriteValue(vec.stored, target2);
      expect(out.kind).toBe('rewritten');
      if (out.kind !== 'rewritten') continue;
      expect(out.version).toBe(vec.version);
      expect(out.value.startsWith('v2:')).toBe(true);
      expect(Buffer.from(decryptValue(out.value, ring(2, [2]))!).toString('hex')).toBe(vec.plaintext_hex);
    }
  });

  it('leaves target values and values that are not ours alone', () => {
    const v2 = fixture.vectors.find((v) => v.version === 2)!.stored;
    expect(rewriteValue(v2, target2)).toEqual({ kind: 'at-target' });
    expect(rewriteValue('plain text', target2)).toEqual({ kind: 'not-ours' });
    expect(rewriteValue('V1:abc', target2)).toEqual({ kind: 'not-ours' });
  });

  it('reports every failure kind without touching the value', () => {
    const v1 = fixture.vectors[1]!.stored;
    const body = v1.slice(3);
    const flipped = Buffer.from(body, 'base64');
    flipped[30]! ^= 1;
    const cases: [string, string][] = [
      ['v1:!!!notbase64', 'bad-base64'],
      ['v1:', 'too-short'],
      [`v1:${Buffer.alloc(39).toString('base64')}`, 'too-short'],
      [`v1:${flipped.toString('base64')}`, 'mac-failure'],
      [`v3:${body}`, 'mac-failure'], // v1 ciphertext labelled v3: wrong key
      [`v7:${body}`, 'unknown-version'],
    ];
    for (const [value, reason] of cases) {
      expect(rewriteValue(value, target2), `${value.slice(0, 8)} -> ${reason}`).toEqual({
        kind: 'failed',
        version: Number(value.slice(1, 2)),
        reason,
      });
    }
  });

  it('skips versions outside --from', () => {
    expect(rewriteValue(fixture.vectors[4]!.stored, target2, { onlyVersions: new Set([1]) })).toEqual({
      kind: 'skipped',
      version: 3,
    });
  });
});

describe('KeyRing secrecy', () => {
  it('never shows key bytes through inspect, JSON or enumeration', () => {
    const r = ring(2);
    const hexes = [1, 2, 3].map((v) => fixture.keys_hex[String(v)]!);
    const shown = [inspect(r, { showHidden: true, depth: 10 }), JSON.stringify({ r }), String(Object.keys(r)), inspect({ cfg: { r } })];
    for (const s of shown) for (const h of hexes) expect(s).not.toContain(h.slice(0, 16));
    expect(JSON.stringify(r)).toBe('{"target":"v2","versions":["v1","v2","v3"]}');
  });

  it('wipes keys', () => {
    const r = ring(2);
    r.wipe();
    expect(r.key(1)!.every((b) => b === 0)).toBe(true);
  });
});
