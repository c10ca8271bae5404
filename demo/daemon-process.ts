// `pg-rekey run` as a child process of the demo: its JSON log lines go to a file, the interesting ones are
// echoed in a short human form; convergence is followed from its log.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { guardProcess } from '../test/support/guard.js';

interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

const LEVELS: Record<number, string> = { 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

/** One short line for a log line worth showing, or null (it is in the log file). */
function summarize(l: LogLine): string | null {
  const f = (k: string): string => String(l[k] ?? '?');
  if (l.msg.startsWith('pg-rekey run started')) return `started (pid ${f('pid')}), HTTP ${f('http')} (/healthz /readyz /metrics), slot ${f('slot')}`;
  if (l.msg === 'streaming') return `stream: reading the replication slot; every old-key write is rewritten as it commits`;
  if (l.msg === 'sweep progress') return `sweep: ${f('relation')} ${f('percent')}% (block ${f('block')}/${f('blocks')}), ${f('rewritten')} rewritten, ${f('rowsPerSec')} rows/s`;
  if (l.msg === 'relation swept') return `sweep: ${f('relation')} done, ${f('rewritten')} rewritten, ${f('conflicts')} CAS conflict(s), ${f('quarantined')} quarantined`;
  if (l.msg.startsWith('sweep complete') || l.msg.startsWith('CONVERGED') || l.msg.startsWith('draining')) return l.msg;
  if (l.msg.startsWith('no longer converged')) return `${l.msg} (remaining ${f('remaining')})`;
  if (l.msg === 'stopped') return `stopped (code ${f('code')}), stream applied up to ${f('applied')}`;
  if (l.level >= 40) {
    const err = l.err as { message?: string } | undefined;
    return `${LEVELS[l.level] ?? 'WARN'}: ${l.msg}${err?.message ? `: ${err.message}` : ''}`;
  }
  return null;
}

export class DaemonProcess {
  readonly exited: Promise<number>;
  http = '';
  /** Date.now() of the last CONVERGED line not followed by 'no longer converged'; 0 when not converged. */
  convergedAt = 0;
  exitCode: number | null = null;
  private signalled = false;
  private readonly started = Date.now();
  private readonly seen = new Set<string>();
  private readonly waiters: { msg: RegExp; resolve: () => void }[] = [];

  private constructor(
    readonly child: ChildProcess,
    logFile: string,
    private readonly echo: (line: string) => void,
  ) {
    const disarm = guardProcess(child.pid!, 'SIGTERM'); // if the demo is killed, so is its daemon
    // The daemon writes its log file itself (it outlives the demo if need be); the demo follows the file.
    const fd = openSync(logFile, 'r');
    let partial = '';
    const buf = Buffer.alloc(64 * 1024);
    const utf8 = new StringDecoder('utf8');
    const follow = (): void => {
      for (let n; (n = readSync(fd, buf)) > 0; ) partial += utf8.write(buf.subarray(0, n));
      const lines = partial.split('\n');
      partial = lines.pop()!;
      for (const line of lines) this.onLine(line);
    };
    const timer = setInterval(follow, 100);
    this.exited = new Promise((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code, signal) => {
        disarm();
        clearInterval(timer);
        follow();
        closeSync(fd);
        this.exitCode = code ?? 128 + (signal ? os.constants.signals[signal] : 0);
        resolve(this.exitCode);
      });
    });
  }

  /**
   * Starts `node bin/pg-rekey.js run <flags>` in a process group of its own: a Ctrl-C in the terminal must not
   * reach it, the demo sends it exactly one SIGTERM (a second signal makes `run` exit without draining).
   */
  static start(bin: string, flags: string[], opts: { cwd: string; env: NodeJS.ProcessEnv; logFile: string; echo: (line: string) => void }): DaemonProcess {
    mkdirSync(path.dirname(opts.logFile), { recursive: true });
    const out = openSync(opts.logFile, 'w');
    try {
      const child = spawn(process.execPath, [bin, 'run', ...flags], { cwd: opts.cwd, env: opts.env, stdio: ['ignore', out, out], detached: true });
      return new DaemonProcess(child, opts.logFile, opts.echo);
    } finally {
      closeSync(out);
    }
  }

  private onLine(raw: string): void {
    let l: LogLine | undefined;
    try {
      l = JSON.parse(raw) as LogLine;
    } catch {
      // not JSON: shown as it is below
    }
    if (typeof l?.msg !== 'string') return this.echo(`[pg-rekey run] ${raw}`);
    if (typeof l.http === 'string') this.http = l.http;
    if (l.msg.startsWith('CONVERGED')) this.convergedAt = Date.now();
    if (l.msg.startsWith('no longer converged')) this.convergedAt = 0;
    this.seen.add(l.msg);
    for (const w of this.waiters.filter((x) => x.msg.test(l.msg))) w.resolve();
    const short = summarize(l);
    if (short) this.echo(`[pg-rekey run +${((Date.now() - this.started) / 1000).toFixed(1)}s] ${short}`);
  }

  /** Resolves when a log line's msg matches; rejects on timeout or when the daemon exits first. */
  waitFor(msg: RegExp, timeoutMs: number): Promise<void> {
    if ([...this.seen].some((m) => msg.test(m))) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`pg-rekey run: no log line ${msg} within ${timeoutMs / 1000} s`)), timeoutMs);
      this.waiters.push({ msg, resolve: () => (clearTimeout(timer), resolve()) });
      void this.exited.then((code) => (clearTimeout(timer), reject(new Error(`pg-rekey run exited (code ${code}) before logging ${msg}`))));
    });
  }

  /** The /metrics lines (not comments) whose metric name starts with one of the prefixes. */
  async metrics(...prefixes: string[]): Promise<string[]> {
    const res = await fetch(`${this.http}/metrics`, { signal: AbortSignal.timeout(2_000) });
    const text = await res.text();
    return text.split('\n').filter((line) => !line.startsWith('#') && prefixes.some((p) => line.startsWith(p)));
  }

  /** Sum of pg_rekey_rewrites_total per source. */
  async rewrites(): Promise<Record<string, number>> {
    const out: Record<string, number> = { sweep: 0, stream: 0 };
    for (const line of await this.metrics('pg_rekey_rewrites_total')) {
      const m = /source="([^"]+)".* ([\d.e+]+)$/.exec(line);
      if (m) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
    }
    return out;
  }

  /** Sends SIGTERM once (never twice: a second signal makes `run` exit without draining) and waits for the exit. */
  async stop(killAfterMs = 30_000): Promise<number> {
    if (this.exitCode !== null) return this.exitCode;
    if (!this.signalled) {
      this.signalled = true;
      this.child.kill('SIGTERM');
    }
    const timer = setTimeout(() => {
      this.echo(`pg-rekey run did not exit within ${killAfterMs / 1000} s of SIGTERM: SIGKILL`);
      this.child.kill('SIGKILL');
    }, killAfterMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}
