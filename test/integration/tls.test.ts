// TLS to the database: sslmode / sslrootcert in the connection string reach every connection,
// the replication one included. The shared test cluster gets a certificate (ssl reloads on SIGHUP):
// that needs its data directory on this host, so it runs on the embedded cluster only, never on a
// server given by DATABASE_URL (whose configuration a test must not change).
const embedded = inject('pgBackend') === 'embedded binaries';
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { adminUrl, createTestDatabase, type TestDatabase } from '../support/db.js';
import { insertBatched, testRing } from '../support/fixtures.js';
import { cli, writeDaemonFiles } from '../support/daemon.js';
import { spawnCli } from '../support/cli.js';
import { encryptValue } from '../../src/crypto/rewrite.js';

let db: TestDatabase;
let certDir: string;

function openssl(args: string[]): void {
  execFileSync('openssl', args, { cwd: certDir, stdio: 'pipe' });
}

/** A CA and a server certificate for 127.0.0.1, plus an unrelated CA. */
function makeCertificates(): void {
  certDir = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-tls-'));
  writeFileSync(path.join(certDir, 'san.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  for (const ca of ['ca', 'other-ca']) {
    openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${ca}`, '-keyout', `${ca}.key`, '-out', `${ca}.pem`]);
  }
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', 'server.key', '-out', 'server.csr']);
  openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', 'san.cnf', '-out', 'server.pem']);
}

beforeAll(async () => {
  if (!embedded) return;
  makeCertificates();
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  try {
    // The server reads the key as its own OS user; it must be private to it.
    const dataDir = (await admin.query(`show data_directory`)).rows[0].data_directory as string;
    const owner = statSync(dataDir);
    for (const f of ['server.pem', 'server.key']) {
      const dst = path.join(dataDir, `rekey-tls-${f}`);
      writeFileSync(dst, readFileSync(path.join(certDir, f)));
      chownSync(dst, owner.uid, owner.gid);
      chmodSync(dst, 0o600);
    }
    await admin.query(`alter system set ssl_cert_file = 'rekey-tls-server.pem'`);
    await admin.query(`alter system set ssl_key_file = 'rekey-tls-server.key'`);
    await admin.query(`alter system set ssl = on`);
    await admin.query(`select pg_reload_conf()`);
  } finally {
    await admin.end();
  }
  db = await createTestDatabase('tls');
  const ring = await testRing();
  await db.pool.query(`create table notes (id bigint primary key, body text)`);
  await insertBatched(db.pool, 'notes', ['id', 'body'], ['bigint', 'text'], Array.from({ length: 200 }, (_, i) => [i + 1, encryptValue(Buffer.from(`note ${i}`), 1, ring)]));
});

afterAll(async () => {
  if (!embedded) return;
  await db?.drop();
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  await admin.query(`alter system reset ssl`);
  await admin.query(`select pg_reload_conf()`);
  await admin.end();
});

describe.skipIf(!embedded)('TLS to the database', () => {
  it('verify-full with the right CA: setup and run work, every pg-rekey connection (replication too) is encrypted', async () => {
    const url = `${db.url}?sslmode=verify-full&sslrootcert=${encodeURIComponent(path.join(certDir, 'ca.pem'))}`;
    const files = writeDaemonFiles(url, [{ name: 'notes', columns: ['body'] }]);
    const setup = await cli(files, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
    const run = spawnCli(['run', ...files.args]);
    await run.waitForLine(/"msg":"streaming"/);
    const r = await db.pool.query(
      `select a.application_name, s.ssl from pg_stat_activity a join pg_stat_ssl s using (pid)
        where a.datname = current_database() and a.application_name like 'pg-rekey%'`,
    );
    expect(r.rows.length).toBeGreaterThanOrEqual(2);
    expect(r.rows.every((x) => x.ssl)).toBe(true);
    expect(r.rows.map((x) => x.application_name)).toContain('pg-rekey-stream');
    expect((await run.stop('SIGTERM')).code).toBe(0);
    expect((await cli(files, 'teardown', '--force')).code).toBe(0);
  });

  it('an untrusted server certificate is refused with exit 3 and a hint', async () => {
    const url = `${db.url}?sslmode=verify-full&sslrootcert=${encodeURIComponent(path.join(certDir, 'other-ca.pem'))}`;
    const files = writeDaemonFiles(url, [{ name: 'notes', columns: ['body'] }]);
    const r = await cli(files, 'status');
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/cannot connect to PostgreSQL.*(certificate|self.signed|verify)/i);
    // What node-postgres reads: sslmode and sslrootcert in the connection string (not PGSSLROOTCERT).
    expect(r.stderr).toMatch(/^hint: give the TLS mode and the CA that signed the server certificate in the connection string: postgres:\/\/user@host\/db\?sslmode=verify-full&sslrootcert=\/path\/ca\.pem \(.*PGSSLROOTCERT is not read\)/m);
  });
});
