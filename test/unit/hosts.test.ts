// hosts.ts: libpq's multi-host connection strings, parsed without a database.
import { describe, expect, it } from 'vitest';
import { HostListError, parseHostTargets } from '../../src/db/hosts.js';
import { connectionConfig } from '../../src/db/connect.js';

describe('parseHostTargets', () => {
  it('reads a host list in the authority, in order, with per-host ports and the default port', () => {
    const t = parseHostTargets('postgres://app:s3cret@db1:5433,db2,[::1]:6000/rekey?sslmode=disable&target_session_attrs=primary');
    expect(t.hosts).toEqual([
      { host: 'db1', port: 5433 },
      { host: 'db2', port: 5432 },
      { host: '::1', port: 6000 },
    ]);
    expect(t.targetSessionAttrs).toBe('primary');
    expect(t.forHost(t.hosts[1]!)).toBe('postgres://app:s3cret@db2:5432/rekey?sslmode=disable');
    expect(t.forHost(t.hosts[2]!)).toBe('postgres://app:s3cret@[::1]:6000/rekey?sslmode=disable');
    expect(t.describe()).toBe('db1:5433, db2:5432, [::1]:6000');
    expect(t.describe()).not.toContain('s3cret');
  });

  it('reads host= and port= lists in the query', () => {
    const t = parseHostTargets('postgresql://app@/rekey?host=a,b&port=5001,5002&application_name=x');
    expect(t.hosts).toEqual([
      { host: 'a', port: 5001 },
      { host: 'b', port: 5002 },
    ]);
    expect(t.forHost(t.hosts[1]!)).toBe('postgresql://app@b:5002/rekey?application_name=x');
    expect(parseHostTargets('postgres:///db?host=a,b&port=7000').hosts).toEqual([
      { host: 'a', port: 7000 },
      { host: 'b', port: 7000 },
    ]);
  });

  it('defaults to read-write, refuses read-only choices and unknown ones, and counts ports', () => {
    expect(parseHostTargets('postgres://h1,h2/db').targetSessionAttrs).toBe('read-write');
    expect(() => parseHostTargets('postgres://h1,h2/db?target_session_attrs=standby')).toThrow(HostListError);
    expect(() => parseHostTargets('postgres://h1,h2/db?target_session_attrs=prefer-standby')).toThrow(/cannot write/);
    expect(() => parseHostTargets('postgres://h1/db?target_session_attrs=bogus')).toThrow(/not known/);
    expect(() => parseHostTargets('postgres:///db?host=a,b,c&port=1,2')).toThrow(/3 hosts but 2 ports/);
    expect(() => parseHostTargets('postgres://h1:99999/db')).toThrow(/not a port/);
    expect(() => parseHostTargets('postgres://h1,,h2/db')).toThrow(/empty entry/);
  });

  it('leaves a single-host string as given, except target_session_attrs, which pg does not know', () => {
    const plain = 'postgres://u:p@h:5432/db?options=-c%20x%3Dy';
    expect(parseHostTargets(plain).forHost({ host: 'h', port: 5432 })).toBe(plain);
    expect(parseHostTargets('postgres://u@h/db?target_session_attrs=any').forHost({ host: 'h', port: 5432 })).toBe('postgres://u@h/db');
    expect(parseHostTargets('postgres://u@h/db?target_session_attrs=any').targetSessionAttrs).toBe('any');
    const kv = parseHostTargets('host=h dbname=db target_session_attrs=primary');
    expect(kv.targetSessionAttrs).toBe('primary');
    expect(kv.forHost(kv.hosts[0]!)).toBe('host=h dbname=db ');
  });

  it('reads PGHOST/PGPORT lists when there is no connection string', () => {
    const t = parseHostTargets(undefined, { PGHOST: 'x,y', PGPORT: '1,2', PGTARGETSESSIONATTRS: 'any' });
    expect(t.hosts).toEqual([
      { host: 'x', port: 1 },
      { host: 'y', port: 2 },
    ]);
    expect(t.targetSessionAttrs).toBe('any');
    expect(parseHostTargets(undefined, {}).hosts).toHaveLength(1);
  });

  it('gives pg the settings of one host at a time', () => {
    const c = connectionConfig('postgres://app@h1:5001,h2:5002/db?target_session_attrs=read-write', { host: { host: 'h2', port: 5002 } });
    expect(c).toMatchObject({ host: 'h2', port: 5002, database: 'db', user: 'app' });
    expect(JSON.stringify(c)).not.toContain('target_session_attrs');
    expect(connectionConfig('postgres://app@h1:5001,h2:5002/db')).toMatchObject({ host: 'h1', port: 5001 });
  });
});
