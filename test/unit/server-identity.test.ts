// server-identity.ts: what a slot of pg-rekey's name is worth on the server connected to now.
import { describe, expect, it } from 'vitest';
import { distrustReason, judgeServer, missingAfterFailover } from '../../src/replication/server-identity.js';

const rec = { systemIdentifier: '7400000000000000001', timeline: 1, failover: true };

describe('judgeServer', () => {
  it('same server and timeline: trusted', () => {
    expect(judgeServer(rec, { systemIdentifier: rec.systemIdentifier, timeline: 1 })).toEqual({ kind: 'same' });
  });

  it('nothing recorded (a slot of an older pg-rekey): recorded now, not distrusted', () => {
    const v = judgeServer(null, { systemIdentifier: '1', timeline: 3 });
    expect(v).toEqual({ kind: 'unrecorded' });
    expect(distrustReason(v)).toBeNull();
  });

  it('same cluster on a new timeline (a promotion): the slot is trusted if it exists; if not, the reason says why', () => {
    const v = judgeServer(rec, { systemIdentifier: rec.systemIdentifier, timeline: 2 });
    expect(v).toEqual({ kind: 'new-timeline', from: 1, to: 2, failover: true });
    expect(distrustReason(v)).toBeNull();
    expect(missingAfterFailover(v, 180004)).toMatch(/^failover: .*timeline 2 .*not synced to this standby yet/);
    expect(missingAfterFailover({ kind: 'new-timeline', from: 1, to: 2, failover: false }, 170000)).toMatch(/not created as a failover slot/);
    expect(missingAfterFailover(v, 140012)).toMatch(/PostgreSQL 14 does not carry logical slots over a promotion/);
    expect(missingAfterFailover({ kind: 'same' }, 180004)).toBeNull();
  });

  it('another system identifier (a restore, a new cluster): never trusted, timeline or not', () => {
    for (const timeline of [1, 2]) {
      const v = judgeServer(rec, { systemIdentifier: '7400000000000000002', timeline });
      expect(v.kind).toBe('other-server');
      expect(distrustReason(v)).toMatch(/different PostgreSQL cluster \(system identifier 7400000000000000002, the slot was created on 7400000000000000001/);
    }
  });
});
