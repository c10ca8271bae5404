import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ConfigError } from '../errors.js';
import type { Metrics } from '../metrics.js';

export interface Health {
  /** Ready = streaming from the slot (the daemon is doing its job). */
  ready(): { ok: boolean; reason: string };
}

/**
 * The status page's headers: no script may run and nothing is loaded from elsewhere, even if a
 * name on the page were not escaped (the page has inline CSS only).
 */
const PAGE_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'cache-control': 'no-store',
};

/**
 * /: the status page (HTML, status-page.ts). /healthz: the process answers (liveness).
 * /readyz: the stream is connected (readiness; a standby answers 503, role standby). /metrics: Prometheus text format.
 */
export async function startHttp(host: string, port: number, metrics: Metrics, health: Health, page: () => Promise<string>): Promise<{ server: Server; port: number }> {
  const e = await HttpEndpoint.listen(host, port, { metrics, health, page });
  return { server: e.server, port: e.port };
}

/**
 * The daemon's endpoint: a standby's (run --standby), served from now on, or a new one. A port in
 * use (or not ours to take) is a configuration error that names the setting.
 */
export async function listenForDaemon(host: string, port: number, routes: Routes, standby?: HttpEndpoint): Promise<{ server: Server; port: number }> {
  if (standby) {
    standby.serve(routes);
    return standby;
  }
  try {
    return await startHttp(host, port, routes.metrics, routes.health, routes.page);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const fix = 'set daemon.http_port in the config (or PG_REKEY_DAEMON_HTTP_PORT) to a free port, or 0 to pick one (logged at start)';
    if (code === 'EADDRINUSE') {
      throw new ConfigError(`cannot listen on ${host}:${port} for /healthz /readyz /metrics: port ${port} is already in use (another pg-rekey run, for another slot? another service?)`, fix);
    }
    if (code === 'EACCES') throw new ConfigError(`cannot listen on ${host}:${port}: permission denied (ports below 1024 need privileges)`, fix);
    if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') {
      throw new ConfigError(`cannot listen on ${host}:${port}: ${host} is not an address of this host`, 'set daemon.http_host (or PG_REKEY_DAEMON_HTTP_HOST) to an address of this host, e.g. 127.0.0.1 or 0.0.0.0');
    }
    throw e;
  }
}

/** What the endpoint serves: a standby's view until it leads, then the daemon's. */
export interface Routes {
  metrics: Metrics;
  health: Health;
  page: () => Promise<string>;
}

/** One HTTP endpoint for the life of the process; `serve` switches what it serves (standby, then leader). */
export class HttpEndpoint {
  private constructor(
    readonly server: Server,
    readonly port: number,
    private routes: Routes,
  ) {}

  serve(routes: Routes): void {
    this.routes = routes;
  }

  static async listen(host: string, port: number, routes: Routes): Promise<HttpEndpoint> {
    let endpoint: HttpEndpoint | null = null;
    const server = createServer((req, res) => void handle(endpoint?.routes ?? routes, req.url ?? '/', res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    endpoint = new HttpEndpoint(server, (server.address() as AddressInfo).port, routes);
    return endpoint;
  }
}

async function handle({ metrics, health, page }: Routes, url: string, res: ServerResponse): Promise<void> {
  const path = url.split('?')[0];
  try {
    if (path === '/' || path === '/index.html') {
      const html = await page();
      res.writeHead(200, PAGE_HEADERS).end(html);
    } else if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      const r = health.ready();
      res.writeHead(r.ok ? 200 : 503, { 'content-type': 'text/plain' }).end(`${r.reason}\n`);
    } else if (path === '/metrics') {
      const body = await metrics.registry.metrics();
      res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(body);
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try / (status page), /healthz, /readyz, /metrics\n');
    }
  } catch (e) {
    res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(e as Error).message}\n`);
  }
}
