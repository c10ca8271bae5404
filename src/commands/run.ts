import type pg from 'pg';
import type { GlobalFlags } from '../config/load-config.js';
import { openContext, requireState, type Context } from '../context.js';
import { ConnectWaitInterrupted } from '../db/connect.js';
import { ConfigError, EXIT_NOT_CONVERGED, EXIT_OK, EXIT_RUNTIME, exitCodeOf } from '../errors.js';
import { parseDurationFlag } from '../config/duration-flag.js';
import { finishRun, openedSummary, startRun, type RunOutcome } from '../state/runs.js';
import { loadKeyRing, type KeyRing } from '../crypto/key-ring.js';
import { initSodium, memzero } from '../crypto/secretbox.js';
import { resolveTables } from '../db/catalog.js';
import { refuseHiddenRows } from '../db/row-security.js';
import { refuseTriggerSurprises } from '../db/triggers.js';
import { proveTargetKey } from '../crypto/target-proof.js';
import { Daemon } from '../daemon/daemon.js';
import { LeaseHeld, SlotLease } from '../daemon/lease.js';
import { Standby } from '../daemon/standby.js';
import { createTermPool } from '../daemon/term-pool.js';
import type { HttpEndpoint } from '../daemon/http.js';
import { versionLabel } from '../crypto/envelope.js';
import { ShutdownBound } from '../daemon/shutdown-bound.js';
import { onShutdownSignals } from '../signals.js';

/**
 * The long-running daemon: stream + sweep + HTTP endpoint until a signal (or
 * convergence). Order: connect, check the state schema, take the slot's lease
 * (exit 2 if another run has it), then everything else. From the first stop
 * on, the process exits within daemon.shutdown_timeout (ShutdownBound).
 */
export async function runCommand(flags: GlobalFlags, opts: { exitWhenConverged?: boolean; quietPeriod?: string; fast?: boolean; standby?: boolean }): Promise<number> {
  const quietPeriodMs = opts.quietPeriod === undefined ? 0 : parseDurationFlag('--quiet-period', opts.quietPeriod);
  if (opts.quietPeriod !== undefined && !opts.exitWhenConverged) {
    throw new ConfigError('--quiet-period only applies with --exit-when-converged', 'add --exit-when-converged (a run without it keeps running; `pg-rekey status` shows how long it has been quiet)');
  }
  const ring = loadKeyRing({ env: process.env, envFile: flags.envFile });
  await initSodium();
  let ctx: Context;
  try {
    // A daemon waits for its database (restarts, failovers, boot order): forever, at most 30 s between attempts.
    ctx = await openContext(flags, { poolSize: (c) => 5 + 2 * Math.max(1, c.sweep.workers), defaultLogLevel: 'info', waitForDatabaseMs: Infinity });
  } catch (e) {
    ring.wipe(memzero);
    // SIGTERM while waiting: a stop like any other (exit 0), there was nothing to drain.
    if (e instanceof ConnectWaitInterrupted) return EXIT_OK;
    throw e;
  }
  const bound = new ShutdownBound(ctx.config.daemon.shutdownTimeoutMs, ctx.log);
  const state: RunState = { daemon: null, standby: null, signalled: false, pools: [] };
  // From here on a signal drains (or, before the daemon exists, ends the startup); a second one exits at once.
  const removeSignals = onShutdownSignals(ctx.log, () => {
    state.signalled = true;
    bound.arm('signal');
    state.standby?.stop();
    state.daemon?.stop();
  });
  let exit = EXIT_RUNTIME;
  try {
    exit = await runLeased(ctx, ring, bound, state, { exitWhenConverged: opts.exitWhenConverged === true, quietPeriodMs, fast: opts.fast === true, standby: opts.standby === true });
    return exit;
  } catch (e) {
    exit = exitCodeOf(e);
    throw e;
  } finally {
    // The drain is over (the batch, its acknowledgement, the checkpoint, the state rows): if closing
    // the connections is what hangs (a read-only query waiting for a lock), the bound exits with `exit`.
    bound.arm('exiting');
    bound.drained(exit);
    ring.wipe(memzero);
    await bound.track('closing the database connections', Promise.all([ctx.close(), ...state.pools.map((p) => p.end().catch(() => undefined))]));
    removeSignals();
  }
}

interface RunState {
  daemon: Daemon | null;
  standby: Standby | null;
  signalled: boolean;
  /** The leader's pool (with its term), closed with the context's pool. */
  pools: pg.Pool[];
}

interface RunOptions {
  exitWhenConverged: boolean;
  quietPeriodMs: number;
  fast: boolean;
  standby: boolean;
}

/** The slot's lease: at once, or (--standby) once the holder is gone. null: stopped while waiting. */
async function takeLease(ctx: Context, ring: KeyRing, state: RunState, standby: boolean): Promise<{ lease: SlotLease; http?: HttpEndpoint } | null> {
  const { config } = ctx;
  try {
    return { lease: await SlotLease.acquire({ connectionString: config.connectionString, slot: config.replication.slot, log: ctx.log }) };
  } catch (e) {
    if (!standby || !(e instanceof LeaseHeld)) throw e;
  }
  // What would stop it as leader stops it now, not at the takeover (exit 2).
  const tables = await resolveTables(ctx.pool, config.tables);
  await refuseHiddenRows(ctx.pool, tables);
  await refuseTriggerSurprises(ctx.pool, tables, ctx.log);
  await proveTargetKey(ctx.pool, tables, ring, ctx.log);
  if (state.signalled) return null;
  state.standby = new Standby(ctx, versionLabel(ring.target));
  try {
    return await state.standby.wait();
  } finally {
    state.standby = null;
  }
}

async function runLeased(base: Context, ring: KeyRing, bound: ShutdownBound, state: RunState, o: RunOptions): Promise<number> {
  const { exitWhenConverged, quietPeriodMs, fast } = o;
  const { config } = base;
  await requireState(base.pool);
  // Before anything else that touches the slot or the state: one daemon per slot (exit 2 if taken, or wait as a standby).
  const taken = await takeLease(base, ring, state, o.standby);
  if (!taken) return EXIT_OK;
  const { lease, http } = taken;
  // Every connection of the leader's pool carries its term: the database refuses its state writes once another run leads.
  const pool = createTermPool({ connectionString: config.connectionString, max: 7, slot: config.replication.slot, term: lease.token.term, onFenced: (e) => {
      base.log.fatal({ err: e, term: lease.token.term, slot: config.replication.slot }, `FENCED: the database refused a state write of term ${lease.token.term} (SQLSTATE RKF01): another pg-rekey run leads replication slot ${config.replication.slot} now; stopping (exit 3)`);
      lease.fence(e);
    } });
  state.pools.push(pool);
  const ctx: Context = { ...base, pool };
  let served = false;
  try {
    const tables = await resolveTables(ctx.pool, config.tables);
    // Before the first rewrite: every row must be visible to this role, and the target key must
    // open the target-version values the applications already wrote (exit 2 otherwise).
    await refuseHiddenRows(ctx.pool, tables);
    // Triggers a rewrite would fire without a decision (one created since setup), or a `skip` this role may not do.
    await refuseTriggerSurprises(ctx.pool, tables, ctx.log);
    await proveTargetKey(ctx.pool, tables, ring, ctx.log);
    if (state.signalled) return EXIT_OK;
    const daemon = new Daemon(ctx, ring, tables, { exitWhenConverged, quietPeriodMs, lease, bound, fast, http });
    state.daemon = daemon;
    served = true;
    const runId = await startRun(ctx.pool, 'run', ring);
    let code: number | null = null;
    try {
      code = await daemon.run();
      return code;
    } finally {
      const outcome: RunOutcome =
        code === null ? 'failed' : state.signalled ? 'interrupted' : code === EXIT_OK ? 'ok' : code === EXIT_NOT_CONVERGED ? 'not-converged' : 'failed';
      // This run's own history row: written even after a lost lease (no other daemon writes it).
      await bound.track('the run history row', finishRun(ctx.pool, runId, outcome, { exitCode: code, converged: daemon.converged, opened: openedSummary(daemon.opened) })).catch(() => undefined);
    }
  } finally {
    if (http && !served) {
      const closed = new Promise((r) => http.server.close(r));
      http.server.closeAllConnections(); // keep-alive scrapers
      await closed;
    }
    await bound.track('releasing the slot lease', lease.release());
  }
}
