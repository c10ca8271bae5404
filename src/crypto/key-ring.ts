import { inspect } from 'node:util';
import { readFileSync, realpathSync, statSync } from 'node:fs';
import { isAbsolute, relative } from 'node:path';
import { parse as parseDotenv } from 'dotenv';
import { ConfigError } from '../errors.js';
import { parseVersionLabel, versionLabel } from './envelope.js';

/**
 * The application's own variable names:
 *   LIBSODIUM_ENCRYPTION_KEY          version 1
 *   LIBSODIUM_ENCRYPTION_KEY_V2..._V9 versions 2..9
 *   LIBSODIUM_ENCRYPTION_KEY_VERSION  target version, e.g. "v2"
 */
export const KEY_VAR_V1 = 'LIBSODIUM_ENCRYPTION_KEY';
export const TARGET_VAR = 'LIBSODIUM_ENCRYPTION_KEY_VERSION';
export const MAX_VERSION = 9;
export const KEY_BYTES = 32;

export function keyVarName(version: number): string {
  return version === 1 ? KEY_VAR_V1 : `${KEY_VAR_V1}_V${version}`;
}

/**
 * Key bytes live in this module-private map, not on the KeyRing object, so
 * console.log, JSON.stringify, pino and stack traces of a KeyRing (or of a
 * config holding one) cannot reveal them.
 */
const secrets = new WeakMap<KeyRing, Map<number, Uint8Array>>();

export class KeyRing {
  constructor(
    readonly target: number,
    keys: Map<number, Uint8Array>,
  ) {
    secrets.set(this, keys);
    Object.freeze(this);
  }

  /** Versions with a key, ascending. */
  get versions(): number[] {
    return [...this.keys().keys()].sort((a, b) => a - b);
  }

  /** Versions that are not the target: what pg-rekey rewrites. */
  get oldVersions(): number[] {
    return this.versions.filter((v) => v !== this.target);
  }

  has(version: number): boolean {
    return this.keys().has(version);
  }

  /** Raw key bytes for the codec; never log or copy them. */
  key(version: number): Uint8Array | undefined {
    return this.keys().get(version);
  }

  /** Overwrites every key with zeros (call on shutdown). */
  wipe(wipeBytes: (b: Uint8Array) => void = (b) => b.fill(0)): void {
    for (const k of this.keys().values()) wipeBytes(k);
  }

  toJSON(): object {
    return { target: versionLabel(this.target), versions: this.versions.map(versionLabel) };
  }

  [inspect.custom](): string {
    return `KeyRing(target=${versionLabel(this.target)}, versions=[${this.versions.map(versionLabel).join(', ')}])`;
  }

  private keys(): Map<number, Uint8Array> {
    const k = secrets.get(this);
    if (!k) throw new Error('KeyRing used after construction failed');
    return k;
  }
}

export interface KeySources {
  /** Usually process.env; wins over the env file, as dotenv does. */
  env: Record<string, string | undefined>;
  /** Path of a dotenv file (the application's .env.local), optional. */
  envFile?: string;
}

/** Reads the variables pg-rekey cares about from env and dotenv file. */
export function readKeyVariables(src: KeySources): Record<string, string> {
  let fromFile: Record<string, string> = {};
  if (src.envFile) {
    let text: string;
    try {
      text = readFileSync(src.envFile, 'utf8');
    } catch (e) {
      throw new ConfigError(
        `cannot read env file ${src.envFile}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
        'check the --env-file path and that this user may read it',
      );
    }
    fromFile = parseDotenv(text);
  }
  const out: Record<string, string> = {};
  const problems: string[] = [];
  const names = [TARGET_VAR, ...Array.from({ length: MAX_VERSION }, (_, i) => keyVarName(i + 1))];
  for (const name of names) {
    const v = src.env[name] ?? fromFile[name];
    const file = src.env[`${name}_FILE`] ?? fromFile[`${name}_FILE`];
    if (file !== undefined && file !== '') {
      if (v !== undefined && v !== '') {
        problems.push(`both ${name} and ${name}_FILE are set; keep one`);
        continue;
      }
      const read = readSecretFile(`${name}_FILE`, file, src.env.CREDENTIALS_DIRECTORY);
      if (typeof read === 'string') out[name] = read;
      else problems.push(read.problem);
    } else if (v !== undefined && v !== '') out[name] = v;
  }
  if (problems.length) throw new ConfigError('the encryption keys are not usable', 'fix the variables above', problems);
  return out;
}

/**
 * A key mounted as a file (Docker/Kubernetes secrets, Vault agent, systemd
 * credentials): its content, trimmed. Refused when group or others may read
 * it: a key file must be private to the user pg-rekey runs as.
 *
 * One exception: a file inside $CREDENTIALS_DIRECTORY (systemd's LoadCredential=,
 * with `%d/...` in the unit). systemd makes that directory private to the
 * service and read-only, and grants the service's user read access with an
 * ACL where the file system has them (tmpfs): the ACL mask then shows as group
 * bits (mode 440) although no group may read the file. The real path must be
 * inside the directory (a symbolic link out of it is checked like any file).
 */
function readSecretFile(variable: string, path: string, credentialsDirectory: string | undefined): string | { problem: string } {
  let mode: number;
  try {
    mode = statSync(path).mode;
  } catch (e) {
    return { problem: `${variable}: cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'})` };
  }
  if ((mode & 0o077) !== 0 && !insideCredentialsDirectory(path, credentialsDirectory)) {
    return { problem: `${variable}: ${path} is readable or writable by group or others (mode ${(mode & 0o777).toString(8)}); run chmod 600 ${path}` };
  }
  try {
    return readFileSync(path, 'utf8').trim();
  } catch (e) {
    return { problem: `${variable}: cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'})` };
  }
}

/** The real path of `path` is inside systemd's $CREDENTIALS_DIRECTORY (see readSecretFile). */
export function insideCredentialsDirectory(path: string, dir: string | undefined): boolean {
  if (!dir || !isAbsolute(dir)) return false;
  try {
    const rel = relative(realpathSync(dir), realpathSync(path));
    return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel);
  } catch {
    return false;
  }
}

/**
 * Builds a KeyRing, reporting every problem at once; values never appear in messages.
 * `targetOnly`: a ring with only the target key is accepted (verify --decrypt, which still
 * runs after the old key has been removed: values of a version without a key are "not checked").
 */
export function loadKeyRing(src: KeySources, opts: { targetOnly?: boolean } = {}): KeyRing {
  const vars = readKeyVariables(src);
  const problems: string[] = [];
  const keys = new Map<number, Uint8Array>();
  for (let v = 1; v <= MAX_VERSION; v++) {
    const name = keyVarName(v);
    const raw = vars[name];
    if (raw === undefined) continue;
    const hex = raw.trim();
    if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
      problems.push(
        `${name} must be 64 hex characters (32 bytes); it has ${hex.length} characters` +
          (/^[0-9a-fA-F]*$/.test(hex) ? '' : ' including non-hex ones'),
      );
      continue;
    }
    keys.set(v, Uint8Array.from(Buffer.from(hex, 'hex')));
  }
  const targetRaw = vars[TARGET_VAR];
  let target: number | null = null;
  if (targetRaw === undefined) {
    problems.push(`${TARGET_VAR} is not set; set it to the version new writes use, e.g. ${TARGET_VAR}=v2`);
  } else {
    target = parseVersionLabel(targetRaw);
    if (target === null || target > MAX_VERSION) {
      problems.push(`${TARGET_VAR} must look like v1..v${MAX_VERSION}`);
      target = null;
    } else if (!keys.has(target) && !problems.some((p) => p.startsWith(keyVarName(target!) + ' '))) {
      problems.push(`target version ${versionLabel(target)} has no key: set ${keyVarName(target)}`);
    }
  }
  if (!opts.targetOnly && target !== null && problems.length === 0 && [...keys.keys()].every((v) => v === target)) {
    problems.push(
      `only the target key ${versionLabel(target)} is configured; pg-rekey also needs the old key(s) it rotates away from, e.g. ${KEY_VAR_V1} for v1`,
    );
  }
  // Two versions with the same key: a copy-paste slip between secret stores. Rotating "to" it
  // changes nothing, and which of the two is the application's is anyone's guess.
  // (Compared as bytes: no copy of a key as a string, which could not be wiped.)
  const versions = [...keys.keys()].sort((a, b) => a - b);
  for (let i = 0; i < versions.length; i++) {
    for (let j = i + 1; j < versions.length; j++) {
      if (sameBytes(keys.get(versions[i]!)!, keys.get(versions[j]!)!)) {
        problems.push(`${keyVarName(versions[i]!)} and ${keyVarName(versions[j]!)} hold the same key: every version needs its own key (check which one the application uses for each version)`);
      }
    }
  }
  if (problems.length > 0 || target === null) {
    for (const k of keys.values()) k.fill(0);
    throw new ConfigError(
      'the encryption keys are not usable',
      `fix the variables above in the environment${src.envFile ? ` or in ${src.envFile}` : ' or pass --env-file'}, with the keys the applications use ` +
        "(copy them from the application's secret store or .env.local: a key made here would open none of the stored values)",
      problems,
    );
  }
  return new KeyRing(target, keys);
}

/**
 * Only the target version, for commands that count but never decrypt
 * (verify, status): they keep working after the old key has been removed.
 */
export function loadTargetVersion(src: KeySources): number {
  const raw = readKeyVariables(src)[TARGET_VAR];
  const target = raw === undefined ? null : parseVersionLabel(raw);
  if (target === null) {
    throw new ConfigError(
      `${TARGET_VAR} is ${raw === undefined ? 'not set' : 'not a version like v2'}`,
      `set ${TARGET_VAR}=v2 (the version new writes use) in the environment or the --env-file`,
    );
  }
  return target;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
