import { hostname } from 'node:os';
import type pg from 'pg';
import type { Logger } from '../logger.js';
import { stateIsCurrent } from '../db/migrate.js';

/** A result of `verify --decrypt` or `discover`, as stored in pgrekey.check_result (sql/007). */
export interface CheckRecord {
  kind: 'deep-verify' | 'discover';
  mode: 'full' | 'sample';
  /** What ran it, e.g. 'verify --decrypt --sample 100', 'discover --full', 'verify'. */
  command: string;
  targetVersion: number;
  startedAt: string;
  ok: boolean;
  /** The plain result object (counts, names, ctids: never a value). */
  result: object;
}

/**
 * Records a check result when setup has made the state schema; without it (a check run before
 * setup) nothing is recorded. A failure to record is logged, not fatal: the check's own output
 * and exit code stand.
 */
export async function recordCheck(db: pg.Pool, rec: CheckRecord, log: Logger): Promise<boolean> {
  try {
    if (!(await stateIsCurrent(db))) return false;
    await db.query(
      `insert into pgrekey.check_result (kind, mode, command, target_version, started_at, ok, host, result) values ($1, $2, $3, $4, $5, $6, $7, $8)`,
      [rec.kind, rec.mode, rec.command, rec.targetVersion, rec.startedAt, rec.ok, hostname(), JSON.stringify(rec.result)],
    );
    return true;
  } catch (e) {
    log.warn({ component: 'check-result', err: e, kind: rec.kind }, 'could not record the check result in pgrekey.check_result; its output above stands');
    return false;
  }
}

/**
 * The latest result of each kind, mode, outcome and target version (for `report`): the verdict
 * needs the latest full pass AND the latest failure of any mode, so that a later sampled
 * pass (every plain `verify` records one) cannot hide a failed full pass.
 */
export async function latestChecks(db: pg.Pool | pg.ClientBase): Promise<(CheckRecord & { finishedAt: string; host: string | null })[]> {
  const r = await db.query<{ kind: CheckRecord['kind']; mode: CheckRecord['mode']; command: string; target_version: number; started_at: Date; finished_at: Date; ok: boolean; host: string | null; result: object }>(
    `select * from (select distinct on (kind, mode, ok, target_version) kind, mode, command, target_version, started_at, finished_at, ok, host, result
       from pgrekey.check_result order by kind, mode, ok, target_version, started_at desc, finished_at desc) x order by finished_at`,
  );
  return r.rows.map((x) => ({ kind: x.kind, mode: x.mode, command: x.command, targetVersion: x.target_version, startedAt: x.started_at.toISOString(), finishedAt: x.finished_at.toISOString(), ok: x.ok, host: x.host, result: x.result }));
}
