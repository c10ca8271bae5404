-- sweep.mode auto: the latency probe's heartbeat rows, and the controller's state for `status`.

-- One row per probing process (keyed by the probe's backend pid): each probe upserts its row, a
-- tiny commit that waits for its WAL flush like the application's commits do. Unlogged: the row
-- itself writes no WAL (the commit record does), and it is not worth keeping after a crash.
create unlogged table if not exists pgrekey.probe (
  pid integer primary key,
  at  timestamptz not null
);

-- Written by the sweeping process about once a second while sweep.mode is auto: target, measured,
-- rate, why it last slowed down (JSON, see src/throttle/latency-controller.ts ControllerState).
alter table pgrekey.control
  add column if not exists controller jsonb,
  add column if not exists controller_at timestamptz;
