-- pg-rekey grants: what role rekey_worker needs for pg-rekey.yaml
-- generated from database cad (PostgreSQL 18); run it again after changing tables: in the config or adding partitions
-- Run as a superuser (or as the tables' owner together with a role that may grant REPLICATION):
--   psql -d <database> -v pw=<password> -f grants.sql
-- Without -v pw the role gets no password (set one later with \password rekey_worker, or use ~/.pgpass and pg_hba.conf).
-- All or nothing: the first error stops psql and rolls everything back. Running it twice changes nothing.
\set ON_ERROR_STOP on
begin;

-- LOGIN to connect; REPLICATION to create the logical slot (setup) and stream from it (run).
-- On managed services grant the provider's role instead (RDS/Aurora: GRANT rds_replication).
select 'create role "rekey_worker" login replication' where not exists (select from pg_roles where rolname = 'rekey_worker') \gexec
alter role "rekey_worker" login replication;
\if :{?pw}
alter role "rekey_worker" password :'pw';
\endif
grant connect on database :"DBNAME" to "rekey_worker";

-- pg-rekey's state (progress, quarantine, history; never values or keys), owned by the role.
create schema if not exists "pgrekey" authorization "rekey_worker";

-- SELECT on each relation (the sweep reads ctid, which column grants do not cover), UPDATE only on
-- the encrypted columns. No INSERT, no DELETE, no DDL.
grant usage on schema "public" to "rekey_worker";
-- public.incidents
grant select on "public"."incidents" to "rekey_worker";
grant update ("title") on "public"."incidents" to "rekey_worker";
-- public.incident_communications
grant select on "public"."incident_communications" to "rekey_worker";
grant update ("body") on "public"."incident_communications" to "rekey_worker";
-- public.cfs_incidents
grant select on "public"."cfs_incidents" to "rekey_worker";
grant update ("raw_xml") on "public"."cfs_incidents" to "rekey_worker";

-- The load throttle reads other sessions in pg_stat_activity; the monitoring role shows their state. No data access.
grant pg_monitor to "rekey_worker";

-- With `triggers: skip` (README "Triggers") rewrites run with session_replication_role = replica, so that
-- ordinary triggers (updated_at, audit) do not fire: a superuser, or from PostgreSQL 15 on this grant.
-- grant set on parameter session_replication_role to "rekey_worker";

-- PostgreSQL 16+ (replication.origin: auto): pg-rekey's rewrites carry a replication origin, so consumers with
-- origin = none (subscriptions, Debezium) skip them. Optional: without it setup and run say the origin is off, and why.
select 'select pg_replication_origin_create(''pgrekey_pg_rekey_sweep'')' where not exists (select from pg_replication_origin where roname = 'pgrekey_pg_rekey_sweep') \gexec
select 'select pg_replication_origin_create(''pgrekey_pg_rekey_stream'')' where not exists (select from pg_replication_origin where roname = 'pgrekey_pg_rekey_stream') \gexec
grant execute on function pg_replication_origin_session_setup(text), pg_replication_origin_session_reset() to "rekey_worker";

-- PostgreSQL 14 and older let every role create objects in schema public (15+ do not): consider
-- REVOKE CREATE ON SCHEMA public FROM PUBLIC there (check your applications first).

-- Row level security is off on every configured relation today. pg-rekey must see every row: its sessions run
-- with row_security = off, so a policy turned on later (ENABLE ROW LEVEL SECURITY) makes setup, backfill and
-- verify refuse and run stop (exit 2) instead of counting part of a table. Then, as a superuser, either
--   alter role "rekey_worker" bypassrls;
-- or run pg-rekey as the table's owner (the owner sees every row unless the table has FORCE ROW LEVEL SECURITY).

-- The publication the stream decodes (inserts and updates; deletes and truncates need no rewrite).
select 'create publication "pg_rekey" for table "public"."incidents", "public"."incident_communications", "public"."cfs_incidents" with (publish = ''insert, update'')' where not exists (select from pg_publication where pubname = 'pg_rekey') \gexec

commit;

-- Afterwards (after `pg-rekey teardown --drop-state`): DROP PUBLICATION "pg_rekey"; DROP OWNED BY "rekey_worker"; DROP ROLE "rekey_worker"; The origins: teardown drops them when it may, else prints the pg_replication_origin_drop to run as a superuser.
