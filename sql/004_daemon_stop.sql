-- `status` tells a daemon that stopped cleanly from one that died: run sets
-- stopped_at when it exits and clears it at every heartbeat.
alter table pgrekey.daemon add column if not exists stopped_at timestamptz;
