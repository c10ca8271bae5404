// Usage: node ha-watchdog.mjs <dir>
// Spawned with a stdin pipe from the test process. When that pipe closes (the test process exited,
// crashed or was SIGKILLed without stop()), it tears the Patroni cluster down: SIGTERM to every
// pid listed in <dir>/pids (the Patroni nodes, which stop their PostgreSQL, and etcd), then SIGKILL to what is left
// after 15 s, including every postmaster named by a postmaster.pid under <dir> (Patroni starts
// PostgreSQL in a session of its own: signals to Patroni do not reach it), then removes <dir>.
// The owner disarms it (SIGKILL to the watchdog) once it has stopped everything itself.
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';

const [dir] = process.argv.slice(2);

function alive(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(') ') + 2] !== 'Z';
  } catch {
    return false;
  }
}

function postmasters() {
  const out = [];
  let entries = [];
  try {
    entries = readdirSync(dir);
  } catch {
    return out;
  }
  for (const e of entries) {
    try {
      const pid = Number(readFileSync(path.join(dir, e, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
      if (pid > 0) out.push(pid);
    } catch {
      // no data directory or no running server
    }
  }
  return out;
}

function kill(pid, signal) {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

process.stdin.resume();
process.stdin.on('close', async () => {
  let pids = [];
  try {
    pids = readFileSync(path.join(dir, 'pids'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    // nothing started yet
  }
  for (const pid of pids) kill(pid, 'SIGTERM');
  for (let i = 0; i < 150 && pids.some(alive); i++) await new Promise((r) => setTimeout(r, 100));
  for (const pid of [...pids, ...postmasters()]) if (alive(pid)) kill(pid, 'SIGKILL');
  for (let i = 0; i < 50 && postmasters().some(alive); i++) await new Promise((r) => setTimeout(r, 100));
  rmSync(dir, { recursive: true, force: true });
  process.exit(0);
});
