-- pg-rekey state, in its own schema pgrekey (not pg_rekey: PostgreSQL reserves
-- the pg_ prefix for system schemas). Applied once by `pg-rekey setup`.
-- No table here ever holds a stored value, a plaintext or a key.

create table if not exists pgrekey.sweep_segment (
  -- Configured table (as written in the config, schema-qualified) and the
  -- leaf relation actually scanned (the table itself, or one partition).
  table_name     text   not null,
  relation       text   not null,
  -- Block range [segment_start, segment_end) of the relation this row covers;
  -- segment_end null = to the end of the relation, read afresh each chunk.
  -- One segment per relation today; several workers could later split a
  -- relation into segments and lease them with FOR UPDATE SKIP LOCKED.
  segment_start  bigint not null default 0,
  segment_end    bigint,
  next_block     bigint not null default 0,   -- resume here
  total_blocks   bigint,                      -- relation size at the last chunk
  state          text   not null default 'pending' check (state in ('pending', 'running', 'done')),
  -- Bumped when the sweep restarts from block 0 (--restart, slot recreated).
  generation     integer not null default 1,
  chunks         bigint not null default 0,
  rows_scanned   bigint not null default 0,   -- rows that held a non-target value
  rows_rewritten bigint not null default 0,   -- values rewritten to the target
  rows_conflict  bigint not null default 0,   -- CAS lost to an application write
  rows_quarantined bigint not null default 0,
  started_at     timestamptz,
  updated_at     timestamptz not null default now(),
  finished_at    timestamptz,
  lease_owner    text,
  lease_until    timestamptz,
  primary key (relation, segment_start)
);

create table if not exists pgrekey.quarantine (
  table_name   text   not null,
  column_name  text   not null,
  -- The row's key columns as JSON (primary key or replica identity index).
  row_key      jsonb  not null,
  version      integer,
  reason       text   not null,
  -- sha256 of the stored value: tells whether the entry still describes the
  -- current value without keeping the value.
  value_sha256 bytea  not null,
  source       text   not null check (source in ('sweep', 'stream')),
  first_seen   timestamptz not null default now(),
  last_seen    timestamptz not null default now(),
  seen_count   bigint not null default 1,
  primary key (table_name, column_name, row_key)
);

create table if not exists pgrekey.run (
  id             bigserial primary key,
  command        text not null,
  target_version integer,
  host           text,
  pid            integer,
  started_at     timestamptz not null default now(),
  finished_at    timestamptz,
  outcome        text check (outcome in ('ok', 'not-converged', 'failed', 'interrupted', 'dry-run')),
  summary        jsonb
);
