import pg from 'pg';
import { parseHostTargets, hostLabel, type HostPort, type HostTargets } from './hosts.js';

/**
 * Every connection pg-rekey opens goes to the server its connection string's host list names
 * as the primary (hosts.ts): the pool (through PrimaryClient), the lease connection, the
 * replication connection (locate() before the library connects). On every (re)connect: after a
 * promotion the old primary is gone or in recovery and the next connection finds the new one.
 *
 * With several hosts, a short probe connection is made to each, in order (the last primary
 * found first), until one has the target session attribute; the real connection then goes
 * there and checks the attribute itself again. With one host there is no probe: the connection
 * checks itself, so a standby named by mistake fails with a message that says so instead of
 * "cannot execute UPDATE in a read-only transaction" in the middle of the work.
 */

/** Each probe's connect bound (libpq's connect_timeout is per host too). */
const PROBE_CONNECT_MS = 5_000;

/** Why one host was not chosen. */
export interface HostAttempt {
  host: string;
  reason: string;
}

/**
 * No host of the list is a server pg-rekey can write to. Retryable (SQLSTATE 08001) while any
 * host was unreachable or in recovery: during a failover that is a matter of seconds. When every
 * host refused for a reason that waiting does not fix (a password, a pg_hba rule), the first
 * one's SQLSTATE is kept, so that the caller does not wait for it.
 */
export class NoPrimaryError extends Error {
  readonly code: string;
  constructor(
    readonly attrs: string,
    readonly attempts: HostAttempt[],
    code: string,
  ) {
    super(`no server with target_session_attrs=${attrs} among the hosts of the connection string: ${attempts.map((a) => `${a.host} ${a.reason}`).join('; ')}`);
    this.code = code;
  }
}

/** The session does not have the target attribute (a standby, or default_transaction_read_only). */
export class WrongSessionError extends Error {
  readonly code = '08001';
}

const ATTRS_SQL = `select pg_is_in_recovery() as recovery, current_setting('transaction_read_only') = 'on' as "readOnly"`;

/** Why `c` is not a session with `attrs`, or null when it is. */
export async function sessionMismatch(c: pg.ClientBase, attrs: HostTargets['targetSessionAttrs']): Promise<string | null> {
  if (attrs === 'any') return null;
  const r = (await c.query<{ recovery: boolean; readOnly: boolean }>(ATTRS_SQL)).rows[0]!;
  if (r.recovery) return 'is in recovery (a standby)';
  if (attrs === 'read-write' && r.readOnly) return 'is read-only (default_transaction_read_only = on)';
  return null;
}

function describeFailure(e: unknown): string {
  const err = e as { code?: string; message?: string };
  return `unreachable or refused: ${err.message ?? String(e)}${err.code ? ` [${err.code}]` : ''}`;
}

const NOT_RETRYABLE = /^(28|3D|42)/; // authentication, no such database, insufficient privilege

export class PrimaryLocator {
  readonly targets: HostTargets;
  private last: HostPort | null = null;

  constructor(
    readonly connectionString: string | undefined,
    /** pg settings of the probe (password function, ssl): the same as the real connection's. */
    private readonly probeConfig: (h: HostPort) => pg.ClientConfig,
  ) {
    this.targets = parseHostTargets(connectionString);
  }

  get multiHost(): boolean {
    return this.targets.hosts.length > 1;
  }

  /** The host the last locate() chose (null before the first). */
  get current(): HostPort | null {
    return this.last;
  }

  /**
   * The first host (the last one chosen first) that accepts a connection with the target
   * attribute. Throws NoPrimaryError naming every host tried and why it was passed over.
   */
  async locate(): Promise<HostPort> {
    const { hosts, targetSessionAttrs: attrs } = this.targets;
    if (hosts.length === 1) return hosts[0]!;
    const last = this.last;
    const order = last ? [last, ...hosts.filter((h) => h.host !== last.host || h.port !== last.port)] : hosts;
    const attempts: HostAttempt[] = [];
    let codes: string[] = [];
    for (const h of order) {
      const c = new pg.Client({ ...this.probeConfig(h), connectionTimeoutMillis: PROBE_CONNECT_MS, application_name: 'pg-rekey-probe' });
      c.on('error', () => undefined);
      try {
        await c.connect();
        const why = await sessionMismatch(c, attrs);
        if (why === null) {
          this.last = h;
          return h;
        }
        attempts.push({ host: hostLabel(h), reason: why });
        codes.push('08001');
      } catch (e) {
        attempts.push({ host: hostLabel(h), reason: describeFailure(e) });
        codes.push((e as { code?: string }).code ?? '08001');
      } finally {
        await c.end().catch(() => undefined);
      }
    }
    this.last = null;
    codes = codes.filter((c) => NOT_RETRYABLE.test(c));
    throw new NoPrimaryError(attrs, attempts, codes.length === attempts.length ? codes[0]! : '08001');
  }

  /** The host is no longer what it was (a connection to it failed its check): probe from the start. */
  forget(h: HostPort): void {
    if (this.last && this.last.host === h.host && this.last.port === h.port) this.last = null;
  }
}

/**
 * A pg.Client that connects to the locator's choice and checks its session attribute once
 * connected; given to pg.Pool as its `Client`, and used for the lease connection.
 */
type ConnectCallback = ((err: Error) => void) | ((err: null, c: pg.Client) => void);

export function primaryClientClass(locator: PrimaryLocator): typeof pg.Client {
  class PrimaryClient extends pg.Client {
    // pg's connect() takes a callback (pg-pool) or returns a promise (everyone else).
    override connect(): Promise<pg.Client>;
    override connect(callback: ConnectCallback): void;
    override connect(callback?: ConnectCallback): Promise<pg.Client> | void {
      const p = this.connectToPrimary().then(() => this);
      if (!callback) return p;
      p.then(
        (c) => (callback as (err: null, c: pg.Client) => void)(null, c),
        (e: Error) => (callback as (err: Error) => void)(e),
      );
    }

    private async connectToPrimary(): Promise<void> {
      let chosen: HostPort | null = null;
      if (locator.multiHost) {
        chosen = await locator.locate();
        const self = this as unknown as { host: string; port: number; connectionParameters: { host: string; port: number } };
        self.host = self.connectionParameters.host = chosen.host;
        self.port = self.connectionParameters.port = chosen.port;
      }
      await super.connect();
      const why = await sessionMismatch(this, locator.targets.targetSessionAttrs).catch((e: unknown) => {
        void this.end().catch(() => undefined);
        throw e;
      });
      if (why === null) return;
      if (chosen) locator.forget(chosen);
      await this.end().catch(() => undefined);
      const where = chosen ? hostLabel(chosen) : locator.targets.describe();
      throw new WrongSessionError(`the server at ${where} ${why}: pg-rekey writes, and target_session_attrs=${locator.targets.targetSessionAttrs}; name the primary (or several hosts, libpq style: postgres://h1:5432,h2:5432/db)`);
    }
  }
  return PrimaryClient;
}
