// Odd schemas through the whole flow (setup, verify, backfill, verify, run, verify) on a real server:
// hostile and mixed-case names, non-public schemas, one table name in several schemas, composite keys,
// a replica identity index instead of a primary key, (sub)partitioned tables, partitions attached under `run`.
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { decryptValue, encryptValue } from '../../src/crypto/rewrite.js';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { testRing } from '../support/fixtures.js';
import { cli, eventually, startDaemon, writeDaemonFiles, type DaemonFiles, type RunningDaemon } from '../support/daemon.js';

let db: TestDatabase;
let ring: KeyRing;
let files: DaemonFiles;
let daemon: RunningDaemon | null = null;

// SQL spellings. The hostile table lives in a hostile schema and has a column named like an injection.
const HS = `"Odd ""Sch""; ema"`;
const HT = `${HS}."Mixed ""Case""; Tab"`;
const HC = `"x""; drop table victim; --"`;

/** A configured table: its SQL name, the key expression, and the configured column(s) as SQL. */
interface Subject {
  sql: string;
  key: string;
  columns: string[];
}
const SUBJECTS: Subject[] = [
  { sql: HT, key: 'id::text', columns: [HC, '"Title"'] },
  { sql: 'alpha.dup', key: 'id::text', columns: ['secret'] },
  { sql: 'beta.dup', key: 'id::text', columns: ['secret'] },
  { sql: 'gamma.solo', key: 'id::text', columns: ['secret'] },
  { sql: 'composite', key: `concat_ws('|', tenant, day, seq)`, columns: ['secret'] },
  { sql: 'ri', key: `concat_ws('|', code, n)`, columns: ['secret'] },
  { sql: 'parted', key: `concat_ws('|', region, id)`, columns: ['secret'] },
];

/** Expected plaintext per subject, column and key, for every value we wrote as v1 or v2. */
const ledger = new Map<string, Map<string, Buffer>>();
const expect_ = (s: Subject, col: string) => {
  const id = `${s.sql}/${col}`;
  if (!ledger.has(id)) ledger.set(id, new Map());
  return ledger.get(id)!;
};
const enc = (s: Subject, col: string, key: string, version: number): string => {
  const pt = Buffer.from(`${s.sql} ${col} ${key} \u00e9\u{1f512}`);
  expect_(s, col).set(key, pt);
  return encryptValue(pt, version, ring);
};

/** md5 over every row, in row text order: equal means no value changed. */
async function checksum(table: string): Promise<string> {
  return (await db.pool.query(`select md5(string_agg(t::text, ',' order by t::text)) as s from ${table} t`)).rows[0].s ?? '';
}

/** Values not at v2 in a subject's configured columns. */
async function remaining(s: Subject): Promise<number> {
  const conds = s.columns.map((c) => `${c} like 'v1:%'`).join(' or ');
  return (await db.pool.query(`select count(*)::int as n from ${s.sql} where ${conds}`)).rows[0].n;
}

/** Every ledger value decrypts to its plaintext and is at v2. */
async function checkLedger(s: Subject): Promise<void> {
  for (const col of s.columns) {
    const want = expect_(s, col);
    const { rows } = await db.pool.query<{ k: string; v: string | null }>(`select ${s.key} as k, ${col} as v from ${s.sql}`);
    const got = new Map(rows.map((r) => [r.k, r.v]));
    for (const [k, pt] of want) {
      const v = got.get(k);
      expect(v?.startsWith('v2:'), `${s.sql}.${col} ${k}: ${v?.slice(0, 4)}`).toBe(true);
      expect(Buffer.from(decryptValue(v!, ring)!).equals(pt), `${s.sql}.${col} ${k}`).toBe(true);
    }
  }
}

async function victimAlive(): Promise<void> {
  expect((await db.pool.query(`select count(*)::int as n from public.victim`)).rows[0].n).toBe(1);
}

const insertPlain = async (s: Subject, cols: string, values: unknown[]) => {
  const ph = values.map((_, i) => `$${i + 1}`).join(', ');
  await db.pool.query(`insert into ${s.sql} (${cols}) values (${ph})`, values);
};

// Each table gets v1 and v2 values, a NULL and a value that is not ours (left as is).
async function fill(from: number, to: number, version: (i: number) => number): Promise<void> {
  const [hostile, alpha, beta, gamma, composite, ri, parted] = SUBJECTS as [Subject, Subject, Subject, Subject, Subject, Subject, Subject];
  for (let i = from; i <= to; i++) {
    const v = version(i);
    await insertPlain(hostile, `id, ${HC}, "Title", plain`, [i, enc(hostile, HC, String(i), v), i % 5 === 0 ? null : enc(hostile, '"Title"', String(i), v), encryptValue(Buffer.from('plain stays v1'), 1, ring)]);
    for (const s of [alpha, beta, gamma]) await insertPlain(s, 'id, secret', [i, i % 7 === 0 ? 'not ours' : enc(s, 'secret', String(i), v)]);
    const day = `2024-01-${String((i % 28) + 1).padStart(2, '0')}`;
    const tenant = i % 2 ? `t"en; ant ${i % 3}` : 'T';
    await insertPlain(composite, 'tenant, day, seq, secret, other', [tenant, day, i, enc(composite, 'secret', `${tenant}|${day}|${i}`, v), encryptValue(Buffer.from('other'), 1, ring)]);
    await insertPlain(ri, 'code, n, secret', [`c-${i % 4}`, i, enc(ri, 'secret', `c-${i % 4}|${i}`, v)]);
    const region = ['eu', 'us', 'us', 'xx'][i % 4]!;
    const id = region === 'us' && i % 8 === 1 ? 100_000 + i : i; // both sub-partitions of us
    await insertPlain(parted, 'region, id, secret', [region, id, enc(parted, 'secret', `${region}|${id}`, v)]);
  }
}

beforeAll(async () => {
  db = await createTestDatabase('odd_schemas');
  ring = await testRing();
  await db.pool.query(`
    create table public.victim (id int primary key); insert into public.victim values (1);
    create schema ${HS};
    create table ${HT} (id int primary key, ${HC} text, "Title" text, plain text);
    create schema alpha; create schema beta; create schema gamma;
    create table alpha.dup (id int primary key, secret text);
    create table beta.dup (id int primary key, secret text);
    create table gamma.solo (id int primary key, secret text);
    create table public.solo (id int primary key, secret text);
    create table composite (tenant text, day date, seq bigint, secret text, other text, primary key (tenant, day, seq));
    create table ri (code text not null, n int not null, secret text);
    create unique index ri_code_n on ri (code, n);
    alter table ri replica identity using index ri_code_n;
    create table parted (region text not null, id bigint not null, secret text, primary key (region, id)) partition by list (region);
    create table parted_eu partition of parted for values in ('eu');
    create table parted_us partition of parted for values in ('us') partition by range (id);
    create table parted_us_lo partition of parted_us for values from (minvalue) to (100000);
    create table parted_us_hi partition of parted_us for values from (100000) to (maxvalue);
    create table gamma."Parted Default" partition of parted default;
  `);
  await fill(1, 60, (i) => (i % 3 === 0 ? 2 : 1));
  // Not configured: same name as a configured table in another schema; must stay byte-identical.
  for (let i = 1; i <= 20; i++) await db.pool.query(`insert into public.solo values ($1, $2)`, [i, encryptValue(Buffer.from(`public solo ${i}`), 1, ring)]);
  files = writeDaemonFiles(db.url, [
    { name: `${HT}`, columns: [HC, '"Title"'] },
    { name: 'alpha.dup', columns: ['secret'] },
    { name: 'BETA.Dup', columns: ['Secret'] }, // unquoted: folds to beta.dup / secret
    { name: 'gamma.solo', columns: ['secret'] },
    { name: 'composite', columns: ['secret'] },
    { name: 'ri', columns: ['secret'] },
    { name: 'public.parted', columns: ['secret'] },
  ]);
});

afterAll(async () => {
  if (daemon) await daemon.proc.stop('SIGKILL');
  await db?.drop();
});

describe('odd schemas through setup, backfill and verify', () => {
  it('setup names every row key; backfill rewrites every table (each leaf); verify converges; nothing else is touched', async () => {
    const solo = await checksum('public.solo');
    const plain = await checksum(`(select id, plain from ${HT})`);
    const other = await checksum('(select seq, other from composite)');
    const setup = await cli(files, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
    expect(setup.stdout).toContain(`table "Odd ""Sch""; ema"."Mixed ""Case""; Tab": columns x"; drop table victim; --, Title; row key id (primary key)`);
    expect(setup.stdout).toContain('table alpha.dup: columns secret; row key id (primary key)');
    expect(setup.stdout).toContain('table beta.dup: columns secret; row key id (primary key)');
    expect(setup.stdout).toContain('table public.composite: columns secret; row key tenant, day, seq (primary key)');
    expect(setup.stdout).toContain('table public.ri: columns secret; row key code, n (replica identity index)');
    expect(setup.stdout).toContain('table public.parted: columns secret; row key region, id (primary key); 4 leaf partition(s)');
    // The publication holds exactly the configured tables (a partitioned one brings its leaves).
    const pub = await db.pool.query(`select schemaname || '.' || tablename as t from pg_publication_tables where pubname = 'pg_rekey'`);
    expect(pub.rows.map((r) => r.t).sort()).toEqual([
      'Odd "Sch"; ema.Mixed "Case"; Tab', 'alpha.dup', 'beta.dup', 'gamma.Parted Default', 'gamma.solo', 'public.composite', 'public.parted_eu', 'public.parted_us_hi', 'public.parted_us_lo', 'public.ri',
    ].sort());
    await victimAlive();

    const before = await cli(files, 'verify', '--json');
    expect(before.code, before.stderr).toBe(1);
    const cols = JSON.parse(before.stdout).columns as { table: string; column: string; nonTarget: number }[];
    expect(cols.map((c) => `${c.table}:${c.column}`)).toEqual([
      '"Odd ""Sch""; ema"."Mixed ""Case""; Tab":x"; drop table victim; --', '"Odd ""Sch""; ema"."Mixed ""Case""; Tab":Title',
      'alpha.dup:secret', 'beta.dup:secret', 'gamma.solo:secret', 'public.composite:secret', 'public.ri:secret', 'public.parted:secret',
    ]);
    for (const c of cols) expect(c.nonTarget, `${c.table}.${c.column}`).toBeGreaterThan(10);

    const backfill = await cli(files, 'backfill');
    expect(backfill.code, backfill.stderr).toBe(0);
    const segs = await db.pool.query<{ relation: string; state: string }>(`select relation, state from pgrekey.sweep_segment`);
    expect(segs.rows.sort((a, b) => (a.relation < b.relation ? -1 : 1))).toEqual(
      ['"Odd ""Sch""; ema"."Mixed ""Case""; Tab"', 'alpha.dup', 'beta.dup', 'gamma."Parted Default"', 'gamma.solo', 'public.composite', 'public.parted_eu', 'public.parted_us_hi', 'public.parted_us_lo', 'public.ri']
        .sort()
        .map((relation) => ({ relation, state: 'done' })),
    );
    const after = await cli(files, 'verify');
    expect(after.code, after.stdout + after.stderr).toBe(0);
    for (const s of SUBJECTS) {
      expect(await remaining(s), s.sql).toBe(0);
      await checkLedger(s);
    }
    await victimAlive();
    expect(await checksum('public.solo')).toBe(solo);
    expect(await checksum(`(select id, plain from ${HT})`)).toBe(plain);
    expect(await checksum('(select seq, other from composite)')).toBe(other);
    expect((await db.pool.query(`select count(*)::int as n from ${HT} where "Title" is null`)).rows[0].n).toBe(12);
    expect((await db.pool.query(`select count(*)::int as n from alpha.dup where secret = 'not ours'`)).rows[0].n).toBe(8);
  });

  it('setup refuses a table with neither a primary key nor a replica identity index, naming both fixes, and creates nothing', async () => {
    await db.pool.query(`create table keyless (id int, secret text); create table "Full Ident" (id int, secret text); alter table "Full Ident" replica identity full`);
    await db.pool.query(`create table nullable_unique (id int, secret text); create unique index nu on nullable_unique (id)`);
    const f = writeDaemonFiles(db.url, [{ name: 'keyless', columns: ['secret'] }, { name: '"Full Ident"', columns: ['secret'] }, { name: 'nullable_unique', columns: ['secret'] }], {
      replication: { slot: `s2_${db.name}`.slice(0, 63), publication: 'pgrekey_keyless' },
    });
    const r = await cli(f, 'setup');
    expect(r.code).toBe(2);
    for (const name of ['public.keyless', 'public."Full Ident"', 'public.nullable_unique']) {
      expect(r.stderr).toContain(`${name}: has neither a primary key nor a replica identity index; add a primary key, or ALTER TABLE ${name} REPLICA IDENTITY USING INDEX <unique not-null index>`);
    }
    const made = await db.pool.query(`select (select count(*)::int from pg_publication where pubname = 'pgrekey_keyless') as p, (select count(*)::int from pg_replication_slots where slot_name = $1) as s`, [`s2_${db.name}`.slice(0, 63)]);
    expect(made.rows[0]).toEqual({ p: 0, s: 0 });
    // backfill and verify refuse the same way (exit 2).
    expect((await cli(f, 'backfill')).code).toBe(2);
  });
});

describe('odd schemas under run', () => {
  it('the stream rewrites new v1 writes by key: hostile names, composite key, replica identity index, leaf partitions', async () => {
    daemon = await startDaemon(files);
    await daemon.proc.waitForLine(/sweep complete for every configured table/);
    const solo = await checksum('public.solo');
    const [hostile, , , , composite, ri, parted] = SUBJECTS as [Subject, Subject, Subject, Subject, Subject, Subject, Subject];
    await fill(61, 80, () => 1); // inserts into every table and every leaf
    // Updates to v1 by key (composite key, replica identity index, partition key), other columns unchanged.
    await db.pool.query(`update composite set secret = $1 where tenant = 'T' and day = '2024-01-03' and seq = 2`, [enc(composite, 'secret', 'T|2024-01-03|2', 1)]);
    await db.pool.query(`update ri set secret = $1 where code = 'c-1' and n = 5`, [enc(ri, 'secret', 'c-1|5', 1)]);
    await db.pool.query(`update parted set secret = $1 where region = 'us' and id = 100009`, [enc(parted, 'secret', 'us|100009', 1)]);
    await db.pool.query(`update ${HT} set ${HC} = $1, plain = $2 where id = 4`, [enc(hostile, HC, '4', 1), encryptValue(Buffer.from('plain stays v1'), 1, ring)]);
    await db.pool.query(`insert into public.solo values (100, $1)`, [encryptValue(Buffer.from('public solo 100'), 1, ring)]);
    const plain = await checksum(`(select id, plain from ${HT})`);
    const other = await checksum('(select seq, other from composite)');
    const solo2 = await checksum('public.solo');
    expect(solo2).not.toBe(solo);

    await eventually('the stream rewrote every v1 write', async () => {
      for (const s of SUBJECTS) if ((await remaining(s)) > 0) return false;
      return true;
    }, 15_000);
    for (const s of SUBJECTS) await checkLedger(s);
    await victimAlive();
    expect(await checksum('public.solo')).toBe(solo2);
    expect(await checksum(`(select id, plain from ${HT})`)).toBe(plain);
    expect(await checksum('(select seq, other from composite)')).toBe(other);
    // The stream did it (the sweep was over): changes of partitions arrived under the leaf's name.
    const metrics = await (await fetch(`${daemon.httpUrl}/metrics`)).text();
    for (const t of ['public.composite', 'public.ri', 'public.parted', 'alpha.dup', 'beta.dup', 'gamma.solo']) {
      expect(metrics).toMatch(new RegExp(`pg_rekey_rewrites_total\\{source="stream",table="${t.replace('.', '\\.')}"\\} [1-9]`));
    }
    expect(daemon.proc.lines.some((l) => /replication connection failed|sweep failed/.test(l.text))).toBe(false);
  });

  it('partitions attached while run is active: ATTACH of a table holding v1 rows and CREATE TABLE ... PARTITION OF are swept and streamed', async () => {
    if (!daemon) throw new Error('needs the daemon of the previous test');
    const parted = SUBJECTS[6]!;
    const from = daemon.proc.lines.length;
    // A table filled before it becomes a partition: only the sweep can reach these rows.
    await db.pool.query(`create table gamma.parted_ap (region text not null, id bigint not null, secret text, primary key (region, id))`);
    for (let i = 1; i <= 300; i++) await db.pool.query(`insert into gamma.parted_ap values ('ap', $1, $2)`, [i, enc(parted, 'secret', `ap|${i}`, 1)]);
    await db.pool.query(`alter table parted attach partition gamma.parted_ap for values in ('ap')`);
    // No write reaches it: the daemon has to notice the new leaf in the catalog and sweep it.
    const ms = await eventually('the attached partition swept', async () => (await remaining(parted)) === 0, 15_000);
    await checkLedger(parted);
    // A new partition that only ever gets writes under run: its changes arrive under its own name.
    await db.pool.query(`create table "Parted SA" partition of parted for values in ('sa')`);
    for (let i = 1; i <= 20; i++) await db.pool.query(`insert into parted values ('sa', $1, $2)`, [i, enc(parted, 'secret', `sa|${i}`, 1)]);
    await eventually('writes to the created partition rewritten', async () => (await remaining(parted)) === 0, 10_000);
    await checkLedger(parted);
    const logged = daemon.proc.lines.slice(from).map((l) => l.text);
    expect(logged.some((l) => l.includes('gamma.parted_ap'))).toBe(true);
    expect(logged.some((l) => l.includes('public.\\"Parted SA\\"'))).toBe(true);
    await eventually('the new leaves are swept', async () => {
      const r = await db.pool.query(`select count(*)::int as n from pgrekey.sweep_segment where relation in ('gamma.parted_ap', 'public."Parted SA"') and state = 'done'`);
      return r.rows[0].n === 2;
    }, 15_000);
    // Writes to the attached partition after the attach are the stream's.
    await db.pool.query(`insert into parted values ('ap', 1000, $1)`, [enc(parted, 'secret', 'ap|1000', 1)]);
    await eventually('a later write into the attached partition rewritten', async () => (await remaining(parted)) === 0, 10_000);
    await checkLedger(parted);
    const v = await cli(files, 'verify');
    expect(v.code, v.stdout + v.stderr).toBe(0);
    await daemon.proc.waitForLine(/CONVERGED/, { fromIndex: from, timeoutMs: 15_000 });
    // PostgreSQL 14's walsender keeps a table it saw before the ATTACH as unpublished: the daemon
    // restarts it once per catalog change that brings new partitions (here the ATTACH and the CREATE).
    const failures = daemon.proc.lines.slice(from).filter((l) => /replication connection failed|sweep failed/.test(l.text));
    if (inject('pgMajor') >= 15) expect(failures).toEqual([]);
    else expect(failures.map((l) => JSON.parse(l.text).code)).toEqual(failures.length === 1 ? ['57P01'] : ['57P01', '57P01']);
    console.log(`partition attached under run: its rows rewritten ${ms} ms after the ATTACH`);
    const stopped = await daemon.proc.stop('SIGTERM', 10_000);
    daemon = null;
    expect(stopped.code).toBe(0);
  });
});
