// The application's way to the primary, as Patroni deployments usually give it one (HAProxy with
// an HTTP check of Patroni's REST API): a TCP listener on 127.0.0.1 that sends every new
// connection to the node whose REST API answers 200 on /primary. Connections already open stay
// with their server; PostgreSQL ends them when that server is demoted or dies.
import net from 'node:net';

export interface LeaderProxy {
  port: number;
  /** `url` with its host and port replaced by the proxy's. */
  urlFor(url: string): string;
  /** Connections routed per PostgreSQL port, and refused for want of a primary. */
  readonly routed: Map<number, number>;
  readonly refused: number;
  close(): Promise<void>;
}

async function isPrimary(restPort: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${restPort}/primary`, { signal: AbortSignal.timeout(1_000) });
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}

export async function startLeaderProxy(nodes: { pgPort: number; restPort: number }[]): Promise<LeaderProxy> {
  const sockets = new Set<net.Socket>();
  const routed = new Map<number, number>();
  let refused = 0;
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    client.pause();
    void (async () => {
      let target: number | undefined;
      for (const n of nodes) {
        if (await isPrimary(n.restPort)) {
          target = n.pgPort;
          break;
        }
      }
      if (target === undefined || client.destroyed) {
        refused++;
        client.destroy();
        return;
      }
      routed.set(target, (routed.get(target) ?? 0) + 1);
      const upstream = net.connect(target, '127.0.0.1');
      sockets.add(upstream);
      upstream.on('close', () => {
        sockets.delete(upstream);
        client.destroy();
      });
      upstream.on('error', () => client.destroy());
      client.on('close', () => upstream.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    urlFor(url) {
      const u = new URL(url);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    routed,
    get refused() {
      return refused;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
