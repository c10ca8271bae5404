import type { KeyRing } from '../crypto/key-ring.js';
import { parseVersioned } from '../crypto/envelope.js';

/**
 * The pure "message to rewrite" mapping: from an INSERT/UPDATE's new tuple
 * (values as raw text, `undefined` for an unchanged TOAST datum 'u', null
 * for NULL) decide which configured columns need work.
 */
export interface StreamTarget {
  /** Configured table the relation belongs to (the table itself or its partition root). */
  table: string;
  columns: readonly string[];
  keyColumns: readonly string[];
}

export interface RowWork {
  /** Key column values as text, in keyColumns order. */
  key: string[];
  /** Columns whose value is in the message and not at target: value as read. */
  rewrite: Map<string, string>;
  /** Columns sent as unchanged TOAST: read back by key, rewrite if needed. */
  readBack: string[];
  /** The 32-bit xid of the transaction the message came from (BEGIN): its rows are rewritten only once it is visible. */
  xid?: number;
}

export type Decision = { kind: 'none' } | { kind: 'no-key'; missing: string[] } | ({ kind: 'work' } & RowWork);

export function planRowWork(tuple: Record<string, unknown>, target: StreamTarget, ring: KeyRing): Decision {
  const rewrite = new Map<string, string>();
  const readBack: string[] = [];
  for (const col of target.columns) {
    if (!(col in tuple)) continue; // column not in this relation version (dropped/renamed): nothing to do
    const v = tuple[col];
    if (v === undefined) readBack.push(col);
    else if (typeof v === 'string') {
      const parsed = parseVersioned(v);
      if (parsed && parsed.version !== ring.target) rewrite.set(col, v);
    }
  }
  if (rewrite.size === 0 && readBack.length === 0) return { kind: 'none' };
  const key: string[] = [];
  const missing: string[] = [];
  for (const k of target.keyColumns) {
    const v = tuple[k];
    if (typeof v === 'string') key.push(v);
    else missing.push(k);
  }
  if (missing.length) return { kind: 'no-key', missing };
  return { kind: 'work', key, rewrite, readBack };
}
