// The files under deploy/ and the Dockerfile, checked with the tools that read them:
// promtool (Debian's prometheus package) and systemd-analyze. Metric names against a real
// daemon's /metrics: test/integration/observability.test.ts.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadKeyRing } from '../../src/crypto/key-ring.js';
import { daemonSchema, toMillis } from '../../src/config/schema.js';
import { repoRoot } from '../support/cli.js';
import { ALERT_RULES, ALERT_TESTS, dashboardExprs, ruleExprs, selectedMetrics } from '../support/promql.js';
import { requiredTool, runTool } from '../support/tools.js';

const promtool = requiredTool('promtool', 'apt-get install prometheus');
// Not every CI image has systemd: its tests are skipped (with the reason) where it is missing.
const systemdAnalyze = requiredTool('systemd-analyze', 'apt-get install systemd', { optionalInCi: true });
const UNIT = path.join(repoRoot, 'deploy/systemd/pg-rekey.service');

function tmp(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-deploy-'));
}

describe.skipIf(promtool.skipReason !== null)(`alert rules (promtool)${promtool.skipReason ? `: SKIPPED, ${promtool.skipReason}` : ''}`, () => {
  it('pass promtool check rules', () => {
    const r = runTool(promtool, ['check', 'rules', ALERT_RULES]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/SUCCESS: \d+ rules found/);
  });

  it('pass their unit tests (promtool test rules), which cover every alert', () => {
    const r = runTool(promtool, ['test', 'rules', ...ALERT_TESTS]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const tested = new Set(ALERT_TESTS.flatMap((f) => [...readFileSync(f, 'utf8').matchAll(/alertname: (\w+)/g)].map((m) => m[1])));
    expect([...tested].sort()).toEqual(ruleExprs().map((x) => x.where.replace('rule ', '')).sort());
  }, 30_000);

  it('the unit tests fail when a rule is changed (a shorter "for:", a weaker threshold)', () => {
    const dir = tmp();
    const rules = readFileSync(ALERT_RULES, 'utf8');
    for (const [from, to] of [
      ['for: 24h', 'for: 1h'],
      ['> 3600', '> 360000'],
      ['pg_rekey_stream_connected == 0', 'pg_rekey_stream_connected < 0'],
    ] as const) {
      expect(rules).toContain(from);
      writeFileSync(path.join(dir, 'pg-rekey-alerts.yml'), rules.replace(from, to));
      for (const f of ALERT_TESTS) copyFileSync(f, path.join(dir, path.basename(f)));
      const r = runTool(promtool, ['test', 'rules', ...ALERT_TESTS.map((f) => path.basename(f))], { cwd: dir });
      expect(r.code, `${from} -> ${to}\n${r.stdout}`).not.toBe(0);
    }
  }, 60_000);
});

describe('PromQL metric names', () => {
  it('finds the selected metrics and nothing else', () => {
    expect(selectedMetrics('sum by (instance, table) (increase(pg_rekey_quarantined_total{table=~"a|b"}[30m])) > 0').sort()).toEqual(['pg_rekey_quarantined_total']);
    expect(selectedMetrics('100 * a_done{instance=~"$instance"} / on(relation) b_total offset 5m and absent(up) or vector(1e9)').sort()).toEqual(['a_done', 'b_total', 'up']);
    expect(selectedMetrics('rate(x_total[$__rate_interval]) - time() + ${y}')).toEqual(['x_total']);
  });

  it('every dashboard query and alert names a pg-rekey metric', () => {
    for (const { where, expr } of [...dashboardExprs(), ...ruleExprs()]) {
      const names = selectedMetrics(expr);
      expect(names.length, `${where}: ${expr}`).toBeGreaterThan(0);
      for (const n of names) expect(n, `${where}: ${expr}`).toMatch(/^pg_rekey_/);
    }
  });
});

describe.skipIf(systemdAnalyze.skipReason !== null)(`systemd unit${systemdAnalyze.skipReason ? `: SKIPPED, ${systemdAnalyze.skipReason}` : ''}`, () => {
  // systemd-analyze verify checks that ExecStart's binary exists: the unit names the installed
  // /usr/local/bin/pg-rekey, so the copy checked here points at this checkout's bin/ instead.
  function checkedCopy(edit: (unit: string) => string = (u) => u): string {
    const unit = readFileSync(UNIT, 'utf8');
    expect(unit).toMatch(/^ExecStart=\/usr\/local\/bin\/pg-rekey run /m);
    const dir = tmp();
    const file = path.join(dir, 'pg-rekey.service');
    writeFileSync(file, edit(unit.replace(/^ExecStart=\/usr\/local\/bin\/pg-rekey /m, `ExecStart=${path.join(repoRoot, 'bin/pg-rekey.js')} `)));
    return file;
  }

  it('passes systemd-analyze verify without a warning', () => {
    const r = runTool(systemdAnalyze, ['verify', checkedCopy()], { cwd: tmp() });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr + r.stdout).toBe('');
    // The check can fail: an unknown key in [Service] is reported.
    const bad = runTool(systemdAnalyze, ['verify', checkedCopy((u) => u.replace('[Service]\n', '[Service]\nProtectSytem=strict\n'))], { cwd: tmp() });
    expect(bad.stderr).toMatch(/Unknown key 'ProtectSytem'/);
  });

  it('is hardened: systemd-analyze security rates its exposure at most 1.3 (a unit without the hardening lines rates 9.x)', () => {
    const r = runTool(systemdAnalyze, ['security', '--offline=yes', '--threshold=13', checkedCopy()], { cwd: tmp() });
    expect(r.code, r.stdout.split('\n').filter((l) => l.includes('✗')).join('\n')).toBe(0);
    const unhardened = checkedCopy((u) => u.replace(/^# Hardening:[\s\S]*?\n\n/m, '\n'));
    const weak = runTool(systemdAnalyze, ['security', '--offline=yes', '--threshold=13', unhardened], { cwd: tmp() });
    expect(weak.code).not.toBe(0);
  });
});

describe('systemd unit contents', () => {
  const unit = readFileSync(UNIT, 'utf8');
  const values = (key: string) => [...unit.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((m) => m[1]!);

  it('runs as its own user, never as root, with no privileges', () => {
    expect(values('User')).toEqual(['pg-rekey']);
    expect(values('NoNewPrivileges')).toEqual(['yes']);
    expect(values('ProtectSystem')).toEqual(['strict']);
    expect(values('CapabilityBoundingSet')).toEqual(['']);
  });

  it('gives the daemon its drain bound before SIGKILL: TimeoutStopSec = daemon.shutdown_timeout default + 5s', () => {
    const drainMs = toMillis(daemonSchema.parse({}).shutdown_timeout);
    expect(values('TimeoutStopSec')).toEqual([`${drainMs / 1000 + 5}s`]);
    expect(values('KillSignal')).toEqual(['SIGTERM']);
    // Exit 2 is a configuration problem a restart cannot fix.
    expect(values('RestartPreventExitStatus')).toEqual(['2']);
  });

  it('its credentials and *_FILE variables give pg-rekey a key ring as systemd lays them out', () => {
    // As systemd does: each LoadCredential=ID:PATH becomes $CREDENTIALS_DIRECTORY/ID, readable by
    // the service's user only (mode 0440 when granted by ACL on tmpfs); %d is that directory.
    const creds = path.join(tmp(), 'pg-rekey.service');
    mkdirSync(creds, { mode: 0o500 });
    const loaded = values('LoadCredential').map((v) => v.split(':')[0]!);
    expect(loaded).toEqual(expect.arrayContaining(['key-v1', 'key-v2']));
    const hex = { 'key-v1': '11'.repeat(32), 'key-v2': '22'.repeat(32) } as Record<string, string>;
    for (const id of loaded) writeFileSync(path.join(creds, id), `${hex[id] ?? 'not a key'}\n`, { mode: 0o440 });
    const env: Record<string, string> = { CREDENTIALS_DIRECTORY: creds };
    for (const v of values('Environment')) {
      const [k, ...rest] = v.split('=');
      env[k!] = rest.join('=').replaceAll('%d', creds);
    }
    const ring = loadKeyRing({ env });
    expect(ring.target).toBe(2);
    expect(ring.versions).toEqual([1, 2]);
    // No key in the unit itself.
    expect(unit).not.toMatch(/[0-9a-f]{64}/i);
    expect(values('Environment').some((v) => /^LIBSODIUM_ENCRYPTION_KEY(_V\d)?=/.test(v))).toBe(false);
  });
});

describe('Docker image', () => {
  it("ENTRYPOINT ends node's options with --, so the CMD's --env-file reaches pg-rekey (Node 20 would exit 9)", () => {
    const dockerfile = readFileSync(path.join(repoRoot, 'Dockerfile'), 'utf8');
    const entrypoint = JSON.parse(/^ENTRYPOINT (\[.*\])$/m.exec(dockerfile)![1]!) as string[];
    const cmd = JSON.parse(/^CMD (\[.*\])$/m.exec(dockerfile)![1]!) as string[];
    expect(cmd).toContain('--env-file');
    expect(entrypoint[0]).toBe('node');
    // The image's argv, run here with this checkout as /app and paths that do not exist.
    const argv = [...entrypoint.slice(1), ...cmd].map((a) => a.replace(/^\/app\//, repoRoot).replace(/^\/(config|run\/secrets)\//, '/nonexistent/'));
    const r = spawnSync(process.execPath, argv, { encoding: 'utf8', env: { PATH: process.env.PATH ?? '' }, timeout: 30_000 });
    expect(r.stderr).not.toMatch(/^node: /m);
    expect(r.status, r.stderr).toBe(2); // pg-rekey's own "cannot read" configuration error
    expect(r.stderr).toMatch(/nonexistent/);
    // Without the "--", Node itself would have parsed the flag: the check above can fail.
    const bare = spawnSync(process.execPath, argv.filter((a) => a !== '--'), { encoding: 'utf8', env: { PATH: process.env.PATH ?? '' }, timeout: 30_000 });
    expect(bare.status).toBe(9);
  });
});
