-- The fencing term of 010 on the state tables that 011 (slot_server: the slot's server identity,
-- written by run when it creates or re-trusts its slot) and 012 (sweep_range: the leased block
-- ranges of sweep.workers > 1) added: a paused former leader may not write them either. Sessions
-- without a term (setup, backfill, a sweep-worker on another host) are not fenced, as in 010;
-- a sweep-worker's range writes are fenced by its range lease (owner and expiry) instead.
select pgrekey.add_fence(t) from unnest(array['slot_server', 'sweep_range']) as t;
