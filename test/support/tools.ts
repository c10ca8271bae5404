// External tools some tests drive (promtool, systemd-analyze, chromium): found on PATH, or not.
import { spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import path from 'node:path';

export interface Tool {
  name: string;
  /** Absolute path, or null when the tool is not installed. */
  path: string | null;
  /** Why a test of it does not run here; null when it runs. */
  skipReason: string | null;
}

/**
 * A tool the test suite needs. Missing outside CI: the tests that need it are skipped, loudly
 * (one warning with the command to install it). Missing in CI (CI=true): they run and fail,
 * so a CI image without the tool cannot pass by skipping (.ci/run installs them). With
 * `optionalInCi`, they are skipped with the reason in CI too.
 */
export function requiredTool(name: string, install: string, opts: { optionalInCi?: boolean } = {}): Tool {
  const found = (process.env.PATH ?? '').split(path.delimiter).map((d) => path.join(d, name)).find((p) => {
    try {
      accessSync(p, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
  if (found) return { name, path: found, skipReason: null };
  const reason = `${name} is not installed (${install}); tests that need it are SKIPPED here${opts.optionalInCi ? '' : ' (with CI=true they fail)'}`;
  if (process.env.CI === 'true' && !opts.optionalInCi) return { name, path: null, skipReason: null };
  console.warn(`\n*** ${reason} ***\n`);
  return { name, path: null, skipReason: reason };
}

/** The tool's path; throws (failing the test) when it is missing, which only happens in CI. */
export function toolPath(t: Tool): string {
  if (!t.path) throw new Error(`${t.name} is required in CI (CI=true) but is not on PATH`);
  return t.path;
}

export interface ToolResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runTool(t: Tool, args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): ToolResult {
  const r = spawnSync(toolPath(t), args, { cwd: opts.cwd, encoding: 'utf8', timeout: opts.timeoutMs ?? 60_000 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
