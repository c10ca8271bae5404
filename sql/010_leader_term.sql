-- Standby daemons and the fencing term (src/daemon/leader-term.ts, README "HA and failover").
--
-- Any number of `pg-rekey run --standby` may wait on one slot; the one holding the slot's lease
-- (a session advisory lock, src/daemon/lease.ts) is the leader. Each new holder bumps the slot's
-- term right after taking the lock; every connection of its pool carries that term in the session
-- settings pgrekey.term and pgrekey.slot. Every state table `run` writes refuses (SQLSTATE RKF01)
-- a statement of a session whose term is not the slot's current one: a leader that was paused
-- (GC, SIGSTOP, a network stall) and wakes up after another took the slot over cannot write.
-- Sessions without a term (setup, backfill, verify, pause, teardown) are not fenced.

create table if not exists pgrekey.leader (
  slot_name  text primary key,
  term       bigint not null check (term > 0),  -- bumped by every new holder of the lease
  host       text,
  pid        integer,
  since      timestamptz not null default now() -- when this term started
);

-- Daemons waiting as standbys (`run --standby`), for status: each refreshes its row every few
-- seconds and deletes it when it stops or becomes the leader. Not fenced: standbys carry no term.
create table if not exists pgrekey.standby (
  slot_name    text not null,
  host         text not null,
  pid          integer not null,
  started_at   timestamptz not null default now(),
  heartbeat_at timestamptz not null default now(),
  primary key (slot_name, host, pid)
);

-- Statement-level: refuses the statement unless the session's term is the slot's current one.
-- The shared advisory lock (keyed like the lease, namespace 'pg-rekey-term') is held by every
-- fenced transaction; a new leader takes it exclusively to bump the term (ending sessions of the
-- old term that hold it), so every write of an old term commits before the new term exists and
-- none after. Under REPEATABLE READ the row is read FOR SHARE: a term bumped after the
-- transaction's snapshot raises a serialization failure instead of passing unseen.
create or replace function pgrekey.fence() returns trigger language plpgsql as $$
declare
  mine text := current_setting('pgrekey.term', true);
  slot text := current_setting('pgrekey.slot', true);
  cur  bigint;
begin
  if mine is null or mine = '' then
    return null;
  end if;
  perform pg_advisory_xact_lock_shared(hashtext('pg-rekey-term'), hashtext(slot));
  if current_setting('transaction_isolation') = 'read committed' then
    select l.term into cur from pgrekey.leader l where l.slot_name = slot;
  else
    select l.term into cur from pgrekey.leader l where l.slot_name = slot for share;
  end if;
  if cur is distinct from mine::bigint then
    raise exception 'pg-rekey FENCED: this session writes for term % of replication slot %, but the slot''s current term is %', mine, slot, coalesce(cur::text, 'none')
      using errcode = 'RKF01',
            hint = 'another pg-rekey run took the slot over (this one was paused or cut off): this process must stop; its state writes are refused';
  end if;
  return null;
end
$$;

-- Row-level: every row written by a fenced session carries its term (null: written by a session without one).
create or replace function pgrekey.stamp_term() returns trigger language plpgsql as $$
begin
  new.term := nullif(current_setting('pgrekey.term', true), '')::bigint;
  return new;
end
$$;

-- Fences a state table: the statement-level refusal and the row-level term stamp (also used by
-- later migrations for the state tables they add).
create or replace function pgrekey.add_fence(t text) returns void language plpgsql as $$
begin
  execute format('alter table pgrekey.%I add column if not exists term bigint', t);
  execute format('drop trigger if exists fence on pgrekey.%I', t);
  execute format('create trigger fence before insert or update or delete or truncate on pgrekey.%I for each statement execute function pgrekey.fence()', t);
  execute format('drop trigger if exists stamp_term on pgrekey.%I', t);
  execute format('create trigger stamp_term before insert or update on pgrekey.%I for each row execute function pgrekey.stamp_term()', t);
end
$$;

-- Every table `run` writes. A state table that `run` writes must be fenced, here or with pgrekey.add_fence in its own migration (a test checks it).
select pgrekey.add_fence(t)
  from unnest(array['sweep_segment', 'quarantine', 'run', 'slot_event', 'daemon', 'control', 'setting',
                    'check_result', 'old_version_write', 'old_version_write_minute', 'event']) as t;
