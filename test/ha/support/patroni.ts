// A real HA cluster for the HA test: a single-node etcd and two Patroni nodes running Debian's
// PostgreSQL 15 (packages patroni, etcd-server, postgresql-15), with a permanent logical slot for
// pg-rekey in Patroni's dynamic configuration. Everything lives in one temporary directory, listens
// on 127.0.0.1 on free ports, runs as OS user postgres when the test runs as root, and is torn down
// by stop() or, if the test process dies first, by ha-watchdog.mjs.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { stringify } from 'yaml';
import { freePort, runAsIds } from '../../support/cluster.js';

export const PG_BIN = '/usr/lib/postgresql/15/bin';
const watchdogScript = fileURLToPath(new URL('./ha-watchdog.mjs', import.meta.url));

/** Which binaries the cluster needs; a message naming the missing Debian packages, or null. */
export function missingTools(): string | null {
  const need: [string, string][] = [
    ['/usr/bin/patroni', 'patroni'],
    ['/usr/bin/patronictl', 'patroni'],
    ['/usr/bin/etcd', 'etcd-server'],
    [`${PG_BIN}/postgres`, 'postgresql-15'],
  ];
  const missing = [...new Set(need.filter(([file]) => !existsSync(file)).map(([, pkg]) => pkg))];
  return missing.length ? `missing Debian package(s): ${missing.join(', ')} (apt-get install ${missing.join(' ')}; .ci/run does)` : null;
}

export interface PatroniNode {
  name: string;
  pgPort: number;
  restPort: number;
  dir: string;
  dataDir: string;
  configPath: string;
  /** The Patroni process (it may be replaced by restart()). */
  proc: ChildProcess;
}

export interface Member {
  name: string;
  role: string;
  state: string;
  timeline?: number;
  lag?: number | string;
}

export interface PatroniCluster {
  scope: string;
  nodes: PatroniNode[];
  /** Superuser name and password (md5 over TCP). */
  user: string;
  password: string;
  /** A single-node URL as the superuser. */
  url(node: PatroniNode, database?: string): string;
  /** The libpq multi-host URL over both nodes, read-write session wanted. */
  multiHostUrl(database: string): string;
  /** Members as Patroni's REST API (/cluster) reports them, asked of any node that answers. */
  members(): Promise<Member[]>;
  /** The current leader: Patroni says so and its PostgreSQL is not in recovery. Fails if there is none. */
  leader(): Promise<PatroniNode>;
  /**
   * Waits (bounded) until there is a leader that accepts writes (other than `notLeader`, if given)
   * and every other node is a replica streaming from it; returns the leader.
   */
  waitForHealthy(opts?: { notLeader?: string; timeoutMs?: number }): Promise<PatroniNode>;
  /**
   * Waits until Patroni on every replica has logged that its copy of the permanent logical slot
   * is safe to use after a failover (a line after `since`, a Date.now()) and the copy exists.
   */
  waitForSlotReady(slot: string, since: number, timeoutMs?: number): Promise<PatroniNode[]>;
  /** Waits until a node other than `old` leads and accepts writes (the other node may still be down). */
  waitForNewLeader(old: string, timeoutMs?: number): Promise<PatroniNode>;
  /** `patronictl switchover --leader <leader> --candidate <other> --force`; waits for the new leader. */
  switchover(): Promise<{ from: PatroniNode; to: PatroniNode; output: string }>;
  /** kill -9 of the leader's postmaster (read from postmaster.pid). */
  killPrimaryPostmaster(): Promise<{ node: PatroniNode; pid: number }>;
  /**
   * Adds a permanent logical slot to the dynamic configuration (`patronictl edit-config`): an
   * existing slot of that name, database and plugin on the primary is kept as it is (created if missing).
   */
  addPermanentSlot(slot: string, database: string): Promise<string>;
  /** `patronictl <args>` with this cluster's configuration. */
  patronictl(...args: string[]): Promise<string>;
  /** The last 256 KiB of a node's Patroni (and PostgreSQL) output, or etcd's. */
  log(name: string): string;
  /** The tail of every process's output (for a failed test's report). */
  dumpLogs(tailChars?: number): string;
  /** Every process stopped, the directory removed. Idempotent. */
  stop(): Promise<void>;
}

export interface PatroniOptions {
  /** The database pg-rekey works in: the permanent slot's database (created by the test). */
  database: string;
  /** The permanent logical slot's name (pg-rekey's replication.slot); omit for none. */
  slot?: string;
  /**
   * Slots Patroni must leave alone on the primary (it drops every slot it does not know while it
   * is inactive): pg-rekey's, between `pg-rekey setup` and addPermanentSlot().
   */
  ignoreSlots?: string[];
  /** Extra PostgreSQL parameters for the dynamic configuration. */
  parameters?: Record<string, string | number>;
}

/** Polls `fn` until it returns a value, or fails after timeoutMs naming `what` (and the last error). */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs: number, pollMs = 250): Promise<T> {
  const start = Date.now();
  let lastError: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== null && v !== false) return v;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() - start > timeoutMs) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${(lastError as Error).message})` : ''}`);
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

async function getJson(port: number, route: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`http://127.0.0.1:${port}${route}`, { signal: AbortSignal.timeout(2_000) });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body };
}

async function queryOne<T>(url: string, sql: string): Promise<T | undefined> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000, query_timeout: 5_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    return (await client.query(sql)).rows[0] as T | undefined;
  } finally {
    await client.end().catch(() => undefined);
  }
}

function alive(proc: ChildProcess): boolean {
  return proc.exitCode === null && proc.signalCode === null;
}

export async function startPatroniCluster(opts: PatroniOptions): Promise<PatroniCluster> {
  const missing = missingTools();
  if (missing) throw new Error(missing);
  const ids = runAsIds();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-patroni-'));
  const own = (p: string) => ids && chownSync(p, ids.uid, ids.gid);
  own(dir);
  writeFileSync(path.join(dir, 'pids'), '');

  // Armed first: whatever starts below is listed in dir/pids and torn down if this process dies.
  const watchdog = spawn(process.execPath, [watchdogScript, dir], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
  watchdog.unref();
  (watchdog.stdin as Socket).unref();

  const logs = new Map<string, string>();
  // Patroni's "Logical slot X is safe to be used after a failover" lines, per node, with when they arrived.
  const readyLines = new Map<string, { slot: string; at: number }[]>();
  const note = (name: string) => (chunk: Buffer) => {
    const text = chunk.toString();
    logs.set(name, ((logs.get(name) ?? '') + text).slice(-262_144));
    for (const m of text.matchAll(/Logical slot (\S+) is safe to be used after a failover/g)) {
      readyLines.set(name, [...(readyLines.get(name) ?? []), { slot: m[1]!, at: Date.now() }]);
    }
  };
  const env = { PATH: `${PG_BIN}:/usr/sbin:/usr/bin:/sbin:/bin`, LC_ALL: 'C.UTF-8', LANG: 'C.UTF-8', HOME: dir, PYTHONUNBUFFERED: '1' };
  const procs: ChildProcess[] = [];
  const launch = (name: string, cmd: string, args: string[]): ChildProcess => {
    const proc = spawn(cmd, args, { cwd: dir, env, ...ids, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    if (proc.pid === undefined) throw new Error(`could not start ${cmd}`);
    appendFileSync(path.join(dir, 'pids'), `${proc.pid}\n`);
    proc.stdout!.on('data', note(name));
    proc.stderr!.on('data', note(name));
    proc.on('exit', (code, signal) => note(name)(Buffer.from(`\n[${name} exited: ${code ?? signal}]\n`)));
    procs.push(proc);
    return proc;
  };

  const user = 'postgres';
  const password = 'patroni-test-pw';
  const scope = `pgrekey${process.pid}`;
  let nodes: PatroniNode[] = [];
  let stopped = false;

  async function stopAll(): Promise<void> {
    if (stopped) return;
    stopped = true;
    // Patroni stops its PostgreSQL on SIGTERM (fast shutdown) and then exits; etcd last, which they need meanwhile.
    const patronis = nodes.map((n) => n.proc).filter(alive);
    for (const p of patronis) p.kill('SIGTERM');
    const deadline = Date.now() + 30_000;
    while (patronis.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    for (const p of procs.filter(alive)) p.kill('SIGKILL');
    // A postmaster left behind (Patroni was killed, or a crash): by its postmaster.pid.
    for (const n of nodes) {
      const pid = postmasterPid(n);
      if (pid) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    }
    const end = Date.now() + 10_000;
    while (procs.some(alive) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
    watchdog.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }

  function postmasterPid(n: PatroniNode): number | null {
    try {
      const pid = Number(readFileSync(path.join(n.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      if (!(pid > 0)) return null;
      process.kill(pid, 0);
      return pid;
    } catch {
      return null;
    }
  }

  try {
    // etcd: one member, v3 API (Patroni's etcd3 DCS talks to its gRPC gateway over HTTP).
    const etcdClient = await freePort();
    const etcdPeer = await freePort();
    const etcdDir = path.join(dir, 'etcd');
    mkdirSync(etcdDir, { mode: 0o700 });
    own(etcdDir);
    const etcd = launch('etcd', '/usr/bin/etcd', [
      '--name', 'etcd0',
      '--data-dir', etcdDir,
      '--listen-client-urls', `http://127.0.0.1:${etcdClient}`,
      '--advertise-client-urls', `http://127.0.0.1:${etcdClient}`,
      '--listen-peer-urls', `http://127.0.0.1:${etcdPeer}`,
      '--initial-advertise-peer-urls', `http://127.0.0.1:${etcdPeer}`,
      '--initial-cluster', `etcd0=http://127.0.0.1:${etcdPeer}`,
      '--initial-cluster-state', 'new',
      '--log-level', 'warn',
    ]);
    await waitFor(
      `etcd to answer on 127.0.0.1:${etcdClient}/health`,
      async () => {
        if (!alive(etcd)) throw new Error(`etcd exited:\n${logs.get('etcd') ?? ''}`);
        const r = await getJson(etcdClient, '/health');
        return r.status === 200 && (r.body as { health?: string }).health === 'true';
      },
      30_000,
    );

    for (const name of ['node1', 'node2']) {
      const nodeDir = path.join(dir, name);
      mkdirSync(nodeDir, { mode: 0o700 });
      own(nodeDir);
      const pgPort = await freePort();
      const restPort = await freePort();
      const dataDir = path.join(nodeDir, 'data');
      const configPath = path.join(nodeDir, 'patroni.yml');
      writeFileSync(configPath, stringify(patroniConfig({ scope, name, nodeDir, dataDir, pgPort, restPort, etcdClient, user, password, ...opts })));
      own(configPath);
      nodes.push({ name, pgPort, restPort, dir: nodeDir, dataDir, configPath, proc: undefined as unknown as ChildProcess });
    }
    // node1 first, so that it bootstraps the cluster (initdb) and node2 clones it.
    nodes[0]!.proc = launch('node1', '/usr/bin/patroni', [nodes[0]!.configPath]);
    await waitFor(
      'node1 to bootstrap the cluster and lead it',
      async () => {
        if (!alive(nodes[0]!.proc)) throw new Error(`patroni node1 exited:\n${logs.get('node1') ?? ''}`);
        const r = await getJson(nodes[0]!.restPort, '/primary');
        return r.status === 200;
      },
      90_000,
      500,
    );
    nodes[1]!.proc = launch('node2', '/usr/bin/patroni', [nodes[1]!.configPath]);
  } catch (e) {
    await stopAll();
    throw e;
  }

  const url = (node: PatroniNode, database = 'postgres') => `postgres://${user}:${password}@127.0.0.1:${node.pgPort}/${database}`;

  async function members(): Promise<Member[]> {
    let last: unknown;
    for (const n of nodes) {
      try {
        const r = await getJson(n.restPort, '/cluster');
        if (r.status === 200) return (r.body as { members: Member[] }).members;
      } catch (e) {
        last = e;
      }
    }
    throw new Error(`no Patroni REST API answered /cluster: ${String(last)}`);
  }

  /** The node that Patroni names leader and whose PostgreSQL accepts writes, if any. */
  async function writableLeader(): Promise<PatroniNode | undefined> {
    const leaderName = (await members()).find((m) => m.role === 'leader' && m.state === 'running')?.name;
    const node = nodes.find((n) => n.name === leaderName);
    if (!node) return undefined;
    const r = await queryOne<{ ro: boolean }>(url(node), 'select pg_is_in_recovery() as ro');
    return r && !r.ro ? node : undefined;
  }

  async function streamingFrom(leader: PatroniNode, replica: PatroniNode): Promise<boolean> {
    const r = await queryOne<{ status: string | null; port: string | null }>(
      url(replica),
      `select status, (regexp_match(conninfo, 'port=(\\d+)'))[1] as port from pg_stat_wal_receiver`,
    );
    return r?.status === 'streaming' && Number(r.port) === leader.pgPort;
  }

  async function waitForHealthy(o: { notLeader?: string; timeoutMs?: number } = {}): Promise<PatroniNode> {
    return waitFor(
      `a Patroni leader${o.notLeader ? ` other than ${o.notLeader}` : ''} accepting writes, and every other node Patroni's running ` +
        'synchronous standby (so that a failover to it is possible) and streaming from the leader',
      async () => {
        const leader = await writableLeader();
        if (!leader || leader.name === o.notLeader) return undefined;
        const view = await members();
        for (const n of nodes) {
          if (n === leader) continue;
          const m = view.find((x) => x.name === n.name);
          if (m?.role !== 'sync_standby' || m.state !== 'running') return undefined;
          if (!(await streamingFrom(leader, n))) return undefined;
        }
        return leader;
      },
      o.timeoutMs ?? 120_000,
      500,
    );
  }

  async function waitForSlotReady(slot: string, since: number, timeoutMs = 60_000): Promise<PatroniNode[]> {
    return waitFor(
      `Patroni on every replica to log "Logical slot ${slot} is safe to be used after a failover" (after ${new Date(since).toISOString()}) and the slot to exist there`,
      async () => {
        const leader = await writableLeader();
        if (!leader) return undefined;
        const replicas = nodes.filter((n) => n !== leader);
        for (const n of replicas) {
          if (!(readyLines.get(n.name) ?? []).some((r) => r.slot === slot && r.at >= since)) return undefined;
          const r = await queryOne<{ n: number }>(url(n), `select count(*)::int as n from pg_replication_slots where slot_name = '${slot}'`);
          if (r?.n !== 1) return undefined;
        }
        return replicas;
      },
      timeoutMs,
      500,
    );
  }

  async function waitForNewLeader(old: string, timeoutMs = 90_000): Promise<PatroniNode> {
    return waitFor(
      `a Patroni leader other than ${old} accepting writes`,
      async () => {
        const leader = await writableLeader();
        return leader && leader.name !== old ? leader : undefined;
      },
      timeoutMs,
      250,
    );
  }

  function patronictl(...args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile('/usr/bin/patronictl', ['-c', nodes[0]!.configPath, ...args], { env, cwd: dir, timeout: 60_000 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`patronictl ${args.join(' ')} failed: ${err.message}\n${stdout}${stderr}`));
        else resolve(stdout + stderr);
      });
    });
  }

  async function leader(): Promise<PatroniNode> {
    const l = await writableLeader();
    if (!l) throw new Error(`no Patroni leader accepts writes; members: ${JSON.stringify(await members().catch((e) => String(e)))}`);
    return l;
  }

  return {
    scope,
    nodes,
    user,
    password,
    url,
    multiHostUrl: (database) =>
      `postgres://${user}:${password}@${nodes.map((n) => `127.0.0.1:${n.pgPort}`).join(',')}/${database}?target_session_attrs=read-write`,
    members,
    leader,
    waitForHealthy,
    waitForSlotReady,
    waitForNewLeader,
    patronictl,
    addPermanentSlot: (slot, database) =>
      patronictl('edit-config', scope, '--force', '-s', `slots.${slot}.type=logical`, '-s', `slots.${slot}.database=${database}`, '-s', `slots.${slot}.plugin=pgoutput`),
    async switchover() {
      const from = await leader();
      const to = nodes.find((n) => n !== from)!;
      // Patroni in synchronous_mode only switches over to the synchronous standby; on a busy machine
      // its loop can drop that status for a moment (seen: "Updating synchronous privilege temporarily
      // ... to []" just as the request came in), and the request is then dropped without an error.
      // So: wait for a healthy pair, ask, and ask again (at most 3 times) if no new leader came.
      const outputs: string[] = [];
      for (let attempt = 1; ; attempt++) {
        await waitForHealthy({ timeoutMs: 60_000 });
        outputs.push(await patronictl('switchover', scope, '--leader', from.name, '--candidate', to.name, '--force').catch((e: Error) => `attempt ${attempt}: ${e.message}`));
        try {
          await waitForNewLeader(from.name, attempt < 3 ? 30_000 : 60_000);
          return { from, to, output: outputs.join('\n') };
        } catch (e) {
          if (attempt >= 3) throw new Error(`${(e as Error).message}; patronictl switchover said:\n${outputs.join('\n')}`);
        }
      }
    },
    async killPrimaryPostmaster() {
      const node = await leader();
      const pid = postmasterPid(node);
      if (!pid) throw new Error(`no running postmaster in ${node.dataDir}`);
      process.kill(pid, 'SIGKILL');
      return { node, pid };
    },
    log: (name) => logs.get(name) ?? '',
    dumpLogs: (tailChars = 12_000) => [...logs.entries()].map(([name, text]) => `===== ${name} (last ${tailChars} chars) =====\n${text.slice(-tailChars)}`).join('\n'),
    stop: stopAll,
  };
}

function patroniConfig(o: PatroniOptions & {
  scope: string;
  name: string;
  nodeDir: string;
  dataDir: string;
  pgPort: number;
  restPort: number;
  etcdClient: number;
  user: string;
  password: string;
}): unknown {
  return {
    scope: o.scope,
    name: o.name,
    log: { level: 'INFO' },
    restapi: { listen: `127.0.0.1:${o.restPort}`, connect_address: `127.0.0.1:${o.restPort}` },
    etcd3: { hosts: [`127.0.0.1:${o.etcdClient}`] },
    bootstrap: {
      dcs: {
        // Short loop so that the test does not wait long: loop_wait + 2 * retry_timeout <= ttl.
        ttl: 20,
        loop_wait: 2,
        retry_timeout: 5,
        maximum_lag_on_failover: 16 * 1024 * 1024,
        // A crashed primary fails over at once instead of being restarted in place.
        primary_start_timeout: 0,
        // An acknowledged commit is on the standby before the client hears of it: a failover loses none.
        synchronous_mode: true,
        postgresql: {
          use_pg_rewind: true,
          use_slots: true,
          parameters: {
            wal_level: 'logical',
            hot_standby: 'on',
            hot_standby_feedback: 'on',
            wal_log_hints: 'on',
            max_replication_slots: 10,
            max_wal_senders: 10,
            max_connections: 100,
            max_prepared_transactions: 0,
            shared_buffers: '64MB',
            fsync: 'off',
            full_page_writes: 'on',
            ...o.parameters,
          },
        },
        // Patroni keeps this logical slot on the primary (creating it if missing) and copies it to
        // the replicas, advancing their copies to the primary's confirmed_flush_lsn: it survives a
        // switchover or failover (PostgreSQL 15 has no failover slots of its own).
        ...(o.ignoreSlots?.length ? { ignore_slots: o.ignoreSlots.map((name) => ({ name, type: 'logical' })) } : {}),
        ...(o.slot ? { slots: { [o.slot]: { type: 'logical', database: o.database, plugin: 'pgoutput' } } } : {}),
      },
      initdb: [{ encoding: 'UTF8' }, { locale: 'C' }],
    },
    postgresql: {
      listen: `127.0.0.1:${o.pgPort}`,
      connect_address: `127.0.0.1:${o.pgPort}`,
      data_dir: o.dataDir,
      bin_dir: PG_BIN,
      pgpass: path.join(o.nodeDir, 'pgpass'),
      authentication: {
        superuser: { username: o.user, password: o.password },
        replication: { username: 'replicator', password: o.password },
      },
      parameters: { unix_socket_directories: o.nodeDir },
      pg_hba: ['local all all trust', 'host replication replicator 127.0.0.1/32 md5', 'host all all 127.0.0.1/32 md5'],
    },
    tags: { nofailover: false, noloadbalance: false, clonefrom: false, nosync: false },
  };
}
