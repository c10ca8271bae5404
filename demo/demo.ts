// `make demo`: a whole key rotation (v1 -> v2) with pg-rekey on a throwaway PostgreSQL 18 with sample CAD data:
// setup, verify, backfill --dry-run, then `pg-rekey run` (stream + sweep) while app instances on v1 and v2 keep
// writing (demo/app-writers.ts), convergence, SIGTERM, verify, status, teardown and a check of every row.
// Run from the repo root after `npm run build`: npx tsx demo/demo.ts
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { startCluster, type Cluster } from '../test/support/cluster.js';
import { KeyRing, loadKeyRing } from '../src/crypto/key-ring.js';
import { parseVersioned } from '../src/crypto/envelope.js';
import { decryptValue, encryptValue } from '../src/crypto/rewrite.js';
import { initSodium } from '../src/crypto/secretbox.js';
import { renderTable } from '../src/format.js';
import { Gen, cfsXml, communicationBody, incidentTitle } from './sample-data.js';
import { AppWriters } from './app-writers.js';
import { DaemonProcess } from './daemon-process.js';
import { relayToOwnProcessGroup } from './process-group.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = path.join(ROOT, 'bin', 'pg-rekey.js');
const T0 = Date.now();
const secs = (since: number): string => `${((Date.now() - since) / 1000).toFixed(1)} s`;

/** The sample tables: one encrypted column each, rows in table column order for `insert ... select * from unnest(...)`. */
interface SampleTable {
  name: string;
  column: string;
  rows: number;
  batch: number;
  types: string[];
  plaintext(g: Gen, id: number, at: Date): string;
  row(g: Gen, id: number, at: Date, value: string | null): unknown[];
}
const SAMPLE: SampleTable[] = [
  { name: 'incidents', column: 'title', rows: 30_000, batch: 5_000, types: ['bigint', 'text', 'text', 'timestamptz'],
    plaintext: (g) => incidentTitle(g), row: (g, id, at, v) => [id, v, g.pick(['open', 'dispatched', 'on scene', 'closed', 'closed']), at] },
  { name: 'incident_communications', column: 'body', rows: 20_000, batch: 5_000, types: ['bigint', 'bigint', 'text', 'timestamptz'],
    plaintext: (g) => communicationBody(g), row: (g, id, at, v) => [id, g.int(1, 30_000), v, at] },
  { name: 'cfs_incidents', column: 'raw_xml', rows: 5_000, batch: 500, types: ['bigint', 'text', 'timestamptz'],
    plaintext: (g, id, at) => cfsXml(g, id, at), row: (_g, id, at, v) => [id, v, at] },
];
/** What each table's encrypted column holds in clear text: table -> id -> plaintext (null for NULL). */
type Expected = Map<string, Map<number, string | null>>;

/** The `pg-rekey run` step: how long the old (v1) app instances write, then the new (v2) ones alone. */
const RUN = { v1Seconds: 12, v2OnlySeconds: 4, convergeTimeoutSeconds: 30, instances: { 1: 2, 2: 2 }, ratePerInstance: 18 };
const RUN_LOG = path.join(ROOT, '.demo-data', 'pg-rekey-run.log');

/** Everything cleanup() must stop or remove, whatever happens. */
const demo: {
  cluster?: Promise<Cluster>; workDir?: string; child?: ChildProcess; daemon?: DaemonProcess; writers?: AppWriters; flags: string[]; interrupted: boolean;
} = { flags: [], interrupted: false };
let step = 0;
function heading(title: string, why?: string): void {
  console.log(`\n=== Step ${++step}: ${title} ===`);
  if (why) console.log(why);
}

async function startDatabase(): Promise<Cluster> {
  const started = Date.now();
  demo.cluster = startCluster(18);
  const cluster = await demo.cluster;
  const db = new pg.Client(cluster.url);
  await db.connect();
  const { rows } = await db.query(`select current_setting('server_version') as v, current_setting('wal_level') as w, current_setting('data_directory') as d`);
  await db.end();
  console.log(`PostgreSQL ${rows[0].v} (wal_level=${rows[0].w}) at ${cluster.url}\ndata directory ${rows[0].d}, up in ${secs(started)}`);
  return cluster;
}

/** Keys via `pg-rekey keygen`, the app's .env.local (mode 0600) and pg-rekey.yaml in a temp work dir. */
function writeConfig(url: string): KeyRing {
  demo.workDir = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-demo-'));
  const keygen = (): string => execFileSync(process.execPath, [BIN, 'keygen'], { encoding: 'utf8' }).trim();
  const envFile = path.join(demo.workDir, '.env.local');
  const config = path.join(demo.workDir, 'pg-rekey.yaml');
  writeFileSync(envFile, `LIBSODIUM_ENCRYPTION_KEY=${keygen()}\nLIBSODIUM_ENCRYPTION_KEY_V2=${keygen()}\nLIBSODIUM_ENCRYPTION_KEY_VERSION=v2\n`, { mode: 0o600 });
  chmodSync(envFile, 0o600);
  writeFileSync(config, [
    '# Columns holding "v<N>:base64" values written by the CAD applications.',
    'tables:',
    ...SAMPLE.map((t) => `  - name: ${t.name}\n    columns: [${t.column}]`),
    'sweep:',
    '  chunk_time: 25ms        # target time of one chunk (read, then rewrite in one short transaction); default 5ms: gentler, slower',
    '  chunk_blocks: 256       # 8 kB heap pages in the first chunk; later ones are sized to chunk_time',
    '  nice_ratio: 1           # sleep 1 ms per ms of chunk work: the sweep leaves the database half its time',
    '  progress_interval: 1s   # progress log lines when stderr is not a terminal',
    'daemon:                   # pg-rekey run',
    '  http_port: 0            # any free port (logged at start); default 9187',
    '  check_interval: 1s      # count the remaining old-key values every second (default 30s)',
    '  slot_check_interval: 2s',
    '',
  ].join('\n'));
  console.log(`${envFile} (mode 0600, values not shown):\n  LIBSODIUM_ENCRYPTION_KEY=<v1: the key the apps use today>\n` +
    `  LIBSODIUM_ENCRYPTION_KEY_V2=<v2: the new key>\n  LIBSODIUM_ENCRYPTION_KEY_VERSION=v2   # the apps write v2 from now on\n\n${config}:`);
  console.log(readFileSync(config, 'utf8').replace(/^/gm, '  ').trimEnd());
  demo.flags = ['--database-url', url, '-c', config, '--env-file', envFile];
  console.log(`\nEvery pg-rekey command below runs as:\n  node bin/pg-rekey.js <command> ${demo.flags.join(' ')}`);
  return loadKeyRing({ env: {}, envFile });
}

async function createSchema(db: pg.Client): Promise<void> {
  await db.query(readFileSync(path.join(ROOT, 'demo', 'sample-schema.sql'), 'utf8'));
  console.log(`created ${SAMPLE.map((t) => t.name).join(', ')} (demo/sample-schema.sql)`);
}

/** Fills the tables as the apps would have: mostly v1, ~2% already v2, a few NULLs and a few legacy plaintexts. */
async function fillData(db: pg.Client, ring: KeyRing): Promise<Expected> {
  const g = new Gen(20240611);
  const expected: Expected = new Map();
  const report: (string | number)[][] = [];
  for (const t of SAMPLE) {
    const started = Date.now();
    const plain = new Map<number, string | null>();
    const n = { v1: 0, v2: 0, null: 0, 'not ours': 0 };
    for (let first = 1; first <= t.rows; first += t.batch) {
      const batch: unknown[][] = [];
      for (let id = first; id < Math.min(first + t.batch, t.rows + 1); id++) {
        const at = new Date(T0 - g.int(0, 90 * 86_400) * 1000);
        const text = t.plaintext(g, id, at);
        const r = g.next();
        const kind = r < 0.004 ? 'null' : r < 0.006 ? 'not ours' : r < 0.026 ? 'v2' : 'v1';
        n[kind]++;
        plain.set(id, kind === 'null' ? null : text);
        const value = kind === 'null' ? null : kind === 'not ours' ? text : encryptValue(Buffer.from(text), kind === 'v2' ? 2 : 1, ring);
        batch.push(t.row(g, id, at, value));
      }
      const columns = t.types.map((_, i) => batch.map((row) => row[i]));
      await db.query(`insert into ${t.name} select * from unnest(${t.types.map((ty, i) => `$${i + 1}::${ty}[]`).join(', ')})`, columns);
    }
    expected.set(t.name, plain);
    await db.query(`vacuum analyze ${t.name}`);
    const size = await db.query(
      `select pg_size_pretty(pg_relation_size(c.oid)) as heap, pg_size_pretty(coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0)) as toast
         from pg_class c where c.oid = $1::regclass`, [t.name]);
    report.push([`${t.name}.${t.column}`, t.rows, n.v1, n.v2, n.null, n['not ours'], size.rows[0].heap, size.rows[0].toast, secs(started)]);
  }
  console.log(renderTable(['column', 'rows', 'v1', 'v2', 'null', 'not ours', 'heap', 'toast', 'fill time'], report));
  console.log('"not ours": legacy plaintext without a v<N>: prefix; pg-rekey must count it and never touch it.');
  return expected;
}

/** Environment for pg-rekey: keys and connection come only from the demo's flags, never from the caller's shell. */
function childEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(LIBSODIUM_|PG|DATABASE_URL$)/.test(k)));
}

/** Runs `pg-rekey <args>` with the demo's flags, output live; throws unless it exits with expectedExit. */
async function runStep(args: string[], expectedExit: number): Promise<void> {
  console.log(`$ pg-rekey ${args.join(' ')}`);
  const started = Date.now();
  const child = spawn(process.execPath, [BIN, ...args, ...demo.flags], { cwd: ROOT, env: childEnv(), stdio: 'inherit' });
  demo.child = child;
  const code = await new Promise<number>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (c, signal) => resolve(c ?? 128 + (signal ? os.constants.signals[signal] : 0)));
  });
  demo.child = undefined;
  console.log(`(exit code ${code}, ${secs(started)})`);
  if (code !== expectedExit) throw new Error(`\`pg-rekey ${args.join(' ')}\` exited with ${code}, expected ${expectedExit}`);
}

/** `pg-rekey run` while application instances write: v1 (old release) and v2 instances, then v2 only, then none. */
async function runWhileAppsWrite(url: string, db: pg.Client, ring: KeyRing): Promise<AppWriters> {
  const writers = (demo.writers = new AppWriters(url, ring, { instances: RUN.instances, ratePerInstance: RUN.ratePerInstance, existingIncidents: SAMPLE[0]!.rows }));
  console.log(`$ pg-rekey run   (a child process; its JSON log lines go to ${path.relative(ROOT, RUN_LOG)}, the main ones are shown here in short)`);
  const daemon = (demo.daemon = DaemonProcess.start(BIN, demo.flags, { cwd: ROOT, env: childEnv(), logFile: RUN_LOG, echo: (line) => console.log(`  ${line}`) }));
  await daemon.waitFor(/^streaming$/, 30_000);
  writers.start();
  const start = Date.now();
  console.log(`  rolling deploy in progress, ~${Object.values(RUN.instances).reduce((a, b) => a + b) * RUN.ratePerInstance} writes/s: ${writers.describe()};` +
    `\n  they insert incidents and communications and update incident titles. Every second: the v1 values left per table.`);
  const countV1 = `select ${SAMPLE.map((t) => `(select count(*)::int from ${t.name} where starts_with(${t.column}, 'v1:')) as ${t.name}`).join(', ')}`;
  const stopAt = RUN.v1Seconds + RUN.v2OnlySeconds;
  let v1StoppedAt = 0;
  for (let s = 1; ; s++) {
    await new Promise((r) => setTimeout(r, start + s * 1000 - Date.now()));
    if (demo.interrupted) throw new Error('interrupted');
    if (daemon.exitCode !== null) throw new Error(`pg-rekey run exited with code ${daemon.exitCode} while it should be running (see ${RUN_LOG})`);
    const [left, by] = await Promise.all([db.query(countV1).then((r) => r.rows[0] as Record<string, number>), daemon.rewrites()]);
    console.log(`  +${String(s).padStart(2)}s  v1 left: ${SAMPLE.map((t) => `${t.name} ${String(left[t.name]).padStart(5)}`).join('  ')}` +
      `  | rewritten by sweep ${by.sweep}, stream ${by.stream}  | app writes v1 ${writers.writes(1)}, v2 ${writers.writes(2)}`);
    if (s === RUN.v1Seconds) {
      await writers.stop(1);
      v1StoppedAt = Date.now();
      console.log('  --- rolling deploy finished: the old (v1) instances are gone, the v2 instances keep writing ---');
    } else if (s === stopAt) {
      await writers.stop(2);
      console.log('  --- application writes stopped; waiting for pg-rekey run to report CONVERGED ---');
    } else if (s > stopAt && daemon.convergedAt > 0 && Object.values(left).every((n) => n === 0)) {
      // Converged: the daemon says so (no 'no longer converged' since) and, with every writer stopped, no v1 value is left.
      const after = (daemon.convergedAt - v1StoppedAt) / 1000;
      console.log(`  pg-rekey run logged CONVERGED ${Math.abs(after).toFixed(1)} s ${after >= 0 ? 'after' : 'before'} the last v1 write and still is; the run step took ${secs(start)}`);
      break;
    } else if (s > stopAt + RUN.convergeTimeoutSeconds) {
      throw new Error(`pg-rekey run did not report CONVERGED within ${RUN.convergeTimeoutSeconds} s after the writes stopped (see ${RUN_LOG})`);
    }
  }
  if (writers.errors.length) throw new Error(`${writers.errors.length} application write(s) failed, e.g. ${writers.errors[0]}`);
  await writers.close();
  return writers;
}

/** Decrypts with a key ring holding only the v2 key: the old key is no longer needed. */
async function spotCheck(db: pg.Client, ring: KeyRing, expected: Expected, writers: AppWriters): Promise<void> {
  const v2only = new KeyRing(2, new Map([[2, ring.key(2)!]]));
  const text = (v: string): string => Buffer.from(decryptValue(v, v2only) ?? Buffer.from('<does not decrypt with v2!>')).toString('utf8');
  const sample = await db.query(`select id, title from incidents where title like 'v2:%' and id <= $1 order by random() limit 3`, [SAMPLE[0]!.rows]);
  for (const r of sample.rows) console.log(`incident ${r.id}: ${r.title.slice(0, 24)}... -> "${text(r.title)}"`);
  // The rows the app instances wrote during `run`: what they wrote last is what the row must hold now.
  const entries = writers.entries();
  for (const e of entries) expected.get(e.table)!.set(e.id, e.plaintext);
  const old = entries.filter((e) => e.version === 1);
  const shown = [old.find((e) => e.table === 'incidents' && e.kind === 'insert'), old.find((e) => e.table === 'incident_communications'), old.find((e) => e.kind === 'update')];
  for (const e of shown.filter((x) => x !== undefined)) {
    const column = SAMPLE.find((t) => t.name === e.table)!.column;
    const now = (await db.query(`select ${column} as v from ${e.table} where id = $1`, [e.id])).rows[0]?.v as string;
    console.log(`${e.table} ${e.id}: ${e.writer} (old release) ${e.kind === 'insert' ? 'inserted' : 'updated'} ${e.written.slice(0, 12)}..., ` +
      `now ${now?.slice(0, 12)}... -> "${text(now ?? '')}"`);
  }
  let ok = 0, nulls = 0, notOurs = 0;
  const bad: string[] = [];
  for (const t of SAMPLE) {
    const want = expected.get(t.name)!;
    const { rows } = await db.query(`select id, ${t.column} as v from ${t.name}`);
    for (const { id, v } of rows as { id: string; v: string | null }[]) {
      const w = want.get(Number(id));
      if (w === undefined) bad.push(`${t.name} id ${id} (unexpected row)`);
      else if (v === null && w === null) nulls++;
      else if (v !== null && !parseVersioned(v) && v === w) notOurs++;
      else if (v?.startsWith('v2:') && text(v) === w) ok++;
      else bad.push(`${t.name} id ${id}`);
    }
    if (rows.length !== want.size) bad.push(`${t.name}: ${rows.length} rows, expected ${want.size}`);
  }
  console.log(`checked every row: ${ok} value(s) decrypt with the v2 key alone to the original plaintext, ${nulls} NULL, ${notOurs} "not ours" unchanged;\n` +
    `${entries.length} of the rows were last written by the app instances during \`run\` (${old.length} with v1): each holds what its instance wrote`);
  if (bad.length) throw new Error(`${bad.length} value(s) are not what the apps wrote: ${bad.slice(0, 5).join(', ')}`);
}

/** Stops the app writers, pg-rekey (if running), PostgreSQL and removes the work dir; safe to call twice. */
let cleaning: Promise<void> | undefined;
function cleanup(): Promise<void> {
  return (cleaning ??= (async () => {
    await demo.writers?.close();
    if (demo.daemon && demo.daemon.exitCode === null) {
      console.error('stopping pg-rekey run: one SIGTERM, it finishes the batch in flight and acknowledges ...');
      console.error(`pg-rekey run exited with code ${await demo.daemon.stop(20_000)}`);
    }
    const child = demo.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    const cluster = await demo.cluster?.catch(() => undefined);
    if (cluster) {
      await cluster.stop();
      console.log('PostgreSQL stopped, data directory removed');
    }
    if (demo.workDir) rmSync(demo.workDir, { recursive: true, force: true });
  })());
}

async function main(): Promise<void> {
  console.log('pg-rekey demo: rotate the encryption key of a CAD database from v1 to v2, on a throwaway PostgreSQL 18');
  heading('Start an embedded PostgreSQL 18 with wal_level=logical');
  const cluster = await startDatabase();
  heading('Generate the keys and write the config', 'v1 is the key the applications use today, v2 the new one (`pg-rekey keygen` prints 32 random bytes as hex).');
  await initSodium();
  const ring = writeConfig(cluster.url);
  heading('Create the sample CAD schema and fill it with v1-encrypted data');
  const db = new pg.Client(cluster.url);
  db.on('error', () => undefined); // lost while idle (server stopped): the next query fails and says so
  await db.connect();
  try {
    await createSchema(db);
    const expected = await fillData(db, ring);
    heading('pg-rekey setup', 'Checks the server, role and tables, then creates the state schema, the publication and the replication slot.');
    await runStep(['setup'], 0);
    heading('pg-rekey verify, before the rotation', 'Counts values by key version; exit code 1 means values of an old version remain.');
    await runStep(['verify'], 1);
    console.log('not converged, as expected');
    heading('pg-rekey backfill --dry-run', 'Reads and decrypts every value, writes nothing.');
    await runStep(['backfill', '--dry-run'], 0);
    heading('pg-rekey run, while the applications keep writing',
      'The daemon streams the replication slot (every old-key INSERT/UPDATE is rewritten as soon as it commits)\n' +
      'and sweeps the rows written before the slot, by ctid ranges. Meanwhile a rolling deploy is under way:\n' +
      'two app instances still run the old release and write v1, two already write v2.');
    const writers = await runWhileAppsWrite(cluster.url, db, ring);
    heading("pg-rekey run's /metrics", `The lines of interest from ${demo.daemon!.http}/metrics (Prometheus text format).`);
    const metrics = await demo.daemon!.metrics('pg_rekey_rewrites_total', 'pg_rekey_cas_conflicts_total', 'pg_rekey_quarantined_total',
      'pg_rekey_stream_lag_bytes', 'pg_rekey_remaining_values', 'pg_rekey_converged');
    console.log(metrics.join('\n'));
    const by = await demo.daemon!.rewrites();
    console.log(`rewrites by source: sweep ${by.sweep} (the rows from before the slot), stream ${by.stream} (the old instances' writes during run)`);
    heading('Stop pg-rekey run with SIGTERM', 'It finishes the batch in flight, acknowledges the slot, checkpoints and exits 0.');
    const code = await demo.daemon!.stop();
    console.log(`(exit code ${code})`);
    if (code !== 0) throw new Error(`pg-rekey run exited with ${code} on SIGTERM, expected 0 (see ${RUN_LOG})`);
    heading('pg-rekey verify, after the rotation', 'Exit code 0: nothing but v2 (or not ours) remains; the v1 key could now be removed.');
    await runStep(['verify'], 0);
    heading('pg-rekey status', 'Sweep progress per relation, replication slot, quarantine, recent runs.');
    await runStep(['status'], 0);
    heading('pg-rekey teardown', 'Converged: drop the replication slot (it would retain WAL forever) and the publication.');
    await runStep(['teardown'], 0);
    const left = (await db.query(`select (select count(*)::int from pg_replication_slots) as slots, (select count(*)::int from pg_publication) as pubs`)).rows[0];
    console.log(`replication slots left on the server: ${left.slots}, publications: ${left.pubs}`);
    if (left.slots !== 0 || left.pubs !== 0) throw new Error('teardown left a replication slot or publication behind');
    heading('Spot check: decrypt with the v2 key only');
    await spotCheck(db, ring, expected, writers);
  } finally {
    await db.end();
  }
}

if (!relayToOwnProcessGroup()) {
  let signals = 0;
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      demo.interrupted = true;
      if (++signals > 1) {
        console.error(`\n${signal} again: exiting now (watchdogs stop PostgreSQL and pg-rekey run)`);
        process.exit(128 + os.constants.signals[signal]);
      }
      console.error(`\n${signal}: stopping the demo and its PostgreSQL ...`);
      void cleanup().finally(() => process.exit(128 + os.constants.signals[signal]));
    });
  }
  main().then(
    async () => {
      heading('Stop PostgreSQL');
      await cleanup();
      console.log(`\ndemo finished in ${secs(T0)}`);
    },
    async (e: Error) => {
      if (demo.interrupted) return; // the signal handler cleans up and exits
      console.error(`\ndemo FAILED: ${e.message}`);
      await cleanup();
      process.exitCode = 1;
    },
  );
}
