import type pg from 'pg';
import type { TableConfig } from '../config/load-config.js';
import { resolveTables, type TableInfo } from '../db/catalog.js';
import { displayName, quoteQualified } from '../db/ident.js';
import { ConfigError } from '../errors.js';

export interface LeafRef {
  /** Configured table (display name). */
  table: string;
  /** Leaf relation (display name), as in pgrekey.sweep_segment. */
  relation: string;
}

/** What changed for the configured tables since the last accepted look. */
export interface CatalogChanges {
  /** The configured tables as they are now; dropped ones left out. */
  tables: TableInfo[];
  /** Configured tables that no longer exist. */
  dropped: string[];
  /** Leaves new to a configured table (partition attached or created). */
  added: LeafRef[];
  /** Leaves no longer part of a configured table (partition detached or dropped). */
  removed: LeafRef[];
  /**
   * Leaves whose storage was replaced (ALTER TABLE ... TYPE or ADD COLUMN with a
   * volatile default, VACUUM FULL, CLUSTER, TRUNCATE): their rows moved to new
   * ctids without an UPDATE the stream could see.
   */
  rewritten: LeafRef[];
  /** Changes run cannot follow: a configured column or the key gone, a table created again. */
  problems: string[];
  changed: boolean;
  /** File node per leaf, applied by accept(). */
  readonly nodes: Map<string, string>;
}

/**
 * Re-reads the catalog for the configured tables while `run` is active, so
 * the daemon can follow DDL it gets no message for: pgoutput sends no DDL,
 * a partition attached with rows in it brings no change at all, and a table
 * rewrite moves every row behind the sweep's checkpoint.
 */
export class CatalogWatch {
  private nodes = new Map<string, string>();

  constructor(
    private readonly db: pg.Pool,
    private readonly configured: readonly TableConfig[],
    private current: TableInfo[],
  ) {}

  /** Records the file node of every leaf (at startup). */
  async init(): Promise<void> {
    this.nodes = await this.fileNodes(this.current);
  }

  async check(): Promise<CatalogChanges> {
    const before = new Map(this.current.map((t) => [t.display, t]));
    const out: CatalogChanges = { tables: [], dropped: [], added: [], removed: [], rewritten: [], problems: [], changed: false, nodes: new Map() };
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
      const now = new Set(info.leaves.map(displayName));
      for (const relation of now) if (!was.has(relation)) out.added.push({ table: name, relation });
      for (const relation of was) if (!now.has(relation)) out.removed.push({ table: name, relation });
      out.tables.push(info);
    }
    const added = new Set(out.added.map((l) => l.relation));
    for (const [relation, node] of await this.fileNodes(out.tables)) {
      out.nodes.set(relation, node);
      const prev = this.nodes.get(relation);
      if (prev !== undefined && prev !== node && !added.has(relation)) {
        out.rewritten.push({ table: out.tables.find((t) => t.leaves.some((l) => displayName(l) === relation))!.display, relation });
      }
    }
    out.changed = out.dropped.length + out.added.length + out.removed.length + out.rewritten.length > 0;
    return out;
  }

  /** Makes `c` the state the next check compares with. */
  accept(c: CatalogChanges): void {
    this.current = c.tables;
    this.nodes = new Map(c.nodes);
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
