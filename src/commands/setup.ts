import type { GlobalFlags } from '../config/load-config.js';
import { openContext } from '../context.js';
import { resolveTables, type TableInfo } from '../db/catalog.js';
import { displayName } from '../db/ident.js';
import { migrate } from '../db/migrate.js';
import { readServerFacts, serverProblems } from '../db/server-checks.js';
import { ConfigError, EXIT_OK } from '../errors.js';
import { ensureSegment } from '../state/segments.js';

/**
 * Checks the server, the role and every configured table, reporting all
 * problems at once; then applies the state migrations. Idempotent.
 */
export async function setupCommand(flags: GlobalFlags): Promise<number> {
  const ctx = await openContext(flags);
  try {
    const log = ctx.log.child({ component: 'setup' });
    const facts = await readServerFacts(ctx.pool);
    const problems = serverProblems(facts);
    let tables: TableInfo[] = [];
    try {
      tables = await resolveTables(ctx.pool, ctx.config.tables);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      problems.push(...e.problems);
    }
    if (problems.length) {
      throw new ConfigError(`setup found ${problems.length} problem(s); nothing was changed`, 'fix each problem listed, then run `pg-rekey setup` again', problems);
    }
    const client = await ctx.pool.connect();
    let applied: string[];
    try {
      applied = await migrate(client);
    } finally {
      client.release();
    }
    for (const t of tables) for (const leaf of t.leaves) await ensureSegment(ctx.pool, t.display, displayName(leaf));
    log.info({ applied, tables: tables.map((t) => t.display) }, 'setup complete');
    process.stdout.write(
      [
        `PostgreSQL ${facts.version}, wal_level=${facts.walLevel}, role ${facts.currentUser}`,
        applied.length ? `applied migrations: ${applied.join(', ')}` : 'state schema pg_rekey is up to date',
        ...tables.map(
          (t) =>
            `table ${t.display}: columns ${t.config.columns.join(', ')}; row key ${t.keyColumns.join(', ')} (${t.keySource})` +
            (t.partitioned ? `; ${t.leaves.length} leaf partition(s)` : ''),
        ),
        'setup complete',
      ].join('\n') + '\n',
    );
    return EXIT_OK;
  } finally {
    await ctx.close();
  }
}
