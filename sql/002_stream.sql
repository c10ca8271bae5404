-- Replication slot history and the running daemon's state.

create table if not exists pgrekey.slot_event (
  id         bigserial primary key,
  slot_name  text not null,
  event      text not null check (event in ('created', 'recreated', 'dropped')),
  lsn        pg_lsn,
  reason     text,
  at         timestamptz not null default now()
);

-- One row per slot, written by `pg-rekey run` every few seconds; read by `status`.
create table if not exists pgrekey.daemon (
  slot_name      text primary key,
  host           text,
  pid            integer,
  started_at     timestamptz,
  heartbeat_at   timestamptz,
  applied_lsn    pg_lsn,
  stream_connected boolean not null default false,
  sweep_done     boolean not null default false,
  remaining      bigint,       -- non-target values at the last count
  quarantined    bigint,
  last_check_at  timestamptz,
  converged_at   timestamptz   -- null unless the last check passed
);
