// One huge transaction under `pg-rekey run`: pgoutput (protocol 1) delivers all of it at commit;
// the stream must apply it in bounded batches, in bounded time, with bounded memory.
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { checkLedger, testRing, type Ledger } from '../support/fixtures.js';
import { cli, countPrefix, eventually, startDaemon, writeDaemonFiles, type DaemonFiles, type RunningDaemon } from '../support/daemon.js';
import { sampleRss } from '../support/workload.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';

const ROWS = 200_000;
const STATEMENT_ROWS = 50_000;
/** Generous on purpose: the point is "bounded", not a tight budget. */
const RSS_HEADROOM_MB = 250;

let db: TestDatabase;
let files: DaemonFiles;
let ring: KeyRing;
let daemon: RunningDaemon | null = null;

beforeAll(async () => {
  db = await createTestDatabase('stream_memory');
  ring = await testRing();
  await db.pool.query(`create table bulk (id bigint primary key, title text, note text)`);
  files = writeDaemonFiles(db.url, [{ name: 'bulk', columns: ['title'] }]);
  const setup = await cli(files, 'setup');
  expect(setup.code, setup.stderr).toBe(0);
});

afterAll(async () => {
  if (daemon) await daemon.proc.stop('SIGKILL');
  await db.drop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('a huge transaction', () => {
  it(`${ROWS} v1 inserts in one transaction: all rewritten to v2 in bounded time, daemon RSS bounded`, async () => {
    daemon = await startDaemon(files);
    await daemon.proc.waitForLine(/"msg":"sweep complete/, { timeoutMs: 30_000 });
    const pid = daemon.proc.child.pid!;
    const rss = sampleRss(pid, 100);
    await sleep(1_500); // idle, streaming, sweep done
    const baselineKb = rss.peakKb;

    const ledger: Ledger = new Map();
    const client = await db.pool.connect();
    const t0 = Date.now();
    try {
      await client.query('begin');
      for (let start = 1; start <= ROWS; start += STATEMENT_ROWS) {
        const ids: number[] = [];
        const titles: string[] = [];
        for (let id = start; id < start + STATEMENT_ROWS; id++) {
          const pt = Buffer.from(`Incident ${id}: structure fire reported at ${id % 9973} Main St, units dispatched, caller notes follow`);
          ids.push(id);
          titles.push(encryptValue(pt, 1, ring));
          ledger.set(id, pt);
        }
        await client.query(`insert into bulk (id, title, note) select id, title, 'n' from unnest($1::bigint[], $2::text[]) as u(id, title)`, [ids, titles]);
      }
      await client.query('commit');
    } finally {
      client.release();
    }
    const committedMs = Date.now() - t0;
    const rewriteMs = await eventually(`all ${ROWS} rows rewritten`, async () => (await countPrefix(db.pool, 'bulk', 'title', 'v1:')) === 0, 150_000);
    const { peakKb, samples } = rss.stop();
    const peakMb = Math.round(peakKb / 1024);
    const baselineMb = Math.round(baselineKb / 1024);
    console.log(
      `[stream-memory] PG ${inject('pgMajor')}: ${ROWS} rows in one transaction (committed in ${committedMs} ms) rewritten ${rewriteMs} ms after commit; ` +
        `daemon RSS baseline ${baselineMb} MB, peak ${peakMb} MB (+${peakMb - baselineMb} MB, ${samples} samples every 100 ms)`,
    );

    expect(await countPrefix(db.pool, 'bulk', 'title', 'v2:')).toBe(ROWS);
    const check = await checkLedger(db.pool, 'bulk', 'title', ledger, ring);
    expect(check.mismatched).toEqual([]);
    expect(check.missing).toEqual([]);
    expect(check.checked).toBe(ROWS);
    expect(samples).toBeGreaterThan(10);
    expect(peakKb).toBeLessThan(baselineKb + RSS_HEADROOM_MB * 1024);
    expect(rewriteMs).toBeLessThan(120_000);
    // The daemon is still alive and streaming afterwards.
    expect(daemon.proc.child.exitCode).toBeNull();
    expect((await fetch(`${daemon.httpUrl}/readyz`)).status).toBe(200);
  });
});
