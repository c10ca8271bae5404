// Runs the built CLI (`node bin/pg-rekey.js`) the way an operator does, with a config file and the keys
// in a dotenv file. Its environment is scrubbed so nothing in the caller's shell (PG*, DATABASE_URL,
// LIBSODIUM_*, PG_REKEY_* overrides) changes what is measured.
import { spawn } from 'node:child_process';
import { cpSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { loadConfig, type SweepSettings, type ThrottleSettings } from '../../src/config/load-config.js';
import { trackCpu } from './sampler.js';

export const ROOT = path.resolve(import.meta.dirname, '..', '..');
let BIN = path.join(ROOT, 'bin', 'pg-rekey.js');

/**
 * Copies bin/, dist/, sql/ and package.json (the version) into `dir` and runs the CLI from there from now on, so every scenario of a
 * run uses the same build even if the working tree is rebuilt meanwhile (node_modules and package.json
 * still resolve from the checkout above it).
 */
export function snapshotBuild(dir: string): void {
  for (const d of ['bin', 'dist', 'sql', 'package.json']) cpSync(path.join(ROOT, d), path.join(dir, d), { recursive: true });
  BIN = path.join(dir, 'bin', 'pg-rekey.js');
}

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
  wallMs: number;
  cpuSeconds: number;
  /** Set when the run was stopped by SIGTERM (the time limit, or a daemon stopped by the bench). */
  timedOut: boolean;
  /** Peak resident set of the CLI process, MB (sampled every 100 ms). */
  maxRssMB: number;
}

/** Writes a config for table `incidents`, column `title`, with only the given sweep fields (and other sections: `throttle`, `daemon` for run). */
export function writeConfig(file: string, sweep: Record<string, unknown>, sections: Record<string, unknown> = {}): string {
  const doc: Record<string, unknown> = { tables: [{ name: 'incidents', columns: ['title'] }], ...sections };
  if (Object.keys(sweep).length > 0) doc.sweep = sweep;
  writeFileSync(file, stringify(doc));
  return file;
}

export interface ResolvedSettings {
  sweep: SweepSettings;
  throttle: ThrottleSettings;
}

/** The sweep and throttle settings the CLI resolves from that file (flag > env > file > default), env left out. */
export function resolvedSettings(configFile: string): ResolvedSettings {
  const c = loadConfig({ config: configFile, databaseUrl: 'postgres://unused' }, {});
  return { sweep: c.sweep, throttle: c.throttle };
}

function scrubbedEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(LIBSODIUM_|PG|DATABASE_URL$)/.test(k)));
}

/** Another checkout's CLI (`<root>/bin/pg-rekey.js`, run from `root`), and variables set on top of the scrubbed environment. */
export interface CliOptions {
  root?: string;
  env?: Record<string, string>;
}

/** A CLI process started by startCli(): its output so far, a signal, and its end. */
export interface CliProcess {
  pid: number;
  /** stderr so far (the JSON log lines). */
  stderr(): string;
  kill(signal: NodeJS.Signals): void;
  /** Resolves when the process has exited and its output is closed. */
  done: Promise<CliRun>;
}

/** Starts `pg-rekey <args>` and samples its CPU time and peak RSS until it exits. */
export function startCli(args: string[], o: CliOptions = {}): CliProcess {
  const started = performance.now();
  const bin = o.root ? path.join(o.root, 'bin', 'pg-rekey.js') : BIN;
  const child = spawn(process.execPath, [bin, ...args], { cwd: o.root ?? ROOT, env: { ...scrubbedEnv(), ...o.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const cpu = trackCpu(child.pid!);
  let stdout = '';
  let stderr = '';
  let timedOut = false;
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (c) => resolve(c));
  }).then((code) => {
    const maxRssMB = cpu.maxRssMB();
    return { code, stdout, stderr, wallMs: performance.now() - started, cpuSeconds: cpu.stop(), timedOut, maxRssMB };
  });
  return {
    pid: child.pid!,
    stderr: () => stderr,
    kill(signal) {
      if (signal === 'SIGTERM') timedOut = true;
      child.kill(signal);
    },
    done,
  };
}

/** `pg-rekey <args>`; SIGTERM after `limitMs` (the CLI finishes its chunk and exits 3). */
export async function runCli(args: string[], limitMs = 0): Promise<CliRun> {
  const cli = startCli(args);
  const timer = limitMs > 0 ? setTimeout(() => cli.kill('SIGTERM'), limitMs) : undefined;
  try {
    return await cli.done;
  } finally {
    clearTimeout(timer);
  }
}

/** Keys from `pg-rekey keygen` into a 0600 dotenv file; the values are never printed. */
export async function writeKeys(envFile: string): Promise<void> {
  const key = async () => {
    const r = await runCli(['keygen']);
    if (r.code !== 0) throw new Error(`pg-rekey keygen exited ${r.code}: ${r.stderr}`);
    return r.stdout.trim();
  };
  writeFileSync(envFile, `LIBSODIUM_ENCRYPTION_KEY=${await key()}\nLIBSODIUM_ENCRYPTION_KEY_V2=${await key()}\nLIBSODIUM_ENCRYPTION_KEY_VERSION=v2\n`, { mode: 0o600 });
}
