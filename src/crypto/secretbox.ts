import { randomFillSync } from 'node:crypto';
import sodium from 'libsodium-wrappers';

/**
 * XSalsa20-Poly1305 (libsodium crypto_secretbox), the scheme the applications
 * use. A sealed box is nonce[24] || MAC[16] || ciphertext.
 */
export const NONCE_BYTES = 24;
export const MAC_BYTES = 16;

let ready = false;

/** libsodium-wrappers loads WebAssembly asynchronously; await once at start. */
export async function initSodium(): Promise<void> {
  if (!ready) {
    await sodium.ready;
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

export function memzero(bytes: Uint8Array): void {
  if (ready) sodium.memzero(bytes);
  else bytes.fill(0);
}

export function randomKey(): Uint8Array {
  const k = new Uint8Array(32);
  randomFillSync(k);
  return k;
}
