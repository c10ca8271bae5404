/**
 * `pg-rekey run` as a supervisor of named parts, each in its own file and
 * owning its state; they talk to each other only through the callbacks wired
 * in the constructor below.
 *
 *   lease             lease.ts: one daemon per slot; taken by the caller (commands/run.ts)
 *                     before anything else; losing it stops the daemon (exit 3)
 *   HTTP endpoint     http.ts: /, /healthz, /readyz, /metrics
 *   catalog           catalog-follower.ts (over catalog-watch.ts): the configured
 *                     tables and relations as they are now; follows DDL
 *   slot-watch        slot-watch.ts: the slot exists and is usable, or is recreated
 *   stream            stream-runner.ts: the data path, in one direction:
 *                     WAL message (stream.ts decodes pgoutput) -> rewrite
 *                     (stream-writer.ts re-encrypts old-version values) -> CAS
 *                     batch (the writer's flush) -> acknowledgement (the stream
 *                     confirms the slot past the committed batch)
 *   sweep             sweep-runner.ts: ctid-range passes over every table
 *   convergence       convergence-runner.ts (over convergence.ts): CONVERGED, re-sweeps, the exit
 *   status-writer     status-writer.ts: the status row and the status page
 *
 * Start order: lease (caller), HTTP endpoint, then at startup the catalog,
 * the slot (checked or created), origins and the stream's writer; then the
 * stream, the sweep, and the timers of slot-watch, convergence and catalog.
 * stop() arms the shutdown bound (shutdown-bound.ts); shutdown() stops the
 * parts in reverse order: the timers, then drains the sweep's chunk and the
 * stream's batch (flush, acknowledge) together, waits for checks in flight,
 * writes the final status row, closes the HTTP endpoint, all within
 * daemon.shutdown_timeout.
 */
import type { Server } from 'node:http';
import type { Context } from '../context.js';
import type { KeyRing } from '../crypto/key-ring.js';
import type { TableInfo } from '../db/catalog.js';
import { EXIT_OK, EXIT_RUNTIME, exitCodeOf } from '../errors.js';
import { Metrics } from '../metrics.js';
import { versionLabel } from '../crypto/envelope.js';
import { PG_REKEY_VERSION } from '../version.js';
import { formatLsn } from '../replication/lsn.js';
import { rewriteOrigins, type RewriteOrigins } from '../replication/origin.js';
import { listenForDaemon, type HttpEndpoint } from './http.js';
import { Fenced } from './leader-term.js';
import type { SlotLease } from './lease.js';
import type { ShutdownBound } from './shutdown-bound.js';
import { CatalogFollower } from './catalog-follower.js';
import { ConvergenceRunner } from './convergence-runner.js';
import { SlotWatch } from './slot-watch.js';
import { StatusWriter } from './status-writer.js';
import { StreamRunner } from './stream-runner.js';
import { SweepRunner } from './sweep-runner.js';

export interface DaemonOptions {
  exitWhenConverged: boolean;
  /**
   * --quiet-period: with exitWhenConverged, exit only once no old-version write has been seen for
   * this long (counted from the last one's commit time, or the slot's creation); 0 = at once.
   */
  quietPeriodMs: number;
  /** The slot's lease, taken by the caller before anything else (lease.ts); losing it stops the daemon. */
  lease: SlotLease;
  /** Bounds the shutdown (daemon.shutdown_timeout); armed by the first stop. */
  bound: ShutdownBound;
  /** `run --fast`: sweep.mode fast (unthrottled). */
  fast?: boolean;
  /** A standby's endpoint (run --standby), served by this daemon from now on instead of opening its own. */
  http?: HttpEndpoint;
}

/** `pg-rekey run`: builds, starts and stops the parts (see above). Resolves with the exit code. */
export class Daemon {
  readonly metrics = new Metrics();
  private readonly log;
  private stopping = false;
  private finish!: (code: number) => void;
  private readonly finished = new Promise<number>((r) => (this.finish = r));
  /** replication.origin as resolved at start (replication/origin.ts). */
  private origins: RewriteOrigins = { state: { on: false, names: { sweep: '', stream: '' }, fixes: [] } };
  private readonly catalog: CatalogFollower;
  private readonly slotWatch: SlotWatch;
  private readonly stream: StreamRunner;
  private readonly sweep: SweepRunner;
  private readonly convergence: ConvergenceRunner;
  private readonly status: StatusWriter;

  constructor(
    private readonly ctx: Context,
    ring: KeyRing,
    tables: TableInfo[],
    private readonly opts: DaemonOptions,
  ) {
    const log = (this.log = ctx.log.child({ component: 'daemon' }));
    const { metrics } = this;
    metrics.info.set({ target_version: versionLabel(ring.target), slot: ctx.config.replication.slot, version: PG_REKEY_VERSION }, 1);
    metrics.slotRetainedWalMaxBytes.set(ctx.config.replication.maxRetainedWalBytes);
    metrics.leader.set(1);
    metrics.term.set(Number(opts.lease.token.term));
    const stopping = () => this.stopping;
    const stop = (code: number) => this.stop(code);
    const writeState = () => this.status.write();
    this.catalog = new CatalogFollower(ctx, ring, log, tables, {
      stopping,
      stream: () => this.stream,
      onChanged: (resweep, abandon) => {
        this.convergence.invalidate(); // checked again once the sweep pass over the new set of relations is complete
        this.sweep.sweepAgain(resweep, abandon);
      },
      stop,
    });
    this.slotWatch = new SlotWatch(ctx, metrics, log, {
      onFailoverContinued: () => this.convergence.invalidate(),
      onRecreated: () => {
        this.convergence.invalidate();
        this.sweep.restartAll();
      },
      streamConnected: () => this.stream.connected,
      writeState,
      stop,
    });
    this.stream = new StreamRunner(ctx, ring, metrics, log, opts.lease, {
      relations: () => this.catalog.relations,
      ensureSlot: (reason) => this.slotWatch.ensure(reason),
      refreshTables: (schema, name) => this.catalog.refreshTables(schema, name),
      refreshCatalog: (trigger) => this.catalog.refresh(trigger),
    });
    this.sweep = new SweepRunner(ctx, ring, metrics, log, {
      stopping,
      tables: () => this.catalog.tables,
      onComplete: () => this.convergence.checkSoon(),
      refreshCatalog: (trigger) => this.catalog.refresh(trigger),
      noteOwnTransaction: (xid) => this.stream.noteOwnTransaction(xid),
      origin: () => this.origins.sweep,
      stop,
    }, opts.fast ?? false);
    this.convergence = new ConvergenceRunner(ctx, ring, metrics, log, opts, {
      stopping,
      tables: () => this.catalog.tables,
      sweep: () => this.sweep,
      stream: () => this.stream,
      resweep: (leaves) => this.sweep.sweepAgain(leaves),
      refreshCatalog: (trigger) => this.catalog.refresh(trigger),
      writeState,
      stop,
    });
    this.status = new StatusWriter(ctx, ring, opts.lease, opts, {
      stopping,
      stream: () => (this.stream.built ? this.stream : undefined),
      sweepDone: () => this.sweep.done,
      convergence: () => this.convergence.status,
    });
    const onLost = (cause: unknown) => {
      const slot = ctx.config.replication.slot;
      metrics.leader.set(0);
      if (cause instanceof Fenced) {
        log.fatal({ err: cause, slot, term: opts.lease.token.term }, `LEASE LOST: ${cause.message} (exit 3)`);
        return this.stop(EXIT_RUNTIME);
      }
      log.fatal(
        { err: cause, slot },
        `LEASE LOST: the connection holding the lease of replication slot ${slot} ended, so another pg-rekey run may take the slot over now; ` +
          'stopping without writing more state (exit 3). Restart `pg-rekey run` once the database is reachable (or let the other one run)',
      );
      this.stop(EXIT_RUNTIME);
    };
    opts.lease.on('lost', onLost);
    if (!opts.lease.held) onLost(new Error('the lease was lost before the daemon started'));
  }

  /** Values the sweep opened, by version (the run history records them: state/runs.ts keyOpenedBefore). */
  get opened(): Map<number, number> {
    return this.sweep.opened;
  }

  /** True when the last convergence check passed. */
  get converged(): boolean {
    return this.convergence.converged;
  }

  /** Starts the parts in order; a stop during startup (a signal while a slot creation waits) goes straight to the shutdown. */
  async run(): Promise<number> {
    const { config } = this.ctx;
    // Before anything touches the slot: a port in use is a configuration error (exit 2).
    const term = this.opts.lease.token.term;
    const health = {
      ready: () => (this.stream.connected ? { ok: true, reason: `streaming (role: leader, term ${term})` } : { ok: false, reason: `replication stream not connected (role: leader, term ${term})` }),
    };
    const http = await listenForDaemon(config.daemon.httpHost, config.daemon.httpPort, { metrics: this.metrics, health, page: () => this.status.html() }, this.opts.http);
    const startup = this.opts.bound.track('startup: reading the catalog, checking (or creating) the replication slot', this.startup());
    let started: boolean;
    try {
      started = await Promise.race([startup.then(() => true), this.finished.then(() => false)]);
    } catch (e) {
      await this.shutdown(exitCodeOf(e), http.server).catch(() => undefined);
      throw e;
    }
    if (!started) return this.shutdown(await this.finished, http.server);
    this.log.info(
      { http: `http://${config.daemon.httpHost}:${http.port}`, slot: config.replication.slot, tables: this.catalog.tables.map((t) => t.display), exitWhenConverged: this.opts.exitWhenConverged },
      'pg-rekey run started: / (status page) /healthz /readyz /metrics',
    );
    this.stream.start();
    this.sweep.start();
    this.slotWatch.start();
    this.convergence.start();
    this.catalog.start();
    return this.shutdown(await this.finished, http.server);
  }

  private async startup(): Promise<void> {
    const { config, pool } = this.ctx;
    await this.catalog.init(); // refuses UNLOGGED leaves; adds INHERITS children created since setup to the publication
    const serverVersionNum = Number((await pool.query<{ v: string }>(`select current_setting('server_version_num') as v`)).rows[0]!.v);
    this.catalog.setServerVersion(serverVersionNum);
    this.slotWatch.init(serverVersionNum);
    await this.slotWatch.ensure('startup check');
    this.origins = await rewriteOrigins(pool, config.replication.origin, config.replication.slot, this.ctx.log);
    this.metrics.rewriteOrigin.set(this.origins.state.on ? 1 : 0);
    await this.stream.init(this.origins);
  }

  /**
   * Drain and exit with `code` (the first stop's code wins): a signal (0),
   * convergence, a failure, a lost lease. Arms the shutdown bound.
   */
  stop(code = EXIT_OK): void {
    this.stopping = true;
    this.opts.bound.arm(`exit ${code}`);
    this.finish(code);
  }

  /**
   * Stops the parts in reverse order of their start and drains them; the
   * ShutdownBound (armed by stop()) ends the process if this takes longer
   * than daemon.shutdown_timeout, and logs which of the named steps was left.
   */
  private async shutdown(code: number, http: Server): Promise<number> {
    const bound = this.opts.bound;
    this.stopping = true;
    bound.arm(`exit ${code}`);
    this.catalog.stop();
    this.convergence.stop();
    this.slotWatch.stop();
    this.sweep.stop();
    // Not waited for (read-only, or ending by themselves), only named if the bound is reached while they run.
    void bound.track('a catalog refresh', this.catalog.pending);
    void bound.track('a slot check or slot creation', this.slotWatch.pending);
    // Drain both at once: the chunk in flight, and the stream's batch (flush, acknowledge).
    await Promise.all([
      bound.track('sweep: the chunk in flight and its checkpoint', this.sweep.finished),
      this.stream.built ? bound.track('stream: the batch in flight, its commit and acknowledgement', this.stream.stop()) : undefined,
    ]);
    await bound.track('convergence checks in flight', this.convergence.drain()); // checks started by a timer use the pool too
    // After a lost lease another daemon may own the row already: nothing more is written.
    if (this.opts.lease.held) await bound.track('the final status row', this.status.write(true).catch(() => undefined));
    await bound.track(
      'closing the HTTP endpoint',
      new Promise((r) => {
        http.close(r);
        http.closeAllConnections(); // keep-alive scrapers
      }),
    );
    this.log.info({ code, applied: this.stream.built ? formatLsn(this.stream.appliedLsn) : null }, 'stopped');
    return code;
  }
}
