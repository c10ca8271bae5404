// pg-rekey discover (issue 10, item 3): v1 ciphertexts outside the configuration are found and named
// (an unconfigured column, a partition, another schema, a domain, a materialized view over a configured
// column, envelopes inside jsonb); a huge table's sampled scan reads a bounded number of rows; what the
// role cannot read (no grant, a column grant, row level security) is reported as not checked; verify
// shows the same check and --strict counts it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, dropDatabaseAndRole, urlAs, type TestDatabase } from '../support/db.js';
import { insertBatched, KEY_HEX, testRing } from '../support/fixtures.js';
import { cli, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import type { DiscoverResult } from '../../src/discover/findings.js';
import type { VerifyReport } from '../../src/commands/verify.js';

let db: TestDatabase;
let files: DaemonFiles;
let limited: DaemonFiles;
const ROLE = `discover_ro_${process.pid}`;
const PASSWORD = 'discover-test-password';
const HUGE_ROWS = 150_000;

const col = (r: DiscoverResult, relation: string, column: string) => r.columns.find((c) => c.relation === relation && c.column === column);

beforeAll(async () => {
  db = await createTestDatabase('discover');
  const ring = await testRing();
  const v1 = (s: string) => encryptValue(Buffer.from(s), 1, ring);
  await db.pool.query(`
    create table incidents (id bigint primary key, title text, notes text, remark text);
    create schema ops;
    create domain ops.secret_text as text;
    create table ops.call_log (id bigint primary key, body ops.secret_text, code char(8));
    create table calls (id bigint not null, region int not null, note varchar(400), primary key (id, region)) partition by list (region);
    create table calls_a partition of calls for values in (1);
    create table calls_b partition of calls for values in (2);
    create table events (id bigint primary key, payload jsonb);
    create table big_log (id bigint primary key, body text);
    create table secret_notes (id bigint primary key, body text);
    create table partial (id bigint primary key, shown text, hidden text);
    create table rls_notes (id bigint primary key, body text);
    create table lookalikes (id bigint primary key, val text);
    alter table rls_notes enable row level security;
    create policy mine on rls_notes using (false);`);
  const rows = Array.from({ length: 300 }, (_, i) => [i + 1, v1(`incident ${i + 1}`), i % 2 ? v1(`note ${i + 1}`) : null, 'v1: see ticket 42']);
  await insertBatched(db.pool, 'incidents', ['id', 'title', 'notes', 'remark'], ['bigint', 'text', 'text', 'text'], rows);
  await db.pool.query(`create materialized view incident_titles as select id, title from incidents`);
  await db.pool.query(`create materialized view empty_titles as select id, title from incidents with no data`);
  // Through a view: the matview still copies the ciphertexts.
  await db.pool.query(`create view incident_view as select id, upper(status_text) as s, title from (select id, title, 'x' as status_text from incidents) q`);
  await db.pool.query(`create materialized view titles_via_view as select title from incident_view`);
  await insertBatched(db.pool, 'ops.call_log', ['id', 'body'], ['bigint', 'text'], Array.from({ length: 50 }, (_, i) => [i + 1, v1(`call ${i}`)]));
  await db.pool.query(`insert into calls values (1, 1, null), (2, 2, $1), (3, 2, $1)`, [v1('call note')]);
  await db.pool.query(`insert into events values (1, $1), (2, '{"title": "v1: see ticket 42", "v1:": "AAAA"}')`, [JSON.stringify({ title: v1('in json'), n: 1 })]);
  // A "huge" table (for a test): strings in the envelope format, made by the server (they need not decrypt).
  await db.pool.query(
    `insert into big_log select g, 'v1:' || translate(encode(sha512(g::text::bytea) || sha512((g + 1)::text::bytea), 'base64'), E'\\n', '') from generate_series(1, $1) g`,
    [HUGE_ROWS],
  );
  await db.pool.query(`insert into secret_notes values (1, $1)`, [v1('secret')]);
  await db.pool.query(`insert into partial values (1, 'plain', $1)`, [v1('hidden')]);
  await db.pool.query(`insert into rls_notes values (1, $1)`, [v1('rls')]);
  // Near misses of the stored format: only the last one is an envelope.
  const body = (bytes: number) => Buffer.alloc(bytes, 7).toString('base64');
  const near = [`v1:${body(30)}`, `v1:${body(40).replace(/=+$/, '')}`, `V1:${body(40)}`, `v0:${body(40)}`, `v01:${body(40)}`, `v1:${body(40)} `, `v1:${body(40)}\n`, `v1:${body(40).slice(0, -4)}*${body(40).slice(-3)}`];
  await insertBatched(db.pool, 'lookalikes', ['id', 'val'], ['bigint', 'text'], [...near, `v1:${body(40)}`].map((v, i) => [i + 1, v]));
  await db.pool.query(`analyze`);
  files = writeDaemonFiles(db.url, [{ name: 'incidents', columns: ['title'] }]);
  expect((await cli(files, 'setup')).code).toBe(0);
  // A role that may read (and rotate) incidents but not everything: what discover cannot read must be named.
  await db.pool.query(`drop role if exists ${ROLE}`);
  await db.pool.query(`create role ${ROLE} login password '${PASSWORD}'`);
  await db.pool.query(`
    grant connect on database "${db.name}" to ${ROLE};
    grant usage on schema public to ${ROLE};
    grant select, update (title) on incidents to ${ROLE};
    grant select on incident_titles, events, big_log, calls, calls_a, calls_b, rls_notes to ${ROLE};
    grant select (id, shown) on partial to ${ROLE};`);
  limited = writeDaemonFiles(urlAs(db.url, ROLE, PASSWORD), [{ name: 'incidents', columns: ['title'] }]);
});

afterAll(async () => {
  await dropDatabaseAndRole(db, ROLE);
});

describe('pg-rekey discover', () => {
  it('finds the v1 values outside the configuration and exits 1', async () => {
    const r = await cli(files, 'discover', '--json');
    expect(r.code, r.stderr.slice(-800)).toBe(1);
    const d = JSON.parse(r.stdout) as DiscoverResult;
    expect(col(d, 'public.incidents', 'title')).toMatchObject({ configured: 'public.incidents', byVersion: { v1: 300 }, exact: true });
    expect(col(d, 'public.incidents', 'notes')).toMatchObject({ configured: null, byVersion: { v1: 150 }, oldValues: 150, rewritable: true });
    // The strict format: a "v1:" prefix on prose is not an envelope.
    expect(col(d, 'public.incidents', 'remark')).toBeUndefined();
    expect(col(d, 'public.lookalikes', 'val')!.byVersion).toEqual({ v1: 1 });
    expect(col(d, 'ops.call_log', 'body')).toMatchObject({ type: 'ops.secret_text', byVersion: { v1: 50 } });
    expect(col(d, 'public.calls_b', 'note')).toMatchObject({ kind: 'partition', configName: 'public.calls', byVersion: { v1: 2 } });
    expect(col(d, 'public.events', 'payload')).toMatchObject({ json: true, byVersion: { v1: 1 } });
    expect(col(d, 'public.incident_titles', 'title')).toMatchObject({ kind: 'matview', byVersion: { v1: 300 } });
    expect(d.matviews).toEqual([
      { matview: 'public.empty_titles', reads: ['public.incidents.title'], populated: false },
      { matview: 'public.incident_titles', reads: ['public.incidents.title'], populated: true },
      { matview: 'public.titles_via_view', reads: ['public.incidents.title'], populated: true },
    ]);
    expect(col(d, 'public.titles_via_view', 'title')).toMatchObject({ kind: 'matview', byVersion: { v1: 300 } });
    // pg-rekey's own state is not scanned.
    expect(d.columns.some((c) => c.relation.startsWith('pgrekey.'))).toBe(false);
    // The snippet: configured tables with the columns found added; json and matviews are not entries.
    expect(d.snippet).toContain('  - name: public.incidents\n    columns: [title, notes]   # added by discover: notes: v1 150');
    expect(d.snippet).toContain('  - name: ops.call_log\n    columns: [body]');
    expect(d.snippet).toContain('  - name: public.calls\n    columns: [note]');
    expect(d.snippet).toMatch(/# public\.events\.payload \(jsonb\): envelopes inside JSON/);
    expect(d.snippet).not.toMatch(/name: public\.incident_titles/);
    const text = await cli(files, 'discover');
    expect(text.code).toBe(1);
    expect(text.stdout).toMatch(/materialized view public\.incident_titles reads public\.incidents\.title: .*REFRESH MATERIALIZED VIEW/);
    expect(text.stdout).toMatch(/OLD VALUES OUTSIDE THE CONFIGURATION: \d+ old-version value\(s\) in \d+ column\(s\)/);
    expect(text.stdout + text.stderr).not.toContain(KEY_HEX[1]!.slice(0, 16));
    expect(text.stdout).not.toMatch(/v1:[A-Za-z0-9+/]{20}/);
  });

  it('a huge table: the sampled scan reads a bounded number of rows; --full reads them all', async () => {
    const sampled = JSON.parse((await cli(files, 'discover', '--json', '--rows', '2000')).stdout) as DiscoverResult;
    const big = col(sampled, 'public.big_log', 'body')!;
    expect(big.exact).toBe(false);
    expect(big.rowsRead).toBeGreaterThan(0);
    expect(big.rowsRead).toBeLessThanOrEqual(2000);
    expect(big.byVersion.v1).toBe(big.rowsRead);
    const dflt = JSON.parse((await cli(files, 'discover', '--json')).stdout) as DiscoverResult;
    // About 64 blocks of ~1,800: a few percent of the table.
    expect(col(dflt, 'public.big_log', 'body')!.rowsRead).toBeLessThan(HUGE_ROWS / 10);
    const full = JSON.parse((await cli(files, 'discover', '--json', '--full')).stdout) as DiscoverResult;
    expect(col(full, 'public.big_log', 'body')).toMatchObject({ exact: true, rowsRead: HUGE_ROWS, byVersion: { v1: HUGE_ROWS } });
    expect(full.mode).toBe('full');
  });

  it('what the role cannot read is reported as not checked, not left out', async () => {
    const r = await cli(limited, 'discover', '--json', '--full');
    expect(r.stderr).not.toMatch(/error:/);
    const d = JSON.parse(r.stdout) as DiscoverResult;
    const notChecked = d.notChecked.map((n) => `${n.relation}${n.column ? `.${n.column}` : ''}`);
    expect(notChecked).toEqual(expect.arrayContaining(['public.secret_notes', 'public.partial.hidden', 'public.rls_notes', 'ops.call_log']));
    expect(d.notChecked.find((n) => n.relation === 'public.rls_notes')!.reason).toMatch(/row level security would hide rows/);
    expect(d.notChecked.find((n) => n.relation === 'ops.call_log')!.reason).toMatch(/lacks USAGE on schema ops/);
    expect(d.notChecked.find((n) => n.relation === 'public.secret_notes')!.reason).toMatch(/lacks SELECT/);
    // What it may read is read, with column grants only too.
    expect(col(d, 'public.incidents', 'title')!.byVersion).toEqual({ v1: 300 });
    expect(col(d, 'public.events', 'payload')!.byVersion).toEqual({ v1: 1 });
    const text = await cli(limited, 'discover');
    expect(text.stdout).toMatch(/NOT CHECKED: \d+ relation\(s\) or column\(s\) could not be read/);
  });

  it('verify shows the check (sampled, said so), and --strict counts it', async () => {
    expect((await cli(files, 'backfill')).code).toBe(0);
    const r = await cli(files, 'verify', '--json');
    expect(r.code, r.stdout.slice(-1500)).toBe(0);
    const v = JSON.parse(r.stdout) as VerifyReport;
    expect(v.outsideConfiguration!.mode).toBe('sample');
    // Configured columns are verify's own count, not repeated here.
    expect(v.outsideConfiguration!.columns.some((c) => c.configured !== null)).toBe(false);
    expect(col(v.outsideConfiguration!, 'public.incidents', 'notes')!.oldValues).toBe(150);
    // The matview still holds the v1 copies: the rewrite of incidents.title does not reach it.
    expect(col(v.outsideConfiguration!, 'public.incident_titles', 'title')!.byVersion).toEqual({ v1: 300 });
    const text = await cli(files, 'verify');
    expect(text.stdout).toMatch(/outside the configuration \(columns of other tables, materialized views, json; sampled: /);
    expect(text.stdout).toMatch(/not part of the exit code; `verify --strict` counts it/);
    const strict = await cli(files, 'verify', '--strict');
    expect(strict.code).toBe(1);
    expect(strict.stdout).toMatch(/NOT OK: --strict: \d+ old-version value\(s\) outside the configuration/);
  });

  it('nothing old outside the configuration: discover and verify --strict exit 0', async () => {
    await db.pool.query(`
      refresh materialized view incident_titles;
      refresh materialized view titles_via_view;
      drop materialized view empty_titles;
      update incidents set notes = null;
      truncate ops.call_log, events, big_log, secret_notes, partial, rls_notes, calls, lookalikes;`);
    const d = await cli(files, 'discover');
    expect(d.code, d.stdout.slice(-1500)).toBe(0);
    expect(d.stdout).toContain('no old-version value outside the configured columns');
    const strict = await cli(files, 'verify', '--strict');
    expect(strict.code, strict.stdout.slice(-1500)).toBe(0);
  });
});
