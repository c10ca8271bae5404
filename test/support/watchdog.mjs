// Usage: node watchdog.mjs <signal> <pid> [dir]
// Spawned with a stdin pipe from the test process. When that pipe closes (the test process exited, crashed or
// was SIGKILLed), sends <signal> to <pid>, waits up to 10s for it to exit, then removes [dir] if given.
// The owner disarms it by killing the watchdog before stopping <pid> itself.
import { readFileSync, rmSync } from 'node:fs';

const [signal, pidArg, dir] = process.argv.slice(2);
const pid = Number(pidArg);

// A zombie (state Z in /proc/<pid>/stat, after the parenthesised command name) has exited but is not yet reaped.
function alive() {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(') ') + 2] !== 'Z';
  } catch {
    return false;
  }
}

process.stdin.resume();
process.stdin.on('close', async () => {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
  for (let i = 0; i < 100 && alive(); i++) await new Promise((r) => setTimeout(r, 100));
  if (dir) rmSync(dir, { recursive: true, force: true });
  process.exit(0);
});
