// Hostile and odd stored values, through the sweep (`pg-rekey backfill`) and the stream
// (`pg-rekey run`), against a real PostgreSQL. Every value is either rewritten to v2 and
// decrypts to the original bytes, or quarantined with its reason and left byte-identical,
// or (not ours, at target, NULL) left byte-identical; `verify --json` reports them all.
import { createHash, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { selectChunkParams, selectChunkSql, versionExpr } from '../../src/backfill/sweep-sql.js';
import { countRelation } from '../../src/verify/count-versions.js';
import { parseVersioned } from '../../src/crypto/envelope.js';
import { KeyRing } from '../../src/crypto/key-ring.js';
import { decryptValue, encryptValue, type FailureReason } from '../../src/crypto/rewrite.js';
import type { VerifyReport } from '../../src/commands/verify.js';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { cli, eventually, startDaemon, writeDaemonFiles, type DaemonFiles, type RunningDaemon } from '../support/daemon.js';
import { KEY_HEX, testRing } from '../support/fixtures.js';

type Expect = { kind: 'rewrite'; pt: Buffer } | { kind: 'quarantine'; reason: FailureReason; version: number } | { kind: 'keep' };
interface Cell {
  label: string;
  value: string | null;
  expect: Expect;
}
interface Row {
  id: number;
  title: Cell;
  raw_xml: Cell;
}
const COLUMNS = ['title', 'raw_xml'] as const;
type Column = (typeof COLUMNS)[number];

let ring: KeyRing;
let wrongRing: KeyRing;
/** 10 MB plaintexts: random bytes (incompressible), and a repeating pattern ending in invalid UTF-8. */
const TEN_MB = 10 * 1024 * 1024;
let bigRandom: Buffer;
let bigPattern: Buffer;

beforeAll(async () => {
  ring = await testRing();
  wrongRing = new KeyRing(2, new Map([[1, Uint8Array.from(Buffer.from(KEY_HEX[9]!, 'hex'))], [2, Uint8Array.from(Buffer.from(KEY_HEX[2]!, 'hex'))]]));
  bigRandom = randomBytes(TEN_MB);
  bigPattern = Buffer.concat([Buffer.alloc(TEN_MB - 3, 'CAD incident narrative, 911 call transcript. '), Buffer.from([0xff, 0xc3, 0x28])]);
});

const keep = (label: string, value: string | null): Cell => ({ label, value, expect: { kind: 'keep' } });
const good = (label: string, pt: Buffer): Cell => ({ label, value: encryptValue(pt, 1, ring), expect: { kind: 'rewrite', pt } });
const bad = (label: string, value: string, reason: FailureReason, version = 1): Cell => ({ label, value, expect: { kind: 'quarantine', reason, version } });
const NULL = keep('NULL', null);

function flipped(value: string, at: number): string {
  const sealed = Buffer.from(value.slice(3), 'base64');
  const i = at < 0 ? sealed.length + at : at;
  sealed[i] = sealed[i]! ^ 0x01;
  return `${value.slice(0, 3)}${sealed.toString('base64')}`;
}

/** A v1 value whose base64 body holds '+' or '/' (so its url-safe spelling differs). */
function withPlusOrSlash(): string {
  for (let i = 0; ; i++) {
    const v = encryptValue(Buffer.from(`needs url-safe ${i}`), 1, ring);
    if (/[+/]/.test(v.slice(3))) return v;
  }
}

/** The hostile set, one cell per column per row; good values come first (the wrong-key guard counts from the start). */
function hostileRows(base: number): Row[] {
  const ok = encryptValue(Buffer.from('a valid call note, 40 bytes or more of it'), 1, ring);
  const body = ok.slice(3);
  const padded = encryptValue(Buffer.from('x'), 1, ring); // 41 sealed bytes: one '=' of padding
  const bigGood = encryptValue(bigRandom, 1, ring);
  const cells: [Cell, Cell][] = [
    [good('ascii', Buffer.from('Structure fire, 12 Main St')), good('empty plaintext', Buffer.alloc(0))],
    [good('invalid UTF-8', Buffer.from([0xff, 0xfe, 0x00, 0xc3, 0x28, 0xa0, 0xa1, 0xed, 0xa0, 0x80, 0xf8, 0x88])), good('every byte value', Buffer.from(Array.from({ length: 256 }, (_, i) => i)))],
    [good('unicode', Buffer.from('Wohnungsbrand \u{1F692} 火事 \u0000 nul')), good('10 MB random', bigRandom)],
    [keep('10 MB not ours', 'x'.repeat(TEN_MB)), good('10 MB pattern, invalid UTF-8 tail', bigPattern)],
    [bad('bad base64', 'v1:@@not-base64@@', 'bad-base64'), NULL],
    [bad('prefix only', 'v1:', 'too-short'), NULL],
    [bad('truncated mid-value', ok.slice(0, 30), 'bad-base64'), NULL],
    [bad('truncated on a base64 boundary', `v1:${body.slice(0, 64)}`, 'mac-failure'), NULL],
    [bad('truncated below nonce+MAC', `v1:${body.slice(0, 48)}`, 'too-short'), NULL],
    [bad('wrong MAC', flipped(ok, 30), 'mac-failure'), good('good beside a bad MAC', Buffer.from('neighbour'))],
    [bad('wrong key', encryptValue(Buffer.from('sealed with another key'), 1, wrongRing), 'mac-failure'), NULL],
    [bad('unknown version v7', `v7:${body}`, 'unknown-version', 7), NULL],
    [bad('unknown version v7, empty', 'v7:', 'unknown-version', 7), NULL],
    [bad('largest version', 'v999999999:abc', 'unknown-version', 999_999_999), NULL],
    [bad('MIME line breaks', `v1:${body.slice(0, 20)}\r\n${body.slice(20)}`, 'bad-base64'), NULL],
    [bad('padding stripped', padded.replace(/=+$/, ''), 'bad-base64'), NULL],
    [bad('url-safe alphabet', (() => { const v = withPlusOrSlash(); return `v1:${v.slice(3).replace(/\+/g, '-').replace(/\//g, '_')}`; })(), 'bad-base64'), NULL],
    [good('good beside a 10 MB corrupt one', Buffer.from('small neighbour')), bad('10 MB, one byte flipped', flipped(bigGood, -1), 'mac-failure')],
    [keep('space before colon', 'v1 :x'), keep('upper case', `V1:${body}`)],
    [keep('inside text', 'see v1:abc'), keep('leading space', ` v1:${body}`)],
    [keep('leading zero', `v01:${body}`), keep('version zero', 'v0:abc')],
    [keep('ten digits', 'v1234567890:abc'), keep('empty string', '')],
    [keep('spaces', '   '), keep('whitespace', '\t\r\n ')],
    [keep('no colon', 'v1'), keep('no version', 'v:')],
    [keep('fullwidth digit', 'v１:abc'), keep('unicode text', 'ünïcödé v1: \u{1F692}')],
    [keep('target, nothing after it', 'v2:'), keep('target, garbage', 'v2:garbage!!')],
    [keep('valid target', encryptValue(Buffer.from('already v2'), 2, ring)), keep('10 MB at target (never decrypted)', `v2:${'A'.repeat(TEN_MB)}`)],
  ];
  return cells.map(([title, raw_xml], i) => ({ id: base + i, title, raw_xml }));
}

const sha256hex = (s: string) => createHash('sha256').update(s).digest('hex');
const quarantineCells = (rows: Row[]) =>
  rows.flatMap((r) => COLUMNS.flatMap((c) => (r[c].expect.kind === 'quarantine' ? [{ row: r, column: c, cell: r[c] }] : [])));

async function createTable(pool: pg.Pool): Promise<void> {
  await pool.query(`create table hostile (id bigint primary key, status text not null default 'open', title text, raw_xml text)`);
}

async function insertRows(db: pg.Pool | pg.PoolClient, rows: Row[]): Promise<void> {
  for (const r of rows) await db.query('insert into hostile (id, title, raw_xml) values ($1, $2, $3)', [r.id, r.title.value, r.raw_xml.value]);
}

/** Every cell as expected; messages name the case, never print a (possibly 13 MB) value. */
async function checkCells(pool: pg.Pool, rows: Row[]): Promise<void> {
  const { rows: got } = await pool.query<{ id: string; title: string | null; raw_xml: string | null }>(
    `select id::text, title, raw_xml from hostile where id = any($1::bigint[])`,
    [rows.map((r) => r.id)],
  );
  const byId = new Map(got.map((g) => [Number(g.id), g]));
  for (const r of rows) {
    for (const c of COLUMNS) {
      const cell = r[c];
      const now = byId.get(r.id)![c];
      const what = `${c} of row ${r.id} (${cell.label})`;
      if (cell.expect.kind === 'rewrite') {
        expect(now !== null && parseVersioned(now)?.version, `${what}: version`).toBe(2);
        const pt = decryptValue(now!, ring);
        expect(pt !== null && Buffer.compare(Buffer.from(pt), cell.expect.pt) === 0, `${what}: decrypts to the original bytes`).toBe(true);
      } else {
        expect(now === cell.value, `${what}: byte-identical`).toBe(true);
      }
    }
  }
}

interface QuarantineRow {
  id: string;
  column_name: string;
  version: number;
  reason: string;
  source: string;
  sha: string;
  seen_count: string;
}
async function readQuarantine(pool: pg.Pool): Promise<QuarantineRow[]> {
  return (
    await pool.query<QuarantineRow>(
      `select row_key->>'id' as id, column_name, version, reason, source, encode(value_sha256, 'hex') as sha, seen_count::text
         from pgrekey.quarantine where table_name = 'public.hostile' order by (row_key->>'id')::bigint, column_name`,
    )
  ).rows;
}

/** The quarantine holds exactly the bad cells, with reason, version, source and the value's fingerprint. */
function expectQuarantine(q: QuarantineRow[], rows: Row[], source: 'sweep' | 'stream'): void {
  const expected = quarantineCells(rows)
    .map(({ row, column, cell }) => {
      const e = cell.expect as { reason: string; version: number };
      return [String(row.id), column, e.version, e.reason, source, sha256hex(cell.value!), cell.label];
    })
    .sort((a, b) => Number(a[0]) - Number(b[0]) || String(a[1]).localeCompare(String(b[1])));
  expect(q.map((r) => [r.id, r.column_name, r.version, r.reason, r.source, r.sha])).toEqual(expected.map((e) => e.slice(0, 6)));
}

/** What verify must count once every cell is as expected. */
function expectedCounts(rows: Row[]) {
  return COLUMNS.map((column) => {
    const out = { column, byVersion: {} as Record<string, number>, notOurs: 0, nulls: 0, nonTarget: 0, quarantined: 0 };
    for (const r of rows) {
      const cell = r[column];
      if (cell.value === null) {
        out.nulls++;
        continue;
      }
      const version = cell.expect.kind === 'rewrite' ? 2 : parseVersioned(cell.value)?.version;
      if (version === undefined) {
        out.notOurs++;
        continue;
      }
      out.byVersion[`v${version}`] = (out.byVersion[`v${version}`] ?? 0) + 1;
      if (version !== 2) out.nonTarget++;
      if (cell.expect.kind === 'quarantine') out.quarantined++;
    }
    return out;
  });
}

async function verifyJson(files: DaemonFiles): Promise<{ code: number | null; report: VerifyReport }> {
  const r = await cli(files, 'verify', '--json');
  return { code: r.code, report: JSON.parse(r.stdout) as VerifyReport };
}

function expectVerify(v: { code: number | null; report: VerifyReport }, rows: Row[]): void {
  const want = expectedCounts(rows);
  const remaining = want.reduce((n, c) => n + c.nonTarget, 0);
  expect(remaining).toBe(quarantineCells(rows).length);
  expect(v.code).toBe(1); // not converged: the quarantined values are still at old versions
  expect(v.report).toMatchObject({ target: 'v2', converged: false, remaining, quarantined: remaining });
  expect(v.report.columns.map((c) => ({ column: c.column, byVersion: c.byVersion, notOurs: c.notOurs, nulls: c.nulls, nonTarget: c.nonTarget, quarantined: c.quarantined }))).toEqual(want);
}

describe('hostile values: the sweep (pg-rekey backfill)', () => {
  let db: TestDatabase;
  let files: DaemonFiles;
  beforeAll(async () => {
    db = await createTestDatabase('hostile_sweep');
    await createTable(db.pool);
    files = writeDaemonFiles(db.url, [{ name: 'hostile', columns: [...COLUMNS] }], { sweep: { nice_ratio: 0, chunk_time: 0, chunk_blocks: 4 } });
    expect((await cli(files, 'setup')).code).toBe(0);
  });
  afterAll(async () => {
    await db?.drop();
  });

  it('the SQL prefix test (what the sweep selects, what verify counts) agrees with the codec on arbitrary strings', async () => {
    const strings = fc.sample(
      fc.oneof(
        fc.string({ unit: 'binary', maxLength: 30 }),
        fc.tuple(fc.constantFrom('v', 'V', ' v', 'v0', 'v1', 'v12345678', 'v123456789', 'v1234567890', 'v9', 'vv1', '\nv1'), fc.constantFrom(':', ' :', '', '::', '：'), fc.string({ maxLength: 12 })).map((p) => p.join('')),
      ),
      { numRuns: 3000, seed: 20240611 },
    );
    // PostgreSQL text holds no NUL; lone surrogates arrive as U+FFFD: compare on what the server stored.
    const { rows } = await db.pool.query<{ v: string; version: number | null }>(
      `select v, ${versionExpr('v')} as version from unnest($1::text[]) as u(v)`,
      [strings.map((s) => s.replace(/\0/g, ''))],
    );
    expect(rows).toHaveLength(strings.length);
    const disagree = rows.filter((r) => (parseVersioned(r.v)?.version ?? null) !== r.version);
    expect(disagree).toEqual([]);
    expect(rows.filter((r) => r.version !== null).length).toBeGreaterThan(100);

    // The chunk select and the recount test `vN:` prefixes before that expression: the same rows, the same counts.
    await db.pool.query(`create table prefix_probe (v text)`);
    await db.pool.query(`insert into prefix_probe select v from unnest($1::text[]) as u(v)`, [rows.map((r) => r.v).concat('v2:x', 'v1:x', 'v3:x', 'v1:', 'v2')]);
    const leaf = { schema: 'public', name: 'prefix_probe' };
    const stored = (await db.pool.query<{ v: string }>(`select v from prefix_probe`)).rows.map((r) => r.v);
    for (const only of [undefined, new Set([3])]) {
      const args = selectChunkParams({ start: 0, end: null }, 2, only, null, [1, 2, 3]);
      const selected = (await db.pool.query<{ v: string }>(selectChunkSql(leaf, ['v'], null, { start: 0, end: null }, args.fast), args.values)).rows.map((r) => r.v);
      const want = stored.filter((v) => {
        const version = parseVersioned(v)?.version;
        return version !== undefined && version !== 2 && (!only || only.has(version));
      });
      expect(selected.sort()).toEqual(want.sort());
    }
    const counted = new Map((await countRelation(db.pool, leaf, ['v'], [2, 1])).map((r) => [r.code, r.n]));
    const expected = new Map<number, number>();
    for (const v of stored) expected.set(parseVersioned(v)?.version ?? 0, (expected.get(parseVersioned(v)?.version ?? 0) ?? 0) + 1);
    expect(counted).toEqual(expected);
  });

  it('rewrites the good values, quarantines the corrupt ones with their reason, leaves everything else byte-identical; verify reports them', async () => {
    const rows = hostileRows(1);
    await insertRows(db.pool, rows);
    const backfill = await cli(files, 'backfill', '--json');
    // Exit 1: old-version values remain (the quarantined ones).
    expect(backfill.code, backfill.stderr).toBe(1);
    const goodCount = rows.reduce((n, r) => n + COLUMNS.filter((c) => r[c].expect.kind === 'rewrite').length, 0);
    const badCount = quarantineCells(rows).length;
    expect(JSON.parse(backfill.stdout)).toMatchObject({ rewritten: goodCount, quarantined: badCount, conflicts: 0 });
    await checkCells(db.pool, rows);
    expectQuarantine(await readQuarantine(db.pool), rows, 'sweep');
    expectVerify(await verifyJson(files), rows);
    // No output line holds a value (or a piece of a base64 body).
    const out = backfill.stdout + backfill.stderr;
    for (const { cell } of quarantineCells(rows)) if (cell.value!.length > 24) expect(out.includes(cell.value!.slice(3, 23)), cell.label).toBe(false);

    // Sweeping again from block 0 (--restart drops the sweep's quarantine entries first): nothing more
    // is written, the quarantined values are found again and are still untouched.
    const again = await cli(files, 'backfill', '--restart', '--json');
    expect(again.code, again.stderr).toBe(1);
    expect(JSON.parse(again.stdout)).toMatchObject({ rewritten: 0, quarantined: badCount });
    await checkCells(db.pool, rows);
    const q = await readQuarantine(db.pool);
    expectQuarantine(q, rows, 'sweep');
    expect(q.map((r) => [r.id, r.column_name, r.seen_count]).filter((r) => r[2] !== '1')).toEqual([]);
  });
});

describe('hostile values: the stream (pg-rekey run)', () => {
  let db: TestDatabase;
  let files: DaemonFiles;
  let daemon: RunningDaemon | null = null;
  beforeAll(async () => {
    db = await createTestDatabase('hostile_stream');
    await createTable(db.pool);
    files = writeDaemonFiles(db.url, [{ name: 'hostile', columns: [...COLUMNS] }]);
    expect((await cli(files, 'setup')).code).toBe(0);
  });
  afterAll(async () => {
    if (daemon) await daemon.proc.stop('SIGKILL');
    await db?.drop();
  });

  it('quarantines corrupt values written while it runs, rewrites the good ones around them, and keeps going', async () => {
    daemon = await startDaemon(files);
    await daemon.proc.waitForLine(/sweep complete for every configured table/);
    const rows = hostileRows(1);
    // Two application transactions: the second carries the 10 MB values.
    const client = await db.pool.connect();
    try {
      for (const part of [rows.slice(0, 12), rows.slice(12)]) {
        await client.query('begin');
        await insertRows(client, part);
        await client.query('commit');
      }
    } finally {
      client.release();
    }
    // An update replacing a good value with a corrupt one (both may land in one batch: the latest wins).
    const broken: Row = { id: 1000, title: bad('broken by the application', 'v1:AAAA', 'too-short'), raw_xml: NULL };
    await db.pool.query('insert into hostile (id, title) values (1000, $1)', [encryptValue(Buffer.from('soon corrupt'), 1, ring)]);
    await db.pool.query(`update hostile set title = 'v1:AAAA' where id = 1000`);
    const all = [...rows, broken];

    const goodCells = all.flatMap((r) => COLUMNS.filter((c) => r[c].expect.kind === 'rewrite').map((c) => [r.id, c] as const));
    const prefixes = async () =>
      new Map(
        (await db.pool.query<{ id: string; t: string | null; x: string | null }>(`select id::text, substr(title, 1, 3) as t, substr(raw_xml, 1, 3) as x from hostile`)).rows.map((r) => [
          Number(r.id),
          { title: r.t, raw_xml: r.x } as Record<Column, string | null>,
        ]),
      );
    const ms = await eventually(
      'good values rewritten, bad ones quarantined by the stream',
      async () => {
        const p = await prefixes();
        if (!goodCells.every(([id, c]) => p.get(id)?.[c] === 'v2:')) return false;
        const q = await readQuarantine(db.pool);
        return q.filter((r) => r.source === 'stream').length >= quarantineCells(all).length;
      },
      20_000,
    );
    expect(ms).toBeLessThan(20_000);
    await checkCells(db.pool, all);
    expectQuarantine(await readQuarantine(db.pool), all, 'stream');

    // An update of another column: the 10 MB corrupt raw_xml arrives as unchanged TOAST, is read back and quarantined again.
    const bigBad = rows.find((r) => r.raw_xml.label === '10 MB, one byte flipped')!;
    await db.pool.query(`update hostile set status = 'touched' where id = $1`, [bigBad.id]);
    await eventually('unchanged TOAST corrupt value seen again', async () => (await readQuarantine(db.pool)).some((r) => r.id === String(bigBad.id) && r.column_name === 'raw_xml' && r.seen_count === '2'));
    await checkCells(db.pool, all);

    // Still healthy: ready, and a later old-key write is rewritten.
    expect((await fetch(`${daemon.httpUrl}/readyz`)).status).toBe(200);
    const late = good('late v1 write', Buffer.from('written by an old app instance'));
    await db.pool.query('insert into hostile (id, title) values (3000, $1)', [late.value]);
    await eventually('late v1 write rewritten', async () => (await prefixes()).get(3000)?.title === 'v2:', 10_000);
    const lateRow: Row = { id: 3000, title: late, raw_xml: NULL };
    await checkCells(db.pool, [lateRow]);

    expectVerify(await verifyJson(files), [...all, lateRow]);

    // The application fixes a quarantined value: the stream rewrites it and its quarantine entry goes
    // (as the sweep's does), so the quarantine describes only values still stored.
    const fixed: Row = { id: 1000, title: good('fixed by the application', Buffer.from('fixed')), raw_xml: NULL };
    await db.pool.query('update hostile set title = $1 where id = 1000', [fixed.title.value]);
    await eventually('fixed value rewritten', async () => (await prefixes()).get(1000)?.title === 'v2:', 10_000);
    const final = [...rows, fixed, lateRow];
    await checkCells(db.pool, final);
    await eventually('quarantine entry of the fixed value dropped', async () => (await readQuarantine(db.pool)).every((r) => r.id !== '1000'), 5_000);
    expectQuarantine(await readQuarantine(db.pool), final, 'stream');
    expectVerify(await verifyJson(files), final);

    // The application overwrites a corrupt value with one already at the target, and deletes another row
    // with a corrupt value: the stream has nothing to rewrite, yet their entries no longer describe a
    // stored value. verify stops counting them at once; run drops them at its next convergence check.
    const overwritten = final.find((r) => r.title.expect.kind === 'quarantine' && r.raw_xml.expect.kind !== 'quarantine')!;
    const deleted = final.find((r) => r !== overwritten && r.raw_xml.expect.kind === 'quarantine')!;
    expect([overwritten, deleted].every(Boolean)).toBe(true);
    const v2Value = encryptValue(Buffer.from('replaced by the application'), 2, ring);
    // One statement, so no convergence check can fall between the two changes.
    const beforeChange = daemon.proc.lines.length;
    await db.pool.query('with u as (update hostile set title = $1 where id = $2) delete from hostile where id = $3', [v2Value, overwritten.id, deleted.id]);
    const after = final.filter((r) => r !== deleted).map((r) => (r === overwritten ? { ...r, title: keep('target value written by the application', v2Value) } : r));
    expectVerify(await verifyJson(files), after);
    // (An earlier check may have pruned the entry of the value fixed above: only a line after the change counts.)
    await daemon.proc.waitForLine(/dropped quarantine entries whose values the application has since overwritten or deleted/, { timeoutMs: 10_000, fromIndex: beforeChange });
    expectQuarantine(await readQuarantine(db.pool), after, 'stream');
    await checkCells(db.pool, after);

    // The stream never broke or reconnected, and nothing it logged holds a value.
    const lines = daemon.proc.lines.map((l) => l.text);
    expect(lines.some((l) => /values could not be rewritten; recorded in pgrekey.quarantine/.test(l))).toBe(true);
    expect(lines.filter((l) => /replication connection failed|reconnecting|sweep failed|cannot continue|"level":(50|60)/.test(l))).toEqual([]);
    for (const { cell } of quarantineCells(all)) if (cell.value!.length > 24) expect(lines.some((l) => l.includes(cell.value!.slice(3, 23))), cell.label).toBe(false);

    const stopped = await daemon.proc.stop('SIGTERM');
    daemon = null;
    expect(stopped.code).toBe(0);
  });
});
