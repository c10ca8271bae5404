import type pg from 'pg';
import { ConfigError } from '../errors.js';
import { didYouMean } from '../config/suggest.js';
import type { Config, SweepMode, SweepSettings, ThrottleSettings } from '../config/load-config.js';
import { duration, size, sweepSchema, throttleSchema, toBytes, toMillis } from '../config/schema.js';
import type { Logger } from '../logger.js';

/**
 * Settings an operator may change while pg-rekey runs (`pg-rekey set
 * chunk-time=50ms nice-ratio=0.5 max-replica-lag=2s`). Each maps to a config
 * field and is validated by that field's schema.
 */
const SETTABLE = {
  mode: { schema: sweepSchema.shape.mode, apply: (v, s) => void (s.sweep.mode = v as SweepMode), show: (s) => s.sweep.mode },
  'latency-ratio': { schema: sweepSchema.shape.latency_ratio, apply: (v, s) => void (s.sweep.latencyRatio = v as number), show: (s) => String(s.sweep.latencyRatio) },
  'max-rate': { schema: sweepSchema.shape.max_rate, apply: (v, s) => void (s.sweep.maxRate = v as number), show: (s) => String(s.sweep.maxRate) },
  'max-wal-rate': { schema: size, apply: (v, s) => void (s.sweep.maxWalRate = toBytes(v as string | number)), show: (s) => `${s.sweep.maxWalRate}B` },
  'chunk-time': { schema: duration, apply: (v, s) => void (s.sweep.chunkTimeMs = toMillis(v as string | number)), show: (s) => `${s.sweep.chunkTimeMs}ms` },
  'chunk-blocks': { schema: sweepSchema.shape.chunk_blocks, apply: (v, s) => void (s.sweep.chunkBlocks = v as number), show: (s) => String(s.sweep.chunkBlocks) },
  'min-chunk-blocks': { schema: sweepSchema.shape.min_chunk_blocks, apply: (v, s) => void (s.sweep.minChunkBlocks = v as number), show: (s) => String(s.sweep.minChunkBlocks) },
  'max-chunk-blocks': { schema: sweepSchema.shape.max_chunk_blocks, apply: (v, s) => void (s.sweep.maxChunkBlocks = v as number), show: (s) => String(s.sweep.maxChunkBlocks) },
  'nice-ratio': { schema: sweepSchema.shape.nice_ratio, apply: (v, s) => void (s.sweep.niceRatio = v as number), show: (s) => String(s.sweep.niceRatio) },
  'lock-timeout': { schema: duration, apply: (v, s) => void (s.sweep.lockTimeoutMs = toMillis(v as string | number)), show: (s) => `${s.sweep.lockTimeoutMs}ms` },
  'max-replica-lag': { schema: duration, apply: (v, s) => void (s.throttle.maxReplicaLagMs = toMillis(v as string | number)), show: (s) => `${s.throttle.maxReplicaLagMs}ms` },
  'max-replica-lag-bytes': { schema: size, apply: (v, s) => void (s.throttle.maxReplicaLagBytes = toBytes(v as string | number)), show: (s) => `${s.throttle.maxReplicaLagBytes}B` },
  'max-active-backends': { schema: throttleSchema.shape.max_active_backends, apply: (v, s) => void (s.throttle.maxActiveBackends = v as number), show: (s) => String(s.throttle.maxActiveBackends) },
  'critical-active-backends': { schema: throttleSchema.shape.critical_active_backends, apply: (v, s) => void (s.throttle.criticalActiveBackends = v as number), show: (s) => String(s.throttle.criticalActiveBackends) },
  'critical-action': { schema: throttleSchema.shape.critical_action, apply: (v, s) => void (s.throttle.criticalAction = v as 'stop' | 'hibernate'), show: (s) => s.throttle.criticalAction },
  'hibernate-time': { schema: duration, apply: (v, s) => void (s.throttle.hibernateMs = toMillis(v as string | number)), show: (s) => `${s.throttle.hibernateMs}ms` },
} satisfies Record<string, { schema: { safeParse(v: unknown): { success: boolean; data?: unknown } }; apply: (v: unknown, s: Effective) => void; show: (s: Effective) => string }>;

export type SettingName = keyof typeof SETTABLE;
export const SETTING_NAMES = Object.keys(SETTABLE) as SettingName[];

export interface Effective {
  sweep: SweepSettings;
  throttle: ThrottleSettings;
}

function parseValue(name: SettingName, raw: string): unknown {
  const schema = SETTABLE[name].schema;
  for (const candidate of /^-?\d+(\.\d+)?$/.test(raw) ? [Number(raw), raw] : [raw]) {
    const r = schema.safeParse(candidate);
    if (r.success) return r.data;
  }
  return undefined;
}

/** `nice_ratio`, `Nice-Ratio` -> `nice-ratio`. */
export function settingName(text: string): string {
  return text.toLowerCase().replace(/_/g, '-');
}

/** Parses `name=value` arguments (names as in `--help` or as in the config file); every problem reported at once. */
export function parseAssignments(args: string[]): { name: SettingName; value: string }[] {
  const problems: string[] = [];
  const out: { name: SettingName; value: string }[] = [];
  for (const a of args) {
    const m = /^([a-zA-Z_-]+)=(.+)$/.exec(a.trim());
    if (!m) {
      problems.push(`${JSON.stringify(a)}: expected name=value, e.g. chunk-time=50ms`);
      continue;
    }
    // The config file's spelling (nice_ratio) names the same setting as nice-ratio.
    const name = settingName(m[1]!) as SettingName;
    if (!(name in SETTABLE)) {
      problems.push(`${m[1]}: not a runtime setting${didYouMean(name, SETTING_NAMES)}; one of ${SETTING_NAMES.join(', ')}`);
      continue;
    }
    if (parseValue(name, m[2]!) === undefined) problems.push(`${name}=${m[2]}: invalid value (durations like 50ms or 2s, sizes like 64MB, numbers)`);
    else out.push({ name, value: m[2]! });
  }
  if (problems.length) throw new ConfigError('cannot apply these settings', 'fix the assignments listed; `pg-rekey set --help` lists every setting', problems);
  return out;
}

/** The config with sweep.mode replaced (`--fast`); unchanged without a mode. */
export function withMode<C extends Pick<Config, 'sweep' | 'throttle'>>(config: C, mode: SweepMode | undefined): C {
  return mode === undefined ? config : { ...config, sweep: { ...config.sweep, mode } };
}

/** Config values with runtime overrides applied on top (overrides win). */
export function applyOverrides(config: Pick<Config, 'sweep' | 'throttle'>, overrides: Map<string, string>): Effective {
  const eff: Effective = { sweep: { ...config.sweep }, throttle: { ...config.throttle } };
  for (const [name, raw] of overrides) {
    if (!(name in SETTABLE)) continue;
    const v = parseValue(name as SettingName, raw);
    if (v !== undefined) SETTABLE[name as SettingName].apply(v, eff);
  }
  return eff;
}

/** The effective value of a setting, for display. */
export function showSetting(name: SettingName, eff: Effective): string {
  return SETTABLE[name].show(eff);
}

export async function readOverrides(db: pg.Pool | pg.ClientBase): Promise<Map<string, string>> {
  const r = await db.query<{ name: string; value: string }>(`select name, value from pgrekey.setting order by name`);
  return new Map(r.rows.map((x) => [x.name, x.value]));
}

/**
 * The effective settings of a running sweep, re-read from pgrekey.setting at
 * most every check interval. Logs each change once.
 */
export class LiveSettings {
  private overrides = new Map<string, string>();
  private readAt = 0;
  current: Effective;

  constructor(
    private readonly db: pg.Pool,
    private readonly config: Pick<Config, 'sweep' | 'throttle'>,
    private readonly log: Logger,
  ) {
    this.current = applyOverrides(config, this.overrides);
  }

  async refresh(force = false): Promise<Effective> {
    if (!force && Date.now() - this.readAt < this.current.throttle.checkIntervalMs) return this.current;
    this.readAt = Date.now();
    const next = await readOverrides(this.db).catch(() => this.overrides);
    const before = JSON.stringify([...this.overrides]);
    if (JSON.stringify([...next]) !== before) {
      this.log.info({ component: 'settings', overrides: Object.fromEntries(next) }, 'runtime settings changed');
      this.overrides = next;
      this.current = applyOverrides(this.config, next);
    }
    return this.current;
  }
}
