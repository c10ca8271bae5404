// The `incidents` table, a pristine v1 copy to restore it from between scenarios, and the same rows
// already re-encrypted to v2 (`incidents_rekeyed`, the floor's precomputed values).
import pg from 'pg';
import { Gen, address, incidentTitle } from '../../demo/sample-data.js';
import { loadKeyRing, type KeyRing } from '../../src/crypto/key-ring.js';
import { encryptValue } from '../../src/crypto/rewrite.js';
import { initSodium } from '../../src/crypto/secretbox.js';
import { writeKeys } from './pg-rekey-cli.js';

const BATCH = 10_000;
const STATUSES = ['open', 'dispatched', 'on scene', 'closed', 'closed'];

/** Plaintext of 30-42 ASCII bytes: with nonce, MAC, base64 and `v1:` a stored value of ~100-115 bytes. */
export function titlePlaintext(g: Gen): Buffer {
  const len = g.int(30, 42);
  let s = incidentTitle(g);
  while (s.length < len) s += `, ${address(g)}`;
  return Buffer.from(s.slice(0, len));
}

export async function createTables(db: pg.Client): Promise<void> {
  await db.query(`create table incidents (id bigint primary key, title text, status text not null, updated_at timestamptz not null)`);
  await db.query(`create table incidents_pristine (like incidents including all)`);
  await db.query(`create table incidents_rekeyed (id bigint primary key, title text not null)`);
}

/** Fills incidents_pristine (v1) and incidents_rekeyed (v2 of the same plaintexts). Returns the mean stored value length. */
export async function loadPristine(db: pg.Client, rows: number, ring: KeyRing): Promise<{ meanValueBytes: number }> {
  const g = new Gen(20260611);
  const now = Date.now();
  let bytes = 0;
  for (let first = 1; first <= rows; first += BATCH) {
    const ids: number[] = [];
    const v1: string[] = [];
    const v2: string[] = [];
    const status: string[] = [];
    const at: Date[] = [];
    for (let id = first; id < Math.min(first + BATCH, rows + 1); id++) {
      const plain = titlePlaintext(g);
      ids.push(id);
      v1.push(encryptValue(plain, 1, ring));
      v2.push(encryptValue(plain, ring.target, ring));
      status.push(g.pick(STATUSES));
      at.push(new Date(now - g.int(0, 90 * 86_400) * 1000));
      bytes += v1[v1.length - 1]!.length;
    }
    await db.query(`insert into incidents_pristine select * from unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[])`, [ids, v1, status, at]);
    await db.query(`insert into incidents_rekeyed select * from unnest($1::bigint[], $2::text[])`, [ids, v2]);
  }
  await db.query(`vacuum analyze incidents_pristine`);
  await db.query(`vacuum analyze incidents_rekeyed`);
  return { meanValueBytes: bytes / rows };
}

/** Keys in `envFile` (pg-rekey keygen), then the tables with `rows` pristine rows (scripts beside run.ts). */
export async function keysAndTables(db: pg.Client, envFile: string, rows: number): Promise<void> {
  await writeKeys(envFile);
  await initSodium();
  await createTables(db);
  await loadPristine(db, rows, loadKeyRing({ env: {}, envFile }));
}

/**
 * Puts incidents back to all-v1, freshly loaded (full pages, no dead tuples), vacuumed and analyzed,
 * then checkpoints, so every scenario starts from the same table and pays the same full-page images.
 * Replication slots are advanced to the current position first, as `pg-rekey run` would have
 * acknowledged them: an unconsumed slot would keep every WAL segment, so none could be recycled and
 * every rotation would pay for creating and zero-filling fresh segments, which a server whose slot
 * is being consumed does not.
 */
export async function restoreIncidents(db: pg.Client): Promise<void> {
  await db.query(`truncate incidents`);
  await db.query(`insert into incidents select * from incidents_pristine order by id`);
  await db.query(`vacuum analyze incidents`);
  await db.query(`select pg_replication_slot_advance(slot_name, pg_current_wal_lsn()) from pg_replication_slots`);
  await db.query(`checkpoint`);
}

export async function tableFacts(db: pg.Client): Promise<{ heapMB: number; indexMB: number; blocks: number }> {
  const r = await db.query<{ heap: string; idx: string; blocks: string }>(
    `select pg_relation_size('incidents') as heap, pg_indexes_size('incidents') as idx,
            pg_relation_size('incidents') / current_setting('block_size')::bigint as blocks`,
  );
  const row = r.rows[0]!;
  return { heapMB: Number(row.heap) / 2 ** 20, indexMB: Number(row.idx) / 2 ** 20, blocks: Number(row.blocks) };
}

/** Rows still holding a v1 value (application updates can move a row behind the sweep; the stream would take those). */
export async function countV1(db: pg.Client): Promise<number> {
  return Number((await db.query<{ n: string }>(`select count(*) as n from incidents where title like 'v1:%'`)).rows[0]!.n);
}
