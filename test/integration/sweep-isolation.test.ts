// Failure isolation in the sweep and a one-shot backfill that converges by itself, against a
// real PostgreSQL, through the CLI (`pg-rekey backfill`):
// - rows whose rewrite raises (a BEFORE UPDATE trigger, a CHECK constraint on a row predicate, a
//   domain constraint, a deferred constraint trigger) or does not stick (a trigger that keeps
//   OLD.c) are quarantined with their SQLSTATE / reason, every other row of the table and of a
//   second table is rewritten, and backfill terminates (exit 1: old values remain, quarantined);
// - a v1 value moved behind the sweep's checkpoint mid-pass (an application UPDATE of another
//   column, made while the sweep's CAS waits for that row's lock) is found by backfill's recount
//   and rewritten by another pass, without --restart; a plain backfill after a completed one
//   re-checks instead of only saying "already done".
import { createHash } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseVersioned } from '../../src/crypto/envelope.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { decryptValue, encryptValue } from '../../src/crypto/rewrite.js';
import { spawnCli, type CliResult } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { cli, eventually, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { checkLedger, createIncidentsTable, fillIncidents, insertBatched, tableChecksum, testRing } from '../support/fixtures.js';

let ring: KeyRing;
const dbs: TestDatabase[] = [];

beforeAll(async () => {
  ring = await testRing();
});
afterAll(async () => {
  for (const db of dbs) await db.drop();
});

async function newDb(prefix: string): Promise<TestDatabase> {
  const db = await createTestDatabase(prefix);
  dbs.push(db);
  return db;
}

const sha256hex = (s: string) => createHash('sha256').update(s).digest('hex');
type LogLine = { level: number; msg: string; [k: string]: unknown };
const logLines = (r: CliResult, match: RegExp): LogLine[] =>
  r.stderr
    .split('\n')
    .filter((l) => l.startsWith('{') && match.test(l))
    .map((l) => JSON.parse(l) as LogLine);

interface QuarantineRow {
  id: string;
  column_name: string;
  version: number;
  reason: string;
  source: string;
  sha: string;
  seen_count: string;
}
async function readQuarantine(pool: pg.Pool, table: string): Promise<QuarantineRow[]> {
  return (
    await pool.query<QuarantineRow>(
      `select row_key->>'id' as id, column_name, version, reason, source, encode(value_sha256, 'hex') as sha, seen_count::text
         from pgrekey.quarantine where table_name = $1 order by (row_key->>'id')::bigint, column_name`,
      [table],
    )
  ).rows;
}

describe('sweep failure isolation: rows whose rewrite raises or does not stick', () => {
  // guarded: every row has a v1 title; rows with id % 3 = 0 (and 300, 301) a v1 note too.
  const IDS = Array.from({ length: 320 }, (_, i) => i + 1);
  const hasNote = (id: number) => id % 3 === 0 || id === 300 || id === 301;
  /** Expected entries: id -> reason (for every column the row's rewrite would have written). */
  const RAISE = [7, 57, 107, 157, 207, 257, 307]; // BEFORE UPDATE trigger raises (P0001)
  const CHECK = [100, 101, 102]; // CHECK constraint on a row predicate (23514)
  const KEEP = [200, 201]; // BEFORE UPDATE trigger keeps OLD values: the rewrite does not stick
  const LATE = [250]; // deferred constraint trigger raises at commit (P0001)
  const DOMAIN = [300, 301]; // the note's domain constraint rejects the (long) rewritten value (23514)
  const expectedReason = (id: number): string | null =>
    RAISE.includes(id) || LATE.includes(id)
      ? 'update-raised:P0001'
      : CHECK.includes(id)
        ? 'update-raised:23514:guarded_legacy_v1'
        : KEEP.includes(id)
          ? 'did-not-stick'
          : DOMAIN.includes(id)
            ? 'update-raised:23514:note_fits'
            : null;

  let db: TestDatabase;
  let files: DaemonFiles;
  const stored = new Map<string, string>(); // `${id}:${column}` -> value as inserted
  const plain = new Map<string, Buffer>(); // `${id}:${column}` -> plaintext

  beforeAll(async () => {
    db = await newDb('sweep_isolation');
    await db.pool.query(`
      create domain short_note as text constraint note_fits check (value is null or not starts_with(value, 'v2:') or length(value) < 120);
      create table guarded (
        id bigint primary key, title text, note short_note, status text not null default 'open',
        constraint guarded_legacy_v1 check (id not between 100 and 102 or title is null or starts_with(title, 'v1:')));
      create function guarded_freeze() returns trigger language plpgsql as $$
        begin
          if old.id % 50 = 7 then raise exception 'row % is frozen: secret %', old.id, old.title; end if;
          return new;
        end $$;
      create trigger a_freeze before update on guarded for each row execute function guarded_freeze();
      create function guarded_keep() returns trigger language plpgsql as $$
        begin
          if old.id in (200, 201) then new.title := old.title; new.note := old.note; end if;
          return new;
        end $$;
      create trigger b_keep before update on guarded for each row execute function guarded_keep();
      create function guarded_late() returns trigger language plpgsql as $$
        begin raise exception 'late check failed for secret %', new.title; end $$;
      create constraint trigger c_late after update on guarded deferrable initially deferred
        for each row when (new.id = 250) execute function guarded_late();`);
    const rows: unknown[][] = [];
    for (const id of IDS) {
      const t = Buffer.from(`guarded title ${id}`);
      const n = DOMAIN.includes(id) ? Buffer.from(`a long note ${id} `.repeat(8)) : Buffer.from(`note ${id}`);
      const title = encryptValue(t, 1, ring);
      const note = hasNote(id) ? encryptValue(n, 1, ring) : null;
      stored.set(`${id}:title`, title);
      plain.set(`${id}:title`, t);
      if (note) {
        stored.set(`${id}:note`, note);
        plain.set(`${id}:note`, n);
      }
      rows.push([id, title, note]);
    }
    await insertBatched(db.pool, 'guarded', ['id', 'title', 'note'], ['bigint', 'text', 'text'], rows);
    await createIncidentsTable(db.pool, 'plain');
    files = writeDaemonFiles(
      db.url,
      [
        // Its triggers are the point: rewrites fire them (issue 9: a decision of the config).
        { name: 'guarded', columns: ['title', 'note'], triggers: 'fire' },
        { name: 'plain', columns: ['title', 'raw_xml'] },
      ],
      { sweep: { chunk_time: 0, chunk_blocks: 1, nice_ratio: 0 } },
    );
    expect((await cli(files, 'setup')).code).toBe(0);
  });

  it('quarantines exactly the failing rows with SQLSTATE and reason, rewrites every other row of both tables, and terminates', async () => {
    const filled = await fillIncidents(db.pool, 'plain', ring, { rows: 2000, xmlEvery: 20, seed: 11 });
    const bad = IDS.filter((id) => expectedReason(id) !== null);
    const expectedEntries = bad
      .flatMap((id) => (['note', 'title'] as const).filter((c) => stored.has(`${id}:${c}`)).map((c) => [String(id), c, 1, expectedReason(id)!, 'sweep', sha256hex(stored.get(`${id}:${c}`)!), '1']))
      .sort((a, b) => Number(a[0]) - Number(b[0]) || String(a[1]).localeCompare(String(b[1])));
    const goodValues = [...stored.keys()].filter((k) => expectedReason(Number(k.split(':')[0])) === null).length;

    const t0 = Date.now();
    const r = await cli(files, 'backfill', '--json');
    const tookMs = Date.now() - t0;
    // Old-version values remain (quarantined): not converged, exit 1; not a runtime failure (3).
    expect(r.code, r.stderr.slice(-3000)).toBe(1);
    const report = JSON.parse(r.stdout);
    expect(report).toMatchObject({
      converged: false,
      passes: 1,
      rewritten: goodValues + filled.counts.title.v1 + filled.counts.raw_xml.v1,
      quarantined: expectedEntries.length,
      remaining: expectedEntries.length,
      remainingQuarantined: expectedEntries.length,
    });
    expect(tookMs).toBeLessThan(60_000);

    // Every other value of guarded rewritten, decrypting to its plaintext; the failing ones byte-identical.
    const now = await db.pool.query<{ id: string; title: string | null; note: string | null }>(`select id::text, title, note from guarded`);
    for (const row of now.rows) {
      for (const c of ['title', 'note'] as const) {
        const k = `${row.id}:${c}`;
        if (!stored.has(k)) {
          expect(row[c], k).toBeNull();
          continue;
        }
        if (expectedReason(Number(row.id)) !== null) expect(row[c] === stored.get(k), `${k} untouched`).toBe(true);
        else {
          expect(parseVersioned(row[c]!)?.version, k).toBe(2);
          expect(Buffer.from(decryptValue(row[c]!, ring)!).equals(plain.get(k)!), `${k} decrypts`).toBe(true);
        }
      }
    }
    // The second table, swept after the failures of the first: every value rewritten.
    for (const column of ['title', 'raw_xml'] as const) {
      const check = await checkLedger(db.pool, 'plain', column, filled.ledger[column], ring);
      expect({ mismatched: check.mismatched, missing: check.missing, versions: Object.keys(check.byVersion) }).toEqual({ mismatched: [], missing: [], versions: ['v2'] });
    }

    // The quarantine holds exactly those values, with the SQLSTATE (and constraint) or the reason, seen once.
    const q = await readQuarantine(db.pool, 'public.guarded');
    expect(q.map((e) => [e.id, e.column_name, e.version, e.reason, e.source, e.sha, e.seen_count])).toEqual(expectedEntries);
    expect(await readQuarantine(db.pool, 'public.plain')).toEqual([]);

    // The batch fell back to row-by-row for the failing chunks; nothing said swept again; both relations done.
    expect(logLines(r, /redoing it row by row/).length).toBeGreaterThan(0);
    expect(logLines(r, /sweeping (it|them|those relations) again/)).toEqual([]);
    const segs = await db.pool.query<{ relation: string; state: string }>(`select relation, state from pgrekey.sweep_segment order by relation`);
    expect(segs.rows).toEqual([
      { relation: 'public.guarded', state: 'done' },
      { relation: 'public.plain', state: 'done' },
    ]);
    // Never an error message (the triggers' messages hold values) nor a value in the output.
    const out = r.stdout + r.stderr;
    expect(out).not.toMatch(/frozen|late check|secret/);
    for (const id of bad) expect(out.includes(stored.get(`${id}:title`)!.slice(3, 30)), `title ${id}`).toBe(false);
    // The text report says what is left and why.
    const text = await cli(files, 'backfill');
    expect(text.code, text.stderr.slice(-2000)).toBe(1);
    expect(text.stdout).toMatch(new RegExp(`NOT converged: ${expectedEntries.length} value\\(s\\) of an old version remain`));
    expect(text.stdout).toMatch(/public\.guarded\.title: \d+ quarantined/);
    expect(text.stdout).toMatch(/pgrekey\.quarantine/);
    // A plain backfill re-checks: the values left are all quarantined, so it does not sweep again (no loop).
    expect(logLines(text, /sweeping (it|them|those relations) again/)).toEqual([]);
    const q2 = await readQuarantine(db.pool, 'public.guarded');
    expect(q2.map((e) => [e.id, e.column_name, e.seen_count])).toEqual(expectedEntries.map((e) => [e[0], e[1], '1']));

    // --restart re-examines them (the runbook's step after fixing a cause): the same entries, nothing rewritten twice.
    const again = await cli(files, 'backfill', '--restart', '--json');
    expect(again.code, again.stderr.slice(-2000)).toBe(1);
    expect(JSON.parse(again.stdout)).toMatchObject({ rewritten: 0, quarantined: expectedEntries.length, remaining: expectedEntries.length, passes: 1 });
    expect((await readQuarantine(db.pool, 'public.guarded')).map((e) => [e.id, e.column_name, e.reason])).toEqual(expectedEntries.map((e) => [e[0], e[1], e[3]]));

    // The cause fixed (the freezing trigger dropped): a restarted backfill rewrites those rows and drops their entries.
    await db.pool.query('drop trigger a_freeze on guarded');
    const fixed = await cli(files, 'backfill', '--restart', '--json');
    expect(fixed.code, fixed.stderr.slice(-2000)).toBe(1);
    const left = (await readQuarantine(db.pool, 'public.guarded')).map((e) => Number(e.id));
    expect(left.some((id) => RAISE.includes(id))).toBe(false);
    expect([...new Set(left)].sort((a, b) => a - b)).toEqual([...CHECK, ...KEEP, ...LATE, ...DOMAIN].sort((a, b) => a - b));
    const frozen = await db.pool.query<{ title: string }>(`select title from guarded where id = any($1::bigint[])`, [RAISE]);
    expect(frozen.rows.every((row) => row.title.startsWith('v2:'))).toBe(true);
  });
});

describe('backfill converges by itself', () => {
  /** Rows of the same size, v1 titles, fillfactor 25: an UPDATE of another column stays on its page (HOT). */
  async function movingTable(pool: pg.Pool, name: string, rows: number): Promise<Map<number, Buffer>> {
    await pool.query(`create table ${name} (id bigint primary key, title text, status text not null default 'open') with (fillfactor = 25)`);
    const ledger = new Map<number, Buffer>();
    const data: unknown[][] = [];
    for (let id = 1; id <= rows; id++) {
      const pt = Buffer.from(`moving row ${String(id).padStart(6, '0')}`);
      ledger.set(id, pt);
      data.push([id, encryptValue(pt, 1, ring)]);
    }
    await insertBatched(pool, name, ['id', 'title'], ['bigint', 'text'], data);
    return ledger;
  }
  const blockOf = (ctid: string) => Number(/^\((\d+),/.exec(ctid)![1]);

  it('a v1 row moved behind the checkpoint mid-pass (UPDATE of another column) is found by the recount and rewritten by another pass', async () => {
    const db = await newDb('backfill_converges');
    const ledger = await movingTable(db.pool, 'moving', 3000);
    const calm = await movingTable(db.pool, 'calm', 300);
    const files = writeDaemonFiles(
      db.url,
      [
        { name: 'moving', columns: ['title'] },
        { name: 'calm', columns: ['title'] },
      ],
      // A long lock_timeout: the chunk's CAS waits for the application's row lock instead of retrying.
      { sweep: { chunk_time: 0, chunk_blocks: 4, nice_ratio: 0, lock_timeout: '60s' } },
    );
    expect((await cli(files, 'setup')).code).toBe(0);
    const blocks = Number((await db.pool.query(`select pg_relation_size('moving') / 8192 as b`)).rows[0].b);
    expect(blocks).toBeGreaterThan(30);
    // A row in the middle of the table, locked by the application.
    const victim = (await db.pool.query<{ id: string; ctid: string }>(`select id::text, ctid::text from moving where ctid >= '(14,0)'::tid order by ctid limit 1`)).rows[0]!;
    const app = await db.pool.connect();
    let bf: ReturnType<typeof spawnCli> | null = null;
    try {
      await app.query('begin');
      await app.query('select 1 from moving where id = $1 for update', [victim.id]);
      bf = spawnCli(['backfill', '--json', ...files.args]);
      // The sweep has read the victim's chunk and waits for its lock in the CAS.
      await eventually(
        'the sweep waits for the row lock',
        async () => (await db.pool.query(`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`)).rows[0].n > 0,
        30_000,
      );
      // The application changes another column: the row's new version (still v1) stays on its page,
      // in the chunk the sweep is writing, so behind the checkpoint once that chunk commits.
      const moved = await app.query<{ ctid: string; title: string }>(`update moving set status = 'dispatched' where id = $1 returning ctid::text, title`, [victim.id]);
      expect(moved.rows[0]!.title.startsWith('v1:')).toBe(true);
      expect(blockOf(moved.rows[0]!.ctid)).toBe(blockOf(victim.ctid));
      await app.query('commit');
    } finally {
      await app.query('rollback').catch(() => undefined);
      app.release();
    }
    const r = await bf!.exited;
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report).toMatchObject({ converged: true, remaining: 0, passes: 2 });
    expect(report.conflicts).toBeGreaterThanOrEqual(1);
    // The recount named what it found and why, for the relation that needed it only.
    const found = logLines(r, /old-version values remain behind the sweep/);
    expect(found).toHaveLength(1);
    expect(found[0]).toMatchObject({ level: 40, pass: 2, relations: [{ relation: 'public.moving', remaining: 1 }] });
    const rel = (name: string) => (report.relations as { relation: string; passes: number }[]).find((x) => x.relation === name);
    expect(rel('public.moving')?.passes).toBe(2);
    expect(rel('public.calm')?.passes).toBe(1);
    // Every value rewritten, decrypting to its plaintext; the application's change kept.
    const check = await checkLedger(db.pool, 'moving', 'title', ledger, ring);
    expect({ mismatched: check.mismatched, missing: check.missing, byVersion: check.byVersion }).toEqual({ mismatched: [], missing: [], byVersion: { v2: 3000 } });
    expect((await checkLedger(db.pool, 'calm', 'title', calm, ring)).byVersion).toEqual({ v2: 300 });
    expect((await db.pool.query(`select status from moving where id = $1`, [victim.id])).rows[0].status).toBe('dispatched');
  });

  it('a plain backfill after a completed one re-checks and rewrites old values found behind the sweep; --dry-run writes nothing', async () => {
    const db = await newDb('backfill_recheck');
    const ledger = await movingTable(db.pool, 'moving', 1000);
    const files = writeDaemonFiles(db.url, [{ name: 'moving', columns: ['title'] }], { sweep: { chunk_time: 0, chunk_blocks: 8, nice_ratio: 0 } });
    expect((await cli(files, 'setup')).code).toBe(0);
    const first = await cli(files, 'backfill', '--json');
    expect(first.code, first.stderr.slice(-2000)).toBe(0);
    expect(JSON.parse(first.stdout)).toMatchObject({ converged: true, remaining: 0, passes: 1, rewritten: 1000 });
    // An old application instance writes v1 values after the sweep (no stream runs to rewrite them).
    for (const id of [5, 500]) {
      const pt = Buffer.from(`written by an old instance ${id}`);
      ledger.set(id, pt);
      await db.pool.query('update moving set title = $1 where id = $2', [encryptValue(pt, 1, ring), id]);
    }

    // A dry run reports and writes nothing: no rewrite, no checkpoint, no quarantine, no run record.
    const sum = await tableChecksum(db.pool, 'moving');
    const state = async () =>
      (await db.pool.query(`select (select json_agg(s order by relation) from pgrekey.sweep_segment s) as s, (select count(*)::int from pgrekey.run) as runs, (select count(*)::int from pgrekey.quarantine) as q`)).rows[0];
    const stateBefore = await state();
    const dry = await cli(files, 'backfill', '--dry-run', '--json');
    expect(dry.code, dry.stderr.slice(-2000)).toBe(0);
    expect(JSON.parse(dry.stdout)).toMatchObject({ dryRun: true, wouldRewrite: 2 });
    expect(JSON.parse(dry.stdout)).not.toHaveProperty('rewritten');
    expect(dry.stderr).not.toMatch(/"rewritten"/);
    expect(await tableChecksum(db.pool, 'moving')).toBe(sum);
    expect(await state()).toEqual(stateBefore);

    const again = await cli(files, 'backfill', '--json');
    expect(again.code, again.stderr.slice(-2000)).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ converged: true, remaining: 0, passes: 2, rewritten: 2 });
    const found = logLines(again, /old-version values remain behind the sweep/);
    expect(found.map((l) => l.relations)).toEqual([[{ relation: 'public.moving', remaining: 2 }]]);
    expect((await checkLedger(db.pool, 'moving', 'title', ledger, ring)).byVersion).toEqual({ v2: 1000 });

    // Nothing left: a plain backfill says so (already done) and exits 0 without another pass.
    const done = await cli(files, 'backfill');
    expect(done.code, done.stderr.slice(-2000)).toBe(0);
    expect(done.stdout).toMatch(/already done/);
    expect(done.stdout).toMatch(/no value of an old version remains/);
    expect(logLines(done, /old-version values remain behind the sweep/)).toEqual([]);
  });
});
