/**
 * Human log lines for a terminal: `2026-12-02T02:30:00.123Z INFO  sweep  relation swept  relation=public.incidents rewritten=50` (two spaces before the fields).
 * Input is one pino JSON object (already redacted by the logger); output one line without its newline.
 * Pure: no I/O, no colours unless asked.
 */

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const COLOURS: Record<string, string> = { TRACE: '90', DEBUG: '90', INFO: '32', WARN: '33', ERROR: '31', FATAL: '35' };
/** Fields every line has, shown in fixed places or not at all. */
const FIXED = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'name', 'component']);

export interface PrettyOptions {
  colour?: boolean;
}

function scalar(value: unknown): string {
  if (value === null || value === undefined) return String(value);
  if (typeof value === 'string') return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  return JSON.stringify(value);
}

/** `key=value` pairs, nested objects flattened one level (`err.message=...`). */
export function fields(obj: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(obj)) {
    if (FIXED.has(k) || v === undefined) continue;
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      for (const [k2, v2] of Object.entries(v as Record<string, unknown>)) if (v2 !== undefined) parts.push(`${k}.${k2}=${scalar(v2)}`);
    } else parts.push(`${k}=${scalar(v)}`);
  }
  return parts.join(' ');
}

export function prettyLine(obj: Record<string, unknown>, opts: PrettyOptions = {}): string {
  const level = LEVELS[Number(obj.level)] ?? String(obj.level ?? '?').toUpperCase();
  const time = typeof obj.time === 'number' ? new Date(obj.time).toISOString() : String(obj.time ?? '');
  const levelText = opts.colour ? `\x1b[${COLOURS[level] ?? '0'}m${level.padEnd(5)}\x1b[0m` : level.padEnd(5);
  const component = typeof obj.component === 'string' ? obj.component : '-';
  const rest = fields(obj);
  return [time, levelText, component.padEnd(10), String(obj.msg ?? ''), rest ? ` ${rest}` : ''].join(' ').trimEnd();
}

/** One raw output chunk of pino (one or more JSON lines) to pretty lines; a line that is not JSON passes through. */
export function prettyChunk(chunk: string, opts: PrettyOptions = {}): string {
  return chunk
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => {
      try {
        return prettyLine(JSON.parse(l) as Record<string, unknown>, opts);
      } catch {
        return l;
      }
    })
    .map((l) => `${l}\n`)
    .join('');
}
