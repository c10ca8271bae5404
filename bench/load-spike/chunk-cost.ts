// What a sweep chunk costs the server, old build against new, without a foreground workload: statements
// (round trips), commits, WAL bytes and time per rewritten row of `pg-rekey backfill` in mode duty with a
// negligible nice_ratio (serial chunks, no read-ahead). Not part of `make bench`; run by hand:
//   node --import tsx bench/load-spike/chunk-cost.ts <old-checkout-with-dist> [rows]
// The old checkout needs bin/, dist/, sql/ and package.json (e.g. `git archive <commit>`, then tsc).
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { stringify } from 'yaml';
import { loadKeyRing } from '../../src/crypto/key-ring.js';
import { initSodium } from '../../src/crypto/secretbox.js';
import { startBenchCluster } from './cluster.js';
import { createTables, loadPristine, restoreIncidents } from './dataset.js';
import { ROOT, writeKeys } from './pg-rekey-cli.js';

const [oldRoot, rowsArg] = process.argv.slice(2);
if (!oldRoot) throw new Error('usage: chunk-cost.ts <old checkout with dist/> [rows]');
const ROWS = Number(rowsArg ?? 200_000);
const work = path.join(ROOT, '.bench-data', 'chunk-cost');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const cluster = await startBenchCluster(path.join(ROOT, '.bench-data'));
const db = new pg.Client({ connectionString: cluster.url });
try {
  await db.connect();
  await db.query('create extension pg_stat_statements');
  const envFile = path.join(work, 'keys.env');
  await writeKeys(envFile);
  await initSodium();
  await createTables(db);
  await loadPristine(db, ROWS, loadKeyRing({ env: {}, envFile }));
  const config = (file: string, sweep: object) => (writeFileSync(file, stringify({ tables: [{ name: 'incidents', columns: ['title'] }], sweep })), file);
  const builds = [
    { name: 'before (read-only transaction, then a write transaction)', root: oldRoot, config: config(path.join(work, 'old.yaml'), { chunk_time: '5ms', nice_ratio: 0.001 }) },
    { name: 'after (one transaction per chunk)', root: ROOT, config: config(path.join(work, 'new.yaml'), { mode: 'duty', chunk_time: '5ms', nice_ratio: 0.001 }) },
  ];
  const cli = (root: string, args: string[]) => spawnSync(process.execPath, [path.join(root, 'bin', 'pg-rekey.js'), ...args, '--env-file', envFile, '--database-url', cluster.url], { encoding: 'utf8' });
  const setup = cli(ROOT, ['setup', '-c', builds[1]!.config]);
  if (setup.status !== 0) throw new Error(setup.stderr);
  const lines: string[] = ['| build | round | rows | s | rows/s | statements per chunk | commits per 1000 rows | WAL B/row |', '|---|---|---|---|---|---|---|---|'];
  for (const round of [1, 2]) {
    for (const b of builds) {
      await restoreIncidents(db);
      await db.query('select pg_stat_statements_reset()');
      const before = (await db.query(`select pg_current_wal_lsn()::text as l, (select xact_commit from pg_stat_database where datname = current_database())::float8 as c`)).rows[0];
      const t0 = performance.now();
      const r = cli(b.root, ['backfill', '--restart', '--json', '-c', b.config]);
      const s = (performance.now() - t0) / 1000;
      if (r.status !== 0 && r.status !== 1) throw new Error(`${b.name}: exit ${r.status}\n${r.stderr.slice(-2000)}`);
      await new Promise((res) => setTimeout(res, 1100)); // table and database counters are flushed about once a second
      await db.query('select pg_stat_clear_snapshot()');
      const after = (await db.query(`select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8 as wal, (select xact_commit from pg_stat_database where datname = current_database())::float8 - $2 as commits`, [before.l, before.c])).rows[0];
      const calls = Number((await db.query(`select coalesce(sum(calls), 0)::float8 as n from pg_stat_statements where query not like '%pg_stat%' and query not like '%pg_current_wal_lsn()::text as l%'`)).rows[0].n);
      const out = JSON.parse(r.stdout) as { rewritten: number; relations: { chunks: number }[] };
      const chunks = out.relations[0]?.chunks ?? 1;
      lines.push(`| ${b.name} | ${round} | ${out.rewritten} | ${s.toFixed(1)} | ${Math.round(out.rewritten / s)} | ${(calls / chunks).toFixed(1)} | ${((1000 * after.commits) / out.rewritten).toFixed(1)} | ${Math.round(after.wal / out.rewritten)} |`);
      console.log(lines[lines.length - 1]);
    }
  }
  writeFileSync(path.join(work, 'chunk-cost.md'), `${lines.join('\n')}\n`);
} finally {
  await db.end().catch(() => undefined);
  await cluster.stop();
}
