// The two reference rotations pg-rekey is compared with.
import pg from 'pg';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { decryptValue, encryptValue } from '../../src/crypto/rewrite.js';

export const CLASSIC_BATCH = 500;

/**
 * What a runbook's batch command does (Laravel's chunkById style): select the next 500 v1 rows by key,
 * re-encrypt each in the application, UPDATE it by id, repeat, with no throttle: each UPDATE in its own
 * autocommit transaction, or (`perTransaction`, the runbook's real shape) the 500 of a batch in one. Keyset paging (id > last) rather than re-running `... order by id limit 500`
 * from the start, which would re-read every row already done on each batch.
 * Stops at `deadline` (performance.now() ms) or when no v1 row is left.
 */
export async function classicBatch(url: string, ring: KeyRing, deadline: number, perTransaction = false): Promise<{ rows: number; batches: number; done: boolean }> {
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
      // The runbook's shape: the 500 UPDATEs of a batch in one transaction, one commit per batch.
      if (perTransaction) await db.query('begin');
      let done = 0;
      for (const r of batch) {
        if (performance.now() >= deadline) break;
        const plain = decryptValue(r.title, ring);
        if (!plain) throw new Error(`classic batch: row ${r.id} does not decrypt with the v1 key`);
        await db.query({ name: 'classic_update', text: 'update incidents set title = $1 where id = $2', values: [encryptValue(plain, ring.target, ring), r.id] });
        done++;
      }
      if (perTransaction) await db.query('commit');
      rows += done;
      if (done < batch.length) return { rows, batches, done: false };
      last = batch[batch.length - 1]!.id;
    }
  } finally {
    await db.end();
  }
}

/** Every row's v2 value, as the client of the unnest floor sends them. */
export interface FloorValues {
  ids: string[];
  titles: string[];
}

export async function loadFloorValues(db: pg.Client): Promise<FloorValues> {
  const r = await db.query<[string, string]>({ text: 'select id::text, title from incidents_rekeyed order by id', rowMode: 'array' });
  return { ids: r.rows.map((x) => x[0]), titles: r.rows.map((x) => x[1]) };
}

/**
 * The floor: one UPDATE writing every row's precomputed v2 value, in one transaction: joined from the
 * incidents_rekeyed table, or, with `values`, sent by the client as two arrays for unnest() (what
 * pg-rekey also has to do: ship every new value). Connects and explains up front, so that run()
 * is the statement alone.
 */
export async function prepareFloor(url: string, values?: FloorValues): Promise<{ plan: string; run(): Promise<{ rows: number; updateMs: number }> }> {
  const sql = values
    ? `update incidents i set title = v.title from unnest($1::bigint[], $2::text[]) as v(id, title) where i.id = v.id`
    : `update incidents i set title = r.title from incidents_rekeyed r where r.id = i.id`;
  const params = values ? [values.ids, values.titles] : undefined;
  const db = new pg.Client({ connectionString: url, application_name: 'bench-floor' });
  await db.connect();
  try {
    const explained = await db.query<{ 'QUERY PLAN': string }>(`explain (costs off) ${sql}`, params);
    return {
      plan: explained.rows.map((r) => r['QUERY PLAN'].trim()).join(' / '),
      async run() {
        try {
          const started = performance.now();
          const res = await db.query(sql, params);
          return { rows: res.rowCount ?? 0, updateMs: performance.now() - started };
        } finally {
          await db.end();
        }
      },
    };
  } catch (e) {
    await db.end();
    throw e;
  }
}
