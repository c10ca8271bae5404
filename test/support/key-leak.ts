// Suite-wide guard (issue 10: "a test greps ... every other output of the suite for key material"):
// every CLI process a test starts (test/support/cli.ts) has its whole output searched for the keys
// it was given (LIBSODIUM_* from --env-file, from its environment, and the fixture keys), in hex
// (either case) and base64. A hit is recorded here and fails the test that ran it (leak-check.ts,
// an afterEach of the integration and ha projects). Never prints the key itself: only its name.
import { readFileSync } from 'node:fs';
import { KEY_HEX } from './fixtures.js';

const HEX64 = /^[0-9a-fA-F]{64}$/;

/** The keys a CLI invocation could print: name -> 64 hex characters. */
export function keysGiven(args: string[], env: Record<string, string> | undefined): Map<string, string> {
  const keys = new Map<string, string>();
  for (const [v, hex] of Object.entries(KEY_HEX)) keys.set(`fixture key v${v}`, hex);
  const add = (name: string, value: string | undefined) => {
    const v = (value ?? '').trim().replace(/^["']|["']$/g, '');
    if (HEX64.test(v)) keys.set(name, v);
  };
  for (const [k, v] of Object.entries(env ?? {})) if (k.startsWith('LIBSODIUM_ENCRYPTION_KEY')) add(k, v);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const file = a === '--env-file' ? args[i + 1] : a.startsWith('--env-file=') ? a.slice('--env-file='.length) : undefined;
    if (!file) continue;
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue; // a test of a missing env file
    }
    for (const line of text.split('\n')) {
      const m = /^\s*(?:export\s+)?(LIBSODIUM_ENCRYPTION_KEY\w*)\s*=\s*(.*)$/.exec(line);
      if (m) add(`${m[1]} (from ${file})`, m[2]);
    }
  }
  return keys;
}

/** The names of the keys whose hex or base64 form appears in `output`. */
export function keyMaterialIn(output: string, keys: Map<string, string>): string[] {
  const lower = output.toLowerCase();
  const found: string[] = [];
  for (const [name, hex] of keys) {
    const bytes = Buffer.from(hex, 'hex');
    const forms = [bytes.toString('base64').replace(/=+$/, ''), bytes.toString('base64url')];
    if (lower.includes(hex.toLowerCase()) || forms.some((f) => output.includes(f))) found.push(name);
  }
  return found;
}

const leaks: string[] = [];

export function recordLeak(what: string): void {
  leaks.push(what);
}

/** The leaks recorded since the last call. */
export function takeLeaks(): string[] {
  return leaks.splice(0);
}
