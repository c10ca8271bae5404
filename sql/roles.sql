-- A least-privilege role for pg-rekey. Run once as a superuser (or as the
-- owner of the tables plus a role that may grant REPLICATION), in the
-- application database, e.g.:
--
--   psql -d cad -v db=cad -v pw="'...'" -f sql/roles.sql
--
-- Adjust the table and column lists to your pg-rekey.yaml. Role names may
-- not start with pg_ (reserved), hence rekey_worker.

create role rekey_worker login replication password :pw;
-- REPLICATION: `run` streams from a logical replication slot and `setup`
-- creates it (pg_create_logical_replication_slot). On managed services grant
-- the provider's role instead (RDS/Aurora: GRANT rds_replication TO rekey_worker).

grant connect on database :"db" to rekey_worker;

-- State lives in its own schema, owned by the worker (progress, quarantine,
-- history; never values or keys). Created here so the worker needs no CREATE
-- on the database.
create schema if not exists pgrekey authorization rekey_worker;

-- Per configured table: SELECT on the whole table (the sweep reads ctid, a
-- system column that column grants do not cover) and UPDATE only on the
-- encrypted columns. No INSERT, no DELETE, no DDL.
grant usage on schema public to rekey_worker;
grant select on public.incidents, public.incident_communications, public.cfs_incidents to rekey_worker;
grant update (title) on public.incidents to rekey_worker;
grant update (body) on public.incident_communications to rekey_worker;
grant update (raw_xml) on public.cfs_incidents to rekey_worker;

-- The load throttle counts other sessions' active backends in pg_stat_activity;
-- without pg_monitor (or pg_read_all_stats) their state is hidden and the
-- signal undercounts. Read-only monitoring views, no data access.
grant pg_monitor to rekey_worker;

-- The publication must be created by the tables' owner (or a superuser);
-- `pg-rekey setup` leaves a publication that already matches the config alone.
-- publish = 'insert, update': pg-rekey ignores deletes and truncates.
create publication pg_rekey for table public.incidents, public.incident_communications, public.cfs_incidents
  with (publish = 'insert, update');

-- PostgreSQL 14 and older let every role create objects in schema public;
-- since 15 they may not. On 14, consider REVOKE CREATE ON SCHEMA public FROM PUBLIC
-- (check your applications first).

-- Nothing else. In particular the worker is not a superuser, owns no
-- application table, and cannot read other schemas. After `pg-rekey teardown
-- --drop-state`, remove it: DROP PUBLICATION pg_rekey; DROP ROLE rekey_worker;
