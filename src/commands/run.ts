import type { GlobalFlags } from '../config/load-config.js';
import { openContext, requireState, type Context } from '../context.js';
import { ConnectWaitInterrupted } from '../db/connect.js';
import { EXIT_NOT_CONVERGED, EXIT_OK } from '../errors.js';
import { finishRun, startRun, type RunOutcome } from '../state/runs.js';
import { loadKeyRing } from '../crypto/key-ring.js';
import { initSodium, memzero } from '../crypto/secretbox.js';
import { resolveTables } from '../db/catalog.js';
import { Daemon } from '../daemon/daemon.js';
import { onShutdownSignals } from '../signals.js';

/** The long-running daemon: stream + sweep + HTTP endpoint until a signal (or convergence). */
export async function runCommand(flags: GlobalFlags, opts: { exitWhenConverged?: boolean }): Promise<number> {
  const ring = loadKeyRing({ env: process.env, envFile: flags.envFile });
  await initSodium();
  let ctx: Context;
  try {
    // A daemon waits for its database (restarts, failovers, boot order): forever, at most 30 s between attempts.
    ctx = await openContext(flags, { poolSize: 7, defaultLogLevel: 'info', waitForDatabaseMs: Infinity });
  } catch (e) {
    ring.wipe(memzero);
    // SIGTERM while waiting: a stop like any other (exit 0), there was nothing to drain.
    if (e instanceof ConnectWaitInterrupted) return EXIT_OK;
    throw e;
  }
  try {
    await requireState(ctx.pool);
    const tables = await resolveTables(ctx.pool, ctx.config.tables);
    const daemon = new Daemon(ctx, ring, tables, { exitWhenConverged: opts.exitWhenConverged === true });
    let signalled = false;
    const removeSignals = onShutdownSignals(ctx.log, () => {
      signalled = true;
      daemon.stop();
    });
    const runId = await startRun(ctx.pool, 'run', ring.target);
    let code: number | null = null;
    try {
      code = await daemon.run();
      return code;
    } finally {
      removeSignals();
      const outcome: RunOutcome =
        code === null ? 'failed' : signalled ? 'interrupted' : code === EXIT_OK ? 'ok' : code === EXIT_NOT_CONVERGED ? 'not-converged' : 'failed';
      await finishRun(ctx.pool, runId, outcome, { exitCode: code, converged: daemon.converged }).catch(() => undefined);
    }
  } finally {
    ring.wipe(memzero);
    await ctx.close();
  }
}
