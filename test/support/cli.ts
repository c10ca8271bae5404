// Runs the built CLI (bin/pg-rekey.js -> dist/cli.js) as a child process with a minimal environment.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { guardProcess } from './guard.js';
import { keyMaterialIn, keysGiven, recordLeak } from './key-leak.js';

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const bin = fileURLToPath(new URL('../../bin/pg-rekey.js', import.meta.url));

export interface CliOptions {
  env?: Record<string, string>;
  cwd?: string;
  timeoutMs?: number;
  input?: string;
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface CliLine {
  stream: 'stdout' | 'stderr';
  text: string;
}

export interface CliProcess {
  child: ChildProcess;
  /** Every complete output line so far, both streams, in arrival order. */
  lines: CliLine[];
  /** Resolves with the first line at index >= fromIndex whose text matches. */
  waitForLine(match: RegExp | ((text: string) => boolean), opts?: { timeoutMs?: number; fromIndex?: number }): Promise<CliLine>;
  /** Resolves when the process has exited and both output streams have closed. */
  exited: Promise<CliResult>;
  /** Sends `signal` and waits for exit; sends SIGKILL if still running after killAfterMs. */
  stop(signal?: NodeJS.Signals, killAfterMs?: number): Promise<CliResult>;
}

// Only PATH and HOME come from the parent, so LIBSODIUM_*, DATABASE_URL, PG* etc. never leak into the CLI.
// This node's directory comes first on PATH: the bin's shebang (`env -S node --`) finds it.
function childEnv(extra: Record<string, string> | undefined): Record<string, string> {
  return { PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}`, HOME: process.env.HOME ?? '/', ...extra };
}

export function spawnCli(args: string[], opts: CliOptions = {}): CliProcess {
  // Executed as a user runs it: the bin itself, through its shebang (not `node bin/pg-rekey.js`).
  const child = spawn(bin, args, {
    cwd: opts.cwd ?? repoRoot,
    env: childEnv(opts.env),
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  // A CLI child (e.g. the `run` daemon) still running when this test process dies is SIGKILLed by a watchdog.
  const disarm = child.pid === undefined ? () => undefined : guardProcess(child.pid, 'SIGKILL');
  const lines: CliLine[] = [];
  const output = { stdout: '', stderr: '' };
  const listeners = new Set<(line: CliLine) => void>();

  for (const stream of ['stdout', 'stderr'] as const) {
    let partial = '';
    const emit = (text: string): void => {
      const line = { stream, text };
      lines.push(line);
      listeners.forEach((fn) => fn(line));
    };
    child[stream].setEncoding('utf8');
    child[stream].on('data', (chunk: string) => {
      output[stream] += chunk;
      const parts = (partial + chunk).split('\n');
      partial = parts.pop() ?? '';
      parts.forEach(emit);
    });
    child[stream].on('end', () => partial && emit(partial));
  }
  // The CLI may exit without reading stdin; the resulting EPIPE is not an error for the test.
  child.stdin.on('error', () => undefined);
  child.stdin.end(opts.input ?? '');

  const exited = new Promise<CliResult>((resolve) => {
    child.once('close', (code, signal) => {
      disarm();
      const keys = keyMaterialIn(output.stdout + output.stderr, keysGiven(args, opts.env));
      if (keys.length) recordLeak(`pg-rekey ${args.filter((a) => !a.startsWith('/')).map((a) => a.replace(/[0-9a-fA-F]{64}/g, '<64 hex>')).join(' ')}: ${keys.join(', ')}`);
      resolve({ code, signal, ...output });
    });
  });

  return {
    child,
    lines,
    exited,
    waitForLine(match, { timeoutMs = 30_000, fromIndex = 0 } = {}) {
      const test = typeof match === 'function' ? match : (text: string) => match.test(text);
      const found = lines.slice(fromIndex).find((line) => test(line.text));
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const done = (): void => {
          clearTimeout(timer);
          listeners.delete(onLine);
        };
        const onLine = (line: CliLine): void => {
          if (!test(line.text)) return;
          done();
          resolve(line);
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`no output line matching ${String(match)} within ${timeoutMs}ms; output:\n${output.stdout}${output.stderr}`));
        }, timeoutMs);
        listeners.add(onLine);
        void exited.then((result) => {
          if (!listeners.has(onLine)) return;
          done();
          reject(new Error(`CLI exited (code ${result.code}, signal ${result.signal}) before a line matching ${String(match)}:\n${result.stdout}${result.stderr}`));
        });
      });
    },
    async stop(signal = 'SIGTERM', killAfterMs = 30_000) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
}

export async function runCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  const proc = spawnCli(args, opts);
  const timeoutMs = opts.timeoutMs ?? 60_000;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    proc.child.kill('SIGKILL');
  }, timeoutMs);
  const result = await proc.exited;
  clearTimeout(timer);
  if (timedOut) throw new Error(`pg-rekey ${args.join(' ')} timed out after ${timeoutMs}ms:\n${result.stdout}${result.stderr}`);
  return result;
}
