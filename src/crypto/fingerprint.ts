import { createHmac } from 'node:crypto';
import { versionLabel } from './envelope.js';
import type { KeyRing } from './key-ring.js';

/**
 * A key's fingerprint: identifies a key in the rotation record (which key a run used, whether
 * it changed between runs) without revealing it. HMAC-SHA256 keyed by the key over a fixed
 * label, truncated to 128 bits: one-way (it opens nothing, and the key cannot be computed from
 * it), and labelled so it cannot be mistaken for, or collide with, any other use of the key.
 */
export const FINGERPRINT_LABEL = 'pg-rekey key fingerprint v1';

export function keyFingerprint(key: Uint8Array): string {
  const mac = createHmac('sha256', key).update(FINGERPRINT_LABEL, 'utf8').digest('hex');
  return `fp1:${mac.slice(0, 32)}`;
}

/** Every key of the ring by version label ("v1"), fingerprinted. */
export function ringFingerprints(ring: KeyRing): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of ring.versions) out[versionLabel(v)] = keyFingerprint(ring.key(v)!);
  return out;
}
