import { hostname } from 'node:os';
import type pg from 'pg';
import type { Context } from '../context.js';
import { ConfigError } from '../errors.js';
import { Metrics } from '../metrics.js';
import { PG_REKEY_VERSION } from '../version.js';
import { sleep } from '../timing.js';
import { HttpEndpoint } from './http.js';
import { escapeHtml } from './status-page.js';
import { connectLeaseClient, describeHolder, readLeaseHolder, SlotLease } from './lease.js';

/** How often a standby tries the lock, and refreshes its row in pgrekey.standby. */
const POLL_MS = 1_000;
const HEARTBEAT_MS = 2_000;

/**
 * `run --standby` while another run holds the slot's lease: serve HTTP (/healthz 200, /readyz
 * 503 "standby", pg_rekey_leader 0), record this process in pgrekey.standby for `status`, and
 * try the lock every POLL_MS on a session of its own (the lease session to be). When the lock is
 * taken, the lease starts a new term (lease.ts) and the caller starts the daemon as leader.
 *
 * A standby writes no fenced state: it carries no term, and its only row is in pgrekey.standby.
 */
export class Standby {
  readonly metrics = new Metrics();
  private readonly log;
  private readonly stopped = new AbortController();
  private holder = 'unknown';
  private http: HttpEndpoint | null = null;
  private readonly host = hostname();

  constructor(
    private readonly ctx: Context,
    targetVersion: string,
  ) {
    const slot = ctx.config.replication.slot;
    this.log = ctx.log.child({ component: 'standby', slot });
    this.metrics.info.set({ target_version: targetVersion, slot, version: PG_REKEY_VERSION }, 1);
    this.metrics.leader.set(0);
  }

  /** Stop waiting (a signal): wait() resolves with null. */
  stop(): void {
    this.stopped.abort();
  }

  /**
   * Waits until this process holds the lease (or stop()). Returns the lease and the HTTP endpoint,
   * which the daemon serves from then on; on null the endpoint is closed already.
   */
  async wait(): Promise<{ lease: SlotLease; http: HttpEndpoint } | null> {
    const { config } = this.ctx;
    const slot = config.replication.slot;
    this.http = await openEndpoint(this.ctx, this.metrics, () => this.readyReason());
    this.log.info({ http: `http://${config.daemon.httpHost}:${this.http.port}` }, `pg-rekey run started as a STANDBY for replication slot ${slot}: waiting for the lease (role: standby)`);
    let client: pg.Client | null = null;
    let lastBeat = 0;
    try {
      while (!this.stopped.signal.aborted) {
        try {
          client ??= await connectLeaseClient(config.connectionString);
          const lease = await SlotLease.take(client, { connectionString: config.connectionString, slot, log: this.ctx.log });
          if (lease) {
            client = null; // the lease's session now
            this.log.info({ term: lease.token.term }, `the lease of replication slot ${slot} was free: this standby leads the slot now (term ${lease.token.term})`);
            await this.forget();
            return { lease, http: this.http };
          }
          if (Date.now() - lastBeat >= HEARTBEAT_MS) {
            lastBeat = Date.now();
            await this.beat(client);
          }
        } catch (e) {
          this.log.warn({ err: e }, 'standby: could not try the lease; trying again');
          await client?.end().catch(() => undefined);
          client = null;
        }
        await sleep(POLL_MS, this.stopped.signal);
      }
      await this.forget();
      const closed = new Promise((r) => this.http!.server.close(r));
      this.http.server.closeAllConnections(); // keep-alive scrapers
      await closed;
      return null;
    } finally {
      await client?.end().catch(() => undefined);
    }
  }

  private readyReason(): { ok: boolean; reason: string } {
    return { ok: false, reason: `standby: waiting for the lease of replication slot ${this.ctx.config.replication.slot}, held by ${this.holder} (role: standby)` };
  }

  /** Refreshes this standby's row (for status) and who holds the lease (for /readyz and the log). */
  private async beat(client: pg.Client): Promise<void> {
    const slot = this.ctx.config.replication.slot;
    const holder = describeHolder(await readLeaseHolder(client, slot));
    if (holder !== this.holder) this.log.info({ holder }, `standby: replication slot ${slot} is led by ${holder}`);
    this.holder = holder;
    await this.ctx.pool.query(
      `insert into pgrekey.standby (slot_name, host, pid) values ($1, $2, $3)
       on conflict (slot_name, host, pid) do update set heartbeat_at = now()`,
      [slot, this.host, process.pid],
    );
  }

  private async forget(): Promise<void> {
    await this.ctx.pool
      .query(`delete from pgrekey.standby where slot_name = $1 and host = $2 and pid = $3`, [this.ctx.config.replication.slot, this.host, process.pid])
      .catch((e) => this.log.warn({ err: e }, 'could not remove this standby from pgrekey.standby'));
  }
}

/** The standby's endpoint; a port in use is a configuration error naming the setting (as the daemon's). */
async function openEndpoint(ctx: Context, metrics: Metrics, ready: () => { ok: boolean; reason: string }): Promise<HttpEndpoint> {
  const { httpHost, httpPort } = ctx.config.daemon;
  const page = async () => `<!doctype html><meta charset="utf-8"><title>pg-rekey standby</title><p>${escapeHtml(ready().reason)}</p>`;
  try {
    return await HttpEndpoint.listen(httpHost, httpPort, { metrics, health: { ready }, page });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') {
      throw new ConfigError(`cannot listen on ${httpHost}:${httpPort} for /healthz /readyz /metrics (${code})`, 'set daemon.http_port in the config (or PG_REKEY_DAEMON_HTTP_PORT) to a free port, or 0 to pick one (logged at start)');
    }
    throw e;
  }
}
