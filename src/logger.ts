import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/**
 * Logs go to stderr as JSON lines (one object per event); stdout stays free
 * for command output (--json, tables). Every component logs through a child:
 * `logger.child({ component: 'sweep', table })`.
 *
 * Values, keys and plaintexts are never passed to the logger. `redact` is a
 * second guard in case a future change passes an object that holds one.
 */
export function createLogger(level: LevelWithSilent = 'info', destination: number = 2): Logger {
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
    pino.destination({ fd: destination, sync: true }),
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
