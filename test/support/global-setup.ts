// Provides one PostgreSQL server per integration run. Backend order: DATABASE_URL, Docker (testcontainers), embedded binaries.
import http from 'node:http';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { parseMajor, startCluster, type PgMajor } from './cluster.js';

declare module 'vitest' {
  export interface ProvidedContext {
    pgAdminUrl: string;
    pgMajor: number;
    /** 'embedded binaries' | 'DATABASE_URL' | 'testcontainers ...': tests that touch the server's files need the first. */
    pgBackend: string;
  }
}

interface Backend {
  name: string;
  url: string;
  stop(): Promise<void>;
}

async function queryOne(url: string, sql: string): Promise<string> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ value: string }>(sql);
    return rows[0]?.value ?? '';
  } finally {
    await client.end();
  }
}

// GET /_ping on the Docker API (DOCKER_HOST unix:// or tcp://, else /var/run/docker.sock); false on any error or after 1s.
function dockerAnswers(): Promise<boolean> {
  const host = process.env.DOCKER_HOST ?? 'unix:///var/run/docker.sock';
  let target: http.RequestOptions;
  if (host.startsWith('unix://')) target = { socketPath: host.slice('unix://'.length) };
  else if (host.startsWith('tcp://')) {
    const u = new URL(host.replace(/^tcp:/, 'http:'));
    target = { host: u.hostname, port: Number(u.port || 2375) };
  } else return Promise.resolve(false);
  return new Promise((resolve) => {
    const req = http.get({ ...target, path: '/_ping', timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

async function dockerBackend(major: PgMajor): Promise<Backend> {
  // Pinned to testcontainers 11: 12.x pulls undici 8, which throws at import time on Node < 22.22.
  // Imported lazily, only once a Docker engine has answered.
  const { PostgreSqlContainer } = await import('@testcontainers/postgresql');
  const container = await new PostgreSqlContainer(`postgres:${major}-alpine`)
    .withUsername('postgres')
    .withDatabase('postgres')
    .withCommand(['postgres', '-c', 'wal_level=logical', '-c', 'max_replication_slots=32', '-c', 'max_wal_senders=32', '-c', 'max_prepared_transactions=20'])
    .start();
  return {
    name: `testcontainers postgres:${major}-alpine`,
    url: container.getConnectionUri(),
    stop: async () => {
      await container.stop();
    },
  };
}

async function selectBackend(major: PgMajor): Promise<Backend> {
  const databaseUrl = process.env.DATABASE_URL;
  if (databaseUrl) {
    const walLevel = await queryOne(databaseUrl, `select current_setting('wal_level') as value`);
    if (walLevel !== 'logical') {
      throw new Error(
        `DATABASE_URL points at a server with wal_level=${walLevel}; the integration tests need logical decoding. ` +
          `Run "ALTER SYSTEM SET wal_level = logical" and restart that server, or unset DATABASE_URL to use a throwaway cluster.`,
      );
    }
    return { name: 'DATABASE_URL', url: databaseUrl, stop: async () => undefined };
  }
  if (await dockerAnswers()) {
    try {
      return await dockerBackend(major);
    } catch (err) {
      console.warn(
        `[pg-rekey tests] Docker answers but testcontainers failed: ${String(err)}; using embedded binaries`,
      );
    }
  }
  const cluster = await startCluster(major);
  return { name: 'embedded binaries', url: cluster.url, stop: () => cluster.stop() };
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const requested = parseMajor(process.env.PG_REKEY_TEST_PG_MAJOR);
  const backend = await selectBackend(requested);
  const version = await queryOne(backend.url, `select current_setting('server_version') as value`);
  const serverMajor = Number.parseInt(version, 10);
  if (backend.name !== 'DATABASE_URL' && serverMajor !== requested) {
    await backend.stop();
    throw new Error(`expected PostgreSQL ${requested} from ${backend.name}, got ${version}`);
  }
  console.log(`[pg-rekey tests] PostgreSQL ${version} via ${backend.name}`);
  project.provide('pgAdminUrl', backend.url);
  project.provide('pgMajor', serverMajor);
  project.provide('pgBackend', backend.name);
  return backend.stop;
}
