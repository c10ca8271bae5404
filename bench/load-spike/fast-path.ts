// `pg-rekey backfill --fast`, two builds side by side, and the "values sent as arrays" floor, on one
// durable bench cluster without a foreground workload: rows/s, where the wall time goes (the sweep pass,
// the rest: start-up, target-key proof, recount), CPU of the pg-rekey process and of the server per row,
// and memory (peak RSS, and process.memoryUsage() peaks through mem-probe.mjs). Not part of `make bench`:
//   node --import tsx bench/load-spike/fast-path.ts <old checkout with dist/> [rows=1000000] [rounds=2]
// The old checkout needs bin/, dist/, sql/, package.json and node_modules (e.g. `git archive <commit>`,
// a node_modules symlink, then `npx tsc`). Writes .bench-data/fast-path/fast-path.md.
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { stringify } from 'yaml';
import { startBenchCluster } from './cluster.js';
import { countV1, keysAndTables, restoreIncidents } from './dataset.js';
import { ROOT } from './pg-rekey-cli.js';
import { loadFloorValues, prepareFloor } from './rotators.js';
import { serverCpu } from './sampler.js';
import { runMeasured } from './measured-cli.js';

const [oldRoot, rowsArg, roundsArg] = process.argv.slice(2);
if (!oldRoot) throw new Error('usage: fast-path.ts <old checkout with dist/> [rows] [rounds]');
const ROWS = Number(rowsArg ?? 1_000_000);
const ROUNDS = Number(roundsArg ?? 2);
const work = path.join(ROOT, '.bench-data', 'fast-path');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const cluster = await startBenchCluster(path.join(ROOT, '.bench-data'));
const db = new pg.Client({ connectionString: cluster.url });
const lines = [
  `${ROWS} rows, backfill --fast --restart --json, no foreground workload; old = ${path.resolve(oldRoot)}, new = ${ROOT}`,
  '',
  '| build | round | rows | wall s | rows/s | sweep pass s | rest s | pg-rekey CPU s | server CPU s | pg-rekey us/row | server us/row | peak RSS MB | peak heapUsed MB | peak external MB |',
  '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
];
const emit = (line: string) => {
  lines.push(line);
  console.log(line);
};
try {
  await db.connect();
  const envFile = path.join(work, 'keys.env');
  await keysAndTables(db, envFile, ROWS);
  const config = path.join(work, 'fast.yaml');
  writeFileSync(config, stringify({ tables: [{ name: 'incidents', columns: ['title'] }] }));
  const setup = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'pg-rekey.js'), 'setup', '-c', config, '--env-file', envFile, '--database-url', cluster.url], { encoding: 'utf8' });
  if (setup.status !== 0) throw new Error(setup.stderr);
  const floorValues = await loadFloorValues(db);
  const builds = [
    { name: 'old', root: path.resolve(oldRoot) },
    { name: 'new', root: ROOT },
  ];
  for (let round = 1; round <= ROUNDS; round++) {
    await restoreIncidents(db);
    const floor = await prepareFloor(cluster.url, floorValues);
    const s0 = serverCpu(cluster.pid);
    const f = await floor.run();
    const fs = serverCpu(cluster.pid) - s0;
    emit(`| floor (arrays) | ${round} | ${f.rows} | ${(f.updateMs / 1000).toFixed(1)} | ${Math.round(f.rows / (f.updateMs / 1000))} | - | - | - | ${fs.toFixed(1)} | - | ${((fs * 1e6) / f.rows).toFixed(1)} | - | - | - |`);
    for (const b of round % 2 === 1 ? builds : [...builds].reverse()) {
      await restoreIncidents(db);
      const server0 = serverCpu(cluster.pid);
      const r = await runMeasured(b.root, ['backfill', '--fast', '--restart', '--json', '-c', config, '--env-file', envFile, '--database-url', cluster.url], path.join(work, `mem-${b.name}-${round}.json`));
      const server = serverCpu(cluster.pid) - server0;
      if (r.code !== 0) throw new Error(`${b.name}: exit ${r.code}\n${r.stderr.slice(-2000)}`);
      const left = await countV1(db);
      if (left !== 0) throw new Error(`${b.name}: ${left} v1 values left`);
      const rows = (JSON.parse(r.stdout) as { rewritten: number }).rewritten;
      const wall = r.wallMs / 1000;
      const pass = r.sweptAtMs === null ? NaN : (r.sweptAtMs - r.firstChunkAtMs!) / 1000;
      emit(
        `| ${b.name} | ${round} | ${rows} | ${wall.toFixed(1)} | ${Math.round(rows / wall)} | ${pass.toFixed(1)} | ${(wall - pass).toFixed(1)} | ${r.cpuSeconds.toFixed(1)} | ${server.toFixed(1)} | ` +
          `${((r.cpuSeconds * 1e6) / rows).toFixed(1)} | ${((server * 1e6) / rows).toFixed(1)} | ${r.maxRssMB.toFixed(0)} | ${r.memory?.peak.heapUsed ?? '-'} | ${r.memory?.peak.external ?? '-'} |`,
      );
    }
  }
  lines.push(
    '',
    'sweep pass s: from the first chunk logged to the "relation swept" log line (the first pass); rest: start-up, checks, target-key proof, the recount (and any further pass).',
  );
  writeFileSync(path.join(work, 'fast-path.md'), `${lines.join('\n')}\n`);
} finally {
  await db.end().catch(() => undefined);
  await cluster.stop();
}
