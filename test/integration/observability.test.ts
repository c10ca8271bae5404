// What an operator watches, from a real `pg-rekey run`: /metrics before and after the first
// check, the dashboard's and alert rules' metric names against that scrape, and the status page
// on / as headless Chromium renders it (a table named like markup included).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, testRing } from '../support/fixtures.js';
import { cli, eventually, writeDaemonFiles, type DaemonFiles } from '../support/daemon.js';
import { repoRoot, spawnCli, type CliProcess } from '../support/cli.js';
import { chromium, dumpDom, screenshot } from '../support/chromium.js';
import { ALERT_RULES, DASHBOARD, dashboardExprs, exportedMetrics, mentionedMetrics, ruleExprs, selectedMetrics } from '../support/promql.js';
import { escapeHtml } from '../../src/daemon/status-page.js';
import { encryptValue } from '../../src/crypto/rewrite.js';

const EVIL = `<script>alert("x&y")</script>`;
/** How the table is named in the config and shown by pg-rekey. */
const EVIL_DISPLAY = `public."${EVIL.replaceAll('"', '""')}"`;
const VERSION = (JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;

let db: TestDatabase;
let files: DaemonFiles;
let proc: CliProcess | null = null;
let http = '';

/** A sample line's value, or undefined when the metric has no sample (declared or not). */
function sample(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

async function scrape(): Promise<string> {
  const r = await fetch(`${http}/metrics`);
  expect(r.status).toBe(200);
  return r.text();
}

beforeAll(async () => {
  db = await createTestDatabase('observe');
  const ring = await testRing();
  await db.pool.query(`create table incidents (id bigint primary key, title text)`);
  await db.pool.query(`create table "${EVIL.replaceAll('"', '""')}" (id int primary key, note text)`);
  const rows: unknown[][] = [];
  for (let id = 1; id <= 3000; id++) rows.push([id, encryptValue(Buffer.from(`incident ${id}`), 1, ring)]);
  await insertBatched(db.pool, 'incidents', ['id', 'title'], ['bigint', 'text'], rows);
  const evil: unknown[][] = [];
  for (let id = 1; id <= 200; id++) evil.push([id, encryptValue(Buffer.from(`note ${id}`), 1, ring)]);
  evil.push([201, 'v1:AAAA']); // cannot be rewritten: quarantined, so the daemon stays not converged with 1 remaining
  await insertBatched(db.pool, `"${EVIL.replaceAll('"', '""')}"`, ['id', 'note'], ['int', 'text'], evil);
  files = writeDaemonFiles(db.url, [{ name: 'incidents', columns: ['title'] }, { name: EVIL_DISPLAY, columns: ['note'] }], { daemon: { slot_check_interval: '5s' } });
  const setup = await cli(files, 'setup');
  expect(setup.code, setup.stderr).toBe(0);
});

afterAll(async () => {
  await proc?.stop('SIGTERM', 15_000);
  await db?.drop();
});

describe('observability of pg-rekey run', () => {
  it('before the first check, /metrics has no sample for what is not known yet (not 0), one prefix, and pg_rekey_info', async () => {
    // Paused: the sweep never completes, so no convergence check runs.
    expect((await cli(files, 'pause', '--reason', 'observability test')).code).toBe(0);
    proc = spawnCli(['run', ...files.args]);
    const started = await proc.waitForLine(/pg-rekey run started/, { timeoutMs: 60_000 });
    http = (JSON.parse(started.text) as { http: string }).http;
    // At once: the first slot check is slot_check_interval (5s) after this line.
    const text = await scrape();
    for (const name of ['pg_rekey_remaining_values', 'pg_rekey_last_check_timestamp_seconds', 'pg_rekey_slot_retained_wal_bytes', 'pg_rekey_slot_retained_wal_exceeded', 'pg_rekey_stream_lag_bytes', 'pg_rekey_convergence_open_transactions']) {
      expect(text, name).toMatch(new RegExp(`^# TYPE ${name} gauge$`, 'm')); // declared ...
      expect(sample(text, name), name).toBeUndefined(); // ... without a value
    }
    expect(sample(text, 'pg_rekey_converged')).toBe(0);
    const slot = `s_${new URL(db.url).pathname.slice(1)}`.slice(0, 63); // as writeDaemonFiles names it
    expect(text).toMatch(new RegExp(`^pg_rekey_info\\{target_version="v2",slot="${slot}",version="${VERSION.replaceAll('.', '\\.')}"\\} 1$`, 'm'));
    expect(sample(text, 'pg_rekey_process_cpu_seconds_total')).toBeGreaterThan(0);
    expect(text).not.toMatch(/pg_rekey_process_process_/);
    expect(text.split('\n').filter((l) => l && !l.startsWith('#') && !l.startsWith('pg_rekey_'))).toEqual([]);
  });

  it.skipIf(chromium.skipReason !== null)(`the status page shows the tables, escaped, and the pause${chromium.skipReason ? ` (SKIPPED: ${chromium.skipReason})` : ''}`, async () => {
    const res = await fetch(`${http}/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(res.headers.get('content-security-policy')).toMatch(/default-src 'none'/);
    const dom = await dumpDom(`${http}/`);
    expect(dom).toContain('PAUSED');
    expect(dom).toContain('observability test');
    expect(dom).toContain('public.incidents');
    // The table's name is text in the DOM, not an element: no script element at all.
    expect(dom).toContain(escapeHtml(EVIL_DISPLAY).replaceAll('&quot;', '"'));
    expect(dom).not.toMatch(/<script/i);
    expect(dom).toContain('not counted yet');
    expect(dom).toContain('no convergence check yet');
  });

  it('after the first check: remaining, last check time and retained WAL have values', async () => {
    expect((await cli(files, 'resume')).code).toBe(0);
    let text = '';
    await eventually(
      'a convergence check with the quarantined value remaining, and a slot check',
      async () => {
        text = await scrape();
        return sample(text, 'pg_rekey_last_check_timestamp_seconds') !== undefined && sample(text, 'pg_rekey_remaining_values') === 1 && sample(text, 'pg_rekey_slot_retained_wal_bytes') !== undefined;
      },
      120_000,
    );
    expect(Math.abs(sample(text, 'pg_rekey_last_check_timestamp_seconds')! - Date.now() / 1000)).toBeLessThan(120);
    expect(sample(text, 'pg_rekey_converged')).toBe(0);
    expect(sample(text, 'pg_rekey_slot_retained_wal_bytes')).toBeGreaterThanOrEqual(0);
    expect(sample(text, 'pg_rekey_convergence_open_transactions')).toBe(0);
  });

  it('every metric the dashboard and the alert rules use is one the daemon exports', async () => {
    const exported = exportedMetrics(await scrape());
    const used = new Map<string, string>();
    for (const { where, expr } of [...dashboardExprs(), ...ruleExprs()]) for (const n of selectedMetrics(expr)) used.set(n, where);
    for (const file of [DASHBOARD, ALERT_RULES]) for (const n of mentionedMetrics(readFileSync(file, 'utf8'))) used.set(n, path.basename(file));
    expect(used.size).toBeGreaterThan(20);
    // pg_rekey_old_version_writes_total (the rollout gate) included: the stream exports it from its start.
    const missing = [...used].filter(([n]) => !exported.has(n)).map(([n, where]) => `${n} (${where})`);
    expect(missing, `not exported by pg-rekey run: ${missing.join(', ')}`).toEqual([]);
  });

  it.skipIf(chromium.skipReason !== null)(`the status page shows the remaining values of the last check, and a screenshot of it is written${chromium.skipReason ? ` (SKIPPED: ${chromium.skipReason})` : ''}`, async () => {
    const dom = await dumpDom(`${http}/`);
    const row = (relation: string): string => {
      const cell = `<code>${escapeHtml(relation).replaceAll('&quot;', '"')}</code>`;
      const at = dom.indexOf(`<tr><td>${cell}</td>`);
      expect(at, `no row for ${relation} in:\n${dom.slice(0, 4000)}`).toBeGreaterThan(-1);
      return dom.slice(at, dom.indexOf('</tr>', at));
    };
    // The last cell of a relation's row: its remaining values at the last check.
    expect(row(EVIL_DISPLAY)).toMatch(/<td>1<\/td>$/);
    expect(row('public.incidents')).toMatch(/<td>0<\/td>$/);
    expect(dom).toMatch(/NOT CONVERGED: 1 old-version value\(s\) at the last check; 1 quarantined value\(s\)/);
    expect(dom).toContain('Last checks');
    expect(dom).not.toMatch(/<script/i);
    // Nothing stored in a column is on the page: not the quarantined value, not a ciphertext.
    expect(dom).not.toContain('v1:AAAA');
    expect(dom).not.toMatch(/v[12]:[A-Za-z0-9+/]{16}/);

    const file = path.join(files.dir, 'status-page.png');
    const png = await screenshot(`${http}/`, file);
    expect(png).toMatchObject({ width: 1200, height: 900 });
    // A blank 1200x900 page is a few kB; tables, bars and text make tens of kB.
    expect(png.bytes).toBeGreaterThan(20_000);
  });
});
