// The foreground workload, run as its own process (forked by run.ts with an IPC channel) so that its
// client does not share an event loop with the benchmark's own encryption work.
//
// Open loop: transaction i is due at t0 + i / rate whatever happened to earlier ones; a due transaction
// goes to the pool at once and waits there if every connection is busy. Latency is measured from the due
// time. Reads by key and small updates of status/updated_at (never the encrypted column), uniformly
// random ids, a seeded sequence so every scenario replays the same transactions.
//
// Protocol: argv[2] is a JSON WorkloadConfig. -> {type:'ready'} once every connection is open and has
// prepared both statements; <- {type:'start'}; <- {type:'stop'}; -> {type:'result', samples, cpuMs}.
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { Gen } from '../../demo/sample-data.js';
import { KIND_READ, KIND_UPDATE, type Samples } from './latency.js';
import { openLoop, type Timetable } from './timetable.js';

export interface WorkloadConfig {
  url: string;
  rows: number;
  /** Transactions per second, all clients together. */
  rate: number;
  /** Connections in the pool. */
  clients: number;
  /** Share of transactions that are updates. */
  updateFraction: number;
  seed: number;
}

const READ = { name: 'bench_read', text: 'select id, title, status, updated_at from incidents where id = $1' };
const UPDATE = { name: 'bench_update', text: 'update incidents set status = $1, updated_at = now() where id = $2' };
const STATUSES = ['open', 'dispatched', 'on scene', 'closed'];
const DRAIN_LIMIT_MS = 120_000;

const cfg = JSON.parse(process.argv[2]!) as WorkloadConfig;
const send = (m: object) => process.send!(m);

const pool = new pg.Pool({ connectionString: cfg.url, max: cfg.clients, application_name: 'bench-workload' });
pool.on('error', () => undefined);

// Open every connection and prepare both statements on each before the clock starts.
const warm = await Promise.all(Array.from({ length: cfg.clients }, () => pool.connect()));
for (const c of warm) {
  await c.query({ ...READ, values: [1] });
  await c.query({ ...UPDATE, values: ['open', -1] });
}
warm.forEach((c) => c.release());

const samples: Samples = { scheduled: [], latency: [], kind: [], failed: [] };
const gen = new Gen(cfg.seed);
let timetable: Timetable | null = null;
let inFlight = 0;
let drained: (() => void) | null = null;
const cpuStart = process.cpuUsage();

function dispatch(due: number): void {
  const kind = gen.next() < cfg.updateFraction ? KIND_UPDATE : KIND_READ;
  const id = 1 + Math.floor(gen.next() * cfg.rows);
  const q = kind === KIND_UPDATE ? { ...UPDATE, values: [STATUSES[id % STATUSES.length], id] } : { ...READ, values: [id] };
  const dueEpoch = performance.timeOrigin + due;
  inFlight++;
  const done = (failed: boolean) => {
    samples.scheduled.push(dueEpoch);
    samples.latency.push(performance.now() - due);
    samples.kind.push(kind);
    samples.failed.push(failed ? 1 : 0);
    if (--inFlight === 0 && drained) drained();
  };
  pool.query(q).then(
    () => done(false),
    () => done(true),
  );
}

async function stop(): Promise<void> {
  timetable?.stop();
  if (inFlight > 0) {
    await Promise.race([new Promise<void>((r) => (drained = r)), new Promise((r) => setTimeout(r, DRAIN_LIMIT_MS))]);
  }
  const cpu = process.cpuUsage(cpuStart);
  // Exit only once the result has left through the IPC channel.
  await new Promise((sent) => process.send!({ type: 'result', samples, cpuMs: (cpu.user + cpu.system) / 1000, stillInFlight: inFlight }, sent));
  process.exit(0);
}

process.on('message', (m: { type: string }) => {
  if (m.type === 'start') timetable = openLoop(cfg.rate, dispatch);
  else if (m.type === 'stop') void stop();
});
send({ type: 'ready' });
