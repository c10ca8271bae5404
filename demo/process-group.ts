// Ctrl-C in a terminal signals every process of the foreground process group. If the demo's PostgreSQL and
// `pg-rekey run` were in it, PostgreSQL would start a fast shutdown while the daemon drains, and the daemon
// would count the demo's SIGTERM as a second signal (exit at once, no drain). So the demo runs in a process
// group (session) of its own, and a small parent process relays signals to it.
import { spawn } from 'node:child_process';
import os from 'node:os';

const INNER = 'PG_REKEY_DEMO_INNER';

/**
 * In the parent: runs this script again in its own session, relays SIGINT/SIGTERM/SIGHUP to it and exits with
 * its exit code; returns true. In that child: returns false; if the parent dies, the child gets a SIGHUP.
 */
export function relayToOwnProcessGroup(): boolean {
  if (process.env[INNER]) {
    delete process.env[INNER];
    process.stdin.on('close', () => process.kill(process.pid, 'SIGHUP'));
    process.stdin.resume();
    (process.stdin as unknown as { unref?: () => void }).unref?.(); // the pipe alone does not keep the demo alive
    return false;
  }
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    stdio: ['pipe', 'inherit', 'inherit'],
    env: { ...process.env, [INNER]: '1' },
    detached: true,
  });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => child.kill(signal));
  child.once('exit', (code, signal) => process.exit(code ?? 128 + (signal ? os.constants.signals[signal] : 1)));
  return true;
}
