import type pg from 'pg';
import type { TableConfig } from '../config/load-config.js';
import { resolveTables, type TableInfo } from '../db/catalog.js';
import { displayName, quoteQualified, type QualifiedName } from '../db/ident.js';
import { followedView, unloggedProblems } from '../db/unlogged.js';
import { findUpdateTriggers } from '../db/triggers.js';
import { undecidedProblems } from '../db/trigger-decision.js';
import { rowSecurityNotOff, rowSecurityProblems } from '../db/row-security.js';
import { ConfigError } from '../errors.js';
import type { Logger } from '../logger.js';
import { publishLeaves, unpublishedLeaves } from '../replication/publication.js';
import { countLeaves } from '../verify/count-versions.js';
import { rememberLeaves } from '../state/segments.js';

export interface LeafRef {
  /** Configured table (display name). */
  table: string;
  /** Leaf relation (display name), as in pgrekey.sweep_segment. */
  relation: string;
  /** How it came or went, for the log: "partition attached or created", "inheritance child", "SET LOGGED", ... */
  why?: string;
  /** For a leaf that left: old-version values it holds now (null when it is gone, or could not be counted). */
  oldValues?: number | null;
}

/** What changed for the configured tables since the last accepted look. */
export interface CatalogChanges {
  /**
   * The configured tables as run follows them now (dropped ones left out): every leaf but the
   * unlogged ones, which stay in `unlogged` (counted, holding convergence back, never swept or
   * streamed).
   */
  tables: TableInfo[];
  /** Configured tables that no longer exist. */
  dropped: string[];
  /**
   * Leaves to sweep from block 0 and stream from now on: a partition attached or created, an
   * INHERITS child created or linked (ALTER TABLE ... INHERIT), a leaf SET LOGGED again, a leaf
   * the publication publishes now that it did not before.
   */
  added: LeafRef[];
  /** Leaves no longer part of a configured table (partition detached or dropped, NO INHERIT). */
  removed: LeafRef[];
  /**
   * Leaves whose storage was replaced (ALTER TABLE ... TYPE or ADD COLUMN with a
   * volatile default, VACUUM FULL, CLUSTER, TRUNCATE): their rows moved to new
   * ctids without an UPDATE the stream could see.
   */
  rewritten: LeafRef[];
  /** Leaves that became UNLOGGED (SET UNLOGGED, or attached unlogged): no longer swept or streamed. */
  unlogged: LeafRef[];
  /** Leaves the publication does not publish, that this role could not add to it (their writes are not streamed). */
  unpublished: LeafRef[];
  /** Changes run cannot follow: a configured column or the key gone, a table created again, an UPDATE trigger nobody decided about. */
  problems: string[];
  /**
   * Rows this role no longer sees whole (row security enabled or forced under run, on a table or
   * one leaf; or row_security no longer off in the session), each with the grant that fixes it.
   */
  hidden: string[];
  changed: boolean;
  /** File node per leaf, applied by accept(). */
  readonly nodes: Map<string, string>;
  /** The tables as resolveTables sees them (unlogged leaves in `leaves`), applied by accept(). */
  readonly full: TableInfo[];
}

export interface CatalogWatchOptions {
  /** The publication the stream reads: new INHERITS children are added to it. Unset: publication left alone. */
  publication?: string;
  /** Target version, to count what a leaf that leaves still holds. */
  target?: number;
  log?: Logger;
}

/**
 * Re-reads the catalog for the configured tables while `run` is active, so
 * the daemon can follow DDL it gets no message for: pgoutput sends no DDL,
 * a partition attached with rows in it brings no change at all, a table
 * rewrite moves every row behind the sweep's checkpoint, a new INHERITS
 * child is in no publication, and an UNLOGGED leaf is invisible to decoding.
 */
export class CatalogWatch {
  private nodes = new Map<string, string>();
  private full: TableInfo[];
  /** Leaves known to be unpublished (display name -> the fix), and the ones this role already tried to publish. */
  private unpublished = new Map<string, string>();
  private readonly tried = new Set<string>();
  private readonly log: Logger | undefined;

  constructor(
    private readonly db: pg.Pool,
    private readonly configured: readonly TableConfig[],
    current: TableInfo[],
    private readonly opts: CatalogWatchOptions = {},
  ) {
    this.full = current;
    this.log = opts.log?.child({ component: 'catalog' });
  }

  /**
   * At startup: refuses unlogged leaves (ConfigError, with the fix), remembers every leaf (a
   * segment row: one attached while run was stopped is not forgotten if it leaves before the
   * sweep reaches it), makes sure the publication publishes every leaf (INHERITS children
   * created since setup), records every leaf's file node.
   */
  async init(): Promise<void> {
    await rememberLeaves(this.db, this.full);
    const unlogged = unloggedProblems(this.full);
    if (unlogged.length) {
      throw new ConfigError(
        `${unlogged.length} configured relation(s) are UNLOGGED: logical decoding never sees their writes, so run cannot follow them`,
        'make each one logged (ALTER TABLE ... SET LOGGED), then start `pg-rekey run` again; `pg-rekey backfill` alone may rewrite unlogged tables',
        unlogged,
      );
    }
    const { unpublished } = await this.publish(this.full.flatMap((t) => t.leaves.map((l) => ({ table: t.display, leaf: l }))));
    this.unpublished = new Map(unpublished.map((u) => [u.relation, u.why ?? '']));
    this.logUnpublished(unpublished);
    this.nodes = await this.fileNodes(this.full.map(followedView));
  }

  async check(): Promise<CatalogChanges> {
    const before = new Map(this.full.map((t) => [t.display, t]));
    const out: CatalogChanges = { tables: [], dropped: [], added: [], removed: [], rewritten: [], unlogged: [], unpublished: [], problems: [], hidden: [], changed: false, nodes: new Map(), full: [] };
    const notOff = await rowSecurityNotOff(this.db);
    if (notOff) out.hidden.push(notOff);
    const fresh: { table: string; leaf: QualifiedName }[] = [];
    for (const cfg of this.configured) {
      const name = displayName(cfg);
      const old = before.get(name);
      if (!(await this.exists(cfg))) {
        if (old) out.dropped.push(name);
        continue;
      }
      let info: TableInfo;
      try {
        info = (await resolveTables(this.db, [cfg]))[0]!;
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        if (!(await this.exists(cfg))) {
          if (old) out.dropped.push(name); // dropped while we looked
        } else out.problems.push(...e.problems);
        continue;
      }
      // Publications hold tables by oid: a table created again under the same name is not in it.
      if (!old || old.oid !== info.oid) {
        out.problems.push(`${name}: was dropped and created again; the new table is not in the publication, so its writes are not streamed`);
        continue;
      }
      const was = new Set(old.leaves.map(displayName));
      const wasUnlogged = new Set(old.unlogged.map(displayName));
      const nowUnlogged = new Set(info.unlogged.map(displayName));
      const kind = await this.kinds(info.leaves.filter((l) => !was.has(displayName(l))));
      for (const leaf of info.leaves) {
        const relation = displayName(leaf);
        if (!was.has(relation)) {
          if (nowUnlogged.has(relation)) out.unlogged.push({ table: name, relation, why: `${kind.get(relation) ?? 'new leaf'}, UNLOGGED` });
          else fresh.push({ table: name, leaf });
        } else if (nowUnlogged.has(relation) && !wasUnlogged.has(relation)) {
          out.unlogged.push({ table: name, relation, why: 'SET UNLOGGED' });
        } else if (!nowUnlogged.has(relation) && wasUnlogged.has(relation)) {
          fresh.push({ table: name, leaf });
          kind.set(relation, 'SET LOGGED again');
        }
      }
      const now = new Set(info.leaves.map(displayName));
      for (const relation of was) if (!now.has(relation)) out.removed.push({ table: name, relation, ...(await this.leftWith(relation, info)) });
      // Row security enabled under run (on the table, or on one leaf): a count of 0 would prove nothing.
      out.hidden.push(...(await rowSecurityProblems(this.db, [info])).map((h) => h.problem));
      // A trigger created under run on a table without a `triggers:` decision (on a new leaf too): stop, as the start would refuse.
      out.problems.push(...undecidedProblems(await findUpdateTriggers(this.db, [info])));
      out.full.push(info);
      out.tables.push(followedView(info));
      for (const f of fresh) if (f.table === name) out.added.push({ table: name, relation: displayName(f.leaf), why: kind.get(displayName(f.leaf)) ?? 'new leaf' });
    }
    // New leaves first get into the publication (a partition is in it through its parent; an INHERITS
    // child only through an entry of its own), so that the sweep from block 0 starts after that.
    const pub = await this.publish(out.tables.flatMap((t) => t.leaves.map((l) => ({ table: t.display, leaf: l }))));
    out.unpublished = pub.unpublished;
    const stillUnpublished = new Set(pub.unpublished.map((u) => u.relation));
    const added = new Set(out.added.map((l) => l.relation));
    // Published now and not before (an operator ran the ALTER PUBLICATION): its writes until then were not streamed.
    for (const relation of this.unpublished.keys()) {
      if (stillUnpublished.has(relation) || added.has(relation)) continue;
      const table = out.tables.find((t) => t.leaves.some((l) => displayName(l) === relation));
      if (table) {
        out.added.push({ table: table.display, relation, why: 'now in the publication' });
        added.add(relation);
      }
    }
    for (const [relation, node] of await this.fileNodes(out.tables)) {
      out.nodes.set(relation, node);
      const prev = this.nodes.get(relation);
      if (prev !== undefined && prev !== node && !added.has(relation)) {
        out.rewritten.push({ table: out.tables.find((t) => t.leaves.some((l) => displayName(l) === relation))!.display, relation });
      }
    }
    const unpublishedChanged = pub.unpublished.length !== this.unpublished.size || pub.unpublished.some((u) => !this.unpublished.has(u.relation));
    out.changed = out.dropped.length + out.added.length + out.removed.length + out.rewritten.length + out.unlogged.length > 0 || unpublishedChanged;
    return out;
  }

  /** Makes `c` the state the next check compares with, and says what run no longer follows. */
  accept(c: CatalogChanges): void {
    const newlyUnpublished = c.unpublished.filter((u) => !this.unpublished.has(u.relation));
    this.full = c.full;
    this.nodes = new Map(c.nodes);
    this.unpublished = new Map(c.unpublished.map((u) => [u.relation, u.why ?? '']));
    for (const l of c.unlogged) {
      this.log?.error(
        { ...l },
        `${l.relation} (a leaf of ${l.table}) is UNLOGGED (${l.why}): logical decoding never sees its writes, so run no longer sweeps or streams it, ` +
          `and convergence is not claimed while it is part of ${l.table}; make it logged again: ALTER TABLE ${l.relation} SET LOGGED (run then sweeps it from block 0)`,
      );
    }
    this.logUnpublished(newlyUnpublished);
  }

  private logUnpublished(list: readonly LeafRef[]): void {
    for (const u of list) {
      this.log?.error(
        { ...u, publication: this.opts.publication },
        `${u.relation} (a leaf of ${u.table}) is not in publication ${this.opts.publication}, and this role could not add it: its writes are NOT streamed ` +
          `(the sweep still covers what it holds, and convergence is not claimed until it is published). ${u.why}`,
      );
    }
  }

  /**
   * Adds the leaves the publication does not publish yet (once per relation: a role that may not
   * alter the publication is told what to run, not retried every check). Unlogged leaves are not
   * asked for: no publication can publish them.
   */
  private async publish(leaves: readonly { table: string; leaf: QualifiedName }[]): Promise<{ unpublished: LeafRef[] }> {
    const publication = this.opts.publication;
    if (!publication || leaves.length === 0) return { unpublished: [] };
    const missing = await unpublishedLeaves(this.db, publication, leaves.map((l) => l.leaf));
    if (missing === null || missing.length === 0) return { unpublished: [] }; // no publication at all: setup's business
    const byName = new Map(leaves.map((l) => [displayName(l.leaf), l]));
    const toTry = missing.filter((m) => !this.tried.has(m)).map((m) => byName.get(m)!.leaf);
    toTry.forEach((l) => this.tried.add(displayName(l)));
    const r = toTry.length ? await publishLeaves(this.db, publication, toTry) : { added: [], failed: [] };
    for (const relation of r.added) {
      this.log?.info({ relation, table: byName.get(relation)!.table, publication }, `added ${relation} to publication ${publication}: its writes are streamed from now on`);
    }
    const failed = new Map(r.failed.map((f) => [f.relation, f]));
    return {
      unpublished: missing
        .filter((m) => !r.added.includes(m))
        .map((m) => {
          const f = failed.get(m);
          const fix = f
            ? `${f.reason}; ${f.fix}`
            : this.unpublished.get(m) || `as the owner of publication ${publication} or a superuser, run: ALTER PUBLICATION ${publication} ADD TABLE ONLY ${m}`;
          return { table: byName.get(m)!.table, relation: m, why: fix };
        }),
    };
  }

  /** How a leaf new to a table came: a partition, or an INHERITS child. */
  private async kinds(leaves: readonly QualifiedName[]): Promise<Map<string, string>> {
    if (leaves.length === 0) return new Map();
    const r = await this.db.query<{ p: boolean | null }>(
      `select c.relispartition as p from unnest($1::text[]) with ordinality u(q, i) left join pg_class c on c.oid = to_regclass(q) order by i`,
      [leaves.map(quoteQualified)],
    );
    return new Map(leaves.map((l, i) => [displayName(l), r.rows[i]!.p ? 'partition attached or created' : 'inheritance child created or linked (INHERITS)']));
  }

  /** What a leaf that left a table holds: gone, or still there with this many old-version values. */
  private async leftWith(relation: string, table: TableInfo): Promise<Pick<LeafRef, 'why' | 'oldValues'>> {
    const row = (
      await this.db.query<{ schema: string; name: string }>(
        `select n.nspname as schema, c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = to_regclass($1)`,
        [relation],
      )
    ).rows[0];
    if (!row) return { why: 'dropped (or renamed)', oldValues: null };
    const why = 'detached (DETACH PARTITION, NO INHERIT)';
    if (this.opts.target === undefined) return { why, oldValues: null };
    try {
      const counts = await countLeaves(this.db, relation, [row], table.config.columns, this.opts.target);
      return { why, oldValues: counts.reduce((n, c) => n + c.nonTarget, 0) };
    } catch {
      return { why, oldValues: null };
    }
  }

  private async exists(t: TableConfig): Promise<boolean> {
    return (await this.db.query<{ e: boolean }>(`select to_regclass($1) is not null as e`, [quoteQualified(t)])).rows[0]!.e;
  }

  /** relation -> pg_relation_filenode, for the leaves that still exist. */
  private async fileNodes(tables: readonly TableInfo[]): Promise<Map<string, string>> {
    const leaves = tables.flatMap((t) => t.leaves);
    const r = await this.db.query<{ n: string | null }>(
      `select pg_relation_filenode(to_regclass(q))::text as n from unnest($1::text[]) with ordinality u(q, i) order by i`,
      [leaves.map(quoteQualified)],
    );
    const out = new Map<string, string>();
    leaves.forEach((l, i) => {
      const n = r.rows[i]!.n;
      if (n !== null) out.set(displayName(l), n);
    });
    return out;
  }
}
