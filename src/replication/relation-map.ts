import type pg from 'pg';
import type { TableInfo } from '../db/catalog.js';
import { displayName, quoteIdent, quoteQualified, type QualifiedName } from '../db/ident.js';
import type { StreamTarget } from './rewrite-plan.js';
import { skipsTriggers } from '../db/triggers.js';

/** A relation the stream writes to: a configured table or one of its leaf partitions. */
export interface StreamRelation extends StreamTarget {
  leaf: QualifiedName;
  /** "schema"."name" for SQL text. */
  quoted: string;
  /** SQL type of each key column (format_type), to cast text parameters back. */
  keyTypes: string[];
  /** `triggers: skip`: rewrites run with session_replication_role = replica (db/triggers.ts). */
  skipTriggers?: boolean;
}

/**
 * Maps (schema, name) as sent in pgoutput RELATION messages to what the
 * stream needs. With publish_via_partition_root off (the default), changes
 * of a partitioned table arrive under the leaf partition's name.
 */
export class RelationMap {
  private readonly byName = new Map<string, StreamRelation>();

  static async build(db: pg.Pool, tables: readonly TableInfo[]): Promise<RelationMap> {
    const map = new RelationMap();
    for (const t of tables) {
      for (const leaf of t.leaves) {
        const types = await db.query<{ attname: string; type: string }>(
          `select a.attname, format_type(a.atttypid, a.atttypmod) as type
             from pg_attribute a where a.attrelid = $1::regclass and a.attname = any($2::text[]) and not a.attisdropped`,
          [quoteQualified(leaf), t.keyColumns],
        );
        const typeOf = new Map(types.rows.map((r) => [r.attname, r.type]));
        map.byName.set(JSON.stringify([leaf.schema, leaf.name]), {
          table: t.display,
          columns: t.config.columns,
          keyColumns: t.keyColumns,
          keyTypes: t.keyColumns.map((k) => typeOf.get(k) ?? 'text'),
          leaf,
          quoted: quoteQualified(leaf),
          skipTriggers: skipsTriggers(t),
        });
      }
    }
    return map;
  }

  get(schema: string, name: string): StreamRelation | undefined {
    return this.byName.get(JSON.stringify([schema, name]));
  }

  get size(): number {
    return this.byName.size;
  }

  names(): string[] {
    return [...this.byName.values()].map((r) => displayName(r.leaf));
  }
}

/** `t.k1 = v.k1::type1 and ...`: key equality with text parameters cast back to the column type. */
export function keyMatchSql(rel: StreamRelation, alias = 'v'): string {
  return rel.keyColumns.map((k, i) => `t.${quoteIdent(k)} = ${alias}.k${i}::${rel.keyTypes[i]}`).join(' and ');
}
