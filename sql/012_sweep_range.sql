-- sweep.workers > 1: each relation's blocks are split into ranges that workers (connections of
-- one process, and `pg-rekey sweep-worker` processes on other hosts) lease with
-- FOR UPDATE SKIP LOCKED. A range is done only when a worker that still held its lease
-- checkpointed its last chunk; the relation's sweep_segment row is marked done only when every
-- range of its current generation is (src/backfill/range-lease.ts). No stored value here.
create table if not exists pgrekey.sweep_range (
  relation     text    not null,
  -- The sweep_segment generation the range belongs to: ranges of an older one mean nothing.
  generation   integer not null,
  -- Blocks [first_block, end_block); end_block null = to the end of the relation (it grows).
  first_block  bigint  not null,
  end_block    bigint,
  -- Resume here when the range is leased again (after a crash, or an expired lease).
  next_block   bigint  not null,
  state        text    not null default 'pending' check (state in ('pending', 'done')),
  -- The lease: a token per worker ("host/pid/n/random"), valid until lease_until (the database's
  -- clock, now()). Every checkpoint is fenced on (owner, lease_until > now()).
  owner        text,
  lease_until  timestamptz,
  -- How many times the range was leased (more than once: a worker died or lost its lease).
  leases       integer not null default 0,
  -- pg_relation_filenode when the range was last checkpointed: a table rewrite moves every row,
  -- so ranges swept under different file nodes do not add up to a sweep.
  relfilenode  oid,
  rows_rewritten bigint not null default 0,
  done_at      timestamptz,
  done_by      text,
  primary key (relation, generation, first_block)
);
create index if not exists sweep_range_pending on pgrekey.sweep_range (relation, generation) where state = 'pending';

