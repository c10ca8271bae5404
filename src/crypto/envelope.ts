/**
 * The stored value format, shared with the applications:
 *
 *     v<N>:<base64( nonce[24] || crypto_secretbox_easy(plaintext, nonce, key[N]) )>
 *
 * `N` is a positive integer without leading zeros, the prefix is lowercase `v`,
 * and the base64 is the standard alphabet with `=` padding (PHP's base64_encode,
 * Node's Buffer#toString('base64')). Anything without such a prefix is not ours.
 */
const PREFIX = /^v([1-9][0-9]{0,8}):/;

export interface VersionedValue {
  version: number;
  /** The base64 text after the prefix (may be empty or malformed). */
  body: string;
}

/** Splits `v<N>:body`; returns null for values that are not ours. */
export function parseVersioned(value: string): VersionedValue | null {
  const m = PREFIX.exec(value);
  if (!m) return null;
  return { version: Number(m[1]), body: value.slice(m[0].length) };
}

export function formatVersioned(version: number, body: string): string {
  return `v${version}:${body}`;
}

export function versionLabel(version: number): string {
  return `v${version}`;
}

/** Parses `v2` (or `2`) into 2; null when malformed. */
export function parseVersionLabel(label: string): number | null {
  const m = /^v?([1-9][0-9]{0,8})$/.exec(label.trim());
  return m ? Number(m[1]) : null;
}

/**
 * Strict base64 decode. Buffer.from(s, 'base64') silently skips invalid
 * characters and accepts missing padding, which would let a corrupt value
 * "decode" into something else. Only the canonical padded encoding (the one
 * PHP and Node emit) round-trips; a regex would overflow on 10 MB values.
 */
export function decodeBase64Strict(body: string): Buffer | null {
  if (body.length % 4 !== 0) return null;
  const bytes = Buffer.from(body, 'base64');
  return bytes.toString('base64') === body ? bytes : null;
}
