import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
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
 * /readyz: the stream is connected (readiness). /metrics: Prometheus text format.
 */
export async function startHttp(host: string, port: number, metrics: Metrics, health: Health, page: () => Promise<string>): Promise<{ server: Server; port: number }> {
  const server = createServer(async (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
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
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return { server, port: (server.address() as AddressInfo).port };
}
