import type { TableInfo } from './catalog.js';
import { displayName, type QualifiedName } from './ident.js';

/**
 * Logical decoding never sees an UNLOGGED relation (nor a temporary one): its writes are not in
 * the WAL, so the stream cannot rewrite them, and a count of it proves nothing about the
 * transactions open at the count (design.md rule 7). An unlogged partition of a logged table
 * included. `run` and `setup` refuse them; `backfill` alone may rewrite them, with a warning.
 */

/** One problem per unlogged leaf, with the statement that fixes it (for `run` and `setup`). */
export function unloggedProblems(tables: readonly TableInfo[]): string[] {
  return tables.flatMap((t) =>
    t.unlogged.map((l) => {
      const name = displayName(l);
      const what = name === t.display ? name : `${name} (a leaf of ${t.display})`;
      return (
        `${what} is UNLOGGED (or temporary): logical decoding never sees its writes, so pg-rekey's stream cannot follow it ` +
        `and a count of it proves nothing; make it logged: ALTER TABLE ${name} SET LOGGED (it rewrites the table, WAL-logged), ` +
        'or rotate it with `pg-rekey backfill` while nothing writes old-version values to it'
      );
    }),
  );
}

/** The warning `backfill` logs before it rewrites unlogged leaves (null when there are none). */
export function unloggedBackfillWarning(tables: readonly TableInfo[]): { relations: string[]; message: string } | null {
  const relations = tables.flatMap((t) => t.unlogged.map(displayName));
  if (relations.length === 0) return null;
  return {
    relations,
    message:
      `${relations.join(', ')} ${relations.length === 1 ? 'is' : 'are'} UNLOGGED: backfill rewrites ${relations.length === 1 ? 'it' : 'them'} once, ` +
      'but writes after its pass are not followed (logical decoding never sees unlogged tables, so `pg-rekey run` refuses them); ' +
      'make sure nothing writes old-version values there any more, or ALTER TABLE ... SET LOGGED and use `pg-rekey run`',
  };
}

/** True when `leaf` is one of the table's unlogged leaves. */
export function isUnlogged(t: TableInfo, leaf: QualifiedName): boolean {
  const name = displayName(leaf);
  return t.unlogged.some((u) => displayName(u) === name);
}

/**
 * What run follows of a table: its leaves without the unlogged ones (not swept, not streamed),
 * which stay in `unlogged` (still counted, and holding convergence back).
 */
export function followedView(t: TableInfo): TableInfo {
  if (t.unlogged.length === 0) return t;
  return { ...t, leaves: t.leaves.filter((l) => !isUnlogged(t, l)) };
}

/** Every relation to count for a table: its leaves and its unlogged leaves (in either view). */
export function countedLeaves(t: TableInfo): QualifiedName[] {
  const seen = new Set(t.leaves.map(displayName));
  return [...t.leaves, ...t.unlogged.filter((l) => !seen.has(displayName(l)))];
}
