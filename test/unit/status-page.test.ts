import { describe, expect, it } from 'vitest';
import type { StatusReport } from '../../src/commands/status.js';
import { escapeHtml, renderStatusPage, type CheckRecord, type StatusPageView } from '../../src/daemon/status-page.js';
import { StatusPageSource } from '../../src/daemon/status-view.js';

const EVIL = `<script>alert("x&y")</script>`;
const EVIL_TABLE = `public."${EVIL}"`;

function segment(over: Partial<StatusReport['sweep'][number]> = {}): StatusReport['sweep'][number] {
  return {
    tableName: EVIL_TABLE, relation: EVIL_TABLE, segmentStart: 0, segmentEnd: null, nextBlock: 30, totalBlocks: 120, state: 'running', generation: 1, chunks: 3,
    rowsScanned: 100, rowsRewritten: 90, rowsConflict: 0, rowsQuarantined: 0, startedAt: new Date(0), updatedAt: new Date(1000), finishedAt: null,
    chunkBlocks: 8, rowsPerSec: 1234, lockTimeouts: 0, relfilenode: '1', startBlocks: 120, percent: 25, blocksDone: 30, blocksOf: 120, tailBlocks: 0, etaSeconds: 90, shown: over.state ?? 'running', ...over,
  };
}

function report(over: Partial<StatusReport> = {}): StatusReport {
  return {
    replication: {
      slot: 'pg_rekey',
      info: { exists: true, active: true, walStatus: 'reserved', confirmedFlushLsn: '0/1', currentLsn: '0/2', lagBytes: 2048, retainedBytes: 4096, activePid: 1 } as StatusReport['replication']['info'],
      lagSeconds: 1.5, slotRecreations: 0, retainedWal: { bytes: 4096, maxBytes: 0, exceeded: false }, daemon: null, converged: false, starting: null,
      leader: null,
      standbys: [],
    },
    throttle: { paused: false, pauseReason: null, pausedBy: null, pausedAt: null, reason: null, detail: null, since: null, overrides: {}, controller: null, controllerAt: null },
    sweep: [segment(), segment({ tableName: 'public.incidents', relation: 'public.incidents', nextBlock: 50, totalBlocks: 50, startBlocks: 50, blocksDone: 50, blocksOf: 50, state: 'done', percent: 100, etaSeconds: null })],
    overall: { relations: 2, done: 1, blocksDone: 80, blocksTotal: 170, percent: 47.1, etaSeconds: 90, remaining: { remaining: 1234, converged: false, source: 'verify', at: new Date(0), ageSeconds: 180 }, rowsPerSec: 850 },
    newerBackfill: null,
    newerVerify: null,
    quarantine: { total: 1, byColumn: [{ table: EVIL_TABLE, column: `"<b>c</b>"`, version: 1, reason: 'decrypt failed', count: 1 }] },
    lastRuns: [{ id: 1, command: 'run', startedAt: new Date(0), finishedAt: null, outcome: null }],
    openTransactions: [{ xid: '7', kind: 'session', pid: 42, database: 'd', application: `<img src=x onerror=alert(1)>`, state: 'idle in transaction', ageSeconds: 30 }],
    rollout: { writes: [], summary: [], stillWritten: [], quietSince: null, observedUntil: null, quietSeconds: null, quietPeriodSeconds: null },
    ...over,
  };
}

function check(over: Partial<CheckRecord> = {}): CheckRecord {
  return { at: new Date(5000), sweepDone: true, streamCaughtUp: true, remaining: 7, quarantined: 1, openTransactions: 0, converged: false, blockers: [`${EVIL_TABLE} is UNLOGGED`], counted: [EVIL_TABLE, 'public.incidents'], remainingByLeaf: { [EVIL_TABLE]: 7 }, ...over };
}

function view(over: Partial<StatusPageView> = {}, live: Partial<StatusPageView['live']> = {}): StatusPageView {
  return {
    now: new Date(10_000), report: report(), error: null, refreshSeconds: 5,
    live: { slot: 'pg_rekey', targetVersion: 'v2', version: '0.1.0', streamConnected: true, appliedLsn: '0/2', sweepDone: true, convergedAt: null, checks: [check()], ...live },
    ...over,
  };
}

describe('status page', () => {
  it('escapes every name: no markup from a table, column, application name or blocker reaches the page', () => {
    expect(escapeHtml(`<a href="x">'&'</a>`)).toBe('&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;');
    const html = renderStatusPage(view());
    expect(html).not.toContain('<script');
    expect(html).not.toContain('<img');
    expect(html).not.toContain('<b>');
    expect(html).toContain(escapeHtml(EVIL_TABLE));
    expect(html).toContain('&lt;img src=x onerror=alert(1)&gt;');
  });

  it('shows per-relation progress, the remaining values of the last check, and "not counted yet" for a relation it did not count', () => {
    const html = renderStatusPage(view({}, { checks: [check({ counted: [EVIL_TABLE] })] }));
    expect(html).toMatch(/aria-valuenow="25\.0"/);
    const row = (rel: string) => new RegExp(`<tr><td><code>${escapeHtml(rel).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}</code></td>.*?</tr>`).exec(html)?.[0] ?? '';
    expect(row(EVIL_TABLE)).toMatch(/<td>7<\/td><\/tr>$/);
    expect(row('public.incidents')).toMatch(/not counted yet<\/span><\/td><\/tr>$/);
    expect(html).toContain('NOT CONVERGED: 7 old-version value(s) at the last check; 1 quarantined value(s)');
    expect(html).toContain('<meta http-equiv="refresh" content="5">');
  });

  it('says CONVERGED only with a converged last check; says paused when paused; no check yet before the sweep is done', () => {
    expect(renderStatusPage(view({}, { convergedAt: new Date(1), checks: [check({ converged: true, remaining: 0, quarantined: 0, blockers: [] })] }))).toContain('CONVERGED since');
    // A convergedAt without a converged last check (state changed meanwhile) is not shown as converged.
    expect(renderStatusPage(view({}, { convergedAt: new Date(1) }))).toContain('NOT CONVERGED');
    const paused = renderStatusPage(view({ report: report({ throttle: { ...report().throttle, paused: true, pausedBy: 'dba@host', pauseReason: '<i>peak</i>' } }) }));
    expect(paused).toMatch(/PAUSED<\/span> by dba@host .*: &lt;i&gt;peak&lt;\/i&gt;/);
    const early = renderStatusPage(view({}, { sweepDone: false, checks: [] }));
    expect(early).toContain('the sweep has not covered every table yet; no convergence check yet');
    expect(early).toContain('not counted yet');
  });

  it('still renders when the state cannot be read, with the error escaped', () => {
    const html = renderStatusPage(view({ report: null, error: 'connect ECONNREFUSED <x>' }));
    expect(html).toContain('cannot read the state from the database: connect ECONNREFUSED &lt;x&gt;');
    expect(html).toContain('no sweep state yet');
  });
});

describe('status page: the sweep as a whole', () => {
  it('shows one overall line (blocks swept of the blocks known, ETA, or why there is none) and a newer backfill', () => {
    const html = renderStatusPage(view());
    expect(html).toMatch(/aria-valuenow="47\.1".*overall: 1 of 2 relation\(s\) done, 80 of 170 blocks swept, ETA ~2m; 1,?234 old-version value\(s\) left at the newest count \(verify, 3m ago\); 850 rows\/s rewritten now/);
    const paused = renderStatusPage(view({ report: report({ overall: { ...report().overall, etaSeconds: null }, throttle: { ...report().throttle, paused: true } }) }));
    expect(paused).toMatch(/80 of 170 blocks swept, PAUSED: no ETA/);
    const newer = renderStatusPage(view({ report: report({ newerBackfill: { id: 9, command: 'backfill', startedAt: new Date(0), finishedAt: new Date(7000), outcome: 'converged', summary: { converged: false, remaining: 3 } } }) }));
    expect(newer).toContain('Since the last check: a backfill (run 9) finished after it, at 1970-01-01T00:00:07.000Z: 3 old-version value(s) left then');
    const verified = renderStatusPage(view({ report: report({ newerVerify: { at: new Date(8000), host: 'ops1', converged: true, remaining: 0 } }) }));
    expect(verified).toContain('Since the last check: a verify at 1970-01-01T00:00:08.000Z on ops1 counted 0 old-version value(s) (converged)');
  });
});

describe('status page source', () => {
  const live = () => view().live;

  it('shares one state read between requests within a second, and reads again after', async () => {
    let reads = 0;
    const src = new StatusPageSource(async () => (reads++, report()), live, { refreshSeconds: 5, cacheMs: 200 });
    await Promise.all([src.html(), src.html(), src.html()]);
    expect(reads).toBe(1);
    await new Promise((r) => setTimeout(r, 250));
    await src.html();
    expect(reads).toBe(2);
  });

  it('still serves a page, with the error, when the state cannot be read', async () => {
    const src = new StatusPageSource(() => Promise.reject(new Error('Connection terminated <unexpectedly>')), live);
    const html = await src.html();
    expect(html).toContain('cannot read the state from the database: Connection terminated &lt;unexpectedly&gt;');
    expect(html).toContain('NOT CONVERGED');
  });
});
