import type pg from 'pg';
import { displayName, quoteIdent, quoteQualified, type QualifiedName } from '../db/ident.js';

/**
 * Which leaves the publication sends to the stream. A partition is published through an
 * ancestor's entry; a legacy INHERITS child only through its own (CREATE PUBLICATION ... FOR
 * TABLE parent adds the descendants of that moment, never later ones), a schema entry
 * (PostgreSQL 15+) or FOR ALL TABLES.
 */

/** The leaves (display names) the publication does not publish; null when there is no such publication. Leaves that no longer exist are left out. */
export async function unpublishedLeaves(db: pg.Pool | pg.ClientBase, publication: string, leaves: readonly QualifiedName[]): Promise<string[] | null> {
  const facts = (
    await db.query<{ oid: number | null; alltables: boolean | null; pg15: boolean }>(
      `select p.oid::int as oid, p.puballtables as alltables, current_setting('server_version_num')::int >= 150000 as pg15
         from (select 1) x left join pg_publication p on p.pubname = $1`,
      [publication],
    )
  ).rows[0]!;
  if (facts.oid === null) return null;
  if (facts.alltables || leaves.length === 0) return [];
  const r = await db.query<{ q: string; published: boolean }>(
    `with leaf as (select q, to_regclass(q)::oid as relid from unnest($2::text[]) q),
          up as (select leaf.relid, leaf.relid as rel from leaf where leaf.relid is not null
                 union select leaf.relid, a.relid from leaf, pg_partition_ancestors(leaf.relid) a where leaf.relid is not null)
     select leaf.q,
            exists (select 1 from up join pg_publication_rel pr on pr.prrelid = up.rel and pr.prpubid = $1 where up.relid = leaf.relid)
            ${facts.pg15 ? 'or exists (select 1 from up join pg_class c on c.oid = up.rel join pg_publication_namespace pn on pn.pnnspid = c.relnamespace and pn.pnpubid = $1 where up.relid = leaf.relid)' : ''}
              as published
       from leaf where leaf.relid is not null`,
    [facts.oid, leaves.map(quoteQualified)],
  );
  const byQuoted = new Map(leaves.map((l) => [quoteQualified(l), displayName(l)]));
  return r.rows.filter((x) => !x.published).map((x) => byQuoted.get(x.q) ?? x.q);
}

export interface PublishFailure {
  relation: string;
  /** What PostgreSQL said. */
  reason: string;
  /** The statement, and who may run it. */
  fix: string;
}

/**
 * Adds each leaf to the publication on its own (`ADD TABLE ONLY`: its descendants are leaves of
 * their own, maybe published already). Needs ownership of the publication and of the table; what
 * this role may not do is returned with the statement that does it.
 */
export async function publishLeaves(db: pg.Pool, publication: string, leaves: readonly QualifiedName[]): Promise<{ added: string[]; failed: PublishFailure[] }> {
  const out = { added: [] as string[], failed: [] as PublishFailure[] };
  for (const leaf of leaves) {
    const sql = `ALTER PUBLICATION ${quoteIdent(publication)} ADD TABLE ONLY ${quoteQualified(leaf)}`;
    try {
      await db.query(sql);
      out.added.push(displayName(leaf));
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === '42710') {
        out.added.push(displayName(leaf)); // already a member (added meanwhile)
        continue;
      }
      out.failed.push({
        relation: displayName(leaf),
        reason: (e as Error).message,
        fix: `as the owner of publication ${publication} (who must also own ${displayName(leaf)}) or a superuser, run: ${sql}`,
      });
    }
  }
  return out;
}
