import { hostname } from 'node:os';
import type pg from 'pg';
import type { KeyRing } from '../crypto/key-ring.js';
import { ringFingerprints } from '../crypto/fingerprint.js';
import { versionLabel } from '../crypto/envelope.js';

export type RunOutcome = 'ok' | 'not-converged' | 'failed' | 'interrupted' | 'dry-run';

/**
 * One row per command that changes or sweeps data, for the operator's history and the rotation
 * record: host, pid, database role (the column's default, current_user) and the fingerprints of
 * the keys it held (sql/008; never the keys).
 */
export async function startRun(db: pg.Pool | pg.ClientBase, command: string, ring: KeyRing): Promise<number> {
  const r = await db.query<{ id: string }>(
    `insert into pgrekey.run (command, target_version, host, pid, key_fingerprints) values ($1, $2, $3, $4, $5) returning id`,
    [command, ring.target, hostname(), process.pid, JSON.stringify(ringFingerprints(ring))],
  );
  return Number(r.rows[0]!.id);
}

export async function finishRun(db: pg.Pool | pg.ClientBase, id: number, outcome: RunOutcome, summary: object): Promise<void> {
  await db.query(`update pgrekey.run set finished_at = now(), outcome = $2, summary = $3 where id = $1`, [id, outcome, JSON.stringify(summary)]);
}

/**
 * Whether an earlier run holding this very key for `version` (same fingerprint) recorded values
 * of that version that opened (its summary's `opened`): then the key is the application's, and
 * values of that version that do not open now are corrupt, not a wrong key (`backfill --restart`
 * re-examining the quarantine). False when nothing says so, or without the state (a dry run
 * before setup).
 */
export async function keyOpenedBefore(db: pg.Pool | pg.ClientBase, ring: KeyRing, version: number): Promise<boolean> {
  const label = versionLabel(version);
  const fp = ringFingerprints(ring)[label];
  if (!fp) return false;
  try {
    const r = await db.query<{ e: boolean }>(
      `select exists (select 1 from pgrekey.run where key_fingerprints ->> $1 = $2 and jsonb_typeof(summary -> 'opened' -> $1) = 'number' and (summary -> 'opened' ->> $1)::numeric > 0) as e`,
      [label, fp],
    );
    return r.rows[0]?.e === true;
  } catch {
    return false;
  }
}

/** Values that opened, by version label: the evidence keyOpenedBefore reads. */
export function openedSummary(opened: ReadonlyMap<number, number>): Record<string, number> {
  return Object.fromEntries([...opened].filter(([, n]) => n > 0).map(([v, n]) => [versionLabel(v), n]));
}
