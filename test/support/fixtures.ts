// Shared fixtures: test keys, an `incidents`-like table filled fast with encrypted values,
// checksums, a ledger of expected plaintexts, sweep settings and CLI config files.
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import { stringify } from 'yaml';
import type { SweepSettings, TableConfig } from '../../src/config/load-config.js';
import { parseVersioned } from '../../src/crypto/envelope.js';
import { KeyRing } from '../../src/crypto/key-ring.js';
import { decryptValue, encryptValue } from '../../src/crypto/rewrite.js';
import { initSodium } from '../../src/crypto/secretbox.js';
import { resolveTables, type TableInfo } from '../../src/db/catalog.js';
import { migrate } from '../../src/db/migrate.js';
import { createLogger } from '../../src/logger.js';

/** Fixed test keys (hex). Version 9 is a "wrong" key for wrong-key tests. */
export const KEY_HEX: Record<number, string> = {
  1: createHash('sha256').update('pg-rekey test key v1').digest('hex'),
  2: createHash('sha256').update('pg-rekey test key v2').digest('hex'),
  3: createHash('sha256').update('pg-rekey test key v3').digest('hex'),
  9: createHash('sha256').update('pg-rekey wrong key').digest('hex'),
};

const keyBytes = (hex: string) => Uint8Array.from(Buffer.from(hex, 'hex'));

/** A ring with target `target` and the given versions' keys; `overrides` maps a version to other key hex. */
export async function testRing(target = 2, versions = [1, 2], overrides: Record<number, string> = {}): Promise<KeyRing> {
  await initSodium();
  return new KeyRing(target, new Map(versions.map((v) => [v, keyBytes(overrides[v] ?? KEY_HEX[v]!)])));
}

/** The application's key variables for a ring of the given versions. */
export function keyEnv(target = 2, versions = [1, 2]): Record<string, string> {
  const out: Record<string, string> = { LIBSODIUM_ENCRYPTION_KEY_VERSION: `v${target}` };
  for (const v of versions) out[v === 1 ? 'LIBSODIUM_ENCRYPTION_KEY' : `LIBSODIUM_ENCRYPTION_KEY_V${v}`] = KEY_HEX[v]!;
  return out;
}

export const silentLog = createLogger('silent');

export function sweepSettings(o: Partial<SweepSettings> = {}): SweepSettings {
  return { mode: 'duty', latencyRatio: 1.1, probeIntervalMs: 100, baselineIntervalMs: 30_000, maxRate: 0, maxWalRate: 0, chunkTimeMs: 0, chunkBlocks: 256, minChunkBlocks: 1, maxChunkBlocks: 131072, niceRatio: 0, statementTimeoutMs: 30_000, lockTimeoutMs: 2_000, wrongKeyThreshold: 8, progressIntervalMs: 5_000, workers: 1, rangeLeaseMs: 30_000, ...o };
}

/** Applies the state migrations and resolves the tables, as `setup` + `backfill` do. */
export async function prepareSweep(pool: pg.Pool, tables: TableConfig[]): Promise<TableInfo[]> {
  const client = await pool.connect();
  try {
    await migrate(client);
  } finally {
    client.release();
  }
  return resolveTables(pool, tables);
}

export const incidentsConfig = (name = 'incidents', columns = ['title', 'raw_xml']): TableConfig => ({ schema: 'public', name, columns });

/** mulberry32: a small seeded PRNG so fixture data is the same on every run. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A table `name(id bigint primary key, title text, pad text)` of `rows` v1 titles (`call <id>`), each with `padBytes` of padding. */
export async function createCallsTable(pool: pg.Pool, name: string, rows: number, ring: KeyRing, padBytes = 0): Promise<void> {
  await pool.query(`create table ${name} (id bigint primary key, title text, pad text)`);
  const values: unknown[][] = [];
  for (let id = 1; id <= rows; id++) values.push([id, encryptValue(Buffer.from(`call ${id}`), 1, ring), 'x'.repeat(padBytes)]);
  await insertBatched(pool, name, ['id', 'title', 'pad'], ['bigint', 'text', 'text'], values);
}

export async function createIncidentsTable(pool: pg.Pool, name = 'incidents', opts: { primaryKey?: boolean } = {}): Promise<void> {
  const pk = opts.primaryKey === false ? '' : ' primary key';
  await pool.query(
    `create table ${name} (id bigint not null${pk}, title text, raw_xml text, status text not null default 'open', updated_at timestamptz not null default now())`,
  );
}

/** Inserts rows in batches with one `insert ... select * from unnest(...)` per batch. */
export async function insertBatched(pool: pg.Pool, table: string, columns: string[], types: string[], rows: unknown[][], batch = 5000): Promise<void> {
  const sql = `insert into ${table} (${columns.join(', ')}) select * from unnest(${types.map((t, i) => `$${i + 1}::${t}[]`).join(', ')})`;
  for (let off = 0; off < rows.length; off += batch) {
    const slice = rows.slice(off, off + batch);
    await pool.query(sql, columns.map((_, i) => slice.map((r) => r[i])));
  }
}

/** Title-like plaintext bytes; every 7th one holds invalid UTF-8, which must survive as bytes. */
export function titlePlaintext(id: number, rand: () => number): Buffer {
  const words = ['structure fire', 'medical', 'traffic stop', 'alarm', 'welfare check', 'noise', 'theft', 'hazmat'];
  const text = Buffer.from(`Incident ${id}: ${words[Math.floor(rand() * words.length)]} at ${Math.floor(rand() * 9999)} Main St`);
  return id % 7 === 0 ? Buffer.concat([text, Buffer.from([0xff, 0xfe, 0x00, 0xc3])]) : text;
}

/** CAD-like XML of 3-8 kB with random content, so its ciphertext is stored out of line (TOAST). */
export function xmlPlaintext(id: number, rand: () => number): Buffer {
  const size = 3000 + Math.floor(rand() * 5000);
  let s = `<?xml version="1.0"?><cad><call id="${id}">`;
  while (s.length < size) s += `<note t="${Math.floor(rand() * 1e9)}">${Math.floor(rand() * 2 ** 52).toString(36)}${Math.floor(rand() * 2 ** 52).toString(36)}</note>`;
  return Buffer.from(`${s}</call></cad>`);
}

/** id -> expected plaintext bytes, for values that are ours. */
export type Ledger = Map<number, Uint8Array>;

export interface Kind {
  v1: number;
  v2: number;
  null: number;
  notOurs: number;
}

export interface FillSpec {
  rows: number;
  startId?: number;
  seed?: number;
  /** Shares of each kind of title value; default 40% v1, 40% v2, 10% NULL, 10% not ours. */
  mix?: Kind;
  /** Every n-th row gets a TOASTed raw_xml value (v1 or v2 alternately); the others get NULL. 0 = never. */
  xmlEvery?: number;
}

export interface Filled {
  /** Per column: expected plaintext of every `v<N>:` value. */
  ledger: Record<'title' | 'raw_xml', Ledger>;
  /** Per column: the stored value of every row as inserted. */
  stored: Record<'title' | 'raw_xml', Map<number, string | null>>;
  /** Per column and kind: how many values were inserted. */
  counts: Record<'title' | 'raw_xml', Kind>;
}

const NOT_OURS = ['legacy plaintext', 'V1:not ours, upper case', 'v01:leading zero', ' v1:leading space', 'version 1 text'];

/** Fills `table` (see createIncidentsTable) with encrypted values, encrypting in JS. */
export async function fillIncidents(pool: pg.Pool, table: string, ring: KeyRing, spec: FillSpec): Promise<Filled> {
  const rand = rng(spec.seed ?? 42);
  const mix = spec.mix ?? { v1: 0.4, v2: 0.4, null: 0.1, notOurs: 0.1 };
  const out: Filled = {
    ledger: { title: new Map(), raw_xml: new Map() },
    stored: { title: new Map(), raw_xml: new Map() },
    counts: { title: { v1: 0, v2: 0, null: 0, notOurs: 0 }, raw_xml: { v1: 0, v2: 0, null: 0, notOurs: 0 } },
  };
  const rows: unknown[][] = [];
  const start = spec.startId ?? 1;
  for (let id = start; id < start + spec.rows; id++) {
    const r = rand();
    let title: string | null;
    if (r < mix.v1 + mix.v2) {
      const version = r < mix.v1 ? 1 : 2;
      const pt = titlePlaintext(id, rand);
      title = encryptValue(pt, version, ring);
      out.ledger.title.set(id, pt);
      out.counts.title[version === 1 ? 'v1' : 'v2']++;
    } else if (r < mix.v1 + mix.v2 + mix.null) {
      title = null;
      out.counts.title.null++;
    } else {
      title = NOT_OURS[id % NOT_OURS.length]!;
      out.counts.title.notOurs++;
    }
    let xml: string | null = null;
    if (spec.xmlEvery && id % spec.xmlEvery === 0) {
      const version = (id / spec.xmlEvery) % 2 === 1 ? 1 : 2;
      const pt = xmlPlaintext(id, rand);
      xml = encryptValue(pt, version, ring);
      out.ledger.raw_xml.set(id, pt);
      out.counts.raw_xml[version === 1 ? 'v1' : 'v2']++;
    } else out.counts.raw_xml.null++;
    out.stored.title.set(id, title);
    out.stored.raw_xml.set(id, xml);
    rows.push([id, title, xml]);
  }
  await insertBatched(pool, table, ['id', 'title', 'raw_xml'], ['bigint', 'text', 'text'], rows);
  return out;
}

/** md5 over every row in id order: equal before and after means nothing changed. */
export async function tableChecksum(db: pg.Pool | pg.ClientBase, table: string): Promise<string> {
  const r = await db.query<{ sum: string | null }>(`select md5(string_agg(t::text, ',' order by id)) as sum from ${table} t`);
  return r.rows[0]!.sum ?? '';
}

export interface LedgerCheck {
  /** Values compared with the ledger. */
  checked: number;
  /** ids whose value did not decrypt to the ledger's plaintext (or could not be decrypted). */
  mismatched: number[];
  /** ids in the ledger whose row holds NULL or a value that is not ours. */
  missing: number[];
  /** Stored values per version label, over all rows of the column. */
  byVersion: Record<string, number>;
}

/** Decrypts every value of `column` and compares it with the ledger. */
export async function checkLedger(db: pg.Pool, table: string, column: string, ledger: Ledger, ring: KeyRing): Promise<LedgerCheck> {
  const { rows } = await db.query<{ id: string; v: string | null }>(`select id::text as id, ${column} as v from ${table} order by id`);
  const out: LedgerCheck = { checked: 0, mismatched: [], missing: [], byVersion: {} };
  for (const row of rows) {
    const id = Number(row.id);
    const parsed = row.v === null ? null : parseVersioned(row.v);
    if (parsed) out.byVersion[`v${parsed.version}`] = (out.byVersion[`v${parsed.version}`] ?? 0) + 1;
    const expected = ledger.get(id);
    if (!expected) continue;
    if (!parsed) {
      out.missing.push(id);
      continue;
    }
    out.checked++;
    const got = decryptValue(row.v!, ring);
    if (!got || Buffer.compare(Buffer.from(got), Buffer.from(expected)) !== 0) out.mismatched.push(id);
  }
  return out;
}

/** Reads one column as id -> stored value. */
export async function readColumn(db: pg.Pool, table: string, column: string): Promise<Map<number, string | null>> {
  const { rows } = await db.query<{ id: string; v: string | null }>(`select id::text as id, ${column} as v from ${table}`);
  return new Map(rows.map((r) => [Number(r.id), r.v]));
}

export interface CliFiles {
  dir: string;
  configPath: string;
  envPath: string;
}

/** Writes pg-rekey.yaml and a dotenv key file into a fresh temp dir. */
export function writeCliFiles(opts: {
  databaseUrl?: string;
  tables: { name: string; columns: string[] }[];
  sweep?: Record<string, unknown>;
  throttle?: Record<string, unknown>;
  /** Slot names are cluster-wide: give each test database its own. */
  replication?: { slot: string; publication?: string };
  env?: Record<string, string>;
}): CliFiles {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-cli-'));
  const doc: Record<string, unknown> = { tables: opts.tables };
  if (opts.databaseUrl) doc.database = opts.databaseUrl;
  // mode duty unless a test asks for auto (see writeDaemonFiles in daemon.ts).
  doc.sweep = { mode: 'duty', ...(opts.sweep ?? {}) };
  if (opts.throttle) doc.throttle = opts.throttle;
  if (opts.replication) doc.replication = opts.replication;
  const configPath = path.join(dir, 'pg-rekey.yaml');
  writeFileSync(configPath, stringify(doc));
  const envPath = path.join(dir, '.env.local');
  writeFileSync(envPath, Object.entries(opts.env ?? keyEnv()).map(([k, v]) => `${k}=${v}\n`).join(''));
  return { dir, configPath, envPath };
}
