// sweep.workers scaling: `pg-rekey backfill --fast --restart` of the whole `incidents` table with 1, 2
// and 4 workers (connections of one process), no foreground workload, on the durable bench cluster.
// Reports rows/s, wall time, CPU seconds of the pg-rekey process (all its workers) and of the server
// (its backends), per worker and per 1000 rows. Not part of `make bench`; run by hand:
//   node --import tsx bench/load-spike/workers.ts [rows] [rounds]
// Writes .bench-data/workers/workers.md (the figures are copied by hand into bench/WORKERS.md).
import { spawnSync } from 'node:child_process';
import { cpus } from 'node:os';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { stringify } from 'yaml';
import { startBenchCluster } from './cluster.js';
import { countV1, keysAndTables, restoreIncidents, tableFacts } from './dataset.js';
import { ROOT, runCli } from './pg-rekey-cli.js';
import { machineCpu, serverCpu } from './sampler.js';

const [rowsArg, roundsArg] = process.argv.slice(2);
const ROWS = Number(rowsArg ?? 300_000);
const ROUNDS = Number(roundsArg ?? 2);
const WORKERS = [1, 2, 4];
const work = path.join(ROOT, '.bench-data', 'workers');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const cluster = await startBenchCluster(path.join(ROOT, '.bench-data'));
const db = new pg.Client({ connectionString: cluster.url });
try {
  await db.connect();
  const envFile = path.join(work, 'keys.env');
  await keysAndTables(db, envFile, ROWS);
  const config = (workers: number) => {
    const file = path.join(work, `w${workers}.yaml`);
    writeFileSync(file, stringify({ tables: [{ name: 'incidents', columns: ['title'] }], sweep: { workers, range_lease: '10s' } }));
    return file;
  };
  const setup = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'pg-rekey.js'), 'setup', '-c', config(1), '--env-file', envFile, '--database-url', cluster.url], { encoding: 'utf8' });
  if (setup.status !== 0) throw new Error(setup.stderr);
  const facts = await tableFacts(db);
  const lines = [
    `${ROWS} rows (${facts.blocks} blocks, ${facts.heapMB.toFixed(0)} MB heap), ${cpus().length} cores (${cpus()[0]?.model ?? '?'}), backfill --fast --restart, no foreground workload`,
    '',
    '| workers | round | rows | s | rows/s | pg-rekey CPU s | per worker | server CPU s | machine busy % | CPU ms per 1000 rows (pg-rekey + server) |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (let round = 1; round <= ROUNDS; round++) {
    for (const workers of WORKERS) {
      await restoreIncidents(db);
      const server0 = serverCpu(cluster.pid);
      const machine0 = machineCpu();
      const r = await runCli(['backfill', '--fast', '--restart', '--json', '-c', config(workers), '--env-file', envFile, '--database-url', cluster.url]);
      const server = serverCpu(cluster.pid) - server0;
      const machine1 = machineCpu();
      if (r.code !== 0) throw new Error(`workers ${workers}: exit ${r.code}\n${r.stderr.slice(-2000)}`);
      const left = await countV1(db);
      if (left !== 0) throw new Error(`workers ${workers}: ${left} v1 values left`);
      const out = JSON.parse(r.stdout) as { rewritten: number };
      const s = r.wallMs / 1000;
      const busy = (100 * (machine1.busy - machine0.busy)) / Math.max(1, machine1.total - machine0.total);
      lines.push(
        `| ${workers} | ${round} | ${out.rewritten} | ${s.toFixed(1)} | ${Math.round(out.rewritten / s)} | ${r.cpuSeconds.toFixed(1)} | ${(r.cpuSeconds / workers).toFixed(1)} | ${server.toFixed(1)} | ${busy.toFixed(0)} | ${((1000 * (r.cpuSeconds + server) * 1000) / out.rewritten).toFixed(2)} |`,
      );
      console.log(lines.at(-1));
    }
  }
  writeFileSync(path.join(work, 'workers.md'), `${lines.join('\n')}\n`);
} finally {
  await db.end().catch(() => undefined);
  await cluster.stop();
}
