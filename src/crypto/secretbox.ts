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
  const out = new Uint8Array(NONCE_BYTES);
  nonceInto(out, 0);
  return out;
}

/** Copies a fresh nonce into `dst` at `at` (no allocation: the sweep's reseal writes it straight into WebAssembly memory). */
function nonceInto(dst: Uint8Array, at: number): void {
  if (nextNonce === POOL_NONCES) {
    randomFillSync(noncePool);
    nextNonce = 0;
  }
  const off = nextNonce++ * NONCE_BYTES;
  // A copy, so a later refill can never alias a nonce already handed out.
  noncePool.copy(dst, at, off, off + NONCE_BYTES);
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
/** A Buffer over the whole WebAssembly memory (offsets are pointers), made again when the memory grows. */
let heapView: Buffer | null = null;

function heap(r: RawSodium): Buffer {
  const b = r.HEAPU8.buffer;
  if (heapView === null || heapView.buffer !== b) heapView = Buffer.from(b);
  return heapView;
}

/**
 * open(sealed, oldKey), then seal the plaintext under newKey with a fresh nonce, then open
 * that again and compare (the round-trip check), without the plaintext ever leaving
 * WebAssembly memory. Each key is copied in only for its calls; keys and plaintexts are
 * wiped before it returns.
 */
export function reseal(sealed: Uint8Array, oldKey: Uint8Array, newKey: Uint8Array, nonce?: Uint8Array): ResealOutcome {
  if (sealed.length < NONCE_BYTES + MAC_BYTES) return { ok: false, reason: 'mac-failure' };
  return resealIn(
    sealed.length,
    (h, at) => (h.set(sealed, at), sealed.length),
    oldKey,
    newKey,
    nonce,
    (h, at, len) => ({ ok: true, sealed: Buffer.from(h.subarray(at, at + len)) }),
  );
}

export type ResealBase64Outcome = { ok: true; body: string } | { ok: false; reason: 'bad-base64' | 'too-short' | 'mac-failure' | 'roundtrip-failed' };

/**
 * reseal() of a stored value's base64 body, returning the new body: decoded straight into
 * WebAssembly memory and encoded from it, no Buffer in between (the sweep's per-value path).
 * Only canonical padded base64 is accepted (envelope.ts decodeBase64Strict: the same decoder,
 * the same re-encoding check).
 */
export function resealBase64(body: string, oldKey: Uint8Array, newKey: Uint8Array, nonce?: Uint8Array): ResealBase64Outcome {
  if (body.length % 4 !== 0) return { ok: false, reason: 'bad-base64' };
  let bad: 'bad-base64' | 'too-short' | null = null;
  const out = resealIn(
    (body.length / 4) * 3,
    (h, at, room) => {
      const n = h.write(body, at, room, 'base64');
      if (h.toString('base64', at, at + n) !== body) bad = 'bad-base64';
      else if (n < NONCE_BYTES + MAC_BYTES) bad = 'too-short';
      return bad ? -1 : n;
    },
    oldKey,
    newKey,
    nonce,
    (h, at, len): ResealBase64Outcome => ({ ok: true, body: h.toString('base64', at, at + len) }),
  );
  return bad ? { ok: false, reason: bad } : out;
}

/**
 * The shared core: `load` puts a sealed value (at most `room` bytes) into WebAssembly memory at
 * `at` and returns its length (-1: refused, nothing else is done); `emit` makes the outcome from
 * nonce || box of the result, before everything is wiped.
 */
function resealIn<F>(
  room: number,
  load: (h: Buffer, at: number, room: number) => number,
  oldKey: Uint8Array,
  newKey: Uint8Array,
  nonce: Uint8Array | undefined,
  emit: (h: Buffer, at: number, len: number) => F,
): F | { ok: false; reason: 'mac-failure' | 'roundtrip-failed' } {
  const r = raw;
  if (!r) throw new Error('initSodium() must be awaited before using the codec');
  // Layout: key[32] | sealed (room) | plaintext | nonce[24] || reboxed | check
  const own = room > ARENA_VALUE_BYTES;
  if (!own && arena === 0) arena = r._malloc(32 + 4 * ARENA_VALUE_BYTES);
  const base = own ? r._malloc(32 + 4 * Math.max(room, NONCE_BYTES + MAC_BYTES)) : arena;
  if (base === 0) throw new Error('libsodium: out of memory');
  const K = base;
  const S = K + 32;
  let mlen = 0;
  let P = 0;
  let D = 0;
  // The Buffer over the memory is replaced when the memory grows (after _malloc): take it afresh.
  let h = heap(r);
  try {
    const n = load(h, S, room);
    if (n < 0) return { ok: false, reason: 'mac-failure' };
    const clen = n - NONCE_BYTES;
    mlen = clen - MAC_BYTES;
    P = S + n;
    const T = P + mlen;
    const C = T + NONCE_BYTES;
    D = C + clen;
    h.set(oldKey, K);
    if (r._crypto_secretbox_open_easy(P, S + NONCE_BYTES, clen, 0, S, K) !== 0) return { ok: false, reason: 'mac-failure' };
    h = heap(r);
    h.set(newKey, K);
    if (nonce) h.set(nonce, T);
    else nonceInto(h, T);
    r._crypto_secretbox_easy(C, P, mlen, 0, T, K);
    const opened = r._crypto_secretbox_open_easy(D, C, clen, 0, T, K) === 0;
    h = heap(r);
    if (!opened || h.compare(h, D, D + mlen, P, P + mlen) !== 0) return { ok: false, reason: 'roundtrip-failed' };
    return emit(h, T, NONCE_BYTES + clen);
  } finally {
    h = heap(r);
    h.fill(0, K, K + 32);
    if (mlen > 0) {
      h.fill(0, P, P + mlen);
      h.fill(0, D, D + mlen);
    }
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
