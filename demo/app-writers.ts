// Simulated CAD application instances writing while `pg-rekey run` works: during a rolling deploy the old
// instances still encrypt with v1, the new ones with v2. Each instance is an async loop on a shared pool.
import pg from 'pg';
import type { KeyRing } from '../src/crypto/key-ring.js';
import { encryptValue } from '../src/crypto/rewrite.js';
import { Gen, communicationBody, incidentTitle } from './sample-data.js';

/** One committed application write: the row now holds `plaintext`, encrypted with `version` by `writer`. */
export interface LedgerEntry {
  table: 'incidents' | 'incident_communications';
  id: number;
  plaintext: string;
  version: number;
  writer: string;
  kind: 'insert' | 'update';
  /** The value as the application wrote it (before pg-rekey rewrote it). */
  written: string;
}

export interface WriterOptions {
  /** Instances of each version, e.g. { 1: 2, 2: 2 }. */
  instances: Record<number, number>;
  /** Writes per second of each instance. */
  ratePerInstance: number;
  /** Incidents ids 1..existingIncidents exist already; instance k updates those with id % count == k. */
  existingIncidents: number;
}

interface Instance {
  name: string;
  version: number;
  index: number;
  stop: boolean;
  done?: Promise<void>;
  writes: number;
}

/**
 * The application instances and a ledger of what they committed. Every row is written by one instance only
 * (new ids per instance, updates on a disjoint set of existing incidents), and each instance writes
 * sequentially, so the ledger's last entry for a row is the row's last application write.
 */
export class AppWriters {
  readonly pool: pg.Pool;
  /** table -> id -> last committed write. */
  readonly ledger = new Map<LedgerEntry['table'], Map<number, LedgerEntry>>([['incidents', new Map()], ['incident_communications', new Map()]]);
  readonly errors: string[] = [];
  private readonly instances: Instance[] = [];

  constructor(
    url: string,
    private readonly ring: KeyRing,
    private readonly opts: WriterOptions,
  ) {
    this.pool = new pg.Pool({ connectionString: url, max: 4, application_name: 'cad-app' });
    this.pool.on('error', () => undefined); // an idle connection lost when the server stops
    let index = 0;
    for (const [version, n] of Object.entries(opts.instances)) {
      for (let i = 0; i < n; i++, index++) this.instances.push({ name: `app-${index + 1}`, version: Number(version), index, stop: false, writes: 0 });
    }
  }

  describe(): string {
    return this.instances.map((w) => `${w.name} (v${w.version})`).join(', ');
  }

  start(): void {
    for (const w of this.instances) w.done = this.loop(w);
  }

  /** Stops the instances of one version (or all) after their write in flight. */
  async stop(version?: number): Promise<void> {
    const which = this.instances.filter((w) => version === undefined || w.version === version);
    for (const w of which) w.stop = true;
    await Promise.all(which.map((w) => w.done));
  }

  async close(): Promise<void> {
    await this.stop();
    await this.pool.end().catch(() => undefined);
  }

  writes(version: number): number {
    return this.instances.filter((w) => w.version === version).reduce((n, w) => n + w.writes, 0);
  }

  running(version: number): boolean {
    return this.instances.some((w) => w.version === version && !w.stop);
  }

  entries(): LedgerEntry[] {
    return [...this.ledger.values()].flatMap((m) => [...m.values()]);
  }

  private async loop(w: Instance): Promise<void> {
    const g = new Gen(1000 + w.index);
    const count = this.instances.length;
    const period = 1000 / this.opts.ratePerInstance;
    const mine = { incidents: [] as number[], nextIncident: 1_000_000 * (w.index + 1), nextComm: 1_000_000 * (w.index + 1) };
    while (!w.stop) {
      const started = Date.now();
      const r = g.next();
      try {
        if (r < 0.4) {
          const id = ++mine.nextIncident;
          const entry = this.entry(w, 'incidents', id, incidentTitle(g), 'insert');
          await this.pool.query(`insert into incidents (id, title, status, updated_at) values ($1, $2, 'open', now())`, [id, entry.written]);
          mine.incidents.push(id);
          this.commit(w, entry);
        } else if (r < 0.7) {
          const id = ++mine.nextComm;
          const entry = this.entry(w, 'incident_communications', id, communicationBody(g), 'insert');
          const incident = mine.incidents.length && g.chance(0.5) ? g.pick(mine.incidents) : g.int(1, this.opts.existingIncidents);
          await this.pool.query(`insert into incident_communications (id, incident_id, body, sent_at) values ($1, $2, $3, now())`, [id, incident, entry.written]);
          this.commit(w, entry);
        } else {
          // An existing incident this instance owns (id % count == index), or one it created.
          const existing = g.int(0, Math.floor(this.opts.existingIncidents / count) - 1) * count + w.index + 1;
          const id = mine.incidents.length && g.chance(0.3) ? g.pick(mine.incidents) : existing;
          const entry = this.entry(w, 'incidents', id, incidentTitle(g), 'update');
          await this.pool.query(`update incidents set title = $2, status = 'dispatched', updated_at = now() where id = $1`, [id, entry.written]);
          this.commit(w, entry);
        }
      } catch (e) {
        if (!w.stop) this.errors.push(`${w.name}: ${(e as Error).message}`);
        if (this.errors.length > 20) w.stop = true;
      }
      const wait = period * (0.5 + g.next()) - (Date.now() - started);
      if (wait > 0) await new Promise((res) => setTimeout(res, wait));
    }
  }

  private entry(w: Instance, table: LedgerEntry['table'], id: number, plaintext: string, kind: LedgerEntry['kind']): LedgerEntry {
    return { table, id, plaintext, version: w.version, writer: w.name, kind, written: encryptValue(Buffer.from(plaintext), w.version, this.ring) };
  }

  private commit(w: Instance, e: LedgerEntry): void {
    w.writes++;
    this.ledger.get(e.table)!.set(e.id, e);
  }
}
