-- The relation's file node when its sweep checkpoint was last written. A table rewrite
-- (VACUUM FULL, CLUSTER, ALTER TABLE ... TYPE) gives it a new one and moves every row,
-- so a checkpoint taken before the rewrite says nothing about where rows are now:
-- a resumed sweep that finds another file node starts that relation over from block 0.
alter table pgrekey.sweep_segment add column if not exists relfilenode oid;
