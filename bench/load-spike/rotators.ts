// The two reference rotations pg-rekey is compared with.
import pg from 'pg';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { decryptValue, encryptValue } from '../../src/crypto/rewrite.js';

export const CLASSIC_BATCH = 500;

/**
 * What a runbook's batch command does (Laravel's chunkById style): select the next 500 v1 rows by key,
 * re-encrypt each in the application, UPDATE it by id in its own autocommit transaction, repeat,
 * with no throttle. Keyset paging (id > last) rather than re-running `... order by id limit 500`
 * from the start, which would re-read every row already done on each batch.
 * Stops at `deadline` (performance.now() ms) or when no v1 row is left.
 */
export async function classicBatch(url: string, ring: KeyRing, deadline: number): Promise<{ rows: number; batches: number; done: boolean }> {
  const db = new pg.Client({ connectionString: url, application_name: 'bench-classic' });
  await db.connect();
  let last = '0';
  let rows = 0;
  let batches = 0;
  try {
    for (;;) {
      const { rows: batch } = await db.query<{ id: string; title: string }>({
        name: 'classic_select',
        text: `select id, title from incidents where title like 'v1:%' and id > $1 order by id limit ${CLASSIC_BATCH}`,
        values: [last],
      });
      if (batch.length === 0) return { rows, batches, done: true };
      batches++;
      for (const r of batch) {
        if (performance.now() >= deadline) return { rows, batches, done: false };
        const plain = decryptValue(r.title, ring);
        if (!plain) throw new Error(`classic batch: row ${r.id} does not decrypt with the v1 key`);
        await db.query({ name: 'classic_update', text: 'update incidents set title = $1 where id = $2', values: [encryptValue(plain, ring.target, ring), r.id] });
        rows++;
      }
      last = batch[batch.length - 1]!.id;
    }
  } finally {
    await db.end();
  }
}

/** The floor: one UPDATE writing every row's precomputed v2 value (incidents_rekeyed), one transaction. */
export async function floorUpdate(url: string): Promise<{ rows: number; plan: string; updateMs: number }> {
  const db = new pg.Client({ connectionString: url, application_name: 'bench-floor' });
  await db.connect();
  try {
    const sql = `update incidents i set title = r.title from incidents_rekeyed r where r.id = i.id`;
    const plan = (await db.query<{ 'QUERY PLAN': string }>(`explain (costs off) ${sql}`)).rows.map((r) => r['QUERY PLAN'].trim()).join(' / ');
    const started = performance.now();
    const res = await db.query(sql);
    return { rows: res.rowCount ?? 0, plan, updateMs: performance.now() - started };
  } finally {
    await db.end();
  }
}
