import { hostname } from 'node:os';
import type pg from 'pg';
import type { KeyRing } from '../crypto/key-ring.js';
import { ringFingerprints } from '../crypto/fingerprint.js';

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
