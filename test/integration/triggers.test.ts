// Triggers are a decision, not a surprise (issue 9, item 5). A BEFORE UPDATE trigger stamping
// updated_at and an AFTER UPDATE audit trigger copying OLD.secret: without `triggers:` in the config
// setup, backfill and run refuse (exit 2) naming them, also for triggers created after setup; with
// `skip` the rewrites (sweep and stream) leave updated_at alone and write no audit row, except an
// ENABLE ALWAYS trigger, which setup reports as still firing; with `fire` they fire (the audit table
// then holds v1 ciphertexts, as the README says). Run as a least-privilege role like sql/roles.sql's;
// `skip` needs GRANT SET ON PARAMETER session_replication_role (15+) or a superuser (14).
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, testRing } from '../support/fixtures.js';
import { createWorkerRole, type WorkerRole } from '../support/worker-role.js';
import { cli, eventually, startDaemon, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';

let ring: KeyRing;
let db: TestDatabase;
let workerUrl: string;
let worker: WorkerRole;
const ROLE = `trg_worker_${process.pid}`;
const PUB = 'pgrekey_trg';
const STAMP = '2000-01-01 00:00:00+00';
const pg15 = () => inject('pgMajor') >= 15;
const v1 = (text: string) => encryptValue(Buffer.from(text), 1, ring);

const files = (url: string, extra: Record<string, unknown> = {}, table: Record<string, unknown> = {}): DaemonFiles =>
  writeDaemonFiles(url, [{ name: 'calls', columns: ['secret'], ...table }], { replication: { publication: PUB }, ...extra });

async function count(sql: string): Promise<number> {
  return (await db.pool.query(sql)).rows[0].n;
}
const v1Left = () => count(`select count(*)::int as n from calls where starts_with(secret, 'v1:')`);
const audited = () => count(`select count(*)::int as n from calls_audit`);
const stamped = () => count(`select count(*)::int as n from calls where updated_at <> '${STAMP}'`);

async function addRows(from: number, n: number): Promise<void> {
  await insertBatched(db.pool, 'calls', ['id', 'secret'], ['bigint', 'text'], Array.from({ length: n }, (_, i) => [from + i, v1(`call ${from + i}`)]));
}

beforeAll(async () => {
  ring = await testRing();
  db = await createTestDatabase('triggers');
  worker = await createWorkerRole(db, ROLE, PUB);
  await db.pool.query(`
    create table calls (id bigint primary key, secret text, note text, updated_at timestamptz not null default '${STAMP}');
    create table calls_audit (id bigint, old_secret text);
    grant select, update (secret) on calls to ${ROLE};
    create publication ${PUB} for table calls with (publish = 'insert, update');
  `);
  await addRows(1, 50);
  workerUrl = worker.url;
});

afterAll(async () => {
  await worker?.drop();
  await db.drop();
});

describe('UPDATE triggers on a configured table', () => {
  it('created after setup, undecided: setup, backfill and run refuse (exit 2) naming them; nothing is written', async () => {
    const undecided = files(workerUrl);
    const first = await cli(undecided, 'setup');
    expect(first.code, first.stderr).toBe(0);
    await db.pool.query(`
      create function touch_row() returns trigger language plpgsql as $$ begin new.updated_at := now(); return new; end $$;
      -- The audit function writes where the pg-rekey role may not: as its owner, as audit triggers do.
      create function audit_row() returns trigger language plpgsql security definer as $$ begin insert into calls_audit values (old.id, old.secret); return null; end $$;
      create function note_row() returns trigger language plpgsql as $$ begin return new; end $$;
      create trigger touch before update on calls for each row execute function touch_row();
      create trigger audit after update of secret on calls for each row execute function audit_row();
      -- UPDATE OF a column pg-rekey never sets: not fired by a rewrite, not listed.
      create trigger unrelated before update of note on calls for each row execute function note_row();
    `);
    for (const cmd of [['setup'], ['backfill'], ['run', '--exit-when-converged']]) {
      const r = await cli(undecided, ...cmd);
      expect(r.code, `${cmd.join(' ')}: ${r.stdout}${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(/public\.calls: trigger\(s\) fire on an UPDATE of secret/);
      expect(r.stderr).toMatch(/"touch" BEFORE ROW \(ENABLE, function touch_row\)/);
      expect(r.stderr).toMatch(/"audit" AFTER ROW \(ENABLE, UPDATE OF secret, function audit_row\)/);
      expect(r.stderr).toMatch(/triggers: fire.*triggers: skip/);
      expect(r.stderr).not.toMatch(/unrelated/);
    }
    expect(await v1Left()).toBe(50);
    expect(await audited()).toBe(0);
    expect(await stamped()).toBe(0);
  });

  it('a trigger created while run is running (no decision): run stops (exit 3) naming it; the next start refuses (exit 2)', async () => {
    const other = await createTestDatabase('triggers_run');
    try {
      await other.pool.query(`create table memo (id bigint primary key, secret text, seen int not null default 0)`);
      const f = writeDaemonFiles(other.url, [{ name: 'memo', columns: ['secret'] }]);
      expect((await cli(f, 'setup')).code).toBe(0);
      const daemon = await startDaemon(f);
      await other.pool.query(`
        create function count_row() returns trigger language plpgsql as $$ begin new.seen := old.seen + 1; return new; end $$;
        create trigger counter before update on memo for each row execute function count_row();`);
      const line = await daemon.proc.waitForLine(/a configured table changed in a way run cannot follow; stopping: .*public\.memo: trigger\(s\) fire on an UPDATE of secret/, { timeoutMs: 20_000 });
      expect(JSON.parse(line.text).msg).toContain('"counter" BEFORE ROW (ENABLE, function count_row)');
      const r = await daemon.proc.exited;
      expect(r.code, r.stderr.slice(-2000)).toBe(3);
      const again = await cli(f, 'run');
      expect(again.code, again.stderr.slice(-2000)).toBe(2);
      expect(again.stderr).toMatch(/"counter" BEFORE ROW \(ENABLE, function count_row\)/);
    } finally {
      await other.drop();
    }
  });

  it('a row trigger of a partitioned table (cloned onto each partition; internal on PostgreSQL 14) is found on the leaves; so is a rule ON UPDATE, which skip skips too', async () => {
    await db.pool.query(`
      create table zones (id bigint primary key, secret text, updated_at timestamptz) partition by range (id);
      create table zones_1 partition of zones for values from (0) to (1000);
      create trigger touch before update on zones for each row execute function touch_row();
      create table ruled (id bigint primary key, secret text);
      create table ruled_log (old_secret text);
      create rule log_update as on update to ruled do also insert into ruled_log values (old.secret);
      insert into ruled values (1, '${v1('ruled 1')}');
    `);
    const tables = [
      { name: 'zones', columns: ['secret'] },
      { name: 'ruled', columns: ['secret'] },
    ];
    const r = await cli(writeDaemonFiles(db.url, tables, { replication: { publication: 'pgrekey_zones' } }), 'setup');
    expect(r.code, r.stdout + r.stderr).toBe(2);
    expect(r.stderr).toMatch(/public\.zones: trigger\(s\) fire on an UPDATE of secret, .*"touch" BEFORE ROW \(ENABLE, function touch_row\) on public\.zones_1/);
    expect(r.stderr).toMatch(/public\.ruled: rule\(s\) fire on an UPDATE of secret, .*rule "log_update" ON UPDATE DO ALSO \(ENABLE\) on public\.ruled/);
    // As the superuser (skip needs one on 14), on the state schema the first test's setup made.
    const b = await cli(writeDaemonFiles(db.url, [{ name: 'ruled', columns: ['secret'], triggers: 'skip' }], { replication: { publication: 'pgrekey_zones' } }), 'backfill');
    expect(b.code, b.stdout + b.stderr).toBe(0);
    expect(await count(`select count(*)::int as n from ruled where starts_with(secret, 'v1:')`)).toBe(0);
    expect(await count(`select count(*)::int as n from ruled_log`)).toBe(0);
  });

  it('`triggers: skip` without the privilege: exit 2 with the GRANT (15+) or the superuser requirement (14)', async () => {
    const r = await cli(files(workerUrl, { triggers: 'skip' }), 'setup');
    expect(r.code, r.stdout + r.stderr).toBe(2);
    if (pg15()) expect(r.stderr).toContain(`GRANT SET ON PARAMETER session_replication_role TO ${ROLE};`);
    else expect(r.stderr).toMatch(/only a superuser may set on PostgreSQL 14/);
    expect(await v1Left()).toBe(50);
  });

  it('`triggers: skip`: backfill and the stream rewrite without stamping updated_at or writing audit rows', async () => {
    // PostgreSQL 14 has no GRANT SET ON PARAMETER: skip needs a superuser there.
    if (pg15()) await db.pool.query(`grant set on parameter session_replication_role to ${ROLE}`);
    const skip = files(pg15() ? workerUrl : db.url, { triggers: 'skip' });
    const setup = await cli(skip, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
    const line = setup.stdout.split('\n').find((l) => l.startsWith('table public.calls: triggers: skip;')) ?? '';
    expect(line, setup.stdout).toMatch(/"touch" BEFORE ROW \(ENABLE, function touch_row\).* do not fire/);
    expect(line).toMatch(/"audit" AFTER ROW \(ENABLE, UPDATE OF secret, function audit_row\).* do not fire/);
    expect(setup.stdout).not.toMatch(/STILL FIRING/);
    const backfill = await cli(skip, 'backfill');
    expect(backfill.code, backfill.stdout + backfill.stderr).toBe(0);
    expect(await v1Left()).toBe(0);
    expect(await stamped()).toBe(0);
    expect(await audited()).toBe(0);

    // The stream's rewrites skip them too; the application's own UPDATE still fires them.
    const daemon = await startDaemon(skip);
    try {
      await addRows(101, 10);
      await db.pool.query(`update calls set secret = $1 where id = 1`, [v1('call 1 again')]);
      await eventually('the stream rewrote the v1 writes', async () => (await v1Left()) === 0, 20_000);
    } finally {
      const r = await daemon.proc.stop('SIGTERM', 15_000);
      expect(r.code, r.stderr.slice(-2000)).toBe(0);
    }
    expect(await stamped()).toBe(1); // row 1, by the application's UPDATE only
    expect(await audited()).toBe(1);
  });

  it('an ENABLE ALWAYS trigger is reported as still firing under `skip`, and does fire', async () => {
    await db.pool.query(`alter table calls enable always trigger audit`);
    try {
    const skip = files(pg15() ? workerUrl : db.url, { triggers: 'skip' });
    const setup = await cli(skip, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
    expect(setup.stdout).toMatch(/STILL FIRING on each rewrite .*"audit" AFTER ROW \(ENABLE ALWAYS/);
    const before = await audited();
    await addRows(201, 10);
    const backfill = await cli(skip, 'backfill');
    expect(backfill.code, backfill.stdout + backfill.stderr).toBe(0);
    // The log says it too, before the first rewrite.
    expect(backfill.stderr).toMatch(/"component":"triggers".*STILL FIRING on each rewrite/);
    expect(await v1Left()).toBe(0);
    expect(await audited()).toBe(before + 10);
    expect(await stamped()).toBe(1); // touch (ENABLE) still skipped
    } finally {
      await db.pool.query(`alter table calls enable trigger audit`);
    }
  });

  it('`triggers: fire` (per table, over a top-level skip): the rewrites fire both; the audit table receives the v1 ciphertexts', async () => {
    const fire = files(workerUrl, { triggers: 'skip' }, { triggers: 'fire' });
    const setup = await cli(fire, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
    const line = setup.stdout.split('\n').find((l) => l.startsWith('table public.calls: triggers: fire; each rewrite fires')) ?? '';
    expect(line, setup.stdout).toMatch(/"touch" BEFORE ROW \(ENABLE,/);
    expect(line).toMatch(/"audit" AFTER ROW \(ENABLE,/);
    const before = await audited();
    await addRows(301, 10);
    const backfill = await cli(fire, 'backfill');
    expect(backfill.code, backfill.stdout + backfill.stderr).toBe(0);
    expect(await v1Left()).toBe(0);
    expect(await stamped()).toBe(11);
    expect(await audited()).toBe(before + 10);
    expect(await count(`select count(*)::int as n from calls_audit where id between 301 and 310 and starts_with(old_secret, 'v1:')`)).toBe(10);
  });

  it('an ENABLE REPLICA trigger: under `skip` reported as still firing and fires on each rewrite (replica mode); under `fire` reported as not fired, and does not fire', async () => {
    await db.pool.query(`alter table calls enable replica trigger audit`);
    try {
      const skip = files(pg15() ? workerUrl : db.url, { triggers: 'skip' });
      const setup = await cli(skip, 'setup');
      expect(setup.code, setup.stderr).toBe(0);
      expect(setup.stdout).toMatch(/STILL FIRING on each rewrite .*"audit" AFTER ROW \(ENABLE REPLICA/);
      let before = await audited();
      const stampedBefore = await stamped();
      await addRows(251, 10);
      const backfill = await cli(skip, 'backfill');
      expect(backfill.code, backfill.stdout + backfill.stderr).toBe(0);
      expect(await v1Left()).toBe(0);
      expect(await audited()).toBe(before + 10); // fired by the rewrites, in replica mode
      expect(await stamped()).toBe(stampedBefore); // touch (ENABLE) skipped

      const fire = files(workerUrl, {}, { triggers: 'fire' });
      const setupFire = await cli(fire, 'setup');
      expect(setupFire.code, setupFire.stderr).toBe(0);
      const line = setupFire.stdout.split('\n').find((l) => l.startsWith('table public.calls: triggers: fire;')) ?? '';
      expect(line, setupFire.stdout).toMatch(/not fired \(ENABLE REPLICA, only in replica mode\): .*"audit" AFTER ROW/);
      before = await audited();
      await addRows(261, 10); // the application's INSERTs (origin mode): the UPDATE trigger is not involved
      const backfillFire = await cli(fire, 'backfill');
      expect(backfillFire.code, backfillFire.stdout + backfillFire.stderr).toBe(0);
      expect(await v1Left()).toBe(0);
      expect(await audited()).toBe(before); // not fired outside replica mode
      expect(await stamped()).toBe(stampedBefore + 10); // touch (ENABLE) fired on each rewrite
    } finally {
      await db.pool.query(`alter table calls enable trigger audit`);
    }
  });
});

describe('triggers: skip and foreign keys', () => {
  it('refuses skip on a configured column in a foreign key (replica mode would leave the key unchecked)', async () => {
    await db.pool.query(`
      create table fk_parent (k text primary key);
      create table fk_child (id bigint primary key, k text references fk_parent (k));`);
    const f = writeDaemonFiles(db.url, [{ name: 'fk_child', columns: ['k'], triggers: 'skip' }], { replication: { slot: `fk_${db.name}`.slice(0, 63), publication: 'pgrekey_fk' } });
    const setup = await cli(f, 'setup');
    expect(setup.code, setup.stderr).toBe(2);
    expect(setup.stderr).toMatch(/public\.fk_child: `triggers: skip` would also skip the foreign key fk_child_k_fkey \(FOREIGN KEY \(k\) REFERENCES fk_parent\(k\)\)/);
    const fire = writeDaemonFiles(db.url, [{ name: 'fk_child', columns: ['k'], triggers: 'fire' }], { replication: { slot: `fk_${db.name}`.slice(0, 63), publication: 'pgrekey_fk' } });
    const ok = await cli(fire, 'backfill', '--dry-run');
    expect(ok.code, ok.stderr).toBe(0);
  });
});
