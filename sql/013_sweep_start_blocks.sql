-- The relation's size (blocks) when the current sweep pass of a segment started (block 0 of a
-- generation, or a rewind to block 0). Progress, % and ETA count against it: rewriting rows makes
-- a table grow (an UPDATE writes a new row version, at the end when the page is full), and the
-- sweep also covers that tail, but the tail is not progress going backwards. total_blocks stays
-- the size at the last chunk. Null before the pass starts (readers fall back to total_blocks).
alter table pgrekey.sweep_segment add column if not exists start_blocks bigint;
