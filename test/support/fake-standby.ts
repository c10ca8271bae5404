// A physical "standby" that receives WAL but replays it only when told: it shows up in
// pg_stat_replication with a replay position of our choosing, i.e. a real replica-lag signal.
import pg from 'pg';
import { formatLsn, parseLsn } from '../../src/replication/lsn.js';

export interface FakeStandby {
  /** Report everything received so far as replayed (lag drops to ~0), and keep doing so. */
  catchUp(): void;
  stop(): Promise<void>;
}

const PG_EPOCH_MS = 946_684_800_000;

export async function startFakeStandby(url: string): Promise<FakeStandby> {
  const client = new pg.Client({ connectionString: url, replication: 'true' } as pg.ClientConfig & { replication: string });
  client.on('error', () => undefined);
  await client.connect();
  const id = (await client.query('IDENTIFY_SYSTEM')).rows[0] as { xlogpos: string; timeline: string | number };
  const start = parseLsn(id.xlogpos);
  let received = start;
  const replayFrozen = start;
  let caughtUp = false;
  let streaming = false; // no status message before the server has started streaming
  const conn = (client as unknown as { connection: { on(e: string, f: (m: { chunk: Buffer }) => void): void; sendCopyFromChunk(b: Buffer): void } }).connection;
  const status = () => {
    if (!streaming) return;
    const b = Buffer.alloc(34);
    b.write('r', 0);
    const replay = caughtUp ? received : replayFrozen;
    b.writeBigUInt64BE(received, 1); // written
    b.writeBigUInt64BE(received, 9); // flushed
    b.writeBigUInt64BE(replay, 17); // applied
    b.writeBigUInt64BE(BigInt(Date.now() - PG_EPOCH_MS) * 1000n, 25);
    b.writeUInt8(0, 33);
    conn.sendCopyFromChunk(b);
  };
  conn.on('copyData', ({ chunk }) => {
    streaming = true;
    if (chunk[0] === 0x77) received = chunk.readBigUInt64BE(1) + BigInt(chunk.length - 25); // 'w': start LSN + payload
    else if (chunk[0] === 0x6b && chunk[17] === 1) status(); // keepalive asking for a reply
  });
  void client.query(`START_REPLICATION PHYSICAL ${formatLsn(start)} TIMELINE ${id.timeline}`).catch(() => undefined);
  const timer = setInterval(status, 200);
  return {
    catchUp: () => {
      caughtUp = true;
      status();
    },
    stop: async () => {
      clearInterval(timer);
      await client.end().catch(() => undefined);
    },
  };
}
