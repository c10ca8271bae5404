/**
 * Exit codes are a contract with scripts:
 *   0 ok, 1 verify not converged, 2 usage or configuration error, 3 runtime failure.
 * Every error carries a hint that tells the operator what to do next.
 * Messages never contain keys, plaintexts or ciphertexts.
 */
export const EXIT_OK = 0;
export const EXIT_NOT_CONVERGED = 1;
export const EXIT_USAGE = 2;
export const EXIT_RUNTIME = 3;

export abstract class PgRekeyError extends Error {
  abstract readonly exitCode: number;
  constructor(message: string, readonly hint?: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** Bad flags, bad config file, bad keys, tables that do not fit: exit 2. */
export class ConfigError extends PgRekeyError {
  readonly exitCode = EXIT_USAGE;
  /** Several problems found at once (config validation, table checks). */
  constructor(message: string, hint?: string, readonly problems: string[] = []) {
    super(message, hint);
  }
}

/** The database or the work failed while running: exit 3. */
export class RuntimeFailure extends PgRekeyError {
  readonly exitCode = EXIT_RUNTIME;
}

/** Formats an error for the terminal: message, problems, hint. */
export function describeError(err: unknown): string {
  if (err instanceof PgRekeyError) {
    const lines = [`error: ${err.message}`];
    if (err instanceof ConfigError) for (const p of err.problems) lines.push(`  - ${p}`);
    if (err.hint) lines.push(`hint: ${err.hint}`);
    return lines.join('\n');
  }
  const e = err as { message?: string; code?: string };
  const code = e?.code ? ` (SQLSTATE/code ${e.code})` : '';
  return `error: ${e?.message ?? String(err)}${code}`;
}

export function exitCodeOf(err: unknown): number {
  return err instanceof PgRekeyError ? err.exitCode : EXIT_RUNTIME;
}
