-- Results of the checks that prove the old key can go (verify --decrypt, discover, and the
-- sampled discover that verify runs), for `pg-rekey report` and the audit trail. Counts,
-- relation and column names and ctids only: never a value.
create table if not exists pgrekey.check_result (
  id          bigserial primary key,
  kind        text not null check (kind in ('deep-verify', 'discover')),
  mode        text not null check (mode in ('full', 'sample')),
  command     text not null,                 -- what ran it: 'verify --decrypt', 'discover --full', 'verify', ...
  target_version integer not null,
  started_at  timestamptz not null,
  finished_at timestamptz not null default now(),
  ok          boolean not null,              -- deep-verify: no target value failed; discover: no unconfigured old-version value
  host        text,
  result      jsonb not null                 -- the DeepVerifyResult / DiscoverResult as the command returned it
);
create index if not exists check_result_kind on pgrekey.check_result (kind, finished_at desc);
