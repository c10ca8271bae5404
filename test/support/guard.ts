// Ties a child process's lifetime to this process, including when this process is SIGKILLed.
import { spawn } from 'node:child_process';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';

const script = fileURLToPath(new URL('./watchdog.mjs', import.meta.url));

/** Starts watchdog.mjs for `pid`; call the returned function to disarm it before stopping `pid` deliberately. */
export function guardProcess(pid: number, signal: NodeJS.Signals, dir?: string): () => void {
  const watchdog = spawn(process.execPath, [script, signal, String(pid), ...(dir ? [dir] : [])], {
    stdio: ['pipe', 'ignore', 'ignore'],
    // Own process group, so a Ctrl-C aimed at the test run does not kill the watchdog before it has cleaned up.
    detached: true,
  });
  // Neither the watchdog nor its pipe keeps this process's event loop alive.
  watchdog.unref();
  (watchdog.stdin as Socket).unref();
  return () => {
    watchdog.kill('SIGKILL');
  };
}
