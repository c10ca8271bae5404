import { readFileSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { renderGrants, type GrantFacts } from '../../src/grants/plan.js';

const leaf = (quoted: string, rowSecurity = false) => ({ quoted, schema: 'public', rowSecurity });

/** The sample CAD schema of the README (what sql/roles.sql documents). */
export const SAMPLE: GrantFacts = {
  role: 'rekey_worker',
  tables: [
    { display: 'public.incidents', quoted: '"public"."incidents"', partitioned: false, columns: ['title'], leaves: [leaf('"public"."incidents"')] },
    { display: 'public.incident_communications', quoted: '"public"."incident_communications"', partitioned: false, columns: ['body'], leaves: [leaf('"public"."incident_communications"')] },
    { display: 'public.cfs_incidents', quoted: '"public"."cfs_incidents"', partitioned: false, columns: ['raw_xml'], leaves: [leaf('"public"."cfs_incidents"')] },
  ],
  publication: 'pg_rekey',
  unpublished: null,
  stateSchema: 'pgrekey',
  originSlot: 'pg_rekey',
  database: 'cad',
  serverVersion: '18',
  configPath: 'pg-rekey.yaml',
};

describe('pg-rekey grants', () => {
  it('sql/roles.sql is the output for the sample schema (UPDATE_ROLES_SQL=1 rewrites it)', () => {
    const file = new URL('../../sql/roles.sql', import.meta.url);
    const text = renderGrants(SAMPLE);
    if (process.env.UPDATE_ROLES_SQL === '1') writeFileSync(file, text);
    expect(readFileSync(file, 'utf8')).toBe(text);
  });

  it('all or nothing, idempotent, values never interpolated unquoted', () => {
    const text = renderGrants({ ...SAMPLE, role: `o'neil "x"` });
    expect(text).toMatch(/^\\set ON_ERROR_STOP on\nbegin;$/m);
    expect(text).toMatch(/\ncommit;\n/);
    expect(text).toContain(`select 'create role "o''neil ""x""" login replication' where not exists (select from pg_roles where rolname = 'o''neil "x"') \\gexec`);
    expect(text).toContain(`alter role "o'neil ""x""" password :'pw';`);
  });

  it('a name with a newline and a psql meta-command cannot make a line of its own (a superuser runs this script)', () => {
    const evil = 'p1\n\\! touch /tmp/pwned #';
    const render = (o: Partial<GrantFacts>) => () => renderGrants({ ...SAMPLE, ...o });
    expect(render({ role: `r\n\\! id` })).toThrow(/control characters.*"r\\n\\\\! id"/);
    // Names that are only in comments (the config path, the database) are made safe instead.
    const text = renderGrants({ ...SAMPLE, configPath: `c\r\n\\! id`, database: `d\n\\! id` });
    expect(text.split('\n').filter((l) => l.trimStart().startsWith('\\'))).toEqual(['\\set ON_ERROR_STOP on', '\\if :{?pw}', '\\endif']);
    expect(render({
      tables: [{ display: `public.${evil}`, quoted: `"public"."${evil}"`, partitioned: false, columns: ['c'], leaves: [{ quoted: `"public"."${evil}"`, schema: 'public', rowSecurity: true }] }],
    })).toThrow(/control characters/);
  });

  it('partitions and INHERITS children get their own grants; row security asks for BYPASSRLS; an existing publication gets what it misses', () => {
    const text = renderGrants({
      ...SAMPLE,
      tables: [
        { display: 'public.calls', quoted: '"public"."calls"', partitioned: true, columns: ['notes'], leaves: [leaf('"public"."calls_2025"'), leaf('"public"."calls_2026"', true)] },
        { display: 'public.legacy', quoted: '"public"."legacy"', partitioned: false, columns: ['c'], leaves: [leaf('"public"."legacy"'), { quoted: '"arch"."legacy_old"', schema: 'arch', rowSecurity: false }] },
      ],
      unpublished: ['"public"."calls_2026"', '"arch"."legacy_old"'],
    });
    expect(text).toContain('grant select on "public"."calls", "public"."calls_2025", "public"."calls_2026" to "rekey_worker";');
    expect(text).toContain('grant update ("notes") on "public"."calls_2026" to "rekey_worker";');
    expect(text).toContain('grant usage on schema "arch" to "rekey_worker";');
    expect(text).toContain('alter role "rekey_worker" bypassrls;');
    expect(text).toContain(`'alter publication "pg_rekey" add table "public"."calls"'`);
    expect(text).toContain(`'alter publication "pg_rekey" add table only "arch"."legacy_old"'`);
    expect(text).not.toContain('create publication');
  });

  it('triggers: skip gets GRANT SET ON PARAMETER on 15+, a comment on 14 (no such grant there), a commented example otherwise', () => {
    const grant = 'grant set on parameter session_replication_role to "rekey_worker";';
    expect(renderGrants(SAMPLE)).toContain(`\n-- ${grant}\n`);
    const on15 = renderGrants({ ...SAMPLE, serverVersion: '15.4', skipTriggers: ['public.incidents'] });
    expect(on15).toContain(`-- public.incidents say triggers: skip.\n${grant}\n`);
    const on14 = renderGrants({ ...SAMPLE, serverVersion: '14.12', skipTriggers: ['public.incidents'] });
    expect(on14).not.toMatch(/^grant set on parameter/m);
    expect(on14).toMatch(/PostgreSQL 14\.12 cannot grant it: run pg-rekey as a superuser/);
  });
});
