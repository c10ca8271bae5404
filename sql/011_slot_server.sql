-- The server a replication slot was created on (src/replication/server-identity.ts): its system
-- identifier (pg_control_system(), the same on a physical standby, different on a new cluster or
-- a logical copy) and timeline (a promotion starts a new one). Checked whenever the stream
-- (re)connects: a slot of the same name on a different server is not ours to trust.
create table if not exists pgrekey.slot_server (
  slot_name         text primary key,
  system_identifier text not null,
  timeline          integer not null,
  -- Created with failover => true (PostgreSQL 17+): standbys with sync_replication_slots keep a copy.
  failover          boolean not null,
  created_at        timestamptz not null default now(),
  -- When the timeline last changed under this slot (a promotion it survived).
  failed_over_at    timestamptz
);
