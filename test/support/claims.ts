// Checking pg-rekey's convergence claims against the superuser's count of v1 values (issue 9):
// no command may say "converged" while a v1 value exists that pg-rekey was supposed to see.
import { expect } from 'vitest';
import type { CliResult } from './cli.js';
import type { TestDatabase } from './db.js';

/** The superuser's count of v1 values in `column` of `table` and (without ONLY) every descendant. */
export async function v1Count(db: TestDatabase, table: string, column = 'secret'): Promise<number> {
  return (await db.pool.query(`select count(*)::int as n from ${table} where starts_with(${column}, 'v1:')`)).rows[0].n;
}

/**
 * True when the text claims convergence: "converged" (not "NOT converged", "not converged yet",
 * "no longer converged" or a JSON false), or backfill's "no value of an old version remains".
 */
export function claimsConvergence(text: string): boolean {
  const rest = text
    .replace(/\bnot converged\b/gi, '')
    .replace(/\bno longer converged\b/gi, '')
    .replace(/"converged":\s*false/g, '')
    .replace(/exitWhenConverged/g, '');
  return /\bconverged\b/i.test(rest) || /no value of an old version remains/.test(rest);
}

/** A command's output, asserted free of convergence claims while `table` holds v1 values. */
export async function noFalseClaim(db: TestDatabase, table: string, r: CliResult, what: string): Promise<void> {
  const left = await v1Count(db, table);
  if (left > 0) expect(claimsConvergence(r.stdout + r.stderr), `${what} claimed convergence with ${left} v1 value(s) in ${table}:\n${r.stdout}${r.stderr}`).toBe(false);
}
