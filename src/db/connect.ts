import { createReadStream } from 'node:fs';
import { createRequire } from 'node:module';
import { insideCredentialsDirectory } from '../crypto/key-ring.js';
import pg from 'pg';
import { RuntimeFailure } from '../errors.js';
import { backoffMs, sleep } from '../timing.js';
import type { Logger } from '../logger.js';
import type { HostPort } from './hosts.js';
import { NoPrimaryError, primaryClientClass, PrimaryLocator, WrongSessionError } from './primary.js';

export const APPLICATION_NAME = 'pg-rekey';

export interface ConnectOptions {
  connectionString: string | undefined;
  /** Shown in pg_stat_activity, so load checks can exclude pg-rekey's own backends. */
  applicationName?: string;
  max?: number;
  /** The client class of the pool (the daemon's leader pool sets its fencing term on connect). */
  Client?: typeof pg.Client;
}

type PgpassLookup = (params: unknown, cb: (password: string | undefined) => void) => void;
// pg's own dependencies, resolved from where pg is installed.
const fromPg = createRequire(createRequire(import.meta.url).resolve('pg'));
const pgpass = fromPg('pgpass') as PgpassLookup;
const pgpassHelper = createRequire(fromPg.resolve('pgpass'))('./helper.js') as { getPassword(params: unknown, stream: NodeJS.ReadableStream, cb: (password: string | undefined) => void): void };
const parseConnectionString = fromPg('pg-connection-string') as { parseIntoClientConfig(s: string): pg.ClientConfig };

/**
 * The password from ~/.pgpass (or PGPASSFILE) when neither the connection string nor PGPASSWORD
 * has one. pg does this lookup itself, but prints a DeprecationWarning each time it finds one;
 * a password function is its supported way. undefined: the server then says it needs one.
 */
export function passwordFromPgpass(params: unknown): Promise<string | undefined> {
  const file = process.env.PGPASSFILE;
  // A systemd credential (LoadCredential=pgpass:..., PGPASSFILE=%d/pgpass) shows mode 0440 (the ACL mask),
  // which pgpass refuses as readable by the group; systemd made it private to the service (key-ring.ts).
  if (file && insideCredentialsDirectory(file, process.env.CREDENTIALS_DIRECTORY)) {
    return new Promise((resolve) => pgpassHelper.getPassword(params, createReadStream(file), resolve));
  }
  return new Promise((resolve) => pgpass(params, resolve));
}

function pgpassOption(): { password?: () => Promise<string> } {
  // pg calls it with the connection's parameters and takes undefined as "no password" (its types say neither).
  return process.env.PGPASSWORD === undefined ? { password: passwordFromPgpass as unknown as () => Promise<string> } : {};
}

/**
 * The connection settings of every connection pg-rekey opens (pool, lease, stream), with the password
 * from ~/.pgpass when none is given otherwise. pg would parse a connection string over its other
 * settings (an empty password included, dropping a password function), so a URL without a password
 * is parsed here, with pg's own parser. `rowSecurityOff`: see withRowSecurityOff.
 */
export function connectionConfig(connectionString: string | undefined, opts: { rowSecurityOff?: boolean; host?: HostPort } = {}): pg.ClientConfig {
  // A host list (hosts.ts): the settings of one of its hosts (the first unless told); PrimaryClient
  // and PrimaryLocator (primary.ts) point the connection at the one they choose.
  const targets = locatorFor(connectionString).targets;
  const host = opts.host ?? targets.hosts[0]!;
  const one = targets.forHost(host);
  const at = targets.hosts.length > 1 ? { host: host.host, port: host.port } : {};
  const config = singleHostConfig(one, opts);
  return 'connectionString' in config && config.connectionString ? config : { ...config, ...at };
}

/** One locator per connection string: the pool, the lease and the stream share what it learnt. */
const locators = new Map<string, PrimaryLocator>();
export function locatorFor(connectionString: string | undefined): PrimaryLocator {
  const k = connectionString ?? '';
  let l = locators.get(k);
  if (!l) {
    l = new PrimaryLocator(connectionString, (h) => connectionConfig(connectionString, { rowSecurityOff: false, host: h }));
    locators.set(k, l);
  }
  return l;
}

function singleHostConfig(connectionString: string | undefined, opts: { rowSecurityOff?: boolean }): pg.ClientConfig {
  const base = opts.rowSecurityOff === false ? { connectionString } : withRowSecurityOff(connectionString);
  if (!base.connectionString) return { ...base, ...pgpassOption() };
  let parsed: pg.ClientConfig;
  try {
    parsed = parseConnectionString.parseIntoClientConfig(base.connectionString);
  } catch {
    return base; // pg reports what is wrong with it when it connects
  }
  // pg reads sslcert/sslkey/sslrootcert files when it parses: leave it the string, parsed at every connect
  // (renewed certificates are picked up), as it is when a password is given.
  if (parsed.password || /[?&]ssl(cert|key|rootcert)=/.test(base.connectionString)) return base;
  const { password: _empty, ...rest } = parsed;
  // A string that is not a postgres:// URL keeps row_security=off (and PGOPTIONS) in a separate `options`.
  const options = [rest.options, 'options' in base ? base.options : undefined].filter(Boolean).join(' ');
  return { ...rest, ...(options ? { options } : {}), ...pgpassOption() };
}

/**
 * A pool for pg-rekey's own work. With no connection string, pg reads the
 * libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGSSLMODE);
 * ~/.pgpass (PGPASSFILE) as libpq does, when no password is given otherwise.
 */
export function createPool(opts: ConnectOptions): pg.Pool {
  const pool = new pg.Pool({
    ...connectionConfig(opts.connectionString),
    Client: primaryClientClass(locatorFor(opts.connectionString)),
    application_name: opts.applicationName ?? APPLICATION_NAME,
    max: opts.max ?? 4,
    ...(opts.Client ? { Client: opts.Client } : {}),
    idleTimeoutMillis: 30_000,
    connectionTimeoutMillis: 15_000,
  });
  // An idle client that loses its connection emits here; without a listener the process dies.
  pool.on('error', () => undefined);
  return pool;
}

/**
 * Row security silently filters what a role sees: a count of 0 and an UPDATE of 0 rows that
 * mean nothing. With row_security off, a query that a policy would filter raises an error
 * instead (42501), so pg-rekey never works on, or counts, part of a table. Set as a startup
 * option, added to any `options` of the connection string (which would otherwise override a
 * separate `options` field) or of PGOPTIONS.
 */
export function withRowSecurityOff(connectionString: string | undefined): { connectionString?: string; options?: string } {
  const off = '-c row_security=off';
  if (connectionString && /^postgres(ql)?:\/\//i.test(connectionString)) {
    try {
      const url = new URL(connectionString);
      url.searchParams.set('options', [url.searchParams.get('options'), off].filter(Boolean).join(' '));
      return { connectionString: url.toString() };
    } catch {
      // Not a URL that WHATWG parses: pg parses it its own way; `options` then applies unless it sets its own.
    }
  }
  return { connectionString, options: [process.env.PGOPTIONS, off].filter(Boolean).join(' ') };
}

/**
 * Checks out a pool client that cannot crash the process: a connection lost
 * while the client is checked out but between queries emits 'error' on the
 * client, and an EventEmitter 'error' without a listener kills Node. The next
 * query on it then fails normally and the caller's error path runs.
 */
export async function checkout(pool: pg.Pool): Promise<pg.PoolClient> {
  const client = await pool.connect();
  const ignore = () => undefined;
  client.on('error', ignore);
  const release = client.release.bind(client);
  client.release = (err?: Error | boolean) => {
    client.off('error', ignore);
    release(err);
  };
  return client;
}

/**
 * One transaction on a pool client: `begin` (with its options), `fn`, commit; on any error a
 * rollback, and the client is discarded (its session state is unknown).
 */
export async function inTransaction<T>(pool: pg.Pool, begin: string, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await checkout(pool);
  try {
    await client.query(begin);
    const out = await fn(client);
    await client.query('commit');
    client.release();
    return out;
  } catch (e) {
    await client.query('rollback').catch(() => undefined);
    client.release(true);
    throw e;
  }
}

/** SQLSTATE classes that mean "try again later", never "give up". */
const RETRYABLE = new Set([
  '40001', // serialization_failure
  '40P01', // deadlock_detected
  '55P03', // lock_not_available (lock_timeout)
  '57014', // query_canceled (statement_timeout)
  '57P01', // admin_shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now
  '53300', // too_many_connections
  '08000', '08003', '08006', '08001', '08004', // connection exceptions
]);
const NODE_NETWORK = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);

export function isRetryable(err: unknown): boolean {
  const code = (err as { code?: string })?.code;
  if (code && (RETRYABLE.has(code) || NODE_NETWORK.has(code))) return true;
  const msg = (err as Error)?.message ?? '';
  // pg reports a dropped socket, and pg-pool a connect that timed out, without a code.
  return /Connection terminated|connection ended|Client has encountered a connection error|timeout exceeded when trying to connect/i.test(msg);
}

const CONNECT_HINT = 'check --database-url / DATABASE_URL / `database:` in the config (or PGHOST, PGPORT, PGUSER, PGDATABASE), that the server is up, and pg_hba.conf';
const PASSWORD_HINT =
  'the server wants a password for this role: put it in ~/.pgpass (host:port:database:user:password, mode 0600; or PGPASSFILE), ' +
  'or set PGPASSWORD, or add it to the connection string (postgres://user:password@host/db)';
// node-postgres reads sslmode and sslrootcert from the connection string only: PGSSLMODE=verify-full
// alone trusts Node's CA store (plus NODE_EXTRA_CA_CERTS), and PGSSLROOTCERT is not read at all.
export const SSL_HINT =
  'give the TLS mode and the CA that signed the server certificate in the connection string: ' +
  'postgres://user@host/db?sslmode=verify-full&sslrootcert=/path/ca.pem (PGSSLMODE alone trusts only the system CAs; PGSSLROOTCERT is not read); ' +
  'a server without TLS: sslmode=disable';

/** The hint for a failed connect: what to set for a missing/wrong password or a TLS mismatch, else the general one. */
export function connectHint(e: unknown): string {
  const err = e as { code?: string; message?: string };
  const msg = err.message ?? '';
  if (e instanceof NoPrimaryError || e instanceof WrongSessionError) {
    return 'pg-rekey writes, so it connects only to a primary: start it, or wait for the failover to finish; list every host that can become the primary, libpq style (postgres://user@h1:5432,h2:5432/db); ' + CONNECT_HINT;
  }
  if (err.code === '28P01' || /password must be a string|password authentication failed|SASL|SCRAM/i.test(msg)) return PASSWORD_HINT;
  if (/\bSSL\b|certificate|no encryption/i.test(msg)) return `${SSL_HINT}; ${CONNECT_HINT}`;
  return CONNECT_HINT;
}

function connectFailureText(e: unknown, source: string): string {
  const err = e as { code?: string; message?: string };
  return `cannot connect to PostgreSQL (connection from ${source}): ${err.message ?? 'unknown error'}${err.code ? ` [${err.code}]` : ''}`;
}

/** Wraps a failure to connect into an error that says what to check. */
export async function checkConnection(pool: pg.Pool, source: string): Promise<void> {
  try {
    await pool.query('select 1');
  } catch (e) {
    throw new RuntimeFailure(connectFailureText(e, source), connectHint(e));
  }
}

/** A stop signal arrived while waiting for the database: nothing was started, nothing to drain. */
export class ConnectWaitInterrupted extends RuntimeFailure {
  constructor() {
    super('interrupted while waiting for PostgreSQL to become reachable', 'nothing was started; run the command again');
  }
}

export interface WaitForConnectionOptions {
  source: string;
  log: Logger;
  /** Give up (exit 3) once this much time has passed; Infinity waits as long as it takes. */
  maxWaitMs: number;
  /** Cap of the exponential backoff between attempts (default 30 s). */
  maxBackoffMs?: number;
  /** First pause (default 500 ms); doubles per attempt up to maxBackoffMs. */
  initialBackoffMs?: number;
  signal?: AbortSignal;
}

/**
 * checkConnection for a process that has to wait for the server (the daemon;
 * backfill for a bounded time): a transient failure (refused, reset, timed
 * out, starting up, too many connections; see isRetryable) is retried with
 * capped exponential backoff, one warn line per failed attempt saying what
 * failed and when the next attempt is. Anything else (authentication, no
 * such database, pg_hba) does not go away by waiting and fails at once.
 */
export async function waitForConnection(pool: pg.Pool, o: WaitForConnectionOptions): Promise<void> {
  const started = Date.now();
  const log = o.log.child({ component: 'connect' });
  for (let attempt = 1; ; attempt++) {
    try {
      await pool.query('select 1');
      if (attempt > 1) log.info({ attempt, waitedSec: Math.round((Date.now() - started) / 1000) }, `connected to PostgreSQL after ${attempt} attempts`);
      return;
    } catch (e) {
      const what = connectFailureText(e, o.source);
      if (!isRetryable(e)) throw new RuntimeFailure(what, `${connectHint(e)} (not retried: this error does not go away by waiting)`);
      const waitMs = backoffMs(attempt, o.initialBackoffMs ?? 500, o.maxBackoffMs ?? 30_000);
      if (Date.now() - started + waitMs > o.maxWaitMs) {
        throw new RuntimeFailure(`${what}; gave up after ${attempt} attempts in ${Math.round((Date.now() - started) / 1000)} s`, connectHint(e));
      }
      if (o.signal?.aborted) throw new ConnectWaitInterrupted();
      log.warn({ attempt, retryInSec: waitMs / 1000, code: (e as { code?: string }).code }, `${what}; attempt ${attempt} failed, next attempt in ${waitMs / 1000} s`);
      await sleep(waitMs, o.signal);
      if (o.signal?.aborted) {
        log.info({ attempt }, 'stop signal while waiting for PostgreSQL: nothing was started, exiting');
        throw new ConnectWaitInterrupted();
      }
    }
  }
}
