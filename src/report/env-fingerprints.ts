import { keyFingerprint } from '../crypto/fingerprint.js';
import { readKeyVariables, type KeySources } from '../crypto/key-ring.js';
import { versionLabel } from '../crypto/envelope.js';

/**
 * Fingerprints of the keys in this environment, whichever are set (the report runs after the
 * old key may have been removed): version label -> fingerprint. A variable that is not 64 hex
 * characters is left out (the commands that use keys say what is wrong with it). The key bytes
 * are wiped as soon as they are fingerprinted.
 */
export function environmentFingerprints(src: KeySources): Record<string, string> {
  let vars: Record<string, string>;
  try {
    vars = readKeyVariables(src);
  } catch {
    return {};
  }
  const out: Record<string, string> = {};
  for (const [name, raw] of Object.entries(vars)) {
    const m = /^LIBSODIUM_ENCRYPTION_KEY(?:_V([1-9]))?$/.exec(name);
    if (!m || !/^[0-9a-fA-F]{64}$/.test(raw.trim())) continue;
    const key = Uint8Array.from(Buffer.from(raw.trim(), 'hex'));
    out[versionLabel(m[1] ? Number(m[1]) : 1)] = keyFingerprint(key);
    key.fill(0);
  }
  return out;
}
