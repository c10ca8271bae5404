import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentProgress, type ProgressSink } from '../../src/backfill/progress.js';
import { casUpdateSql, selectChunkParams, selectChunkSql } from '../../src/backfill/sweep-sql.js';
import { sweepTables, type SweepOptions } from '../../src/backfill/sweep.js';
import type { SweepSettings, TableConfig } from '../../src/config/load-config.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import type { TableInfo } from '../../src/db/catalog.js';
import { countVersions } from '../../src/verify/count-versions.js';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import {
  checkLedger, createIncidentsTable, fillIncidents, incidentsConfig, KEY_HEX, prepareSweep, readColumn, silentLog, sweepSettings, tableChecksum, testRing,
} from '../support/fixtures.js';

let db: TestDatabase;
let ring: KeyRing;

beforeAll(async () => {
  db = await createTestDatabase('sweep');
  ring = await testRing();
});
afterAll(async () => {
  await db?.drop();
});

const sweep = (tables: TableInfo[], settings: Partial<SweepSettings> = {}, o: Partial<SweepOptions> = {}) =>
  sweepTables(db.pool, tables, { settings: sweepSettings(settings), ring, progress: silentProgress, log: silentLog, ...o });

async function newTable(name: string, rows: number, extra: Parameters<typeof fillIncidents>[3] = { rows }) {
  await createIncidentsTable(db.pool, name);
  const filled = await fillIncidents(db.pool, name, ring, { ...extra, rows });
  const tables = await prepareSweep(db.pool, [incidentsConfig(name)]);
  return { filled, tables };
}

const segment = async (relation: string) =>
  (
    await db.pool.query<{ next_block: string; state: string; generation: number; chunks: string; rows_rewritten: string }>(
      'select next_block, state, generation, chunks, rows_rewritten from pgrekey.sweep_segment where relation = $1',
      [relation],
    )
  ).rows[0];

describe('sweep', () => {
  it('rewrites every v1 value of a 100k-row table, TOASTed ones included, and nothing else', async () => {
    const { filled, tables } = await newTable('incidents', 100_000, { rows: 100_000, xmlEvery: 40 });
    // The raw_xml values really live out of line in the TOAST table.
    const toast = await db.pool.query<{ outside: string; toast_bytes: string }>(
      `select (select count(*) from incidents where pg_column_size(raw_xml) > 2100) as outside,
              pg_relation_size((select reltoastrelid from pg_class where oid = 'incidents'::regclass)) as toast_bytes`,
    );
    expect(Number(toast.rows[0]!.outside)).toBe(2500);
    expect(Number(toast.rows[0]!.toast_bytes)).toBeGreaterThan(10_000_000);
    const before = { title: await readColumn(db.pool, 'incidents', 'title'), raw_xml: await readColumn(db.pool, 'incidents', 'raw_xml') };

    const results = await sweep(tables);
    const c = filled.counts;
    expect(c.title.v1).toBeGreaterThan(35_000);
    expect(results).toHaveLength(1);
    expect(results[0]).toMatchObject({ relation: 'public.incidents', rewritten: c.title.v1 + c.raw_xml.v1, conflicts: 0, quarantined: 0, alreadyDone: false });

    for (const column of ['title', 'raw_xml'] as const) {
      const check = await checkLedger(db.pool, 'incidents', column, filled.ledger[column], ring);
      expect(check.mismatched).toEqual([]);
      expect(check.missing).toEqual([]);
      expect(check.checked).toBe(filled.ledger[column].size);
      expect(check.byVersion).toEqual({ v2: c[column].v1 + c[column].v2 });
      // v2, NULL and not-ours values are byte-identical to what was inserted.
      const after = await readColumn(db.pool, 'incidents', column);
      let untouched = 0;
      for (const [id, old] of before[column]) {
        if (old === null || !old.startsWith('v1:')) {
          expect(after.get(id), `${column} ${id}`).toBe(old);
          untouched++;
        } else expect(after.get(id)).not.toBe(old);
      }
      expect(untouched).toBe(100_000 - c[column].v1);
    }

    const counts = await countVersions(db.pool, tables, 2, true);
    expect(counts.map((x) => [x.column, x.nonTarget, x.byVersion, x.nulls, x.notOurs, x.quarantined])).toEqual([
      ['title', 0, { v2: c.title.v1 + c.title.v2 }, c.title.null, c.title.notOurs, 0],
      ['raw_xml', 0, { v2: c.raw_xml.v1 + c.raw_xml.v2 }, c.raw_xml.null, 0, 0],
    ]);
    expect(await segment('public.incidents')).toMatchObject({ state: 'done', rows_rewritten: String(c.title.v1 + c.raw_xml.v1) });
  });

  it('plans TID (range) scans, never a Seq Scan, for the chunk select and the CAS update', async () => {
    const [table] = await prepareSweep(db.pool, [incidentsConfig('incidents')]);
    const leaf = table!.leaves[0]!;
    const explain = async (sql: string, values: unknown[]) =>
      (await db.pool.query<{ 'QUERY PLAN': string }>(`explain ${sql}`, values)).rows.map((r) => r['QUERY PLAN']).join('\n');
    const cols = table!.config.columns;
    const blocks = Number((await db.pool.query(`select pg_relation_size('incidents') / 8192 as b`)).rows[0].b);
    expect(blocks).toBeGreaterThan(2000);
    const select = (keys: string[] | null, range: { start: number; end: number | null }, only?: Set<number>) => {
      const args = selectChunkParams(range, 2, only, keys, [1, 2, 3]);
      return explain(selectChunkSql(leaf, cols, keys, range, args.fast), args.values);
    };
    const closed = await select(['id'], { start: 10, end: 20 });
    const keyless = await select(null, { start: 10, end: 20 });
    // The last, open-ended chunk starts near the end (the planner prices ctid bounds against the relation's size).
    const open = await select(['id'], { start: blocks - 5, end: null }, new Set([1]));
    for (const plan of [closed, keyless, open]) {
      expect(plan).toContain('Tid Range Scan on incidents');
      expect(plan).not.toContain('Seq Scan');
    }
    // CAS batches: a small chunk, a full default chunk of 256 blocks (thousands of tids), the open-ended last chunk.
    const ranges: [number, number | null, number][] = [[40, 42, 50], [100, 356, 5000], [blocks - 3, null, 1]];
    for (const [start, end, atLeast] of ranges) {
      const rows = (
        await db.pool.query<{ ctid: string; title: string }>(
          `select ctid::text, title from incidents where ctid >= format('(%s,0)', $1::bigint)::tid and ctid < format('(%s,0)', $2::bigint)::tid and title is not null`,
          [start, end ?? blocks + 1],
        )
      ).rows;
      expect(rows.length).toBeGreaterThanOrEqual(atLeast);
      const nulls = rows.map(() => null);
      const values = [rows.map((r) => r.ctid), rows.map((r) => r.title), rows.map(() => 'v2:x'), nulls, nulls, start, ...(end === null ? [] : [end])];
      const cas = await explain(casUpdateSql(leaf, cols, { start, end }), values);
      if (process.env.SHOW_PLANS) console.log(cas.slice(0, 2000));
      expect(cas).toMatch(/Tid (Range )?Scan on incidents/);
      expect(cas).not.toMatch(/Seq Scan/);
    }
  });

  it('dry run changes nothing and reports what it would rewrite', async () => {
    const { filled, tables } = await newTable('dry', 5000, { rows: 5000, xmlEvery: 100, seed: 7 });
    await db.pool.query(`update dry set title = 'v1:AAAA' where id = 3`);
    const sum = await tableChecksum(db.pool, 'dry');
    const results = await sweep(tables, { chunkBlocks: 16 }, { dryRun: true });
    expect(await tableChecksum(db.pool, 'dry')).toBe(sum);
    const wouldRewrite = filled.counts.title.v1 + filled.counts.raw_xml.v1 - (filled.stored.title.get(3)!.startsWith('v1:') ? 1 : 0);
    expect(results[0]).toMatchObject({ rewritten: wouldRewrite, quarantined: 1, conflicts: 0 });
    expect(results[0]!.chunks).toBeGreaterThan(3);
    const state = await db.pool.query(`select (select count(*)::int from pgrekey.quarantine where table_name = 'public.dry') as q, (select count(*)::int from pgrekey.sweep_segment where table_name = 'public.dry' and state <> 'pending') as s`);
    expect(state.rows[0]).toEqual({ q: 0, s: 0 });
  });

  it('quarantines corrupt values with their reason, leaves them untouched and goes on', async () => {
    const { filled, tables } = await newTable('corrupt', 3000, { rows: 3000, seed: 11, mix: { v1: 0.7, v2: 0.2, null: 0.05, notOurs: 0.05 } });
    const good = encryptValue(Buffer.from('valid'), 1, ring);
    const flipped = Buffer.from(good.slice(3), 'base64');
    flipped[40] = flipped[40]! ^ 0x80; // first ciphertext byte, covered by the MAC
    const corrupt = new Map<number, [string, string, number]>([
      [700, ['v1:@@not-base64@@', 'bad-base64', 1]],
      [1100, ['v1:', 'too-short', 1]],
      [1500, [good.slice(0, 26), 'bad-base64', 1]], // truncated mid-value
      [1900, [`v1:${flipped.toString('base64')}`, 'mac-failure', 1]],
      [2300, [`v7:${good.slice(3)}`, 'unknown-version', 7]],
    ]);
    for (const [id, [value]] of corrupt) {
      await db.pool.query('update corrupt set title = $1 where id = $2', [value, id]);
      filled.ledger.title.delete(id);
    }
    const results = await sweep(tables, { chunkBlocks: 4 });
    expect(results[0]!.quarantined).toBe(corrupt.size);
    const q = await db.pool.query<{ id: string; reason: string; version: number; column_name: string; source: string; row: string }>(
      `select row_key->>'id' as id, reason, version, column_name, source, q::text as row from pgrekey.quarantine q where table_name = 'public.corrupt' order by (row_key->>'id')::int`,
    );
    expect(q.rows.map((r) => [Number(r.id), r.reason, r.version, r.column_name, r.source])).toEqual(
      [...corrupt].map(([id, [, reason, version]]) => [id, reason, version, 'title', 'sweep']),
    );
    const after = await readColumn(db.pool, 'corrupt', 'title');
    for (const [id, [value]] of corrupt) {
      expect(after.get(id)).toBe(value);
      // No quarantine row holds the value (or its base64 body) in any column.
      for (const r of q.rows) {
        expect(r.row).not.toContain(value);
        if (value.length > 12) expect(r.row).not.toContain(value.slice(3, 20));
      }
    }
    const check = await checkLedger(db.pool, 'corrupt', 'title', filled.ledger.title, ring);
    expect(check.mismatched).toEqual([]);
    expect(check.byVersion).toEqual({ v1: 4, v2: filled.ledger.title.size, v7: 1 });
    const counts = await countVersions(db.pool, tables, 2, true);
    expect(counts[0]).toMatchObject({ nonTarget: 5, quarantined: 5 });
  });

  it('stops with "wrong key for v1" before quarantining more than threshold - 1 values', async () => {
    // Sparse v1 values, so the guard has to add failures up over several chunks.
    const { filled, tables } = await newTable('wrongkey', 3000, { rows: 3000, seed: 5, mix: { v1: 0.04, v2: 0.9, null: 0.03, notOurs: 0.03 } });
    const sum = await tableChecksum(db.pool, 'wrongkey');
    const wrong = await testRing(2, [1, 2], { 1: KEY_HEX[9]! });
    let chunks = 0;
    const run = sweepTables(db.pool, tables, {
      settings: sweepSettings({ chunkBlocks: 1, wrongKeyThreshold: 8 }),
      ring: wrong,
      progress: silentProgress,
      log: silentLog,
      beforeChunk: async () => void chunks++,
    });
    await expect(run).rejects.toThrow(/^wrong key for v1\? the first (8|9|1\d) v1 values read \(in public\.wrongkey\) all failed/);
    expect(chunks).toBeGreaterThan(2);
    const quarantined = async () =>
      (await db.pool.query<{ n: number }>(`select count(*)::int as n from pgrekey.quarantine where table_name = 'public.wrongkey'`)).rows[0]!.n;
    const q = await quarantined();
    expect(q).toBeGreaterThan(0);
    expect(q).toBeLessThanOrEqual(7);
    expect(await tableChecksum(db.pool, 'wrongkey')).toBe(sum);
    // The checkpoint went back to the first chunk with a failed v1 value, so fixing the key and
    // running again reaches the values quarantined before the stop.
    const firstV1 = Number((await db.pool.query(`select min(ctid)::text as c from wrongkey where title like 'v1:%'`)).rows[0].c.match(/^\((\d+),/)[1]);
    expect(await segment('public.wrongkey')).toMatchObject({ next_block: String(firstV1), state: 'running' });
    const rerun = await sweep(tables, { chunkBlocks: 16 });
    expect(rerun[0]!.rewritten).toBe(filled.counts.title.v1);
    expect(await quarantined()).toBe(0);
    expect((await checkLedger(db.pool, 'wrongkey', 'title', filled.ledger.title, ring)).byVersion).toEqual({ v2: filled.ledger.title.size });
  });

  it('resumes an interrupted sweep from its checkpoint; restart starts over in a new generation', async () => {
    const { filled, tables } = await newTable('resume', 20_000, { rows: 20_000, seed: 3 });
    const blocks = Number((await db.pool.query(`select pg_relation_size('resume') / 8192 as b`)).rows[0].b);
    expect(blocks).toBeGreaterThan(200);
    const abort = new AbortController();
    let calls = 0;
    const first = await sweep(tables, { chunkBlocks: 8 }, {
      signal: abort.signal,
      beforeChunk: async () => {
        if (++calls === 6) abort.abort();
      },
    });
    expect(first[0]!.chunks).toBe(5);
    expect(await segment('public.resume')).toMatchObject({ next_block: '40', state: 'running', generation: 1, chunks: '5' });

    const starts: number[] = [];
    const recorder: ProgressSink = { ...silentProgress, start: (_rel, block) => void starts.push(block) };
    const second = await sweep(tables, { chunkBlocks: 8 }, { progress: recorder });
    expect(starts).toEqual([40]);
    // The sweep's own updates add blocks at the end, which it reads too.
    expect(second[0]!.chunks).toBeGreaterThanOrEqual(Math.ceil((blocks - 40) / 8));
    expect(first[0]!.rewritten + second[0]!.rewritten).toBe(filled.counts.title.v1);
    const seg = await segment('public.resume');
    expect(seg).toMatchObject({ state: 'done', generation: 1, rows_rewritten: String(filled.counts.title.v1) });
    expect((await checkLedger(db.pool, 'resume', 'title', filled.ledger.title, ring)).byVersion).toEqual({ v2: filled.ledger.title.size });

    const again = await sweep(tables, { chunkBlocks: 8 }, { progress: recorder });
    expect(again[0]).toMatchObject({ alreadyDone: true, chunks: 0 });
    const restarted = await sweep(tables, { chunkBlocks: 64 }, { progress: recorder, restart: true });
    expect(starts).toEqual([40, 0]);
    expect(restarted[0]).toMatchObject({ rewritten: 0, alreadyDone: false });
    const grown = Number((await db.pool.query(`select pg_relation_size('resume') / 8192 as b`)).rows[0].b);
    expect(restarted[0]!.chunks).toBe(Math.ceil(grown / 64));
    expect(await segment('public.resume')).toMatchObject({ state: 'done', generation: 2, rows_rewritten: '0', next_block: String(grown) });
  });

  it('a table rewritten (VACUUM FULL) between an interrupted sweep and its resumption is swept again from block 0', async () => {
    const { filled, tables } = await newTable('moved', 20_000, { rows: 20_000, seed: 4 });
    const abort = new AbortController();
    let calls = 0;
    const first = await sweep(tables, { chunkBlocks: 16 }, {
      signal: abort.signal,
      beforeChunk: async () => {
        if (++calls === 11) abort.abort();
      },
    });
    expect(first[0]?.chunks).toBe(10);
    const checkpoint = Number((await segment('public.moved'))!.next_block);
    expect(checkpoint).toBe(160);
    // Rows the sweep has not reached (v1 still) are compacted down, behind its checkpoint.
    await db.pool.query(`delete from moved where ctid < format('(%s,0)', $1::bigint)::tid`, [checkpoint]);
    await db.pool.query('vacuum full moved');
    const v1Behind = Number(
      (await db.pool.query(`select count(*) from moved where ctid < format('(%s,0)', $1::bigint)::tid and title like 'v1:%'`, [checkpoint])).rows[0].count,
    );
    expect(v1Behind).toBeGreaterThan(1000);

    const starts: number[] = [];
    const lines: string[] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => void lines.push(line) });
    const recorder: ProgressSink = { ...silentProgress, start: (_rel, block) => void starts.push(block) };
    await sweep(tables, { chunkBlocks: 16 }, { progress: recorder, log });
    expect(starts).toEqual([0]);
    expect(lines.filter((l) => /rewritten since the sweep passed its checkpoint/.test(l)).length).toBe(1);
    const ids = new Set((await db.pool.query<{ id: string }>('select id::text from moved')).rows.map((r) => Number(r.id)));
    const check = await checkLedger(db.pool, 'moved', 'title', new Map([...filled.ledger.title].filter(([id]) => ids.has(id))), ring);
    expect({ mismatched: check.mismatched, missing: check.missing }).toEqual({ mismatched: [], missing: [] });
    expect(Object.keys(check.byVersion)).toEqual(['v2']);
    expect(await segment('public.moved')).toMatchObject({ state: 'done' });
  });

  it('a table rewritten (VACUUM FULL) while the sweep runs is swept again from block 0', async () => {
    const { filled, tables } = await newTable('moving', 20_000, { rows: 20_000, seed: 5 });
    let calls = 0;
    const lines: string[] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => void lines.push(line) });
    await sweep(tables, { chunkBlocks: 16 }, {
      log,
      beforeChunk: async () => {
        if (++calls !== 6) return;
        // Five chunks done: delete the rows behind the sweep and compact the table, moving not-yet-swept v1 rows behind it.
        await db.pool.query(`delete from moving where ctid < '(80,0)'::tid`);
        await db.pool.query('vacuum full moving');
      },
    });
    expect(lines.filter((l) => /rewritten since the sweep passed its checkpoint/.test(l)).length).toBe(1);
    const ids = new Set((await db.pool.query<{ id: string }>('select id::text from moving')).rows.map((r) => Number(r.id)));
    const check = await checkLedger(db.pool, 'moving', 'title', new Map([...filled.ledger.title].filter(([id]) => ids.has(id))), ring);
    expect({ mismatched: check.mismatched, missing: check.missing }).toEqual({ mismatched: [], missing: [] });
    expect(Object.keys(check.byVersion)).toEqual(['v2']);
  });

  it('sweeps every leaf partition of a partitioned table', async () => {
    await db.pool.query(`create table calls (id bigint, region int, title text, raw_xml text, primary key (region, id)) partition by list (region)`);
    await db.pool.query(`create table calls_a partition of calls for values in (1)`);
    await db.pool.query(`create table calls_b partition of calls for values in (2, 3) partition by list (region)`);
    await db.pool.query(`create table calls_b3 partition of calls_b for values in (3)`);
    await db.pool.query(`create table calls_b2 partition of calls_b for values in (2)`);
    const values = Array.from({ length: 300 }, (_, i) => encryptValue(Buffer.from(`call ${i}`), (i % 3) + 1 === 2 ? 2 : 1, ring));
    await db.pool.query(`insert into calls (id, region, title) select i, i % 3 + 1, v from unnest($1::text[]) with ordinality u(v, i)`, [values]);
    const [table] = await prepareSweep(db.pool, [{ schema: 'public', name: 'calls', columns: ['title'] }]);
    expect(table!.leaves.map((l) => l.name)).toEqual(['calls_a', 'calls_b2', 'calls_b3']);
    const results = await sweep([table!]);
    expect(results.map((r) => [r.table, r.relation, r.rewritten])).toEqual([
      ['public.calls', 'public.calls_a', 100],
      ['public.calls', 'public.calls_b2', 100],
      ['public.calls', 'public.calls_b3', 0], // every v2 value landed in region 3
    ]);
    const counts = await countVersions(db.pool, [table!], 2, true);
    expect(counts[0]).toMatchObject({ byVersion: { v2: 300 }, nonTarget: 0 });
  });

  it('sweeps a table and column with hostile names', async () => {
    const t: TableConfig = { schema: 'public', name: 'a"b; drop table x', columns: ['c"1; x'] };
    await db.pool.query(`create table "a""b; drop table x" (id int primary key, "c""1; x" text)`);
    const values = [1, 2, 3].map((i) => encryptValue(Buffer.from(`p${i}`), 1, ring));
    await db.pool.query(`insert into "a""b; drop table x" select i, v from unnest($1::text[]) with ordinality u(v, i)`, [values]);
    const results = await sweep(await prepareSweep(db.pool, [t]));
    expect(results[0]).toMatchObject({ relation: 'public."a""b; drop table x"', rewritten: 3 });
    const left = await db.pool.query(`select count(*)::int as n from "a""b; drop table x" where "c""1; x" like 'v2:%'`);
    expect(left.rows[0].n).toBe(3);
  });
});
