/**
 * libpq's multi-host connection strings, which node-postgres does not implement:
 *
 *   postgres://user@h1:5432,h2:5433/db?target_session_attrs=read-write
 *   postgres://user@/db?host=h1,h2&port=5432,5433
 *   PGHOST=h1,h2 PGPORT=5432,5433 PGTARGETSESSIONATTRS=primary (no connection string)
 *
 * A pure parser: it turns such a string into the list of hosts to try, in order, the session
 * attribute the chosen server must have, and a single-host connection string per host (the one
 * pg is then given). The keyword/value form (`host=h1,h2 port=...`) is not parsed: pg-rekey
 * takes it as pg does, with one host.
 */

/** One candidate server. */
export interface HostPort {
  host: string;
  port: number;
}

/**
 * What the chosen server must be (libpq's target_session_attrs). pg-rekey writes, so the
 * read-only choices (read-only, standby, prefer-standby) are refused.
 *   read-write: not in recovery and not default_transaction_read_only (pg-rekey's default)
 *   primary:    not in recovery
 *   any:        the first host that accepts the connection
 */
export type TargetSessionAttrs = 'read-write' | 'primary' | 'any';

export interface HostTargets {
  hosts: HostPort[];
  targetSessionAttrs: TargetSessionAttrs;
  /** The connection string for one of `hosts` (undefined when there is none: libpq variables). */
  forHost(h: HostPort): string | undefined;
  /** "h1:5432, h2:5433": for messages (never the password). */
  describe(): string;
}

const SESSION_ATTRS = new Set(['read-write', 'primary', 'any']);
const READ_ONLY_ATTRS = new Set(['read-only', 'standby', 'prefer-standby']);

/** A setting the operator has to fix (the caller turns it into a ConfigError). */
export class HostListError extends Error {}

export function hostLabel(h: HostPort): string {
  return h.host.includes(':') ? `[${h.host}]:${h.port}` : `${h.host}:${h.port}`;
}

function parseAttrs(value: string | null | undefined): TargetSessionAttrs {
  if (value === null || value === undefined || value === '') return 'read-write';
  if (SESSION_ATTRS.has(value)) return value as TargetSessionAttrs;
  if (READ_ONLY_ATTRS.has(value)) {
    throw new HostListError(`target_session_attrs=${value} would connect pg-rekey to a server it cannot write to: use read-write (the default), primary or any`);
  }
  throw new HostListError(`target_session_attrs=${value} is not known: use read-write (the default), primary or any`);
}

function parsePort(text: string, what: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > 65535) throw new HostListError(`port "${text}" in ${what} is not a port number (1-65535)`);
  return n;
}

/** "h1:5432" / "[::1]:5432" / "h1" (port from the default). */
function parseHostItem(item: string, defaultPort: number): HostPort {
  const v6 = /^\[([^\]]+)\](?::(.*))?$/.exec(item);
  if (v6) return { host: v6[1]!, port: v6[2] ? parsePort(v6[2], 'the host list') : defaultPort };
  const colon = item.lastIndexOf(':');
  if (colon < 0) return { host: decodeURIComponent(item), port: defaultPort };
  return { host: decodeURIComponent(item.slice(0, colon)), port: parsePort(item.slice(colon + 1), 'the host list') };
}

/** Pairs a host list with a port list as libpq does: one port for all, or one per host. */
function zipPorts(hosts: string[], ports: string[], what: string): HostPort[] {
  if (ports.length > 1 && ports.length !== hosts.length) {
    throw new HostListError(`${what} names ${hosts.length} hosts but ${ports.length} ports: give one port for all, or one per host`);
  }
  return hosts.map((host, i) => ({ host, port: ports.length ? parsePort(ports[ports.length > 1 ? i : 0]!, what) : 5432 }));
}

const URL_RE = /^(postgres(?:ql)?:\/\/)([^@/?#]*@)?([^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?$/i;

/**
 * The hosts of `connectionString` (or of PGHOST/PGPORT when it is undefined) and the target
 * session attribute. Throws HostListError for a list that cannot be right.
 */
export function parseHostTargets(connectionString: string | undefined, env: NodeJS.ProcessEnv = process.env): HostTargets {
  if (connectionString === undefined) {
    const attrs = parseAttrs(env.PGTARGETSESSIONATTRS);
    const hostList = (env.PGHOST ?? '').split(',').filter((h) => h !== '');
    const ports = (env.PGPORT ?? '').split(',').filter((p) => p !== '');
    if (hostList.length <= 1) return single(undefined, attrs, hostList[0] ?? 'localhost', ports[0] ? parsePort(ports[0], 'PGPORT') : 5432);
    const hosts = zipPorts(hostList, ports, 'PGHOST/PGPORT');
    // pg reads PGHOST itself: the chosen host is given as a connection field instead (connect.ts).
    return { hosts, targetSessionAttrs: attrs, forHost: () => undefined, describe: () => hosts.map(hostLabel).join(', ') };
  }
  const m = URL_RE.exec(connectionString);
  if (!m) {
    // keyword/value form: one host, as pg reads it; its target_session_attrs is honoured
    const attrs = parseAttrs(/(?:^|\s)target_session_attrs\s*=\s*'?([a-z-]+)/.exec(connectionString)?.[1]);
    return single(connectionString.replace(/(^|\s)target_session_attrs\s*=\s*'?[a-z-]+'?/, '$1'), attrs, '?', 0);
  }
  const [, scheme, userinfo = '', authority = '', rest = '', query = '', fragment = ''] = m;
  const params = new URLSearchParams(query.slice(1));
  const attrs = parseAttrs(params.get('target_session_attrs'));
  params.delete('target_session_attrs');
  let hosts: HostPort[];
  const hostParam = params.get('host');
  const portParam = params.get('port');
  if (authority === '' && hostParam !== null && !hostParam.startsWith('/')) {
    hosts = zipPorts(hostParam.split(','), (portParam ?? '').split(',').filter((p) => p !== ''), 'the host= and port= parameters');
    params.delete('host');
    params.delete('port');
  } else {
    const defaultPort = portParam && !portParam.includes(',') ? parsePort(portParam, 'the port= parameter') : 5432;
    hosts = authority === '' ? [] : authority.split(',').map((item) => parseHostItem(item, defaultPort));
    if (hosts.some((h) => h.host === '')) throw new HostListError('the host list of the connection string has an empty entry');
  }
  const q = params.toString();
  const build = (h: HostPort) => `${scheme}${userinfo}${hostLabel(h).replace(/^([^[][^:]*)/, (s) => encodeURIComponent(s))}${rest}${q ? `?${q}` : ''}${fragment}`;
  if (hosts.length <= 1) {
    // One host: the string as given (pg parses it), without target_session_attrs, which pg does not know.
    const only = hosts[0];
    const cs = query.includes('target_session_attrs') ? `${scheme}${userinfo}${authority}${rest}${q ? `?${q}` : ''}${fragment}` : connectionString;
    return single(cs, attrs, only?.host ?? '?', only?.port ?? 0);
  }
  return { hosts, targetSessionAttrs: attrs, forHost: (h) => build(h), describe: () => hosts.map(hostLabel).join(', ') };
}

function single(cs: string | undefined, attrs: TargetSessionAttrs, host: string, port: number): HostTargets {
  const h = { host, port };
  return { hosts: [h], targetSessionAttrs: attrs, forHost: () => cs, describe: () => (port ? hostLabel(h) : 'the server of the connection string') };
}
