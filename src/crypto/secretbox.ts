import { randomFillSync } from 'node:crypto';
import { createRequire } from 'node:module';
import sodium from 'libsodium-wrappers';

/**
 * XSalsa20-Poly1305 (libsodium crypto_secretbox), the scheme the applications
 * use. A sealed box is nonce[24] || MAC[16] || ciphertext.
 */
export const NONCE_BYTES = 24;
export const MAC_BYTES = 16;

let ready = false;

/**
 * The raw libsodium build under libsodium-wrappers (the same C library compiled to
 * WebAssembly), for `reseal`: the wrappers allocate, copy in and copy out on every call,
 * which for ~100-byte values costs more than the cipher itself.
 */
interface RawSodium {
  ready: Promise<unknown>;
  HEAPU8: Uint8Array;
  _malloc(bytes: number): number;
  _free(ptr: number): void;
  _sodium_init(): number;
  // Lengths are 64-bit in C: passed as (low, high) 32-bit halves.
  _crypto_secretbox_easy(c: number, m: number, mlenLow: number, mlenHigh: number, n: number, k: number): number;
  _crypto_secretbox_open_easy(m: number, c: number, clenLow: number, clenHigh: number, n: number, k: number): number;
}
let raw: RawSodium | null = null;

/** libsodium loads WebAssembly asynchronously; await once at start. */
export async function initSodium(): Promise<void> {
  if (!ready) {
    await sodium.ready;
    const r = createRequire(import.meta.url)('libsodium') as RawSodium;
    await r.ready;
    if (r._sodium_init() < 0) throw new Error('libsodium failed to initialise');
    raw = r;
    ready = true;
  }
}

function lib(): typeof sodium {
  if (!ready) throw new Error('initSodium() must be awaited before using the codec');
  return sodium;
}

// sodium.randombytes_buf(24) costs ~140 us per call in Node 20 (design.md);
// node:crypto filling a pooled buffer costs well under 1 us per nonce.
const POOL_NONCES = 1024;
const noncePool = Buffer.alloc(NONCE_BYTES * POOL_NONCES);
let nextNonce = POOL_NONCES;

export function freshNonce(): Uint8Array {
  if (nextNonce === POOL_NONCES) {
    randomFillSync(noncePool);
    nextNonce = 0;
  }
  const off = nextNonce++ * NONCE_BYTES;
  // Copy out, so a later refill can never alias a nonce already handed out.
  return Uint8Array.prototype.slice.call(noncePool, off, off + NONCE_BYTES);
}

/** Returns nonce || secretbox(plaintext). */
export function seal(plaintext: Uint8Array, key: Uint8Array, nonce: Uint8Array = freshNonce()): Buffer {
  const boxed = lib().crypto_secretbox_easy(plaintext, nonce, key);
  return Buffer.concat([nonce, boxed]);
}

/** Opens nonce || secretbox; null when the MAC does not verify. */
export function open(sealed: Uint8Array, key: Uint8Array): Uint8Array | null {
  if (sealed.length < NONCE_BYTES + MAC_BYTES) return null;
  try {
    return lib().crypto_secretbox_open_easy(sealed.subarray(NONCE_BYTES), sealed.subarray(0, NONCE_BYTES), key);
  } catch {
    return null;
  }
}

export type ResealOutcome = { ok: true; sealed: Buffer } | { ok: false; reason: 'mac-failure' | 'roundtrip-failed' };

/** Values up to this size (sealed) reuse one allocation in WebAssembly memory; larger ones get their own. */
const ARENA_VALUE_BYTES = 64 * 1024;
let arena = 0;

/**
 * open(sealed, oldKey), then seal the plaintext under newKey with a fresh nonce, then open
 * that again and compare (the round-trip check), without the plaintext ever leaving
 * WebAssembly memory. Each key is copied in only for its calls; keys and plaintexts are
 * wiped before it returns.
 */
export function reseal(sealed: Uint8Array, oldKey: Uint8Array, newKey: Uint8Array, nonce: Uint8Array = freshNonce()): ResealOutcome {
  const r = raw;
  if (!r) throw new Error('initSodium() must be awaited before using the codec');
  if (sealed.length < NONCE_BYTES + MAC_BYTES) return { ok: false, reason: 'mac-failure' };
  const clen = sealed.length - NONCE_BYTES;
  const mlen = clen - MAC_BYTES;
  // Layout: key[32] | nonce[24] | boxed (clen) | plaintext (mlen) | reboxed (clen) | check (mlen)
  const need = 32 + NONCE_BYTES + 2 * clen + 2 * mlen;
  const own = sealed.length > ARENA_VALUE_BYTES;
  if (!own && arena === 0) arena = r._malloc(32 + NONCE_BYTES + 4 * ARENA_VALUE_BYTES);
  const base = own ? r._malloc(need) : arena;
  if (base === 0) throw new Error('libsodium: out of memory');
  const K = base;
  const N = K + 32;
  const A = N + NONCE_BYTES;
  const P = A + clen;
  const C = P + mlen;
  const D = C + clen;
  // HEAPU8 is replaced when the memory grows (after _malloc): read it afresh.
  let heap = r.HEAPU8;
  try {
    heap.set(oldKey, K);
    heap.set(sealed.subarray(0, NONCE_BYTES), N);
    heap.set(sealed.subarray(NONCE_BYTES), A);
    if (r._crypto_secretbox_open_easy(P, A, clen, 0, N, K) !== 0) return { ok: false, reason: 'mac-failure' };
    heap = r.HEAPU8;
    heap.set(newKey, K);
    heap.set(nonce, N);
    r._crypto_secretbox_easy(C, P, mlen, 0, N, K);
    const opened = r._crypto_secretbox_open_easy(D, C, clen, 0, N, K) === 0;
    heap = r.HEAPU8;
    if (!opened || Buffer.compare(heap.subarray(P, P + mlen), heap.subarray(D, D + mlen)) !== 0) return { ok: false, reason: 'roundtrip-failed' };
    const out = Buffer.allocUnsafe(NONCE_BYTES + clen);
    out.set(nonce, 0);
    out.set(heap.subarray(C, C + clen), NONCE_BYTES);
    return { ok: true, sealed: out };
  } finally {
    heap = r.HEAPU8;
    heap.fill(0, K, K + 32);
    heap.fill(0, P, P + mlen);
    heap.fill(0, D, D + mlen);
    if (own) r._free(base);
  }
}

export function memzero(bytes: Uint8Array): void {
  if (ready) sodium.memzero(bytes);
  else bytes.fill(0);
}

export function randomKey(): Uint8Array {
  const k = new Uint8Array(32);
  randomFillSync(k);
  return k;
}
