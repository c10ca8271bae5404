-- The rollout gate and the rotation record (`pg-rekey report`). Counts, names, times and
-- one-way key fingerprints only: never a key, a stored value or a plaintext.

-- Old-version values the stream decoded in an application's INSERT/UPDATE (pg-rekey's own
-- rewrites and the sweep's left out), per version, table and column: is an application
-- instance still writing the old key? `last_at` is the commit time of the last such write.
create table if not exists pgrekey.old_version_write (
  version      integer not null,
  table_name   text    not null,
  column_name  text    not null,
  writes       bigint  not null default 0,
  first_at     timestamptz not null,
  last_at      timestamptz not null,
  -- Commit LSN of the last transaction counted: a transaction replayed after a reconnect is not counted twice.
  last_lsn     pg_lsn  not null,
  primary key (version, table_name, column_name)
);

-- The same by minute of commit, for "in the last hour"; pruned after two hours.
create table if not exists pgrekey.old_version_write_minute (
  version      integer not null,
  table_name   text    not null,
  column_name  text    not null,
  minute       timestamptz not null,
  writes       bigint  not null,
  primary key (version, table_name, column_name, minute)
);

-- What happened, for the timeline of the report: verify and report runs (their times decide
-- whether `teardown --drop-state` may drop this history), pauses with their reasons, resumes,
-- convergence reached and lost.
create table if not exists pgrekey.event (
  id      bigserial primary key,
  at      timestamptz not null default now(),
  kind    text not null,
  host    text,
  db_role text not null default current_user,
  detail  jsonb
);
create index if not exists event_kind_at on pgrekey.event (kind, at desc);

-- Who ran each command (the database role), and which keys it held (one-way fingerprints).
alter table pgrekey.run
  add column if not exists db_role text default current_user,
  add column if not exists key_fingerprints jsonb;

-- What `run` waits for before --exit-when-converged exits (status shows it).
alter table pgrekey.daemon
  add column if not exists quiet_period_s double precision,
  add column if not exists quiet_since timestamptz;
