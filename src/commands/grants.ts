import type { GlobalFlags } from '../config/load-config.js';
import { openContext } from '../context.js';
import { resolveTables } from '../db/catalog.js';
import { displayName, quoteQualified } from '../db/ident.js';
import { STATE_SCHEMA } from '../db/migrate.js';
import { EXIT_OK } from '../errors.js';
import { renderGrants } from '../grants/plan.js';
import { unpublishedLeaves } from '../replication/publication.js';

/**
 * `pg-rekey grants [--role NAME]`: prints the psql script that gives NAME what pg-rekey needs for
 * this config (grants/plan.ts). Reads the catalog as the connecting role (an administrator);
 * changes nothing.
 */
export async function grantsCommand(flags: GlobalFlags, opts: { role?: string }): Promise<number> {
  const ctx = await openContext(flags);
  try {
    const tables = await resolveTables(ctx.pool, ctx.config.tables);
    const leafQuoted = tables.flatMap((t) => t.leaves.map(quoteQualified));
    const facts = (
      await ctx.pool.query<{ db: string; version: string; rls: string[] }>(
        `select current_database() as db, current_setting('server_version') as version,
                array(select q from unnest($1::text[]) q join pg_class c on c.oid = to_regclass(q) where c.relrowsecurity) as rls`,
        [leafQuoted],
      )
    ).rows[0]!;
    const { publication } = ctx.config.replication;
    const unpublished = await unpublishedLeaves(ctx.pool, publication, tables.flatMap((t) => t.leaves));
    const quotedOf = new Map(tables.flatMap((t) => t.leaves.map((l) => [displayName(l), quoteQualified(l)] as const)));
    const text = renderGrants({
      role: opts.role ?? 'rekey_worker',
      tables: tables.map((t) => ({
        display: t.display,
        quoted: t.quoted,
        partitioned: t.partitioned,
        columns: t.config.columns,
        leaves: t.leaves.map((l) => ({ quoted: quoteQualified(l), schema: l.schema, rowSecurity: facts.rls.includes(quoteQualified(l)) })),
      })),
      publication,
      unpublished: unpublished === null ? null : unpublished.map((d) => quotedOf.get(d) ?? d),
      stateSchema: STATE_SCHEMA,
      skipTriggers: tables.filter((t) => t.config.triggers === 'skip').map((t) => t.display),
      originSlot: ctx.config.replication.origin === 'off' ? undefined : ctx.config.replication.slot,
      database: facts.db,
      serverVersion: facts.version,
      configPath: ctx.config.configPath,
    });
    process.stdout.write(text);
    return EXIT_OK;
  } finally {
    await ctx.close();
  }
}
