// The Patroni harness itself, with plain pg connections: bootstrap, switchover, kill -9 of the primary.
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import pg from 'pg';
import { startPatroniCluster, waitFor, type PatroniCluster } from './support/patroni.js';

let cluster: PatroniCluster | undefined;

beforeAll(async () => {
  cluster = await startPatroniCluster({ database: 'app', slot: 'pg_rekey' });
});

afterAll(async () => {
  await cluster?.stop();
});

describe('patroni harness', () => {
  it('bootstraps, switches over, fails over after kill -9', async () => {
    const c = cluster!;
    onTestFailed(() => console.log(c.dumpLogs()));
    const first = await c.waitForHealthy();
    console.log('members', await c.members());
    const admin = new pg.Client({ connectionString: c.url(first) });
    await admin.connect();
    await admin.query('create database app');
    await admin.end();
    await waitFor('slot on leader', async () => {
      const cl = new pg.Client({ connectionString: c.url(first, 'app') });
      await cl.connect();
      try { return (await cl.query(`select 1 from pg_replication_slots where slot_name = 'pg_rekey'`)).rowCount; } finally { await cl.end(); }
    }, 30_000);
    let t = Date.now();
    await c.waitForSlotReady('pg_rekey', 0);
    const sw = await c.switchover();
    console.log('switchover', sw.from.name, '->', sw.to.name, sw.output);
    const second = await c.waitForHealthy({ notLeader: first.name });
    expect(second.name).toBe(sw.to.name);
    await c.waitForSlotReady('pg_rekey', t);
    const killed = await c.killPrimaryPostmaster();
    let third;
    try { third = await c.waitForNewLeader(killed.node.name); } catch (e) { console.log('NODE1\n', c.log('node1').slice(-8000), '\nNODE2\n', c.log('node2').slice(-8000)); throw e; }
    console.log('after kill', killed, third.name);
    await c.waitForHealthy({ notLeader: killed.node.name, timeoutMs: 180_000 });
    console.log('members', await c.members());
    console.log(c.log(third.name).slice(-5000));
  });
});
