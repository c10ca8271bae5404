import { hostname } from 'node:os';
import type pg from 'pg';

export type RunOutcome = 'ok' | 'not-converged' | 'failed' | 'interrupted' | 'dry-run';

/** One row per command that changes or sweeps data, for the operator's history. */
export async function startRun(db: pg.Pool | pg.ClientBase, command: string, targetVersion: number): Promise<number> {
  const r = await db.query<{ id: string }>(
    `insert into pgrekey.run (command, target_version, host, pid) values ($1, $2, $3, $4) returning id`,
    [command, targetVersion, hostname(), process.pid],
  );
  return Number(r.rows[0]!.id);
}

export async function finishRun(db: pg.Pool | pg.ClientBase, id: number, outcome: RunOutcome, summary: object): Promise<void> {
  await db.query(`update pgrekey.run set finished_at = now(), outcome = $2, summary = $3 where id = $1`, [id, outcome, JSON.stringify(summary)]);
}
