// A small TCP proxy between pg-rekey and PostgreSQL for failure tests: it listens on 127.0.0.1
// only, forwards to a loopback target, and can refuse, reset, or cut connections on demand, at
// random intervals, or at a chosen point of a transaction (just before its COMMIT reaches the
// server, or just after, with the server's answer lost). It reads the client's StartupMessage to
// tell replication connections from ordinary ones, so a test can check that both kinds were cut,
// and `run`'s lease connection (application_name pg-rekey-lease) from both: cutting it stops the
// daemon by design (exit 3), so random cuts of 'sql' connections leave it alone.
import net from 'node:net';

export type ProxyMode = 'forward' | 'reset';
export type ConnectionKind = 'replication' | 'sql' | 'lease' | 'unknown';

export interface ProxyStats {
  accepted: number;
  /** Connections reset at accept time (mode 'reset') or refused above maxConnections. */
  refused: number;
  /** Connections cut while open, by kind (at random or on demand). */
  cut: Record<ConnectionKind, number>;
  open: number;
}

/**
 * Cut a connection in a transaction that sent `marker` (a piece of SQL text), at its COMMIT:
 * 'before-commit' drops the COMMIT (the server rolls the work back), 'after-commit' lets it
 * through and drops the server's answer (the work is committed, the client sees a broken
 * connection and cannot know).
 */
export interface CutRule {
  marker: string;
  when: 'before-commit' | 'after-commit';
  /** How many transactions to cut; the rule is spent after that. */
  times: number;
  /** Cut one in `every` matching transactions (the others go through). */
  every: number;
  /** Matching transactions seen, and how many were cut so far. */
  seen: number;
  fired: number;
}

export interface ChaosOptions {
  /** Pause between two cuts, drawn uniformly from [minMs, maxMs]. */
  minMs: number;
  maxMs: number;
  /** Each open connection is cut with this probability at a cut (default 1: all of them). */
  probability?: number;
  /** Only connections of this kind (default: any). */
  kind?: ConnectionKind;
  rand: () => number;
}

export interface TcpProxy {
  port: number;
  /** `url` with its host and port replaced by the proxy's. */
  urlFor(url: string): string;
  setMode(mode: ProxyMode): void;
  /** Cuts open connections now (optionally only those of one kind); returns how many. */
  cut(kind?: ConnectionKind): number;
  /** Cuts connections at random intervals until stopChaos(). */
  startChaos(o: ChaosOptions): void;
  stopChaos(): void;
  /** Arms a CutRule; the returned object's `fired` counts the cuts. */
  cutAtCommit(marker: string, when: CutRule['when'], times: number, every?: number): CutRule;
  readonly stats: ProxyStats;
  close(): Promise<void>;
}

interface Pair {
  client: net.Socket;
  upstream: net.Socket;
  kind: ConnectionKind;
  /** The rule whose marker this connection sent in its current transaction. */
  armed: CutRule | null;
}

/** A simple-protocol Query message holding exactly `sql` (what pg sends for client.query('commit')). */
function queryMessage(sql: string): Buffer {
  const body = Buffer.from(`${sql}\0`, 'latin1');
  const head = Buffer.alloc(5);
  head.write('Q', 0, 'latin1');
  head.writeInt32BE(4 + body.length, 1);
  return Buffer.concat([head, body]);
}
const COMMIT = queryMessage('commit');
const ROLLBACK = queryMessage('rollback');

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);

export { freePort } from './cluster.js';

/** Reads the parameters of a PostgreSQL StartupMessage (protocol 3.0); null while incomplete or not one. */
function startupKind(buf: Buffer): ConnectionKind | null {
  if (buf.length < 8) return null;
  const len = buf.readInt32BE(0);
  if (len < 8 || len > 10_000) return 'unknown';
  if (buf.length < len) return null;
  if (buf.readInt32BE(4) !== 196608) return 'unknown'; // SSLRequest, GSSENCRequest, CancelRequest
  const parts = buf.subarray(8, len).toString('latin1').split('\0');
  let kind: ConnectionKind = 'sql';
  for (let i = 0; i + 1 < parts.length; i += 2) {
    if (parts[i] === 'replication') return 'replication';
    if (parts[i] === 'application_name' && parts[i + 1] === 'pg-rekey-lease') kind = 'lease';
  }
  return kind;
}

export async function startTcpProxy(o: { target: string; port?: number; maxConnections?: number; mode?: ProxyMode }): Promise<TcpProxy> {
  const target = new URL(o.target);
  if (!LOOPBACK.has(target.hostname)) throw new Error(`tcp-proxy forwards to loopback targets only, not ${target.hostname}`);
  const targetPort = Number(target.port || 5432);
  const maxConnections = o.maxConnections ?? 64;
  let mode: ProxyMode = o.mode ?? 'forward';
  const pairs = new Set<Pair>();
  const stats: ProxyStats = { accepted: 0, refused: 0, cut: { replication: 0, sql: 0, lease: 0, unknown: 0 }, open: 0 };
  let chaosTimer: NodeJS.Timeout | null = null;
  const rules: CutRule[] = [];

  const drop = (p: Pair): void => {
    if (!pairs.delete(p)) return;
    stats.open = pairs.size;
    p.client.destroy();
    p.upstream.destroy();
  };

  const server = net.createServer((client) => {
    stats.accepted++;
    if (mode === 'reset' || pairs.size >= maxConnections) {
      stats.refused++;
      client.on('error', () => undefined);
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(targetPort, target.hostname === 'localhost' ? '127.0.0.1' : target.hostname);
    const pair: Pair = { client, upstream, kind: 'unknown', armed: null };
    pairs.add(pair);
    stats.open = pairs.size;
    let head = Buffer.alloc(0);
    let sniffing = true;
    // Client to server by hand, to look at what goes through; server to client is a plain pipe.
    client.on('data', (chunk: Buffer) => {
      if (sniffing) {
        head = Buffer.concat([head, chunk]);
        const kind = startupKind(head);
        if (kind !== null || head.length >= 10_000) {
          pair.kind = kind ?? 'unknown';
          sniffing = false;
        }
      }
      if (!sniffing && atCommit(pair, chunk)) return;
      if (!upstream.write(chunk)) {
        client.pause();
        upstream.once('drain', () => client.resume());
      }
    });
    client.on('end', () => upstream.end());
    upstream.pipe(client);
    for (const s of [client, upstream]) {
      s.on('error', () => drop(pair));
      s.on('close', () => drop(pair));
    }
  });
  /** Applies the armed rules to a chunk from the client; true when the chunk must not be forwarded. */
  const atCommit = (p: Pair, chunk: Buffer): boolean => {
    if (!p.armed) {
      const text = chunk.toString('latin1');
      p.armed = rules.find((r) => r.fired < r.times && text.includes(r.marker)) ?? null;
      if (!p.armed) return false;
    }
    if (chunk.includes(ROLLBACK)) {
      p.armed = null;
      return false;
    }
    if (!chunk.includes(COMMIT)) return false;
    const rule = p.armed;
    p.armed = null;
    if (rule.fired >= rule.times || ++rule.seen % rule.every !== 0) return false;
    rule.fired++;
    pairs.delete(p);
    stats.open = pairs.size;
    p.client.resetAndDestroy();
    if (rule.when === 'before-commit') p.upstream.resetAndDestroy();
    else p.upstream.end(chunk); // the server reads the COMMIT, commits, then sees the connection end
    return true;
  };

  server.maxConnections = maxConnections + 8; // beyond that the kernel-level accept is refused too
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;

  const cut = (kind?: ConnectionKind, probability = 1, rand: () => number = Math.random): number => {
    let n = 0;
    for (const p of [...pairs]) {
      if (kind && p.kind !== kind) continue;
      if (probability < 1 && rand() >= probability) continue;
      stats.cut[p.kind]++;
      n++;
      // An RST, as a broken network or a killed middlebox would leave it.
      p.client.resetAndDestroy();
      p.upstream.resetAndDestroy();
      drop(p);
    }
    return n;
  };

  return {
    port,
    urlFor(url: string) {
      const u = new URL(url);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    setMode(m) {
      mode = m;
    },
    cut: (kind) => cut(kind),
    startChaos(c) {
      if (chaosTimer) clearTimeout(chaosTimer);
      const schedule = (): void => {
        chaosTimer = setTimeout(() => {
          cut(c.kind, c.probability ?? 1, c.rand);
          schedule();
        }, c.minMs + Math.floor(c.rand() * (c.maxMs - c.minMs)));
      };
      schedule();
    },
    stopChaos() {
      if (chaosTimer) clearTimeout(chaosTimer);
      chaosTimer = null;
    },
    cutAtCommit(marker, when, times, every = 1) {
      const rule: CutRule = { marker, when, times, every, seen: 0, fired: 0 };
      rules.push(rule);
      return rule;
    },
    stats,
    async close() {
      if (chaosTimer) clearTimeout(chaosTimer);
      chaosTimer = null;
      for (const p of [...pairs]) drop(p);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
