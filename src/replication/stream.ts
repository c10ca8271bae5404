import { connectionConfig, locatorFor } from '../db/connect.js';
import { LogicalReplicationService, PgoutputPlugin, type Pgoutput } from 'pg-logical-replication';
import type { Logger } from '../logger.js';
import type { KeyRing } from '../crypto/key-ring.js';
import type { Metrics } from '../metrics.js';
import { backoffMs, sleep } from '../timing.js';
import { formatLsn, maxLsn, parseLsn, type Lsn } from './lsn.js';
import type { RelationMap } from './relation-map.js';
import { planRowWork } from './rewrite-plan.js';
import { oldVersionColumns, type DecodedTransaction } from './old-version-sightings.js';
import { versionLabel } from '../crypto/envelope.js';
import type { StreamWriter } from './stream-writer.js';
import type { RewriteOrigin } from './origin.js';

/**
 * pgoutput with every column left as raw text: the library would otherwise
 * run pg's type parsers (timestamps to Date, losing microseconds; int8 to
 * string; json to objects), and key values must go back to SQL exactly.
 * Done at parse time, before any tuple of the relation is decoded.
 */
class RawTextPgoutput extends PgoutputPlugin {
  override parse(buffer: Buffer): Pgoutput.Message {
    const msg = super.parse(buffer) as Pgoutput.Message;
    if (msg.tag === 'relation') for (const c of msg.columns) c.parser = (raw: unknown) => raw;
    return msg;
  }
}

export interface StreamOptions {
  connectionString: string | undefined;
  slot: string;
  publication: string;
  relations: () => RelationMap;
  writer: StreamWriter;
  ring: KeyRing;
  log: Logger;
  metrics: Metrics;
  /** The slot is gone or unusable: recreate it (and restart the sweep) before reconnecting. */
  onSlotLost: (reason: string) => Promise<void>;
  /**
   * Before every (re)connect, once the primary is found: checks the server and the slot
   * (server-identity.ts), recreating the slot when it cannot be trusted there.
   */
  beforeSession?: () => Promise<void>;
  /** A relation of a configured table the map does not know (partition attached): refresh. */
  onUnknownRelation?: (schema: string, name: string) => Promise<boolean>;
  maxBackoffMs?: number;
  /**
   * Replication origins (replication/origin.ts): `writer` is set up on the stream's own flush
   * transactions; the changes of a transaction whose origin is in `skip` (pg-rekey's own rewrites
   * of this slot, which carry only what needs no work) are not compared.
   */
  origins?: { writer: RewriteOrigin; skip: ReadonlySet<string> };
  /**
   * Runs before every connect (the first included); a throw fails the attempt (retried with backoff).
   * The daemon proves here that it still holds the slot's lease and term (a holder that lost it
   * must never take the walsender back) and ends a stale holder's walsender.
   */
  beforeConnect?: () => Promise<void>;
}

const STATUS_INTERVAL_MS = 2_000;

/** SQLSTATEs / messages meaning the slot itself is gone or unusable. */
function slotLostReason(err: unknown): string | null {
  const e = err as { code?: string; message?: string };
  if (e?.code === '42704' && /replication slot/.test(e.message ?? '')) return 'slot does not exist';
  if (e?.code === '55000' && /can no longer get changes|has been invalidated|wal_status|required WAL/i.test(e.message ?? '')) return 'slot was invalidated (WAL removed)';
  return null;
}

/**
 * The replication stream: consumes the slot with our own acknowledgements.
 *
 * `applied` is the position up to which every change has been handled and
 * every rewrite it caused has committed; only it is ever reported to the
 * server (flush position), so a crash replays and never skips. The library's
 * automatic acknowledgement is off (auto: false AND timeoutSeconds: 0, see
 * design.md) and flow control pauses the socket while a message is handled.
 */
export class ReplicationStream {
  private applied: Lsn = 0n;
  private lastCommitEnd: Lsn = 0n;
  private inTxn = false;
  /** xid of the transaction being decoded (from its BEGIN). */
  private xid: number | undefined;
  /** Commit time and LSN of the transaction being decoded (from its BEGIN). */
  private txn: DecodedTransaction | null = null;
  /** Last "still writes an old version" log line per version and table (at most one a minute). */
  private readonly staleLogged = new Map<string, number>();
  /** Last "old-version write to a relation that is not a leaf" log line per relation oid. */
  private readonly unknownLogged = new Map<number, number>();
  /** The transaction being decoded is one of pg-rekey's own rewrites (its origin message named one of ours). */
  private ownOrigin = false;
  private chain: Promise<unknown> = Promise.resolve();
  private service: LogicalReplicationService | null = null;
  private stopping = false;
  /** Aborted by stop(): ends a reconnect wait at once. */
  private readonly stopped = new AbortController();
  /** When the current session started streaming (0 = not yet). */
  private streamingSince = 0;
  private running: Promise<void> | null = null;
  private readonly log: Logger;
  connected = false;
  /** Values rewritten by this stream since the process started. */
  rewrites = 0;

  constructor(private readonly o: StreamOptions) {
    this.log = o.log.child({ component: 'stream', slot: o.slot });
    o.writer.attach({ log: this.log, signal: this.stopped.signal, origin: o.origins?.writer });
  }

  get appliedLsn(): Lsn {
    return this.applied;
  }

  start(): void {
    this.running ??= this.loop();
  }

  /** Drain: finish the message and batch in flight, commit, acknowledge, disconnect. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.stopped.abort();
    const svc = this.service;
    if (svc) {
      await this.serial(() => this.flush()).catch((e) => this.log.warn({ err: e }, 'final flush failed; the work replays on restart'));
      this.sendStatus(svc);
      await svc.destroy().catch(() => undefined);
    }
    await this.running;
  }

  /** Ask the server for a keepalive now (it carries its current WAL end). */
  ping(): void {
    if (this.service && this.applied > 0n) void this.service.acknowledge(formatLsn(this.applied - 1n), true);
  }

  private async loop(): Promise<void> {
    let attempt = 0;
    while (!this.stopping) {
      this.streamingSince = 0;
      try {
        await this.session();
      } catch (e) {
        const lost = slotLostReason(e);
        if (lost && !this.stopping) {
          this.log.error({ reason: lost }, 'REPLICATION SLOT LOST: recreating it and restarting the sweep from block 0');
          try {
            await this.o.onSlotLost(lost);
          } catch (e2) {
            this.log.error({ err: e2 }, 'could not recreate the slot; will retry');
          }
        } else if (!this.stopping) {
          this.log.warn({ err: e, code: (e as { code?: string }).code }, 'replication connection failed');
        }
      }
      if (this.stopping) break;
      // A session that got as far as streaming for a while proves the way back works: start
      // the backoff over, or a few short sessions would leave the stream waiting 30 s later.
      if (this.streamingSince > 0 && Date.now() - this.streamingSince >= 1_000) attempt = 0;
      attempt++;
      const waitMs = backoffMs(attempt, 500, this.o.maxBackoffMs ?? 30_000);
      this.o.metrics.streamReconnects.inc();
      this.log.info({ attempt, waitMs }, 'reconnecting to the replication slot');
      await sleep(waitMs, this.stopped.signal);
    }
  }

  private async session(): Promise<void> {
    this.o.writer.discard(); // anything unacknowledged replays from the slot
    this.inTxn = false;
    // The library connects by itself: to the primary of a host list, found now (db/primary.ts).
    const host = await locatorFor(this.o.connectionString).locate();
    // Only the lease holder of the current term streams; a walsender a former leader left on the slot is ended (stream-runner.ts).
    await this.o.beforeConnect?.();
    // A different server, a new timeline: what the slot of that name is worth there (slot-watch.ts).
    if (this.o.beforeSession) await this.o.beforeSession();
    const svc = new LogicalReplicationService(
      { ...connectionConfig(this.o.connectionString, { rowSecurityOff: false, host }), application_name: 'pg-rekey-stream' },
      { acknowledge: { auto: false, timeoutSeconds: 0 }, flowControl: { enabled: true } },
    );
    this.service = svc;
    let fail!: (e: unknown) => void;
    const failed = new Promise<never>((_, reject) => (fail = reject));
    let broken = false;
    const breakWith = (e: unknown) => {
      if (!broken) {
        broken = true;
        fail(e);
      }
    };
    svc.on('error', breakWith);
    svc.on('start', () => {
      this.connected = true;
      this.streamingSince = Date.now();
      this.o.metrics.streamConnected.set(1);
      this.log.info({ applied: formatLsn(this.applied) }, 'streaming');
    });
    svc.on('data', async (_lsn: string, msg: Pgoutput.Message) => {
      if (broken || this.stopping) return;
      try {
        await this.serial(() => this.onMessage(msg));
      } catch (e) {
        breakWith(e); // no later acknowledgement may pass this message
      }
    });
    svc.on('heartbeat', (lsn: string, _ts: number, shouldRespond: boolean) => {
      if (broken) return;
      void this.serial(() => this.onKeepalive(svc, parseLsn(lsn), shouldRespond)).catch(breakWith);
    });
    const statusTimer = setInterval(() => !broken && this.sendStatus(svc), STATUS_INTERVAL_MS);
    // One timer flush queued at a time: a flush waiting for visibility must not pile up others behind it.
    let flushQueued = false;
    const flushTimer = setInterval(() => {
      if (broken || flushQueued || !this.o.writer.due()) return;
      flushQueued = true;
      void this.serial(() => this.flush())
        .catch(breakWith)
        .finally(() => (flushQueued = false));
    }, Math.max(10, Math.floor(this.o.writer.limits.maxDelayMs / 2)));
    try {
      // Resolves when the connection ends; rejects on a server error.
      const sub = svc.subscribe(new RawTextPgoutput({ protoVersion: 1, publicationNames: [this.o.publication] }), this.o.slot);
      await Promise.race([sub, failed]);
      if (!this.stopping) throw new Error('replication connection closed by the server');
    } finally {
      broken = true;
      clearInterval(statusTimer);
      clearInterval(flushTimer);
      this.connected = false;
      this.o.metrics.streamConnected.set(0);
      if (this.service === svc) this.service = null;
      if (!this.stopping) await svc.destroy().catch(() => undefined);
    }
  }

  private serial<T>(fn: () => Promise<T> | T): Promise<T> {
    const p = this.chain.then(fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private async onMessage(msg: Pgoutput.Message): Promise<void> {
    switch (msg.tag) {
      case 'begin':
        this.inTxn = true;
        this.xid = msg.xid;
        this.txn = msg.commitLsn ? { commitTimeMicros: BigInt(msg.commitTime as bigint), commitLsn: msg.commitLsn } : null;
        this.ownOrigin = false;
        return;
      case 'origin':
        // Sent after BEGIN when the transaction's commit carries an origin.
        this.ownOrigin = this.o.origins?.skip.has(msg.originName) ?? false;
        return;
      case 'insert':
      case 'update': {
        this.o.metrics.streamChanges.inc({ handling: this.ownOrigin ? 'skipped_own_origin' : 'decoded' });
        if (this.ownOrigin) return;
        let rel = this.o.relations().get(msg.relation.schema, msg.relation.name);
        if (!rel && this.o.onUnknownRelation && (await this.o.onUnknownRelation(msg.relation.schema, msg.relation.name))) {
          rel = this.o.relations().get(msg.relation.schema, msg.relation.name);
        }
        if (!rel) return this.noteUnknownRelation(msg.relation, msg.new);
        this.noteOldVersionWrite(msg.new, rel.table, rel.columns);
        const d = planRowWork(msg.new, rel, this.o.ring);
        if (d.kind === 'no-key') {
          this.log.warn({ relation: `${msg.relation.schema}.${msg.relation.name}`, missing: d.missing }, 'change without its key columns; the sweep will cover this row');
        } else if (d.kind === 'work') {
          this.o.writer.add(rel, { ...d, xid: this.xid });
        }
        if (this.o.writer.due()) await this.flush();
        return;
      }
      case 'commit':
        this.inTxn = false;
        this.lastCommitEnd = parseLsn(msg.commitEndLsn!);
        if (this.o.writer.size === 0) this.advance(this.lastCommitEnd);
        return;
      default:
        return; // delete, truncate, relation, type, message: nothing to rewrite
    }
  }

  /**
   * The rollout gate: an application's write of an old-version value (not one of pg-rekey's own
   * transactions) is counted with its commit time, persisted with the next flush.
   */
  private noteOldVersionWrite(tuple: Record<string, unknown>, table: string, columns: readonly string[]): void {
    const txn = this.txn;
    if (!txn || this.o.writer.isOwnTransaction(this.xid)) return;
    for (const { column, version } of oldVersionColumns(tuple, columns, this.o.ring.target)) {
      this.o.writer.noteSighting(txn, version, table, column);
      const labels = { version: versionLabel(version), table };
      this.o.metrics.oldVersionWrites.inc(labels);
      this.o.metrics.oldVersionLastWrite.set(labels, Number(txn.commitTimeMicros) / 1e6);
      const key = `${labels.version} ${table}.${column}`;
      if (Date.now() - (this.staleLogged.get(key) ?? 0) >= 60_000) {
        this.staleLogged.set(key, Date.now());
        this.log.warn(
          { version: labels.version, table, column, commitLsn: txn.commitLsn },
          `an application instance still writes ${labels.version} (${table}.${column}): the stream rewrites it, but the old key must stay until every instance writes the target version (logged at most once a minute)`,
        );
      }
    }
  }

  /**
   * A change for a relation that is not (or no longer) a leaf of a configured table, which the
   * publication still sent: most often a partition detached (or a child unlinked) after the
   * change was made. Nothing rewrites its old-version values; say so, once a minute per relation,
   * with names, oid and versions only (never a value). A leaf that left while run followed it is
   * remembered by oid and listed by `pg-rekey verify` outside the configured tables.
   */
  private noteUnknownRelation(relation: { schema: string; name: string; relationOid: number }, tuple: Record<string, unknown>): void {
    const found = oldVersionColumns(tuple, Object.keys(tuple), this.o.ring.target);
    if (found.length === 0) return;
    const name = `${relation.schema}.${relation.name}`;
    if (Date.now() - (this.unknownLogged.get(relation.relationOid) ?? 0) < 60_000) return;
    this.unknownLogged.set(relation.relationOid, Date.now());
    this.log.warn(
      { relation: name, relationOid: relation.relationOid, columns: found.map((f) => `${f.column} ${versionLabel(f.version)}`), commitLsn: this.txn?.commitLsn },
      `the stream decoded an old-version write to ${name} (oid ${relation.relationOid}), which is not a leaf of a configured table now: nothing rewrites it. ` +
        'If it was detached (DETACH PARTITION) or unlinked (NO INHERIT) from a configured table, `pg-rekey verify` lists it outside the configured tables; ' +
        'add it to `tables:` (then `pg-rekey setup`) to rotate it, or list it under `ignore:` (logged at most once a minute per relation)',
    );
  }

  private async flush(): Promise<void> {
    if (this.o.writer.size > 0) {
      const r = await this.o.writer.flush();
      for (const [table, n] of r.rewritten) {
        this.o.metrics.rewrites.inc({ source: 'stream', table }, n);
        this.rewrites += n;
      }
      for (const [table, n] of r.quarantined) {
        this.o.metrics.quarantined.inc({ source: 'stream', table }, n);
        this.log.warn({ table, quarantined: n }, 'values could not be rewritten; recorded in pgrekey.quarantine and left untouched');
      }
      // A miss is counted by what explains it; none is ever dropped unexplained.
      if (r.superseded) {
        this.o.metrics.casConflicts.inc({ source: 'stream' }, r.superseded);
        this.o.metrics.streamRows.inc({ outcome: 'superseded' }, r.superseded);
      }
      if (r.retried) this.o.metrics.streamRows.inc({ outcome: 'retried' }, r.retried);
      if (r.givenUp) {
        this.o.metrics.streamRows.inc({ outcome: 'given_up' }, r.givenUp);
        this.log.warn({ rows: r.givenUp }, 'rows whose rewrite raised, did not stick or never applied: recorded in pgrekey.quarantine with the reason and left as they are');
      }
      if (r.visibilityWaitMs) this.o.metrics.streamVisibilityWait.inc(r.visibilityWaitMs / 1000);
    }
    // Everything handled before this point is now committed.
    this.advance(this.lastCommitEnd);
  }

  private onKeepalive(svc: LogicalReplicationService, walEnd: Lsn, shouldRespond: boolean): void {
    // Idle (nothing pending, no open transaction, nothing queued in the
    // library): every change before walEnd has been handled, so the slot may
    // move past WAL that held nothing for us.
    const lib = svc as unknown as { _messageQueue: unknown[]; _processing: boolean };
    // Stopping: data messages are no longer handled, so a keepalive must not move past them.
    if (this.stopping) return;
    if (this.o.writer.size === 0 && !this.inTxn && lib._messageQueue.length === 0 && !lib._processing) this.advance(walEnd);
    if (shouldRespond) this.sendStatus(svc);
  }

  private advance(lsn: Lsn): void {
    if (lsn <= this.applied) return;
    this.applied = maxLsn(this.applied, lsn);
    this.o.metrics.streamAppliedLsn.set(Number(this.applied));
  }

  /** Reports `applied` as written/flushed/applied. The library adds 1 to what it is given. */
  private sendStatus(svc: LogicalReplicationService): void {
    if (this.applied > 0n) void svc.acknowledge(formatLsn(this.applied - 1n)).catch(() => undefined);
  }
}
