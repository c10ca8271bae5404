-- The fencing term of 010 on the state tables that 011 (slot_server: the slot's server identity,
-- written by run when it creates or re-trusts its slot) and 012 (sweep_range: the leased block
-- ranges of sweep.workers > 1) added: a paused former leader may not write them either. Sessions
-- without a term (setup, backfill, a sweep-worker on another host) are not fenced, as in 010;
-- a sweep-worker's range writes are fenced by its range lease (owner and expiry) instead.
do $$
declare
  t text;
begin
  foreach t in array array['slot_server', 'sweep_range'] loop
    execute format('alter table pgrekey.%I add column if not exists term bigint', t);
    execute format('drop trigger if exists fence on pgrekey.%I', t);
    execute format('create trigger fence before insert or update or delete or truncate on pgrekey.%I for each statement execute function pgrekey.fence()', t);
    execute format('drop trigger if exists stamp_term on pgrekey.%I', t);
    execute format('create trigger stamp_term before insert or update on pgrekey.%I for each row execute function pgrekey.stamp_term()', t);
  end loop;
end
$$;
