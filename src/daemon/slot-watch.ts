import type { Context } from '../context.js';
import { EXIT_USAGE } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { createSlot, dropSlot, formatBytes, logSlotWait, readSlot, retainedWalExceeded, slotUnusable, type SlotInfo } from '../replication/slot.js';
import { assessSlotServer } from '../replication/server-identity.js';

/** What the slot watchdog needs from the rest of the daemon (given by the supervisor). */
export interface SlotWatchDeps {
  /** The server is a promoted standby and the slot survived it: a verdict of the old primary no longer holds. */
  onFailoverContinued(): void;
  /** The slot was recreated: changes may have been missed, so every table is swept again from block 0 (rule 6). */
  onRecreated(): void;
  streamConnected(): boolean;
  /** Heartbeat: the status row, after each periodic check. */
  writeState(): Promise<void>;
  stop(code: number): void;
}

/**
 * The replication slot's watchdog: makes sure the slot exists and is usable
 * (recreating it otherwise), every daemon.slot_check_interval and whenever
 * the stream asks (before each session, a lost slot); exports its lag and
 * retained WAL; refuses a synchronous-standby role for pg-rekey's walsender.
 */
export class SlotWatch {
  private mutex: Promise<void> = Promise.resolve();
  private retainedWalHigh = false;
  private timer: NodeJS.Timeout | null = null;
  private serverVersionNum = 0;

  constructor(
    private readonly ctx: Context,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly deps: SlotWatchDeps,
  ) {}

  /** server_version_num, read at startup. */
  init(serverVersionNum: number): void {
    this.serverVersionNum = serverVersionNum;
  }

  start(): void {
    this.timer = setInterval(() => void this.watch().catch((e) => this.log.warn({ err: e }, 'slot check failed')), this.ctx.config.daemon.slotCheckIntervalMs);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** A slot check or slot creation in flight (not waited for at shutdown, only named). */
  get pending(): Promise<void> {
    return this.mutex;
  }

  /** Makes sure the slot exists and is usable; otherwise recreates it and restarts the sweep (rule 6). */
  ensure(reason: string): Promise<void> {
    const run = async () => {
      const { pool, config } = this.ctx;
      const slot = config.replication.slot;
      const info = await readSlot(pool, slot);
      // A different cluster, or a promotion the slot did or did not survive (server-identity.ts).
      const { problem, survived } = await assessSlotServer(pool, slot, info, slotUnusable(info), this.serverVersionNum);
      if (survived) {
        this.metrics.slotFailovers.inc({ outcome: 'continued' });
        this.deps.onFailoverContinued(); // a verdict of the old primary is not one of this server's: check again
        this.log.warn(
          { slot, fromTimeline: survived.from, toTimeline: survived.to, confirmedFlushLsn: info.confirmedFlushLsn, trigger: reason },
          `FAILOVER: the server is a promoted standby (timeline ${survived.from} -> ${survived.to}) and replication slot ${slot} survived it (a synced failover slot, or one an HA manager carried): continuing from it, no re-sweep; the stream replays from the slot's position`,
        );
      }
      if (!problem) return;
      if (problem.startsWith('failover:')) this.metrics.slotFailovers.inc({ outcome: 'recreated' });
      this.log.error({ slot, problem, trigger: reason }, 'REPLICATION SLOT LOST OR MISSING, OR NOT TRUSTED ON THIS SERVER: changes may have been missed; recreating the slot and re-sweeping every table from block 0');
      if (info.exists) await dropSlot(pool, slot, problem);
      const lsn = await createSlot(pool, slot, 'recreated', problem, { onWait: logSlotWait(this.log, slot) });
      this.metrics.slotRecreations.inc();
      this.deps.onRecreated();
      this.log.warn({ slot, lsn }, 'replication slot recreated');
    };
    const p = this.mutex.then(run);
    this.mutex = p.catch(() => undefined);
    return p;
  }

  private async watch(): Promise<void> {
    const info = await readSlot(this.ctx.pool, this.ctx.config.replication.slot);
    if (info.lagBytes !== null) this.metrics.streamLagBytes.set(info.lagBytes);
    else this.metrics.streamLagBytes.forget();
    this.noteRetainedWal(info);
    if (slotUnusable(info)) await this.ensure('periodic slot check');
    if (info.activePid) await this.refuseSynchronousRole(info.activePid);
    await this.deps.writeState();
  }

  /**
   * synchronous_standby_names = '*' (or a list naming pg-rekey-stream) makes pg-rekey's logical
   * walsender a synchronous standby: an application's COMMIT then waits for pg-rekey to confirm
   * it, while pg-rekey waits for that commit to become visible before rewriting (the visibility
   * rule) and confirms nothing before the rewrite: every commit on the primary would hang. Stop,
   * and say what to change.
   */
  private async refuseSynchronousRole(pid: number): Promise<void> {
    const r = await this.ctx.pool.query<{ s: string | null }>(`select sync_state as s from pg_stat_replication where pid = $1`, [pid]);
    const state = r.rows[0]?.s;
    if (state !== 'sync' && state !== 'quorum') return;
    this.log.fatal(
      { syncState: state, walsenderPid: pid, hint: "name the physical standbys in synchronous_standby_names (e.g. 'FIRST 1 (standby1)') instead of '*', then start pg-rekey run again" },
      `pg-rekey's replication connection was chosen as a synchronous standby (sync_state ${state}): application commits would wait for pg-rekey, which waits for them; stopping`,
    );
    this.deps.stop(EXIT_USAGE);
  }

  /** Metrics of the WAL the slot holds back; one warning per crossing of replication.max_retained_wal. */
  private noteRetainedWal(info: SlotInfo): void {
    const max = this.ctx.config.replication.maxRetainedWalBytes;
    const high = retainedWalExceeded(info, max);
    // A slot that is missing (or has no restart_lsn) retains nothing we can measure: no sample, not 0.
    if (info.retainedBytes !== null) {
      this.metrics.slotRetainedWalBytes.set(info.retainedBytes);
      this.metrics.slotRetainedWalExceeded.set(high ? 1 : 0);
    } else {
      this.metrics.slotRetainedWalBytes.forget();
      this.metrics.slotRetainedWalExceeded.forget();
    }
    const fields = { slot: this.ctx.config.replication.slot, retainedBytes: info.retainedBytes, maxRetainedWalBytes: max, streamConnected: this.deps.streamConnected() };
    if (high && !this.retainedWalHigh) {
      this.log.warn(
        fields,
        `the replication slot retains ${formatBytes(info.retainedBytes)} of WAL, above replication.max_retained_wal (${formatBytes(max)}): the server keeps that WAL on disk until the stream confirms past it; ` +
          'check that the stream is connected and keeping up (`pg-rekey status`), and the disk space of pg_wal',
      );
    } else if (!high && this.retainedWalHigh) {
      this.log.info(fields, `WAL retained by the replication slot is back under replication.max_retained_wal (${formatBytes(max)})`);
    }
    this.retainedWalHigh = high;
  }
}
