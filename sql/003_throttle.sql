-- Load-aware sweep: the pause switch, the observed throttle state, runtime
-- settings (`pg-rekey set`), and per-relation chunk size and rate.

alter table pgrekey.sweep_segment
  add column if not exists chunk_blocks integer,         -- current chunk size
  add column if not exists rows_per_sec double precision, -- recent rewrite rate (EWMA)
  add column if not exists lock_timeouts bigint not null default 0;

-- One row. The switch is set by `pg-rekey pause/resume` from any host; the
-- throttle_* columns are written by the sweeping process on every change.
create table if not exists pgrekey.control (
  id                  boolean primary key default true check (id),
  paused              boolean not null default false,
  pause_reason        text,
  paused_by           text,
  paused_at           timestamptz,
  throttle_reason     text,          -- null = not throttled
  throttle_detail     text,
  throttled_since     timestamptz,
  throttle_updated_at timestamptz
);
insert into pgrekey.control default values on conflict do nothing;

-- Runtime overrides of config values (`pg-rekey set chunk-time=50ms`); they
-- win over flags, environment and file until `pg-rekey set --reset`.
create table if not exists pgrekey.setting (
  name    text primary key,
  value   text not null,
  set_by  text,
  set_at  timestamptz not null default now()
);

-- The stream's recent rewrite rate, published by `run` with its heartbeat.
alter table pgrekey.daemon
  add column if not exists stream_rewrites bigint,
  add column if not exists stream_rewrites_per_sec double precision;
