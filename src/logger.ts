import { pino, type Logger, type LevelWithSilent } from 'pino';
import { prettyChunk } from './terminal/pretty-log.js';
import { stderrLine } from './terminal/stderr-line.js';

export type { Logger };

export type LogFormat = 'pretty' | 'json';

/**
 * Logs go to stderr, as JSON lines (one object per event) or, by default on a
 * terminal, as pretty lines (ISO time, level name, component, message, fields);
 * stdout stays free for command output (--json, tables). Both pass through
 * stderrLine, so they never tear through backfill's progress bar. Every
 * component logs through a child: `logger.child({ component: 'sweep', table })`.
 *
 * Values, keys and plaintexts are never passed to the logger. `redact` is a
 * second guard in case a future change passes an object that holds one.
 */
export function createLogger(level: LevelWithSilent = 'info', format?: LogFormat): Logger {
  const tty = process.stderr.isTTY === true;
  const pretty = (format ?? (tty ? 'pretty' : 'json')) === 'pretty';
  const destination = { write: (chunk: string) => stderrLine.log(pretty ? prettyChunk(chunk, { colour: tty }) : chunk) };
  return pino(
    {
      name: 'pg-rekey',
      level,
      base: { pid: process.pid },
      redact: {
        paths: ['key', 'keys', '*.key', '*.keys', 'value', '*.value', 'plaintext', '*.plaintext', 'password', '*.password', 'connectionString', '*.connectionString'],
        censor: '[redacted]',
      },
      serializers: { err: serializeError },
    },
    destination,
  );
}

/** Errors from pg carry `detail`/`where` that can quote row values: keep only safe fields. */
export function serializeError(err: unknown): Record<string, unknown> {
  if (!(err instanceof Error)) return { message: String(err) };
  const e = err as Error & { code?: string; routine?: string; severity?: string; table?: string; column?: string; constraint?: string };
  return {
    type: e.name,
    message: e.message,
    code: e.code,
    severity: e.severity,
    table: e.table,
    column: e.column,
    constraint: e.constraint,
    routine: e.routine,
  };
}
