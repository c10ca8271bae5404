import { hostname, userInfo } from 'node:os';
import type { GlobalFlags } from '../config/load-config.js';
import { openContext, requireState } from '../context.js';
import { ConfigError, EXIT_OK } from '../errors.js';
import { renderTable } from '../format.js';
import { recordEvent } from '../state/events.js';
import { applyOverrides, parseAssignments, readOverrides, SETTING_NAMES, settingName, showSetting } from '../throttle/live-settings.js';

const who = () => `${userInfo().username}@${hostname()}`;

/**
 * pause/resume flip the switch in pgrekey.control: every sweeping pg-rekey
 * (run or backfill, on any host) reads it before its next chunk. The stream
 * keeps going: new old-key writes are still rewritten.
 */
export async function pauseCommand(flags: GlobalFlags, opts: { reason?: string }): Promise<number> {
  const ctx = await openContext(flags);
  try {
    await requireState(ctx.pool);
    await ctx.pool.query(`update pgrekey.control set paused = true, pause_reason = $1, paused_by = $2, paused_at = now()`, [opts.reason ?? null, who()]);
    await recordEvent(ctx.pool, 'pause', { reason: opts.reason ?? null, by: who() });
    process.stdout.write('sweep paused (the stream keeps rewriting new writes); `pg-rekey resume` continues it\n');
    return EXIT_OK;
  } finally {
    await ctx.close();
  }
}

export async function resumeCommand(flags: GlobalFlags): Promise<number> {
  const ctx = await openContext(flags);
  try {
    await requireState(ctx.pool);
    const r = await ctx.pool.query(`update pgrekey.control set paused = false, pause_reason = null, paused_by = $1, paused_at = now() where paused returning 1`, [who()]);
    if (r.rowCount) await recordEvent(ctx.pool, 'resume', { by: who() });
    process.stdout.write(r.rowCount ? 'sweep resumed\n' : 'the sweep was not paused (nothing to do)\n');
    return EXIT_OK;
  } finally {
    await ctx.close();
  }
}

/** `set name=value ...`, `set --reset [name ...]`, or no arguments: show effective settings. */
export async function setCommand(flags: GlobalFlags, assignments: string[], opts: { reset?: boolean; json?: boolean }): Promise<number> {
  const parsed = opts.reset ? [] : parseAssignments(assignments);
  const resetNames = assignments.map(settingName);
  if (opts.reset) {
    const unknown = resetNames.filter((a) => !(SETTING_NAMES as string[]).includes(a));
    if (unknown.length) throw new ConfigError(`not runtime settings: ${unknown.join(', ')}`, `with --reset name only settings: ${SETTING_NAMES.join(', ')}`);
  }
  const ctx = await openContext(flags);
  try {
    await requireState(ctx.pool);
    if (opts.reset) {
      await ctx.pool.query(`delete from pgrekey.setting where cardinality($1::text[]) = 0 or name = any($1::text[])`, [resetNames]);
    }
    for (const { name, value } of parsed) {
      await ctx.pool.query(
        `insert into pgrekey.setting (name, value, set_by) values ($1, $2, $3)
         on conflict (name) do update set value = excluded.value, set_by = excluded.set_by, set_at = now()`,
        [name, value, who()],
      );
    }
    const overrides = await readOverrides(ctx.pool);
    const eff = applyOverrides(ctx.config, overrides);
    if (opts.json) process.stdout.write(`${JSON.stringify({ overrides: Object.fromEntries(overrides), effective: eff }, null, 2)}\n`);
    else {
      process.stdout.write(
        `${renderTable(['setting', 'effective', 'source'], SETTING_NAMES.map((n) => [n, showSetting(n, eff), overrides.has(n) ? `pg-rekey set (${overrides.get(n)})` : 'config/default']))}\n` +
          (parsed.length || opts.reset ? 'running sweeps pick this up within their throttle.check_interval\n' : ''),
      );
    }
    return EXIT_OK;
  } finally {
    await ctx.close();
  }
}
