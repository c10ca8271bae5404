import type { Context } from '../context.js';
import type { KeyRing } from '../crypto/key-ring.js';
import type { TableInfo } from '../db/catalog.js';
import { displayName } from '../db/ident.js';
import { EXIT_RUNTIME, EXIT_USAGE } from '../errors.js';
import type { Logger } from '../logger.js';
import { parseLsn, type Lsn } from '../replication/lsn.js';
import { RelationMap } from '../replication/relation-map.js';
import { readSlot } from '../replication/slot.js';
import { ensureSegment, rememberLeaves } from '../state/segments.js';
import { sleep } from '../timing.js';
import { CatalogWatch } from './catalog-watch.js';

/** What following the catalog needs from the rest of the daemon (given by the supervisor). */
export interface CatalogFollowerDeps {
  stopping(): boolean;
  /** The stream, to wait until it is past an attach (PostgreSQL < 15). */
  stream(): { appliedLsn: Lsn; ping(): void };
  /** The configured relations changed: sweep these from block 0 (`abandon`: start the pass over now). */
  onChanged(resweep: string[], abandon: boolean): void;
  stop(code: number): void;
}

/**
 * Owns the configured tables and the stream's relation map as they are now,
 * and follows DDL on them (CatalogWatch): every daemon.slot_check_interval,
 * after a failed sweep, stream write or check, and on a change for an unknown
 * relation. One refresh at a time.
 */
export class CatalogFollower {
  private catalog!: CatalogWatch;
  private relationMap!: RelationMap;
  private mutex: Promise<unknown> = Promise.resolve();
  private readonly refreshedAt = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;
  private serverVersionNum = 0;

  constructor(
    private readonly ctx: Context,
    private readonly ring: KeyRing,
    private readonly log: Logger,
    private current: TableInfo[],
    private readonly deps: CatalogFollowerDeps,
  ) {}

  /** The configured tables as of the last refresh. */
  get tables(): TableInfo[] {
    return this.current;
  }

  get relations(): RelationMap {
    return this.relationMap;
  }

  /** Builds the relation map; refuses UNLOGGED leaves; adds INHERITS children created since setup to the publication. */
  async init(): Promise<void> {
    const { config, pool } = this.ctx;
    this.relationMap = await RelationMap.build(pool, this.current);
    this.catalog = new CatalogWatch(pool, config.tables, this.current, { publication: config.replication.publication, target: this.ring.target, log: this.ctx.log });
    await this.catalog.init();
  }

  /** server_version_num, read at startup (after init). */
  setServerVersion(serverVersionNum: number): void {
    this.serverVersionNum = serverVersionNum;
  }

  start(): void {
    this.timer = setInterval(() => void this.refresh('periodic catalog check').catch((e) => this.log.warn({ err: e }, 'catalog check failed')), this.ctx.config.daemon.slotCheckIntervalMs);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** A refresh in flight (not waited for at shutdown, only named). */
  get pending(): Promise<unknown> {
    return this.mutex;
  }

  /** A change arrived for a relation we do not know: maybe a partition was attached. */
  async refreshTables(schema: string, name: string): Promise<boolean> {
    const id = displayName({ schema, name });
    if (Date.now() - (this.refreshedAt.get(id) ?? 0) < 10_000) return false;
    await this.refresh(`change for unknown relation ${id}`);
    this.refreshedAt.set(id, Date.now());
    return this.relationMap.get(schema, name) !== undefined;
  }

  /**
   * Follows DDL on the configured tables (see CatalogWatch): a dropped table is
   * left out; a new partition is streamed and swept; a rewritten relation is
   * swept again from block 0, since its rows moved, maybe behind the sweep's
   * checkpoint; anything else (a configured column or the key gone, a table
   * created again, an UPDATE trigger without a `triggers:` decision) stops run
   * with the problem. True when something changed.
   */
  refresh(trigger: string): Promise<boolean> {
    const run = async (): Promise<boolean> => {
      if (this.deps.stopping()) return false;
      const c = await this.catalog.check();
      if (c.hidden.length) {
        // Exit 2 as at the start: a grant (or the connection) fixes it, and nothing was claimed meanwhile.
        this.log.fatal(
          { problems: c.hidden, trigger, hint: 'grant what each problem says (or run as a role that sees every row), then start `pg-rekey run` again; the slot keeps the changes made meanwhile' },
          `row security now hides rows of a configured table from this role: a count of 0 would prove nothing, so run stops (exit 2): ${c.hidden.join('; ')}`,
        );
        this.deps.stop(EXIT_USAGE);
        return false;
      }
      if (c.problems.length) {
        this.log.fatal(
          { problems: c.problems, trigger, hint: 'fix the table or the `tables:` section of the config, run `pg-rekey setup`, then start `pg-rekey run` again' },
          `a configured table changed in a way run cannot follow; stopping: ${c.problems.join('; ')}`,
        );
        this.deps.stop(EXIT_RUNTIME);
        return false;
      }
      if (!c.changed) return false;
      const relations = await RelationMap.build(this.ctx.pool, c.tables);
      for (const l of [...c.added, ...c.rewritten]) await ensureSegment(this.ctx.pool, l.table, l.relation);
      // Unlogged leaves too (not swept, but counted): one that leaves later is listed outside the configured tables.
      await rememberLeaves(this.ctx.pool, c.full);
      this.catalog.accept(c);
      this.current = c.tables;
      this.relationMap = relations;
      for (const table of c.dropped) {
        this.log.error({ table, trigger }, `configured table ${table} no longer exists (dropped): it is no longer streamed, swept or counted; remove it from \`tables:\` in the config before the next start`);
      }
      for (const l of c.removed) {
        const held = l.oldValues ? `it holds ${l.oldValues} old-version value(s), which nothing rotates now: \`pg-rekey verify\` lists it outside the configured tables (and run does not converge) until you add it to \`tables:\` or \`ignore:\`` : l.oldValues === 0 ? 'it holds no old-version value' : '';
        this.log[l.oldValues ? 'warn' : 'info']({ ...l, trigger }, `${l.relation} is no longer a leaf of ${l.table} (${l.why ?? 'detached or dropped'}): no longer streamed or swept${held ? `; ${held}` : ''}`);
      }
      for (const l of c.added) this.log.info({ ...l, trigger }, `new leaf ${l.relation} of ${l.table} (${l.why ?? 'partition attached or created'}): now streamed, and swept from block 0`);
      for (const l of c.rewritten) {
        this.log.warn({ ...l, trigger }, `${l.relation} was rewritten (ALTER TABLE ... TYPE, VACUUM FULL, CLUSTER, TRUNCATE): its rows moved without an UPDATE the stream could see; sweeping it again from block 0`);
      }
      if (c.added.length && this.serverVersionNum < 150000) void this.refreshWalsender(c.added.map((l) => l.relation));
      // Checked again once the sweep pass over the new set of relations is complete. Chunks of a rewritten
      // relation are wasted, and a detached or unlogged one is no longer ours: start the pass over now.
      this.deps.onChanged(
        [...c.added, ...c.rewritten].map((l) => l.relation),
        c.rewritten.length > 0 || c.removed.length > 0 || c.unlogged.length > 0,
      );
      return true;
    };
    const p = this.mutex.then(run);
    this.mutex = p.catch(() => undefined);
    return p;
  }

  /**
   * PostgreSQL 14 and older: a walsender that decoded changes of a table before
   * it was attached as a partition keeps it as "not published" (pgoutput's
   * relation cache ignores the attach) and skips its later changes for as long
   * as it lives. Once the stream has acknowledged past the attach, end our
   * walsender: the next one starts after every change from before the attach,
   * with a fresh cache. The new partitions are swept again after that, so what
   * the old walsender skipped is swept.
   */
  private async refreshWalsender(relations: string[]): Promise<void> {
    const { pool, config } = this.ctx;
    const slot = config.replication.slot;
    try {
      const past = parseLsn((await pool.query<{ l: string }>(`select pg_current_wal_flush_lsn()::text as l`)).rows[0]!.l);
      this.log.info({ relations }, 'PostgreSQL < 15: restarting the replication connection once the stream is past the attach, so that the new partition is published to it');
      for (;;) {
        if (this.deps.stopping()) return;
        const stream = this.deps.stream();
        stream.ping();
        const s = await readSlot(pool, slot);
        if (stream.appliedLsn >= past && s.confirmedFlushLsn && parseLsn(s.confirmedFlushLsn) >= past) break;
        await sleep(200);
      }
      await pool.query(`select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1 and active_pid is not null`, [slot]);
      this.deps.onChanged(relations, false);
    } catch (e) {
      this.log.error({ err: e, relations }, 'could not restart the replication connection for a new partition: its writes may not be streamed; restart `pg-rekey run` (and if `pg-rekey verify` does not converge, `pg-rekey backfill --restart`)');
    }
  }
}
