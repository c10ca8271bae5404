// Is pg-rekey's memory flat with table size? `pg-rekey backfill --fast --restart` of an `incidents`
// table of each size given (default 1M and 10M rows; ~106-byte v1 values in `title`), on the durable
// bench cluster, no foreground workload. RSS from /proc (peak VmHWM) and process.memoryUsage() every
// 100 ms inside the CLI (mem-probe.mjs): peak, and the median of the samples in each tenth of the run.
// Not part of `make bench`; run by hand:
//   node --import tsx bench/load-spike/rss.ts [rows ...]      e.g. rss.ts 1000000 10000000
// Writes .bench-data/rss/rss.md (copied by hand into bench/RSS.md).
// The table is filled from a seed of SEED_VALUES distinct v1 values, repeated: loading 10M rows
// encrypted one by one in Node would take longer than the backfill; the sweep treats a repeated value
// like any other (decrypt, encrypt under a fresh nonce, compare-and-set).
import { spawnSync } from 'node:child_process';
import { cpus } from 'node:os';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { stringify } from 'yaml';
import { loadKeyRing } from '../../src/crypto/key-ring.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import { initSodium } from '../../src/crypto/secretbox.js';
import { startBenchCluster } from './cluster.js';
import { countV1, tableFacts } from './dataset.js';
import { ROOT, writeKeys } from './pg-rekey-cli.js';
import { runMeasured, type MemorySample } from './measured-cli.js';
import { serverCpu } from './sampler.js';

const SIZES = process.argv.slice(2).map(Number);
if (SIZES.length === 0) SIZES.push(1_000_000, 10_000_000);
const SEED_VALUES = 200_000;
const work = path.join(ROOT, '.bench-data', 'rss');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });

const cluster = await startBenchCluster(path.join(ROOT, '.bench-data'));
const db = new pg.Client({ connectionString: cluster.url });

/** incidents with `rows` rows, all v1, freshly loaded, vacuumed and checkpointed. */
async function fill(rows: number): Promise<number> {
  const t0 = performance.now();
  await db.query(`drop table if exists incidents`);
  await db.query(`create table incidents (id bigint, title text, status text not null, updated_at timestamptz not null)`);
  await db.query(`insert into incidents select g, s.title, 'open', now() from generate_series(1, $1::bigint) g join seed s on s.i = g % ${SEED_VALUES}`, [rows]);
  await db.query(`alter table incidents add primary key (id)`);
  await db.query(`vacuum analyze incidents`);
  await db.query(`select pg_replication_slot_advance(slot_name, pg_current_wal_lsn()) from pg_replication_slots`);
  await db.query(`checkpoint`);
  return (performance.now() - t0) / 1000;
}

/** The median of each field over the samples of one tenth of the run. */
function tenths(samples: MemorySample[]): { rss: number; heapUsed: number; external: number }[] {
  const end = samples.at(-1)?.t ?? 0;
  const med = (xs: number[]) => (xs.length === 0 ? NaN : [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!);
  return Array.from({ length: 10 }, (_, i) => {
    const part = samples.filter((s) => s.t >= (end * i) / 10 && s.t < (end * (i + 1)) / 10 + (i === 9 ? 1 : 0));
    return { rss: med(part.map((s) => s.rss)), heapUsed: med(part.map((s) => s.heapUsed)), external: med(part.map((s) => s.external)) };
  });
}

const lines: string[] = [];
try {
  await db.connect();
  const envFile = path.join(work, 'keys.env');
  await writeKeys(envFile);
  await initSodium();
  const ring = loadKeyRing({ env: {}, envFile });
  await db.query(`create unlogged table seed (i int primary key, title text not null)`);
  for (let first = 0; first < SEED_VALUES; first += 10_000) {
    const ids: number[] = [];
    const titles: string[] = [];
    for (let i = first; i < first + 10_000; i++) {
      ids.push(i);
      titles.push(encryptValue(Buffer.from(`incident ${i}: structure fire, ${(i * 7919) % 10_000} Main St`), 1, ring));
    }
    await db.query(`insert into seed select * from unnest($1::int[], $2::text[])`, [ids, titles]);
  }
  const config = path.join(work, 'fast.yaml');
  writeFileSync(config, stringify({ tables: [{ name: 'incidents', columns: ['title'] }] }));
  await fill(1000);
  const setup = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'pg-rekey.js'), 'setup', '-c', config, '--env-file', envFile, '--database-url', cluster.url], { encoding: 'utf8' });
  if (setup.status !== 0) throw new Error(setup.stderr);
  lines.push(
    `\`pg-rekey backfill --fast --restart\` per table size, ${cpus().length} cores, no foreground workload; ${new Date().toISOString()}`,
    '',
    '| rows | heap MB | load s | backfill s | rows/s | pg-rekey CPU s | server CPU s | peak RSS MB (VmHWM) | peak rss / heapUsed / external MB (memoryUsage) | RSS MB, median per tenth of the run |',
    '|---|---|---|---|---|---|---|---|---|---|',
  );
  for (const rows of SIZES) {
    const loadS = await fill(rows);
    const facts = await tableFacts(db);
    const s0 = serverCpu(cluster.pid);
    const r = await runMeasured(ROOT, ['backfill', '--fast', '--restart', '--json', '-c', config, '--env-file', envFile, '--database-url', cluster.url], path.join(work, `mem-${rows}.json`));
    const server = serverCpu(cluster.pid) - s0;
    if (r.code !== 0) throw new Error(`${rows} rows: exit ${r.code}\n${r.stderr.slice(-2000)}`);
    const left = await countV1(db);
    if (left !== 0) throw new Error(`${rows} rows: ${left} v1 values left`);
    const rewritten = (JSON.parse(r.stdout) as { rewritten: number }).rewritten;
    const s = r.wallMs / 1000;
    const p = r.memory?.peak;
    const t = r.memory ? tenths(r.memory.samples) : [];
    lines.push(
      `| ${rewritten} | ${facts.heapMB.toFixed(0)} | ${loadS.toFixed(0)} | ${s.toFixed(1)} | ${Math.round(rewritten / s)} | ${r.cpuSeconds.toFixed(1)} | ${server.toFixed(1)} | ${r.maxRssMB.toFixed(0)} | ` +
        `${p ? `${p.rss} / ${p.heapUsed} / ${p.external}` : '-'} | ${t.map((x) => x.rss.toFixed(0)).join(' ')} |`,
    );
    console.log(lines.at(-1));
  }
  writeFileSync(path.join(work, 'rss.md'), `${lines.join('\n')}\n`);
} finally {
  await db.end().catch(() => undefined);
  await cluster.stop();
}
