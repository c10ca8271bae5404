// Concurrent application writers for the resilience tests: old (v1) and new (v2) app instances,
// writers hammering the same hot rows, a ledger of what was committed, and an RSS sampler.
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { parseVersioned } from '../../src/crypto/envelope.js';
import type { KeyRing } from '../../src/crypto/key-ring.js';
import { decryptValue, encryptValue } from '../../src/crypto/rewrite.js';
import { insertBatched, rng, titlePlaintext, xmlPlaintext } from './fixtures.js';

export type Column = 'title' | 'raw_xml';
export const COLUMNS: readonly Column[] = ['title', 'raw_xml'];

/**
 * The workload table: `title` (short values) and `raw_xml` (3-8 kB values, stored out of line)
 * are configured; `status` and `updated_at` are other columns. `title_seq`/`xml_seq` count the
 * application writes of each encrypted column (pg-rekey never touches them), so the ledger can
 * tell which write a stored value must come from, whatever order the client saw commits in.
 */
export async function createWorkloadTable(pool: pg.Pool, table = 'calls'): Promise<void> {
  await pool.query(
    `create table ${table} (id bigint primary key, title text, raw_xml text, status text not null default 'open',
       updated_at timestamptz not null default now(), title_seq int not null default 0, xml_seq int not null default 0)`,
  );
}

interface Cell {
  /** Highest seq whose commit was acknowledged, and its plaintext. */
  committedSeq: number;
  /** seq -> plaintexts of writes with that seq that committed or whose commit is in doubt. */
  candidates: Map<number, Uint8Array[]>;
}

export interface PendingWrite {
  id: number;
  column: Column;
  seq: number;
  plaintext: Uint8Array;
}

/**
 * What the application committed, per (row, column). A write goes in only after its COMMIT
 * returned; a write whose COMMIT failed on a broken connection is "in doubt" (it may or may not
 * have committed) and is accepted as a candidate but never required.
 */
export class WriteLedger {
  private readonly cells = new Map<string, Cell>();
  /** Rows whose INSERT committed. */
  private readonly committedIds: number[] = [];
  private readonly idSet = new Set<number>();
  inDoubt = 0;

  private cell(id: number, column: Column): Cell {
    const k = `${id}:${column}`;
    let c = this.cells.get(k);
    if (!c) this.cells.set(k, (c = { committedSeq: 0, candidates: new Map() }));
    return c;
  }

  private candidate(w: PendingWrite): void {
    const c = this.cell(w.id, w.column);
    const list = c.candidates.get(w.seq) ?? [];
    list.push(w.plaintext);
    c.candidates.set(w.seq, list);
  }

  commit(writes: PendingWrite[], insertedId?: number): void {
    for (const w of writes) {
      this.candidate(w);
      const c = this.cell(w.id, w.column);
      if (w.seq > c.committedSeq) c.committedSeq = w.seq;
    }
    if (insertedId !== undefined && !this.idSet.has(insertedId)) {
      this.idSet.add(insertedId);
      this.committedIds.push(insertedId);
    }
  }

  doubt(writes: PendingWrite[]): void {
    this.inDoubt++;
    for (const w of writes) this.candidate(w);
  }

  /** A random row whose INSERT is known to have committed. */
  randomId(rand: () => number): number | undefined {
    return this.committedIds[Math.floor(rand() * this.committedIds.length)];
  }

  get rows(): number {
    return this.committedIds.length;
  }

  entries(): IterableIterator<[string, Cell]> {
    return this.cells.entries();
  }

  get(id: number, column: Column): Cell | undefined {
    return this.cells.get(`${id}:${column}`);
  }

  hasRow(id: number): boolean {
    return this.idSet.has(id);
  }
}

export interface PrefillSpec {
  rows: number;
  version: number;
  /** Every n-th row gets a raw_xml value too. */
  xmlEvery: number;
  seed?: number;
}

/** Rows written before `setup`: only the sweep (or a later update) can reach them. */
export async function prefill(pool: pg.Pool, table: string, ring: KeyRing, ledger: WriteLedger, spec: PrefillSpec): Promise<void> {
  const rand = rng(spec.seed ?? 7);
  const rows: unknown[][] = [];
  const committed: { id: number; writes: PendingWrite[] }[] = [];
  for (let id = 1; id <= spec.rows; id++) {
    const title = titlePlaintext(id, rand);
    const xml = id % spec.xmlEvery === 0 ? xmlPlaintext(id, rand) : null;
    rows.push([id, encryptValue(title, spec.version, ring), xml && encryptValue(xml, spec.version, ring), 1, xml ? 1 : 0]);
    const writes: PendingWrite[] = [{ id, column: 'title', seq: 1, plaintext: title }];
    if (xml) writes.push({ id, column: 'raw_xml', seq: 1, plaintext: xml });
    committed.push({ id, writes });
  }
  await insertBatched(pool, table, ['id', 'title', 'raw_xml', 'title_seq', 'xml_seq'], ['bigint', 'text', 'text', 'int', 'int'], rows);
  for (const c of committed) ledger.commit(c.writes, c.id);
}

export interface WorkloadSpec {
  table: string;
  /** Writers of an old application instance: insert and update rows with v1 values. */
  v1Writers: number;
  /** Writers of a new instance: the same with v2 values. */
  v2Writers: number;
  /** Writers that all update the same few hot rows: title, raw_xml, both, or only other columns. */
  hotWriters: number;
  hotIds: number[];
  /** First id for inserted rows. */
  firstNewId: number;
  /** Pause between operations of one writer. */
  pauseMs: number;
  seed: number;
  /** Keep going after errors (server restart); otherwise they are only counted. */
  errorPauseMs?: number;
}

export interface WorkloadStats {
  ops: number;
  commits: number;
  failed: number;
  inDoubt: number;
  byOp: Record<string, number>;
  /** Date.now() of every acknowledged commit. */
  commitTimes: number[];
  errors: string[];
}

export interface Workload {
  stats: WorkloadStats;
  /** Stops every writer after its current operation; resolves with the stats. */
  stop(): Promise<WorkloadStats>;
  pool: pg.Pool;
}

const isConnectionError = (e: unknown): boolean => {
  const code = (e as { code?: string }).code ?? '';
  return /^(08|57P)/.test(code) || /ECONNRESET|ECONNREFUSED|EPIPE/.test(code) || /Connection terminated|connection ended|not queryable/i.test((e as Error).message ?? '');
};

/** Starts the writers on a pool of their own. */
export function startWorkload(url: string, ring: KeyRing, ledger: WriteLedger, spec: WorkloadSpec): Workload {
  const writers = spec.v1Writers + spec.v2Writers + spec.hotWriters;
  const pool = new pg.Pool({ connectionString: url, max: writers, application_name: 'workload', connectionTimeoutMillis: 5_000 });
  pool.on('error', () => undefined); // idle clients dropped by a server restart
  const stats: WorkloadStats = { ops: 0, commits: 0, failed: 0, inDoubt: 0, byOp: {}, commitTimes: [], errors: [] };
  let stopping = false;
  const listening = new WeakSet<pg.PoolClient>();
  let nextId = spec.firstNewId;
  const T = spec.table;
  const updateSql = `update ${T} set title = coalesce($2::text, title), title_seq = title_seq + ($2::text is not null)::int,
      raw_xml = coalesce($3::text, raw_xml), xml_seq = xml_seq + ($3::text is not null)::int,
      status = coalesce($4::text, status), updated_at = now()
    where id = $1 returning title_seq, xml_seq`;
  const insertSql = `insert into ${T} (id, title, raw_xml, title_seq, xml_seq) values ($1, $2, $3, 1, case when $3::text is null then 0 else 1 end)`;

  /** One transaction; the writes enter the ledger only once COMMIT has returned. */
  async function tx(op: string, body: (c: pg.PoolClient) => Promise<{ writes: PendingWrite[]; insertedId?: number }>): Promise<boolean> {
    stats.ops++;
    stats.byOp[op] = (stats.byOp[op] ?? 0) + 1;
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
      if (!listening.has(client)) {
        listening.add(client);
        // A connection the server ends between two queries of a transaction emits here, not on a query.
        client.on('error', () => undefined);
      }
    } catch (e) {
      stats.failed++;
      stats.errors.push(`${op} connect: ${(e as Error).message}`);
      return false;
    }
    let done: { writes: PendingWrite[]; insertedId?: number };
    try {
      await client.query('begin');
      done = await body(client);
    } catch (e) {
      stats.failed++;
      stats.errors.push(`${op}: ${(e as Error).message}`);
      await client.query('rollback').catch(() => undefined);
      client.release(isConnectionError(e) ? true : undefined);
      return false;
    }
    try {
      await client.query('commit');
    } catch (e) {
      // The COMMIT may have reached the server before the connection broke.
      stats.inDoubt++;
      stats.errors.push(`${op} commit: ${(e as Error).message}`);
      ledger.doubt(done.writes);
      client.release(true);
      return false;
    }
    client.release();
    ledger.commit(done.writes, done.insertedId);
    stats.commits++;
    stats.commitTimes.push(Date.now());
    return true;
  }

  function titleFor(w: number, n: number, id: number, rand: () => number): Buffer {
    const base = titlePlaintext(id, rand);
    return Buffer.concat([base, Buffer.from(` [w${w} #${n}]`)]);
  }

  async function update(c: pg.PoolClient, id: number, set: { title?: [Buffer, number]; xml?: [Buffer, number]; status?: string }): Promise<{ writes: PendingWrite[] }> {
    const r = await c.query<{ title_seq: number; xml_seq: number }>(updateSql, [
      id,
      set.title ? encryptValue(set.title[0], set.title[1], ring) : null,
      set.xml ? encryptValue(set.xml[0], set.xml[1], ring) : null,
      set.status ?? null,
    ]);
    const row = r.rows[0];
    if (!row) return { writes: [] };
    const writes: PendingWrite[] = [];
    if (set.title) writes.push({ id, column: 'title', seq: row.title_seq, plaintext: set.title[0] });
    if (set.xml) writes.push({ id, column: 'raw_xml', seq: row.xml_seq, plaintext: set.xml[0] });
    return { writes };
  }

  /** An application instance writing `version`: new rows, and updates of random committed rows. */
  async function appWriter(w: number, version: number): Promise<void> {
    const rand = rng(spec.seed * 1000 + w);
    for (let n = 0; !stopping; n++) {
      const p = rand();
      let ok = true;
      if (p < 0.45) {
        const id = nextId++;
        const title = titleFor(w, n, id, rand);
        const xml = rand() < 0.25 ? xmlPlaintext(id, rand) : null;
        ok = await tx(`insert v${version}`, async (c) => {
          await c.query(insertSql, [id, encryptValue(title, version, ring), xml && encryptValue(xml, version, ring)]);
          const writes: PendingWrite[] = [{ id, column: 'title', seq: 1, plaintext: title }];
          if (xml) writes.push({ id, column: 'raw_xml', seq: 1, plaintext: xml });
          return { writes, insertedId: id };
        });
      } else {
        const id = ledger.randomId(rand);
        if (id === undefined) continue;
        if (p < 0.85) ok = await tx(`update title v${version}`, (c) => update(c, id, { title: [titleFor(w, n, id, rand), version] }));
        else ok = await tx(`update raw_xml v${version}`, (c) => update(c, id, { xml: [xmlPlaintext(id, rand), version] }));
      }
      await pause(rand, !ok);
    }
  }

  /** Many writers on the same few rows: both encrypted columns and other columns, v1 and v2 mixed. */
  async function hotWriter(w: number): Promise<void> {
    const rand = rng(spec.seed * 1000 + w);
    const statuses = ['open', 'dispatched', 'on scene', 'closed'];
    for (let n = 0; !stopping; n++) {
      const id = spec.hotIds[Math.floor(rand() * spec.hotIds.length)]!;
      const v = () => (rand() < 0.55 ? 1 : 2);
      const p = rand();
      const status = statuses[Math.floor(rand() * statuses.length)]!;
      let ok: boolean;
      if (p < 0.3) {
        const ver = v();
        ok = await tx(`hot title v${ver}`, (c) => update(c, id, { title: [titleFor(w, n, id, rand), ver], status }));
      } else if (p < 0.5) {
        const ver = v();
        ok = await tx(`hot raw_xml v${ver}`, (c) => update(c, id, { xml: [xmlPlaintext(id, rand), ver] }));
      } else if (p < 0.7) {
        // Only other columns: a TOASTed raw_xml arrives as unchanged ('u').
        ok = await tx('hot status only', (c) => update(c, id, { status }));
      } else {
        const [a, b] = [v(), v()];
        ok = await tx(`hot both v${a}/v${b}`, (c) => update(c, id, { title: [titleFor(w, n, id, rand), a], xml: [xmlPlaintext(id, rand), b], status }));
      }
      await pause(rand, !ok);
    }
  }

  async function pause(rand: () => number, errored: boolean): Promise<void> {
    const ms = errored ? spec.errorPauseMs ?? spec.pauseMs : spec.pauseMs * (0.5 + rand());
    await new Promise((r) => setTimeout(r, ms));
  }

  const loops: Promise<void>[] = [];
  let w = 0;
  for (let i = 0; i < spec.v1Writers; i++) loops.push(appWriter(w++, 1));
  for (let i = 0; i < spec.v2Writers; i++) loops.push(appWriter(w++, 2));
  for (let i = 0; i < spec.hotWriters; i++) loops.push(hotWriter(w++));
  return {
    stats,
    pool,
    async stop() {
      stopping = true;
      await Promise.all(loops);
      await pool.end();
      return stats;
    },
  };
}

export interface LedgerReport {
  rows: number;
  values: number;
  byVersion: Record<string, number>;
  /** Cells not at the target version (or not a versioned value at all). */
  notTarget: string[];
  /** Cells that decrypt (once) to a v<N>: string: encrypted twice. */
  doubleEncrypted: string[];
  /** Cells whose plaintext is not what the write their seq names committed. */
  mismatched: string[];
  /** Cells whose stored seq is older than a committed write: an update was lost. */
  regressed: string[];
  /** Rows whose INSERT committed but which are gone, or committed values that are NULL now. */
  missing: string[];
}

/** Reads the whole table and checks every encrypted value against the ledger. */
export async function checkWorkloadLedger(db: pg.Pool, table: string, ledger: WriteLedger, ring: KeyRing): Promise<LedgerReport> {
  const { rows } = await db.query<{ id: string; title: string | null; raw_xml: string | null; title_seq: number; xml_seq: number }>(
    `select id::text as id, title, raw_xml, title_seq, xml_seq from ${table}`,
  );
  const out: LedgerReport = { rows: rows.length, values: 0, byVersion: {}, notTarget: [], doubleEncrypted: [], mismatched: [], regressed: [], missing: [] };
  const seen = new Set<number>();
  for (const row of rows) {
    const id = Number(row.id);
    seen.add(id);
    for (const column of COLUMNS) {
      const value = column === 'title' ? row.title : row.raw_xml;
      const seq = column === 'title' ? row.title_seq : row.xml_seq;
      const cell = ledger.get(id, column);
      const where = `${id}.${column}`;
      if (cell && seq < cell.committedSeq) out.regressed.push(`${where} (seq ${seq} < committed ${cell.committedSeq})`);
      if (value === null) {
        if (cell && cell.committedSeq > 0) out.missing.push(`${where} is NULL`);
        continue;
      }
      out.values++;
      const parsed = parseVersioned(value);
      const label = parsed ? `v${parsed.version}` : 'not ours';
      out.byVersion[label] = (out.byVersion[label] ?? 0) + 1;
      if (parsed?.version !== ring.target) out.notTarget.push(`${where}=${label}`);
      const pt = decryptValue(value, ring);
      if (!pt) {
        out.mismatched.push(`${where} does not decrypt`);
        continue;
      }
      if (parseVersioned(Buffer.from(pt).toString('latin1'))) out.doubleEncrypted.push(where);
      const expected = cell?.candidates.get(seq) ?? [];
      if (!expected.some((e) => Buffer.compare(Buffer.from(e), Buffer.from(pt)) === 0)) {
        out.mismatched.push(`${where} (seq ${seq}, ${expected.length} candidate(s))`);
      }
    }
  }
  for (const [k, cell] of ledger.entries()) {
    const id = Number(k.split(':')[0]);
    if (cell.committedSeq > 0 && ledger.hasRow(id) && !seen.has(id)) out.missing.push(`row ${id} is gone`);
  }
  out.missing = [...new Set(out.missing)];
  return out;
}

/** Samples a process's resident set size (VmRSS) every intervalMs. */
export function sampleRss(pid: number, intervalMs = 100): { readonly peakKb: number; readonly samples: number; last(): number; stop(): { peakKb: number; samples: number } } {
  let peakKb = 0;
  let samples = 0;
  let lastKb = 0;
  const read = () => {
    try {
      const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) {
        lastKb = Number(m[1]);
        peakKb = Math.max(peakKb, lastKb);
        samples++;
      }
    } catch {
      // process gone
    }
  };
  read();
  const timer = setInterval(read, intervalMs);
  return {
    get peakKb() {
      return peakKb;
    },
    get samples() {
      return samples;
    },
    last: () => lastKb,
    stop() {
      clearInterval(timer);
      read();
      return { peakKb, samples };
    },
  };
}

/** Commits acknowledged at or after `t`. */
export function commitsSince(stats: WorkloadStats, t: number): number {
  return stats.commitTimes.filter((x) => x >= t).length;
}
