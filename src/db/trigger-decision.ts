import type { TriggerDecision } from '../config/load-config.js';

/**
 * What pg-rekey's rewrites do to a table's triggers, as pure logic (src/db/triggers.ts reads the
 * catalog). A rewrite is an UPDATE of the configured columns: it fires every user trigger on
 * UPDATE (or UPDATE OF one of those columns) of the relation it writes, as any UPDATE does, unless
 * the config says `triggers: skip`, which runs the rewrite with session_replication_role =
 * replica. In replica mode PostgreSQL fires only ENABLE ALWAYS and ENABLE REPLICA triggers
 * (pg_trigger.tgenabled 'A' and 'R'); in the default (origin) mode ENABLE ('O') and ENABLE ALWAYS.
 * Rules ON UPDATE (CREATE RULE ... DO ALSO / DO INSTEAD) rewrite the UPDATE itself and follow
 * session_replication_role the same way (pg_rewrite.ev_enabled): they are listed with them.
 */

/** pg_trigger.tgenabled of a trigger that can fire ('D', disabled, never does). */
export type TriggerState = 'O' | 'A' | 'R';

export interface UpdateTrigger {
  /** A trigger, or a rule ON UPDATE (timing DO ALSO / DO INSTEAD, level STATEMENT). */
  kind?: 'trigger' | 'rule';
  /** The leaf it is on (display name). */
  relation: string;
  name: string;
  timing: 'BEFORE' | 'AFTER' | 'INSTEAD OF' | 'DO ALSO' | 'DO INSTEAD';
  level: 'ROW' | 'STATEMENT';
  state: TriggerState;
  /** The trigger function (regproc text); empty for a rule. */
  function: string;
  /** UPDATE OF columns (null: any UPDATE). */
  columns: string[] | null;
  /** Has a WHEN condition (it may not fire for every row). */
  when: boolean;
}

// pg_trigger.tgtype bits (catalog/pg_trigger.h).
const ROW = 1;
const BEFORE = 2;
const INSTEAD = 64;

export function decodeTgtype(tgtype: number): Pick<UpdateTrigger, 'timing' | 'level'> {
  return {
    timing: tgtype & INSTEAD ? 'INSTEAD OF' : tgtype & BEFORE ? 'BEFORE' : 'AFTER',
    level: tgtype & ROW ? 'ROW' : 'STATEMENT',
  };
}

export const STATE_SQL: Record<TriggerState, string> = { O: 'ENABLE', A: 'ENABLE ALWAYS', R: 'ENABLE REPLICA' };

/** Whether the trigger fires on a rewrite under the decision (undecided rewrites would run as `fire`). */
export function fires(state: TriggerState, decision: TriggerDecision | undefined): boolean {
  return decision === 'skip' ? state !== 'O' : state !== 'R';
}

/** `"audit" AFTER ROW (ENABLE ALWAYS, UPDATE OF secret, WHEN ..., function audit_fn) on public.calls_a, public.calls_b` */
export function describeTrigger(t: UpdateTrigger, on: readonly string[]): string {
  const details = [STATE_SQL[t.state], t.columns ? `UPDATE OF ${t.columns.join(', ')}` : '', t.when ? `with a ${t.kind === 'rule' ? 'WHERE' : 'WHEN'} condition` : '', t.function ? `function ${t.function}` : ''].filter(Boolean);
  const where = on.length <= 3 ? on.join(', ') : `${on.length} leaves (${on.slice(0, 2).join(', ')}, ...)`;
  if (t.kind === 'rule') return `rule "${t.name}" ON UPDATE ${t.timing} (${details.join(', ')}) on ${where}`;
  return `"${t.name}" ${t.timing} ${t.level} (${details.join(', ')}) on ${where}`;
}

/**
 * The triggers of one table, one entry per trigger (a row trigger of a partitioned table is
 * cloned onto every partition: shown once, with the leaves it is on).
 */
export function groupTriggers(triggers: readonly UpdateTrigger[]): { trigger: UpdateTrigger; on: string[] }[] {
  const groups = new Map<string, { trigger: UpdateTrigger; on: string[] }>();
  for (const t of triggers) {
    const k = JSON.stringify([t.kind, t.name, t.timing, t.level, t.state, t.function, t.columns, t.when]);
    const g = groups.get(k);
    if (g) g.on.push(t.relation);
    else groups.set(k, { trigger: t, on: [t.relation] });
  }
  return [...groups.values()];
}

export interface TableTriggers {
  table: string;
  columns: readonly string[];
  decision: TriggerDecision | undefined;
  triggers: UpdateTrigger[];
}

const CHOICES =
  'decide in the config, for this table (`tables[].triggers`) or for all (top-level `triggers:`): `triggers: fire` (every rewrite fires them, as any UPDATE of the column would: ' +
  'an updated_at trigger stamps each rewritten row, an audit trigger records the old ciphertext where pg-rekey never rotates it) or `triggers: skip` ' +
  '(rewrites run with session_replication_role = replica: ENABLE triggers do not fire, ENABLE ALWAYS and ENABLE REPLICA ones do); see README "Triggers"';

function whatFires(ts: readonly UpdateTrigger[]): string {
  const rules = ts.some((t) => t.kind === 'rule');
  const triggers = ts.some((t) => t.kind !== 'rule');
  return triggers && rules ? 'trigger(s) and rule(s) fire' : rules ? 'rule(s) fire' : 'trigger(s) fire';
}

/** One problem per table with UPDATE triggers (or rules) and no decision. */
export function undecidedProblems(found: readonly TableTriggers[]): string[] {
  return found
    .filter((f) => f.decision === undefined && f.triggers.length > 0)
    .map((f) => `${f.table}: ${whatFires(f.triggers)} on an UPDATE of ${f.columns.join(', ')}, which is what each rewrite is: ${groupTriggers(f.triggers).map((g) => describeTrigger(g.trigger, g.on)).join('; ')}; ${CHOICES}`);
}

/** What setup tells the operator about each decided table with triggers: which fire on a rewrite and which do not. */
export function decisionReport(found: readonly TableTriggers[]): string[] {
  const out: string[] = [];
  for (const f of found) {
    if (f.decision === undefined || f.triggers.length === 0) continue;
    const groups = groupTriggers(f.triggers);
    const firing = groups.filter((g) => fires(g.trigger.state, f.decision));
    const silent = groups.filter((g) => !fires(g.trigger.state, f.decision));
    const list = (gs: typeof groups) => gs.map((g) => describeTrigger(g.trigger, g.on)).join('; ');
    if (f.decision === 'fire') {
      out.push(`table ${f.table}: triggers: fire; each rewrite fires ${firing.length ? list(firing) : 'none of them'}${silent.length ? `; not fired (ENABLE REPLICA, only in replica mode): ${list(silent)}` : ''}`);
    } else {
      out.push(
        `table ${f.table}: triggers: skip; rewrites run with session_replication_role = replica, so ${silent.length ? list(silent) : 'no trigger'} ${silent.length === 1 ? 'does' : 'do'} not fire` +
          (firing.length ? `; STILL FIRING on each rewrite (ENABLE ALWAYS, and ENABLE REPLICA, which fires only in replica mode): ${list(firing)}` : ''),
      );
    }
  }
  return out;
}
