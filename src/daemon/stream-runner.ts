import type { Context } from '../context.js';
import type { KeyRing } from '../crypto/key-ring.js';
import { versionLabel } from '../crypto/envelope.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { Lsn } from '../replication/lsn.js';
import type { RewriteOrigins } from '../replication/origin.js';
import type { RelationMap } from '../replication/relation-map.js';
import { ReplicationStream } from '../replication/stream.js';
import { StreamWriter, type BatchLimits, type FlushResult } from '../replication/stream-writer.js';
import { readOldVersionWrites } from '../state/old-version-writes.js';
import { endStaleWalsender } from './leader-term.js';
import type { SlotLease } from './lease.js';

/** What the stream needs from the rest of the daemon (given by the supervisor). */
export interface StreamRunnerDeps {
  /** The relations the stream maps changes to (the catalog refresh replaces them). */
  relations(): RelationMap;
  /** The slot check (slot-watch.ts): before each session, and when the server says the slot is gone. */
  ensureSlot(reason: string): Promise<void>;
  /** A change for a relation the map does not know: re-read the catalog; true when it is known now. */
  refreshTables(schema: string, name: string): Promise<boolean>;
  /** A flush failed on a dropped table or column: re-read the catalog before the session ends. */
  refreshCatalog(trigger: string): Promise<unknown>;
}

/**
 * The data path of `run`: WAL message (ReplicationStream decodes pgoutput)
 * -> rewrite (the writer re-encrypts old-version values) -> CAS batch (the
 * writer's flush) -> acknowledgement (the stream confirms the slot past the
 * committed batch). This part builds the writer and the stream at startup
 * and starts and stops them; before each connect it proves the lease.
 */
export class StreamRunner {
  private stream: ReplicationStream | undefined;
  private writer: StreamWriter | undefined;

  constructor(
    private readonly ctx: Context,
    private readonly ring: KeyRing,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly lease: SlotLease,
    private readonly deps: StreamRunnerDeps,
  ) {}

  /** Builds the writer and the stream (not connected yet); `origins.stream` as resolved at startup. */
  async init(origins: RewriteOrigins): Promise<void> {
    const { config, pool } = this.ctx;
    const writer = (this.writer = new CatalogFollowingWriter(pool, this.ring, { maxRows: config.daemon.streamBatchRows, maxBytes: 32 * 1024 * 1024, maxDelayMs: config.daemon.streamBatchDelayMs, lockTimeoutMs: config.sweep.lockTimeoutMs }, () =>
      this.deps.refreshCatalog('stream write failed'),
    ));
    // The gate's metric starts from the record, so that a restart keeps the last write's time.
    const last = new Map<string, { version: string; table: string; at: number }>();
    for (const w of await readOldVersionWrites(pool)) {
      const k = `${w.version} ${w.table}`;
      const at = w.lastAt.getTime() / 1000;
      if (at > (last.get(k)?.at ?? 0)) last.set(k, { version: versionLabel(w.version), table: w.table, at });
    }
    for (const l of last.values()) this.metrics.oldVersionLastWrite.set({ version: l.version, table: l.table }, l.at);
    this.stream = new ReplicationStream({
      connectionString: config.connectionString,
      slot: config.replication.slot,
      publication: config.replication.publication,
      relations: () => this.deps.relations(),
      writer,
      ring: this.ring,
      log: this.ctx.log,
      metrics: this.metrics,
      onSlotLost: (reason) => this.deps.ensureSlot(reason),
      beforeSession: () => this.deps.ensureSlot('stream (re)connect'),
      onUnknownRelation: (schema, name) => this.deps.refreshTables(schema, name),
      origins: origins.stream,
      beforeConnect: () => this.takeWalsender(),
    });
  }

  /** init() got that far: there is a stream to start and to drain. */
  get built(): boolean {
    return this.stream !== undefined;
  }

  start(): void {
    this.stream!.start();
  }

  /** Drains: the batch in flight, its commit and acknowledgement. */
  stop(): Promise<void> {
    return this.stream!.stop();
  }

  get connected(): boolean {
    return this.stream?.connected ?? false;
  }

  /** The position acknowledged to the slot (0 before the first). */
  get appliedLsn(): Lsn {
    return this.stream?.appliedLsn ?? 0n;
  }

  get rewrites(): number {
    return this.stream?.rewrites ?? 0;
  }

  /** Asks the server for a keepalive, so that appliedLsn moves past a quiet WAL position. */
  ping(): void {
    this.stream!.ping();
  }

  /** A sweep transaction: its rewrites are not an application's old-version writes. */
  noteOwnTransaction(xid: number): void {
    this.writer!.noteOwnTransaction(xid);
  }

  /** The commit time of the newest old-version write decoded (maybe not recorded yet). */
  get newestOldVersionCommitMs(): number {
    return this.writer!.sightings.newestCommitMs;
  }

  /**
   * Before each stream connect: prove the lease and term are still ours (on the lease session),
   * then end a walsender a former leader left on the slot (paused or cut off, it still holds it).
   */
  private async takeWalsender(): Promise<void> {
    await this.lease.confirm();
    const pid = await endStaleWalsender(this.ctx.pool, this.ctx.config.replication.slot);
    if (pid !== null) this.log.warn({ walsenderPid: pid, term: this.lease.token.term }, 'ended the walsender a former leader left on the replication slot (this daemon holds the lease)');
  }
}

/** SQLSTATEs of a write to a relation or column that no longer exists. */
const UNDEFINED_RELATION_OR_COLUMN = new Set(['42P01', '42703']);

/**
 * The stream's writer; a flush that fails because a configured table or column
 * is gone re-reads the catalog before the error ends the session, so the replay
 * after the reconnect leaves the dropped table out instead of failing again.
 */
class CatalogFollowingWriter extends StreamWriter {
  constructor(
    pool: ConstructorParameters<typeof StreamWriter>[0],
    ring: KeyRing,
    limits: BatchLimits,
    private readonly onMissing: () => Promise<unknown>,
  ) {
    super(pool, ring, limits);
  }

  override async flush(): Promise<FlushResult> {
    try {
      return await super.flush();
    } catch (e) {
      if (UNDEFINED_RELATION_OR_COLUMN.has((e as { code?: string }).code ?? '')) await this.onMissing().catch(() => undefined);
      throw e;
    }
  }
}
