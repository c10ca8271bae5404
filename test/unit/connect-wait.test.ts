// waitForConnection: which failures are waited out, the backoff schedule and its cap, giving up, stopping.
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseIntoClientConfig } from 'pg-connection-string';
import { ConnectWaitInterrupted, connectHint, isRetryable, SSL_HINT, waitForConnection } from '../../src/db/connect.js';
import { RuntimeFailure } from '../../src/errors.js';
import type { Logger } from '../../src/logger.js';

/** A pool whose query fails with the given errors in turn, then succeeds. */
function flakyPool(errors: unknown[]): { pool: pg.Pool; calls: () => number } {
  let n = 0;
  const pool = {
    query: async () => {
      const e = errors[n++];
      if (e) throw e;
      return { rows: [{ '?column?': 1 }] };
    },
  } as unknown as pg.Pool;
  return { pool, calls: () => n };
}

const err = (message: string, code?: string) => Object.assign(new Error(message), code ? { code } : {});
const refused = () => err('connect ECONNREFUSED 127.0.0.1:5999', 'ECONNREFUSED');

/** A logger that keeps what it is given. */
function memoryLog(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const capture = (level: string) => (obj: Record<string, unknown>, msg: string) => lines.push({ level, ...obj, msg });
  const fake = { child: () => fake, warn: capture('warn'), info: capture('info'), error: capture('error') } as unknown as Logger;
  return { log: fake, lines };
}

describe('waitForConnection', () => {
  it('retries transient failures with doubling pauses up to the cap, one warn line per attempt, then an info line', async () => {
    const { pool, calls } = flakyPool([refused(), err('Connection terminated unexpectedly'), err('the database system is starting up', '57P03'), refused(), refused(), refused()]);
    const { log, lines } = memoryLog();
    const t0 = Date.now();
    await waitForConnection(pool, { source: 'flag', log, maxWaitMs: Infinity, initialBackoffMs: 5, maxBackoffMs: 20 });
    expect(calls()).toBe(7);
    const warns = lines.filter((l) => l.level === 'warn');
    expect(warns.map((l) => l.retryInSec)).toEqual([0.005, 0.01, 0.02, 0.02, 0.02, 0.02]);
    expect(warns.map((l) => l.attempt)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(warns[0]!.msg).toBe('cannot connect to PostgreSQL (connection from flag): connect ECONNREFUSED 127.0.0.1:5999 [ECONNREFUSED]; attempt 1 failed, next attempt in 0.005 s');
    expect(warns[2]!.code).toBe('57P03');
    expect(lines.at(-1)).toMatchObject({ level: 'info', attempt: 7, msg: 'connected to PostgreSQL after 7 attempts' });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(95);
  });

  it('fails at once, without a retry line, on errors that waiting does not fix (authentication, no such database)', async () => {
    for (const e of [err('password authentication failed for user "x"', '28P01'), err('database "nope" does not exist', '3D000')]) {
      const { pool, calls } = flakyPool([e]);
      const { log, lines } = memoryLog();
      const p = waitForConnection(pool, { source: 'env', log, maxWaitMs: Infinity });
      await expect(p).rejects.toBeInstanceOf(RuntimeFailure);
      await expect(p).rejects.toThrow(/not retried|cannot connect/);
      expect(((await p.catch((x: unknown) => x)) as RuntimeFailure).hint).toMatch(/not retried: this error does not go away by waiting/);
      expect(calls()).toBe(1);
      expect(lines).toEqual([]);
    }
  });

  it('gives up (exit 3) once the next attempt would pass maxWaitMs', async () => {
    const { pool, calls } = flakyPool(Array.from({ length: 100 }, refused));
    const { log } = memoryLog();
    const p = waitForConnection(pool, { source: 'file', log, maxWaitMs: 100, initialBackoffMs: 10, maxBackoffMs: 40 });
    const e = (await p.catch((x: unknown) => x)) as RuntimeFailure;
    expect(e).toBeInstanceOf(RuntimeFailure);
    expect(e.exitCode).toBe(3);
    expect(e.message).toMatch(/ECONNREFUSED.*; gave up after \d+ attempts in 0 s$/);
    expect(e.hint).toMatch(/^check --database-url/);
    expect(calls()).toBeGreaterThanOrEqual(3);
    expect(calls()).toBeLessThan(10);
  });

  it('a stop signal ends the wait at once with ConnectWaitInterrupted', async () => {
    const { pool } = flakyPool(Array.from({ length: 100 }, refused));
    const { log, lines } = memoryLog();
    const stop = new AbortController();
    const p = waitForConnection(pool, { source: 'flag', log, maxWaitMs: Infinity, initialBackoffMs: 60_000, signal: stop.signal });
    setTimeout(() => stop.abort(), 20);
    const t0 = Date.now();
    await expect(p).rejects.toBeInstanceOf(ConnectWaitInterrupted);
    expect(Date.now() - t0).toBeLessThan(1_000);
    expect(lines.at(-1)!.msg).toMatch(/stop signal while waiting/);
  });

  it('a pool connect timeout is retryable', () => {
    expect(isRetryable(err('timeout exceeded when trying to connect'))).toBe(true);
    expect(isRetryable(err('connect ENETUNREACH 10.0.0.1:5432', 'ENETUNREACH'))).toBe(true);
    expect(isRetryable(err('password authentication failed', '28P01'))).toBe(false);
  });
});

describe('row security off on every pool connection', () => {
  it('adds the startup option to a URL, keeping its own options and parameters', async () => {
    const { withRowSecurityOff } = await import('../../src/db/connect.js');
    const parse = (await import('pg-connection-string')).parse;
    expect(parse(withRowSecurityOff('postgres://u:p%40ss@127.0.0.1:5432/db').connectionString!).options).toBe('-c row_security=off');
    const kept = parse(withRowSecurityOff('postgres://u@h/db?options=-c%20search_path%3Dapp&application_name=x').connectionString!);
    expect([kept.options, kept.application_name, kept.password]).toEqual(['-c search_path=app -c row_security=off', 'x', '']);
    expect(withRowSecurityOff(undefined).options).toMatch(/-c row_security=off$/);
  });

  it('connectionConfig keeps it in every form of connection string, with the ~/.pgpass password function only where none is given', async () => {
    const { connectionConfig } = await import('../../src/db/connect.js');
    const forms = ['postgres://u@127.0.0.1:5432/db', 'postgres://u:secret@h/db', '/var/run/postgresql app', 'socket:/var/run/postgresql?db=app', undefined];
    for (const cs of forms) {
      const c = connectionConfig(cs);
      // Either pg gets the string (and parses options out of it, or merges our separate options) or the parsed fields.
      const options = c.connectionString && /^postgres/.test(c.connectionString) ? new URL(c.connectionString).searchParams.get('options') : c.options;
      expect(options, String(cs)).toMatch(/-c row_security=off/);
    }
    expect(typeof connectionConfig('postgres://u@h/db').password).toBe('function');
    expect(connectionConfig('postgres://u:secret@h/db').password).toBeUndefined(); // pg takes it from the URL
    expect(connectionConfig('postgres://u:secret@h/db').connectionString).toContain('secret');
    // Certificate files stay with pg, which reads them at every connect.
    expect(connectionConfig('postgres://u@h/db?sslcert=/x.crt&sslkey=/x.key').connectionString).toContain('sslcert');
    expect(connectionConfig('postgres://u@h/db', { rowSecurityOff: false }).options ?? '').not.toMatch(/row_security/);
  });
});

describe('connect hints', () => {
  it('a TLS failure names what node-postgres reads (sslmode and sslrootcert in the URL), never PGSSLROOTCERT as a fix', () => {
    for (const m of ['self-signed certificate in certificate chain', 'The server does not support SSL connections', 'no pg_hba.conf entry for host "x", user "u", database "d", no encryption']) {
      const hint = connectHint(err(m));
      expect(hint, m).toContain('?sslmode=verify-full&sslrootcert=/path/ca.pem');
      expect(hint, m).toContain('PGSSLROOTCERT is not read');
      expect(hint, m).not.toMatch(/\(and PGSSLROOTCERT\)/);
    }
    expect(connectHint(refused())).not.toContain('sslrootcert');
  });

  it('the URL form the hint suggests is what pg parses: the CA file becomes ssl.ca, verify-full checks the host', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-ca-'));
    const ca = path.join(dir, 'ca.pem');
    writeFileSync(ca, '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
    const example = SSL_HINT.match(/postgres:\/\/\S+/)![0]!.replace('/path/ca.pem', encodeURIComponent(ca));
    const parsed = parseIntoClientConfig(example) as { ssl?: { ca?: string; rejectUnauthorized?: boolean } };
    expect(parsed.ssl?.ca).toContain('BEGIN CERTIFICATE');
    expect(parsed.ssl?.rejectUnauthorized).not.toBe(false);
  });
});
