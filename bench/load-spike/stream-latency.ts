// The stream's rewrite latency (issue 11, target 3): `pg-rekey run` (stream and sweep together, default
// settings) on the table restored to all-v1, so its sweep is at work, while an open-loop writer INSERTs
// fresh v1 rows at a fixed rate, each its own autocommit transaction. A row's latency is measured on the
// server's clock (track_commit_timestamp = on): the commit time of the rewrite that made it v2 (its
// current version's xmin) minus the commit time of the INSERT (the xmin the INSERT returned). The
// replication origin of the rewrite's commit says who rewrote it: the stream or the sweep.
import { writeFileSync } from 'node:fs';
import pg from 'pg';
import { Gen } from '../../demo/sample-data.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import { titlePlaintext } from './dataset.js';
import { quantile } from './latency.js';
import { startCli, type CliProcess, type CliRun } from './pg-rekey-cli.js';
import { openLoop } from './timetable.js';

export interface StreamLatencyConfig {
  url: string;
  ring: KeyRing;
  /** `pg-rekey run` and its flags (a config with daemon.http_port 0: the port is read from its log). */
  runArgs: string[];
  /** Ids of the new rows: firstId, firstId + 1, ... (above the table's). */
  firstId: number;
  rate: number;
  /** Writes on the same timetable before the measured ones (the step from no load to the rate is not the steady state); reported apart. */
  warmupSeconds: number;
  seconds: number;
  connections: number;
  /** After the writes, wait at most this long for every row to be rewritten. */
  waitSeconds: number;
  /** Every row's figures as CSV (write commit, latency, who rewrote it), to look at latency over time. */
  rowsFile: string;
  log(msg: string): void;
}

export interface StreamLatency {
  /** The warm-up writes before the measured ones: how many, and their latency (the same measure). */
  warmup: { writes: number; p99: number; max: number };
  offered: number;
  committed: number;
  failed: number;
  /** Committed writes per second, from the first write's commit to the last one's. */
  writesPerSec: number;
  /** Client side: from a write's due time to its INSERT's answer (the writer kept its timetable if small). */
  writeP99Ms: number;
  /** Rows of committed writes that were v2 at the end of the wait, by who rewrote them (commit origin). */
  rewritten: { stream: number; sweep: number; other: number };
  /** Committed writes still v1 after the wait. */
  notRewritten: number;
  /** From the last write's answer until every row was v2, or the bound. */
  waitedMs: number;
  /** Write commit to rewrite commit, ms, over every committed write (a row not rewritten counts as infinitely late). */
  latency: { p50: number; p95: number; p99: number; max: number; mean: number; over100ms: number };
  /** From the start of `pg-rekey run` until /readyz said it streams, and until it had applied the WAL written before that. */
  readyMs: number;
  caughtUpMs: number;
  /** Rows the sweep and the stream rewrote while the writes ran (the daemon's pg_rekey_rewrites_total). */
  duringWrites: { sweep: number; stream: number; seconds: number; visibilityWaitS: number };
  /** The same counters right before the SIGTERM: everything the run rewrote. */
  atStop: { sweep: number; stream: number; visibilityWaitS: number };
  /** The run's exit after SIGTERM: its code and how long the drain took. */
  exit: { code: number | null; ms: number };
}

const INSERT = 'insert into incidents (id, title, status, updated_at) values ($1, $2, $3, now()) returning xmin::text as x';
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Waits for the daemon's "started" log line (its HTTP address), then for /readyz: the stream is connected. */
async function waitUntilStreaming(cli: CliProcess, exited: () => boolean, limitMs = 120_000): Promise<string> {
  const started = Date.now();
  let base: string | undefined;
  for (;;) {
    if (exited()) throw new Error(`pg-rekey run exited before it streamed:\n${cli.stderr().slice(-4000)}`);
    if (Date.now() - started > limitMs) throw new Error(`pg-rekey run did not stream within ${limitMs / 1000} s:\n${cli.stderr().slice(-4000)}`);
    base ??= /"http":"(http:\/\/[^"]+)"[^\n]*"msg":"pg-rekey run started/.exec(cli.stderr())?.[1];
    if (base && (await fetch(`${base}/readyz`).then((r) => r.ok, () => false))) return base;
    await sleep(100);
  }
}

/** The sum of a metric's samples whose line starts with `prefix` (name and labels) in the daemon's /metrics. */
async function metric(base: string, prefix: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith(prefix))
    .reduce((a, l) => a + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

/** The daemon's rewrite counters (pg_rekey_rewrites_total) by source, and the stream's visibility waits (s). */
async function rewriteCounts(base: string): Promise<{ sweep: number; stream: number; visibilityWaitS: number }> {
  return {
    sweep: await metric(base, 'pg_rekey_rewrites_total{source="sweep"'),
    stream: await metric(base, 'pg_rekey_rewrites_total{source="stream"'),
    visibilityWaitS: await metric(base, 'pg_rekey_stream_visibility_wait_seconds_total '),
  };
}

/**
 * Connected is not yet live: the stream starts at the slot's position and first works off what was
 * written since (the foreground's updates of v1 rows before the run started). Waits until it has
 * applied every change up to the WAL position at the time it connected (pg_rekey_stream_applied_lsn).
 */
async function waitUntilCaughtUp(base: string, db: pg.Client, limitMs = 120_000): Promise<void> {
  const target = Number((await db.query<{ l: string }>(`select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint::text as l`)).rows[0]!.l);
  const started = Date.now();
  while ((await metric(base, 'pg_rekey_stream_applied_lsn ')) < target) {
    if (Date.now() - started > limitMs) throw new Error(`pg-rekey run's stream did not catch up within ${limitMs / 1000} s`);
    await sleep(50);
  }
}

/** Offers `values` as INSERTs on the timetable; returns each write's xid (undefined: failed) and its client-side latency. */
async function writeOpenLoop(c: StreamLatencyConfig, values: string[], onSlot: (i: number) => void): Promise<{ xids: (string | undefined)[]; latency: number[]; endedAt: number }> {
  const pool = new pg.Pool({ connectionString: c.url, max: c.connections, application_name: 'bench-stream-writer' });
  pool.on('error', () => undefined);
  try {
    const warm = await Promise.all(Array.from({ length: c.connections }, () => pool.connect()));
    warm.forEach((w) => w.release());
    const xids: (string | undefined)[] = new Array(values.length);
    const latency: number[] = new Array(values.length);
    const inFlight: Promise<void>[] = [];
    const timetable = openLoop(
      c.rate,
      (due, i) => {
        onSlot(i);
        const q = pool.query<{ x: string }>({ name: 'stream_write', text: INSERT, values: [c.firstId + i, values[i], 'open'] });
        inFlight.push(
          q.then(
            (r) => void ((xids[i] = r.rows[0]!.x), (latency[i] = performance.now() - due)),
            () => undefined,
          ),
        );
      },
      values.length,
    );
    await timetable.finished;
    await Promise.all(inFlight);
    return { xids, latency, endedAt: Date.now() };
  } finally {
    await pool.end();
  }
}

/** Polls until no written row is left at v1, or the bound. */
async function waitForRewrites(db: pg.Client, c: StreamLatencyConfig, n: number): Promise<number> {
  const started = Date.now();
  let lastLog = started;
  for (;;) {
    const left = Number(
      (await db.query<{ n: string }>(`select count(*) as n from incidents where id >= $1 and id < $2 and title not like 'v2:%'`, [c.firstId, c.firstId + n])).rows[0]!.n,
    );
    if (left === 0 || Date.now() - started >= c.waitSeconds * 1000) return Date.now() - started;
    if (Date.now() - lastLog >= 5_000) {
      lastLog = Date.now();
      c.log(`stream latency: waiting for ${left} written rows to be rewritten (${((Date.now() - started) / 1000).toFixed(0)} of at most ${c.waitSeconds} s)`);
    }
    await sleep(100);
  }
}

interface RowOutcome {
  id: string;
  /** Write commit, rewrite commit: epoch microseconds. */
  w: string;
  r: string | null;
  origin: string;
  v2: boolean;
}

/** Each committed write's commit time, and the commit time and origin of the row's current version. */
async function outcomes(db: pg.Client, c: StreamLatencyConfig, xids: (string | undefined)[]): Promise<RowOutcome[]> {
  const ids: number[] = [];
  const xs: string[] = [];
  xids.forEach((x, i) => x !== undefined && (ids.push(c.firstId + i), xs.push(x)));
  const r = await db.query<RowOutcome>(
    `select w.id::text as id, (extract(epoch from pg_xact_commit_timestamp(w.x::xid)) * 1e6)::bigint::text as w,
            case when i.xmin::text <> w.x then (extract(epoch from o.timestamp) * 1e6)::bigint::text end as r,
            coalesce(ro.roname, '') as origin, i.title like 'v2:%' as v2
       from unnest($1::bigint[], $2::text[]) as w(id, x)
       join incidents i on i.id = w.id
       left join lateral pg_xact_commit_timestamp_origin(i.xmin) o on true
       left join pg_replication_origin ro on ro.roident = o.roident`,
    [ids, xs],
  );
  return r.rows;
}

function writeRows(file: string, rows: RowOutcome[]): void {
  const t0 = rows.reduce((a, r) => Math.min(a, Number(r.w)), Infinity);
  const lines = rows.map((r) => `${r.id},${((Number(r.w) - t0) / 1000).toFixed(3)},${r.r === null ? '' : ((Number(r.r) - Number(r.w)) / 1000).toFixed(3)},${r.origin},${r.v2}`);
  writeFileSync(file, `id,write_ms,latency_ms,origin,v2\n${lines.join('\n')}\n`);
}

/** Runs the scenario; the caller owns the measured window around it. */
export async function measureStreamLatency(c: StreamLatencyConfig, db: pg.Client): Promise<{ stream: StreamLatency; run: CliRun }> {
  const warm = Math.round(c.rate * c.warmupSeconds);
  const n = warm + Math.round(c.rate * c.seconds);
  const g = new Gen(20261207);
  const values = Array.from({ length: n }, () => encryptValue(titlePlaintext(g), 1, c.ring));
  const cli = startCli(c.runArgs);
  let exited = false;
  void cli.done.then(
    () => (exited = true),
    () => (exited = true),
  );
  try {
    const t0 = Date.now();
    const base = await waitUntilStreaming(cli, () => exited);
    const readyMs = Date.now() - t0;
    await waitUntilCaughtUp(base, db);
    const caughtUpMs = Date.now() - t0;
    c.log(`stream latency: pg-rekey run streams after ${(readyMs / 1000).toFixed(1)} s, caught up after ${(caughtUpMs / 1000).toFixed(1)} s; ${n} v1 INSERTs at ${c.rate}/s over ${c.connections} connections, the first ${warm} a warm-up`);
    // The measured writes start with slot `warm`: the daemon's counters from then on.
    let writeStart = Date.now();
    let before = rewriteCounts(base);
    const { xids, latency, endedAt } = await writeOpenLoop(c, values, (i) => {
      if (i !== warm || warm === 0) return;
      writeStart = Date.now();
      before = rewriteCounts(base);
    });
    const after = await rewriteCounts(base);
    const start = await before;
    const waitedMs = await waitForRewrites(db, c, n);
    const rows = await outcomes(db, c, xids);
    writeRows(c.rowsFile, rows);
    const atStop = await rewriteCounts(base);
    const stopStart = Date.now();
    cli.kill('SIGTERM');
    const run = await cli.done;
    return {
      stream: {
        ...summarize(
          rows.filter((r) => Number(r.id) >= c.firstId + warm),
          n - warm,
          latency.slice(warm).filter((x) => x !== undefined),
        ),
        warmup: warmupOf(rows.filter((r) => Number(r.id) < c.firstId + warm)),
        waitedMs,
        readyMs,
        caughtUpMs,
        duringWrites: {
          sweep: after.sweep - start.sweep,
          stream: after.stream - start.stream,
          seconds: (endedAt - writeStart) / 1000,
          visibilityWaitS: after.visibilityWaitS - start.visibilityWaitS,
        },
        atStop,
        exit: { code: run.code, ms: Date.now() - stopStart },
      },
      run,
    };
  } finally {
    if (!exited) {
      cli.kill('SIGKILL');
      await cli.done.catch(() => undefined);
    }
  }
}

/** Write commit to rewrite commit, ms; Infinity for a row not rewritten. */
const latencyOf = (row: RowOutcome) => (!row.v2 || row.r === null ? Infinity : (Number(row.r) - Number(row.w)) / 1000);

function warmupOf(rows: RowOutcome[]): StreamLatency['warmup'] {
  const sorted = Float64Array.from(rows.map(latencyOf)).sort();
  return { writes: rows.length, p99: quantile(sorted, 0.99), max: sorted.length ? sorted[sorted.length - 1]! : NaN };
}

function summarize(rows: RowOutcome[], offered: number, writeLatency: number[]): Omit<StreamLatency, 'warmup' | 'waitedMs' | 'readyMs' | 'caughtUpMs' | 'duringWrites' | 'atStop' | 'exit'> {
  const lat: number[] = [];
  const rewritten = { stream: 0, sweep: 0, other: 0 };
  let notRewritten = 0;
  for (const row of rows) {
    const l = latencyOf(row);
    lat.push(l);
    if (l === Infinity) {
      notRewritten++;
      continue;
    }
    if (row.origin.endsWith('_stream')) rewritten.stream++;
    else if (row.origin.endsWith('_sweep')) rewritten.sweep++;
    else rewritten.other++;
  }
  const sorted = Float64Array.from(lat).sort();
  const finite = lat.filter(Number.isFinite);
  const commits = rows.map((r) => Number(r.w));
  const spanS = rows.length > 1 ? (commits.reduce((a, b) => Math.max(a, b)) - commits.reduce((a, b) => Math.min(a, b))) / 1e6 : NaN;
  return {
    offered,
    committed: rows.length,
    failed: offered - rows.length,
    writesPerSec: rows.length / spanS,
    writeP99Ms: quantile(Float64Array.from(writeLatency).sort(), 0.99),
    rewritten,
    notRewritten,
    latency: {
      p50: quantile(sorted, 0.5),
      p95: quantile(sorted, 0.95),
      p99: quantile(sorted, 0.99),
      max: sorted.length ? sorted[sorted.length - 1]! : NaN,
      mean: finite.reduce((a, b) => a + b, 0) / finite.length,
      over100ms: lat.filter((x) => x > 100).length,
    },
  };
}
