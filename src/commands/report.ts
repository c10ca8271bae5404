import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { GlobalFlags } from '../config/load-config.js';
import { parseDurationFlag } from '../config/duration-flag.js';
import { openContext, requireState } from '../context.js';
import { loadTargetVersion } from '../crypto/key-ring.js';
import { resolveTables } from '../db/catalog.js';
import { ConfigError, EXIT_NOT_CONVERGED, EXIT_OK } from '../errors.js';
import { recordEvent } from '../state/events.js';
import { collectRecord } from '../report/collect.js';
import { layoutRecord } from '../report/document.js';
import { environmentFingerprints } from '../report/env-fingerprints.js';
import { renderHtml, renderMarkdown } from '../report/render.js';

export type ReportFormat = 'md' | 'json' | 'html';

/**
 * `pg-rekey report`: the rotation record for the audit log. Reads the state and runs verify's
 * count; writes Markdown, JSON or one self-contained HTML file; records that it was written
 * (with the sha256 of what it wrote) so `teardown --drop-state` knows the history was kept.
 * Exit 0 when the verdict is "the old key may go", 1 otherwise (the report is written either way).
 */
export async function reportCommand(flags: GlobalFlags, opts: { format?: string; output?: string; quietPeriod?: string }): Promise<number> {
  const format = (opts.format ?? 'md') as ReportFormat;
  if (!['md', 'json', 'html'].includes(format)) throw new ConfigError(`--format ${JSON.stringify(opts.format)} is not one of md, json, html`, 'pass --format md, --format json or --format html');
  const quietPeriodSeconds = parseDurationFlag('--quiet-period', opts.quietPeriod ?? '15m') / 1000;
  const target = loadTargetVersion({ env: process.env, envFile: flags.envFile });
  const environment = environmentFingerprints({ env: process.env, envFile: flags.envFile });
  const ctx = await openContext(flags);
  try {
    await requireState(ctx.pool);
    const tables = await resolveTables(ctx.pool, ctx.config.tables);
    const record = await collectRecord(ctx, tables, { target, environment, quietPeriodSeconds });
    const text = format === 'json' ? `${JSON.stringify(record, null, 2)}\n` : format === 'html' ? renderHtml(layoutRecord(record)) : `${renderMarkdown(layoutRecord(record))}\n`;
    const file = opts.output ? path.resolve(opts.output) : null;
    if (file) {
      try {
        writeFileSync(file, text);
      } catch (e) {
        throw new ConfigError(`cannot write the report to ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, 'give -o a path this user may write');
      }
    } else process.stdout.write(text);
    const sha256 = createHash('sha256').update(text).digest('hex');
    await recordEvent(ctx.pool, 'report', { format, file, sha256, oldKeyMayGo: record.verdict.oldKeyMayGo, summary: record.verdict.summary }).catch((e) =>
      ctx.log.error({ component: 'report', err: e }, 'the report was written, but recording it in pgrekey.event failed: `teardown --drop-state` will still refuse; run the report as the role pg-rekey runs as'),
    );
    ctx.log.child({ component: 'report' }).info({ format, file, sha256, oldKeyMayGo: record.verdict.oldKeyMayGo }, 'report written');
    if (file) process.stderr.write(`report written to ${file} (sha256 ${sha256}): ${record.verdict.summary}\n`);
    return record.verdict.oldKeyMayGo ? EXIT_OK : EXIT_NOT_CONVERGED;
  } finally {
    await ctx.close();
  }
}
