-- Which relation a segment row describes, by oid: the relations swept for a configured table
-- (setup, run and backfill add a row for every leaf) are pg-rekey's record of what was part of
-- it. A partition detached or an INHERITS child unlinked while it still holds old-version values
-- is not forgotten: verify and run find it through this column, under whatever name it has now.
alter table pgrekey.sweep_segment add column if not exists relid oid;
update pgrekey.sweep_segment set relid = to_regclass(relation) where relid is null;

-- Filled at insert for every writer of segment rows (they name the relation as text).
create or replace function pgrekey.sweep_segment_relid() returns trigger language plpgsql as $$
begin
  if new.relid is null then
    new.relid := to_regclass(new.relation);
  end if;
  return new;
end
$$;
drop trigger if exists sweep_segment_relid on pgrekey.sweep_segment;
create trigger sweep_segment_relid before insert on pgrekey.sweep_segment
  for each row execute function pgrekey.sweep_segment_relid();
