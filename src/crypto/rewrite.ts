import type { KeyRing } from './key-ring.js';
import { decodeBase64Strict, formatVersioned, parseVersioned } from './envelope.js';
import { MAC_BYTES, NONCE_BYTES, memzero, open, resealBase64, seal } from './secretbox.js';

/**
 * Why a value could not be rewritten. Recorded in the quarantine; the value
 * itself is never recorded or logged.
 */
export type FailureReason =
  | 'bad-base64' // body is not canonical padded base64
  | 'too-short' // fewer than nonce + MAC bytes
  | 'mac-failure' // the key for its version does not open it
  | 'unknown-version' // no key configured for its version
  | 'roundtrip-failed'; // re-encrypted value did not decrypt to the same bytes

export type RewriteOutcome =
  | { kind: 'at-target' }
  | { kind: 'not-ours' }
  | { kind: 'skipped'; version: number } // a non-target version excluded by --from
  | { kind: 'rewritten'; version: number; value: string }
  | { kind: 'failed'; version: number; reason: FailureReason };

export interface RewriteOptions {
  /** Only rewrite these versions (backfill --from); others are 'skipped'. */
  onlyVersions?: ReadonlySet<number>;
}

/**
 * The rewrite core, pure apart from nonce generation: decrypt with the key of
 * the value's version, encrypt with the target key, and decrypt the result
 * again to prove the round trip before anything is written.
 */
export function rewriteValue(value: string, ring: KeyRing, opts: RewriteOptions = {}): RewriteOutcome {
  const parsed = parseVersioned(value);
  if (!parsed) return { kind: 'not-ours' };
  const { version, body } = parsed;
  if (version === ring.target) return { kind: 'at-target' };
  if (opts.onlyVersions && !opts.onlyVersions.has(version)) return { kind: 'skipped', version };
  const oldKey = ring.key(version);
  if (!oldKey) return { kind: 'failed', version, reason: 'unknown-version' };
  // Canonical base64 (else bad-base64), at least nonce + MAC (else too-short), then reseal.
  const out = resealBase64(body, oldKey, ring.key(ring.target)!);
  if (!out.ok) return { kind: 'failed', version, reason: out.reason };
  return { kind: 'rewritten', version, value: formatVersioned(ring.target, out.body) };
}

/** Decrypts a stored value to bytes (tests, verify sampling); null if it cannot. */
export function decryptValue(value: string, ring: KeyRing): Uint8Array | null {
  const parsed = parseVersioned(value);
  const key = parsed && ring.key(parsed.version);
  const sealed = parsed && decodeBase64Strict(parsed.body);
  return key && sealed ? open(sealed, key) : null;
}

/** Encrypts bytes for a version (tests, demo writers). */
export function encryptValue(plaintext: Uint8Array, version: number, ring: KeyRing): string {
  const key = ring.key(version);
  if (!key) throw new Error(`no key for v${version}`);
  return formatVersioned(version, seal(plaintext, key).toString('base64'));
}

/** What a stored value is, opened with the key of its version (verify --decrypt). */
export type CheckOutcome = { version: number; outcome: 'opened' | 'no-key' | Exclude<FailureReason, 'unknown-version' | 'roundtrip-failed'> } | null;

/**
 * Opens a stored value with the key of its own version and throws the plaintext away (wiped):
 * null for a value that is not ours, 'no-key' when no key of its version is configured.
 */
export function checkValue(value: string, ring: KeyRing): CheckOutcome {
  const parsed = parseVersioned(value);
  if (!parsed) return null;
  const { version } = parsed;
  const key = ring.key(version);
  if (!key) return { version, outcome: 'no-key' };
  const sealed = decodeBase64Strict(parsed.body);
  if (!sealed) return { version, outcome: 'bad-base64' };
  if (sealed.length < NONCE_BYTES + MAC_BYTES) return { version, outcome: 'too-short' };
  const plain = open(sealed, key);
  if (!plain) return { version, outcome: 'mac-failure' };
  memzero(plain);
  return { version, outcome: 'opened' };
}
