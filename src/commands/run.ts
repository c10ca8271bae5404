import type { GlobalFlags } from '../config/load-config.js';
import { openContext, requireState } from '../context.js';
import { loadKeyRing } from '../crypto/key-ring.js';
import { initSodium, memzero } from '../crypto/secretbox.js';
import { resolveTables } from '../db/catalog.js';
import { Daemon } from '../daemon/daemon.js';
import { onShutdownSignals } from '../signals.js';

/** The long-running daemon: stream + sweep + HTTP endpoint until a signal (or convergence). */
export async function runCommand(flags: GlobalFlags, opts: { exitWhenConverged?: boolean }): Promise<number> {
  const ring = loadKeyRing({ env: process.env, envFile: flags.envFile });
  await initSodium();
  const ctx = await openContext(flags, { poolSize: 6, defaultLogLevel: 'info' });
  try {
    await requireState(ctx.pool);
    const tables = await resolveTables(ctx.pool, ctx.config.tables);
    const daemon = new Daemon(ctx, ring, tables, { exitWhenConverged: opts.exitWhenConverged === true });
    const removeSignals = onShutdownSignals(ctx.log, () => daemon.stop());
    try {
      return await daemon.run();
    } finally {
      removeSignals();
    }
  } finally {
    ring.wipe(memzero);
    await ctx.close();
  }
}
