// pg-rekey must see every row before it says "converged" (issue 9, items 2-4; design.md rule 7):
// legacy INHERITS children at any depth are swept, streamed and counted like partitions (also
// ones created or linked under run); a partition or child that leaves a configured table while it
// holds old-version values is listed "outside the configured tables" and holds convergence back
// until it is configured or accepted with `ignore:`; UNLOGGED leaves, which logical decoding never
// sees, are refused by run, and one that turns unlogged under run is no longer followed and holds
// convergence back. Every check is against the superuser's count of v1 values, and no command may
// print a convergence claim while v1 values exist.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { decryptValue, encryptValue } from '../../src/crypto/rewrite.js';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, testRing } from '../support/fixtures.js';
import { spawnCli, type CliProcess, type CliResult } from '../support/cli.js';
import { claimsConvergence } from '../support/claims.js';
import { cli, eventually, startDaemon, writeDaemonFiles, type DaemonFiles, type RunningDaemon } from '../support/daemon.js';

let ring: KeyRing;
const dbs: TestDatabase[] = [];
let daemon: RunningDaemon | null = null;

const v1 = (text: string) => encryptValue(Buffer.from(text), 1, ring);
const plaintext = (v: string) => Buffer.from(decryptValue(v, ring)!).toString();

/** The superuser's count of v1 values in `table` and (without ONLY) every descendant. */
async function v1Count(db: TestDatabase, table: string): Promise<number> {
  return (await db.pool.query(`select count(*)::int as n from ${table} where starts_with(secret, 'v1:')`)).rows[0].n;
}

/** A command's output, asserted free of convergence claims while `table` holds v1 values. */
async function noFalseClaim(db: TestDatabase, table: string, r: CliResult, what: string): Promise<void> {
  const left = await v1Count(db, table);
  if (left > 0) expect(claimsConvergence(r.stdout + r.stderr), `${what} claimed convergence with ${left} v1 value(s) in ${table}:\n${r.stdout}${r.stderr}`).toBe(false);
}

/**
 * Watches a daemon's output: every line claiming convergence is checked against the superuser's
 * count of v1 values at once, and again a moment later (a v1 value the test writes while a check
 * that counted before it logs its verdict is the stream's, and gone by then; one pg-rekey does not
 * see stays). settle() waits for the checks of every line so far.
 */
function watchClaims(proc: CliProcess, db: TestDatabase, tables: string[]) {
  let seen = 0;
  const violations: string[] = [];
  let pending: Promise<void> = Promise.resolve();
  const look = () => {
    for (; seen < proc.lines.length; seen++) {
      const text = proc.lines[seen]!.text;
      if (!/CONVERGED/.test(text)) continue;
      pending = pending.then(async () => {
        for (const t of tables) {
          if ((await v1Count(db, t).catch(() => 0)) === 0) continue;
          await new Promise((r) => setTimeout(r, 1_500));
          const n = await v1Count(db, t).catch(() => 0);
          if (n > 0) violations.push(`${n} v1 value(s) in ${t} when run logged: ${text}`);
        }
      });
    }
  };
  const timer = setInterval(look, 20);
  return {
    async settle(): Promise<string[]> {
      look();
      await pending;
      return violations;
    },
    stop: () => clearInterval(timer),
  };
}

async function newDb(prefix: string): Promise<TestDatabase> {
  const db = await createTestDatabase(prefix);
  dbs.push(db);
  return db;
}

async function stopDaemon(): Promise<void> {
  if (!daemon) return;
  const d = daemon;
  daemon = null;
  const r = await d.proc.stop('SIGTERM', 15_000);
  expect(r.code, r.stderr.slice(-2000)).toBe(0);
}

const linesOf = (d: RunningDaemon, from = 0) => d.proc.lines.slice(from).map((l) => l.text);

beforeAll(async () => {
  ring = await testRing();
});

afterEach(async () => {
  if (daemon) await daemon.proc.stop('SIGKILL');
  daemon = null;
});

afterAll(async () => {
  for (const db of dbs) await db.drop();
});

describe('legacy inheritance', () => {
  it('two levels of INHERITS children with v1 rows in parent and children: verify counts them all, backfill rewrites them all', async () => {
    const db = await newDb('inh_backfill');
    await db.pool.query(`
      create table cases (id bigint primary key, secret text, note text);
      create table cases_2024 (primary key (id)) inherits (cases);
      create table cases_2024_q1 (primary key (id)) inherits (cases_2024);
    `);
    const rows = (from: number, n: number) => Array.from({ length: n }, (_, i) => [from + i, v1(`case ${from + i}`), `note ${from + i}`]);
    await insertBatched(db.pool, 'cases', ['id', 'secret', 'note'], ['bigint', 'text', 'text'], rows(1, 40));
    await insertBatched(db.pool, 'cases_2024', ['id', 'secret', 'note'], ['bigint', 'text', 'text'], rows(1001, 30));
    await insertBatched(db.pool, 'cases_2024_q1', ['id', 'secret', 'note'], ['bigint', 'text', 'text'], rows(2001, 20));
    expect(await v1Count(db, 'cases')).toBe(90);
    const files = writeDaemonFiles(db.url, [{ name: 'cases', columns: ['secret'] }]);
    const setup = await cli(files, 'setup');
    expect(setup.code, setup.stderr).toBe(0);

    const before = await cli(files, 'verify', '--json');
    expect(before.code, before.stderr).toBe(1);
    expect(JSON.parse(before.stdout).remaining).toBe(90); // the parent's own 40 and the children's 50
    await noFalseClaim(db, 'cases', before, 'verify');

    const backfill = await cli(files, 'backfill');
    await noFalseClaim(db, 'cases', backfill, 'backfill');
    expect(backfill.code, backfill.stdout + backfill.stderr).toBe(0);
    for (const rel of ['public.cases', 'public.cases_2024', 'public.cases_2024_q1']) expect(backfill.stdout).toContain(rel);
    expect(await v1Count(db, 'cases')).toBe(0);
    for (const r of (await db.pool.query(`select id, secret, note from cases`)).rows) {
      expect(r.secret.startsWith('v2:')).toBe(true);
      expect(plaintext(r.secret)).toBe(`case ${r.id}`);
      expect(r.note).toBe(`note ${r.id}`);
    }

    const after = await cli(files, 'verify', '--json');
    expect(after.code, after.stdout + after.stderr).toBe(0);
    const report = JSON.parse(after.stdout);
    expect(report.columns[0].byVersion).toEqual({ v2: 90 });
    expect(report.outside).toEqual([]);
  });

  it('under run: children at two levels rewritten; a child created (INHERITS) or linked (INHERIT) under run is streamed and swept; NO INHERIT of a child holding v1 keeps verify at exit 1 until `ignore:`', async () => {
    const db = await newDb('inh_run');
    await db.pool.query(`
      create table calls (id bigint primary key, secret text);
      create table calls_old (primary key (id)) inherits (calls);
      create table calls_old_archive (primary key (id)) inherits (calls_old);
      create table calls_loose (id bigint primary key, secret text);
    `);
    const rows = (from: number, n: number) => Array.from({ length: n }, (_, i) => [from + i, v1(`call ${from + i}`)]);
    for (const [t, from] of [['calls', 1], ['calls_old', 1001], ['calls_old_archive', 2001], ['calls_loose', 3001]] as const) {
      await insertBatched(db.pool, t, ['id', 'secret'], ['bigint', 'text'], rows(from, 25));
    }
    const files = writeDaemonFiles(db.url, [{ name: 'calls', columns: ['secret'] }]);
    const setup = await cli(files, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
    daemon = await startDaemon(files);
    const claims = watchClaims(daemon.proc, db, ['calls']); // the parent and (no ONLY) every child of the moment
    try {
      await eventually('every v1 value of the hierarchy rewritten', async () => (await v1Count(db, 'calls')) === 0, 20_000);

      // A child created under run, with writes only after: it is in no publication until run adds it.
      let from = daemon.proc.lines.length;
      await db.pool.query(`create table calls_new (primary key (id)) inherits (calls)`);
      await daemon.proc.waitForLine(/added public\.calls_new to publication/, { fromIndex: from, timeoutMs: 15_000 });
      for (let id = 4001; id <= 4010; id++) await db.pool.query(`insert into calls_new values ($1, $2)`, [id, v1(`call ${id}`)]);
      await eventually('writes into the created child rewritten', async () => (await v1Count(db, 'calls_new')) === 0, 15_000);

      // A table that holds v1 rows becomes a child: only the sweep can reach those rows.
      from = daemon.proc.lines.length;
      await db.pool.query(`alter table calls_loose inherit calls`);
      await eventually('the linked child swept', async () => (await v1Count(db, 'calls_loose')) === 0, 15_000);
      await db.pool.query(`insert into calls_loose values (3100, $1)`, [v1('call 3100')]);
      await eventually('a later write into the linked child rewritten', async () => (await v1Count(db, 'calls')) === 0, 15_000);
      expect(linesOf(daemon, from).some((l) => /new leaf public\.calls_loose of public\.calls \(inheritance child/.test(l))).toBe(true);
      for (const r of (await db.pool.query(`select id, secret from calls`)).rows) expect(plaintext(r.secret)).toBe(`call ${r.id}`);
      await daemon.proc.waitForLine(/CONVERGED/, { fromIndex: from, timeoutMs: 20_000 });
      expect(await claims.settle()).toEqual([]);
    } finally {
      claims.stop();
    }
    await stopDaemon();

    // A grandchild unlinked while it holds v1 values (written while run was stopped).
    for (let id = 2101; id <= 2107; id++) await db.pool.query(`insert into calls_old_archive values ($1, $2)`, [id, v1(`call ${id}`)]);
    await db.pool.query(`alter table calls_old_archive no inherit calls_old`);
    expect(await v1Count(db, 'calls')).toBe(0);
    expect(await v1Count(db, 'calls_old_archive')).toBe(7);
    const verify = await cli(files, 'verify');
    expect(verify.code, verify.stdout + verify.stderr).toBe(1);
    expect(verify.stdout).toContain('outside the configured tables');
    expect(verify.stdout).toMatch(/public\.calls_old_archive was a leaf of public\.calls .*holds 7 old-version value/);
    await noFalseClaim(db, 'calls_old_archive', verify, 'verify');
    const json = JSON.parse((await cli(files, 'verify', '--json')).stdout);
    expect(json.outside).toMatchObject([{ relation: 'public.calls_old_archive', wasPartOf: 'public.calls', ignored: false, remaining: 7 }]);

    // run does not converge over it either.
    daemon = await startDaemon(files);
    const line = await daemon.proc.waitForLine((t) => /not converged yet/.test(t) && t.includes('calls_old_archive'), { timeoutMs: 20_000 });
    expect(JSON.parse(line.text).remaining).toBe(0);
    expect(linesOf(daemon).some((l) => /CONVERGED/.test(l))).toBe(false);
    await stopDaemon();

    // Accepted explicitly: verify passes, and still shows it.
    const accepted = writeDaemonFiles(db.url, [{ name: 'calls', columns: ['secret'] }], { ignore: ['calls_old_archive'] });
    const ok = await cli(accepted, 'verify');
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/ignored .*public\.calls_old_archive \(7 old-version value/);
    const run = await cli(accepted, 'run', '--exit-when-converged');
    expect(run.code, run.stderr.slice(-3000)).toBe(0);
  });
});

describe('a new INHERITS child as a role that may not alter the publication', () => {
  const ROLE = `ser_worker_${process.pid}`;
  afterAll(async () => {
    // Roles are cluster-wide: drop what it owns here (its state schema, its grants), then the role.
    const db = dbs.find((d) => d.name.startsWith('inh_leastpriv'));
    if (!db) return;
    await db.pool.query(`select pg_terminate_backend(pid) from pg_stat_activity where usename = $1`, [ROLE]).catch(() => undefined);
    await db.pool.query(`drop publication if exists pgrekey_ser; drop schema if exists pgrekey cascade; drop owned by ${ROLE}; drop role if exists ${ROLE}`).catch((e) => console.log(`cleanup of ${ROLE}: ${(e as Error).message}`));
  });

  it('run names the ALTER PUBLICATION its owner runs, still sweeps the child, and does not converge until it is published', async () => {
    const db = await newDb('inh_leastpriv');
    await db.pool.query(`
      create table notes (id bigint primary key, secret text);
      create table notes_a (primary key (id)) inherits (notes);
      drop role if exists ${ROLE};
      create role ${ROLE} login replication password 'pw';
      grant connect on database "${db.name}" to ${ROLE};
      create schema pgrekey authorization ${ROLE};
      grant select, update (secret) on notes, notes_a to ${ROLE};
      create publication pgrekey_ser for table notes with (publish = 'insert, update');
    `);
    await insertBatched(db.pool, 'notes', ['id', 'secret'], ['bigint', 'text'], Array.from({ length: 20 }, (_, i) => [i + 1, v1(`note ${i + 1}`)]));
    await insertBatched(db.pool, 'notes_a', ['id', 'secret'], ['bigint', 'text'], Array.from({ length: 20 }, (_, i) => [101 + i, v1(`note ${101 + i}`)]));
    const url = new URL(db.url);
    url.username = ROLE;
    url.password = 'pw';
    const files = writeDaemonFiles(url.toString(), [{ name: 'notes', columns: ['secret'] }], { replication: { publication: 'pgrekey_ser' } });
    const setup = await cli(files, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
    daemon = await startDaemon(files);
    const claims = watchClaims(daemon.proc, db, ['notes']);
    try {
      await eventually('the hierarchy rewritten', async () => (await v1Count(db, 'notes')) === 0, 20_000);
      await daemon.proc.waitForLine(/CONVERGED/, { timeoutMs: 20_000 });

      // The owner creates a child (and grants on it) and writes v1 values to it.
      let from = daemon.proc.lines.length;
      await db.pool.query(`begin; create table notes_b (primary key (id)) inherits (notes); grant select, update (secret) on notes_b to ${ROLE}; commit`);
      await insertBatched(db.pool, 'notes_b', ['id', 'secret'], ['bigint', 'text'], Array.from({ length: 10 }, (_, i) => [201 + i, v1(`note ${201 + i}`)]));
      const refused = await daemon.proc.waitForLine(/public\.notes_b \(a leaf of public\.notes\) is not in publication pgrekey_ser, and this role could not add it/, { fromIndex: from, timeoutMs: 15_000 });
      expect(refused.text).toContain('ALTER PUBLICATION \\"pgrekey_ser\\" ADD TABLE ONLY \\"public\\".\\"notes_b\\"');
      await eventually('the unpublished child swept anyway', async () => (await v1Count(db, 'notes_b')) === 0, 15_000);
      await daemon.proc.waitForLine((t) => /not converged yet/.test(t) && t.includes('notes_b is not in publication'), { fromIndex: from, timeoutMs: 20_000 });
      expect(linesOf(daemon, from).filter((l) => /CONVERGED|not converged|notes_b/.test(l))).not.toContainEqual(expect.stringMatching(/CONVERGED/));
      const verify = await cli(files, 'verify');
      expect(verify.code, verify.stdout + verify.stderr).toBe(1);
      expect(verify.stdout).toContain('public.notes_b is not in publication pgrekey_ser');
      expect(claimsConvergence(verify.stdout)).toBe(false);

      // Its owner publishes it: run notices, sweeps it again, and its writes are streamed.
      from = daemon.proc.lines.length;
      await db.pool.query(`alter publication pgrekey_ser add table only notes_b`);
      await daemon.proc.waitForLine(/new leaf public\.notes_b of public\.notes \(now in the publication\)/, { fromIndex: from, timeoutMs: 15_000 });
      await db.pool.query(`insert into notes_b values (300, $1)`, [v1('note 300')]);
      await eventually('a write into the published child rewritten', async () => (await v1Count(db, 'notes')) === 0, 15_000);
      await daemon.proc.waitForLine(/CONVERGED/, { fromIndex: from, timeoutMs: 20_000 });
      expect(await claims.settle()).toEqual([]);
    } finally {
      claims.stop();
    }
    await stopDaemon();
  });
});

describe('what leaves the configuration', () => {
  it('DETACH PARTITION of a partition the sweep has not reached: run logs it with its count and does not converge; verify exits 1 naming it, never 0, until `ignore:`', async () => {
    const db = await newDb('detach');
    await db.pool.query(`
      create table events (region text not null, id bigint not null, secret text, pad text, primary key (region, id)) partition by list (region);
      create table events_a partition of events for values in ('a');
      create table events_b partition of events for values in ('b');
    `);
    const pad = 'p'.repeat(300);
    await insertBatched(db.pool, 'events', ['region', 'id', 'secret', 'pad'], ['text', 'bigint', 'text', 'text'], Array.from({ length: 1200 }, (_, i) => ['a', i + 1, v1(`a ${i + 1}`), pad]));
    // events_b holds target values only: once events_a is detached, a count of `events` alone finds nothing to do.
    await insertBatched(db.pool, 'events', ['region', 'id', 'secret', 'pad'], ['text', 'bigint', 'text', 'text'], Array.from({ length: 20 }, (_, i) => ['b', i + 1, encryptValue(Buffer.from(`b ${i + 1}`), 2, ring), 'p']));
    // One block per chunk, a long pause after each: events_a (swept first) is far from done when it leaves.
    const files = writeDaemonFiles(db.url, [{ name: 'events', columns: ['secret'] }], { sweep: { chunk_time: 0, chunk_blocks: 1, nice_ratio: 100 } });
    expect((await cli(files, 'setup')).code).toBe(0);
    daemon = await startDaemon(files);
    const claims = watchClaims(daemon.proc, db, ['events', 'events_a']);
    try {
      await eventually('the sweep has started on events_a', async () => {
        const r = await db.pool.query(`select next_block::int as b from pgrekey.sweep_segment where relation = 'public.events_a'`);
        return (r.rows[0]?.b ?? 0) >= 1;
      }, 15_000);
      const from = daemon.proc.lines.length;
      await db.pool.query(`alter table events detach partition events_a`);
      // What is left of `events` converges: a write to it is the stream's.
      await db.pool.query(`insert into events values ('b', 100, $1, 'p')`, [v1('b 100')]);
      await eventually('the write into events_b rewritten', async () => (await v1Count(db, 'events')) === 0, 20_000);
      expect(await v1Count(db, 'events_a')).toBeGreaterThan(1000);

      for (let i = 0; i < 2; i++) {
        const verify = await cli(files, 'verify', '--json');
        await noFalseClaim(db, 'events_a', verify, 'verify');
        expect(verify.code, verify.stdout + verify.stderr).toBe(1);
        const report = JSON.parse(verify.stdout);
        expect(report.remaining).toBe(0);
        expect(report.outside).toMatchObject([{ relation: 'public.events_a', wasPartOf: 'public.events', ignored: false }]);
        expect(report.outside[0].remaining).toBe(await v1Count(db, 'events_a'));
        if (i === 0) await new Promise((r) => setTimeout(r, 1_500));
      }
      const text = await cli(files, 'verify');
      expect(text.code).toBe(1);
      expect(text.stdout).toMatch(/public\.events_a was a leaf of public\.events .*holds \d+ old-version value/);

      // run's checks, once the sweep of what is left is complete, do not claim convergence either.
      const verdict = await daemon.proc.waitForLine((t) => (/not converged yet/.test(t) && t.includes('events_a')) || /CONVERGED/.test(t), { fromIndex: from, timeoutMs: 20_000 });
      expect(await claims.settle()).toEqual([]);
      expect(verdict.text).not.toMatch(/CONVERGED/);
      const left = await daemon.proc.waitForLine(/public\.events_a is no longer a leaf of public\.events/, { fromIndex: from, timeoutMs: 5_000 });
      const held = JSON.parse(left.text).oldValues as number;
      expect(held).toBeGreaterThan(1000);
      expect(left.text).toContain(`it holds ${held} old-version value(s)`);
      console.log(`detach logged: ${JSON.parse(left.text).msg}`);
      expect(await claims.settle()).toEqual([]);
    } finally {
      claims.stop();
    }
    // Accepted explicitly (the count stays visible): the configured table is converged.
    const accepted = writeDaemonFiles(db.url, [{ name: 'events', columns: ['secret'] }], { ignore: ['public.events_a'] });
    const ok = await cli(accepted, 'verify');
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    expect(ok.stdout).toContain('public.events_a');
  });
});

describe('unlogged relations', () => {
  it('run refuses an UNLOGGED partition with the fix; one switched to UNLOGGED under run is no longer followed and holds convergence back until SET LOGGED', async () => {
    const db = await newDb('unlogged');
    await db.pool.query(`
      create table logs (id bigint primary key, secret text) partition by range (id);
      create table logs_1 partition of logs for values from (0) to (1000);
      create table logs_2 partition of logs for values from (1000) to (2000);
    `);
    await insertBatched(db.pool, 'logs', ['id', 'secret'], ['bigint', 'text'], Array.from({ length: 40 }, (_, i) => [i < 20 ? i + 1 : 1000 + i, v1(`log ${i}`)]));
    const files = writeDaemonFiles(db.url, [{ name: 'logs', columns: ['secret'] }]);
    expect((await cli(files, 'setup')).code).toBe(0);
    await db.pool.query(`alter table logs_2 set unlogged`);
    // setup refuses it too, with the fix, and changes nothing.
    const again = await cli(files, 'setup');
    expect(again.code, again.stderr).toBe(2);
    expect(again.stderr).toContain('ALTER TABLE public.logs_2 SET LOGGED');
    expect(again.stderr).toMatch(/nothing was changed/);

    // Refused at start, with the statement that fixes it (bounded: the old code would just run).
    const proc = spawnCli(['run', ...files.args]);
    const first = await Promise.race([proc.exited.then(() => 'exited'), proc.waitForLine(/pg-rekey run started/, { timeoutMs: 20_000 }).then(() => 'started')]);
    const refused = first === 'exited' ? await proc.exited : await proc.stop('SIGKILL');
    expect(first, refused.stderr).toBe('exited');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('ALTER TABLE public.logs_2 SET LOGGED');
    const verify = await cli(files, 'verify');
    expect(verify.code).toBe(1);
    expect(verify.stdout).toMatch(/public\.logs_2 \(a leaf of public\.logs\) is UNLOGGED/);
    await noFalseClaim(db, 'logs', verify, 'verify');

    await db.pool.query(`alter table logs_2 set logged`);
    daemon = await startDaemon(files);
    const claims = watchClaims(daemon.proc, db, ['logs']);
    try {
      await eventually('every v1 value rewritten', async () => (await v1Count(db, 'logs')) === 0, 20_000);
      await daemon.proc.waitForLine(/CONVERGED/, { timeoutMs: 20_000 });
      expect(await claims.settle()).toEqual([]);

      // Switched to UNLOGGED under run, then written to: run says it no longer follows it, and does not converge.
      const from = daemon.proc.lines.length;
      await db.pool.query(`alter table logs_2 set unlogged`);
      await daemon.proc.waitForLine(/public\.logs_2 \(a leaf of public\.logs\) is UNLOGGED \(SET UNLOGGED\).*no longer sweeps or streams it/, { fromIndex: from, timeoutMs: 15_000 });
      for (let id = 1500; id < 1505; id++) await db.pool.query(`insert into logs values ($1, $2)`, [id, v1(`log ${id}`)]);
      await daemon.proc.waitForLine((t) => /not converged yet/.test(t) && t.includes('logs_2') && t.includes('UNLOGGED'), { fromIndex: from, timeoutMs: 20_000 });
      await new Promise((r) => setTimeout(r, 3_000)); // a few more checks (and what would be a re-sweep)
      expect(await v1Count(db, 'logs_2')).toBe(5);
      expect(await claims.settle()).toEqual([]);

      // Logged again: swept from block 0, converged.
      const relogged = daemon.proc.lines.length;
      await db.pool.query(`alter table logs_2 set logged`);
      await daemon.proc.waitForLine(/new leaf public\.logs_2 of public\.logs \(SET LOGGED again\)/, { fromIndex: relogged, timeoutMs: 15_000 });
      await eventually('the relogged partition swept', async () => (await v1Count(db, 'logs')) === 0, 20_000);
      await daemon.proc.waitForLine(/CONVERGED/, { fromIndex: relogged, timeoutMs: 20_000 });
      expect(await claims.settle()).toEqual([]);
    } finally {
      claims.stop();
    }
    await stopDaemon();

    // backfill alone may still rewrite an unlogged table.
    await db.pool.query(`alter table logs_2 set unlogged`);
    await db.pool.query(`insert into logs values (1600, $1)`, [v1('log 1600')]);
    const backfill = await cli(files, 'backfill', '--restart');
    expect(backfill.code, backfill.stdout + backfill.stderr).toBe(0);
    expect(backfill.stdout).toContain('public.logs_2');
    expect(await v1Count(db, 'logs')).toBe(0);
  });
});
