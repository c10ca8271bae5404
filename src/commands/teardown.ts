import type { GlobalFlags } from '../config/load-config.js';
import { openContext } from '../context.js';
import { loadTargetVersion } from '../crypto/key-ring.js';
import { resolveTables } from '../db/catalog.js';
import { quoteIdent } from '../db/ident.js';
import { stateIsCurrent, STATE_SCHEMA } from '../db/migrate.js';
import { ConfigError, EXIT_OK } from '../errors.js';
import { sleep } from '../timing.js';
import { countVersions } from '../verify/count-versions.js';
import { findOutsideRelations, outsideProblems } from '../verify/outside.js';
import { dropSlot, readSlot } from '../replication/slot.js';
import { dropOrigins } from '../replication/origin.js';
import { describeHolder, readLeaseHolder, terminateLeaseHolder } from '../daemon/lease.js';
import { lastEventAt } from '../state/events.js';

/**
 * Drops the replication slot and the publication (and the state schema with
 * --drop-state). Refuses unless verify says converged, or --force: a
 * forgotten slot retains WAL until the disk fills, but dropping it early
 * means old-key writes are no longer caught.
 */
export async function teardownCommand(flags: GlobalFlags, opts: { force?: boolean; dropState?: boolean }): Promise<number> {
  const ctx = await openContext(flags);
  try {
    const { slot, publication } = ctx.config.replication;
    const log = ctx.log.child({ component: 'teardown' });
    const info = await readSlot(ctx.pool, slot);
    // The daemon as it recorded itself when it took the slot's lease (pid and host), not the walsender.
    const holder = await readLeaseHolder(ctx.pool, slot);
    // The state is the only history of the rotation: it goes only once a report has kept it.
    if (opts.dropState && !opts.force && (await stateIsCurrent(ctx.pool).catch(() => false))) await refuseUnreported(ctx.pool);
    if (!opts.force) {
      const target = loadTargetVersion({ env: process.env, envFile: flags.envFile });
      const tables = await resolveTables(ctx.pool, ctx.config.tables);
      const remaining = (await countVersions(ctx.pool, tables, target, false)).reduce((n, c) => n + c.nonTarget, 0);
      if (remaining > 0) {
        throw new ConfigError(
          `refusing to tear down: ${remaining} value(s) are not at the target version yet (verify is not converged)`,
          'let `pg-rekey run` converge (or handle the quarantined values), check with `pg-rekey verify`, then teardown; --force drops the slot anyway (old-key writes are then no longer caught)',
        );
      }
      // A partition detached or a child unlinked still holding old-version values: their loss is not a convergence.
      const outside = outsideProblems(await findOutsideRelations(ctx.pool, tables, target, ctx.config.ignore));
      if (outside.length) {
        throw new ConfigError(
          `refusing to tear down: ${outside.length} relation(s) that left the configured tables still hold old-version values (verify is not converged)`,
          'rotate them (add them to `tables:`, `pg-rekey setup`, let `pg-rekey run` converge) or accept their values as they are in `ignore:`, check with `pg-rekey verify`, then teardown; --force drops the slot anyway',
          outside,
        );
      }
      if (holder.held) {
        throw new ConfigError(
          `refusing to tear down: slot ${slot} is in use by a running pg-rekey run: ${describeHolder(holder)}`,
          'stop `pg-rekey run` first (SIGTERM), or pass --force to terminate it',
        );
      }
      if (info.active) {
        throw new ConfigError(
          `refusing to tear down: slot ${slot} is being streamed by a replication client that is not a pg-rekey run holding the slot (walsender pid ${info.activePid} on the server)`,
          'stop that client first, or pass --force to terminate it',
        );
      }
    } else if (holder.held) {
      // The daemon loses its lease and stops without writing more state; then the slot is free to drop.
      if (await terminateLeaseHolder(ctx.pool, slot).catch(() => false)) {
        log.warn({ slot, daemon: describeHolder(holder) }, 'teardown --force: ended the lease session of the running pg-rekey run; it stops');
        for (let i = 0; i < 50 && (await readSlot(ctx.pool, slot)).active; i++) await sleep(100);
      }
    }
    const dropped = await dropSlot(ctx.pool, slot, opts.force ? 'teardown --force' : 'teardown').catch(async (e) => {
      // The state schema may be gone already (slot_event insert); the drop itself is what matters.
      if (!(await readSlot(ctx.pool, slot)).exists) return true;
      throw e;
    });
    const pub = await ctx.pool.query<{ owner: string; mine: boolean }>(
      `select pg_get_userbyid(pubowner) as owner, pg_has_role(pubowner, 'USAGE') as mine from pg_publication where pubname = $1`,
      [publication],
    );
    const pubRow = pub.rows[0];
    // A least-privilege role (sql/roles.sql) does not own the publication its DBA made.
    if (pubRow?.mine) await ctx.pool.query(`drop publication ${quoteIdent(publication)}`);
    const origins = await dropOrigins(ctx.pool, slot);
    let stateDropped = false;
    if (opts.dropState && (await stateIsCurrent(ctx.pool).catch(() => false))) {
      await ctx.pool.query(`drop schema ${STATE_SCHEMA} cascade`);
      stateDropped = true;
    }
    const pubLine = !pubRow
      ? `no publication ${publication} (already gone)`
      : pubRow.mine
        ? `dropped publication ${publication}`
        : `kept publication ${publication}: it is owned by ${pubRow.owner}; as that role run DROP PUBLICATION ${quoteIdent(publication)}`;
    log.info({ slot, dropped, publication: pubLine, stateDropped }, 'teardown complete');
    process.stdout.write(
      [
        dropped ? `dropped replication slot ${slot}` : `no replication slot ${slot} (already gone)`,
        pubLine,
        ...origins.dropped.map((o) => `dropped replication origin ${o}`),
        ...(origins.left.length ? [`kept replication origin(s): this role may not drop them; as a superuser run ${origins.left.join(' ')}`] : []),
        stateDropped ? `dropped schema ${STATE_SCHEMA}` : opts.dropState ? `no schema ${STATE_SCHEMA}` : `kept schema ${STATE_SCHEMA} (history, quarantine); --drop-state removes it`,
        'teardown complete',
      ].join('\n') + '\n',
    );
    return EXIT_OK;
  } finally {
    await ctx.close();
  }
}

/**
 * teardown --drop-state deletes the rotation's only history (runs, verify results, quarantine,
 * old-version writes): refused (exit 2, nothing dropped) unless `pg-rekey report` was written
 * after the last verify, so the record an auditor files describes the final state.
 */
async function refuseUnreported(db: Parameters<typeof lastEventAt>[0]): Promise<void> {
  const report = await lastEventAt(db, 'report');
  const verify = await lastEventAt(db, 'verify');
  if (report && (!verify || report >= verify)) return;
  throw new ConfigError(
    report
      ? `refusing to drop the state: the last report (${report.toISOString()}) was written before the last verify (${verify!.toISOString()}); the state is the only history of this rotation`
      : `refusing to drop the state: no \`pg-rekey report\` was written${verify ? ` after the last verify (${verify.toISOString()})` : ''}; the state is the only history of this rotation`,
    'write the rotation record first: `pg-rekey report --format html -o rotation.html` (and keep it), then teardown --drop-state; or teardown without --drop-state, or --force to drop it unrecorded; nothing was dropped',
  );
}
