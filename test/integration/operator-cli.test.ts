// A DBA's first hour (issue 12): the CLI as a user runs it (the bin through its shebang, an installed
// package), its help, its hints and its logs.
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { repoRoot, runCli, spawnCli, type CliResult } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { guardProcess } from '../support/guard.js';
import { createIncidentsTable, fillIncidents, keyEnv, testRing, writeCliFiles, type CliFiles } from '../support/fixtures.js';

const output = (r: CliResult) => r.stdout + r.stderr;

describe('the CLI as a user runs it', () => {
  it('a mistyped --env-file is pg-rekey\'s error (exit 2), not Node\'s (exit 9)', async () => {
    const f = writeCliFiles({ tables: [{ name: 'incidents', columns: ['title'] }] });
    const r = await runCli(['-c', f.configPath, '--env-file', path.join(f.dir, '.env.locl'), 'backfill']);
    expect(r.code, output(r)).toBe(2);
    expect(r.stderr).toMatch(/cannot read env file .*\.env\.locl: ENOENT/);
    expect(r.stderr).not.toMatch(/^node:/m);
  });

  it('every subcommand --help lists the global options', async () => {
    for (const cmd of ['setup', 'backfill', 'run', 'verify', 'status', 'teardown', 'set']) {
      const r = await runCli([cmd, '--help']);
      expect(r.code, cmd).toBe(0);
      for (const flag of ['-c, --config', '--env-file', '--database-url', '--log-level', '--log-format']) expect(r.stdout, `${cmd} --help`).toContain(flag);
    }
  });

  it('--help names every documented exit case, and status --help says what STARTING, paused and stale mean', async () => {
    const main = await runCli(['--help']);
    expect(main.code).toBe(0);
    const exit = main.stdout.slice(main.stdout.indexOf('Exit codes:'), main.stdout.indexOf('Typical rotation:')).replace(/\s+/g, ' ');
    // README's Exit codes and Failure modes: each case, in the code it exits with.
    for (const [code, cases] of [
      ['1', ['verify', 'discover', 'backfill', 'run --exit-when-converged', 'report']],
      ['2', ['keys', 'triggers without a decision', 'a slot held by another run', 'teardown refusing', '--drop-state']],
      ['3', ['database unreachable', 'wrong key', 'interrupted', 'a lost lease', 'critical load', 'daemon.shutdown_timeout', 'a configured table changed']],
    ] as const) {
      const text = exit.slice(exit.indexOf(` ${code} `), code === '3' ? undefined : exit.indexOf(` ${Number(code) + 1} `));
      for (const c of cases) expect(text, `exit ${code}: ${c}`).toContain(c);
    }
    expect(main.stdout).toMatch(/pg-rekey grants > grants\.sql/);
    const status = await runCli(['status', '--help']);
    expect(status.code).toBe(0);
    const help = status.stdout.replace(/\s+/g, ' ');
    for (const word of ['STARTING', 'STALE', 'NOT RUNNING', 'STOPPED', '(paused)', '(throttled)', "size when its pass started", 'verify', 'Exit codes: 0', '2 no state schema', '3 database unreachable']) {
      expect(help, word).toContain(word);
    }
  });

  it('`set` takes the config file spelling and says "did you mean" for a near miss', async () => {
    const f = writeCliFiles({ databaseUrl: 'postgres://postgres@127.0.0.1:1/nowhere', tables: [{ name: 'incidents', columns: ['title'] }] });
    const near = await runCli(['-c', f.configPath, 'set', 'nice-ration=8']);
    expect(near.code).toBe(2);
    expect(near.stderr).toContain('nice-ration: not a runtime setting (did you mean nice-ratio?)');
    // Parsed fine: it gets as far as connecting (and fails there, exit 3), not "expected name=value".
    const snake = await runCli(['-c', f.configPath, 'set', 'nice_ratio=8']);
    expect(snake.code, output(snake)).toBe(3);
    expect(snake.stderr).toContain('cannot connect to PostgreSQL');
  });
});

describe('against PostgreSQL', () => {
  let db: TestDatabase;
  let f: CliFiles;
  afterAll(async () => {
    await db?.drop();
  });
  beforeAll(async () => {
    db = await createTestDatabase('operator_cli');
    await createIncidentsTable(db.pool, 'incidents');
    await db.pool.query(`alter table incidents add column "Note" text`);
    await fillIncidents(db.pool, 'incidents', await testRing(), { rows: 300, mix: { v1: 0.5, v2: 0.5, null: 0, notOurs: 0 } });
    f = writeCliFiles({ databaseUrl: db.url, tables: [{ name: 'incidents', columns: ['title', 'raw_xml'] }], replication: { slot: db.name } });
  });

  it('names that are not found say "did you mean", quoted when the case needs it', async () => {
    const bad = writeCliFiles({ databaseUrl: db.url, tables: [{ name: 'incident', columns: ['title'] }, { name: 'incidents', columns: ['titel', 'note'] }], replication: { slot: db.name } });
    const r = await runCli(['-c', bad.configPath, '--env-file', bad.envPath, 'backfill', '--dry-run']);
    expect(r.code, output(r)).toBe(2);
    expect(r.stderr).toContain('public.incident: no such table (did you mean public.incidents?)');
    expect(r.stderr).toContain('public.incidents.titel: no such column (did you mean title?)');
    expect(r.stderr).toContain(`public.incidents.note: no such column (did you mean '"Note"'?)`);
  });

  it('--log-format: pretty lines (ISO time, level name, component) or JSON lines', async () => {
    const pretty = await runCli(['-c', f.configPath, '--env-file', f.envPath, '--log-format', 'pretty', 'backfill', '--dry-run']);
    expect(pretty.code, output(pretty)).toBe(0);
    const lines = pretty.stderr.split('\n').filter(Boolean);
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines) expect(l).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (TRACE|DEBUG|INFO |WARN |ERROR|FATAL) /);
    expect(pretty.stderr).toMatch(/INFO  sweep +relation scanned \(dry run, nothing written\) .*wouldRewrite=\d+/);
    expect(pretty.stderr).not.toMatch(/\brewritten=/);

    const json = await runCli(['-c', f.configPath, '--env-file', f.envPath, '--log-format', 'json', 'backfill', '--dry-run']);
    expect(json.code).toBe(0);
    const objs = json.stderr.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { level: number; time: number; msg: string });
    expect(objs.some((o) => o.msg === 'relation scanned (dry run, nothing written)')).toBe(true);
    for (const o of objs) expect(typeof o.time).toBe('number');
  });

  it("hints say what works: no keygen for a missing target key, verify points to the runbook's `run`, a writing backfill before setup says to run setup first", async () => {
    const fresh = await createTestDatabase('operator_nosetup');
    try {
      await createIncidentsTable(fresh.pool, 'incidents');
      await fillIncidents(fresh.pool, 'incidents', await testRing(), { rows: 40, mix: { v1: 1, v2: 0, null: 0, notOurs: 0 } });
      const tables = [{ name: 'incidents', columns: ['title'] }];
      const cfg = writeCliFiles({ databaseUrl: fresh.url, tables, replication: { slot: fresh.name } });
      // The target key missing: a key made by keygen would open none of the values the applications wrote with v2.
      const noTarget = writeCliFiles({ databaseUrl: fresh.url, tables, replication: { slot: fresh.name }, env: { ...keyEnv(2, [1]) } });
      const missing = await runCli(['-c', noTarget.configPath, '--env-file', noTarget.envPath, 'backfill', '--dry-run']);
      expect(missing.code, output(missing)).toBe(2);
      expect(missing.stderr).toContain('target version v2 has no key: set LIBSODIUM_ENCRYPTION_KEY_V2');
      expect(missing.stderr).toMatch(/^hint: .*copy them from the application's secret store or \.env\.local: a key made here would open none of the stored values/m);
      expect(missing.stderr).not.toMatch(/keygen/);
      // verify with v1 rows: what rewrites them, as the runbook's step 4 does (`pg-rekey run`).
      const verify = await runCli(['-c', cfg.configPath, '--env-file', cfg.envPath, 'verify']);
      expect(verify.code, output(verify)).toBe(1);
      expect(verify.stdout).toMatch(/NOT converged: 40 value\(s\) are not at v2; `pg-rekey run` \(or `pg-rekey backfill`\) rewrites them/);
      // A writing backfill before setup: exit 2, run setup first; the dry run works before setup (README).
      const early = await runCli(['-c', cfg.configPath, '--env-file', cfg.envPath, 'backfill']);
      expect(early.code, output(early)).toBe(2);
      expect(early.stderr).toContain('the pgrekey state schema is missing or out of date');
      expect(early.stderr).toMatch(/^hint: run `pg-rekey setup` first \(it is idempotent\)/m);
      const dry = await runCli(['-c', cfg.configPath, '--env-file', cfg.envPath, 'backfill', '--dry-run']);
      expect(dry.code, output(dry)).toBe(0);
    } finally {
      await fresh.drop();
    }
  });

  it('a password the server asks for: read from ~/.pgpass without a DeprecationWarning; without one, a hint naming .pgpass and PGPASSWORD', async (ctx) => {
    if (inject('pgBackend') !== 'embedded binaries') ctx.skip(); // it edits the server's pg_hba.conf
    const role = `pw_${db.name}`.slice(0, 60);
    const password = `pw-${Date.now()}`;
    const hbaFile = (await db.pool.query<{ f: string }>(`select current_setting('hba_file') as f`)).rows[0]!.f;
    await db.pool.query(`create role ${role} login superuser password '${password}'`);
    // First match wins: this role, and only it, must give a password.
    writeFileSync(hbaFile, `host all ${role} 127.0.0.1/32 scram-sha-256\n${readFileSync(hbaFile, 'utf8')}`);
    await db.pool.query('select pg_reload_conf()');
    const url = new URL(db.url);
    url.username = role;
    const home = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-home-'));
    const noPass = await runCli(['-c', f.configPath, '--database-url', url.toString(), 'verify'], { env: { ...keyEnv(), HOME: home } });
    expect(noPass.code, output(noPass)).toBe(3);
    expect(noPass.stderr).toMatch(/^hint: .*~\/\.pgpass.*PGPASSWORD/m);

    const pgpass = path.join(home, '.pgpass');
    writeFileSync(pgpass, `127.0.0.1:${url.port}:*:${role}:${password}\n`);
    chmodSync(pgpass, 0o600);
    const withPass = await runCli(['-c', f.configPath, '--database-url', url.toString(), 'verify'], { env: { ...keyEnv(), HOME: home } });
    expect([0, 1], output(withPass)).toContain(withPass.code);
    expect(withPass.stdout).toContain('public.incidents');
    expect(output(withPass)).not.toMatch(/DeprecationWarning|pgpass support is deprecated/);

    // systemd's LoadCredential= (PGPASSFILE=%d/pgpass) shows the file as 0440: accepted inside $CREDENTIALS_DIRECTORY only.
    const creds = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-creds-'));
    const credFile = path.join(creds, 'pgpass');
    writeFileSync(credFile, `127.0.0.1:${url.port}:*:${role}:${password}\n`);
    chmodSync(credFile, 0o440);
    const empty = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-home-'));
    const viaCredential = await runCli(['-c', f.configPath, '--database-url', url.toString(), 'verify'], { env: { ...keyEnv(), HOME: empty, PGPASSFILE: credFile, CREDENTIALS_DIRECTORY: creds } });
    expect([0, 1], output(viaCredential)).toContain(viaCredential.code);
    const groupReadable = await runCli(['-c', f.configPath, '--database-url', url.toString(), 'verify'], { env: { ...keyEnv(), HOME: empty, PGPASSFILE: credFile } });
    expect(groupReadable.code, output(groupReadable)).toBe(3);
  });

  it('status tells the truth: a paused sweep has no rate or ETA, a starting daemon is starting, a count older than a backfill says so', async () => {
    const slot = db.name;
    const setup = await runCli(['-c', f.configPath, '--env-file', f.envPath, 'setup']);
    expect(setup.code, output(setup)).toBe(0);
    const status = async () => {
      const json = await runCli(['-c', f.configPath, 'status', '--json']);
      const text = await runCli(['-c', f.configPath, 'status']);
      expect([json.code, text.code], output(json) + output(text)).toEqual([0, 0]);
      type Json = {
        sweep: { shown: string; state: string; rowsPerSec: number | null; etaSeconds: number | null }[];
        replication: { starting: unknown; converged: boolean };
        overall: { remaining: { source: string; remaining: number | null } | null; rowsPerSec: number | null };
      };
      return { json: JSON.parse(json.stdout) as Json, text: text.stdout };
    };
    // A sweep caught mid-relation (as a run leaves it) with a recent rate.
    await db.pool.query(`update pgrekey.sweep_segment set state = 'running', next_block = 1, total_blocks = 10, started_at = now() - interval '10 s', rows_per_sec = 500`);
    expect((await runCli(['-c', f.configPath, 'pause', '--reason', 'business hours'])).code).toBe(0);
    const paused = await status();
    expect(paused.json.sweep[0]).toMatchObject({ state: 'running', shown: 'paused', rowsPerSec: null, etaSeconds: null });
    expect(paused.text).toMatch(/PAUSED: no ETA/);
    expect(paused.text).not.toMatch(/\brunning\b.*\b500\b/);
    expect((await runCli(['-c', f.configPath, 'resume'])).code).toBe(0);

    // A run that holds the slot's lease before its first heartbeat.
    const lease = new pg.Client({ connectionString: db.url });
    await lease.connect();
    try {
      await lease.query(`select pg_advisory_lock(hashtext('pg-rekey'), hashtext($1))`, [slot]);
      const starting = await status();
      expect(starting.json.replication.starting).not.toBeNull();
      expect(starting.text).toMatch(/daemon: `pg-rekey run` is STARTING/);
      expect(starting.text).not.toMatch(/has not run yet/);
    } finally {
      await lease.end();
    }

    // The daemon's last count (an hour ago: not converged), then a backfill that converged.
    await db.pool.query(`insert into pgrekey.daemon (slot_name, host, pid, started_at, heartbeat_at, remaining, quarantined, last_check_at, stopped_at)
                         values ($1, 'h', 1, now() - interval '2 h', now() - interval '1 h', 150, 0, now() - interval '1 h', now() - interval '1 h')
                         on conflict (slot_name) do update set last_check_at = excluded.last_check_at, remaining = 150, converged_at = null`, [slot]);
    const backfill = await runCli(['-c', f.configPath, '--env-file', f.envPath, 'backfill']);
    expect(backfill.code, output(backfill)).toBe(0);
    const after = await status();
    expect(after.text).toMatch(/that check is older than the latest backfill: a backfill \(run \d+\) finished after it, .*no old-version value left then/);
    // One overall line: the newest count (the backfill's, with its age) and the rate now.
    expect(after.text).toMatch(/^sweep: \d+ of \d+ relation\(s\) done, .*; 0 old-version value\(s\) left at the newest count \(backfill, \d+s ago, converged\); nothing rewriting now$/m);

    // Then a verify: its count is the newest, and the daemon's check is older than it too.
    const verify = await runCli(['-c', f.configPath, '--env-file', f.envPath, 'verify']);
    expect([0, 1], output(verify)).toContain(verify.code);
    const verdict = verify.code === 0 ? 'converged' : 'NOT converged';
    const afterVerify = await status();
    expect(afterVerify.text).toContain(`that check is older than the latest verify: a verify at `);
    expect(afterVerify.text).toMatch(new RegExp(`that check is older than the latest verify: a verify at \\S+ on \\S+ counted 0 old-version value\\(s\\) \\(${verdict}\\)`));
    expect(afterVerify.json.overall.remaining).toMatchObject({ source: 'verify', remaining: 0 });
    expect(afterVerify.json.overall.rowsPerSec).toBeNull();
  });

  it('an interrupted backfill reports the blocks it swept, not the relation size, and exits 3', async () => {
    await createIncidentsTable(db.pool, 'long_table');
    await fillIncidents(db.pool, 'long_table', await testRing(), { rows: 20_000, seed: 3, mix: { v1: 0.9, v2: 0.1, null: 0, notOurs: 0 } });
    const slow = writeCliFiles({ databaseUrl: db.url, tables: [{ name: 'long_table', columns: ['title'] }], sweep: { chunk_time: 0, chunk_blocks: 1, nice_ratio: 3, progress_interval: '0ms' }, replication: { slot: db.name } });
    expect((await runCli(['-c', slow.configPath, '--env-file', slow.envPath, 'setup'])).code).toBe(0);
    const proc = spawnCli(['-c', slow.configPath, '--env-file', slow.envPath, '--log-format', 'json', 'backfill', '--json']);
    await proc.waitForLine((t) => t.includes('"sweep progress"') && (JSON.parse(t) as { block: number }).block >= 10, { timeoutMs: 60_000 });
    const r = await proc.stop('SIGINT', 30_000);
    expect(r.code, output(r)).toBe(3);
    const summary = JSON.parse(r.stdout) as { relations: { relation: string; blocks: number }[] };
    const size = Number((await db.pool.query<{ n: string }>(`select pg_relation_size('long_table') / 8192 as n`)).rows[0]!.n);
    const swept = summary.relations.find((x) => x.relation === 'public.long_table')!.blocks;
    expect(swept).toBeGreaterThanOrEqual(10);
    expect(swept).toBeLessThan(size);
  });

  it('progress counts against the size when the pass started: a table that grows as rows are rewritten never makes % go back', async () => {
    // Every row v1 and no room on its page (fillfactor 100, no autovacuum): every rewrite appends a new row version.
    await db.pool.query(`create table growing (id bigint primary key, title text, raw_xml text) with (fillfactor = 100, autovacuum_enabled = false)`);
    // Enough rows that the pass outlasts the pause taking effect (the throttle checks every 50 ms here) by seconds.
    await fillIncidents(db.pool, 'growing', await testRing(), { rows: 20_000, seed: 5, mix: { v1: 1, v2: 0, null: 0, notOurs: 0 } });
    const blocks = async () => Number((await db.pool.query<{ n: string }>(`select pg_relation_size('growing') / current_setting('block_size')::int as n`)).rows[0]!.n);
    const startSize = await blocks();
    const cfg = writeCliFiles({ databaseUrl: db.url, tables: [{ name: 'growing', columns: ['title'] }], sweep: { chunk_time: 0, chunk_blocks: 2, nice_ratio: 1, progress_interval: '0ms' }, throttle: { check_interval: '50ms' }, replication: { slot: db.name } });
    expect((await runCli(['-c', cfg.configPath, '--env-file', cfg.envPath, 'setup'])).code).toBe(0);
    type Seg = { relation: string; state: string; shown: string; percent: number; blocksDone: number; blocksOf: number; totalBlocks: number | null; tailBlocks: number };
    const status = async (): Promise<{ seg: Seg; overall: { blocksTotal: number; percent: number } }> => {
      const r = await runCli(['-c', cfg.configPath, 'status', '--json']);
      expect(r.code, output(r)).toBe(0);
      const j = JSON.parse(r.stdout) as { sweep: Seg[]; overall: { blocksTotal: number; percent: number } };
      return { seg: j.sweep.find((x) => x.relation === 'public.growing')!, overall: j.overall };
    };
    const proc = spawnCli(['-c', cfg.configPath, '--env-file', cfg.envPath, '--log-format', 'json', 'backfill']);
    const progress = (t: string) => (t.includes('"sweep progress"') ? (JSON.parse(t) as { block: number; blocks: number; percent: number; tailBlocks?: number }) : null);
    // Well into the pass, with the table already grown: hold the sweep there (pause) and ask status.
    await proc.waitForLine((t) => (progress(t)?.percent ?? 0) >= 20 && (progress(t)?.tailBlocks ?? 0) > 0, { timeoutMs: 60_000 });
    let mid: Awaited<ReturnType<typeof status>>;
    try {
      await db.pool.query(`update pgrekey.control set paused = true, paused_by = 'test', paused_at = now()`);
      await proc.waitForLine(/"sweep throttled"/, { timeoutMs: 30_000 });
      mid = await status();
    } finally {
      // Never leave the switch on for the next test of this database.
      await db.pool.query(`update pgrekey.control set paused = false`);
    }
    const r = await proc.exited;
    expect(r.code, output(r)).toBe(0);
    const end = await status();

    expect(await blocks(), 'the table grew as its rows were rewritten').toBeGreaterThan(startSize * 1.3);
    expect(mid.seg.totalBlocks!).toBeGreaterThan(startSize);
    expect(mid.seg).toMatchObject({ blocksOf: startSize, shown: 'paused' });
    // (The pause may take effect once the pass is in the tail: 100% of the starting size, not less.)
    expect(mid.seg.percent).toBeGreaterThanOrEqual(20);
    expect(mid.seg.percent).toBe(Number(((100 * mid.seg.blocksDone) / startSize).toFixed(1)));
    expect(end.seg).toMatchObject({ state: 'done', blocksOf: startSize, blocksDone: startSize, percent: 100 });
    expect(end.seg.tailBlocks).toBeGreaterThan(0);
    // The backfill's own progress: never backwards, always out of the starting size.
    const lines = r.stderr.split('\n').map(progress).filter((p) => p !== null);
    expect(lines.length).toBeGreaterThan(10);
    for (const [i, p] of lines.entries()) {
      expect(p.blocks, `progress line ${i}`).toBe(startSize);
      if (i > 0) expect(p.percent, `progress line ${i}`).toBeGreaterThanOrEqual(lines[i - 1]!.percent);
    }
    expect(lines.at(-1)!.percent).toBe(100);
  });

  it('backfill on a terminal (a pty): pretty log lines by default, never torn through the progress bar', async (ctx) => {
    if (!existsSync('/usr/bin/script')) ctx.skip(); // util-linux's script gives the CLI a pty
    await createIncidentsTable(db.pool, 'on_tty');
    await fillIncidents(db.pool, 'on_tty', await testRing(), { rows: 1500, seed: 9, mix: { v1: 1, v2: 0, null: 0, notOurs: 0 } });
    const cfg = writeCliFiles({ databaseUrl: db.url, tables: [{ name: 'on_tty', columns: ['title'] }], sweep: { chunk_time: 0, chunk_blocks: 1, nice_ratio: 2, progress_interval: '0ms' }, replication: { slot: db.name } });
    expect((await runCli(['-c', cfg.configPath, '--env-file', cfg.envPath, 'setup'])).code).toBe(0);
    const q = (x: string) => `'${x.replace(/'/g, `'\\''`)}'`;
    const cmd = [path.join(repoRoot, 'bin', 'pg-rekey.js'), '-c', cfg.configPath, '--env-file', cfg.envPath, 'backfill'].map(q).join(' ');
    const child = spawn('script', ['-qec', cmd, '/dev/null'], { env: { PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}`, HOME: os.tmpdir(), TERM: 'xterm' }, stdio: ['pipe', 'pipe', 'pipe'] });
    const disarm = child.pid === undefined ? () => undefined : guardProcess(child.pid, 'SIGKILL');
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    const until = async (what: string, ok: () => boolean, timeoutMs: number) => {
      const t0 = Date.now();
      while (!ok()) {
        if (Date.now() - t0 > timeoutMs) throw new Error(`no ${what} within ${timeoutMs} ms on the pty; output so far:\n${JSON.stringify(out)}`);
        if (child.exitCode !== null) throw new Error(`backfill exited (${child.exitCode}) before ${what}:\n${JSON.stringify(out)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    try {
      // A log line while the bar is drawn: pausing the sweep logs "sweep throttled", resuming "sweep released".
      await until('progress bar', () => /\[#+\.+\]/.test(out), 60_000);
      await db.pool.query(`update pgrekey.control set paused = true, paused_by = 'test', paused_at = now()`);
      await until('"sweep throttled" line', () => out.includes('sweep throttled'), 30_000);
      await db.pool.query(`update pgrekey.control set paused = false`);
      const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
      const code = await exited;
      clearTimeout(timer);
      expect(code, JSON.stringify(out)).toBe(0);
    } finally {
      await db.pool.query(`update pgrekey.control set paused = false`);
      child.kill('SIGKILL');
      disarm();
    }
    // What the terminal received, colours aside: every piece between line ends and `\r\x1b[K` redraws is
    // whole: a bar, a pretty log line (ISO time, level name), a relation's "done" line, or the summary.
    const plain = out.replace(/\x1b\[[0-9;]*m/g, '');
    const pieces = plain.split(/\r?\n|\r\x1b\[K/).filter((x) => x.trim() !== '');
    const bar = /^public\.on_tty +\[[#.]{24}\] +\d+\.\d% /;
    const log = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (TRACE|DEBUG|INFO |WARN |ERROR|FATAL) /;
    const logs = pieces.filter((x) => log.test(x));
    expect(logs.some((x) => /WARN .*sweep throttled/.test(x)), plain).toBe(true);
    expect(pieces.filter((x) => bar.test(x)).length).toBeGreaterThan(3);
    expect(plain).not.toMatch(/"level":\d+|"time":\d+/); // no JSON lines on a terminal
    for (const x of pieces) {
      if (bar.test(x)) expect(x, 'a bar with a log line in it').not.toMatch(/\d{4}-\d\d-\d\dT\d\d:\d\d/);
      else if (log.test(x)) expect(x.slice(1), 'a log line with a bar in it').not.toMatch(/\[[#.]{24}\]|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARN)/);
    }
  });

  it('installs from `npm pack` into a fresh prefix and runs from another directory', async () => {
    const work = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-install-'));
    // The package as published: dist/, sql/, bin/. dist/ is the build `make test` made: --ignore-scripts keeps
    // npm pack from rebuilding it under the test files running beside this one.
    const npm = (args: string[], cwd: string) => {
      try {
        return execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: 'pipe' });
      } catch (e) {
        const err = e as { stdout?: string; stderr?: string; message: string };
        throw new Error(`npm ${args.join(' ')} failed: ${err.message}\n${err.stdout ?? ''}\n${err.stderr ?? ''}`);
      }
    };
    expect(existsSync(path.join(repoRoot, 'dist', 'cli.js')), 'dist/ is built').toBe(true);
    const tarball = npm(['pack', '--silent', '--ignore-scripts', '--pack-destination', work], repoRoot).trim().split('\n').pop()!;
    const prefix = path.join(work, 'prefix');
    npm(['install', '--global', '--prefix', prefix, '--no-audit', '--no-fund', path.join(work, tarball)], work);
    const bin = path.join(prefix, 'bin', 'pg-rekey');
    expect(existsSync(bin)).toBe(true);
    const elsewhere = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-elsewhere-'));
    const env = { PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}`, HOME: elsewhere };
    const help = execFileSync(bin, ['--help'], { cwd: elsewhere, env, encoding: 'utf8' });
    expect(help).toContain('Usage: pg-rekey');
    // setup applies the migrations shipped in the package (sql/), then verify counts.
    const installed = (args: string[]) => {
      try {
        return { code: 0, out: execFileSync(bin, ['-c', f.configPath, '--env-file', f.envPath, ...args], { cwd: elsewhere, env, encoding: 'utf8', stdio: 'pipe' }) };
      } catch (e) {
        const err = e as { status: number; stdout: string; stderr: string };
        return { code: err.status, out: `${err.stdout}${err.stderr}` };
      }
    };
    const setup = installed(['setup']);
    expect(setup.code, setup.out).toBe(0);
    const verify = installed(['verify']);
    // 0 or 1 depending on whether an earlier test here rotated the table: either way a count of it.
    expect([0, 1], verify.out).toContain(verify.code);
    expect(verify.out).toMatch(/^public\.incidents\s+title\s+\d+/m);
  });
});
